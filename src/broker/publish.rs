//! Publishing: a message from a publisher is checked, routed through its exchange (and
//! exchange-to-exchange bindings and alternate exchanges), stored when it is persistent and
//! reaches a durable queue, and enqueued; its confirm is recorded for the channel.

use std::sync::Arc;

use crate::proto::command::{ConnId, Message, Reply};
use crate::proto::constants::NO_ROUTE;
use crate::proto::method::*;

use super::auth::Access;
use super::channel::{Confirm, Mode, TxOp};
use super::death::{Allowance, DeathReason};
use super::error::*;
use super::exchange::{Destination, QueueId};
use super::queue::{Overflow, QueuedMessage};
use super::{Broker, Deferred};
use crate::store::{EntryBody, StoreOp};

impl Broker {
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
            .and_then(|v| v.exchange(exchange))
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
            Mode::Tx { ops, bytes, .. } => {
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
        let round = self.sessions.sync_waits.round;
        let Some(ch) = self.channel_mut(conn, channel) else {
            return;
        };
        let uid = ch.uid;
        let before = ch.mode.sync_wait(round);
        if let Mode::Confirm {
            pending,
            peak,
            returning,
            ..
        } = &mut ch.mode
        {
            pending.push_back((seq, outcome));
            *peak = (*peak).max(pending.len());
            *returning = 0;
        }
        let after = ch.mode.sync_wait(round);
        self.sessions.sync_waits.change(before, after);
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
    pub(super) fn route_and_enqueue(
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
        // Weighed once for every queue it reaches.
        let cost = super::queue::memory_cost(&message);
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
                    dead.push((qid, vec![refused(&message, allowance, cost)]));
                }
                continue;
            }
            let (durable, dropped) =
                self.enqueue_in(qid, &message, cost, message_ttl, shared, allowance);
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
        cost: u64,
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
            let (body, weight) = match shared {
                Some(sid) => (EntryBody::Shared(sid), 0),
                None => (EntryBody::Inline(message.clone()), cost),
            };
            let op = StoreOp::Enqueue {
                queue: qid,
                seq,
                body,
                expires_at_ms,
            };
            self.round.journal.push_weighed(op, weight);
            if self.config.deliver_after_sync {
                q.messages.hold(seq, batch);
                self.round.holding.insert(qid);
            }
        }
        if q.pages_next(queue_budget, broker_budget) {
            // The message lives in the store until consumers get near it.
            q.messages.page_out(seq, message.body_len());
            if !durable {
                let op = StoreOp::PageOut {
                    queue: qid,
                    seq,
                    message: message.clone(),
                    expires_at_ms,
                };
                self.round.journal.push_weighed(op, cost);
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
                delivery_count: 0,
                cost,
            });
        }
        if !q.consumers.is_empty()
            && !q.flow_stalled
            && q.messages.memory_bytes() >= queue_budget / 2
        {
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
}

/// The entry a publish refused by a full `reject-publish-dlx` queue is dead-lettered as:
/// it never took a position in the queue.
fn refused(message: &Arc<Message>, allowance: Allowance, cost: u64) -> QueuedMessage {
    QueuedMessage {
        seq: 0,
        message: message.clone(),
        redelivered: false,
        stored: false,
        expires_at_ms: None,
        priority: 0,
        shared: None,
        allowance,
        delivery_count: 0,
        cost,
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
    let mut routing = super::exchange::Routing::new(&message.routing_key, &message.properties);
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
        x.route(&mut routing, work, &mut |d| match d {
            Destination::Queue(id) => queues.push(*id),
            Destination::Exchange(e) => {
                reached_exchange = true;
                pending.push(e.as_str());
            }
        });
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
