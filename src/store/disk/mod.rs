//! [`FjallStore`]: the durable [`Store`], on the fjall LSM storage engine.
//!
//! # Layout
//!
//! One fjall database in the data directory, with six keyspaces (byte layouts in `record`
//! and `entry`):
//!
//! - `meta`: small records keyed by a tag byte (see `record::tag`): vhosts, users,
//!   permissions, exchanges, queues (by id), bindings (by a digest of the whole record),
//!   queue-id generations, the shared message id counter, and the format version key. All
//!   of it is also kept in memory (`catalog::Catalog`), loaded when the store opens.
//! - `entries`: (queue id, generation, seq), all u64 big-endian, to an entry: a fixed
//!   header (format, flags, expiry, body length or shared id) followed by the encoded
//!   message when the whole value stays under [`BLOB_THRESHOLD_BYTES`]. One queue
//!   incarnation's entries are contiguous and iterate in queue order.
//! - `bodies`: same key, the encoded message of an inline entry too big for `entries`
//!   (flag APART). Values of 1 KiB or more go to fjall's blob files (key-value separation),
//!   so compactions move pointers instead of bodies, and a scan of `entries` never reads a
//!   blob file.
//! - `messages`: shared message id (u64 BE) to the encoded message, written once by
//!   [`StoreOp::PutShared`] for a message in several durable queues (blob files at 1 KiB).
//! - `refs`: shared message id to its reference count and body length. A dequeue rewrites
//!   this 13-byte value, never the message; the count reaching zero deletes both records.
//!   The counts are also kept in memory, loaded when the store opens.
//! - `paged`: (queue id, generation, seq) to a paged-out non-durable message with its
//!   expiry (blob files at 1 KiB).
//!
//! Each [`Store::write`] is one fjall write batch, hence atomic; each [`Store::sync`] is one
//! journal persist. After a crash fjall's journal recovers a prefix of whole batches (a
//! torn last batch is dropped), which is exactly the [`Store`] contract. Reads
//! ([`Store::load`]) see every committed batch, synced or not.
//!
//! Format version 2. Stores written in version 1 (one message record per message,
//! entries naming it) are refused at open with the version found; there is no migration.
//!
//! # Paged messages
//!
//! Paged messages are transient: they must not survive a restart. The `paged` keyspace is
//! dropped with `Database::delete_keyspace` and created afresh whenever the store opens
//! (and again by [`Store::recover`] if anything was paged since), so discarding them costs
//! one keyspace deletion, not a scan, however many there were.
//!
//! # Deleting a queue
//!
//! A queue can hold millions of entries, and deleting them in the writer's batch would
//! stall every publisher's confirm behind it. Instead each queue id has a *generation*
//! (0 unless the id was deleted before), part of every content key, and `DeleteQueue` just
//! bumps the id's generation (one small `meta` write): keys of older generations are
//! garbage from then on, never read by [`Store::load`] or recovered, and never overwritten,
//! even when the same queue id is declared again (the broker reuses ids after a restart).
//!
//! Garbage is collected in two places: [`Store::sync`] sweeps a bounded number of a
//! deleted queue's keys after each persist ([`GC_KEYS_PER_SYNC`]), and [`Store::recover`]
//! deletes every stale entry it meets while scanning (it reads them all anyway). Sweeping a
//! stale entry also deletes its body and releases its shared message reference, so a
//! shared message outlives a deleted queue only until the sweep passes. A generation
//! record is removed once its queue id has no keys left, so the catalog does not grow with
//! every queue ever deleted.
//!
//! # Shared messages
//!
//! `PutShared` stores the message and its count; each entry referring to it going away
//! (dequeue, purge, or the sweep of a deleted queue) decrements the count, and the last one
//! deletes the message. Recovery reconciles the counts with the entries it scanned: a count
//! left too high (a queue's entries overwritten, or references never written) is corrected,
//! and a shared message no entry refers to is deleted.
//!
//! An `Enqueue` is written blind (no read): the broker never enqueues at a position its
//! queue incarnation still holds. A `Dequeue` reads the entry first, so that it releases
//! the shared message the entry names (nothing if the entry is gone, as in
//! `MemoryState`) and deletes its body when it is apart.
//!
//! # Recovery cost
//!
//! [`Store::recover`] reads every entry's header to count entries, sum body sizes and find
//! `next_seq`, but decodes messages (and reads `bodies` or `messages`) only for the first
//! `head_limit` entries of each queue.
//!
//! # Failures and the space reserve
//!
//! fjall refuses every write after one failed (its database is "poisoned"): a failed
//! [`Store::write`] or [`Store::sync`] marks the store failed, and [`Store::reopen`] closes
//! the database and opens it again from what reached the disk, as a restart would, keeping
//! the paged messages the broker still refers to. To tell the caller which of the batches
//! written since the last sync survived, each batch also writes a counter (`meta` key
//! `WRITES_KEY`): its value after the reopen, less its value at the last sync, is the
//! number of batches the store holds.
//!
//! At open the store sets aside a reserve file of [`StoreOptions::reserve_bytes`] in its
//! directory (allocated, not sparse). A write that fails for lack of space deletes it, so
//! that the writes the broker still makes while it refuses publishes (acks, paging) find
//! room; [`Store::ready`] allocates it again once twice its size is free, and answers true
//! only then.
//!
//! After a failed `fdatasync` the kernel may have dropped the pages it could not write
//! while the reopened journal reads back from its cache, so a batch counted as held can
//! still be lost if the machine then loses power. No file system API closes that window.
//!
//! # Corruption
//!
//! A read that fjall fails (a checksum mismatch in a table, say), or a counter that does
//! not decode, makes [`FjallStore::open`], [`Store::recover`] or [`Store::load`] fail with
//! a [`StoreError`] naming the data directory, the keyspace and the key: a corrupt store
//! is refused, never read as empty. A metadata record or a message that does not decode
//! is set aside in the `quarantine` keyspace with a loud log line, and the broker goes on
//! without it (see `quarantine`).
//!
//! # Snapshots
//!
//! A cluster member too far behind its leader's Raft log is sent the leader's whole store
//! and replaces its own with it, crash-safely: see [`snapshot`].

