//! Queues: what declared them and the settings that come from `queue.declare` arguments,
//! their messages ([`Messages`]: ready ones in delivery order, by priority then position),
//! their consumers ([`Consumers`], in round-robin order) and their timers ([`Expiry`]).

mod consumers;
mod messages;

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

pub use consumers::{ConsumerRef, Consumers};
pub use messages::{Messages, Paged};

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
    pub allowance: super::death::Allowance,
    /// How many times it came back unacked (counted in quorum queues, and delivered as
    /// `x-delivery-count`).
    pub delivery_count: u32,
    /// What the message is charged for in memory ([`memory_cost`]), worked out once for
    /// all the queues it is routed to: weighing its headers takes a walk through them.
    pub cost: u64,
}

impl QueuedMessage {
    /// The message as it is delivered: from a quorum queue with `x-delivery-count`, how
    /// many times it came back unacked, as RabbitMQ adds it (0 the first time).
    pub fn outgoing(&self, quorum: bool) -> Arc<Message> {
        if !quorum {
            return self.message.clone();
        }
        let mut message = (*self.message).clone();
        message
            .properties
            .headers
            .get_or_insert_with(FieldTable::default)
            .insert(
                "x-delivery-count",
                FieldValue::I64(i64::from(self.delivery_count)),
            );
        Arc::new(message)
    }
}

pub use crate::store::{MESSAGE_OVERHEAD_BYTES, memory_cost};

/// A management API get or peek waiting for reads of its queue's paged messages.
#[derive(Debug)]
pub struct WaitingAdmin {
    /// The driver's number for the request.
    pub id: super::admin::AdminId,
    /// The request, run again once the reads are in.
    pub request: super::admin::AdminRequest,
    /// How many messages it wants in memory.
    pub want: u64,
    /// Reads it has waited for.
    pub reads: usize,
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
    /// A quorum queue (`x-queue-type`): its deliveries carry `x-delivery-count`, how many
    /// times the message came back unacked.
    pub quorum: bool,
    /// `x-delivery-limit` (quorum queues): how many times a message may come back unacked
    /// before it is dead-lettered (or dropped) instead of queued again.
    pub delivery_limit: Option<u64>,
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
            quorum: false,
            delivery_limit: None,
        }
    }
}

impl QueueSettings {
    /// How many priority levels a queue keeps its messages in: one per priority up to
    /// `x-max-priority`, or a single one.
    pub fn priority_levels(&self) -> usize {
        self.max_priority.map_or(1, |p| usize::from(p) + 1)
    }

    /// Whether new messages may be paged out under memory pressure. Queues with
    /// priorities or length limits stay in memory (their order and limits need the
    /// messages at hand; length limits bound them anyway).
    pub fn pageable(&self) -> bool {
        self.max_priority.is_none() && self.max_length.is_none() && self.max_length_bytes.is_none()
    }

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
        // Read only to be checked: every classic queue here keeps its messages the same way.
        match args.get("x-queue-mode") {
            None => {}
            Some(FieldValue::LongStr(mode)) if matches!(&mode[..], b"default" | b"lazy") => {}
            Some(FieldValue::LongStr(_)) => {
                return Err(invalid("x-queue-mode", "invalid_queue_mode".into()));
            }
            Some(v) => {
                return Err(invalid(
                    "x-queue-mode",
                    format!("{{unacceptable_type,{}}}", type_name(v)),
                ));
            }
        }
        // Read only to be checked, as `x-queue-mode` is: RabbitMQ 3.10 knows versions 1 and 2.
        match args.get("x-queue-version") {
            None => {}
            Some(v) => match v.as_i64() {
                Some(1 | 2) => {}
                Some(n) => {
                    return Err(invalid(
                        "x-queue-version",
                        format!("\"unsupported queue version '{n}'\""),
                    ));
                }
                None => {
                    return Err(invalid(
                        "x-queue-version",
                        format!("\"expected integer, got {}\"", type_name(v)),
                    ));
                }
            },
        }
        // Read only to be checked, with RabbitMQ's bounds: a quorum queue here is one
        // durable queue, whose messages are kept as a classic queue's are.
        for (key, min) in [
            ("x-quorum-initial-group-size", 1),
            ("x-max-in-memory-length", 0),
            ("x-max-in-memory-bytes", 0),
        ] {
            integer_arg(args, key, min, queue, vhost)?;
        }
        if settings.dead_letter_routing_key.is_some() && settings.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined".into(),
            ));
        }
        // A dead letter is routed with this key: held to a publish's bound (a short
        // string), as topic matching and every other routing cost assume.
        if let Some(key) = &settings.dead_letter_routing_key
            && key.len() > MAX_ROUTING_KEY_BYTES
        {
            return Err(invalid(
                "x-dead-letter-routing-key",
                format!(
                    "routing key is {} bytes long; routing keys are at most {MAX_ROUTING_KEY_BYTES} bytes",
                    key.len()
                ),
            ));
        }
        Ok(settings)
    }

    /// Reads the arguments of a queue, refusing what warren cannot run. A queue recovered
    /// from the store is read with this alone: it was declared under the checks of its
    /// day, and [`QueueSettings::from_arguments`] may have added some since.
    pub fn read(args: &FieldTable, queue: &str, vhost: &str) -> AmqpResult<Self> {
        let invalid = |key: &str, why: String| invalid_arg(key, why, queue, vhost);
        let integer = |key: &str, min: i64| integer_arg(args, key, min, queue, vhost);
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
            quorum: args.get("x-queue-type").and_then(FieldValue::as_str) == Some("quorum"),
            delivery_limit: integer("x-delivery-limit", 0)?,
        })
    }
}

