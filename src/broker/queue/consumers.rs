//! The consumers of a queue, in round-robin order, and who holds it exclusively.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::proto::command::ConnId;

/// A consumer as a queue sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRef {
    /// Owning connection.
    pub conn: ConnId,
    /// Channel number on that connection.
    pub channel: u16,
    /// Consumer tag.
    pub tag: Arc<str>,
    /// `x-priority`: higher-priority consumers are served first while they have capacity.
    pub priority: i64,
}

/// A queue's consumers in round-robin order, with the cursor where the next delivery
/// attempt starts.
///
/// Each consumer has a sequence number, given when it arrives: the round-robin order is
/// the order of those numbers, and the cursor is a number, so a consumer leaves in a
/// lookup, not a search and a shift of the list (a queue may have hundreds of thousands).
#[derive(Debug, Default)]
pub struct Consumers {
    /// The consumers by sequence number.
    list: BTreeMap<u64, ConsumerRef>,
    /// Each consumer's sequence number, by connection, channel and tag.
    index: BTreeMap<(ConnId, u16, Arc<str>), u64>,
    /// The sequence number the next consumer gets.
    next_seq: u64,
    /// The next delivery attempt starts at the first consumer numbered this or more
    /// (round the list when there is none).
    next: u64,
    /// A consumer holds exclusive access.
    exclusive: bool,
    /// Has ever had a consumer (auto-delete only applies after one).
    had_consumer: bool,
    /// How many consumers have each priority: a candidate of the highest ends the search
    /// for the next consumer, so it costs one step per consumer passed over, not one per
    /// consumer of the queue.
    priorities: BTreeMap<i64, usize>,
    /// How many consumers each channel has here.
    channels: BTreeMap<(ConnId, u16), usize>,
    /// Set when a search found no consumer that could take a message. From then on,
    /// every consumer but those in `to_try` can take nothing, and the queue is on the
    /// waiting list of its channel or connection
    /// ([`super::super::waiting::WaitingQueues`]); the search looks at `to_try` only. A
    /// queue with 100,000 consumers that do not ack would otherwise look at each of them
    /// for every message published to it, or after every ack of one of them.
    nobody_takes: bool,
    /// While `nobody_takes`: the consumers to look at, those that came since and those
    /// whose channel or connection freed room since ([`Consumers::wake`]), as RabbitMQ
    /// moves a channel's blocked consumers back when its limiter unblocks. A consumer
    /// that leaves frees nobody else.
    to_try: BTreeSet<u64>,
    /// How many of `to_try` have each priority.
    to_try_priorities: BTreeMap<i64, usize>,
}

