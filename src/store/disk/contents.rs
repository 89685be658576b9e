//! Queue contents on the write path: shared messages, entries and paged messages.
//!
//! Reads made while a batch is being staged see the batch's own earlier writes first
//! (`Staged`), then the committed store: fjall cannot read an uncommitted batch.

use fjall::Keyspace;

use crate::proto::command::Message;
use crate::store::{StoreError, StoreOp};

use super::catalog::{Space, Staged};
use super::entry::{self, ContentKey};
use super::{FjallStore, SharedCount, record};

/// Whether `op` changes queue contents (as opposed to catalog records).
pub fn is_content(op: &StoreOp) -> bool {
    matches!(
        op,
        StoreOp::PutShared { .. }
            | StoreOp::Enqueue { .. }
            | StoreOp::Dequeue { .. }
            | StoreOp::PurgeFrom { .. }
            | StoreOp::PageOut { .. }
            | StoreOp::DropPaged { .. }
    )
}

impl FjallStore {
    /// The content key of a position in a queue id's current generation.
    pub(super) fn current_key(&self, queue: u64, seq: u64) -> ContentKey {
        entry::content_key(queue, self.catalog.generation(queue), seq)
    }

    /// Stages the writes of one content op.
    pub(super) fn apply_content(
        &mut self,
        op: &StoreOp,
        staged: &mut Staged,
    ) -> Result<(), StoreError> {
        match op {
            StoreOp::PutShared { id, message, refs } => {
                self.put_shared(*id, message, *refs, staged);
            }
            StoreOp::Enqueue {
                queue,
                seq,
                body,
                expires_at_ms,
            } => {
                // The broker never enqueues at a position its queue incarnation holds, so
                // the key is new: nothing to release or to delete from `bodies`.
                let key = self.current_key(*queue, *seq);
                let (value, apart) = entry::encode_entry(body, *expires_at_ms);
                staged.put(Space::Entries, key.to_vec(), value);
                if let Some(body) = apart {
                    staged.put(Space::Bodies, key.to_vec(), body);
                }
            }
            StoreOp::Dequeue { queue, seq, .. } => {
                // The entry says whether it is shared; an entry already gone releases
                // nothing (as in `MemoryState`).
                let key = self.current_key(*queue, *seq);
                if let Some(value) = self.current_value(Space::Entries, &key, staged)? {
                    self.retire_entry(&key, &value, staged)?;
                }
            }
            StoreOp::PurgeFrom { queue, from_seq } => {
                self.purge_entries(*queue, *from_seq, staged)?;
                self.drop_paged(*queue, *from_seq, u64::MAX, staged)?;
            }
            StoreOp::PageOut {
                queue,
                seq,
                message,
                expires_at_ms,
            } => self.page_out(*queue, *seq, message, *expires_at_ms, staged),
            StoreOp::DropPaged { queue, up_to_seq } => {
                self.drop_paged(*queue, 0, *up_to_seq, staged)?;
                let floor = self.paged_floor.entry(*queue).or_default();
                *floor = (*floor).max(up_to_seq.saturating_add(1));
            }
            _ => debug_assert!(false, "not a content op: {op:?}"),
        }
        Ok(())
    }

    fn put_shared(&mut self, id: u64, message: &Message, refs: u32, staged: &mut Staged) {
        let key = entry::shared_key(id).to_vec();
        // A count of 0 or 1 means the same thing: the next release deletes it.
        let count = SharedCount {
            refs: refs.max(1),
            body_len: message.body_len(),
        };
        staged.put(
            Space::Messages,
            key.clone(),
            record::encode_message(message),
        );
        staged.put(
            Space::Refs,
            key,
            entry::encode_refs(count.refs, count.body_len),
        );
        self.shared.insert(id, count);
        self.catalog.note_shared(id, staged);
    }

    fn page_out(
        &mut self,
        queue: u64,
        seq: u64,
        message: &Message,
        expires_at_ms: Option<u64>,
        staged: &mut Staged,
    ) {
        let key = self.current_key(queue, seq);
        staged.put(
            Space::Paged,
            key.to_vec(),
            entry::encode_paged(message, expires_at_ms),
        );
        self.paged_written = true;
        if let Some(floor) = self.paged_floor.get_mut(&queue) {
            *floor = (*floor).min(seq);
        }
    }

