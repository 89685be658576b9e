//! What the listings tell of connections that came over TLS: the protocol version and
//! cipher suite each negotiated, by peer address, as RabbitMQ's `ssl_protocol` and
//! `ssl_cipher`. The broker core never hears of TLS; this is the driver's own record,
//! read by the HTTP API beside the core's listing.
//!
//! An entry lives exactly as long as its connection task, so there are never more than
//! `max_connections` of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One TLS connection's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// "tlsv1.2" or "tlsv1.3", as RabbitMQ names them.
    pub protocol: &'static str,
    /// The cipher suite, by its IANA name.
    pub cipher: String,
}

impl TlsSession {
    /// The session a finished handshake negotiated.
    pub fn of(conn: &rustls::ServerConnection) -> TlsSession {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2",
            _ => "unknown",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map_or_else(String::new, |s| format!("{:?}", s.suite()));
        TlsSession { protocol, cipher }
    }
}

/// The TLS sessions of live connections, by peer address (the `peer` of
/// [`crate::broker::ConnInfo`], which the listings carry). Two live connections share a
/// peer address only if one client used one source port towards both listeners at once;
/// the listings cannot tell those apart by name either.
#[derive(Debug, Clone, Default)]
pub struct TlsSessions(Arc<Mutex<HashMap<String, TlsSession>>>);

impl TlsSessions {
    fn map(&self) -> MutexGuard<'_, HashMap<String, TlsSession>> {
        // Plain inserts and removals: a panic elsewhere cannot leave the map inconsistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `peer`'s session until the returned guard is dropped.
    pub fn register(&self, peer: String, session: TlsSession) -> Registered {
        self.map().insert(peer.clone(), session);
        Registered {
            sessions: self.clone(),
            peer,
        }
    }

    /// The session of the connection from `peer`, if it came over TLS.
    pub fn get(&self, peer: &str) -> Option<TlsSession> {
        self.map().get(peer).cloned()
    }
}

/// A connection's entry, removed when dropped (when its task ends).
#[derive(Debug)]
pub struct Registered {
    sessions: TlsSessions,
    peer: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.map().remove(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_its_guard() {
        let sessions = TlsSessions::default();
        let session = TlsSession {
            protocol: "tlsv1.3",
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
        };
        let guard = sessions.register("127.0.0.1:5000".into(), session.clone());
        assert_eq!(sessions.get("127.0.0.1:5000"), Some(session));
        assert_eq!(sessions.get("127.0.0.1:5001"), None);
        drop(guard);
        assert!(sessions.map().is_empty());
    }
}
