//! The task driving one client connection: socket bytes in and out of the protocol state
//! machine, commands to the core, replies back.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio::sync::{Semaphore, mpsc};

use crate::broker::ConnInfo;
use crate::proto::command::{Command, ConnId};
use crate::proto::connection::{Connection, ConnectionConfig};

use super::Clock;
use super::core::CoreMsg;
use super::core::sleep_until;

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

/// Serves one connection until it closes.
pub async fn run(
    id: ConnId,
    stream: TcpStream,
    info: ConnInfo,
    config: ConnectionConfig,
    core: mpsc::Sender<CoreMsg>,
    clock: Clock,
) {
    let _ = stream.set_nodelay(true);
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel();
    let peer = info.peer.clone();
    if core
        .send(CoreMsg::Connect {
            id,
            info,
            replies: reply_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(conn = id, %peer, "connection accepted");
    #[cfg(not(madsim))]
    let (mut rd, mut wr) = stream.into_split();
    // madsim's simulated stream has no owned halves.
    #[cfg(madsim)]
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut conn = Connection::new(config, clock.now_ms());
    let mut commands: Vec<Command> = Vec::new();
    // Buffers to write, reused.
    let mut out: Vec<bytes::Bytes> = Vec::new();
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    // Reply bytes (as the broker counts them) handed to the socket since the last report.
    let mut written = 0usize;
    let mut pending_credit = 0usize;
    // The core drops its sender once it has handled our Closed; the socket may still be
    // draining then.
    let mut replies_open = true;
    let mut read_chunk = READ_CHUNK_MIN;
    loop {
        conn.poll_transmit_chunks(&mut out);
        if !out.is_empty() {
            // The flush is a no-op on tokio's TCP; madsim's stream sends on flush only.
            if write_chunks(&mut wr, &mut out).await.is_err() || wr.flush().await.is_err() {
                conn.handle_eof();
            }
            written += std::mem::take(&mut pending_credit);
        }
        while let Some(c) = conn.poll_command() {
            commands.push(c);
        }
        if written > 0 {
            commands.push(Command::Drained { bytes: written });
            written = 0;
        }
        if !commands.is_empty() {
            while let (false, Ok(permit)) =
                (commands.is_empty(), in_flight.clone().try_acquire_owned())
            {
                let rest = commands.split_off(commands.len().min(MAX_COMMANDS_PER_BATCH));
                let batch = CoreMsg::Commands {
                    id,
                    commands: std::mem::replace(&mut commands, rest),
                    permit,
                };
                if core.send(batch).await.is_err() {
                    break;
                }
            }
        }
        if conn.is_closed() {
            break;
        }
        let deadline = conn.poll_timeout().map(|ms| clock.instant(ms));
        let reading = conn.wants_read();
        let mut buf = std::mem::take(conn.read_buf());
        buf.reserve(read_chunk);
        let room = buf.capacity() - buf.len();
        let waiting_for_core = !commands.is_empty();
        tokio::select! {
            r = rd.read_buf(&mut buf), if reading && !waiting_for_core => {
                *conn.read_buf() = buf;
                match r {
                    Ok(0) | Err(_) => conn.handle_eof(),
                    Ok(n) => {
                        conn.handle_read(clock.now_ms());
                        // What is left is the start of a frame still arriving.
                        read_chunk = next_read_chunk(read_chunk, room, n, conn.read_buf().len());
                    }
                }
            }
            replies = reply_rx.recv(), if replies_open => {
                *conn.read_buf() = buf;
                let Some(replies) = replies else {
                    replies_open = false;
                    continue;
                };
                let now = clock.now_ms();
                for r in replies {
                    pending_credit += r.wire_size();
                    conn.handle_reply(r, now);
                }
                // Take whatever else is queued so it goes out in one write.
                while let Ok(more) = reply_rx.try_recv() {
                    for r in more {
                        pending_credit += r.wire_size();
                        conn.handle_reply(r, now);
                    }
                }
            }
            // The core handled a batch: the loop sends the waiting one.
            _ = in_flight.clone().acquire_owned(), if waiting_for_core => {
                *conn.read_buf() = buf;
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                *conn.read_buf() = buf;
                conn.handle_timeout(clock.now_ms());
            }
            // Nothing left to wait for: the core is gone and the socket is not read.
            else => break,
        }
    }
    // Make sure the broker hears that the connection is gone, then flush what is left.
    conn.handle_eof();
    while let Some(c) = conn.poll_command() {
        commands.push(c);
    }
    if !commands.is_empty() {
        if let Ok(permit) = in_flight.acquire_owned().await {
            let _ = core
                .send(CoreMsg::Commands {
                    id,
                    commands,
                    permit,
                })
                .await;
        }
    }
    conn.poll_transmit_chunks(&mut out);
    if !out.is_empty() {
        let _ = write_chunks(&mut wr, &mut out).await;
        let _ = wr.flush().await;
    }
    let _ = wr.shutdown().await;
    match conn.error() {
        Some(e) => {
            tracing::warn!(conn = id, %peer, code = e.code, reason = %e.text, "closed connection on a protocol error")
        }
        None => tracing::debug!(conn = id, %peer, "connection closed"),
    }
}

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Writes every buffer, in order, with vectored writes; leaves `chunks` empty.
async fn write_chunks(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    chunks: &mut Vec<bytes::Bytes>,
) -> std::io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(MAX_IOVECS)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                chunks[first].advance(n);
                n = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
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
}
