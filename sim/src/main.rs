//! The simulator's command line: run one seed, a range of seeds, or check determinism.
//!
//! ```text
//! cargo run -p warren-sim --release -- --seed 42               # one seed (a replay)
//! cargo run -p warren-sim --release -- --seed 1 --seeds 400    # seeds 1..=400
//! cargo run -p warren-sim --release -- --seeds 50 --check-determinism
//! cargo run -p warren-sim --release                            # a random seed
//! ```
//!
//! A batch (`--seeds` above 1) runs in a worker process watched by this one, so that a
//! seed that aborts the process, freezes or blows up memory is still reported with its
//! replay command (see [`warren_sim::watchdog`]).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use warren_sim::watchdog::{self, BatchEnd, Limits, SEED_END, SEED_START};
use warren_sim::world::{RunConfig, RunResult, WORK_BUDGET_PER_STEP, World};

/// Deterministic simulation of the warren broker.
#[derive(Debug, Parser)]
#[command(name = "warren-sim")]
struct Args {
    #[command(flatten)]
    run: warren_sim::SeedArgs,
    /// Virtual milliseconds of the safety phase (faults on).
    #[arg(long, default_value_t = RunConfig::default().safety_ms)]
    safety_ms: u64,
    /// Virtual milliseconds allowed for the liveness phase (faults off, drain everything).
    #[arg(long, default_value_t = RunConfig::default().liveness_ms)]
    liveness_ms: u64,
    /// Wall-clock seconds one seed may run before it counts as a freeze.
    #[arg(long, default_value_t = 30)]
    seed_timeout_s: u64,
    /// Resident memory (MiB) past which a seed counts as a blow-up.
    #[arg(long, default_value_t = 2048)]
    max_rss_mib: u64,
    /// Run the seeds in this process, announcing each on standard output for the
    /// supervising simulator process (internal).
    #[arg(long, hide = true)]
    worker: bool,
}

