//! What the broker emits, checked against the model: store batches in order, and each
//! drain's replies (deliveries in queue order within prefetch, get answers, confirms only
//! for what is on disk, errors the model expects).

use super::*;

impl Model {
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
}