/// An integer argument of at least `min` (0 or 1), refused in RabbitMQ's words otherwise.
fn integer_arg(
    args: &FieldTable,
    key: &str,
    min: i64,
    queue: &str,
    vhost: &str,
) -> AmqpResult<Option<u64>> {
    let invalid = |why: String| invalid_arg(key, why, queue, vhost);
    match args.get(key) {
        None => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n >= min => Ok(Some(n as u64)),
            Some(n) if n < 0 => Err(invalid(format!("{{value_negative,{n}}}"))),
            Some(n) => Err(invalid(format!("{{value_zero,{n}}}"))),
            None => Err(invalid(format!(
                "\"expected integer, got {}\"",
                type_name(v)
            ))),
        },
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

/// The longest routing key a queue's dead letters (`x-dead-letter-routing-key` or a
/// policy's `dead-letter-routing-key`) or a republished message may be given: what a
/// publish's routing key can hold, a short string.
pub const MAX_ROUTING_KEY_BYTES: usize = crate::proto::codec::SHORTSTR_MAX_BYTES;

pub use crate::proto::table::type_name;

/// What `queue.declare` said about a queue: its name, owner and settings.
#[derive(Debug)]
pub struct Declaration {
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
    /// Behaviour from the arguments alone.
    pub declared: QueueSettings,
    /// The policy and operator policy in force, by name, and their merged definition in
    /// RabbitMQ's keys (`effective_policy_definition`).
    pub policy: PolicyNames,
    /// Behaviour in force: the arguments under the policies ([`Declaration::apply`]).
    pub settings: QueueSettings,
}

/// What policies a queue runs under, as listings show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyNames {
    /// The policy in force.
    pub policy: Option<String>,
    /// The operator policy in force.
    pub operator_policy: Option<String>,
    /// Their merged definition.
    pub definition: FieldTable,
    /// Every policy of the vhost that matches the queue's name, by slot.
    pub matches: super::policy_matches::PolicyMatches,
}

impl Declaration {
    /// Puts the settings the policies give in force; returns whether they changed.
    pub fn apply(&mut self, names: PolicyNames, settings: QueueSettings) -> bool {
        self.policy = names;
        let changed = settings != self.settings;
        // A policy cannot change how many priority levels the queue's messages use.
        assert_eq!(settings.max_priority, self.declared.max_priority);
        self.settings = settings;
        changed
    }
}

/// When a queue was last used, for `x-expires`, and when its pending timer fires.
#[derive(Debug, Default)]
pub struct Expiry {
    /// When the queue was last used (declared, consumed from, got from).
    pub last_used_ms: u64,
    /// The time of the queue's pending timer, if one is scheduled.
    timer_at_ms: Option<u64>,
}

impl Expiry {
    /// Marks the queue as used at `now_ms`.
    pub fn touch(&mut self, now_ms: u64) {
        self.last_used_ms = now_ms;
    }

    /// Makes `at_ms` the pending timer unless one is due by then; returns whether it did
    /// (then the caller schedules a timer for `at_ms`).
    pub fn arm(&mut self, at_ms: u64) -> bool {
        let earlier = self.timer_at_ms.is_none_or(|t| at_ms < t);
        if earlier {
            self.timer_at_ms = Some(at_ms);
        }
        earlier
    }

    /// The time of the pending timer, if one is scheduled.
    pub fn pending(&self) -> Option<u64> {
        self.timer_at_ms
    }

    /// A timer scheduled for `at_ms` is due: returns whether it is the pending one (a
    /// timer moved earlier leaves stale ones behind), and if so clears it.
    pub fn fire(&mut self, at_ms: u64) -> bool {
        let live = self.timer_at_ms == Some(at_ms);
        if live {
            self.timer_at_ms = None;
        }
        live
    }
}

