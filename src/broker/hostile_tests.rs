//! Inputs a client can send to make routing or dead-lettering expensive: each must be
//! answered normally, with work bounded by what the client built.

use bytes::Bytes;

use crate::broker::BrokerConfig;
use crate::broker::test_rig::Rig;
use crate::proto::command::{ConnId, Reply};
use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Asserts that no channel or connection was closed among the replies `r`.
pub(super) fn ok(r: &[(ConnId, Reply)]) {
    assert!(
        !r.iter().any(|(_, r)| matches!(
            r,
            Reply::Method {
                method: Method::ChannelClose(_) | Method::ConnectionClose(_),
                ..
            }
        )),
        "{r:?}"
    );
}

fn declare_with(rig: &mut Rig, queue: &str, arguments: FieldTable) {
    let r = rig.method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            arguments,
            ..Default::default()
        }),
    );
    ok(&r);
}

fn exchange(rig: &mut Rig, name: &str, kind: &str) {
    let r = rig.method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: name.into(),
            kind: kind.into(),
            ..Default::default()
        }),
    );
    ok(&r);
}

fn bind(rig: &mut Rig, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    let r = rig.method(
        1,
        Method::QueueBind(QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            arguments,
            ..Default::default()
        }),
    );
    ok(&r);
}

fn rig() -> Rig {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    rig
}

/// The work one publish costs.
fn publish_work(rig: &mut Rig, exchange: &str, key: &str) -> u64 {
    let before = rig.broker.work_done();
    rig.publish(1, exchange, key, 7, false);
    rig.broker.check_invariants();
    rig.broker.work_done() - before
}

#[test]
fn a_full_reject_publish_dlx_queue_dead_lettering_to_itself_drops_the_message() {
    let mut rig = rig();
    declare_with(
        &mut rig,
        "loop",
        args(&[
            ("x-max-length", FieldValue::I32(0)),
            ("x-overflow", text("reject-publish-dlx")),
            ("x-dead-letter-exchange", text("")),
        ]),
    );
    let work = publish_work(&mut rig, "", "loop");
    assert!(work < 20, "work {work}");
    assert_eq!(rig.message_count(1, "loop"), 0);
}

#[test]
fn a_ttl_zero_cycle_between_two_queues_ends() {
    let mut rig = rig();
    for (q, next) in [("a", "b"), ("b", "a")] {
        declare_with(
            &mut rig,
            q,
            args(&[
                ("x-message-ttl", FieldValue::I32(0)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text(next)),
            ]),
        );
    }
    rig.publish(1, "", "a", 1, false);
    for _ in 0..10 {
        rig.now += 10;
        rig.broker.handle_timeout(rig.now);
        rig.drain();
    }
    assert_eq!(rig.message_count(1, "a") + rig.message_count(1, "b"), 0);
    assert_eq!(rig.broker.poll_timeout(), None, "no timer left running");
}

#[test]
fn fan_out_through_chains_of_dead_letter_exchanges_is_bounded() {
    let mut rig = rig();
    // Three levels of fanout exchanges, each feeding 30 queues that refuse everything and
    // dead-letter to the next level: 27,000 copies unbounded.
    const WIDTH: usize = 30;
    for level in 0..3 {
        exchange(&mut rig, &format!("f{level}"), "fanout");
    }
    for level in 0..3 {
        for i in 0..WIDTH {
            let q = format!("q{level}.{i}");
            let next = format!("f{}", (level + 1) % 3);
            declare_with(
                &mut rig,
                &q,
                args(&[
                    ("x-max-length", FieldValue::I32(0)),
                    ("x-overflow", text("reject-publish-dlx")),
                    ("x-dead-letter-exchange", text(&next)),
                ]),
            );
            bind(
                &mut rig,
                &q,
                &format!("f{level}"),
                "",
                FieldTable::default(),
            );
        }
    }
    // Each of the 30 refused copies may fan out into MAX_DEAD_LETTER_COPIES in all, at
    // some forty steps of routing each.
    let work = publish_work(&mut rig, "f0", "");
    let bound = 30 * u64::from(crate::broker::death::MAX_DEAD_LETTER_COPIES) * 40;
    assert!(work < bound, "work {work}");
    // Routing was spread over rounds of bounded size, and is finished.
    while rig.broker.poll_timeout().is_some() {
        rig.broker.handle_timeout(rig.now);
        rig.drain();
    }
    rig.broker.check_invariants();
}

#[test]
fn stacked_hashes_in_a_topic_binding_cost_linear_work() {
    let mut rig = rig();
    declare_with(&mut rig, "t", FieldTable::default());
    let pattern = vec!["#"; 12].join(".");
    bind(&mut rig, "t", "amq.topic", &pattern, FieldTable::default());
    bind(
        &mut rig,
        "t",
        "amq.topic",
        "#.*.#.*.#.*.#.*.#.*.#.*",
        FieldTable::default(),
    );
    let key = vec!["word"; 40].join(".");
    let work = publish_work(&mut rig, "amq.topic", &key);
    assert!(work < 14 * 41 * 2 + 100, "work {work}");
    assert_eq!(rig.message_count(1, "t"), 1, "delivered once");
}

#[test]
fn headers_matching_is_linear_in_the_tables() {
    let mut rig = rig();
    declare_with(&mut rig, "h", FieldTable::default());
    const KEYS: usize = 3000;
    let mut binding: FieldTable = (0..KEYS)
        .map(|i| (format!("k{i}"), FieldValue::I32(i as i32)))
        .collect();
    binding.insert("x-match", text("all"));
    bind(&mut rig, "h", "amq.headers", "", binding);
    let headers: FieldTable = (0..KEYS)
        .rev()
        .map(|i| (format!("k{i}"), FieldValue::I64(i as i64)))
        .collect();
    let before = rig.broker.work_done();
    rig.publish_with(1, "amq.headers", "", headers);
    assert!(rig.broker.work_done() - before < 3 * KEYS as u64 + 100);
    assert_eq!(rig.message_count(1, "h"), 1);
}

#[test]
fn bindings_come_and_go_one_at_a_time() {
    let mut rig = rig();
    declare_with(&mut rig, "b", FieldTable::default());
    const N: usize = 2000;
    for i in 0..N {
        bind(
            &mut rig,
            "b",
            "amq.direct",
            &format!("k{i}"),
            FieldTable::default(),
        );
        bind(
            &mut rig,
            "b",
            "amq.topic",
            &format!("*.k{i}.#"),
            FieldTable::default(),
        );
    }
    rig.broker.check_invariants();
    let work = publish_work(&mut rig, "amq.direct", "k77");
    assert!(work <= 6, "work {work}");
    for i in (0..N).step_by(2) {
        let r = rig.method(
            1,
            Method::QueueUnbind(QueueUnbind {
                queue: "b".into(),
                exchange: "amq.topic".into(),
                routing_key: format!("*.k{i}.#"),
                ..Default::default()
            }),
        );
        ok(&r);
    }
    rig.broker.check_invariants();
    rig.publish(1, "amq.topic", "x.k4.y", 1, false);
    rig.publish(1, "amq.topic", "x.k5.y", 2, false);
    assert_eq!(
        rig.message_count(1, "b"),
        2,
        "k4's binding is gone, k5's is there"
    );
    let r = rig.method(
        1,
        Method::QueueDelete(QueueDelete {
            queue: "b".into(),
            ..Default::default()
        }),
    );
    ok(&r);
    rig.broker.check_invariants();
}

