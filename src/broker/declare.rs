//! Topology methods: exchange.* and queue.*, with RabbitMQ's checks and error texts.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::proto::command::ConnId;
use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};
use crate::store::{BindingRecord, ExchangeRecord, QueueRecord, StoreOp};

use super::Broker;
use super::auth::Access;
use super::error::*;
use super::exchange::{Binding, Destination, Exchange, ExchangeKind, QueueId};
use super::policy::Target;
use super::queue::{Declaration, Queue, QueueSettings};

/// Queue arguments whose values must match on redeclaration, as RabbitMQ checks them.
const EQUIVALENT_QUEUE_ARGS: [&str; 12] = [
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-queue-master-locator",
];

impl Broker {
    /// A random name with a prefix, as RabbitMQ makes them (`amq.gen-…`, `amq.ctag-…`).
    pub(super) fn generate_name(&mut self, prefix: &str) -> String {
        let mut raw = [0u8; 16];
        self.rng.fill_bytes(&mut raw);
        format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Fails unless the connection's user has `access` to `name` in its vhost.
    /// RabbitMQ's topic authorisation: on a topic exchange where the user has topic
    /// permissions, a publish's routing key must match the write pattern and a binding's
    /// key the read pattern (elsewhere, and without topic permissions, anything goes).
    pub(super) fn check_topic(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> AmqpResult<()> {
        let Some(p) = self.accounts.users.topic(user, vhost, exchange) else {
            return Ok(());
        };
        let is_topic = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .is_some_and(|x| x.kind == ExchangeKind::Topic);
        if !is_topic || p.allows(access, routing_key) {
            return Ok(());
        }
        Err(access_refused(format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
        )))
    }

    /// [`Broker::check_topic`] for the user and vhost of a connection.
    pub(super) fn check_topic_access(
        &self,
        conn: ConnId,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> AmqpResult<()> {
        let (vhost, user) = self.open_session(conn)?;
        self.check_topic(&user, &vhost, access, exchange, routing_key)
    }

    pub(super) fn check_access(
        &self,
        conn: ConnId,
        access: Access,
        kind: &str,
        name: &str,
    ) -> AmqpResult<()> {
        let Some((vhost, user)) = self.session(conn) else {
            return Err(command_invalid("connection not open"));
        };
        // RabbitMQ names the default exchange "amq.default" in permission checks.
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let allowed = self
            .accounts
            .users
            .permissions(&user, &vhost)
            .is_some_and(|p| p.allows(access, name));
        if allowed {
            Ok(())
        } else {
            Err(access_refused(format!(
                "access to {} refused for user '{user}'",
                resource(kind, name, &vhost)
            )))
        }
    }

    /// Resolves the empty queue name to the channel's last declared queue.
    pub(super) fn expand_queue_name(
        &self,
        conn: ConnId,
        channel: u16,
        name: &str,
    ) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        let last = self
            .sessions
            .conns
            .get(&conn)
            .and_then(|c| c.channels.get(&channel))
            .map(|ch| ch.last_queue.clone())
            .unwrap_or_default();
        if last.is_empty() {
            Err(not_found("no previously declared queue"))
        } else {
            Ok(last)
        }
    }

    /// A queue the connection may read from (consume, get, purge), by the name a method
    /// gave (empty: the channel's last declared queue): its id, name and vhost.
    pub(super) fn readable_queue(
        &self,
        conn: ConnId,
        channel: u16,
        name: &str,
    ) -> AmqpResult<(QueueId, String, Arc<str>)> {
        let (vhost, _) = self.open_session(conn)?;
        let name = self.expand_queue_name(conn, channel, name)?;
        let id = self.usable_queue(conn, &vhost, &name)?;
        self.check_access(conn, Access::Read, "queue", &name)?;
        Ok((id, name, vhost))
    }

    /// Finds a queue the connection may use: 404 if missing, 405 if another connection's
    /// exclusive queue.
    pub(super) fn usable_queue(
        &self,
        conn: ConnId,
        vhost: &str,
        name: &str,
    ) -> AmqpResult<QueueId> {
        let id = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.queues.get(name))
            .copied()
            .ok_or_else(|| not_found(format!("no {}", resource("queue", name, vhost))))?;
        let q = self
            .topology
            .queues
            .get(&id)
            .ok_or_else(|| not_found(format!("no {}", resource("queue", name, vhost))))?;
        if q.decl.exclusive_owner.is_some_and(|owner| owner != conn) {
            return Err(exclusive_lock_error(name, vhost));
        }
        Ok(id)
    }

