//! Queues: ready messages in order, consumers in round-robin order, and length limits.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::proto::command::{ConnId, Message};
use crate::proto::table::{FieldTable, FieldValue};

use super::error::{AmqpResult, precondition_failed, resource};
use super::exchange::QueueId;

/// A message held by a queue (ready, or delivered and not yet acked).
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue: increasing in publish order, kept on requeue.
    pub seq: u64,
    /// Broker-wide message id (the store's key for persistent messages).
    pub message_id: u64,
    /// The content, shared with the other queues it was routed to.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the store holds this entry (a persistent message in a durable queue).
    /// Kept here because an unacked entry can outlive its queue.
    pub stored: bool,
}

/// What a full queue does with one more message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages.
    DropHead,
    /// Refuse the new message; a confirming publisher gets `basic.nack`.
    RejectPublish,
    /// As `RejectPublish` (dead-lettering of refused messages is not performed).
    RejectPublishDlx,
}

/// Length limits from the queue's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most bytes of ready message bodies.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
}

impl QueueLimits {
    /// Reads and validates the limit arguments of `queue.declare`, with RabbitMQ's errors.
    pub fn from_arguments(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<Self> {
        let invalid = |key: &str, why: String| {
            precondition_failed(format!(
                "invalid arg '{key}' for {}: {why}",
                resource("queue", queue, vhost)
            ))
        };
        let non_negative = |key: &str| -> AmqpResult<Option<u64>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= 0 => Ok(Some(n as u64)),
                    Some(n) => Err(invalid(key, format!("{{value_negative,{n}}}"))),
                    None => Err(invalid(key, format!("{{unacceptable_type,{}}}", type_name(v)))),
                },
            }
        };
        let max_length = non_negative("x-max-length")?;
        let max_length_bytes = non_negative("x-max-length-bytes")?;
        let overflow = match args.get("x-overflow") {
            None => Overflow::DropHead,
            Some(v) => match v.as_str() {
                Some("drop-head") => Overflow::DropHead,
                Some("reject-publish") => Overflow::RejectPublish,
                Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                Some(other) => return Err(invalid("x-overflow", format!("{{unknown_value,<<\"{other}\">>}}"))),
                None => return Err(invalid("x-overflow", format!("{{unacceptable_type,{}}}", type_name(v)))),
            },
        };
        Ok(QueueLimits {
            max_length,
            max_length_bytes,
            overflow,
        })
    }
}

/// RabbitMQ's name for a field value's type, used in argument errors.
pub fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) | FieldValue::U8(_) => "byte",
        FieldValue::I16(_) | FieldValue::U16(_) => "short",
        FieldValue::I32(_) | FieldValue::U32(_) => "long",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal(_) => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
        FieldValue::Bytes(_) => "binary",
    }
}

/// A consumer as a queue sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRef {
    /// Owning connection.
    pub conn: ConnId,
    /// Channel number on that connection.
    pub channel: u16,
    /// Consumer tag.
    pub tag: Arc<str>,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Broker-wide identity.
    pub id: QueueId,
    /// Name within the vhost.
    pub name: String,
    /// Virtual host.
    pub vhost: String,
    /// Survives a restart (and so do its persistent messages).
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<ConnId>,
    /// Deleted when its last consumer is cancelled.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Length limits.
    pub limits: QueueLimits,
    /// Consumers in round-robin order.
    pub consumers: Vec<ConsumerRef>,
    /// Index in `consumers` where the next delivery attempt starts.
    pub next_consumer: usize,
    /// A consumer holds exclusive access.
    pub exclusive_consumer: bool,
    /// Has ever had a consumer (auto-delete only applies after one).
    pub had_consumer: bool,
    /// Messages delivered to consumers or basic.get and not yet acked.
    pub unacked: u64,
    /// Queued for a dispatch pass at the end of the current command.
    pub dispatch_scheduled: bool,
    /// Exchanges with bindings to this queue (for cleanup on delete).
    pub bound_from: Vec<String>,
    ready: VecDeque<QueuedMessage>,
    ready_bytes: u64,
    next_seq: u64,
}

impl Queue {
    /// A new, empty queue.
    pub fn new(id: QueueId, name: &str, vhost: &str, durable: bool, auto_delete: bool, arguments: FieldTable, limits: QueueLimits) -> Self {
        Queue {
            id,
            name: name.to_string(),
            vhost: vhost.to_string(),
            durable,
            exclusive_owner: None,
            auto_delete,
            arguments,
            limits,
            consumers: Vec::new(),
            next_consumer: 0,
            exclusive_consumer: false,
            had_consumer: false,
            unacked: 0,
            dispatch_scheduled: false,
            bound_from: Vec::new(),
            ready: VecDeque::new(),
            ready_bytes: 0,
            next_seq: 1,
        }
    }

