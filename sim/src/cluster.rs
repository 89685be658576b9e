//! The cluster mode: three (or five, `--nodes`) [`Replica`]s (warren's Raft nodes) on a
//! seeded network and seeded disks, with clients proposing batches to whichever node leads.
//!
//! Faults, drawn per seed: messages between nodes lost, duplicated and delayed (so
//! reordered); partitions that cut a minority off both ways (one node of three, one or two
//! of five), that cut one direction only, and that isolate the current leader; crashes at
//! any point of the commit path (a crash keeps a random prefix of the persists the node's
//! disk had not reported, and a random prefix of what its store had applied but not
//! synced); disks that stall, holding the persists behind a slow sync; and clock skew
//! (each node ticks at its own rate, with jitter). Each node draws its own election
//! timeout, except in a third of the seeds, where the nodes are identical: one election
//! timeout for all, clocks in step (one rate, ticks on one grid, jitter of a thousandth of
//! a tick), and once the faults stop, a steady network and steady disks (each message and
//! each sync takes the same time, within 2%), as in a deployment of one configuration on
//! like machines; there, should a node's timeout not change from term to term, two nodes
//! campaigning on the same tick would split every vote forever. And in half the seeds,
//! the leader (or, with none, some node) crashes early in the liveness phase and stays
//! down: the others must elect a leader and settle every client's batches without it.
//!
//! Compaction and snapshots: each seed draws how few entries (2 to 40) and, in a third of
//! the seeds, how few bytes a log keeps behind what its store holds durably, so logs
//! compact and a member behind is sent the leader's store in most seeds. A snapshot is
//! mail like any other (lost, duplicated, delayed, a little longer for its size), carrying
//! a copy of the leader's store; the receiver stages it (a crash loses it) and installs it
//! when its replica asks. The disk drops compacted entries at once or later, and a crash
//! may undo that; a crash may land after a snapshot became the store and before the log
//! recorded it (a restart mends the log with [`snapshot_to_restore`]).
//!
//! Membership, in half the seeds: the cluster starts at the bootstrap point (every member's
//! store records the first members there, and its log is compacted through it) beside one
//! more node that waits to join with an empty store and log. From a random time an operator
//! asks whichever node leads, by the seed's [`Churn`] plan: to add it (it joins as a
//! learner, taking the leader's store as a snapshot, and the leader promotes it to voter
//! once it has caught up) and then remove another member; to remove a member first
//! (whichever but the leader, one down included) and then add it; or to add it and remove
//! it again while it is a learner. Leaders refuse a change while another is pending, and
//! a removal that would leave too few of the voters answering; the operator tries again. A
//! member that applies its own removal stops for good, as its driver stops; one removed
//! while down or cut off is told by a member when it next campaigns, and stops too. Crashes,
//! partitions and message faults go on throughout.
//!
//! What the checker asserts, at every step:
//! - an entry is applied (on any node; by its leader with its proposal id, which confirms
//!   it) only when a majority of the voters in effect where it was committed hold it, same
//!   term and data, durably in their logs or, once compacted from them, in their stores'
//!   synced part (with a change not yet applied on the leader, the voters before it count:
//!   one node apart, their majorities meet);
//! - every node applies the same membership change at the same index, and a node that
//!   joins is added at the addresses the operator gave;
//! - at most one node leads in a term;
//! - every node applies the same entry at the same index, with no gap (so a reader of any
//!   node's store never sees an entry that was not committed);
//! - no persist rewrites or removes, in a node's durable log, an entry its store applied
//!   (a committed entry never changes);
//! - a node restarts: its log holds the last entry its store kept, and its hard state
//!   commits no further than its log's end; its log is mended only after a crash between
//!   a snapshot's install in the store and in the log;
//! - a log compacts only what its store holds durably, and a crash leaves no gap between
//!   what the store kept and what the log holds;
//! - a leader's snapshot is never behind the point raft-rs asked for; the one a node
//!   installs is the one it received with that point (with the configuration its store
//!   records), and holds exactly the committed log through it, whose last entry a
//!   majority holds durably;
//! - a leader ready to serve (its broker would start from its store) holds every batch
//!   confirmed in its term or before;
//!
//! and at the end, after the faults stop and every node is back (but the one kept down):
//! every client's batches were all confirmed and the operator's changes made, within the
//! liveness budget; then the node kept down restarts and catches up, within the same
//! budget; every confirmed batch is still held durably by a majority of the final voters,
//! at the index and term it was confirmed with; each client's batches first appear in the
//! order it proposed them; every member left applied the same log.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use warren::cluster::raftpb::{Entry, EntryType, HardState, Message};
use warren::cluster::settings::MemberAddress;
use warren::cluster::{
    BOOTSTRAP, Change, Committed, LogState, NodeId, Output, Point, ProposeError, RETAIN_BYTES,
    Replica, ReplicaConfig, Role, conf_state, snapshot_to_restore,
};

mod checks;
mod faults;
mod membership;

pub use faults::{Churn, ClusterFaults};

/// Nodes in the simulated cluster, unless told otherwise.
pub const DEFAULT_NODES: u64 = 3;
/// Most nodes a simulated cluster may have.
pub const MAX_NODES: u64 = 7;
/// Clients proposing batches.
const CLIENTS: u64 = 3;
/// Batches each client proposes.
const BATCHES_PER_CLIENT: u64 = 150;
/// Batches a client has proposed and not seen settled at once.
const CLIENT_WINDOW: usize = 4;
/// Most events one seed may run (a livelock ends the seed as a failure).
const MAX_EVENTS: u64 = 3_000_000;

/// The cluster's size, and how long each phase runs, in virtual milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    /// Voting members (odd, 1 to [`MAX_NODES`]).
    pub nodes: u64,
    /// Faults on.
    pub safety_ms: u64,
    /// Faults off: every node back (but one, in some seeds, crashed early in it and kept
    /// down until every client's batches are confirmed), every client's batches must be
    /// confirmed, and every node caught up, in this time.
    pub liveness_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nodes: DEFAULT_NODES,
            safety_ms: 4_000,
            liveness_ms: 6_000,
        }
    }
}

