//! The seeded world and its scheduler: simulated clients, the virtual network, the broker
//! core behind the same sans-IO protocol layer production runs, and the virtual disk.
//!
//! The driver contract is the tokio server's (`src/server/core.rs`, `conn.rs`): commands
//! from each connection go to the broker in order, outputs are drained after each batch
//! of inputs, replies go back through the connection's protocol state machine, store
//! jobs go through the same group-commit state machine as the tokio store thread
//! ([`GroupCommit`]) to the virtual disk, whose syncs take virtual time (a crash can fall
//! inside one), taken as they come or, in half the seeds, as the store thread takes
//! them, sleeping through the gap between syncs ([`StoreDriver`]), and its reports reach
//! the broker (`handle_persisted`, `handle_loaded`,
//! `handle_store_failed`, `handle_store_recovered`). `Command::Drained` reports reply
//! bytes the client read. When the disk fails writes (its seed's [`DiskFaults`]), the
//! state machine holds the jobs and retries every [`STORE_RETRY_MS`].
//!
//! Each step picks one due event at random (a chunk of bytes on some pipe, a client
//! action, a sync completing, a drain of the broker's outputs, a timer, a fault), so the
//! traffic of different connections interleaves in a seed-determined order.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use warren::broker::{Broker, BrokerConfig, ConnInfo, Output, Resource};
use warren::proto::command::{Command, ConnId, DrainReport};
use warren::proto::connection::{Connection, ConnectionConfig};
use warren::store::commit::{GroupCommit, StoreDone};

use crate::Violation;
use crate::actor::Actor;
use crate::admin::{AdminStats, Operator};
use crate::alarms::AlarmFaults;
use crate::checker::{Model, Stats};
use crate::client::{Client, Observed, RunPhase};
use crate::disk::{DiskFaults, VirtualDisk};
use crate::faults::{Faults, derive_seed};
use crate::hostile::{HostileClient, HostilePlan, HostileStats, Reserved};
use crate::net::Pipe;
use crate::store_driver::StoreDriver;
use crate::workload::Spec;

/// Length of a run.
#[derive(Debug, Clone, Copy)]
pub struct RunConfig {
    /// Virtual time with faults and the full workload.
    pub safety_ms: u64,
    /// Virtual time allowed for draining once faults stop.
    pub liveness_ms: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            safety_ms: 8_000,
            liveness_ms: 120_000,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The seed.
    pub seed: u64,
    /// Hash of the event trace (for the determinism check).
    pub trace_hash: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// Virtual time at the end (or at the violation).
    pub now_ms: u64,
    /// Events processed.
    pub steps: u64,
    /// The seed's fault settings.
    pub faults: Faults,
    /// Checker counters.
    pub stats: Stats,
    /// Connection drops injected.
    pub drops: u64,
    /// Messages published by the clients.
    pub published: u64,
    /// Crashes that kept a prefix of the unsynced batches (the next one torn).
    pub torn_crashes: u64,
    /// Crashes that lost at least one unsynced batch.
    pub lossy_crashes: u64,
    /// Enqueues cancelled by their dequeue in the same store write.
    pub cancelled_pairs: u64,
    /// Store jobs a lazy driver slept through when they were sent.
    pub slept_through: u64,
    /// Urgent writes that woke a lazy driver from the gap between syncs.
    pub gap_ended: u64,
    /// Reads of paged messages the broker asked for.
    pub loads: u64,
    /// The hostile clients' plans and what they did.
    pub hostile: Vec<(HostilePlan, HostileStats)>,
    /// The most routing work the broker did for one step ([`Broker::work_done`]).
    pub max_step_work: u64,
    /// What the operator did.
    pub admin: AdminStats,
    /// What the delayed-message probe did.
    pub delays: crate::delays::DelayStats,
    /// Resource alarm windows (memory or disk short).
    pub alarm_windows: u64,
    /// Times a queue stopped reading its paged backlog under the memory alarm, its unacked
    /// deliveries over its budget ([`Broker::loads_stalled`]).
    pub loads_stalled: u64,
}

/// One connection: the server's protocol state machine and the two pipes.
#[derive(Debug)]
struct Link {
    client: usize,
    conn: ConnId,
    /// `None` once the server side dropped the socket.
    server: Option<Connection>,
    /// False once the client closed its side.
    client_open: bool,
    to_server: Pipe,
    to_client: Pipe,
    /// Reply bytes (broker's count) handed to `server` and not yet written.
    pending_credit: usize,
    /// Reply bytes written and not yet reported, as the server's connection task keeps them.
    drain: DrainReport,
}

