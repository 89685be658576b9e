//! Durable state: what the broker asks to persist ([`StoreOp`]), what comes back on start
//! ([`Recovered`]), and the [`Store`] trait that the real disk and the simulator's disk
//! implement.
//!
//! The broker core never touches a disk. It emits batches of [`StoreOp`]s; the driver
//! writes them, syncs, and reports the batch as persisted. Publisher confirms and
//! `tx.commit-ok` for persistent messages wait for that report.

pub mod commit;
pub use commit::StoreFault;
pub mod disk;
pub mod memory;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::proto::command::Message;
use crate::proto::table::FieldTable;

/// A durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRecord {
    /// Virtual host.
    pub vhost: String,
    /// Exchange name.
    pub name: String,
    /// Exchange type ("direct", "fanout", "topic", "headers").
    pub kind: String,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// A durable queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueRecord {
    /// Virtual host.
    pub vhost: String,
    /// Queue name.
    pub name: String,
    /// Identity of this incarnation of the queue; message entries refer to it, so a queue
    /// deleted and declared again never sees its predecessor's messages.
    pub id: u64,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// A binding between durable exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingRecord {
    /// Virtual host.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange name.
    pub destination: String,
    /// True when the destination is an exchange.
    pub to_exchange: bool,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments, encoded as a field table (kept encoded so records hash).
    pub arguments: Vec<u8>,
}

/// A user account.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    /// User name.
    pub name: String,
    /// Salted password hash in RabbitMQ's format (base64 of salt and SHA-256 digest).
    pub password_hash: String,
    /// Tags such as "administrator".
    pub tags: Vec<String>,
}

/// A user's permissions in a vhost: three regular expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionRecord {
    /// User name.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// Names the user may declare and delete.
    pub configure: String,
    /// Names the user may publish to (exchanges) and bind (queues).
    pub write: String,
    /// Names the user may consume from and bind from.
    pub read: String,
}

/// A user's topic permissions on one exchange of a vhost (`set_topic_permissions`): the
/// routing keys it may publish with and bind with, as regular expressions in which
/// `{username}` and `{vhost}` stand for the user's name and the vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermissionRecord {
    /// User name.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: String,
    /// Binding keys the user may bind (and unbind) queues and exchanges with.
    pub read: String,
}

/// A message published with `x-delay` to a durable delayed-message exchange, held until
/// it is due and then routed.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayedRecord {
    /// Unique for the life of the store.
    pub id: u64,
    /// Virtual host.
    pub vhost: String,
    /// The `x-delayed-message` exchange it was published to.
    pub exchange: String,
    /// When it is routed, in broker time (milliseconds since the Unix epoch).
    pub due_ms: u64,
    /// The message.
    pub message: Arc<Message>,
}

/// A policy or an operator policy (`set_policy`, `set_operator_policy`): a definition
/// applied to the queues and exchanges whose names match a pattern. Validated by the
/// broker before it is stored; the store keeps it as given.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRecord {
    /// An operator policy (caps set by the node's operator) rather than a user's policy.
    pub operator: bool,
    /// Virtual host.
    pub vhost: String,
    /// Name, unique among the vhost's policies of its kind.
    pub name: String,
    /// The regular expression names are matched against.
    pub pattern: String,
    /// `queues`, `exchanges` or `all`.
    pub apply_to: String,
    /// The highest-priority matching policy applies.
    pub priority: i64,
    /// The settings, RabbitMQ's keys (`max-length`, `message-ttl`, ...) to their values.
    pub definition: FieldTable,
}

/// A vhost's limits, as RabbitMQ's `set_vhost_limits` sets them. `None` is a limit not set;
/// a negative value is set but means "no limit", and 0 allows none, as in RabbitMQ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VhostLimits {
    /// `max-connections`: client connections open in the vhost.
    pub max_connections: Option<i64>,
    /// `max-queues`: queues in the vhost.
    pub max_queues: Option<i64>,
}

/// A user's limits, as RabbitMQ's `set_user_limits` sets them (same meaning of values as
/// [`VhostLimits`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// `max-connections`: client connections the user has open.
    pub max_connections: Option<i64>,
    /// `max-channels`: channels open on all the user's connections together.
    pub max_channels: Option<i64>,
}

