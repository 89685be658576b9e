//! Raw-byte tests against a running `warren serve`: the error paths close exactly the
//! channel or connection RabbitMQ would, with its reply code, and other clients carry on.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{RawClient, Server};
use warren::proto::constants::*;
use warren::proto::frame::{ContentHeader, Frame, encode_method, encode_raw_frame};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

/// A bystander connection that must keep working while others misbehave.
fn bystander(server: &Server) -> RawClient {
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c
}

/// Publishes to and gets from a fresh queue on the bystander: proves it still works.
fn assert_still_works(c: &mut RawClient, tag: &str) {
    let queue = format!("bystander-{tag}");
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.clone(),
            auto_delete: false,
            ..Default::default()
        }),
    );
    let (_, ok) = c.expect_method();
    assert!(matches!(ok, Method::QueueDeclareOk(_)), "{ok:?}");
    c.publish(1, "", &queue, BasicProperties::default(), b"still here");
    c.send_method(
        1,
        Method::BasicGet(BasicGet {
            queue,
            no_ack: true,
            ..Default::default()
        }),
    );
    let (_, m, _, body) = c.expect_content();
    assert!(matches!(m, Method::BasicGetOk(_)), "{m:?}");
    assert_eq!(body, b"still here");
}

#[test]
fn wrong_protocol_header_is_answered_with_ours_then_closed() {
    let server = Server::start();
    let mut other = bystander(&server);
    for header in [
        &b"AMQP\x00\x00\x09\x02"[..],
        b"HTTP/1.1 200 OK\r\n",
        b"AMQP\x01\x01\x00\x0a",
    ] {
        let mut c = RawClient::connect(server.port);
        c.send_raw(header);
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match std::io::Read::read(&mut c.stream, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, PROTOCOL_HEADER, "reply to header {header:?}");
    }
    assert_still_works(&mut other, "header");
}

#[test]
fn alternate_0_9_1_header_is_accepted() {
    let server = Server::start();
    let mut c = RawClient::connect(server.port);
    c.send_raw(b"AMQP\x01\x01\x00\x09");
    let (ch, m) = c.expect_method();
    assert_eq!(ch, 0);
    let Method::ConnectionStart(start) = m else {
        panic!("{m:?}")
    };
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let caps = match start.server_properties.get("capabilities") {
        Some(FieldValue::Table(t)) => t.clone(),
        other => panic!("no capabilities: {other:?}"),
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(
            caps.get(cap),
            Some(&FieldValue::Bool(true)),
            "capability {cap}"
        );
    }
    let version = start
        .server_properties
        .get("version")
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string();
    assert!(
        version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "numeric version: {version}"
    );
}

#[test]
fn oversized_frame_closes_the_connection_with_frame_error() {
    let server = Server::start();
    let mut other = bystander(&server);
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    // A method frame declaring 200000 bytes of payload, beyond the negotiated 131072.
    let mut frame = vec![FRAME_METHOD, 0, 1];
    frame.extend_from_slice(&200_000u32.to_be_bytes());
    frame.extend_from_slice(&[0; 32]);
    c.send_raw(&frame);
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, FRAME_ERROR, "{close:?}");
    assert!(c.closed_by_server());
    assert_still_works(&mut other, "oversized");
}

#[test]
fn bad_frame_end_and_unknown_frame_type_are_frame_errors() {
    let server = Server::start();
    let mut other = bystander(&server);
    let mut c = RawClient::open(server.port);
    c.send_raw(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00]);
    assert_eq!(c.expect_connection_close().reply_code, FRAME_ERROR);
    let mut c = RawClient::open(server.port);
    c.send_raw(&[5, 0, 0, 0, 0, 0, 0, FRAME_END]);
    assert_eq!(c.expect_connection_close().reply_code, FRAME_ERROR);
    assert_still_works(&mut other, "frame-end");
}