impl Consumers {
    /// Whether the queue has no consumer.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// How many consumers the queue has.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The consumers in round-robin order (from the start of the list, not the cursor).
    pub fn iter(&self) -> std::collections::btree_map::Values<'_, u64, ConsumerRef> {
        self.list.values()
    }

    /// The channels that have consumers here.
    pub fn channels(&self) -> impl Iterator<Item = (ConnId, u16)> + '_ {
        self.channels.keys().copied()
    }

    /// Whether channel `channel` of connection `conn` has a consumer here.
    pub fn has_channel(&self, conn: ConnId, channel: u16) -> bool {
        self.channels.contains_key(&(conn, channel))
    }

    /// Whether a consumer holds exclusive access.
    pub fn exclusive(&self) -> bool {
        self.exclusive
    }

    /// The consumer holding exclusive access, if one does.
    pub fn exclusive_holder(&self) -> Option<&ConsumerRef> {
        self.first().filter(|_| self.exclusive)
    }

    /// The first consumer in round-robin order (the active one of a single-active-consumer
    /// queue).
    pub fn first(&self) -> Option<&ConsumerRef> {
        self.list.first_key_value().map(|(_, c)| c)
    }

    /// Whether the queue ever had a consumer.
    pub fn had_consumer(&self) -> bool {
        self.had_consumer
    }

    /// Adds a consumer at the end of the round-robin order.
    pub fn add(&mut self, consumer: ConsumerRef, exclusive: bool) {
        *self.priorities.entry(consumer.priority).or_default() += 1;
        *self
            .channels
            .entry((consumer.conn, consumer.channel))
            .or_default() += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.nobody_takes {
            self.to_try.insert(seq);
            *self.to_try_priorities.entry(consumer.priority).or_default() += 1;
        }
        let old = self
            .index
            .insert((consumer.conn, consumer.channel, consumer.tag.clone()), seq);
        debug_assert!(old.is_none(), "consumer tag added twice");
        self.list.insert(seq, consumer);
        self.had_consumer = true;
        self.exclusive = exclusive;
    }

    /// Removes a consumer; returns whether it was there. `single_active`: the queue
    /// serves its first consumer only.
    pub fn remove(&mut self, conn: ConnId, channel: u16, tag: &str, single_active: bool) -> bool {
        let Some(seq) = self.index.remove(&(conn, channel, Arc::from(tag))) else {
            return false;
        };
        self.forget(seq, single_active);
        true
    }

    /// Takes out the consumer numbered `seq`, whose index entry is gone already.
    fn forget(&mut self, seq: u64, single_active: bool) {
        let was_first = self.list.first_key_value().is_some_and(|(s, _)| *s == seq);
        let Some(gone) = self.list.remove(&seq) else {
            debug_assert!(false, "consumer index names a missing consumer");
            return;
        };
        forget(&mut self.priorities, gone.priority);
        forget(&mut self.channels, (gone.conn, gone.channel));
        if self.to_try.remove(&seq) {
            forget(&mut self.to_try_priorities, gone.priority);
        }
        // The others could take nothing and still cannot, unless the one that left was
        // the only one served.
        if single_active && was_first {
            self.search_again();
        }
        if self.list.is_empty() {
            self.exclusive = false;
            self.search_again();
        }
    }

    /// Whether the last search found nobody to take a message (see `nobody_takes`).
    pub fn nobody_takes(&self) -> bool {
        self.nobody_takes
    }

    /// Channel `channel` of connection `conn` freed room: while nobody could take a
    /// message, its consumers here are looked at again. Returns how many.
    pub fn wake(&mut self, conn: ConnId, channel: u16) -> u64 {
        if !self.nobody_takes {
            return 0;
        }
        let from = (conn, channel, Arc::<str>::from(""));
        let mut woken = 0;
        for (_, seq) in self
            .index
            .range(from..)
            .take_while(|((c, ch, _), _)| (*c, *ch) == (conn, channel))
        {
            woken += 1;
            if self.to_try.insert(*seq) {
                if let Some(c) = self.list.get(seq) {
                    *self.to_try_priorities.entry(c.priority).or_default() += 1;
                }
            }
        }
        woken
    }

    /// The next search looks at every consumer.
    fn search_again(&mut self) {
        self.nobody_takes = false;
        self.to_try.clear();
        self.to_try_priorities.clear();
    }

    /// Removes every consumer of channel `channel` on connection `conn`; returns how many
    /// there were. Costs a lookup per consumer of the channel, whatever the queue holds.
    pub fn remove_channel(&mut self, conn: ConnId, channel: u16, single_active: bool) -> usize {
        let from = (conn, channel, Arc::<str>::from(""));
        let seqs: Vec<(Arc<str>, u64)> = self
            .index
            .range(from..)
            .take_while(|((c, ch, _), _)| (*c, *ch) == (conn, channel))
            .map(|((_, _, tag), seq)| (tag.clone(), *seq))
            .collect();
        for (tag, seq) in &seqs {
            self.index.remove(&(conn, channel, tag.clone()));
            self.forget(*seq, single_active);
        }
        seqs.len()
    }

    /// The consumers [`Consumers::choose`] tries (with a single active consumer, the
    /// first only).
    pub fn candidates_of(&self, single_active: bool) -> impl Iterator<Item = &ConsumerRef> {
        self.candidates(single_active).map(|(_, c)| c)
    }

    /// The consumers that may receive the next message, with their sequence numbers, in
    /// the order to try them: with a single active consumer only the first; otherwise
    /// round-robin from the cursor.
    fn candidates(&self, single_active: bool) -> impl Iterator<Item = (&u64, &ConsumerRef)> {
        let (from, to) = if single_active {
            (self.list.range(..).take(1), self.list.range(..0).take(0))
        } else {
            (
                self.list.range(self.next..).take(usize::MAX),
                self.list.range(..self.next).take(usize::MAX),
            )
        };
        from.chain(to)
    }

    /// The candidates a queue that skips its search waits on: all but those that came
    /// since it began to skip.
    pub fn waiting_candidates(&self, single_active: bool) -> impl Iterator<Item = &ConsumerRef> {
        self.candidates(single_active)
            .filter(|(seq, _)| !self.to_try.contains(seq))
            .map(|(_, c)| c)
    }

    /// Chooses the consumer for the next message and moves the cursor past it: the
    /// highest-priority candidate that `can_take` it, first in round-robin order among
    /// equals. None when no candidate can. Adds the consumers it looked at to `steps`,
    /// and the channels of those it found could take nothing (and now waits on) to
    /// `passed_over`.
    ///
    /// While nobody could take one, it looks only at the consumers to try (see
    /// `nobody_takes`), and those it passes over leave that set.
    pub fn choose(
        &mut self,
        single_active: bool,
        can_take: impl Fn(&ConsumerRef) -> bool,
        steps: &mut u64,
        passed_over: &mut Vec<(ConnId, u16)>,
    ) -> Option<ConsumerRef> {
        if self.nobody_takes && single_active {
            // Only the first is served: it is looked at if it is to be tried, and the
            // others wait for it to leave.
            let first = self
                .list
                .first_key_value()
                .map(|(seq, c)| (*seq, c.clone()));
            let try_first = first
                .as_ref()
                .is_some_and(|(seq, _)| self.to_try.contains(seq));
            self.search_again();
            self.nobody_takes = true;
            let (seq, c) = first.filter(|_| try_first)?;
            *steps += 1;
            if !can_take(&c) {
                passed_over.push((c.conn, c.channel));
                return None;
            }
            self.to_try.insert(seq);
            *self.to_try_priorities.entry(c.priority).or_default() += 1;
            return Some(c);
        }
        let only_to_try = self.nobody_takes;
        let mut unable = Vec::new();
        let chosen = if only_to_try {
            let highest = self.to_try_priorities.last_key_value().map(|(p, _)| *p);
            let order = self
                .to_try
                .range(self.next..)
                .chain(self.to_try.range(..self.next))
                .filter_map(|seq| self.list.get(seq).map(|c| (*seq, c)));
            pick(order, highest, &can_take, steps, &mut unable)
        } else {
            let highest = self.priorities.last_key_value().map(|(p, _)| *p);
            let order = self.candidates(single_active).map(|(seq, c)| (*seq, c));
            pick(order, highest, &can_take, steps, &mut unable)
        };
        let chosen = chosen.map(|(seq, c)| (seq, c.clone()));
        if only_to_try {
            for seq in &unable {
                self.to_try.remove(seq);
                if let Some(c) = self.list.get(seq) {
                    forget(&mut self.to_try_priorities, c.priority);
                    passed_over.push((c.conn, c.channel));
                }
            }
        } else if chosen.is_none() {
            self.search_again();
            self.nobody_takes = true;
            match self.list.first_key_value() {
                Some((_, c)) if single_active => passed_over.push((c.conn, c.channel)),
                _ => passed_over.extend(self.channels.keys().copied()),
            }
        }
        let (seq, c) = chosen?;
        // Past the last consumer the order starts again from the first, whoever came since.
        self.next = if self.list.range(seq + 1..).next().is_some() {
            seq + 1
        } else {
            0
        };
        Some(c)
    }

    /// Checks that the index, the counts and the list agree, and that an exclusive
    /// consumer is alone. `queue` names the queue in the panic message.
    pub fn check_invariants(&self, queue: &str) {
        assert!(
            !self.exclusive || self.list.len() == 1,
            "queue {queue} exclusive consumer not alone"
        );
        assert_eq!(
            self.index.len(),
            self.list.len(),
            "queue {queue} consumer index"
        );
        for ((conn, channel, tag), seq) in &self.index {
            let c = self.list.get(seq);
            assert!(
                c.is_some_and(|c| (c.conn, c.channel, &c.tag) == (*conn, *channel, tag)),
                "queue {queue} consumer index entry {tag} names another consumer"
            );
        }
        assert!(
            self.list
                .last_key_value()
                .is_none_or(|(seq, _)| *seq < self.next_seq),
            "queue {queue} consumer numbers"
        );
        let mut counted = BTreeMap::new();
        for c in self.list.values() {
            *counted.entry(c.priority).or_insert(0) += 1;
        }
        assert_eq!(
            counted, self.priorities,
            "queue {queue} consumer priorities"
        );
        let mut counted = BTreeMap::new();
        for c in self.list.values() {
            *counted.entry((c.conn, c.channel)).or_insert(0) += 1;
        }
        assert_eq!(counted, self.channels, "queue {queue} consumer channels");
    }
}

