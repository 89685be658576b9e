//! The workload: a topology (exchanges, queues, bindings) and a plan per simulated client,
//! drawn from the workload generator of the seed.

use rand::Rng;
use rand::rngs::SmallRng;
use warren::proto::shortstr::ShortStr;

/// Exchange types the workload uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Exact routing key.
    Direct,
    /// Every binding.
    Fanout,
    /// Dotted patterns.
    Topic,
}

impl Kind {
    /// The AMQP type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
        }
    }
}

/// A queue of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// Name.
    pub name: String,
    /// Durable (survives a broker crash with its persistent messages).
    pub durable: bool,
    /// `x-max-length` with `x-overflow: reject-publish`: publishes beyond it are nacked.
    pub max_length: Option<u32>,
    /// `x-single-active-consumer`: only the first consumer receives messages, and a
    /// search for a consumer tries it alone.
    pub single_active: bool,
}

/// A binding of the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindSpec {
    /// Source exchange.
    pub exchange: String,
    /// Queue index.
    pub queue: usize,
    /// Binding key.
    pub key: String,
}

/// What one client does.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Publishes messages.
    pub publishes: bool,
    /// Chance that a session's publisher channel uses confirms.
    pub confirm_prob: f64,
    /// Chance that a message is persistent.
    pub persistent_prob: f64,
    /// Chance that a publish is mandatory.
    pub mandatory_prob: f64,
    /// Queues it consumes from.
    pub consumes: Vec<usize>,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u16,
    /// Channel-wide prefetch shared by the consumers (0 = none).
    pub channel_prefetch: u16,
    /// Uses basic.get.
    pub gets: bool,
    /// May purge and delete queues.
    pub destructive: bool,
    /// Sends an ack for a tag it never got, now and then.
    pub bogus_acks: bool,
    /// Time between actions.
    pub think_ms: (u64, u64),
    /// Largest message body.
    pub body_max_bytes: usize,
    /// Frame size the client accepts in tune-ok.
    pub frame_max: u32,
}

/// The whole workload.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Exchanges to declare (all durable).
    pub exchanges: Vec<(String, Kind)>,
    /// Queues to declare.
    pub queues: Vec<QueueSpec>,
    /// Bindings.
    pub bindings: Vec<BindSpec>,
    /// (exchange, routing key) pairs publishers pick from.
    pub routes: Vec<(String, String)>,
    /// One plan per client.
    pub clients: Vec<ClientPlan>,
}

impl Spec {
    /// A random workload.
    pub fn generate(rng: &mut SmallRng) -> Spec {
        let exchanges = vec![
            ("x.direct".to_string(), Kind::Direct),
            ("x.fanout".to_string(), Kind::Fanout),
            ("x.topic".to_string(), Kind::Topic),
        ];
        let nq = rng.gen_range(2..=5);
        let queues: Vec<QueueSpec> = (0..nq)
            .map(|i| QueueSpec {
                name: format!("q{i}"),
                durable: rng.gen_bool(0.7),
                max_length: rng.gen_bool(0.2).then(|| rng.gen_range(2..=20)),
                single_active: rng.gen_bool(0.15),
            })
            .collect();
        let mut bindings = Vec::new();
        for q in 0..nq {
            bindings.push(BindSpec {
                exchange: "x.direct".into(),
                queue: q,
                key: format!("k{q}"),
            });
            if rng.gen_bool(0.5) {
                bindings.push(BindSpec {
                    exchange: "x.direct".into(),
                    queue: q,
                    key: "k.shared".into(),
                });
            }
            if rng.gen_bool(0.5) {
                bindings.push(BindSpec {
                    exchange: "x.fanout".into(),
                    queue: q,
                    key: String::new(),
                });
            }
            let own = format!("t.{q}.*");
            let pattern = ["t.#", "t.*.a", own.as_str(), "#.b"][rng.gen_range(0..4)];
            bindings.push(BindSpec {
                exchange: "x.topic".into(),
                queue: q,
                key: pattern.to_string(),
            });
        }
        let mut routes: Vec<(String, String)> = (0..nq)
            .map(|q| ("x.direct".to_string(), format!("k{q}")))
            .collect();
        routes.extend(
            [
                ("x.direct", "k.shared"),
                ("x.direct", "nowhere"),
                ("x.fanout", ""),
                ("x.topic", "t.0.a"),
                ("x.topic", "t.1.b"),
                ("x.topic", "u.b"),
                ("x.topic", "t.2"),
                ("", "q0"),
                ("", "q1"),
            ]
            .iter()
            .map(|(x, k)| (x.to_string(), k.to_string())),
        );
        let nclients = rng.gen_range(2..=6);
        let mut clients: Vec<ClientPlan> = (0..nclients).map(|_| plan(rng, nq)).collect();
        // Every queue has a consumer, so that the liveness phase can drain it.
        for q in 0..nq {
            if !clients.iter().any(|c| c.consumes.contains(&q)) {
                let i = rng.gen_range(0..clients.len());
                clients[i].consumes.push(q);
            }
        }
        if !clients.iter().any(|c| c.publishes) {
            clients[0].publishes = true;
        }
        Spec {
            exchanges,
            queues,
            bindings,
            routes,
            clients,
        }
    }
}

