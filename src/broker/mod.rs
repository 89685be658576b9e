//! The broker core: vhosts, exchanges and routing, queues, consumers, acks and confirms.
//!
//! [`Broker`] is a plain state machine with no I/O. Drivers feed it [`Command`]s from
//! connections (each already parsed and validated by [`crate::proto::connection`]) with the
//! current time, and drain [`Output`]s: replies for connections, and batches of
//! [`StoreOp`]s to persist. When a batch is synced the driver calls
//! [`Broker::handle_persisted`]; confirms and `tx.commit-ok` that depend on it go out then.

pub mod admin;
mod alarm;
#[cfg(test)]
mod answers_tests;
mod auth;
mod basic;
#[cfg(test)]
mod bulk_tests;
mod channel;
pub(crate) mod deadletter;
pub(crate) mod death;
mod declare;
pub mod delayed;
#[cfg(test)]
mod delayed_tests;
mod dispatch;
mod error;
mod exchange;
mod flow;
#[cfg(test)]
mod hash_exchange_tests;
#[cfg(test)]
mod hold_tests;
#[cfg(test)]
mod hostile_tests;
mod limits;
#[cfg(test)]
mod overflow_tests;
mod paging;
#[cfg(test)]
mod paging_tests;
mod parts;
pub mod policy;
mod policy_matches;
mod publish;
mod queue;
mod reply_to;
mod session;
mod sorted;
mod stats;
#[cfg(test)]
mod sync_wait_tests;
#[cfg(test)]
mod test_rig;
mod timers;
pub mod topic;
mod vhost;
mod waiting;

use std::collections::VecDeque;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::{SmallRng, StdRng};

pub use alarm::{AlarmLimits, Resource, ResourceReading, StoreFault};
pub use auth::{Access, Permissions, Users, check_password, hash_password};
pub use channel::{Channel, Confirm, Consumer, Mode, Unacked};
pub use deadletter::dead_lettered;
pub use death::DeathReason;
pub use error::{AmqpError, AmqpResult, Scope};
pub use exchange::{Binding, Destination, Exchange, ExchangeKind, QueueId, headers_match};
pub use queue::{
    ConsumerRef, Consumers, Declaration, Expiry, MESSAGE_OVERHEAD_BYTES, Messages, Overflow, Paged,
    Queue, QueueSettings, QueuedMessage, memory_cost,
};
pub use stats::MessageCounters;
pub use vhost::VHost;

use crate::proto::command::{Command, ConnId, Reply};
use crate::proto::method::Method;
use crate::proto::table::FieldTable;
use crate::store::{Recovered, StoreOp};

/// The hash map the broker uses: foldhash, fast for the short keys of routing (names,
/// ids), seeded per process ([`seed_hashes`]) so that clients cannot choose names that
/// collide. Without a seed (the simulator, tests) the seed is fixed and iteration orders
/// depend only on the operations applied, which keeps simulated runs reproducible.
pub type HashMap<K, V> = std::collections::HashMap<K, V, HashState>;

/// A map key for a name that may be empty (the default exchange, a direct binding's empty
/// key). An empty `String` points at address 1, and comparing two strings of equal length
/// calls `memcmp` even at length 0; glibc's AVX-512 `memcmp` reads its arguments with a
/// masked load, and from an unmapped address that load takes a microcode assist, about
/// 40 ns for each such argument. A key stored with [`name_key`] and looked up with
/// [`name_lookup`] points into real memory on both sides. The default exchange is looked
/// up once per publish: in a profile of the pipelined 16 B load (a million messages a
/// second) that lookup was 8% of the broker's CPU.
pub(crate) fn name_key(name: String) -> String {
    if name.is_empty() {
        String::with_capacity(1)
    } else {
        name
    }
}

/// The name to look a [`name_key`] up by: `name`, or an empty string in real memory.
pub(crate) fn name_lookup(name: &str) -> &str {
    if name.is_empty() { &"-"[..0] } else { name }
}

/// The hash seed of this process, set by [`seed_hashes`].
static HASH_SEED: std::sync::OnceLock<(u64, foldhash::SharedSeed)> = std::sync::OnceLock::new();

/// Seeds every broker hash map created from now on. The server calls it once at start
/// with a random value; later calls are ignored, so maps never mix seeds.
pub fn seed_hashes(seed: u64) {
    let _ = HASH_SEED.set((seed, foldhash::SharedSeed::from_u64(seed.rotate_left(32))));
}

