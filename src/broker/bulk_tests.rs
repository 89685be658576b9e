//! Inputs that act on many messages or exchanges at once: putting deliveries back
//! (`basic.recover`, `tx.rollback`), dead-lettering many, routing through long chains of
//! exchanges. Each costs what it moves once, not its square, and one input routes at most
//! a round's worth of dead letters.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::hostile_tests::ok;
use crate::broker::BrokerConfig;
use crate::broker::test_rig::Rig;
use crate::proto::command::Reply;
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::proto::table::{FieldTable, FieldValue};

fn rig() -> Rig {
    let mut config = BrokerConfig::default();
    // The rig's clients read everything at once: deliveries never wait for them.
    config.limits.max_unflushed_bytes_per_connection = usize::MAX / 16;
    let mut rig = Rig::new(config);
    rig.open(1);
    rig.open(2);
    rig
}

fn declare(rig: &mut Rig, queue: &str, arguments: &[(&str, FieldValue)]) {
    ok(&rig.method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            arguments: arguments
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        }),
    ));
}

fn exchange(rig: &mut Rig, name: &str, kind: &str, arguments: FieldTable) {
    ok(&rig.method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: name.into(),
            kind: kind.into(),
            arguments,
            ..Default::default()
        }),
    ));
}

fn bind(rig: &mut Rig, queue: &str, exchange: &str, key: &str) {
    ok(&rig.method(
        1,
        Method::QueueBind(QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        }),
    ));
}

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

/// Messages ready in a queue, read from the broker's state (a passive declare is a round
/// of its own).
fn ready(rig: &Rig, queue: &str) -> u64 {
    let id = rig.broker.topology.vhosts["/"].queues[queue];
    rig.broker.topology.queues[&id].ready_count()
}

/// A queue that is never paged (it has a length limit), so everything it holds is in
/// memory, and `consumers` consumers on channel 1 of connection 1 holding `held` of its
/// messages with `ready` more behind them.
fn held_and_ready(rig: &mut Rig, consumers: usize, prefetch: u16, held: usize, ready: usize) {
    declare(
        rig,
        "q",
        &[("x-max-length", FieldValue::I64(1_000_000_000))],
    );
    ok(&rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: prefetch,
            ..Default::default()
        }),
    ));
    for c in 0..consumers {
        ok(&rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue: "q".into(),
                consumer_tag: format!("c{c}"),
                ..Default::default()
            }),
        ));
    }
    for i in 0..held + ready {
        rig.publish_replies(2, "", "q", i as u32, BasicProperties::default());
    }
}

/// `basic.recover` of 120,000 deliveries (two consumers of prefetch 60,000) with
/// 120,000 messages ready behind them: each went back by an insertion that shifted the
/// ones before it, 7.2e9 moves.
#[test]
fn recover_puts_many_deliveries_back_in_one_pass() {
    let mut rig = rig();
    let n = 120_000;
    held_and_ready(&mut rig, 2, 60_000, n, n);
    assert_eq!(ready(&rig, "q"), n as u64);
    let started = Instant::now();
    let r = rig.method(1, Method::BasicRecover(BasicRecover { requeue: true }));
    let took = started.elapsed();
    ok(&r);
    assert!(
        took < Duration::from_secs(1),
        "recovering {n} deliveries took {took:?}"
    );
    // The same messages come again, first, flagged redelivered.
    let again: Vec<(u64, bool)> = r
        .iter()
        .filter_map(|(_, r)| match r {
            Reply::Deliver {
                redelivered,
                message,
                ..
            } => Some((
                u64::from(u32::from_be_bytes(message.body[..4].try_into().unwrap())),
                *redelivered,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(again.len(), n);
    assert!(
        again
            .iter()
            .enumerate()
            .all(|(i, (body, redelivered))| *body == i as u64 && *redelivered)
    );
    rig.broker.check_invariants();
}

/// `tx.rollback` of an ack of 60,000 deliveries, with 60,000 more unacked: each went
/// back into the unacked list by an insertion, 1.8e9 moves.
#[test]
fn rollback_puts_many_acks_back_in_one_pass() {
    let mut rig = rig();
    let n = 60_000;
    held_and_ready(&mut rig, 1, 0, 2 * n, 0);
    ok(&rig.method(1, Method::TxSelect(TxSelect {})));
    ok(&rig.method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: n as u64,
            multiple: true,
        }),
    ));
    let started = Instant::now();
    ok(&rig.method(1, Method::TxRollback(TxRollback {})));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "rolling back {n} acks took {took:?}"
    );
    rig.broker.check_invariants();
    // Everything is unacked again, and one ack of all settles it.
    ok(&rig.method(1, Method::TxCommit(TxCommit {})));
    ok(&rig.method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: 2 * n as u64,
            multiple: true,
        }),
    ));
    ok(&rig.method(1, Method::TxCommit(TxCommit {})));
    rig.broker.check_invariants();
    assert_eq!(ready(&rig, "q"), 0);
}

