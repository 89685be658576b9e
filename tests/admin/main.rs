//! End-to-end tests of administration against a real `warren serve`: the seed's
//! rabbitmqctl workflow through `warren ctl`, the management HTTP API with real HTTP
//! requests (including denials by tag), stop_app/reset, definitions, and passwords at rest;
//! tenant limits (`limits`) and the HTTP API's protections (`http_guard`).

#[path = "../common/mod.rs"]
mod common;
mod http_guard;
mod limits;
mod policies;
mod registry;
mod sessions;
mod topic;

use std::time::Duration;

use base64::Engine;
use common::{RawClient, Server};
use serde_json::{Value, json};
use warren::proto::constants::{ACCESS_REFUSED, CONNECTION_FORCED};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

/// An HTTP answer: status, JSON body (null when empty) and the WWW-Authenticate header.
pub(crate) struct Http {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) challenge: Option<String>,
}

pub(crate) fn http(
    method: &str,
    url: &str,
    auth: Option<(&str, &str)>,
    body: Option<Value>,
) -> Http {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let auth = auth.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let response = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.content_type("application/json")
                .send(body.map(|b| b.to_string()).unwrap_or_default())
        }
    }
    .expect("HTTP request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.into_body().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    });
    Http {
        status,
        body,
        challenge,
    }
}

pub(crate) const GUEST: Option<(&str, &str)> = Some(("guest", "guest"));

/// An HTTP request with every header as given (no content type unless one is given);
/// `body` is sent as is.
pub(crate) fn raw_http(
    method: &str,
    url: &str,
    auth: Option<(&str, &str)>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Http {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Some((u, p)) = auth {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        all.push(("authorization".into(), format!("Basic {encoded}")));
    }
    let response = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            for (k, v) in &all {
                r = r.header(k, v);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            for (k, v) in &all {
                r = r.header(k, v);
            }
            match body {
                Some(b) => r.send(b),
                None => r.send_empty(),
            }
        }
    }
    .expect("HTTP request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = response.into_body().read_to_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
        Value::Null
    } else {
        Value::String(text)
    });
    Http {
        status,
        body,
        challenge,
    }
}

/// Connects as `user` to `vhost`; returns the client, or the connection.close that refused
/// the login or the vhost.
pub(crate) fn open_on(
    port: u16,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<RawClient, ConnectionClose> {
    let mut c = RawClient::connect(port);
    c.send_raw(&warren::proto::constants::PROTOCOL_HEADER);
    let (_, start) = c.expect_method();
    assert!(matches!(start, Method::ConnectionStart(_)));
    c.start_ok(user, pass);
    let tune = match c.expect_method() {
        (_, Method::ConnectionTune(tune)) => tune,
        (_, Method::ConnectionClose(close)) => return Err(close),
        (_, other) => panic!("unexpected {other:?}"),
    };
    c.send_method(
        0,
        Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: vhost.into(),
            ..Default::default()
        }),
    );
    match c.expect_method() {
        (_, Method::ConnectionOpenOk(_)) => Ok(c),
        (_, Method::ConnectionClose(close)) => Err(close),
        (_, other) => panic!("unexpected {other:?}"),
    }
}

/// Connects as `user`; returns the client, or the connection.close that refused it.
pub(crate) fn try_login(port: u16, user: &str, pass: &str) -> Result<RawClient, ConnectionClose> {
    let mut c = RawClient::connect(port);
    c.send_raw(&warren::proto::constants::PROTOCOL_HEADER);
    let (_, start) = c.expect_method();
    assert!(matches!(start, Method::ConnectionStart(_)));
    c.start_ok(user, pass);
    match c.expect_method() {
        (_, Method::ConnectionTune(tune)) => {
            c.send_method(
                0,
                Method::ConnectionTuneOk(ConnectionTuneOk {
                    channel_max: tune.channel_max,
                    frame_max: tune.frame_max,
                    heartbeat: 0,
                }),
            );
            c.send_method(
                0,
                Method::ConnectionOpen(ConnectionOpen {
                    virtual_host: "/".into(),
                    ..Default::default()
                }),
            );
            let (_, ok) = c.expect_method();
            assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
            Ok(c)
        }
        (_, Method::ConnectionClose(close)) => Err(close),
        (_, other) => panic!("unexpected {other:?}"),
    }
}

