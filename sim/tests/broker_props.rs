//! Property tests on the broker core: random operation sequences (publishes with confirms,
//! consumes, acks, nacks, rejects, gets, syncs, crashes with torn writes, channel closes)
//! run against the broker directly, with the simulator's reference model checking every
//! output and every recovery. proptest shrinks a failing sequence to a minimal one.

use proptest::prelude::*;

use warren::broker::{Broker, BrokerConfig, ConnInfo, Output};
use warren::proto::command::{Command, ConnId, Login, Message, Reply};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use warren_sim::checker::Model;
use warren_sim::disk::VirtualDisk;
use warren_sim::workload::{msg_id_text, msg_key};

const PUB: u16 = 1;
const CONSUME: u16 = 2;
const QUEUES: [(&str, bool); 2] = [("durable", true), ("transient", false)];

#[derive(Debug, Clone)]
enum Op {
    Publish { queue: usize, persistent: bool },
    Consume { queue: usize },
    Cancel { queue: usize },
    Get { queue: usize },
    Ack { pick: usize, multiple: bool },
    Nack { pick: usize, requeue: bool },
    Reject { pick: usize, requeue: bool },
    BogusAck,
    Purge { queue: usize },
    CloseConsumerChannel,
    Sync,
    Crash { keep: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, any::<bool>()).prop_map(|(queue, persistent)| Op::Publish { queue, persistent }),
        2 => (0..2usize).prop_map(|queue| Op::Consume { queue }),
        1 => (0..2usize).prop_map(|queue| Op::Cancel { queue }),
        1 => (0..2usize).prop_map(|queue| Op::Get { queue }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, multiple)| Op::Ack { pick, multiple }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, requeue)| Op::Nack { pick, requeue }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, requeue)| Op::Reject { pick, requeue }),
        1 => Just(Op::BogusAck),
        1 => (0..2usize).prop_map(|queue| Op::Purge { queue }),
        1 => Just(Op::CloseConsumerChannel),
        3 => Just(Op::Sync),
        1 => (0..4usize).prop_map(|keep| Op::Crash { keep }),
    ]
}

/// The broker, the model and the disk, with one client connection.
struct Harness {
    broker: Broker,
    model: Model,
    disk: VirtualDisk,
    disk_base: u64,
    conn: ConnId,
    next_msg: u64,
    /// Tags delivered on the consumer channel and not yet settled.
    unacked: Vec<u64>,
    consumers: [bool; 2],
    last_written: u64,
    now_ms: u64,
    /// The consumer channel was closed and must be reopened.
    reopen: bool,
}

impl Harness {
    fn new() -> Result<Harness, String> {
        let disk = VirtualDisk::new();
        let recovered = disk.recovered();
        let mut h = Harness {
            broker: Broker::new(BrokerConfig::default(), 1, recovered.clone()),
            model: Model::new(&recovered),
            disk,
            disk_base: 0,
            conn: 0,
            next_msg: 1,
            unacked: Vec::new(),
            consumers: [false; 2],
            last_written: 0,
            now_ms: 0,
            reopen: false,
        };
        h.setup()?;
        Ok(h)
    }

    fn setup(&mut self) -> Result<(), String> {
        self.conn += 1;
        self.unacked.clear();
        self.consumers = [false; 2];
        let info = ConnInfo {
            peer: "127.0.0.1:1".into(),
            loopback: true,
        };
        self.broker.handle_connect(self.conn, info, self.now_ms);
        self.model.connect(self.conn);
        let mut caps = FieldTable::new();
        caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
        let mut props = FieldTable::new();
        props.insert("capabilities", FieldValue::Table(caps));
        self.command(Command::Login(Login {
            mechanism: "PLAIN".into(),
            username: "guest".into(),
            password: "guest".into(),
            client_properties: props,
        }))?;
        self.command(Command::OpenVhost { vhost: "/".into() })?;
        self.command(Command::ChannelOpen { channel: PUB })?;
        self.command(Command::ChannelOpen { channel: CONSUME })?;
        for (name, durable) in QUEUES {
            self.method(
                PUB,
                Method::QueueDeclare(QueueDeclare {
                    queue: name.into(),
                    durable,
                    ..Default::default()
                }),
            )?;
        }
        self.method(PUB, Method::ConfirmSelect(ConfirmSelect { nowait: false }))?;
        self.method(
            CONSUME,
            Method::BasicQos(BasicQos {
                prefetch_size: 0,
                prefetch_count: 3,
                global: false,
            }),
        )?;
        self.drain()
    }

