//! What declarations and deletions do to the topology once they are allowed: bindings added
//! and removed, queues and exchanges deleted (with the auto-deletes they set off) and queues
//! purged, each with its store record.

use super::*;

impl Broker {
    /// The name of a binding's destination queue ("" for exchange destinations).
    fn destination_queue_name(&self, destination: &Destination) -> String {
        match destination {
            Destination::Queue(id) => self
                .topology
                .queues
                .get(id)
                .map(|q| q.decl.name.clone())
                .unwrap_or_default(),
            Destination::Exchange(_) => String::new(),
        }
    }

    pub(in crate::broker) fn add_binding(
        &mut self,
        vhost: &str,
        source: &str,
        binding: Binding,
    ) -> AmqpResult<()> {
        let max = self.config.limits.max_bindings_per_exchange;
        let queue_name = self.destination_queue_name(&binding.destination);
        let durable_destination = match &binding.destination {
            Destination::Queue(id) => self.topology.queues.get(id).is_some_and(|q| q.decl.durable),
            Destination::Exchange(name) => self
                .topology
                .vhosts
                .get(vhost)
                .and_then(|v| v.exchanges.get(name))
                .is_some_and(|x| x.durable),
        };
        let v = self
            .topology
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| not_allowed("vhost gone"))?;
        let x = v
            .exchanges
            .get_mut(source)
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", source, vhost))))?;
        let max = if x.kind == ExchangeKind::ConsistentHash {
            max.min(crate::broker::exchange::MAX_HASH_BINDINGS)
        } else {
            max
        };
        if x.binding_count() >= max {
            return Err(precondition_failed(format!(
                "{} has the maximum of {max} bindings",
                resource("exchange", source, vhost)
            )));
        }
        x.kind
            .check_binding(&binding)
            .map_err(precondition_failed)?;
        let record = (x.durable && durable_destination)
            .then(|| binding_record(vhost, source, &binding, &queue_name));
        if x.bind(binding.clone()) {
            match &binding.destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(id) {
                        q.bound_from.insert(source.to_string());
                    }
                }
                Destination::Exchange(name) => {
                    if let Some(d) = v.exchanges.get_mut(name) {
                        d.bound_from.insert(source.to_string());
                    }
                }
            }
            if let Some(r) = record {
                self.round.journal.push(StoreOp::PutBinding(r));
            }
        }
        Ok(())
    }

    pub(in crate::broker) fn remove_binding(
        &mut self,
        vhost: &str,
        source: &str,
        binding: &Binding,
    ) {
        let queue_name = self.destination_queue_name(&binding.destination);
        let Some(x) = self
            .topology
            .vhosts
            .get_mut(vhost)
            .and_then(|v| v.exchanges.get_mut(source))
        else {
            return;
        };
        if !x.unbind(binding) {
            return;
        }
        let x_durable = x.durable;
        let now_unused = x.auto_delete && x.binding_count() == 0;
        if !x.binds_to(&binding.destination) {
            match &binding.destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(id) {
                        q.bound_from.remove(source);
                    }
                }
                Destination::Exchange(name) => {
                    if let Some(d) = self
                        .topology
                        .vhosts
                        .get_mut(vhost)
                        .and_then(|v| v.exchanges.get_mut(name))
                    {
                        d.bound_from.remove(source);
                    }
                }
            }
        }
        if x_durable {
            self.round
                .journal
                .push(StoreOp::DeleteBinding(binding_record(
                    vhost,
                    source,
                    binding,
                    &queue_name,
                )));
        }
        if now_unused {
            self.delete_exchange(vhost, source);
        }
    }

    /// Deletes a queue: cancels its consumers (telling those that asked to be told),
    /// removes its bindings and drops its messages. Returns the number of ready messages
    /// it held.
    pub(in crate::broker) fn delete_queue(&mut self, id: QueueId) -> u64 {
        let Some(mut q) = self.topology.queues.remove(&id) else {
            return 0;
        };
        let waiters = std::mem::take(&mut q.flow_waiters);
        self.release_waiters(id, waiters);
        let gets = std::mem::take(&mut q.waiting_gets);
        self.fail_waiting_gets(gets);
        let consumers = std::mem::take(&mut q.consumers);
        for c in consumers {
            let Some(conn) = self.sessions.conns.get_mut(&c.conn) else {
                continue;
            };
            let notify = conn.cancel_notify;
            conn.waiting.forget(c.channel, id);
            if let Some(ch) = conn.channels.get_mut(&c.channel) {
                ch.consumers.remove(&c.tag);
            }
            if notify {
                self.round.notices.push((
                    c.conn,
                    c.channel,
                    Method::BasicCancel(BasicCancel {
                        consumer_tag: c.tag.to_string(),
                        nowait: true,
                    }),
                ));
            }
        }
        for source in std::mem::take(&mut q.bound_from) {
            let Some(x) = self
                .topology
                .vhosts
                .get_mut(&q.decl.vhost)
                .and_then(|v| v.exchanges.get_mut(&source))
            else {
                continue;
            };
            let gone = x.unbind_destination(&Destination::Queue(id));
            let x_durable = x.durable;
            let now_unused = x.auto_delete && x.binding_count() == 0;
            if x_durable && q.decl.durable {
                for b in &gone {
                    self.round
                        .journal
                        .push(StoreOp::DeleteBinding(binding_record(
                            &q.decl.vhost,
                            &source,
                            b,
                            &q.decl.name,
                        )));
                }
            }
            if now_unused && !gone.is_empty() {
                self.delete_exchange(&q.decl.vhost, &source);
            }
        }
        if let Some(v) = self.topology.vhosts.get_mut(&q.decl.vhost) {
            v.queues.remove(&q.decl.name);
        }
        if let Some(owner) = q
            .decl
            .exclusive_owner
            .and_then(|o| self.sessions.conns.get_mut(&o))
        {
            owner.exclusive_queues.retain(|x| *x != id);
        }
        let (purged, paged) = q.messages.purge();
        let count = purged.len() as u64 + paged.map_or(0, |(_, n)| n);
        if q.decl.durable {
            // Drops the queue's entries, stored and paged, with it.
            self.round.journal.push(StoreOp::DeleteQueue {
                vhost: q.decl.vhost.clone(),
                name: q.decl.name.clone(),
                id,
            });
        } else if paged.is_some() {
            // Dropping the queue id's contents wholesale costs one write, where a purge
            // would visit every paged message.
            self.round.journal.push(StoreOp::DeleteQueue {
                vhost: q.decl.vhost.clone(),
                name: q.decl.name.clone(),
                id,
            });
        }
        // The management API's gets and peeks waiting for reads find the queue gone.
        for waiting in std::mem::take(&mut q.waiting_admin) {
            let result = self.admin_dispatch(waiting.request);
            self.answer_admin(waiting.id, result);
        }
        count
    }

    /// Removes every ready message of a queue, in memory and paged; returns how many.
    pub(in crate::broker) fn purge_ready(&mut self, id: QueueId) -> u64 {
        let Some(q) = self.topology.queues.get_mut(&id) else {
            return 0;
        };
        let (purged, paged) = q.messages.purge();
        let mut count = purged.len() as u64;
        if let Some((from_seq, n)) = paged {
            count += n;
            self.round.journal.push(StoreOp::PurgeFrom {
                queue: id,
                from_seq,
            });
        }
        for entry in purged {
            self.release(id, &entry);
        }
        self.serve_waiting_gets(id);
        self.schedule_dispatch(id);
        count
    }

    /// Deletes an exchange with its bindings in both directions, and any auto-delete
    /// exchange that loses its last binding as a result (and so on, as a work list: a
    /// chain of auto-delete exchanges is as long as a client made it).
    pub(in crate::broker) fn delete_exchange(&mut self, vhost: &str, name: &str) {
        let mut doomed = vec![name.to_string()];
        while let Some(name) = doomed.pop() {
            self.counters.work += 1;
            let emptied = self.delete_one_exchange(vhost, &name);
            doomed.extend(emptied);
        }
    }

    /// Deletes one exchange with its bindings in both directions; returns the auto-delete
    /// exchanges that lost their last binding.
    fn delete_one_exchange(&mut self, vhost: &str, name: &str) -> Vec<String> {
        let mut emptied = Vec::new();
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return emptied;
        };
        let Some(mut x) = v.exchanges.remove(name) else {
            return emptied;
        };
        if x.delayed {
            self.drop_delayed(vhost, Some(name));
        }
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return emptied;
        };
        debug_assert!(!x.builtin, "predeclared exchanges are never deleted");
        let dest = Destination::Exchange(name.to_string());
        let mut dropped_to_it = Vec::new();
        for src_name in std::mem::take(&mut x.bound_from) {
            let Some(src) = v.exchanges.get_mut(&src_name) else {
                continue;
            };
            let gone = src.unbind_destination(&dest);
            debug_assert!(
                !gone.is_empty(),
                "bound_from names a source without bindings"
            );
            if src.auto_delete && src.binding_count() == 0 {
                emptied.push(src_name.clone());
            }
            if src.durable && x.durable {
                dropped_to_it.extend(gone.into_iter().map(|b| (src_name.clone(), b)));
            }
        }
        for b in x.bindings() {
            match &b.destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(id) {
                        q.bound_from.remove(name);
                    }
                }
                Destination::Exchange(d) => {
                    if let Some(d) = v.exchanges.get_mut(d) {
                        d.bound_from.remove(name);
                    }
                }
            }
        }
        for (src, b) in dropped_to_it {
            self.round
                .journal
                .push(StoreOp::DeleteBinding(binding_record(vhost, &src, &b, "")));
        }
        if x.durable {
            // The store drops the exchange's own bindings with it.
            for b in x.bindings() {
                let queue_name = self.destination_queue_name(&b.destination);
                self.round
                    .journal
                    .push(StoreOp::DeleteBinding(binding_record(
                        vhost,
                        name,
                        b,
                        &queue_name,
                    )));
            }
            self.round.journal.push(StoreOp::DeleteExchange {
                vhost: vhost.to_string(),
                name: name.to_string(),
            });
        }
        emptied
    }
}

/// The store's form of a binding; `queue_name` names the queue of a queue binding.
fn binding_record(vhost: &str, source: &str, b: &Binding, queue_name: &str) -> BindingRecord {
    let (destination, to_exchange) = match &b.destination {
        Destination::Queue(_) => (queue_name.to_string(), false),
        Destination::Exchange(name) => (name.clone(), true),
    };
    let mut arguments = bytes::BytesMut::new();
    b.arguments.encode(&mut arguments);
    BindingRecord {
        vhost: vhost.to_string(),
        source: source.to_string(),
        destination,
        to_exchange,
        routing_key: b.routing_key.clone(),
        arguments: arguments.to_vec(),
    }
}
