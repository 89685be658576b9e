//! A hostile client: speaks real AMQP bytes like the modelled clients, but pipelines
//! whatever its plan draws (declares with hostile arguments, bindings with hostile
//! patterns and tables, publishes with hostile keys and headers, consumes, settles,
//! deletes) in its own namespace, and takes whatever comes back. It checks only protocol
//! sanity and isolation: what it receives decodes, carries one of the hostile message
//! ids (never a modelled one) and no `x-death` count below zero.

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;

use warren::proto::frame::Frame;
use warren::proto::method::*;
use warren::proto::shortstr::ShortStr;
use warren::proto::table::{FieldTable, FieldValue};

use super::plan::{Gen, HostilePlan, Reserved};
use crate::link::{Arrived, ConnectionEvent, Content, Hello, Link, Phase};
use crate::workload::{body_for, correlation_for, parse_msg_id};

mod actions;
mod malformed;
mod probe;

/// The direct reply-to pseudo-queue.
const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// The prefix of the addresses the broker rewrites `reply_to` to.
const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The publishing channel.
const CH_PUB: u16 = 1;
/// The channel for everything else.
const CH_OTHER: u16 = 2;
/// The direct-delivery probe's channel ([`probe`]), which no other action uses.
const CH_PROBE: u16 = 3;
/// Most deliveries it remembers to settle per channel.
const UNACKED_MAX: usize = 256;

/// The prefix of hostile message ids (`h<client>.<n>`), which no modelled id has.
pub const HOSTILE_ID_PREFIX: &str = "h";

