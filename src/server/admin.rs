//! Administrative requests to the core task: how the HTTP API (and through it `warren
//! ctl`) reaches the broker, and how answers wait for their changes to be on disk.

use std::collections::VecDeque;

use tokio::sync::{mpsc, oneshot};

use crate::broker::admin::{AdminError, AdminErrorKind, AdminRequest, AdminResponse, AdminResult};

use super::core::CoreMsg;

/// Where the core task sends an answer.
pub type AdminReplyTx = oneshot::Sender<AdminResult>;

/// Answers held back until the store batch with their durable changes is synced.
#[derive(Debug, Default)]
pub(super) struct AdminWaiters {
    /// In batch order: the core's batches increase, and so do the answers' batches.
    waiting: VecDeque<(u64, AdminReplyTx, AdminResult)>,
}

impl AdminWaiters {
    /// Answers now, or once `response.durable_batch` is synced.
    pub(super) fn answer(&mut self, response: AdminResponse, reply: AdminReplyTx) {
        match response.durable_batch {
            // The requester may have given up; nothing to do then.
            None => drop(reply.send(response.result)),
            Some(batch) => {
                debug_assert!(self.waiting.back().is_none_or(|(b, _, _)| *b <= batch));
                self.waiting.push_back((batch, reply, response.result));
            }
        }
    }

    /// Every batch up to `batch` is synced.
    pub(super) fn persisted(&mut self, batch: u64) {
        while self.waiting.front().is_some_and(|(b, _, _)| *b <= batch) {
            if let Some((_, reply, result)) = self.waiting.pop_front() {
                let _ = reply.send(result);
            }
        }
    }
}

/// A handle on the core for administrative requests. It holds the core's channel weakly,
/// so that an idle HTTP connection never keeps a stopping broker alive.
#[derive(Debug, Clone)]
pub struct AdminHandle {
    core: mpsc::WeakSender<CoreMsg>,
}

impl AdminHandle {
    /// A handle on the core behind `core`.
    pub fn new(core: &mpsc::Sender<CoreMsg>) -> Self {
        AdminHandle {
            core: core.downgrade(),
        }
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
