//! Tests of the admin operations, driving the broker as a driver would.

use bytes::Bytes;

use crate::broker::{Broker, BrokerConfig, ConnInfo, Output};
use crate::proto::command::{Command, ConnId, Login, Reply};
use crate::proto::constants::CONNECTION_FORCED;
use crate::proto::method::{ChannelOpen, Method, QueueDeclare};
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;
use crate::store::{PermissionRecord, Recovered, StoreOp};

use super::*;

struct Harness {
    broker: Broker,
    now: u64,
    /// Everything persisted so far, in order.
    ops: Vec<StoreOp>,
}

impl Harness {
    fn new() -> Harness {
        let mut h = Harness {
            broker: Broker::new(BrokerConfig::default(), 7, Recovered::default()),
            now: 1_000,
            ops: Vec::new(),
        };
        h.drain();
        h
    }

    /// Drains outputs, acknowledging every batch as synced; returns the replies per
    /// connection.
    fn drain(&mut self) -> Vec<(ConnId, Reply)> {
        let mut replies = Vec::new();
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Persist { batch, ops } => {
                    self.ops.extend(ops);
                    self.broker.handle_persisted(batch);
                }
                Output::Replies { conn, replies: r } => {
                    replies.extend(r.into_iter().map(|x| (conn, x)))
                }
                Output::Load { .. } => panic!("these tests never page"),
            }
        }
        replies
    }

    fn admin(&mut self, request: AdminRequest) -> AdminResult {
        self.now += 1;
        let r = self.broker.handle_admin(request, self.now);
        r.result
    }

    fn command(&mut self, conn: ConnId, c: Command) {
        self.now += 1;
        self.broker.handle_command(conn, c, self.now);
    }

    /// Connects and logs in; returns whether the login was accepted.
    fn login(&mut self, conn: ConnId, user: &str, pass: &str, vhost: &str) -> bool {
        let info = ConnInfo {
            peer: format!("127.0.0.1:{}", 40000 + conn),
            loopback: true,
        };
        self.broker.handle_connect(conn, info, self.now);
        self.command(
            conn,
            Command::Login(Login {
                mechanism: "PLAIN".into(),
                username: user.into(),
                password: pass.into(),
                client_properties: FieldTable::default(),
            }),
        );
        let ok = self
            .drain()
            .iter()
            .any(|(c, r)| *c == conn && *r == Reply::LoginOk);
        if ok {
            self.command(
                conn,
                Command::OpenVhost {
                    vhost: vhost.into(),
                },
            );
            self.command(conn, Command::ChannelOpen { channel: 1 });
            self.drain();
        }
        ok
    }

    fn declare_durable_queue(&mut self, actor: Actor, vhost: &str, name: &str) {
        self.admin(AdminRequest::DeclareQueue {
            actor,
            vhost: vhost.into(),
            name: name.into(),
            durable: true,
            auto_delete: false,
            arguments: FieldTable::default(),
        })
        .unwrap();
    }

    fn add_user(&mut self, name: &str, pass: &str, vhost: &str, perms: [&str; 3]) {
        self.admin(AdminRequest::PutUser {
            name: name.into(),
            password: Password::Plain(pass.into()),
            tags: None,
            mode: PutMode::CreateOnly,
        })
        .unwrap();
        self.admin(AdminRequest::SetPermissions(PermissionRecord {
            user: name.into(),
            vhost: vhost.into(),
            configure: perms[0].into(),
            write: perms[1].into(),
            read: perms[2].into(),
        }))
        .unwrap();
        self.drain();
    }

    fn queues(&mut self) -> Vec<QueueInfo> {
        match self.admin(AdminRequest::ListQueues { vhost: None }) {
            Ok(AdminReply::Queues(q)) => q,
            other => panic!("{other:?}"),
        }
    }
}

