//! The real tokio driver (`warren::server::serve`) under madsim: simulated TCP, the broker
//! node killed and restarted from the virtual disk, the network clogged and unclogged,
//! and every confirmed persistent message consumed in the end.
//!
//! ```text
//! RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim \
//!     cargo test -p warren-sim --release --test madsim
//! ```
//!
//! madsim's TCP never splits reads or writes; the byte-level chunking is covered by the
//! simulator's own network (`warren-sim`'s first layer).

#![cfg(madsim)]

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use madsim::net::NetSim;
use madsim::rand::{Rng, thread_rng};
use madsim::runtime::Handle;
use madsim::time::{sleep, timeout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use warren::proto::constants::PROTOCOL_HEADER;
use warren::proto::frame::{Frame, FrameDecoder, encode_content, encode_method};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::FieldTable;
use warren::server::{ServerConfig, serve};
use warren_sim::disk::VirtualDisk;

const QUEUE: &str = "durable-q";
const MESSAGES: u64 = 1500;
const PORT: u16 = 5672;

fn broker_ip() -> IpAddr {
    // An address inside the simulation only; no real traffic leaves the process.
    IpAddr::from([192, 0, 2, 1])
}

type Io = std::io::Result<()>;

fn broken(what: &str) -> std::io::Error {
    std::io::Error::other(what.to_string())
}

/// A minimal async AMQP client over warren's codec.
struct Amqp {
    stream: TcpStream,
    decoder: FrameDecoder,
    input: BytesMut,
    frame_max: u32,
}

impl Amqp {
    async fn connect() -> std::io::Result<Amqp> {
        let addr = SocketAddr::new(broker_ip(), PORT);
        let stream = timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| broken("connect timed out"))??;
        let mut c = Amqp {
            stream,
            decoder: FrameDecoder::new(131_072 + 8),
            input: BytesMut::new(),
            frame_max: 4096,
        };
        c.stream.write_all(&PROTOCOL_HEADER).await?;
        c.stream.flush().await?;
        let Method::ConnectionStart(_) = c.method().await?.1 else {
            return Err(broken("expected connection.start"));
        };
        c.send(
            0,
            Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: "en_US".into(),
            }),
        )
        .await?;
        let Method::ConnectionTune(t) = c.method().await?.1 else {
            return Err(broken("expected connection.tune"));
        };
        c.frame_max = t.frame_max.min(8192);
        c.send(
            0,
            Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: 8,
                frame_max: c.frame_max,
                heartbeat: 0,
            }),
        )
        .await?;
        c.send(
            0,
            Method::ConnectionOpen(ConnectionOpen {
                virtual_host: "/".into(),
                ..Default::default()
            }),
        )
        .await?;
        let Method::ConnectionOpenOk(_) = c.method().await?.1 else {
            return Err(broken("expected connection.open-ok"));
        };
        c.send(1, Method::ChannelOpen(ChannelOpen::default()))
            .await?;
        c.method().await?;
        c.send(
            1,
            Method::QueueDeclare(QueueDeclare {
                queue: QUEUE.into(),
                durable: true,
                ..Default::default()
            }),
        )
        .await?;
        c.method().await?;
        Ok(c)
    }

    async fn send(&mut self, channel: u16, method: Method) -> Io {
        let mut out = BytesMut::new();
        encode_method(channel, &method, &mut out);
        self.stream.write_all(&out).await?;
        // madsim's stream sends on flush only.
        self.stream.flush().await
    }

    /// The next frame; a silent or closed socket is an error (the caller reconnects).
    async fn frame(&mut self) -> std::io::Result<Frame> {
        loop {
            match self.decoder.decode(&mut self.input) {
                Ok(Some(Frame::Heartbeat { .. })) => continue,
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(broken(&format!("bad frame: {e:?}"))),
            }
            let n = timeout(
                Duration::from_secs(3),
                self.stream.read_buf(&mut self.input),
            )
            .await
            .map_err(|_| broken("read timed out"))??;
            if n == 0 {
                return Err(broken("closed"));
            }
        }
    }

    async fn method(&mut self) -> std::io::Result<(u16, Method)> {
        match self.frame().await? {
            Frame::Method {
                method: Method::ConnectionClose(c),
                ..
            } => Err(broken(&format!("connection closed: {}", c.reply_text))),
            Frame::Method { channel, method } => Ok((channel, method)),
            _ => Err(broken("expected a method frame")),
        }
    }
}

