//! Per-channel broker state: consumers, unacked deliveries, prefetch, confirms and
//! transactions.

use std::collections::VecDeque;

use super::HashMap;
use std::sync::Arc;

use crate::proto::command::Message;

use super::exchange::QueueId;
use super::queue::QueuedMessage;

/// A consumer as its channel sees it.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// The queue consumed from.
    pub queue: QueueId,
    /// Deliveries need no ack.
    pub no_ack: bool,
    /// Most unacked deliveries (0 = unlimited), fixed when the consumer was created.
    pub prefetch: u16,
    /// Deliveries not yet acked.
    pub unacked: u32,
    /// Tells this consumer from an earlier one of the same tag on the channel: a
    /// cancelled consumer's deliveries, acked later, do not count against a new one.
    pub id: u64,
}

/// A delivery awaiting its ack.
#[derive(Debug, Clone)]
pub struct Unacked {
    /// Delivery tag.
    pub tag: u64,
    /// Queue the message came from.
    pub queue: QueueId,
    /// Consumer it went to, by tag and [`Consumer::id`]; `None` for `basic.get`. The
    /// consumer may be gone (cancelled), or its tag taken by a new one of another id.
    pub consumer: Option<(Arc<str>, u64)>,
    /// Delivered to a consumer (not `basic.get`): counts against the channel's prefetch.
    pub from_consumer: bool,
    /// The message, to requeue or release.
    pub message: QueuedMessage,
}

/// Holes an unacked list keeps beyond as many as it has live entries, by default
/// ([`super::ClientLimits::unacked_gaps_kept`]).
pub const UNACKED_GAPS_KEPT: usize = 64;

/// Unacked deliveries in tag order. Acks leave holes that are trimmed from the front, so
/// in-order acks cost O(1) and out-of-order ones O(log n).
#[derive(Debug)]
pub struct UnackedList {
    slots: VecDeque<(u64, Option<Unacked>)>,
    live: usize,
    /// Holes kept beyond `live` before they are swept.
    gaps_kept: usize,
}

impl Default for UnackedList {
    fn default() -> Self {
        UnackedList::new(UNACKED_GAPS_KEPT)
    }
}

impl UnackedList {
    /// An empty list that sweeps its holes past `gaps_kept` beyond its live entries.
    pub fn new(gaps_kept: usize) -> Self {
        UnackedList {
            slots: VecDeque::new(),
            live: 0,
            gaps_kept,
        }
    }

    /// Deliveries awaiting ack.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when nothing awaits an ack.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Records a delivery; tags must increase.
    pub fn push(&mut self, entry: Unacked) {
        debug_assert!(
            self.slots.back().is_none_or(|(t, _)| *t < entry.tag),
            "delivery tags must increase"
        );
        self.slots.push_back((entry.tag, Some(entry)));
        self.live += 1;
    }

    /// Puts back an entry taken earlier (a rolled-back transactional ack).
    pub fn restore(&mut self, entry: Unacked) {
        let pos = self.slots.partition_point(|(t, _)| *t < entry.tag);
        match self.slots.get_mut(pos) {
            Some((t, slot)) if *t == entry.tag => {
                debug_assert!(slot.is_none());
                *slot = Some(entry);
            }
            _ => self.slots.insert(pos, (entry.tag, Some(entry))),
        }
        self.live += 1;
    }

    /// Puts back entries taken earlier (the acks a transaction rolls back), in one pass
    /// ([`merge_into`](super::sorted::merge_into)): about the cost of what comes back,
    /// not its square.
    pub fn restore_many(&mut self, mut entries: Vec<Unacked>) {
        if entries.len() < 2 {
            entries.into_iter().for_each(|e| self.restore(e));
            return;
        }
        self.live += entries.len();
        entries.sort_unstable_by_key(|e| e.tag);
        super::sorted::merge_into(
            &mut self.slots,
            entries.into_iter().map(|e| (e.tag, Some(e))).collect(),
            |(tag, _)| *tag,
            |hole, entry| {
                debug_assert!(hole.1.is_none(), "restored twice");
                match hole.1 {
                    None => {
                        hole.1 = entry.1;
                        None
                    }
                    Some(_) => Some(entry),
                }
            },
        );
    }

    /// Whether `tag` awaits an ack.
    pub fn contains(&self, tag: u64) -> bool {
        self.find(tag).is_some()
    }

    fn find(&self, tag: u64) -> Option<usize> {
        let pos = self.slots.partition_point(|(t, _)| *t < tag);
        match self.slots.get(pos) {
            Some((t, Some(_))) if *t == tag => Some(pos),
            _ => None,
        }
    }