impl VhostLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl UserLimits {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One change to durable state.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreOp {
    /// A virtual host exists.
    PutVhost(String),
    /// A virtual host and everything in it is gone.
    DeleteVhost(String),
    /// A user was created or changed.
    PutUser(UserRecord),
    /// A user was deleted.
    DeleteUser(String),
    /// Permissions were set.
    PutPermission(PermissionRecord),
    /// A vhost's limits were set; empty limits remove the record. Deleting the vhost
    /// removes them too.
    PutVhostLimits {
        /// Virtual host.
        vhost: String,
        /// The limits now in force.
        limits: VhostLimits,
    },
    /// A user's limits were set; empty limits remove the record. Deleting the user
    /// removes them too.
    PutUserLimits {
        /// User name.
        user: String,
        /// The limits now in force.
        limits: UserLimits,
    },
    /// A delayed message is held (a persistent message to a durable delayed exchange).
    PutDelayed(DelayedRecord),
    /// A delayed message was routed, or dropped with its exchange. Deleting the vhost
    /// removes its delayed messages too.
    DeleteDelayed {
        /// Its id.
        id: u64,
    },
    /// Topic permissions were set.
    PutTopicPermission(TopicPermissionRecord),
    /// Topic permissions on one exchange were cleared. Deleting the user or the vhost
    /// removes them too.
    DeleteTopicPermission {
        /// User name.
        user: String,
        /// Virtual host.
        vhost: String,
        /// The exchange.
        exchange: String,
    },
    /// A policy or an operator policy was set.
    PutPolicy(PolicyRecord),
    /// A policy or an operator policy was cleared. Deleting the vhost removes its
    /// policies too.
    DeletePolicy {
        /// An operator policy.
        operator: bool,
        /// Virtual host.
        vhost: String,
        /// Policy name.
        name: String,
    },
    /// Permissions were cleared.
    DeletePermission {
        /// User name.
        user: String,
        /// Virtual host.
        vhost: String,
    },
    /// A durable exchange was declared.
    PutExchange(ExchangeRecord),
    /// A durable exchange was deleted.
    DeleteExchange {
        /// Virtual host.
        vhost: String,
        /// Exchange name.
        name: String,
    },
    /// A durable queue was declared.
    PutQueue(QueueRecord),
    /// A durable queue was deleted, with all its message entries.
    DeleteQueue {
        /// Virtual host.
        vhost: String,
        /// Queue name.
        name: String,
        /// The incarnation deleted.
        id: u64,
    },
    /// A binding between durable entities was added.
    PutBinding(BindingRecord),
    /// A binding was removed.
    DeleteBinding(BindingRecord),
    /// A persistent message routed to several durable queues, stored once: each queue's
    /// entry refers to it (`EntryBody::Shared`). The store deletes it when the last entry
    /// referring to it is dequeued, purged or dropped with its queue.
    PutShared {
        /// Message id, unique for the life of the store.
        id: u64,
        /// The content.
        message: Arc<Message>,
        /// How many entries will refer to it.
        refs: u32,
    },
    /// A durable queue holds a persistent message at position `seq`.
    Enqueue {
        /// Queue incarnation.
        queue: u64,
        /// Position in the queue.
        seq: u64,
        /// The message, or a reference to a shared one.
        body: EntryBody,
        /// When the message expires (queue or per-message TTL), in broker time.
        expires_at_ms: Option<u64>,
    },
    /// The queue no longer holds its entry at `seq` (acked, dropped, dead-lettered).
    Dequeue {
        /// Queue incarnation.
        queue: u64,
        /// Position in the queue.
        seq: u64,
        /// The shared message the entry refers to, if its body is shared.
        shared: Option<u64>,
    },
    /// Every entry of the queue at position `from_seq` or later is gone, stored or paged
    /// (a purge of a backlog that is not in memory). Shared messages lose those references.
    PurgeFrom {
        /// Queue incarnation.
        queue: u64,
        /// The first position purged.
        from_seq: u64,
    },
    /// A message that is not durable (transient, or on a non-durable queue) moved out of
    /// memory to keep the broker's memory bounded. Paged messages do not survive a restart,
    /// like the transient messages they are; the store may drop them when it opens.
    PageOut {
        /// Queue incarnation.
        queue: u64,
        /// Position in the queue.
        seq: u64,
        /// The content.
        message: Arc<Message>,
        /// When the message expires, in broker time.
        expires_at_ms: Option<u64>,
    },
    /// Paged messages of the queue up to and including `up_to_seq` were read back into
    /// memory: forget them.
    DropPaged {
        /// Queue incarnation.
        queue: u64,
        /// The last position dropped.
        up_to_seq: u64,
    },
}

/// The longest name a record may hold, in bytes: AMQP's short string. Names are part of
/// the store's keys, which the disk limits to 64 KiB; the broker refuses longer names
/// before they reach the store.
pub const MAX_STORED_NAME_BYTES: usize = 255;

impl StoreOp {
    /// The length of the longest name (vhost, user, exchange, queue, policy, routing key)
    /// this operation stores or names; 0 for those that name none.
    pub fn longest_name(&self) -> usize {
        let names: Vec<&str> = match self {
            StoreOp::PutVhost(v) | StoreOp::DeleteVhost(v) | StoreOp::DeleteUser(v) => vec![v],
            StoreOp::PutUser(u) => vec![&u.name],
            StoreOp::PutPermission(p) => vec![&p.user, &p.vhost],
            StoreOp::PutVhostLimits { vhost, .. } => vec![vhost],
            StoreOp::PutUserLimits { user, .. } => vec![user],
            StoreOp::PutTopicPermission(p) => vec![&p.user, &p.vhost, &p.exchange],
            StoreOp::DeleteTopicPermission {
                user,
                vhost,
                exchange,
            } => vec![user, vhost, exchange],
            StoreOp::PutPolicy(p) => vec![&p.vhost, &p.name],
            StoreOp::DeletePolicy { vhost, name, .. } => vec![vhost, name],
            StoreOp::DeletePermission { user, vhost } => vec![user, vhost],
            StoreOp::PutExchange(x) => vec![&x.vhost, &x.name, &x.kind],
            StoreOp::DeleteExchange { vhost, name } => vec![vhost, name],
            StoreOp::PutQueue(q) => vec![&q.vhost, &q.name],
            StoreOp::DeleteQueue { vhost, name, .. } => vec![vhost, name],
            StoreOp::PutBinding(b) | StoreOp::DeleteBinding(b) => {
                vec![&b.vhost, &b.source, &b.destination, &b.routing_key]
            }
            _ => Vec::new(),
        };
        names.iter().map(|n| n.len()).max().unwrap_or(0)
    }
}

/// What a durable queue entry holds.
#[derive(Debug, Clone, PartialEq)]
pub enum EntryBody {
    /// The message itself (it is in one durable queue only).
    Inline(Arc<Message>),
    /// A reference to a message stored with [`StoreOp::PutShared`].
    Shared(u64),
}

/// A queue entry read back from the store, by [`Store::recover`] or [`Store::load`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedEntry {
    /// Position in the queue.
    pub seq: u64,
    /// The content.
    pub message: Arc<Message>,
    /// The shared message id, when the entry refers to a shared message.
    pub shared: Option<u64>,
    /// True for a durable entry ([`StoreOp::Enqueue`]), false for a paged one
    /// ([`StoreOp::PageOut`]).
    pub durable: bool,
    /// When the message expires, in broker time.
    pub expires_at_ms: Option<u64>,
}

