//! Which store batches say that every client waiting for a sync (for confirms or a
//! commit-ok) has sent all it will until one comes
//! ([`Broker::sync_awaited`](super::Broker::sync_awaited)), so that the store syncs them
//! without waiting out its gap between syncs.

use crate::broker::test_rig::Rig;
use crate::broker::{BrokerConfig, Output};
use crate::proto::command::{Command, ConnId};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::store::Store;

/// Publishes a persistent message to `queue` on channel 1 and drains the broker without
/// syncing: the urgent flag of each store batch the publish made.
fn publish(rig: &mut Rig, last: &mut u64, conn: ConnId, queue: &str) -> Vec<bool> {
    let properties = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    rig.send_publish(conn, "", queue, 0, properties);
    drain_unsynced(rig, last)
}

/// Drains the broker, writing store batches without syncing them: the urgent flag of
/// each batch (the last one's number in `last`). A commit-ok must wait for the sync.
fn drain_unsynced(rig: &mut Rig, last: &mut u64) -> Vec<bool> {
    let mut urgent = Vec::new();
    while let Some(out) = rig.broker.poll_output() {
        match out {
            Output::Persist {
                batch,
                ops,
                urgent: u,
            } => {
                rig.store.write(&ops).unwrap();
                *last = batch;
                urgent.push(u);
            }
            Output::Replies { replies, .. } => assert!(
                !replies
                    .iter()
                    .any(|r| format!("{r:?}").contains("TxCommitOk")),
                "a commit-ok waits for the sync"
            ),
            _ => {}
        }
    }
    urgent
}

/// Syncs every batch written so far, up to `last_batch`; the confirms go out.
fn sync(rig: &mut Rig, last_batch: u64) {
    rig.store.sync().unwrap();
    rig.broker.handle_persisted(last_batch);
    rig.drain();
}

#[test]
fn a_batch_is_urgent_once_every_waiting_channel_has_its_most_and_every_answered_one_is_back() {
    let mut rig = Rig::new(BrokerConfig::default());
    for conn in [1, 2] {
        rig.open(conn);
        rig.method(conn, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
    }
    rig.open(3);
    rig.declare(1, "q", true);
    let mut last = 0;
    // No one waits yet: each client's first publish is all it has out.
    assert_eq!(publish(&mut rig, &mut last, 1, "q"), [true]);
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [true]);
    assert!(rig.broker.sync_awaited());
    sync(&mut rig, last);
    assert!(!rig.broker.sync_awaited(), "nothing waits for a confirm");
    // The sync answered both: the batch waits for both to come back.
    assert_eq!(
        publish(&mut rig, &mut last, 1, "q"),
        [false],
        "client 2 may come back"
    );
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [true]);
    sync(&mut rig, last);
    // Client 1 sends two before a sync: its most is now two.
    assert_eq!(publish(&mut rig, &mut last, 1, "q"), [false]);
    assert_eq!(publish(&mut rig, &mut last, 1, "q"), [false]);
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [true]);
    sync(&mut rig, last);
    // One unconfirmed publish of client 1 is below its most: it may send more.
    assert_eq!(publish(&mut rig, &mut last, 1, "q"), [false]);
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [false]);
    assert_eq!(
        publish(&mut rig, &mut last, 1, "q"),
        [true],
        "client 1 is at its most again"
    );
    sync(&mut rig, last);
    // A closed channel no longer counts, returning or not.
    assert_eq!(
        publish(&mut rig, &mut last, 2, "q"),
        [false],
        "client 1 may come back"
    );
    rig.method(
        1,
        Method::ChannelClose(ChannelClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }),
    );
    assert!(rig.broker.sync_awaited());
    sync(&mut rig, last);
    // A channel that does not come back before the next sync (here one for a plain
    // channel's publish, which nobody waits for) no longer holds batches back.
    assert_eq!(publish(&mut rig, &mut last, 3, "q"), [false]);
    rig.broker.check_invariants();
    sync(&mut rig, last);
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [true]);
    rig.broker.check_invariants();
}

/// Commits channel 1's transaction and drains the broker without syncing: the urgent
/// flag of each store batch the commit made.
fn commit(rig: &mut Rig, last: &mut u64, conn: ConnId) -> Vec<bool> {
    rig.now += 1;
    rig.broker.handle_command(
        conn,
        Command::Method {
            channel: 1,
            method: Method::TxCommit(TxCommit {}),
        },
        rig.now,
    );
    drain_unsynced(rig, last)
}

/// A transaction waiting for its commit-ok waits for a sync with nothing more to send,
/// and comes back with its next commit; a publisher with room in its confirm window keeps
/// the batch from being urgent.
#[test]
fn a_commit_waiting_for_its_sync_is_at_its_peak_until_the_commit_ok() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    rig.open(2);
    rig.method(1, Method::TxSelect(TxSelect {}));
    rig.method(2, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
    rig.declare(1, "q", true);
    let mut last = 0;
    assert!(
        publish(&mut rig, &mut last, 1, "q").is_empty(),
        "held by the transaction"
    );
    assert_eq!(commit(&mut rig, &mut last, 1), [true]);
    assert!(rig.broker.sync_awaited());
    rig.broker.check_invariants();
    sync(&mut rig, last);
    assert!(!rig.broker.sync_awaited(), "the commit-ok went out");
    // The confirm channel's most becomes two, while the transaction may come back.
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [false]);
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [false]);
    assert!(publish(&mut rig, &mut last, 1, "q").is_empty());
    assert_eq!(
        commit(&mut rig, &mut last, 1),
        [true],
        "both are at their most"
    );
    sync(&mut rig, last);
    // One unconfirmed publish is below the confirm channel's most.
    assert_eq!(publish(&mut rig, &mut last, 2, "q"), [false]);
    assert!(publish(&mut rig, &mut last, 1, "q").is_empty());
    assert_eq!(commit(&mut rig, &mut last, 1), [false]);
    rig.broker.check_invariants();
    sync(&mut rig, last);
    assert!(!rig.broker.sync_awaited());
    rig.broker.check_invariants();
}
