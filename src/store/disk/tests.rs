//! Tests of [`FjallStore`] against [`MemoryState`], the reference meaning of op batches.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::proto::command::Message;
use crate::proto::props::BasicProperties;
use crate::proto::table::{FieldTable, FieldValue};
use crate::store::memory::MemoryState;
use crate::store::{
    BindingRecord, DelayedRecord, EntryBody, ExchangeRecord, HeadLimit, PermissionRecord,
    PolicyRecord, QueueRecord, RecoveredQueue, TopicPermissionRecord, UserLimits, UserRecord,
    VhostLimits,
};

/// Options for tests: no space reserve (tests that need one ask for it).
fn options() -> StoreOptions {
    StoreOptions {
        reserve_bytes: 0,
        ..StoreOptions::default()
    }
}

pub(super) fn open(dir: &Path) -> FjallStore {
    FjallStore::open(dir, options()).expect("opening the store")
}

/// A store whose syncs skip `fdatasync`: enough for tests that reopen within the process.
fn open_unsynced(dir: &Path) -> FjallStore {
    FjallStore::open(
        dir,
        StoreOptions {
            sync: SyncPolicy::None,
            ..options()
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

/// One broker-level action. Positions and shared ids are filled in by [`Harness`] the way
/// the broker picks them (fresh positions, each shared message referred to by exactly as
/// many entries as it counts, dequeues naming the entry's shared message).
#[derive(Debug, Clone)]
enum Action {
    /// A metadata op, as is.
    Meta(StoreOp),
    /// Deletes a queue; with `reuse_seqs`, its id later counts positions from 0 again.
    DeleteQueue {
        vhost: String,
        name: String,
        id: u64,
        reuse_seqs: bool,
    },
    /// A persistent message routed to durable queues: inline for one queue, shared for
    /// several.
    Publish {
        message: Arc<Message>,
        queues: Vec<u64>,
        expires_at_ms: Option<u64>,
    },
    /// Dequeues the `pick`th entry of the queue (or a position it does not hold).
    Dequeue { queue: u64, pick: usize },
    /// Purges from the `pick`th position held (durable or paged), or from 0 or the end.
    PurgeFrom { queue: u64, pick: usize },
    /// Pages a transient message out.
    PageOut {
        queue: u64,
        message: Arc<Message>,
        expires_at_ms: Option<u64>,
    },
    /// Drops paged messages up to the `pick`th one.
    DropPaged { queue: u64, pick: usize },
}

#[derive(Debug, Clone)]
enum Step {
    Batch(Vec<Action>),
    Sync,
    /// Compare a `load` with the model.
    Load {
        queue: u64,
        from_seq: u64,
        max: usize,
    },
    /// Compare every queue's contents, drop the store, open it again, and compare what it
    /// recovers with the model for several head limits.
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
    // Both sides of the 1 KiB threshold (an inline entry's value reaches it with a body a
    // little under 1 KiB), and the edges themselves.
    prop_oneof![
        6 => 0usize..64,
        1 => 960usize..1000,
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

fn expiry() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![3 => Just(None), 1 => any::<u64>().prop_map(Some)]
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

fn meta_op() -> impl Strategy<Value = StoreOp> {
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
    let limit = || prop_oneof![2 => Just(None), 1 => (-2i64..3).prop_map(Some), 1 => any::<i64>().prop_map(Some)];
    let vhost_limits =
        (vhost(), limit(), limit()).prop_map(|(vhost, c, q)| StoreOp::PutVhostLimits {
            vhost,
            limits: VhostLimits {
                max_connections: c,
                max_queues: q,
            },
        });
    let user_limits = (name(), limit(), limit()).prop_map(|(user, c, ch)| StoreOp::PutUserLimits {
        user,
        limits: UserLimits {
            max_connections: c,
            max_channels: ch,
        },
    });
    let policy = (
        any::<bool>(),
        vhost(),
        name(),
        name(),
        pick(&["queues", "exchanges", "all"]),
        any::<i64>(),
        arguments(),
    )
        .prop_map(
            |(operator, vhost, name, pattern, apply_to, priority, definition)| PolicyRecord {
                operator,
                vhost,
                name,
                pattern,
                apply_to,
                priority,
                definition,
            },
        );
    let topic = (name(), vhost(), name(), name(), name()).prop_map(
        |(user, vhost, exchange, write, read)| TopicPermissionRecord {
            user,
            vhost,
            exchange,
            write,
            read,
        },
    );
    let delayed = (0u64..6, vhost(), name(), any::<u64>(), any_message()).prop_map(
        |(id, vhost, exchange, due_ms, message)| DelayedRecord {
            id,
            vhost,
            exchange,
            due_ms,
            message,
        },
    );
    prop_oneof![
        1 => delayed.prop_map(StoreOp::PutDelayed),
        1 => (0u64..6).prop_map(|id| StoreOp::DeleteDelayed { id }),
        1 => topic.prop_map(StoreOp::PutTopicPermission),
        1 => (name(), vhost(), name()).prop_map(|(user, vhost, exchange)| {
            StoreOp::DeleteTopicPermission { user, vhost, exchange }
        }),
        1 => policy.prop_map(StoreOp::PutPolicy),
        1 => (any::<bool>(), vhost(), name())
            .prop_map(|(operator, vhost, name)| StoreOp::DeletePolicy { operator, vhost, name }),
        1 => vhost_limits,
        1 => user_limits,
        2 => vhost().prop_map(StoreOp::PutVhost),
        1 => vhost().prop_map(StoreOp::DeleteVhost),
        1 => user.prop_map(StoreOp::PutUser),
        1 => name().prop_map(StoreOp::DeleteUser),
        1 => perm.prop_map(StoreOp::PutPermission),
        1 => (name(), vhost()).prop_map(|(user, vhost)| StoreOp::DeletePermission { user, vhost }),
        2 => exchange.prop_map(StoreOp::PutExchange),
        1 => (vhost(), name()).prop_map(|(vhost, name)| StoreOp::DeleteExchange { vhost, name }),
        4 => queue.prop_map(StoreOp::PutQueue),
        2 => binding().prop_map(StoreOp::PutBinding),
        1 => binding().prop_map(StoreOp::DeleteBinding),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => meta_op().prop_map(Action::Meta),
        2 => (vhost(), name(), QUEUE_IDS, any::<bool>()).prop_map(|(vhost, name, id, reuse_seqs)| {
            Action::DeleteQueue { vhost, name, id, reuse_seqs }
        }),
        8 => (any_message(), proptest::collection::vec(QUEUE_IDS, 1..4), expiry()).prop_map(
            |(message, queues, expires_at_ms)| Action::Publish { message, queues, expires_at_ms }
        ),
        5 => (QUEUE_IDS, 0usize..12).prop_map(|(queue, pick)| Action::Dequeue { queue, pick }),
        1 => (QUEUE_IDS, 0usize..12).prop_map(|(queue, pick)| Action::PurgeFrom { queue, pick }),
        3 => (QUEUE_IDS, any_message(), expiry()).prop_map(|(queue, message, expires_at_ms)| {
            Action::PageOut { queue, message, expires_at_ms }
        }),
        2 => (QUEUE_IDS, 0usize..12).prop_map(|(queue, pick)| Action::DropPaged { queue, pick }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let batch = proptest::collection::vec(action(), 1..8).prop_map(Step::Batch);
    let load = (QUEUE_IDS, 0u64..14, 0usize..8).prop_map(|(queue, from_seq, max)| Step::Load {
        queue,
        from_seq,
        max,
    });
    let step = prop_oneof![
        8 => batch,
        2 => Just(Step::Sync),
        2 => load,
        1 => Just(Step::Reopen),
    ];
    proptest::collection::vec(step, 1..30)
}

/// Turns actions into ops as the broker would, applying each op to the model as it goes
/// (so that an action sees the batch's earlier ops, as the store must).
#[derive(Debug, Default)]
struct Harness {
    model: MemoryState,
    /// The next position of each queue id.
    next_seq: HashMap<u64, u64>,
    /// The next shared message id (ids are never reused).
    next_shared: u64,
}

impl Harness {
    fn push(&mut self, ops: &mut Vec<StoreOp>, op: StoreOp) {
        self.model.apply(&op);
        ops.push(op);
    }

    fn take_seq(&mut self, queue: u64) -> u64 {
        let seq = self.next_seq.entry(queue).or_default();
        *seq += 1;
        *seq - 1
    }

    /// Every position the queue holds, durable and paged.
    fn held(&self, queue: u64) -> Vec<LoadedEntry> {
        self.model.load(queue, 0, usize::MAX, u64::MAX)
    }

    fn ops(&mut self, actions: &[Action]) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for action in actions {
            self.action(action, &mut ops);
        }
        ops
    }

    fn action(&mut self, action: &Action, ops: &mut Vec<StoreOp>) {
        match action.clone() {
            Action::Meta(op) => self.push(ops, op),
            Action::DeleteQueue {
                vhost,
                name,
                id,
                reuse_seqs,
            } => {
                self.push(ops, StoreOp::DeleteQueue { vhost, name, id });
                if reuse_seqs {
                    self.next_seq.remove(&id);
                }
            }
            Action::Publish {
                message,
                mut queues,
                expires_at_ms,
            } => {
                queues.sort_unstable();
                queues.dedup();
                let body = if queues.len() >= 2 {
                    let id = self.next_shared;
                    self.next_shared += 1;
                    let refs = queues.len() as u32;
                    self.push(ops, StoreOp::PutShared { id, message, refs });
                    EntryBody::Shared(id)
                } else {
                    EntryBody::Inline(message)
                };
                for queue in queues {
                    let seq = self.take_seq(queue);
                    let body = body.clone();
                    self.push(
                        ops,
                        StoreOp::Enqueue {
                            queue,
                            seq,
                            body,
                            expires_at_ms,
                        },
                    );
                }
            }
            Action::Dequeue { queue, pick } => {
                let durable: Vec<LoadedEntry> =
                    self.held(queue).into_iter().filter(|e| e.durable).collect();
                let (seq, shared) = match durable.get(pick % (durable.len() + 1)) {
                    Some(e) => (e.seq, e.shared),
                    // A position the queue does not hold: nothing happens.
                    None => (self.next_seq.get(&queue).copied().unwrap_or(0) + 1, None),
                };
                self.push(ops, StoreOp::Dequeue { queue, seq, shared });
            }
            Action::PurgeFrom { queue, pick } => {
                let held = self.held(queue);
                let from_seq = match held.get(pick % (held.len() + 2)) {
                    Some(e) => e.seq,
                    None if pick % 2 == 0 => 0,
                    None => self.next_seq.get(&queue).copied().unwrap_or(0),
                };
                self.push(ops, StoreOp::PurgeFrom { queue, from_seq });
            }
            Action::PageOut {
                queue,
                message,
                expires_at_ms,
            } => {
                let seq = self.take_seq(queue);
                self.push(
                    ops,
                    StoreOp::PageOut {
                        queue,
                        seq,
                        message,
                        expires_at_ms,
                    },
                );
            }
            Action::DropPaged { queue, pick } => {
                let paged: Vec<u64> = self
                    .held(queue)
                    .iter()
                    .filter(|e| !e.durable)
                    .map(|e| e.seq)
                    .collect();
                let up_to_seq = match paged.get(pick % (paged.len() + 1)) {
                    Some(&seq) => seq,
                    None => self.next_seq.get(&queue).copied().unwrap_or(0),
                };
                self.push(ops, StoreOp::DropPaged { queue, up_to_seq });
            }
        }
    }
}

fn fail(e: StoreError) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

/// Every queue id's contents, paged included, as `load` and the model read them.
fn compare_loads(store: &mut FjallStore, model: &MemoryState) -> Result<(), TestCaseError> {
    for queue in QUEUE_IDS {
        let loaded = store.load(queue, 0, usize::MAX, u64::MAX).map_err(fail)?;
        prop_assert_eq!(
            loaded,
            model.load(queue, 0, usize::MAX, u64::MAX),
            "queue {}",
            queue
        );
    }
    Ok(())
}

fn reopen_and_compare(
    dir: &Path,
    store: FjallStore,
    model: &mut MemoryState,
    gc_keys: usize,
) -> Result<FjallStore, TestCaseError> {
    drop(store);
    let mut store = open_unsynced(dir);
    store.gc_keys_per_sync = gc_keys;
    model.discard_paged();
    // The first recovery sweeps garbage; the later ones must read the same.
    for head_limit in [2, 0, 1, 5, usize::MAX] {
        let recovered = store
            .recover(HeadLimit::entries(head_limit))
            .map_err(fail)?;
        prop_assert_eq!(
            recovered,
            model.recovered(HeadLimit::entries(head_limit)),
            "head limit {}",
            head_limit
        );
    }
    // Byte budgets cut heads the same way: per queue, and across queues in id order.
    for (queue_bytes, total_bytes) in [(600, u64::MAX), (3000, 4000), (u64::MAX, 1500)] {
        let limit = HeadLimit {
            entries: usize::MAX,
            queue_bytes,
            total_bytes,
        };
        let recovered = store.recover(limit).map_err(fail)?;
        prop_assert_eq!(recovered, model.recovered(limit), "head limit {:?}", limit);
    }
    // Recovery reconciled the counts: exactly the model's shared messages are stored.
    prop_assert_eq!(store.shared.len(), model.shared_count());
    prop_assert_eq!(
        store
            .keyspace(Space::Messages)
            .len()
            .map_err(|e| fail(store.read_error(Space::Messages, None, e)))?,
        model.shared_count()
    );
    prop_assert_eq!(
        store
            .keyspace(Space::Refs)
            .len()
            .map_err(|e| fail(store.read_error(Space::Refs, None, e)))?,
        model.shared_count()
    );
    prop_assert!(
        store
            .keyspace(Space::Paged)
            .is_empty()
            .map_err(|e| fail(store.read_error(Space::Paged, None, e)))?
    );
    compare_loads(&mut store, model)?;
    Ok(store)
}

fn run_model(steps: &[Step], gc_keys: usize) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    store.gc_keys_per_sync = gc_keys;
    let mut harness = Harness::default();
    for step in steps {
        match step {
            Step::Batch(actions) => {
                let ops = harness.ops(actions);
                store.write(&ops).map_err(fail)?;
            }
            Step::Sync => store.sync().map_err(fail)?,
            Step::Load {
                queue,
                from_seq,
                max,
            } => {
                let loaded = store
                    .load(*queue, *from_seq, *max, u64::MAX)
                    .map_err(fail)?;
                prop_assert_eq!(
                    loaded,
                    harness.model.load(*queue, *from_seq, *max, u64::MAX)
                );
            }
            Step::Reopen => {
                compare_loads(&mut store, &harness.model)?;
                store = reopen_and_compare(dir.path(), store, &mut harness.model, gc_keys)?;
            }
        }
    }
    compare_loads(&mut store, &harness.model)?;
    store.sync().map_err(fail)?;
    let store = reopen_and_compare(dir.path(), store, &mut harness.model, gc_keys)?;
    drop(store);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 200, ..ProptestConfig::default() })]

    /// Any batches, written, synced, loaded and reopened at random points, read back as
    /// the model says; the garbage collector sweeps a few keys per sync to cross its
    /// boundaries.
    #[test]
    fn reads_back_what_the_model_says(steps in steps(), gc_keys in 1usize..6) {
        run_model(&steps, gc_keys)?;
    }
}

// ----- helpers for the example tests -----

fn write_both(store: &mut FjallStore, model: &mut MemoryState, ops: &[StoreOp]) {
    store.write(ops).expect("write");
    ops.iter().for_each(|op| model.apply(op));
}

pub(super) fn inline(queue: u64, seq: u64, body_len: usize) -> StoreOp {
    StoreOp::Enqueue {
        queue,
        seq,
        body: EntryBody::Inline(message(seq, body_len)),
        expires_at_ms: None,
    }
}

fn shared_entry(queue: u64, seq: u64, id: u64) -> StoreOp {
    StoreOp::Enqueue {
        queue,
        seq,
        body: EntryBody::Shared(id),
        expires_at_ms: Some(1000 + seq),
    }
}

/// Message `id` (`size` bytes) stored once and enqueued at seq `id` in queues `a` and `b`.
fn shared_by_two(a: u64, b: u64, id: u64, size: usize) -> [StoreOp; 3] {
    [
        StoreOp::PutShared {
            id,
            message: message(id, size),
            refs: 2,
        },
        shared_entry(a, id, id),
        shared_entry(b, id, id),
    ]
}

fn delete_queue(id: u64, name: &str) -> StoreOp {
    StoreOp::DeleteQueue {
        vhost: "/".into(),
        name: name.into(),
        id,
    }
}

fn key_count(store: &FjallStore, space: Space) -> usize {
    store.keyspace(space).len().expect("counting keys")
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
        StoreOp::PutShared {
            id: 1,
            message: message(1, 16),
            refs: 2,
        },
        shared_entry(1, 0, 1),
        shared_entry(2, 0, 1),
    ];
    // Every tenth entry keeps its message in `bodies`.
    ops.extend((1..1000).map(|seq| inline(1, seq, if seq % 10 == 0 { 2000 } else { 16 })));
    write_both(&mut store, &mut model, &ops);
    store.sync().expect("sync");
    assert_eq!(key_count(&store, Space::Bodies), 99);

    let delete = delete_queue(1, "big");
    // The deletion writes the queue record and its generation, not its 1000 entries.
    let mut staged = Staged::default();
    store
        .catalog
        .clone()
        .apply(&delete, &mut staged, &mut Vec::new());
    assert_eq!(staged.len(), 2);
    write_both(&mut store, &mut model, std::slice::from_ref(&delete));
    assert_eq!(
        key_count(&store, Space::Entries),
        1001,
        "entries are swept later"
    );
    assert_eq!(store.shared[&1].refs, 2, "and so are their references");

    // Four syncs of 300 keys sweep 1000 entries; then the generation is forgotten.
    for _ in 0..3 {
        store.sync().expect("sync");
        assert_eq!(store.catalog.generation(1), 1);
    }
    store.sync().expect("sync");
    assert_eq!(key_count(&store, Space::Entries), 1);
    assert_eq!(key_count(&store, Space::Bodies), 0);
    assert_eq!(store.shared[&1].refs, 1, "the sweep released the reference");
    assert_eq!(
        store.catalog.generation(1),
        0,
        "no key left: generation record dropped"
    );
    assert!(store.gc.is_empty());
    for h in [0, 10] {
        assert_eq!(
            store.recover(HeadLimit::entries(h)).expect("recover"),
            model.recovered(HeadLimit::entries(h))
        );
    }
}

#[test]
fn a_queue_id_reused_after_restart_never_sees_its_predecessors_entries() {
    // The broker numbers queues from the highest recovered id, so deleting the newest
    // queue and restarting reuses its id, and its positions start at 0 again.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    let mut model = MemoryState::default();
    let mut ops = vec![
        StoreOp::PutQueue(queue(7, "old")),
        StoreOp::PutQueue(queue(8, "other")),
    ];
    for seq in 0..50 {
        ops.extend(shared_by_two(7, 8, seq, 16));
    }
    ops.push(delete_queue(7, "old"));
    write_both(&mut store, &mut model, &ops);
    // Synced, but the store stops before any garbage collection ran.
    store.db().persist(PersistMode::SyncData).expect("persist");
    drop(store);

    let mut store = open(dir.path());
    assert_eq!(store.catalog.generation(7), 1);
    let again = [StoreOp::PutQueue(queue(7, "new")), inline(7, 3, 16)];
    write_both(&mut store, &mut model, &again);
    assert_eq!(
        store.load(7, 0, 100, u64::MAX).expect("load"),
        model.load(7, 0, 100, u64::MAX)
    );
    store.sync().expect("sync");
    drop(store);
    let mut store = open(dir.path());
    let recovered = store
        .recover(HeadLimit::entries(usize::MAX))
        .expect("recover");
    assert_eq!(recovered, model.recovered(HeadLimit::entries(usize::MAX)));
    assert_eq!(recovered.contents[0].count, 1);
    assert_eq!(
        key_count(&store, Space::Entries),
        51,
        "recovery swept the stale entries"
    );
    assert_eq!(
        store.shared.values().map(|c| c.refs).max(),
        Some(1),
        "and released their references"
    );
}

/// A queue with entries at seqs 0..10 (each sharing a message with queue 2), deleted,
/// and swept up to seq 4 (budget 4, one sync).
fn half_swept_queue() -> (tempfile::TempDir, FjallStore, MemoryState) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    store.gc_keys_per_sync = 4;
    let mut model = MemoryState::default();
    let mut ops = vec![
        StoreOp::PutQueue(queue(1, "q")),
        StoreOp::PutQueue(queue(2, "r")),
    ];
    for seq in 0..10 {
        ops.extend(shared_by_two(1, 2, seq, 16));
    }
    ops.push(delete_queue(1, "q"));
    write_both(&mut store, &mut model, &ops);
    store.sync().expect("sync");
    assert_eq!(store.shared.values().filter(|c| c.refs == 1).count(), 4);
    (dir, store, model)
}