/// The [`std::hash::BuildHasher`] of [`HashMap`].
#[derive(Debug, Clone, Copy)]
pub struct HashState {
    per_map: u64,
    shared: &'static foldhash::SharedSeed,
}

impl Default for HashState {
    fn default() -> Self {
        match HASH_SEED.get() {
            Some((seed, shared)) => HashState {
                per_map: *seed,
                shared,
            },
            None => HashState {
                per_map: 0,
                shared: foldhash::SharedSeed::global_fixed(),
            },
        }
    }
}

impl std::hash::BuildHasher for HashState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        foldhash::fast::SeedableRandomState::with_seed(self.per_map, self.shared).build_hasher()
    }
}

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The vhost created on first start.
    pub default_vhost: String,
    /// The user created on first start (with full permissions on the default vhost).
    pub default_user: String,
    /// That user's password.
    pub default_password: String,
    /// Users who may only connect from a loopback address.
    pub loopback_users: Vec<String>,
    /// What one client may create and hold.
    pub limits: ClientLimits,
    /// Memory budgets, paging and the store backlog.
    pub memory: MemoryConfig,
    /// When the memory and disk alarms go off.
    pub alarms: AlarmLimits,
    /// Deliver a persistent message from a durable queue (to consumers, `basic.get` and
    /// the management API's get) only once the store batch holding it is synced, and
    /// nothing queued behind it before then. A cluster's leader sets it, since there
    /// "synced" means committed by a majority: a consumer never sees a message that a
    /// failover could lose. One node delivers at once, as RabbitMQ's classic queues do.
    pub deliver_after_sync: bool,
}

impl BrokerConfig {
    /// How much of each durable queue to read at start: `recovery_head_entries`, within
    /// the queues' memory budgets.
    pub fn head_limit(&self) -> crate::store::HeadLimit {
        crate::store::HeadLimit {
            entries: self.memory.recovery_head_entries,
            queue_bytes: self.memory.queue_memory_budget_bytes,
            total_bytes: self.memory.memory_budget_bytes,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            default_vhost: "/".into(),
            default_user: "guest".into(),
            default_password: "guest".into(),
            loopback_users: vec!["guest".into()],
            limits: ClientLimits::default(),
            memory: MemoryConfig::default(),
            alarms: AlarmLimits::default(),
            deliver_after_sync: false,
        }
    }
}

/// What one client may create and hold: the bounds on everything a client controls.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Bytes of replies a connection may have unwritten before its consumers are paused.
    pub max_unflushed_bytes_per_connection: usize,
    /// Bytes of messages (bodies, properties and per-message overhead) one open
    /// transaction may hold.
    pub max_tx_bytes: u64,
    /// Most queues in the broker.
    pub max_queues: usize,
    /// Most exchanges per vhost.
    pub max_exchanges_per_vhost: usize,
    /// Most bindings per exchange.
    pub max_bindings_per_exchange: usize,
    /// Most consumers per channel.
    pub max_consumers_per_channel: usize,
    /// Most consumers per connection, all channels together.
    pub max_consumers_per_connection: usize,
    /// Most unacked deliveries per channel when no prefetch limit is set.
    pub max_unacked_per_channel: usize,
    /// Gaps (deliveries acked out of order) a channel's unacked list keeps beyond as many
    /// as it has deliveries unacked before it sweeps them.
    pub unacked_gaps_kept: usize,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_unflushed_bytes_per_connection: 4 * 1024 * 1024,
            max_tx_bytes: 256 * 1024 * 1024,
            max_queues: 1_000_000,
            max_exchanges_per_vhost: 100_000,
            max_bindings_per_exchange: 1_000_000,
            max_consumers_per_channel: 100_000,
            max_consumers_per_connection: 100_000,
            max_unacked_per_channel: 1_000_000,
            unacked_gaps_kept: channel::UNACKED_GAPS_KEPT,
        }
    }
}

