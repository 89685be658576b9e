//! The operator's policies: it sets and clears policies and operator policies on queues it
//! declares in its own vhosts, and checks the broker's listings against its own reading of
//! RabbitMQ's rules (the matching policy of highest priority, ties to the first name; the
//! operator policy's numbers capping the policy's), written here apart from the broker's.
//! It also sets and clears one limit policy on the workload's queues in `/`
//! ([`LIMIT_POLICY`]), which the message model applies to every publish.
//!
//! Answered changes must survive a crash; a change in flight at the crash may or may not
//! have, and what was recovered decides.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand::Rng;
use rand::rngs::SmallRng;
use regex::Regex;

use warren::broker::admin::{Actor, AdminErrorKind, AdminReply, AdminRequest, AdminResult};
use warren::proto::table::{FieldTable, FieldValue};
use warren::store::{PolicyRecord, Recovered};

use crate::Violation;

/// The policy on the workload's queues in `/`: `max-length` with `reject-publish`, which
/// the message model applies (nothing is dropped, publishes past it are nacked).
pub const LIMIT_POLICY: &str = "sim-limit";

/// Queues the operator declares in each of its vhosts.
const QUEUES: [&str; 3] = ["pa", "pa.1", "pb"];
const NAMES: [&str; 3] = ["pol-0", "pol-1", "pol-2"];
const PATTERNS: [&str; 5] = ["^p", "^pa", "\\.1$", ".*", "^pb$"];
/// Patterns of the limit policy over the workload's queues (`q0`..`q4`).
const LIMIT_PATTERNS: [&str; 4] = ["^q[0-4]$", "^q[02]$", "^q1$", "^q[34]$"];

