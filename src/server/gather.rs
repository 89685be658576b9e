//! Gathering wake-ups. With clients that write each message on its own, a broker thread
//! under moderate load wakes from `epoll_wait` for a socket or two, handles them and sleeps
//! again, and each wake costs about as much as the work it finds. When the thread is about
//! to sleep after a wake that found less than `gather` of work, soon after its last sleep
//! ended (events arrive more often than [`BUSY_PARK`] apart), it first sleeps `gather`, so
//! that the next wake finds the events of several clients at once, as a network card
//! moderates its interrupts. An idle or lightly loaded thread sleeps straight away, and so
//! does one whose wakes already find plenty of work (a saturated one, where waiting would
//! only cost throughput); in between, a message may wait up to `gather` (plus the kernel's
//! timer slack) at each broker hop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A sleep shorter than this (the gathering included) means the thread is busy.
pub const BUSY_PARK: Duration = Duration::from_millis(1);

/// The most `--wake-gather-us` takes.
pub const MAX_GATHER_US: u64 = 1_000;

/// The runtime's park and unpark hooks for one thread.
#[derive(Debug)]
pub struct WakeGather {
    gather: Duration,
    epoch: Instant,
    /// When the current sleep began, in nanoseconds since `epoch`.
    parked_at: AtomicU64,
    /// How long the last sleep lasted, in nanoseconds.
    last_park: AtomicU64,
    /// When the thread last woke, in nanoseconds since `epoch`.
    woke_at: AtomicU64,
}

impl WakeGather {
    /// Hooks that gather for `gather` while busy.
    pub fn new(gather: Duration) -> Self {
        WakeGather {
            gather,
            epoch: Instant::now(),
            parked_at: AtomicU64::new(0),
            last_park: AtomicU64::new(u64::MAX),
            woke_at: AtomicU64::new(0),
        }
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Before the thread sleeps in the runtime's driver.
    pub fn before_park(&self) {
        let now = self.nanos();
        self.parked_at.store(now, Ordering::Relaxed);
        let last = Duration::from_nanos(self.last_park.load(Ordering::Relaxed));
        let busy = Duration::from_nanos(now.saturating_sub(self.woke_at.load(Ordering::Relaxed)));
        if let Some(pause) = gather_for(last, busy, self.gather) {
            std::thread::sleep(pause);
        }
    }

    /// After it woke.
    pub fn after_unpark(&self) {
        let now = self.nanos();
        let slept = now.saturating_sub(self.parked_at.load(Ordering::Relaxed));
        self.last_park.store(slept, Ordering::Relaxed);
        self.woke_at.store(now, Ordering::Relaxed);
    }
}

/// How long to gather before sleeping, after a sleep of `last_park` and then `busy` of
/// work.
pub fn gather_for(last_park: Duration, busy: Duration, gather: Duration) -> Option<Duration> {
    (!gather.is_zero() && last_park < BUSY_PARK && busy < gather).then_some(gather)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_busy_thread_gathers() {
        let g = Duration::from_micros(100);
        let little = Duration::from_micros(20);
        assert_eq!(gather_for(Duration::from_micros(150), little, g), Some(g));
        assert_eq!(gather_for(Duration::ZERO, Duration::ZERO, g), Some(g));
        assert_eq!(
            gather_for(BUSY_PARK, little, g),
            None,
            "a thread idle for a while"
        );
        assert_eq!(gather_for(Duration::from_secs(5), little, g), None);
        assert_eq!(
            gather_for(Duration::ZERO, g, g),
            None,
            "a wake that found plenty to do"
        );
        assert_eq!(
            gather_for(Duration::ZERO, little, Duration::ZERO),
            None,
            "switched off"
        );
    }

    #[test]
    fn hooks_measure_the_sleep_and_stop_gathering_when_idle() {
        let hooks = WakeGather::new(Duration::from_micros(100));
        hooks.before_park();
        std::thread::sleep(Duration::from_millis(3));
        hooks.after_unpark();
        assert!(Duration::from_nanos(hooks.last_park.load(Ordering::Relaxed)) >= BUSY_PARK);
        // A short sleep, then a short wake, makes the next sleep gather.
        hooks.before_park();
        hooks.after_unpark();
        let t = Instant::now();
        hooks.before_park();
        assert!(t.elapsed() >= Duration::from_micros(100));
    }
}
