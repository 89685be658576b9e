//! A whole store copied from one cluster member to another: what a Raft leader sends a
//! member that fell behind the start of its compacted log.
//!
//! # Sending
//!
//! [`FjallStore::snapshot_source`] takes fjall's cross-keyspace read snapshot of the store,
//! which later writes do not change ([`SnapshotSource`]). It moves to a thread of its own,
//! which walks it in key order while the store goes on being written, and yields chunks of
//! records ([`SnapshotSource::chunks`]). Only one chunk is built at a time, however big
//! the store.
//!
//! The `paged` keyspace (transient messages, emptied whenever a store opens) and the
//! records set aside in `quarantine` (they do not decode) are not sent.
//!
//! # Receiving
//!
//! The receiver stages the chunks in a database of its own ([`SnapshotSink`]), never in
//! its store: a transfer cut off half-way (the leader stops, the connection drops) leaves
//! the store as it was. [`SnapshotSink::finish`] checks that the staged store holds the
//! Raft point the leader announced, marks the staging database complete and syncs it.
//!
//! # Installing
//!
//! [`FjallStore::install_snapshot`] replaces the store's content with the complete staged
//! one. Between the first keyspace emptied and the last record copied the store holds
//! neither its old content nor the new, so the install is made redoable rather than
//! atomic: the staging database is first marked `installing` (synced), then every keyspace
//! of the store is emptied and the staged records copied in, the store is synced, and only
//! then is the staging directory removed. A node that stops in between finds the mark at
//! start and installs again ([`FjallStore::resume_install`]). The staging directory is
//! renamed away before it is deleted, so that a stop during the deletion never leaves a
//! half-deleted staging database that still carries the mark.
//!
//! The `meta` keyspace is replaced key by key rather than emptied at once: fjall empties a
//! keyspace by dropping its tables at once and journals only the fact, so a stop before the
//! journal reaches the disk can leave the keyspace with its recent writes replayed and
//! its older ones gone. For `meta` that could lose the format key while keeping the
//! applied key, and a store without a format key but with data refuses to open, which
//! would keep the node from ever resuming the install. Keeping the format key throughout
//! leaves a store that opens whatever point a stop interrupts.
//!
//! # Chunks
//!
//! A chunk is a sequence of records `[space: 1][key length: 4][key][value length: 4][value]`
//! (lengths big-endian; the spaces numbered in the order sent: `meta` 0, `messages` 1,
//! `refs` 2, `entries` 3, `bodies` 4). The bytes come from another node over the network,
//! so a chunk that does not decode (cut short, an unknown space, a key fjall would refuse)
//! is refused whole, with an error, before anything of it is written.

use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use self::chunk::{RECORD_OVERHEAD_BYTES, SENT, decode_chunk, encode_record, space_id};
use super::catalog::Space;
use super::{Engine, FjallStore, check_version, engine_failure, keyspace_options, record};
use crate::store::{StoreError, io_error_kind};

mod chunk;

/// Most bytes set aside for a chunk before its records are read: the chunk grows past it
/// only for a larger `max_bytes`.
const MAX_CHUNK_CAPACITY_BYTES: usize = 16 << 20;

/// The staging database's own keyspace, holding its marks.
const STATE: &str = "staging";

/// Set once every chunk is staged: the (index, term) the staged store holds.
const COMPLETE_KEY: &[u8] = b"complete";

/// Set, and synced, before the store's content is replaced by the staged one.
const INSTALLING_KEY: &[u8] = b"installing";

/// Most bytes (keys, values and a little per record) of one write while installing: big
/// enough that a large store installs in few batches, small enough that one batch's
/// memtable growth stays a fraction of the store's write buffers.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

/// What an install counts for a record besides its key and value.
const INSTALL_RECORD_COST_BYTES: usize = 32;

/// The staging database's memtables: a transfer writes every keyspace in turn, so these
/// are flushed often and cheaply.
const STAGING_MEMTABLE_BYTES: u64 = 4 << 20;

/// The staging database's block cache: it is written, and read once in key order.
const STAGING_CACHE_BYTES: u64 = 4 << 20;

// ----- sending -----

