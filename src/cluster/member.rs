//! A cluster member's Raft thread (the driver of one [`Replica`]) and the store the
//! leader's broker writes through it ([`ReplicatedStore`]).
//!
//! The thread owns the Raft log ([`FjallLog`]) and this node's broker store
//! ([`FjallStore`]). It ticks the replica, steps it with the other members' messages,
//! makes each persist durable before reporting it, hands messages to the transport, and
//! applies every committed entry's batch to the store, recording the entry's index and
//! term with it ([`FjallStore::write_applied`]). Leader or follower, the store is written
//! only by committed entries, in log order, so every member's store is a valid warren
//! store holding exactly the committed log's prefix.
//!
//! The leader's broker runs on a [`ReplicatedStore`]: its writes become one Raft entry
//! per group commit, and a sync returns once that entry is committed by a majority and
//! applied here. A sync that fails (leadership lost, or the proposal not taken in time)
//! leaves the batches in doubt; the broker above is then stopped and started again from
//! the store, as after a restart.
//!
//! Once the store is synced, the log drops what it holds (keeping a tail for members a
//! little behind). A member further behind is sent the store itself: a thread walks a
//! consistent read snapshot of it and sends it in chunks ([`transfer`]) on the member's
//! Raft connection, ahead of the snapshot message; the member stages the chunks in a
//! database of their own (`raft-snapshot` in the data directory) and hands the message to
//! Raft only once every chunk is staged and synced. When Raft takes it, the staged store
//! replaces this node's store (crash-safely, see [`FjallStore::install_snapshot`]), and
//! then the log is replaced by the snapshot's point.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use super::disk::FjallLog;
use super::latency::{CommitLatency, LatencyMeter};
use super::raftpb::{HardState, Message, MessageType};
use super::settings::{MemberAddress, Membership};
use super::status::Status;
use super::{
    BOOTSTRAP, Change, LogState, NodeId, Output, Point, ProposeError, Replica, ReplicaConfig, Role,
    conf_state, snapshot_to_restore,
};
use crate::store::disk::snapshot::{SnapshotSink, SnapshotSource};
use crate::store::disk::{FjallStore, decode_batch, encode_batch};
use crate::store::{HeadLimit, LoadedEntry, Recovered, Store, StoreError, StoreOp};

mod snapshots;
mod transfer;

/// One tick of the Raft clock.
pub const TICK: Duration = Duration::from_millis(50);
/// Ticks between a leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// Fewest ticks without a heartbeat before a follower campaigns (a node picks its own
/// between this and twice this, at random).
pub const ELECTION_TICKS: usize = 10;
/// Most inputs waiting for the Raft thread; peer messages past it are dropped.
pub const INBOX: usize = 8192;
/// How often the store's applied writes are synced (the log holds them meanwhile).
const STORE_SYNC: Duration = Duration::from_secs(1);
/// Inputs taken per round before the replica is polled.
const INPUTS_PER_ROUND: usize = 1024;
/// How long a proposal may wait for room (the replica refuses while too much is
/// uncommitted) before the sync fails.
const PROPOSE_PATIENCE: Duration = Duration::from_secs(10);
/// The staging database of a snapshot being received, in the data directory.
pub const SNAPSHOT_DIR: &str = "raft-snapshot";

/// Why a proposal was not committed.
#[derive(Debug)]
pub enum ProposeFailure {
    /// Too much in flight: propose again shortly.
    Busy,
    /// This node does not lead, or stopped leading before the entry was seen committed
    /// (it may still commit under the next leader).
    Lost(String),
}

