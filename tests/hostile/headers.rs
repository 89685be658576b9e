//! Headers exchange: bindings with thousands of keys matched against messages with
//! thousands of headers. Matching must not compare every key with every header.

use std::time::Instant;

use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use crate::client::text;
use crate::deadletter::{confirmed, settle_count};
use crate::harness::{Attack, Ctx, Outcome};

const CLASS: &str = "headers";

/// Most time the publishes of one attack may take to be confirmed, seconds.
const PUBLISH_LIMIT_S: f64 = 3.0;

/// A table of `n` string entries `{prefix}{i}` = "v".
fn keys(prefix: &str, n: usize) -> FieldTable {
    (0..n)
        .map(|i| (format!("{prefix}{i:05}"), text("v")))
        .collect()
}

/// Binds `bindings` bindings of `n` keys each (`x-match` = `mode`) and publishes
/// `publishes` messages carrying `headers`; `routed` messages must arrive.
fn attack(
    ctx: &Ctx,
    queue: &str,
    mode: &str,
    bindings: usize,
    n: usize,
    headers: FieldTable,
    publishes: usize,
    routed: u32,
) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.queue(1, queue, false, FieldTable::default())?;
    let exchange = format!("{queue}-x");
    c.exchange(1, &exchange, "headers", FieldTable::default())?;
    for b in 0..bindings {
        let mut args = keys("k", n);
        args.insert("x-match", text(mode));
        // Distinct bindings: each has one more key of its own, which "any" ignores when
        // another key matches and "all" requires.
        if bindings > 1 {
            args.insert(format!("own{b}"), text("v"));
        }
        c.bind(1, queue, &exchange, "", args)?;
    }
    let props = BasicProperties {
        headers: Some(headers),
        ..Default::default()
    };
    let started = Instant::now();
    for _ in 0..publishes {
        c.publish(1, &exchange, "", &props, b"headers");
    }
    c.wait_confirms(1)?;
    let took = started.elapsed().as_secs_f64();
    let got = settle_count(&mut c, queue, routed, std::time::Duration::from_secs(1))?;
    if got != routed {
        return Err(format!("{got} messages routed, expected {routed}"));
    }
    if took > PUBLISH_LIMIT_S {
        return Err(format!(
            "{publishes} publishes took {took:.1}s (bound {PUBLISH_LIMIT_S}s)"
        ));
    }
    c.delete_queue(1, queue)?;
    c.delete_exchange(1, &exchange)?;
    c.close();
    Ok(format!("{publishes} publishes {took:.2}s"))
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "x-match all: 8,000 keys vs 8,000 headers, 50 msgs",
            64,
            30,
            |ctx| attack(ctx, "hdr-all", "all", 1, 8000, keys("k", 8000), 50, 50),
        ),
        Attack::new(
            CLASS,
            "x-match any: 8,000 keys vs 8,000 other headers",
            64,
            30,
            |ctx| attack(ctx, "hdr-any-miss", "any", 1, 8000, keys("h", 8000), 50, 0),
        ),
        Attack::new(CLASS, "x-match any: last key matches only", 64, 30, |ctx| {
            let mut headers = keys("h", 7999);
            headers.insert("k07999", text("v"));
            attack(ctx, "hdr-any-last", "any", 1, 8000, headers, 50, 50)
        }),
        Attack::new(
            CLASS,
            "200 bindings of 500 keys, 500 headers, 30 msgs",
            64,
            30,
            |ctx| {
                // Each binding wants its own key as well, which no message carries.
                attack(ctx, "hdr-many", "all", 200, 500, keys("k", 500), 30, 0)
            },
        ),
        Attack::new(
            CLASS,
            "all-with-x / any-with-x over 6,000 x- headers",
            64,
            30,
            |ctx| {
                let xs: FieldTable = (0..6000)
                    .map(|i| (format!("x-h{i:05}"), FieldValue::I32(i)))
                    .collect();
                let mut c = confirmed(ctx)?;
                let exchange = "hdr-with-x";
                c.exchange(1, exchange, "headers", FieldTable::default())?;
                let mut all = xs.clone();
                all.insert("x-match", text("all-with-x"));
                let mut any = keys("k", 6000);
                any.insert("x-match", text("any-with-x"));
                c.queue(1, "hdr-all-x", false, FieldTable::default())?;
                c.queue(1, "hdr-any-x", false, FieldTable::default())?;
                c.bind(1, "hdr-all-x", exchange, "", all)?;
                c.bind(1, "hdr-any-x", exchange, "", any)?;
                let props = BasicProperties {
                    headers: Some(xs),
                    ..Default::default()
                };
                let started = Instant::now();
                for _ in 0..50 {
                    c.publish(1, exchange, "", &props, b"x");
                }
                c.wait_confirms(1)?;
                let took = started.elapsed().as_secs_f64();
                let all_n =
                    settle_count(&mut c, "hdr-all-x", 50, std::time::Duration::from_secs(1))?;
                let any_n = c.count(1, "hdr-any-x")?;
                if (all_n, any_n) != (50, 0) {
                    return Err(format!(
                        "routed {all_n} to all-with-x and {any_n} to any-with-x, expected 50 and 0"
                    ));
                }
                if took > PUBLISH_LIMIT_S {
                    return Err(format!("50 publishes took {took:.1}s"));
                }
                c.delete_queue(1, "hdr-all-x")?;
                c.delete_queue(1, "hdr-any-x")?;
                c.delete_exchange(1, exchange)?;
                c.close();
                Ok(format!("50 publishes {took:.2}s"))
            },
        ),
    ]
}
