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
//!
//! The HTTPS listener, when configured, shares these limits with the plain one: a socket
//! takes its slots when accepted and holds them through its TLS handshake, which must
//! complete within the listener's handshake timeout.

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
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt as _;

use crate::server::TlsListener;

use super::ApiError;

/// A connection must send a whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A request, body included, must be answered within this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a response may wait for the client to take any of it: a client that stops
/// reading gives back its connection slot, and the answer it held, after this.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
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

/// The connection slots all listeners of the API share.
#[derive(Debug, Clone)]
pub struct Limits {
    slots: Arc<tokio::sync::Semaphore>,
    peers: Arc<PerPeer>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            peers: Arc::default(),
        }
    }
}

/// Where the API is served: plain HTTP, or HTTPS.
#[derive(Debug)]
pub enum Listener {
    /// Plain HTTP.
    Plain(tokio::net::TcpListener),
    /// HTTPS, with the certificates in force for each new connection.
    Tls(Arc<TlsListener>),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
        match self {
            Listener::Plain(l) => l.accept().await,
            Listener::Tls(l) => l.accept().await,
        }
    }
}

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: Listener, app: Router, limits: Limits) {
    let Limits { slots, peers } = limits;
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
        let certs = match &listener {
            Listener::Plain(_) => None,
            Listener::Tls(l) => Some(l.certs().clone()),
        };
        tokio::spawn(async move {
            match certs {
                None => serve_connection(stream, peer, app, OverTls(false)).await,
                Some(certs) => match certs.accept(stream).await {
                    Ok(stream) => serve_connection(stream, peer, app, OverTls(true)).await,
                    Err(e) => certs.log_handshake_failure(&peer, &e),
                },
            }
            drop(peer_slot);
            drop(permit);
        });
    }
}

/// A connection whose writes fail once the client has taken nothing for `limit`: a write
/// that cannot proceed arms a timer, and any progress disarms it.
struct SendDeadline<IO> {
    io: IO,
    limit: Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> SendDeadline<IO> {
    fn new(io: IO, limit: Duration) -> Self {
        SendDeadline {
            io,
            limit,
            stalled: None,
        }
    }

    /// What a write that returned `step` comes to, the deadline considered.
    fn deadline<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        step: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match step {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took none of the response in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendDeadline<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendDeadline<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let step = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.deadline(cx, step)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let step = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.deadline(cx, step)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let step = std::pin::Pin::new(&mut self.io).poll_flush(cx);
        self.deadline(cx, step)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Whether a request came over HTTPS (a request extension): the session cookie is then
/// marked `Secure`, so that a browser never sends it to the plain HTTP port.
#[derive(Debug, Clone, Copy)]
pub struct OverTls(pub bool);

async fn serve_connection<IO>(stream: IO, peer: SocketAddr, app: Router, tls: OverTls)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(axum::body::Body::new);
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(tls);
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
    let stream = SendDeadline::new(stream, SEND_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = connection.await {
        tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A response to a client that stops reading fails after the deadline, and one that
    /// keeps reading, however slowly, goes on.
    #[tokio::test]
    async fn a_client_that_takes_nothing_loses_its_connection() {
        let limit = Duration::from_millis(200);
        let (server, mut client) = tokio::io::duplex(64);
        let mut server = SendDeadline::new(server, limit);
        let started = std::time::Instant::now();
        let r = server.write_all(&[7u8; 4096]).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit);

        let (server, mut reader) = tokio::io::duplex(64);
        let mut server = SendDeadline::new(server, limit);
        let slow = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 1024 {
                tokio::time::sleep(limit / 4).await;
                got += reader.read(&mut buf).await.unwrap();
            }
        });
        server
            .write_all(&[7u8; 1024])
            .await
            .expect("a slow reader is served");
        slow.await.unwrap();
        drop(client.read(&mut [0u8; 1]).await);
    }
}
