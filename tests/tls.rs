//! AMQPS and HTTPS end to end: a real `warren serve` with certificates made here by rcgen
//! (a CA, server certificates, client certificates), and rustls clients that check what
//! a client of the broker would see: the AMQP handshake over TLS, the chain the server
//! presents, client certificates with `verify_peer`, the versions offered, the handshake
//! timeout and its count against the handshake limit, certificate reload on SIGHUP and on
//! a change of the files, with connections opened before a reload still working.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

use common::{RawClient, Server};

/// A certificate authority that signs server and client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate for `localhost` and 127.0.0.1, valid now.
    fn server(&self) -> Leaf {
        self.leaf("localhost", None)
    }

    /// A certificate for `name`, valid in the years given (else from 1975 to 4096).
    fn leaf(&self, name: &str, years: Option<(i32, i32)>) -> Leaf {
        let mut params =
            CertificateParams::new(vec![name.to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        if let Some((from, to)) = years {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// The files a broker's TLS section names, in one directory.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the server's chain and key as `server.pem` and `server.key`, by renaming new
    /// files over them, as certificate tools do.
    fn install(&self, server: &Leaf) {
        replace(&self.path("server.pem"), &server.cert);
        replace(&self.path("server.key"), &server.key);
    }

    /// Writes the CA file clients are verified against.
    fn trust_clients_of(&self, ca: &Ca) {
        replace(&self.path("clients-ca.pem"), &ca.pem);
    }

    /// Writes `warren.toml` with `top` lines, a `[tls]` and an `[http_tls]` section over
    /// these files, with `extra` lines in `[tls]`, and returns the flags that start a
    /// broker with it.
    fn config(&self, top: &str, extra: &str) -> Vec<String> {
        let text = format!(
            "{top}\n\
             [tls]\ncertfile = \"server.pem\"\nkeyfile = \"server.key\"\n{extra}\n\
             [http_tls]\ncertfile = \"server.pem\"\nkeyfile = \"server.key\"\n"
        );
        std::fs::write(self.path("warren.toml"), text).unwrap();
        vec![
            "--config".into(),
            self.path("warren.toml").display().to_string(),
            "--amqps-port".into(),
            "0".into(),
            "--https-port".into(),
            "0".into(),
        ]
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(files: &Files, extra: &str) -> Server {
    start_with(files, "", extra)
}

fn start_with(files: &Files, top: &str, extra: &str) -> Server {
    let args = files.config(top, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start_with(&args);
    assert!(
        server.listeners.contains_key("AMQPS"),
        "{:?}",
        server.listeners
    );
    assert!(
        server.listeners.contains_key("HTTPS"),
        "{:?}",
        server.listeners
    );
    server
}

fn amqps_port(server: &Server) -> u16 {
    server.listeners["AMQPS"]
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `ca`, presenting `client` if given, offering
/// `versions`.
fn client_config(
    ca: &Ca,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = vec![CertificateDer::from_pem_slice(leaf.cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    Arc::new(config)
}

fn trusting(ca: &Ca) -> Arc<ClientConfig> {
    client_config(ca, None, rustls::DEFAULT_VERSIONS)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `port` and completes the TLS handshake, as the client sees it: with TLS
/// 1.3 the server may still refuse the client's certificate afterwards.
fn tls_connect(port: u16, config: Arc<ClientConfig>) -> Result<Tls, String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(StreamOwned::new(conn, tcp))
}

/// Whether the broker answers the AMQP protocol header over `tls` with connection.start.
fn amqp_answers(mut tls: Tls) -> bool {
    if tls.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(tls.read(&mut first), Ok(1) if first[0] == 1)
}

/// An AMQP connection over TLS, opened as guest.
fn open_amqps(port: u16, config: Arc<ClientConfig>) -> RawClient<Tls> {
    let tls = tls_connect(port, config).unwrap();
    let mut c = RawClient::over(tls);
    c.handshake("guest", "guest", "/", 0);
    c
}

/// The certificate the server at `port` presents to a client trusting `ca`.
fn presented_certificate(port: u16, ca: &Ca) -> Result<Vec<u8>, String> {
    let tls = tls_connect(port, trusting(ca))?;
    let certs = tls.conn.peer_certificates().ok_or("no certificate")?;
    Ok(certs[0].to_vec())
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Declares `queue`, publishes `body` to it and gets it back, over `c`'s channel 1.
fn round_trip<S: Read + Write>(c: &mut RawClient<S>, queue: &str, body: &[u8]) {
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            ..Default::default()
        }),
    );
    let (_, ok) = c.expect_method();
    assert!(matches!(ok, Method::QueueDeclareOk(_)), "{ok:?}");
    c.publish(1, "", queue, BasicProperties::default(), body);
    c.send_method(
        1,
        Method::BasicGet(BasicGet {
            queue: queue.into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let (_, m, _, got) = c.expect_content();
    assert!(matches!(m, Method::BasicGetOk(_)), "{m:?}");
    assert_eq!(got, body);
}

/// `GET path` over HTTPS as guest; the status line and the body.
fn https_get(port: u16, ca: &Ca, path: &str) -> (String, String) {
    let mut tls = tls_connect(port, trusting(ca)).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // The server ends the TLS session after the response (Connection: close); a peer
    // that drops TCP without close_notify is an error to rustls, but the response is in.
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    // The body is chunked or sized; the JSON is between its first '{' or '[' and the end.
    let body = body
        .find(['{', '['])
        .map_or(String::new(), |i| body[i..].to_string());
    (status, body)
}

fn hang_up(server: &Server) {
    let status = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `warren serve` on ports the kernel picks with `args` (a config file) until it
/// exits on its own, as it must for a configuration it refuses.
fn serve_until_it_stops(args: &[String]) -> std::process::Output {
    let data = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "serve",
            "--amqp-port",
            "0",
            "--http-port",
            "0",
            "--data-dir",
        ])
        .arg(data.path())
        .args(args)
        .env("WARREN_RUNTIME_DIR", data.path().join("run"))
        .env("WARREN_LOG", "warn")
        .output()
        .unwrap()
}

/// Waits up to `limit` for `f` to hold.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn amqp_runs_over_tls_beside_the_plain_port_and_https_serves_the_api() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    files.install(&ca.server());
    let server = start(&files, "");
    let port = amqps_port(&server);
    assert_ne!(port, server.port);

    let mut c = open_amqps(port, trusting(&ca));
    c.open_channel(1);
    round_trip(&mut c, "over-tls", b"hello over TLS");
    // The plain listener keeps working beside it.
    let mut plain = RawClient::open(server.port);
    plain.open_channel(1);
    round_trip(&mut plain, "over-tcp", b"hello over TCP");

    // The management API over HTTPS lists the listeners as RabbitMQ names them.
    let https = server.listeners["HTTPS"];
    let (status, body) = https_get(https, &ca, "/api/overview");
    assert!(status.contains(" 200 "), "{status}: {body}");
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listeners = overview["listeners"].as_array().unwrap();
    let port_of = |protocol: &str| {
        listeners
            .iter()
            .find(|l| l["protocol"] == protocol)
            .map(|l| l["port"].as_u64().unwrap() as u16)
    };
    assert_eq!(port_of("amqp"), Some(server.port));
    assert_eq!(port_of("amqp/ssl"), Some(port));
    assert_eq!(port_of("http"), Some(server.http_port));
    assert_eq!(port_of("https"), Some(https));
    let (status, _) = https_get(
        https,
        &ca,
        &format!("/api/health/checks/port-listener/{port}"),
    );
    assert!(status.contains(" 200 "), "{status}");

    // The connection listing tells TLS connections by their listener and session.
    let (_, body) = https_get(https, &ca, "/api/connections");
    let connections: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let over_tls: Vec<_> = connections.iter().filter(|c| c["ssl"] == true).collect();
    let plain_ones: Vec<_> = connections.iter().filter(|c| c["ssl"] == false).collect();
    assert_eq!((over_tls.len(), plain_ones.len()), (1, 1), "{body}");
    assert_eq!(over_tls[0]["port"], port);
    assert!(
        over_tls[0]["name"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}"))
    );
    assert!(
        over_tls[0]["ssl_protocol"]
            .as_str()
            .unwrap()
            .starts_with("tlsv1.")
    );
    assert!(
        over_tls[0]["ssl_cipher"]
            .as_str()
            .unwrap()
            .starts_with("TLS")
    );
    assert_eq!(plain_ones[0]["port"], server.port);
    assert!(plain_ones[0]["ssl_protocol"].is_null());
    // Plain HTTP stays up for `warren ctl`.
    assert!(server.ctl_ok(&["status"]).contains("protocol: amqp/ssl"));

    // Both versions are offered; the client's pick is used.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tls = tls_connect(port, client_config(&ca, None, &[version])).unwrap();
        assert_eq!(tls.conn.protocol_version(), Some(version.version));
        assert!(amqp_answers(tls));
    }
}

#[test]
fn clients_refuse_a_server_certificate_from_another_ca_or_expired() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    let expired = ca.leaf("localhost", Some((2001, 2002)));
    files.install(&expired);
    let server = start(&files, "");
    let port = amqps_port(&server);
    let Err(e) = tls_connect(port, trusting(&ca)) else {
        panic!("an expired certificate was taken");
    };
    assert!(e.to_lowercase().contains("expired"), "{e}");

    files.install(&ca.server());
    hang_up(&server);
    assert!(
        eventually(Duration::from_secs(10), || tls_connect(port, trusting(&ca))
            .is_ok()),
        "a valid certificate after the reload"
    );
    let stranger = Ca::new("another CA");
    let Err(e) = tls_connect(port, trusting(&stranger)) else {
        panic!("a certificate of an unknown issuer was taken");
    };
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn verify_peer_with_fail_if_no_peer_cert_takes_only_clients_of_the_trusted_ca() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    let client_ca = Ca::new("client CA");
    files.install(&ca.server());
    files.trust_clients_of(&client_ca);
    let server = start(
        &files,
        "cacertfile = \"clients-ca.pem\"\nverify = \"verify_peer\"\nfail_if_no_peer_cert = true",
    );
    let port = amqps_port(&server);
    let good = client_ca.leaf("app", None);
    let stranger = Ca::new("stranger CA").leaf("app", None);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let without = client_config(&ca, None, &[version]);
        assert!(
            tls_connect(port, without).map_or(true, |tls| !amqp_answers(tls)),
            "no client certificate ({version:?})"
        );
        let other = client_config(&ca, Some(&stranger), &[version]);
        assert!(
            tls_connect(port, other).map_or(true, |tls| !amqp_answers(tls)),
            "a client certificate of another CA ({version:?})"
        );
        let config = client_config(&ca, Some(&good), &[version]);
        assert!(
            amqp_answers(tls_connect(port, config).unwrap()),
            "{version:?}"
        );
    }
    let mut c = open_amqps(
        port,
        client_config(&ca, Some(&good), rustls::DEFAULT_VERSIONS),
    );
    c.open_channel(1);
    round_trip(&mut c, "client-cert", b"with a client certificate");
}

#[test]
fn verify_peer_without_fail_if_no_peer_cert_takes_certless_clients_but_checks_certificates() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    files.install(&ca.server());
    files.trust_clients_of(&ca);
    let server = start(
        &files,
        "cacertfile = \"clients-ca.pem\"\nverify = \"verify_peer\"",
    );
    let port = amqps_port(&server);
    assert!(amqp_answers(tls_connect(port, trusting(&ca)).unwrap()));
    let stranger = Ca::new("stranger CA").leaf("app", None);
    let config = client_config(&ca, Some(&stranger), rustls::DEFAULT_VERSIONS);
    assert!(tls_connect(port, config).map_or(true, |tls| !amqp_answers(tls)));
}

/// A TLS 1.1 ClientHello (no supported_versions extension), as an old client sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version: TLS 1.1
    hello.extend_from_slice(&[7u8; 32]); // random
    hello.push(0); // no session id
    // TLS_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
    hello.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0xc0, 0x13]);
    hello.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&(hello.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn tls_1_0_and_1_1_are_not_offered_and_versions_narrow_the_offer_on_reload() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    files.install(&ca.server());
    let server = start(&files, "");
    let port = amqps_port(&server);

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.write_all(&tls11_client_hello()).unwrap();
    let mut reply = [0u8; 7];
    tcp.read_exact(&mut reply).unwrap();
    // An alert record (21), fatal (2): no ServerHello (a handshake record, 22).
    assert_eq!((reply[0], reply[5]), (21, 2), "{reply:?}");
    let tls12 = || client_config(&ca, None, &[&rustls::version::TLS12]);
    assert!(amqp_answers(tls_connect(port, tls12()).unwrap()));

    // `versions` read again on SIGHUP narrows what new connections are offered.
    files.config("", "versions = [\"tlsv1.3\"]");
    hang_up(&server);
    assert!(
        eventually(Duration::from_secs(10), || tls_connect(port, tls12())
            .is_err()),
        "TLS 1.2 is no longer offered"
    );
    let tls13 = client_config(&ca, None, &[&rustls::version::TLS13]);
    assert!(amqp_answers(tls_connect(port, tls13).unwrap()));
}

#[test]
fn a_socket_that_never_speaks_tls_is_dropped_and_counts_as_an_unfinished_handshake() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    files.install(&ca.server());
    let server = start_with(
        &files,
        "max_handshakes_per_address = 2",
        "handshake_timeout_ms = 1000",
    );
    let port = amqps_port(&server);
    // Two silent sockets take both of the address's handshake slots.
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        tls_connect(port, trusting(&ca)).is_err(),
        "a third socket from the address is refused while two handshakes are pending"
    );
    for mut s in silent {
        let mut byte = [0u8; 1];
        let eof = matches!(s.read(&mut byte), Ok(0) | Err(_));
        assert!(eof, "the silent socket is closed");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after the handshake timeout: {waited:?}"
    );
    // Their slots are free again.
    assert!(eventually(Duration::from_secs(5), || {
        tls_connect(port, trusting(&ca)).is_ok_and(amqp_answers)
    }));
}