#[test]
fn a_long_chain_of_auto_delete_exchanges_is_deleted_without_recursion() {
    let mut rig = rig();
    const N: usize = 20_000;
    for i in 0..N {
        let r = rig.method(
            1,
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange: format!("e{i}"),
                kind: "fanout".into(),
                auto_delete: true,
                ..Default::default()
            }),
        );
        ok(&r);
    }
    for i in 1..N {
        let r = rig.method(
            1,
            Method::ExchangeBind(ExchangeBind {
                destination: format!("e{i}"),
                source: format!("e{}", i - 1),
                ..Default::default()
            }),
        );
        ok(&r);
    }
    let r = rig.method(
        1,
        Method::ExchangeDelete(ExchangeDelete {
            exchange: format!("e{}", N - 1),
            ..Default::default()
        }),
    );
    ok(&r);
    assert!(
        rig.broker
            .vhost("/")
            .is_some_and(|v| !v.exchanges.contains_key("e0")),
        "the whole chain went"
    );
    rig.broker.check_invariants();
}

/// The reply code of the channel close in `r`, if any.
fn close_code(r: &[(ConnId, Reply)]) -> Option<(u16, String)> {
    r.iter().find_map(|(_, r)| match r {
        Reply::Method {
            method: Method::ChannelClose(c),
            ..
        } => Some((c.reply_code, c.reply_text.clone())),
        _ => None,
    })
}

#[test]
fn dead_letter_and_alternate_exchanges_need_write_permission_on_them() {
    let mut rig = rig();
    exchange(&mut rig, "secret", "fanout");
    // May configure and read anything, write only to "mine.*".
    rig.add_user("u", "p", [".*", "^mine", ".*"]);
    rig.open_as(2, "u", "p");
    let r = rig.method(
        2,
        Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            arguments: args(&[("x-dead-letter-exchange", text("secret"))]),
            ..Default::default()
        }),
    );
    let (code, text_) = close_code(&r).expect("refused");
    assert_eq!(code, 403, "{text_}");
    assert!(text_.contains("exchange 'secret'"), "{text_}");
    rig.command(
        2,
        crate::proto::command::Command::ChannelOpen { channel: 1 },
    );
    let r = rig.method(
        2,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "x".into(),
            kind: "direct".into(),
            arguments: args(&[("alternate-exchange", text("secret"))]),
            ..Default::default()
        }),
    );
    assert_eq!(close_code(&r).map(|c| c.0), Some(403));
    rig.command(
        2,
        crate::proto::command::Command::ChannelOpen { channel: 1 },
    );
    let r = rig.method(
        2,
        Method::QueueDeclare(QueueDeclare {
            queue: "q2".into(),
            arguments: args(&[("x-dead-letter-exchange", text("mine.dlx"))]),
            ..Default::default()
        }),
    );
    ok(&r);
}

#[test]
fn arguments_past_the_table_limits_are_refused() {
    use crate::proto::table::{MAX_FIELD_DEPTH, MAX_TABLE_BYTES};
    let mut rig = rig();
    let mut deep = FieldValue::Array(Vec::new());
    for _ in 0..MAX_FIELD_DEPTH {
        deep = FieldValue::Table(args(&[("k", deep)]));
    }
    let r = rig.method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "deep".into(),
            arguments: args(&[("x-custom", deep)]),
            ..Default::default()
        }),
    );
    assert_eq!(close_code(&r).map(|c| c.0), Some(406), "{r:?}");
    rig.command(
        1,
        crate::proto::command::Command::ChannelOpen { channel: 1 },
    );
    let big = FieldValue::LongStr(Bytes::from(vec![b'x'; MAX_TABLE_BYTES]));
    let r = rig.method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "big".into(),
            kind: "topic".into(),
            arguments: args(&[("x-custom", big)]),
            ..Default::default()
        }),
    );
    assert_eq!(close_code(&r).map(|c| c.0), Some(406), "{r:?}");
    rig.broker.check_invariants();
}

#[test]
fn empty_messages_with_large_headers_are_charged_for_their_headers() {
    let mut rig = rig();
    declare_with(&mut rig, "m", FieldTable::default());
    let headers: FieldTable = (0..1000)
        .map(|i| {
            (
                format!("header-{i:05}"),
                FieldValue::LongStr(Bytes::from(vec![b'v'; 100])),
            )
        })
        .collect();
    let before = rig.broker.memory_bytes();
    rig.publish_with(1, "", "m", headers.clone());
    let charged = rig.broker.memory_bytes() - before;
    assert!(
        charged >= headers.encoded_len() as u64,
        "charged {charged} for {} bytes of headers",
        headers.encoded_len()
    );
    rig.broker.check_invariants();
}

#[test]
fn a_get_waits_while_the_client_does_not_read_its_replies() {
    let mut config = BrokerConfig::default();
    config.limits.max_unflushed_bytes_per_connection = 1000;
    let mut rig = Rig::new(config);
    rig.open(1);
    declare_with(&mut rig, "g", FieldTable::default());
    for i in 0..3 {
        rig.publish_props(
            1,
            "",
            "g",
            i,
            crate::proto::props::BasicProperties {
                headers: Some(args(&[("pad", text(&"x".repeat(600)))])),
                ..Default::default()
            },
        );
    }
    let get = || {
        Method::BasicGet(BasicGet {
            queue: "g".into(),
            no_ack: true,
            ..Default::default()
        })
    };
    // Replies so far (open, declare) plus the first get-ok stay under 1000 bytes unread;
    // the next get waits, and so do the ones behind it.
    let mut answered = 0;
    let mut waited = false;
    for _ in 0..4 {
        let r = rig.method(1, get());
        answered += r
            .iter()
            .filter(|(_, r)| matches!(r, Reply::Content { .. }))
            .count();
        waited |= r.iter().any(|(_, r)| *r == Reply::PauseReading(true));
    }
    assert!(waited, "a get waited for the client to read");
    assert!(
        answered < 3,
        "answered {answered} gets while the client read nothing"
    );
    let r = rig.command(
        1,
        crate::proto::command::Command::Drained { bytes: 100_000 },
    );
    let after: usize = r
        .iter()
        .filter(|(_, r)| {
            matches!(
                r,
                Reply::Content { .. } | Reply::Deliver { .. } | Reply::Method { .. }
            )
        })
        .count();
    assert!(after >= 1, "{r:?}");
    assert!(r.iter().any(|(_, r)| *r == Reply::PauseReading(false)));
    rig.broker.check_invariants();
}