    fn command(&mut self, c: Command) -> Result<(), String> {
        self.model.command(self.conn, &c).map_err(|v| v.0)?;
        self.broker.handle_command(self.conn, c, self.now_ms);
        Ok(())
    }

    fn method(&mut self, channel: u16, method: Method) -> Result<(), String> {
        self.command(Command::Method { channel, method })
    }

    fn drain(&mut self) -> Result<(), String> {
        let mut outputs = Vec::new();
        while let Some(o) = self.broker.poll_output() {
            outputs.push(o);
        }
        self.model.outputs(&outputs).map_err(|v| v.0)?;
        for o in outputs {
            match o {
                Output::Persist { batch, ops, .. } => {
                    self.model.persist(batch).map_err(|v| v.0)?;
                    self.disk.write_batch(&ops);
                    self.last_written = batch;
                }
                Output::Replies { replies, .. } => {
                    for r in replies {
                        self.observe(r);
                    }
                }
                Output::Admin { .. } => {}
                Output::Load {
                    queue,
                    from_seq,
                    max,
                    max_bytes,
                    epoch,
                } => {
                    let entries = self.disk.load(queue, from_seq, max, max_bytes);
                    self.broker
                        .handle_loaded(queue, epoch, entries, self.now_ms);
                }
            }
        }
        self.broker.check_invariants();
        self.model.compare(&self.broker).map_err(|v| v.0)
    }

    fn observe(&mut self, r: Reply) {
        match r {
            Reply::Deliver {
                channel: CONSUME,
                delivery_tag,
                ..
            } => self.unacked.push(delivery_tag),
            Reply::Content {
                channel: CONSUME,
                method: Method::BasicGetOk(g),
                ..
            } => self.unacked.push(g.delivery_tag),
            Reply::Method {
                channel: CONSUME,
                method: Method::ChannelClose(_) | Method::ChannelCloseOk(_),
            } => {
                // The channel is gone (its deliveries requeued); reopen it.
                self.unacked.clear();
                self.consumers = [false; 2];
                self.reopen = true;
            }
            _ => {}
        }
    }

    fn pick(&self, pick: usize) -> Option<u64> {
        (!self.unacked.is_empty()).then(|| self.unacked[pick % self.unacked.len()])
    }