pub(crate) fn declare(c: &mut RawClient, channel: u16, queue: &str) {
    c.send_method(
        channel,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            durable: true,
            ..Default::default()
        }),
    );
    let (_, m) = c.expect_method();
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
}

/// The seed's workflow, word for word: add_user, set_user_tags, set_permissions, then an
/// AMQP client uses the new user; a user without write permission is refused with 403;
/// list_queues counts the messages; change_password and delete_user take effect.
#[test]
fn seed_workflow_through_ctl() {
    let server = Server::start();
    server.ctl_ok(&["add_user", "xjk", "123"]);
    server.ctl_ok(&["set_user_tags", "xjk", "administrator"]);
    server.ctl_ok(&["set_permissions", "-p", "/", "xjk", ".*", ".*", ".*"]);
    let users = server.ctl_ok(&["list_users"]);
    assert!(users.contains("xjk\t[administrator]"), "{users}");
    let (code, _, err) = server.ctl(&["add_user", "xjk", "again"]);
    assert_ne!(code, 0);
    assert!(err.contains("User \"xjk\" already exists"), "{err}");

    let mut c = try_login(server.port, "xjk", "123").expect("xjk logs in");
    c.open_channel(1);
    declare(&mut c, 1, "seed-q");
    for i in 0..3 {
        c.publish(
            1,
            "",
            "seed-q",
            BasicProperties::default(),
            format!("m{i}").as_bytes(),
        );
    }
    c.send_method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "seed-q".into(),
            consumer_tag: "t".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let (_, ok) = c.expect_method();
    assert!(matches!(ok, Method::BasicConsumeOk(_)), "{ok:?}");
    let (_, deliver, _, body) = c.expect_content();
    assert!(matches!(deliver, Method::BasicDeliver(_)));
    assert_eq!(body, b"m0");
    let (_, _, _, _) = c.expect_content();
    let (_, _, _, _) = c.expect_content();
    c.send_method(
        1,
        Method::BasicCancel(BasicCancel {
            consumer_tag: "t".into(),
            nowait: false,
        }),
    );
    let (_, ok) = c.expect_method();
    assert!(matches!(ok, Method::BasicCancelOk(_)), "{ok:?}");
    for i in 0..2 {
        c.publish(
            1,
            "",
            "seed-q",
            BasicProperties::default(),
            format!("n{i}").as_bytes(),
        );
    }
    // A round trip makes sure the publishes were handled.
    declare(&mut c, 1, "seed-q");
    let queues = server.ctl_ok(&["list_queues"]);
    assert!(queues.contains("name\tmessages\n"), "{queues}");
    assert!(queues.contains("seed-q\t2\n"), "{queues}");
    let json_out = server.ctl_ok(&["list_queues", "name", "messages", "--formatter", "json"]);
    let parsed: Value = serde_json::from_str(&json_out).expect("JSON output");
    assert!(
        parsed
            .as_array()
            .unwrap()
            .contains(&json!({"name": "seed-q", "messages": 2}))
    );

    // A user who may read but not write: publishing is refused with RabbitMQ's 403.
    server.ctl_ok(&["add_user", "w", "pw"]);
    server.ctl_ok(&["set_permissions", "-p", "/", "w", ".*", "", ".*"]);
    let mut w = try_login(server.port, "w", "pw").expect("w logs in");
    w.open_channel(1);
    w.publish(1, "", "seed-q", BasicProperties::default(), b"nope");
    let close = w.expect_channel_close(1);
    assert_eq!(close.reply_code, ACCESS_REFUSED);
    assert_eq!(
        close.reply_text,
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'w'"
    );

    // change_password: the old password stops working at the next login.
    server.ctl_ok(&["change_password", "xjk", "456"]);
    let refused = try_login(server.port, "xjk", "123")
        .err()
        .expect("old password refused");
    assert_eq!(refused.reply_code, ACCESS_REFUSED);
    assert!(try_login(server.port, "xjk", "456").is_ok());
    server.ctl_ok(&["authenticate_user", "xjk", "456"]);
    let (code, _, _) = server.ctl(&["authenticate_user", "xjk", "123"]);
    assert_ne!(code, 0);

    // delete_user: its open connection is closed with 320, and it can no longer log in.
    server.ctl_ok(&["delete_user", "xjk"]);
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, CONNECTION_FORCED);
    assert_eq!(
        close.reply_text,
        "CONNECTION_FORCED - user 'xjk' is deleted"
    );
    assert!(try_login(server.port, "xjk", "456").is_err());
    let (code, _, err) = server.ctl(&["delete_user", "xjk"]);
    assert_eq!(code, 67, "{err}");
}

