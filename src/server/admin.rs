//! Administrative requests to the core task: how the HTTP API (and through it `warren
//! ctl`) reaches the broker. Answers wait in the broker until their changes are on disk
//! ([`crate::broker::Output::Admin`]).

use tokio::sync::{mpsc, oneshot, watch};

use crate::broker::admin::{AdminError, AdminErrorKind, AdminRequest, AdminResult};

use super::core::CoreMsg;
use super::tls_sessions::{TlsSession, TlsSessions};

/// A handle on the core for administrative requests. It holds the core's channel weakly,
/// so that an idle HTTP connection never keeps a stopping broker alive.
#[derive(Debug, Clone)]
pub struct AdminHandle {
    core: mpsc::WeakSender<CoreMsg>,
    app_running: watch::Receiver<bool>,
    tls_sessions: TlsSessions,
}

impl AdminHandle {
    /// A handle on the core behind `core`, whose lifecycle state `app_running` follows,
    /// and on the driver's record of TLS sessions.
    pub(super) fn new(
        core: &mpsc::Sender<CoreMsg>,
        app_running: watch::Receiver<bool>,
        tls_sessions: TlsSessions,
    ) -> Self {
        AdminHandle {
            core: core.downgrade(),
            app_running,
            tls_sessions,
        }
    }

    /// The TLS session of the live connection from `peer` (as the broker's listings name
    /// it), if it came over TLS.
    pub fn tls_session(&self, peer: &str) -> Option<TlsSession> {
        self.tls_sessions.get(peer)
    }

    /// Whether the AMQP side runs (not stopped by `warren ctl stop_app`), as the broker
    /// core last reported.
    pub fn app_running(&self) -> bool {
        *self.app_running.borrow()
    }

    /// Sends a request to the core and waits for its answer (after its durable changes
    /// are synced).
    pub async fn call(&self, request: AdminRequest) -> AdminResult {
        let stopped = || {
            AdminError::new(
                AdminErrorKind::PreconditionFailed,
                "the broker is shutting down",
            )
        };
        let core = self.core.upgrade().ok_or_else(stopped)?;
        let (tx, rx) = oneshot::channel();
        core.send(CoreMsg::Admin { request, reply: tx })
            .await
            .map_err(|_| stopped())?;
        drop(core);
        rx.await.map_err(|_| stopped())?
    }
}
