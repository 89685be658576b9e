//! The `warren` command: `warren serve` runs the broker.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use warren::cluster::settings::ClusterSettings;
use warren::config::FileConfig;
use warren::server::ServerConfig;
use warren::server::gather::WakeGather;
use warren::store::disk::{FjallStore, MAX_SYNC_GAP_MS, StoreOptions, SyncPolicy};

/// mimalloc: pipelined publishing about 20% faster than glibc's malloc for the same CPU,
/// and the 10-million-message backlog still well under 200 MB (see README, Performance).
#[cfg(not(madsim))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "warren", version, about = "An AMQP 0-9-1 message broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (AMQP on --amqp-port, management HTTP on --http-port; AMQPS and
    /// HTTPS beside them when the config file has [tls] and [http_tls]).
    Serve(ServeArgs),
    /// Administer a node, as rabbitmqctl does (users, vhosts, permissions, listings).
    #[cfg(not(madsim))]
    Ctl(warren::admin::ctl::CtlArgs),
    /// Generate load against an AMQP 0-9-1 broker and report throughput and latency.
    #[cfg(not(madsim))]
    Perf(warren::perf::PerfArgs),
}

/// Settings come from flags, then environment variables, then the config file, then
/// defaults.
#[derive(Args, Debug, Clone)]
struct ServeArgs {
    /// TOML config file (see README for its keys: limits, send timeout, handshakes per
    /// address, store reserve, alarms, TLS: [tls] for AMQPS, [http_tls] for HTTPS, and
    /// [cluster] to run as a member of a replicated cluster).
    #[arg(long, env = "WARREN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: :: (all IPv6 and IPv4 addresses)].
    #[arg(long, env = "WARREN_BIND")]
    bind: Option<IpAddr>,
    /// AMQP port [default: 5672].
    #[arg(long, env = "WARREN_AMQP_PORT")]
    amqp_port: Option<u16>,
    /// Management HTTP port [default: 15672].
    #[arg(long, env = "WARREN_HTTP_PORT")]
    http_port: Option<u16>,
    /// AMQPS (AMQP over TLS) port; needs a [tls] section in the config file [default:
    /// 5671, or the section's port].
    #[arg(long, env = "WARREN_AMQPS_PORT")]
    amqps_port: Option<u16>,
    /// Management HTTPS port; needs an [http_tls] section in the config file [default:
    /// 15671, or the section's port].
    #[arg(long, env = "WARREN_HTTPS_PORT")]
    https_port: Option<u16>,
    /// Directory for durable state, created with mode 0700 [default: $XDG_DATA_HOME/warren
    /// or ~/.local/share/warren].
    #[arg(long, env = "WARREN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The node's name, by which `warren ctl -n NAME` tells local nodes apart [default:
    /// warren@<hostname>, or warren-ID@IP for a cluster member].
    #[arg(long, env = "WARREN_NODENAME")]
    node_name: Option<String>,
    /// When publisher confirms go out: "batch" waits for fdatasync (survives power loss),
    /// "none" for the OS to have the write (survives a broker crash only) [default: batch].
    #[arg(long, env = "WARREN_SYNC")]
    sync: Option<SyncPolicy>,
    /// With --sync batch: the least time in milliseconds between the starts of two
    /// fdatasyncs. Batches arriving in between are written together (a message acked
    /// before its batch is written is never written), for up to this much more confirm
    /// latency; 0 syncs as soon as the last sync is done [default: 2].
    #[arg(long, env = "WARREN_SYNC_GAP_MS", value_parser = clap::value_parser!(u64).range(0..=MAX_SYNC_GAP_MS))]
    sync_gap_ms: Option<u64>,
    /// Log filter, e.g. "info" or "warren=debug".
    #[arg(long, env = "WARREN_LOG", default_value = "info")]
    log: String,
    /// Threads that run the connections and the broker core: 1 runs them all on one
    /// thread, so that handing a message from a connection to the core and on to a
    /// consumer wakes no other thread; more is a work-stealing pool of that many (0: one
    /// per core) [default: 1].
    #[arg(long, env = "WARREN_THREADS", default_value_t = 1)]
    threads: usize,
    /// With --threads 1: microseconds the thread waits before sleeping for events when its
    /// last sleep was under a millisecond and the wake since found less than this much
    /// work, so that one wake-up serves several clients' messages (up to this much more
    /// latency a hop; none when idle, lightly loaded or saturated). Whether it saves CPU
    /// depends on what a sleep costs on the machine: measure before setting it. 0 (the
    /// default) sleeps at once.
    #[arg(long, env = "WARREN_WAKE_GATHER_US", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=warren::server::gather::MAX_GATHER_US))]
    wake_gather_us: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => run_serve(args),
        #[cfg(not(madsim))]
        Command::Ctl(args) => warren::admin::ctl::run(args, default_data_dir()),
        #[cfg(not(madsim))]
        Command::Perf(args) => run_perf(args),
    }
}