#[test]
fn ctl_lists_permissions_vhosts_bindings_and_connections() {
    let server = Server::start();
    server.ctl_ok(&["add_vhost", "v1"]);
    server.ctl_ok(&["add_vhost", "v1"]);
    server.ctl_ok(&["add_user", "u", "p"]);
    server.ctl_ok(&["set_permissions", "-p", "v1", "u", "^u-.*", ".*", ".*"]);
    let perms = server.ctl_ok(&["list_permissions", "-p", "v1"]);
    assert!(
        perms.contains("user\tconfigure\twrite\tread\nu\t^u-.*\t.*\t.*"),
        "{perms}"
    );
    let mine = server.ctl_ok(&["-q", "list_user_permissions", "u"]);
    assert_eq!(mine, "vhost\tconfigure\twrite\tread\nv1\t^u-.*\t.*\t.*\n");
    let vhosts = server.ctl_ok(&["-s", "list_vhosts"]);
    assert_eq!(vhosts, "/\nv1\n");
    let _guest = RawClient::open(server.port);
    let conns = server.ctl_ok(&["-q", "list_connections", "user", "vhost", "state"]);
    assert_eq!(conns, "user\tvhost\tstate\nguest\t/\trunning\n");
    let channels = server.ctl_ok(&["-q", "list_channels", "user", "number"]);
    assert_eq!(channels, "user\tnumber\n");
    let exchanges = server.ctl_ok(&["-q", "list_exchanges", "-p", "v1"]);
    assert!(exchanges.contains("amq.topic\ttopic\n"), "{exchanges}");
    server.ctl_ok(&["clear_permissions", "-p", "v1", "u"]);
    assert_eq!(
        server.ctl_ok(&["-q", "list_user_permissions", "u"]),
        "vhost\tconfigure\twrite\tread\n"
    );
    let (code, _, err) = server.ctl(&["list_queues", "bogus_column"]);
    assert_eq!(code, 64, "{err}");

    // Deleting a vhost closes its connections with 320.
    server.ctl_ok(&["set_permissions", "-p", "v1", "guest", ".*", ".*", ".*"]);
    let mut c = RawClient::connect(server.port);
    c.handshake("guest", "guest", "v1", 0);
    server.ctl_ok(&["delete_vhost", "v1"]);
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, CONNECTION_FORCED);
    assert_eq!(
        close.reply_text,
        "CONNECTION_FORCED - vhost 'v1' is deleted"
    );
}

