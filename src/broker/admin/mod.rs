//! Administration: the operations behind `warren ctl` and the management HTTP API, as
//! inputs and outputs of the broker state machine.
//!
//! A driver hands [`Broker::handle_admin`] an [`AdminRequest`] with a number of its own,
//! and the answer comes back as an [`super::Output::Admin`] with that number. Durable
//! changes go to the store like any other (as [`StoreOp`](crate::store::StoreOp)s in the next
//! [`super::Output::Persist`] batch), and the answer waits, like a publisher confirm,
//! until that batch is synced, so a `warren ctl add_user` that returned has been written
//! to disk.
//!
//! Permissions apply to operations on vhost resources requested by a user
//! ([`Actor::User`]), exactly as they apply to the same operation over AMQP; requests made
//! as the node itself ([`Actor::Node`], `warren ctl` with the node's token) are not
//! checked, like `rabbitmqctl`'s.

mod bounds;
mod definitions;
mod inspect;
mod limits;
mod policies;
mod snapshot;
mod topology;
mod users;

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::command::{ConnId, Message};
use crate::proto::constants;
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;
use crate::store::{
    PermissionRecord, PolicyRecord, TopicPermissionRecord, UserLimits, UserRecord, VhostLimits,
};

use super::error::AmqpError;
use super::stats::MessageCounters;
use super::{Broker, Deferred};

pub use definitions::{Definitions, ExchangeDef, QueueDef};
pub use inspect::{MAX_ADMIN_READS, MAX_PEEK_COUNT, MAX_REPUBLISH_COUNT, MAX_WAITING_ADMIN};
pub use limits::{MAX_CHANNELS, MAX_CONNECTIONS, MAX_QUEUES};
pub use snapshot::{
    BindingInfo, ChannelInfo, ConnectionInfo, ConsumerInfo, ExchangeInfo, Overview, QueueInfo,
    VhostInfo, consumer_arguments,
};

/// Who asks for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// The node's operator (`warren ctl` on the node): no permission checks.
    Node,
    /// A user: operations on vhost resources need that user's permissions.
    User(String),
}

/// How a create-or-update treats an existing (or missing) object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Create it or update it.
    Upsert,
    /// Fail if it exists (`add_user`, `add_vhost`).
    CreateOnly,
    /// Fail if it does not exist (`change_password`, `set_user_tags`).
    UpdateOnly,
}

/// A password change in [`AdminRequest::PutUser`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Password {
    /// Keep the current hash (an empty one for a new user: no password login).
    Keep,
    /// Remove the password: the user can no longer log in with one.
    Clear,
    /// Hash this password with a fresh salt.
    Plain(String),
    /// Store this hash as given (RabbitMQ's `rabbit_password_hashing_sha256` format).
    Hash(String),
}

/// What `basic.get` over HTTP does with the messages it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetAck {
    /// `ack_requeue_true`: put them back (flagged redelivered).
    Requeue,
    /// `ack_requeue_false`: acknowledge them.
    Ack,
    /// `reject_requeue_true`: reject, back into the queue.
    RejectRequeue,
    /// `reject_requeue_false`: reject, dead-lettering them if the queue says so.
    Reject,
}

