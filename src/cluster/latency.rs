//! Commit latency on the leader: how long a store batch waits from its proposal to Raft
//! until a majority committed it and this node applied it (when the broker may confirm).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How long a window of latencies is before its percentiles are published.
pub const WINDOW: Duration = Duration::from_secs(5);

/// Latencies above this are counted as this (a batch cannot wait longer than the broker's
/// store timeout anyway).
const HIGHEST_US: u64 = 60_000_000;

/// What the leader's commit latencies came to: totals since the node started, and the
/// percentiles of the last complete window of [`WINDOW`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitLatency {
    /// Batches this node proposed and saw committed since it started.
    pub count: u64,
    /// Their latencies added up, in microseconds.
    pub sum_us: u64,
    /// Batches committed in the last complete window.
    pub window_count: u64,
    /// The median latency in that window, in microseconds (0 without batches).
    pub p50_us: u64,
    /// The 99th percentile in that window.
    pub p99_us: u64,
    /// The longest in that window.
    pub max_us: u64,
}

/// Records latencies and sums them up once per window (a fixed-size histogram: its memory
/// does not grow with the traffic).
#[derive(Debug)]
pub struct LatencyMeter {
    histogram: Histogram<u64>,
    window_started: Instant,
    count: u64,
    sum_us: u64,
    summary: CommitLatency,
}

impl LatencyMeter {
    /// A meter whose first window starts at `now`.
    pub fn new(now: Instant) -> Self {
        LatencyMeter {
            histogram: Histogram::new_with_bounds(1, HIGHEST_US, 2)
                .expect("valid histogram bounds"),
            window_started: now,
            count: 0,
            sum_us: 0,
            summary: CommitLatency::default(),
        }
    }

    /// A batch proposed at `proposed` was committed and applied at `now`.
    pub fn record(&mut self, proposed: Instant, now: Instant) {
        let us = u64::try_from(now.saturating_duration_since(proposed).as_micros())
            .unwrap_or(HIGHEST_US)
            .clamp(1, HIGHEST_US);
        self.histogram.saturating_record(us);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Closes the window if it is over at `now`; returns the summary as of the last
    /// closed window.
    pub fn summary(&mut self, now: Instant) -> CommitLatency {
        if now.saturating_duration_since(self.window_started) >= WINDOW {
            let h = &self.histogram;
            let window_count = h.len();
            let (p50_us, p99_us, max_us) = if window_count == 0 {
                (0, 0, 0)
            } else {
                (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
            };
            self.summary = CommitLatency {
                count: self.count,
                sum_us: self.sum_us,
                window_count,
                p50_us,
                p99_us,
                max_us,
            };
            self.histogram.reset();
            self.window_started = now;
        }
        self.summary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_published_once_it_is_over() {
        let start = Instant::now();
        let mut meter = LatencyMeter::new(start);
        for ms in 1..=100u64 {
            meter.record(start, start + Duration::from_millis(ms));
        }
        // Not yet over: nothing is published.
        assert_eq!(meter.summary(start + WINDOW / 2), CommitLatency::default());
        let s = meter.summary(start + WINDOW);
        assert_eq!((s.count, s.window_count), (100, 100));
        assert_eq!(s.sum_us, (1..=100u64).sum::<u64>() * 1000);
        // Two significant figures: within 1%.
        assert!((49_500..=50_500).contains(&s.p50_us), "{s:?}");
        assert!((98_000..=100_000).contains(&s.p99_us), "{s:?}");
        assert!((99_000..=101_000).contains(&s.max_us), "{s:?}");
        // An empty window keeps the totals and has no percentiles.
        let s = meter.summary(start + WINDOW * 2);
        assert_eq!((s.count, s.window_count, s.p99_us), (100, 0, 0));
    }

    #[test]
    fn a_latency_past_the_bound_counts_as_the_bound() {
        let start = Instant::now();
        let mut meter = LatencyMeter::new(start);
        meter.record(start, start + Duration::from_secs(3600));
        let s = meter.summary(start + WINDOW);
        assert_eq!(s.window_count, 1);
        assert!(s.max_us <= HIGHEST_US + HIGHEST_US / 100, "{s:?}");
    }
}
