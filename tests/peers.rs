//! Slow, stuck and greedy peers against a real `warren serve`: a consumer that stops
//! reading is closed after the send timeout (or earlier, by missed heartbeats, which keep
//! counting while its socket is full) and its unacked messages go to another consumer; a
//! peer that opens sockets without finishing the handshake is refused past its limit
//! while other addresses connect.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{RawClient, Server};
use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{Frame, FrameDecoder, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

/// Messages of this size fill socket buffers quickly.
const BODY_BYTES: usize = 64 * 1024;

fn start(config: &str) -> (Server, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(config.as_bytes()).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    (Server::start_with(&["--config", &path]), file)
}

fn declare(c: &mut RawClient, queue: &str) {
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            ..Default::default()
        }),
    );
    let (_, m) = c.expect_method();
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
}

/// Publishes `count` messages (numbered in their body) with confirms; waits for them.
fn publish_confirmed(c: &mut RawClient, queue: &str, count: usize) {
    c.send_method(1, Method::ConfirmSelect(ConfirmSelect { nowait: false }));
    assert!(matches!(c.expect_method().1, Method::ConfirmSelectOk(_)));
    for i in 0..count {
        let mut body = vec![b'.'; BODY_BYTES];
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        c.publish(1, "", queue, BasicProperties::default(), &body);
    }
    let mut confirmed = 0;
    while confirmed < count as u64 {
        match c.expect_method().1 {
            Method::BasicAck(a) if a.multiple => confirmed = a.delivery_tag,
            Method::BasicAck(a) => confirmed = confirmed.max(a.delivery_tag),
            other => panic!("expected confirms, got {other:?}"),
        }
    }
}

fn consume(c: &mut RawClient, queue: &str, tag: &str) {
    c.send_method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: queue.into(),
            consumer_tag: tag.into(),
            ..Default::default()
        }),
    );
}

/// A consumer that takes deliveries and then never reads again: its socket fills up.
fn stuck_consumer(port: u16, queue: &str, heartbeat_s: u16) -> RawClient {
    let mut c = RawClient::connect(port);
    c.handshake("guest", "guest", "/", heartbeat_s);
    c.open_channel(1);
    consume(&mut c, queue, "stuck");
    c
}

/// Consumes on `c` until `count` distinct messages arrived (acking each), or the deadline
/// passes; returns how many of them were flagged redelivered.
fn drain(c: &mut RawClient, count: usize, deadline: Instant) -> (usize, usize) {
    let mut seen = std::collections::BTreeSet::new();
    let mut redelivered = 0;
    while seen.len() < count && Instant::now() < deadline {
        let (_, m) = c.expect_method();
        let Method::BasicDeliver(d) = m else {
            continue;
        };
        let Some(Frame::Header { header, .. }) = c.recv_frame() else {
            panic!("expected a content header");
        };
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            match c.recv_frame() {
                Some(Frame::Body { payload, .. }) => body.extend_from_slice(&payload),
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        let n = u64::from_be_bytes(body[..8].try_into().unwrap());
        seen.insert(n);
        redelivered += usize::from(d.redelivered);
        c.send_method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: d.delivery_tag,
                multiple: false,
            }),
        );
    }
    (seen.len(), redelivered)
}

/// Reads what the server sent until it closes the socket; returns whether it did within
/// `limit`.
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 1 << 20];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_consumer_that_stops_reading_is_closed_after_the_send_timeout_and_its_messages_requeued() {
    let (server, _config) = start("send_timeout_ms = 2000\n");
    let mut publisher = RawClient::open(server.port);
    publisher.open_channel(1);
    declare(&mut publisher, "slow");
    // Far more than the socket buffers and the broker's unwritten-bytes limit hold.
    let count = 400;
    publish_confirmed(&mut publisher, "slow", count);

    let mut stuck = stuck_consumer(server.port, "slow", 0);
    // Let the broker fill the stuck consumer's socket.
    std::thread::sleep(Duration::from_millis(500));
    let stalled_at = Instant::now();

    let mut bystander = RawClient::open(server.port);
    bystander.open_channel(1);
    consume(&mut bystander, "slow", "bystander");
    let (got, redelivered) = drain(&mut bystander, count, stalled_at + Duration::from_secs(15));
    let took = stalled_at.elapsed();
    assert_eq!(got, count, "every message reaches the bystander");
    assert!(
        redelivered > 0,
        "the stuck consumer's unacked messages came back to the queue"
    );
    assert!(
        took >= Duration::from_secs(1),
        "not closed before the send timeout ({took:?})"
    );
    println!(
        "stuck consumer closed; bystander had all {count} messages ({redelivered} redelivered) {took:?} after the stall"
    );
    assert!(
        closed_within(&mut stuck.stream, Duration::from_secs(5)),
        "the server closed the stuck consumer's socket"
    );
}