mod batch;
mod catalog;
mod contents;
mod entry;
mod gc;
mod quarantine;
mod read;
mod record;
mod recovery;
mod reserve;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

pub use self::batch::{decode_batch, encode_batch};
use self::catalog::{Catalog, Space, Staged};
use self::gc::GcTask;
pub use self::record::RecordError;
pub use super::SyncPolicy;
use super::{LoadedEntry, Recovered, Store, StoreError, StoreOp};

/// The longest key fjall takes, in bytes.
const MAX_KEY_BYTES: usize = u16::MAX as usize;
/// Values of this many bytes or more are kept in fjall's blob files; inline entries whose
/// value would reach it keep their message in `bodies`.
pub const BLOB_THRESHOLD_BYTES: u32 = 1024;

/// Most keys the garbage collector visits after one sync. It bounds the latency the
/// collector adds to the writer: a few milliseconds.
pub const GC_KEYS_PER_SYNC: usize = 4096;

/// Settings of a [`FjallStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// What [`Store::sync`] guarantees.
    pub sync: SyncPolicy,
    /// Most file descriptors fjall keeps open for its table and blob files (at least 10).
    pub max_open_files: usize,
    /// Space set aside in the data directory for the writes made while the disk is full
    /// (0 for none).
    pub reserve_bytes: u64,
    /// The least time between the starts of two syncs ([`Store::sync_gap_ms`]).
    pub sync_gap_ms: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncPolicy::default(),
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            sync_gap_ms: DEFAULT_SYNC_GAP_MS,
        }
    }
}

/// The default gap between syncs: at 10,000 persistent messages a second from ten
/// clients that each write every message on its own, 2 ms took a quarter to a third off
/// the broker's CPU per message (most messages are acked before their batch is written,
/// so neither is) for about 1.5 ms more confirm latency.
pub const DEFAULT_SYNC_GAP_MS: u64 = 2;

/// The largest gap between syncs a setting may ask for.
pub const MAX_SYNC_GAP_MS: u64 = 1000;

