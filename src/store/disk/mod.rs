//! [`FjallStore`]: the durable [`Store`], on the fjall LSM storage engine.
//!
//! # Layout
//!
//! One fjall database in the data directory, with three keyspaces:
//!
//! - `meta`: small records keyed by a tag byte (see `record::tag`): vhosts, users,
//!   permissions, exchanges, queues (by id), bindings (by a digest of the whole record),
//!   queue-id generations, and the format version key. All of it is also kept in memory
//!   (`catalog::Catalog`), loaded when the store opens.
//! - `messages`: message id (u64 BE) to the encoded message. Each message is stored once,
//!   however many queues hold it. Values of 1 KiB or more (so every body of 1 KiB or more)
//!   go to fjall's blob files (key-value separation), so compactions of the tree move small
//!   pointers instead of bodies.
//! - `entries`: (queue id BE, seq BE) to message id, so one queue's entries are contiguous
//!   and iterate in queue order.
//!
//! Each [`Store::write`] is one fjall write batch, hence atomic; each [`Store::sync`] is one
//! journal persist. After a crash fjall's journal recovers a prefix of whole batches (a
//! torn last batch is dropped), which is exactly the [`Store`] contract.
//!
//! # Deleting a queue
//!
//! A queue can hold millions of entries, and deleting them in the writer's batch would
//! stall every publisher's confirm behind it. Instead each queue id has a *generation*
//! (0 unless the id was deleted before), every entry value records the generation it was
//! written in, and `DeleteQueue` just bumps the id's generation (one small `meta` write):
//! entries of older generations are garbage from then on and are never recovered, even if
//! the same queue id is declared again (the broker reuses ids after a restart).
//!
//! Garbage is collected in two places: [`Store::sync`] sweeps a bounded number of a
//! deleted queue's entries after each persist ([`GC_KEYS_PER_SYNC`]), and [`Store::recover`]
//! deletes every stale entry it meets while scanning (it reads them all anyway). A
//! generation record is removed once its queue id has no entries left, so the catalog does
//! not grow with every queue ever deleted. Recovery also deletes messages that no entry
//! refers to (left behind when a queue is deleted while one of its messages is unacked and
//! the broker stops before the ack): the broker rebuilds its reference counts from the
//! recovered entries, so it writes such a message again before any new entry uses its id.
//!
//! # Corruption
//!
//! A record that does not decode, or a read that fjall fails (a checksum mismatch in a
//! table, say), makes [`FjallStore::open`] or [`Store::recover`] fail with a
//! [`StoreError`] naming the data directory, the keyspace and the key. A corrupt store is
//! refused, never read as empty.

mod catalog;
mod record;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use crate::proto::command::Message;

use self::catalog::{Catalog, Space, Staged};
pub use super::SyncPolicy;
use super::{Recovered, RecoveredEntry, Store, StoreError, StoreOp};

/// Values of this many bytes or more are kept in fjall's blob files.
pub const BLOB_THRESHOLD_BYTES: u32 = 1024;

/// Most entry keys the garbage collector visits after one sync. It bounds the latency the
/// collector adds to the writer: a few milliseconds.
pub const GC_KEYS_PER_SYNC: usize = 4096;

/// Most deletions in one batch of the sweep that [`Store::recover`] does.
const RECOVERY_SWEEP_BATCH_KEYS: usize = 10_000;

/// Settings of a [`FjallStore`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOptions {
    /// What [`Store::sync`] guarantees.
    pub sync: SyncPolicy,
}

/// A deleted queue id whose stale entries are being swept.
#[derive(Debug, Clone, Copy, Default)]
struct GcTask {
    /// The next seq to look at.
    cursor: u64,
    /// An entry of the current generation was passed: the generation record stays.
    live_seen: bool,
    /// The id was enqueued to during the sweep (maybe behind the cursor): the generation
    /// record stays.
    touched: bool,
}

