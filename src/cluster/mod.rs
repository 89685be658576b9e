//! Replication of the broker's store batches through Raft: one node of a cluster.
//!
//! The Raft engine is tikv's raft-rs (`raft` crate), not a protocol of warren's own. It is
//! chosen over openraft because its `RawNode` is sans-IO, the same shape as warren's core:
//! the caller ticks it, steps it with messages, and carries out what each `Ready` asks
//! (persist these entries, send these messages, apply these committed entries). So one
//! [`Replica`] runs unchanged on real sockets or inside the seeded simulator, which drives
//! three of them through partitions, crashes and lost, duplicated and reordered messages.
//!
//! A [`Replica`] turns raft-rs's `Ready` into [`Output`]s for its driver:
//! - [`Output::Persist`]: entries and hard state to write to this node's log and sync; the
//!   driver then calls [`Replica::persisted`] (in order). Messages that raft-rs allows only
//!   after that sync (votes, append responses) are held until then. A persist that rewrites
//!   indexes an earlier one wrote (a new leader's entries replacing a suffix) holds the
//!   earlier one too: raft-rs hears of neither, and their messages wait, until both are
//!   durable, because until then the disk may still lose what the earlier one wrote.
//! - [`Output::Send`]: a message for a peer.
//! - [`Output::Apply`]: entries a majority holds durably, to apply to the store in order.
//!   A batch this node proposed while leader carries its proposal id: the broker confirms
//!   the batch's messages then, never earlier.
//! - [`Output::Deposed`]: this node stopped being leader; the proposals it had not seen
//!   committed may or may not commit under the next leader, so the broker closes their
//!   connections without confirming them. Proposals it knows committed when it steps down
//!   (its commit index covers them, with their term) are not in that list: they come in a
//!   later [`Output::Apply`] with their proposal ids, once this node holds them durably.
//!
//! Determinism: raft-rs draws each election timeout from the thread's random generator.
//! A replica draws it instead, between [`ReplicaConfig::election_ticks`] and twice that, as
//! a function of its id, term and role, each time raft-rs restarts its election timer, so a
//! simulator seed replays exactly, and nodes whose votes split draw again for the next
//! term. raft-rs's peer maps use a fixed hasher, so its message order is fixed.
//!
//! Bounds: proposals are refused while [`MAX_UNCOMMITTED_BYTES`] of proposed batches are
//! not yet committed (a larger batch is taken alone, when nothing else is), and a message carries at most [`MAX_MESSAGE_BYTES`] of entries and
//! [`MAX_INFLIGHT_MESSAGES`] appends are in flight per follower.
//!
//! Compaction and snapshots: a member's store is the snapshot of its log. Once the driver
//! reports the store synced ([`Replica::store_synced`]), the log drops the entries it
//! holds ([`Output::Compact`]), keeping [`ReplicaConfig::retain_entries`] (and at most
//! [`ReplicaConfig::retain_bytes`]) for members a little behind. A member further behind
//! is sent the leader's store ([`Output::SendSnapshot`]); a member that takes one installs
//! it as its store before its log records the point ([`Output::Persist`] with a snapshot),
//! and [`snapshot_to_restore`] mends a crash between the two.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::prelude::{Message, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole};

use log_store::LogStore;
pub use log_store::Point;
use settings::{MAX_MEMBERS, MemberAddress};

/// raft-rs's message, entry and hard-state types, for drivers.
pub mod raftpb {
    pub use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Message, MessageType};
}

/// A node's id in its cluster (never 0).
pub type NodeId = u64;

/// Bytes of proposed batches not yet committed past which a leader refuses proposals.
pub const MAX_UNCOMMITTED_BYTES: u64 = 64 << 20;
/// Most bytes of entries in one append message.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;
/// Most bytes of one proposed batch: an entry travels whole in one message of the
/// transport, which carries at most 256 MiB (`transport::MAX_FRAME_BYTES`), with room
/// for the message around it.
pub const MAX_ENTRY_BYTES: u64 = (256 << 20) - (1 << 20);
/// Most append messages in flight to one follower.
pub const MAX_INFLIGHT_MESSAGES: usize = 256;
/// Most proposals a leader tracks until they commit (each is a store batch, which already
/// carries many messages).
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 65_536;
/// Entries a log keeps behind what its store holds durably, for followers a little behind
/// (further behind, they are sent the store instead); see [`ReplicaConfig::retain_entries`].
pub const RETAIN_ENTRIES: u64 = 10_000;
/// Most bytes of entries a log keeps behind what its store holds durably.
pub const RETAIN_BYTES: u64 = 64 << 20;
/// Bytes an entry counts for besides its data, towards [`ReplicaConfig::retain_bytes`].
const ENTRY_OVERHEAD: u64 = 32;

