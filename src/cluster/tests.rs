//! Three replicas on a perfect in-memory network, persisting at once unless told not to;
//! and one replica stepped with messages written by hand, for orders a network rarely makes.

use super::*;

/// A persist the driver was asked for: its number, snapshot, entries and hard state.
type Waiting = (u64, Option<Point>, Vec<Entry>, Option<HardState>);

struct Node {
    replica: Replica,
    log: LogState,
    /// The store: every entry applied, or installed from a snapshot.
    applied: Vec<Committed>,
    /// Persists not yet made durable (the driver holds them while `hold_persists`).
    waiting: Vec<Waiting>,
    hold_persists: bool,
    deposed: Vec<(u64, Vec<u64>)>,
    /// A snapshot received and not installed: its point and the store it carries.
    staged: Option<(Point, Vec<Committed>)>,
    /// Snapshots sent and installed.
    snapshots_sent: usize,
    snapshots_installed: usize,
}

impl Node {
    /// Makes a persist durable: a snapshot's store first, then the log.
    fn persist(&mut self, (number, snapshot, entries, hs): Waiting, out: &mut Vec<Output>) {
        if let Some(point) = snapshot {
            let (at, store) = self.staged.take().expect("a snapshot was received");
            assert_eq!(at, point, "the snapshot installed is the one received");
            self.applied = store;
            self.snapshots_installed += 1;
        }
        self.log.persist(snapshot, &entries, hs.as_ref());
        self.replica.persisted(number, out);
    }

    /// The store syncs everything applied.
    fn sync_store(&mut self) {
        if let Some(last) = self.applied.last() {
            self.replica.store_synced(last.index);
        }
    }
}

struct Net {
    nodes: Vec<Node>,
    /// Nodes whose messages are dropped, both ways.
    cut: Vec<NodeId>,
}

fn config(id: NodeId) -> ReplicaConfig {
    ReplicaConfig {
        id,
        members: vec![1, 2, 3],
        learners: vec![],
        election_ticks: 10 + id as usize,
        heartbeat_ticks: 2,
        retain_entries: RETAIN_ENTRIES,
        retain_bytes: RETAIN_BYTES,
    }
}

impl Node {
    /// A node started with an empty store and log.
    fn empty(cfg: &ReplicaConfig) -> Self {
        Node {
            replica: Replica::start(cfg, &LogState::default(), 0, 0).expect("start"),
            log: LogState::default(),
            applied: Vec::new(),
            waiting: Vec::new(),
            hold_persists: false,
            deposed: Vec::new(),
            staged: None,
            snapshots_sent: 0,
            snapshots_installed: 0,
        }
    }

    /// A snapshot message with the store as of now.
    fn snapshot(&mut self, mut m: Message) -> (Message, Option<Vec<Committed>>) {
        let last = self
            .applied
            .last()
            .expect("a snapshot is of a store that applied");
        let meta = m.mut_snapshot().mut_metadata();
        assert!(
            last.index >= meta.index,
            "the store is not behind the snapshot"
        );
        (meta.index, meta.term) = (last.index, last.term);
        self.replica.snapshot_sent(m.to, true);
        self.snapshots_sent += 1;
        (m, Some(self.applied.clone()))
    }
}

impl Net {
    fn new() -> Self {
        Self::with(config)
    }

    /// Three members set up by `config`.
    fn with(config: impl Fn(NodeId) -> ReplicaConfig) -> Self {
        let nodes = (1..=3).map(|id| Node::empty(&config(id))).collect();
        Self {
            nodes,
            cut: Vec::new(),
        }
    }

    /// Three members started at the bootstrap point, as a new cluster's are.
    fn bootstrapped() -> Self {
        Self {
            nodes: (1..=3).map(|id| bootstrapped(config(id))).collect(),
            cut: Vec::new(),
        }
    }

    /// Three members, with a leader and a few batches, and node 4 waiting to join; the
    /// leader's id.
    fn with_node_waiting() -> (Self, NodeId) {
        let mut net = Self::bootstrapped();
        let leader = net.tick_until_leader();
        propose_many(&mut net, leader, 1, 3);
        net.add_waiting_node(4);
        (net, leader)
    }

    /// [`Net::with_node_waiting`] once node 4 was added and promoted: four voters.
    fn four_voters() -> (Self, NodeId) {
        let (mut net, leader) = Self::with_node_waiting();
        net.node(leader)
            .replica
            .propose_change(1, Change::AddLearner(address(4)))
            .expect("add a learner");
        net.settle();
        net.run_ticks(30);
        assert_eq!(net.node(leader).replica.voters(), vec![1, 2, 3, 4]);
        (net, leader)
    }

    /// Node `id` (the next) waits to join: empty store and log, knowing no members.
    fn add_waiting_node(&mut self, id: NodeId) {
        assert_eq!(id, self.nodes.len() as NodeId + 1);
        let joining = ReplicaConfig {
            members: vec![],
            ..config(id)
        };
        self.nodes.push(Node::empty(&joining));
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Carries out outputs and delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            let mut mail = Vec::new();
            for n in &mut self.nodes {
                let mut out = Vec::new();
                if !n.hold_persists {
                    for w in std::mem::take(&mut n.waiting) {
                        n.persist(w, &mut out);
                    }
                }
                n.replica.poll(&mut out);
                for o in out {
                    moved = true;
                    match o {
                        Output::Persist {
                            number,
                            snapshot,
                            entries,
                            hard_state,
                        } => n.waiting.push((number, snapshot, entries, hard_state)),
                        Output::SendSnapshot(m) => mail.push(n.snapshot(m)),
                        Output::Send(m) => mail.push((m, None)),
                        Output::Apply(c) => n.applied.extend(c),
                        Output::Compact { through, term } => n.log.compact(through, term),
                        Output::Deposed { term, uncertain } => n.deposed.push((term, uncertain)),
                    }
                }
            }
            for (m, store) in mail {
                if self.cut.contains(&m.from) || self.cut.contains(&m.to) {
                    continue;
                }
                let to = self.node(m.to);
                if let Some(store) = store {
                    let meta = m.get_snapshot().get_metadata();
                    to.staged = Some(((meta.index, meta.term), store));
                }
                to.replica.step(m);
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle");
    }

    /// Ticks every node `ticks` times, settling after each.
    fn run_ticks(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for n in &mut self.nodes {
                n.replica.tick();
            }
            self.settle();
        }
    }

