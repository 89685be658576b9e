//! The per-connection protocol state machine (sans-IO).
//!
//! A [`Connection`] turns the bytes a client sends into [`Command`]s for the broker and the
//! broker's [`Reply`]s into bytes for the client. It owns what needs no broker state: the
//! protocol header, the wire side of the handshake (start, tune, open), negotiated limits,
//! heartbeats, channel numbering, and the assembly of `basic.publish` content from its
//! header and body frames. Errors it detects close the connection (or the channel) with
//! the reply code RabbitMQ uses.
//!
//! The driver calls it in a fixed order:
//!
//! 1. [`Connection::handle_bytes`] (or [`Connection::read_buf`] then
//!    [`Connection::handle_read`]) with what the socket produced, and
//!    [`Connection::handle_eof`] when the peer closed;
//! 2. [`Connection::poll_command`] until `None`, handing each command to the broker;
//! 3. [`Connection::handle_reply`] for each broker reply;
//! 4. [`Connection::poll_transmit`] and write what it returns;
//! 5. [`Connection::poll_timeout`] to know when to call [`Connection::handle_timeout`];
//! 6. once [`Connection::is_closed`] and everything is written, drop the socket.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::command::{Command, Message, Reply};
use super::constants::*;
use super::frame::{
    ContentHeader, DecodeError, Frame, FrameDecoder, FrameError, RawFrame, encode_content_frames,
    encode_content_frames_zero_copy, encode_deliver_method, encode_heartbeat, encode_method,
};
use super::method::*;
use super::table::FieldTable;

mod content;
mod handshake;

use content::{Assembly, ChannelState, publish_error};
pub use handshake::{override_server_properties, server_properties};

/// Bodies this large are sent from the message's own buffer instead of being copied into
/// the output (below it, one copy is cheaper than another buffer to write).
pub const ZERO_COPY_BODY_BYTES: usize = 4096;

/// Settings a connection offers and enforces.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest frame offered in `connection.tune` (bytes, including the 8 bytes of framing).
    pub frame_max_bytes: u32,
    /// Highest channel number offered in `connection.tune`.
    pub channel_max: u16,
    /// Heartbeat interval offered in `connection.tune`, in seconds (0 disables).
    pub heartbeat_s: u16,
    /// Largest message body accepted; a larger one is refused with 406 on its channel.
    pub max_message_bytes: u64,
    /// Time allowed from the socket opening to `connection.open`.
    pub handshake_timeout_ms: u64,
    /// Time allowed for the client's `connection.close-ok` after the server closes.
    pub close_timeout_ms: u64,
    /// Largest amount of unprocessed input buffered; beyond it the driver stops reading.
    pub max_input_buffer_bytes: usize,
    /// The `server-properties` table of `connection.start`.
    pub server_properties: FieldTable,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            frame_max_bytes: 131_072,
            channel_max: 2047,
            heartbeat_s: 60,
            max_message_bytes: 128 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 3_000,
            max_input_buffer_bytes: 4 * 1024 * 1024,
            server_properties: server_properties(env!("CARGO_PKG_VERSION"), "warren"),
        }
    }
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHeader,
    AwaitingStartOk,
    /// The broker is checking the credentials.
    AwaitingLogin,
    AwaitingTuneOk,
    AwaitingOpen,
    /// The broker is checking the vhost.
    AwaitingOpenOk,
    Open,
    /// The server sent `connection.close` and waits for `close-ok` until the deadline.
    Closing {
        deadline_ms: u64,
    },
    /// Input is discarded until the peer drops the socket or the deadline passes: after
    /// the client's close got its `close-ok` (the spec leaves closing the socket to the
    /// receiver of `close-ok`), or after a framing error made the byte stream unreadable.
    Draining {
        deadline_ms: u64,
    },
    /// Nothing more is read; the driver writes what is left and drops the socket.
    Closed,
}

/// A connection-level error: the reply code and text of the `connection.close` it causes,
/// and the method that caused it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionError {
    /// AMQP reply code (5xx, or 320/402/403 during the handshake).
    pub code: u16,
    /// Reply text, prefixed with the code's name as RabbitMQ does.
    pub text: String,
    /// Class of the offending method, or 0.
    pub class_id: u16,
    /// Id of the offending method, or 0.
    pub method_id: u16,
}

