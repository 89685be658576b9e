//! Durable state held in memory: the meaning of a sequence of [`StoreOp`] batches.
//!
//! [`MemoryState`] applies batches and reads back a [`Recovered`]. The simulator's disk
//! replays the batches that survived a crash through it, and [`MemoryStore`] is a
//! [`Store`] with no disk at all (for tests and for running without persistence).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::proto::command::Message;

use super::*;

/// Durable state after some batches were applied.
#[derive(Debug, Clone, Default)]
pub struct MemoryState {
    vhosts: BTreeSet<String>,
    users: BTreeMap<String, UserRecord>,
    permissions: BTreeMap<(String, String), PermissionRecord>,
    exchanges: BTreeMap<(String, String), ExchangeRecord>,
    queues: BTreeMap<u64, QueueRecord>,
    bindings: BTreeSet<BindingRecord>,
    messages: HashMap<u64, Arc<Message>>,
    entries: BTreeMap<(u64, u64), u64>,
}

impl MemoryState {
    /// Applies one operation.
    pub fn apply(&mut self, op: &StoreOp) {
        match op {
            StoreOp::PutVhost(v) => {
                self.vhosts.insert(v.clone());
            }
            StoreOp::DeleteVhost(v) => {
                self.vhosts.remove(v);
                self.permissions.retain(|(_, pv), _| pv != v);
                self.exchanges.retain(|(xv, _), _| xv != v);
                let gone: Vec<u64> = self
                    .queues
                    .values()
                    .filter(|q| &q.vhost == v)
                    .map(|q| q.id)
                    .collect();
                for id in gone {
                    self.drop_queue(id);
                }
                self.bindings.retain(|b| &b.vhost != v);
            }
            StoreOp::PutUser(u) => {
                self.users.insert(u.name.clone(), u.clone());
            }
            StoreOp::DeleteUser(name) => {
                self.users.remove(name);
                self.permissions.retain(|(u, _), _| u != name);
            }
            StoreOp::PutPermission(p) => {
                self.permissions
                    .insert((p.user.clone(), p.vhost.clone()), p.clone());
            }
            StoreOp::DeletePermission { user, vhost } => {
                self.permissions.remove(&(user.clone(), vhost.clone()));
            }
            StoreOp::PutExchange(x) => {
                self.exchanges
                    .insert((x.vhost.clone(), x.name.clone()), x.clone());
            }
            StoreOp::DeleteExchange { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                self.bindings.retain(|b| {
                    !(&b.vhost == vhost
                        && (&b.source == name || (b.to_exchange && &b.destination == name)))
                });
            }
            StoreOp::PutQueue(q) => {
                self.queues.insert(q.id, q.clone());
            }
            StoreOp::DeleteQueue { vhost, name, id } => {
                self.drop_queue(*id);
                self.bindings
                    .retain(|b| !(&b.vhost == vhost && !b.to_exchange && &b.destination == name));
            }
            StoreOp::PutBinding(b) => {
                self.bindings.insert(b.clone());
            }
            StoreOp::DeleteBinding(b) => {
                self.bindings.remove(b);
            }
            StoreOp::PutMessage { id, message } => {
                self.messages.insert(*id, message.clone());
            }
            StoreOp::DeleteMessage { id } => {
                self.messages.remove(id);
            }
            StoreOp::Enqueue {
                queue,
                seq,
                message,
            } => {
                self.entries.insert((*queue, *seq), *message);
            }
            StoreOp::Dequeue { queue, seq } => {
                self.entries.remove(&(*queue, *seq));
            }
        }
    }

    fn drop_queue(&mut self, id: u64) {
        self.queues.remove(&id);
        let keys: Vec<(u64, u64)> = self
            .entries
            .range((id, 0)..=(id, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.entries.remove(&k);
        }
    }

    /// Number of stored message bodies.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Number of stored queue entries.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// The state as the broker reads it back on start. Entries whose queue or message is
    /// missing are left out.
    pub fn recovered(&self) -> Recovered {
        let entries = self
            .entries
            .iter()
            .filter(|((q, _), _)| self.queues.contains_key(q))
            .filter_map(|(&(queue, seq), &message_id)| {
                let message = self.messages.get(&message_id)?.clone();
                Some(RecoveredEntry {
                    queue,
                    seq,
                    message_id,
                    message,
                })
            })
            .collect();
        Recovered {
            vhosts: self.vhosts.iter().cloned().collect(),
            users: self.users.values().cloned().collect(),
            permissions: self.permissions.values().cloned().collect(),
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings: self.bindings.iter().cloned().collect(),
            entries,
        }
    }
}

/// A [`Store`] kept in memory: everything written is "synced" and nothing survives the
/// process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: MemoryState,
}

impl MemoryStore {
    /// The state written so far.
    pub fn state(&self) -> &MemoryState {
        &self.state
    }
}

impl Store for MemoryStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        Ok(self.state.recovered())
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        for op in ops {
            self.state.apply(op);
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
