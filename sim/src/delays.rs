//! A client of the delayed-message exchange, talking to the broker directly (as the
//! operator's session does): it declares a durable `x-delayed-message` exchange bound to a
//! durable queue, publishes persistent messages with random `x-delay`s under publisher
//! confirms, and takes them with `basic.get`. It checks:
//! - no message is delivered before its delay has passed (virtual time);
//! - after every crash, each confirmed message not yet delivered is in the store, still
//!   delayed or in the queue;
//! - by the end of the run every confirmed message was delivered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;

use warren::broker::{Broker, ConnInfo};
use warren::proto::command::{Command, ConnId, Login, Message, Reply};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};
use warren::store::Recovered;

use crate::Violation;

/// The probe's exchange and queue: names no other client uses.
pub const EXCHANGE: &str = "sim.later";
pub const QUEUE: &str = "sim.later.q";

/// Mean virtual time between two actions.
const MEAN_GAP_MS: u64 = 60;
/// The longest delay asked for.
const MAX_DELAY_MS: u64 = 3_000;
/// The most messages published in one run.
const MAX_MESSAGES: u64 = 400;

/// What the probe did (for the seed summary).
#[derive(Debug, Clone, Copy, Default)]
pub struct DelayStats {
    /// Published with a delay.
    pub published: u64,
    /// Confirmed by the broker.
    pub confirmed: u64,
    /// Delivered (first deliveries).
    pub delivered: u64,
    /// Crashes after which the store was checked for the confirmed ones.
    pub crashes_checked: u64,
}

/// The probe.
#[derive(Debug)]
pub struct DelayProbe {
    rng: SmallRng,
    next_at_ms: u64,
    conn: Option<ConnId>,
    next_conn: ConnId,
    /// Reading paused by the broker (a resource alarm).
    paused: bool,
    /// Publishes awaiting their confirm on the current connection: seq -> id.
    pending: BTreeMap<u64, u64>,
    next_seq: u64,
    next_id: u64,
    /// Every message published: id -> when it is due.
    due: BTreeMap<u64, u64>,
    /// Confirmed messages.
    confirmed: BTreeSet<u64>,
    /// Delivered messages.
    delivered: BTreeSet<u64>,
    /// No more publishing (the liveness phase).
    stopped: bool,
    pub stats: DelayStats,
}