/// A queue: what declared it, its messages, its consumers and its timers, with what ties
/// it to the rest of the broker (bindings, waiting gets and publishers, counters).
#[derive(Debug)]
pub struct Queue {
    /// Broker-wide identity.
    pub id: QueueId,
    /// Name, vhost, owner and settings.
    pub decl: Declaration,
    /// Ready messages, in memory and paged, and deliveries not yet acked.
    pub messages: Messages,
    /// Consumers in round-robin order.
    pub consumers: Consumers,
    /// Last use and pending timer.
    pub expiry: Expiry,
    /// Queued for a dispatch pass at the end of the current command.
    pub dispatch_scheduled: bool,
    /// Exchanges with bindings to this queue (for cleanup on delete).
    pub bound_from: BTreeSet<String>,
    /// Message counters for the management API.
    pub stats: super::stats::MessageCounters,
    /// `basic.get`s waiting for the next paged batch (memory was empty, the store not).
    pub waiting_gets: VecDeque<WaitingGet>,
    /// Gets and peeks of the management API that asked for more than memory held while
    /// the rest of the queue was paged: answered when the read they asked for is in.
    pub waiting_admin: VecDeque<WaitingAdmin>,
    /// Publishers paused until the queue's consumers catch up.
    pub flow_waiters: Vec<ConnId>,
    /// When the queue last delivered a message.
    pub last_delivery_ms: u64,
    /// The queue delivered nothing for a while although publishers waited for it: its
    /// consumers wait on their application (a prefetch window never acked), not on the
    /// broker, and publishers are not held back for them until it delivers again.
    pub flow_stalled: bool,
}

impl Queue {
    /// A new, empty queue, last used at `now_ms`; what it holds in memory is charged to
    /// `meter`.
    pub fn new(id: QueueId, decl: Declaration, meter: MemoryMeter, now_ms: u64) -> Self {
        let levels = decl.settings.priority_levels();
        Queue {
            id,
            decl,
            messages: Messages::new(levels, meter),
            consumers: Consumers::default(),
            expiry: Expiry {
                last_used_ms: now_ms,
                timer_at_ms: None,
            },
            dispatch_scheduled: false,
            bound_from: BTreeSet::new(),
            stats: Default::default(),
            waiting_gets: VecDeque::new(),
            waiting_admin: VecDeque::new(),
            flow_waiters: Vec::new(),
            last_delivery_ms: now_ms,
            flow_stalled: false,
        }
    }

    /// Ready messages, in memory and paged.
    pub fn ready_count(&self) -> u64 {
        self.messages.ready_count()
    }

    /// Whether a message arriving now goes to the store instead of memory: once part of
    /// the queue is paged every later message is (order), and a pageable queue starts
    /// paging when it or the whole broker is over its memory budget.
    pub fn pages_next(&self, queue_budget_bytes: u64, broker_budget_bytes: u64) -> bool {
        self.messages.paged.count > 0
            || (self.decl.settings.pageable()
                && (self.messages.memory_bytes() >= queue_budget_bytes
                    || self.messages.broker_memory_bytes() >= broker_budget_bytes))
    }

    /// Whether a message of `body_len` bytes would exceed a limit of a reject-publish
    /// queue (drop-head queues always accept and drop from the front).
    pub fn rejects(&self, body_len: u64) -> bool {
        let settings = &self.decl.settings;
        if settings.overflow == Overflow::DropHead {
            return false;
        }
        settings
            .max_length
            .is_some_and(|max| self.messages.ready_count() >= max)
            || settings
                .max_length_bytes
                .is_some_and(|max| self.messages.ready_bytes() + body_len > max)
    }

    /// Whether the queue holds more ready messages than a drop-head limit allows.
    pub fn over_drop_head_limit(&self) -> bool {
        let settings = &self.decl.settings;
        settings.overflow == Overflow::DropHead
            && (settings
                .max_length
                .is_some_and(|max| self.messages.ready_count() > max)
                || settings
                    .max_length_bytes
                    .is_some_and(|max| self.messages.ready_bytes() > max))
    }

    /// Drops ready messages from the front while a drop-head limit is exceeded; returns
    /// them.
    pub fn enforce_limits(&mut self) -> Vec<QueuedMessage> {
        let mut dropped = Vec::new();
        while self.over_drop_head_limit() {
            match self.messages.pop_head() {
                Some(m) => dropped.push(m),
                None => break,
            }
        }
        dropped
    }

    /// When an unused `x-expires` queue is due for deletion.
    pub fn idle_deadline_ms(&self) -> Option<u64> {
        let expires = self.decl.settings.expires_ms?;
        self.consumers
            .is_empty()
            .then_some(self.expiry.last_used_ms + expires)
    }

    /// Checks the queue's own invariants: those of its messages and consumers, and that
    /// its messages are kept in as many priority levels as its settings ask for.
    pub fn check_invariants(&self) {
        let name = &self.decl.name;
        self.messages.check_invariants(name);
        self.consumers.check_invariants(name);
        assert_eq!(
            self.messages.levels(),
            self.decl.settings.priority_levels(),
            "queue {name} priority levels"
        );
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
                vec![("x-queue-mode", text("bogus"))],
                "invalid arg 'x-queue-mode' for queue 'q' in vhost '/': invalid_queue_mode",
            ),
            (
                vec![("x-queue-mode", FieldValue::I32(1))],
                "invalid arg 'x-queue-mode' for queue 'q' in vhost '/': {unacceptable_type,signedint}",
            ),
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
