//! Rates from counters sampled over time. The core only counts; whoever looks at the
//! counters (the HTTP layer) keeps a short history of them per object and works out
//! per-second rates, over about the last five seconds as RabbitMQ's default sampling does.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(5);
/// Samples closer together than this are not kept (one per second at most).
const MIN_SPACING: Duration = Duration::from_secs(1);
/// Samples older than this are dropped.
const MAX_AGE: Duration = Duration::from_secs(60);
/// Most objects tracked; past this the tracker starts over (a bound on memory).
const MAX_KEYS: usize = 200_000;

/// Sampled counter histories, per object key.
#[derive(Debug, Default)]
pub struct RateTracker {
    series: HashMap<String, VecDeque<(Instant, Vec<u64>)>>,
    last_sweep: Option<Instant>,
}

impl RateTracker {
    /// Records `values` for `key` at `now` and returns each value's rate per second since
    /// a sample about [`WINDOW`] ago (0 with no earlier sample). A value that went down
    /// (a gauge, or a counter of a recreated object) gives a negative or reset rate.
    pub fn observe(&mut self, key: &str, now: Instant, values: &[u64]) -> Vec<f64> {
        self.sweep(now);
        if self.series.len() >= MAX_KEYS && !self.series.contains_key(key) {
            self.series.clear();
        }
        let history = self.series.entry(key.to_string()).or_default();
        if history
            .front()
            .is_some_and(|(_, v)| v.len() != values.len())
        {
            history.clear();
        }
        let base = history
            .iter()
            .rev()
            .find(|(t, _)| now.duration_since(*t) >= WINDOW)
            .or_else(|| history.front());
        let rates = match base {
            Some((t, old)) if now.duration_since(*t) >= Duration::from_millis(500) => {
                let dt = now.duration_since(*t).as_secs_f64();
                values
                    .iter()
                    .zip(old)
                    .map(|(new, old)| round((*new as f64 - *old as f64) / dt))
                    .collect()
            }
            _ => vec![0.0; values.len()],
        };
        if history
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= MIN_SPACING)
        {
            history.push_back((now, values.to_vec()));
        }
        while history
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > MAX_AGE)
        {
            history.pop_front();
        }
        rates
    }

    /// Forgets objects nobody asked about for a while.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < MAX_AGE)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.series.retain(|_, h| {
            h.back()
                .is_some_and(|(t, _)| now.duration_since(*t) <= MAX_AGE)
        });
    }
}

/// Rates to one decimal place beyond the tenth, as RabbitMQ rounds them.
fn round(r: f64) -> f64 {
    (r * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_the_sample_a_window_ago() {
        let mut t = RateTracker::default();
        let t0 = Instant::now();
        assert_eq!(t.observe("q", t0, &[0, 0]), vec![0.0, 0.0]);
        assert_eq!(
            t.observe("q", t0 + Duration::from_secs(2), &[20, 4]),
            vec![10.0, 2.0]
        );
        // 6 s after the first sample: the base is the first sample (the newest one at
        // least a window old).
        assert_eq!(
            t.observe("q", t0 + Duration::from_secs(6), &[60, 4]),
            vec![10.0, 0.7]
        );
        assert_eq!(t.observe("other", t0, &[5]), vec![0.0]);
    }
}
