//! The management HTTP API as a browser-borne attacker would use it: state changes
//! without a JSON content type or from another origin, the basic-auth challenge browsers
//! cache, and password guessing; names past AMQP's 255 bytes in API paths and bodies and in
//! definitions documents.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Attack, Ctx, Outcome};
use crate::http;

const CLASS: &str = "HTTP API";

/// A JSON body sent with each of the content types a cross-site form can send (and none):
/// every one is refused and nothing is created; application/json works.
fn content_types(ctx: &Ctx) -> Outcome {
    let body = json!({"durable": false}).to_string();
    let mut statuses = Vec::new();
    for (i, ct) in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("http-ct-{i}");
        let headers: Vec<(&str, &str)> = ct.map(|c| ("content-type", c)).into_iter().collect();
        let r = http::request(
            ctx,
            "PUT",
            &format!("/api/queues/%2F/{name}"),
            http::GUEST,
            &headers,
            Some(body.clone()),
        )?;
        if r.ok() || http::queue_exists(ctx, &name)? {
            return Err(format!(
                "PUT with content type {ct:?} was accepted: {}",
                r.summary()
            ));
        }
        statuses.push(r.status);
    }
    let publish =
        json!({"routing_key": "x", "payload": "p", "payload_encoding": "string", "properties": {}})
            .to_string();
    let r = http::request(
        ctx,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        http::GUEST,
        &[("content-type", "text/plain")],
        Some(publish),
    )?;
    if r.ok() {
        return Err(format!(
            "a text/plain publish was accepted: {}",
            r.summary()
        ));
    }
    let r = http::request(ctx, "POST", "/api/definitions", http::GUEST, &[("content-type", "text/plain")], Some(json!({"queues": [{"name": "http-ct-defs", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}]}).to_string()))?;
    if r.ok() || http::queue_exists(ctx, "http-ct-defs")? {
        return Err(format!(
            "a text/plain definitions import was accepted: {}",
            r.summary()
        ));
    }
    let r = http::json(
        ctx,
        "PUT",
        "/api/queues/%2F/http-ct-json",
        &json!({"durable": false}),
    )?;
    if !r.ok() {
        return Err(format!("PUT with application/json: {}", r.summary()));
    }
    http::delete(ctx, "/api/queues/%2F/http-ct-json")?;
    Ok(format!("refused with {statuses:?}"))
}

/// A request carrying another site's Origin changes nothing; the API's own origin works.
fn origins(ctx: &Ctx) -> Outcome {
    let evil = [
        ("content-type", "application/json"),
        ("origin", "http://evil.example"),
    ];
    let body = Some(json!({"durable": false}).to_string());
    let r = http::request(
        ctx,
        "PUT",
        "/api/queues/%2F/http-origin-evil",
        http::GUEST,
        &evil,
        body.clone(),
    )?;
    if r.ok() || http::queue_exists(ctx, "http-origin-evil")? {
        return Err(format!(
            "PUT from another origin was accepted: {}",
            r.summary()
        ));
    }
    let own = ctx.http_url();
    let same = [
        ("content-type", "application/json"),
        ("origin", own.as_str()),
    ];
    let r = http::request(
        ctx,
        "PUT",
        "/api/queues/%2F/http-origin-same",
        http::GUEST,
        &same,
        body,
    )?;
    if !r.ok() {
        return Err(format!(
            "PUT from the API's own origin was refused: {}",
            r.summary()
        ));
    }
    let r2 = http::request(
        ctx,
        "DELETE",
        "/api/queues/%2F/http-origin-same",
        http::GUEST,
        &[("origin", "http://evil.example")],
        None,
    )?;
    if r2.ok() || !http::queue_exists(ctx, "http-origin-same")? {
        return Err(format!(
            "DELETE from another origin was accepted: {}",
            r2.summary()
        ));
    }
    http::delete(ctx, "/api/queues/%2F/http-origin-same")?;
    Ok(format!("other origin: HTTP {}", r2.status))
}

/// 401 answers on API paths carry no `WWW-Authenticate: Basic` challenge, so a browser
/// never prompts for (and caches) credentials a page could then use.
fn no_challenge(ctx: &Ctx) -> Outcome {
    for (what, auth) in [
        ("wrong password", Some(("guest", "nope"))),
        ("no credentials", None),
    ] {
        let r = http::request(ctx, "GET", "/api/overview", auth, &[], None)?;
        if r.status != 401 {
            return Err(format!("{what}: {} (expected 401)", r.summary()));
        }
        if let Some(c) = r.header("www-authenticate") {
            return Err(format!("{what}: 401 with WWW-Authenticate: {c}"));
        }
    }
    Ok("401 without a challenge".into())
}

