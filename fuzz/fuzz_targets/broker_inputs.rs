//! Arbitrary sequences of client inputs into the broker core, through the server-side
//! protocol state machine, as the real driver feeds them.
//!
//! Up to three connections are opened with a scripted handshake (so that the fuzzer starts
//! from usable channels); then each record of the input is one step: raw bytes for a
//! connection, a method from a menu with fuzzer-chosen arguments (publishes with content,
//! consumes, acks, nacks and rejects with any tag, gets, qos, declares with queue
//! arguments, binds, purges, deletes, confirm and tx mode, recover, channel open, close
//! and flow), an arbitrary method decoded from the input, a store sync, time passing,
//! write credit, or a dropped connection. After each step the driver loop runs (commands
//! in, outputs drained, replies back to the connections) and the broker's invariants must
//! hold. Nothing may panic.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren::broker::{Broker, BrokerConfig, ConnInfo, Output};
use warren::proto::command::ConnId;
use warren::proto::connection::{Connection, ConnectionConfig};
use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{encode_content, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};
use warren::store::Store;
use warren::store::memory::MemoryStore;

const QUEUES: [&str; 3] = ["q0", "q1", ""];
const EXCHANGES: [&str; 4] = ["", "amq.direct", "amq.fanout", "x"];
const KEYS: [&str; 4] = ["q0", "q1", "k", "#"];

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn u(&mut self, n: usize) -> usize {
        self.byte().map_or(0, |b| usize::from(b) % n.max(1))
    }

    fn bit(&mut self) -> bool {
        self.byte().is_some_and(|b| b & 1 == 1)
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

struct Harness {
    broker: Broker,
    store: MemoryStore,
    conns: Vec<(ConnId, Connection)>,
    next_id: ConnId,
    now_ms: u64,
    last_batch: u64,
    next_msg: u64,
}

fn handshake() -> Vec<u8> {
    let mut out = BytesMut::new();
    out.extend_from_slice(&PROTOCOL_HEADER);
    let mut caps = FieldTable::new();
    caps.insert("consumer_cancel_notify", FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    let methods = [
        Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        }),
        Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: 8,
            frame_max: 4096,
            heartbeat: 0,
        }),
        Method::ConnectionOpen(ConnectionOpen {
            virtual_host: "/".into(),
            ..Default::default()
        }),
    ];
    for m in &methods {
        encode_method(0, m, &mut out);
    }
    for ch in [1, 2] {
        encode_method(ch, &Method::ChannelOpen(ChannelOpen::default()), &mut out);
    }
    out.to_vec()
}

impl Harness {
    fn new() -> Harness {
        let mut h = Harness {
            broker: Broker::new(BrokerConfig::default(), 1, Default::default()),
            store: MemoryStore::default(),
            conns: Vec::new(),
            next_id: 1,
            now_ms: 0,
            last_batch: 0,
            next_msg: 1,
        };
        h.connect();
        h
    }

    fn connect(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let info = ConnInfo {
            peer: "127.0.0.1:1".into(),
            loopback: true,
        };
        self.broker.handle_connect(id, info, self.now_ms);
        let mut conn = Connection::new(ConnectionConfig::default(), self.now_ms);
        conn.handle_bytes(&handshake(), self.now_ms);
        self.conns.push((id, conn));
        self.pump();
    }

    /// The driver loop: commands to the broker, outputs drained, replies delivered, until
    /// nothing moves.
    fn pump(&mut self) {
        for _ in 0..64 {
            let mut moved = false;
            for (id, conn) in &mut self.conns {
                while let Some(c) = conn.poll_command() {
                    moved = true;
                    self.broker.handle_command(*id, c, self.now_ms);
                }
                let _ = conn.poll_transmit();
            }
            while let Some(o) = self.broker.poll_output() {
                moved = true;
                match o {
                    Output::Persist { batch, ops } => {
                        self.store.write(&ops).expect("memory store");
                        self.last_batch = batch;
                    }
                    Output::Replies { conn, replies } => {
                        if let Some((_, c)) = self.conns.iter_mut().find(|(id, _)| *id == conn) {
                            for r in replies {
                                c.handle_reply(r, self.now_ms);
                            }
                        }
                    }
                    Output::Load {
                        queue,
                        from_seq,
                        max,
                        max_bytes,
                        epoch,
                    } => {
                        let entries = self.store.load(queue, from_seq, max, max_bytes).expect("memory store");
                        self.broker
                            .handle_loaded(queue, epoch, entries, self.now_ms);
                    }
                }
            }
            self.conns.retain(|(_, c)| !c.is_closed());
            if !moved {
                break;
            }
        }
        self.broker.check_invariants();
    }

