//! Raft messages between members over TCP (the driver's side; the Raft logic is in
//! [`super::Replica`]).
//!
//! A connection carries one direction: the dialling member writes, the listening member
//! reads. It opens with the cluster's cookie and the dialler's node id; a connection with
//! the wrong cookie is closed before any message is read. Then each message is its
//! protobuf bytes after a 4-byte big-endian length, at most [`MAX_FRAME_BYTES`].
//!
//! Raft tolerates lost messages, so neither side waits for the other: a full queue, a
//! refused connection or a broken one drops messages, and the writer dials again.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use protobuf::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::NodeId;
use super::member::PeerInbox;
use super::raftpb::Message;

/// Most bytes of one message on the wire. An append carries at most
/// [`super::MAX_MESSAGE_BYTES`] of entries, or one entry however large: a store batch,
/// which the broker bounds by its unsynced-bytes credit.
pub const MAX_FRAME_BYTES: u32 = 256 << 20;
// A batch the Raft log takes fits one message.
const _: () = assert!(super::MAX_ENTRY_BYTES < MAX_FRAME_BYTES as u64);
/// Messages queued for one peer; more are dropped (Raft sends them again).
pub const PEER_QUEUE: usize = 4096;
/// How long a writer waits before dialling a peer again.
const REDIAL: Duration = Duration::from_millis(200);
/// How long a dial or the opening of a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most inbound connections at once that presented the cookie (a few per member are
/// plenty).
const MAX_INBOUND: usize = 64;
/// Most inbound connections at once still to present the cookie, and the most of those
/// from one address: connections that say nothing hold these for [`CONNECT_TIMEOUT`], not
/// the places of members that opened properly, and one address cannot hold them all.
const MAX_OPENING: usize = 64;
const MAX_OPENING_PER_ADDRESS: usize = 4;
/// How often a connection paused for the snapshot backlog looks again.
const BACKLOG_WAIT: Duration = Duration::from_millis(2);

/// The transport's own thread and runtime: Raft messages keep flowing while the node's
/// runtime is busy (a new leader's broker recovering a large store holds it for seconds,
/// longer than an election timeout).
#[derive(Debug)]
pub struct NetThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetThread {
    /// Starts the thread.
    pub fn start() -> std::io::Result<NetThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("warren-raft-net".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(NetThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Its runtime, to start the listener and the writers on.
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for NetThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The opening of a connection: cookie length, cookie, the dialler's id.
fn hello(cookie: &str, from: NodeId) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 9);
    out.push(u8::try_from(cookie.len()).expect("cookies are checked to fit a byte"));
    out.extend_from_slice(cookie.as_bytes());
    out.extend_from_slice(&from.to_be_bytes());
    out
}

/// Listens on `listener` for the other members' messages and hands each one addressed to
/// `me` from the member that opened the connection to `deliver`, reading nothing while
/// its snapshot backlog is full. Any node that presents the cookie is heard (members
/// change, and the cookie is what makes a member); Raft ignores nodes outside its
/// configuration.
pub fn listen(
    listener: TcpListener,
    cookie: String,
    me: NodeId,
    deliver: PeerInbox,
) -> tokio::task::JoinHandle<()> {
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    let opening = Opening::default();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a Raft connection");
                    tokio::time::sleep(REDIAL).await;
                    continue;
                }
            };
            let Some(slot) = opening.take(peer.ip()) else {
                continue;
            };
            let (cookie, deliver, permits) = (cookie.clone(), deliver.clone(), permits.clone());
            tokio::spawn(async move {
                if let Err(e) = read_peer(stream, &cookie, me, deliver, slot, &permits).await {
                    tracing::debug!(%peer, error = %e, "Raft connection closed");
                }
            });
        }
    })
}

/// Connections still to present the cookie, by address.
#[derive(Debug, Clone, Default)]
struct Opening(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>);

/// A connection's place among those opening, given back when dropped.
#[derive(Debug)]
struct OpeningSlot {
    opening: Opening,
    ip: IpAddr,
}

