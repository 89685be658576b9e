//! An AMQP client for attacks and bystanders: warren's own codec over a blocking socket,
//! where every wait ends in a value (a reply, or how the server closed), never a panic,
//! so that an attack reports what the server did.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::ContentHeader;
use warren::proto::frame::{Frame, encode_content, encode_frame, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use crate::common::{RawClient, client_properties};

/// How a wait for the server ended without the reply it wanted.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// The server closed the channel.
    Channel(u16, String),
    /// The server closed the connection.
    Connection(u16, String),
    /// The socket closed without a close method.
    Eof,
    /// Nothing came within the read timeout, or the socket failed.
    Io(String),
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::Channel(code, text) => write!(f, "channel closed {code} {text}"),
            Closed::Connection(code, text) => write!(f, "connection closed {code} {text}"),
            Closed::Eof => write!(f, "socket closed by the server"),
            Closed::Io(e) => write!(f, "no answer: {e}"),
        }
    }
}

impl From<Closed> for String {
    fn from(c: Closed) -> String {
        c.to_string()
    }
}

/// What the server sent: a method, or a method with its content.
#[derive(Debug, Clone)]
pub enum Event {
    Method(u16, Method),
    Content(u16, Method, BasicProperties, Vec<u8>),
}

impl Event {
    pub fn channel(&self) -> u16 {
        match self {
            Event::Method(ch, _) | Event::Content(ch, ..) => *ch,
        }
    }
    pub fn method(&self) -> &Method {
        match self {
            Event::Method(_, m) | Event::Content(_, m, ..) => m,
        }
    }
}

/// Methods the server sends on its own, not as the reply to a synchronous request.
fn is_async(m: &Method) -> bool {
    matches!(
        m,
        Method::BasicAck(_)
            | Method::BasicNack(_)
            | Method::BasicDeliver(_)
            | Method::BasicReturn(_)
            | Method::BasicCancel(_)
            | Method::ConnectionBlocked(_)
            | Method::ConnectionUnblocked(_)
    )
}

/// A string field value.
pub fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

/// A table from (key, value) pairs.
pub fn table<K: Into<String>>(entries: impl IntoIterator<Item = (K, FieldValue)>) -> FieldTable {
    entries.into_iter().map(|(k, v)| (k.into(), v)).collect()
}

/// Persistent message properties.
pub fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

pub struct Amqp {
    pub raw: RawClient,
    /// Per channel in confirm mode: the next publish sequence number and the numbers not
    /// yet confirmed.
    confirms: HashMap<u16, (u64, BTreeSet<u64>)>,
    pub acks: u64,
    pub nacks: u64,
    /// Asynchronous events read while waiting for something else.
    pub events: VecDeque<Event>,
    pub blocked: Option<String>,
    pub frame_max: u32,
    pub channel_max: u16,
}

