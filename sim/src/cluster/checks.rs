//! The checks a cluster seed ends with, and the one on leaders at every step: one leader a
//! term, every batch confirmed and every change made within the liveness budget, confirmed
//! batches held durably by a majority of the final voters, and one log on every member
//! left.

use super::*;

impl ClusterWorld {
    pub(super) fn check_leaders(&mut self) -> Result<(), String> {
        for n in &self.nodes {
            let Some(r) = &n.replica else { continue };
            if r.role() != Role::Leader {
                continue;
            }
            // A broker started now would recover from this store: every batch confirmed in
            // this leader's term or before must be in it. (One confirmed in a later term, by
            // a leader elected once this one's lease ran out on a majority, need not be: a
            // leader that has not yet noticed it was replaced commits nothing more.)
            let (applied, applied_term) = n.applied.last().map_or((0, 0), |c| (c.index, c.term));
            if r.ready_to_serve(applied, applied_term) {
                self.stats.ready_checks += 1;
                let newest = self
                    .newest_confirmed
                    .range(..=r.term())
                    .map(|(term, (index, client, seq))| (*index, *term, *client, *seq))
                    .max();
                if let Some((index, term, client, seq)) =
                    newest.filter(|(index, ..)| *index > applied)
                {
                    return Err(format!(
                        "node {} may serve in term {} from a store that applied through index {applied}, without client {client}'s batch {seq}, confirmed at index {index} term {term}",
                        r.id(),
                        r.term()
                    ));
                }
            }
            match self.leaders.get(&r.term()) {
                Some(&l) if l != r.id() => {
                    return Err(format!(
                        "nodes {l} and {} both led term {}",
                        r.id(),
                        r.term()
                    ));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(r.term(), r.id());
                    self.stats.leader_terms += 1;
                }
            }
        }
        Ok(())
    }

    pub(super) fn all_done(&self) -> bool {
        let confirmed = self
            .clients
            .iter()
            .all(|c| c.confirmed.len() as u64 == BATCHES_PER_CLIENT);
        let top = self
            .nodes
            .iter()
            .map(|n| n.applied.len())
            .max()
            .unwrap_or(0);
        // A node is to be crashed and kept down: not done before that; nor before the
        // operator's membership changes are; nor while a member removed without applying
        // it runs on as a member (a voter campaigns, a learner that hears no leader asks,
        // and a member that hears either tells it).
        if self.faults.kill_after_ms.is_some() && self.kept_down.is_none()
            || !self.churn_done()
            || !self.removed_members_running().is_empty()
        {
            return false;
        }
        // The node kept down is left out until it is restarted, once the others have
        // elected a leader after it and applied an entry of that leader's (its first, if
        // every client's batches were confirmed before).
        let kept_down = match self.kept_down {
            Some((id, term, false)) => {
                if !self
                    .nodes
                    .iter()
                    .any(|n| n.applied.last().is_some_and(|c| c.term > term))
                {
                    return false;
                }
                Some(id)
            }
            _ => None,
        };
        confirmed
            && self
                .nodes
                .iter()
                .filter(|n| Some(n.cfg.id) != kept_down && !self.removed.contains(&n.cfg.id))
                .all(|n| n.applied.len() == top && n.replica.is_some())
    }

    /// Members removed that still run and count themselves voters or learners: they never
    /// applied their removal.
    pub(super) fn removed_members_running(&self) -> Vec<NodeId> {
        self.removed
            .iter()
            .copied()
            .filter(|&id| {
                !self.retired.contains(&id)
                    && self.nodes[(id - 1) as usize]
                        .replica
                        .as_ref()
                        .is_some_and(|r| r.voters().contains(&id) || r.learners().contains(&id))
            })
            .collect()
    }

    pub(super) fn final_check(&self, settled: bool) -> Result<(), String> {
        // What was confirmed is still where it was confirmed, in what the nodes hold
        // durably (not in what they applied, which is where it was confirmed from).
        let voters = self
            .configs
            .values()
            .next_back()
            .expect("the first members");
        for ((client, seq), (index, term)) in &self.confirmed {
            let data = encode(*client, *seq);
            let holders = self
                .nodes
                .iter()
                .filter(|n| voters.contains(&n.cfg.id) && n.holds(*index, *term, &data))
                .count();
            if holders * 2 <= voters.len() {
                let there: Vec<Option<(u64, String)>> = self
                    .nodes
                    .iter()
                    .map(|n| {
                        n.log
                            .entry(*index)
                            .map(|e| (e.term, String::from_utf8_lossy(&e.data).into_owned()))
                    })
                    .collect();
                return Err(format!(
                    "client {client}'s batch {seq}, confirmed at index {index} term {term}, is held durably by {holders} of the voters {voters:?} (the nodes' logs there: {there:?})"
                ));
            }
        }
        let mut first_seen: BTreeMap<u64, u64> = BTreeMap::new();
        let mut seen: BTreeSet<(u64, u64)> = BTreeSet::new();
        for (index, (_, data, _)) in &self.committed {
            let Some((c, s)) = decode(data) else { continue };
            if seen.insert((c, s)) {
                if let Some(&prev) = first_seen.get(&c)
                    && s < prev
                {
                    return Err(format!(
                        "client {c}'s batch {s} first appears at index {index}, after its batch {prev}"
                    ));
                }
                first_seen.insert(c, s);
            }
        }
        if !settled {
            let missing: Vec<(u64, usize)> = self
                .clients
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u64, c.confirmed.len()))
                .filter(|(_, n)| *n as u64 != BATCHES_PER_CLIENT)
                .collect();
            let applied: Vec<usize> = self.nodes.iter().map(|n| n.applied.len()).collect();
            let roles: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match &n.replica {
                    Some(r) => format!(
                        "{:?} in term {}, voters {:?}, learners {:?}",
                        r.role(),
                        r.term(),
                        r.voters(),
                        r.learners()
                    ),
                    None => "down".to_string(),
                })
                .collect();
            let kept_down = match self.kept_down {
                Some((id, term, false)) => format!(
                    "; node {id} crashed in it and kept down, the others to elect a leader after term {term} and settle"
                ),
                Some((id, _, true)) => format!(
                    "; node {id} crashed in it, kept down until every batch was confirmed, then restarted"
                ),
                None => String::new(),
            };
            let running = self.removed_members_running();
            let running = if running.is_empty() {
                String::new()
            } else {
                format!("; removed but still running as members, never told: {running:?}")
            };
            return Err(format!(
                "not settled {} ms after the faults stopped{kept_down}: confirmed per client {missing:?} of {BATCHES_PER_CLIENT}, applied per node {applied:?}, nodes {roles:?}{running}",
                self.cfg.liveness_ms
            ));
        }
        let log = |n: &Node| -> Vec<(u64, u64, Vec<u8>)> {
            n.applied
                .iter()
                .map(|c| (c.index, c.term, c.data.clone()))
                .collect()
        };
        // Every member left (not those removed) applied the same log.
        let mut left = self
            .nodes
            .iter()
            .filter(|n| !self.removed.contains(&n.cfg.id));
        let first = left.next().expect("members are left");
        let reference = log(first);
        for n in left {
            if log(n) != reference {
                return Err(format!(
                    "node {} applied a log other than node {}'s",
                    n.cfg.id, first.cfg.id
                ));
            }
        }
        Ok(())
    }
}
