//! A warren node: the AMQP side ([`crate::server`]) and the management HTTP API
//! ([`crate::admin::http`]) side by side over one administrative handle on the broker
//! core. Neither knows of the other; this is where they meet.

use std::future::Future;

use crate::admin::http::{self, HttpSettings};
use crate::server::{self, ServerConfig};
use crate::store::Store;

/// Runs a node until `shutdown` completes: recovers the broker from `store`, listens for
/// AMQP and HTTP (taking the configs `reloads` brings meanwhile), then stops the HTTP
/// API, closes the AMQP connections and syncs the store.
pub async fn run(
    config: ServerConfig,
    store: Box<dyn Store + Send>,
    seed: u64,
    shutdown: impl Future<Output = ()>,
    reloads: Option<tokio::sync::mpsc::Receiver<Box<ServerConfig>>>,
) -> std::io::Result<()> {
    let (bind, port, data_dir) = (config.bind, config.http_port, config.data_dir.clone());
    let node_name = config.node_name.clone();
    let mut amqp = server::start(config, store, seed).await?;
    if let Some(reloads) = reloads {
        amqp.set_reloads(reloads);
    }
    let settings = HttpSettings {
        bind,
        port,
        data_dir,
        amqp: amqp.local_addr(),
        node_name,
    };
    let http = http::start(settings, amqp.admin()).await?;
    notify_service_manager(&format!(
        "READY=1\nSTATUS=AMQP on {}, HTTP on {}",
        amqp.local_addr(),
        http.local
    ));
    let accepted = amqp.accept_until(shutdown).await;
    notify_service_manager("STOPPING=1\nSTATUS=stopping");
    http.stop();
    accepted?;
    amqp.stop().await
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