fn forced_close(replies: &[(ConnId, Reply)], conn: ConnId) -> Option<String> {
    replies.iter().find_map(|(c, r)| match r {
        Reply::Method {
            method: Method::ConnectionClose(close),
            ..
        } if *c == conn && close.reply_code == CONNECTION_FORCED => Some(close.reply_text.clone()),
        _ => None,
    })
}

fn publish(actor: Actor, queue: &str, body: &'static [u8], persistent: bool) -> AdminRequest {
    AdminRequest::Publish {
        actor,
        vhost: "/".into(),
        exchange: "amq.default".into(),
        routing_key: queue.into(),
        properties: Box::new(BasicProperties {
            delivery_mode: persistent.then_some(2),
            ..BasicProperties::default()
        }),
        body: Bytes::from_static(body),
    }
}

#[test]
fn users_are_stored_hashed_and_passwords_take_effect_on_next_login() {
    let mut h = Harness::new();
    h.add_user("xjk", "123", "/", [".*", ".*", ".*"]);
    assert!(h.login(1, "xjk", "123", "/"));
    let stored = h
        .ops
        .iter()
        .find_map(|op| match op {
            StoreOp::PutUser(u) if u.name == "xjk" => Some(u.clone()),
            _ => None,
        })
        .expect("user persisted");
    assert_ne!(stored.password_hash, "123");
    assert!(!stored.password_hash.contains("123"));
    assert!(crate::broker::check_password(&stored.password_hash, "123"));

    let again = h.admin(AdminRequest::PutUser {
        name: "xjk".into(),
        password: Password::Plain("x".into()),
        tags: None,
        mode: PutMode::CreateOnly,
    });
    assert_eq!(again.unwrap_err().kind, AdminErrorKind::AlreadyExists);

    h.admin(AdminRequest::PutUser {
        name: "xjk".into(),
        password: Password::Plain("456".into()),
        tags: None,
        mode: PutMode::UpdateOnly,
    })
    .unwrap();
    h.drain();
    assert!(!h.login(2, "xjk", "123", "/"), "old password refused");
    assert!(h.login(3, "xjk", "456", "/"), "new password accepted");
    // An open connection is not disturbed by a password change.
    assert_eq!(h.broker.list_connections().len(), 2);
    let missing = h.admin(AdminRequest::PutUser {
        name: "nobody".into(),
        password: Password::Keep,
        tags: Some(vec!["administrator".into()]),
        mode: PutMode::UpdateOnly,
    });
    assert_eq!(missing.unwrap_err().kind, AdminErrorKind::NotFound);
}

#[test]
fn deleting_a_user_closes_its_connections_with_320() {
    let mut h = Harness::new();
    h.add_user("u", "p", "/", [".*", ".*", ".*"]);
    assert!(h.login(1, "u", "p", "/"));
    assert!(h.login(2, "guest", "guest", "/"));
    let r = h
        .broker
        .handle_admin(AdminRequest::DeleteUser { name: "u".into() }, 5_000);
    assert!(r.result.is_ok());
    assert!(
        r.durable_batch.is_some(),
        "the deletion is durable before the answer"
    );
    let replies = h.drain();
    assert_eq!(
        forced_close(&replies, 1).as_deref(),
        Some("CONNECTION_FORCED - user 'u' is deleted")
    );
    assert_eq!(forced_close(&replies, 2), None);
    assert!(h.ops.contains(&StoreOp::DeleteUser("u".into())));
    assert!(!h.login(3, "u", "p", "/"));
    let again = h.admin(AdminRequest::DeleteUser { name: "u".into() });
    assert_eq!(again.unwrap_err().kind, AdminErrorKind::NotFound);
}

