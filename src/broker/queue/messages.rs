//! The messages of a queue: the ready ones held in memory (one FIFO per priority level),
//! the paged tail in the store, and the count of deliveries not yet acked.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;

use crate::proto::command::Message;

use super::{MESSAGE_OVERHEAD_BYTES, MemoryMeter, QueuedMessage, memory_cost};

/// The tail of a queue that lives in the store instead of memory: every ready message at
/// position `from_seq` or later. Messages in memory all come before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paged {
    /// Messages in the store.
    pub count: u64,
    /// Bytes of their bodies.
    pub bytes: u64,
    /// The position of the first of them.
    pub from_seq: u64,
    /// A read of the next batch is in flight.
    pub loading: bool,
    /// Bumped when the paged tail is purged, so that a read in flight is discarded.
    pub epoch: u64,
}

/// A queue's messages, ready and in flight, with the totals that bound them: what is held
/// in memory is charged to the broker-wide memory meter while it is held.
#[derive(Debug)]
pub struct Messages {
    /// Ready messages in memory, one FIFO per priority level (a single one without
    /// priorities).
    buckets: Vec<VecDeque<QueuedMessage>>,
    /// How many messages `buckets` holds.
    ready_len: usize,
    /// Bytes of their bodies.
    ready_bytes: u64,
    /// Encoded properties of the ready messages in memory (their headers weigh too).
    ready_properties_bytes: u64,
    meter: MemoryMeter,
    next_seq: u64,
    /// The part of the backlog that lives in the store.
    pub paged: Paged,
    /// Messages at positions below this were recovered from the last run: when read back
    /// they are flagged redelivered.
    pub redelivered_below_seq: u64,
    /// Messages delivered to consumers or basic.get and not yet acked.
    pub unacked: u64,
    /// Their bodies' bytes.
    pub unacked_bytes: u64,
    /// The memory they hold ([`QueuedMessage::cost`]): an unacked delivery keeps its
    /// message until it is settled.
    pub unacked_cost: u64,
    /// Positions of stored messages whose store batch is not yet synced, with that batch,
    /// when the broker delivers only what is synced ([`Messages::hold`]): no message at
    /// or after the first of them is delivered. In position and batch order; one entry
    /// per message in a batch not yet synced, so the store backlog's bound bounds it.
    held: VecDeque<(u64, u64)>,
}

impl Messages {
    /// No messages, with `levels` priority levels (1 for a queue without priorities),
    /// charging what it holds to `meter`.
    pub fn new(levels: usize, meter: MemoryMeter) -> Self {
        assert!(levels >= 1, "a queue has a priority level");
        Messages {
            buckets: (0..levels).map(|_| VecDeque::new()).collect(),
            ready_len: 0,
            ready_bytes: 0,
            ready_properties_bytes: 0,
            meter,
            next_seq: 1,
            paged: Paged::default(),
            redelivered_below_seq: 0,
            unacked: 0,
            unacked_bytes: 0,
            unacked_cost: 0,
            held: VecDeque::new(),
        }
    }

    /// Ready messages, in memory and paged.
    pub fn ready_count(&self) -> u64 {
        self.ready_len as u64 + self.paged.count
    }

    /// Bytes of ready message bodies, in memory and paged.
    pub fn ready_bytes(&self) -> u64 {
        self.ready_bytes + self.paged.bytes
    }

    /// Ready messages held in memory.
    pub fn in_memory_count(&self) -> u64 {
        self.ready_len as u64
    }

    /// Memory charged for the ready messages held in memory.
    pub fn memory_bytes(&self) -> u64 {
        self.ready_bytes
            + self.ready_properties_bytes
            + self.ready_len as u64 * MESSAGE_OVERHEAD_BYTES
    }

    /// Memory charged for ready messages held in memory by every queue of the broker.
    pub fn broker_memory_bytes(&self) -> u64 {
        self.meter.load(Relaxed)
    }

    /// Ready messages held in memory, in delivery order.
    pub fn ready(&self) -> impl Iterator<Item = &QueuedMessage> {
        self.buckets.iter().rev().flat_map(|b| b.iter())
    }

    /// How many priority levels the messages are kept in.
    pub fn levels(&self) -> usize {
        self.buckets.len()
    }

