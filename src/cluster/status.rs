//! What a cluster member knows of the cluster, as its Raft thread publishes it for the
//! node's supervisor and the HTTP API.

use tokio::sync::watch;

use super::settings::{MemberAddress, Membership};
use super::{NodeId, Role};

/// What a member knows of the cluster, published after every round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// The highest index known committed.
    pub commit: u64,
    /// The last index applied to the store.
    pub applied: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// The first index in the log: those before were compacted away, the store holding
    /// them.
    pub first_index: u64,
    /// Snapshots (this node's store) sent to members too far behind for the log.
    pub snapshots_sent: u64,
    /// Snapshots received from a leader and installed as this node's store.
    pub snapshots_installed: u64,
    /// On the leader: each member's matched index.
    pub progress: Vec<(NodeId, u64)>,
    /// On the leader: the members heard from within the last election timeout.
    pub active: Vec<NodeId>,
    /// A broker may be started from this node's store now ([`super::Replica::ready_to_serve`]):
    /// it would have all that was ever confirmed, and nothing would commit behind its back.
    pub ready: bool,
    /// On the leader: how long its batches took to commit.
    pub commit_latency: super::latency::CommitLatency,
    /// The members as of the last entry applied here.
    pub membership: Membership,
    /// Set when the thread stopped on an error: the node must stop.
    pub failed: Option<String>,
}

/// The HTTP API's view of the cluster: the members and this one's status.
#[derive(Clone)]
pub struct ClusterView {
    /// The configured members, this node included.
    pub configured: Vec<MemberAddress>,
    /// This node's status.
    pub status: watch::Receiver<Status>,
    /// Hands a membership change to the Raft thread.
    pub changes: ChangeSender,
}

/// Where a membership change goes, with where its outcome is to be sent: false when the
/// Raft thread cannot take it now (busy or stopped).
pub type ChangeSender = std::sync::Arc<
    dyn Fn(super::Change, tokio::sync::oneshot::Sender<Result<(), String>>) -> bool + Send + Sync,
>;

impl std::fmt::Debug for ClusterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterView")
            .field("configured", &self.configured)
            .field("status", &*self.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ClusterView {
    /// Every member with its addresses: the cluster's own list, or the configured one
    /// while this node knows none (it waits to join).
    pub fn members(&self) -> Vec<MemberAddress> {
        let status = self.status.borrow();
        if status.membership.members.is_empty() {
            self.configured.clone()
        } else {
            status.membership.members.clone()
        }
    }
}

impl Role {
    /// The role as the HTTP API and `warren ctl` name it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate | Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}
