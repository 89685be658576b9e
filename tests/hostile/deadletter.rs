//! Dead-lettering: loops through the default exchange, cycles of expiring or overflowing
//! queues, fan-out amplification, and forged `x-death` histories.

use std::time::{Duration, Instant};

use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use crate::client::{Amqp, persistent, table, text};
use crate::harness::{Attack, Ctx, Outcome, goes_idle};

const CLASS: &str = "dead-letter";

/// A channel in confirm mode on a new connection.
pub fn confirmed(ctx: &Ctx) -> Result<Amqp, String> {
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    c.confirm_select(1)?;
    Ok(c)
}

/// Queue arguments for dead-lettering: an optional TTL, length limit and overflow mode,
/// the dead-letter exchange and routing key.
fn dlx(
    ttl: Option<i32>,
    max_len: Option<i32>,
    overflow: Option<&str>,
    exchange: &str,
    key: Option<&str>,
) -> FieldTable {
    let mut t = FieldTable::default();
    if let Some(ms) = ttl {
        t.insert("x-message-ttl", FieldValue::I32(ms));
    }
    if let Some(n) = max_len {
        t.insert("x-max-length", FieldValue::I32(n));
    }
    if let Some(o) = overflow {
        t.insert("x-overflow", text(o));
    }
    t.insert("x-dead-letter-exchange", text(exchange));
    if let Some(k) = key {
        t.insert("x-dead-letter-routing-key", text(k));
    }
    t
}

