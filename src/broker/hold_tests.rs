//! Delivery only once the store batch holding a message is synced
//! (`BrokerConfig::deliver_after_sync`, as a cluster's leader runs).

use crate::broker::test_rig::Rig;
use crate::broker::{BrokerConfig, Output};
use crate::proto::command::{Command, Reply};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::store::Store;

fn rig(deliver_after_sync: bool) -> Rig {
    let mut rig = Rig::new(BrokerConfig {
        deliver_after_sync,
        ..BrokerConfig::default()
    });
    rig.open(1);
    rig.declare(1, "dq", true);
    rig.declare(1, "tq", false);
    for queue in ["dq", "tq"] {
        rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue: queue.into(),
                consumer_tag: queue.into(),
                no_ack: true,
                ..Default::default()
            }),
        );
    }
    rig
}

/// Publishes without running the rig's driver loop (which syncs every batch).
fn publish(rig: &mut Rig, queue: &str, body: u32, persistent: bool) {
    let properties = BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        ..Default::default()
    };
    rig.send_publish(1, "", queue, body, properties);
}

/// Drains the outputs, writing store batches without syncing them: the batches written,
/// and the bodies delivered with their consumer tags.
fn drain_unsynced(rig: &mut Rig) -> (Vec<u64>, Vec<(String, u32)>) {
    let mut batches = Vec::new();
    let mut delivered = Vec::new();
    while let Some(out) = rig.broker.poll_output() {
        match out {
            Output::Persist { batch, ops, .. } => {
                rig.store.write(&ops).unwrap();
                batches.push(batch);
            }
            Output::Replies { replies, .. } => {
                for r in replies {
                    if let Reply::Deliver {
                        consumer_tag,
                        message,
                        ..
                    } = r
                    {
                        let body = u32::from_be_bytes(message.body.as_ref().try_into().unwrap());
                        delivered.push((consumer_tag.to_string(), body));
                    }
                }
            }
            other => panic!("unexpected output {other:?}"),
        }
    }
    (batches, delivered)
}

fn tagged(tag: &str, bodies: &[u32]) -> Vec<(String, u32)> {
    bodies.iter().map(|&b| (tag.to_string(), b)).collect()
}

#[test]
fn a_stored_message_and_those_behind_it_wait_for_their_batch() {
    let mut rig = rig(true);
    publish(&mut rig, "dq", 1, true);
    publish(&mut rig, "dq", 2, false);
    publish(&mut rig, "tq", 3, true);
    let (batches, delivered) = drain_unsynced(&mut rig);
    assert_eq!(batches.len(), 1);
    // A queue that stores nothing delivers at once; the durable queue waits, and so does
    // the transient message queued behind the persistent one.
    assert_eq!(delivered, tagged("tq", &[3]));
    rig.broker.check_invariants();

    // Another batch is written while the first is unsynced.
    publish(&mut rig, "dq", 4, true);
    let (second, delivered) = drain_unsynced(&mut rig);
    assert_eq!(second.len(), 1);
    assert!(delivered.is_empty());

    // basic.get sees nothing either.
    rig.now += 1;
    rig.broker.handle_command(
        1,
        Command::Method {
            channel: 1,
            method: Method::BasicGet(BasicGet {
                queue: "dq".into(),
                no_ack: true,
                ..Default::default()
            }),
        },
        rig.now,
    );
    let mut empty = false;
    while let Some(out) = rig.broker.poll_output() {
        if let Output::Replies { replies, .. } = out {
            empty |= replies.iter().any(|r| {
                matches!(
                    r,
                    Reply::Method {
                        method: Method::BasicGetEmpty(_),
                        ..
                    }
                )
            });
        }
    }
    assert!(empty, "basic.get answers get-empty while the head waits");

    // The first batch synced: its message and the one behind it go, the second waits.
    rig.store.sync().unwrap();
    rig.broker.handle_persisted(batches[0]);
    let (_, delivered) = drain_unsynced(&mut rig);
    assert_eq!(delivered, tagged("dq", &[1, 2]));
    rig.broker.handle_persisted(second[0]);
    let (_, delivered) = drain_unsynced(&mut rig);
    assert_eq!(delivered, tagged("dq", &[4]));
    rig.broker.check_invariants();
}

#[test]
fn one_node_delivers_before_the_sync() {
    let mut rig = rig(false);
    publish(&mut rig, "dq", 1, true);
    publish(&mut rig, "dq", 2, false);
    let (batches, delivered) = drain_unsynced(&mut rig);
    assert_eq!(batches.len(), 1);
    assert_eq!(delivered, tagged("dq", &[1, 2]));
}

fn raw(rig: &mut Rig, method: Method) {
    rig.now += 1;
    rig.broker
        .handle_command(1, Command::Method { channel: 1, method }, rig.now);
}

#[test]
fn a_purge_forgets_the_holds() {
    let mut rig = rig(true);
    rig.method(
        1,
        Method::BasicCancel(BasicCancel {
            consumer_tag: "dq".into(),
            ..Default::default()
        }),
    );
    publish(&mut rig, "dq", 1, true);
    publish(&mut rig, "dq", 2, true);
    drain_unsynced(&mut rig);
    raw(
        &mut rig,
        Method::QueuePurge(QueuePurge {
            queue: "dq".into(),
            ..Default::default()
        }),
    );
    drain_unsynced(&mut rig);
    rig.broker.check_invariants();
    // A message queued after the purge does not wait for the purged ones' batch.
    publish(&mut rig, "dq", 3, false);
    raw(
        &mut rig,
        Method::BasicConsume(BasicConsume {
            queue: "dq".into(),
            consumer_tag: "dq".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let (_, delivered) = drain_unsynced(&mut rig);
    assert_eq!(delivered, tagged("dq", &[3]));
    rig.broker.check_invariants();
}
