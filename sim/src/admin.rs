//! An operator in the simulated world: administrative requests (`warren ctl`, the HTTP
//! API) through [`Broker::handle_admin`], one at a time, on users, vhosts and permissions
//! of its own, with a session (a connection logged in as one of its users, on one of its
//! vhosts) that its deletes must close.
//!
//! It keeps the state its answered requests left and checks:
//! - each answer against that state (a create says created exactly when the object was
//!   new; a delete of a missing object is refused; listings show exactly what it expects);
//! - that deleting a user or a vhost closes the session on it (320 CONNECTION_FORCED)
//!   before the answer comes;
//! - that an answered change survives a crash: answers wait for the store, so what a
//!   restarted broker recovers holds every answered change. A request in flight at the
//!   crash may or may not have reached the disk; what was recovered decides for the
//!   objects it touched.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::rngs::SmallRng;

use warren::broker::admin::{
    Actor, AdminErrorKind, AdminId, AdminReply, AdminRequest, AdminResult, Definitions,
    ExchangeDef, Password, PutMode,
};
use warren::broker::{Broker, ConnInfo, QueueId};
use warren::proto::command::{Command, ConnId, Login, Reply};
use warren::proto::constants::CONNECTION_FORCED;
use warren::proto::method::Method;
use warren::proto::table::FieldTable;
use warren::store::{
    MAX_STORED_NAME_BYTES, PermissionRecord, PolicyRecord, Recovered, TopicPermissionRecord,
};

use crate::Violation;
use crate::policies::PolicyBook;

/// The operator's users and vhosts: names no other client uses.
const USERS: [&str; 3] = ["op-u0", "op-u1", "op-u2"];
const VHOSTS: [&str; 2] = ["op-v0", "op-v1"];
const PASSWORD: &str = "op-secret";

/// Mean virtual time between two requests.
const MEAN_GAP_MS: u64 = 150;

/// What the operator did (for the seed summary).
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminStats {
    /// Requests sent.
    pub requests: u64,
    /// Answers received and checked.
    pub answered: u64,
    /// Answers that waited for a store batch (a durable change).
    pub durable: u64,
    /// Sessions the broker closed because their user or vhost was deleted.
    pub forced_closes: u64,
    /// Crash recoveries whose users, vhosts and permissions were checked.
    pub recoveries_checked: u64,
    /// Policy changes the broker applied (set or cleared, both kinds, and the workload's
    /// limit policy).
    pub policy_changes: u64,
    /// Queue listings checked against the policy rules.
    pub policy_checks: u64,
    /// Changes of the workload's limit policy.
    pub limit_changes: u64,
    /// Requests naming something past AMQP's 255 bytes, refused as they must be.
    pub oversized_refused: u64,
    /// Peeks at the workload's queues answered and checked.
    pub peeks: u64,
    /// Messages they returned.
    pub peeked: u64,
    /// Peeks that held fewer than they asked for and the queue had: stopped at the
    /// queue's memory budget, under the memory alarm, or after `MAX_ADMIN_READS` reads
    /// (consumers taking what came in).
    pub peeks_short: u64,
    /// Of those, the ones that had waited for `MAX_ADMIN_READS` reads.
    pub peeks_read_capped: u64,
}

/// One object the operator owns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    User(String),
    Vhost(String),
    Permission(String, String),
}

/// The operator.
#[derive(Debug)]
pub struct Operator {
    rng: SmallRng,
    next_at_ms: u64,
    next_id: AdminId,
    /// The request in flight: its number, the request, and whether it was answered
    /// before its batch was synced (set when the answer comes).
    in_flight: Option<(AdminId, AdminRequest)>,
    /// The queue a peek in flight looks at, and the reads of it that came back while the
    /// peek waited: the broker answers from memory after `MAX_ADMIN_READS` of them.
    peek_reads: Option<(QueueId, usize)>,
    /// What answered requests left.
    users: BTreeSet<String>,
    vhosts: BTreeSet<String>,
    /// Permission (user, vhost) -> configure pattern.
    permissions: BTreeMap<(String, String), String>,
    /// The session: its connection, user and vhost, and whether it is open.
    session: Option<Session>,
    /// Objects whose state a crash left in doubt until the next recovery is checked.
    doubtful: BTreeSet<Key>,
    /// Connection ids for sessions (far above the world's links).
    next_conn: ConnId,
    /// The first store batch emitted since the request in flight was sent: the one that
    /// holds its changes, if it made any.
    change_batch: Option<u64>,
    /// No more requests (the liveness phase).
    stopped: bool,
    /// The memory alarm was on at some point while the request in flight waited.
    alarm_seen: bool,
    /// Policies, operator policies and the queues they govern.
    policies: PolicyBook,
    /// The workload's limit policy as the last request set it, for the message model.
    limit_change: Option<Option<(String, u64)>>,
    pub stats: AdminStats,
}

