//! The storage worker: writes the core's batches, syncs them (batches that arrive during
//! a sync share the next one: group commit), serves reads of paged messages, and carries
//! the store through failures.
//!
//! When the store fails a write, a sync or a read, the worker reports the fault to the
//! core once ([`StoreDone::Failed`]) and from then on keeps every job in order: the
//! batches written since the last good sync (whose fate is in doubt), the one that failed,
//! and whatever arrives after. Every [`RETRY_INTERVAL`] it reopens the store, learns how
//! many of the doubtful batches reached the disk, reports those as synced, and writes the
//! rest again, in order, until the store takes them. Once nothing is left over and the
//! store says it is ready (it could set its space reserve aside again),
//! [`StoreDone::Recovered`] tells the core to take publishes again. What to refuse
//! meanwhile is the broker core's decision ([`crate::broker::Broker::handle_store_failed`]).

use std::collections::VecDeque;

use tokio::sync::mpsc;

use crate::broker::StoreFault;
use crate::store::{LoadedEntry, Store, StoreError, StoreErrorKind, StoreOp};

/// How often a failed store is retried.
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Work for the store worker, in the order the core emitted it.
#[derive(Debug)]
pub enum StoreJob {
    /// Write a batch (synced with the batches written around it).
    Write(u64, Vec<StoreOp>),
    /// Read a queue's paged entries.
    Load {
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
        epoch: u64,
    },
}

/// What the store worker reports back.
#[derive(Debug)]
pub enum StoreDone {
    /// Every batch up to this one is synced.
    Synced(u64),
    /// A read finished.
    Loaded {
        queue: u64,
        epoch: u64,
        entries: Vec<LoadedEntry>,
    },
    /// The store failed; the jobs from the first one not done on are kept and retried.
    Failed(StoreFault),
    /// The store works again, with room to spare.
    Recovered,
}

/// The worker's state, shared by the thread (tokio) and the task (madsim) that run it.
pub struct Worker {
    store: Box<dyn Store + Send>,
    done: mpsc::UnboundedSender<StoreDone>,
    /// Jobs not done yet, in order.
    waiting: VecDeque<StoreJob>,
    /// Batches written since the last good sync, in order: kept until they are synced,
    /// since a failure leaves their fate in doubt.
    unsynced: Vec<(u64, Vec<StoreOp>)>,
    /// The fault reported to the core, until the store recovers.
    fault: Option<StoreFault>,
    /// The store failed and must be reopened before it takes more work.
    broken: bool,
    /// When the next reopen may be tried: reopening replays the journal, so it is tried
    /// once per `retry_interval`, not for every job that arrives meanwhile.
    retry_at: Option<tokio::time::Instant>,
    retry_interval: std::time::Duration,
    /// The core is gone: nothing more to report.
    orphaned: bool,
}

impl Worker {
    /// A worker for `store`, reporting to `done`.
    pub fn new(store: Box<dyn Store + Send>, done: mpsc::UnboundedSender<StoreDone>) -> Self {
        Worker {
            store,
            done,
            waiting: VecDeque::new(),
            unsynced: Vec::new(),
            fault: None,
            broken: false,
            retry_at: None,
            retry_interval: RETRY_INTERVAL,
            orphaned: false,
        }
    }

    /// Whether the store is failing (the worker then wakes up every [`RETRY_INTERVAL`]).
    pub fn faulted(&self) -> bool {
        self.fault.is_some()
    }

    /// Whether the core went away.
    pub fn orphaned(&self) -> bool {
        self.orphaned
    }

    /// Queues a job behind the others.
    pub fn push(&mut self, job: StoreJob) {
        self.waiting.push_back(job);
    }

    /// Does the waiting jobs in order, until they are done or the store fails (reopening it
    /// first if an earlier failure broke it). Returns whether written batches wait for a
    /// sync.
    pub fn run(&mut self) -> bool {
        if self.broken {
            let now = tokio::time::Instant::now();
            if self.retry_at.is_some_and(|at| now < at) {
                return false;
            }
            self.retry_at = Some(now + self.retry_interval);
            if !self.reopen() {
                return false;
            }
        }
        while let Some(job) = self.waiting.pop_front() {
            match job {
                StoreJob::Write(batch, ops) => {
                    let result = self.store.write(&ops);
                    // In doubt until synced, written or not: a failed write is written
                    // again after the reopen unless the store says it holds it.
                    self.unsynced.push((batch, ops));
                    if let Err(e) = result {
                        self.failed(&e);
                        return false;
                    }
                }
                StoreJob::Load {
                    queue,
                    from_seq,
                    max,
                    max_bytes,
                    epoch,
                } => match self.store.load(queue, from_seq, max, max_bytes) {
                    Ok(entries) => self.report(StoreDone::Loaded {
                        queue,
                        epoch,
                        entries,
                    }),
                    Err(e) => {
                        self.waiting.push_front(StoreJob::Load {
                            queue,
                            from_seq,
                            max,
                            max_bytes,
                            epoch,
                        });
                        self.failed(&e);
                        return false;
                    }
                },
            }
        }
        !self.unsynced.is_empty()
    }

