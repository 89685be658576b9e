//! Tests of the admin operations, driving the broker as a driver would.

use bytes::Bytes;

use crate::broker::{Broker, BrokerConfig, ConnInfo, Output};
use crate::proto::command::{Command, ConnId, Login, Reply};
use crate::proto::constants::CONNECTION_FORCED;
use crate::proto::method::{ChannelOpen, Method, QueueDeclare};
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;
use crate::store::{
    PermissionRecord, PolicyRecord, Recovered, StoreOp, TopicPermissionRecord, UserLimits,
    VhostLimits,
};

use super::*;
use crate::broker::test_rig::{AdminOutcome, admin_answer};

struct Harness {
    broker: Broker,
    now: u64,
    /// Everything persisted so far, in order.
    ops: Vec<StoreOp>,
    /// Replies that came out while an admin request was run, not yet drained.
    pending: Vec<(ConnId, Reply)>,
}

impl Harness {
    fn new() -> Harness {
        let mut h = Harness {
            broker: Broker::new(BrokerConfig::default(), 7, Recovered::default()),
            now: 1_000,
            ops: Vec::new(),
            pending: Vec::new(),
        };
        h.drain();
        h
    }

    /// Drains outputs, acknowledging every batch as synced; returns the replies per
    /// connection.
    fn drain(&mut self) -> Vec<(ConnId, Reply)> {
        let mut replies = std::mem::take(&mut self.pending);
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Persist { batch, ops, .. } => {
                    self.ops.extend(ops);
                    self.broker.handle_persisted(batch);
                }
                Output::Replies { conn, replies: r } => {
                    replies.extend(r.into_iter().map(|x| (conn, x)))
                }
                Output::Load { .. } => panic!("these tests never page"),
                Output::Admin { .. } => panic!("answers are taken by `run_admin`"),
            }
        }
        replies
    }

    fn admin(&mut self, request: AdminRequest) -> AdminResult {
        self.now += 1;
        self.run_admin(request, self.now).result
    }

    /// Runs an admin request to its answer; the replies it caused wait for `drain`.
    fn run_admin(&mut self, request: AdminRequest, now: u64) -> AdminOutcome {
        let mut outcome = admin_answer(&mut self.broker, request, now);
        self.ops.extend(outcome.ops.iter().cloned());
        self.pending.append(&mut outcome.replies);
        outcome
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
    let r = h.run_admin(AdminRequest::DeleteUser { name: "u".into() }, 5_000);
    assert!(r.result.is_ok());
    assert!(
        r.waited_for_sync,
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
    let r = h.run_admin(publish(Actor::Node, "q", b"hello", true), 9_000);
    assert_eq!(r.result, Ok(AdminReply::Routed(true)));
    assert!(
        r.waited_for_sync,
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
        let r = h.run_admin(request, 2_000);
        assert!(r.result.is_ok());
        assert!(!r.waited_for_sync);
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

// ----- limits -----

/// The connection.close or channel.close `conn` got, as (channel, code, text).
fn close_of(replies: &[(ConnId, Reply)], conn: ConnId) -> Option<(u16, u16, String)> {
    replies.iter().find_map(|(c, r)| match r {
        Reply::Method {
            method: Method::ConnectionClose(close),
            ..
        } if *c == conn => Some((0, close.reply_code, close.reply_text.clone())),
        Reply::Method {
            channel,
            method: Method::ChannelClose(close),
        } if *c == conn => Some((*channel, close.reply_code, close.reply_text.clone())),
        _ => None,
    })
}

impl Harness {
    /// Connects, logs in and opens `vhost`; returns the replies to the open.
    fn open(&mut self, conn: ConnId, user: &str, pass: &str, vhost: &str) -> Vec<(ConnId, Reply)> {
        let info = ConnInfo {
            peer: format!("127.0.0.1:{}", 40000 + conn),
            loopback: true,
        };
        self.broker.handle_connect(conn, info, self.now);
        let login = Login {
            mechanism: "PLAIN".into(),
            username: user.into(),
            password: pass.into(),
            client_properties: FieldTable::default(),
        };
        self.command(conn, Command::Login(login));
        let vhost = vhost.into();
        self.command(conn, Command::OpenVhost { vhost });
        self.drain()
    }

    fn channel(&mut self, conn: ConnId, channel: u16) -> Vec<(ConnId, Reply)> {
        self.command(conn, Command::ChannelOpen { channel });
        self.drain()
    }

    fn declare(&mut self, conn: ConnId, queue: &str) -> Vec<(ConnId, Reply)> {
        let declare = QueueDeclare {
            queue: queue.into(),
            ..QueueDeclare::default()
        };
        let method = Method::QueueDeclare(declare);
        self.command(conn, Command::Method { channel: 1, method });
        self.drain()
    }

    fn vhost_limits(&mut self, vhost: &str, definition: VhostLimits) {
        let request = AdminRequest::SetVhostLimits {
            vhost: vhost.into(),
            limits: definition,
            replace: true,
        };
        self.admin(request).unwrap();
        self.drain();
    }

    fn user_limits(&mut self, user: &str, definition: UserLimits) {
        let request = AdminRequest::SetUserLimits {
            user: user.into(),
            limits: definition,
        };
        self.admin(request).unwrap();
        self.drain();
    }
}

fn opened(replies: &[(ConnId, Reply)], conn: ConnId) -> bool {
    replies.iter().any(|(c, r)| {
        *c == conn
            && matches!(
                r,
                Reply::Method {
                    method: Method::ConnectionOpenOk(_),
                    ..
                }
            )
    })
}

#[test]
fn vhost_connection_limit_refuses_connection_open_with_530() {
    let mut h = Harness::new();
    h.vhost_limits(
        "/",
        VhostLimits {
            max_connections: Some(1),
            max_queues: None,
        },
    );
    assert!(opened(&h.open(1, "guest", "guest", "/"), 1));
    let replies = h.open(2, "guest", "guest", "/");
    let close = close_of(&replies, 2).expect("refused");
    assert_eq!(
        close,
        (
            0,
            530,
            "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (1) is reached"
                .into()
        )
    );
    // The refused connection is gone and uncounted; closing the first frees the slot.
    h.command(1, Command::Closed);
    h.drain();
    assert!(opened(&h.open(3, "guest", "guest", "/"), 3));
    h.broker.check_invariants();
    // -1 does not limit; 0 allows none.
    h.vhost_limits(
        "/",
        VhostLimits {
            max_connections: Some(-1),
            max_queues: None,
        },
    );
    assert!(opened(&h.open(4, "guest", "guest", "/"), 4));
    h.vhost_limits(
        "/",
        VhostLimits {
            max_connections: Some(0),
            max_queues: None,
        },
    );
    let close = close_of(&h.open(5, "guest", "guest", "/"), 5).expect("refused");
    assert!(
        close.2.ends_with("connection limit (0) is reached"),
        "{close:?}"
    );
    h.broker.check_invariants();
}

#[test]
fn user_limits_refuse_connections_and_channels_with_530() {
    let mut h = Harness::new();
    h.add_user("u", "p", "/", [".*", ".*", ".*"]);
    h.user_limits(
        "u",
        UserLimits {
            max_connections: Some(2),
            max_channels: None,
        },
    );
    h.user_limits(
        "u",
        UserLimits {
            max_connections: None,
            max_channels: Some(2),
        },
    );
    let Ok(AdminReply::UserLimits(l)) = h.admin(AdminRequest::ListUserLimits { user: None }) else {
        panic!()
    };
    assert_eq!(
        l,
        [(
            "u".to_string(),
            UserLimits {
                max_connections: Some(2),
                max_channels: Some(2)
            }
        )],
        "set_user_limits keeps the limits it was not given"
    );
    assert!(opened(&h.open(1, "u", "p", "/"), 1));
    assert!(opened(&h.open(2, "u", "p", "/"), 2));
    let close = close_of(&h.open(3, "u", "p", "/"), 3).expect("refused");
    assert_eq!(
        close.2,
        "NOT_ALLOWED - connection refused for user 'u': user connection limit (2) is reached"
    );
    // Channels count across the user's connections.
    let ok = |r: &[(ConnId, Reply)]| {
        r.iter().any(|(_, r)| {
            matches!(
                r,
                Reply::Method {
                    method: Method::ChannelOpenOk(_),
                    ..
                }
            )
        })
    };
    assert!(ok(&h.channel(1, 1)));
    assert!(ok(&h.channel(2, 1)));
    let replies = h.channel(1, 2);
    assert!(!ok(&replies), "no open-ok for a refused channel");
    assert_eq!(
        close_of(&replies, 1),
        Some((
            0,
            530,
            "NOT_ALLOWED - number of channels opened for user 'u' has reached the maximum allowed user limit of (2)"
                .into()
        ))
    );
    // The refusal closed connection 1 and its channel: connection 2 may open another.
    assert!(ok(&h.channel(2, 2)));
    h.command(2, Command::ChannelClose { channel: 2 });
    h.drain();
    assert!(ok(&h.channel(2, 3)));
    h.broker.check_invariants();
    // Guest is not limited by u's limits.
    assert!(opened(&h.open(9, "guest", "guest", "/"), 9));
    h.admin(AdminRequest::ClearUserLimits {
        user: "u".into(),
        name: Some("max-channels".into()),
    })
    .unwrap();
    assert!(ok(&h.channel(2, 4)));
    h.broker.check_invariants();
}

#[test]
fn vhost_queue_limit_refuses_new_queues_only() {
    let mut h = Harness::new();
    h.vhost_limits(
        "/",
        VhostLimits {
            max_connections: None,
            max_queues: Some(1),
        },
    );
    assert!(opened(&h.open(1, "guest", "guest", "/"), 1));
    h.channel(1, 1);
    assert_eq!(close_of(&h.declare(1, "q1"), 1), None);
    assert_eq!(
        close_of(&h.declare(1, "q1"), 1),
        None,
        "redeclaring is fine"
    );
    assert_eq!(
        close_of(&h.declare(1, "q2"), 1),
        Some((
            1,
            406,
            "PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost '/' (1) is reached"
                .into()
        ))
    );
    let over_http = h.admin(AdminRequest::DeclareQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: "q3".into(),
        durable: true,
        auto_delete: false,
        arguments: FieldTable::default(),
    });
    assert_eq!(
        over_http.unwrap_err().kind,
        AdminErrorKind::PreconditionFailed
    );
    h.admin(AdminRequest::ClearVhostLimits {
        vhost: "/".into(),
        name: None,
    })
    .unwrap();
    h.channel(1, 1);
    assert_eq!(close_of(&h.declare(1, "q2"), 1), None);
    let again = h.admin(AdminRequest::ClearVhostLimits {
        vhost: "/".into(),
        name: None,
    });
    assert_eq!(again.unwrap_err().reason, "Parameter does not exist");
    h.broker.check_invariants();
}

#[test]
fn limits_are_durable_and_go_with_their_vhost_or_user() {
    let mut h = Harness::new();
    h.admin(AdminRequest::PutVhost {
        name: "v".into(),
        mode: PutMode::CreateOnly,
    })
    .unwrap();
    h.add_user("u", "p", "v", [".*", ".*", ".*"]);
    let vl = VhostLimits {
        max_connections: Some(3),
        max_queues: Some(-1),
    };
    let ul = UserLimits {
        max_connections: None,
        max_channels: Some(7),
    };
    h.vhost_limits("v", vl);
    h.user_limits("u", ul);
    let replay = |ops: &[StoreOp]| {
        let mut state = crate::store::memory::MemoryState::default();
        for op in ops {
            state.apply(op);
        }
        Broker::new(
            BrokerConfig::default(),
            1,
            state.recovered(crate::store::HeadLimit::ALL),
        )
    };
    let mut restarted = replay(&h.ops);
    let listed = admin_answer(
        &mut restarted,
        AdminRequest::ListVhostLimits { vhost: None },
        1,
    );
    assert_eq!(
        listed.result,
        Ok(AdminReply::VhostLimits(vec![("v".into(), vl)]))
    );
    let listed = admin_answer(
        &mut restarted,
        AdminRequest::ListUserLimits { user: None },
        1,
    );
    assert_eq!(
        listed.result,
        Ok(AdminReply::UserLimits(vec![("u".into(), ul)]))
    );
    h.admin(AdminRequest::DeleteVhost { name: "v".into() })
        .unwrap();
    h.admin(AdminRequest::DeleteUser { name: "u".into() })
        .unwrap();
    h.drain();
    h.admin(AdminRequest::PutVhost {
        name: "v".into(),
        mode: PutMode::CreateOnly,
    })
    .unwrap();
    assert_eq!(
        h.admin(AdminRequest::ListVhostLimits { vhost: None }),
        Ok(AdminReply::VhostLimits(vec![]))
    );
    let restarted = replay(&h.ops);
    assert!(restarted.accounts.tenants.vhost_limits.is_empty());
    assert!(restarted.accounts.tenants.user_limits.is_empty());
    let missing = h.admin(AdminRequest::SetUserLimits {
        user: "u".into(),
        limits: ul,
    });
    assert_eq!(missing.unwrap_err().kind, AdminErrorKind::NotFound);
}

#[test]
fn an_import_past_a_queue_limit_fails_whole() {
    let mut h = Harness::new();
    h.vhost_limits(
        "/",
        VhostLimits {
            max_connections: None,
            max_queues: Some(1),
        },
    );
    let queue = |name: &str| QueueDef {
        vhost: "/".into(),
        name: name.into(),
        durable: true,
        auto_delete: false,
        arguments: FieldTable::default(),
    };
    let defs = Definitions {
        queues: vec![queue("a"), queue("b")],
        ..Definitions::default()
    };
    let r = h.admin(AdminRequest::ImportDefinitions(Box::new(defs)));
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::PreconditionFailed);
    assert!(h.queues().is_empty(), "nothing imported");
    // A document's own limits do not hold its own queues back (as in RabbitMQ).
    let defs = Definitions {
        queues: vec![queue("a")],
        vhost_limits: vec![(
            "/".into(),
            VhostLimits {
                max_connections: None,
                max_queues: Some(0),
            },
        )],
        ..Definitions::default()
    };
    h.admin(AdminRequest::ImportDefinitions(Box::new(defs)))
        .unwrap();
    assert_eq!(h.queues().len(), 1);
}

#[test]
fn limits_round_trip_through_definitions() {
    let mut h = Harness::new();
    h.add_user("u", "p", "/", [".*", ".*", ".*"]);
    let vl = VhostLimits {
        max_connections: None,
        max_queues: Some(5),
    };
    let ul = UserLimits {
        max_connections: Some(1),
        max_channels: None,
    };
    h.vhost_limits("/", vl);
    h.user_limits("u", ul);
    let Ok(AdminReply::Definitions(defs)) =
        h.admin(AdminRequest::ExportDefinitions { vhost: None })
    else {
        panic!()
    };
    assert_eq!(defs.vhost_limits, [("/".to_string(), vl)]);
    assert_eq!(defs.user_limits, [("u".to_string(), ul)]);
    let mut fresh = Harness::new();
    fresh.admin(AdminRequest::ImportDefinitions(defs)).unwrap();
    assert_eq!(
        fresh.admin(AdminRequest::ListUserLimits {
            user: Some("u".into())
        }),
        Ok(AdminReply::UserLimits(vec![("u".into(), ul)]))
    );
    assert_eq!(
        fresh.admin(AdminRequest::ListVhostLimits {
            vhost: Some("/".into())
        }),
        Ok(AdminReply::VhostLimits(vec![("/".into(), vl)]))
    );
}

// ----- exclusive queues and tables over the admin paths -----

#[test]
fn users_cannot_touch_another_connections_exclusive_queue() {
    let mut h = Harness::new();
    assert!(h.login(1, "guest", "guest", "/"));
    let declare = QueueDeclare {
        queue: "mine".into(),
        exclusive: true,
        ..QueueDeclare::default()
    };
    let method = Method::QueueDeclare(declare);
    h.command(1, Command::Method { channel: 1, method });
    h.drain();
    let user = || Actor::User("guest".into());
    let locked = |r: AdminResult| {
        let e = r.unwrap_err();
        assert_eq!(e.kind, AdminErrorKind::Locked, "{e:?}");
        assert!(
            e.reason
                .contains("cannot obtain exclusive access to locked queue 'mine'")
        );
    };
    locked(h.admin(AdminRequest::PurgeQueue {
        actor: user(),
        vhost: "/".into(),
        name: "mine".into(),
    }));
    locked(h.admin(AdminRequest::DeleteQueue {
        actor: user(),
        vhost: "/".into(),
        name: "mine".into(),
        if_empty: false,
        if_unused: false,
    }));
    let binding = BindingInfo {
        vhost: "/".into(),
        source: "amq.direct".into(),
        destination: "mine".into(),
        to_queue: true,
        routing_key: "k".into(),
        arguments: FieldTable::default(),
    };
    locked(h.admin(AdminRequest::Bind {
        actor: user(),
        binding: binding.clone(),
    }));
    locked(h.admin(AdminRequest::DeclareQueue {
        actor: user(),
        vhost: "/".into(),
        name: "mine".into(),
        durable: false,
        auto_delete: false,
        arguments: FieldTable::default(),
    }));
    locked(h.admin(AdminRequest::Get {
        actor: user(),
        vhost: "/".into(),
        queue: "mine".into(),
        count: 1,
        ack: GetAck::Requeue,
    }));
    assert_eq!(h.queues().len(), 1, "still there");
    // The node itself may delete it, as rabbitmqctl may.
    h.admin(AdminRequest::DeleteQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: "mine".into(),
        if_empty: false,
        if_unused: false,
    })
    .unwrap();
    assert!(h.queues().is_empty());
    h.drain();
    h.broker.check_invariants();
}

