//! Looking into a queue without taking from it, and sending dead letters back where they
//! came from: the management UI's peek and dead-letter views.

use std::sync::Arc;

use crate::proto::command::Message;
use crate::proto::table::FieldValue;

use super::super::auth::Access;
use super::super::death::Allowance;
use super::super::declare::exclusive_lock_error;
use super::super::error::resource;
use super::super::queue::MAX_ROUTING_KEY_BYTES;
use super::super::{Broker, QueueId};
use super::{Actor, AdminError, AdminReply, AdminResult, GotMessage, bad_request, not_found};

/// Most messages one peek reads.
pub const MAX_PEEK_COUNT: usize = 1_000;
/// Most gets and peeks of the management API that wait on one queue for reads of its
/// paged messages; more are answered from what memory holds.
pub const MAX_WAITING_ADMIN: usize = 8;
/// Most reads one of them waits for: consumers taking messages as they come in could
/// otherwise keep it waiting for ever.
pub const MAX_ADMIN_READS: usize = 16;
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
    /// A get or peek reads what the queue holds in memory. One that asks for more while
    /// the rest of the queue is in the store first waits for reads of it, within bounds:
    /// only a peek or a get that requeues (one whose requester may have given up by then
    /// changes nothing), at most [`MAX_WAITING_ADMIN`] on a queue, for at most
    /// [`MAX_ADMIN_READS`] reads, never while the memory alarm is on, and no further than
    /// the queue's memory budget (as far as a consumer's reads go). Returns the queue and
    /// how many messages the request wants in memory, expired ones dropped first, if it
    /// must wait.
    pub(in crate::broker) fn admin_read_wanted(
        &mut self,
        request: &super::AdminRequest,
        parked: bool,
    ) -> Option<(QueueId, u64)> {
        let (actor, vhost, queue, count) = match request {
            super::AdminRequest::Get {
                actor,
                vhost,
                queue,
                count,
                ack: super::GetAck::Requeue | super::GetAck::RejectRequeue,
            } => (
                actor,
                vhost,
                queue,
                (*count).min(super::topology::MAX_GET_COUNT),
            ),
            super::AdminRequest::Peek {
                actor,
                vhost,
                queue,
                count,
            } => (actor, vhost, queue, (*count).min(MAX_PEEK_COUNT)),
            _ => return None,
        };
        if self.read_stall_budget().is_some() {
            return None;
        }
        // Refusals are answered at once, by the request itself.
        let qid = self.inspectable_queue(actor, vhost, queue).ok()?;
        let budget = self.config.memory.queue_memory_budget_bytes;
        let q = self.topology.queues.get_mut(&qid)?;
        if q.messages.paged.count == 0 || (!parked && q.waiting_admin.len() >= MAX_WAITING_ADMIN) {
            return None;
        }
        let expired = q.messages.drop_expired(self.now_ms);
        self.dead_letter(qid, expired, super::super::death::DeathReason::Expired);
        let q = self.topology.queues.get(&qid)?;
        let want = count as u64;
        (q.messages.paged.count > 0
            && q.messages.in_memory_count() < want
            && q.messages.memory_bytes() < budget)
            .then_some((qid, want))
    }

    /// Parks a get or peek that must wait for reads of the store ([`Self::admin_read_wanted`])
    /// on its queue, or gives it back. `serve_waiting_gets` answers it once memory holds
    /// what it wants, or its budget's worth, or nothing more is paged.
    pub(in crate::broker) fn wait_for_paged(
        &mut self,
        id: super::AdminId,
        request: super::AdminRequest,
    ) -> Option<super::AdminRequest> {
        let Some((qid, want)) = self.admin_read_wanted(&request, false) else {
            return Some(request);
        };
        let Some(q) = self.topology.queues.get_mut(&qid) else {
            return Some(request);
        };
        q.waiting_admin
            .push_back(super::super::queue::WaitingAdmin {
                id,
                request,
                want,
                reads: 0,
            });
        // Waiting is using the queue (`x-expires`).
        self.touch_queue(qid);
        self.request_load(qid);
        None
    }

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
            // The key comes from the message's headers, which its publisher wrote: held
            // to a publish's bound and to the user's topic permissions, as a publish is.
            if key.len() > MAX_ROUTING_KEY_BYTES {
                return Err(bad_request(format!(
                    "message {seq} names a routing key of {} bytes in its x-death; routing \
                     keys are at most {MAX_ROUTING_KEY_BYTES} bytes",
                    key.len()
                )));
            }
            if let Actor::User(user) = actor {
                self.check_topic(user, vhost, Access::Write, &exchange, &key)?;
            }
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
        let mut seqs: Vec<u64> = plan.iter().map(|(seq, _, _)| *seq).collect();
        seqs.sort_unstable();
        let taken = self
            .topology
            .queues
            .get_mut(&id)
            .map(|q| q.messages.take_many(&seqs))
            .unwrap_or_default();
        for (seq, message, queues) in plan {
            let Ok(i) = taken.binary_search_by_key(&seq, |m| m.seq) else {
                continue;
            };
            let entry = &taken[i];
            self.release(id, entry);
            self.counters.totals.publish += 1;
            self.enqueue_routed(queues, Arc::new(message), Allowance::FRESH);
            moved += 1;
        }
        self.touch_queue(id);
        Ok(AdminReply::Count(moved))
    }
}