    /// Ready messages.
    pub fn ready_count(&self) -> u64 {
        self.ready.len() as u64
    }

    /// Bytes of ready message bodies.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes
    }

    /// Ready messages, front first.
    pub fn ready(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.ready.iter()
    }

    /// The position the next message will take.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether a message of `body_len` bytes would exceed a limit of a reject-publish
    /// queue (drop-head queues always accept and drop from the front).
    pub fn rejects(&self, body_len: u64) -> bool {
        if self.limits.overflow == Overflow::DropHead {
            return false;
        }
        self.limits.max_length.is_some_and(|max| self.ready_count() >= max)
            || self.limits.max_length_bytes.is_some_and(|max| self.ready_bytes + body_len > max)
    }

    /// Appends a new message; returns its entry.
    pub fn push(&mut self, message_id: u64, message: Arc<Message>) -> &QueuedMessage {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.ready_bytes += message.body_len();
        let stored = self.durable && message.is_persistent();
        self.ready.push_back(QueuedMessage {
            seq,
            message_id,
            message,
            redelivered: false,
            stored,
        });
        self.ready.back().expect("just pushed")
    }

    /// Restores a message recovered from the store at its position.
    pub fn restore(&mut self, entry: QueuedMessage) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.insert_in_order(entry);
    }

    /// Drops ready messages from the front while a drop-head limit is exceeded; returns
    /// them.
    pub fn enforce_limits(&mut self) -> Vec<QueuedMessage> {
        let mut dropped = Vec::new();
        if self.limits.overflow != Overflow::DropHead {
            return dropped;
        }
        while self.limits.max_length.is_some_and(|max| self.ready_count() > max)
            || self.limits.max_length_bytes.is_some_and(|max| self.ready_bytes > max)
        {
            match self.pop() {
                Some(m) => dropped.push(m),
                None => break,
            }
        }
        dropped
    }

    /// Takes the front ready message.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let m = self.ready.pop_front()?;
        self.ready_bytes -= m.message.body_len();
        Some(m)
    }

    /// Puts a delivered message back at its original position, marked redelivered.
    pub fn requeue(&mut self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        self.insert_in_order(entry);
    }

    fn insert_in_order(&mut self, entry: QueuedMessage) {
        self.ready_bytes += entry.message.body_len();
        // Requeued messages usually belong at or near the front.
        let pos = self.ready.partition_point(|m| m.seq < entry.seq);
        debug_assert!(self.ready.get(pos).is_none_or(|m| m.seq != entry.seq), "duplicate seq in queue");
        self.ready.insert(pos, entry);
    }

    /// Removes every ready message; returns them.
    pub fn purge(&mut self) -> Vec<QueuedMessage> {
        self.ready_bytes = 0;
        self.ready.drain(..).collect()
    }

    /// Removes a consumer; returns whether it was there.
    pub fn remove_consumer(&mut self, conn: ConnId, channel: u16, tag: &str) -> bool {
        let Some(pos) = self
            .consumers
            .iter()
            .position(|c| c.conn == conn && c.channel == channel && &*c.tag == tag)
        else {
            return false;
        };
        self.consumers.remove(pos);
        if pos < self.next_consumer {
            self.next_consumer -= 1;
        }
        if self.next_consumer >= self.consumers.len() {
            self.next_consumer = 0;
        }
        if self.consumers.is_empty() {
            self.exclusive_consumer = false;
        }
        true
    }

    /// Checks the queue's own invariants.
    pub fn check_invariants(&self) {
        let bytes: u64 = self.ready.iter().map(|m| m.message.body_len()).sum();
        assert_eq!(bytes, self.ready_bytes, "queue {} byte count", self.name);
        assert!(
            self.ready.iter().zip(self.ready.iter().skip(1)).all(|(a, b)| a.seq < b.seq),
            "queue {} out of order",
            self.name
        );
        assert!(self.ready.iter().all(|m| m.seq < self.next_seq));
        assert!(self.consumers.is_empty() || self.next_consumer < self.consumers.len());
        assert!(!self.exclusive_consumer || self.consumers.len() == 1);
    }
}
