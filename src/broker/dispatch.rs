//! Moving messages: dispatch to consumers, requeue, release, and publisher confirms.

use crate::proto::command::{ConnId, Reply};
use crate::proto::method::{BasicAck, BasicNack, Method};

use super::Broker;
use super::channel::{Confirm, Mode, Unacked};
use super::death::DeathReason;
use super::exchange::QueueId;
use super::queue::{ConsumerRef, QueuedMessage};

impl Broker {
    /// Asks for a dispatch pass over a queue at the end of the current input.
    pub(super) fn schedule_dispatch(&mut self, queue: QueueId) {
        if let Some(q) = self.topology.queues.get_mut(&queue) {
            if !q.dispatch_scheduled {
                q.dispatch_scheduled = true;
                self.round.to_dispatch.push(queue);
            }
        }
    }

    pub(super) fn run_dispatch(&mut self) {
        // Serve queues in id order whatever order they were scheduled in (callers collect
        // them from hash maps), so that the outputs depend only on the inputs.
        self.round.to_dispatch.sort_unstable_by(|a, b| b.cmp(a));
        while let Some(queue) = self.round.to_dispatch.pop() {
            self.counters.work += 1;
            if let Some(q) = self.topology.queues.get_mut(&queue) {
                q.dispatch_scheduled = false;
            }
            self.dispatch(queue);
            self.reschedule(queue);
            self.request_load(queue);
            self.flow_release(queue);
        }
    }

    /// Store batches through `synced` are synced: the messages they hold back may go out.
    pub(super) fn release_held(&mut self, synced: u64) {
        let holding = std::mem::take(&mut self.round.holding);
        for queue in holding {
            let Some(q) = self.topology.queues.get_mut(&queue) else {
                continue;
            };
            let released = q.messages.release(synced);
            if q.messages.holding() {
                self.round.holding.insert(queue);
            }
            if released {
                self.schedule_dispatch(queue);
            }
        }
    }

    /// Marks a queue as used now (for `x-expires`).
    pub(super) fn touch_queue(&mut self, queue: QueueId) {
        if let Some(q) = self.topology.queues.get_mut(&queue) {
            q.expiry.touch(self.now_ms);
        }
        self.schedule_dispatch(queue);
    }

    /// Delivers ready messages to the queue's consumers in round-robin order, skipping
    /// consumers that are at their prefetch limit, paused by flow, or whose connection has
    /// too much unwritten output. Stops when no consumer can take the next message.
    fn dispatch(&mut self, queue: QueueId) {
        let now = self.now_ms;
        loop {
            let Some(q) = self.topology.queues.get_mut(&queue) else {
                return;
            };
            if q.ready_count() == 0 || q.consumers.is_empty() {
                return;
            }
            let expired = q.messages.drop_expired(now);
            if !expired.is_empty() {
                self.dead_letter(queue, expired, DeathReason::Expired);
                continue;
            }
            if q.messages.head_held() {
                // Dispatch resumes when the batch is synced (`release_held`).
                return;
            }
            if !self.deliver_next(queue) {
                return;
            }
        }
    }