/// fjall's own default for cached file descriptors on Linux.
pub const DEFAULT_MAX_OPEN_FILES: usize = 900;

/// The default space reserve: room for a memtable flush of acks and a few MiB of paging.
pub const DEFAULT_RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// fjall's smallest descriptor cache.
const MIN_OPEN_FILES: usize = 10;

/// A shared message's reference count and body length, as `refs` holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SharedCount {
    refs: u32,
    body_len: u64,
}

/// The durable [`Store`]: a fjall database in a data directory. See the module docs for
/// the layout.
pub struct FjallStore {
    dir: PathBuf,
    options: StoreOptions,
    /// The open database: `None` only after a failure, until [`Store::reopen`] succeeds
    /// (`failed` is set meanwhile, and every entry point checks it first).
    engine: Option<Engine>,
    /// Shared messages set aside: entries referring to them are skipped.
    quarantined_shared: std::sync::Mutex<std::collections::HashSet<u64>>,
    catalog: Catalog,
    /// Every shared message stored, by id (the `refs` keyspace).
    shared: HashMap<u64, SharedCount>,
    /// Deleted queue ids with stale keys possibly left, by id.
    gc: BTreeMap<u64, GcTask>,
    /// Keys swept after each sync ([`GC_KEYS_PER_SYNC`]; tests make it small).
    gc_keys_per_sync: usize,
    /// Per queue id, a position below which its current generation has no paged message,
    /// so that dropping paged messages does not rescan the tombstones of earlier drops.
    paged_floor: HashMap<u64, u64>,
    /// Something was paged since `paged` was last emptied.
    paged_written: bool,
    /// Why the store stopped accepting work: a failed write leaves the in-memory state
    /// ahead of the disk, so nothing more may be written until [`Store::reopen`].
    failed: Option<String>,
    /// Batches committed by [`Store::write`] over the store's life (`WRITES_KEY`).
    writes: u64,
    /// `writes` when the last sync succeeded: every batch up to it is durable.
    synced_writes: u64,
    /// The space set aside for writes while the disk is full.
    reserve: reserve::Reserve,
    /// The staging directory of a snapshot install that began and did not finish: the
    /// store's content is then partly replaced, and only installing again (or a restart,
    /// which does) repairs it, not [`Store::reopen`].
    installing: Option<PathBuf>,
}

/// The fjall database and its keyspaces.
struct Engine {
    db: Database,
    meta: Keyspace,
    messages: Keyspace,
    refs: Keyspace,
    entries: Keyspace,
    bodies: Keyspace,
    paged: Keyspace,
    /// Records that did not decode, set aside (see `quarantine`).
    quarantine: Keyspace,
}

impl Engine {
    /// Opens the database in `dir`; `fresh_paged` empties the paged keyspace (at start,
    /// not when reopening after a failure). Returns the format key's value, if any.
    fn open(
        dir: &Path,
        options: StoreOptions,
        fresh_paged: bool,
    ) -> Result<(Engine, Option<fjall::UserValue>), StoreError> {
        let db = Database::builder(dir)
            // Batches stay in the journal's buffer until `sync`, which decides how far
            // they go (see `SyncPolicy`).
            .manual_journal_persist(true)
            .cache_size(CACHE_BYTES)
            .max_cached_files(Some(options.max_open_files.max(MIN_OPEN_FILES)))
            .open()
            .map_err(|e| open_error(dir, e))?;
        let keyspace = |space: Space| {
            db.keyspace(space.name(), || keyspace_options(space))
                .map_err(|e| keyspace_error(dir, space, e))
        };
        let meta = keyspace(Space::Meta)?;
        // Refuse another format before creating anything in its directory.
        let format = meta
            .get(record::FORMAT_KEY)
            .map_err(|e| keyspace_error(dir, Space::Meta, e))?;
        if let Some(value) = &format {
            check_version(dir, value)?;
        }
        let paged = if fresh_paged {
            fresh_keyspace(&db, dir, Space::Paged)?
        } else {
            keyspace(Space::Paged)?
        };
        let quarantine = db
            .keyspace(QUARANTINE, KeyspaceCreateOptions::default)
            .map_err(|e| {
                StoreError::other(format!(
                    "cannot open keyspace `{QUARANTINE}` of the store in {}: {e}",
                    dir.display()
                ))
            })?;
        let engine = Engine {
            quarantine,
            messages: keyspace(Space::Messages)?,
            refs: keyspace(Space::Refs)?,
            entries: keyspace(Space::Entries)?,
            bodies: keyspace(Space::Bodies)?,
            paged,
            meta,
            db,
        };
        Ok((engine, format))
    }
}

