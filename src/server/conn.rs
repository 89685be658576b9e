//! The task driving one client connection: socket bytes in and out of the protocol state
//! machine, commands to the core, replies back.
//!
//! Reading, writing, replies from the core and timers are branches of one `select!`, so a
//! peer that stops reading blocks nothing else: heartbeats are still due, a missed
//! heartbeat or an unanswered close still ends the connection, and a socket that takes no
//! byte for the send timeout is closed. Output waiting for the socket is bounded: the
//! broker pauses deliveries past its limit on unwritten bytes, and input is not read past
//! [`READ_PAUSE_OUTPUT_BYTES`].
//!
//! The task is generic over its [`Transport`]: a TCP socket or TLS over one. Bytes a TLS
//! stream took may still wait in its record buffer (bounded by rustls, 64 KiB); they are
//! flushed as one more branch of the same `select!`, never by waiting outside it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::broker::ConnInfo;
use crate::proto::command::{Command, ConnId, DrainReport, Reply};
use crate::proto::connection::{Connection, ConnectionConfig};
use crate::proto::method::Method;

use super::Clock;
use super::core::{BatchSlots, CoreMsg};
use super::handshakes::HandshakeSlot;
use super::transport::Transport;

/// Room made in the read buffer before a read. It starts small, so that an idle
/// connection holds little, and doubles while reads fill it: up to READ_CHUNK_SMALL_FRAMES
/// for any busy stream, and on up to READ_CHUNK_MAX while reads also leave a large partial
/// frame behind (large messages), so that each read takes several frames and the partial
/// frame, moved when the buffer is renewed, is a smaller share of what was read. It halves
/// again when reads come back small. Small frames keep a buffer that stays in cache.
const READ_CHUNK_MIN: usize = 4 * 1024;
const READ_CHUNK_SMALL_FRAMES: usize = 64 * 1024;
const READ_CHUNK_MAX: usize = 512 * 1024;

/// The room to make before the next read, after a read of `read` bytes into `room` left
/// `partial` bytes of an incomplete frame.
fn next_read_chunk(chunk: usize, room: usize, read: usize, partial: usize) -> usize {
    if read >= room && (chunk < READ_CHUNK_SMALL_FRAMES || partial >= READ_CHUNK_SMALL_FRAMES / 4) {
        (chunk * 2).min(READ_CHUNK_MAX)
    } else if read < room / 4 {
        (chunk / 2).max(READ_CHUNK_MIN)
    } else {
        chunk
    }
}

/// Batches of commands a connection may have waiting for the core. The socket is not read
/// while the limit is reached: a fast publisher is held back by TCP instead of queueing
/// work ahead of everyone else's (acks from consumers wait behind at most this many
/// batches per connection), and a batch being parsed overlaps one being handled.
const BATCHES_IN_FLIGHT: usize = 2;

/// Most commands in one batch, so that one connection's batch keeps the core busy only
/// briefly (other connections' acks wait behind it).
const MAX_COMMANDS_PER_BATCH: usize = 128;

/// Commands not yet handed to the core, cut into batches as they arrive, so that handing
/// one batch over moves none of the others.
#[derive(Debug, Default)]
struct Waiting {
    batches: VecDeque<Vec<Command>>,
}

impl Waiting {
    fn push(&mut self, command: Command) {
        if let Some(last) = self.batches.back_mut()
            && last.len() < MAX_COMMANDS_PER_BATCH
        {
            last.push(command);
            return;
        }
        // Behind a full batch, a full one is likely to follow; otherwise a command or
        // two (a publish and a report of bytes written) is the common batch.
        let capacity = if self.batches.is_empty() {
            4
        } else {
            MAX_COMMANDS_PER_BATCH
        };
        let mut batch = Vec::with_capacity(capacity);
        batch.push(command);
        self.batches.push_back(batch);
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The next batch, in arrival order.
    fn pop(&mut self) -> Option<Vec<Command>> {
        self.batches.pop_front()
    }

    /// Every command left, as one batch.
    fn take_all(&mut self) -> Vec<Command> {
        self.batches.drain(..).flatten().collect()
    }
}

/// The driver's own settings for connection tasks.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// A connection whose socket takes no byte of its pending output for this long is
    /// closed (RabbitMQ's `send_timeout`).
    pub send_timeout: Duration,
    /// The broker's limit on a connection's unwritten reply bytes, which bounds how long
    /// written bytes may go unreported ([`DrainReport`]).
    pub unflushed_limit: usize,
}

