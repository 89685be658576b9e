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
//! - [`workload`]: the topology and the clients' plans drawn from the seed.
//! - [`faults`]: the seed's fault settings (swarm testing).
//! - [`checker`]: the reference model, fed by every event at the broker's boundary and by
//!   what clients see, asserting the guarantees at each step.
//!
//! One `u64` seed derives everything through separate generators; time is virtual; the
//! same seed gives the same trace.

pub mod checker;
pub mod client;
pub mod disk;
pub mod faults;
pub mod net;
pub mod workload;
pub mod world;

use std::cell::RefCell;

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
