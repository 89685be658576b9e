//! Slow and stuck peers: consumers that stop reading with a backlog on its way to them,
//! a client that asks for messages with basic.get without reading the answers, and an
//! RPC client that stops reading while direct replies are published to it. The
//! broker must close such a connection after its send timeout (RabbitMQ's is 15 s) and
//! give its unacknowledged messages to others, with its own memory bounded meanwhile.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use warren::proto::method::{BasicConsume, BasicGet, Method};
use warren::proto::props::BasicProperties;
use warren::proto::table::FieldTable;

use crate::client::{Amqp, Closed};
use crate::deadletter::confirmed;
use crate::harness::{Attack, Ctx, MIB, Outcome, bystander_during};

const CLASS: &str = "stuck peers";

/// RabbitMQ's send timeout, and how long after it the connection must be gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
const SLACK: Duration = Duration::from_secs(10);

/// A connection whose receive window is a few KiB and that will never read.
fn stuck_client(ctx: &Ctx) -> Result<Amqp, String> {
    let mut c = Amqp::connect_with(ctx.port, None, Some(4096))?;
    c.handshake("guest", "guest", "/")?;
    c.open_channel(1)?;
    Ok(c)
}

/// Fills `queue` with `count` numbered messages of `size` bytes.
fn backlog(ctx: &Ctx, queue: &str, count: usize, size: usize) -> Result<(), String> {
    let mut c = confirmed(ctx)?;
    c.queue(1, queue, false, FieldTable::default())?;
    for i in 0..count {
        let mut body = format!("{i:08}").into_bytes();
        body.resize(size, b'.');
        c.publish(1, "", queue, &BasicProperties::default(), &body);
        while c.unconfirmed(1) >= 256 {
            c.pump()?;
        }
    }
    c.wait_confirms(1)?;
    c.close();
    Ok(())
}

/// A consumer stops reading while `count` messages of `size` bytes are dispatched to it;
/// another consumer on the same queue must end up with all of them once the broker gives
/// up on the stuck one.
fn stuck_consumer(ctx: &Ctx, queue: &str, count: usize, size: usize) -> Outcome {
    backlog(ctx, queue, count, size)?;
    let mut stuck = stuck_client(ctx)?;
    stuck.send(
        1,
        Method::BasicConsume(BasicConsume {
            queue: queue.into(),
            consumer_tag: "stuck".into(),
            ..Default::default()
        }),
    );
    let started = Instant::now();
    // While it is stuck, others are served.
    std::thread::sleep(Duration::from_millis(500));
    let during = bystander_during(ctx)?;
    let mut other = Amqp::open(ctx.port)?;
    other.set_timeout(Duration::from_secs(1));
    other.open_channel(1)?;
    other.qos(1, 500)?;
    other.consume(1, queue, false)?;
    let mut seen = HashSet::new();
    while seen.len() < count {
        if started.elapsed() > SEND_TIMEOUT + SLACK {
            return Err(format!(
                "after {} s the other consumer had {} of {count}: the stuck consumer was not closed and its messages not requeued",
                started.elapsed().as_secs(),
                seen.len()
            ));
        }
        let (tag, _, body) = match other.delivery() {
            Ok(d) => d,
            Err(Closed::Io(_)) => continue,
            Err(e) => return Err(format!("the other consumer: {e}")),
        };
        seen.insert(body[..8].to_vec());
        other.ack(1, tag, false);
    }
    let took = started.elapsed().as_secs_f64();
    drop(stuck);
    other.delete_queue(1, queue)?;
    other.close();
    Ok(format!(
        "all {count} requeued to the other consumer after {took:.1}s; bystander {} ms while stuck",
        during.as_millis()
    ))
}

