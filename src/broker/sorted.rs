//! Putting many entries back into a deque kept in key order, in one pass.
//!
//! Requeued deliveries go back to their queue at their original positions, and deliveries
//! whose acks a transaction rolls back go back into the channel's unacked list. Both come
//! back in bulk (a `basic.recover`, a `basic.nack` with `multiple`, a channel close, a
//! rollback), often at the front or the back. Inserting them one at a time shifts the
//! deque once per entry, N²/2 moves for N entries; merging them with the end of the deque
//! they belong near costs that part plus N.

use std::collections::VecDeque;

/// Puts `new` (sorted by `key`, ascending) into `deque` (sorted by `key`), keeping the
/// order. `join` is called for an entry of `new` whose key is already in `deque`, with the
/// entry found there; it returns the new entry back if it should be kept beside it.
///
/// Takes the cheapest of three ways: inserting each entry on its own (each shifts the
/// shorter side of the deque), or merging with the part of the deque from its front, or
/// from its back, to where the new keys end. So entries coming back at the front (a
/// `basic.recover`) or at the back (acks of the newest deliveries rolled back) cost about
/// what comes back, and a few entries in the middle what inserting them costs.
pub fn merge_into<T>(
    deque: &mut VecDeque<T>,
    new: Vec<T>,
    key: impl Fn(&T) -> u64,
    mut join: impl FnMut(&mut T, T) -> Option<T>,
) {
    debug_assert!(new.windows(2).all(|w| key(&w[0]) <= key(&w[1])));
    let (Some(first), Some(last)) = (new.first().map(&key), new.last().map(&key)) else {
        return;
    };
    let len = deque.len();
    let start = deque.partition_point(|e| key(e) < first);
    let end = deque.partition_point(|e| key(e) <= last);
    // The i-th new entry goes in after the i before it: it shifts the shorter of the
    // entries before it (old and new) and the old ones after it.
    let singly: usize = new
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = deque.partition_point(|x| key(x) < key(e));
            (at + i).min(len - at)
        })
        .sum();
    let (from_front, from_back) = (end, len - start);
    if singly <= from_front.min(from_back) {
        for entry in new {
            let at = deque.partition_point(|x| key(x) < key(&entry));
            let entry = match deque.get_mut(at) {
                Some(same) if key(same) == key(&entry) => join(same, entry),
                _ => Some(entry),
            };
            if let Some(entry) = entry {
                deque.insert(at, entry);
            }
        }
    } else if from_front <= from_back {
        let part: Vec<T> = deque.drain(..end).collect();
        for e in merge(part, new, &key, &mut join).into_iter().rev() {
            deque.push_front(e);
        }
    } else {
        let part: Vec<T> = deque.drain(start..).collect();
        deque.extend(merge(part, new, &key, &mut join));
    }
}

/// Two sorted runs as one, entries of `new` joined to equal ones of `old`.
fn merge<T>(
    old: Vec<T>,
    new: Vec<T>,
    key: &impl Fn(&T) -> u64,
    join: &mut impl FnMut(&mut T, T) -> Option<T>,
) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(old.len() + new.len());
    let mut old = old.into_iter().peekable();
    for entry in new {
        while let Some(e) = old.next_if(|e| key(e) < key(&entry)) {
            out.push(e);
        }
        let entry = match old.peek_mut() {
            Some(same) if key(same) == key(&entry) => join(same, entry),
            _ => Some(entry),
        };
        out.extend(entry);
    }
    out.extend(old);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(deque: &[u64], new: &[u64]) -> Vec<u64> {
        let mut d: VecDeque<(u64, bool)> = deque.iter().map(|&k| (k, false)).collect();
        let mut joined = Vec::new();
        merge_into(
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
    fn each_way_keeps_the_order() {
        let evens: Vec<u64> = (0..200).map(|k| k * 2).collect();
        let all = |new: &[u64]| {
            let mut v: Vec<u64> = evens.iter().chain(new).copied().collect();
            v.sort_unstable();
            v
        };
        // Many at the front (merged from the front), many at the back (from the back),
        // two in the middle (one at a time), and some joined to entries already there.
        let front: Vec<u64> = (0..50).map(|k| k * 2 + 1).collect();
        let back: Vec<u64> = (150..200).map(|k| k * 2 + 1).collect();
        for new in [front, back, vec![199, 201]] {
            assert_eq!(merged(&evens, &new), all(&new));
        }
        let mut same = evens.clone();
        same.retain(|k| *k < 40 || *k > 360);
        assert_eq!(merged(&same, &[40, 362, 364]).len(), same.len() + 1);
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