    /// Takes the delivery with `tag`.
    pub fn take(&mut self, tag: u64) -> Option<Unacked> {
        let pos = self.find(tag)?;
        let entry = self.slots.get_mut(pos)?.1.take();
        self.live -= 1;
        self.trim();
        entry
    }

    /// Takes every delivery with a tag up to and including `tag`.
    pub fn take_up_to(&mut self, tag: u64) -> Vec<Unacked> {
        let mut out = Vec::new();
        while let Some((t, _)) = self.slots.front() {
            if *t > tag {
                break;
            }
            if let Some((_, Some(entry))) = self.slots.pop_front() {
                out.push(entry);
            }
        }
        self.live -= out.len();
        self.sweep();
        out
    }

    /// Takes every delivery.
    pub fn take_all(&mut self) -> Vec<Unacked> {
        self.take_up_to(u64::MAX)
    }

    /// Deliveries in tag order.
    pub fn iter(&self) -> impl Iterator<Item = &Unacked> {
        self.slots.iter().filter_map(|(_, e)| e.as_ref())
    }

    /// Deliveries in tag order, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Unacked> {
        self.slots.iter_mut().filter_map(|(_, e)| e.as_mut())
    }

    fn trim(&mut self) {
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
        while matches!(self.slots.back(), Some((_, None))) {
            self.slots.pop_back();
        }
        self.sweep();
    }

    /// Holes between live entries (deliveries acked out of order while an older and a
    /// newer one stay unacked) are swept once they outnumber the live entries, so the
    /// list holds at most about twice what awaits an ack, at an amortised O(1) an ack.
    fn sweep(&mut self) {
        if self.slots.len() > 2 * self.live + self.gaps_kept {
            self.slots.retain(|(_, e)| e.is_some());
        }
    }

    /// Tags increase, the live count is right, and holes are bounded.
    pub fn check_invariants(&self) {
        assert!(
            self.slots
                .iter()
                .zip(self.slots.iter().skip(1))
                .all(|(a, b)| a.0 < b.0),
            "unacked tags increase"
        );
        assert_eq!(self.iter().count(), self.live, "unacked live count");
        assert!(
            self.slots.len() <= 2 * self.live + self.gaps_kept,
            "unacked list of {} slots for {} deliveries",
            self.slots.len(),
            self.live
        );
    }
}

/// The fate of a confirmed publish, in publish order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// Waiting for the store batch holding the message to be synced.
    Waiting,
    /// Ready to be acked.
    Ack,
    /// Ready to be nacked.
    Nack,
}

/// A publish or ack held back by a transaction until `tx.commit`.
#[derive(Debug, Clone)]
pub enum TxOp {
    /// A publish: its `mandatory` flag and its message.
    Publish {
        /// Return the message if no queue takes it.
        mandatory: bool,
        /// The message, with the exchange and routing key the publish named.
        message: Arc<Message>,
    },
    /// An ack or reject that already left the unacked list.
    Settle {
        /// The settled deliveries.
        entries: Vec<Unacked>,
        /// What settles them.
        how: Settle,
    },
}

/// How an ack-like method settles deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// basic.ack: done with.
    Ack,
    /// basic.reject/nack with requeue: back into the queue.
    Requeue,
    /// basic.reject/nack without requeue: dropped, or dead-lettered.
    Discard,
}

/// The channel's mode: plain, publisher confirms, or transactional.
#[derive(Debug)]
pub enum Mode {
    /// Neither confirms nor transactions.
    Plain,
    /// `confirm.select` was issued.
    Confirm {
        /// The next publish's sequence number.
        next_seq: u64,
        /// Publishes whose confirm has not been sent, in sequence order.
        pending: VecDeque<(u64, Confirm)>,
        /// The most publishes the channel has had unconfirmed at once.
        peak: usize,
        /// The sync round in which confirms left nothing unconfirmed, until the next
        /// publish (0: none; [`SyncWait`]).
        returning: u64,
    },
    /// `tx.select` was issued.
    Tx {
        /// Publishes and settlements of the open transaction.
        ops: Vec<TxOp>,
        /// Bytes of message bodies held by `ops` (bounded).
        bytes: u64,
        /// Deliveries settled by `ops`: they count against the channel's unacked limit
        /// until the transaction ends, as they count against its prefetch.
        settled: usize,
        /// Commits whose `tx.commit-ok` waits for the sync of their batch.
        commits: u32,
        /// The sync round in which a commit-ok left no commit waiting, until a commit
        /// that waits for the store (0: none; [`SyncWait`]).
        returning: u64,
    },
}