#[test]
fn tables_the_store_could_not_read_back_are_refused() {
    use crate::proto::table::FieldValue;
    let mut h = Harness::new();
    let mut deep = FieldValue::Bool(true);
    for _ in 0..40 {
        deep = FieldValue::Table([("k", deep)].into_iter().collect());
    }
    let deep: FieldTable = [("x", deep)].into_iter().collect();
    let big: FieldTable = [(
        "x",
        FieldValue::LongStr(Bytes::from(vec![b'a'; 200 * 1024])),
    )]
    .into_iter()
    .collect();
    for arguments in [deep.clone(), big] {
        let r = h.admin(AdminRequest::DeclareQueue {
            actor: Actor::Node,
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: arguments.clone(),
        });
        assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
        let r = h.admin(AdminRequest::DeclareExchange {
            actor: Actor::Node,
            vhost: "/".into(),
            name: "x".into(),
            kind: "headers".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments,
        });
        assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    }
    let r = h.admin(AdminRequest::Publish {
        actor: Actor::Node,
        vhost: "/".into(),
        exchange: "amq.default".into(),
        routing_key: "q".into(),
        properties: Box::new(BasicProperties {
            headers: Some(deep.clone()),
            ..BasicProperties::default()
        }),
        body: Bytes::new(),
    });
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    let defs = Definitions {
        queues: vec![QueueDef {
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: deep,
        }],
        ..Definitions::default()
    };
    let r = h.admin(AdminRequest::ImportDefinitions(Box::new(defs)));
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    assert!(h.queues().is_empty());
    assert!(
        !h.ops
            .iter()
            .any(|op| matches!(op, StoreOp::PutQueue(_) | StoreOp::PutExchange(_))),
        "nothing stored"
    );
}

