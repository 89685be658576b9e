//! A seed's schedule of resource alarms: windows during which the machine's memory use is
//! above the broker's watermark, or its free disk below the limit, as the driver's
//! monitor would read them. A third of the seeds have them. The broker hears each reading
//! through [`warren::broker::Broker::handle_resources`] and decides the alarm edges
//! itself: publishers blocked (`connection.blocked`), consumers served.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use warren::broker::{AlarmLimits, Resource, ResourceReading};

/// Physical memory the simulated machine has.
const TOTAL_MEMORY: u64 = 1 << 30;

/// Which resource a window starves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Starved {
    Memory,
    Disk,
}

/// The schedule.
#[derive(Debug, Clone)]
pub struct AlarmFaults {
    rng: SmallRng,
    /// Mean virtual time between windows; `None`: this seed's machine never runs short.
    mean_gap_ms: Option<u64>,
    window_ms: (u64, u64),
    /// What is starved now.
    now: Option<Starved>,
    /// The next change: when, and what is starved from then on.
    next: Option<(u64, Option<Starved>)>,
    /// Windows opened so far.
    pub windows: u64,
}

impl AlarmFaults {
    /// The schedule drawn from `seed` (a stream of its own).
    pub fn generate(seed: u64) -> AlarmFaults {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mean_gap_ms = [None, None, Some(600), Some(2_500)][rng.gen_range(0..4)];
        let window_ms = [(5, 100), (100, 1_500)][rng.gen_range(0..2)];
        let mut faults = AlarmFaults {
            rng,
            mean_gap_ms,
            window_ms,
            now: None,
            next: None,
            windows: 0,
        };
        faults.schedule_start(0);
        faults
    }

    /// When the next change is due.
    pub fn next_change_ms(&self) -> Option<u64> {
        self.next.map(|(at, _)| at)
    }

    /// Makes the due change and schedules the one after.
    pub fn change(&mut self, now_ms: u64) {
        let Some((_, starved)) = self.next.take() else {
            return;
        };
        self.now = starved;
        match starved {
            Some(_) => {
                self.windows += 1;
                let (lo, hi) = self.window_ms;
                self.next = Some((now_ms + self.rng.gen_range(lo..=hi), None));
            }
            None => self.schedule_start(now_ms),
        }
    }

    /// What the monitor reads now against `limits`.
    pub fn reading(&self, limits: &AlarmLimits) -> ResourceReading {
        let watermark = (limits.memory_high_watermark * TOTAL_MEMORY as f64) as u64;
        let used = match self.now {
            Some(Starved::Memory) => watermark.saturating_add(1 << 20),
            _ => watermark / 2,
        };
        let free = match self.now {
            Some(Starved::Disk) => limits.disk_free_limit_bytes / 2,
            _ => limits.disk_free_limit_bytes.saturating_mul(4).max(1 << 30),
        };
        ResourceReading {
            memory_used_bytes: Some(used),
            memory_total_bytes: Some(TOTAL_MEMORY),
            disk_free_bytes: Some(free),
        }
    }

    /// The alarms the broker must have raised after the current reading.
    pub fn expected(&self) -> Vec<Resource> {
        match self.now {
            Some(Starved::Memory) => vec![Resource::Memory],
            Some(Starved::Disk) => vec![Resource::Disk],
            None => Vec::new(),
        }
    }

    /// No more shortage (the liveness phase): the machine recovers at once.
    pub fn stop(&mut self, now_ms: u64) {
        self.mean_gap_ms = None;
        self.next = self.now.map(|_| (now_ms, None));
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        match self.mean_gap_ms {
            None => "alarms=off".into(),
            Some(gap) => format!("alarms=every~{gap}ms for {:?}ms", self.window_ms),
        }
    }

    fn schedule_start(&mut self, now_ms: u64) {
        let Some(mean) = self.mean_gap_ms else {
            return;
        };
        let gap = self.rng.gen_range(1..=2 * mean);
        let starved = if self.rng.gen_bool(0.5) {
            Starved::Memory
        } else {
            Starved::Disk
        };
        self.next = Some((now_ms + gap, Some(starved)));
    }
}