#[test]
fn unknown_class_and_method_are_not_implemented() {
    let server = Server::start();
    let mut other = bystander(&server);
    for (class, method) in [(99u16, 10u16), (60, 99)] {
        let mut c = RawClient::open(server.port);
        c.open_channel(1);
        let mut payload = Vec::new();
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        let mut frame = vec![FRAME_METHOD, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(FRAME_END);
        c.send_raw(&frame);
        let close = c.expect_connection_close();
        assert_eq!(
            close.reply_code, NOT_IMPLEMENTED,
            "class {class} method {method}: {close:?}"
        );
    }
    assert_still_works(&mut other, "unknown-class");
}

#[test]
fn frames_on_unopened_or_closed_channels_are_channel_errors() {
    let server = Server::start();
    let mut other = bystander(&server);
    let mut c = RawClient::open(server.port);
    c.send_method(
        3,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    );
    assert_eq!(c.expect_connection_close().reply_code, CHANNEL_ERROR);

    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c.send_method(
        1,
        Method::ChannelClose(ChannelClose {
            reply_code: 200,
            ..Default::default()
        }),
    );
    let (_, m) = c.expect_method();
    assert!(matches!(m, Method::ChannelCloseOk(_)), "{m:?}");
    c.send_method(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 1,
            ..Default::default()
        }),
    );
    assert_eq!(c.expect_connection_close().reply_code, CHANNEL_ERROR);

    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c.send_method(1, Method::ChannelOpen(ChannelOpen::default()));
    assert_eq!(
        c.expect_connection_close().reply_code,
        CHANNEL_ERROR,
        "second channel.open"
    );

    // A channel reopened in the same write as its close, before the close-ok: a second
    // open, as RabbitMQ answers it, never an open that waits forever.
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    let mut out = BytesMut::new();
    encode_method(
        1,
        &Method::ChannelClose(ChannelClose {
            reply_code: 200,
            ..Default::default()
        }),
        &mut out,
    );
    encode_method(1, &Method::ChannelOpen(ChannelOpen::default()), &mut out);
    c.send_raw(&out);
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, CHANNEL_ERROR);
    assert!(
        close.reply_text.contains("second 'channel.open' seen"),
        "{}",
        close.reply_text
    );
    assert_still_works(&mut other, "channels");
}

#[test]
fn content_frames_out_of_place_are_unexpected() {
    let server = Server::start();
    let mut other = bystander(&server);
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    let mut frame = vec![FRAME_BODY, 0, 1, 0, 0, 0, 3];
    frame.extend_from_slice(b"abc");
    frame.push(FRAME_END);
    c.send_raw(&frame);
    assert_eq!(c.expect_connection_close().reply_code, UNEXPECTED_FRAME);

    // A publish followed by a method instead of its content header.
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c.send_method(
        1,
        Method::BasicPublish(BasicPublish {
            routing_key: "x".into(),
            ..Default::default()
        }),
    );
    c.send_method(1, Method::BasicQos(BasicQos::default()));
    assert_eq!(c.expect_connection_close().reply_code, UNEXPECTED_FRAME);
    assert_still_works(&mut other, "content");
}

#[test]
fn channel_errors_close_only_their_channel() {
    let server = Server::start();
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c.open_channel(2);
    c.send_method(
        2,
        Method::QueueDeclare(QueueDeclare {
            queue: "missing".into(),
            passive: true,
            ..Default::default()
        }),
    );
    let close = c.expect_channel_close(2);
    assert_eq!(close.reply_code, NOT_FOUND);
    assert_eq!(
        close.reply_text,
        "NOT_FOUND - no queue 'missing' in vhost '/'"
    );
    assert_eq!((close.class_id, close.method_id), (50, 10));

    c.send_method(2, Method::ChannelOpen(ChannelOpen::default()));
    let (_, m) = c.expect_method();
    assert!(
        matches!(m, Method::ChannelOpenOk(_)),
        "channel number reusable after close-ok"
    );

    c.send_method(
        2,
        Method::BasicAck(BasicAck {
            delivery_tag: 42,
            multiple: false,
        }),
    );
    let close = c.expect_channel_close(2);
    assert_eq!(close.reply_code, PRECONDITION_FAILED);
    assert_eq!(
        close.reply_text,
        "PRECONDITION_FAILED - unknown delivery tag 42"
    );

    c.publish(1, "nope", "", BasicProperties::default(), b"x");
    let close = c.expect_channel_close(1);
    assert_eq!(close.reply_code, NOT_FOUND);
    assert_eq!(
        close.reply_text,
        "NOT_FOUND - no exchange 'nope' in vhost '/'"
    );
    assert_eq!((close.class_id, close.method_id), (60, 40));
}

