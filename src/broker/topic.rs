//! A trie of topic binding keys: `*` matches one word, `#` zero or more.
//!
//! Matching walks only the branches a routing key can reach. A `#` can swallow any number
//! of words, so several paths may reach the same node at the same word; the walk visits
//! each (node, word) pair once, which bounds a match by (trie nodes × (words + 1)) however
//! the patterns combine `#` and `*`. Consecutive `#`s mean the same as one and are merged
//! when a key is inserted, so `#.#.#` costs what `#` costs.

use std::hash::Hash;

use crate::broker::HashMap;

/// Words of a routing or binding key. An empty key has no words, as in RabbitMQ.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// The words of a binding key as the trie stores it: runs of `#` merged into one.
fn pattern_words(binding_key: &str) -> Vec<&str> {
    let mut out = words(binding_key);
    out.dedup_by(|a, b| *a == "#" && *b == "#");
    out
}

/// A topic trie mapping binding keys to values of type `T`. The same value may be stored
/// under one key several times (bindings that differ only in their arguments); it matches
/// once.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
    /// Nodes reached through a `#` edge. While there are none, no two paths of a walk can
    /// meet, and the walk needs no record of where it has been.
    hash_nodes: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    /// Values bound at this node, each with the number of bindings holding it.
    values: HashMap<T, u32>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            star: None,
            hash: None,
            values: HashMap::default(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            hash_nodes: 0,
        }
    }
}

impl<T: Eq + Hash> TopicTrie<T> {
    /// Adds `value` under `binding_key`.
    pub fn insert(&mut self, binding_key: &str, value: T) {
        let mut node = &mut self.root;
        for word in pattern_words(binding_key) {
            node = match word {
                "*" => node.star.get_or_insert_with(Box::default),
                "#" => {
                    if node.hash.is_none() {
                        self.hash_nodes += 1;
                    }
                    node.hash.get_or_insert_with(Box::default)
                }
                w => node.children.entry(w.into()).or_default(),
            };
        }
        *node.values.entry(value).or_insert(0) += 1;
    }

    /// Removes one `value` stored under `binding_key`; returns whether it was there.
    /// Iterative: binding keys are short strings, but nothing recurses on client data.
    pub fn remove(&mut self, binding_key: &str, value: &T) -> bool {
        let words = pattern_words(binding_key);
        // Find the node, then prune the emptied tail of the path from the bottom up.
        let Some(node) = self.find_mut(&words) else {
            return false;
        };
        match node.values.get_mut(value) {
            Some(n) if *n > 1 => {
                *n -= 1;
                return true;
            }
            Some(_) => {
                node.values.remove(value);
            }
            None => return false,
        }
        for depth in (0..words.len()).rev() {
            let Some(parent) = self.find_mut(&words[..depth]) else {
                break;
            };
            let emptied = match words[depth] {
                "*" => parent.star.as_ref().is_some_and(|c| c.is_empty()),
                "#" => parent.hash.as_ref().is_some_and(|c| c.is_empty()),
                w => parent.children.get(w).is_some_and(|c| c.is_empty()),
            };
            if !emptied {
                break;
            }
            match words[depth] {
                "*" => parent.star = None,
                "#" => {
                    parent.hash = None;
                    self.hash_nodes -= 1;
                }
                w => {
                    parent.children.remove(w);
                }
            }
        }
        true
    }

    fn find_mut(&mut self, words: &[&str]) -> Option<&mut Node<T>> {
        let mut node = &mut self.root;
        for word in words {
            node = match *word {
                "*" => node.star.as_deref_mut()?,
                "#" => node.hash.as_deref_mut()?,
                w => node.children.get_mut(w)?,
            };
        }
        Some(node)
    }

