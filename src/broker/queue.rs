//! Queues: ready messages in delivery order (by priority, then position), consumers in
//! round-robin order, and the settings that come from `queue.declare` arguments.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::proto::command::{ConnId, Message};
use crate::proto::table::{FieldTable, FieldValue};

use super::error::{AmqpError, AmqpResult, precondition_failed, resource};
use super::exchange::QueueId;

/// A message held by a queue (ready, or delivered and not yet acked).
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue: increasing in publish order, kept on requeue.
    pub seq: u64,
    /// The content, shared with the other queues it was routed to.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the store holds this entry (a persistent message in a durable queue).
    /// Kept here because an unacked entry can outlive its queue.
    pub stored: bool,
    /// When the message expires (queue or per-message TTL), in broker time.
    pub expires_at_ms: Option<u64>,
    /// The priority it is queued under (capped by the queue's `x-max-priority`).
    pub priority: u8,
    /// The shared message the store entry refers to (a persistent message stored once for
    /// several durable queues).
    pub shared: Option<u64>,
    /// What dead-lettering this message may still cause.
    pub allowance: super::deadletter::Allowance,
}

/// Memory charged for each message held in memory besides its body and properties: the
/// entry, the shared message with its names, allocator overhead. An estimate; with the
/// body and the encoded properties it decides when queues start paging.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 512;

/// Bytes of memory a message held in memory is charged for: its body, its properties
/// (headers included, as encoded), and a fixed overhead. A message with an empty body and
/// large headers weighs what its headers weigh.
pub fn memory_cost(message: &Message) -> u64 {
    message.body_len() + message.properties.encoded_len() as u64 + MESSAGE_OVERHEAD_BYTES
}

/// The tail of a queue that lives in the store instead of memory: every ready message at
/// position `from_seq` or later. Messages in memory all come before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paged {
    /// Messages in the store.
    pub count: u64,
    /// Bytes of their bodies.
    pub bytes: u64,
    /// The position of the first of them.
    pub from_seq: u64,
    /// A read of the next batch is in flight.
    pub loading: bool,
    /// Bumped when the paged tail is purged, so that a read in flight is discarded.
    pub epoch: u64,
}

/// A `basic.get` answered once the queue's next paged batch is in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingGet {
    /// Connection.
    pub conn: ConnId,
    /// Channel number.
    pub channel: u16,
    /// The channel's identity, so a reopened channel is not answered.
    pub channel_uid: u64,
    /// The get's no-ack flag.
    pub no_ack: bool,
}

/// In-memory bytes of ready messages across all queues, shared by the queues of a broker.
pub type MemoryMeter = Arc<std::sync::atomic::AtomicU64>;