/// What one seed covered.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// Batches proposed (retries included).
    pub proposed: u64,
    /// Batches confirmed.
    pub confirmed: u64,
    /// Proposals a deposed or crashed leader left uncertain (retried by their client).
    pub uncertain: u64,
    /// Terms with a leader.
    pub leader_terms: u64,
    /// Steps at which a leader was ready to serve, each checked to hold every confirmed
    /// batch in its store.
    pub ready_checks: u64,
    /// Node crashes.
    pub crashes: u64,
    /// Leaders crashed in the liveness phase and kept down while the others settled.
    pub leaders_killed: u64,
    /// Seeds whose nodes were identical (one election timeout, clocks in step).
    pub identical: u64,
    /// Crashes that kept persists the node had not reported.
    pub crashes_mid_persist: u64,
    /// Persists that rewrote indexes an earlier persist, still being written, wrote.
    pub rewrites_in_flight: u64,
    /// Partitions.
    pub partitions: u64,
    /// Partitions that cut off the leader.
    pub leader_isolations: u64,
    /// Messages lost, duplicated.
    pub dropped: u64,
    /// Messages delivered twice.
    pub duplicated: u64,
    /// Entries applied, on all nodes.
    pub applied: u64,
    /// Entries re-applied after a crash lost the store's unsynced tail.
    pub reapplied: u64,
    /// Log compactions ([`Output::Compact`]).
    pub compactions: u64,
    /// Compactions a crash undid (the disk had not yet dropped the entries).
    pub compactions_lost: u64,
    /// Snapshots a leader sent (its store, to a member its log no longer reaches).
    pub snapshots_sent: u64,
    /// Snapshots a member installed as its store, and its log replaced by.
    pub snapshots_installed: u64,
    /// Crashes after a member installed a snapshot as its store and before its log
    /// recorded it.
    pub crashes_store_not_log: u64,
    /// Logs mended at a restart ([`snapshot_to_restore`]).
    pub logs_mended: u64,
    /// Seeds whose members changed: a node joined and, once it voted, another was removed.
    pub churned: u64,
    /// Membership changes the operator proposed, and those the leader refused (another
    /// pending, or no longer fitting).
    pub changes_proposed: u64,
    /// See `changes_proposed`.
    pub changes_refused: u64,
    /// Membership changes applied: learners added, promoted to voter, members removed.
    pub learners_added: u64,
    /// See `learners_added`.
    pub promotions: u64,
    /// See `learners_added`.
    pub removals: u64,
    /// Members removed while cut off or down, that stopped when a member told them.
    pub told_removed: u64,
}

/// How one seed ended.
#[derive(Debug)]
pub struct ClusterResult {
    /// The seed.
    pub seed: u64,
    /// Virtual time at the end, ms.
    pub now_ms: u64,
    /// The first broken guarantee.
    pub violation: Option<String>,
    /// A hash of every event, for the determinism check.
    pub trace_hash: u64,
    /// Coverage.
    pub stats: ClusterStats,
    /// The seed's faults.
    pub faults: ClusterFaults,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Event {
    /// A node's clock, in one of its lives: a tick of an earlier life is dropped.
    Tick {
        node: NodeId,
        life: u64,
    },
    Deliver(u64),
    PersistDone {
        node: NodeId,
        life: u64,
    },
    /// A leader's snapshot to `to` was streamed (`sent`) or failed: its driver reports it.
    SnapshotSent {
        node: NodeId,
        life: u64,
        to: NodeId,
        sent: bool,
    },
    Client(u64),
    Crash,
    /// A node crashes while it installs a snapshot (if still in that life).
    CrashInstalling {
        node: NodeId,
        life: u64,
    },
    Restart(NodeId),
    /// The leader crashes, to stay down until the others settle every client's batches.
    Kill,
    Partition,
    Heal,
    Liveness,
    /// The operator's next step in changing the members.
    Operate,
}

/// A persist handed to the disk.
struct Persisting {
    number: u64,
    /// The snapshot it installs: its point, and the store's content through it.
    snapshot: Option<(Point, Vec<Committed>)>,
    entries: Vec<Entry>,
    hard_state: Option<HardState>,
    /// When the disk completes it, µs.
    done_us: u64,
}

/// One node: its replica (None while down), its disk and its store.
struct Node {
    replica: Option<Replica>,
    cfg: ReplicaConfig,
    /// The durable log.
    log: LogState,
    /// Persists handed to the disk, in order.
    persisting: VecDeque<Persisting>,
    /// Compactions ([`Output::Compact`]) the disk has not yet carried out, in order: a
    /// crash keeps a prefix of them.
    compacting: Vec<Point>,
    /// The store: what it applied, the full history from index 1 (so `applied[i]` is
    /// index `i + 1`, also after a snapshot replaced it); `synced` of them are durable.
    applied: Vec<Committed>,
    synced: usize,
    /// The last snapshot delivered from a leader and not yet installed: its point, and
    /// its content (the leader's store through it). A crash loses it.
    staged: Option<(Point, Vec<Committed>)>,
    /// A crash came after a snapshot was installed as the store and before the log
    /// recorded it: the next boot must mend the log.
    store_ahead: bool,
    /// Crashes and restarts so far: ticks and completions of an earlier life are ignored.
    life: u64,
}

impl Node {
    /// Writes a persist the disk completed: first the snapshot into the store (durably),
    /// then the log. An entry the store applied was committed, and a committed entry never
    /// changes: a persist that rewrites or removes one is a violation, whether or not a
    /// crash would have exposed it.
    fn persist(&mut self, p: Persisting) -> Result<(), String> {
        let id = self.cfg.id;
        let point = p.snapshot.as_ref().map(|(point, _)| *point);
        if let Some(((index, _), content)) = p.snapshot {
            let applied = self.applied.len() as u64;
            if index < applied {
                return Err(format!(
                    "node {id} installed a snapshot through index {index}, behind index {applied} its store applied"
                ));
            }
            self.install_store(content);
        }
        if let (Some(first), Some(last)) = (p.entries.first(), p.entries.last()) {
            let applied = self.applied.last().map_or(0, |c| c.index);
            if last.index < applied {
                return Err(format!(
                    "node {id} cut its durable log to index {} (writing from {}), below index {applied} its store applied",
                    last.index, first.index
                ));
            }
            let compacted = point.unwrap_or(self.log.compacted).0;
            if first.index <= compacted {
                return Err(format!(
                    "node {id} wrote index {} into its durable log, compacted through index {compacted}",
                    first.index
                ));
            }
            for e in &p.entries {
                if let Some(a) = self.applied.get((e.index - 1) as usize)
                    && (a.term, &a.data[..]) != (e.term, applied_data(e))
                {
                    return Err(format!(
                        "node {id} rewrote index {} in its durable log with term {}, where its store applied term {}",
                        e.index, e.term, a.term
                    ));
                }
            }
        }
        self.log.persist(point, &p.entries, p.hard_state.as_ref());
        Ok(())
    }

