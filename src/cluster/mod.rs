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
//! not yet committed, and a message carries at most [`MAX_MESSAGE_BYTES`] of entries and
//! [`MAX_INFLIGHT_MESSAGES`] appends are in flight per follower.

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::prelude::Message;
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

/// raft-rs's message, entry and hard-state types, for drivers.
pub mod raftpb {
    pub use raft::eraftpb::{Entry, HardState, Message, MessageType};
}

/// A node's id in its cluster (never 0).
pub type NodeId = u64;

/// Bytes of proposed batches not yet committed past which a leader refuses proposals.
pub const MAX_UNCOMMITTED_BYTES: u64 = 64 << 20;
/// Most bytes of entries in one append message.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 20;
/// Most append messages in flight to one follower.
pub const MAX_INFLIGHT_MESSAGES: usize = 256;
/// Most proposals a leader tracks until they commit (each is a store batch, which already
/// carries many messages).
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 65_536;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This node.
    pub id: NodeId,
    /// Every voting member, this node included.
    pub members: Vec<NodeId>,
    /// The least ticks without a leader's heartbeat before this node campaigns; each
    /// election timeout is drawn between this and twice this. Leader leases (check-quorum)
    /// last this long.
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
}

/// What a node holds durably in its Raft log: what a restart starts from.
#[derive(Debug, Clone, Default)]
pub struct LogState {
    /// Term, vote and commit index, as last persisted.
    pub hard_state: HardState,
    /// The persisted entries, in index order, from index 1.
    pub entries: Vec<Entry>,
}

