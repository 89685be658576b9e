//! What a hostile client does, drawn per seed (swarm testing: each seed switches whole
//! classes of hostile input on or off and picks their sizes), and the generators of the
//! values it sends: names, queue and exchange arguments, topic patterns, routing keys,
//! headers tables, nested tables and `x-death` histories.

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;

use warren::proto::table::{FieldTable, FieldValue, MAX_FIELD_DEPTH};

/// The classes of hostile input a seed switches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// `x-dead-letter-exchange` (including the default exchange `""`) and
    /// `x-dead-letter-routing-key` (including one that routes back to the queue, and one
    /// longer than any routing key).
    pub dead_letter: bool,
    /// `x-max-length` (0 and small), `x-max-length-bytes` and every `x-overflow` mode.
    pub overflow: bool,
    /// `x-message-ttl` (0 and small) and per-message `expiration`.
    pub ttl: bool,
    /// `x-expires`.
    pub expires: bool,
    /// `alternate-exchange`.
    pub alternate: bool,
    /// Exchange-to-exchange bindings.
    pub e2e: bool,
    /// Topic exchanges, patterns of `#`, `*` and words, long routing keys.
    pub topic: bool,
    /// Headers exchanges: `x-match` all/any bindings with many keys, many headers.
    pub headers: bool,
    /// Tables nested up to and beyond `MAX_FIELD_DEPTH` in arguments and headers.
    pub nesting: bool,
    /// Client-supplied `x-death` headers, with counts up to `i64::MAX`.
    pub x_death: bool,
    /// Adversarial names: empty, 255 bytes, unicode, dots and wildcards, `amq.` prefixes.
    pub names: bool,
    /// Never settles the oldest delivery it holds on a channel, and settles the others one
    /// at a time, out of order: the gaps this leaves in the broker's unacked list must not
    /// pile up.
    pub hoard: bool,
}

/// A hostile client's plan.
#[derive(Debug, Clone)]
pub struct HostilePlan {
    /// Which classes of input it sends.
    pub features: Features,
    /// Longest run of consecutive `#` in a topic pattern.
    pub hash_run_max: usize,
    /// Most segments (runs of `#`, `*` or words) in a topic pattern.
    pub pattern_segments_max: usize,
    /// Most words in a routing key.
    pub key_words_max: usize,
    /// Most keys in a headers binding or a message's headers.
    pub header_keys_max: usize,
    /// Deepest nesting of a generated table (the top-level table is depth 1).
    pub depth_max: usize,
    /// Most queue and exchange names it keeps using.
    pub names_max: usize,
    /// Time between actions.
    pub think_ms: (u64, u64),
    /// Puts its publishing channel in confirm mode.
    pub confirm: bool,
    /// Chance that a message is persistent.
    pub persistent_prob: f64,
    /// Largest message body.
    pub body_max_bytes: usize,
}

impl HostilePlan {
    /// A random plan: each class of input on or off, sizes from small to hostile.
    pub fn generate(rng: &mut SmallRng) -> HostilePlan {
        let mut on = || rng.gen_bool(0.5);
        let features = Features {
            dead_letter: on(),
            overflow: on(),
            ttl: on(),
            expires: on(),
            alternate: on(),
            e2e: on(),
            topic: on(),
            headers: on(),
            nesting: on(),
            x_death: on(),
            names: on(),
            hoard: on(),
        };
        HostilePlan {
            features,
            hash_run_max: [1, 3, 8, 16][rng.gen_range(0..4)],
            pattern_segments_max: [3, 8, 24][rng.gen_range(0..3)],
            key_words_max: [4, 16, 40, 60][rng.gen_range(0..4)],
            header_keys_max: [4, 24, 100][rng.gen_range(0..3)],
            depth_max: [4, MAX_FIELD_DEPTH, MAX_FIELD_DEPTH + 3][rng.gen_range(0..3)],
            names_max: [3, 8, 16][rng.gen_range(0..3)],
            think_ms: [(2, 20), (5, 60), (20, 200)][rng.gen_range(0..3)],
            confirm: rng.gen_bool(0.5),
            persistent_prob: [0.0, 0.5, 1.0][rng.gen_range(0..3)],
            body_max_bytes: [0, 64, 2000][rng.gen_range(0..3)],
        }
    }
}