/// Memory budgets for ready messages, paging to and from the store, and the store backlog.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Memory a queue may hold in ready messages before new ones go to the store.
    pub queue_memory_budget_bytes: u64,
    /// Memory all queues together may hold in ready messages before new ones go to the
    /// store.
    pub memory_budget_bytes: u64,
    /// Entries per queue read at start (within the memory budgets); the rest is read as
    /// consumers need it.
    pub recovery_head_entries: usize,
    /// A paged queue reads its next batch when fewer than this many messages are in
    /// memory.
    pub page_in_low_water: u64,
    /// Messages read from the store per batch.
    pub page_in_batch: usize,
    /// Bytes of store batches handed to the driver and not yet synced beyond which the
    /// broker takes no new input ([`Broker::wants_input`]): a disk slower than the
    /// publishers holds them back instead of filling memory with batches.
    pub max_unsynced_store_bytes: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            queue_memory_budget_bytes: 16 * 1024 * 1024,
            memory_budget_bytes: 64 * 1024 * 1024,
            recovery_head_entries: 4096,
            page_in_low_water: 2048,
            page_in_batch: 4096,
            max_unsynced_store_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Facts about a connection's socket, given when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The peer address, for listings and logs.
    pub peer: String,
    /// Whether the peer is on a loopback address.
    pub loopback: bool,
}

/// An output for the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Replies for one connection, in order.
    Replies {
        /// The connection.
        conn: ConnId,
        /// What to send.
        replies: Vec<Reply>,
    },
    /// A batch of durable changes to write and sync, then report with
    /// [`Broker::handle_persisted`]. Batches must be applied in order.
    Persist {
        /// The batch number (increasing from 1).
        batch: u64,
        /// The changes.
        ops: Vec<StoreOp>,
        /// When the batch was made, the clients waiting for a sync were likely to send
        /// nothing more until one comes ([`Broker::sync_awaited`]): a driver that holds
        /// syncs apart should sync now.
        urgent: bool,
    },
    /// Read up to `max` entries of a queue from position `from_seq` on
    /// ([`crate::store::Store::load`]), after every batch emitted before this output, and
    /// hand them to [`Broker::handle_loaded`] with the same queue and epoch.
    Load {
        /// Queue incarnation.
        queue: QueueId,
        /// First position to read.
        from_seq: u64,
        /// Most entries to read.
        max: usize,
        /// Most bytes to read, as [`memory_cost`] weighs messages (the first entry is
        /// read whatever its size).
        max_bytes: u64,
        /// Identifies this read; a purge in the meantime makes it stale.
        epoch: u64,
    },
    /// The answer to the administrative request the driver numbered `id`
    /// ([`Broker::handle_admin`]), given once its durable changes are synced.
    Admin {
        /// The driver's number for the request.
        id: admin::AdminId,
        /// The outcome.
        result: admin::AdminResult,
    },
}

impl Output {
    /// The store job a [`Output::Persist`] or [`Output::Load`] asks for; any other output
    /// is handed back.
    pub fn into_store_job(self) -> Result<crate::store::commit::StoreJob, Output> {
        use crate::store::commit::StoreJob;
        match self {
            Output::Persist { batch, ops, urgent } => Ok(StoreJob::Write(batch, ops, urgent)),
            Output::Load {
                queue,
                from_seq,
                max,
                max_bytes,
                epoch,
            } => Ok(StoreJob::Load {
                queue,
                from_seq,
                max,
                max_bytes,
                epoch,
            }),
            other => Err(other),
        }
    }
}

/// A connection as the broker sees it.
#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    /// The logged-in user (shared, so the hot paths copy a pointer, not a string).
    user: Option<Arc<str>>,
    /// The open vhost.
    vhost: Option<Arc<str>>,
    client_properties: FieldTable,
    /// The client handles server-sent `basic.cancel`.
    cancel_notify: bool,
    channels: HashMap<u16, Channel>,
    /// Bytes of replies produced and not yet reported written.
    unflushed_bytes: usize,
    /// Queues whose consumers on this connection could take nothing when they last
    /// searched: they search again when it or one of its channels frees room.
    waiting: waiting::WaitingQueues,
    /// Exclusive queues this connection owns.
    exclusive_queues: Vec<QueueId>,
    /// When the connection was accepted, in broker time.
    connected_at_ms: u64,
    /// Has published at least once (alarms block publishing connections only).
    has_published: bool,
    /// Blocked by a resource alarm.
    blocked: bool,
    /// The client understands `connection.blocked`.
    blocked_notify: bool,
    /// A basic.get waits (with the commands behind it, in `held`) for the unwritten
    /// replies to drain below the delivery limit.
    get_waits_for_drain: bool,
    /// Why reading from the connection is paused (`flow::PAUSED_BY_*` bits).
    paused: u8,
    /// The queue a flow-controlled publisher waits on.
    flow_queue: Option<QueueId>,
}

