//! A simulated AMQP client speaking real bytes through warren's codec: handshake, three
//! channels (publishing, consuming, and one for gets, purges, deletes and bad acks),
//! confirms, consumers and acks. It is sans-IO like the server side: bytes in, bytes out,
//! and an action per tick chosen by the workload generator.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;

use warren::proto::frame::Frame;
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::shortstr::ShortStr;
use warren::proto::table::{FieldTable, FieldValue};

use crate::link::{Arrived, ConnectionEvent, Content, Hello, Link};
use crate::workload::{
    ClientPlan, MsgKey, Spec, body_for, correlation_for, msg_id_text, msg_key, parse_msg_id,
};

/// The publishing channel.
pub const CH_PUB: u16 = 1;
/// The consuming channel.
pub const CH_CONSUME: u16 = 2;
/// The channel for gets, purges, deletes and bad acks.
pub const CH_MISC: u16 = 3;

/// What the client saw, for the client-side checks.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// A `basic.deliver` or `basic.get-ok`.
    Delivery {
        /// Channel.
        channel: u16,
        /// Queue it came from (known from the consumer tag or the get).
        queue: String,
        /// Message key.
        key: MsgKey,
        /// Tag.
        tag: u64,
        /// The previous tag seen on this channel (0 for none).
        prev_tag: u64,
        /// The redelivered flag.
        redelivered: bool,
        /// Whether the body matched the one published.
        intact: bool,
        /// Unacked deliveries of this consumer including this one, and its prefetch.
        consumer_unacked: Option<(u32, u16)>,
    },
    /// A publisher confirm for a sequence number the client was not waiting for.
    StrayConfirm {
        /// The tag.
        tag: u64,
    },
    /// A method the client did not expect on a channel.
    Unexpected {
        /// Channel.
        channel: u16,
        /// The method's name.
        method: &'static str,
    },
    /// The server closed the connection.
    ConnectionClosed {
        /// Reply code.
        code: u16,
        /// Reply text.
        text: String,
    },
}

/// A reply the client waits for on a channel, in order.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    OpenOk,
    Sync(&'static str),
    ConsumeOk(String),
    Get(String),
    CloseOk,
}

#[derive(Debug, Default)]
struct Chan {
    open: bool,
    expects: VecDeque<Expect>,
    /// Consumer tag → queue name, with unacked count.
    consumers: BTreeMap<String, (String, u32)>,
    prefetch: u16,
    /// Deliveries not yet settled: tag → (key, queue, consumer tag).
    unacked: BTreeMap<u64, (MsgKey, String, Option<String>)>,
    last_tag: u64,
    confirm: bool,
    next_seq: u64,
    unconfirmed: BTreeMap<u64, MsgKey>,
    /// Content being assembled.
    partial: Option<Content>,
}

impl Chan {
    fn ready(&self) -> bool {
        self.open && self.expects.is_empty()
    }
}

/// One connection of a client.
#[derive(Debug)]
struct Session {
    link: Link,
    channels: BTreeMap<u16, Chan>,
}

/// A simulated client: its plan, its generator and its current session.
#[derive(Debug)]
pub struct Client {
    /// Index in the spec.
    pub id: usize,
    plan: ClientPlan,
    rng: SmallRng,
    session: Option<Session>,
    next_msg: u64,
    next_ctag: u64,
    /// Published messages (for statistics).
    pub published: u64,
    /// Deliveries seen.
    pub delivered: u64,
}

/// The phase of the run, which changes what clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPhase {
    /// Faults and the full workload.
    Safety,
    /// No faults, no publishing: consume and ack everything.
    Liveness,
}

impl Client {
    /// A client following `plan`.
    pub fn new(id: usize, plan: ClientPlan, rng: SmallRng) -> Self {
        Client {
            id,
            plan,
            rng,
            session: None,
            next_msg: 1,
            next_ctag: 1,
            published: 0,
            delivered: 0,
        }
    }

    /// Whether a session is in progress.
    pub fn connected(&self) -> bool {
        self.session.is_some()
    }

