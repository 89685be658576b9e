//! Tests of [`FjallStore`] against [`MemoryState`], the reference meaning of op batches.

use std::collections::HashSet;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::proto::props::BasicProperties;
use crate::proto::table::{FieldTable, FieldValue};
use crate::store::memory::MemoryState;
use crate::store::{BindingRecord, ExchangeRecord, PermissionRecord, QueueRecord, UserRecord};

fn open(dir: &Path) -> FjallStore {
    FjallStore::open(dir, StoreOptions::default()).expect("opening the store")
}

/// A store whose syncs skip `fdatasync`: enough for tests that reopen within the process.
fn open_unsynced(dir: &Path) -> FjallStore {
    FjallStore::open(
        dir,
        StoreOptions {
            sync: SyncPolicy::None,
        },
    )
    .expect("opening the store")
}

fn message(id: u64, body_len: usize) -> Arc<Message> {
    Arc::new(Message {
        exchange: "amq.fanout".into(),
        routing_key: format!("rk-{id}"),
        properties: BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        body: Bytes::from(vec![id as u8; body_len]),
    })
}

fn queue(id: u64, name: &str) -> QueueRecord {
    QueueRecord {
        vhost: "/".into(),
        name: name.into(),
        id,
        auto_delete: false,
        arguments: FieldTable::new(),
    }
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("listing a directory") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    copy_dir_except(from, to, |_| false);
}

fn copy_dir_except(from: &Path, to: &Path, skip: impl Fn(&Path) -> bool) {
    for f in files(from).into_iter().filter(|f| !skip(f)) {
        let rel = f.strip_prefix(from).expect("a path under the directory");
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&f, &dest).expect("copying a file");
    }
}

// ----- the model test -----

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<StoreOp>),
    Sync,
    /// Drop the store, open it again, and compare what it recovers with the model.
    Reopen,
}

fn pick(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(names).prop_map(str::to_owned)
}

fn vhost() -> impl Strategy<Value = String> {
    pick(&["/", "v1", "v2"])
}

fn name() -> impl Strategy<Value = String> {
    pick(&["n1", "n2", "n3"])
}

fn arguments() -> impl Strategy<Value = FieldTable> {
    prop_oneof![
        4 => Just(FieldTable::new()),
        1 => Just([("x-max-length", FieldValue::I64(10))].into_iter().collect()),
        1 => crate::proto::table::arb::table(),
    ]
}

fn body_len() -> impl Strategy<Value = usize> {
    // Both sides of the 1 KiB key-value separation threshold, and the edges themselves.
    prop_oneof![
        6 => 0usize..64,
        1 => Just(1023usize),
        1 => Just(1024usize),
        2 => 1025usize..3000,
    ]
}

fn any_message() -> impl Strategy<Value = Arc<Message>> {
    let props = prop_oneof![
        3 => Just(BasicProperties { delivery_mode: Some(2), ..Default::default() }),
        1 => crate::proto::props::arb::properties(),
    ];
    (
        pick(&["", "amq.fanout", "x1"]),
        "[a-z.]{0,12}",
        props,
        body_len(),
        any::<u8>(),
    )
        .prop_map(|(exchange, routing_key, properties, len, fill)| {
            Arc::new(Message {
                exchange,
                routing_key,
                properties,
                body: Bytes::from(vec![fill; len]),
            })
        })
}

fn binding() -> impl Strategy<Value = BindingRecord> {
    let args = prop_oneof![
        3 => Just(Vec::new()),
        1 => Just(vec![0, 0, 0, 0]),
    ];
    (
        vhost(),
        name(),
        name(),
        any::<bool>(),
        pick(&["", "a.b", "#"]),
        args,
    )
        .prop_map(
            |(vhost, source, destination, to_exchange, routing_key, arguments)| BindingRecord {
                vhost,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
            },
        )
}

const QUEUE_IDS: std::ops::Range<u64> = 1..6;
const MESSAGE_IDS: std::ops::Range<u64> = 1..14;
const SEQS: std::ops::Range<u64> = 0..10;

