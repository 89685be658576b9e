//! Tests of store snapshots: a store streamed in chunks, staged and installed into another
//! store recovers exactly as its source; the view ignores later writes; an interrupted
//! install is finished at the next start; chunks that do not decode are refused.

use std::sync::Arc;
use std::sync::mpsc;

use bytes::Bytes;
use proptest::prelude::*;

use super::chunk::{ChunkRecord, MAX_KEY_BYTES};
use super::*;
use crate::proto::command::Message;
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;
use crate::store::disk::tests::{inline, open};
use crate::store::{
    BindingRecord, EntryBody, ExchangeRecord, HeadLimit, QueueRecord, Recovered, Store, StoreOp,
};

/// Small, so that even a small store is sent in many chunks.
const CHUNK_BYTES: usize = 4096;

/// A body far over [`CHUNK_BYTES`]: its record gets a chunk of its own.
const LARGE_BODY_BYTES: usize = 256 * 1024;

fn message(id: u64, body_len: usize) -> Arc<Message> {
    Arc::new(Message {
        exchange: "amq.direct".into(),
        routing_key: format!("rk-{id}"),
        properties: BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        body: Bytes::from(vec![id as u8; body_len]),
    })
}

fn queue(vhost: &str, id: u64, name: &str) -> QueueRecord {
    QueueRecord {
        vhost: vhost.into(),
        name: name.into(),
        id,
        auto_delete: false,
        arguments: FieldTable::new(),
    }
}

fn shared(queue: u64, seq: u64, id: u64) -> StoreOp {
    StoreOp::Enqueue {
        queue,
        seq,
        body: EntryBody::Shared(id),
        expires_at_ms: Some(5000 + seq),
    }
}

/// A store with two vhosts, an exchange and a binding, three queues holding inline
/// messages (every fifth one apart in `bodies`, one far larger than a chunk), messages
/// shared by two queues, a deleted queue whose entries are not swept yet, a paged message,
/// and the applied point (42, 7).
fn populate(store: &mut FjallStore) {
    let mut ops = vec![
        StoreOp::PutVhost("/".into()),
        StoreOp::PutVhost("v2".into()),
        StoreOp::PutExchange(ExchangeRecord {
            vhost: "/".into(),
            name: "x".into(),
            kind: "direct".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }),
        StoreOp::PutQueue(queue("/", 1, "a")),
        StoreOp::PutQueue(queue("/", 2, "b")),
        StoreOp::PutQueue(queue("v2", 3, "c")),
        StoreOp::PutQueue(queue("/", 4, "doomed")),
        StoreOp::PutBinding(BindingRecord {
            vhost: "/".into(),
            source: "x".into(),
            destination: "a".into(),
            to_exchange: false,
            routing_key: "k".into(),
            arguments: Vec::new(),
        }),
    ];
    for seq in 0..60 {
        ops.push(inline(1, seq, if seq % 5 == 0 { 1500 } else { 40 }));
        ops.push(inline(4, seq, 40));
    }
    ops.push(inline(3, 0, LARGE_BODY_BYTES));
    for id in 0..20 {
        ops.push(StoreOp::PutShared {
            id,
            message: message(id, if id % 4 == 0 { 2000 } else { 100 }),
            refs: 2,
        });
        ops.push(shared(1, 100 + id, id));
        ops.push(shared(2, id, id));
    }
    store.write(&ops).expect("write");
    let later = [
        StoreOp::Dequeue {
            queue: 2,
            seq: 3,
            shared: Some(3),
        },
        StoreOp::DeleteQueue {
            vhost: "/".into(),
            name: "doomed".into(),
            id: 4,
        },
        StoreOp::PageOut {
            queue: 3,
            seq: 1,
            message: message(1, 30),
            expires_at_ms: None,
        },
    ];
    store.write_applied(&later, 42, 7, None).expect("write");
    // The sweep after the sync leaves most of the deleted queue's entries.
    store.gc_keys_per_sync = 10;
    store.sync().expect("sync");
    assert_eq!(store.catalog.generation(4), 1);
}

