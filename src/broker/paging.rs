//! Paging: the backlog of a queue beyond the memory budgets lives in the store and is read
//! back in batches as consumers get near it ([`Output::Load`](super::Output::Load) and
//! [`Broker::handle_loaded`]).

use crate::store::{LoadedEntry, StoreOp};

use super::exchange::QueueId;
use super::queue::QueuedMessage;
use super::{Broker, Resource};

impl Broker {
    /// Memory charged for ready messages held in memory, across all queues.
    pub fn memory_bytes(&self) -> u64 {
        self.topology
            .meter
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks for the queue's next paged batch if it is running low in memory. A read brings
    /// back what fits in the queue's memory budget; for a queue nobody consumes from, also
    /// what fits in the broker's, so that backlogs waiting for consumers stay in the store.
    /// A `basic.get` waiting on an empty queue reads one message at least.
    ///
    /// Nothing is read for consumers while the memory alarm is on and the queue's unacked
    /// deliveries hold more than its memory budget: a consumer that takes everything and
    /// acks nothing (prefetch 0) would otherwise pull a backlog of any size out of the
    /// store into memory, which the alarm, blocking only publishers, does not stop. The
    /// queue's consumers are served again once the alarm clears or acks bring it back
    /// under its budget ([`Broker::resume_stalled_loads`]). A waiting `basic.get` still
    /// reads the one message it takes, since it holds its connection's input (its acks
    /// too) until it is answered.
    pub(super) fn request_load(&mut self, queue: QueueId) {
        let (low_water, batch) = (
            self.config.memory.page_in_low_water,
            self.config.memory.page_in_batch,
        );
        let (queue_budget, broker_budget) = (
            self.config.memory.queue_memory_budget_bytes,
            self.config.memory.memory_budget_bytes,
        );
        let broker_room = broker_budget.saturating_sub(self.memory_bytes());
        let stall_over = self.read_stall_budget();
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        if q.messages.paged.count == 0 || q.messages.paged.loading {
            return;
        }
        let queue_room = queue_budget.saturating_sub(q.messages.memory_bytes());
        let active =
            !q.consumers.is_empty() || !q.waiting_gets.is_empty() || !q.waiting_admin.is_empty();
        let room = if active {
            queue_room
        } else {
            queue_room.min(broker_room)
        };
        let low = q.messages.in_memory_count() < low_water && room >= queue_budget / 2;
        let get_starved = (!q.waiting_gets.is_empty() && q.messages.in_memory_count() == 0)
            || !q.waiting_admin.is_empty();
        if !(low || get_starved) {
            return;
        }
        let (mut batch, mut max_bytes) = (batch, room.max(1));
        // A management get or peek reads what it still lacks, within the budget's room.
        if let Some(want) = q.waiting_admin.iter().map(|w| w.want).max() {
            let short = want.saturating_sub(q.messages.in_memory_count());
            batch = batch.max(usize::try_from(short).unwrap_or(usize::MAX));
        }
        if stall_over.is_some_and(|over| q.messages.unacked_cost > over) {
            if self.topology.loads_stalled.insert(queue) {
                self.counters.loads_stalled += 1;
            }
            if !get_starved {
                return;
            }
            // A waiting get holds its connection's input, the acks that would end the
            // stall among it: it reads its one message.
            (batch, max_bytes) = (1, 1);
        }
        let paged = &mut q.messages.paged;
        paged.loading = true;
        self.round
            .loads
            .push((queue, paged.from_seq, batch, max_bytes, paged.epoch));
    }

    /// While the memory alarm is on, the memory a queue's unacked deliveries may hold
    /// before it stops reading its paged backlog for its consumers (its budget).
    pub(super) fn read_stall_budget(&self) -> Option<u64> {
        self.node
            .alarms
            .contains(&Resource::Memory)
            .then_some(self.config.memory.queue_memory_budget_bytes)
    }

    /// How many times a queue stopped reading its paged backlog because the memory alarm
    /// was on and its unacked deliveries held more than its budget.
    pub fn loads_stalled(&self) -> u64 {
        self.counters.loads_stalled
    }

    /// Serves again the queues whose reads [`Broker::request_load`] held back, once the
    /// memory alarm is off, their unacked deliveries are back under their budget, or they
    /// are gone. Looks only after an event that may have ended a stall.
    pub(super) fn resume_stalled_loads(&mut self) {
        if !std::mem::take(&mut self.topology.loads_recheck) {
            return;
        }
        let stall_over = self.read_stall_budget();
        let stalled = std::mem::take(&mut self.topology.loads_stalled);
        self.counters.work += stalled.len() as u64;
        for queue in stalled {
            match self.topology.queues.get(&queue) {
                None => {}
                Some(q) if stall_over.is_some_and(|over| q.messages.unacked_cost > over) => {
                    self.topology.loads_stalled.insert(queue);
                }
                Some(_) => self.schedule_dispatch(queue),
            }
        }
    }

    /// Entries the store read for an [`Output::Load`](super::Output::Load).
    pub fn handle_loaded(
        &mut self,
        queue: QueueId,
        epoch: u64,
        entries: Vec<LoadedEntry>,
        now_ms: u64,
    ) {
        self.now_ms = now_ms;
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        if q.messages.paged.epoch != epoch || !q.messages.paged.loading {
            // Purged (or the queue recreated its tail) while the read was in flight.
            return;
        }
        if entries.is_empty() {
            // The store holds fewer than counted: paged messages of a non-durable queue
            // are gone after a crash of the store's process. Start afresh from memory.
            tracing::warn!(queue = %q.decl.name, missing = q.messages.paged.count, "paged messages missing from the store");
            q.messages.forget_paged();
        } else {
            let last_paged = entries.iter().filter(|e| !e.durable).map(|e| e.seq).max();
            let redelivered_below = q.messages.redelivered_below_seq;
            let taken: Vec<QueuedMessage> = entries
                .into_iter()
                .map(|e| QueuedMessage {
                    seq: e.seq,
                    redelivered: e.seq < redelivered_below,
                    stored: e.durable,
                    expires_at_ms: e.expires_at_ms,
                    priority: 0,
                    shared: e.shared,
                    allowance: crate::broker::death::Allowance::FRESH,
                    delivery_count: 0,
                    cost: crate::store::memory_cost(&e.message),
                    message: e.message,
                })
                .collect();
            q.messages.take_loaded(taken);
            if let Some(up_to_seq) = last_paged {
                self.round
                    .journal
                    .push(StoreOp::DropPaged { queue, up_to_seq });
            }
        }
        self.serve_waiting_gets(queue);
        self.schedule_dispatch(queue);
        self.finish_round();
    }

    /// Answers the `basic.get`s that waited for a batch (or for nothing, once the queue
    /// was purged), and lets their connections go on.
    pub(super) fn serve_waiting_gets(&mut self, queue: QueueId) {
        // The management API's gets and peeks are answered once memory holds what they
        // want, or nothing more is paged.
        let admin = self
            .topology
            .queues
            .get_mut(&queue)
            .map(|q| std::mem::take(&mut q.waiting_admin))
            .unwrap_or_default();
        let mut still_waiting = false;
        for mut waiting in admin {
            waiting.reads += 1;
            if waiting.reads < super::admin::MAX_ADMIN_READS
                && self.admin_read_wanted(&waiting.request, true).is_some()
                && let Some(q) = self.topology.queues.get_mut(&queue)
            {
                q.waiting_admin.push_back(waiting);
                still_waiting = true;
                continue;
            }
            let result = self.admin_dispatch(waiting.request);
            self.answer_admin(waiting.id, result);
        }
        if still_waiting {
            self.request_load(queue);
        }
        loop {
            let Some(q) = self.topology.queues.get_mut(&queue) else {
                return;
            };
            if q.messages.in_memory_count() == 0 && q.messages.paged.count > 0 {
                // Still nothing in memory: wait for the next batch.
                self.request_load(queue);
                return;
            }
            let Some(get) = q.waiting_gets.pop_front() else {
                return;
            };
            if self.channel_uid(get.conn, get.channel) == Some(get.channel_uid)
                && !self.get_one(get.conn, get.channel, queue, get.no_ack)
            {
                // What was read had expired: the get waits for the next batch.
                if let Some(q) = self.topology.queues.get_mut(&queue) {
                    q.waiting_gets.push_front(get);
                }
                continue;
            }
            self.sessions.to_resume.push(get.conn);
        }
    }

    /// A queue with parked gets is gone: they find it empty.
    pub(super) fn fail_waiting_gets(
        &mut self,
        waiting: impl IntoIterator<Item = super::queue::WaitingGet>,
    ) {
        for get in waiting {
            if self.channel_uid(get.conn, get.channel) == Some(get.channel_uid) {
                self.send_method(
                    get.conn,
                    get.channel,
                    crate::proto::method::Method::BasicGetEmpty(Default::default()),
                );
            }
            self.sessions.to_resume.push(get.conn);
        }
    }
}