/// Something held back until a store batch is synced.
#[derive(Debug)]
enum Deferred {
    /// A publisher confirm.
    Confirm {
        conn: ConnId,
        uid: u64,
        channel: u16,
        seq: u64,
    },
    /// A reply (`tx.commit-ok`).
    Reply {
        conn: ConnId,
        uid: u64,
        channel: u16,
        method: Method,
    },
    /// The answer to an administrative request.
    Admin {
        id: admin::AdminId,
        result: admin::AdminResult,
    },
}

/// Durable changes of the current round.
#[derive(Debug, Default)]
struct Journal {
    ops: Vec<StoreOp>,
    /// What `ops` weigh ([`op_bytes`]), added up as they come.
    ops_bytes: u64,
    /// The number the next emitted batch will carry.
    next_batch: u64,
    /// Batches emitted and not yet synced, with their approximate size.
    unsynced: VecDeque<(u64, u64)>,
    /// Sum of the sizes in `unsynced`.
    unsynced_bytes: u64,
}

/// Approximate bytes a store operation takes in the driver's queue and the store's
/// write buffer.
fn op_bytes(op: &StoreOp) -> u64 {
    // What the op holds until it is written: the whole message (properties too; a message
    // of empty body and 120 KiB of headers weighs its headers), or a small fixed record.
    let message = match op {
        StoreOp::PutShared { message, .. } | StoreOp::PageOut { message, .. } => {
            crate::store::memory_cost(message)
        }
        StoreOp::PutDelayed(d) => crate::store::memory_cost(&d.message),
        StoreOp::Enqueue {
            body: crate::store::EntryBody::Inline(m),
            ..
        } => crate::store::memory_cost(m),
        _ => 0,
    };
    message + OP_RECORD_BYTES
}

/// What a store operation weighs besides the message it holds.
const OP_RECORD_BYTES: u64 = 128;

impl Journal {
    fn push(&mut self, op: StoreOp) {
        self.ops_bytes += op_bytes(&op);
        self.ops.push(op);
    }

    /// Pushes an op that holds a message already weighed at `cost` ([`memory_cost`]):
    /// weighing a message walks its headers, and one routed to many queues is weighed
    /// once.
    fn push_weighed(&mut self, op: StoreOp, cost: u64) {
        debug_assert_eq!(op_bytes(&op), cost + OP_RECORD_BYTES);
        self.ops_bytes += cost + OP_RECORD_BYTES;
        self.ops.push(op);
    }
}

/// Replies waiting to be handed to the driver, per connection, in order, and answers to
/// administrative requests.
#[derive(Debug, Default)]
struct Outbox {
    pending: HashMap<ConnId, Vec<Reply>>,
    order: VecDeque<ConnId>,
    answers: VecDeque<(admin::AdminId, admin::AdminResult)>,
}

impl Outbox {
    fn push(&mut self, conn: ConnId, reply: Reply) {
        let entry = self.pending.entry(conn).or_default();
        if entry.is_empty() {
            self.order.push_back(conn);
        }
        entry.push(reply);
    }

    fn pop(&mut self) -> Option<(ConnId, Vec<Reply>)> {
        while let Some(conn) = self.order.pop_front() {
            if let Some(replies) = self.pending.remove(&conn) {
                if !replies.is_empty() {
                    return Some((conn, replies));
                }
            }
        }
        None
    }
}

/// The broker state machine. Its state is held in parts named after what they hold
/// ([`parts`]); each part checks its own invariants and [`Broker::check_invariants`]
/// adds the ones that tie parts together.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    rng: SmallRng,
    /// Draws what clients must not predict (direct reply-to nonces). `rng`'s outputs are
    /// visible in generated names, so this one is separate, and the server reseeds it from
    /// the OS ([`Broker::reseed_secrets`]).
    secret_rng: StdRng,
    now_ms: u64,
    /// Vhosts, exchanges, queues and their timers and memory.
    topology: parts::Topology,
    /// Connections and their channels, and work held for them.
    sessions: parts::Sessions,
    /// Users, permissions and tenant limits.
    accounts: parts::Accounts,
    /// The current round's work and what waits to go out.
    round: parts::Round,
    /// The node's lifecycle and health: app running, alarms, store fault.
    node: parts::NodeState,
    /// Counters.
    counters: parts::Counters,
}

