//! The group commit against a store that fails on demand.

use std::sync::{Arc, Mutex};

use super::*;
use crate::store::memory::MemoryState;
use crate::store::{LoadedEntry, Recovered};
use cancel::tests::{dequeue, enqueue, shape};

/// A store that fails on demand: writes fail while `fail_writes` is set (keeping
/// nothing of the failed batch), and a reopen keeps `keep_on_reopen` of the batches in
/// doubt.
#[derive(Default)]
struct Flaky {
    state: MemoryState,
    written: Vec<u64>,
    unsynced: Vec<Vec<StoreOp>>,
    fail_writes: Option<StoreErrorKind>,
    fail_reopen: bool,
    ready: bool,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Flaky>>);

/// The test batches each name a vhost; a write holds one or more of them.
fn vhosts_of(ops: &[StoreOp]) -> impl Iterator<Item = u64> + '_ {
    ops.iter().filter_map(|op| match op {
        StoreOp::PutVhost(name) => Some(name.parse().unwrap()),
        _ => None,
    })
}

impl Store for Shared {
    fn recover(&mut self, _: crate::store::HeadLimit) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }
    fn load(
        &mut self,
        q: u64,
        from: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        let s = self.0.lock().unwrap();
        match s.fail_writes {
            Some(kind) => Err(StoreError::new(kind, "read failed")),
            None => Ok(s.state.load(q, from, max, max_bytes)),
        }
    }
    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut s = self.0.lock().unwrap();
        if let Some(kind) = s.fail_writes {
            return Err(StoreError::new(kind, "write failed"));
        }
        s.unsynced.push(ops.to_vec());
        Ok(())
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        let mut s = self.0.lock().unwrap();
        for ops in std::mem::take(&mut s.unsynced) {
            s.written.extend(vhosts_of(&ops));
            for op in &ops {
                s.state.apply(op);
            }
        }
        Ok(())
    }
    fn reopen(&mut self) -> Result<usize, StoreError> {
        let mut s = self.0.lock().unwrap();
        if s.fail_reopen {
            return Err(StoreError::new(StoreErrorKind::Io, "still failing"));
        }
        // The batches written before the failure reached the disk.
        let held = s.unsynced.len();
        for ops in std::mem::take(&mut s.unsynced) {
            s.written.extend(vhosts_of(&ops));
        }
        Ok(held)
    }
    fn ready(&mut self) -> bool {
        self.0.lock().unwrap().ready
    }
}

fn batch(n: u64) -> StoreJob {
    StoreJob::Write(n, vec![StoreOp::PutVhost(n.to_string())], false)
}

/// A group commit over a test store, and a second handle on that store's state.
fn fixture(w: GroupCommit) -> (Shared, Shared, GroupCommit) {
    let shared = Shared::default();
    (shared.clone(), shared, w)
}

fn load(queue: u64) -> StoreJob {
    StoreJob::Load {
        queue,
        from_seq: 0,
        max: 1,
        max_bytes: u64::MAX,
        epoch: 1,
    }
}

fn drain(gc: &mut GroupCommit) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = gc.poll_done() {
        out.push(match d {
            StoreDone::Synced(b) => format!("synced {b}"),
            StoreDone::Loaded { queue, .. } => format!("loaded {queue}"),
            StoreDone::Failed(f) => format!("failed {f:?}"),
            StoreDone::Recovered => "recovered".into(),
        });
    }
    out
}

#[test]
fn a_failed_batch_is_retried_in_order_with_the_ones_behind_it() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(0));
    w.push(batch(1));
    assert!(w.run(&mut store, 0));
    w.sync_now(&mut store);
    assert_eq!(drain(&mut w), ["synced 1"]);

    // Batch 2 is written, then batch 3 fails: 2 is in doubt, 3 and 4 wait.
    w.push(batch(2));
    assert!(w.run(&mut store, 0));
    shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
    w.push(batch(3));
    w.push(batch(4));
    assert!(!w.run(&mut store, 0));
    assert!(w.faulted());
    assert_eq!(drain(&mut w), ["failed NoSpace"]);
    // A failed reopen changes nothing.
    shared.0.lock().unwrap().fail_reopen = true;
    w.push(StoreJob::Load {
        queue: 9,
        from_seq: 0,
        max: 1,
        max_bytes: u64::MAX,
        epoch: 1,
    });
    assert!(!w.run(&mut store, 0));
    assert!(drain(&mut w).is_empty());

    // The disk comes back: 2 was held, 3 and 4 are written again, then the load.
    {
        let mut s = shared.0.lock().unwrap();
        s.fail_reopen = false;
        s.fail_writes = None;
    }
    assert!(w.run(&mut store, 0));
    w.sync_now(&mut store);
    assert_eq!(
        drain(&mut w),
        ["synced 2", "loaded 9", "synced 4"],
        "the batch held by the reopen is synced at once"
    );
    assert_eq!(shared.0.lock().unwrap().written, [1, 2, 3, 4]);
    // Not ready yet (the reserve could not be set aside): still faulted.
    assert!(!w.run(&mut store, 0));
    assert!(w.faulted() && drain(&mut w).is_empty());
    shared.0.lock().unwrap().ready = true;
    assert!(!w.run(&mut store, 0));
    assert!(!w.faulted());
    assert_eq!(drain(&mut w), ["recovered"]);
    assert_eq!(w.wake_at(), None);
}