    /// Polls one node and carries out its outputs, persisting at once; returns its messages
    /// instead of delivering them.
    fn drive(&mut self, id: NodeId) -> Vec<Message> {
        let n = self.node(id);
        let mut out = Vec::new();
        n.replica.poll(&mut out);
        let mut mail = Vec::new();
        while !out.is_empty() {
            match out.remove(0) {
                Output::Persist {
                    number,
                    snapshot,
                    entries,
                    hard_state,
                } => n.persist((number, snapshot, entries, hard_state), &mut out),
                Output::Send(m) => mail.push(m),
                Output::SendSnapshot(m) => mail.push(n.snapshot(m).0),
                Output::Apply(c) => n.applied.extend(c),
                Output::Compact { through, term } => n.log.compact(through, term),
                Output::Deposed { term, uncertain } => n.deposed.push((term, uncertain)),
            }
        }
        mail
    }

    fn tick_until_leader(&mut self) -> NodeId {
        for _ in 0..200 {
            for n in &mut self.nodes {
                n.replica.tick();
            }
            self.settle();
            let leaders: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| n.replica.role() == Role::Leader && !self.cut.contains(&n.replica.id()))
                .map(|n| n.replica.id())
                .collect();
            if let [one] = leaders[..] {
                return one;
            }
        }
        panic!("no leader elected");
    }
}

fn batches(applied: &[Committed]) -> Vec<(Vec<u8>, Option<u64>)> {
    applied
        .iter()
        .filter(|c| is_batch(c))
        .map(|c| (c.data.clone(), c.proposal))
        .collect()
}

#[test]
fn a_proposal_is_applied_on_every_member_and_confirmed_on_the_leader() {
    let mut net = Net::new();
    let leader = net.tick_until_leader();
    net.node(leader)
        .replica
        .propose(7, b"batch-7".to_vec())
        .expect("the leader takes proposals");
    net.settle();
    for n in &net.nodes {
        let got = batches(&n.applied);
        let proposal = (n.replica.id() == leader).then_some(7);
        assert_eq!(
            got,
            vec![(b"batch-7".to_vec(), proposal)],
            "node {}",
            n.replica.id()
        );
    }
    let follower = if leader == 1 { 2 } else { 1 };
    assert_eq!(
        net.node(follower).replica.propose(8, b"x".to_vec()),
        Err(ProposeError::NotLeader {
            leader: Some(leader)
        })
    );
}

/// A batch over the bound on uncommitted bytes (a persistent message of 64 MiB or more)
/// is taken once nothing else is uncommitted; refusing it would refuse it for ever, and
/// the store would give up on the cluster and restart the broker.
#[test]
fn a_batch_larger_than_the_uncommitted_bound_is_taken_alone() {
    let mut net = Net::new();
    let leader = net.tick_until_leader();
    let big = vec![7u8; MAX_UNCOMMITTED_BYTES as usize + 1];
    let r = &mut net.node(leader).replica;
    r.propose(1, big.clone())
        .expect("taken when nothing is uncommitted");
    assert_eq!(
        r.propose(2, b"small".to_vec()),
        Err(ProposeError::Busy),
        "nothing more until it commits"
    );
    net.settle();
    for n in &net.nodes {
        let got = batches(&n.applied);
        assert_eq!(got.len(), 1, "node {}", n.replica.id());
        assert_eq!(got[0].0.len(), big.len());
    }
    net.node(leader)
        .replica
        .propose(3, b"small".to_vec())
        .expect("taken once the large one committed");
    net.settle();
    // One larger than the transport carries is refused, not taken and stuck.
    let huge = vec![0u8; MAX_ENTRY_BYTES as usize + 1];
    assert!(matches!(
        net.node(leader).replica.propose(4, huge),
        Err(ProposeError::Refused(_))
    ));
}

#[test]
fn nothing_is_applied_before_a_majority_persisted_it() {
    let mut net = Net::new();
    let leader = net.tick_until_leader();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    for &id in &others {
        net.node(id).hold_persists = true;
    }
    net.node(leader)
        .replica
        .propose(1, b"one".to_vec())
        .expect("propose");
    net.settle();
    // The leader holds it durably, the followers have it but not synced: no commit.
    assert!(
        net.node(leader)
            .log
            .entries
            .iter()
            .any(|e| &e.data[..] == b"one")
    );
    assert!(batches(&net.node(leader).applied).is_empty());
    // One follower's sync makes a majority.
    net.node(others[0]).hold_persists = false;
    net.settle();
    assert_eq!(
        batches(&net.node(leader).applied),
        vec![(b"one".to_vec(), Some(1))]
    );
    assert!(batches(&net.node(others[1]).applied).is_empty());
}

#[test]
fn a_cut_off_leader_is_deposed_and_its_proposal_never_confirmed() {
    let mut net = Net::new();
    let old = net.tick_until_leader();
    net.cut.push(old);
    net.node(old)
        .replica
        .propose(1, b"lost".to_vec())
        .expect("it still believes it leads");
    let new = net.tick_until_leader();
    assert_ne!(new, old);
    // The old leader steps down (check-quorum) and reports what it had not seen commit.
    for _ in 0..40 {
        net.node(old).replica.tick();
        net.settle();
    }
    assert_eq!(net.node(old).deposed.last(), Some(&(1, vec![1])));
    net.node(new)
        .replica
        .propose(2, b"kept".to_vec())
        .expect("propose");
    net.settle();
    net.cut.clear();
    net.run_ticks(40);
    // Every member ends with the new leader's batch and without the cut-off one's.
    for n in &net.nodes {
        let got: Vec<Vec<u8>> = batches(&n.applied).into_iter().map(|(d, _)| d).collect();
        assert_eq!(got, vec![b"kept".to_vec()], "node {}", n.replica.id());
    }
}

