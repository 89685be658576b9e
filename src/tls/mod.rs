//! TLS for the AMQPS listener and the HTTPS management API: the settings an operator
//! gives (RabbitMQ's `ssl_options` names), rustls server configurations built from PEM
//! files ([`certs`]), and a holder that swaps in a new configuration when the files
//! change or on SIGHUP while connections already open keep theirs ([`reload`]).
//!
//! TLS is a byte transport only: the protocol and broker cores never see it. A connection
//! task reads and writes the decrypted stream exactly as it would a plain socket.

mod certs;
mod reload;

use std::path::PathBuf;

use serde::Deserialize;

pub use self::reload::Certs;

/// Whether clients must present a certificate (RabbitMQ's `ssl_options.verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// No client certificate is asked for.
    VerifyNone,
    /// A client certificate is asked for and must chain to `cacertfile`; whether one must
    /// be sent is `fail_if_no_peer_cert`.
    VerifyPeer,
}

/// A TLS protocol version that may be offered (RabbitMQ's `ssl_options.versions`).
/// TLS 1.0 and 1.1 are not among them: rustls does not implement them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "tlsv1.2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "tlsv1.3")]
    Tls13,
}

/// What one TLS listener serves: its certificate chain and key, how it checks clients,
/// and where it listens.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// The port (0 picks a free one).
    pub port: u16,
    /// PEM file with the server certificate first, then the intermediates that lead to
    /// the CA.
    pub certfile: PathBuf,
    /// PEM file with the server certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub keyfile: PathBuf,
    /// PEM file with the CA certificates that client certificates must chain to.
    pub cacertfile: Option<PathBuf>,
    /// Whether client certificates are asked for.
    pub verify: Verify,
    /// With `verify_peer`, refuse clients that send no certificate.
    pub fail_if_no_peer_cert: bool,
    /// A socket must complete its TLS handshake within this long (RabbitMQ's
    /// `ssl_handshake_timeout`).
    pub handshake_timeout_ms: u64,
    /// The protocol versions offered.
    pub versions: Vec<TlsVersion>,
}

/// The default AMQPS port (IANA's `amqps`).
pub const DEFAULT_AMQPS_PORT: u16 = 5671;
/// The default HTTPS port of the management API (RabbitMQ's `management.ssl.port`).
pub const DEFAULT_HTTPS_PORT: u16 = 15671;
/// RabbitMQ's `ssl_handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;

impl TlsSettings {
    /// Settings with RabbitMQ's defaults for a certificate and key: no client
    /// certificates, TLS 1.2 and 1.3.
    pub fn new(port: u16, certfile: PathBuf, keyfile: PathBuf) -> Self {
        TlsSettings {
            port,
            certfile,
            keyfile,
            cacertfile: None,
            verify: Verify::VerifyNone,
            fail_if_no_peer_cert: false,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            versions: vec![TlsVersion::Tls13, TlsVersion::Tls12],
        }
    }

    /// Checks what can be checked without reading the files.
    pub fn validate(&self) -> Result<(), String> {
        if self.verify == Verify::VerifyPeer && self.cacertfile.is_none() {
            return Err(
                "verify = \"verify_peer\" needs a cacertfile to verify clients against".into(),
            );
        }
        if self.fail_if_no_peer_cert && self.verify != Verify::VerifyPeer {
            return Err("fail_if_no_peer_cert = true needs verify = \"verify_peer\"".into());
        }
        if self.handshake_timeout_ms == 0 {
            return Err("handshake_timeout_ms must be at least 1".into());
        }
        if self.versions.is_empty() {
            return Err("versions must name at least one of \"tlsv1.2\", \"tlsv1.3\"".into());
        }
        Ok(())
    }

    /// The files the configuration is built from, watched for changes.
    pub fn files(&self) -> Vec<&PathBuf> {
        let mut files = vec![&self.certfile, &self.keyfile];
        files.extend(&self.cacertfile);
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_verification_needs_a_ca_and_refusing_certless_clients_needs_verification() {
        let mut s = TlsSettings::new(5671, "c.pem".into(), "k.pem".into());
        assert!(s.validate().is_ok());
        s.fail_if_no_peer_cert = true;
        assert!(s.validate().unwrap_err().contains("verify_peer"));
        s.verify = Verify::VerifyPeer;
        assert!(s.validate().unwrap_err().contains("cacertfile"));
        s.cacertfile = Some("ca.pem".into());
        assert!(s.validate().is_ok());
        assert_eq!(s.files().len(), 3);
        s.versions.clear();
        assert!(s.validate().is_err());
    }
}
