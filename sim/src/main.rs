//! The simulator's command line: run one seed, a range of seeds, or check determinism.
//!
//! ```text
//! cargo run -p warren-sim --release -- --seed 42               # one seed (a replay)
//! cargo run -p warren-sim --release -- --seed 1 --seeds 400    # seeds 1..=400
//! cargo run -p warren-sim --release -- --seeds 50 --check-determinism
//! cargo run -p warren-sim --release                            # a random seed
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

use warren_sim::world::{RunConfig, RunResult, World};

/// Deterministic simulation of the warren broker.
#[derive(Debug, Parser)]
#[command(name = "warren-sim")]
struct Args {
    /// The first seed (a random one when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// How many consecutive seeds to run from --seed.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Run each seed twice and compare the hashes of their event traces.
    #[arg(long)]
    check_determinism: bool,
    /// Virtual milliseconds of the safety phase (faults on).
    #[arg(long, default_value_t = RunConfig::default().safety_ms)]
    safety_ms: u64,
    /// Virtual milliseconds allowed for the liveness phase (faults off, drain everything).
    #[arg(long, default_value_t = RunConfig::default().liveness_ms)]
    liveness_ms: u64,
    /// Run every seed even after a failure, and list the failing ones at the end.
    #[arg(long)]
    keep_going: bool,
    /// Print one line per seed even when it passes.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    warren_sim::install_panic_hook();
    let first = args.seed.unwrap_or_else(random_seed);
    if args.seed.is_none() {
        println!("warren-sim: no --seed given; chose seed {first}");
    }
    let cfg = RunConfig {
        safety_ms: args.safety_ms,
        liveness_ms: args.liveness_ms,
    };
    let started = Instant::now();
    let mut passed = 0u64;
    let mut failed = 0u64;
    let mut totals = Totals::default();
    let mut failing: Vec<u64> = Vec::new();
    for seed in first..first.saturating_add(args.seeds) {
        let result = World::new(seed, cfg).run();
        if args.check_determinism {
            // A failing run must fail the same way again, too.
            let again = World::new(seed, cfg).run();
            if again.trace_hash != result.trace_hash || again.violation != result.violation {
                failed += 1;
                failing.push(seed);
                println!(
                    "seed {seed} NOT DETERMINISTIC: trace {:016x} then {:016x}",
                    result.trace_hash, again.trace_hash
                );
                println!("replay: {}", replay_command(seed, &args, cfg, true));
                if !args.keep_going {
                    break;
                }
                continue;
            }
        }
        if let Some(v) = &result.violation {
            failed += 1;
            failing.push(seed);
            report_failure(&result, v, &args, cfg);
            if !args.keep_going {
                break;
            }
            continue;
        }
        passed += 1;
        totals.add(&result);
        if args.verbose || args.seeds == 1 {
            print_ok(&result);
        }
    }
    if args.keep_going && !failing.is_empty() {
        println!("failing seeds: {failing:?}");
    }
    let secs = started.elapsed().as_secs_f64();
    if passed > 1 {
        totals.print();
    }
    println!(
        "warren-sim: {passed} passed, {failed} failed ({:.1}s, {:.0} seeds/min{})",
        secs,
        passed as f64 * 60.0 / secs.max(1e-9),
        if args.check_determinism {
            ", each run twice"
        } else {
            ""
        }
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What a batch of passing seeds covered.
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    published: u64,
    confirms: u64,
    nacks: u64,
    deliveries: u64,
    redeliveries: u64,
    requeues: u64,
    channel_errors: u64,
    crashes: u64,
    recovered: u64,
    drops: u64,
    seeds_with_crashes: u64,
    seeds_with_drops: u64,
    torn_crashes: u64,
    lossy_crashes: u64,
    seeds_with_small_chunks: u64,
    seeds_with_heartbeats: u64,
    loads: u64,
    seeds_paging: u64,
}

impl Totals {
    fn add(&mut self, r: &RunResult) {
        let s = &r.stats;
        self.seeds += 1;
        self.published += r.published;
        self.confirms += s.confirms;
        self.nacks += s.nacks;
        self.deliveries += s.deliveries;
        self.redeliveries += s.redeliveries;
        self.requeues += s.requeues;
        self.channel_errors += s.channel_errors;
        self.crashes += s.crashes;
        self.recovered += s.recovered_entries;
        self.drops += r.drops;
        self.seeds_with_crashes += u64::from(s.crashes > 0);
        self.seeds_with_drops += u64::from(r.drops > 0);
        self.torn_crashes += r.torn_crashes;
        self.lossy_crashes += r.lossy_crashes;
        self.seeds_with_small_chunks += u64::from(r.faults.small_chunk_prob > 0.0);
        self.seeds_with_heartbeats += u64::from(r.faults.heartbeat_s > 0);
        self.loads += r.loads;
        self.seeds_paging += u64::from(r.loads > 0);
    }