    /// Syncs the batches written; reports them synced.
    pub fn sync(&mut self) {
        if self.broken || self.unsynced.is_empty() {
            return;
        }
        match self.store.sync() {
            Ok(()) => {
                let last = self.unsynced.last().map(|(b, _)| *b);
                self.unsynced.clear();
                if let Some(batch) = last {
                    self.report(StoreDone::Synced(batch));
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    /// While faulted, once every job is done: asks the store whether it is ready for
    /// publishers again, and tells the core when it is.
    pub fn check_recovered(&mut self) {
        if self.fault.is_none()
            || self.broken
            || !self.waiting.is_empty()
            || !self.unsynced.is_empty()
        {
            return;
        }
        if self.store.ready() {
            tracing::warn!("the store works again: publishes are taken again");
            self.fault = None;
            self.report(StoreDone::Recovered);
        }
    }

    /// The final sync at shutdown; fails if the store is still failing.
    pub fn finish(&mut self) -> Result<(), StoreError> {
        if self.broken && !self.reopen() {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                "the store is still failing at shutdown",
            ));
        }
        // Jobs that waited behind a fault are written now if the store takes them.
        if self.run() {
            self.sync();
        }
        if self.broken || !self.waiting.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Io,
                format!(
                    "the store is still failing at shutdown; {} jobs were not written",
                    self.waiting.len() + self.unsynced.len()
                ),
            ));
        }
        self.store.sync()
    }

    fn failed(&mut self, e: &StoreError) {
        self.broken = true;
        let fault = match e.kind() {
            StoreErrorKind::NoSpace => StoreFault::NoSpace,
            StoreErrorKind::Io | StoreErrorKind::Other => StoreFault::Io,
        };
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
    fn reopen(&mut self) -> bool {
        let held = match self.store.reopen() {
            Ok(held) => held,
            Err(e) => {
                tracing::debug!(error = %e, "store still failing");
                return false;
            }
        };
        self.broken = false;
        let held = held.min(self.unsynced.len());
        let rest = self.unsynced.split_off(held);
        if let Some((batch, _)) = self.unsynced.last() {
            self.report(StoreDone::Synced(*batch));
        }
        self.unsynced.clear();
        for (batch, ops) in rest.into_iter().rev() {
            self.waiting.push_front(StoreJob::Write(batch, ops));
        }
        true
    }

    fn report(&mut self, done: StoreDone) {
        if self.done.send(done).is_err() {
            self.orphaned = true;
        }
    }
}

/// Starts the thread that runs the worker. Jobs that queue up while a sync runs are
/// written together and share the next sync (group commit).
#[cfg(not(madsim))]
pub fn spawn(
    store: Box<dyn Store + Send>,
) -> (
    std::sync::mpsc::Sender<StoreJob>,
    mpsc::UnboundedReceiver<StoreDone>,
    std::thread::JoinHandle<Result<(), StoreError>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel::<StoreJob>();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<StoreDone>();
    let mut worker = Worker::new(store, done_tx);
    let thread = std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || {
            loop {
                let job = if worker.faulted() {
                    match rx.recv_timeout(RETRY_INTERVAL) {
                        Ok(job) => Some(job),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match rx.recv() {
                        Ok(job) => Some(job),
                        Err(_) => break,
                    }
                };
                worker.push_all(job, || rx.try_recv().ok());
                if worker.run() {
                    worker.sync();
                }
                worker.check_recovered();
                if worker.orphaned() {
                    break;
                }
            }
            worker.finish()
        })
        .expect("spawning the store thread");
    (tx, done_rx, thread)
}

/// How long a sync takes under simulation.
#[cfg(madsim)]
const SIMULATED_SYNC: std::time::Duration = std::time::Duration::from_millis(2);

