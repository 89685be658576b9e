//! A driver for broker tests: a broker with an in-memory store, driven the way the server
//! drives it with fjall.

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::{Broker, BrokerConfig, ConnInfo, Output};
use crate::proto::command::{Command, ConnId, Login, Message, Reply};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;
use crate::store::memory::MemoryStore;
use crate::store::{Recovered, Store};

/// A read of the store the broker asked for (queue, from position, most entries, most
/// bytes, epoch), held back by the test.
pub(super) type HeldRead = (u64, u64, usize, u64, u64);

/// What [`Rig::run_outputs`] saw.
#[derive(Debug, Default)]
pub(super) struct Outputs {
    /// Replies to connections.
    pub replies: Vec<(ConnId, Reply)>,
    /// Administrative answers.
    pub answers: Vec<(
        crate::broker::admin::AdminId,
        crate::broker::admin::AdminResult,
    )>,
    /// Reads held back.
    pub held: Vec<HeldRead>,
    /// Reads answered.
    pub reads: usize,
}

pub(super) struct Rig {
    pub broker: Broker,
    pub store: MemoryStore,
    pub now: u64,
}

/// What an administrative request came to, driven as a driver whose store syncs
/// whenever asked.
pub(super) struct AdminOutcome {
    pub result: crate::broker::admin::AdminResult,
    /// The answer waited for a store batch to be synced.
    pub waited_for_sync: bool,
    /// Replies that came out on the way.
    pub replies: Vec<(ConnId, Reply)>,
    /// What was persisted on the way.
    pub ops: Vec<crate::store::StoreOp>,
}

/// Hands `request` to the broker and drains its outputs until the answer comes: first
/// without syncing anything (an answer then did not wait for the store), then reporting
/// every batch synced.
pub(super) fn admin_answer(
    broker: &mut Broker,
    request: crate::broker::admin::AdminRequest,
    now: u64,
) -> AdminOutcome {
    const ID: u64 = 77;
    broker.handle_admin(ID, request, now);
    let mut outcome = AdminOutcome {
        result: Ok(crate::broker::admin::AdminReply::Done),
        waited_for_sync: false,
        replies: Vec::new(),
        ops: Vec::new(),
    };
    let mut answer = None;
    let mut last_batch = None;
    for synced in [false, true] {
        if synced {
            outcome.waited_for_sync = true;
            if let Some(batch) = last_batch {
                broker.handle_persisted(batch);
            }
        }
        while let Some(out) = broker.poll_output() {
            match out {
                Output::Persist { batch, ops, .. } => {
                    outcome.ops.extend(ops);
                    last_batch = Some(batch);
                }
                Output::Replies { conn, replies } => outcome
                    .replies
                    .extend(replies.into_iter().map(|r| (conn, r))),
                Output::Admin { id, result } => {
                    assert_eq!(id, ID);
                    answer = Some(result);
                }
                Output::Load { .. } => panic!("no reads expected"),
            }
        }
        if let Some(result) = answer.take() {
            outcome.result = result;
            return outcome;
        }
    }
    panic!("no answer once every batch was synced");
}

pub(super) fn small_budget() -> BrokerConfig {
    BrokerConfig {
        memory: crate::broker::MemoryConfig {
            queue_memory_budget_bytes: 64 * 1024,
            memory_budget_bytes: 1024 * 1024 * 1024,
            page_in_low_water: 50,
            page_in_batch: 100,
            recovery_head_entries: 100,
            ..Default::default()
        },
        ..BrokerConfig::default()
    }
}

impl Rig {
    pub fn new(config: BrokerConfig) -> Rig {
        Rig::with_store(config, MemoryStore::default(), Recovered::default())
    }

    pub fn with_store(config: BrokerConfig, store: MemoryStore, recovered: Recovered) -> Rig {
        let mut rig = Rig {
            broker: Broker::new(config, 3, recovered),
            store,
            now: 1_000,
        };
        rig.drain();
        rig
    }

    /// Restarts the broker on the store's state, as after a crash.
    pub fn restart(self) -> Rig {
        let config = self.broker.config().clone();
        let mut store = self.store;
        let recovered = store.recover(config.head_limit()).unwrap();
        Rig::with_store(config, store, recovered)
    }