/// An administrative operation.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminRequest {
    /// Checks a user's password; answers [`AdminReply::Whoami`].
    Authenticate {
        /// User name.
        username: String,
        /// Password.
        password: String,
        /// Whether the requester is on a loopback address (loopback-only users such as
        /// guest are refused otherwise, as over AMQP).
        from_loopback: bool,
    },
    /// A user's tags and the vhosts they may use; answers [`AdminReply::Whoami`].
    Whoami {
        /// User name.
        username: String,
    },
    /// Object and message totals; answers [`AdminReply::Overview`].
    Overview,
    /// Every user; answers [`AdminReply::Users`].
    ListUsers,
    /// Creates or changes a user; answers [`AdminReply::Put`].
    PutUser {
        /// User name.
        name: String,
        /// The password change.
        password: Password,
        /// New tags, or `None` to keep them.
        tags: Option<Vec<String>>,
        /// Create, update or either.
        mode: PutMode,
    },
    /// Deletes a user and closes its connections.
    DeleteUser {
        /// User name.
        name: String,
    },
    /// Every vhost; answers [`AdminReply::Vhosts`].
    ListVhosts,
    /// Creates a vhost; answers [`AdminReply::Put`].
    PutVhost {
        /// Vhost name.
        name: String,
        /// Create only, or also accept an existing one.
        mode: PutMode,
    },
    /// Deletes a vhost with everything in it, and closes its connections.
    DeleteVhost {
        /// Vhost name.
        name: String,
    },
    /// Every permission; answers [`AdminReply::Permissions`].
    ListPermissions,
    /// Sets a user's permissions in a vhost.
    SetPermissions(PermissionRecord),
    /// Clears a user's permissions in a vhost.
    ClearPermissions {
        /// User name.
        user: String,
        /// Vhost name.
        vhost: String,
    },
    /// The limits of one vhost or of all that have some; answers
    /// [`AdminReply::VhostLimits`].
    ListVhostLimits {
        /// Only this vhost.
        vhost: Option<String>,
    },
    /// Sets a vhost's limits.
    SetVhostLimits {
        /// Vhost name.
        vhost: String,
        /// The limits given.
        limits: VhostLimits,
        /// Replace every limit (`set_vhost_limits`), or set only those given.
        replace: bool,
    },
    /// Clears a vhost's limit by name, or all of them.
    ClearVhostLimits {
        /// Vhost name.
        vhost: String,
        /// The limit ("max-connections", "max-queues"), or `None` for all.
        name: Option<String>,
    },
    /// The limits of one user or of all that have some; answers
    /// [`AdminReply::UserLimits`].
    ListUserLimits {
        /// Only this user.
        user: Option<String>,
    },
    /// Sets the given limits of a user, keeping the others.
    SetUserLimits {
        /// User name.
        user: String,
        /// The limits given.
        limits: UserLimits,
    },
    /// Clears a user's limit by name, or all of them.
    ClearUserLimits {
        /// User name.
        user: String,
        /// The limit ("max-connections", "max-channels"), or `None` for all.
        name: Option<String>,
    },
    /// Every topic permission; answers [`AdminReply::TopicPermissions`].
    ListTopicPermissions,
    /// Sets a user's topic permissions on an exchange of a vhost.
    SetTopicPermissions(TopicPermissionRecord),
    /// Clears a user's topic permissions in a vhost, on one exchange or all.
    ClearTopicPermissions {
        /// User name.
        user: String,
        /// Vhost name.
        vhost: String,
        /// Only this exchange.
        exchange: Option<String>,
    },
    /// Policies or operator policies, in one vhost or all; answers
    /// [`AdminReply::Policies`].
    ListPolicies {
        /// Operator policies rather than policies.
        operator: bool,
        /// Only this vhost.
        vhost: Option<String>,
    },
    /// Sets a policy or an operator policy (validated; applied at once to what matches).
    SetPolicy(PolicyRecord),
    /// Clears a policy or an operator policy.
    ClearPolicy {
        /// An operator policy.
        operator: bool,
        /// Vhost name.
        vhost: String,
        /// Policy name.
        name: String,
    },
    /// Queues, in one vhost or all; answers [`AdminReply::Queues`].
    ListQueues {
        /// Only this vhost.
        vhost: Option<String>,
    },
    /// Exchanges; answers [`AdminReply::Exchanges`].
    ListExchanges {
        /// Only this vhost.
        vhost: Option<String>,
    },
    /// Bindings, including the default exchange's implicit ones; answers
    /// [`AdminReply::Bindings`].
    ListBindings {
        /// Only this vhost.
        vhost: Option<String>,
    },
    /// Client connections; answers [`AdminReply::Connections`].
    ListConnections,
    /// Channels; answers [`AdminReply::Channels`].
    ListChannels,
    /// Consumers; answers [`AdminReply::Consumers`].
    ListConsumers {
        /// Only this vhost.
        vhost: Option<String>,
    },
    /// Declares a queue; answers [`AdminReply::Put`].
    DeclareQueue {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Queue name.
        name: String,
        /// Survives a restart.
        durable: bool,
        /// Deleted after its last consumer goes.
        auto_delete: bool,
        /// Declaration arguments.
        arguments: FieldTable,
    },
    /// Deletes a queue; answers [`AdminReply::Count`] (ready messages it held).
    DeleteQueue {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Queue name.
        name: String,
        /// Only if it holds no ready message.
        if_empty: bool,
        /// Only if it has no consumer.
        if_unused: bool,
    },
    /// Drops a queue's ready messages; answers [`AdminReply::Count`].
    PurgeQueue {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Queue name.
        name: String,
    },
    /// Declares an exchange; answers [`AdminReply::Put`].
    DeclareExchange {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Exchange name.
        name: String,
        /// Type name ("direct", "fanout", "topic", "headers").
        kind: String,
        /// Survives a restart.
        durable: bool,
        /// Deleted after its last binding goes.
        auto_delete: bool,
        /// Not published to directly.
        internal: bool,
        /// Declaration arguments.
        arguments: FieldTable,
    },
    /// Deletes an exchange.
    DeleteExchange {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Exchange name.
        name: String,
        /// Only if it has no bindings.
        if_unused: bool,
    },
    /// Adds a binding.
    Bind {
        /// Who asks.
        actor: Actor,
        /// The binding.
        binding: BindingInfo,
    },
    /// Removes a binding (succeeds when there is none).
    Unbind {
        /// Who asks.
        actor: Actor,
        /// The binding.
        binding: BindingInfo,
    },
    /// Publishes a message; answers [`AdminReply::Routed`].
    Publish {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Exchange ("" or "amq.default" for the default exchange).
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Message properties.
        properties: Box<BasicProperties>,
        /// Message body.
        body: Bytes,
    },
    /// Takes up to `count` messages from a queue; answers [`AdminReply::Messages`].
    Get {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Queue name.
        queue: String,
        /// Most messages to take.
        count: usize,
        /// What happens to them.
        ack: GetAck,
    },
    /// Reads up to `count` ready messages from the head of a queue, in delivery order,
    /// without taking them: they stay where they are, not flagged redelivered, and no
    /// counter moves. Only messages held in memory are read (a paged-out tail is not);
    /// answers [`AdminReply::Messages`].
    Peek {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Queue name.
        queue: String,
        /// Most messages to read.
        count: usize,
    },
    /// Takes the ready messages at these positions ([`GotMessage::position`]) out of a
    /// queue of dead letters and publishes each again to the exchange and with the routing
    /// key it had when it first died (the oldest entry of its `x-death`); answers
    /// [`AdminReply::Count`] (messages republished). Every message must still be in the
    /// queue and carry an `x-death` naming an exchange the actor may write to, or nothing
    /// is moved.
    Republish {
        /// Who asks.
        actor: Actor,
        /// Vhost.
        vhost: String,
        /// Queue name.
        queue: String,
        /// Positions of the messages.
        positions: Vec<u64>,
    },
    /// Closes a client connection with 320 CONNECTION_FORCED and this reason.
    CloseConnection {
        /// The connection.
        id: ConnId,
        /// The reason given to the client.
        reason: String,
    },
    /// Stops the AMQP side: closes every connection and refuses new logins.
    StopApp,
    /// Resumes the AMQP side.
    StartApp,
    /// Empties the node back to its first-start state (the app must be stopped).
    Reset,
    /// Users, vhosts, permissions and topology in RabbitMQ's definitions form; answers
    /// [`AdminReply::Definitions`].
    ExportDefinitions {
        /// Only this vhost's topology (and no users).
        vhost: Option<String>,
    },
    /// Creates what a definitions document describes.
    ImportDefinitions(Box<Definitions>),
}