fn id_of(message: &Message) -> Option<u64> {
    let raw: [u8; 8] = message.body.as_ref().try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

impl DelayProbe {
    /// A probe drawing its choices from `rng`.
    pub fn new(rng: SmallRng) -> Self {
        DelayProbe {
            rng,
            next_at_ms: 30,
            conn: None,
            next_conn: 1 << 42,
            paused: false,
            pending: BTreeMap::new(),
            next_seq: 1,
            next_id: 1,
            due: BTreeMap::new(),
            confirmed: BTreeSet::new(),
            delivered: BTreeSet::new(),
            stopped: false,
            stats: DelayStats::default(),
        }
    }

    /// When it acts next.
    pub fn next_ms(&self) -> Option<u64> {
        let work_left = !self.stopped || !self.confirmed.is_subset(&self.delivered);
        work_left.then_some(self.next_at_ms)
    }

    /// Whether `conn` is the probe's.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.conn == Some(conn)
    }

    /// No more publishing; it keeps taking until every confirmed message came.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whether it still waits for confirmed messages (the run is not over).
    pub fn waiting(&self) -> bool {
        !self.confirmed.is_subset(&self.delivered)
    }

    /// Acts: connects (returning the new connection), publishes or gets.
    pub fn act(&mut self, broker: &mut Broker, now_ms: u64) -> Option<ConnId> {
        self.next_at_ms = now_ms + self.rng.gen_range(1..=2 * MEAN_GAP_MS);
        let Some(conn) = self.conn else {
            return Some(self.connect(broker, now_ms));
        };
        if self.paused {
            return None;
        }
        let publish = !self.stopped && self.next_id <= MAX_MESSAGES && self.rng.gen_bool(0.5);
        if publish {
            let id = self.next_id;
            self.next_id += 1;
            let delay = self.rng.gen_range(1..=MAX_DELAY_MS);
            let mut headers = FieldTable::default();
            headers.insert("x-delay", FieldValue::I64(delay as i64));
            let message = Arc::new(Message {
                exchange: EXCHANGE.into(),
                routing_key: "k".into(),
                properties: BasicProperties {
                    delivery_mode: Some(2),
                    headers: Some(headers),
                    ..Default::default()
                },
                body: Bytes::copy_from_slice(&id.to_be_bytes()),
            });
            self.pending.insert(self.next_seq, id);
            self.next_seq += 1;
            self.due.insert(id, now_ms + delay);
            self.stats.published += 1;
            broker.handle_command(
                conn,
                Command::Publish {
                    channel: 1,
                    mandatory: false,
                    immediate: false,
                    message,
                },
                now_ms,
            );
        } else {
            let get = BasicGet {
                queue: QUEUE.into(),
                no_ack: true,
                ..Default::default()
            };
            broker.handle_command(
                conn,
                Command::Method {
                    channel: 1,
                    method: Method::BasicGet(get),
                },
                now_ms,
            );
        }
        None
    }

    fn connect(&mut self, broker: &mut Broker, now_ms: u64) -> ConnId {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conn = Some(conn);
        self.paused = false;
        self.pending.clear();
        self.next_seq = 1;
        let info = ConnInfo {
            peer: "127.0.0.1:40999".into(),
            loopback: true,
        };
        broker.handle_connect(conn, info, now_ms);
        let login = Login {
            mechanism: "PLAIN".into(),
            username: "guest".into(),
            password: "guest".into(),
            client_properties: FieldTable::default(),
        };
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-delayed-type",
            FieldValue::LongStr(Bytes::from_static(b"direct")),
        );
        let methods = [
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange: EXCHANGE.into(),
                kind: "x-delayed-message".into(),
                durable: true,
                arguments,
                ..Default::default()
            }),
            Method::QueueDeclare(QueueDeclare {
                queue: QUEUE.into(),
                durable: true,
                ..Default::default()
            }),
            Method::QueueBind(QueueBind {
                queue: QUEUE.into(),
                exchange: EXCHANGE.into(),
                routing_key: "k".into(),
                ..Default::default()
            }),
            Method::ConfirmSelect(ConfirmSelect::default()),
        ];
        broker.handle_command(conn, Command::Login(login), now_ms);
        broker.handle_command(conn, Command::OpenVhost { vhost: "/".into() }, now_ms);
        broker.handle_command(conn, Command::ChannelOpen { channel: 1 }, now_ms);
        for method in methods {
            broker.handle_command(conn, Command::Method { channel: 1, method }, now_ms);
        }
        conn
    }

    /// Replies to the probe's connection; returns the commands its driver sends back.
    pub fn replies(&mut self, replies: &[Reply], now_ms: u64) -> Result<Vec<Command>, Violation> {
        let mut back = Vec::new();
        let written: usize = replies.iter().map(Reply::wire_size).sum();
        if written > 0 {
            back.push(Command::Drained { bytes: written });
        }
        for r in replies {
            match r {
                Reply::Method {
                    method: Method::BasicAck(a),
                    ..
                } => self.settle(a.delivery_tag, a.multiple, true),
                Reply::Method {
                    method: Method::BasicNack(n),
                    ..
                } => self.settle(n.delivery_tag, n.multiple, false),
                Reply::Content {
                    method: Method::BasicGetOk(_),
                    message,
                    ..
                } => self.delivered_one(message, now_ms)?,
                Reply::Method {
                    method: Method::ConnectionClose(_),
                    ..
                }
                | Reply::Method {
                    method: Method::ChannelClose(_),
                    ..
                }
                | Reply::Disconnect => {
                    // Whatever closed it (a store fault, an alarm), a new connection starts
                    // over; unconfirmed publishes are no promise.
                    back.push(Command::Closed);
                    self.conn = None;
                    self.pending.clear();
                    break;
                }
                Reply::PauseReading(p) => self.paused = *p,
                _ => {}
            }
        }
        Ok(back)
    }

    fn settle(&mut self, tag: u64, multiple: bool, ack: bool) {
        let tags: Vec<u64> = if multiple {
            self.pending.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        for t in tags {
            if let Some(id) = self.pending.remove(&t)
                && ack
                && self.confirmed.insert(id)
            {
                self.stats.confirmed += 1;
            }
        }
    }

    fn delivered_one(&mut self, message: &Message, now_ms: u64) -> Result<(), Violation> {
        let Some(id) = id_of(message) else {
            return Err(Violation(format!(
                "delayed probe: a message of {} bytes it never published",
                message.body.len()
            )));
        };
        let Some(due) = self.due.get(&id) else {
            return Err(Violation(format!(
                "delayed probe: message {id} was never published"
            )));
        };
        if now_ms < *due {
            return Err(Violation(format!(
                "delayed probe: message {id} delivered at {now_ms} ms, before its delay ended at {due} ms"
            )));
        }
        if self.delivered.insert(id) {
            self.stats.delivered += 1;
        }
        Ok(())
    }

    /// The broker crashed: the connection is gone, unconfirmed publishes are no promise.
    pub fn crashed(&mut self) {
        self.conn = None;
        self.pending.clear();
        self.paused = false;
    }

    /// What a restarted broker recovered holds every confirmed message not yet delivered,
    /// delayed still or in the queue.
    pub fn recovered(&mut self, r: &Recovered) -> Result<(), Violation> {
        let queue_ids: BTreeSet<u64> = r
            .queues
            .iter()
            .filter(|q| q.vhost == "/" && q.name == QUEUE)
            .map(|q| q.id)
            .collect();
        let mut held: BTreeSet<u64> = r
            .delayed
            .iter()
            .filter(|d| d.vhost == "/" && d.exchange == EXCHANGE)
            .filter_map(|d| id_of(&d.message))
            .collect();
        held.extend(
            r.entries()
                .filter(|(q, _)| queue_ids.contains(q))
                .filter_map(|(_, e)| id_of(&e.message)),
        );
        if let Some(lost) = self
            .confirmed
            .iter()
            .find(|id| !self.delivered.contains(id) && !held.contains(id))
        {
            return Err(Violation(format!(
                "delayed probe: after a crash, confirmed message {lost} (due at {} ms) is neither delayed nor queued",
                self.due.get(lost).copied().unwrap_or_default()
            )));
        }
        self.stats.crashes_checked += 1;
        Ok(())
    }

    /// At the end of the run: every confirmed message came.
    pub fn finish(&self) -> Result<(), Violation> {
        match self.confirmed.difference(&self.delivered).next() {
            Some(id) => Err(Violation(format!(
                "delayed probe: confirmed message {id} (due at {} ms) was never delivered",
                self.due.get(id).copied().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }
}
