//! Field tables at and beyond the depth and size limits, entering every way a table can:
//! queue, exchange and binding arguments and message headers over AMQP; the same over the
//! HTTP API's JSON; definitions imports. What is accepted must be stored so that it reads
//! back after a restart (checked by `survivors`, run after the suite restarts warren);
//! what is refused must leave nothing behind.

use std::time::Duration;

use serde_json::{Value, json};
use warren::proto::method::{ExchangeDeclare, Method, QueueDeclare};
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue, MAX_FIELD_DEPTH, MAX_TABLE_BYTES};

use crate::client::{Amqp, Closed, Event, persistent, table, text};
use crate::deadletter::confirmed;
use crate::harness::{Attack, Ctx, Outcome};
use crate::http;

const CLASS: &str = "field tables";

/// A table nested `depth` levels deep (a table holding one value is depth 1).
pub fn nested(depth: usize) -> FieldTable {
    let mut t = table([("leaf", FieldValue::I32(1))]);
    for _ in 1..depth {
        t = table([("n", FieldValue::Table(t))]);
    }
    t
}

/// Arguments whose nesting, counting the arguments table itself, is `depth`.
pub fn deep_args(depth: usize) -> FieldTable {
    table([("x-nest", FieldValue::Table(nested(depth - 1)))])
}

/// The same as JSON text (an object nested `depth` levels).
fn nested_json(depth: usize) -> String {
    let mut s = String::from("{\"leaf\":1}");
    for _ in 1..depth {
        s = format!("{{\"n\":{s}}}");
    }
    s
}

fn deep_args_json(depth: usize) -> String {
    format!("{{\"x-nest\":{}}}", nested_json(depth - 1))
}

/// Arguments of about `bytes` encoded bytes (one long string).
fn big_args(bytes: usize) -> FieldTable {
    table([("x-big", FieldValue::LongStr(vec![b'b'; bytes].into()))])
}

/// A refusal is a close with an error code; anything else (a silent socket close, no
/// answer) is not how a broker refuses.
fn refused(result: Result<Event, Closed>, what: &str) -> Result<String, String> {
    match result {
        Err(Closed::Channel(code, text)) | Err(Closed::Connection(code, text)) if code >= 400 => {
            Ok(format!(
                "{code} {}",
                text.chars().take(60).collect::<String>()
            ))
        }
        Err(other) => Err(format!("{what}: {other}")),
        Ok(event) => Err(format!("{what} was accepted ({})", event.method().name())),
    }
}

fn queue_exists(ctx: &Ctx, name: &str) -> Result<bool, String> {
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    let exists = match c.count(1, name) {
        Ok(_) => true,
        Err(Closed::Channel(404, _)) => false,
        Err(e) => return Err(e.to_string()),
    };
    c.close();
    Ok(exists)
}

fn exchange_exists(ctx: &Ctx, name: &str) -> Result<bool, String> {
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    let r = c.call(
        1,
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: name.into(),
            passive: true,
            ..Default::default()
        }),
    );
    let exists = match r {
        Ok(_) => true,
        Err(Closed::Channel(404, _)) => false,
        Err(e) => return Err(e.to_string()),
    };
    c.close();
    Ok(exists)
}

fn durable_queue(name: &str, args: FieldTable) -> Method {
    Method::QueueDeclare(QueueDeclare {
        queue: name.into(),
        durable: true,
        arguments: args,
        ..Default::default()
    })
}

/// Declares queues with arguments at the depth limit (accepted) and past it (refused).
fn amqp_queue_depth(ctx: &Ctx) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.call(1, durable_queue("tbl-q-32", deep_args(MAX_FIELD_DEPTH)))
        .map_err(|e| format!("depth {MAX_FIELD_DEPTH} refused: {e}"))?;
    c.close();
    let mut notes = Vec::new();
    for depth in [MAX_FIELD_DEPTH + 1, 200, 5000] {
        let mut c = confirmed(ctx)?;
        let name = format!("tbl-q-{depth}");
        notes.push(refused(
            c.call(1, durable_queue(&name, deep_args(depth))),
            &format!("depth {depth}"),
        )?);
        if queue_exists(ctx, &name)? {
            return Err(format!("queue {name} exists after its refusal"));
        }
    }
    Ok(format!("depth 33: {}", notes[0]))
}

