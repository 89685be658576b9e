//! warren: an AMQP 0-9-1 message broker.
//!
//! # Layout
//!
//! The code follows the path of a request:
//!
//! - [`proto`]: frames, methods, field tables and the per-connection protocol state
//!   machine. No I/O: bytes in, events out; broker replies in, bytes out.
//! - [`broker`]: vhosts, exchanges and routing, queues, consumers, acks and confirms, as a
//!   single state machine fed by connection events. No I/O: persistence is an output that
//!   the driver completes and reports back.
//! - [`server`]: the tokio driver: listener, per-connection tasks, the broker task and
//!   shutdown.
//! - [`admin`]: the management HTTP API and `warren ctl`, over the broker's admin
//!   operations.

pub mod admin;
pub mod broker;
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