/// The point every member of a new cluster starts from: its store holds the first
/// configuration there, and its log is compacted through it. A node that joins later has
/// an empty log, which the leader's log cannot continue (it starts after this point), so
/// it is sent the leader's store, configuration included, before any entry: a node never
/// replays the log from a point where it would not know the members.
pub const BOOTSTRAP: Point = (1, 1);

/// Entries a learner may trail the commit index by and still be promoted to voter: close
/// enough that, voting, it does not hold commits back while it catches up.
pub const PROMOTE_WITHIN: u64 = 64;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node.
    pub id: NodeId,
    /// Every voting member as of the last entry the store applied (the config's members
    /// until a membership change is applied; none for a node waiting to join).
    pub members: Vec<NodeId>,
    /// The learners as of then: members that take the log without voting yet.
    pub learners: Vec<NodeId>,
    /// The least ticks without a leader's heartbeat before this node campaigns; each
    /// election timeout is drawn between this and twice this. Leader leases (check-quorum)
    /// last this long.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Most entries the log keeps before the point its store holds durably. The log is
    /// compacted up to that point, except for what a member is still to receive, within
    /// this and [`ReplicaConfig::retain_bytes`]: a member further behind is sent a snapshot
    /// (the leader's store).
    pub retain_entries: u64,
    /// Most bytes of entries kept so.
    pub retain_bytes: u64,
}

/// What a node holds durably in its Raft log: what a restart starts from.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    /// Term, vote and commit index, as last persisted.
    pub hard_state: HardState,
    /// The last entry compacted away, or the snapshot the log was replaced by ((0, 0) when
    /// neither): the entries follow it.
    pub compacted: Point,
    /// The persisted entries, in index order, from `compacted.0 + 1`.
    pub entries: Vec<Entry>,
}

impl LogState {
    /// Applies a completed [`Output::Persist`]: a snapshot replaces the whole log, and
    /// entries from the first one's index replace what the log held from there on.
    pub fn persist(
        &mut self,
        snapshot: Option<Point>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) {
        if let Some(point) = snapshot {
            self.install(point);
        }
        if let Some(first) = entries.first() {
            assert!(
                first.index > self.compacted.0 && first.index <= self.last_index() + 1,
                "a persisted batch of entries must follow the log without a gap"
            );
            let keep = usize::try_from(first.index - self.compacted.0 - 1).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
    }

    /// Replaces the log by a snapshot's point, which is committed. The term is at least
    /// the point's (a vote cast in an earlier term does not carry into it): a store
    /// written at a point whose log was not yet persisted (a crash in between) restarts
    /// with a log whose term covers its entries.
    pub fn install(&mut self, point: Point) {
        self.entries.clear();
        self.compacted = point;
        self.hard_state.commit = self.hard_state.commit.max(point.0);
        if self.hard_state.term < point.1 {
            self.hard_state.term = point.1;
            self.hard_state.vote = 0;
        }
    }

    /// Applies an [`Output::Compact`].
    pub fn compact(&mut self, through: u64, term: u64) {
        let drop = usize::try_from(through.saturating_sub(self.compacted.0)).unwrap_or(usize::MAX);
        self.entries.drain(..drop.min(self.entries.len()));
        self.compacted = (through, term);
    }

    /// The entry at `index`, when held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.compacted.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// The term at `index`, when known (the compaction point's included).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        self.entry(index).map(|e| e.term)
    }

    /// The last index held (the compaction point when no entry is).
    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.compacted.0, |e| e.index)
    }
}

/// This node's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes entries from a leader.
    Follower,
    /// Asks whether an election could be won (pre-vote), without raising the term.
    PreCandidate,
    /// Campaigns for votes.
    Candidate,
    /// Accepts proposals.
    Leader,
}