fn id_of(props: &BasicProperties) -> Option<u64> {
    props.message_id.as_ref()?.as_str()?.parse().ok()
}

/// Publishes persistent messages with confirms until `MESSAGES` are confirmed.
async fn publisher(confirmed: Arc<Mutex<BTreeSet<u64>>>) {
    let mut next: u64 = 0;
    while confirmed.lock().unwrap().len() < MESSAGES as usize {
        let mut c = match Amqp::connect().await {
            Ok(c) => c,
            Err(_) => {
                sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // An error (the broker was killed, the link clogged) means reconnecting; the
        // publishes without a confirm have an unknown fate.
        let _ = publish_session(&mut c, &mut next, &confirmed).await;
        sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_session(
    c: &mut Amqp,
    next: &mut u64,
    confirmed: &Arc<Mutex<BTreeSet<u64>>>,
) -> Io {
    c.send(1, Method::ConfirmSelect(ConfirmSelect { nowait: false }))
        .await?;
    c.method().await?;
    let mut seq_to_id: Vec<u64> = Vec::new();
    loop {
        if confirmed.lock().unwrap().len() >= MESSAGES as usize {
            return Ok(());
        }
        let batch = thread_rng().gen_range(1..=10);
        let mut out = BytesMut::new();
        for _ in 0..batch {
            *next += 1;
            seq_to_id.push(*next);
            let props = BasicProperties {
                delivery_mode: Some(2),
                message_id: Some(next.to_string().into()),
                ..Default::default()
            };
            let publish = Method::BasicPublish(BasicPublish {
                routing_key: QUEUE.into(),
                ..Default::default()
            });
            let body = vec![(*next % 251) as u8; (*next % 700) as usize];
            encode_content(1, &publish, &props, &body, c.frame_max, &mut out);
        }
        c.stream.write_all(&out).await?;
        c.stream.flush().await?;
        let mut acked = confirmed_upto(c, seq_to_id.len() as u64, &seq_to_id, confirmed).await?;
        while acked < seq_to_id.len() as u64 {
            acked = confirmed_upto(c, seq_to_id.len() as u64, &seq_to_id, confirmed).await?;
        }
        sleep(Duration::from_millis(thread_rng().gen_range(0..20))).await;
    }
}

/// Reads one confirm and records what it acks; returns the highest sequence settled.
async fn confirmed_upto(
    c: &mut Amqp,
    _sent: u64,
    seq_to_id: &[u64],
    confirmed: &Arc<Mutex<BTreeSet<u64>>>,
) -> std::io::Result<u64> {
    match c.method().await? {
        (_, Method::BasicAck(a)) => {
            let mut set = confirmed.lock().unwrap();
            let from = if a.multiple { 1 } else { a.delivery_tag };
            for seq in from..=a.delivery_tag {
                set.insert(seq_to_id[(seq - 1) as usize]);
            }
            Ok(a.delivery_tag)
        }
        (_, Method::BasicNack(n)) => Err(broken(&format!("nack {}", n.delivery_tag))),
        (_, other) => Err(broken(&format!("unexpected {}", other.name()))),
    }
}

/// Consumes with manual acks, forever, reconnecting as needed.
async fn consumer(received: Arc<Mutex<BTreeSet<u64>>>) {
    loop {
        let Ok(mut c) = Amqp::connect().await else {
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let _ = consume_session(&mut c, &received).await;
        sleep(Duration::from_millis(50)).await;
    }
}

async fn consume_session(c: &mut Amqp, received: &Arc<Mutex<BTreeSet<u64>>>) -> Io {
    c.send(
        1,
        Method::BasicQos(BasicQos {
            prefetch_size: 0,
            prefetch_count: 20,
            global: false,
        }),
    )
    .await?;
    c.method().await?;
    c.send(
        1,
        Method::BasicConsume(BasicConsume {
            queue: QUEUE.into(),
            consumer_tag: "sim".into(),
            ..Default::default()
        }),
    )
    .await?;
    c.method().await?;
    loop {
        let tag = match c.frame().await? {
            Frame::Method {
                method: Method::BasicDeliver(d),
                ..
            } => d.delivery_tag,
            other => return Err(broken(&format!("unexpected {other:?}"))),
        };
        let Frame::Header { header, .. } = c.frame().await? else {
            return Err(broken("expected a content header"));
        };
        let mut got = 0u64;
        while got < header.body_size {
            let Frame::Body { payload, .. } = c.frame().await? else {
                return Err(broken("expected a body frame"));
            };
            got += payload.len() as u64;
        }
        let id = id_of(&header.properties).ok_or_else(|| broken("no message id"))?;
        received.lock().unwrap().insert(id);
        c.send(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: tag,
                multiple: false,
            }),
        )
        .await?;
    }
}

#[madsim::test]
async fn confirmed_messages_survive_kills_restarts_and_clogs() {
    let handle = Handle::current();
    let disk = VirtualDisk::new();
    let node_disk = disk.clone();
    let broker = handle
        .create_node()
        .name("broker")
        .ip(broker_ip())
        .init(move || {
            let store = node_disk.clone();
            async move {
                let mut config = ServerConfig {
                    bind: IpAddr::from([0, 0, 0, 0]),
                    amqp_port: PORT,
                    ..ServerConfig::default()
                };
                // Clients connect from simulated, non-loopback addresses.
                config.broker.loopback_users.clear();
                serve(config, Box::new(store), 7, std::future::pending::<()>())
                    .await
                    .expect("the broker serves until killed");
            }
        })
        .build();
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let received = Arc::new(Mutex::new(BTreeSet::new()));
    let publisher_node = handle
        .create_node()
        .name("publisher")
        .ip(IpAddr::from([192, 0, 2, 2]))
        .build();
    let consumer_node = handle
        .create_node()
        .name("consumer")
        .ip(IpAddr::from([192, 0, 2, 3]))
        .build();
    sleep(Duration::from_millis(100)).await;
    let pub_task = publisher_node.spawn(publisher(confirmed.clone()));
    consumer_node.spawn(consumer(received.clone()));

    // Faults: kill and restart the broker (unsynced writes lost, sometimes a prefix of
    // them kept), and clog the clients' links.
    let net = NetSim::current();
    let mut kills = 0;
    while (!pub_task.is_finished() || kills < 3) && kills < 8 {
        sleep(Duration::from_millis(thread_rng().gen_range(200..1500))).await;
        match thread_rng().gen_range(0..3) {
            0 | 1 => {
                handle.kill(broker.id());
                let unsynced = disk.unsynced_batches();
                let keep = thread_rng().gen_range(0..=unsynced);
                disk.crash(keep);
                kills += 1;
                sleep(Duration::from_millis(thread_rng().gen_range(10..500))).await;
                handle.restart(broker.id());
            }
            _ => {
                let victim = if thread_rng().gen_bool(0.5) {
                    consumer_node.id()
                } else {
                    publisher_node.id()
                };
                net.clog_node(victim);
                sleep(Duration::from_millis(thread_rng().gen_range(100..2000))).await;
                net.unclog_node(victim);
            }
        }
    }
    // Liveness: no more faults; every confirmed message must be consumed.
    timeout(Duration::from_secs(300), pub_task)
        .await
        .expect("the publisher gets its messages confirmed")
        .expect("publisher task");
    let deadline = madsim::time::Instant::now() + Duration::from_secs(300);
    loop {
        let missing: Vec<u64> = {
            let c = confirmed.lock().unwrap();
            let r = received.lock().unwrap();
            c.difference(&r).copied().take(5).collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            madsim::time::Instant::now() < deadline,
            "confirmed messages never consumed, e.g. {missing:?} (kills: {kills})"
        );
        sleep(Duration::from_millis(200)).await;
    }
    let confirmed = confirmed.lock().unwrap().len();
    let received = received.lock().unwrap().len();
    eprintln!("madsim: {confirmed} confirmed, {received} consumed, {kills} broker kills");
    assert!(confirmed >= MESSAGES as usize);
}
