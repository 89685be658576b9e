//! A node's Raft log on disk: its own fjall database (the `raft` folder of the data
//! directory), beside the broker's store.
//!
//! Keyspace `log` maps each index (8 bytes, big-endian, so the log iterates in order) to
//! its entry; keyspace `state` holds the hard state (term, vote, commit) and the point the
//! log was compacted through or replaced by a snapshot (index and term, 8 bytes each,
//! big-endian), which the entries follow. Entries and hard state are raft-rs's protobuf
//! encodings. [`FjallLog::persist`] writes one
//! [`Output::Persist`](super::Output::Persist) as one atomic batch and syncs it before it
//! returns, which is what lets the replica send its vote or its acknowledgement. A persist
//! that fails leaves the log unknown (the batch may or may not be on disk), so it poisons
//! the log: every later persist fails too, and the node restarts from what it reads back.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use super::{LogState, Point};

const HARD_STATE_KEY: &[u8] = b"hard_state";
const COMPACTED_KEY: &[u8] = b"compacted";

fn encode_point((index, term): Point) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&index.to_be_bytes());
    out[8..].copy_from_slice(&term.to_be_bytes());
    out
}

fn decode_point(bytes: &[u8]) -> Option<Point> {
    let index = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let term = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    (bytes.len() == 16).then_some((index, term))
}

/// Why the log could not be read or written.
#[derive(Debug)]
pub struct LogError(String);

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LogError {}

/// A node's Raft log, durable.
pub struct FjallLog {
    dir: PathBuf,
    db: Database,
    log: Keyspace,
    state: Keyspace,
    /// The point the entries follow.
    compacted: Point,
    /// The last index held (the compaction point's when no entry is).
    last: u64,
    /// Why an earlier persist failed: the log refuses writes from then on.
    poisoned: Option<String>,
}

impl std::fmt::Debug for FjallLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallLog")
            .field("dir", &self.dir)
            .field("last", &self.last)
            .finish()
    }
}