#[test]
fn a_failure_while_faulted_is_reported_again_only_if_its_kind_changes() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(0));
    shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
    w.push(batch(1));
    assert!(!w.run(&mut store, 0));
    assert!(!w.run(&mut store, 0));
    assert_eq!(drain(&mut w), ["failed Io"]);
    shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
    assert!(!w.run(&mut store, 0));
    assert_eq!(drain(&mut w), ["failed NoSpace"]);
    assert!(
        w.finish(&mut store, 0).is_err(),
        "still failing at shutdown"
    );
    shared.0.lock().unwrap().fail_writes = None;
    w.finish(&mut store, 0).unwrap();
    assert_eq!(shared.0.lock().unwrap().written, [1]);
    assert_eq!(drain(&mut w), ["synced 1"]);
}

#[test]
fn batches_arriving_during_a_sync_wait_for_it_and_share_the_next_one() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100));
    w.push(batch(1));
    assert!(w.run(&mut store, 0));
    w.begin_sync();
    // Arriving while the sync runs: held, not written, and no second sync starts.
    w.push(batch(2));
    w.push(batch(3));
    assert!(!w.run(&mut store, 1));
    assert!(!w.sync_due());
    assert_eq!(shared.0.lock().unwrap().unsynced.len(), 1, "only batch 1");
    store.sync().unwrap();
    w.sync_done(Ok(()));
    assert_eq!(drain(&mut w), ["synced 1"]);
    assert!(
        w.run(&mut store, 2),
        "2 and 3 are written and wait for a sync"
    );
    assert_eq!(shared.0.lock().unwrap().unsynced.len(), 1, "as one write");
    assert_eq!(w.unsynced_writes().collect::<Vec<_>>(), [3]);
    w.sync_now(&mut store);
    assert_eq!(drain(&mut w), ["synced 3"]);
    assert!(!w.sync_due());
    assert_eq!(shared.0.lock().unwrap().written, [1, 2, 3]);
}

#[test]
fn syncs_start_at_least_the_gap_apart_while_several_batches_share_them() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100).with_sync_gap(5));
    // A sync of fewer than GAP_MIN_BATCHES (one client waiting for its confirm, and
    // its consumer's ack): no gap after it.
    w.push(batch(1));
    w.push(batch(2));
    w.step(&mut store, 10);
    w.push(batch(3));
    w.step(&mut store, 11);
    assert_eq!(drain(&mut w), ["synced 2", "synced 3"]);
    // A sync of four: the batches after it wait, unwritten, until the gap ends.
    for b in 4..8 {
        w.push(batch(b));
    }
    w.step(&mut store, 20);
    assert_eq!(drain(&mut w), ["synced 7"]);
    w.push(batch(8));
    w.step(&mut store, 22);
    w.push(batch(9));
    w.step(&mut store, 24);
    assert!(drain(&mut w).is_empty());
    assert_eq!(w.wake_at(), Some(25));
    assert_eq!(shared.0.lock().unwrap().written, (1..8).collect::<Vec<_>>());
    w.step(&mut store, 25);
    assert_eq!(drain(&mut w), ["synced 9"]);
    assert_eq!(
        shared.0.lock().unwrap().written,
        (1..10).collect::<Vec<_>>()
    );
    assert_eq!(w.wake_at(), None);
    // After a sync of two (8 and 9), a batch goes at once.
    w.push(batch(10));
    w.step(&mut store, 26);
    assert_eq!(drain(&mut w), ["synced 10"]);
    // Enough ops waiting end the gap early.
    for b in 11..15 {
        w.push(batch(b));
    }
    w.step(&mut store, 30);
    assert_eq!(drain(&mut w), ["synced 14"]);
    w.push(batch(15));
    w.step(&mut store, 31);
    assert!(drain(&mut w).is_empty());
    let many = (0..GAP_MAX_OPS as u64).map(|i| StoreOp::PutVhost(format!("{}", 100 + i)));
    w.push(StoreJob::Write(16, many.collect(), false));
    w.step(&mut store, 32);
    assert_eq!(drain(&mut w), ["synced 16"]);
}

