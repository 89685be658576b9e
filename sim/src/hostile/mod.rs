//! Hostile traffic: clients that send what an attacker would (dead-letter loops, every
//! overflow mode, zero TTLs and lengths, alternate exchanges, exchange-to-exchange
//! bindings, topic patterns of many `#`, long routing keys, headers bindings with many
//! keys, nested tables past the depth limit, forged `x-death` histories, adversarial
//! names, transactions of acks of nothing, channels reopened before their close-ok), each
//! seed choosing which of these it sends and how much.
//!
//! Hostile clients stay in their own namespace: they never name a modelled queue or
//! exchange, never publish with a modelled message id, and bind only their own queues and
//! exchanges (to theirs or to predeclared `amq.*` exchanges, which modelled publishers do
//! not use). The checker does not model their traffic; it checks that the modelled
//! clients' guarantees still hold beside it, and the hostile clients check protocol
//! sanity and isolation on what they receive.

pub mod client;
pub mod plan;

pub use client::{HostileClient, HostileStats, is_hostile_id};
pub use plan::{Features, HostilePlan, Reserved};