#[test]
fn a_restarted_member_keeps_its_log_and_catches_up() {
    let mut net = Net::new();
    let leader = net.tick_until_leader();
    net.node(leader)
        .replica
        .propose(1, b"a".to_vec())
        .expect("propose");
    net.settle();
    let down = if leader == 3 { 2 } else { 3 };
    net.cut.push(down);
    net.node(leader)
        .replica
        .propose(2, b"b".to_vec())
        .expect("propose");
    net.settle();
    // Restart it from its durable log and what it applied.
    let n = net.node(down);
    let (applied, applied_term) = n.applied.last().map_or((0, 0), |c| (c.index, c.term));
    n.replica = Replica::start(&config(down), &n.log, applied, applied_term).expect("restart");
    net.cut.clear();
    net.run_ticks(20);
    let got: Vec<Vec<u8>> = batches(&net.node(down).applied)
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
}

/// Members configured alike (one election timeout for all): when the leader dies, the two
/// left campaign on the same tick. With a timeout fixed per node they would campaign on the
/// same tick again every term, each voting for itself, and never elect a leader; drawn
/// anew for each term, their timeouts part, and one of them wins.
#[test]
fn members_with_one_election_timeout_elect_a_leader_when_the_leader_dies() {
    const ELECTION_TICKS: usize = 10;
    let mut net = Net::with(|id| ReplicaConfig {
        election_ticks: ELECTION_TICKS,
        ..config(id)
    });
    // Node 1 alone ticks, so it campaigns first and leads; then all tick together, the
    // followers' election timers restarting on the same heartbeats.
    for _ in 0..10 * ELECTION_TICKS {
        if net.node(1).replica.role() == Role::Leader {
            break;
        }
        net.node(1).replica.tick();
        net.settle();
    }
    assert_eq!(net.node(1).replica.role(), Role::Leader);
    net.run_ticks(3 * ELECTION_TICKS);
    let term = net.node(1).replica.term();
    assert_eq!(net.node(1).replica.role(), Role::Leader);
    assert_eq!(net.node(2).replica.leader(), Some(1));
    assert_eq!(net.node(3).replica.leader(), Some(1));
    // Node 1 dies: nothing to or from it, and it no longer ticks.
    net.cut.push(1);
    let mut leader = None;
    for _ in 0..10 * ELECTION_TICKS {
        for id in [2, 3] {
            net.node(id).replica.tick();
        }
        net.settle();
        leader = [2, 3]
            .into_iter()
            .find(|&id| net.node(id).replica.role() == Role::Leader);
        if leader.is_some() {
            break;
        }
    }
    let terms: Vec<(Role, u64)> = [2, 3]
        .iter()
        .map(|&id| (net.node(id).replica.role(), net.node(id).replica.term()))
        .collect();
    let leader = leader.unwrap_or_else(|| {
        panic!(
            "no leader in {} ticks after the leader of term {term} died: nodes 2 and 3 are {terms:?}",
            10 * ELECTION_TICKS
        )
    });
    // And it commits with the one member left.
    net.node(leader)
        .replica
        .propose(1, b"after".to_vec())
        .expect("the new leader takes proposals");
    net.settle();
    for id in [2, 3] {
        let got: Vec<Vec<u8>> = batches(&net.node(id).applied)
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(got, vec![b"after".to_vec()], "node {id}");
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

#[test]
fn a_store_ahead_of_its_log_is_refused() {
    let err = Replica::start(&config(1), &LogState::default(), 5, 1).expect_err("refused");
    assert!(
        err.to_string().contains("past the log's last index"),
        "{err}"
    );
    let err = Replica::start(
        &ReplicaConfig { id: 4, ..config(1) },
        &LogState::default(),
        0,
        0,
    )
    .expect_err("refused");
    assert!(err.to_string().contains("not one of the members"), "{err}");
}

#[test]
fn a_log_that_does_not_hold_what_the_store_applied_is_refused() {
    let mut log = LogState::default();
    log.persist(
        None,
        &[entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 2, b"b")],
        None,
    );
    log.hard_state.term = 2;
    log.hard_state.commit = 3;
    // The store applied index 3 of term 2: this log holds it.
    Replica::start(&config(1), &log, 3, 2).expect("the log holds what was applied");
    Replica::start(&config(1), &log, 2, 1).expect("the log holds what was applied");
    // The store applied index 3 of another term: another history.
    let err = Replica::start(&config(1), &log, 3, 1).expect_err("refused");
    assert!(err.to_string().contains("holds term 2 there"), "{err}");
    // A hard state committing past the log's end: the log lost committed entries.
    log.hard_state.commit = 4;
    let err = Replica::start(&config(1), &log, 3, 2).expect_err("refused");
    assert!(err.to_string().contains("commits index 4"), "{err}");
    // A gap in the log.
    let gapped = LogState {
        hard_state: HardState::default(),
        compacted: (0, 0),
        entries: vec![entry(1, 1, b""), entry(3, 1, b"")],
    };
    let err = Replica::start(&config(1), &gapped, 0, 0).expect_err("refused");
    assert!(err.to_string().contains("without a gap"), "{err}");
}

#[test]
fn a_leader_deposed_in_the_step_that_commits_its_proposal_still_confirms_it() {
    let mut net = Net::new();
    let leader = net.tick_until_leader();
    let term = net.node(leader).replica.term();
    net.node(leader)
        .replica
        .propose(1, b"one".to_vec())
        .expect("propose");
    let appends = net.drive(leader);
    let mut acks = Vec::new();
    for m in appends {
        let to = m.to;
        net.node(to).replica.step(m);
        acks.extend(net.drive(to));
    }
    let other = acks.first().expect("the followers acknowledge").from;
    // The acknowledgements commit the proposal, and a message of a later term deposes
    // the leader, both before it polls.
    let r = &mut net.node(leader).replica;
    for m in acks {
        r.step(m);
    }
    assert!(r.commit_index() >= 2, "the proposal is committed");
    r.step(append(other, leader, term + 1, (0, 0), vec![], 0));
    assert_ne!(r.role(), Role::Leader);
    let _ = net.drive(leader);
    let n = net.node(leader);
    assert_eq!(n.deposed, vec![(term, vec![])], "nothing is uncertain");
    assert_eq!(batches(&n.applied), vec![(b"one".to_vec(), Some(1))]);
}

/// A message from a leader with entries after `prev` (index, term).
fn append(
    from: NodeId,
    to: NodeId,
    term: u64,
    prev: (u64, u64),
    entries: Vec<Entry>,
    commit: u64,
) -> Message {
    let mut m = Message::default();
    m.set_msg_type(raftpb::MessageType::MsgAppend);
    (m.from, m.to, m.term) = (from, to, term);
    (m.index, m.log_term, m.commit) = (prev.0, prev.1, commit);
    m.set_entries(entries.into());
    m
}

/// Polls a replica and returns the number of the one persist it asks for.
fn one_persist(r: &mut Replica) -> u64 {
    let mut out = Vec::new();
    r.poll(&mut out);
    match &out[..] {
        [Output::Persist { number, .. }] => *number,
        other => panic!("expected one persist and nothing else, got {other:?}"),
    }
}

/// Append responses as (to, term, index), and applied indexes.
fn acks_and_applied(out: &[Output]) -> (Vec<(NodeId, u64, u64)>, Vec<u64>) {
    let mut acks = Vec::new();
    let mut applied = Vec::new();
    for o in out {
        match o {
            Output::Send(m) if m.get_msg_type() == raftpb::MessageType::MsgAppendResponse => {
                acks.push((m.to, m.term, m.index));
            }
            Output::Apply(c) => applied.extend(c.iter().map(|c| c.index)),
            _ => {}
        }
    }
    (acks, applied)
}

#[test]
fn a_persist_rewritten_by_a_later_one_is_not_reported_done_before_that_one() {
    let mut r = Replica::start(&config(2), &LogState::default(), 0, 0).expect("start");
    // The leader of term 2 sends entries 1 to 3.
    let first = vec![entry(1, 2, b"a"), entry(2, 2, b"b"), entry(3, 2, b"c")];
    r.step(append(1, 2, 2, (0, 0), first, 0));
    let p1 = one_persist(&mut r);
    // The leader of term 3 replaces them from index 2 on.
    r.step(append(3, 2, 3, (1, 2), vec![entry(2, 3, b"x")], 0));
    let p2 = one_persist(&mut r);
    // The first leader, elected again in term 4, writes back its entries 2 and 3, and
    // tells they are committed. The log in memory now reads as the first persist wrote.
    let back = vec![entry(2, 2, b"b"), entry(3, 2, b"c")];
    r.step(append(1, 2, 4, (1, 2), back, 3));
    let p3 = one_persist(&mut r);
    // The first persist is durable; the disk may still complete the second and crash
    // before the third, holding index 2 of term 3 and no index 3: nothing is applied
    // and nothing acknowledged.
    let mut out = Vec::new();
    r.persisted(p1, &mut out);
    assert!(out.is_empty(), "{out:?}");
    r.persisted(p2, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // With the third durable, the acknowledgements go in order, and the entries apply.
    r.persisted(p3, &mut out);
    let (acks, applied) = acks_and_applied(&out);
    assert_eq!(acks, vec![(1, 2, 3), (3, 3, 2), (1, 4, 3)]);
    assert_eq!(applied, vec![1, 2, 3]);
}

#[test]
fn a_ready_with_nothing_to_persist_waits_behind_a_pending_persist_without_a_sync() {
    let mut r = Replica::start(&config(2), &LogState::default(), 0, 0).expect("start");
    r.step(append(1, 2, 2, (0, 0), vec![entry(1, 2, b"a")], 0));
    let p1 = one_persist(&mut r);
    // A heartbeat needs nothing persisted, but its response goes after the append's.
    let mut beat = Message::default();
    beat.set_msg_type(raftpb::MessageType::MsgHeartbeat);
    (beat.from, beat.to, beat.term) = (1, 2, 2);
    r.step(beat);
    let mut out = Vec::new();
    r.poll(&mut out);
    assert!(
        out.is_empty(),
        "no persist of its own, nothing sent: {out:?}"
    );
    r.persisted(p1, &mut out);
    let sent: Vec<raftpb::MessageType> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(m) => Some(m.get_msg_type()),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        vec![
            raftpb::MessageType::MsgAppendResponse,
            raftpb::MessageType::MsgHeartbeatResponse
        ]
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Persist { .. })),
        "{out:?}"
    );
}