impl ConnectionError {
    fn new(code: u16, detail: impl AsRef<str>) -> Self {
        ConnectionError {
            code,
            text: format!("{} - {}", reply_name(code), detail.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    fn on(mut self, method: &Method) -> Self {
        self.class_id = method.class_id();
        self.method_id = method.method_id();
        self
    }
}

/// The protocol state machine of one client connection.
#[derive(Debug)]
pub struct Connection {
    config: ConnectionConfig,
    phase: Phase,
    decoder: FrameDecoder,
    input: BytesMut,
    output: BytesMut,
    /// Bytes to send before `output`: cut from it around message bodies that are sent
    /// without copying.
    chunks: VecDeque<Bytes>,
    commands: VecDeque<Command>,
    /// Channels in use (open or closing), by number; at most channel_max of them.
    /// Looked up on every frame, so hashed with foldhash (keys are small channel numbers).
    channels: HashMap<u16, ChannelState, foldhash::fast::FixedState>,
    frame_max_bytes: u32,
    channel_max: u16,
    heartbeat_ms: u64,
    opened_at_ms: u64,
    last_recv_ms: u64,
    last_send_ms: u64,
    closed_reported: bool,
    /// The protocol error this layer closed the connection for, if any.
    error: Option<ConnectionError>,
    /// Blocked by a resource alarm: input is neither read nor processed.
    paused: bool,
    /// A `basic.publish` arrived (and [`Command::Publishing`] was sent).
    publishing: bool,
    /// Bytes of message bodies still being assembled, on all channels.
    partial_body_bytes: u64,
}

impl Connection {
    /// A connection whose socket was accepted at `now_ms`.
    pub fn new(config: ConnectionConfig, now_ms: u64) -> Self {
        let frame_max_bytes = config.frame_max_bytes;
        let channel_max = config.channel_max;
        Connection {
            // Until tune-ok, frames are limited to the protocol minimum, as in RabbitMQ.
            decoder: FrameDecoder::new(FRAME_MIN_SIZE + FRAME_OVERHEAD),
            config,
            phase: Phase::AwaitingHeader,
            input: BytesMut::with_capacity(4096),
            output: BytesMut::with_capacity(4096),
            chunks: VecDeque::new(),
            commands: VecDeque::new(),
            channels: HashMap::default(),
            frame_max_bytes,
            channel_max,
            heartbeat_ms: 0,
            opened_at_ms: now_ms,
            last_recv_ms: now_ms,
            last_send_ms: now_ms,
            closed_reported: false,
            error: None,
            paused: false,
            publishing: false,
            partial_body_bytes: 0,
        }
    }

    /// The buffer the driver may read socket bytes into directly; follow with
    /// [`Connection::handle_read`].
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Bytes from the socket.
    pub fn handle_bytes(&mut self, data: &[u8], now_ms: u64) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.input.extend_from_slice(data);
        self.handle_read(now_ms);
    }

    /// Processes whatever is buffered in [`Connection::read_buf`].
    pub fn handle_read(&mut self, now_ms: u64) {
        if !self.input.is_empty() {
            self.last_recv_ms = now_ms;
        }
        self.process(now_ms);
    }

    /// The peer closed its side of the socket (or the socket failed).
    pub fn handle_eof(&mut self) {
        self.input.clear();
        self.enter_closed();
    }

    /// The next command for the broker.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// Whether the driver should read more from the socket. False while the broker is
    /// deciding on the handshake, when the input backlog is full, or after close.
    pub fn wants_read(&self) -> bool {
        !self.paused
            && !matches!(
                self.phase,
                Phase::AwaitingLogin | Phase::AwaitingOpenOk | Phase::Closed
            )
            && self.input.len() < self.config.max_input_buffer_bytes
    }

    /// True once nothing more will be read: write out [`Connection::poll_transmit`] and
    /// drop the socket.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Bytes to write to the socket, if any.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.chunks.is_empty() {
            return (!self.output.is_empty()).then(|| self.output.split().freeze());
        }
        let mut all = BytesMut::with_capacity(self.pending_transmit_bytes());
        for c in self.chunks.drain(..) {
            all.extend_from_slice(&c);
        }
        all.extend_from_slice(&self.output.split());
        Some(all.freeze())
    }

