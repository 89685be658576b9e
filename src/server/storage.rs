//! The store thread (a task under madsim): runs the core's store jobs through the
//! group-commit state machine ([`GroupCommit`]) and reports back. Jobs that queue up while
//! a sync runs are written together and share the next sync.
//!
//! From a sync to the end of the gap after it, the thread sleeps and the core leaves
//! further writes in the channel without waking it, up to the ops that
//! would end the gap early ([`GroupCommit::sleep_plan`]); a read or a write that ends the
//! gap ([`StoreJob::wakes`]) always wakes it. With
//! clients that publish one message at a time the core sends a batch every few messages,
//! and waking the thread for each only to hold it cost two context switches. The
//! simulator plays this loop in virtual time in half its seeds (`sim/src/store_driver.rs`),
//! with crashes and disk faults, and checks what a sleeping driver leaves unread.

use tokio::sync::mpsc;

#[cfg(not(madsim))]
use crate::store::commit::WakeGate;
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
    gate: std::sync::Arc<WakeGate>,
    thread: std::thread::Thread,
}

#[cfg(not(madsim))]
impl JobSender {
    /// Sends `job`, waking the store thread unless it would only hold the job until it
    /// wakes anyway. Fails once the thread is gone.
    pub fn send(&self, job: StoreJob) -> Result<(), std::sync::mpsc::SendError<StoreJob>> {
        let ops = job.ops();
        let wake = job.wakes();
        match &self.tx {
            Some(tx) => tx.send(job)?,
            None => return Err(std::sync::mpsc::SendError(job)),
        }
        if self.gate.sent(ops, wake) {
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
    let gate = std::sync::Arc::new(WakeGate::default());
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
            // The core is gone: whatever it sent is still written (the loop may have
            // ended on a report nobody took, with jobs left in the channel).
            take_jobs(&mut commit, &rx, &thread_gate);
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
    gate: &WakeGate,
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

/// Sleeps until the state machine's deadline, or until the core wakes the thread
/// ([`WakeGate`]): at once for a read, for a write that ends the gap, or when no gap holds
/// jobs back, otherwise once enough ops wait to end the gap early. Returns at once (to look again) when a job came in since
/// the thread took them; a spurious wake-up costs one more turn of the loop.
#[cfg(not(madsim))]
fn sleep(commit: &GroupCommit, gate: &WakeGate, now_ms: u64) {
    let (until, room_ops) = commit.sleep_plan();
    if !gate.may_sleep(room_ops) {
        return;
    }
    match until {
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
        commit.push_all(None, || rx.try_recv().ok());
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

    /// The memory store with a gap between syncs, as the disk store has by default,
    /// counting the ops it has synced.
    #[derive(Default)]
    struct Gapped(
        MemoryStore,
        std::sync::Arc<std::sync::Mutex<(usize, usize)>>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    );

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
            self.2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.1.lock().expect("counts").0 += ops.len();
            self.0.write(ops)
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            let mut counts = self.1.lock().expect("counts");
            counts.1 = counts.0;
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
        StoreJob::Write(batch, ops, false)
    }

    /// Waits for the report that batch `last` is synced within `limit`, counting the
    /// reads answered on the way.
    fn synced_within(
        rx: &mut mpsc::Receiver<StoreDone>,
        last: u64,
        limit: Duration,
        loaded: &mut usize,
    ) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            match rx.try_recv() {
                Ok(StoreDone::Synced(b)) if b >= last => return true,
                Ok(StoreDone::Loaded { .. }) => *loaded += 1,
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        false
    }

    /// Batches sent at every pace (bursts, gaps shorter and longer than the gap between
    /// syncs, reads among them) are all synced and read: a thread asleep with no
    /// deadline, having missed a job, would never sync it (the bound, 5 s, only tells a
    /// missed wake from a slow machine). Then dropping the sender ends the thread, parked
    /// or not.
    #[test]
    fn the_store_thread_syncs_every_batch_however_they_arrive_and_ends_with_its_sender() {
        let (tx, mut done, thread) = spawn(Box::new(Gapped::default()));
        let mut batch = 0;
        let (mut reads, mut loaded) = (0, 0);
        // Pauses in µs between sends, cycling: bursts, sub-gap trickles and idle spells.
        let pauses = [0, 0, 0, 50, 300, 0, 900, 2_500, 0, 0, 150, 6_000];
        for round in 0..40u64 {
            for (i, pause) in pauses.iter().enumerate() {
                batch += 1;
                let ops = if (round + i as u64).is_multiple_of(7) {
                    60
                } else {
                    3
                };
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
                    reads += 1;
                }
                std::thread::sleep(Duration::from_micros(*pause));
            }
            // Each round's last batch is synced within a generous bound (the gap is 2 ms):
            // a missed wake would leave it for ever, the thread parked with no deadline.
            assert!(
                synced_within(&mut done, batch, Duration::from_secs(5), &mut loaded),
                "batch {batch} was not synced"
            );
        }
        assert_eq!(
            loaded, reads,
            "every read is answered before the batches behind it sync"
        );
        drop(tx);
        let until = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() {
            assert!(Instant::now() < until, "the store thread did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        thread.join().expect("no panic").expect("no store error");
    }

    /// Writes the core sent just before it went away are all written and synced before
    /// the thread ends, whether or not anyone takes its reports: the thread is held in its
    /// first write (of the first batch alone) until every other job is sent and the sender
    /// dropped, so that they wait in the channel when its report fails (no reader) or
    /// succeeds (a reader).
    #[test]
    fn every_write_sent_before_the_sender_goes_is_synced_when_the_thread_ends() {
        for take_reports in [true, false] {
            let store = Gapped::default();
            let counts = std::sync::Arc::clone(&store.1);
            let writes = std::sync::Arc::clone(&store.2);
            let held = counts.lock().expect("counts");
            let (tx, done, thread) = spawn(Box::new(store));
            let reader = if take_reports {
                Some(std::thread::spawn(move || {
                    let mut done = done;
                    while done.blocking_recv().is_some() {}
                }))
            } else {
                drop(done);
                None
            };
            let mut sent = 0;
            for batch in 1..=60 {
                tx.send(write(batch, 3)).expect("the thread runs");
                sent += 3;
                while batch == 1 && writes.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    std::thread::yield_now();
                }
            }
            drop(tx);
            drop(held);
            thread.join().expect("no panic").expect("no store error");
            if let Some(reader) = reader {
                reader.join().expect("the reader ends with the thread");
            }
            assert_eq!(
                *counts.lock().expect("counts"),
                (sent, sent),
                "written and synced"
            );
        }
    }
}
