//! The connection state machine driven with bytes, as a client would send them.

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::proto::frame::{encode_content, encode_method};
use crate::proto::props::BasicProperties;

/// A connection past login, at time 0, before its `tune-ok`.
fn logged_in(config: ConnectionConfig) -> Connection {
    let mut c = Connection::new(config, 0);
    c.handle_bytes(&PROTOCOL_HEADER, 0);
    let mut out = BytesMut::new();
    encode_method(
        0,
        &Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        }),
        &mut out,
    );
    c.handle_bytes(&out, 0);
    assert!(matches!(c.poll_command(), Some(Command::Login(_))));
    c.handle_reply(Reply::LoginOk, 0);
    c
}

/// A client's `tune-ok` asking for `heartbeat` seconds.
fn tune_ok(heartbeat: u16) -> BytesMut {
    let mut out = BytesMut::new();
    encode_method(
        0,
        &Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: 16,
            frame_max: 4096,
            heartbeat,
        }),
        &mut out,
    );
    out
}

fn open(config: ConnectionConfig) -> Connection {
    let mut c = logged_in(config);
    let mut out = tune_ok(0);
    encode_method(
        0,
        &Method::ConnectionOpen(ConnectionOpen::default()),
        &mut out,
    );
    c.handle_bytes(&out, 0);
    assert!(matches!(c.poll_command(), Some(Command::OpenVhost { .. })));
    c.handle_reply(
        Reply::Method {
            channel: 0,
            method: Method::ConnectionOpenOk(ConnectionOpenOk::default()),
        },
        0,
    );
    c
}

fn channel_open(c: &mut Connection, channel: u16) {
    let mut out = BytesMut::new();
    encode_method(
        channel,
        &Method::ChannelOpen(ChannelOpen::default()),
        &mut out,
    );
    c.handle_bytes(&out, 0);
    assert_eq!(c.poll_command(), Some(Command::ChannelOpen { channel }));
}

/// A publish's method and header frames announcing `body_size`, without the body.
fn publish_header(channel: u16, body_size: u64) -> BytesMut {
    let mut full = BytesMut::new();
    let body = vec![0u8; body_size as usize];
    encode_content(
        channel,
        &Method::BasicPublish(BasicPublish::default()),
        &BasicProperties::default(),
        &body,
        4096,
        &mut full,
    );
    // Method frame, then header frame; body frames follow.
    let mut decoder = FrameDecoder::new(1 << 20);
    let mut rest = full.clone();
    let mut len = 0;
    for _ in 0..2 {
        let before = rest.len();
        decoder.decode(&mut rest).expect("frame").expect("whole");
        len += before - rest.len();
    }
    full.truncate(len);
    full
}

fn body_frame(channel: u16, bytes: usize) -> Vec<u8> {
    let mut out = vec![3u8];
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(bytes as u32).to_be_bytes());
    out.extend(std::iter::repeat_n(7u8, bytes));
    out.push(0xce);
    out
}

#[test]
fn the_first_publish_announces_a_publisher_once() {
    let mut c = open(ConnectionConfig::default());
    channel_open(&mut c, 1);
    c.handle_bytes(&publish_header(1, 0), 0);
    assert_eq!(c.poll_command(), Some(Command::Publishing));
    assert!(matches!(c.poll_command(), Some(Command::Publish { .. })));
    c.handle_bytes(&publish_header(1, 0), 0);
    assert!(matches!(c.poll_command(), Some(Command::Publish { .. })));
    assert_eq!(c.poll_command(), None);
}

#[test]
fn bodies_in_progress_on_all_channels_stay_within_one_message() {
    let config = ConnectionConfig {
        max_message_bytes: 10_000,
        ..ConnectionConfig::default()
    };
    let mut c = open(config);
    for ch in 1..=4 {
        channel_open(&mut c, ch);
    }
    for ch in 1..=4 {
        // Each announces a legal 4,000-byte body and sends 3,000 bytes of it.
        c.handle_bytes(&publish_header(ch, 4_000), 0);
        c.handle_bytes(&body_frame(ch, 3_000), 0);
    }
    let commands: Vec<Command> = std::iter::from_fn(|| c.poll_command()).collect();
    let errors: Vec<u16> = commands
        .iter()
        .filter_map(|cmd| match cmd {
            Command::ChannelError { channel, close } => {
                assert_eq!(close.reply_code, PRECONDITION_FAILED);
                Some(*channel)
            }
            _ => None,
        })
        .collect();
    assert_eq!(errors, [4], "{commands:?}");
    assert_eq!(c.partial_body_bytes, 9_000);
    // The others complete normally.
    c.handle_bytes(&body_frame(1, 1_000), 0);
    assert!(matches!(c.poll_command(), Some(Command::Publish { .. })));
    assert_eq!(c.partial_body_bytes, 6_000);
    assert_eq!(c.partial_body_bytes, c.bodies_in_progress());
}