/// A message taken by [`AdminRequest::Get`].
#[derive(Debug, Clone, PartialEq)]
pub struct GotMessage {
    /// The message.
    pub message: Arc<Message>,
    /// Delivered before.
    pub redelivered: bool,
    /// Ready messages left in the queue after this one was taken (for a peek: the ready
    /// messages in the queue).
    pub message_count: u64,
    /// Its position in the queue (increasing in publish order).
    pub position: u64,
}

/// A user with the vhosts it has permissions in.
#[derive(Debug, Clone, PartialEq)]
pub struct Whoami {
    /// The user.
    pub user: UserRecord,
    /// Vhosts the user has permissions in.
    pub vhosts: Vec<String>,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminReply {
    /// Done; nothing to report.
    Done,
    /// A create-or-update: true when the object was created.
    Put {
        /// Whether it was created (false: it existed).
        created: bool,
    },
    /// A count of messages (purged or deleted with a queue).
    Count(u64),
    /// Whether a published message reached a queue.
    Routed(bool),
    /// A user and its vhosts.
    Whoami(Whoami),
    /// Totals.
    Overview(Box<Overview>),
    /// Users.
    Users(Vec<UserRecord>),
    /// Vhosts.
    Vhosts(Vec<VhostInfo>),
    /// Permissions.
    Permissions(Vec<PermissionRecord>),
    /// Vhosts' limits, by vhost name.
    VhostLimits(Vec<(String, VhostLimits)>),
    /// Users' limits, by user name.
    UserLimits(Vec<(String, UserLimits)>),
    /// Policies, by vhost then precedence.
    Policies(Vec<PolicyRecord>),
    /// Topic permissions, by user, vhost and exchange.
    TopicPermissions(Vec<TopicPermissionRecord>),
    /// Queues.
    Queues(Vec<QueueInfo>),
    /// Exchanges.
    Exchanges(Vec<ExchangeInfo>),
    /// Bindings.
    Bindings(Vec<BindingInfo>),
    /// Connections.
    Connections(Vec<ConnectionInfo>),
    /// Channels.
    Channels(Vec<ChannelInfo>),
    /// Consumers.
    Consumers(Vec<ConsumerInfo>),
    /// Messages taken from a queue.
    Messages(Vec<GotMessage>),
    /// A definitions document.
    Definitions(Box<Definitions>),
}

/// Why an operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminErrorKind {
    /// Wrong user name or password.
    NotAuthenticated,
    /// Permissions do not allow it (AMQP 403).
    AccessRefused,
    /// The object does not exist.
    NotFound,
    /// The object exists and the request said it must not.
    AlreadyExists,
    /// The request is malformed (bad regex, unknown exchange type).
    BadRequest,
    /// The object is not in a state that allows it (in use, not empty, inequivalent,
    /// app running during reset).
    PreconditionFailed,
    /// The object is locked by another connection (exclusive queue).
    Locked,
}

