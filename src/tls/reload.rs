//! The configuration a TLS listener hands each new connection, swapped without a restart.
//!
//! A listener reads [`Certs::current`] once per accepted socket, so a reload changes what
//! new connections get while those already open keep the session they negotiated. A
//! reload comes from SIGHUP ([`Certs::reload`], with the settings read again) or from the
//! files changing on disk ([`Certs::watch`] compares their metadata every
//! [`WATCH_PERIOD`]). A reload that fails keeps the configuration in force and says why.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::TlsSettings;
use super::certs::server_config;

/// How often the watcher looks at the files. A change is taken once the files have stayed
/// as they are for one period, so a certificate and key replaced one after the other are
/// read together rather than a mismatched pair in between.
pub const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// The configuration in force for one listener, and how to rebuild it.
#[derive(Debug)]
pub struct Certs {
    /// The listener, for logs ("AMQPS", "HTTPS").
    what: &'static str,
    alpn: Vec<&'static [u8]>,
    loaded: RwLock<Loaded>,
    failures: Mutex<FailureLog>,
}

#[derive(Debug)]
struct Loaded {
    config: Arc<rustls::ServerConfig>,
    settings: TlsSettings,
    /// The files as they were when last read (successfully or not): the watcher reloads
    /// when they differ.
    seen: Stamps,
}

/// What identifies one version of a file: a replaced file (a rename over it, a new
/// symlink target) has a new inode or change time, an edited one a new modification
/// time or size. `None` for a file that cannot be read.
type Stamp = Option<(u64, u64, i64, i64, i64, i64, u64)>;
type Stamps = Vec<Stamp>;

fn stamps(settings: &TlsSettings) -> Stamps {
    use std::os::unix::fs::MetadataExt;
    settings
        .files()
        .into_iter()
        .map(|path| {
            let m = std::fs::metadata(path).ok()?;
            Some((
                m.dev(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.size(),
            ))
        })
        .collect()
}

impl Certs {
    /// Reads the files `settings` name; fails with a sentence naming what is wrong.
    /// `alpn` is offered to clients (empty: none).
    pub fn load(
        what: &'static str,
        settings: TlsSettings,
        alpn: &[&'static [u8]],
    ) -> Result<Arc<Certs>, String> {
        // Metadata first: a file changed while being read is read again later.
        let seen = stamps(&settings);
        let config = server_config(&settings, alpn)?;
        Ok(Arc::new(Certs {
            what,
            alpn: alpn.to_vec(),
            loaded: RwLock::new(Loaded {
                config,
                settings,
                seen,
            }),
            failures: Mutex::new(FailureLog::default()),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        // Loaded is replaced whole under the lock: a panic cannot leave it half-written.
        self.loaded.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Loaded> {
        self.loaded.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.read().config.clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> TlsSettings {
        self.read().settings.clone()
    }

    /// Builds a configuration from `settings` (read again on SIGHUP) and puts it in
    /// force for new connections; on failure the one in force stays and the error says
    /// why. The port is not changed by a reload: the caller warns about it.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), String> {
        let seen = stamps(settings);
        match server_config(settings, &self.alpn) {
            Ok(config) => {
                let mut loaded = self.write();
                let port = loaded.settings.port;
                loaded.config = config;
                loaded.settings = TlsSettings {
                    port,
                    ..settings.clone()
                };
                loaded.seen = seen;
                Ok(())
            }
            Err(e) => {
                let mut loaded = self.write();
                // The watcher tries a broken version of the files once, not every period.
                let same = TlsSettings {
                    port: loaded.settings.port,
                    ..settings.clone()
                } == loaded.settings;
                if same {
                    loaded.seen = seen;
                }
                Err(e)
            }
        }
    }

    /// [`Certs::reload`] with logging.
    pub fn reload_and_log(&self, settings: &TlsSettings, why: &str) {
        match self.reload(settings) {
            Ok(()) => tracing::info!(
                listener = self.what,
                certfile = %settings.certfile.display(),
                "TLS certificates reloaded ({why}); new connections use them"
            ),
            Err(e) => tracing::error!(
                listener = self.what,
                "TLS certificates not reloaded ({why}), the previous ones stay in force: {e}"
            ),
        }
    }

    /// Watches the files for changes until `self` is dropped, reloading when they have
    /// changed and then stayed still for one [`WATCH_PERIOD`].
    pub fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let certs: Weak<Certs> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(WATCH_PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changed: Option<Stamps> = None;
            loop {
                ticks.tick().await;
                let Some(certs) = certs.upgrade() else {
                    return;
                };
                certs.look(&mut changed);
            }
        })
    }

    /// One look at the files: `changed` holds what they were at the previous look if
    /// they differed from what was last read.
    fn look(&self, changed: &mut Option<Stamps>) {
        // A few stat calls on local files: short enough for an async task.
        let (settings, seen) = {
            let loaded = self.read();
            (loaded.settings.clone(), loaded.seen.clone())
        };
        let now = stamps(&settings);
        if now == seen {
            *changed = None;
        } else if changed.as_ref() == Some(&now) {
            *changed = None;
            self.reload_and_log(&settings, "the files changed");
        } else {
            *changed = Some(now);
        }
    }

    /// The TLS handshake on an accepted socket, with the configuration in force now,
    /// within the handshake timeout: a peer that connects and never speaks TLS (or
    /// speaks it slowly) is dropped then.
    pub async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let (config, timeout_ms) = {
            let loaded = self.read();
            (loaded.config.clone(), loaded.settings.handshake_timeout_ms)
        };
        let timeout = Duration::from_millis(timeout_ms);
        match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(io)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS handshake within {timeout_ms} ms"),
            )),
        }
    }

    /// Logs a failed handshake, at most once a second with a count of those not logged,
    /// so that a scan of the port does not flood the log.
    pub fn log_handshake_failure(&self, peer: &std::net::SocketAddr, e: &std::io::Error) {
        let mut log = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(unlogged) = log.log() {
            tracing::warn!(listener = self.what, %peer, error = %e, failed_since_last_log = unlogged, "TLS handshake failed");
        }
    }
}