impl LogState {
    /// Applies a completed [`Output::Persist`]: entries from the first one's index replace
    /// what the log held from there on.
    pub fn persist(&mut self, entries: &[Entry], hard_state: Option<&HardState>) {
        if let Some(first) = entries.first() {
            let keep = usize::try_from(first.index.saturating_sub(1)).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
            assert_eq!(
                self.entries.len() as u64 + 1,
                first.index,
                "a persisted batch of entries must follow the log without a gap"
            );
            self.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
    }

    /// The last index held.
    pub fn last_index(&self) -> u64 {
        self.entries.last().map_or(0, |e| e.index)
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
    /// The batch (empty for the entry a new leader appends to commit its term).
    pub data: Vec<u8>,
    /// The proposal id, when this node proposed it while leader.
    pub proposal: Option<u64>,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Write these entries (replacing the log from the first one's index on) and this hard
    /// state, sync, then call [`Replica::persisted`] with `number`.
    Persist {
        /// Completion order: persists complete in increasing numbers.
        number: u64,
        /// Entries to write.
        entries: Vec<Entry>,
        /// The new hard state, when it changed.
        hard_state: Option<HardState>,
    },
    /// Send this message to `message.to`.
    Send(Message),
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
    /// The indexes it writes, first and last, when it writes entries.
    writes: Option<(u64, u64)>,
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
    node: RawNode<MemStorage>,
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
    /// are of different histories, or the log lost what the store applied), and a hard
    /// state committing past the log's end (the log lost committed entries).
    pub fn start(
        cfg: &ReplicaConfig,
        log: &LogState,
        applied: u64,
        applied_term: u64,
    ) -> Result<Self, StartError> {
        if cfg.id == 0 || !cfg.members.contains(&cfg.id) {
            return Err(StartError(format!(
                "node id {} is not one of the members {:?}",
                cfg.id, cfg.members
            )));
        }
        check_log(log, applied, applied_term)?;
        let storage =
            MemStorage::new_with_conf_state(ConfState::from((cfg.members.clone(), vec![])));
        {
            let mut core = storage.wl();
            core.append(&log.entries)
                .map_err(|e| StartError(format!("the log does not load: {e}")))?;
            let mut hs = log.hard_state.clone();
            // What the store applied was committed, even when the commit index persisted
            // with the hard state is older.
            hs.commit = hs.commit.max(applied);
            core.set_hardstate(hs);
        }
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

    /// Advances the logical clock by one tick (the driver ticks every few milliseconds).
    pub fn tick(&mut self) {
        self.node.tick();
        self.draw_election_timeout();
    }

    /// Takes a message from a peer. Messages from other terms or non-members are raft-rs's
    /// to ignore; what it refuses is dropped, as a lost message would be.
    pub fn step(&mut self, message: Message) {
        // A proposal from a peer would be one forwarded by a follower: warren's followers
        // run no broker, and forward clients rather than proposals.
        if message.get_msg_type() == raft::prelude::MessageType::MsgPropose {
            return;
        }
        let _ = self.node.step(message);
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
        if self.in_flight.len() >= MAX_PROPOSALS_IN_FLIGHT
            || self.uncommitted_bytes.saturating_add(bytes) > MAX_UNCOMMITTED_BYTES
        {
            return Err(ProposeError::Busy);
        }
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose(vec![], data) {
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

    /// Collects what the driver must do now.
    pub fn poll(&mut self, out: &mut Vec<Output>) {
        self.check_leadership(out);
        if !self.node.has_ready() {
            return;
        }
        let mut ready = self.node.ready();
        assert!(
            ready.snapshot().data.is_empty() && ready.snapshot().get_metadata().index == 0,
            "the log is never compacted, so no snapshot is ever sent"
        );
        out.extend(ready.take_messages().into_iter().map(Output::Send));
        let committed = ready.take_committed_entries();
        self.apply(committed, out);
        let entries = ready.take_entries();
        let hard_state = ready.hs().cloned();
        let after = ready.take_persisted_messages();
        let number = ready.number();
        let writes = entries
            .first()
            .zip(entries.last())
            .map(|(f, l)| (f.index, l.index));
        // raft-rs reads its log from the storage as soon as the ready is advanced: the
        // in-memory view takes the entries now, and `persisted` reports when they are
        // durable (raft-rs counts votes and acknowledges appends only from then on).
        {
            let mut core = self.node.mut_store().wl();
            if !entries.is_empty() {
                core.append(&entries)
                    .expect("a ready's entries follow the log it was made from");
            }
            if let Some(hs) = &hard_state {
                core.set_hardstate(hs.clone());
            }
        }
        self.node.advance_append_async(ready);
        if entries.is_empty() && hard_state.is_none() {
            match self.pending.back_mut() {
                // Nothing to make durable: done when what is before it is, without a sync
                // of its own.
                Some(last) => {
                    last.ready = number;
                    last.after.extend(after);
                }
                None => {
                    out.extend(after.into_iter().map(Output::Send));
                    self.node.on_persist_ready(number);
                }
            }
        } else {
            out.push(Output::Persist {
                number,
                entries,
                hard_state,
            });
            self.pending.push_back(PendingPersist {
                number,
                ready: number,
                writes,
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
        while let Some(p) = self.pending.front() {
            let rewritten =
                matches!((p.writes, rewritten_from), (Some((_, last)), Some(from)) if last >= from);
            if p.number > self.durable || rewritten {
                break;
            }
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            out.extend(p.after.into_iter().map(Output::Send));
            done = Some(p.ready);
        }
        if let Some(n) = done {
            self.node.on_persist_ready(n);
        }
        self.poll(out);
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Vec<Output>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let mut batch = Vec::with_capacity(entries.len());
        for e in entries {
            assert_eq!(
                e.get_entry_type(),
                EntryType::EntryNormal,
                "membership changes are not proposed"
            );
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
                data: e.data.to_vec(),
                proposal,
            });
        }
        self.node.advance_apply_to(last);
        out.push(Output::Apply(batch));
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

/// Checks a log against the last entry the store applied, before a restart.
fn check_log(log: &LogState, applied: u64, applied_term: u64) -> Result<(), StartError> {
    if let Some((position, e)) = log
        .entries
        .iter()
        .enumerate()
        .find(|(position, e)| e.index != *position as u64 + 1)
    {
        return Err(StartError(format!(
            "the log holds index {} at position {}: it must run from index 1 without a gap",
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
    if applied > 0 {
        let logged = log.entries[(applied - 1) as usize].term;
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
#[cfg(not(madsim))]
pub mod member;
pub mod settings;
pub mod status;
#[cfg(not(madsim))]
pub mod transport;

#[cfg(test)]
mod tests;