#[test]
fn messages_with_large_headers_are_paged_like_large_bodies() {
    let mut rig = Rig::new(crate::broker::test_rig::small_budget());
    rig.open(1);
    declare_with(&mut rig, "p", FieldTable::default());
    let headers = args(&[(
        "h",
        FieldValue::LongStr(Bytes::from(vec![b'h'; 120 * 1024])),
    )]);
    for _ in 0..200 {
        rig.publish_with(1, "", "p", headers.clone());
    }
    let budget = rig.broker.config().memory.queue_memory_budget_bytes;
    assert!(
        rig.broker.memory_bytes() <= budget + 130 * 1024,
        "memory {} over budget {budget}",
        rig.broker.memory_bytes()
    );
    assert!(rig.store.state().paged_count() > 150);
}

fn expiration(text: &str) -> Result<Option<u64>, String> {
    let message = crate::proto::command::Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: crate::proto::props::BasicProperties {
            expiration: Some(text.into()),
            ..Default::default()
        },
        body: Bytes::new(),
    };
    crate::broker::publish::parse_expiration(&message)
}

#[test]
fn expirations_are_read_as_rabbitmq_reads_them() {
    assert_eq!(expiration("5000"), Ok(Some(5000)));
    assert_eq!(expiration("+5"), Ok(Some(5)));
    assert_eq!(expiration("007"), Ok(Some(7)));
    assert_eq!(expiration("-0"), Ok(Some(0)));
    assert_eq!(expiration("315360000000"), Ok(Some(315_360_000_000)));
    for (text, why) in [
        ("", "no_integer"),
        ("abc", "no_integer"),
        (" 5", "no_integer"),
        ("-", "no_integer"),
        ("1.5", "{leftover_string,\".5\"}"),
        ("5 ", "{leftover_string,\" \"}"),
        ("-5", "{value_negative,-5}"),
        ("315360000001", "{value_too_large,315360000001}"),
        (
            "99999999999999999999999",
            "{value_too_large,99999999999999999999999}",
        ),
    ] {
        assert_eq!(expiration(text), Err(why.to_string()), "{text:?}");
    }
}

/// Direct replies wait in no queue: to an RPC client that does not read, they are refused
/// (returned to a mandatory publisher) once its connection holds the delivery limit
/// unwritten, instead of piling up in the broker.
#[test]
fn direct_replies_to_a_client_that_does_not_read_stop_at_the_limit() {
    use crate::proto::command::{Command, Message};
    use crate::proto::props::BasicProperties;
    use std::sync::Arc;

    let mut config = BrokerConfig::default();
    config.limits.max_unflushed_bytes_per_connection = 4000;
    let mut rig = Rig::new(config);
    rig.open(1);
    rig.open(2);
    declare_with(&mut rig, "rpc", FieldTable::default());
    let r = rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "amq.rabbitmq.reply-to".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    ok(&r);
    let publish = |rig: &mut Rig, conn: ConnId, key: &str, props: BasicProperties| {
        let message = Arc::new(Message {
            exchange: String::new(),
            routing_key: key.into(),
            properties: props,
            body: Bytes::from(vec![b'r'; 500]),
        });
        rig.command(
            conn,
            Command::Publish {
                channel: 1,
                mandatory: true,
                immediate: false,
                message,
            },
        )
    };
    let request = BasicProperties {
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        ..Default::default()
    };
    ok(&publish(&mut rig, 1, "rpc", request));
    let got = rig.method(
        2,
        Method::BasicGet(BasicGet {
            queue: "rpc".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let address = got
        .iter()
        .find_map(|(_, r)| match r {
            Reply::Content { message, .. } | Reply::Deliver { message, .. } => message
                .properties
                .reply_to
                .as_ref()?
                .as_str()
                .map(str::to_string),
            _ => None,
        })
        .expect("the request with its reply address");
    assert!(address.starts_with("amq.rabbitmq.reply-to."), "{address}");
    let (mut delivered, mut returned) = (0, 0);
    for _ in 0..40 {
        for (conn, r) in publish(&mut rig, 2, &address, BasicProperties::default()) {
            match r {
                Reply::Content {
                    method: Method::BasicDeliver(_),
                    ..
                } if conn == 1 => delivered += 1,
                Reply::Content {
                    method: Method::BasicReturn(_),
                    ..
                } if conn == 2 => returned += 1,
                _ => {}
            }
        }
    }
    assert!(delivered >= 1, "replies reach a reading client");
    assert!(
        delivered <= 8 && returned >= 32,
        "{delivered} delivered and {returned} returned while the client read nothing"
    );
    rig.broker.check_invariants();
}

/// The operations an open transaction on connection 1's channel 1 holds.
fn tx_ops(rig: &Rig) -> usize {
    let ch = &rig.broker.sessions.conns[&1].channels[&1];
    match &ch.mode {
        crate::broker::channel::Mode::Tx { ops, .. } => ops.len(),
        _ => panic!("channel 1 is not transactional"),
    }
}

#[test]
fn acks_of_nothing_do_not_grow_a_transaction() {
    let mut rig = rig();
    rig.declare(1, "q", false);
    ok(&rig.method(1, Method::TxSelect(TxSelect {})));
    for _ in 0..10_000 {
        ok(&rig.method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: 0,
                multiple: true,
            }),
        ));
        ok(&rig.method(
            1,
            Method::BasicNack(BasicNack {
                delivery_tag: 0,
                multiple: true,
                requeue: true,
            }),
        ));
    }
    assert_eq!(tx_ops(&rig), 0, "a settle of nothing is held");
    // Deliveries acked one at a time are held as one settle.
    for n in 0..3 {
        rig.publish(1, "", "q", n, false);
    }
    ok(&rig.method(1, Method::TxCommit(TxCommit {})));
    for _ in 0..3 {
        rig.method(
            1,
            Method::BasicGet(BasicGet {
                queue: "q".into(),
                no_ack: false,
                ..Default::default()
            }),
        );
    }
    for tag in 1..=3 {
        ok(&rig.method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple: false,
            }),
        ));
    }
    assert_eq!(tx_ops(&rig), 1);
    rig.broker.check_invariants();
    ok(&rig.method(1, Method::TxCommit(TxCommit {})));
    rig.broker.check_invariants();
    assert_eq!(rig.message_count(1, "q"), 0);
}

