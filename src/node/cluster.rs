//! A node that is a member of a replicated cluster: the Raft thread and its transport
//! run for the node's whole life, and the broker (AMQP and HTTP) runs only while this node
//! leads, started afresh from the store each time it becomes leader.
//!
//! While the node follows, it answers AMQP clients with `connection.start` and then closes
//! the connection (`CONNECTION_FORCED`, naming the leader and the members), so that a
//! client given every member's address moves on to the next; its HTTP port redirects to the
//! leader's (`admin::http::follower`). When it stops leading (deposed, cut off
//! from the majority, or a batch whose fate is in doubt), its broker stops: connections
//! close, and nothing not committed was confirmed.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::admin::http::follower::{FollowerView, serve_follower};
use crate::cluster::disk::FjallLog;
use crate::cluster::member::{self, ELECTION_TICKS, HEARTBEAT_TICKS, ReplicatedStore};
use crate::cluster::settings::{ClusterSettings, MemberAddress};
use crate::cluster::status::{ClusterView, Status};
use crate::cluster::{ReplicaConfig, Role, transport};
use crate::proto::connection::truncate_shortstr;
use crate::proto::constants::{CONNECTION_FORCED, PROTOCOL_HEADER};
use crate::proto::frame::{Frame, FrameDecoder, encode_method};
use crate::proto::method::{ConnectionClose, ConnectionStart, ConnectionTune, Method};
use crate::proto::table::FieldTable;
use crate::server::ServerConfig;
use crate::store::disk::FjallStore;

/// The Raft log's directory inside the data directory.
pub const LOG_DIR: &str = "raft";

/// Runs a cluster member until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    cluster: ClusterSettings,
    store: FjallStore,
    seed: u64,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let err = |e: String| std::io::Error::other(e);
    // A store batch is synced once a majority committed it: consumers get only that.
    let mut config = config;
    config.broker.deliver_after_sync = true;
    let (log, state) =
        FjallLog::open(&config.data_dir.join(LOG_DIR)).map_err(|e| err(e.to_string()))?;
    let me = cluster.me().clone();
    // Every member names the others `warren-ID@IP`; it takes that name for itself too.
    if config.node_name.is_none() {
        config.node_name = Some(me.node_name());
    }
    let raft_port = me.raft.port();
    let listener = std::net::TcpListener::bind(SocketAddr::new(config.bind, raft_port))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for Raft on port {raft_port}: {e}"),
            )
        })?;
    let raft_local = listener.local_addr()?;
    let (inbox_tx, inbox_rx) = std::sync::mpsc::sync_channel(member::INBOX);
    let peer_inbox = member::PeerInbox::new(inbox_tx);
    // The transport runs on a thread of its own, so that a busy node runtime never holds
    // up heartbeats.
    let net = transport::NetThread::start()?;
    let listening = {
        let _on_net = net.handle().enter();
        transport::listen(
            TcpListener::from_std(listener)?,
            cluster.cookie.clone(),
            me.id,
            peer_inbox.clone(),
        )
    };
    // The Raft thread starts a writer to each member it sends to, on the transport's
    // runtime.
    let dial: member::Dialer = {
        let (handle, cookie, bind, id) = (
            net.handle().clone(),
            cluster.cookie.clone(),
            config.bind,
            me.id,
        );
        Box::new(move |addr| {
            let _on_net = handle.enter();
            transport::dial(addr, Some(bind), cookie.clone(), id)
        })
    };
    let cfg = ReplicaConfig {
        id: me.id,
        // Set by the Raft thread from the store's record of the members.
        members: Vec::new(),
        learners: Vec::new(),
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: HEARTBEAT_TICKS,
        retain_entries: cluster.retain_entries,
        retain_bytes: crate::cluster::RETAIN_BYTES,
    };
    let member = member::start(
        &cfg,
        log,
        &state,
        store,
        config.data_dir.join(member::SNAPSHOT_DIR),
        (&peer_inbox, inbox_rx),
        member::Members {
            configured: cluster.members.clone(),
            join: cluster.join,
            dial,
        },
    )
    .map_err(err)?;
    tracing::info!(id = me.id, raft = %raft_local, members = cluster.members.len(), "cluster member started");
    println!("warren: cluster member {} (Raft on {raft_local})", me.id);
    let mut status = member.status.clone();
    // What the HTTP API shows of the cluster, leader or follower.
    let view = ClusterView {
        configured: cluster.members.clone(),
        status: member.status.clone(),
        changes: {
            let inbox = member.inbox.clone();
            std::sync::Arc::new(move |change, reply| {
                inbox
                    .try_send(member::MemberIn::Change { change, reply })
                    .is_ok()
            })
        },
    };
    tokio::pin!(shutdown);
    let result = loop {
        // Wait to lead, turning clients away meanwhile.
        let amqp = SocketAddr::new(config.bind, config.amqp_port);
        let refusing = match TcpListener::bind(amqp).await {
            Ok(l) => Some(turn_clients_away(
                l,
                view.clone(),
                config.connection.server_properties.clone(),
            )),
            Err(e) => {
                tracing::warn!(address = %amqp, error = %e, "cannot listen to turn clients away");
                None
            }
        };
        let http = SocketAddr::new(config.bind, config.http_port);
        let redirecting = match TcpListener::bind(http).await {
            Ok(l) => {
                let follower = FollowerView {
                    cluster: view.clone(),
                    http_port: config.http_port,
                };
                Some(tokio::spawn(serve_follower(l, follower)))
            }
            Err(e) => {
                tracing::warn!(address = %http, error = %e, "cannot listen to redirect HTTP clients");
                None
            }
        };
        let ready = tokio::select! {
            () = &mut shutdown => break Ok(()),
            s = status.wait_for(|s| s.ready || s.failed.is_some()) => s.map(|s| s.clone()),
        };
        // The listeners are dropped with the tasks: the ports are free for the broker.
        if let Some(task) = refusing {
            task.abort();
            let _ = task.await;
        }
        if let Some(task) = redirecting {
            task.abort();
            let _ = task.await;
        }
        let Ok(ready) = ready else {
            break Err(err("the Raft thread is gone".into()));
        };
        if let Some(why) = ready.failed {
            break Err(err(why));
        }
        let term = ready.term;
        tracing::info!(
            term,
            applied = ready.applied,
            "this node leads: starting the broker from the store"
        );
        let lost = Arc::new(Notify::new());
        let store = ReplicatedStore::new(member.inbox.clone(), lost.clone());
        let stopping = Cell::new(false);
        let mut watching = status.clone();
        let until = async {
            tokio::select! {
                () = &mut shutdown => stopping.set(true),
                _ = watching.wait_for(|s| s.role != Role::Leader || s.term != term || s.failed.is_some()) => {}
                () = lost.notified() => {}
            }
        };
        let served = super::run(
            config.clone(),
            Box::new(store),
            seed,
            until,
            None,
            Some(view.clone()),
        )
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the broker stopped on an error");
            if stopping.get() {
                break Err(e);
            }
            // Not at once again: whatever failed may not have passed yet.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if stopping.get() {
            break Ok(());
        }
        tracing::warn!(term, "this node no longer leads: its broker stopped");
    };
    listening.abort();
    let _ = member.inbox.send(member::MemberIn::Stop);
    // The thread syncs the store as it ends; the transport stops after it.
    let thread = member.thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    drop(net);
    result
}

