//! Dead-lettering: messages rejected without requeue, expired, or dropped by a length limit
//! are republished to the queue's dead-letter exchange, with RabbitMQ's `x-death` history.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::command::Message;
use crate::proto::table::{FieldTable, FieldValue};

use super::Broker;
use super::exchange::QueueId;
use super::queue::QueuedMessage;

/// Why a message was dead-lettered; the `reason` of its `x-death` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected or nacked without requeue, or refused by a reject-publish-dlx queue.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped from the head of a full queue.
    MaxLen,
}

impl DeathReason {
    fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

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
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert("count", FieldValue::I64(count + 1));
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
                t.insert("original-expiration", text(exp));
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

/// Whether a dead-lettered message arriving at `queue` would go round a cycle with no
/// client in it: it already died there, and never by rejection (RabbitMQ drops these).
fn is_cycle(message: &Message, queue: &str) -> bool {
    let Some(FieldValue::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let tables = deaths.iter().filter_map(|d| match d {
        FieldValue::Table(t) => Some(t),
        _ => None,
    });
    let mut seen_here = false;
    for t in tables {
        if t.get("reason").and_then(FieldValue::as_str) == Some("rejected") {
            return false;
        }
        seen_here |= t.get("queue").and_then(FieldValue::as_str) == Some(queue);
    }
    seen_here
}

impl Broker {
    /// Releases messages a queue no longer holds and republishes them to its dead-letter
    /// exchange, if it has one.
    pub(super) fn dead_letter(
        &mut self,
        source: QueueId,
        entries: Vec<QueuedMessage>,
        reason: DeathReason,
    ) {
        if entries.is_empty() {
            return;
        }
        let target = self.queues.get(&source).and_then(|q| {
            let dlx = q.settings.dead_letter_exchange.clone()?;
            Some((
                q.vhost.clone(),
                q.name.clone(),
                dlx,
                q.settings.dead_letter_routing_key.clone(),
            ))
        });
        for entry in entries {
            self.work += 1;
            self.release(source, &entry);
            let Some((vhost, queue, dlx, dlrk)) = &target else {
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
            let mut targets = self.route(vhost, dlx, &message);
            targets.retain(|q| {
                self.queues
                    .get(q)
                    .is_some_and(|q| !is_cycle(&message, &q.name))
            });
            self.enqueue_routed(targets, Arc::new(message));
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
                expiration: expiration.map(str::to_string),
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
        assert!(is_cycle(&expired, "q1"));
        assert!(!is_cycle(&expired, "q2"));
        let rejected = dead_lettered(&expired, "q2", DeathReason::Rejected, "dlx", None, 0);
        assert!(
            !is_cycle(&rejected, "q1"),
            "a client rejected it: not a silent cycle"
        );
    }
}
