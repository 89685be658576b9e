//! The faults a cluster seed draws (swarm testing: each seed turns some on, at its own
//! rates), and what the operator does to the members.

use rand::Rng;
use rand::rngs::SmallRng;

use super::{ClusterConfig, RETAIN_BYTES};

/// The seed's fault settings.
#[derive(Debug, Clone)]
pub struct ClusterFaults {
    /// Chance a message between nodes is lost.
    pub drop: f64,
    /// Chance a message is delivered twice.
    pub duplicate: f64,
    /// Largest one-way delay between nodes, µs (messages are reordered within it).
    pub max_delay_us: u64,
    /// Mean time between crashes, ms (0: none).
    pub crash_every_ms: u64,
    /// Mean time between partitions, ms (0: none).
    pub partition_every_ms: u64,
    /// Each node's tick, µs (clock skew; one for all when the nodes are identical).
    pub tick_us: Vec<u64>,
    /// The nodes are identical: one election timeout, clocks in step (every node ticks on
    /// the same grid of `tick_us`, each tick late by up to a thousandth of one), and with
    /// the faults off, every message takes half `max_delay_us` and every sync half
    /// `max_sync_us`, within 2%.
    pub identical: bool,
    /// Each node's least election timeout, ticks ([`ReplicaConfig::election_ticks`]); one
    /// for all when the nodes are identical.
    pub election_ticks: Vec<usize>,
    /// When, after the liveness phase starts, the leader (or, with none then, some node)
    /// crashes and stays down until every client's batches are confirmed, ms.
    pub kill_after_ms: Option<u64>,
    /// Longest disk sync, µs.
    pub max_sync_us: u64,
    /// Chance a sync stalls for a tenth of a second or more (the persists behind it wait):
    /// a node then takes entries it cannot yet acknowledge, and a new leader's entries
    /// rewrite some still being written.
    pub stall: f64,
    /// Entries a node's log keeps behind what its store holds durably
    /// ([`ReplicaConfig::retain_entries`]): few, so that logs compact and a member behind
    /// is sent a snapshot in most seeds.
    pub retain_entries: u64,
    /// Bytes of entries a log keeps so ([`ReplicaConfig::retain_bytes`]): the production
    /// bound, or in a third of the seeds a few entries' worth.
    pub retain_bytes: u64,
    /// When an operator starts changing the members, ms: a node waiting to join (one more
    /// than the cluster's size, up from the start) is added, and a member is removed and
    /// stopped for good, in the order `churn` says.
    pub churn_after_ms: Option<u64>,
    /// What the operator does from `churn_after_ms` on.
    pub churn: Churn,
}

/// The operator's membership changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Churn {
    /// Add the node waiting to join; once it votes, remove another member (not the
    /// leader).
    AddThenRemove,
    /// Remove a member other than the leader, whichever (one down or cut off included: the
    /// leader must refuse a removal that leaves too few of the voters answering), then add
    /// the node waiting to join. With a leader to be killed and kept down, the removal
    /// waits for the kill, so that the members left are the ones that must answer.
    RemoveThenAdd,
    /// Add the node waiting to join, and remove it again as soon as it is a learner, most
    /// often before it is promoted: it must stop once it hears of its removal.
    AddThenRemoveIt,
}

impl ClusterFaults {
    pub(super) fn draw(rng: &mut SmallRng, cfg: &ClusterConfig) -> Self {
        let nodes = cfg.nodes;
        let pick = |rng: &mut SmallRng, xs: &[f64]| xs[rng.gen_range(0..xs.len())];
        // Identical nodes: the same configuration, on the same hardware.
        let identical = rng.gen_ratio(1, 3);
        let (tick, election) = (rng.gen_range(8_000..=12_500), rng.gen_range(10..=20));
        // A node to lose for good needs a majority left without it.
        let kill = nodes >= 3 && rng.gen_bool(0.5);
        let kill_after_ms = rng.gen_range(0..=cfg.liveness_ms / 8);
        let churn = nodes >= 3 && rng.gen_bool(0.5);
        let churn_after_ms = rng.gen_range(0..cfg.safety_ms);
        // The node that may join draws its clock and timeout too.
        let nodes = nodes + 1;
        Self {
            drop: pick(rng, &[0.0, 0.01, 0.05, 0.2]),
            duplicate: pick(rng, &[0.0, 0.01, 0.1]),
            max_delay_us: [200, 2_000, 10_000][rng.gen_range(0..3)],
            crash_every_ms: [0, 300, 800][rng.gen_range(0..3)],
            partition_every_ms: [0, 250, 700][rng.gen_range(0..3)],
            tick_us: (0..nodes)
                .map(|_| {
                    if identical {
                        tick
                    } else {
                        rng.gen_range(8_000..=12_500)
                    }
                })
                .collect(),
            election_ticks: (0..nodes)
                .map(|_| {
                    if identical {
                        election
                    } else {
                        rng.gen_range(10..=20)
                    }
                })
                .collect(),
            identical: identical && nodes > 1,
            kill_after_ms: kill.then_some(kill_after_ms),
            // A slow disk keeps persists pending across ticks and messages: crashes land
            // mid-persist, and a new leader's entries rewrite ones still being written.
            max_sync_us: [300, 3_000, 30_000][rng.gen_range(0..3)],
            stall: pick(rng, &[0.0, 0.01, 0.05]),
            retain_entries: rng.gen_range(2..=40),
            retain_bytes: if rng.gen_ratio(1, 3) {
                rng.gen_range(40..=1_000)
            } else {
                RETAIN_BYTES
            },
            churn_after_ms: churn.then_some(churn_after_ms),
            churn: Churn::AddThenRemove,
        }
        .with_churn(rng)
    }

    /// Draws the operator's plan (after every other draw, so that a seed's other faults
    /// stay what they were before plans were drawn).
    fn with_churn(mut self, rng: &mut SmallRng) -> Self {
        self.churn = [
            Churn::AddThenRemove,
            Churn::RemoveThenAdd,
            Churn::AddThenRemoveIt,
        ][rng.gen_range(0..3)];
        self
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        format!(
            "drop {} dup {} delay ≤{}µs crash every {}ms partition every {}ms ticks {:?}µs{} election ticks {:?} sync ≤{}µs stall {} retain {} entries, {} bytes{}{}",
            self.drop,
            self.duplicate,
            self.max_delay_us,
            self.crash_every_ms,
            self.partition_every_ms,
            self.tick_us,
            if self.identical { " in step" } else { "" },
            self.election_ticks,
            self.max_sync_us,
            self.stall,
            self.retain_entries,
            self.retain_bytes,
            match self.kill_after_ms {
                Some(ms) => format!(" leader crashed and kept down {ms}ms into the liveness phase"),
                None => String::new(),
            },
            match self.churn_after_ms {
                Some(ms) => format!(" members change from {ms}ms ({:?})", self.churn),
                None => String::new(),
            }
        )
    }
}
