//! Policies and operator policies as an administrator sets, clears and lists them
//! (`set_policy`, `set_operator_policy`, `/api/policies`, `/api/operator-policies`).
//!
//! A change is put in force at once on every queue and exchange of the vhost (a lower
//! length limit drops or dead-letters what is over it, as a publish would), and is durable
//! before it is answered.

use crate::store::{PolicyRecord, StoreOp};

use super::super::Broker;
use super::super::death::DeathReason;
use super::super::exchange::QueueId;
use super::super::policy::{MAX_POLICIES_PER_VHOST, Policy, Target};
use super::{AdminReply, AdminResult, bad_request, not_found};

impl Broker {
    pub(super) fn list_policies(&self, operator: bool, vhost: Option<&str>) -> AdminResult {
        if let Some(v) = vhost
            && !self.topology.vhosts.contains_key(v)
        {
            return Err(not_found(format!("Virtual host '{v}' does not exist")));
        }
        let mut names: Vec<&String> = self
            .topology
            .vhosts
            .keys()
            .filter(|n| vhost.is_none_or(|v| v == n.as_str()))
            .collect();
        names.sort();
        let all = names
            .into_iter()
            .filter_map(|n| self.topology.vhosts.get(n))
            .flat_map(|v| v.policies.iter())
            .filter(|p| p.record.operator == operator)
            .map(|p| p.record.clone())
            .collect();
        Ok(AdminReply::Policies(all))
    }

    pub(super) fn set_policy(&mut self, record: PolicyRecord) -> AdminResult {
        let vhost = record.vhost.clone();
        let Some(v) = self.topology.vhosts.get_mut(&vhost) else {
            return Err(not_found(format!("Virtual host '{vhost}' does not exist")));
        };
        let policy = Policy::new(record.clone())
            .map_err(|e| bad_request(format!("Validation failed\n\n{e}\n")))?;
        let replaces = v.policies.get(record.operator, &record.name).is_some();
        if !replaces && v.policies.len() >= MAX_POLICIES_PER_VHOST {
            return Err(bad_request(format!(
                "Validation failed\n\nvhost '{vhost}' has {MAX_POLICIES_PER_VHOST} policies, the most it may hold\n"
            )));
        }
        let slot = v.policies.put(policy);
        self.round.journal.push(StoreOp::PutPolicy(record));
        self.refresh_policies(&vhost, slot);
        Ok(AdminReply::Put { created: !replaces })
    }

    pub(super) fn clear_policy(&mut self, operator: bool, vhost: &str, name: &str) -> AdminResult {
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return Err(not_found(format!("Virtual host '{vhost}' does not exist")));
        };
        let Some(slot) = v.policies.remove(operator, name) else {
            return Err(not_found("Parameter does not exist"));
        };
        self.round.journal.push(StoreOp::DeletePolicy {
            operator,
            vhost: vhost.to_string(),
            name: name.to_string(),
        });
        self.refresh_policies(vhost, slot);
        Ok(AdminReply::Done)
    }

    /// Puts the vhost's policies in force on each of its exchanges and queues after the
    /// policy in `slot` was put or removed. Each name is matched against that policy
    /// only ([`PolicyMatches`](super::super::policy::PolicyMatches)): a change costs one
    /// match per queue and exchange, not one per policy as well.
    fn refresh_policies(&mut self, vhost: &str, slot: usize) {
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return;
        };
        for (name, x) in v.exchanges.iter_mut() {
            let mut matches = x.policy_matches;
            v.policies
                .rematch(slot, name, Target::Exchange, &mut matches);
            v.policies
                .applied_from(matches, Target::Exchange)
                .apply_to_exchange(x);
        }
        let mut queues: Vec<(QueueId, super::super::policy::Applied)> = v
            .queues
            .iter()
            .filter_map(|(name, id)| {
                let mut matches = self.topology.queues.get(id)?.decl.policy.matches;
                v.policies.rematch(slot, name, Target::Queue, &mut matches);
                Some((*id, v.policies.applied_from(matches, Target::Queue)))
            })
            .collect();
        self.counters.work += queues.len() as u64;
        // Queue ids are issued in order: dead letters go out in the same order every run.
        queues.sort_by_key(|(id, _)| *id);
        for (id, applied) in queues {
            self.apply_queue_policy(id, applied);
        }
        self.route_dead_letters();
    }

    /// Puts one queue's policies in force: what a lower limit leaves over it is dropped
    /// from the head (dead-lettered if the queue says so), and a new expiry counts from now.
    fn apply_queue_policy(&mut self, id: QueueId, applied: super::super::policy::Applied) {
        let now = self.now_ms;
        let Some(q) = self.topology.queues.get_mut(&id) else {
            return;
        };
        let expires_before = q.decl.settings.expires_ms;
        if !applied.apply_to_queue(&mut q.decl) {
            return;
        }
        if q.decl.settings.expires_ms != expires_before {
            q.expiry.touch(now);
        }
        let dropped = q.enforce_limits();
        if !dropped.is_empty() {
            self.queue_dead_letters(id, dropped, DeathReason::MaxLen);
        }
        self.schedule_dispatch(id);
    }
}