#[test]
fn missed_heartbeats_close_a_consumer_whose_socket_is_full() {
    // The send timeout is far away: only the heartbeat check can close it in time.
    let (server, _config) = start("send_timeout_ms = 60000\n");
    let mut publisher = RawClient::open(server.port);
    publisher.open_channel(1);
    declare(&mut publisher, "silent");
    let count = 400;
    publish_confirmed(&mut publisher, "silent", count);

    // One-second heartbeats: silence for two seconds is a dead peer.
    let mut stuck = stuck_consumer(server.port, "silent", 1);
    std::thread::sleep(Duration::from_millis(300));
    let stalled_at = Instant::now();
    let mut bystander = RawClient::open(server.port);
    bystander.open_channel(1);
    consume(&mut bystander, "silent", "bystander");
    let (got, redelivered) = drain(&mut bystander, count, stalled_at + Duration::from_secs(10));
    assert_eq!(got, count, "every message reaches the bystander");
    assert!(redelivered > 0);
    let took = stalled_at.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "closed by missed heartbeats, not the send timeout ({took:?})"
    );
    println!("silent consumer closed by missed heartbeats {took:?} after the stall");
    assert!(closed_within(&mut stuck.stream, Duration::from_secs(5)));
}

/// Whether the TCP socket bound to local `port` is still established (Linux).
fn established(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"01")
    })
}

#[test]
fn a_close_that_a_stuck_peer_never_reads_still_ends_its_connection() {
    // The send timeout is far away: only the close deadline can end it in time.
    let (server, _config) = start("send_timeout_ms = 60000\n");
    let mut publisher = RawClient::open(server.port);
    publisher.open_channel(1);
    declare(&mut publisher, "closing");
    publish_confirmed(&mut publisher, "closing", 400);
    let stuck = stuck_consumer(server.port, "closing", 0);
    std::thread::sleep(Duration::from_millis(500));
    let port = stuck.stream.local_addr().unwrap().port();
    assert!(established(port));

    // The broker closes it; the connection.close waits behind what the peer never reads.
    let name = format!("127.0.0.1:{port} -> 127.0.0.1:{}", server.port);
    let start = Instant::now();
    server.ctl_ok(&["close_connection", &name, "go away"]);
    while established(port) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the stuck socket was never dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "stuck socket dropped {:?} after its close (close timeout 3 s)",
        start.elapsed()
    );
    let mut bystander = RawClient::open(server.port);
    bystander.open_channel(1);
    consume(&mut bystander, "closing", "bystander");
    let (got, redelivered) = drain(
        &mut bystander,
        400,
        Instant::now() + Duration::from_secs(10),
    );
    assert_eq!(got, 400);
    assert!(redelivered > 0);
}

#[test]
fn a_slow_reader_that_keeps_reading_is_not_timed_out() {
    let (server, _config) = start("send_timeout_ms = 1500\n");
    let mut publisher = RawClient::open(server.port);
    publisher.open_channel(1);
    declare(&mut publisher, "slowly");
    let count = 300;
    publish_confirmed(&mut publisher, "slowly", count);

    // A consumer with one-second heartbeats that reads a little at a time and never
    // acks: its socket is always full, yet it takes bytes and sends heartbeats.
    let mut slow = stuck_consumer(server.port, "slowly", 1);
    slow.stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut bytes_read = 0usize;
    let mut heartbeat = BytesMut::new();
    warren::proto::frame::encode_heartbeat(&mut heartbeat);
    let start = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    while start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(200));
        slow.stream.write_all(&heartbeat).unwrap();
        if let Ok(n) = slow.stream.read(&mut buf) {
            assert!(n > 0, "closed while reading");
            bytes_read += n;
        }
    }
    assert!(
        bytes_read < count * BODY_BYTES,
        "the reader stayed behind: {bytes_read} bytes"
    );
    // Three send timeouts and more have passed: the consumer is still served, and still
    // holds its messages.
    slow.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = slow.stream.read(&mut buf).unwrap();
    assert!(n > 0, "the slow consumer is still served");
    let mut bystander = RawClient::open(server.port);
    bystander.open_channel(1);
    bystander.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "slowly".into(),
            passive: true,
            ..Default::default()
        }),
    );
    let (_, m) = bystander.expect_method();
    let Method::QueueDeclareOk(ok) = m else {
        panic!("{m:?}")
    };
    assert_eq!(ok.consumer_count, 1, "the slow consumer was not closed");
    println!("slow reader took {bytes_read} bytes in 5 s without being timed out");
}

