//! A node that is a member of a replicated cluster: the Raft thread and its transport
//! run for the node's whole life, and the broker (AMQP and HTTP) runs only while this node
//! leads, started afresh from the store each time it becomes leader.
//!
//! While the node follows, its AMQP and HTTP ports are closed, so that a client given
//! every member's address moves on to the next. When it stops leading (deposed, cut off
//! from the majority, or a batch whose fate is in doubt), its broker stops: connections
//! close, and nothing not committed was confirmed.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::cluster::disk::FjallLog;
use crate::cluster::member::{self, ELECTION_TICKS, HEARTBEAT_TICKS, ReplicatedStore};
use crate::cluster::settings::ClusterSettings;
use crate::cluster::{ReplicaConfig, transport};
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
    let (log, state) =
        FjallLog::open(&config.data_dir.join(LOG_DIR)).map_err(|e| err(e.to_string()))?;
    let me = cluster.me().clone();
    let ids = cluster.ids();
    let listener = TcpListener::bind(SocketAddr::new(config.bind, me.raft.port()))
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for Raft on port {}: {e}", me.raft.port()),
            )
        })?;
    let raft_local = listener.local_addr()?;
    let (inbox_tx, inbox_rx) = std::sync::mpsc::sync_channel(member::INBOX);
    let deliver_to = inbox_tx.clone();
    let listening = transport::listen(
        listener,
        cluster.cookie.clone(),
        me.id,
        ids.clone(),
        move |m| member::deliver(&deliver_to, m),
    );
    let peers: HashMap<_, _> = cluster
        .members
        .iter()
        .filter(|m| m.id != me.id)
        .map(|m| {
            let tx = transport::dial(m.raft, Some(config.bind), cluster.cookie.clone(), me.id);
            (m.id, tx)
        })
        .collect();
    let cfg = ReplicaConfig {
        id: me.id,
        members: ids,
        // Each node its own timeout, so that elections rarely split.
        election_ticks: ELECTION_TICKS + (seed % ELECTION_TICKS as u64) as usize,
        heartbeat_ticks: HEARTBEAT_TICKS,
    };
    let member =
        member::start(&cfg, log, &state, store, (inbox_tx, inbox_rx), peers).map_err(err)?;
    tracing::info!(id = me.id, raft = %raft_local, members = cluster.members.len(), "cluster member started");
    println!("warren: cluster member {} (Raft on {raft_local})", me.id);
    let mut status = member.status.clone();
    tokio::pin!(shutdown);
    let result = loop {
        // Wait to lead.
        let ready = tokio::select! {
            () = &mut shutdown => break Ok(()),
            s = status.wait_for(|s| (s.ready && s.in_flight == 0) || s.failed.is_some()) => s.map(|s| s.clone()),
        };
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
                _ = watching.wait_for(|s| !s.ready || s.term != term) => {}
                () = lost.notified() => {}
            }
        };
        let served = super::run(config.clone(), Box::new(store), seed, until, None).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the broker stopped on an error");
            if stopping.get() {
                break Err(e);
            }
        }
        if stopping.get() {
            break Ok(());
        }
        tracing::warn!(term, "this node no longer leads: its broker stopped");
    };
    listening.abort();
    let _ = member.inbox.send(member::MemberIn::Stop);
    // The thread syncs the store as it ends.
    let thread = member.thread;
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result
}
