//! The task that owns the broker core.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::broker::admin::{AdminId, AdminRequest, AdminResult};
use crate::broker::{Broker, ConnInfo, Output};
use crate::proto::command::{Command, ConnId, Reply};
use crate::store::Store;
use crate::store::commit::{StoreDone, StoreJob};

use super::Clock;
use super::storage;

/// Where the core task sends an administrative answer.
pub type AdminReplyTx = oneshot::Sender<AdminResult>;

/// Most messages the core handles before flushing outputs.
const MAX_MESSAGES_PER_ROUND: usize = 256;

/// Administrative answers waiting past this many make the core forget the requesters
/// that gave up. The ones still waiting are bounded by the HTTP server's connections.
const ADMIN_PRUNE_AT: usize = 1024;

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
        permit: BatchPermit,
    },
    /// Close every connection; the server is stopping.
    Shutdown,
    /// The config file was read again: take its reloadable broker settings.
    Reload(Box<crate::broker::BrokerConfig>),
    /// An administrative request (`warren ctl`, the HTTP API); answered on `reply` once
    /// its durable changes are synced.
    Admin {
        /// The request.
        request: AdminRequest,
        /// Where the answer goes.
        reply: AdminReplyTx,
    },
}

/// What the core task reports to the rest of the node.
#[derive(Debug)]
pub struct CoreViews {
    /// Whether the AMQP side runs (false after `warren ctl stop_app`): the broker's own
    /// lifecycle state, published after every round.
    pub app_running: watch::Sender<bool>,
    /// The directory whose file system must keep free space.
    pub data_dir: std::path::PathBuf,
}

/// The core task's ends of its channels and its own books: the connections' reply
/// channels and the administrative requests waiting for their answers.
struct Driver {
    conns: HashMap<ConnId, mpsc::UnboundedSender<Vec<Reply>>>,
    closed: Vec<ConnId>,
    admin: HashMap<AdminId, AdminReplyTx>,
    next_admin: AdminId,
    persist_tx: storage::JobSender,
    /// The store worker is gone.
    store_gone: bool,
}

/// A connection's batches of commands handed to the core and not yet handled: at most
/// `limit`, with a wake-up for the connection when a full count falls. (A semaphore
/// would take a lock for every batch handled.)
#[derive(Debug)]
pub struct BatchSlots {
    used: AtomicUsize,
    limit: usize,
    freed: Notify,
}

impl BatchSlots {
    /// Room for `limit` batches.
    pub fn new(limit: usize) -> Self {
        BatchSlots {
            used: AtomicUsize::new(0),
            limit,
            freed: Notify::new(),
        }
    }

    /// Waits until a batch is handled after every slot was found taken.
    pub fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// A slot for one more batch, if one is free.
    pub fn try_take(self: &Arc<Self>) -> Option<BatchPermit> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used < self.limit).then_some(used + 1)
            })
            .ok()
            .map(|_| BatchPermit(Arc::clone(self)))
    }

    /// A slot for one more batch, once one is free.
    pub async fn take(self: &Arc<Self>) -> BatchPermit {
        loop {
            if let Some(permit) = self.try_take() {
                return permit;
            }
            // A slot given back after the attempt above leaves a wake-up here.
            self.freed.notified().await;
        }
    }
}

/// A batch's slot among its connection's, given back when the core drops it.
#[derive(Debug)]
pub struct BatchPermit(Arc<BatchSlots>);

impl Drop for BatchPermit {
    fn drop(&mut self) {
        let was = self.0.used.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(was > 0, "a batch slot given back twice");
        // Only a connection that found every slot taken waits; a wake-up sent while it
        // does not is kept by the `Notify` and costs it one extra turn at most.
        if was == self.0.limit {
            self.0.freed.notify_one();
        }
    }
}

