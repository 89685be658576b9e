//! `warren perf --rpc`: request/reply round trips as RPC libraries make them. A client
//! declares an exclusive, server-named reply queue, publishes a request to the first
//! queue with `reply_to` and `correlation_id` set, and waits for its answer before the
//! next one. A server consumes the requests with manual acks, publishes each answer to the
//! default exchange with the request's `reply_to` as routing key, and acks the request.
//! Every publish and ack is its own write. The latency recorded is the round trip.

use std::io;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::proto::frame::{Frame, encode_content, encode_method};
use crate::proto::method::*;
use crate::proto::props::BasicProperties;
use crate::proto::shortstr::ShortStr;

use super::client::{Conn, FrameReader, body_prefix, close_error};
use super::{PerfArgs, Shared, pace, queue_name};

/// The largest request body a server accepts (the body size the run asks for, with room).
const MAX_BODY: u64 = 16 * 1024 * 1024;

/// One whole message read from a channel: its delivery tag, properties and body.
struct Message {
    tag: u64,
    props: BasicProperties,
    body: Bytes,
}

/// Reads frames until a whole delivered message has arrived; a close is an error.
async fn next_message(rd: &mut OwnedReadHalf, reader: &mut FrameReader) -> io::Result<Message> {
    let mut tag = None;
    let mut props = None;
    let mut size = 0u64;
    let mut body = BytesMut::new();
    loop {
        match reader.next(rd).await? {
            Frame::Method {
                method: Method::BasicDeliver(d),
                ..
            } => {
                tag = Some(d.delivery_tag);
                props = None;
                body.clear();
            }
            Frame::Header { header, .. } if tag.is_some() => {
                if header.body_size > MAX_BODY {
                    return Err(io::Error::other("a reply larger than perf accepts"));
                }
                size = header.body_size;
                props = Some(header.properties);
            }
            Frame::Body { payload, .. } if props.is_some() => body.extend_from_slice(&payload),
            Frame::Method { method, .. } => {
                if let Some(e) = close_error(&method) {
                    return Err(e);
                }
            }
            _ => {}
        }
        if let (Some(tag), Some(_)) = (tag, props.as_ref())
            && body.len() as u64 >= size
        {
            return Ok(Message {
                tag,
                props: props.take().unwrap_or_default(),
                body: body.freeze(),
            });
        }
    }
}

/// Writes one method on its own.
async fn write_method(wr: &mut OwnedWriteHalf, method: &Method) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(64);
    encode_method(1, method, &mut out);
    wr.write_all(&out).await
}

/// Writes one publish on its own.
async fn write_publish(
    wr: &mut OwnedWriteHalf,
    routing_key: &str,
    props: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(body.len() + 128);
    let publish = Method::BasicPublish(BasicPublish {
        routing_key: routing_key.to_string(),
        ..Default::default()
    });
    encode_content(1, &publish, props, body, frame_max, &mut out);
    wr.write_all(&out).await
}

/// An RPC client: calls until stopped or its quota is done, one call at a time.
pub(super) async fn call(
    mut conn: Conn,
    quota: u64,
    args: PerfArgs,
    shared: Shared,
) -> io::Result<()> {
    conn.open_channel(1).await?;
    let reply_to = match conn
        .call(
            1,
            Method::QueueDeclare(QueueDeclare {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            }),
        )
        .await?
    {
        Method::QueueDeclareOk(ok) => ok.queue,
        other => return Err(io::Error::other(format!("queue.declare: {other:?}"))),
    };
    conn.call(
        1,
        Method::BasicConsume(BasicConsume {
            queue: reply_to.clone(),
            no_ack: true,
            ..Default::default()
        }),
    )
    .await?;
    let frame_max = conn.frame_max;
    let (mut rd, mut reader, mut wr) = conn.split();
    let server_queue = queue_name(&args, 0);
    let rate = args.rate as f64 / args.producers.max(1) as f64;
    let mut body = vec![0u8; args.size.max(8)];
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while !shared.stop.load(Ordering::Relaxed) && (quota == 0 || sent < quota) {
        if rate > 0.0 && (started.elapsed().as_secs_f64() * rate) as u64 <= sent {
            pace(rate, started, sent).await;
            continue;
        }
        let at = shared.epoch.elapsed().as_micros() as u64;
        body[..8].copy_from_slice(&at.to_be_bytes());
        let id = sent.to_string();
        let props = BasicProperties {
            reply_to: Some(ShortStr::from(reply_to.as_str())),
            correlation_id: Some(ShortStr::from(id.as_str())),
            ..Default::default()
        };
        write_publish(&mut wr, &server_queue, &props, &body, frame_max).await?;
        sent += 1;
        shared.counters.published.fetch_add(1, Ordering::Relaxed);
        // Answers to earlier calls cannot arrive: each call waits for its own.
        let answer = next_message(&mut rd, &mut reader).await?;
        if !matches!(&answer.props.correlation_id, Some(c) if *c == id.as_str()) {
            return Err(io::Error::other(format!(
                "answer to call {id} carries correlation id {:?}",
                answer.props.correlation_id
            )));
        }
        if let Some(at) = body_prefix(&answer.body) {
            let now = shared.epoch.elapsed().as_micros() as u64;
            if let Ok(mut h) = shared.latency.lock() {
                let _ = h.record(now.saturating_sub(at).max(1));
            }
        }
        shared.counters.consumed.fetch_add(1, Ordering::Relaxed);
    }
    let _ = wr.shutdown().await;
    Ok(())
}

/// An RPC server: answers every request on `queue` and acks it, until the run aborts it.
pub(super) async fn serve(
    mut conn: Conn,
    queue: String,
    args: PerfArgs,
    shared: Shared,
) -> io::Result<()> {
    conn.open_channel(1).await?;
    conn.call(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: args.prefetch.max(1),
            ..Default::default()
        }),
    )
    .await?;
    conn.call(
        1,
        Method::BasicConsume(BasicConsume {
            queue,
            ..Default::default()
        }),
    )
    .await?;
    let frame_max = conn.frame_max;
    let (mut rd, mut reader, mut wr) = conn.split();
    while !shared.stop.load(Ordering::Relaxed) {
        let request = next_message(&mut rd, &mut reader).await?;
        if let Some(reply_to) = request.props.reply_to.as_ref().and_then(ShortStr::as_str) {
            let props = BasicProperties {
                correlation_id: request.props.correlation_id.clone(),
                ..Default::default()
            };
            write_publish(&mut wr, reply_to, &props, &request.body, frame_max).await?;
        }
        write_method(
            &mut wr,
            &Method::BasicAck(BasicAck {
                delivery_tag: request.tag,
                multiple: false,
            }),
        )
        .await?;
    }
    Ok(())
}