/// The simulated world of one seed.
pub struct World {
    seed: u64,
    cfg: RunConfig,
    now_ms: u64,
    phase: RunPhase,
    sched: SmallRng,
    fault_rng: SmallRng,
    faults: Faults,
    /// Shared with each action (clients read it while the world is borrowed).
    spec: Rc<Spec>,
    clients: Vec<Actor>,
    next_tick_ms: Vec<u64>,
    reconnect_at_ms: Vec<Option<u64>>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    broker: Option<Broker>,
    broker_config: BrokerConfig,
    conn_config: ConnectionConfig,
    incarnation: u64,
    dirty: bool,
    restart_at_ms: Option<u64>,
    next_crash_ms: Option<u64>,
    /// The next crash waits for a sync in flight (the window where writes are unsynced).
    crash_in_sync: bool,
    disk: VirtualDisk,
    /// The current broker's store jobs, between it and the disk.
    store: StoreDriver,
    /// Jobs the lazy store drivers of earlier incarnations slept through.
    slept_through: u64,
    /// Urgent writes that woke the lazy store drivers of earlier incarnations.
    gap_ended: u64,
    /// When the sync in flight completes.
    sync_at: Option<u64>,
    /// When the disk fails its writes.
    disk_faults: DiskFaults,
    /// The last batch the store synced (this broker's numbering).
    synced_batch: u64,
    /// Administrative requests, checked.
    operator: Operator,
    /// A client of the delayed-message exchange.
    delays: crate::delays::DelayProbe,
    /// When memory or disk run short.
    alarms: AlarmFaults,
    model: Model,
    trace: u64,
    steps: u64,
    drops: u64,
    torn_crashes: u64,
    /// Enqueue/dequeue pairs cancelled by the group commits of earlier incarnations.
    cancelled_pairs: u64,
    loads: u64,
    /// Times a queue's reads were held back under the memory alarm.
    loads_stalled: u64,
    lossy_crashes: u64,
    max_step_work: u64,
}

/// Most events a run may take (a guard against a livelock in the simulator).
const MAX_STEPS: u64 = 20_000_000;

/// How often writes held behind a failed one are tried again (virtual time).
pub const STORE_RETRY_MS: u64 = 100;

/// Most routing work ([`Broker::work_done`]: exchanges and topic-trie nodes visited,
/// bindings and header entries compared, queues enqueued to, dead-letter hops) the broker
/// may do for one step of the world: one chunk of bytes from a client (a few commands), a
/// timer, a completed sync. Legitimate steps of the simulated topologies, hostile ones
/// included, stay below a few tens of thousands (the batch reports the largest); a
/// matcher or a dead-letter loop whose cost explodes with its input passes this within a
/// step, and fails the seed even when the step finishes.
pub const WORK_BUDGET_PER_STEP: u64 = 1_000_000;