/// How often memory and disk are checked.
const MONITOR_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the broker until every sender is gone, then lets the store finish its last sync.
pub async fn run(
    mut broker: Broker,
    store: Box<dyn Store + Send>,
    mut rx: mpsc::Receiver<CoreMsg>,
    clock: Clock,
    views: CoreViews,
) -> std::io::Result<()> {
    let mut monitor_tick = tokio::time::interval(MONITOR_INTERVAL);
    let mut app_running = *views.app_running.borrow();
    let (persist_tx, mut persisted_rx, worker) = storage::spawn(store);
    let mut d = Driver {
        conns: HashMap::new(),
        closed: Vec::new(),
        admin: HashMap::new(),
        next_admin: 1,
        persist_tx,
        store_gone: false,
    };
    // One timer, moved when the broker's next deadline moves: a timer made and dropped
    // on every round would enter and leave the runtime's timer wheel once per message.
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    let mut armed: Option<tokio::time::Instant> = None;
    while !d.store_gone {
        let deadline = broker.poll_timeout().map(|ms| clock.instant(ms));
        if deadline != armed {
            if let Some(at) = deadline {
                timer.as_mut().reset(at);
            }
            armed = deadline;
        }
        tokio::select! {
            // While the store lags, connections wait (TCP holds their clients back).
            msg = rx.recv(), if broker.wants_input() => {
                let Some(msg) = msg else { break };
                // One reading of the clock serves the round (milliseconds apart at most).
                let now = clock.now_ms();
                d.handle(&mut broker, msg, now);
                for _ in 0..MAX_MESSAGES_PER_ROUND {
                    if !broker.wants_input() {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(msg) => d.handle(&mut broker, msg, now),
                        Err(_) => break,
                    }
                }
            }
            _ = monitor_tick.tick() => {
                broker.handle_resources(super::resources::read(&views.data_dir), clock.now_ms());
            }
            () = &mut timer, if armed.is_some() => {
                armed = None;
                broker.handle_timeout(clock.now_ms());
            }
            done = persisted_rx.recv() => match done {
                Some(done) => store_done(&mut broker, done, &clock),
                // The worker is gone (it panicked). Nothing more can be confirmed.
                None => d.store_gone = true,
            },
        }
        d.flush(&mut broker);
        if broker.app_running() != app_running {
            app_running = broker.app_running();
            views.app_running.send_replace(app_running);
        }
    }
    drop(d);
    // Keep taking the store's reports until it ends: it writes and syncs every job left
    // in its channel first, and a full report channel would hold it (and the join) for
    // ever, while a closed one would end it before its last writes.
    let (result, ()) = tokio::join!(join_store_worker(worker), async {
        while persisted_rx.recv().await.is_some() {}
    });
    result
}

/// Hands a store report to the broker.
fn store_done(broker: &mut Broker, done: StoreDone, clock: &Clock) {
    match done {
        StoreDone::Synced(batch) => broker.handle_persisted(batch),
        StoreDone::Loaded {
            queue,
            epoch,
            entries,
        } => broker.handle_loaded(queue, epoch, entries, clock.now_ms()),
        StoreDone::Failed(fault) => broker.handle_store_failed(fault, clock.now_ms()),
        StoreDone::Recovered => broker.handle_store_recovered(clock.now_ms()),
    }
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

impl Driver {
    fn handle(&mut self, broker: &mut Broker, msg: CoreMsg, now: u64) {
        match msg {
            CoreMsg::Connect { id, info, replies } => {
                self.conns.insert(id, replies);
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
                        self.closed.push(id);
                    }
                    broker.handle_command(id, command, now);
                }
            }
            CoreMsg::Shutdown => broker.close_all_connections("shutdown", now),
            CoreMsg::Reload(config) => broker.reload_config(&config),
            CoreMsg::Admin { request, reply } => {
                let id = self.next_admin;
                self.next_admin += 1;
                if self.admin.len() >= ADMIN_PRUNE_AT {
                    // Requesters that gave up (an HTTP deadline) leave their slot behind.
                    self.admin.retain(|_, waiting| !waiting.is_closed());
                }
                self.admin.insert(id, reply);
                broker.handle_admin(id, request, now);
            }
        }
    }

    /// Hands the broker's outputs to the connections, the store and the administrative
    /// requesters.
    fn flush(&mut self, broker: &mut Broker) {
        while let Some(output) = broker.poll_output() {
            match output {
                Output::Replies { conn, replies } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        // A send fails only when the connection task is gone; its Closed
                        // command is on the way.
                        let _ = tx.send(replies);
                    }
                }
                Output::Admin { id, result } => {
                    // The requester may have given up; nothing to do then.
                    if let Some(reply) = self.admin.remove(&id) {
                        let _ = reply.send(result);
                    }
                }
                store @ (Output::Persist { .. } | Output::Load { .. }) => {
                    if let Ok(job) = store.into_store_job() {
                        self.to_store(job);
                    }
                }
            }
        }
        for id in self.closed.drain(..) {
            self.conns.remove(&id);
        }
    }

    fn to_store(&mut self, job: StoreJob) {
        if self.persist_tx.send(job).is_err() {
            self.store_gone = true;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    #[test]
    fn batch_slots_are_bounded_and_a_full_count_falling_wakes_the_connection() {
        let slots = Arc::new(BatchSlots::new(2));
        let held: Vec<_> = (0..2).map(|_| slots.try_take()).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(slots.try_take().is_none(), "more than the limit");
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut waiting = Box::pin(slots.take());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(held);
        let Poll::Ready(taken) = waiting.as_mut().poll(&mut cx) else {
            panic!("a connection waiting for a slot was not woken when two were freed");
        };
        // The slot `take` got is the only one held: one more fits, then none.
        let another = slots.try_take();
        assert!(another.is_some());
        assert!(slots.try_take().is_none());
        drop((taken, another));
        assert_eq!(slots.used.load(Ordering::Acquire), 0);
    }
}