fn amqp_exchange_and_binding_depth(ctx: &Ctx) -> Outcome {
    let mut c = confirmed(ctx)?;
    let declare = |name: &str, args| {
        Method::ExchangeDeclare(ExchangeDeclare {
            exchange: name.into(),
            kind: "headers".into(),
            durable: true,
            arguments: args,
            ..Default::default()
        })
    };
    c.call(1, declare("tbl-x-32", deep_args(MAX_FIELD_DEPTH)))
        .map_err(|e| format!("exchange at depth {MAX_FIELD_DEPTH} refused: {e}"))?;
    c.call(1, durable_queue("tbl-bound", FieldTable::default()))?;
    let mut bind_args = deep_args(MAX_FIELD_DEPTH);
    bind_args.insert("x-match", text("any"));
    c.bind(1, "tbl-bound", "tbl-x-32", "", bind_args)
        .map_err(|e| format!("binding at depth {MAX_FIELD_DEPTH} refused: {e}"))?;
    c.close();
    let mut c = confirmed(ctx)?;
    let x = refused(
        c.call(1, declare("tbl-x-33", deep_args(MAX_FIELD_DEPTH + 1))),
        "exchange at depth 33",
    )?;
    if exchange_exists(ctx, "tbl-x-33")? {
        return Err("exchange tbl-x-33 exists after its refusal".into());
    }
    let mut c = confirmed(ctx)?;
    let b = refused(
        c.call(
            1,
            Method::QueueBind(warren::proto::method::QueueBind {
                queue: "tbl-bound".into(),
                exchange: "tbl-x-32".into(),
                routing_key: "deeper".into(),
                arguments: deep_args(MAX_FIELD_DEPTH + 1),
                ..Default::default()
            }),
        ),
        "binding at depth 33",
    )?;
    Ok(format!("exchange: {x}; binding: {b}"))
}

/// A persistent message whose headers are at the limit is stored and read back; one past
/// it is refused.
fn amqp_header_depth(ctx: &Ctx) -> Outcome {
    let mut c = confirmed(ctx)?;
    c.call(1, durable_queue("tbl-msgs", FieldTable::default()))?;
    let props = BasicProperties {
        headers: Some(nested(MAX_FIELD_DEPTH)),
        ..persistent()
    };
    if !c.publish_confirmed(1, "", "tbl-msgs", &props, b"deep headers")? {
        return Err("the message at the depth limit was nacked".into());
    }
    let props = BasicProperties {
        headers: Some(nested(MAX_FIELD_DEPTH + 1)),
        ..persistent()
    };
    c.publish(1, "", "tbl-msgs", &props, b"too deep");
    let r = c.wait_confirms(1);
    let note = match r {
        Err(Closed::Channel(code, t)) | Err(Closed::Connection(code, t)) if code >= 400 => {
            format!("{code} {t}")
        }
        Err(e) => return Err(format!("headers past the limit: {e}")),
        Ok(()) if c.nacks > 0 => "nacked".to_string(),
        Ok(()) => return Err("headers past the depth limit were accepted".into()),
    };
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    let n = c.count(1, "tbl-msgs")?;
    if n != 1 {
        return Err(format!(
            "tbl-msgs holds {n} messages, expected the one at the limit"
        ));
    }
    c.close();
    Ok(note.chars().take(80).collect())
}

