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
//!
//! The inputs include what hostile clients send: queue arguments for dead-lettering (to
//! the default exchange too, with a routing key that routes back), every `x-overflow`
//! mode, `x-max-length` and `x-message-ttl` of 0, `x-max-length-bytes`, `x-expires`;
//! exchanges of every type with alternate exchanges and exchange-to-exchange bindings;
//! topic patterns of `#` runs, `*` and words, and routing keys of up to 63 words; headers
//! bindings with `x-match` all/any and many keys; tables nested to the depth limit and
//! past it; forged `x-death` headers with counts up to `i64::MAX`; adversarial names.
//!
//! Each step runs under a work budget: the routing work it caused
//! ([`Broker::work_done`]) must stay within [`WORK_BUDGET_PER_STEP`], so that a matcher or
//! a dead-letter loop whose cost explodes with its input fails as a crash even when it
//! finishes. (Freezes and memory blow-ups are crashes through libFuzzer's `-timeout` and
//! `-rss_limit_mb`, which CI passes.)

#![no_main]

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren::broker::{Broker, BrokerConfig, ConnInfo, Output};
use warren::proto::command::{ConnId, Reply};
use warren::proto::connection::{Connection, ConnectionConfig};
use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{encode_content, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::shortstr::ShortStr;
use warren::proto::table::{FieldTable, FieldValue, MAX_FIELD_DEPTH};
use warren::store::memory::MemoryStore;
use warren::store::{PermissionRecord, Recovered, Store, StoreOp};

/// Queue names: two plain ones, the server-named "", and adversarial ones.
/// Names of queues, with the direct reply-to pseudo-queue among them.
const QUEUES: [&str; 7] = [
    "q0",
    "q1",
    "",
    "h.#.*",
    "队列-ü",
    LONG_NAME,
    "amq.rabbitmq.reply-to",
];
/// Exchange names: the default, the predeclared ones, and two the input declares.
const EXCHANGES: [&str; 7] = [
    "",
    "amq.direct",
    "amq.fanout",
    "x",
    "amq.topic",
    "amq.headers",
    "y",
];
const KEYS: [&str; 4] = ["q0", "q1", "k", "#"];
const WORDS: [&str; 4] = ["a", "b", "", "k"];
/// 255 bytes, the longest short string.
const LONG_NAME: &str = "hnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn";

/// Most routing work ([`Broker::work_done`]) one step may cause. Legitimate steps here
/// stay in the thousands (a step is at most a few dozen methods over a few queues and
/// exchanges); the simulator holds its steps to the same bound.
const WORK_BUDGET_PER_STEP: u64 = 1_000_000;

/// The step kinds (see `Harness::step`) by the low five bits of a step's first byte:
/// publishes, declares and bindings, which build what routing and dead-lettering work on,
/// come up more often.
const OPS: [u8; 32] = [
    0, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 7, 7, 7, 8, 8, 8, 8, 8, 9, 9, 10, 11, 12, 13,
    14, 15,
];

/// The frame size the fuzzed connections agree (room for large headers tables).
const FRAME_MAX: u32 = 131_072;

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

    /// A topic binding pattern: up to 40 segments, each a run of 1 to 16 `#`, a `*` or a
    /// word (one byte each).
    fn pattern(&mut self) -> String {
        let n = self.u(41);
        let mut tokens: Vec<&str> = Vec::new();
        for _ in 0..n {
            let b = self.byte().unwrap_or(0);
            match b % 4 {
                0 => tokens.extend(std::iter::repeat_n("#", 1 + usize::from(b >> 2) % 16)),
                1 => tokens.push("*"),
                _ => tokens.push(WORDS[usize::from(b >> 2) % WORDS.len()]),
            }
        }
        fit(tokens.join("."))
    }

    /// A routing key: up to 63 words, their mix from one byte (so that a long key costs
    /// the fuzzer two bytes).
    fn routing_key(&mut self) -> String {
        let n = self.u(64);
        let style = usize::from(self.byte().unwrap_or(0));
        let words: Vec<&str> = (0..n)
            .map(|i| WORDS[(style + i * (style >> 4)) % WORDS.len()])
            .collect();
        fit(words.join("."))
    }

    /// A key: one of the fixed ones, a pattern or a generated routing key.
    fn key(&mut self) -> String {
        match self.u(6) {
            0 => self.pattern(),
            1 => self.routing_key(),
            _ => KEYS[self.u(KEYS.len())].to_string(),
        }
    }

    /// A value nested `levels` deep (tables, or tables and arrays), built without recursion.
    fn nested(&mut self, levels: usize) -> FieldValue {
        let arrays = self.bit();
        let mut v = FieldValue::LongStr(Bytes::from_static(b"bottom"));
        for i in 0..levels {
            v = if arrays && i % 2 == 1 {
                FieldValue::Array(vec![v])
            } else {
                FieldValue::Table([("n", v)].into_iter().collect())
            };
        }
        v
    }

    /// How many levels a nested value gets: mostly right at the depth limit of its table.
    fn levels(&mut self) -> usize {
        match self.u(4) {
            0 => self.u(8),
            1 => MAX_FIELD_DEPTH - 1,
            2 => MAX_FIELD_DEPTH,
            _ => MAX_FIELD_DEPTH + 1,
        }
    }

    /// A headers table: up to 63 keys from a small key space, so that bindings match.
    fn headers(&mut self, binding: bool) -> FieldTable {
        let mut t = FieldTable::new();
        if binding {
            let mode = ["all", "any", "all-with-x", "any-with-x"][self.u(4)];
            t.insert("x-match", text(mode));
        }
        let n = self.u(64);
        let style = usize::from(self.byte().unwrap_or(0));
        for i in 0..n {
            let k = (style + i * 7) % 40;
            let v = if style & 1 == 0 {
                FieldValue::I32(k as i32)
            } else {
                FieldValue::LongStr(Bytes::from(format!("v{k}")))
            };
            t.insert(format!("k{k}"), v);
        }
        if !binding && style & 2 != 0 {
            // A delay for delayed-message exchanges: in range, at its edges, past them,
            // and of other types.
            let delay = match self.u(6) {
                0 => FieldValue::I32(1 + self.u(50) as i32),
                1 => FieldValue::I64(4_294_967_295),
                2 => FieldValue::I64(4_294_967_296),
                3 => FieldValue::I64(i64::MIN),
                4 => FieldValue::I8(-1),
                _ => text("10"),
            };
            t.insert("x-delay", delay);
        }
        t
    }

    /// A forged `x-death` history naming the queues, counts up to `i64::MAX`.
    fn x_death(&mut self) -> FieldValue {
        let n = 1 + self.u(3);
        let mut deaths = Vec::new();
        for _ in 0..n {
            let count = [0, 1, i64::MAX - 1, i64::MAX][self.u(4)];
            let reason = ["rejected", "expired", "maxlen", "other"][self.u(4)];
            let queue = QUEUES[self.u(QUEUES.len())];
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(count));
            t.insert("reason", text(reason));
            t.insert("queue", text(queue));
            t.insert("exchange", text(""));
            t.insert("routing-keys", FieldValue::Array(vec![text(queue)]));
            deaths.push(FieldValue::Table(t));
        }
        FieldValue::Array(deaths)
    }

    /// Queue arguments: a flags byte picks which, each value from the next bytes.
    fn queue_arguments(&mut self) -> FieldTable {
        let mut t = FieldTable::new();
        let flags = self.byte().unwrap_or(0);
        if flags & 1 != 0 {
            t.insert("x-max-length", FieldValue::I32(self.u(4) as i32));
        }
        if flags & 2 != 0 {
            let mode = [
                "drop-head",
                "reject-publish",
                "reject-publish-dlx",
                "reject-publish-dlx",
                "bogus",
            ][self.u(5)];
            t.insert("x-overflow", text(mode));
        }
        if flags & 4 != 0 {
            // The default exchange routes straight back by queue name: the likeliest loop.
            let dlx = if self.bit() {
                ""
            } else {
                EXCHANGES[self.u(EXCHANGES.len())]
            };
            t.insert("x-dead-letter-exchange", text(dlx));
        }
        if flags & 8 != 0 {
            let dlrk = QUEUES[self.u(QUEUES.len())];
            t.insert("x-dead-letter-routing-key", text(dlrk));
        }
        if flags & 16 != 0 {
            t.insert("x-message-ttl", FieldValue::I32(self.u(30) as i32));
        }
        if flags & 32 != 0 {
            t.insert("x-max-length-bytes", FieldValue::I64(self.u(200) as i64));
        }
        if flags & 64 != 0 {
            let (key, value) = match self.u(3) {
                0 => ("x-expires", FieldValue::I32(1 + self.u(100) as i32)),
                1 => ("x-max-priority", FieldValue::I32(self.u(12) as i32)),
                _ => ("x-queue-mode", text("lazy")),
            };
            t.insert(key, value);
        }
        if flags & 128 != 0 {
            let levels = self.levels();
            t.insert("x-nest", self.nested(levels));
        }
        t
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
    /// The exchange of the last binding and the last queue declared: publishes often go
    /// there, as a client publishes to what it just set up, so that the fuzzer needs no
    /// luck to route a message through the arguments and patterns it chose.
    last_exchange: String,
    last_queue: String,
    /// The last direct reply-to address a delivery carried: replies go there.
    last_reply_to: String,
    /// Administrative requests not yet answered: each must be, once its batch is synced.
    admin_waiting: Vec<u64>,
    next_admin: u64,
}

