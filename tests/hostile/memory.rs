//! Memory accounting: what a message really costs (headers too), bodies that are declared
//! huge and never finished, publishers under a memory alarm, transaction buffers, the
//! matching caches of policy patterns.

use std::io::Write;
use std::time::{Duration, Instant};

use warren::proto::method::{Method, TxRollback, TxSelect};
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use crate::client::{Amqp, Closed, Event, body_frame, publish_header, table};
use crate::deadletter::confirmed;
use crate::harness::{Attack, Ctx, MIB, Outcome};

const CLASS: &str = "memory";

/// Headers of about `bytes` encoded bytes.
fn big_headers(bytes: usize) -> BasicProperties {
    BasicProperties {
        headers: Some(table([(
            "h",
            FieldValue::LongStr(vec![b'h'; bytes].into()),
        )])),
        ..Default::default()
    }
}

/// Most header bytes one content header frame can carry at frame_max 131072.
const HEADER_BYTES: usize = 120 * 1024;

/// Fills a queue with `count` messages of `props` and `body`, confirmed, and deletes it.
/// Once a queue holds more than its memory budget, further messages go to the store: the
/// broker's resident memory must stop growing. So the check is on the last third of the
/// messages: the broker may gain at most `last_third_bound` while they arrive (a broker
/// that keeps them all in memory gains their full size).
fn fill(
    ctx: &Ctx,
    queue: &str,
    props: BasicProperties,
    body: &[u8],
    count: usize,
    last_third_bound: u64,
) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.queue(1, queue, false, FieldTable::default())?;
    let rss0 = ctx.rss();
    let first = count - count / 3;
    let took = c.publish_many(1, "", queue, &props, body, first, 32)?;
    let rss1 = ctx.rss();
    let took = took + c.publish_many(1, "", queue, &props, body, count - first, 32)?;
    let rss2 = ctx.rss();
    let n = c.count(1, queue)?;
    if n != count as u32 {
        return Err(format!("the queue holds {n} of {count}"));
    }
    c.delete_queue(1, queue)?;
    c.close();
    let mut encoded = bytes::BytesMut::new();
    props.encode(&mut encoded);
    let message = (encoded.len() + body.len()) as u64;
    let last_third = (count - first) as u64 * message;
    let grown = rss2.saturating_sub(rss1);
    let note = format!(
        "{count} in {:.1}s; RSS +{} MiB for the first {} MiB, +{} MiB for the last {} MiB",
        took.as_secs_f64(),
        rss1.saturating_sub(rss0) / MIB,
        first as u64 * message / MIB,
        grown / MIB,
        last_third / MIB
    );
    if grown > last_third_bound {
        return Err(format!(
            "memory kept growing as the queue filled: {note} (bound {} MiB)",
            last_third_bound / MIB
        ));
    }
    Ok(note)
}

/// `connections` connections with `channels` channels each start a publish declaring
/// `body_size` bytes and send two small body frames (the second is where a buffer for the
/// whole body would be made); they hold while memory is sampled, then go.
fn unfinished_bodies(ctx: &Ctx, connections: usize, channels: u16, body_size: u64) -> Outcome {
    let mut conns = Vec::new();
    for _ in 0..connections {
        let mut c = Amqp::open(ctx.port)?;
        for ch in 1..=channels {
            c.open_channel(ch)?;
        }
        let mut out = Vec::new();
        for ch in 1..=channels {
            out.extend_from_slice(&publish_header(
                ch,
                "",
                "mem-nowhere",
                BasicProperties::default(),
                body_size,
            ));
            out.extend_from_slice(&body_frame(ch, &[b'x'; 2048]));
            out.extend_from_slice(&body_frame(ch, &[b'y'; 2048]));
        }
        c.send_bytes(&out);
        conns.push(c);
    }
    // Held while the harness samples the broker's memory.
    std::thread::sleep(Duration::from_secs(1));
    let n = conns.len();
    drop(conns);
    Ok(format!(
        "{n} x {channels} bodies of {} MiB started",
        body_size / MIB
    ))
}

