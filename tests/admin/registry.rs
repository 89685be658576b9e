//! `warren ctl` finds local nodes with no flags, whatever data dir they have: each
//! `warren serve` registers under its node name in the runtime registry, and `-n NAME`
//! tells several apart.

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
