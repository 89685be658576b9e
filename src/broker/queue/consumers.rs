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
    /// The consumers a search looks at: all but those a search found could take
    /// nothing, which wait to be woken ([`Consumers::wake`], [`Consumers::wake_one`]) by
    /// what holds them: their channel or connection (the queue is then on its waiting
    /// list, [`super::super::waiting::WaitingQueues`]) or their own prefetch (a
    /// settlement of one of their deliveries). RabbitMQ likewise keeps blocked consumers
    /// apart until their limiter unblocks. A search costs a step per consumer it looks
    /// at, and a consumer that cannot take a message is looked at once per wake, not for
    /// every message published to its queue.
    /// By priority: a search looks at the highest level only, down to the next when
    /// each consumer there proves blocked, so consumers of a lower priority cost a
    /// message nothing while one above them can take it.
    to_try: BTreeMap<i64, BTreeSet<u64>>,
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
    fn first(&self) -> Option<&ConsumerRef> {
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
        self.to_try
            .entry(consumer.priority)
            .or_default()
            .insert(seq);
        let old = self
            .index
            .insert((consumer.conn, consumer.channel, consumer.tag.clone()), seq);
        debug_assert!(old.is_none(), "consumer tag added twice");
        self.list.insert(seq, consumer);
        self.had_consumer = true;
        self.exclusive = exclusive;
    }

    /// Removes a consumer; returns whether it was there.
    pub fn remove(&mut self, conn: ConnId, channel: u16, tag: &str) -> bool {
        let Some(seq) = self.index.remove(&(conn, channel, Arc::from(tag))) else {
            return false;
        };
        self.forget(seq);
        true
    }

    /// Takes out the consumer numbered `seq`, whose index entry is gone already. The
    /// others are not looked at again: one leaving frees nobody.
    fn forget(&mut self, seq: u64) {
        let Some(gone) = self.list.remove(&seq) else {
            debug_assert!(false, "consumer index names a missing consumer");
            return;
        };
        forget(&mut self.priorities, gone.priority);
        forget(&mut self.channels, (gone.conn, gone.channel));
        self.stop_trying(gone.priority, seq);
        if self.list.is_empty() {
            self.exclusive = false;
        }
    }

    /// Whether the consumer is among those a search looks at.
    pub fn to_try(&self, c: &ConsumerRef) -> bool {
        self.index
            .get(&(c.conn, c.channel, c.tag.clone()))
            .is_some_and(|seq| self.trying(c.priority, *seq))
    }

    /// Channel `channel` of connection `conn` freed room: its consumers here are looked
    /// at again. Returns how many.
    pub fn wake(&mut self, conn: ConnId, channel: u16) -> u64 {
        let of_channel = self.of_channel(conn, channel);
        for (_, seq) in &of_channel {
            self.try_again(*seq);
        }
        of_channel.len() as u64
    }

    /// The tags and sequence numbers of channel `channel`'s consumers here, by a range of
    /// the index.
    fn of_channel(&self, conn: ConnId, channel: u16) -> Vec<(Arc<str>, u64)> {
        let from = (conn, channel, Arc::<str>::from(""));
        self.index
            .range(from..)
            .take_while(|((c, ch, _), _)| (*c, *ch) == (conn, channel))
            .map(|((_, _, tag), seq)| (tag.clone(), *seq))
            .collect()
    }

    /// The consumer `tag` of channel `channel` on `conn` freed room (one of its
    /// deliveries was settled): it is looked at again.
    pub fn wake_one(&mut self, conn: ConnId, channel: u16, tag: &Arc<str>) {
        if let Some(seq) = self.index.get(&(conn, channel, tag.clone())) {
            self.try_again(*seq);
        }
    }

    fn try_again(&mut self, seq: u64) {
        if let Some(c) = self.list.get(&seq) {
            self.to_try.entry(c.priority).or_default().insert(seq);
        }
    }

    /// Whether consumer `seq`, of priority `priority`, is to be tried.
    fn trying(&self, priority: i64, seq: u64) -> bool {
        self.to_try
            .get(&priority)
            .is_some_and(|level| level.contains(&seq))
    }

    /// Consumer `seq`, of priority `priority`, is not to be tried.
    fn stop_trying(&mut self, priority: i64, seq: u64) {
        if let std::collections::btree_map::Entry::Occupied(mut level) = self.to_try.entry(priority)
        {
            level.get_mut().remove(&seq);
            if level.get().is_empty() {
                level.remove();
            }
        }
    }

    /// Removes every consumer of channel `channel` on connection `conn`; returns how many
    /// there were. Costs a lookup per consumer of the channel, whatever the queue holds.
    pub fn remove_channel(&mut self, conn: ConnId, channel: u16) -> usize {
        let seqs = self.of_channel(conn, channel);
        for (tag, seq) in &seqs {
            self.index.remove(&(conn, channel, tag.clone()));
            self.forget(*seq);
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

    /// Chooses the consumer for the next message and moves the cursor past it: the
    /// highest-priority candidate that can take it, first in round-robin order among
    /// equals, looking only at the consumers to try (see `to_try`): those not among them
    /// can take nothing. `blocked` says why a consumer cannot take a message (None: it
    /// can); the consumers found blocked stop being tried and go to `passed_over` with
    /// the reason. None when no candidate can take one. Adds the consumers it looked at
    /// to `steps`.
    pub fn choose<R>(
        &mut self,
        single_active: bool,
        blocked: impl Fn(&ConsumerRef) -> Option<R>,
        steps: &mut u64,
        passed_over: &mut Vec<(ConsumerRef, R)>,
    ) -> Option<ConsumerRef> {
        if single_active {
            // Only the first is served; the others are tried when it leaves.
            let (seq, c) = self.list.first_key_value().map(|(s, c)| (*s, c.clone()))?;
            if !self.trying(c.priority, seq) {
                return None;
            }
            *steps += 1;
            return match blocked(&c) {
                None => Some(c),
                Some(why) => {
                    self.stop_trying(c.priority, seq);
                    passed_over.push((c, why));
                    None
                }
            };
        }
        // The highest level first, in round-robin order from the cursor; each consumer
        // looked at is chosen or stops being tried, and a level whose consumers are all
        // blocked empties, so the search costs a step per consumer it passes over.
        loop {
            let (&priority, level) = self.to_try.last_key_value()?;
            let mut unable = Vec::new();
            let mut chosen = None;
            for seq in level.range(self.next..).chain(level.range(..self.next)) {
                *steps += 1;
                let Some(c) = self.list.get(seq) else {
                    debug_assert!(false, "a consumer to try is not in the list");
                    continue;
                };
                match blocked(c) {
                    None => {
                        chosen = Some((*seq, c.clone()));
                        break;
                    }
                    Some(why) => unable.push((*seq, why)),
                }
            }
            for (seq, why) in unable {
                self.stop_trying(priority, seq);
                if let Some(c) = self.list.get(&seq) {
                    passed_over.push((c.clone(), why));
                }
            }
            let Some((seq, c)) = chosen else {
                // Every consumer of this level is blocked: it is gone; try the next.
                self.to_try.remove(&priority);
                continue;
            };
            // Past the last consumer the order starts again from the first, whoever came
            // since.
            self.next = if self.list.range(seq + 1..).next().is_some() {
                seq + 1
            } else {
                0
            };
            return Some(c);
        }
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
        for (priority, level) in &self.to_try {
            assert!(
                !level.is_empty(),
                "queue {queue} keeps an empty level to try"
            );
            for seq in level {
                assert!(
                    self.list.get(seq).is_some_and(|c| c.priority == *priority),
                    "queue {queue} tries a consumer that left, or at another priority"
                );
            }
        }
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
            cs.choose(false, |_| None::<()>, &mut 0, &mut Vec::new());
        }
        assert_eq!(cs.remove_channel(1, 1), 3);
        assert_eq!(cs.remove_channel(1, 1), 0);
        let tags: Vec<&str> = cs.iter().map(|c| &*c.tag).collect();
        assert_eq!(tags, ["b", "d"]);
        assert_eq!(
            &*cs.choose(false, |_| None::<()>, &mut 0, &mut Vec::new())
                .unwrap()
                .tag,
            "d"
        );
        cs.check_invariants("q");
        assert_eq!(cs.remove_channel(2, 1) + cs.remove_channel(3, 1), 2);
        assert!(cs.is_empty());
        cs.check_invariants("q");
    }

    /// After the last consumer the order starts again from the first, not from one that
    /// came meanwhile (RabbitMQ puts a new consumer behind the one served last).
    #[test]
    fn the_order_wraps_to_the_first_before_a_newcomer() {
        let mut cs = Consumers::default();
        let choose = |cs: &mut Consumers| {
            cs.choose(false, |_| None::<()>, &mut 0, &mut Vec::new())
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

    /// A consumer found blocked is not looked at again until it is woken; one that comes
    /// is looked at, and one that leaves makes the queue look at nobody else.
    #[test]
    fn blocked_consumers_are_looked_at_once_until_woken() {
        let mut cs = Consumers::default();
        for i in 0..1000 {
            cs.add(consumer(1, 1, &format!("old{i}")), false);
        }
        let old = |c: &ConsumerRef| c.tag.starts_with("old").then_some(());
        let mut steps = 0;
        let mut passed = Vec::new();
        assert!(cs.choose(false, old, &mut steps, &mut passed).is_none());
        assert_eq!(
            (steps, passed.len()),
            (1000, 1000),
            "each looked at and passed over once"
        );
        let mut steps = 0;
        assert!(cs.choose(false, old, &mut steps, &mut Vec::new()).is_none());
        assert_eq!(steps, 0, "nobody is looked at until something wakes them");
        assert!(cs.remove(1, 1, "old5"));
        cs.add(consumer(2, 1, "new"), false);
        let mut steps = 0;
        let chosen = cs.choose(false, old, &mut steps, &mut Vec::new());
        assert_eq!(chosen.map(|c| c.tag.to_string()).as_deref(), Some("new"));
        assert_eq!(steps, 1, "only the newcomer is looked at");
        cs.check_invariants("q");
        let mut steps = 0;
        let mut passed = Vec::new();
        assert!(
            cs.choose(false, |_| Some(()), &mut steps, &mut passed)
                .is_none()
        );
        assert_eq!(steps, 1);
        assert_eq!(passed.len(), 1);
        assert_eq!(cs.wake(2, 1), 1);
        cs.wake_one(1, 1, &Arc::from("old7"));
        let mut steps = 0;
        let chosen = cs.choose(false, |_| None::<()>, &mut steps, &mut Vec::new());
        assert_eq!(
            chosen.map(|c| c.tag.to_string()).as_deref(),
            Some("old7"),
            "the woken consumers are looked at, in round-robin order, and no other"
        );
        assert_eq!(steps, 1);
        cs.check_invariants("q");
    }
}