impl fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FjallStore")
            .field("dir", &self.dir)
            .field("options", &self.options)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn keyspace_options(space: Space) -> KeyspaceCreateOptions {
    // Small memtables: the store is the overflow of a memory-bounded broker, so its own
    // write buffers must stay small too.
    let base = KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES);
    match space {
        Space::Messages | Space::Bodies | Space::Paged => base.with_kv_separation(Some(
            KvSeparationOptions::default().separation_threshold(BLOB_THRESHOLD_BYTES),
        )),
        Space::Meta | Space::Refs | Space::Entries => base,
    }
}

/// The keyspace of records set aside because they do not decode.
const QUARANTINE: &str = "quarantine";

/// Largest memtable of a keyspace before it is flushed to a table file.
const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// fjall's block cache.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl FjallStore {
    /// Opens the store in `dir`, creating it if the directory holds no store yet, and
    /// discards the paged messages of the previous run. Fails if another process has it
    /// open, if it was written in another format, or if any metadata record or reference
    /// count is corrupt.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<FjallStore, StoreError> {
        let (engine, format) = Engine::open(dir, options, true)?;
        let mut store = FjallStore {
            dir: dir.to_path_buf(),
            options,
            engine: Some(engine),
            quarantined_shared: Default::default(),
            catalog: Catalog::default(),
            shared: HashMap::new(),
            gc: BTreeMap::new(),
            gc_keys_per_sync: GC_KEYS_PER_SYNC,
            paged_floor: HashMap::new(),
            paged_written: false,
            failed: None,
            writes: 0,
            synced_writes: 0,
            reserve: reserve::Reserve::new(dir, options.reserve_bytes),
            installing: None,
        };
        if format.is_none() {
            store.initialise()?;
        }
        store.load_state()?;
        if let Err(e) = store.reserve.restore() {
            // A disk already full at start: the first write that fails releases nothing,
            // and the broker refuses publishes until there is room.
            tracing::warn!(error = %e, "cannot set aside the store's space reserve");
        }
        Ok(store)
    }

    /// Loads what the store keeps in memory: the catalog, the shared message counts, the
    /// garbage left by deleted queues and the write counter.
    fn load_state(&mut self) -> Result<(), StoreError> {
        self.load_catalog()?;
        self.load_refs()?;
        // Deleted queue ids may have stale keys left from the last run.
        self.gc.clear();
        for id in self.catalog.generation_ids() {
            self.gc.insert(id, GcTask::default());
        }
        self.paged_floor.clear();
        let writes = self
            .keyspace(Space::Meta)
            .get(record::WRITES_KEY)
            .map_err(|e| self.read_error(Space::Meta, Some(record::WRITES_KEY), e))?;
        self.writes = match writes {
            Some(value) => record::decode_counter(&value)
                .map_err(|e| self.corrupt(Space::Meta, record::WRITES_KEY, e))?,
            None => 0,
        };
        Ok(())
    }

    fn engine(&self) -> &Engine {
        self.engine
            .as_ref()
            .expect("the store is used only while its database is open")
    }

    fn db(&self) -> &Database {
        &self.engine().db
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        let e = self.engine();
        match space {
            Space::Meta => &e.meta,
            Space::Messages => &e.messages,
            Space::Refs => &e.refs,
            Space::Entries => &e.entries,
            Space::Bodies => &e.bodies,
            Space::Paged => &e.paged,
        }
    }

    /// Writes the format version key of a new store, after checking that the directory
    /// holds no data of a store that lost it.
    fn initialise(&mut self) -> Result<(), StoreError> {
        let key = record::FORMAT_KEY;
        for space in Space::ALL {
            let empty = self
                .keyspace(space)
                .is_empty()
                .map_err(|e| self.read_error(space, None, e))?;
            if !empty {
                return Err(self.corrupt(
                    Space::Meta,
                    key,
                    format!("missing, but keyspace `{}` holds data", space.name()),
                ));
            }
        }
        let mut batch = self.db().batch();
        batch.insert(
            self.keyspace(Space::Meta),
            key,
            vec![record::FORMAT_VERSION],
        );
        batch
            .commit()
            .and_then(|()| self.db().persist(PersistMode::SyncAll))
            .map_err(|e| self.engine_error("cannot initialise a new store", e))
    }

    fn load_catalog(&mut self) -> Result<(), StoreError> {
        let mut catalog = Catalog::default();
        let mut last: Option<fjall::UserKey> = None;
        for item in self.keyspace(Space::Meta).iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Meta, last.as_deref(), e))?;
            if ![
                record::FORMAT_KEY,
                record::WRITES_KEY,
                record::APPLIED_KEY,
                record::MEMBERS_KEY,
            ]
            .contains(&&*key)
            {
                match catalog.load(&key, &value) {
                    Ok(()) => {}
                    // A vhost, user, permission, exchange, queue or binding that does not
                    // decode is set aside; counters and generations must decode.
                    Err(e) if record::can_set_aside(&key) => {
                        self.set_aside(Space::Meta, &key, &value, &e)?;
                    }
                    Err(e) => return Err(self.corrupt(Space::Meta, &key, e)),
                }
            }
            last = Some(key);
        }
        self.catalog = catalog;
        Ok(())
    }

    fn load_refs(&mut self) -> Result<(), StoreError> {
        let mut shared = HashMap::new();
        let mut last: Option<fjall::UserKey> = None;
        for item in self.keyspace(Space::Refs).iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Refs, last.as_deref(), e))?;
            let id =
                entry::shared_id_of_key(&key).map_err(|e| self.corrupt(Space::Refs, &key, e))?;
            let (refs, body_len) =
                entry::decode_refs(&value).map_err(|e| self.corrupt(Space::Refs, &key, e))?;
            shared.insert(id, SharedCount { refs, body_len });
            last = Some(key);
        }
        self.shared = shared;
        Ok(())
    }

    /// Empties `paged` if anything was paged since it was last emptied.
    fn discard_paged(&mut self) -> Result<(), StoreError> {
        if self.paged_written {
            let paged = fresh_keyspace(self.db(), &self.dir, Space::Paged)?;
            if let Some(engine) = self.engine.as_mut() {
                engine.paged = paged;
            }
            self.paged_written = false;
        }
        self.paged_floor.clear();
        Ok(())
    }

    /// Makes everything written durable, whatever the sync policy: a cluster member's Raft
    /// log drops the entries its store holds, so the store must hold them on the disk, not
    /// only in the page cache.
    pub fn sync_all(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        self.db()
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.fail(self.engine_error("cannot sync the journal", e)))?;
        self.synced_writes = self.writes;
        Ok(())
    }

    /// The Raft log index and term of the last entry applied to this store, when it is a
    /// cluster member's ((0, 0) before the first).
    pub fn applied(&self) -> Result<(u64, u64), StoreError> {
        let value = self
            .keyspace(Space::Meta)
            .get(record::APPLIED_KEY)
            .map_err(|e| self.read_error(Space::Meta, Some(record::APPLIED_KEY), e))?;
        match value {
            Some(v) => record::decode_applied(&v)
                .map_err(|e| self.corrupt(Space::Meta, record::APPLIED_KEY, e)),
            None => Ok((0, 0)),
        }
    }

    /// The cluster's members as this member's store last recorded them (see
    /// [`FjallStore::write_applied`]), when it did.
    pub fn members(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .keyspace(Space::Meta)
            .get(record::MEMBERS_KEY)
            .map_err(|e| self.read_error(Space::Meta, Some(record::MEMBERS_KEY), e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Applies a committed Raft entry's batch (not yet durable), recording its index and
    /// term in the same atomic write ([`FjallStore::applied`]), and the cluster's members
    /// when the entry changed them (or set the first).
    pub fn write_applied(
        &mut self,
        ops: &[StoreOp],
        index: u64,
        term: u64,
        members: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut staged = Staged::default();
        staged.put(
            Space::Meta,
            record::APPLIED_KEY.to_vec(),
            record::encode_applied(index, term),
        );
        if let Some(members) = members {
            staged.put(Space::Meta, record::MEMBERS_KEY.to_vec(), members.to_vec());
        }
        self.write_staged(ops, staged)
    }

    fn write_staged(&mut self, ops: &[StoreOp], mut staged: Staged) -> Result<(), StoreError> {
        self.usable()?;
        staged.put(
            Space::Meta,
            record::WRITES_KEY.to_vec(),
            record::encode_counter(self.writes + 1),
        );
        let mut dropped = Vec::new();
        for op in ops {
            if contents::is_content(op) {
                self.apply_content(op, &mut staged)
                    .map_err(|e| self.fail(e))?;
                continue;
            }
            self.catalog.apply(op, &mut staged, &mut dropped);
            for id in dropped.drain(..) {
                self.queue_dropped(id);
            }
        }
        self.commit(staged, "cannot write a batch")
            .map_err(|e| self.fail(e))?;
        self.writes += 1;
        Ok(())
    }

    /// Commits one batch of staged writes.
    fn commit(&self, staged: Staged, what: &str) -> Result<(), StoreError> {
        if staged.is_empty() {
            return Ok(());
        }
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.db().clone(), staged.len());
        for ((space, key), value) in staged.into_writes() {
            // fjall panics on a longer key. The broker bounds every name a key holds, so
            // none is this long; if one were, the batch is refused (and the store fails as
            // on a write error) rather than the node ending.
            if key.len() > MAX_KEY_BYTES {
                return Err(StoreError::new(
                    super::StoreErrorKind::Other,
                    format!(
                        "store in {}: {what}: a key of {} bytes in {space:?}, over the {MAX_KEY_BYTES}-byte limit",
                        self.dir.display(),
                        key.len()
                    ),
                ));
            }
            let keyspace = self.keyspace(space);
            match value {
                Some(value) => batch.insert(keyspace, key, value),
                None => batch.remove(keyspace, key),
            }
        }
        batch.commit().map_err(|e| self.engine_error(what, e))
    }

    /// Generations only grow, and one is forgotten only when no key carries it, so a key
    /// newer than its queue id's generation means a lost or damaged `meta` record.
    fn check_generation(
        &self,
        space: Space,
        key: &[u8],
        found: u64,
        current: u64,
    ) -> Result<(), StoreError> {
        if found > current {
            return Err(self.corrupt(
                space,
                key,
                format!("key of generation {found}, but its queue id is at generation {current}"),
            ));
        }
        Ok(())
    }

    fn usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            None => Ok(()),
            // The same kind as the failure: the store needs a reopen, as it did then.
            Some(why) => Err(StoreError::new(
                super::StoreErrorKind::Io,
                format!(
                    "the store in {} refuses work after an earlier failure: {why}",
                    self.dir.display()
                ),
            )),
        }
    }

    /// Records that the store may no longer be written until it is reopened, and returns
    /// the error. A failure for lack of space gives up the space reserve, so that the
    /// writes made while publishers are refused have room.
    fn fail(&mut self, e: StoreError) -> StoreError {
        // fjall reports a failed background flush only as a refusal of later writes; on a
        // file system with no room left, lack of space is what it met.
        let e = if e.kind() == super::StoreErrorKind::Io
            && reserve::free_bytes(&self.dir).is_some_and(|free| free < reserve::NEARLY_FULL_BYTES)
        {
            StoreError::new(super::StoreErrorKind::NoSpace, e.message())
        } else {
            e
        };
        self.failed = Some(e.message().to_string());
        if e.kind() == super::StoreErrorKind::NoSpace && self.reserve.release() {
            tracing::warn!(dir = %self.dir.display(), "the disk is full: released the store's space reserve");
        }
        e
    }

    fn corrupt(&self, space: Space, key: &[u8], what: impl fmt::Display) -> StoreError {
        StoreError::other(format!(
            "corrupt store in {}: keyspace `{}`, key {}: {what}",
            self.dir.display(),
            space.name(),
            describe_key(space, key)
        ))
    }

    fn read_error(&self, space: Space, key: Option<&[u8]>, e: fjall::Error) -> StoreError {
        let at = key
            .map(|k| format!(", key {}", describe_key(space, k)))
            .unwrap_or_default();
        engine_failure(
            &e,
            format!(
                "cannot read the store in {}: keyspace `{}`{at}: {e}",
                self.dir.display(),
                space.name()
            ),
        )
    }

    /// A failed read during a scan; the key that failed is unknown, so name the last one
    /// read.
    fn scan_error(&self, space: Space, last: Option<&[u8]>, e: fjall::Error) -> StoreError {
        let at = match last {
            Some(k) => format!("after key {}", describe_key(space, k)),
            None => "at its first key".to_string(),
        };
        engine_failure(
            &e,
            format!(
                "cannot read the store in {}: keyspace `{}`, {at}: {e}",
                self.dir.display(),
                space.name()
            ),
        )
    }

    fn engine_error(&self, what: &str, e: fjall::Error) -> StoreError {
        engine_failure(&e, format!("store in {}: {what}: {e}", self.dir.display()))
    }
}