/// A client that negotiates heartbeats and then sends them, but never `connection.open`,
/// is closed at the handshake deadline, as RabbitMQ closes it: heartbeats do not hold a
/// connection (and its place under the connection limits) that never opens.
#[test]
fn heartbeats_do_not_stretch_the_handshake() {
    let config = ConnectionConfig::default();
    let deadline = config.handshake_timeout_ms;
    let mut c = logged_in(config);
    c.handle_bytes(&tune_ok(1), 0);
    let mut now = 0;
    while now < deadline + 5_000 && !c.is_closed() {
        now += 250;
        let mut beat = BytesMut::new();
        crate::proto::frame::encode_heartbeat(&mut beat);
        c.handle_bytes(&beat, now);
        let due = c.poll_timeout().expect("a timer runs");
        assert!(
            due <= deadline,
            "timer at {due} ms, past the handshake deadline"
        );
        if due <= now {
            c.handle_timeout(now);
        }
    }
    assert!(c.is_closed(), "open at {now} ms");
    assert!(now <= deadline + 250, "closed at {now} ms");
}

/// Nothing follows a `connection.close` on the wire: a reply the broker made for a command
/// sent before a connection error (here the open-ok of a channel opened just before) is
/// dropped, not written after the close.
#[test]
fn nothing_is_sent_after_the_servers_connection_close() {
    let mut c = open(ConnectionConfig::default());
    let _ = c.poll_transmit();
    channel_open(&mut c, 1);
    // A method frame on channel 0 that belongs on a channel: a connection error.
    let mut out = BytesMut::new();
    encode_method(0, &Method::BasicQos(BasicQos::default()), &mut out);
    c.handle_bytes(&out, 0);
    let close = c.poll_transmit().expect("the connection.close");
    assert_eq!(close.first(), Some(&1u8), "a method frame");
    c.handle_reply(
        Reply::Method {
            channel: 1,
            method: Method::ChannelOpenOk(ChannelOpenOk::default()),
        },
        0,
    );
    assert!(
        c.poll_transmit().is_none_or(|b| b.is_empty()),
        "the open-ok went out after the close"
    );
}

/// A frame that does not decode, arriving after the broker's `connection.close`, ends the
/// wait for `close-ok` without a second close on the wire (the simulator's hostile clients
/// sent one at seed 375: a deeply nested content header pipelined behind a close-worthy
/// method).
#[test]
fn a_framing_error_after_the_servers_close_sends_no_second_close() {
    let mut c = open(ConnectionConfig::default());
    let _ = c.poll_transmit();
    let mut out = BytesMut::new();
    encode_method(0, &Method::BasicQos(BasicQos::default()), &mut out);
    // A frame of an unknown type right behind it.
    out.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, FRAME_END]);
    c.handle_bytes(&out, 0);
    let sent = c.poll_transmit().expect("the connection.close");
    let mut decoder = crate::proto::frame::FrameDecoder::new(1 << 20);
    let mut sent = BytesMut::from(&sent[..]);
    assert!(matches!(
        decoder.decode(&mut sent),
        Ok(Some(Frame::Method {
            method: Method::ConnectionClose(_),
            ..
        }))
    ));
    assert!(
        sent.is_empty(),
        "a second frame followed the close: {sent:?}"
    );
    assert!(c.poll_transmit().is_none_or(|b| b.is_empty()));
}

/// A frame of `kind` on `channel` with the payload as given.
fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    crate::proto::frame::encode_raw_frame(kind, channel, payload, &mut out);
    out.to_vec()
}

/// A content header payload: class, weight, body size, then `props` (flags and values).
fn header_payload(class_id: u16, weight: u16, body_size: u64, props: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u16(class_id);
    out.put_u16(weight);
    out.put_u64(body_size);
    out.extend_from_slice(props);
    out.to_vec()
}

/// The connection error (code, text, class, method) `bytes` cause on a fresh connection
/// with channel 1 open, or `None` if they cause none.
fn error_after(bytes: &[u8]) -> Option<(u16, String, u16, u16)> {
    let mut c = open(ConnectionConfig::default());
    channel_open(&mut c, 1);
    c.handle_bytes(bytes, 0);
    c.error()
        .map(|e| (e.code, e.text.clone(), e.class_id, e.method_id))
}