/// Members that keep only a few entries behind what their stores hold durably.
fn short_log(id: NodeId) -> ReplicaConfig {
    ReplicaConfig {
        retain_entries: 4,
        ..config(id)
    }
}

/// Proposes `count` batches on the leader, syncing every store after each.
fn propose_many(net: &mut Net, leader: NodeId, from: u64, count: u64) {
    for p in from..from + count {
        net.node(leader)
            .replica
            .propose(p, format!("batch-{p}").into_bytes())
            .expect("propose");
        net.settle();
        for n in &mut net.nodes {
            n.sync_store();
        }
        net.settle();
    }
}

fn store(n: &Node) -> Vec<(u64, u64, Vec<u8>)> {
    n.applied
        .iter()
        .map(|c| (c.index, c.term, c.data.clone()))
        .collect()
}

#[test]
fn the_log_drops_only_what_the_store_holds_durably() {
    let mut net = Net::with(short_log);
    let leader = net.tick_until_leader();
    for p in 0..20 {
        net.node(leader)
            .replica
            .propose(p, vec![1; 8])
            .expect("propose");
        net.settle();
    }
    // Nothing synced: every entry stays in every log.
    for n in &net.nodes {
        assert_eq!(n.log.compacted, (0, 0), "node {}", n.replica.id());
        assert_eq!(n.replica.first_index(), 1);
    }
    // The stores sync. Every member holds every entry: the leader's log keeps none of
    // what its store holds; a follower's keeps the last 4, for members behind should it
    // lead.
    let synced = net.node(leader).applied.last().expect("applied").index;
    for n in &mut net.nodes {
        n.sync_store();
    }
    net.settle();
    for n in &net.nodes {
        let (through, term) = n.log.compacted;
        let kept = if n.replica.id() == leader { 0 } else { 4 };
        assert_eq!(through, synced - kept, "node {}", n.replica.id());
        assert_eq!(term, n.applied[(through - 1) as usize].term);
        assert_eq!(n.replica.first_index(), through + 1);
        assert_eq!(n.log.entries.len() as u64, kept);
        assert_eq!(n.log.last_index(), synced);
    }
}