/// Password guessing: failed logins are slowed down, and the slowing holds back neither
/// the server nor the right password.
fn guessing(ctx: &Ctx, attempts: usize) -> Outcome {
    let guesser = {
        let ctx = ctx.clone();
        std::thread::spawn(move || -> Result<Duration, String> {
            let started = Instant::now();
            for i in 0..attempts {
                let r = http::request(
                    &ctx,
                    "GET",
                    "/api/whoami",
                    Some(("guest", &format!("guess{i}"))),
                    &[],
                    None,
                )?;
                if r.status != 401 {
                    return Err(format!("guess {i}: {}", r.summary()));
                }
            }
            Ok(started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = http::get(ctx, "/api/overview")?;
    let others = t.elapsed();
    if !r.ok() || others > Duration::from_secs(2) {
        return Err(format!(
            "the right password during guessing: {} after {} ms",
            r.status,
            others.as_millis()
        ));
    }
    let guessed = guesser
        .join()
        .map_err(|_| "the guessing thread panicked".to_string())??;
    let per = guessed / attempts as u32;
    // Unthrottled, a failed login answers in a few milliseconds.
    if per < Duration::from_millis(50) {
        return Err(format!(
            "{attempts} failed logins took {} ms ({} ms each): not slowed",
            guessed.as_millis(),
            per.as_millis()
        ));
    }
    Ok(format!(
        "{attempts} failures took {:.1}s; the right password answered in {} ms meanwhile",
        guessed.as_secs_f64(),
        others.as_millis()
    ))
}

/// Names AMQP could never carry: a queue of 4,000 bytes in the path, a topic permission
/// and an imported exchange of 70,000 bytes (a store key past the disk's 64 KiB limit
/// once ended the node). Each is refused with 400, nothing is created, and the broker
/// goes on (a 255-byte queue name works).
fn long_names(ctx: &Ctx) -> Outcome {
    let mut statuses = Vec::new();
    let long_queue = "q".repeat(4000);
    let r = http::json(
        ctx,
        "PUT",
        &format!("/api/queues/%2F/{long_queue}"),
        &json!({"durable": true}),
    )?;
    statuses.push(r.status);
    let huge = "e".repeat(70_000);
    let r = http::json(
        ctx,
        "PUT",
        "/api/topic-permissions/%2F/guest",
        &json!({"exchange": huge, "write": ".*", "read": ".*"}),
    )?;
    statuses.push(r.status);
    let defs = json!({"exchanges": [
        {"name": "long-names-fine", "vhost": "/", "type": "fanout", "durable": true,
         "auto_delete": false, "internal": false, "arguments": {}},
        {"name": huge, "vhost": "/", "type": "fanout", "durable": true,
         "auto_delete": false, "internal": false, "arguments": {}}]});
    let r = http::json(ctx, "POST", "/api/definitions", &defs)?;
    statuses.push(r.status);
    if statuses != [400, 400, 400] {
        return Err(format!("statuses {statuses:?}; expected 400 for each"));
    }
    if http::exchange_exists(ctx, "long-names-fine")? {
        return Err("part of a refused import was applied".into());
    }
    let fine = "q".repeat(255);
    let r = http::json(ctx, "PUT", &format!("/api/queues/%2F/{fine}"), &json!({}))?;
    if r.status != 201 {
        return Err(format!("a 255-byte queue name: {}", r.summary()));
    }
    http::delete(ctx, &format!("/api/queues/%2F/{fine}"))?;
    Ok(format!("HTTP {statuses:?}"))
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "state changes without a JSON content type",
            32,
            30,
            content_types,
        ),
        Attack::new(
            CLASS,
            "state changes with a cross-origin Origin",
            32,
            30,
            origins,
        ),
        Attack::new(CLASS, "401 without WWW-Authenticate", 32, 30, no_challenge),
        Attack::new(CLASS, "30 failed logins in a row", 32, 60, |ctx| {
            guessing(ctx, 30)
        }),
        Attack::new(
            CLASS,
            "names past 255 bytes in paths, bodies and definitions",
            64,
            30,
            long_names,
        ),
    ]
}