/// A committed entry, to apply to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its index in the log.
    pub index: u64,
    /// The term it was proposed in.
    pub term: u64,
    /// The batch (empty for the entry a new leader appends to commit its term, and for a
    /// membership change).
    pub data: Vec<u8>,
    /// The proposal id, when this node proposed it while leader.
    pub proposal: Option<u64>,
    /// The membership change it carries, now in effect: the driver records the members
    /// with the entry in its store.
    pub change: Option<Change>,
}

/// A change of the cluster's members. Members change one at a time: a new member first
/// joins as a learner, which takes the log and counts towards no majority, and the leader
/// promotes it to voter once it has caught up, so that a member still copying the log
/// never holds commits back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A node joins, as a learner, at this address.
    AddLearner(MemberAddress),
    /// A learner that caught up votes from now on (the leader proposes it by itself).
    Promote(NodeId),
    /// A member leaves.
    Remove(NodeId),
}

impl Change {
    /// The node it changes.
    pub fn node(&self) -> NodeId {
        match self {
            Change::AddLearner(m) => m.id,
            Change::Promote(id) | Change::Remove(id) => *id,
        }
    }
}

/// The voters and learners of a configuration, as a snapshot's metadata carries them.
pub fn conf_state(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
    ConfState::from((voters.to_vec(), learners.to_vec()))
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Write these entries (replacing the log from the first one's index on) and this hard
    /// state, sync, then call [`Replica::persisted`] with `number`.
    ///
    /// With a snapshot: first make the store the snapshot received from the leader (which
    /// holds the committed log through that point), durably; then replace the whole log by
    /// the point, before the entries.
    Persist {
        /// Completion order: persists complete in increasing numbers.
        number: u64,
        /// The snapshot to install, when the leader sent one this node took.
        snapshot: Option<Point>,
        /// Entries to write.
        entries: Vec<Entry>,
        /// The new hard state, when it changed.
        hard_state: Option<HardState>,
    },
    /// Send this message to `message.to`.
    Send(Message),
    /// Send this node's store to `message.to` as a snapshot, then the message itself, with
    /// its metadata set to the point the store holds (never before the point raft-rs put
    /// there); then call [`Replica::snapshot_sent`].
    SendSnapshot(Message),
    /// Drop the log's entries through `through` (whose term is `term`), which the store
    /// holds durably. It need not be synced: a crash keeps them or not.
    Compact {
        /// The last index dropped.
        through: u64,
        /// Its term.
        term: u64,
    },
    /// Apply these committed entries to the store, in order.
    Apply(Vec<Committed>),
    /// This node was leader and is not any more. These proposals were not known committed
    /// when it stepped down: they may still commit under another leader, or not (and if
    /// they do, their [`Committed::proposal`] is `None`). Those known committed then are
    /// confirmed later as usual, in an [`Output::Apply`].
    Deposed {
        /// The term it led.
        term: u64,
        /// Proposal ids, in the order proposed.
        uncertain: Vec<u64>,
    },
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the one it knows of.
    NotLeader {
        /// The leader, when known.
        leader: Option<NodeId>,
    },
    /// Too much proposed and not yet committed: the caller waits (flow control).
    Busy,
    /// A membership change that cannot be made now, and why.
    Refused(String),
}

/// Why a replica could not start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot start the Raft node: {}", self.0)
    }
}

impl std::error::Error for StartError {}

/// A persist handed to the driver and not yet reported done to raft-rs.
#[derive(Debug)]
struct PendingPersist {
    /// The number of its [`Output::Persist`], which the driver reports.
    number: u64,
    /// The last ready it stands for: readies with nothing to persist that came after it
    /// fold into it, since they are done when it is.
    ready: u64,
    /// The indexes it writes, first and last, when it writes entries (a snapshot rewrites
    /// the log from its start).
    writes: Option<(u64, u64)>,
    /// The snapshot it installs.
    snapshot: Option<Point>,
    /// Messages raft-rs allows only once the entries are durable.
    after: Vec<Message>,
}

/// A proposal this node made as leader, until it is committed or overwritten.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    term: u64,
    proposal: u64,
    bytes: u64,
}