/// An accepted stream and what the listener knows of it.
#[derive(Debug)]
pub struct Accepted<S> {
    /// The connection id.
    pub id: ConnId,
    /// The socket, or TLS over it.
    pub stream: S,
    /// Peer facts for the broker.
    pub info: ConnInfo,
    /// Its place among its address's unfinished handshakes.
    pub handshake: HandshakeSlot,
}

/// Output waiting for the socket beyond which the connection's input is not read: a
/// client that sends requests without reading the replies is held back by TCP instead of
/// growing this buffer. Twice the broker's default limit on unwritten deliveries
/// (`max_unflushed_bytes_per_connection`), so that a consumer falling behind meets that
/// limit, which pauses deliveries only, first.
const READ_PAUSE_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

/// How often a connection with output waiting checks it against the send timeout: a
/// sixteenth of the timeout, within these bounds. A timer armed and dropped on every pass
/// of a busy connection's loop would cost as much as the write it guards; one periodic
/// check costs nothing while the socket drains.
const SEND_CHECK_MIN: Duration = Duration::from_millis(10);
const SEND_CHECK_MAX: Duration = Duration::from_secs(1);

/// The period of the send-timeout check for `send_timeout`.
fn send_check_period(send_timeout: Duration) -> Duration {
    (send_timeout / 16).clamp(SEND_CHECK_MIN, SEND_CHECK_MAX)
}

/// Why the protocol layer is told to stop reading: the broker's reasons (alarms, flow
/// control, a parked get) and the driver's own (too much output waiting). The protocol
/// layer hears the union, so that the peer's silence while we do not read is not taken
/// for missed heartbeats.
#[derive(Debug, Default)]
struct Pause {
    broker: bool,
    output: bool,
    applied: bool,
}

impl Pause {
    fn apply(&mut self, conn: &mut Connection, now_ms: u64) {
        let paused = self.broker || self.output;
        if paused != self.applied {
            self.applied = paused;
            conn.handle_reply(Reply::PauseReading(paused), now_ms);
        }
    }
}

/// Serves one connection until it closes.
pub async fn run<T: Transport>(
    accepted: Accepted<T>,
    config: ConnectionConfig,
    settings: ConnSettings,
    core: mpsc::Sender<CoreMsg>,
    clock: Clock,
) {
    let Some(mut task) = ConnTask::start(accepted, config, settings, core, clock).await else {
        return;
    };
    while task.turn().await {}
    task.finish().await;
}

/// One connection's state between turns of its loop.
struct ConnTask<T: Transport> {
    id: ConnId,
    peer: String,
    rd: T::Read,
    wr: T::Write,
    /// Bytes the stream took may not have reached the socket yet (TLS records).
    unflushed: bool,
    handshake: HandshakeSlot,
    reply_rx: mpsc::UnboundedReceiver<Vec<Reply>>,
    core: mpsc::Sender<CoreMsg>,
    clock: Clock,
    settings: ConnSettings,
    close_timeout: Duration,
    conn: Connection,
    /// Commands not yet handed to the core.
    commands: Waiting,
    produced: Vec<Bytes>,
    out: Outgoing,
    /// Batches of commands the core may still be handling.
    in_flight: Arc<BatchSlots>,
    /// Reply bytes (as the broker counts them) handed to the protocol layer and not yet
    /// queued for the socket.
    pending_credit: usize,
    /// Reply bytes written and not yet reported to the broker.
    drain: DrainReport,
    /// The core drops its sender once it has handled our Closed; the socket may still be
    /// draining then.
    replies_open: bool,
    read_chunk: usize,
    send_timed_out: bool,
    pause: Pause,
    send_check: tokio::time::Interval,
    /// The protocol layer's timer (heartbeats, handshake and close deadlines), armed for
    /// `armed`. Its deadline moves with every byte sent or received; the timer is moved
    /// only when the deadline comes earlier, and otherwise fires early, finds nothing due
    /// and is armed again: one timer per heartbeat interval instead of one per turn.
    timer: Pin<Box<tokio::time::Sleep>>,
    armed: Option<Instant>,
    /// The time as last read: once per turn, when its wait ends.
    now: Instant,
}

/// What ended a turn's wait.
enum Event {
    Read(std::io::Result<usize>),
    Write(WriteStep),
    Replies(Option<Vec<Reply>>),
    Permit,
    Timer,
    SendCheck,
}

