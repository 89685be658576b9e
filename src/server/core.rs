//! The task that owns the broker core.

use std::collections::HashMap;

use tokio::sync::mpsc;

use crate::broker::{Broker, ConnInfo, Output};
use crate::proto::command::{Command, ConnId, Reply};
use crate::store::Store;

use super::Clock;
use super::admin::{AdminReplyTx, AdminWaiters};
use super::storage::{self, StoreDone, StoreJob};

/// Most messages the core handles before flushing outputs.
const MAX_MESSAGES_PER_ROUND: usize = 256;

/// A message to the core task.
#[derive(Debug)]
pub enum CoreMsg {
    /// A connection was accepted; its replies go to `replies`.
    Connect {
        /// Connection id.
        id: ConnId,
        /// Peer facts.
        info: ConnInfo,
        /// Where the connection task receives replies.
        replies: mpsc::UnboundedSender<Vec<Reply>>,
    },
    /// Commands from a connection, in order.
    Commands {
        /// Connection id.
        id: ConnId,
        /// The commands.
        commands: Vec<Command>,
        /// Released once the core handled the batch, letting the connection send another.
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// Close every connection; the server is stopping.
    Shutdown,
    /// An administrative request (`warren ctl`, the HTTP API); answered on `reply` once
    /// its durable changes are synced.
    Admin {
        /// The request.
        request: crate::broker::admin::AdminRequest,
        /// Where the answer goes.
        reply: AdminReplyTx,
    },
}

/// What the core watches for resource alarms.
#[derive(Debug, Clone)]
pub struct Monitor {
    /// The limits.
    pub limits: super::resources::AlarmLimits,
    /// The directory whose file system must keep free space.
    pub data_dir: std::path::PathBuf,
}

/// How often memory and disk are checked.
const MONITOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the broker until every sender is gone, then lets the store finish its last sync.
pub async fn run(
    mut broker: Broker,
    store: Box<dyn Store + Send>,
    mut rx: mpsc::Receiver<CoreMsg>,
    clock: Clock,
    monitor: Monitor,
) -> std::io::Result<()> {
    let mut monitor_tick = tokio::time::interval(MONITOR_INTERVAL);
    let mut alarms_on = (false, false);
    let (persist_tx, mut persisted_rx, worker) = storage::spawn(store);
    let mut conns: HashMap<ConnId, mpsc::UnboundedSender<Vec<Reply>>> = HashMap::new();
    let mut closed: Vec<ConnId> = Vec::new();
    let mut admin = AdminWaiters::default();
    let mut open = true;
    while open {
        tokio::select! {
            // While the store lags, connections wait (TCP holds their clients back).
            msg = rx.recv(), if broker.wants_input() => {
                let Some(msg) = msg else { break };
                handle(&mut broker, &mut conns, &mut closed, &mut admin, msg, &clock);
                for _ in 0..MAX_MESSAGES_PER_ROUND {
                    if !broker.wants_input() {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(msg) => handle(&mut broker, &mut conns, &mut closed, &mut admin, msg, &clock),
                        Err(_) => break,
                    }
                }
            }
            _ = monitor_tick.tick() => {
                let now = super::resources::check(&monitor.limits, &monitor.data_dir);
                if now.0 != alarms_on.0 {
                    tracing::warn!(active = now.0, "memory alarm");
                    broker.handle_alarm(crate::broker::Resource::Memory, now.0, clock.now_ms());
                }
                if now.1 != alarms_on.1 {
                    tracing::warn!(active = now.1, "disk alarm");
                    broker.handle_alarm(crate::broker::Resource::Disk, now.1, clock.now_ms());
                }
                alarms_on = now;
            }
            _ = sleep_until(broker.poll_timeout().map(|ms| clock.instant(ms))) => {
                broker.handle_timeout(clock.now_ms());
            }
            done = persisted_rx.recv() => match done {
                Some(StoreDone::Synced(batch)) => {
                    broker.handle_persisted(batch);
                    admin.persisted(batch);
                }
                Some(StoreDone::Loaded { queue, epoch, entries }) => {
                    broker.handle_loaded(queue, epoch, entries, clock.now_ms());
                }
                Some(StoreDone::Failed(fault)) => {
                    broker.handle_store_failed(fault, clock.now_ms());
                }
                Some(StoreDone::Recovered) => {
                    broker.handle_store_recovered(clock.now_ms());
                }
                None => {
                    // The worker is gone (it panicked). Nothing more can be confirmed.
                    open = false;
                }
            },
        }
        while let Some(output) = broker.poll_output() {
            match output {
                Output::Replies { conn, replies } => {
                    if let Some(tx) = conns.get(&conn) {
                        // A send fails only when the connection task is gone; its Closed
                        // command is on the way.
                        let _ = tx.send(replies);
                    }
                }
                Output::Persist { batch, ops } => {
                    if persist_tx.send(StoreJob::Write(batch, ops)).is_err() {
                        open = false;
                    }
                }
                Output::Load {
                    queue,
                    from_seq,
                    max,
                    max_bytes,
                    epoch,
                } => {
                    let job = StoreJob::Load {
                        queue,
                        from_seq,
                        max,
                        max_bytes,
                        epoch,
                    };
                    if persist_tx.send(job).is_err() {
                        open = false;
                    }
                }
            }
        }
        for id in closed.drain(..) {
            conns.remove(&id);
        }
    }
    drop(persist_tx);
    join_store_worker(worker).await
}

/// Waits for the store worker to finish its last sync.
#[cfg(not(madsim))]
async fn join_store_worker(
    worker: std::thread::JoinHandle<Result<(), crate::store::StoreError>>,
) -> std::io::Result<()> {
    match tokio::task::spawn_blocking(move || worker.join()).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(std::io::Error::other(format!("store failed: {e}"))),
        _ => Err(std::io::Error::other("store worker panicked")),
    }
}

/// Waits for the store worker task to finish its last sync (simulation).
#[cfg(madsim)]
async fn join_store_worker(
    worker: tokio::task::JoinHandle<Result<(), crate::store::StoreError>>,
) -> std::io::Result<()> {
    match worker.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(std::io::Error::other(format!("store failed: {e}"))),
        Err(_) => Err(std::io::Error::other("store worker panicked")),
    }
}

fn handle(
    broker: &mut Broker,
    conns: &mut HashMap<ConnId, mpsc::UnboundedSender<Vec<Reply>>>,
    closed: &mut Vec<ConnId>,
    admin: &mut AdminWaiters,
    msg: CoreMsg,
    clock: &Clock,
) {
    let now = clock.now_ms();
    match msg {
        CoreMsg::Connect { id, info, replies } => {
            conns.insert(id, replies);
            broker.handle_connect(id, info, now);
        }
        CoreMsg::Commands {
            id,
            commands,
            permit,
        } => {
            let _held_until_handled = permit;
            for command in commands {
                if command == Command::Closed {
                    closed.push(id);
                }
                broker.handle_command(id, command, now);
            }
        }
        CoreMsg::Shutdown => broker.close_all_connections("shutdown", now),
        CoreMsg::Admin { request, reply } => {
            admin.answer(broker.handle_admin(request, now), reply);
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