/// The broker's state an answer is checked against.
#[derive(Debug, Clone, Copy)]
pub struct AnswerTime {
    /// The memory alarm is on.
    pub memory_alarm: bool,
    /// A queue's memory budget.
    pub queue_budget: u64,
}

#[derive(Debug, Clone)]
struct Session {
    conn: ConnId,
    user: String,
    vhost: String,
    /// Logged in and opened (the broker said so).
    open: bool,
}

impl Operator {
    /// An operator drawing its choices from `rng`.
    pub fn new(rng: SmallRng) -> Self {
        Operator {
            rng,
            next_at_ms: 50,
            next_id: 1,
            in_flight: None,
            peek_reads: None,
            users: BTreeSet::new(),
            vhosts: BTreeSet::new(),
            permissions: BTreeMap::new(),
            session: None,
            doubtful: BTreeSet::new(),
            next_conn: 1 << 40,
            change_batch: None,
            stopped: false,
            alarm_seen: false,
            policies: PolicyBook::default(),
            limit_change: None,
            stats: AdminStats::default(),
        }
    }

    /// When the operator acts next, if it is not waiting for an answer.
    pub fn next_ms(&self) -> Option<u64> {
        (self.in_flight.is_none() && !self.stopped).then_some(self.next_at_ms)
    }

    /// No more requests once the one in flight is answered.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Whether a request waits for its answer.
    pub fn waiting(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The broker emitted store batch `batch`.
    pub fn batch_emitted(&mut self, batch: u64) {
        if self.in_flight.is_some() && self.change_batch.is_none() {
            self.change_batch = Some(batch);
        }
    }

    /// The workload's limit policy as the request just sent set it (`Some(None)`:
    /// cleared): the broker applied it as it took the request.
    pub fn take_limit_change(&mut self) -> Option<Option<(String, u64)>> {
        self.limit_change.take()
    }

    /// The alarms the broker has in force now: a request in flight may be answered under
    /// any of them.
    pub fn alarms_now(&mut self, memory: bool) {
        self.alarm_seen |= memory;
    }

    /// Whether `conn` is the operator's session.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.session.as_ref().is_some_and(|s| s.conn == conn)
    }

    /// The session's connection, while there is one.
    pub fn session_conn(&self) -> Option<ConnId> {
        self.session.as_ref().map(|s| s.conn)
    }

