//! Method dispatch, and the basic, confirm and tx classes apart from publishing (in
//! `publish`): consuming, getting, acknowledging, recovering, confirms and transactions.

use std::sync::Arc;

use crate::proto::command::{Command, ConnId, Reply};
use crate::proto::method::*;
use crate::proto::table::{FieldTable, type_name};

use super::channel::{Confirm, Consumer, Mode, Settle, TxOp, Unacked};
use super::death::DeathReason;
use super::error::*;
use super::exchange::QueueId;
use super::queue::{ConsumerRef, QueuedMessage, WaitingGet};
use super::{Broker, Deferred};

impl Broker {
    /// Handles a method (without content) on an open channel.
    pub(super) fn handle_method(
        &mut self,
        conn: ConnId,
        channel: u16,
        method: Method,
    ) -> AmqpResult<()> {
        match method {
            Method::ChannelFlow(m) => self.channel_flow(conn, channel, m.active),
            Method::AccessRequest(_) => {
                self.send_method(
                    conn,
                    channel,
                    Method::AccessRequestOk(AccessRequestOk { ticket: 1 }),
                );
                Ok(())
            }
            Method::ExchangeDeclare(m) => self.exchange_declare(conn, channel, m),
            Method::ExchangeDelete(m) => self.exchange_delete(conn, channel, m),
            Method::ExchangeBind(m) => self.exchange_bind(conn, channel, m, true),
            Method::ExchangeUnbind(m) => {
                let as_bind = ExchangeBind {
                    ticket: m.ticket,
                    destination: m.destination,
                    source: m.source,
                    routing_key: m.routing_key,
                    nowait: m.nowait,
                    arguments: m.arguments,
                };
                self.exchange_bind(conn, channel, as_bind, false)
            }
            Method::QueueDeclare(m) => self.queue_declare(conn, channel, m),
            Method::QueueBind(m) => self.queue_bind(conn, channel, m),
            Method::QueueUnbind(m) => self.queue_unbind(conn, channel, m),
            Method::QueuePurge(m) => self.queue_purge(conn, channel, m),
            Method::QueueDelete(m) => self.queue_delete(conn, channel, m),
            Method::BasicQos(m) => self.basic_qos(conn, channel, m),
            Method::BasicConsume(m) => self.basic_consume(conn, channel, m),
            Method::BasicCancel(m) => self.basic_cancel(conn, channel, m),
            Method::BasicGet(m) => self.basic_get(conn, channel, m),
            Method::BasicAck(m) => {
                let settle = Settle::Ack;
                self.settle(conn, channel, m.delivery_tag, m.multiple, settle)
            }
            Method::BasicNack(m) => {
                let settle = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle(conn, channel, m.delivery_tag, m.multiple, settle)
            }
            Method::BasicReject(m) => {
                let settle = if m.requeue {
                    Settle::Requeue
                } else {
                    Settle::Discard
                };
                self.settle(conn, channel, m.delivery_tag, false, settle)
            }
            Method::BasicRecover(m) => {
                self.basic_recover(conn, channel, m.requeue)?;
                self.send_method(conn, channel, Method::BasicRecoverOk(BasicRecoverOk {}));
                Ok(())
            }
            Method::BasicRecoverAsync(m) => self.basic_recover(conn, channel, m.requeue),
            Method::ConfirmSelect(m) => self.confirm_select(conn, channel, m.nowait),
            Method::TxSelect(_) => self.tx_select(conn, channel),
            Method::TxCommit(_) => self.tx_commit(conn, channel),
            Method::TxRollback(_) => self.tx_rollback(conn, channel),
            // What only a server sends (warren never sends `channel.flow`, so a
            // `channel.flow-ok` answers nothing): RabbitMQ's words.
            _ => Err(command_invalid("unimplemented method")),
        }
    }

    fn channel_flow(&mut self, conn: ConnId, channel: u16, active: bool) -> AmqpResult<()> {
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        let resumed = active && !ch.flow_active;
        ch.flow_active = active;
        self.send_method(
            conn,
            channel,
            Method::ChannelFlowOk(ChannelFlowOk { active }),
        );
        if resumed {
            self.channel_freed(conn, channel);
        }
        Ok(())
    }

