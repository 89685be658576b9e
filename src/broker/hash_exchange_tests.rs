//! The `x-consistent-hash` exchange: weights as binding keys, one queue per message,
//! the same key always to the same queue, and RabbitMQ's refusals.

use crate::broker::BrokerConfig;
use crate::broker::test_rig::Rig;
use crate::proto::command::{Command, ConnId, Reply};
use crate::proto::constants::PRECONDITION_FAILED;
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::proto::table::{FieldTable, FieldValue};

/// The reply code of a channel close among `r`, if any.
fn closed(r: &[(ConnId, Reply)]) -> Option<u16> {
    r.iter().find_map(|(_, r)| match r {
        Reply::Method {
            method: Method::ChannelClose(c),
            ..
        } => Some(c.reply_code),
        _ => None,
    })
}

/// Opens channel 1 again after the broker closed it (the protocol layer has taken the
/// client's close-ok).
fn reopen(rig: &mut Rig) {
    rig.command(1, Command::ChannelOpen { channel: 1 });
}

fn exchange(rig: &mut Rig, name: &str, arguments: FieldTable) -> Option<u16> {
    let r = rig.method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: name.into(),
            kind: "x-consistent-hash".into(),
            arguments,
            ..Default::default()
        }),
    );
    closed(&r)
}

fn bind(rig: &mut Rig, queue: &str, exchange: &str, key: &str) -> Option<u16> {
    let r = rig.method(
        1,
        Method::QueueBind(QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        }),
    );
    closed(&r)
}

/// Four queues bound with weights 1, 1, 2 and 4.
fn weighted(rig: &mut Rig, exchange_name: &str, arguments: FieldTable) -> Vec<String> {
    assert_eq!(exchange(rig, exchange_name, arguments), None);
    let queues: Vec<String> = (0..4).map(|i| format!("{exchange_name}-q{i}")).collect();
    for (q, w) in queues.iter().zip(["1", "1", "2", "4"]) {
        rig.declare(1, q, false);
        assert_eq!(bind(rig, q, exchange_name, w), None);
    }
    queues
}

#[test]
fn messages_spread_by_weight_and_a_key_sticks_to_its_queue() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    let queues = weighted(&mut rig, "hash", FieldTable::default());
    let n = 8000;
    for i in 0..n {
        rig.publish_props(
            1,
            "hash",
            &format!("order-{i}"),
            i,
            BasicProperties::default(),
        );
    }
    let counts: Vec<u32> = queues.iter().map(|q| rig.message_count(1, q)).collect();
    assert_eq!(
        counts.iter().sum::<u32>(),
        n,
        "each message reaches one queue: {counts:?}"
    );
    for (count, weight) in counts.iter().zip([1.0, 1.0, 2.0, 4.0]) {
        let expected = f64::from(n) * weight / 8.0;
        assert!(
            (f64::from(*count) - expected).abs() < expected * 0.15,
            "{counts:?} against weights 1:1:2:4"
        );
    }
    // The same key goes where it went before.
    for q in &queues {
        rig.method(
            1,
            Method::QueuePurge(QueuePurge {
                queue: q.clone(),
                ..Default::default()
            }),
        );
    }
    for i in 0..50 {
        rig.publish_props(1, "hash", "the-same-key", i, BasicProperties::default());
    }
    let counts: Vec<u32> = queues.iter().map(|q| rig.message_count(1, q)).collect();
    assert_eq!(counts.iter().filter(|c| **c == 50).count(), 1, "{counts:?}");
    rig.broker.check_invariants();
}

#[test]
fn a_new_binding_moves_only_the_keys_it_takes() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    let queues = weighted(&mut rig, "grow", FieldTable::default());
    let where_each = |rig: &mut Rig, queues: &[String]| -> Vec<usize> {
        (0..400u32)
            .map(|i| {
                for q in queues {
                    rig.method(
                        1,
                        Method::QueuePurge(QueuePurge {
                            queue: q.clone(),
                            ..Default::default()
                        }),
                    );
                }
                rig.publish_props(1, "grow", &format!("k{i}"), i, BasicProperties::default());
                queues
                    .iter()
                    .position(|q| rig.message_count(1, q) == 1)
                    .expect("routed")
            })
            .collect()
    };
    let before = where_each(&mut rig, &queues);
    rig.declare(1, "grow-q4", false);
    assert_eq!(bind(&mut rig, "grow-q4", "grow", "8"), None);
    let mut all = queues.clone();
    all.push("grow-q4".into());
    let after = where_each(&mut rig, &all);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert!(
        after.iter().zip(&before).all(|(a, b)| a == b || *a == 4),
        "keys only move to the new queue"
    );
    // The new binding holds half the weight: about half the keys move, no more.
    assert!((140..=260).contains(&moved), "{moved} of 400 moved");
}

