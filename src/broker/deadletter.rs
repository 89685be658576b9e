//! Dead-lettering: messages rejected without requeue, expired, or dropped by a length limit
//! are republished to the queue's dead-letter exchange, with RabbitMQ's `x-death` history.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::command::Message;
use crate::proto::table::{FieldTable, FieldValue};

use super::Broker;
use super::death::{Allowance, DeathReason, MAX_DEAD_LETTER_COPIES, MAX_DEAD_LETTER_HOPS};
use super::exchange::QueueId;
use super::queue::QueuedMessage;

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

/// The message as it is republished after dying in `queue`: its `x-death` history updated
/// (the entry for this queue and reason counted up and moved first), `x-first-death-*` set
/// once, its `expiration` removed (kept as `original-expiration`), and its routing key
/// replaced by the queue's dead-letter routing key when one is set.
pub fn dead_lettered(
    message: &Message,
    queue: &str,
    reason: DeathReason,
    exchange: &str,
    routing_key: Option<&str>,
    now_ms: u64,
) -> Message {
    let mut properties = message.properties.clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut deaths: Vec<FieldValue> = match headers.get("x-death") {
        Some(FieldValue::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let same = deaths.iter().position(|d| match d {
        FieldValue::Table(t) => {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        }
        _ => false,
    });
    let entry = match same {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                FieldValue::Table(t) => t,
                _ => FieldTable::default(),
            };
            // The count may come from a client: it saturates instead of overflowing.
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert("count", FieldValue::I64(count.saturating_add(1)));
            t.insert("time", FieldValue::Timestamp(now_ms / 1000));
            t
        }
        None => {
            let mut t = FieldTable::default();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", text(reason.as_str()));
            t.insert("queue", text(queue));
            t.insert("time", FieldValue::Timestamp(now_ms / 1000));
            t.insert("exchange", text(&message.exchange));
            t.insert(
                "routing-keys",
                FieldValue::Array(vec![text(&message.routing_key)]),
            );
            if let Some(exp) = &message.properties.expiration {
                let exp = Bytes::copy_from_slice(exp.as_bytes());
                t.insert("original-expiration", FieldValue::LongStr(exp));
            }
            t
        }
    };
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason", text(reason.as_str()));
        headers.insert("x-first-death-queue", text(queue));
        headers.insert("x-first-death-exchange", text(&message.exchange));
    }
    properties.headers = Some(headers);
    properties.expiration = None;
    Message {
        exchange: exchange.to_string(),
        routing_key: routing_key.unwrap_or(&message.routing_key).to_string(),
        properties,
        body: message.body.clone(),
    }
}

/// The queues a dead-lettered message would go round a cycle with no client in it by
/// arriving at, as RabbitMQ decides: those of the most recent deaths before the first
/// rejection (its `x-death` history is ordered by recency). Dead letters of rejected
/// messages are never cycles (a client decided each time). Read once per dead letter, so
/// that checking its targets costs a lookup each, whatever the history's length.
fn cycle_queues(message: &Message, reason: DeathReason) -> std::collections::HashSet<&str> {
    let mut queues = std::collections::HashSet::new();
    if reason.by_client() {
        return queues;
    }
    let Some(FieldValue::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return queues;
    };
    for death in deaths {
        let FieldValue::Table(t) = death else {
            // Something a client put there: not a fully automatic cycle.
            break;
        };
        if t.get("reason").and_then(FieldValue::as_str) == Some("rejected") {
            break;
        }
        if let Some(queue) = t.get("queue").and_then(FieldValue::as_str) {
            queues.insert(queue);
        }
    }
    queues
}

/// Dead letters routed in one round at most.
pub const DEAD_LETTERS_PER_ROUND: usize = 4096;

/// A message on its way to a dead-letter exchange.
#[derive(Debug)]
pub(super) struct DeadLetter {
    vhost: String,
    exchange: String,
    /// The message as it is republished: its `x-death` updated.
    message: Message,
    reason: DeathReason,
    allowance: Allowance,
}