/// A store with other content: what an install must leave nothing of.
fn populate_other(store: &mut FjallStore) {
    let mut ops = vec![
        StoreOp::PutVhost("old".into()),
        StoreOp::PutQueue(queue("old", 9, "stale")),
        StoreOp::PutQueue(queue("old", 1, "a-too")),
        StoreOp::PutShared {
            id: 70,
            message: message(70, 3000),
            refs: 1,
        },
        shared(9, 0, 70),
        StoreOp::PageOut {
            queue: 9,
            seq: 50,
            message: message(50, 2000),
            expires_at_ms: None,
        },
    ];
    ops.extend((0..30).map(|seq| inline(1, 1000 + seq, 1200)));
    store.write_applied(&ops, 5, 1, None).expect("write");
    store.sync().expect("sync");
}

/// Streams `source`'s snapshot into a staging database at `staging` and finishes it.
/// Returns the number of chunks.
fn stage(source: &FjallStore, staging: &Path) -> usize {
    let view = source.snapshot_source().expect("a snapshot source");
    let point = view.applied().expect("the applied point");
    let mut sink = SnapshotSink::create(staging).expect("a sink");
    let mut chunks = 0;
    for chunk in view.chunks(CHUNK_BYTES) {
        let chunk = chunk.expect("a chunk");
        let records = decode_chunk(&chunk).expect("a chunk decodes");
        assert!(
            chunk.len() <= CHUNK_BYTES || records.len() == 1,
            "a chunk of {} bytes holds {} records",
            chunk.len(),
            records.len()
        );
        sink.write_chunk(&chunk).expect("staging a chunk");
        chunks += 1;
    }
    sink.finish(point.0, point.1).expect("finishing");
    chunks
}

fn recover_all(store: &mut FjallStore) -> Recovered {
    store.recover(HeadLimit::ALL).expect("recover")
}

fn count(store: &FjallStore, space: Space) -> usize {
    store.keyspace(space).len().expect("counting keys")
}

/// A populated source store and a target store holding other things, each in a
/// directory of its own, and the staging directory where the cluster puts it: inside the
/// target's.
fn two_stores() -> (
    tempfile::TempDir,
    FjallStore,
    tempfile::TempDir,
    PathBuf,
    FjallStore,
) {
    let from_dir = tempfile::tempdir().expect("a temporary directory");
    let mut source = open(from_dir.path());
    populate(&mut source);
    let to_dir = tempfile::tempdir().expect("a temporary directory");
    let staging = to_dir.path().join("raft-snapshot");
    let mut target = open(to_dir.path());
    populate_other(&mut target);
    (from_dir, source, to_dir, staging, target)
}

#[test]
fn a_store_installed_elsewhere_recovers_the_same_queues_and_messages() {
    let (_from_dir, mut source, to_dir, staging, mut target) = two_stores();

    let chunks = stage(&source, &staging);
    assert!(chunks > 10, "{chunks} chunks");
    assert_eq!(
        SnapshotSink::complete(&staging).expect("complete"),
        Some((42, 7))
    );
    assert_eq!(target.install_snapshot(&staging).expect("install"), (42, 7));
    assert!(!staging.exists(), "the staging directory is removed");
    assert_eq!(target.applied().expect("applied"), (42, 7));

    // The paged message was not sent, and the target's own is gone too.
    assert_eq!(count(&target, Space::Paged), 0);
    assert_eq!(target.shared, source.shared, "the shared counts, in memory");
    assert_eq!(
        target.catalog.generation(4),
        1,
        "the deleted queue's generation"
    );
    assert!(target.gc.contains_key(&4), "its entries are left to sweep");
    let expected = recover_all(&mut source);
    assert_eq!(expected.contents.len(), 3);
    assert_eq!(
        expected.contents[2].head[0].message.body.len(),
        LARGE_BODY_BYTES
    );
    assert_eq!(recover_all(&mut target), expected);
    for q in [1, 2, 3, 9] {
        assert_eq!(
            target.load(q, 0, 1000, u64::MAX).expect("load"),
            source.load(q, 0, 1000, u64::MAX).expect("load"),
            "queue {q}"
        );
    }

    // The installed store goes on as any other, and reopens as it was left.
    target
        .write_applied(&[inline(1, 500, 10)], 43, 7, None)
        .expect("a write after the install");
    target.sync().expect("sync");
    drop(target);
    let mut target = open(to_dir.path());
    assert_eq!(target.applied().expect("applied"), (43, 7));
    let after = recover_all(&mut target);
    assert_eq!(after.queues, expected.queues);
    assert_eq!(after.contents[0].count, expected.contents[0].count + 1);
}