#[test]
fn a_member_far_behind_catches_up_from_the_leaders_store() {
    let mut net = Net::with(short_log);
    let leader = net.tick_until_leader();
    propose_many(&mut net, leader, 0, 3);
    let down = if leader == 3 { 2 } else { 3 };
    net.cut.push(down);
    propose_many(&mut net, leader, 3, 40);
    let first = net.node(leader).replica.first_index();
    let behind = net.node(down).applied.last().expect("applied").index;
    assert!(
        first > behind + 1,
        "the leader dropped what the member lacks: first index {first}, member at {behind}"
    );
    // It restarts from what it holds, and is let back in.
    let n = net.node(down);
    let (applied, applied_term) = n.applied.last().map_or((0, 0), |c| (c.index, c.term));
    n.replica = Replica::start(&short_log(down), &n.log, applied, applied_term).expect("restart");
    net.cut.clear();
    net.run_ticks(30);
    assert!(net.node(leader).snapshots_sent >= 1);
    assert!(net.node(down).snapshots_installed >= 1);
    // Its store is the leader's, and new batches reach it from the log.
    propose_many(&mut net, leader, 43, 5);
    let reference = store(net.node(leader));
    assert_eq!(
        reference.len() as u64,
        net.node(leader).replica.commit_index()
    );
    for n in &net.nodes {
        assert_eq!(store(n), reference, "node {}", n.replica.id());
    }
    // Its log starts at the snapshot, and it restarts from there.
    let n = net.node(down);
    assert!(n.log.compacted.0 > behind, "{:?}", n.log.compacted);
    let (applied, applied_term) = n.applied.last().map_or((0, 0), |c| (c.index, c.term));
    Replica::start(&short_log(down), &n.log, applied, applied_term).expect("restart");
}

#[test]
fn a_store_installed_before_the_log_recorded_the_snapshot_is_reconciled_at_restart() {
    let mut log = LogState::default();
    log.persist(
        None,
        &[entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 1, b"b")],
        None,
    );
    log.hard_state.term = 1;
    log.hard_state.commit = 2;
    // The store holds the leader's snapshot at index 10, term 3: past the log's end.
    assert!(Replica::start(&config(1), &log, 10, 3).is_err());
    assert_eq!(snapshot_to_restore(&log, 10, 3), Some((10, 3)));
    // At index 3, uncommitted here and of another term: the snapshot wins.
    assert_eq!(snapshot_to_restore(&log, 3, 3), Some((3, 3)));
    // What the log holds as it is, or contradicts within its commit index, is left alone.
    assert_eq!(snapshot_to_restore(&log, 3, 1), None);
    assert_eq!(snapshot_to_restore(&log, 2, 2), None);
    let mut fixed = log.clone();
    fixed.install((10, 3));
    assert_eq!(fixed.last_index(), 10);
    assert_eq!(fixed.hard_state.commit, 10);
    // The term covers the snapshot's; a vote from the older term does not carry over.
    assert_eq!((fixed.hard_state.term, fixed.hard_state.vote), (3, 0));
    let r = Replica::start(&config(1), &fixed, 10, 3).expect("starts from the snapshot");
    assert_eq!(r.first_index(), 11);
    assert_eq!(r.commit_index(), 10);
    // A store behind the compaction point lost what the log dropped.
    let err = Replica::start(&config(1), &fixed, 0, 0).expect_err("refused");
    assert!(err.to_string().contains("compacted through"), "{err}");
}

#[test]
fn a_new_member_that_stopped_between_its_store_and_its_log_restarts_in_a_term() {
    // The store was written at the bootstrap point; the log stayed empty.
    let log = LogState::default();
    let point = snapshot_to_restore(&log, BOOTSTRAP.0, BOOTSTRAP.1).expect("mended");
    let mut fixed = log.clone();
    fixed.install(point);
    assert_eq!(fixed.hard_state.term, BOOTSTRAP.1);
    let r = Replica::start(&config(1), &fixed, BOOTSTRAP.0, BOOTSTRAP.1).expect("starts");
    assert_eq!(r.term(), BOOTSTRAP.1);
    assert_eq!(r.commit_index(), BOOTSTRAP.0);
}

/// A member's addresses, for membership changes.
fn address(id: NodeId) -> settings::MemberAddress {
    settings::MemberAddress {
        id,
        raft: std::net::SocketAddr::from(([10, 0, 0, id as u8], 25672)),
        amqp: std::net::SocketAddr::from(([10, 0, 0, id as u8], 5672)),
        http: None,
    }
}

/// A node as a new cluster starts it: its store and log at [`BOOTSTRAP`].
fn bootstrapped(cfg: ReplicaConfig) -> Node {
    let mut log = LogState::default();
    log.install(BOOTSTRAP);
    log.hard_state.term = BOOTSTRAP.1;
    Node {
        replica: Replica::start(&cfg, &log, BOOTSTRAP.0, BOOTSTRAP.1).expect("start"),
        log,
        applied: vec![Committed {
            index: BOOTSTRAP.0,
            term: BOOTSTRAP.1,
            data: Vec::new(),
            proposal: None,
            change: None,
        }],
        ..Node::empty(&cfg)
    }
}

fn changes(applied: &[Committed]) -> Vec<Change> {
    applied.iter().filter_map(|c| c.change.clone()).collect()
}

