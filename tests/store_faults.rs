//! A full disk under a real `warren serve`: the data directory is on a small tmpfs, a
//! filler file takes the space, and the broker must refuse persistent publishes (nack,
//! `connection.blocked`) while consumers keep draining and acking, then take publishes
//! again once the filler is gone, having lost nothing it confirmed.
//!
//! Mounting a tmpfs needs root (or CAP_SYS_ADMIN); without it the test says so and passes
//! without running. The simulator and the unit tests of the broker and the storage worker
//! cover the same logic everywhere.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{RawClient, Server};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

const BODY_BYTES: usize = 64 * 1024;

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0700")])
            .arg("tmpfs")
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_bavail * st.f_frsize
}

/// Takes all but `leave` bytes of the file system's free space.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let file = std::fs::File::create(&path).unwrap();
    let size = free_bytes(dir).saturating_sub(leave);
    rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size).unwrap();
    path
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

fn declare_durable(c: &mut RawClient, queue: &str) {
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            durable: true,
            ..Default::default()
        }),
    );
    assert!(matches!(c.expect_method().1, Method::QueueDeclareOk(_)));
}

fn confirming(port: u16) -> RawClient {
    let mut c = RawClient::open(port);
    c.open_channel(1);
    c.send_method(1, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
    assert!(matches!(c.expect_method().1, Method::ConfirmSelectOk(_)));
    c
}

/// A body that does not compress (the store compresses), numbered in its first bytes.
fn body(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut body: Vec<u8> = (0..BODY_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    body[..8].copy_from_slice(&n.to_be_bytes());
    body
}

/// What a publisher heard after one publish.
#[derive(Debug, Default)]
struct Heard {
    acked: bool,
    nacked: bool,
    blocked: Option<String>,
}

/// Publishes one persistent message and reads until its confirm, noting a block.
fn publish_one(c: &mut RawClient, queue: &str, n: u64) -> Heard {
    c.publish(1, "", queue, persistent(), &body(n));
    let mut heard = Heard::default();
    while !(heard.acked || heard.nacked) {
        match c.expect_method().1 {
            Method::BasicAck(_) => heard.acked = true,
            Method::BasicNack(_) => heard.nacked = true,
            Method::ConnectionBlocked(b) => heard.blocked = Some(b.reason),
            other => panic!("unexpected {other:?}"),
        }
    }
    heard
}

/// Consumes and acks `count` messages from `queue` on a fresh channel.
fn consume_and_ack(c: &mut RawClient, channel: u16, queue: &str, count: usize) -> Vec<u64> {
    c.open_channel(channel);
    c.send_method(
        channel,
        Method::BasicConsume(BasicConsume {
            queue: queue.into(),
            consumer_tag: format!("c{channel}"),
            ..Default::default()
        }),
    );
    let mut got = Vec::new();
    while got.len() < count {
        let (ch, m) = c.expect_method();
        let Method::BasicDeliver(d) = m else { continue };
        assert_eq!(ch, channel);
        let mut body = Vec::new();
        let Some(warren::proto::frame::Frame::Header { header, .. }) = c.recv_frame() else {
            panic!("expected a header")
        };
        while (body.len() as u64) < header.body_size {
            match c.recv_frame() {
                Some(warren::proto::frame::Frame::Body { payload, .. }) => {
                    body.extend_from_slice(&payload)
                }
                other => panic!("expected a body, got {other:?}"),
            }
        }
        got.push(u64::from_be_bytes(body[..8].try_into().unwrap()));
        c.send_method(
            channel,
            Method::BasicAck(BasicAck {
                delivery_tag: d.delivery_tag,
                multiple: false,
            }),
        );
    }
    got
}

fn queue_length(c: &mut RawClient, queue: &str) -> u32 {
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            passive: true,
            ..Default::default()
        }),
    );
    match c.expect_method().1 {
        Method::QueueDeclareOk(ok) => ok.message_count,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_full_disk_refuses_persistent_publishes_serves_consumers_and_recovers() {
    let Some(fs) = Tmpfs::mount(96) else {
        println!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = tempfile::tempdir_in(fs.path()).unwrap();
    let mut config = tempfile::NamedTempFile::new().unwrap();
    // The disk alarm is off, so that what stops publishers is the store's own failure.
    writeln!(config, "disk_free_limit_bytes = 0").unwrap();
    writeln!(config, "store_reserve_bytes = {}", 4 << 20).unwrap();
    let config_path = config.path().to_str().unwrap().to_string();
    let server = Server::start_in(data, &["--config", &config_path]);
    let reserve = server.data_dir.path().join("space-reserve");
    assert!(reserve.exists(), "the reserve is set aside at start");

    let mut publisher = confirming(server.port);
    declare_durable(&mut publisher, "q");
    let mut confirmed: Vec<u64> = Vec::new();
    for n in 0..20 {
        assert!(publish_one(&mut publisher, "q", n).acked);
        confirmed.push(n);
    }

    // Leave 3 MiB: the journal runs out of room within a few dozen publishes.
    let filler = fill(fs.path(), 3 << 20);
    let mut blocked = None;
    let mut n = 20;
    while blocked.is_none() {
        assert!(n < 400, "the disk never filled up");
        let heard = publish_one(&mut publisher, "q", n);
        // The publish whose batch met the full disk is written again into the reserve's
        // space and confirmed; nothing is acked that is not on disk.
        if heard.acked {
            confirmed.push(n);
        }
        blocked = heard.blocked;
        n += 1;
    }
    assert_eq!(blocked.as_deref(), Some("store out of disk space"));
    assert!(!reserve.exists(), "the reserve was given up");
    println!(
        "disk full after {} confirmed publishes; publisher blocked",
        confirmed.len()
    );

    // A connection that has not published yet gets its persistent publish refused.
    let mut newcomer = confirming(server.port);
    let heard = publish_one(&mut newcomer, "q", 10_000);
    assert!(heard.nacked, "refused while the store is full: {heard:?}");
    assert_eq!(heard.blocked.as_deref(), Some("store out of disk space"));

    // Consumers drain and ack: the acks are written into the reserve's space.
    let mut consumer = RawClient::open(server.port);
    consumer.open_channel(1);
    let got = consume_and_ack(&mut consumer, 2, "q", confirmed.len());
    assert_eq!(got, confirmed, "every confirmed message, in order");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(queue_length(&mut consumer, "q"), 0);

    // Space comes back: publishers are unblocked and publishes are stored again.
    std::fs::remove_file(&filler).unwrap();
    let start = Instant::now();
    for c in [&mut publisher, &mut newcomer] {
        match c.expect_method().1 {
            Method::ConnectionUnblocked(_) => {}
            other => panic!("expected connection.unblocked, got {other:?}"),
        }
    }
    println!("unblocked {:?} after space returned", start.elapsed());
    assert!(reserve.exists(), "the reserve is set aside again");
    assert!(publish_one(&mut newcomer, "q", 20_000).acked);
    assert!(publish_one(&mut publisher, "q", 20_001).acked);

    // What was confirmed is on disk: it survives a crash.
    let data = server.kill();
    let server = Server::start_in(data, &["--config", &config_path]);
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    assert_eq!(queue_length(&mut c, "q"), 2);
    let got = consume_and_ack(&mut c, 2, "q", 2);
    assert_eq!(got, [20_000, 20_001]);
    drop(server);
    drop(fs);
}