#[test]
fn deleting_a_vhost_closes_connections_and_drops_its_queues() {
    let mut h = Harness::new();
    h.admin(AdminRequest::PutVhost {
        name: "v".into(),
        mode: PutMode::CreateOnly,
    })
    .unwrap();
    h.add_user("u", "p", "v", [".*", ".*", ".*"]);
    assert!(h.login(1, "u", "p", "v"));
    h.command(
        1,
        Command::Method {
            channel: 1,
            method: Method::QueueDeclare(QueueDeclare {
                queue: "q".into(),
                durable: true,
                ..QueueDeclare::default()
            }),
        },
    );
    h.drain();
    assert_eq!(h.queues().len(), 1);
    h.admin(AdminRequest::DeleteVhost { name: "v".into() })
        .unwrap();
    let replies = h.drain();
    assert_eq!(
        forced_close(&replies, 1).as_deref(),
        Some("CONNECTION_FORCED - vhost 'v' is deleted")
    );
    assert!(h.queues().is_empty());
    assert!(h.ops.contains(&StoreOp::DeleteVhost("v".into())));
    assert!(h.broker.users().permissions("u", "v").is_none());
    h.broker.check_invariants();
}

#[test]
fn http_publish_and_get_follow_permissions() {
    let mut h = Harness::new();
    h.add_user("reader", "p", "/", ["", "", ".*"]);
    h.declare_durable_queue(Actor::Node, "/", "q");
    let denied = h.admin(publish(Actor::User("reader".into()), "q", b"x", false));
    let e = denied.unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::AccessRefused);
    assert_eq!(
        e.reason,
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'reader'"
    );
    let r = h
        .broker
        .handle_admin(publish(Actor::Node, "q", b"hello", true), 9_000);
    assert_eq!(r.result, Ok(AdminReply::Routed(true)));
    assert!(
        r.durable_batch.is_some(),
        "a persistent message waits for the store"
    );
    h.drain();
    assert_eq!(
        h.admin(publish(Actor::Node, "nowhere", b"x", false)),
        Ok(AdminReply::Routed(false))
    );

    let get = |ack| AdminRequest::Get {
        actor: Actor::User("reader".into()),
        vhost: "/".into(),
        queue: "q".into(),
        count: 5,
        ack,
    };
    let Ok(AdminReply::Messages(m)) = h.admin(get(GetAck::Requeue)) else {
        panic!("get failed")
    };
    assert_eq!(m.len(), 1);
    assert_eq!(&m[0].message.body[..], b"hello");
    assert!(!m[0].redelivered);
    let Ok(AdminReply::Messages(m)) = h.admin(get(GetAck::Ack)) else {
        panic!("get failed")
    };
    assert!(
        m[0].redelivered,
        "a requeued message comes back redelivered"
    );
    assert_eq!(h.queues()[0].messages_ready, 0);
    let stats = h.queues()[0].stats;
    assert_eq!((stats.publish, stats.get, stats.ack), (1, 2, 1));
    assert_eq!(h.broker.message_totals().publish, 2);
    assert_eq!(h.broker.message_totals().unroutable, 1);
    h.drain();
    h.broker.check_invariants();
}

#[test]
fn stop_app_closes_connections_and_reset_restores_first_start() {
    let mut h = Harness::new();
    h.add_user("u", "p", "/", [".*", ".*", ".*"]);
    h.declare_durable_queue(Actor::Node, "/", "q");
    h.admin(publish(Actor::Node, "q", b"m", true)).unwrap();
    assert!(h.login(1, "u", "p", "/"));
    let refused = h.admin(AdminRequest::Reset);
    assert_eq!(
        refused.unwrap_err().kind,
        AdminErrorKind::PreconditionFailed
    );
    h.admin(AdminRequest::StopApp).unwrap();
    let replies = h.drain();
    assert!(forced_close(&replies, 1).is_some());
    assert!(!h.broker.app_running());
    assert!(
        !h.login(2, "guest", "guest", "/"),
        "no logins while stopped"
    );
    h.admin(AdminRequest::Reset).unwrap();
    h.drain();
    assert!(h.queues().is_empty());
    let Ok(AdminReply::Users(users)) = h.admin(AdminRequest::ListUsers) else {
        panic!()
    };
    assert_eq!(
        users.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["guest"]
    );
    h.admin(AdminRequest::StartApp).unwrap();
    assert!(h.login(3, "guest", "guest", "/"));
    assert!(!h.login(4, "u", "p", "/"));
    // Replaying the store's ops into a fresh broker gives the same first-start state.
    let mut state = crate::store::memory::MemoryState::default();
    for op in &h.ops {
        state.apply(op);
    }
    let recovered = state.recovered(crate::store::HeadLimit::ALL);
    assert_eq!(recovered.vhosts, ["/"]);
    assert_eq!(recovered.users.len(), 1);
    assert!(recovered.queues.is_empty() && recovered.contents.is_empty());
}