    /// Hands a drop-head queue's ready messages to consumers that can take one now, while
    /// the queue is over its length limit, before the limit drops any: RabbitMQ offers a
    /// published message to a waiting consumer before the queue counts it, so a queue
    /// with `x-max-length` 0 still delivers to a consumer with room. Messages expired by
    /// now are dead-lettered, not delivered; the caller routes the dead letters once the
    /// publish is in every queue it reached.
    pub(super) fn deliver_before_dropping(&mut self, queue: QueueId) {
        let now = self.now_ms;
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            return;
        };
        let expired = q.messages.drop_expired(now);
        self.queue_dead_letters(queue, expired, DeathReason::Expired);
        // Each turn delivers one message or stops: bounded by the queue's ready count.
        while self
            .topology
            .queues
            .get(&queue)
            .is_some_and(|q| q.over_drop_head_limit() && !q.messages.head_held())
        {
            if !self.deliver_next(queue) {
                return;
            }
        }
    }

    /// Delivers the queue's next ready message to the consumer whose turn it is; false
    /// when no consumer can take one now or no message is ready to go.
    fn deliver_next(&mut self, queue: QueueId) -> bool {
        let Some(target) = self.choose_consumer(queue) else {
            return false;
        };
        let Some(entry) = self
            .topology
            .queues
            .get_mut(&queue)
            .and_then(|q| q.messages.pop())
        else {
            return false;
        };
        self.deliver(queue, &target, entry)
    }

    /// Checks that a queue that skips its search for a consumer has none that could take
    /// a message, and waits for every candidate's channel or connection to free room; and
    /// that every queue a connection lists as waiting has a consumer on that channel (a
    /// queue that found a consumer since may still be listed on its other channels: a
    /// free there asks it for one more search).
    pub(super) fn check_skipped_searches(&self) {
        let limits = self.take_limits();
        for (&id, q) in &self.topology.queues {
            if !q.consumers.nobody_takes() {
                continue;
            }
            let single_active = q.decl.settings.single_active_consumer;
            for c in q.consumers.waiting_candidates(single_active) {
                assert!(
                    !consumer_can_take(&self.sessions, limits, c),
                    "queue {} skips its consumers though one can take a message",
                    q.decl.name
                );
                assert!(
                    self.sessions
                        .conns
                        .get(&c.conn)
                        .is_some_and(|conn| conn.waiting.waits(c.channel, id)),
                    "queue {} skips its consumers but is not waiting for channel {}",
                    q.decl.name,
                    c.channel
                );
            }
        }
        // A queue that searches has searched: when it holds a message it could deliver now
        // and no dispatch is on the way, none of its consumers can take it (otherwise an
        // event that freed one did not ask it to search).
        for q in self.topology.queues.values() {
            if q.consumers.nobody_takes()
                || q.dispatch_scheduled
                || q.messages.in_memory_count() == 0
                || q.messages.head_held()
                || q.messages.head_expiry_ms().is_some_and(|t| t < self.now_ms)
            {
                continue;
            }
            let single_active = q.decl.settings.single_active_consumer;
            assert!(
                !q.consumers
                    .candidates_of(single_active)
                    .any(|c| consumer_can_take(&self.sessions, limits, c)),
                "queue {} holds a message that one of its consumers can take, and no \
                 dispatch is on the way",
                q.decl.name
            );
        }
        for (conn, c) in &self.sessions.conns {
            for (channel, queue) in c.waiting.entries() {
                let q = self.topology.queues.get(&queue);
                assert!(
                    q.is_some_and(|q| q.consumers.has_channel(*conn, channel)),
                    "connection {conn} lists queue {queue} as waiting for channel {channel}, \
                     which has no consumer there"
                );
            }
        }
    }

    /// The write and unacked limits [`consumer_can_take`] applies.
    fn take_limits(&self) -> (usize, usize) {
        (
            self.config.limits.max_unflushed_bytes_per_connection,
            self.config.limits.max_unacked_per_channel,
        )
    }

    /// The consumer of `queue` that receives its next message, with the queue's
    /// round-robin cursor moved past it; None when none of them can take one now. The
    /// queue waits on the channels or connections of those that cannot.
    fn choose_consumer(&mut self, queue: QueueId) -> Option<ConsumerRef> {
        let limits = self.take_limits();
        let q = self.topology.queues.get_mut(&queue)?;
        let sessions = &self.sessions;
        let single_active = q.decl.settings.single_active_consumer;
        let mut passed_over = Vec::new();
        let chosen = q.consumers.choose(
            single_active,
            |c| consumer_can_take(sessions, limits, c),
            &mut self.counters.work,
            &mut passed_over,
        );
        self.wait_on(queue, passed_over);
        chosen
    }

    /// `queue` waits on these channels: their consumers could take nothing, because of the
    /// channel or of its connection.
    fn wait_on(&mut self, queue: QueueId, channels: Vec<(ConnId, u16)>) {
        let write_limit = self.config.limits.max_unflushed_bytes_per_connection;
        self.counters.work += channels.len() as u64;
        for (conn, channel) in channels {
            let held = self.sessions.held.contains_key(&conn);
            if let Some(c) = self.sessions.conns.get_mut(&conn) {
                let by_connection = held || c.unflushed_bytes >= write_limit;
                c.waiting.note(channel, queue, by_connection);
            }
        }
    }

    /// The connection frees room (its output drained, its parked get was answered): the
    /// queues that waited for it look at its consumers again.
    pub(super) fn connection_freed(&mut self, conn: ConnId) {
        let waiting = self
            .sessions
            .conns
            .get_mut(&conn)
            .map(|c| c.waiting.take_connection())
            .unwrap_or_default();
        for (channel, queue) in waiting {
            self.wake(queue, conn, channel);
        }
    }

    /// A channel frees room (a settlement, qos, recover, flow resumed): the queues that
    /// waited for it look at its consumers again.
    pub(super) fn channel_freed(&mut self, conn: ConnId, channel: u16) {
        let queues = self
            .sessions
            .conns
            .get_mut(&conn)
            .map(|c| c.waiting.take_channel(channel))
            .unwrap_or_default();
        for queue in queues {
            self.wake(queue, conn, channel);
        }
    }

    /// `queue` looks at the consumers of channel `channel` again, at its next dispatch.
    fn wake(&mut self, queue: QueueId, conn: ConnId, channel: u16) {
        self.counters.work += 1;
        if let Some(q) = self.topology.queues.get_mut(&queue) {
            self.counters.work += q.consumers.wake(conn, channel);
        }
        self.schedule_dispatch(queue);
    }

    /// Sends a message taken from `queue` to a consumer, as unacked on its channel unless
    /// the consumer acks nothing (then the queue is done with it). Returns false, having
    /// lost the message, if the queue or the consumer is gone, which cannot happen.
    fn deliver(&mut self, queue: QueueId, target: &ConsumerRef, entry: QueuedMessage) -> bool {
        let Some(q) = self.topology.queues.get_mut(&queue) else {
            debug_assert!(false, "delivery from a deleted queue");
            return false;
        };
        q.last_delivery_ms = self.now_ms;
        q.flow_stalled = false;
        let Some(ch) = self
            .sessions
            .conns
            .get_mut(&target.conn)
            .and_then(|c| c.channels.get_mut(&target.channel))
        else {
            debug_assert!(false, "consumer without a channel");
            return false;
        };
        let Some(consumer) = ch.consumers.get_mut(&target.tag) else {
            debug_assert!(false, "consumer not registered on its channel");
            return false;
        };
        let tag = ch.next_tag;
        ch.next_tag += 1;
        let redelivered = entry.redelivered;
        let message = entry.outgoing(q.decl.settings.quorum);
        q.stats.delivered(consumer.no_ack, entry.redelivered);
        ch.stats.delivered(consumer.no_ack, entry.redelivered);
        self.counters
            .totals
            .delivered(consumer.no_ack, entry.redelivered);
        let consumed = if consumer.no_ack {
            Some(entry)
        } else {
            consumer.unacked += 1;
            ch.consumer_unacked += 1;
            ch.unacked.push(Unacked {
                tag,
                queue,
                consumer: Some((target.tag.clone(), consumer.id)),
                from_consumer: true,
                message: entry,
            });
            q.messages.unacked += 1;
            None
        };
        self.send(
            target.conn,
            Reply::Deliver {
                channel: target.channel,
                consumer_tag: target.tag.clone(),
                delivery_tag: tag,
                redelivered,
                message,
            },
        );
        if let Some(entry) = consumed {
            self.release(queue, &entry);
        }
        true
    }

    /// Returns an unacked delivery to its queue at its original position, flagged
    /// redelivered. If the queue is gone the message is dropped.
    pub(super) fn requeue(&mut self, entry: Unacked) {
        match self.topology.queues.get_mut(&entry.queue) {
            Some(q) => {
                debug_assert!(q.messages.unacked > 0);
                q.messages.unacked -= 1;
                let mut message = entry.message;
                if q.decl.settings.quorum {
                    message.delivery_count = message.delivery_count.saturating_add(1);
                }
                if let Some(limit) = q.decl.settings.delivery_limit {
                    if u64::from(message.delivery_count) > limit {
                        self.dead_letter(entry.queue, vec![message], DeathReason::DeliveryLimit);
                        return;
                    }
                }
                q.messages.requeue(message);
                self.schedule_dispatch(entry.queue);
            }
            // The queue's deletion dropped its stored entries.
            None => {}
        }
    }

    /// A queue is done with a message (acked, consumed without ack, dropped or purged):
    /// forget its stored entry.
    pub(super) fn release(&mut self, queue: QueueId, entry: &QueuedMessage) {
        if !entry.stored {
            return;
        }
        // A deleted queue's entries went with it.
        if self.topology.queues.contains_key(&queue) {
            self.round.journal.push(crate::store::StoreOp::Dequeue {
                queue,
                seq: entry.seq,
                shared: entry.shared,
            });
        }
    }

    /// Settles a confirm that was waiting for the store.
    pub(super) fn resolve_confirm(
        &mut self,
        conn: ConnId,
        uid: u64,
        channel: u16,
        seq: u64,
        outcome: Confirm,
    ) {
        let Some(ch) = self.channel_mut(conn, channel) else {
            return;
        };
        if ch.uid != uid {
            return;
        }
        if let Mode::Confirm { pending, .. } = &mut ch.mode {
            let pos = pending.partition_point(|(s, _)| *s < seq);
            if let Some((s, state)) = pending.get_mut(pos) {
                if *s == seq {
                    *state = outcome;
                    self.round.confirm_dirty.push((conn, channel));
                }
            }
        }
    }

    /// Sends the confirms that are ready, in publish order, coalescing runs of acks into
    /// one `multiple` ack.
    pub(super) fn flush_confirms(&mut self) {
        if self.round.confirm_dirty.is_empty() {
            return;
        }
        let mut dirty = std::mem::take(&mut self.round.confirm_dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for (conn, channel) in dirty {
            let Some(ch) = self.channel_mut(conn, channel) else {
                continue;
            };
            let Mode::Confirm { pending, .. } = &mut ch.mode else {
                continue;
            };
            let mut out = Vec::new();
            let before = pending.len();
            let mut run: Option<(u64, u64)> = None;
            while let Some(&(seq, state)) = pending.front() {
                match state {
                    Confirm::Waiting => break,
                    Confirm::Ack => run = Some((seq, run.map_or(1, |(_, n)| n + 1))),
                    Confirm::Nack => {
                        if let Some((last, n)) = run.take() {
                            out.push(ack(last, n));
                        }
                        out.push(Method::BasicNack(BasicNack {
                            delivery_tag: seq,
                            multiple: false,
                            requeue: false,
                        }));
                    }
                }
                pending.pop_front();
            }
            if let Some((last, n)) = run {
                out.push(ack(last, n));
            }
            let confirmed = (before - pending.len()) as u64;
            ch.stats.confirm += confirmed;
            self.counters.totals.confirm += confirmed;
            for m in out {
                self.send_method(conn, channel, m);
            }
        }
    }
}

fn ack(last: u64, count: u64) -> Method {
    Method::BasicAck(BasicAck {
        delivery_tag: last,
        multiple: count > 1,
    })
}

/// Whether the consumer `c` can take one more message now: its connection has no parked
/// get and not too much unwritten output, and its channel and its own prefetch have room.
fn consumer_can_take(
    sessions: &super::parts::Sessions,
    (write_limit, unacked_limit): (usize, usize),
    c: &ConsumerRef,
) -> bool {
    // A connection whose get waits for the store gets nothing else meanwhile, as behind a
    // synchronous get.
    !sessions.held.contains_key(&c.conn)
        && sessions.conns.get(&c.conn).is_some_and(|conn| {
            conn.unflushed_bytes < write_limit
                && conn
                    .channels
                    .get(&c.channel)
                    .is_some_and(|ch| ch.can_deliver(&c.tag) && ch.unacked.len() < unacked_limit)
        })
}