/// The durable [`Store`]: a fjall database in a data directory. See the module docs for
/// the layout.
pub struct FjallStore {
    dir: PathBuf,
    options: StoreOptions,
    db: Database,
    meta: Keyspace,
    messages: Keyspace,
    entries: Keyspace,
    catalog: Catalog,
    /// Deleted queue ids with entries possibly left, by id.
    gc: BTreeMap<u64, GcTask>,
    /// Entry keys swept after each sync ([`GC_KEYS_PER_SYNC`]; tests make it small).
    gc_keys_per_sync: usize,
    /// Why the store stopped accepting work: a failed write leaves the catalog ahead of the
    /// disk, so nothing more may be written.
    failed: Option<String>,
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

impl FjallStore {
    /// Opens the store in `dir`, creating it if the directory holds no store yet. Fails if
    /// another process has it open, if it was written in an unknown format, or if any
    /// metadata record is corrupt.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<FjallStore, StoreError> {
        let db = Database::builder(dir)
            // Batches stay in the journal's buffer until `sync`, which decides how far
            // they go (see `SyncPolicy`).
            .manual_journal_persist(true)
            .open()
            .map_err(|e| open_error(dir, e))?;
        let keyspace = |space: Space, options: fn() -> KeyspaceCreateOptions| {
            db.keyspace(space.name(), options).map_err(|e| {
                StoreError(format!(
                    "cannot open keyspace `{}` of the store in {}: {e}",
                    space.name(),
                    dir.display()
                ))
            })
        };
        let meta = keyspace(Space::Meta, KeyspaceCreateOptions::default)?;
        let messages = keyspace(Space::Messages, || {
            KeyspaceCreateOptions::default().with_kv_separation(Some(
                KvSeparationOptions::default().separation_threshold(BLOB_THRESHOLD_BYTES),
            ))
        })?;
        let entries = keyspace(Space::Entries, KeyspaceCreateOptions::default)?;
        let mut store = FjallStore {
            dir: dir.to_path_buf(),
            options,
            db,
            meta,
            messages,
            entries,
            catalog: Catalog::default(),
            gc: BTreeMap::new(),
            gc_keys_per_sync: GC_KEYS_PER_SYNC,
            failed: None,
        };
        store.check_format()?;
        store.load_catalog()?;
        Ok(store)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        match space {
            Space::Meta => &self.meta,
            Space::Messages => &self.messages,
            Space::Entries => &self.entries,
        }
    }

