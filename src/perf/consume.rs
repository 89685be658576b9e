//! A consumer of `warren perf`: acks every N deliveries with `multiple` (or each one on
//! its own with `--unbatched`) and records latency.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::proto::frame::{Frame, encode_method};
use crate::proto::method::*;

use super::client::{Conn, FrameReader, body_prefix, close_error};
use super::{PerfArgs, Shared, new_histogram, write_out};

/// Consumes from a queue, acking every `multi_ack` deliveries, recording latency.
pub(super) async fn consume(
    mut conn: Conn,
    queue: String,
    args: PerfArgs,
    shared: Shared,
) -> io::Result<()> {
    subscribe(&mut conn, queue, &args).await?;
    let (mut rd, mut reader, mut wr) = conn.split();
    let mut c = Deliveries::new(&args, shared.epoch);
    let mut last_merge = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        // Handle everything buffered, then flush acks, then read more.
        let got = c.take_buffered(&mut reader)?;
        if got > 0 {
            shared.counters.consumed.fetch_add(got, Ordering::Relaxed);
        }
        c.write_single_acks(&mut wr).await?;
        write_out(&mut wr, &mut c.out).await?;
        if args.latency
            && (c.local.len() >= 1000 || last_merge.elapsed() >= Duration::from_millis(200))
        {
            last_merge = Instant::now();
            c.merge_latency(&shared.latency);
        }
        // With manual acks and prefetch, a partial batch must be acked before the broker
        // sends more: ack what we have when nothing else is buffered.
        if !args.autoack
            && c.unacked > 0
            && args.prefetch > 0
            && c.unacked >= u32::from(args.prefetch) / 2
        {
            c.ack_now(&mut wr).await?;
        }
        let read = tokio::time::timeout(Duration::from_millis(50), reader.fill(&mut rd)).await;
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                // Quiet: ack the tail so the broker can send what remains.
                if !args.autoack && c.unacked > 0 {
                    c.ack_now(&mut wr).await?;
                }
                if args.latency && !c.local.is_empty() {
                    c.merge_latency(&shared.latency);
                }
            }
        }
    }
    Ok(())
}

/// Opens the channel, sets the prefetch if asked, and starts consuming from `queue`.
async fn subscribe(conn: &mut Conn, queue: String, args: &PerfArgs) -> io::Result<()> {
    conn.open_channel(1).await?;
    if args.prefetch > 0 {
        conn.call(
            1,
            Method::BasicQos(BasicQos {
                prefetch_count: args.prefetch,
                ..Default::default()
            }),
        )
        .await?;
    }
    conn.call(
        1,
        Method::BasicConsume(BasicConsume {
            queue,
            no_ack: args.autoack,
            ..Default::default()
        }),
    )
    .await?;
    Ok(())
}

/// What a consumer keeps between reads: the acks it owes and the latency it recorded.
struct Deliveries {
    autoack: bool,
    latency: bool,
    /// Ack (with `multiple`) every this many deliveries.
    multi: u32,
    epoch: Instant,
    /// Latency recorded since the last merge into the run's histogram.
    local: Histogram<u64>,
    /// Deliveries not acked yet (batched acks).
    unacked: u32,
    last_tag: u64,
    /// Body bytes of the message in progress still to come, and whether its first body
    /// frame (which holds the timestamp) has come.
    body_left: u64,
    body_started: bool,
    /// With --unbatched, the deliveries to ack one write each.
    single_acks: Vec<u64>,
    unbatched: bool,
    /// Acks encoded, not yet written.
    out: BytesMut,
}

impl Deliveries {
    fn new(args: &PerfArgs, epoch: Instant) -> Self {
        Deliveries {
            autoack: args.autoack,
            latency: args.latency,
            multi: args.multi_ack.max(1),
            epoch,
            local: new_histogram(),
            unacked: 0,
            last_tag: 0,
            body_left: 0,
            body_started: false,
            single_acks: Vec::new(),
            unbatched: args.unbatched,
            out: BytesMut::new(),
        }
    }

    /// Handles every frame already buffered: the number of messages received; a close of
    /// the channel or connection is an error.
    fn take_buffered(&mut self, reader: &mut FrameReader) -> io::Result<u64> {
        let mut got = 0u64;
        while let Some(frame) = reader.next_buffered()? {
            match frame {
                Frame::Method {
                    method: Method::BasicDeliver(d),
                    ..
                } => self.last_tag = d.delivery_tag,
                Frame::Header { header, .. } => {
                    self.body_left = header.body_size;
                    self.body_started = false;
                    if header.body_size == 0 {
                        got += 1;
                        self.on_delivered();
                    }
                }
                // A body larger than the frame size comes in several frames: the message
                // is whole at the last of them.
                Frame::Body { payload, .. } if self.body_left > 0 => {
                    if !self.body_started {
                        self.body_started = true;
                        self.on_latency(&payload);
                    }
                    self.body_left = self.body_left.saturating_sub(payload.len() as u64);
                    if self.body_left == 0 {
                        got += 1;
                        self.on_delivered();
                    }
                }
                Frame::Method { method, .. } => {
                    if let Some(e) = close_error(&method) {
                        return Err(e);
                    }
                }
                _ => {}
            }
        }
        Ok(got)
    }

    /// A body frame: its latency.
    fn on_latency(&mut self, payload: &Bytes) {
        if self.latency
            && let Some(sent) = body_prefix(payload)
        {
            let now = self.epoch.elapsed().as_micros() as u64;
            let _ = self.local.record(now.saturating_sub(sent).max(1));
        }
    }

    /// A whole message: an ack of its own, or one every `multi` of them.
    fn on_delivered(&mut self) {
        if self.autoack {
            return;
        }
        if self.unbatched {
            self.single_acks.push(self.last_tag);
        } else {
            self.unacked += 1;
            if self.unacked >= self.multi {
                self.encode_ack();
            }
        }
    }

    /// With --unbatched, writes the ack of each delivery on its own.
    async fn write_single_acks(&mut self, wr: &mut OwnedWriteHalf) -> io::Result<()> {
        let mut one = BytesMut::with_capacity(32);
        for tag in self.single_acks.drain(..) {
            encode_method(
                1,
                &Method::BasicAck(BasicAck {
                    delivery_tag: tag,
                    multiple: false,
                }),
                &mut one,
            );
            wr.write_all(&one).await?;
            one.clear();
        }
        Ok(())
    }

    /// Encodes an ack of everything delivered so far.
    fn encode_ack(&mut self) {
        encode_method(
            1,
            &Method::BasicAck(BasicAck {
                delivery_tag: self.last_tag,
                multiple: true,
            }),
            &mut self.out,
        );
        self.unacked = 0;
    }

    /// Acks everything delivered so far, now.
    async fn ack_now(&mut self, wr: &mut OwnedWriteHalf) -> io::Result<()> {
        self.encode_ack();
        wr.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Adds the latency recorded here to the run's histogram.
    fn merge_latency(&mut self, latency: &Mutex<Histogram<u64>>) {
        if let Ok(mut h) = latency.lock() {
            let _ = h.add(&self.local);
        }
        self.local.reset();
    }
}
