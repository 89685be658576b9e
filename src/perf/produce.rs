//! A producer of `warren perf`: publishes until stopped or its quota is done, pipelined
//! within a confirm window (or one write per publish with `--unbatched`), and counts the
//! confirms and their latency.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Semaphore;

use crate::proto::connection::ZERO_COPY_BODY_BYTES;
use crate::proto::frame::{Frame, encode_content, encode_content_frames_zero_copy, encode_method};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;

use super::client::{Conn, FrameReader};
use super::{PerfArgs, Shared, exchange_name, pace, routing_key, write_out};

/// A batch of publishes stops growing at this many bytes, so that what it copies stays in
/// the processor's caches (a batch of 256 large messages would be megabytes).
const BATCH_BYTES: usize = 512 * 1024;

/// Most buffers handed to one vectored write.
const MAX_IOVECS: usize = 64;

/// Publishes until stopped (or the quota is reached), pipelining with a confirm window.
pub(super) async fn produce(
    mut conn: Conn,
    index: usize,
    quota: u64,
    args: PerfArgs,
    shared: Shared,
) -> io::Result<()> {
    conn.open_channel(1).await?;
    if args.confirm > 0 {
        conn.call(1, Method::ConfirmSelect(ConfirmSelect { nowait: false }))
            .await?;
    }
    let frame_max = conn.frame_max;
    let (rd, reader, mut wr) = conn.split();
    let window = Arc::new(Semaphore::new(args.confirm.max(1)));
    let sent_at = (args.confirm > 0 && args.latency).then(SentAt::default);
    if args.confirm > 0 {
        tokio::spawn(count_confirms(
            rd,
            reader,
            window.clone(),
            sent_at.clone(),
            shared.clone(),
        ));
    }
    let mut publisher = Publisher::new(&args, index, frame_max, shared.epoch, window.clone());
    publisher.sent_at = sent_at;
    let per_producer_rate = args.rate as f64 / args.producers.max(1) as f64;
    let started = Instant::now();
    let mut sent = 0u64;
    let most = if args.unbatched { 1 } else { 256 };
    while !shared.stop.load(Ordering::Relaxed) && (quota == 0 || sent < quota) {
        let Some(batch) = next_batch(per_producer_rate, started, sent, quota, most) else {
            pace(per_producer_rate, started, sent).await;
            continue;
        };
        let Some(encoded) = publisher.encode(batch).await else {
            return Ok(());
        };
        publisher.write(&mut wr).await?;
        sent += encoded;
        shared
            .counters
            .published
            .fetch_add(encoded, Ordering::Relaxed);
    }
    if args.confirm > 0 {
        // Wait for the last confirms before reporting completion.
        let _ = window.acquire_many(args.confirm as u32).await;
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// How many publishes go in the next batch: at most `most`, no more than the quota leaves
/// nor, at a rate, than are due (None while none is).
fn next_batch(rate: f64, started: Instant, sent: u64, quota: u64, most: u64) -> Option<u64> {
    let mut batch = most;
    if rate > 0.0 {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        if due <= sent {
            return None;
        }
        batch = batch.min(due - sent);
    }
    if quota > 0 {
        batch = batch.min(quota - sent);
    }
    Some(batch)
}

/// When each unconfirmed publish of a producer was encoded (µs since the run's epoch), in
/// publish order: the first is sequence number `confirmed + 1`.
type SentAt = Arc<Mutex<std::collections::VecDeque<u64>>>;

/// Reads a producer's confirms (and returns), counting them and giving their places in
/// the window back, until the connection ends; with `sent_at`, records how long each
/// publish waited for its confirm (confirms come in publish order).
async fn count_confirms(
    mut rd: OwnedReadHalf,
    mut reader: FrameReader,
    window: Arc<Semaphore>,
    sent_at: Option<SentAt>,
    shared: Shared,
) {
    let counters = &shared.counters;
    let mut last_acked = 0u64;
    let mut timed = 0u64;
    loop {
        let frame = match reader.next(&mut rd).await {
            Ok(f) => f,
            Err(_) => return,
        };
        if let Frame::Method { method, .. } = frame {
            let (tag, multiple, nack) = match method {
                Method::BasicAck(a) => (a.delivery_tag, a.multiple, false),
                Method::BasicNack(n) => (n.delivery_tag, n.multiple, true),
                Method::BasicReturn(_) => {
                    counters.returned.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => continue,
            };
            let n = if multiple {
                tag.saturating_sub(last_acked)
            } else {
                1
            };
            last_acked = last_acked.max(tag);
            let counter = if nack {
                &counters.nacked
            } else {
                &counters.confirmed
            };
            counter.fetch_add(n, Ordering::Relaxed);
            if let Some(sent_at) = &sent_at {
                let now = shared.epoch.elapsed().as_micros() as u64;
                let mut times = Vec::new();
                if let Ok(mut q) = sent_at.lock() {
                    while timed < last_acked {
                        let Some(at) = q.pop_front() else { break };
                        timed += 1;
                        times.push(now.saturating_sub(at).max(1));
                    }
                }
                if let Ok(mut h) = shared.confirm_latency.lock() {
                    for t in times {
                        let _ = h.record(t);
                    }
                }
            }
            window.add_permits(n as usize);
        }
    }
}

/// A producer's publishes, encoded in batches within its confirm window.
struct Publisher {
    publish: Method,
    props: BasicProperties,
    /// The body, stamped with the time of each publish under --latency.
    body: Vec<u8>,
    /// The body as sent without a copy, when it is large and not stamped.
    shared_body: Bytes,
    frame_max: u32,
    confirm: bool,
    latency: bool,
    epoch: Instant,
    window: Arc<Semaphore>,
    /// With confirms and --latency, when each unconfirmed publish was encoded.
    sent_at: Option<SentAt>,
    /// Encoded, not yet written: `chunks` (large bodies between their framing), then `out`.
    out: BytesMut,
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    chunk_bytes: usize,
}

impl Publisher {
    fn new(
        args: &PerfArgs,
        index: usize,
        frame_max: u32,
        epoch: Instant,
        window: Arc<Semaphore>,
    ) -> Self {
        let queue = index % args.queues.max(1);
        let size = if args.latency {
            args.size.max(8)
        } else {
            args.size
        };
        Publisher {
            publish: Method::BasicPublish(BasicPublish {
                exchange: exchange_name(args),
                routing_key: routing_key(args, queue),
                ..Default::default()
            }),
            props: BasicProperties {
                delivery_mode: Some(if args.persistent { 2 } else { 1 }),
                ..Default::default()
            },
            body: vec![0u8; size],
            shared_body: Bytes::from(vec![0u8; size]),
            frame_max,
            confirm: args.confirm > 0,
            latency: args.latency,
            epoch,
            window,
            sent_at: None,
            out: BytesMut::with_capacity(256 * 1024),
            chunks: VecDeque::new(),
            chunk_bytes: 0,
        }
    }

    /// Encodes up to `batch` publishes (fewer once [`BATCH_BYTES`] are encoded), each
    /// taking a place in the confirm window (waiting for one only when nothing is encoded
    /// yet): how many it encoded, None once the window is closed.
    async fn encode(&mut self, batch: u64) -> Option<u64> {
        let mut encoded = 0u64;
        for _ in 0..batch {
            if self.encoded_bytes() >= BATCH_BYTES {
                break;
            }
            if self.confirm {
                match self.window.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) if self.encoded_bytes() == 0 => match self.window.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return None,
                    },
                    Err(_) => break,
                }
            }
            if self.latency {
                let now = self.epoch.elapsed().as_micros() as u64;
                self.body[..8].copy_from_slice(&now.to_be_bytes());
                if let Some(Ok(mut q)) = self.sent_at.as_ref().map(|s| s.lock()) {
                    q.push_back(now);
                }
            }
            if self.body.len() >= ZERO_COPY_BODY_BYTES {
                self.encode_large();
            } else {
                encode_content(
                    1,
                    &self.publish,
                    &self.props,
                    &self.body,
                    self.frame_max,
                    &mut self.out,
                );
            }
            encoded += 1;
        }
        Some(encoded)
    }

    /// Encodes a publish whose body is sent from its own buffer, as the broker sends large
    /// deliveries: the client then costs each broker no copy of its own beyond the socket's.
    fn encode_large(&mut self) {
        let body = if self.latency {
            Bytes::copy_from_slice(&self.body)
        } else {
            self.shared_body.clone()
        };
        encode_method(1, &self.publish, &mut self.out);
        let before = self.chunks.len();
        encode_content_frames_zero_copy(
            1,
            self.publish.class_id(),
            &self.props,
            &body,
            self.frame_max,
            &mut self.out,
            &mut self.chunks,
        );
        self.chunk_bytes += self
            .chunks
            .iter()
            .skip(before)
            .map(Bytes::len)
            .sum::<usize>();
    }

    fn encoded_bytes(&self) -> usize {
        self.chunk_bytes + self.out.len()
    }

    /// Writes everything encoded, large bodies with vectored writes.
    async fn write(&mut self, wr: &mut OwnedWriteHalf) -> io::Result<()> {
        if self.chunks.is_empty() {
            return write_out(wr, &mut self.out).await;
        }
        if !self.out.is_empty() {
            let tail = self.out.split().freeze();
            self.chunk_bytes += tail.len();
            self.chunks.push_back(tail);
        }
        while self.chunk_bytes > 0 {
            let mut iov = [IoSlice::new(&[]); MAX_IOVECS];
            let n = iov.len().min(self.chunks.len());
            for (slot, chunk) in iov.iter_mut().zip(&self.chunks) {
                *slot = IoSlice::new(chunk);
            }
            let mut wrote = wr.write_vectored(&iov[..n]).await?;
            if wrote == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.chunk_bytes -= wrote;
            while wrote > 0 {
                let Some(front) = self.chunks.front_mut() else {
                    break;
                };
                if wrote >= front.len() {
                    wrote -= front.len();
                    self.chunks.pop_front();
                } else {
                    front.advance(wrote);
                    wrote = 0;
                }
            }
        }
        Ok(())
    }
}
