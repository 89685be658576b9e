//! Crash tests: a real `warren serve` is killed with SIGKILL at random moments while
//! publishers send persistent messages with confirms and consumers ack, then restarted on
//! the same data directory. A reference model checks that no confirmed message is lost,
//! that a message seen before a kill comes back flagged `redelivered`, and that a message
//! whose ack is known to be durable never comes back.
//!
//! An ack is known to be durable once a persistent message the consumer published *after*
//! the ack (on the same connection, so the broker handled it after the ack) is confirmed:
//! confirms wait for the store batch holding the message, and batches are synced in order.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::Server;
use rand::{Rng, SeedableRng};
use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{Frame, FrameDecoder, encode_content, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

const QUEUE: &str = "crash-q";
const MARKERS: &str = "crash-markers";
const KILLS: usize = 22;

type IoResult<T> = Result<T, String>;

/// A minimal AMQP client whose I/O errors are values (the server dies under it).
struct Client {
    stream: TcpStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl Client {
    fn open(port: u16) -> IoResult<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut c = Client {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(1 << 20),
        };
        c.write(&PROTOCOL_HEADER)?;
        c.expect(|m| matches!(m, Method::ConnectionStart(_)))?;
        c.send(
            0,
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: common::client_properties(),
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            }),
        )?;
        c.expect(|m| matches!(m, Method::ConnectionTune(_)))?;
        c.send(
            0,
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: 16,
                frame_max: 131_072,
                heartbeat: 0,
            }),
        )?;
        c.send(
            0,
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            }),
        )?;
        c.expect(|m| matches!(m, Method::ConnectionOpenOk(_)))?;
        Ok(c)
    }

    fn write(&mut self, bytes: &[u8]) -> IoResult<()> {
        self.stream.write_all(bytes).map_err(|e| e.to_string())
    }

    fn send(&mut self, channel: u16, method: Method) -> IoResult<()> {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.write(&out)
    }

    fn publish(&mut self, channel: u16, queue: &str, body: &[u8]) -> IoResult<()> {
        let mut out = BytesMut::new();
        let m = Method::BasicPublish(BasicPublish {
            routing_key: queue.into(),
            ..Default::default()
        });
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        };
        encode_content(channel, &m, &props, body, 131_072, &mut out);
        self.write(&out)
    }

    fn frame(&mut self) -> IoResult<Frame> {
        loop {
            if let Some(f) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| e.to_string())?
            {
                return Ok(f);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Reads the next method (with its content, if any).
    fn next(&mut self) -> IoResult<(u16, Method, Vec<u8>)> {
        loop {
            match self.frame()? {
                Frame::Method { channel, method } => {
                    if !method.has_content() {
                        return Ok((channel, method, Vec::new()));
                    }
                    let Frame::Header { header, .. } = self.frame()? else {
                        return Err("no header".into());
                    };
                    let mut body = Vec::new();
                    while (body.len() as u64) < header.body_size {
                        match self.frame()? {
                            Frame::Body { payload, .. } => body.extend_from_slice(&payload),
                            _ => return Err("no body".into()),
                        }
                    }
                    return Ok((channel, method, body));
                }
                Frame::Heartbeat { .. } => continue,
                other => return Err(format!("unexpected frame {other:?}")),
            }
        }
    }

    fn expect(&mut self, want: impl Fn(&Method) -> bool) -> IoResult<Method> {
        let (_, m, _) = self.next()?;
        if want(&m) {
            Ok(m)
        } else {
            Err(format!("unexpected {m:?}"))
        }
    }

    fn open_channel(&mut self, channel: u16) -> IoResult<()> {
        self.send(channel, Method::ChannelOpen(ChannelOpen::default()))?;
        self.expect(|m| matches!(m, Method::ChannelOpenOk(_)))
            .map(|_| ())
    }

    fn confirm_select(&mut self, channel: u16) -> IoResult<()> {
        self.send(
            channel,
            Method::ConfirmSelect(ConfirmSelect { nowait: false }),
        )?;
        self.expect(|m| matches!(m, Method::ConfirmSelectOk(_)))
            .map(|_| ())
    }
}

/// Everything the clients observed, across all broker lifetimes.
#[derive(Default)]
struct Model {
    /// Ids published (confirmed or not).
    published: HashSet<u64>,
    /// Ids whose publish was confirmed.
    confirmed: HashSet<u64>,
    /// For each id: the broker lifetimes ("epochs") it was delivered in.
    delivered_in: HashMap<u64, Vec<usize>>,
    /// Ids whose ack is known to be durable.
    acked_durably: HashSet<u64>,
    /// Everything that went wrong.
    violations: Vec<String>,
}

impl Model {
    fn on_delivery(&mut self, id: u64, redelivered: bool, epoch: usize) {
        if !self.published.contains(&id) {
            self.violations
                .push(format!("delivered id {id} that was never published"));
        }
        if self.acked_durably.contains(&id) {
            self.violations
                .push(format!("id {id} delivered again after its ack was durable"));
        }
        let seen = self.delivered_in.entry(id).or_default();
        if !seen.is_empty() && !redelivered {
            self.violations.push(format!(
                "id {id} delivered again (epoch {epoch}, before in {seen:?}) without redelivered"
            ));
        }
        seen.push(epoch);
    }
}

fn publisher(
    port: u16,
    first_id: u64,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
) -> IoResult<()> {
    let mut c = Client::open(port)?;
    c.open_channel(1)?;
    c.confirm_select(1)?;
    let mut next_id = first_id;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // A window of 50 publishes, then wait for their confirms.
        let mut by_seq = HashMap::new();
        for _ in 0..50 {
            seq += 1;
            model.lock().unwrap().published.insert(next_id);
            by_seq.insert(seq, next_id);
            c.publish(1, QUEUE, &next_id.to_be_bytes())?;
            next_id += 1;
        }
        while !by_seq.is_empty() {
            match c.next()? {
                (_, Method::BasicAck(a), _) => {
                    let done: Vec<u64> = by_seq
                        .keys()
                        .copied()
                        .filter(|s| {
                            if a.multiple {
                                *s <= a.delivery_tag
                            } else {
                                *s == a.delivery_tag
                            }
                        })
                        .collect();
                    let mut m = model.lock().unwrap();
                    for s in done {
                        if let Some(id) = by_seq.remove(&s) {
                            m.confirmed.insert(id);
                        }
                    }
                }
                (_, Method::BasicNack(n), _) => return Err(format!("unexpected nack {n:?}")),
                (_, other, _) => return Err(format!("publisher got {other:?}")),
            }
        }
    }
    Ok(())
}