    fn settle(&mut self, tag: u64, multiple: bool) {
        if multiple {
            self.unacked.retain(|t| *t > tag);
        } else {
            self.unacked.retain(|t| *t != tag);
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        self.now_ms += 1;
        match *op {
            Op::Publish { queue, persistent } => {
                let key = msg_key(0, self.next_msg);
                self.next_msg += 1;
                let message = Message {
                    exchange: String::new(),
                    routing_key: QUEUES[queue].0.into(),
                    properties: BasicProperties {
                        delivery_mode: Some(if persistent { 2 } else { 1 }),
                        message_id: Some(msg_id_text(key).into()),
                        ..Default::default()
                    },
                    body: bytes::Bytes::from_static(b"body"),
                };
                self.command(Command::Publish {
                    channel: PUB,
                    mandatory: false,
                    immediate: false,
                    message: std::sync::Arc::new(message),
                })?;
            }
            Op::Consume { queue } if !self.consumers[queue] => {
                self.consumers[queue] = true;
                self.method(
                    CONSUME,
                    Method::BasicConsume(BasicConsume {
                        queue: QUEUES[queue].0.into(),
                        consumer_tag: format!("c@{}", QUEUES[queue].0),
                        ..Default::default()
                    }),
                )?;
            }
            Op::Cancel { queue } if self.consumers[queue] => {
                self.consumers[queue] = false;
                self.method(
                    CONSUME,
                    Method::BasicCancel(BasicCancel {
                        consumer_tag: format!("c@{}", QUEUES[queue].0),
                        nowait: false,
                    }),
                )?;
            }
            Op::Get { queue } => self.method(
                CONSUME,
                Method::BasicGet(BasicGet {
                    queue: QUEUES[queue].0.into(),
                    ..Default::default()
                }),
            )?,
            Op::Ack { pick, multiple } => {
                if let Some(tag) = self.pick(pick) {
                    self.settle(tag, multiple);
                    self.method(
                        CONSUME,
                        Method::BasicAck(BasicAck {
                            delivery_tag: tag,
                            multiple,
                        }),
                    )?;
                }
            }
            Op::Nack { pick, requeue } => {
                if let Some(tag) = self.pick(pick) {
                    self.settle(tag, false);
                    let m = BasicNack {
                        delivery_tag: tag,
                        multiple: false,
                        requeue,
                    };
                    self.method(CONSUME, Method::BasicNack(m))?;
                }
            }
            Op::Reject { pick, requeue } => {
                if let Some(tag) = self.pick(pick) {
                    self.settle(tag, false);
                    let m = BasicReject {
                        delivery_tag: tag,
                        requeue,
                    };
                    self.method(CONSUME, Method::BasicReject(m))?;
                }
            }
            Op::BogusAck => {
                let tag = self.unacked.iter().max().copied().unwrap_or(0) + 1000;
                self.method(
                    CONSUME,
                    Method::BasicAck(BasicAck {
                        delivery_tag: tag,
                        multiple: false,
                    }),
                )?;
            }
            Op::Purge { queue } => self.method(
                PUB,
                Method::QueuePurge(QueuePurge {
                    queue: QUEUES[queue].0.into(),
                    ..Default::default()
                }),
            )?,
            Op::CloseConsumerChannel => {
                self.command(Command::ChannelClose { channel: CONSUME })?;
            }
            Op::Sync => {
                self.disk.begin_sync();
                self.disk.complete_sync();
                self.model.synced(self.last_written);
                self.broker.handle_persisted(self.last_written);
            }
            Op::Crash { keep } => {
                let keep = keep.min(self.disk.unsynced_batches());
                self.disk.crash(keep);
                let surviving = self.disk.durable_batches() - self.disk_base;
                let recovered = self.disk.recovered();
                self.model.crash(surviving, &recovered).map_err(|v| v.0)?;
                self.broker = Broker::new(BrokerConfig::default(), 1, recovered);
                self.disk_base = self.disk.durable_batches();
                self.last_written = 0;
                self.drain()?;
                return self.setup();
            }
            _ => {}
        }
        self.drain()?;
        if std::mem::take(&mut self.reopen) {
            self.command(Command::ChannelOpen { channel: CONSUME })?;
            self.method(
                CONSUME,
                Method::BasicQos(BasicQos {
                    prefetch_size: 0,
                    prefetch_count: 3,
                    global: false,
                }),
            )?;
            self.drain()?;
        }
        Ok(())
    }

    /// Liveness: sync, consume everything, ack it all; nothing may be left.
    fn finish(&mut self) -> Result<(), String> {
        for queue in 0..2 {
            self.apply(&Op::Consume { queue })?;
        }
        for _ in 0..10_000 {
            self.apply(&Op::Sync)?;
            match self.unacked.iter().max().copied() {
                Some(tag) => self.apply_ack_all(tag)?,
                None => break,
            }
        }
        self.model.drained(&self.broker).map_err(|v| v.0)
    }

    fn apply_ack_all(&mut self, tag: u64) -> Result<(), String> {
        self.unacked.clear();
        self.method(
            CONSUME,
            Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple: true,
            }),
        )?;
        self.drain()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Acks, ordering and persistence hold for any sequence of operations, and everything
    /// confirmed is consumed in the end.
    #[test]
    fn broker_core_keeps_its_guarantees(ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new().map_err(TestCaseError::fail)?;
        for op in &ops {
            h.apply(op).map_err(TestCaseError::fail)?;
        }
        h.finish().map_err(TestCaseError::fail)?;
    }
}
