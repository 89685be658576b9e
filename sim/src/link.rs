//! One AMQP connection as a simulated client holds it: the bytes in and out, the frame
//! decoder, the connection handshake and close, heartbeats, and content frames assembled
//! into messages. Both kinds of client ([`crate::client`] and [`crate::hostile`]) speak
//! through it and keep only their channels and what they do with them.

use bytes::{Bytes, BytesMut};

use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{Frame, FrameDecoder, encode_content, encode_heartbeat, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::FieldTable;

/// The largest frame a simulated client accepts before the broker's tune says otherwise.
const FRAME_MAX_START: u32 = 131_072;

/// Handshake progress and life of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitStart,
    AwaitTune,
    AwaitOpenOk,
    Open,
    /// We sent connection.close.
    Closing,
    /// Done: the world drops the socket.
    Done,
}

/// What a client asks for in the handshake.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Sent in connection.start-ok.
    pub client_properties: FieldTable,
    /// The largest frame it accepts (the broker's offer may lower it).
    pub frame_max: u32,
    /// The most channels it asks for (the broker's offer may lower it).
    pub channel_max: u16,
}

/// What a method on channel 0 did.
#[derive(Debug)]
pub enum ConnectionEvent {
    /// A step of the handshake or of our close, answered where it needs an answer.
    Step,
    /// connection.open-ok: channels may open now.
    Opened,
    /// The broker closed the connection; the close-ok is sent.
    Closed {
        /// Reply code.
        code: u16,
        /// Reply text.
        text: String,
        /// The class and method the close names (0, 0 for none).
        failing: (u16, u16),
    },
    /// A method the handshake does not expect now (blocked, unblocked, or a stray one).
    Other(Method),
}

/// A message being assembled on a channel: its method, then its header, then its body.
#[derive(Debug)]
pub struct Content {
    method: Method,
    header: Option<(BasicProperties, u64)>,
    body: BytesMut,
}

/// A message whose frames have all arrived.
#[derive(Debug)]
pub struct Arrived {
    /// basic.deliver, basic.get-ok or basic.return.
    pub method: Method,
    /// Its properties.
    pub properties: BasicProperties,
    /// Its body.
    pub body: BytesMut,
}

impl Content {
    /// The start of a message: a content-bearing method.
    pub fn start(method: Method) -> Content {
        Content {
            method,
            header: None,
            body: BytesMut::new(),
        }
    }

    /// The header frame of the message in `slot`; the message if it has no body.
    pub fn header(
        slot: &mut Option<Content>,
        properties: BasicProperties,
        body_size: u64,
    ) -> Result<Option<Arrived>, &'static str> {
        let Some(content) = slot.as_mut() else {
            return Err("header without a method");
        };
        content.header = Some((properties, body_size));
        Ok(Content::complete(slot))
    }

    /// A body frame of the message in `slot`; the message once its body is whole.
    pub fn body(
        slot: &mut Option<Content>,
        payload: &[u8],
    ) -> Result<Option<Arrived>, &'static str> {
        match slot.as_mut() {
            Some(content) if content.header.is_some() => content.body.extend_from_slice(payload),
            _ => return Err("body without a header"),
        }
        Ok(Content::complete(slot))
    }

    fn complete(slot: &mut Option<Content>) -> Option<Arrived> {
        let whole = slot.as_ref().is_some_and(|c| {
            c.header
                .as_ref()
                .is_some_and(|(_, size)| c.body.len() as u64 >= *size)
        });
        if !whole {
            return None;
        }
        let content = slot.take()?;
        let (properties, _) = content.header?;
        Some(Arrived {
            method: content.method,
            properties,
            body: content.body,
        })
    }
}

/// One connection of a simulated client.
#[derive(Debug)]
pub struct Link {
    phase: Phase,
    decoder: FrameDecoder,
    input: BytesMut,
    output: BytesMut,
    frame_max: u32,
    heartbeat_ms: u64,
    last_send_ms: u64,
    /// Both sides sent connection.close at once: the broker answers ours with a close-ok
    /// after its own close (as the spec and RabbitMQ do), and nothing else may follow.
    close_ok_owed: bool,
}

