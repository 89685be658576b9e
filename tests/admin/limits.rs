//! Tenant limits end to end: set with `warren ctl` (rabbitmqctl's words and output) and
//! the HTTP API (RabbitMQ's JSON), enforced over AMQP with RabbitMQ's close codes and
//! texts, durable across a restart, and carried by definitions.

use serde_json::{Value, json};
use warren::proto::constants::{NOT_ALLOWED, PRECONDITION_FAILED};
use warren::proto::method::*;

use crate::common::{RawClient, Server};
use crate::{GUEST, http, open_on};

/// Declares a queue on channel 1; returns the channel.close if it was refused.
fn declare_on(c: &mut RawClient, queue: &str) -> Option<ChannelClose> {
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            ..Default::default()
        }),
    );
    match c.expect_method() {
        (_, Method::QueueDeclareOk(_)) => None,
        (1, Method::ChannelClose(close)) => {
            c.send_method(1, Method::ChannelCloseOk(ChannelCloseOk {}));
            Some(close)
        }
        (_, other) => panic!("unexpected {other:?}"),
    }
}

/// Opens a channel; returns the connection.close if the broker refused it (which must
/// come instead of channel.open-ok, not after it).
fn channel_on(c: &mut RawClient, channel: u16) -> Option<ConnectionClose> {
    c.send_method(channel, Method::ChannelOpen(ChannelOpen::default()));
    match c.expect_method() {
        (ch, Method::ChannelOpenOk(_)) if ch == channel => None,
        (0, Method::ConnectionClose(close)) => Some(close),
        (_, other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn limits_set_with_ctl_are_enforced_over_amqp_and_survive_a_restart() {
    let server = Server::start();
    server.ctl_ok(&["add_vhost", "lv"]);
    server.ctl_ok(&["set_permissions", "-p", "lv", "guest", ".*", ".*", ".*"]);
    let out = server.ctl_ok(&[
        "set_vhost_limits",
        "-p",
        "lv",
        r#"{"max-connections":1,"max-queues":1}"#,
    ]);
    assert_eq!(
        out,
        "Setting vhost limits to \"{\"max-connections\":1,\"max-queues\":1}\" for vhost \"lv\" ...\n"
    );
    server.ctl_ok(&["add_user", "u", "p"]);
    server.ctl_ok(&["set_permissions", "-p", "/", "u", ".*", ".*", ".*"]);
    server.ctl_ok(&["set_user_limits", "u", r#"{"max-connections":2}"#]);
    server.ctl_ok(&["set_user_limits", "u", r#"{"max-channels":2}"#]);

    let check_listings = |server: &Server| {
        assert_eq!(
            server.ctl_ok(&["list_vhost_limits", "-p", "lv"]),
            "Listing limits for vhost \"lv\" ...\n{\"max-connections\":1,\"max-queues\":1}\n"
        );
        assert_eq!(
            server.ctl_ok(&["-q", "list_vhost_limits", "--global"]),
            "vhost\tlimits\nlv\t{\"max-connections\":1,\"max-queues\":1}\n"
        );
        // set_user_limits changes only the limits it is given.
        assert_eq!(
            server.ctl_ok(&["list_user_limits", "--user", "u"]),
            "Listing limits for user \"u\" ...\n{\"max-channels\":2,\"max-connections\":2}\n"
        );
        assert_eq!(
            server.ctl_ok(&["-q", "list_user_limits", "--global"]),
            "user\tlimits\nu\t{\"max-channels\":2,\"max-connections\":2}\n"
        );
    };
    check_listings(&server);
    assert_eq!(
        server.ctl_ok(&["-q", "list_vhost_limits"]),
        "\n",
        "/ has no limits"
    );
    assert_eq!(server.ctl_ok(&["-q", "list_user_limits"]), "{}\n");

    let check_enforced = |server: &Server| {
        // Vhost: one connection, one queue.
        let mut first = open_on(server.port, "guest", "guest", "lv").expect("first connection");
        let refused = open_on(server.port, "guest", "guest", "lv")
            .err()
            .expect("second connection refused");
        assert_eq!(refused.reply_code, NOT_ALLOWED);
        assert_eq!(
            refused.reply_text,
            "NOT_ALLOWED - access to vhost 'lv' refused for user 'guest': connection limit (1) is reached"
        );
        assert_eq!((refused.class_id, refused.method_id), (10, 40));
        first.open_channel(1);
        assert!(declare_on(&mut first, "q1").is_none(), "the first queue");
        let close = declare_on(&mut first, "q2").expect("second queue refused");
        assert_eq!(close.reply_code, PRECONDITION_FAILED);
        assert_eq!(
            close.reply_text,
            "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost 'lv' (1) is reached"
        );
        first.open_channel(1);
        assert!(
            declare_on(&mut first, "q1").is_none(),
            "an existing queue is declared again"
        );
        // User: two connections, two channels across them.
        let mut a = open_on(server.port, "u", "p", "/").expect("u's first connection");
        let mut b = open_on(server.port, "u", "p", "/").expect("u's second connection");
        let refused = open_on(server.port, "u", "p", "/")
            .err()
            .expect("u's third connection refused");
        assert_eq!(
            refused.reply_text,
            "NOT_ALLOWED - connection refused for user 'u': user connection limit (2) is reached"
        );
        assert_eq!(channel_on(&mut a, 1), None);
        assert_eq!(channel_on(&mut b, 1), None);
        let close = channel_on(&mut a, 2).expect("third channel refused");
        assert_eq!(close.reply_code, NOT_ALLOWED);
        assert_eq!(
            close.reply_text,
            "NOT_ALLOWED - number of channels opened for user 'u' has reached the maximum allowed user limit of (2)"
        );
        assert_eq!((close.class_id, close.method_id), (0, 0));
        // Other users and vhosts are not limited.
        let mut other = RawClient::open(server.port);
        other.open_channel(1);
        other.open_channel(2);
        other.open_channel(3);
    };
    check_enforced(&server);

    // Durable: a restart finds the limits and enforces them.
    let dir = server.kill();
    let server = Server::start_in(dir, &[]);
    check_listings(&server);
    check_enforced(&server);

    // Clearing.
    assert_eq!(
        server.ctl_ok(&["clear_vhost_limits", "-p", "lv"]),
        "Clearing vhost \"lv\" limits ...\n"
    );
    let (code, _, err) = server.ctl(&["clear_vhost_limits", "-p", "lv"]);
    assert_eq!(
        (code, err.as_str()),
        (69, "Error:\nParameter does not exist\n")
    );
    assert_eq!(
        server.ctl_ok(&["clear_user_limits", "u", "max-channels"]),
        "Clearing \"max-channels\" limit for user \"u\" ...\n"
    );
    assert_eq!(
        server.ctl_ok(&["-q", "list_user_limits", "--user", "u"]),
        "{\"max-connections\":2}\n"
    );
    server.ctl_ok(&["clear_user_limits", "u", "all"]);
    assert_eq!(
        server.ctl_ok(&["-q", "list_user_limits", "--global"]),
        "user\tlimits\n"
    );
    let mut c1 = open_on(server.port, "guest", "guest", "lv").expect("no limit now");
    let _c2 = open_on(server.port, "guest", "guest", "lv").expect("no limit now");
    c1.open_channel(1);
    assert!(declare_on(&mut c1, "q2").is_none());

    // Errors, as rabbitmqctl reports them.
    let (code, _, err) = server.ctl(&["set_vhost_limits", "-p", "lv", r#"{"max-foo":1}"#]);
    assert_eq!(code, 69);
    assert_eq!(
        err,
        "Error:\nValidation failed\n\nUnrecognised terms [{<<\"max-foo\">>,1}] in limits\n\n"
    );
    let (code, _, err) = server.ctl(&["set_vhost_limits", "-p", "lv", r#"{"max-queues":"x"}"#]);
    assert_eq!(code, 69);
    assert!(
        err.contains("max-queues should be a number, actually was <<\"x\">>"),
        "{err}"
    );
    let (code, _, err) = server.ctl(&["set_vhost_limits", "-p", "lv", "notjson"]);
    assert_eq!(code, 69);
    assert!(err.starts_with("Error:\nJSON decoding error"), "{err}");
    let (code, _, err) = server.ctl(&["set_vhost_limits", "-p", "nosuch", r#"{"max-queues":1}"#]);
    assert_eq!(code, 65);
    assert_eq!(err, "Virtual host 'nosuch' does not exist\n");
    let (code, _, err) = server.ctl(&["set_user_limits", "u", r#"{"max-queues":1}"#]);
    assert_eq!(code, 69);
    assert_eq!(
        err,
        "Error:\nUnrecognised terms [{<<\"max-queues\">>,1}] in user-limits\n"
    );
    let (code, _, _) = server.ctl(&["set_user_limits", "nosuch", r#"{"max-channels":1}"#]);
    assert_eq!(code, 67);
}

#[test]
fn limits_over_http_have_rabbitmqs_shapes() {
    let server = Server::start();
    let url = |p: &str| format!("{}{p}", server.http_url());
    let put = |p: &str, body: Value| http("PUT", &url(p), GUEST, Some(body));
    assert_eq!(
        put("/api/vhost-limits/%2F/max-connections", json!({"value": 5})).status,
        204
    );
    assert_eq!(
        put("/api/vhost-limits/%2F/max-queues", json!({"value": 10})).status,
        204
    );
    let all = http("GET", &url("/api/vhost-limits"), GUEST, None);
    assert_eq!(
        all.body,
        json!([{"vhost": "/", "value": {"max-connections": 5, "max-queues": 10}}])
    );
    assert_eq!(
        http("GET", &url("/api/vhost-limits/%2F"), GUEST, None).body,
        all.body
    );
    assert_eq!(
        http("GET", &url("/api/vhost-limits/nosuch"), GUEST, None).status,
        404
    );
    let bad = put("/api/vhost-limits/%2F/max-queues", json!({"value": "x"}));
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.body,
        json!({"error": "bad_request",
               "reason": "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"})
    );
    let bad = put("/api/vhost-limits/%2F/max-foo", json!({"value": 1}));
    assert_eq!(
        bad.body["reason"],
        "Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,1}] in limits\n"
    );
    let bad = put("/api/vhost-limits/%2F/max-queues", json!({"valu": 1}));
    assert_eq!(bad.body["reason"], "[{key_missing,value}]");
    let missing = put("/api/vhost-limits/nosuch/max-queues", json!({"value": 1}));
    assert_eq!(
        (missing.status, missing.body),
        (
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"})
        )
    );
    assert_eq!(
        http(
            "DELETE",
            &url("/api/vhost-limits/%2F/max-queues"),
            GUEST,
            None
        )
        .status,
        204
    );
    assert_eq!(
        http("GET", &url("/api/vhost-limits"), GUEST, None).body,
        json!([{"vhost": "/", "value": {"max-connections": 5}}])
    );

    // Users.
    server.ctl_ok(&["add_user", "u", "p"]);
    server.ctl_ok(&["add_user", "mon", "p"]);
    server.ctl_ok(&["set_user_tags", "mon", "monitoring"]);
    assert_eq!(
        put("/api/user-limits/u/max-connections", json!({"value": 7})).status,
        204
    );
    assert_eq!(
        put("/api/user-limits/u/max-channels", json!({"value": 0})).status,
        204
    );
    assert_eq!(
        http("GET", &url("/api/user-limits"), GUEST, None).body,
        json!([{"user": "u", "value": {"max-channels": 0, "max-connections": 7}}])
    );
    assert_eq!(
        http("GET", &url("/api/user-limits/mon"), GUEST, None).body,
        json!([])
    );
    assert_eq!(
        http("GET", &url("/api/user-limits/nosuch"), GUEST, None).status,
        404
    );
    let bad = put("/api/user-limits/u/max-queues", json!({"value": 7}));
    assert_eq!(
        bad.body["reason"],
        "Unrecognised terms [{<<\"max-queues\">>,7}] in user-limits"
    );
    assert_eq!(
        http("GET", &url("/api/users/u"), GUEST, None).body["limits"],
        json!({"max-channels": 0, "max-connections": 7})
    );
    // Changes need an administrator.
    let denied = http(
        "PUT",
        &url("/api/user-limits/u/max-channels"),
        Some(("mon", "p")),
        Some(json!({"value": 1})),
    );
    assert_eq!(denied.status, 401);
    assert_eq!(
        http("GET", &url("/api/user-limits"), Some(("mon", "p")), None).status,
        200
    );
    // max-channels 0: u may connect but not open a channel.
    server.ctl_ok(&["set_permissions", "-p", "/", "u", ".*", ".*", ".*"]);
    let mut c = open_on(server.port, "u", "p", "/").expect("u connects");
    c.send_method(1, Method::ChannelOpen(ChannelOpen::default()));
    let (ch, m) = c.expect_method();
    let Method::ConnectionClose(close) = m else {
        panic!("expected connection.close, got {m:?}")
    };
    assert_eq!(ch, 0);
    assert_eq!(
        close.reply_text,
        "NOT_ALLOWED - number of channels opened for user 'u' has reached the maximum allowed user limit of (0)"
    );

    // Definitions carry them as RabbitMQ does: a vhost-limits parameter, users' limits.
    let defs = http("GET", &url("/api/definitions"), GUEST, None).body;
    assert_eq!(
        defs["parameters"],
        json!([{"value": {"max-connections": 5}, "vhost": "/",
                "component": "vhost-limits", "name": "limits"}])
    );
    let u = defs["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "u")
        .unwrap();
    assert_eq!(
        u["limits"],
        json!({"max-channels": 0, "max-connections": 7})
    );
    let other = Server::start();
    let imported = http(
        "POST",
        &format!("{}/api/definitions", other.http_url()),
        GUEST,
        Some(defs),
    );
    assert_eq!(imported.status, 204, "{:?}", imported.body);
    assert_eq!(
        other.ctl_ok(&["-q", "list_vhost_limits"]),
        "{\"max-connections\":5}\n"
    );
    assert_eq!(
        other.ctl_ok(&["-q", "list_user_limits", "--user", "u"]),
        "{\"max-channels\":0,\"max-connections\":7}\n"
    );
    let text = http("GET", &format!("{}/metrics", other.http_url()), None, None);
    let text = text.body.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("warren_vhost_limit{vhost=\"/\",limit=\"max-connections\"} 5"),
        "{text}"
    );
    assert!(text.contains("warren_user_limit{user=\"u\",limit=\"max-channels\"} 0"));
}
