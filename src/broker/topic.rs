//! A trie of topic binding keys: `*` matches one word, `#` zero or more.
//!
//! Matching walks only the branches a routing key can reach, so the cost grows with the
//! key's length and the number of wildcards on its path, not with the number of bindings.

use crate::broker::HashMap;

/// Words of a routing or binding key. An empty key has no words, as in RabbitMQ.
pub fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// A topic trie mapping binding keys to values of type `T`.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
}

#[derive(Debug, Clone)]
struct Node<T> {
    children: HashMap<Box<str>, Node<T>>,
    star: Option<Box<Node<T>>>,
    hash: Option<Box<Node<T>>>,
    values: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            children: HashMap::default(),
            star: None,
            hash: None,
            values: Vec::new(),
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
        }
    }
}

impl<T: PartialEq> TopicTrie<T> {
    /// Adds `value` under `binding_key`.
    pub fn insert(&mut self, binding_key: &str, value: T) {
        let mut node = &mut self.root;
        for word in words(binding_key) {
            node = match word {
                "*" => node.star.get_or_insert_with(Box::default),
                "#" => node.hash.get_or_insert_with(Box::default),
                w => node.children.entry(w.into()).or_default(),
            };
        }
        node.values.push(value);
    }

    /// Removes one `value` stored under `binding_key`; returns whether it was there.
    pub fn remove(&mut self, binding_key: &str, value: &T) -> bool {
        let words = words(binding_key);
        remove_at(&mut self.root, &words, value)
    }

    /// Calls `found` for every value whose binding key matches `routing_key`. A value
    /// reachable along several paths is reported once per path; callers deduplicate.
    /// Adds the number of trie nodes visited to `work`.
    pub fn matches<'a>(&'a self, routing_key: &str, work: &mut u64, found: &mut impl FnMut(&'a T)) {
        let words = words(routing_key);
        walk(&self.root, &words, work, found);
    }
}

fn remove_at<T: PartialEq>(node: &mut Node<T>, words: &[&str], value: &T) -> bool {
    let Some((first, rest)) = words.split_first() else {
        return match node.values.iter().position(|v| v == value) {
            Some(i) => {
                node.values.swap_remove(i);
                true
            }
            None => false,
        };
    };
    let removed;
    match *first {
        "*" | "#" => {
            let slot = if *first == "*" {
                &mut node.star
            } else {
                &mut node.hash
            };
            let Some(child) = slot.as_mut() else {
                return false;
            };
            removed = remove_at(child, rest, value);
            if child.is_empty() {
                *slot = None;
            }
        }
        w => {
            let Some(child) = node.children.get_mut(w) else {
                return false;
            };
            removed = remove_at(child, rest, value);
            if child.is_empty() {
                node.children.remove(w);
            }
        }
    }
    removed
}

fn walk<'a, T>(node: &'a Node<T>, words: &[&str], work: &mut u64, found: &mut impl FnMut(&'a T)) {
    *work += 1;
    if let Some(hash) = &node.hash {
        // `#` swallows zero or more words: try every split point.
        for skip in 0..=words.len() {
            walk(hash, &words[skip..], work, found);
        }
    }
    let Some((first, rest)) = words.split_first() else {
        node.values.iter().for_each(&mut *found);
        return;
    };
    if let Some(child) = node.children.get(*first) {
        walk(child, rest, work, found);
    }
    if let Some(star) = &node.star {
        walk(star, rest, work, found);
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
        trie.insert("a.b", 3);
        assert!(trie.remove("a.#", &1));
        assert!(!trie.remove("a.#", &1));
        let mut out = Vec::new();
        trie.matches("a.b", &mut 0, &mut |v| out.push(*v));
        out.sort();
        assert_eq!(out, [2, 3]);
        assert!(trie.remove("a.#", &2));
        assert!(trie.remove("a.b", &3));
        assert!(trie.root.is_empty());
    }
}
