//! The replica's view of its Raft log in memory: what raft-rs reads through its `Storage`
//! trait. It holds the entries after the last compaction point, and answers a leader's
//! request for a snapshot with the point its store has applied, since a member's store is
//! the snapshot: the driver streams it to the follower (see [`super::Output::SendSnapshot`]).

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// An index and the term of the entry there.
pub type Point = (u64, u64);

/// The entries after a compaction point, the hard state, and the store's applied point.
#[derive(Debug, Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last entry compacted away (or the snapshot installed): the log continues after.
    compacted: Point,
    /// In index order, from `compacted.0 + 1`.
    entries: VecDeque<Entry>,
    /// What this node's store has applied: a snapshot taken now holds this.
    applied: Point,
}

impl LogStore {
    /// A log for this configuration, starting after `compacted`.
    pub fn new(conf_state: ConfState, compacted: Point, hard_state: HardState) -> Self {
        LogStore {
            hard_state,
            conf_state,
            compacted,
            entries: VecDeque::new(),
            applied: (0, 0),
        }
    }

    /// The first index held.
    pub fn first(&self) -> u64 {
        self.compacted.0 + 1
    }

    /// The last index held (the compaction point when no entry is).
    pub fn last(&self) -> u64 {
        self.entries.back().map_or(self.compacted.0, |e| e.index)
    }

    /// The term at `index`, when the log knows it.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        let offset = index.checked_sub(self.first())?;
        self.entries
            .get(usize::try_from(offset).ok()?)
            .map(|e| e.term)
    }

    /// The entries held, in order.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Appends entries, replacing what the log held from the first one's index on.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.compacted.0 && first.index <= self.last() + 1,
            "entries from index {} do not follow a log of {}..={}",
            first.index,
            self.first(),
            self.last()
        );
        let keep = usize::try_from(first.index - self.first()).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
    }

    /// Sets the configuration in effect (a membership change was applied): a snapshot
    /// taken from now on carries it.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Sets the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Drops the entries up to `through` (which the log holds); returns its term.
    pub fn compact(&mut self, through: u64) -> u64 {
        let term = self
            .term_at(through)
            .expect("a log compacts only through an index it holds");
        let drop = usize::try_from(through - self.compacted.0).unwrap_or(usize::MAX);
        self.entries.drain(..drop.min(self.entries.len()));
        self.compacted = (through, term);
        term
    }

    /// Replaces the log by a snapshot's point and configuration: no entry is held, and the
    /// snapshot is committed. The store's applied point moves there once the snapshot is durable
    /// ([`LogStore::set_applied`]).
    pub fn install(&mut self, point: Point, conf_state: ConfState) {
        self.entries.clear();
        self.conf_state = conf_state;
        self.compacted = point;
        self.hard_state.commit = self.hard_state.commit.max(point.0);
        self.hard_state.term = self.hard_state.term.max(point.1);
    }

    /// The store applied through `point`.
    pub fn set_applied(&mut self, point: Point) {
        self.applied = point;
    }

    /// What the store has applied.
    pub fn applied(&self) -> Point {
        self.applied
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = usize::try_from(low - self.first()).unwrap_or(usize::MAX);
        let to = usize::try_from(high - self.first()).unwrap_or(usize::MAX);
        let mut out: Vec<Entry> = self.entries.range(from..to).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_at(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// A snapshot is the store as it stands: its applied point, which is never behind the
    /// compaction point (the log compacts only what the store holds durably).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (index, term) = self.applied;
        if index == 0 || index < request_index || index < self.compacted.0 {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}