impl Mode {
    /// Where a channel stands toward the next sync, in sync round `round`
    /// ([`SyncWaits::round`]).
    pub fn sync_wait(&self, round: u64) -> SyncWait {
        match self {
            Mode::Confirm {
                pending,
                peak,
                returning,
                ..
            } => SyncWait {
                waiting: !pending.is_empty(),
                at_peak: !pending.is_empty() && pending.len() >= *peak,
                returning: *returning == round,
            },
            // A client that commits waits for the commit-ok before it goes on.
            Mode::Tx {
                commits, returning, ..
            } => SyncWait {
                waiting: *commits > 0,
                at_peak: *commits > 0,
                returning: *returning == round,
            },
            Mode::Plain => SyncWait::default(),
        }
    }
}

/// Where a channel stands toward the next sync.
///
/// - Waiting: its client waits for a sync (publishes waiting for their confirms, or a
///   `tx.commit-ok`).
/// - At its peak: it has likely sent all it will until a sync comes. A channel in confirm
///   mode is at its peak with as many publishes unconfirmed as it ever had at once: a
///   client that has sent all its confirm window allows sends no more publishes until a
///   confirm comes, and neither does one that waits for each confirm (a peak of one). A
///   transaction waiting for its commit-ok always is.
/// - Returning: since the last sync, confirms (or a commit-ok) left it with nothing
///   waiting, and it has not published (or committed) since. A client that waits for each
///   confirm comes back at once; one that publishes at its own pace, now and then, comes
///   back later. Confirms that needed no sync count too, which can only keep the gap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncWait {
    /// The client waits for a sync.
    pub waiting: bool,
    /// It has likely sent all it will until one comes.
    pub at_peak: bool,
    /// Since the last sync it has nothing waiting, and it has not come back since.
    pub returning: bool,
}

/// How many channels wait for a sync, how many of those are at their peak, and how many
/// the last sync answered and have not published since ([`SyncWait`]), kept as channels
/// change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncWaits {
    /// Channels whose clients wait for a sync.
    pub waiting: usize,
    /// Of those, channels at their peak.
    pub at_peak: usize,
    /// Channels the last sync answered that have not published since.
    pub returning: usize,
    /// The sync round: one more with each sync the store reports. A channel marked with
    /// an older round is no longer returning.
    pub round: u64,
}

impl Default for SyncWaits {
    fn default() -> Self {
        SyncWaits {
            waiting: 0,
            at_peak: 0,
            returning: 0,
            round: 1,
        }
    }
}

impl SyncWaits {
    /// A channel went from `before` to `after`.
    pub fn change(&mut self, before: SyncWait, after: SyncWait) {
        self.waiting = self.waiting + usize::from(after.waiting) - usize::from(before.waiting);
        self.at_peak = self.at_peak + usize::from(after.at_peak) - usize::from(before.at_peak);
        self.returning =
            self.returning + usize::from(after.returning) - usize::from(before.returning);
        debug_assert!(self.at_peak <= self.waiting, "{self:?}");
    }

    /// A channel that stands as `wait`, counted in.
    pub fn add(&mut self, wait: SyncWait) {
        self.change(SyncWait::default(), wait);
    }

    /// The store reported a sync: a new round, in which no channel is returning yet.
    pub fn synced(&mut self) {
        self.round += 1;
        self.returning = 0;
    }

    /// Whether every channel waiting for a sync has sent all it will until one comes (at
    /// least one waits), and every channel the last sync answered has come back: holding
    /// the next sync back would then only hold them up.
    pub fn nothing_more_coming(&self) -> bool {
        self.waiting > 0 && self.at_peak == self.waiting && self.returning == 0
    }
}

/// A channel as the broker sees it.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub number: u16,
    /// Broker-wide identity, so that deferred replies never reach a reopened channel.
    pub uid: u64,
    /// Consumers by tag.
    pub consumers: HashMap<Arc<str>, Consumer>,
    /// Deliveries awaiting ack.
    pub unacked: UnackedList,
    /// The next delivery tag.
    /// Consumer ids given so far ([`Consumer::id`]).
    pub consumer_ids: u64,
    pub next_tag: u64,
    /// `basic.qos` prefetch for consumers created from now on (global = false).
    pub consumer_prefetch: u16,
    /// `basic.qos` prefetch shared by the channel's consumers (global = true).
    pub channel_prefetch: u16,
    /// Unacked deliveries to consumers (not `basic.get`), for the shared limit.
    pub consumer_unacked: u32,
    /// `channel.flow` from the client: deliveries paused when false.
    pub flow_active: bool,
    /// Confirm or transaction mode.
    pub mode: Mode,
    /// The queue last declared on this channel, for the empty-name shortcut.
    pub last_queue: String,
    /// Messages published, delivered, got, acked and confirmed on this channel.
    pub stats: super::stats::MessageCounters,
    /// The direct reply-to consumer (`basic.consume` on `amq.rabbitmq.reply-to`).
    pub reply_consumer: Option<super::reply_to::ReplyConsumer>,
}

