//! The HTTP API's protections: cross-site requests refused, no basic-auth challenge,
//! failed logins logged and slowed, a header-read timeout and a connection cap, exclusive
//! queues out of reach, and JSON tables bounded before anything is stored.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren::proto::method::*;

use crate::common::{RawClient, Server, listening_port};
use crate::{GUEST, http, raw_http};

const JSON: (&str, &str) = ("content-type", "application/json");

#[test]
fn state_changes_need_json_and_their_own_origin() {
    let server = Server::start();
    let url = |p: &str| format!("{}{p}", server.http_url());
    let q = url("/api/queues/%2F/guarded");
    let body = Some(r#"{"durable":false}"#);

    let form = raw_http(
        "PUT",
        &q,
        GUEST,
        &[("content-type", "application/x-www-form-urlencoded")],
        body,
    );
    assert_eq!(form.status, 415);
    assert_eq!(form.body["error"], "unsupported_media_type");
    let text = raw_http("PUT", &q, GUEST, &[("content-type", "text/plain")], body);
    assert_eq!(text.status, 415);
    let bare = raw_http("PUT", &q, GUEST, &[], None);
    assert_eq!(bare.status, 415);
    assert_eq!(http("GET", &q, GUEST, None).status, 404, "nothing created");
    let stop = raw_http(
        "POST",
        &url("/api/warren/stop_app"),
        GUEST,
        &[("content-type", "text/plain")],
        Some(""),
    );
    assert_eq!(stop.status, 415);
    let _still_accepting = RawClient::open(server.port);

    let custom = raw_http(
        "PUT",
        &q,
        GUEST,
        &[("x-requested-with", "XMLHttpRequest")],
        body,
    );
    assert_eq!(custom.status, 201, "{:?}", custom.body);
    let own_origin = format!("http://127.0.0.1:{}", server.http_port);
    let same = raw_http("PUT", &q, GUEST, &[JSON, ("origin", &own_origin)], body);
    assert_eq!(same.status, 204);
    let evil = [JSON, ("origin", "http://evil.example")];
    let foreign = raw_http("PUT", &q, GUEST, &evil, body);
    assert_eq!(foreign.status, 403);
    assert_eq!(foreign.body["error"], "forbidden");
    let foreign_delete = raw_http(
        "DELETE",
        &q,
        GUEST,
        &[("origin", "http://evil.example")],
        None,
    );
    assert_eq!(foreign_delete.status, 403);
    assert_eq!(http("GET", &q, GUEST, None).status, 200, "still there");
    // DELETE needs no content type (browsers always ask before sending one).
    assert_eq!(raw_http("DELETE", &q, GUEST, &[], None).status, 204);
    // Reads are not state changes.
    let read = raw_http(
        "GET",
        &url("/api/overview"),
        GUEST,
        &[("origin", "http://evil.example")],
        None,
    );
    assert_eq!(read.status, 200);
    // No challenge on any 401, so browsers never cache credentials for this origin.
    let anon = raw_http("PUT", &q, None, &[JSON], body);
    assert_eq!((anon.status, anon.challenge), (401, None));
}

#[test]
fn exclusive_queues_cannot_be_deleted_purged_bound_or_read_over_http() {
    let server = Server::start();
    let url = |p: &str| format!("{}{p}", server.http_url());
    let mut owner = RawClient::open(server.port);
    owner.open_channel(1);
    owner.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "mine".into(),
            exclusive: true,
            ..Default::default()
        }),
    );
    let (_, ok) = owner.expect_method();
    assert!(matches!(ok, Method::QueueDeclareOk(_)), "{ok:?}");
    let locked = |r: crate::Http| {
        assert_eq!(r.status, 400, "{:?}", r.body);
        let reason = r.body["reason"].as_str().unwrap_or_default().to_string();
        assert!(
            reason.contains("cannot obtain exclusive access to locked queue 'mine' in vhost '/'"),
            "{reason}"
        );
    };
    locked(http("DELETE", &url("/api/queues/%2F/mine"), GUEST, None));
    locked(http(
        "DELETE",
        &url("/api/queues/%2F/mine/contents"),
        GUEST,
        None,
    ));
    locked(http(
        "POST",
        &url("/api/bindings/%2F/e/amq.direct/q/mine"),
        GUEST,
        Some(json!({"routing_key": "k"})),
    ));
    locked(http(
        "POST",
        &url("/api/queues/%2F/mine/get"),
        GUEST,
        Some(json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})),
    ));
    locked(http(
        "PUT",
        &url("/api/queues/%2F/mine"),
        GUEST,
        Some(json!({"durable": false})),
    ));
    // The owner still has it.
    owner.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "mine".into(),
            passive: true,
            ..Default::default()
        }),
    );
    let (_, ok) = owner.expect_method();
    assert!(matches!(ok, Method::QueueDeclareOk(_)), "{ok:?}");
}