impl Amqp {
    /// A TCP connection with nothing sent.
    pub fn connect(port: u16) -> Result<Amqp, String> {
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Amqp::wrap(RawClient::from_stream(stream)))
    }

    /// A TCP connection from the local address `source` (any 127.x.y.z works on Linux),
    /// with a receive buffer of `recv_buffer` bytes if given (before connecting, so that
    /// the window stays that small).
    pub fn connect_with(
        port: u16,
        source: Option<IpAddr>,
        recv_buffer: Option<usize>,
    ) -> Result<Amqp, String> {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        if let Some(bytes) = recv_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(|e| e.to_string())?;
        }
        if let Some(ip) = source {
            socket
                .bind(&SocketAddr::new(ip, 0).into())
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        socket
            .connect_timeout(&server.into(), Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        Ok(Amqp::wrap(RawClient::from_stream(socket.into())))
    }

    fn wrap(raw: RawClient) -> Amqp {
        Amqp {
            raw,
            confirms: HashMap::new(),
            acks: 0,
            nacks: 0,
            events: VecDeque::new(),
            blocked: None,
            frame_max: 131_072,
            channel_max: 0,
        }
    }

    /// Connects and logs in as guest on "/".
    pub fn open(port: u16) -> Result<Amqp, String> {
        Amqp::login(port, "guest", "guest", "/").map_err(String::from)
    }

    /// Connects and logs in; a refusal comes back as the server's close.
    pub fn login(port: u16, user: &str, pass: &str, vhost: &str) -> Result<Amqp, Closed> {
        let mut c = Amqp::connect(port).map_err(Closed::Io)?;
        c.handshake(user, pass, vhost)?;
        Ok(c)
    }

    /// The opening handshake on a connected socket.
    pub fn handshake(&mut self, user: &str, pass: &str, vhost: &str) -> Result<(), Closed> {
        self.raw.send_raw(&PROTOCOL_HEADER);
        match self.next()? {
            Event::Method(0, Method::ConnectionStart(_)) => {}
            other => return Err(Closed::Io(format!("expected start, got {other:?}"))),
        }
        let mut response = vec![0u8];
        response.extend_from_slice(user.as_bytes());
        response.push(0);
        response.extend_from_slice(pass.as_bytes());
        self.send(
            0,
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: client_properties(),
                mechanism: "PLAIN".into(),
                response: Bytes::from(response),
                locale: "en_US".into(),
            }),
        );
        let tune = match self.next()? {
            Event::Method(0, Method::ConnectionTune(t)) => t,
            other => return Err(Closed::Io(format!("expected tune, got {other:?}"))),
        };
        self.frame_max = tune.frame_max;
        self.channel_max = tune.channel_max;
        self.send(
            0,
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max: tune.frame_max,
                heartbeat: 0,
            }),
        );
        self.send(
            0,
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: vhost.into(),
                ..Default::default()
            }),
        );
        match self.next()? {
            Event::Method(0, Method::ConnectionOpenOk(_)) => Ok(()),
            other => Err(Closed::Io(format!("expected open-ok, got {other:?}"))),
        }
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        let _ = self.raw.stream.set_read_timeout(Some(timeout));
    }

    pub fn send(&mut self, channel: u16, method: Method) {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.send_bytes(&out);
    }

    /// Writes bytes; a failed write shows up as the next read's error.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = std::io::Write::write_all(&mut self.raw.stream, bytes);
    }

    /// The next thing the server sent (heartbeats skipped). A close is answered and
    /// returned as the error.
    pub fn next(&mut self) -> Result<Event, Closed> {
        loop {
            let frame = match self.raw.try_recv_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Err(Closed::Eof),
                Err(e) => return Err(io_error(e)),
            };
            let (channel, method) = match frame {
                Frame::Heartbeat { .. } => continue,
                Frame::Method { channel, method } => (channel, method),
                other => return Err(Closed::Io(format!("unexpected frame {other:?}"))),
            };
            match method {
                Method::ConnectionClose(c) => {
                    self.send(0, Method::ConnectionCloseOk(ConnectionCloseOk {}));
                    return Err(Closed::Connection(c.reply_code, c.reply_text));
                }
                Method::ChannelClose(c) => {
                    self.send(channel, Method::ChannelCloseOk(ChannelCloseOk {}));
                    self.confirms.remove(&channel);
                    return Err(Closed::Channel(c.reply_code, c.reply_text));
                }
                m if m.has_content() => {
                    let (props, body) = self.read_content()?;
                    return Ok(Event::Content(channel, m, props, body));
                }
                m => return Ok(Event::Method(channel, m)),
            }
        }
    }

    fn read_content(&mut self) -> Result<(BasicProperties, Vec<u8>), Closed> {
        let header = match self.raw.try_recv_frame() {
            Ok(Some(Frame::Header { header, .. })) => header,
            Ok(None) => return Err(Closed::Eof),
            Ok(Some(other)) => return Err(Closed::Io(format!("expected header, got {other:?}"))),
            Err(e) => return Err(io_error(e)),
        };
        let mut body = Vec::new();
        while (body.len() as u64) < header.body_size {
            match self.raw.try_recv_frame() {
                Ok(Some(Frame::Body { payload, .. })) => body.extend_from_slice(&payload),
                Ok(None) => return Err(Closed::Eof),
                Ok(Some(other)) => return Err(Closed::Io(format!("expected body, got {other:?}"))),
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok((header.properties, body))
    }

    /// Takes note of an asynchronous event: confirms are counted, the rest is kept.
    fn note(&mut self, event: Event) {
        match event.method() {
            Method::BasicAck(a) => {
                let (ch, tag, multiple) = (event.channel(), a.delivery_tag, a.multiple);
                self.settle(ch, tag, multiple, true);
            }
            Method::BasicNack(n) => {
                let (ch, tag, multiple) = (event.channel(), n.delivery_tag, n.multiple);
                self.settle(ch, tag, multiple, false);
            }
            Method::ConnectionBlocked(b) => self.blocked = Some(b.reason.clone()),
            Method::ConnectionUnblocked(_) => self.blocked = None,
            _ => self.events.push_back(event),
        }
    }

    fn settle(&mut self, channel: u16, tag: u64, multiple: bool, ack: bool) {
        let Some((_, pending)) = self.confirms.get_mut(&channel) else {
            return;
        };
        let settled: Vec<u64> = if multiple {
            pending.range(..=tag).copied().collect()
        } else {
            pending.take(&tag).into_iter().collect()
        };
        for t in &settled {
            pending.remove(t);
        }
        if ack {
            self.acks += settled.len() as u64;
        } else {
            self.nacks += settled.len() as u64;
        }
    }

    /// Sends `methods` on `channel` back to back (a thousand at a time), reading their
    /// replies after each thousand: the reply to each, in order, or how the server closed.
    pub fn pipeline(
        &mut self,
        channel: u16,
        methods: impl IntoIterator<Item = Method>,
    ) -> Result<Vec<Event>, Closed> {
        let mut replies = Vec::new();
        let mut methods = methods.into_iter().peekable();
        while methods.peek().is_some() {
            let mut out = BytesMut::new();
            let mut n = 0;
            for m in methods.by_ref().take(1000) {
                encode_method(channel, &m, &mut out);
                n += 1;
            }
            self.send_bytes(&out);
            for _ in 0..n {
                replies.push(self.reply(channel)?);
            }
        }
        Ok(replies)
    }

    /// Sends a synchronous method and waits for its reply on that channel.
    pub fn call(&mut self, channel: u16, method: Method) -> Result<Event, Closed> {
        self.send(channel, method);
        self.reply(channel)
    }

    /// The next synchronous reply on `channel`; asynchronous events meanwhile are noted.
    pub fn reply(&mut self, channel: u16) -> Result<Event, Closed> {
        // Replies on different channels may come in any order: one may already be here.
        let waiting = self
            .events
            .iter()
            .position(|e| e.channel() == channel && !is_async(e.method()));
        if let Some(event) = waiting.and_then(|i| self.events.remove(i)) {
            return Ok(event);
        }
        loop {
            let event = self.next()?;
            if event.channel() == channel && !is_async(event.method()) {
                return Ok(event);
            }
            self.note(event);
        }
    }

    pub fn open_channel(&mut self, channel: u16) -> Result<(), Closed> {
        match self.call(channel, Method::ChannelOpen(ChannelOpen::default()))? {
            Event::Method(_, Method::ChannelOpenOk(_)) => Ok(()),
            other => Err(unexpected("channel.open-ok", &other)),
        }
    }

    pub fn confirm_select(&mut self, channel: u16) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::ConfirmSelect(ConfirmSelect { nowait: false }),
        )? {
            Event::Method(_, Method::ConfirmSelectOk(_)) => {
                self.confirms.insert(channel, (1, BTreeSet::new()));
                Ok(())
            }
            other => Err(unexpected("confirm.select-ok", &other)),
        }
    }

    pub fn declare(
        &mut self,
        channel: u16,
        declare: QueueDeclare,
    ) -> Result<QueueDeclareOk, Closed> {
        match self.call(channel, Method::QueueDeclare(declare))? {
            Event::Method(_, Method::QueueDeclareOk(ok)) => Ok(ok),
            other => Err(unexpected("queue.declare-ok", &other)),
        }
    }

    /// Declares a queue with arguments.
    pub fn queue(
        &mut self,
        channel: u16,
        name: &str,
        durable: bool,
        args: FieldTable,
    ) -> Result<(), Closed> {
        self.declare(
            channel,
            QueueDeclare {
                queue: name.into(),
                durable,
                arguments: args,
                ..Default::default()
            },
        )
        .map(|_| ())
    }

    /// The queue's ready message count (a passive declare).
    pub fn count(&mut self, channel: u16, name: &str) -> Result<u32, Closed> {
        self.declare(
            channel,
            QueueDeclare {
                queue: name.into(),
                passive: true,
                ..Default::default()
            },
        )
        .map(|ok| ok.message_count)
    }

    pub fn delete_queue(&mut self, channel: u16, name: &str) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::QueueDelete(QueueDelete {
                queue: name.into(),
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::QueueDeleteOk(_)) => Ok(()),
            other => Err(unexpected("queue.delete-ok", &other)),
        }
    }

    pub fn exchange(
        &mut self,
        channel: u16,
        name: &str,
        kind: &str,
        args: FieldTable,
    ) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange: name.into(),
                kind: kind.into(),
                arguments: args,
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::ExchangeDeclareOk(_)) => Ok(()),
            other => Err(unexpected("exchange.declare-ok", &other)),
        }
    }

    pub fn delete_exchange(&mut self, channel: u16, name: &str) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::ExchangeDelete(ExchangeDelete {
                exchange: name.into(),
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::ExchangeDeleteOk(_)) => Ok(()),
            other => Err(unexpected("exchange.delete-ok", &other)),
        }
    }

    pub fn bind(
        &mut self,
        channel: u16,
        queue: &str,
        exchange: &str,
        key: &str,
        args: FieldTable,
    ) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::QueueBind(QueueBind {
                queue: queue.into(),
                exchange: exchange.into(),
                routing_key: key.into(),
                arguments: args,
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::QueueBindOk(_)) => Ok(()),
            other => Err(unexpected("queue.bind-ok", &other)),
        }
    }

    pub fn bind_exchange(
        &mut self,
        channel: u16,
        destination: &str,
        source: &str,
        key: &str,
    ) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::ExchangeBind(ExchangeBind {
                destination: destination.into(),
                source: source.into(),
                routing_key: key.into(),
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::ExchangeBindOk(_)) => Ok(()),
            other => Err(unexpected("exchange.bind-ok", &other)),
        }
    }

    /// Publishes without waiting (a confirm is expected later if the channel is in
    /// confirm mode).
    pub fn publish(
        &mut self,
        channel: u16,
        exchange: &str,
        key: &str,
        props: &BasicProperties,
        body: &[u8],
    ) {
        self.publish_flags(channel, exchange, key, false, props, body);
    }

    pub fn publish_flags(
        &mut self,
        channel: u16,
        exchange: &str,
        key: &str,
        mandatory: bool,
        props: &BasicProperties,
        body: &[u8],
    ) {
        let mut out = BytesMut::new();
        let m = Method::BasicPublish(BasicPublish {
            exchange: exchange.into(),
            routing_key: key.into(),
            mandatory,
            ..Default::default()
        });
        encode_content(channel, &m, props, body, self.frame_max, &mut out);
        if let Some((next, pending)) = self.confirms.get_mut(&channel) {
            pending.insert(*next);
            *next += 1;
        }
        self.send_bytes(&out);
    }

    /// Unconfirmed publishes on `channel`.
    pub fn unconfirmed(&self, channel: u16) -> usize {
        self.confirms.get(&channel).map_or(0, |(_, p)| p.len())
    }

    /// Reads one event and takes note of it.
    pub fn pump(&mut self) -> Result<(), Closed> {
        let event = self.next()?;
        self.note(event);
        Ok(())
    }

    /// Waits until every publish on `channel` is confirmed (acked or nacked).
    pub fn wait_confirms(&mut self, channel: u16) -> Result<(), Closed> {
        while self.unconfirmed(channel) > 0 {
            let event = self.next()?;
            self.note(event);
        }
        Ok(())
    }

    /// Publishes one message and waits for its confirm; true for an ack.
    pub fn publish_confirmed(
        &mut self,
        channel: u16,
        exchange: &str,
        key: &str,
        props: &BasicProperties,
        body: &[u8],
    ) -> Result<bool, Closed> {
        let nacks = self.nacks;
        self.publish(channel, exchange, key, props, body);
        self.wait_confirms(channel)?;
        Ok(self.nacks == nacks)
    }

    /// Publishes `count` messages keeping at most `window` unconfirmed; returns how long
    /// it took.
    pub fn publish_many(
        &mut self,
        channel: u16,
        exchange: &str,
        key: &str,
        props: &BasicProperties,
        body: &[u8],
        count: usize,
        window: usize,
    ) -> Result<Duration, Closed> {
        let started = Instant::now();
        for _ in 0..count {
            while self.unconfirmed(channel) >= window {
                let event = self.next()?;
                self.note(event);
            }
            self.publish(channel, exchange, key, props, body);
        }
        self.wait_confirms(channel)?;
        Ok(started.elapsed())
    }

    pub fn consume(&mut self, channel: u16, queue: &str, no_ack: bool) -> Result<String, Closed> {
        match self.call(
            channel,
            Method::BasicConsume(BasicConsume {
                queue: queue.into(),
                no_ack,
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::BasicConsumeOk(ok)) => Ok(ok.consumer_tag),
            other => Err(unexpected("basic.consume-ok", &other)),
        }
    }

    pub fn qos(&mut self, channel: u16, prefetch: u16) -> Result<(), Closed> {
        match self.call(
            channel,
            Method::BasicQos(BasicQos {
                prefetch_count: prefetch,
                ..Default::default()
            }),
        )? {
            Event::Method(_, Method::BasicQosOk(_)) => Ok(()),
            other => Err(unexpected("basic.qos-ok", &other)),
        }
    }

    /// The next delivery (from the events already read, then from the socket):
    /// (delivery tag, properties, body).
    pub fn delivery(&mut self) -> Result<(u64, BasicProperties, Vec<u8>), Closed> {
        loop {
            let pos = self
                .events
                .iter()
                .position(|e| matches!(e, Event::Content(_, Method::BasicDeliver(_), ..)));
            if let Some(i) = pos {
                if let Some(Event::Content(_, Method::BasicDeliver(d), props, body)) =
                    self.events.remove(i)
                {
                    return Ok((d.delivery_tag, props, body));
                }
            }
            let event = self.next()?;
            self.note(event);
        }
    }

    pub fn ack(&mut self, channel: u16, tag: u64, multiple: bool) {
        self.send(
            channel,
            Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple,
            }),
        );
    }

    /// basic.get: Some((properties, body)) or None when the queue is empty.
    pub fn get(
        &mut self,
        channel: u16,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<(u64, BasicProperties, Vec<u8>)>, Closed> {
        match self.call(
            channel,
            Method::BasicGet(BasicGet {
                queue: queue.into(),
                no_ack,
                ..Default::default()
            }),
        )? {
            Event::Content(_, Method::BasicGetOk(ok), props, body) => {
                Ok(Some((ok.delivery_tag, props, body)))
            }
            Event::Method(_, Method::BasicGetEmpty(_)) => Ok(None),
            other => Err(unexpected("basic.get-ok", &other)),
        }
    }

    /// Closes the connection politely (bounded wait for close-ok).
    pub fn close(mut self) {
        self.set_timeout(Duration::from_secs(2));
        self.send(
            0,
            Method::ConnectionClose(ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                ..Default::default()
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match self.raw.try_recv_frame() {
                Ok(Some(Frame::Method {
                    method: Method::ConnectionCloseOk(_),
                    ..
                }))
                | Ok(None)
                | Err(_) => return,
                Ok(Some(_)) => continue,
            }
        }
    }
}

/// A failed read: a timeout says so plainly.
fn io_error(e: std::io::Error) -> Closed {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Closed::Io("nothing within the read timeout".into())
        }
        _ => Closed::Io(e.to_string()),
    }
}

pub fn unexpected(wanted: &str, got: &Event) -> Closed {
    Closed::Io(format!("expected {wanted}, got {}", got.method().name()))
}

/// The frames of a publish whose header declares `body_size` bytes, without the body.
pub fn publish_header(
    channel: u16,
    exchange: &str,
    key: &str,
    props: BasicProperties,
    body_size: u64,
) -> BytesMut {
    let mut out = BytesMut::new();
    encode_method(
        channel,
        &Method::BasicPublish(BasicPublish {
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        }),
        &mut out,
    );
    encode_frame(
        &Frame::Header {
            channel,
            header: ContentHeader {
                class_id: 60,
                weight: 0,
                body_size,
                properties: props,
            },
        },
        &mut out,
    );
    out
}

/// One body frame.
pub fn body_frame(channel: u16, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(
        &Frame::Body {
            channel,
            payload: Bytes::copy_from_slice(payload),
        },
        &mut out,
    );
    out
}