    /// Bytes to write to the socket, in order, as separate buffers (large message bodies
    /// are not copied); for vectored writes.
    pub fn poll_transmit_chunks(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.chunks.drain(..));
        if !self.output.is_empty() {
            out.push(self.output.split().freeze());
        }
    }

    /// Number of bytes waiting in [`Connection::poll_transmit`].
    pub fn pending_transmit_bytes(&self) -> usize {
        self.output.len() + self.chunks.iter().map(Bytes::len).sum::<usize>()
    }

    /// A reply from the broker for this connection.
    pub fn handle_reply(&mut self, reply: Reply, now_ms: u64) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if matches!(self.phase, Phase::Closing { .. } | Phase::Draining { .. })
            && matches!(
                reply,
                Reply::Method { .. } | Reply::Content { .. } | Reply::Deliver { .. }
            )
        {
            // Nothing follows a connection.close or its close-ok on the wire: replies the
            // broker made for commands before the close are dropped, as RabbitMQ sends
            // nothing after its close.
            return;
        }
        match reply {
            Reply::LoginOk => {
                if self.phase == Phase::AwaitingLogin {
                    let tune = ConnectionTune {
                        channel_max: self.config.channel_max,
                        frame_max: self.config.frame_max_bytes,
                        heartbeat: self.config.heartbeat_s,
                    };
                    self.send_method(0, &Method::ConnectionTune(tune), now_ms);
                    self.phase = Phase::AwaitingTuneOk;
                    self.process(now_ms);
                }
            }
            Reply::Disconnect => self.enter_closed(),
            Reply::PauseReading(paused) => {
                self.paused = paused;
                if !paused {
                    // Time spent blocked does not count against the client's heartbeats.
                    self.last_recv_ms = now_ms;
                    self.process(now_ms);
                }
            }
            Reply::Method { channel, method } => {
                self.observe_outgoing(channel, &method, now_ms);
                self.send_method(channel, &method, now_ms);
                if matches!(self.phase, Phase::Open) {
                    // A reply may have unblocked buffered input (open-ok after a pause).
                    self.process(now_ms);
                }
            }
            Reply::Content {
                channel,
                method,
                message,
            } => {
                debug_assert!(method.has_content(), "{} carries no content", method.name());
                encode_method(channel, &method, &mut self.output);
                self.encode_content(channel, method.class_id(), &message);
                self.last_send_ms = now_ms;
            }
            Reply::Deliver {
                channel,
                consumer_tag,
                delivery_tag,
                redelivered,
                message,
            } => {
                encode_deliver_method(
                    channel,
                    &consumer_tag,
                    delivery_tag,
                    redelivered,
                    &message.exchange,
                    &message.routing_key,
                    &mut self.output,
                );
                self.encode_content(channel, BasicDeliver::CLASS_ID, &message);
                self.last_send_ms = now_ms;
            }
        }
    }

    /// Writes a message's content header and body after its method; a large body is not
    /// copied but queued as slices of its own buffer.
    fn encode_content(&mut self, channel: u16, class_id: u16, message: &Message) {
        if message.body.len() >= ZERO_COPY_BODY_BYTES {
            encode_content_frames_zero_copy(
                channel,
                class_id,
                &message.properties,
                &message.body,
                self.frame_max_bytes,
                &mut self.output,
                &mut self.chunks,
            );
        } else {
            encode_content_frames(
                channel,
                class_id,
                &message.properties,
                &message.body,
                self.frame_max_bytes,
                &mut self.output,
            );
        }
    }

    /// When [`Connection::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::Closed => None,
            Phase::Closing { deadline_ms } | Phase::Draining { deadline_ms } => Some(deadline_ms),
            Phase::Open | Phase::AwaitingOpen | Phase::AwaitingOpenOk if self.heartbeat_ms > 0 => {
                let send_at = self.last_send_ms + self.heartbeat_ms / 2;
                if self.paused {
                    // Not reading: the client's silence is ours, not a missed heartbeat.
                    return Some(send_at);
                }
                let dead_at = self.last_recv_ms + self.heartbeat_ms * 2;
                // Heartbeats keep an open connection alive, not a handshake: one that
                // never sends `connection.open` is closed at the handshake deadline, as in
                // RabbitMQ, whatever heartbeats it sends.
                let handshake = (self.phase != Phase::Open)
                    .then_some(self.opened_at_ms + self.config.handshake_timeout_ms);
                Some(send_at.min(dead_at).min(handshake.unwrap_or(u64::MAX)))
            }
            Phase::Open => None,
            _ => Some(self.opened_at_ms + self.config.handshake_timeout_ms),
        }
    }

    /// Time has passed: send heartbeats, notice missed ones, give up on a slow handshake
    /// or a close that was never acknowledged.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Closed => {}
            Phase::Closing { deadline_ms } | Phase::Draining { deadline_ms } => {
                if now_ms >= deadline_ms {
                    self.enter_closed();
                }
            }
            Phase::AwaitingOpen | Phase::AwaitingOpenOk
                if now_ms >= self.opened_at_ms + self.config.handshake_timeout_ms =>
            {
                self.enter_closed();
            }
            Phase::Open | Phase::AwaitingOpen | Phase::AwaitingOpenOk if self.heartbeat_ms > 0 => {
                if now_ms >= self.last_recv_ms + self.heartbeat_ms * 2 && !self.paused {
                    // Missed heartbeats: like RabbitMQ, drop the socket without a close.
                    self.enter_closed();
                } else if now_ms >= self.last_send_ms + self.heartbeat_ms / 2 {
                    encode_heartbeat(&mut self.output);
                    self.last_send_ms = now_ms;
                }
            }
            Phase::Open => {}
            _ => {
                if now_ms >= self.opened_at_ms + self.config.handshake_timeout_ms {
                    self.enter_closed();
                }
            }
        }
    }

    // ----- input -----

    fn process(&mut self, now_ms: u64) {
        if self.paused {
            return;
        }
        loop {
            match self.phase {
                Phase::Closed | Phase::AwaitingLogin | Phase::AwaitingOpenOk => return,
                Phase::Draining { .. } => {
                    self.input.clear();
                    return;
                }
                Phase::AwaitingHeader => {
                    if !self.read_protocol_header(now_ms) {
                        return;
                    }
                }
                _ => match self
                    .decoder
                    .decode_raw(&mut self.input)
                    .and_then(|raw| raw.map(|raw| self.handle_raw(raw, now_ms)).transpose())
                {
                    Ok(Some(handled)) => {
                        if let Err(e) = handled {
                            self.close_with(e, now_ms);
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        // The byte stream cannot be followed past a framing error: send the
                        // close, then read nothing more (RabbitMQ does the same). After our
                        // own close the close-ok can no longer be found in the stream: stop
                        // waiting for it, and send nothing more.
                        if !matches!(self.phase, Phase::Closing { .. }) {
                            self.close_with(frame_error(e), now_ms);
                        }
                        self.enter_draining(now_ms);
                    }
                },
            }
        }
    }

    /// Checks the protocol header as its bytes arrive. Returns true once it was accepted.
    fn read_protocol_header(&mut self, now_ms: u64) -> bool {
        const ALTERNATE: [u8; 8] = *b"AMQP\x01\x01\x00\x09";
        let n = self.input.len().min(8);
        let seen = &self.input[..n];
        let matches_prefix = |h: &[u8; 8]| h[..n] == *seen;
        if !matches_prefix(&PROTOCOL_HEADER) && !matches_prefix(&ALTERNATE) {
            // Wrong protocol: answer with the one we speak and close, as the spec says.
            self.output.extend_from_slice(&PROTOCOL_HEADER);
            self.input.clear();
            self.enter_closed();
            return false;
        }
        if n < 8 {
            return false;
        }
        let _ = self.input.split_to(8);
        let start = ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: self.config.server_properties.clone(),
            mechanisms: Bytes::from_static(b"AMQPLAIN PLAIN"),
            locales: Bytes::from_static(b"en_US"),
        };
        self.send_method(0, &Method::ConnectionStart(start), now_ms);
        self.phase = Phase::AwaitingStartOk;
        true
    }

    /// Decodes and handles a frame cut from the stream. Methods and content headers are
    /// decoded where they are handled rather than moved through a `Frame`, which is as
    /// large as its largest kind (a header's properties): the properties move once, into
    /// the channel's publish in progress. The outer error: the payload did not decode.
    fn handle_raw(
        &mut self,
        raw: RawFrame,
        now_ms: u64,
    ) -> Result<Result<(), ConnectionError>, FrameError> {
        let channel = raw.channel;
        Ok(match raw.kind {
            FRAME_METHOD => self.handle_method_frame(channel, raw.method()?, now_ms),
            FRAME_HEADER => self.handle_header_frame(channel, raw.header()?),
            _ => self.handle_frame(raw.into_frame()?, now_ms),
        })
    }

    fn handle_frame(&mut self, frame: Frame, now_ms: u64) -> Result<(), ConnectionError> {
        match frame {
            Frame::Method { channel, method } => self.handle_method_frame(channel, method, now_ms),
            Frame::Header { channel, header } => self.handle_header_frame(channel, header),
            // After sending connection.close only close and close-ok matter.
            _ if matches!(self.phase, Phase::Closing { .. }) => Ok(()),
            Frame::Heartbeat { channel } => {
                if channel != 0 {
                    return Err(ConnectionError::new(
                        UNEXPECTED_FRAME,
                        format!("heartbeat frame on channel {channel}"),
                    ));
                }
                Ok(())
            }
            _ if self.phase != Phase::Open => Err(not_open()),
            Frame::Body { channel, payload } => self.handle_body(channel, payload),
        }
    }

    /// A method frame, whatever the phase.
    fn handle_method_frame(
        &mut self,
        channel: u16,
        method: Method,
        now_ms: u64,
    ) -> Result<(), ConnectionError> {
        if let Phase::Closing { .. } = self.phase {
            // After sending connection.close only close and close-ok matter.
            if channel == 0 {
                match method {
                    Method::ConnectionCloseOk(_) => self.enter_closed(),
                    Method::ConnectionClose(_) => {
                        self.send_method(
                            0,
                            &Method::ConnectionCloseOk(ConnectionCloseOk {}),
                            now_ms,
                        );
                        self.enter_draining(now_ms);
                    }
                    _ => {}
                }
            }
            return Ok(());
        }
        if channel == 0 {
            self.handle_connection_method(method, now_ms)
        } else if self.phase != Phase::Open {
            Err(not_open())
        } else {
            self.handle_channel_method(channel, method, now_ms)
        }
    }

    /// A content header frame, whatever the phase: ignored while closing, refused before
    /// the connection is open.
    fn handle_header_frame(
        &mut self,
        channel: u16,
        header: ContentHeader,
    ) -> Result<(), ConnectionError> {
        match self.phase {
            Phase::Closing { .. } => Ok(()),
            Phase::Open => self.handle_header(channel, header),
            _ => Err(not_open()),
        }
    }

    fn handle_channel_method(
        &mut self,
        channel: u16,
        method: Method,
        now_ms: u64,
    ) -> Result<(), ConnectionError> {
        if method.class_id() == CLASS_CONNECTION {
            return Err(ConnectionError::new(
                COMMAND_INVALID,
                format!("{} is only allowed on channel 0", method.name()),
            )
            .on(&method));
        }
        // Channel states change in place: a state holds a publish in progress, and moving
        // it out of the map and back for every frame would copy it twice per frame.
        match self.channels.get_mut(&channel) {
            None => match method {
                Method::ChannelOpen(_) => {
                    // Like RabbitMQ, channel_max limits how many channels are open, not
                    // their numbers.
                    if self.channels.len() >= usize::from(self.channel_max) {
                        return Err(ConnectionError::new(
                            NOT_ALLOWED,
                            format!(
                                "number of channels opened ({}) has reached the negotiated channel_max ({})",
                                self.channels.len(),
                                self.channel_max
                            ),
                        ));
                    }
                    self.channels
                        .insert(channel, ChannelState::Open(Assembly::Idle));
                    // The broker answers channel.open-ok, or refuses the channel (a user's
                    // channel limit) by closing the connection.
                    self.commands.push_back(Command::ChannelOpen { channel });
                    Ok(())
                }
                // A late close-ok (for a close we both sent) has nothing left to do.
                Method::ChannelCloseOk(_) => Ok(()),
                m => Err(ConnectionError::new(CHANNEL_ERROR, "expected 'channel.open'").on(&m)),
            },
            // A method on an open channel with no content in progress.
            Some(state @ ChannelState::Open(Assembly::Idle)) => match method {
                Method::ChannelOpen(_) => Err(ConnectionError::new(
                    CHANNEL_ERROR,
                    "second 'channel.open' seen",
                )
                .on(&method)),
                Method::ChannelClose(_) => {
                    *state = ChannelState::ClosingByClient;
                    self.commands.push_back(Command::ChannelClose { channel });
                    Ok(())
                }
                // Content methods only a server sends: their content is read, then refused.
                Method::BasicDeliver(_) | Method::BasicReturn(_) | Method::BasicGetOk(_) => {
                    *state =
                        ChannelState::Open(Assembly::AwaitingRefusedHeader(method.method_id()));
                    Ok(())
                }
                Method::BasicPublish(publish) => {
                    *state = ChannelState::Open(Assembly::AwaitingHeader(publish));
                    if !self.publishing {
                        self.publishing = true;
                        self.commands.push_back(Command::Publishing);
                    }
                    Ok(())
                }
                m => {
                    self.commands
                        .push_back(Command::Method { channel, method: m });
                    Ok(())
                }
            },
            Some(ChannelState::Open(
                assembly @ (Assembly::AwaitingHeader(_) | Assembly::AwaitingRefusedHeader(_)),
            )) => Err(assembly.header_expected()),
            Some(ChannelState::Open(_)) => Err(publish_error(
                "expected content body, got non content body frame instead",
            )),
            Some(ChannelState::ClosingByServer) => {
                match method {
                    Method::ChannelCloseOk(_) => self.free_channel(channel),
                    Method::ChannelClose(_) => {
                        // Both sides closed at once: acknowledge theirs; the channel is done.
                        self.send_method(
                            channel,
                            &Method::ChannelCloseOk(ChannelCloseOk {}),
                            now_ms,
                        );
                        self.free_channel(channel);
                    }
                    // Dropped until the client's close-ok.
                    _ => {}
                }
                Ok(())
            }
            // A client that reopens a channel before its close-ok arrived: RabbitMQ refuses
            // it as a second open, and so does warren rather than leave the client waiting
            // for an open-ok that never comes.
            Some(ChannelState::ClosingByClient) if matches!(method, Method::ChannelOpen(_)) => {
                Err(ConnectionError::new(CHANNEL_ERROR, "second 'channel.open' seen").on(&method))
            }
            // Closing by the client, or an error pending: drop what arrives.
            Some(_) => Ok(()),
        }
    }

    // ----- output -----

    /// Tracks the state changes that the broker's outgoing methods imply.
    fn observe_outgoing(&mut self, channel: u16, method: &Method, now_ms: u64) {
        match method {
            Method::ConnectionOpenOk(_) if self.phase == Phase::AwaitingOpenOk => {
                self.phase = Phase::Open;
            }
            Method::ConnectionClose(_) => {
                self.phase = Phase::Closing {
                    deadline_ms: now_ms + self.config.close_timeout_ms,
                };
                self.report_closed();
            }
            Method::ChannelClose(_) if channel != 0 && self.channels.contains_key(&channel) => {
                self.replace_channel_state(channel, Some(ChannelState::ClosingByServer));
            }
            Method::ChannelCloseOk(_) if channel != 0 => {
                if let Some(ChannelState::ClosingByClient) = self.channels.get(&channel) {
                    self.free_channel(channel);
                }
            }
            _ => {}
        }
    }

    fn send_method(&mut self, channel: u16, method: &Method, now_ms: u64) {
        encode_method(channel, method, &mut self.output);
        self.last_send_ms = now_ms;
    }

    fn close_with(&mut self, error: ConnectionError, now_ms: u64) {
        // One connection.close a connection, and nothing after it.
        assert!(
            !matches!(
                self.phase,
                Phase::Closed | Phase::Closing { .. } | Phase::Draining { .. }
            ),
            "a second connection.close in {:?}",
            self.phase
        );
        self.error = Some(error.clone());
        let close = ConnectionClose {
            reply_code: error.code,
            reply_text: truncate_shortstr(error.text),
            class_id: error.class_id,
            method_id: error.method_id,
        };
        self.send_method(0, &Method::ConnectionClose(close), now_ms);
        self.phase = Phase::Closing {
            deadline_ms: now_ms + self.config.close_timeout_ms,
        };
        self.report_closed();
    }

    fn enter_draining(&mut self, now_ms: u64) {
        self.input.clear();
        self.phase = Phase::Draining {
            deadline_ms: now_ms + self.config.close_timeout_ms,
        };
        self.report_closed();
    }

    fn enter_closed(&mut self) {
        self.phase = Phase::Closed;
        self.report_closed();
    }

    fn report_closed(&mut self) {
        if !self.closed_reported {
            self.closed_reported = true;
            self.commands.push_back(Command::Closed);
        }
    }

    fn free_channel(&mut self, channel: u16) {
        self.replace_channel_state(channel, None);
    }

    /// The protocol error this layer closed the connection for, if it did.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }
}