/// What a durable queue held at start: its first entries and the size of the rest, which
/// stays in the store until the queue needs it ([`Store::load`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveredQueue {
    /// Queue incarnation.
    pub queue: u64,
    /// Entries in the queue, including those in `head`.
    pub count: u64,
    /// Bytes of message bodies of all its entries.
    pub body_bytes: u64,
    /// One past the highest position in the store (0 when empty).
    pub next_seq: u64,
    /// The first entries, in position order (within the limit given to `recover`).
    pub head: Vec<LoadedEntry>,
}

/// How much of each durable queue [`Store::recover`] reads into memory at start; the rest
/// stays in the store until the queue needs it ([`Store::load`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimit {
    /// Most entries per queue.
    pub entries: usize,
    /// Most bytes per queue, counting each entry as [`HeadLimit::cost`].
    pub queue_bytes: u64,
    /// Most bytes across all queues together.
    pub total_bytes: u64,
}

impl HeadLimit {
    /// Every entry of every queue (for checks that compare whole stores).
    pub const ALL: HeadLimit = HeadLimit {
        entries: usize::MAX,
        queue_bytes: u64::MAX,
        total_bytes: u64::MAX,
    };

    /// At most `n` entries per queue, whatever their size.
    pub const fn entries(n: usize) -> HeadLimit {
        HeadLimit {
            entries: n,
            queue_bytes: u64::MAX,
            total_bytes: u64::MAX,
        }
    }

