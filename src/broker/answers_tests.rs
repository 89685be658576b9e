//! Declares and consumes that RabbitMQ 3.10 answers in particular ways, answered the same
//! way here: the reply code and text it gives.

use bytes::Bytes;

use crate::broker::BrokerConfig;
use crate::broker::test_rig::Rig;
use crate::proto::command::{ConnId, Reply};
use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};

fn rig() -> Rig {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    rig
}

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The channel.close in these replies: code and text.
fn closed(r: &[(ConnId, Reply)]) -> Option<(u16, String)> {
    r.iter().find_map(|(_, r)| match r {
        Reply::Method {
            method: Method::ChannelClose(c),
            ..
        } => Some((c.reply_code, c.reply_text.clone())),
        _ => None,
    })
}

/// Answers the broker's channel.close on channel 1 and opens the channel again.
fn reopen(rig: &mut Rig) {
    rig.method(1, Method::ChannelCloseOk(ChannelCloseOk {}));
    rig.command(
        1,
        crate::proto::command::Command::ChannelOpen { channel: 1 },
    );
}

/// Declares `queue` with these arguments on a fresh channel 1; the channel.close if any.
fn declare(rig: &mut Rig, queue: &str, durable: bool, args: FieldTable) -> Option<(u16, String)> {
    let r = rig.method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            durable,
            arguments: args,
            ..Default::default()
        }),
    );
    let c = closed(&r);
    if c.is_some() {
        reopen(rig);
    } else {
        assert!(
            r.iter().any(|(_, r)| matches!(
                r,
                Reply::Method {
                    method: Method::QueueDeclareOk(_),
                    ..
                }
            )),
            "{r:?}"
        );
    }
    c
}

#[test]
fn queue_versions_other_than_one_and_two_are_refused() {
    let mut rig = rig();
    for v in [1, 2] {
        assert_eq!(
            declare(
                &mut rig,
                &format!("v{v}"),
                false,
                table(&[("x-queue-version", FieldValue::I32(v))])
            ),
            None
        );
    }
    assert_eq!(
        declare(&mut rig, "v3", false, table(&[("x-queue-version", FieldValue::I32(3))])),
        Some((
            406,
            "PRECONDITION_FAILED - invalid arg 'x-queue-version' for queue 'v3' in vhost '/': \"unsupported queue version '3'\"".into()
        ))
    );
    assert_eq!(
        declare(&mut rig, "vs", false, table(&[("x-queue-version", text("1"))])),
        Some((
            406,
            "PRECONDITION_FAILED - invalid arg 'x-queue-version' for queue 'vs' in vhost '/': \"expected integer, got longstr\"".into()
        ))
    );
}

#[test]
fn arguments_of_another_queue_type_are_refused() {
    let mut rig = rig();
    for key in ["x-delivery-limit", "x-max-age", "x-queue-leader-locator"] {
        assert_eq!(
            declare(&mut rig, "c", false, table(&[(key, FieldValue::I32(3))])),
            Some((
                406,
                format!(
                    "PRECONDITION_FAILED - invalid arg '{key}' for queue 'c' in vhost '/' of queue type rabbit_classic_queue"
                )
            ))
        );
    }
    // An argument no queue type knows is kept, as RabbitMQ keeps it.
    assert_eq!(
        declare(
            &mut rig,
            "c",
            false,
            table(&[("x-bogus", FieldValue::I32(3))])
        ),
        None
    );
    for key in ["x-max-priority", "x-queue-mode", "x-queue-version"] {
        let value = if key == "x-queue-mode" {
            text("lazy")
        } else {
            FieldValue::I32(2)
        };
        assert_eq!(
            declare(
                &mut rig,
                "qq",
                true,
                table(&[("x-queue-type", text("quorum")), (key, value)])
            ),
            Some((
                406,
                format!(
                    "PRECONDITION_FAILED - invalid arg '{key}' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue"
                )
            ))
        );
    }
    assert_eq!(
        declare(
            &mut rig,
            "qq",
            true,
            table(&[
                ("x-queue-type", text("quorum")),
                ("x-delivery-limit", FieldValue::I32(3))
            ])
        ),
        None
    );
}

fn consume(rig: &mut Rig, queue: &str, exclusive: bool) -> Option<(u16, String)> {
    consume_with(rig, queue, exclusive, FieldTable::default())
}

