//! Authorization gaps: a dead-letter or alternate exchange the user may not write to (and
//! a declared queue or exchange it may not read), over AMQP and HTTP; another
//! connection's exclusive queue over HTTP and AMQP; a policymaker that can also monitor
//! setting policies in a vhost it has no permissions in; what `/api/overview` shows a user
//! without the monitoring tag.

use serde_json::json;
use warren::proto::method::{Method, QueueBind, QueueDelete, QueuePurge};
use warren::proto::props::BasicProperties;
use warren::proto::table::FieldTable;

use crate::client::{Amqp, Closed, table, text};
use crate::harness::{Attack, Ctx, Outcome, ctl, ctl_ok};
use crate::http;

const CLASS: &str = "authorization";
const USER: &str = "hostile-limited";
const PASS: &str = "limited-pw";

fn limited_user(ctx: &Ctx, write: &str, read: &str) -> Result<(), String> {
    let _ = ctl(ctx, &["add_user", USER, PASS]);
    ctl_ok(ctx, &["set_user_tags", USER, "management"])?;
    ctl_ok(
        ctx,
        &["set_permissions", "-p", "/", USER, ".*", write, read],
    )?;
    Ok(())
}

fn refusal(what: &str, got: Result<(), Closed>, resource: &str) -> Result<(), String> {
    let want =
        format!("ACCESS_REFUSED - access to {resource} in vhost '/' refused for user '{USER}'");
    match got {
        Err(Closed::Channel(403, text)) if text == want => Ok(()),
        Err(e) => Err(format!("{what}: {e}; RabbitMQ: 403 {want}")),
        Ok(()) => Err(format!("{what} was accepted; RabbitMQ: 403 {want}")),
    }
}

fn as_user(ctx: &Ctx) -> Result<Amqp, String> {
    let mut c = Amqp::login(ctx.port, USER, PASS, "/")?;
    c.open_channel(1)?;
    Ok(c)
}

/// Write permission only on "allowed-*": naming "forbidden-x" as dead-letter or alternate
/// exchange is refused as RabbitMQ refuses it, and nothing is declared.
fn without_write(ctx: &Ctx) -> Outcome {
    let mut guest = Amqp::open(ctx.port)?;
    guest.open_channel(1)?;
    guest.exchange(1, "forbidden-x", "fanout", FieldTable::default())?;
    limited_user(ctx, "^allowed-.*", ".*")?;
    let dlx = table([("x-dead-letter-exchange", text("forbidden-x"))]);
    let mut c = as_user(ctx)?;
    refusal(
        "queue with x-dead-letter-exchange forbidden-x",
        c.queue(1, "allowed-dlx-q", false, dlx.clone()),
        "exchange 'forbidden-x'",
    )?;
    let mut c = as_user(ctx)?;
    let ae = table([("alternate-exchange", text("forbidden-x"))]);
    refusal(
        "exchange with alternate-exchange forbidden-x",
        c.exchange(1, "allowed-ae-x", "direct", ae),
        "exchange 'forbidden-x'",
    )?;
    // The same user may name an exchange it can write to.
    let mut c = as_user(ctx)?;
    c.queue(
        1,
        "allowed-ok-q",
        false,
        table([("x-dead-letter-exchange", text("allowed-x"))]),
    )
    .map_err(|e| format!("a permitted dead-letter exchange was refused: {e}"))?;
    c.delete_queue(1, "allowed-ok-q")?;
    c.close();
    if http::queue_exists(ctx, "allowed-dlx-q")? || http::exchange_exists(ctx, "allowed-ae-x")? {
        return Err("a refused declaration left its queue or exchange behind".into());
    }
    // Over HTTP, as that user.
    let auth = Some((USER, PASS));
    let r = http::request(
        ctx,
        "PUT",
        "/api/queues/%2F/allowed-http-q",
        auth,
        &[("content-type", "application/json")],
        Some(json!({"arguments": {"x-dead-letter-exchange": "forbidden-x"}}).to_string()),
    )?;
    if r.ok() || http::queue_exists(ctx, "allowed-http-q")? {
        return Err(format!(
            "HTTP declare with a forbidden dead-letter exchange: {}",
            r.summary()
        ));
    }
    let r2 = http::request(
        ctx,
        "PUT",
        "/api/exchanges/%2F/allowed-http-x",
        auth,
        &[("content-type", "application/json")],
        Some(
            json!({"type": "direct", "arguments": {"alternate-exchange": "forbidden-x"}})
                .to_string(),
        ),
    )?;
    if r2.ok() || http::exchange_exists(ctx, "allowed-http-x")? {
        return Err(format!(
            "HTTP declare with a forbidden alternate exchange: {}",
            r2.summary()
        ));
    }
    guest.delete_exchange(1, "forbidden-x")?;
    guest.close();
    Ok(format!(
        "AMQP 403 with RabbitMQ's text; HTTP {} and {}",
        r.status, r2.status
    ))
}

