//! The hostile-client suite: every attack a client of warren can make with the default
//! `guest` account (and a few with a restricted user), run against a real `warren serve`.
//! After each one the harness proves that the process is alive, that a bystander
//! connection declares, publishes with confirms and consumes within 5 s, that resident
//! memory grew by no more than the attack's bound, and that the ledger of persistent
//! messages confirmed before any attack is complete; across restarts too.
//!
//! Run it with the table visible: `cargo test --release --test hostile -- --nocapture`.
//! `HOSTILE_ONLY=topic,memory` runs only the attacks whose class contains one of the
//! words (the restarts between phases still happen).
//!
//! Layout: `harness` (the run-and-check loop, the report), `client` (AMQP), `http`, and
//! one module per class of attack.

#[path = "../common/mod.rs"]
mod common;

mod authz;
mod client;
mod conns;
mod deadletter;
mod harness;
mod headers;
mod http;
mod httpapi;
mod memory;
mod peers;
mod routing;
mod tables;
mod tenants;
mod topic;

use std::io::Write as _;

use harness::{Bystander, Suite};

#[test]
fn hostile_clients_cannot_crash_freeze_or_bloat_warren() {
    let mut suite = Suite::start(&[]);
    suite.run_all(deadletter::attacks());
    suite.run_all(topic::attacks());
    suite.run_all(headers::attacks());
    suite.run_all(routing::attacks());
    suite.run_all(tables::attacks());
    suite.restart("after the field-table attacks");
    suite.run(tables::survivors());
    suite.run_all(memory::attacks());
    suite.run_all(peers::attacks());
    suite.run_all(conns::attacks());
    suite.run_all(tenants::attacks());
    suite.run_all(authz::attacks());
    suite.run_all(httpapi::attacks());

    // A memory alarm in force from the start: the bystander's publish is blocked, as in
    // RabbitMQ, and a consumer still reads.
    let mut alarm = tempfile::NamedTempFile::new().expect("config file");
    writeln!(alarm, "memory_high_watermark = 0.000001").expect("write config");
    let alarm_path = alarm.path().to_string_lossy().into_owned();
    suite.restart_with(
        "memory alarm on",
        &["--config", &alarm_path],
        Bystander::Alarm,
        None,
    );
    suite.run_all(memory::alarm_attacks());

    // A broker started with a soft open-file limit of 256 raises it to the hard limit;
    // one whose hard limit is 256 keeps its connection cap below it.
    suite.restart_with(
        "soft open-file limit 256",
        &[],
        Bystander::Normal,
        Some((256, None)),
    );
    suite.run(conns::raised_limit(256, 600));
    suite.restart_with(
        "open-file limit 256 (soft and hard)",
        &[],
        Bystander::Normal,
        Some((256, Some(256))),
    );
    suite.run(conns::exhausted_limit(256, 400));
    suite.restart_with("default limits", &[], Bystander::Normal, None);
    suite.finish();
}