/// A TCP connection to `port` on 127.0.0.1 from the loopback address `from`.
fn connect_from(from: [u8; 4], port: u16) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddrV4::new(from.into(), 0)).unwrap();
    connect(&fd, &SocketAddrV4::new([127, 0, 0, 1].into(), port)).unwrap();
    let stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Whether the server drops the socket at once, before saying anything.
fn refused(stream: &mut TcpStream) -> bool {
    stream.write_all(&PROTOCOL_HEADER).ok();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

/// The next method frame on a raw stream.
fn next_method(stream: &mut TcpStream, buf: &mut BytesMut, decoder: &mut FrameDecoder) -> Method {
    loop {
        match decoder.decode(buf).expect("a well-formed frame") {
            Some(Frame::Method { method, .. }) => return method,
            Some(_) => continue,
            None => {}
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).expect("the server answers");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Completes the handshake as guest on a raw stream.
fn handshake(stream: &mut TcpStream) {
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new(1 << 20);
    let send = |stream: &mut TcpStream, method: Method| {
        let mut out = BytesMut::new();
        encode_method(0, &method, &mut out);
        stream.write_all(&out).unwrap();
    };
    stream.write_all(&PROTOCOL_HEADER).unwrap();
    assert!(matches!(
        next_method(stream, &mut buf, &mut decoder),
        Method::ConnectionStart(_)
    ));
    send(
        stream,
        Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: bytes::Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        }),
    );
    let Method::ConnectionTune(tune) = next_method(stream, &mut buf, &mut decoder) else {
        panic!("expected connection.tune");
    };
    send(
        stream,
        Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        }),
    );
    send(
        stream,
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        }),
    );
    assert!(matches!(
        next_method(stream, &mut buf, &mut decoder),
        Method::ConnectionOpenOk(_)
    ));
}

/// A socket from `from` that sends the protocol header and waits: an unfinished
/// handshake. Returns once the server answered (it was accepted).
fn stalled_handshake(from: [u8; 4], port: u16) -> TcpStream {
    let mut s = connect_from(from, port);
    s.write_all(&PROTOCOL_HEADER).unwrap();
    let mut frame_type = [0u8; 1];
    s.read_exact(&mut frame_type).unwrap();
    assert_eq!(frame_type[0], 1, "connection.start, a method frame");
    s
}

#[test]
fn unfinished_handshakes_per_address_are_limited_while_others_connect() {
    let (server, _config) = start("max_handshakes_per_address = 3\n");
    let peer = [127, 0, 0, 5];
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| stalled_handshake(peer, server.port))
        .collect();
    let mut fourth = connect_from(peer, server.port);
    assert!(
        refused(&mut fourth),
        "a fourth unfinished handshake is refused"
    );

    // Another address still connects and works.
    let mut other = RawClient::open(server.port);
    other.open_channel(1);
    declare(&mut other, "still-works");

    // A stalled socket goes away: its address may start another handshake, and a
    // completed one no longer counts.
    drop(stalled.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut finished = connect_from(peer, server.port);
    handshake(&mut finished);
    stalled.push(stalled_handshake(peer, server.port));
    let mut again = connect_from(peer, server.port);
    assert!(
        refused(&mut again),
        "three unfinished again: the limit holds"
    );
    println!("refused the 4th unfinished handshake from 127.0.0.5; 127.0.0.1 connected");
}