fn method_bytes(channel: u16, method: Method) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_method(channel, &method, &mut out);
    out.to_vec()
}

/// Malformed frames get RabbitMQ 3.10's answers: bytes after a method's arguments (501,
/// naming the method), a content header with a weight (505), bytes after its properties
/// or a property list cut short (541).
#[test]
fn malformed_frames_are_answered_as_rabbitmq_answers_them() {
    // Three junk bytes after the arguments.
    let mut payload = BytesMut::new();
    Method::BasicQos(BasicQos::default()).encode(&mut payload);
    payload.extend_from_slice(b"abc");
    let qos = raw_frame(FRAME_METHOD, 1, &payload);
    let (code, text, class_id, method_id) = error_after(&qos).expect("junk is refused");
    assert_eq!((code, class_id, method_id), (FRAME_ERROR, 60, 10));
    assert!(
        text.starts_with("FRAME_ERROR - cannot decode basic.qos"),
        "{text}"
    );

    let publish = method_bytes(1, Method::BasicPublish(BasicPublish::default()));
    let with_header = |header: Vec<u8>| {
        let mut out = publish.clone();
        out.extend(raw_frame(FRAME_HEADER, 1, &header));
        error_after(&out)
    };
    assert_eq!(
        with_header(header_payload(60, 1, 2, &[0, 0])),
        Some((
            UNEXPECTED_FRAME,
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead".into(),
            60,
            40
        ))
    );
    let (code, ..) = with_header(header_payload(60, 0, 2, &[0, 0, b'z', b'z'])).unwrap();
    assert_eq!(code, INTERNAL_ERROR);
    // A message-id flagged but missing.
    let (code, ..) = with_header(header_payload(60, 0, 2, &[0, 0x80])).unwrap();
    assert_eq!(code, INTERNAL_ERROR);
    // The continuation bit alone announces nothing, as in RabbitMQ.
    assert_eq!(with_header(header_payload(60, 0, 2, &[0, 1])), None);
    assert_eq!(with_header(header_payload(60, 0, 2, &[0, 0])), None);
}

/// Methods only a server sends get RabbitMQ's 503 "unimplemented method"; those that carry
/// content are refused once their content header arrives, and a content frame that does
/// not follow them is 505 naming them. An unsolicited `connection.close-ok` is 504.
#[test]
fn server_methods_from_a_client_are_refused_as_rabbitmq_refuses_them() {
    let deliver = method_bytes(
        1,
        Method::BasicDeliver(BasicDeliver {
            consumer_tag: "x".into(),
            delivery_tag: 1,
            ..Default::default()
        }),
    );
    let mut with_header = deliver.clone();
    with_header.extend(raw_frame(
        FRAME_HEADER,
        1,
        &header_payload(60, 0, 2, &[0, 0]),
    ));
    with_header.extend(raw_frame(FRAME_BODY, 1, b"hi"));
    assert_eq!(
        error_after(&with_header),
        Some((
            COMMAND_INVALID,
            "COMMAND_INVALID - unimplemented method".into(),
            60,
            60
        ))
    );
    // The method alone waits for its content.
    assert_eq!(error_after(&deliver), None);
    let mut then_method = deliver.clone();
    then_method.extend(method_bytes(1, Method::BasicQos(BasicQos::default())));
    let (code, text, class_id, method_id) = error_after(&then_method).unwrap();
    assert_eq!((code, class_id, method_id), (UNEXPECTED_FRAME, 60, 60));
    assert!(
        text.contains("expected content header for class 60"),
        "{text}"
    );

    let get_ok = method_bytes(1, Method::BasicGetOk(BasicGetOk::default()));
    let mut get_ok_then_body = get_ok.clone();
    get_ok_then_body.extend(raw_frame(FRAME_BODY, 1, b"hi"));
    let (code, _, _, method_id) = error_after(&get_ok_then_body).unwrap();
    assert_eq!((code, method_id), (UNEXPECTED_FRAME, 71));

    assert_eq!(
        error_after(&method_bytes(
            0,
            Method::ConnectionCloseOk(ConnectionCloseOk {})
        )),
        Some((
            CHANNEL_ERROR,
            "CHANNEL_ERROR - unexpected method in connection state running".into(),
            10,
            51
        ))
    );
}