#[test]
fn entries_written_during_the_sweep_are_live() {
    let (dir, mut store, mut model) = half_swept_queue();
    // The id is declared again and enqueued at positions the sweep has passed and not.
    let ops = [
        StoreOp::PutQueue(queue(1, "q")),
        inline(1, 1, 16),
        inline(1, 8, 2000),
    ];
    write_both(&mut store, &mut model, &ops);
    for _ in 0..3 {
        store.sync().expect("sync");
    }
    assert!(store.gc.is_empty());
    assert_eq!(
        store.catalog.generation(1),
        1,
        "the new entries are of generation 1"
    );
    assert_eq!(
        store.load(1, 0, 10, u64::MAX).expect("load"),
        model.load(1, 0, 10, u64::MAX)
    );
    let store = reopen_and_compare(dir.path(), store, &mut model, 4).expect("same as the model");
    assert_eq!(key_count(&store, Space::Entries), 12);
}

#[test]
fn deleting_a_queue_again_extends_its_sweep() {
    let (_dir, mut store, mut model) = half_swept_queue();
    let ops = [
        StoreOp::PutQueue(queue(1, "q")),
        inline(1, 2, 16),
        inline(1, 8, 16),
        StoreOp::PageOut {
            queue: 1,
            seq: 9,
            message: message(9, 16),
            expires_at_ms: None,
        },
        delete_queue(1, "q"),
    ];
    write_both(&mut store, &mut model, &ops);
    for _ in 0..4 {
        store.sync().expect("sync");
    }
    assert!(store.gc.is_empty());
    assert_eq!(
        key_count(&store, Space::Entries),
        10,
        "queue 2's entries only"
    );
    assert_eq!(key_count(&store, Space::Paged), 0);
    assert_eq!(
        store.catalog.generation(1),
        0,
        "and the generation forgotten"
    );
    assert!(store.shared.values().all(|c| c.refs == 1));
    assert_eq!(
        store.recover(HeadLimit::entries(3)).expect("recover"),
        model.recovered(HeadLimit::entries(3))
    );
}

