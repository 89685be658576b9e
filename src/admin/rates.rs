//! Rates from counters sampled over time. The core only counts; whoever looks at the
//! counters (the HTTP layer) keeps a short history of them per object and works out
//! per-second rates, over about the last five seconds as RabbitMQ's default sampling does.
//!
//! The history is bounded: a few samples per object (those a rate can still be taken
//! from), objects nobody asked about for a minute are forgotten, objects a full listing no
//! longer shows (deleted ones) are forgotten at once, and past [`MAX_KEYS`] objects the
//! tracker starts over.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(5);
/// Samples closer together than this are not kept (one per second at most).
const MIN_SPACING: Duration = Duration::from_secs(1);
/// Objects not observed for this long are forgotten.
const MAX_AGE: Duration = Duration::from_secs(60);
/// Most objects tracked; past this the tracker starts over (a bound on memory).
const MAX_KEYS: usize = 100_000;

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
        // A sample is needed only while no newer one is a window old: the rate's base is
        // the newest sample at least a window old.
        while history
            .get(1)
            .is_some_and(|(t, _)| now.duration_since(*t) >= WINDOW)
        {
            history.pop_front();
        }
        rates
    }

    /// Forgets the objects whose keys start with `prefix` and are not in `live` (a full
    /// listing of that kind of object: the others were deleted).
    pub fn retain_live(&mut self, prefix: &str, live: &HashSet<String>) {
        self.series
            .retain(|k, _| !k.starts_with(prefix) || live.contains(k));
    }

    /// Objects tracked.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// Whether no object is tracked.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
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

    #[test]
    fn history_stays_short_and_deleted_objects_are_forgotten() {
        let mut t = RateTracker::default();
        let t0 = Instant::now();
        for s in 0..100 {
            t.observe("q\0/\0a", t0 + Duration::from_secs(s), &[s]);
        }
        let kept = t.series.values().map(VecDeque::len).max().unwrap_or(0);
        assert!(kept <= 7, "{kept} samples kept");
        t.observe("q\0/\0b", t0, &[1]);
        t.observe("v\0/", t0, &[1]);
        let live: HashSet<String> = ["q\0/\0b".to_string()].into();
        t.retain_live("q\0", &live);
        assert_eq!(t.len(), 2);
        assert!(t.series.contains_key("v\0/"));
    }
}
