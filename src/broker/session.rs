//! Connection and channel lifecycles: login, vhost access, opening and closing, and the
//! first-start defaults and recovery of durable state.

use rand::RngCore;

use crate::proto::command::{ConnId, Login, Reply, capability};
use crate::proto::constants::ACCESS_REFUSED;
use crate::proto::method::{ChannelOpenOk, ConnectionClose, ConnectionOpenOk, Method};
use crate::proto::table::FieldTable;
use crate::store::{
    BindingRecord, ExchangeRecord, PermissionRecord, QueueRecord, Recovered, RecoveredQueue,
    StoreOp, UserRecord,
};

use super::Broker;
use super::auth::{Permissions, TopicPermission, hash_password};
use super::channel::{Channel, Mode, SyncWait};
use super::error::not_allowed;
use super::exchange::{Binding, Destination, Exchange, ExchangeKind};
use super::policy::{Policy, Target};
use super::queue::{Declaration, Queue, QueueSettings, QueuedMessage};
use super::vhost::VHost;

impl Broker {
    /// Creates the default vhost and user with full permissions, and persists them.
    pub(super) fn create_defaults(&mut self) {
        let vhost = self.config.default_vhost.clone();
        self.topology
            .vhosts
            .insert(vhost.clone(), VHost::new(&vhost));
        self.round.journal.push(StoreOp::PutVhost(vhost.clone()));
        let mut salt = [0u8; 4];
        self.rng.fill_bytes(&mut salt);
        let user = UserRecord {
            name: self.config.default_user.clone(),
            password_hash: hash_password(&self.config.default_password, salt),
            tags: vec!["administrator".into()],
        };
        self.accounts.users.put(user.clone());
        self.round.journal.push(StoreOp::PutUser(user));
        let perms = PermissionRecord {
            user: self.config.default_user.clone(),
            vhost,
            configure: ".*".into(),
            write: ".*".into(),
            read: ".*".into(),
        };
        if let Ok(p) = Permissions::new(perms.clone()) {
            self.accounts.users.set_permissions(p);
        }
        self.round.journal.push(StoreOp::PutPermission(perms));
    }

    /// Rebuilds durable state read back from the store.
    pub(super) fn restore(&mut self, recovered: Recovered) {
        for v in &recovered.vhosts {
            self.topology.vhosts.insert(v.clone(), VHost::new(v));
        }
        for u in recovered.users {
            self.accounts.users.put(u);
        }
        for p in recovered.permissions {
            if let Ok(p) = Permissions::new(p) {
                self.accounts.users.set_permissions(p);
            }
        }
        for p in recovered.topic_permissions {
            if let Ok(p) = TopicPermission::new(p) {
                self.accounts.users.set_topic(p);
            }
        }
        self.restore_limits(&recovered.vhost_limits, &recovered.user_limits);
        self.restore_policies(recovered.policies);
        self.restore_exchanges(recovered.exchanges);
        self.restore_queues(recovered.queues);
        self.restore_bindings(recovered.bindings);
        self.topology.next_shared_id = self.topology.next_shared_id.max(recovered.next_shared_id);
        self.restore_contents(recovered.contents);
        self.restore_delayed(recovered.delayed);
    }

    /// Puts the stored policies back in their vhosts, before the queues and exchanges
    /// they apply to.
    fn restore_policies(&mut self, policies: Vec<crate::store::PolicyRecord>) {
        for p in policies {
            let Some(vhost) = self.topology.vhosts.get_mut(&p.vhost) else {
                continue;
            };
            if vhost.policies.len() >= super::policy::MAX_POLICIES_PER_VHOST {
                continue;
            }
            match Policy::new(p) {
                Ok(p) => {
                    vhost.policies.put(p);
                }
                Err(e) => {
                    tracing::error!(error = %e, "a recovered policy is invalid; it is not applied")
                }
            }
        }
        // The predeclared exchanges exist already.
        for vhost in self.topology.vhosts.values_mut() {
            for (name, x) in vhost.exchanges.iter_mut() {
                vhost
                    .policies
                    .applied(name, Target::Exchange)
                    .apply_to_exchange(x);
            }
        }
    }