/// Whether a `message-id` is in the hostile space.
pub fn is_hostile_id(id: &str) -> bool {
    id.starts_with(HOSTILE_ID_PREFIX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChanState {
    #[default]
    Closed,
    Opening,
    Open,
    Closing,
    /// Closed and opened again in one write, before the close-ok.
    Reopening,
}

#[derive(Debug, Default)]
struct Chan {
    state: ChanState,
    /// Delivery tags received and not yet settled.
    unacked: Vec<u64>,
    consumers: Vec<String>,
    /// Content being assembled.
    partial: Option<Content>,
    /// `tx.select` was sent: acks wait for a `tx.commit`.
    tx: bool,
    /// When the channel's `channel.open` was sent.
    opened_ms: u64,
}

#[derive(Debug)]
struct Session {
    link: Link,
    /// Channels 1 to 3.
    channels: [Chan; 3],
    probe: probe::Probe,
    /// The answer owed to the malformed frame that ended the session, if one was sent.
    malformed: Option<malformed::Owed>,
}

impl Session {
    fn chan(&mut self, channel: u16) -> Option<&mut Chan> {
        self.channels.get_mut(usize::from(channel).checked_sub(1)?)
    }

    fn send(&mut self, channel: u16, method: &Method, now_ms: u64) {
        self.link.send(channel, method, now_ms);
    }

    fn open(&self, channel: u16) -> bool {
        self.channels
            .get(usize::from(channel).saturating_sub(1))
            .is_some_and(|c| c.state == ChanState::Open)
    }
}

/// What a hostile client did and saw, for the closing report.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostileStats {
    /// Messages published.
    pub published: u64,
    /// Methods other than publishes sent.
    pub methods: u64,
    /// Deliveries and gets received.
    pub received: u64,
    /// Channels the broker closed.
    pub channel_closes: u64,
    /// Connections the broker closed.
    pub connection_closes: u64,
    /// Direct replies received (deliveries routed to an `amq.rabbitmq.reply-to.…` address).
    pub direct_replies: u64,
    /// Messages got with `basic.get`.
    pub gets: u64,
    /// Messages published with an `expiration` of 0 that reached a consumer (allowed in
    /// the millisecond they arrive; a `basic.get` must never return one).
    pub ttl_zero_delivered: u64,
    /// Messages the direct-delivery probe published.
    pub probes: u64,
    /// Probe messages that arrived.
    pub probes_delivered: u64,
    /// Malformed frames sent, each ending its session ([`malformed`]).
    pub malformed: u64,
    /// Malformed frames answered by a close naming them, with RabbitMQ's code.
    pub malformed_answered: u64,
}

/// A hostile client.
#[derive(Debug)]
pub struct HostileClient {
    /// Index among all clients of the run.
    pub id: usize,
    g: Gen,
    reserved: Reserved,
    session: Option<Session>,
    /// Its queues, as it declared them (server-named ones as a passive declare of the
    /// broker's name), so that it can declare them again before using them: names go
    /// stale as queues expire, auto-delete or die with their connection.
    queues: Vec<QueueDeclare>,
    /// Its exchanges, as it declared them.
    exchanges: Vec<ExchangeDeclare>,
    next_msg: u64,
    next_tag: u64,
    /// Direct reply-to addresses seen in the `reply_to` of what it received: it publishes
    /// replies to them, and to forged variants of them.
    reply_addresses: Vec<String>,
    /// Whether it runs the direct-delivery probe ([`probe`]).
    probe_on: bool,
    /// Counters.
    pub stats: HostileStats,
}

impl HostileClient {
    /// A hostile client following `plan`, kept out of the `reserved` names; `probe_on`:
    /// it also runs the direct-delivery probe ([`probe`]).
    pub fn new(
        id: usize,
        plan: HostilePlan,
        rng: SmallRng,
        reserved: Reserved,
        probe_on: bool,
    ) -> Self {
        HostileClient {
            id,
            g: Gen::new(id, plan, rng),
            reserved,
            session: None,
            queues: Vec::new(),
            exchanges: Vec::new(),
            next_msg: 1,
            next_tag: 1,
            reply_addresses: Vec::new(),
            probe_on,
            stats: HostileStats::default(),
        }
    }

    /// The plan.
    pub fn plan(&self) -> &HostilePlan {
        &self.g.plan
    }

    /// Whether a session is in progress.
    pub fn connected(&self) -> bool {
        self.session.is_some()
    }

    /// Whether the session finished its closing handshake.
    pub fn done(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.link.phase() == Phase::Done)
    }

    /// Starts a session on a fresh socket.
    pub fn connect(&mut self, now_ms: u64) {
        self.session = Some(Session {
            link: Link::new(now_ms),
            channels: Default::default(),
            probe: probe::Probe::default(),
            malformed: None,
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

    /// Bytes from the socket. An error is a broken guarantee: a stream that does not
    /// decode, a modelled message in a hostile queue, an `x-death` count that overflowed.
    pub fn handle_bytes(&mut self, data: &[u8], now_ms: u64) -> Result<(), String> {
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
                Err(e) => return Err(format!("hostile client {}: {e}", self.id)),
            };
            self.handle_frame(frame, now_ms)?;
        }
    }

    fn handle_frame(&mut self, frame: Frame, now_ms: u64) -> Result<(), String> {
        let id = self.id;
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        match frame {
            Frame::Heartbeat { .. } => Ok(()),
            Frame::Method { channel: 0, method } => self.connection_method(method, now_ms),
            Frame::Method { channel, method } => {
                if method.has_content() {
                    if let Some(ch) = s.chan(channel) {
                        ch.partial = Some(Content::start(method));
                    }
                    return Ok(());
                }
                self.channel_method(channel, method, now_ms);
                Ok(())
            }
            Frame::Header { channel, header } => {
                let mut none = None;
                let slot = s.chan(channel).map_or(&mut none, |c| &mut c.partial);
                match Content::header(slot, header.properties, header.body_size) {
                    Ok(Some(arrived)) => self.content(channel, arrived),
                    Ok(None) => Ok(()),
                    Err(e) => Err(format!("hostile client {id}: {e}")),
                }
            }
            Frame::Body { channel, payload } => {
                let mut none = None;
                let slot = s.chan(channel).map_or(&mut none, |c| &mut c.partial);
                match Content::body(slot, &payload) {
                    Ok(Some(arrived)) => self.content(channel, arrived),
                    Ok(None) => Ok(()),
                    Err(e) => Err(format!("hostile client {id}: {e}")),
                }
            }
        }
    }

    /// A message that arrived whole on `channel`.
    fn content(&mut self, channel: u16, arrived: Arrived) -> Result<(), String> {
        let id = self.id;
        let Some(ch) = self.session.as_mut().and_then(|s| s.chan(channel)) else {
            return Ok(());
        };
        let Arrived {
            method,
            properties: props,
            body,
        } = arrived;
        let what = method.name();
        let Some(msg_id) = props.message_id.as_ref().and_then(ShortStr::as_str) else {
            return Err(format!(
                "hostile client {id} got a {what} without a message id"
            ));
        };
        if !is_hostile_id(msg_id) {
            let kind = if parse_msg_id(msg_id).is_some() {
                "modelled message"
            } else {
                "message never published"
            };
            return Err(format!(
                "isolation: hostile client {id} got a {what} of {kind} {msg_id} (a modelled message reached a hostile queue)"
            ));
        }
        if body[..] != body_for(hostile_key(msg_id), body.len())[..] {
            return Err(format!(
                "hostile client {id} got {msg_id} with a corrupt body"
            ));
        }
        let sent = correlation_for(hostile_key(msg_id));
        if props.correlation_id != sent {
            return Err(format!(
                "hostile client {id} got {msg_id} with correlation id {:?}, sent as {sent:?}",
                props.correlation_id
            ));
        }
        check_x_death(props.headers.as_ref())
            .map_err(|e| format!("hostile client {id} got {msg_id} ({what}): {e}"))?;
        if let Some(to) = props.reply_to.as_ref().and_then(ShortStr::as_str) {
            if to.starts_with(REPLY_TO_PREFIX) {
                remember(
                    &mut self.reply_addresses,
                    to.to_string(),
                    4,
                    &mut self.g.rng,
                );
            } else if to == REPLY_TO {
                return Err(format!(
                    "hostile client {id} got {msg_id} with reply_to still {REPLY_TO} (not rewritten)"
                ));
            }
        }
        if let Method::BasicDeliver(d) = &method {
            if d.routing_key.starts_with(REPLY_TO_PREFIX) {
                self.stats.direct_replies += 1;
            }
        }
        // A message still carrying its `expiration` was not dead-lettered (that removes
        // it): it came to this queue with a TTL of 0, so it expired the moment it arrived.
        // RabbitMQ delivers it only to a consumer ready then; a get never finds it.
        if props
            .expiration
            .as_ref()
            .is_some_and(|e| is_zero(e.as_bytes()))
        {
            match &method {
                Method::BasicGetOk(_) => {
                    return Err(format!(
                        "hostile client {id} got {msg_id} by basic.get, published with a TTL of 0"
                    ));
                }
                Method::BasicDeliver(_) => self.stats.ttl_zero_delivered += 1,
                _ => {}
            }
        }
        if let Method::BasicGetOk(_) = &method {
            self.stats.gets += 1;
        }
        if channel == CH_PROBE {
            // Its consumer acks nothing: nothing to settle.
            let msg_id = msg_id.to_string();
            self.probe_delivered(&msg_id);
            return Ok(());
        }
        let tag = match method {
            Method::BasicDeliver(d) => Some(d.delivery_tag),
            Method::BasicGetOk(g) => Some(g.delivery_tag),
            _ => None,
        };
        if let Some(tag) = tag {
            self.stats.received += 1;
            if ch.unacked.len() < UNACKED_MAX {
                ch.unacked.push(tag);
            }
        }
        Ok(())
    }

    fn connection_method(&mut self, method: Method, now_ms: u64) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        let hello = Hello {
            client_properties: FieldTable::new(),
            frame_max: 131_072,
            channel_max: 8,
        };
        match s.link.connection_method(method, &hello, now_ms) {
            ConnectionEvent::Opened => {
                self.open_channels(now_ms);
                self.probe_setup(now_ms);
            }
            ConnectionEvent::Closed {
                code,
                text,
                failing,
            } => {
                self.stats.connection_closes += 1;
                return self.malformed_closed(code, &text, failing);
            }
            // Blocked, unblocked, and anything else: hostile clients take what comes.
            ConnectionEvent::Step | ConnectionEvent::Other(_) => {}
        }
        Ok(())
    }

    fn channel_method(&mut self, channel: u16, method: Method, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut reply = None;
        if let Some(ch) = s.chan(channel) {
            match method {
                Method::ChannelOpenOk(_) if ch.state == ChanState::Opening => {
                    ch.state = ChanState::Open;
                }
                Method::ChannelClose(_) => {
                    *ch = Chan::default();
                    self.stats.channel_closes += 1;
                    reply = Some(Method::ChannelCloseOk(ChannelCloseOk {}));
                }
                Method::ChannelCloseOk(_) => {
                    let reopening = ch.state == ChanState::Reopening;
                    *ch = Chan::default();
                    if reopening {
                        ch.state = ChanState::Opening;
                        ch.opened_ms = now_ms;
                    }
                }
                Method::BasicCancel(c) => ch.consumers.retain(|t| *t != c.consumer_tag),
                Method::BasicConsumeOk(ok) if !ch.consumers.contains(&ok.consumer_tag) => {
                    ch.consumers.push(ok.consumer_tag);
                }
                // The probe's queue is not one its actions may use.
                Method::QueueDeclareOk(ok)
                    if channel != CH_PROBE && !self.queues.iter().any(|q| q.queue == ok.queue) =>
                {
                    let m = QueueDeclare {
                        queue: ok.queue,
                        passive: true,
                        ..Default::default()
                    };
                    remember(&mut self.queues, m, self.g.plan.names_max, &mut self.g.rng);
                }
                _ => {}
            }
        }
        if let Some(m) = reply {
            s.send(channel, &m, now_ms);
        }
    }

    fn open_channels(&mut self, now_ms: u64) {
        let confirm = self.g.plan.confirm;
        let Some(s) = self.session.as_mut() else {
            return;
        };
        for channel in [CH_PUB, CH_OTHER] {
            let closed = s
                .chan(channel)
                .is_some_and(|c| c.state == ChanState::Closed);
            if !closed {
                continue;
            }
            s.send(
                channel,
                &Method::ChannelOpen(ChannelOpen::default()),
                now_ms,
            );
            if channel == CH_PUB && confirm {
                s.send(
                    channel,
                    &Method::ConfirmSelect(ConfirmSelect { nowait: false }),
                    now_ms,
                );
            }
            if let Some(ch) = s.chan(channel) {
                ch.state = ChanState::Opening;
                ch.opened_ms = now_ms;
            }
        }
    }
}