impl Link {
    /// A fresh connection: the protocol header is queued to send.
    pub fn new(now_ms: u64) -> Link {
        let mut output = BytesMut::new();
        output.extend_from_slice(&PROTOCOL_HEADER);
        Link {
            phase: Phase::AwaitStart,
            decoder: FrameDecoder::new(FRAME_MAX_START + 8),
            input: BytesMut::new(),
            output,
            frame_max: 4096,
            heartbeat_ms: 0,
            last_send_ms: now_ms,
            close_ok_owed: false,
        }
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the handshake is done and no close is under way.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Queues a method.
    pub fn send(&mut self, channel: u16, method: &Method, now_ms: u64) {
        encode_method(channel, method, &mut self.output);
        self.last_send_ms = now_ms;
    }

    /// Queues bytes as they are: frames a well-behaved client would not write.
    pub fn send_raw(&mut self, bytes: &[u8], now_ms: u64) {
        self.output.extend_from_slice(bytes);
        self.last_send_ms = now_ms;
    }

    /// Queues a method with content, split into frames of the negotiated size.
    pub fn send_content(
        &mut self,
        channel: u16,
        method: &Method,
        properties: &BasicProperties,
        body: &[u8],
        now_ms: u64,
    ) {
        encode_content(
            channel,
            method,
            properties,
            body,
            self.frame_max,
            &mut self.output,
        );
        self.last_send_ms = now_ms;
    }

    /// Sends a heartbeat if nothing was sent for half the negotiated interval.
    pub fn keep_alive(&mut self, now_ms: u64) {
        if self.heartbeat_ms > 0 && now_ms >= self.last_send_ms + self.heartbeat_ms / 2 {
            encode_heartbeat(&mut self.output);
            self.last_send_ms = now_ms;
        }
    }

    /// Starts closing the connection.
    pub fn close(&mut self, now_ms: u64) {
        let m = ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        };
        self.send(0, &Method::ConnectionClose(m), now_ms);
        self.phase = Phase::Closing;
    }

    /// Bytes to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.output.is_empty()).then(|| self.output.split().freeze())
    }

    /// Bytes from the socket, for [`Link::next_frame`].
    pub fn receive(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// The next whole frame received, if any; none once the connection is done (what
    /// follows is dropped). An error is a stream that does not decode.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        if self.phase == Phase::Done {
            if self.close_ok_owed {
                match self.decoder.decode(&mut self.input) {
                    Ok(None) => return Ok(None),
                    Ok(Some(Frame::Method {
                        channel: 0,
                        method: Method::ConnectionCloseOk(_),
                    })) => self.close_ok_owed = false,
                    other => {
                        return Err(format!(
                            "after a close in both directions the broker sent {other:?}, not the close-ok it owed"
                        ));
                    }
                }
            }
            if !self.input.is_empty() {
                // Nothing may follow the broker's connection.close or close-ok.
                let n = self.input.len();
                let first = self.decoder.decode(&mut self.input);
                self.input.clear();
                return Err(format!(
                    "the broker sent {n} bytes after its connection.close or close-ok, \
                     starting with {first:?}"
                ));
            }
            return Ok(None);
        }
        self.decoder
            .decode(&mut self.input)
            .map_err(|e| format!("cannot decode: {e:?}"))
    }

    /// A method on channel 0: the handshake, asking for what `hello` says, and the close
    /// in either direction.
    pub fn connection_method(
        &mut self,
        method: Method,
        hello: &Hello,
        now_ms: u64,
    ) -> ConnectionEvent {
        match (self.phase, method) {
            (Phase::AwaitStart, Method::ConnectionStart(_)) => {
                let ok = ConnectionStartOk {
                    client_properties: hello.client_properties.clone(),
                    mechanism: "PLAIN".into(),
                    response: Bytes::from_static(b"\0guest\0guest"),
                    locale: "en_US".into(),
                };
                self.send(0, &Method::ConnectionStartOk(ok), now_ms);
                self.phase = Phase::AwaitTune;
                ConnectionEvent::Step
            }
            (Phase::AwaitTune, Method::ConnectionTune(t)) => {
                let frame_max = if t.frame_max == 0 {
                    hello.frame_max
                } else {
                    t.frame_max.min(hello.frame_max)
                };
                self.frame_max = frame_max;
                self.heartbeat_ms = u64::from(t.heartbeat) * 1000;
                self.decoder.set_max_frame_bytes(frame_max + 8);
                let ok = ConnectionTuneOk {
                    channel_max: t.channel_max.min(hello.channel_max),
                    frame_max,
                    heartbeat: t.heartbeat,
                };
                self.send(0, &Method::ConnectionTuneOk(ok), now_ms);
                let open = ConnectionOpen {
                    virtual_host: "/".into(),
                    capabilities: String::new(),
                    insist: false,
                };
                self.send(0, &Method::ConnectionOpen(open), now_ms);
                self.phase = Phase::AwaitOpenOk;
                ConnectionEvent::Step
            }
            (Phase::AwaitOpenOk, Method::ConnectionOpenOk(_)) => {
                self.phase = Phase::Open;
                ConnectionEvent::Opened
            }
            (Phase::Closing, Method::ConnectionCloseOk(_)) => {
                self.phase = Phase::Done;
                ConnectionEvent::Step
            }
            (phase, Method::ConnectionClose(c)) => {
                self.send(0, &Method::ConnectionCloseOk(ConnectionCloseOk {}), now_ms);
                self.close_ok_owed = phase == Phase::Closing;
                self.phase = Phase::Done;
                ConnectionEvent::Closed {
                    code: c.reply_code,
                    text: c.reply_text,
                    failing: (c.class_id, c.method_id),
                }
            }
            (_, other) => ConnectionEvent::Other(other),
        }
    }
}