#[test]
fn a_node_joins_as_a_learner_votes_once_caught_up_and_a_member_leaves() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    propose_many(&mut net, leader, 1, 5);
    // Node 4 waits to join: it knows no members, and never campaigns.
    net.add_waiting_node(4);
    net.run_ticks(60);
    assert_eq!(net.node(4).replica.role(), Role::Follower);
    assert_eq!(net.node(4).replica.leader(), None);
    assert!(net.node(4).replica.voters().is_empty());
    // A follower refuses changes; the leader refuses a second change while one is pending,
    // and removing itself.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    assert!(matches!(
        net.node(follower)
            .replica
            .propose_change(100, Change::AddLearner(address(4))),
        Err(ProposeError::NotLeader { .. })
    ));
    let r = &mut net.node(leader).replica;
    r.propose_change(100, Change::AddLearner(address(4)))
        .expect("the leader adds a learner");
    assert!(matches!(
        r.propose_change(101, Change::AddLearner(address(5))),
        Err(ProposeError::Refused(_))
    ));
    net.run_ticks(30);
    // It took the leader's store as a snapshot (the leader's log starts after the
    // bootstrap point), caught up, and the leader promoted it.
    assert_eq!(net.node(4).snapshots_installed, 1);
    assert_eq!(net.node(leader).replica.voters(), vec![1, 2, 3, 4]);
    assert!(net.node(leader).replica.learners().is_empty());
    for id in 1..=4 {
        assert_eq!(net.node(id).replica.voters(), vec![1, 2, 3, 4], "node {id}");
        assert_eq!(
            batches(&net.node(id).applied).len(),
            5,
            "node {id} holds every batch"
        );
    }
    let expected = vec![Change::AddLearner(address(4)), Change::Promote(4)];
    for id in 1..=3 {
        assert_eq!(changes(&net.node(id).applied), expected, "node {id}");
    }
    // The change the leader proposed is reported with its proposal id.
    assert!(
        net.node(leader)
            .applied
            .iter()
            .any(|c| c.proposal == Some(100) && c.change == Some(Change::AddLearner(address(4))))
    );
    // The leader does not remove itself; it removes another member, which then counts for
    // no majority: with it cut off, batches still commit on the other three.
    assert!(matches!(
        net.node(leader)
            .replica
            .propose_change(102, Change::Remove(leader)),
        Err(ProposeError::Refused(_))
    ));
    let gone = (1..=3).find(|&id| id != leader).unwrap();
    net.node(leader)
        .replica
        .propose_change(103, Change::Remove(gone))
        .expect("remove a member");
    net.settle();
    let mut left: Vec<NodeId> = (1..=4).filter(|&id| id != gone).collect();
    left.sort_unstable();
    assert_eq!(net.node(leader).replica.voters(), left);
    net.cut.push(gone);
    let other = *left.iter().find(|&&id| id != leader && id != 4).unwrap();
    net.cut.push(other);
    // Two of the three voters left (the leader and node 4) are a majority.
    net.node(leader)
        .replica
        .propose(200, b"after".to_vec())
        .expect("propose");
    net.settle();
    assert!(
        batches(&net.node(4).applied)
            .iter()
            .any(|(d, _)| d == b"after"),
        "committed by the leader and the new member"
    );
    assert!(!net.node(leader).replica.removed());
}

#[test]
fn a_removed_member_knows_it_and_does_not_restart_as_one() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    let gone = (1..=3).find(|&id| id != leader).unwrap();
    // Hold the leader's persists so that the removal commits by the other two before the
    // leader applies it and stops replicating to the member removed.
    net.node(leader)
        .replica
        .propose_change(1, Change::Remove(gone))
        .expect("remove");
    net.settle();
    // Heartbeats carry the commit index to every member still replicated to.
    net.run_ticks(5);
    let left: Vec<NodeId> = (1..=3).filter(|&id| id != gone).collect();
    assert_eq!(net.node(leader).replica.voters(), left);
    if net.node(gone).replica.voters() == left {
        assert!(net.node(gone).replica.removed());
    }
    // Its store records the members without it: it cannot start as a member again.
    let cfg = ReplicaConfig {
        members: left.clone(),
        ..config(gone)
    };
    let n = net.node(gone);
    let (applied, term) = n.applied.last().map(|c| (c.index, c.term)).unwrap();
    let err = Replica::start(&cfg, &n.log, applied, term).unwrap_err();
    assert!(err.to_string().contains("removed"), "{err}");
}

#[test]
fn a_voter_is_not_removed_while_too_few_of_the_others_answer() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    let followers: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let (down, up) = (followers[0], followers[1]);
    net.cut.push(down);
    // Longer than any election timeout: the leader no longer counts it as answering.
    net.run_ticks(40);
    assert_eq!(net.node(leader).replica.role(), Role::Leader);
    // Removing the member that answers would leave the leader and the one that does not:
    // no majority answers, and nothing (this removal included) could commit.
    let refused = net
        .node(leader)
        .replica
        .propose_change(1, Change::Remove(up));
    assert!(
        matches!(&refused, Err(ProposeError::Refused(why)) if why.contains("answering")),
        "{refused:?}"
    );
    // Removing the one that is down leaves two that answer.
    net.node(leader)
        .replica
        .propose_change(2, Change::Remove(down))
        .expect("the member that is down is removed");
    net.settle();
    let mut left = vec![leader, up];
    left.sort_unstable();
    assert_eq!(net.node(leader).replica.voters(), left);
    assert_eq!(net.node(up).replica.voters(), left);
}

#[test]
fn a_removal_the_current_voters_cannot_commit_is_refused() {
    let (mut net, leader) = Net::four_voters();
    // Two of the four voters stop answering: the two left are no majority of four.
    let down: Vec<NodeId> = (1..=4).filter(|&id| id != leader).take(2).collect();
    net.cut.extend(&down);
    // The leader counts them as down after the least election timeout, and steps down for
    // want of a quorum at its next quorum check: try the removal in between.
    let mut ticks = 0;
    while down.iter().any(|&id| net.node(leader).replica.alive(id)) {
        net.run_ticks(1);
        ticks += 1;
        assert!(ticks < 100, "the cut-off members still count as answering");
    }
    assert_eq!(net.node(leader).replica.role(), Role::Leader);
    // Without one of them, the two that answer would be a majority of the three left,
    // but the removal itself commits under the four, which cannot.
    let refused = net
        .node(leader)
        .replica
        .propose_change(2, Change::Remove(down[0]));
    assert!(
        matches!(&refused, Err(ProposeError::Refused(why)) if why.contains("answering")),
        "{refused:?}"
    );
    net.cut.clear();
    net.run_ticks(30);
    let leader = net.tick_until_leader();
    net.run_ticks(5);
    let gone = *down.iter().find(|&&id| id != leader).unwrap();
    net.node(leader)
        .replica
        .propose_change(3, Change::Remove(gone))
        .expect("with every voter answering, the removal is taken");
}