#[test]
fn http_api_authenticates_and_checks_tags() {
    let server = Server::start();
    let url = |p: &str| format!("{}{p}", server.http_url());

    // No WWW-Authenticate challenge: a browser would cache the credentials it prompted for.
    let anon = http("GET", &url("/api/overview"), None, None);
    assert_eq!(anon.status, 401);
    assert_eq!(anon.challenge, None);
    assert_eq!(anon.body["error"], "not_authorized");
    let wrong = http("GET", &url("/api/overview"), Some(("guest", "nope")), None);
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.challenge, None);
    let me = http("GET", &url("/api/whoami"), GUEST, None);
    assert_eq!(me.status, 200);
    assert_eq!(me.body, json!({"name": "guest", "tags": ["administrator"]}));

    // Users and their tags, through the API.
    for (name, tags) in [("mon", "monitoring"), ("plain", ""), ("mgmt", "management")] {
        let r = http(
            "PUT",
            &url(&format!("/api/users/{name}")),
            GUEST,
            Some(json!({"password": "pw", "tags": tags})),
        );
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let none = http("GET", &url("/api/overview"), Some(("plain", "pw")), None);
    assert_eq!(none.status, 401);
    assert_eq!(none.body["reason"], "Not management user");
    let mon_users = http("GET", &url("/api/users"), Some(("mon", "pw")), None);
    assert_eq!(mon_users.status, 401);
    assert_eq!(mon_users.body["reason"], "Not administrator user");
    let mon_nodes = http("GET", &url("/api/nodes"), Some(("mon", "pw")), None);
    assert_eq!(mon_nodes.status, 200);
    let mgmt_nodes = http("GET", &url("/api/nodes"), Some(("mgmt", "pw")), None);
    assert_eq!(mgmt_nodes.status, 401);
    // A management user sees only the vhosts it has permissions in.
    assert_eq!(
        http("PUT", &url("/api/vhosts/other"), GUEST, None).status,
        201
    );
    let r = http(
        "PUT",
        &url("/api/permissions/other/mgmt"),
        GUEST,
        Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert_eq!(r.status, 201);
    let seen = http("GET", &url("/api/vhosts"), Some(("mgmt", "pw")), None);
    let names: Vec<&str> = seen
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(names, ["other"]);
    let all = http("GET", &url("/api/vhosts"), Some(("mon", "pw")), None);
    assert_eq!(all.body.as_array().unwrap().len(), 2);
    let denied = http("GET", &url("/api/queues/%2F"), Some(("mgmt", "pw")), None);
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.body["reason"],
        "User not authorised to access virtual host"
    );
    // A vhost that does not exist is not found, for any user, as in RabbitMQ 3.10.
    let missing = http("GET", &url("/api/queues/nope"), Some(("mgmt", "pw")), None);
    assert_eq!(missing.status, 404);
    // One vhost's record is for administrators only, even the user's own vhost.
    for who in [("mgmt", "pw"), ("mon", "pw")] {
        let one = http("GET", &url("/api/vhosts/other"), Some(who), None);
        assert_eq!(one.status, 401, "{who:?}");
        assert_eq!(one.body["reason"], "Not administrator user");
    }
    assert_eq!(
        http("GET", &url("/api/vhosts/other"), GUEST, None).status,
        200
    );
    // A request line past RabbitMQ's 8,000 bytes is refused before it is looked at.
    let columns = "name,".repeat(2_000);
    let long = http(
        "GET",
        &url(&format!("/api/queues?columns={columns}")),
        GUEST,
        None,
    );
    assert_eq!(long.status, 414);

    // Queues, publish and get, with RabbitMQ's shapes.
    let q = url("/api/queues/%2F/http-q");
    assert_eq!(
        http(
            "PUT",
            &q,
            GUEST,
            Some(json!({"durable": true, "arguments": {"x-max-length": 10}}))
        )
        .status,
        201
    );
    assert_eq!(
        http(
            "PUT",
            &q,
            GUEST,
            Some(json!({"durable": true, "arguments": {"x-max-length": 10}}))
        )
        .status,
        204
    );
    let routed = http(
        "POST",
        &url("/api/exchanges/%2F/amq.default/publish"),
        GUEST,
        Some(
            json!({"routing_key": "http-q", "payload": "hi", "payload_encoding": "string",
                    "properties": {"delivery_mode": 2, "headers": {"k": "v"}}}),
        ),
    );
    assert_eq!(routed.body, json!({"routed": true}));
    let info = http("GET", &q, GUEST, None);
    assert_eq!(info.status, 200);
    assert_eq!(info.body["messages"], 1);
    assert_eq!(info.body["arguments"], json!({"x-max-length": 10}));
    assert_eq!(info.body["message_stats"]["publish"], 1);
    assert!(info.body["message_stats"]["publish_details"]["rate"].is_number());
    let got = http(
        "POST",
        &url("/api/queues/%2F/http-q/get"),
        GUEST,
        Some(json!({"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"})),
    );
    assert_eq!(got.status, 200);
    assert_eq!(got.body[0]["payload"], "hi");
    assert_eq!(got.body[0]["properties"]["headers"], json!({"k": "v"}));
    assert_eq!(got.body[0]["message_count"], 0);
    let overview = http("GET", &url("/api/overview"), GUEST, None);
    assert_eq!(overview.body["queue_totals"]["messages"], 1);
    assert_eq!(overview.body["object_totals"]["queues"], 1);

    // Bindings by properties key.
    let b = url("/api/bindings/%2F/e/amq.topic/q/http-q");
    assert_eq!(
        http("POST", &b, GUEST, Some(json!({"routing_key": "a.#"}))).status,
        201
    );
    let listed = http("GET", &b, GUEST, None);
    assert_eq!(listed.body[0]["properties_key"], "a.#");
    assert_eq!(
        http("DELETE", &format!("{b}/a.%23"), GUEST, None).status,
        204
    );
    assert_eq!(http("GET", &b, GUEST, None).body, json!([]));

    // Prometheus text.
    let metrics = http("GET", &url("/metrics"), None, None);
    let text = metrics.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("rabbitmq_queue_messages_ready{vhost=\"/\",queue=\"http-q\"} 1"),
        "{text}"
    );
    assert!(text.contains("rabbitmq_alarms_memory_used_watermark 0"));

    assert_eq!(
        http("GET", &url("/api/health/checks/alarms"), GUEST, None).body,
        json!({"status": "ok"})
    );
    assert_eq!(
        http("GET", &url("/api/aliveness-test/%2F"), GUEST, None).body,
        json!({"status": "ok"})
    );
    assert_eq!(
        http(
            "DELETE",
            &url("/api/queues/%2F/http-q/contents"),
            GUEST,
            None
        )
        .status,
        204
    );
    assert_eq!(http("DELETE", &q, GUEST, None).status, 204);
    assert_eq!(http("GET", &q, GUEST, None).status, 404);
    assert_eq!(
        http("DELETE", &url("/api/users/mon"), GUEST, None).status,
        204
    );
    assert_eq!(http("GET", &url("/api/users/mon"), GUEST, None).status, 404);
}

