//! Tenants: channels up to channel_max and past it, many consumers on a channel, many
//! queues, bindings added and removed in bulk (each must cost O(1)), RabbitMQ's vhost and
//! user limits, and a flood of queue names.

use std::time::{Duration, Instant};

use serde_json::json;
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::FieldTable;

use crate::client::{Amqp, Closed, Event};
use crate::deadletter::confirmed;
use crate::harness::{Attack, Ctx, Outcome, ctl, ctl_ok};
use crate::http;

const CLASS: &str = "tenants";

fn expect_ok(events: &[Event], what: &str) -> Result<(), String> {
    for e in events {
        let ok = matches!(
            e.method(),
            Method::QueueDeclareOk(_)
                | Method::QueueBindOk(_)
                | Method::QueueUnbindOk(_)
                | Method::BasicConsumeOk(_)
                | Method::ChannelOpenOk(_)
                | Method::ChannelCloseOk(_)
                | Method::BasicCancelOk(_)
        );
        if !ok {
            return Err(format!("{what}: got {}", e.method().name()));
        }
    }
    Ok(())
}

/// Every channel up to the negotiated channel_max opens; one more closes the connection
/// with 530, as RabbitMQ does.
fn channel_max(ctx: &Ctx) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    let max = c.channel_max;
    if max == 0 {
        return Err("the server offered channel_max 0 (no limit)".into());
    }
    let started = Instant::now();
    for ch in 1..=max {
        c.send(ch, Method::ChannelOpen(ChannelOpen::default()));
    }
    for ch in 1..=max {
        match c.reply(ch)? {
            Event::Method(_, Method::ChannelOpenOk(_)) => {}
            other => return Err(format!("channel {ch}: {}", other.method().name())),
        }
    }
    let opened = started.elapsed().as_secs_f64();
    c.send(
        max.wrapping_add(1),
        Method::ChannelOpen(ChannelOpen::default()),
    );
    match c.reply(max.wrapping_add(1)) {
        Err(Closed::Connection(530, text)) => Ok(format!(
            "{max} opened in {opened:.1}s; one more: 530 {text}"
        )),
        Err(e) => Err(format!(
            "channel {} past channel_max {max}: {e} (RabbitMQ: 530 NOT_ALLOWED)",
            max as u32 + 1
        )),
        Ok(e) => Err(format!(
            "channel {} past channel_max {max} was answered {}",
            max as u32 + 1,
            e.method().name()
        )),
    }
}

/// `n` connections, each with every channel it may open.
fn all_channels(ctx: &Ctx, n: usize) -> Outcome {
    let mut conns = Vec::new();
    let started = Instant::now();
    let mut total = 0usize;
    for _ in 0..n {
        let mut c = Amqp::open(ctx.port)?;
        let max = c.channel_max;
        for ch in 1..=max {
            c.send(ch, Method::ChannelOpen(ChannelOpen::default()));
        }
        for ch in 1..=max {
            c.reply(ch)?;
        }
        total += max as usize;
        conns.push(c);
    }
    let during = crate::harness::bystander_during(ctx)?;
    drop(conns);
    Ok(format!(
        "{total} channels in {:.1}s; bystander {} ms",
        started.elapsed().as_secs_f64(),
        during.as_millis()
    ))
}

/// `n` consumers on one channel of one queue, then messages dispatched across them.
fn consumers(ctx: &Ctx, n: usize, messages: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.queue(1, "tenant-consumers", false, FieldTable::default())?;
    let started = Instant::now();
    let consume = (0..n).map(|i| {
        Method::BasicConsume(BasicConsume {
            queue: "tenant-consumers".into(),
            consumer_tag: format!("c{i}"),
            no_ack: true,
            ..Default::default()
        })
    });
    let note = match c.pipeline(1, consume) {
        Ok(events) => {
            expect_ok(&events, "basic.consume")?;
            format!("{n} consumers in {:.1}s", started.elapsed().as_secs_f64())
        }
        // A cap on consumers per channel is a refusal with a code.
        Err(Closed::Channel(code, text)) | Err(Closed::Connection(code, text)) if code >= 400 => {
            let mut c = Amqp::open(ctx.port)?;
            c.open_channel(1)?;
            c.delete_queue(1, "tenant-consumers")?;
            c.close();
            return Ok(format!("capped: {code} {text}"));
        }
        Err(e) => return Err(e.to_string()),
    };
    let mut p = confirmed(ctx)?;
    let started = Instant::now();
    p.publish_many(
        1,
        "",
        "tenant-consumers",
        &BasicProperties::default(),
        b"m",
        messages,
        64,
    )?;
    for _ in 0..messages {
        c.delivery()?;
    }
    let took = started.elapsed().as_secs_f64();
    if took > 5.0 {
        return Err(format!(
            "{messages} deliveries across {n} consumers took {took:.1}s"
        ));
    }
    p.close();
    c.delete_queue(1, "tenant-consumers")?;
    c.close();
    Ok(format!("{note}; {messages} dispatched in {took:.2}s"))
}