/// One broker-level action: most are one op; a publish is a message stored once and
/// enqueued in several queues (fanout).
fn action() -> impl Strategy<Value = Vec<StoreOp>> {
    let user = (
        name(),
        "[a-z0-9+/=]{0,20}",
        proptest::collection::vec(name(), 0..3),
    )
        .prop_map(|(name, password_hash, tags)| UserRecord {
            name,
            password_hash,
            tags,
        });
    let perm = (
        name(),
        vhost(),
        pick(&[".*", "", "^q"]),
        pick(&[".*", ""]),
        pick(&[".*"]),
    )
        .prop_map(|(user, vhost, configure, write, read)| PermissionRecord {
            user,
            vhost,
            configure,
            write,
            read,
        });
    let exchange = (
        vhost(),
        name(),
        pick(&["direct", "fanout", "topic"]),
        any::<bool>(),
        any::<bool>(),
        arguments(),
    )
        .prop_map(
            |(vhost, name, kind, auto_delete, internal, arguments)| ExchangeRecord {
                vhost,
                name,
                kind,
                auto_delete,
                internal,
                arguments,
            },
        );
    let queue = (vhost(), name(), QUEUE_IDS, any::<bool>(), arguments()).prop_map(
        |(vhost, name, id, auto_delete, arguments)| QueueRecord {
            vhost,
            name,
            id,
            auto_delete,
            arguments,
        },
    );
    let publish = (
        MESSAGE_IDS,
        any_message(),
        proptest::collection::vec((QUEUE_IDS, SEQS), 1..4),
    )
        .prop_map(|(id, message, targets)| {
            let mut ops = vec![StoreOp::PutMessage { id, message }];
            ops.extend(targets.into_iter().map(|(queue, seq)| StoreOp::Enqueue {
                queue,
                seq,
                message: id,
            }));
            ops
        });
    prop_oneof![
        2 => vhost().prop_map(|v| vec![StoreOp::PutVhost(v)]),
        1 => vhost().prop_map(|v| vec![StoreOp::DeleteVhost(v)]),
        1 => user.prop_map(|u| vec![StoreOp::PutUser(u)]),
        1 => name().prop_map(|u| vec![StoreOp::DeleteUser(u)]),
        1 => perm.prop_map(|p| vec![StoreOp::PutPermission(p)]),
        1 => (name(), vhost()).prop_map(|(user, vhost)| vec![StoreOp::DeletePermission { user, vhost }]),
        2 => exchange.prop_map(|x| vec![StoreOp::PutExchange(x)]),
        1 => (vhost(), name()).prop_map(|(vhost, name)| vec![StoreOp::DeleteExchange { vhost, name }]),
        3 => queue.prop_map(|q| vec![StoreOp::PutQueue(q)]),
        2 => (vhost(), name(), QUEUE_IDS).prop_map(|(vhost, name, id)| vec![StoreOp::DeleteQueue { vhost, name, id }]),
        2 => binding().prop_map(|b| vec![StoreOp::PutBinding(b)]),
        1 => binding().prop_map(|b| vec![StoreOp::DeleteBinding(b)]),
        6 => publish,
        2 => (QUEUE_IDS, SEQS, MESSAGE_IDS).prop_map(|(queue, seq, message)| vec![StoreOp::Enqueue { queue, seq, message }]),
        4 => (QUEUE_IDS, SEQS).prop_map(|(queue, seq)| vec![StoreOp::Dequeue { queue, seq }]),
        2 => MESSAGE_IDS.prop_map(|id| vec![StoreOp::DeleteMessage { id }]),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let batch = proptest::collection::vec(action(), 1..8)
        .prop_map(|actions| Step::Batch(actions.into_iter().flatten().collect()));
    let step = prop_oneof![
        8 => batch,
        2 => Just(Step::Sync),
        1 => Just(Step::Reopen),
    ];
    proptest::collection::vec(step, 1..30)
}

/// Follows the broker's rule for message ids: after a restart the broker only knows the
/// messages that recovered entries refer to, so it stores a message again before
/// enqueueing it unless it stored it since the restart. (The store drops unreferenced
/// messages at recovery; an op sequence that enqueues an id stored before a restart and
/// referenced by nothing since is one the broker never emits.)
fn follow_broker_rule(ops: &[StoreOp], stored: &mut HashSet<u64>) -> Vec<StoreOp> {
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            StoreOp::PutMessage { id, .. } => {
                stored.insert(*id);
            }
            StoreOp::DeleteMessage { id } => {
                stored.remove(id);
            }
            StoreOp::Enqueue { message, .. } if !stored.contains(message) => {
                out.push(StoreOp::PutMessage {
                    id: *message,
                    message: message_for(*message),
                });
                stored.insert(*message);
            }
            _ => {}
        }
        out.push(op.clone());
    }
    out
}

