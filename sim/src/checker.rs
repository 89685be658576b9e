//! The checker: a reference model of the broker fed by every event at its boundary (the
//! commands it handles, the outputs it produces, the batches the disk syncs, crashes and
//! recoveries), plus checks of what the clients see on the wire. It never looks at fault
//! injection; it asserts at each step and reports the first violation.
//!
//! The model is exact for the workload's subset of AMQP: it knows which copy of which
//! message each queue holds and in what order, which deliveries each channel has
//! outstanding, which publishes wait for which store batch, and so what the disk must hold
//! after any crash. Dispatch is the broker's choice; the model only checks that each
//! choice was allowed (queue order, prefetch, tags, redelivered).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use warren::broker::{Broker, Output};
use warren::proto::command::{Command, ConnId, Message, Reply};
use warren::proto::method::Method;
use warren::proto::shortstr::ShortStr;
use warren::store::Recovered;

use crate::Violation;
use crate::client::{Observed, queue_of_tag};
use crate::hostile::{Reserved, is_hostile_id, plan::strip_cr_lf};
use crate::workload::{Kind, MsgKey, msg_id_text, parse_msg_id, topic_matches};

mod crosscheck;
mod inputs;
mod observed;
mod outputs;

type Check = Result<(), Violation>;

fn fail<T>(text: impl Into<String>) -> Result<T, Violation> {
    Err(Violation(text.into()))
}

/// A copy of a message in one queue.
#[derive(Debug, Clone)]
struct Copy {
    key: MsgKey,
    /// Index into `Model::stored` when the broker stored it.
    stored: Option<usize>,
}

#[derive(Debug)]
struct MQueue {
    inst: u64,
    durable: bool,
    /// The reject-publish `x-max-length` its arguments set.
    arg_max_length: Option<u64>,
    /// The limit in force: the smaller of the argument's and the limit policy's.
    max_length: Option<u64>,
    bindings: BTreeSet<(String, String)>,
    /// Ready copies by queue position.
    ready: BTreeMap<u64, Copy>,
    next_pos: u64,
    consumers: BTreeSet<(ConnId, u16, String)>,
}

/// A stored queue entry of the current broker incarnation (batch 0: recovered).
#[derive(Debug, Clone)]
struct Stored {
    queue: String,
    inst: u64,
    key: MsgKey,
    enqueued_in: u64,
    dequeued_in: Option<u64>,
}

/// A durable queue incarnation of the current broker incarnation.
#[derive(Debug, Clone)]
struct Instance {
    declared_in: u64,
    deleted_in: Option<u64>,
}

#[derive(Debug, Clone)]
struct MUnacked {
    queue: String,
    inst: u64,
    pos: u64,
    copy: Copy,
    consumer: Option<String>,
    from_consumer: bool,
}

#[derive(Debug, Clone)]
struct MConsumer {
    queue: String,
    prefetch: u16,
    unacked: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Ack once this batch is synced (None: at once).
    Ack(Option<u64>),
    Nack,
}

#[derive(Debug, Default)]
struct MChan {
    next_tag: u64,
    unacked: BTreeMap<u64, MUnacked>,
    consumers: BTreeMap<String, MConsumer>,
    consumer_prefetch: u16,
    channel_prefetch: u16,
    consumer_unacked: u32,
    /// Publisher confirms: next sequence number and outcomes not yet sent.
    confirm: Option<(u64, BTreeMap<u64, (MsgKey, Outcome)>)>,
}