impl Opening {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<IpAddr, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A place for a connection from `ip`, if there is one.
    fn take(&self, ip: IpAddr) -> Option<OpeningSlot> {
        let mut map = self.lock();
        let total: usize = map.values().sum();
        let mine = map.entry(ip).or_default();
        if total >= MAX_OPENING || *mine >= MAX_OPENING_PER_ADDRESS {
            if *mine == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *mine += 1;
        Some(OpeningSlot {
            opening: self.clone(),
            ip,
        })
    }
}

impl Drop for OpeningSlot {
    fn drop(&mut self) {
        let mut map = self.opening.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn read_peer(
    mut stream: TcpStream,
    cookie: &str,
    me: NodeId,
    inbox: PeerInbox,
    slot: OpeningSlot,
    permits: &std::sync::Arc<tokio::sync::Semaphore>,
) -> std::io::Result<()> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let from = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let len = stream.read_u8().await?;
        let mut presented = vec![0u8; usize::from(len)];
        stream.read_exact(&mut presented).await?;
        if !same_secret(&presented, cookie.as_bytes()) {
            tracing::warn!("a Raft connection presented the wrong cookie");
            return Err(bad("wrong cookie"));
        }
        stream.read_u64().await
    })
    .await
    .map_err(|_| bad("no opening in time"))??;
    drop(slot);
    if from == me || from == 0 {
        return Err(bad("not another node"));
    }
    let Ok(_permit) = permits.clone().try_acquire_owned() else {
        return Err(bad("too many member connections"));
    };
    let mut buf = Vec::new();
    loop {
        // While the Raft thread has snapshot chunks enough to write, nothing more is read:
        // TCP holds the sender back.
        while inbox.backlogged() {
            tokio::time::sleep(BACKLOG_WAIT).await;
        }
        let len = stream.read_u32().await?;
        if len > MAX_FRAME_BYTES {
            return Err(bad("message too large"));
        }
        buf.resize(len as usize, 0);
        stream.read_exact(&mut buf).await?;
        let message = Message::parse_from_bytes(&buf).map_err(|_| bad("bad message"))?;
        if message.from != from || message.to != me {
            return Err(bad("misaddressed message"));
        }
        inbox.deliver(message);
        if buf.capacity() > 1 << 20 {
            buf = Vec::new();
        }
    }
}

/// Connects to `addr`, from `source` when given (a node bound to one address dials from
/// it too, so that its traffic is told apart by address).
async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source.filter(|ip| !ip.is_unspecified()) else {
        return TcpStream::connect(addr).await;
    };
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// Starts the writer of messages to one peer; its sender takes them without waiting
/// (`try_send`: a full queue drops the message).
pub fn dial(
    addr: SocketAddr,
    source: Option<IpAddr>,
    cookie: String,
    me: NodeId,
) -> mpsc::Sender<Message> {
    let (tx, mut rx) = mpsc::channel::<Message>(PEER_QUEUE);
    tokio::spawn(async move {
        let opening = hello(&cookie, me);
        loop {
            let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, source)).await {
                Ok(Ok(s)) => s,
                _ => {
                    // While the peer is away, what was queued for it is stale.
                    while rx.try_recv().is_ok() {}
                    if rx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(REDIAL).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match write_peer(stream, &opening, &mut rx).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "Raft connection lost");
                    tokio::time::sleep(REDIAL).await;
                }
            }
        }
    });
    tx
}

