//! Moving messages: dispatch to consumers, requeue, release, and publisher confirms.

use std::sync::Arc;

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

    /// Checks that every consumer a queue does not try can take nothing and will be
    /// woken when that may change (its queue is on its channel's or connection's waiting
    /// list, or its own prefetch is full and a settlement wakes it); that a queue holding
    /// a deliverable message with no dispatch on the way has no consumer that could take
    /// it (otherwise an event that freed one did not ask it to search); and that every
    /// queue a connection lists as waiting has a consumer on that channel (a queue whose
    /// consumers were woken by other means may still be listed: a free there wakes them
    /// once more). A queue with nothing in memory and a consumer that could take its paged
    /// messages has a read of them on the way, or is held back by the memory alarm; one
    /// with a get waiting has a read on the way.
    pub(super) fn check_skipped_searches(&self) {
        let limits = self.take_limits();
        let stall_over = self.read_stall_budget();
        for (&id, q) in &self.topology.queues {
            for c in q.consumers.iter().filter(|c| !q.consumers.to_try(c)) {
                assert!(
                    consumer_blocked(&self.sessions, limits, c).is_some(),
                    "queue {} does not try consumer {} though it can take a message",
                    q.decl.name,
                    c.tag
                );
                let listed = self
                    .sessions
                    .conns
                    .get(&c.conn)
                    .is_some_and(|conn| conn.waiting.waits(c.channel, id));
                assert!(
                    listed || own_prefetch_full(&self.sessions, c),
                    "queue {} does not try consumer {} and nothing will wake it",
                    q.decl.name,
                    c.tag
                );
            }
            assert!(
                q.waiting_admin.is_empty() || q.messages.paged.loading,
                "queue {} has a management get or peek waiting and no read of its paged \
                 messages on the way",
                q.decl.name
            );
            let single_active = q.decl.settings.single_active_consumer;
            if !q.dispatch_scheduled
                && q.messages.in_memory_count() == 0
                && q.messages.paged.count > 0
                && !q.messages.paged.loading
            {
                let held_back = self.topology.loads_stalled.contains(&id)
                    && (self.topology.loads_recheck
                        || stall_over.is_some_and(|over| q.messages.unacked_cost > over));
                assert!(
                    q.waiting_gets.is_empty(),
                    "queue {} has a get waiting, nothing in memory, and no read of its paged \
                     messages on the way",
                    q.decl.name
                );
                let wanted = q
                    .consumers
                    .candidates_of(single_active)
                    .any(|c| consumer_blocked(&self.sessions, limits, c).is_none());
                assert!(
                    held_back || !wanted,
                    "queue {} has paged messages one of its consumers can take, none in \
                     memory, and no read of them on the way",
                    q.decl.name
                );
            }
            if q.dispatch_scheduled
                || q.messages.in_memory_count() == 0
                || q.messages.head_held()
                || q.messages.head_expiry_ms().is_some_and(|t| t < self.now_ms)
            {
                continue;
            }
            assert!(
                !q.consumers
                    .candidates_of(single_active)
                    .any(|c| consumer_blocked(&self.sessions, limits, c).is_none()),
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

    /// The write and unacked limits [`consumer_blocked`] applies.
    fn take_limits(&self) -> (usize, usize) {
        (
            self.config.limits.max_unflushed_bytes_per_connection,
            self.config.limits.max_unacked_per_channel,
        )
    }

    /// The consumer of `queue` that receives its next message, with the queue's
    /// round-robin cursor moved past it; None when none of them can take one now. The
    /// queue waits on what holds those that cannot.
    fn choose_consumer(&mut self, queue: QueueId) -> Option<ConsumerRef> {
        let limits = self.take_limits();
        let q = self.topology.queues.get_mut(&queue)?;
        let sessions = &self.sessions;
        let single_active = q.decl.settings.single_active_consumer;
        let mut passed_over = Vec::new();
        let chosen = q.consumers.choose(
            single_active,
            |c| consumer_blocked(sessions, limits, c),
            &mut self.counters.work,
            &mut passed_over,
        );
        self.wait_on(queue, passed_over);
        chosen
    }

    /// `queue` waits on what holds these consumers: their connection or channel lists it,
    /// and a consumer held by its own prefetch is woken by a settlement of its deliveries.
    fn wait_on(&mut self, queue: QueueId, passed_over: Vec<(ConsumerRef, Blocked)>) {
        self.counters.work += passed_over.len() as u64;
        for (c, why) in passed_over {
            let by_connection = match why {
                Blocked::Connection => true,
                Blocked::Channel => false,
                Blocked::Consumer => continue,
            };
            if let Some(conn) = self.sessions.conns.get_mut(&c.conn) {
                conn.waiting.note(c.channel, queue, by_connection);
            }
        }
    }

    /// Settled deliveries freed the channel's shared prefetch and unacked count, and the
    /// own prefetch of `freed`'s consumers (None: nothing was settled): the queues waiting
    /// on the channel, and each such consumer's queue, look at them again.
    pub(super) fn prefetch_freed(
        &mut self,
        conn: ConnId,
        channel: u16,
        freed: Option<Vec<(QueueId, Arc<str>)>>,
    ) {
        let Some(freed) = freed else {
            return;
        };
        self.channel_freed(conn, channel);
        for (queue, tag) in freed {
            self.counters.work += 1;
            if let Some(q) = self.topology.queues.get_mut(&queue) {
                q.consumers.wake_one(conn, channel, &tag);
            }
            self.schedule_dispatch(queue);
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
            q.messages.delivered_unacked(&entry);
            ch.unacked.push(Unacked {
                tag,
                queue,
                consumer: Some((target.tag.clone(), consumer.id)),
                from_consumer: true,
                message: entry,
            });
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

    /// Returns unacked deliveries to their queues at their original positions, flagged
    /// redelivered; those past a quorum queue's delivery limit are dead-lettered. A
    /// message whose queue is gone is dropped (the deletion dropped its stored entries).
    /// Each queue takes its deliveries back in one pass, so a `basic.recover` or a channel
    /// close costs what comes back, not its square.
    pub(super) fn requeue_all(&mut self, entries: Vec<Unacked>) {
        self.topology.loads_recheck |= !self.topology.loads_stalled.is_empty();
        let mut back: std::collections::BTreeMap<QueueId, Vec<QueuedMessage>> = Default::default();
        let mut past_limit: std::collections::BTreeMap<QueueId, Vec<QueuedMessage>> =
            Default::default();
        for entry in entries {
            let Some(q) = self.topology.queues.get_mut(&entry.queue) else {
                continue;
            };
            q.messages.settled_unacked(&entry.message);
            let mut message = entry.message;
            if q.decl.settings.quorum {
                message.delivery_count = message.delivery_count.saturating_add(1);
            }
            match q.decl.settings.delivery_limit {
                Some(limit) if u64::from(message.delivery_count) > limit => {
                    past_limit.entry(entry.queue).or_default().push(message);
                }
                _ => back.entry(entry.queue).or_default().push(message),
            }
        }
        for (queue, messages) in back {
            self.counters.work += messages.len() as u64;
            if let Some(q) = self.topology.queues.get_mut(&queue) {
                q.messages.requeue_many(messages);
            }
            self.schedule_dispatch(queue);
        }
        for (queue, messages) in past_limit {
            self.dead_letter(queue, messages, DeathReason::DeliveryLimit);
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
        let round = self.sessions.sync_waits.round;
        let mut dirty = std::mem::take(&mut self.round.confirm_dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for (conn, channel) in dirty {
            let Some(ch) = self.channel_mut(conn, channel) else {
                continue;
            };
            let before = ch.mode.sync_wait(round);
            let Mode::Confirm {
                pending, returning, ..
            } = &mut ch.mode
            else {
                continue;
            };
            let mut out = Vec::new();
            let before_len = pending.len();
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
            if before_len > 0 && pending.is_empty() {
                // Nothing left unconfirmed: the client may come back at once.
                *returning = round;
            }
            let confirmed = (before_len - pending.len()) as u64;
            ch.stats.confirm += confirmed;
            let after = ch.mode.sync_wait(round);
            self.sessions.sync_waits.change(before, after);
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

/// Why a consumer cannot take a message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Blocked {
    /// Its connection: a parked get, or too much unwritten output.
    Connection,
    /// Its channel: flow paused, the shared prefetch or the unacked limit reached.
    Channel,
    /// Its own prefetch is full.
    Consumer,
}

/// Why the consumer `c` cannot take one more message now; None when it can.
fn consumer_blocked(
    sessions: &super::parts::Sessions,
    (write_limit, unacked_limit): (usize, usize),
    c: &ConsumerRef,
) -> Option<Blocked> {
    // A connection whose get waits for the store gets nothing else meanwhile, as behind a
    // synchronous get.
    if sessions.held.contains_key(&c.conn) {
        return Some(Blocked::Connection);
    }
    let Some(conn) = sessions.conns.get(&c.conn) else {
        return Some(Blocked::Connection);
    };
    if conn.unflushed_bytes >= write_limit {
        return Some(Blocked::Connection);
    }
    let Some(ch) = conn.channels.get(&c.channel) else {
        return Some(Blocked::Channel);
    };
    if !ch.channel_can_deliver(&c.tag) || ch.outstanding() >= unacked_limit {
        return Some(Blocked::Channel);
    }
    if !ch.consumer_can_deliver(&c.tag) {
        return Some(Blocked::Consumer);
    }
    None
}

/// Whether the consumer's own prefetch is full.
fn own_prefetch_full(sessions: &super::parts::Sessions, c: &ConsumerRef) -> bool {
    sessions
        .conns
        .get(&c.conn)
        .and_then(|conn| conn.channels.get(&c.channel))
        .is_some_and(|ch| !ch.consumer_can_deliver(&c.tag))
}