impl<T: Transport> ConnTask<T> {
    /// Introduces the connection to the core; `None` if the core is gone.
    async fn start(
        accepted: Accepted<T>,
        config: ConnectionConfig,
        settings: ConnSettings,
        core: mpsc::Sender<CoreMsg>,
        clock: Clock,
    ) -> Option<ConnTask<T>> {
        let Accepted {
            id,
            stream,
            info,
            handshake,
        } = accepted;
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let peer = info.peer.clone();
        let connect = CoreMsg::Connect {
            id,
            info,
            replies: reply_tx,
        };
        if core.send(connect).await.is_err() {
            return None;
        }
        tracing::debug!(conn = id, %peer, "connection accepted");
        let (rd, wr) = stream.split();
        let mut send_check = tokio::time::interval(send_check_period(settings.send_timeout));
        send_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(ConnTask {
            id,
            peer,
            rd,
            wr,
            unflushed: false,
            handshake,
            reply_rx,
            core,
            clock,
            settings,
            close_timeout: Duration::from_millis(config.close_timeout_ms),
            conn: Connection::new(config, clock.now_ms()),
            commands: Waiting::default(),
            produced: Vec::new(),
            out: Outgoing::default(),
            in_flight: Arc::new(BatchSlots::new(BATCHES_IN_FLIGHT)),
            pending_credit: 0,
            drain: DrainReport::new(settings.unflushed_limit),
            replies_open: true,
            read_chunk: READ_CHUNK_MIN,
            send_timed_out: false,
            pause: Pause::default(),
            send_check,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            now: Instant::now(),
        })
    }

    /// One turn: hands output to the socket queue (and to the socket, if it takes it) and
    /// commands to the core, then waits for the first of a read, a write, replies, a
    /// permit, a timer. Returns false once the connection is done.
    async fn turn(&mut self) -> bool {
        self.conn.poll_transmit_chunks(&mut self.produced);
        let credit = std::mem::take(&mut self.pending_credit);
        self.out.push(self.produced.drain(..), credit, self.now);
        // Replies taken last turn are written now: waiting for the `select!` below to
        // find the socket writable would take a turn of its own.
        if !self.out.is_empty() {
            self.write_now().await;
        }
        while let Some(c) = self.conn.poll_command() {
            self.commands.push(c);
        }
        self.drain.written(self.out.take_released());
        if let Some(report) = self.drain.take(!self.commands.is_empty()) {
            self.commands.push(report);
        }
        self.send_commands().await;
        if self.conn.is_closed() {
            return false;
        }
        let deadline = self.conn.poll_timeout().map(|ms| self.clock.instant(ms));
        match (deadline, self.armed) {
            (Some(d), Some(a)) if d >= a => {}
            (Some(d), _) => {
                self.timer.as_mut().reset(d);
                self.armed = Some(d);
            }
            // Nothing is due any more: a timer still armed fires and finds nothing.
            (None, _) => {}
        }
        self.pause.output = self.out.len() >= READ_PAUSE_OUTPUT_BYTES;
        self.pause.apply(&mut self.conn, self.clock.ms_at(self.now));
        let reading = self.conn.wants_read();
        let mut buf = std::mem::take(self.conn.read_buf());
        buf.reserve(self.read_chunk);
        let room = buf.capacity() - buf.len();
        let waiting_for_core = !self.commands.is_empty();
        // Writing is one branch among the others: while the peer does not read, timers,
        // replies and the core's permits are still handled.
        let event = tokio::select! {
            r = self.rd.read_buf(&mut buf), if reading && !waiting_for_core => Event::Read(r),
            step = write_or_flush(&mut self.wr, &self.out), if !self.out.is_empty() || self.unflushed => {
                Event::Write(step)
            }
            replies = self.reply_rx.recv(), if self.replies_open => Event::Replies(replies),
            // The core handled a batch: the next turn sends the waiting one.
            _ = self.in_flight.freed(), if waiting_for_core => Event::Permit,
            _ = self.timer.as_mut(), if self.armed.is_some() => Event::Timer,
            _ = self.send_check.tick(), if !self.out.is_empty() => Event::SendCheck,
            // Nothing left to wait for: the core is gone and the socket is not read.
            else => return false,
        };
        *self.conn.read_buf() = buf;
        // The one reading of the clock until the next wait (or a wait for the core).
        self.now = Instant::now();
        match event {
            Event::Read(r) => self.on_read(r, room),
            Event::Write(WriteStep::Wrote(r)) => self.on_written(r),
            Event::Write(WriteStep::Flushed(r)) => {
                self.unflushed = false;
                if r.is_err() {
                    self.conn.handle_eof();
                }
            }
            Event::Replies(replies) => self.on_replies(replies),
            Event::Permit => {}
            Event::Timer => {
                self.armed = None;
                self.conn.handle_timeout(self.clock.ms_at(self.now));
            }
            Event::SendCheck => self.check_send_timeout(),
        }
        true
    }