// ----- shared messages -----

#[test]
fn a_shared_message_goes_exactly_when_its_last_reference_does() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    store.gc_keys_per_sync = 100;
    let mut model = MemoryState::default();
    let stored = |store: &FjallStore, id: u64| {
        let key = entry::shared_key(id);
        let message = store
            .keyspace(Space::Messages)
            .get(key)
            .expect("get")
            .is_some();
        let refs = store
            .keyspace(Space::Refs)
            .get(key)
            .expect("get")
            .map(|v| entry::decode_refs(&v).expect("a count").0);
        assert_eq!(
            message,
            refs.is_some(),
            "message {id} and its count go together"
        );
        refs
    };
    let mut ops: Vec<StoreOp> = (1..=3).map(|q| StoreOp::PutQueue(queue(q, "q"))).collect();
    ops.push(StoreOp::PutShared {
        id: 5,
        message: message(5, 3000),
        refs: 3,
    });
    ops.extend((1..=3).map(|q| shared_entry(q, 0, 5)));
    ops.push(StoreOp::PutShared {
        id: 6,
        message: message(6, 16),
        refs: 2,
    });
    ops.extend((1..=2).map(|q| shared_entry(q, 1, 6)));
    write_both(&mut store, &mut model, &ops);
    assert_eq!((stored(&store, 5), stored(&store, 6)), (Some(3), Some(2)));

    // Dequeue, purge, delete: each loses one reference of message 5.
    let dequeue = StoreOp::Dequeue {
        queue: 1,
        seq: 0,
        shared: Some(5),
    };
    write_both(&mut store, &mut model, std::slice::from_ref(&dequeue));
    assert_eq!(stored(&store, 5), Some(2));
    // A dequeue of an entry already gone releases nothing.
    write_both(&mut store, &mut model, &[dequeue]);
    assert_eq!(stored(&store, 5), Some(2));
    write_both(
        &mut store,
        &mut model,
        &[StoreOp::PurgeFrom {
            queue: 2,
            from_seq: 0,
        }],
    );
    assert_eq!((stored(&store, 5), stored(&store, 6)), (Some(1), Some(1)));
    write_both(&mut store, &mut model, &[delete_queue(3, "q")]);
    assert_eq!(stored(&store, 5), Some(1), "until the sweep passes");
    store.sync().expect("sync");
    assert_eq!(
        stored(&store, 5),
        None,
        "the sweep released the last reference"
    );
    assert_eq!(key_count(&store, Space::Messages), 1);

    // The last reference of message 6 goes with a dequeue, in the batch itself.
    write_both(
        &mut store,
        &mut model,
        &[StoreOp::Dequeue {
            queue: 1,
            seq: 1,
            shared: Some(6),
        }],
    );
    assert_eq!(stored(&store, 6), None);
    assert_eq!(key_count(&store, Space::Messages), 0);
    assert_eq!(key_count(&store, Space::Refs), 0);
    assert_eq!(model.shared_count(), 0);
    drop(store);
    let recovered = open(dir.path())
        .recover(HeadLimit::entries(10))
        .expect("recover");
    assert_eq!(recovered, model.recovered(HeadLimit::entries(10)));
    assert_eq!(recovered.next_shared_id, 7, "ids are never reused");
}