fn ready(h: &mut Harness, name: &str) -> u64 {
    h.queues()
        .iter()
        .find(|q| q.name == name)
        .map(|q| q.messages_ready)
        .unwrap()
}

fn peek(h: &mut Harness, actor: Actor, queue: &str) -> Vec<GotMessage> {
    match h.admin(AdminRequest::Peek {
        actor,
        vhost: "/".into(),
        queue: queue.into(),
        count: 10,
    }) {
        Ok(AdminReply::Messages(m)) => m,
        other => panic!("{other:?}"),
    }
}

fn republish(actor: Actor, queue: &str, positions: Vec<u64>) -> AdminRequest {
    AdminRequest::Republish {
        actor,
        vhost: "/".into(),
        queue: queue.into(),
        positions,
    }
}

#[test]
fn peek_reads_without_taking_or_flagging() {
    let mut h = Harness::new();
    h.add_user("reader", "p", "/", ["", "", ".*"]);
    h.add_user("nobody", "p", "/", ["", "", ""]);
    h.declare_durable_queue(Actor::Node, "/", "q");
    for body in [&b"one"[..], b"two"] {
        h.admin(publish(Actor::Node, "q", body, true)).unwrap();
    }
    h.drain();
    for _ in 0..3 {
        let m = peek(&mut h, Actor::User("reader".into()), "q");
        assert_eq!(m.len(), 2);
        assert_eq!(&m[0].message.body[..], b"one");
        assert!(m.iter().all(|m| !m.redelivered));
        assert!(m[0].position < m[1].position);
    }
    assert_eq!(ready(&mut h, "q"), 2);
    let stats = h.queues()[0].stats;
    assert_eq!((stats.get, stats.ack, stats.redeliver), (0, 0, 0));
    let denied = h.admin(AdminRequest::Peek {
        actor: Actor::User("nobody".into()),
        vhost: "/".into(),
        queue: "q".into(),
        count: 1,
    });
    assert_eq!(denied.unwrap_err().kind, AdminErrorKind::AccessRefused);
    // The first delivery after a peek is still a first delivery.
    let Ok(AdminReply::Messages(m)) = h.admin(AdminRequest::Get {
        actor: Actor::Node,
        vhost: "/".into(),
        queue: "q".into(),
        count: 1,
        ack: GetAck::Ack,
    }) else {
        panic!()
    };
    assert!(!m[0].redelivered);
    h.drain();
    h.broker.check_invariants();
}