    /// One write of queued output if the socket takes it without waiting; if not, the
    /// write branch of the `select!` waits for it.
    async fn write_now(&mut self) {
        let step = {
            let mut write = std::pin::pin!(write_some(&mut self.wr, &self.out));
            std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await
        };
        if let Poll::Ready(r) = step {
            self.on_written(r);
        }
    }

    /// Hands the waiting commands to the core, as many batches as it has room for.
    async fn send_commands(&mut self) {
        if self.commands.is_empty() {
            return;
        }
        while let (false, Some(permit)) = (self.commands.is_empty(), self.in_flight.try_take()) {
            let Some(commands) = self.commands.pop() else {
                break;
            };
            let batch = CoreMsg::Commands {
                id: self.id,
                commands,
                permit,
            };
            match self.core.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    if self.core.send(batch).await.is_err() {
                        break;
                    }
                    // The wait for the core's room may have been long.
                    self.now = Instant::now();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    }

    fn on_read(&mut self, r: std::io::Result<usize>, room: usize) {
        match r {
            Ok(0) | Err(_) => self.conn.handle_eof(),
            Ok(n) => {
                self.conn.handle_read(self.clock.ms_at(self.now));
                // What is left is the start of a frame still arriving.
                let partial = self.conn.read_buf().len();
                self.read_chunk = next_read_chunk(self.read_chunk, room, n, partial);
            }
        }
    }

    fn on_written(&mut self, r: std::io::Result<usize>) {
        // The flush completes at once on tokio's TCP and on madsim's stream (which sends
        // on flush only); on TLS it may wait for the socket, and is then left to the
        // flush branch of `turn`.
        match r {
            Ok(n) if n > 0 => {
                self.out.advance(n, self.now);
                match flush_now(&mut self.wr) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(_)) => self.conn.handle_eof(),
                    Poll::Pending => self.unflushed = true,
                }
            }
            _ => self.conn.handle_eof(),
        }
    }

    fn on_replies(&mut self, replies: Option<Vec<Reply>>) {
        let Some(replies) = replies else {
            self.replies_open = false;
            return;
        };
        let mut taker = Taker {
            conn: &mut self.conn,
            now: self.clock.ms_at(self.now),
            credit: &mut self.pending_credit,
            handshake: &mut self.handshake,
            pause: &mut self.pause,
        };
        taker.take(replies);
        // Take whatever else is queued so it goes out in one write.
        while let Ok(more) = self.reply_rx.try_recv() {
            taker.take(more);
        }
    }

    fn check_send_timeout(&mut self) {
        let stalled_for = self.out.stalled_since().map_or(Duration::ZERO, |since| {
            self.now.saturating_duration_since(since)
        });
        if stalled_for < self.settings.send_timeout {
            return;
        }
        // The unsent bytes are dropped with the socket, in `finish`.
        tracing::warn!(
            conn = self.id,
            peer = %self.peer,
            timeout_ms = self.settings.send_timeout.as_millis() as u64,
            unsent_bytes = self.out.len(),
            "closing connection: the peer read nothing for the send timeout"
        );
        self.send_timed_out = true;
        self.conn.handle_eof();
    }

    /// Makes sure the broker hears that the connection is gone (its unacked messages go
    /// back to their queues), then flushes what is left and closes the socket.
    async fn finish(mut self) {
        self.conn.handle_eof();
        while let Some(c) = self.conn.poll_command() {
            self.commands.push(c);
        }
        if !self.commands.is_empty() {
            let permit = self.in_flight.take().await;
            let last = CoreMsg::Commands {
                id: self.id,
                commands: self.commands.take_all(),
                permit,
            };
            let _ = self.core.send(last).await;
        }
        if !self.send_timed_out {
            self.conn.poll_transmit_chunks(&mut self.produced);
            self.out.push(self.produced.drain(..), 0, Instant::now());
            let (send_timeout, close_timeout) = (self.settings.send_timeout, self.close_timeout);
            flush_before_close(&mut self.wr, &mut self.out, send_timeout, close_timeout).await;
        }
        let (id, peer) = (self.id, &self.peer);
        match self.conn.error() {
            Some(e) => {
                tracing::warn!(conn = id, %peer, code = e.code, reason = %e.text, "closed connection on a protocol error")
            }
            None => tracing::debug!(conn = id, %peer, "connection closed"),
        }
        // A TLS shutdown writes its close_notify alert: a peer that takes no byte gets
        // the same patience as for the rest of the output.
        let patience = self.settings.send_timeout.min(self.close_timeout);
        let closed = self.out.is_empty()
            && matches!(
                tokio::time::timeout(patience, self.wr.shutdown()).await,
                Ok(Ok(()))
            );
        if !closed {
            T::reset(self.rd, self.wr);
        }
    }
}