/// Read permission only on "allowed-*": declaring "notread-q" with a dead-letter exchange
/// (or "notread-e" with an alternate exchange) needs read on the declared object.
fn without_read(ctx: &Ctx) -> Outcome {
    limited_user(ctx, ".*", "^allowed-.*")?;
    let mut c = as_user(ctx)?;
    let dlx = table([("x-dead-letter-exchange", text("amq.fanout"))]);
    refusal(
        "queue it may not read, with a dead-letter exchange",
        c.queue(1, "notread-q", false, dlx),
        "queue 'notread-q'",
    )?;
    let mut c = as_user(ctx)?;
    let ae = table([("alternate-exchange", text("amq.fanout"))]);
    refusal(
        "exchange it may not read, with an alternate exchange",
        c.exchange(1, "notread-e", "direct", ae),
        "exchange 'notread-e'",
    )?;
    c.close();
    Ok("403 with RabbitMQ's texts".into())
}

/// Another connection's exclusive queue: HTTP delete, purge, bind and get are refused,
/// and the owner's queue is untouched.
fn exclusive_over_http(ctx: &Ctx) -> Outcome {
    let mut owner = crate::deadletter::confirmed(ctx)?;
    owner.declare(
        1,
        warren::proto::method::QueueDeclare {
            queue: "excl-owned".into(),
            exclusive: true,
            ..Default::default()
        },
    )?;
    for _ in 0..3 {
        owner.publish(1, "", "excl-owned", &BasicProperties::default(), b"mine");
    }
    owner.wait_confirms(1)?;
    let mut statuses = Vec::new();
    let attempts: [(&str, &str, Option<String>); 4] = [
        ("DELETE", "/api/queues/%2F/excl-owned/contents", None),
        (
            "POST",
            "/api/bindings/%2F/e/amq.direct/q/excl-owned",
            Some(json!({"routing_key": "stolen"}).to_string()),
        ),
        (
            "POST",
            "/api/queues/%2F/excl-owned/get",
            Some(
                json!({"count": 3, "ackmode": "ack_requeue_false", "encoding": "auto"}).to_string(),
            ),
        ),
        ("DELETE", "/api/queues/%2F/excl-owned", None),
    ];
    for (method, path, body) in attempts {
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        let r = http::request(ctx, method, path, http::GUEST, headers, body)?;
        if r.ok() {
            return Err(format!(
                "{method} {path} on another connection's exclusive queue: {}",
                r.summary()
            ));
        }
        statuses.push(r.status);
    }
    let n = owner
        .count(1, "excl-owned")
        .map_err(|e| format!("the owner's queue: {e}"))?;
    if n != 3 {
        return Err(format!(
            "the owner's exclusive queue holds {n} of its 3 messages"
        ));
    }
    let bindings = http::get(ctx, "/api/queues/%2F/excl-owned/bindings")?;
    if bindings.body.contains("stolen") {
        return Err("a binding was added to another connection's exclusive queue".into());
    }
    owner.close();
    Ok(format!("HTTP {statuses:?}"))
}

/// The same over AMQP from another connection: 405 RESOURCE_LOCKED.
fn exclusive_over_amqp(ctx: &Ctx) -> Outcome {
    let mut owner = Amqp::open(ctx.port)?;
    owner.open_channel(1)?;
    owner.declare(
        1,
        warren::proto::method::QueueDeclare {
            queue: "excl-owned-amqp".into(),
            exclusive: true,
            ..Default::default()
        },
    )?;
    let want = "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl-owned-amqp' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    let attempts = [
        Method::QueueDelete(QueueDelete {
            queue: "excl-owned-amqp".into(),
            ..Default::default()
        }),
        Method::QueuePurge(QueuePurge {
            queue: "excl-owned-amqp".into(),
            ..Default::default()
        }),
        Method::QueueBind(QueueBind {
            queue: "excl-owned-amqp".into(),
            exchange: "amq.direct".into(),
            routing_key: "stolen".into(),
            ..Default::default()
        }),
    ];
    for m in attempts {
        let name = m.name();
        let mut other = Amqp::open(ctx.port)?;
        other.open_channel(1)?;
        match other.call(1, m) {
            Err(Closed::Channel(405, text)) if text == want => {}
            Err(e) => return Err(format!("{name}: {e}; RabbitMQ: 405 {want}")),
            Ok(e) => {
                return Err(format!(
                    "{name} on another connection's exclusive queue: {}",
                    e.method().name()
                ));
            }
        }
    }
    owner.count(1, "excl-owned-amqp")?;
    owner.close();
    Ok("405 with RabbitMQ's text".into())
}