#[test]
fn a_message_with_a_ttl_of_zero_is_never_got_but_reaches_a_waiting_consumer() {
    use crate::proto::command::{Command, Message};
    use crate::proto::props::BasicProperties;
    use std::sync::Arc;
    let mut rig = rig();
    declare_with(
        &mut rig,
        "zero",
        args(&[("x-message-ttl", FieldValue::I32(0))]),
    );
    let publish = |body: &'static [u8]| Command::Publish {
        channel: 1,
        mandatory: false,
        immediate: false,
        message: Arc::new(Message {
            exchange: String::new(),
            routing_key: "zero".into(),
            properties: BasicProperties::default(),
            body: Bytes::from_static(body),
        }),
    };
    // Published and asked for in the same millisecond: expired already.
    let now = rig.now + 1;
    rig.broker.handle_command(1, publish(b"gone"), now);
    let get = Method::BasicGet(BasicGet {
        queue: "zero".into(),
        no_ack: true,
        ..Default::default()
    });
    rig.broker.handle_command(
        1,
        Command::Method {
            channel: 1,
            method: get,
        },
        now,
    );
    rig.now = now;
    let r = rig.drain();
    assert!(
        r.iter().any(|(_, r)| matches!(
            r,
            Reply::Method {
                method: Method::BasicGetEmpty(_),
                ..
            }
        )),
        "{r:?}"
    );
    rig.broker.check_invariants();
    // A consumer waiting for it takes it at once.
    ok(&rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "zero".into(),
            consumer_tag: "c".into(),
            no_ack: true,
            ..Default::default()
        }),
    ));
    rig.drain();
    let r = rig.command(1, publish(b"now"));
    let delivered = r.iter().any(|(_, r)| matches!(r, Reply::Deliver { .. }));
    assert!(
        delivered,
        "a waiting consumer gets a message with a TTL of 0: {r:?}"
    );
}

/// A consumer that takes its prefetch window and never acks cannot hold the queue's
/// publishers back for good: while it takes nothing, its queue holds them for at most
/// `FLOW_STALL_MS`, then reads them again and no longer holds them back until it
/// delivers. Once the consumer acks, holding back applies again.
#[test]
fn a_consumer_that_never_acks_holds_publishers_back_for_a_second_at_most() {
    use crate::broker::flow::FLOW_STALL_MS;
    use crate::proto::command::{Command, Message};
    use crate::proto::props::BasicProperties;
    use std::sync::Arc;
    let mut rig = Rig::new(crate::broker::test_rig::small_budget());
    rig.open(1);
    rig.open(2);
    declare_with(&mut rig, "slow", FieldTable::default());
    ok(&rig.method(
        2,
        Method::BasicQos(crate::proto::method::BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    ));
    ok(&rig.method(
        2,
        Method::BasicConsume(BasicConsume {
            queue: "slow".into(),
            ..Default::default()
        }),
    ));
    let message = Arc::new(Message {
        exchange: String::new(),
        routing_key: "slow".into(),
        properties: BasicProperties {
            headers: Some(args(&[("pad", text(&"x".repeat(1000)))])),
            ..Default::default()
        },
        body: Bytes::new(),
    });
    let publish = |rig: &mut Rig| {
        rig.command(
            1,
            Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message: message.clone(),
            },
        )
    };
    let paused_on = |r: &[(ConnId, Reply)], on: bool| {
        r.iter()
            .any(|(c, r)| *c == 1 && *r == Reply::PauseReading(on))
    };
    let mut paused = false;
    for _ in 0..200 {
        if paused_on(&publish(&mut rig), true) {
            paused = true;
            break;
        }
    }
    assert!(paused, "the publisher was held back while the queue filled");
    rig.now += FLOW_STALL_MS - 1;
    rig.broker.handle_timeout(rig.now);
    assert!(
        !paused_on(&rig.drain(), false),
        "held back until the stall time"
    );
    rig.now += 1;
    rig.broker.handle_timeout(rig.now);
    assert!(
        paused_on(&rig.drain(), false),
        "read again after the stall time"
    );
    for _ in 0..200 {
        assert!(
            !paused_on(&publish(&mut rig), true),
            "held back again with nothing delivered"
        );
    }
    // The consumer acks: the queue delivers again, and holds fast publishers back again.
    let ack = |tag| {
        Method::BasicAck(crate::proto::method::BasicAck {
            delivery_tag: tag,
            multiple: false,
        })
    };
    rig.method(2, ack(1));
    let mut again = false;
    for _ in 0..200 {
        if paused_on(&publish(&mut rig), true) {
            again = true;
            break;
        }
    }
    assert!(again, "holding back applies again once the queue delivers");
    rig.broker.check_invariants();
}