/// How long a client turned away by a follower may take over its handshake.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes a turned-away client may send before its `connection.start-ok`.
const REFUSAL_INPUT_BYTES: usize = 64 * 1024;
/// Most clients being turned away at once.
const REFUSALS_AT_ONCE: usize = 256;

/// Why this node turns clients away, with where to go instead (`members`: every member's
/// addresses).
pub fn refusal_text(status: &Status, members: &[MemberAddress]) -> String {
    let leader = match status
        .leader
        .and_then(|id| members.iter().find(|m| m.id == id))
    {
        Some(m) if m.id != status.id => format!("the leader is node {} (AMQP {})", m.id, m.amqp),
        _ => "no leader is known yet".to_string(),
    };
    let members: Vec<String> = members.iter().map(|m| m.amqp.to_string()).collect();
    truncate_shortstr(format!(
        "CONNECTION_FORCED - node {} does not lead the cluster; {leader}; members: {}",
        status.id,
        members.join(", ")
    ))
}

/// While this node follows: answers each AMQP client's handshake up to its
/// `connection.open` (no login is checked: nothing is served), then closes the connection with [`CONNECTION_FORCED`] and [`refusal_text`], so that the client
/// moves on to the next address it was given, and its user sees why.
fn turn_clients_away(
    listener: TcpListener,
    view: ClusterView,
    server_properties: FieldTable,
) -> tokio::task::JoinHandle<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(REFUSALS_AT_ONCE));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                continue;
            };
            let members = view.members();
            let text = refusal_text(&view.status.borrow(), &members);
            let props = server_properties.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream, text, props)).await;
            });
        }
    })
}

async fn refuse(
    mut stream: TcpStream,
    text: String,
    server_properties: FieldTable,
) -> std::io::Result<()> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    if header != PROTOCOL_HEADER {
        return stream.write_all(&PROTOCOL_HEADER).await;
    }
    let mut out = BytesMut::new();
    let start = ConnectionStart {
        version_major: 0,
        version_minor: 9,
        server_properties,
        mechanisms: Bytes::from_static(b"AMQPLAIN PLAIN"),
        locales: Bytes::from_static(b"en_US"),
    };
    encode_method(0, &Method::ConnectionStart(start), &mut out);
    stream.write_all(&out).await?;
    // The client's start-ok is answered with tune, and its connection.open with the close:
    // closed there, clients report the broker's reason rather than a failed login.
    let mut decoder = FrameDecoder::new(REFUSAL_INPUT_BYTES as u32);
    let mut input = BytesMut::new();
    loop {
        match decoder.decode(&mut input) {
            Ok(Some(Frame::Method {
                method: Method::ConnectionStartOk(_),
                ..
            })) => {
                out.clear();
                let tune = ConnectionTune {
                    channel_max: 1,
                    frame_max: REFUSAL_INPUT_BYTES as u32,
                    heartbeat: 0,
                };
                encode_method(0, &Method::ConnectionTune(tune), &mut out);
                stream.write_all(&out).await?;
            }
            Ok(Some(Frame::Method {
                method: Method::ConnectionOpen(_),
                ..
            })) => break,
            Ok(Some(_)) => {}
            Ok(None) => {
                if input.len() >= REFUSAL_INPUT_BYTES || stream.read_buf(&mut input).await? == 0 {
                    return Ok(());
                }
            }
            Err(_) => return Ok(()),
        }
    }
    out.clear();
    let close = ConnectionClose {
        reply_code: CONNECTION_FORCED,
        reply_text: text,
        class_id: 0,
        method_id: 0,
    };
    encode_method(0, &Method::ConnectionClose(close), &mut out);
    stream.write_all(&out).await?;
    // The client answers close-ok and closes; either ends this.
    let mut rest = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut rest)).await;
    Ok(())
}
