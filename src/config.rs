//! Server settings from a TOML file, layered under command-line flags and environment
//! variables (flags and variables win).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cluster::settings::ClusterFile;
use crate::server::ServerConfig;
use crate::store::SyncPolicy;
use crate::tls::{self, TlsSettings, TlsVersion, Verify};

/// The settings a config file may hold. Every field is optional; unknown keys are errors.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub bind: Option<IpAddr>,
    /// AMQP port.
    pub amqp_port: Option<u16>,
    /// Management HTTP port.
    pub http_port: Option<u16>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Most client connections (lowered at start if the open-file limit is too low).
    pub max_connections: Option<usize>,
    /// A connection whose socket takes no byte for this long is closed, milliseconds.
    pub send_timeout_ms: Option<u64>,
    /// Most connections from one address that have not completed `connection.open`
    /// (0: no limit).
    pub max_handshakes_per_address: Option<usize>,
    /// Largest frame offered in connection.tune, bytes.
    pub frame_max_bytes: Option<u32>,
    /// Highest channel number offered in connection.tune.
    pub channel_max: Option<u16>,
    /// Heartbeat offered in connection.tune, seconds.
    pub heartbeat_s: Option<u16>,
    /// Largest message body accepted, bytes.
    pub max_message_bytes: Option<u64>,
    /// The vhost created on first start.
    pub default_vhost: Option<String>,
    /// The user created on first start.
    pub default_user: Option<String>,
    /// That user's password.
    pub default_pass: Option<String>,
    /// Users who may only connect from loopback.
    pub loopback_users: Option<Vec<String>>,
    /// When publisher confirms are sent: "batch" (after fdatasync) or "none" (after the
    /// write reaches the OS). Read by `warren serve` when it opens the store; see
    /// [`SyncPolicy`].
    pub sync: Option<SyncPolicy>,
    /// With `sync = "batch"`: the least milliseconds between the starts of two syncs (at
    /// most 1,000). Read by `warren serve` when it opens the store.
    pub sync_gap_ms: Option<u64>,
    /// Memory alarm above this fraction of physical memory (RabbitMQ's
    /// vm_memory_high_watermark).
    pub memory_high_watermark: Option<f64>,
    /// Disk alarm below this many free bytes on the data directory's file system.
    pub disk_free_limit_bytes: Option<u64>,
    /// Space the store sets aside in the data directory for the writes it makes while the
    /// disk is full (0: none). Read by `warren serve` when it opens the store.
    pub store_reserve_bytes: Option<u64>,
    /// Memory one queue may hold in ready messages before new ones go to the store.
    pub queue_memory_budget_bytes: Option<u64>,
    /// Memory all queues together may hold in ready messages before new ones go to the
    /// store.
    pub memory_budget_bytes: Option<u64>,
    /// `[tls]`: AMQP over TLS on its own port, beside the plain listener.
    pub tls: Option<TlsFile>,
    /// `[http_tls]`: the management API over HTTPS on its own port, beside the plain
    /// HTTP listener (which `warren ctl` uses on this machine).
    pub http_tls: Option<TlsFile>,
    /// `[cluster]`: this node is a member of a replicated cluster (see
    /// [`crate::cluster::settings`]).
    pub cluster: Option<ClusterFile>,
    /// `[server_properties]`: strings sent in `connection.start` over the built-in ones
    /// (`product`, `version`, `platform`, ...) or beside them, as RabbitMQ's
    /// `server_properties` setting.
    pub server_properties: Option<std::collections::BTreeMap<String, String>>,
}

/// A `[tls]` or `[http_tls]` section: RabbitMQ's `ssl_options` names.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The port (5671 for AMQPS, 15671 for HTTPS if not given).
    pub port: Option<u16>,
    /// PEM file: the server certificate, then its intermediates.
    pub certfile: Option<PathBuf>,
    /// PEM file: the server certificate's private key.
    pub keyfile: Option<PathBuf>,
    /// PEM file: the CAs that client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
    /// "verify_none" (the default) or "verify_peer".
    pub verify: Option<Verify>,
    /// With verify_peer, refuse clients that send no certificate (default false).
    pub fail_if_no_peer_cert: Option<bool>,
    /// A socket must complete the TLS handshake within this long (default 5000).
    pub handshake_timeout_ms: Option<u64>,
    /// Versions offered: "tlsv1.3", "tlsv1.2" (default both).
    pub versions: Option<Vec<TlsVersion>>,
}

impl TlsFile {
    /// The listener's settings; `section` names it in errors.
    fn settings(self, section: &str, default_port: u16) -> Result<TlsSettings, String> {
        let (Some(certfile), Some(keyfile)) = (self.certfile, self.keyfile) else {
            return Err(format!("[{section}] needs certfile and keyfile"));
        };
        let mut s = TlsSettings::new(self.port.unwrap_or(default_port), certfile, keyfile);
        s.cacertfile = self.cacertfile;
        s.verify = self.verify.unwrap_or(s.verify);
        s.fail_if_no_peer_cert = self.fail_if_no_peer_cert.unwrap_or(false);
        s.handshake_timeout_ms = self.handshake_timeout_ms.unwrap_or(s.handshake_timeout_ms);
        s.versions = self.versions.unwrap_or(s.versions);
        s.validate().map_err(|e| format!("[{section}] {e}"))?;
        Ok(s)
    }