/// A consistent read view of a store, to send to a member: what the store held when
/// [`FjallStore::snapshot_source`] was called, whatever is written to it since. It owns
/// its handles, so it can move to a thread of its own; while it lives, fjall keeps the
/// versions it sees, so a transfer should not be left idle.
pub struct SnapshotSource {
    dir: PathBuf,
    view: fjall::Snapshot,
    /// The sent keyspaces, in [`SENT`] order.
    keyspaces: Vec<Keyspace>,
}

impl std::fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("dir", &self.dir)
            .field("seqno", &self.view.seqno())
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// A read view of the store as it stands, to send to a member. Refused while the store
    /// has failed: its disk may then be behind what it acknowledged.
    pub fn snapshot_source(&self) -> Result<SnapshotSource, StoreError> {
        self.usable()?;
        Ok(SnapshotSource {
            dir: self.dir.clone(),
            view: self.db().snapshot(),
            keyspaces: SENT
                .iter()
                .map(|space| self.keyspace(*space).clone())
                .collect(),
        })
    }
}

impl SnapshotSource {
    /// The cluster's members the view's store recorded, when it did
    /// ([`FjallStore::members`]).
    pub fn members(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .view
            .get(&self.keyspaces[0], record::MEMBERS_KEY)
            .map_err(|e| self.read_error(Space::Meta, e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// The Raft log index and term of the last entry applied to the store the view holds
    /// ((0, 0) before the first): the point a member that installs it resumes from.
    pub fn applied(&self) -> Result<(u64, u64), StoreError> {
        let value = self
            .view
            .get(&self.keyspaces[0], record::APPLIED_KEY)
            .map_err(|e| self.read_error(Space::Meta, e))?;
        match value {
            Some(v) => record::decode_applied(&v).map_err(|e| {
                StoreError::other(format!(
                    "corrupt store in {}: the applied key: {e}",
                    self.dir.display()
                ))
            }),
            None => Ok((0, 0)),
        }
    }

    /// The view's records, keyspace by keyspace in key order, in chunks of at most
    /// `max_bytes` (a record bigger than that alone gets a chunk of its own). The records
    /// are read as the chunks are taken, so memory holds one chunk whatever the store's
    /// size. After an error the iterator ends.
    pub fn chunks(
        self,
        max_bytes: usize,
    ) -> impl Iterator<Item = Result<Vec<u8>, StoreError>> + Send + 'static {
        Chunks {
            source: self,
            next_space: 0,
            records: None,
            pending: None,
            max_bytes,
            done: false,
        }
    }

    fn read_error(&self, space: Space, e: fjall::Error) -> StoreError {
        engine_failure(
            &e,
            format!(
                "cannot read a snapshot of the store in {}: keyspace `{}`: {e}",
                self.dir.display(),
                space.name()
            ),
        )
    }
}

/// A record read from the view: its keyspace, key and value (fjall's shared slices, not
/// copies).
type ViewRecord = (Space, fjall::UserKey, fjall::UserValue);

/// The iterator of [`SnapshotSource::chunks`].
struct Chunks {
    source: SnapshotSource,
    /// Index in [`SENT`] of the next keyspace to walk.
    next_space: usize,
    /// The keyspace being walked.
    records: Option<(Space, fjall::Iter)>,
    /// A record read that did not fit in the last chunk: the next one starts with it.
    pending: Option<ViewRecord>,
    max_bytes: usize,
    done: bool,
}

impl Chunks {
    fn next_record(&mut self) -> Option<Result<ViewRecord, StoreError>> {
        if let Some(record) = self.pending.take() {
            return Some(Ok(record));
        }
        loop {
            if let Some((space, iter)) = &mut self.records {
                let space = *space;
                match iter.next() {
                    Some(guard) => {
                        return Some(
                            guard
                                .into_inner()
                                .map(|(k, v)| (space, k, v))
                                .map_err(|e| self.source.read_error(space, e)),
                        );
                    }
                    None => self.records = None,
                }
            }
            let space = *SENT.get(self.next_space)?;
            let keyspace = &self.source.keyspaces[self.next_space];
            self.records = Some((space, self.source.view.iter(keyspace)));
            self.next_space += 1;
        }
    }
}

impl Iterator for Chunks {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut chunk = Vec::with_capacity(self.max_bytes.min(MAX_CHUNK_CAPACITY_BYTES));
        while let Some(record) = self.next_record() {
            let (space, key, value) = match record {
                Ok(record) => record,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            let size = RECORD_OVERHEAD_BYTES + key.len() + value.len();
            if !chunk.is_empty() && chunk.len() + size > self.max_bytes {
                self.pending = Some((space, key, value));
                return Some(Ok(chunk));
            }
            if let Err(e) = encode_record(&mut chunk, space, &key, &value) {
                self.done = true;
                return Some(Err(StoreError::other(format!(
                    "cannot send a snapshot of the store in {}: keyspace `{}`: {e}",
                    self.source.dir.display(),
                    space.name()
                ))));
            }
        }
        self.done = true;
        (!chunk.is_empty()).then_some(Ok(chunk))
    }
}

// ----- receiving -----

/// A staging database: a snapshot being received, or received and not yet installed.
struct Staging {
    dir: PathBuf,
    db: Database,
    /// The marks: [`COMPLETE_KEY`], [`INSTALLING_KEY`].
    state: Keyspace,
    /// The staged keyspaces, in [`SENT`] order, named as the store's.
    keyspaces: Vec<Keyspace>,
}

impl Staging {
    fn open(dir: &Path) -> Result<Staging, StoreError> {
        let fail = |e: fjall::Error| {
            engine_failure(
                &e,
                format!("cannot open the staged snapshot in {}: {e}", dir.display()),
            )
        };
        let db = Database::builder(dir)
            // Nothing staged counts until `finish` syncs it.
            .manual_journal_persist(true)
            .cache_size(STAGING_CACHE_BYTES)
            .open()
            .map_err(fail)?;
        let state = db
            .keyspace(STATE, KeyspaceCreateOptions::default)
            .map_err(fail)?;
        let keyspaces = SENT
            .iter()
            .map(|&space| {
                db.keyspace(space.name(), || {
                    keyspace_options(space).max_memtable_size(STAGING_MEMTABLE_BYTES)
                })
                .map_err(fail)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Staging {
            dir: dir.to_path_buf(),
            db,
            state,
            keyspaces,
        })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.keyspaces[usize::from(space_id(space))]
    }

    fn error(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::other(format!(
            "the snapshot staged in {}: {what}",
            self.dir.display()
        ))
    }

    fn engine_error(&self, what: &str, e: fjall::Error) -> StoreError {
        engine_failure(
            &e,
            format!("the snapshot staged in {}: {what}: {e}", self.dir.display()),
        )
    }

    fn get(&self, keyspace: &Keyspace, key: &[u8]) -> Result<Option<fjall::UserValue>, StoreError> {
        keyspace
            .get(key)
            .map_err(|e| self.engine_error("cannot read", e))
    }

    /// The point the staged store holds, once every chunk was staged and synced.
    fn complete(&self) -> Result<Option<(u64, u64)>, StoreError> {
        self.get(&self.state, COMPLETE_KEY)?
            .map(|v| {
                record::decode_applied(&v)
                    .map_err(|e| self.error(format!("its complete mark: {e}")))
            })
            .transpose()
    }

    /// Whether an install from it began (the mark is set only on a complete one).
    fn installing(&self) -> Result<bool, StoreError> {
        Ok(self.get(&self.state, INSTALLING_KEY)?.is_some())
    }

    /// Checks that the staged records are a store this build reads, at `point`.
    fn verify(&self, point: (u64, u64)) -> Result<(), StoreError> {
        let meta = self.keyspace(Space::Meta);
        let Some(format) = self.get(meta, record::FORMAT_KEY)? else {
            return Err(self.error("holds no format key: not a whole store"));
        };
        check_version(&self.dir, &format)?;
        let applied = match self.get(meta, record::APPLIED_KEY)? {
            Some(v) => record::decode_applied(&v)
                .map_err(|e| self.error(format!("its applied key: {e}")))?,
            None => (0, 0),
        };
        if applied != point {
            return Err(self.error(format!(
                "holds index {} term {}, not index {} term {}",
                applied.0, applied.1, point.0, point.1
            )));
        }
        Ok(())
    }

    fn mark(&self, key: &[u8], value: Vec<u8>, what: &str) -> Result<(), StoreError> {
        self.state
            .insert(key, value)
            .and_then(|()| self.db.persist(PersistMode::SyncAll))
            .map_err(|e| self.engine_error(what, e))
    }
}

/// Where a member stages a snapshot it receives, chunk by chunk, before it replaces its
/// store with it ([`FjallStore::install_snapshot`]): a fjall database of its own directory,
/// so that an interrupted transfer leaves the store untouched.
pub struct SnapshotSink {
    staging: Staging,
}

impl std::fmt::Debug for SnapshotSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSink")
            .field("dir", &self.staging.dir)
            .finish_non_exhaustive()
    }
}

impl SnapshotSink {
    /// Starts staging a snapshot in `dir`, removing whatever it held: a transfer always
    /// starts from nothing, never on top of an earlier one.
    pub fn create(dir: &Path) -> Result<SnapshotSink, StoreError> {
        remove_staging(dir)?;
        Ok(SnapshotSink {
            staging: Staging::open(dir)?,
        })
    }