impl FjallLog {
    /// Opens (or creates) the log in `dir`, and reads it back.
    pub fn open(dir: &Path) -> Result<(Self, LogState), LogError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            LogError(format!("{what} the Raft log in {}: {e}", dir.display()))
        };
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .open()
            .map_err(|e| fail("cannot open", &e))?;
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(|e| fail("cannot open keyspace `log` of", &e))?;
        let state = db
            .keyspace("state", KeyspaceCreateOptions::default)
            .map_err(|e| fail("cannot open keyspace `state` of", &e))?;
        let mut read = LogState::default();
        if let Some(v) = state
            .get(HARD_STATE_KEY)
            .map_err(|e| fail("cannot read", &e))?
        {
            read.hard_state = HardState::parse_from_bytes(&v)
                .map_err(|e| fail("undecodable hard state in", &e))?;
        }
        if let Some(v) = state
            .get(COMPACTED_KEY)
            .map_err(|e| fail("cannot read", &e))?
        {
            read.compacted =
                decode_point(&v).ok_or_else(|| fail("an undecodable compaction point in", &""))?;
        }
        for item in log.range((read.compacted.0 + 1).to_be_bytes()..) {
            let (key, value) = item.into_inner().map_err(|e| fail("cannot read", &e))?;
            let index = <[u8; 8]>::try_from(&key[..])
                .map(u64::from_be_bytes)
                .map_err(|_| fail("a malformed key in", &"not 8 bytes"))?;
            let entry =
                Entry::parse_from_bytes(&value).map_err(|e| fail("an undecodable entry in", &e))?;
            let expected = read.last_index() + 1;
            if entry.index != index || index != expected {
                return Err(fail(
                    "a gap in",
                    &format!(
                        "index {index} (entry {}) where {expected} was due",
                        entry.index
                    ),
                ));
            }
            read.entries.push(entry);
        }
        let last = read.last_index();
        Ok((
            Self {
                dir: dir.to_path_buf(),
                db,
                log,
                state,
                compacted: read.compacted,
                last,
                poisoned: None,
            },
            read,
        ))
    }

    /// Writes a snapshot's point (replacing every entry), entries (replacing the log from
    /// the first one's index on) and the hard state as one batch, and syncs it. After a
    /// failure, every later call fails.
    pub fn persist(
        &mut self,
        snapshot: Option<Point>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogError> {
        self.usable()?;
        let written = self.write(snapshot, entries, hard_state);
        if let Err(e) = &written {
            self.poisoned = Some(e.to_string());
        }
        written
    }

    /// Drops the entries through `through` (of term `term`), without a sync: a crash keeps
    /// them or not, and either log is valid.
    pub fn compact(&mut self, through: u64, term: u64) -> Result<(), LogError> {
        self.usable()?;
        let fail = |e: &dyn std::fmt::Display| {
            LogError(format!(
                "cannot compact the Raft log in {}: {e}",
                self.dir.display()
            ))
        };
        if through <= self.compacted.0 {
            return Ok(());
        }
        if through > self.last {
            return Err(fail(&format!(
                "index {through} is past the last index {}",
                self.last
            )));
        }
        let mut batch = self.db.batch();
        for index in self.compacted.0 + 1..=through {
            batch.remove(&self.log, index.to_be_bytes());
        }
        batch.insert(&self.state, COMPACTED_KEY, encode_point((through, term)));
        let written = batch.commit().map_err(|e| fail(&e));
        match written {
            Ok(()) => {
                self.compacted = (through, term);
                Ok(())
            }
            Err(e) => {
                self.poisoned = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn usable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(why) => Err(LogError(format!(
                "the Raft log in {} refuses writes after an earlier failure ({why}): restart \
                 the node",
                self.dir.display()
            ))),
            None => Ok(()),
        }
    }

    fn write(
        &mut self,
        snapshot: Option<Point>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            LogError(format!(
                "cannot {what} the Raft log in {}: {e}",
                self.dir.display()
            ))
        };
        let mut batch = self.db.batch();
        let mut last = self.last;
        let mut compacted = self.compacted;
        if let Some(point) = snapshot {
            for index in compacted.0 + 1..=self.last {
                batch.remove(&self.log, index.to_be_bytes());
            }
            batch.insert(&self.state, COMPACTED_KEY, encode_point(point));
            compacted = point;
            last = point.0;
        }
        if let Some(first) = entries.first() {
            if first.index <= compacted.0 || first.index > last + 1 {
                return Err(fail(
                    "write",
                    &format!("entry {} after the last index {}", first.index, self.last),
                ));
            }
            // A leader's entries replace a conflicting suffix.
            for index in first.index..=last {
                batch.remove(&self.log, index.to_be_bytes());
            }
            for e in entries {
                let bytes = e.write_to_bytes().map_err(|e| fail("encode", &e))?;
                batch.insert(&self.log, e.index.to_be_bytes(), bytes);
            }
            last = entries[entries.len() - 1].index;
        }
        if let Some(hs) = hard_state {
            let bytes = hs.write_to_bytes().map_err(|e| fail("encode", &e))?;
            batch.insert(&self.state, HARD_STATE_KEY, bytes);
        }
        batch.commit().map_err(|e| fail("write", &e))?;
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| fail("sync", &e))?;
        self.last = last;
        self.compacted = compacted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = data.to_vec().into();
        e
    }

    #[test]
    fn the_log_reads_back_what_was_persisted_with_a_replaced_suffix() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, read) = FjallLog::open(dir.path()).expect("open");
            assert!(read.entries.is_empty());
            let mut hs = HardState::default();
            hs.term = 2;
            hs.vote = 3;
            log.persist(
                None,
                &[entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 1, b"b")],
                Some(&hs),
            )
            .expect("persist");
            // A new leader's entries from index 2 on replace the old suffix.
            log.persist(None, &[entry(2, 2, b"c")], None)
                .expect("persist");
        }
        let (mut log, read) = FjallLog::open(dir.path()).expect("reopen");
        assert_eq!(read.hard_state.term, 2);
        assert_eq!(read.hard_state.vote, 3);
        let got: Vec<(u64, u64, Vec<u8>)> = read
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect();
        assert_eq!(got, vec![(1, 1, vec![]), (2, 2, b"c".to_vec())]);
        // A write past a gap is refused, and so is every write after a refusal.
        assert!(log.persist(None, &[entry(5, 2, b"x")], None).is_err());
        let err = log
            .persist(None, &[entry(3, 2, b"d")], None)
            .expect_err("poisoned");
        assert!(err.to_string().contains("earlier failure"), "{err}");
    }

    #[test]
    fn a_replica_restarts_from_the_log_on_disk() {
        use super::super::{Output, Replica, ReplicaConfig, Role};
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = ReplicaConfig {
            id: 1,
            members: vec![1],
            learners: vec![],
            election_ticks: 10,
            heartbeat_ticks: 2,
            retain_entries: super::super::RETAIN_ENTRIES,
            retain_bytes: super::super::RETAIN_BYTES,
        };
        let mut applied = Vec::new();
        {
            let (mut log, state) = FjallLog::open(dir.path()).expect("open");
            let mut r = Replica::start(&cfg, &state, 0, 0).expect("start");
            // A single member elects itself and commits alone.
            let mut proposed = false;
            for _ in 0..100 {
                r.tick();
                let mut out = Vec::new();
                r.poll(&mut out);
                while !out.is_empty() {
                    // In order: `persisted` appends what follows the sync.
                    match out.remove(0) {
                        Output::Persist {
                            number,
                            snapshot,
                            entries,
                            hard_state,
                        } => {
                            log.persist(snapshot, &entries, hard_state.as_ref())
                                .expect("persist");
                            r.persisted(number, &mut out);
                        }
                        Output::Apply(c) => applied.extend(c),
                        Output::Compact { through, term } => {
                            log.compact(through, term).expect("compact");
                        }
                        Output::Send(_) | Output::SendSnapshot(_) | Output::Deposed { .. } => {}
                    }
                }
                if r.role() == Role::Leader && !proposed {
                    r.propose(1, b"batch".to_vec()).expect("propose");
                    proposed = true;
                }
            }
            assert!(applied.iter().any(|c| c.data == b"batch"));
        }
        let (_, state) = FjallLog::open(dir.path()).expect("reopen");
        let (last, last_term) = applied.last().map_or((0, 0), |c| (c.index, c.term));
        assert_eq!(state.last_index(), last);
        let r = Replica::start(&cfg, &state, last, last_term).expect("restart");
        assert_eq!(r.commit_index(), last);
        assert!(r.term() >= 1);
    }
}

