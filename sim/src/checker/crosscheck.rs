//! Cross-checks of the model against the broker: its queues after a drain, the disk after a
//! crash (exactly the entries the model predicts), and what is left when the run is drained;
//! and the history of each message kept for a violation's report.

use super::*;

impl Model {
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

    pub(super) fn note(&mut self, key: MsgKey, event: String) {
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

    pub(super) fn describe(&self, key: MsgKey) -> String {
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
}