#[test]
fn writes_after_the_snapshot_is_taken_are_not_in_it() {
    let from_dir = tempfile::tempdir().expect("a temporary directory");
    let mut source = open(from_dir.path());
    populate(&mut source);
    let expected = recover_all(&mut source);
    let view = source.snapshot_source().expect("a snapshot source");
    assert_eq!(view.applied().expect("applied"), (42, 7));

    // The view is walked on a thread of its own, one chunk ahead at most, while the store
    // is written.
    let (tx, rx) = mpsc::sync_channel(1);
    let walker = std::thread::spawn(move || {
        for chunk in view.chunks(CHUNK_BYTES) {
            if tx.send(chunk).is_err() {
                return;
            }
        }
    });
    let first = rx.recv().expect("a first chunk").expect("a chunk");
    let more = [
        StoreOp::PutVhost("late".into()),
        StoreOp::PutQueue(queue("late", 5, "late")),
        inline(5, 0, 20),
        inline(1, 200, 3000),
        StoreOp::Dequeue {
            queue: 1,
            seq: 0,
            shared: None,
        },
        StoreOp::Dequeue {
            queue: 2,
            seq: 4,
            shared: Some(4),
        },
        StoreOp::DeleteQueue {
            vhost: "v2".into(),
            name: "c".into(),
            id: 3,
        },
    ];
    source.write_applied(&more, 50, 8, None).expect("write");
    source.sync().expect("sync");
    // Sweeps the deleted queues' keys, and deletes shared messages no entry refers to.
    recover_all(&mut source);
    let chunks: Vec<Vec<u8>> = std::iter::once(first)
        .chain(rx.iter().map(|c| c.expect("a chunk")))
        .collect();
    walker.join().expect("the walker");

    let to_dir = tempfile::tempdir().expect("a temporary directory");
    let staging = to_dir.path().join("raft-snapshot");
    // The sink checks the point the sender announces against what it staged.
    let mut sink = SnapshotSink::create(&staging).expect("a sink");
    for chunk in &chunks {
        sink.write_chunk(chunk).expect("staging");
    }
    let err = sink.finish(50, 8).expect_err("the view is at 42");
    assert!(err.message().contains("index 42 term 7"), "{err}");
    assert_eq!(SnapshotSink::complete(&staging).expect("complete"), None);

    let mut sink = SnapshotSink::create(&staging).expect("a sink");
    for chunk in &chunks {
        sink.write_chunk(chunk).expect("staging");
    }
    sink.finish(42, 7).expect("finish");
    let mut target = open(to_dir.path());
    assert_eq!(target.install_snapshot(&staging).expect("install"), (42, 7));
    assert_eq!(recover_all(&mut target), expected);
    assert_ne!(recover_all(&mut source), expected, "the source did move on");
}