#[test]
fn republish_sends_dead_letters_back_or_moves_nothing() {
    use crate::proto::table::FieldValue;
    let mut h = Harness::new();
    h.add_user("reader", "p", "/", ["", "", ".*"]);
    h.declare_durable_queue(Actor::Node, "/", "parked");
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange", FieldValue::LongStr(Bytes::new()));
    args.insert(
        "x-dead-letter-routing-key",
        FieldValue::LongStr(Bytes::from_static(b"parked")),
    );
    h.admin(AdminRequest::DeclareQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: "work".into(),
        durable: true,
        auto_delete: false,
        arguments: args,
    })
    .unwrap();
    h.admin(publish(Actor::Node, "work", b"retry me", true))
        .unwrap();
    h.admin(AdminRequest::Get {
        actor: Actor::Node,
        vhost: "/".into(),
        queue: "work".into(),
        count: 1,
        ack: GetAck::Reject,
    })
    .unwrap();
    h.drain();
    assert_eq!((ready(&mut h, "work"), ready(&mut h, "parked")), (0, 1));
    // A message that never died has nowhere to go back to.
    h.admin(publish(Actor::Node, "parked", b"plain", true))
        .unwrap();
    h.drain();
    let m = peek(&mut h, Actor::Node, "parked");
    let (dead, plain) = (m[0].position, m[1].position);
    let e = h
        .admin(republish(Actor::Node, "parked", vec![dead, plain]))
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::BadRequest);
    assert!(e.reason.contains("no x-death"), "{}", e.reason);
    // Writing to the original exchange needs the write permission.
    let e = h
        .admin(republish(
            Actor::User("reader".into()),
            "parked",
            vec![dead],
        ))
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::AccessRefused);
    assert_eq!(ready(&mut h, "parked"), 2, "nothing moved");

    h.ops.clear();
    let r = h.run_admin(republish(Actor::Node, "parked", vec![dead, dead]), 9_000);
    assert_eq!(r.result, Ok(AdminReply::Count(1)));
    assert!(r.waited_for_sync, "the move is answered once it is on disk");
    assert!(h.ops.iter().any(|op| matches!(op, StoreOp::Dequeue { .. })));
    assert_eq!((ready(&mut h, "work"), ready(&mut h, "parked")), (1, 1));
    let back = peek(&mut h, Actor::Node, "work");
    assert_eq!(&back[0].message.body[..], b"retry me");
    assert_eq!(back[0].message.routing_key, "work");
    let e = h
        .admin(republish(Actor::Node, "parked", vec![dead]))
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::NotFound);

    // A dead letter whose queue is gone would route nowhere: it stays.
    h.admin(AdminRequest::Get {
        actor: Actor::Node,
        vhost: "/".into(),
        queue: "work".into(),
        count: 1,
        ack: GetAck::Reject,
    })
    .unwrap();
    h.admin(AdminRequest::DeleteQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: "work".into(),
        if_empty: false,
        if_unused: false,
    })
    .unwrap();
    h.drain();
    let again = peek(&mut h, Actor::Node, "parked");
    let last = again.last().unwrap().position;
    let e = h
        .admin(republish(Actor::Node, "parked", vec![last]))
        .unwrap_err();
    assert!(e.reason.contains("would route to no queue"), "{}", e.reason);
    assert_eq!(ready(&mut h, "parked"), 2);
    h.drain();
    h.broker.check_invariants();
}