#[test]
fn a_batch_that_stores_and_releases_a_shared_message_leaves_nothing() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    let mut model = MemoryState::default();
    let ops = [
        StoreOp::PutShared {
            id: 1,
            message: message(1, 16),
            refs: 2,
        },
        shared_entry(1, 0, 1),
        shared_entry(2, 0, 1),
        StoreOp::Dequeue {
            queue: 1,
            seq: 0,
            shared: Some(1),
        },
        StoreOp::PurgeFrom {
            queue: 2,
            from_seq: 0,
        },
    ];
    write_both(&mut store, &mut model, &ops);
    for space in [Space::Messages, Space::Refs, Space::Entries] {
        assert_eq!(key_count(&store, space), 0, "{}", space.name());
    }
    assert_eq!(
        store
            .recover(HeadLimit::entries(1))
            .expect("recover")
            .next_shared_id,
        2
    );
}

// ----- paged messages and loads -----

#[test]
fn paged_messages_merge_with_entries_and_are_gone_after_a_reopen() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    let mut model = MemoryState::default();
    let mut ops = vec![StoreOp::PutQueue(queue(1, "q"))];
    for seq in 0..20 {
        if seq % 3 == 0 {
            ops.push(inline(1, seq, 16));
        } else {
            ops.push(StoreOp::PageOut {
                queue: 1,
                seq,
                message: message(seq, if seq % 2 == 0 { 1500 } else { 16 }),
                expires_at_ms: Some(seq),
            });
        }
    }
    write_both(&mut store, &mut model, &ops);
    for (from, max) in [(0, 5), (4, 3), (0, 100), (19, 1), (20, 4)] {
        assert_eq!(
            store.load(1, from, max, u64::MAX).expect("load"),
            model.load(1, from, max, u64::MAX)
        );
    }
    let drop_paged = [StoreOp::DropPaged {
        queue: 1,
        up_to_seq: 10,
    }];
    write_both(&mut store, &mut model, &drop_paged);
    assert_eq!(
        store.load(1, 0, 100, u64::MAX).expect("load"),
        model.load(1, 0, 100, u64::MAX)
    );
    assert_eq!(store.paged_floor.get(&1), Some(&11));
    store.sync().expect("sync");
    drop(store);

    let mut store = open_unsynced(dir.path());
    assert_eq!(key_count(&store, Space::Paged), 0, "discarded at open");
    model.discard_paged();
    assert_eq!(
        store.load(1, 0, 100, u64::MAX).expect("load"),
        model.load(1, 0, 100, u64::MAX)
    );
    // Paged after the open, then discarded by recovery.
    let page = [StoreOp::PageOut {
        queue: 1,
        seq: 30,
        message: message(30, 16),
        expires_at_ms: None,
    }];
    store.write(&page).expect("write");
    assert_eq!(store.load(1, 25, 10, u64::MAX).expect("load").len(), 1);
    assert_eq!(
        store.recover(HeadLimit::entries(3)).expect("recover"),
        model.recovered(HeadLimit::entries(3))
    );
    assert_eq!(store.load(1, 25, 10, u64::MAX).expect("load"), Vec::new());
}

