//! Length limits with consumers waiting: a drop-head queue hands a message to a consumer
//! that can take it before the limit counts it, as RabbitMQ does, so `x-max-length` 0
//! delivers to live consumers and drops only what nobody can take.

use bytes::Bytes;

use crate::broker::BrokerConfig;
use crate::broker::test_rig::{Rig, delivered};
use crate::proto::command::{ConnId, Reply};
use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};

fn rig_with(limit: (&str, i32)) -> Rig {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    let arguments: FieldTable = [(limit.0.to_string(), FieldValue::I32(limit.1))]
        .into_iter()
        .collect();
    let r = rig.method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            arguments,
            ..Default::default()
        }),
    );
    assert!(matches!(
        r.as_slice(),
        [(
            _,
            Reply::Method {
                method: Method::QueueDeclareOk(_),
                ..
            }
        )]
    ));
    rig
}

/// Consumes from "q" with manual acks and this prefetch.
fn consume(rig: &mut Rig, prefetch: u16) {
    rig.method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: prefetch,
            ..Default::default()
        }),
    );
    rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        }),
    );
}

/// Publishes a transient message with this body to "q"; returns the replies.
fn publish(rig: &mut Rig, body: u32) -> Vec<(ConnId, Reply)> {
    rig.publish_replies(1, "", "q", body, Default::default())
}

#[test]
fn a_max_length_of_zero_delivers_to_a_consumer_with_room() {
    let mut rig = rig_with(("x-max-length", 0));
    consume(&mut rig, 1);
    assert_eq!(delivered(&publish(&mut rig, 1)), vec![(1, 1)]);
    // The consumer is full: nobody can take the next one, and the limit drops it.
    assert!(delivered(&publish(&mut rig, 2)).is_empty());
    assert_eq!(rig.message_count(1, "q"), 0);
    rig.method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: 1,
            multiple: false,
        }),
    );
    assert_eq!(delivered(&publish(&mut rig, 3)), vec![(2, 3)]);
    rig.broker.check_invariants();
}

#[test]
fn a_byte_limit_of_zero_delivers_to_a_consumer_with_room() {
    let mut rig = rig_with(("x-max-length-bytes", 0));
    consume(&mut rig, 10);
    assert_eq!(delivered(&publish(&mut rig, 1)), vec![(1, 1)]);
    assert_eq!(rig.message_count(1, "q"), 0);
    rig.broker.check_invariants();
}

#[test]
fn publishes_in_one_round_each_reach_a_consumer_with_room() {
    let mut rig = rig_with(("x-max-length", 0));
    consume(&mut rig, 2);
    // Three publishes handled before any dispatch runs: two fit the prefetch.
    for body in 1..=3u32 {
        let message = std::sync::Arc::new(crate::proto::command::Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Default::default(),
            body: Bytes::copy_from_slice(&body.to_be_bytes()),
        });
        rig.broker.handle_command(
            1,
            crate::proto::command::Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message,
            },
            rig.now,
        );
    }
    assert_eq!(delivered(&rig.drain()), vec![(1, 1), (2, 2)]);
    assert_eq!(rig.message_count(1, "q"), 0);
    rig.broker.check_invariants();
}

#[test]
fn a_full_consumer_leaves_the_limit_to_drop_the_head() {
    let mut rig = rig_with(("x-max-length", 1));
    consume(&mut rig, 1);
    assert_eq!(delivered(&publish(&mut rig, 1)), vec![(1, 1)]);
    assert!(delivered(&publish(&mut rig, 2)).is_empty());
    assert!(delivered(&publish(&mut rig, 3)).is_empty());
    assert_eq!(rig.message_count(1, "q"), 1);
    let r = rig.method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: 1,
            multiple: false,
        }),
    );
    // 2 was dropped from the head when 3 came.
    assert_eq!(delivered(&r), vec![(2, 3)]);
    rig.broker.check_invariants();
}