    /// What an entry of `body_len` bytes counts against the byte limits: its body and a
    /// fixed allowance for the rest of the message.
    pub fn cost(body_len: u64) -> u64 {
        body_len.saturating_add(MESSAGE_OVERHEAD_BYTES)
    }
}

/// Memory charged for each message held in memory besides its body and properties: the
/// entry, the shared message with its names, allocator overhead. An estimate; with the
/// body and the encoded properties it decides when queues start paging.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 512;

/// Bytes of memory a message held in memory is charged for: its body, its properties
/// (headers included, as decoded: [`BasicProperties::held_len`]), and a fixed overhead.
/// A message with an empty body and large headers weighs what its headers weigh.
///
/// [`BasicProperties::held_len`]: crate::proto::props::BasicProperties::held_len
pub fn memory_cost(message: &Message) -> u64 {
    message.body_len() + message.properties.held_len() as u64 + MESSAGE_OVERHEAD_BYTES
}

/// What a loaded entry weighs against the `max_bytes` of [`Store::load`]: what the broker
/// charges for the message in memory.
pub fn load_cost(entry: &LoadedEntry) -> u64 {
    memory_cost(&entry.message)
}

/// Whether a load that has read `taken` entries weighing `bytes` may read one more.
pub fn load_may_take(taken: usize, bytes: u64, max: usize, max_bytes: u64) -> bool {
    taken < max && (taken == 0 || bytes < max_bytes)
}

/// Tracks a recovery's use of a [`HeadLimit`].
#[derive(Debug)]
pub struct HeadBudget {
    limit: HeadLimit,
    total: u64,
}

impl HeadBudget {
    /// A budget with nothing spent.
    pub fn new(limit: HeadLimit) -> Self {
        HeadBudget { limit, total: 0 }
    }

    /// Whether a queue whose head holds `entries` entries of `bytes` may take one more of
    /// `body_len` bytes; spends it if so. Once an entry does not fit, the queue's head
    /// ends there (a head is always a prefix of the queue).
    pub fn take(&mut self, entries: usize, bytes: u64, body_len: u64) -> bool {
        let cost = HeadLimit::cost(body_len);
        let fits = entries < self.limit.entries
            && bytes.saturating_add(cost) <= self.limit.queue_bytes
            && self.total.saturating_add(cost) <= self.limit.total_bytes;
        if fits {
            self.total += cost;
        }
        fits
    }
}

/// Everything durable, as read back at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovered {
    /// Virtual hosts.
    pub vhosts: Vec<String>,
    /// Users.
    pub users: Vec<UserRecord>,
    /// Permissions.
    pub permissions: Vec<PermissionRecord>,
    /// Vhosts' limits (only vhosts with some limit set).
    pub vhost_limits: Vec<(String, VhostLimits)>,
    /// Users' limits (only users with some limit set).
    pub user_limits: Vec<(String, UserLimits)>,
    /// Policies and operator policies.
    pub policies: Vec<PolicyRecord>,
    /// Topic permissions.
    pub topic_permissions: Vec<TopicPermissionRecord>,
    /// Delayed messages, by id.
    pub delayed: Vec<DelayedRecord>,
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeRecord>,
    /// Durable queues.
    pub queues: Vec<QueueRecord>,
    /// Bindings.
    pub bindings: Vec<BindingRecord>,
    /// The contents of durable queues that hold entries, by queue id.
    pub contents: Vec<RecoveredQueue>,
    /// One past the highest shared message id ever stored (ids are never reused).
    pub next_shared_id: u64,
}