#[test]
fn certificates_reload_on_sighup_and_on_file_change_while_open_connections_go_on() {
    let files = Files::new();
    let first = Ca::new("first CA");
    files.install(&first.server());
    let server = start(&files, "");
    let port = amqps_port(&server);
    let https = server.listeners["HTTPS"];
    let mut before = open_amqps(port, trusting(&first));
    before.open_channel(1);
    round_trip(&mut before, "before-reload", b"one");

    // SIGHUP: new connections get the second CA's certificate at once.
    let second = Ca::new("second CA");
    let second_server = second.server();
    files.install(&second_server);
    hang_up(&server);
    assert!(
        eventually(Duration::from_secs(10), || {
            presented_certificate(port, &second).is_ok_and(|c| c == der_of(&second_server.cert))
        }),
        "AMQPS presents the new certificate after SIGHUP"
    );
    assert!(
        tls_connect(port, trusting(&first)).is_err(),
        "not the old one"
    );
    assert!(
        eventually(Duration::from_secs(10), || presented_certificate(
            https, &second
        )
        .is_ok()),
        "HTTPS too"
    );
    // The connection opened before the reload carries messages as before.
    round_trip(&mut before, "before-reload", b"two");

    // Broken files on SIGHUP: the certificate in force stays, and so does the broker.
    replace(&files.path("server.key"), "not a key");
    hang_up(&server);
    std::thread::sleep(Duration::from_millis(500));
    let mut during = open_amqps(port, trusting(&second));
    during.open_channel(1);
    round_trip(&mut during, "broken-files", b"three");

    // The watcher: files changed on disk, no signal.
    let third = Ca::new("third CA");
    let third_server = third.server();
    files.install(&third_server);
    assert!(
        eventually(Duration::from_secs(15), || {
            presented_certificate(port, &third).is_ok_and(|c| c == der_of(&third_server.cert))
        }),
        "the watcher put the new files in force"
    );
    round_trip(&mut before, "before-reload", b"four");
    round_trip(&mut during, "broken-files", b"five");
}

