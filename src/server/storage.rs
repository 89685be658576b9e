//! The store thread (a task under madsim): runs the core's store jobs through the
//! group-commit state machine ([`GroupCommit`]) and reports back. Jobs that queue up while
//! a sync runs are written together and share the next sync.
//!
//! While the gap between syncs holds writes back, the thread sleeps until the gap ends and
//! the core leaves further writes in the channel without waking it, up to the ops that
//! would end the gap early ([`GroupCommit::gap_room_ops`]); a read always wakes it. With
//! clients that publish one message at a time the core sends a batch every few messages,
//! and waking the thread for each only to hold it cost two context switches.

use tokio::sync::mpsc;

use crate::store::commit::{GroupCommit, StoreDone, StoreJob};
use crate::store::{Store, StoreError};

/// How often a failed store is retried.
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Most store reports in flight to the core. The core takes them in every round; a full
/// channel makes the store thread wait, which holds back the writes behind them.
const REPORTS_IN_FLIGHT: usize = 1024;

/// The core's end of the job channel. Its bytes are bounded by the broker's credit: it
/// takes no input while the batches not yet synced weigh more than
/// `BrokerConfig::max_unsynced_store_bytes`.
#[cfg(not(madsim))]
pub struct JobSender {
    /// Taken only when the sender is dropped.
    tx: Option<std::sync::mpsc::Sender<StoreJob>>,
    gate: std::sync::Arc<Gate>,
    thread: std::thread::Thread,
}

/// What the store thread and the core share about the thread's sleep.
#[cfg(not(madsim))]
#[derive(Debug, Default)]
struct Gate {
    /// Ops the core may send before it must wake the thread (0: any job wakes it).
    room_ops: std::sync::atomic::AtomicUsize,
    /// Ops sent since the thread last took the channel's jobs.
    pending_ops: std::sync::atomic::AtomicUsize,
    /// Jobs sent since then (`std`'s channel cannot be peeked at).
    pending_jobs: std::sync::atomic::AtomicUsize,
}

/// The handshake, as a Dekker pair: the core counts a job in after putting it in the
/// channel and then reads the room; the thread publishes its room and then reads the count.
/// With a full fence between each side's write and read, one of the two reads sees the
/// other side's write: the core wakes the thread, or the thread sees the job and does not
/// sleep.
#[cfg(not(madsim))]
impl Gate {
    /// The core sent a job of `ops` ops (a read if `load`): whether it must wake the thread.
    fn sent(&self, ops: usize, load: bool) -> bool {
        use std::sync::atomic::{Ordering, fence};
        self.pending_jobs.fetch_add(1, Ordering::SeqCst);
        let pending = self.pending_ops.fetch_add(ops, Ordering::SeqCst) + ops;
        fence(Ordering::SeqCst);
        load || pending >= self.room_ops.load(Ordering::SeqCst)
    }

    /// The thread is about to take every job in the channel.
    fn taking(&self) {
        use std::sync::atomic::Ordering;
        self.pending_jobs.store(0, Ordering::SeqCst);
        self.pending_ops.store(0, Ordering::SeqCst);
    }