#[test]
fn a_member_removed_while_cut_off_is_told_when_it_next_campaigns() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    let down = (1..=3).find(|&id| id != leader).unwrap();
    net.cut.push(down);
    net.run_ticks(40);
    net.node(leader)
        .replica
        .propose_change(1, Change::Remove(down))
        .expect("the member that is down is removed");
    net.settle();
    assert!(!net.node(leader).replica.voters().contains(&down));
    // It never heard of it: it still counts itself a voter, and campaigns.
    assert!(net.node(down).replica.voters().contains(&down));
    assert_eq!(net.node(down).replica.removal_notice(), None);
    net.cut.clear();
    let mut ticks = 0;
    while net.node(down).replica.removal_notice().is_none() {
        net.run_ticks(1);
        ticks += 1;
        assert!(ticks < 200, "the removed member was never told");
    }
    let (by, index) = net.node(down).replica.removal_notice().unwrap();
    assert_ne!(by, down);
    assert!(index > net.node(down).replica.node.raft.raft_log.applied);
    assert!(net.node(down).replica.removed());
    // The members left go on, and are not told anything themselves.
    for id in (1..=3).filter(|&id| id != down) {
        assert_eq!(net.node(id).replica.removal_notice(), None);
        assert!(!net.node(id).replica.removed());
    }
}

/// Node 4 a learner in every member's configuration, kept from promotion by a change
/// the leader has not yet applied (node `gone` removed), then cut off; the removal of
/// `gone` applied after. Returns the net, the leader and `gone`.
fn learner_cut_off() -> (Net, NodeId, NodeId) {
    let (mut net, leader) = Net::with_node_waiting();
    net.cut.push(4);
    net.node(leader)
        .replica
        .propose_change(1, Change::AddLearner(address(4)))
        .expect("add a learner");
    net.settle();
    let gone = (1..=3).find(|&id| id != leader).unwrap();
    net.node(leader).hold_persists = true;
    net.node(leader)
        .replica
        .propose_change(2, Change::Remove(gone))
        .expect("remove a member");
    net.cut.clear();
    let mut ticks = 0;
    while !net.node(4).replica.learners().contains(&4) {
        net.run_ticks(1);
        ticks += 1;
        assert!(ticks < 200, "node 4 never became a learner");
    }
    // Long enough for the leader to count it as not answering, which keeps it a learner.
    net.cut.push(4);
    net.run_ticks(40);
    net.node(leader).hold_persists = false;
    net.run_ticks(5);
    assert!(!net.node(leader).replica.voters().contains(&gone));
    assert_eq!(net.node(leader).replica.learners(), vec![4]);
    assert!(net.node(4).replica.learners().contains(&4));
    (net, leader, gone)
}

#[test]
fn a_learner_removed_while_cut_off_asks_when_it_hears_no_leader_and_is_told() {
    let (mut net, leader, gone) = learner_cut_off();
    net.node(leader)
        .replica
        .propose_change(3, Change::Remove(4))
        .expect("the learner that is cut off is removed");
    net.settle();
    assert!(net.node(leader).replica.learners().is_empty());
    // It never heard of it, and a learner never campaigns.
    assert!(net.node(4).replica.learners().contains(&4));
    assert_eq!(net.node(4).replica.removal_notice(), None);
    net.cut.clear();
    let mut ticks = 0;
    while net.node(4).replica.removal_notice().is_none() {
        net.run_ticks(1);
        ticks += 1;
        assert!(ticks < 200, "the removed learner was never told");
    }
    let (by, index) = net.node(4).replica.removal_notice().unwrap();
    assert!(by != 4 && by != gone, "told by {by}");
    assert!(index > net.node(4).replica.node.raft.raft_log.applied);
    assert!(net.node(4).replica.removed());
    for id in (1..=3).filter(|&id| id != gone) {
        assert_eq!(net.node(id).replica.removal_notice(), None, "node {id}");
    }
}

#[test]
fn a_learner_asks_only_after_hearing_no_leader_and_members_say_nothing_to_a_member() {
    let (mut net, _, _) = learner_cut_off();
    // Cut off, still a member: it is ticked alone and its messages are taken, from the
    // moment it last heard its leader.
    net.node(4).replica.node.raft.election_elapsed = 0;
    let timeout = net.node(4).replica.election_ticks as u64;
    let quiet0 = 0;
    let voters = net.node(4).replica.voters();
    let mut asked_at = Vec::new();
    let mut asks = Vec::new();
    for tick in 1..=6 * timeout {
        net.node(4).replica.tick();
        let sent: Vec<Message> = net
            .drive(4)
            .into_iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgUnreachable)
            .collect();
        if !sent.is_empty() {
            let mut to: Vec<NodeId> = sent.iter().map(|m| m.to).collect();
            to.sort_unstable();
            assert_eq!(to, voters, "it asks every voter it knows, once each");
            asked_at.push(quiet0 + tick);
            asks.extend(sent);
        }
    }
    assert!(
        !asked_at.is_empty(),
        "a learner that hears no leader never asked"
    );
    assert!(
        asked_at[0] >= 2 * timeout,
        "asked after {} ticks",
        asked_at[0]
    );
    for pair in asked_at.windows(2) {
        assert_eq!(pair[1] - pair[0], timeout, "asked more than once a timeout");
    }
    // The voters still count it a learner (and the member removed knows it was): they
    // say nothing back.
    for ask in asks {
        let to = ask.to;
        net.node(to).replica.step(ask);
        let told = net
            .drive(to)
            .into_iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgUnreachable)
            .count();
        assert_eq!(told, 0, "node {to} told a member it is not one");
    }
    assert_eq!(net.node(4).replica.removal_notice(), None);
}

/// A notice of removal as `from` sends it, having applied the log through `applied`.
fn removal_notice(from: NodeId, to: NodeId, applied: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgUnreachable);
    m.from = from;
    m.to = to;
    m.index = applied;
    m.context = b"warren: not a member".as_slice().into();
    m
}

#[test]
fn a_notice_of_removal_is_believed_only_from_a_member_further_along() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    propose_many(&mut net, leader, 1, 3);
    let node = (1..=3).find(|&id| id != leader).unwrap();
    let applied = net.node(node).replica.node.raft.raft_log.applied;
    assert!(applied > 0);
    // A member that has not applied as much (one that has not yet applied this node's
    // addition, or its return) says nothing of its membership now.
    net.node(node)
        .replica
        .step(removal_notice(leader, node, applied));
    assert_eq!(net.node(node).replica.removal_notice(), None);
    // Nor does a message of that kind without the notice's mark (raft-rs never sends
    // one), which is dropped rather than stepped.
    let mut bare = removal_notice(leader, node, applied + 5);
    bare.context = Default::default();
    net.node(node).replica.step(bare);
    assert_eq!(net.node(node).replica.removal_notice(), None);
    // A node waiting to join knows no members, and believes nothing of the kind.
    let (mut waiting, _) = Net::with_node_waiting();
    waiting.node(4).replica.step(removal_notice(1, 4, 1_000));
    assert_eq!(waiting.node(4).replica.removal_notice(), None);
    // From a member that applied further, it is believed.
    net.node(node)
        .replica
        .step(removal_notice(leader, node, applied + 1));
    assert_eq!(
        net.node(node).replica.removal_notice(),
        Some((leader, applied + 1))
    );
}