/// Clients that wait for each confirm: once every one of them has sent what it can, the
/// core marks its batch, and the gap ends with it; the marked batch and those held
/// before it are written and synced at once. An unmarked batch after the sync waits
/// again.
#[test]
fn a_batch_sent_when_every_waiting_client_has_sent_all_it_can_ends_the_gap() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100).with_sync_gap(5));
    for b in 1..5 {
        w.push(batch(b));
    }
    w.step(&mut store, 10);
    assert_eq!(drain(&mut w), ["synced 4"]);
    w.push(batch(5));
    w.step(&mut store, 11);
    assert!(
        drain(&mut w).is_empty(),
        "an unmarked batch waits out the gap"
    );
    assert_eq!(w.sleep_plan(), (Some(15), GAP_MAX_OPS - 1));
    let urgent = StoreJob::Write(6, vec![StoreOp::PutVhost("6".into())], true);
    assert!(urgent.wakes(), "a marked batch wakes a sleeping driver");
    w.push(urgent);
    assert_eq!(w.wake_at(), None);
    w.step(&mut store, 11);
    assert_eq!(drain(&mut w), ["synced 6"]);
    assert_eq!(shared.0.lock().unwrap().written, (1..7).collect::<Vec<_>>());
    // That sync covered two batches, so no gap follows it; four more bring it back.
    for b in 7..11 {
        w.push(batch(b));
    }
    w.step(&mut store, 12);
    assert_eq!(drain(&mut w), ["synced 10"]);
    w.push(batch(11));
    w.step(&mut store, 13);
    assert!(drain(&mut w).is_empty());
    assert_eq!(w.wake_at(), Some(17));
    // A marked batch that arrives while a sync is in flight waits for it, then goes
    // without the gap that sync (of four batches) would bring.
    w.push(batch(12));
    w.push(batch(13));
    w.push(StoreJob::Write(
        14,
        vec![StoreOp::PutVhost("14".into())],
        true,
    ));
    assert!(w.run(&mut store, 14));
    w.begin_sync();
    w.push(batch(15));
    assert!(!w.run(&mut store, 14), "held for the sync in flight");
    w.sync_done(Ok(()));
    assert_eq!(drain(&mut w), ["synced 14"]);
    assert!(
        !w.run(&mut store, 14),
        "an unmarked batch waits out the gap"
    );
    w.push(StoreJob::Write(
        16,
        vec![StoreOp::PutVhost("16".into())],
        true,
    ));
    assert!(w.run(&mut store, 14), "the marked batch ends it");
    w.sync_now(&mut store);
    assert_eq!(drain(&mut w), ["synced 16"]);
}

#[test]
fn cancelled_pairs_do_not_bring_the_gap_back() {
    let (_, mut store, mut w) = fixture(GroupCommit::new(100).with_sync_gap(5));
    for b in 1..5 {
        w.push(batch(b));
    }
    w.step(&mut store, 10);
    assert_eq!(drain(&mut w), ["synced 4"]);
    // GAP_MAX_OPS ops arrive within the gap, 20 pairs among them: the gap ends, and
    // the sync is due although fewer ops are left after cancelling.
    let mut ops: Vec<StoreOp> = (0..GAP_MAX_OPS as u64 - 20)
        .map(|s| enqueue(9, s))
        .collect();
    ops.extend((0..20).map(|s| dequeue(9, s, None)));
    w.push(StoreJob::Write(5, ops, false));
    assert!(w.run(&mut store, 11), "the sync is due at once");
    assert_eq!(w.cancelled_pairs(), 20);
}

#[test]
fn a_recovering_store_is_asked_whether_it_is_ready_during_the_gap() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100).with_sync_gap(10));
    for b in 1..5 {
        w.push(batch(b));
    }
    w.step(&mut store, 0);
    shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::NoSpace);
    for b in 5..9 {
        w.push(batch(b));
    }
    w.step(&mut store, 20);
    assert_eq!(drain(&mut w), ["synced 4", "failed NoSpace"]);
    {
        let mut s = shared.0.lock().unwrap();
        s.fail_writes = None;
        s.ready = true;
    }
    // The reopen at the retry writes 5 to 8 again; its sync runs; the readiness check
    // after it must not wait for a gap with nothing to write.
    assert!(w.run(&mut store, 120));
    w.begin_sync();
    store.sync().unwrap();
    w.sync_done(Ok(()));
    assert!(!w.run(&mut store, 121));
    assert_eq!(drain(&mut w), ["synced 8", "recovered"]);
    assert!(!w.faulted());
    assert_eq!(w.wake_at(), None);
}

