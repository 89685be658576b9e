//! Membership changes on a replica: who votes and who learns, the changes an operator
//! proposes (a learner added, a member removed) and the promotions the leader makes, each
//! checked against the members that answer, and their application to raft-rs's
//! configuration once committed.

use protobuf::Message as _;
use raft::ProgressState;
use raft::StateRole;
use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};

use super::settings::{MAX_MEMBERS, MemberAddress};
use super::{Change, MAX_PROPOSALS_IN_FLIGHT, NodeId, PROMOTE_WITHIN, ProposeError, Replica};

/// The context that marks a notice of removal ([`Replica::removal_notice`]).
const REMOVED_CONTEXT: &[u8] = b"warren: not a member";

/// The context that marks a learner's question to the voters after hearing no leader for
/// a while ([`Replica::ask_if_removed`]).
const ASK_CONTEXT: &[u8] = b"warren: am I a member";

/// Election timeouts without a word from a leader after which a learner asks.
const LEARNER_ASKS_AFTER: u64 = 2;

impl Replica {
    /// The voters of the configuration in effect here (the last one applied), in order.
    pub fn voters(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self.node.raft.prs().conf().voters().ids().iter().collect();
        all.sort_unstable();
        all
    }

    /// The learners of the configuration in effect here, in order.
    pub fn learners(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .node
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        all.sort_unstable();
        all
    }

    /// A committed change removed this node: it must stop (its store no longer follows the
    /// cluster's). A node knows members once it is one (a node waiting to join knows none
    /// until it takes the snapshot that makes it a learner), so a configuration without it
    /// is one that removed it.
    ///
    /// A member's notice of removal counts too: a node removed while cut off never
    /// applies its removal, and learns of it when it next campaigns.
    pub fn removed(&self) -> bool {
        let id = self.node.raft.id;
        let (voters, learners) = (self.voters(), self.learners());
        self.removal_notice.is_some()
            || !voters.is_empty() && !voters.contains(&id) && !learners.contains(&id)
    }

    /// The member that told this node it was removed, and the index through which that
    /// member had applied the log: the driver stops the node, as it does when the node
    /// applies its own removal.
    pub fn removal_notice(&self) -> Option<(NodeId, u64)> {
        self.removal_notice
    }

    /// Tells `from`, a node that sent a message and is neither voter nor learner in the
    /// configuration applied here, that it is not a member, with the index through which
    /// this node applied the log. Nothing is said while this node knows no members (it
    /// waits to join) or is removed itself, and a node is told at most once an election
    /// timeout.
    pub(super) fn tell_if_removed(&mut self, from: NodeId) {
        let id = self.node.raft.id;
        if from == 0
            || from == id
            || self.node.raft.prs().get(from).is_some()
            || self.voters().is_empty()
            || self.removed()
        {
            return;
        }
        let clock = self.clock;
        let timeout = self.election_ticks as u64;
        if self
            .told_removed
            .get(&from)
            .is_some_and(|&at| clock < at.saturating_add(timeout))
        {
            return;
        }
        // Only nodes with the cluster's cookie reach this; the map stays small anyway.
        if self.told_removed.len() >= 4 * MAX_MEMBERS {
            self.told_removed.clear();
        }
        self.told_removed.insert(from, clock);
        let mut notice = Message::default();
        notice.set_msg_type(MessageType::MsgUnreachable);
        notice.from = id;
        notice.to = from;
        notice.index = self.node.raft.raft_log.applied;
        notice.context = REMOVED_CONTEXT.into();
        self.outbox.push(notice);
    }

