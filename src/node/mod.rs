//! A warren node: the AMQP side ([`crate::server`]) and the management HTTP API
//! ([`crate::admin::http`]) side by side over one administrative handle on the broker
//! core. Neither knows of the other; this is where they meet.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::admin::http::{self, HttpSettings};
use crate::cluster::status::ClusterView;
use crate::server::{self, ServerConfig, TlsListener};
use crate::store::Store;

#[cfg(not(madsim))]
pub mod cluster;

/// Runs a node until `shutdown` completes: recovers the broker from `store`, listens for
/// AMQP and HTTP (taking the configs `reloads` brings meanwhile), then stops the HTTP
/// API, closes the AMQP connections and syncs the store.
pub async fn run(
    config: ServerConfig,
    store: Box<dyn Store + Send>,
    seed: u64,
    shutdown: impl Future<Output = ()>,
    reloads: Option<mpsc::Receiver<Box<ServerConfig>>>,
    cluster: Option<ClusterView>,
) -> std::io::Result<()> {
    let (bind, port, data_dir) = (config.bind, config.http_port, config.data_dir.clone());
    let node_name = config.node_name.clone();
    // The HTTPS certificates are checked before the broker recovers, as AMQPS's are.
    let https = match &config.http_tls {
        Some(tls) => Some(Arc::new(
            TlsListener::bind("HTTPS", bind, tls, &[b"http/1.1"]).await?,
        )),
        None => None,
    };
    let mut amqp = server::start(config, store, seed).await?;
    if let Some(reloads) = reloads {
        amqp.set_reloads(reload_https(reloads, https.clone()));
    }
    let settings = HttpSettings {
        bind,
        port,
        data_dir,
        amqp: amqp.local_addr(),
        amqps: amqp.tls_local_addr(),
        https,
        node_name,
        cluster,
    };
    let http = http::start(settings, amqp.admin()).await?;
    let tls = match (amqp.tls_local_addr(), http.https) {
        (None, None) => String::new(),
        (amqps, https) => format!(
            " (TLS: AMQPS on {}, HTTPS on {})",
            amqps.map_or("none".into(), |a| a.to_string()),
            https.map_or("none".into(), |a| a.to_string())
        ),
    };
    notify_service_manager(&format!(
        "READY=1\nSTATUS=AMQP on {}, HTTP on {}{tls}",
        amqp.local_addr(),
        http.local
    ));
    let accepted = amqp.accept_until(shutdown).await;
    notify_service_manager("STOPPING=1\nSTATUS=stopping");
    http.stop();
    accepted?;
    amqp.stop().await
}

/// Takes the HTTPS listener's share of each config read again (its certificates) and
/// passes the config on to the AMQP side.
fn reload_https(
    mut reloads: mpsc::Receiver<Box<ServerConfig>>,
    https: Option<Arc<TlsListener>>,
) -> mpsc::Receiver<Box<ServerConfig>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(new) = reloads.recv().await {
            match &https {
                Some(https) => https.reload(new.http_tls.as_ref(), "http_tls"),
                None if new.http_tls.is_some() => tracing::warn!(
                    "[http_tls] was added to the config; HTTPS starts only with a restart"
                ),
                None => {}
            }
            if tx.send(new).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Tells systemd how the node is doing when it runs as a `Type=notify` service (the
/// `NOTIFY_SOCKET` protocol of sd_notify(3)); does nothing otherwise.
fn notify_service_manager(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    if let Err(e) = send_notification(&path, state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

#[cfg(target_os = "linux")]
fn send_notification(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    // "@name" is a socket in the abstract namespace.
    let address = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(path)?,
    };
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn send_notification(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    std::os::unix::net::UnixDatagram::unbound()?.send_to(state.as_bytes(), path)?;
    Ok(())
}