    // ----- consume -----

    fn basic_qos(&mut self, conn: ConnId, channel: u16, m: BasicQos) -> AmqpResult<()> {
        if m.prefetch_size != 0 {
            return Err(not_implemented(format!(
                "prefetch_size!=0 ({})",
                m.prefetch_size
            )));
        }
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        // The shared prefetch binds the channel's consumers; the other applies to
        // consumers made from now on.
        let shared_changed = m.global && ch.channel_prefetch != m.prefetch_count;
        if m.global {
            ch.channel_prefetch = m.prefetch_count;
        } else {
            ch.consumer_prefetch = m.prefetch_count;
        }
        if shared_changed {
            self.channel_freed(conn, channel);
        }
        self.send_method(conn, channel, Method::BasicQosOk(BasicQosOk {}));
        Ok(())
    }

    fn basic_consume(&mut self, conn: ConnId, channel: u16, m: BasicConsume) -> AmqpResult<()> {
        if m.queue == super::reply_to::REPLY_TO {
            return self.reply_consume(conn, channel, m);
        }
        let (qid, name, vhost) = self.readable_queue(conn, channel, &m.queue)?;
        let tag: Arc<str> = if m.consumer_tag.is_empty() {
            self.generate_name("amq.ctag-").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        self.check_consumer_room(conn, channel, &tag)?;
        let q = self
            .topology
            .queues
            .get_mut(&qid)
            .ok_or_else(|| not_found("queue vanished"))?;
        let quorum = q
            .decl
            .arguments
            .get("x-queue-type")
            .and_then(|v| v.as_str())
            == Some("quorum");
        let priority = consumer_arguments(&m.arguments, quorum, &name, &vhost)?;
        // A classic single-active-consumer queue refuses exclusive consumers, as
        // RabbitMQ 3.10's does, even with no other consumer.
        let single_active_classic = q.decl.settings.single_active_consumer && !quorum;
        if q.consumers.exclusive()
            || (m.exclusive && (!q.consumers.is_empty() || single_active_classic))
        {
            return Err(access_refused(format!(
                "{} in exclusive use",
                resource("queue", &name, &vhost)
            )));
        }
        q.consumers.add(
            ConsumerRef {
                conn,
                channel,
                tag: tag.clone(),
                priority,
            },
            m.exclusive,
        );
        q.expiry.touch(self.now_ms);
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        let prefetch = ch.consumer_prefetch;
        let id = ch.next_consumer_id();
        ch.consumers.insert(
            tag.clone(),
            Consumer {
                queue: qid,
                no_ack: m.no_ack,
                prefetch,
                unacked: 0,
                id,
            },
        );
        ch.last_queue = name;
        self.flow_consumer_added(conn);
        // The consume-ok goes out before any delivery: dispatch runs after this method.
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::BasicConsumeOk(BasicConsumeOk {
                consumer_tag: tag.to_string(),
            }),
        )?;
        self.schedule_dispatch(qid);
        Ok(())
    }