    fn exchange_exists(&self, vhost: &str, name: &str) -> AmqpResult<&Exchange> {
        self.topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(name))
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", name, vhost))))
    }

    // ----- exchange.* -----

    pub(super) fn exchange_declare(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: ExchangeDeclare,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let name = strip_cr_lf(&m.exchange);
        if m.passive {
            if name.is_empty() {
                return Err(access_refused(
                    "operation not permitted on the default exchange",
                ));
            }
            self.exchange_exists(&vhost, &name)?;
            return self.reply(
                conn,
                channel,
                m.nowait,
                Method::ExchangeDeclareOk(ExchangeDeclareOk {}),
            );
        }
        let (kind, delayed) =
            ExchangeKind::parse_declared(&m.kind, &m.arguments).map_err(|e| match e {
                Some(text) => precondition_failed(text),
                None => command_invalid(format!("invalid exchange type '{}'", m.kind)),
            })?;
        if name.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Configure, "exchange", &name)?;
        let nowait = m.nowait;
        let v = self
            .topology
            .vhosts
            .get(&*vhost)
            .ok_or_else(|| not_allowed("vhost gone"))?;
        match v.exchanges.get(&name) {
            Some(x) => assert_exchange_equivalent(x, (kind, delayed), &m, &vhost)?,
            None => {
                self.check_new_exchange(conn, &vhost, &name, &m)?;
                self.add_exchange(&vhost, name, (kind, delayed), m)?;
            }
        }
        self.reply(
            conn,
            channel,
            nowait,
            Method::ExchangeDeclareOk(ExchangeDeclareOk {}),
        )
    }

    /// Refuses an exchange `exchange.declare` would create: a reserved name, one past the
    /// vhost's limit, arguments past the table limits, or an alternate exchange the
    /// declarer may not use.
    fn check_new_exchange(
        &self,
        conn: ConnId,
        vhost: &str,
        name: &str,
        m: &ExchangeDeclare,
    ) -> AmqpResult<()> {
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let max = self.config.limits.max_exchanges_per_vhost;
        if self
            .topology
            .vhosts
            .get(vhost)
            .is_some_and(|v| v.exchanges.len() >= max)
        {
            return Err(not_allowed(format!(
                "exchange limit of {max} in vhost '{vhost}' reached"
            )));
        }
        check_table_limits(&m.arguments, "exchange", name, vhost)?;
        if let Ok((kind, _)) = ExchangeKind::parse_declared(&m.kind, &m.arguments) {
            kind.check_arguments(&m.arguments)
                .map_err(precondition_failed)?;
        }
        if let Some(ae) = m.arguments.get("alternate-exchange") {
            let Some(ae) = ae.as_str() else {
                return Err(precondition_failed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in {}",
                    super::queue::type_name(ae),
                    resource("exchange", name, vhost)
                )));
            };
            // Unroutable messages are published to it on the declarer's behalf.
            self.check_access(conn, Access::Read, "exchange", name)?;
            self.check_access(conn, Access::Write, "exchange", ae)?;
        }
        Ok(())
    }

    /// Creates the exchange an `exchange.declare` asked for, and stores it if durable.
    pub(super) fn add_exchange(
        &mut self,
        vhost: &str,
        name: String,
        (kind, delayed): (ExchangeKind, bool),
        m: ExchangeDeclare,
    ) -> AmqpResult<()> {
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return Err(not_allowed("vhost gone"));
        };
        let mut x = Exchange::new(
            &name,
            kind,
            m.durable,
            m.auto_delete,
            m.internal,
            m.arguments.clone(),
        );
        v.policies
            .applied(&name, Target::Exchange)
            .apply_to_exchange(&mut x);
        x.delayed = delayed;
        let type_name = x.type_name();
        v.exchanges.insert(name.clone(), x);
        if m.durable {
            self.round
                .journal
                .push(StoreOp::PutExchange(ExchangeRecord {
                    vhost: vhost.to_string(),
                    name,
                    kind: type_name.into(),
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: m.arguments,
                }));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: ExchangeDelete,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let name = strip_cr_lf(&m.exchange);
        if name.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Configure, "exchange", &name)?;
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "deletion of system {} not allowed",
                resource("exchange", &name, &vhost)
            )));
        }
        if let Some(x) = self
            .topology
            .vhosts
            .get(&*vhost)
            .and_then(|v| v.exchanges.get(&name))
        {
            if m.if_unused && x.binding_count() > 0 {
                return Err(precondition_failed(format!(
                    "{} in use",
                    resource("exchange", &name, &vhost)
                )));
            }
            self.delete_exchange(&vhost, &name);
        }
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::ExchangeDeleteOk(ExchangeDeleteOk {}),
        )
    }

    pub(super) fn exchange_bind(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: ExchangeBind,
        bind: bool,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        if m.source.is_empty() || m.destination.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Write, "exchange", &m.destination)?;
        self.check_access(conn, Access::Read, "exchange", &m.source)?;
        self.check_topic_access(conn, Access::Read, &m.source, &m.routing_key)?;
        if bind {
            self.exchange_exists(&vhost, &m.source)?;
            self.exchange_exists(&vhost, &m.destination)?;
        }
        // Unbinding is idempotent, as in RabbitMQ: a binding whose exchanges are gone is
        // gone too, and removing it succeeds.
        check_table_limits(&m.arguments, "exchange", &m.destination, &vhost)?;
        let binding = Binding {
            destination: Destination::Exchange(m.destination.clone()),
            routing_key: m.routing_key,
            arguments: m.arguments,
        };
        if bind {
            self.add_binding(&vhost, &m.source, binding)?;
            self.reply(
                conn,
                channel,
                m.nowait,
                Method::ExchangeBindOk(ExchangeBindOk {}),
            )
        } else {
            self.remove_binding(&vhost, &m.source, &binding);
            self.reply(
                conn,
                channel,
                m.nowait,
                Method::ExchangeUnbindOk(ExchangeUnbindOk {}),
            )
        }
    }

    // ----- queue.* -----

    pub(super) fn queue_declare(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueDeclare,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let requested = strip_cr_lf(&m.queue);
        // RabbitMQ answers a declare of the reply-to pseudo-queue, passive or not, as it
        // answers a passive one.
        if let Some(answer) = self.reply_declare(conn, channel, &requested, m.nowait) {
            return answer;
        }
        if m.passive {
            let name = self.expand_queue_name(conn, channel, &requested)?;
            let id = self.usable_queue(conn, &vhost, &name)?;
            return self.declare_ok(conn, channel, id, m.nowait);
        }
        let name = if requested.is_empty() {
            self.generate_name("amq.gen-")
        } else if requested.starts_with("amq.") {
            return Err(access_refused(format!(
                "queue name '{requested}' contains reserved prefix 'amq.*'"
            )));
        } else {
            requested
        };
        self.check_access(conn, Access::Configure, "queue", &name)?;
        let existing = self
            .topology
            .vhosts
            .get(&*vhost)
            .and_then(|v| v.queues.get(&name))
            .copied();
        let id = match existing {
            Some(id) => {
                let q = self
                    .topology
                    .queues
                    .get(&id)
                    .ok_or_else(|| not_found("queue vanished"))?;
                if q.decl.exclusive_owner.is_some_and(|o| o != conn)
                    || (m.exclusive && q.decl.exclusive_owner.is_none())
                {
                    return Err(exclusive_lock_error(&name, &vhost));
                }
                assert_queue_equivalent(q, &m, &vhost)?;
                id
            }
            None => {
                if let Some(dlx) = m
                    .arguments
                    .get("x-dead-letter-exchange")
                    .and_then(|v| v.as_str())
                {
                    // Dead letters are published to the exchange on the declarer's behalf.
                    self.check_access(conn, Access::Read, "queue", &name)?;
                    self.check_access(conn, Access::Write, "exchange", dlx)?;
                }
                self.create_queue(conn, &vhost, &name, &m)?
            }
        };
        if let Some(ch) = self.channel_mut(conn, channel) {
            ch.last_queue = name;
        }
        self.touch_queue(id);
        self.declare_ok(conn, channel, id, m.nowait)
    }

    pub(super) fn create_queue(
        &mut self,
        conn: ConnId,
        vhost: &str,
        name: &str,
        m: &QueueDeclare,
    ) -> AmqpResult<QueueId> {
        self.check_queue_limit(vhost, name)?;
        check_table_limits(&m.arguments, "queue", name, vhost)?;
        let settings = QueueSettings::from_arguments(&m.arguments, name, vhost)?;
        validate_queue_type(m, name, vhost)?;
        if self.topology.queues.len() >= self.config.limits.max_queues {
            return Err(precondition_failed(format!(
                "cannot declare {}: the broker's limit of {} queues is reached",
                resource("queue", name, vhost),
                self.config.limits.max_queues
            )));
        }
        let id = self.topology.next_queue_id;
        self.topology.next_queue_id += 1;
        let mut decl = Declaration {
            name: name.to_string(),
            vhost: vhost.to_string(),
            // An exclusive durable queue is not stored, so it must not store messages
            // either.
            durable: m.durable && !m.exclusive,
            exclusive_owner: m.exclusive.then_some(conn),
            auto_delete: m.auto_delete,
            arguments: m.arguments.clone(),
            declared: settings.clone(),
            policy: Default::default(),
            settings,
        };
        if let Some(v) = self.topology.vhosts.get(vhost) {
            v.policies
                .applied(name, Target::Queue)
                .apply_to_queue(&mut decl);
        }
        let q = Queue::new(id, decl, self.topology.meter.clone(), self.now_ms);
        if m.exclusive {
            if let Some(c) = self.sessions.conns.get_mut(&conn) {
                c.exclusive_queues.push(id);
            }
        } else if m.durable {
            // Exclusive queues die with their connection, so they are never stored.
            self.round.journal.push(StoreOp::PutQueue(QueueRecord {
                vhost: vhost.to_string(),
                name: name.to_string(),
                id,
                auto_delete: m.auto_delete,
                arguments: m.arguments.clone(),
            }));
        }
        self.topology.queues.insert(id, q);
        if let Some(v) = self.topology.vhosts.get_mut(vhost) {
            v.queues.insert(name.to_string(), id);
        }
        Ok(id)
    }

    fn declare_ok(
        &mut self,
        conn: ConnId,
        channel: u16,
        id: QueueId,
        nowait: bool,
    ) -> AmqpResult<()> {
        let q = self
            .topology
            .queues
            .get(&id)
            .ok_or_else(|| not_found("queue vanished"))?;
        let ok = QueueDeclareOk {
            queue: q.decl.name.clone(),
            message_count: q.ready_count() as u32,
            consumer_count: q.consumers.len() as u32,
        };
        self.reply(conn, channel, nowait, Method::QueueDeclareOk(ok))
    }

    pub(super) fn queue_bind(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueBind,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let queue = self.expand_queue_name(conn, channel, &m.queue)?;
        // With both the queue and the key empty, the key is the last declared queue's name.
        let routing_key = if m.queue.is_empty() && m.routing_key.is_empty() {
            queue.clone()
        } else {
            m.routing_key
        };
        let binding =
            self.queue_binding(conn, &vhost, &m.exchange, &queue, routing_key, m.arguments)?;
        self.add_binding(&vhost, &m.exchange, binding)?;
        self.reply(conn, channel, m.nowait, Method::QueueBindOk(QueueBindOk {}))
    }

    pub(super) fn queue_unbind(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueUnbind,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let queue = self.expand_queue_name(conn, channel, &m.queue)?;
        // Unbinding is idempotent, as in RabbitMQ: with the exchange or the queue gone, the
        // binding is gone and the unbind succeeds (after the same permission checks).
        let gone = self.exchange_exists(&vhost, &m.exchange).is_err()
            || self
                .topology
                .vhosts
                .get(&*vhost)
                .is_none_or(|v| !v.queues.contains_key(&queue));
        if gone && !m.exchange.is_empty() {
            self.check_access(conn, Access::Write, "queue", &queue)?;
            self.check_access(conn, Access::Read, "exchange", &m.exchange)?;
            check_table_limits(&m.arguments, "queue", &queue, &vhost)?;
        } else {
            let binding = self.queue_binding(
                conn,
                &vhost,
                &m.exchange,
                &queue,
                m.routing_key,
                m.arguments,
            )?;
            self.remove_binding(&vhost, &m.exchange, &binding);
        }
        self.reply(
            conn,
            channel,
            false,
            Method::QueueUnbindOk(QueueUnbindOk {}),
        )
    }

    /// Checks a queue binding's participants and permissions, in RabbitMQ's order.
    fn queue_binding(
        &self,
        conn: ConnId,
        vhost: &str,
        exchange: &str,
        queue: &str,
        routing_key: String,
        arguments: FieldTable,
    ) -> AmqpResult<Binding> {
        if exchange.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Write, "queue", queue)?;
        self.check_access(conn, Access::Read, "exchange", exchange)?;
        self.exchange_exists(vhost, exchange)?;
        self.check_topic_access(conn, Access::Read, exchange, &routing_key)?;
        let id = self.usable_queue(conn, vhost, queue)?;
        check_table_limits(&arguments, "queue", queue, vhost)?;
        Ok(Binding {
            destination: Destination::Queue(id),
            routing_key,
            arguments,
        })
    }

    pub(super) fn queue_purge(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueuePurge,
    ) -> AmqpResult<()> {
        let (id, _, _) = self.readable_queue(conn, channel, &m.queue)?;
        let count = self.purge_ready(id) as u32;
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::QueuePurgeOk(QueuePurgeOk {
                message_count: count,
            }),
        )
    }

    pub(super) fn queue_delete(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueDelete,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let name = self.expand_queue_name(conn, channel, &m.queue)?;
        self.check_access(conn, Access::Configure, "queue", &name)?;
        let count = match self.usable_queue(conn, &vhost, &name) {
            Ok(id) => {
                let q = self
                    .topology
                    .queues
                    .get(&id)
                    .ok_or_else(|| not_found("queue vanished"))?;
                if m.if_unused && !q.consumers.is_empty() {
                    return Err(precondition_failed(format!(
                        "{} in use",
                        resource("queue", &name, &vhost)
                    )));
                }
                if m.if_empty && q.ready_count() > 0 {
                    return Err(precondition_failed(format!(
                        "{} is not empty",
                        resource("queue", &name, &vhost)
                    )));
                }
                self.delete_queue(id)
            }
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(e) if e.code == crate::proto::constants::NOT_FOUND => 0,
            Err(e) => return Err(e),
        };
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::QueueDeleteOk(QueueDeleteOk {
                message_count: count as u32,
            }),
        )
    }

    // ----- shared mechanics -----

    /// Sends a reply unless the client asked for none.
    pub(super) fn reply(
        &mut self,
        conn: ConnId,
        channel: u16,
        nowait: bool,
        method: Method,
    ) -> AmqpResult<()> {
        if !nowait {
            self.send_method(conn, channel, method);
        }
        Ok(())
    }

    /// The name of a binding's destination queue ("" for exchange destinations).
    fn destination_queue_name(&self, destination: &Destination) -> String {
        match destination {
            Destination::Queue(id) => self
                .topology
                .queues
                .get(id)
                .map(|q| q.decl.name.clone())
                .unwrap_or_default(),
            Destination::Exchange(_) => String::new(),
        }
    }

    pub(super) fn add_binding(
        &mut self,
        vhost: &str,
        source: &str,
        binding: Binding,
    ) -> AmqpResult<()> {
        let max = self.config.limits.max_bindings_per_exchange;
        let queue_name = self.destination_queue_name(&binding.destination);
        let durable_destination = match &binding.destination {
            Destination::Queue(id) => self.topology.queues.get(id).is_some_and(|q| q.decl.durable),
            Destination::Exchange(name) => self
                .topology
                .vhosts
                .get(vhost)
                .and_then(|v| v.exchanges.get(name))
                .is_some_and(|x| x.durable),
        };
        let v = self
            .topology
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| not_allowed("vhost gone"))?;
        let x = v
            .exchanges
            .get_mut(source)
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", source, vhost))))?;
        let max = if x.kind == ExchangeKind::ConsistentHash {
            max.min(super::exchange::MAX_HASH_BINDINGS)
        } else {
            max
        };
        if x.binding_count() >= max {
            return Err(precondition_failed(format!(
                "{} has the maximum of {max} bindings",
                resource("exchange", source, vhost)
            )));
        }
        x.kind
            .check_binding(&binding)
            .map_err(precondition_failed)?;
        let record = (x.durable && durable_destination)
            .then(|| binding_record(vhost, source, &binding, &queue_name));
        if x.bind(binding.clone()) {
            match &binding.destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(id) {
                        q.bound_from.insert(source.to_string());
                    }
                }
                Destination::Exchange(name) => {
                    if let Some(d) = v.exchanges.get_mut(name) {
                        d.bound_from.insert(source.to_string());
                    }
                }
            }
            if let Some(r) = record {
                self.round.journal.push(StoreOp::PutBinding(r));
            }
        }
        Ok(())
    }

    pub(super) fn remove_binding(&mut self, vhost: &str, source: &str, binding: &Binding) {
        let queue_name = self.destination_queue_name(&binding.destination);
        let Some(x) = self
            .topology
            .vhosts
            .get_mut(vhost)
            .and_then(|v| v.exchanges.get_mut(source))
        else {
            return;
        };
        if !x.unbind(binding) {
            return;
        }
        let x_durable = x.durable;
        let now_unused = x.auto_delete && x.binding_count() == 0;
        if !x.binds_to(&binding.destination) {
            match &binding.destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(id) {
                        q.bound_from.remove(source);
                    }
                }
                Destination::Exchange(name) => {
                    if let Some(d) = self
                        .topology
                        .vhosts
                        .get_mut(vhost)
                        .and_then(|v| v.exchanges.get_mut(name))
                    {
                        d.bound_from.remove(source);
                    }
                }
            }
        }
        if x_durable {
            self.round
                .journal
                .push(StoreOp::DeleteBinding(binding_record(
                    vhost,
                    source,
                    binding,
                    &queue_name,
                )));
        }
        if now_unused {
            self.delete_exchange(vhost, source);
        }
    }

    /// Deletes a queue: cancels its consumers (telling those that asked to be told),
    /// removes its bindings and drops its messages. Returns the number of ready messages
    /// it held.
    pub(super) fn delete_queue(&mut self, id: QueueId) -> u64 {
        let Some(mut q) = self.topology.queues.remove(&id) else {
            return 0;
        };
        let waiters = std::mem::take(&mut q.flow_waiters);
        self.release_waiters(id, waiters);
        let gets = std::mem::take(&mut q.waiting_gets);
        self.fail_waiting_gets(gets);
        let consumers = std::mem::take(&mut q.consumers);
        for c in consumers {
            let Some(conn) = self.sessions.conns.get_mut(&c.conn) else {
                continue;
            };
            let notify = conn.cancel_notify;
            if let Some(ch) = conn.channels.get_mut(&c.channel) {
                ch.consumers.remove(&c.tag);
                ch.orphan_deliveries(&c.tag);
            }
            if notify {
                self.round.notices.push((
                    c.conn,
                    c.channel,
                    Method::BasicCancel(BasicCancel {
                        consumer_tag: c.tag.to_string(),
                        nowait: true,
                    }),
                ));
            }
        }
        for source in std::mem::take(&mut q.bound_from) {
            let Some(x) = self
                .topology
                .vhosts
                .get_mut(&q.decl.vhost)
                .and_then(|v| v.exchanges.get_mut(&source))
            else {
                continue;
            };
            let gone = x.unbind_destination(&Destination::Queue(id));
            let x_durable = x.durable;
            let now_unused = x.auto_delete && x.binding_count() == 0;
            if x_durable && q.decl.durable {
                for b in &gone {
                    self.round
                        .journal
                        .push(StoreOp::DeleteBinding(binding_record(
                            &q.decl.vhost,
                            &source,
                            b,
                            &q.decl.name,
                        )));
                }
            }
            if now_unused && !gone.is_empty() {
                self.delete_exchange(&q.decl.vhost, &source);
            }
        }
        if let Some(v) = self.topology.vhosts.get_mut(&q.decl.vhost) {
            v.queues.remove(&q.decl.name);
        }
        if let Some(owner) = q
            .decl
            .exclusive_owner
            .and_then(|o| self.sessions.conns.get_mut(&o))
        {
            owner.exclusive_queues.retain(|x| *x != id);
        }
        let (purged, paged) = q.messages.purge();
        let count = purged.len() as u64 + paged.map_or(0, |(_, n)| n);
        if q.decl.durable {
            // Drops the queue's entries, stored and paged, with it.
            self.round.journal.push(StoreOp::DeleteQueue {
                vhost: q.decl.vhost.clone(),
                name: q.decl.name.clone(),
                id,
            });
        } else if paged.is_some() {
            // Dropping the queue id's contents wholesale costs one write, where a purge
            // would visit every paged message.
            self.round.journal.push(StoreOp::DeleteQueue {
                vhost: q.decl.vhost.clone(),
                name: q.decl.name.clone(),
                id,
            });
        }
        count
    }

    /// Removes every ready message of a queue, in memory and paged; returns how many.
    pub(super) fn purge_ready(&mut self, id: QueueId) -> u64 {
        let Some(q) = self.topology.queues.get_mut(&id) else {
            return 0;
        };
        let (purged, paged) = q.messages.purge();
        let mut count = purged.len() as u64;
        if let Some((from_seq, n)) = paged {
            count += n;
            self.round.journal.push(StoreOp::PurgeFrom {
                queue: id,
                from_seq,
            });
        }
        for entry in purged {
            self.release(id, &entry);
        }
        self.serve_waiting_gets(id);
        self.schedule_dispatch(id);
        count
    }

    /// Deletes an exchange with its bindings in both directions, and any auto-delete
    /// exchange that loses its last binding as a result (and so on, as a work list: a
    /// chain of auto-delete exchanges is as long as a client made it).
    pub(super) fn delete_exchange(&mut self, vhost: &str, name: &str) {
        let mut doomed = vec![name.to_string()];
        while let Some(name) = doomed.pop() {
            self.counters.work += 1;
            let emptied = self.delete_one_exchange(vhost, &name);
            doomed.extend(emptied);
        }
    }

    /// Deletes one exchange with its bindings in both directions; returns the auto-delete
    /// exchanges that lost their last binding.
    fn delete_one_exchange(&mut self, vhost: &str, name: &str) -> Vec<String> {
        let mut emptied = Vec::new();
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return emptied;
        };
        let Some(mut x) = v.exchanges.remove(name) else {
            return emptied;
        };
        if x.delayed {
            self.drop_delayed(vhost, Some(name));
        }
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return emptied;
        };
        debug_assert!(!x.builtin, "predeclared exchanges are never deleted");
        let dest = Destination::Exchange(name.to_string());
        let mut dropped_to_it = Vec::new();
        for src_name in std::mem::take(&mut x.bound_from) {
            let Some(src) = v.exchanges.get_mut(&src_name) else {
                continue;
            };
            let gone = src.unbind_destination(&dest);
            debug_assert!(
                !gone.is_empty(),
                "bound_from names a source without bindings"
            );
            if src.auto_delete && src.binding_count() == 0 {
                emptied.push(src_name.clone());
            }
            if src.durable && x.durable {
                dropped_to_it.extend(gone.into_iter().map(|b| (src_name.clone(), b)));
            }
        }
        for b in x.bindings() {
            match &b.destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(id) {
                        q.bound_from.remove(name);
                    }
                }
                Destination::Exchange(d) => {
                    if let Some(d) = v.exchanges.get_mut(d) {
                        d.bound_from.remove(name);
                    }
                }
            }
        }
        for (src, b) in dropped_to_it {
            self.round
                .journal
                .push(StoreOp::DeleteBinding(binding_record(vhost, &src, &b, "")));
        }
        if x.durable {
            // The store drops the exchange's own bindings with it.
            for b in x.bindings() {
                let queue_name = self.destination_queue_name(&b.destination);
                self.round
                    .journal
                    .push(StoreOp::DeleteBinding(binding_record(
                        vhost,
                        name,
                        b,
                        &queue_name,
                    )));
            }
            self.round.journal.push(StoreOp::DeleteExchange {
                vhost: vhost.to_string(),
                name: name.to_string(),
            });
        }
        emptied
    }
}