    fn method(&mut self, conn: usize, channel: u16, method: Method) {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.bytes(conn, &out);
    }

    fn bytes(&mut self, conn: usize, data: &[u8]) {
        if let Some((_, c)) = self.conns.get_mut(conn) {
            c.handle_bytes(data, self.now_ms);
        }
    }

    fn step(&mut self, input: &mut Input<'_>) -> bool {
        let Some(op) = input.byte() else {
            return false;
        };
        if self.conns.is_empty() {
            self.connect();
        }
        let conn = usize::from(op >> 6) % self.conns.len();
        let channel = if input.bit() { 1 } else { 2 };
        let queue = QUEUES[input.u(QUEUES.len())].to_string();
        match op & 0x0f {
            0 => {
                let n = input.u(64);
                let raw = input.take(n).to_vec();
                self.bytes(conn, &raw);
            }
            1 => {
                let exchange = EXCHANGES[input.u(EXCHANGES.len())].to_string();
                let routing_key = KEYS[input.u(KEYS.len())].to_string();
                let props = BasicProperties {
                    delivery_mode: Some(1 + u8::from(input.bit())),
                    message_id: Some(self.next_msg.to_string()),
                    expiration: input.bit().then(|| (input.u(50)).to_string()),
                    priority: input.bit().then(|| input.u(10) as u8),
                    ..Default::default()
                };
                self.next_msg += 1;
                let publish = Method::BasicPublish(BasicPublish {
                    exchange,
                    routing_key,
                    mandatory: input.bit(),
                    ..Default::default()
                });
                let body = vec![7u8; input.u(200) * 50];
                let mut out = BytesMut::new();
                encode_content(channel, &publish, &props, &body, 4096, &mut out);
                self.bytes(conn, &out);
            }
            2 => {
                let m = BasicConsume {
                    queue,
                    consumer_tag: format!("t{}", input.u(4)),
                    no_ack: input.bit(),
                    exclusive: input.bit(),
                    ..Default::default()
                };
                self.method(conn, channel, Method::BasicConsume(m));
            }
            3 => {
                let m = BasicAck {
                    delivery_tag: input.u(40) as u64,
                    multiple: input.bit(),
                };
                self.method(conn, channel, Method::BasicAck(m));
            }
            4 => {
                let tag = input.u(40) as u64;
                let requeue = input.bit();
                let m = if input.bit() {
                    Method::BasicNack(BasicNack {
                        delivery_tag: tag,
                        multiple: input.bit(),
                        requeue,
                    })
                } else {
                    Method::BasicReject(BasicReject {
                        delivery_tag: tag,
                        requeue,
                    })
                };
                self.method(conn, channel, m);
            }
            5 => {
                let m = BasicGet {
                    queue,
                    no_ack: input.bit(),
                    ..Default::default()
                };
                self.method(conn, channel, Method::BasicGet(m));
            }
            6 => {
                let m = BasicQos {
                    prefetch_size: 0,
                    prefetch_count: input.u(5) as u16,
                    global: input.bit(),
                };
                self.method(conn, channel, Method::BasicQos(m));
            }
            7 => {
                let mut arguments = FieldTable::new();
                match input.u(6) {
                    1 => arguments.insert("x-max-length", FieldValue::I32(input.u(4) as i32)),
                    2 => {
                        arguments.insert("x-max-length", FieldValue::I32(input.u(4) as i32));
                        arguments.insert(
                            "x-overflow",
                            FieldValue::LongStr(Bytes::from_static(b"reject-publish")),
                        );
                    }
                    3 => arguments.insert("x-message-ttl", FieldValue::I32(input.u(30) as i32)),
                    4 => arguments.insert(
                        "x-dead-letter-exchange",
                        FieldValue::LongStr(Bytes::from_static(b"amq.fanout")),
                    ),
                    5 => arguments.insert("x-max-priority", FieldValue::I32(input.u(5) as i32)),
                    _ => {}
                }
                let m = QueueDeclare {
                    queue,
                    durable: input.bit(),
                    exclusive: input.bit(),
                    auto_delete: input.bit(),
                    arguments,
                    ..Default::default()
                };
                self.method(conn, channel, Method::QueueDeclare(m));
            }
            8 => {
                let exchange = EXCHANGES[1 + input.u(EXCHANGES.len() - 1)].to_string();
                let m = match input.u(4) {
                    0 => Method::QueueBind(QueueBind {
                        queue,
                        exchange,
                        routing_key: KEYS[input.u(KEYS.len())].into(),
                        ..Default::default()
                    }),
                    1 => Method::ExchangeDeclare(ExchangeDeclare {
                        exchange: "x".into(),
                        kind: ["direct", "fanout", "topic", "headers"][input.u(4)].into(),
                        durable: input.bit(),
                        ..Default::default()
                    }),
                    2 => Method::QueuePurge(QueuePurge {
                        queue,
                        ..Default::default()
                    }),
                    _ => Method::QueueDelete(QueueDelete {
                        queue,
                        if_unused: input.bit(),
                        if_empty: input.bit(),
                        ..Default::default()
                    }),
                };
                self.method(conn, channel, m);
            }
            9 => {
                let m = match input.u(9) {
                    0 => Method::ConfirmSelect(ConfirmSelect {
                        nowait: input.bit(),
                    }),
                    1 => Method::TxSelect(TxSelect),
                    2 => Method::TxCommit(TxCommit),
                    3 => Method::TxRollback(TxRollback),
                    4 => Method::BasicRecover(BasicRecover { requeue: true }),
                    5 => Method::ChannelClose(ChannelClose::default()),
                    6 => Method::ChannelOpen(ChannelOpen::default()),
                    7 => Method::ChannelFlow(ChannelFlow {
                        active: input.bit(),
                    }),
                    _ => Method::BasicCancel(BasicCancel {
                        consumer_tag: format!("t{}", input.u(4)),
                        nowait: input.bit(),
                    }),
                };
                self.method(conn, channel, m);
            }
            10 => {
                self.store.sync().expect("memory store");
                self.broker.handle_persisted(self.last_batch);
            }
            11 => {
                self.now_ms += input.u(256) as u64 * 10;
                if self.broker.poll_timeout().is_some_and(|t| t <= self.now_ms) {
                    self.broker.handle_timeout(self.now_ms);
                }
                for (_, c) in &mut self.conns {
                    if c.poll_timeout().is_some_and(|t| t <= self.now_ms) {
                        c.handle_timeout(self.now_ms);
                    }
                }
            }
            12 => {
                if let Some((_, c)) = self.conns.get_mut(conn) {
                    c.handle_eof();
                }
                self.pump();
                if self.conns.len() < 3 {
                    self.connect();
                }
            }
            13 => {
                if let Some((id, _)) = self.conns.get(conn) {
                    let bytes = input.u(256) * 1024;
                    let cmd = warren::proto::command::Command::Drained { bytes };
                    self.broker.handle_command(*id, cmd, self.now_ms);
                }
            }
            14 => {
                // Any method the decoder accepts, arguments straight from the input.
                let n = input.u(48);
                let payload = input.take(n).to_vec();
                if let Ok(m) = Method::decode(&payload) {
                    self.method(conn, channel, m);
                }
            }
            _ => {
                if self.conns.len() < 3 {
                    self.connect();
                }
            }
        }
        self.pump();
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    let mut input = Input { data };
    let mut steps = 0;
    while steps < 512 && h.step(&mut input) {
        steps += 1;
    }
    // Settle everything: sync, then expire and dispatch what is left.
    h.store.sync().expect("memory store");
    h.broker.handle_persisted(h.last_batch);
    h.pump();
});
