//! The tokio driver: a listener, one task per connection running the protocol state
//! machine, one task owning the broker core, and a storage worker that writes and syncs
//! store batches (group commit: batches that arrive during a sync share the next one).
//!
//! ```text
//! socket ─► conn task (proto::Connection) ─► core task (broker::Broker) ─► store worker
//!        ◄─            replies            ◄─          persisted         ◄─
//! ```

mod admin;
mod conn;
mod core;
pub mod descriptors;
mod handshakes;
pub mod resources;
mod storage;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerConfig, ConnInfo};
use crate::proto::connection::ConnectionConfig;
use crate::store::Store;

pub use self::admin::AdminHandle;
pub use self::core::CoreMsg;

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: IpAddr,
    /// AMQP port (0 picks a free one).
    pub amqp_port: u16,
    /// Management HTTP port.
    pub http_port: u16,
    /// Where durable state lives.
    pub data_dir: PathBuf,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// A connection whose socket takes no byte of its pending output for this long is
    /// closed, and its unacked messages requeued (RabbitMQ's `send_timeout`, 15 s).
    pub send_timeout_ms: u64,
    /// Most connections from one peer address (IPv6: one /64) that have not completed
    /// `connection.open`; its further sockets are refused meanwhile (0: no limit).
    pub max_handshakes_per_address: usize,
    /// Protocol limits offered to clients.
    pub connection: ConnectionConfig,
    /// Broker settings.
    pub broker: BrokerConfig,
    /// When resource alarms go off.
    pub alarms: resources::AlarmLimits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            // The IPv6 wildcard takes IPv4 connections too on dual-stack hosts.
            bind: IpAddr::from([0u16; 8]),
            amqp_port: 5672,
            http_port: 15672,
            data_dir: PathBuf::from("warren-data"),
            max_connections: 65_536,
            send_timeout_ms: 15_000,
            max_handshakes_per_address: 64,
            connection: ConnectionConfig::default(),
            broker: BrokerConfig::default(),
            alarms: resources::AlarmLimits::default(),
        }
    }
}

/// Broker time: wall-clock milliseconds since the Unix epoch at start, advanced by tokio's
/// monotonic clock (virtual under madsim), so timestamps in headers are real dates and
/// timers never jump.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: tokio::time::Instant,
    start_epoch_ms: u64,
}

impl Clock {
    fn new() -> Self {
        let start_epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            start: tokio::time::Instant::now(),
            start_epoch_ms,
        }
    }

    /// Now, in broker time.
    pub fn now_ms(&self) -> u64 {
        self.start_epoch_ms + self.start.elapsed().as_millis() as u64
    }

    /// The instant at broker time `ms`.
    pub fn instant(&self, ms: u64) -> tokio::time::Instant {
        self.start + std::time::Duration::from_millis(ms.saturating_sub(self.start_epoch_ms))
    }
}

