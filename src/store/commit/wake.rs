//! When a sleeping store driver must be woken for a job: the handshake between the core,
//! which sends jobs, and a driver that sleeps through the gap between syncs
//! ([`GroupCommit::sleep_plan`](super::GroupCommit::sleep_plan)).
//!
//! The driver publishes the room it sleeps with; the core counts each job it sends and
//! wakes the driver for a read or a write that ends the gap, or once the ops sent since the driver last took its jobs
//! reach the room (0: any job). The two sides form a Dekker pair: the core counts a job in
//! after putting it in the channel and then reads the room; the driver publishes its room
//! and then reads the count. With a full fence between each side's write and read, one of
//! the two reads sees the other side's write: the core wakes the driver, or the driver
//! sees the job and does not sleep.

use std::sync::atomic::{AtomicUsize, Ordering, fence};

/// What the core and a sleeping store driver share.
#[derive(Debug, Default)]
pub struct WakeGate {
    /// The ops at which the core must wake the driver (0: any job wakes it).
    room_ops: AtomicUsize,
    /// Ops sent since the driver last took the channel's jobs.
    pending_ops: AtomicUsize,
    /// Jobs sent since then (a channel need not say how many it holds).
    pending_jobs: AtomicUsize,
}

impl WakeGate {
    /// The core put a job of `ops` ops in the channel (one that always wakes the driver if
    /// `wake`: [`StoreJob::wakes`](super::StoreJob::wakes)): whether it must wake the driver.
    pub fn sent(&self, ops: usize, wake: bool) -> bool {
        self.pending_jobs.fetch_add(1, Ordering::SeqCst);
        let pending = self.pending_ops.fetch_add(ops, Ordering::SeqCst) + ops;
        fence(Ordering::SeqCst);
        wake || pending >= self.room_ops.load(Ordering::SeqCst)
    }

    /// The driver is about to take every job in the channel.
    pub fn taking(&self) {
        self.pending_jobs.store(0, Ordering::SeqCst);
        self.pending_ops.store(0, Ordering::SeqCst);
    }

    /// The driver would sleep with `room_ops` of room: whether it may, no job having come
    /// in since it took them (one that did may have been judged against an older room and
    /// not woken it).
    pub fn may_sleep(&self, room_ops: usize) -> bool {
        self.room_ops.store(room_ops, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.pending_jobs.load(Ordering::SeqCst) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job the core sends while the driver is between taking the channel's jobs and
    /// going to sleep, judged against the room of the driver's last sleep, keeps the
    /// driver awake; one sent once it sleeps wakes it unless the gap holds it; a read
    /// always wakes it.
    #[test]
    fn a_job_sent_as_the_driver_goes_to_sleep_is_never_slept_through() {
        let gate = WakeGate::default();
        assert!(gate.may_sleep(100), "nothing sent: the driver sleeps");
        assert!(gate.sent(0, true), "a read wakes it whatever the room");
        // It takes the jobs; the core sends one against the room of the last sleep and
        // does not wake it.
        gate.taking();
        assert!(!gate.sent(3, false));
        // Whatever room it would sleep with now, it looks again first.
        assert!(!gate.may_sleep(0));
        gate.taking();
        assert!(gate.may_sleep(0), "no room: it sleeps until woken");
        assert!(gate.sent(3, false), "any job wakes it");
        gate.taking();
        assert!(gate.may_sleep(10));
        assert!(!gate.sent(9, false), "9 ops stay short of the room of 10");
        assert!(gate.sent(1, false), "the tenth op ends the gap");
    }
}
