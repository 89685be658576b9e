//! The virtual disk: a [`Store`] whose writes are buffered until a sync completes, and
//! whose crash loses every unsynced batch, possibly keeping a prefix of them (the OS had
//! flushed some pages) with the next one torn and discarded whole. That is fjall's
//! contract: after a crash, recovery yields a prefix of whole batches.
//!
//! The disk is shared (`Arc<Mutex<_>>`) so that a broker can be dropped and rebuilt from
//! it, and so that the madsim test can hand a clone to `warren::server::serve`.

use std::sync::{Arc, Mutex, MutexGuard};

use warren::store::memory::MemoryState;
use warren::store::{HeadLimit, LoadedEntry, Recovered, Store, StoreError, StoreOp};

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

    /// Appends a batch (not yet durable).
    pub fn write_batch(&self, ops: &[StoreOp]) {
        let mut s = self.lock();
        for op in ops {
            s.visible.apply(op);
        }
        s.unsynced.push(ops.to_vec());
    }

    /// A read of a queue's entries, seeing every batch written.
    pub fn load(&self, queue: u64, from_seq: u64, max: usize) -> Vec<LoadedEntry> {
        self.lock().visible.load(queue, from_seq, max)
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

    /// Batches made durable so far.
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
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        Ok(VirtualDisk::load(self, queue, from_seq, max))
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.write_batch(ops);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.begin_sync();
        self.complete_sync();
        Ok(())
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
}