/// Runs the broker until `shutdown` completes: binds the AMQP port, recovers state from
/// `store`, serves connections, then closes them (320 CONNECTION_FORCED) and syncs the
/// store.
pub async fn serve(
    config: ServerConfig,
    store: Box<dyn Store + Send>,
    seed: u64,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // Recover before listening: clients never see a broker that is still loading.
    let mut store = store;
    let recovered = store
        .recover(config.broker.head_limit())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tracing::info!(
        queues = recovered.queues.len(),
        messages = recovered.contents.iter().map(|c| c.count).sum::<u64>(),
        "recovered durable state"
    );
    let clock = Clock::new();
    // Hash maps keyed by names clients choose get this process's seed.
    crate::broker::seed_hashes(seed);
    let broker = Broker::new(config.broker.clone(), seed, recovered);
    let listener = match TcpListener::bind(SocketAddr::new(config.bind, config.amqp_port)).await {
        Ok(l) => l,
        // A host without IPv6: the IPv4 wildcard is the next best "everywhere".
        Err(e) if config.bind == IpAddr::from([0u16; 8]) => {
            tracing::warn!(error = %e, "cannot listen on [::]; listening on 0.0.0.0 only");
            TcpListener::bind(SocketAddr::new(
                IpAddr::from([0, 0, 0, 0]),
                config.amqp_port,
            ))
            .await?
        }
        Err(e) => return Err(e),
    };
    let local = listener.local_addr()?;
    let (core_tx, core_rx) = mpsc::channel::<CoreMsg>(1024);
    let monitor = self::core::Monitor {
        limits: config.alarms,
        data_dir: config.data_dir.clone(),
    };
    let mut core = tokio::spawn(self::core::run(broker, store, core_rx, clock, monitor));
    tracing::info!(address = %local, "AMQP listener ready");
    // A line on stdout that scripts and tests can wait for.
    println!("warren: AMQP listening on {local}");
    // Cleared while the app is stopped (`warren ctl stop_app`): new sockets are dropped.
    let accepting = Arc::new(AtomicBool::new(true));
    #[cfg(not(madsim))]
    let http = {
        let settings = crate::admin::http::HttpSettings {
            bind: config.bind,
            port: config.http_port,
            data_dir: config.data_dir.clone(),
            amqp: local,
        };
        crate::admin::http::start(settings, AdminHandle::new(&core_tx), accepting.clone()).await?
    };

    let live = Arc::new(AtomicUsize::new(0));
    let handshakes = handshakes::Handshakes::new(config.max_handshakes_per_address);
    let settings = conn::ConnSettings {
        send_timeout: std::time::Duration::from_millis(config.send_timeout_ms),
    };
    let mut backoff = AcceptBackoff::default();
    let mut refusals = Refusals::default();
    let mut next_id: u64 = 1;
    tokio::pin!(shutdown);
    loop {
        let paused_until = backoff.until();
        tokio::select! {
            accepted = listener.accept(), if paused_until.is_none() => {
                let (stream, peer) = match accepted {
                    Ok(x) => {
                        backoff.reset();
                        x
                    }
                    Err(e) => {
                        backoff.failed(&e);
                        continue;
                    }
                };
                if !accepting.load(Ordering::SeqCst) {
                    drop(stream);
                    continue;
                }
                if live.load(Ordering::Relaxed) >= config.max_connections {
                    if let Some(more) = refusals.log() {
                        tracing::warn!(%peer, limit = config.max_connections, refused_since_last_log = more, "connection limit reached; refusing");
                    }
                    drop(stream);
                    continue;
                }
                let Some(handshake) = handshakes.claim(peer.ip()) else {
                    if let Some(more) = refusals.log() {
                        tracing::warn!(%peer, limit = config.max_handshakes_per_address, refused_since_last_log = more, "too many unfinished handshakes from this address; refusing");
                    }
                    drop(stream);
                    continue;
                };
                #[cfg(not(madsim))]
                if let Err(e) = set_keepalive(&stream) {
                    tracing::debug!(%peer, error = %e, "cannot enable TCP keepalive");
                }
                let accepted = conn::Accepted {
                    id: next_id,
                    stream,
                    info: ConnInfo { peer: peer.to_string(), loopback: is_loopback(peer.ip()) },
                    handshake,
                };
                next_id += 1;
                let live = live.clone();
                live.fetch_add(1, Ordering::Relaxed);
                let cfg = config.connection.clone();
                let core_tx = core_tx.clone();
                tokio::spawn(async move {
                    conn::run(accepted, cfg, settings, core_tx, clock).await;
                    live.fetch_sub(1, Ordering::Relaxed);
                });
            }
            _ = self::core::sleep_until(paused_until), if paused_until.is_some() => backoff.resume(),
            _ = &mut shutdown => break,
            result = &mut core => {
                // The core stops early only if the store worker died.
                return match result {
                    Ok(Ok(())) => Err(std::io::Error::other("broker core stopped")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(std::io::Error::other(format!("broker core failed: {e}"))),
                };
            }
        }
    }
    tracing::info!("shutting down: closing connections");
    #[cfg(not(madsim))]
    http.stop();
    drop(listener);
    let _ = core_tx.send(CoreMsg::Shutdown).await;
    // Give clients a moment to acknowledge the close before the store's final sync.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while live.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(core_tx);
    match core.await {
        Ok(result) => result,
        Err(e) => Err(std::io::Error::other(format!("broker task failed: {e}"))),
    }
}

/// Idle time before TCP keepalive probes start, the time between probes, and how many
/// go unanswered before the kernel drops the connection: a peer that vanished without a
/// word (no FIN, no RST) is noticed within two minutes even when it negotiated no
/// heartbeats.
#[cfg(not(madsim))]
const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
#[cfg(not(madsim))]
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
#[cfg(not(madsim))]
const KEEPALIVE_PROBES: u32 = 6;

#[cfg(not(madsim))]
fn set_keepalive(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    use rustix::net::sockopt;
    sockopt::set_socket_keepalive(stream, true)?;
    sockopt::set_tcp_keepidle(stream, KEEPALIVE_IDLE)?;
    sockopt::set_tcp_keepintvl(stream, KEEPALIVE_INTERVAL)?;
    sockopt::set_tcp_keepcnt(stream, KEEPALIVE_PROBES)?;
    Ok(())
}

/// Accepting pauses after an error that another accept would only repeat: out of
/// descriptors (EMFILE, ENFILE) or kernel memory (ENOBUFS, ENOMEM). The pending
/// connections wait in the listen backlog meanwhile, instead of the loop spinning.
#[derive(Debug, Default)]
struct AcceptBackoff {
    paused_until: Option<tokio::time::Instant>,
    delay: std::time::Duration,
}

/// The first pause after a failed accept, and the longest.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

impl AcceptBackoff {
    fn until(&self) -> Option<tokio::time::Instant> {
        self.paused_until
    }

    fn failed(&mut self, e: &std::io::Error) {
        use rustix::io::Errno;
        let exhausted = e.raw_os_error().is_some_and(|code| {
            [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
                .iter()
                .any(|errno| errno.raw_os_error() == code)
        });
        if !exhausted {
            // The peer gave up before we took its socket (ECONNABORTED) and the like.
            tracing::debug!(error = %e, "accept failed");
            return;
        }
        self.delay = (self.delay * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
        if self.delay == ACCEPT_BACKOFF_MIN || self.delay == ACCEPT_BACKOFF_MAX {
            tracing::warn!(error = %e, pause_ms = self.delay.as_millis() as u64, "accept failed: out of resources; pausing accepts");
        }
        self.paused_until = Some(tokio::time::Instant::now() + self.delay);
    }

    fn resume(&mut self) {
        self.paused_until = None;
    }

    fn reset(&mut self) {
        self.delay = std::time::Duration::ZERO;
    }
}

/// Refused sockets are logged at most once a second, with a count of those not logged,
/// so that a flood of them does not flood the log too.
#[derive(Debug, Default)]
struct Refusals {
    last_log: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl Refusals {
    /// Whether to log this refusal; if so, how many went unlogged before it.
    fn log(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self
            .last_log
            .is_some_and(|t| now < t + std::time::Duration::from_secs(1))
        {
            self.unlogged += 1;
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Loopback, including IPv4 loopback mapped into IPv6.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepts_pause_when_out_of_descriptors_only() {
        let mut b = AcceptBackoff::default();
        b.failed(&std::io::Error::from_raw_os_error(
            rustix::io::Errno::CONNABORTED.raw_os_error(),
        ));
        assert!(
            b.until().is_none(),
            "a peer that gave up is no reason to pause"
        );
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let mut pauses = Vec::new();
        for _ in 0..10 {
            b.failed(&emfile);
            assert!(b.until().is_some());
            pauses.push(b.delay.as_millis());
            b.resume();
        }
        assert_eq!(&pauses[..4], [10, 20, 40, 80], "doubling");
        assert_eq!(pauses[9], 1000, "up to a second");
        b.reset();
        b.failed(&emfile);
        assert_eq!(b.delay.as_millis(), 10, "an accepted socket starts over");
    }

    #[tokio::test]
    async fn refusals_are_logged_once_a_second_with_a_count() {
        let mut r = Refusals::default();
        assert_eq!(r.log(), Some(0));
        assert_eq!(r.log(), None);
        assert_eq!(r.log(), None);
        r.last_log = r.last_log.map(|t| t - std::time::Duration::from_secs(2));
        assert_eq!(r.log(), Some(2));
    }
}