impl Broker {
    /// A broker holding what was recovered from the store. On first start (nothing
    /// recovered) it creates the default vhost and user and asks for them to be persisted.
    pub fn new(config: BrokerConfig, seed: u64, recovered: Recovered) -> Self {
        let mut broker = Broker {
            config,
            rng: SmallRng::seed_from_u64(seed),
            secret_rng: StdRng::seed_from_u64(seed.rotate_left(32) ^ 0x5eed_5ec2_e75e_ed00),
            now_ms: 0,
            topology: parts::Topology::default(),
            sessions: parts::Sessions::default(),
            accounts: parts::Accounts::default(),
            round: parts::Round::default(),
            node: parts::NodeState::default(),
            counters: parts::Counters::default(),
        };
        if recovered.vhosts.is_empty() && recovered.users.is_empty() {
            broker.create_defaults();
        } else {
            broker.restore(recovered);
        }
        broker
    }

    /// Takes the settings that may change while running (a reload of the config file):
    /// the memory budgets, the alarm limits and the loopback-only users. The rest (the
    /// defaults created on first start, the client limits) keeps its value; alarms are
    /// judged against the new limits at the next resource reading.
    pub fn reload_config(&mut self, new: &BrokerConfig) {
        self.config.memory = new.memory.clone();
        self.config.alarms = new.alarms.clone();
        // A new budget may end a stall of paged reads.
        self.topology.loads_recheck = true;
        self.config.loopback_users = new.loopback_users.clone();
    }

    /// Reseeds the generator of secrets from `seed` (the server passes the OS's entropy;
    /// the simulator keeps the one derived from the broker's seed, for replays).
    pub fn reseed_secrets(&mut self, seed: [u8; 32]) {
        self.secret_rng = StdRng::from_seed(seed);
    }

    /// Routing steps taken since the broker started: exchanges and index nodes visited,
    /// bindings and header entries compared, queues enqueued to, dead-letter hops. The
    /// simulator and the fuzzer hold each input to a budget of these, so that an input
    /// whose cost explodes is a failure even when it finishes.
    pub fn work_done(&self) -> u64 {
        self.counters.work
    }

    /// The settings in force.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// A connection was accepted.
    pub fn handle_connect(&mut self, conn: ConnId, info: ConnInfo, now_ms: u64) {
        self.now_ms = now_ms;
        debug_assert!(
            !self.sessions.conns.contains_key(&conn),
            "connection id reused"
        );
        self.sessions.conns.insert(
            conn,
            Conn {
                info,
                user: None,
                vhost: None,
                client_properties: FieldTable::default(),
                cancel_notify: false,
                channels: HashMap::default(),
                unflushed_bytes: 0,
                waiting: Default::default(),
                exclusive_queues: Vec::new(),
                connected_at_ms: now_ms,
                has_published: false,
                blocked: false,
                blocked_notify: false,
                get_waits_for_drain: false,
                paused: 0,
                flow_queue: None,
            },
        );
    }

    /// An input from a connection. Commands from connections the broker already closed
    /// are ignored.
    pub fn handle_command(&mut self, conn: ConnId, command: Command, now_ms: u64) {
        self.now_ms = now_ms;
        if !self.sessions.conns.contains_key(&conn) {
            return;
        }
        if let Some(held) = self.sessions.held.get_mut(&conn) {
            // A basic.get of this connection waits for the store: what follows waits
            // behind it, as it would behind a synchronous get. A connection that is gone
            // is gone at once (its get is dropped with it).
            if !matches!(command, Command::Closed | Command::Drained { .. }) {
                held.push_back(command);
                return;
            }
        }
        self.run_command(conn, command);
        self.finish_round();
    }

