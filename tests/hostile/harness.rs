//! Runs attacks one at a time against a real `warren serve` and checks after each one
//! that the broker is still what its other clients rely on: the process is alive, a
//! bystander connection declares, publishes with confirms and consumes within 5 s, resident
//! memory grew by no more than the attack's bound, and the ledger (persistent messages
//! confirmed before any attack) is complete. An attack runs on its own thread with a
//! deadline, so that a frozen broker fails that attack instead of hanging the suite; a
//! broker that died, froze or ran away with memory is recorded, stopped and restarted on
//! its data directory, and the suite goes on.

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warren::proto::method::QueueDeclare;

use crate::client::{Amqp, persistent};
use crate::common::Server;

pub const MIB: u64 = 1024 * 1024;

/// The durable queue of confirmed persistent messages that no attack may lose.
pub const LEDGER: &str = "hostile-ledger";
const LEDGER_MESSAGES: usize = 300;

/// How long the bystander may take, from connecting to consuming its message.
pub const BYSTANDER_LIMIT: Duration = Duration::from_secs(5);

/// Resident memory above the attack's start by this much stops the broker at once, so
/// that a runaway attack cannot take the machine down with it.
const RUNAWAY_BYTES: u64 = 2048 * MIB;

/// What an attack gets to know about the server.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub port: u16,
    pub http_port: u16,
    pub pid: u32,
    pub data_dir: PathBuf,
}

impl Ctx {
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
    pub fn rss(&self) -> u64 {
        proc_status(self.pid, "VmRSS:").unwrap_or(0)
    }
}

/// An attack's outcome: a note for the table, or why it failed.
pub type Outcome = Result<String, String>;

pub struct Attack {
    pub class: &'static str,
    pub variant: String,
    /// Most resident memory the broker may gain while the attack runs.
    pub rss_limit: u64,
    /// Most virtual memory it may gain, where reserving address space is the bug.
    pub vm_limit: Option<u64>,
    /// Time the attack may take before the broker counts as frozen.
    pub deadline: Duration,
    /// Whether the attack gets a freshly started broker, so that memory an earlier attack
    /// left with the allocator cannot hide what this one takes.
    pub fresh: bool,
    run: Box<dyn FnOnce(&Ctx) -> Outcome + Send>,
}

impl Attack {
    pub fn new(
        class: &'static str,
        variant: impl Into<String>,
        rss_limit_mib: u64,
        deadline_s: u64,
        run: impl FnOnce(&Ctx) -> Outcome + Send + 'static,
    ) -> Attack {
        Attack {
            class,
            variant: variant.into(),
            rss_limit: rss_limit_mib * MIB,
            vm_limit: None,
            deadline: Duration::from_secs(deadline_s),
            fresh: false,
            run: Box::new(run),
        }
    }

    pub fn fresh(mut self) -> Attack {
        self.fresh = true;
        self
    }

    pub fn vm_limit_mib(mut self, mib: u64) -> Attack {
        self.vm_limit = Some(mib * MIB);
        self
    }
}

/// How the bystander proves the broker serves others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bystander {
    /// Declare, publish with confirms, consume.
    Normal,
    /// Under a resource alarm publishers are blocked, as in RabbitMQ: the bystander's
    /// publish must get `connection.blocked`, and a second connection consumes.
    Alarm,
}

/// What watching an attack found: memory before, at most and after (bytes), how long it
/// took, its note, and its failures.
struct Watched {
    rss0: u64,
    vm0: u64,
    rss_max: u64,
    vm_max: u64,
    /// None when the process is gone.
    rss_end: Option<u64>,
    took: Duration,
    note: String,
    failures: Vec<String>,
}

/// One line of the report.
struct Row {
    class: &'static str,
    variant: String,
    rss_peak: Option<i64>,
    rss_end: Option<i64>,
    vm_peak: i64,
    bystander: Option<Duration>,
    took: Duration,
    failures: Vec<String>,
    note: String,
}