#[test]
fn exclusive_queue_is_locked_to_its_connection_and_dies_with_it() {
    let server = Server::start();
    let mut owner = RawClient::open(server.port);
    owner.open_channel(1);
    owner.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "mine".into(),
            exclusive: true,
            ..Default::default()
        }),
    );
    assert!(matches!(owner.expect_method().1, Method::QueueDeclareOk(_)));

    let mut other = RawClient::open(server.port);
    other.open_channel(1);
    other.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "mine".into(),
            passive: true,
            ..Default::default()
        }),
    );
    assert_eq!(other.expect_channel_close(1).reply_code, RESOURCE_LOCKED);
    other.open_channel(1);
    other.send_method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "mine".into(),
            ..Default::default()
        }),
    );
    assert_eq!(other.expect_channel_close(1).reply_code, RESOURCE_LOCKED);

    owner.send_method(
        0,
        Method::ConnectionClose(ConnectionClose {
            reply_code: 200,
            ..Default::default()
        }),
    );
    let (_, m) = owner.expect_method();
    assert!(matches!(m, Method::ConnectionCloseOk(_)));
    std::thread::sleep(Duration::from_millis(100));
    other.open_channel(1);
    other.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "mine".into(),
            passive: true,
            ..Default::default()
        }),
    );
    assert_eq!(
        other.expect_channel_close(1).reply_code,
        NOT_FOUND,
        "deleted when its owner closed"
    );
}

#[test]
fn redeclaration_with_other_settings_is_refused() {
    let server = Server::start();
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            durable: true,
            ..Default::default()
        }),
    );
    assert!(matches!(c.expect_method().1, Method::QueueDeclareOk(_)));
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            durable: false,
            ..Default::default()
        }),
    );
    let close = c.expect_channel_close(1);
    assert_eq!(close.reply_code, PRECONDITION_FAILED);
    assert!(
        close.reply_text.contains("inequivalent arg 'durable'"),
        "{}",
        close.reply_text
    );

    c.open_channel(1);
    c.send_method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "x".into(),
            kind: "fanout".into(),
            ..Default::default()
        }),
    );
    assert!(matches!(c.expect_method().1, Method::ExchangeDeclareOk(_)));
    c.send_method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "x".into(),
            kind: "topic".into(),
            ..Default::default()
        }),
    );
    assert_eq!(c.expect_channel_close(1).reply_code, PRECONDITION_FAILED);

    c.open_channel(1);
    c.send_method(
        1,
        Method::ExchangeDelete(ExchangeDelete {
            exchange: "amq.direct".into(),
            ..Default::default()
        }),
    );
    assert_eq!(c.expect_channel_close(1).reply_code, ACCESS_REFUSED);

    c.open_channel(1);
    c.send_method(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: "y".into(),
            kind: "foo".into(),
            ..Default::default()
        }),
    );
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, COMMAND_INVALID);
    assert_eq!(
        close.reply_text,
        "COMMAND_INVALID - invalid exchange type 'foo'"
    );
}