mod policies;

/// Names past AMQP's 255 bytes, from the HTTP API or a definitions document, are refused
/// before anything changes: none could be used over AMQP, and some are part of the store's
/// keys, which the disk limits to 64 KiB.
#[test]
fn names_past_255_bytes_are_refused_before_anything_changes() {
    let mut h = Harness::new();
    let long = "e".repeat(256);
    let exchange = |name: &str| ExchangeDef {
        vhost: "/".into(),
        name: name.into(),
        kind: "fanout".into(),
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    };
    let defs = Definitions {
        exchanges: vec![exchange("fine"), exchange(&"e".repeat(70_000))],
        ..Definitions::default()
    };
    let ops_before = h.ops.len();
    let r = h.admin(AdminRequest::ImportDefinitions(Box::new(defs)));
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    let listed = h.admin(AdminRequest::ListExchanges { vhost: None });
    let Ok(AdminReply::Exchanges(xs)) = listed else {
        panic!("{listed:?}")
    };
    assert!(
        !xs.iter().any(|x| x.name == "fine"),
        "nothing of the import happened"
    );
    let topic = TopicPermissionRecord {
        user: "guest".into(),
        vhost: "/".into(),
        exchange: long.clone(),
        write: ".*".into(),
        read: ".*".into(),
    };
    let r = h.admin(AdminRequest::SetTopicPermissions(topic));
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    let r = h.admin(AdminRequest::DeclareQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: long.clone(),
        durable: true,
        auto_delete: false,
        arguments: FieldTable::default(),
    });
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    let policy = PolicyRecord {
        operator: false,
        vhost: "/".into(),
        name: long.clone(),
        pattern: ".*".into(),
        apply_to: "all".into(),
        priority: 0,
        definition: FieldTable::default(),
    };
    let r = h.admin(AdminRequest::SetPolicy(policy));
    assert_eq!(r.unwrap_err().kind, AdminErrorKind::BadRequest);
    assert_eq!(h.ops.len(), ops_before, "nothing was stored");
    // 255 bytes is a name like any other.
    let r = h.admin(AdminRequest::DeclareQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: "q".repeat(255),
        durable: true,
        auto_delete: false,
        arguments: FieldTable::default(),
    });
    assert!(r.is_ok(), "{r:?}");
    h.drain();
    h.broker.check_invariants();
}

