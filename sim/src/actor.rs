//! A simulated client of either kind, as the world drives it: a modelled client (whose
//! every effect the checker predicts) or a hostile one (whose traffic the checker only
//! keeps apart from the modelled one).

use bytes::Bytes;

use crate::client::{Client, Observed, RunPhase};
use crate::hostile::HostileClient;
use crate::workload::Spec;

/// One simulated client.
#[derive(Debug)]
pub enum Actor {
    /// A client of the modelled workload.
    Modelled(Client),
    /// A hostile client.
    Hostile(HostileClient),
}

impl Actor {
    /// Whether a session is in progress.
    pub fn connected(&self) -> bool {
        match self {
            Actor::Modelled(c) => c.connected(),
            Actor::Hostile(c) => c.connected(),
        }
    }

    /// Whether the session finished its closing handshake and the socket can go.
    pub fn done(&self) -> bool {
        match self {
            Actor::Modelled(c) => c.done(),
            Actor::Hostile(c) => c.done(),
        }
    }

    /// Starts a session on a fresh socket.
    pub fn connect(&mut self, now_ms: u64) {
        match self {
            Actor::Modelled(c) => c.connect(now_ms),
            Actor::Hostile(c) => c.connect(now_ms),
        }
    }

    /// The socket is gone.
    pub fn disconnected(&mut self) {
        match self {
            Actor::Modelled(c) => c.disconnected(),
            Actor::Hostile(c) => c.disconnected(),
        }
    }

    /// Bytes to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match self {
            Actor::Modelled(c) => c.poll_transmit(),
            Actor::Hostile(c) => c.poll_transmit(),
        }
    }

    /// Bytes from the socket; what a modelled client saw goes to `out` for the checker.
    pub fn handle_bytes(
        &mut self,
        data: &[u8],
        now_ms: u64,
        spec: &Spec,
        out: &mut Vec<Observed>,
    ) -> Result<(), String> {
        match self {
            Actor::Modelled(c) => c.handle_bytes(data, now_ms, spec, out),
            Actor::Hostile(c) => c.handle_bytes(data, now_ms),
        }
    }

    /// One action.
    pub fn tick(&mut self, now_ms: u64, phase: RunPhase, spec: &Spec) -> Result<(), String> {
        match self {
            Actor::Modelled(c) => {
                c.tick(now_ms, phase, spec);
                Ok(())
            }
            Actor::Hostile(c) => c.tick(now_ms, phase),
        }
    }

    /// Liveness: a modelled client acks what arrived at once.
    pub fn ack_received(&mut self, now_ms: u64) {
        if let Actor::Modelled(c) = self {
            c.ack_received(now_ms);
        }
    }

    /// Time between actions.
    pub fn think_ms(&self, spec: &Spec) -> (u64, u64) {
        match self {
            Actor::Modelled(c) => spec.clients[c.id].think_ms,
            Actor::Hostile(c) => c.plan().think_ms,
        }
    }

    /// Whether it is hostile.
    pub fn is_hostile(&self) -> bool {
        matches!(self, Actor::Hostile(_))
    }
}
