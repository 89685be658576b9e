//! The consumers of a queue, in round-robin order, and who holds it exclusively.

use std::collections::BTreeMap;
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
#[derive(Debug, Default)]
pub struct Consumers {
    list: Vec<ConsumerRef>,
    /// Index in `list` where the next delivery attempt starts.
    next: usize,
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
    /// Set when a search found no consumer that could take a message: the sum of the
    /// `freed` counters of the consumers' channels and connections then. Those counters
    /// grow with everything that may let a consumer take more (a settlement, qos, flow
    /// resumed, output written, a parked get answered); while the sum is unchanged and no
    /// consumer came or went, nobody can take one still, and the search is skipped. A
    /// queue with 100,000 consumers that do not ack would otherwise look at each of them
    /// for every message published to it.
    pub nobody_takes: Option<u64>,
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
    pub fn iter(&self) -> std::slice::Iter<'_, ConsumerRef> {
        self.list.iter()
    }

    /// The channels that have consumers here.
    pub fn channels(&self) -> impl Iterator<Item = (ConnId, u16)> + '_ {
        self.channels.keys().copied()
    }

    /// Whether a consumer holds exclusive access.
    pub fn exclusive(&self) -> bool {
        self.exclusive
    }

    /// The consumer holding exclusive access, if one does.
    pub fn exclusive_holder(&self) -> Option<&ConsumerRef> {
        self.list.first().filter(|_| self.exclusive)
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
        self.nobody_takes = None;
        self.list.push(consumer);
        self.had_consumer = true;
        self.exclusive = exclusive;
    }

    /// Removes a consumer; returns whether it was there.
    pub fn remove(&mut self, conn: ConnId, channel: u16, tag: &str) -> bool {
        let Some(pos) = self
            .list
            .iter()
            .position(|c| c.conn == conn && c.channel == channel && &*c.tag == tag)
        else {
            return false;
        };
        let gone = self.list.remove(pos);
        forget(&mut self.priorities, gone.priority);
        forget(&mut self.channels, (gone.conn, gone.channel));
        self.nobody_takes = None;
        if pos < self.next {
            self.next -= 1;
        }
        if self.next >= self.list.len() {
            self.next = 0;
        }
        if self.list.is_empty() {
            self.exclusive = false;
        }
        true
    }

    /// Removes every consumer of channel `channel` on connection `conn` in one pass (a
    /// channel may hold many thousands; removing them one by one would cost the square of
    /// the queue's consumers); returns how many there were.
    pub fn remove_channel(&mut self, conn: ConnId, channel: u16) -> usize {
        let before = self.list.len();
        let mut index = 0;
        let mut removed_before_cursor = 0;
        let next = self.next;
        self.channels.remove(&(conn, channel));
        self.nobody_takes = None;
        let priorities = &mut self.priorities;
        self.list.retain(|c| {
            let gone = c.conn == conn && c.channel == channel;
            if gone && index < next {
                removed_before_cursor += 1;
            }
            if gone {
                forget(priorities, c.priority);
            }
            index += 1;
            !gone
        });
        self.next -= removed_before_cursor;
        if self.next >= self.list.len() {
            self.next = 0;
        }
        if self.list.is_empty() {
            self.exclusive = false;
        }
        before - self.list.len()
    }

    /// The consumers [`Consumers::choose`] tries (with a single active consumer, the
    /// first only).
    pub fn candidates_of(&self, single_active: bool) -> impl Iterator<Item = &ConsumerRef> {
        self.candidates(single_active).map(|i| &self.list[i])
    }

    /// The consumers that may receive the next message, in the order to try them: with a
    /// single active consumer only the first; otherwise round-robin from the cursor.
    fn candidates(&self, single_active: bool) -> impl Iterator<Item = usize> + '_ {
        let n = self.list.len();
        let count = if single_active { n.min(1) } else { n };
        let start = if single_active { 0 } else { self.next };
        (0..count).map(move |i| (start + i) % n)
    }

    /// Chooses the consumer for the next message and moves the cursor past it: the
    /// highest-priority candidate that `can_take` it, first in round-robin order among
    /// equals. None when no candidate can. Adds the consumers it looked at to `steps`.
    pub fn choose(
        &mut self,
        single_active: bool,
        can_take: impl Fn(&ConsumerRef) -> bool,
        steps: &mut u64,
    ) -> Option<ConsumerRef> {
        let mut chosen: Option<usize> = None;
        let highest = self.priorities.last_key_value().map(|(p, _)| *p);
        for idx in self.candidates(single_active) {
            *steps += 1;
            let c = &self.list[idx];
            if chosen.is_some_and(|best| self.list[best].priority >= c.priority) || !can_take(c) {
                continue;
            }
            chosen = Some(idx);
            // None later in the order has a higher priority, and ties go to the first.
            if Some(c.priority) == highest {
                break;
            }
        }
        let idx = chosen?;
        self.next = (idx + 1) % self.list.len();
        Some(self.list[idx].clone())
    }

    /// Checks that the cursor is within the list and that an exclusive consumer is alone.
    /// `queue` names the queue in the panic message.
    pub fn check_invariants(&self, queue: &str) {
        assert!(
            self.list.is_empty() || self.next < self.list.len(),
            "queue {queue} consumer cursor"
        );
        assert!(
            !self.exclusive || self.list.len() == 1,
            "queue {queue} exclusive consumer not alone"
        );
        let mut counted = BTreeMap::new();
        for c in &self.list {
            *counted.entry(c.priority).or_insert(0) += 1;
        }
        assert_eq!(
            counted, self.priorities,
            "queue {queue} consumer priorities"
        );
        let mut counted = BTreeMap::new();
        for c in &self.list {
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
    type IntoIter = std::vec::IntoIter<ConsumerRef>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.into_iter()
    }
}

impl<'a> IntoIterator for &'a Consumers {
    type Item = &'a ConsumerRef;
    type IntoIter = std::slice::Iter<'a, ConsumerRef>;

    fn into_iter(self) -> Self::IntoIter {
        self.list.iter()
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
            cs.choose(false, |_| true, &mut 0);
        }
        assert_eq!(cs.remove_channel(1, 1), 3);
        assert_eq!(cs.remove_channel(1, 1), 0);
        let tags: Vec<&str> = cs.iter().map(|c| &*c.tag).collect();
        assert_eq!(tags, ["b", "d"]);
        assert_eq!(&*cs.choose(false, |_| true, &mut 0).unwrap().tag, "d");
        cs.check_invariants("q");
        assert_eq!(cs.remove_channel(2, 1) + cs.remove_channel(3, 1), 2);
        assert!(cs.is_empty());
        cs.check_invariants("q");
    }
}