/// A quorum queue counts how often a message came back unacked, delivers the count as
/// `x-delivery-count` (0 the first time), and with `x-delivery-limit` 1 dead-letters the
/// message the second time it comes back, with reason `delivery_limit`, as RabbitMQ does:
/// a poison message does not go round for ever.
#[test]
fn a_quorum_queue_dead_letters_past_its_delivery_limit() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    declare_with(&mut rig, "poison-dlq", FieldTable::default());
    let r = rig.method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "poison".into(),
            durable: true,
            arguments: args(&[
                ("x-queue-type", text("quorum")),
                ("x-delivery-limit", FieldValue::I32(1)),
                ("x-dead-letter-exchange", text("")),
                ("x-dead-letter-routing-key", text("poison-dlq")),
            ]),
            ..Default::default()
        }),
    );
    ok(&r);
    rig.publish(1, "", "poison", 7, true);
    let get = |rig: &mut Rig| {
        let r = rig.method(
            1,
            Method::BasicGet(BasicGet {
                queue: "poison".into(),
                ..Default::default()
            }),
        );
        r.into_iter().find_map(|(_, r)| match r {
            Reply::Content {
                method: Method::BasicGetOk(ok),
                message,
                ..
            } => Some((ok.delivery_tag, message)),
            _ => None,
        })
    };
    let mut counts = Vec::new();
    while let Some((tag, message)) = get(&mut rig) {
        let headers = message.properties.headers.clone().unwrap_or_default();
        counts.push(headers.get("x-delivery-count").and_then(FieldValue::as_i64));
        assert!(counts.len() <= 2, "delivered {counts:?} and again");
        ok(&rig.method(
            1,
            Method::BasicNack(BasicNack {
                delivery_tag: tag,
                multiple: false,
                requeue: true,
            }),
        ));
    }
    assert_eq!(counts, [Some(0), Some(1)]);
    let r = rig.method(
        1,
        Method::BasicGet(BasicGet {
            queue: "poison-dlq".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let dead = r
        .iter()
        .find_map(|(_, r)| match r {
            Reply::Content { message, .. } => Some(message.clone()),
            _ => None,
        })
        .expect("the message was dead-lettered");
    let Some(FieldValue::Array(deaths)) = dead
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        panic!("no x-death: {:?}", dead.properties.headers)
    };
    let Some(FieldValue::Table(death)) = deaths.first() else {
        panic!("{deaths:?}")
    };
    assert_eq!(
        death.get("reason").and_then(FieldValue::as_str),
        Some("delivery_limit")
    );
    rig.broker.check_invariants();
}

/// The consumer tags these replies deliver to, in order.
fn delivered_to(r: &[(ConnId, Reply)]) -> Vec<String> {
    r.iter()
        .filter_map(|(_, reply)| match reply {
            Reply::Deliver { consumer_tag, .. } => Some(consumer_tag.to_string()),
            _ => None,
        })
        .collect()
}

/// A queue whose consumers share one priority hands each message to the first of them, in
/// round-robin order, that can take it: the search looks at the consumers it passes over,
/// not at every consumer of the queue to find the highest priority (with 100,000 consumers
/// that took 0.4 ms of the core for each message). And once a search finds that none of
/// them can take one, the next publishes do not search again until something frees one
/// (with 100,000 consumers that never ack, each publish took 3.3 ms of the core).
#[test]
fn a_delivery_among_many_consumers_looks_at_few_of_them() {
    use crate::proto::command::Command;
    let mut rig = rig();
    declare_with(&mut rig, "many", FieldTable::default());
    ok(&rig.method(
        1,
        Method::BasicQos(crate::proto::method::BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    ));
    let n = 10_000;
    consume_many(&mut rig, "many", n);
    rig.open(2);
    let mut tags = std::collections::BTreeSet::new();
    let mut most = 0;
    let publish = |rig: &mut Rig| rig.publish_replies(2, "", "many", 0, Default::default());
    for _ in 0..n {
        let before = rig.broker.work_done();
        let r = publish(&mut rig);
        most = most.max(rig.broker.work_done() - before);
        tags.extend(delivered_to(&r));
        rig.command(1, Command::Drained { bytes: 1 << 20 });
    }
    assert_eq!(tags.len(), n, "each consumer got one message");
    assert!(most < 20, "a publish took {most} steps among {n} consumers");
    rig.broker.check_invariants();
    // Now none of them can take one: after one search finds that, publishes do not look
    // at them again until something frees one.
    let mut most = 0;
    for i in 0..1000 {
        let before = rig.broker.work_done();
        let r = publish(&mut rig);
        assert!(r.is_empty(), "{r:?}");
        let work = rig.broker.work_done() - before;
        if i > 0 {
            most = most.max(work);
        }
    }
    assert!(
        most < 20,
        "a publish took {most} steps among {n} blocked consumers"
    );
    rig.broker.check_invariants();
    // An ack frees its consumer, which gets the next message at once; the queue looks
    // at that consumer alone, not at the channel's 10,000.
    let before = rig.broker.work_done();
    let r = rig.method(
        1,
        Method::BasicAck(crate::proto::method::BasicAck {
            delivery_tag: 77,
            multiple: false,
        }),
    );
    let work = rig.broker.work_done() - before;
    assert_eq!(
        delivered_to(&r),
        ["c76"],
        "the freed consumer takes the next message"
    );
    assert!(work < 20, "an ack took {work} steps among {n} consumers");
    rig.broker.check_invariants();
}

/// With a single active consumer that is at its prefetch limit, the queue skips its search
/// although a waiting consumer has room (only the active one is tried), and the active one
/// gets the next message when it acks.
#[test]
fn a_single_active_consumer_at_its_limit_holds_the_queue_until_it_acks() {
    let mut rig = rig();
    rig.open(2);
    rig.open(3);
    declare_with(
        &mut rig,
        "sac",
        args(&[("x-single-active-consumer", FieldValue::Bool(true))]),
    );
    for (conn, tag) in [(1, "active"), (2, "waiting")] {
        ok(&rig.method(
            conn,
            Method::BasicQos(crate::proto::method::BasicQos {
                prefetch_count: 1,
                ..Default::default()
            }),
        ));
        rig.method(
            conn,
            Method::BasicConsume(BasicConsume {
                queue: "sac".into(),
                consumer_tag: tag.into(),
                ..Default::default()
            }),
        );
    }
    let publish = |rig: &mut Rig| rig.publish_replies(3, "", "sac", 0, Default::default());
    assert_eq!(delivered_to(&publish(&mut rig)), ["active"]);
    for _ in 0..3 {
        assert_eq!(delivered_to(&publish(&mut rig)), Vec::<String>::new());
        rig.broker.check_invariants();
    }
    let r = rig.method(
        1,
        Method::BasicAck(crate::proto::method::BasicAck {
            delivery_tag: 1,
            multiple: false,
        }),
    );
    assert_eq!(delivered_to(&r), ["active"]);
    rig.broker.check_invariants();
}

/// basic.recover frees the channel's shared prefetch for all of its consumers, not only
/// for the queues its deliveries return to.
#[test]
fn recover_lets_the_channels_other_consumers_take_messages() {
    use crate::proto::method::{BasicCancel, BasicQos, BasicRecover};
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "first", FieldTable::default());
    declare_with(&mut rig, "second", FieldTable::default());
    ok(&rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            global: true,
            ..Default::default()
        }),
    ));
    let consume = |rig: &mut Rig, queue: &str| {
        rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue: queue.into(),
                consumer_tag: queue.into(),
                ..Default::default()
            }),
        )
    };
    let publish =
        |rig: &mut Rig, queue: &str| rig.publish_replies(2, "", queue, 0, Default::default());
    consume(&mut rig, "first");
    assert_eq!(delivered_to(&publish(&mut rig, "first")), ["first"]);
    rig.method(
        1,
        Method::BasicCancel(BasicCancel {
            consumer_tag: "first".into(),
            nowait: false,
        }),
    );
    consume(&mut rig, "second");
    // The channel's one unacked delivery fills its shared prefetch.
    assert_eq!(
        delivered_to(&publish(&mut rig, "second")),
        Vec::<String>::new()
    );
    let r = rig.method(1, Method::BasicRecover(BasicRecover { requeue: true }));
    assert_eq!(delivered_to(&r), ["second"]);
    rig.broker.check_invariants();
}

/// Opens channel `channel` on connection `conn` with prefetch 1 and a consumer of `queue`.
fn consume_on_channel(rig: &mut Rig, conn: ConnId, channel: u16, queue: &str, tag: &str) {
    use crate::proto::command::Command;
    use crate::proto::method::BasicQos;
    rig.command(conn, Command::ChannelOpen { channel });
    for method in [
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
        Method::BasicConsume(BasicConsume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            nowait: true,
            ..Default::default()
        }),
    ] {
        ok(&rig.command(conn, Command::Method { channel, method }));
    }
}

