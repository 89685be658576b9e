//! A warren node: the AMQP side ([`crate::server`]) and the management HTTP API
//! ([`crate::admin::http`]) side by side over one administrative handle on the broker
//! core. Neither knows of the other; this is where they meet.

use std::future::Future;

use crate::admin::http::{self, HttpSettings};
use crate::server::{self, ServerConfig};
use crate::store::Store;

/// Runs a node until `shutdown` completes: recovers the broker from `store`, listens for
/// AMQP and HTTP, then stops the HTTP API, closes the AMQP connections and syncs the
/// store.
pub async fn run(
    config: ServerConfig,
    store: Box<dyn Store + Send>,
    seed: u64,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (bind, port, data_dir) = (config.bind, config.http_port, config.data_dir.clone());
    let node_name = config.node_name.clone();
    let mut amqp = server::start(config, store, seed).await?;
    let settings = HttpSettings {
        bind,
        port,
        data_dir,
        amqp: amqp.local_addr(),
        node_name,
    };
    let http = http::start(settings, amqp.admin()).await?;
    let accepted = amqp.accept_until(shutdown).await;
    http.stop();
    accepted?;
    amqp.stop().await
}