/// Tells libFuzzer how much routing work a step caused: each power of two is a branch of
/// its own, so an input that reaches a new one counts as new coverage and is kept. The
/// fuzzer then climbs towards inputs whose cost grows fastest (longer keys, more
/// wildcards, more hops), which is where a cost that explodes is found.
fn work_feedback(work: u64) {
    macro_rules! buckets {
        ($($n:literal => $f:ident),* $(,)?) => {
            $(
                #[inline(never)]
                fn $f() {
                    std::hint::black_box($n);
                }
            )*
            match 64 - work.leading_zeros() {
                $($n => $f(),)*
                _ => {}
            }
        };
    }
    buckets!(
        4 => w4, 5 => w5, 6 => w6, 7 => w7, 8 => w8, 9 => w9, 10 => w10, 11 => w11,
        12 => w12, 13 => w13, 14 => w14, 15 => w15, 16 => w16, 17 => w17, 18 => w18,
        19 => w19, 20 => w20,
    );
}

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

/// The longest prefix of `s` a short string carries, on a char boundary.
fn fit(s: String) -> String {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
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
            frame_max: FRAME_MAX,
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
    // A plain queue to bind and publish to, so that the fuzzer's bytes go to bindings,
    // patterns and keys (the other names are free for declares with arguments).
    let q0 = QueueDeclare {
        queue: "q0".into(),
        ..Default::default()
    };
    encode_method(1, &Method::QueueDeclare(q0), &mut out);
    out.to_vec()
}