#[test]
fn recovery_decodes_only_the_head_of_each_queue() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    let mut model = MemoryState::default();
    let ops: Vec<StoreOp> = (1..=4).map(|q| StoreOp::PutQueue(queue(q, "q"))).collect();
    write_both(&mut store, &mut model, &ops);
    // Queue 1: 200,000 small inline entries; queue 2: 2,000 entries with their message in
    // `bodies`; queues 3 and 4: 1,000 shared messages each.
    let small: u64 = 200_000;
    for chunk in (0..small).collect::<Vec<_>>().chunks(5000) {
        let ops: Vec<StoreOp> = chunk.iter().map(|&seq| inline(1, seq, 16)).collect();
        write_both(&mut store, &mut model, &ops);
    }
    let mut ops: Vec<StoreOp> = (0..2000).map(|seq| inline(2, seq, 2000)).collect();
    for id in 0..1000 {
        ops.extend(shared_by_two(3, 4, id, 100));
    }
    write_both(&mut store, &mut model, &ops);
    store.sync().expect("sync");
    drop(store);

    let mut store = open_unsynced(dir.path());
    let head = 50;
    record::MESSAGES_DECODED.with(|n| n.set(0));
    let start = std::time::Instant::now();
    let recovered = store.recover(HeadLimit::entries(head)).expect("recover");
    let took = start.elapsed();
    let decoded = record::MESSAGES_DECODED.with(|n| n.get());
    // Queues 3 and 4 share their head messages: each decoded once.
    assert_eq!(decoded, 3 * head as u64, "decoded {decoded} messages");
    let sizes: Vec<(u64, u64, u64, usize)> = recovered
        .contents
        .iter()
        .map(|q| (q.count, q.body_bytes, q.next_seq, q.head.len()))
        .collect();
    assert_eq!(
        sizes,
        [
            (small, small * 16, small, head),
            (2000, 2000 * 2000, 2000, head),
            (1000, 100_000, 1000, head),
            (1000, 100_000, 1000, head),
        ]
    );
    assert_eq!(recovered, model.recovered(HeadLimit::entries(head)));
    println!("recovered 204,000 entries, 150 decoded, in {took:?}");
}