impl HostilePlan {
    /// One line for the report: the classes on, with their sizes.
    pub fn describe(&self) -> String {
        let f = self.features;
        let mut on: Vec<String> = Vec::new();
        for (flag, name) in [
            (f.dead_letter, "dead-letter"),
            (f.overflow, "overflow"),
            (f.ttl, "ttl"),
            (f.expires, "expires"),
            (f.alternate, "alternate"),
            (f.e2e, "e2e"),
        ] {
            if flag {
                on.push(name.into());
            }
        }
        if f.topic {
            on.push(format!(
                "topic(#-runs<={}, segments<={})",
                self.hash_run_max, self.pattern_segments_max
            ));
        }
        if f.headers {
            on.push(format!("headers(keys<={})", self.header_keys_max));
        }
        if f.nesting {
            on.push(format!("nesting(depth<={})", self.depth_max));
        }
        for (flag, name) in [
            (f.x_death, "x-death"),
            (f.names, "names"),
            (f.hoard, "hoard"),
        ] {
            if flag {
                on.push(name.into());
            }
        }
        format!(
            "{} keys<={} words, think {:?}ms",
            on.join(" "),
            self.key_words_max,
            self.think_ms
        )
    }
}

/// Names the modelled clients use, which hostile traffic must never touch (compared after
/// the broker's stripping of CR and LF).
#[derive(Debug, Clone, Default)]
pub struct Reserved {
    /// Modelled queue names.
    pub queues: Vec<String>,
    /// Modelled exchange names.
    pub exchanges: Vec<String>,
}

impl Reserved {
    /// Whether `name` (as the broker will read it) is a modelled queue.
    pub fn is_queue(&self, name: &str) -> bool {
        self.queues.contains(&strip_cr_lf(name))
    }

    /// Whether `name` (as the broker will read it) is a modelled exchange.
    pub fn is_exchange(&self, name: &str) -> bool {
        self.exchanges.contains(&strip_cr_lf(name))
    }
}

