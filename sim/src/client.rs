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

mod actions;

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