    /// Stages one chunk, as one write. A chunk that does not decode is refused whole, and
    /// nothing of it is staged.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let s = &self.staging;
        let records = decode_chunk(chunk).map_err(|e| s.error(format!("a chunk {e}")))?;
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = s.db.batch();
        for r in records {
            batch.insert(s.keyspace(r.space), r.key, r.value);
        }
        batch
            .commit()
            .map_err(|e| s.engine_error("cannot stage a chunk", e))
    }

    /// Ends the transfer: checks that the staged store is one this build reads and that it
    /// holds `index` and `term` as its applied point (the point the sender announced),
    /// then marks it complete and syncs it. Only a finished snapshot can be installed.
    pub fn finish(self, index: u64, term: u64) -> Result<(), StoreError> {
        let s = &self.staging;
        s.verify((index, term))?;
        s.mark(
            COMPLETE_KEY,
            record::encode_applied(index, term),
            "cannot mark it complete",
        )
    }

    /// The Raft index and term of the finished snapshot staged in `dir`; `None` if there
    /// is none, or if its transfer did not finish.
    pub fn complete(dir: &Path) -> Result<Option<(u64, u64)>, StoreError> {
        if !exists(dir)? {
            return Ok(None);
        }
        Staging::open(dir)?.complete()
    }
}