/// A frame other than a method on channel 0 before the connection is open.
fn not_open() -> ConnectionError {
    ConnectionError::new(
        COMMAND_INVALID,
        "connection is not open: expected a method on channel 0",
    )
}

/// Maps a decoding failure to the connection error RabbitMQ reports for it.
fn frame_error(error: FrameError) -> ConnectionError {
    match error {
        FrameError::TooLarge { size, max } => ConnectionError::new(
            FRAME_ERROR,
            format!(
                "frame payload of {} bytes is larger than the negotiated frame_max {}",
                size.saturating_sub(FRAME_OVERHEAD),
                max.saturating_sub(FRAME_OVERHEAD)
            ),
        ),
        FrameError::BadFrameEnd(byte) => {
            ConnectionError::new(FRAME_ERROR, format!("invalid frame end byte {byte:#04x}"))
        }
        FrameError::UnknownFrameType(kind) => {
            ConnectionError::new(FRAME_ERROR, format!("unknown frame type {kind}"))
        }
        FrameError::HeartbeatPayload(n) => ConnectionError::new(
            FRAME_ERROR,
            format!("heartbeat frame with a payload of {n} bytes"),
        ),
        FrameError::Method {
            channel,
            class_id,
            method_id,
            error,
        } => {
            let name = method_name(class_id, method_id).unwrap_or("method");
            let (code, detail) = match error {
                DecodeError::UnknownClass(class_id) => (
                    NOT_IMPLEMENTED,
                    format!("unknown class {class_id} on channel {channel}"),
                ),
                DecodeError::UnknownMethod {
                    class_id,
                    method_id,
                } => (
                    NOT_IMPLEMENTED,
                    format!("unknown method {class_id}.{method_id} on channel {channel}"),
                ),
                // RabbitMQ answers arguments cut short, and bytes after the last one, with
                // 501 ("cannot decode"), naming the method.
                DecodeError::Truncated => (
                    FRAME_ERROR,
                    format!("cannot decode {name} on channel {channel}: truncated arguments"),
                ),
                DecodeError::Trailing(n) => (
                    FRAME_ERROR,
                    format!(
                        "cannot decode {name} on channel {channel}: {n} byte{} after its arguments",
                        if n == 1 { "" } else { "s" }
                    ),
                ),
                DecodeError::BadUtf8 => (
                    FRAME_ERROR,
                    format!("malformed UTF-8 in a short string of {name} on channel {channel}"),
                ),
                other => (
                    SYNTAX_ERROR,
                    format!("malformed {name} on channel {channel}: {other}"),
                ),
            };
            ConnectionError {
                class_id,
                method_id,
                ..ConnectionError::new(code, detail)
            }
        }
        // RabbitMQ fails with 541 on a content header it cannot parse (a property list cut
        // short or followed by more bytes, a bad headers table). Short strings that are
        // not UTF-8 pass, properties and table keys alike, as there.
        FrameError::Header { channel, error } => ConnectionError::new(
            INTERNAL_ERROR,
            format!("malformed content header on channel {channel}: {error}"),
        ),
    }
}

/// Reply texts are shortstrs: keep them within 255 bytes, on a character boundary.
pub fn truncate_shortstr(mut text: String) -> String {
    if text.len() > 255 {
        let mut end = 255;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