    /// A queue id's contents became garbage: sweep them, and forget its paged floor (the
    /// new generation has no paged message at all).
    pub(super) fn queue_dropped(&mut self, id: u64) {
        self.gc.entry(id).or_default().reopen();
        self.paged_floor.remove(&id);
    }

    /// The value `key` holds once the staged writes apply.
    fn current_value(
        &self,
        space: Space,
        key: &[u8],
        staged: &Staged,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(value) = staged.get(space, key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
        let value = self
            .keyspace(space)
            .get(key)
            .map_err(|e| self.read_error(space, Some(key), e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Stages the deletion of an entry, with its body, releasing its shared message.
    pub(super) fn retire_entry(
        &mut self,
        key: &[u8],
        value: &[u8],
        staged: &mut Staged,
    ) -> Result<(), StoreError> {
        let header =
            entry::decode_entry(value).map_err(|e| self.corrupt(Space::Entries, key, e))?;
        staged.delete(Space::Entries, key.to_vec());
        if header.apart() {
            staged.delete(Space::Bodies, key.to_vec());
        }
        if let Some(id) = header.shared() {
            self.release(id, staged);
        }
        Ok(())
    }

    /// An entry referring to shared message `id` is gone.
    pub(super) fn release(&mut self, id: u64, staged: &mut Staged) {
        let key = entry::shared_key(id).to_vec();
        match self.shared.get_mut(&id) {
            Some(count) if count.refs > 1 => {
                count.refs -= 1;
                staged.put(
                    Space::Refs,
                    key,
                    entry::encode_refs(count.refs, count.body_len),
                );
            }
            Some(_) => {
                self.shared.remove(&id);
                staged.delete(Space::Messages, key.clone());
                staged.delete(Space::Refs, key);
            }
            // Only a broker bug names a message that is not there; nothing to release.
            None => {}
        }
    }

    /// Stages the deletion of the queue's current entries at `from_seq` or later.
    fn purge_entries(
        &mut self,
        queue: u64,
        from_seq: u64,
        staged: &mut Staged,
    ) -> Result<(), StoreError> {
        let from = self.current_key(queue, from_seq);
        let to = self.current_key(queue, u64::MAX);
        let in_batch = staged.range(Space::Entries, &from, &to);
        let entries: Keyspace = self.keyspace(Space::Entries).clone();
        let mut last: Option<fjall::UserKey> = None;
        for item in entries.range(from..=to) {
            let (key, value) = item
                .into_inner()
                .map_err(|e| self.scan_error(Space::Entries, last.as_deref(), e))?;
            // The batch's own write of this key, if any, decides below.
            if staged.get(Space::Entries, &key).is_none() {
                self.retire_entry(&key, &value, staged)?;
            }
            last = Some(key);
        }
        for (key, value) in in_batch {
            if let Some(value) = value {
                self.retire_entry(&key, &value, staged)?;
            }
        }
        Ok(())
    }

    /// Stages the deletion of the queue's current paged messages in `from_seq..=to_seq`.
    fn drop_paged(
        &mut self,
        queue: u64,
        from_seq: u64,
        to_seq: u64,
        staged: &mut Staged,
    ) -> Result<(), StoreError> {
        let floor = self.paged_floor.get(&queue).copied().unwrap_or(0);
        let from_seq = from_seq.max(floor);
        if from_seq > to_seq {
            return Ok(());
        }
        let from = self.current_key(queue, from_seq);
        let to = self.current_key(queue, to_seq);
        for (key, value) in staged.range(Space::Paged, &from, &to) {
            if value.is_some() {
                staged.delete(Space::Paged, key);
            }
        }
        let mut last: Option<fjall::UserKey> = None;
        for item in self.keyspace(Space::Paged).range(from..=to) {
            // The key alone: a paged value may sit in a blob file.
            let key = item
                .key()
                .map_err(|e| self.scan_error(Space::Paged, last.as_deref(), e))?;
            if staged.get(Space::Paged, &key).is_none() {
                staged.delete(Space::Paged, key.to_vec());
            }
            last = Some(key);
        }
        Ok(())
    }
}