fn consume_with(
    rig: &mut Rig,
    queue: &str,
    exclusive: bool,
    arguments: FieldTable,
) -> Option<(u16, String)> {
    let r = rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: queue.into(),
            exclusive,
            arguments,
            ..Default::default()
        }),
    );
    closed(&r)
}

#[test]
fn a_classic_single_active_consumer_queue_refuses_an_exclusive_consumer() {
    let mut rig = rig();
    let sac = table(&[("x-single-active-consumer", FieldValue::Bool(true))]);
    assert_eq!(declare(&mut rig, "sac", false, sac.clone()), None);
    assert_eq!(
        consume(&mut rig, "sac", true),
        Some((
            403,
            "ACCESS_REFUSED - queue 'sac' in vhost '/' in exclusive use".into()
        ))
    );
    reopen(&mut rig);
    assert_eq!(consume(&mut rig, "sac", false), None);
    // A plain queue takes an exclusive consumer.
    assert_eq!(
        declare(&mut rig, "plain", false, FieldTable::default()),
        None
    );
    assert_eq!(consume(&mut rig, "plain", true), None);
}

#[test]
fn the_reply_to_pseudo_queue_is_declared_passive_or_not() {
    let mut rig = rig();
    for durable in [false, true] {
        let r = rig.method(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: "amq.rabbitmq.reply-to".into(),
                durable,
                ..Default::default()
            }),
        );
        assert!(
            matches!(
                r.as_slice(),
                [(
                    _,
                    Reply::Method {
                        method: Method::QueueDeclareOk(QueueDeclareOk {
                            message_count: 0,
                            consumer_count: 1,
                            ..
                        }),
                        ..
                    }
                )]
            ),
            "{r:?}"
        );
    }
    // Another amq. name is still refused, and an address nobody holds is not found.
    assert_eq!(
        declare(&mut rig, "amq.foo", false, FieldTable::default()),
        Some((
            403,
            "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'".into()
        ))
    );
    assert_eq!(
        declare(
            &mut rig,
            "amq.rabbitmq.reply-to.foo",
            false,
            FieldTable::default()
        ),
        Some((
            404,
            "NOT_FOUND - no queue 'amq.rabbitmq.reply-to.foo' in vhost '/'".into()
        ))
    );
}

#[test]
fn a_delivery_mode_other_than_one_or_two_is_refused() {
    let mut rig = rig();
    for mode in [0u8, 3, 7, 255] {
        let message = std::sync::Arc::new(crate::proto::command::Message {
            exchange: String::new(),
            routing_key: "nowhere".into(),
            properties: crate::proto::props::BasicProperties {
                delivery_mode: Some(mode),
                ..Default::default()
            },
            body: Bytes::new(),
        });
        let r = rig.command(
            1,
            crate::proto::command::Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message,
            },
        );
        assert_eq!(
            closed(&r),
            Some((
                406,
                format!("PRECONDITION_FAILED - invalid message: {{delivery_mode_unknown,{mode}}}")
            ))
        );
        reopen(&mut rig);
    }
    for mode in [1u8, 2] {
        rig.publish(1, "", "nowhere", 0, mode == 2);
    }
}

/// Consumer arguments RabbitMQ 3.10 checks: another queue type's (406 "of queue type"),
/// then `x-priority` an integer and `x-cancel-on-ha-failover` a boolean.
#[test]
fn consumer_arguments_are_checked_as_rabbitmq_checks_them() {
    let mut rig = rig();
    let quorum = table(&[("x-queue-type", text("quorum"))]);
    assert_eq!(declare(&mut rig, "cq", false, FieldTable::default()), None);
    assert_eq!(declare(&mut rig, "qq", true, quorum), None);
    let cases: [(&str, &str, FieldValue, Option<&str>); 9] = [
        ("cq", "x-priority", FieldValue::I8(3), None),
        (
            "cq",
            "x-priority",
            text("5"),
            Some(
                "invalid arg 'x-priority' for queue 'cq' in vhost '/': \"expected integer, got longstr\"",
            ),
        ),
        (
            "qq",
            "x-priority",
            FieldValue::F64(5.5),
            Some(
                "invalid arg 'x-priority' for queue 'qq' in vhost '/': \"expected integer, got double\"",
            ),
        ),
        (
            "cq",
            "x-cancel-on-ha-failover",
            FieldValue::Bool(true),
            None,
        ),
        (
            "cq",
            "x-cancel-on-ha-failover",
            FieldValue::I32(1),
            Some(
                "invalid arg 'x-cancel-on-ha-failover' for queue 'cq' in vhost '/': {unacceptable_type,signedint}",
            ),
        ),
        (
            "qq",
            "x-cancel-on-ha-failover",
            FieldValue::Bool(true),
            Some(
                "invalid arg 'x-cancel-on-ha-failover' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue",
            ),
        ),
        (
            "cq",
            "x-stream-offset",
            text("first"),
            Some(
                "invalid arg 'x-stream-offset' for queue 'cq' in vhost '/' of queue type rabbit_classic_queue",
            ),
        ),
        (
            "qq",
            "x-stream-offset",
            FieldValue::I64(5),
            Some(
                "invalid arg 'x-stream-offset' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue",
            ),
        ),
        ("cq", "x-unknown", text("z"), None),
    ];
    for (queue, key, value, refused) in cases {
        let got = consume_with(&mut rig, queue, false, table(&[(key, value.clone())]));
        let want = refused.map(|t| (406, format!("PRECONDITION_FAILED - {t}")));
        assert_eq!(got, want, "{queue} {key} {value:?}");
        if got.is_some() {
            reopen(&mut rig);
        }
    }
}

