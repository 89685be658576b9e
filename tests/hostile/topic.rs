//! Topic matching: patterns full of `#` and `*` against the longest routing keys, and
//! many wildcard bindings at once. Each publish must be confirmed (and routed as the
//! pattern says) quickly: the work is linear in pattern nodes times words.

use std::time::{Duration, Instant};

use warren::proto::props::BasicProperties;
use warren::proto::table::FieldTable;

use crate::client::Amqp;
use crate::deadletter::{confirmed, settle_count};
use crate::harness::{Attack, Ctx, Outcome};

const CLASS: &str = "topic";

/// Most time one publish may take to be confirmed.
const CONFIRM_LIMIT: Duration = Duration::from_secs(2);

/// `n` one-letter words: 127 of them is the longest key a short string holds.
fn key_of(n: usize, word: &str) -> String {
    vec![word; n].join(".")
}

/// Binds a queue to amq.topic with `pattern`, publishes `key`, and checks the confirm
/// latency and whether it was routed.
fn one_pattern(ctx: &Ctx, queue: &str, pattern: &str, key: &str, routed: bool) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.queue(1, queue, false, FieldTable::default())?;
    c.bind(1, queue, "amq.topic", pattern, FieldTable::default())?;
    let started = Instant::now();
    let ack = c.publish_confirmed(1, "amq.topic", key, &BasicProperties::default(), b"topic")?;
    let latency = started.elapsed();
    if !ack {
        return Err("the publish was nacked".into());
    }
    if latency > CONFIRM_LIMIT {
        return Err(format!(
            "the confirm took {:.2}s (bound {}s)",
            latency.as_secs_f64(),
            CONFIRM_LIMIT.as_secs()
        ));
    }
    let n = c.count(1, queue)?;
    if n != routed as u32 {
        return Err(format!("{n} messages routed, expected {}", routed as u32));
    }
    c.delete_queue(1, queue)?;
    c.close();
    Ok(format!("confirm in {} ms", latency.as_millis()))
}

/// `pairs` repetitions of `unit` joined with dots.
fn repeat(unit: &str, pairs: usize) -> String {
    vec![unit; pairs].join(".")
}

/// Many wildcard bindings on one queue; `publishes` keys of `words` words.
fn many_bindings(ctx: &Ctx, bindings: usize, words: usize, publishes: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    let queue = format!("topic-many-{bindings}");
    c.queue(1, &queue, false, FieldTable::default())?;
    let started = Instant::now();
    for i in 0..bindings {
        let pattern = match i % 4 {
            0 => format!("#.w{i}.#"),
            1 => format!("*.w{i}.#.*"),
            2 => format!("#.*.w{i}.*.#"),
            _ => format!("w{i}.#.#.#"),
        };
        c.bind(1, &queue, "amq.topic", &pattern, FieldTable::default())?;
    }
    let bind_time = started.elapsed().as_secs_f64();
    let started = Instant::now();
    // Keys that reach no binding word (the trie must still try every wildcard branch),
    // and one that matches binding 0.
    let miss = key_of(words, "x");
    for _ in 0..publishes {
        c.publish(1, "amq.topic", &miss, &BasicProperties::default(), b"topic");
    }
    let hit = format!("w0.{}", key_of(words - 1, "x"));
    c.publish(1, "amq.topic", &hit, &BasicProperties::default(), b"topic");
    c.wait_confirms(1)?;
    let publish_time = started.elapsed().as_secs_f64();
    let n = settle_count(&mut c, &queue, 1, Duration::from_secs(1))?;
    if n != 1 {
        return Err(format!("{n} messages routed, expected 1"));
    }
    if publish_time > 5.0 {
        return Err(format!(
            "{} publishes took {publish_time:.1}s",
            publishes + 1
        ));
    }
    c.delete_queue(1, &queue)?;
    c.close();
    Ok(format!(
        "binds {bind_time:.2}s, {} publishes {publish_time:.2}s",
        publishes + 1
    ))
}

pub fn attacks() -> Vec<Attack> {
    let mut v = vec![
        Attack::new(CLASS, "#.#.#.#.#.#.#.# with a 40-word key", 32, 20, |ctx| {
            one_pattern(ctx, "topic-8", &repeat("#", 8), &key_of(40, "w"), true)
        }),
        Attack::new(CLASS, "12 # with a 40-word key", 32, 20, |ctx| {
            one_pattern(ctx, "topic-12", &repeat("#", 12), &key_of(40, "w"), true)
        }),
        Attack::new(CLASS, "30 # with a 127-word key", 32, 20, |ctx| {
            one_pattern(ctx, "topic-30", &repeat("#", 30), &key_of(127, "w"), true)
        }),
        Attack::new(CLASS, "#.*.#.* x10 with a 40-word key", 32, 20, |ctx| {
            one_pattern(
                ctx,
                "topic-alt10",
                &repeat("#.*", 10),
                &key_of(40, "w"),
                true,
            )
        }),
        Attack::new(CLASS, "#.*.#.* x25 with a 127-word key", 32, 20, |ctx| {
            one_pattern(
                ctx,
                "topic-alt25",
                &repeat("#.*", 25),
                &key_of(127, "w"),
                true,
            )
        }),
        Attack::new(
            CLASS,
            "#.a.#.a x20 against 127 b's (no match)",
            32,
            20,
            |ctx| {
                one_pattern(
                    ctx,
                    "topic-miss",
                    &repeat("#.a", 20),
                    &key_of(127, "b"),
                    false,
                )
            },
        ),
        Attack::new(
            CLASS,
            "#.#.* x20 then z against 127 words (no match)",
            32,
            20,
            |ctx| {
                let pattern = format!("{}.z", repeat("#.#.*", 20));
                one_pattern(ctx, "topic-star-miss", &pattern, &key_of(127, "w"), false)
            },
        ),
    ];
    v.push(Attack::new(
        CLASS,
        "5,000 wildcard bindings, 200 40-word publishes",
        64,
        30,
        |ctx| many_bindings(ctx, 5000, 40, 200),
    ));
    v.push(Attack::new(
        CLASS,
        "1,000 ##-heavy bindings, 50 127-word publishes",
        64,
        30,
        |ctx| {
            let mut c: Amqp = confirmed(ctx)?;
            let queue = "topic-hash-heavy";
            c.queue(1, queue, false, FieldTable::default())?;
            for i in 0..1000 {
                let pattern = format!("{}.w{i}", repeat("#", 1 + i % 6));
                c.bind(1, queue, "amq.topic", &pattern, FieldTable::default())?;
            }
            let started = Instant::now();
            for _ in 0..50 {
                c.publish(
                    1,
                    "amq.topic",
                    &key_of(127, "x"),
                    &BasicProperties::default(),
                    b"t",
                );
            }
            c.wait_confirms(1)?;
            let took = started.elapsed().as_secs_f64();
            if took > 5.0 {
                return Err(format!("50 publishes took {took:.1}s"));
            }
            c.delete_queue(1, queue)?;
            c.close();
            Ok(format!("50 publishes {took:.2}s"))
        },
    ));
    v
}
