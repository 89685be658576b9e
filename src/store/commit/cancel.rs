//! Cancelling the enqueue and the dequeue of one message within one store write.

use std::collections::HashMap;

use crate::store::{EntryBody, StoreOp};

/// Drops every enqueue of a message of its own (not shared) that a dequeue later in `ops`
/// takes away, together with that dequeue: written as one atomic write, the pair leaves
/// the store as it was. A purge or a deletion in between ends the matching (it may take
/// entries in ways the pairs do not show). Returns how many pairs were cancelled.
pub(super) fn cancel_pairs(ops: &mut Vec<StoreOp>) -> u64 {
    // Enqueued positions not yet dequeued: (queue, seq) -> index in `ops`.
    let mut open: HashMap<(u64, u64), usize> = HashMap::new();
    let mut drop = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            StoreOp::Enqueue {
                queue,
                seq,
                body: EntryBody::Inline(_),
                ..
            } => {
                open.insert((*queue, *seq), i);
            }
            StoreOp::Dequeue {
                queue,
                seq,
                shared: None,
            } => {
                if let Some(at) = open.remove(&(*queue, *seq)) {
                    drop.push(at);
                    drop.push(i);
                }
            }
            StoreOp::PurgeFrom { .. } | StoreOp::DeleteQueue { .. } | StoreOp::DeleteVhost(_) => {
                open.clear();
            }
            _ => {}
        }
    }
    if drop.is_empty() {
        return 0;
    }
    let pairs = (drop.len() / 2) as u64;
    drop.sort_unstable();
    let mut next = drop.iter().peekable();
    let mut i = 0;
    ops.retain(|_| {
        let keep = next.next_if(|&&at| at == i).is_none();
        i += 1;
        keep
    });
    pairs
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::memory::MemoryState;

    fn message() -> Arc<crate::proto::command::Message> {
        Arc::new(crate::proto::command::Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Default::default(),
            body: bytes::Bytes::from_static(b"m"),
        })
    }

    pub(in crate::store::commit) fn enqueue(queue: u64, seq: u64) -> StoreOp {
        StoreOp::Enqueue {
            queue,
            seq,
            body: EntryBody::Inline(message()),
            expires_at_ms: None,
        }
    }

    pub(in crate::store::commit) fn dequeue(queue: u64, seq: u64, shared: Option<u64>) -> StoreOp {
        StoreOp::Dequeue { queue, seq, shared }
    }

    pub(in crate::store::commit) fn shape(ops: &[StoreOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                StoreOp::Enqueue { queue, seq, .. } => format!("+{queue}.{seq}"),
                StoreOp::Dequeue { queue, seq, .. } => format!("-{queue}.{seq}"),
                StoreOp::PurgeFrom { queue, from_seq } => format!("purge {queue}.{from_seq}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_enqueue_and_its_dequeue_in_one_write_cancel_out() {
        let mut ops = vec![
            enqueue(1, 1),
            enqueue(1, 2),
            enqueue(2, 1),
            dequeue(1, 1, None),
            // A dequeue of an entry written before: kept.
            dequeue(1, 0, None),
            StoreOp::Enqueue {
                queue: 3,
                seq: 1,
                body: EntryBody::Shared(5),
                expires_at_ms: None,
            },
            // Shared bodies keep their reference counts: never cancelled.
            dequeue(3, 1, Some(5)),
            // A purge ends the matching: 1.2 and 2.1 are taken by it, not cancelled.
            StoreOp::PurgeFrom {
                queue: 2,
                from_seq: 0,
            },
            dequeue(1, 2, None),
            enqueue(2, 2),
            dequeue(2, 2, None),
        ];
        assert_eq!(cancel_pairs(&mut ops), 2);
        assert_eq!(
            shape(&ops),
            ["+1.2", "+2.1", "-1.0", "+3.1", "-3.1", "purge 2.0", "-1.2"]
        );
    }

    /// An op of a generated sequence: 0 enqueue, 1 dequeue, 2 purge, 3 delete the queue,
    /// 4 enqueue a shared body.
    type Step = (u8, u64, u64);

    /// Positions ever enqueued, with the shared body each names, and queues deleted.
    #[derive(Default)]
    struct Emitted {
        enqueued: HashMap<(u64, u64), Option<u64>>,
        deleted: std::collections::HashSet<u64>,
    }

    /// A sequence the broker could emit: no position is enqueued twice in a queue
    /// incarnation, a dequeue names the body its entry has, and a deleted incarnation gets
    /// no more ops.
    fn ops_of(steps: &[Step], emitted: &mut Emitted) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        for &(kind, queue, seq) in steps {
            if emitted.deleted.contains(&queue) {
                continue;
            }
            match kind {
                0 | 4 if !emitted.enqueued.contains_key(&(queue, seq)) => {
                    let shared = (kind == 4).then_some(7);
                    emitted.enqueued.insert((queue, seq), shared);
                    ops.push(StoreOp::Enqueue {
                        queue,
                        seq,
                        body: match shared {
                            Some(id) => EntryBody::Shared(id),
                            None => EntryBody::Inline(message()),
                        },
                        expires_at_ms: None,
                    });
                }
                1 => {
                    let shared = emitted.enqueued.get(&(queue, seq)).copied().flatten();
                    ops.push(dequeue(queue, seq, shared));
                }
                2 => ops.push(StoreOp::PurgeFrom {
                    queue,
                    from_seq: seq,
                }),
                3 => {
                    emitted.deleted.insert(queue);
                    ops.push(StoreOp::DeleteQueue {
                        vhost: "/".into(),
                        name: format!("q{queue}"),
                        id: queue,
                    });
                }
                _ => {}
            }
        }
        ops
    }

    proptest::proptest! {
        /// Written as one write, the ops left by `cancel_pairs` leave the store exactly as
        /// the ops given would have, whatever the store held before.
        #[test]
        fn cancelling_pairs_never_changes_what_a_write_leaves(
            before in proptest::collection::vec((0u8..2, 1u64..4, 0u64..8), 0..12),
            steps in proptest::collection::vec((0u8..5, 1u64..4, 0u64..16), 0..40),
        ) {
            let mut start = MemoryState::default();
            start.apply(&StoreOp::PutVhost("/".into()));
            start.apply(&StoreOp::PutShared { id: 7, message: message(), refs: 1_000 });
            for q in 1..4 {
                start.apply(&StoreOp::PutQueue(crate::store::QueueRecord {
                    vhost: "/".into(),
                    name: format!("q{q}"),
                    id: q,
                    auto_delete: false,
                    arguments: Default::default(),
                }));
            }
            // Earlier writes, then the write under test (which never enqueues a position
            // enqueued before).
            let mut emitted = Emitted::default();
            for op in ops_of(&before, &mut emitted) {
                start.apply(&op);
            }
            let ops = ops_of(&steps, &mut emitted);
            let mut cancelled = ops.clone();
            let pairs = cancel_pairs(&mut cancelled);
            proptest::prop_assert_eq!(cancelled.len() as u64 + 2 * pairs, ops.len() as u64);
            let (mut want, mut got) = (start.clone(), start);
            for op in &ops {
                want.apply(op);
            }
            for op in &cancelled {
                got.apply(op);
            }
            let all = crate::store::HeadLimit::ALL;
            proptest::prop_assert_eq!(
                format!("{:?}", want.recovered(all)),
                format!("{:?}", got.recovered(all))
            );
        }
    }
}