/// Writes `frames` to `c` for at most `for_` (the broker may stop reading: that is the
/// point); returns the bytes the socket took.
fn push(c: &mut Amqp, frames: impl Iterator<Item = Vec<u8>>, for_: Duration) -> u64 {
    let end = Instant::now() + for_;
    let _ = c
        .raw
        .stream
        .set_write_timeout(Some(Duration::from_millis(200)));
    let mut sent = 0u64;
    for frame in frames {
        let mut rest = &frame[..];
        while !rest.is_empty() {
            if Instant::now() >= end {
                return sent;
            }
            match c.raw.stream.write(rest) {
                Ok(0) => return sent,
                Ok(n) => {
                    sent += n as u64;
                    rest = &rest[n..];
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return sent,
            }
        }
    }
    sent
}

/// Body frames of 128 KiB for `channels` channels, round-robin, `per_channel` bytes each.
fn body_stream(
    channels: u16,
    per_channel: u64,
    frame_payload: usize,
) -> impl Iterator<Item = Vec<u8>> {
    let frames_each = per_channel.div_ceil(frame_payload as u64);
    (0..frames_each).flat_map(move |_| {
        (1..=channels).map(move |ch| body_frame(ch, &vec![b'z'; frame_payload]).to_vec())
    })
}

/// One connection opens `channels` publishes of `body_size` bytes and pushes their bodies
/// for `for_`; the broker must bound what one connection has in flight.
fn in_flight(ctx: &Ctx, channels: u16, body_size: u64, for_: Duration) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    for ch in 1..=channels {
        c.open_channel(ch)?;
    }
    let mut headers = Vec::new();
    for ch in 1..=channels {
        headers.extend_from_slice(&publish_header(
            ch,
            "",
            "mem-nowhere",
            BasicProperties::default(),
            body_size,
        ));
    }
    c.send_bytes(&headers);
    let frame_payload = (c.frame_max as usize).saturating_sub(8).min(128 * 1024);
    let sent = push(
        &mut c,
        body_stream(channels, body_size - 1, frame_payload),
        for_,
    );
    Ok(format!(
        "{} MiB of unfinished bodies taken by the socket",
        sent / MIB
    ))
}

/// Under a memory alarm: `connections` publishers each start a body of `body_size` bytes
/// and push it for `for_`. A connection is a publisher from its first basic.publish, so it
/// is blocked and no longer read: the bytes stay in the kernel, not in the broker.
fn under_alarm(ctx: &Ctx, connections: usize, body_size: u64, for_: Duration) -> Outcome {
    let mut conns = Vec::new();
    for _ in 0..connections {
        let mut c = Amqp::open(ctx.port)?;
        c.open_channel(1)?;
        c.send_bytes(&publish_header(
            1,
            "",
            "mem-alarm",
            BasicProperties::default(),
            body_size,
        ));
        conns.push(c);
    }
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let frame_payload = (c.frame_max as usize).saturating_sub(8).min(128 * 1024);
                let sent = push(&mut c, body_stream(1, body_size - 1, frame_payload), for_);
                // RabbitMQ tells a blocked publisher so.
                c.set_timeout(Duration::from_secs(3));
                let mut blocked = c.blocked.clone();
                while blocked.is_none() {
                    match c.next() {
                        Ok(Event::Method(0, Method::ConnectionBlocked(b))) => {
                            blocked = Some(b.reason)
                        }
                        Ok(_) => continue,
                        Err(_) => break,
                    }
                }
                (sent, blocked)
            })
        })
        .collect();
    let mut total = 0;
    let mut unblocked = 0;
    for h in handles {
        let (sent, blocked) = h.join().map_err(|_| "pusher thread panicked".to_string())?;
        total += sent;
        if blocked.is_none() {
            unblocked += 1;
        }
    }
    if unblocked > 0 {
        return Err(format!(
            "{unblocked} of {connections} publishers never got connection.blocked"
        ));
    }
    Ok(format!("{} MiB pushed, all blocked", total / MIB))
}

/// A transaction that buffers `count` publishes and is rolled back (or committed).
fn transaction(
    ctx: &Ctx,
    queue: &str,
    props: BasicProperties,
    body: Vec<u8>,
    count: usize,
    commit: bool,
) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    c.queue(1, queue, false, FieldTable::default())?;
    match c.call(1, Method::TxSelect(TxSelect {}))? {
        Event::Method(_, Method::TxSelectOk(_)) => {}
        other => return Err(format!("tx.select: {}", other.method().name())),
    }
    let rss0 = ctx.rss();
    for _ in 0..count {
        c.publish(1, "", queue, &props, &body);
    }
    c.set_timeout(Duration::from_secs(60));
    let finish = if commit {
        Method::TxCommit(Default::default())
    } else {
        Method::TxRollback(TxRollback {})
    };
    let started = Instant::now();
    let reply = c.call(1, finish);
    let grown = ctx.rss().saturating_sub(rss0) / MIB;
    match reply {
        Ok(Event::Method(_, Method::TxCommitOk(_) | Method::TxRollbackOk(_))) => {}
        Ok(other) => {
            return Err(format!(
                "expected commit/rollback-ok, got {}",
                other.method().name()
            ));
        }
        // A cap on the transaction buffer is a refusal with a code, not a silent close.
        Err(Closed::Channel(code, text)) | Err(Closed::Connection(code, text)) if code >= 400 => {
            return Ok(format!("refused: {code} {text}"));
        }
        Err(e) => return Err(e.to_string()),
    }
    let took = started.elapsed().as_secs_f64();
    let mut c2 = Amqp::open(ctx.port)?;
    c2.open_channel(1)?;
    let n = c2.count(1, queue)?;
    let want = if commit { count as u32 } else { 0 };
    if n != want {
        return Err(format!(
            "the queue holds {n} after the transaction, expected {want}"
        ));
    }
    c2.delete_queue(1, queue)?;
    c2.close();
    Ok(format!(
        "{count} buffered, {} in {took:.1}s; RSS +{grown} MiB",
        if commit { "committed" } else { "rolled back" }
    ))
}