    /// Runs the driver loop until the broker is idle: persists and syncs batches, answers
    /// reads, collects replies.
    pub fn drain(&mut self) -> Vec<(ConnId, Reply)> {
        self.run_outputs(false).replies
    }

    /// Runs the driver loop until the broker is idle, persisting and syncing batches and
    /// answering reads of the store unless `hold_reads`; returns what came out.
    pub fn run_outputs(&mut self, hold_reads: bool) -> Outputs {
        let mut outputs = Outputs::default();
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Persist { batch, ops, .. } => {
                    self.store.write(&ops).unwrap();
                    self.store.sync().unwrap();
                    self.broker.handle_persisted(batch);
                }
                Output::Load {
                    queue,
                    from_seq,
                    max,
                    max_bytes,
                    epoch,
                } => {
                    if hold_reads {
                        outputs.held.push((queue, from_seq, max, max_bytes, epoch));
                    } else {
                        let entries = self.store.load(queue, from_seq, max, max_bytes).unwrap();
                        self.broker.handle_loaded(queue, epoch, entries, self.now);
                        outputs.reads += 1;
                    }
                }
                Output::Replies { conn, replies: r } => {
                    outputs.replies.extend(r.into_iter().map(|x| (conn, x)))
                }
                Output::Admin { id, result } => outputs.answers.push((id, result)),
            }
        }
        outputs
    }

    pub fn command(&mut self, conn: ConnId, c: Command) -> Vec<(ConnId, Reply)> {
        self.now += 1;
        self.broker.handle_command(conn, c, self.now);
        self.drain()
    }

    pub fn method(&mut self, conn: ConnId, m: Method) -> Vec<(ConnId, Reply)> {
        self.command(
            conn,
            Command::Method {
                channel: 1,
                method: m,
            },
        )
    }

    pub fn open(&mut self, conn: ConnId) {
        self.open_as(conn, "guest", "guest");
    }

    /// Opens a connection with a channel 1 as `user`.
    pub fn open_as(&mut self, conn: ConnId, user: &str, password: &str) {
        let info = ConnInfo {
            peer: "test".into(),
            loopback: true,
        };
        self.broker.handle_connect(conn, info, self.now);
        let login = Login {
            mechanism: "PLAIN".into(),
            username: user.into(),
            password: password.into(),
            client_properties: FieldTable::default(),
        };
        self.command(conn, Command::Login(login));
        self.command(conn, Command::OpenVhost { vhost: "/".into() });
        self.command(conn, Command::ChannelOpen { channel: 1 });
    }

    /// Creates a user with these permissions (configure, write, read) on vhost `/`.
    pub fn add_user(&mut self, user: &str, password: &str, perms: [&str; 3]) {
        use crate::broker::admin::{AdminRequest, Password, PutMode};
        let put = AdminRequest::PutUser {
            name: user.into(),
            password: Password::Plain(password.into()),
            tags: Some(Vec::new()),
            mode: PutMode::CreateOnly,
        };
        let put = admin_answer(&mut self.broker, put, self.now);
        assert!(put.result.is_ok());
        self.store.write(&put.ops).unwrap();
        let record = crate::store::PermissionRecord {
            user: user.into(),
            vhost: "/".into(),
            configure: perms[0].into(),
            write: perms[1].into(),
            read: perms[2].into(),
        };
        let set = AdminRequest::SetPermissions(record);
        let set = admin_answer(&mut self.broker, set, self.now);
        assert!(set.result.is_ok());
        self.store.write(&set.ops).unwrap();
        self.store.sync().unwrap();
        self.drain();
    }

    pub fn declare(&mut self, conn: ConnId, queue: &str, durable: bool) {
        let r = self.method(
            conn,
            Method::QueueDeclare(QueueDeclare {
                queue: queue.into(),
                durable,
                ..Default::default()
            }),
        );
        assert!(
            r.iter().any(|(_, r)| matches!(
                r,
                Reply::Method {
                    method: Method::QueueDeclareOk(_),
                    ..
                }
            )),
            "{r:?}"
        );
    }

    pub fn publish(
        &mut self,
        conn: ConnId,
        exchange: &str,
        routing_key: &str,
        body: u32,
        persistent: bool,
    ) {
        let properties = BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..Default::default()
        };
        self.publish_props(conn, exchange, routing_key, body, properties);
    }

    /// Publishes a transient message with these headers.
    pub fn publish_with(
        &mut self,
        conn: ConnId,
        exchange: &str,
        routing_key: &str,
        headers: FieldTable,
    ) {
        let properties = BasicProperties {
            headers: Some(headers),
            ..Default::default()
        };
        self.publish_props(conn, exchange, routing_key, 0, properties);
    }

    /// Publishes a message whose body is `body` as 4 bytes, and expects no reply.
    pub fn publish_props(
        &mut self,
        conn: ConnId,
        exchange: &str,
        routing_key: &str,
        body: u32,
        properties: BasicProperties,
    ) {
        let r = self.publish_replies(conn, exchange, routing_key, body, properties);
        assert!(r.is_empty(), "{r:?}");
    }

    /// Publishes a message whose body is `body` as 4 bytes on channel 1; returns every
    /// reply it caused (deliveries to consumers among them).
    pub fn publish_replies(
        &mut self,
        conn: ConnId,
        exchange: &str,
        routing_key: &str,
        body: u32,
        properties: BasicProperties,
    ) -> Vec<(ConnId, Reply)> {
        self.send_publish(conn, exchange, routing_key, body, properties);
        self.drain()
    }

    /// Hands the broker a publish of `body` (as 4 bytes) on channel 1, without running
    /// the driver loop (which syncs every batch).
    pub fn send_publish(
        &mut self,
        conn: ConnId,
        exchange: &str,
        routing_key: &str,
        body: u32,
        properties: BasicProperties,
    ) {
        let message = Arc::new(Message {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties,
            body: Bytes::copy_from_slice(&body.to_be_bytes()),
        });
        self.now += 1;
        self.broker.handle_command(
            conn,
            Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message,
            },
            self.now,
        );
    }

    /// A no-ack basic.get: the body as a number and its redelivered flag, or None.
    pub fn get(&mut self, conn: ConnId, queue: &str) -> Option<(u32, bool)> {
        let mut r = self.method(
            conn,
            Method::BasicGet(BasicGet {
                queue: queue.into(),
                no_ack: true,
                ..Default::default()
            }),
        );
        // A get that waited for the store held the connection meanwhile.
        r.retain(|(_, r)| !matches!(r, Reply::PauseReading(_)));
        match r.as_slice() {
            [
                (
                    _,
                    Reply::Content {
                        method: Method::BasicGetOk(ok),
                        message,
                        ..
                    },
                ),
            ] => {
                let body: [u8; 4] = message.body.as_ref().try_into().unwrap();
                Some((u32::from_be_bytes(body), ok.redelivered))
            }
            [
                (
                    _,
                    Reply::Method {
                        method: Method::BasicGetEmpty(_),
                        ..
                    },
                ),
            ] => None,
            other => panic!("unexpected replies to basic.get: {other:?}"),
        }
    }

    pub fn message_count(&mut self, conn: ConnId, queue: &str) -> u32 {
        let r = self.method(
            conn,
            Method::QueueDeclare(QueueDeclare {
                queue: queue.into(),
                passive: true,
                ..Default::default()
            }),
        );
        match r.as_slice() {
            [
                (
                    _,
                    Reply::Method {
                        method: Method::QueueDeclareOk(ok),
                        ..
                    },
                ),
            ] => ok.message_count,
            other => panic!("{other:?}"),
        }
    }
}

/// The bodies delivered in these replies, with their delivery tags.
pub(super) fn delivered(replies: &[(ConnId, Reply)]) -> Vec<(u64, u32)> {
    replies
        .iter()
        .filter_map(|(_, r)| match r {
            Reply::Deliver {
                delivery_tag,
                message,
                ..
            } => Some((
                *delivery_tag,
                u32::from_be_bytes(message.body.as_ref().try_into().unwrap()),
            )),
            _ => None,
        })
        .collect()
}
