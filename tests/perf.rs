//! `warren perf` against a real `warren serve`: every message published is counted once as
//! consumed, whatever its size (bodies larger than the frame size arrive in several
//! frames, large bodies are written from their own buffer) and whichever way it is acked.

mod common;

use std::process::Command;

use common::Server;

/// Runs `warren perf` with `args` against `server` and returns its JSON summary.
fn perf(server: &Server, args: &[&str]) -> serde_json::Value {
    let uri = format!("amqp://guest:guest@127.0.0.1:{}/%2f", server.port);
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["perf", "--uri", &uri, "--quiet"])
        .args(args)
        .output()
        .expect("run warren perf");
    assert!(
        out.status.success(),
        "warren perf {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a summary line");
    serde_json::from_str(last).expect("a JSON summary")
}

fn counts(summary: &serde_json::Value) -> (u64, u64) {
    (
        summary["published"].as_u64().expect("a published count"),
        summary["consumed"].as_u64().expect("a consumed count"),
    )
}

#[test]
fn every_message_is_counted_once_whatever_its_size_and_acks() {
    let server = Server::start();
    // 300,000 bytes is three body frames at the default frame size of 128 KiB.
    for (size, acks) in [
        ("300000", ["--multi-ack", "1"]),
        ("300000", ["--autoack", "--latency"]),
        ("65536", ["--multi-ack", "10"]),
        ("65536", ["--unbatched", "--latency"]),
        ("16", ["--multi-ack", "7"]),
        ("0", ["--autoack", "--unbatched"]),
    ] {
        let summary = perf(
            &server,
            &[
                &["--size", size, "--count", "300", "--queues", "1"][..],
                &acks,
            ]
            .concat(),
        );
        assert_eq!(counts(&summary), (300, 300), "size {size}, {acks:?}");
    }
}

#[test]
fn large_confirmed_persistent_messages_are_all_confirmed_and_consumed() {
    let server = Server::start();
    let summary = perf(
        &server,
        &[
            "--size",
            "200000",
            "--count",
            "200",
            "--persistent",
            "--confirm",
            "20",
            "--producers",
            "2",
            "--consumers",
            "2",
        ],
    );
    assert_eq!(counts(&summary), (200, 200));
    assert_eq!(summary["confirmed"].as_u64(), Some(200));
}