// ----- durability -----

/// Batch `i` stores message `i` in queue 1 (inline, apart or shared with queue 2).
fn numbered_batch(i: u64) -> Vec<StoreOp> {
    match i % 3 {
        0 => vec![inline(1, i, 2000)],
        1 => vec![inline(1, i, 16)],
        _ => shared_by_two(1, 2, i, 16).to_vec(),
    }
}

/// The model after the first `n` of `batches`.
fn model_after(batches: &[Vec<StoreOp>], n: usize) -> Recovered {
    let mut model = MemoryState::default();
    for op in batches[..n].iter().flatten() {
        model.apply(op);
    }
    model.recovered(HeadLimit::entries(usize::MAX))
}

/// Asserts that `recovered` is the state after some prefix of `batches` of at least
/// `synced` batches, and returns its length.
fn assert_prefix(recovered: &Recovered, batches: &[Vec<StoreOp>], synced: usize) -> usize {
    (synced..=batches.len())
        .find(|&n| *recovered == model_after(batches, n))
        .unwrap_or_else(|| panic!("recovered state is no prefix of at least {synced} batches"))
}

fn numbered_batches(count: u64) -> Vec<Vec<StoreOp>> {
    let mut batches = vec![vec![
        StoreOp::PutQueue(queue(1, "q")),
        StoreOp::PutQueue(queue(2, "r")),
    ]];
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
    let recovered = open(dir.path())
        .recover(HeadLimit::entries(usize::MAX))
        .expect("recover");
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
    let recovered = open(image.path())
        .recover(HeadLimit::entries(usize::MAX))
        .expect("recover");
    assert_prefix(&recovered, &batches, 45);

    // Tear the journal's tail: cut it at points inside the last batches written. Each cut
    // opens, holding a prefix of whole batches that never shrinks as the cut moves on.
    let journal = files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
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
        let recovered = open(torn.path())
            .recover(HeadLimit::entries(usize::MAX))
            .expect("a torn tail must open");
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

fn assert_names(err: &StoreError, dir: &Path, parts: &[&str]) {
    let text = err.to_string();
    assert!(text.contains(&dir.display().to_string()), "{text}");
    for part in parts {
        assert!(text.contains(part), "{part:?} missing in: {text}");
    }
}

#[test]
fn a_shared_message_that_does_not_decode_is_set_aside_and_its_entries_skipped() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    store.write(&numbered_batches(10).concat()).expect("write");
    store.sync().expect("sync");
    // Garbage under shared message 8, written through fjall below the store.
    store
        .keyspace(Space::Messages)
        .insert(entry::shared_key(8), b"\x02garbage".to_vec())
        .expect("insert");
    store.db().persist(PersistMode::SyncAll).expect("persist");
    let clean = model_after(&numbered_batches(10), 10);
    drop(store);
    let mut store = open(dir.path());
    let recovered = store
        .recover(HeadLimit::entries(usize::MAX))
        .expect("recovery goes on without it");
    assert_eq!(store.set_aside_count().expect("count"), 1);
    let entries = |r: &Recovered| r.entries().count();
    assert!(
        entries(&recovered) < entries(&clean),
        "its entries are skipped"
    );
    assert_eq!(recovered.queues, clean.queues);
}

#[test]
fn entries_that_do_not_decode_are_set_aside_at_recovery_and_at_load() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    store.write(&numbered_batches(10).concat()).expect("write");
    store.sync().expect("sync");
    // A header cut short under an entry beyond every head: recovery reads all headers.
    let key = entry::content_key(1, 0, 4);
    let value = store
        .keyspace(Space::Entries)
        .get(key)
        .expect("get")
        .expect("entry 4");
    store
        .keyspace(Space::Entries)
        .insert(key, value[..5].to_vec())
        .expect("insert");
    let recovered = store
        .recover(HeadLimit::entries(1))
        .expect("recovery goes on without it");
    assert_eq!(store.set_aside_count().expect("count"), 1);
    assert!(
        store
            .keyspace(Space::Entries)
            .get(key)
            .expect("get")
            .is_none(),
        "moved away"
    );
    let queue_1 = recovered
        .contents
        .iter()
        .find(|q| q.queue == 1)
        .expect("queue 1");
    let loaded = store.load(1, 0, 100, u64::MAX).expect("load");
    assert_eq!(loaded.len() as u64, queue_1.count, "counted as loaded");
    assert!(loaded.iter().all(|e| e.seq != 4));
    drop(store);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    store.write(&numbered_batches(10).concat()).expect("write");
    // Entry 3 keeps its 2000-byte message in `bodies`; it is lost below the store.
    store
        .keyspace(Space::Bodies)
        .remove(entry::content_key(1, 0, 3))
        .expect("remove");
    let loaded = store
        .load(1, 0, 10, u64::MAX)
        .expect("a load skips the message it cannot read");
    assert!(loaded.iter().all(|e| e.seq != 3));
    assert!(loaded.iter().any(|e| e.seq == 4), "and reads on past it");
    assert_eq!(store.set_aside_count().expect("count"), 1);
}

#[test]
fn metadata_that_does_not_decode_is_set_aside_when_the_store_opens() {
    use crate::proto::table::{FieldValue, MAX_FIELD_DEPTH};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    // A queue whose arguments nest deeper than the decoder reads (as an unchecked path
    // could once store them), next to a sound one.
    let mut deep = FieldValue::Void;
    for _ in 0..MAX_FIELD_DEPTH + 4 {
        deep = FieldValue::Table([("k", deep)].into_iter().collect());
    }
    let mut bad = queue(7, "deep");
    bad.arguments.insert("x-deep", deep);
    store
        .write(&[
            StoreOp::PutVhost("/".into()),
            StoreOp::PutQueue(queue(6, "fine")),
            StoreOp::PutQueue(bad),
        ])
        .expect("write");
    store.sync().expect("sync");
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(store.set_aside_count().expect("count"), 1);
    let recovered = store
        .recover(HeadLimit::entries(usize::MAX))
        .expect("recover");
    let names: Vec<&str> = recovered.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["fine"]);
}