    /// Refuses a consumer tag the channel already uses, and a consumer past the
    /// connection's or the channel's limit.
    fn check_consumer_room(&mut self, conn: ConnId, channel: u16, tag: &str) -> AmqpResult<()> {
        let max = self.config.limits.max_consumers_per_channel;
        let max_per_conn = self.config.limits.max_consumers_per_connection;
        let on_conn: usize = self.sessions.conns.get(&conn).map_or(0, |c| {
            c.channels.values().map(|ch| ch.consumers.len()).sum()
        });
        if on_conn >= max_per_conn {
            return Err(precondition_failed(format!(
                "connection has the maximum of {max_per_conn} consumers"
            )));
        }
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        if ch.consumers.contains_key(tag)
            || ch.reply_consumer.as_ref().is_some_and(|r| &*r.tag == tag)
        {
            return Err(not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        if ch.consumers.len() >= max {
            return Err(precondition_failed(format!(
                "channel has the maximum of {max} consumers"
            )));
        }
        Ok(())
    }

    fn basic_cancel(&mut self, conn: ConnId, channel: u16, m: BasicCancel) -> AmqpResult<()> {
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        let removed = ch.consumers.remove(m.consumer_tag.as_str());
        if removed.is_none() {
            self.reply_cancel(conn, channel, &m.consumer_tag);
        }
        // The cancel-ok precedes the effects of the cancel (an auto-delete queue's
        // deletion), and unknown tags are cancelled successfully, as in RabbitMQ.
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::BasicCancelOk(BasicCancelOk {
                consumer_tag: m.consumer_tag.clone(),
            }),
        )?;
        if let Some(consumer) = removed {
            self.detach_consumer(conn, channel, &m.consumer_tag, consumer.queue);
        }
        Ok(())
    }

    fn basic_get(&mut self, conn: ConnId, channel: u16, m: BasicGet) -> AmqpResult<()> {
        let (qid, _, _) = self.readable_queue(conn, channel, &m.queue)?;
        let write_limit = self.config.limits.max_unflushed_bytes_per_connection;
        if let Some(c) = self.sessions.conns.get_mut(&conn) {
            if c.unflushed_bytes >= write_limit {
                // Like a delivery, a get-ok waits until the client reads what it was sent;
                // the commands behind it wait too, as behind a synchronous get.
                c.get_waits_for_drain = true;
                let get = Command::Method {
                    channel,
                    method: Method::BasicGet(m),
                };
                self.sessions.held.entry(conn).or_default().push_front(get);
                self.set_paused(conn, super::flow::PAUSED_BY_GET, true);
                return Ok(());
            }
        }
        let max_unacked = self.config.limits.max_unacked_per_channel;
        let over = self
            .channel_mut(conn, channel)
            .is_some_and(|ch| ch.outstanding() >= max_unacked);
        if over && !m.no_ack {
            return Err(precondition_failed(format!(
                "channel has the maximum of {max_unacked} unacknowledged messages"
            )));
        }
        self.touch_queue(qid);
        let channel_uid = self.channel_uid(conn, channel).unwrap_or_default();
        if !self.topology.queues.contains_key(&qid) {
            return Err(not_found("queue vanished"));
        }
        if self.get_one(conn, channel, qid, m.no_ack) {
            return Ok(());
        }
        // The queue is not empty, its next messages are in the store: answer once they
        // are read back.
        if let Some(q) = self.topology.queues.get_mut(&qid) {
            q.waiting_gets.push_back(WaitingGet {
                conn,
                channel,
                channel_uid,
                no_ack: m.no_ack,
            });
            self.sessions.held.entry(conn).or_default();
            self.set_paused(conn, super::flow::PAUSED_BY_GET, true);
            self.request_load(qid);
        }
        Ok(())
    }

    /// Answers a `basic.get` from what the queue holds in memory. Returns false, answering
    /// nothing, when nothing is left in memory (expired messages dropped) while its next
    /// messages are in the store: the get must wait for them to be read back.
    #[must_use]
    pub(super) fn get_one(
        &mut self,
        conn: ConnId,
        channel: u16,
        qid: QueueId,
        no_ack: bool,
    ) -> bool {
        let now = self.now_ms;
        let Some(q) = self.topology.queues.get_mut(&qid) else {
            return true;
        };
        // A get finds a message expired once its expiry time has come, as RabbitMQ does
        // (`Now >= Expiry`): one published with a TTL of 0 is never got, even in the
        // millisecond it arrived. Dispatch to a waiting consumer goes first in that
        // millisecond, as RabbitMQ delivers such a message if it can at once.
        let expired = q.messages.drop_expired(now.saturating_add(1));
        if !expired.is_empty() {
            self.dead_letter(qid, expired, DeathReason::Expired);
        }
        let Some(q) = self.topology.queues.get_mut(&qid) else {
            return true;
        };
        if q.messages.in_memory_count() == 0 && q.messages.paged.count > 0 {
            return false;
        }
        let Some(entry) = q.messages.pop() else {
            // The answer's own rule, whatever the checks above: get-empty only for a queue
            // with nothing ready, or whose head waits for its sync.
            if q.messages.ready_count() > 0 && !q.messages.head_held() {
                self.counters.gets_wrongly_empty += 1;
            }
            self.send_method(
                conn,
                channel,
                Method::BasicGetEmpty(BasicGetEmpty::default()),
            );
            return true;
        };
        let remaining = q.ready_count() as u32;
        let quorum = q.decl.settings.quorum;
        if !no_ack {
            q.messages.delivered_unacked(&entry);
        }
        q.stats.got(no_ack, entry.redelivered);
        self.counters.totals.got(no_ack, entry.redelivered);
        let Some(ch) = self
            .sessions
            .conns
            .get_mut(&conn)
            .and_then(|c| c.channels.get_mut(&channel))
        else {
            // Cannot happen: callers check the channel. Keep the message rather than lose it.
            if let Some(q) = self.topology.queues.get_mut(&qid) {
                if !no_ack {
                    q.messages.settled_unacked(&entry);
                }
                q.messages.requeue(entry);
            }
            return true;
        };
        let tag = ch.next_tag;
        ch.next_tag += 1;
        ch.stats.got(no_ack, entry.redelivered);
        let get_ok = BasicGetOk {
            delivery_tag: tag,
            redelivered: entry.redelivered,
            exchange: entry.message.exchange.clone(),
            routing_key: entry.message.routing_key.clone(),
            message_count: remaining,
        };
        let message = entry.outgoing(quorum);
        if no_ack {
            self.release(qid, &entry);
        } else {
            ch.unacked.push(Unacked {
                tag,
                queue: qid,
                consumer: None,
                from_consumer: false,
                message: entry,
            });
        }
        self.send(
            conn,
            Reply::Content {
                channel,
                method: Method::BasicGetOk(get_ok),
                message,
            },
        );
        self.schedule_dispatch(qid);
        true
    }

    // ----- acknowledgements -----

    fn settle(
        &mut self,
        conn: ConnId,
        channel: u16,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> AmqpResult<()> {
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        let entries = if multiple && tag == 0 {
            ch.unacked.take_all()
        } else if multiple {
            if !ch.unacked.contains(tag) {
                return Err(precondition_failed(format!("unknown delivery tag {tag}")));
            }
            ch.unacked.take_up_to(tag)
        } else {
            match ch.unacked.take(tag) {
                Some(e) => vec![e],
                None => return Err(precondition_failed(format!("unknown delivery tag {tag}"))),
            }
        };
        if how == Settle::Ack {
            ch.stats.ack += entries.len() as u64;
        }
        // In a transaction the settled deliveries hold their prefetch, and their place
        // under the channel's unacked limit, until it commits, as in RabbitMQ: nothing
        // is freed yet.
        if let Mode::Tx { ops, settled, .. } = &mut ch.mode {
            // A settle of nothing changes nothing at commit, and settles of one kind in a
            // row are one: the transaction grows with what it settles, never with how
            // often a client acks (an ack of nothing, repeated, would grow it forever).
            *settled += entries.len();
            match ops.last_mut() {
                _ if entries.is_empty() => {}
                Some(TxOp::Settle {
                    entries: last,
                    how: last_how,
                }) if *last_how == how => last.extend(entries),
                _ => ops.push(TxOp::Settle { entries, how }),
            }
        } else {
            let freed = settle_all(ch, &entries);
            self.apply_settlement(entries, how);
            // Freed prefetch capacity lets the channel's consumers take more.
            self.prefetch_freed(conn, channel, freed);
        }
        Ok(())
    }

    fn apply_settlement(&mut self, entries: Vec<Unacked>, how: Settle) {
        let acked = match how {
            Settle::Requeue => return self.requeue_all(entries),
            Settle::Ack => true,
            Settle::Discard => false,
        };
        self.topology.loads_recheck |= !self.topology.loads_stalled.is_empty();
        // Rejected messages are dead-lettered a queue at a time, in queue order.
        let mut rejected: std::collections::BTreeMap<QueueId, Vec<QueuedMessage>> =
            Default::default();
        for e in entries {
            if let Some(q) = self.topology.queues.get_mut(&e.queue) {
                q.messages.settled_unacked(&e.message);
                q.stats.ack += u64::from(acked);
            }
            self.counters.totals.ack += u64::from(acked);
            if acked {
                self.release(e.queue, &e.message);
            } else {
                rejected.entry(e.queue).or_default().push(e.message);
            }
        }
        for (queue, messages) in rejected {
            self.dead_letter(queue, messages, DeathReason::Rejected);
        }
    }

    fn basic_recover(&mut self, conn: ConnId, channel: u16, requeue: bool) -> AmqpResult<()> {
        if !requeue {
            return Err(not_implemented("requeue=false"));
        }
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        let entries = ch.unacked.take_all();
        let freed = settle_all(ch, &entries);
        self.requeue_all(entries);
        // Freed prefetch capacity lets the channel's consumers take more, from any queue.
        self.prefetch_freed(conn, channel, freed);
        Ok(())
    }

    // ----- confirm and tx -----

    fn confirm_select(&mut self, conn: ConnId, channel: u16, nowait: bool) -> AmqpResult<()> {
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        match ch.mode {
            Mode::Tx { .. } => {
                return Err(precondition_failed("cannot switch from tx to confirm mode"));
            }
            Mode::Confirm { .. } => {}
            Mode::Plain => {
                ch.mode = Mode::Confirm {
                    next_seq: 1,
                    pending: Default::default(),
                    peak: 0,
                    returning: 0,
                }
            }
        }
        self.reply(
            conn,
            channel,
            nowait,
            Method::ConfirmSelectOk(ConfirmSelectOk {}),
        )
    }

    fn tx_select(&mut self, conn: ConnId, channel: u16) -> AmqpResult<()> {
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        match ch.mode {
            Mode::Confirm { .. } => {
                return Err(precondition_failed("cannot switch from confirm to tx mode"));
            }
            Mode::Tx { .. } => {}
            Mode::Plain => {
                ch.mode = Mode::Tx {
                    ops: Vec::new(),
                    bytes: 0,
                    settled: 0,
                    commits: 0,
                    returning: 0,
                }
            }
        }
        self.send_method(conn, channel, Method::TxSelectOk(TxSelectOk {}));
        Ok(())
    }

    /// A commit-ok on the channel begins (`waiting`) or ends its wait for a sync. The
    /// channel is returning from the commit-ok that leaves none waiting until it commits
    /// again ([`super::channel::SyncWait`]).
    pub(super) fn count_commit(&mut self, conn: ConnId, channel: u16, waiting: bool) {
        let round = self.sessions.sync_waits.round;
        let Some(ch) = self.channel_mut(conn, channel) else {
            return;
        };
        let before = ch.mode.sync_wait(round);
        if let Mode::Tx {
            commits, returning, ..
        } = &mut ch.mode
        {
            if waiting {
                *commits += 1;
                *returning = 0;
            } else {
                debug_assert!(*commits > 0, "a commit-ok nobody waited for");
                *commits = commits.saturating_sub(1);
                if *commits == 0 {
                    *returning = round;
                }
            }
        }
        let after = ch.mode.sync_wait(round);
        self.sessions.sync_waits.change(before, after);
    }

    fn take_tx(&mut self, conn: ConnId, channel: u16) -> AmqpResult<Vec<TxOp>> {
        self.open_session(conn)?;
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        match &mut ch.mode {
            Mode::Tx {
                ops,
                bytes,
                settled,
                ..
            } => {
                *bytes = 0;
                *settled = 0;
                Ok(std::mem::take(ops))
            }
            _ => Err(precondition_failed("channel is not transactional")),
        }
    }

    fn tx_commit(&mut self, conn: ConnId, channel: u16) -> AmqpResult<()> {
        let ops = self.take_tx(conn, channel)?;
        let (vhost, _) = self.open_session(conn)?;
        let mut waits_for_store = false;
        for op in ops {
            match op {
                TxOp::Publish { mandatory, message } => {
                    // Checked at publish time; the exchange may have gone since, which
                    // drops the message as unroutable.
                    let outcome = self.route_and_enqueue(conn, channel, &vhost, mandatory, message);
                    waits_for_store |= outcome == Confirm::Waiting;
                }
                TxOp::Settle { entries, how } => {
                    let freed = self
                        .channel_mut(conn, channel)
                        .and_then(|ch| settle_all(ch, &entries));
                    self.apply_settlement(entries, how);
                    self.prefetch_freed(conn, channel, freed);
                }
            }
        }
        let ok = Method::TxCommitOk(TxCommitOk {});
        if waits_for_store {
            self.count_commit(conn, channel, true);
            let batch = self.current_batch();
            let uid = self.channel_uid(conn, channel).unwrap_or_default();
            self.round.deferred.push_back((
                batch,
                Deferred::Reply {
                    conn,
                    uid,
                    channel,
                    method: ok,
                },
            ));
        } else {
            self.send_method(conn, channel, ok);
        }
        Ok(())
    }

    fn tx_rollback(&mut self, conn: ConnId, channel: u16) -> AmqpResult<()> {
        let ops = self.take_tx(conn, channel)?;
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        let settled = ops.into_iter().flat_map(|op| match op {
            TxOp::Settle { entries, .. } => entries,
            _ => Vec::new(),
        });
        ch.unacked.restore_many(settled.collect());
        self.send_method(conn, channel, Method::TxRollbackOk(TxRollbackOk {}));
        Ok(())
    }
}

/// Checks a consumer's arguments as RabbitMQ 3.10 does, and returns its `x-priority`
/// (0 when absent). An argument that only another queue type takes is refused
/// (`x-stream-offset` on any queue here, `x-cancel-on-ha-failover` on a quorum queue);
/// then `x-priority` must be an integer and `x-cancel-on-ha-failover` a boolean. Others
/// are ignored, as RabbitMQ ignores them.
fn consumer_arguments(
    arguments: &FieldTable,
    quorum: bool,
    queue: &str,
    vhost: &str,
) -> AmqpResult<i64> {
    let (foreign, module): (&[&str], &str) = if quorum {
        (
            &["x-stream-offset", "x-cancel-on-ha-failover"],
            "rabbit_quorum_queue",
        )
    } else {
        (&["x-stream-offset"], "rabbit_classic_queue")
    };
    let invalid = |key: &str| {
        format!(
            "invalid arg '{key}' for {}",
            resource("queue", queue, vhost)
        )
    };
    if let Some(key) = foreign.iter().find(|key| arguments.get(key).is_some()) {
        return Err(precondition_failed(format!(
            "{} of queue type {module}",
            invalid(key)
        )));
    }
    if let Some(v) = arguments.get("x-cancel-on-ha-failover")
        && v.as_bool().is_none()
    {
        return Err(precondition_failed(format!(
            "{}: {{unacceptable_type,{}}}",
            invalid("x-cancel-on-ha-failover"),
            type_name(v)
        )));
    }
    match arguments.get("x-priority") {
        None => Ok(0),
        Some(v) => v.as_i64().ok_or_else(|| {
            precondition_failed(format!(
                "{}: \"expected integer, got {}\"",
                invalid("x-priority"),
                type_name(v)
            ))
        }),
    }
}

/// Takes the ack accounting of `entries` off the channel and their consumers; returns
/// what that freed: None when nothing was settled, else the consumers still there (queue
/// and tag, each once).
fn settle_all(
    ch: &mut super::channel::Channel,
    entries: &[Unacked],
) -> Option<Vec<(QueueId, Arc<str>)>> {
    if entries.is_empty() {
        return None;
    }
    let mut consumers: Vec<(QueueId, Arc<str>)> = entries
        .iter()
        .filter_map(|e| ch.settle_accounting(e))
        .collect();
    consumers.sort_unstable();
    consumers.dedup();
    Some(consumers)
}