/// Tables as large as a frame allows, stored durably.
fn amqp_near_size(ctx: &Ctx) -> Outcome {
    let mut c = confirmed(ctx)?;
    // A queue.declare frame has ~40 bytes besides the table; 130,000 bytes of table fit.
    let size = 130_000usize.min(MAX_TABLE_BYTES - 64);
    c.call(1, durable_queue("tbl-q-big", big_args(size)))
        .map_err(|e| format!("arguments of {size} bytes refused: {e}"))?;
    let props = BasicProperties {
        headers: Some(big_args(size)),
        ..persistent()
    };
    c.call(1, durable_queue("tbl-big-msgs", FieldTable::default()))?;
    if !c.publish_confirmed(1, "", "tbl-big-msgs", &props, b"")? {
        return Err("a message with 130,000 bytes of headers was nacked".into());
    }
    c.close();
    Ok(format!("{size} bytes of arguments and of headers stored"))
}

fn http_refused(r: &http::Reply, what: &str) -> Result<(), String> {
    if (400..500).contains(&r.status) {
        Ok(())
    } else {
        Err(format!("{what}: {}", r.summary()))
    }
}

/// Queue, exchange and binding arguments and published headers over HTTP JSON.
fn http_depth(ctx: &Ctx) -> Outcome {
    let limit = MAX_FIELD_DEPTH;
    let body = |args: String| format!("{{\"durable\":true,\"arguments\":{args}}}");
    let r = http::json_text(
        ctx,
        "PUT",
        "/api/queues/%2F/tbl-hq-32",
        body(deep_args_json(limit)),
    )?;
    if !r.ok() {
        return Err(format!("queue at depth {limit}: {}", r.summary()));
    }
    let r = http::json_text(
        ctx,
        "PUT",
        "/api/exchanges/%2F/tbl-hx-32",
        format!(
            "{{\"type\":\"headers\",\"durable\":true,\"arguments\":{}}}",
            deep_args_json(limit)
        ),
    )?;
    if !r.ok() {
        return Err(format!("exchange at depth {limit}: {}", r.summary()));
    }
    let r = http::json_text(
        ctx,
        "POST",
        "/api/bindings/%2F/e/tbl-hx-32/q/tbl-hq-32",
        format!(
            "{{\"routing_key\":\"k\",\"arguments\":{}}}",
            deep_args_json(limit)
        ),
    )?;
    if !r.ok() {
        return Err(format!("binding at depth {limit}: {}", r.summary()));
    }
    let mut statuses = Vec::new();
    for depth in [limit + 1, 120, 100_000] {
        let name = format!("tbl-hq-{depth}");
        let r = http::json_text(
            ctx,
            "PUT",
            &format!("/api/queues/%2F/{name}"),
            body(deep_args_json(depth)),
        )?;
        http_refused(&r, &format!("queue arguments at depth {depth}"))?;
        statuses.push(r.status);
        if http::queue_exists(ctx, &name)? {
            return Err(format!("{name} exists after its refusal"));
        }
        let xname = format!("tbl-hx-{depth}");
        let r = http::json_text(
            ctx,
            "PUT",
            &format!("/api/exchanges/%2F/{xname}"),
            format!(
                "{{\"type\":\"topic\",\"durable\":true,\"arguments\":{}}}",
                deep_args_json(depth)
            ),
        )?;
        http_refused(&r, &format!("exchange arguments at depth {depth}"))?;
        if http::exchange_exists(ctx, &xname)? {
            return Err(format!("{xname} exists after its refusal"));
        }
        let r = http::json_text(
            ctx,
            "POST",
            "/api/bindings/%2F/e/tbl-hx-32/q/tbl-hq-32",
            format!(
                "{{\"routing_key\":\"deep{depth}\",\"arguments\":{}}}",
                deep_args_json(depth)
            ),
        )?;
        http_refused(&r, &format!("binding arguments at depth {depth}"))?;
    }
    let bindings = http::get(ctx, "/api/queues/%2F/tbl-hq-32/bindings")?;
    if bindings.body.contains("deep33") || bindings.body.contains("deep120") {
        return Err("a refused binding was stored".into());
    }
    Ok(format!("past the limit: HTTP {statuses:?}"))
}