impl World {
    /// The world of `seed`.
    pub fn new(seed: u64, cfg: RunConfig) -> World {
        let mut workload_rng = SmallRng::seed_from_u64(derive_seed(seed, 1));
        let mut fault_rng = SmallRng::seed_from_u64(derive_seed(seed, 2));
        let mut spec = Spec::generate(&mut workload_rng);
        let mut faults = Faults::generate(&mut fault_rng);
        faults.lazy_store_wakes = crate::faults::lazy_store_wakes(seed);
        let store = new_store(&faults);
        if faults.tiny_memory || faults.small_output_limit {
            // The model answers a basic.get when the broker receives it. A get that must
            // wait for paged messages, or for the connection's unwritten output to drain,
            // is answered later (the broker holds its connection meanwhile), an order the
            // model does not follow; with tiny budgets or a small output limit that is
            // common, so these seeds check paging and output pauses through consumers,
            // and the broker's unit tests check parked gets.
            for c in &mut spec.clients {
                c.gets = false;
            }
        }
        let mut clients: Vec<Actor> = spec
            .clients
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let rng = SmallRng::seed_from_u64(derive_seed(seed, 100 + i as u64));
                Actor::Modelled(Client::new(i, plan.clone(), rng))
            })
            .collect();
        // Hostile clients come from their own stream, so that a seed's modelled workload
        // does not depend on them.
        let mut hostile_rng = SmallRng::seed_from_u64(derive_seed(seed, 4));
        let reserved = Reserved {
            queues: spec.queues.iter().map(|q| q.name.clone()).collect(),
            exchanges: spec.exchanges.iter().map(|(x, _)| x.clone()).collect(),
        };
        for _ in 0..[0, 1, 1, 2][hostile_rng.gen_range(0..4)] {
            let id = clients.len();
            let plan = HostilePlan::generate(&mut hostile_rng);
            let rng = SmallRng::seed_from_u64(derive_seed(seed, 100 + id as u64));
            clients.push(Actor::Hostile(HostileClient::new(
                id,
                plan,
                rng,
                reserved.clone(),
                !faults.small_output_limit,
            )));
        }
        let n = clients.len();
        let conn_config = ConnectionConfig {
            heartbeat_s: faults.heartbeat_s,
            ..ConnectionConfig::default()
        };
        let disk = VirtualDisk::new();
        let mut model = Model::new(&disk.recovered());
        model.isolate(reserved);
        model.set_deliver_after_sync(faults.deliver_after_sync);
        let broker_config = faults.broker_config();
        World {
            seed,
            cfg,
            now_ms: 0,
            phase: RunPhase::Safety,
            sched: SmallRng::seed_from_u64(derive_seed(seed, 3)),
            fault_rng,
            faults,
            spec: Rc::new(spec),
            clients,
            next_tick_ms: vec![0; n],
            reconnect_at_ms: (0..n).map(|i| Some(i as u64)).collect(),
            links: BTreeMap::new(),
            next_link: 1,
            broker: None,
            broker_config,
            conn_config,
            incarnation: 0,
            dirty: false,
            restart_at_ms: Some(0),
            next_crash_ms: None,
            crash_in_sync: false,
            disk,
            store,
            slept_through: 0,
            gap_ended: 0,
            sync_at: None,
            disk_faults: DiskFaults::generate(derive_seed(seed, 4)),
            synced_batch: 0,
            operator: Operator::new(SmallRng::seed_from_u64(derive_seed(seed, 5))),
            delays: crate::delays::DelayProbe::new(SmallRng::seed_from_u64(derive_seed(seed, 6))),
            alarms: AlarmFaults::generate(derive_seed(seed, 6)),
            model,
            trace: 0xcbf2_9ce4_8422_2325,
            steps: 0,
            drops: 0,
            torn_crashes: 0,
            cancelled_pairs: 0,
            loads: 0,
            loads_stalled: 0,
            lossy_crashes: 0,
            max_step_work: 0,
        }
    }

    /// Runs the seed to the end or to the first violation.
    pub fn run(mut self) -> RunResult {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.run_inner()));
        let violation = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(v)) => Some(v),
            Err(panic) => Some(Violation(format!("panic: {}", panic_text(&*panic)))),
        };
        if violation.is_some() && std::env::var_os("WARREN_SIM_DEBUG").is_some() {
            for c in &self.clients {
                eprintln!("{c:#?}");
            }
            for (id, l) in &self.links {
                eprintln!(
                    "link {id}: client {} conn {} server={} client_open={} to_server={}B to_client={}B",
                    l.client,
                    l.conn,
                    l.server.is_some(),
                    l.client_open,
                    l.to_server.len(),
                    l.to_client.len()
                );
            }
        }
        RunResult {
            seed: self.seed,
            trace_hash: self.trace,
            violation,
            now_ms: self.now_ms,
            steps: self.steps,
            faults: self.faults.clone(),
            stats: self.model.stats.clone(),
            drops: self.drops,
            published: self
                .clients
                .iter()
                .map(|c| match c {
                    Actor::Modelled(c) => c.published,
                    Actor::Hostile(_) => 0,
                })
                .sum(),
            torn_crashes: self.torn_crashes,
            loads: self.loads,
            lossy_crashes: self.lossy_crashes,
            cancelled_pairs: self.cancelled_pairs + self.store.commit.cancelled_pairs(),
            slept_through: self.slept_through + self.store.slept_through(),
            gap_ended: self.gap_ended + self.store.gap_ended(),
            hostile: self
                .clients
                .iter()
                .filter_map(|c| match c {
                    Actor::Hostile(h) => Some((h.plan().clone(), h.stats)),
                    Actor::Modelled(_) => None,
                })
                .collect(),
            max_step_work: self.max_step_work,
            admin: self.operator.stats,
            delays: self.delays.stats,
            alarm_windows: self.alarms.windows,
            loads_stalled: self.loads_stalled,
        }
    }

    fn run_inner(&mut self) -> Result<(), Violation> {
        self.schedule_crash();
        let end_ms = self.cfg.safety_ms + self.cfg.liveness_ms;
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(Violation("the simulator took too many steps".into()));
            }
            if self.phase == RunPhase::Safety && self.now_ms >= self.cfg.safety_ms {
                self.heal();
            }
            if self.phase == RunPhase::Liveness && self.quiescent() && !self.delays.waiting() {
                if let Some(b) = &self.broker {
                    if self.model.drained(b).is_ok() {
                        return Ok(());
                    }
                }
            }
            if self.now_ms >= end_ms {
                let Some(b) = &self.broker else {
                    return Err(Violation("liveness: the broker is down at the end".into()));
                };
                self.model.drained(b)?;
                return self.delays.finish();
            }
            let due = self.due_events();
            if due.is_empty() {
                let next = self.next_event_ms().unwrap_or(end_ms).min(end_ms);
                self.now_ms = next.max(self.now_ms + 1).min(end_ms.max(self.now_ms + 1));
                continue;
            }
            let ev = due[self.sched.gen_range(0..due.len())];
            self.step(ev)?;
        }
    }

    /// Faults stop: the broker comes back if it is down and nothing more is injected.
    fn heal(&mut self) {
        self.phase = RunPhase::Liveness;
        self.next_crash_ms = None;
        self.disk_faults.stop();
        self.disk.set_write_fault(None);
        self.operator.stop();
        self.delays.stop();
        self.alarms.stop(self.now_ms);
        if self.restart_at_ms.is_some() {
            self.restart_at_ms = Some(self.now_ms);
        }
        self.mix(b"heal", &[]);
    }

    fn quiescent(&self) -> bool {
        !self.dirty
            && self.sync_at.is_none()
            && self.store.commit.backlog() == 0
            && self.store.unread() == 0
            && !self.store.commit.faulted()
            && !self.operator.waiting()
            && self.alarms.next_change_ms().is_none()
            && self
                .links
                .values()
                .all(|l| l.to_server.is_empty() && l.to_client.is_empty())
            && self.clients.iter().all(|c| c.connected())
    }

    fn schedule_crash(&mut self) {
        self.crash_in_sync = self.fault_rng.gen_bool(0.6);
        self.next_crash_ms = self.faults.crash_mean_ms.map(|mean| {
            // Exponential inter-arrival times.
            let u: f64 = self.fault_rng.gen_range(0.0001..1.0);
            self.now_ms + (-(u.ln()) * mean as f64) as u64 + 1
        });
    }

    // ----- events -----

    fn due_events(&self) -> Vec<Event> {
        let now = self.now_ms;
        let mut due = Vec::new();
        if self.dirty {
            due.push(Event::Drain);
        }
        if self.restart_at_ms.is_some_and(|t| t <= now) {
            due.push(Event::Restart);
        }
        if self.next_crash_ms.is_some_and(|t| t <= now)
            && self.broker.is_some()
            && (self.sync_at.is_some() || !self.crash_in_sync)
        {
            due.push(Event::Crash);
        }
        if self.sync_at.is_some_and(|t| t <= now) {
            due.push(Event::SyncDone);
        }
        if self.disk_faults.next_change_ms().is_some_and(|t| t <= now) {
            due.push(Event::DiskFault);
        }
        if self.broker.is_some() && self.store.deadline().is_some_and(|t| t <= now) {
            due.push(Event::StoreRetry);
        }
        if self.broker.is_some() && self.operator.next_ms().is_some_and(|t| t <= now) {
            due.push(Event::Operator);
        }
        if self.broker.is_some() && self.delays.next_ms().is_some_and(|t| t <= now) {
            due.push(Event::Delays);
        }
        if self.alarms.next_change_ms().is_some_and(|t| t <= now) {
            due.push(Event::Alarm);
        }
        if let Some(b) = &self.broker {
            if b.poll_timeout().is_some_and(|t| t <= now) {
                due.push(Event::BrokerTimer);
            }
        }
        for (id, l) in &self.links {
            let server_reads = l.server.as_ref().is_some_and(|s| s.wants_read());
            if server_reads && l.to_server.next_ready_ms().is_some_and(|t| t <= now) {
                due.push(Event::ToServer(*id));
            }
            if l.client_open && l.to_client.next_ready_ms().is_some_and(|t| t <= now) {
                due.push(Event::ToClient(*id));
            }
            if l.server
                .as_ref()
                .and_then(|s| s.poll_timeout())
                .is_some_and(|t| t <= now)
            {
                due.push(Event::ConnTimer(*id));
            }
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.connected() && self.next_tick_ms[i] <= now {
                due.push(Event::Tick(i));
            }
            if !c.connected() && self.reconnect_at_ms[i].is_some_and(|t| t <= now) {
                due.push(Event::Connect(i));
            }
        }
        due
    }

    fn next_event_ms(&self) -> Option<u64> {
        let mut times: Vec<u64> = Vec::new();
        times.extend(self.restart_at_ms);
        if self.broker.is_some() {
            // A crash waiting for a sync comes with the event that starts one.
            let waiting = self.crash_in_sync && self.sync_at.is_none();
            times.extend(self.next_crash_ms.filter(|t| !waiting || *t > self.now_ms));
        }
        times.extend(self.sync_at);
        times.extend(self.disk_faults.next_change_ms());
        if self.broker.is_some() {
            times.extend(self.store.deadline());
            times.extend(self.operator.next_ms());
            times.extend(self.delays.next_ms());
        }
        times.extend(self.alarms.next_change_ms());
        if let Some(b) = &self.broker {
            times.extend(b.poll_timeout());
        }
        for l in self.links.values() {
            if l.server.as_ref().is_some_and(|s| s.wants_read()) {
                times.extend(l.to_server.next_ready_ms());
            }
            if l.client_open {
                times.extend(l.to_client.next_ready_ms());
            }
            times.extend(l.server.as_ref().and_then(|s| s.poll_timeout()));
        }
        for (i, c) in self.clients.iter().enumerate() {
            if c.connected() {
                times.push(self.next_tick_ms[i]);
            } else {
                times.extend(self.reconnect_at_ms[i]);
            }
        }
        times.into_iter().min()
    }

    /// One event, under the work budget.
    fn step(&mut self, ev: Event) -> Result<(), Violation> {
        let before = self
            .broker
            .as_ref()
            .map(|b| (self.incarnation, b.work_done(), b.loads_stalled()));
        let result = self.step_unbudgeted(ev);
        // A crash or restart in the step replaces the broker and its count.
        if let (Some((incarnation, work_before, stalled_before)), Some(b)) = (before, &self.broker)
            && incarnation == self.incarnation
        {
            self.loads_stalled += b.loads_stalled().saturating_sub(stalled_before);
            let work = b.work_done().saturating_sub(work_before);
            self.max_step_work = self.max_step_work.max(work);
            if work > WORK_BUDGET_PER_STEP {
                return Err(Violation(format!(
                    "work budget: one step ({ev:?}) made the broker do {work} routing steps, over the budget of {WORK_BUDGET_PER_STEP} (a matcher or dead-letter loop whose cost explodes with its input)"
                )));
            }
        }
        result
    }

    fn step_unbudgeted(&mut self, ev: Event) -> Result<(), Violation> {
        self.model.now_ms = self.now_ms;
        match ev {
            Event::Drain => self.drain(),
            Event::Restart => self.restart(),
            Event::Crash => self.crash(),
            Event::SyncDone => self.sync_done(),
            Event::DiskFault => {
                let fault = self.disk_faults.change(self.now_ms);
                self.disk.set_write_fault(fault);
                self.mix(b"disk fault", &[fault.map_or(0, |k| k as u8 + 1)]);
                Ok(())
            }
            Event::StoreRetry => {
                self.store_turn();
                Ok(())
            }
            Event::Operator => {
                let now = self.now_ms;
                if let Some(b) = self.broker.as_mut() {
                    if let Some(session) = self.operator.act(b, now) {
                        self.model.connect_hostile(session);
                    }
                    if let Some(limit) = self.operator.take_limit_change() {
                        self.model.set_limit_policy(limit);
                    }
                    self.dirty = true;
                }
                self.mix(b"operator", &now.to_le_bytes());
                Ok(())
            }
            Event::Delays => {
                let now = self.now_ms;
                if let Some(b) = self.broker.as_mut() {
                    if let Some(conn) = self.delays.act(b, now) {
                        self.model.connect_hostile(conn);
                    }
                    self.dirty = true;
                }
                self.mix(b"delays", &now.to_le_bytes());
                Ok(())
            }
            Event::Alarm => {
                self.alarms.change(self.now_ms);
                self.report_resources()
            }
            Event::BrokerTimer => {
                let now = self.now_ms;
                if let Some(b) = self.broker.as_mut() {
                    b.handle_timeout(now);
                }
                self.dirty = true;
                Ok(())
            }
            Event::ToServer(id) => self.to_server(id),
            Event::ToClient(id) => self.to_client(id),
            Event::ConnTimer(id) => {
                let now = self.now_ms;
                if let Some(s) = self.links.get_mut(&id).and_then(|l| l.server.as_mut()) {
                    s.handle_timeout(now);
                }
                self.pump_server(id)
            }
            Event::Tick(i) => self.tick(i),
            Event::Connect(i) => self.connect(i),
        }
    }

    // ----- broker and disk -----

    fn restart(&mut self) -> Result<(), Violation> {
        self.restart_at_ms = None;
        self.incarnation += 1;
        let recovered = self.disk.recovered_head(self.broker_config.head_limit());
        let seed = derive_seed(self.seed, 1000 + self.incarnation);
        self.broker = Some(Broker::new(self.broker_config.clone(), seed, recovered));
        self.replace_commit();
        self.sync_at = None;
        self.synced_batch = 0;
        self.dirty = true;
        // The driver's monitor reads memory and disk as soon as it starts.
        self.mix(b"restart", &self.incarnation.to_le_bytes());
        self.report_resources()
    }

    /// A fresh group commit for the next broker; the old one's count of cancelled pairs
    /// is kept.
    fn replace_commit(&mut self) {
        let old = std::mem::replace(&mut self.store, new_store(&self.faults));
        self.cancelled_pairs += old.commit.cancelled_pairs();
        self.slept_through += old.slept_through();
        self.gap_ended += old.gap_ended();
    }

    fn crash(&mut self) -> Result<(), Violation> {
        self.broker = None;
        self.dirty = false;
        self.sync_at = None;
        // The last batch of each write not yet synced: a crash keeps a prefix of the
        // writes, each whole (a write may hold several batches).
        let writes: Vec<u64> = self.store.commit.unsynced_writes().collect();
        // Held jobs die with the process, never written; the next broker hears of a
        // failing disk when its own first write fails.
        self.replace_commit();
        self.model.store_fault(false);
        self.operator.crashed();
        self.delays.crashed();
        // Every connection dies with the process; bytes in flight are lost.
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            if let Some(l) = self.links.remove(&id) {
                self.client_lost(l.client);
            }
        }
        let unsynced = self.disk.unsynced_batches();
        let keep = if unsynced > 0 && self.fault_rng.gen_bool(self.faults.torn_prob) {
            self.fault_rng.gen_range(0..=unsynced)
        } else {
            0
        };
        let out = self.disk.crash(keep);
        self.torn_crashes += u64::from(out.kept > 0);
        self.lossy_crashes += u64::from(out.lost > 0);
        // A failed write is in doubt for the group commit but was never taken by the disk,
        // so the disk's unsynced writes are a prefix of the group commit's.
        if unsynced > writes.len() {
            return Err(Violation(format!(
                "the disk holds {unsynced} unsynced writes, the group commit made only {}",
                writes.len()
            )));
        }
        let surviving = match out.kept {
            0 => self.synced_batch,
            kept => writes[kept - 1],
        };
        self.mix(b"crash", &[out.kept as u8, out.lost as u8]);
        let recovered = self.disk.recovered();
        self.model.crash(surviving, &recovered)?;
        self.operator.recovered(&recovered)?;
        self.delays.recovered(&recovered)?;
        let (lo, hi) = self.faults.restart_delay_ms;
        self.restart_at_ms = Some(self.now_ms + self.fault_rng.gen_range(lo..=hi));
        self.schedule_crash();
        Ok(())
    }

    /// The monitor's reading of memory and disk, to the broker.
    fn report_resources(&mut self) -> Result<(), Violation> {
        let reading = self.alarms.reading(&self.broker_config.alarms);
        let now = self.now_ms;
        if let Some(b) = self.broker.as_mut() {
            b.handle_resources(reading, now);
            self.dirty = true;
            let raised: Vec<Resource> = b.alarms().filter(|r| *r != Resource::Store).collect();
            self.operator.alarms_now(raised.contains(&Resource::Memory));
            if raised != self.alarms.expected() {
                return Err(Violation(format!(
                    "alarms: the broker has {raised:?} in force after reading {reading:?}, expected {:?}",
                    self.alarms.expected()
                )));
            }
        }
        let starved = [reading.memory_used_bytes, reading.disk_free_bytes];
        self.mix(b"resources", &starved.map(|x| x.unwrap_or(0) as u8));
        Ok(())
    }

    fn sync_done(&mut self) -> Result<(), Violation> {
        if self.sync_at.take().is_none() {
            return Ok(());
        }
        self.disk.complete_sync();
        self.store.commit.sync_done(Ok(()));
        // The driver's step ends with its sync and a look at whether a failing store
        // works again, before it turns to the jobs sent meanwhile.
        self.run_store();
        if self.sync_at.is_none() && !self.store.sleep() {
            self.store_turn();
        }
        Ok(())
    }

    /// The store driver's turn: it takes the jobs in its channel (a lazy driver), runs
    /// them, and unless a sync is now in flight (a lazy driver is blocked in it), goes
    /// back to sleep.
    fn store_turn(&mut self) {
        self.store.take();
        self.run_store();
        if self.sync_at.is_none() {
            // Jobs reach the driver only from drains, never during its turn, so it
            // always finds its channel as it left it.
            assert!(
                self.store.sleep(),
                "a store job came in during the driver's turn"
            );
        }
    }

    /// Runs the store jobs through the group commit, hands its reports to the broker and
    /// the model, and starts a sync if one is due.
    fn run_store(&mut self) {
        if self.broker.is_none() {
            return;
        }
        let now = self.now_ms;
        let sync_due = self.store.commit.run(&mut self.disk, now);
        while let Some(done) = self.store.commit.poll_done() {
            self.store_done(done);
        }
        if sync_due {
            self.store.commit.begin_sync();
            self.disk.begin_sync();
            let (lo, hi) = self.faults.sync_latency_ms;
            self.sync_at = Some(self.now_ms + self.fault_rng.gen_range(lo..=hi));
        }
    }

    fn store_done(&mut self, done: StoreDone) {
        let now = self.now_ms;
        self.dirty = true;
        let Some(b) = self.broker.as_mut() else {
            return;
        };
        match done {
            StoreDone::Synced(batch) => {
                self.synced_batch = batch;
                self.model.synced(batch);
                b.handle_persisted(batch);
                self.mix(b"synced", &batch.to_le_bytes());
            }
            StoreDone::Loaded {
                queue,
                epoch,
                entries,
            } => {
                self.loads += 1;
                b.handle_loaded(queue, epoch, entries, now);
                self.operator.read_done(queue);
                self.mix(b"load", &queue.to_le_bytes());
            }
            StoreDone::Failed(fault) => {
                self.model.store_fault(true);
                b.handle_store_failed(fault, now);
                self.mix(b"store failed", &[fault as u8]);
            }
            StoreDone::Recovered => {
                self.model.store_fault(false);
                b.handle_store_recovered(now);
                self.mix(b"store recovered", &[]);
            }
        }
    }

    /// Drains the broker's outputs, checks them, and routes them.
    fn drain(&mut self) -> Result<(), Violation> {
        // Several inputs may be handled before the driver drains (the real core handles up
        // to 256 messages per round).
        if self.faults.batch_inputs_prob > 0.0
            && self.phase == RunPhase::Safety
            && self.fault_rng.gen_bool(self.faults.batch_inputs_prob)
            && self.due_events().len() > 1
        {
            // Leave the drain due; another input goes first.
            let due = self.due_events();
            let others: Vec<Event> = due.into_iter().filter(|e| *e != Event::Drain).collect();
            let ev = others[self.sched.gen_range(0..others.len())];
            return self.step(ev);
        }
        self.dirty = false;
        let Some(broker) = self.broker.as_mut() else {
            return Ok(());
        };
        let mut outputs = Vec::new();
        while let Some(o) = broker.poll_output() {
            outputs.push(o);
        }
        self.model.outputs(&outputs)?;
        let now = self.now_ms;
        for o in outputs {
            match o {
                Output::Persist { .. } | Output::Load { .. } => {
                    if let Output::Persist { batch, .. } = &o {
                        self.model.persist(*batch)?;
                        self.operator.batch_emitted(*batch);
                    }
                    // A read is served after the writes held before it: by an eager
                    // driver at once, by a lazy one once it is not blocked in a sync
                    // (a read always wakes it, as does an urgent write). The next drain
                    // sees what it brought.
                    if let Ok(job) = o.into_store_job() {
                        if self.store.send(job) {
                            self.store_turn();
                        }
                        self.store
                            .check(self.faults.sync_gap_ms)
                            .map_err(|e| Violation(format!("store driver: {e}")))?;
                    }
                }
                Output::Admin { id, result } => {
                    let at = self.broker.as_ref().map(|b| crate::admin::AnswerTime {
                        memory_alarm: b.alarms().any(|r| r == warren::broker::Resource::Memory),
                        queue_budget: b.config().memory.queue_memory_budget_bytes,
                    });
                    let at = at.expect("an answer comes from a running broker");
                    self.operator.answered(id, result, self.synced_batch, at)?;
                }
                Output::Replies { conn, replies } if self.delays.owns(conn) => {
                    for command in self.delays.replies(&replies, now)? {
                        if let Some(b) = self.broker.as_mut() {
                            b.handle_command(conn, command, now);
                            self.dirty = true;
                        }
                    }
                }
                Output::Replies { conn, replies } if self.operator.owns(conn) => {
                    for r in &replies {
                        if let Some(command) = self.operator.session_reply(r)? {
                            if let Some(b) = self.broker.as_mut() {
                                b.handle_command(conn, command, now);
                                self.dirty = true;
                            }
                        }
                    }
                }
                Output::Replies { conn, replies } => {
                    let Some((id, link)) = self.links.iter_mut().find(|(_, l)| l.conn == conn)
                    else {
                        continue;
                    };
                    let id = *id;
                    if let Some(server) = link.server.as_mut() {
                        for r in replies {
                            link.pending_credit += r.wire_size();
                            server.handle_reply(r, now);
                        }
                    }
                    self.pump_server(id)?;
                }
            }
        }
        if let Some(b) = &self.broker {
            b.check_invariants();
            self.model.compare(b)?;
            check_store_weights(b, &self.store.commit)?;
        }
        Ok(())
    }

    fn command(&mut self, conn: ConnId, cmd: Command) -> Result<(), Violation> {
        self.model.command(conn, &cmd)?;
        let now = self.now_ms;
        if let Some(b) = self.broker.as_mut() {
            b.handle_command(conn, cmd, now);
            self.dirty = true;
        }
        Ok(())
    }

    // ----- connections -----

    fn connect(&mut self, i: usize) -> Result<(), Violation> {
        self.reconnect_at_ms[i] = None;
        if self.broker.is_none() {
            // Connection refused: try again later.
            self.reconnect_at_ms[i] = Some(self.now_ms + self.sched.gen_range(5..50));
            return Ok(());
        }
        let id = self.next_link;
        self.next_link += 1;
        let conn = id;
        let now = self.now_ms;
        if let Some(b) = self.broker.as_mut() {
            let info = ConnInfo {
                peer: format!("127.0.0.1:{}", 10_000 + id),
                loopback: true,
            };
            b.handle_connect(conn, info, now);
        }
        if self.clients[i].is_hostile() {
            self.model.connect_hostile(conn);
        } else {
            self.model.connect(conn);
        }
        self.links.insert(
            id,
            Link {
                client: i,
                conn,
                server: Some(Connection::new(self.conn_config.clone(), now)),
                client_open: true,
                to_server: Pipe::default(),
                to_client: Pipe::default(),
                pending_credit: 0,
                drain: DrainReport::new(
                    self.broker_config.limits.max_unflushed_bytes_per_connection,
                ),
            },
        );
        self.clients[i].connect(now);
        self.next_tick_ms[i] = now;
        self.mix(b"connect", &id.to_le_bytes());
        self.flush_client(i);
        Ok(())
    }

    fn link_of(&self, client: usize) -> Option<u64> {
        self.links
            .iter()
            .find(|(_, l)| l.client == client && l.client_open)
            .map(|(id, _)| *id)
    }

    fn latency(&mut self) -> u64 {
        let (lo, hi) = self.faults.latency_ms;
        self.now_ms + self.sched.gen_range(lo..=hi)
    }

    fn chunk(&mut self) -> usize {
        if self.sched.gen_bool(self.faults.small_chunk_prob) {
            self.sched.gen_range(1..=16)
        } else {
            self.sched.gen_range(1..=self.faults.max_chunk_bytes)
        }
    }

    fn flush_client(&mut self, i: usize) {
        let Some(id) = self.link_of(i) else {
            return;
        };
        if let Some(bytes) = self.clients[i].poll_transmit() {
            let at = self.latency();
            if let Some(l) = self.links.get_mut(&id) {
                l.to_server.push(at, bytes, 0);
            }
        }
        if self.clients[i].done() {
            // The closing handshake is over: the client drops its socket.
            if let Some(l) = self.links.get_mut(&id) {
                l.client_open = false;
                l.to_client.clear();
            }
            self.client_lost(i);
        }
    }

    /// Feeds the server side's commands to the broker and its bytes to the pipe; retires
    /// the link when both sides are done.
    fn pump_server(&mut self, id: u64) -> Result<(), Violation> {
        let mut commands = Vec::new();
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        let conn = l.conn;
        if let Some(s) = l.server.as_mut() {
            while let Some(c) = s.poll_command() {
                commands.push(c);
            }
            if let Some(report) = l.drain.take(!commands.is_empty()) {
                commands.push(report);
            }
        }
        for c in commands {
            self.command(conn, c)?;
        }
        let at = self.latency();
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        let written = l.server.as_mut().and_then(|s| s.poll_transmit());
        if let Some(bytes) = written {
            let credit = std::mem::take(&mut l.pending_credit);
            l.server_wrote(at, bytes, credit);
        }
        if l.server.as_ref().is_some_and(|s| s.is_closed()) {
            l.server = None;
            l.to_server.clear();
        }
        self.retire(id);
        Ok(())
    }

    /// Removes a link whose two sides are done; tells a client its server side is gone.
    fn retire(&mut self, id: u64) {
        let Some(l) = self.links.get(&id) else {
            return;
        };
        if l.server.is_none() && l.client_open && l.to_client.is_empty() {
            let client = l.client;
            if let Some(l) = self.links.get_mut(&id) {
                l.client_open = false;
            }
            self.client_lost(client);
        }
        let Some(l) = self.links.get(&id) else {
            return;
        };
        if l.server.is_none() && !l.client_open {
            self.links.remove(&id);
        }
    }

    fn client_lost(&mut self, i: usize) {
        self.clients[i].disconnected();
        let delay = self.sched.gen_range(1..100);
        self.reconnect_at_ms[i] = Some(self.now_ms + delay);
    }

    fn to_server(&mut self, id: u64) -> Result<(), Violation> {
        let n = self.chunk();
        let now = self.now_ms;
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        let (data, _) = l.to_server.take(now, n);
        if let Some(s) = l.server.as_mut() {
            s.handle_bytes(&data, now);
        }
        self.mix(b"to-server", &data);
        // The client closed and everything it sent has arrived: the server sees EOF.
        if let Some(l) = self.links.get_mut(&id) {
            if !l.client_open && l.to_server.is_empty() {
                if let Some(s) = l.server.as_mut() {
                    s.handle_eof();
                }
            }
        }
        self.pump_server(id)
    }

    fn to_client(&mut self, id: u64) -> Result<(), Violation> {
        let n = self.chunk();
        let now = self.now_ms;
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        let (data, credit) = l.to_client.take(now, n);
        let client = l.client;
        let conn = l.conn;
        let server_alive = l.server.is_some();
        let report = if server_alive {
            l.drain.written(credit);
            l.drain.take(false)
        } else {
            None
        };
        if let Some(report) = report {
            self.command(conn, report)?;
        }
        self.mix(b"to-client", &data);
        let mut seen: Vec<Observed> = Vec::new();
        let spec = Rc::clone(&self.spec);
        self.clients[client]
            .handle_bytes(&data, now, &spec, &mut seen)
            .map_err(Violation)?;
        for o in &seen {
            self.model.observed(client, o)?;
        }
        if self.phase == RunPhase::Liveness {
            self.clients[client].ack_received(now);
        }
        self.flush_client(client);
        if self.links.contains_key(&id) {
            let l = &self.links[&id];
            if !l.client_open && l.to_server.is_empty() {
                if let Some(s) = self.links.get_mut(&id).and_then(|l| l.server.as_mut()) {
                    s.handle_eof();
                }
            }
            self.pump_server(id)?;
        }
        Ok(())
    }

    fn tick(&mut self, i: usize) -> Result<(), Violation> {
        let (lo, hi) = self.clients_think(i);
        self.next_tick_ms[i] = self.now_ms + self.sched.gen_range(lo..=hi).max(1);
        if self.phase == RunPhase::Safety
            && self.faults.drop_per_tick > 0.0
            && self.fault_rng.gen_bool(self.faults.drop_per_tick)
        {
            return self.drop_link(i);
        }
        let now = self.now_ms;
        let spec = Rc::clone(&self.spec);
        self.clients[i]
            .tick(now, self.phase, &spec)
            .map_err(Violation)?;
        self.flush_client(i);
        Ok(())
    }

    fn clients_think(&self, i: usize) -> (u64, u64) {
        self.clients[i].think_ms(&self.spec)
    }

    /// The connection breaks: a random prefix of what the client sent arrives (often cut
    /// mid-frame), the rest and everything towards the client is lost.
    fn drop_link(&mut self, i: usize) -> Result<(), Violation> {
        let Some(id) = self.link_of(i) else {
            return Ok(());
        };
        self.drops += 1;
        let now = self.now_ms;
        let Some(l) = self.links.get_mut(&id) else {
            return Ok(());
        };
        let inflight = l.to_server.len();
        let n = if inflight > 0 {
            self.fault_rng.gen_range(0..=inflight)
        } else {
            0
        };
        let (data, _) = l.to_server.take(u64::MAX, n);
        if let Some(s) = l.server.as_mut() {
            s.handle_bytes(&data, now);
            s.handle_eof();
        }
        l.to_server.clear();
        l.to_client.clear();
        l.client_open = false;
        self.mix(b"drop", &data);
        self.client_lost(i);
        self.pump_server(id)?;
        if let Some(l) = self.links.get_mut(&id) {
            l.server = None;
        }
        self.retire(id);
        Ok(())
    }

    /// Mixes an event into the trace hash (FNV-1a).
    fn mix(&mut self, tag: &[u8], data: &[u8]) {
        let mut h = self.trace;
        for b in self
            .now_ms
            .to_le_bytes()
            .iter()
            .chain(tag)
            .chain(&(data.len() as u64).to_le_bytes())
            .chain(data)
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.trace = h;
    }
}