#[test]
fn hash_header_and_hash_property_choose_what_is_hashed() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    let mut on_header = FieldTable::default();
    on_header.insert("hash-header", FieldValue::LongStr("tenant".into()));
    let queues = weighted(&mut rig, "by-header", on_header);
    for i in 0..40 {
        let mut headers = FieldTable::default();
        headers.insert("tenant", FieldValue::LongStr("acme".into()));
        let props = BasicProperties {
            headers: Some(headers),
            ..Default::default()
        };
        // Routing keys differ; the header does not.
        rig.publish_props(1, "by-header", &format!("k{i}"), i, props);
    }
    let counts: Vec<u32> = queues.iter().map(|q| rig.message_count(1, q)).collect();
    assert_eq!(counts.iter().filter(|c| **c == 40).count(), 1, "{counts:?}");
    // Without the header a message is routed, as RabbitMQ routes it: all such messages
    // to one queue.
    for q in &queues {
        rig.method(
            1,
            Method::QueuePurge(QueuePurge {
                queue: q.clone(),
                ..Default::default()
            }),
        );
    }
    for i in 0..20 {
        rig.publish_props(
            1,
            "by-header",
            &format!("k{i}"),
            i,
            BasicProperties::default(),
        );
    }
    let counts: Vec<u32> = queues.iter().map(|q| rig.message_count(1, q)).collect();
    assert_eq!(counts.iter().filter(|c| **c == 20).count(), 1, "{counts:?}");

    let mut on_property = FieldTable::default();
    on_property.insert("hash-property", FieldValue::LongStr("message_id".into()));
    let queues = weighted(&mut rig, "by-id", on_property);
    for i in 0..40 {
        let props = BasicProperties {
            message_id: Some("same".into()),
            ..Default::default()
        };
        rig.publish_props(1, "by-id", &format!("k{i}"), i, props);
    }
    let counts: Vec<u32> = queues.iter().map(|q| rig.message_count(1, q)).collect();
    assert_eq!(counts.iter().filter(|c| **c == 40).count(), 1, "{counts:?}");
}

#[test]
fn bad_weights_and_arguments_are_refused_as_rabbitmq_refuses_them() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    assert_eq!(exchange(&mut rig, "x", FieldTable::default()), None);
    rig.declare(1, "q", false);
    for key in [
        "abc",
        "0",
        "-3",
        "",
        " 1",
        "1 ",
        "99999999999999999999",
        "1000001",
    ] {
        assert_eq!(
            bind(&mut rig, "q", "x", key),
            Some(PRECONDITION_FAILED),
            "{key:?}"
        );
        reopen(&mut rig);
    }
    let mut both = FieldTable::default();
    both.insert("hash-header", FieldValue::LongStr("h".into()));
    both.insert("hash-property", FieldValue::LongStr("message_id".into()));
    assert_eq!(exchange(&mut rig, "both", both), Some(PRECONDITION_FAILED));
    reopen(&mut rig);
    // RabbitMQ hashes message_id, correlation_id and timestamp, and refuses the rest.
    for property in ["body", "priority", "delivery_mode", "app_id"] {
        let mut unknown = FieldTable::default();
        unknown.insert("hash-property", FieldValue::LongStr(property.into()));
        assert_eq!(
            exchange(&mut rig, "unknown", unknown),
            Some(PRECONDITION_FAILED),
            "{property}"
        );
        reopen(&mut rig);
    }
    for property in ["message_id", "correlation_id", "timestamp"] {
        let mut known = FieldTable::default();
        known.insert("hash-property", FieldValue::LongStr(property.into()));
        assert_eq!(exchange(&mut rig, property, known), None);
    }
    assert_eq!(bind(&mut rig, "q", "message_id", "+1"), None);
    assert_eq!(bind(&mut rig, "q", "message_id", "01"), None);
    // The number of bindings is bounded.
    for i in 0..super::exchange::MAX_HASH_BINDINGS {
        assert_eq!(bind(&mut rig, "q", "x", &(i + 1).to_string()), None);
    }
    assert_eq!(
        bind(&mut rig, "q", "x", "1000000"),
        Some(PRECONDITION_FAILED)
    );
    rig.broker.check_invariants();
}