/// A reply the broker must send on a channel, in order.
#[derive(Debug, Clone, PartialEq)]
enum Exp {
    Method(&'static str),
    Close(u16),
    GetOk {
        key: MsgKey,
        tag: u64,
        redelivered: bool,
    },
    GetEmpty,
    /// A `basic.get` on a queue whose head waited for its store batch: get-empty, or,
    /// when the get waited for a read from the store during which the batch was synced,
    /// get-ok with the queue's head then.
    GetHeld(String),
    PurgeOk(u32),
    DeleteOk(u32),
    Return(MsgKey),
    Cancel(String),
}

#[derive(Debug, Default)]
struct MConn {
    channels: BTreeMap<u16, MChan>,
    expects: BTreeMap<u16, VecDeque<Exp>>,
    closed: bool,
}

/// What the model knows of a published message.
#[derive(Debug, Clone)]
struct MsgInfo {
    persistent: bool,
    confirmed: bool,
}

/// Counters for the closing report.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Publishes the broker handled.
    pub publishes: u64,
    /// Publisher confirms (acks) sent.
    pub confirms: u64,
    /// Nacks sent.
    pub nacks: u64,
    /// Deliveries (deliver and get-ok).
    pub deliveries: u64,
    /// Redeliveries.
    pub redeliveries: u64,
    /// Acks handled.
    pub acks: u64,
    /// Requeues.
    pub requeues: u64,
    /// Channel errors the model predicted and saw.
    pub channel_errors: u64,
    /// Crashes checked.
    pub crashes: u64,
    /// Entries recovered and checked.
    pub recovered_entries: u64,
    /// Stored messages delivered (or got) under `deliver_after_sync`, each checked to
    /// have its batch synced.
    pub synced_deliveries: u64,
    /// Gets that found the queue's head waiting for its batch, and of those, how many
    /// were answered after a read during which the batch was synced.
    pub held_gets: u64,
    /// See `held_gets`.
    pub late_gets: u64,
}

/// The reference model.
#[derive(Debug, Default)]
pub struct Model {
    exchanges: BTreeMap<String, Kind>,
    queues: BTreeMap<String, MQueue>,
    conns: BTreeMap<ConnId, MConn>,
    msgs: BTreeMap<MsgKey, MsgInfo>,
    next_batch: u64,
    synced: u64,
    next_inst: u64,
    instances: BTreeMap<u64, Instance>,
    stored: Vec<Stored>,
    /// Copies ever delivered, by queue name and message (across crashes).
    delivered: BTreeSet<(String, MsgKey)>,
    /// Client side: copies each client saw. (Across clients the order of observation is
    /// not the order of emission; within a client's successive sessions it is.)
    seen_by_clients: BTreeSet<(usize, String, MsgKey)>,
    /// Counters.
    pub stats: Stats,
    /// Virtual time, set by the world before each step (for histories).
    pub now_ms: u64,
    /// What happened to each message, for violation reports.
    history: BTreeMap<MsgKey, Vec<String>>,
    /// The broker was told the store fails: it refuses what it would have to store.
    store_failing: bool,
    /// The modelled names, when hostile clients share the broker (`None`: every queue is
    /// modelled).
    namespace: Option<Reserved>,
    /// Connections of hostile clients, whose traffic is not modelled.
    hostile_conns: BTreeSet<ConnId>,
    /// The limit policy the operator set on the workload's queues.
    limit_policy: Option<LimitPolicy>,
    /// The broker delivers a stored message only once its batch is synced
    /// (`BrokerConfig::deliver_after_sync`).
    deliver_after_sync: bool,
}

/// The predeclared exchanges the workload may use.
fn predeclared() -> BTreeMap<String, Kind> {
    [
        ("", Kind::Direct),
        ("amq.direct", Kind::Direct),
        ("amq.fanout", Kind::Fanout),
        ("amq.topic", Kind::Topic),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_string(), k))
    .collect()
}

fn key_of(message: &Message) -> Option<MsgKey> {
    message
        .properties
        .message_id
        .as_ref()
        .and_then(ShortStr::as_str)
        .and_then(parse_msg_id)
}

fn max_length_of(args: &warren::proto::table::FieldTable) -> Option<u64> {
    let reject = args.get("x-overflow").and_then(|v| v.as_str()) == Some("reject-publish");
    let n = args.get("x-max-length").and_then(|v| v.as_i64())?;
    reject.then_some(n.max(0) as u64)
}

/// The workload's limit policy: which queues, and their most ready messages (with
/// `reject-publish`, which a queue's own `x-overflow` leaves as it is).
#[derive(Debug, Clone)]
struct LimitPolicy {
    pattern: regex::Regex,
    max_length: u64,
}

impl LimitPolicy {
    /// The limit a queue named `name` runs under, given its argument's.
    fn limit(policy: Option<&LimitPolicy>, name: &str, arg: Option<u64>) -> Option<u64> {
        match policy.filter(|p| p.pattern.is_match(name)) {
            Some(p) => Some(arg.map_or(p.max_length, |a| a.min(p.max_length))),
            None => arg,
        }
    }
}

impl Model {
    /// The model of a broker that starts from `recovered`.
    pub fn new(recovered: &Recovered) -> Self {
        let mut m = Model::default();
        m.restart(recovered);
        m
    }