fn consumer(
    port: u16,
    epoch: usize,
    model: Arc<Mutex<Model>>,
    stop: Arc<AtomicBool>,
    drain: bool,
) -> IoResult<usize> {
    let mut c = Client::open(port)?;
    // The marker channel first: once consuming, deliveries interleave with replies.
    c.open_channel(2)?;
    c.confirm_select(2)?;
    c.open_channel(1)?;
    c.send(
        1,
        Method::BasicQos(BasicQos {
            prefetch_count: 20,
            ..Default::default()
        }),
    )?;
    c.expect(|m| matches!(m, Method::BasicQosOk(_)))?;
    c.send(
        1,
        Method::BasicConsume(BasicConsume {
            queue: QUEUE.into(),
            ..Default::default()
        }),
    )?;
    c.expect(|m| matches!(m, Method::BasicConsumeOk(_)))?;
    if drain {
        c.stream
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .map_err(|e| e.to_string())?;
    }
    let mut acked_since_marker: Vec<u64> = Vec::new();
    let mut awaiting: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut marker_seq = 0u64;
    let mut consumed = 0;
    while !stop.load(Ordering::Relaxed) {
        let (channel, method, body) = match c.next() {
            Ok(x) => x,
            // While draining, a quiet queue ends the drain.
            Err(e) if drain && (e.contains("timed out") || e.contains("temporarily")) => break,
            Err(e) => return Err(e),
        };
        match method {
            Method::BasicDeliver(d) if channel == 1 => {
                let id = u64::from_be_bytes(body.as_slice().try_into().map_err(|_| "bad body")?);
                model.lock().unwrap().on_delivery(id, d.redelivered, epoch);
                c.send(
                    1,
                    Method::BasicAck(BasicAck {
                        delivery_tag: d.delivery_tag,
                        multiple: false,
                    }),
                )?;
                consumed += 1;
                acked_since_marker.push(id);
                if acked_since_marker.len() >= 10 {
                    marker_seq += 1;
                    awaiting.push((marker_seq, std::mem::take(&mut acked_since_marker)));
                    c.publish(2, MARKERS, b"marker")?;
                }
            }
            Method::BasicAck(a) if channel == 2 => {
                let mut m = model.lock().unwrap();
                awaiting.retain(|(s, ids)| {
                    let done = if a.multiple {
                        *s <= a.delivery_tag
                    } else {
                        *s == a.delivery_tag
                    };
                    if done {
                        m.acked_durably.extend(ids.iter().copied());
                    }
                    !done
                });
            }
            other => return Err(format!("consumer got {other:?} on channel {channel}")),
        }
    }
    Ok(consumed)
}

