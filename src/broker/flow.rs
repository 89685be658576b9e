//! Flow control between publishers and consumers.
//!
//! While a queue has consumers, a publisher faster than them would only grow the queue
//! until it spills into the store; instead, once the queue holds half its memory budget,
//! the publisher's connection stops being read until the consumers have taken the queue
//! back under a quarter of it (TCP holds the publisher back meanwhile). A queue without
//! consumers still takes everything: absorbing bursts is what queues are for. Connections
//! that consume are never paused this way, since their acks must keep flowing.
//!
//! Publishers are held only while the consumers make progress: a queue that delivers
//! nothing for [`FLOW_STALL_MS`] while publishers wait has consumers that wait on their
//! application (a prefetch window that is never acked), and holding publishers for them
//! would let any consumer stop every publisher of the queue for good. Its publishers are
//! read again, and the queue holds no one back until it delivers again (its messages
//! page to the store meanwhile, and the memory alarm still applies), as RabbitMQ never
//! holds publishers back for consumers.

use crate::proto::command::{ConnId, Reply};

use super::Broker;
use super::exchange::QueueId;

/// Reading is paused by a resource alarm.
pub const PAUSED_BY_ALARM: u8 = 1;
/// Reading is paused until a queue's consumers catch up.
pub const PAUSED_BY_FLOW: u8 = 2;
/// Reading is paused while a basic.get waits for the store, or for the connection's
/// unwritten replies to drain.
pub const PAUSED_BY_GET: u8 = 4;
/// Reading is paused because the client does not read the replies it causes: its
/// unwritten backlog passed [`OUTPUT_PAUSE_FACTOR`] times the delivery limit.
pub const PAUSED_BY_OUTPUT: u8 = 8;

/// Deliveries to a connection stop at `max_unflushed_bytes_per_connection` of unwritten
/// replies; its input stops being read at this many times that (replies to its own
/// methods: confirms, returns, declare-oks), and is read again at half of it. The gap
/// keeps a client that publishes and consumes on one connection from being stopped by
/// its own deliveries.
pub const OUTPUT_PAUSE_FACTOR: usize = 4;

/// How long a queue may hold publishers back without delivering a message.
pub const FLOW_STALL_MS: u64 = 1000;

/// Flow checks handled in one call of [`Broker::handle_timeout`] at most.
const FLOW_CHECKS_PER_ROUND: usize = 4096;

impl Broker {
    /// Sets or clears one reason for not reading a connection; tells the connection when
    /// the first reason appears and when the last one goes.
    pub(super) fn set_paused(&mut self, conn: ConnId, reason: u8, on: bool) {
        let Some(c) = self.sessions.conns.get_mut(&conn) else {
            return;
        };
        let before = c.paused;
        if on {
            c.paused |= reason;
        } else {
            c.paused &= !reason;
        }
        match (before == 0, c.paused == 0) {
            (true, false) => self.send(conn, Reply::PauseReading(true)),
            (false, true) => self.send(conn, Reply::PauseReading(false)),
            _ => {}
        }
    }

    /// After a publish: pauses the publisher if a queue it reached is filling up faster
    /// than its consumers empty it.
    pub(super) fn flow_after_publish(&mut self, conn: ConnId) {
        if self.round.flow_hot.is_empty() {
            return;
        }
        let hot = std::mem::take(&mut self.round.flow_hot);
        let Some(c) = self.sessions.conns.get(&conn) else {
            return;
        };
        if c.flow_queue.is_some() || c.channels.values().any(|ch| !ch.consumers.is_empty()) {
            return;
        }
        let Some(&queue) = hot.first() else { return };
        if let Some(c) = self.sessions.conns.get_mut(&conn) {
            c.flow_queue = Some(queue);
        }
        let now = self.now_ms;
        if let Some(q) = self.topology.queues.get_mut(&queue) {
            if q.flow_waiters.is_empty() {
                self.topology
                    .flow_timers
                    .push(std::cmp::Reverse((now + FLOW_STALL_MS, queue)));
            }
            q.flow_waiters.push(conn);
        }
        self.set_paused(conn, PAUSED_BY_FLOW, true);
    }

    /// When the next flow check is due.
    pub(super) fn next_flow_check_ms(&self) -> Option<u64> {
        self.topology
            .flow_timers
            .peek()
            .map(|std::cmp::Reverse((at, _))| *at)
    }

    /// Due flow checks: a queue that has delivered nothing for [`FLOW_STALL_MS`] while
    /// publishers waited lets them go; one that delivered is checked again later.
    pub(super) fn flow_checks(&mut self, now_ms: u64) {
        for _ in 0..FLOW_CHECKS_PER_ROUND {
            let Some(std::cmp::Reverse((at, queue))) = self.topology.flow_timers.peek().copied()
            else {
                return;
            };
            if at > now_ms {
                return;
            }
            self.topology.flow_timers.pop();
            let Some(q) = self.topology.queues.get_mut(&queue) else {
                continue;
            };
            if q.flow_waiters.is_empty() {
                continue;
            }
            let quiet_since = q.last_delivery_ms.max(at - FLOW_STALL_MS);
            if now_ms.saturating_sub(quiet_since) < FLOW_STALL_MS {
                self.topology
                    .flow_timers
                    .push(std::cmp::Reverse((quiet_since + FLOW_STALL_MS, queue)));
                continue;
            }
            q.flow_stalled = true;
            let waiters = std::mem::take(&mut q.flow_waiters);
            self.release_waiters(queue, waiters);
        }
    }

    /// Resumes the publishers waiting on a queue once it is back under a quarter of its
    /// budget, or has no consumers left.
    pub(super) fn flow_release(&mut self, queue: QueueId) {
        let budget = self.config.memory.queue_memory_budget_bytes;
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        if q.flow_waiters.is_empty()
            || (q.messages.memory_bytes() > budget / 4 && !q.consumers.is_empty())
        {
            return;
        }
        let waiters = std::mem::take(&mut q.flow_waiters);
        self.release_waiters(queue, waiters);
    }

    /// A paused publisher started consuming: its acks must flow, so it is read again.
    pub(super) fn flow_consumer_added(&mut self, conn: ConnId) {
        let Some(queue) = self.sessions.conns.get(&conn).and_then(|c| c.flow_queue) else {
            return;
        };
        if let Some(q) = self.topology.queues.get_mut(&queue) {
            q.flow_waiters.retain(|c| *c != conn);
        }
        self.release_waiters(queue, vec![conn]);
    }

    /// Resumes publishers that waited on a queue (which may be gone).
    pub(super) fn release_waiters(&mut self, queue: QueueId, waiters: Vec<ConnId>) {
        for conn in waiters {
            let waiting = self.sessions.conns.get_mut(&conn).is_some_and(|c| {
                let here = c.flow_queue == Some(queue);
                if here {
                    c.flow_queue = None;
                }
                here
            });
            if waiting {
                self.set_paused(conn, PAUSED_BY_FLOW, false);
            }
        }
    }
}