fn message_for(id: u64) -> Arc<Message> {
    message(id, if id.is_multiple_of(2) { 10 } else { 1500 })
}

fn reopen_and_compare(
    dir: &Path,
    store: FjallStore,
    model: &MemoryState,
    gc_keys: usize,
) -> Result<FjallStore, TestCaseError> {
    drop(store);
    let mut store = open_unsynced(dir);
    store.gc_keys_per_sync = gc_keys;
    let recovered = store
        .recover()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(recovered, model.recovered());
    Ok(store)
}

fn run_model(steps: &[Step], gc_keys: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    store.gc_keys_per_sync = gc_keys;
    let mut model = MemoryState::default();
    let mut stored = HashSet::new();
    for step in steps {
        match step {
            Step::Batch(ops) => {
                let ops = follow_broker_rule(ops, &mut stored);
                store
                    .write(&ops)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                for op in &ops {
                    model.apply(op);
                }
            }
            Step::Sync => store
                .sync()
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
            Step::Reopen => {
                store = reopen_and_compare(dir.path(), store, &model, gc_keys)?;
                stored.clear();
            }
        }
    }
    store
        .sync()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let store = reopen_and_compare(dir.path(), store, &model, gc_keys)?;
    // Again, after the first recovery swept garbage: sweeping must not change anything.
    let store = reopen_and_compare(dir.path(), store, &model, gc_keys)?;
    drop(store);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// Any batches, written, synced and reopened at random points, recover as the model
    /// says; the garbage collector sweeps a few keys per sync to cross its boundaries.
    #[test]
    fn recovers_what_the_model_says(steps in steps(), gc_keys in 1usize..6) {
        run_model(&steps, gc_keys)?;
    }
}

// ----- deleting queues -----

#[test]
fn deleting_a_big_queue_is_one_small_write_and_gc_sweeps_it_in_steps() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    store.gc_keys_per_sync = 300;
    let mut model = MemoryState::default();
    let mut ops = vec![
        StoreOp::PutQueue(queue(1, "big")),
        StoreOp::PutQueue(queue(2, "small")),
    ];
    ops.push(StoreOp::PutMessage {
        id: 1,
        message: message(1, 16),
    });
    for seq in 0..1000 {
        ops.push(StoreOp::Enqueue {
            queue: 1,
            seq,
            message: 1,
        });
    }
    ops.push(StoreOp::Enqueue {
        queue: 2,
        seq: 0,
        message: 1,
    });
    store.write(&ops).expect("write");
    store.sync().expect("sync");
    ops.iter().for_each(|op| model.apply(op));

    let delete = StoreOp::DeleteQueue {
        vhost: "/".into(),
        name: "big".into(),
        id: 1,
    };
    // The deletion writes the queue record and its generation, not its 1000 entries.
    let mut staged = Staged::default();
    store
        .catalog
        .clone()
        .apply(&delete, &mut staged, &mut Vec::new());
    assert_eq!(staged.len(), 2);
    store.write(std::slice::from_ref(&delete)).expect("write");
    model.apply(&delete);
    assert_eq!(
        store.entries.len().expect("len"),
        1001,
        "entries are swept later"
    );

    // Four syncs of 300 keys sweep 1000 entries; then the generation is forgotten.
    for _ in 0..3 {
        store.sync().expect("sync");
        assert_eq!(store.catalog.generation(1), 1);
    }
    store.sync().expect("sync");
    assert_eq!(store.entries.len().expect("len"), 1);
    assert_eq!(
        store.catalog.generation(1),
        0,
        "no entry left: generation record dropped"
    );
    assert!(store.gc.is_empty());
    assert_eq!(store.recover().expect("recover"), model.recovered());
}

