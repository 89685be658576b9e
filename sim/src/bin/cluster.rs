//! The cluster simulator's command line: three (or `--nodes`) Raft nodes under seeded
//! faults.
//!
//! ```text
//! cargo run -p warren-sim --release --bin warren-cluster-sim -- --seed 42             # a replay
//! cargo run -p warren-sim --release --bin warren-cluster-sim -- --seed 1 --seeds 500
//! cargo run -p warren-sim --release --bin warren-cluster-sim -- --seed 1 --seeds 200 --nodes 5
//! cargo run -p warren-sim --release --bin warren-cluster-sim -- --seeds 50 --check-determinism
//! ```
//!
//! A seed that panics is reported like one that breaks a guarantee: with its replay command.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use warren_sim::cluster::{ClusterConfig, ClusterResult, ClusterStats, ClusterWorld, MAX_NODES};

/// Deterministic simulation of a warren cluster's replication (three nodes by default).
#[derive(Debug, Parser)]
#[command(name = "warren-cluster-sim")]
struct Args {
    #[command(flatten)]
    run: warren_sim::SeedArgs,
    /// Voting members: an odd number up to 7.
    #[arg(long, default_value_t = ClusterConfig::default().nodes, value_parser = parse_nodes)]
    nodes: u64,
    /// Virtual milliseconds with faults on.
    #[arg(long, default_value_t = ClusterConfig::default().safety_ms)]
    safety_ms: u64,
    /// Virtual milliseconds allowed, faults off, for every batch to be confirmed.
    #[arg(long, default_value_t = ClusterConfig::default().liveness_ms)]
    liveness_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    warren_sim::install_panic_hook();
    let first = args.run.seed.unwrap_or_else(|| {
        use std::hash::{BuildHasher, RandomState};
        let seed = RandomState::new().hash_one(std::process::id());
        println!("warren-cluster-sim: no --seed given; chose seed {seed}");
        seed
    });
    let cfg = ClusterConfig {
        nodes: args.nodes,
        safety_ms: args.safety_ms,
        liveness_ms: args.liveness_ms,
    };
    let started = Instant::now();
    let (mut passed, mut failing) = (0u64, Vec::new());
    let mut totals = ClusterStats::default();
    for seed in first..first.saturating_add(args.run.seeds) {
        match run_seed(seed, cfg, &args) {
            Ok(r) => {
                passed += 1;
                add(&mut totals, &r.stats);
                if args.run.verbose || args.run.seeds == 1 {
                    print_ok(&r);
                }
            }
            Err(()) => {
                failing.push(seed);
                if !args.run.keep_going {
                    break;
                }
            }
        }
    }
    if passed > 1 {
        let t = &totals;
        println!(
            "cluster: {passed} seeds; {} batches proposed, {} confirmed, {} left uncertain by a deposed or crashed leader and retried; {} terms with a leader; {} steps at which a leader was ready to serve, each checked to hold every confirmed batch; {} seeds of identical nodes; {} leaders crashed and kept down while the others settled; {} crashes ({} keeping unreported persists, {} entries re-applied after a store lost its tail); {} persists rewriting one still being written; {} partitions ({} isolating the leader); {} messages lost, {} duplicated; {} entries applied; {} log compactions ({} undone by a crash); {} snapshots sent, {} installed ({} crashes between the store's install and the log's, {} logs mended at a restart); {} seeds changing members: {} changes proposed, {} refused, {} learners added, {} promoted, {} members removed ({} told so by a member after missing their removal)",
            t.proposed,
            t.confirmed,
            t.uncertain,
            t.leader_terms,
            t.ready_checks,
            t.identical,
            t.leaders_killed,
            t.crashes,
            t.crashes_mid_persist,
            t.reapplied,
            t.rewrites_in_flight,
            t.partitions,
            t.leader_isolations,
            t.dropped,
            t.duplicated,
            t.applied,
            t.compactions,
            t.compactions_lost,
            t.snapshots_sent,
            t.snapshots_installed,
            t.crashes_store_not_log,
            t.logs_mended,
            t.churned,
            t.changes_proposed,
            t.changes_refused,
            t.learners_added,
            t.promotions,
            t.removals,
            t.told_removed
        );
    }
    if args.run.keep_going && !failing.is_empty() {
        println!("failing seeds: {failing:?}");
    }
    println!(
        "warren-cluster-sim: {passed} passed, {} failed ({:.1}s{})",
        failing.len(),
        started.elapsed().as_secs_f64(),
        if args.run.check_determinism {
            ", each run twice"
        } else {
            ""
        }
    );
    if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one seed (twice with --check-determinism), printing its failure.
fn run_seed(seed: u64, cfg: ClusterConfig, args: &Args) -> Result<ClusterResult, ()> {
    let run = || {
        catch_unwind(AssertUnwindSafe(|| ClusterWorld::new(seed, cfg).run()))
            .map_err(|_| warren_sim::take_last_panic().unwrap_or_else(|| "a panic".to_string()))
    };
    let fail = |what: String| {
        println!("seed {seed} FAILED: {what}");
        println!("replay: {}", replay(seed, cfg, args.run.check_determinism));
    };
    let result = match run() {
        Ok(r) => r,
        Err(panic) => {
            fail(format!("panicked: {panic}"));
            return Err(());
        }
    };
    if let Some(v) = &result.violation {
        fail(format!("at {}ms virtual: {v}", result.now_ms));
        println!("  faults: {}", result.faults.describe());
        return Err(());
    }
    if args.run.check_determinism {
        match run() {
            Ok(again) if again.trace_hash == result.trace_hash => {}
            Ok(again) => {
                fail(format!(
                    "NOT DETERMINISTIC: trace {:016x} then {:016x}",
                    result.trace_hash, again.trace_hash
                ));
                return Err(());
            }
            Err(panic) => {
                fail(format!("panicked on the second run: {panic}"));
                return Err(());
            }
        }
    }
    Ok(result)
}

fn replay(seed: u64, cfg: ClusterConfig, determinism: bool) -> String {
    let d = ClusterConfig::default();
    let mut cmd = warren_sim::replay_command(
        "--bin warren-cluster-sim ",
        seed,
        (cfg.safety_ms, cfg.liveness_ms),
        (d.safety_ms, d.liveness_ms),
        determinism,
    );
    if cfg.nodes != d.nodes {
        cmd += &format!(" --nodes {}", cfg.nodes);
    }
    cmd
}

fn parse_nodes(s: &str) -> Result<u64, String> {
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if n % 2 == 1 && (1..=MAX_NODES).contains(&n) {
        Ok(n)
    } else {
        Err(format!("an odd number from 1 to {MAX_NODES}"))
    }
}

fn print_ok(r: &ClusterResult) {
    let s = &r.stats;
    println!(
        "seed {} ok: {}ms virtual, proposed {}, confirmed {}, uncertain {}, leader terms {}, crashes {}, partitions {}, lost {}, duplicated {}, compactions {}, snapshots sent {} installed {}, trace {:016x}",
        r.seed,
        r.now_ms,
        s.proposed,
        s.confirmed,
        s.uncertain,
        s.leader_terms,
        s.crashes,
        s.partitions,
        s.dropped,
        s.duplicated,
        s.compactions,
        s.snapshots_sent,
        s.snapshots_installed,
        r.trace_hash
    );
    println!("  faults: {}", r.faults.describe());
}

fn add(t: &mut ClusterStats, s: &ClusterStats) {
    t.proposed += s.proposed;
    t.confirmed += s.confirmed;
    t.uncertain += s.uncertain;
    t.leader_terms += s.leader_terms;
    t.ready_checks += s.ready_checks;
    t.crashes += s.crashes;
    t.leaders_killed += s.leaders_killed;
    t.identical += s.identical;
    t.crashes_mid_persist += s.crashes_mid_persist;
    t.rewrites_in_flight += s.rewrites_in_flight;
    t.partitions += s.partitions;
    t.leader_isolations += s.leader_isolations;
    t.dropped += s.dropped;
    t.duplicated += s.duplicated;
    t.applied += s.applied;
    t.reapplied += s.reapplied;
    t.compactions += s.compactions;
    t.compactions_lost += s.compactions_lost;
    t.snapshots_sent += s.snapshots_sent;
    t.snapshots_installed += s.snapshots_installed;
    t.crashes_store_not_log += s.crashes_store_not_log;
    t.logs_mended += s.logs_mended;
    t.churned += s.churned;
    t.changes_proposed += s.changes_proposed;
    t.changes_refused += s.changes_refused;
    t.learners_added += s.learners_added;
    t.promotions += s.promotions;
    t.removals += s.removals;
    t.told_removed += s.told_removed;
}
