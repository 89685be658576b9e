//! Durable state held in memory: the meaning of a sequence of [`StoreOp`] batches.
//!
//! [`MemoryState`] applies batches and reads back a [`Recovered`]. The simulator's disk
//! replays the batches that survived a crash through it, and [`MemoryStore`] is a
//! [`Store`] with no disk at all (for tests and for running without persistence).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::proto::command::Message;

use super::*;

/// Durable state after some batches were applied.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    vhosts: BTreeSet<String>,
    users: BTreeMap<String, UserRecord>,
    permissions: BTreeMap<(String, String), PermissionRecord>,
    vhost_limits: BTreeMap<String, VhostLimits>,
    user_limits: BTreeMap<String, UserLimits>,
    policies: BTreeMap<(bool, String, String), PolicyRecord>,
    topic_permissions: BTreeMap<(String, String, String), TopicPermissionRecord>,
    delayed: BTreeMap<u64, DelayedRecord>,
    exchanges: BTreeMap<(String, String), ExchangeRecord>,
    queues: BTreeMap<u64, QueueRecord>,
    bindings: BTreeSet<BindingRecord>,
    /// Shared messages and how many entries still refer to each.
    shared: BTreeMap<u64, (Arc<Message>, u32)>,
    next_shared_id: u64,
    /// Durable queue entries by (queue, position).
    entries: BTreeMap<(u64, u64), (EntryBody, Option<u64>)>,
    /// Paged-out messages by (queue, position).
    paged: BTreeMap<(u64, u64), (Arc<Message>, Option<u64>)>,
}