/// Keeps at most `max` names: past it a random one makes room.
fn remember<T>(names: &mut Vec<T>, name: T, max: usize, rng: &mut SmallRng) {
    if names.len() >= max.max(1) {
        let i = rng.gen_range(0..names.len());
        names[i] = name;
    } else {
        names.push(name);
    }
}

/// Whether an `expiration` is a TTL of 0: one zero or more.
fn is_zero(text: &[u8]) -> bool {
    !text.is_empty() && text.iter().all(|&b| b == b'0')
}

/// The body seed of a hostile message id.
fn hostile_key(msg_id: &str) -> u64 {
    // FNV-1a: ids are unique per run, and bodies only need to be checkable.
    msg_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Client-supplied `x-death` counts are never negative, so a negative one was made by the
/// broker: a count that overflowed.
fn check_x_death(headers: Option<&FieldTable>) -> Result<(), String> {
    let Some(FieldValue::Array(deaths)) = headers.and_then(|h| h.get("x-death")) else {
        return Ok(());
    };
    for d in deaths {
        if let FieldValue::Table(t) = d
            && let Some(count) = t.get("count").and_then(FieldValue::as_i64)
            && count < 0
        {
            return Err(format!("an x-death count of {count} (overflowed)"));
        }
    }
    Ok(())
}
