//! What the broker is given, applied to the model: connections, the workload clients'
//! commands (publishes, methods, gets, acks, rejects and nacks), and what each must answer.

use super::*;

impl Model {
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
    pub(super) fn late_get(
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
}