/// Consumers that never ack, one on each of 2,000 channels: once a search finds none of
/// them can take a message, a publish to their queue costs a few steps, not one per
/// channel (each publish looked at every channel's counters, 2,000 steps here; 100,000
/// channels over 49 connections would cost the core some milliseconds a message), and an
/// ack on one channel gives that channel's consumer the next message.
#[test]
fn blocked_consumers_on_many_channels_cost_a_publish_a_few_steps() {
    use crate::proto::command::Command;
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "spread", FieldTable::default());
    let n: u16 = 2_000;
    for channel in 2..2 + n {
        consume_on_channel(&mut rig, 1, channel, "spread", &format!("c{channel}"));
    }
    let publish = |rig: &mut Rig| rig.publish_replies(2, "", "spread", 0, Default::default());
    for _ in 0..n {
        assert_eq!(delivered_to(&publish(&mut rig)).len(), 1);
    }
    rig.broker.check_invariants();
    let mut most = 0;
    for i in 0..1000 {
        let before = rig.broker.work_done();
        assert_eq!(delivered_to(&publish(&mut rig)).len(), 0);
        if i > 0 {
            most = most.max(rig.broker.work_done() - before);
        }
    }
    assert!(
        most < 20,
        "a publish took {most} steps among {n} blocked channels"
    );
    rig.broker.check_invariants();
    // An ack wakes its channel's consumer alone, which takes the next message; the
    // queue does not look at the other channels again, then or at the next publish.
    for channel in [700, 701, 1500] {
        let before = rig.broker.work_done();
        let r = rig.command(
            1,
            Command::Method {
                channel,
                method: Method::BasicAck(crate::proto::method::BasicAck {
                    delivery_tag: 1,
                    multiple: false,
                }),
            },
        );
        assert_eq!(
            delivered_to(&r),
            [format!("c{channel}")],
            "the acking channel's consumer takes one"
        );
        assert_eq!(delivered_to(&publish(&mut rig)).len(), 0);
        let work = rig.broker.work_done() - before;
        assert!(
            work < 40,
            "an ack and a publish took {work} steps among {n} channels"
        );
        rig.broker.check_invariants();
    }
}

/// A channel that consumes from 5,000 queues acks a message: the ack searches again only
/// the queues that waited for the channel, not every queue it consumes from (each ack
/// dispatched all 5,000, about a millisecond of the core, however fast it came).
#[test]
fn an_ack_searches_only_the_queues_that_waited_for_its_channel() {
    let mut rig = rig();
    rig.open(2);
    let n = 5_000;
    for i in 0..n {
        let queue = format!("q{i}");
        declare_with(&mut rig, &queue, FieldTable::default());
        rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue,
                consumer_tag: format!("c{i}"),
                nowait: true,
                ..Default::default()
            }),
        );
    }
    let mut most = 0;
    for i in 0..100 {
        let r = rig.publish_replies(2, "", &format!("q{i}"), 0, Default::default());
        let tag = match r.iter().find_map(|(_, reply)| match reply {
            Reply::Deliver { delivery_tag, .. } => Some(*delivery_tag),
            _ => None,
        }) {
            Some(tag) => tag,
            None => panic!("no delivery: {r:?}"),
        };
        let before = rig.broker.work_done();
        rig.method(
            1,
            Method::BasicAck(crate::proto::method::BasicAck {
                delivery_tag: tag,
                multiple: false,
            }),
        );
        most = most.max(rig.broker.work_done() - before);
    }
    assert!(
        most < 20,
        "an ack took {most} steps on a channel consuming from {n} queues"
    );
    rig.broker.check_invariants();
}

/// Cancelling each of 100,000 consumers of one queue takes a lookup each: a cancel
/// searched the queue's list and shifted it (0.3 ms each with 100,000, so cancelling them
/// all held the core for some 15 s).
#[test]
fn cancelling_each_of_many_consumers_is_a_lookup() {
    let mut rig = rig();
    declare_with(&mut rig, "crowd", FieldTable::default());
    let n = 100_000;
    consume_many(&mut rig, "crowd", n);
    let started = std::time::Instant::now();
    cancel_many(&mut rig, n, true);
    let took = started.elapsed();
    assert_eq!(rig.message_count(1, "crowd"), 0);
    assert!(
        took < std::time::Duration::from_secs(3),
        "cancelling {n} consumers took {took:?}"
    );
    rig.broker.check_invariants();
}

/// Cancelling each of 50,000 consumers that hold a delivery each costs a lookup, not a
/// pass over the channel's unacked deliveries (each cancel looked at all of them to
/// forget its tag on its own: 50,000 x 50,000 comparisons).
#[test]
fn cancelling_consumers_with_deliveries_outstanding_does_not_scan_them() {
    use crate::proto::method::BasicQos;
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "held", FieldTable::default());
    ok(&rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    ));
    let n = 50_000;
    consume_many(&mut rig, "held", n);
    for _ in 0..n {
        rig.publish_replies(2, "", "held", 0, Default::default());
    }
    let started = std::time::Instant::now();
    cancel_many(&mut rig, n, false);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "cancelling {n} consumers with a delivery each took {took:?}"
    );
    rig.broker.check_invariants();
}

/// A cancelled consumer's delivery, acked after a new consumer took its tag, does not
/// count against the new consumer: it stays at its prefetch until its own delivery is
/// acked.
#[test]
fn an_ack_for_a_cancelled_consumer_does_not_free_a_new_one_of_its_tag() {
    use crate::proto::method::{BasicAck, BasicCancel, BasicQos};
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "reused", FieldTable::default());
    ok(&rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    ));
    let consume = |rig: &mut Rig| {
        ok(&rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue: "reused".into(),
                consumer_tag: "t".into(),
                ..Default::default()
            }),
        ))
    };
    let publish = |rig: &mut Rig| rig.publish_replies(2, "", "reused", 0, Default::default());
    let ack = |rig: &mut Rig, tag: u64| {
        rig.method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple: false,
            }),
        )
    };
    consume(&mut rig);
    assert_eq!(delivered_to(&publish(&mut rig)), ["t"]);
    ok(&rig.method(
        1,
        Method::BasicCancel(BasicCancel {
            consumer_tag: "t".into(),
            nowait: false,
        }),
    ));
    consume(&mut rig);
    assert_eq!(delivered_to(&publish(&mut rig)), ["t"]);
    // Delivery 1 went to the cancelled consumer.
    assert_eq!(delivered_to(&ack(&mut rig, 1)), Vec::<String>::new());
    rig.broker.check_invariants();
    assert_eq!(delivered_to(&publish(&mut rig)), Vec::<String>::new());
    assert_eq!(delivered_to(&ack(&mut rig, 2)), ["t"]);
    rig.broker.check_invariants();
}

