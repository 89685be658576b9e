//! Administration outside the core: the management HTTP API, `warren ctl`, and what they
//! share (RabbitMQ's JSON shapes, rates, the node file).
//!
//! The operations themselves are the broker's ([`crate::broker::admin`]); the server's
//! core task runs them ([`crate::server::AdminHandle`]). The HTTP API and the ctl client
//! run on real tokio and are left out of simulator builds (`--cfg madsim`).

pub mod json;
pub mod nodefile;
pub mod rates;

#[cfg(not(madsim))]
pub mod ctl;
#[cfg(not(madsim))]
pub mod http;