// ----- installing -----

impl FjallStore {
    /// Replaces the store's whole content with the finished snapshot staged in `staging`
    /// (see [`SnapshotSink`]), and removes it; returns the Raft point the store now holds
    /// ([`FjallStore::applied`]).
    ///
    /// Crash-safe: once the staging database is marked as being installed, a stop at any
    /// point leaves it in place, and [`FjallStore::resume_install`] at the next start
    /// installs it again. Within the process, an install that fails leaves the store
    /// failed and refusing [`crate::store::Store::reopen`], since its content is then
    /// partly replaced; installing again is what repairs it. For the same reason a store
    /// that failed before may be installed into: its content is replaced anyway.
    ///
    /// Everything the store keeps in memory is loaded again from the new content, and the
    /// paged messages are gone: the broker above must start again from
    /// [`crate::store::Store::recover`].
    pub fn install_snapshot(&mut self, staging: &Path) -> Result<(u64, u64), StoreError> {
        let staged = Staging::open(staging)?;
        let Some(point) = staged.complete()? else {
            return Err(staged.error("its transfer did not finish"));
        };
        staged.verify(point)?;
        staged.mark(INSTALLING_KEY, vec![1], "cannot mark it as being installed")?;
        // The mark outside the staging database tells a restart to open it: a staging
        // directory without it is only a transfer's leftover, removed unopened (a stop
        // while fjall was creating it can leave one that no longer opens).
        write_synced_marker(&marker_of(staging)?)?;

        let was_failed = self.failed.is_some() || self.engine.is_none();
        self.installing = Some(staging.to_path_buf());
        self.failed = Some(format!(
            "replacing its content with the snapshot staged in {}",
            staging.display()
        ));
        if was_failed {
            // fjall refuses every write after a failed one: start from a database opened
            // afresh, as a restart would.
            self.engine = None;
            let (engine, _) = Engine::open(&self.dir, self.options, true)?;
            self.engine = Some(engine);
        }
        self.overwrite_from(&staged, point)
            .map_err(|e| self.fail(e))?;
        drop(staged);
        // Until the staging directory is gone, a restart would install it again over
        // whatever this store holds by then, so the store stays failed meanwhile.
        remove_staging(staging).map_err(|e| self.fail(e))?;
        remove_file(&marker_of(staging)?).map_err(|e| self.fail(e))?;
        self.installing = None;
        self.failed = None;
        Ok(point)
    }

