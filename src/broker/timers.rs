//! Time-driven work: message expiry (TTL) and deletion of unused `x-expires` queues.
//!
//! Each queue has at most one live timer, for the earlier of its head message's expiry
//! and its idle deadline. The heap may hold stale entries (a queue's timer moved earlier,
//! or its queue was deleted); they are recognised by
//! [`Expiry::fire`](super::queue::Expiry::fire) and skipped, and the heap is rebuilt from
//! the live ones once the stale ones could outnumber them ([`timers_bound`]), so that
//! declaring and deleting queues, or publishing ever earlier expiries, cannot grow it
//! without end.

use std::cmp::Reverse;

use super::Broker;
use super::death::DeathReason;
use super::exchange::QueueId;

/// Queue timers handled in one call of [`Broker::handle_timeout`] at most.
const TIMERS_PER_ROUND: usize = 4096;

/// The most entries the timer heap holds with `queues` queues: twice one live timer per
/// queue, and some room so that rebuilding it is rare for a few queues.
pub(super) fn timers_bound(queues: usize) -> usize {
    2 * queues + 64
}

impl Broker {
    /// When [`Broker::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.dead_letters_waiting() {
            // Dead letters left over from the last round: at once.
            return Some(self.now_ms);
        }
        let queue_timer = self.topology.timers.peek().map(|Reverse((t, _))| *t);
        [
            queue_timer,
            self.next_delayed_ms(),
            self.next_flow_check_ms(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time has passed: expire messages and delete unused queues that are due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.route_dead_letters();
        self.release_delayed();
        self.flow_checks(now_ms);
        // A bounded number of queues per round: due timers left over keep
        // `poll_timeout` in the past, so the driver calls again at once, between inputs.
        for _ in 0..TIMERS_PER_ROUND {
            let Some(Reverse((at, queue))) = self.topology.timers.peek().copied() else {
                break;
            };
            if at > now_ms {
                break;
            }
            self.topology.timers.pop();
            let live = self
                .topology
                .queues
                .get_mut(&queue)
                .is_some_and(|q| q.expiry.fire(at));
            if live {
                self.queue_tick(queue);
            }
        }
        self.finish_round();
    }

    /// Expires due messages at the queue's head and deletes it if unused for too long.
    pub(super) fn queue_tick(&mut self, queue: QueueId) {
        let now = self.now_ms;
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        if q.idle_deadline_ms().is_some_and(|t| t <= now) {
            self.delete_queue(queue);
            return;
        }
        let expired = q.messages.drop_expired(now);
        if !expired.is_empty() {
            self.dead_letter(queue, expired, DeathReason::Expired);
            self.schedule_dispatch(queue);
        }
        self.reschedule(queue);
    }

    /// Makes sure the queue's next timed event has a timer.
    pub(super) fn reschedule(&mut self, queue: QueueId) {
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        // A message expires once the clock passes its expiry time.
        let next = [
            q.messages.head_expiry_ms().map(|t| t + 1),
            q.idle_deadline_ms(),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(at) = next
            && q.expiry.arm(at)
        {
            self.topology.timers.push(Reverse((at, queue)));
            if self.topology.timers.len() > timers_bound(self.topology.queues.len()) {
                self.drop_stale_timers();
            }
        }
    }

    /// Rebuilds the timer heap from its live entries: each queue's pending timer, once.
    /// At most one entry per queue is left, so the next rebuild is at least as many
    /// pushes away as there are queues (plus the bound's room): linear work, amortised.
    fn drop_stale_timers(&mut self) {
        let queues = &self.topology.queues;
        let mut live: Vec<_> = std::mem::take(&mut self.topology.timers)
            .into_vec()
            .into_iter()
            .filter(|Reverse((at, queue))| {
                queues
                    .get(queue)
                    .is_some_and(|q| q.expiry.pending() == Some(*at))
            })
            .collect();
        live.sort_unstable();
        live.dedup();
        debug_assert!(live.len() <= queues.len());
        self.topology.timers = live.into();
    }
}