/// Writes queued messages until the queue closes (Ok) or the connection fails.
async fn write_peer(
    stream: TcpStream,
    opening: &[u8],
    rx: &mut mpsc::Receiver<Message>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    out.write_all(opening).await?;
    out.flush().await?;
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        // Whatever else is queued goes out in the same write.
        while let Some(message) = next {
            let bytes = message
                .write_to_bytes()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let len = u32::try_from(bytes.len())
                .ok()
                .filter(|l| *l <= MAX_FRAME_BYTES)
                .ok_or_else(|| std::io::Error::other("a Raft message too large to send"))?;
            out.write_u32(len).await?;
            out.write_all(&bytes).await?;
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc::{Receiver, sync_channel};

    use super::super::member::{MemberIn, SNAPSHOT_BACKLOG_BYTES};
    use super::super::raftpb::MessageType;
    use super::*;

    /// The next peer message in the inbox, waiting up to `wait`.
    async fn next(rx: &Receiver<MemberIn>, wait: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(MemberIn::Peer(m)) = rx.try_recv() {
                return Some(m);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn message(to: NodeId, term: u64) -> Message {
        let mut m = Message::default();
        m.from = 2;
        m.to = to;
        m.term = term;
        m
    }

    #[tokio::test]
    async fn messages_reach_the_member_they_are_for_and_a_wrong_cookie_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = sync_channel(16);
        let cookie = "0123456789abcdef".to_string();
        let _server = listen(listener, cookie.clone(), 1, PeerInbox::new(tx));
        let wrong = dial(addr, None, "fedcba9876543210".into(), 2);
        let right = dial(addr, Some([127, 0, 0, 1].into()), cookie, 2);
        wrong.send(message(1, 7)).await.unwrap();
        right.send(message(1, 8)).await.unwrap();
        let m = next(&rx, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m.term, 8);
        // Nothing from the dialler with the wrong cookie arrives.
        assert!(next(&rx, Duration::from_millis(300)).await.is_none());
    }

    /// Connections that never present the cookie, 64 of them from one address, do not
    /// keep a member dialling from another address out (they held every place for the 2 s
    /// each may take to open).
    #[tokio::test]
    async fn silent_connections_from_one_address_do_not_keep_members_out() {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = sync_channel(16);
        let cookie = "0123456789abcdef".to_string();
        let _server = listen(listener, cookie.clone(), 1, PeerInbox::new(tx));
        let mut silent = Vec::new();
        for _ in 0..MAX_INBOUND {
            silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let member = dial(
            SocketAddr::from(([127, 0, 0, 2], port)),
            Some([127, 0, 0, 2].into()),
            cookie,
            2,
        );
        member.send(message(1, 9)).await.unwrap();
        let m = next(&rx, CONNECT_TIMEOUT / 2).await;
        assert_eq!(m.map(|m| m.term), Some(9), "the member was kept out");
        drop(silent);
    }

    #[tokio::test]
    async fn a_full_snapshot_backlog_stops_the_reading_until_the_thread_takes_some() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = sync_channel(1024);
        let inbox = PeerInbox::new(tx);
        let backlog = inbox.counter();
        let cookie = "0123456789abcdef".to_string();
        let _server = listen(listener, cookie.clone(), 1, inbox);
        let peer = dial(addr, None, cookie, 2);
        const CHUNK: usize = 1 << 20;
        let chunks = SNAPSHOT_BACKLOG_BYTES / CHUNK;
        for term in 0..chunks as u64 + 4 {
            let mut m = message(1, term);
            m.set_msg_type(MessageType::MsgSnapshot);
            m.mut_snapshot().data = vec![0u8; CHUNK].into();
            peer.send(m).await.unwrap();
        }
        // The reader stops once the backlog is full: the rest waits in TCP.
        let mut taken = Vec::new();
        while let Some(m) = next(&rx, Duration::from_millis(500)).await {
            taken.push(m);
        }
        assert_eq!(taken.len(), chunks);
        assert_eq!(backlog.load(Relaxed), SNAPSHOT_BACKLOG_BYTES);
        // The Raft thread writes them: the rest comes.
        backlog.fetch_sub(SNAPSHOT_BACKLOG_BYTES, Relaxed);
        let mut rest = Vec::new();
        while let Some(m) = next(&rx, Duration::from_millis(500)).await {
            rest.push(m.term);
        }
        assert_eq!(rest, (chunks as u64..chunks as u64 + 4).collect::<Vec<_>>());
    }
}