/// Dead letters waiting to be routed: a work list drained iteratively, so that a chain of
/// dead-letter exchanges never becomes a recursion.
#[derive(Debug, Default)]
pub(super) struct DeadLetters {
    pending: std::collections::VecDeque<DeadLetter>,
    /// Being drained: new dead letters join the list instead of being routed at once.
    draining: bool,
    /// Dead letters routed since the round began: the round's budget is shared by every
    /// call that routes, so one input that rejects or expires many messages, each
    /// dead-lettered on its own, still routes at most [`DEAD_LETTERS_PER_ROUND`].
    routed: usize,
}

impl DeadLetters {
    /// A new round: its budget is whole again.
    pub(super) fn new_round(&mut self) {
        self.routed = 0;
    }
}

impl Broker {
    /// Releases messages a queue no longer holds and republishes them to its dead-letter
    /// exchange, if it has one. Routing happens here unless a dead letter is being routed
    /// already, in which case they join the work list that is being drained.
    pub(super) fn dead_letter(
        &mut self,
        source: QueueId,
        entries: Vec<QueuedMessage>,
        reason: DeathReason,
    ) {
        self.queue_dead_letters(source, entries, reason);
        self.route_dead_letters();
    }

    /// Routes the dead letters waiting, unless that is under way already.
    pub(super) fn route_dead_letters(&mut self) {
        if !self.round.dead_letters.draining && !self.round.dead_letters.pending.is_empty() {
            self.drain_dead_letters();
        }
    }

    /// Whether dead letters wait for a later round ([`Broker::poll_timeout`] asks for
    /// one at once).
    pub(super) fn dead_letters_waiting(&self) -> bool {
        !self.round.dead_letters.pending.is_empty()
    }

