//! Method dispatch, and the basic, confirm and tx classes: publishing, consuming,
//! acknowledging.

use std::sync::Arc;

use crate::proto::command::{Command, ConnId, Message, Reply};
use crate::proto::constants::NO_ROUTE;
use crate::proto::method::*;
use crate::proto::table::{FieldTable, type_name};

use super::auth::Access;
use super::channel::{Confirm, Consumer, Mode, Settle, TxOp, Unacked};
use super::death::{Allowance, DeathReason};
use super::error::*;
use super::exchange::{Destination, QueueId};
use super::queue::{ConsumerRef, Overflow, QueuedMessage, WaitingGet};
use super::{Broker, Deferred};
use crate::store::{EntryBody, StoreOp};

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
        let queues: Vec<QueueId> = ch.consumers.values().map(|c| c.queue).collect();
        self.send_method(
            conn,
            channel,
            Method::ChannelFlowOk(ChannelFlowOk { active }),
        );
        if resumed {
            for q in queues {
                self.schedule_dispatch(q);
            }
        }
        Ok(())
    }

    // ----- publish -----

    /// Routes a message from a publisher.
    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        channel: u16,
        mandatory: bool,
        immediate: bool,
        message: Arc<Message>,
    ) -> AmqpResult<()> {
        let (vhost, user) = self.open_session(conn)?;
        if immediate {
            return Err(not_implemented("immediate=true"));
        }
        let exchange = if message.exchange == "amq.default" {
            ""
        } else {
            message.exchange.as_str()
        };
        let x = self
            .topology
            .vhosts
            .get(&*vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", exchange, &vhost))))?;
        if x.internal {
            return Err(access_refused(format!(
                "cannot publish to internal {}",
                resource("exchange", exchange, &vhost)
            )));
        }
        self.check_access(conn, Access::Write, "exchange", exchange)?;
        self.check_topic(&user, &vhost, Access::Write, exchange, &message.routing_key)?;
        if let Err(why) = parse_expiration(&message) {
            // Shown as RabbitMQ shows it, bytes that are not text escaped (`\xff`).
            let text = message.properties.expiration.as_ref();
            return Err(precondition_failed(format!(
                "invalid expiration '{}': {why}",
                text.map(ToString::to_string).unwrap_or_default()
            )));
        }
        if let Some(mode) = message
            .properties
            .delivery_mode
            .filter(|m| !(1..=2).contains(m))
        {
            return Err(precondition_failed(format!(
                "invalid message: {{delivery_mode_unknown,{mode}}}"
            )));
        }
        if let Some(Err(e)) = message
            .properties
            .headers
            .as_ref()
            .map(|h| h.check_limits())
        {
            return Err(precondition_failed(format!("invalid message headers: {e}")));
        }
        if let Some(claimed) = &message.properties.user_id {
            if claimed.as_bytes() != user.as_bytes() {
                return Err(precondition_failed(format!(
                    "user_id property set to '{claimed}' but authenticated user was '{user}'"
                )));
            }
        }
        let message = self.rewrite_reply_to(conn, channel, message)?;
        let max_tx_bytes = self.config.limits.max_tx_bytes;
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        ch.stats.publish += 1;
        let seq = match &mut ch.mode {
            Mode::Tx { ops, bytes } => {
                // Charged like a queued message, headers and overhead included, so that
                // neither many empty messages nor large headers escape the limit.
                *bytes += super::queue::memory_cost(&message);
                if *bytes > max_tx_bytes {
                    return Err(precondition_failed(format!(
                        "transaction holds more than {max_tx_bytes} bytes of messages"
                    )));
                }
                ops.push(TxOp::Publish { mandatory, message });
                return Ok(());
            }
            Mode::Confirm { next_seq, .. } => {
                let seq = *next_seq;
                *next_seq += 1;
                Some(seq)
            }
            Mode::Plain => None,
        };
        let outcome = self.route_and_enqueue(conn, channel, &vhost, mandatory, message);
        if let Some(seq) = seq {
            self.record_confirm(conn, channel, seq, outcome);
        }
        self.flow_after_publish(conn);
        Ok(())
    }

    /// Records a confirm's outcome in publish order.
    fn record_confirm(&mut self, conn: ConnId, channel: u16, seq: u64, outcome: Confirm) {
        let batch = self.current_batch();
        let Some(ch) = self.channel_mut(conn, channel) else {
            return;
        };
        let uid = ch.uid;
        if let Mode::Confirm { pending, .. } = &mut ch.mode {
            pending.push_back((seq, outcome));
        }
        if outcome == Confirm::Waiting {
            self.round.deferred.push_back((
                batch,
                Deferred::Confirm {
                    conn,
                    uid,
                    channel,
                    seq,
                },
            ));
        } else {
            self.round.confirm_dirty.push((conn, channel));
        }
    }

    /// Routes a message and puts it in every queue it reaches. Returns what its publisher
    /// confirm must say: refused by a full queue (nack), waiting for the store, or ack.
    fn route_and_enqueue(
        &mut self,
        conn: ConnId,
        channel: u16,
        vhost: &str,
        mandatory: bool,
        message: Arc<Message>,
    ) -> Confirm {
        self.counters.totals.publish += 1;
        if (message.exchange.is_empty() || message.exchange == "amq.default")
            && super::reply_to::is_reply_address(&message.routing_key)
            && self.deliver_reply(vhost, &message.routing_key, message.clone())
        {
            return Confirm::Ack;
        }
        if let Some(delay_ms) = self.delay_for(vhost, &message.exchange, &message) {
            return self.hold_delayed(vhost, message, delay_ms);
        }
        let queues = self.route(vhost, &message.exchange, &message);
        if self.store_refuses(&queues, &message) {
            return Confirm::Nack;
        }
        if queues.is_empty() {
            self.counters.totals.unroutable += 1;
            if mandatory {
                let ret = BasicReturn {
                    reply_code: NO_ROUTE,
                    reply_text: "NO_ROUTE".into(),
                    exchange: message.exchange.clone(),
                    routing_key: message.routing_key.clone(),
                };
                self.send(
                    conn,
                    Reply::Content {
                        channel,
                        method: Method::BasicReturn(ret),
                        message,
                    },
                );
            }
            return Confirm::Ack;
        }
        let (rejected, stored) = self.enqueue_routed(queues, message, Allowance::FRESH);
        if rejected {
            Confirm::Nack
        } else if stored {
            Confirm::Waiting
        } else {
            Confirm::Ack
        }
    }

    /// Puts a message in each of `queues`, applying their TTLs and length limits. Returns
    /// whether a full queue refused it, and whether a durable queue stored it.
    pub(super) fn enqueue_routed(
        &mut self,
        queues: Vec<QueueId>,
        message: Arc<Message>,
        allowance: Allowance,
    ) -> (bool, bool) {
        let message_ttl = parse_expiration(&message).ok().flatten();
        let body_len = message.body_len();
        let shared = self.store_shared(&queues, &message);
        let mut rejected = false;
        let mut stored = false;
        // Dead letters wait until this message is in every queue it reached: routing them
        // now could change those queues under this loop (and the shared message's count).
        let mut dead: Vec<(QueueId, Vec<QueuedMessage>)> = Vec::new();
        for qid in queues {
            self.counters.work += 1;
            let Some(q) = self.topology.queues.get(&qid) else {
                continue;
            };
            if q.rejects(body_len) {
                rejected = true;
                if q.decl.settings.overflow == Overflow::RejectPublishDlx {
                    // RabbitMQ dead-letters a refused publish as `maxlen`.
                    dead.push((qid, vec![refused(&message, allowance)]));
                }
                continue;
            }
            let (durable, dropped) = self.enqueue_in(qid, &message, message_ttl, shared, allowance);
            stored |= durable;
            if !dropped.is_empty() {
                dead.push((qid, dropped));
            }
        }
        for (qid, entries) in dead {
            self.queue_dead_letters(qid, entries, DeathReason::MaxLen);
        }
        self.route_dead_letters();
        (rejected, stored)
    }

    /// Stores a persistent message once for the durable queues among `queues` that will
    /// take it, when there are several; returns the id their entries refer to.
    fn store_shared(&mut self, queues: &[QueueId], message: &Arc<Message>) -> Option<u64> {
        let body_len = message.body_len();
        let storing = queues
            .iter()
            .filter_map(|q| self.topology.queues.get(q))
            .filter(|q| q.decl.durable && message.is_persistent() && !q.rejects(body_len))
            .count();
        (storing >= 2).then(|| {
            let shared_id = self.topology.next_shared_id;
            self.topology.next_shared_id += 1;
            self.round.journal.push(StoreOp::PutShared {
                id: shared_id,
                message: message.clone(),
                refs: storing as u32,
            });
            shared_id
        })
    }

    /// Puts a message in a queue that accepts it, under the shorter of the queue's and
    /// the message's TTL: in the store if the queue is durable and the message
    /// persistent, and in memory unless the queue pages it out. Returns whether it was
    /// stored, and the messages a drop-head limit then pushed out.
    fn enqueue_in(
        &mut self,
        qid: QueueId,
        message: &Arc<Message>,
        message_ttl: Option<u64>,
        shared: Option<u64>,
        allowance: Allowance,
    ) -> (bool, Vec<QueuedMessage>) {
        let (queue_budget, broker_budget) = (
            self.config.memory.queue_memory_budget_bytes,
            self.config.memory.memory_budget_bytes,
        );
        let now = self.now_ms;
        let batch = self.current_batch();
        let Some(q) = self.topology.queues.get_mut(&qid) else {
            return (false, Vec::new());
        };
        let ttl = match (q.decl.settings.message_ttl_ms, message_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at_ms = ttl.map(|t| now.saturating_add(t));
        q.stats.publish += 1;
        let seq = q.messages.take_seq();
        let durable = q.decl.durable && message.is_persistent();
        if durable {
            let body = match shared {
                Some(sid) => EntryBody::Shared(sid),
                None => EntryBody::Inline(message.clone()),
            };
            self.round.journal.push(StoreOp::Enqueue {
                queue: qid,
                seq,
                body,
                expires_at_ms,
            });
            if self.config.deliver_after_sync {
                q.messages.hold(seq, batch);
                self.round.holding.insert(qid);
            }
        }
        if q.pages_next(queue_budget, broker_budget) {
            // The message lives in the store until consumers get near it.
            q.messages.page_out(seq, message.body_len());
            if !durable {
                self.round.journal.push(StoreOp::PageOut {
                    queue: qid,
                    seq,
                    message: message.clone(),
                    expires_at_ms,
                });
            }
        } else {
            q.messages.push(QueuedMessage {
                seq,
                message: message.clone(),
                redelivered: false,
                stored: durable,
                expires_at_ms,
                priority: 0,
                shared: shared.filter(|_| durable),
                allowance,
            });
        }
        if !q.consumers.is_empty() && q.messages.memory_bytes() >= queue_budget / 2 {
            self.round.flow_hot.push(qid);
        }
        if q.over_drop_head_limit() {
            self.deliver_before_dropping(qid);
        }
        let dropped = self
            .topology
            .queues
            .get_mut(&qid)
            .map(|q| q.enforce_limits())
            .unwrap_or_default();
        self.schedule_dispatch(qid);
        (durable, dropped)
    }

    /// The queues a message published to `exchange` reaches, following exchange-to-exchange
    /// bindings and alternate exchanges, each queue once. Counts the routing steps in
    /// [`Broker::work_done`].
    pub(super) fn route(&mut self, vhost: &str, exchange: &str, message: &Message) -> Vec<QueueId> {
        let mut work = 0;
        let queues = match self.topology.vhosts.get(vhost) {
            Some(v) => route_in(v, exchange, message, &mut work),
            None => Vec::new(),
        };
        self.counters.work += work;
        queues
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
        if m.global {
            ch.channel_prefetch = m.prefetch_count;
        } else {
            ch.consumer_prefetch = m.prefetch_count;
        }
        let queues: Vec<QueueId> = ch.consumers.values().map(|c| c.queue).collect();
        for q in queues {
            self.schedule_dispatch(q);
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
        ch.consumers.insert(
            tag.clone(),
            Consumer {
                queue: qid,
                no_ack: m.no_ack,
                prefetch,
                unacked: 0,
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
        if removed.is_some() {
            ch.orphan_deliveries(&m.consumer_tag);
        } else {
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
            .is_some_and(|ch| ch.unacked.len() >= max_unacked);
        if over && !m.no_ack {
            return Err(precondition_failed(format!(
                "channel has the maximum of {max_unacked} unacknowledged messages"
            )));
        }
        self.touch_queue(qid);
        let channel_uid = self.channel_uid(conn, channel).unwrap_or_default();
        let q = self
            .topology
            .queues
            .get_mut(&qid)
            .ok_or_else(|| not_found("queue vanished"))?;
        if q.messages.in_memory_count() == 0 && q.messages.paged.count > 0 {
            // The queue is not empty, its next messages are in the store: answer once they
            // are read back.
            q.waiting_gets.push_back(WaitingGet {
                conn,
                channel,
                channel_uid,
                no_ack: m.no_ack,
            });
            self.sessions.held.entry(conn).or_default();
            self.set_paused(conn, super::flow::PAUSED_BY_GET, true);
            self.request_load(qid);
            return Ok(());
        }
        self.get_one(conn, channel, qid, m.no_ack);
        Ok(())
    }

    /// Answers a `basic.get` from what the queue holds in memory.
    pub(super) fn get_one(&mut self, conn: ConnId, channel: u16, qid: QueueId, no_ack: bool) {
        let now = self.now_ms;
        let Some(q) = self.topology.queues.get_mut(&qid) else {
            return;
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
            return;
        };
        let Some(entry) = q.messages.pop() else {
            self.send_method(
                conn,
                channel,
                Method::BasicGetEmpty(BasicGetEmpty::default()),
            );
            return;
        };
        let remaining = q.ready_count() as u32;
        if !no_ack {
            q.messages.unacked += 1;
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
                q.messages.unacked -= u64::from(!no_ack);
                q.messages.requeue(entry);
            }
            return;
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
        let message = entry.message.clone();
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
        for e in &entries {
            ch.settle_accounting(e);
        }
        if how == Settle::Ack {
            ch.stats.ack += entries.len() as u64;
        }
        let queues: Vec<QueueId> = ch.consumers.values().map(|c| c.queue).collect();
        if let Mode::Tx { ops, .. } = &mut ch.mode {
            // A settle of nothing changes nothing at commit, and settles of one kind in a
            // row are one: the transaction grows with what it settles, never with how
            // often a client acks (an ack of nothing, repeated, would grow it forever).
            match ops.last_mut() {
                _ if entries.is_empty() => {}
                Some(TxOp::Settle {
                    entries: last,
                    how: last_how,
                }) if *last_how == how => last.extend(entries),
                _ => ops.push(TxOp::Settle { entries, how }),
            }
        } else {
            self.apply_settlement(entries, how);
        }
        // Freed prefetch capacity lets the channel's consumers take more.
        for q in queues {
            self.schedule_dispatch(q);
        }
        Ok(())
    }

    fn apply_settlement(&mut self, entries: Vec<Unacked>, how: Settle) {
        for e in entries {
            match how {
                Settle::Requeue => self.requeue(e),
                Settle::Ack | Settle::Discard => {
                    if let Some(q) = self.topology.queues.get_mut(&e.queue) {
                        q.messages.unacked -= 1;
                        q.stats.ack += u64::from(how == Settle::Ack);
                    }
                    self.counters.totals.ack += u64::from(how == Settle::Ack);
                    if how == Settle::Discard {
                        self.dead_letter(e.queue, vec![e.message], DeathReason::Rejected);
                    } else {
                        self.release(e.queue, &e.message);
                    }
                }
            }
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
        for e in &entries {
            ch.settle_accounting(e);
        }
        for e in entries {
            self.requeue(e);
        }
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
                }
            }
        }
        self.send_method(conn, channel, Method::TxSelectOk(TxSelectOk {}));
        Ok(())
    }

    fn take_tx(&mut self, conn: ConnId, channel: u16) -> AmqpResult<Vec<TxOp>> {
        self.open_session(conn)?;
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        match &mut ch.mode {
            Mode::Tx { ops, bytes } => {
                *bytes = 0;
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
                    self.apply_settlement(entries, how);
                }
            }
        }
        let ok = Method::TxCommitOk(TxCommitOk {});
        if waits_for_store {
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
        for op in ops {
            if let TxOp::Settle { entries, .. } = op {
                for e in entries {
                    if e.from_consumer {
                        ch.consumer_unacked += 1;
                    }
                    if let Some(c) = e.consumer.as_ref().and_then(|t| ch.consumers.get_mut(t)) {
                        c.unacked += 1;
                    }
                    ch.unacked.restore(e);
                }
            }
        }
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

/// The entry a publish refused by a full `reject-publish-dlx` queue is dead-lettered as:
/// it never took a position in the queue.
fn refused(message: &Arc<Message>, allowance: Allowance) -> QueuedMessage {
    QueuedMessage {
        seq: 0,
        message: message.clone(),
        redelivered: false,
        stored: false,
        expires_at_ms: None,
        priority: 0,
        shared: None,
        allowance,
    }
}

/// The per-message TTL from the `expiration` property: `Ok(None)` when absent, an error
/// text (as RabbitMQ words it) when it is not a non-negative integer.
pub(super) fn parse_expiration(message: &Message) -> Result<Option<u64>, String> {
    let Some(raw) = message.properties.expiration.as_ref() else {
        return Ok(None);
    };
    // Digits are ASCII: bytes that are not UTF-8 are never part of the number.
    let text = &*raw.to_str_lossy();
    // As Erlang's `string:to_integer`, which RabbitMQ uses: an optional sign and digits,
    // and nothing after them.
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = unsigned.len()
        - unsigned
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    if digits == 0 {
        return Err("no_integer".to_string());
    }
    let (number, rest) = unsigned.split_at(digits);
    if !rest.is_empty() {
        return Err(format!("{{leftover_string,{rest:?}}}"));
    }
    let number = number.trim_start_matches('0');
    if number.is_empty() {
        return Ok(Some(0));
    }
    if negative {
        return Err(format!("{{value_negative,-{number}}}"));
    }
    match number.parse::<u64>() {
        Ok(n) if n <= super::queue::MAX_EXPIRY_MS => Ok(Some(n)),
        _ => Err(format!("{{value_too_large,{number}}}")),
    }
}

/// Routes a message published to `exchange` within vhost `v` (see [`Broker::route`]),
/// adding the steps taken to `work`.
fn route_in(v: &super::VHost, exchange: &str, message: &Message, work: &mut u64) -> Vec<QueueId> {
    let mut queues = Vec::new();
    let exchange = if exchange == "amq.default" {
        ""
    } else {
        exchange
    };
    *work += 1;
    if exchange.is_empty() {
        if let Some(id) = v.queues.get(&message.routing_key) {
            queues.push(*id);
        }
        return queues;
    }
    // Each exchange is visited once, as in RabbitMQ: the work is bounded by the
    // exchanges and bindings the vhost holds, however they are chained.
    let mut visited = Visited::default();
    let mut pending: Vec<&str> = vec![exchange];
    while let Some(name) = pending.pop() {
        *work += 1;
        if !visited.insert(name) {
            continue;
        }
        let Some(x) = v.exchanges.get(name) else {
            continue;
        };
        let before = queues.len();
        let mut reached_exchange = false;
        x.route(
            &message.routing_key,
            &message.properties,
            work,
            &mut |d| match d {
                Destination::Queue(id) => queues.push(*id),
                Destination::Exchange(e) => {
                    reached_exchange = true;
                    pending.push(e.as_str());
                }
            },
        );
        if queues.len() == before && !reached_exchange {
            if let Some(ae) = x.alternate_exchange() {
                pending.push(ae);
            }
        }
    }
    queues.sort_unstable();
    queues.dedup();
    queues
}

/// The exchanges a routing has visited: a few in place (most routings visit one), a set
/// beyond.
#[derive(Default)]
struct Visited<'a> {
    few: [&'a str; 4],
    len: usize,
    many: std::collections::HashSet<&'a str, super::HashState>,
}

impl<'a> Visited<'a> {
    /// Records `name`; false if it was visited already.
    fn insert(&mut self, name: &'a str) -> bool {
        if self.few[..self.len].contains(&name) {
            return false;
        }
        if self.len < self.few.len() {
            self.few[self.len] = name;
            self.len += 1;
            return true;
        }
        self.many.insert(name)
    }
}