/// A failed operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminError {
    /// The kind of failure.
    pub kind: AdminErrorKind,
    /// RabbitMQ's text for it, where there is one.
    pub reason: String,
}

impl AdminError {
    /// An error of `kind`.
    pub fn new(kind: AdminErrorKind, reason: impl Into<String>) -> Self {
        AdminError {
            kind,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for AdminError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl From<AmqpError> for AdminError {
    fn from(e: AmqpError) -> Self {
        let kind = match e.code {
            constants::ACCESS_REFUSED => AdminErrorKind::AccessRefused,
            constants::NOT_FOUND => AdminErrorKind::NotFound,
            constants::RESOURCE_LOCKED => AdminErrorKind::Locked,
            constants::PRECONDITION_FAILED => AdminErrorKind::PreconditionFailed,
            _ => AdminErrorKind::BadRequest,
        };
        AdminError {
            kind,
            reason: e.text,
        }
    }
}

/// The result of an operation.
pub type AdminResult = Result<AdminReply, AdminError>;

/// The driver's number for an administrative request, echoed in its answer
/// ([`crate::broker::Output::Admin`]).
pub type AdminId = u64;

/// Refuses a field table the store could not read back (too deep or too large), naming
/// what it belongs to.
fn check_table(table: &FieldTable, what: &str) -> Result<(), AdminError> {
    table
        .check_limits()
        .map_err(|e| bad_request(format!("{what}: {e}")))
}

fn not_found(what: impl Into<String>) -> AdminError {
    AdminError::new(AdminErrorKind::NotFound, what)
}

fn bad_request(what: impl Into<String>) -> AdminError {
    AdminError::new(AdminErrorKind::BadRequest, what)
}

impl Broker {
    /// Handles an administrative operation at `now_ms`. Replies and store batches it causes
    /// (connections closed, consumers cancelled) come out of [`Broker::poll_output`] as
    /// usual.
    ///
    /// The answer comes out of [`Broker::poll_output`] as [`Output::Admin`] carrying `id`:
    /// at once when nothing durable changed, otherwise once [`Broker::handle_persisted`]
    /// reports the batch holding the changes, as publisher confirms wait. A get or peek
    /// that asks for more messages than the queue holds in memory while the rest is paged
    /// is answered once the read of the store it starts is in.
    pub fn handle_admin(&mut self, id: AdminId, request: AdminRequest, now_ms: u64) {
        self.now_ms = now_ms;
        let Some(request) = self.wait_for_paged(id, request) else {
            self.finish_round();
            return;
        };
        let result = self.admin_dispatch(request);
        self.finish_round();
        self.answer_admin(id, result);
    }

    /// Sends an administrative answer, once the store batch holding the changes it made
    /// (if any) is synced.
    pub(in crate::broker) fn answer_admin(&mut self, id: AdminId, result: AdminResult) {
        if self.round.journal.ops.is_empty() {
            self.round.outbox.answers.push_back((id, result));
        } else {
            let batch = self.current_batch();
            self.round
                .deferred
                .push_back((batch, Deferred::Admin { id, result }));
        }
    }

    /// Whether the AMQP side is running (not stopped by [`AdminRequest::StopApp`]).
    pub fn app_running(&self) -> bool {
        self.node.app_running
    }

    /// Message counters for the whole broker.
    pub fn message_totals(&self) -> MessageCounters {
        self.counters.totals
    }

    pub(in crate::broker) fn admin_dispatch(&mut self, request: AdminRequest) -> AdminResult {
        request.check_name_sizes()?;
        // Each area takes its own requests and hands the others back.
        let request = match self.admin_accounts(request) {
            Ok(answer) => return answer,
            Err(other) => other,
        };
        let request = match self.admin_listing(request) {
            Ok(answer) => return answer,
            Err(other) => other,
        };
        match self.admin_objects(request) {
            Ok(answer) => answer,
            Err(other) => self.admin_node(other),
        }
    }

    /// Users, vhosts, permissions and limits.
    fn admin_accounts(&mut self, request: AdminRequest) -> Result<AdminResult, AdminRequest> {
        use AdminRequest as R;
        Ok(match request {
            R::Authenticate {
                username,
                password,
                from_loopback,
            } => self.authenticate(&username, &password, from_loopback),
            R::Whoami { username } => self.whoami(&username),
            R::ListUsers => Ok(AdminReply::Users(
                self.accounts.users.iter().cloned().collect(),
            )),
            R::PutUser {
                name,
                password,
                tags,
                mode,
            } => self.put_user(&name, password, tags, mode),
            R::DeleteUser { name } => self.delete_user(&name),
            R::ListVhosts => Ok(AdminReply::Vhosts(self.list_vhosts())),
            R::PutVhost { name, mode } => self.put_vhost(&name, mode),
            R::DeleteVhost { name } => self.delete_vhost(&name),
            R::ListPermissions => Ok(AdminReply::Permissions(
                self.accounts.users.all_permissions().cloned().collect(),
            )),
            R::SetPermissions(p) => self.set_permissions(p),
            R::ClearPermissions { user, vhost } => self.clear_permissions(&user, &vhost),
            R::ListTopicPermissions => Ok(AdminReply::TopicPermissions(
                self.accounts.users.all_topic().cloned().collect(),
            )),
            R::SetTopicPermissions(p) => self.set_topic_permissions(p),
            R::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => self.clear_topic_permissions(&user, &vhost, exchange.as_deref()),
            R::ListVhostLimits { vhost } => self.list_vhost_limits(vhost.as_deref()),
            R::SetVhostLimits {
                vhost,
                limits,
                replace,
            } => self.set_vhost_limits(&vhost, limits, replace),
            R::ClearVhostLimits { vhost, name } => self.clear_vhost_limits(&vhost, name.as_deref()),
            R::ListUserLimits { user } => self.list_user_limits(user.as_deref()),
            R::SetUserLimits { user, limits } => self.set_user_limits(&user, limits),
            R::ClearUserLimits { user, name } => self.clear_user_limits(&user, name.as_deref()),
            R::ListPolicies { operator, vhost } => self.list_policies(operator, vhost.as_deref()),
            R::SetPolicy(p) => self.set_policy(p),
            R::ClearPolicy {
                operator,
                vhost,
                name,
            } => self.clear_policy(operator, &vhost, &name),
            other => return Err(other),
        })
    }

    /// Listings and totals.
    fn admin_listing(&mut self, request: AdminRequest) -> Result<AdminResult, AdminRequest> {
        use AdminRequest as R;
        Ok(match request {
            R::Overview => Ok(AdminReply::Overview(Box::new(self.overview()))),
            R::ListQueues { vhost } => Ok(AdminReply::Queues(self.list_queues(vhost.as_deref()))),
            R::ListExchanges { vhost } => {
                Ok(AdminReply::Exchanges(self.list_exchanges(vhost.as_deref())))
            }
            R::ListBindings { vhost } => {
                Ok(AdminReply::Bindings(self.list_bindings(vhost.as_deref())))
            }
            R::ListConnections => Ok(AdminReply::Connections(self.list_connections())),
            R::ListChannels => Ok(AdminReply::Channels(self.list_channels())),
            R::ListConsumers { vhost } => {
                Ok(AdminReply::Consumers(self.list_consumers(vhost.as_deref())))
            }
            other => return Err(other),
        })
    }

    /// Queues, exchanges, bindings, messages and connections.
    fn admin_objects(&mut self, request: AdminRequest) -> Result<AdminResult, AdminRequest> {
        use AdminRequest as R;
        Ok(match request {
            R::DeclareQueue {
                actor,
                vhost,
                name,
                durable,
                auto_delete,
                arguments,
            } => self.admin_declare_queue(&actor, &vhost, &name, durable, auto_delete, arguments),
            R::DeleteQueue {
                actor,
                vhost,
                name,
                if_empty,
                if_unused,
            } => self.admin_delete_queue(&actor, &vhost, &name, if_empty, if_unused),
            R::PurgeQueue { actor, vhost, name } => self.admin_purge_queue(&actor, &vhost, &name),
            R::DeclareExchange {
                actor,
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            } => self.admin_declare_exchange(
                &actor,
                &vhost,
                &name,
                &kind,
                [durable, auto_delete, internal],
                arguments,
            ),
            R::DeleteExchange {
                actor,
                vhost,
                name,
                if_unused,
            } => self.admin_delete_exchange(&actor, &vhost, &name, if_unused),
            R::Bind { actor, binding } => self.admin_bind(&actor, binding, true),
            R::Unbind { actor, binding } => self.admin_bind(&actor, binding, false),
            R::Publish {
                actor,
                vhost,
                exchange,
                routing_key,
                properties,
                body,
            } => self.admin_publish(&actor, &vhost, &exchange, routing_key, *properties, body),
            R::Get {
                actor,
                vhost,
                queue,
                count,
                ack,
            } => self.admin_get(&actor, &vhost, &queue, count, ack),
            R::Peek {
                actor,
                vhost,
                queue,
                count,
            } => self.admin_peek(&actor, &vhost, &queue, count),
            R::Republish {
                actor,
                vhost,
                queue,
                positions,
            } => self.admin_republish(&actor, &vhost, &queue, &positions),
            R::CloseConnection { id, reason } => self.admin_close_connection(id, &reason),
            other => return Err(other),
        })
    }

    /// The node: its app, a reset, definitions.
    fn admin_node(&mut self, request: AdminRequest) -> AdminResult {
        use AdminRequest as R;
        match request {
            R::StopApp => {
                if self.node.app_running {
                    self.node.app_running = false;
                    let now = self.now_ms;
                    self.close_all_connections("shutdown", now);
                }
                Ok(AdminReply::Done)
            }
            R::StartApp => {
                self.node.app_running = true;
                Ok(AdminReply::Done)
            }
            R::Reset => self.reset(),
            R::ExportDefinitions { vhost: Some(v) }
                if !self.topology.vhosts.contains_key(v.as_str()) =>
            {
                Err(bad_request("vhost_not_found"))
            }
            R::ExportDefinitions { vhost } => Ok(AdminReply::Definitions(Box::new(
                self.export_definitions(vhost.as_deref()),
            ))),
            R::ImportDefinitions(defs) => self.import_definitions(*defs),
            // Every other request belongs to an area above.
            _ => Err(bad_request("unsupported request")),
        }
    }

    /// Closes a connection with 320 CONNECTION_FORCED, RabbitMQ's way of telling a client
    /// that the operator (not the protocol) ended it.
    pub(super) fn force_close(&mut self, conn: ConnId, reason: &str) {
        let close = crate::proto::method::ConnectionClose {
            reply_code: constants::CONNECTION_FORCED,
            reply_text: crate::proto::connection::truncate_shortstr(format!(
                "CONNECTION_FORCED - {reason}"
            )),
            class_id: 0,
            method_id: 0,
        };
        self.send_method(
            conn,
            0,
            crate::proto::method::Method::ConnectionClose(close),
        );
        self.close_connection(conn);
    }

    fn admin_close_connection(&mut self, id: ConnId, reason: &str) -> AdminResult {
        if !self.sessions.conns.contains_key(&id) {
            return Err(not_found(format!("connection {id} not found")));
        }
        self.force_close(id, reason);
        Ok(AdminReply::Done)
    }

    /// Closes every connection matching `pred` with 320 and `reason`.
    fn force_close_where(&mut self, reason: &str, pred: impl Fn(&super::Conn) -> bool) {
        let mut ids: Vec<ConnId> = self
            .sessions
            .conns
            .iter()
            .filter(|(_, c)| pred(c))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.force_close(id, reason);
        }
    }
}

#[cfg(test)]
mod tests;
