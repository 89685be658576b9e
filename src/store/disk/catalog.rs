//! The store's in-memory copy of its `meta` keyspace, the translation of each metadata
//! [`StoreOp`] into key writes, and the staged writes of a batch (`Staged`).
//!
//! Deleting a vhost, a user, an exchange or a queue also deletes records that refer to it
//! (see [`crate::store::memory::MemoryState`] for the meaning). Those records cannot be found
//! by a key prefix alone, and some may have been written earlier in the same batch, which
//! fjall cannot read back before the batch commits. So the store keeps every metadata record
//! in memory (metadata is small next to messages) and finds the dependants there.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::store::{
    BindingRecord, DelayedRecord, ExchangeRecord, PermissionRecord, PolicyRecord, QueueRecord,
    Recovered, RecoveredQueue, StoreOp, TopicPermissionRecord, UserLimits, UserRecord, VhostLimits,
};

use super::record::{self, RecordError, tag};

/// The keyspaces of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Vhosts, users, permissions, exchanges, queues, bindings, generations, the shared
    /// message id counter, format.
    Meta,
    /// Shared message id to content.
    Messages,
    /// Shared message id to its reference count and body length.
    Refs,
    /// (queue id, generation, seq) to an entry: header, and the message unless apart.
    Entries,
    /// (queue id, generation, seq) to the message of an entry whose value is too big for
    /// `entries`.
    Bodies,
    /// (queue id, generation, seq) to a paged message; emptied whenever the store opens.
    Paged,
}

impl Space {
    /// Every keyspace, in the order they are opened.
    pub const ALL: [Space; 6] = [
        Space::Meta,
        Space::Messages,
        Space::Refs,
        Space::Entries,
        Space::Bodies,
        Space::Paged,
    ];

    /// The keyspace's name in fjall.
    pub fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Messages => "messages",
            Space::Refs => "refs",
            Space::Entries => "entries",
            Space::Bodies => "bodies",
            Space::Paged => "paged",
        }
    }
}

/// The key writes of one batch. A key written twice keeps its last write, so that a batch
/// such as "enqueue at seq 5, dequeue seq 5" leaves no entry whatever order fjall would
/// apply two writes of the same key carrying the same sequence number.
#[derive(Debug, Default)]
pub struct Staged {
    writes: BTreeMap<(Space, Vec<u8>), Option<Vec<u8>>>,
}

impl Staged {
    /// Inserts `value` under `key`.
    pub fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert((space, key), Some(value));
    }

    /// Removes `key`.
    pub fn delete(&mut self, space: Space, key: Vec<u8>) {
        self.writes.insert((space, key), None);
    }

    /// The write staged for `key`, if any: `Some(None)` for a removal.
    pub fn get(&self, space: Space, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes
            .get(&(space, key.to_vec()))
            .map(|v| v.as_deref())
    }

    /// The writes staged for keys in `from..=to`, in key order.
    pub fn range(&self, space: Space, from: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.writes
            .range((space, from.to_vec())..=(space, to.to_vec()))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// The writes, one per key: `Some(value)` to insert, `None` to remove.
    pub fn into_writes(self) -> impl Iterator<Item = ((Space, Vec<u8>), Option<Vec<u8>>)> {
        self.writes.into_iter()
    }

    /// Number of distinct keys written.
    pub fn len(&self) -> usize {
        self.writes.len()
    }
}