impl Store for FjallStore {
    fn recover(&mut self, head_limit: crate::store::HeadLimit) -> Result<Recovered, StoreError> {
        self.usable()?;
        self.recover_all(head_limit).map_err(|e| self.fail(e))
    }

    fn load(
        &mut self,
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        self.usable()?;
        self.load_queue(queue, from_seq, max, max_bytes)
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.write_staged(ops, Staged::default())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        let mode = match self.options.sync {
            SyncPolicy::Batch => PersistMode::SyncData,
            SyncPolicy::None => PersistMode::Buffer,
        };
        self.db()
            .persist(mode)
            .map_err(|e| self.fail(self.engine_error("cannot sync the journal", e)))?;
        self.synced_writes = self.writes;
        // After the persist, so that the sweep never delays a confirm; its deletions are
        // made durable by the next sync.
        if !self.gc.is_empty() {
            self.collect_garbage(self.gc_keys_per_sync)
                .map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<usize, StoreError> {
        if let Some(staging) = &self.installing {
            return Err(StoreError::other(format!(
                "the store in {} was being replaced by the snapshot staged in {}: it must be \
                 installed again, not reopened half replaced",
                self.dir.display(),
                staging.display()
            )));
        }
        // fjall locks its directory: the failed database must be closed first. Dropping
        // it flushes what its journal buffered, as a crash would have left it at best.
        self.engine = None;
        self.failed = Some("reopening after a failure".into());
        let (engine, format) = Engine::open(&self.dir, self.options, false)?;
        self.engine = Some(engine);
        if format.is_none() {
            return Err(self.corrupt(Space::Meta, record::FORMAT_KEY, "missing after a reopen"));
        }
        self.load_state()?;
        // A restarted broker would find every paged message gone; this one still refers
        // to them, so they stay, and a later `recover` discards them.
        self.paged_written = true;
        if self.writes < self.synced_writes {
            return Err(self.corrupt(
                Space::Meta,
                record::WRITES_KEY,
                format!(
                    "{} batches written, but {} were synced before the failure",
                    self.writes, self.synced_writes
                ),
            ));
        }
        // What the journal gave back is made durable before it is counted as held.
        self.db()
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.engine_error("cannot sync the reopened journal", e))?;
        let held = self.writes - self.synced_writes;
        self.synced_writes = self.writes;
        self.failed = None;
        Ok(usize::try_from(held).unwrap_or(usize::MAX))
    }

    fn sync_gap_ms(&self) -> u64 {
        match self.options.sync {
            SyncPolicy::Batch => self.options.sync_gap_ms,
            // Nothing to wait for: a sync only hands the journal to the OS.
            SyncPolicy::None => 0,
        }
    }

    fn ready(&mut self) -> bool {
        if self.failed.is_some() {
            return false;
        }
        // As much space again as the reserve must be free besides it, or the first
        // publishes would fill the disk again at once. The reserve is set aside only then,
        // so that until then the space stays for acks and paging.
        let wanted = self.options.reserve_bytes;
        let free = reserve::free_bytes(&self.dir);
        if self.reserve.is_held() {
            return free.is_none_or(|free| free >= wanted);
        }
        free.is_none_or(|free| free >= wanted.saturating_mul(2)) && self.reserve.restore().is_ok()
    }
}

/// Checks the format key's value against the version this build reads.
fn check_version(dir: &Path, value: &[u8]) -> Result<(), StoreError> {
    let corrupt = |what: String| {
        StoreError::other(format!(
            "corrupt store in {}: keyspace `meta`, key {}: {what}",
            dir.display(),
            describe_key(Space::Meta, record::FORMAT_KEY)
        ))
    };
    let version = record::decode_format(value).map_err(|e| corrupt(e.to_string()))?;
    if version != record::FORMAT_VERSION {
        return Err(corrupt(format!(
            "the store has format version {version}; this build reads version {}",
            record::FORMAT_VERSION
        )));
    }
    Ok(())
}

/// Opens `space` empty: deletes it first if it exists.
fn fresh_keyspace(db: &Database, dir: &Path, space: Space) -> Result<Keyspace, StoreError> {
    if db.keyspace_exists(space.name()) {
        let old = db
            .keyspace(space.name(), || keyspace_options(space))
            .map_err(|e| keyspace_error(dir, space, e))?;
        db.delete_keyspace(old)
            .map_err(|e| keyspace_error(dir, space, e))?;
    }
    db.keyspace(space.name(), || keyspace_options(space))
        .map_err(|e| keyspace_error(dir, space, e))
}

fn keyspace_error(dir: &Path, space: Space, e: fjall::Error) -> StoreError {
    engine_failure(
        &e,
        format!(
            "cannot open keyspace `{}` of the store in {}: {e}",
            space.name(),
            dir.display()
        ),
    )
}

fn open_error(dir: &Path, e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Locked => StoreError::other(format!(
            "cannot open the store in {}: another process holds its lock file {}",
            dir.display(),
            dir.join("lock").display()
        )),
        e => engine_failure(
            &e,
            format!("cannot open the store in {}: {e}", dir.display()),
        ),
    }
}

