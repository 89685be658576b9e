//! `warren perf`: a load generator in the spirit of RabbitMQ PerfTest and lavinmqperf. It
//! speaks AMQP 0-9-1 through warren's own codec and works against any broker.
//!
//! Each producer and consumer has its own connection. By default producers pipeline
//! publishes (with a window of unconfirmed messages when confirms are on) and consumers ack
//! with `multiple` every N deliveries, so the client is not the bottleneck. With
//! `--unbatched` they behave as ordinary client libraries do instead: one write per
//! publish and one `basic.ack` (without `multiple`) written per delivery. With `--rpc`,
//! producers are request/reply clients and consumers the servers answering them ([`rpc`]).

pub mod client;
mod consume;
mod produce;
mod rpc;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

use crate::proto::method::*;

use self::client::{AmqpUri, Conn};

/// How messages are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    /// The default exchange, routing key = queue name.
    Default,
    /// A direct exchange with one binding per queue.
    Direct,
    /// A fanout exchange bound to every queue.
    Fanout,
    /// A topic exchange with a `perf.<queue>.#` binding per queue.
    Topic,
}

/// Settings of a run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct PerfArgs {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@localhost:5672/%2f")]
    pub uri: String,
    /// Producer connections.
    #[arg(long, short = 'x', default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes.
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Consumers receive without acks.
    #[arg(long)]
    pub autoack: bool,
    /// With manual acks, ack with `multiple` every this many deliveries.
    #[arg(long, default_value_t = 1)]
    pub multi_ack: u32,
    /// Consumer prefetch (basic.qos); 0 is unlimited.
    #[arg(long, short = 'q', default_value_t = 0)]
    pub prefetch: u16,
    /// Publisher confirms with at most this many unconfirmed messages per producer
    /// (0: no confirms).
    #[arg(long, short = 'c', default_value_t = 0)]
    pub confirm: usize,
    /// Persistent messages (delivery_mode 2) to durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Total publish rate in messages per second (0: as fast as possible).
    #[arg(long, short = 'r', default_value_t = 0)]
    pub rate: u64,
    /// Number of queues; producers and consumers are spread over them.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Queue name prefix.
    #[arg(long, default_value = "perf")]
    pub queue_prefix: String,
    /// How messages are routed.
    #[arg(long, value_enum, default_value_t = ExchangeType::Default)]
    pub exchange_type: ExchangeType,
    /// Seconds to run (0 with --count: until the count is published and consumed).
    #[arg(long, short = 'z', default_value_t = 10)]
    pub duration: u64,
    /// Stop publishing after this many messages in total (0: no limit).
    #[arg(long, short = 'C', default_value_t = 0)]
    pub count: u64,
    /// Put a timestamp in each body and report latency percentiles.
    #[arg(long)]
    pub latency: bool,
    /// Keep the queues and their contents (default: delete and declare them afresh).
    #[arg(long)]
    pub no_purge: bool,
    /// Instead of moving messages, open this many idle connections with a channel each and
    /// hold them for --duration seconds.
    #[arg(long, default_value_t = 0)]
    pub idle_connections: usize,
    /// Write each publish, and each ack, on its own, as pika, amqplib, lapin and the Go
    /// and Java clients do: a socket write per message and `basic.ack` without `multiple`
    /// for every delivery (instead of pipelined batches and `--multi-ack`).
    #[arg(long)]
    pub unbatched: bool,
    /// Request/reply: each producer is a client that publishes a request to the first
    /// queue with `reply_to` its own exclusive queue and waits for the answer before the
    /// next (at most --rate in all); each consumer is a server that answers every request
    /// and acks it. Latency is the round trip of a call. Implies --unbatched.
    #[arg(long)]
    pub rpc: bool,
    /// Print the JSON summary only (no per-second progress).
    #[arg(long)]
    pub quiet: bool,
}

/// Counters shared by the tasks of a run.
#[derive(Default)]
struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    consumed: AtomicU64,
    returned: AtomicU64,
}