    /// Makes a snapshot's content the store, durably.
    fn install_store(&mut self, content: Vec<Committed>) {
        self.applied = content;
        self.synced = self.applied.len();
    }

    /// Drops the log's entries through `through` on the disk. A log replaced since by a
    /// later snapshot has nothing left to drop.
    fn compact(&mut self, (through, term): Point) {
        if through > self.log.compacted.0 {
            self.log.compact(through, term);
        }
    }

    /// Whether this node holds an entry durably: in its durable log, or in its store's
    /// synced part once the log dropped it.
    ///
    /// The store counts because it is what the log compacted into, and holds the entry
    /// as well as the log did: it survives every crash (a crash keeps at least what the
    /// store synced), a restart starts from it (the log's compaction point, or a snapshot
    /// point [`snapshot_to_restore`] mends the log with, is never behind the entries it
    /// dropped, so the node's last (index, term), which its vote goes by, still covers the
    /// entry), and a leader serves it to a member behind as a snapshot. What quorum
    /// intersection needs of a holder is exactly that: after any crash it can neither
    /// lose the entry nor vote for a log without it.
    fn holds(&self, index: u64, term: u64, data: &[u8]) -> bool {
        self.log
            .entry(index)
            .is_some_and(|e| e.index == index && e.term == term && applied_data(e) == data)
            || self.store_holds(index, term, data)
    }

    /// Whether the store holds, durably, this entry.
    fn store_holds(&self, index: u64, term: u64, data: &[u8]) -> bool {
        index >= 1
            && self.applied[..self.synced]
                .get((index - 1) as usize)
                .is_some_and(|c| c.index == index && c.term == term && c.data == data)
    }
}

struct Client {
    next_seq: u64,
    /// Proposed and not settled: seq → node it went to.
    outstanding: BTreeMap<u64, NodeId>,
    /// To propose again, in order.
    retry: BTreeSet<u64>,
    confirmed: BTreeSet<u64>,
    target: NodeId,
}

/// The seeded cluster.
pub struct ClusterWorld {
    seed: u64,
    cfg: ClusterConfig,
    rng: SmallRng,
    faults: ClusterFaults,
    now_us: u64,
    seq: u64,
    events: BinaryHeap<std::cmp::Reverse<(u64, u64, Event)>>,
    mail: HashMap<u64, Message>,
    /// The content of the snapshots in the mail (a copy of the sender's store through the
    /// message's point), by mail key.
    snapshots: HashMap<u64, Vec<Committed>>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    faults_on: bool,
    /// The node crashed in the liveness phase and kept down, the term whose successors
    /// show the others settled without it, and whether it was restarted once they had.
    kept_down: Option<(NodeId, u64, bool)>,
    /// The committed log as seen by every node that applied it: index → (term, data,
    /// membership change).
    committed: BTreeMap<u64, (u64, Vec<u8>, Option<Change>)>,
    /// The voters in effect from each index on (from 0: the first members).
    configs: BTreeMap<u64, Vec<NodeId>>,
    /// Members removed from the cluster (by a committed change).
    removed: BTreeSet<NodeId>,
    /// Members that applied their own removal and stopped for good, as the driver stops a
    /// node then, and members told of their removal by another.
    retired: BTreeSet<NodeId>,
    /// Membership changes the operator proposed.
    operations: u64,
    leaders: BTreeMap<u64, NodeId>,
    /// Confirmed batches: (client, seq) → (index, term).
    confirmed: BTreeMap<(u64, u64), (u64, u64)>,
    /// The confirmed batch at the highest index of each term: term → (index, client, seq).
    newest_confirmed: BTreeMap<u64, (u64, u64, u64)>,
    trace: DefaultHasher,
    stats: ClusterStats,
}

/// Proposal ids of the operator's membership changes (clients' are below).
const OPERATOR: u64 = 1 << 63;

/// A simulated member's addresses.
fn address(id: NodeId) -> MemberAddress {
    let ip = [10, 0, (id >> 8) as u8, id as u8];
    MemberAddress {
        id,
        raft: std::net::SocketAddr::from((ip, 25672)),
        amqp: std::net::SocketAddr::from((ip, 5672)),
        http: None,
    }
}

/// The entry every member of a new cluster starts its store with ([`BOOTSTRAP`]).
fn bootstrap_entry() -> Committed {
    Committed {
        index: BOOTSTRAP.0,
        term: BOOTSTRAP.1,
        data: Vec::new(),
        proposal: None,
        change: None,
    }
}

/// A log entry's data as the store applies it: a membership change's entry applies no
/// batch.
fn applied_data(e: &Entry) -> &[u8] {
    if e.get_entry_type() == EntryType::EntryNormal {
        &e.data
    } else {
        &[]
    }
}

fn encode(client: u64, seq: u64) -> Vec<u8> {
    format!("c{client}:{seq}").into_bytes()
}

fn decode(data: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(data).ok()?.strip_prefix('c')?;
    let (c, q) = s.split_once(':')?;
    Some((c.parse().ok()?, q.parse().ok()?))
}

impl ClusterWorld {
    /// The world of `seed`.
    pub fn new(seed: u64, cfg: ClusterConfig) -> Self {
        assert!(
            cfg.nodes % 2 == 1 && (1..=MAX_NODES).contains(&cfg.nodes),
            "a cluster of {} nodes: an odd number up to {MAX_NODES}",
            cfg.nodes
        );
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xc105_7e12);
        let faults = ClusterFaults::draw(&mut rng, &cfg);
        let members: Vec<NodeId> = (1..=cfg.nodes).collect();
        // With churn, one node more waits to join from the start (its store and log empty);
        // the others start a new cluster, at the bootstrap point.
        let total = cfg.nodes + u64::from(faults.churn_after_ms.is_some());
        let mut first_log = LogState::default();
        first_log.install(BOOTSTRAP);
        first_log.hard_state.term = BOOTSTRAP.1;
        let nodes = (1..=total)
            .map(|id| {
                let joins = id > cfg.nodes;
                (id, joins)
            })
            .map(|(id, joins)| Node {
                replica: None,
                cfg: ReplicaConfig {
                    id,
                    members: if joins { Vec::new() } else { members.clone() },
                    learners: Vec::new(),
                    election_ticks: faults.election_ticks[(id - 1) as usize],
                    heartbeat_ticks: 2,
                    retain_entries: faults.retain_entries,
                    retain_bytes: faults.retain_bytes,
                },
                log: if joins {
                    LogState::default()
                } else {
                    first_log.clone()
                },
                persisting: VecDeque::new(),
                compacting: Vec::new(),
                applied: if joins {
                    Vec::new()
                } else {
                    vec![bootstrap_entry()]
                },
                synced: usize::from(!joins),
                staged: None,
                store_ahead: false,
                life: 0,
            })
            .collect();
        let clients = (0..CLIENTS)
            .map(|_| Client {
                next_seq: 0,
                outstanding: BTreeMap::new(),
                retry: BTreeSet::new(),
                confirmed: BTreeSet::new(),
                target: rng.gen_range(1..=cfg.nodes),
            })
            .collect();
        let mut w = Self {
            seed,
            cfg,
            rng,
            faults,
            now_us: 0,
            seq: 0,
            events: BinaryHeap::new(),
            mail: HashMap::new(),
            snapshots: HashMap::new(),
            nodes,
            clients,
            cut: BTreeSet::new(),
            faults_on: true,
            kept_down: None,
            committed: BTreeMap::from([(BOOTSTRAP.0, (BOOTSTRAP.1, Vec::new(), None))]),
            configs: BTreeMap::from([(0, members.clone())]),
            removed: BTreeSet::new(),
            retired: BTreeSet::new(),
            operations: 0,
            leaders: BTreeMap::new(),
            confirmed: BTreeMap::new(),
            newest_confirmed: BTreeMap::new(),
            trace: DefaultHasher::new(),
            stats: ClusterStats::default(),
        };
        for id in 1..=total {
            w.boot(id).expect("a new node boots");
        }
        if let Some(ms) = w.faults.churn_after_ms {
            w.stats.churned = 1;
            w.at(ms * 1_000, Event::Operate);
        }
        for c in 0..CLIENTS {
            let at = w.rng.gen_range(0..5_000);
            w.at(at, Event::Client(c));
        }
        if w.faults.crash_every_ms > 0 {
            let at = w.rng.gen_range(0..w.faults.crash_every_ms * 2_000);
            w.at(at, Event::Crash);
        }
        if w.faults.partition_every_ms > 0 {
            let at = w.rng.gen_range(0..w.faults.partition_every_ms * 2_000);
            w.at(at, Event::Partition);
        }
        w.at(cfg.safety_ms * 1_000, Event::Liveness);
        if let Some(ms) = w.faults.kill_after_ms {
            w.at((cfg.safety_ms + ms) * 1_000, Event::Kill);
        }
        w.stats.identical = u64::from(w.faults.identical);
        w
    }