    /// Recreates the durable exchanges (the built-in ones exist already).
    fn restore_exchanges(&mut self, exchanges: Vec<ExchangeRecord>) {
        for x in exchanges {
            let Some(vhost) = self.topology.vhosts.get_mut(&x.vhost) else {
                continue;
            };
            let Ok((kind, delayed)) = ExchangeKind::parse_declared(&x.kind, &x.arguments) else {
                continue;
            };
            if vhost.exchanges.get(&x.name).is_some_and(|e| e.builtin) {
                continue;
            }
            let mut e = Exchange::new(&x.name, kind, true, x.auto_delete, x.internal, x.arguments);
            e.delayed = delayed;
            vhost
                .policies
                .applied(&x.name, Target::Exchange)
                .apply_to_exchange(&mut e);
            vhost.exchanges.insert(x.name, e);
        }
    }

    /// Recreates the durable queues, empty; [`Broker::restore_contents`] fills them.
    fn restore_queues(&mut self, queues: Vec<QueueRecord>) {
        for q in queues {
            let Some(vhost) = self.topology.vhosts.get_mut(&q.vhost) else {
                continue;
            };
            // Arguments were validated when the queue was declared.
            let settings = match QueueSettings::read(&q.arguments, &q.name, &q.vhost) {
                Ok(settings) => settings,
                Err(e) => {
                    tracing::error!(
                        queue = %q.name,
                        vhost = %q.vhost,
                        error = %e.text,
                        "a recovered queue's arguments cannot be read; it runs without them"
                    );
                    QueueSettings::default()
                }
            };
            vhost.queues.insert(q.name.clone(), q.id);
            self.topology.next_queue_id = self.topology.next_queue_id.max(q.id + 1);
            let applied = vhost.policies.applied(&q.name, Target::Queue);
            let mut decl = Declaration {
                name: q.name,
                vhost: q.vhost,
                durable: true,
                exclusive_owner: None,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
                declared: settings.clone(),
                policy: Default::default(),
                settings,
            };
            applied.apply_to_queue(&mut decl);
            let queue = Queue::new(q.id, decl, self.topology.meter.clone(), self.now_ms);
            self.topology.queues.insert(q.id, queue);
        }
    }

    /// Rebinds the durable bindings whose source and destination were recovered.
    fn restore_bindings(&mut self, bindings: Vec<BindingRecord>) {
        for b in bindings {
            let Some(vhost) = self.topology.vhosts.get_mut(&b.vhost) else {
                continue;
            };
            let destination = if b.to_exchange {
                if !vhost.exchanges.contains_key(&b.destination) {
                    continue;
                }
                Destination::Exchange(b.destination.clone())
            } else {
                match vhost.queues.get(&b.destination) {
                    Some(id) => Destination::Queue(*id),
                    None => continue,
                }
            };
            let arguments = FieldTable::decode(&b.arguments).unwrap_or_default();
            let Some(x) = vhost.exchanges.get_mut(&b.source) else {
                continue;
            };
            x.bind(Binding {
                destination: destination.clone(),
                routing_key: b.routing_key,
                arguments,
            });
            match destination {
                Destination::Queue(id) => {
                    if let Some(q) = self.topology.queues.get_mut(&id) {
                        q.bound_from.insert(b.source);
                    }
                }
                Destination::Exchange(name) => {
                    if let Some(d) = vhost.exchanges.get_mut(&name) {
                        d.bound_from.insert(b.source);
                    }
                }
            }
        }
    }

    /// Puts the recovered messages back in their queues: the head read from the store in
    /// memory, the rest as the queue's paged tail.
    fn restore_contents(&mut self, contents: Vec<RecoveredQueue>) {
        for content in contents {
            let Some(q) = self.topology.queues.get_mut(&content.queue) else {
                continue;
            };
            // Whether a message was delivered before the restart is not recorded; like
            // RabbitMQ for messages it cannot vouch for, flag every message of the last run
            // so consumers treat it with care.
            q.messages.redelivered_below_seq = content.next_seq;
            q.messages.advance_seq(content.next_seq);
            let (mut head_count, mut head_bytes, mut last) = (0u64, 0u64, None);
            for e in content.head {
                head_count += 1;
                head_bytes += e.message.body_len();
                last = Some(e.seq);
                q.messages.restore(QueuedMessage {
                    seq: e.seq,
                    cost: super::memory_cost(&e.message),
                    message: e.message,
                    redelivered: true,
                    stored: e.durable,
                    expires_at_ms: e.expires_at_ms,
                    priority: 0,
                    shared: e.shared,
                    allowance: crate::broker::death::Allowance::FRESH,
                    delivery_count: 0,
                });
            }
            let rest = content.count.saturating_sub(head_count);
            if rest > 0 {
                let from_seq = last.map_or(0, |s| s + 1);
                q.messages.restore_paged(
                    rest,
                    content.body_bytes.saturating_sub(head_bytes),
                    from_seq,
                );
            }
        }
    }