/// `{"a": {"a": ... 1 ...}}`, `depth` objects deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

#[test]
fn deep_or_large_json_tables_are_refused_before_anything_is_stored() {
    let server = Server::start();
    let url = |p: &str| format!("{}{p}", server.http_url());
    let put_queue = |name: &str, arguments: &str| {
        raw_http(
            "PUT",
            &url(&format!("/api/queues/%2F/{name}")),
            GUEST,
            &[JSON],
            Some(&format!(r#"{{"durable":true,"arguments":{arguments}}}"#)),
        )
    };
    let deep = put_queue("deep", &nested(100));
    assert_eq!(deep.status, 400);
    let reason = deep.body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("nested deeper than 32 levels"), "{reason}");
    // Deeper than JSON parsing itself goes: refused as invalid JSON.
    let deeper = put_queue("deeper", &nested(5_000));
    assert_eq!(deeper.status, 400);
    assert!(
        deeper.body["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("invalid JSON")
    );
    let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(200 * 1024));
    let large = put_queue("large", &big);
    assert_eq!(large.status, 400);
    assert!(
        large.body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("larger than 131072 bytes"),
        "{:?}",
        large.body
    );
    let long_key = put_queue("long-key", &format!(r#"{{"{}":1}}"#, "k".repeat(300)));
    assert_eq!(long_key.status, 400);
    let within = put_queue("within", &nested(20));
    assert_eq!(within.status, 201, "{:?}", within.body);

    // Published headers and properties.
    let publish = |properties: Value| {
        http(
            "POST",
            &url("/api/exchanges/%2F/amq.default/publish"),
            GUEST,
            Some(json!({"routing_key": "within", "payload": "x",
                        "payload_encoding": "string", "properties": properties})),
        )
    };
    let deep_headers: Value = serde_json::from_str(&nested(60)).unwrap();
    assert_eq!(publish(json!({"headers": deep_headers})).status, 400);
    assert_eq!(
        publish(json!({"headers": {"h": "a".repeat(200 * 1024)}})).status,
        400
    );
    assert_eq!(
        publish(json!({"content_type": "t".repeat(300)})).status,
        400
    );
    // Binding arguments.
    let bind = raw_http(
        "POST",
        &url("/api/bindings/%2F/e/amq.headers/q/within"),
        GUEST,
        &[JSON],
        Some(&format!(r#"{{"arguments":{}}}"#, nested(50))),
    );
    assert_eq!(bind.status, 400);
    // Definitions: a bad table anywhere refuses the whole document.
    let doc = format!(
        r#"{{"queues":[{{"name":"ok","vhost":"/","durable":true,"arguments":{{}}}},
                      {{"name":"bad","vhost":"/","durable":true,"arguments":{}}}]}}"#,
        nested(40)
    );
    let import = raw_http("POST", &url("/api/definitions"), GUEST, &[JSON], Some(&doc));
    assert_eq!(import.status, 400);
    assert_eq!(
        server.ctl_ok(&["-q", "list_queues"]),
        "name\tmessages\nwithin\t0\n",
        "only the queue within the limits exists"
    );
    // Stored tables read back after a restart.
    let dir = server.kill();
    let again = Server::start_in(dir, &[]);
    assert_eq!(
        again.ctl_ok(&["-q", "list_queues"]),
        "name\tmessages\nwithin\t0\n"
    );
}

/// A `warren serve` whose log goes to a file.
struct LoggedServer {
    child: Child,
    http_port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedServer {
    /// Starts on ports the kernel picks.
    fn start() -> LoggedServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["serve", "--amqp-port", "0", "--http-port", "0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("start warren");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let http_port = loop {
            match lines.next() {
                Some(Ok(line)) => match listening_port(&line, "HTTP") {
                    Some(port) => break port,
                    None => continue,
                },
                _ => panic!(
                    "warren exited during start: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        LoggedServer {
            child,
            http_port,
            log,
            _dir: dir,
        }
    }
}

impl Drop for LoggedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn failed_logins_are_logged_with_the_peer_and_slowed_down() {
    let server = LoggedServer::start();
    let url = format!("http://127.0.0.1:{}/api/whoami", server.http_port);
    for _ in 0..3 {
        let r = raw_http("GET", &url, Some(("intruder", "guess")), &[], None);
        assert_eq!(r.status, 401);
    }
    let started = Instant::now();
    for _ in 0..3 {
        let r = raw_http("GET", &url, Some(("intruder", "guess")), &[], None);
        assert_eq!(r.status, 401);
    }
    let slowed = started.elapsed();
    assert!(
        slowed >= Duration::from_millis(700),
        "three more failures took only {slowed:?}"
    );
    // A name crafted to forge a log line is escaped.
    let r = raw_http("GET", &url, Some(("evil\nFORGED line", "x")), &[], None);
    assert_eq!(r.status, 401);
    let log = std::fs::read_to_string(&server.log).unwrap();
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("HTTP API login failed"))
        .collect();
    assert!(failures.len() >= 6, "{log}");
    assert!(failures[0].contains("127.0.0.1"), "{log}");
    assert!(failures[0].contains("intruder"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a user name wrote its own log line: {log}"
    );
}

/// A client socket from the loopback address `127.0.0.<host>`, so that one test can act as
/// several peers.
fn connect_from(host: u8, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let local = std::net::SocketAddr::from(([127, 0, 0, host], 0));
    let remote = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&remote.into()).unwrap();
    socket.into()
}

#[test]
fn idle_connections_time_out_and_connections_are_capped() {
    let server = Server::start();
    let port = server.http_port;
    let mut buf = [0u8; 256];

    // One peer gets at most 32 connections: the 33rd is closed at once, while another
    // peer is still served.
    let held: Vec<TcpStream> = (0..32).map(|_| connect_from(10, port)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = connect_from(10, port);
    let _ = refused.write_all(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n\r\n");
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(
        matches!(refused.read(&mut buf), Ok(0) | Err(_)),
        "a peer's 33rd connection was served"
    );
    let mut other = connect_from(11, port);
    other
        .write_all(b"GET /api/overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    other.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(held);
    drop(refused);
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    // Half a request head, then silence; and enough idle connections, from eight peers,
    // to fill every slot.
    let mut partial = connect_from(2, port);
    partial
        .write_all(b"GET /api/overview HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let idle: Vec<TcpStream> = (0..255)
        .map(|i| connect_from(2 + ((i + 1) / 32) as u8, port))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // One more is not served while the slots are held...
    let mut waiting = connect_from(1, port);
    waiting
        .write_all(b"GET /api/overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert!(
        waiting.read(&mut buf).is_err(),
        "a connection past the cap was served"
    );
    // ... while AMQP clients are unaffected.
    let mut amqp = RawClient::open(server.port);
    amqp.open_channel(1);
    // The header-read timeout closes the silent connections, which frees the slots.
    partial
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let n = partial.read(&mut buf).unwrap_or(0);
    let closed_after = started.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        closed_after >= Duration::from_secs(8) && closed_after < Duration::from_secs(20),
        "closed after {closed_after:?}"
    );
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = waiting.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    drop(idle);
}
