//! Group commit: the one state machine between the broker core's store outputs and a
//! [`Store`], run by the tokio store thread, by the madsim store task and by the
//! simulator's world alike.
//!
//! Jobs (batches to write, reads of paged messages) are done in the order the core emitted
//! them. Batches that arrive while a sync is in flight wait for it, unwritten, unless a read
//! needs them; then they are written together as one store write and share the next sync,
//! which covers them all: one sync for every batch that arrived during the last (group
//! commit). In such a write, a message enqueued and dequeued (published and acked) within
//! it is not written at all: the pair cancels out ([`cancel_pairs`]), as it would have once
//! both were on the disk. The driver decides only how a sync is carried out and when time
//! passes: a thread calls
//! [`Store::sync`] at once ([`GroupCommit::sync_now`]); the simulator starts it
//! ([`GroupCommit::begin_sync`]) and completes it later ([`GroupCommit::sync_done`]), so
//! that a crash can fall between.
//!
//! When the store fails a write, a sync or a read, the core hears of it once
//! ([`StoreDone::Failed`]), and from then on every job is kept in order: the batches
//! written since the last good sync (whose fate is in doubt), the one that failed, and
//! whatever arrives after. Every retry interval the store is reopened; it says how many
//! of the doubtful batches reached the disk, those are reported synced, and the rest are
//! written again, in order, until the store takes them. Once nothing is left over and
//! the store is ready again ([`Store::ready`]), [`StoreDone::Recovered`] tells the core
//! to take publishes again.

use std::collections::{HashMap, VecDeque};

use super::{EntryBody, LoadedEntry, Store, StoreError, StoreErrorKind, StoreOp};

/// Why the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFault {
    /// The disk is full.
    NoSpace,
    /// The disk fails writes (or reads) for another reason.
    Io,
}

impl From<StoreErrorKind> for StoreFault {
    fn from(kind: StoreErrorKind) -> Self {
        match kind {
            StoreErrorKind::NoSpace => StoreFault::NoSpace,
            StoreErrorKind::Io | StoreErrorKind::Other => StoreFault::Io,
        }
    }
}

/// Work for the store, in the order the core emitted it.
#[derive(Debug)]
pub enum StoreJob {
    /// Write a batch (synced with the batches written around it).
    Write(u64, Vec<StoreOp>),
    /// Read a queue's paged entries.
    Load {
        /// Queue incarnation.
        queue: u64,
        /// First position to read.
        from_seq: u64,
        /// Most entries.
        max: usize,
        /// Most bytes.
        max_bytes: u64,
        /// Identifies the read.
        epoch: u64,
    },
}

/// What the store reports back to the core.
#[derive(Debug)]
pub enum StoreDone {
    /// Every batch up to this one is synced.
    Synced(u64),
    /// A read finished.
    Loaded {
        /// Queue incarnation.
        queue: u64,
        /// The read's epoch.
        epoch: u64,
        /// What was read.
        entries: Vec<LoadedEntry>,
    },
    /// The store failed; the jobs from the first one not done on are kept and retried.
    Failed(StoreFault),
    /// The store works again, with room to spare.
    Recovered,
}

/// Most reports held for the driver: a driver collects them after each call, so more than
/// this means it does not.
const MAX_REPORTS: usize = 1 << 20;

/// The ops waiting at which the gap between syncs ends early.
pub const GAP_MAX_OPS: usize = 128;

/// The batches the last sync must have covered for the gap after it to apply: a client
/// that waits for each confirm brings its publish and, with a consumer, an ack or two.
pub const GAP_MIN_BATCHES: u64 = 4;

/// Most ops in one store write made of several batches (a batch larger than this is still
/// written whole, on its own).
const MAX_MERGED_OPS: usize = 1 << 16;

/// One store write: the batches `first..=last`, in order, as one atomic write.
#[derive(Debug)]
struct Write {
    first: u64,
    last: u64,
    ops: Vec<StoreOp>,
    /// The ops the batches held before enqueue/dequeue pairs were cancelled (what the
    /// gap between syncs counts, so that cancelling never brings a gap back).
    merged: usize,
}

/// The group-commit state machine.
#[derive(Debug)]
pub struct GroupCommit {
    /// Jobs not done yet, in order.
    waiting: VecDeque<StoreJob>,
    /// Writes the store did not take, to be made again, in order, before `waiting`.
    rewrite: VecDeque<Write>,
    /// Writes made since the last good sync, in order: kept until they are synced, since a
    /// failure leaves their fate in doubt.
    unsynced: Vec<Write>,
    /// How many of `unsynced` (a prefix) the sync in flight covers.
    syncing: Option<usize>,
    /// Enqueues cancelled by a dequeue in the same write, so far.
    cancelled: u64,
    /// The least time from one sync's start to the next one's (0: none).
    sync_gap_ms: u64,
    /// When the last sync started.
    last_sync_ms: Option<u64>,
    /// How many batches the last sync covered.
    last_sync_batches: u64,
    /// The fault reported to the core, until the store recovers.
    fault: Option<StoreFault>,
    /// The store failed and must be reopened before it takes more work.
    broken: bool,
    /// While faulted: when the store is tried again (reopening replays the journal, so it
    /// is tried once per `retry_ms`, not for every job that arrives meanwhile).
    retry_at_ms: Option<u64>,
    /// While faulted with nothing left to write: when to ask the store again whether it
    /// is ready (`None`: at once).
    ready_at_ms: Option<u64>,
    retry_ms: u64,
    /// The time of the current call.
    now_ms: u64,
    /// Reports for the core, in order.
    done: VecDeque<StoreDone>,
}

