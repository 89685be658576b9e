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

    // ----- inputs to the broker -----

    /// A connection was accepted.
    pub fn connect(&mut self, conn: ConnId) {
        self.conns.insert(conn, MConn::default());
    }

    /// A hostile client's connection was accepted.
    pub fn connect_hostile(&mut self, conn: ConnId) {
        self.hostile_conns.insert(conn);
    }

    /// The broker is about to handle `command` from `conn`.
    pub fn command(&mut self, conn: ConnId, command: &Command) -> Check {
        if self.hostile_conns.contains(&conn) {
            return self.hostile_command(command);
        }
        if self.conns.get(&conn).is_none_or(|c| c.closed) {
            return Ok(());
        }
        match command {
            Command::Login(_)
            | Command::OpenVhost { .. }
            | Command::Drained { .. }
            | Command::Publishing => Ok(()),
            Command::ChannelOpen { channel } => {
                let c = self.conn(conn);
                if c.channels.contains_key(channel) {
                    return fail(format!(
                        "channel {channel} of connection {conn} opened twice"
                    ));
                }
                c.channels.insert(
                    *channel,
                    MChan {
                        next_tag: 1,
                        ..MChan::default()
                    },
                );
                // The broker answers channel.open-ok (it may refuse the channel instead).
                self.expect(conn, *channel, Exp::Method("channel.open-ok"));
                Ok(())
            }
            Command::ChannelClose { channel } => {
                if self.close_channel(conn, *channel) {
                    self.expect(conn, *channel, Exp::Method("channel.close-ok"));
                }
                Ok(())
            }
            Command::ChannelError { channel, close } => {
                if self.close_channel(conn, *channel) {
                    self.expect(conn, *channel, Exp::Close(close.reply_code));
                }
                Ok(())
            }
            Command::Closed => {
                let channels: Vec<u16> = self.conn(conn).channels.keys().copied().collect();
                for ch in channels {
                    self.close_channel(conn, ch);
                }
                self.conn(conn).closed = true;
                Ok(())
            }
            Command::Publish {
                channel,
                mandatory,
                message,
                ..
            } => {
                if !self.has_channel(conn, *channel) {
                    return Ok(());
                }
                self.publish(conn, *channel, &message.exchange, *mandatory, message)
            }
            Command::Method { channel, method } => {
                if !self.has_channel(conn, *channel) {
                    return Ok(());
                }
                self.method(conn, *channel, method)
            }
        }
    }

    fn conn(&mut self, conn: ConnId) -> &mut MConn {
        self.conns.entry(conn).or_default()
    }

    fn chan(&mut self, conn: ConnId, channel: u16) -> Option<&mut MChan> {
        self.conns.get_mut(&conn)?.channels.get_mut(&channel)
    }

    fn has_channel(&self, conn: ConnId, channel: u16) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.channels.contains_key(&channel))
    }

    fn expect(&mut self, conn: ConnId, channel: u16, e: Exp) {
        self.conn(conn)
            .expects
            .entry(channel)
            .or_default()
            .push_back(e);
    }

    /// A channel error: the broker closes the channel with `code`.
    fn channel_error(&mut self, conn: ConnId, channel: u16, code: u16) -> Check {
        self.close_channel(conn, channel);
        self.expect(conn, channel, Exp::Close(code));
        Ok(())
    }

    /// Releases a channel: consumers go, unacked deliveries return to their queues.
    fn close_channel(&mut self, conn: ConnId, channel: u16) -> bool {
        let Some(ch) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.channels.remove(&channel))
        else {
            return false;
        };
        for (tag, c) in &ch.consumers {
            if let Some(q) = self.queues.get_mut(&c.queue) {
                q.consumers.remove(&(conn, channel, tag.clone()));
            }
        }
        for (_, u) in ch.unacked {
            self.requeue(u);
        }
        true
    }

    fn requeue(&mut self, u: MUnacked) {
        self.stats.requeues += 1;
        self.note(u.copy.key, format!("requeued to {}", u.queue));
        if let Some(q) = self.queues.get_mut(&u.queue) {
            if q.inst == u.inst {
                q.ready.insert(u.pos, u.copy);
            }
        }
    }

    /// The copy left its queue for good (acked, discarded, purged).
    fn release(&mut self, queue: &str, inst: u64, copy: &Copy) {
        let live = self.queues.get(queue).is_some_and(|q| q.inst == inst);
        if let Some(i) = copy.stored {
            if live && self.stored[i].dequeued_in.is_none() {
                self.stored[i].dequeued_in = Some(self.next_batch);
            }
        }
    }

    fn route(&self, exchange: &str, routing_key: &str) -> Vec<String> {
        let exchange = if exchange == "amq.default" {
            ""
        } else {
            exchange
        };
        if exchange.is_empty() {
            return self
                .queues
                .contains_key(routing_key)
                .then(|| routing_key.to_string())
                .into_iter()
                .collect();
        }
        let Some(kind) = self.exchanges.get(exchange) else {
            return Vec::new();
        };
        self.queues
            .iter()
            .filter(|(_, q)| {
                q.bindings.iter().any(|(x, k)| {
                    x == exchange
                        && match kind {
                            Kind::Direct => k == routing_key,
                            Kind::Fanout => true,
                            Kind::Topic => topic_matches(k, routing_key),
                        }
                })
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        exchange: &str,
        mandatory: bool,
        message: &Message,
    ) -> Check {
        let Some(key) = key_of(message) else {
            return fail("a publish without a message id");
        };
        if self.msgs.contains_key(&key) {
            return fail(format!("message {} published twice", msg_id_text(key)));
        }
        self.stats.publishes += 1;
        let persistent = message.is_persistent();
        self.msgs.insert(
            key,
            MsgInfo {
                persistent,
                confirmed: false,
            },
        );
        let x = if exchange == "amq.default" {
            ""
        } else {
            exchange
        };
        if !self.exchanges.contains_key(x) {
            return self.channel_error(conn, channel, 404);
        }
        let seq = self.chan(conn, channel).and_then(|ch| {
            let (next, _) = ch.confirm.as_mut()?;
            *next += 1;
            Some(*next - 1)
        });
        let routes = self.route(exchange, &message.routing_key);
        self.note(key, format!("published on conn {conn} ch {channel} (confirm seq {seq:?}) persistent={persistent} routes={routes:?} batch={}", self.next_batch));
        let refused = self.store_failing
            && persistent
            && routes
                .iter()
                .any(|n| self.queues.get(n).is_some_and(|q| q.durable));
        if refused {
            // The broker refuses (nacks) what it would have to store while the store fails.
            if let Some(seq) = seq
                && let Some((_, pending)) =
                    self.chan(conn, channel).and_then(|c| c.confirm.as_mut())
            {
                pending.insert(seq, (key, Outcome::Nack));
            }
            return Ok(());
        }
        let mut rejected = false;
        let mut stored = false;
        let batch = self.next_batch;
        for name in &routes {
            let Some(q) = self.queues.get_mut(name) else {
                continue;
            };
            if q.max_length.is_some_and(|max| q.ready.len() as u64 >= max) {
                rejected = true;
                continue;
            }
            let pos = q.next_pos;
            q.next_pos += 1;
            let store = q.durable && persistent;
            let idx = store.then(|| {
                self.stored.push(Stored {
                    queue: name.clone(),
                    inst: q.inst,
                    key,
                    enqueued_in: batch,
                    dequeued_in: None,
                });
                self.stored.len() - 1
            });
            stored |= store;
            q.ready.insert(pos, Copy { key, stored: idx });
        }
        if routes.is_empty() && mandatory {
            self.expect(conn, channel, Exp::Return(key));
        }
        if let Some(seq) = seq {
            let outcome = if rejected {
                Outcome::Nack
            } else if stored {
                Outcome::Ack(Some(batch))
            } else {
                Outcome::Ack(None)
            };
            if let Some((_, pending)) = self.chan(conn, channel).and_then(|c| c.confirm.as_mut()) {
                pending.insert(seq, (key, outcome));
            }
        }
        Ok(())
    }

    fn method(&mut self, conn: ConnId, channel: u16, method: &Method) -> Check {
        match method {
            Method::ExchangeDeclare(m) => {
                let kind = match m.kind.as_str() {
                    "fanout" => Kind::Fanout,
                    "topic" => Kind::Topic,
                    _ => Kind::Direct,
                };
                self.exchanges.entry(m.exchange.clone()).or_insert(kind);
                self.expect(conn, channel, Exp::Method("exchange.declare-ok"));
            }
            Method::QueueDeclare(m) => {
                if !self.queues.contains_key(&m.queue) {
                    self.next_inst += 1;
                    let inst = self.next_inst;
                    if m.durable {
                        self.instances.insert(
                            inst,
                            Instance {
                                declared_in: self.next_batch,
                                deleted_in: None,
                            },
                        );
                    }
                    self.queues.insert(
                        m.queue.clone(),
                        MQueue {
                            inst,
                            durable: m.durable,
                            arg_max_length: max_length_of(&m.arguments),
                            max_length: LimitPolicy::limit(
                                self.limit_policy.as_ref(),
                                &m.queue,
                                max_length_of(&m.arguments),
                            ),
                            bindings: BTreeSet::new(),
                            ready: BTreeMap::new(),
                            next_pos: 1,
                            consumers: BTreeSet::new(),
                        },
                    );
                }
                self.expect(conn, channel, Exp::Method("queue.declare-ok"));
            }
            Method::QueueBind(m) => {
                if !self.exchanges.contains_key(&m.exchange) {
                    return self.channel_error(conn, channel, 404);
                }
                let Some(q) = self.queues.get_mut(&m.queue) else {
                    return self.channel_error(conn, channel, 404);
                };
                q.bindings
                    .insert((m.exchange.clone(), m.routing_key.clone()));
                self.expect(conn, channel, Exp::Method("queue.bind-ok"));
            }
            Method::ConfirmSelect(_) => {
                if let Some(ch) = self.chan(conn, channel) {
                    if ch.confirm.is_none() {
                        ch.confirm = Some((1, BTreeMap::new()));
                    }
                }
                self.expect(conn, channel, Exp::Method("confirm.select-ok"));
            }
            Method::BasicQos(m) => {
                if let Some(ch) = self.chan(conn, channel) {
                    if m.global {
                        ch.channel_prefetch = m.prefetch_count;
                    } else {
                        ch.consumer_prefetch = m.prefetch_count;
                    }
                }
                self.expect(conn, channel, Exp::Method("basic.qos-ok"));
            }
            Method::BasicConsume(m) => {
                let Some(q) = self.queues.get_mut(&m.queue) else {
                    return self.channel_error(conn, channel, 404);
                };
                q.consumers.insert((conn, channel, m.consumer_tag.clone()));
                if let Some(ch) = self.chan(conn, channel) {
                    let prefetch = ch.consumer_prefetch;
                    ch.consumers.insert(
                        m.consumer_tag.clone(),
                        MConsumer {
                            queue: m.queue.clone(),
                            prefetch,
                            unacked: 0,
                        },
                    );
                }
                self.expect(conn, channel, Exp::Method("basic.consume-ok"));
            }
            Method::BasicCancel(m) => {
                let removed = self.chan(conn, channel).and_then(|ch| {
                    let c = ch.consumers.remove(&m.consumer_tag)?;
                    for u in ch.unacked.values_mut() {
                        if u.consumer.as_deref() == Some(&m.consumer_tag) {
                            u.consumer = None;
                        }
                    }
                    Some(c)
                });
                if let Some(c) = removed {
                    if let Some(q) = self.queues.get_mut(&c.queue) {
                        q.consumers.remove(&(conn, channel, m.consumer_tag.clone()));
                    }
                }
                self.expect(conn, channel, Exp::Method("basic.cancel-ok"));
            }
            Method::BasicGet(m) => return self.get(conn, channel, &m.queue),
            Method::BasicAck(m) => {
                return self.settle(conn, channel, m.delivery_tag, m.multiple, Settle::Ack);
            }
            Method::BasicNack(m) => {
                let how = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                return self.settle(conn, channel, m.delivery_tag, m.multiple, how);
            }
            Method::BasicReject(m) => {
                let how = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                return self.settle(conn, channel, m.delivery_tag, false, how);
            }
            Method::QueuePurge(m) => {
                let Some(q) = self.queues.get_mut(&m.queue) else {
                    return self.channel_error(conn, channel, 404);
                };
                let inst = q.inst;
                let purged: Vec<Copy> = std::mem::take(&mut q.ready).into_values().collect();
                for c in &purged {
                    self.release(&m.queue, inst, c);
                }
                self.expect(conn, channel, Exp::PurgeOk(purged.len() as u32));
            }
            Method::QueueDelete(m) => {
                let Some(q) = self.queues.remove(&m.queue) else {
                    self.expect(conn, channel, Exp::DeleteOk(0));
                    return Ok(());
                };
                self.expect(conn, channel, Exp::DeleteOk(q.ready.len() as u32));
                if let Some(i) = self.instances.get_mut(&q.inst) {
                    i.deleted_in = Some(self.next_batch);
                }
                for (c, ch, tag) in q.consumers {
                    let Some(chan) = self.chan(c, ch) else {
                        continue;
                    };
                    chan.consumers.remove(&tag);
                    for u in chan.unacked.values_mut() {
                        if u.consumer.as_deref() == Some(tag.as_str()) {
                            u.consumer = None;
                        }
                    }
                    self.expect(c, ch, Exp::Cancel(tag));
                }
            }
            other => {
                return fail(format!(
                    "the workload sent {} which the model does not know",
                    other.name()
                ));
            }
        }
        Ok(())
    }

    fn get(&mut self, conn: ConnId, channel: u16, queue: &str) -> Check {
        let Some(q) = self.queues.get(queue) else {
            return self.channel_error(conn, channel, 404);
        };
        let Some((&pos, copy)) = q.ready.first_key_value() else {
            self.expect(conn, channel, Exp::GetEmpty);
            return Ok(());
        };
        if self.held(copy) {
            self.stats.held_gets += 1;
            self.expect(conn, channel, Exp::GetHeld(queue.to_string()));
            return Ok(());
        }
        if self.deliver_after_sync && copy.stored.is_some() {
            self.stats.synced_deliveries += 1;
        }
        if let Some((key, tag, redelivered)) = self.take_for_get(conn, channel, queue, pos) {
            self.expect(
                conn,
                channel,
                Exp::GetOk {
                    key,
                    tag,
                    redelivered,
                },
            );
        }
        Ok(())
    }

    /// Takes the copy at `pos` of `queue` for a `basic.get` on the channel: its key, the
    /// delivery tag and whether it must be flagged redelivered.
    fn take_for_get(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: &str,
        pos: u64,
    ) -> Option<(MsgKey, u64, bool)> {
        let q = self.queues.get_mut(queue)?;
        let inst = q.inst;
        let copy = q.ready.remove(&pos)?;
        let redelivered = self.delivered.contains(&(queue.to_string(), copy.key));
        let ch = self.chan(conn, channel)?;
        let tag = ch.next_tag;
        ch.next_tag += 1;
        let key = copy.key;
        ch.unacked.insert(
            tag,
            MUnacked {
                queue: queue.to_string(),
                inst,
                pos,
                copy,
                consumer: None,
                from_consumer: false,
            },
        );
        self.delivered.insert((queue.to_string(), key));
        self.note(
            key,
            format!("got from {queue} by conn {conn} ch {channel} tag {tag}"),
        );
        self.stats.deliveries += 1;
        Some((key, tag, redelivered))
    }

    /// A get-ok answering a get the model expected to find the head held: the get waited
    /// for a read, and the batch was synced meanwhile. It must bring the queue's head.
    fn late_get(
        &mut self,
        conn: ConnId,
        channel: u16,
        queue: &str,
        ok: &warren::proto::method::BasicGetOk,
        message: Option<&Arc<Message>>,
    ) -> Check {
        let Some(key) = message.and_then(|m| key_of(m)) else {
            return fail("get-ok without a modelled message");
        };
        let head = self
            .queues
            .get(queue)
            .and_then(|q| q.ready.first_key_value())
            .map(|(&pos, c)| (pos, c.clone()));
        let Some((pos, copy)) = head.filter(|(_, c)| c.key == key) else {
            return fail(format!(
                "basic.get on {queue} brought {}, which is not the queue's head",
                msg_id_text(key)
            ));
        };
        if self.held(&copy) {
            return fail(format!(
                "basic.get on {queue} brought {} before its store batch was synced",
                msg_id_text(key)
            ));
        }
        self.stats.late_gets += 1;
        let Some((_, tag, redelivered)) = self.take_for_get(conn, channel, queue, pos) else {
            return Ok(());
        };
        if ok.delivery_tag != tag || (redelivered && !ok.redelivered) {
            return fail(format!(
                "basic.get on {queue}: {ok:?} where the model expected tag {tag}, redelivered {redelivered}"
            ));
        }
        Ok(())
    }

    fn settle(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> Check {
        let Some(ch) = self.chan(conn, channel) else {
            return Ok(());
        };
        let tags: Vec<u64> = if multiple && tag == 0 {
            ch.unacked.keys().copied().collect()
        } else if multiple {
            if !ch.unacked.contains_key(&tag) {
                return self.channel_error(conn, channel, 406);
            }
            ch.unacked.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            if !ch.unacked.contains_key(&tag) {
                return self.channel_error(conn, channel, 406);
            }
            vec![tag]
        };
        let mut entries = Vec::new();
        for t in tags {
            let Some(u) = ch.unacked.remove(&t) else {
                continue;
            };
            if u.from_consumer {
                ch.consumer_unacked -= 1;
            }
            if let Some(c) = u.consumer.as_ref().and_then(|c| ch.consumers.get_mut(c)) {
                c.unacked -= 1;
            }
            entries.push(u);
        }
        for u in entries {
            match how {
                Settle::Requeue => self.requeue(u),
                Settle::Ack | Settle::Discard => {
                    self.stats.acks += 1;
                    self.note(u.copy.key, format!("settled ({how:?}) from {}", u.queue));
                    self.release(&u.queue, u.inst, &u.copy);
                }
            }
        }
        Ok(())
    }

    // ----- outputs of the broker -----

    /// The broker emitted store batch `batch`.
    pub fn persist(&mut self, batch: u64) -> Check {
        if batch != self.next_batch {
            return fail(format!(
                "store batch {batch} emitted where the model expected batch {}",
                self.next_batch
            ));
        }
        self.next_batch += 1;
        Ok(())
    }

    /// The disk synced every batch up to `batch`; the broker is told next.
    pub fn synced(&mut self, batch: u64) {
        self.synced = self.synced.max(batch);
    }

    /// Checks one drain of the broker's outputs (all of `poll_output` until `None`).
    pub fn outputs(&mut self, outputs: &[Output]) -> Check {
        // Per queue: positions delivered in this drain, for the order check.
        let mut taken: BTreeMap<String, Vec<(u64, MsgKey)>> = BTreeMap::new();
        for output in outputs {
            let Output::Replies { conn, replies } = output else {
                continue;
            };
            for reply in replies {
                self.reply(*conn, reply, &mut taken)?;
            }
        }
        // Dispatch takes from the front of a queue: nothing it skipped may remain ahead.
        for (name, delivered) in taken {
            let Some(q) = self.queues.get(&name) else {
                continue;
            };
            let Some(&(max_pos, max_key)) = delivered.iter().max() else {
                continue;
            };
            if let Some((&pos, c)) = q.ready.iter().next() {
                if pos < max_pos {
                    return fail(format!(
                        "queue {name} out of order: delivered {} (position {max_pos}) while {} (position {pos}, published earlier) was still ready",
                        msg_id_text(max_key),
                        msg_id_text(c.key)
                    ));
                }
            }
        }
        self.conns.retain(|_, c| !c.closed);
        Ok(())
    }

    fn reply(
        &mut self,
        conn: ConnId,
        reply: &Reply,
        taken: &mut BTreeMap<String, Vec<(u64, MsgKey)>>,
    ) -> Check {
        if self.hostile_conns.contains(&conn) {
            return self.hostile_reply(conn, reply);
        }
        let content = reply.content();
        let (channel, method, message) = match (reply, &content) {
            (Reply::LoginOk | Reply::PauseReading(_), _) => return Ok(()),
            (Reply::Disconnect, _) => return fail(format!("connection {conn} refused")),
            (Reply::Method { channel, method }, _) => (*channel, method, None),
            (_, Some((channel, method, message))) => (*channel, method, Some(*message)),
            (other, None) => return fail(format!("a reply of no known kind: {other:?}")),
        };
        if channel == 0 {
            return match method {
                Method::ConnectionOpenOk(_) => Ok(()),
                Method::ConnectionClose(c) => fail(format!(
                    "broker closed connection {conn}: {} {}",
                    c.reply_code, c.reply_text
                )),
                other => fail(format!("unexpected {} on channel 0", other.name())),
            };
        }
        match method {
            Method::BasicDeliver(d) => {
                let Some(message) = message else {
                    return fail("basic.deliver without content");
                };
                return self.deliver(conn, channel, d, message, taken);
            }
            Method::BasicAck(a) => {
                return self.confirm(conn, channel, a.delivery_tag, a.multiple, true);
            }
            Method::BasicNack(n) => {
                return self.confirm(conn, channel, n.delivery_tag, n.multiple, false);
            }
            _ => {}
        }
        let Some(expected) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.expects.get_mut(&channel))
            .and_then(|q| q.pop_front())
        else {
            return fail(format!(
                "broker sent {} on channel {channel} of connection {conn}, which the model did not expect",
                method.name()
            ));
        };
        if let Exp::GetHeld(queue) = &expected {
            return match method {
                Method::BasicGetEmpty(_) => Ok(()),
                Method::BasicGetOk(ok) => self.late_get(conn, channel, &queue.clone(), ok, message),
                _ => fail(format!(
                    "broker sent {method:?} on channel {channel} of connection {conn} where the model expected {expected:?}"
                )),
            };
        }
        let mismatch = || {
            fail(format!(
                "broker sent {method:?} on channel {channel} of connection {conn} where the model expected {expected:?}"
            ))
        };
        match (&expected, method) {
            (Exp::Method(name), m) if m.name() == *name => Ok(()),
            (Exp::Close(code), Method::ChannelClose(c)) if c.reply_code == *code => {
                self.stats.channel_errors += 1;
                Ok(())
            }
            (Exp::GetEmpty, Method::BasicGetEmpty(_)) => Ok(()),
            (Exp::PurgeOk(n), Method::QueuePurgeOk(ok)) if ok.message_count == *n => Ok(()),
            (Exp::DeleteOk(n), Method::QueueDeleteOk(ok)) if ok.message_count == *n => Ok(()),
            (Exp::Cancel(tag), Method::BasicCancel(c)) if c.consumer_tag == *tag => Ok(()),
            (Exp::Return(key), Method::BasicReturn(_))
                if message.and_then(|m| key_of(m)) == Some(*key) =>
            {
                Ok(())
            }
            (
                Exp::GetOk {
                    key,
                    tag,
                    redelivered,
                },
                Method::BasicGetOk(g),
            ) => {
                if message.and_then(|m| key_of(m)) != Some(*key) || g.delivery_tag != *tag {
                    return mismatch();
                }
                if *redelivered && !g.redelivered {
                    return fail(format!(
                        "{} re-delivered by basic.get without the redelivered flag",
                        msg_id_text(*key)
                    ));
                }
                Ok(())
            }
            _ => mismatch(),
        }
    }

    fn deliver(
        &mut self,
        conn: ConnId,
        channel: u16,
        d: &warren::proto::method::BasicDeliver,
        message: &Message,
        taken: &mut BTreeMap<String, Vec<(u64, MsgKey)>>,
    ) -> Check {
        let Some(key) = key_of(message) else {
            return fail(format!(
                "isolation: message {:?}, which no modelled client published, delivered to modelled consumer {}",
                message.properties.message_id, d.consumer_tag
            ));
        };
        let queue = queue_of_tag(&d.consumer_tag);
        let Some(ch) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            return fail(format!(
                "{} delivered on channel {channel} of connection {conn}, which is closed",
                msg_id_text(key)
            ));
        };
        let Some(consumer) = ch.consumers.get(&d.consumer_tag) else {
            return fail(format!(
                "{} delivered to consumer {}, which does not exist",
                msg_id_text(key),
                d.consumer_tag
            ));
        };
        if consumer.queue != queue {
            return fail("consumer tag names the wrong queue");
        }
        if d.delivery_tag != ch.next_tag {
            return fail(format!(
                "delivery tags not strictly increasing on channel {channel}: got {} after {}",
                d.delivery_tag,
                ch.next_tag - 1
            ));
        }
        if consumer.prefetch > 0 && consumer.unacked >= u32::from(consumer.prefetch) {
            return fail(format!(
                "delivery of {} exceeds the prefetch limit {} of consumer {} ({} unacked)",
                msg_id_text(key),
                consumer.prefetch,
                d.consumer_tag,
                consumer.unacked
            ));
        }
        if ch.channel_prefetch > 0 && ch.consumer_unacked >= u32::from(ch.channel_prefetch) {
            return fail(format!(
                "delivery of {} exceeds the channel prefetch limit {} ({} unacked)",
                msg_id_text(key),
                ch.channel_prefetch,
                ch.consumer_unacked
            ));
        }
        let Some(q) = self.queues.get_mut(&queue) else {
            return fail(format!(
                "{} delivered from queue {queue}, which does not exist",
                msg_id_text(key)
            ));
        };
        let Some(pos) = q.ready.iter().find(|(_, c)| c.key == key).map(|(p, _)| *p) else {
            let what = if self.msgs.contains_key(&key) {
                "is not in that queue (acked, purged, lost, or never routed there)"
            } else {
                "was never published"
            };
            return fail(format!(
                "{} delivered from queue {queue} but {what}",
                msg_id_text(key)
            ));
        };
        let copy = q.ready.remove(&pos).expect("found above");
        let inst = q.inst;
        if self.held(&copy) {
            return fail(format!(
                "{} delivered from queue {queue} before its store batch ({}) was synced (synced through {})",
                msg_id_text(key),
                copy.stored.map_or(0, |i| self.stored[i].enqueued_in),
                self.synced
            ));
        }
        if self.deliver_after_sync && copy.stored.is_some() {
            self.stats.synced_deliveries += 1;
        }
        let seen = self.delivered.contains(&(queue.clone(), key));
        if seen && !d.redelivered {
            return fail(format!(
                "{} re-delivered from queue {queue} without the redelivered flag [history: {}]",
                msg_id_text(key),
                self.history_of(key)
            ));
        }
        if d.redelivered {
            self.stats.redeliveries += 1;
        }
        self.delivered.insert((queue.clone(), key));
        self.note(
            key,
            format!(
                "delivered from {queue} to conn {conn} ch {channel} tag {} redelivered={}",
                d.delivery_tag, d.redelivered
            ),
        );
        self.stats.deliveries += 1;
        taken.entry(queue.clone()).or_default().push((pos, key));
        let Some(ch) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            return Ok(());
        };
        ch.next_tag += 1;
        ch.consumer_unacked += 1;
        if let Some(c) = ch.consumers.get_mut(&d.consumer_tag) {
            c.unacked += 1;
        }
        ch.unacked.insert(
            d.delivery_tag,
            MUnacked {
                queue,
                inst,
                pos,
                copy,
                consumer: Some(d.consumer_tag.clone()),
                from_consumer: true,
            },
        );
        Ok(())
    }

    fn confirm(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: u64,
        multiple: bool,
        ack: bool,
    ) -> Check {
        let synced = self.synced;
        let Some((_, pending)) = self
            .conns
            .get_mut(&conn)
            .and_then(|c| c.channels.get_mut(&channel))
            .and_then(|c| c.confirm.as_mut())
        else {
            return fail(format!(
                "publisher confirm on channel {channel} of connection {conn}, which is not in confirm mode"
            ));
        };
        let seqs: Vec<u64> = if multiple {
            pending.range(..=tag).map(|(s, _)| *s).collect()
        } else {
            pending
                .contains_key(&tag)
                .then_some(tag)
                .into_iter()
                .collect()
        };
        if seqs.is_empty() || !seqs.contains(&tag) {
            return fail(format!(
                "confirm for sequence number {tag} on channel {channel} of connection {conn}, which is not awaiting one"
            ));
        }
        let mut confirmed = Vec::new();
        for s in seqs {
            let Some((key, outcome)) = pending.remove(&s) else {
                continue;
            };
            match (ack, outcome) {
                (true, Outcome::Ack(None)) => confirmed.push(key),
                (true, Outcome::Ack(Some(batch))) => {
                    if batch > synced {
                        return fail(format!(
                            "{} confirmed before its store batch {batch} was synced (synced up to {synced})",
                            msg_id_text(key)
                        ));
                    }
                    confirmed.push(key);
                }
                (false, Outcome::Nack) => self.stats.nacks += 1,
                (true, Outcome::Nack) => {
                    return fail(format!(
                        "{} acked, but a full queue refused it",
                        msg_id_text(key)
                    ));
                }
                (false, Outcome::Ack(_)) => {
                    return fail(format!(
                        "{} nacked, but every queue took it",
                        msg_id_text(key)
                    ));
                }
            }
        }
        for key in confirmed {
            self.stats.confirms += 1;
            if let Some(m) = self.msgs.get_mut(&key) {
                m.confirmed = true;
            }
        }
        Ok(())
    }

    // ----- cross-checks -----

    /// Compares the model's queues with the broker's after a drain.
    pub fn compare(&self, broker: &Broker) -> Check {
        for (name, q) in &self.queues {
            let Some(bq) = broker.queue("/", name) else {
                return fail(format!(
                    "queue {name} exists in the model but not in the broker"
                ));
            };
            if let Some(m) = bq.messages.ready().find(|m| key_of(&m.message).is_none()) {
                return fail(format!(
                    "isolation: queue {name} holds message {:?}, which no modelled client published (a hostile message in a modelled queue)",
                    m.message.properties.message_id
                ));
            }
            if bq.ready_count() != q.ready.len() as u64 {
                let missing: Vec<String> = q
                    .ready
                    .values()
                    .filter(|c| {
                        !bq.messages
                            .ready()
                            .any(|m| key_of(&m.message) == Some(c.key))
                    })
                    .take(3)
                    .map(|c| self.describe(c.key))
                    .collect();
                return fail(format!(
                    "queue {name}: the broker holds {} ready messages, the model {} (missing from the broker: {missing:?})",
                    bq.ready_count(),
                    q.ready.len()
                ));
            }
        }
        for q in broker.queues() {
            if q.decl.vhost == "/"
                && self.modelled_queue(&q.decl.name)
                && !self.queues.contains_key(&q.decl.name)
            {
                return fail(format!(
                    "queue {} exists in the broker but not in the model",
                    q.decl.name
                ));
            }
        }
        Ok(())
    }

    fn note(&mut self, key: MsgKey, event: String) {
        let now = self.now_ms;
        let h = self.history.entry(key).or_default();
        if h.len() < 40 {
            h.push(format!("{now}ms {event}"));
        }
    }

    /// What happened to a message, for a violation report.
    pub fn history_of(&self, key: MsgKey) -> String {
        self.history
            .get(&key)
            .map(|h| h.join("; "))
            .unwrap_or_default()
    }

    fn describe(&self, key: MsgKey) -> String {
        match self.msgs.get(&key) {
            Some(m) => format!(
                "{}{}{}",
                msg_id_text(key),
                if m.confirmed { " (confirmed)" } else { "" },
                if m.persistent { " (persistent)" } else { "" }
            ),
            None => msg_id_text(key),
        }
    }

    /// The broker crashed with `surviving` of this incarnation's batches on disk, and a
    /// new one reads back `recovered`. Checks that the disk holds exactly the entries the
    /// model predicts, then restarts the model from it.
    pub fn crash(&mut self, surviving: u64, recovered: &Recovered) -> Check {
        self.stats.crashes += 1;
        let s = surviving;
        let alive = |i: &Instance| i.declared_in <= s && i.deleted_in.is_none_or(|d| d > s);
        let predicted: BTreeSet<(String, MsgKey)> = self
            .stored
            .iter()
            .filter(|e| {
                e.enqueued_in <= s
                    && e.dequeued_in.is_none_or(|d| d > s)
                    && self.instances.get(&e.inst).is_some_and(alive)
            })
            .map(|e| (e.queue.clone(), e.key))
            .collect();
        let names: BTreeMap<u64, &str> = recovered
            .queues
            .iter()
            .map(|q| (q.id, q.name.as_str()))
            .collect();
        let mut actual = BTreeSet::new();
        for (queue, e) in recovered.entries() {
            let Some(name) = names.get(&queue) else {
                return fail(format!("recovered an entry of unknown queue id {queue}"));
            };
            if !self.modelled_queue(name) {
                // A hostile client's queue: its entries are not modelled.
                continue;
            }
            let Some(key) = key_of(&e.message) else {
                return fail(format!(
                    "isolation: recovered message {:?} in modelled queue {name}, which no modelled client published",
                    e.message.properties.message_id
                ));
            };
            if !actual.insert((name.to_string(), key)) {
                return fail(format!(
                    "recovered {} twice in queue {name}",
                    msg_id_text(key)
                ));
            }
        }
        self.stats.recovered_entries += actual.len() as u64;
        if let Some((q, key)) = predicted.difference(&actual).next() {
            let confirmed = self.msgs.get(key).is_some_and(|m| m.confirmed);
            return fail(if confirmed {
                format!(
                    "confirmed persistent message {} in durable queue {q} lost in a crash",
                    msg_id_text(*key)
                )
            } else {
                format!(
                    "{} should have been recovered in queue {q} (its batch survived)",
                    msg_id_text(*key)
                )
            });
        }
        if let Some((q, key)) = actual.difference(&predicted).next() {
            return fail(format!(
                "{} came back in queue {q} after a crash, though it was removed (acked or purged) in a synced batch or never stored there",
                msg_id_text(*key)
            ));
        }
        self.restart(recovered);
        Ok(())
    }

    /// End of the liveness phase: everything drained, every confirm sent.
    pub fn drained(&self, broker: &Broker) -> Check {
        for (name, q) in &self.queues {
            if let Some(c) = q.ready.values().next() {
                let consumers: Vec<String> = q
                    .consumers
                    .iter()
                    .map(|(c, ch, t)| {
                        let unacked = self
                            .conns
                            .get(c)
                            .and_then(|x| x.channels.get(ch))
                            .map(|x| (x.unacked.len(), x.consumer_unacked, x.channel_prefetch));
                        format!("{t} on conn {c} ch {ch} (unacked, consumer_unacked, channel prefetch: {unacked:?})")
                    })
                    .collect();
                return fail(format!(
                    "liveness: {} still ready in queue {name} at the end ({} ready in all; consumers: {consumers:?}; history: {})",
                    self.describe(c.key),
                    q.ready.len(),
                    self.history_of(c.key)
                ));
            }
        }
        for (id, c) in &self.conns {
            for (n, ch) in &c.channels {
                if let Some((t, u)) = ch.unacked.iter().next() {
                    return fail(format!(
                        "liveness: {} (tag {t}) still unacked on channel {n} of connection {id}",
                        self.describe(u.copy.key)
                    ));
                }
                if let Some((_, pending)) = &ch.confirm {
                    if let Some((seq, (key, o))) = pending.iter().next() {
                        return fail(format!(
                            "liveness: publish {seq} ({}) on channel {n} of connection {id} never confirmed ({o:?})",
                            msg_id_text(*key)
                        ));
                    }
                }
            }
        }
        for q in broker.queues() {
            if !self.modelled_queue(&q.decl.name) {
                continue;
            }
            if q.ready_count() > 0 || q.messages.unacked > 0 {
                return fail(format!(
                    "liveness: broker queue {} holds {} ready and {} unacked at the end",
                    q.decl.name,
                    q.ready_count(),
                    q.messages.unacked
                ));
            }
        }
        Ok(())
    }

    // ----- hostile traffic -----

    /// A hostile client's command: not modelled, but it must keep to its namespace (a
    /// hostile command that names a modelled queue or exchange is a simulator bug, which
    /// would make the modelled clients' checks meaningless).
    fn hostile_command(&mut self, command: &Command) -> Check {
        let Some(ns) = &self.namespace else {
            return fail("a hostile connection in a run without a hostile namespace");
        };
        let queue = |q: &str| ns.is_queue(q);
        let exchange = |x: &str| ns.is_exchange(x);
        let text = |t: Option<&warren::proto::table::FieldValue>| {
            t.and_then(|v| v.as_str()).map(strip_cr_lf)
        };
        let touched = match command {
            Command::Publish { message, .. } => {
                if key_of(message).is_some()
                    || message
                        .properties
                        .message_id
                        .as_ref()
                        .and_then(ShortStr::as_str)
                        .is_none_or(|id| !is_hostile_id(id))
                {
                    return fail(format!(
                        "simulator: a hostile client published message id {:?}",
                        message.properties.message_id
                    ));
                }
                exchange(&message.exchange) || queue(&message.routing_key)
            }
            Command::Method { method, .. } => match method {
                Method::QueueDeclare(m) => {
                    let dlx = text(m.arguments.get("x-dead-letter-exchange"));
                    let dlrk = text(m.arguments.get("x-dead-letter-routing-key"));
                    queue(&m.queue)
                        || dlx.is_some_and(|x| exchange(&x))
                        || dlrk.is_some_and(|k| queue(&k))
                }
                Method::QueueBind(m) => queue(&m.queue) || exchange(&m.exchange),
                Method::QueueUnbind(m) => queue(&m.queue) || exchange(&m.exchange),
                Method::QueuePurge(m) => queue(&m.queue),
                Method::QueueDelete(m) => queue(&m.queue),
                Method::BasicConsume(m) => queue(&m.queue),
                Method::BasicGet(m) => queue(&m.queue),
                Method::ExchangeDeclare(m) => {
                    let ae = text(m.arguments.get("alternate-exchange"));
                    exchange(&m.exchange) || ae.is_some_and(|x| exchange(&x))
                }
                Method::ExchangeDelete(m) => exchange(&m.exchange),
                Method::ExchangeBind(m) => exchange(&m.source) || exchange(&m.destination),
                Method::ExchangeUnbind(m) => exchange(&m.source) || exchange(&m.destination),
                _ => false,
            },
            _ => false,
        };
        if touched {
            return fail(format!(
                "simulator: a hostile client's command touches the modelled namespace: {command:?}"
            ));
        }
        Ok(())
    }

    /// A reply to a hostile client: not modelled, but no modelled message may reach it,
    /// and the broker must not fail internally.
    fn hostile_reply(&mut self, conn: ConnId, reply: &Reply) -> Check {
        if let Some((_, method, message)) = reply.content() {
            if let Some(key) = key_of(message) {
                return fail(format!(
                    "isolation: {} ({}) of a modelled client sent to hostile connection {conn} [history: {}]",
                    msg_id_text(key),
                    method.name(),
                    self.history_of(key)
                ));
            }
            return Ok(());
        }
        match reply {
            Reply::Method { method, .. } => {
                let close = match method {
                    Method::ConnectionClose(c) => Some((c.reply_code, &c.reply_text)),
                    Method::ChannelClose(c) => Some((c.reply_code, &c.reply_text)),
                    _ => None,
                };
                match close {
                    Some((code, text)) if code == warren::proto::constants::INTERNAL_ERROR => {
                        fail(format!(
                            "broker failed internally on hostile connection {conn}: {code} {text}"
                        ))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    // ----- client side -----

    /// Checks what a client saw on the wire.
    pub fn observed(&mut self, client: usize, o: &Observed) -> Check {
        match o {
            Observed::Delivery {
                channel,
                queue,
                key,
                tag,
                prev_tag,
                redelivered,
                intact,
                consumer_unacked,
            } => {
                if !self.msgs.contains_key(key) {
                    return fail(format!(
                        "client {client} received {}, which was never published",
                        msg_id_text(*key)
                    ));
                }
                if !intact {
                    return fail(format!(
                        "client {client} received {} with a corrupt body or correlation id",
                        msg_id_text(*key)
                    ));
                }
                if tag <= prev_tag {
                    return fail(format!(
                        "client {client} saw delivery tag {tag} after {prev_tag} on channel {channel}"
                    ));
                }
                let copy = (client, queue.clone(), *key);
                self.note(*key, format!("client {client} saw it from {queue} on ch {channel} tag {tag} redelivered={redelivered}"));
                if self.seen_by_clients.contains(&copy) && !redelivered {
                    return fail(format!(
                        "client {client} saw {} from {queue} again without the redelivered flag [history: {}]",
                        msg_id_text(*key),
                        self.history_of(*key)
                    ));
                }
                self.seen_by_clients.insert(copy);
                if let Some((n, prefetch)) = consumer_unacked {
                    if *prefetch > 0 && n > &u32::from(*prefetch) {
                        return fail(format!(
                            "client {client} holds {n} unacked deliveries of one consumer, over its prefetch {prefetch}"
                        ));
                    }
                }
                Ok(())
            }
            Observed::StrayConfirm { tag } => fail(format!(
                "client {client} got a confirm for {tag}, which it was not waiting for"
            )),
            Observed::Unexpected { channel, method } => fail(format!(
                "client {client} got an unexpected {method} on channel {channel}"
            )),
            Observed::ConnectionClosed { code, text } => fail(format!(
                "client {client}'s connection closed by the server: {code} {text}"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    Discard,
}