fn plan(rng: &mut SmallRng, nq: usize) -> ClientPlan {
    let consumes: Vec<usize> = (0..nq).filter(|_| rng.gen_bool(0.35)).collect();
    ClientPlan {
        publishes: rng.gen_bool(0.6),
        confirm_prob: [0.0, 0.5, 0.9, 1.0][rng.gen_range(0..4)],
        persistent_prob: [0.0, 0.5, 0.8, 1.0][rng.gen_range(0..4)],
        mandatory_prob: [0.0, 0.3][rng.gen_range(0..2)],
        consumes,
        prefetch: [0, 1, 2, 5, 20][rng.gen_range(0..5)],
        channel_prefetch: [0, 0, 3, 10][rng.gen_range(0..4)],
        gets: rng.gen_bool(0.4),
        destructive: rng.gen_bool(0.25),
        bogus_acks: rng.gen_bool(0.3),
        think_ms: [(0, 5), (1, 20), (5, 60)][rng.gen_range(0..3)],
        body_max_bytes: [16, 600, 5000, 40_000][rng.gen_range(0..4)],
        frame_max: [4096, 8192, 131_072][rng.gen_range(0..3)],
    }
}

/// The identity of a published message: the publishing client and its counter.
pub type MsgKey = u64;

/// Builds a message key.
pub fn msg_key(client: usize, n: u64) -> MsgKey {
    ((client as u64) << 40) | n
}

/// The `message-id` property that carries a key.
pub fn msg_id_text(key: MsgKey) -> String {
    format!("{}.{}", key >> 40, key & ((1 << 40) - 1))
}

/// Parses a `message-id` property back into a key.
pub fn parse_msg_id(text: &str) -> Option<MsgKey> {
    let (c, n) = text.split_once('.')?;
    Some(msg_key(c.parse().ok()?, n.parse().ok()?))
}

/// The body of message `key` with `len` bytes: derived from the key, so that any
/// receiver can check it arrived intact.
pub fn body_for(key: MsgKey, len: usize) -> Vec<u8> {
    let mut x = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The correlation id of message `key`, derived from it so that a receiver can check it
/// arrived unchanged: up to 40 bytes, most often not UTF-8 (a short string is bytes, and
/// RabbitMQ passes any on), and none for a third of the messages.
pub fn correlation_for(key: MsgKey) -> Option<ShortStr> {
    if key % 3 == 0 {
        return None;
    }
    let bytes = body_for(key ^ 0x00c0_ffee, (key % 40) as usize + 1);
    Some(ShortStr::from(&bytes[..]))
}

/// Whether a topic binding key matches a routing key (`*` one word, `#` zero or more).
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = if pattern.is_empty() {
        vec![]
    } else {
        pattern.split('.').collect()
    };
    let k: Vec<&str> = if key.is_empty() {
        vec![]
    } else {
        key.split('.').collect()
    };
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert!(topic_matches("t.#", "t"));
        assert!(topic_matches("t.#", "t.1.b"));
        assert!(topic_matches("t.*.a", "t.0.a"));
        assert!(!topic_matches("t.*.a", "t.a"));
        assert!(topic_matches("#.b", "u.b"));
        assert!(topic_matches("#.b", "b"));
        assert!(!topic_matches("t.2.*", "t.2"));
        assert!(topic_matches("#", ""));
    }

    #[test]
    fn message_ids_round_trip() {
        let k = msg_key(3, 77);
        assert_eq!(parse_msg_id(&msg_id_text(k)), Some(k));
    }
}