    // ----- connection -----

    pub(super) fn login(&mut self, conn: ConnId, login: Login) {
        let Some(c) = self.sessions.conns.get(&conn) else {
            return;
        };
        if !self.node.app_running {
            // Stopped by `warren ctl stop_app`: like a node without listeners.
            self.send(conn, Reply::Disconnect);
            self.close_connection(conn);
            return;
        }
        let loopback_only = self.config.loopback_users.contains(&login.username);
        let accepted = self
            .accounts
            .users
            .authenticate(&login.username, &login.password)
            .is_some()
            && (!loopback_only || c.info.loopback);
        if !accepted {
            let close_capable = login.has_capability("authentication_failure_close");
            if close_capable {
                let text = format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    login.mechanism
                );
                let close = ConnectionClose {
                    reply_code: ACCESS_REFUSED,
                    reply_text: text,
                    class_id: 0,
                    method_id: 0,
                };
                self.send_method(conn, 0, Method::ConnectionClose(close));
            } else {
                self.send(conn, Reply::Disconnect);
            }
            self.close_connection(conn);
            return;
        }
        if let Some(c) = self.sessions.conns.get_mut(&conn) {
            c.cancel_notify = capability(&login.client_properties, "consumer_cancel_notify");
            c.blocked_notify = capability(&login.client_properties, "connection.blocked");
            c.client_properties = login.client_properties;
            c.user = Some(login.username.into());
        }
        self.send(conn, Reply::LoginOk);
    }

    pub(super) fn open_vhost(&mut self, conn: ConnId, vhost: &str) {
        let Some(user) = self.sessions.conns.get(&conn).and_then(|c| c.user.clone()) else {
            return;
        };
        let result = if !self.topology.vhosts.contains_key(vhost) {
            Err(not_allowed(format!("vhost {vhost} not found")))
        } else if let Err(e) = self.check_connection_limits(&user, vhost) {
            Err(e)
        } else if self.accounts.users.permissions(&user, vhost).is_none() {
            Err(not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )))
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                if let Some(c) = self.sessions.conns.get_mut(&conn) {
                    c.vhost = Some(vhost.into());
                }
                self.connection_opened(conn);
                self.send_method(
                    conn,
                    0,
                    Method::ConnectionOpenOk(ConnectionOpenOk::default()),
                );
            }
            Err(e) => self.fail(conn, 0, e.on_ids(10, 40)),
        }
    }

    /// Releases everything a connection holds. Safe to call for a connection already
    /// gone.
    pub(super) fn close_connection(&mut self, conn: ConnId) {
        let Some(c) = self.sessions.conns.get(&conn) else {
            return;
        };
        let mut channels: Vec<u16> = c.channels.keys().copied().collect();
        channels.sort_unstable();
        for ch in channels {
            self.close_channel(conn, ch);
        }
        let exclusive = self
            .sessions
            .conns
            .get_mut(&conn)
            .map(|c| std::mem::take(&mut c.exclusive_queues))
            .unwrap_or_default();
        for q in exclusive {
            self.delete_queue(q);
        }
        self.connection_closed(conn);
        self.sessions.conns.remove(&conn);
        self.sessions.held.remove(&conn);
    }

    pub(super) fn drained(&mut self, conn: ConnId, bytes: usize) {
        let limit = self.config.limits.max_unflushed_bytes_per_connection;
        let Some(c) = self.sessions.conns.get_mut(&conn) else {
            return;
        };
        let was_over = c.unflushed_bytes >= limit;
        c.unflushed_bytes = c.unflushed_bytes.saturating_sub(bytes);
        let resume_reading = c.paused & super::flow::PAUSED_BY_OUTPUT != 0
            && c.unflushed_bytes < limit * super::flow::OUTPUT_PAUSE_FACTOR / 2;
        let resume_get = c.get_waits_for_drain && c.unflushed_bytes < limit;
        if resume_get {
            c.get_waits_for_drain = false;
            self.sessions.to_resume.push(conn);
        }
        if resume_reading {
            self.set_paused(conn, super::flow::PAUSED_BY_OUTPUT, false);
        }
        if was_over
            && self
                .sessions
                .conns
                .get(&conn)
                .is_some_and(|c| c.unflushed_bytes < limit)
        {
            self.connection_freed(conn);
        }
    }

    // ----- channel -----

    pub(super) fn channel_open(&mut self, conn: ConnId, channel: u16) {
        if let Err(e) = self.check_channel_limit(conn) {
            return self.fail(conn, 0, e);
        }
        let uid = self.sessions.next_channel_uid;
        self.sessions.next_channel_uid += 1;
        let Some(c) = self.sessions.conns.get_mut(&conn) else {
            return;
        };
        debug_assert!(
            !c.channels.contains_key(&channel),
            "channel {channel} opened twice"
        );
        let gaps = self.config.limits.unacked_gaps_kept;
        c.channels.insert(channel, Channel::new(channel, uid, gaps));
        self.channel_opened(conn);
        let ok = ChannelOpenOk {
            channel_id: bytes::Bytes::new(),
        };
        self.send_method(conn, channel, Method::ChannelOpenOk(ok));
    }

    /// Releases a channel: cancels its consumers and returns its unacked messages to their
    /// queues, marked redelivered. Returns false if the channel did not exist.
    pub(super) fn close_channel(&mut self, conn: ConnId, channel: u16) -> bool {
        let Some(mut ch) = self
            .sessions
            .conns
            .get_mut(&conn)
            .and_then(|c| c.channels.remove(&channel))
        else {
            return false;
        };
        let round = self.sessions.sync_waits.round;
        self.sessions
            .sync_waits
            .change(ch.mode.sync_wait(round), SyncWait::default());
        self.channel_closed(conn);
        // Each queue the channel consumes from loses all of the channel's consumers in one
        // pass; in queue id order, so that auto-deletes happen in the same order every run.
        let queues: std::collections::BTreeSet<super::QueueId> =
            ch.consumers.values().map(|c| c.queue).collect();
        ch.consumers.clear();
        for queue in queues {
            self.detach_consumers(queue, conn, channel, |q| {
                q.consumers.remove_channel(conn, channel);
            });
        }
        if let Some(c) = self.sessions.conns.get_mut(&conn) {
            c.waiting.forget_channel(channel);
        }
        // Settlements held by an open transaction were never committed: they return too.
        if let Mode::Tx { ops, .. } = std::mem::replace(&mut ch.mode, Mode::Plain) {
            let settled = ops.into_iter().flat_map(|op| match op {
                super::channel::TxOp::Settle { entries, .. } => entries,
                _ => Vec::new(),
            });
            ch.unacked.restore_many(settled.collect());
        }
        self.requeue_all(ch.unacked.take_all());
        // Deferred replies for this channel can no longer be delivered: each names the
        // channel's broker-wide uid, which no channel will have again, and is dropped when
        // its batch syncs. Walking them here cost every close all clients' pending
        // confirms.
        true
    }

    /// Removes a consumer from its queue (the channel side is done by the caller) and
    /// deletes an auto-delete queue that lost its last consumer.
    pub(super) fn detach_consumer(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: &str,
        queue: super::QueueId,
    ) {
        self.detach_consumers(queue, conn, channel, |q| {
            q.consumers.remove(conn, channel, tag);
        });
    }

    /// Removes consumers of channel `channel` from `queue` with `remove`, then deletes it
    /// if it is auto-delete and lost its last consumer, or lets the others take what the
    /// removed ones held.
    fn detach_consumers(
        &mut self,
        queue: super::QueueId,
        conn: ConnId,
        channel: u16,
        remove: impl FnOnce(&mut super::Queue),
    ) {
        let now = self.now_ms;
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        remove(q);
        if !q.consumers.has_channel(conn, channel)
            && let Some(c) = self.sessions.conns.get_mut(&conn)
        {
            c.waiting.forget(channel, queue);
        }
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        if q.consumers.is_empty() {
            q.expiry.touch(now);
        }
        if q.decl.auto_delete && q.consumers.had_consumer() && q.consumers.is_empty() {
            self.delete_queue(queue);
        } else {
            self.schedule_dispatch(queue);
        }
    }
}

impl Broker {
    /// Closes every connection with 320 CONNECTION_FORCED, as RabbitMQ does when it stops.
    pub fn close_all_connections(&mut self, reason: &str, now_ms: u64) {
        self.now_ms = now_ms;
        let mut ids: Vec<ConnId> = self.sessions.conns.keys().copied().collect();
        ids.sort_unstable();
        for conn in ids {
            let close = ConnectionClose {
                reply_code: crate::proto::constants::CONNECTION_FORCED,
                reply_text: format!(
                    "CONNECTION_FORCED - broker forced connection closure with reason '{reason}'"
                ),
                class_id: 0,
                method_id: 0,
            };
            self.send_method(conn, 0, Method::ConnectionClose(close));
            self.close_connection(conn);
        }
        self.finish_round();
    }
}