/// The result of a run, printed as JSON at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The settings.
    pub args: PerfArgs,
    /// Wall-clock seconds measured.
    pub seconds: f64,
    /// Messages published.
    pub published: u64,
    /// Publishes confirmed (basic.ack).
    pub confirmed: u64,
    /// Publishes refused (basic.nack).
    pub nacked: u64,
    /// Messages consumed.
    pub consumed: u64,
    /// Published messages per second.
    pub publish_rate: f64,
    /// Consumed messages per second.
    pub consume_rate: f64,
    /// Latency percentiles in microseconds (with --latency).
    pub latency_us: Option<Latency>,
    /// Percentiles of the time from a publish to its confirm, microseconds (with
    /// --latency and --confirm).
    pub confirm_latency_us: Option<Latency>,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest seen.
    pub max: u64,
}

fn queue_name(args: &PerfArgs, i: usize) -> String {
    format!("{}-{i}", args.queue_prefix)
}

fn exchange_name(args: &PerfArgs) -> String {
    match args.exchange_type {
        ExchangeType::Default => String::new(),
        ExchangeType::Direct => format!("{}.direct", args.queue_prefix),
        ExchangeType::Fanout => format!("{}.fanout", args.queue_prefix),
        ExchangeType::Topic => format!("{}.topic", args.queue_prefix),
    }
}

fn routing_key(args: &PerfArgs, queue: usize) -> String {
    match args.exchange_type {
        ExchangeType::Default | ExchangeType::Direct => queue_name(args, queue),
        ExchangeType::Fanout => String::new(),
        ExchangeType::Topic => format!("perf.{}.msg", queue_name(args, queue)),
    }
}

/// Declares the exchange and queues (afresh unless asked not to).
async fn setup(uri: &AmqpUri, args: &PerfArgs) -> io::Result<()> {
    let mut c = Conn::open(uri).await?;
    c.open_channel(1).await?;
    let exchange = exchange_name(args);
    if !exchange.is_empty() {
        let kind = match args.exchange_type {
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            _ => "direct",
        };
        c.call(
            1,
            Method::ExchangeDeclare(ExchangeDeclare {
                exchange: exchange.clone(),
                kind: kind.into(),
                durable: args.persistent,
                ..Default::default()
            }),
        )
        .await?;
    }
    for i in 0..args.queues {
        let queue = queue_name(args, i);
        if !args.no_purge {
            // A fresh queue each run, so settings of an earlier run never clash.
            c.call(
                1,
                Method::QueueDelete(QueueDelete {
                    queue: queue.clone(),
                    ..Default::default()
                }),
            )
            .await?;
        }
        c.call(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: queue.clone(),
                durable: args.persistent,
                ..Default::default()
            }),
        )
        .await?;
        if !exchange.is_empty() {
            let key = match args.exchange_type {
                ExchangeType::Topic => format!("perf.{queue}.#"),
                _ => routing_key(args, i),
            };
            c.call(
                1,
                Method::QueueBind(QueueBind {
                    queue,
                    exchange: exchange.clone(),
                    routing_key: key,
                    ..Default::default()
                }),
            )
            .await?;
        }
    }
    c.close().await
}

/// What the tasks of a run share.
#[derive(Clone)]
struct Shared {
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    latency: Arc<Mutex<Histogram<u64>>>,
    /// Publish-to-confirm times.
    confirm_latency: Arc<Mutex<Histogram<u64>>>,
    /// The clock of the timestamps in bodies.
    epoch: Instant,
}

/// A producer or consumer task.
type Task = tokio::task::JoinHandle<io::Result<()>>;