pub struct Suite {
    server: Option<Server>,
    extra: Vec<String>,
    /// Open-file limits (soft, hard) the broker starts with, if not inherited.
    nofile: Option<(u64, Option<u64>)>,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
    bystander: Bystander,
    bystanders: u64,
    /// Classes to run (from HOSTILE_ONLY, comma-separated words); empty runs all.
    only: Vec<String>,
    rows: Vec<Row>,
    /// Failures outside any attack (start, restart, ledger).
    suite_failures: Vec<String>,
    started: Instant,
}

thread_local! {
    /// The last panic on this thread, with its location, for attack threads.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics on attack threads are results, not noise: keep their message and location for
/// the report instead of printing them.
fn quiet_attack_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let name = std::thread::current().name().unwrap_or("").to_string();
        if name.starts_with("attack") || name.starts_with("bystander") {
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = panic_text(info.payload());
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message}{location}")));
        } else {
            default(info);
        }
    }));
}

/// The attacks hold a few thousand client sockets at once: the soft open-file limit of
/// this process (often 1024) goes up to its hard limit.
fn raise_own_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            eprintln!(
                "hostile: cannot raise the open-file limit ({e}); attacks holding many sockets may fail"
            );
        }
    }
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// Runs `f` on a named thread; its result, or None if it did not finish within
/// `deadline` (the thread is left behind; its sockets close when it ends). A panic is
/// an error carrying its message.
fn on_thread<T: Send + 'static>(
    name: &str,
    deadline: Duration,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
    mut waiting: impl FnMut(),
) -> Option<Result<T, String>> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(32 * MIB as usize)
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(
                |payload| {
                    Err(LAST_PANIC
                        .with(|p| p.borrow_mut().take())
                        .unwrap_or_else(|| panic_text(payload.as_ref())))
                },
            );
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Some(Err(format!("cannot start a thread: {e}")));
    }
    let end = Instant::now() + deadline;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(result) => return Some(result),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Some(Err("attack thread vanished".into()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= end {
                    return None;
                }
                waiting();
            }
        }
    }
}