/// The worker under madsim, which cannot run OS threads: a task of the node doing the same
/// group commit, with a virtual delay standing for the sync. Killing the node kills it
/// between a write and its sync, as a crash would.
#[cfg(madsim)]
pub fn spawn(
    store: Box<dyn Store + Send>,
) -> (
    mpsc::UnboundedSender<StoreJob>,
    mpsc::UnboundedReceiver<StoreDone>,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreJob>();
    let (done_tx, done_rx) = mpsc::unbounded_channel::<StoreDone>();
    let mut worker = Worker::new(store, done_tx);
    let task = tokio::spawn(async move {
        loop {
            let job = if worker.faulted() {
                tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => Some(job),
                        None => break,
                    },
                    _ = tokio::time::sleep(RETRY_INTERVAL) => None,
                }
            } else {
                match rx.recv().await {
                    Some(job) => Some(job),
                    None => break,
                }
            };
            worker.push_all(job, || rx.try_recv().ok());
            if worker.run() {
                tokio::time::sleep(SIMULATED_SYNC).await;
                worker.sync();
            }
            worker.check_recovered();
            if worker.orphaned() {
                break;
            }
        }
        worker.finish()
    });
    (tx, done_rx, task)
}

impl Worker {
    /// Queues `first` and every job already waiting in the channel.
    fn push_all(&mut self, first: Option<StoreJob>, mut next: impl FnMut() -> Option<StoreJob>) {
        if let Some(job) = first {
            self.push(job);
        }
        while let Some(job) = next() {
            self.push(job);
        }
    }
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

    fn vhost_of(ops: &[StoreOp]) -> u64 {
        match ops.first() {
            Some(StoreOp::PutVhost(name)) => name.parse().unwrap(),
            _ => panic!("test batches name a vhost"),
        }
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
                s.written.push(vhost_of(&ops));
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
                s.written.push(vhost_of(&ops));
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

    fn drain(rx: &mut mpsc::UnboundedReceiver<StoreDone>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(d) = rx.try_recv() {
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
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = Worker::new(Box::new(shared.clone()), tx);
        w.retry_interval = std::time::Duration::ZERO;
        w.push(batch(1));
        assert!(w.run());
        w.sync();
        assert_eq!(drain(&mut rx), ["synced 1"]);

        // Batch 2 is written, then batch 3 fails: 2 is in doubt, 3 and 4 wait.
        w.push(batch(2));
        assert!(w.run());
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
        w.push(batch(3));
        w.push(batch(4));
        assert!(!w.run());
        assert!(w.faulted());
        assert_eq!(drain(&mut rx), ["failed NoSpace"]);
        // A failed reopen changes nothing.
        shared.0.lock().unwrap().fail_reopen = true;
        w.push(StoreJob::Load {
            queue: 9,
            from_seq: 0,
            max: 1,
            max_bytes: u64::MAX,
            epoch: 1,
        });
        assert!(!w.run());
        assert!(drain(&mut rx).is_empty());

        // The disk comes back: 2 was held, 3 and 4 are written again, then the load.
        {
            let mut s = shared.0.lock().unwrap();
            s.fail_reopen = false;
            s.fail_writes = None;
        }
        assert!(w.run());
        w.sync();
        assert_eq!(
            drain(&mut rx),
            ["synced 2", "loaded 9", "synced 4"],
            "the batch held by the reopen is synced at once"
        );
        assert_eq!(shared.0.lock().unwrap().written, [1, 2, 3, 4]);
        // Not ready yet (the reserve could not be set aside): still faulted.
        w.check_recovered();
        assert!(w.faulted() && drain(&mut rx).is_empty());
        shared.0.lock().unwrap().ready = true;
        w.check_recovered();
        assert!(!w.faulted());
        assert_eq!(drain(&mut rx), ["recovered"]);
    }

    #[test]
    fn a_failure_while_faulted_is_reported_again_only_if_its_kind_changes() {
        let shared = Shared::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut w = Worker::new(Box::new(shared.clone()), tx);
        w.retry_interval = std::time::Duration::ZERO;
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
        w.push(batch(1));
        assert!(!w.run());
        assert!(!w.run());
        assert_eq!(drain(&mut rx), ["failed Io"]);
        shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
        assert!(!w.run());
        assert_eq!(drain(&mut rx), ["failed NoSpace"]);
        assert!(w.finish().is_err(), "still failing at shutdown");
        shared.0.lock().unwrap().fail_writes = None;
        w.finish().unwrap();
        assert_eq!(shared.0.lock().unwrap().written, [1]);
        assert_eq!(drain(&mut rx), ["synced 1"]);
    }
}
