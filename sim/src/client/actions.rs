//! What a simulated client sends: setting up its channels and consumers, and the action
//! each tick chooses (publishing, acking, rejecting and nacking, gets, turning consumers
//! on and off, deliberately bad acks, purges and deletes, closing channels and the
//! connection), pipelined as a real client's would be.

use super::*;

impl Client {
    /// Opens a channel and sets it up for its role (pipelined).
    pub(super) fn open_channel(&mut self, channel: u16, now_ms: u64, spec: &Spec) {
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
        if qs.single_active {
            arguments.insert("x-single-active-consumer", FieldValue::Bool(true));
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
