//! warren-sim: the deterministic simulator of the warren broker.
//!
//! # Layout
//!
//! - [`world`]: the seeded world and its scheduler loop, driving the broker core through
//!   the same sans-IO protocol layer the tokio server uses.
//! - [`net`]: byte pipes with latency, chunking and drops.
//! - [`disk`]: the virtual disk behind the `Store` trait: unsynced writes vanish on crash,
//!   a crash may keep a prefix of whole batches.
//! - [`client`]: a simulated AMQP client speaking real bytes through warren's codec.
//! - [`hostile`]: hostile clients, which send what an attacker would (dead-letter loops,
//!   every overflow mode, zero TTLs and lengths, alternate exchanges, exchange-to-exchange
//!   bindings, topic patterns of `#` runs with long routing keys, headers bindings with
//!   many keys, tables nested past the depth limit, forged `x-death` counts, adversarial
//!   names) in a namespace of their own.
//! - [`link`]: one connection as either kind of client holds it: bytes, frames, the
//!   handshake, heartbeats and content assembly.
//! - [`actor`]: either kind of client, as the world drives it.
//! - [`workload`]: the topology and the clients' plans drawn from the seed.
//! - [`faults`]: the seed's fault settings (swarm testing).
//! - [`checker`]: the reference model, fed by every event at the broker's boundary and by
//!   what clients see, asserting the guarantees at each step.
//! - [`watchdog`]: what cannot be caught inside a run (a freeze, a memory blow-up, a
//!   stack overflow), still reported with the seed and its replay command.
//!
//! One `u64` seed derives everything through separate generators; time is virtual; the
//! same seed gives the same trace.
//!
//! # What a seed must not do
//!
//! Break a guarantee the model checks for the modelled clients (exact queue contents,
//! deliveries, confirms, crash recovery, liveness); let hostile traffic reach them or
//! theirs reach it; send a hostile client anything that does not decode, an `x-death`
//! count below zero or a 541; make the broker do more than
//! [`world::WORK_BUDGET_PER_STEP`] routing steps ([`warren::broker::Broker::work_done`])
//! in one step; run a seed past its wall-clock deadline or memory limit; or abort the
//! process. The model is exact only for the modelled clients' subset of AMQP; hostile
//! traffic (dead-lettering, overflow modes, TTLs, expiry, alternate exchanges,
//! exchange-to-exchange and headers bindings) is checked for sanity and isolation, not
//! modelled (see the README's simulation section).

pub mod actor;
pub mod admin;
pub mod alarms;
pub mod checker;
pub mod client;
pub mod cluster;
pub mod delays;
pub mod disk;
pub mod faults;
pub mod hostile;
pub mod link;
pub mod net;
pub mod policies;
pub mod store_driver;
pub mod watchdog;
pub mod workload;
pub mod world;

/// A broken guarantee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

use std::cell::RefCell;

/// The command that replays `seed` with `bin`'s arguments: the phase lengths only when
/// they are not the defaults, and `--check-determinism` when asked.
pub fn replay_command(
    bin: &str,
    seed: u64,
    phases_ms: (u64, u64),
    default_phases_ms: (u64, u64),
    determinism: bool,
) -> String {
    let mut cmd = format!("cargo run -p warren-sim --release {bin}-- --seed {seed}");
    if phases_ms.0 != default_phases_ms.0 {
        cmd += &format!(" --safety-ms {}", phases_ms.0);
    }
    if phases_ms.1 != default_phases_ms.1 {
        cmd += &format!(" --liveness-ms {}", phases_ms.1);
    }
    if determinism {
        cmd += " --check-determinism";
    }
    cmd
}

/// The seeds a simulator command runs, and how (shared by `warren-sim` and
/// `warren-cluster-sim`).
#[derive(Debug, Clone, clap::Args)]
pub struct SeedArgs {
    /// The first seed (a random one when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many consecutive seeds to run from --seed.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Run each seed twice and compare the hashes of their event traces.
    #[arg(long)]
    pub check_determinism: bool,
    /// Run every seed even after a failure, and list the failing ones at the end.
    #[arg(long)]
    pub keep_going: bool,
    /// Print one line per seed even when it passes.
    #[arg(long, short)]
    pub verbose: bool,
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces the default panic output with a record of the last panic on this thread, so
/// that a panic inside the broker becomes a reported violation with its location instead
/// of noise on stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(info.to_string()));
    }));
}

/// The last panic recorded by [`install_panic_hook`]'s hook on this thread.
pub fn take_last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow_mut().take())
}