#[test]
fn definitions_of_a_missing_vhost_and_of_the_default_exchange_as_rabbitmq_answers() {
    let mut h = Harness::new();
    let export = h.admin(AdminRequest::ExportDefinitions {
        vhost: Some("nosuch".into()),
    });
    let e = export.unwrap_err();
    assert_eq!(
        (e.kind, e.reason.as_str()),
        (AdminErrorKind::BadRequest, "vhost_not_found")
    );
    let into_missing = Definitions {
        into_vhost: Some("nosuch".into()),
        ..Definitions::default()
    };
    let e = h
        .admin(AdminRequest::ImportDefinitions(Box::new(into_missing)))
        .unwrap_err();
    assert_eq!(
        (e.kind, e.reason.as_str()),
        (AdminErrorKind::NotFound, "vhost_not_found")
    );
    // A binding from the default exchange is taken without effect; the others apply.
    let binding = |source: &str| BindingInfo {
        vhost: "/".into(),
        source: source.into(),
        destination: "q".into(),
        to_queue: true,
        routing_key: "k".into(),
        arguments: FieldTable::default(),
    };
    let defs = Definitions {
        into_vhost: Some("/".into()),
        queues: vec![QueueDef {
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: FieldTable::default(),
        }],
        bindings: vec![binding(""), binding("amq.direct")],
        ..Definitions::default()
    };
    h.admin(AdminRequest::ImportDefinitions(Box::new(defs)))
        .unwrap();
    let Ok(AdminReply::Definitions(back)) = h.admin(AdminRequest::ExportDefinitions {
        vhost: Some("/".into()),
    }) else {
        panic!("an export");
    };
    assert_eq!(back.bindings, vec![binding("amq.direct")]);
}