/// Work for the Raft thread.
#[derive(Debug)]
pub enum MemberIn {
    /// A message from a peer.
    Peer(Message),
    /// Propose a batch; the reply comes once it is committed and applied, or failed.
    Propose {
        /// The encoded batch ([`encode_batch`]).
        data: Vec<u8>,
        /// Where the outcome goes.
        reply: SyncSender<Result<(), ProposeFailure>>,
    },
    /// Read a queue's entries from the store.
    Load {
        /// Queue incarnation.
        queue: u64,
        /// First position.
        from_seq: u64,
        /// Most entries.
        max: usize,
        /// Most bytes.
        max_bytes: u64,
        /// Where the entries go.
        reply: SyncSender<Result<Vec<LoadedEntry>, StoreError>>,
    },
    /// Stop the thread (after syncing the store).
    Stop,
    /// Read back the store for a new broker.
    Recover {
        /// Each queue's head.
        head_limit: HeadLimit,
        /// Where the state goes.
        reply: SyncSender<Result<Recovered, StoreError>>,
    },
    /// Change the cluster's members (on the leader); the reply comes once the change is
    /// committed and applied here, or failed.
    Change {
        /// The change.
        change: Change,
        /// Where the outcome goes.
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// A snapshot transfer to a member ended: every chunk and the message were queued
    /// (`sent`), or it gave up.
    SnapshotSent {
        /// The member.
        to: NodeId,
        /// Whether it was all queued.
        sent: bool,
    },
}

/// The handle on a running Raft thread.
#[derive(Debug)]
pub struct Member {
    /// Inputs for the thread.
    pub inbox: SyncSender<MemberIn>,
    /// The member's status.
    pub status: watch::Receiver<Status>,
    /// The thread; it ends on [`MemberIn::Stop`].
    pub thread: std::thread::JoinHandle<()>,
}

/// The thread's state.
struct Driver {
    replica: Replica,
    log: FjallLog,
    store: FjallStore,
    /// Where a snapshot being received is staged.
    staging: PathBuf,
    /// The snapshot being received.
    incoming: Option<transfer::Incoming>,
    /// The point of a snapshot received whole, staged and handed to Raft.
    staged: Option<Point>,
    /// Members a snapshot is being sent to, each with the flag that stops its transfer
    /// (raised when this node stops leading).
    sending: HashMap<NodeId, Arc<AtomicBool>>,
    snapshots_sent: u64,
    snapshots_installed: u64,
    /// Where transfer threads report.
    inbox: SyncSender<MemberIn>,
    /// Bytes of snapshot messages in the inbox ([`PeerInbox`]).
    snapshot_backlog: Arc<AtomicUsize>,
    /// The members as of the last entry applied, with their addresses.
    membership: Membership,
    /// The members of a cluster started before its stores recorded them (their config's).
    bootstrap: Membership,
    /// The configured members, to reach until this node knows the cluster's own list (a
    /// node waiting to join answers the leader at its configured address).
    contacts: Vec<MemberAddress>,
    /// Starts the writer of messages to a member's Raft address.
    dial: Dialer,
    /// A writer per member messages were sent to, with the address it writes to.
    peers: HashMap<NodeId, (SocketAddr, mpsc::Sender<Message>)>,
    /// Proposals waiting to be applied: when each was proposed, and whom to tell.
    waiting: HashMap<u64, (Instant, SyncSender<Result<(), ProposeFailure>>)>,
    /// Membership changes waiting to be applied, and whom to tell.
    changes: HashMap<u64, tokio::sync::oneshot::Sender<Result<(), String>>>,
    latency: LatencyMeter,
    next_proposal: u64,
    applied: u64,
    applied_term: u64,
    unsynced_store: bool,
    status: watch::Sender<Status>,
}

/// Starts the writer of Raft messages to an address (the transport's `dial`).
pub type Dialer = Box<dyn Fn(SocketAddr) -> mpsc::Sender<Message> + Send>;

/// Who the members are when a node starts.
pub struct Members {
    /// The configured members (this node included): a new cluster's first members, and
    /// whom a node waiting to join answers.
    pub configured: Vec<MemberAddress>,
    /// This node waits to be added to a running cluster rather than start one.
    pub join: bool,
    /// Starts a writer to a member.
    pub dial: Dialer,
}

/// Starts the Raft thread. `inbox` is the transport's side of the thread's channel (the
/// broker's store gets a sender from [`Member`]) and its receiving end; `members` says who
/// the members are (the store's record wins once it has one); `staging` is where
/// snapshots are received ([`SNAPSHOT_DIR`] in the data directory). `cfg`'s members are
/// set here, from the store.
///
/// A new cluster's member (an empty store and log, not joining) starts its store and log
/// at [`BOOTSTRAP`], the store recording the configured members there.
pub fn start(
    cfg: &ReplicaConfig,
    mut log: FjallLog,
    state: &LogState,
    mut store: FjallStore,
    staging: PathBuf,
    inbox: (&PeerInbox, Receiver<MemberIn>),
    members: Members,
) -> Result<Member, String> {
    let bootstrap = Membership::bootstrap(&members.configured);
    let fresh = state.compacted == (0, 0)
        && state.entries.is_empty()
        && state.hard_state == HardState::default();
    let mut state = state.clone();
    if fresh && !members.join && store.applied().map_err(|e| e.to_string())? == (0, 0) {
        let record = bootstrap.encode();
        store
            .write_applied(&[], BOOTSTRAP.0, BOOTSTRAP.1, Some(&record))
            .map_err(|e| e.to_string())?;
        store.sync_all().map_err(|e| e.to_string())?;
        state.install(BOOTSTRAP);
        state.hard_state.term = BOOTSTRAP.1;
        log.persist(Some(BOOTSTRAP), &[], Some(&state.hard_state))
            .map_err(|e| e.to_string())?;
        tracing::info!(members = ?bootstrap.voters, "started a new cluster");
    }
    // A snapshot being installed when the node stopped is installed again.
    if let Some(point) = store.resume_install(&staging).map_err(|e| e.to_string())? {
        tracing::warn!(
            index = point.0,
            term = point.1,
            "finished installing a snapshot"
        );
    }
    // What the store applied before a stop may sit in the page cache only; the replica
    // takes it as durable (the log may drop it), so it is made so.
    store.sync_all().map_err(|e| e.to_string())?;
    let (applied, applied_term) = store.applied().map_err(|e| e.to_string())?;
    // The members as of what the store applied: its record; a store older than records
    // was started with the configured members; a node waiting to join knows none yet.
    let membership = match store.members().map_err(|e| e.to_string())? {
        Some(bytes) => Membership::decode(&bytes)?,
        None if members.join && applied == 0 => Membership::default(),
        None => bootstrap.clone(),
    };
    let mut cfg = cfg.clone();
    cfg.members = membership.voters.clone();
    cfg.learners = membership.learners.clone();
    // A store installed from a snapshot that the log did not record yet.
    if let Some(point) = snapshot_to_restore(&state, applied, applied_term) {
        tracing::warn!(
            index = point.0,
            term = point.1,
            "the store holds a snapshot the Raft log does not: the log starts after it"
        );
        state.install(point);
        log.persist(Some(point), &[], Some(&state.hard_state))
            .map_err(|e| e.to_string())?;
    }
    // The replica refuses a log that does not hold the entry the store applied last.
    let replica = Replica::start(&cfg, &state, applied, applied_term).map_err(|e| e.to_string())?;
    let status = Status {
        id: cfg.id,
        role: replica.role(),
        term: replica.term(),
        leader: replica.leader(),
        commit: replica.commit_index(),
        applied,
        last_index: replica.last_index(),
        first_index: replica.first_index(),
        snapshots_sent: 0,
        snapshots_installed: 0,
        progress: Vec::new(),
        active: Vec::new(),
        ready: false,
        commit_latency: CommitLatency::default(),
        membership: membership.clone(),
        failed: None,
    };
    let (status_tx, status_rx) = watch::channel(status);
    let contacts = members
        .configured
        .into_iter()
        .filter(|m| m.id != cfg.id)
        .collect();
    let (tx, snapshot_backlog, rx) = (inbox.0.tx.clone(), inbox.0.counter(), inbox.1);
    let mut driver = Driver {
        replica,
        log,
        store,
        staging,
        incoming: None,
        staged: None,
        sending: HashMap::new(),
        snapshots_sent: 0,
        snapshots_installed: 0,
        inbox: tx.clone(),
        snapshot_backlog,
        membership,
        bootstrap,
        contacts,
        dial: members.dial,
        peers: HashMap::new(),
        waiting: HashMap::new(),
        changes: HashMap::new(),
        latency: LatencyMeter::new(Instant::now()),
        next_proposal: 0,
        applied,
        applied_term,
        unsynced_store: false,
        status: status_tx,
    };
    let thread = std::thread::Builder::new()
        .name("warren-raft".into())
        .spawn(move || {
            let result = driver.run(&rx);
            if let Err(e) = &result {
                tracing::error!(error = %e, "the Raft thread stopped");
            }
            driver.finish(result.err());
        })
        .map_err(|e| format!("cannot start the Raft thread: {e}"))?;
    Ok(Member {
        inbox: tx,
        status: status_rx,
        thread,
    })
}

impl Driver {
    fn run(&mut self, inbox: &Receiver<MemberIn>) -> Result<(), String> {
        let mut next_tick = Instant::now() + TICK;
        let mut next_sync = Instant::now() + STORE_SYNC;
        let mut out = Vec::new();
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.replica.tick();
                next_tick = (next_tick + TICK).max(now);
            }
            if now >= next_sync {
                if self.unsynced_store {
                    self.store.sync().map_err(|e| e.to_string())?;
                    // Durable whatever the sync policy, since the log then drops it.
                    self.store.sync_all().map_err(|e| e.to_string())?;
                    self.unsynced_store = false;
                    // The log may drop what the store now holds durably.
                    self.replica.store_synced(self.applied);
                }
                next_sync = now + STORE_SYNC;
            }
            match inbox.recv_timeout(next_tick.saturating_duration_since(now)) {
                Ok(input) => {
                    if !self.take(input)? {
                        return Ok(());
                    }
                    for _ in 1..INPUTS_PER_ROUND {
                        match inbox.try_recv() {
                            Ok(input) => {
                                if !self.take(input)? {
                                    return Ok(());
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            self.drive(&mut out)?;
            self.publish();
        }
    }

    /// Polls the replica and carries out what it asks, until it asks nothing more.
    fn drive(&mut self, out: &mut Vec<Output>) -> Result<(), String> {
        self.replica.poll(out);
        while !out.is_empty() {
            let mut more = Vec::new();
            for o in out.drain(..) {
                self.carry_out(o, &mut more)?;
            }
            *out = more;
        }
        Ok(())
    }

    /// Takes one input; false for [`MemberIn::Stop`].
    fn take(&mut self, input: MemberIn) -> Result<bool, String> {
        match input {
            MemberIn::Stop => return Ok(false),
            MemberIn::Peer(m) if m.get_msg_type() == MessageType::MsgSnapshot => {
                let bytes = snapshot_bytes(&m);
                let before = self.snapshot_backlog.fetch_sub(bytes, Relaxed);
                debug_assert!(before >= bytes, "snapshot backlog counted");
                self.receive_snapshot(m)?;
            }
            MemberIn::Peer(m) => {
                self.replica.step(m);
                if let Some((by, index)) = self.replica.removal_notice() {
                    return Err(self.stop_removed(by, index));
                }
            }
            MemberIn::SnapshotSent { to, sent } => {
                self.sending.remove(&to);
                if sent {
                    self.snapshots_sent += 1;
                }
                self.replica.snapshot_sent(to, sent);
            }
            MemberIn::Propose { data, reply } => {
                let id = self.next_proposal;
                self.next_proposal += 1;
                match self.replica.propose(id, data) {
                    Ok(()) => {
                        self.waiting.insert(id, (Instant::now(), reply));
                    }
                    Err(ProposeError::Busy) => {
                        let _ = reply.send(Err(ProposeFailure::Busy));
                    }
                    // Too large ever to be taken: waiting would not help.
                    Err(ProposeError::Refused(why)) => {
                        let _ = reply.send(Err(ProposeFailure::Lost(why)));
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        let _ = reply.send(Err(ProposeFailure::Lost(format!(
                            "this node is not the leader (the leader is {leader:?})"
                        ))));
                    }
                }
            }
            MemberIn::Change { change, reply } => {
                let clash = match &change {
                    Change::AddLearner(new) => self
                        .membership
                        .members
                        .iter()
                        .find(|m| m.id != new.id && (m.raft == new.raft || m.amqp == new.amqp)),
                    _ => None,
                };
                if let Some(m) = clash {
                    let _ = reply.send(Err(format!(
                        "node {} already has the address {} or {}",
                        m.id, m.raft, m.amqp
                    )));
                    return Ok(true);
                }
                let id = self.next_proposal;
                self.next_proposal += 1;
                match self.replica.propose_change(id, change) {
                    Ok(()) => {
                        self.changes.insert(id, reply);
                    }
                    Err(ProposeError::Refused(why)) => {
                        let _ = reply.send(Err(why));
                    }
                    Err(ProposeError::Busy) => {
                        let _ = reply.send(Err(
                            "too much is waiting to be committed; try again shortly".into(),
                        ));
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        let _ = reply.send(Err(format!(
                            "this node is not the leader (the leader is {leader:?})"
                        )));
                    }
                }
            }
            MemberIn::Load {
                queue,
                from_seq,
                max,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(self.store.load(queue, from_seq, max, max_bytes));
            }
            MemberIn::Recover { head_limit, reply } => {
                let _ = reply.send(self.store.recover(head_limit));
            }
        }
        Ok(true)
    }

    fn carry_out(&mut self, output: Output, more: &mut Vec<Output>) -> Result<(), String> {
        match output {
            Output::Persist {
                number,
                snapshot,
                entries,
                hard_state,
            } => {
                if let Some(point) = snapshot {
                    self.install(point)?;
                }
                self.log
                    .persist(snapshot, &entries, hard_state.as_ref())
                    .map_err(|e| e.to_string())?;
                self.replica.persisted(number, more);
            }
            Output::Compact { through, term } => {
                self.log.compact(through, term).map_err(|e| e.to_string())?;
            }
            Output::SendSnapshot(m) => self.send_snapshot(m),
            Output::Send(m) => {
                if let Some(peer) = self.peer(m.to) {
                    match peer.try_send(m) {
                        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err("the Raft transport stopped".into());
                        }
                    }
                }
            }
            Output::Apply(entries) => {
                for c in entries {
                    assert!(
                        c.index == self.applied + 1,
                        "entries are applied in order: {} after {}",
                        c.index,
                        self.applied
                    );
                    let ops = if c.data.is_empty() {
                        Vec::new()
                    } else {
                        decode_batch(&c.data).map_err(|e| {
                            format!("committed entry {} does not decode: {e}", c.index)
                        })?
                    };
                    let record = c.change.as_ref().map(|change| {
                        self.membership.apply(change);
                        self.membership.encode()
                    });
                    self.store
                        .write_applied(&ops, c.index, c.term, record.as_deref())
                        .map_err(|e| e.to_string())?;
                    self.unsynced_store = true;
                    self.applied = c.index;
                    self.applied_term = c.term;
                    if let Some((proposed, reply)) =
                        c.proposal.and_then(|p| self.waiting.remove(&p))
                    {
                        self.latency.record(proposed, Instant::now());
                        let _ = reply.send(Ok(()));
                    }
                    if let Some(change) = &c.change {
                        tracing::warn!(?change, voters = ?self.membership.voters, learners = ?self.membership.learners, "the cluster's members changed");
                        if matches!(change, Change::Remove(_)) {
                            self.forget_former_members();
                        }
                        if let Some(reply) = c.proposal.and_then(|p| self.changes.remove(&p)) {
                            let _ = reply.send(Ok(()));
                        }
                    }
                    // This entry removes this node: its membership record is written,
                    // and made durable before the node stops, so that it never restarts
                    // as a member.
                    let me = self.replica.id();
                    if matches!(&c.change, Some(Change::Remove(id)) if *id == me) {
                        self.store.sync_all().map_err(|e| e.to_string())?;
                        self.unsynced_store = false;
                        return Err(format!(
                            "node {} was removed from the cluster (forget_cluster_node): it stops; \
                             to join again, start it with an empty data directory and `join`",
                            self.replica.id()
                        ));
                    }
                }
            }
            Output::Deposed { term, uncertain } => {
                tracing::warn!(term, "this node stopped leading");
                for p in uncertain {
                    if let Some(reply) = self.changes.remove(&p) {
                        let _ = reply.send(Err(format!(
                            "leadership of term {term} was lost before the change was committed: \
                             it may or may not take effect"
                        )));
                    }
                    if let Some((_, reply)) = self.waiting.remove(&p) {
                        let _ = reply.send(Err(ProposeFailure::Lost(format!(
                            "leadership of term {term} was lost before the batch was committed"
                        ))));
                    }
                }
            }
        }
        Ok(())
    }

    /// A member told this node that the cluster removed it, a change this node never
    /// applied (it was down or cut off): as when it applies its own removal, its store
    /// records a membership without it, durably, so that it never restarts as a member,
    /// and it stops. The error says why.
    fn stop_removed(&mut self, by: NodeId, index: u64) -> String {
        let me = self.replica.id();
        self.membership.apply(&Change::Remove(me));
        let record = self.membership.encode();
        let written = self
            .store
            .write_applied(&[], self.applied, self.applied_term, Some(&record))
            .and_then(|()| self.store.sync_all());
        let why = format!(
            "node {me} was removed from the cluster (forget_cluster_node) while it was down or cut off: \
             node {by}, which applied the log through index {index}, says so; it stops; to \
             join again, start it with an empty data directory and `join`"
        );
        match written {
            Ok(()) => {
                self.unsynced_store = false;
                why
            }
            Err(e) => format!("{why} (its store could not record it: {e})"),
        }
    }

    /// The writer to a member, started when first needed: at the address the cluster's
    /// members record, or the configured one while this node knows no members (it waits
    /// to join). A member re-added at another address gets a new writer. A former member
    /// is written to only to be told it was removed ([`Replica::removal_notice`]).
    fn peer(&mut self, id: NodeId) -> Option<&mpsc::Sender<Message>> {
        let address = if self.membership.members.is_empty() {
            self.contacts.iter().find(|m| m.id == id)
        } else {
            self.membership
                .member(id)
                .or_else(|| self.membership.former(id))
        }?
        .raft;
        if self.peers.get(&id).is_none_or(|(at, _)| *at != address) {
            let writer = (self.dial)(address);
            self.peers.insert(id, (address, writer));
        }
        self.peers.get(&id).map(|(_, writer)| writer)
    }

    /// Drops the writers to nodes that are no longer members, and stops the snapshot
    /// transfers to them.
    fn forget_former_members(&mut self) {
        let membership = &self.membership;
        self.peers.retain(|id, _| membership.contains(*id));
        for (id, cancel) in &self.sending {
            if !membership.contains(*id) {
                cancel.store(true, Relaxed);
            }
        }
    }

    fn publish(&mut self) {
        let role = self.replica.role();
        let term = self.replica.term();
        if role != Role::Leader {
            // A transfer started as leader stops at its next chunk.
            for cancel in self.sending.values() {
                cancel.store(true, Relaxed);
            }
        }
        let commit = self.replica.commit_index();
        let status = Status {
            id: self.replica.id(),
            role,
            term,
            leader: self.replica.leader(),
            commit,
            applied: self.applied,
            last_index: self.replica.last_index(),
            first_index: self.replica.first_index(),
            snapshots_sent: self.snapshots_sent,
            snapshots_installed: self.snapshots_installed,
            progress: if role == Role::Leader {
                self.replica.progress()
            } else {
                Vec::new()
            },
            active: if role == Role::Leader {
                self.replica.recently_active()
            } else {
                Vec::new()
            },
            ready: self.replica.ready_to_serve(self.applied, self.applied_term),
            commit_latency: self.latency.summary(Instant::now()),
            membership: self.membership.clone(),
            failed: None,
        };
        let before = self.status.borrow().clone();
        if (before.role, before.term, before.leader) != (status.role, status.term, status.leader) {
            tracing::info!(role = ?status.role, term = status.term, leader = ?status.leader, commit = status.commit, last_index = status.last_index, "Raft role");
        }
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }

    /// Syncs what was applied and publishes the end.
    fn finish(&mut self, error: Option<String>) {
        for (_, reply) in self.changes.drain() {
            let _ = reply.send(Err("the Raft thread stopped".into()));
        }
        for (_, (_, reply)) in self.waiting.drain() {
            let _ = reply.send(Err(ProposeFailure::Lost("the Raft thread stopped".into())));
        }
        if self.unsynced_store
            && let Err(e) = self.store.sync_all()
        {
            tracing::warn!(error = %e, "cannot sync the store at stop");
        }
        self.status.send_modify(|s| {
            s.ready = false;
            s.failed = Some(error.unwrap_or_else(|| "stopped".into()));
        });
    }
}

/// The leader's broker store: batches go through the Raft log.
#[derive(Debug)]
pub struct ReplicatedStore {
    inbox: SyncSender<MemberIn>,
    pending: Vec<StoreOp>,
    /// Woken when a sync fails: the node stops this broker and starts another from the
    /// store.
    lost: Arc<Notify>,
}

impl ReplicatedStore {
    /// A store for a broker on the leader; `lost` is notified when a batch's fate is in
    /// doubt.
    pub fn new(inbox: SyncSender<MemberIn>, lost: Arc<Notify>) -> Self {
        ReplicatedStore {
            inbox,
            pending: Vec::new(),
            lost,
        }
    }

    fn ask<T>(&self, make: impl FnOnce(SyncSender<T>) -> MemberIn) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inbox
            .send(make(tx))
            .map_err(|_| StoreError::other("the Raft thread stopped"))?;
        rx.recv()
            .map_err(|_| StoreError::other("the Raft thread stopped"))
    }

    fn fail(&self, why: String) -> StoreError {
        self.lost.notify_one();
        StoreError::other(format!("replication failed: {why}"))
    }
}

impl Store for ReplicatedStore {
    fn recover(&mut self, head_limit: HeadLimit) -> Result<Recovered, StoreError> {
        self.ask(|reply| MemberIn::Recover { head_limit, reply })?
    }

    fn load(
        &mut self,
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        // What the broker wrote must be in the store before it is read back.
        self.sync()?;
        self.ask(|reply| MemberIn::Load {
            queue,
            from_seq,
            max,
            max_bytes,
            reply,
        })?
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.pending.extend_from_slice(ops);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = encode_batch(&self.pending);
        let deadline = Instant::now() + PROPOSE_PATIENCE;
        loop {
            let data = data.clone();
            match self.ask(|reply| MemberIn::Propose { data, reply }) {
                Ok(Ok(())) => {
                    self.pending.clear();
                    return Ok(());
                }
                Ok(Err(ProposeFailure::Busy)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(Err(ProposeFailure::Busy)) => {
                    return Err(self.fail("the cluster took no batch for 10 s".into()));
                }
                Ok(Err(ProposeFailure::Lost(why))) => return Err(self.fail(why)),
                Err(e) => return Err(self.fail(e.to_string())),
            }
        }
    }

    fn reopen(&mut self) -> Result<usize, StoreError> {
        // The batches in doubt may still commit under another leader: only a broker
        // started afresh from the store knows. This one is being replaced.
        self.lost.notify_one();
        Err(StoreError::other(
            "replication failed; the broker restarts from the store",
        ))
    }
}

/// Bytes of snapshot chunks waiting in the inbox at which the transport stops reading
/// from the peers ([`PeerInbox::backlogged`]): TCP then holds the leader's transfer back,
/// so a disk slower than the network does not fill memory with chunks.
pub const SNAPSHOT_BACKLOG_BYTES: usize = 32 * transfer::CHUNK_BYTES;

/// The Raft thread's inbox as the transport feeds it, counting the snapshot bytes in it.
#[derive(Debug, Clone)]
pub struct PeerInbox {
    tx: SyncSender<MemberIn>,
    snapshot_bytes: Arc<AtomicUsize>,
}

impl PeerInbox {
    /// Feeds `tx`, the inbox whose receiver goes to [`start`] with this.
    pub fn new(tx: SyncSender<MemberIn>) -> Self {
        PeerInbox {
            tx,
            snapshot_bytes: Arc::default(),
        }
    }

    /// What the Raft thread takes off the count as it takes snapshot messages.
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.snapshot_bytes.clone()
    }

    /// Hands a peer message to the thread without waiting: a full inbox drops it, as the
    /// network might.
    pub fn deliver(&self, message: Message) {
        let bytes = snapshot_bytes(&message);
        self.snapshot_bytes.fetch_add(bytes, Relaxed);
        match self.tx.try_send(MemberIn::Peer(message)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.snapshot_bytes.fetch_sub(bytes, Relaxed);
            }
        }
    }

    /// Whether the thread has enough snapshot chunks to write: the transport reads no
    /// more until it has written some.
    pub fn backlogged(&self) -> bool {
        self.snapshot_bytes.load(Relaxed) >= SNAPSHOT_BACKLOG_BYTES
    }
}

/// The bytes a message adds to the snapshot backlog.
fn snapshot_bytes(m: &Message) -> usize {
    if m.get_msg_type() == MessageType::MsgSnapshot {
        m.get_snapshot().data.len()
    } else {
        0
    }
}