    /// The thread would sleep with `room_ops` of room: whether it may, no job having come
    /// in since it took them (one that did may not have woken it).
    fn may_sleep(&self, room_ops: usize) -> bool {
        use std::sync::atomic::{Ordering, fence};
        self.room_ops.store(room_ops, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.pending_jobs.load(Ordering::SeqCst) == 0
    }
}

#[cfg(not(madsim))]
impl JobSender {
    /// Sends `job`, waking the store thread unless it would only hold the job until it
    /// wakes anyway. Fails once the thread is gone.
    pub fn send(&self, job: StoreJob) -> Result<(), std::sync::mpsc::SendError<StoreJob>> {
        let (ops, load) = match &job {
            StoreJob::Write(_, ops) => (ops.len(), false),
            StoreJob::Load { .. } => (0, true),
        };
        match &self.tx {
            Some(tx) => tx.send(job)?,
            None => return Err(std::sync::mpsc::SendError(job)),
        }
        if self.gate.sent(ops, load) {
            self.thread.unpark();
        }
        Ok(())
    }
}

#[cfg(not(madsim))]
impl Drop for JobSender {
    /// Closes the channel, then wakes the thread to find it closed (a parked thread would
    /// not notice on its own).
    fn drop(&mut self) {
        drop(self.tx.take());
        self.thread.unpark();
    }
}

/// The core's end of the job channel (simulation).
#[cfg(madsim)]
pub type JobSender = mpsc::UnboundedSender<StoreJob>;

/// Milliseconds since `start` (virtual under madsim).
fn elapsed_ms(start: tokio::time::Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Hands the state machine's reports to the core; false once the core is gone.
#[cfg(not(madsim))]
fn report(commit: &mut GroupCommit, done: &mpsc::Sender<StoreDone>) -> bool {
    while let Some(d) = commit.poll_done() {
        if done.blocking_send(d).is_err() {
            return false;
        }
    }
    true
}

/// Starts the thread that runs the store.
#[cfg(not(madsim))]
pub fn spawn(
    mut store: Box<dyn Store + Send>,
) -> (
    JobSender,
    mpsc::Receiver<StoreDone>,
    std::thread::JoinHandle<Result<(), StoreError>>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<StoreJob>();
    let (done_tx, done_rx) = mpsc::channel::<StoreDone>(REPORTS_IN_FLIGHT);
    let gate = std::sync::Arc::new(Gate::default());
    let thread_gate = std::sync::Arc::clone(&gate);
    let retry_ms = RETRY_INTERVAL.as_millis() as u64;
    let thread = std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || {
            let start = tokio::time::Instant::now();
            let mut commit = GroupCommit::new(retry_ms).with_sync_gap(store.sync_gap_ms());
            while take_jobs(&mut commit, &rx, &thread_gate) {
                commit.step(&mut *store, elapsed_ms(start));
                if !report(&mut commit, &done_tx) {
                    break;
                }
                sleep(&commit, &thread_gate, elapsed_ms(start));
            }
            let result = commit.finish(&mut *store, elapsed_ms(start));
            let _ = report(&mut commit, &done_tx);
            result
        })
        .expect("spawning the store thread");
    let sender = JobSender {
        tx: Some(tx),
        gate,
        thread: thread.thread().clone(),
    };
    (sender, done_rx, thread)
}

/// Queues every job in the channel; false once the core is gone and the channel empty.
#[cfg(not(madsim))]
fn take_jobs(
    commit: &mut GroupCommit,
    rx: &std::sync::mpsc::Receiver<StoreJob>,
    gate: &Gate,
) -> bool {
    use std::sync::mpsc::TryRecvError;
    gate.taking();
    loop {
        match rx.try_recv() {
            Ok(job) => commit.push(job),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

/// Sleeps until the state machine's deadline, or until the core wakes the thread: at
/// once for a read or when no gap holds jobs back, otherwise once enough ops wait to end
/// the gap early. Returns early (to look again) when a job came in meanwhile; a spurious
/// wake-up only costs a look at the channel.
#[cfg(not(madsim))]
fn sleep(commit: &GroupCommit, gate: &Gate, now_ms: u64) {
    if !gate.may_sleep(commit.gap_room_ops()) {
        return;
    }
    match commit.wake_at() {
        Some(at) => {
            let wait = at.saturating_sub(now_ms);
            if wait > 0 {
                std::thread::park_timeout(std::time::Duration::from_millis(wait));
            }
        }
        None => std::thread::park(),
    }
}

/// How long a sync takes under simulation.
#[cfg(madsim)]
const SIMULATED_SYNC: std::time::Duration = std::time::Duration::from_millis(2);

/// The store under madsim, which cannot run OS threads: a task of the node running the
/// same state machine, with a virtual delay standing for the sync. Killing the node kills
/// it between a write and its sync, as a crash would.
#[cfg(madsim)]
pub fn spawn(
    mut store: Box<dyn Store + Send>,
) -> (
    mpsc::UnboundedSender<StoreJob>,
    mpsc::Receiver<StoreDone>,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<StoreJob>();
    let (done_tx, done_rx) = mpsc::channel::<StoreDone>(REPORTS_IN_FLIGHT);
    let retry_ms = RETRY_INTERVAL.as_millis() as u64;
    let task = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut commit = GroupCommit::new(retry_ms).with_sync_gap(store.sync_gap_ms());
        'jobs: loop {
            let first = match commit.wake_at() {
                Some(at) => {
                    let wait = at.saturating_sub(elapsed_ms(start));
                    tokio::select! {
                        job = rx.recv() => match job {
                            Some(job) => Some(job),
                            None => break,
                        },
                        _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => None,
                    }
                }
                None => match rx.recv().await {
                    Some(job) => Some(job),
                    None => break,
                },
            };
            commit.push_all(first, || rx.try_recv().ok());
            while commit.run(&mut *store, elapsed_ms(start)) {
                commit.begin_sync();
                tokio::time::sleep(SIMULATED_SYNC).await;
                commit.sync_done(store.sync());
            }
            while let Some(d) = commit.poll_done() {
                if done_tx.send(d).await.is_err() {
                    break 'jobs;
                }
            }
        }
        let result = commit.finish(&mut *store, elapsed_ms(start));
        while let Some(d) = commit.poll_done() {
            let _ = done_tx.try_send(d);
        }
        result
    });
    (tx, done_rx, task)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{HeadLimit, LoadedEntry, Recovered, StoreOp};

    /// The memory store with a gap between syncs, as the disk store has by default.
    #[derive(Default)]
    struct Gapped(MemoryStore);

    impl Store for Gapped {
        fn recover(&mut self, limit: HeadLimit) -> Result<Recovered, StoreError> {
            self.0.recover(limit)
        }
        fn load(
            &mut self,
            queue: u64,
            from_seq: u64,
            max: usize,
            max_bytes: u64,
        ) -> Result<Vec<LoadedEntry>, StoreError> {
            self.0.load(queue, from_seq, max, max_bytes)
        }
        fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
            self.0.write(ops)
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            self.0.sync()
        }
        fn reopen(&mut self) -> Result<usize, StoreError> {
            self.0.reopen()
        }
        fn sync_gap_ms(&self) -> u64 {
            2
        }
    }