#[test]
fn stop_app_start_app_and_reset() {
    let server = Server::start();
    server.ctl_ok(&["add_user", "u", "p"]);
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    declare(&mut c, 1, "durable-q");
    c.publish(
        1,
        "",
        "durable-q",
        BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
        b"x",
    );
    declare(&mut c, 1, "durable-q");
    let (code, _, err) = server.ctl(&["reset"]);
    assert_ne!(code, 0, "reset needs the app stopped");
    assert!(err.contains("stop_app"), "{err}");
    server.ctl_ok(&["stop_app"]);
    let close = c.expect_connection_close();
    assert_eq!(close.reply_code, CONNECTION_FORCED);
    let mut refused = RawClient::connect(server.port);
    assert!(refused.closed_by_server(), "no AMQP while stopped");
    // The HTTP side stays up.
    server.ctl_ok(&["list_users"]);
    server.ctl_ok(&["reset"]);
    server.ctl_ok(&["start_app"]);
    assert_eq!(
        server.ctl_ok(&["-q", "list_users"]),
        "user\ttags\nguest\t[administrator]\n"
    );
    assert_eq!(server.ctl_ok(&["-q", "list_queues"]), "name\tmessages\n");
    let _ = RawClient::open(server.port);

    // The reset is durable: a restart finds the first-start state.
    let dir = server.kill();
    let again = Server::start_in(dir, &[]);
    assert_eq!(
        again.ctl_ok(&["-q", "list_users"]),
        "user\ttags\nguest\t[administrator]\n"
    );
    assert_eq!(again.ctl_ok(&["-q", "list_queues"]), "name\tmessages\n");
}