impl MemoryState {
    /// Applies one operation.
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::PutVhost(v) => {
                self.vhosts.insert(v.clone());
            }
            StoreOp::DeleteVhost(v) => self.delete_vhost(v),
            StoreOp::PutUser(u) => {
                self.users.insert(u.name.clone(), u.clone());
            }
            StoreOp::DeleteUser(name) => self.delete_user(name),
            StoreOp::PutVhostLimits { vhost, limits } => self.put_vhost_limits(vhost, limits),
            StoreOp::PutUserLimits { user, limits } => self.put_user_limits(user, limits),
            StoreOp::PutPermission(p) => {
                self.permissions
                    .insert((p.user.clone(), p.vhost.clone()), p.clone());
            }
            StoreOp::DeletePermission { user, vhost } => {
                self.permissions.remove(&(user.clone(), vhost.clone()));
            }
            StoreOp::PutDelayed(d) => {
                self.delayed.insert(d.id, d.clone());
            }
            StoreOp::DeleteDelayed { id } => {
                self.delayed.remove(id);
            }
            StoreOp::PutTopicPermission(p) => {
                self.topic_permissions.insert(
                    (p.user.clone(), p.vhost.clone(), p.exchange.clone()),
                    p.clone(),
                );
            }
            StoreOp::DeleteTopicPermission {
                user,
                vhost,
                exchange,
            } => {
                self.topic_permissions
                    .remove(&(user.clone(), vhost.clone(), exchange.clone()));
            }
            StoreOp::PutPolicy(p) => {
                self.policies
                    .insert((p.operator, p.vhost.clone(), p.name.clone()), p.clone());
            }
            StoreOp::DeletePolicy {
                operator,
                vhost,
                name,
            } => {
                self.policies
                    .remove(&(*operator, vhost.clone(), name.clone()));
            }
            StoreOp::PutExchange(x) => {
                self.exchanges
                    .insert((x.vhost.clone(), x.name.clone()), x.clone());
            }
            StoreOp::DeleteExchange { vhost, name } => self.delete_exchange(vhost, name),
            StoreOp::PutQueue(q) => {
                self.queues.insert(q.id, q.clone());
            }
            StoreOp::DeleteQueue { vhost, name, id } => self.delete_queue(vhost, name, *id),
            StoreOp::PutBinding(b) => {
                self.bindings.insert(b.clone());
            }
            StoreOp::DeleteBinding(b) => {
                self.bindings.remove(b);
            }
            StoreOp::PutShared { id, message, refs } => self.put_shared(*id, message, *refs),
            StoreOp::Enqueue {
                queue,
                seq,
                body,
                expires_at_ms,
            } => {
                self.entries
                    .insert((*queue, *seq), (body.clone(), *expires_at_ms));
            }
            StoreOp::Dequeue { queue, seq, shared } => self.dequeue(*queue, *seq, *shared),
            StoreOp::PurgeFrom { queue, from_seq } => self.purge_from(*queue, *from_seq),
            StoreOp::PageOut {
                queue,
                seq,
                message,
                expires_at_ms,
            } => {
                self.paged
                    .insert((*queue, *seq), (message.clone(), *expires_at_ms));
            }
            StoreOp::DropPaged { queue, up_to_seq } => self.drop_paged(*queue, *up_to_seq),
        }
    }

    /// A vhost goes, with its limits, permissions, exchanges, queues and bindings.
    fn delete_vhost(&mut self, v: &str) {
        self.vhosts.remove(v);
        self.vhost_limits.remove(v);
        self.policies.retain(|(_, pv, _), _| pv != v);
        self.topic_permissions.retain(|(_, tv, _), _| tv != v);
        self.delayed.retain(|_, d| d.vhost != v);
        self.permissions.retain(|(_, pv), _| pv != v);
        self.exchanges.retain(|(xv, _), _| xv != v);
        let gone: Vec<u64> = self
            .queues
            .values()
            .filter(|q| q.vhost == v)
            .map(|q| q.id)
            .collect();
        for id in gone {
            self.drop_queue(id);
        }
        self.bindings.retain(|b| b.vhost != v);
    }

    /// A user goes, with its limits and permissions.
    fn delete_user(&mut self, name: &str) {
        self.users.remove(name);
        self.user_limits.remove(name);
        self.permissions.retain(|(u, _), _| u != name);
        self.topic_permissions.retain(|(u, _, _), _| u != name);
    }

    /// Sets a vhost's limits; no limit at all removes the record.
    fn put_vhost_limits(&mut self, vhost: &str, limits: &VhostLimits) {
        if limits.is_empty() {
            self.vhost_limits.remove(vhost);
        } else {
            self.vhost_limits.insert(vhost.to_string(), *limits);
        }
    }

    /// Sets a user's limits; no limit at all removes the record.
    fn put_user_limits(&mut self, user: &str, limits: &UserLimits) {
        if limits.is_empty() {
            self.user_limits.remove(user);
        } else {
            self.user_limits.insert(user.to_string(), *limits);
        }
    }

    /// An exchange goes, with the bindings from it and to it.
    fn delete_exchange(&mut self, vhost: &str, name: &str) {
        self.exchanges
            .remove(&(vhost.to_string(), name.to_string()));
        self.bindings.retain(|b| {
            !(b.vhost == vhost && (b.source == name || (b.to_exchange && b.destination == name)))
        });
    }

    /// A queue goes, with its contents and the bindings to it.
    fn delete_queue(&mut self, vhost: &str, name: &str, id: u64) {
        self.drop_queue(id);
        self.bindings
            .retain(|b| !(b.vhost == vhost && !b.to_exchange && b.destination == name));
    }

    /// A message stored once for the `refs` entries that will name it.
    fn put_shared(&mut self, id: u64, message: &Arc<Message>, refs: u32) {
        debug_assert!(refs >= 2, "a message in one queue is stored inline");
        self.shared.insert(id, (message.clone(), refs));
        self.next_shared_id = self.next_shared_id.max(id + 1);
    }

    /// An entry goes; a shared body loses a reference.
    fn dequeue(&mut self, queue: u64, seq: u64, shared: Option<u64>) {
        if let Some((body, _)) = self.entries.remove(&(queue, seq)) {
            debug_assert_eq!(
                match &body {
                    EntryBody::Shared(id) => Some(*id),
                    EntryBody::Inline(_) => None,
                },
                shared,
                "dequeue names the entry's shared message"
            );
            self.release(&body);
        }
    }

    /// A queue's paged messages up to `up_to_seq` go.
    fn drop_paged(&mut self, queue: u64, up_to_seq: u64) {
        self.paged
            .retain(|&(q, s), _| !(q == queue && s <= up_to_seq));
    }

    /// A queue's entries and paged messages from `from_seq` on go.
    fn purge_from(&mut self, queue: u64, from_seq: u64) {
        let gone: Vec<(u64, u64)> = self
            .entries
            .range((queue, from_seq)..=(queue, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some((body, _)) = self.entries.remove(&k) {
                self.release(&body);
            }
        }
        self.paged
            .retain(|&(q, s), _| !(q == queue && s >= from_seq));
    }

    /// An entry is gone: a shared body loses a reference.
    fn release(&mut self, body: &EntryBody) {
        if let EntryBody::Shared(id) = body {
            match self.shared.get_mut(id) {
                Some((_, refs)) if *refs > 1 => *refs -= 1,
                Some(_) => {
                    self.shared.remove(id);
                }
                None => debug_assert!(false, "entry refers to unknown shared message {id}"),
            }
        }
    }

    fn drop_queue(&mut self, id: u64) {
        self.queues.remove(&id);
        self.apply(&StoreOp::PurgeFrom {
            queue: id,
            from_seq: 0,
        });
    }

    /// Forgets paged messages, as a store does when it opens.
    pub fn discard_paged(&mut self) {
        self.paged.clear();
    }

    fn loaded(
        &self,
        seq: u64,
        body: &EntryBody,
        expires_at_ms: Option<u64>,
    ) -> Option<LoadedEntry> {
        let (message, shared) = match body {
            EntryBody::Inline(m) => (m.clone(), None),
            EntryBody::Shared(id) => (self.shared.get(id)?.0.clone(), Some(*id)),
        };
        Some(LoadedEntry {
            seq,
            message,
            shared,
            durable: true,
            expires_at_ms,
        })
    }

    /// Up to `max` entries of a queue from `from_seq`, durable and paged, in order, within
    /// `max_bytes` (as [`Store::load`] counts them).
    pub fn load(&self, queue: u64, from_seq: u64, max: usize, max_bytes: u64) -> Vec<LoadedEntry> {
        let range = (queue, from_seq)..=(queue, u64::MAX);
        let durable = self
            .entries
            .range(range.clone())
            .filter_map(|(&(_, seq), (body, exp))| self.loaded(seq, body, *exp));
        let paged = self
            .paged
            .range(range)
            .map(|(&(_, seq), (m, exp))| LoadedEntry {
                seq,
                message: m.clone(),
                shared: None,
                durable: false,
                expires_at_ms: *exp,
            });
        let mut all: Vec<LoadedEntry> = durable.chain(paged).collect();
        all.sort_by_key(|e| e.seq);
        let mut bytes = 0;
        let mut taken = 0;
        while taken < all.len() && load_may_take(taken, bytes, max, max_bytes) {
            bytes += load_cost(&all[taken]);
            taken += 1;
        }
        all.truncate(taken);
        all
    }

    /// Number of stored shared messages.
    pub fn shared_count(&self) -> usize {
        self.shared.len()
    }

    /// Number of paged messages.
    pub fn paged_count(&self) -> usize {
        self.paged.len()
    }

    /// Number of stored queue entries.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The state as the broker reads it back on start (paged messages are not part of
    /// it), each queue's head within `head_limit`. Entries whose queue is missing are
    /// left out.
    pub fn recovered(&self, head_limit: HeadLimit) -> Recovered {
        let mut contents = Vec::new();
        let mut budget = HeadBudget::new(head_limit);
        for id in self.queues.keys() {
            let mut q = RecoveredQueue {
                queue: *id,
                ..RecoveredQueue::default()
            };
            let mut head_bytes = 0;
            let mut head_open = true;
            for (&(_, seq), (body, exp)) in self.entries.range((*id, 0)..=(*id, u64::MAX)) {
                let Some(entry) = self.loaded(seq, body, *exp) else {
                    continue;
                };
                q.count += 1;
                q.body_bytes += entry.message.body_len();
                q.next_seq = seq + 1;
                let body_len = entry.message.body_len();
                head_open = head_open && budget.take(q.head.len(), head_bytes, body_len);
                if head_open {
                    head_bytes += HeadLimit::cost(body_len);
                    q.head.push(entry);
                }
            }
            if q.count > 0 {
                contents.push(q);
            }
        }
        Recovered {
            vhosts: self.vhosts.iter().cloned().collect(),
            users: self.users.values().cloned().collect(),
            permissions: self.permissions.values().cloned().collect(),
            vhost_limits: self
                .vhost_limits
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            user_limits: self
                .user_limits
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            policies: self.policies.values().cloned().collect(),
            topic_permissions: self.topic_permissions.values().cloned().collect(),
            delayed: self.delayed.values().cloned().collect(),
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings: self.bindings.iter().cloned().collect(),
            contents,
            next_shared_id: self.next_shared_id,
        }
    }
}

/// A [`Store`] kept in memory: everything written is "synced" and nothing survives the
/// process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: MemoryState,
    /// Batches written since the last sync.
    unsynced: usize,
}

impl MemoryStore {
    /// The state written so far.
    pub fn state(&self) -> &MemoryState {
        &self.state
    }
}

impl Store for MemoryStore {
    fn recover(&mut self, head_limit: HeadLimit) -> Result<Recovered, StoreError> {
        self.state.discard_paged();
        Ok(self.state.recovered(head_limit))
    }

    fn load(
        &mut self,
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        Ok(self.state.load(queue, from_seq, max, max_bytes))
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            self.state.apply(op);
        }
        self.unsynced += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.unsynced = 0;
        Ok(())
    }

    fn reopen(&mut self) -> Result<usize, StoreError> {
        // Memory never fails a write: everything written is held.
        Ok(std::mem::take(&mut self.unsynced))
    }
}