impl GroupCommit {
    /// A state machine that retries a failed store every `retry_ms`.
    pub fn new(retry_ms: u64) -> Self {
        GroupCommit {
            waiting: VecDeque::new(),
            rewrite: VecDeque::new(),
            unsynced: Vec::new(),
            syncing: None,
            cancelled: 0,
            sync_gap_ms: 0,
            last_sync_ms: None,
            last_sync_batches: 0,
            fault: None,
            broken: false,
            retry_at_ms: None,
            ready_at_ms: None,
            retry_ms,
            now_ms: 0,
            done: VecDeque::new(),
        }
    }

    /// Starts syncs at least `gap_ms` apart while several clients keep the store busy with
    /// small batches: batches that arrive in between wait, unwritten, and are written
    /// together when the next sync is due, so that fewer syncs carry more and more
    /// enqueue/ack pairs cancel out. A confirm waits up to `gap_ms` longer. There is no
    /// wait after a sync that covered fewer than [`GAP_MIN_BATCHES`] batches (an idle
    /// store, or one client waiting for each confirm, whose next publish can only follow
    /// it), nor once [`GAP_MAX_OPS`] ops wait (a sync is worth its cost then: waiting would
    /// only hold up publishers whose confirm windows are full).
    pub fn with_sync_gap(mut self, gap_ms: u64) -> Self {
        self.sync_gap_ms = gap_ms;
        self
    }

    /// While the last sync started less than the gap ago and the gap applies: when the
    /// next may start.
    fn gap_until(&self) -> Option<u64> {
        let next = self.last_sync_ms?.saturating_add(self.sync_gap_ms);
        if next <= self.now_ms || self.last_sync_batches < GAP_MIN_BATCHES {
            return None;
        }
        // Ops for the next sync: written since the last one started, or waiting.
        let written = self.unsynced[self.synced_prefix()..]
            .iter()
            .map(|w| w.merged);
        let waiting = self.waiting.iter().map(|job| match job {
            StoreJob::Write(_, ops) => ops.len(),
            StoreJob::Load { .. } => 0,
        });
        let mut held = 0;
        for n in written.chain(waiting) {
            held += n;
            if held >= GAP_MAX_OPS {
                return None;
            }
        }
        Some(next)
    }

    /// Queues a job behind the others.
    pub fn push(&mut self, job: StoreJob) {
        self.waiting.push_back(job);
    }

    /// Queues `first` and every job `next` yields (the ones already waiting in a channel).
    pub fn push_all(
        &mut self,
        first: Option<StoreJob>,
        mut next: impl FnMut() -> Option<StoreJob>,
    ) {
        if let Some(job) = first {
            self.push(job);
        }
        while let Some(job) = next() {
            self.push(job);
        }
    }

    /// The next report for the core.
    #[must_use]
    pub fn poll_done(&mut self) -> Option<StoreDone> {
        self.done.pop_front()
    }

    /// Whether the store is failing.
    pub fn faulted(&self) -> bool {
        self.fault.is_some()
    }

    /// When [`GroupCommit::run`] must be called again even if no job arrives: the end of
    /// the gap between syncs while batches wait for it; while the store is failing, the
    /// time of the next reopen or readiness check.
    pub fn wake_at(&self) -> Option<u64> {
        if self.syncing.is_some() {
            // The sync's completion moves it on (the driver runs it again then).
            return None;
        }
        if self.fault.is_some() && self.broken {
            return Some(self.retry_at_ms.unwrap_or(0));
        }
        if !self.waiting.is_empty() || !self.rewrite.is_empty() || !self.unsynced.is_empty() {
            // Held for the gap between syncs; otherwise the jobs move it on.
            return self.gap_until();
        }
        self.fault?;
        Some(self.ready_at_ms.unwrap_or(0))
    }