/// Metadata records, ordered as [`crate::store::memory::MemoryState`] orders them, plus the
/// entry generation of every queue id deleted whose stale entries may still be on disk, and
/// the shared message id counter.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    vhosts: BTreeSet<String>,
    users: BTreeMap<String, UserRecord>,
    permissions: BTreeMap<(String, String), PermissionRecord>,
    vhost_limits: BTreeMap<String, VhostLimits>,
    user_limits: BTreeMap<String, UserLimits>,
    /// Policies by (operator, vhost, name).
    policies: BTreeMap<(bool, String, String), PolicyRecord>,
    /// Topic permissions by (user, vhost, exchange).
    topic_permissions: BTreeMap<(String, String, String), TopicPermissionRecord>,
    /// Delayed messages by id (their messages shared with the broker's copies).
    delayed: BTreeMap<u64, DelayedRecord>,
    exchanges: BTreeMap<(String, String), ExchangeRecord>,
    queues: BTreeMap<u64, QueueRecord>,
    bindings: BTreeSet<BindingRecord>,
    /// Queue id to its current entry generation; absent means 0. An entry is live only if
    /// it carries its queue id's current generation: deleting a queue bumps the generation
    /// instead of deleting its entries in the writer's batch.
    generations: HashMap<u64, u64>,
    /// One past the highest shared message id ever stored.
    next_shared_id: u64,
}

