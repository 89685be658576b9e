//! What a hostile client does on each tick: declares, bindings, publishes, consumes,
//! settlements and deletions, drawn from its plan and pipelined without waiting for
//! replies.

use rand::Rng;

use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use super::{
    CH_OTHER, CH_PUB, ChanState, HOSTILE_ID_PREFIX, HostileClient, REPLY_TO, UNACKED_MAX,
    hostile_key, remember,
};
use crate::client::RunPhase;
use crate::hostile::plan::{AMQ_EXCHANGES, nested};
use crate::workload::{body_for, correlation_for};

/// Marks the consumer tags of direct reply-to consumers.
const REPLY_TAG: &str = "-reply-";

/// How long a `channel.open` may go unanswered on a live connection.
const OPEN_ANSWERED_WITHIN_MS: u64 = 3_000;

impl HostileClient {
    /// One step of the hostile workload; in the liveness phase it only settles what it
    /// holds.
    ///
    /// A channel whose `channel.open` went unanswered for [`OPEN_ANSWERED_WITHIN_MS`] on
    /// a live connection is an error: the broker dropped it and the client would wait
    /// forever.
    pub fn tick(&mut self, now_ms: u64, phase: RunPhase) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if !s.link.is_open() {
            return Ok(());
        }
        if s.malformed.is_some() {
            // It sends nothing after a malformed frame: the broker's close is owed.
            return self.malformed_tick(now_ms);
        }
        for (i, ch) in s.channels.iter().enumerate() {
            if matches!(ch.state, ChanState::Opening | ChanState::Reopening)
                && now_ms.saturating_sub(ch.opened_ms) > OPEN_ANSWERED_WITHIN_MS
            {
                return Err(format!(
                    "hostile client {}: channel {} sent channel.open at {} ms and has no answer at {now_ms} ms",
                    self.id,
                    i + 1,
                    ch.opened_ms
                ));
            }
        }
        s.link.keep_alive(now_ms);
        self.open_channels(now_ms);
        self.probe_setup(now_ms);
        self.probe_tick(now_ms)?;
        if phase == RunPhase::Liveness {
            for channel in [CH_PUB, CH_OTHER] {
                self.ack_all(channel, now_ms);
            }
            self.commit(now_ms);
            return Ok(());
        }
        let roll = self.g.rng.gen_range(0..100);
        match roll {
            0..=11 => self.declare_queue(now_ms),
            12..=17 => self.declare_exchange(now_ms),
            18..=29 => self.bind_queue(now_ms),
            30..=34 => self.bind_exchange(now_ms),
            35..=36 => self.unbind(now_ms),
            37..=64 => self.publish(now_ms),
            65..=70 => self.consume(now_ms),
            71..=80 => self.settle(now_ms),
            81..=84 => self.get(now_ms),
            85..=86 => self.cancel(now_ms),
            87..=88 => self.purge(now_ms),
            89..=91 => self.delete_queue(now_ms),
            92..=93 => self.delete_exchange(now_ms),
            94 => self.close_channel(now_ms),
            95 if self.g.one_in(4) => self.close_connection(now_ms),
            96..=97 => self.transact(now_ms),
            98 if self.g.one_in(4) => self.send_malformed(now_ms),
            _ => {}
        }
        Ok(())
    }

    /// A channel that is open, drawn at random (`None` if neither is).
    fn some_channel(&mut self) -> Option<u16> {
        let first = if self.g.one_in(2) { CH_PUB } else { CH_OTHER };
        let s = self.session.as_ref()?;
        [first, CH_PUB + CH_OTHER - first]
            .into_iter()
            .find(|c| s.open(*c))
    }

    fn send(&mut self, channel: u16, method: Method, now_ms: u64) {
        if let Some(s) = self.session.as_mut() {
            s.send(channel, &method, now_ms);
            self.stats.methods += 1;
        }
    }

    fn queue_names(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.queue.clone()).collect()
    }

    fn exchange_names(&self) -> Vec<String> {
        self.exchanges.iter().map(|x| x.exchange.clone()).collect()
    }

    /// One of its queues, often declared again first (pipelined) so that it exists; now
    /// and then "" for the channel's last declared queue.
    fn some_queue(&mut self, channel: u16, now_ms: u64) -> Option<String> {
        if self.queues.is_empty() {
            return None;
        }
        if self.g.one_in(20) {
            return Some(String::new());
        }
        let m = self.queues[self.g.rng.gen_range(0..self.queues.len())].clone();
        let name = m.queue.clone();
        if self.g.one_in(2) {
            self.send(channel, Method::QueueDeclare(m), now_ms);
        }
        Some(name)
    }

    /// One of its exchanges, often declared again first, or a predeclared `amq.*` one;
    /// with its kind.
    fn some_exchange(&mut self, channel: u16, now_ms: u64) -> (String, String) {
        if self.exchanges.is_empty() || self.g.one_in(3) {
            let (n, k) = AMQ_EXCHANGES[self.g.rng.gen_range(0..AMQ_EXCHANGES.len())];
            return (n.to_string(), k.to_string());
        }
        let m = self.exchanges[self.g.rng.gen_range(0..self.exchanges.len())].clone();
        let named = (m.exchange.clone(), m.kind.clone());
        if self.g.one_in(2) {
            self.send(channel, Method::ExchangeDeclare(m), now_ms);
        }
        named
    }

    /// A binding key and arguments suited to an exchange of `kind`.
    fn binding_for(&mut self, kind: &str) -> (String, FieldTable) {
        let f = self.g.plan.features;
        match kind {
            "topic" => (self.g.topic_pattern(), FieldTable::new()),
            "headers" if f.headers => (String::new(), self.g.headers_binding()),
            // Weights, and now and then one that is not (refused with a 406).
            "x-consistent-hash" => {
                let key = match self.g.rng.gen_range(0..8) {
                    0 => "zero".to_string(),
                    1 => "0".to_string(),
                    2 => "1000000".to_string(),
                    _ => self.g.rng.gen_range(1..=10).to_string(),
                };
                (key, FieldTable::new())
            }
            _ => {
                let key = if !self.queues.is_empty() && self.g.one_in(2) {
                    self.queues[self.g.rng.gen_range(0..self.queues.len())]
                        .queue
                        .clone()
                } else {
                    self.g.routing_key(&self.reserved)
                };
                let mut args = FieldTable::new();
                if f.nesting && self.g.one_in(4) {
                    let depth = self.g.depth();
                    args.insert("x-nest", nested(depth.saturating_sub(1), true));
                }
                (key, args)
            }
        }
    }

    fn declare_queue(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let name = if !self.queues.is_empty() && self.g.one_in(8) {
            // A redeclare with other arguments (406 inequivalent, most of the time).
            self.queues[self.g.rng.gen_range(0..self.queues.len())]
                .queue
                .clone()
        } else {
            self.g.name(&self.reserved)
        };
        let exchanges = self.exchange_names();
        let queues = self.queue_names();
        let arguments = self.g.queue_arguments(&name, &exchanges, &queues);
        let m = QueueDeclare {
            queue: name.clone(),
            durable: self.g.one_in(2),
            exclusive: self.g.one_in(8),
            auto_delete: self.g.one_in(8),
            arguments,
            ..Default::default()
        };
        // Names the broker refuses are not worth using again.
        if !name.is_empty() && !name.starts_with("amq.") && !queues.contains(&name) {
            remember(
                &mut self.queues,
                m.clone(),
                self.g.plan.names_max,
                &mut self.g.rng,
            );
        }
        self.send(channel, Method::QueueDeclare(m), now_ms);
    }

    fn declare_exchange(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let f = self.g.plan.features;
        let mut kinds = vec!["direct", "fanout"];
        if f.topic {
            kinds.extend(["topic", "topic"]);
        }
        if f.headers {
            kinds.extend(["headers", "headers"]);
        }
        kinds.push("x-consistent-hash");
        if self.g.one_in(20) {
            kinds = vec!["x-bogus"];
        }
        let kind = kinds[self.g.rng.gen_range(0..kinds.len())];
        let name = self.g.name(&self.reserved);
        let exchanges = self.exchange_names();
        let mut arguments = self.g.exchange_arguments(&name, &exchanges);
        if kind == "x-consistent-hash" && self.g.one_in(3) {
            let (on, what) = [
                ("hash-header", "k0"),
                ("hash-property", "message_id"),
                ("hash-property", "priority"),
                ("hash-property", "no-such-property"),
            ][self.g.rng.gen_range(0..4)];
            arguments.insert(on, FieldValue::LongStr(what.into()));
        }
        let m = ExchangeDeclare {
            exchange: name.clone(),
            kind: kind.into(),
            durable: self.g.one_in(2),
            auto_delete: self.g.one_in(8),
            internal: self.g.one_in(20),
            arguments,
            ..Default::default()
        };
        if !name.is_empty()
            && !name.starts_with("amq.")
            && kind != "x-bogus"
            && !exchanges.contains(&name)
        {
            remember(
                &mut self.exchanges,
                m.clone(),
                self.g.plan.names_max,
                &mut self.g.rng,
            );
        }
        self.send(channel, Method::ExchangeDeclare(m), now_ms);
    }

    fn bind_queue(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let Some(queue) = self.some_queue(channel, now_ms) else {
            return;
        };
        let (exchange, kind) = self.some_exchange(channel, now_ms);
        let (routing_key, arguments) = self.binding_for(&kind);
        let m = QueueBind {
            queue,
            exchange,
            routing_key,
            arguments,
            ..Default::default()
        };
        self.send(channel, Method::QueueBind(m), now_ms);
    }

    fn bind_exchange(&mut self, now_ms: u64) {
        if !self.g.plan.features.e2e || self.exchanges.is_empty() {
            return;
        }
        let Some(channel) = self.some_channel() else {
            return;
        };
        let (source, kind) = self.some_exchange(channel, now_ms);
        let (destination, _) = self.some_exchange(channel, now_ms);
        let (routing_key, arguments) = self.binding_for(&kind);
        let m = ExchangeBind {
            destination,
            source,
            routing_key,
            arguments,
            ..Default::default()
        };
        self.send(channel, Method::ExchangeBind(m), now_ms);
    }

    fn unbind(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let Some(queue) = self.some_queue(channel, now_ms) else {
            return;
        };
        let (exchange, kind) = self.some_exchange(channel, now_ms);
        let (routing_key, arguments) = self.binding_for(&kind);
        let m = QueueUnbind {
            queue,
            exchange,
            routing_key,
            arguments,
            ..Default::default()
        };
        self.send(channel, Method::QueueUnbind(m), now_ms);
    }

    fn publish(&mut self, now_ms: u64) {
        if !self.session.as_ref().is_some_and(|s| s.open(CH_PUB)) {
            return;
        }
        let n = self.g.rng.gen_range(1..=3);
        let queues = self.queue_names();
        let has_reply_consumer = self
            .session
            .as_mut()
            .and_then(|s| s.chan(CH_PUB))
            .is_some_and(|c| c.consumers.iter().any(|t| t.contains(REPLY_TAG)));
        for _ in 0..n {
            let (exchange, kind) = if self.g.one_in(4) {
                (String::new(), "direct".to_string())
            } else {
                self.some_exchange(CH_PUB, now_ms)
            };
            let reply =
                (exchange.is_empty() && !self.reply_addresses.is_empty() && self.g.one_in(3))
                    .then(|| self.reply_address());
            let routing_key = if let Some(address) = reply {
                address
            } else if kind == "direct" && !self.queues.is_empty() && self.g.one_in(2) {
                self.queues[self.g.rng.gen_range(0..self.queues.len())]
                    .queue
                    .clone()
            } else {
                self.g.routing_key(&self.reserved)
            };
            let msg_id = format!("{HOSTILE_ID_PREFIX}{}.{}", self.id, self.next_msg);
            self.next_msg += 1;
            let persistent = self.g.rng.gen_bool(self.g.plan.persistent_prob);
            let props = BasicProperties {
                // Now and then a mode RabbitMQ refuses (406), as the broker must.
                delivery_mode: Some(if self.g.one_in(40) {
                    [0, 3, 7, 255][self.g.rng.gen_range(0..4)]
                } else if persistent {
                    2
                } else {
                    1
                }),
                message_id: Some(msg_id.as_str().into()),
                correlation_id: correlation_for(hostile_key(&msg_id)),
                expiration: self.g.expiration().map(Into::into),
                headers: self.g.message_headers(&queues),
                priority: self.g.one_in(4).then(|| self.g.rng.gen_range(0..=10)),
                // Needs a reply consumer on the channel, or the broker closes it (406).
                reply_to: self
                    .g
                    .one_in(if has_reply_consumer { 2 } else { 30 })
                    .then(|| REPLY_TO.into()),
                ..Default::default()
            };
            let len = self.g.rng.gen_range(0..=self.g.plan.body_max_bytes);
            let body = body_for(hostile_key(&msg_id), len);
            let publish = Method::BasicPublish(BasicPublish {
                exchange,
                routing_key,
                mandatory: self.g.one_in(3),
                ..Default::default()
            });
            let Some(s) = self.session.as_mut() else {
                return;
            };
            s.link.send_content(CH_PUB, &publish, &props, &body, now_ms);
            self.stats.published += 1;
        }
    }

    /// A reply address it saw, or a forgery of one (another channel, another nonce).
    fn reply_address(&mut self) -> String {
        let i = self.g.rng.gen_range(0..self.reply_addresses.len());
        let mut address = self.reply_addresses[i].clone();
        if self.g.one_in(3) {
            let at = self
                .g
                .rng
                .gen_range(REPLY_TO.len() + 1..address.len().max(REPLY_TO.len() + 2));
            if at < address.len() {
                let c = if address.as_bytes()[at] == b'A' {
                    "B"
                } else {
                    "A"
                };
                address.replace_range(at..=at, c);
            }
        }
        address
    }

    fn consume(&mut self, now_ms: u64) {
        if self.g.one_in(6) && self.session.as_ref().is_some_and(|s| s.open(CH_PUB)) {
            // The direct reply-to consumer sits on the publishing channel; one that acks
            // is refused (406), and so is a second one on the channel.
            self.next_tag += 1;
            let m = BasicConsume {
                queue: REPLY_TO.to_string(),
                consumer_tag: format!("h{}{REPLY_TAG}{}", self.id, self.next_tag),
                no_ack: !self.g.one_in(8),
                ..Default::default()
            };
            self.send(CH_PUB, Method::BasicConsume(m), now_ms);
            return;
        }
        if !self.session.as_ref().is_some_and(|s| s.open(CH_OTHER)) {
            return;
        }
        let Some(queue) = self.some_queue(CH_OTHER, now_ms) else {
            return;
        };
        if self.g.one_in(3) {
            let qos = BasicQos {
                prefetch_size: 0,
                prefetch_count: [0, 1, 5][self.g.rng.gen_range(0..3)],
                global: self.g.one_in(2),
            };
            self.send(CH_OTHER, Method::BasicQos(qos), now_ms);
        }
        let consumer_tag = if self.g.one_in(4) {
            String::new()
        } else {
            self.next_tag += 1;
            format!("h{}-{}", self.id, self.next_tag)
        };
        let m = BasicConsume {
            queue,
            consumer_tag,
            no_ack: self.g.one_in(3),
            exclusive: self.g.one_in(10),
            arguments: self.g.consumer_arguments(),
            ..Default::default()
        };
        self.send(CH_OTHER, Method::BasicConsume(m), now_ms);
    }

    /// Acks, nacks or rejects one held delivery; without requeue it is dead-lettered.
    fn settle(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let roll = self.g.rng.gen_range(0..4);
        let requeue = self.g.one_in(3);
        let hoard = self.g.plan.features.hoard;
        let multiple = self.g.one_in(4) && !hoard;
        let pick = self.g.rng.gen_range(0..UNACKED_MAX);
        let Some(ch) = self.session.as_mut().and_then(|s| s.chan(channel)) else {
            return;
        };
        // A hoarder keeps the oldest delivery it holds (tags come in order).
        let keep = usize::from(hoard);
        if ch.unacked.len() <= keep {
            return;
        }
        let tag = ch.unacked[keep + pick % (ch.unacked.len() - keep)];
        if multiple {
            ch.unacked.retain(|t| *t > tag);
        } else {
            ch.unacked.retain(|t| *t != tag);
        }
        let m = match roll {
            0 => Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple,
            }),
            1 | 2 => Method::BasicNack(BasicNack {
                delivery_tag: tag,
                multiple,
                requeue,
            }),
            _ => Method::BasicReject(BasicReject {
                delivery_tag: tag,
                requeue,
            }),
        };
        self.send(channel, m, now_ms);
    }

    fn ack_all(&mut self, channel: u16, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if !s.open(channel) {
            return;
        }
        let Some(ch) = s.chan(channel) else {
            return;
        };
        let Some(last) = ch.unacked.iter().copied().max() else {
            return;
        };
        ch.unacked.clear();
        let m = Method::BasicAck(BasicAck {
            delivery_tag: last,
            multiple: true,
        });
        s.send(channel, &m, now_ms);
    }

    /// Makes the second channel transactional and sends a run of acks and nacks of
    /// everything held (of nothing, as often as not: a settle that settles nothing must
    /// not grow the transaction), then sometimes commits.
    fn transact(&mut self, now_ms: u64) {
        if self.g.plan.features.hoard && !self.g.one_in(3) {
            // Its acks of everything held settle the hoarded delivery too: now and then.
            return;
        }
        let runs = self.g.rng.gen_range(1..=32);
        let commit = self.g.one_in(3);
        let mut methods = Vec::new();
        {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            if !s.open(CH_OTHER) {
                return;
            }
            let Some(ch) = s.chan(CH_OTHER) else {
                return;
            };
            if !ch.tx {
                ch.tx = true;
                methods.push(Method::TxSelect(TxSelect {}));
            }
            for i in 0..runs {
                ch.unacked.clear();
                methods.push(if i % 2 == 0 {
                    Method::BasicAck(BasicAck {
                        delivery_tag: 0,
                        multiple: true,
                    })
                } else {
                    Method::BasicNack(BasicNack {
                        delivery_tag: 0,
                        multiple: true,
                        requeue: true,
                    })
                });
            }
        }
        for m in methods {
            self.send(CH_OTHER, m, now_ms);
        }
        if commit {
            self.commit(now_ms);
        }
    }

    /// Commits the second channel's transaction, if it is transactional.
    fn commit(&mut self, now_ms: u64) {
        let tx = self
            .session
            .as_mut()
            .filter(|s| s.open(CH_OTHER))
            .and_then(|s| s.chan(CH_OTHER))
            .is_some_and(|ch| ch.tx);
        if tx {
            self.send(CH_OTHER, Method::TxCommit(TxCommit {}), now_ms);
        }
    }

    fn get(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let Some(queue) = self.some_queue(channel, now_ms) else {
            return;
        };
        let m = BasicGet {
            queue,
            no_ack: self.g.one_in(3),
            ..Default::default()
        };
        self.send(channel, Method::BasicGet(m), now_ms);
    }

    fn cancel(&mut self, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if !s.open(CH_OTHER) {
            return;
        }
        let Some(tag) = s.chan(CH_OTHER).and_then(|c| c.consumers.pop()) else {
            return;
        };
        let m = BasicCancel {
            consumer_tag: tag,
            nowait: false,
        };
        self.send(CH_OTHER, Method::BasicCancel(m), now_ms);
    }

    fn purge(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let Some(queue) = self.some_queue(channel, now_ms) else {
            return;
        };
        let m = QueuePurge {
            queue,
            ..Default::default()
        };
        self.send(channel, Method::QueuePurge(m), now_ms);
    }

    fn delete_queue(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        let Some(queue) = self.some_queue(channel, now_ms) else {
            return;
        };
        let m = QueueDelete {
            queue,
            if_unused: self.g.one_in(4),
            if_empty: self.g.one_in(4),
            ..Default::default()
        };
        self.send(channel, Method::QueueDelete(m), now_ms);
    }

    fn delete_exchange(&mut self, now_ms: u64) {
        if self.exchanges.is_empty() {
            return;
        }
        let Some(channel) = self.some_channel() else {
            return;
        };
        let exchange = self.exchanges[self.g.rng.gen_range(0..self.exchanges.len())]
            .exchange
            .clone();
        let m = ExchangeDelete {
            exchange,
            if_unused: self.g.one_in(4),
            ..Default::default()
        };
        self.send(channel, Method::ExchangeDelete(m), now_ms);
    }

    fn close_channel(&mut self, now_ms: u64) {
        let Some(channel) = self.some_channel() else {
            return;
        };
        // Now and then the channel is opened again in the same write, before the
        // close-ok: the broker answers with an open-ok or a 504, never with nothing.
        let reopen = self.g.one_in(4);
        if let Some(ch) = self.session.as_mut().and_then(|s| s.chan(channel)) {
            ch.state = if reopen {
                ChanState::Reopening
            } else {
                ChanState::Closing
            };
            ch.opened_ms = now_ms;
        }
        self.send(
            channel,
            Method::ChannelClose(ChannelClose::default()),
            now_ms,
        );
        if reopen {
            self.send(channel, Method::ChannelOpen(ChannelOpen::default()), now_ms);
        }
    }

    fn close_connection(&mut self, now_ms: u64) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.link.close(now_ms);
    }
}