/// Dead letters from one input are routed a round's worth at a time, whether they come
/// from one nack of many deliveries or from many queues' expired messages at once.
#[test]
fn dead_letters_of_one_input_are_routed_a_round_at_a_time() {
    let per_round = super::deadletter::DEAD_LETTERS_PER_ROUND as u64;
    let mut rig = rig();
    exchange(&mut rig, "dlx", "fanout", FieldTable::default());
    declare(&mut rig, "sink", &[]);
    bind(&mut rig, "sink", "dlx", "");
    // 100 queues whose messages expire, fed by one fanout exchange.
    exchange(&mut rig, "in", "fanout", FieldTable::default());
    for i in 0..100 {
        let q = format!("t{i}");
        declare(
            &mut rig,
            &q,
            &[
                ("x-message-ttl", FieldValue::I32(5)),
                ("x-dead-letter-exchange", text("dlx")),
            ],
        );
        bind(&mut rig, &q, "in", "");
    }
    for i in 0..100 {
        rig.publish(2, "in", "", i, false);
    }
    rig.now += 1_000;
    rig.broker.handle_timeout(rig.now);
    rig.drain();
    let first = ready(&rig, "sink");
    assert!(
        first <= per_round,
        "one round of timers routed {first} dead letters"
    );
    while rig.broker.poll_timeout().is_some_and(|t| t <= rig.now) {
        rig.broker.handle_timeout(rig.now);
        rig.drain();
    }
    assert_eq!(ready(&rig, "sink"), 10_000);

    // One nack of 20,000 deliveries: each used to be dead-lettered, and its dead letters
    // routed, on its own, so all 20,000 went in the nack's round.
    declare(&mut rig, "src", &[("x-dead-letter-exchange", text("dlx"))]);
    ok(&rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "src".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        }),
    ));
    for i in 0..20_000 {
        rig.publish_replies(2, "", "src", i, BasicProperties::default());
    }
    let before = ready(&rig, "sink");
    ok(&rig.method(
        1,
        Method::BasicNack(BasicNack {
            delivery_tag: 0,
            multiple: true,
            requeue: false,
        }),
    ));
    let routed = ready(&rig, "sink") - before;
    assert!(routed <= per_round, "one nack routed {routed} dead letters");
    while rig.broker.poll_timeout().is_some_and(|t| t <= rig.now) {
        rig.broker.handle_timeout(rig.now);
        rig.drain();
    }
    assert_eq!(ready(&rig, "sink") - before, 20_000);
    rig.broker.check_invariants();
}

/// 2,000 headers exchanges in a chain, and a message with 5,000 headers: the headers are
/// indexed once for the routing, not once per exchange (10,000,000 steps).
#[test]
fn a_chain_of_headers_exchanges_indexes_the_headers_once() {
    const CHAIN: usize = 2_000;
    const HEADERS: usize = 5_000;
    let mut rig = rig();
    for i in 0..CHAIN {
        exchange(&mut rig, &format!("h{i}"), "headers", FieldTable::default());
    }
    for i in 1..CHAIN {
        ok(&rig.method(
            1,
            Method::ExchangeBind(ExchangeBind {
                destination: format!("h{i}"),
                source: format!("h{}", i - 1),
                ..Default::default()
            }),
        ));
    }
    declare(&mut rig, "end", &[]);
    bind(&mut rig, "end", &format!("h{}", CHAIN - 1), "");
    let headers: FieldTable = (0..HEADERS)
        .map(|i| (format!("k{i}"), FieldValue::I32(i as i32)))
        .collect();
    let before = rig.broker.work_done();
    rig.publish_with(2, "h0", "", headers);
    let work = rig.broker.work_done() - before;
    assert!(
        work < 50_000,
        "routing through {CHAIN} exchanges took {work} steps"
    );
    assert_eq!(ready(&rig, "end"), 1);
}

/// 5,000 consistent-hash exchanges in a chain, each hashing on a header whose value is
/// 100 KB: the value is encoded and hashed once for the routing (it was once per
/// exchange, 500 MB of hashing).
#[test]
fn a_chain_of_hash_exchanges_hashes_a_header_once() {
    const CHAIN: usize = 5_000;
    let mut rig = rig();
    let on_header: FieldTable = [("hash-header".to_string(), text("big"))]
        .into_iter()
        .collect();
    for i in 0..CHAIN {
        exchange(
            &mut rig,
            &format!("x{i}"),
            "x-consistent-hash",
            on_header.clone(),
        );
    }
    for i in 1..CHAIN {
        ok(&rig.method(
            1,
            Method::ExchangeBind(ExchangeBind {
                destination: format!("x{i}"),
                source: format!("x{}", i - 1),
                routing_key: "1".into(),
                ..Default::default()
            }),
        ));
    }
    declare(&mut rig, "end", &[]);
    bind(&mut rig, "end", &format!("x{}", CHAIN - 1), "1");
    let headers: FieldTable = [("big".to_string(), text(&"v".repeat(100_000)))]
        .into_iter()
        .collect();
    let started = Instant::now();
    rig.publish_with(2, "x0", "", headers);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "routing through {CHAIN} hash exchanges took {took:?}"
    );
    assert_eq!(ready(&rig, "end"), 1);
}

