//! The `x-delayed-message` exchange: messages with `x-delay` wait, then route as the
//! exchange's `x-delayed-type` says; stored ones survive a restart; RabbitMQ's refusals.

use crate::broker::BrokerConfig;
use crate::broker::admin::{AdminReply, AdminRequest};
use crate::broker::test_rig::{Rig, admin_answer};
use crate::proto::command::{Command, ConnId, Reply};
use crate::proto::constants::{COMMAND_INVALID, PRECONDITION_FAILED};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::proto::table::{FieldTable, FieldValue};

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

fn closed(r: &[(ConnId, Reply)]) -> Option<(u16, String)> {
    r.iter().find_map(|(_, r)| match r {
        Reply::Method {
            method: Method::ChannelClose(c),
            ..
        } => Some((c.reply_code, c.reply_text.clone())),
        _ => None,
    })
}

fn declare(rig: &mut Rig, name: &str, arguments: FieldTable) -> Option<(u16, String)> {
    let r = rig.method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: name.into(),
            kind: "x-delayed-message".into(),
            durable: true,
            arguments,
            ..Default::default()
        }),
    );
    closed(&r)
}

fn delayed_publish(
    rig: &mut Rig,
    key: &str,
    body: u32,
    delay: Option<FieldValue>,
    persistent: bool,
) {
    let mut headers = FieldTable::default();
    if let Some(d) = delay {
        headers.insert("x-delay", d);
    }
    let properties = BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        headers: Some(headers),
        ..Default::default()
    };
    rig.publish_props(1, "later", key, body, properties);
}

fn waiting(rig: &mut Rig) -> Option<u64> {
    let now = rig.now;
    match admin_answer(
        &mut rig.broker,
        AdminRequest::ListExchanges { vhost: None },
        now,
    )
    .result
    {
        Ok(AdminReply::Exchanges(xs)) => {
            let x = xs.iter().find(|x| x.name == "later").expect("listed");
            assert_eq!(x.kind, "x-delayed-message");
            x.messages_delayed
        }
        other => panic!("{other:?}"),
    }
}

fn tick(rig: &mut Rig, to_ms: u64) {
    rig.now = to_ms;
    rig.broker.handle_timeout(to_ms);
    rig.drain();
}

fn setup() -> Rig {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    rig.declare(1, "q", true);
    direct_delayed_to_q(&mut rig, "later");
    rig
}

/// Declares `exchange`, a delayed exchange of type direct, bound to queue `q` with key `k`.
fn direct_delayed_to_q(rig: &mut Rig, exchange: &str) {
    let args: FieldTable = [("x-delayed-type".to_string(), text("direct"))]
        .into_iter()
        .collect();
    assert_eq!(declare(rig, exchange, args), None);
    let r = rig.method(
        1,
        Method::QueueBind(QueueBind {
            queue: "q".into(),
            exchange: exchange.into(),
            routing_key: "k".into(),
            ..Default::default()
        }),
    );
    assert_eq!(closed(&r), None);
}

#[test]
fn a_delayed_message_waits_its_delay_and_survives_a_restart() {
    let mut rig = setup();
    let t0 = rig.now;
    delayed_publish(&mut rig, "k", 1, Some(FieldValue::I32(5_000)), true);
    delayed_publish(&mut rig, "k", 2, Some(FieldValue::I64(60_000)), false);
    assert_eq!(rig.get(1, "q"), None, "not before its delay");
    assert_eq!(waiting(&mut rig), Some(2));
    // No delay, a zero or negative one, or one that is not an integer: routed at once.
    delayed_publish(&mut rig, "k", 3, None, false);
    delayed_publish(&mut rig, "k", 4, Some(FieldValue::I32(0)), false);
    delayed_publish(&mut rig, "k", 5, Some(text("1000")), false);
    assert_eq!(rig.get(1, "q").map(|m| m.0), Some(3));
    assert_eq!(rig.get(1, "q").map(|m| m.0), Some(4));
    assert_eq!(rig.get(1, "q").map(|m| m.0), Some(5));
    let due = rig
        .broker
        .poll_timeout()
        .expect("a timer for the delayed message");
    assert!(due >= t0 + 5_000 && due <= rig.now + 5_000, "due at {due}");
    tick(&mut rig, due - 1);
    assert_eq!(rig.get(1, "q"), None);
    // A crash: the persistent message to the durable exchange was stored, the transient
    // one was not.
    let mut rig = rig.restart();
    rig.open(1);
    assert_eq!(waiting(&mut rig), Some(1));
    tick(&mut rig, due);
    assert_eq!(rig.get(1, "q").map(|m| m.0), Some(1));
    assert_eq!(waiting(&mut rig), Some(0));
    // Released: a second restart does not release it again.
    let mut rig = rig.restart();
    rig.open(1);
    assert_eq!(rig.get(1, "q"), None);
    assert_eq!(waiting(&mut rig), Some(0));
    rig.broker.check_invariants();
}