/// The default vhost, user and permissions, as a first start stores them, made once. Each
/// input's broker starts from them with the permission patterns `^` instead of `.*`: both
/// allow every name (a pattern matches anywhere in a name), but with coverage
/// instrumentation compiling `.*`'s automaton took most of each input's run time.
fn defaults() -> &'static Recovered {
    static DEFAULTS: OnceLock<Recovered> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        let mut broker = Broker::new(BrokerConfig::default(), 1, Recovered::default());
        let mut recovered = Recovered::default();
        while let Some(output) = broker.poll_output() {
            let Output::Persist { ops, .. } = output else {
                continue;
            };
            for op in ops {
                match op {
                    StoreOp::PutVhost(v) => recovered.vhosts.push(v),
                    StoreOp::PutUser(u) => recovered.users.push(u),
                    StoreOp::PutPermission(p) => recovered.permissions.push(PermissionRecord {
                        configure: "^".into(),
                        write: "^".into(),
                        read: "^".into(),
                        ..p
                    }),
                    _ => {}
                }
            }
        }
        assert!(
            !recovered.users.is_empty() && !recovered.permissions.is_empty(),
            "a first start stores the default user and its permissions"
        );
        recovered
    })
}

impl Harness {
    fn new() -> Harness {
        let mut h = Harness {
            broker: Broker::new(BrokerConfig::default(), 1, defaults().clone()),
            store: MemoryStore::default(),
            conns: Vec::new(),
            next_id: 1,
            now_ms: 0,
            last_batch: 0,
            next_msg: 1,
            last_exchange: String::new(),
            last_queue: String::new(),
            last_reply_to: String::new(),
            admin_waiting: Vec::new(),
            next_admin: 1,
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
                    Output::Persist { batch, ops, .. } => {
                        // Names are part of the real store's keys, which its disk limits
                        // to 64 KiB: longer names are refused before they are stored.
                        for op in &ops {
                            assert!(
                                op.longest_name() <= warren::store::MAX_STORED_NAME_BYTES,
                                "a name of {} bytes stored",
                                op.longest_name()
                            );
                        }
                        self.store.write(&ops).expect("memory store");
                        self.last_batch = batch;
                    }
                    Output::Replies { conn, replies } => {
                        for r in &replies {
                            if let Reply::Content { message, .. } | Reply::Deliver { message, .. } =
                                r
                                && let Some(to) = &message.properties.reply_to
                                && let Some(to) = to.as_str()
                                && to.starts_with("amq.rabbitmq.reply-to.")
                            {
                                self.last_reply_to = to.to_string();
                            }
                        }
                        if let Some((_, c)) = self.conns.iter_mut().find(|(id, _)| *id == conn) {
                            for r in replies {
                                c.handle_reply(r, self.now_ms);
                            }
                        }
                    }
                    Output::Admin { id, .. } => {
                        let before = self.admin_waiting.len();
                        self.admin_waiting.retain(|w| *w != id);
                        assert_eq!(
                            self.admin_waiting.len() + 1,
                            before,
                            "answer {id} expected once"
                        );
                    }
                    Output::Load {
                        queue,
                        from_seq,
                        max,
                        max_bytes,
                        epoch,
                    } => {
                        let entries = self
                            .store
                            .load(queue, from_seq, max, max_bytes)
                            .expect("memory store");
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
        // No connection at all while the app is stopped (logins are refused): the
        // connection steps are no-ops then.
        let conn = usize::from(op >> 6) % self.conns.len().max(1);
        let channel = if input.bit() { 1 } else { 2 };
        let queue = QUEUES[input.u(QUEUES.len())].to_string();
        match OPS[usize::from(op & 0x1f)] {
            0 => {
                let n = input.u(64);
                let raw = input.take(n).to_vec();
                self.bytes(conn, &raw);
            }
            1 => {
                let (exchange, routing_key) = match input.u(6) {
                    0 => (self.last_exchange.clone(), input.routing_key()),
                    4 => (String::new(), self.last_reply_to.clone()),
                    5 => {
                        // A forged address: right length, wrong or random token.
                        let mut forged = self.last_reply_to.clone();
                        if let Some(last) = forged.pop() {
                            forged.push(if last == 'A' { 'B' } else { 'A' });
                        } else {
                            forged = format!("amq.rabbitmq.reply-to.{}", input.routing_key());
                        }
                        (String::new(), forged)
                    }
                    1 => (String::new(), self.last_queue.clone()),
                    2 => (
                        EXCHANGES[input.u(EXCHANGES.len())].to_string(),
                        input.routing_key(),
                    ),
                    _ => (
                        EXCHANGES[input.u(EXCHANGES.len())].to_string(),
                        QUEUES[input.u(QUEUES.len())].to_string(),
                    ),
                };
                let mut headers = None;
                if input.bit() {
                    let mut t = input.headers(false);
                    if input.bit() {
                        t.insert("x-death", input.x_death());
                    }
                    if input.bit() {
                        let levels = input.levels();
                        t.insert("x-nest", input.nested(levels));
                    }
                    headers = Some(t);
                }
                let props = BasicProperties {
                    delivery_mode: Some(1 + u8::from(input.bit())),
                    message_id: Some(self.next_msg.to_string().into()),
                    // Now and then bytes that are not UTF-8 (a short string is bytes): the
                    // broker passes them on, or refuses an expiration that is no number.
                    expiration: input.bit().then(|| match input.bit() {
                        false => input.u(50).to_string().into(),
                        true => ShortStr::from(input.take(4)),
                    }),
                    correlation_id: input.bit().then(|| ShortStr::from(input.take(8))),
                    priority: input.bit().then(|| input.u(10) as u8),
                    reply_to: input.bit().then(|| "amq.rabbitmq.reply-to".into()),
                    headers,
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
                encode_content(channel, &publish, &props, &body, FRAME_MAX, &mut out);
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
                let arguments = input.queue_arguments();
                self.last_queue.clone_from(&queue);
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
                let m = match input.u(6) {
                    0 => {
                        let routing_key = if input.bit() {
                            input.pattern()
                        } else {
                            input.key()
                        };
                        let arguments = if input.bit() {
                            input.headers(true)
                        } else {
                            FieldTable::new()
                        };
                        self.last_exchange.clone_from(&exchange);
                        Method::QueueBind(QueueBind {
                            queue,
                            exchange,
                            routing_key,
                            arguments,
                            ..Default::default()
                        })
                    }
                    1 => {
                        let mut arguments = FieldTable::new();
                        if input.bit() {
                            let ae = EXCHANGES[input.u(EXCHANGES.len())];
                            arguments.insert("alternate-exchange", text(ae));
                        }
                        if input.bit() {
                            let levels = input.levels();
                            arguments.insert("x-nest", input.nested(levels));
                        }
                        let kind = [
                            "direct",
                            "fanout",
                            "topic",
                            "headers",
                            "x-consistent-hash",
                            "x-delayed-message",
                        ][input.u(6)];
                        if kind == "x-delayed-message" && input.bit() {
                            let inner =
                                ["direct", "topic", "x-delayed-message", "bogus"][input.u(4)];
                            arguments.insert("x-delayed-type", text(inner));
                        }
                        if kind == "x-consistent-hash" && input.bit() {
                            let on = ["hash-header", "hash-property"][input.u(2)];
                            let what = ["h", "message_id", "timestamp", "body"][input.u(4)];
                            arguments.insert(on, text(what));
                        }
                        Method::ExchangeDeclare(ExchangeDeclare {
                            exchange: ["x", "y"][input.u(2)].into(),
                            kind: kind.into(),
                            durable: input.bit(),
                            arguments,
                            ..Default::default()
                        })
                    }
                    2 => {
                        let routing_key = input.key();
                        let arguments = if input.bit() {
                            input.headers(true)
                        } else {
                            FieldTable::new()
                        };
                        self.last_exchange.clone_from(&exchange);
                        let m = ExchangeBind {
                            destination: EXCHANGES[1 + input.u(EXCHANGES.len() - 1)].into(),
                            source: exchange,
                            routing_key,
                            arguments,
                            ..Default::default()
                        };
                        if input.bit() {
                            Method::ExchangeBind(m)
                        } else {
                            Method::ExchangeUnbind(ExchangeUnbind {
                                destination: m.destination,
                                source: m.source,
                                routing_key: m.routing_key,
                                arguments: m.arguments,
                                ..Default::default()
                            })
                        }
                    }
                    3 => Method::QueueUnbind(QueueUnbind {
                        queue,
                        exchange,
                        routing_key: input.key(),
                        ..Default::default()
                    }),
                    4 => Method::QueuePurge(QueuePurge {
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
            _ => match input.u(4) {
                0 => self.admin(input),
                1 => {
                    // A monitor reading: memory and disk near their limits either way.
                    let limits = self.broker.config().alarms;
                    let total = 1u64 << 30;
                    let watermark = (limits.memory_high_watermark * total as f64) as u64;
                    let reading = warren::broker::ResourceReading {
                        memory_used_bytes: input
                            .bit()
                            .then(|| watermark - 512 + input.u(1024) as u64),
                        memory_total_bytes: Some(total),
                        disk_free_bytes: input
                            .bit()
                            .then(|| limits.disk_free_limit_bytes - 512 + input.u(1024) as u64),
                    };
                    self.broker.handle_resources(reading, self.now_ms);
                }
                _ => {
                    if self.conns.len() < 3 {
                        self.connect();
                    }
                }
            },
        }
        self.pump();
        true
    }

    /// An administrative request from a menu, with fuzzer-chosen names and patterns.
    fn admin(&mut self, input: &mut Input<'_>) {
        use warren::broker::admin::{Actor, AdminRequest, GetAck, Password, PutMode};
        const USERS: [&str; 3] = ["guest", "u", "v"];
        const VHOSTS: [&str; 3] = ["/", "w", "队"];
        let user = USERS[input.u(USERS.len())].to_string();
        let vhost = VHOSTS[input.u(VHOSTS.len())].to_string();
        // A name the HTTP API or a definitions document could carry and AMQP never can:
        // past 255 bytes, and past the 64 KiB the disk allows a key.
        fn name(input: &mut Input<'_>, menu: &[&str]) -> String {
            match input.u(menu.len() + 1) {
                i if i < menu.len() => menu[i].into(),
                _ => "n".repeat(if input.bit() { 256 } else { 70_000 }),
            }
        }
        fn pattern(input: &mut Input<'_>) -> String {
            [".*", "^q", "", "(", "^amq\\.", "a{2,}"][input.u(6)].into()
        }
        let request = match input.u(19) {
            0 => AdminRequest::PutUser {
                name: user,
                password: Password::Plain("p".into()),
                tags: Some(vec!["administrator".into()]),
                mode: PutMode::Upsert,
            },
            1 => AdminRequest::DeleteUser { name: user },
            2 => AdminRequest::PutVhost {
                name: vhost,
                mode: PutMode::Upsert,
            },
            3 => AdminRequest::DeleteVhost { name: vhost },
            4 => AdminRequest::SetPermissions(PermissionRecord {
                user,
                vhost,
                configure: pattern(input),
                write: pattern(input),
                read: pattern(input),
            }),
            5 => AdminRequest::ClearPermissions { user, vhost },
            6 => AdminRequest::StopApp,
            7 => AdminRequest::StartApp,
            8 => AdminRequest::PurgeQueue {
                actor: Actor::Node,
                vhost: "/".into(),
                name: QUEUES[input.u(QUEUES.len())].into(),
            },
            9 => AdminRequest::DeleteQueue {
                actor: Actor::User(user),
                vhost: "/".into(),
                name: QUEUES[input.u(QUEUES.len())].into(),
                if_empty: input.bit(),
                if_unused: input.bit(),
            },
            10 => AdminRequest::ListQueues { vhost: None },
            11 => AdminRequest::Peek {
                actor: Actor::User(user),
                vhost: "/".into(),
                queue: QUEUES[input.u(QUEUES.len())].into(),
                count: input.u(4),
            },
            // Positions near those messages get: some taken, some not, some twice.
            12 => AdminRequest::Republish {
                actor: if input.bit() {
                    Actor::Node
                } else {
                    Actor::User(user)
                },
                vhost: "/".into(),
                queue: QUEUES[input.u(QUEUES.len())].into(),
                positions: (0..input.u(4)).map(|_| input.u(12) as u64).collect(),
            },
            13 => AdminRequest::Get {
                actor: Actor::Node,
                vhost: "/".into(),
                queue: QUEUES[input.u(QUEUES.len())].into(),
                count: input.u(3),
                ack: [
                    GetAck::Requeue,
                    GetAck::Ack,
                    GetAck::RejectRequeue,
                    GetAck::Reject,
                ][input.u(4)],
            },
            // Policies over the queues the inputs publish to: any key, any value type, any
            // pattern, both kinds; limits and dead-lettering put in force on full queues.
            14 => {
                const KEYS: [&str; 10] = [
                    "max-length",
                    "max-length-bytes",
                    "message-ttl",
                    "expires",
                    "overflow",
                    "dead-letter-exchange",
                    "dead-letter-routing-key",
                    "alternate-exchange",
                    "max-priority",
                    "queue-mode",
                ];
                const TEXTS: [&str; 5] = [
                    "reject-publish",
                    "drop-head",
                    "reject-publish-dlx",
                    "amq.fanout",
                    "",
                ];
                let mut definition = warren::proto::table::FieldTable::default();
                for _ in 0..1 + input.u(3) {
                    let key = KEYS[input.u(KEYS.len())];
                    let value = match input.u(3) {
                        0 => FieldValue::I64(input.u(6) as i64 - 1),
                        1 => FieldValue::I64(i64::MAX - input.u(2) as i64),
                        _ => FieldValue::LongStr(
                            TEXTS[input.u(TEXTS.len())].as_bytes().to_vec().into(),
                        ),
                    };
                    definition.insert(key, value);
                }
                AdminRequest::SetPolicy(warren::store::PolicyRecord {
                    operator: input.bit(),
                    vhost,
                    name: name(input, &["p", "q", ""]),
                    pattern: pattern(input),
                    apply_to: ["queues", "exchanges", "all", "bogus"][input.u(4)].into(),
                    priority: input.u(5) as i64 - 2,
                    definition,
                })
            }
            // Topic permissions on the topic exchanges the inputs publish and bind to.
            16 => AdminRequest::SetTopicPermissions(warren::store::TopicPermissionRecord {
                user,
                vhost,
                exchange: name(input, &["amq.topic", "x.topic", "amq.direct", ""]),
                write: pattern(input),
                read: pattern(input),
            }),
            17 => AdminRequest::ClearTopicPermissions {
                user,
                vhost,
                exchange: input.bit().then(|| "amq.topic".to_string()),
            },
            15 => AdminRequest::ClearPolicy {
                operator: input.bit(),
                vhost,
                name: ["p", "q"][input.u(2)].into(),
            },
            _ => AdminRequest::Overview,
        };
        let id = self.next_admin;
        self.next_admin += 1;
        self.admin_waiting.push(id);
        self.broker.handle_admin(id, request, self.now_ms);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut h = Harness::new();
    let mut input = Input { data };
    let mut steps = 0;
    loop {
        let before = h.broker.work_done();
        if steps >= 512 || !h.step(&mut input) {
            break;
        }
        let work = h.broker.work_done() - before;
        work_feedback(work);
        assert!(
            work <= WORK_BUDGET_PER_STEP,
            "step {steps} made the broker do {work} routing steps, over the budget of {WORK_BUDGET_PER_STEP}"
        );
        steps += 1;
    }
    // Settle everything: sync, then expire and dispatch what is left.
    let before = h.broker.work_done();
    h.store.sync().expect("memory store");
    h.broker.handle_persisted(h.last_batch);
    h.pump();
    assert!(
        h.admin_waiting.is_empty(),
        "administrative requests never answered: {:?}",
        h.admin_waiting
    );
    let work = h.broker.work_done() - before;
    assert!(
        work <= WORK_BUDGET_PER_STEP,
        "settling made the broker do {work} routing steps, over the budget of {WORK_BUDGET_PER_STEP}"
    );
});
