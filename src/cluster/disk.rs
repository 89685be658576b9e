//! A node's Raft log on disk: its own fjall database (the `raft` folder of the data
//! directory), beside the broker's store.
//!
//! Keyspace `log` maps each index (8 bytes, big-endian, so the log iterates in order) to
//! its entry; keyspace `state` holds the hard state (term, vote, commit). Entries and hard
//! state are raft-rs's protobuf encodings. [`FjallLog::persist`] writes one
//! [`Output::Persist`](super::Output::Persist) as one atomic batch and syncs it before it
//! returns, which is what lets the replica send its vote or its acknowledgement. A persist
//! that fails leaves the log unknown (the batch may or may not be on disk), so it poisons
//! the log: every later persist fails too, and the node restarts from what it reads back.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use super::LogState;

const HARD_STATE_KEY: &[u8] = b"hard_state";

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
    /// The last index held (0 when empty).
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
        for item in log.iter() {
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
                last,
                poisoned: None,
            },
            read,
        ))
    }

    /// Writes entries (replacing the log from the first one's index on) and the hard state
    /// as one batch, and syncs it. After a failure, every later call fails.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), LogError> {
        if let Some(why) = &self.poisoned {
            return Err(LogError(format!(
                "the Raft log in {} refuses writes after an earlier failure ({why}): restart \
                 the node",
                self.dir.display()
            )));
        }
        let written = self.write(entries, hard_state);
        if let Err(e) = &written {
            self.poisoned = Some(e.to_string());
        }
        written
    }

    fn write(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<(), LogError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            LogError(format!(
                "cannot {what} the Raft log in {}: {e}",
                self.dir.display()
            ))
        };
        let mut batch = self.db.batch();
        let mut last = self.last;
        if let Some(first) = entries.first() {
            if first.index == 0 || first.index > self.last + 1 {
                return Err(fail(
                    "write",
                    &format!("entry {} after the last index {}", first.index, self.last),
                ));
            }
            // A leader's entries replace a conflicting suffix.
            for index in first.index..=self.last {
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
                &[entry(1, 1, b""), entry(2, 1, b"a"), entry(3, 1, b"b")],
                Some(&hs),
            )
            .expect("persist");
            // A new leader's entries from index 2 on replace the old suffix.
            log.persist(&[entry(2, 2, b"c")], None).expect("persist");
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
        assert!(log.persist(&[entry(5, 2, b"x")], None).is_err());
        let err = log
            .persist(&[entry(3, 2, b"d")], None)
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
            election_ticks: 10,
            heartbeat_ticks: 2,
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
                            entries,
                            hard_state,
                        } => {
                            log.persist(&entries, hard_state.as_ref()).expect("persist");
                            r.persisted(number, &mut out);
                        }
                        Output::Apply(c) => applied.extend(c),
                        Output::Send(_) | Output::Deposed { .. } => {}
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