    fn write(batch: u64, ops: usize) -> StoreJob {
        let ops = (0..ops)
            .map(|i| StoreOp::PutVhost(format!("v{batch}.{i}")))
            .collect();
        StoreJob::Write(batch, ops)
    }

    /// Waits for the report that batch `last` is synced, skipping others, within `limit`.
    fn synced_within(rx: &mut mpsc::Receiver<StoreDone>, last: u64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            match rx.try_recv() {
                Ok(StoreDone::Synced(b)) if b >= last => return true,
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        false
    }

    /// A job the core sends while the thread is between taking the channel's jobs and
    /// going to sleep, judged against the room of the thread's last sleep, keeps the
    /// thread awake; one sent once the thread sleeps wakes it unless the gap holds it.
    #[test]
    fn a_job_sent_as_the_store_thread_goes_to_sleep_is_never_slept_through() {
        let gate = Gate::default();
        assert!(gate.may_sleep(100), "nothing sent: the thread sleeps");
        // It wakes at its deadline and takes the jobs; the core sends one against the
        // room of that sleep and does not wake it.
        gate.taking();
        assert!(!gate.sent(3, false));
        // Whatever room it would sleep with now, it looks again first.
        assert!(!gate.may_sleep(0));
        gate.taking();
        assert!(gate.may_sleep(0), "no room: it sleeps until woken");
        assert!(gate.sent(3, false), "any job wakes it");
        gate.taking();
        assert!(gate.may_sleep(10));
        assert!(!gate.sent(9, false), "9 ops stay within the room of 10");
        assert!(gate.sent(1, false), "the tenth op ends the gap");
        assert!(gate.sent(0, true), "a read always wakes it");
    }

    /// Batches sent at every pace (bursts, gaps shorter and longer than the gap between
    /// syncs, reads among them) are all synced promptly: the thread sleeping through the
    /// gap never sleeps through a job that needs it. Then dropping the sender ends the
    /// thread, parked or not.
    #[test]
    fn the_store_thread_syncs_every_batch_however_they_arrive_and_ends_with_its_sender() {
        let (tx, mut done, thread) = spawn(Box::new(Gapped::default()));
        let mut batch = 0;
        // Pauses in µs between sends, cycling: bursts, sub-gap trickles and idle spells.
        let pauses = [0, 0, 0, 50, 300, 0, 900, 2_500, 0, 0, 150, 6_000];
        for round in 0..40u64 {
            for (i, pause) in pauses.iter().enumerate() {
                batch += 1;
                let ops = if (round + i as u64).is_multiple_of(7) { 60 } else { 3 };
                tx.send(write(batch, ops)).expect("the thread runs");
                if round.is_multiple_of(5) && i == 3 {
                    let read = StoreJob::Load {
                        queue: 1,
                        from_seq: 0,
                        max: 1,
                        max_bytes: 1,
                        epoch: batch,
                    };
                    tx.send(read).expect("the thread runs");
                }
                std::thread::sleep(Duration::from_micros(*pause));
            }
            // Each round's last batch is synced within a generous bound (the gap is 2 ms):
            // a missed wake would leave it for ever, the thread parked with no deadline.
            assert!(
                synced_within(&mut done, batch, Duration::from_secs(5)),
                "batch {batch} was not synced"
            );
        }
        drop(tx);
        let until = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() {
            assert!(Instant::now() < until, "the store thread did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        thread.join().expect("no panic").expect("no store error");
    }
}
