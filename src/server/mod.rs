//! The tokio driver: a listener, one task per connection running the protocol state
//! machine, one task owning the broker core, and a store thread running the group-commit
//! state machine ([`crate::store::commit::GroupCommit`]: batches that arrive during a sync
//! share the next one). The driver moves bytes, runs store jobs and reports completions,
//! readings and time; what to do with them is the broker's decision. The HTTP API runs
//! beside it in [`crate::node`], over an [`AdminHandle`].
//!
//! With TLS configured, a second listener (AMQPS) hands its sockets to the same
//! connection tasks once their TLS handshake completes ([`crate::tls::Certs::accept`]);
//! the sockets count against the same connection and handshake limits from the moment
//! they are accepted.
//!
//! ```text
//! socket ─► conn task (proto::Connection) ─► core task (broker::Broker) ─► store worker
//!        ◄─            replies            ◄─          persisted         ◄─
//! ```

mod admin;
mod conn;
mod core;
pub mod descriptors;
pub mod gather;
mod handshakes;
pub mod resources;
mod storage;
mod tls_sessions;
mod transport;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::broker::{Broker, BrokerConfig, ConnInfo};
use crate::proto::connection::ConnectionConfig;
use crate::store::Store;
use crate::tls::{Certs, TlsSettings};

pub use self::admin::AdminHandle;
pub use self::core::CoreMsg;
pub use self::tls_sessions::TlsSession;

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
    /// The node's name (`warren@<hostname>` if none), as `warren ctl -n` and the HTTP API
    /// know it.
    pub node_name: Option<String>,
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
    /// Broker settings (resource alarm limits included).
    pub broker: BrokerConfig,
    /// AMQP over TLS on its own port, if configured.
    pub tls: Option<TlsSettings>,
    /// The management API over HTTPS on its own port, if configured (served by the node,
    /// beside the plain HTTP listener).
    pub http_tls: Option<TlsSettings>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            // The IPv6 wildcard takes IPv4 connections too on dual-stack hosts.
            bind: IpAddr::from([0u16; 8]),
            amqp_port: 5672,
            http_port: 15672,
            data_dir: PathBuf::from("warren-data"),
            node_name: None,
            max_connections: 65_536,
            send_timeout_ms: 15_000,
            max_handshakes_per_address: 64,
            connection: ConnectionConfig::default(),
            broker: BrokerConfig::default(),
            tls: None,
            http_tls: None,
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
        self.ms_at(tokio::time::Instant::now())
    }

    /// The broker time of `at`, an instant read earlier.
    pub fn ms_at(&self, at: tokio::time::Instant) -> u64 {
        self.start_epoch_ms + at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// The instant at broker time `ms`.
    pub fn instant(&self, ms: u64) -> tokio::time::Instant {
        self.start + std::time::Duration::from_millis(ms.saturating_sub(self.start_epoch_ms))
    }
}

/// Runs the AMQP side until `shutdown` completes: [`start`], [`Amqp::accept_until`],
/// [`Amqp::stop`]. The node ([`crate::node`]) runs the HTTP API beside it.
pub async fn serve(
    config: ServerConfig,
    store: Box<dyn Store + Send>,
    seed: u64,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut amqp = start(config, store, seed).await?;
    amqp.accept_until(shutdown).await?;
    amqp.stop().await
}

/// The AMQP side of a node: its listener, the core task and the connections.
#[derive(Debug)]
pub struct Amqp {
    config: ServerConfig,
    listener: TcpListener,
    local: SocketAddr,
    clock: Clock,
    core_tx: mpsc::Sender<CoreMsg>,
    core: tokio::task::JoinHandle<std::io::Result<()>>,
    app_running: watch::Receiver<bool>,
    live: Arc<AtomicUsize>,
    /// Configs read again on SIGHUP ([`Amqp::set_reloads`]).
    reloads: Option<mpsc::Receiver<Box<ServerConfig>>>,
    /// The AMQPS listener, if TLS is configured.
    amqps: Option<TlsListener>,
    /// The sessions of live TLS connections, for the listings.
    tls_sessions: tls_sessions::TlsSessions,
}