/// The store's form of a binding; `queue_name` names the queue of a queue binding.
fn binding_record(vhost: &str, source: &str, b: &Binding, queue_name: &str) -> BindingRecord {
    let (destination, to_exchange) = match &b.destination {
        Destination::Queue(_) => (queue_name.to_string(), false),
        Destination::Exchange(name) => (name.clone(), true),
    };
    let mut arguments = bytes::BytesMut::new();
    b.arguments.encode(&mut arguments);
    BindingRecord {
        vhost: vhost.to_string(),
        source: source.to_string(),
        destination,
        to_exchange,
        routing_key: b.routing_key.clone(),
        arguments: arguments.to_vec(),
    }
}

/// Refuses arguments that are nested too deeply or too large to store and read back.
fn check_table_limits(args: &FieldTable, kind: &str, name: &str, vhost: &str) -> AmqpResult<()> {
    args.check_limits().map_err(|e| {
        precondition_failed(format!(
            "invalid arguments for {}: {e}",
            resource(kind, name, vhost)
        ))
    })
}

/// RabbitMQ strips carriage returns and line feeds from names.
fn strip_cr_lf(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

pub(super) fn exclusive_lock_error(name: &str, vhost: &str) -> AmqpError {
    resource_locked(format!(
        "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
        resource("queue", name, vhost)
    ))
}

fn inequivalent(
    arg: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    received: String,
    current: String,
) -> AmqpError {
    precondition_failed(format!(
        "inequivalent arg '{arg}' for {}: received {received} but current is {current}",
        resource(kind, name, vhost)
    ))
}

pub(super) fn assert_exchange_equivalent(
    x: &Exchange,
    (kind, delayed): (ExchangeKind, bool),
    m: &ExchangeDeclare,
    vhost: &str,
) -> AmqpResult<()> {
    let q = |s: &str| format!("'{s}'");
    let b = |v: bool| format!("'{v}'");
    let declared = if delayed {
        super::exchange::DELAYED_TYPE
    } else {
        kind.as_str()
    };
    if x.kind != kind || x.delayed != delayed {
        let name = if x.kind != kind && x.delayed == delayed {
            kind.as_str()
        } else {
            declared
        };
        return Err(inequivalent(
            "type",
            "exchange",
            &x.name,
            vhost,
            q(name),
            q(x.type_name()),
        ));
    }
    if x.durable != m.durable {
        return Err(inequivalent(
            "durable",
            "exchange",
            &x.name,
            vhost,
            b(m.durable),
            b(x.durable),
        ));
    }
    if x.auto_delete != m.auto_delete {
        return Err(inequivalent(
            "auto_delete",
            "exchange",
            &x.name,
            vhost,
            b(m.auto_delete),
            b(x.auto_delete),
        ));
    }
    if x.internal != m.internal {
        return Err(inequivalent(
            "internal",
            "exchange",
            &x.name,
            vhost,
            b(m.internal),
            b(x.internal),
        ));
    }
    let key = "alternate-exchange";
    if !arg_equivalent(m.arguments.get(key), x.arguments.get(key)) {
        return Err(inequivalent(
            key,
            "exchange",
            &x.name,
            vhost,
            describe(m.arguments.get(key)),
            describe(x.arguments.get(key)),
        ));
    }
    Ok(())
}

pub(super) fn assert_queue_equivalent(q: &Queue, m: &QueueDeclare, vhost: &str) -> AmqpResult<()> {
    let b = |v: bool| format!("'{v}'");
    let durable = q.decl.durable || q.decl.exclusive_owner.is_some() && m.durable;
    if durable != m.durable {
        return Err(inequivalent(
            "durable",
            "queue",
            &q.decl.name,
            vhost,
            b(m.durable),
            b(q.decl.durable),
        ));
    }
    if q.decl.auto_delete != m.auto_delete {
        return Err(inequivalent(
            "auto_delete",
            "queue",
            &q.decl.name,
            vhost,
            b(m.auto_delete),
            b(q.decl.auto_delete),
        ));
    }
    for key in EQUIVALENT_QUEUE_ARGS {
        let (new, old) = (m.arguments.get(key), q.decl.arguments.get(key));
        // A classic queue declared without a type is the same as one declared "classic".
        if key == "x-queue-type" && queue_type(new) == queue_type(old) {
            continue;
        }
        if !arg_equivalent(new, old) {
            return Err(inequivalent(
                key,
                "queue",
                &q.decl.name,
                vhost,
                describe(new),
                describe(old),
            ));
        }
    }
    Ok(())
}

fn queue_type(v: Option<&FieldValue>) -> &str {
    v.and_then(FieldValue::as_str).unwrap_or("classic")
}

/// Arguments of other queue types that RabbitMQ 3.10 refuses on a classic queue.
const NOT_FOR_CLASSIC: &[&str] = &[
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-dead-letter-strategy",
    "x-queue-leader-locator",
];

/// Classic-queue arguments that RabbitMQ 3.10 refuses on a quorum queue.
const NOT_FOR_QUORUM: &[&str] = &["x-max-priority", "x-queue-mode", "x-queue-version"];

/// Refuses the first argument of `refused` that the declare carries, in RabbitMQ's words
/// for a queue of type `module`.
fn refuse_foreign_arguments(
    m: &QueueDeclare,
    refused: &[&str],
    module: &str,
    name: &str,
    vhost: &str,
) -> AmqpResult<()> {
    match refused.iter().find(|key| m.arguments.get(key).is_some()) {
        None => Ok(()),
        Some(key) => Err(precondition_failed(format!(
            "invalid arg '{key}' for {} of queue type {module}",
            resource("queue", name, vhost)
        ))),
    }
}

fn validate_queue_type(m: &QueueDeclare, name: &str, vhost: &str) -> AmqpResult<()> {
    match m.arguments.get("x-queue-type") {
        None => refuse_foreign_arguments(m, NOT_FOR_CLASSIC, "rabbit_classic_queue", name, vhost),
        Some(v) => match v.as_str() {
            Some("classic") => {
                refuse_foreign_arguments(m, NOT_FOR_CLASSIC, "rabbit_classic_queue", name, vhost)
            }
            Some("quorum") => {
                refuse_foreign_arguments(m, NOT_FOR_QUORUM, "rabbit_quorum_queue", name, vhost)?;
                // Quorum queues are replicated and durable by design; warren runs them as
                // classic durable queues and keeps RabbitMQ's restrictions on them.
                let invalid = |what: &str| {
                    precondition_failed(format!(
                        "invalid property '{what}' for {}",
                        resource("queue", name, vhost)
                    ))
                };
                if m.auto_delete {
                    Err(invalid("auto-delete"))
                } else if m.exclusive {
                    Err(invalid("exclusive-owner"))
                } else if !m.durable {
                    Err(invalid("non-durable"))
                } else {
                    Ok(())
                }
            }
            _ => Err(precondition_failed(format!(
                "invalid arg 'x-queue-type' for {}: \"unsupported queue type '{}'\"",
                resource("queue", name, vhost),
                v.as_str().map_or_else(|| describe(Some(v)), str::to_string)
            ))),
        },
    }
}

/// Argument equivalence: integers compare by value whatever their width, strings by
/// content.
fn arg_equivalent(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        _ => false,
    }
}

fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => format!("'{s}'"),
            (_, Some(n)) => format!("'{n}'"),
            _ => format!("{v:?}"),
        },
    }
}