    /// Whether the session finished its closing handshake and the socket can go.
    pub fn done(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.link.phase() == crate::link::Phase::Done)
    }

    /// Starts a session on a fresh socket: sends the protocol header.
    pub fn connect(&mut self, now_ms: u64) {
        self.session = Some(Session {
            link: Link::new(now_ms),
            channels: BTreeMap::new(),
        });
    }

    /// The socket is gone.
    pub fn disconnected(&mut self) {
        self.session = None;
    }

    /// Bytes to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.session.as_mut()?.link.poll_transmit()
    }

    /// Bytes from the socket. Returns what the checks need to see, or an error when the
    /// stream cannot be decoded (a broken server).
    pub fn handle_bytes(
        &mut self,
        data: &[u8],
        now_ms: u64,
        spec: &Spec,
        out: &mut Vec<Observed>,
    ) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        s.link.receive(data);
        loop {
            let Some(s) = self.session.as_mut() else {
                return Ok(());
            };
            let frame = match s.link.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("client {}: {e}", self.id)),
            };
            self.handle_frame(frame, now_ms, spec, out)?;
        }
    }

    fn handle_frame(
        &mut self,
        frame: Frame,
        now_ms: u64,
        spec: &Spec,
        out: &mut Vec<Observed>,
    ) -> Result<(), String> {
        let id = self.id;
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        match frame {
            Frame::Heartbeat { .. } => Ok(()),
            Frame::Method { channel: 0, method } => {
                self.connection_method(method, now_ms, spec, out);
                Ok(())
            }
            Frame::Method { channel, method } => {
                if method.has_content() {
                    let ch = s.channels.entry(channel).or_default();
                    ch.partial = Some(Content::start(method));
                    return Ok(());
                }
                self.channel_method(channel, method, now_ms, out);
                Ok(())
            }
            Frame::Header { channel, header } => {
                let ch = s.channels.entry(channel).or_default();
                match Content::header(&mut ch.partial, header.properties, header.body_size) {
                    Ok(Some(arrived)) => self.content(channel, arrived, out),
                    Ok(None) => Ok(()),
                    Err(e) => Err(format!("client {id}: {e}")),
                }
            }
            Frame::Body { channel, payload } => {
                let ch = s.channels.entry(channel).or_default();
                match Content::body(&mut ch.partial, &payload) {
                    Ok(Some(arrived)) => self.content(channel, arrived, out),
                    Ok(None) => Ok(()),
                    Err(e) => Err(format!("client {id}: {e}")),
                }
            }
        }
    }

    /// A message that arrived whole on `channel`.
    fn content(
        &mut self,
        channel: u16,
        arrived: Arrived,
        out: &mut Vec<Observed>,
    ) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let ch = s.channels.entry(channel).or_default();
        let Arrived {
            method,
            properties: props,
            body,
        } = arrived;
        let key = props
            .message_id
            .as_ref()
            .and_then(ShortStr::as_str)
            .and_then(parse_msg_id);
        let Some(key) = key else {
            return Err(match props.message_id {
                Some(id) => format!(
                    "isolation: client {} received {id}, which no modelled client published (a hostile message reached a modelled queue)",
                    self.id
                ),
                None => format!("client {}: content without a message id", self.id),
            });
        };
        // The body and the correlation id (bytes, most not UTF-8) as published.
        let intact =
            body_for(key, body.len()) == body[..] && props.correlation_id == correlation_for(key);
        match method {
            Method::BasicDeliver(d) => {
                let queue = ch.consumers.get(&d.consumer_tag).map(|(q, _)| q.clone());
                let Some(queue) = queue else {
                    // A delivery racing our own cancel: still ours to settle.
                    let queue = queue_of_tag(&d.consumer_tag);
                    ch.unacked
                        .insert(d.delivery_tag, (key, queue.clone(), None));
                    self.delivered += 1;
                    out.push(Observed::Delivery {
                        channel,
                        queue,
                        key,
                        tag: d.delivery_tag,
                        prev_tag: ch.last_tag,
                        redelivered: d.redelivered,
                        intact,
                        consumer_unacked: None,
                    });
                    ch.last_tag = d.delivery_tag;
                    return Ok(());
                };
                let prefetch = ch.prefetch;
                let entry = ch.consumers.get_mut(&d.consumer_tag);
                let counted = entry.map(|(_, n)| {
                    *n += 1;
                    (*n, prefetch)
                });
                ch.unacked.insert(
                    d.delivery_tag,
                    (key, queue.clone(), Some(d.consumer_tag.clone())),
                );
                let prev_tag = std::mem::replace(&mut ch.last_tag, d.delivery_tag);
                self.delivered += 1;
                out.push(Observed::Delivery {
                    channel,
                    queue,
                    key,
                    tag: d.delivery_tag,
                    prev_tag,
                    redelivered: d.redelivered,
                    intact,
                    consumer_unacked: counted,
                });
            }
            Method::BasicGetOk(g) => {
                let queue = match ch.expects.pop_front() {
                    Some(Expect::Get(q)) => q,
                    other => {
                        return Err(format!(
                            "client {}: get-ok while expecting {other:?}",
                            self.id
                        ));
                    }
                };
                ch.unacked
                    .insert(g.delivery_tag, (key, queue.clone(), None));
                let prev_tag = std::mem::replace(&mut ch.last_tag, g.delivery_tag);
                self.delivered += 1;
                out.push(Observed::Delivery {
                    channel,
                    queue,
                    key,
                    tag: g.delivery_tag,
                    prev_tag,
                    redelivered: g.redelivered,
                    intact,
                    consumer_unacked: None,
                });
            }
            Method::BasicReturn(_) => {}
            other => {
                out.push(Observed::Unexpected {
                    channel,
                    method: other.name(),
                });
            }
        }
        Ok(())
    }

    fn connection_method(
        &mut self,
        method: Method,
        now_ms: u64,
        spec: &Spec,
        out: &mut Vec<Observed>,
    ) {
        let hello = Hello {
            client_properties: client_properties(),
            frame_max: self.plan.frame_max,
            channel_max: 16,
        };
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match s.link.connection_method(method, &hello, now_ms) {
            ConnectionEvent::Step => {}
            ConnectionEvent::Opened => {
                self.open_channel(CH_PUB, now_ms, spec);
                self.open_channel(CH_CONSUME, now_ms, spec);
                self.open_channel(CH_MISC, now_ms, spec);
            }
            ConnectionEvent::Closed { code, text, .. } => {
                out.push(Observed::ConnectionClosed { code, text });
            }
            ConnectionEvent::Other(other) => out.push(Observed::Unexpected {
                channel: 0,
                method: other.name(),
            }),
        }
    }

    fn channel_method(
        &mut self,
        channel: u16,
        method: Method,
        now_ms: u64,
        out: &mut Vec<Observed>,
    ) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let ch = s.channels.entry(channel).or_default();
        match method {
            Method::ChannelClose(_) => {
                // The broker requeued our unacked deliveries; unconfirmed publishes have
                // an unknown fate.
                *ch = Chan::default();
                send(
                    s,
                    channel,
                    Method::ChannelCloseOk(ChannelCloseOk {}),
                    now_ms,
                );
                return;
            }
            Method::BasicAck(a) => {
                settle_confirms(ch, a.delivery_tag, a.multiple, out);
                return;
            }
            Method::BasicNack(n) => {
                settle_confirms(ch, n.delivery_tag, n.multiple, out);
                return;
            }
            Method::BasicCancel(c) => {
                // The queue was deleted: the consumer is gone, its deliveries stay ours.
                if let Some((_, _)) = ch.consumers.remove(&c.consumer_tag) {
                    for (_, (_, _, ctag)) in ch.unacked.iter_mut() {
                        if ctag.as_deref() == Some(&c.consumer_tag) {
                            *ctag = None;
                        }
                    }
                }
                return;
            }
            _ => {}
        }
        let expected = ch.expects.pop_front();
        match (expected, method) {
            (Some(Expect::OpenOk), Method::ChannelOpenOk(_)) => ch.open = true,
            (Some(Expect::CloseOk), Method::ChannelCloseOk(_)) => *ch = Chan::default(),
            (Some(Expect::ConsumeOk(tag)), Method::BasicConsumeOk(ok))
                if ok.consumer_tag == tag => {}
            (Some(Expect::Get(_)), Method::BasicGetEmpty(_)) => {}
            (Some(Expect::Sync(name)), m) if m.name() == name => {
                if let Method::ConfirmSelectOk(_) = m {
                    ch.confirm = true;
                }
            }
            (e, m) => {
                if let Some(e) = e {
                    ch.expects.push_front(e);
                }
                out.push(Observed::Unexpected {
                    channel,
                    method: m.name(),
                });
            }
        }
    }

    /// Opens a channel and sets it up for its role (pipelined).
    fn open_channel(&mut self, channel: u16, now_ms: u64, spec: &Spec) {
        let confirm = self.rng.gen_bool(self.plan.confirm_prob);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut ch = Chan::default();
        send(
            s,
            channel,
            Method::ChannelOpen(ChannelOpen::default()),
            now_ms,
        );
        ch.expects.push_back(Expect::OpenOk);
        s.channels.insert(channel, ch);
        match channel {
            CH_PUB => {
                for (name, kind) in &spec.exchanges {
                    let m = ExchangeDeclare {
                        exchange: name.clone(),
                        kind: kind.as_str().into(),
                        durable: true,
                        ..Default::default()
                    };
                    self.sync(
                        channel,
                        Method::ExchangeDeclare(m),
                        "exchange.declare-ok",
                        now_ms,
                    );
                }
                for q in 0..spec.queues.len() {
                    self.declare_queue(channel, q, now_ms, spec);
                }
                if confirm {
                    let m = Method::ConfirmSelect(ConfirmSelect { nowait: false });
                    self.sync(channel, m, "confirm.select-ok", now_ms);
                }
            }
            CH_CONSUME => {
                let qos = BasicQos {
                    prefetch_size: 0,
                    prefetch_count: self.plan.channel_prefetch,
                    global: true,
                };
                self.sync(channel, Method::BasicQos(qos), "basic.qos-ok", now_ms);
                let qos = BasicQos {
                    prefetch_size: 0,
                    prefetch_count: self.plan.prefetch,
                    global: false,
                };
                self.sync(channel, Method::BasicQos(qos), "basic.qos-ok", now_ms);
                let prefetch = self.plan.prefetch;
                if let Some(ch) = self.chan(channel) {
                    ch.prefetch = prefetch;
                }
                for q in self.plan.consumes.clone() {
                    self.consume(q, now_ms, spec);
                }
            }
            _ => {}
        }
    }

    fn chan(&mut self, channel: u16) -> Option<&mut Chan> {
        self.session.as_mut()?.channels.get_mut(&channel)
    }

    fn sync(&mut self, channel: u16, method: Method, reply: &'static str, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        send(s, channel, method, now_ms);
        if let Some(ch) = s.channels.get_mut(&channel) {
            ch.expects.push_back(Expect::Sync(reply));
        }
    }

    /// Declares a queue with the topology's arguments and binds it.
    fn declare_queue(&mut self, channel: u16, q: usize, now_ms: u64, spec: &Spec) {
        let qs = &spec.queues[q];
        let mut arguments = FieldTable::new();
        if let Some(n) = qs.max_length {
            arguments.insert("x-max-length", FieldValue::I32(n as i32));
            arguments.insert(
                "x-overflow",
                FieldValue::LongStr(Bytes::from_static(b"reject-publish")),
            );
        }
        let m = QueueDeclare {
            queue: qs.name.clone(),
            durable: qs.durable,
            arguments,
            ..Default::default()
        };
        self.sync(channel, Method::QueueDeclare(m), "queue.declare-ok", now_ms);
        for b in spec.bindings.iter().filter(|b| b.queue == q) {
            let m = QueueBind {
                queue: qs.name.clone(),
                exchange: b.exchange.clone(),
                routing_key: b.key.clone(),
                ..Default::default()
            };
            self.sync(channel, Method::QueueBind(m), "queue.bind-ok", now_ms);
        }
    }

    fn consume(&mut self, q: usize, now_ms: u64, spec: &Spec) {
        let name = spec.queues[q].name.clone();
        let tag = format!("c{}-{}@{}", self.id, self.next_ctag, name);
        self.next_ctag += 1;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let m = BasicConsume {
            queue: name.clone(),
            consumer_tag: tag.clone(),
            ..Default::default()
        };
        send(s, CH_CONSUME, Method::BasicConsume(m), now_ms);
        if let Some(ch) = s.channels.get_mut(&CH_CONSUME) {
            ch.expects.push_back(Expect::ConsumeOk(tag.clone()));
            ch.consumers.insert(tag, (name, 0));
        }
    }

    /// One step of the workload.
    pub fn tick(&mut self, now_ms: u64, phase: RunPhase, spec: &Spec) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if !s.link.is_open() {
            return;
        }
        s.link.keep_alive(now_ms);
        // Reopen channels the broker closed.
        for channel in [CH_PUB, CH_CONSUME, CH_MISC] {
            let missing = self.session.as_ref().is_some_and(|s| {
                s.channels
                    .get(&channel)
                    .is_none_or(|c| !c.open && c.expects.is_empty())
            });
            if missing {
                self.open_channel(channel, now_ms, spec);
            }
        }
        match phase {
            RunPhase::Liveness => self.drain_step(now_ms, spec),
            RunPhase::Safety => self.workload_step(now_ms, spec),
        }
    }

    /// Liveness: ack everything, and make sure every planned consumer exists.
    fn drain_step(&mut self, now_ms: u64, spec: &Spec) {
        for channel in [CH_CONSUME, CH_MISC] {
            self.ack_all(channel, now_ms);
        }
        let ready = self.chan(CH_CONSUME).is_some_and(|c| c.ready());
        if ready {
            for q in self.plan.consumes.clone() {
                let name = &spec.queues[q].name;
                let has = self
                    .chan(CH_CONSUME)
                    .is_some_and(|c| c.consumers.values().any(|(n, _)| n == name));
                if !has {
                    // The queue may have been lost in a crash or deleted: declare it first.
                    self.declare_queue(CH_CONSUME, q, now_ms, spec);
                    self.consume(q, now_ms, spec);
                }
            }
        }
    }

    fn workload_step(&mut self, now_ms: u64, spec: &Spec) {
        let roll = self.rng.gen_range(0..1000);
        match roll {
            0..=399 => self.publish_some(now_ms, spec),
            400..=699 => self.settle_some(now_ms),
            700..=779 => self.get(now_ms, spec),
            780..=829 => self.toggle_consumer(now_ms, spec),
            830..=849 => self.bogus_ack(now_ms),
            850..=859 => self.destructive(now_ms, spec),
            860..=869 => self.close_channel(now_ms),
            870..=872 => self.close_connection(now_ms),
            _ => {}
        }
    }

    fn publish_some(&mut self, now_ms: u64, spec: &Spec) {
        if !self.plan.publishes || !self.chan(CH_PUB).is_some_and(|c| c.ready()) {
            return;
        }
        let n = self.rng.gen_range(1..=4);
        for _ in 0..n {
            let (exchange, routing_key) =
                spec.routes[self.rng.gen_range(0..spec.routes.len())].clone();
            let key = msg_key(self.id, self.next_msg);
            self.next_msg += 1;
            let len = self.rng.gen_range(0..=self.plan.body_max_bytes);
            let persistent = self.rng.gen_bool(self.plan.persistent_prob);
            let mandatory = self.rng.gen_bool(self.plan.mandatory_prob);
            let props = BasicProperties {
                delivery_mode: Some(if persistent { 2 } else { 1 }),
                message_id: Some(msg_id_text(key).into()),
                correlation_id: correlation_for(key),
                ..Default::default()
            };
            let body = body_for(key, len);
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let publish = Method::BasicPublish(BasicPublish {
                exchange,
                routing_key,
                mandatory,
                ..Default::default()
            });
            s.link.send_content(CH_PUB, &publish, &props, &body, now_ms);
            if let Some(ch) = s.channels.get_mut(&CH_PUB) {
                if ch.confirm {
                    ch.next_seq += 1;
                    ch.unconfirmed.insert(ch.next_seq, key);
                }
            }
            self.published += 1;
        }
    }

    /// Acks, nacks or rejects some of the unacked deliveries.
    fn settle_some(&mut self, now_ms: u64) {
        let channel = if self.rng.gen_bool(0.8) {
            CH_CONSUME
        } else {
            CH_MISC
        };
        let roll = self.rng.gen_range(0..100);
        let requeue = self.rng.gen_bool(0.5);
        let pick = self.rng.gen_range(0..1000usize);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(ch) = s.channels.get_mut(&channel) else {
            return;
        };
        if !ch.open || ch.unacked.is_empty() {
            return;
        }
        let tags: Vec<u64> = ch.unacked.keys().copied().collect();
        let tag = tags[pick % tags.len()];
        let (method, settled): (Method, Vec<u64>) = match roll {
            0..=59 => (
                Method::BasicAck(BasicAck {
                    delivery_tag: tag,
                    multiple: false,
                }),
                vec![tag],
            ),
            60..=74 => (
                Method::BasicAck(BasicAck {
                    delivery_tag: tag,
                    multiple: true,
                }),
                tags.iter().copied().filter(|t| *t <= tag).collect(),
            ),
            75..=89 => (
                Method::BasicNack(BasicNack {
                    delivery_tag: tag,
                    multiple: roll % 2 == 0,
                    requeue,
                }),
                if roll % 2 == 0 {
                    tags.iter().copied().filter(|t| *t <= tag).collect()
                } else {
                    vec![tag]
                },
            ),
            _ => (
                Method::BasicReject(BasicReject {
                    delivery_tag: tag,
                    requeue,
                }),
                vec![tag],
            ),
        };
        for t in settled {
            if let Some((_, _, Some(ctag))) = ch.unacked.remove(&t) {
                if let Some((_, n)) = ch.consumers.get_mut(&ctag) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        send(s, channel, method, now_ms);
    }

    /// Liveness: acks what arrived at once, as a draining consumer would.
    pub fn ack_received(&mut self, now_ms: u64) {
        if self.session.as_ref().is_some_and(|s| s.link.is_open()) {
            self.ack_all(CH_CONSUME, now_ms);
            self.ack_all(CH_MISC, now_ms);
        }
    }

    fn ack_all(&mut self, channel: u16, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(ch) = s.channels.get_mut(&channel) else {
            return;
        };
        let Some(&last) = ch.unacked.keys().next_back() else {
            return;
        };
        if !ch.open {
            return;
        }
        ch.unacked.clear();
        for (_, n) in ch.consumers.values_mut() {
            *n = 0;
        }
        let m = Method::BasicAck(BasicAck {
            delivery_tag: last,
            multiple: true,
        });
        send(s, channel, m, now_ms);
    }

    fn get(&mut self, now_ms: u64, spec: &Spec) {
        if !self.plan.gets || !self.chan(CH_MISC).is_some_and(|c| c.ready()) {
            return;
        }
        let q = spec.queues[self.rng.gen_range(0..spec.queues.len())]
            .name
            .clone();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let m = BasicGet {
            queue: q.clone(),
            no_ack: false,
            ..Default::default()
        };
        send(s, CH_MISC, Method::BasicGet(m), now_ms);
        if let Some(ch) = s.channels.get_mut(&CH_MISC) {
            ch.expects.push_back(Expect::Get(q));
        }
    }

    fn toggle_consumer(&mut self, now_ms: u64, spec: &Spec) {
        if !self.chan(CH_CONSUME).is_some_and(|c| c.ready()) || self.plan.consumes.is_empty() {
            return;
        }
        let q = self.plan.consumes[self.rng.gen_range(0..self.plan.consumes.len())];
        let name = spec.queues[q].name.clone();
        let existing = self.chan(CH_CONSUME).and_then(|c| {
            c.consumers
                .iter()
                .find(|(_, (n, _))| *n == name)
                .map(|(t, _)| t.clone())
        });
        match existing {
            Some(tag) => {
                let Some(s) = self.session.as_mut() else {
                    return;
                };
                let m = BasicCancel {
                    consumer_tag: tag.clone(),
                    nowait: false,
                };
                send(s, CH_CONSUME, Method::BasicCancel(m), now_ms);
                if let Some(ch) = s.channels.get_mut(&CH_CONSUME) {
                    ch.consumers.remove(&tag);
                    for (_, (_, _, ctag)) in ch.unacked.iter_mut() {
                        if ctag.as_deref() == Some(tag.as_str()) {
                            *ctag = None;
                        }
                    }
                    ch.expects.push_back(Expect::Sync("basic.cancel-ok"));
                }
            }
            None => {
                self.declare_queue(CH_CONSUME, q, now_ms, spec);
                self.consume(q, now_ms, spec);
            }
        }
    }

    fn bogus_ack(&mut self, now_ms: u64) {
        if !self.plan.bogus_acks {
            return;
        }
        let channel = if self.rng.gen_bool(0.5) {
            CH_CONSUME
        } else {
            CH_MISC
        };
        let double = self.rng.gen_bool(0.3);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(ch) = s.channels.get_mut(&channel) else {
            return;
        };
        if !ch.ready() {
            return;
        }
        // A tag never delivered, or (sometimes) one acked twice in a row.
        let tag = match ch.unacked.keys().next().copied() {
            Some(t) if double => {
                if let Some((_, _, Some(ctag))) = ch.unacked.remove(&t) {
                    if let Some((_, n)) = ch.consumers.get_mut(&ctag) {
                        *n = n.saturating_sub(1);
                    }
                }
                let m = Method::BasicAck(BasicAck {
                    delivery_tag: t,
                    multiple: false,
                });
                send(s, channel, m.clone(), now_ms);
                t
            }
            _ => ch.last_tag + 1000,
        };
        let m = Method::BasicAck(BasicAck {
            delivery_tag: tag,
            multiple: false,
        });
        send(s, channel, m, now_ms);
        // The broker closes the channel (406); until its close arrives nothing else goes
        // out on it.
        if let Some(ch) = s.channels.get_mut(&channel) {
            ch.expects.push_back(Expect::Sync("channel.close"));
        }
    }

    fn destructive(&mut self, now_ms: u64, spec: &Spec) {
        if !self.plan.destructive || !self.chan(CH_MISC).is_some_and(|c| c.ready()) {
            return;
        }
        let q = self.rng.gen_range(0..spec.queues.len());
        let name = spec.queues[q].name.clone();
        if self.rng.gen_bool(0.6) {
            let m = QueuePurge {
                queue: name,
                ..Default::default()
            };
            self.sync(CH_MISC, Method::QueuePurge(m), "queue.purge-ok", now_ms);
        } else {
            let m = QueueDelete {
                queue: name,
                ..Default::default()
            };
            self.sync(CH_MISC, Method::QueueDelete(m), "queue.delete-ok", now_ms);
            self.declare_queue(CH_MISC, q, now_ms, spec);
        }
    }

    fn close_channel(&mut self, now_ms: u64) {
        let channel = [CH_PUB, CH_CONSUME, CH_MISC][self.rng.gen_range(0..3)];
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(ch) = s.channels.get_mut(&channel) else {
            return;
        };
        if !ch.ready() {
            return;
        }
        ch.open = false;
        ch.expects.push_back(Expect::CloseOk);
        send(
            s,
            channel,
            Method::ChannelClose(ChannelClose::default()),
            now_ms,
        );
    }

    fn close_connection(&mut self, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.link.close(now_ms);
    }
}

fn send(s: &mut Session, channel: u16, method: Method, now_ms: u64) {
    s.link.send(channel, &method, now_ms);
}

/// What a modelled client tells the broker about itself: the capabilities it relies on.
fn client_properties() -> FieldTable {
    let mut caps = FieldTable::new();
    caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
    caps.insert("publisher_confirms", FieldValue::Bool(true));
    caps.insert("basic.nack", FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    props
}

fn settle_confirms(ch: &mut Chan, tag: u64, multiple: bool, out: &mut Vec<Observed>) {
    if multiple {
        let keep = ch.unconfirmed.split_off(&(tag + 1));
        if ch.unconfirmed.is_empty() {
            out.push(Observed::StrayConfirm { tag });
        }
        ch.unconfirmed = keep;
    } else if ch.unconfirmed.remove(&tag).is_none() {
        out.push(Observed::StrayConfirm { tag });
    }
}

/// The queue a consumer tag names (tags are `c<client>-<n>@<queue>`).
pub fn queue_of_tag(tag: &str) -> String {
    tag.rsplit_once('@')
        .map(|(_, q)| q.to_string())
        .unwrap_or_default()
}
