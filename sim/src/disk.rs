//! The virtual disk: a [`Store`] whose writes are buffered until a sync completes, and
//! whose crash loses every unsynced batch, possibly keeping a prefix of them (the OS had
//! flushed some pages) with the next one torn and discarded whole. That is fjall's
//! contract: after a crash, recovery yields a prefix of whole batches.
//!
//! The disk is shared (`Arc<Mutex<_>>`) so that a broker can be dropped and rebuilt from
//! it, and so that the madsim test can hand a clone to `warren::server::serve`.
//!
//! Writes can be made to fail ([`VirtualDisk::set_write_fault`]), as a full or failing
//! disk fails them: a failed write keeps nothing of its batch, and the batches written
//! before it stay as they were.

use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use warren::store::memory::MemoryState;
use warren::store::{
    HeadLimit, LoadedEntry, MAX_STORED_NAME_BYTES, Recovered, Store, StoreError, StoreErrorKind,
    StoreOp,
};

/// What the disk holds.
#[derive(Debug, Default)]
pub struct DiskState {
    /// Batches that survive any crash, applied.
    durable: MemoryState,
    /// Every batch written, synced or not, applied: what reads see.
    visible: MemoryState,
    /// Batches ever made durable (synced, or kept by a crash).
    durable_batches: u64,
    /// Written and not yet synced, in write order.
    unsynced: Vec<Vec<StoreOp>>,
    /// Unsynced batches a sync in progress covers (the first `syncing` of `unsynced`).
    syncing: usize,
    /// Writes fail with this error while it is set.
    write_fault: Option<StoreErrorKind>,
}

/// A handle on the shared virtual disk.
#[derive(Debug, Clone, Default)]
pub struct VirtualDisk {
    state: Arc<Mutex<DiskState>>,
}

/// What a crash did to the unsynced batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashOutcome {
    /// Unsynced batches that survived whole (a prefix of them).
    pub kept: usize,
    /// Unsynced batches lost (the first of them possibly torn).
    pub lost: usize,
}

impl VirtualDisk {
    /// An empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock is a simulator bug; the state is still usable
        // for reporting it.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Appends a batch (not yet durable) to a disk with no write fault injected.
    pub fn write_batch(&self, ops: &[StoreOp]) {
        if let Err(kind) = self.try_write_batch(ops) {
            panic!("write_batch on a disk that fails writes ({kind:?}); use try_write_batch");
        }
    }

    /// Appends a batch (not yet durable), unless writes fail: then nothing of it is kept.
    pub fn try_write_batch(&self, ops: &[StoreOp]) -> Result<(), StoreErrorKind> {
        // Names are part of the real store's keys, which its disk limits to 64 KiB: the
        // broker must refuse a longer name before it is stored.
        for op in ops {
            let longest = op.longest_name();
            assert!(
                longest <= MAX_STORED_NAME_BYTES,
                "the broker stored a name of {longest} bytes (at most {MAX_STORED_NAME_BYTES}) in {}",
                format!("{op:?}").chars().take(160).collect::<String>()
            );
        }
        let mut s = self.lock();
        if let Some(kind) = s.write_fault {
            return Err(kind);
        }
        for op in ops {
            s.visible.apply(op);
        }
        s.unsynced.push(ops.to_vec());
        Ok(())
    }

    /// Makes writes fail with `fault` from now on, or work again (`None`).
    pub fn set_write_fault(&self, fault: Option<StoreErrorKind>) {
        self.lock().write_fault = fault;
    }

    /// A read of a queue's entries, seeing every batch written.
    pub fn load(&self, queue: u64, from_seq: u64, max: usize, max_bytes: u64) -> Vec<LoadedEntry> {
        self.lock().visible.load(queue, from_seq, max, max_bytes)
    }

    /// Starts a sync covering every batch written so far; returns how many unsynced
    /// batches it covers. Batches written while it runs wait for the next one.
    pub fn begin_sync(&self) -> usize {
        let mut s = self.lock();
        s.syncing = s.unsynced.len();
        s.syncing
    }

    /// Completes the sync in progress: its batches become durable.
    pub fn complete_sync(&self) {
        let mut s = self.lock();
        let n = s.syncing.min(s.unsynced.len());
        let done: Vec<Vec<StoreOp>> = s.unsynced.drain(..n).collect();
        for batch in &done {
            for op in batch {
                s.durable.apply(op);
            }
        }
        s.durable_batches += done.len() as u64;
        s.syncing = 0;
    }

    /// The machine lost power: unsynced batches are lost, except a prefix of `keep`
    /// whole batches that had reached the platter.
    pub fn crash(&self, keep: usize) -> CrashOutcome {
        let mut s = self.lock();
        let keep = keep.min(s.unsynced.len());
        let all: Vec<Vec<StoreOp>> = std::mem::take(&mut s.unsynced);
        let lost = all.len() - keep;
        for batch in all.iter().take(keep) {
            for op in batch {
                s.durable.apply(op);
            }
        }
        s.durable_batches += keep as u64;
        s.syncing = 0;
        // What survived is all a restarted broker can read; paged messages die with it.
        s.durable.discard_paged();
        s.visible = s.durable.clone();
        CrashOutcome { kept: keep, lost }
    }

    /// Unsynced batches right now.
    pub fn unsynced_batches(&self) -> usize {
        self.lock().unsynced.len()
    }

    /// Writes made durable so far: batches, for a caller that writes each batch on its own
    /// (the group commit may write several batches as one).
    pub fn durable_batches(&self) -> u64 {
        self.lock().durable_batches
    }