/// The highest-priority consumer in `order` that `can_take` a message, first among equals;
/// stops at one of priority `highest`. Counts each consumer looked at in `steps`, and
/// puts those that can take nothing in `unable`.
fn pick<'a>(
    order: impl Iterator<Item = (u64, &'a ConsumerRef)>,
    highest: Option<i64>,
    can_take: &impl Fn(&ConsumerRef) -> bool,
    steps: &mut u64,
    unable: &mut Vec<u64>,
) -> Option<(u64, &'a ConsumerRef)> {
    let mut chosen: Option<(u64, &ConsumerRef)> = None;
    for (seq, c) in order {
        *steps += 1;
        if chosen.is_some_and(|(_, best)| best.priority >= c.priority) {
            continue;
        }
        if !can_take(c) {
            unable.push(seq);
            continue;
        }
        chosen = Some((seq, c));
        // None later in the order has a higher priority, and ties go to the first.
        if Some(c.priority) == highest {
            break;
        }
    }
    chosen
}

/// Takes one off the count of `key`, and the key with its last.
fn forget<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K) {
    if let std::collections::btree_map::Entry::Occupied(mut e) = counts.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

impl IntoIterator for Consumers {
    type Item = ConsumerRef;
    type IntoIter = std::collections::btree_map::IntoValues<u64, ConsumerRef>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_values()
    }
}