#[test]
fn definitions_round_trip_into_a_fresh_broker() {
    let mut h = Harness::new();
    h.admin(AdminRequest::PutVhost {
        name: "v".into(),
        mode: PutMode::Upsert,
    })
    .unwrap();
    h.add_user("u", "p", "v", ["^q", ".*", ".*"]);
    h.admin(AdminRequest::DeclareExchange {
        actor: Actor::Node,
        vhost: "v".into(),
        name: "x".into(),
        kind: "topic".into(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    })
    .unwrap();
    h.declare_durable_queue(Actor::User("u".into()), "v", "q");
    h.admin(AdminRequest::Bind {
        actor: Actor::Node,
        binding: BindingInfo {
            vhost: "v".into(),
            source: "x".into(),
            destination: "q".into(),
            to_queue: true,
            routing_key: "a.#".into(),
            arguments: FieldTable::default(),
        },
    })
    .unwrap();
    let Ok(AdminReply::Definitions(defs)) =
        h.admin(AdminRequest::ExportDefinitions { vhost: None })
    else {
        panic!()
    };
    assert_eq!(defs.queues.len(), 1);
    assert_eq!(defs.exchanges.len(), 1);
    assert_eq!(defs.bindings.len(), 1);
    let mut fresh = Harness::new();
    fresh
        .admin(AdminRequest::ImportDefinitions(defs.clone()))
        .unwrap();
    let Ok(AdminReply::Definitions(again)) =
        fresh.admin(AdminRequest::ExportDefinitions { vhost: None })
    else {
        panic!()
    };
    assert_eq!(again.users.len(), defs.users.len());
    assert_eq!(again.queues, defs.queues);
    assert_eq!(again.bindings, defs.bindings);
    assert!(fresh.login(1, "u", "p", "v"), "imported hash logs in");
    fresh.drain();
    fresh.broker.check_invariants();
}

#[test]
fn listings_need_no_store_batch() {
    let mut h = Harness::new();
    for request in [
        AdminRequest::ListUsers,
        AdminRequest::ListVhosts,
        AdminRequest::ListBindings { vhost: None },
        AdminRequest::Overview,
    ] {
        let r = h.broker.handle_admin(request, 2_000);
        assert!(r.result.is_ok());
        assert_eq!(r.durable_batch, None);
    }
    let Ok(AdminReply::Exchanges(x)) = h.admin(AdminRequest::ListExchanges {
        vhost: Some("/".into()),
    }) else {
        panic!()
    };
    assert_eq!(x.len(), 7, "the predeclared exchanges");
    let bad = h.admin(AdminRequest::SetPermissions(PermissionRecord {
        user: "guest".into(),
        vhost: "/".into(),
        configure: "(".into(),
        write: "".into(),
        read: "".into(),
    }));
    assert_eq!(bad.unwrap_err().kind, AdminErrorKind::BadRequest);
    let _ = ChannelOpen::default();
}

#[test]
fn loopback_only_users_authenticate_from_loopback_only() {
    let mut h = Harness::new();
    let ask = |from_loopback| AdminRequest::Authenticate {
        username: "guest".into(),
        password: "guest".into(),
        from_loopback,
    };
    assert!(matches!(h.admin(ask(true)), Ok(AdminReply::Whoami(_))));
    let remote = h.admin(ask(false)).unwrap_err();
    assert_eq!(remote.kind, AdminErrorKind::NotAuthenticated);
}