    /// Carries out one command.
    fn run_command(&mut self, conn: ConnId, command: Command) {
        match command {
            Command::Login(login) => self.login(conn, login),
            Command::OpenVhost { vhost } => self.open_vhost(conn, &vhost),
            Command::ChannelOpen { channel } => self.channel_open(conn, channel),
            Command::ChannelClose { channel } => {
                if self.close_channel(conn, channel) {
                    self.send_method(conn, channel, Method::ChannelCloseOk(Default::default()));
                }
            }
            Command::ChannelError { channel, close } => {
                if self.close_channel(conn, channel) {
                    self.send_method(conn, channel, Method::ChannelClose(close));
                }
            }
            Command::Method { channel, method } => {
                if self.has_channel(conn, channel) {
                    let class_id = method.class_id();
                    let method_id = method.method_id();
                    if let Err(e) = self.handle_method(conn, channel, method) {
                        self.fail(conn, channel, e.on_ids(class_id, method_id));
                    }
                }
            }
            Command::Publish {
                channel,
                mandatory,
                immediate,
                message,
            } => {
                if self.has_channel(conn, channel) {
                    if let Err(e) = self.publish(conn, channel, mandatory, immediate, message) {
                        self.fail(conn, channel, e.on_ids(60, 40));
                    }
                    self.note_publisher(conn);
                }
            }
            Command::Publishing => self.note_publisher(conn),
            Command::Drained { bytes } => self.drained(conn, bytes),
            Command::Closed => self.close_connection(conn),
        }
    }

    /// A connection's parked get was answered: carries out the commands that waited
    /// behind it, until one parks again.
    fn resume_held(&mut self, conn: ConnId) {
        let Some(mut waiting) = self.sessions.held.remove(&conn) else {
            return;
        };
        // Its consumers were passed over while it waited: they may take messages again.
        self.connection_freed(conn);
        self.set_paused(conn, flow::PAUSED_BY_GET, false);
        while let Some(command) = waiting.pop_front() {
            if !self.sessions.conns.contains_key(&conn) {
                return;
            }
            self.run_command(conn, command);
            if let Some(held) = self.sessions.held.get_mut(&conn) {
                // Parked again: the rest waits behind this get.
                held.extend(waiting);
                return;
            }
        }
    }

    /// Whether the driver should hand over new input from connections now. False while
    /// too much of what was sent to the store is not synced yet; store completions, timers
    /// and admin requests are still taken.
    pub fn wants_input(&self) -> bool {
        self.round.journal.unsynced_bytes < self.config.memory.max_unsynced_store_bytes
    }

    /// The batches emitted and not yet synced, with the bytes each was charged against
    /// `max_unsynced_store_bytes` (what [`Broker::wants_input`] weighs).
    pub fn unsynced_batches(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.round.journal.unsynced.iter().copied()
    }

    /// The store synced every batch up to and including `batch`.
    pub fn handle_persisted(&mut self, batch: u64) {
        self.sessions.sync_waits.synced();
        while let Some(&(b, bytes)) = self.round.journal.unsynced.front() {
            if b > batch {
                break;
            }
            self.round.journal.unsynced.pop_front();
            self.round.journal.unsynced_bytes -= bytes;
        }
        self.release_held(batch);
        while let Some((b, _)) = self.round.deferred.front() {
            if *b > batch {
                break;
            }
            let Some((_, deferred)) = self.round.deferred.pop_front() else {
                break;
            };
            match deferred {
                Deferred::Confirm {
                    conn,
                    uid,
                    channel,
                    seq,
                } => self.resolve_confirm(conn, uid, channel, seq, Confirm::Ack),
                Deferred::Reply {
                    conn,
                    uid,
                    channel,
                    method,
                } => {
                    if self.channel_uid(conn, channel) == Some(uid) {
                        if matches!(method, Method::TxCommitOk(_)) {
                            self.count_commit(conn, channel, false);
                        }
                        self.send_method(conn, channel, method);
                    }
                }
                Deferred::Admin { id, result } => self.round.outbox.answers.push_back((id, result)),
            }
        }
        self.finish_round();
    }

    /// Whether holding the next sync back to gather more (the store's gap between syncs)
    /// would only hold clients up: every channel whose client waits for a sync is at its
    /// peak ([`SyncWait`]), with as many publishes unconfirmed as it ever had or a
    /// transaction waiting for its commit-ok (at least one channel waits), and every
    /// channel the last sync answered in full has published or committed again. So it is
    /// for clients that wait for each confirm or commit, or fill their confirm window, and
    /// come back at once; clients that publish at their own pace, with room in their
    /// window or now and then, keep the gap.
    ///
    /// [`SyncWait`]: channel::SyncWait
    pub fn sync_awaited(&self) -> bool {
        self.sessions.sync_waits.nothing_more_coming()
    }