/// Ten dead letters whose client-supplied `x-death` holds 26,000 entries, routed to 5,000
/// queues: the history is read once for each routing, not once per queue it reaches
/// (130,000,000 entries looked at for each).
#[test]
fn a_long_death_history_is_read_once_per_dead_letter() {
    const QUEUES: usize = 5_000;
    let mut rig = rig();
    exchange(&mut rig, "dlx", "fanout", FieldTable::default());
    for i in 0..QUEUES {
        let q = format!("d{i}");
        declare(&mut rig, &q, &[]);
        bind(&mut rig, &q, "dlx", "");
    }
    declare(
        &mut rig,
        "src",
        &[
            ("x-message-ttl", FieldValue::I32(0)),
            ("x-dead-letter-exchange", text("dlx")),
        ],
    );
    let deaths = FieldValue::Array(vec![FieldValue::Table(FieldTable::default()); 26_000]);
    let headers: FieldTable = [("x-death".to_string(), deaths)].into_iter().collect();
    assert!(headers.check_limits().is_ok());
    let started = Instant::now();
    for _ in 0..10 {
        rig.publish_with(2, "", "src", headers.clone());
    }
    rig.now += 10;
    while rig.broker.poll_timeout().is_some_and(|t| t <= rig.now) {
        rig.broker.handle_timeout(rig.now);
        rig.drain();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(300),
        "dead-lettering to {QUEUES} queues took {took:?}"
    );
    let reached = (0..QUEUES)
        .filter(|i| ready(&rig, &format!("d{i}")) == 10)
        .count();
    assert_eq!(
        reached,
        crate::broker::death::MAX_DEAD_LETTER_COPIES as usize,
        "the allowance of copies"
    );
}

/// A consistent-hash exchange at its 1,000 bindings, all of one queue (each with its own
/// arguments): a binding adds its buckets after the others' instead of making the ring
/// again, and deleting the queue makes it again once, not once per binding removed (a
/// million weights read). The ring stays what making it from the bindings gives (the
/// exchange's invariant check).
#[test]
fn a_hash_exchange_full_of_one_queue_is_bound_and_unbound_in_step() {
    const BINDINGS: usize = 1_000;
    let mut rig = rig();
    exchange(&mut rig, "ring", "x-consistent-hash", FieldTable::default());
    declare(&mut rig, "many", &[]);
    declare(&mut rig, "other", &[]);
    bind(&mut rig, "other", "ring", "3");
    for i in 0..BINDINGS - 1 {
        ok(&rig.method(
            1,
            Method::QueueBind(QueueBind {
                queue: "many".into(),
                exchange: "ring".into(),
                routing_key: (1 + i % 5).to_string(),
                arguments: [("n".to_string(), FieldValue::I32(i as i32))]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
        ));
        if i % 100 == 0 {
            rig.broker.check_invariants();
        }
    }
    rig.broker.check_invariants();
    ok(&rig.method(
        1,
        Method::QueueDelete(QueueDelete {
            queue: "many".into(),
            ..Default::default()
        }),
    ));
    rig.broker.check_invariants();
    // Everything now goes to the one queue left.
    for i in 0..20 {
        rig.publish(2, "ring", &format!("k{i}"), i, false);
    }
    assert_eq!(ready(&rig, "other"), 20);
}

/// Acks of a channel's two newest deliveries rolled back, 300 times, with 200,000 more
/// unacked before them: they go back at the end of the unacked list, at the cost of two
/// entries, not of the list (which a merge from its front moved whole each time).
#[test]
fn rolling_back_acks_of_the_newest_costs_what_comes_back() {
    let mut rig = rig();
    let n = 200_000;
    held_and_ready(&mut rig, 1, 0, n, 0);
    ok(&rig.method(1, Method::TxSelect(TxSelect {})));
    let started = Instant::now();
    for _ in 0..300 {
        for tag in [n as u64, n as u64 - 1] {
            ok(&rig.method(
                1,
                Method::BasicAck(BasicAck {
                    delivery_tag: tag,
                    multiple: false,
                }),
            ));
        }
        ok(&rig.method(1, Method::TxRollback(TxRollback {})));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "300 rollbacks took {took:?}"
    );
    rig.broker.check_invariants();
}
