//! warren: an AMQP 0-9-1 message broker.
//!
//! # Layout
//!
//! The code follows the path of a request, each layer using only the ones before it
//! (`tests/layering.rs` checks that no module imports one that imports it back):
//!
//! - [`proto`]: frames, methods, field tables and the per-connection protocol state
//!   machine. No I/O: bytes in, events out; broker replies in, bytes out.
//! - [`store`]: the [`store::Store`] trait (fjall on disk, an in-memory model), and the
//!   group-commit state machine ([`store::commit::GroupCommit`]) between the broker's
//!   batches and a store, which the tokio store thread, the madsim task and the simulator
//!   all run.
//! - [`broker`]: vhosts, exchanges and routing, queues, consumers, acks and confirms,
//!   administration and resource alarms, as a single state machine fed by connection
//!   commands, admin requests, store reports, resource readings and time. No I/O:
//!   persistence is an output the driver completes and reports back; answers that depend
//!   on it (confirms, `tx.commit-ok`, admin answers) wait for it inside the broker.
//! - [`tls`]: TLS settings, rustls configurations from PEM files, and their reload; the
//!   server and the HTTP API run it as a byte transport under their own protocols.
//! - [`server`]: the tokio driver of the AMQP side: listener, one task per connection,
//!   the core task owning the broker, the store thread. It moves bytes, runs store jobs
//!   and reports completions and time; it decides nothing the simulator cannot see.
//! - [`admin`]: the management HTTP API and `warren ctl`, over the broker's admin
//!   operations (an [`server::AdminHandle`] on the core).
//! - `node`: a running node: the AMQP server and the HTTP API side by side over one admin
//!   handle.

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod config;
// The node runs the HTTP API, which runs on real tokio only.
#[cfg(not(madsim))]
pub mod node;
// The load generator uses tokio's owned TCP halves, which madsim does not simulate.
#[cfg(not(madsim))]
pub mod perf;
pub mod proto;
pub mod server;
pub mod store;
pub mod tls;