/// `n` exclusive queues on one connection; they go with it.
fn many_queues(ctx: &Ctx, n: usize) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    let started = Instant::now();
    let declares = (0..n).map(|i| {
        Method::QueueDeclare(QueueDeclare {
            queue: format!("tenant-q-{i}"),
            exclusive: true,
            ..Default::default()
        })
    });
    let events = c.pipeline(1, declares)?;
    expect_ok(&events, "queue.declare")?;
    let took = started.elapsed().as_secs_f64();
    c.close();
    let mut check = Amqp::open(ctx.port)?;
    check.open_channel(1)?;
    match check.count(1, "tenant-q-0") {
        Err(Closed::Channel(404, _)) => {}
        other => {
            return Err(format!(
                "an exclusive queue outlived its connection: {other:?}"
            ));
        }
    }
    check.close();
    Ok(format!("{n} declared in {took:.1}s"))
}

/// Binds then unbinds `n` keys between `exchange` and a queue; returns the seconds each
/// half took.
fn bind_unbind(
    c: &mut Amqp,
    exchange: &str,
    queue: &str,
    n: usize,
    key: &dyn Fn(usize) -> String,
) -> Result<(f64, f64), String> {
    let started = Instant::now();
    let binds = (0..n).map(|i| {
        Method::QueueBind(QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key(i),
            ..Default::default()
        })
    });
    expect_ok(&c.pipeline(1, binds)?, "queue.bind")?;
    let bind = started.elapsed().as_secs_f64();
    let started = Instant::now();
    // Unbinding in the order bound is the worst order for a list scanned from the front.
    let unbinds = (0..n).map(|i| {
        Method::QueueUnbind(QueueUnbind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key(i),
            ..Default::default()
        })
    });
    expect_ok(&c.pipeline(1, unbinds)?, "queue.unbind")?;
    Ok((bind, started.elapsed().as_secs_f64()))
}

/// Time for `small` and 4x as many binds and unbinds: linear cost means about 4x the
/// time, quadratic 16x.
fn bindings_linear(
    ctx: &Ctx,
    exchange: &str,
    small: usize,
    key: &'static dyn Fn(usize) -> String,
) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    c.set_timeout(Duration::from_secs(60));
    c.open_channel(1)?;
    let queue = format!("tenant-bind-{exchange}");
    c.queue(1, &queue, false, FieldTable::default())?;
    // Warm up, then measure each size twice and keep the faster run, so that a moment
    // of load on the machine does not pass for a quadratic cost.
    bind_unbind(&mut c, exchange, &queue, small / 4, key)?;
    let mut best = |n: usize| -> Result<(f64, f64), String> {
        let a = bind_unbind(&mut c, exchange, &queue, n, key)?;
        let b = bind_unbind(&mut c, exchange, &queue, n, key)?;
        Ok(if a.0 + a.1 <= b.0 + b.1 { a } else { b })
    };
    let (b1, u1) = best(small)?;
    let (b4, u4) = best(small * 4)?;
    c.delete_queue(1, &queue)?;
    c.close();
    let ratio = (b4 + u4) / (b1 + u1).max(0.001);
    let note = format!(
        "{small}: bind {b1:.2}s unbind {u1:.2}s; {}: bind {b4:.2}s unbind {u4:.2}s; x{ratio:.1}",
        small * 4
    );
    if ratio > 8.0 {
        return Err(format!(
            "4x the bindings took {ratio:.1}x the time (linear is 4x): {note}"
        ));
    }
    Ok(note)
}