impl Args {
    fn limits(&self) -> Limits {
        Limits {
            seed_wall: Duration::from_secs(self.seed_timeout_s),
            rss_bytes: self.max_rss_mib << 20,
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    warren_sim::install_panic_hook();
    let first = args.run.seed.unwrap_or_else(random_seed);
    if args.run.seed.is_none() {
        println!("warren-sim: no --seed given; chose seed {first}");
    }
    let cfg = RunConfig {
        safety_ms: args.safety_ms,
        liveness_ms: args.liveness_ms,
    };
    if args.run.seeds > 1 && !args.worker {
        return supervise(&args, first, cfg);
    }
    // One seed, or a worker's batch: in this process.
    let mut announce: Box<dyn FnMut(u64, bool)> = if args.worker {
        Box::new(|seed, start| {
            println!("{}{seed}", if start { SEED_START } else { SEED_END });
        })
    } else {
        let replay_args = (args.run.check_determinism, args.run.seeds);
        let current = watchdog::watch_in_process(args.limits(), move |seed| {
            replay_for(seed, cfg, replay_args.0 && replay_args.1 == 1)
        });
        Box::new(move |seed, start| {
            let mut c = match current.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            *c = start.then(|| (seed, Instant::now()));
        })
    };
    let started = Instant::now();
    let mut passed = 0u64;
    let mut failed = 0u64;
    let mut totals = Totals::default();
    let mut failing: Vec<u64> = Vec::new();
    for seed in first..first.saturating_add(args.run.seeds) {
        announce(seed, true);
        let result = World::new(seed, cfg).run();
        let result = check_seed(result, &args, cfg, &mut totals);
        announce(seed, false);
        match result {
            Ok(()) => passed += 1,
            Err(()) => {
                failed += 1;
                failing.push(seed);
                if !args.run.keep_going {
                    break;
                }
            }
        }
    }
    if args.run.keep_going && !failing.is_empty() {
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
        if args.run.check_determinism {
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

/// Checks one seed's run (and its second run with `--check-determinism`), printing its
/// failure or, when asked, its success.
fn check_seed(
    result: RunResult,
    args: &Args,
    cfg: RunConfig,
    totals: &mut Totals,
) -> Result<(), ()> {
    let seed = result.seed;
    if args.run.check_determinism {
        // A failing run must fail the same way again, too.
        let again = World::new(seed, cfg).run();
        if again.trace_hash != result.trace_hash || again.violation != result.violation {
            println!(
                "seed {seed} NOT DETERMINISTIC: trace {:016x} then {:016x}",
                result.trace_hash, again.trace_hash
            );
            println!("replay: {}", replay_for(seed, cfg, true));
            return Err(());
        }
    }
    if let Some(v) = &result.violation {
        report_failure(&result, v, args, cfg);
        return Err(());
    }
    totals.add(&result);
    if args.run.verbose || (args.run.seeds == 1 && !args.worker) {
        print_ok(&result);
    }
    Ok(())
}

/// Runs a batch in worker processes, reporting the seeds that abort, freeze or blow up
/// one as failed (and with `--keep-going` going on with the next seed in a new worker).
fn supervise(args: &Args, first: u64, cfg: RunConfig) -> ExitCode {
    let end = first.saturating_add(args.run.seeds);
    let mut next = first;
    let mut failing: Vec<u64> = Vec::new();
    let mut lost = false;
    let mut worker_failed = false;
    while next < end {
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                println!("warren-sim: cannot find its own executable to run a worker: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut worker = std::process::Command::new(exe);
        worker.args([
            "--worker".to_string(),
            format!("--seed={next}"),
            format!("--seeds={}", end - next),
            format!("--safety-ms={}", cfg.safety_ms),
            format!("--liveness-ms={}", cfg.liveness_ms),
        ]);
        for (on, flag) in [
            (args.run.check_determinism, "--check-determinism"),
            (args.run.keep_going, "--keep-going"),
            (args.run.verbose, "--verbose"),
        ] {
            if on {
                worker.arg(flag);
            }
        }
        match watchdog::supervise(worker, args.limits(), &mut failing) {
            Ok(BatchEnd::Finished(status)) => {
                worker_failed = !status.success();
                break;
            }
            Ok(BatchEnd::Lost(l)) => {
                println!("seed {} FAILED: {}", l.seed, l.reason);
                println!(
                    "replay: {}",
                    replay_for(
                        l.seed,
                        cfg,
                        args.run.check_determinism && args.run.seeds == 1
                    )
                );
                failing.push(l.seed);
                lost = true;
                if !args.run.keep_going {
                    break;
                }
                next = l.seed + 1;
            }
            Err(e) => {
                println!("warren-sim: cannot run a worker process: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if lost && args.run.keep_going {
        failing.sort_unstable();
        failing.dedup();
        println!("warren-sim: failing seeds in all: {failing:?}");
    }
    if worker_failed || lost {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What a batch of passing seeds covered.
#[derive(Debug, Default)]
struct Totals {
    seeds: u64,
    seeds_after_sync: u64,
    seeds_lazy_store: u64,
    slept_through: u64,
    gap_ended: u64,
    synced_deliveries: u64,
    held_gets: u64,
    late_gets: u64,
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
    cancelled_pairs: u64,
    seeds_with_small_chunks: u64,
    seeds_with_heartbeats: u64,
    loads: u64,
    seeds_paging: u64,
    seeds_hostile: u64,
    hostile_clients: u64,
    hostile_published: u64,
    hostile_methods: u64,
    hostile_received: u64,
    hostile_channel_closes: u64,
    hostile_connection_closes: u64,
    hostile_direct_replies: u64,
    hostile_gets: u64,
    hostile_ttl_zero_delivered: u64,
    hostile_probes: u64,
    hostile_probes_delivered: u64,
    hostile_malformed: u64,
    hostile_malformed_answered: u64,
    /// Seeds with each class of hostile input, in [`FEATURES`] order.
    hostile_features: [u64; FEATURES.len()],
    max_step_work: u64,
    admin_requests: u64,
    admin_durable: u64,
    admin_forced_closes: u64,
    admin_oversized_refused: u64,
    admin_peeks: u64,
    admin_peeked: u64,
    admin_peeks_short: u64,
    admin_peeks_read_capped: u64,
    admin_recoveries: u64,
    seeds_admin_recoveries: u64,
    policy_changes: u64,
    policy_checks: u64,
    delayed_published: u64,
    delayed_confirmed: u64,
    delayed_delivered: u64,
    delayed_crash_checks: u64,
    seeds_delayed_crash_checks: u64,
    limit_changes: u64,
    seeds_limit_changes: u64,
    alarm_windows: u64,
    seeds_alarms: u64,
    loads_stalled: u64,
    seeds_loads_stalled: u64,
}

/// The classes of hostile input, for the coverage report.
const FEATURES: [&str; 11] = [
    "dead-letter",
    "overflow",
    "ttl",
    "expires",
    "alternate",
    "e2e",
    "topic",
    "headers",
    "nesting",
    "x-death",
    "names",
];

fn features(f: &warren_sim::hostile::Features) -> [bool; FEATURES.len()] {
    [
        f.dead_letter,
        f.overflow,
        f.ttl,
        f.expires,
        f.alternate,
        f.e2e,
        f.topic,
        f.headers,
        f.nesting,
        f.x_death,
        f.names,
    ]
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
        self.cancelled_pairs += r.cancelled_pairs;
        self.seeds_with_small_chunks += u64::from(r.faults.small_chunk_prob > 0.0);
        self.seeds_with_heartbeats += u64::from(r.faults.heartbeat_s > 0);
        self.loads += r.loads;
        self.seeds_paging += u64::from(r.loads > 0);
        self.seeds_hostile += u64::from(!r.hostile.is_empty());
        let mut seen = [false; FEATURES.len()];
        for (plan, stats) in &r.hostile {
            self.hostile_clients += 1;
            self.hostile_published += stats.published;
            self.hostile_methods += stats.methods;
            self.hostile_received += stats.received;
            self.hostile_channel_closes += stats.channel_closes;
            self.hostile_connection_closes += stats.connection_closes;
            self.hostile_direct_replies += stats.direct_replies;
            self.hostile_gets += stats.gets;
            self.hostile_ttl_zero_delivered += stats.ttl_zero_delivered;
            self.hostile_probes += stats.probes;
            self.hostile_probes_delivered += stats.probes_delivered;
            self.hostile_malformed += stats.malformed;
            self.hostile_malformed_answered += stats.malformed_answered;
            for (s, on) in seen.iter_mut().zip(features(&plan.features)) {
                *s |= on;
            }
        }
        for (n, on) in self.hostile_features.iter_mut().zip(seen) {
            *n += u64::from(on);
        }
        self.max_step_work = self.max_step_work.max(r.max_step_work);
        self.admin_requests += r.admin.answered;
        self.admin_durable += r.admin.durable;
        self.admin_forced_closes += r.admin.forced_closes;
        self.admin_oversized_refused += r.admin.oversized_refused;
        self.admin_peeks += r.admin.peeks;
        self.admin_peeked += r.admin.peeked;
        self.admin_peeks_short += r.admin.peeks_short;
        self.admin_peeks_read_capped += r.admin.peeks_read_capped;
        self.admin_recoveries += r.admin.recoveries_checked;
        self.seeds_admin_recoveries += u64::from(r.admin.recoveries_checked > 0);
        self.policy_changes += r.admin.policy_changes;
        self.delayed_published += r.delays.published;
        self.delayed_confirmed += r.delays.confirmed;
        self.delayed_delivered += r.delays.delivered;
        self.delayed_crash_checks += r.delays.crashes_checked;
        self.seeds_delayed_crash_checks += u64::from(r.delays.crashes_checked > 0);
        self.policy_checks += r.admin.policy_checks;
        self.limit_changes += r.admin.limit_changes;
        self.seeds_limit_changes += u64::from(r.admin.limit_changes > 0);
        self.seeds_after_sync += u64::from(r.faults.deliver_after_sync);
        self.seeds_lazy_store += u64::from(r.faults.lazy_store_wakes);
        self.slept_through += r.slept_through;
        self.gap_ended += r.gap_ended;
        self.synced_deliveries += s.synced_deliveries;
        self.held_gets += s.held_gets;
        self.late_gets += s.late_gets;
        self.alarm_windows += r.alarm_windows;
        self.seeds_alarms += u64::from(r.alarm_windows > 0);
        self.loads_stalled += r.loads_stalled;
        self.seeds_loads_stalled += u64::from(r.loads_stalled > 0);
    }

    fn print(&self) {
        println!(
            "covered: {} seeds; {} published, {} confirmed, {} nacked, {} delivered ({} redelivered), {} requeued, {} channel errors; {} crashes in {} seeds ({} lost unsynced batches, {} kept a prefix of them with the next torn; {} entries recovered and checked; {} enqueues cancelled by their ack before reaching the disk); {} connection drops in {} seeds; small chunks in {} seeds; heartbeats in {} seeds; {} paged reads in {} seeds",
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
            self.cancelled_pairs,
            self.drops,
            self.seeds_with_drops,
            self.seeds_with_small_chunks,
            self.seeds_with_heartbeats,
            self.loads,
            self.seeds_paging,
        );
        println!(
            "deliver after sync: {} seeds; {} stored messages delivered, each after its batch's sync; {} gets found the head waiting ({} answered after a read during which it was synced)",
            self.seeds_after_sync, self.synced_deliveries, self.held_gets, self.late_gets,
        );
        println!(
            "lazy store wakes: {} seeds; {} store jobs left unread in the driver's channel when sent, through the gap between syncs; {} writes ended a gap early because every client waiting for a sync (a confirm or a commit-ok) had sent all it could",
            self.seeds_lazy_store, self.slept_through, self.gap_ended,
        );
        let per_feature: Vec<String> = FEATURES
            .iter()
            .zip(self.hostile_features)
            .map(|(f, n)| format!("{f} {n}"))
            .collect();
        println!(
            "hostile: {} clients in {} seeds; {} published, {} other methods, {} received ({} direct replies, {} by basic.get; {} with a TTL of 0 delivered, none got); {} of {} probes of a queue with x-max-length 0 reached its consumer; {} of {} malformed frames answered by a close naming them, with RabbitMQ's code; the broker closed {} of their channels and {} connections; seeds per class: {}",
            self.hostile_clients,
            self.seeds_hostile,
            self.hostile_published,
            self.hostile_methods,
            self.hostile_received,
            self.hostile_direct_replies,
            self.hostile_gets,
            self.hostile_ttl_zero_delivered,
            self.hostile_probes_delivered,
            self.hostile_probes,
            self.hostile_malformed_answered,
            self.hostile_malformed,
            self.hostile_channel_closes,
            self.hostile_connection_closes,
            per_feature.join(", "),
        );
        println!(
            "admin: {} requests answered and checked ({} durable changes answered after their sync, {} naming something past 255 bytes refused, {} peeks at the workload's queues checked against what they asked for and the queue held: {} messages, {} stopped short at the queue's memory budget, the alarm or the read cap ({} at the cap)), {} sessions closed by deletes, users/vhosts/permissions checked after {} crashes in {} seeds; alarms: {} memory or disk windows in {} seeds, paged reads held back {} times in {} seeds (unacked deliveries over their queue's budget)",
            self.admin_requests,
            self.admin_durable,
            self.admin_oversized_refused,
            self.admin_peeks,
            self.admin_peeked,
            self.admin_peeks_short,
            self.admin_peeks_read_capped,
            self.admin_forced_closes,
            self.admin_recoveries,
            self.seeds_admin_recoveries,
            self.alarm_windows,
            self.seeds_alarms,
            self.loads_stalled,
            self.seeds_loads_stalled,
        );
        println!(
            "policies: {} changes applied, {} queue listings checked against the rules; the workload's limit policy changed {} times in {} seeds",
            self.policy_changes, self.policy_checks, self.limit_changes, self.seeds_limit_changes,
        );
        println!(
            "delayed: {} published with x-delay, {} confirmed, {} delivered none before its delay; confirmed ones found in the store after {} crashes in {} seeds",
            self.delayed_published,
            self.delayed_confirmed,
            self.delayed_delivered,
            self.delayed_crash_checks,
            self.seeds_delayed_crash_checks,
        );
        println!(
            "work: the largest step took {} routing steps (budget {WORK_BUDGET_PER_STEP})",
            self.max_step_work
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
    print_hostile(r);
}

fn print_hostile(r: &RunResult) {
    for (plan, stats) in &r.hostile {
        println!(
            "  hostile: {} (published {}, other methods {}, received {} ({} direct replies, {} gets, {} with a TTL of 0), probes {}/{}, malformed frames answered {}/{}, channels closed {}, connections closed {})",
            plan.describe(),
            stats.published,
            stats.methods,
            stats.received,
            stats.direct_replies,
            stats.gets,
            stats.ttl_zero_delivered,
            stats.probes_delivered,
            stats.probes,
            stats.malformed_answered,
            stats.malformed,
            stats.channel_closes,
            stats.connection_closes
        );
    }
}

fn report_failure(r: &RunResult, v: &warren_sim::Violation, args: &Args, cfg: RunConfig) {
    println!(
        "seed {} FAILED at {}ms virtual (step {}): {v}",
        r.seed, r.now_ms, r.steps
    );
    println!("  faults: {}", r.faults.describe());
    print_hostile(r);
    println!("  trace {:016x}", r.trace_hash);
    println!(
        "replay: {}",
        replay_for(
            r.seed,
            cfg,
            args.run.check_determinism && args.run.seeds == 1
        )
    );
}

/// The command that replays `seed` in process.
fn replay_for(seed: u64, cfg: RunConfig, determinism: bool) -> String {
    let d = RunConfig::default();
    warren_sim::replay_command(
        "",
        seed,
        (cfg.safety_ms, cfg.liveness_ms),
        (d.safety_ms, d.liveness_ms),
        determinism,
    )
}

/// A seed from the OS's hasher keys, only when the user gave none (printed, so the run
/// can be replayed).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}