#[test]
fn an_install_interrupted_by_a_stop_is_finished_at_the_next_start() {
    let (_from_dir, mut source, to_dir, staging, target) = two_stores();
    let expected = recover_all(&mut source);
    stage(&source, &staging);

    // What `install_snapshot` does up to a stop half-way through the copy: the mark, the
    // keyspaces emptied, `meta` half copied, the entries not yet.
    let staged = Staging::open(&staging).expect("the staging database");
    staged
        .mark(INSTALLING_KEY, vec![1], "mark")
        .expect("the installing mark");
    write_synced_marker(&marker_of(&staging).expect("the mark's path")).expect("the mark");
    for space in [Space::Messages, Space::Refs, Space::Entries] {
        target.keyspace(space).clear().expect("clear");
    }
    target.remove_meta_but_format().expect("meta removed");
    let mut writer = InstallWriter::new(&target);
    for item in staged.keyspace(Space::Meta).iter().step_by(2) {
        let (key, value) = item.into_inner().expect("a staged record");
        writer.insert(Space::Meta, key, value).expect("copy");
    }
    writer.commit().expect("commit");
    drop(staged);
    // No sync: the stop leaves whatever reached the disk.
    drop(target);

    let mut target = open(to_dir.path());
    assert_eq!(
        target.resume_install(&staging).expect("resume"),
        Some((42, 7))
    );
    assert!(!staging.exists());
    assert_eq!(target.applied().expect("applied"), (42, 7));
    assert_eq!(recover_all(&mut target), expected);
    assert_eq!(target.set_aside_count().expect("quarantine"), 0);
    drop(target);

    // Once done, a start finds nothing to resume.
    let mut target = open(to_dir.path());
    assert_eq!(target.resume_install(&staging).expect("resume"), None);
    assert_eq!(recover_all(&mut target), expected);
}

#[test]
fn a_staged_snapshot_not_being_installed_is_removed_at_start() {
    let (_from_dir, source, _to_dir, staging, mut target) = two_stores();
    let before = recover_all(&mut target);

    // No staging directory.
    assert_eq!(target.resume_install(&staging).expect("resume"), None);
    assert_eq!(SnapshotSink::complete(&staging).expect("complete"), None);

    // A transfer cut off after a few chunks: never installable.
    let mut sink = SnapshotSink::create(&staging).expect("a sink");
    let view = source.snapshot_source().expect("a snapshot source");
    for chunk in view.chunks(CHUNK_BYTES).take(3) {
        sink.write_chunk(&chunk.expect("a chunk")).expect("staging");
    }
    drop(sink);
    assert_eq!(SnapshotSink::complete(&staging).expect("complete"), None);
    let err = target
        .install_snapshot(&staging)
        .expect_err("an unfinished snapshot");
    assert!(err.message().contains("did not finish"), "{err}");
    assert!(
        target.failed.is_none(),
        "a refused install leaves the store as it was"
    );
    assert_eq!(target.resume_install(&staging).expect("resume"), None);
    assert!(!staging.exists());

    // A finished transfer whose install never began.
    stage(&source, &staging);
    assert_eq!(target.resume_install(&staging).expect("resume"), None);
    assert!(!staging.exists());
    assert_eq!(recover_all(&mut target), before);
    assert_eq!(target.applied().expect("applied"), (5, 1));

    // A removal that a stop interrupted leaves only a directory to delete.
    let trash = trash_of(&staging).expect("the trash path");
    std::fs::create_dir_all(trash.join("keyspaces")).expect("mkdir");
    assert_eq!(target.resume_install(&staging).expect("resume"), None);
    assert!(!trash.exists());
}

#[test]
fn a_failed_store_is_installed_into_and_a_half_installed_one_refuses_reopen() {
    let (_from_dir, mut source, _to_dir, staging, mut target) = two_stores();
    let expected = recover_all(&mut source);

    // As after an install that failed half-way: only installing again repairs it.
    target.failed = Some("a failure".into());
    target.installing = Some(staging.clone());
    let err = target.reopen().expect_err("half replaced");
    assert!(err.message().contains("installed again"), "{err}");
    assert!(target.snapshot_source().is_err());

    stage(&source, &staging);
    assert_eq!(target.install_snapshot(&staging).expect("install"), (42, 7));
    assert!(target.failed.is_none() && target.installing.is_none());
    assert_eq!(recover_all(&mut target), expected);
    target
        .write(&[inline(1, 900, 10)])
        .expect("writes work again");
    target.sync().expect("sync");
}