/// How hard [`Store::sync`] works to make written batches durable. Named `batch` and
/// `none` on the command line and in config files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// `sync()` writes the journal and `fdatasync`s it: once it returns, the batches
    /// written before survive a process crash, a kernel panic and a power loss. Publisher
    /// confirms mean "on disk". The default.
    #[default]
    Batch,
    /// `sync()` only hands the journal to the operating system: the batches survive a
    /// crash of the broker process, but the last few seconds of them may be lost if the
    /// machine loses power or the kernel crashes. Faster on disks with slow flushes;
    /// confirms then mean "in the OS page cache".
    None,
}

impl FromStr for SyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "batch" => Ok(SyncPolicy::Batch),
            "none" => Ok(SyncPolicy::None),
            other => Err(format!(
                "unknown sync policy {other:?} (expected \"batch\" or \"none\")"
            )),
        }
    }
}

impl fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SyncPolicy::Batch => "batch",
            SyncPolicy::None => "none",
        })
    }
}

impl Recovered {
    /// Every recovered entry held in the queues' heads, with its queue id.
    pub fn entries(&self) -> impl Iterator<Item = (u64, &LoadedEntry)> {
        self.contents
            .iter()
            .flat_map(|c| c.head.iter().map(move |e| (c.queue, e)))
    }
}

/// What kind of failure a [`StoreError`] is: what the driver can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The file system is full (ENOSPC) or the user's quota is spent (EDQUOT): writes may
    /// work again once space is freed.
    NoSpace,
    /// Another I/O error (EIO, say), or the storage engine refusing writes after one: the
    /// disk may recover, or may not.
    Io,
    /// Anything else: a record that does not decode, a store in another format, a lock
    /// held by another process. Retrying does not help.
    Other,
}

/// A failure of the storage layer.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// An error of `kind`, described by `message`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// An error that is neither a lack of space nor an I/O failure (corruption, say).
    pub fn other(message: impl Into<String>) -> Self {
        StoreError::new(StoreErrorKind::Other, message)
    }

    /// An error from an I/O operation, classified by its OS error code.
    pub fn from_io(e: &std::io::Error, message: impl Into<String>) -> Self {
        StoreError::new(io_error_kind(e), message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Classifies an I/O error: lack of space (ENOSPC, EDQUOT) or another I/O failure.
pub fn io_error_kind(e: &std::io::Error) -> StoreErrorKind {
    use std::io::ErrorKind;
    let no_space = matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || e.raw_os_error().is_some_and(|code| {
            code == rustix::io::Errno::NOSPC.raw_os_error()
                || code == rustix::io::Errno::DQUOT.raw_os_error()
        });
    if no_space {
        StoreErrorKind::NoSpace
    } else {
        StoreErrorKind::Io
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StoreError {}

/// Durable storage. Writes are buffered until [`Store::sync`] returns; after a crash the
/// store holds a prefix of the batches written, each batch whole or absent. Reads
/// ([`Store::load`]) see every batch written, synced or not.
pub trait Store {
    /// Reads back everything durable, each queue's head within `head_limit`; paged messages
    /// of an earlier run are discarded.
    fn recover(&mut self, head_limit: HeadLimit) -> Result<Recovered, StoreError>;
    /// Up to `max` entries of a queue at positions `from_seq` or later, durable and paged
    /// together, in position order, stopping once they weigh `max_bytes` in memory (see
    /// [`load_cost`]; the first entry is read whatever its size).
    fn load(
        &mut self,
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError>;
    /// Applies one batch atomically (not yet durable).
    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// Makes every batch written so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
    /// After a [`Store::write`] or [`Store::sync`] failed: brings the store back to what
    /// reached the disk, durably, and returns how many of the batches passed to `write`
    /// since the last successful sync (the failed one included) it now holds: a prefix of
    /// them, each whole. The caller writes the others again, in order. Fails while the disk
    /// still fails; the caller tries again later.
    fn reopen(&mut self) -> Result<usize, StoreError>;
    /// The least time between the starts of two syncs, for the group commit
    /// ([`commit::GroupCommit::with_sync_gap`]); 0 syncs as soon as the last sync is done.
    fn sync_gap_ms(&self) -> u64 {
        0
    }
    /// While the store is recovering from a failure: whether it is ready for publishers
    /// again. A disk that ran out of space is ready once the store could set its space
    /// reserve aside again (see [`disk::FjallStore`]).
    fn ready(&mut self) -> bool {
        true
    }
}
