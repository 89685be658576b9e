//! The parts the broker's state is held in, each named after what it holds, with the
//! invariants it can check on its own.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use crate::proto::command::{Command, ConnId};
use crate::proto::method::Method;

use super::auth::Users;
use super::channel::SyncWaits;
use super::exchange::{Destination, QueueId};
use super::queue::{MemoryMeter, Queue};
use super::stats::MessageCounters;
use super::vhost::VHost;
use super::{
    Conn, Deferred, HashMap, Journal, Outbox, Resource, ResourceReading, StoreFault, deadletter,
    limits,
};

/// Vhosts with their exchanges and queue names, the queues, their timers, and the memory
/// their ready messages hold.
#[derive(Debug)]
pub(super) struct Topology {
    pub(super) vhosts: HashMap<String, VHost>,
    pub(super) queues: HashMap<QueueId, Queue>,
    pub(super) next_queue_id: QueueId,
    /// The next shared-message id.
    pub(super) next_shared_id: u64,
    /// Queue timers (message expiry, idle deletion), earliest first.
    pub(super) timers: BinaryHeap<Reverse<(u64, QueueId)>>,
    /// When to check whether a queue that holds publishers back is still delivering,
    /// earliest first (see `flow`).
    pub(super) flow_timers: BinaryHeap<Reverse<(u64, QueueId)>>,
    /// Memory held by ready messages in all queues.
    pub(super) meter: MemoryMeter,
    /// Messages waiting in delayed-message exchanges.
    pub(super) delayed: super::delayed::DelayedMessages,
    /// Queues that did not read their paged backlog back because the memory alarm is on
    /// and their unacked deliveries hold more than their memory budget
    /// ([`Broker::request_load`](super::Broker)); they are looked at again after an event
    /// that may end that (`loads_recheck`), and served once it no longer holds.
    pub(super) loads_stalled: BTreeSet<QueueId>,
    /// Something that may end a stall happened (the memory alarm cleared, a delivery was
    /// settled): look at the stalled queues again.
    pub(super) loads_recheck: bool,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            vhosts: HashMap::default(),
            queues: HashMap::default(),
            next_queue_id: 1,
            next_shared_id: 1,
            timers: BinaryHeap::new(),
            flow_timers: BinaryHeap::new(),
            meter: MemoryMeter::default(),
            delayed: Default::default(),
            loads_stalled: BTreeSet::new(),
            loads_recheck: false,
        }
    }
}

impl Topology {
    /// Every queue is indexed by name in its vhost, every index names a live queue, and
    /// ids are below the next one.
    pub(super) fn check_invariants(&self) {
        for (id, q) in &self.queues {
            assert_eq!(*id, q.id, "queue keyed by its id");
            assert!(
                q.id < self.next_queue_id,
                "queue id {} not yet issued",
                q.id
            );
            q.check_invariants();
            let vhost = self
                .vhosts
                .get(&q.decl.vhost)
                .expect("queue in a known vhost");
            // What a queue runs under is what its vhost's policies say now.
            assert_eq!(
                q.decl.policy,
                vhost
                    .policies
                    .applied(&q.decl.name, super::policy::Target::Queue)
                    .names(),
                "queue {} runs under stale policies",
                q.decl.name
            );
            assert_eq!(
                vhost.queues.get(&q.decl.name),
                Some(&q.id),
                "queue {} indexed",
                q.decl.name
            );
        }
        assert!(
            self.timers.len() <= super::timers::timers_bound(self.queues.len()),
            "{} queue timers for {} queues: stale ones pile up",
            self.timers.len(),
            self.queues.len()
        );
        let timers: std::collections::HashSet<_> =
            self.timers.iter().map(|std::cmp::Reverse(t)| *t).collect();
        for q in self.queues.values() {
            if let Some(at) = q.expiry.pending() {
                assert!(
                    timers.contains(&(at, q.id)),
                    "queue {} has a pending timer the heap does not hold",
                    q.decl.name
                );
            }
        }
        self.delayed.check_invariants();
        for v in self.vhosts.values() {
            v.policies.check_invariants();
            // What an exchange runs under is what its vhost's policies say now, however
            // it was declared (AMQP, HTTP, definitions, recovery).
            for (name, x) in &v.exchanges {
                let applied = v.policies.applied(name, super::policy::Target::Exchange);
                assert_eq!(
                    x.policy, applied.policy,
                    "exchange {name} runs under a stale policy"
                );
                assert_eq!(
                    x.policy_matches, applied.matches,
                    "exchange {name} keeps stale policy matches"
                );
            }
            for id in v.queues.values() {
                assert!(
                    self.queues.contains_key(id),
                    "vhost {} lists a deleted queue",
                    v.name
                );
            }
            self.check_bindings(v);
        }
    }