/// One cluster member's Raft node (sans-IO).
pub struct Replica {
    node: RawNode<LogStore>,
    /// In order. Those numbered up to `durable` wait only for a later persist that rewrites
    /// their indexes.
    pending: VecDeque<PendingPersist>,
    /// The highest persist number the driver reported durable.
    durable: u64,
    /// By log index.
    in_flight: BTreeMap<u64, InFlight>,
    uncommitted_bytes: u64,
    /// The term this node leads, while it leads.
    leading: Option<u64>,
    /// The term and role the election timeout was last drawn for.
    timer: (u64, StateRole),
    /// The least election timeout.
    election_ticks: usize,
    /// The last index the store holds durably ([`Replica::store_synced`]).
    store_synced: u64,
    /// The store synced since the log was last considered for compaction.
    compact_due: bool,
    retain_entries: u64,
    retain_bytes: u64,
    /// Ticks counted since the start.
    clock: u64,
    /// The term and clock when each member was last heard from in a term; members only.
    heard: BTreeMap<NodeId, (u64, u64)>,
    /// Nodes outside the configuration that were told they are not members, with the
    /// clock then: each is told at most once an election timeout.
    told_removed: BTreeMap<NodeId, u64>,
    /// Messages of this replica's own (notices of removal), sent at the next poll.
    outbox: Vec<Message>,
    /// A member's word that the configuration it applied, later than any this node
    /// applied, does not hold this node: the member and its applied index.
    removal_notice: Option<(NodeId, u64)>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.node.raft.id)
            .field("term", &self.node.raft.term)
            .field("role", &self.role())
            .field("pending", &self.pending.len())
            .field("in_flight", &self.in_flight.len())
            .finish()
    }
}

impl Replica {
    /// Starts a node from what its log holds (empty for a new cluster) and the last entry
    /// its store has applied: its index and term (0 and 0 when none).
    ///
    /// Refused: a log that does not hold that entry with that term (the store and the log
    /// are of different histories, or the log lost what the store applied), a log
    /// compacted past it, and a hard state committing past the log's end (the log lost
    /// committed entries). A store installed from a snapshot the log has not caught up
    /// with is reconciled first ([`snapshot_to_restore`]).
    pub fn start(
        cfg: &ReplicaConfig,
        log: &LogState,
        applied: u64,
        applied_term: u64,
    ) -> Result<Self, StartError> {
        let member = cfg.members.contains(&cfg.id) || cfg.learners.contains(&cfg.id);
        // A node with no members waits to be added by the cluster's leader.
        let joining = cfg.members.is_empty() && cfg.learners.is_empty();
        if cfg.id == 0 || !(member || joining) {
            return Err(StartError(format!(
                "node id {} is not one of the members {:?} (learners {:?}): it was removed \
                 from the cluster, or its store belongs to another",
                cfg.id, cfg.members, cfg.learners
            )));
        }
        check_log(log, applied, applied_term)?;
        let mut hs = log.hard_state.clone();
        // What the store applied was committed, even when the commit index persisted with
        // the hard state is older.
        hs.commit = hs.commit.max(applied);
        let mut storage = LogStore::new(conf_state(&cfg.members, &cfg.learners), log.compacted, hs);
        storage.append(&log.entries);
        storage.set_applied((applied, applied_term));
        let config = Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            min_election_tick: cfg.election_ticks,
            max_election_tick: 2 * cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: MAX_MESSAGE_BYTES,
            max_inflight_msgs: MAX_INFLIGHT_MESSAGES,
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let node =
            RawNode::new(&config, storage, &logger).map_err(|e| StartError(e.to_string()))?;
        let mut replica = Self {
            node,
            pending: VecDeque::new(),
            durable: 0,
            in_flight: BTreeMap::new(),
            uncommitted_bytes: 0,
            leading: None,
            timer: (u64::MAX, StateRole::Follower),
            election_ticks: cfg.election_ticks,
            store_synced: applied,
            compact_due: true,
            retain_entries: cfg.retain_entries,
            retain_bytes: cfg.retain_bytes,
            clock: 0,
            heard: BTreeMap::new(),
            told_removed: BTreeMap::new(),
            outbox: Vec::new(),
            removal_notice: None,
        };
        replica.draw_election_timeout();
        Ok(replica)
    }

