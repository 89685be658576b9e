//! Looking into a queue without taking from it, and sending dead letters back where they
//! came from: the management UI's peek and dead-letter views.

use std::sync::Arc;

use crate::proto::command::Message;
use crate::proto::table::FieldValue;

use super::super::auth::Access;
use super::super::death::Allowance;
use super::super::declare::exclusive_lock_error;
use super::super::error::resource;
use super::super::{Broker, QueueId};
use super::{Actor, AdminError, AdminReply, AdminResult, GotMessage, bad_request, not_found};

/// Most messages one peek reads.
pub const MAX_PEEK_COUNT: usize = 1_000;
/// Most messages one republish moves.
pub const MAX_REPUBLISH_COUNT: usize = 1_000;

/// Where a dead letter was first published: the exchange and routing key of the oldest
/// entry of its `x-death` (the history is kept newest first).
fn first_publication(message: &Message) -> Option<(String, String)> {
    let headers = message.properties.headers.as_ref()?;
    let Some(FieldValue::Array(deaths)) = headers.get("x-death") else {
        return None;
    };
    let Some(FieldValue::Table(oldest)) = deaths.last() else {
        return None;
    };
    let exchange = oldest.get("exchange")?.as_str()?.to_string();
    let Some(FieldValue::Array(keys)) = oldest.get("routing-keys") else {
        return None;
    };
    let key = keys.first()?.as_str()?.to_string();
    Some((exchange, key))
}

impl Broker {
    /// A queue a user may read from over the API: it exists, the actor has read permission,
    /// and no connection owns it.
    pub(super) fn inspectable_queue(
        &self,
        actor: &Actor,
        vhost: &str,
        queue: &str,
    ) -> Result<QueueId, AdminError> {
        let id = self.find_queue(vhost, queue)?;
        self.admin_check(actor, vhost, Access::Read, "queue", queue)?;
        let owned = self
            .topology
            .queues
            .get(&id)
            .is_some_and(|q| q.decl.exclusive_owner.is_some());
        if owned {
            return Err(exclusive_lock_error(queue, vhost).into());
        }
        Ok(id)
    }

    pub(super) fn admin_peek(
        &mut self,
        actor: &Actor,
        vhost: &str,
        queue: &str,
        count: usize,
    ) -> AdminResult {
        let id = self.inspectable_queue(actor, vhost, queue)?;
        let Some(q) = self.topology.queues.get(&id) else {
            return Err(not_found(format!("no {}", resource("queue", queue, vhost))));
        };
        let message_count = q.ready_count();
        let out = q
            .messages
            .ready()
            .take(count.min(MAX_PEEK_COUNT))
            .map(|entry| GotMessage {
                message: entry.message.clone(),
                redelivered: entry.redelivered,
                message_count,
                position: entry.seq,
            })
            .collect();
        Ok(AdminReply::Messages(out))
    }

    pub(super) fn admin_republish(
        &mut self,
        actor: &Actor,
        vhost: &str,
        queue: &str,
        positions: &[u64],
    ) -> AdminResult {
        if positions.len() > MAX_REPUBLISH_COUNT {
            return Err(bad_request(format!(
                "at most {MAX_REPUBLISH_COUNT} messages can be republished at once"
            )));
        }
        let id = self.inspectable_queue(actor, vhost, queue)?;
        // Everything is checked before anything moves.
        let mut plan = Vec::with_capacity(positions.len());
        for &seq in positions {
            if plan.iter().any(|(s, _, _)| *s == seq) {
                continue;
            }
            let entry = self
                .topology
                .queues
                .get(&id)
                .and_then(|q| q.messages.find(seq))
                .ok_or_else(|| {
                    not_found(format!(
                        "message {seq} is no longer ready in {}",
                        resource("queue", queue, vhost)
                    ))
                })?;
            let (exchange, key) = first_publication(&entry.message).ok_or_else(|| {
                bad_request(format!(
                    "message {seq} has no x-death naming the exchange it was published to"
                ))
            })?;
            let x = self
                .topology
                .vhosts
                .get(vhost)
                .and_then(|v| v.exchanges.get(&exchange))
                .ok_or_else(|| {
                    not_found(format!("no {}", resource("exchange", &exchange, vhost)))
                })?;
            if x.internal {
                return Err(bad_request(format!(
                    "cannot publish to internal {}",
                    resource("exchange", &exchange, vhost)
                )));
            }
            self.admin_check(actor, vhost, Access::Write, "exchange", &exchange)?;
            let message = Message {
                exchange: exchange.clone(),
                routing_key: key,
                properties: entry.message.properties.clone(),
                body: entry.message.body.clone(),
            };
            // A dead letter that would route nowhere stays where it is rather than be lost.
            let queues = self.route(vhost, &exchange, &message);
            if queues.is_empty() {
                return Err(bad_request(format!(
                    "message {seq} would route to no queue from {} with routing key '{}'",
                    resource("exchange", &exchange, vhost),
                    message.routing_key
                )));
            }
            plan.push((seq, message, queues));
        }
        let mut moved = 0u64;
        for (seq, message, queues) in plan {
            let Some(entry) = self
                .topology
                .queues
                .get_mut(&id)
                .and_then(|q| q.messages.take(seq))
            else {
                continue;
            };
            self.release(id, &entry);
            self.counters.totals.publish += 1;
            self.enqueue_routed(queues, Arc::new(message), Allowance::FRESH);
            moved += 1;
        }
        self.touch_queue(id);
        Ok(AdminReply::Count(moved))
    }
}
