//! The store thread (a task under madsim): runs the core's store jobs through the
//! group-commit state machine ([`GroupCommit`]) and reports back. Jobs that queue up while
//! a sync runs are written together and share the next sync.

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
pub type JobSender = std::sync::mpsc::Sender<StoreJob>;
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
    std::sync::mpsc::Sender<StoreJob>,
    mpsc::Receiver<StoreDone>,
    std::thread::JoinHandle<Result<(), StoreError>>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let (tx, rx) = std::sync::mpsc::channel::<StoreJob>();
    let (done_tx, done_rx) = mpsc::channel::<StoreDone>(REPORTS_IN_FLIGHT);
    let retry_ms = RETRY_INTERVAL.as_millis() as u64;
    let thread = std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || {
            let start = tokio::time::Instant::now();
            let mut commit = GroupCommit::new(retry_ms).with_sync_gap(store.sync_gap_ms());
            loop {
                let first = match commit.wake_at() {
                    Some(at) => {
                        let wait = at.saturating_sub(elapsed_ms(start));
                        match rx.recv_timeout(std::time::Duration::from_millis(wait)) {
                            Ok(job) => Some(job),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    None => match rx.recv() {
                        Ok(job) => Some(job),
                        Err(_) => break,
                    },
                };
                commit.push_all(first, || rx.try_recv().ok());
                commit.step(&mut *store, elapsed_ms(start));
                if !report(&mut commit, &done_tx) {
                    break;
                }
            }
            let result = commit.finish(&mut *store, elapsed_ms(start));
            let _ = report(&mut commit, &done_tx);
            result
        })
        .expect("spawning the store thread");
    (tx, done_rx, thread)
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
