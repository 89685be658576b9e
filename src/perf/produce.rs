//! A producer of `warren perf`: publishes until stopped or its quota is done, pipelined
//! within a confirm window (or one write per publish with `--unbatched`), and counts the
//! confirms and their latency.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Semaphore;

use crate::proto::frame::{Frame, encode_content};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;

use super::client::{Conn, FrameReader};
use super::{PerfArgs, Shared, exchange_name, pace, routing_key, write_out};

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
        write_out(&mut wr, &mut publisher.out).await?;
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
    body: Vec<u8>,
    frame_max: u32,
    confirm: bool,
    latency: bool,
    epoch: Instant,
    window: Arc<Semaphore>,
    /// With confirms and --latency, when each unconfirmed publish was encoded.
    sent_at: Option<SentAt>,
    /// Encoded, not yet written.
    out: BytesMut,
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
            frame_max,
            confirm: args.confirm > 0,
            latency: args.latency,
            epoch,
            window,
            sent_at: None,
            out: BytesMut::with_capacity(256 * 1024),
        }
    }

    /// Encodes up to `batch` publishes, each taking a place in the confirm window (waiting
    /// for one only when nothing is encoded yet): how many it encoded, None once the window
    /// is closed.
    async fn encode(&mut self, batch: u64) -> Option<u64> {
        let mut encoded = 0u64;
        for _ in 0..batch {
            if self.confirm {
                match self.window.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) if self.out.is_empty() => match self.window.acquire().await {
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
            encode_content(
                1,
                &self.publish,
                &self.props,
                &self.body,
                self.frame_max,
                &mut self.out,
            );
            encoded += 1;
        }
        Some(encoded)
    }
}