/// Runs a benchmark and returns its summary.
pub async fn run(args: PerfArgs) -> io::Result<Summary> {
    let uri = AmqpUri::parse(&args.uri).map_err(io::Error::other)?;
    if args.idle_connections > 0 {
        return idle(&uri, &args).await;
    }
    let mut args = args;
    if args.rpc {
        args.unbatched = true;
        args.latency = true;
        args.exchange_type = ExchangeType::Default;
    }
    setup(&uri, &args).await?;
    let shared = Shared {
        counters: Arc::new(Counters::default()),
        stop: Arc::new(AtomicBool::new(false)),
        latency: Arc::new(Mutex::new(new_histogram())),
        confirm_latency: Arc::new(Mutex::new(new_histogram())),
        epoch: Instant::now(),
    };
    let mut consumers = start_consumers(&uri, &args, &shared).await?;
    let mut producers = start_producers(&uri, &args, &shared).await?;
    let started = Instant::now();
    watch(&args, &shared, started, &mut producers, &mut consumers).await?;
    let seconds = started.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    for t in producers.into_iter().chain(consumers) {
        t.abort();
    }
    Ok(summary(args, seconds, &shared))
}

/// Opens a connection per consumer and starts them, spread over the queues.
async fn start_consumers(uri: &AmqpUri, args: &PerfArgs, shared: &Shared) -> io::Result<Vec<Task>> {
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let queue = queue_name(args, i % args.queues.max(1));
        let conn = open_with_timeout(uri).await?;
        let task = if args.rpc {
            tokio::spawn(rpc::serve(conn, queue, args.clone(), shared.clone()))
        } else {
            tokio::spawn(consume::consume(conn, queue, args.clone(), shared.clone()))
        };
        consumers.push(task);
    }
    Ok(consumers)
}

/// Opens a connection per producer and starts them, each with its share of the count.
async fn start_producers(uri: &AmqpUri, args: &PerfArgs, shared: &Shared) -> io::Result<Vec<Task>> {
    let mut producers = Vec::new();
    for i in 0..args.producers {
        let conn = open_with_timeout(uri).await?;
        let quota = split_quota(args.count, args.producers, i);
        let task = if args.rpc {
            tokio::spawn(rpc::call(conn, quota, args.clone(), shared.clone()))
        } else {
            tokio::spawn(produce::produce(
                conn,
                i,
                quota,
                args.clone(),
                shared.clone(),
            ))
        };
        producers.push(task);
    }
    Ok(producers)
}

/// Waits for the end of the run: the duration is over or the count done. Reports progress
/// every second unless quiet; the error of a task that ends early ends the run.
async fn watch(
    args: &PerfArgs,
    shared: &Shared,
    started: Instant,
    producers: &mut [Task],
    consumers: &mut [Task],
) -> io::Result<()> {
    let counters = &shared.counters;
    let deadline = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if !finished(args, counters, producers) { continue; }
            }
        }
        let published = counters.published.load(Ordering::Relaxed);
        let consumed = counters.consumed.load(Ordering::Relaxed);
        if !args.quiet && started.elapsed().as_millis() % 1000 < 40 {
            let lat = if args.latency {
                latency_progress(&shared.latency)
            } else {
                String::new()
            };
            eprintln!(
                "time {:>3} s, sent {} msg/s, received {} msg/s{lat}",
                started.elapsed().as_secs(),
                published - last.0,
                consumed - last.1
            );
        }
        last = (published, consumed);
        if deadline.is_some_and(|d| Instant::now() >= d) || finished(args, counters, producers) {
            return Ok(());
        }
        if producers
            .iter()
            .chain(consumers.iter())
            .any(|t| t.is_finished())
        {
            // A task ended early: surface its error.
            ended_tasks_error(producers, consumers).await?;
            if finished(args, counters, producers) {
                return Ok(());
            }
        }
    }
}

/// The latency part of a progress line.
fn latency_progress(latency: &Mutex<Histogram<u64>>) -> String {
    let h = latency_snapshot(latency);
    format!(
        ", latency p50 {} µs p99 {} µs",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    )
}

/// The error of the first task that ended with one, if any.
async fn ended_tasks_error(producers: &mut [Task], consumers: &mut [Task]) -> io::Result<()> {
    for t in producers.iter_mut().chain(consumers.iter_mut()) {
        if t.is_finished() {
            match t.await {
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e.to_string())),
                Ok(Ok(())) => {}
            }
        }
    }
    Ok(())
}