fn http_publish(ctx: &Ctx) -> Outcome {
    let publish = |headers: String| {
        format!(
            "{{\"routing_key\":\"tbl-http-msgs\",\"payload\":\"p\",\"payload_encoding\":\"string\",\"properties\":{{\"delivery_mode\":2,\"headers\":{headers}}}}}"
        )
    };
    let r = http::json(
        ctx,
        "PUT",
        "/api/queues/%2F/tbl-http-msgs",
        &json!({"durable": true}),
    )?;
    if !r.ok() {
        return Err(format!("declare: {}", r.summary()));
    }
    let path = "/api/exchanges/%2F/amq.default/publish";
    let r = http::json_text(ctx, "POST", path, publish(nested_json(MAX_FIELD_DEPTH)))?;
    if r.json()["routed"] != Value::Bool(true) {
        return Err(format!(
            "headers at depth {MAX_FIELD_DEPTH}: {}",
            r.summary()
        ));
    }
    for depth in [MAX_FIELD_DEPTH + 1, 120] {
        let r = http::json_text(ctx, "POST", path, publish(nested_json(depth)))?;
        http_refused(&r, &format!("headers at depth {depth}"))?;
    }
    let big = format!("{{\"x-big\":\"{}\"}}", "b".repeat(MAX_TABLE_BYTES + 1));
    let r = http::json_text(ctx, "POST", path, publish(big))?;
    http_refused(&r, "headers larger than the table limit")?;
    let q = http::get(ctx, "/api/queues/%2F/tbl-http-msgs")?;
    let messages = q.json()["messages"].as_u64();
    if messages != Some(1) {
        return Err(format!(
            "tbl-http-msgs holds {messages:?} messages, expected 1"
        ));
    }
    Ok("depth 32 stored; 33, 120 and oversize refused".into())
}

fn http_size(ctx: &Ctx) -> Outcome {
    let big = "b".repeat(MAX_TABLE_BYTES + 1);
    let r = http::json(
        ctx,
        "PUT",
        "/api/queues/%2F/tbl-hq-big",
        &json!({"durable": true, "arguments": {"x-big": big}}),
    )?;
    http_refused(&r, "queue arguments over the size limit")?;
    if http::queue_exists(ctx, "tbl-hq-big")? {
        return Err("tbl-hq-big exists after its refusal".into());
    }
    // Many small entries adding up past the limit.
    let many: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("k{i:06}"), json!("vvvv")))
        .collect();
    let r = http::json(
        ctx,
        "PUT",
        "/api/exchanges/%2F/tbl-hx-many",
        &json!({"type": "headers", "durable": true, "arguments": many}),
    )?;
    http_refused(&r, "exchange arguments of 20,000 entries")?;
    if http::exchange_exists(ctx, "tbl-hx-many")? {
        return Err("tbl-hx-many exists after its refusal".into());
    }
    Ok(format!("HTTP {}", r.status))
}