impl Channel {
    /// A freshly opened channel.
    pub fn new(number: u16, uid: u64, unacked_gaps_kept: usize) -> Self {
        Channel {
            number,
            uid,
            consumers: HashMap::default(),
            unacked: UnackedList::new(unacked_gaps_kept),
            next_tag: 1,
            consumer_ids: 0,
            consumer_prefetch: 0,
            channel_prefetch: 0,
            consumer_unacked: 0,
            flow_active: true,
            mode: Mode::Plain,
            last_queue: String::new(),
            stats: super::stats::MessageCounters::default(),
            reply_consumer: None,
        }
    }

    /// Whether the channel lets consumer `tag` take a message: flow is on and, unless the
    /// consumer acks nothing, its shared prefetch has room.
    pub fn channel_can_deliver(&self, tag: &str) -> bool {
        self.flow_active
            && self.consumers.get(tag).is_some_and(|c| {
                c.no_ack
                    || self.channel_prefetch == 0
                    || self.consumer_unacked < u32::from(self.channel_prefetch)
            })
    }

    /// Whether consumer `tag`'s own prefetch has room (a no-ack consumer always has).
    pub fn consumer_can_deliver(&self, tag: &str) -> bool {
        self.consumers
            .get(tag)
            .is_some_and(|c| c.no_ack || c.prefetch == 0 || c.unacked < u32::from(c.prefetch))
    }

    /// Takes a delivery's ack accounting off its consumer; returns the consumer (its queue
    /// and tag) if it is still there.
    pub fn settle_accounting(&mut self, entry: &Unacked) -> Option<(QueueId, Arc<str>)> {
        if entry.from_consumer {
            debug_assert!(self.consumer_unacked > 0);
            self.consumer_unacked = self.consumer_unacked.saturating_sub(1);
        }
        let c = self.consumer_of(entry)?;
        debug_assert!(c.unacked > 0);
        c.unacked = c.unacked.saturating_sub(1);
        let queue = c.queue;
        entry.consumer.as_ref().map(|(tag, _)| (queue, tag.clone()))
    }

    /// The consumer a delivery went to, if it is still there (not cancelled, and not a new
    /// consumer that took its tag since).
    pub fn consumer_of(&mut self, entry: &Unacked) -> Option<&mut Consumer> {
        let (tag, id) = entry.consumer.as_ref()?;
        self.consumers.get_mut(tag).filter(|c| c.id == *id)
    }

    /// The id for the next consumer of the channel.
    pub fn next_consumer_id(&mut self) -> u64 {
        self.consumer_ids += 1;
        self.consumer_ids
    }

    /// Deliveries the channel holds unacked, those settled by an open transaction
    /// included: what the unacked limit bounds.
    pub fn outstanding(&self) -> usize {
        let settled = match &self.mode {
            Mode::Tx { settled, .. } => *settled,
            _ => 0,
        };
        self.unacked.len() + settled
    }