    /// A learner that has heard from no leader for [`LEARNER_ASKS_AFTER`] election
    /// timeouts asks the voters it knows, once an election timeout, whether it is still a
    /// member. A voter makes itself heard by campaigning; a learner never campaigns, so
    /// without this a learner removed while cut off would hear nothing ever after. A member
    /// answers a node outside its configuration as it answers any message from one
    /// ([`Replica::tell_if_removed`]), and says nothing to a member.
    pub(super) fn ask_if_removed(&mut self) {
        let id = self.node.raft.id;
        let timeout = self.election_ticks as u64;
        let quiet = self.node.raft.election_elapsed as u64;
        if timeout == 0
            || quiet < LEARNER_ASKS_AFTER * timeout
            || !quiet.is_multiple_of(timeout)
            || self.removed()
            || !self.learners().contains(&id)
        {
            return;
        }
        let applied = self.node.raft.raft_log.applied;
        for voter in self.voters() {
            let mut ask = Message::default();
            ask.set_msg_type(MessageType::MsgUnreachable);
            ask.from = id;
            ask.to = voter;
            ask.index = applied;
            ask.context = ASK_CONTEXT.into();
            self.outbox.push(ask);
        }
    }

    /// Takes `message` if it is a notice of removal or a learner's question: true if it
    /// was one, never to be stepped. raft-rs keeps `MsgUnreachable` to a node itself and
    /// never sends it, so one from a peer is one of these or nothing. A question is
    /// answered as any message from its sender would be. A notice is believed when this
    /// node still counts itself a member and the sender applied the log further than it:
    /// the configuration there does not hold it, so a committed change removed it since.
    /// A notice from a member behind this node (one that has not applied this node's
    /// addition, or its return) says nothing.
    pub(super) fn take_removal_notice(&mut self, message: &Message) -> bool {
        if message.get_msg_type() != MessageType::MsgUnreachable {
            return false;
        }
        if message.context.as_ref() == ASK_CONTEXT {
            self.tell_if_removed(message.from);
            return true;
        }
        let id = self.node.raft.id;
        let member = self.voters().contains(&id) || self.learners().contains(&id);
        if message.context.as_ref() == REMOVED_CONTEXT
            && member
            && message.index > self.node.raft.raft_log.applied
            && self.removal_notice.is_none()
        {
            self.removal_notice = Some((message.from, message.index));
        }
        true
    }

    /// Whether a membership change is proposed and not yet applied here.
    pub fn change_pending(&self) -> bool {
        self.node.raft.has_pending_conf()
    }

