//! A rustls server configuration from [`TlsSettings`]: the chain and key read from PEM
//! files, client verification against the CA file, the protocol versions offered. Every
//! failure is a sentence naming the file and what is wrong with it.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsSettings, TlsVersion, Verify};

/// The largest PEM file read. A chain of a dozen 4096-bit RSA certificates is under
/// 30 KiB; a CA bundle (every public root) about 250 KiB.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Builds the rustls configuration `settings` describe, offering `alpn` (empty: no ALPN).
pub(super) fn server_config(
    settings: &TlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    settings.validate()?;
    let chain = read_certificates(&settings.certfile, "certfile")?;
    let key = read_key(&settings.keyfile)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = settings
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match (settings.verify, &settings.cacertfile) {
        (Verify::VerifyPeer, Some(cacertfile)) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(cacertfile, "cacertfile")? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "cacertfile {}: unusable CA certificate: {e}",
                        cacertfile.display()
                    )
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !settings.fail_if_no_peer_cert {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("cacertfile {}: {e}", cacertfile.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        // `validate` refused verify_peer without a CA file.
        (Verify::VerifyPeer, None) | (Verify::VerifyNone, _) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "the private key in keyfile {} does not belong to the certificate in certfile {}",
            settings.keyfile.display(),
            settings.certfile.display()
        ),
        e => format!(
            "certfile {} and keyfile {}: {e}",
            settings.certfile.display(),
            settings.keyfile.display()
        ),
    })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Reads a file of at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "{what} {} is larger than {MAX_PEM_BYTES} bytes: not a PEM file of certificates or a key",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The certificates of a PEM file, in order; at least one.
fn read_certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_pem(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {} holds no certificate (no \"BEGIN CERTIFICATE\" section)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_pem(path, "keyfile")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!(
            "keyfile {} holds no private key (no \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" section)",
            path.display()
        ),
        e => format!("keyfile {}: invalid PEM: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    /// A self-signed certificate and its key, as PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn settings(files: &Files, cert: &str, key: &str) -> TlsSettings {
        TlsSettings::new(
            0,
            files.write("cert.pem", cert),
            files.write("key.pem", key),
        )
    }

    #[test]
    fn a_matching_chain_and_key_build_a_config_offering_the_versions_asked() {
        let files = Files::new();
        let (cert, key) = self_signed("localhost");
        let mut s = settings(&files, &cert, &key);
        let config = server_config(&s, &[b"http/1.1"]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        s.versions = vec![TlsVersion::Tls13];
        assert!(server_config(&s, &[]).is_ok());
    }

    #[test]
    fn each_broken_file_is_named_in_the_error() {
        let files = Files::new();
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("other");
        let missing = TlsSettings::new(0, files.dir.path().join("nope.pem"), "k".into());
        let e = server_config(&missing, &[]).unwrap_err();
        assert!(
            e.starts_with("cannot read certfile") && e.contains("nope.pem"),
            "{e}"
        );
        let e = server_config(&settings(&files, "not pem", &key), &[]).unwrap_err();
        assert!(e.contains("holds no certificate"), "{e}");
        let e = server_config(&settings(&files, &cert, &cert), &[]).unwrap_err();
        assert!(e.contains("holds no private key"), "{e}");
        let e = server_config(&settings(&files, &cert, &other_key), &[]).unwrap_err();
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let truncated = &cert[..cert.len() / 2];
        let e = server_config(&settings(&files, truncated, &key), &[]).unwrap_err();
        assert!(e.contains("invalid PEM"), "{e}");
        let mut s = settings(&files, &cert, &key);
        s.verify = Verify::VerifyPeer;
        s.cacertfile = Some(files.write("ca.pem", ""));
        let e = server_config(&s, &[]).unwrap_err();
        assert!(
            e.starts_with("cacertfile") && e.contains("no certificate"),
            "{e}"
        );
        let huge = "x".repeat(MAX_PEM_BYTES as usize + 1);
        let e = server_config(&settings(&files, &huge, &key), &[]).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
    }
}
