//! When the simulated store driver takes the broker's jobs. A seed runs one of two:
//!
//! - eager: every job is taken and run as it comes, a read even while a sync is in
//!   flight (the simulator's driver before the lazy one);
//! - lazy, as the tokio store thread (`src/server/storage.rs`): from a sync to the end of
//!   the gap after it the driver sleeps, and jobs short of ending the gap early stay in
//!   its channel unread ([`GroupCommit::sleep_plan`]); a read, a write that ends the
//!   gap, enough ops ([`WakeGate`]) or the plan's deadline wakes it. Jobs sent while it is blocked in a
//!   sync wait for the sync's end, and jobs still in the channel die with the process.
//!
//! The rule itself (the plan and the handshake) is the library's; this module only plays
//! the thread's loop in virtual time, where a sync in flight is the thread blocked in it.
//! Jobs come only from the broker's drains, never during a turn of the driver, so the
//! thread's race between taking its jobs and going to sleep is not played here
//! (`WakeGate`'s own test steps through it).

use std::collections::VecDeque;

use warren::store::commit::{GAP_MAX_OPS, GroupCommit, StoreJob, WakeGate};

/// The group commit and the channel in front of it.
pub struct StoreDriver {
    /// The state machine the driver runs.
    pub commit: GroupCommit,
    lazy: bool,
    /// Jobs sent and not yet taken (lazy only). Bounded by the broker's credit for
    /// unsynced store bytes, as the thread's channel is.
    channel: VecDeque<StoreJob>,
    gate: WakeGate,
    /// Asleep between turns (lazy only); a thread starts by finding its channel empty.
    asleep: bool,
    /// Jobs the driver slept through when they were sent.
    slept_through: u64,
    /// Writes that woke it from the gap between syncs by saying that every waiting client
    /// had sent all it could ([`StoreJob::is_urgent`]), short of the ops that end the gap.
    gap_ended: u64,
}

impl StoreDriver {
    pub fn new(commit: GroupCommit, lazy: bool) -> Self {
        StoreDriver {
            commit,
            lazy,
            channel: VecDeque::new(),
            gate: WakeGate::default(),
            asleep: true,
            slept_through: 0,
            gap_ended: 0,
        }
    }

    /// The broker sent `job`: whether the driver takes its turn now. An eager driver
    /// always does; a lazy one when it sleeps and the gate wakes it (one busy in a sync
    /// takes the job when the sync is done).
    #[must_use]
    pub fn send(&mut self, job: StoreJob) -> bool {
        if !self.lazy {
            self.commit.push(job);
            return true;
        }
        let by_ops = self.gate.sent(job.ops(), false);
        let wake = by_ops || job.wakes();
        if self.asleep && !by_ops && job.is_urgent() {
            self.gap_ended += 1;
        }
        self.channel.push_back(job);
        if self.asleep && !wake {
            self.slept_through += 1;
        }
        self.asleep && wake
    }

    /// The driver wakes and takes every job in its channel.
    pub fn take(&mut self) {
        self.asleep = false;
        if self.lazy {
            self.gate.taking();
            while let Some(job) = self.channel.pop_front() {
                self.commit.push(job);
            }
        }
    }

    /// The driver's turn ended with no sync in flight: it goes to sleep per the plan.
    /// False if a job came in during the turn (the thread would take it at once).
    #[must_use]
    pub fn sleep(&mut self) -> bool {
        if !self.lazy {
            return true;
        }
        let (_, room) = self.commit.sleep_plan();
        self.asleep = self.gate.may_sleep(room);
        self.asleep
    }

    /// When the driver runs even if no job comes: for an eager driver the state
    /// machine's own deadline, for a lazy one the deadline it sleeps to (none while it
    /// is busy in a sync, whose end moves it on).
    pub fn deadline(&self) -> Option<u64> {
        if !self.lazy {
            self.commit.wake_at()
        } else if self.asleep {
            self.commit.sleep_plan().0
        } else {
            None
        }
    }

    /// What a sleeping driver may leave unread, checked without the plan's arithmetic: no
    /// read and no write that ends the gap (each always wakes it), fewer ops than end the gap early on their own, and
    /// nothing at all when the seed has no gap between syncs.
    pub fn check(&self, sync_gap_ms: u64) -> Result<(), String> {
        if !self.asleep || self.channel.is_empty() {
            return Ok(());
        }
        if self.channel.iter().any(StoreJob::is_load) {
            return Err("a read waits in the channel of a sleeping store driver".into());
        }
        if self.channel.iter().any(StoreJob::is_urgent) {
            return Err("a write that ends the gap between syncs waits in the channel of a sleeping store driver".into());
        }
        let ops: usize = self.channel.iter().map(StoreJob::ops).sum();
        if ops >= GAP_MAX_OPS {
            return Err(format!(
                "a sleeping store driver left {ops} ops unread, enough to end the gap between syncs ({GAP_MAX_OPS})"
            ));
        }
        if sync_gap_ms == 0 {
            return Err(format!(
                "a sleeping store driver left {} jobs unread with no gap between syncs",
                self.channel.len()
            ));
        }
        Ok(())
    }

    /// Jobs sent and not yet taken.
    pub fn unread(&self) -> usize {
        self.channel.len()
    }

    /// Jobs it slept through when they were sent.
    pub fn slept_through(&self) -> u64 {
        self.slept_through
    }

    /// Urgent writes that woke it from the gap between syncs.
    pub fn gap_ended(&self) -> u64 {
        self.gap_ended
    }
}
