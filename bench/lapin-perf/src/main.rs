//! An independent load client for `scripts/bench.py`, built on lapin (the Rust AMQP client
//! applications use), so that the benchmark's unbatched figures do not rest on warren's own
//! client alone. Producers publish at a fixed rate, each message as it comes (lapin writes
//! each publish on its own); consumers ack every delivery on its own. It prints one JSON
//! line in the shape `warren perf` prints, which `scripts/bench.py` reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde::Serialize;

#[derive(Parser, Debug, Clone)]
#[command(about = "AMQP load with lapin: fixed-rate producers, consumers that ack each message")]
struct Args {
    /// The broker.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Producer connections.
    #[arg(long, default_value_t = 10)]
    producers: usize,
    /// Consumer connections.
    #[arg(long, default_value_t = 10)]
    consumers: usize,
    /// Queues (producer and consumer i use queue i modulo this).
    #[arg(long, default_value_t = 10)]
    queues: usize,
    /// Messages per second from all producers together.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Body size in bytes (at least 8: the send time).
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Persistent messages on durable queues.
    #[arg(long)]
    persistent: bool,
    /// Publisher confirms with this many unconfirmed messages per producer (0: none).
    #[arg(long, default_value_t = 0)]
    confirm: usize,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
}

#[derive(Serialize, Default)]
struct Percentiles {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

#[derive(Serialize)]
struct Report {
    client: &'static str,
    published: u64,
    confirmed: u64,
    consumed: u64,
    publish_rate: f64,
    consume_rate: f64,
    latency_us: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    confirm_latency_us: Option<Percentiles>,
}

/// Most latency samples kept per task (a run at the benchmark's rates keeps far fewer).
const MAX_SAMPLES: usize = 2_000_000;

fn percentiles(mut v: Vec<u64>) -> Percentiles {
    if v.is_empty() {
        return Percentiles::default();
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
        max: *v.last().unwrap(),
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn connect(uri: &str) -> Result<Connection, Error> {
    Ok(Connection::connect(uri, ConnectionProperties::default()).await?)
}

fn queue_name(run: u64, i: usize) -> String {
    format!("lapin-perf-{run}-{i}")
}

async fn declare(ch: &Channel, name: &str, durable: bool) -> Result<(), Error> {
    let options = QueueDeclareOptions {
        durable,
        ..Default::default()
    };
    ch.queue_declare(name.into(), options, FieldTable::default())
        .await?;
    Ok(())
}

struct Counters {
    published: AtomicU64,
    confirmed: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
}

async fn produce(
    args: Args,
    queue: String,
    (epoch, start): (Instant, Instant),
    rate: f64,
    counters: Arc<Counters>,
) -> Result<Vec<u64>, Error> {
    let conn = connect(&args.uri).await?;
    let ch = conn.create_channel().await?;
    if args.confirm > 0 {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let properties = if args.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut body = vec![0u8; args.size.max(8)];
    let interval = Duration::from_secs_f64(1.0 / rate);
    let end = start + Duration::from_secs(args.duration);
    let mut next = Instant::now();
    let mut waiting = FuturesUnordered::new();
    let mut confirm_lat = Vec::new();
    let mut record = |r: Result<Instant, lapin::Error>| -> Result<(), Error> {
        let sent = r?;
        if confirm_lat.len() < MAX_SAMPLES {
            confirm_lat.push(sent.elapsed().as_micros() as u64);
        }
        counters.confirmed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    while Instant::now() < end && !counters.stop.load(Ordering::Relaxed) {
        // Confirms are taken as they come (for their latency); at most `confirm` wait.
        if args.confirm > 0 && waiting.len() >= args.confirm {
            if let Some(r) = waiting.next().await {
                record(r)?;
            }
            continue;
        }
        tokio::select! {
            Some(r) = waiting.next(), if !waiting.is_empty() => {
                record(r)?;
                continue;
            }
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        next += interval;
        let sent = Instant::now();
        let ns = sent.duration_since(epoch).as_nanos() as u64;
        body[..8].copy_from_slice(&ns.to_le_bytes());
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties.clone(),
            )
            .await?;
        counters.published.fetch_add(1, Ordering::Relaxed);
        if args.confirm > 0 {
            waiting.push(async move {
                confirm.await?;
                Ok::<Instant, lapin::Error>(sent)
            });
        }
    }
    while let Some(r) = waiting.next().await {
        record(r)?;
    }
    drop(record);
    let _ = conn.close(200, "done".into()).await;
    Ok(confirm_lat)
}

async fn consume(
    args: Args,
    queue: String,
    tag: String,
    start: Instant,
    counters: Arc<Counters>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<Vec<u64>, Error> {
    let conn = connect(&args.uri).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(args.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = ready.send(()).await;
    drop(ready);
    let mut lat = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        let delivery = match next {
            Ok(Some(d)) => d?,
            Ok(None) => break,
            Err(_) => {
                if counters.stop.load(Ordering::Relaxed) {
                    break;
                }
                continue;
            }
        };
        if delivery.data.len() >= 8 && lat.len() < MAX_SAMPLES {
            let sent = u64::from_le_bytes(delivery.data[..8].try_into().unwrap());
            let now = start.elapsed().as_nanos() as u64;
            lat.push(now.saturating_sub(sent) / 1_000);
        }
        delivery.ack(BasicAckOptions::default()).await?;
        counters.consumed.fetch_add(1, Ordering::Relaxed);
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(lat)
}

async fn run(args: Args) -> Result<Report, Error> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let setup = connect(&args.uri).await?;
    let sch = setup.create_channel().await?;
    let queues: Vec<String> = (0..args.queues.max(1)).map(|i| queue_name(run, i)).collect();
    for q in &queues {
        declare(&sch, q, args.persistent).await?;
    }
    let counters = Arc::new(Counters {
        published: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let start = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.consumers.max(1));
    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        consumers.push(tokio::spawn(consume(
            args.clone(),
            queues[i % queues.len()].clone(),
            format!("c{i}"),
            start,
            counters.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    while ready_rx.recv().await.is_some() {}
    let begin = Instant::now();
    let per_producer = args.rate as f64 / args.producers.max(1) as f64;
    let mut producers = Vec::new();
    for i in 0..args.producers {
        producers.push(tokio::spawn(produce(
            args.clone(),
            queues[i % queues.len()].clone(),
            (start, begin),
            per_producer,
            counters.clone(),
        )));
    }
    let mut confirm_lat = Vec::new();
    for p in producers {
        confirm_lat.extend(p.await??);
    }
    let elapsed = begin.elapsed().as_secs_f64();
    // Let the consumers take what is still on its way, for a few seconds at most.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while counters.consumed.load(Ordering::Relaxed) < counters.published.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    counters.stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for c in consumers {
        lat.extend(c.await??);
    }
    for q in &queues {
        let _ = sch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = setup.close(200, "done".into()).await;
    let published = counters.published.load(Ordering::Relaxed);
    let consumed = counters.consumed.load(Ordering::Relaxed);
    Ok(Report {
        client: "lapin",
        published,
        confirmed: counters.confirmed.load(Ordering::Relaxed),
        consumed,
        publish_rate: published as f64 / elapsed,
        consume_rate: consumed as f64 / elapsed,
        latency_us: percentiles(lat),
        confirm_latency_us: (args.confirm > 0).then(|| percentiles(confirm_lat)),
    })
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(run(args)) {
        Ok(report) => println!("{}", serde_json::to_string(&report).expect("a report")),
        Err(e) => {
            eprintln!("lapin-perf: {e}");
            std::process::exit(1);
        }
    }
}