/// A queue whose 10,000 consumers hold all they may, with messages waiting: a consumer
/// that comes takes messages at once, and neither its coming nor the others leaving costs
/// a step per consumer (each `basic.consume` or `basic.cancel` made the queue look at all
/// of them again).
#[test]
fn consumers_coming_to_and_leaving_a_blocked_queue_cost_a_few_steps() {
    use crate::proto::command::Command;
    use crate::proto::method::{BasicCancel, BasicQos};
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "full", FieldTable::default());
    ok(&rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    ));
    let n = 10_000;
    consume_many(&mut rig, "full", n);
    for _ in 0..n + 100 {
        rig.publish_replies(2, "", "full", 0, Default::default());
        rig.command(1, Command::Drained { bytes: 1 << 20 });
    }
    let work = |rig: &mut Rig, conn: ConnId, m: Method| {
        let before = rig.broker.work_done();
        let r = rig.method(conn, m);
        (rig.broker.work_done() - before, r)
    };
    let (steps, _) = work(
        &mut rig,
        1,
        Method::BasicCancel(BasicCancel {
            consumer_tag: "c5000".into(),
            nowait: true,
        }),
    );
    assert!(
        steps < 20,
        "a cancel took {steps} steps among {n} blocked consumers"
    );
    ok(&rig.method(
        2,
        Method::BasicQos(BasicQos {
            prefetch_count: 3,
            ..Default::default()
        }),
    ));
    let (steps, r) = work(
        &mut rig,
        2,
        Method::BasicConsume(BasicConsume {
            queue: "full".into(),
            consumer_tag: "late".into(),
            ..Default::default()
        }),
    );
    assert_eq!(delivered_to(&r), ["late", "late", "late"]);
    assert!(
        steps < 20,
        "a consume took {steps} steps among {n} blocked consumers"
    );
    rig.broker.check_invariants();
}

/// Makes `n` no-wait consumers of `queue` on connection 1, channel 1, tagged c0, c1, ...
fn consume_many(rig: &mut Rig, queue: &str, n: usize) {
    for i in 0..n {
        rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue: queue.into(),
                consumer_tag: format!("c{i}"),
                nowait: true,
                ..Default::default()
            }),
        );
    }
}

/// Cancels the consumers [`consume_many`] made, the last first if `last_first`.
fn cancel_many(rig: &mut Rig, n: usize, last_first: bool) {
    for k in 0..n {
        let i = if last_first { n - 1 - k } else { k };
        rig.method(
            1,
            Method::BasicCancel(BasicCancel {
                consumer_tag: format!("c{i}"),
                nowait: true,
            }),
        );
    }
}

/// 10,000 consumers on a channel whose flow is off, and one consumer that takes
/// everything: each publish looks at the one that takes it, not at the paused ones again
/// (each message walked past all of them); and commands on the paused channel that free
/// nothing (an ack of nothing, the same qos again) wake none of them.
#[test]
fn paused_consumers_beside_a_working_one_cost_a_publish_nothing() {
    use crate::proto::method::{BasicAck, BasicQos, ChannelFlow};
    let mut rig = rig();
    rig.open(2);
    rig.open(3);
    declare_with(&mut rig, "mixed", FieldTable::default());
    ok(&rig.method(1, Method::ChannelFlow(ChannelFlow { active: false })));
    let n = 10_000;
    consume_many(&mut rig, "mixed", n);
    ok(&rig.method(
        3,
        Method::BasicConsume(BasicConsume {
            queue: "mixed".into(),
            consumer_tag: "worker".into(),
            no_ack: true,
            ..Default::default()
        }),
    ));
    let mut most = 0;
    for i in 0..100 {
        let before = rig.broker.work_done();
        let r = rig.publish_replies(2, "", "mixed", 0, Default::default());
        assert_eq!(delivered_to(&r), ["worker"]);
        if i > 0 {
            most = most.max(rig.broker.work_done() - before);
        }
    }
    assert!(
        most < 20,
        "a publish took {most} steps beside {n} paused consumers"
    );
    let mut most = 0;
    for _ in 0..100 {
        let before = rig.broker.work_done();
        ok(&rig.method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: 0,
                multiple: true,
            }),
        ));
        ok(&rig.method(
            1,
            Method::BasicQos(BasicQos {
                prefetch_count: 0,
                global: true,
                ..Default::default()
            }),
        ));
        most = most.max(rig.broker.work_done() - before);
    }
    assert!(most < 20, "commands that free nothing took {most} steps");
    rig.broker.check_invariants();
    let r = rig.method(1, Method::ChannelFlow(ChannelFlow { active: true }));
    assert!(delivered_to(&r).is_empty(), "nothing is waiting");
    let r = rig.publish_replies(2, "", "mixed", 0, Default::default());
    assert_eq!(
        delivered_to(&r),
        ["c0"],
        "flow on wakes the channel's consumers"
    );
    rig.broker.check_invariants();
}

/// 10,000 consumers of priority 0 that can always take a message, and one of priority 1:
/// each message goes to the one above them and costs a step or two (the search walked
/// past the 10,000 from the cursor to come back to it).
#[test]
fn consumers_below_a_higher_priority_cost_a_message_nothing() {
    let mut rig = rig();
    rig.open(2);
    rig.open(3);
    declare_with(&mut rig, "ranked", FieldTable::default());
    let n = 10_000;
    for i in 0..n {
        rig.method(
            1,
            Method::BasicConsume(BasicConsume {
                queue: "ranked".into(),
                consumer_tag: format!("low{i}"),
                no_ack: true,
                nowait: true,
                ..Default::default()
            }),
        );
    }
    ok(&rig.method(
        3,
        Method::BasicConsume(BasicConsume {
            queue: "ranked".into(),
            consumer_tag: "high".into(),
            no_ack: true,
            arguments: args(&[("x-priority", FieldValue::I32(1))]),
            ..Default::default()
        }),
    ));
    let mut most = 0;
    for _ in 0..100 {
        let before = rig.broker.work_done();
        let r = rig.publish_replies(2, "", "ranked", 0, Default::default());
        assert_eq!(delivered_to(&r), ["high"]);
        most = most.max(rig.broker.work_done() - before);
    }
    assert!(most < 20, "a publish took {most} steps above {n} consumers");
    rig.broker.check_invariants();
}