#[test]
fn a_member_is_not_told_it_was_removed_and_a_former_one_is_told_once_a_timeout() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    net.run_ticks(5);
    // Heartbeats between members draw no notice.
    for n in &mut net.nodes {
        let mut out = Vec::new();
        n.replica.poll(&mut out);
        assert!(
            !out.iter().any(
                |o| matches!(o, Output::Send(m) if m.get_msg_type() == MessageType::MsgUnreachable)
            ),
            "a member was told it is not one"
        );
    }
    // A node the configuration does not hold is told, once until an election timeout
    // has passed.
    let stranger = 9;
    let mut pre_vote = Message::default();
    pre_vote.set_msg_type(MessageType::MsgRequestPreVote);
    pre_vote.from = stranger;
    pre_vote.to = leader;
    pre_vote.term = 100;
    let notices = |net: &mut Net| -> Vec<Message> {
        net.drive(leader)
            .into_iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgUnreachable)
            .collect()
    };
    net.node(leader).replica.step(pre_vote.clone());
    let told = notices(&mut net);
    assert_eq!(told.len(), 1);
    assert_eq!((told[0].from, told[0].to), (leader, stranger));
    assert_eq!(
        told[0].index,
        net.node(leader).replica.node.raft.raft_log.applied
    );
    net.node(leader).replica.step(pre_vote.clone());
    assert!(notices(&mut net).is_empty(), "told twice within a timeout");
    for _ in 0..40 {
        net.node(leader).replica.tick();
    }
    net.node(leader).replica.step(pre_vote);
    assert_eq!(notices(&mut net).len(), 1);
}

#[test]
fn a_late_message_from_an_older_term_does_not_make_a_member_look_down() {
    let mut net = Net::bootstrapped();
    let leader = net.tick_until_leader();
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    net.run_ticks(3);
    let term = net.node(leader).replica.node.raft.term;
    assert!(term > 1, "the bootstrap term is behind the election's");
    assert!(net.node(leader).replica.alive(follower));
    let mut late = Message::default();
    late.set_msg_type(MessageType::MsgHeartbeatResponse);
    late.from = follower;
    late.to = leader;
    late.term = term - 1;
    net.node(leader).replica.step(late);
    assert!(
        net.node(leader).replica.alive(follower),
        "a message from term {} outweighed the follower's answers in term {term}",
        term - 1
    );
    // Nor does a pre-vote's, which carries the term its sender would campaign in: the
    // leader, heard from by a quorum, ignores it and stays in its term.
    let mut pre_vote = Message::default();
    pre_vote.set_msg_type(MessageType::MsgRequestPreVote);
    pre_vote.from = follower;
    pre_vote.to = leader;
    pre_vote.term = term + 1;
    net.node(leader).replica.step(pre_vote);
    assert_eq!(net.node(leader).replica.node.raft.term, term);
    net.node(leader).replica.step(Message {
        msg_type: MessageType::MsgHeartbeatResponse,
        from: follower,
        to: leader,
        term,
        ..Default::default()
    });
    assert!(
        net.node(leader).replica.alive(follower),
        "a pre-vote for term {} outweighed the follower's answers in term {term}",
        term + 1
    );
}

#[test]
fn a_member_that_joined_through_a_snapshot_knows_when_it_is_removed() {
    let (mut net, leader) = Net::four_voters();
    // Node 4 became a member through a snapshot, not by applying its own addition: removed,
    // it knows. A node waiting to join is not one removed.
    assert!(!net.node(4).replica.removed());
    net.node(leader)
        .replica
        .propose_change(2, Change::Remove(4))
        .expect("remove the new member");
    net.settle();
    net.run_ticks(5);
    assert!(net.node(4).replica.removed());
}

#[test]
fn a_learner_that_caught_up_and_stopped_answering_is_not_promoted() {
    let (mut net, leader) = Net::with_node_waiting();
    // Node 4 is added while it cannot be reached.
    net.cut.push(4);
    net.node(leader)
        .replica
        .propose_change(1, Change::AddLearner(address(4)))
        .expect("add a learner");
    net.settle();
    assert_eq!(net.node(leader).replica.learners(), vec![4]);
    // Another change, committed by the followers but not yet applied by the leader (its
    // persists held), keeps the promotion back while node 4 catches up.
    let gone = (1..=3).find(|&id| id != leader).unwrap();
    net.node(leader).hold_persists = true;
    net.node(leader)
        .replica
        .propose_change(2, Change::Remove(gone))
        .expect("remove a member");
    net.cut.clear();
    net.run_ticks(5);
    let matched = net
        .node(leader)
        .replica
        .progress()
        .into_iter()
        .find(|(id, _)| *id == 4)
        .map(|(_, m)| m);
    assert!(
        matched.is_some_and(|m| m + PROMOTE_WITHIN >= net.node(leader).replica.commit_index()),
        "node 4 caught up: {matched:?}"
    );
    assert_eq!(net.node(leader).replica.learners(), vec![4]);
    // Node 4 stops answering; once the removal applies, it is not promoted.
    net.cut.push(4);
    net.run_ticks(40);
    net.node(leader).hold_persists = false;
    net.run_ticks(5);
    assert_eq!(net.node(leader).replica.role(), Role::Leader);
    assert!(!net.node(leader).replica.voters().contains(&gone));
    assert_eq!(
        net.node(leader).replica.learners(),
        vec![4],
        "a learner that does not answer stays one"
    );
    // Back, it is promoted.
    net.cut.clear();
    net.run_ticks(10);
    assert!(net.node(leader).replica.voters().contains(&4));
}