    /// Calls `found` for every distinct value whose binding key matches `routing_key`
    /// (a value bound under several matching keys may be reported once per key). Adds the
    /// number of (node, word) steps taken to `work`.
    pub fn matches<'a>(&'a self, routing_key: &str, work: &mut u64, found: &mut impl FnMut(&'a T)) {
        let words = words(routing_key);
        // Each entry: a node, whether it was reached through a `#` edge (so it may swallow
        // further words itself), and the index of the next word to match.
        let mut stack: Vec<(&Node<T>, bool, usize)> = vec![(&self.root, false, 0)];
        let mut seen: Option<std::collections::HashSet<(usize, usize), crate::broker::HashState>> =
            (self.hash_nodes > 0).then(Default::default);
        while let Some((node, is_hash, i)) = stack.pop() {
            if let Some(seen) = seen.as_mut() {
                if !seen.insert((std::ptr::from_ref(node) as usize, i)) {
                    continue;
                }
            }
            *work += 1;
            if is_hash && i < words.len() {
                // The `#` swallows one more word.
                stack.push((node, true, i + 1));
            }
            if let Some(hash) = node.hash.as_deref() {
                // A `#` here may swallow nothing: its node matches from the same word.
                stack.push((hash, true, i));
            }
            let Some(word) = words.get(i) else {
                node.values.keys().for_each(&mut *found);
                continue;
            };
            if let Some(child) = node.children.get(*word) {
                stack.push((child, false, i + 1));
            }
            if let Some(star) = node.star.as_deref() {
                stack.push((star, false, i + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(bindings: &[&str], key: &str) -> Vec<String> {
        let mut trie = TopicTrie::default();
        for b in bindings {
            trie.insert(b, b.to_string());
        }
        let mut out = Vec::new();
        trie.matches(key, &mut 0, &mut |v: &String| out.push(v.clone()));
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn star_matches_exactly_one_word() {
        assert_eq!(matching(&["a.*.c"], "a.b.c"), ["a.*.c"]);
        assert!(matching(&["a.*.c"], "a.c").is_empty());
        assert!(matching(&["a.*.c"], "a.b.b.c").is_empty());
        assert!(matching(&["*"], "").is_empty());
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        assert_eq!(matching(&["a.#"], "a"), ["a.#"]);
        assert_eq!(matching(&["a.#"], "a.b.c"), ["a.#"]);
        assert_eq!(matching(&["#"], ""), ["#"]);
        assert_eq!(matching(&["#.c"], "a.b.c"), ["#.c"]);
        assert_eq!(matching(&["a.#.c"], "a.c"), ["a.#.c"]);
        assert!(matching(&["a.#.c"], "a.b").is_empty());
        assert_eq!(matching(&["#.#"], "x"), ["#.#"]);
        assert_eq!(matching(&["#.*"], "x"), ["#.*"]);
        assert!(matching(&["#.*"], "").is_empty());
        assert_eq!(matching(&["*.#.*"], "a.b"), ["*.#.*"]);
        assert!(matching(&["*.#.*"], "a").is_empty());
        assert_eq!(matching(&["#.a.#"], "x.a.y.a"), ["#.a.#"]);
    }

    #[test]
    fn tutorial_examples() {
        let b = ["*.orange.*", "*.*.rabbit", "lazy.#"];
        assert_eq!(
            matching(&b, "quick.orange.rabbit"),
            ["*.*.rabbit", "*.orange.*"]
        );
        assert_eq!(
            matching(&b, "lazy.orange.elephant"),
            ["*.orange.*", "lazy.#"]
        );
        assert!(matching(&b, "quick.brown.fox").is_empty());
        assert!(matching(&b, "orange").is_empty());
        assert!(matching(&b, "quick.orange.new.rabbit").is_empty());
        assert_eq!(matching(&b, "lazy.orange.new.rabbit"), ["lazy.#"]);
    }

    #[test]
    fn empty_words_are_words() {
        assert_eq!(matching(&["a..b"], "a..b"), ["a..b"]);
        assert_eq!(matching(&["a.*.b"], "a..b"), ["a.*.b"]);
        assert_eq!(matching(&[""], ""), [""]);
    }

    #[test]
    fn remove_prunes_and_keeps_others() {
        let mut trie = TopicTrie::default();
        trie.insert("a.#", 1);
        trie.insert("a.#", 2);
        trie.insert("a.#", 2);
        trie.insert("a.b", 3);
        assert!(trie.remove("a.#", &1));
        assert!(!trie.remove("a.#", &1));
        let mut out = Vec::new();
        trie.matches("a.b", &mut 0, &mut |v| out.push(*v));
        out.sort();
        assert_eq!(out, [2, 3]);
        assert!(trie.remove("a.#", &2));
        assert!(trie.remove("a.#.#", &2), "runs of # are one #");
        assert!(!trie.remove("a.#", &2));
        assert!(trie.remove("a.b", &3));
        assert!(trie.root.is_empty());
        assert_eq!(trie.hash_nodes, 0);
    }

    /// The reference meaning of a topic pattern, by backtracking (exponential, fine for
    /// short keys).
    fn reference(pattern: &str, key: &str) -> bool {
        fn go(p: &[&str], k: &[&str]) -> bool {
            match (p.first(), k.first()) {
                (None, None) => true,
                (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
                (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
                (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
                _ => false,
            }
        }
        go(&words(pattern), &words(key))
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(
            patterns in proptest::collection::vec("(a|b|\\*|#)(\\.(a|b|\\*|#)){0,5}", 1..6),
            key in "((a|b|c)(\\.(a|b|c)){0,6})?",
        ) {
            let mut trie = TopicTrie::default();
            for (i, p) in patterns.iter().enumerate() {
                trie.insert(p, i);
            }
            let mut got = Vec::new();
            trie.matches(&key, &mut 0, &mut |v| got.push(*v));
            got.sort();
            let want: Vec<usize> = (0..patterns.len())
                .filter(|i| reference(&patterns[*i], &key))
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn hashes_cost_linear_work() {
        let mut trie = TopicTrie::default();
        let pattern = vec!["#"; 30].join(".");
        trie.insert(&pattern, 1);
        trie.insert("#.*.#.*.#.*.#.*.#.*.#.*.#.*.#.*", 2);
        let key = vec!["w"; 127].join(".");
        let mut work = 0;
        let mut out = Vec::new();
        trie.matches(&key, &mut work, &mut |v| out.push(*v));
        out.sort();
        assert_eq!(out, [1, 2]);
        // 17 nodes, 128 word positions, two entries per (node, position) at most.
        assert!(work < 17 * 128 * 2, "work {work}");
    }
}