    /// Every binding is indexed at its destination and every such index names a binding.
    fn check_bindings(&self, v: &VHost) {
        for x in v.exchanges.values() {
            x.check_invariants();
            for b in x.bindings() {
                let back = match &b.destination {
                    Destination::Queue(id) => {
                        self.queues.get(id).map(|q| q.bound_from.contains(&x.name))
                    }
                    Destination::Exchange(d) => {
                        v.exchanges.get(d).map(|d| d.bound_from.contains(&x.name))
                    }
                };
                assert_eq!(
                    back,
                    Some(true),
                    "binding of {} indexed at its destination",
                    x.name
                );
            }
            for source in &x.bound_from {
                assert!(
                    v.exchanges
                        .get(source)
                        .is_some_and(|s| s.binds_to(&Destination::Exchange(x.name.clone()))),
                    "exchange {} bound from {source}",
                    x.name
                );
            }
        }
        for q in self.queues.values().filter(|q| q.decl.vhost == v.name) {
            for source in &q.bound_from {
                assert!(
                    v.exchanges
                        .get(source)
                        .is_some_and(|x| x.binds_to(&Destination::Queue(q.id))),
                    "queue {} bound from {source}",
                    q.decl.name
                );
            }
        }
    }
}

/// Connections (with their channels and consumers), and the commands held behind a
/// connection's basic.get that waits for the store.
#[derive(Debug)]
pub(super) struct Sessions {
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) next_channel_uid: u64,
    /// Connections whose basic.get waits for the store, with the commands that arrived
    /// behind it.
    pub(super) held: HashMap<ConnId, VecDeque<Command>>,
    /// Held connections whose get was answered.
    pub(super) to_resume: Vec<ConnId>,
    /// Channels whose clients wait for a sync ([`Broker::sync_awaited`]).
    pub(super) sync_waits: SyncWaits,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            conns: HashMap::default(),
            next_channel_uid: 1,
            held: HashMap::default(),
            to_resume: Vec::new(),
            sync_waits: SyncWaits::default(),
        }
    }
}

impl Sessions {
    /// Work is held only for live connections, and channel uids are below the next one.
    pub(super) fn check_invariants(&self) {
        for conn in self.held.keys() {
            assert!(
                self.conns.contains_key(conn),
                "held work of a closed connection"
            );
        }
        let mut waits = SyncWaits {
            round: self.sync_waits.round,
            ..SyncWaits::default()
        };
        for c in self.conns.values() {
            for ch in c.channels.values() {
                assert!(ch.uid < self.next_channel_uid, "channel uid not yet issued");
                waits.add(ch.mode.sync_wait(waits.round));
            }
        }
        assert_eq!(
            waits, self.sync_waits,
            "channels waiting for a sync, counted against the count kept"
        );
    }
}

/// Users with their permissions, and vhost and user limits with the usage they are
/// checked against.
#[derive(Debug, Default)]
pub(super) struct Accounts {
    pub(super) users: Users,
    pub(super) tenants: limits::Tenants,
}

