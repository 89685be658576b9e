//! Putting many entries back into a deque kept in key order, in one pass.
//!
//! Requeued deliveries go back to their queue at their original positions, and deliveries
//! whose acks a transaction rolls back go back into the channel's unacked list. Both come
//! back in bulk (a `basic.recover`, a `basic.nack` with `multiple`, a channel close, a
//! rollback) and mostly belong near the front. Inserting them one at a time shifts the
//! deque once per entry, N²/2 moves for N entries; merging them with the front of the
//! deque they belong in costs that front plus N.

use std::collections::VecDeque;

/// Puts `new` (sorted by `key`, ascending) into `deque` (sorted by `key`), keeping the
/// order. `join` is called for an entry of `new` whose key is already in `deque`, with the
/// entry found there; it returns the new entry back if it should be kept beside it.
/// Costs the entries of `deque` with keys up to the largest new key, plus `new`.
pub fn merge_front<T>(
    deque: &mut VecDeque<T>,
    new: Vec<T>,
    key: impl Fn(&T) -> u64,
    mut join: impl FnMut(&mut T, T) -> Option<T>,
) {
    debug_assert!(new.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
    let Some(last) = new.last().map(&key) else {
        return;
    };
    let end = deque.partition_point(|e| key(e) <= last);
    let mut front: VecDeque<T> = deque.drain(..end).collect();
    let mut merged: Vec<T> = Vec::with_capacity(front.len() + new.len());
    for entry in new {
        while front.front().is_some_and(|e| key(e) < key(&entry)) {
            merged.extend(front.pop_front());
        }
        let entry = match front.front_mut() {
            Some(same) if key(same) == key(&entry) => join(same, entry),
            _ => Some(entry),
        };
        merged.extend(entry);
    }
    merged.extend(front);
    for e in merged.into_iter().rev() {
        deque.push_front(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(deque: &[u64], new: &[u64]) -> Vec<u64> {
        let mut d: VecDeque<(u64, bool)> = deque.iter().map(|&k| (k, false)).collect();
        let mut joined = Vec::new();
        merge_front(
            &mut d,
            new.iter().map(|&k| (k, true)).collect(),
            |e| e.0,
            |old, new| {
                joined.push(old.0);
                old.1 = new.1;
                None
            },
        );
        assert!(d.iter().zip(d.iter().skip(1)).all(|(a, b)| a.0 < b.0));
        for k in new {
            assert!(d.iter().any(|e| e.0 == *k && e.1), "{k} is in");
        }
        d.into_iter().map(|e| e.0).collect()
    }

    #[test]
    fn entries_go_back_in_order() {
        assert_eq!(merged(&[], &[]), Vec::<u64>::new());
        assert_eq!(merged(&[5, 6], &[]), vec![5, 6]);
        assert_eq!(merged(&[], &[1, 3]), vec![1, 3]);
        assert_eq!(merged(&[10, 11, 12], &[1, 2, 3]), vec![1, 2, 3, 10, 11, 12]);
        assert_eq!(merged(&[2, 4, 9], &[1, 3, 5]), vec![1, 2, 3, 4, 5, 9]);
        assert_eq!(merged(&[1, 2], &[7, 8]), vec![1, 2, 7, 8]);
        // An entry already there (a hole in the unacked list) is joined, not doubled.
        assert_eq!(merged(&[1, 2, 3, 4], &[2, 4]), vec![1, 2, 3, 4]);
    }

    #[test]
    fn merging_matches_inserting_one_at_a_time() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let mut all: Vec<u64> = (0..rng.gen_range(0..40)).collect();
            let mut deque = Vec::new();
            let mut new = Vec::new();
            for k in all.drain(..) {
                if rng.gen_bool(0.4) {
                    new.push(k * 2);
                } else {
                    deque.push(k * 2);
                }
            }
            let mut expected: Vec<u64> = deque.iter().chain(&new).copied().collect();
            expected.sort_unstable();
            assert_eq!(merged(&deque, &new), expected);
        }
    }
}
