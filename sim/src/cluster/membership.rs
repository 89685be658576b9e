//! Membership in the simulated cluster: the voters in effect at each index, the
//! operator's changes by the seed's [`Churn`] plan, and their bookkeeping once applied.

use super::*;

impl ClusterWorld {
    /// The voters and learners a store's content records: the first members, changed by
    /// each change it applied (none for an empty store: a node waiting to join).
    pub(super) fn config_of(&self, applied: &[Committed]) -> (Vec<NodeId>, Vec<NodeId>) {
        if applied.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let mut voters: Vec<NodeId> = (1..=self.cfg.nodes).collect();
        let mut learners = Vec::new();
        for c in applied {
            match &c.change {
                Some(Change::AddLearner(m)) => learners.push(m.id),
                Some(Change::Promote(id)) => {
                    learners.retain(|l| l != id);
                    voters.push(*id);
                }
                Some(Change::Remove(id)) => {
                    voters.retain(|v| v != id);
                    learners.retain(|l| l != id);
                }
                None => {}
            }
        }
        voters.sort_unstable();
        learners.sort_unstable();
        (voters, learners)
    }

    /// Whether the nodes holding an entry durably (`holds`) are a majority of the voters in
    /// effect where it was committed: those after every change before it, or, while the
    /// last of those changes may not yet be applied on the leader, those before it (one
    /// node apart: their majorities meet).
    pub(super) fn majority_holds(
        &self,
        index: u64,
        holds: impl Fn(&Node) -> bool,
    ) -> Result<(), String> {
        let holders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| holds(n))
            .map(|n| n.cfg.id)
            .collect();
        let majority =
            |c: &Vec<NodeId>| holders.iter().filter(|h| c.contains(h)).count() * 2 > c.len();
        let mut configs = self.configs.range(..=index).rev().map(|(_, v)| v);
        let now = configs
            .next()
            .expect("the first members are in effect from index 0");
        if majority(now) || configs.next().is_some_and(majority) {
            Ok(())
        } else {
            Err(format!("held durably by {holders:?}, voters {now:?}"))
        }
    }

    /// A membership change first applied (by any node) at `index`: the voters from the
    /// next index on; a member removed is stopped for good.
    pub(super) fn changed(&mut self, index: u64, change: &Change) -> Result<(), String> {
        let mut voters = self
            .configs
            .values()
            .next_back()
            .cloned()
            .expect("the first members");
        match change {
            Change::AddLearner(m) => {
                self.stats.learners_added += 1;
                if m != &address(m.id) {
                    return Err(format!("node {} was added with the addresses {m:?}", m.id));
                }
            }
            Change::Promote(id) => {
                self.stats.promotions += 1;
                voters.push(*id);
            }
            Change::Remove(id) => {
                self.stats.removals += 1;
                voters.retain(|v| v != id);
                self.removed.insert(*id);
            }
        }
        voters.sort_unstable();
        self.configs.insert(index + 1, voters);
        Ok(())
    }

    /// Node `to` was told by node `by` that it was removed, as of the index `index` through
    /// which `by` applied the log: the committed log must have removed it by then. It
    /// stops for good, as its driver stops it.
    pub(super) fn told_removed(
        &mut self,
        to: NodeId,
        by: NodeId,
        index: u64,
    ) -> Result<(), String> {
        let removed_at = self
            .committed
            .iter()
            .find_map(|(i, (_, _, c))| (*c == Some(Change::Remove(to))).then_some(*i));
        if removed_at.is_none_or(|at| at > index) {
            return Err(format!(
                "node {to} was told by node {by} that it was removed as of index {index}, and the committed log removed it at {removed_at:?}"
            ));
        }
        self.stats.told_removed += 1;
        self.retired.insert(to);
        self.crash_node(to)
    }

    /// The operator's membership changes are done: a member was removed, and the node that
    /// joined votes (for [`Churn::AddThenRemoveIt`], the one removed is that node, unless it
    /// was promoted and led).
    pub(super) fn churn_done(&self) -> bool {
        let joining = self.cfg.nodes + 1;
        let votes = self
            .configs
            .values()
            .next_back()
            .is_some_and(|v| v.contains(&joining));
        self.faults.churn_after_ms.is_none()
            || match self.faults.churn {
                Churn::AddThenRemove => !self.removed.is_empty(),
                Churn::RemoveThenAdd => !self.removed.is_empty() && votes,
                Churn::AddThenRemoveIt => !self.removed.is_empty(),
            }
    }

    /// The operator's next step, by the seed's [`Churn`]. The leader refuses while another
    /// change is pending, and a removal that would leave too few voters answering; the
    /// operator tries again (another member, for a removal).
    pub(super) fn operate(&mut self) -> Result<(), String> {
        let joining = self.cfg.nodes + 1;
        let Some(leader) = (1..=self.size()).find(|&id| {
            self.nodes[(id - 1) as usize]
                .replica
                .as_ref()
                .is_some_and(|r| r.role() == Role::Leader)
        }) else {
            return Ok(());
        };
        let voters = self
            .configs
            .values()
            .next_back()
            .cloned()
            .expect("the first members");
        let learner = self.nodes[(leader - 1) as usize]
            .replica
            .as_ref()
            .expect("the leader is up")
            .learners()
            .contains(&joining);
        let add = (!voters.contains(&joining) && !learner && !self.removed.contains(&joining))
            .then(|| Change::AddLearner(address(joining)));
        let others: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|&v| v != leader && v != joining)
            .collect();
        let remove_other = (self.removed.is_empty() && !others.is_empty())
            .then(|| Change::Remove(others[self.rng.gen_range(0..others.len())]));
        let change = match self.faults.churn {
            // Its promotion is the leader's to propose.
            Churn::AddThenRemove if learner => None,
            Churn::AddThenRemove => add.or(remove_other),
            Churn::RemoveThenAdd => {
                let killed_first = self.faults.kill_after_ms.is_none() || self.kept_down.is_some();
                if self.removed.is_empty() {
                    remove_other.filter(|_| killed_first)
                } else {
                    add
                }
            }
            // Promoted already and leading, it cannot be removed: another member is.
            Churn::AddThenRemoveIt if leader == joining => remove_other,
            Churn::AddThenRemoveIt => add
                .or_else(|| (!self.removed.contains(&joining)).then_some(Change::Remove(joining))),
        };
        let Some(change) = change else {
            return Ok(());
        };
        self.operations += 1;
        let proposal = OPERATOR | self.operations;
        let r = self
            .node(leader)
            .replica
            .as_mut()
            .expect("the leader is up");
        match r.propose_change(proposal, change) {
            Ok(()) => {
                self.stats.changes_proposed += 1;
                self.drive(leader)
            }
            Err(_) => {
                self.stats.changes_refused += 1;
                Ok(())
            }
        }
    }
}