/// What the current round produces and what waits to go out: replies, the store batch in
/// the making, answers waiting for a sync, reads to ask for, and the round's scratch
/// (queues to dispatch, confirms to flush, notices, dead letters being routed).
#[derive(Debug)]
pub(super) struct Round {
    pub(super) outbox: Outbox,
    pub(super) journal: Journal,
    /// Confirms, replies and admin answers waiting for their batch to be synced, in batch
    /// order.
    pub(super) deferred: VecDeque<(u64, Deferred)>,
    /// Queues to run a dispatch pass on at the end of the current command.
    pub(super) to_dispatch: Vec<QueueId>,
    /// Queues holding messages back until their store batch is synced
    /// ([`super::BrokerConfig::deliver_after_sync`]).
    pub(super) holding: std::collections::BTreeSet<QueueId>,
    /// Channels whose confirms may be ready to send.
    pub(super) confirm_dirty: Vec<(ConnId, u16)>,
    /// Server-sent notifications (consumer cancels) to send after the current input's
    /// reply, as RabbitMQ orders them.
    pub(super) notices: Vec<(ConnId, u16, Method)>,
    /// Reads of paged messages to ask the driver for.
    pub(super) loads: Vec<(QueueId, u64, usize, u64, u64)>,
    /// Queues that crossed their flow-control mark during the current publish.
    pub(super) flow_hot: Vec<QueueId>,
    /// Dead letters being routed.
    pub(super) dead_letters: deadletter::DeadLetters,
}

impl Default for Round {
    fn default() -> Self {
        Round {
            outbox: Outbox::default(),
            journal: Journal {
                next_batch: 1,
                ..Journal::default()
            },
            deferred: VecDeque::new(),
            to_dispatch: Vec::new(),
            holding: std::collections::BTreeSet::new(),
            confirm_dirty: Vec::new(),
            notices: Vec::new(),
            loads: Vec::new(),
            flow_hot: Vec::new(),
            dead_letters: Default::default(),
        }
    }
}

impl Round {
    /// Deferred outputs wait for batches in order, none for a batch not yet started; the
    /// unsynced batches' sizes add up.
    pub(super) fn check_invariants(&self) {
        let mut last = 0;
        for (batch, _) in &self.deferred {
            assert!(*batch >= last, "deferred outputs in batch order");
            assert!(
                *batch <= self.journal.next_batch,
                "deferred for a future batch"
            );
            last = *batch;
        }
        let sum: u64 = self.journal.unsynced.iter().map(|(_, bytes)| bytes).sum();
        assert_eq!(sum, self.journal.unsynced_bytes, "unsynced bytes add up");
        for (batch, _) in &self.journal.unsynced {
            assert!(
                *batch < self.journal.next_batch,
                "unsynced batch was emitted"
            );
        }
    }
}

/// The node's lifecycle and health.
#[derive(Debug)]
pub(super) struct NodeState {
    /// Whether clients may log in (`warren ctl stop_app` stops the AMQP side).
    pub(super) app_running: bool,
    /// Resource alarms in force.
    pub(super) alarms: BTreeSet<Resource>,
    /// Why the store fails, while it does.
    pub(super) store_fault: Option<StoreFault>,
    /// The driver's last reading of memory and disk.
    pub(super) last_reading: ResourceReading,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            app_running: true,
            alarms: BTreeSet::new(),
            store_fault: None,
            last_reading: ResourceReading::default(),
        }
    }
}

impl NodeState {
    /// The store alarm is in force exactly while the store fails.
    pub(super) fn check_invariants(&self) {
        assert_eq!(
            self.alarms.contains(&Resource::Store),
            self.store_fault.is_some(),
            "the store alarm follows the store fault"
        );
    }
}

/// Counters for the whole broker (per-queue ones live in each queue).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Inputs handled so far.
    pub(super) rounds: u64,
    /// Routing and dead-lettering steps taken since start ([`super::Broker::work_done`]).
    pub(super) work: u64,
    /// Message counters.
    pub(super) totals: MessageCounters,
    /// Queues whose reads of their paged backlog were held back under the memory alarm
    /// ([`super::Broker::loads_stalled`]).
    pub(super) loads_stalled: u64,
    /// `basic.get`s answered get-empty while the queue had ready messages (in memory or
    /// in the store) and its head was not held back for a sync: none, as
    /// [`super::Broker::check_invariants`] asserts.
    pub(super) gets_wrongly_empty: u64,
}
