//! Durable state: what the broker asks to persist ([`StoreOp`]), what comes back on start
//! ([`Recovered`]), and the [`Store`] trait that the real disk and the simulator's disk
//! implement.
//!
//! The broker core never touches a disk. It emits batches of [`StoreOp`]s; the driver
//! writes them, syncs, and reports the batch as persisted. Publisher confirms and
//! `tx.commit-ok` for persistent messages wait for that report.

pub mod disk;
pub mod memory;

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
    /// A persistent message's content, stored once however many queues hold it.
    PutMessage {
        /// Message id.
        id: u64,
        /// The content.
        message: Arc<Message>,
    },
    /// No queue refers to the message any more.
    DeleteMessage {
        /// Message id.
        id: u64,
    },
    /// A queue holds the message at position `seq`.
    Enqueue {
        /// Queue incarnation.
        queue: u64,
        /// Position in the queue.
        seq: u64,
        /// The message.
        message: u64,
    },
    /// The queue no longer holds the entry at `seq` (acked, purged, dropped).
    Dequeue {
        /// Queue incarnation.
        queue: u64,
        /// Position in the queue.
        seq: u64,
    },
}

/// A message entry recovered into a queue.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredEntry {
    /// Queue incarnation.
    pub queue: u64,
    /// Position in the queue.
    pub seq: u64,
    /// Message id.
    pub message_id: u64,
    /// The content.
    pub message: Arc<Message>,
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
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeRecord>,
    /// Durable queues.
    pub queues: Vec<QueueRecord>,
    /// Bindings.
    pub bindings: Vec<BindingRecord>,
    /// Message entries, in queue order within each queue.
    pub entries: Vec<RecoveredEntry>,
}

/// A failure of the storage layer.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Durable storage. Writes are buffered until [`Store::sync`] returns; after a crash the
/// store holds a prefix of the batches written, each batch whole or absent.
pub trait Store {
    /// Reads back everything durable.
    fn recover(&mut self) -> Result<Recovered, StoreError>;
    /// Applies one batch atomically (not yet durable).
    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// Makes every batch written so far durable.
    fn sync(&mut self) -> Result<(), StoreError>;
}