/// When a handshake failure was last logged, and how many were not logged since.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn log(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &std::path::Path, name: &str) -> TlsSettings {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        TlsSettings::new(5671, c, k)
    }

    /// Lets the file system's clock (a few milliseconds coarse) move on, so that a file
    /// rewritten in place gets a new modification time.
    fn settle() {
        std::thread::sleep(Duration::from_millis(30));
    }

    #[test]
    fn a_failed_reload_keeps_the_configuration_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let settings = write_pair(dir.path(), "one");
        let certs = Certs::load("AMQPS", settings.clone(), &[]).unwrap();
        let first = certs.current();
        std::fs::write(&settings.keyfile, "garbage").unwrap();
        assert!(certs.reload(&settings).is_err());
        assert!(Arc::ptr_eq(&first, &certs.current()));
        settle();
        write_pair(dir.path(), "two");
        certs.reload(&settings).unwrap();
        assert!(!Arc::ptr_eq(&first, &certs.current()));
        let moved = TlsSettings {
            port: 1,
            ..settings.clone()
        };
        certs.reload(&moved).unwrap();
        assert_eq!(
            certs.settings().port,
            5671,
            "the port changes with a restart only"
        );
    }

    #[test]
    fn the_watcher_reloads_once_the_changed_files_stay_still() {
        let dir = tempfile::tempdir().unwrap();
        let settings = write_pair(dir.path(), "one");
        let certs = Certs::load("AMQPS", settings, &[]).unwrap();
        let first = certs.current();
        let mut changed = None;
        certs.look(&mut changed);
        assert!(changed.is_none(), "nothing changed");
        settle();
        write_pair(dir.path(), "two");
        certs.look(&mut changed);
        assert!(
            changed.is_some() && Arc::ptr_eq(&first, &certs.current()),
            "not yet"
        );
        certs.look(&mut changed);
        let second = certs.current();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "reloaded after a still period"
        );
        // A broken key is tried once and kept out.
        settle();
        std::fs::write(dir.path().join("key.pem"), "garbage").unwrap();
        certs.look(&mut changed);
        certs.look(&mut changed);
        assert!(Arc::ptr_eq(&second, &certs.current()));
        assert!(changed.is_none());
        certs.look(&mut changed);
        assert!(
            changed.is_none(),
            "not tried again until the files change again"
        );
    }

    #[test]
    fn handshake_failures_are_logged_once_a_second_with_a_count() {
        let mut log = FailureLog::default();
        assert_eq!(log.log(), Some(0));
        assert_eq!(log.log(), None);
        log.last = log.last.map(|t| t - Duration::from_secs(2));
        assert_eq!(log.log(), Some(1));
    }
}