/// What a full queue does with one more message (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages.
    DropHead,
    /// Refuse the new message; a confirming publisher gets `basic.nack`.
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// Behaviour set by `queue.declare` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most bytes of ready message bodies.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-message-ttl`: how long a message may wait, in milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: the queue is deleted after being unused this long, in milliseconds.
    pub expires_ms: Option<u64>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority`: highest message priority honoured.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: only the first consumer receives messages.
    pub single_active_consumer: bool,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            message_ttl_ms: None,
            expires_ms: None,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            single_active_consumer: false,
        }
    }
}

impl QueueSettings {
    /// Reads and validates the arguments of `queue.declare`, with RabbitMQ's errors.
    pub fn from_arguments(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<Self> {
        let settings = QueueSettings::read(args, queue, vhost)?;
        let invalid = |key: &str, why: String| invalid_arg(key, why, queue, vhost);
        // Times past RabbitMQ's ten years are refused as it refuses them.
        for (key, ms) in [
            ("x-message-ttl", settings.message_ttl_ms),
            ("x-expires", settings.expires_ms),
        ] {
            if let Some(n) = ms.filter(|n| *n > MAX_EXPIRY_MS) {
                return Err(invalid(key, format!("{{value_too_large,{n}}}")));
            }
        }
        if settings.dead_letter_routing_key.is_some() && settings.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        Ok(settings)
    }

    /// Reads the arguments of a queue, refusing what warren cannot run. A queue recovered
    /// from the store is read with this alone: it was declared under the checks of its
    /// day, and [`QueueSettings::from_arguments`] may have added some since.
    pub fn read(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<Self> {
        let invalid = |key: &str, why: String| invalid_arg(key, why, queue, vhost);
        let integer = |key: &str, min: i64| -> AmqpResult<Option<u64>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(n) if n >= min => Ok(Some(n as u64)),
                    Some(n) if n < 0 => Err(invalid(key, format!("{{value_negative,{n}}}"))),
                    Some(n) => Err(invalid(key, format!("{{value_zero,{n}}}"))),
                    None => Err(invalid(
                        key,
                        format!("\"expected integer, got {}\"", type_name(v)),
                    )),
                },
            }
        };
        let string = |key: &str| -> AmqpResult<Option<String>> {
            match args.get(key) {
                None => Ok(None),
                Some(v) => match v.as_str() {
                    Some(s) => Ok(Some(s.to_string())),
                    None => Err(invalid(
                        key,
                        format!("{{unacceptable_type,{}}}", type_name(v)),
                    )),
                },
            }
        };
        let overflow = match string("x-overflow")?.as_deref() {
            None | Some("drop-head") => Overflow::DropHead,
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            Some(_) => return Err(invalid("x-overflow", "invalid_overflow".into())),
        };
        let max_priority = match integer("x-max-priority", 0)? {
            None => None,
            Some(n) if n <= 255 => Some(n as u8),
            Some(n) => {
                return Err(invalid(
                    "x-max-priority",
                    format!("{{max_value_exceeded,{n}}}"),
                ));
            }
        };
        let single_active_consumer = match args.get("x-single-active-consumer") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                invalid(
                    "x-single-active-consumer",
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                )
            })?,
        };
        let dead_letter_exchange = match args.get("x-dead-letter-exchange") {
            None => None,
            Some(v) => Some(v.as_str().map(str::to_string).ok_or_else(|| {
                precondition_failed(format!(
                    "invalid type '{}' for arg 'x-dead-letter-exchange' in {}",
                    type_name(v),
                    resource("queue", queue, vhost)
                ))
            })?),
        };
        let dead_letter_routing_key = string("x-dead-letter-routing-key")?;
        Ok(QueueSettings {
            max_length: integer("x-max-length", 0)?,
            max_length_bytes: integer("x-max-length-bytes", 0)?,
            overflow,
            message_ttl_ms: integer("x-message-ttl", 0)?,
            expires_ms: integer("x-expires", 1)?,
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority,
            single_active_consumer,
        })
    }
}

/// A `queue.declare` argument refused, in RabbitMQ's words.
fn invalid_arg(key: &str, why: String, queue: &str, vhost: &str) -> AmqpError {
    precondition_failed(format!(
        "invalid arg '{key}' for {}: {why}",
        resource("queue", queue, vhost)
    ))
}

/// The longest message TTL, queue expiry or per-message expiration RabbitMQ accepts, in
/// milliseconds: ten years.
pub const MAX_EXPIRY_MS: u64 = 315_360_000_000;

/// RabbitMQ's name for a field value's type, used in argument errors.
pub fn type_name(v: &FieldValue) -> &'static str {
    match v {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
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
    /// `x-priority`: higher-priority consumers are served first while they have capacity.
    pub priority: i64,
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
    /// Behaviour from the arguments.
    pub settings: QueueSettings,
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
    pub bound_from: std::collections::BTreeSet<String>,
    /// When the queue was last used (declared, consumed from, got from), for `x-expires`.
    pub last_used_ms: u64,
    /// The time of the queue's pending timer, if one is scheduled.
    pub timer_at_ms: Option<u64>,
    /// Message counters for the management API.
    pub stats: super::stats::MessageCounters,
    /// The part of the backlog that lives in the store.
    pub paged: Paged,
    /// Messages at positions below this were recovered from the last run: when read back
    /// they are flagged redelivered.
    pub redelivered_below_seq: u64,
    /// `basic.get`s waiting for the next paged batch (memory was empty, the store not).
    pub waiting_gets: VecDeque<WaitingGet>,
    /// Publishers paused until the queue's consumers catch up.
    pub flow_waiters: Vec<ConnId>,
    /// Ready messages in memory, one FIFO per priority level (a single one without
    /// priorities).
    buckets: Vec<VecDeque<QueuedMessage>>,
    ready_len: usize,
    ready_bytes: u64,
    /// Encoded properties of the ready messages in memory (their headers weigh too).
    ready_properties_bytes: u64,
    meter: MemoryMeter,
    next_seq: u64,
}

impl Queue {
    /// A new, empty queue.
    pub fn new(
        id: QueueId,
        name: &str,
        vhost: &str,
        durable: bool,
        auto_delete: bool,
        arguments: FieldTable,
        settings: QueueSettings,
        meter: MemoryMeter,
    ) -> Self {
        let levels = settings.max_priority.map_or(1, |p| usize::from(p) + 1);
        Queue {
            id,
            name: name.to_string(),
            vhost: vhost.to_string(),
            durable,
            exclusive_owner: None,
            auto_delete,
            arguments,
            settings,
            consumers: Vec::new(),
            next_consumer: 0,
            exclusive_consumer: false,
            had_consumer: false,
            unacked: 0,
            dispatch_scheduled: false,
            bound_from: Default::default(),
            last_used_ms: 0,
            timer_at_ms: None,
            stats: Default::default(),
            paged: Paged::default(),
            redelivered_below_seq: 0,
            waiting_gets: VecDeque::new(),
            flow_waiters: Vec::new(),
            buckets: (0..levels).map(|_| VecDeque::new()).collect(),
            ready_len: 0,
            ready_bytes: 0,
            ready_properties_bytes: 0,
            meter,
            next_seq: 1,
        }
    }

    /// Ready messages, in memory and paged.
    pub fn ready_count(&self) -> u64 {
        self.ready_len as u64 + self.paged.count
    }

    /// Bytes of ready message bodies, in memory and paged.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes + self.paged.bytes
    }

    /// Ready messages held in memory.
    pub fn in_memory_count(&self) -> u64 {
        self.ready_len as u64
    }

    /// Memory charged for the ready messages held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.ready_bytes
            + self.ready_properties_bytes
            + self.ready_len as u64 * MESSAGE_OVERHEAD_BYTES
    }

    /// Whether new messages may be paged out under memory pressure. Queues with
    /// priorities or length limits stay in memory (their order and limits need the
    /// messages at hand; length limits bound them anyway).
    pub fn pageable(&self) -> bool {
        self.settings.max_priority.is_none()
            && self.settings.max_length.is_none()
            && self.settings.max_length_bytes.is_none()
    }

    /// Ready messages held in memory, in delivery order.
    pub fn ready(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.buckets.iter().rev().flat_map(|b| b.iter())
    }

    /// The position the next message will take.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The priority level a message is queued under.
    pub fn priority_of(&self, message: &Message) -> u8 {
        match self.settings.max_priority {
            None => 0,
            Some(max) => message.properties.priority.unwrap_or(0).min(max),
        }
    }

    /// Whether a message of `body_len` bytes would exceed a limit of a reject-publish
    /// queue (drop-head queues always accept and drop from the front).
    pub fn rejects(&self, body_len: u64) -> bool {
        if self.settings.overflow == Overflow::DropHead {
            return false;
        }
        self.settings
            .max_length
            .is_some_and(|max| self.ready_count() >= max)
            || self
                .settings
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes() + body_len > max)
    }

    /// Takes the position for a new message.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Makes sure positions handed out from now on follow `seq` (after recovery).
    pub fn advance_seq(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    /// Whether a message arriving now goes to the store instead of memory: once part of
    /// the queue is paged every later message is (order), and a pageable queue starts
    /// paging when it or the whole broker is over its memory budget.
    pub fn pages_next(&self, queue_budget_bytes: u64, broker_budget_bytes: u64) -> bool {
        self.paged.count > 0
            || (self.pageable()
                && (self.memory_bytes() >= queue_budget_bytes
                    || self.meter.load(std::sync::atomic::Ordering::Relaxed)
                        >= broker_budget_bytes))
    }

    /// Appends a message in memory at the back of its priority level. Its position must
    /// follow every message in memory at that level.
    pub fn push(&mut self, mut entry: QueuedMessage) {
        entry.priority = self.priority_of(&entry.message);
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.charge(&entry.message, true);
        let bucket = &mut self.buckets[usize::from(entry.priority)];
        debug_assert!(
            bucket.back().is_none_or(|m| m.seq < entry.seq),
            "push out of order"
        );
        bucket.push_back(entry);
    }

    /// Records a message that went to the store instead of memory.
    pub fn page_out(&mut self, seq: u64, body_len: u64) {
        debug_assert!(
            self.ready().all(|m| m.seq < seq),
            "paged messages follow those in memory"
        );
        if self.paged.count == 0 {
            self.paged.from_seq = seq;
        }
        self.paged.count += 1;
        self.paged.bytes += body_len;
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Records the paged tail of a queue recovered from the store.
    pub fn restore_paged(&mut self, count: u64, bytes: u64, from_seq: u64) {
        self.paged.count = count;
        self.paged.bytes = bytes;
        self.paged.from_seq = from_seq;
        self.next_seq = self.next_seq.max(from_seq);
    }

    /// Takes in a batch read from the store (in position order, starting at the paged
    /// tail). Returns how many entries it took and the last position.
    pub fn take_loaded(&mut self, entries: Vec<QueuedMessage>) -> Option<u64> {
        self.paged.loading = false;
        let last = entries.last().map(|e| e.seq)?;
        for e in entries {
            debug_assert!(
                e.seq >= self.paged.from_seq,
                "loaded entry before the paged tail"
            );
            self.paged.count = self.paged.count.saturating_sub(1);
            self.paged.bytes = self.paged.bytes.saturating_sub(e.message.body_len());
            self.push(e);
        }
        self.paged.from_seq = last + 1;
        if self.paged.count == 0 {
            self.paged.bytes = 0;
        }
        Some(last)
    }

    /// The store had nothing more where `paged` said there was: the count was off (it
    /// can only be, after a crash lost paged messages); start over from memory.
    pub fn forget_paged(&mut self) {
        self.paged = Paged {
            epoch: self.paged.epoch + 1,
            ..Paged::default()
        };
    }

    /// Restores a message recovered from the store at its position.
    pub fn restore(&mut self, mut entry: QueuedMessage) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        entry.priority = self.priority_of(&entry.message);
        self.insert_in_order(entry);
    }

    /// Updates the counts of messages held in memory.
    fn charge(&mut self, message: &Message, add: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let properties = message.properties.encoded_len() as u64;
        let cost = message.body_len() + properties + MESSAGE_OVERHEAD_BYTES;
        debug_assert_eq!(cost, memory_cost(message));
        if add {
            self.ready_len += 1;
            self.ready_bytes += message.body_len();
            self.ready_properties_bytes += properties;
            self.meter.fetch_add(cost, Relaxed);
        } else {
            self.ready_len -= 1;
            self.ready_bytes -= message.body_len();
            self.ready_properties_bytes -= properties;
            self.meter.fetch_sub(cost, Relaxed);
        }
    }

    /// Drops ready messages from the front while a drop-head limit is exceeded; returns
    /// them.
    pub fn enforce_limits(&mut self) -> Vec<QueuedMessage> {
        let mut dropped = Vec::new();
        if self.settings.overflow != Overflow::DropHead {
            return dropped;
        }
        while self
            .settings
            .max_length
            .is_some_and(|max| self.ready_count() > max)
            || self
                .settings
                .max_length_bytes
                .is_some_and(|max| self.ready_bytes() > max)
        {
            match self.pop() {
                Some(m) => dropped.push(m),
                None => break,
            }
        }
        dropped
    }

    /// Takes the next message to deliver: the front of the highest non-empty priority.
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        let m = self.buckets.iter_mut().rev().find_map(|b| b.pop_front())?;
        self.charge(&m.message, false);
        Some(m)
    }

    /// Removes expired messages from the fronts of the priority levels (like RabbitMQ,
    /// a message expires once it reaches the front).
    pub fn drop_expired(&mut self, now_ms: u64) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
        for bucket in &mut self.buckets {
            while bucket
                .front()
                .is_some_and(|m| m.expires_at_ms.is_some_and(|t| t < now_ms))
            {
                if let Some(m) = bucket.pop_front() {
                    expired.push(m);
                }
            }
        }
        for m in &expired {
            self.charge(&m.message, false);
        }
        expired
    }

    /// The earliest expiry among the messages at the fronts of the priority levels.
    pub fn head_expiry_ms(&self) -> Option<u64> {
        self.buckets
            .iter()
            .filter_map(|b| b.front()?.expires_at_ms)
            .min()
    }

    /// When an unused `x-expires` queue is due for deletion.
    pub fn idle_deadline_ms(&self) -> Option<u64> {
        let expires = self.settings.expires_ms?;
        self.consumers
            .is_empty()
            .then_some(self.last_used_ms + expires)
    }

    /// Puts a delivered message back at its original position, marked redelivered.
    pub fn requeue(&mut self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        self.insert_in_order(entry);
    }

    fn insert_in_order(&mut self, entry: QueuedMessage) {
        self.charge(&entry.message, true);
        let level = usize::from(entry.priority).min(self.buckets.len() - 1);
        let bucket = &mut self.buckets[level];
        // Requeued messages usually belong at or near the front.
        let pos = bucket.partition_point(|m| m.seq < entry.seq);
        debug_assert!(
            bucket.get(pos).is_none_or(|m| m.seq != entry.seq),
            "duplicate seq in queue"
        );
        bucket.insert(pos, entry);
    }

    /// Removes every ready message held in memory and forgets the paged tail; returns
    /// the messages, and where the paged tail began with how many it held (the caller has
    /// the store drop them).
    pub fn purge(&mut self) -> (Vec<QueuedMessage>, Option<(u64, u64)>) {
        let all: Vec<QueuedMessage> = self
            .buckets
            .iter_mut()
            .rev()
            .flat_map(|b| b.drain(..))
            .collect();
        use std::sync::atomic::Ordering::Relaxed;
        self.meter.fetch_sub(self.memory_bytes(), Relaxed);
        self.ready_bytes = 0;
        self.ready_properties_bytes = 0;
        self.ready_len = 0;
        let paged = (self.paged.count > 0).then_some((self.paged.from_seq, self.paged.count));
        self.forget_paged();
        (all, paged)
    }

    /// Adds a consumer at the end of the round-robin order.
    pub fn add_consumer(&mut self, consumer: ConsumerRef, exclusive: bool) {
        self.consumers.push(consumer);
        self.had_consumer = true;
        self.exclusive_consumer = exclusive;
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

    /// The consumers that may receive the next message, in the order to try them: with a
    /// single active consumer only the first; otherwise round-robin from the cursor.
    pub fn candidates(&self) -> impl Iterator<Item = usize> + '_ {
        let n = self.consumers.len();
        let count = if self.settings.single_active_consumer {
            n.min(1)
        } else {
            n
        };
        let start = if self.settings.single_active_consumer {
            0
        } else {
            self.next_consumer
        };
        (0..count).map(move |i| (start + i) % n)
    }

    /// Checks the queue's own invariants.
    pub fn check_invariants(&self) {
        let all: Vec<&QueuedMessage> = self.buckets.iter().flat_map(|b| b.iter()).collect();
        assert_eq!(all.len(), self.ready_len, "queue {} length", self.name);
        let bytes: u64 = all.iter().map(|m| m.message.body_len()).sum();
        assert_eq!(bytes, self.ready_bytes, "queue {} byte count", self.name);
        let cost: u64 = all.iter().map(|m| memory_cost(&m.message)).sum();
        assert_eq!(
            cost,
            self.memory_bytes(),
            "queue {} memory charge",
            self.name
        );
        assert!(
            self.paged.count == 0 || all.iter().all(|m| m.seq < self.paged.from_seq),
            "queue {} holds in memory a message of its paged tail",
            self.name
        );
        assert!(self.paged.count > 0 || self.paged.bytes == 0);
        for (level, b) in self.buckets.iter().enumerate() {
            assert!(
                b.iter().zip(b.iter().skip(1)).all(|(x, y)| x.seq < y.seq),
                "queue {} out of order",
                self.name
            );
            assert!(
                b.iter().all(|m| usize::from(m.priority) == level),
                "queue {} priority level",
                self.name
            );
        }
        assert!(all.iter().all(|m| m.seq < self.next_seq));
        assert!(self.consumers.is_empty() || self.next_consumer < self.consumers.len());
        assert!(!self.exclusive_consumer || self.consumers.len() == 1);
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // A deleted queue's messages no longer weigh on the broker's memory.
        self.meter
            .fetch_sub(self.memory_bytes(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(args: &[(&str, FieldValue)]) -> String {
        let table: FieldTable = args
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let e = QueueSettings::from_arguments(&table, "q", "/").expect_err("refused");
        assert_eq!(e.code, 406, "{e:?}");
        e.text
    }

    fn text(s: &str) -> FieldValue {
        FieldValue::LongStr(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn bad_arguments_get_rabbitmqs_reasons() {
        let cases: Vec<(Vec<(&str, FieldValue)>, &str)> = vec![
            (
                vec![("x-message-ttl", text("abc"))],
                "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': \"expected integer, got longstr\"",
            ),
            (
                vec![("x-max-length", FieldValue::Bool(true))],
                "invalid arg 'x-max-length' for queue 'q' in vhost '/': \"expected integer, got bool\"",
            ),
            (
                vec![("x-message-ttl", FieldValue::I64(MAX_EXPIRY_MS as i64 + 1))],
                "invalid arg 'x-message-ttl' for queue 'q' in vhost '/': {value_too_large,315360000001}",
            ),
            (
                vec![("x-expires", FieldValue::I64(1 << 40))],
                "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_too_large,1099511627776}",
            ),
            (
                vec![("x-overflow", text("bogus"))],
                "invalid arg 'x-overflow' for queue 'q' in vhost '/': invalid_overflow",
            ),
            (
                vec![("x-overflow", FieldValue::I32(1))],
                "invalid arg 'x-overflow' for queue 'q' in vhost '/': {unacceptable_type,signedint}",
            ),
            (
                vec![("x-max-priority", FieldValue::I32(256))],
                "invalid arg 'x-max-priority' for queue 'q' in vhost '/': {max_value_exceeded,256}",
            ),
            (
                vec![("x-dead-letter-routing-key", text("k"))],
                "invalid arg 'x-dead-letter-routing-key' for queue 'q' in vhost '/': routing_key_but_no_dlx_defined",
            ),
            (
                vec![("x-dead-letter-exchange", FieldValue::I64(1))],
                "invalid type 'long' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'",
            ),
        ];
        for (args, expected) in cases {
            assert_eq!(reason(&args), format!("PRECONDITION_FAILED - {expected}"));
        }
        // The largest times are accepted.
        let table: FieldTable = [
            (
                "x-message-ttl".to_string(),
                FieldValue::I64(MAX_EXPIRY_MS as i64),
            ),
            (
                "x-expires".to_string(),
                FieldValue::I64(MAX_EXPIRY_MS as i64),
            ),
        ]
        .into_iter()
        .collect();
        let s = QueueSettings::from_arguments(&table, "q", "/").expect("accepted");
        assert_eq!(s.message_ttl_ms, Some(MAX_EXPIRY_MS));
    }

    #[test]
    fn queues_declared_under_earlier_checks_are_read_back_as_declared() {
        let table: FieldTable = [
            ("x-message-ttl".to_string(), FieldValue::I64(1 << 40)),
            ("x-max-length".to_string(), FieldValue::I32(5)),
            ("x-dead-letter-routing-key".to_string(), text("k")),
        ]
        .into_iter()
        .collect();
        assert!(QueueSettings::from_arguments(&table, "q", "/").is_err());
        let s = QueueSettings::read(&table, "q", "/").expect("read back");
        assert_eq!(s.message_ttl_ms, Some(1 << 40));
        assert_eq!(s.max_length, Some(5));
    }
}