#[test]
fn an_entry_newer_than_its_queue_generation_is_refused() {
    // A generation record lost: the entries it made live must not be swept as stale.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open_unsynced(dir.path());
    store
        .write(&[StoreOp::PutQueue(queue(1, "q")), inline(1, 0, 16)])
        .expect("write");
    let (value, _) = entry::encode_entry(&EntryBody::Inline(message(1, 16)), None);
    store
        .keyspace(Space::Entries)
        .insert(entry::content_key(1, 2, 1), value)
        .expect("insert");
    drop(store);
    let err = open(dir.path())
        .recover(HeadLimit::entries(1))
        .expect_err("generation from nowhere");
    assert_names(
        &err,
        dir.path(),
        &[
            "keyspace `entries`",
            "(queue 1, generation 2, seq 1)",
            "generation 2",
        ],
    );
}

#[test]
fn a_corrupt_count_or_format_refuses_to_open() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(dir.path());
    store
        .keyspace(Space::Meta)
        .insert(record::generation_key(3), vec![2, 0, 0])
        .expect("insert");
    drop(store);
    let err = FjallStore::open(dir.path(), options()).expect_err("corrupt generation");
    assert_names(&err, dir.path(), &["keyspace `meta`"]);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = open(dir.path());
    store
        .keyspace(Space::Refs)
        .insert(entry::shared_key(4), entry::encode_refs(0, 1))
        .expect("insert");
    drop(store);
    let err = FjallStore::open(dir.path(), options()).expect_err("a zero count");
    assert_names(&err, dir.path(), &["keyspace `refs`", "(shared message 4)"]);

    // A store of format version 1 (the previous layout) is refused, naming the version.
    for version in [1u8, 99] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = open(dir.path());
        store
            .keyspace(Space::Meta)
            .insert(record::FORMAT_KEY, vec![version])
            .expect("insert");
        drop(store);
        let err = FjallStore::open(dir.path(), options()).expect_err("unknown format");
        assert_names(
            &err,
            dir.path(),
            &[&format!("format version {version}"), "reads version 2"],
        );
    }
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
    for space in Space::ALL {
        store
            .keyspace(space)
            .rotate_memtable_and_wait()
            .expect("flush");
    }
    let entries_dir = store.keyspace(Space::Entries).path().to_path_buf();
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

    let outcome = FjallStore::open(dir.path(), options())
        .and_then(|mut s| s.recover(HeadLimit::entries(usize::MAX)));
    match outcome {
        Ok(r) => panic!(
            "a damaged table recovered {:?} without an error",
            r.contents
                .iter()
                .map(|q: &RecoveredQueue| q.count)
                .collect::<Vec<_>>()
        ),
        Err(e) => assert_names(&e, dir.path(), &[]),
    }
}

#[test]
fn a_store_in_use_is_refused_naming_its_lock_file() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let _store = open(dir.path());
    let err = FjallStore::open(dir.path(), options()).expect_err("locked");
    assert_names(&err, dir.path(), &["lock"]);
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
    let head_limit = 4096;
    let mut store = open(dir.path());
    store
        .write(&[StoreOp::PutQueue(queue(1, "q"))])
        .expect("write");
    let start = Instant::now();
    let mut ops = Vec::with_capacity(1000);
    for seq in 0..count {
        ops.push(inline(1, seq, 16));
        if ops.len() >= 1000 {
            store.write(&ops).expect("write");
            store.sync().expect("sync");
            ops.clear();
        }
    }
    store.write(&ops).expect("write");
    store.sync().expect("sync");
    println!("wrote {count} inline entries in {:?}", start.elapsed());
    drop(store);
    let (apparent, allocated) = disk_usage(dir.path());
    println!("on disk: {apparent} bytes apparent, {allocated} bytes allocated");

    for flushed in [false, true] {
        let start = Instant::now();
        let mut store = open(dir.path());
        let opened = start.elapsed();
        let recovered = store
            .recover(HeadLimit::entries(head_limit))
            .expect("recover");
        println!(
            "memtables flushed before: {flushed}: open {opened:?}, open+recover({head_limit}) {:?} for {} entries",
            start.elapsed(),
            recovered.contents[0].count
        );
        assert_eq!(recovered.contents[0].count, count);
        assert_eq!(recovered.contents[0].head.len(), head_limit);
        drop(recovered);
        if !flushed {
            for space in Space::ALL {
                store
                    .keyspace(space)
                    .rotate_memtable_and_wait()
                    .expect("flush");
            }
        }
        drop(store);
        let (apparent, allocated) = disk_usage(dir.path());
        println!("on disk: {apparent} bytes apparent, {allocated} bytes allocated");
    }

    for policy in [SyncPolicy::Batch, SyncPolicy::None] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = FjallStore::open(
            dir.path(),
            StoreOptions {
                sync: policy,
                ..options()
            },
        )
        .expect("open");
        store
            .write(&[StoreOp::PutQueue(queue(1, "q"))])
            .expect("write");
        let rounds: u64 = 500;
        let start = Instant::now();
        for r in 0..rounds {
            let ops: Vec<StoreOp> = (0..200).map(|i| inline(1, r * 200 + i, 16)).collect();
            store.write(&ops).expect("write");
            store.sync().expect("sync");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "sync={policy}: {rounds} batches of 200 inline Enqueue: {:.0} ops/s, {:.0} batches/s",
            (rounds * 200) as f64 / secs,
            rounds as f64 / secs
        );
        let start = Instant::now();
        for r in 0..rounds {
            let ops: Vec<StoreOp> = (0..200)
                .map(|i| StoreOp::Dequeue {
                    queue: 1,
                    seq: r * 200 + i,
                    shared: None,
                })
                .collect();
            store.write(&ops).expect("write");
            store.sync().expect("sync");
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "sync={policy}: {rounds} batches of 200 Dequeue: {:.0} ops/s, {:.0} batches/s",
            (rounds * 200) as f64 / secs,
            rounds as f64 / secs
        );
        assert_eq!(key_count(&store, Space::Entries), 0);
    }
}

fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    files(dir).iter().fold((0, 0), |(a, b), f| {
        let m = std::fs::metadata(f).expect("metadata");
        (a + m.len(), b + m.blocks() * 512)
    })
}

// ----- failures: reopen and the space reserve -----