#[cfg(not(madsim))]
fn run_perf(args: warren::perf::PerfArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren perf: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(warren::perf::run(args)) {
        Ok(summary) => match serde_json::to_string(&summary) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warren perf: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("warren perf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("warren");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/warren"),
        None => PathBuf::from("warren-data"),
    }
}

/// The settings of `warren serve`: the server's, the store's, and the `[cluster]`
/// section's when the node is a cluster member.
type Settings = (ServerConfig, StoreOptions, Option<ClusterSettings>);

fn server_config(args: &ServeArgs) -> Result<Settings, String> {
    let mut config = ServerConfig {
        data_dir: default_data_dir(),
        ..ServerConfig::default()
    };
    let mut store = StoreOptions::default();
    let mut cluster = None;
    if let Some(path) = &args.config {
        let mut file = FileConfig::load(path)?;
        if let Some(section) = file.cluster.take() {
            cluster = Some(section.settings()?);
        }
        store.sync = file.sync.unwrap_or(store.sync);
        store.reserve_bytes = file.store_reserve_bytes.unwrap_or(store.reserve_bytes);
        store.sync_gap_ms = file.sync_gap_ms.unwrap_or(store.sync_gap_ms);
        file.apply(&mut config)?;
    }
    if let Some(v) = args.sync {
        store.sync = v;
    }
    if let Some(v) = args.sync_gap_ms {
        store.sync_gap_ms = v;
    }
    if store.sync_gap_ms > MAX_SYNC_GAP_MS {
        return Err(format!(
            "sync_gap_ms = {} is more than {MAX_SYNC_GAP_MS}: confirms would wait that long",
            store.sync_gap_ms
        ));
    }
    if let Some(v) = args.bind {
        config.bind = v;
    }
    if let Some(v) = args.amqp_port {
        config.amqp_port = v;
    }
    if let Some(v) = args.http_port {
        config.http_port = v;
    }
    if let Some(v) = args.amqps_port {
        let Some(tls) = &mut config.tls else {
            return Err(
                "--amqps-port needs a [tls] section (certfile, keyfile) in the config file".into(),
            );
        };
        tls.port = v;
    }
    if let Some(v) = args.https_port {
        let Some(tls) = &mut config.http_tls else {
            return Err(
                "--https-port needs an [http_tls] section (certfile, keyfile) in the config file"
                    .into(),
            );
        };
        tls.port = v;
    }
    if let Some(v) = &args.data_dir {
        config.data_dir = v.clone();
    }
    if let Some(v) = &args.node_name {
        config.node_name = Some(v.clone());
    }
    Ok((config, store, cluster))
}

/// The runtime of `warren serve`: one thread, gathering wake-ups for `gather`
/// ([`warren::server::gather`]), or a pool of `threads` (0: one per core).
fn serve_runtime(threads: usize, gather: Duration) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads == 1 {
        let mut b = tokio::runtime::Builder::new_current_thread();
        if !gather.is_zero() {
            let hooks = Arc::new(WakeGather::new(gather));
            let unpark = Arc::clone(&hooks);
            b.on_thread_park(move || hooks.before_park())
                .on_thread_unpark(move || unpark.after_unpark());
        }
        b
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 1 {
            b.worker_threads(threads);
        }
        b
    };
    builder.enable_all().build()
}