#[test]
fn definitions_export_and_import() {
    let server = Server::start();
    server.ctl_ok(&["add_vhost", "v"]);
    server.ctl_ok(&["add_user", "u", "secret"]);
    server.ctl_ok(&["set_user_tags", "u", "monitoring"]);
    server.ctl_ok(&["set_permissions", "-p", "v", "u", ".*", ".*", ".*"]);
    let url = format!("{}/api/exchanges/v/x", server.http_url());
    assert_eq!(
        http("PUT", &url, GUEST, Some(json!({"type": "fanout"}))).status,
        401,
        "guest has no permissions in v"
    );
    server.ctl_ok(&["set_permissions", "-p", "v", "guest", ".*", ".*", ".*"]);
    assert_eq!(
        http("PUT", &url, GUEST, Some(json!({"type": "fanout"}))).status,
        201
    );
    assert_eq!(
        http(
            "PUT",
            &format!("{}/api/queues/v/q", server.http_url()),
            GUEST,
            None
        )
        .status,
        201
    );
    let b = format!("{}/api/bindings/v/e/x/q/q", server.http_url());
    assert_eq!(http("POST", &b, GUEST, Some(json!({}))).status, 201);
    let file = server.data_dir.path().join("defs.json");
    server.ctl_ok(&["export_definitions", file.to_str().unwrap()]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let u = doc["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "u")
        .unwrap();
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    assert_eq!(u["tags"], json!(["monitoring"]));
    assert_ne!(u["password_hash"], "secret");

    let other = Server::start();
    other.ctl_ok(&["import_definitions", file.to_str().unwrap()]);
    assert_eq!(
        other.ctl_ok(&["-q", "list_queues", "-p", "v"]),
        "name\tmessages\nq\t0\n"
    );
    let bindings = other.ctl_ok(&[
        "-q",
        "list_bindings",
        "-p",
        "v",
        "source_name",
        "destination_name",
    ]);
    assert_eq!(bindings, "source_name\tdestination_name\n\tq\nx\tq\n");
    other.ctl_ok(&["authenticate_user", "u", "secret"]);
}

/// Passwords never reach the disk in plain text: neither in the store's files nor in the
/// records read back from it.
#[test]
fn passwords_are_stored_hashed() {
    let secret = "Pl41n-T3xt-S3cret-Passw0rd";
    let server = Server::start();
    server.ctl_ok(&["add_user", "hashed", secret]);
    server.ctl_ok(&["change_password", "guest", secret]);
    let dir = server.kill();
    let mut files = vec![dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            scanned += bytes.len();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "plain-text password in {}",
                p.display()
            );
        }
    }
    assert!(scanned > 0);
    use warren::store::Store;
    let mut store = warren::store::disk::FjallStore::open(dir.path(), Default::default()).unwrap();
    let recovered = store.recover(warren::store::HeadLimit::entries(0)).unwrap();
    let user = recovered
        .users
        .iter()
        .find(|u| u.name == "hashed")
        .expect("user stored");
    assert_ne!(user.password_hash, secret);
    assert!(warren::broker::check_password(&user.password_hash, secret));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&user.password_hash)
        .unwrap();
    assert_eq!(raw.len(), 4 + 32, "salt and SHA-256 digest");
}
