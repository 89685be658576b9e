//! Topic permissions end to end: set with `warren ctl` (rabbitmqctl's words and columns),
//! enforced over AMQP on topic exchanges with RabbitMQ's 403 texts (publish checks the
//! write pattern, bind and unbind the read pattern, `{username}` expanded), durable across
//! a restart, and listed over HTTP.

use serde_json::json;
use warren::proto::constants::ACCESS_REFUSED;
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

use crate::common::{RawClient, Server};
use crate::{GUEST, http, open_on};

/// Binds (or unbinds) an exclusive queue `q` to `exchange` with `key` on channel 1;
/// returns the channel.close text if refused (the channel is reopened).
fn bind(c: &mut RawClient, exchange: &str, key: &str, unbind: bool) -> Option<(u16, String)> {
    let m = if unbind {
        Method::QueueUnbind(QueueUnbind {
            queue: "q".into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        })
    } else {
        Method::QueueBind(QueueBind {
            queue: "q".into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        })
    };
    c.send_method(1, m);
    match c.expect_method() {
        (_, Method::QueueBindOk(_) | Method::QueueUnbindOk(_)) => None,
        (1, Method::ChannelClose(close)) => {
            c.send_method(1, Method::ChannelCloseOk(ChannelCloseOk {}));
            c.open_channel(1);
            Some((close.reply_code, close.reply_text))
        }
        (_, other) => panic!("unexpected {other:?}"),
    }
}

/// Publishes, then makes a round trip; returns the channel.close text if refused.
fn publish(c: &mut RawClient, exchange: &str, key: &str) -> Option<(u16, String)> {
    c.publish(1, exchange, key, BasicProperties::default(), b"m");
    c.send_method(1, Method::BasicQos(BasicQos::default()));
    match c.expect_method() {
        (_, Method::BasicQosOk(_)) => None,
        (1, Method::ChannelClose(close)) => {
            c.send_method(1, Method::ChannelCloseOk(ChannelCloseOk {}));
            c.open_channel(1);
            Some((close.reply_code, close.reply_text))
        }
        (_, other) => panic!("unexpected {other:?}"),
    }
}

fn session(server: &Server) -> RawClient {
    let mut c = open_on(server.port, "tu", "tp", "/").expect("tu logs in");
    c.open_channel(1);
    c.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            durable: true,
            ..Default::default()
        }),
    );
    let (_, m) = c.expect_method();
    assert!(matches!(m, Method::QueueDeclareOk(_)), "{m:?}");
    c
}

fn refused(key: &str) -> Option<(u16, String)> {
    Some((
        ACCESS_REFUSED,
        format!(
            "ACCESS_REFUSED - access to topic '{key}' in exchange 'amq.topic' in vhost '/' refused for user 'tu'"
        ),
    ))
}

#[test]
fn topic_permissions_limit_publishing_and_binding_keys_on_topic_exchanges() {
    let server = Server::start();
    server.ctl_ok(&["add_user", "tu", "tp"]);
    server.ctl_ok(&["set_permissions", "tu", ".*", ".*", ".*"]);
    let out = server.ctl_ok(&[
        "set_topic_permissions",
        "tu",
        "amq.topic",
        "^(a|{username})\\.",
        "^r\\.",
    ]);
    assert_eq!(
        out,
        "Setting topic permissions on \"amq.topic\" for user \"tu\" in vhost \"/\" ...\n"
    );
    let check = |server: &Server| {
        let mut c = session(server);
        assert_eq!(publish(&mut c, "amq.topic", "a.b"), None);
        assert_eq!(
            publish(&mut c, "amq.topic", "tu.b"),
            None,
            "{{username}} expanded"
        );
        assert_eq!(publish(&mut c, "amq.topic", "b.b"), refused("b.b"));
        assert_eq!(bind(&mut c, "amq.topic", "x.y", false), refused("x.y"));
        assert_eq!(bind(&mut c, "amq.topic", "r.y", false), None);
        assert_eq!(bind(&mut c, "amq.topic", "zz", true), refused("zz"));
        assert_eq!(bind(&mut c, "amq.topic", "r.y", true), None);
        // Other exchanges, and other users, are not limited.
        assert_eq!(publish(&mut c, "amq.direct", "b.b"), None);
        assert_eq!(bind(&mut c, "amq.direct", "x.y", false), None);
        let mut g = RawClient::open(server.port);
        g.open_channel(1);
        assert_eq!(publish(&mut g, "amq.topic", "b.b"), None);
    };
    check(&server);
    assert_eq!(
        server.ctl_ok(&["-q", "list_topic_permissions"]),
        "user\texchange\twrite\tread\ntu\tamq.topic\t^(a|{username})\\.\t^r\\.\n"
    );
    let dir = server.kill();
    let server = Server::start_in(dir, &[]);
    check(&server);
    assert_eq!(
        server.ctl_ok(&["-q", "list_user_topic_permissions", "tu"]),
        "vhost\texchange\twrite\tread\n/\tamq.topic\t^(a|{username})\\.\t^r\\.\n"
    );
    let listed = http(
        "GET",
        &format!("{}/api/topic-permissions", server.http_url()),
        GUEST,
        None,
    );
    assert_eq!(
        listed.body,
        json!([{"user": "tu", "vhost": "/", "exchange": "amq.topic", "write": "^(a|{username})\\.", "read": "^r\\."}])
    );
    let (code, _, err) = server.ctl(&["set_topic_permissions", "tu", "amq.topic", "(", ".*"]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid regular expression"), "{err}");
    assert_eq!(
        server.ctl_ok(&["clear_topic_permissions", "tu", "amq.topic"]),
        "Clearing topic permissions on \"amq.topic\" for user \"tu\" in vhost \"/\" ...\n"
    );
    let mut c = session(&server);
    assert_eq!(publish(&mut c, "amq.topic", "b.b"), None, "cleared");
    assert_eq!(
        server.ctl_ok(&["-q", "list_topic_permissions"]),
        "user\texchange\twrite\tread\n"
    );
}