impl Link {
    /// The server wrote `bytes` to its socket; they reach the client after the latency.
    fn server_wrote(&mut self, at: u64, bytes: Bytes, credit: usize) {
        self.to_client.push(at, bytes, credit);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Drain,
    Restart,
    Crash,
    SyncDone,
    Operator,
    Delays,
    Alarm,
    BrokerTimer,
    DiskFault,
    StoreRetry,
    ToServer(u64),
    ToClient(u64),
    ConnTimer(u64),
    Tick(usize),
    Connect(usize),
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = crate::take_last_panic() {
        text
    } else if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// A store driver as this seed runs it, with an empty channel and a fresh group commit.
fn new_store(faults: &Faults) -> StoreDriver {
    let commit = GroupCommit::new(STORE_RETRY_MS).with_sync_gap(faults.sync_gap_ms);
    StoreDriver::new(commit, faults.lazy_store_wakes)
}

/// The broker holds back input once the batches it sent to the store and that are not yet
/// synced weigh `max_unsynced_store_bytes`; that bound is only as good as the weights. Each
/// batch the store holds must have been charged at least the message bytes it carries
/// (bodies and encoded properties, measured here independently of the broker's own sum).
fn check_store_weights(
    broker: &warren::broker::Broker,
    commit: &GroupCommit,
) -> Result<(), Violation> {
    use warren::store::{EntryBody, StoreOp};
    let charged: std::collections::BTreeMap<u64, u64> = broker.unsynced_batches().collect();
    for (first, batch, ops) in commit.held_batches() {
        // A write of several batches was charged for each of them.
        let weights: Vec<u64> = charged.range(first..=batch).map(|(_, w)| *w).collect();
        if weights.is_empty() {
            // Synced as far as the broker knows (its report is on the way).
            continue;
        }
        if weights.len() as u64 != batch - first + 1 {
            return Err(Violation(format!(
                "store write of batches {first}..={batch} is held, but the broker charged only {} of them against its unsynced-bytes bound",
                weights.len()
            )));
        }
        let weight: u64 = weights.iter().sum();
        let held: u64 = ops
            .iter()
            .map(|op| match op {
                StoreOp::PutShared { message, .. }
                | StoreOp::PageOut { message, .. }
                | StoreOp::Enqueue {
                    body: EntryBody::Inline(message),
                    ..
                } => (message.body.len() + message.properties.encoded_len()) as u64,
                _ => 0,
            })
            .sum();
        if weight < held {
            return Err(Violation(format!(
                "store batches {first}..={batch} hold {held} bytes of messages but the broker charged them {weight} against its unsynced-bytes bound"
            )));
        }
    }
    Ok(())
}