#[cfg(test)]
mod compaction_tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = index.to_be_bytes().to_vec().into();
        e
    }

    fn indexes(read: &LogState) -> Vec<u64> {
        read.entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn a_compacted_log_reads_back_from_its_point() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, _) = FjallLog::open(dir.path()).expect("open");
            let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1)).collect();
            log.persist(None, &entries, None).expect("persist");
            log.compact(4, 1).expect("compact");
            // An old point is a no-op, a point past the end an error.
            log.compact(2, 1).expect("compact");
            assert!(log.compact(9, 1).is_err());
        }
        let (mut log, read) = FjallLog::open(dir.path()).expect("reopen");
        assert_eq!(read.compacted, (4, 1));
        assert_eq!(indexes(&read), vec![5, 6]);
        // Writing at or before the point is refused.
        assert!(log.persist(None, &[entry(4, 2)], None).is_err());
    }

    #[test]
    fn a_snapshot_replaces_every_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, _) = FjallLog::open(dir.path()).expect("open");
            let entries: Vec<Entry> = (1..=3).map(|i| entry(i, 1)).collect();
            log.persist(None, &entries, None).expect("persist");
            // A snapshot at 10 of term 3, and the entries after it, in one persist.
            log.persist(Some((10, 3)), &[entry(11, 3)], None)
                .expect("persist");
        }
        let (_, read) = FjallLog::open(dir.path()).expect("reopen");
        assert_eq!(read.compacted, (10, 3));
        assert_eq!(indexes(&read), vec![11]);
        assert_eq!(read.term(10), Some(3));
    }
}