/// A vhost's 200 policies whose patterns are small but have exponentially many DFA states
/// (`(a|b)*a(a|b){18}c0`), and 250 queues with random 255-byte names of a and b that every
/// pattern is run over: each pattern's matching cache is bounded (the regex engine's own
/// default, 2 MiB a pattern, came to about 700 MiB here). Then one policy changes: each
/// queue is matched against that policy only, not all 200 again (which held the broker,
/// and every client, for about 3.6 s: 50,000 matches of some 70 µs each).
fn policy_match_caches(ctx: &Ctx) -> Outcome {
    use serde_json::json;
    const QUEUES: usize = 250;
    let vhost = "hostile-policies";
    crate::harness::ctl_ok(ctx, &["add_vhost", vhost])?;
    crate::harness::ctl_ok(
        ctx,
        &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    )?;
    for i in 0..200 {
        let pattern = format!("(a|b)*a(a|b){{{}}}c{i}", 18 + i % 5);
        let body = json!({"pattern": pattern, "definition": {"max-length": 1000 + i},
                          "priority": i, "apply-to": "queues"});
        let r = crate::http::json(ctx, "PUT", &format!("/api/policies/{vhost}/p{i:03}"), &body)?;
        if !r.ok() {
            return Err(format!("policy {i}: {}", r.summary()));
        }
    }
    // A fixed generator: the names are the same every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for q in 0..QUEUES {
        let name: String = (0..255)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if state & 1 == 0 { 'a' } else { 'b' }
            })
            .collect();
        let r = crate::http::json(
            ctx,
            "PUT",
            &format!("/api/queues/{vhost}/{name}"),
            &json!({}),
        )?;
        if r.status != 201 {
            return Err(format!("queue {q}: {}", r.summary()));
        }
    }
    let body = json!({"pattern": "(a|b)*a(a|b){18}c100", "definition": {"max-length": 7},
                      "priority": 100, "apply-to": "queues"});
    let started = Instant::now();
    let r = crate::http::json(ctx, "PUT", &format!("/api/policies/{vhost}/p100"), &body)?;
    let took = started.elapsed();
    if !r.ok() {
        return Err(format!("changing policy p100: {}", r.summary()));
    }
    // Generous for a shared machine: the change takes some 20 ms, matching all 200
    // policies again took 3.6 s.
    if took > Duration::from_secs(1) {
        return Err(format!(
            "changing one policy took {:.2} s: every queue was matched against every policy",
            took.as_secs_f64()
        ));
    }
    let r = crate::http::delete(ctx, &format!("/api/vhosts/{vhost}"))?;
    if !r.ok() {
        return Err(format!("deleting the vhost: {}", r.summary()));
    }
    Ok(format!(
        "200 policies over {QUEUES} queues; one policy changed in {} ms",
        took.as_millis()
    ))
}

/// Eight requests at once take (and give back) 20 messages of 4 MiB of control bytes with
/// `POST /api/queues/{vhost}/{name}/get`: the four the queue holds in memory (its 16 MiB
/// budget; the rest are paged) make some 100 MiB of JSON a reply, a control byte being
/// written `\u0001`. Replies are written as they are read, so memory holds the queue's
/// 16 MiB and little more; building each reply whole first took RSS to about 1 GB.
fn http_get_replies(ctx: &Ctx) -> Outcome {
    const QUEUE: &str = "mem-http-get";
    const COUNT: usize = 20;
    const READERS: usize = 8;
    let body = vec![1u8; 4 * MIB as usize];
    let mut c = confirmed(ctx)?;
    c.queue(1, QUEUE, false, FieldTable::default())?;
    c.publish_many(1, "", QUEUE, &BasicProperties::default(), &body, COUNT, 4)?;
    let rss0 = ctx.rss();
    let started = Instant::now();
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let url = format!("{}/api/queues/%2F/{QUEUE}/get", ctx.http_url());
            std::thread::spawn(move || read_get_reply(&url, COUNT))
        })
        .collect();
    let mut least = u64::MAX;
    for r in readers {
        let n = r.join().map_err(|_| "a reader panicked".to_string())??;
        least = least.min(n);
    }
    let took = started.elapsed();
    // Every reply held the four payloads in memory, each escaped to six bytes a byte.
    let want = (4 * body.len() * 6) as u64;
    if least < want {
        return Err(format!(
            "a reply had {least} bytes, expected at least {want}"
        ));
    }
    let n = c.count(1, QUEUE)?;
    if n != COUNT as u32 {
        return Err(format!(
            "the queue holds {n} of {COUNT} after the gets gave them back"
        ));
    }
    c.delete_queue(1, QUEUE)?;
    c.close();
    Ok(format!(
        "{READERS} replies of {} MiB in {:.1}s; RSS {} MiB with the queue's 16 MiB in it",
        least / MIB,
        took.as_secs_f64(),
        rss0 / MIB
    ))
}

