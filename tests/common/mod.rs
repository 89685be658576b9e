//! Shared helpers for end-to-end tests: start a real `warren serve` process on free ports,
//! and talk raw AMQP to it with warren's own codec.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{Frame, FrameDecoder, encode_content, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

/// The port of a `warren: <what> listening on <address>` line of `warren serve`.
pub fn listening_port(line: &str, what: &str) -> Option<u16> {
    let address = line.strip_prefix(&format!("warren: {what} listening on "))?;
    address
        .trim()
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.port())
}

/// What and where of a `warren: <what> listening on <address>` line.
fn listening_line(line: &str) -> Option<(String, u16)> {
    let (what, address) = line
        .strip_prefix("warren: ")?
        .split_once(" listening on ")?;
    let port = address.trim().parse::<std::net::SocketAddr>().ok()?.port();
    Some((what.to_string(), port))
}

/// A running `warren serve`, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    pub http_port: u16,
    /// Every listener announced on stdout by start-up (AMQP, AMQPS, HTTPS, HTTP), with
    /// its port.
    pub listeners: std::collections::HashMap<String, u16>,
    pub data_dir: tempfile::TempDir,
    /// Where it registers for `warren ctl` (its own, so that test servers stay out of
    /// the machine's registry).
    pub runtime_dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let data_dir = tempfile::tempdir().unwrap();
        Server::start_in(data_dir, extra)
    }

    /// Starts a server on an existing data directory.
    pub fn start_in(data_dir: tempfile::TempDir, extra: &[&str]) -> Server {
        Server::try_start_logging_to(data_dir, extra, Stdio::inherit())
            .unwrap_or_else(|(e, _)| panic!("{e}"))
    }

    /// Starts a server on an existing data directory with its log (stderr) going to `log`;
    /// on failure, says why and hands the data directory back.
    pub fn try_start_logging_to(
        data_dir: tempfile::TempDir,
        extra: &[&str],
        log: Stdio,
    ) -> Result<Server, (String, tempfile::TempDir)> {
        Server::try_start_limited(data_dir, extra, log, None)
    }

    /// Like [`Server::try_start_logging_to`], with the soft open-file limit the process
    /// starts with and, if given, a lower hard limit (set by the shell that execs it, so
    /// the pid is warren's).
    pub fn try_start_limited(
        data_dir: tempfile::TempDir,
        extra: &[&str],
        log: Stdio,
        nofile: Option<(u64, Option<u64>)>,
    ) -> Result<Server, (String, tempfile::TempDir)> {
        let mut command = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_warren")),
            Some((soft, hard)) => {
                // The soft limit is lowered first: a hard limit below it is refused.
                let hard = hard.map_or(String::new(), |h| format!(" && ulimit -H -n {h}"));
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -S -n {soft}{hard} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_warren"));
                c
            }
        };
        let runtime_dir = tempfile::tempdir().unwrap();
        let mut child = command
            .env("WARREN_RUNTIME_DIR", runtime_dir.path().join("run"))
            // The kernel picks free ports; the server says which on stdout.
            .args(["serve", "--amqp-port", "0", "--http-port", "0"])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(extra)
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start warren");
        let stdout = child.stdout.take().unwrap();
        // The HTTP API's line comes after the AMQP listener's: both are up then. Lines are
        // read on a thread, which keeps draining stdout so the child never blocks on a
        // full pipe, and the wait for them has a deadline.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            let mut listeners = std::collections::HashMap::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some((what, port)) = listening_line(&line) {
                    listeners.insert(what, port);
                }
                let amqp = listeners.get("AMQP").copied();
                if let (Some(http), Some(amqp)) = (listening_port(&line, "HTTP"), amqp)
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send((amqp, http, listeners.clone()));
                }
            }
        });
        let mut ports = (0, 0, std::collections::HashMap::new());
        let failure = match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(bound) => {
                ports = bound;
                None
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Some("warren did not start within 30 s".to_string())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                Some(format!(
                    "warren exited during start ({})",
                    child
                        .try_wait()
                        .ok()
                        .flatten()
                        .map_or("still running".to_string(), |s| s.to_string())
                ))
            }
        };
        if let Some(why) = failure {
            let _ = child.kill();
            let _ = child.wait();
            return Err((why, data_dir));
        }
        let (port, http_port, listeners) = ports;
        Ok(Server {
            child,
            port,
            http_port,
            listeners,
            data_dir,
            runtime_dir,
        })
    }

    /// Stops the process abruptly (SIGKILL) and hands back its data directory.
    pub fn kill(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data_dir, dir)
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks the process to stop (SIGTERM) and waits up to `grace` for it; kills it if it
    /// is still running then. Returns the data directory and whether it stopped by itself.
    pub fn terminate(mut self, grace: Duration) -> (tempfile::TempDir, bool) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        let mut stopped = false;
        while Instant::now() < deadline {
            if self.exit_status().is_some() {
                stopped = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().unwrap());
        (dir, stopped)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Base URL of the management HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Runs `warren ctl ARGS` against this server (found through its node file);
    /// returns (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("ctl")
            .args(args)
            .env("WARREN_DATA_DIR", self.data_dir.path())
            .env_remove("WARREN_NODE")
            .env_remove("WARREN_USERNAME")
            .env_remove("WARREN_PASSWORD")
            .output()
            .expect("run warren ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `warren ctl ARGS` and panics unless it succeeds; returns its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctl(args);
        assert_eq!(code, 0, "warren ctl {args:?} failed: {out}{err}");
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw AMQP client for wire-level tests, over a TCP socket or any other byte stream
/// (TLS over one).
pub struct RawClient<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
    decoder: FrameDecoder,
}

fn longstr(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

pub fn client_properties() -> FieldTable {
    let caps: FieldTable = [
        "authentication_failure_close",
        "consumer_cancel_notify",
        "publisher_confirms",
        "basic.nack",
        "connection.blocked",
    ]
    .into_iter()
    .map(|c| (c.to_string(), FieldValue::Bool(true)))
    .collect();
    [
        ("product".to_string(), longstr("warren-tests")),
        ("capabilities".to_string(), FieldValue::Table(caps)),
    ]
    .into_iter()
    .collect()
}

impl<S: Read + Write> RawClient<S> {
    /// Wraps a connected stream set up by the caller (its read timeout included).
    pub fn over(stream: S) -> RawClient<S> {
        RawClient {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(16 * 1024 * 1024),
        }
    }
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        RawClient::connect_to(&format!("127.0.0.1:{port}"))
    }

    pub fn connect_to(addr: &str) -> RawClient {
        RawClient::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// Wraps a connected socket (one set up by the caller: a source address, buffer
    /// sizes) with a 10 s read timeout.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(16 * 1024 * 1024),
        }
    }

    /// Connects and completes the handshake as guest on vhost "/".
    pub fn open(port: u16) -> RawClient {
        let mut c = RawClient::connect(port);
        c.handshake("guest", "guest", "/", 0);
        c
    }
}