#[test]
fn a_reopen_counts_the_batches_written_since_the_last_sync_and_keeps_paged_messages() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut store = open(dir.path());
    let mut model = MemoryState::default();
    write_both(&mut store, &mut model, &[StoreOp::PutQueue(queue(1, "q"))]);
    write_both(&mut store, &mut model, &[inline(1, 0, 16)]);
    store.sync().expect("sync");
    // Two more batches, not synced; one pages a message out.
    write_both(&mut store, &mut model, &[inline(1, 1, 2000)]);
    let page = StoreOp::PageOut {
        queue: 1,
        seq: 2,
        message: message(2, 16),
        expires_at_ms: None,
    };
    write_both(&mut store, &mut model, std::slice::from_ref(&page));
    // As after a failure: the database is closed and opened again from the disk.
    store.failed = Some("test".into());
    assert!(
        store.write(&[inline(1, 3, 16)]).is_err(),
        "a failed store refuses work"
    );
    assert_eq!(
        store.reopen().expect("reopen"),
        2,
        "both unsynced batches held"
    );
    assert!(store.failed.is_none());
    assert_eq!(
        store.load(1, 0, 10, u64::MAX).expect("load"),
        model.load(1, 0, 10, u64::MAX)
    );
    // Nothing was written since: a second reopen holds nothing new.
    assert_eq!(store.reopen().expect("reopen"), 0);
    write_both(&mut store, &mut model, &[inline(1, 3, 16)]);
    store.sync().expect("sync");
    assert_eq!(
        store.reopen().expect("reopen"),
        0,
        "synced batches are not in doubt"
    );
    write_both(&mut store, &mut model, &[inline(1, 4, 16)]);
    assert_eq!(store.reopen().expect("reopen"), 1);
    assert_eq!(
        store.load(1, 0, 10, u64::MAX).expect("load"),
        model.load(1, 0, 10, u64::MAX)
    );
    // The counter survives a restart, and is no catalog record.
    drop(store);
    let mut store = open(dir.path());
    model.discard_paged();
    assert_eq!(store.writes, 6);
    assert_eq!(
        store.recover(HeadLimit::entries(10)).expect("recover"),
        model.recovered(HeadLimit::entries(10))
    );
}

#[test]
fn the_space_reserve_is_set_aside_at_open_and_given_up_for_lack_of_space_only() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = StoreOptions {
        reserve_bytes: 1024 * 1024,
        ..StoreOptions::default()
    };
    let reserve = dir.path().join(reserve::RESERVE_FILE);
    let mut store = FjallStore::open(dir.path(), options).expect("open");
    assert_eq!(
        std::fs::metadata(&reserve).expect("reserve").len(),
        1024 * 1024
    );
    assert!(store.ready());
    let _ = store.fail(StoreError::new(super::super::StoreErrorKind::Io, "eio"));
    assert!(reserve.exists(), "an I/O error is no lack of space");
    assert!(!store.ready(), "not ready while failed");
    let _ = store.fail(StoreError::new(
        super::super::StoreErrorKind::NoSpace,
        "full",
    ));
    assert!(!reserve.exists(), "released for lack of space");
    store.reopen().expect("reopen");
    assert!(store.ready(), "set aside again");
    assert!(reserve.exists());
}

fn content_op() -> impl Strategy<Value = StoreOp> {
    prop_oneof![
        (QUEUE_IDS, any::<u64>(), any_message(), expiry()).prop_map(
            |(queue, seq, message, expires_at_ms)| StoreOp::Enqueue {
                queue,
                seq,
                body: EntryBody::Inline(message),
                expires_at_ms,
            }
        ),
        (QUEUE_IDS, any::<u64>(), any::<u64>(), expiry()).prop_map(
            |(queue, seq, id, expires_at_ms)| StoreOp::Enqueue {
                queue,
                seq,
                body: EntryBody::Shared(id),
                expires_at_ms,
            }
        ),
        (QUEUE_IDS, any::<u64>(), expiry()).prop_map(|(queue, seq, shared)| StoreOp::Dequeue {
            queue,
            seq,
            shared
        }),
        (QUEUE_IDS, any::<u64>())
            .prop_map(|(queue, from_seq)| StoreOp::PurgeFrom { queue, from_seq }),
        (QUEUE_IDS, any::<u64>(), any_message(), expiry()).prop_map(
            |(queue, seq, message, expires_at_ms)| StoreOp::PageOut {
                queue,
                seq,
                message,
                expires_at_ms,
            }
        ),
        (QUEUE_IDS, any::<u64>())
            .prop_map(|(queue, up_to_seq)| StoreOp::DropPaged { queue, up_to_seq }),
        (any::<u64>(), any_message(), any::<u32>())
            .prop_map(|(id, message, refs)| StoreOp::PutShared { id, message, refs }),
        (vhost(), name(), QUEUE_IDS).prop_map(|(vhost, name, id)| StoreOp::DeleteQueue {
            vhost,
            name,
            id
        }),
    ]
}

proptest! {
    /// A batch read back from its encoding (a cluster's Raft entry) is the batch.
    #[test]
    fn a_batch_decodes_to_the_ops_encoded(
        ops in proptest::collection::vec(prop_oneof![meta_op(), content_op()], 0..20),
    ) {
        let bytes = encode_batch(&ops);
        prop_assert_eq!(decode_batch(&bytes), Ok(ops));
    }

    /// A cut or damaged encoding is an error or some other batch, never a panic; a cut one
    /// is always an error.
    #[test]
    fn a_damaged_batch_never_panics(
        ops in proptest::collection::vec(prop_oneof![meta_op(), content_op()], 1..8),
        cut in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let bytes = encode_batch(&ops);
        let at = cut.index(bytes.len());
        prop_assert!(decode_batch(&bytes[..at]).is_err());
        let mut damaged = bytes.clone();
        for (i, b) in flips {
            let i = i.index(damaged.len());
            damaged[i] ^= b;
        }
        let _ = decode_batch(&damaged);
    }
}

/// A key past fjall's 64 KiB limit (which the broker never makes: it bounds the names keys
/// hold) fails the batch instead of panicking the store's thread.
#[test]
fn a_key_past_the_limit_fails_the_batch_without_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let exchange = ExchangeRecord {
        vhost: "/".into(),
        name: "x".repeat(70_000),
        kind: "fanout".into(),
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    let err = store
        .write(&[StoreOp::PutExchange(exchange)])
        .expect_err("the batch is refused");
    assert!(
        err.message().contains("over the 65535-byte limit"),
        "{err:?}"
    );
}