/// Writes what is left for a closing connection, as long as the peer keeps taking bytes:
/// it may stall for the send timeout or the close timeout, whichever is shorter, counted
/// from when it last took one. A peer dropped for missed heartbeats or an unanswered close
/// has stalled for longer already, and is not waited for again.
async fn flush_before_close(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &mut Outgoing,
    send_timeout: Duration,
    close_timeout: Duration,
) {
    let patience = send_timeout.min(close_timeout);
    while let Some(since) = out.stalled_since() {
        let left = (since + patience).saturating_duration_since(Instant::now());
        let written = tokio::time::timeout(left, async {
            let n = write_some(wr, out).await?;
            wr.flush().await?;
            Ok::<_, std::io::Error>(n)
        })
        .await;
        match written {
            Ok(Ok(n)) if n > 0 => out.advance(n, Instant::now()),
            _ => return,
        }
    }
}

/// What one write branch of a turn did.
enum WriteStep {
    /// A write of queued output: bytes of it written.
    Wrote(std::io::Result<usize>),
    /// Nothing was queued: the stream's own buffer was flushed.
    Flushed(std::io::Result<()>),
}

/// Writes the front of `out` or, with nothing queued, flushes what the stream still
/// holds (a TLS stream's records); with output queued, the write pushes those out first.
async fn write_or_flush(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &Outgoing,
) -> WriteStep {
    if out.is_empty() {
        WriteStep::Flushed(wr.flush().await)
    } else {
        WriteStep::Wrote(write_some(wr, out).await)
    }
}

/// Flushes `wr` if that can be done without waiting.
fn flush_now(wr: &mut (impl AsyncWrite + Unpin)) -> Poll<std::io::Result<()>> {
    // A pending flush registers no interest here: `turn` polls it again in its
    // `select!`, with the task's own waker.
    Pin::new(wr).poll_flush(&mut Context::from_waker(Waker::noop()))
}

/// Hands the core's replies to the protocol layer.
struct Taker<'a> {
    conn: &'a mut Connection,
    now: u64,
    /// Reply bytes (the broker's count) handed over.
    credit: &'a mut usize,
    handshake: &'a mut HandshakeSlot,
    pause: &'a mut Pause,
}

impl Taker<'_> {
    fn take(&mut self, replies: Vec<Reply>) {
        for r in replies {
            *self.credit += r.wire_size();
            match r {
                Reply::PauseReading(paused) => {
                    self.pause.broker = paused;
                    self.pause.apply(self.conn, self.now);
                }
                Reply::Method {
                    method: Method::ConnectionOpenOk(_),
                    ..
                } => {
                    self.handshake.complete();
                    self.conn.handle_reply(r, self.now);
                }
                r => self.conn.handle_reply(r, self.now),
            }
        }
    }
}

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// One vectored write of the front of `out`.
async fn write_some(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    out: &Outgoing,
) -> std::io::Result<usize> {
    let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
    let n = out.io_slices(&mut iov);
    wr.write_vectored(&iov[..n]).await
}

/// Bytes waiting for the socket, in order, with the broker's count of the replies they
/// carry, released as their bytes are written (`Command::Drained`).
#[derive(Debug, Default)]
struct Outgoing {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    bytes: usize,
    /// Bytes ever queued and ever written.
    queued: u64,
    written: u64,
    /// Reply credit to release once `written` reaches the offset, in offset order.
    credits: VecDeque<(u64, usize)>,
    /// Credit whose bytes were written, not yet reported.
    released: usize,
    /// Since when the socket has taken no byte while output waited.
    stalled_since: Option<Instant>,
}