fn run_serve(args: ServeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let (mut config, mut store_options, cluster) = match server_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = create_data_dir(&config.data_dir) {
        eprintln!(
            "warren: cannot create data directory {}: {e}",
            config.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    if let Err(e) = fit_descriptors(&mut config, &mut store_options) {
        eprintln!("warren: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match serve_runtime(args.threads, Duration::from_micros(args.wake_gather_us)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The broker's names, and the seed of its hash maps, come from the OS's randomness.
    let seed = rand::RngCore::next_u64(&mut rand::rngs::OsRng);
    let store = match FjallStore::open(&config.data_dir, store_options) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(data_dir = %config.data_dir.display(), amqp_port = config.amqp_port, sync = %store_options.sync, "starting warren");
    let served = match cluster {
        Some(cluster) => runtime.block_on(warren::node::cluster::run(
            config,
            cluster,
            store,
            seed,
            shutdown_signal(&runtime),
        )),
        None => {
            let reloads = reload_on_hangup(&runtime, args);
            runtime.block_on(warren::node::run(
                config,
                Box::new(store),
                seed,
                shutdown_signal(&runtime),
                reloads,
                None,
            ))
        }
    };
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warren: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Creates the data directory (and missing parents) readable by the broker's user only:
/// it holds the messages and the node file's admin token. An existing directory keeps its
/// mode.
fn create_data_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Raises the open-file limit to the hard limit and fits the connection limit and the
/// store's open files under it; logs what was chosen.
fn fit_descriptors(config: &mut ServerConfig, store: &mut StoreOptions) -> Result<(), String> {
    use warren::server::descriptors;
    let open_files = descriptors::raise_open_file_limit();
    let Some(plan) = descriptors::plan(open_files, config.max_connections, store.max_open_files)
    else {
        return Err(format!(
            "the open-file limit ({}) is too low to serve any connection",
            open_files.unwrap_or_default()
        ));
    };
    // The default is lowered quietly; a limit the operator chose is lowered loudly.
    let chosen = config.max_connections != ServerConfig::default().max_connections;
    if plan.max_connections < config.max_connections && chosen {
        tracing::warn!(
            configured = config.max_connections,
            max_connections = plan.max_connections,
            open_file_limit = plan.open_files,
            "max_connections lowered to fit the open-file limit"
        );
    }
    tracing::info!(
        open_file_limit = plan.open_files,
        max_connections = plan.max_connections,
        store_files = plan.store_files,
        "file descriptors"
    );
    config.max_connections = plan.max_connections;
    store.max_open_files = plan.store_files;
    Ok(())
}

/// On each SIGHUP (`systemctl reload warren`), reads the settings again as at start
/// (flags, environment, config file) and hands them to the node, which takes what may
/// change while it runs; a file that does not parse is reported and changes nothing.
fn reload_on_hangup(
    runtime: &tokio::runtime::Runtime,
    args: ServeArgs,
) -> Option<tokio::sync::mpsc::Receiver<Box<ServerConfig>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match runtime.block_on(async { signal(SignalKind::hangup()) }) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the config cannot be reloaded");
            return None;
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    runtime.spawn(async move {
        while hangups.recv().await.is_some() {
            let mut config = match server_config(&args) {
                Ok((config, _, _)) => config,
                Err(e) => {
                    tracing::error!("config not reloaded: {e}");
                    continue;
                }
            };
            let mut store = StoreOptions::default();
            if let Err(e) = fit_descriptors(&mut config, &mut store) {
                tracing::error!("config not reloaded: {e}");
                continue;
            }
            if tx.send(Box::new(config)).await.is_err() {
                return;
            }
        }
    });
    Some(rx)
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed before it
/// returns, so before the node tells systemd it is ready: a SIGTERM right after READY=1
/// stops the broker gracefully instead of killing it.
fn shutdown_signal(runtime: &tokio::runtime::Runtime) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (interrupt, term) = runtime.block_on(async {
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    });
    let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
        match s {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for a stop signal");
                std::future::pending::<()>().await
            }
        }
    };
    async move {
        tokio::select! {
            _ = wait(interrupt) => {}
            _ = wait(term) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_is_created_for_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b");
        create_data_dir(&dir).unwrap();
        for d in [base.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
        // An existing directory is left as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_data_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o750);
    }
}