    /// The next output for the driver: store batches first, then replies. Call it until it
    /// returns `None` after each batch of inputs, before [`Broker::poll_timeout`].
    ///
    /// Deliveries and publisher confirms are worked out here, once for all the inputs
    /// handled since the last call: consumers are served in larger batches and runs of
    /// confirms coalesce into one `multiple` ack.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.resume_stalled_loads();
        self.run_dispatch();
        self.flush_confirms();
        if !self.round.journal.ops.is_empty() {
            let batch = self.round.journal.next_batch;
            self.round.journal.next_batch += 1;
            let bytes = std::mem::take(&mut self.round.journal.ops_bytes);
            self.round.journal.unsynced.push_back((batch, bytes));
            self.round.journal.unsynced_bytes += bytes;
            return Some(Output::Persist {
                batch,
                ops: std::mem::take(&mut self.round.journal.ops),
                urgent: self.sync_awaited(),
            });
        }
        if let Some((queue, from_seq, max, max_bytes, epoch)) = self.round.loads.pop() {
            return Some(Output::Load {
                queue,
                from_seq,
                max,
                max_bytes,
                epoch,
            });
        }
        if let Some((conn, replies)) = self.round.outbox.pop() {
            return Some(Output::Replies { conn, replies });
        }
        self.round
            .outbox
            .answers
            .pop_front()
            .map(|(id, result)| Output::Admin { id, result })
    }

    /// Work that follows every input: notifications that must follow the input's reply.
    fn finish_round(&mut self) {
        while let Some(conn) = self.sessions.to_resume.pop() {
            self.resume_held(conn);
        }
        for (conn, channel, method) in std::mem::take(&mut self.round.notices) {
            if self.has_channel(conn, channel) {
                self.send_method(conn, channel, method);
            }
        }
        // Debug builds audit the whole state now and then (a full check is linear in the
        // number of messages, too slow for every round).
        self.counters.rounds += 1;
        self.round.dead_letters.new_round();
        if cfg!(debug_assertions) && self.counters.rounds % 1024 == 0 {
            self.check_invariants();
        }
    }

    // ----- outputs -----

    fn send(&mut self, conn: ConnId, reply: Reply) {
        let pause_at =
            self.config.limits.max_unflushed_bytes_per_connection * flow::OUTPUT_PAUSE_FACTOR;
        let mut pause = false;
        if let Some(c) = self.sessions.conns.get_mut(&conn) {
            c.unflushed_bytes += reply.wire_size();
            pause = c.unflushed_bytes >= pause_at && c.paused & flow::PAUSED_BY_OUTPUT == 0;
        }
        self.round.outbox.push(conn, reply);
        if pause {
            self.set_paused(conn, flow::PAUSED_BY_OUTPUT, true);
        }
    }

    fn send_method(&mut self, conn: ConnId, channel: u16, method: Method) {
        self.send(conn, Reply::Method { channel, method });
    }

    /// The batch that the changes made now will be part of.
    fn current_batch(&self) -> u64 {
        self.round.journal.next_batch
    }

    /// Closes the channel or the connection an error belongs to.
    fn fail(&mut self, conn: ConnId, channel: u16, e: AmqpError) {
        let text = crate::proto::connection::truncate_shortstr(e.text);
        match e.scope {
            Scope::Channel => {
                if self.close_channel(conn, channel) {
                    let close = crate::proto::method::ChannelClose {
                        reply_code: e.code,
                        reply_text: text,
                        class_id: e.class_id,
                        method_id: e.method_id,
                    };
                    self.send_method(conn, channel, Method::ChannelClose(close));
                }
            }
            Scope::Connection => {
                let close = crate::proto::method::ConnectionClose {
                    reply_code: e.code,
                    reply_text: text,
                    class_id: e.class_id,
                    method_id: e.method_id,
                };
                self.send_method(conn, 0, Method::ConnectionClose(close));
                self.close_connection(conn);
            }
        }
    }

    // ----- lookups -----

    fn has_channel(&self, conn: ConnId, channel: u16) -> bool {
        self.sessions
            .conns
            .get(&conn)
            .is_some_and(|c| c.channels.contains_key(&channel))
    }

    fn channel_uid(&self, conn: ConnId, channel: u16) -> Option<u64> {
        self.sessions
            .conns
            .get(&conn)?
            .channels
            .get(&channel)
            .map(|c| c.uid)
    }

    fn channel_mut(&mut self, conn: ConnId, channel: u16) -> Option<&mut Channel> {
        self.sessions
            .conns
            .get_mut(&conn)?
            .channels
            .get_mut(&channel)
    }

    /// The vhost and user of an open connection.
    fn session(&self, conn: ConnId) -> Option<(Arc<str>, Arc<str>)> {
        let c = self.sessions.conns.get(&conn)?;
        Some((c.vhost.clone()?, c.user.clone()?))
    }

    /// The vhost and user of an open connection; 503 before `connection.open`.
    fn open_session(&self, conn: ConnId) -> AmqpResult<(Arc<str>, Arc<str>)> {
        self.session(conn)
            .ok_or_else(|| error::command_invalid("connection not open"))
    }

    /// Every queue in the broker.
    pub fn queues(&self) -> impl Iterator<Item = &Queue> {
        self.topology.queues.values()
    }

    /// A vhost by name.
    pub fn vhost(&self, name: &str) -> Option<&VHost> {
        self.topology.vhosts.get(name)
    }

    /// A queue by vhost and name.
    pub fn queue(&self, vhost: &str, name: &str) -> Option<&Queue> {
        let id = self.topology.vhosts.get(vhost)?.queues.get(name)?;
        self.topology.queues.get(id)
    }

    /// The user database.
    pub fn users(&self) -> &Users {
        &self.accounts.users
    }

    /// Asserts the broker's invariants; panics with a description when one is broken.
    /// Tests, the simulator and debug builds call it.
    pub fn check_invariants(&self) {
        self.topology.check_invariants();
        self.sessions.check_invariants();
        self.round.check_invariants();
        self.node.check_invariants();
        self.check_tenant_invariants();
        // What ties topology and sessions: exclusive owners, consumers registered on both
        // sides, unacked counts.
        self.check_skipped_searches();
        assert_eq!(
            self.counters.gets_wrongly_empty, 0,
            "a basic.get was answered get-empty while its queue had ready messages"
        );
        for q in self.topology.queues.values() {
            assert!(
                !q.messages.holding() || self.round.holding.contains(&q.id),
                "queue {} holds messages back unknown to the round",
                q.decl.name
            );
            if let Some(owner) = q.decl.exclusive_owner {
                assert!(
                    self.sessions.conns.contains_key(&owner),
                    "exclusive queue {} outlived its owner",
                    q.decl.name
                );
            }
            for c in &q.consumers {
                let ch = self
                    .sessions
                    .conns
                    .get(&c.conn)
                    .and_then(|conn| conn.channels.get(&c.channel))
                    .expect("consumer's channel exists");
                assert_eq!(
                    ch.consumers.get(&c.tag).map(|x| x.queue),
                    Some(q.id),
                    "consumer {} registered",
                    c.tag
                );
            }
        }
        // Per queue: deliveries unacked, their bodies' bytes, the memory they hold.
        let mut unacked_per_queue: HashMap<QueueId, (u64, u64, u64)> = HashMap::default();
        let mut count = |u: &channel::Unacked| {
            let e = unacked_per_queue.entry(u.queue).or_default();
            e.0 += 1;
            e.1 += u.message.message.body_len();
            e.2 += u.message.cost;
        };
        for (id, conn) in &self.sessions.conns {
            for ch in conn.channels.values() {
                ch.check_invariants();
                for (tag, consumer) in &ch.consumers {
                    let q = self
                        .topology
                        .queues
                        .get(&consumer.queue)
                        .expect("consumer's queue exists");
                    assert!(
                        q.consumers
                            .iter()
                            .any(|r| r.conn == *id && r.channel == ch.number && r.tag == *tag),
                        "consumer {tag} listed by its queue"
                    );
                }
                for u in ch.unacked.iter() {
                    count(u);
                }
                // Settled in a transaction not yet committed: still unacked in the queue.
                if let channel::Mode::Tx { ops, .. } = &ch.mode {
                    for op in ops {
                        if let channel::TxOp::Settle { entries, .. } = op {
                            for u in entries {
                                count(u);
                            }
                        }
                    }
                }
            }
        }
        for q in self.topology.queues.values() {
            assert_eq!(
                unacked_per_queue.get(&q.id).copied().unwrap_or_default(),
                (
                    q.messages.unacked,
                    q.messages.unacked_bytes,
                    q.messages.unacked_cost
                ),
                "queue {} unacked count, bytes and memory",
                q.decl.name
            );
        }
    }
}