    /// The writes held (made and not yet synced, or waiting to be made), each as the range
    /// of batches it holds and its ops.
    pub fn held_batches(&self) -> impl Iterator<Item = (u64, u64, &[StoreOp])> + '_ {
        let waiting = self.waiting.iter().filter_map(|j| match j {
            StoreJob::Write(batch, ops) => Some((*batch, *batch, ops.as_slice())),
            StoreJob::Load { .. } => None,
        });
        self.unsynced
            .iter()
            .chain(self.rewrite.iter())
            .map(|w| (w.first, w.last, w.ops.as_slice()))
            .chain(waiting)
    }

    /// The last batch of each write made since the last good sync, in order (a crash keeps
    /// a prefix of these writes).
    pub fn unsynced_writes(&self) -> impl Iterator<Item = u64> + '_ {
        self.unsynced.iter().map(|w| w.last)
    }

    /// How many enqueues were cancelled by their dequeue before they were written.
    pub fn cancelled_pairs(&self) -> u64 {
        self.cancelled
    }

    /// Jobs not yet done and writes not yet synced.
    pub fn backlog(&self) -> usize {
        self.waiting.len() + self.rewrite.len() + self.unsynced.len()
    }

    /// Does the waiting jobs in order with `store` at `now_ms`, until they are done or the
    /// store fails (reopening it first, once the retry is due, if an earlier failure broke
    /// it); then, while faulted with nothing left over, asks the store whether it is ready.
    /// Returns whether a sync is due ([`GroupCommit::sync_now`] or
    /// [`GroupCommit::begin_sync`]).
    #[must_use]
    pub fn run(&mut self, store: &mut dyn Store, now_ms: u64) -> bool {
        self.now_ms = now_ms;
        if self.broken {
            if self.syncing.is_some() || self.retry_at_ms.is_some_and(|at| now_ms < at) {
                return false;
            }
            self.retry_at_ms = Some(now_ms.saturating_add(self.retry_ms));
            if !self.reopen(store) {
                return false;
            }
        }
        while let Some(write) = self.rewrite.pop_front() {
            if !self.write(store, write) {
                return false;
            }
        }
        if !self.waiting.is_empty()
            && (self.syncing.is_some() || self.gap_until().is_some())
            && !self.waiting.iter().any(StoreJob::is_load)
        {
            // Held for the sync in flight, or for the gap after the last one: written
            // together when the next sync is due.
            return false;
        }
        while let Some(job) = self.waiting.pop_front() {
            let done = match job {
                StoreJob::Write(batch, ops) => {
                    let write = self.merge_writes(batch, ops);
                    self.write(store, write)
                }
                load => self.load(store, load),
            };
            if !done {
                return false;
            }
        }
        self.check_recovered(store);
        self.sync_due()
    }

    /// `ops`, batch `first`, and the write batches waiting right behind it, as one write
    /// (up to [`MAX_MERGED_OPS`]), with the enqueue/dequeue pairs within it cancelled.
    fn merge_writes(&mut self, first: u64, mut ops: Vec<StoreOp>) -> Write {
        let mut last = first;
        while let Some(StoreJob::Write(_, next)) = self.waiting.front() {
            if ops.len() + next.len() > MAX_MERGED_OPS {
                break;
            }
            let Some(StoreJob::Write(batch, next)) = self.waiting.pop_front() else {
                unreachable!("the front is a write");
            };
            debug_assert!(batch > last, "batches arrive in order");
            last = batch;
            ops.extend(next);
        }
        let merged = ops.len();
        self.cancelled += cancel_pairs(&mut ops);
        Write {
            first,
            last,
            ops,
            merged,
        }
    }

    /// [`GroupCommit::run`], then the sync if one is due, for drivers whose sync blocks.
    pub fn step(&mut self, store: &mut dyn Store, now_ms: u64) {
        if self.run(store, now_ms) {
            self.sync_now(store);
            self.check_recovered(store);
        }
    }

    /// Whether written batches wait for a sync and none is in flight.
    pub fn sync_due(&self) -> bool {
        !self.broken
            && self.syncing.is_none()
            && self.gap_until().is_none()
            && self.unsynced.len() > self.synced_prefix()
    }

    fn synced_prefix(&self) -> usize {
        self.syncing.unwrap_or(0)
    }

    /// Starts a sync covering every batch written so far (the driver syncs the store and
    /// calls [`GroupCommit::sync_done`]).
    pub fn begin_sync(&mut self) {
        assert!(self.syncing.is_none(), "one sync at a time");
        self.syncing = Some(self.unsynced.len());
        self.last_sync_ms = Some(self.now_ms);
        self.last_sync_batches = match (self.unsynced.first(), self.unsynced.last()) {
            (Some(first), Some(last)) => last.last - first.first + 1,
            _ => 0,
        };
    }

    /// The sync in flight finished with `result`.
    pub fn sync_done(&mut self, result: Result<(), StoreError>) {
        let Some(covered) = self.syncing.take() else {
            return;
        };
        debug_assert!(covered <= self.unsynced.len());
        match result {
            Ok(()) => {
                let rest = self.unsynced.split_off(covered.min(self.unsynced.len()));
                if let Some(w) = self.unsynced.last() {
                    self.report(StoreDone::Synced(w.last));
                }
                self.unsynced = rest;
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Syncs `store` now, for drivers whose sync blocks.
    pub fn sync_now(&mut self, store: &mut dyn Store) {
        self.begin_sync();
        let result = store.sync();
        self.sync_done(result);
    }

    /// The final sync at shutdown; fails if the store is still failing.
    pub fn finish(&mut self, store: &mut dyn Store, now_ms: u64) -> Result<(), StoreError> {
        // The retry and the sync are due now, whenever the last ones were.
        self.retry_at_ms = None;
        self.ready_at_ms = None;
        self.last_sync_ms = None;
        if self.run(store, now_ms) {
            self.sync_now(store);
        }
        if self.broken || !self.waiting.is_empty() || !self.rewrite.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                format!(
                    "the store is still failing at shutdown; {} jobs were not written",
                    self.backlog()
                ),
            ));
        }
        store.sync()
    }

    /// Makes one write; returns false if the store failed (the write is kept, in doubt).
    fn write(&mut self, store: &mut dyn Store, write: Write) -> bool {
        debug_assert!(
            self.unsynced.last().is_none_or(|w| w.last < write.first),
            "batches are written in order"
        );
        let result = store.write(&write.ops);
        // In doubt until synced, written or not: a failed write is made again after the
        // reopen unless the store says it holds it.
        self.unsynced.push(write);
        if let Err(e) = result {
            self.failed(&e);
            return false;
        }
        true
    }

    /// Does one read; returns false if the store failed (the read is kept).
    fn load(&mut self, store: &mut dyn Store, job: StoreJob) -> bool {
        let StoreJob::Load {
            queue,
            from_seq,
            max,
            max_bytes,
            epoch,
        } = job
        else {
            unreachable!("writes are merged, not loaded");
        };
        match store.load(queue, from_seq, max, max_bytes) {
            Ok(entries) => {
                self.report(StoreDone::Loaded {
                    queue,
                    epoch,
                    entries,
                });
                true
            }
            Err(e) => {
                self.waiting.push_front(job);
                self.failed(&e);
                false
            }
        }
    }

    /// While faulted, once every job is done and synced: whether the store is ready for
    /// publishers again; the core hears when it is.
    fn check_recovered(&mut self, store: &mut dyn Store) {
        if self.fault.is_none()
            || self.broken
            || self.syncing.is_some()
            || !self.waiting.is_empty()
            || !self.rewrite.is_empty()
            || !self.unsynced.is_empty()
        {
            return;
        }
        if self.ready_at_ms.is_some_and(|at| self.now_ms < at) {
            return;
        }
        if store.ready() {
            tracing::warn!("the store works again: publishes are taken again");
            self.fault = None;
            self.retry_at_ms = None;
            self.ready_at_ms = None;
            self.report(StoreDone::Recovered);
        } else {
            self.ready_at_ms = Some(self.now_ms.saturating_add(self.retry_ms));
        }
    }

    fn failed(&mut self, e: &StoreError) {
        self.broken = true;
        if self.retry_at_ms.is_none_or(|at| at <= self.now_ms) {
            self.retry_at_ms = Some(self.now_ms.saturating_add(self.retry_ms));
        }
        let fault = StoreFault::from(e.kind());
        if self.fault != Some(fault) {
            tracing::error!(error = %e, "store failed: refusing persistent publishes and retrying");
            self.fault = Some(fault);
            self.report(StoreDone::Failed(fault));
        } else {
            tracing::debug!(error = %e, "store still failing");
        }
    }

    /// Reopens a broken store: the batches it kept are reported synced and the others go
    /// back to the front of the waiting jobs. Returns whether the store works.
    fn reopen(&mut self, store: &mut dyn Store) -> bool {
        debug_assert!(self.syncing.is_none());
        let held = match store.reopen() {
            Ok(held) => held,
            Err(e) => {
                tracing::debug!(error = %e, "store still failing");
                return false;
            }
        };
        self.broken = false;
        let held = held.min(self.unsynced.len());
        let rest = self.unsynced.split_off(held);
        if let Some(w) = self.unsynced.last() {
            self.report(StoreDone::Synced(w.last));
        }
        self.unsynced.clear();
        for write in rest.into_iter().rev() {
            self.rewrite.push_front(write);
        }
        true
    }

    fn report(&mut self, done: StoreDone) {
        assert!(
            self.done.len() < MAX_REPORTS,
            "the driver does not collect the store's reports"
        );
        self.done.push_back(done);
    }
}