/// A listener whose sockets speak TLS, with the certificates it hands new connections.
#[derive(Debug)]
pub struct TlsListener {
    listener: TcpListener,
    local: SocketAddr,
    certs: Arc<Certs>,
    /// Reloads the certificates when their files change.
    watcher: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Reads the certificates `settings` name and binds their port on `addr`; a file
    /// that cannot be used is an error naming it. `what` names the listener in logs;
    /// `alpn` is offered to clients.
    pub async fn bind(
        what: &'static str,
        addr: IpAddr,
        settings: &TlsSettings,
        alpn: &[&'static [u8]],
    ) -> std::io::Result<TlsListener> {
        let certs = Certs::load(what, settings.clone(), alpn)
            .map_err(|e| std::io::Error::other(format!("{what}: {e}")))?;
        let listener = bind(addr, settings.port).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for {what} on port {}: {e}", settings.port),
            )
        })?;
        let local = listener.local_addr()?;
        let watcher = certs.watch();
        Ok(TlsListener {
            listener,
            local,
            certs,
            watcher,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Takes the settings read again on SIGHUP: new connections get the certificates
    /// they name; a port change waits for a restart; files that do not make a valid
    /// configuration change nothing.
    pub fn reload(&self, new: Option<&TlsSettings>, section: &str) {
        match new {
            Some(new) => {
                if new.port != self.certs.settings().port {
                    tracing::warn!("[{section}] port changes only with a restart");
                }
                self.certs.reload_and_log(new, "reload");
            }
            None => tracing::warn!(
                "[{section}] was removed from the config; its listener stops only with a restart"
            ),
        }
    }

    /// The next socket.
    pub async fn accept(&self) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
        self.listener.accept().await
    }

    /// The certificates in force.
    pub fn certs(&self) -> &Arc<Certs> {
        &self.certs
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Recovers the broker from `store`, binds the AMQP port and starts the core task; clients
/// are accepted once [`Amqp::accept_until`] runs.
pub async fn start(
    config: ServerConfig,
    store: Box<dyn Store + Send>,
    seed: u64,
) -> std::io::Result<Amqp> {
    // Certificates first: a broken file fails the start before a long recovery.
    let amqps = match &config.tls {
        Some(settings) => Some(TlsListener::bind("AMQPS", config.bind, settings, &[]).await?),
        None => None,
    };
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
    let mut broker = Broker::new(config.broker.clone(), seed, recovered);
    // Direct reply-to nonces come from the OS's entropy, not from the broker's seed.
    broker.reseed_secrets(rand::random());
    let listener = bind(config.bind, config.amqp_port).await?;
    let local = listener.local_addr()?;
    let (core_tx, core_rx) = mpsc::channel::<CoreMsg>(CORE_CHANNEL);
    let (app_tx, app_running) = watch::channel(broker.app_running());
    let views = self::core::CoreViews {
        app_running: app_tx,
        data_dir: config.data_dir.clone(),
    };
    let core = tokio::spawn(self::core::run(broker, store, core_rx, clock, views));
    tracing::info!(address = %local, "AMQP listener ready");
    if let Some(amqps) = &amqps {
        tracing::info!(address = %amqps.local, "AMQPS listener ready");
        println!("warren: AMQPS listening on {}", amqps.local);
    }
    // A line on stdout that scripts and tests can wait for.
    println!("warren: AMQP listening on {local}");
    Ok(Amqp {
        config,
        listener,
        local,
        clock,
        core_tx,
        core,
        app_running,
        live: Arc::new(AtomicUsize::new(0)),
        reloads: None,
        amqps,
        tls_sessions: tls_sessions::TlsSessions::default(),
    })
}

/// Messages in flight to the core task.
const CORE_CHANNEL: usize = 1024;

/// Binds the AMQP port; a host without IPv6 gets the IPv4 wildcard instead of `[::]`.
async fn bind(addr: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    match TcpListener::bind(SocketAddr::new(addr, port)).await {
        Ok(l) => Ok(l),
        Err(e) if addr == IpAddr::from([0u16; 8]) => {
            tracing::warn!(error = %e, "cannot listen on [::]; listening on 0.0.0.0 only");
            TcpListener::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port)).await
        }
        Err(e) => Err(e),
    }
}

