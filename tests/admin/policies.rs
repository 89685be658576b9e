//! Policies end to end: set with `warren ctl` (rabbitmqctl's words and output) and the HTTP
//! API (RabbitMQ's JSON), in force at once on queues that exist over AMQP, capped by
//! operator policies, refused with RabbitMQ's reasons, limited to policymakers and
//! administrators, and durable across a restart.

use serde_json::{Value, json};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

use crate::common::{RawClient, Server};
use crate::{GUEST, http};

fn declare_durable(c: &mut RawClient, queue: &str) {
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: queue.into(),
            durable: true,
            ..Default::default()
        }),
    );
    let (_, m) = c.expect_method();
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
}

fn publish_n(c: &mut RawClient, queue: &str, n: usize) {
    for _ in 0..n {
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        c.publish(1, "", queue, props, b"m");
    }
    // A round trip: the publishes before it were handled.
    declare_durable(c, queue);
}

fn queue(server: &Server, name: &str) -> Value {
    let url = format!("{}/api/queues/%2F/{name}", server.http_url());
    let r = http("GET", &url, GUEST, None);
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

#[test]
fn policies_set_with_ctl_and_http_govern_queues_and_survive_a_restart() {
    let server = Server::start();
    let url = |p: &str| format!("{}{p}", server.http_url());
    let mut c = RawClient::open(server.port);
    c.open_channel(1);
    declare_durable(&mut c, "pq.1");
    declare_durable(&mut c, "other");
    publish_n(&mut c, "pq.1", 5);

    let out = server.ctl_ok(&[
        "set_policy",
        "--priority",
        "1",
        "--apply-to",
        "queues",
        "lim",
        "^pq",
        r#"{"max-length":2,"overflow":"reject-publish"}"#,
    ]);
    assert_eq!(
        out,
        "Setting policy \"lim\" for pattern \"^pq\" to \"{\"max-length\":2,\"overflow\":\"reject-publish\"}\" with priority \"1\" for vhost \"/\" ...\n"
    );
    assert_eq!(
        server.ctl_ok(&["-q", "list_policies"]),
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n/\tlim\t^pq\tqueues\t{\"max-length\":2,\"overflow\":\"reject-publish\"}\t1\n"
    );
    // Reject-publish keeps what is there and refuses more.
    let q = queue(&server, "pq.1");
    assert_eq!(q["policy"], "lim");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"max-length": 2, "overflow": "reject-publish"})
    );
    assert_eq!(q["messages"], 5);
    publish_n(&mut c, "pq.1", 3);
    assert_eq!(queue(&server, "pq.1")["messages"], 5);
    assert_eq!(queue(&server, "other")["policy"], Value::Null);

    // An operator policy over HTTP caps the policy, and applies to every queue it matches.
    let cap = json!({"pattern": ".*", "definition": {"max-length": 1}, "apply-to": "queues"});
    let r = http(
        "PUT",
        &url("/api/operator-policies/%2F/cap"),
        GUEST,
        Some(cap.clone()),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = http(
        "PUT",
        &url("/api/operator-policies/%2F/cap"),
        GUEST,
        Some(cap),
    );
    assert_eq!(r.status, 204, "an update");
    let q = queue(&server, "pq.1");
    assert_eq!(q["operator_policy"], "cap");
    assert_eq!(q["effective_policy_definition"]["max-length"], 1);
    publish_n(&mut c, "other", 3);
    assert_eq!(
        queue(&server, "other")["messages"],
        1,
        "drop-head to the operator's cap"
    );
    let listed = http("GET", &url("/api/operator-policies"), GUEST, None).body;
    assert_eq!(
        listed,
        json!([{"vhost": "/", "name": "cap", "pattern": ".*", "apply-to": "queues",
                "definition": {"max-length": 1}, "priority": 0}])
    );

    // RabbitMQ's refusals.
    let (code, _, err) = server.ctl(&["set_policy", "bad", "^q", r#"{"max-length":-1}"#]);
    assert_eq!(
        (code, err.as_str()),
        (
            69,
            "Error:\nValidation failed\n\n-1 is not a valid maximum length\n\n"
        )
    );
    let (code, _, err) = server.ctl(&[
        "set_operator_policy",
        "bad",
        "^q",
        r#"{"dead-letter-exchange":"x"}"#,
    ]);
    assert_eq!(code, 69);
    assert!(
        err.contains(
            "[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings"
        ),
        "{err}"
    );
    let r = http(
        "PUT",
        &url("/api/policies/%2F/bad"),
        GUEST,
        Some(json!({"pattern": "(", "definition": {"max-length": 1}})),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.body["reason"]
            .as_str()
            .is_some_and(|s| s.contains("pattern should be regular expression")),
        "{:?}",
        r.body
    );
    let (code, _, err) = server.ctl(&["clear_policy", "nosuch"]);
    assert_eq!(
        (code, err.as_str()),
        (69, "Error:\nParameter does not exist\n")
    );

    // Policymakers set policies; only administrators set operator policies.
    server.ctl_ok(&["add_user", "pm", "pw"]);
    server.ctl_ok(&["set_user_tags", "pm", "policymaker"]);
    server.ctl_ok(&["set_permissions", "pm", ".*", ".*", ".*"]);
    server.ctl_ok(&["add_user", "mg", "pw"]);
    server.ctl_ok(&["set_user_tags", "mg", "management"]);
    server.ctl_ok(&["set_permissions", "mg", ".*", ".*", ".*"]);
    let ttl = json!({"pattern": "^none$", "definition": {"message-ttl": 1000}});
    let pm = Some(("pm", "pw"));
    assert_eq!(
        http("PUT", &url("/api/policies/%2F/ttl"), pm, Some(ttl.clone())).status,
        201
    );
    assert_eq!(
        http(
            "PUT",
            &url("/api/operator-policies/%2F/ttl"),
            pm,
            Some(ttl.clone())
        )
        .status,
        401
    );
    assert_eq!(
        http(
            "PUT",
            &url("/api/policies/%2F/ttl2"),
            Some(("mg", "pw")),
            Some(ttl)
        )
        .status,
        401
    );
    assert_eq!(
        http("DELETE", &url("/api/policies/%2F/ttl"), pm, None).status,
        204
    );

    // Durable: a restart finds both and puts them in force on the recovered queue.
    drop(c);
    let dir = server.kill();
    let server = Server::start_in(dir, &[]);
    let q = queue(&server, "pq.1");
    assert_eq!(
        (q["policy"].clone(), q["operator_policy"].clone()),
        (json!("lim"), json!("cap"))
    );
    assert_eq!(
        server.ctl_ok(&["-q", "list_operator_policies"]),
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n/\tcap\t.*\tqueues\t{\"max-length\":1}\t0\n"
    );
    assert_eq!(
        server.ctl_ok(&["clear_operator_policy", "cap"]),
        "Clearing operator policy \"cap\" on vhost \"/\" ...\n"
    );
    assert_eq!(
        server.ctl_ok(&["clear_policy", "lim"]),
        "Clearing policy \"lim\" on vhost \"/\" ...\n"
    );
    let q = queue(&server, "pq.1");
    assert_eq!(q["policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));
    // Exported definitions carry policies in RabbitMQ's places.
    server.ctl_ok(&["set_policy", "again", "^pq", r#"{"message-ttl":60000}"#]);
    server.ctl_ok(&[
        "set_operator_policy",
        "cap2",
        "^pq",
        r#"{"expires":600000}"#,
    ]);
    let defs = http(
        "GET",
        &format!("{}/api/definitions", server.http_url()),
        GUEST,
        None,
    )
    .body;
    assert_eq!(defs["policies"][0]["name"], "again");
    let op = defs["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["component"] == "operator_policy")
        .expect("operator policy parameter");
    assert_eq!(op["value"]["definition"], json!({"expires": 600000}));
}