#[test]
fn a_queue_id_reused_after_restart_never_sees_its_predecessors_entries() {
    // The broker numbers queues from the highest recovered id, so deleting the newest
    // queue and restarting reuses its id.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    let mut model = MemoryState::default();
    let mut ops = vec![StoreOp::PutQueue(queue(7, "old"))];
    for id in 0..50 {
        ops.push(StoreOp::PutMessage {
            id,
            message: message(id, 16),
        });
        ops.push(StoreOp::Enqueue {
            queue: 7,
            seq: id,
            message: id,
        });
    }
    ops.push(StoreOp::DeleteQueue {
        vhost: "/".into(),
        name: "old".into(),
        id: 7,
    });
    store.write(&ops).expect("write");
    // Synced, but the store stops before any garbage collection ran.
    store.db.persist(PersistMode::SyncData).expect("persist");
    ops.iter().for_each(|op| model.apply(op));
    drop(store);

    let mut store = open(dir.path());
    assert_eq!(store.catalog.generation(7), 1);
    let again = [
        StoreOp::PutQueue(queue(7, "new")),
        StoreOp::PutMessage {
            id: 100,
            message: message(100, 16),
        },
        StoreOp::Enqueue {
            queue: 7,
            seq: 3,
            message: 100,
        },
    ];
    store.write(&again).expect("write");
    store.sync().expect("sync");
    again.iter().for_each(|op| model.apply(op));
    drop(store);
    let mut store = open(dir.path());
    let recovered = store.recover().expect("recover");
    assert_eq!(recovered, model.recovered());
    assert_eq!(recovered.entries.len(), 1);
    assert_eq!(
        store.entries.len().expect("len"),
        1,
        "recovery swept the stale entries"
    );
    assert_eq!(
        store.messages.len().expect("len"),
        1,
        "and the messages nothing refers to"
    );
}

/// A queue with entries at seqs 0..10, deleted, and swept up to seq 4 (budget 4, one sync).
fn half_swept_queue() -> (tempfile::TempDir, FjallStore, MemoryState) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    store.gc_keys_per_sync = 4;
    let mut model = MemoryState::default();
    let mut ops = vec![
        StoreOp::PutQueue(queue(1, "q")),
        StoreOp::PutMessage {
            id: 1,
            message: message(1, 16),
        },
    ];
    ops.extend((0..10).map(|seq| StoreOp::Enqueue {
        queue: 1,
        seq,
        message: 1,
    }));
    ops.push(StoreOp::DeleteQueue {
        vhost: "/".into(),
        name: "q".into(),
        id: 1,
    });
    store.write(&ops).expect("write");
    ops.iter().for_each(|op| model.apply(op));
    store.sync().expect("sync");
    assert_eq!(store.gc.get(&1).map(|t| t.cursor), Some(4));
    (dir, store, model)
}

fn write_both(store: &mut FjallStore, model: &mut MemoryState, ops: &[StoreOp]) {
    store.write(ops).expect("write");
    ops.iter().for_each(|op| model.apply(op));
}

#[test]
fn an_entry_written_behind_the_sweep_keeps_its_generation() {
    let (dir, mut store, mut model) = half_swept_queue();
    // The id is declared again and enqueued at a seq the sweep has passed.
    let ops = [
        StoreOp::PutQueue(queue(1, "q")),
        StoreOp::Enqueue {
            queue: 1,
            seq: 1,
            message: 1,
        },
    ];
    write_both(&mut store, &mut model, &ops);
    for _ in 0..3 {
        store.sync().expect("sync");
    }
    assert!(store.gc.is_empty());
    assert_eq!(
        store.catalog.generation(1),
        1,
        "the new entry is of generation 1"
    );
    let store = reopen_and_compare(dir.path(), store, &model, 4).expect("same as the model");
    assert_eq!(store.entries.len().expect("len"), 1);
}

