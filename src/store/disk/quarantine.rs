//! Records that do not decode are set aside instead of stopping the broker.
//!
//! A record the current code cannot decode (a field table nested deeper than the decoder
//! reads, written before the limit was enforced where it entered, say) is moved, key and
//! value, to the `quarantine` keyspace, with a loud log line naming it: recovery goes on
//! without it, and a read of a queue's backlog skips it, so one bad message fails that
//! message, not the process. Reads that fjall itself fails (checksums) still fail: those
//! are damage, not records of another shape.

use std::fmt;

use crate::store::StoreError;

use super::catalog::Space;
use super::{FjallStore, describe_key, entry};

impl FjallStore {
    /// Moves `key` of `space` (with its body, for an entry whose message is apart) to the
    /// quarantine keyspace, and logs why.
    pub(super) fn set_aside(
        &self,
        space: Space,
        key: &[u8],
        value: &[u8],
        why: &dyn fmt::Display,
    ) -> Result<(), StoreError> {
        tracing::error!(
            keyspace = space.name(),
            key = %describe_key(space, key),
            error = %why,
            data_dir = %self.dir.display(),
            "a stored record does not decode: it is set aside in the `quarantine` keyspace and the broker goes on without it"
        );
        let quarantine = &self.engine().quarantine;
        let mut batch = self.db().batch();
        batch.insert(quarantine, quarantine_key(space, key), value);
        batch.remove(self.keyspace(space), key);
        if space == Space::Entries {
            let body = self
                .keyspace(Space::Bodies)
                .get(key)
                .map_err(|e| self.read_error(Space::Bodies, Some(key), e))?;
            if let Some(body) = body {
                batch.insert(
                    quarantine,
                    quarantine_key(Space::Bodies, key),
                    body.to_vec(),
                );
                batch.remove(self.keyspace(Space::Bodies), key);
            }
        }
        if space == Space::Messages {
            if let (Ok(id), Ok(mut set)) =
                (entry::shared_id_of_key(key), self.quarantined_shared.lock())
            {
                set.insert(id);
            }
        }
        batch
            .commit()
            .map_err(|e| self.engine_error("cannot set aside a record that does not decode", e))
    }

    /// Whether a shared message was set aside (its entries are skipped).
    pub(super) fn shared_set_aside(&self, id: u64) -> bool {
        self.quarantined_shared
            .lock()
            .is_ok_and(|set| set.contains(&id))
    }

    /// Number of records set aside, for tests and operators.
    pub fn set_aside_count(&self) -> Result<usize, StoreError> {
        self.engine()
            .quarantine
            .len()
            .map_err(|e| self.engine_error("cannot count the quarantine", e))
    }
}

/// The quarantine key of a record: the keyspace's name, a zero byte, the original key.
fn quarantine_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(space.name().len() + 1 + key.len());
    out.extend_from_slice(space.name().as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}