fn definitions(ctx: &Ctx) -> Outcome {
    let defs = |suffix: &str, depth: usize| {
        let args: Value = serde_json::from_str(&deep_args_json(depth)).unwrap_or(Value::Null);
        json!({
            "queues": [{"name": format!("tbl-dq-{suffix}"), "vhost": "/", "durable": true, "auto_delete": false, "arguments": args}],
            "exchanges": [{"name": format!("tbl-dx-{suffix}"), "vhost": "/", "type": "headers", "durable": true, "auto_delete": false, "internal": false, "arguments": args}],
            "bindings": [{"source": format!("tbl-dx-{suffix}"), "vhost": "/", "destination": format!("tbl-dq-{suffix}"), "destination_type": "queue", "routing_key": "k", "arguments": args}]
        })
    };
    let r = http::json(
        ctx,
        "POST",
        "/api/definitions",
        &defs("32", MAX_FIELD_DEPTH),
    )?;
    if !r.ok() {
        return Err(format!(
            "definitions at depth {MAX_FIELD_DEPTH}: {}",
            r.summary()
        ));
    }
    // serde_json refuses to build values past 128 levels, which is beyond what is tested.
    let r = http::json(
        ctx,
        "POST",
        "/api/definitions",
        &defs("33", MAX_FIELD_DEPTH + 1),
    )?;
    http_refused(&r, "definitions at depth 33")?;
    if http::queue_exists(ctx, "tbl-dq-33")? || http::exchange_exists(ctx, "tbl-dx-33")? {
        return Err("a refused definitions import left objects behind".into());
    }
    Ok(format!("depth 33 refused with HTTP {}", r.status))
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "AMQP queue arguments at depth 32, 33, 200, 5000",
            32,
            20,
            amqp_queue_depth,
        ),
        Attack::new(
            CLASS,
            "AMQP exchange/binding arguments at depth 32, 33",
            32,
            20,
            amqp_exchange_and_binding_depth,
        ),
        Attack::new(
            CLASS,
            "AMQP message headers at depth 32, 33",
            32,
            20,
            amqp_header_depth,
        ),
        Attack::new(
            CLASS,
            "AMQP arguments and headers of 130,000 bytes",
            32,
            20,
            amqp_near_size,
        ),
        Attack::new(
            CLASS,
            "HTTP queue/exchange/binding args depth 32..100000",
            32,
            20,
            http_depth,
        ),
        Attack::new(
            CLASS,
            "HTTP publish headers depth 32, 33, 120, oversize",
            32,
            20,
            http_publish,
        ),
        Attack::new(
            CLASS,
            "HTTP arguments over the size limit",
            64,
            20,
            http_size,
        ),
        Attack::new(
            CLASS,
            "definitions import at depth 32, 33",
            32,
            20,
            definitions,
        ),
    ]
}

/// After the restart: everything accepted above reads back intact.
pub fn survivors() -> Attack {
    Attack::new(
        CLASS,
        "after restart: accepted tables read back intact",
        32,
        20,
        |ctx| {
            for q in [
                "tbl-q-32",
                "tbl-bound",
                "tbl-msgs",
                "tbl-q-big",
                "tbl-big-msgs",
                "tbl-hq-32",
                "tbl-http-msgs",
                "tbl-dq-32",
            ] {
                if !queue_exists(ctx, q)? {
                    return Err(format!("queue {q} did not survive the restart"));
                }
            }
            for x in ["tbl-x-32", "tbl-hx-32", "tbl-dx-32"] {
                if !exchange_exists(ctx, x)? {
                    return Err(format!("exchange {x} did not survive the restart"));
                }
            }
            let mut c = Amqp::open(ctx.port)?;
            c.set_timeout(Duration::from_secs(5));
            c.open_channel(1)?;
            match c.get(1, "tbl-msgs", true)? {
                Some((_, props, _)) if props.headers == Some(nested(MAX_FIELD_DEPTH)) => {}
                Some((_, props, _)) => {
                    return Err(format!(
                        "the deep headers came back changed: {:?}",
                        props.headers.map(|h| h.encoded_len())
                    ));
                }
                None => return Err("the message with deep headers is gone".into()),
            }
            match c.get(1, "tbl-big-msgs", true)? {
                Some((_, props, _))
                    if props.headers == Some(big_args(130_000usize.min(MAX_TABLE_BYTES - 64))) => {}
                Some(_) => return Err("the large headers came back changed".into()),
                None => return Err("the message with large headers is gone".into()),
            }
            let q = http::get(ctx, "/api/queues/%2F/tbl-hq-32")?;
            if q.json()["arguments"]["x-nest"].is_null() {
                return Err(format!("tbl-hq-32 lost its arguments: {}", q.summary()));
            }
            for q in [
                "tbl-q-32",
                "tbl-bound",
                "tbl-msgs",
                "tbl-q-big",
                "tbl-big-msgs",
                "tbl-hq-32",
                "tbl-http-msgs",
                "tbl-dq-32",
            ] {
                c.delete_queue(1, q)?;
            }
            for x in ["tbl-x-32", "tbl-hx-32", "tbl-dx-32"] {
                c.delete_exchange(1, x)?;
            }
            c.close();
            Ok("8 queues, 3 exchanges, 2 messages intact".into())
        },
    )
}