/// A name as the broker reads it: CR and LF removed, as RabbitMQ does.
pub fn strip_cr_lf(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// Words of routing keys and patterns: few, so that patterns match keys often, with an
/// empty word and a multi-byte one.
const WORDS: [&str; 6] = ["a", "b", "c", "x", "", "ü"];

/// The predeclared exchanges hostile clients may use (modelled publishers never publish to
/// them), with their kinds.
pub const AMQ_EXCHANGES: [(&str, &str); 5] = [
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
];

/// Draws hostile values for one client.
#[derive(Debug)]
pub struct Gen {
    /// The client's index (message ids and names carry it).
    pub id: usize,
    /// The plan.
    pub plan: HostilePlan,
    /// The client's generator.
    pub rng: SmallRng,
    next_name: u64,
}

impl Gen {
    /// A generator for client `id`.
    pub fn new(id: usize, plan: HostilePlan, rng: SmallRng) -> Gen {
        Gen {
            id,
            plan,
            rng,
            next_name: 0,
        }
    }

    /// Whether a one-in-`n` event happens.
    pub fn one_in(&mut self, n: u32) -> bool {
        self.rng.gen_ratio(1, n.max(1))
    }

    /// A new name for a queue or an exchange, never one of `reserved`'s.
    pub fn name(&mut self, reserved: &Reserved) -> String {
        self.next_name += 1;
        let plain = format!("h{}.{}", self.id, self.next_name);
        if !self.plan.features.names || self.one_in(3) {
            return plain;
        }
        let name = match self.rng.gen_range(0..12) {
            0 => String::new(),
            // 255 bytes, and longer (truncated to 255 on the wire).
            1 => format!("h{}", "n".repeat(254)),
            2 => format!("h{}", "é".repeat(self.rng.gen_range(120..=140))),
            3 => format!("h{}-队列-🐇-ü", self.id),
            4 => ["#", "*", ".", "..", "#.#", "*.#.*", "a.b.c"][self.rng.gen_range(0..7)].into(),
            5 => format!("h{}.#.*.{}", self.id, self.next_name),
            6 => format!("amq.h{}", self.next_name),
            7 => ["amq.topic", "amq.direct", "amq.gen-JzTY20BRgKO-HjmUJj0wLg"]
                [self.rng.gen_range(0..3)]
            .into(),
            8 => format!("h\r\n{}", self.next_name),
            9 => " ".repeat(self.rng.gen_range(1..4)),
            // Look-alikes of modelled names (never equal to one).
            10 => ["Q0", "q0 ", "q", "x.direct.", "x.topic2"][self.rng.gen_range(0..5)].into(),
            _ => format!("h{}\u{0}{}", self.id, self.next_name),
        };
        if reserved.is_queue(&name) || reserved.is_exchange(&name) {
            plain
        } else {
            name
        }
    }

    /// A routing key of up to `key_words_max` words (at most 255 bytes), never a modelled
    /// queue name.
    pub fn routing_key(&mut self, reserved: &Reserved) -> String {
        let n = self.rng.gen_range(0..=self.plan.key_words_max);
        let words: Vec<&str> = (0..n)
            .map(|_| WORDS[self.rng.gen_range(0..WORDS.len())])
            .collect();
        let key = fit_shortstr(&words.join("."));
        if reserved.is_queue(&key) {
            format!("{key}!")
        } else {
            key
        }
    }

    /// A topic binding pattern: segments of `#` runs, `*` and words (at most 255 bytes).
    pub fn topic_pattern(&mut self) -> String {
        let n = self.rng.gen_range(0..=self.plan.pattern_segments_max);
        let mut tokens: Vec<&str> = Vec::new();
        for _ in 0..n {
            match self.rng.gen_range(0..10) {
                0..=3 => {
                    let run = self.rng.gen_range(1..=self.plan.hash_run_max);
                    tokens.extend(std::iter::repeat_n("#", run));
                }
                4..=5 => tokens.push("*"),
                _ => tokens.push(WORDS[self.rng.gen_range(0..WORDS.len())]),
            }
        }
        fit_shortstr(&tokens.join("."))
    }

    /// The key space of headers tables, shared by bindings and messages so that they match.
    fn header_entry(&mut self) -> (String, FieldValue) {
        let k = self.rng.gen_range(0..self.plan.header_keys_max.max(1));
        let value = match self.rng.gen_range(0..6) {
            0 => FieldValue::I32(k as i32),
            1 => FieldValue::I64(k as i64),
            2 => FieldValue::LongStr(Bytes::from(format!("v{k}"))),
            3 => FieldValue::Bool(k % 2 == 0),
            4 => FieldValue::Void,
            _ => FieldValue::U8((k % 256) as u8),
        };
        (format!("k{k}"), value)
    }

    /// The arguments of a headers-exchange binding: `x-match` and up to
    /// `header_keys_max` keys.
    pub fn headers_binding(&mut self) -> FieldTable {
        let mut t = FieldTable::new();
        let mode = ["all", "any", "all-with-x", "any-with-x", "bogus"][self.rng.gen_range(0..5)];
        t.insert(
            "x-match",
            FieldValue::LongStr(Bytes::from_static(mode.as_bytes())),
        );
        let n = self.rng.gen_range(0..=self.plan.header_keys_max);
        for _ in 0..n {
            let (k, v) = self.header_entry();
            t.insert(k, v);
        }
        t
    }

    /// A message's headers: keys of the bindings' space, nested tables, `x-death`.
    pub fn message_headers(&mut self, queues: &[String]) -> Option<FieldTable> {
        let f = self.plan.features;
        let mut t = FieldTable::new();
        if f.headers {
            let n = self.rng.gen_range(0..=self.plan.header_keys_max);
            for _ in 0..n {
                let (k, v) = self.header_entry();
                t.insert(k, v);
            }
        }
        if f.nesting && self.one_in(3) {
            let depth = self.depth();
            t.insert("x-nest", nested(depth.saturating_sub(1), self.one_in(2)));
        }
        if f.x_death && self.one_in(2) {
            t.insert("x-death", self.x_death(queues));
        }
        (!t.is_empty()).then_some(t)
    }

    /// A total depth for a nested table: often exactly at the limit or just past it.
    pub fn depth(&mut self) -> usize {
        let max = self.plan.depth_max.max(2);
        match self.rng.gen_range(0..4) {
            0 => self.rng.gen_range(2..=max),
            1 => MAX_FIELD_DEPTH.min(max),
            2 => (MAX_FIELD_DEPTH + 1).min(max),
            _ => max,
        }
    }

    /// A client-supplied `x-death` history: entries naming its queues with every reason,
    /// counts up to `i64::MAX` (never negative: a negative count the client sees later
    /// can only come from the broker), and now and then junk of the wrong types.
    fn x_death(&mut self, queues: &[String]) -> FieldValue {
        if self.one_in(8) {
            return FieldValue::LongStr(Bytes::from_static(b"not an array"));
        }
        let n = self.rng.gen_range(1..=3);
        let mut entries = Vec::new();
        for _ in 0..n {
            if self.one_in(8) {
                entries.push(FieldValue::I32(7));
                continue;
            }
            let count = match self.rng.gen_range(0..6) {
                0 => FieldValue::I64(0),
                1 => FieldValue::I64(1),
                2 => FieldValue::I64(i64::MAX - 1),
                3 => FieldValue::I32(i32::MAX),
                4 => FieldValue::LongStr(Bytes::from_static(b"lots")),
                _ => FieldValue::I64(i64::MAX),
            };
            let reason = ["rejected", "expired", "maxlen", "bogus"][self.rng.gen_range(0..4)];
            let queue = if queues.is_empty() {
                String::new()
            } else {
                queues[self.rng.gen_range(0..queues.len())].clone()
            };
            let mut t = FieldTable::new();
            t.insert("count", count);
            t.insert(
                "reason",
                FieldValue::LongStr(Bytes::from_static(reason.as_bytes())),
            );
            t.insert(
                "queue",
                FieldValue::LongStr(Bytes::from(strip_cr_lf(&queue))),
            );
            t.insert("exchange", FieldValue::LongStr(Bytes::new()));
            t.insert(
                "routing-keys",
                FieldValue::Array(vec![FieldValue::LongStr(Bytes::from(queue))]),
            );
            t.insert("time", FieldValue::Timestamp(0));
            entries.push(FieldValue::Table(t));
        }
        FieldValue::Array(entries)
    }

    /// Queue arguments drawn from the enabled classes. `own` is the queue's name (for a
    /// dead-letter routing key that routes back), `exchanges` and `queues` the client's.
    pub fn queue_arguments(
        &mut self,
        own: &str,
        exchanges: &[String],
        queues: &[String],
    ) -> FieldTable {
        let f = self.plan.features;
        let mut t = FieldTable::new();
        if f.overflow && !self.one_in(4) {
            let n = [0, 0, 1, 2, 3, 5][self.rng.gen_range(0..6)];
            if self.one_in(4) {
                let bytes = [0, 1, 64, 1000][self.rng.gen_range(0..4)];
                t.insert("x-max-length-bytes", FieldValue::I64(bytes));
            } else {
                t.insert(
                    "x-max-length",
                    int_of_some_width(n, self.rng.gen_range(0..3)),
                );
            }
            let mode = [
                None,
                Some("drop-head"),
                Some("reject-publish"),
                Some("reject-publish-dlx"),
                Some("reject-publish-dlx"),
                Some("bogus"),
            ][self.rng.gen_range(0..6)];
            if let Some(mode) = mode {
                t.insert(
                    "x-overflow",
                    FieldValue::LongStr(Bytes::from_static(mode.as_bytes())),
                );
            }
        }
        if f.dead_letter && !self.one_in(4) {
            let dlx = match self.rng.gen_range(0..6) {
                0 | 1 => String::new(),
                2 if !exchanges.is_empty() => {
                    exchanges[self.rng.gen_range(0..exchanges.len())].clone()
                }
                3 => AMQ_EXCHANGES[self.rng.gen_range(0..AMQ_EXCHANGES.len())]
                    .0
                    .to_string(),
                4 => format!("h{}.missing", self.id),
                _ => String::new(),
            };
            t.insert(
                "x-dead-letter-exchange",
                FieldValue::LongStr(Bytes::from(dlx)),
            );
            match self.rng.gen_range(0..4) {
                // Routes back to the queue itself through the default exchange.
                0 | 1 => {
                    let own = if own.is_empty() || self.one_in(4) {
                        String::new()
                    } else {
                        own.to_string()
                    };
                    t.insert(
                        "x-dead-letter-routing-key",
                        FieldValue::LongStr(Bytes::from(own)),
                    );
                }
                2 if !queues.is_empty() => {
                    let q = queues[self.rng.gen_range(0..queues.len())].clone();
                    t.insert(
                        "x-dead-letter-routing-key",
                        FieldValue::LongStr(Bytes::from(q)),
                    );
                }
                // A key no publish could carry: thousands of empty words for topic
                // matching (refused, 406).
                3 if self.one_in(4) => {
                    let key = ".".repeat(self.rng.gen_range(256..4096));
                    t.insert(
                        "x-dead-letter-routing-key",
                        FieldValue::LongStr(Bytes::from(key)),
                    );
                }
                _ => {}
            }
        }
        if f.ttl && self.one_in(2) {
            let ttl = [0, 0, 1, 5, 20, 100][self.rng.gen_range(0..6)];
            t.insert(
                "x-message-ttl",
                int_of_some_width(ttl, self.rng.gen_range(0..3)),
            );
        }
        if f.expires && self.one_in(2) {
            let ms = [1, 10, 100, 1000][self.rng.gen_range(0..4)];
            t.insert("x-expires", FieldValue::I32(ms));
        }
        if self.one_in(8) {
            let p = [0, 1, 10, 255, 256][self.rng.gen_range(0..5)];
            t.insert("x-max-priority", FieldValue::I32(p));
        }
        if f.nesting && self.one_in(3) {
            let depth = self.depth();
            t.insert("x-nest", nested(depth.saturating_sub(1), self.one_in(2)));
        }
        t
    }

    /// Exchange arguments: an alternate exchange (one of its own, a predeclared one, a
    /// missing one, itself) and nested tables.
    pub fn exchange_arguments(&mut self, own: &str, exchanges: &[String]) -> FieldTable {
        let f = self.plan.features;
        let mut t = FieldTable::new();
        if f.alternate && !self.one_in(4) {
            let ae = match self.rng.gen_range(0..5) {
                0 if !exchanges.is_empty() => {
                    exchanges[self.rng.gen_range(0..exchanges.len())].clone()
                }
                1 => AMQ_EXCHANGES[self.rng.gen_range(0..AMQ_EXCHANGES.len())]
                    .0
                    .to_string(),
                2 => format!("h{}.missing", self.id),
                3 => own.to_string(),
                _ => String::new(),
            };
            t.insert("alternate-exchange", FieldValue::LongStr(Bytes::from(ae)));
        }
        if f.nesting && self.one_in(3) {
            let depth = self.depth();
            t.insert("x-nest", nested(depth.saturating_sub(1), self.one_in(2)));
        }
        t
    }

    /// A consumer's arguments: now and then an `x-priority` (of any integer width, or of a
    /// type RabbitMQ refuses), an `x-cancel-on-ha-failover` (a boolean, or not), or an
    /// `x-stream-offset`, which no queue warren has takes.
    pub fn consumer_arguments(&mut self) -> FieldTable {
        let mut t = FieldTable::new();
        if !self.one_in(4) {
            return t;
        }
        match self.rng.gen_range(0..6) {
            0 | 1 => {
                let width = self.rng.gen_range(0..3);
                let n = self.rng.gen_range(-3..10);
                t.insert("x-priority", int_of_some_width(n, width));
            }
            2 => {
                let odd = [
                    FieldValue::LongStr(Bytes::from_static(b"5")),
                    FieldValue::F64(1.5),
                    FieldValue::Bool(true),
                ];
                t.insert("x-priority", odd[self.rng.gen_range(0..3)].clone());
            }
            3 => t.insert("x-cancel-on-ha-failover", FieldValue::Bool(self.one_in(2))),
            4 => t.insert("x-cancel-on-ha-failover", FieldValue::I32(1)),
            _ => t.insert(
                "x-stream-offset",
                FieldValue::LongStr(Bytes::from_static(b"first")),
            ),
        }
        t
    }

    /// A per-message `expiration`: 0, small, or not a number.
    pub fn expiration(&mut self) -> Option<String> {
        if !self.plan.features.ttl || self.one_in(2) {
            return None;
        }
        if self.one_in(30) {
            return Some(["-1", "soon"][self.rng.gen_range(0..2)].to_string());
        }
        Some(["0", "0", "1", "5", "30"][self.rng.gen_range(0..5)].to_string())
    }
}

/// An integer argument sent with one of the widths clients use.
fn int_of_some_width(n: i32, width: u32) -> FieldValue {
    match width {
        0 => FieldValue::I32(n),
        1 => FieldValue::I64(i64::from(n)),
        _ => FieldValue::I16(n as i16),
    }
}

/// A value holding `levels` more levels of tables (or arrays) inside it, built without
/// recursion.
pub fn nested(levels: usize, arrays: bool) -> FieldValue {
    let mut v = FieldValue::LongStr(Bytes::from_static(b"bottom"));
    for i in 0..levels {
        v = if arrays && i % 2 == 1 {
            FieldValue::Array(vec![v])
        } else {
            let mut t = FieldTable::new();
            t.insert("n", v);
            FieldValue::Table(t)
        };
    }
    v
}

/// The longest prefix of `s` that a short string carries, cut at a dot when there is one
/// (so a pattern keeps whole words).
fn fit_shortstr(s: &str) -> String {
    if s.len() <= 255 {
        return s.to_string();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = &s[..end];
    match head.rfind('.') {
        Some(dot) => head[..dot].to_string(),
        None => head.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn nested_values_have_the_asked_depth() {
        let mut t = FieldTable::new();
        t.insert("x", nested(MAX_FIELD_DEPTH - 1, true));
        assert!(t.check_limits().is_ok());
        let mut t = FieldTable::new();
        t.insert("x", nested(MAX_FIELD_DEPTH, false));
        assert!(t.check_limits().is_err());
    }

    #[test]
    fn generated_keys_and_names_stay_out_of_the_modelled_namespace() {
        let reserved = Reserved {
            queues: vec!["q0".into(), "a".into()],
            exchanges: vec!["x.direct".into()],
        };
        let mut plan = HostilePlan::generate(&mut SmallRng::seed_from_u64(1));
        plan.features.names = true;
        plan.key_words_max = 1;
        let mut g = Gen::new(0, plan, SmallRng::seed_from_u64(2));
        for _ in 0..2000 {
            let n = g.name(&reserved);
            assert!(!reserved.is_queue(&n) && !reserved.is_exchange(&n), "{n:?}");
            let k = g.routing_key(&reserved);
            assert!(!reserved.is_queue(&k) && k.len() <= 255, "{k:?}");
            assert!(g.topic_pattern().len() <= 255);
        }
    }
}