    /// Checks the channel's own invariants.
    pub fn check_invariants(&self) {
        // Deliveries settled in an open transaction count against the prefetch until it
        // commits, as in RabbitMQ.
        let held: Vec<&Unacked> = match &self.mode {
            Mode::Tx { ops, .. } => ops
                .iter()
                .flat_map(|op| match op {
                    TxOp::Settle { entries, .. } => entries.as_slice(),
                    TxOp::Publish { .. } => &[],
                })
                .collect(),
            _ => Vec::new(),
        };
        if let Mode::Tx { settled, .. } = &self.mode {
            assert_eq!(
                *settled,
                held.len(),
                "channel {} transaction settled count",
                self.number
            );
        }
        self.unacked.check_invariants();
        let outstanding = || self.unacked.iter().chain(held.iter().copied());
        let from_consumers = outstanding().filter(|u| u.from_consumer).count();
        assert_eq!(
            from_consumers as u32, self.consumer_unacked,
            "channel {} consumer unacked count",
            self.number
        );
        for (tag, c) in &self.consumers {
            let n = outstanding()
                .filter(|u| {
                    u.consumer
                        .as_ref()
                        .is_some_and(|(t, id)| t == tag && *id == c.id)
                })
                .count();
            assert_eq!(n as u32, c.unacked, "consumer {tag} unacked count");
            assert!(
                c.no_ack || c.prefetch == 0 || c.unacked <= u32::from(c.prefetch),
                "consumer {tag} over prefetch"
            );
        }
        assert!(self.unacked.iter().all(|u| u.tag < self.next_tag));
        if let Mode::Tx { ops, .. } = &self.mode {
            // A transaction grows only with its publishes (bounded by their bytes) and
            // with the deliveries it settles: no settle holds nothing, and settles of one
            // kind in a row are one.
            let mut last = None;
            for op in ops {
                let how = match op {
                    TxOp::Settle { entries, how } => {
                        assert!(
                            !entries.is_empty(),
                            "channel {}: an empty settle held by a transaction",
                            self.number
                        );
                        Some(*how)
                    }
                    TxOp::Publish { .. } => None,
                };
                assert!(
                    how.is_none() || how != last,
                    "channel {}: two settles of one kind in a row held by a transaction",
                    self.number
                );
                last = how;
            }
        }
        if let Mode::Confirm {
            next_seq,
            pending,
            peak,
            ..
        } = &self.mode
        {
            assert!(
                pending.len() <= *peak,
                "{} unconfirmed above the peak {peak}",
                pending.len()
            );
            assert!(
                pending
                    .iter()
                    .zip(pending.iter().skip(1))
                    .all(|(a, b)| a.0 < b.0)
            );
            assert!(pending.iter().all(|(s, _)| s < next_seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::props::BasicProperties;
    use bytes::Bytes;

    fn entry(tag: u64) -> Unacked {
        Unacked {
            tag,
            queue: 1,
            consumer: None,
            from_consumer: false,
            message: QueuedMessage {
                seq: tag,
                message: Arc::new(Message {
                    exchange: String::new(),
                    routing_key: String::new(),
                    properties: BasicProperties::default(),
                    body: Bytes::new(),
                }),
                redelivered: false,
                stored: false,
                expires_at_ms: None,
                priority: 0,
                shared: None,
                allowance: crate::broker::death::Allowance::FRESH,
                delivery_count: 0,
                cost: crate::store::MESSAGE_OVERHEAD_BYTES + 2,
            },
        }
    }

    #[test]
    fn unacked_list_takes_single_multiple_and_restores() {
        let mut l = UnackedList::default();
        for t in 1..=5 {
            l.push(entry(t));
        }
        assert!(l.take(3).is_some());
        assert!(l.take(3).is_none(), "a tag is acked once");
        assert_eq!(l.len(), 4);
        let upto: Vec<u64> = l.take_up_to(4).iter().map(|u| u.tag).collect();
        assert_eq!(upto, [1, 2, 4]);
        assert_eq!(l.len(), 1);
        l.restore(entry(2));
        assert!(l.contains(2));
        assert_eq!(l.iter().map(|u| u.tag).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(l.take_all().len(), 2);
        assert!(l.is_empty());
    }

    /// A consumer that keeps its oldest and newest deliveries unacked and acks the rest
    /// leaves holes between them; the list sweeps them instead of growing without end.
    #[test]
    fn holes_left_by_acks_out_of_order_are_swept() {
        let mut l = UnackedList::default();
        l.push(entry(1));
        for t in 2..100_000 {
            l.push(entry(t));
            if t > 2 {
                assert!(l.take(t - 1).is_some());
            }
            l.check_invariants();
        }
        assert_eq!(l.len(), 2);
        assert!(
            l.slots.len() <= 2 * 2 + UNACKED_GAPS_KEPT,
            "{}",
            l.slots.len()
        );
        assert!(l.contains(1) && l.contains(99_999) && !l.contains(500));
    }

    /// Entries rolled back in bulk go back as they would one at a time, into their holes
    /// or between the entries still there.
    #[test]
    fn restoring_many_is_restoring_each() {
        let mut one = UnackedList::default();
        let mut many = UnackedList::default();
        for t in 1..=40 {
            one.push(entry(t));
            many.push(entry(t));
        }
        let pick = |t: &u64| t % 3 == 0 || (10..20).contains(t) || *t < 4;
        let mut taken_one = Vec::new();
        let mut taken_many = Vec::new();
        for t in (1..=40).filter(pick) {
            taken_one.extend(one.take(t));
            taken_many.extend(many.take(t));
        }
        taken_many.reverse();
        for e in taken_one {
            one.restore(e);
        }
        many.restore_many(taken_many);
        one.check_invariants();
        many.check_invariants();
        let tags = |l: &UnackedList| l.iter().map(|u| u.tag).collect::<Vec<_>>();
        assert_eq!(tags(&many), (1..=40).collect::<Vec<_>>());
        assert_eq!(tags(&one), tags(&many));
    }
}