/// A message whose `x-death` (written by its publisher) names `exchange` and `key`.
fn forged_dead_letter(actor: Actor, queue: &str, exchange: &str, key: &str) -> AdminRequest {
    use crate::proto::table::FieldValue;
    let text = |s: &str| FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()));
    let mut death = FieldTable::default();
    death.insert("exchange", text(exchange));
    death.insert("routing-keys", FieldValue::Array(vec![text(key)]));
    let mut headers = FieldTable::default();
    headers.insert("x-death", FieldValue::Array(vec![FieldValue::Table(death)]));
    let mut request = publish(actor, queue, b"forged", false);
    if let AdminRequest::Publish { properties, .. } = &mut request {
        properties.headers = Some(headers);
    }
    request
}

/// The exchange and routing key a republish uses come from headers the publisher wrote:
/// the user's topic permissions and the bound on routing keys hold there as for any
/// publish, and the messages chosen are the ones that move.
#[test]
fn republish_holds_forged_dead_letters_to_topic_permissions_and_key_bounds() {
    let mut h = Harness::new();
    h.add_user("u", "p", "/", [".*", ".*", ".*"]);
    h.admin(AdminRequest::SetTopicPermissions(TopicPermissionRecord {
        user: "u".into(),
        vhost: "/".into(),
        exchange: "amq.topic".into(),
        write: "^allowed\\.".into(),
        read: ".*".into(),
    }))
    .unwrap();
    let user = || Actor::User("u".into());
    h.declare_durable_queue(Actor::Node, "/", "parked");
    h.declare_durable_queue(Actor::Node, "/", "sink");
    h.admin(AdminRequest::Bind {
        actor: Actor::Node,
        binding: BindingInfo {
            vhost: "/".into(),
            source: "amq.topic".into(),
            destination: "sink".into(),
            to_queue: true,
            routing_key: "#".into(),
            arguments: FieldTable::default(),
        },
    })
    .unwrap();
    let long = "k".repeat(256);
    for key in ["forbidden.key", "allowed.one", long.as_str(), "allowed.two"] {
        h.admin(forged_dead_letter(user(), "parked", "amq.topic", key))
            .unwrap();
    }
    h.drain();
    let m = peek(&mut h, Actor::Node, "parked");
    let at: Vec<u64> = m.iter().map(|m| m.position).collect();
    let e = h
        .admin(republish(user(), "parked", vec![at[0]]))
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::AccessRefused, "{}", e.reason);
    assert!(e.reason.contains("forbidden.key"), "{}", e.reason);
    let e = h
        .admin(republish(user(), "parked", vec![at[2]]))
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::BadRequest);
    assert!(e.reason.contains("256 bytes"), "{}", e.reason);
    assert_eq!(ready(&mut h, "sink"), 0, "nothing moved");
    // Two of four, given out of order: those two move, the others stay in order.
    assert_eq!(
        h.admin(republish(user(), "parked", vec![at[3], at[1]])),
        Ok(AdminReply::Count(2))
    );
    h.drain();
    let left: Vec<u64> = peek(&mut h, Actor::Node, "parked")
        .iter()
        .map(|m| m.position)
        .collect();
    assert_eq!(left, [at[0], at[2]]);
    let moved: Vec<String> = peek(&mut h, Actor::Node, "sink")
        .iter()
        .map(|m| m.message.routing_key.clone())
        .collect();
    assert_eq!(moved, ["allowed.two", "allowed.one"]);
    h.broker.check_invariants();
}