    /// Called at start, before the store is used: finishes an install that a stop
    /// interrupted (returning the point it installed), and removes a staged snapshot that
    /// was not being installed, since the transfer that wrote it is over either way.
    ///
    /// A staging directory that does not open is an error, not removed: it may hold the
    /// only whole copy of a store whose own content is half replaced.
    pub fn resume_install(&mut self, staging: &Path) -> Result<Option<(u64, u64)>, StoreError> {
        remove_tree(&trash_of(staging)?)?;
        let marker = marker_of(staging)?;
        if !exists(staging)? {
            remove_file(&marker)?;
            return Ok(None);
        }
        if !exists(&marker)? {
            remove_staging(staging)?;
            return Ok(None);
        }
        let installing = Staging::open(staging)
            .map_err(|e| {
                StoreError::new(
                    e.kind(),
                    format!(
                        "{}; it may hold a snapshot whose install was interrupted, so it is \
                         kept: remove it by hand only if the store in {} is to be \
                         discarded too",
                        e.message(),
                        self.dir.display()
                    ),
                )
            })?
            .installing()?;
        if installing {
            tracing::warn!(staging = %staging.display(), "installing again a snapshot whose install was interrupted");
            return self.install_snapshot(staging).map(Some);
        }
        remove_staging(staging)?;
        Ok(None)
    }

    /// Empties the store and copies the staged records in, syncs, and loads the in-memory
    /// state from the new content.
    fn overwrite_from(&mut self, staged: &Staging, point: (u64, u64)) -> Result<(), StoreError> {
        for space in Space::ALL.into_iter().filter(|s| *s != Space::Meta) {
            self.keyspace(space)
                .clear()
                .map_err(|e| self.engine_error(&format!("cannot empty `{}`", space.name()), e))?;
        }
        self.engine()
            .quarantine
            .clear()
            .map_err(|e| self.engine_error("cannot empty the quarantine", e))?;
        self.remove_meta_but_format()?;
        for space in SENT {
            self.copy_staged(staged, space)?;
        }
        self.db()
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.engine_error("cannot sync an installed snapshot", e))?;

        // Nothing of the old content may survive in memory either.
        self.quarantined_shared = Default::default();
        self.paged_written = false;
        self.load_state()?;
        self.synced_writes = self.writes;
        let applied = self.applied()?;
        if applied != point {
            return Err(self.corrupt(
                Space::Meta,
                record::APPLIED_KEY,
                format!(
                    "index {} term {} after installing the snapshot of index {} term {}",
                    applied.0, applied.1, point.0, point.1
                ),
            ));
        }
        Ok(())
    }

    /// Removes every `meta` key but the format key, in bounded batches (see the module
    /// docs for why not `Keyspace::clear`).
    fn remove_meta_but_format(&self) -> Result<(), StoreError> {
        let mut writer = InstallWriter::new(self);
        let mut last: Option<fjall::UserKey> = None;
        for item in self.keyspace(Space::Meta).iter() {
            let key = item
                .key()
                .map_err(|e| self.scan_error(Space::Meta, last.as_deref(), e))?;
            if *key != *record::FORMAT_KEY {
                writer.remove(Space::Meta, key.clone())?;
            }
            last = Some(key);
        }
        writer.commit()
    }

    /// Copies one staged keyspace into the store's, in bounded batches.
    fn copy_staged(&self, staged: &Staging, space: Space) -> Result<(), StoreError> {
        let mut writer = InstallWriter::new(self);
        for item in staged.keyspace(space).iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| staged.engine_error(&format!("cannot read `{}`", space.name()), e))?;
            writer.insert(space, key, value)?;
        }
        writer.commit()
    }
}

