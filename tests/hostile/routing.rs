//! Routing graphs a client can build: exchange-to-exchange cycles, chains and meshes,
//! alternate-exchange cycles; plus priorities and open/close churn.

use std::time::{Duration, Instant};

use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use crate::client::{Amqp, Closed, Event, table, text};
use crate::deadletter::{confirmed, settle_count};
use crate::harness::{Attack, Ctx, Outcome};

const CLASS: &str = "routing";

/// Publishes once to `exchange` and checks that each queue got exactly one copy, as
/// RabbitMQ delivers at most one copy per queue however many paths reach it.
fn route_once(c: &mut Amqp, exchange: &str, queues: &[String]) -> Result<f64, String> {
    let started = Instant::now();
    if !c.publish_confirmed(1, exchange, "k", &BasicProperties::default(), b"r")? {
        return Err("the publish was nacked".into());
    }
    let took = started.elapsed().as_secs_f64();
    for q in queues {
        let n = settle_count(c, q, 1, Duration::from_millis(500))?;
        if n != 1 {
            return Err(format!("{q} got {n} copies, RabbitMQ delivers 1"));
        }
    }
    Ok(took)
}

fn cleanup(c: &mut Amqp, exchanges: &[String], queues: &[String]) -> Result<(), String> {
    for q in queues {
        c.delete_queue(1, q)?;
    }
    for x in exchanges {
        c.delete_exchange(1, x)?;
    }
    Ok(())
}

/// `n` fanout exchanges, each bound to every other (n² bindings), a queue on each.
fn mesh(ctx: &Ctx, n: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    let xs: Vec<String> = (0..n).map(|i| format!("rt-mesh{n}-{i}")).collect();
    let qs: Vec<String> = (0..n).map(|i| format!("rt-mesh{n}-q{i}")).collect();
    for (x, q) in xs.iter().zip(&qs) {
        c.exchange(1, x, "fanout", FieldTable::default())?;
        c.queue(1, q, false, FieldTable::default())?;
        c.bind(1, q, x, "", FieldTable::default())?;
    }
    for a in &xs {
        for b in &xs {
            if a != b {
                c.bind_exchange(1, b, a, "")?;
            }
        }
    }
    let took = route_once(&mut c, &xs[0], &qs)?;
    cleanup(&mut c, &xs, &qs)?;
    c.close();
    Ok(format!(
        "{} bindings; confirm in {} ms",
        n * (n - 1),
        (took * 1000.0) as u64
    ))
}

/// A chain of `n` fanout exchanges ending in a queue. RabbitMQ routes through any
/// length (each exchange is visited once); with `must_arrive` the message must reach the
/// queue, otherwise the chain only has to be walked without harm (a hop cap may stop it,
/// which the note reports).
fn chain(ctx: &Ctx, n: usize, must_arrive: bool) -> Outcome {
    let mut c = confirmed(ctx)?;
    let xs: Vec<String> = (0..n).map(|i| format!("rt-chain{n}-{i}")).collect();
    for x in &xs {
        c.exchange(1, x, "fanout", FieldTable::default())?;
    }
    for pair in xs.windows(2) {
        c.bind_exchange(1, &pair[1], &pair[0], "")?;
    }
    let q = vec![format!("rt-chain{n}-q")];
    c.queue(1, &q[0], false, FieldTable::default())?;
    c.bind(1, &q[0], &xs[n - 1], "", FieldTable::default())?;
    let note = if must_arrive {
        let took = route_once(&mut c, &xs[0], &q)?;
        format!(
            "routed through {n} exchanges in {} ms",
            (took * 1000.0) as u64
        )
    } else {
        let started = Instant::now();
        if !c.publish_confirmed(1, &xs[0], "k", &BasicProperties::default(), b"r")? {
            return Err("the publish was nacked".into());
        }
        let took = started.elapsed().as_millis();
        let n_copies = settle_count(&mut c, &q[0], 1, Duration::from_millis(500))?;
        format!("confirmed in {took} ms; {n_copies} copies arrived (RabbitMQ: 1)")
    };
    cleanup(&mut c, &xs, &q)?;
    c.close();
    Ok(note)
}

/// Alternate exchanges that name each other (or themselves): an unroutable mandatory
/// publish is returned (312 NO_ROUTE) and confirmed, as RabbitMQ does.
fn ae_cycle(ctx: &Ctx, n: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    let xs: Vec<String> = (0..n).map(|i| format!("rt-ae{n}-{i}")).collect();
    for (i, x) in xs.iter().enumerate() {
        let ae = table([("alternate-exchange", text(&xs[(i + 1) % n]))]);
        c.exchange(1, x, "direct", ae)?;
    }
    c.publish_flags(
        1,
        &xs[0],
        "nowhere",
        true,
        &BasicProperties::default(),
        b"lost",
    );
    c.wait_confirms(1)?;
    let returned = c.events.iter().find_map(|e| match e {
        Event::Content(_, Method::BasicReturn(r), ..) => Some(r.reply_code),
        _ => None,
    });
    if returned != Some(312) {
        return Err(format!(
            "expected basic.return 312 NO_ROUTE, got {returned:?}"
        ));
    }
    cleanup(&mut c, &xs, &[])?;
    c.close();
    Ok("returned 312 and confirmed".into())
}