    /// Acts: opens a session (returning its connection) or sends a request.
    pub fn act(&mut self, broker: &mut Broker, now_ms: u64) -> Option<ConnId> {
        let gap = self.rng.gen_range(1..=2 * MEAN_GAP_MS);
        self.next_at_ms = now_ms + gap;
        if self.session.is_none() && self.rng.gen_bool(0.4) {
            return Some(self.open_session(broker, now_ms));
        }
        let request = if self.rng.gen_bool(0.03) {
            self.oversized()
        } else if self.rng.gen_bool(0.1) {
            self.peek()
        } else if self.rng.gen_bool(0.35) {
            self.policies.pick(&mut self.rng, &VHOSTS)
        } else {
            self.pick()
        };
        self.limit_change = PolicyBook::limit_change(&request);
        if self.limit_change.is_some() {
            self.stats.limit_changes += 1;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.stats.requests += 1;
        self.change_batch = None;
        self.in_flight = Some((id, request.clone()));
        self.peek_reads = match &request {
            AdminRequest::Peek { vhost, queue, .. } => {
                broker.queue(vhost, queue).map(|q| (q.id, 0))
            }
            _ => None,
        };
        self.alarm_seen = broker
            .alarms()
            .any(|r| r == warren::broker::Resource::Memory);
        broker.handle_admin(id, request, now_ms);
        None
    }

    /// A request naming something longer than AMQP's 255 bytes (up to past the 64 KiB the
    /// disk allows a key), as the HTTP API and definitions documents can: the broker must
    /// refuse it with 400 and store nothing.
    fn oversized(&mut self) -> AdminRequest {
        let len = if self.rng.gen_bool(0.5) {
            self.rng.gen_range(256..1024)
        } else {
            self.rng.gen_range(65_000..70_000)
        };
        let long = "n".repeat(len);
        let user = USERS[self.rng.gen_range(0..USERS.len())].to_string();
        let vhost = VHOSTS[self.rng.gen_range(0..VHOSTS.len())].to_string();
        match self.rng.gen_range(0..4) {
            0 => AdminRequest::PutVhost {
                name: long,
                mode: PutMode::Upsert,
            },
            1 => AdminRequest::SetTopicPermissions(TopicPermissionRecord {
                user,
                vhost,
                exchange: long,
                write: ".*".into(),
                read: ".*".into(),
            }),
            2 => AdminRequest::ImportDefinitions(Box::new(Definitions {
                exchanges: vec![ExchangeDef {
                    vhost,
                    name: long,
                    kind: "fanout".into(),
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::default(),
                }],
                ..Definitions::default()
            })),
            _ => AdminRequest::SetPolicy(PolicyRecord {
                operator: false,
                vhost,
                name: long,
                pattern: "^q".into(),
                apply_to: "queues".into(),
                priority: 0,
                definition: FieldTable::default(),
            }),
        }
    }

    /// A look at the head of one of the workload's queues (maybe not declared yet), as the
    /// management UI's get does: it takes nothing, and must hold as many messages as it
    /// asked for when the queue has that many ready, paged ones included, unless what it
    /// holds fills the queue's memory budget or the memory alarm is on.
    fn peek(&mut self) -> AdminRequest {
        AdminRequest::Peek {
            actor: Actor::Node,
            vhost: "/".into(),
            queue: format!("q{}", self.rng.gen_range(0..5)),
            count: self.rng.gen_range(1..=300),
        }
    }

    fn pick(&mut self) -> AdminRequest {
        let user = USERS[self.rng.gen_range(0..USERS.len())].to_string();
        let vhost = VHOSTS[self.rng.gen_range(0..VHOSTS.len())].to_string();
        match self.rng.gen_range(0..10) {
            0 | 1 => AdminRequest::PutUser {
                name: user,
                password: Password::Plain(PASSWORD.into()),
                tags: Some(Vec::new()),
                mode: PutMode::Upsert,
            },
            2 => AdminRequest::DeleteUser { name: user },
            3 | 4 => AdminRequest::PutVhost {
                name: vhost,
                mode: PutMode::Upsert,
            },
            5 => AdminRequest::DeleteVhost { name: vhost },
            6 | 7 => AdminRequest::SetPermissions(PermissionRecord {
                user,
                vhost,
                configure: format!("^c{}$", self.rng.gen_range(0..3)),
                write: ".*".into(),
                read: ".*".into(),
            }),
            8 => AdminRequest::ClearPermissions { user, vhost },
            _ => match self.rng.gen_range(0..3) {
                0 => AdminRequest::ListUsers,
                1 => AdminRequest::ListVhosts,
                _ => AdminRequest::ListPermissions,
            },
        }
    }

    /// Connects as one of its users to one of its vhosts, straight to the broker (the
    /// session exists to be closed by deletes; its protocol is the clients' business).
    fn open_session(&mut self, broker: &mut Broker, now_ms: u64) -> ConnId {
        // Mostly as a user that may open the vhost (a session for the deletes to close),
        // sometimes as anyone (a login or an open the broker must refuse).
        let permitted: Vec<&(String, String)> = self.permissions.keys().collect();
        let (user, vhost) = if !permitted.is_empty() && self.rng.gen_bool(0.8) {
            permitted[self.rng.gen_range(0..permitted.len())].clone()
        } else {
            (
                USERS[self.rng.gen_range(0..USERS.len())].to_string(),
                VHOSTS[self.rng.gen_range(0..VHOSTS.len())].to_string(),
            )
        };
        let conn = self.next_conn;
        self.next_conn += 1;
        let info = ConnInfo {
            peer: format!("10.0.0.9:{}", conn % 60_000),
            loopback: false,
        };
        broker.handle_connect(conn, info, now_ms);
        broker.handle_command(
            conn,
            Command::Login(Login {
                mechanism: "PLAIN".into(),
                username: user.clone(),
                password: PASSWORD.into(),
                client_properties: FieldTable::default(),
            }),
            now_ms,
        );
        broker.handle_command(
            conn,
            Command::OpenVhost {
                vhost: vhost.clone(),
            },
            now_ms,
        );
        self.session = Some(Session {
            conn,
            user,
            vhost,
            open: false,
        });
        conn
    }

    /// A reply on the session. Returns the command the connection's driver would send
    /// back, if any (the connection is gone once the broker closed it).
    pub fn session_reply(&mut self, reply: &Reply) -> Result<Option<Command>, Violation> {
        let Some(s) = self.session.clone() else {
            return Ok(None);
        };
        match reply {
            Reply::Method {
                channel: 0,
                method: Method::ConnectionOpenOk(_),
            } => {
                let may = self.users.contains(&s.user)
                    && self.vhosts.contains(&s.vhost)
                    && self
                        .permissions
                        .contains_key(&(s.user.clone(), s.vhost.clone()));
                let doubtful = self.doubtful.contains(&Key::User(s.user.clone()))
                    || self.doubtful.contains(&Key::Vhost(s.vhost.clone()))
                    || self
                        .doubtful
                        .contains(&Key::Permission(s.user.clone(), s.vhost.clone()));
                if !may && !doubtful && !self.changing(&s.user, &s.vhost) {
                    return Err(Violation(format!(
                        "operator: session {} opened vhost {} as {} without the user, the vhost or a permission",
                        s.conn, s.vhost, s.user
                    )));
                }
                if let Some(session) = self.session.as_mut() {
                    session.open = true;
                }
                Ok(None)
            }
            Reply::Method {
                channel: 0,
                method: Method::ConnectionClose(c),
            } => {
                if s.open && c.reply_code == CONNECTION_FORCED {
                    self.stats.forced_closes += 1;
                }
                self.session = None;
                Ok(Some(Command::Closed))
            }
            Reply::Disconnect => {
                self.session = None;
                Ok(Some(Command::Closed))
            }
            _ => Ok(None),
        }
    }

    /// Whether the request in flight changes `user`, `vhost` or their permission (its
    /// effect on a login is then not known yet).
    fn changing(&self, user: &str, vhost: &str) -> bool {
        self.in_flight.as_ref().is_some_and(|(_, r)| match r {
            AdminRequest::PutUser { name, .. } | AdminRequest::DeleteUser { name } => name == user,
            AdminRequest::PutVhost { name, .. } | AdminRequest::DeleteVhost { name } => {
                name == vhost
            }
            AdminRequest::SetPermissions(p) => p.user == user && p.vhost == vhost,
            AdminRequest::ClearPermissions { user: u, vhost: v } => u == user && v == vhost,
            _ => false,
        })
    }

    /// The broker answered request `id`; `synced` is the last batch synced now.
    pub fn answered(
        &mut self,
        id: AdminId,
        result: AdminResult,
        synced: u64,
        at: AnswerTime,
    ) -> Result<(), Violation> {
        let Some((expected_id, request)) = self.in_flight.take() else {
            return Err(Violation(format!(
                "operator: answer {id} with no request in flight"
            )));
        };
        if id != expected_id {
            return Err(Violation(format!(
                "operator: answer {id} while {expected_id} was in flight"
            )));
        }
        self.stats.answered += 1;
        let changed = self.check_answer(&request, &result, at)?;
        if changed {
            if !self.change_batch.is_some_and(|b| b <= synced) {
                return Err(Violation(format!(
                    "operator: {request:?} answered before its change was synced (its batch {:?}, last synced {synced})",
                    self.change_batch
                )));
            }
            self.stats.durable += 1;
        }
        Ok(())
    }

    /// Checks an answer against the operator's state and applies it; returns whether
    /// the request changed something durable.
    fn check_answer(
        &mut self,
        request: &AdminRequest,
        result: &AdminResult,
        at: AnswerTime,
    ) -> Result<bool, Violation> {
        if oversized(request) {
            if !matches!(result, Err(e) if e.kind == AdminErrorKind::BadRequest) {
                return Err(Violation(format!(
                    "operator: a request naming something past 255 bytes was not refused with 400: {}; got {result:?}",
                    brief(request)
                )));
            }
            self.stats.oversized_refused += 1;
            return Ok(false);
        }
        if PolicyBook::owns(request) {
            let (vhosts, doubtful) = (&self.vhosts, &self.doubtful);
            let known = |v: &str| {
                (!doubtful.contains(&Key::Vhost(v.to_string()))).then(|| vhosts.contains(v))
            };
            let changed = self.policies.answered(request, result, known)?;
            self.stats.policy_changes = self.policies.changes;
            self.stats.policy_checks = self.policies.checked;
            return Ok(changed);
        }
        let fail = |what: String| {
            Err(Violation(format!(
                "operator: {request:?}: {what}; got {result:?}"
            )))
        };
        match request {
            AdminRequest::PutUser { name, .. } => {
                let created = !self.users.contains(name);
                if self.doubtful.remove(&Key::User(name.clone())) {
                    // Either answer is right; the state is now known.
                } else if !matches!(result, Ok(AdminReply::Put { created: c }) if *c == created) {
                    return fail(format!("expected created={created}"));
                }
                self.users.insert(name.clone());
                Ok(true)
            }
            AdminRequest::DeleteUser { name } => {
                let existed = self.users.remove(name);
                let doubtful = self.doubtful.remove(&Key::User(name.clone()));
                if !doubtful && existed != result.is_ok() {
                    return fail(format!("user existed: {existed}"));
                }
                self.permissions.retain(|(u, _), _| u != name);
                if result.is_ok() {
                    self.session_gone(|s| s.user == *name)?;
                }
                Ok(result.is_ok())
            }
            AdminRequest::PutVhost { name, .. } => {
                let created = !self.vhosts.contains(name);
                if self.doubtful.remove(&Key::Vhost(name.clone())) {
                } else if !matches!(result, Ok(AdminReply::Put { created: c }) if *c == created) {
                    return fail(format!("expected created={created}"));
                }
                self.vhosts.insert(name.clone());
                Ok(created)
            }
            AdminRequest::DeleteVhost { name } => {
                let existed = self.vhosts.remove(name);
                let doubtful = self.doubtful.remove(&Key::Vhost(name.clone()));
                if !doubtful && existed != result.is_ok() {
                    return fail(format!("vhost existed: {existed}"));
                }
                self.permissions.retain(|(_, v), _| v != name);
                if result.is_ok() {
                    self.policies.vhost_deleted(name);
                    self.session_gone(|s| s.vhost == *name)?;
                }
                Ok(result.is_ok())
            }
            AdminRequest::SetPermissions(p) => {
                let key = (p.user.clone(), p.vhost.clone());
                let may = self.users.contains(&p.user) && self.vhosts.contains(&p.vhost);
                let doubtful = self.doubt_of(&p.user, &p.vhost);
                if !doubtful && may != result.is_ok() {
                    return fail(format!("user and vhost exist: {may}"));
                }
                self.doubtful
                    .remove(&Key::Permission(key.0.clone(), key.1.clone()));
                if result.is_ok() {
                    self.permissions.insert(key, p.configure.clone());
                }
                Ok(result.is_ok())
            }
            AdminRequest::ClearPermissions { user, vhost } => {
                let may = self.users.contains(user) && self.vhosts.contains(vhost);
                let doubtful = self.doubt_of(user, vhost);
                if !doubtful && may != result.is_ok() {
                    return fail(format!("user and vhost exist: {may}"));
                }
                self.doubtful
                    .remove(&Key::Permission(user.clone(), vhost.clone()));
                let had = self
                    .permissions
                    .remove(&(user.clone(), vhost.clone()))
                    .is_some();
                Ok(result.is_ok() && had)
            }
            AdminRequest::ListUsers => {
                let Ok(AdminReply::Users(users)) = result else {
                    return fail("expected users".into());
                };
                let seen: BTreeSet<String> = users
                    .iter()
                    .map(|u| u.name.clone())
                    .filter(|n| n.starts_with("op-"))
                    .collect();
                self.check_listing(&seen, &self.users.clone(), Key::User, "users")?;
                Ok(false)
            }
            AdminRequest::ListVhosts => {
                let Ok(AdminReply::Vhosts(vhosts)) = result else {
                    return fail("expected vhosts".into());
                };
                let seen: BTreeSet<String> = vhosts
                    .iter()
                    .map(|v| v.name.clone())
                    .filter(|n| n.starts_with("op-"))
                    .collect();
                self.check_listing(&seen, &self.vhosts.clone(), Key::Vhost, "vhosts")?;
                Ok(false)
            }
            AdminRequest::ListPermissions => {
                let Ok(AdminReply::Permissions(perms)) = result else {
                    return fail("expected permissions".into());
                };
                let seen: BTreeMap<(String, String), String> = perms
                    .iter()
                    .filter(|p| p.user.starts_with("op-"))
                    .map(|p| ((p.user.clone(), p.vhost.clone()), p.configure.clone()))
                    .collect();
                self.check_permissions(&seen)?;
                Ok(false)
            }
            AdminRequest::Peek { count, .. } => {
                let m = match result {
                    Ok(AdminReply::Messages(m)) => m,
                    Err(e) if e.kind == AdminErrorKind::NotFound => return Ok(false),
                    _ => return fail("expected messages".into()),
                };
                self.stats.peeks += 1;
                self.stats.peeked += m.len() as u64;
                let ready = m.first().map_or(0, |m| m.message_count);
                let want = (*count as u64).min(ready);
                // A short answer holds every message in memory, so its cost is the queue's
                // memory: it may stop at the queue's budget, or under the memory alarm.
                let held: u64 = m
                    .iter()
                    .map(|m| warren::store::memory_cost(&m.message))
                    .sum();
                // Or it waited for as many reads as the broker allows one (consumers may
                // take what each brings).
                let capped = self
                    .peek_reads
                    .take()
                    .is_some_and(|(_, reads)| reads >= warren::broker::admin::MAX_ADMIN_READS);
                let short_allowed =
                    at.memory_alarm || self.alarm_seen || held >= at.queue_budget || capped;
                // The messages themselves are left out of the report: it names them by
                // position.
                let positions: Vec<u64> = m.iter().map(|m| m.position).collect();
                let short = (m.len() as u64) < want;
                self.stats.peeks_short += u64::from(short);
                self.stats.peeks_read_capped += u64::from(short && capped);
                let length_ok = m.len() as u64 == want || short && short_allowed;
                if !length_ok || !positions.is_sorted_by(|a, b| a < b) {
                    return Err(Violation(format!(
                        "operator: {}: {} messages ({held} bytes held against a budget of {}) \
                         for a peek of {count} with {ready} ready, at positions {positions:?}",
                        brief(request),
                        m.len(),
                        at.queue_budget
                    )));
                }
                Ok(false)
            }
            other => Err(Violation(format!("operator: unexpected request {other:?}"))),
        }
    }

    fn doubt_of(&self, user: &str, vhost: &str) -> bool {
        self.doubtful.contains(&Key::User(user.into()))
            || self.doubtful.contains(&Key::Vhost(vhost.into()))
    }

    /// A delete answered: the session on what it deleted must have been closed already
    /// (the close goes out with the delete, the answer after the sync).
    fn session_gone(&mut self, on: impl Fn(&Session) -> bool) -> Result<(), Violation> {
        match &self.session {
            Some(s) if s.open && on(s) => Err(Violation(format!(
                "operator: session {} as {} on {} still open after the delete was answered",
                s.conn, s.user, s.vhost
            ))),
            _ => Ok(()),
        }
    }

    fn check_listing(
        &mut self,
        seen: &BTreeSet<String>,
        expected: &BTreeSet<String>,
        key: fn(String) -> Key,
        what: &str,
    ) -> Result<(), Violation> {
        for name in seen.symmetric_difference(expected) {
            if !self.doubtful.contains(&key(name.clone())) {
                return Err(Violation(format!(
                    "operator: {what} listed {seen:?}, expected {expected:?}"
                )));
            }
        }
        Ok(())
    }

    fn check_permissions(
        &self,
        seen: &BTreeMap<(String, String), String>,
    ) -> Result<(), Violation> {
        let keys: BTreeSet<&(String, String)> =
            seen.keys().chain(self.permissions.keys()).collect();
        for key in keys {
            if self.doubt_of(&key.0, &key.1)
                || self
                    .doubtful
                    .contains(&Key::Permission(key.0.clone(), key.1.clone()))
            {
                continue;
            }
            if seen.get(key) != self.permissions.get(key) {
                return Err(Violation(format!(
                    "operator: permissions of {key:?}: listed {:?}, expected {:?}",
                    seen.get(key),
                    self.permissions.get(key)
                )));
            }
        }
        Ok(())
    }

    /// A read of `queue`'s paged messages came back to the broker.
    pub fn read_done(&mut self, queue: QueueId) {
        if let Some((id, reads)) = &mut self.peek_reads
            && *id == queue
        {
            *reads += 1;
        }
    }

    /// The broker crashed: the session is gone, and the objects a request in flight
    /// touched are in doubt.
    pub fn crashed(&mut self) {
        self.session = None;
        self.peek_reads = None;
        if let Some((_, request)) = self.in_flight.take() {
            if oversized(&request) {
                // Refused before it changed anything.
                return;
            }
            self.policies.crashed(&request);
            match request {
                AdminRequest::PutUser { name, .. } | AdminRequest::DeleteUser { name } => {
                    // Deleting a user deletes its permissions too.
                    for v in VHOSTS {
                        self.doubtful
                            .insert(Key::Permission(name.clone(), v.into()));
                    }
                    self.doubtful.insert(Key::User(name));
                }
                AdminRequest::PutVhost { name, .. } | AdminRequest::DeleteVhost { name } => {
                    for u in USERS {
                        self.doubtful
                            .insert(Key::Permission(u.into(), name.clone()));
                    }
                    self.doubtful.insert(Key::Vhost(name));
                }
                AdminRequest::SetPermissions(p) => {
                    self.doubtful.insert(Key::Permission(p.user, p.vhost));
                }
                AdminRequest::ClearPermissions { user, vhost } => {
                    self.doubtful.insert(Key::Permission(user, vhost));
                }
                _ => {}
            }
        }
    }

    /// What a restarted broker recovered: every answered change is there; objects in
    /// doubt take the recovered state.
    pub fn recovered(&mut self, r: &Recovered) -> Result<(), Violation> {
        self.stats.recoveries_checked += 1;
        let users: BTreeSet<String> = r
            .users
            .iter()
            .map(|u| u.name.clone())
            .filter(|n| n.starts_with("op-"))
            .collect();
        let vhosts: BTreeSet<String> = r
            .vhosts
            .iter()
            .filter(|n| n.starts_with("op-"))
            .cloned()
            .collect();
        let perms: BTreeMap<(String, String), String> = r
            .permissions
            .iter()
            .filter(|p| p.user.starts_with("op-"))
            .map(|p| ((p.user.clone(), p.vhost.clone()), p.configure.clone()))
            .collect();
        let lost = |what: String| Err(Violation(format!("operator: after a crash, {what}")));
        let names = USERS.iter().map(|u| (Key::User(u.to_string()), u, &users));
        let names = names.chain(
            VHOSTS
                .iter()
                .map(|v| (Key::Vhost(v.to_string()), v, &vhosts)),
        );
        for (key, name, recovered) in names.collect::<Vec<_>>() {
            let answered = match key {
                Key::User(_) => &mut self.users,
                _ => &mut self.vhosts,
            };
            let back = recovered.contains(*name);
            if self.doubtful.remove(&key) {
                if back {
                    answered.insert(name.to_string());
                } else {
                    answered.remove(*name);
                }
            } else if back != answered.contains(*name) {
                return lost(format!(
                    "{key:?} recovered: {back}, answered state: {}",
                    answered.contains(*name)
                ));
            }
        }
        for u in USERS {
            for v in VHOSTS {
                let key = (u.to_string(), v.to_string());
                let doubtful = self
                    .doubtful
                    .remove(&Key::Permission(key.0.clone(), key.1.clone()));
                let got = perms.get(&key);
                if doubtful {
                    match got {
                        Some(c) => self.permissions.insert(key, c.clone()),
                        None => self.permissions.remove(&key),
                    };
                } else if got != self.permissions.get(&key) {
                    return lost(format!(
                        "permission of {u} on {v} recovered as {got:?}, answered state: {:?}",
                        self.permissions.get(&key)
                    ));
                }
            }
        }
        debug_assert!(self.doubtful.is_empty());
        self.doubtful.clear();
        self.policies.recovered(r)
    }
}

/// Whether a request of [`Operator::oversized`]'s names something past 255 bytes.
fn oversized(request: &AdminRequest) -> bool {
    let long = |s: &str| s.len() > MAX_STORED_NAME_BYTES;
    match request {
        AdminRequest::PutVhost { name, .. } => long(name),
        AdminRequest::SetTopicPermissions(p) => long(&p.exchange),
        AdminRequest::ImportDefinitions(d) => d.exchanges.iter().any(|x| long(&x.name)),
        AdminRequest::SetPolicy(p) => long(&p.name),
        _ => false,
    }
}

/// A request for a violation's text, its long names cut short.
fn brief(request: &AdminRequest) -> String {
    let text = format!("{request:?}");
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