#[test]
fn deleting_the_exchange_drops_what_waits_in_it() {
    let mut rig = setup();
    delayed_publish(&mut rig, "k", 1, Some(FieldValue::I32(5_000)), true);
    let r = rig.method(
        1,
        Method::ExchangeDelete(ExchangeDelete {
            exchange: "later".into(),
            ..Default::default()
        }),
    );
    assert_eq!(closed(&r), None);
    assert!(rig.broker.topology.delayed.is_empty());
    let rig = rig.restart();
    assert!(
        rig.broker.topology.delayed.is_empty(),
        "dropped from the store too"
    );
}

/// Deleting one delayed exchange drops what waits in it and nothing of what waits in
/// another, which is still delivered when due, across a restart.
#[test]
fn deleting_one_delayed_exchange_leaves_what_waits_in_others() {
    let mut rig = setup();
    direct_delayed_to_q(&mut rig, "other");
    let delay = |ms| {
        let headers: FieldTable = [("x-delay".to_string(), FieldValue::I32(ms))]
            .into_iter()
            .collect();
        BasicProperties {
            delivery_mode: Some(2),
            headers: Some(headers),
            ..Default::default()
        }
    };
    for (body, exchange) in [(1, "later"), (2, "other"), (3, "later"), (4, "other")] {
        rig.publish_props(1, exchange, "k", body, delay(1_000 * body as i32));
    }
    assert_eq!(rig.broker.topology.delayed.count_in("/", "later"), 2);
    let r = rig.method(
        1,
        Method::ExchangeDelete(ExchangeDelete {
            exchange: "later".into(),
            ..Default::default()
        }),
    );
    assert_eq!(closed(&r), None);
    assert_eq!(rig.broker.topology.delayed.len(), 2);
    assert_eq!(rig.broker.topology.delayed.count_in("/", "later"), 0);
    rig.broker.check_invariants();
    let mut rig = rig.restart();
    rig.open(1);
    assert_eq!(rig.broker.topology.delayed.count_in("/", "other"), 2);
    let t = rig.now + 10_000;
    tick(&mut rig, t);
    assert_eq!(rig.get(1, "q").map(|m| m.0), Some(2));
    assert_eq!(rig.get(1, "q").map(|m| m.0), Some(4));
    assert_eq!(rig.get(1, "q"), None);
    rig.broker.check_invariants();
}

#[test]
fn a_delayed_exchange_needs_an_existing_delayed_type() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    assert_eq!(
        declare(&mut rig, "a", FieldTable::default()),
        Some((
            PRECONDITION_FAILED,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing exchange type".into()
        ))
    );
    rig.command(1, Command::ChannelOpen { channel: 1 });
    let own: FieldTable = [("x-delayed-type".to_string(), text("x-delayed-message"))]
        .into_iter()
        .collect();
    assert_eq!(
        declare(&mut rig, "b", own),
        Some((
            PRECONDITION_FAILED,
            "PRECONDITION_FAILED - Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'".into()
        ))
    );
    rig.command(1, Command::ChannelOpen { channel: 1 });
    let bogus: FieldTable = [("x-delayed-type".to_string(), text("bogus"))]
        .into_iter()
        .collect();
    let r = rig.method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "c".into(),
            kind: "x-delayed-message".into(),
            arguments: bogus,
            ..Default::default()
        }),
    );
    let code = r.iter().find_map(|(_, r)| match r {
        Reply::Method {
            method: Method::ConnectionClose(c),
            ..
        } => Some(c.reply_code),
        _ => None,
    });
    assert_eq!(
        code,
        Some(COMMAND_INVALID),
        "an unknown type, as for any exchange"
    );
}