/// The writes of an install, committed in batches of about [`INSTALL_BATCH_BYTES`].
struct InstallWriter<'a> {
    store: &'a FjallStore,
    batch: fjall::OwnedWriteBatch,
    bytes: usize,
}

impl<'a> InstallWriter<'a> {
    fn new(store: &'a FjallStore) -> Self {
        InstallWriter {
            store,
            batch: store.db().batch(),
            bytes: 0,
        }
    }

    fn insert(
        &mut self,
        space: Space,
        key: fjall::UserKey,
        value: fjall::UserValue,
    ) -> Result<(), StoreError> {
        self.bytes += key.len() + value.len() + INSTALL_RECORD_COST_BYTES;
        self.batch.insert(self.store.keyspace(space), key, value);
        self.commit_if_full()
    }

    fn remove(&mut self, space: Space, key: fjall::UserKey) -> Result<(), StoreError> {
        self.bytes += key.len() + INSTALL_RECORD_COST_BYTES;
        self.batch.remove(self.store.keyspace(space), key);
        self.commit_if_full()
    }

    fn commit_if_full(&mut self) -> Result<(), StoreError> {
        if self.bytes >= INSTALL_BATCH_BYTES {
            let full = std::mem::replace(&mut self.batch, self.store.db().batch());
            self.bytes = 0;
            full.commit()
                .map_err(|e| self.store.engine_error("cannot install a snapshot", e))?;
        }
        Ok(())
    }

    fn commit(self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.batch
            .commit()
            .map_err(|e| self.store.engine_error("cannot install a snapshot", e))
    }
}

// ----- the staging directory -----

/// Where a staging directory is moved to be deleted: beside it, so that the move is a
/// rename within one file system.
fn trash_of(dir: &Path) -> Result<PathBuf, StoreError> {
    let Some(name) = dir.file_name() else {
        return Err(StoreError::other(format!(
            "{} cannot hold a staged snapshot: it names no directory",
            dir.display()
        )));
    };
    let mut trash = name.to_os_string();
    trash.push(".removing");
    Ok(dir.with_file_name(trash))
}

/// Removes a staging directory, if any. It is renamed first (and the rename synced), so
/// that a stop half-way through leaves no partly deleted staging database behind, only a
/// directory that [`SnapshotSink::create`] and [`FjallStore::resume_install`] remove.
fn remove_staging(dir: &Path) -> Result<(), StoreError> {
    let trash = trash_of(dir)?;
    remove_tree(&trash)?;
    match std::fs::rename(dir, &trash) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_failure(&e, "cannot move away", dir)),
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_failure(&e, "cannot sync", parent))?;
    }
    // The staging database is gone once renamed; what is left is only space, which the
    // next removal takes back.
    if let Err(e) = remove_tree(&trash) {
        tracing::warn!(error = %e, "cannot delete a removed snapshot staging directory");
    }
    Ok(())
}

/// The file beside a staging directory that says its install began.
fn marker_of(dir: &Path) -> Result<PathBuf, StoreError> {
    let mut marker = trash_of(dir)?.into_os_string();
    marker.push(".installing");
    Ok(PathBuf::from(marker))
}

fn write_synced_marker(marker: &Path) -> Result<(), StoreError> {
    std::fs::File::create(marker)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_failure(&e, "cannot write the install mark of", marker))?;
    if let Some(parent) = marker.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_failure(&e, "cannot sync", parent))?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_failure(&e, "cannot remove", path)),
    }
}

fn remove_tree(dir: &Path) -> Result<(), StoreError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_failure(&e, "cannot remove", dir)),
    }
}

fn exists(dir: &Path) -> Result<bool, StoreError> {
    dir.try_exists()
        .map_err(|e| io_failure(&e, "cannot look for", dir))
}

fn io_failure(e: &std::io::Error, what: &str, path: &Path) -> StoreError {
    StoreError::new(
        io_error_kind(e),
        format!(
            "{what} the snapshot staging directory {}: {e}",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests;