#[test]
fn a_read_during_a_sync_writes_the_batches_before_it_first() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100));
    w.push(batch(1));
    assert!(w.run(&mut store, 0));
    w.begin_sync();
    w.push(batch(2));
    w.push(load(7));
    w.push(batch(3));
    assert!(!w.run(&mut store, 1), "the sync in flight is not done");
    assert_eq!(drain(&mut w), ["loaded 7"]);
    assert_eq!(
        shared.0.lock().unwrap().unsynced.len(),
        3,
        "1, then 2 before the read, then 3"
    );
    store.sync().unwrap();
    w.sync_done(Ok(()));
    assert_eq!(drain(&mut w), ["synced 1"]);
    w.step(&mut store, 2);
    assert_eq!(drain(&mut w), ["synced 3"]);
}

#[test]
fn a_write_failing_during_a_sync_waits_for_the_sync_before_any_retry() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100));
    w.push(batch(1));
    assert!(w.run(&mut store, 0));
    w.begin_sync();
    shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
    // A read makes batch 2 be written while the sync runs.
    w.push(batch(2));
    w.push(load(9));
    assert!(!w.run(&mut store, 1));
    assert_eq!(drain(&mut w), ["failed Io"]);
    // Nothing to do until the sync completes, however late.
    assert_eq!(w.wake_at(), None);
    assert!(!w.run(&mut store, 500));
    store.sync().unwrap();
    w.sync_done(Ok(()));
    assert_eq!(drain(&mut w), ["synced 1"]);
    assert_eq!(w.wake_at(), Some(101));
    shared.0.lock().unwrap().fail_writes = None;
    shared.0.lock().unwrap().ready = true;
    w.step(&mut store, 600);
    assert_eq!(drain(&mut w), ["loaded 9", "synced 2", "recovered"]);
}

#[test]
fn a_message_published_and_acked_between_two_syncs_is_never_written() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100));
    w.push(batch(1));
    assert!(w.run(&mut store, 0));
    w.begin_sync();
    w.push(StoreJob::Write(
        2,
        vec![enqueue(4, 1), enqueue(4, 2)],
        false,
    ));
    w.push(StoreJob::Write(3, vec![dequeue(4, 1, None)], false));
    assert!(!w.run(&mut store, 1));
    store.sync().unwrap();
    w.sync_done(Ok(()));
    assert!(w.run(&mut store, 2));
    let written = shared.0.lock().unwrap().unsynced.clone();
    assert_eq!(written.len(), 1);
    assert_eq!(shape(&written[0]), ["+4.2"]);
    assert_eq!(w.cancelled_pairs(), 1);
    w.sync_now(&mut store);
    assert_eq!(drain(&mut w), ["synced 1", "synced 3"]);
}

#[test]
fn a_broken_store_is_reopened_once_per_retry_interval() {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(100));
    shared.0.lock().unwrap().fail_writes = Some(StoreErrorKind::Io);
    w.push(batch(1));
    assert!(!w.run(&mut store, 10));
    assert_eq!(drain(&mut w), ["failed Io"]);
    assert_eq!(w.wake_at(), Some(110));
    shared.0.lock().unwrap().fail_writes = None;
    // Before the retry is due, arriving jobs wait behind the failed one.
    w.push(batch(2));
    assert!(!w.run(&mut store, 50));
    assert!(shared.0.lock().unwrap().written.is_empty());
    shared.0.lock().unwrap().ready = true;
    w.step(&mut store, 110);
    assert_eq!(drain(&mut w), ["synced 2", "recovered"]);
    assert_eq!(shared.0.lock().unwrap().written, [1, 2]);
    assert_eq!(w.wake_at(), None);
}