/// In a transaction an ack frees the consumer's prefetch when the transaction commits, as
/// in RabbitMQ, and a rollback returns the delivery without taking the consumer past its
/// prefetch (an ack freed it at once, so after a rollback the consumer held two
/// deliveries against a prefetch of one).
#[test]
fn a_transactional_ack_frees_prefetch_at_commit() {
    use crate::proto::method::{BasicAck, BasicQos, TxCommit, TxRollback, TxSelect};
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "tx", FieldTable::default());
    for _ in 0..3 {
        rig.publish_replies(2, "", "tx", 0, Default::default());
    }
    ok(&rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    ));
    ok(&rig.method(1, Method::TxSelect(TxSelect {})));
    let r = rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "tx".into(),
            consumer_tag: "t".into(),
            ..Default::default()
        }),
    );
    assert_eq!(delivered_to(&r), ["t"]);
    let ack = |rig: &mut Rig, tag: u64| {
        rig.method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple: false,
            }),
        )
    };
    assert!(
        delivered_to(&ack(&mut rig, 1)).is_empty(),
        "held until commit"
    );
    rig.broker.check_invariants();
    assert_eq!(
        delivered_to(&rig.method(1, Method::TxCommit(TxCommit {}))),
        ["t"]
    );
    assert!(delivered_to(&ack(&mut rig, 2)).is_empty());
    assert!(delivered_to(&rig.method(1, Method::TxRollback(TxRollback {}))).is_empty());
    rig.broker.check_invariants();
    assert!(delivered_to(&ack(&mut rig, 2)).is_empty());
    assert_eq!(
        delivered_to(&rig.method(1, Method::TxCommit(TxCommit {}))),
        ["t"]
    );
    rig.broker.check_invariants();
}

/// In a transaction that acks and rolls back again and again, on a channel whose 10,000
/// consumers are paused, nothing is freed and nobody is woken: each pair costs a few
/// steps (an ack woke all 10,000, which the next dispatch walked again).
#[test]
fn acks_rolled_back_wake_nobody() {
    use crate::proto::method::{BasicAck, BasicGet, ChannelFlow, TxRollback, TxSelect};
    let mut rig = rig();
    rig.open(2);
    declare_with(&mut rig, "rolled", FieldTable::default());
    for _ in 0..2 {
        rig.publish_replies(2, "", "rolled", 0, Default::default());
    }
    let r = rig.method(
        1,
        Method::BasicGet(BasicGet {
            queue: "rolled".into(),
            no_ack: false,
            ..Default::default()
        }),
    );
    ok(&r);
    ok(&rig.method(1, Method::ChannelFlow(ChannelFlow { active: false })));
    let n = 10_000;
    consume_many(&mut rig, "rolled", n);
    rig.publish_replies(2, "", "rolled", 0, Default::default());
    ok(&rig.method(1, Method::TxSelect(TxSelect {})));
    let mut most = 0;
    for _ in 0..50 {
        let before = rig.broker.work_done();
        ok(&rig.method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: 1,
                multiple: false,
            }),
        ));
        ok(&rig.method(1, Method::TxRollback(TxRollback {})));
        most = most.max(rig.broker.work_done() - before);
    }
    assert!(most < 20, "an ack and a rollback took {most} steps");
    rig.broker.check_invariants();
}

/// Deliveries settled in an open transaction still count against the channel's unacked
/// limit, so acking without committing does not let a channel hold more than the limit.
#[test]
fn a_transaction_does_not_lift_the_unacked_limit() {
    use crate::proto::method::{BasicAck, TxSelect};
    let mut config = BrokerConfig::default();
    config.limits.max_unacked_per_channel = 3;
    let mut rig = Rig::new(config);
    rig.open(1);
    rig.open(2);
    declare_with(&mut rig, "capped", FieldTable::default());
    ok(&rig.method(1, Method::TxSelect(TxSelect {})));
    let r = rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "capped".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        }),
    );
    ok(&r);
    let mut delivered = 0;
    for _ in 0..10 {
        let r = rig.publish_replies(2, "", "capped", 0, Default::default());
        delivered += delivered_to(&r).len();
    }
    assert_eq!(delivered, 3);
    let r = rig.method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: 0,
            multiple: true,
        }),
    );
    assert!(delivered_to(&r).is_empty(), "held by the open transaction");
    rig.broker.check_invariants();
    let r = rig.method(1, Method::TxCommit(crate::proto::method::TxCommit {}));
    assert_eq!(delivered_to(&r).len(), 3, "the commit frees the limit");
    rig.broker.check_invariants();
}

/// Queues declared with a far `x-expires` and deleted again, and one queue whose head
/// expiry keeps moving earlier, leave stale timers behind: the heap keeps to a bound set
/// by the live queues, however many come and go.
#[test]
fn queue_timers_left_behind_by_deleted_queues_and_earlier_expiries_are_dropped() {
    let mut rig = rig();
    let far = FieldValue::I64(315_360_000_000);
    for i in 0..500 {
        let name = format!("gone-{i}");
        declare_with(&mut rig, &name, args(&[("x-expires", far.clone())]));
        let r = rig.method(
            1,
            Method::QueueDelete(QueueDelete {
                queue: name.as_str().into(),
                ..Default::default()
            }),
        );
        ok(&r);
    }
    rig.broker.check_invariants();
    let bound = super::timers::timers_bound(rig.broker.topology.queues.len());
    assert!(rig.broker.topology.timers.len() <= bound);
    // One queue of length one (drop-head): each message expires before the one it
    // pushes out, so its timer moves earlier with every publish.
    declare_with(
        &mut rig,
        "short",
        args(&[("x-max-length", FieldValue::I64(1))]),
    );
    for i in 0..500u64 {
        let properties = crate::proto::props::BasicProperties {
            expiration: Some(format!("{}", 300_000_000 - 1_000 * i).into()),
            ..Default::default()
        };
        rig.send_publish(1, "", "short", 0, properties);
        rig.drain();
    }
    rig.broker.check_invariants();
    let bound = super::timers::timers_bound(rig.broker.topology.queues.len());
    assert!(rig.broker.topology.timers.len() <= bound);
}

/// A queue's dead letters are routed with `x-dead-letter-routing-key`: longer than a
/// publish's routing key can be, it would make topic matching as long as the client
/// likes, so it is refused (406) where 255 bytes are taken.
#[test]
fn a_dead_letter_routing_key_longer_than_a_routing_key_is_refused() {
    let mut rig = rig();
    let declare = |rig: &mut Rig, name: &str, len: usize| {
        rig.method(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: name.into(),
                arguments: args(&[
                    ("x-dead-letter-exchange", text("amq.topic")),
                    ("x-dead-letter-routing-key", text(&".".repeat(len))),
                ]),
                ..Default::default()
            }),
        )
    };
    ok(&declare(&mut rig, "fits", 255));
    let r = declare(&mut rig, "too-long", 256);
    assert_eq!(
        close_code(&r),
        Some((
            406,
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue \
             'too-long' in vhost '/': routing key is 256 bytes long; routing keys are at \
             most 255 bytes"
                .into()
        ))
    );
    rig.broker.check_invariants();
}