impl StoreJob {
    fn is_load(&self) -> bool {
        matches!(self, StoreJob::Load { .. })
    }
}

/// Drops every enqueue of a message of its own (not shared) that a dequeue later in `ops`
/// takes away, together with that dequeue: written as one atomic write, the pair leaves
/// the store as it was. A purge or a deletion in between ends the matching (it may take
/// entries in ways the pairs do not show). Returns how many pairs were cancelled.
fn cancel_pairs(ops: &mut Vec<StoreOp>) -> u64 {
    // Enqueued positions not yet dequeued: (queue, seq) -> index in `ops`.
    let mut open: HashMap<(u64, u64), usize> = HashMap::new();
    let mut drop = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            StoreOp::Enqueue {
                queue,
                seq,
                body: EntryBody::Inline(_),
                ..
            } => {
                open.insert((*queue, *seq), i);
            }
            StoreOp::Dequeue {
                queue,
                seq,
                shared: None,
            } => {
                if let Some(at) = open.remove(&(*queue, *seq)) {
                    drop.push(at);
                    drop.push(i);
                }
            }
            StoreOp::PurgeFrom { .. } | StoreOp::DeleteQueue { .. } | StoreOp::DeleteVhost(_) => {
                open.clear();
            }
            _ => {}
        }
    }
    if drop.is_empty() {
        return 0;
    }
    let pairs = (drop.len() / 2) as u64;
    drop.sort_unstable();
    let mut next = drop.iter().peekable();
    let mut i = 0;
    ops.retain(|_| {
        let keep = next.next_if(|&&at| at == i).is_none();
        i += 1;
        keep
    });
    pairs
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::memory::MemoryState;
    use crate::store::{LoadedEntry, Recovered};

    /// A store that fails on demand: writes fail while `fail_writes` is set (keeping
    /// nothing of the failed batch), and a reopen keeps `keep_on_reopen` of the batches in
    /// doubt.
    #[derive(Default)]
    struct Flaky {
        state: MemoryState,
        written: Vec<u64>,
        unsynced: Vec<Vec<StoreOp>>,
        fail_writes: Option<StoreErrorKind>,
        fail_reopen: bool,
        ready: bool,
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Flaky>>);

    /// The test batches each name a vhost; a write holds one or more of them.
    fn vhosts_of(ops: &[StoreOp]) -> impl Iterator<Item = u64> + '_ {
        ops.iter().filter_map(|op| match op {
            StoreOp::PutVhost(name) => Some(name.parse().unwrap()),
            _ => None,
        })
    }

    impl Store for Shared {
        fn recover(&mut self, _: crate::store::HeadLimit) -> Result<Recovered, StoreError> {
            Ok(Recovered::default())
        }
        fn load(
            &mut self,
            q: u64,
            from: u64,
            max: usize,
            max_bytes: u64,
        ) -> Result<Vec<LoadedEntry>, StoreError> {
            let s = self.0.lock().unwrap();
            match s.fail_writes {
                Some(kind) => Err(StoreError::new(kind, "read failed")),
                None => Ok(s.state.load(q, from, max, max_bytes)),
            }
        }
        fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
            let mut s = self.0.lock().unwrap();
            if let Some(kind) = s.fail_writes {
                return Err(StoreError::new(kind, "write failed"));
            }
            s.unsynced.push(ops.to_vec());
            Ok(())
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            let mut s = self.0.lock().unwrap();
            for ops in std::mem::take(&mut s.unsynced) {
                s.written.extend(vhosts_of(&ops));
                for op in &ops {
                    s.state.apply(op);
                }
            }
            Ok(())
        }
        fn reopen(&mut self) -> Result<usize, StoreError> {
            let mut s = self.0.lock().unwrap();
            if s.fail_reopen {
                return Err(StoreError::new(StoreErrorKind::Io, "still failing"));
            }
            // The batches written before the failure reached the disk.
            let held = s.unsynced.len();
            for ops in std::mem::take(&mut s.unsynced) {
                s.written.extend(vhosts_of(&ops));
            }
            Ok(held)
        }
        fn ready(&mut self) -> bool {
            self.0.lock().unwrap().ready
        }
    }

    fn batch(n: u64) -> StoreJob {
        StoreJob::Write(n, vec![StoreOp::PutVhost(n.to_string())])
    }

    fn load(queue: u64) -> StoreJob {
        StoreJob::Load {
            queue,
            from_seq: 0,
            max: 1,
            max_bytes: u64::MAX,
            epoch: 1,
        }
    }

    fn drain(gc: &mut GroupCommit) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(d) = gc.poll_done() {
            out.push(match d {
                StoreDone::Synced(b) => format!("synced {b}"),
                StoreDone::Loaded { queue, .. } => format!("loaded {queue}"),
                StoreDone::Failed(f) => format!("failed {f:?}"),
                StoreDone::Recovered => "recovered".into(),
            });
        }
        out
    }

    #[test]
    fn a_failed_batch_is_retried_in_order_with_the_ones_behind_it() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(0);
        w.push(batch(1));
        assert!(w.run(&mut store, 0));
        w.sync_now(&mut store);
        assert_eq!(drain(&mut w), ["synced 1"]);

        // Batch 2 is written, then batch 3 fails: 2 is in doubt, 3 and 4 wait.
        w.push(batch(2));
        assert!(w.run(&mut store, 0));
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
        w.push(batch(3));
        w.push(batch(4));
        assert!(!w.run(&mut store, 0));
        assert!(w.faulted());
        assert_eq!(drain(&mut w), ["failed NoSpace"]);
        // A failed reopen changes nothing.
        shared.0.lock().unwrap().fail_reopen = true;
        w.push(StoreJob::Load {
            queue: 9,
            from_seq: 0,
            max: 1,
            max_bytes: u64::MAX,
            epoch: 1,
        });
        assert!(!w.run(&mut store, 0));
        assert!(drain(&mut w).is_empty());

        // The disk comes back: 2 was held, 3 and 4 are written again, then the load.
        {
            let mut s = shared.0.lock().unwrap();
            s.fail_reopen = false;
            s.fail_writes = None;
        }
        assert!(w.run(&mut store, 0));
        w.sync_now(&mut store);
        assert_eq!(
            drain(&mut w),
            ["synced 2", "loaded 9", "synced 4"],
            "the batch held by the reopen is synced at once"
        );
        assert_eq!(shared.0.lock().unwrap().written, [1, 2, 3, 4]);
        // Not ready yet (the reserve could not be set aside): still faulted.
        assert!(!w.run(&mut store, 0));
        assert!(w.faulted() && drain(&mut w).is_empty());
        shared.0.lock().unwrap().ready = true;
        assert!(!w.run(&mut store, 0));
        assert!(!w.faulted());
        assert_eq!(drain(&mut w), ["recovered"]);
        assert_eq!(w.wake_at(), None);
    }

    #[test]
    fn a_failure_while_faulted_is_reported_again_only_if_its_kind_changes() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(0);
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
        w.push(batch(1));
        assert!(!w.run(&mut store, 0));
        assert!(!w.run(&mut store, 0));
        assert_eq!(drain(&mut w), ["failed Io"]);
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
        assert!(!w.run(&mut store, 0));
        assert_eq!(drain(&mut w), ["failed NoSpace"]);
        assert!(
            w.finish(&mut store, 0).is_err(),
            "still failing at shutdown"
        );
        shared.0.lock().unwrap().fail_writes = None;
        w.finish(&mut store, 0).unwrap();
        assert_eq!(shared.0.lock().unwrap().written, [1]);
        assert_eq!(drain(&mut w), ["synced 1"]);
    }

    #[test]
    fn batches_arriving_during_a_sync_wait_for_it_and_share_the_next_one() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100);
        w.push(batch(1));
        assert!(w.run(&mut store, 0));
        w.begin_sync();
        // Arriving while the sync runs: held, not written, and no second sync starts.
        w.push(batch(2));
        w.push(batch(3));
        assert!(!w.run(&mut store, 1));
        assert!(!w.sync_due());
        assert_eq!(shared.0.lock().unwrap().unsynced.len(), 1, "only batch 1");
        store.sync().unwrap();
        w.sync_done(Ok(()));
        assert_eq!(drain(&mut w), ["synced 1"]);
        assert!(
            w.run(&mut store, 2),
            "2 and 3 are written and wait for a sync"
        );
        assert_eq!(shared.0.lock().unwrap().unsynced.len(), 1, "as one write");
        assert_eq!(w.unsynced_writes().collect::<Vec<_>>(), [3]);
        w.sync_now(&mut store);
        assert_eq!(drain(&mut w), ["synced 3"]);
        assert!(!w.sync_due());
        assert_eq!(shared.0.lock().unwrap().written, [1, 2, 3]);
    }

    #[test]
    fn syncs_start_at_least_the_gap_apart_while_several_batches_share_them() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100).with_sync_gap(5);
        // A sync of fewer than GAP_MIN_BATCHES (one client waiting for its confirm, and
        // its consumer's ack): no gap after it.
        w.push(batch(1));
        w.push(batch(2));
        w.step(&mut store, 10);
        w.push(batch(3));
        w.step(&mut store, 11);
        assert_eq!(drain(&mut w), ["synced 2", "synced 3"]);
        // A sync of four: the batches after it wait, unwritten, until the gap ends.
        for b in 4..8 {
            w.push(batch(b));
        }
        w.step(&mut store, 20);
        assert_eq!(drain(&mut w), ["synced 7"]);
        w.push(batch(8));
        w.step(&mut store, 22);
        w.push(batch(9));
        w.step(&mut store, 24);
        assert!(drain(&mut w).is_empty());
        assert_eq!(w.wake_at(), Some(25));
        assert_eq!(shared.0.lock().unwrap().written, (1..8).collect::<Vec<_>>());
        w.step(&mut store, 25);
        assert_eq!(drain(&mut w), ["synced 9"]);
        assert_eq!(
            shared.0.lock().unwrap().written,
            (1..10).collect::<Vec<_>>()
        );
        assert_eq!(w.wake_at(), None);
        // After a sync of two (8 and 9), a batch goes at once.
        w.push(batch(10));
        w.step(&mut store, 26);
        assert_eq!(drain(&mut w), ["synced 10"]);
        // Enough ops waiting end the gap early.
        for b in 11..15 {
            w.push(batch(b));
        }
        w.step(&mut store, 30);
        assert_eq!(drain(&mut w), ["synced 14"]);
        w.push(batch(15));
        w.step(&mut store, 31);
        assert!(drain(&mut w).is_empty());
        let many = (0..GAP_MAX_OPS as u64).map(|i| StoreOp::PutVhost(format!("{}", 100 + i)));
        w.push(StoreJob::Write(16, many.collect()));
        w.step(&mut store, 32);
        assert_eq!(drain(&mut w), ["synced 16"]);
    }

    #[test]
    fn cancelled_pairs_do_not_bring_the_gap_back() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100).with_sync_gap(5);
        for b in 1..5 {
            w.push(batch(b));
        }
        w.step(&mut store, 10);
        assert_eq!(drain(&mut w), ["synced 4"]);
        // GAP_MAX_OPS ops arrive within the gap, 20 pairs among them: the gap ends, and
        // the sync is due although fewer ops are left after cancelling.
        let mut ops: Vec<StoreOp> = (0..GAP_MAX_OPS as u64 - 20)
            .map(|s| enqueue(9, s))
            .collect();
        ops.extend((0..20).map(|s| dequeue(9, s, None)));
        w.push(StoreJob::Write(5, ops));
        assert!(w.run(&mut store, 11), "the sync is due at once");
        assert_eq!(w.cancelled_pairs(), 20);
    }

    #[test]
    fn a_recovering_store_is_asked_whether_it_is_ready_during_the_gap() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100).with_sync_gap(10);
        for b in 1..5 {
            w.push(batch(b));
        }
        w.step(&mut store, 0);
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
        for b in 5..9 {
            w.push(batch(b));
        }
        w.step(&mut store, 20);
        assert_eq!(drain(&mut w), ["synced 4", "failed NoSpace"]);
        {
            let mut s = shared.0.lock().unwrap();
            s.fail_writes = None;
            s.ready = true;
        }
        // The reopen at the retry writes 5 to 8 again; its sync runs; the readiness check
        // after it must not wait for a gap with nothing to write.
        assert!(w.run(&mut store, 120));
        w.begin_sync();
        store.sync().unwrap();
        w.sync_done(Ok(()));
        assert!(!w.run(&mut store, 121));
        assert_eq!(drain(&mut w), ["synced 8", "recovered"]);
        assert!(!w.faulted());
        assert_eq!(w.wake_at(), None);
    }

    #[test]
    fn a_read_during_a_sync_writes_the_batches_before_it_first() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100);
        w.push(batch(1));
        assert!(w.run(&mut store, 0));
        w.begin_sync();
        w.push(batch(2));
        w.push(load(7));
        w.push(batch(3));
        assert!(!w.run(&mut store, 1), "the sync in flight is not done");
        assert_eq!(drain(&mut w), ["loaded 7"]);
        assert_eq!(
            shared.0.lock().unwrap().unsynced.len(),
            3,
            "1, then 2 before the read, then 3"
        );
        store.sync().unwrap();
        w.sync_done(Ok(()));
        assert_eq!(drain(&mut w), ["synced 1"]);
        w.step(&mut store, 2);
        assert_eq!(drain(&mut w), ["synced 3"]);
    }

    #[test]
    fn a_write_failing_during_a_sync_waits_for_the_sync_before_any_retry() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100);
        w.push(batch(1));
        assert!(w.run(&mut store, 0));
        w.begin_sync();
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
        // A read makes batch 2 be written while the sync runs.
        w.push(batch(2));
        w.push(load(9));
        assert!(!w.run(&mut store, 1));
        assert_eq!(drain(&mut w), ["failed Io"]);
        // Nothing to do until the sync completes, however late.
        assert_eq!(w.wake_at(), None);
        assert!(!w.run(&mut store, 500));
        store.sync().unwrap();
        w.sync_done(Ok(()));
        assert_eq!(drain(&mut w), ["synced 1"]);
        assert_eq!(w.wake_at(), Some(101));
        shared.0.lock().unwrap().fail_writes = None;
        shared.0.lock().unwrap().ready = true;
        w.step(&mut store, 600);
        assert_eq!(drain(&mut w), ["loaded 9", "synced 2", "recovered"]);
    }

    fn message() -> Arc<crate::proto::command::Message> {
        Arc::new(crate::proto::command::Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Default::default(),
            body: bytes::Bytes::from_static(b"m"),
        })
    }

    fn enqueue(queue: u64, seq: u64) -> StoreOp {
        StoreOp::Enqueue {
            queue,
            seq,
            body: EntryBody::Inline(message()),
            expires_at_ms: None,
        }
    }

    fn dequeue(queue: u64, seq: u64, shared: Option<u64>) -> StoreOp {
        StoreOp::Dequeue { queue, seq, shared }
    }

    fn shape(ops: &[StoreOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                StoreOp::Enqueue { queue, seq, .. } => format!("+{queue}.{seq}"),
                StoreOp::Dequeue { queue, seq, .. } => format!("-{queue}.{seq}"),
                StoreOp::PurgeFrom { queue, from_seq } => format!("purge {queue}.{from_seq}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_enqueue_and_its_dequeue_in_one_write_cancel_out() {
        let mut ops = vec![
            enqueue(1, 1),
            enqueue(1, 2),
            enqueue(2, 1),
            dequeue(1, 1, None),
            // A dequeue of an entry written before: kept.
            dequeue(1, 0, None),
            StoreOp::Enqueue {
                queue: 3,
                seq: 1,
                body: EntryBody::Shared(5),
                expires_at_ms: None,
            },
            // Shared bodies keep their reference counts: never cancelled.
            dequeue(3, 1, Some(5)),
            // A purge ends the matching: 1.2 and 2.1 are taken by it, not cancelled.
            StoreOp::PurgeFrom {
                queue: 2,
                from_seq: 0,
            },
            dequeue(1, 2, None),
            enqueue(2, 2),
            dequeue(2, 2, None),
        ];
        assert_eq!(cancel_pairs(&mut ops), 2);
        assert_eq!(
            shape(&ops),
            ["+1.2", "+2.1", "-1.0", "+3.1", "-3.1", "purge 2.0", "-1.2"]
        );
    }

    /// An op of a generated sequence: 0 enqueue, 1 dequeue, 2 purge, 3 delete the queue,
    /// 4 enqueue a shared body.
    type Step = (u8, u64, u64);

    /// Positions ever enqueued, with the shared body each names, and queues deleted.
    #[derive(Default)]
    struct Emitted {
        enqueued: HashMap<(u64, u64), Option<u64>>,
        deleted: std::collections::HashSet<u64>,
    }

    /// A sequence the broker could emit: no position is enqueued twice in a queue
    /// incarnation, a dequeue names the body its entry has, and a deleted incarnation gets
    /// no more ops.
    fn ops_of(steps: &[Step], emitted: &mut Emitted) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for &(kind, queue, seq) in steps {
            if emitted.deleted.contains(&queue) {
                continue;
            }
            match kind {
                0 | 4 if !emitted.enqueued.contains_key(&(queue, seq)) => {
                    let shared = (kind == 4).then_some(7);
                    emitted.enqueued.insert((queue, seq), shared);
                    ops.push(StoreOp::Enqueue {
                        queue,
                        seq,
                        body: match shared {
                            Some(id) => EntryBody::Shared(id),
                            None => EntryBody::Inline(message()),
                        },
                        expires_at_ms: None,
                    });
                }
                1 => {
                    let shared = emitted.enqueued.get(&(queue, seq)).copied().flatten();
                    ops.push(dequeue(queue, seq, shared));
                }
                2 => ops.push(StoreOp::PurgeFrom {
                    queue,
                    from_seq: seq,
                }),
                3 => {
                    emitted.deleted.insert(queue);
                    ops.push(StoreOp::DeleteQueue {
                        vhost: "/".into(),
                        name: format!("q{queue}"),
                        id: queue,
                    });
                }
                _ => {}
            }
        }
        ops
    }

    proptest::proptest! {
        /// Written as one write, the ops left by `cancel_pairs` leave the store exactly as
        /// the ops given would have, whatever the store held before.
        #[test]
        fn cancelling_pairs_never_changes_what_a_write_leaves(
            before in proptest::collection::vec((0u8..2, 1u64..4, 0u64..8), 0..12),
            steps in proptest::collection::vec((0u8..5, 1u64..4, 0u64..16), 0..40),
        ) {
            let mut start = MemoryState::default();
            start.apply(&StoreOp::PutVhost("/".into()));
            start.apply(&StoreOp::PutShared { id: 7, message: message(), refs: 1_000 });
            for q in 1..4 {
                start.apply(&StoreOp::PutQueue(crate::store::QueueRecord {
                    vhost: "/".into(),
                    name: format!("q{q}"),
                    id: q,
                    auto_delete: false,
                    arguments: Default::default(),
                }));
            }
            // Earlier writes, then the write under test (which never enqueues a position
            // enqueued before).
            let mut emitted = Emitted::default();
            for op in ops_of(&before, &mut emitted) {
                start.apply(&op);
            }
            let ops = ops_of(&steps, &mut emitted);
            let mut cancelled = ops.clone();
            let pairs = cancel_pairs(&mut cancelled);
            proptest::prop_assert_eq!(cancelled.len() as u64 + 2 * pairs, ops.len() as u64);
            let (mut want, mut got) = (start.clone(), start);
            for op in &ops {
                want.apply(op);
            }
            for op in &cancelled {
                got.apply(op);
            }
            let all = crate::store::HeadLimit::ALL;
            proptest::prop_assert_eq!(
                format!("{:?}", want.recovered(all)),
                format!("{:?}", got.recovered(all))
            );
        }
    }

    #[test]
    fn a_message_published_and_acked_between_two_syncs_is_never_written() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100);
        w.push(batch(1));
        assert!(w.run(&mut store, 0));
        w.begin_sync();
        w.push(StoreJob::Write(2, vec![enqueue(4, 1), enqueue(4, 2)]));
        w.push(StoreJob::Write(3, vec![dequeue(4, 1, None)]));
        assert!(!w.run(&mut store, 1));
        store.sync().unwrap();
        w.sync_done(Ok(()));
        assert!(w.run(&mut store, 2));
        let written = shared.0.lock().unwrap().unsynced.clone();
        assert_eq!(written.len(), 1);
        assert_eq!(shape(&written[0]), ["+4.2"]);
        assert_eq!(w.cancelled_pairs(), 1);
        w.sync_now(&mut store);
        assert_eq!(drain(&mut w), ["synced 1", "synced 3"]);
    }

    #[test]
    fn a_broken_store_is_reopened_once_per_retry_interval() {
        let shared = Shared::default();
        let mut store = shared.clone();
        let mut w = GroupCommit::new(100);
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
        w.push(batch(1));
        assert!(!w.run(&mut store, 10));
        assert_eq!(drain(&mut w), ["failed Io"]);
        assert_eq!(w.wake_at(), Some(110));
        shared.0.lock().unwrap().fail_writes = None;
        // Before the retry is due, arriving jobs wait behind the failed one.
        w.push(batch(2));
        assert!(!w.run(&mut store, 50));
        assert!(shared.0.lock().unwrap().written.is_empty());
        shared.0.lock().unwrap().ready = true;
        w.step(&mut store, 110);
        assert_eq!(drain(&mut w), ["synced 2", "recovered"]);
        assert_eq!(shared.0.lock().unwrap().written, [1, 2]);
        assert_eq!(w.wake_at(), None);
    }
}