/// A fjall error as a [`StoreError`] of the right kind: fjall wraps the operating system's
/// error in its own (and lsm-tree's) `Io` variants; `Poisoned` means an earlier write or a
/// background flush failed, for a reason fjall logged but does not return.
fn engine_failure(e: &fjall::Error, message: String) -> StoreError {
    use super::StoreErrorKind;
    let kind = match e {
        fjall::Error::Io(io) | fjall::Error::Storage(fjall::LsmError::Io(io)) => {
            super::io_error_kind(io)
        }
        fjall::Error::Poisoned => StoreErrorKind::Io,
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, message)
}

/// A key as an error message shows it.
fn describe_key(space: Space, key: &[u8]) -> String {
    let hex: String = key.iter().take(64).map(|b| format!("{b:02x}")).collect();
    let more = if key.len() > 64 { "…" } else { "" };
    let meaning = match space {
        Space::Messages | Space::Refs => entry::shared_id_of_key(key)
            .map(|id| format!(" (shared message {id})"))
            .unwrap_or_default(),
        Space::Entries | Space::Bodies | Space::Paged => entry::decode_content_key(key)
            .map(|(q, g, s)| format!(" (queue {q}, generation {g}, seq {s})"))
            .unwrap_or_default(),
        Space::Meta => {
            let text: String = key
                .iter()
                .take(64)
                .map(|&b| {
                    if b.is_ascii_graphic() {
                        char::from(b)
                    } else {
                        '.'
                    }
                })
                .collect();
            format!(" ({text:?})")
        }
    };
    format!("0x{hex}{more}{meaning}")
}