#[test]
fn login_failures_and_unknown_vhost() {
    let server = Server::start();
    let mut c = RawClient::connect(server.port);
    c.send_raw(&PROTOCOL_HEADER);
    let _start = c.expect_method();
    c.start_ok("guest", "wrong");
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, ACCESS_REFUSED, "{close:?}");

    let mut c = RawClient::connect(server.port);
    c.send_raw(&PROTOCOL_HEADER);
    let _start = c.expect_method();
    c.start_ok("guest", "guest");
    let (_, tune) = c.expect_method();
    let Method::ConnectionTune(tune) = tune else {
        panic!()
    };
    assert_eq!(
        (tune.channel_max, tune.frame_max, tune.heartbeat),
        (2047, 131_072, 60)
    );
    c.send_method(
        0,
        Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 0,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "nowhere".into(),
            ..Default::default()
        }),
    );
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, NOT_ALLOWED);
    assert_eq!(close.reply_text, "NOT_ALLOWED - vhost nowhere not found");
}

#[test]
fn guest_may_only_log_in_from_loopback() {
    // Find an address of this machine that is not loopback, if there is one.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    if probe.connect("10.255.255.255:9").is_err() {
        eprintln!("no non-loopback route on this machine; nothing to check");
        return;
    }
    let ip = probe.local_addr().unwrap().ip();
    println!("non-loopback address: {ip}");
    if ip.is_loopback() || ip.is_unspecified() {
        eprintln!("no non-loopback address on this machine; nothing to check");
        return;
    }
    let server = Server::start();
    let mut c = RawClient::connect_to(&format!("{ip}:{}", server.port));
    c.send_raw(&PROTOCOL_HEADER);
    let _start = c.expect_method();
    c.start_ok("guest", "guest");
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, ACCESS_REFUSED);
}

#[test]
fn missed_heartbeats_close_the_connection_and_server_sends_them() {
    let server = Server::start();
    let mut c = RawClient::connect(server.port);
    c.handshake("guest", "guest", "/", 1);
    let started = Instant::now();
    let mut heartbeats = 0;
    loop {
        match c.recv_frame() {
            Some(Frame::Heartbeat { channel: 0 }) => heartbeats += 1,
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
    let elapsed = started.elapsed();
    assert!(heartbeats >= 1, "the server sends heartbeats");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
}

#[test]
fn mandatory_unroutable_is_returned_and_confirms_ack_it() {
    let server = Server::start();
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    c.send_method(1, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
    assert!(matches!(c.expect_method().1, Method::ConfirmSelectOk(_)));
    let mut out = BytesMut::new();
    let publish = Method::BasicPublish(BasicPublish {
        routing_key: "nobody-home".into(),
        mandatory: true,
        ..Default::default()
    });
    warren::proto::frame::encode_content(
        1,
        &publish,
        &BasicProperties::default(),
        b"hi",
        131072,
        &mut out,
    );
    c.send_raw(&out);
    let (_, m, _, body) = c.expect_content();
    let Method::BasicReturn(ret) = m else {
        panic!("{m:?}")
    };
    assert_eq!(
        (ret.reply_code, ret.reply_text.as_str()),
        (NO_ROUTE, "NO_ROUTE")
    );
    assert_eq!(body, b"hi");
    let (_, m) = c.expect_method();
    assert_eq!(
        m,
        Method::BasicAck(BasicAck {
            delivery_tag: 1,
            multiple: false
        })
    );
}

#[test]
fn full_reject_publish_queue_nacks_and_keeps_what_it_has() {
    let server = Server::start();
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    let args: FieldTable = [
        ("x-max-length".to_string(), FieldValue::I32(2)),
        (
            "x-overflow".to_string(),
            FieldValue::LongStr("reject-publish".into()),
        ),
    ]
    .into_iter()
    .collect();
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "shaved".into(),
            arguments: args,
            ..Default::default()
        }),
    );
    assert!(matches!(c.expect_method().1, Method::QueueDeclareOk(_)));
    c.send_method(1, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
    assert!(matches!(c.expect_method().1, Method::ConfirmSelectOk(_)));
    for i in 0..4u8 {
        c.publish(1, "", "shaved", BasicProperties::default(), &[i]);
    }
    let mut acked = Vec::new();
    let mut nacked = Vec::new();
    while acked.len() + nacked.len() < 4 {
        match c.expect_method().1 {
            Method::BasicAck(a) if a.multiple => {
                acked.extend((acked.len() as u64 + 1)..=a.delivery_tag)
            }
            Method::BasicAck(a) => acked.push(a.delivery_tag),
            Method::BasicNack(n) => nacked.push(n.delivery_tag),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(acked, [1, 2]);
    assert_eq!(nacked, [3, 4]);
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "shaved".into(),
            passive: true,
            ..Default::default()
        }),
    );
    let Method::QueueDeclareOk(ok) = c.expect_method().1 else {
        panic!()
    };
    assert_eq!(ok.message_count, 2);
}