/// A field of /proc/PID/status, in bytes.
fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Suite {
    /// Starts the broker with `extra` arguments and fills the ledger.
    pub fn start(extra: &[&str]) -> Suite {
        quiet_attack_panics();
        raise_own_open_file_limit();
        let log_dir = tempfile::tempdir().expect("log dir");
        let mut suite = Suite {
            server: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nofile: None,
            log_path: log_dir.path().join("warren.log"),
            _log_dir: log_dir,
            bystander: Bystander::Normal,
            bystanders: 0,
            only: std::env::var("HOSTILE_ONLY")
                .map(|v| {
                    v.split(',')
                        .map(|w| w.trim().to_lowercase())
                        .filter(|w| !w.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            rows: Vec::new(),
            suite_failures: Vec::new(),
            started: Instant::now(),
        };
        let dir = tempfile::tempdir().expect("data dir");
        if let Err(e) = suite.launch(dir) {
            panic!("warren did not start: {e}");
        }
        let ctx = suite.ctx().expect("a running server");
        if let Err(e) = fill_ledger(ctx.port) {
            panic!("cannot fill the ledger: {e}");
        }
        eprintln!(
            "hostile: warren pid {} on AMQP {} HTTP {}; ledger of {LEDGER_MESSAGES} confirmed persistent messages; log {}",
            ctx.pid,
            ctx.port,
            ctx.http_port,
            suite.log_path.display()
        );
        eprintln!("{}", header());
        suite
    }

    /// Starts the broker on `dir`. If it cannot start there, that is recorded and it is
    /// started on a fresh directory (with a new ledger) so that later attacks still run.
    fn launch(&mut self, dir: tempfile::TempDir) -> Result<(), String> {
        let log_from = self.log_len();
        let extra: Vec<String> = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let why = match Server::try_start_limited(dir, &extra, self.log_file()?, self.nofile) {
            Ok(server) => {
                self.server = Some(server);
                return Ok(());
            }
            Err((why, _dir)) => why,
        };
        let tail = self.log_tail(log_from, 20);
        self.suite_failures.push(format!(
            "warren did not start on its data directory: {why}\n{tail}"
        ));
        let fresh = tempfile::tempdir().map_err(|e| e.to_string())?;
        match Server::try_start_limited(fresh, &extra, self.log_file()?, self.nofile) {
            Ok(server) => {
                let port = server.port;
                self.server = Some(server);
                fill_ledger(port)?;
                Err(format!("{why} (continuing on a fresh data directory)"))
            }
            Err((again, _)) => Err(format!(
                "{why}; on a fresh data directory too: {again}\n{}",
                self.log_tail(log_from, 20)
            )),
        }
    }

    fn log_file(&self) -> Result<Stdio, String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| e.to_string())?;
        Ok(Stdio::from(log))
    }

    pub fn ctx(&self) -> Option<Ctx> {
        let server = self.server.as_ref()?;
        Some(Ctx {
            port: server.port,
            http_port: server.http_port,
            pid: server.pid(),
            data_dir: server.data_dir.path().to_path_buf(),
        })
    }

    /// The last `lines` lines the broker logged after byte `from` of its log.
    fn log_tail(&self, from: u64, lines: usize) -> String {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if all.is_empty() {
            return "    | (nothing logged)".into();
        }
        all[all.len().saturating_sub(lines)..]
            .iter()
            .map(|l| format!("    | {}", l.chars().take(300).collect::<String>()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path).map_or(0, |m| m.len())
    }

    /// Lines the broker logged since byte `from` that say it failed (panics, overflows).
    fn log_alarms_since(&self, from: u64) -> Vec<String> {
        let text = std::fs::read(&self.log_path).unwrap_or_default();
        let new = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
        new.lines()
            .filter(|l| {
                l.contains("panicked") || l.contains("overflowed its stack") || l.contains("fatal")
            })
            .map(|l| l.chars().take(300).collect())
            .collect()
    }

    fn push_row(&mut self, row: Row) {
        eprintln!("{}", line(&row));
        self.rows.push(row);
    }

    /// Stops the broker (SIGTERM, which must work within 10 s) and starts it again on the
    /// same data directory with `extra` arguments, the open-file limits `nofile` (soft,
    /// and a lower hard one) and the bystander `bystander`; then checks the whole ledger.
    pub fn restart_with(
        &mut self,
        why: &str,
        extra: &[&str],
        bystander: Bystander,
        nofile: Option<(u64, Option<u64>)>,
    ) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.nofile = nofile;
        self.bystander = bystander;
        let started = Instant::now();
        let mut failures = Vec::new();
        let dir = match self.server.take() {
            Some(server) => {
                let (dir, stopped) = server.terminate(Duration::from_secs(10));
                if !stopped {
                    failures.push("SIGTERM did not stop warren within 10 s (killed)".to_string());
                }
                dir
            }
            None => tempfile::tempdir().expect("data dir"),
        };
        if let Err(e) = self.launch(dir) {
            failures.push(format!("restart failed: {e}"));
        }
        if let Some(ctx) = self.ctx() {
            if let Err(e) = check_ledger_contents(ctx.port) {
                failures.push(format!("ledger after restart: {e}"));
            }
        }
        self.push_row(Row::event(
            "restart",
            why,
            started.elapsed(),
            failures,
            "SIGTERM, start on the same data dir, every ledger message read back",
        ));
    }

    /// A restart with the same settings that is not a row of its own.
    fn restart_quietly(&mut self) -> Result<(), String> {
        let server = self.server.take().ok_or("no broker running")?;
        let (dir, stopped) = server.terminate(Duration::from_secs(10));
        let launched = self.launch(dir);
        if !stopped {
            return Err("SIGTERM did not stop warren within 10 s (killed)".into());
        }
        launched.map_err(|e| format!("restart before the attack: {e}"))?;
        let ctx = self.ctx().ok_or("no broker running")?;
        match ledger_count(ctx.port)? {
            n if n == LEDGER_MESSAGES as u32 => Ok(()),
            n => Err(format!(
                "after a restart the ledger holds {n} of {LEDGER_MESSAGES} messages"
            )),
        }
    }

    pub fn restart(&mut self, why: &str) {
        let extra: Vec<String> = self.extra.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        self.restart_with(why, &extra, self.bystander, self.nofile);
    }

    pub fn run_all(&mut self, attacks: Vec<Attack>) {
        for attack in attacks {
            self.run(attack);
        }
    }

    /// Runs one attack and checks the broker after it.
    pub fn run(&mut self, attack: Attack) {
        let wanted = self.only.is_empty()
            || self
                .only
                .iter()
                .any(|w| attack.class.to_lowercase().contains(w.as_str()));
        if !wanted {
            return;
        }
        let mut failures = Vec::new();
        if attack.fresh {
            if let Err(e) = self.restart_quietly() {
                failures.push(e);
            }
        }
        let Some(ctx) = self.ctx() else {
            failures.push("no broker to attack: it did not start".to_string());
            self.push_row(Row::event(
                attack.class,
                &attack.variant,
                Duration::ZERO,
                failures,
                "",
            ));
            return;
        };
        let log_from = self.log_len();
        let (class, variant, rss_limit, vm_limit) = (
            attack.class,
            attack.variant.clone(),
            attack.rss_limit,
            attack.vm_limit,
        );
        let watched = self.watch(&ctx, attack);
        failures.extend(watched.failures);
        let alive = self.check_after(&ctx, log_from, &mut failures);
        let rss_peak = watched.rss_max as i64 - watched.rss0 as i64;
        if watched.rss_max > watched.rss0 + rss_limit {
            failures.push(format!(
                "resident memory grew by {} MiB (bound {} MiB)",
                rss_peak / MIB as i64,
                rss_limit / MIB
            ));
        }
        let vm_peak = watched.vm_max as i64 - watched.vm0 as i64;
        if let Some(limit) = vm_limit {
            if watched.vm_max > watched.vm0 + limit {
                failures.push(format!(
                    "virtual memory grew by {} MiB (bound {} MiB)",
                    vm_peak / MIB as i64,
                    limit / MIB
                ));
            }
        }
        self.push_row(Row {
            class,
            variant,
            rss_peak: Some(rss_peak),
            rss_end: watched.rss_end.map(|r| r as i64 - watched.rss0 as i64),
            vm_peak,
            bystander: alive.ok(),
            took: watched.took,
            failures,
            note: watched.note,
        });
        if alive.is_err() {
            self.recover(log_from);
        }
    }

    /// Runs the attack on its thread until it ends or its deadline passes, sampling the
    /// broker's memory meanwhile and killing it if the memory runs away.
    fn watch(&mut self, ctx: &Ctx, attack: Attack) -> Watched {
        let pid = ctx.pid;
        let rss0 = proc_status(pid, "VmRSS:").unwrap_or(0);
        let vm0 = proc_status(pid, "VmSize:").unwrap_or(0);
        let (mut rss_max, mut vm_max) = (rss0, vm0);
        let mut runaway = false;
        let started = Instant::now();
        let attack_ctx = ctx.clone();
        let Attack {
            class,
            variant,
            deadline,
            run,
            ..
        } = attack;
        let server = self.server.as_mut().expect("a running server");
        let outcome = on_thread(
            &format!("attack {class} {variant}"),
            deadline,
            move || run(&attack_ctx),
            || {
                if runaway {
                    return;
                }
                let rss = proc_status(pid, "VmRSS:").unwrap_or(0);
                rss_max = rss_max.max(rss);
                vm_max = vm_max.max(proc_status(pid, "VmSize:").unwrap_or(0));
                if rss > rss0 + RUNAWAY_BYTES {
                    runaway = true;
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
                let _ = server.exit_status();
            },
        );
        let took = started.elapsed();
        let mut failures = Vec::new();
        let mut note = String::new();
        match outcome {
            Some(Ok(n)) => note = n,
            Some(Err(e)) => failures.push(e),
            None => failures.push(format!(
                "attack did not finish within {} s",
                deadline.as_secs()
            )),
        }
        if runaway {
            failures.push(format!(
                "resident memory ran away past +{} MiB: broker killed",
                RUNAWAY_BYTES / MIB
            ));
        }
        let rss_end = proc_status(pid, "VmRSS:");
        Watched {
            rss0,
            vm0,
            rss_max: rss_max.max(rss_end.unwrap_or(0)),
            vm_max,
            rss_end,
            took,
            note,
            failures,
        }
    }

    /// The checks after an attack: the process lives and logged no failure, the
    /// bystander's round trip (its latency, or an error when the broker is dead or
    /// frozen), the ledger.
    fn check_after(
        &mut self,
        ctx: &Ctx,
        log_from: u64,
        failures: &mut Vec<String>,
    ) -> Result<Duration, ()> {
        let exited = self.server.as_mut().and_then(|s| s.exit_status());
        for line in self.log_alarms_since(log_from) {
            failures.push(format!("log: {line}"));
        }
        if let Some(status) = exited {
            failures.push(format!("warren exited: {status}"));
            return Err(());
        }
        self.bystanders += 1;
        let latency = match check_bystander(ctx.port, self.bystanders, self.bystander) {
            Ok(latency) => latency,
            Err(e) => {
                failures.push(format!("bystander: {e}"));
                return Err(());
            }
        };
        match ledger_count(ctx.port) {
            Ok(n) if n == LEDGER_MESSAGES as u32 => {}
            Ok(n) => failures.push(format!("ledger holds {n} of {LEDGER_MESSAGES} messages")),
            Err(e) => failures.push(format!("ledger: {e}")),
        }
        Ok(latency)
    }

    /// After a death, freeze or runaway: kill what is left, start again on the same data
    /// directory, check the ledger.
    fn recover(&mut self, log_from: u64) {
        let tail = self.log_tail(log_from, 8);
        eprintln!(
            "    broker down or frozen; it logged:\n{tail}\n    restarting it on its data directory"
        );
        let started = Instant::now();
        let mut failures = Vec::new();
        let dir = match self.server.take() {
            Some(server) => server.kill(),
            None => tempfile::tempdir().expect("data dir"),
        };
        if let Err(e) = self.launch(dir) {
            failures.push(format!("restart failed: {e}"));
        }
        if let Some(ctx) = self.ctx() {
            if let Err(e) = check_ledger_contents(ctx.port) {
                failures.push(format!("ledger after recovery: {e}"));
            }
        }
        self.push_row(Row::event(
            "recovery",
            "SIGKILL and restart",
            started.elapsed(),
            failures,
            "every ledger message read back",
        ));
    }

    /// Restarts once more, prints the table, and fails the test if anything failed.
    pub fn finish(mut self) {
        self.restart("end of the suite");
        let total = self.started.elapsed();
        let attacks = self
            .rows
            .iter()
            .filter(|r| r.class != "restart" && r.class != "recovery")
            .count();
        eprintln!(
            "\nhostile-client suite: {attacks} attacks in {:.0} s",
            total.as_secs_f64()
        );
        eprintln!("{}", header());
        for row in &self.rows {
            eprintln!("{}", line(row));
        }
        let failed: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| !r.failures.is_empty())
            .collect();
        let mut report = String::new();
        for row in &failed {
            report.push_str(&format!("\n{} / {}:", row.class, row.variant));
            for f in &row.failures {
                report.push_str(&format!("\n    {f}"));
            }
        }
        for f in &self.suite_failures {
            report.push_str(&format!("\n{f}"));
        }
        eprintln!(
            "\n{} of {} rows passed{}",
            self.rows.len() - failed.len(),
            self.rows.len(),
            if report.is_empty() {
                String::new()
            } else {
                format!("; failures:{report}")
            }
        );
        if let Some(server) = self.server.take() {
            let _ = server.terminate(Duration::from_secs(10));
        }
        assert!(
            failed.is_empty() && self.suite_failures.is_empty(),
            "{} rows of the hostile-client suite failed (see the table and the list above)",
            failed.len() + self.suite_failures.len()
        );
    }
}

impl Row {
    /// A row for something other than an attack (a restart, a recovery).
    fn event(
        class: &'static str,
        what: &str,
        took: Duration,
        failures: Vec<String>,
        note: &str,
    ) -> Row {
        Row {
            class,
            variant: what.to_string(),
            rss_peak: None,
            rss_end: None,
            vm_peak: 0,
            bystander: None,
            took,
            failures,
            note: note.to_string(),
        }
    }
}

fn header() -> String {
    format!(
        "{:<13} {:<58} {:>6} {:>9} {:>9} {:>9} {:>8}  {}",
        "class", "variant", "result", "RSS peak", "RSS end", "bystander", "time", "note / failure"
    )
}

fn mib(bytes: i64) -> String {
    format!("{:+.1}M", bytes as f64 / MIB as f64)
}

fn line(row: &Row) -> String {
    let result = if row.failures.is_empty() {
        "ok"
    } else {
        "FAIL"
    };
    let bystander = row
        .bystander
        .map_or("-".to_string(), |d| format!("{} ms", d.as_millis()));
    let mut detail = if row.failures.is_empty() {
        row.note.clone()
    } else {
        row.failures.join("; ")
    };
    if row.vm_peak > 512 * MIB as i64 {
        detail.push_str(&format!(" [VmSize {}]", mib(row.vm_peak)));
    }
    let detail: String = detail.replace('\n', " ").chars().take(260).collect();
    format!(
        "{:<13} {:<58} {:>6} {:>9} {:>9} {:>9} {:>7.1}s  {}",
        row.class,
        row.variant,
        result,
        row.rss_peak.map_or("-".to_string(), mib),
        row.rss_end.map_or("-".to_string(), mib),
        bystander,
        row.took.as_secs_f64(),
        detail
    )
}

fn ledger_body(i: usize) -> Vec<u8> {
    let mut body = format!("ledger-{i:05}-").into_bytes();
    body.resize(1024, b'.');
    body
}

/// Publishes the ledger's persistent messages to its durable queue and waits for every
/// confirm.
fn fill_ledger(port: u16) -> Result<(), String> {
    let mut c = Amqp::open(port)?;
    c.open_channel(1)?;
    c.confirm_select(1)?;
    c.queue(1, LEDGER, true, Default::default())?;
    for i in 0..LEDGER_MESSAGES {
        c.publish(1, "", LEDGER, &persistent(), &ledger_body(i));
    }
    c.wait_confirms(1)?;
    if c.nacks > 0 {
        return Err(format!("{} ledger messages were nacked", c.nacks));
    }
    c.close();
    Ok(())
}

fn ledger_count(port: u16) -> Result<u32, String> {
    let mut c = Amqp::open(port)?;
    c.set_timeout(BYSTANDER_LIMIT);
    c.open_channel(1)?;
    let n = c.count(1, LEDGER)?;
    c.close();
    Ok(n)
}

/// Reads every ledger message (without acking: closing the connection puts them back)
/// and compares them with what was confirmed.
pub fn check_ledger_contents(port: u16) -> Result<(), String> {
    let mut c = Amqp::open(port)?;
    c.set_timeout(Duration::from_secs(10));
    c.open_channel(1)?;
    c.consume(1, LEDGER, false)?;
    let mut seen = BTreeSet::new();
    for _ in 0..LEDGER_MESSAGES {
        let (_, props, body) = c.delivery()?;
        if props.delivery_mode != Some(2) {
            return Err("a ledger message lost its persistence".into());
        }
        let expected = (0..LEDGER_MESSAGES).find(|i| ledger_body(*i) == body);
        match expected {
            Some(i) if seen.insert(i) => {}
            Some(i) => return Err(format!("ledger message {i} delivered twice")),
            None => {
                return Err(format!(
                    "unknown ledger body {:?}",
                    String::from_utf8_lossy(&body[..body.len().min(20)])
                ));
            }
        }
    }
    c.close();
    Ok(())
}

/// The bystander's round trip, on a thread with the 5 s limit.
fn check_bystander(port: u16, n: u64, mode: Bystander) -> Result<Duration, String> {
    let started = Instant::now();
    let result = on_thread(
        "bystander",
        BYSTANDER_LIMIT,
        move || bystander_round(port, n, mode),
        || {},
    );
    match result {
        Some(Ok(())) => Ok(started.elapsed()),
        Some(Err(e)) => Err(e),
        None => Err(format!(
            "no round trip within {} s",
            BYSTANDER_LIMIT.as_secs()
        )),
    }
}

fn bystander_round(port: u16, n: u64, mode: Bystander) -> Result<(), String> {
    let mut c = Amqp::open(port)?;
    c.set_timeout(BYSTANDER_LIMIT);
    c.open_channel(1)?;
    c.confirm_select(1)?;
    let queue = format!("bystander-{n}");
    c.declare(
        1,
        QueueDeclare {
            queue: queue.clone(),
            exclusive: true,
            ..Default::default()
        },
    )?;
    let body = format!("bystander message {n}").into_bytes();
    match mode {
        Bystander::Normal => {
            if !c.publish_confirmed(1, "", &queue, &persistent(), &body)? {
                return Err("the bystander's publish was nacked".into());
            }
            c.consume(1, &queue, false)?;
            let (tag, _, got) = c.delivery()?;
            if got != body {
                return Err("the bystander got someone else's message".into());
            }
            c.ack(1, tag, false);
        }
        Bystander::Alarm => {
            c.publish(1, "", &queue, &persistent(), &body);
            while c.blocked.is_none() {
                let event = c.next()?;
                if let crate::client::Event::Method(
                    0,
                    warren::proto::method::Method::ConnectionBlocked(b),
                ) = event
                {
                    c.blocked = Some(b.reason);
                }
            }
            // A connection that never published is not blocked: it consumes.
            let mut reader = Amqp::open(port)?;
            reader.set_timeout(BYSTANDER_LIMIT);
            reader.open_channel(1)?;
            if reader.get(1, LEDGER, false)?.is_none() {
                return Err("the ledger was empty to a consumer".into());
            }
            reader.close();
            // A blocked connection is not read: closing politely would wait for nothing.
            return Ok(());
        }
    }
    c.close();
    Ok(())
}

/// The bystander's round trip from inside an attack, while the attack holds what it
/// attacks with: its latency, or why it failed (within 5 s).
pub fn bystander_during(ctx: &Ctx) -> Result<Duration, String> {
    static DURING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);
    let n = DURING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    check_bystander(ctx.port, n, Bystander::Normal)
}