/// Reads one get reply to its end, keeping none of it; returns its length.
fn read_get_reply(url: &str, count: usize) -> Result<u64, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    let body = format!(r#"{{"count":{count},"ackmode":"ack_requeue_true","encoding":"auto"}}"#);
    let response = agent
        .post(url)
        .header(
            "authorization",
            crate::http::basic("guest", "guest").as_str(),
        )
        .content_type("application/json")
        .send(body)
        .map_err(|e| format!("get: {e}"))?;
    if response.status().as_u16() != 200 {
        return Err(format!("get answered {}", response.status()));
    }
    let mut reader = response
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut last = 0u8;
    loop {
        let n = std::io::Read::read(&mut reader, &mut buf).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        last = buf[n - 1];
    }
    if last != b']' {
        return Err(format!("the reply ended with {:?}, not ]", last as char));
    }
    Ok(total)
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "control: 3,200 messages of 120 KiB bodies in one queue",
            512,
            90,
            |ctx| {
                fill(
                    ctx,
                    "mem-bodies",
                    BasicProperties::default(),
                    &vec![b'b'; HEADER_BYTES],
                    3200,
                    64 * MIB,
                )
            },
        )
        .fresh(),
        Attack::new(
            CLASS,
            "3,200 0-byte messages with 120 KiB headers",
            512,
            90,
            |ctx| {
                fill(
                    ctx,
                    "mem-headers",
                    big_headers(HEADER_BYTES),
                    b"",
                    3200,
                    64 * MIB,
                )
            },
        )
        .fresh(),
        Attack::new(
            CLASS,
            "300 connections start 128 MiB bodies",
            96,
            30,
            |ctx| unfinished_bodies(ctx, 300, 1, 128 * MIB),
        )
        .vm_limit_mib(2048)
        .fresh(),
        Attack::new(
            CLASS,
            "1 connection, 1,000 channels start 128 MiB bodies",
            96,
            30,
            |ctx| unfinished_bodies(ctx, 1, 1000, 128 * MIB),
        )
        .vm_limit_mib(2048)
        .fresh(),
        Attack::new(
            CLASS,
            "1 connection pushes 64 x 8 MiB unfinished bodies",
            192,
            30,
            |ctx| in_flight(ctx, 64, 8 * MIB, Duration::from_secs(4)),
        )
        .fresh(),
        Attack::new(
            CLASS,
            "tx: 100 MiB of 256 KiB bodies, rolled back",
            224,
            60,
            |ctx| {
                transaction(
                    ctx,
                    "mem-tx-bodies",
                    BasicProperties::default(),
                    vec![b't'; 256 * 1024],
                    400,
                    false,
                )
            },
        )
        .fresh(),
        Attack::new(
            CLASS,
            "tx: 800 publishes with 120 KiB headers, committed",
            224,
            60,
            |ctx| {
                transaction(
                    ctx,
                    "mem-tx-headers",
                    big_headers(HEADER_BYTES),
                    Vec::new(),
                    800,
                    true,
                )
            },
        )
        .fresh(),
        Attack::new(
            CLASS,
            "8 HTTP gets at once of 20 messages of 4 MiB control bytes",
            96,
            120,
            http_get_replies,
        )
        .fresh(),
        Attack::new(
            CLASS,
            "tx: 200,000 empty publishes, rolled back",
            128,
            60,
            |ctx| {
                transaction(
                    ctx,
                    "mem-tx-many",
                    BasicProperties::default(),
                    Vec::new(),
                    200_000,
                    false,
                )
            },
        )
        .fresh(),
    ]
}

/// Run with the memory alarm on from the start.
pub fn alarm_attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "alarm: a publisher never finishes a 128 MiB body",
            48,
            30,
            |ctx| under_alarm(ctx, 1, 128 * MIB, Duration::from_secs(3)),
        )
        .fresh(),
        Attack::new(
            CLASS,
            "alarm: 10 publishers push 64 MiB bodies",
            64,
            30,
            |ctx| under_alarm(ctx, 10, 64 * MIB, Duration::from_secs(3)),
        )
        .fresh(),
        Attack::new(
            CLASS,
            "200 policies with exponential-DFA patterns over 250 queues, one changed",
            64,
            120,
            policy_match_caches,
        ),
    ]
}