    fn print(&self) {
        println!(
            "covered: {} seeds; {} published, {} confirmed, {} nacked, {} delivered ({} redelivered), {} requeued, {} channel errors; {} crashes in {} seeds ({} lost unsynced batches, {} kept a prefix of them with the next torn; {} entries recovered and checked); {} connection drops in {} seeds; small chunks in {} seeds; heartbeats in {} seeds; {} paged reads in {} seeds",
            self.seeds,
            self.published,
            self.confirms,
            self.nacks,
            self.deliveries,
            self.redeliveries,
            self.requeues,
            self.channel_errors,
            self.crashes,
            self.seeds_with_crashes,
            self.lossy_crashes,
            self.torn_crashes,
            self.recovered,
            self.drops,
            self.seeds_with_drops,
            self.seeds_with_small_chunks,
            self.seeds_with_heartbeats,
            self.loads,
            self.seeds_paging,
        );
    }
}

fn print_ok(r: &RunResult) {
    let s = &r.stats;
    println!(
        "seed {} ok: {}ms virtual, {} steps, published {} (handled {}), confirmed {}, nacked {}, delivered {} ({} redelivered), acked {}, requeued {}, channel errors {}, crashes {} ({} entries recovered), drops {}, trace {:016x}",
        r.seed,
        r.now_ms,
        r.steps,
        r.published,
        s.publishes,
        s.confirms,
        s.nacks,
        s.deliveries,
        s.redeliveries,
        s.acks,
        s.requeues,
        s.channel_errors,
        s.crashes,
        s.recovered_entries,
        r.drops,
        r.trace_hash
    );
    println!("  faults: {}", r.faults.describe());
}

fn report_failure(r: &RunResult, v: &warren_sim::checker::Violation, args: &Args, cfg: RunConfig) {
    println!(
        "seed {} FAILED at {}ms virtual (step {}): {v}",
        r.seed, r.now_ms, r.steps
    );
    println!("  faults: {}", r.faults.describe());
    println!("  trace {:016x}", r.trace_hash);
    println!("replay: {}", replay_command(r.seed, args, cfg, false));
}

fn replay_command(seed: u64, args: &Args, cfg: RunConfig, determinism: bool) -> String {
    let defaults = RunConfig::default();
    let mut cmd = format!("cargo run -p warren-sim --release -- --seed {seed}");
    if cfg.safety_ms != defaults.safety_ms {
        cmd += &format!(" --safety-ms {}", cfg.safety_ms);
    }
    if cfg.liveness_ms != defaults.liveness_ms {
        cmd += &format!(" --liveness-ms {}", cfg.liveness_ms);
    }
    if determinism || (args.check_determinism && args.seeds == 1) {
        cmd += " --check-determinism";
    }
    cmd
}

/// A seed from the OS's hasher keys, only when the user gave none (printed, so the run
/// can be replayed).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