fn priorities(ctx: &Ctx, queues: usize) -> Outcome {
    let mut c = confirmed(ctx)?;
    let names: Vec<String> = (0..queues).map(|i| format!("rt-prio-{i}")).collect();
    let args = table([("x-max-priority", FieldValue::I32(255))]);
    for q in &names {
        c.queue(1, q, false, args.clone())?;
        let props = BasicProperties {
            priority: Some(255),
            ..Default::default()
        };
        c.publish(1, "", q, &props, b"p");
    }
    c.wait_confirms(1)?;
    let want = "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'rt-prio-256' in vhost '/': {max_value_exceeded,256}";
    match c.queue(
        1,
        "rt-prio-256",
        false,
        table([("x-max-priority", FieldValue::I32(256))]),
    ) {
        Err(Closed::Channel(406, _)) => {}
        other => {
            return Err(format!(
                "x-max-priority 256: {other:?}; RabbitMQ: 406 {want}"
            ));
        }
    }
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    for q in &names {
        c.delete_queue(1, q)?;
    }
    c.close();
    Ok(format!("{queues} queues of 255 priorities"))
}

fn channel_churn(ctx: &Ctx, n: usize) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let batch = 500.min(n - done);
        let mut methods = Vec::new();
        for i in 0..batch {
            let ch = (i + 1) as u16;
            methods.push((ch, Method::ChannelOpen(ChannelOpen::default())));
            methods.push((
                ch,
                Method::ChannelClose(ChannelClose {
                    reply_code: 200,
                    ..Default::default()
                }),
            ));
        }
        let mut out = bytes::BytesMut::new();
        for (ch, m) in &methods {
            warren::proto::frame::encode_method(*ch, m, &mut out);
        }
        c.send_bytes(&out);
        for i in 0..batch {
            let ch = (i + 1) as u16;
            for _ in 0..2 {
                c.reply(ch)?;
            }
        }
        done += batch;
    }
    c.close();
    Ok(format!(
        "{n} channels opened and closed in {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

fn consumer_churn(ctx: &Ctx, n: usize) -> Outcome {
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    c.queue(1, "rt-churn", false, FieldTable::default())?;
    let started = Instant::now();
    let methods = (0..n).flat_map(|i| {
        let tag = format!("churn-{i}");
        [
            Method::BasicConsume(BasicConsume {
                queue: "rt-churn".into(),
                consumer_tag: tag.clone(),
                ..Default::default()
            }),
            Method::BasicCancel(BasicCancel {
                consumer_tag: tag,
                nowait: false,
            }),
        ]
    });
    c.pipeline(1, methods)?;
    c.delete_queue(1, "rt-churn")?;
    c.close();
    Ok(format!(
        "{n} consume/cancel in {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(CLASS, "exchange-to-exchange cycle of 2", 32, 20, |ctx| {
            mesh(ctx, 2)
        }),
        Attack::new(
            CLASS,
            "exchange-to-exchange mesh of 20 (380 bindings)",
            32,
            20,
            |ctx| mesh(ctx, 20),
        ),
        Attack::new(CLASS, "exchange-to-exchange chain of 60", 32, 20, |ctx| {
            chain(ctx, 60, true)
        }),
        Attack::new(
            CLASS,
            "exchange-to-exchange chain of 1,000",
            32,
            30,
            |ctx| chain(ctx, 1000, false),
        ),
        Attack::new(CLASS, "alternate-exchange self-cycle", 32, 20, |ctx| {
            ae_cycle(ctx, 1)
        }),
        Attack::new(CLASS, "alternate-exchange cycle of 3", 32, 20, |ctx| {
            ae_cycle(ctx, 3)
        }),
        Attack::new(CLASS, "500 queues with 255 priorities", 64, 30, |ctx| {
            priorities(ctx, 500)
        }),
        Attack::new(
            CLASS,
            "20,000 channel open/close on one connection",
            32,
            30,
            |ctx| channel_churn(ctx, 20_000),
        ),
        Attack::new(
            CLASS,
            "20,000 consume/cancel on one channel",
            32,
            30,
            |ctx| consumer_churn(ctx, 20_000),
        ),
    ]
}
