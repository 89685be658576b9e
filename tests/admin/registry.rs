//! Running warren as a local service: `warren ctl` finds local nodes with no flags,
//! whatever data dir they have (each `warren serve` registers under its node name in the
//! runtime registry, and `-n NAME` tells several apart), and `warren serve` tells systemd
//! when it is ready and when it stops.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::listening_port;

/// A `warren serve` registering in `runtime`, killed on drop.
struct Node(Child);

impl Node {
    fn start(runtime: &Path, data: &Path, name: &str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
            .args([
                "serve",
                "--amqp-port",
                "0",
                "--http-port",
                "0",
                "--node-name",
                name,
            ])
            .arg("--data-dir")
            .arg(data)
            .env("WARREN_RUNTIME_DIR", runtime)
            .env("WARREN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start warren");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if listening_port(&line, "HTTP").is_some() {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("warren did not start within 30 s");
        Node(child)
    }

    /// SIGTERM, and wait for the process to end.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("warren did not stop within 10 s");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warren ctl ARGS` with only the registry to go by (no data dir, no node, and a home
/// whose default data dir holds no node file).
fn ctl(runtime: &Path, home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("ctl")
        .args(args)
        .env("WARREN_RUNTIME_DIR", runtime)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("WARREN_DATA_DIR")
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

#[test]
fn ctl_finds_local_nodes_by_registry_and_name() {
    // Made by warren itself, private (mode 0700), on first use.
    let runtime_parent = tempfile::tempdir().unwrap();
    let runtime = runtime_parent.path().join("run");
    let runtime = runtime.as_path();
    let home = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // Nothing running: a clear error.
    let (code, _, err) = ctl(runtime, home.path(), &["list_vhosts"]);
    assert_ne!(code, 0);
    assert!(err.contains("unable to find the local node"), "{err}");

    // One node, with a data dir of its own: found with no flags.
    let a = Node::start(runtime, data_a.path(), "alpha@test");
    let (code, out, err) = ctl(runtime, home.path(), &["add_vhost", "on-alpha"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(runtime, home.path(), &["list_vhosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on-alpha"), "{out}");

    // Two nodes: no flags is an error naming both; -n picks one.
    let b = Node::start(runtime, data_b.path(), "beta@test");
    let (code, _, err) = ctl(runtime, home.path(), &["list_vhosts"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("alpha@test") && err.contains("beta@test") && err.contains("-n NAME"),
        "{err}"
    );
    let (code, out, err) = ctl(runtime, home.path(), &["-n", "beta@test", "list_vhosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("on-alpha"), "beta has its own vhosts: {out}");
    let (code, out, _) = ctl(runtime, home.path(), &["-n", "alpha@test", "list_vhosts"]);
    assert_eq!(code, 0);
    assert!(out.contains("on-alpha"), "{out}");
    let (code, _, err) = ctl(runtime, home.path(), &["-n", "gamma@test", "status"]);
    assert_ne!(code, 0);
    assert!(err.contains("no local node named gamma@test"), "{err}");

    // A second node under a taken name does not displace the first.
    let data_c = tempfile::tempdir().unwrap();
    let c = Node::start(runtime, data_c.path(), "alpha@test");
    let (code, out, _) = ctl(runtime, home.path(), &["-n", "alpha@test", "list_vhosts"]);
    assert_eq!(code, 0);
    assert!(out.contains("on-alpha"), "still the first alpha: {out}");
    c.stop();

    // A stopped node leaves the registry; the one left is found with no flags again.
    b.stop();
    let (code, out, err) = ctl(runtime, home.path(), &["list_vhosts"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("on-alpha"), "{out}");
    a.stop();
    assert_eq!(
        std::fs::read_dir(runtime).unwrap().count(),
        0,
        "stopped nodes unregister"
    );
}

/// Run as a systemd `Type=notify` service, `warren serve` says READY=1 once both
/// listeners are up, and STOPPING=1 when a SIGTERM stops it.
#[test]
fn serve_tells_the_service_manager_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--amqp-port", "0", "--http-port", "0"])
        .arg("--data-dir")
        .arg(data.path())
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WARREN_RUNTIME_DIR", dir.path().join("run"))
        .env("WARREN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start warren");
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains("AMQP on") && ready.contains("HTTP on"),
        "{ready}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let n = socket.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "a SIGTERM stops warren cleanly: {status}");
}

/// Whether a new AMQP socket gets `connection.start` (true) or is closed unanswered.
fn greeted(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(n) if n > 0 && buf[0] == 1)
}

/// SIGHUP (`systemctl reload`) reads the config file again: a lower connection limit
/// applies to new sockets while open connections stay; a file that does not parse
/// changes nothing and the broker keeps running.
#[test]
fn sighup_reloads_the_limits_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warren.toml");
    std::fs::write(&path, "max_connections = 1000\n").unwrap();
    let server = crate::common::Server::start_with(&["--config", path.to_str().unwrap()]);
    let hup = |pid: u32| {
        let _ = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status();
    };
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = crate::common::RawClient::connect(server.port);
            c.handshake("guest", "guest", "/", 0);
            c
        })
        .collect();
    assert!(greeted(server.port));

    std::fs::write(&path, "max_connections = 2\n").unwrap();
    hup(server.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while greeted(server.port) {
        assert!(Instant::now() < deadline, "the new limit was not applied");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A broken file is refused; the broker runs on with what it had.
    std::fs::write(&path, "max_connections = \"many\"\n").unwrap();
    hup(server.pid());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!greeted(server.port), "still the reloaded limit");

    std::fs::write(&path, "max_connections = 1000\n").unwrap();
    hup(server.pid());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !greeted(server.port) {
        assert!(
            Instant::now() < deadline,
            "the raised limit was not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
}