/// A frame of `kind` on `channel` around `payload`.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_raw_frame(kind, channel, payload, &mut out);
    out.to_vec()
}

/// A method frame's payload.
fn method_payload(method: &Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    method.encode(&mut out);
    out.to_vec()
}

/// A class-60 content header payload with `weight`, `body_size`, no properties, then
/// `trailing`.
fn header_payload(weight: u16, body_size: u64, trailing: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let header = ContentHeader {
        class_id: 60,
        weight,
        body_size,
        properties: BasicProperties::default(),
    };
    header.encode(&mut out);
    out.extend_from_slice(trailing);
    out.to_vec()
}

/// Frames RabbitMQ 3.10 refuses are refused with its codes, naming the method it names
/// (checked side by side against it): bytes after a method's arguments 501, a content
/// header with a weight 505, bytes after a header's properties 541, content methods only
/// a server sends 503 once their content arrives, an unsolicited `connection.close-ok` 504.
#[test]
fn malformed_frames_get_rabbitmqs_answers() {
    let server = Server::start();
    let mut other = bystander(&server);
    let publish = raw_frame(
        FRAME_METHOD,
        1,
        &method_payload(&Method::BasicPublish(BasicPublish {
            routing_key: "nowhere".into(),
            ..Default::default()
        })),
    );
    let mut qos = method_payload(&Method::BasicQos(BasicQos::default()));
    qos.extend_from_slice(b"abc");
    let deliver = raw_frame(
        FRAME_METHOD,
        1,
        &method_payload(&Method::BasicDeliver(BasicDeliver {
            consumer_tag: "x".into(),
            delivery_tag: 1,
            ..Default::default()
        })),
    );
    // What is sent, the bytes, the reply code, the class and method the close names.
    type Case = (&'static str, Vec<u8>, u16, (u16, u16));
    let cases: Vec<Case> = vec![
        (
            "junk after basic.qos",
            raw_frame(FRAME_METHOD, 1, &qos),
            FRAME_ERROR,
            (60, 10),
        ),
        (
            "header weight",
            [
                &publish[..],
                &raw_frame(FRAME_HEADER, 1, &header_payload(1, 0, b"")),
            ]
            .concat(),
            UNEXPECTED_FRAME,
            (60, 40),
        ),
        (
            "bytes after the properties",
            [
                &publish[..],
                &raw_frame(FRAME_HEADER, 1, &header_payload(0, 0, b"zz")),
            ]
            .concat(),
            INTERNAL_ERROR,
            (0, 0),
        ),
        (
            "basic.deliver from a client",
            [
                &deliver[..],
                &raw_frame(FRAME_HEADER, 1, &header_payload(0, 2, b"")),
                &raw_frame(FRAME_BODY, 1, b"hi"),
            ]
            .concat(),
            COMMAND_INVALID,
            (60, 60),
        ),
        (
            "connection.close-ok",
            raw_frame(
                FRAME_METHOD,
                0,
                &method_payload(&Method::ConnectionCloseOk(ConnectionCloseOk {})),
            ),
            CHANNEL_ERROR,
            (10, 51),
        ),
    ];
    for (what, bytes, code, failing) in cases {
        let mut c = RawClient::open(server.port);
        c.open_channel(1);
        c.send_raw(&bytes);
        let close = c.expect_connection_close();
        assert_eq!(
            (close.reply_code, (close.class_id, close.method_id)),
            (code, failing),
            "{what}: {}",
            close.reply_text
        );
    }
    assert_still_works(&mut other, "malformed");
}