/// A driver of the blocking kind over `arrivals` (the ms each job comes in, in order),
/// returning each report with the ms it came out, the batches the store holds and how
/// often it woke. An eager driver wakes for every job; a lazy one wakes when its
/// [`WakeGate`] says so, as the store thread does, leaving the other jobs in its channel,
/// and at the end of its [`GroupCommit::sleep_plan`]; the eager one at
/// [`GroupCommit::wake_at`]. Writes fail through the `fail` range of ms.
fn drive(
    lazy: bool,
    arrivals: &[(u64, StoreJob)],
    fail: std::ops::Range<u64>,
    end_ms: u64,
) -> (Vec<(u64, String)>, Vec<u64>, usize) {
    let (shared, mut store, mut w) = fixture(GroupCommit::new(7).with_sync_gap(3));
    let mut channel: VecDeque<StoreJob> = VecDeque::new();
    let gate = WakeGate::default();
    let (mut until, room) = w.sleep_plan();
    assert!(gate.may_sleep(room));
    let mut wakes = 0;
    let mut reports = Vec::new();
    let mut next = arrivals.iter().peekable();
    for now in 0..=end_ms {
        {
            let mut s = shared.0.lock().unwrap();
            s.fail_writes = fail.contains(&now).then_some(StoreErrorKind::Io);
            s.ready = !fail.contains(&now);
        }
        let deadline = if lazy { until } else { w.wake_at() };
        let mut wake = deadline.is_some_and(|at| at <= now);
        while let Some((_, job)) = next.next_if(|(at, _)| *at == now) {
            let job = match job {
                StoreJob::Write(b, ops, urgent) => StoreJob::Write(*b, ops.clone(), *urgent),
                StoreJob::Load { queue, .. } => load(*queue),
            };
            let (ops, wakes) = (job.ops(), job.wakes());
            channel.push_back(job);
            wake |= gate.sent(ops, wakes) || !lazy;
        }
        if wake {
            wakes += 1;
            gate.taking();
            w.push_all(None, || channel.pop_front());
            w.step(&mut store, now);
            reports.extend(drain(&mut w).into_iter().map(|r| (now, r)));
            let (next, room) = w.sleep_plan();
            until = next;
            assert!(gate.may_sleep(room), "one thread: nothing came in");
        }
        assert!(
            !lazy || channel.iter().all(|j| !j.wakes()),
            "a read or a write that ends the gap is never left in the channel"
        );
    }
    let written = shared.0.lock().unwrap().written.clone();
    (reports, written, wakes)
}

proptest::proptest! {
    /// Leaving jobs unread while the gap would only hold them changes nothing: every
    /// write, sync, read and failure report comes out at the same time as when the
    /// driver wakes for each job.
    #[test]
    fn jobs_left_unread_within_the_gap_room_change_no_report(
        jobs in proptest::collection::vec(
            (
                proptest::prop_oneof![3 => proptest::strategy::Just(0u64), 1 => 1u64..4],
                proptest::prop_oneof![1 => proptest::strategy::Just(1usize), 1 => 1usize..64],
                proptest::bool::weighted(0.05),
                proptest::bool::weighted(0.1),
            ),
            1..200,
        ),
        fail_at in 0u64..400,
        fail_for in 0u64..20,
    ) {
        let mut at = 0;
        let mut arrivals = Vec::new();
        for (i, (gap, ops, is_load, urgent)) in jobs.into_iter().enumerate() {
            at += gap;
            let b = i as u64 + 1;
            let job = if is_load && i > 0 {
                load(b)
            } else {
                StoreJob::Write(b, (0..ops).map(|k| StoreOp::PutVhost(format!("{}", b * 1000 + k as u64))).collect(), urgent)
            };
            arrivals.push((at, job));
        }
        let fail = fail_at..fail_at + fail_for;
        let end = at + 40 + fail_for;
        let eager = drive(false, &arrivals, fail.clone(), end);
        let lazy = drive(true, &arrivals, fail, end);
        proptest::prop_assert_eq!((&eager.0, &eager.1), (&lazy.0, &lazy.1));
        proptest::prop_assert!(eager.0.iter().any(|(_, r)| r.starts_with("synced")));
    }
}

/// Within the gap, the lazy driver wakes only for what ends it: writes that stay short of
/// its room, arriving one by one, wait in the channel for the gap's end.
#[test]
fn a_driver_sleeps_through_writes_the_gap_would_only_hold() {
    // Four batches at 0 ms: a sync of four, so a gap of 3 ms follows; then a write at each
    // of 1 and 2 ms, held by the gap, written together at 3 ms. The lazy driver sleeps
    // from the sync to the gap's end.
    let arrivals: Vec<(u64, StoreJob)> = (1..=4)
        .map(|b| (0, batch(b)))
        .chain([(1, batch(5)), (2, batch(6))])
        .collect();
    let eager = drive(false, &arrivals, 0..0, 10);
    let lazy = drive(true, &arrivals, 0..0, 10);
    assert_eq!((&eager.0, &eager.1), (&lazy.0, &lazy.1));
    assert_eq!(
        eager.0,
        [(0, "synced 4".to_string()), (3, "synced 6".to_string())]
    );
    assert_eq!(
        (eager.2, lazy.2),
        (4, 2),
        "eager: 0, 1, 2, 3 ms; lazy: 0 and 3 ms"
    );
}
