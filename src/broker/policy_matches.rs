//! Which of a vhost's policies match a queue's or exchange's name, kept with the queue or
//! exchange itself (below the policies, which [`super::policy`] compiles and applies).

/// The most policies of both kinds one vhost holds: every queue and exchange declared in
/// it is matched against each of them.
pub const MAX_POLICIES_PER_VHOST: usize = 200;

/// Which of a vhost's policies match one queue's or exchange's name, one bit per policy
/// slot. Each queue and exchange keeps its own, so a policy change matches every name
/// against the changed policy only, not against all of the vhost's policies: a change
/// costs one match per queue and exchange however many policies there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyMatches([u64; MATCH_WORDS]);

const MATCH_WORDS: usize = MAX_POLICIES_PER_VHOST.div_ceil(64);

impl PolicyMatches {
    pub(super) fn get(&self, slot: usize) -> bool {
        self.0[slot / 64] & (1 << (slot % 64)) != 0
    }

    pub(super) fn set(&mut self, slot: usize, on: bool) {
        let bit = 1 << (slot % 64);
        if on {
            self.0[slot / 64] |= bit;
        } else {
            self.0[slot / 64] &= !bit;
        }
    }
}