    /// Makes the file paths relative to `dir` (the config file's directory) absolute.
    fn resolve(&mut self, dir: &Path) {
        for path in [&mut self.certfile, &mut self.keyfile, &mut self.cacertfile]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }
}

impl FileConfig {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut file: FileConfig =
            toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
        // Certificate paths are read relative to the config file, wherever warren runs.
        let dir = path.parent().unwrap_or(Path::new("."));
        for section in [&mut file.tls, &mut file.http_tls].into_iter().flatten() {
            section.resolve(dir);
        }
        Ok(file)
    }

    /// Applies the file's settings over the defaults in `config`.
    pub fn apply(self, config: &mut ServerConfig) -> Result<(), String> {
        if let Some(v) = self.bind {
            config.bind = v;
        }
        if let Some(v) = self.amqp_port {
            config.amqp_port = v;
        }
        if let Some(v) = self.http_port {
            config.http_port = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.max_connections {
            if v == 0 {
                return Err("max_connections must be at least 1".into());
            }
            config.max_connections = v;
        }
        if let Some(v) = self.send_timeout_ms {
            if v == 0 {
                return Err("send_timeout_ms must be at least 1".into());
            }
            config.send_timeout_ms = v;
        }
        if let Some(v) = self.max_handshakes_per_address {
            config.max_handshakes_per_address = v;
        }
        if let Some(v) = self.frame_max_bytes {
            if v < crate::proto::constants::FRAME_MIN_SIZE {
                return Err(format!(
                    "frame_max_bytes must be at least {}",
                    crate::proto::constants::FRAME_MIN_SIZE
                ));
            }
            config.connection.frame_max_bytes = v;
        }
        if let Some(v) = self.channel_max {
            if v == 0 {
                return Err("channel_max must be at least 1".into());
            }
            config.connection.channel_max = v;
        }
        if let Some(v) = self.heartbeat_s {
            config.connection.heartbeat_s = v;
        }
        if let Some(v) = self.max_message_bytes {
            config.connection.max_message_bytes = v;
        }
        if let Some(props) = &self.server_properties {
            crate::proto::connection::override_server_properties(
                &mut config.connection.server_properties,
                props.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )?;
        }
        if let Some(v) = self.default_vhost {
            config.broker.default_vhost = v;
        }
        if let Some(v) = self.default_user {
            config.broker.default_user = v;
        }
        if let Some(v) = self.default_pass {
            config.broker.default_password = v;
        }
        if let Some(v) = self.loopback_users {
            config.broker.loopback_users = v;
        }
        if let Some(v) = self.memory_high_watermark {
            if v.is_nan() || v <= 0.0 {
                return Err("memory_high_watermark must be above 0".into());
            }
            config.broker.alarms.memory_high_watermark = v;
        }
        if let Some(v) = self.disk_free_limit_bytes {
            config.broker.alarms.disk_free_limit_bytes = v;
        }
        if let Some(v) = self.queue_memory_budget_bytes {
            config.broker.memory.queue_memory_budget_bytes = v;
        }
        if let Some(v) = self.memory_budget_bytes {
            config.broker.memory.memory_budget_bytes = v;
        }
        if let Some(v) = self.tls {
            config.tls = Some(v.settings("tls", tls::DEFAULT_AMQPS_PORT)?);
        }
        if let Some(v) = self.http_tls {
            config.http_tls = Some(v.settings("http_tls", tls::DEFAULT_HTTPS_PORT)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_settings_apply_and_unknown_keys_are_refused() {
        let file: FileConfig =
            toml::from_str("amqp_port = 5999\nheartbeat_s = 10\nloopback_users = []").unwrap();
        let mut config = ServerConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(config.amqp_port, 5999);
        assert_eq!(config.connection.heartbeat_s, 10);
        assert!(config.broker.loopback_users.is_empty());
        assert!(toml::from_str::<FileConfig>("amqp_prot = 1").is_err());
        let bad: FileConfig = toml::from_str("frame_max_bytes = 100").unwrap();
        assert!(bad.apply(&mut ServerConfig::default()).is_err());
    }

    #[test]
    fn server_properties_override_the_built_in_ones_within_a_frame() {
        let file: FileConfig = toml::from_str(
            "[server_properties]\nproduct = \"RabbitMQ\"\nsupport = \"ops@example.com\"",
        )
        .unwrap();
        let mut config = ServerConfig::default();
        file.apply(&mut config).unwrap();
        let props = &config.connection.server_properties;
        let text = |k: &str| props.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        assert_eq!(text("product").as_deref(), Some("RabbitMQ"));
        assert_eq!(text("support").as_deref(), Some("ops@example.com"));
        assert_eq!(text("platform").as_deref(), Some("Rust"), "the rest stays");
        assert_eq!(
            props.iter().filter(|(k, _)| **k == "product").count(),
            1,
            "replaced, not added"
        );
        assert!(props.get("capabilities").is_some());
        let long = format!(
            "[server_properties]\ninformation = \"{}\"",
            "x".repeat(4000)
        );
        for bad in [
            "[server_properties]\ncapabilities = \"none\"",
            "[server_properties]\n\"\" = \"x\"",
            long.as_str(),
        ] {
            let file: FileConfig = toml::from_str(bad).unwrap();
            assert!(
                file.apply(&mut ServerConfig::default()).is_err(),
                "{bad:.60}"
            );
        }
    }

    #[test]
    fn slow_peer_and_handshake_limits_are_read() {
        let file: FileConfig = toml::from_str(
            "send_timeout_ms = 2000\nmax_handshakes_per_address = 3\nstore_reserve_bytes = 0",
        )
        .unwrap();
        assert_eq!(file.store_reserve_bytes, Some(0));
        let mut config = ServerConfig::default();
        assert_eq!(config.send_timeout_ms, 15_000, "RabbitMQ's default");
        file.apply(&mut config).unwrap();
        assert_eq!(config.send_timeout_ms, 2000);
        assert_eq!(config.max_handshakes_per_address, 3);
        let zero: FileConfig = toml::from_str("send_timeout_ms = 0").unwrap();
        assert!(zero.apply(&mut ServerConfig::default()).is_err());
    }

    #[test]
    fn tls_sections_take_rabbitmqs_names_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.toml");
        std::fs::write(
            &path,
            "[tls]\ncertfile = \"server.pem\"\nkeyfile = \"/etc/k.pem\"\ncacertfile = \"ca.pem\"\n\
             verify = \"verify_peer\"\nfail_if_no_peer_cert = true\nversions = [\"tlsv1.3\"]\n\
             [http_tls]\ncertfile = \"c\"\nkeyfile = \"k\"\nport = 8443\n",
        )
        .unwrap();
        let mut config = ServerConfig::default();
        FileConfig::load(&path).unwrap().apply(&mut config).unwrap();
        let amqps = config.tls.unwrap();
        assert_eq!(amqps.port, 5671);
        assert_eq!(
            amqps.certfile,
            dir.path().join("server.pem"),
            "relative to the file"
        );
        assert_eq!(amqps.keyfile, PathBuf::from("/etc/k.pem"));
        assert_eq!(amqps.verify, Verify::VerifyPeer);
        assert!(amqps.fail_if_no_peer_cert);
        assert_eq!(amqps.versions, vec![TlsVersion::Tls13]);
        assert_eq!(amqps.handshake_timeout_ms, 5000);
        let https = config.http_tls.unwrap();
        assert_eq!((https.port, https.verify), (8443, Verify::VerifyNone));
        for bad in [
            "[tls]\ncertfile = \"c\"",
            "[tls]\ncertfile = \"c\"\nkeyfile = \"k\"\nverify = \"verify_peer\"",
            "[tls]\ncertfile = \"c\"\nkeyfile = \"k\"\nversions = [\"tlsv1.1\"]",
            "[tls]\ncertfile = \"c\"\nkeyfile = \"k\"\nssl_port = 1",
        ] {
            let refused = toml::from_str::<FileConfig>(bad)
                .map_err(|e| e.to_string())
                .and_then(|f| f.apply(&mut ServerConfig::default()));
            assert!(refused.is_err(), "{bad}");
        }
    }

    #[test]
    fn the_sample_config_and_its_commented_tls_example_parse() {
        let text = include_str!("../contrib/warren.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        file.apply(&mut ServerConfig::default()).unwrap();
        let start = text.find("# [tls]").unwrap();
        let example: String = text[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
            .collect::<Vec<_>>()
            .join("\n");
        let file: FileConfig = toml::from_str(&example).unwrap();
        let mut config = ServerConfig::default();
        file.apply(&mut config).unwrap();
        assert_eq!(
            config.tls.map(|t| (t.port, t.verify)),
            Some((5671, Verify::VerifyPeer))
        );
        assert_eq!(config.http_tls.map(|t| t.port), Some(15671));
    }

    #[test]
    fn sync_policy_is_read_by_name() {
        let file: FileConfig = toml::from_str("sync = \"none\"").unwrap();
        assert_eq!(file.sync, Some(SyncPolicy::None));
        let file: FileConfig = toml::from_str("sync = \"batch\"").unwrap();
        assert_eq!(file.sync, Some(SyncPolicy::Batch));
        assert!(toml::from_str::<FileConfig>("sync = \"always\"").is_err());
    }
}