impl Amqp {
    /// The address the AMQP listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address the AMQPS listener is bound to, if TLS is configured.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.amqps.as_ref().map(|l| l.local)
    }

    /// A handle for administrative requests (the HTTP API).
    pub fn admin(&self) -> AdminHandle {
        AdminHandle::new(
            &self.core_tx,
            self.app_running.clone(),
            self.tls_sessions.clone(),
        )
    }

    /// Accepts connections until `shutdown` completes. Fails if the core stopped on its
    /// own (its store worker died).
    pub async fn accept_until(
        &mut self,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut handshakes = handshakes::Handshakes::new(self.config.max_handshakes_per_address);
        let mut settings = conn::ConnSettings {
            send_timeout: std::time::Duration::from_millis(self.config.send_timeout_ms),
            unflushed_limit: self.config.broker.limits.max_unflushed_bytes_per_connection,
        };
        let mut backoff = AcceptBackoff::default();
        let mut refusals = Refusals::default();
        let mut next_id: u64 = 1;
        tokio::pin!(shutdown);
        loop {
            let paused_until = backoff.until();
            tokio::select! {
                accepted = self.listener.accept(), if paused_until.is_none() => {
                    let Some((stream, peer)) = backoff.accepted(accepted) else {
                        continue;
                    };
                    if let Some(handshake) = self.admit(peer, &handshakes, &mut refusals) {
                        self.spawn_connection(next_id, stream, peer, handshake, settings, None);
                        next_id += 1;
                    }
                }
                accepted = accept_tls(&self.amqps), if paused_until.is_none() => {
                    let Some((stream, peer)) = backoff.accepted(accepted) else {
                        continue;
                    };
                    if let Some(handshake) = self.admit(peer, &handshakes, &mut refusals) {
                        let certs = self.amqps.as_ref().map(|l| l.certs.clone());
                        self.spawn_connection(next_id, stream, peer, handshake, settings, certs);
                        next_id += 1;
                    }
                }
                _ = self::core::sleep_until(paused_until), if paused_until.is_some() => backoff.resume(),
                Some(new) = next_reload(&mut self.reloads) => {
                    self.reload(*new, &mut handshakes, &mut settings).await;
                }
                _ = &mut shutdown => return Ok(()),
                result = &mut self.core => {
                    // The core stops early only if the store worker died.
                    return match result {
                        Ok(Ok(())) => Err(std::io::Error::other("broker core stopped")),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(std::io::Error::other(format!("broker core failed: {e}"))),
                    };
                }
            }
        }
    }

    /// Takes a config read again (SIGHUP): connection limits, timeouts and the settings
    /// offered to new connections at once, the broker's budgets and alarm limits through
    /// the core. Where to listen and store changes only with a restart.
    async fn reload(
        &mut self,
        new: ServerConfig,
        handshakes: &mut handshakes::Handshakes,
        settings: &mut conn::ConnSettings,
    ) {
        let old = &self.config;
        if (new.bind, new.amqp_port, new.http_port, &new.data_dir)
            != (old.bind, old.amqp_port, old.http_port, &old.data_dir)
        {
            tracing::warn!("bind, ports and data_dir change only with a restart");
        }
        match &self.amqps {
            Some(amqps) => amqps.reload(new.tls.as_ref(), "tls"),
            None if new.tls.is_some() => {
                tracing::warn!("[tls] was added to the config; AMQPS starts only with a restart")
            }
            None => {}
        }
        handshakes.set_limit(new.max_handshakes_per_address);
        settings.send_timeout = std::time::Duration::from_millis(new.send_timeout_ms);
        settings.unflushed_limit = new.broker.limits.max_unflushed_bytes_per_connection;
        if self
            .core_tx
            .send(CoreMsg::Reload(Box::new(new.broker.clone())))
            .await
            .is_err()
        {
            tracing::warn!("the broker core is gone; its settings were not reloaded");
        }
        let config = &mut self.config;
        config.max_connections = new.max_connections;
        config.send_timeout_ms = new.send_timeout_ms;
        config.max_handshakes_per_address = new.max_handshakes_per_address;
        config.connection = new.connection;
        config.broker = new.broker;
        tracing::info!(
            max_connections = config.max_connections,
            send_timeout_ms = config.send_timeout_ms,
            max_handshakes_per_address = config.max_handshakes_per_address,
            frame_max = config.connection.frame_max_bytes,
            channel_max = config.connection.channel_max,
            heartbeat_s = config.connection.heartbeat_s,
            max_message_bytes = config.connection.max_message_bytes,
            memory_high_watermark = config.broker.alarms.memory_high_watermark,
            disk_free_limit_bytes = config.broker.alarms.disk_free_limit_bytes,
            "configuration reloaded"
        );
    }

    /// Hands `accept_until` the configs read again on SIGHUP.
    pub fn set_reloads(&mut self, reloads: mpsc::Receiver<Box<ServerConfig>>) {
        self.reloads = Some(reloads);
    }

    /// Whether a socket from `peer` may start a connection: the app runs (the broker
    /// core's state), the connection limit and the peer's unfinished handshakes allow it.
    fn admit(
        &self,
        peer: SocketAddr,
        handshakes: &handshakes::Handshakes,
        refusals: &mut Refusals,
    ) -> Option<handshakes::HandshakeSlot> {
        if !*self.app_running.borrow() {
            // Stopped by `warren ctl stop_app`: like a node without listeners.
            return None;
        }
        let max_connections = self.config.max_connections;
        if self.live.load(Ordering::Relaxed) >= max_connections {
            if let Some(more) = refusals.log() {
                tracing::warn!(%peer, limit = max_connections, refused_since_last_log = more, "connection limit reached; refusing");
            }
            return None;
        }
        let claim = handshakes.claim(peer.ip());
        if claim.is_none() {
            if let Some(more) = refusals.log() {
                tracing::warn!(%peer, limit = self.config.max_handshakes_per_address, refused_since_last_log = more, "too many unfinished handshakes from this address; refusing");
            }
        }
        claim
    }

    /// Runs a connection on its own task; with `tls`, after a TLS handshake within its
    /// timeout. The socket counts as live (against `max_connections`) and holds its
    /// handshake slot from now on, through the TLS handshake.
    fn spawn_connection(
        &self,
        id: u64,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        handshake: handshakes::HandshakeSlot,
        settings: conn::ConnSettings,
        tls: Option<Arc<Certs>>,
    ) {
        #[cfg(not(madsim))]
        if let Err(e) = set_keepalive(&stream) {
            tracing::debug!(%peer, error = %e, "cannot enable TCP keepalive");
        }
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer: peer.to_string(),
            loopback: is_loopback(peer.ip()),
        };
        let live = self.live.clone();
        live.fetch_add(1, Ordering::Relaxed);
        let cfg = self.config.connection.clone();
        let core_tx = self.core_tx.clone();
        let clock = self.clock;
        let tls_sessions = self.tls_sessions.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    let accepted = conn::Accepted {
                        id,
                        stream,
                        info,
                        handshake,
                    };
                    conn::run(accepted, cfg, settings, core_tx, clock).await;
                }
                Some(certs) => match certs.accept(stream).await {
                    Ok(stream) => {
                        let session = tls_sessions::TlsSession::of(stream.get_ref().1);
                        let _listed = tls_sessions.register(info.peer.clone(), session);
                        let accepted = conn::Accepted {
                            id,
                            stream,
                            info,
                            handshake,
                        };
                        conn::run(accepted, cfg, settings, core_tx, clock).await;
                    }
                    Err(e) => certs.log_handshake_failure(&peer, &e),
                },
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Stops accepting, closes every connection (320 CONNECTION_FORCED), gives clients a
    /// moment to acknowledge, and waits for the core's last store sync.
    pub async fn stop(self) -> std::io::Result<()> {
        tracing::info!("shutting down: closing connections");
        let Amqp {
            listener,
            core_tx,
            core,
            live,
            amqps,
            ..
        } = self;
        drop(listener);
        drop(amqps);
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

    /// The socket of a successful accept; after a failed one, `None` (and a pause if the
    /// failure calls for one).
    fn accepted<S>(&mut self, accepted: std::io::Result<S>) -> Option<S> {
        match accepted {
            Ok(x) => {
                self.reset();
                Some(x)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
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

/// The next socket of the AMQPS listener, or never if there is none.
async fn accept_tls(
    amqps: &Option<TlsListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match amqps {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
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

/// The next reloaded config, or never if there is no reload channel (or it closed).
async fn next_reload(
    reloads: &mut Option<mpsc::Receiver<Box<ServerConfig>>>,
) -> Option<Box<ServerConfig>> {
    match reloads {
        Some(rx) => match rx.recv().await {
            Some(new) => Some(new),
            None => {
                *reloads = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}