    /// Draws the election timeout anew whenever raft-rs restarted its election timer (a
    /// new term or role), between `election_ticks` and twice that. raft-rs would draw it
    /// from the thread's random generator; this draw is a function of the node, the term
    /// and the role, so a simulator seed replays, and two nodes whose elections split
    /// draw different timeouts for the next term (a fixed timeout per node would let two
    /// nodes with the same one split every election forever).
    fn draw_election_timeout(&mut self) {
        let raft = &mut self.node.raft;
        let timer = (raft.term, raft.state);
        if timer == self.timer {
            return;
        }
        self.timer = timer;
        let min = self.election_ticks;
        let span = min.max(1) as u64;
        let mut x = raft.id ^ raft.term.rotate_left(32) ^ ((raft.state as u64) << 7);
        // splitmix64's finaliser.
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        raft.set_randomized_election_timeout(min + (x % span) as usize);
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.node.raft.id
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        match self.node.raft.state {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        match self.node.raft.leader_id {
            0 => None,
            id => Some(id),
        }
    }

    /// The highest index known committed.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The last index in this node's log (persisted or not).
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }

    /// How far each member's log matches the leader's, on the leader: (id, matched index).
    pub fn progress(&self) -> Vec<(NodeId, u64)> {
        let mut all: Vec<(NodeId, u64)> = self
            .node
            .raft
            .prs()
            .iter()
            .map(|(id, p)| (*id, p.matched))
            .collect();
        all.sort_unstable();
        all
    }