    /// Releases messages a queue no longer holds and adds them to the dead letters to
    /// route, if the queue has a dead-letter exchange; [`Broker::route_dead_letters`]
    /// routes them.
    pub(super) fn queue_dead_letters(
        &mut self,
        source: QueueId,
        entries: Vec<QueuedMessage>,
        reason: DeathReason,
    ) {
        if entries.is_empty() {
            return;
        }
        let target = self.topology.queues.get(&source).and_then(|q| {
            let dlx = q.decl.settings.dead_letter_exchange.clone()?;
            Some((
                q.decl.vhost.clone(),
                q.decl.name.clone(),
                dlx,
                q.decl.settings.dead_letter_routing_key.clone(),
            ))
        });
        let mut dropped = 0u64;
        for entry in entries {
            self.counters.work += 1;
            self.release(source, &entry);
            let Some((vhost, queue, dlx, dlrk)) = &target else {
                continue;
            };
            let Some(allowance) = entry.allowance.dead_letter(reason) else {
                dropped += 1;
                continue;
            };
            let message = dead_lettered(
                &entry.message,
                queue,
                reason,
                dlx,
                dlrk.as_deref(),
                self.now_ms,
            );
            self.round.dead_letters.pending.push_back(DeadLetter {
                vhost: vhost.clone(),
                exchange: dlx.clone(),
                message,
                reason,
                allowance,
            });
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_hops = MAX_DEAD_LETTER_HOPS,
                "dropped dead letters of messages dead-lettered too many times in a row"
            );
        }
    }

    /// Routes dead letters, including those that routing them produces, up to
    /// [`DEAD_LETTERS_PER_ROUND`]; the rest wait for the next round, so that one input
    /// that sets off many dead letters does not hold up everyone else's.
    fn drain_dead_letters(&mut self) {
        self.round.dead_letters.draining = true;
        let mut truncated = 0u64;
        while self.round.dead_letters.routed < DEAD_LETTERS_PER_ROUND {
            let Some(dl) = self.round.dead_letters.pending.pop_front() else {
                break;
            };
            self.round.dead_letters.routed += 1;
            self.counters.work += 1;
            let mut targets = self.route(&dl.vhost, &dl.exchange, &dl.message);
            let cycles = cycle_queues(&dl.message, dl.reason);
            targets.retain(|q| {
                self.topology
                    .queues
                    .get(q)
                    .is_some_and(|q| !cycles.contains(q.decl.name.as_str()))
            });
            drop(cycles);
            let (allowed, inherited) = dl.allowance.split(targets.len());
            if allowed < targets.len() {
                truncated += (targets.len() - allowed) as u64;
                // Route ids come sorted: the queues declared first keep their copies.
                targets.truncate(allowed);
            }
            self.enqueue_routed(targets, Arc::new(dl.message), inherited);
        }
        self.round.dead_letters.draining = false;
        if truncated > 0 {
            tracing::warn!(
                truncated,
                max_copies = MAX_DEAD_LETTER_COPIES,
                "dead letters not copied to every queue they route to: chains of dead-letter exchanges multiplied one message past its allowance"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::props::BasicProperties;

    fn msg(expiration: Option<&str>) -> Message {
        Message {
            exchange: "ex".into(),
            routing_key: "rk".into(),
            properties: BasicProperties {
                expiration: expiration.map(Into::into),
                ..Default::default()
            },
            body: Bytes::from_static(b"x"),
        }
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match m.properties.headers.as_ref().unwrap().get("x-death") {
            Some(FieldValue::Array(a)) => a
                .iter()
                .map(|d| match d {
                    FieldValue::Table(t) => t.clone(),
                    _ => panic!(),
                })
                .collect(),
            _ => panic!("no x-death"),
        }
    }

    #[test]
    fn x_death_counts_and_orders_deaths() {
        let once = dead_lettered(
            &msg(Some("100")),
            "q1",
            DeathReason::Expired,
            "dlx",
            None,
            5000,
        );
        assert_eq!(once.exchange, "dlx");
        assert_eq!(once.routing_key, "rk");
        assert_eq!(once.properties.expiration, None);
        let d = deaths(&once);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(
            d[0].get("reason").and_then(FieldValue::as_str),
            Some("expired")
        );
        assert_eq!(
            d[0].get("original-expiration").and_then(FieldValue::as_str),
            Some("100")
        );
        assert_eq!(
            d[0].get("exchange").and_then(FieldValue::as_str),
            Some("ex")
        );

        let twice = dead_lettered(&once, "q2", DeathReason::Rejected, "dlx", Some("k2"), 6000);
        assert_eq!(twice.routing_key, "k2");
        let again = dead_lettered(&twice, "q1", DeathReason::Expired, "dlx", None, 7000);
        let d = deaths(&again);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].get("queue").and_then(FieldValue::as_str), Some("q1"));
        assert_eq!(d[0].get("count"), Some(&FieldValue::I64(2)));
        let h = again.properties.headers.as_ref().unwrap();
        assert_eq!(
            h.get("x-first-death-queue").and_then(FieldValue::as_str),
            Some("q1")
        );
        assert_eq!(
            h.get("x-first-death-reason").and_then(FieldValue::as_str),
            Some("expired")
        );
    }

    #[test]
    fn cycles_without_rejection_are_detected() {
        let expired = dead_lettered(&msg(None), "q1", DeathReason::Expired, "dlx", None, 0);
        assert!(cycle_queues(&expired, DeathReason::Expired).contains("q1"));
        assert!(!cycle_queues(&expired, DeathReason::Expired).contains("q2"));
        let rejected = dead_lettered(&expired, "q2", DeathReason::Rejected, "dlx", None, 0);
        assert!(
            !cycle_queues(&rejected, DeathReason::Rejected).contains("q1"),
            "a client rejected it: not a silent cycle"
        );
        // A rejection older than the last death in q1 does not break the cycle.
        let again = dead_lettered(&rejected, "q1", DeathReason::MaxLen, "dlx", None, 0);
        let later = dead_lettered(&again, "q3", DeathReason::Expired, "dlx", None, 0);
        assert!(cycle_queues(&later, DeathReason::Expired).contains("q1"));
        assert!(
            !cycle_queues(&later, DeathReason::Expired).contains("q2"),
            "q2's death was a rejection"
        );
    }

    #[test]
    fn client_supplied_death_counts_saturate() {
        let mut death = FieldTable::default();
        death.insert("count", FieldValue::I64(i64::MAX));
        death.insert("reason", text("expired"));
        death.insert("queue", text("q1"));
        let mut headers = FieldTable::default();
        headers.insert("x-death", FieldValue::Array(vec![FieldValue::Table(death)]));
        let mut m = msg(None);
        m.properties.headers = Some(headers);
        let d = dead_lettered(&m, "q1", DeathReason::Expired, "dlx", None, 0);
        assert_eq!(deaths(&d)[0].get("count"), Some(&FieldValue::I64(i64::MAX)));
    }
}