    /// Everything on the disk, every entry included (for the checker).
    pub fn recovered(&self) -> Recovered {
        self.lock().durable.recovered(HeadLimit::ALL)
    }

    /// What a broker starting now reads back: at most `head_limit` entries per queue.
    pub fn recovered_head(&self, head_limit: HeadLimit) -> Recovered {
        self.lock().durable.recovered(head_limit)
    }
}

impl Store for VirtualDisk {
    fn recover(&mut self, head_limit: HeadLimit) -> Result<Recovered, StoreError> {
        let mut s = self.lock();
        s.durable.discard_paged();
        s.visible.discard_paged();
        Ok(s.durable.recovered(head_limit))
    }

    fn load(
        &mut self,
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        Ok(VirtualDisk::load(self, queue, from_seq, max, max_bytes))
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.try_write_batch(ops)
            .map_err(|kind| StoreError::new(kind, "simulated write failure"))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.begin_sync();
        self.complete_sync();
        Ok(())
    }

    fn reopen(&mut self) -> Result<usize, StoreError> {
        // A failed write kept nothing and lost nothing: every batch written since the last
        // sync is held, and the reopen makes it durable (as a journal replay does).
        let mut s = self.lock();
        if let Some(kind) = s.write_fault {
            return Err(StoreError::new(kind, "simulated disk still failing"));
        }
        assert_eq!(s.syncing, 0, "no reopen while a sync runs");
        let held = s.unsynced.len();
        s.syncing = held;
        drop(s);
        self.complete_sync();
        Ok(held)
    }
}

/// A seed's schedule of disk failures: windows during which every write fails, with no
/// space left or with an I/O error. A quarter of the seeds have them.
#[derive(Debug, Clone)]
pub struct DiskFaults {
    rng: SmallRng,
    /// Mean virtual time between windows; `None`: this seed's disk never fails.
    mean_gap_ms: Option<u64>,
    /// How long a window lasts.
    window_ms: (u64, u64),
    /// The next change: when, and what writes do from then on.
    next: Option<(u64, Option<StoreErrorKind>)>,
}

impl DiskFaults {
    /// The schedule drawn from `seed` (a stream of its own, so that the other draws of a
    /// seed stay as they were).
    pub fn generate(seed: u64) -> DiskFaults {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mean_gap_ms = [None, None, None, Some(800), Some(3_000)][rng.gen_range(0..5)];
        let window_ms = [(1, 50), (20, 400), (200, 2_000)][rng.gen_range(0..3)];
        let mut faults = DiskFaults {
            rng,
            mean_gap_ms,
            window_ms,
            next: None,
        };
        faults.schedule_start(0);
        faults
    }

    /// When the next change is due.
    pub fn next_change_ms(&self) -> Option<u64> {
        self.next.map(|(at, _)| at)
    }

    /// Makes the due change and schedules the one after; returns what writes do now.
    pub fn change(&mut self, now_ms: u64) -> Option<StoreErrorKind> {
        let (_, fault) = self.next.take()?;
        match fault {
            Some(_) => {
                let (lo, hi) = self.window_ms;
                self.next = Some((now_ms + self.rng.gen_range(lo..=hi), None));
            }
            None => self.schedule_start(now_ms),
        }
        fault
    }

    /// No more failures (the liveness phase).
    pub fn stop(&mut self) {
        self.mean_gap_ms = None;
        self.next = None;
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self.mean_gap_ms {
            None => "disk_faults=off".into(),
            Some(gap) => format!("disk_faults=every~{gap}ms for {:?}ms", self.window_ms),
        }
    }

    fn schedule_start(&mut self, now_ms: u64) {
        self.next = self.mean_gap_ms.map(|mean| {
            // Exponential inter-arrival times.
            let u: f64 = self.rng.gen_range(0.0001..1.0);
            let at = now_ms + (-(u.ln()) * mean as f64) as u64 + 1;
            let kind = if self.rng.gen_bool(0.5) {
                StoreErrorKind::NoSpace
            } else {
                StoreErrorKind::Io
            };
            (at, Some(kind))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(name: &str) -> Vec<StoreOp> {
        vec![StoreOp::PutVhost(name.into())]
    }

    #[test]
    fn crash_keeps_synced_and_a_prefix_of_unsynced() {
        let disk = VirtualDisk::new();
        disk.write_batch(&vhost("a"));
        disk.begin_sync();
        disk.write_batch(&vhost("b"));
        disk.complete_sync();
        disk.write_batch(&vhost("c"));
        assert_eq!(disk.recovered().vhosts, ["a"]);
        let out = disk.crash(1);
        assert_eq!(out, CrashOutcome { kept: 1, lost: 1 });
        assert_eq!(disk.recovered().vhosts, ["a", "b"]);
    }

    #[test]
    fn a_failed_write_keeps_nothing_and_loses_nothing() {
        let disk = VirtualDisk::new();
        disk.write_batch(&vhost("a"));
        disk.set_write_fault(Some(StoreErrorKind::NoSpace));
        assert_eq!(
            disk.try_write_batch(&vhost("b")),
            Err(StoreErrorKind::NoSpace)
        );
        let mut store = disk.clone();
        assert!(store.reopen().is_err(), "still failing");
        disk.set_write_fault(None);
        assert_eq!(store.reopen().unwrap(), 1, "a is held");
        disk.write_batch(&vhost("b"));
        disk.begin_sync();
        disk.complete_sync();
        assert_eq!(disk.recovered().vhosts, ["a", "b"]);
    }
}
