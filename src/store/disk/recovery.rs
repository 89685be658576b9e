//! [`crate::store::Store::recover`]: one scan of `entries` that sizes every queue, decodes
//! only the head of each, sweeps stale generations, and reconciles shared message counts.

use std::collections::HashMap;

use crate::store::{HeadBudget, HeadLimit, Recovered, RecoveredQueue, StoreError};

use super::catalog::Space;
use super::entry::{self, EntryHeader, Payload};
use super::read::{Loaded, SharedCache};
use super::{FjallStore, SharedCount, record};

/// Most writes in one batch of the sweep that recovery does.
const RECOVERY_SWEEP_BATCH_KEYS: usize = 10_000;

impl FjallStore {
    /// Reads back everything durable, each queue's decoded head within `head_limit`.
    pub(super) fn recover_all(&mut self, head_limit: HeadLimit) -> Result<Recovered, StoreError> {
        self.discard_paged()?;
        let mut sweep = Sweeper::new(self.db().batch());
        let scan = self.scan_entries(head_limit, &mut sweep)?;
        // Queue ids whose keys are all gone: their generation can restart at 0.
        let unused: Vec<u64> = self
            .catalog
            .generation_ids()
            .filter(|id| scan.generation_in_use.binary_search(id).is_err())
            .collect();
        // After the scan, every entry left is live, and the broker has no publish in
        // flight: each shared message has exactly as many references as entries name it.
        let mut counts: Vec<(u64, Option<SharedCount>)> = Vec::new();
        for (&id, count) in &self.shared {
            let refs = scan.references.get(&id).copied().unwrap_or(0);
            if refs == count.refs {
                continue;
            }
            let key = entry::shared_key(id).to_vec();
            if refs == 0 {
                sweep.write(self, Space::Messages, key.clone(), None)?;
                sweep.write(self, Space::Refs, key, None)?;
                counts.push((id, None));
            } else {
                let value = entry::encode_refs(refs, count.body_len);
                sweep.write(self, Space::Refs, key, Some(value))?;
                counts.push((
                    id,
                    Some(SharedCount {
                        refs,
                        body_len: count.body_len,
                    }),
                ));
            }
        }
        // Generation records go last, after every stale entry of their id.
        for &id in &unused {
            sweep.write(self, Space::Meta, record::generation_key(id), None)?;
        }
        sweep.finish(self)?;
        for id in unused {
            self.catalog.forget_generation(id);
        }
        for (id, count) in counts {
            match count {
                Some(count) => self.shared.insert(id, count),
                None => self.shared.remove(&id),
            };
        }
        // Recovery swept everything: no deleted queue has keys left.
        self.gc.clear();
        Ok(self.catalog.recovered(scan.contents))
    }

    /// Reads every entry's header in (queue, generation, seq) order: live entries of
    /// existing queues are counted (and decoded within the head); stale ones are swept.
    fn scan_entries(&self, head_limit: HeadLimit, sweep: &mut Sweeper) -> Result<Scan, StoreError> {
        let mut scan = Scan::default();
        let mut head = HeadReader::new(head_limit);
        let mut last: Option<fjall::UserKey> = None;
        for item in self.keyspace(Space::Entries).iter() {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Entries, last.as_deref(), e))?;
            let decoded = entry::decode_content_key(&key)
                .and_then(|k| entry::decode_entry(&value).map(|h| (k, h)));
            let ((queue, generation, seq), header) = match decoded {
                Ok(d) => d,
                Err(e) => {
                    self.set_aside(Space::Entries, &key, &value, &e)?;
                    continue;
                }
            };
            let current = self.catalog.generation(queue);
            self.check_generation(Space::Entries, &key, generation, current)?;
            last = Some(key.clone());
            if generation != current {
                sweep.write(self, Space::Entries, key.to_vec(), None)?;
                if header.apart() {
                    sweep.write(self, Space::Bodies, key.to_vec(), None)?;
                }
                continue;
            }
            scan.note_live(queue, current, &header);
            let live = LiveEntry {
                key: &key,
                value: &value,
                queue,
                seq,
                header,
            };
            self.recover_entry(&mut scan, &mut head, &live)?;
        }
        Ok(scan)
    }

    /// Counts a live entry into its queue's contents, and decodes it while the queue's head
    /// still grows. An entry of a missing queue is kept (as `MemoryState` keeps it), and
    /// counts as a reference, but is not recovered.
    fn recover_entry(
        &self,
        scan: &mut Scan,
        head: &mut HeadReader,
        live: &LiveEntry<'_>,
    ) -> Result<(), StoreError> {
        if !self.catalog.has_queue(live.queue) {
            return Ok(());
        }
        let body_len = match live.header.payload {
            Payload::Shared(id) => match self.shared.get(&id) {
                Some(count) => count.body_len,
                // Its shared message is gone: skipped, as `MemoryState` skips it.
                None => return Ok(()),
            },
            Payload::Inline { body_len, .. } | Payload::Apart { body_len } => body_len,
        };
        let q = head.contents_of(&mut scan.contents, live.queue);
        q.count += 1;
        q.body_bytes += body_len;
        q.next_seq = live.seq.saturating_add(1);
        if !head.admits(q, body_len) {
            return Ok(());
        }
        match self.loaded_entry(live.key, live.seq, &live.header, &mut head.cache)? {
            Loaded::Entry(e) => {
                head.bytes += HeadLimit::cost(body_len);
                q.head.push(e);
            }
            Loaded::Gone => {}
            Loaded::Undecodable(why) => {
                q.count -= 1;
                q.body_bytes -= body_len;
                if let Some(id) = live.header.shared()
                    && let Some(refs) = scan.references.get_mut(&id)
                {
                    *refs = refs.saturating_sub(1);
                }
                self.set_aside(Space::Entries, live.key, live.value, &why)?;
            }
        }
        Ok(())
    }
}