/// CPU time of a process in clock ticks (1/100 s), user and system.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line (utime, stime) are the 12th and 13th after the name.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Waits (up to 3 s) for the broker to go idle: half a second in which it uses under 20%
/// of a core. Work an attack started that never ends (messages going round a loop for
/// ever) keeps it busy although every queue may look empty.
pub fn goes_idle(ctx: &Ctx) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let before = cpu_ticks(ctx.pid);
        std::thread::sleep(Duration::from_millis(500));
        let used = cpu_ticks(ctx.pid).saturating_sub(before);
        if used < 10 {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(format!(
                "the broker stays busy ({}% of a core) after the attack ended: work that never finishes",
                used * 2
            ));
        }
    }
}

/// Runs `warren ctl ARGS` against the server (found through its node file); returns
/// (exit code, stdout and stderr).
pub fn ctl(ctx: &Ctx, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("ctl")
        .args(args)
        .env("WARREN_DATA_DIR", &ctx.data_dir)
        .env_remove("WARREN_NODE")
        .env_remove("WARREN_USERNAME")
        .env_remove("WARREN_PASSWORD")
        .output();
    match out {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (-1, e.to_string()),
    }
}

/// `warren ctl ARGS`, which must succeed.
pub fn ctl_ok(ctx: &Ctx, args: &[&str]) -> Result<String, String> {
    match ctl(ctx, args) {
        (0, out) => Ok(out),
        (code, out) => Err(format!(
            "warren ctl {} exited {code}: {}",
            args.join(" "),
            out.trim()
        )),
    }
}
