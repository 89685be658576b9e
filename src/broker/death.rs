//! What a message's death may cause: why it died (the `reason` of its `x-death` entry),
//! and the allowance that bounds the dead letters it and its copies may still become.

/// Why a message was dead-lettered; the `reason` of its `x-death` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected or nacked without requeue, or refused by a reject-publish-dlx queue.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped from the head of a full queue.
    MaxLen,
    /// Returned to a quorum queue more often than its `x-delivery-limit` allows.
    DeliveryLimit,
}

impl DeathReason {
    /// Whether a client's decision caused this death (a rejection, or returns past the
    /// delivery limit): such a dead letter starts afresh and is never part of a cycle.
    pub(super) fn by_client(self) -> bool {
        matches!(self, DeathReason::Rejected | DeathReason::DeliveryLimit)
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// Most dead-letterings in a row, with no client rejection in between, that one message
/// and its copies may go through. RabbitMQ's cycle rule stops loops through the same
/// queue; this stops chains through distinct ones.
pub const MAX_DEAD_LETTER_HOPS: u8 = 16;

/// Copies that the dead-lettering of one queued message may fan out into, counted over
/// every hop that follows without a client rejection in between (a message that expires
/// and is dead-lettered to more queues than this reaches the first ones, by declaration
/// order). Dead-letter exchanges
/// that fan out to queues which dead-letter on again would otherwise multiply one
/// message into a number of copies growing with the product of the fan-outs (RabbitMQ
/// lets it grow); here each copy inherits a share of what its parent had left.
pub const MAX_DEAD_LETTER_COPIES: u32 = 1024;

/// What dead-lettering a queued message may still cause: the copies its dead letters may
/// fan out into, and the automatic dead-letterings it has been through in a row. A
/// published message starts [`Allowance::FRESH`]; so does a dead letter a client caused
/// by rejecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Copies left for this message's dead letters and theirs.
    copies: u32,
    /// Dead-letterings in a row without a rejection.
    hops: u8,
}

impl Allowance {
    /// The allowance of a message that a client published (or rejected).
    pub const FRESH: Allowance = Allowance {
        copies: MAX_DEAD_LETTER_COPIES,
        hops: 0,
    };

    /// The allowance of this message's dead letter, or `None` when it may not have one.
    pub(super) fn dead_letter(self, reason: DeathReason) -> Option<Allowance> {
        if reason.by_client() {
            return Some(Allowance::FRESH);
        }
        let hops = self.hops + 1;
        (hops <= MAX_DEAD_LETTER_HOPS).then_some(Allowance { hops, ..self })
    }

    /// How many of `targets` queues a dead letter with this allowance may reach, and the
    /// allowance each copy inherits: what is left, shared.
    pub(super) fn split(self, targets: usize) -> (usize, Allowance) {
        let allowed = targets.min(self.copies as usize);
        let left = self.copies.saturating_sub(allowed as u32);
        let each = if allowed == 0 {
            0
        } else {
            left / allowed as u32
        };
        (
            allowed,
            Allowance {
                copies: each,
                hops: self.hops,
            },
        )
    }
}

#[cfg(test)]
mod allowance_tests {
    use super::*;

    #[test]
    fn copies_split_among_children_and_hops_are_capped() {
        let fresh = Allowance::FRESH;
        let first = fresh.dead_letter(DeathReason::Expired).expect("allowed");
        assert_eq!(first.hops, 1);
        let (allowed, child) = first.split(4);
        assert_eq!(allowed, 4);
        assert_eq!(child.copies, (MAX_DEAD_LETTER_COPIES - 4) / 4);
        // A share too small for the fan-out truncates it; nothing left, nothing goes.
        let poor = Allowance { copies: 3, hops: 2 };
        assert_eq!(poor.split(10), (3, Allowance { copies: 0, hops: 2 }));
        assert_eq!(Allowance { copies: 0, hops: 2 }.split(10).0, 0);
        let mut a = fresh;
        for _ in 0..MAX_DEAD_LETTER_HOPS {
            a = a.dead_letter(DeathReason::MaxLen).expect("within the cap");
        }
        assert_eq!(a.dead_letter(DeathReason::Expired), None);
        assert_eq!(a.dead_letter(DeathReason::Rejected), Some(Allowance::FRESH));
    }
}
