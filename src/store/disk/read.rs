//! Reading queue contents back: [`crate::store::Store::load`], and the decoding of one
//! entry that recovery shares.

use std::collections::HashMap;
use std::sync::Arc;

use fjall::UserKey;

use crate::proto::command::Message;
use crate::store::{LoadedEntry, StoreError, load_cost, load_may_take};

use super::catalog::Space;
use super::entry::{self, EntryHeader, Payload};
use super::{FjallStore, record};

/// Shared messages already decoded, by id: a message in several queues is read once.
pub(super) type SharedCache = HashMap<u64, Arc<Message>>;

/// An entry read back for the broker.
pub(super) enum Loaded {
    /// The entry and its message.
    Entry(LoadedEntry),
    /// It refers to a shared message that is gone (or was set aside): skipped, as
    /// `MemoryState` skips it.
    Gone,
    /// Its message does not decode; the caller sets the entry aside.
    Undecodable(String),
}

impl FjallStore {
    /// Up to `max` entries of the queue's current generation from `from_seq`, durable and
    /// paged merged in position order (a durable entry first on a tie, as in
    /// `MemoryState::load`).
    pub(super) fn load_queue(
        &self,
        queue: u64,
        from_seq: u64,
        max: usize,
        max_bytes: u64,
    ) -> Result<Vec<LoadedEntry>, StoreError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let to = self.current_key(queue, u64::MAX);
        let mut durable = self
            .keyspace(Space::Entries)
            .range(self.current_key(queue, from_seq)..=to);
        let floor = self.paged_floor.get(&queue).copied().unwrap_or(0);
        let mut paged = self
            .keyspace(Space::Paged)
            .range(self.current_key(queue, from_seq.max(floor))..=to);
        let mut next_durable = self.next_item(Space::Entries, &mut durable, None)?;
        let mut next_paged = self.next_item(Space::Paged, &mut paged, None)?;
        let mut cache = SharedCache::new();
        // What the entries read so far weigh (the first `counted` of them).
        let mut bytes = 0;
        let mut counted = 0;
        loop {
            bytes += out[counted..].iter().map(load_cost).sum::<u64>();
            counted = out.len();
            if !load_may_take(out.len(), bytes, max, max_bytes) {
                break;
            }
            let take_durable = match (&next_durable, &next_paged) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(d), Some(p)) => d.1 <= p.1,
            };
            if take_durable {
                let Some((key, seq, value)) = next_durable.take() else {
                    break;
                };
                match entry::decode_entry(&value) {
                    Err(e) => self.set_aside(Space::Entries, &key, &value, &e)?,
                    Ok(header) => match self.loaded_entry(&key, seq, &header, &mut cache)? {
                        Loaded::Entry(e) => out.push(e),
                        Loaded::Gone => {}
                        Loaded::Undecodable(why) => {
                            self.set_aside(Space::Entries, &key, &value, &why)?
                        }
                    },
                }
                next_durable = self.next_item(Space::Entries, &mut durable, Some(&key))?;
            } else {
                let Some((key, seq, value)) = next_paged.take() else {
                    break;
                };
                match entry::decode_paged(&value) {
                    Ok((message, expires_at_ms)) => out.push(LoadedEntry {
                        seq,
                        message: Arc::new(message),
                        shared: None,
                        durable: false,
                        expires_at_ms,
                    }),
                    Err(e) => self.set_aside(Space::Paged, &key, &value, &e)?,
                }
                next_paged = self.next_item(Space::Paged, &mut paged, Some(&key))?;
            }
        }
        Ok(out)
    }

    /// The next key, its position and value from a scan of content keys.
    fn next_item(
        &self,
        space: Space,
        iter: &mut fjall::Iter,
        last: Option<&[u8]>,
    ) -> Result<Option<(UserKey, u64, fjall::UserValue)>, StoreError> {
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (key, value) = item
            .into_inner()
            .map_err(|e| self.scan_error(space, last, e))?;
        let (_, _, seq) =
            entry::decode_content_key(&key).map_err(|e| self.corrupt(space, &key, e))?;
        Ok(Some((key, seq, value)))
    }

    /// An entry as the broker reads it back, decoding its message.
    pub(super) fn loaded_entry(
        &self,
        key: &[u8],
        seq: u64,
        header: &EntryHeader<'_>,
        cache: &mut SharedCache,
    ) -> Result<Loaded, StoreError> {
        let (message, shared) = match header.payload {
            Payload::Shared(id) => match self.shared_message(id, cache)? {
                Some(m) => (m, Some(id)),
                None => return Ok(Loaded::Gone),
            },
            Payload::Inline { body_len, message } => {
                match entry::decode_inline(message, body_len) {
                    Ok(m) => (Arc::new(m), None),
                    Err(e) => return Ok(Loaded::Undecodable(e.to_string())),
                }
            }
            Payload::Apart { body_len } => {
                let value = self
                    .keyspace(Space::Bodies)
                    .get(key)
                    .map_err(|e| self.read_error(Space::Bodies, Some(key), e))?;
                let Some(value) = value else {
                    return Ok(Loaded::Undecodable(
                        "its message is missing from `bodies`".into(),
                    ));
                };
                match entry::decode_apart(&value, body_len) {
                    Ok(m) => (Arc::new(m), None),
                    Err(e) => return Ok(Loaded::Undecodable(e.to_string())),
                }
            }
        };
        Ok(Loaded::Entry(LoadedEntry {
            seq,
            message,
            shared,
            durable: true,
            expires_at_ms: header.expires_at_ms,
        }))
    }

    /// A shared message, if it is still stored.
    fn shared_message(
        &self,
        id: u64,
        cache: &mut SharedCache,
    ) -> Result<Option<Arc<Message>>, StoreError> {
        if !self.shared.contains_key(&id) || self.shared_set_aside(id) {
            return Ok(None);
        }
        if let Some(m) = cache.get(&id) {
            return Ok(Some(m.clone()));
        }
        let key = entry::shared_key(id);
        let value = self
            .keyspace(Space::Messages)
            .get(key)
            .map_err(|e| self.read_error(Space::Messages, Some(&key), e))?
            .ok_or_else(|| self.corrupt(Space::Messages, &key, "missing, but `refs` counts it"))?;
        let m = match record::decode_message_arc(&value) {
            Ok(m) => m,
            Err(e) => {
                self.set_aside(Space::Messages, &key, &value, &e)?;
                return Ok(None);
            }
        };
        cache.insert(id, m.clone());
        Ok(Some(m))
    }
}