impl Catalog {
    /// Adds one `meta` record read from disk. The format key is handled by the caller.
    pub fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), RecordError> {
        match key.first().copied() {
            Some(tag::VHOST) => {
                self.vhosts.insert(record::decode_vhost(key, value)?);
            }
            Some(tag::USER) => {
                let u = record::decode_user(key, value)?;
                self.users.insert(u.name.clone(), u);
            }
            Some(tag::PERMISSION) => {
                let p = record::decode_permission(key, value)?;
                self.permissions
                    .insert((p.user.clone(), p.vhost.clone()), p);
            }
            Some(tag::VHOST_LIMITS) => {
                let (vhost, limits) = record::decode_vhost_limits(key, value)?;
                self.vhost_limits.insert(vhost, limits);
            }
            Some(tag::USER_LIMITS) => {
                let (user, limits) = record::decode_user_limits(key, value)?;
                self.user_limits.insert(user, limits);
            }
            Some(tag::DELAYED) => {
                let d = record::decode_delayed(key, value)?;
                self.delayed.insert(d.id, d);
            }
            Some(tag::TOPIC_PERMISSION) => {
                let p = record::decode_topic_permission(key, value)?;
                self.topic_permissions
                    .insert((p.user.clone(), p.vhost.clone(), p.exchange.clone()), p);
            }
            Some(tag::POLICY) => {
                let p = record::decode_policy(key, value)?;
                self.policies
                    .insert((p.operator, p.vhost.clone(), p.name.clone()), p);
            }
            Some(tag::EXCHANGE) => {
                let x = record::decode_exchange(key, value)?;
                self.exchanges.insert((x.vhost.clone(), x.name.clone()), x);
            }
            Some(tag::QUEUE) => {
                let q = record::decode_queue(key, value)?;
                self.queues.insert(q.id, q);
            }
            Some(tag::BINDING) => {
                self.bindings.insert(record::decode_binding(key, value)?);
            }
            Some(tag::GENERATION) => {
                let id = record::id_of_key(key)?;
                let generation = record::decode_counter(value)?;
                if generation == 0 {
                    // Generation 0 is never written: it is the absence of a record.
                    return Err(RecordError::KeyMismatch);
                }
                self.generations.insert(id, generation);
            }
            Some(tag::NEXT_SHARED) if key.len() == 1 => {
                self.next_shared_id = record::decode_counter(value)?;
            }
            _ => return Err(RecordError::BadKey),
        }
        Ok(())
    }

    /// The current entry generation of a queue id.
    pub fn generation(&self, queue: u64) -> u64 {
        self.generations.get(&queue).copied().unwrap_or(0)
    }

    /// Queue ids whose generation is recorded.
    pub fn generation_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.generations.keys().copied()
    }

    /// Forgets a queue id's generation once no entry of that id is left on disk (its
    /// record is deleted by the caller in the same batch).
    pub fn forget_generation(&mut self, queue: u64) {
        self.generations.remove(&queue);
    }

    /// Notes that shared message `id` was stored.
    pub fn note_shared(&mut self, id: u64, out: &mut Staged) {
        let next = id.saturating_add(1);
        if next > self.next_shared_id {
            self.next_shared_id = next;
            out.put(
                Space::Meta,
                record::next_shared_key(),
                record::encode_counter(next),
            );
        }
    }

    /// Whether a queue record exists.
    pub fn has_queue(&self, id: u64) -> bool {
        self.queues.contains_key(&id)
    }

    /// Applies one metadata operation to the catalog and stages its key writes. Queue ids
    /// whose contents became garbage are pushed to `dropped`.
    pub fn apply(&mut self, op: &StoreOp, out: &mut Staged, dropped: &mut Vec<u64>) {
        match op {
            StoreOp::PutVhost(v) => self.put_vhost(v, out),
            StoreOp::DeleteVhost(v) => self.delete_vhost(v, out, dropped),
            StoreOp::PutUser(u) => self.put_user(u, out),
            StoreOp::DeleteUser(name) => self.delete_user(name, out),
            StoreOp::PutVhostLimits { vhost, limits } => self.put_vhost_limits(vhost, limits, out),
            StoreOp::PutUserLimits { user, limits } => self.put_user_limits(user, limits, out),
            StoreOp::PutPermission(p) => self.put_permission(p, out),
            StoreOp::DeletePermission { user, vhost } => self.delete_permission(user, vhost, out),
            StoreOp::PutDelayed(d) => {
                out.put(
                    Space::Meta,
                    record::delayed_key(d.id),
                    record::encode_delayed(d),
                );
                self.delayed.insert(d.id, d.clone());
            }
            StoreOp::DeleteDelayed { id } => {
                if self.delayed.remove(id).is_some() {
                    out.delete(Space::Meta, record::delayed_key(*id));
                }
            }
            StoreOp::PutTopicPermission(p) => {
                let key = record::topic_permission_key(&p.user, &p.vhost, &p.exchange);
                out.put(Space::Meta, key, record::encode_topic_permission(p));
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
                let key = (user.clone(), vhost.clone(), exchange.clone());
                if self.topic_permissions.remove(&key).is_some() {
                    out.delete(
                        Space::Meta,
                        record::topic_permission_key(user, vhost, exchange),
                    );
                }
            }
            StoreOp::PutPolicy(p) => {
                let key = record::policy_key(p.operator, &p.vhost, &p.name);
                out.put(Space::Meta, key, record::encode_policy(p));
                self.policies
                    .insert((p.operator, p.vhost.clone(), p.name.clone()), p.clone());
            }
            StoreOp::DeletePolicy {
                operator,
                vhost,
                name,
            } => {
                out.delete(Space::Meta, record::policy_key(*operator, vhost, name));
                self.policies
                    .remove(&(*operator, vhost.clone(), name.clone()));
            }
            StoreOp::PutExchange(x) => self.put_exchange(x, out),
            StoreOp::DeleteExchange { vhost, name } => self.delete_exchange(vhost, name, out),
            StoreOp::PutQueue(q) => self.put_queue(q, out),
            StoreOp::DeleteQueue { vhost, name, id } => {
                self.delete_queue(vhost, name, *id, out, dropped)
            }
            StoreOp::PutBinding(b) => self.put_binding(b, out),
            StoreOp::DeleteBinding(b) => self.delete_binding(b, out),
            StoreOp::PutShared { .. }
            | StoreOp::Enqueue { .. }
            | StoreOp::Dequeue { .. }
            | StoreOp::PurgeFrom { .. }
            | StoreOp::PageOut { .. }
            | StoreOp::DropPaged { .. } => {
                debug_assert!(false, "queue contents are not catalog records: {op:?}");
            }
        }
    }

    fn put_vhost(&mut self, v: &str, out: &mut Staged) {
        self.vhosts.insert(v.to_string());
        out.put(Space::Meta, record::vhost_key(v), record::encode_vhost());
    }

    fn put_user(&mut self, u: &UserRecord, out: &mut Staged) {
        self.users.insert(u.name.clone(), u.clone());
        out.put(
            Space::Meta,
            record::user_key(&u.name),
            record::encode_user(u),
        );
    }

    /// Deletes a user with its limits and permissions.
    fn delete_user(&mut self, name: &str, out: &mut Staged) {
        self.users.remove(name);
        out.delete(Space::Meta, record::user_key(name));
        if self.user_limits.remove(name).is_some() {
            out.delete(Space::Meta, record::user_limits_key(name));
        }
        self.delete_permissions_where(|(user, _)| user == name, out);
        drop_records(
            &mut self.topic_permissions,
            |(user, _, _), _| user == name,
            |(u, tv, x)| record::topic_permission_key(u, tv, x),
            out,
        );
    }

    /// Sets a vhost's limits; no limit at all deletes the record.
    fn put_vhost_limits(&mut self, vhost: &str, limits: &VhostLimits, out: &mut Staged) {
        let key = record::vhost_limits_key(vhost);
        if limits.is_empty() {
            self.vhost_limits.remove(vhost);
            out.delete(Space::Meta, key);
        } else {
            self.vhost_limits.insert(vhost.to_string(), *limits);
            out.put(Space::Meta, key, record::encode_vhost_limits(limits));
        }
    }

    /// Sets a user's limits; no limit at all deletes the record.
    fn put_user_limits(&mut self, user: &str, limits: &UserLimits, out: &mut Staged) {
        let key = record::user_limits_key(user);
        if limits.is_empty() {
            self.user_limits.remove(user);
            out.delete(Space::Meta, key);
        } else {
            self.user_limits.insert(user.to_string(), *limits);
            out.put(Space::Meta, key, record::encode_user_limits(limits));
        }
    }

    fn put_permission(&mut self, p: &PermissionRecord, out: &mut Staged) {
        self.permissions
            .insert((p.user.clone(), p.vhost.clone()), p.clone());
        let key = record::permission_key(&p.user, &p.vhost);
        out.put(Space::Meta, key, record::encode_permission(p));
    }

    fn delete_permission(&mut self, user: &str, vhost: &str, out: &mut Staged) {
        self.permissions
            .remove(&(user.to_string(), vhost.to_string()));
        out.delete(Space::Meta, record::permission_key(user, vhost));
    }

    fn put_exchange(&mut self, x: &ExchangeRecord, out: &mut Staged) {
        self.exchanges
            .insert((x.vhost.clone(), x.name.clone()), x.clone());
        let key = record::exchange_key(&x.vhost, &x.name);
        out.put(Space::Meta, key, record::encode_exchange(x));
    }

    /// Deletes an exchange with the bindings from it and to it.
    fn delete_exchange(&mut self, vhost: &str, name: &str, out: &mut Staged) {
        self.exchanges
            .remove(&(vhost.to_string(), name.to_string()));
        out.delete(Space::Meta, record::exchange_key(vhost, name));
        self.delete_bindings_where(
            |b| b.vhost == vhost && (b.source == name || (b.to_exchange && b.destination == name)),
            out,
        );
    }

    fn put_queue(&mut self, q: &QueueRecord, out: &mut Staged) {
        self.queues.insert(q.id, q.clone());
        out.put(
            Space::Meta,
            record::queue_key(q.id),
            record::encode_queue(q),
        );
    }

    /// Deletes a queue (see [`Catalog::drop_queue`]) with the bindings to it.
    fn delete_queue(
        &mut self,
        vhost: &str,
        name: &str,
        id: u64,
        out: &mut Staged,
        dropped: &mut Vec<u64>,
    ) {
        self.drop_queue(id, out, dropped);
        self.delete_bindings_where(
            |b| b.vhost == vhost && !b.to_exchange && b.destination == name,
            out,
        );
    }

    fn put_binding(&mut self, b: &BindingRecord, out: &mut Staged) {
        self.bindings.insert(b.clone());
        out.put(
            Space::Meta,
            record::binding_key(b),
            record::encode_binding(b),
        );
    }

    fn delete_binding(&mut self, b: &BindingRecord, out: &mut Staged) {
        self.bindings.remove(b);
        out.delete(Space::Meta, record::binding_key(b));
    }

    fn delete_vhost(&mut self, v: &str, out: &mut Staged, dropped: &mut Vec<u64>) {
        self.vhosts.remove(v);
        out.delete(Space::Meta, record::vhost_key(v));
        if self.vhost_limits.remove(v).is_some() {
            out.delete(Space::Meta, record::vhost_limits_key(v));
        }
        drop_records(
            &mut self.policies,
            |(_, pv, _), _| pv == v,
            |(o, pv, n)| record::policy_key(*o, pv, n),
            out,
        );
        drop_records(
            &mut self.topic_permissions,
            |(_, tv, _), _| tv == v,
            |(u, tv, x)| record::topic_permission_key(u, tv, x),
            out,
        );
        drop_records(
            &mut self.delayed,
            |_, d| d.vhost == v,
            |id| record::delayed_key(*id),
            out,
        );
        self.delete_permissions_where(|(_, pv)| pv == v, out);
        let exchanges: Vec<(String, String)> = self
            .exchanges
            .keys()
            .filter(|(xv, _)| xv == v)
            .cloned()
            .collect();
        for (xv, name) in exchanges {
            out.delete(Space::Meta, record::exchange_key(&xv, &name));
            self.exchanges.remove(&(xv, name));
        }
        let queues: Vec<u64> = self
            .queues
            .values()
            .filter(|q| q.vhost == v)
            .map(|q| q.id)
            .collect();
        for id in queues {
            self.drop_queue(id, out, dropped);
        }
        self.delete_bindings_where(|b| b.vhost == v, out);
    }

    /// Deletes a queue record and makes its entries and paged messages garbage by moving the
    /// id to a new generation: O(1) in the writer however many the queue holds.
    fn drop_queue(&mut self, id: u64, out: &mut Staged, dropped: &mut Vec<u64>) {
        self.queues.remove(&id);
        out.delete(Space::Meta, record::queue_key(id));
        let generation = self.generation(id) + 1;
        self.generations.insert(id, generation);
        out.put(
            Space::Meta,
            record::generation_key(id),
            record::encode_counter(generation),
        );
        dropped.push(id);
    }

    fn delete_permissions_where(
        &mut self,
        f: impl Fn(&(String, String)) -> bool,
        out: &mut Staged,
    ) {
        let gone: Vec<(String, String)> =
            self.permissions.keys().filter(|k| f(k)).cloned().collect();
        for k in gone {
            out.delete(Space::Meta, record::permission_key(&k.0, &k.1));
            self.permissions.remove(&k);
        }
    }

    fn delete_bindings_where(&mut self, f: impl Fn(&BindingRecord) -> bool, out: &mut Staged) {
        let gone: Vec<BindingRecord> = self.bindings.iter().filter(|b| f(b)).cloned().collect();
        for b in gone {
            out.delete(Space::Meta, record::binding_key(&b));
            self.bindings.remove(&b);
        }
    }

    /// Everything durable, with the contents of queues (already filtered, by queue id).
    pub fn recovered(&self, contents: Vec<RecoveredQueue>) -> Recovered {
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

/// Removes the records `gone` picks from `map` and stages the deletion of each under the
/// key `key_of` gives it.
fn drop_records<K: Ord + Clone, V>(
    map: &mut BTreeMap<K, V>,
    gone: impl Fn(&K, &V) -> bool,
    key_of: impl Fn(&K) -> Vec<u8>,
    out: &mut Staged,
) {
    let keys: Vec<K> = map
        .iter()
        .filter(|(k, v)| gone(k, v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in keys {
        out.delete(Space::Meta, key_of(&k));
        map.remove(&k);
    }
}