/// A copy of the run's latency histogram (an empty one if a task panicked holding it).
fn latency_snapshot(latency: &Mutex<Histogram<u64>>) -> Histogram<u64> {
    latency
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_histogram())
}

/// The summary of a run that measured `seconds`.
fn summary(args: PerfArgs, seconds: f64, shared: &Shared) -> Summary {
    let h = latency_snapshot(&shared.latency);
    let counters = &shared.counters;
    let published = counters.published.load(Ordering::Relaxed);
    let consumed = counters.consumed.load(Ordering::Relaxed);
    Summary {
        seconds,
        published,
        confirmed: counters.confirmed.load(Ordering::Relaxed),
        nacked: counters.nacked.load(Ordering::Relaxed),
        consumed,
        publish_rate: published as f64 / seconds,
        consume_rate: consumed as f64 / seconds,
        latency_us: args.latency.then(|| percentiles(&h)).flatten(),
        confirm_latency_us: args
            .latency
            .then(|| percentiles(&latency_snapshot(&shared.confirm_latency)))
            .flatten(),
        args,
    }
}

/// The percentiles of `h`, None if it is empty.
fn percentiles(h: &Histogram<u64>) -> Option<Latency> {
    (!h.is_empty()).then(|| Latency {
        p50: h.value_at_quantile(0.5),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    })
}

/// With a message count, the run ends once everything was published (and confirmed) and
/// the consumers, if any, received what the routing promised them.
fn finished(
    args: &PerfArgs,
    c: &Counters,
    producers: &[tokio::task::JoinHandle<io::Result<()>>],
) -> bool {
    if args.count == 0 || !producers.iter().all(|p| p.is_finished()) {
        return false;
    }
    let copies = if args.exchange_type == ExchangeType::Fanout {
        args.queues as u64
    } else {
        1
    };
    args.consumers == 0 || c.consumed.load(Ordering::Relaxed) >= args.count * copies
}

/// Opens a connection, giving up after 30 s (a broker that stops accepting, for example
/// at its file descriptor limit, must not hang the run).
async fn open_with_timeout(uri: &AmqpUri) -> io::Result<Conn> {
    match tokio::time::timeout(Duration::from_secs(30), Conn::open(uri)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connecting to the broker timed out",
        )),
    }
}

fn split_quota(total: u64, parts: usize, i: usize) -> u64 {
    if total == 0 {
        return 0;
    }
    let parts = parts as u64;
    total / parts + u64::from((i as u64) < total % parts)
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// At a rate, waits until the message after the `sent` first is due.
async fn pace(rate: f64, started: Instant, sent: u64) {
    if rate > 0.0 {
        let due = started + Duration::from_secs_f64((sent + 1) as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Writes and clears what is encoded in `out`, if anything.
async fn write_out(wr: &mut OwnedWriteHalf, out: &mut BytesMut) -> io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Opens idle connections with a channel each and holds them.
async fn idle(uri: &AmqpUri, args: &PerfArgs) -> io::Result<Summary> {
    let started = Instant::now();
    let mut conns = Vec::with_capacity(args.idle_connections);
    for _ in 0..args.idle_connections {
        let mut c = open_with_timeout(uri).await?;
        c.open_channel(1).await?;
        conns.push(c);
    }
    if !args.quiet {
        eprintln!(
            "{} idle connections open; holding them for {} s",
            conns.len(),
            args.duration
        );
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    for c in conns {
        let _ = c.close().await;
    }
    Ok(Summary {
        args: args.clone(),
        seconds: started.elapsed().as_secs_f64(),
        published: 0,
        confirmed: 0,
        nacked: 0,
        consumed: 0,
        publish_rate: 0.0,
        consume_rate: 0.0,
        latency_us: None,
        confirm_latency_us: None,
    })
}
