//! The HTTP server's accept loop: hyper's HTTP/1 connection driver with a header-read
//! timeout, a cap on open connections, and a deadline per request.
//!
//! `axum::serve` takes none of these settings, and without them a client that opens
//! connections and never finishes a request holds a task and a socket each for ever.
//! Here a connection that does not send a complete request head within
//! [`HEADER_READ_TIMEOUT`] (also between requests on a kept-alive connection) is closed,
//! a request (its body included) must be answered within [`REQUEST_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] connections are served at once (further ones wait in the listen
//! backlog until one closes), at most [`MAX_CONNECTIONS_PER_PEER`] of them for one peer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt as _;

use super::ApiError;

/// A connection must send a whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request, body included, must be answered within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections served at once for one peer (an IPv4 address or an IPv6 /64), so that
/// one peer holding connections open cannot take every slot.
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// Pause after a failed accept (out of descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections open per peer.
#[derive(Debug, Default)]
struct PerPeer(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// A peer's claim on one of its connection slots, given back when dropped.
struct PeerSlot {
    peers: Arc<PerPeer>,
    key: std::net::IpAddr,
}

impl PerPeer {
    /// Takes a slot for `peer`, unless it holds [`MAX_CONNECTIONS_PER_PEER`] already. The
    /// map holds only peers with open connections: at most [`MAX_CONNECTIONS`] entries.
    fn claim(self: &Arc<Self>, peer: SocketAddr) -> Option<PeerSlot> {
        let key = super::guard::peer_key(peer.ip());
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= MAX_CONNECTIONS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            key,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let peers = Arc::new(PerPeer::default());
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(peer_slot) = peers.claim(peer) else {
            // Dropping the socket refuses it; the peer's own connections hold its slots.
            tracing::debug!(%peer, "HTTP connection refused: too many from this peer");
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app).await;
            drop(peer_slot);
            drop(permit);
        });
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, app: Router) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = match tokio::time::timeout(REQUEST_TIMEOUT, app.oneshot(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request was not completed in time",
                )
                .into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
    }
}