/// RabbitMQ's vhost limits through `warren ctl` and the HTTP API.
fn vhost_limits(ctx: &Ctx) -> Outcome {
    let vhost = "tenant-limited";
    ctl_ok(ctx, &["add_vhost", vhost])?;
    ctl_ok(
        ctx,
        &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    )?;
    let result = (|| {
        ctl_ok(
            ctx,
            &[
                "set_vhost_limits",
                "-p",
                vhost,
                r#"{"max-connections":2,"max-queues":3}"#,
            ],
        )?;
        let a = Amqp::login(ctx.port, "guest", "guest", vhost)?;
        let b = Amqp::login(ctx.port, "guest", "guest", vhost)?;
        let want = format!(
            "NOT_ALLOWED - access to vhost '{vhost}' refused for user 'guest': connection limit (2) is reached"
        );
        match Amqp::login(ctx.port, "guest", "guest", vhost) {
            Err(Closed::Connection(530, text)) if text == want => {}
            Err(e) => return Err(format!("third connection: {e}; RabbitMQ: 530 {want}")),
            Ok(_) => return Err("a third connection was let in past max-connections 2".into()),
        }
        drop(b);
        let mut a = a;
        a.open_channel(1)?;
        for i in 0..3 {
            a.queue(1, &format!("lq{i}"), false, FieldTable::default())?;
        }
        let want = format!(
            "PRECONDITION_FAILED - cannot declare queue 'lq3': queue limit in vhost '{vhost}' (3) is reached"
        );
        match a.queue(1, "lq3", false, FieldTable::default()) {
            Err(Closed::Channel(406, text)) if text == want => {}
            Err(e) => return Err(format!("fourth queue: {e}; RabbitMQ: 406 {want}")),
            Ok(()) => return Err("a fourth queue was declared past max-queues 3".into()),
        }
        let limits = http::get(ctx, "/api/vhost-limits")?;
        if !limits.body.contains("max-queues") {
            return Err(format!(
                "GET /api/vhost-limits does not show the limits: {}",
                limits.summary()
            ));
        }
        let r = http::json(
            ctx,
            "PUT",
            &format!("/api/vhost-limits/{vhost}/max-queues"),
            &json!({"value": 4}),
        )?;
        if !r.ok() {
            return Err(format!("PUT /api/vhost-limits: {}", r.summary()));
        }
        a.open_channel(2)?;
        a.queue(2, "lq3", false, FieldTable::default())
            .map_err(|e| format!("after raising max-queues to 4 over HTTP: {e}"))?;
        ctl_ok(ctx, &["clear_vhost_limits", "-p", vhost])?;
        a.queue(2, "lq4", false, FieldTable::default())
            .map_err(|e| format!("after clear_vhost_limits: {e}"))?;
        a.close();
        Ok("530 and 406 with RabbitMQ's texts; HTTP and clear work".to_string())
    })();
    let _ = ctl(ctx, &["delete_vhost", vhost]);
    result
}

/// RabbitMQ's user limits.
fn user_limits(ctx: &Ctx) -> Outcome {
    let user = "tenant-user";
    ctl_ok(ctx, &["add_user", user, "pw"])?;
    ctl_ok(ctx, &["set_permissions", "-p", "/", user, ".*", ".*", ".*"])?;
    let result = (|| {
        ctl_ok(
            ctx,
            &[
                "set_user_limits",
                user,
                r#"{"max-connections":1,"max-channels":2}"#,
            ],
        )?;
        let mut a = Amqp::login(ctx.port, user, "pw", "/")?;
        let want = format!(
            "NOT_ALLOWED - connection refused for user '{user}': user connection limit (1) is reached"
        );
        match Amqp::login(ctx.port, user, "pw", "/") {
            Err(Closed::Connection(530, text)) if text == want => {}
            Err(e) => return Err(format!("second connection: {e}; RabbitMQ: 530 {want}")),
            Ok(_) => return Err("a second connection was let in past max-connections 1".into()),
        }
        a.open_channel(1)?;
        a.open_channel(2)?;
        let want = format!(
            "NOT_ALLOWED - number of channels opened for user '{user}' has reached the maximum allowed user limit of (2)"
        );
        match a.open_channel(3) {
            Err(Closed::Connection(530, text)) if text == want => {}
            Err(e) => return Err(format!("third channel: {e}; RabbitMQ: 530 {want}")),
            Ok(()) => return Err("a third channel was opened past max-channels 2".into()),
        }
        let limits = http::get(ctx, "/api/user-limits")?;
        if !limits.body.contains("max-channels") {
            return Err(format!(
                "GET /api/user-limits does not show the limits: {}",
                limits.summary()
            ));
        }
        Ok("530 with RabbitMQ's texts".to_string())
    })();
    let _ = ctl(ctx, &["delete_user", user]);
    result
}