impl<'a> IntoIterator for &'a Consumers {
    type Item = &'a ConsumerRef;
    type IntoIter = std::collections::btree_map::Values<'a, u64, ConsumerRef>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(conn: ConnId, channel: u16, tag: &str) -> ConsumerRef {
        ConsumerRef {
            conn,
            channel,
            tag: tag.into(),
            priority: 0,
        }
    }

    /// A channel's consumers leave in one pass, and round-robin goes on from the consumer
    /// that was next.
    #[test]
    fn a_channel_leaves_in_one_pass_and_the_cursor_keeps_its_place() {
        let mut cs = Consumers::default();
        for (conn, channel, tag) in [
            (1, 1, "a"),
            (2, 1, "b"),
            (1, 1, "c"),
            (3, 1, "d"),
            (1, 1, "e"),
        ] {
            cs.add(consumer(conn, channel, tag), false);
        }
        // Deliver to a, b and c: d is next.
        for _ in 0..3 {
            cs.choose(false, |_| true, &mut 0, &mut Vec::new());
        }
        assert_eq!(cs.remove_channel(1, 1, false), 3);
        assert_eq!(cs.remove_channel(1, 1, false), 0);
        let tags: Vec<&str> = cs.iter().map(|c| &*c.tag).collect();
        assert_eq!(tags, ["b", "d"]);
        assert_eq!(
            &*cs.choose(false, |_| true, &mut 0, &mut Vec::new())
                .unwrap()
                .tag,
            "d"
        );
        cs.check_invariants("q");
        assert_eq!(
            cs.remove_channel(2, 1, false) + cs.remove_channel(3, 1, false),
            2
        );
        assert!(cs.is_empty());
        cs.check_invariants("q");
    }

    /// After the last consumer the order starts again from the first, not from one that
    /// came meanwhile (RabbitMQ puts a new consumer behind the one served last).
    #[test]
    fn the_order_wraps_to_the_first_before_a_newcomer() {
        let mut cs = Consumers::default();
        let choose = |cs: &mut Consumers| {
            cs.choose(false, |_| true, &mut 0, &mut Vec::new())
                .map(|c| c.tag.to_string())
        };
        cs.add(consumer(1, 1, "a"), false);
        cs.add(consumer(1, 1, "b"), false);
        assert_eq!(choose(&mut cs).as_deref(), Some("a"));
        assert_eq!(choose(&mut cs).as_deref(), Some("b"));
        cs.add(consumer(1, 1, "c"), false);
        assert_eq!(choose(&mut cs).as_deref(), Some("a"));
        assert_eq!(choose(&mut cs).as_deref(), Some("b"));
        assert_eq!(choose(&mut cs).as_deref(), Some("c"));
        cs.check_invariants("q");
    }

    /// Once nobody can take a message, the search looks only at consumers that came since
    /// or whose channel freed room, and one that leaves does not make it look at the
    /// others again.
    #[test]
    fn a_blocked_queue_looks_only_at_newcomers_and_woken_channels() {
        let mut cs = Consumers::default();
        for i in 0..1000 {
            cs.add(consumer(1, 1, &format!("old{i}")), false);
        }
        let mut steps = 0;
        let mut passed = Vec::new();
        let old = |c: &ConsumerRef| !c.tag.starts_with("old");
        assert!(cs.choose(false, old, &mut steps, &mut passed).is_none());
        assert_eq!(
            (steps, passed.len()),
            (1000, 1),
            "one search, one channel waited on"
        );
        assert!(cs.remove(1, 1, "old5", false));
        cs.add(consumer(2, 1, "new"), false);
        let mut steps = 0;
        let mut passed = Vec::new();
        let chosen = cs.choose(false, old, &mut steps, &mut passed);
        assert_eq!(chosen.map(|c| c.tag.to_string()).as_deref(), Some("new"));
        assert_eq!(steps, 1, "only the newcomer is looked at");
        cs.check_invariants("q");
        let mut steps = 0;
        assert!(
            cs.choose(false, |_| false, &mut steps, &mut passed)
                .is_none()
        );
        assert_eq!(steps, 1);
        assert_eq!(passed, [(2, 1)], "the newcomer's channel is waited on");
        let mut steps = 0;
        assert!(
            cs.choose(false, |_| true, &mut steps, &mut passed)
                .is_none()
        );
        assert_eq!(steps, 0, "nobody is looked at until something frees room");
        assert_eq!(cs.wake(2, 1), 1);
        assert_eq!(
            cs.choose(false, |_| true, &mut 0, &mut passed)
                .map(|c| c.tag.to_string())
                .as_deref(),
            Some("new"),
            "the woken channel's consumer is looked at, and no other"
        );
        cs.check_invariants("q");
    }
}