impl Outgoing {
    /// Queues `chunks`, which carry replies the broker counted as `credit` bytes.
    fn push(&mut self, chunks: impl Iterator<Item = Bytes>, credit: usize, now: Instant) {
        for c in chunks {
            if !c.is_empty() {
                self.bytes += c.len();
                self.queued += c.len() as u64;
                self.chunks.push_back(c);
            }
        }
        if credit > 0 {
            if self.bytes == 0 {
                self.released += credit;
            } else {
                self.credits.push_back((self.queued, credit));
            }
        }
        if self.bytes > 0 && self.stalled_since.is_none() {
            self.stalled_since = Some(now);
        }
    }

    /// `n` bytes from the front were written.
    fn advance(&mut self, mut n: usize, now: Instant) {
        debug_assert!(n <= self.bytes, "wrote more than was queued");
        n = n.min(self.bytes);
        self.bytes -= n;
        self.written += n as u64;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if n >= front.len() {
                n -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
        while let Some(&(at, credit)) = self.credits.front() {
            if at > self.written {
                break;
            }
            self.credits.pop_front();
            self.released += credit;
        }
        self.stalled_since = (self.bytes > 0).then_some(now);
    }

    /// Credit released since the last call.
    fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    fn len(&self) -> usize {
        self.bytes
    }

    fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    fn stalled_since(&self) -> Option<Instant> {
        self.stalled_since
    }

    /// Fills `iov` with the first chunks; returns how many.
    fn io_slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in iov.iter_mut().zip(&self.chunks) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_room_grows_past_small_frames_only_for_large_partial_frames() {
        const K: usize = 1024;
        // A busy stream of small frames grows to 64 KiB and stays there.
        assert_eq!(next_read_chunk(4 * K, 4 * K, 4 * K, 20), 8 * K);
        assert_eq!(next_read_chunk(64 * K, 64 * K, 64 * K, 20), 64 * K);
        // Large frames left half-read take it on to 512 KiB, no further.
        assert_eq!(next_read_chunk(64 * K, 64 * K, 64 * K, 40 * K), 128 * K);
        assert_eq!(next_read_chunk(512 * K, 512 * K, 512 * K, 40 * K), 512 * K);
        // Small reads shrink it back, no lower than 4 KiB.
        assert_eq!(next_read_chunk(64 * K, 64 * K, 100, 0), 32 * K);
        assert_eq!(next_read_chunk(4 * K, 4 * K, 100, 0), 4 * K);
        // In between, it stays.
        assert_eq!(next_read_chunk(64 * K, 64 * K, 32 * K, 0), 64 * K);
    }

    fn chunk(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn reply_credit_is_released_as_its_bytes_are_written() {
        let t0 = Instant::now();
        let mut out = Outgoing::default();
        assert!(out.stalled_since().is_none());
        out.push([chunk(10), chunk(5)].into_iter(), 64, t0);
        out.push([chunk(20)].into_iter(), 192, t0);
        assert_eq!((out.len(), out.stalled_since()), (35, Some(t0)));
        // Part of the first reply's bytes: nothing released, but the socket moved.
        let t1 = t0 + Duration::from_millis(5);
        out.advance(12, t1);
        assert_eq!(out.take_released(), 0);
        assert_eq!(out.stalled_since(), Some(t1));
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(out.io_slices(&mut iov), 2);
        assert_eq!((iov[0].len(), iov[1].len()), (3, 20));
        out.advance(3, t1);
        assert_eq!(out.take_released(), 64);
        out.advance(20, t1);
        assert_eq!(out.take_released(), 192);
        assert!(out.is_empty() && out.stalled_since().is_none());
        // Credit for replies that wrote nothing (a pause) is released at once.
        out.push(std::iter::empty(), 5, t1);
        assert_eq!(out.take_released(), 5);
        assert!(out.stalled_since().is_none());
    }

    #[test]
    fn at_most_max_iovecs_chunks_go_to_one_write() {
        let mut out = Outgoing::default();
        out.push((0..100).map(|_| chunk(1)), 0, Instant::now());
        let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
        assert_eq!(out.io_slices(&mut iov), MAX_IOVECS);
    }
}