/// `channel.flow-ok` answers a `channel.flow` only a server sends, and warren sends none:
/// RabbitMQ's 503 "unimplemented method", naming it. So for other methods only a server
/// sends.
#[test]
fn methods_only_a_server_sends_are_unimplemented() {
    for method in [
        Method::ChannelFlowOk(ChannelFlowOk { active: true }),
        Method::BasicConsumeOk(BasicConsumeOk {
            consumer_tag: "x".into(),
        }),
        Method::QueueDeclareOk(QueueDeclareOk::default()),
        Method::ChannelCloseOk(ChannelCloseOk {}),
    ] {
        let mut rig = rig();
        let (class_id, method_id) = (method.class_id(), method.method_id());
        let r = rig.method(1, method);
        let close = r.iter().find_map(|(_, r)| match r {
            Reply::Method {
                method: Method::ConnectionClose(c),
                ..
            } => Some(c.clone()),
            _ => None,
        });
        assert_eq!(
            close,
            Some(ConnectionClose {
                reply_code: 503,
                reply_text: "COMMAND_INVALID - unimplemented method".into(),
                class_id,
                method_id,
            })
        );
    }
}

#[test]
fn quorum_only_arguments_are_checked_with_rabbitmqs_bounds() {
    let mut rig = rig();
    let quorum =
        |key: &str, n: i64| table(&[("x-queue-type", text("quorum")), (key, FieldValue::I64(n))]);
    for (key, n, why) in [
        ("x-quorum-initial-group-size", 0, "{value_zero,0}"),
        ("x-quorum-initial-group-size", -1, "{value_negative,-1}"),
        ("x-max-in-memory-length", -5, "{value_negative,-5}"),
        ("x-max-in-memory-bytes", -5, "{value_negative,-5}"),
    ] {
        assert_eq!(
            declare(&mut rig, "qq", true, quorum(key, n)),
            Some((
                406,
                format!(
                    "PRECONDITION_FAILED - invalid arg '{key}' for queue 'qq' in vhost '/': {why}"
                )
            )),
            "{key} {n}"
        );
    }
    for (key, n) in [
        ("x-quorum-initial-group-size", 3),
        ("x-max-in-memory-length", 0),
        ("x-max-in-memory-bytes", 1000),
    ] {
        assert_eq!(
            declare(&mut rig, &format!("qq-{key}"), true, quorum(key, n)),
            None
        );
    }
}

#[test]
fn an_exclusive_queue_redeclared_without_exclusive_is_locked() {
    let mut rig = rig();
    let exclusive = |rig: &mut Rig, queue: &str, exclusive: bool| {
        let r = rig.method(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: queue.into(),
                exclusive,
                ..Default::default()
            }),
        );
        closed(&r)
    };
    let locked = |q: &str| {
        Some((
            405,
            format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
            ),
        ))
    };
    assert_eq!(exclusive(&mut rig, "mine", true), None);
    assert_eq!(exclusive(&mut rig, "mine", true), None);
    assert_eq!(exclusive(&mut rig, "mine", false), locked("mine"));
    reopen(&mut rig);
    // And a shared queue redeclared as exclusive.
    assert_eq!(exclusive(&mut rig, "shared", false), None);
    assert_eq!(exclusive(&mut rig, "shared", true), locked("shared"));
}