    /// The position the next message will take.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Takes the position for a new message.
    pub fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Makes sure positions handed out from now on follow `seq` (after recovery).
    pub fn advance_seq(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    /// The priority level a message is queued under: its priority, capped at the highest
    /// level (`x-max-priority`; 0 without priorities).
    fn priority_of(&self, message: &Message) -> u8 {
        let top = u8::try_from(self.buckets.len() - 1).unwrap_or(u8::MAX);
        message.properties.priority.unwrap_or(0).min(top)
    }

    /// Appends a message in memory at the back of its priority level. Its position must
    /// follow every message in memory at that level.
    pub fn push(&mut self, mut entry: QueuedMessage) {
        entry.priority = self.priority_of(&entry.message);
        self.next_seq = self.next_seq.max(entry.seq + 1);
        self.charge(&entry, true);
        let bucket = &mut self.buckets[usize::from(entry.priority)];
        debug_assert!(
            bucket.back().is_none_or(|m| m.seq < entry.seq),
            "push out of order"
        );
        bucket.push_back(entry);
    }

    /// Records a message that went to the store instead of memory.
    pub fn page_out(&mut self, seq: u64, body_len: u64) {
        debug_assert!(
            self.ready().all(|m| m.seq < seq),
            "paged messages follow those in memory"
        );
        if self.paged.count == 0 {
            self.paged.from_seq = seq;
        }
        self.paged.count += 1;
        self.paged.bytes += body_len;
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Records the paged tail of a queue recovered from the store.
    pub fn restore_paged(&mut self, count: u64, bytes: u64, from_seq: u64) {
        self.paged.count = count;
        self.paged.bytes = bytes;
        self.paged.from_seq = from_seq;
        self.next_seq = self.next_seq.max(from_seq);
    }

    /// Takes in a batch read from the store (in position order, starting at the paged
    /// tail). Returns how many entries it took and the last position.
    pub fn take_loaded(&mut self, entries: Vec<QueuedMessage>) -> Option<u64> {
        self.paged.loading = false;
        let last = entries.last().map(|e| e.seq)?;
        for e in entries {
            debug_assert!(
                e.seq >= self.paged.from_seq,
                "loaded entry before the paged tail"
            );
            self.paged.count = self.paged.count.saturating_sub(1);
            self.paged.bytes = self.paged.bytes.saturating_sub(e.message.body_len());
            self.push(e);
        }
        self.paged.from_seq = last + 1;
        if self.paged.count == 0 {
            self.paged.bytes = 0;
        }
        Some(last)
    }

    /// The store had nothing more where `paged` said there was: the count was off (it
    /// can only be, after a crash lost paged messages); start over from memory.
    pub fn forget_paged(&mut self) {
        self.paged = Paged {
            epoch: self.paged.epoch + 1,
            ..Paged::default()
        };
    }

    /// Restores a message recovered from the store at its position.
    pub fn restore(&mut self, mut entry: QueuedMessage) {
        self.next_seq = self.next_seq.max(entry.seq + 1);
        entry.priority = self.priority_of(&entry.message);
        self.insert_in_order(entry);
    }

    /// `entry` went out to be acked.
    pub fn delivered_unacked(&mut self, entry: &QueuedMessage) {
        self.unacked += 1;
        self.unacked_bytes += entry.message.body_len();
        self.unacked_cost += entry.cost;
    }

    /// An unacked delivery of `entry` was acked, rejected or put back.
    pub fn settled_unacked(&mut self, entry: &QueuedMessage) {
        debug_assert!(self.unacked > 0 && self.unacked_cost >= entry.cost);
        self.unacked -= 1;
        self.unacked_bytes -= entry.message.body_len();
        self.unacked_cost -= entry.cost;
    }

    /// Updates the counts of messages held in memory.
    fn charge(&mut self, entry: &QueuedMessage, add: bool) {
        let (message, cost) = (&entry.message, entry.cost);
        debug_assert_eq!(cost, memory_cost(message));
        let properties = cost - message.body_len() - MESSAGE_OVERHEAD_BYTES;
        if add {
            self.ready_len += 1;
            self.ready_bytes += message.body_len();
            self.ready_properties_bytes += properties;
            self.meter.fetch_add(cost, Relaxed);
        } else {
            self.ready_len -= 1;
            self.ready_bytes -= message.body_len();
            self.ready_properties_bytes -= properties;
            self.meter.fetch_sub(cost, Relaxed);
        }
    }

    /// Holds back the message at position `seq`, and every later one, until store batch
    /// `batch` (which stores it) is synced. Positions and batches must not go back.
    pub fn hold(&mut self, seq: u64, batch: u64) {
        debug_assert!(
            self.held.back().is_none_or(|&(s, b)| s < seq && b <= batch),
            "holds out of order"
        );
        self.held.push_back((seq, batch));
    }

    /// Store batches through `synced` are synced: their messages may be delivered.
    /// Returns whether any was held.
    pub fn release(&mut self, synced: u64) -> bool {
        let before = self.held.len();
        while self.held.front().is_some_and(|&(_, b)| b <= synced) {
            self.held.pop_front();
        }
        self.held.len() < before
    }

    /// Whether a message waits for its store batch.
    pub fn holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether the next message to deliver waits for its store batch (or follows one that
    /// does).
    pub fn head_held(&self) -> bool {
        let Some(&(from, _)) = self.held.front() else {
            return false;
        };
        self.buckets
            .iter()
            .rev()
            .find_map(|b| b.front())
            .is_some_and(|m| m.seq >= from)
    }

    /// Takes the next message to deliver: the front of the highest non-empty priority,
    /// unless it waits for its store batch ([`Messages::hold`]).
    pub fn pop(&mut self) -> Option<QueuedMessage> {
        if self.head_held() {
            return None;
        }
        self.pop_head()
    }

    /// Takes the front of the highest non-empty priority, held or not (a length limit
    /// drops it).
    pub fn pop_head(&mut self) -> Option<QueuedMessage> {
        let m = self.buckets.iter_mut().rev().find_map(|b| b.pop_front())?;
        self.charge(&m, false);
        Some(m)
    }

    /// The ready message in memory at position `seq`, if there is one.
    pub fn find(&self, seq: u64) -> Option<&QueuedMessage> {
        // Each level is in position order.
        self.buckets.iter().find_map(|b| {
            let pos = b.partition_point(|m| m.seq < seq);
            b.get(pos).filter(|m| m.seq == seq)
        })
    }

    /// Takes the ready messages in memory at positions `seqs` (sorted, without repeats) out
    /// of the queue, in position order: one pass over each level that holds any, where
    /// taking them one by one would move the rest of the level for each.
    pub fn take_many(&mut self, seqs: &[u64]) -> Vec<QueuedMessage> {
        debug_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        let mut taken = Vec::new();
        for bucket in &mut self.buckets {
            if !bucket.iter().any(|m| seqs.binary_search(&m.seq).is_ok()) {
                continue;
            }
            let old = std::mem::take(bucket);
            for m in old {
                if seqs.binary_search(&m.seq).is_ok() {
                    taken.push(m);
                } else {
                    bucket.push_back(m);
                }
            }
        }
        for m in &taken {
            self.charge(m, false);
        }
        taken.sort_unstable_by_key(|m| m.seq);
        taken
    }

    /// Removes expired messages from the fronts of the priority levels (like RabbitMQ,
    /// a message expires once it reaches the front).
    pub fn drop_expired(&mut self, now_ms: u64) -> Vec<QueuedMessage> {
        let mut expired = Vec::new();
        for bucket in &mut self.buckets {
            while bucket
                .front()
                .is_some_and(|m| m.expires_at_ms.is_some_and(|t| t < now_ms))
            {
                if let Some(m) = bucket.pop_front() {
                    expired.push(m);
                }
            }
        }
        for m in &expired {
            self.charge(m, false);
        }
        expired
    }

    /// The earliest expiry among the messages at the fronts of the priority levels.
    pub fn head_expiry_ms(&self) -> Option<u64> {
        self.buckets
            .iter()
            .filter_map(|b| b.front()?.expires_at_ms)
            .min()
    }

    /// Puts a delivered message back at its original position, marked redelivered.
    pub fn requeue(&mut self, mut entry: QueuedMessage) {
        entry.redelivered = true;
        self.insert_in_order(entry);
    }

    /// Puts delivered messages back at their original positions, marked redelivered, a
    /// priority level at a time, each in one pass ([`merge_into`]): about the cost of
    /// what comes back, not its square.
    ///
    /// [`merge_into`]: super::super::sorted::merge_into
    pub fn requeue_many(&mut self, mut entries: Vec<QueuedMessage>) {
        if entries.len() < 2 {
            entries.into_iter().for_each(|e| self.requeue(e));
            return;
        }
        let top = self.buckets.len() - 1;
        for e in &mut entries {
            e.redelivered = true;
            e.priority = e.priority.min(u8::try_from(top).unwrap_or(u8::MAX));
        }
        for e in &entries {
            self.charge(e, true);
        }
        entries.sort_unstable_by_key(|e| (e.priority, e.seq));
        while let Some(level) = entries.last().map(|e| e.priority) {
            let group = entries.split_off(entries.partition_point(|e| e.priority < level));
            super::super::sorted::merge_into(
                &mut self.buckets[usize::from(level)],
                group,
                |m| m.seq,
                |_, dup| {
                    debug_assert!(false, "duplicate seq in queue");
                    Some(dup)
                },
            );
        }
    }

    fn insert_in_order(&mut self, entry: QueuedMessage) {
        self.charge(&entry, true);
        let level = usize::from(entry.priority).min(self.buckets.len() - 1);
        let bucket = &mut self.buckets[level];
        // Requeued messages usually belong at or near the front.
        let pos = bucket.partition_point(|m| m.seq < entry.seq);
        debug_assert!(
            bucket.get(pos).is_none_or(|m| m.seq != entry.seq),
            "duplicate seq in queue"
        );
        bucket.insert(pos, entry);
    }

    /// Removes every ready message held in memory and forgets the paged tail; returns
    /// the messages, and where the paged tail began with how many it held (the caller has
    /// the store drop them).
    pub fn purge(&mut self) -> (Vec<QueuedMessage>, Option<(u64, u64)>) {
        let all: Vec<QueuedMessage> = self
            .buckets
            .iter_mut()
            .rev()
            .flat_map(|b| b.drain(..))
            .collect();
        self.meter.fetch_sub(self.memory_bytes(), Relaxed);
        self.ready_bytes = 0;
        self.ready_properties_bytes = 0;
        self.ready_len = 0;
        let paged = (self.paged.count > 0).then_some((self.paged.from_seq, self.paged.count));
        self.forget_paged();
        self.held.clear();
        (all, paged)
    }

    /// Checks that the totals match the messages held, and that the messages are in
    /// order, at their priority levels, and ahead of the paged tail. `queue` names the
    /// queue in the panic message.
    pub fn check_invariants(&self, queue: &str) {
        let all: Vec<&QueuedMessage> = self.buckets.iter().flat_map(|b| b.iter()).collect();
        assert_eq!(all.len(), self.ready_len, "queue {queue} length");
        let bytes: u64 = all.iter().map(|m| m.message.body_len()).sum();
        assert_eq!(bytes, self.ready_bytes, "queue {queue} byte count");
        assert!(
            all.iter().all(|m| m.cost == memory_cost(&m.message)),
            "queue {queue}: a message's cost is what it weighs"
        );
        let cost: u64 = all.iter().map(|m| m.cost).sum();
        assert_eq!(cost, self.memory_bytes(), "queue {queue} memory charge");
        assert!(
            self.paged.count == 0 || all.iter().all(|m| m.seq < self.paged.from_seq),
            "queue {queue} holds in memory a message of its paged tail"
        );
        assert!(self.paged.count > 0 || self.paged.bytes == 0);
        for (level, b) in self.buckets.iter().enumerate() {
            assert!(
                b.iter().zip(b.iter().skip(1)).all(|(x, y)| x.seq < y.seq),
                "queue {queue} out of order"
            );
            assert!(
                b.iter().all(|m| usize::from(m.priority) == level),
                "queue {queue} priority level"
            );
        }
        assert!(all.iter().all(|m| m.seq < self.next_seq));
        assert!(
            self.held
                .iter()
                .zip(self.held.iter().skip(1))
                .all(|(x, y)| x.0 < y.0 && x.1 <= y.1),
            "queue {queue} holds out of order"
        );
        assert!(self.held.iter().all(|&(seq, _)| seq < self.next_seq));
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        // A deleted queue's messages no longer weigh on the broker's memory.
        self.meter.fetch_sub(self.memory_bytes(), Relaxed);
    }
}