#[test]
fn deleting_a_queue_again_restarts_its_sweep() {
    let (_dir, mut store, mut model) = half_swept_queue();
    let ops = [
        StoreOp::PutQueue(queue(1, "q")),
        StoreOp::Enqueue {
            queue: 1,
            seq: 2,
            message: 1,
        },
        StoreOp::Enqueue {
            queue: 1,
            seq: 8,
            message: 1,
        },
        StoreOp::DeleteQueue {
            vhost: "/".into(),
            name: "q".into(),
            id: 1,
        },
    ];
    write_both(&mut store, &mut model, &ops);
    for _ in 0..4 {
        store.sync().expect("sync");
    }
    assert!(store.gc.is_empty());
    assert_eq!(
        store.entries.len().expect("len"),
        0,
        "every stale entry swept"
    );
    assert_eq!(
        store.catalog.generation(1),
        0,
        "and the generation forgotten"
    );
    assert_eq!(store.recover().expect("recover"), model.recovered());
}

// ----- durability -----

/// Batch `i` stores message `i` in queue 1.
fn numbered_batch(i: u64) -> Vec<StoreOp> {
    vec![
        StoreOp::PutMessage {
            id: i,
            message: message(i, if i.is_multiple_of(3) { 2000 } else { 16 }),
        },
        StoreOp::Enqueue {
            queue: 1,
            seq: i,
            message: i,
        },
    ]
}

/// The model after the first `n` of `batches`.
fn model_after(batches: &[Vec<StoreOp>], n: usize) -> Recovered {
    let mut model = MemoryState::default();
    for op in batches[..n].iter().flatten() {
        model.apply(op);
    }
    model.recovered()
}

/// Asserts that `recovered` is the state after some prefix of `batches` of at least
/// `synced` batches, and returns its length.
fn assert_prefix(recovered: &Recovered, batches: &[Vec<StoreOp>], synced: usize) -> usize {
    (synced..=batches.len())
        .find(|&n| *recovered == model_after(batches, n))
        .unwrap_or_else(|| panic!("recovered state is no prefix of at least {synced} batches"))
}

fn numbered_batches(count: u64) -> Vec<Vec<StoreOp>> {
    let mut batches = vec![vec![StoreOp::PutQueue(queue(1, "q"))]];
    batches.extend((1..count).map(numbered_batch));
    batches
}

#[test]
fn synced_batches_survive_a_drop_without_a_final_sync() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let batches = numbered_batches(40);
    let mut store = open(dir.path());
    for b in &batches[..30] {
        store.write(b).expect("write");
    }
    store.sync().expect("sync");
    for b in &batches[30..] {
        store.write(b).expect("write");
    }
    drop(store);
    let recovered = open(dir.path()).recover().expect("recover");
    assert_prefix(&recovered, &batches, 30);
}

#[test]
fn a_crash_image_holds_every_synced_batch_and_a_torn_journal_tail_opens() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let batches = numbered_batches(60);
    let mut store = open(dir.path());
    for b in &batches[..45] {
        store.write(b).expect("write");
        store.sync().expect("sync");
    }
    for b in &batches[45..] {
        store.write(b).expect("write");
    }
    // What the disk holds if the process died now: the files as they are, the journal's
    // write buffer lost.
    let image = tempfile::tempdir().expect("a temporary directory");
    copy_dir(dir.path(), image.path());
    drop(store);
    let recovered = open(image.path()).recover().expect("recover");
    assert_prefix(&recovered, &batches, 45);

    // Tear the journal's tail: cut it at points inside the last batches written. Each cut
    // opens, holding a prefix of whole batches that never shrinks as the cut moves on.
    let journal = files(dir.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "jnl"))
        .expect("a journal file");
    let bytes = std::fs::read(&journal).expect("reading the journal");
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .expect("a written journal")
        + 1;
    let mut last = 0;
    let cuts = (end.saturating_sub(300)..end).step_by(7).chain([end]);
    for cut in cuts {
        let torn = tempfile::tempdir().expect("a temporary directory");
        copy_dir_except(dir.path(), torn.path(), |f| f == journal);
        let torn_journal = torn
            .path()
            .join(journal.strip_prefix(dir.path()).expect("under dir"));
        // The preallocated journal is zeros past what was written; keep a few KiB of them.
        let mut cut_bytes = bytes[..(end + 4096).min(bytes.len())].to_vec();
        cut_bytes[cut..].fill(0);
        std::fs::write(&torn_journal, &cut_bytes).expect("writing the torn journal");
        let recovered = open(torn.path()).recover().expect("a torn tail must open");
        let n = assert_prefix(&recovered, &batches, 0);
        assert!(
            n >= last,
            "cut at {cut} recovered {n} batches, an earlier cut {last}"
        );
        last = n;
    }
    assert_eq!(last, batches.len());
}