    /// The broker delivers a stored message only once its batch is synced.
    pub fn set_deliver_after_sync(&mut self, on: bool) {
        self.deliver_after_sync = on;
    }

    /// Whether the broker must hold `copy` back: it is stored in a batch not yet synced.
    fn held(&self, copy: &Copy) -> bool {
        self.deliver_after_sync
            && copy
                .stored
                .is_some_and(|i| self.stored[i].enqueued_in > self.synced)
    }

    /// The broker was told the store fails (`true`) or works again.
    pub fn store_fault(&mut self, failing: bool) {
        self.store_failing = failing;
    }

    /// The operator set (or cleared) the limit policy on the workload's queues: the
    /// broker put it in force as it took the request.
    pub fn set_limit_policy(&mut self, limit: Option<(String, u64)>) {
        self.limit_policy = limit.and_then(|(pattern, max_length)| {
            Some(LimitPolicy {
                pattern: regex::Regex::new(&pattern).ok()?,
                max_length,
            })
        });
        let policy = self.limit_policy.as_ref();
        for (name, q) in self.queues.iter_mut() {
            q.max_length = LimitPolicy::limit(policy, name, q.arg_max_length);
        }
    }

    /// A new broker incarnation starts from `recovered` (the state the disk returned).
    pub fn restart(&mut self, recovered: &Recovered) {
        let limit = recovered
            .policies
            .iter()
            .find(|p| !p.operator && p.vhost == "/" && p.name == crate::policies::LIMIT_POLICY)
            .and_then(crate::policies::limit_of);
        self.set_limit_policy(limit);
        self.exchanges = predeclared();
        for x in &recovered.exchanges {
            let kind = match x.kind.as_str() {
                "fanout" => Kind::Fanout,
                "topic" => Kind::Topic,
                _ => Kind::Direct,
            };
            self.exchanges.insert(x.name.clone(), kind);
        }
        self.queues.clear();
        self.conns.clear();
        self.hostile_conns.clear();
        self.instances.clear();
        self.stored.clear();
        self.next_batch = 1;
        self.synced = 0;
        let mut names: BTreeMap<u64, String> = BTreeMap::new();
        for q in &recovered.queues {
            if !self.modelled_queue(&q.name) {
                continue;
            }
            self.next_inst += 1;
            let inst = self.next_inst;
            names.insert(q.id, q.name.clone());
            self.instances.insert(
                inst,
                Instance {
                    declared_in: 0,
                    deleted_in: None,
                },
            );
            let bindings = recovered
                .bindings
                .iter()
                .filter(|b| !b.to_exchange && b.destination == q.name)
                .map(|b| (b.source.clone(), b.routing_key.clone()))
                .collect();
            self.queues.insert(
                q.name.clone(),
                MQueue {
                    inst,
                    durable: true,
                    arg_max_length: max_length_of(&q.arguments),
                    max_length: LimitPolicy::limit(
                        self.limit_policy.as_ref(),
                        &q.name,
                        max_length_of(&q.arguments),
                    ),
                    bindings,
                    ready: BTreeMap::new(),
                    next_pos: 1,
                    consumers: BTreeSet::new(),
                },
            );
        }
        for (queue, e) in recovered.entries() {
            let (Some(name), Some(key)) = (names.get(&queue), key_of(&e.message)) else {
                continue;
            };
            let name = name.clone();
            self.note(key, format!("recovered in {name}"));
            let Some(q) = self.queues.get_mut(&name) else {
                continue;
            };
            let idx = self.stored.len();
            self.stored.push(Stored {
                queue: name,
                inst: q.inst,
                key,
                enqueued_in: 0,
                dequeued_in: None,
            });
            q.ready.insert(
                e.seq,
                Copy {
                    key,
                    stored: Some(idx),
                },
            );
            q.next_pos = q.next_pos.max(e.seq + 1);
        }
    }

    /// Hostile clients share the broker: only the `modelled` queues and exchanges are
    /// modelled, and hostile traffic must never touch them.
    pub fn isolate(&mut self, modelled: Reserved) {
        self.namespace = Some(modelled);
    }

    /// Whether queue `name` is modelled (and not a hostile client's).
    fn modelled_queue(&self, name: &str) -> bool {
        self.namespace.as_ref().is_none_or(|n| n.is_queue(name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}
