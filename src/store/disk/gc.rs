//! The garbage collector: after a sync, sweeps a bounded number of the keys that deleted
//! queues left behind (entries of older generations with their bodies and shared
//! references, and paged messages), then forgets generations that no key carries.

use std::ops::Bound;

use crate::store::StoreError;

use super::catalog::{Space, Staged};
use super::entry::{self, ContentKey};
use super::{FjallStore, record};

/// How far the sweep of one keyspace got for one queue id.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// The last key swept; `None` before the first.
    after: Option<ContentKey>,
    /// Every stale key up to the current generation was swept.
    done: bool,
}

/// A deleted queue id whose stale keys are being swept.
#[derive(Debug, Clone, Copy, Default)]
pub struct GcTask {
    entries: Cursor,
    paged: Cursor,
}

impl GcTask {
    /// The id was deleted again: its stale range grew, past where the sweep ended.
    pub fn reopen(&mut self) {
        self.entries.done = false;
        self.paged.done = false;
    }
}

impl FjallStore {
    /// Sweeps up to `budget` stale keys, in one batch.
    pub(super) fn collect_garbage(&mut self, mut budget: usize) -> Result<(), StoreError> {
        let mut staged = Staged::default();
        let mut forgotten = Vec::new();
        while budget > 0 {
            let Some((&queue, &task)) = self.gc.first_key_value() else {
                break;
            };
            let mut task = task;
            budget = self.sweep(
                queue,
                Space::Entries,
                &mut task.entries,
                budget,
                &mut staged,
            )?;
            if task.entries.done {
                budget = self.sweep(queue, Space::Paged, &mut task.paged, budget, &mut staged)?;
            }
            if !(task.entries.done && task.paged.done) {
                self.gc.insert(queue, task);
                break;
            }
            self.gc.remove(&queue);
            let current = self.catalog.generation(queue);
            if current != 0 && self.no_current_keys(queue, current)? {
                staged.delete(Space::Meta, record::generation_key(queue));
                forgotten.push(queue);
            }
        }
        self.commit(staged, "cannot write a garbage-collection batch")?;
        for queue in forgotten {
            self.catalog.forget_generation(queue);
            self.paged_floor.remove(&queue);
        }
        Ok(())
    }

    /// Sweeps the stale keys of one queue id in `space` from the cursor on; returns the
    /// budget left.
    fn sweep(
        &mut self,
        queue: u64,
        space: Space,
        cursor: &mut Cursor,
        mut budget: usize,
        staged: &mut Staged,
    ) -> Result<usize, StoreError> {
        let current = self.catalog.generation(queue);
        let start = match cursor.after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(entry::content_key(queue, 0, 0)),
        };
        let end = Bound::Excluded(entry::content_key(queue, current, 0));
        let keyspace = self.keyspace(space).clone();
        for item in keyspace.range::<ContentKey, _>((start, end)) {
            if budget == 0 {
                return Ok(0);
            }
            budget -= 1;
            let key = match space {
                Space::Entries => {
                    let (key, value) = item
                        .into_inner()
                        .map_err(|e| self.read_error(space, None, e))?;
                    self.retire_entry(&key, &value, staged)?;
                    key
                }
                _ => {
                    let key = item.key().map_err(|e| self.read_error(space, None, e))?;
                    staged.delete(space, key.to_vec());
                    key
                }
            };
            cursor.after = Some(
                key.as_ref()
                    .try_into()
                    .map_err(|_| self.corrupt(space, &key, "malformed key"))?,
            );
        }
        cursor.done = true;
        Ok(budget)
    }

    /// Whether a queue id has no entry and no paged message of generation `current` or
    /// later.
    fn no_current_keys(&self, queue: u64, current: u64) -> Result<bool, StoreError> {
        let from = entry::content_key(queue, current, 0);
        let to = entry::content_key(queue, u64::MAX, u64::MAX);
        for space in [Space::Entries, Space::Paged] {
            if let Some(item) = self.keyspace(space).range(from..=to).next() {
                item.key().map_err(|e| self.read_error(space, None, e))?;
                return Ok(false);
            }
        }
        Ok(true)
    }
}