fn declare_queues(port: u16) {
    let mut c = Client::open(port).expect("connect for setup");
    c.open_channel(1).unwrap();
    c.send(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: QUEUE.into(),
            durable: true,
            ..Default::default()
        }),
    )
    .unwrap();
    c.expect(|m| matches!(m, Method::QueueDeclareOk(_)))
        .unwrap();
    let args = [(
        "x-max-length".to_string(),
        warren::proto::table::FieldValue::I32(1),
    )]
    .into_iter()
    .collect();
    c.send(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: MARKERS.into(),
            durable: true,
            arguments: args,
            ..Default::default()
        }),
    )
    .unwrap();
    c.expect(|m| matches!(m, Method::QueueDeclareOk(_)))
        .unwrap();
}

#[test]
fn confirmed_messages_survive_kill_9_and_durable_acks_stay_acked() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
    println!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let model = Arc::new(Mutex::new(Model::default()));
    let mut dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    for epoch in 0..KILLS {
        let server = Server::start_in(dir, &[]);
        if epoch == 0 {
            declare_queues(server.port);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for p in 0..2u64 {
            let (m, s, port) = (model.clone(), stop.clone(), server.port);
            let first = (epoch as u64 * 2 + p) << 32;
            threads.push(std::thread::spawn(move || {
                publisher(port, first, m, s).map(|_| 0)
            }));
        }
        for _ in 0..2 {
            let (m, s, port) = (model.clone(), stop.clone(), server.port);
            threads.push(std::thread::spawn(move || {
                consumer(port, epoch, m, s, false)
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..700)));
        dir = server.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            // Errors are expected: the broker died under the clients.
            let _ = t.join().expect("client thread panicked");
        }
    }
    // A last lifetime without a kill: consume everything that is left.
    let server = Server::start_in(dir, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let drained = consumer(server.port, KILLS, model.clone(), stop, true).expect("final drain");
    let m = model.lock().unwrap();
    println!(
        "{KILLS} kills in {:?}: {} published, {} confirmed, {} delivered ids, {} acks known durable, {} drained at the end",
        started.elapsed(),
        m.published.len(),
        m.confirmed.len(),
        m.delivered_in.len(),
        m.acked_durably.len(),
        drained
    );
    assert!(
        m.violations.is_empty(),
        "violations (seed {seed}):\n{}",
        m.violations.join("\n")
    );
    let lost: Vec<u64> = m
        .confirmed
        .iter()
        .filter(|id| !m.delivered_in.contains_key(id))
        .copied()
        .collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost (seed {seed}), e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        m.confirmed.len() > 1000,
        "the load was too light to mean anything: {} confirmed",
        m.confirmed.len()
    );
}