#[test]
fn broken_certificate_files_stop_the_start_with_a_message_naming_them() {
    let files = Files::new();
    let ca = Ca::new("warren test CA");
    let server_cert = ca.server();
    let other = ca.server();
    let cases = [
        ("missing key", None, "cannot read keyfile"),
        (
            "key of another certificate",
            Some(other.key.as_str()),
            "does not belong",
        ),
        ("not PEM", Some("hello"), "holds no private key"),
    ];
    for (what, key, message) in cases {
        replace(&files.path("server.pem"), &server_cert.cert);
        let _ = std::fs::remove_file(files.path("server.key"));
        if let Some(key) = key {
            replace(&files.path("server.key"), key);
        }
        let out = serve_until_it_stops(&files.config("", ""));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: started anyway");
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        assert!(
            stderr.contains(message) && stderr.contains("server.key"),
            "{what}: {stderr}"
        );
    }
    // A port in use is named too.
    replace(&files.path("server.key"), &server_cert.key);
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port().to_string();
    let mut args = files.config("", "");
    args[3] = taken_port.clone();
    let out = serve_until_it_stops(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot listen for AMQPS on port {taken_port}")),
        "{stderr}"
    );

    // A flag for a listener that is not configured is a usage error.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--amqps-port", "5671", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[tls]"));
}