/// A get that requeues puts every message back where it was, marked redelivered, the
/// rest of the queue untouched.
#[test]
fn a_get_that_requeues_leaves_the_queue_in_order() {
    let mut h = Harness::new();
    h.declare_durable_queue(Actor::Node, "/", "q");
    let bodies: Vec<&'static [u8]> = (0..50u8)
        .map(|i| &*Box::leak(vec![i].into_boxed_slice()))
        .collect();
    for body in &bodies {
        h.admin(publish(Actor::Node, "q", body, false)).unwrap();
    }
    h.drain();
    let Ok(AdminReply::Messages(got)) = h.admin(AdminRequest::Get {
        actor: Actor::Node,
        vhost: "/".into(),
        queue: "q".into(),
        count: 20,
        ack: GetAck::Requeue,
    }) else {
        panic!("get failed")
    };
    assert_eq!(got.len(), 20);
    h.drain();
    let Ok(AdminReply::Messages(all)) = h.admin(AdminRequest::Peek {
        actor: Actor::Node,
        vhost: "/".into(),
        queue: "q".into(),
        count: 100,
    }) else {
        panic!("peek failed")
    };
    let order: Vec<u8> = all.iter().map(|m| m.message.body[0]).collect();
    assert_eq!(order, (0..50).collect::<Vec<u8>>());
    assert!(all[..20].iter().all(|m| m.redelivered));
    assert!(all[20..].iter().all(|m| !m.redelivered));
    h.broker.check_invariants();
}