    fn at(&mut self, delay_us: u64, event: Event) {
        self.seq += 1;
        self.events
            .push(std::cmp::Reverse((self.now_us + delay_us, self.seq, event)));
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Nodes in the world: the cluster's first members, and the one that joins.
    fn size(&self) -> u64 {
        self.nodes.len() as u64
    }

    /// The member after `id`, round the cluster.
    fn next_node(&self, id: NodeId) -> NodeId {
        id % self.size() + 1
    }

    fn boot(&mut self, id: NodeId) -> Result<(), String> {
        // A member that applied its own removal is stopped for good; so is one whose store
        // holds its removal (it crashed as it applied it).
        let (voters, learners) = self.config_of(&self.nodes[(id - 1) as usize].applied);
        let removed = !self.nodes[(id - 1) as usize].applied.is_empty()
            && !voters.contains(&id)
            && !learners.contains(&id);
        if removed {
            self.retired.insert(id);
        }
        if self.retired.contains(&id) {
            return Ok(());
        }
        let n = self.node(id);
        n.cfg.members = voters;
        n.cfg.learners = learners;
        n.life += 1;
        n.persisting.clear();
        let (applied, applied_term) = n.applied.last().map_or((0, 0), |c| (c.index, c.term));
        // A crash between installing a snapshot as the store and replacing the log by it
        // leaves the log behind the store: the log takes the store's point first.
        let store_ahead = std::mem::take(&mut n.store_ahead);
        if let Some(point) = snapshot_to_restore(&n.log, applied, applied_term) {
            if !store_ahead {
                return Err(format!(
                    "node {id} would replace its log (compacted through {:?}, last index {}) by its store's point {point:?} at a restart, with no snapshot installed since",
                    n.log.compacted,
                    n.log.last_index()
                ));
            }
            n.log.install(point);
            self.stats.logs_mended += 1;
        }
        let n = self.node(id);
        let replica = Replica::start(&n.cfg, &n.log, applied, applied_term)
            .unwrap_or_else(|e| panic!("node {id} does not restart: {e}"));
        n.replica = Some(replica);
        let life = n.life;
        let first = self.next_tick(id, true);
        self.at(first, Event::Tick { node: id, life });
        Ok(())
    }

    /// How long until the node's next tick: a tick (and jitter of up to a tenth of one)
    /// away, or its first at random; on the cluster's grid when the nodes are identical.
    fn next_tick(&mut self, id: NodeId, first: bool) -> u64 {
        let tick = self.faults.tick_us[(id - 1) as usize];
        if self.faults.identical {
            let jitter = self.rng.gen_range(0..=tick / 1_000);
            let grid = (self.now_us / tick + 1) * tick;
            grid + jitter - self.now_us
        } else if first {
            self.rng.gen_range(0..tick)
        } else {
            tick + self.rng.gen_range(0..=tick / 10)
        }
    }

    /// Runs the seed to its end or its first violation.
    pub fn run(mut self) -> ClusterResult {
        let end_us = (self.cfg.safety_ms + self.cfg.liveness_ms) * 1_000;
        let mut events = 0u64;
        let violation = loop {
            let Some(std::cmp::Reverse((t, _, event))) = self.events.pop() else {
                break Some("no events left".to_string());
            };
            if t > end_us {
                break self.final_check(false).err();
            }
            events += 1;
            if events > MAX_EVENTS {
                break Some(format!("more than {MAX_EVENTS} events: a livelock"));
            }
            self.now_us = t;
            self.trace_event(&event);
            if let Err(v) = self.handle(event).and_then(|()| self.check_leaders()) {
                break Some(v);
            }
            if !self.faults_on && self.all_done() {
                // The node kept down comes back now, and must catch up in the same budget.
                if let Some((id, term, false)) = self.kept_down {
                    self.kept_down = Some((id, term, true));
                    if let Err(v) = self.boot(id).and_then(|()| self.drive(id)) {
                        break Some(v);
                    }
                    continue;
                }
                break self.final_check(true).err();
            }
        };
        ClusterResult {
            seed: self.seed,
            now_ms: self.now_us / 1_000,
            violation,
            trace_hash: self.trace.finish(),
            stats: self.stats,
            faults: self.faults,
        }
    }

    fn trace_event(&mut self, event: &Event) {
        self.now_us.hash(&mut self.trace);
        event.hash(&mut self.trace);
        if let Event::Deliver(k) = event
            && let Some(m) = self.mail.get(k)
        {
            (
                m.from,
                m.to,
                m.term,
                m.index,
                m.commit,
                m.get_msg_type() as i32,
                m.entries.len(),
                m.get_snapshot().get_metadata().index,
            )
                .hash(&mut self.trace);
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Tick { node: id, life } => {
                let next = self.next_tick(id, false);
                let n = self.node(id);
                if n.life == life
                    && let Some(r) = n.replica.as_mut()
                {
                    r.tick();
                    self.at(next, Event::Tick { node: id, life });
                    self.drive(id)?;
                }
            }
            Event::Deliver(k) => {
                if let Some(m) = self.mail.remove(&k) {
                    let snapshot = self.snapshots.remove(&k);
                    let n = self.node(m.to);
                    if n.replica.is_some() {
                        // The driver keeps a snapshot's content until the replica asks
                        // for it to be installed (or a later one comes).
                        if let Some(content) = snapshot {
                            let meta = m.get_snapshot().get_metadata();
                            n.staged = Some(((meta.index, meta.term), content));
                        }
                        let to = m.to;
                        if let Some(r) = self.node(to).replica.as_mut() {
                            r.step(m);
                        }
                        // Told by a member that it was removed, a change it never
                        // applied: it stops for good, as its driver stops it.
                        let notice = self
                            .node(to)
                            .replica
                            .as_ref()
                            .and_then(|r| r.removal_notice());
                        if let Some((by, index)) = notice {
                            self.told_removed(to, by, index)?;
                        } else {
                            self.drive(to)?;
                        }
                    }
                }
            }
            Event::PersistDone { node, life } => {
                if self.node(node).life == life
                    && let Some(p) = self.node(node).persisting.pop_front()
                {
                    let number = p.number;
                    if p.snapshot.is_some() {
                        self.stats.snapshots_installed += 1;
                    }
                    self.node(node).persist(p)?;
                    // The disk gets round to compactions it put off, now and then.
                    if !self.node(node).compacting.is_empty() && self.rng.gen_bool(0.3) {
                        let n = self.node(node);
                        for point in std::mem::take(&mut n.compacting) {
                            n.compact(point);
                        }
                    }
                    let n = self.node(node);
                    let mut out = Vec::new();
                    if let Some(r) = n.replica.as_mut() {
                        r.persisted(number, &mut out);
                    }
                    self.outputs(node, out)?;
                }
            }
            Event::SnapshotSent {
                node,
                life,
                to,
                sent,
            } => {
                let n = self.node(node);
                if n.life == life
                    && let Some(r) = n.replica.as_mut()
                {
                    r.snapshot_sent(to, sent);
                    self.drive(node)?;
                }
            }
            Event::Client(c) => {
                self.client_turn(c)?;
                if self.clients[c as usize].confirmed.len() < BATCHES_PER_CLIENT as usize {
                    let gap = self.rng.gen_range(500..3_000);
                    self.at(gap, Event::Client(c));
                }
            }
            Event::Crash => {
                if self.faults_on {
                    self.crash()?;
                    let every = self.faults.crash_every_ms * 1_000;
                    let gap = self.rng.gen_range(every / 2..every * 3 / 2);
                    self.at(gap, Event::Crash);
                }
            }
            Event::CrashInstalling { node, life } => {
                if self.faults_on
                    && self.node(node).life == life
                    && self.node(node).replica.is_some()
                {
                    self.crash_node(node)?;
                    let down = self.rng.gen_range(20_000..600_000);
                    self.at(down, Event::Restart(node));
                }
            }
            Event::Restart(id) => {
                if self.node(id).replica.is_none() && self.kept_down.is_none_or(|(k, ..)| k != id) {
                    self.boot(id)?;
                    self.drive(id)?;
                }
            }
            Event::Partition => {
                if self.faults_on {
                    self.partition();
                    let every = self.faults.partition_every_ms * 1_000;
                    let gap = self.rng.gen_range(every / 2..every * 3 / 2);
                    self.at(gap, Event::Partition);
                }
            }
            Event::Heal => self.cut.clear(),
            Event::Kill => {
                let leader = (1..=self.size()).find(|&id| {
                    self.nodes[(id - 1) as usize]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.role() == Role::Leader)
                });
                // With no leader yet, wait a little for one (up to a second).
                let waited = self.now_us
                    >= (self.cfg.safety_ms + self.faults.kill_after_ms.unwrap_or(0) + 1_000)
                        * 1_000;
                match leader {
                    None if !waited => self.at(20_000, Event::Kill),
                    _ => {
                        let id = leader.unwrap_or_else(|| self.rng.gen_range(1..=self.size()));
                        if leader.is_some() {
                            self.stats.leaders_killed += 1;
                        }
                        let highest = (1..=self.size())
                            .filter_map(|id| self.nodes[(id - 1) as usize].replica.as_ref())
                            .map(|r| r.term())
                            .max()
                            .unwrap_or(0);
                        // The others settle once they apply an entry of a term after the
                        // one recorded. After a leader's, which may be a stale one cut off
                        // in an older term than another's; with no leader, a leader elected
                        // into the highest term after the kill will do (as may an entry of
                        // that term from a leader that stepped down before it: the node
                        // only returns sooner).
                        let term = match leader {
                            Some(l) => self.nodes[(l - 1) as usize]
                                .replica
                                .as_ref()
                                .map_or(highest, |r| r.term()),
                            None => highest.saturating_sub(1),
                        };
                        if self.node(id).replica.is_some() {
                            self.crash_node(id)?;
                        }
                        self.kept_down = Some((id, term, false));
                    }
                }
            }
            Event::Operate => {
                if !self.churn_done() {
                    self.operate()?;
                    let gap = self.rng.gen_range(20_000..100_000);
                    self.at(gap, Event::Operate);
                }
            }
            Event::Liveness => {
                self.faults_on = false;
                self.cut.clear();
                for id in 1..=self.size() {
                    if self.node(id).replica.is_none() {
                        self.boot(id)?;
                        self.drive(id)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Collects a node's outputs and carries them out.
    fn drive(&mut self, id: NodeId) -> Result<(), String> {
        let mut out = Vec::new();
        if let Some(r) = self.node(id).replica.as_mut() {
            r.poll(&mut out);
        }
        self.outputs(id, out)
    }

    fn outputs(&mut self, id: NodeId, out: Vec<Output>) -> Result<(), String> {
        for o in out {
            // A node stopped meanwhile (removed from the cluster by an entry it applied)
            // carries out nothing more.
            if self.node(id).replica.is_none() {
                break;
            }
            match o {
                Output::Persist {
                    number,
                    snapshot,
                    entries,
                    hard_state,
                } => {
                    let snapshot = match snapshot {
                        Some(point) => Some((point, self.take_staged(id, point)?)),
                        None => None,
                    };
                    self.persist(
                        id,
                        Persisting {
                            number,
                            snapshot,
                            entries,
                            hard_state,
                            done_us: 0,
                        },
                    );
                }
                Output::Send(m) => self.send(m),
                Output::SendSnapshot(m) => self.send_snapshot(id, m)?,
                Output::Compact { through, term } => self.compact(id, (through, term))?,
                Output::Apply(entries) => {
                    for c in entries {
                        if self.node(id).replica.is_none() {
                            break;
                        }
                        self.apply(id, c)?;
                    }
                }
                Output::Deposed { uncertain, .. } => self.uncertain(id, &uncertain),
            }
        }
        Ok(())
    }

    /// Hands a persist to the node's disk, to complete after those before it.
    fn persist(&mut self, id: NodeId, mut p: Persisting) {
        let stall = self.faults_on && self.rng.gen_bool(self.faults.stall);
        let mut sync = if stall {
            self.rng.gen_range(100_000..=800_000)
        } else if self.steady() {
            self.steady_draw(self.faults.max_sync_us / 2)
        } else {
            self.rng.gen_range(50..=self.faults.max_sync_us)
        };
        // A snapshot is a whole store to write.
        if let Some((_, content)) = &p.snapshot {
            sync += 5 * content.len() as u64;
        }
        let now = self.now_us;
        let n = self.node(id);
        let writing = n
            .persisting
            .iter()
            .filter_map(|p| p.entries.last())
            .map(|e| e.index)
            .max();
        if let (Some(first), Some(last)) = (p.entries.first(), writing)
            && first.index <= last
        {
            self.stats.rewrites_in_flight += 1;
        }
        let n = self.node(id);
        p.done_us = n.persisting.back().map_or(0, |p| p.done_us).max(now + sync);
        let (life, delay) = (n.life, p.done_us - now);
        let installs = p.snapshot.is_some();
        n.persisting.push_back(p);
        self.at(delay, Event::PersistDone { node: id, life });
        // Crashes during a snapshot's install, which random crashes seldom hit.
        if installs && self.faults_on && self.faults.crash_every_ms > 0 && self.rng.gen_bool(0.2) {
            let at = self.rng.gen_range(0..delay.max(1));
            self.at(at, Event::CrashInstalling { node: id, life });
        }
    }

    /// The content of the snapshot the replica installs: the one staged with that point.
    /// It must be the committed log through the point.
    fn take_staged(&mut self, id: NodeId, point: Point) -> Result<Vec<Committed>, String> {
        let n = self.node(id);
        let content = match n.staged.take() {
            Some((p, content)) if p == point => content,
            other => {
                return Err(format!(
                    "node {id} is to install a snapshot at {point:?}, but the one it received is at {:?}",
                    other.map(|(p, _)| p)
                ));
            }
        };
        let last = content.last().map_or((0, 0), |c| (c.index, c.term));
        if last != point || content.len() as u64 != point.0 {
            return Err(format!(
                "node {id} is to install a snapshot at {point:?}, whose content holds {} entries through {last:?}",
                content.len()
            ));
        }
        for c in &content {
            if self.committed.get(&c.index) != Some(&(c.term, c.data.clone(), c.change.clone())) {
                return Err(format!(
                    "node {id} received a snapshot holding index {} as term {} {:?}, not what was applied there ({:?})",
                    c.index,
                    c.term,
                    String::from_utf8_lossy(&c.data),
                    self.committed.get(&c.index)
                ));
            }
        }
        // The point was committed: a majority holds it durably, in its log or its store.
        let data = content[content.len() - 1].data.clone();
        if let Err(why) = self.majority_holds(last.0, |n| n.holds(last.0, last.1, &data)) {
            return Err(format!(
                "node {id} is to install a snapshot at {point:?}, {why}"
            ));
        }
        Ok(content)
    }

    /// A leader sends its store as a snapshot: a copy of what it applied, through its last
    /// applied entry, which the message then names.
    fn send_snapshot(&mut self, id: NodeId, mut m: Message) -> Result<(), String> {
        let (life, to) = (self.node(id).life, m.to);
        let content = self.node(id).applied.clone();
        let point = content.last().map_or((0, 0), |c| (c.index, c.term));
        let (voters, learners) = self.config_of(&content);
        let meta = m.mut_snapshot().mut_metadata();
        // The configuration travels with the store that records it.
        meta.set_conf_state(conf_state(&voters, &learners));
        if point.0 < meta.index {
            return Err(format!(
                "node {id} is to send a snapshot at index {} to node {to}, but its store holds only through {point:?}",
                meta.index
            ));
        }
        (meta.index, meta.term) = point;
        self.stats.snapshots_sent += 1;
        // The leader hears how the stream went once it ended: delivered, or failed (a cut
        // link, or a lost stream the sender may or may not notice).
        let (delay, sent) = match self.deliver(m, Some(content)) {
            Some(delay) => (delay, true),
            None => {
                let delay = self.rng.gen_range(20..=self.faults.max_delay_us);
                (delay, self.rng.gen_bool(0.5))
            }
        };
        self.at(
            delay,
            Event::SnapshotSent {
                node: id,
                life,
                to,
                sent,
            },
        );
        Ok(())
    }

    /// A log compaction: the disk drops the entries now, or later, or a crash comes first.
    fn compact(&mut self, id: NodeId, (through, term): Point) -> Result<(), String> {
        self.stats.compactions += 1;
        let now = self.rng.gen_bool(0.5);
        let n = self.node(id);
        // The log drops only what the store holds durably.
        if through > n.synced as u64 || n.applied[through as usize - 1].term != term {
            return Err(format!(
                "node {id} compacts its log through index {through} (term {term}), but its store holds durably only through index {} ({:?})",
                n.synced,
                n.applied.get(through as usize - 1).map(|c| c.term)
            ));
        }
        n.compacting.push((through, term));
        if now {
            for point in std::mem::take(&mut n.compacting) {
                n.compact(point);
            }
        }
        Ok(())
    }

    /// Identical nodes, faults off: messages and syncs take a steady time.
    fn steady(&self) -> bool {
        self.faults.identical && !self.faults_on
    }

    /// `base`, give or take 2%.
    fn steady_draw(&mut self, base: u64) -> u64 {
        base - base / 50 + self.rng.gen_range(0..=base / 25)
    }

    fn send(&mut self, m: Message) {
        self.deliver(m, None);
    }

    /// Puts a message (and a snapshot's content) in the mail, lost, duplicated and delayed
    /// at random: when it goes, how long until its first copy arrives, µs.
    fn deliver(&mut self, m: Message, snapshot: Option<Vec<Committed>>) -> Option<u64> {
        if self.cut.contains(&(m.from, m.to)) {
            self.stats.dropped += 1;
            return None;
        }
        if self.faults_on && self.rng.gen_bool(self.faults.drop) {
            self.stats.dropped += 1;
            return None;
        }
        let copies = if self.faults_on && self.rng.gen_bool(self.faults.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        // A snapshot is a whole store to stream: it takes longer.
        let streaming = snapshot.as_ref().map_or(0, |s| 20 * s.len() as u64);
        let mut first = None;
        for _ in 0..copies {
            let delay = streaming
                + if self.steady() {
                    self.steady_draw(self.faults.max_delay_us / 2)
                } else {
                    self.rng.gen_range(20..=self.faults.max_delay_us)
                };
            first = first.or(Some(delay));
            self.seq += 1;
            let key = self.seq;
            self.mail.insert(key, m.clone());
            if let Some(content) = &snapshot {
                self.snapshots.insert(key, content.clone());
            }
            self.at(delay, Event::Deliver(key));
        }
        first
    }

    /// Nodes (up or down) that hold this entry durably: its index, term and data, in
    /// their durable log, or in their store's synced part once the log dropped it.
    ///
    /// The store counts because it is what the log compacted into, and holds the entry
    /// as well as the log did: it survives every crash (a crash keeps at least what the
    /// store synced), a restart starts from it (the log's compaction point, or a snapshot
    /// point [`snapshot_to_restore`] mends the log with, is never behind the entries it
    /// dropped, so the node's last (index, term), which its vote goes by, still covers the
    /// entry), and a leader serves it to a member behind as a snapshot. What quorum
    /// intersection needs of a holder is exactly that: after any crash it can neither
    /// lose the entry nor vote for a log without it.
    fn apply(&mut self, id: NodeId, c: Committed) -> Result<(), String> {
        // First: any entry applied, and so any confirm (the leader applying its own
        // proposal), is durable on a majority.
        if let Err(why) = self.majority_holds(c.index, |n| n.holds(c.index, c.term, &c.data)) {
            return Err(format!(
                "node {id} applied index {} (term {}, {:?}{}{}) {why}",
                c.index,
                c.term,
                String::from_utf8_lossy(&c.data),
                c.change
                    .as_ref()
                    .map_or(String::new(), |ch| format!(", {ch:?}")),
                if c.proposal.is_some() {
                    ", confirming it"
                } else {
                    ""
                },
            ));
        }
        let client_proposal = c.proposal.filter(|p| p & OPERATOR == 0);
        if let Some(p) = client_proposal {
            let (client, seq) = (p >> 32, p & 0xffff_ffff);
            if decode(&c.data) != Some((client, seq)) {
                return Err(format!(
                    "node {id} confirmed client {client}'s batch {seq} with the entry {:?}",
                    String::from_utf8_lossy(&c.data)
                ));
            }
        }
        let n = self.node(id);
        let expected = n.applied.last().map_or(1, |l| l.index + 1);
        if c.index != expected {
            return Err(format!(
                "node {id} applied index {} after {}: a gap or a repeat",
                c.index,
                expected - 1
            ));
        }
        n.applied.push(c.clone());
        // The store syncs now and then; a crash loses what it applied since. Once synced,
        // the log may drop what the store holds.
        if self.rng.gen_bool(0.3) {
            let n = self.node(id);
            n.synced = n.applied.len();
            if let Some(r) = n.replica.as_mut() {
                r.store_synced(c.index);
            }
        }
        self.stats.applied += 1;
        match self.committed.get(&c.index) {
            Some((term, data, change)) if (*term, data, change) != (c.term, &c.data, &c.change) => {
                return Err(format!(
                    "node {id} applied index {} as term {} {:?} {:?}, another node as term {term} {:?} {change:?}",
                    c.index,
                    c.term,
                    String::from_utf8_lossy(&c.data),
                    c.change,
                    String::from_utf8_lossy(data)
                ));
            }
            Some(_) => {}
            None => {
                self.committed
                    .insert(c.index, (c.term, c.data.clone(), c.change.clone()));
                if let Some(change) = &c.change {
                    self.changed(c.index, change)?;
                }
            }
        }
        // A node that applies its own removal stops for good, as its driver does.
        if c.change == Some(Change::Remove(id)) {
            self.retired.insert(id);
            self.crash_node(id)?;
            return Ok(());
        }
        if let Some(p) = client_proposal {
            let (client, seq) = (p >> 32, p & 0xffff_ffff);
            self.confirmed
                .entry((client, seq))
                .or_insert((c.index, c.term));
            let newest = self
                .newest_confirmed
                .entry(c.term)
                .or_insert((c.index, client, seq));
            if newest.0 < c.index {
                *newest = (c.index, client, seq);
            }
            let cl = &mut self.clients[client as usize];
            if cl.outstanding.remove(&seq).is_some() || cl.retry.remove(&seq) {
                self.stats.confirmed += 1;
            }
            cl.confirmed.insert(seq);
        }
        Ok(())
    }

    /// Proposals a leader could not settle go back to their clients.
    fn uncertain(&mut self, id: NodeId, proposals: &[u64]) {
        for &p in proposals.iter().filter(|p| *p & OPERATOR == 0) {
            let (client, seq) = (p >> 32, p & 0xffff_ffff);
            let cl = &mut self.clients[client as usize];
            if cl.outstanding.get(&seq) == Some(&id) {
                cl.outstanding.remove(&seq);
                cl.retry.insert(seq);
                self.stats.uncertain += 1;
            }
        }
    }

    fn client_turn(&mut self, c: u64) -> Result<(), String> {
        loop {
            let cl = &self.clients[c as usize];
            if cl.outstanding.len() >= CLIENT_WINDOW {
                return Ok(());
            }
            let seq = match cl.retry.first() {
                Some(&s) => s,
                None if cl.next_seq < BATCHES_PER_CLIENT => cl.next_seq,
                None => return Ok(()),
            };
            let target = cl.target;
            let next = self.next_node(target);
            let Some(r) = self.node(target).replica.as_mut() else {
                self.clients[c as usize].target = next;
                return Ok(());
            };
            match r.propose((c << 32) | seq, encode(c, seq)) {
                Ok(()) => {
                    self.stats.proposed += 1;
                    let cl = &mut self.clients[c as usize];
                    cl.retry.remove(&seq);
                    if seq == cl.next_seq {
                        cl.next_seq += 1;
                    }
                    cl.outstanding.insert(seq, target);
                    self.drive(target)?;
                }
                Err(ProposeError::NotLeader { leader }) => {
                    // The hint, mostly: a member removed without hearing of it may name a
                    // leader that is gone for good, and a client that only followed hints
                    // would go round between the two.
                    let hint = leader.filter(|_| self.rng.gen_ratio(3, 4));
                    self.clients[c as usize].target = hint.unwrap_or(next);
                    return Ok(());
                }
                Err(ProposeError::Busy | ProposeError::Refused(_)) => return Ok(()),
            }
        }
    }

    fn crash(&mut self) -> Result<(), String> {
        let up: Vec<NodeId> = (1..=self.size())
            .filter(|&id| self.node(id).replica.is_some())
            .collect();
        // Keep a majority up most of the time; sometimes take it down too.
        if up.len() < self.size() as usize && self.rng.gen_bool(0.7) {
            return Ok(());
        }
        // Half the time, a node in the middle of a sync, if there is one; of those, one
        // installing a snapshot half the time, if there is one.
        let syncing: Vec<NodeId> = up
            .iter()
            .copied()
            .filter(|&id| !self.node(id).persisting.is_empty())
            .collect();
        let installing: Vec<NodeId> = syncing
            .iter()
            .copied()
            .filter(|&id| {
                self.node(id)
                    .persisting
                    .iter()
                    .any(|p| p.snapshot.is_some())
            })
            .collect();
        let pool = if !syncing.is_empty() && self.rng.gen_bool(0.5) {
            if !installing.is_empty() && self.rng.gen_bool(0.5) {
                installing
            } else {
                syncing
            }
        } else {
            up
        };
        let Some(&id) = pool.get(self.rng.gen_range(0..pool.len().max(1))) else {
            return Ok(());
        };
        self.crash_node(id)?;
        let down = self.rng.gen_range(20_000..600_000);
        self.at(down, Event::Restart(id));
        Ok(())
    }

    /// Crashes a node that is up: its disk keeps some of what it had not reported, its
    /// store loses some of what it had not synced.
    fn crash_node(&mut self, id: NodeId) -> Result<(), String> {
        self.stats.crashes += 1;
        // The disk may have made some unreported persists durable, in order.
        let pending = self.node(id).persisting.len();
        let kept = self.rng.gen_range(0..=pending);
        if kept > 0 {
            self.stats.crashes_mid_persist += 1;
        }
        let mut persisting = std::mem::take(&mut self.node(id).persisting).into_iter();
        for p in persisting.by_ref().take(kept) {
            self.stats.snapshots_installed += u64::from(p.snapshot.is_some());
            self.node(id).persist(p)?;
        }
        // The next persist may have installed its snapshot as the store, and not yet
        // replaced the log by it: the next boot mends the log.
        if let Some(Persisting {
            snapshot: Some((_, content)),
            ..
        }) = persisting.next()
            && self.rng.gen_bool(0.5)
        {
            self.stats.crashes_store_not_log += 1;
            let n = self.node(id);
            n.install_store(content);
            n.store_ahead = true;
        }
        // The disk carried out some of the compactions it had not yet, in order.
        let compactions = self.node(id).compacting.len();
        let done = self.rng.gen_range(0..=compactions);
        self.stats.compactions_lost += (compactions - done) as u64;
        let n = self.node(id);
        for point in std::mem::take(&mut n.compacting).into_iter().take(done) {
            n.compact(point);
        }
        let (from, to) = (n.synced, n.applied.len());
        // The store loses what it applied after its last sync, or some of it.
        let synced = self.rng.gen_range(from..=to);
        self.stats.reapplied += (to - synced) as u64;
        let n = self.node(id);
        n.applied.truncate(synced);
        n.synced = synced;
        n.staged = None;
        n.replica = None;
        n.life += 1;
        // Together the store and the log still hold every entry through the log's end.
        if (n.applied.len() as u64) < n.log.compacted.0 {
            return Err(format!(
                "node {id} crashed holding entries through index {} in its store and from index {} in its log: entries in between are lost",
                n.applied.len(),
                n.log.compacted.0 + 1
            ));
        }
        // Whatever went to this node is uncertain to its clients.
        for cl in &mut self.clients {
            let lost: Vec<u64> = cl
                .outstanding
                .iter()
                .filter(|(_, to)| **to == id)
                .map(|(s, _)| *s)
                .collect();
            for s in lost {
                cl.outstanding.remove(&s);
                cl.retry.insert(s);
                self.stats.uncertain += 1;
            }
        }
        Ok(())
    }

    /// Cuts a minority off: one node, or in a larger cluster sometimes more (the leader
    /// among them when isolating it).
    fn partition(&mut self) {
        self.stats.partitions += 1;
        self.cut.clear();
        let size = self.size();
        let leader = (1..=size).find(|&id| {
            self.nodes[(id - 1) as usize]
                .replica
                .as_ref()
                .is_some_and(|r| r.role() == Role::Leader)
        });
        let kind = self.rng.gen_range(0..3);
        let first = match (kind, leader) {
            (0, Some(l)) => {
                self.stats.leader_isolations += 1;
                l
            }
            _ => self.rng.gen_range(1..=size),
        };
        let count = self.rng.gen_range(1..=(size / 2).max(1));
        let mut victims = vec![first];
        while (victims.len() as u64) < count {
            let v = self.rng.gen_range(1..=size);
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        for &victim in &victims {
            for other in (1..=size).filter(|o| !victims.contains(o)) {
                match kind {
                    // One way only: the victim hears the others but is not heard, or the
                    // reverse.
                    2 => {
                        if self.rng.gen_bool(0.5) {
                            self.cut.insert((victim, other));
                        } else {
                            self.cut.insert((other, victim));
                        }
                    }
                    _ => {
                        self.cut.insert((victim, other));
                        self.cut.insert((other, victim));
                    }
                }
            }
        }
        let heal = self.rng.gen_range(50_000..800_000);
        self.at(heal, Event::Heal);
    }
}
