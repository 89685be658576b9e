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

use std::collections::VecDeque;

use super::{LoadedEntry, Store, StoreError, StoreErrorKind, StoreOp};
use cancel::cancel_pairs;
pub use wake::WakeGate;

mod cancel;
mod wake;

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
    /// Write a batch (synced with the batches written around it). The flag says that the
    /// clients waiting for a sync are likely to send nothing more until one comes (see
    /// [`crate::broker::Broker::sync_awaited`]): the gap between syncs would only hold
    /// them up, so it ends.
    Write(u64, Vec<StoreOp>, bool),
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
    /// One of the batches ends the gap between syncs ([`StoreJob::Write`]).
    urgent: bool,
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
    /// only hold up publishers whose confirm windows are full), nor once a batch says that
    /// every client waiting for a sync has sent all it can ([`StoreJob::Write`]).
    pub fn with_sync_gap(mut self, gap_ms: u64) -> Self {
        self.sync_gap_ms = gap_ms;
        self
    }

    /// While the last sync started less than the gap ago and the gap applies: when the
    /// next may start.
    fn gap_until(&self) -> Option<u64> {
        self.gap().map(|(next, _)| next)
    }

    /// While the gap applies: when the next sync may start, and how many more ops end
    /// the gap early (at least 1).
    fn gap(&self) -> Option<(u64, usize)> {
        let next = self.last_sync_ms?.saturating_add(self.sync_gap_ms);
        if next <= self.now_ms || self.last_sync_batches < GAP_MIN_BATCHES {
            return None;
        }
        // Ops for the next sync: written since the last one started, or waiting.
        let written = &self.unsynced[self.synced_prefix()..];
        if written.iter().any(|w| w.urgent) || self.waiting.iter().any(StoreJob::is_urgent) {
            return None;
        }
        let written = written.iter().map(|w| w.merged);
        let waiting = self.waiting.iter().map(StoreJob::ops);
        let mut held = 0;
        for n in written.chain(waiting) {
            held += n;
            if held >= GAP_MAX_OPS {
                return None;
            }
        }
        Some((next, GAP_MAX_OPS - held))
    }

    /// How a driver whose calls block may sleep: until when (`None`: until a job comes),
    /// and how many ops may arrive meanwhile before it must wake ([`WakeGate`]). While the
    /// gap between syncs applies, it sleeps until the gap ends, and writes short of
    /// ending it early would only be held by the next [`GroupCommit::run`], so they need
    /// not wake it. Otherwise (no gap, or a store that is failing or syncing) it sleeps
    /// until [`GroupCommit::wake_at`] and any job wakes it (room 0). A read, and a write
    /// that ends the gap, always do ([`StoreJob::wakes`]).
    pub fn sleep_plan(&self) -> (Option<u64>, usize) {
        let wake_at = self.wake_at();
        if self.syncing.is_some() || self.fault.is_some() {
            return (wake_at, 0);
        }
        match self.gap() {
            Some((end, room)) => {
                // Healthy and not syncing, the only deadline is the gap's own end.
                debug_assert!(wake_at.is_none_or(|at| at == end), "{wake_at:?} vs {end}");
                (Some(end), room)
            }
            None => (wake_at, 0),
        }
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
            StoreJob::Write(batch, ops, _) => Some((*batch, *batch, ops.as_slice())),
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
                StoreJob::Write(batch, ops, urgent) => {
                    let write = self.merge_writes(batch, ops, urgent);
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
    fn merge_writes(&mut self, first: u64, mut ops: Vec<StoreOp>, mut urgent: bool) -> Write {
        let mut last = first;
        while let Some(StoreJob::Write(_, next, _)) = self.waiting.front() {
            if ops.len() + next.len() > MAX_MERGED_OPS {
                break;
            }
            let Some(StoreJob::Write(batch, next, next_urgent)) = self.waiting.pop_front() else {
                unreachable!("the front is a write");
            };
            debug_assert!(batch > last, "batches arrive in order");
            last = batch;
            urgent |= next_urgent;
            ops.extend(next);
        }
        let merged = ops.len();
        self.cancelled += cancel_pairs(&mut ops);
        Write {
            first,
            last,
            ops,
            merged,
            urgent,
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
    /// Whether this is a read.
    pub fn is_load(&self) -> bool {
        matches!(self, StoreJob::Load { .. })
    }

    /// Whether this is a write that ends the gap between syncs.
    pub fn is_urgent(&self) -> bool {
        matches!(self, StoreJob::Write(_, _, true))
    }

    /// Whether a driver sleeping through the gap between syncs must wake for this job: a
    /// read, or a write that ends the gap.
    pub fn wakes(&self) -> bool {
        self.is_load() || self.is_urgent()
    }

    /// The ops a write holds (0 for a read), as the gap between syncs counts them.
    pub fn ops(&self) -> usize {
        match self {
            StoreJob::Write(_, ops, _) => ops.len(),
            StoreJob::Load { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests;