/// A user tagged policymaker and monitoring, with permissions in vhost "pm-own" only: the
/// monitoring tag lets it see "/", but setting or clearing a policy there is refused (401,
/// as RabbitMQ's `is_authorized_policies` refuses it), and "/"'s queue keeps its messages.
/// In its own vhost the same policy is set.
fn policy_outside_own_vhost(ctx: &Ctx) -> Outcome {
    let user = "hostile-policymaker";
    let _ = ctl(ctx, &["add_user", user, PASS]);
    ctl_ok(ctx, &["set_user_tags", user, "policymaker", "monitoring"])?;
    ctl_ok(ctx, &["add_vhost", "pm-own"])?;
    ctl_ok(
        ctx,
        &["set_permissions", "-p", "pm-own", user, ".*", ".*", ".*"],
    )?;
    let mut guest = crate::deadletter::confirmed(ctx)?;
    guest.queue(1, "pm-victim", false, FieldTable::default())?;
    for _ in 0..5 {
        guest.publish(1, "", "pm-victim", &BasicProperties::default(), b"keep");
    }
    guest.wait_confirms(1)?;
    let policy =
        json!({"pattern": "^pm-victim$", "definition": {"max-length": 0}, "priority": 999})
            .to_string();
    let json_body: &[(&str, &str)] = &[("content-type", "application/json")];
    let put = |vhost: &str| {
        http::request(
            ctx,
            "PUT",
            &format!("/api/policies/{vhost}/pm-evil"),
            Some((user, PASS)),
            json_body,
            Some(policy.clone()),
        )
    };
    let r = put("%2F")?;
    if r.status != 401 {
        return Err(format!(
            "PUT a policy in '/' without permissions there: {}; RabbitMQ: 401",
            r.summary()
        ));
    }
    let d = http::request(
        ctx,
        "DELETE",
        "/api/policies/%2F/pm-evil",
        Some((user, PASS)),
        &[],
        None,
    )?;
    if d.status != 401 {
        return Err(format!(
            "DELETE a policy in '/': {}; RabbitMQ: 401",
            d.summary()
        ));
    }
    let n = guest
        .count(1, "pm-victim")
        .map_err(|e| format!("the victim queue: {e}"))?;
    if n != 5 {
        return Err(format!(
            "the victim queue in '/' holds {n} of its 5 messages"
        ));
    }
    let own = put("pm-own")?;
    if own.status != 201 {
        return Err(format!("PUT a policy in its own vhost: {}", own.summary()));
    }
    guest.close();
    Ok(format!(
        "'/' {} and {}, own vhost {}",
        r.status, d.status, own.status
    ))
}

/// A management user with permissions in an empty vhost only: `/api/overview` totals its
/// own vhosts (no queue, though "/" holds the ledger's) and shows nothing of the node (no
/// listeners, node or contexts), as RabbitMQ shows users without the monitoring tag. A
/// monitoring user sees the node.
fn overview_of_own_vhosts(ctx: &Ctx) -> Outcome {
    let (user, monitor) = ("hostile-lonely", "hostile-monitor");
    let _ = ctl(ctx, &["add_user", user, PASS]);
    ctl_ok(ctx, &["set_user_tags", user, "management"])?;
    ctl_ok(ctx, &["add_vhost", "lonely-v"])?;
    ctl_ok(
        ctx,
        &["set_permissions", "-p", "lonely-v", user, ".*", ".*", ".*"],
    )?;
    let _ = ctl(ctx, &["add_user", monitor, PASS]);
    ctl_ok(ctx, &["set_user_tags", monitor, "monitoring"])?;
    let get = |who: &str| {
        let r = http::request(ctx, "GET", "/api/overview", Some((who, PASS)), &[], None)?;
        if r.status != 200 {
            return Err(format!("GET /api/overview as {who}: {}", r.summary()));
        }
        Ok(r.json())
    };
    let own = get(user)?;
    let queues = own["object_totals"]["queues"].as_u64();
    if queues != Some(0) {
        return Err(format!("a user of an empty vhost sees {queues:?} queues"));
    }
    for key in ["listeners", "node", "contexts"] {
        if own.get(key).is_some() {
            return Err(format!("a management user sees '{key}': {}", own[key]));
        }
    }
    let all = get(monitor)?;
    if all["object_totals"]["queues"].as_u64().unwrap_or(0) == 0 || all.get("listeners").is_none() {
        return Err(format!("a monitoring user does not see the node: {all}"));
    }
    Ok(format!(
        "own vhosts: {} queues, {} exchanges; monitoring: {} queues",
        own["object_totals"]["queues"],
        own["object_totals"]["exchanges"],
        all["object_totals"]["queues"]
    ))
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "DLX / alternate exchange without write on it",
            32,
            30,
            without_write,
        ),
        Attack::new(
            CLASS,
            "DLX / alternate exchange without read on the declared",
            32,
            30,
            without_read,
        ),
        Attack::new(
            CLASS,
            "another connection's exclusive queue over HTTP",
            32,
            30,
            exclusive_over_http,
        ),
        Attack::new(
            CLASS,
            "another connection's exclusive queue over AMQP",
            32,
            30,
            exclusive_over_amqp,
        ),
        Attack::new(
            CLASS,
            "policymaker with monitoring: a policy in a vhost it has no permissions in",
            32,
            30,
            policy_outside_own_vhost,
        ),
        Attack::new(
            CLASS,
            "management user: /api/overview of its own vhosts only",
            32,
            30,
            overview_of_own_vhosts,
        ),
    ]
}
