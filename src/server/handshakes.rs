//! Unfinished handshakes per peer address: a peer that opens sockets and never completes
//! `connection.open` (or opens them faster than it completes them) gets its new sockets
//! refused once it has this many pending, while everyone else still connects.
//!
//! IPv6 peers are counted by their /64 network, which one host usually holds whole; IPv4
//! peers (and IPv4 mapped into IPv6) by their address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The shared count of unfinished handshakes, by peer.
#[derive(Debug, Clone)]
pub struct Handshakes {
    counts: Arc<Mutex<HashMap<Peer, usize>>>,
    limit: usize,
}

/// What handshakes are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Peer {
    V4([u8; 4]),
    V6Net([u8; 8]),
}

impl Peer {
    fn of(ip: IpAddr) -> Peer {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Peer::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut net = [0u8; 8];
                net.copy_from_slice(&v6.octets()[..8]);
                Peer::V6Net(net)
            }
        }
    }
}

impl Handshakes {
    /// At most `limit` unfinished handshakes per peer (0: no limit).
    pub fn new(limit: usize) -> Self {
        Handshakes {
            counts: Arc::default(),
            limit,
        }
    }

    /// Changes the limit for claims from now on (a config reload); claims held stay.
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<Peer, usize>> {
        // The map holds plain counts: a panic elsewhere cannot leave it inconsistent.
        match self.counts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Claims a handshake for a new socket from `ip`; `None` when that peer already has
    /// `limit` unfinished. The map holds an entry only while its count is above zero, so
    /// it never has more entries than there are connections.
    pub fn claim(&self, ip: IpAddr) -> Option<HandshakeSlot> {
        let peer = Peer::of(ip);
        let mut counts = self.counts();
        let count = counts.entry(peer).or_insert(0);
        if self.limit > 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(HandshakeSlot {
            handshakes: Some(self.clone()),
            peer,
        })
    }

    /// Unfinished handshakes from `ip`'s peer.
    #[cfg(test)]
    pub fn pending(&self, ip: IpAddr) -> usize {
        self.counts().get(&Peer::of(ip)).copied().unwrap_or(0)
    }

    fn release(&self, peer: Peer) {
        let mut counts = self.counts();
        if let Some(count) = counts.get_mut(&peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&peer);
            }
        }
    }
}

/// One unfinished handshake, counted until [`HandshakeSlot::complete`] or until dropped.
#[derive(Debug)]
pub struct HandshakeSlot {
    handshakes: Option<Handshakes>,
    peer: Peer,
}

impl HandshakeSlot {
    /// The handshake completed (`connection.open-ok` went out).
    pub fn complete(&mut self) {
        if let Some(h) = self.handshakes.take() {
            h.release(self.peer);
        }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.complete();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_at_most_the_limit_and_others_are_not_affected() {
        let h = Handshakes::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut first = h.claim(a).unwrap();
        let _second = h.claim(mapped).unwrap();
        assert!(
            h.claim(a).is_none(),
            "IPv4 mapped into IPv6 is the same peer"
        );
        assert!(h.claim(b).is_some());
        first.complete();
        first.complete();
        assert_eq!(h.pending(a), 1, "completing twice releases once");
        let third = h.claim(a).unwrap();
        drop(third);
        drop(_second);
        assert_eq!(h.pending(a), 0);
        assert!(h.counts().is_empty(), "no entry left behind");
    }

    #[test]
    fn ipv6_peers_count_by_their_64_network() {
        let h = Handshakes::new(1);
        let _one = h.claim("2001:db8::1".parse().unwrap()).unwrap();
        assert!(h.claim("2001:db8::2".parse().unwrap()).is_none());
        assert!(h.claim("2001:db8:0:1::1".parse().unwrap()).is_some());
    }

    #[test]
    fn zero_means_no_limit() {
        let h = Handshakes::new(0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| h.claim(ip).unwrap()).collect();
        assert_eq!(h.pending(ip), 100);
        drop(slots);
        assert_eq!(h.pending(ip), 0);
    }
}
