//! Descriptors and connections: handshakes that never finish, many connections, churn,
//! slowloris and idle sockets on the HTTP port, a broker started with a low open-file
//! limit, and a channel of 100,000 consumers closed at once.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use warren::proto::constants::PROTOCOL_HEADER;

use crate::client::Amqp;
use crate::harness::{Attack, Ctx, Outcome, bystander_during, cpu_ticks};
use crate::http;

const CLASS: &str = "connections";

/// The address the attackers connect from; the bystander uses 127.0.0.1, so a limit per
/// peer address must not lock it out.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// RabbitMQ's handshake timeout is 10 s; the broker must have closed an unfinished
/// handshake by this long after it began.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(20);

/// Whether the server has closed `s` (reads whatever it sent first).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits until the server has closed every socket, or `deadline` passes; returns how
/// many are still open and when the last one closed.
fn wait_closed(sockets: &mut Vec<TcpStream>, deadline: Instant) -> (usize, Instant) {
    let mut last = Instant::now();
    loop {
        let before = sockets.len();
        sockets.retain_mut(|s| !closed_by_server(s));
        if sockets.len() < before {
            last = Instant::now();
        }
        if sockets.is_empty() || Instant::now() >= deadline {
            return (sockets.len(), last);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `silent` sockets that send nothing, `header_only` that send the protocol header and
/// stop, and `mid_login` that answer connection.start and never tune-ok; all from one
/// address.
fn unfinished_handshakes(
    ctx: &Ctx,
    silent: usize,
    header_only: usize,
    mid_login: usize,
) -> Outcome {
    let started = Instant::now();
    let mut sockets = Vec::new();
    let mut refused = 0;
    for i in 0..silent + header_only + mid_login {
        let mut c = match Amqp::connect_with(ctx.port, Some(ATTACKER), None) {
            Ok(c) => c,
            Err(_) => {
                refused += 1;
                continue;
            }
        };
        if i >= silent {
            c.send_bytes(&PROTOCOL_HEADER);
        }
        if i >= silent + header_only {
            c.set_timeout(Duration::from_secs(2));
            // Start-ok only: the server then waits for tune-ok, which never comes.
            if c.next().is_ok() {
                let mut response = vec![0u8];
                response.extend_from_slice(b"guest\0guest");
                c.send(
                    0,
                    warren::proto::method::Method::ConnectionStartOk(
                        warren::proto::method::ConnectionStartOk {
                            client_properties: crate::common::client_properties(),
                            mechanism: "PLAIN".into(),
                            response: response.into(),
                            locale: "en_US".into(),
                        },
                    ),
                );
            }
        }
        sockets.push(c.raw.stream);
    }
    let opened = sockets.len();
    let during = bystander_during(ctx)?;
    let (open, last) = wait_closed(&mut sockets, started + HANDSHAKE_DEADLINE);
    if open > 0 {
        return Err(format!(
            "{open} of {opened} unfinished handshakes still open after {} s (RabbitMQ closes them after 10 s)",
            HANDSHAKE_DEADLINE.as_secs()
        ));
    }
    Ok(format!(
        "{opened} held ({refused} refused at connect); bystander {} ms; all closed after {:.1}s",
        during.as_millis(),
        (last - started).as_secs_f64()
    ))
}

/// `n` logged-in connections with a channel each, held while the bystander works.
fn many_connections(ctx: &Ctx, n: usize) -> Outcome {
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Amqp::open(ctx.port)?;
        c.open_channel(1)?;
        conns.push(c);
    }
    let opened = started.elapsed().as_secs_f64();
    let during = bystander_during(ctx)?;
    drop(conns);
    Ok(format!(
        "{n} opened in {opened:.1}s; bystander {} ms with all open",
        during.as_millis()
    ))
}

fn churn(ctx: &Ctx, n: usize) -> Outcome {
    let started = Instant::now();
    for _ in 0..n {
        let mut c = Amqp::open(ctx.port)?;
        c.open_channel(1)?;
        c.close();
    }
    Ok(format!(
        "{n} cycles in {:.1}s",
        started.elapsed().as_secs_f64()
    ))
}

/// A socket to the HTTP port from the attacker's address.
fn http_socket(ctx: &Ctx) -> Result<TcpStream, String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
    socket
        .bind(&std::net::SocketAddr::new(ATTACKER, 0).into())
        .map_err(|e| format!("bind {ATTACKER}: {e}"))?;
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], ctx.http_port));
    socket
        .connect_timeout(&server.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let s: TcpStream = socket.into();
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    Ok(s)
}