    /// Checks the format version key, writing it if the store is new.
    fn check_format(&mut self) -> Result<(), StoreError> {
        let key = record::FORMAT_KEY;
        let found = self
            .meta
            .get(key)
            .map_err(|e| self.read_error(Space::Meta, Some(key), e))?;
        match found {
            Some(value) => {
                let version =
                    record::decode_format(&value).map_err(|e| self.corrupt(Space::Meta, key, e))?;
                if version != record::FORMAT_VERSION {
                    return Err(self.corrupt(
                        Space::Meta,
                        key,
                        format!(
                            "the store has format version {version}; this build reads version {}",
                            record::FORMAT_VERSION
                        ),
                    ));
                }
                Ok(())
            }
            None => {
                for space in [Space::Meta, Space::Messages, Space::Entries] {
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
                let mut batch = self.db.batch();
                batch.insert(&self.meta, key, vec![record::FORMAT_VERSION]);
                batch
                    .commit()
                    .and_then(|()| self.db.persist(PersistMode::SyncAll))
                    .map_err(|e| self.engine_error("cannot initialise a new store", e))
            }
        }
    }

    fn load_catalog(&mut self) -> Result<(), StoreError> {
        let mut catalog = Catalog::default();
        let mut last: Option<fjall::UserKey> = None;
        for item in self.meta.iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Meta, last.as_deref(), e))?;
            if &*key != record::FORMAT_KEY {
                catalog
                    .load(&key, &value)
                    .map_err(|e| self.corrupt(Space::Meta, &key, e))?;
            }
            last = Some(key);
        }
        self.catalog = catalog;
        Ok(())
    }

    /// Every stored message, decoded, with a flag for "some live entry refers to it".
    fn load_messages(&self) -> Result<HashMap<u64, (Arc<Message>, bool)>, StoreError> {
        let mut messages = HashMap::new();
        let mut last: Option<fjall::UserKey> = None;
        for item in self.messages.iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Messages, last.as_deref(), e))?;
            let id = record::message_id_of_key(&key)
                .map_err(|e| self.corrupt(Space::Messages, &key, e))?;
            let message = record::decode_message_arc(&value)
                .map_err(|e| self.corrupt(Space::Messages, &key, e))?;
            messages.insert(id, (message, false));
            last = Some(key);
        }
        Ok(messages)
    }

    /// Reads every entry in (queue, seq) order: live entries of existing queues whose
    /// message exists are returned; entries of older generations are swept.
    fn recover_entries(
        &self,
        messages: &mut HashMap<u64, (Arc<Message>, bool)>,
        sweep: &mut Sweeper,
    ) -> Result<Vec<RecoveredEntry>, StoreError> {
        let mut entries = Vec::new();
        // Queue ids with a generation record that still have entries of that generation.
        let mut generation_in_use: Vec<u64> = Vec::new();
        let mut last: Option<fjall::UserKey> = None;
        for item in self.entries.iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Entries, last.as_deref(), e))?;
            let (queue, seq) = record::decode_entry_key(&key)
                .map_err(|e| self.corrupt(Space::Entries, &key, e))?;
            let (message_id, generation) =
                record::decode_entry(&value).map_err(|e| self.corrupt(Space::Entries, &key, e))?;
            let current = self.catalog.generation(queue);
            self.check_generation(&key, generation, current)?;
            if generation != current {
                sweep.remove(self, Space::Entries, key.to_vec())?;
                last = Some(key);
                continue;
            }
            if current != 0 && generation_in_use.last() != Some(&queue) {
                generation_in_use.push(queue);
            }
            last = Some(key);
            let Some((message, referenced)) = messages.get_mut(&message_id) else {
                continue;
            };
            // An entry of a missing queue is kept (as MemoryState keeps it), and so is the
            // message it names.
            *referenced = true;
            if self.catalog.has_queue(queue) {
                entries.push(RecoveredEntry {
                    queue,
                    seq,
                    message_id,
                    message: message.clone(),
                });
            }
        }
        // Queue ids whose entries are all gone: their generation can restart at 0.
        let unused: Vec<u64> = self
            .catalog
            .generation_ids()
            .filter(|id| generation_in_use.binary_search(id).is_err())
            .collect();
        for id in unused {
            sweep.remove(self, Space::Meta, record::generation_key(id))?;
            sweep.forget_generation(id);
        }
        Ok(entries)
    }

    /// Sweeps up to `budget` entry keys of deleted queues, in one batch.
    fn collect_garbage(&mut self, mut budget: usize) -> Result<(), StoreError> {
        let mut batch = self.db.batch();
        let mut forgotten = Vec::new();
        while budget > 0 {
            let Some((&queue, &task)) = self.gc.first_key_value() else {
                break;
            };
            let current = self.catalog.generation(queue);
            let mut task = task;
            let mut finished = true;
            for item in self.entries.range(record::entry_range(queue, task.cursor)) {
                if budget == 0 {
                    finished = false;
                    break;
                }
                budget -= 1;
                let (key, value) = item
                    .into_inner()
                    .map_err(|e| self.read_error(Space::Entries, None, e))?;
                let (_, seq) = record::decode_entry_key(&key)
                    .map_err(|e| self.corrupt(Space::Entries, &key, e))?;
                let (_, generation) = record::decode_entry(&value)
                    .map_err(|e| self.corrupt(Space::Entries, &key, e))?;
                self.check_generation(&key, generation, current)?;
                if generation == current {
                    task.live_seen = true;
                } else {
                    batch.remove(&self.entries, key);
                }
                match seq.checked_add(1) {
                    Some(next) => task.cursor = next,
                    None => break,
                }
            }
            if finished {
                self.gc.remove(&queue);
                if !task.live_seen && !task.touched {
                    batch.remove(&self.meta, record::generation_key(queue));
                    forgotten.push(queue);
                }
            } else {
                self.gc.insert(queue, task);
            }
        }
        batch.commit().map_err(|e| {
            self.fail(self.engine_error("cannot write a garbage-collection batch", e))
        })?;
        for queue in forgotten {
            self.catalog.forget_generation(queue);
        }
        Ok(())
    }

    /// Generations only grow, and one is forgotten only when no entry carries it, so an
    /// entry newer than its queue id's generation means a lost or damaged `meta` record.
    fn check_generation(&self, key: &[u8], entry: u64, current: u64) -> Result<(), StoreError> {
        if entry > current {
            return Err(self.corrupt(
                Space::Entries,
                key,
                format!("entry of generation {entry}, but its queue id is at generation {current}"),
            ));
        }
        Ok(())
    }

    fn usable(&self) -> Result<(), StoreError> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(StoreError(format!(
                "the store in {} refuses work after an earlier failure: {why}",
                self.dir.display()
            ))),
        }
    }

    /// Records that the store may no longer be written, and returns the error.
    fn fail(&mut self, e: StoreError) -> StoreError {
        self.failed = Some(e.0.clone());
        e
    }

    fn corrupt(&self, space: Space, key: &[u8], what: impl fmt::Display) -> StoreError {
        StoreError(format!(
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
        StoreError(format!(
            "cannot read the store in {}: keyspace `{}`{at}: {e}",
            self.dir.display(),
            space.name()
        ))
    }

    /// A failed read during a scan; the key that failed is unknown, so name the last one
    /// read.
    fn scan_error(&self, space: Space, last: Option<&[u8]>, e: fjall::Error) -> StoreError {
        let at = match last {
            Some(k) => format!("after key {}", describe_key(space, k)),
            None => "at its first key".to_string(),
        };
        StoreError(format!(
            "cannot read the store in {}: keyspace `{}`, {at}: {e}",
            self.dir.display(),
            space.name()
        ))
    }

    fn engine_error(&self, what: &str, e: fjall::Error) -> StoreError {
        StoreError(format!("store in {}: {what}: {e}", self.dir.display()))
    }
}

impl Store for FjallStore {
    fn recover(&mut self) -> Result<Recovered, StoreError> {
        self.usable()?;
        let mut messages = self.load_messages()?;
        let mut sweep = Sweeper::new(self.db.batch());
        let entries = self.recover_entries(&mut messages, &mut sweep)?;
        for (id, (_, referenced)) in &messages {
            if !referenced {
                sweep.remove(self, Space::Messages, record::message_key(*id).to_vec())?;
            }
        }
        let forgotten = sweep.finish(self)?;
        for id in forgotten {
            self.catalog.forget_generation(id);
        }
        // Recovery swept everything: no deleted queue has entries left.
        self.gc.clear();
        Ok(self.catalog.recovered(entries))
    }

    fn write(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.usable()?;
        let mut staged = Staged::default();
        let mut dropped = Vec::new();
        for op in ops {
            self.catalog.apply(op, &mut staged, &mut dropped);
            for id in dropped.drain(..) {
                // A new deletion restarts the sweep of that id: entries it had passed as
                // live are stale now.
                self.gc.insert(id, GcTask::default());
            }
            if let StoreOp::Enqueue { queue, .. } = op
                && let Some(task) = self.gc.get_mut(queue)
            {
                task.touched = true;
            }
        }
        let mut batch = fjall::OwnedWriteBatch::with_capacity(self.db.clone(), staged.len());
        for ((space, key), value) in staged.into_writes() {
            let keyspace = self.keyspace(space);
            match value {
                Some(value) => batch.insert(keyspace, key, value),
                None => batch.remove(keyspace, key),
            }
        }
        batch
            .commit()
            .map_err(|e| self.fail(self.engine_error("cannot write a batch", e)))
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.usable()?;
        let mode = match self.options.sync {
            SyncPolicy::Batch => PersistMode::SyncData,
            SyncPolicy::None => PersistMode::Buffer,
        };
        self.db
            .persist(mode)
            .map_err(|e| self.fail(self.engine_error("cannot sync the journal", e)))?;
        // After the persist, so that the sweep never delays a confirm; its deletions are
        // made durable by the next sync.
        if !self.gc.is_empty() {
            self.collect_garbage(self.gc_keys_per_sync)?;
        }
        Ok(())
    }
}

/// Deletions made by [`Store::recover`], committed in bounded batches. Generation records
/// are deleted in the last batch, after every stale entry of their id.
struct Sweeper {
    batch: fjall::OwnedWriteBatch,
    generations: Vec<u64>,
}

impl Sweeper {
    fn new(batch: fjall::OwnedWriteBatch) -> Self {
        Sweeper {
            batch,
            generations: Vec::new(),
        }
    }

    fn remove(&mut self, store: &FjallStore, space: Space, key: Vec<u8>) -> Result<(), StoreError> {
        self.batch.remove(store.keyspace(space), key);
        if self.batch.len() >= RECOVERY_SWEEP_BATCH_KEYS {
            let full = std::mem::replace(&mut self.batch, store.db.batch());
            full.commit()
                .map_err(|e| store.engine_error("cannot write a recovery sweep batch", e))?;
        }
        Ok(())
    }

    fn forget_generation(&mut self, id: u64) {
        self.generations.push(id);
    }

    /// Commits what is left; returns the ids whose generation record was deleted.
    fn finish(self, store: &FjallStore) -> Result<Vec<u64>, StoreError> {
        self.batch
            .commit()
            .map_err(|e| store.engine_error("cannot write a recovery sweep batch", e))?;
        Ok(self.generations)
    }
}

fn open_error(dir: &Path, e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Locked => StoreError(format!(
            "cannot open the store in {}: another process holds its lock file {}",
            dir.display(),
            dir.join("lock").display()
        )),
        e => StoreError(format!("cannot open the store in {}: {e}", dir.display())),
    }
}

/// A key as an error message shows it.
fn describe_key(space: Space, key: &[u8]) -> String {
    let hex: String = key.iter().take(64).map(|b| format!("{b:02x}")).collect();
    let more = if key.len() > 64 { "…" } else { "" };
    let meaning = match space {
        Space::Messages => record::message_id_of_key(key)
            .map(|id| format!(" (message {id})"))
            .unwrap_or_default(),
        Space::Entries => record::decode_entry_key(key)
            .map(|(q, s)| format!(" (queue {q}, seq {s})"))
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