    /// On the leader: the members heard from within the last election timeout (raft-rs's
    /// check-quorum activity), this node included.
    pub fn recently_active(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| **id == self.node.raft.id || p.recent_active)
            .map(|(id, _)| *id)
            .collect();
        all.sort_unstable();
        all
    }

    /// Proposals waiting for their commit.
    pub fn proposals_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether a broker may be started on this node now, from its store: it leads, its
    /// store applied every committed entry (`applied` and `applied_term` are the last
    /// index and term the store applied), its own term's first among them, so that every
    /// batch an earlier leader confirmed is in the store, and none of its own proposals
    /// waits (one committed later would be in the store but not in the broker).
    pub fn ready_to_serve(&self, applied: u64, applied_term: u64) -> bool {
        self.role() == Role::Leader
            && applied == self.commit_index()
            && applied_term == self.term()
            && self.in_flight.is_empty()
    }

    /// Advances the logical clock by one tick (the driver ticks every few milliseconds).
    ///
    /// A follower installing a snapshot does not tick until the install is durable: raft-rs
    /// moves its applied index to the snapshot's only then, and an election timeout before
    /// would have it read the entries between the two, which the log no longer holds (a
    /// fatal error in raft-rs's campaign).
    pub fn tick(&mut self) {
        if self.pending.iter().any(|p| p.snapshot.is_some()) {
            return;
        }
        self.clock += 1;
        self.node.tick();
        self.ask_if_removed();
        self.draw_election_timeout();
    }

    /// Takes a message from a peer. Messages from other terms or non-members are raft-rs's
    /// to ignore; what it refuses is dropped, as a lost message would be. A node outside
    /// the configuration is told so ([`Replica::removal_notice`]).
    pub fn step(&mut self, message: Message) {
        // A proposal from a peer would be one forwarded by a follower: warren's followers
        // run no broker, and forward clients rather than proposals.
        if message.get_msg_type() == MessageType::MsgPropose || self.take_removal_notice(&message) {
            return;
        }
        let (from, term) = (message.from, message.term);
        self.tell_if_removed(from);
        let mut message = message;
        // A snapshot's content is the store, which the driver installs itself.
        if message.get_msg_type() == MessageType::MsgSnapshot {
            message.mut_snapshot().data = Default::default();
        }
        let _ = self.node.step(message);
        // A member is heard by a message of the term in effect once it is stepped: a late
        // one from an older term, or a pre-vote's of the next, says nothing of whether it
        // answers now, and leaves its record alone. Only members are remembered: the map
        // stays as small as the cluster.
        if term == self.node.raft.term && self.node.raft.prs().get(from).is_some() {
            self.heard.insert(from, (term, self.clock));
            if self.heard.len() > MAX_MEMBERS {
                let prs = self.node.raft.prs();
                self.heard.retain(|id, _| prs.get(*id).is_some());
            }
        }
        self.draw_election_timeout();
    }

    /// Proposes a batch, when this node leads. `proposal` is the caller's id for it,
    /// reported back in [`Committed::proposal`] or [`Output::Deposed`].
    pub fn propose(&mut self, proposal: u64, data: Vec<u8>) -> Result<(), ProposeError> {
        if self.node.raft.state != StateRole::Leader || self.node.raft.lead_transferee.is_some() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        let bytes = data.len() as u64;
        if bytes > MAX_ENTRY_BYTES {
            return Err(ProposeError::Refused(format!(
                "a batch of {bytes} bytes is larger than one Raft entry may be ({MAX_ENTRY_BYTES})"
            )));
        }
        // A batch larger than the bound on its own (one persistent message near
        // `max_message_bytes`) is taken when nothing else is uncommitted, as raft-rs takes
        // any proposal then: refusing it would refuse it for ever.
        if self.in_flight.len() >= MAX_PROPOSALS_IN_FLIGHT
            || (self.uncommitted_bytes > 0
                && self.uncommitted_bytes.saturating_add(bytes) > MAX_UNCOMMITTED_BYTES)
        {
            return Err(ProposeError::Busy);
        }
        let before = self.node.raft.raft_log.last_index();
        let proposed = self.node.propose(vec![], data);
        self.track(proposed, before, proposal, bytes)
    }

    /// Records a proposal raft-rs took (`proposed`) as the one entry after `before`, in
    /// flight until it is committed; or maps raft-rs's refusal.
    pub(super) fn track(
        &mut self,
        proposed: raft::Result<()>,
        before: u64,
        proposal: u64,
        bytes: u64,
    ) -> Result<(), ProposeError> {
        match proposed {
            Ok(()) => {}
            Err(raft::Error::ProposalDropped) => return Err(ProposeError::Busy),
            Err(_) => {
                return Err(ProposeError::NotLeader {
                    leader: self.leader(),
                });
            }
        }
        let index = self.node.raft.raft_log.last_index();
        assert_eq!(index, before + 1, "a proposal is one entry");
        self.in_flight.insert(
            index,
            InFlight {
                term: self.node.raft.term,
                proposal,
                bytes,
            },
        );
        self.uncommitted_bytes += bytes;
        Ok(())
    }

    /// The store holds every entry through `index` durably (the driver synced it): the
    /// log may drop them.
    pub fn store_synced(&mut self, index: u64) {
        if index > self.store_synced {
            self.store_synced = index;
            self.compact_due = true;
        }
    }

    /// The driver sent (`sent`) or failed to send the snapshot of an
    /// [`Output::SendSnapshot`] to `to`. Either way the leader probes that member again;
    /// after a failure it sends another snapshot when still needed.
    pub fn snapshot_sent(&mut self, to: NodeId, sent: bool) {
        let status = if sent {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
    }

    /// The log's first index (entries before it were compacted away).
    pub fn first_index(&self) -> u64 {
        self.node.store().first()
    }

    /// Collects what the driver must do now.
    pub fn poll(&mut self, out: &mut Vec<Output>) {
        out.extend(self.outbox.drain(..).map(Output::Send));
        self.check_leadership(out);
        self.maybe_promote();
        self.maybe_compact(out);
        if !self.node.has_ready() {
            return;
        }
        let mut ready = self.node.ready();
        let (snapshot, snapshot_conf) = {
            let meta = ready.snapshot().get_metadata();
            (
                (meta.index != 0).then_some((meta.index, meta.term)),
                meta.get_conf_state().clone(),
            )
        };
        out.extend(ready.take_messages().into_iter().map(outgoing));
        let committed = ready.take_committed_entries();
        assert!(
            snapshot.is_none() || committed.is_empty(),
            "a ready with a snapshot commits no entries"
        );
        self.apply(committed, out);
        let entries = ready.take_entries();
        let hard_state = ready.hs().cloned();
        let after = ready.take_persisted_messages();
        let number = ready.number();
        let mut writes = entries
            .first()
            .zip(entries.last())
            .map(|(f, l)| (f.index, l.index));
        if let Some((index, _)) = snapshot {
            writes = Some((1, writes.map_or(index, |(_, last)| last.max(index))));
        }
        // raft-rs reads its log from the storage as soon as the ready is advanced: the
        // in-memory view takes the entries now, and `persisted` reports when they are
        // durable (raft-rs counts votes and acknowledges appends only from then on).
        {
            let log = self.node.mut_store();
            if let Some(point) = snapshot {
                log.install(point, snapshot_conf);
            }
            log.append(&entries);
            if let Some(hs) = &hard_state {
                log.set_hard_state(hs.clone());
            }
        }
        self.node.advance_append_async(ready);
        if snapshot.is_none() && entries.is_empty() && hard_state.is_none() {
            match self.pending.back_mut() {
                // Nothing to make durable: done when what is before it is, without a sync
                // of its own.
                Some(last) => {
                    last.ready = number;
                    last.after.extend(after);
                }
                None => {
                    out.extend(after.into_iter().map(outgoing));
                    self.node.on_persist_ready(number);
                }
            }
        } else {
            out.push(Output::Persist {
                number,
                snapshot,
                entries,
                hard_state,
            });
            self.pending.push_back(PendingPersist {
                number,
                ready: number,
                writes,
                snapshot,
                after,
            });
        }
        self.check_leadership(out);
    }

    /// The driver made persist `number` (and every one before it) durable.
    ///
    /// raft-rs hears of it (and its held messages go out) once no persist still to come
    /// rewrites what it wrote. raft-rs checks a reported entry only by its index and term
    /// against the log in memory, which already holds the later persists: after a suffix
    /// is replaced and then written back as it was, an earlier persist would pass for the
    /// log's current state while the disk, which may yet complete the replacing persist
    /// and crash before the one writing it back, does not hold it.
    pub fn persisted(&mut self, number: u64, out: &mut Vec<Output>) {
        self.durable = self.durable.max(number);
        let rewritten_from = self
            .pending
            .iter()
            .filter(|p| p.number > self.durable)
            .filter_map(|p| p.writes.map(|(first, _)| first))
            .min();
        let mut done = None;
        let mut installed = None;
        while let Some(p) = self.pending.front() {
            let rewritten =
                matches!((p.writes, rewritten_from), (Some((_, last)), Some(from)) if last >= from);
            if p.number > self.durable || rewritten {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            out.extend(p.after.into_iter().map(outgoing));
            done = Some(p.ready);
            installed = p.snapshot.or(installed);
        }
        if let Some(n) = done {
            self.node.on_persist_ready(n);
        }
        // The store holds the snapshot durably (the driver installed it before the log):
        // it is applied.
        if let Some(point) = installed {
            self.node.advance_apply_to(point.0);
            self.node.mut_store().set_applied(point);
            self.store_synced(point.0);
        }
        self.poll(out);
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Vec<Output>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            let change = match e.get_entry_type() {
                EntryType::EntryNormal => None,
                EntryType::EntryConfChange => self.apply_change(&e),
                // Never proposed by a member: changes nothing.
                EntryType::EntryConfChangeV2 => None,
            };
            let data = if e.get_entry_type() == EntryType::EntryNormal {
                e.data.to_vec()
            } else {
                Vec::new()
            };
            let proposal = match self.in_flight.remove(&e.index) {
                Some(f) => {
                    self.uncommitted_bytes -= f.bytes;
                    // An entry of another term at the index is another leader's: this
                    // proposal was overwritten, and is not confirmed.
                    (f.term == e.term).then_some(f.proposal)
                }
                None => None,
            };
            batch.push(Committed {
                index: e.index,
                term: e.term,
                data,
                proposal,
                change,
            });
        }
        self.node.advance_apply_to(last);
        if let Some(c) = batch.last() {
            self.node.mut_store().set_applied((c.index, c.term));
        }
        out.push(Output::Apply(batch));
    }

    /// Drops the entries the store holds durably from the log, except those a member may
    /// still need, within [`ReplicaConfig::retain_entries`] and
    /// [`ReplicaConfig::retain_bytes`]. Compacts in steps of a quarter of what it keeps, so
    /// as not to rewrite the log for every entry.
    fn maybe_compact(&mut self, out: &mut Vec<Output>) {
        if !self.compact_due {
            return;
        }
        self.compact_due = false;
        let log = self.node.store();
        let upper = self.store_synced.min(log.applied().0);
        let first = log.first();
        if upper < first {
            return;
        }
        // A leader keeps what the member furthest behind has yet to receive; another
        // member keeps a tail, for the members behind should it lead.
        let keep_from = if self.node.raft.state == StateRole::Leader {
            self.node
                .raft
                .prs()
                .iter()
                .map(|(_, p)| p.matched)
                .min()
                .unwrap_or(upper)
        } else {
            upper.saturating_sub(self.retain_entries)
        };
        let mut through = upper
            .min(keep_from)
            .max(upper.saturating_sub(self.retain_entries));
        let mut bytes = 0u64;
        for e in log.entries().rev().skip_while(|e| e.index > upper) {
            if e.index <= through {
                break;
            }
            bytes += e.data.len() as u64 + ENTRY_OVERHEAD;
            if bytes > self.retain_bytes {
                through = e.index;
                break;
            }
        }
        let step = (self.retain_entries / 4).max(1);
        if through < first || through + 1 - first < step {
            return;
        }
        let term = self.node.mut_store().compact(through);
        out.push(Output::Compact { through, term });
    }

    /// Reports the end of this node's leadership, with what it had not seen committed.
    fn check_leadership(&mut self, out: &mut Vec<Output>) {
        let leads = self.node.raft.state == StateRole::Leader;
        let term = self.node.raft.term;
        match self.leading {
            Some(t) if !leads || t != term => {
                // A proposal the commit index covers, with the term it was proposed in at
                // its index, is committed (it may have become so in the very step that
                // deposed this node): it stays, to be confirmed when applied.
                let log = &self.node.raft.raft_log;
                let committed = log.committed;
                let (known, uncertain): (BTreeMap<u64, InFlight>, BTreeMap<u64, InFlight>) =
                    std::mem::take(&mut self.in_flight)
                        .into_iter()
                        .partition(|(index, f)| {
                            *index <= committed && log.term(*index).ok() == Some(f.term)
                        });
                self.uncommitted_bytes = known.values().map(|f| f.bytes).sum();
                self.in_flight = known;
                let uncertain = uncertain.into_values().map(|f| f.proposal).collect();
                out.push(Output::Deposed { term: t, uncertain });
                self.leading = leads.then_some(term);
            }
            None if leads => self.leading = Some(term),
            _ => {}
        }
    }
}