/// Slowloris: request headers that never end, one byte at a time.
fn slowloris(ctx: &Ctx, n: usize, deadline: Duration) -> Outcome {
    let started = Instant::now();
    let mut sockets = Vec::new();
    for _ in 0..n {
        let mut s = http_socket(ctx)?;
        let _ = s.write_all(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ");
        sockets.push(s);
    }
    let mut http_during = None;
    let mut last_drip = Instant::now();
    loop {
        if last_drip.elapsed() >= Duration::from_millis(500) {
            for s in &mut sockets {
                let _ = s.write_all(b"a");
            }
            last_drip = Instant::now();
        }
        if http_during.is_none() && started.elapsed() > Duration::from_secs(1) {
            let t = Instant::now();
            let r = http::get(ctx, "/api/overview")?;
            if !r.ok() || t.elapsed() > Duration::from_secs(5) {
                return Err(format!(
                    "the HTTP API did not serve others during slowloris: {} after {} ms",
                    r.status,
                    t.elapsed().as_millis()
                ));
            }
            http_during = Some(t.elapsed());
        }
        sockets.retain_mut(|s| !closed_by_server(s));
        if sockets.is_empty() {
            break;
        }
        if started.elapsed() > deadline {
            return Err(format!(
                "{} of {n} slowloris connections still open after {} s: no header-read timeout",
                sockets.len(),
                deadline.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!(
        "HTTP served others in {} ms; all {n} closed after {:.1}s",
        http_during.map_or(0, |d| d.as_millis()),
        started.elapsed().as_secs_f64()
    ))
}

/// `n` sockets to the HTTP port that send nothing: AMQP keeps working while they are held,
/// and HTTP serves again as soon as they go.
fn idle_http(ctx: &Ctx, n: usize) -> Outcome {
    let mut sockets = Vec::new();
    let mut refused = 0;
    for _ in 0..n {
        match http_socket(ctx) {
            Ok(s) => sockets.push(s),
            Err(_) => refused += 1,
        }
    }
    let during = bystander_during(ctx)?;
    let still_open = sockets
        .iter_mut()
        .map(closed_by_server)
        .filter(|closed| !closed)
        .count();
    drop(sockets);
    let t = Instant::now();
    let r = http::get(ctx, "/api/overview")?;
    if !r.ok() || t.elapsed() > Duration::from_secs(5) {
        return Err(format!("HTTP after the idle sockets went: {}", r.summary()));
    }
    Ok(format!(
        "{still_open} held open, {refused} refused; AMQP bystander {} ms; HTTP {} ms after",
        during.as_millis(),
        t.elapsed().as_millis()
    ))
}

/// The open-file limits of a process: (soft, hard).
pub fn nofile_limits(pid: u32) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    let soft = fields.next()?.parse().ok()?;
    let hard = fields.next()?.parse().ok()?;
    Some((soft, hard))
}

/// Started with a soft limit below what it needs: the broker raises it to the hard limit.
pub fn raised_limit(soft_at_start: u64, connections: usize) -> Attack {
    Attack::new(
        CLASS,
        format!("soft open-file limit {soft_at_start} at start, {connections} connections"),
        128,
        60,
        move |ctx| {
            let (soft, hard) = nofile_limits(ctx.pid).ok_or("cannot read /proc/PID/limits")?;
            if soft != hard {
                return Err(format!(
                    "started with soft open-file limit {soft_at_start}: it is still {soft}, not the hard limit {hard}"
                ));
            }
            many_connections(ctx, connections)
        },
    )
}

/// Started with soft = hard = `limit`: more connections than descriptors. The broker
/// keeps its connection cap below the limit, so that HTTP and the store still get
/// descriptors, refuses the rest without spinning on accept errors, and serves again when
/// they go.
pub fn exhausted_limit(limit: u64, connections: usize) -> Attack {
    Attack::new(
        CLASS,
        format!("open-file limit {limit}, {connections} connections"),
        128,
        60,
        move |ctx| {
            let mut publisher = crate::deadletter::confirmed(ctx)?;
            publisher.queue(1, "fd-limit-q", false, Default::default())?;
            let mut held = Vec::new();
            let mut refused = 0;
            while held.len() + refused < connections && refused < 5 {
                let attempt = Amqp::connect(ctx.port).and_then(|mut c| {
                    c.set_timeout(Duration::from_secs(2));
                    c.handshake("guest", "guest", "/").map_err(String::from)?;
                    Ok(c)
                });
                match attempt {
                    Ok(c) => held.push(c),
                    Err(_) => refused += 1,
                }
            }
            let ticks0 = cpu_ticks(ctx.pid);
            std::thread::sleep(Duration::from_secs(2));
            let spun = cpu_ticks(ctx.pid).saturating_sub(ticks0);
            // Ticks are 1/100 s: more than a second of CPU in two idle seconds is a busy loop.
            if spun > 100 {
                return Err(format!(
                    "{} s of CPU in 2 s while out of descriptors: accept errors are retried without backing off",
                    spun / 100
                ));
            }
            let r = http::get(ctx, "/api/overview")
                .map_err(|e| format!("HTTP with {} AMQP connections held: {e}", held.len()))?;
            if !r.ok() {
                return Err(format!(
                    "HTTP with {} AMQP connections held: {}",
                    held.len(),
                    r.summary()
                ));
            }
            if !publisher.publish_confirmed(
                1,
                "",
                "fd-limit-q",
                &crate::client::persistent(),
                b"x",
            )? {
                return Err("a publish was nacked while AMQP is at its cap".into());
            }
            let n = held.len();
            drop(held);
            publisher.delete_queue(1, "fd-limit-q")?;
            publisher.close();
            Ok(format!(
                "{n} logged in, then {refused} refused; {spun} ticks of CPU in 2 s; HTTP and confirms served"
            ))
        },
    )
}

/// One channel holds 100,000 consumers of one queue (sent as no-wait `basic.consume`s,
/// cheap for the client), then closes. Its consumers leave the queue in one pass: a
/// bystander that connects right after the close is served within a second (removing them
/// one by one cost the square of their number, 10 s here, during which no one was served).
fn many_consumers_closed(ctx: &Ctx) -> Outcome {
    use bytes::BytesMut;
    use warren::proto::frame::encode_method;
    use warren::proto::method::{BasicConsume, ChannelClose, Method};
    use warren::proto::table::FieldTable;
    const N: usize = 100_000;
    let mut c = Amqp::open(ctx.port)?;
    c.open_channel(1)?;
    c.queue(1, "many-consumers", false, FieldTable::default())
        .map_err(|e| format!("declare: {e}"))?;
    let mut out = BytesMut::new();
    for i in 0..N {
        let consume = BasicConsume {
            queue: "many-consumers".into(),
            consumer_tag: format!("c{i}").as_str().into(),
            nowait: true,
            ..Default::default()
        };
        encode_method(1, &Method::BasicConsume(consume), &mut out);
    }
    c.send_bytes(&out);
    // A round trip after them: every consumer is in place.
    c.count(1, "many-consumers")
        .map_err(|e| format!("after the consumes: {e}"))?;
    c.send(1, Method::ChannelClose(ChannelClose::default()));
    let waited = bystander_during(ctx)?;
    if waited > Duration::from_secs(1) {
        return Err(format!(
            "a bystander waited {} ms while the channel's {N} consumers were removed",
            waited.as_millis()
        ));
    }
    Ok(format!(
        "{N} consumers; a bystander served in {} ms",
        waited.as_millis()
    ))
}

pub fn attacks() -> Vec<Attack> {
    vec![
        Attack::new(
            CLASS,
            "a channel of 100,000 consumers of one queue closes",
            256,
            60,
            many_consumers_closed,
        ),
        Attack::new(
            CLASS,
            "1,200 unfinished handshakes from one address",
            64,
            60,
            |ctx| unfinished_handshakes(ctx, 500, 500, 200),
        ),
        Attack::new(
            CLASS,
            "2,000 connections with a channel each",
            192,
            60,
            |ctx| many_connections(ctx, 2000),
        ),
        Attack::new(CLASS, "2,000 connect/login/close cycles", 48, 60, |ctx| {
            churn(ctx, 2000)
        }),
        Attack::new(
            CLASS,
            "HTTP slowloris: 300 headers dripping",
            64,
            60,
            |ctx| slowloris(ctx, 300, Duration::from_secs(40)),
        ),
        Attack::new(CLASS, "HTTP: 1,000 idle sockets", 96, 60, |ctx| {
            idle_http(ctx, 1000)
        }),
    ]
}