/// basic.get after basic.get without reading the replies: the replies are held against
/// the connection's unflushed bytes, the broker stops reading it, and the send timeout
/// closes it, putting the messages back.
fn get_flood(ctx: &Ctx, count: usize, size: usize, gets: usize) -> Outcome {
    let queue = "stuck-get";
    backlog(ctx, queue, count, size)?;
    let rss0 = ctx.rss();
    let mut stuck = stuck_client(ctx)?;
    let one = {
        let mut out = bytes::BytesMut::new();
        warren::proto::frame::encode_method(
            1,
            &Method::BasicGet(BasicGet {
                queue: queue.into(),
                no_ack: false,
                ..Default::default()
            }),
            &mut out,
        );
        out
    };
    let _ = stuck
        .raw
        .stream
        .set_write_timeout(Some(Duration::from_millis(200)));
    let started = Instant::now();
    let mut sent = 0;
    // The broker may stop reading: a write that times out ends the flood.
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    while sent < gets && started.elapsed() < Duration::from_secs(5) {
        if std::io::Write::write_all(&mut stuck.raw.stream, &batch).is_err() {
            break;
        }
        sent += 1000;
    }
    std::thread::sleep(Duration::from_secs(1));
    let grown = ctx.rss().saturating_sub(rss0);
    let during = bystander_during(ctx)?;
    if grown > 48 * MIB {
        return Err(format!(
            "{} MiB more resident memory for {sent} unread gets of {size} B",
            grown / MIB
        ));
    }
    // Then the connection goes and every message is back in the queue.
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    loop {
        let n = c.count(1, queue)?;
        if n as usize == count {
            break;
        }
        if started.elapsed() > SEND_TIMEOUT + SLACK {
            return Err(format!(
                "after {} s the queue has {n} of {count} ready: the reader that never reads was not closed",
                started.elapsed().as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed().as_secs_f64();
    drop(stuck);
    c.delete_queue(1, queue)?;
    c.close();
    Ok(format!(
        "{sent} gets sent; RSS +{} MiB; requeued after {took:.1}s; bystander {} ms",
        grown / MIB,
        during.as_millis()
    ))
}

/// An RPC client consumes direct replies (`amq.rabbitmq.reply-to`), sends one request,
/// and stops reading; a server publishes `count` replies of `size` bytes to its address.
/// Replies wait in no queue, so past the connection's delivery limit they must be
/// refused, not held: the broker's memory stays bounded.
fn reply_flood(ctx: &Ctx, count: usize, size: usize) -> Outcome {
    let queue = "reply-rpc";
    let mut server = confirmed(ctx)?;
    server.queue(1, queue, false, FieldTable::default())?;
    let mut stuck = stuck_client(ctx)?;
    let ok = stuck.call(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "amq.rabbitmq.reply-to".into(),
            no_ack: true,
            ..Default::default()
        }),
    )?;
    if !matches!(ok.method(), Method::BasicConsumeOk(_)) {
        return Err(format!("reply consumer: {:?}", ok.method()));
    }
    let request = BasicProperties {
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        ..Default::default()
    };
    stuck.publish(1, "", queue, &request, b"request");
    let started = Instant::now();
    let address = loop {
        if let Some((_, props, _)) = server.get(1, queue, true)? {
            break props.reply_to.unwrap_or_default();
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err("the request never reached the server's queue".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(address) = address.as_str().map(str::to_string) else {
        return Err(format!("reply_to is not text: {address:?}"));
    };
    if !address.starts_with("amq.rabbitmq.reply-to.") {
        return Err(format!("reply_to was not rewritten: {address:?}"));
    }
    let rss0 = ctx.rss();
    let body = vec![b'r'; size];
    for _ in 0..count {
        server.publish(1, "", &address, &BasicProperties::default(), &body);
        while server.unconfirmed(1) >= 256 {
            server.pump()?;
        }
    }
    server.wait_confirms(1)?;
    let took = started.elapsed().as_secs_f64();
    let grown = ctx.rss().saturating_sub(rss0);
    let during = bystander_during(ctx)?;
    if grown > 48 * MIB {
        return Err(format!(
            "{} MiB more resident memory for {count} replies of {size} B to a client that reads nothing",
            grown / MIB
        ));
    }
    drop(stuck);
    server.delete_queue(1, queue)?;
    server.close();
    Ok(format!(
        "{count} replies published in {took:.1}s; RSS +{} MiB; bystander {} ms",
        grown / MIB,
        during.as_millis()
    ))
}

pub fn attacks() -> Vec<Attack> {
    let deadline = (SEND_TIMEOUT + SLACK).as_secs() + 20;
    vec![
        Attack::new(
            CLASS,
            "consumer stops reading: 20,000 x 1 KiB backlog",
            96,
            deadline,
            |ctx| stuck_consumer(ctx, "stuck-small", 20_000, 1024),
        ),
        Attack::new(
            CLASS,
            "consumer stops reading: 100 x 512 KiB backlog",
            128,
            deadline,
            |ctx| stuck_consumer(ctx, "stuck-large", 100, 512 * 1024),
        ),
        Attack::new(
            CLASS,
            "direct replies to an RPC client that stopped reading: 20,000 x 8 KiB",
            96,
            deadline,
            |ctx| reply_flood(ctx, 20_000, 8192),
        ),
        Attack::new(
            CLASS,
            "basic.get loop, replies never read: 16,000 x 4 KiB",
            128,
            deadline,
            |ctx| get_flood(ctx, 16_000, 4096, 100_000),
        ),
    ]
}