/// A message for the driver to send: a snapshot is the store, which the driver sends.
fn outgoing(m: Message) -> Output {
    if m.get_msg_type() == MessageType::MsgSnapshot {
        Output::SendSnapshot(m)
    } else {
        Output::Send(m)
    }
}

/// The point a log must be replaced by before a restart, when the store holds a snapshot
/// the log did not record: the node crashed after installing the leader's snapshot in its
/// store and before replacing its log. The store's point is committed (a leader sends
/// only what its store applied), so the log's entries up to it are not needed, and those
/// that disagree with it were never committed. A store whose point the log contradicts
/// within its commit index is not reconciled: [`Replica::start`] refuses it.
pub fn snapshot_to_restore(log: &LogState, applied: u64, applied_term: u64) -> Option<Point> {
    if applied <= log.compacted.0 {
        return None;
    }
    match log.term(applied) {
        Some(t) if t == applied_term => None,
        Some(_) if applied <= log.hard_state.commit => None,
        _ => Some((applied, applied_term)),
    }
}

/// Checks a log against the last entry the store applied, before a restart.
fn check_log(log: &LogState, applied: u64, applied_term: u64) -> Result<(), StartError> {
    let start = log.compacted.0 + 1;
    if let Some((position, e)) = log
        .entries
        .iter()
        .enumerate()
        .find(|(position, e)| e.index != start + *position as u64)
    {
        return Err(StartError(format!(
            "the log holds index {} at position {}: it must run from index {start} without a \
             gap",
            e.index,
            position + 1
        )));
    }
    let last = log.last_index();
    if applied > last {
        return Err(StartError(format!(
            "the store applied index {applied}, past the log's last index {last}"
        )));
    }
    if applied < log.compacted.0 {
        return Err(StartError(format!(
            "the store applied index {applied}, but the log was compacted through index {}: \
             the store lost what the log dropped",
            log.compacted.0
        )));
    }
    if applied > 0 {
        let logged = log.term(applied).unwrap_or(0);
        if logged != applied_term {
            return Err(StartError(format!(
                "the store applied index {applied} of term {applied_term}, but the log holds \
                 term {logged} there"
            )));
        }
    }
    let commit = log.hard_state.commit;
    if commit > last {
        return Err(StartError(format!(
            "the hard state commits index {commit}, past the log's last index {last}: the \
             log lost committed entries"
        )));
    }
    Ok(())
}

/// The entries of a committed log that carry batches (not a new leader's empty entry).
pub fn is_batch(entry: &Committed) -> bool {
    !entry.data.is_empty()
}

pub mod disk;
pub mod latency;
mod log_store;
#[cfg(not(madsim))]
pub mod member;
mod membership;
pub mod settings;
pub mod status;
#[cfg(not(madsim))]
pub mod transport;

#[cfg(test)]
mod tests;