/// Polls a queue's count until it is `want` (or `timeout` passes); returns the last count.
pub fn settle_count(
    c: &mut Amqp,
    queue: &str,
    want: u32,
    timeout: Duration,
) -> Result<u32, String> {
    let end = Instant::now() + timeout;
    loop {
        let n = c.count(1, queue)?;
        if n == want || Instant::now() >= end {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn delete_all(c: &mut Amqp, queues: &[String]) -> Result<(), String> {
    for q in queues {
        c.delete_queue(1, q)?;
    }
    Ok(())
}

/// Publishes `count` messages and returns (acks, nacks, seconds to the last confirm).
fn publish_counted(
    c: &mut Amqp,
    exchange: &str,
    key: &str,
    count: usize,
) -> Result<(u64, u64, f64), String> {
    let (a0, n0) = (c.acks, c.nacks);
    let took = c.publish_many(
        1,
        exchange,
        key,
        &persistent(),
        b"dead-letter me",
        count,
        64,
    )?;
    Ok((c.acks - a0, c.nacks - n0, took.as_secs_f64()))
}

/// The reported crash: a full reject-publish-dlx queue whose dead-letter exchange is the
/// default exchange routes each refused message straight back to itself. RabbitMQ nacks
/// the publish and keeps nothing.
fn self_loop(ctx: &Ctx, name: &str, key: Option<&str>, publishes: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.queue(
        1,
        name,
        false,
        dlx(None, Some(0), Some("reject-publish-dlx"), "", key),
    )?;
    let (acks, nacks, took) = publish_counted(&mut c, "", name, publishes)?;
    if nacks != publishes as u64 {
        return Err(format!(
            "{acks} acks and {nacks} nacks for {publishes} refused publishes (RabbitMQ nacks each)"
        ));
    }
    let n = settle_count(&mut c, name, 0, Duration::from_secs(1))?;
    if n != 0 {
        return Err(format!("the full queue holds {n} messages"));
    }
    c.delete_queue(1, name)?;
    c.close();
    Ok(format!("{publishes} publishes nacked in {took:.2}s"))
}

/// A ring of `len` full reject-publish-dlx queues, each dead-lettering into the next.
fn reject_ring(ctx: &Ctx, prefix: &str, len: usize, publishes: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    let names: Vec<String> = (0..len).map(|i| format!("{prefix}{i}")).collect();
    for (i, q) in names.iter().enumerate() {
        let next = &names[(i + 1) % len];
        c.queue(
            1,
            q,
            false,
            dlx(None, Some(0), Some("reject-publish-dlx"), "", Some(next)),
        )?;
    }
    let (acks, nacks, took) = publish_counted(&mut c, "", &names[0], publishes)?;
    if nacks != publishes as u64 {
        return Err(format!(
            "{acks} acks and {nacks} nacks for {publishes} refused publishes (RabbitMQ nacks each)"
        ));
    }
    delete_all(&mut c, &names)?;
    c.close();
    Ok(format!("{publishes} nacked in {took:.2}s"))
}

/// A ring of queues that each expire (TTL 0) or overflow (drop-head) into the next:
/// RabbitMQ drops a message coming back to a queue it already died in.
fn cycle(
    ctx: &Ctx,
    prefix: &str,
    len: usize,
    ttl: Option<i32>,
    max_len: Option<i32>,
    publishes: usize,
) -> Outcome {
    let mut c = confirmed(ctx)?;
    let names: Vec<String> = (0..len).map(|i| format!("{prefix}{i}")).collect();
    let overflow = max_len.map(|_| "drop-head");
    for (i, q) in names.iter().enumerate() {
        let next = &names[(i + 1) % len];
        c.queue(1, q, false, dlx(ttl, max_len, overflow, "", Some(next)))?;
    }
    let (acks, nacks, took) = publish_counted(&mut c, "", &names[0], publishes)?;
    if acks != publishes as u64 {
        return Err(format!(
            "{acks} acks and {nacks} nacks for {publishes} publishes (RabbitMQ acks each)"
        ));
    }
    // With a TTL of 0 everything dies and the cycle rule drops it; with a length limit
    // each queue keeps at most that many. Either way nothing keeps going round.
    let most = max_len.unwrap_or(0) as u32;
    for q in &names {
        let n = settle_count(
            &mut c,
            q,
            most.min(publishes as u32),
            Duration::from_secs(2),
        )?;
        if n > most {
            return Err(format!(
                "{q} holds {n} messages, more than its limit {most}"
            ));
        }
    }
    goes_idle(ctx)?;
    delete_all(&mut c, &names)?;
    c.close();
    Ok(format!("{publishes} acked in {took:.2}s"))
}

/// How many copies of one message RabbitMQ delivers to the sink of [`amplification`] over
/// `n` queues: the original, then one per death path (k deaths in distinct queues, for k
/// from 1 to n: n!/(n-k)! paths each).
fn rabbit_copies(n: u64) -> u64 {
    let mut total = 1;
    let mut paths = 1;
    for k in 0..n {
        paths *= n - k;
        total += paths;
    }
    total
}

/// What the sink of [`amplification`] must get.
#[derive(Clone, Copy)]
enum Copies {
    /// Exactly RabbitMQ's count.
    AsRabbit,
    /// No more than RabbitMQ's count (a hop cap may cut paths short).
    AtMostRabbit,
    /// Whatever a cap allows: that the publish is confirmed and memory bounded is the point.
    Capped,
}

/// A fanout exchange is the dead-letter exchange of `n` TTL-0 queues bound to it, and of a
/// sink: every death fans out to all of them again. RabbitMQ's cycle rule ends each path
/// after at most `n` deaths, which is still about e * n! paths; only a cap bounds the work.
fn amplification(ctx: &Ctx, n: usize, copies: Copies) -> Outcome {
    let mut c = confirmed(ctx)?;
    let exchange = format!("dl-amp-{n}");
    c.exchange(1, &exchange, "fanout", FieldTable::default())?;
    let names: Vec<String> = (0..n).map(|i| format!("dl-amp-{n}-{i}")).collect();
    for q in &names {
        c.queue(1, q, false, dlx(Some(0), None, None, &exchange, None))?;
        c.bind(1, q, &exchange, "", FieldTable::default())?;
    }
    let sink = format!("dl-amp-{n}-sink");
    c.queue(1, &sink, false, FieldTable::default())?;
    c.bind(1, &sink, &exchange, "", FieldTable::default())?;
    let started = Instant::now();
    if !c.publish_confirmed(1, &exchange, "", &BasicProperties::default(), b"amplify")? {
        return Err("the publish was nacked".into());
    }
    let confirm = started.elapsed().as_secs_f64();
    let rabbit = u32::try_from(rabbit_copies(n as u64)).unwrap_or(u32::MAX);
    let got = match copies {
        Copies::AsRabbit => settle_count(&mut c, &sink, rabbit, Duration::from_secs(3))?,
        Copies::AtMostRabbit | Copies::Capped => {
            std::thread::sleep(Duration::from_millis(300));
            c.count(1, &sink)?
        }
    };
    let wrong = match copies {
        Copies::AsRabbit => got != rabbit,
        Copies::AtMostRabbit => got > rabbit,
        Copies::Capped => false,
    };
    if wrong {
        return Err(format!(
            "the sink got {got} copies; RabbitMQ delivers {rabbit}"
        ));
    }
    let mut all = names.clone();
    all.push(sink);
    delete_all(&mut c, &all)?;
    c.delete_exchange(1, &exchange)?;
    c.close();
    Ok(format!(
        "confirmed in {confirm:.2}s, sink got {got} (RabbitMQ {rabbit})"
    ))
}

/// A TTL-0 queue dead-letters a message carrying a forged `x-death` history into a sink;
/// the message must arrive with a well-formed history.
fn forged_history(
    ctx: &Ctx,
    tag: &str,
    x_death: FieldValue,
    check: fn(&FieldTable) -> Result<(), String>,
) -> Outcome {
    let mut c = confirmed(ctx)?;
    let source = format!("dl-forged-{tag}");
    let sink = format!("dl-forged-{tag}-sink");
    c.queue(1, &sink, false, FieldTable::default())?;
    c.queue(1, &source, false, dlx(Some(0), None, None, "", Some(&sink)))?;
    let props = BasicProperties {
        headers: Some(table([("x-death", x_death)])),
        ..persistent()
    };
    let started = Instant::now();
    if !c.publish_confirmed(1, "", &source, &props, b"forged")? {
        return Err("the publish was nacked".into());
    }
    let end = Instant::now() + Duration::from_secs(3);
    let headers = loop {
        if let Some((_, props, _)) = c.get(1, &sink, true)? {
            break props.headers.unwrap_or_default();
        }
        if Instant::now() >= end {
            return Err("the message never reached the sink".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed().as_secs_f64();
    check(&headers)?;
    delete_all(&mut c, &[source, sink])?;
    c.close();
    Ok(format!("dead-lettered in {took:.2}s"))
}

fn death(queue: &str, reason: &str, count: FieldValue) -> FieldValue {
    FieldValue::Table(table([
        ("count", count),
        ("reason", text(reason)),
        ("queue", text(queue)),
        ("exchange", text("")),
        ("routing-keys", FieldValue::Array(vec![text(queue)])),
    ]))
}

/// The first `x-death` entry's count.
fn first_count(headers: &FieldTable) -> Result<i64, String> {
    match headers.get("x-death") {
        Some(FieldValue::Array(a)) => match a.first() {
            Some(FieldValue::Table(t)) => t
                .get("count")
                .and_then(FieldValue::as_i64)
                .ok_or_else(|| format!("x-death entry without an integer count: {t:?}")),
            other => Err(format!("x-death starts with {other:?}")),
        },
        other => Err(format!("x-death is {other:?}")),
    }
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "self-loop: max-length 0, reject-publish-dlx, DLX \"\"",
            32,
            20,
            |ctx| self_loop(ctx, "dl-self", None, 1),
        ),
        Attack::new(
            CLASS,
            "self-loop with its own name as DLX key, 500 publishes",
            48,
            30,
            |ctx| self_loop(ctx, "dl-self-key", Some("dl-self-key"), 500),
        ),
        Attack::new(CLASS, "reject-publish-dlx ring of 2", 32, 20, |ctx| {
            reject_ring(ctx, "dl-rring2-", 2, 50)
        }),
        Attack::new(
            CLASS,
            "reject-publish-dlx ring of 3, 300 publishes",
            48,
            30,
            |ctx| reject_ring(ctx, "dl-rring3-", 3, 300),
        ),
        Attack::new(CLASS, "TTL-0 cycle of 2, 500 publishes", 48, 30, |ctx| {
            cycle(ctx, "dl-ttl2-", 2, Some(0), None, 500)
        }),
        Attack::new(CLASS, "TTL-0 cycle of 3, 500 publishes", 48, 30, |ctx| {
            cycle(ctx, "dl-ttl3-", 3, Some(0), None, 500)
        }),
        Attack::new(CLASS, "drop-head self-loop, max-length 0", 32, 20, |ctx| {
            cycle(ctx, "dl-dh1-", 1, None, Some(0), 200)
        }),
        Attack::new(
            CLASS,
            "drop-head cycle of 3, max-length 1, 500 publishes",
            48,
            30,
            |ctx| cycle(ctx, "dl-dh3-", 3, None, Some(1), 500),
        ),
        Attack::new(
            CLASS,
            "fan-out amplification over 4 TTL-0 queues",
            32,
            20,
            |ctx| {
                // RabbitMQ: the original plus every death path, 4 + 12 + 24 + 24 = 64.
                amplification(ctx, 4, Copies::AsRabbit)
            },
        ),
        Attack::new(
            CLASS,
            "fan-out amplification over 7 TTL-0 queues",
            128,
            30,
            |ctx| amplification(ctx, 7, Copies::AtMostRabbit),
        ),
        Attack::new(
            CLASS,
            "fan-out amplification over 24 TTL-0 queues",
            256,
            30,
            |ctx| amplification(ctx, 24, Copies::Capped),
        ),
        Attack::new(CLASS, "x-death count i64::MAX", 32, 20, |ctx| {
            let forged = FieldValue::Array(vec![death(
                "dl-forged-max",
                "expired",
                FieldValue::I64(i64::MAX),
            )]);
            forged_history(ctx, "max", forged, |h| match first_count(h)? {
                i64::MAX => Ok(()),
                n => Err(format!(
                    "the death count went from i64::MAX to {n}: it overflowed"
                )),
            })
        }),
        Attack::new(
            CLASS,
            "x-death counts of the wrong types, entries not tables",
            32,
            20,
            |ctx| {
                let forged = FieldValue::Array(vec![
                    death("dl-forged-types", "expired", text("lots")),
                    death("dl-forged-types", "expired", FieldValue::F64(f64::NAN)),
                    death("dl-forged-types", "expired", FieldValue::I64(i64::MIN)),
                    text("not a table"),
                    FieldValue::Array(vec![FieldValue::Void; 100]),
                ]);
                forged_history(ctx, "types", forged, |h| first_count(h).map(|_| ()))
            },
        ),
        Attack::new(CLASS, "x-death that is a string", 32, 20, |ctx| {
            forged_history(ctx, "string", text("x-death"), |h| {
                first_count(h).map(|_| ())
            })
        }),
        Attack::new(CLASS, "x-death array of 1,200 entries", 48, 20, |ctx| {
            let entries = (0..1200)
                .map(|i| death(&format!("q{i}"), "expired", FieldValue::I64(1)))
                .collect();
            forged_history(ctx, "huge", FieldValue::Array(entries), |h| {
                match h.get("x-death") {
                    Some(FieldValue::Array(a)) if a.len() == 1201 => Ok(()),
                    Some(FieldValue::Array(a)) => {
                        Err(format!("x-death has {} entries, not 1201", a.len()))
                    }
                    other => Err(format!("x-death is {other:?}")),
                }
            })
        }),
        Attack::new(
            CLASS,
            "x-death array of 1,200 entries round a TTL-0 cycle of 3",
            48,
            20,
            |ctx| {
                let mut c = confirmed(ctx)?;
                let names: Vec<String> = (0..3).map(|i| format!("dl-huge-cycle-{i}")).collect();
                for (i, q) in names.iter().enumerate() {
                    c.queue(
                        1,
                        q,
                        false,
                        dlx(Some(0), None, None, "", Some(&names[(i + 1) % 3])),
                    )?;
                }
                let entries = (0..1200)
                    .map(|i| death(&format!("q{i}"), "rejected", FieldValue::I64(i64::MAX)))
                    .collect();
                let props = BasicProperties {
                    headers: Some(table([("x-death", FieldValue::Array(entries))])),
                    ..persistent()
                };
                let started = Instant::now();
                for _ in 0..20 {
                    c.publish(1, "", &names[0], &props, b"forged");
                }
                c.wait_confirms(1)?;
                for q in &names {
                    let n = settle_count(&mut c, q, 0, Duration::from_secs(2))?;
                    if n != 0 {
                        return Err(format!("{q} still holds {n} messages"));
                    }
                }
                // Queues that look empty prove nothing if messages still go round.
                goes_idle(ctx)?;
                let took = started.elapsed().as_secs_f64();
                delete_all(&mut c, &names)?;
                c.close();
                Ok(format!(
                    "20 publishes dropped by the cycle rule in {took:.2}s"
                ))
            },
        ),
    ]
}