    /// Proposes a membership change, when this node leads and no other change is pending.
    /// `proposal` is reported back as for [`Replica::propose`]. A node is added as a
    /// learner ([`Change::AddLearner`]); promotions are the leader's own.
    pub fn propose_change(&mut self, proposal: u64, change: Change) -> Result<(), ProposeError> {
        if self.node.raft.state != StateRole::Leader || self.node.raft.lead_transferee.is_some() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        if self.change_pending() {
            return Err(ProposeError::Refused(
                "another membership change is in progress; try again once it is applied".into(),
            ));
        }
        if self.in_flight.len() >= MAX_PROPOSALS_IN_FLIGHT {
            return Err(ProposeError::Busy);
        }
        let (voters, learners) = (self.voters(), self.learners());
        let id = change.node();
        let member = voters.contains(&id) || learners.contains(&id);
        let refuse = |why: String| Err(ProposeError::Refused(why));
        let (kind, context) = match &change {
            Change::AddLearner(address) => {
                if id == 0 {
                    return refuse("node ids start at 1".into());
                }
                if member {
                    return refuse(format!("node {id} is already a member"));
                }
                if voters.len() + learners.len() >= MAX_MEMBERS {
                    return refuse(format!("a cluster has at most {MAX_MEMBERS} members"));
                }
                // A node joining must be sent the leader's store, which records the
                // members: a log that still starts at its first entry would be replayed
                // to it from there, where it knows no members (a cluster started before
                // stores recorded them, and not yet compacted).
                if self.node.store().first() <= 1 {
                    return refuse(
                        "the leader's log still starts at its first entry; add members once \
                         it has compacted"
                            .into(),
                    );
                }
                let context = serde_json::to_vec(address)
                    .map_err(|e| ProposeError::Refused(e.to_string()))?;
                (ConfChangeType::AddLearnerNode, context)
            }
            Change::Promote(_) => {
                if !learners.contains(&id) {
                    return refuse(format!("node {id} is not a learner"));
                }
                (ConfChangeType::AddNode, Vec::new())
            }
            Change::Remove(_) => {
                if !member {
                    return refuse(format!("node {id} is not a member"));
                }
                if id == self.node.raft.id {
                    return refuse(format!(
                        "node {id} leads the cluster: stop it, and remove it once another member \
                         leads"
                    ));
                }
                // The change commits under the current voters, and the voters left must
                // still have a majority that answers, or the cluster could commit nothing
                // more: both need an answering majority.
                let remaining: Vec<NodeId> = voters.iter().copied().filter(|&v| v != id).collect();
                if voters.contains(&id)
                    && !(self.alive_majority(&voters) && self.alive_majority(&remaining))
                {
                    return refuse(format!(
                        "removing node {id} would leave too few of the other voters {remaining:?} \
                         answering to commit: bring the members that are down back first"
                    ));
                }
                (ConfChangeType::RemoveNode, Vec::new())
            }
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        let bytes = context.len() as u64;
        let before = self.node.raft.raft_log.last_index();
        let proposed = self.node.propose_conf_change(context, cc);
        self.track(proposed, before, proposal, bytes)
    }

    /// On the leader: promotes a learner that has caught up (within [`PROMOTE_WITHIN`] of
    /// the commit index), when no other change is pending.
    pub(super) fn maybe_promote(&mut self) {
        let raft = &self.node.raft;
        if raft.state != StateRole::Leader
            || raft.lead_transferee.is_some()
            || self.change_pending()
        {
            return;
        }
        let commit = raft.raft_log.committed;
        let last = raft.raft_log.last_index();
        let voters = self.voters();
        // A learner that answers and takes the log as it grows, and whose promotion leaves
        // a majority of the voters answering. One that holds the whole log counts too
        // while raft-rs still probes it: after a snapshot that reached the leader's last
        // entry, it is probed until an append with more succeeds, which an idle cluster
        // never sends.
        let ready = self.learners().into_iter().find(|&id| {
            raft.prs().get(id).is_some_and(|p| {
                p.matched > 0
                    && p.matched + PROMOTE_WITHIN >= commit
                    && (p.state == ProgressState::Replicate
                        || p.state == ProgressState::Probe && p.matched >= last)
            }) && self.alive(id)
                && self.alive_majority(&[voters.as_slice(), &[id]].concat())
        });
        if let Some(id) = ready {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = id;
            // Refused only while proposals are over their bound: the next poll tries again.
            let _ = self.node.propose_conf_change(Vec::new(), cc);
        }
    }

    /// Applies a committed membership change to raft-rs's configuration, unless it does
    /// not decode or no longer fits (it was checked when proposed, against the
    /// configuration then; a change refused here changes nothing, on every member alike).
    pub(super) fn apply_change(&mut self, e: &Entry) -> Option<Change> {
        let mut cc = ConfChange::default();
        cc.merge_from_bytes(&e.data).ok()?;
        let id = cc.node_id;
        let (voters, learners) = (self.voters(), self.learners());
        let member = voters.contains(&id) || learners.contains(&id);
        let change = match cc.get_change_type() {
            ConfChangeType::AddLearnerNode => {
                let address: MemberAddress = serde_json::from_slice(&e.context).ok()?;
                (address.id == id && id != 0 && !member).then_some(Change::AddLearner(address))?
            }
            ConfChangeType::AddNode => learners.contains(&id).then_some(Change::Promote(id))?,
            ConfChangeType::RemoveNode => member.then_some(Change::Remove(id))?,
        };
        let cs = self.node.apply_conf_change(&cc).ok()?;
        self.node.mut_store().set_conf_state(cs);
        Some(change)
    }

    /// Whether `id` is this node or was heard from in this term, within the least election
    /// timeout (a new leader counts no member it heard from as a follower: the leader it
    /// replaced may be down since).
    pub(super) fn alive(&self, id: NodeId) -> bool {
        id == self.node.raft.id
            || self.heard.get(&id).is_some_and(|&(term, at)| {
                term == self.node.raft.term && at + self.election_ticks as u64 >= self.clock
            })
    }

    /// Whether the members of `voters` that are alive are a majority of them.
    pub(super) fn alive_majority(&self, voters: &[NodeId]) -> bool {
        let alive = voters.iter().filter(|&&v| self.alive(v)).count();
        alive > voters.len() / 2
    }
}