/// An entry of the current generation of its queue id, as the scan read it.
struct LiveEntry<'a> {
    key: &'a [u8],
    value: &'a [u8],
    queue: u64,
    seq: u64,
    header: EntryHeader<'a>,
}

/// The decoding of queue heads during the scan: the budget shared by every queue, the
/// current queue's head bytes and whether its head still grows, and the shared messages
/// read so far.
struct HeadReader {
    budget: HeadBudget,
    bytes: u64,
    open: bool,
    cache: SharedCache,
}

impl HeadReader {
    fn new(limit: HeadLimit) -> Self {
        HeadReader {
            budget: HeadBudget::new(limit),
            bytes: 0,
            open: true,
            cache: SharedCache::new(),
        }
    }

    /// The contents of `queue`, the last in `contents` or a new one (whose head starts
    /// empty).
    fn contents_of<'a>(
        &mut self,
        contents: &'a mut Vec<RecoveredQueue>,
        queue: u64,
    ) -> &'a mut RecoveredQueue {
        if contents.last().is_none_or(|q| q.queue != queue) {
            contents.push(RecoveredQueue {
                queue,
                ..RecoveredQueue::default()
            });
            self.bytes = 0;
            self.open = true;
        }
        contents.last_mut().expect("present or just pushed")
    }

    /// Whether the next entry of `q`, of `body_len` bytes, goes in its head; once one does
    /// not, the head is closed.
    fn admits(&mut self, q: &RecoveredQueue, body_len: u64) -> bool {
        self.open = self.open && self.budget.take(q.head.len(), self.bytes, body_len);
        self.open
    }
}

/// What the scan of `entries` found.
#[derive(Debug, Default)]
struct Scan {
    /// Queues with live entries, by id.
    contents: Vec<RecoveredQueue>,
    /// Queue ids at a generation above 0 that have live entries, ascending.
    generation_in_use: Vec<u64>,
    /// Live entries referring to each shared message.
    references: HashMap<u64, u32>,
}

impl Scan {
    /// Notes a live entry of `queue` (at generation `current`): its generation is in use,
    /// and its shared message, if any, has one more reference.
    fn note_live(&mut self, queue: u64, current: u64, header: &EntryHeader<'_>) {
        if current != 0 && self.generation_in_use.last() != Some(&queue) {
            self.generation_in_use.push(queue);
        }
        if let Some(id) = header.shared() {
            let refs = self.references.entry(id).or_default();
            *refs = refs.saturating_add(1);
        }
    }
}

/// Writes made by recovery, committed in bounded batches (each key written once, so the
/// order fjall applies a batch's writes in never matters).
struct Sweeper {
    batch: fjall::OwnedWriteBatch,
}

impl Sweeper {
    fn new(batch: fjall::OwnedWriteBatch) -> Self {
        Sweeper { batch }
    }

    fn write(
        &mut self,
        store: &FjallStore,
        space: Space,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let keyspace = store.keyspace(space);
        match value {
            Some(value) => self.batch.insert(keyspace, key, value),
            None => self.batch.remove(keyspace, key),
        }
        if self.batch.len() >= RECOVERY_SWEEP_BATCH_KEYS {
            let full = std::mem::replace(&mut self.batch, store.db().batch());
            full.commit()
                .map_err(|e| store.engine_error("cannot write a recovery sweep batch", e))?;
        }
        Ok(())
    }

    fn finish(self, store: &FjallStore) -> Result<(), StoreError> {
        self.batch
            .commit()
            .map_err(|e| store.engine_error("cannot write a recovery sweep batch", e))
    }
}
