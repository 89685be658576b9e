//! Snapshots on a member: the leader sends its store to a member too far behind for its
//! log (in chunks, from a thread, stopped when it no longer leads or the member is
//! removed), and a member stages what it receives and installs it when Raft asks.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::transfer;
use super::{Driver, MemberIn, Membership, Message, Point, conf_state};

impl Driver {
    /// Takes a chunk of a snapshot being received, or its closing message: once every
    /// chunk is staged and synced, the message goes to Raft, and is carried out at once
    /// (so that no other transfer replaces the staged store before Raft asks for it).
    pub(super) fn receive_snapshot(&mut self, m: Message) -> Result<(), String> {
        let meta = m.get_snapshot().get_metadata();
        let point = (meta.index, meta.term);
        let Some(part) = transfer::Part::decode(&m.get_snapshot().data) else {
            tracing::warn!(
                from = m.from,
                "a snapshot message that does not decode: dropped"
            );
            return Ok(());
        };
        // A leader of an older term, or a point this node has committed already: Raft would
        // ignore the snapshot, so its chunks are not staged.
        if m.term < self.replica.term() || point.0 <= self.replica.commit_index() {
            return Ok(());
        }
        match part {
            transfer::Part::Chunk { id, seq, data } => {
                if seq == 0 {
                    self.staged = None;
                    self.incoming = match transfer::Incoming::start(&self.staging, id, point) {
                        Ok(i) => Some(i),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot stage a snapshot");
                            None
                        }
                    };
                }
                let taken = match self.incoming.as_mut() {
                    Some(i) => i.take(id, seq, point, data),
                    None => Ok(()),
                };
                if let Err(e) = taken {
                    tracing::warn!(from = m.from, error = %e, "a snapshot transfer failed");
                    self.incoming = None;
                }
            }
            transfer::Part::End { id, chunks } => {
                let Some(incoming) = self.incoming.take() else {
                    return Ok(());
                };
                match incoming.finish(id, chunks, point) {
                    Ok(()) => {
                        tracing::info!(
                            from = m.from,
                            index = point.0,
                            term = point.1,
                            "received a snapshot"
                        );
                        self.staged = Some(point);
                        let mut m = m;
                        m.mut_snapshot().data = Default::default();
                        self.replica.step(m);
                        let mut out = Vec::new();
                        self.drive(&mut out)?;
                    }
                    Err(e) => {
                        tracing::warn!(from = m.from, error = %e, "a snapshot transfer failed");
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the staged snapshot this node's store.
    pub(super) fn install(&mut self, point: Point) -> Result<(), String> {
        if self.staged != Some(point) {
            return Err(format!(
                "Raft took a snapshot at index {} term {} that was not staged ({:?} was)",
                point.0, point.1, self.staged
            ));
        }
        self.staged = None;
        let installed = self
            .store
            .install_snapshot(&self.staging)
            .map_err(|e| e.to_string())?;
        if installed != point {
            return Err(format!(
                "the snapshot installed holds index {} term {}, not {} term {}",
                installed.0, installed.1, point.0, point.1
            ));
        }
        (self.applied, self.applied_term) = point;
        self.unsynced_store = false;
        self.snapshots_installed += 1;
        if let Some(bytes) = self.store.members().map_err(|e| e.to_string())? {
            self.membership = Membership::decode(&bytes)?;
            self.forget_former_members();
        }
        tracing::warn!(
            index = point.0,
            term = point.1,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Starts sending this node's store to a member, unless a transfer to it runs.
    pub(super) fn send_snapshot(&mut self, mut m: Message) {
        let to = m.to;
        let peer = self.peer(to).cloned();
        let source = self.store.snapshot_source().and_then(|s| {
            let point = s.applied()?;
            let members = s.members()?;
            Ok((s, point, members))
        });
        let wanted = {
            let meta = m.get_snapshot().get_metadata();
            (meta.index, meta.term)
        };
        let (Some(peer), Ok((source, point, members))) = (peer, source) else {
            self.replica.snapshot_sent(to, false);
            return;
        };
        // The configuration the store holds, which the member takes with it.
        let membership = match members.map(|b| Membership::decode(&b)) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot send a snapshot");
                self.replica.snapshot_sent(to, false);
                return;
            }
            None => self.bootstrap.clone(),
        };
        if self.sending.contains_key(&to) || point.0 < wanted.0 {
            self.replica.snapshot_sent(to, false);
            return;
        }
        {
            let meta = m.mut_snapshot().mut_metadata();
            (meta.index, meta.term) = point;
            meta.set_conf_state(conf_state(&membership.voters, &membership.learners));
        }
        // Random, so that a restarted leader's transfer is never taken for the chunks of
        // one from before its restart.
        let id: u64 = rand::random();
        let inbox = self.inbox.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = cancel.clone();
        let started = std::thread::Builder::new()
            .name("warren-snapshot".into())
            .spawn(move || {
                let sent = match transfer::send(source, m, id, &peer, &cancelled) {
                    Ok(chunks) => {
                        tracing::info!(to, index = point.0, chunks, "sent a snapshot");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(to, error = %e, "cannot send a snapshot");
                        false
                    }
                };
                let _ = inbox.send(MemberIn::SnapshotSent { to, sent });
            });
        match started {
            Ok(_) => {
                self.sending.insert(to, cancel);
            }
            Err(e) => {
                tracing::warn!(to, error = %e, "cannot start a snapshot transfer");
                self.replica.snapshot_sent(to, false);
            }
        }
    }
}
