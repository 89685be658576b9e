//! Failures the simulator cannot catch from inside a run: a step that never returns (a
//! freeze), memory that grows without bound, and a process abort (a stack overflow kills
//! the process; Rust cannot catch it). Each must still name its seed and the replay
//! command.
//!
//! A batch runs in a worker process, a copy of the simulator started with `--worker`,
//! which announces each seed on its standard output as it starts and ends it
//! ([`SEED_START`], [`SEED_END`]). The supervising process forwards everything else,
//! and watches the worker: if it dies during a seed, or a seed overruns its wall-clock
//! deadline or the memory limit (the worker is then killed), the supervisor reports that
//! seed as failed and, with `--keep-going`, starts a new worker at the next seed. A single
//! seed (a replay) runs in process, watched by a thread that checks the same deadline and
//! limit; a stack overflow there ends the process with Rust's own message.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Line prefix with which a worker announces that a seed starts.
pub const SEED_START: &str = "@seed-start ";
/// Line prefix with which a worker announces that a seed ended (passed or failed).
pub const SEED_END: &str = "@seed-end ";

/// What a seed may use of the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock time one seed may run (a run twice over with `--check-determinism`).
    pub seed_wall: Duration,
    /// Resident memory of the process running the seed.
    pub rss_bytes: u64,
}

/// How often the watchers look.
const POLL: Duration = Duration::from_millis(100);

/// A seed the worker process did not finish.
#[derive(Debug, Clone)]
pub struct Lost {
    /// The seed.
    pub seed: u64,
    /// Why: the deadline, the memory limit, or how the process died.
    pub reason: String,
}

/// How a supervised batch ended.
#[derive(Debug)]
pub enum BatchEnd {
    /// The worker ran every seed it was given and exited with this status.
    Finished(ExitStatus),
    /// The worker did not finish `Lost::seed`; it is dead.
    Lost(Lost),
}

/// The seed a worker's output line reports as failed, if it does.
pub fn failed_seed(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("seed ")?;
    let (seed, verdict) = rest.split_once(' ')?;
    (verdict.starts_with("FAILED") || verdict.starts_with("NOT DETERMINISTIC"))
        .then(|| seed.parse().ok())
        .flatten()
}

/// Runs `worker` (a simulator process started with `--worker`, the seeds in its
/// arguments), forwarding its output lines except the progress announcements (and noting
/// in `failed` the seeds they report as failed), until it exits or loses a seed.
pub fn supervise(
    mut worker: Command,
    limits: Limits,
    failed: &mut Vec<u64>,
) -> std::io::Result<BatchEnd> {
    worker.stdout(Stdio::piped());
    let mut child = worker.spawn()?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(std::io::Error::other("the worker has no standard output"));
    };
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut current: Option<(u64, Instant)> = None;
    let mut killed_for: Option<String> = None;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(line) => {
                if let Some(seed) = line.strip_prefix(SEED_START) {
                    current = seed.trim().parse().ok().map(|s| (s, Instant::now()));
                } else if line.starts_with(SEED_END) {
                    current = None;
                } else {
                    failed.extend(failed_seed(&line));
                    println!("{line}");
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some((_, started)) = current {
            killed_for = over_limits(started, child.id(), limits);
            if killed_for.is_some() {
                // Our own child, by its handle.
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    drop(rx);
    let _ = reader.join();
    Ok(match (current, killed_for) {
        (Some((seed, _)), Some(reason)) => BatchEnd::Lost(Lost { seed, reason }),
        (Some((seed, _)), None) => BatchEnd::Lost(Lost {
            seed,
            reason: died(status),
        }),
        (None, _) => BatchEnd::Finished(status),
    })
}

/// Why a seed that started at `started` in process `pid` must stop, if it must.
fn over_limits(started: Instant, pid: u32, limits: Limits) -> Option<String> {
    if started.elapsed() > limits.seed_wall {
        return Some(format!(
            "still running after {}s of wall-clock time: a freeze (a step that never returns, or one far past any work budget)",
            limits.seed_wall.as_secs()
        ));
    }
    let rss = rss_bytes(pid)?;
    (rss > limits.rss_bytes).then(|| {
        format!(
            "resident memory reached {} MiB, over the limit of {} MiB: a blow-up",
            rss >> 20,
            limits.rss_bytes >> 20
        )
    })
}

/// How a process that should have gone on ended.
fn died(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                6 => " (SIGABRT: an abort, such as Rust's on a stack overflow)",
                9 => " (SIGKILL: perhaps the kernel's out-of-memory killer)",
                11 => " (SIGSEGV)",
                _ => "",
            };
            return format!("the simulator process died of signal {signal}{name}");
        }
    }
    format!("the simulator process exited ({status}) in the middle of the seed")
}

/// Resident memory of process `pid`, where the OS tells it (Linux's `/proc`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The seed this process is running and since when, for [`watch_in_process`].
pub type Current = Arc<Mutex<Option<(u64, Instant)>>>;

/// Watches seeds run in this process from a thread: past a limit it prints the seed's
/// failure and `replay(seed)`, and exits the process (the run cannot be interrupted).
pub fn watch_in_process(
    limits: Limits,
    replay: impl Fn(u64) -> String + Send + 'static,
) -> Current {
    let current: Current = Arc::new(Mutex::new(None));
    let watched = Arc::clone(&current);
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(POLL);
            let now = match watched.lock() {
                Ok(g) => *g,
                Err(poisoned) => *poisoned.into_inner(),
            };
            let Some((seed, started)) = now else {
                continue;
            };
            if let Some(reason) = over_limits(started, std::process::id(), limits) {
                println!("seed {seed} FAILED: {reason}");
                println!("replay: {}", replay(seed));
                std::process::exit(1);
            }
        }
    });
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_seeds_are_read_from_worker_lines() {
        assert_eq!(
            failed_seed("seed 12 FAILED at 3ms virtual (step 9): x"),
            Some(12)
        );
        assert_eq!(
            failed_seed("seed 7 NOT DETERMINISTIC: trace 1 then 2"),
            Some(7)
        );
        assert_eq!(failed_seed("seed 7 ok: 8000ms virtual"), None);
        assert_eq!(failed_seed("  faults: crash_mean=off"), None);
    }

    #[test]
    fn a_seed_past_its_deadline_must_stop() {
        let limits = Limits {
            seed_wall: Duration::from_millis(0),
            rss_bytes: u64::MAX,
        };
        let started = Instant::now() - Duration::from_millis(5);
        assert!(over_limits(started, std::process::id(), limits).is_some());
        let limits = Limits {
            seed_wall: Duration::from_secs(3600),
            rss_bytes: u64::MAX,
        };
        assert!(over_limits(Instant::now(), std::process::id(), limits).is_none());
    }
}