/// Compares tables by content, whatever their key order.
fn by_key(t: &FieldTable) -> BTreeMap<String, FieldValue> {
    t.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

fn text(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

/// What the broker should list for one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    policy: Option<String>,
    operator_policy: Option<String>,
    definition: BTreeMap<String, FieldValue>,
}

/// The operator's policies and policy-governed queues.
#[derive(Debug, Default)]
pub struct PolicyBook {
    /// (operator, vhost, name) -> the policy as answered.
    policies: BTreeMap<(bool, String, String), PolicyRecord>,
    /// (vhost, name) of the queues it declared.
    queues: BTreeSet<(String, String)>,
    /// Vhosts whose policies or queues a crash left in doubt.
    doubtful: BTreeSet<String>,
    /// Changes applied by the broker (for the seed summary).
    pub changes: u64,
    /// Listings whose queues were checked against the rules.
    pub checked: u64,
}

impl PolicyBook {
    /// A request about policies, if the operator's roll picks one: `vhosts` are the
    /// operator's vhosts.
    pub fn pick(&self, rng: &mut SmallRng, vhosts: &[&str]) -> AdminRequest {
        let vhost = vhosts[rng.gen_range(0..vhosts.len())].to_string();
        let operator = rng.gen_bool(0.35);
        let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
        match rng.gen_range(0..12) {
            0..=3 => AdminRequest::SetPolicy(PolicyRecord {
                operator,
                vhost,
                name,
                pattern: PATTERNS[rng.gen_range(0..PATTERNS.len())].into(),
                apply_to: if operator || rng.gen_bool(0.7) {
                    ["queues", "all"][rng.gen_range(0..2)].into()
                } else {
                    "exchanges".into()
                },
                priority: rng.gen_range(0..4),
                definition: definition(rng, operator),
            }),
            4 | 5 => AdminRequest::ClearPolicy {
                operator,
                vhost,
                name,
            },
            // Exchanges too: the broker's invariants check that each runs under its
            // vhost's policies, however it was declared.
            6 if rng.gen_bool(0.3) => AdminRequest::DeclareExchange {
                actor: Actor::Node,
                vhost,
                name: ["pa.x", "px"][rng.gen_range(0..2)].into(),
                kind: "direct".into(),
                durable: true,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::default(),
            },
            6 => AdminRequest::DeclareQueue {
                actor: Actor::Node,
                vhost,
                name: QUEUES[rng.gen_range(0..QUEUES.len())].into(),
                durable: true,
                auto_delete: false,
                arguments: FieldTable::default(),
            },
            7 => AdminRequest::ListPolicies {
                operator,
                vhost: None,
            },
            8 | 9 => AdminRequest::ListQueues { vhost: Some(vhost) },
            10 => AdminRequest::SetPolicy(PolicyRecord {
                operator: false,
                vhost: "/".into(),
                name: LIMIT_POLICY.into(),
                pattern: LIMIT_PATTERNS[rng.gen_range(0..LIMIT_PATTERNS.len())].into(),
                apply_to: "queues".into(),
                priority: 0,
                definition: [
                    (
                        "max-length".to_string(),
                        FieldValue::I64(rng.gen_range(0..12)),
                    ),
                    ("overflow".to_string(), text("reject-publish")),
                ]
                .into_iter()
                .collect(),
            }),
            _ => AdminRequest::ClearPolicy {
                operator: false,
                vhost: "/".into(),
                name: LIMIT_POLICY.into(),
            },
        }
    }

    /// Whether the request is one of the book's.
    pub fn owns(request: &AdminRequest) -> bool {
        match request {
            AdminRequest::SetPolicy(_)
            | AdminRequest::ClearPolicy { .. }
            | AdminRequest::ListPolicies { .. } => true,
            AdminRequest::DeclareQueue { vhost, .. }
            | AdminRequest::DeclareExchange { vhost, .. }
            | AdminRequest::ListQueues { vhost: Some(vhost) } => vhost.starts_with("op-"),
            _ => false,
        }
    }

    /// The limit policy on `/` as the request sets it (`Some(None)`: cleared), if it is
    /// about the limit policy.
    pub fn limit_change(request: &AdminRequest) -> Option<Option<(String, u64)>> {
        match request {
            AdminRequest::SetPolicy(p) if p.vhost == "/" && p.name == LIMIT_POLICY => {
                Some(limit_of(p))
            }
            AdminRequest::ClearPolicy { vhost, name, .. }
                if vhost == "/" && name == LIMIT_POLICY =>
            {
                Some(None)
            }
            _ => None,
        }
    }

    /// Checks an answer and applies it; `vhost_known` says whether the operator's state
    /// has a vhost (and whether that is certain). Returns whether the request changed
    /// something durable.
    pub fn answered(
        &mut self,
        request: &AdminRequest,
        result: &AdminResult,
        vhost_known: impl Fn(&str) -> Option<bool>,
    ) -> Result<bool, Violation> {
        let fail = |what: String| {
            Err(Violation(format!(
                "operator: {request:?}: {what}; got {result:?}"
            )))
        };
        let not_found = matches!(result, Err(e) if e.kind == AdminErrorKind::NotFound);
        // Whether the vhost is there: "/" always is; None when a crash left it in doubt.
        let known = |v: &str| if v == "/" { Some(true) } else { vhost_known(v) };
        match request {
            AdminRequest::SetPolicy(p) => match (known(&p.vhost), result) {
                (Some(true) | None, Ok(_)) => {
                    self.policies
                        .insert((p.operator, p.vhost.clone(), p.name.clone()), p.clone());
                    self.changes += 1;
                    Ok(true)
                }
                (Some(false) | None, _) if not_found => Ok(false),
                _ => fail("a valid policy on an existing vhost was refused, or one on a missing vhost set".into()),
            },
            AdminRequest::ClearPolicy {
                operator,
                vhost,
                name,
            } => {
                let key = (*operator, vhost.clone(), name.clone());
                let doubtful = self.doubtful.contains(vhost) || known(vhost).is_none();
                let had = self.policies.remove(&key).is_some();
                match (known(vhost), result) {
                    (Some(true) | None, Ok(_)) if had || doubtful => {
                        self.changes += 1;
                        Ok(true)
                    }
                    (_, _) if not_found && (!had || doubtful) => Ok(false),
                    _ => fail(format!("the policy existed: {had}")),
                }
            }
            AdminRequest::DeclareExchange { vhost, .. } => match (known(vhost), result) {
                (Some(true) | None, Ok(AdminReply::Put { created })) => Ok(*created),
                (Some(false) | None, _) if not_found => Ok(false),
                _ => fail("a plain durable exchange was refused, or declared in a missing vhost".into()),
            },
            AdminRequest::DeclareQueue { vhost, name, .. } => match (known(vhost), result) {
                (Some(true) | None, Ok(_)) => Ok(self.queues.insert((vhost.clone(), name.clone()))),
                (Some(false) | None, _) if not_found => Ok(false),
                _ => fail("a plain durable queue was refused, or declared in a missing vhost".into()),
            },
            AdminRequest::ListPolicies { operator, .. } => {
                let Ok(AdminReply::Policies(listed)) = result else {
                    return fail("expected policies".into());
                };
                let seen: BTreeMap<(String, String), &PolicyRecord> = listed
                    .iter()
                    .filter(|p| p.vhost.starts_with("op-"))
                    .map(|p| ((p.vhost.clone(), p.name.clone()), p))
                    .collect();
                let mine: BTreeMap<(String, String), &PolicyRecord> = self
                    .policies
                    .iter()
                    .filter(|((o, v, _), _)| o == operator && v.starts_with("op-"))
                    .map(|((_, v, n), p)| ((v.clone(), n.clone()), p))
                    .collect();
                let keys: BTreeSet<&(String, String)> = seen.keys().chain(mine.keys()).collect();
                for key in keys {
                    if self.doubtful.contains(&key.0) {
                        continue;
                    }
                    if seen.get(key) != mine.get(key) {
                        return fail(format!(
                            "policy {key:?} listed as {:?}, set as {:?}",
                            seen.get(key),
                            mine.get(key)
                        ));
                    }
                }
                Ok(false)
            }
            AdminRequest::ListQueues { vhost: Some(vhost) } => {
                let listed = match result {
                    Ok(AdminReply::Queues(q)) => q,
                    Err(e) if e.kind == AdminErrorKind::NotFound => return Ok(false),
                    _ => return fail("expected queues".into()),
                };
                if self.doubtful.contains(vhost) || vhost_known(vhost) != Some(true) {
                    return Ok(false);
                }
                for q in listed.iter().filter(|q| q.vhost == *vhost) {
                    if !self.queues.contains(&(vhost.clone(), q.name.clone())) {
                        return fail(format!("queue {} was never declared", q.name));
                    }
                    let got = Expected {
                        policy: q.policy.clone(),
                        operator_policy: q.operator_policy.clone(),
                        definition: by_key(&q.effective_policy_definition),
                    };
                    let want = self.expected(vhost, &q.name);
                    if got != want {
                        return fail(format!(
                            "queue {} runs under {got:?}, the rules say {want:?}",
                            q.name
                        ));
                    }
                }
                self.checked += 1;
                Ok(false)
            }
            other => Err(Violation(format!("operator: unexpected request {other:?}"))),
        }
    }

    /// What RabbitMQ's rules say a queue runs under.
    fn expected(&self, vhost: &str, queue: &str) -> Expected {
        let best = |operator: bool| {
            self.policies
                .values()
                .filter(|p| p.operator == operator && p.vhost == vhost)
                .filter(|p| p.apply_to == "queues" || p.apply_to == "all")
                .filter(|p| Regex::new(&p.pattern).is_ok_and(|re| re.is_match(queue)))
                // Highest priority, then the first name.
                .min_by(|a, b| (-a.priority, &a.name).cmp(&(-b.priority, &b.name)))
        };
        let user = best(false);
        let op = best(true);
        let mut definition = user.map(|p| by_key(&p.definition)).unwrap_or_default();
        if let Some(op) = op {
            for (k, v) in op.definition.iter() {
                let k = k.to_string();
                // Numbers: the smaller of the two; anything else: the operator's.
                let merged = match (definition.get(&k).and_then(FieldValue::as_i64), v.as_i64()) {
                    (Some(mine), Some(cap)) => FieldValue::I64(mine.min(cap)),
                    _ => v.clone(),
                };
                definition.insert(k, merged);
            }
        }
        Expected {
            policy: user.map(|p| p.name.clone()),
            operator_policy: op.map(|p| p.name.clone()),
            definition,
        }
    }

    /// A vhost was deleted: its policies and queues went with it.
    pub fn vhost_deleted(&mut self, vhost: &str) {
        self.policies.retain(|(_, v, _), _| v != vhost);
        self.queues.retain(|(v, _)| v != vhost);
    }

    /// The broker crashed with `request` in flight: what it touched is in doubt.
    pub fn crashed(&mut self, request: &AdminRequest) {
        match request {
            AdminRequest::SetPolicy(p) => {
                self.doubtful.insert(p.vhost.clone());
            }
            AdminRequest::ClearPolicy { vhost, .. }
            | AdminRequest::DeclareQueue { vhost, .. }
            | AdminRequest::PutVhost { name: vhost, .. }
            | AdminRequest::DeleteVhost { name: vhost } => {
                self.doubtful.insert(vhost.clone());
            }
            _ => {}
        }
    }

    /// What a restarted broker recovered: every answered policy and queue is there; the
    /// vhosts in doubt take what was recovered.
    pub fn recovered(&mut self, r: &Recovered) -> Result<(), Violation> {
        let policies: BTreeMap<(bool, String, String), PolicyRecord> = r
            .policies
            .iter()
            .map(|p| ((p.operator, p.vhost.clone(), p.name.clone()), p.clone()))
            .collect();
        let queues: BTreeSet<(String, String)> = r
            .queues
            .iter()
            .filter(|q| q.vhost.starts_with("op-"))
            .map(|q| (q.vhost.clone(), q.name.clone()))
            .collect();
        let in_doubt = |v: &str| self.doubtful.contains(v);
        for key in policies.keys().chain(self.policies.keys()) {
            if in_doubt(&key.1) {
                continue;
            }
            if policies.get(key) != self.policies.get(key) {
                return Err(Violation(format!(
                    "operator: after a crash, policy {key:?} recovered as {:?}, answered as {:?}",
                    policies.get(key),
                    self.policies.get(key)
                )));
            }
        }
        for key in queues.symmetric_difference(&self.queues) {
            if !in_doubt(&key.0) {
                return Err(Violation(format!(
                    "operator: after a crash, queue {key:?} recovered: {}",
                    queues.contains(key)
                )));
            }
        }
        self.policies = policies;
        self.queues = queues;
        self.doubtful.clear();
        Ok(())
    }
}

/// The limit policy's pattern and length.
pub fn limit_of(p: &PolicyRecord) -> Option<(String, u64)> {
    let n = p.definition.get("max-length")?.as_i64()?;
    Some((p.pattern.clone(), n.max(0) as u64))
}

/// A definition from the menu: keys that do not drop or delete what the operator's
/// listings count on.
fn definition(rng: &mut SmallRng, operator: bool) -> FieldTable {
    let mut t = FieldTable::default();
    let n = |rng: &mut SmallRng| FieldValue::I64(rng.gen_range(0..50));
    match (operator, rng.gen_range(0..4)) {
        (true, 0) | (true, 3) => t.insert("max-length", n(rng)),
        (true, 1) => t.insert("message-ttl", FieldValue::I64(rng.gen_range(1_000..60_000))),
        (true, _) => t.insert(
            "max-length-bytes",
            FieldValue::I64(rng.gen_range(100..10_000)),
        ),
        (false, 0) => t.insert("max-length", n(rng)),
        (false, 1) => {
            t.insert("max-length", n(rng));
            t.insert("dead-letter-exchange", text("op-dlx"));
        }
        (false, 2) => {
            t.insert(
                "max-length-bytes",
                FieldValue::I64(rng.gen_range(100..10_000)),
            );
            t.insert("overflow", text("reject-publish"));
        }
        (false, _) => t.insert("message-ttl", FieldValue::I64(rng.gen_range(1_000..60_000))),
    }
    t
}