impl<S: Read + Write> RawClient<S> {
    pub fn handshake(&mut self, user: &str, pass: &str, vhost: &str, heartbeat: u16) {
        self.send_raw(&PROTOCOL_HEADER);
        let (_, start) = self.expect_method();
        assert!(matches!(start, Method::ConnectionStart(_)), "{start:?}");
        self.start_ok(user, pass);
        let (_, tune) = self.expect_method();
        let Method::ConnectionTune(tune) = tune else {
            panic!("expected tune, got {tune:?}")
        };
        self.send_method(
            0,
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat,
            }),
        );
        self.send_method(
            0,
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: vhost.into(),
                ..Default::default()
            }),
        );
        let (_, ok) = self.expect_method();
        assert!(
            matches!(ok, Method::ConnectionOpenOk(_)),
            "expected open-ok, got {ok:?}"
        );
    }

    pub fn start_ok(&mut self, user: &str, pass: &str) {
        let mut response = vec![0u8];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(pass.as_bytes());
        self.send_method(
            0,
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: client_properties(),
                mechanism: "PLAIN".into(),
                response: Bytes::from(response),
                locale: "en_US".into(),
            }),
        );
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_method(&mut self, channel: u16, method: Method) {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.send_raw(&out);
    }

    pub fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        routing_key: &str,
        props: BasicProperties,
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        let m = Method::BasicPublish(BasicPublish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            ..Default::default()
        });
        encode_content(channel, &m, &props, body, 131_072, &mut out);
        self.send_raw(&out);
    }

    pub fn open_channel(&mut self, channel: u16) {
        self.send_method(channel, Method::ChannelOpen(ChannelOpen::default()));
        let (ch, m) = self.expect_method();
        assert_eq!(ch, channel);
        assert!(
            matches!(m, Method::ChannelOpenOk(_)),
            "expected channel.open-ok, got {m:?}"
        );
    }

    /// The next frame, or None when the server closed the socket.
    pub fn recv_frame(&mut self) -> Option<Frame> {
        match self.try_recv_frame() {
            Ok(frame) => frame,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// The next frame, None when the server closed the socket, or the read error (a
    /// timeout among them).
    pub fn try_recv_frame(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("server sent a malformed frame")
            {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next method frame (skipping heartbeats).
    pub fn expect_method(&mut self) -> (u16, Method) {
        loop {
            match self.recv_frame() {
                Some(Frame::Method { channel, method }) => return (channel, method),
                Some(Frame::Heartbeat { .. }) => continue,
                Some(other) => panic!("expected a method frame, got {other:?}"),
                None => panic!("connection closed while expecting a method"),
            }
        }
    }

    /// Reads a method with content: the method, its properties and its body.
    pub fn expect_content(&mut self) -> (u16, Method, BasicProperties, Vec<u8>) {
        let (channel, method) = self.expect_method();
        let Some(Frame::Header { header, .. }) = self.recv_frame() else {
            panic!("expected a content header")
        };
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            match self.recv_frame() {
                Some(Frame::Body { payload, .. }) => body.extend_from_slice(&payload),
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        (channel, method, header.properties, body)
    }

    /// Expects a connection.close; answers it and returns it.
    pub fn expect_connection_close(&mut self) -> ConnectionClose {
        loop {
            let (ch, m) = self.expect_method();
            if let Method::ConnectionClose(close) = m {
                assert_eq!(ch, 0);
                self.send_method(0, Method::ConnectionCloseOk(ConnectionCloseOk {}));
                return close;
            }
        }
    }

    /// Expects a channel.close on `channel`; answers it and returns it.
    pub fn expect_channel_close(&mut self, channel: u16) -> ChannelClose {
        loop {
            let (ch, m) = self.expect_method();
            if let Method::ChannelClose(close) = m {
                assert_eq!(ch, channel);
                self.send_method(channel, Method::ChannelCloseOk(ChannelCloseOk {}));
                return close;
            }
        }
    }

    /// True if the server closes the socket within the read timeout.
    pub fn closed_by_server(&mut self) -> bool {
        loop {
            match self.recv_frame() {
                None => return true,
                Some(_) => continue,
            }
        }
    }
}