// ----- corruption and refusal -----

#[test]
fn a_corrupt_message_record_fails_recovery_naming_its_location() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    store.write(&numbered_batches(10).concat()).expect("write");
    store.sync().expect("sync");
    // Garbage under message 7, written through fjall below the store.
    store
        .messages
        .insert(record::message_key(7), b"\x01garbage".to_vec())
        .expect("insert");
    store.db.persist(PersistMode::SyncAll).expect("persist");
    drop(store);
    let err = open(dir.path())
        .recover()
        .expect_err("a corrupt record must fail recovery");
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("keyspace `messages`"), "{text}");
    assert!(text.contains("(message 7)"), "{text}");
}

#[test]
fn an_entry_newer_than_its_queue_generation_is_refused() {
    // A generation record lost: the entries it made live must not be swept as stale.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    let ops = [
        StoreOp::PutQueue(queue(1, "q")),
        StoreOp::PutMessage {
            id: 1,
            message: message(1, 16),
        },
        StoreOp::Enqueue {
            queue: 1,
            seq: 0,
            message: 1,
        },
    ];
    store.write(&ops).expect("write");
    store
        .entries
        .insert(record::entry_key(1, 1), record::encode_entry(1, 2))
        .expect("insert");
    drop(store);
    let err = open(dir.path())
        .recover()
        .expect_err("generation from nowhere");
    assert!(err.0.contains("keyspace `entries`"), "{err}");
    assert!(err.0.contains("(queue 1, seq 1)"), "{err}");
}

#[test]
fn a_corrupt_metadata_record_or_format_refuses_to_open() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(dir.path());
    store
        .meta
        .insert(record::queue_key(3), vec![1, 0, 0])
        .expect("insert");
    drop(store);
    let err = FjallStore::open(dir.path(), StoreOptions::default()).expect_err("corrupt queue");
    assert!(err.0.contains("keyspace `meta`"), "{err}");
    assert!(err.0.contains(&dir.path().display().to_string()), "{err}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(dir.path());
    store
        .meta
        .insert(record::FORMAT_KEY, vec![99])
        .expect("insert");
    drop(store);
    let err = FjallStore::open(dir.path(), StoreOptions::default()).expect_err("unknown format");
    assert!(err.0.contains("format version 99"), "{err}");
}

#[test]
fn a_scribbled_table_file_is_refused_not_read_as_empty() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    let batches = numbered_batches(200);
    for b in &batches {
        store.write(b).expect("write");
    }
    store.sync().expect("sync");
    // Move everything from the journal into table files, then damage the entries table.
    for ks in [&store.meta, &store.messages, &store.entries] {
        ks.rotate_memtable_and_wait().expect("flush");
    }
    let entries_dir = store.entries.path().to_path_buf();
    drop(store);
    let table = files(&entries_dir.join("tables"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("an entries table file");
    let mut bytes = std::fs::read(&table).expect("reading the table");
    let mid = bytes.len() / 4;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5A;
    }
    std::fs::write(&table, &bytes).expect("scribbling the table");

    let outcome =
        FjallStore::open(dir.path(), StoreOptions::default()).and_then(|mut s| s.recover());
    match outcome {
        Ok(r) => panic!(
            "a damaged table recovered {} entries without an error",
            r.entries.len()
        ),
        Err(e) => assert!(e.0.contains(&dir.path().display().to_string()), "{e}"),
    }
}