/// 100,000 queue names of one shape (same length, differing in the last characters):
/// with a fixed hash seed they could be chosen to collide; declaring them must stay fast
/// and the second half no slower than the first.
fn name_flood(ctx: &Ctx, n: usize) -> Outcome {
    let vhost = "tenant-flood";
    ctl_ok(ctx, &["add_vhost", vhost])?;
    ctl_ok(
        ctx,
        &["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    )?;
    let result = (|| {
        let mut c = Amqp::login(ctx.port, "guest", "guest", vhost)?;
        c.set_timeout(Duration::from_secs(60));
        c.open_channel(1)?;
        let prefix = "f".repeat(200);
        let half = |c: &mut Amqp, range: std::ops::Range<usize>| -> Result<f64, String> {
            let started = Instant::now();
            let declares = range.map(|i| {
                Method::QueueDeclare(QueueDeclare {
                    queue: format!("{prefix}{i:08}"),
                    nowait: true,
                    ..Default::default()
                })
            });
            let mut out = bytes::BytesMut::new();
            for m in declares {
                warren::proto::frame::encode_method(1, &m, &mut out);
                if out.len() > 256 * 1024 {
                    c.send_bytes(&out);
                    out.clear();
                }
            }
            c.send_bytes(&out);
            // A synchronous declare after them answers once all are done.
            c.queue(1, "flood-sync", false, FieldTable::default())?;
            Ok(started.elapsed().as_secs_f64())
        };
        let first = half(&mut c, 0..n / 2)?;
        let second = half(&mut c, n / 2..n)?;
        c.close();
        let note = format!(
            "{} + {} declares: {first:.1}s then {second:.1}s",
            n / 2,
            n / 2
        );
        if second > 3.0 * first.max(0.2) {
            return Err(format!(
                "the second half was {:.1}x slower: {note}",
                second / first
            ));
        }
        let started = Instant::now();
        ctl_ok(ctx, &["delete_vhost", vhost])?;
        Ok(format!(
            "{note}; vhost deleted in {:.1}s",
            started.elapsed().as_secs_f64()
        ))
    })();
    let _ = ctl(ctx, &["delete_vhost", vhost]);
    result
}

fn direct_key(i: usize) -> String {
    format!("key-{i}")
}

fn topic_key(i: usize) -> String {
    format!("t.{i}.#")
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "every channel up to channel_max, then one more",
            64,
            30,
            channel_max,
        ),
        Attack::new(
            CLASS,
            "8 connections x channel_max channels",
            192,
            60,
            |ctx| all_channels(ctx, 8),
        ),
        Attack::new(CLASS, "20,000 consumers on one channel", 96, 60, |ctx| {
            consumers(ctx, 20_000, 2000)
        }),
        Attack::new(
            CLASS,
            "20,000 exclusive queues on one connection",
            128,
            60,
            |ctx| many_queues(ctx, 20_000),
        ),
        Attack::new(CLASS, "5,000 vs 20,000 direct bind/unbind", 64, 60, |ctx| {
            bindings_linear(ctx, "amq.direct", 5000, &direct_key)
        }),
        Attack::new(CLASS, "5,000 vs 20,000 topic bind/unbind", 64, 60, |ctx| {
            bindings_linear(ctx, "amq.topic", 5000, &topic_key)
        }),
        Attack::new(
            CLASS,
            "vhost limits: max-connections 2, max-queues 3",
            32,
            30,
            vhost_limits,
        ),
        Attack::new(
            CLASS,
            "user limits: max-connections 1, max-channels 2",
            32,
            30,
            user_limits,
        ),
        Attack::new(
            CLASS,
            "hash flooding: 100,000 queue names of one shape",
            384,
            90,
            |ctx| name_flood(ctx, 100_000),
        ),
    ]
}