#[test]
fn chunks_that_do_not_decode_are_refused_whole() {
    let mut good = Vec::new();
    encode_record(&mut good, Space::Messages, b"key", b"value").expect("encode");
    let boundary = good.len();
    encode_record(&mut good, Space::Bodies, b"k", b"").expect("encode");
    let records = decode_chunk(&good).expect("decodes");
    assert_eq!(
        records,
        [
            ChunkRecord {
                space: Space::Messages,
                key: b"key",
                value: b"value"
            },
            ChunkRecord {
                space: Space::Bodies,
                key: b"k",
                value: b""
            },
        ]
    );
    assert_eq!(decode_chunk(&[]).expect("an empty chunk"), []);
    for cut in (1..good.len()).filter(|&cut| cut != boundary) {
        assert!(decode_chunk(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut unknown = good.clone();
    unknown[0] = 5;
    assert!(
        decode_chunk(&unknown).is_err(),
        "keyspace 5 (paged) is never sent"
    );
    let mut huge_value = good.clone();
    huge_value[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(decode_chunk(&huge_value).is_err());
    // Keys fjall would panic on rather than refuse.
    let mut empty_key = vec![0];
    empty_key.extend_from_slice(&0u32.to_be_bytes());
    empty_key.extend_from_slice(&1u32.to_be_bytes());
    empty_key.push(7);
    assert!(decode_chunk(&empty_key).is_err());
    let long = vec![1u8; MAX_KEY_BYTES + 1];
    let mut long_key = Vec::new();
    encode_record(&mut long_key, Space::Meta, &long, b"v").expect("encode");
    let err = decode_chunk(&long_key).expect_err("too long a key");
    assert!(err.contains("65536"), "{err}");

    // The sink refuses them, and stages nothing of a refused chunk.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let staging = dir.path().join("raft-snapshot");
    let mut sink = SnapshotSink::create(&staging).expect("a sink");
    for bad in [
        &good[..good.len() - 1],
        &unknown,
        &empty_key,
        &long_key,
        b"garbage",
    ] {
        let err = sink.write_chunk(bad).expect_err("refused");
        assert!(err.message().contains("raft-snapshot"), "{err}");
    }
    let staged = &sink.staging;
    for space in SENT {
        assert!(
            staged.keyspace(space).is_empty().expect("is_empty"),
            "{space:?}"
        );
    }
    sink.write_chunk(&good).expect("a good chunk");
    let err = sink.finish(0, 0).expect_err("no format key: not a store");
    assert!(err.message().contains("format"), "{err}");
}

proptest! {
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(records) = decode_chunk(&bytes) {
            let mut again = Vec::new();
            for r in &records {
                prop_assert!(!r.key.is_empty() && r.key.len() <= MAX_KEY_BYTES);
                encode_record(&mut again, r.space, r.key, r.value).expect("encode");
            }
            prop_assert_eq!(again, bytes);
        }
    }
}

#[test]
fn sources_and_their_chunks_can_move_to_another_thread() {
    fn is_send_static<T: Send + 'static>(_: &T) {}
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(dir.path());
    let view = store.snapshot_source().expect("a snapshot source");
    is_send_static(&view);
    let chunks = view.chunks(CHUNK_BYTES);
    is_send_static(&chunks);
    drop(store);
    // A new store's view holds its format key, and only that.
    let all: Vec<_> = chunks.map(|c| c.expect("a chunk")).collect();
    assert_eq!(all.len(), 1);
    let records = decode_chunk(&all[0]).expect("decodes");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, record::FORMAT_KEY);
}

#[test]
fn a_staging_directory_left_half_created_is_removed_at_start_unopened() {
    let to_dir = tempfile::tempdir().expect("a temporary directory");
    let staging = to_dir.path().join("raft-snapshot");
    let mut target = open(to_dir.path());
    populate_other(&mut target);
    let before = recover_all(&mut target);
    // What a stop while fjall creates a database can leave: files, no version marker.
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::write(staging.join("0.jnl"), b"").expect("a journal");
    std::fs::write(staging.join("lock"), b"").expect("a lock");
    assert_eq!(target.resume_install(&staging).expect("resume"), None);
    assert!(!staging.exists());
    assert_eq!(recover_all(&mut target), before);
}