#[test]
fn a_store_in_use_is_refused_naming_its_lock_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let _store = open(dir.path());
    let err = FjallStore::open(dir.path(), StoreOptions::default()).expect_err("locked");
    assert!(err.0.contains("lock"), "{err}");
    assert!(err.0.contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn sync_policies_parse() {
    assert_eq!("batch".parse::<SyncPolicy>(), Ok(SyncPolicy::Batch));
    assert_eq!("none".parse::<SyncPolicy>(), Ok(SyncPolicy::None));
    assert!("always".parse::<SyncPolicy>().is_err());
    assert_eq!(SyncPolicy::default().to_string(), "batch");
}

// ----- measurements (run by hand: cargo test --release --lib store::disk -- --ignored --nocapture) -----

#[test]
#[ignore = "a measurement, not a check; takes tens of seconds"]
fn measure_recovery_and_throughput() {
    use std::time::Instant;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let count: u64 = 1_000_000;
    let mut store = open(dir.path());
    store
        .write(&[StoreOp::PutQueue(queue(1, "q"))])
        .expect("write");
    let start = Instant::now();
    let mut ops = Vec::with_capacity(1000);
    for id in 0..count {
        ops.push(StoreOp::PutMessage {
            id,
            message: message(id, 16),
        });
        ops.push(StoreOp::Enqueue {
            queue: 1,
            seq: id,
            message: id,
        });
        if ops.len() >= 1000 {
            store.write(&ops).expect("write");
            store.sync().expect("sync");
            ops.clear();
        }
    }
    store.write(&ops).expect("write");
    store.sync().expect("sync");
    println!("wrote {count} messages in {:?}", start.elapsed());
    drop(store);
    let (apparent, allocated) = disk_usage(dir.path());
    println!("on disk: {apparent} bytes apparent, {allocated} bytes allocated");

    for flushed in [false, true] {
        let start = Instant::now();
        let mut store = open(dir.path());
        let opened = start.elapsed();
        let recovered = store.recover().expect("recover");
        println!(
            "memtables flushed before: {flushed}: open {opened:?}, open+recover {:?} for {} entries",
            start.elapsed(),
            recovered.entries.len()
        );
        assert_eq!(recovered.entries.len() as u64, count);
        drop(recovered);
        if !flushed {
            for ks in [&store.meta, &store.messages, &store.entries] {
                ks.rotate_memtable_and_wait().expect("flush");
            }
        }
        drop(store);
        let (apparent, allocated) = disk_usage(dir.path());
        println!("on disk: {apparent} bytes apparent, {allocated} bytes allocated");
        for f in files(dir.path()) {
            let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            if len > 1 << 20 {
                println!(
                    "  {} {len}",
                    f.strip_prefix(dir.path()).unwrap_or(&f).display()
                );
            }
        }
    }

    for policy in [SyncPolicy::Batch, SyncPolicy::None] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = FjallStore::open(dir.path(), StoreOptions { sync: policy }).expect("open");
        store
            .write(&[StoreOp::PutQueue(queue(1, "q"))])
            .expect("write");
        let rounds: u64 = 500;
        let start = Instant::now();
        for r in 0..rounds {
            let mut ops = Vec::with_capacity(400);
            for i in 0..200 {
                let id = r * 200 + i;
                ops.push(StoreOp::PutMessage {
                    id,
                    message: message(id, 16),
                });
                ops.push(StoreOp::Enqueue {
                    queue: 1,
                    seq: id,
                    message: id,
                });
            }
            store.write(&ops).expect("write");
            store.sync().expect("sync");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "sync={policy}: {rounds} batches of 200 pairs in {secs:.2}s: {:.0} ops/s, {:.0} batches/s",
            (rounds * 400) as f64 / secs,
            rounds as f64 / secs
        );
    }
}

fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    files(dir).iter().fold((0, 0), |(a, b), f| {
        let m = std::fs::metadata(f).expect("metadata");
        (a + m.len(), b + m.blocks() * 512)
    })
}
