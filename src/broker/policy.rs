//! Policies and operator policies: settings applied to the queues and exchanges whose
//! names match a pattern, as RabbitMQ's `set_policy` and `set_operator_policy` set them.
//!
//! Precedence is RabbitMQ's: of the matching policies the one with the highest priority
//! applies (ties go to the first name in order, so every node and every run agree); of the
//! matching operator policies likewise. The two are merged key by key, the operator's value
//! capping the user's for the numeric keys. A queue's own arguments then win over the
//! merged definition for dead-lettering and overflow, and the smaller value is taken for
//! TTLs, expiry and length limits, so an operator policy caps what a declaration asks for.
//! An exchange's `alternate-exchange` argument wins over a policy's.
//!
//! Patterns are regular expressions in the `regex` crate's syntax, which runs in time
//! linear in the name: look-around (`^(?!amq\.)`) is refused with the compiler's reason.

use regex::{Regex, RegexBuilder};

use crate::proto::table::{FieldTable, FieldValue};
use crate::store::PolicyRecord;

use super::queue::{MAX_EXPIRY_MS, Overflow, QueueSettings};

pub use super::policy_matches::{MAX_POLICIES_PER_VHOST, PolicyMatches};

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// The longest policy name accepted, in bytes (RabbitMQ keeps names as short strings in
/// listings).
pub const MAX_POLICY_NAME_BYTES: usize = 255;

/// The most memory one compiled pattern may take.
const REGEX_SIZE_LIMIT_BYTES: usize = 1 << 18;
/// The most memory one pattern's matching cache may hold (the regex crate's default is
/// 2 MiB, which a vhost's 200 policies would multiply to 400 MiB).
const REGEX_DFA_CACHE_BYTES: usize = 1 << 16;

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// Queues only.
    Queues,
    /// Exchanges only.
    Exchanges,
    /// Both.
    All,
}

impl ApplyTo {
    /// Reads RabbitMQ's name of it.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queues" => Some(ApplyTo::Queues),
            "exchanges" => Some(ApplyTo::Exchanges),
            "all" => Some(ApplyTo::All),
            _ => None,
        }
    }

    fn covers(self, target: Target) -> bool {
        matches!(
            (self, target),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Target::Queue)
                | (ApplyTo::Exchanges, Target::Exchange)
        )
    }
}

/// What a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

/// A policy definition, validated: the keys warren implements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definition {
    /// `message-ttl`, milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `expires`, milliseconds.
    pub expires_ms: Option<u64>,
    /// `max-length`.
    pub max_length: Option<u64>,
    /// `max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `overflow`.
    pub overflow: Option<Overflow>,
    /// `dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `alternate-exchange`.
    pub alternate_exchange: Option<String>,
}

/// The keys an operator policy may set (RabbitMQ's operator policy keys that apply to
/// warren's queues).
const OPERATOR_KEYS: [&str; 4] = ["expires", "message-ttl", "max-length", "max-length-bytes"];

/// A value as RabbitMQ's validation errors print it (Erlang terms).
fn erlang(v: &FieldValue) -> String {
    match (v.as_i64(), v.as_str(), v.as_bool()) {
        (Some(n), _, _) => n.to_string(),
        (_, Some(s), _) => format!("<<\"{s}\">>"),
        (_, _, Some(b)) => b.to_string(),
        _ => format!("{v:?}"),
    }
}

impl Definition {
    /// Validates a definition with RabbitMQ's reasons; an operator policy takes fewer
    /// keys.
    pub fn parse(table: &FieldTable, operator: bool) -> Result<Self, String> {
        if table.is_empty() {
            return Err("no policy provided".into());
        }
        let unknown: Vec<String> = table
            .iter()
            .filter(|(k, _)| {
                let k = &*k.to_str_lossy();
                let known = if operator {
                    OPERATOR_KEYS.contains(&k)
                } else {
                    KEYS.contains(&k)
                };
                !known
            })
            .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", erlang(v)))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "[{}] are not recognised policy settings",
                unknown.join(",")
            ));
        }
        let mut d = Definition::default();
        for (key, v) in table.iter() {
            // Every key is one of KEYS (checked above), so text.
            let key = &*key.to_str_lossy();
            let integer = |min: i64, max: u64, what: &str| -> Result<Option<u64>, String> {
                match v.as_i64() {
                    Some(n) if n >= min && n as u64 <= max => Ok(Some(n as u64)),
                    _ => Err(format!("{} is not a valid {what}", erlang(v))),
                }
            };
            let text = |what: &str| -> Result<Option<String>, String> {
                v.as_str()
                    .map(|s| Some(s.to_string()))
                    .ok_or_else(|| format!("{} is not a valid {what}", erlang(v)))
            };
            match key {
                "message-ttl" => d.message_ttl_ms = integer(0, MAX_EXPIRY_MS, "message TTL")?,
                "expires" => d.expires_ms = integer(1, MAX_EXPIRY_MS, "queue expiry")?,
                "max-length" => d.max_length = integer(0, i64::MAX as u64, "maximum length")?,
                "max-length-bytes" => {
                    d.max_length_bytes = integer(0, i64::MAX as u64, "maximum length in bytes")?
                }
                "overflow" => {
                    d.overflow = Some(match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => return Err(format!("{} is not a valid overflow value", erlang(v))),
                    })
                }
                "dead-letter-exchange" => {
                    d.dead_letter_exchange = text("dead letter exchange name")?
                }
                "dead-letter-routing-key" => {
                    d.dead_letter_routing_key = text("dead letter routing key")?;
                    let len = d.dead_letter_routing_key.as_ref().map_or(0, String::len);
                    if len > super::queue::MAX_ROUTING_KEY_BYTES {
                        return Err(format!(
                            "dead letter routing key is {len} bytes long; routing keys are at most {} bytes",
                            super::queue::MAX_ROUTING_KEY_BYTES
                        ));
                    }
                }
                "alternate-exchange" => d.alternate_exchange = text("alternate exchange name")?,
                other => unreachable!("key {other} passed the check of known keys"),
            }
        }
        Ok(d)
    }

    /// A policy's definition capped by an operator policy's, key by key: the smaller of
    /// two numbers, the operator's where only it sets one.
    pub fn merged(user: Option<&Definition>, operator: Option<&Definition>) -> Definition {
        let base = user.cloned().unwrap_or_default();
        let Some(op) = operator else {
            return base;
        };
        Definition {
            message_ttl_ms: min_of(base.message_ttl_ms, op.message_ttl_ms),
            expires_ms: min_of(base.expires_ms, op.expires_ms),
            max_length: min_of(base.max_length, op.max_length),
            max_length_bytes: min_of(base.max_length_bytes, op.max_length_bytes),
            ..base
        }
    }

    /// The definition in RabbitMQ's keys (`effective_policy_definition`).
    pub fn to_table(&self) -> FieldTable {
        let mut t = FieldTable::default();
        let mut int = |k: &str, v: Option<u64>| {
            if let Some(n) = v {
                t.insert(k, FieldValue::I64(n.min(i64::MAX as u64) as i64));
            }
        };
        int("expires", self.expires_ms);
        int("max-length", self.max_length);
        int("max-length-bytes", self.max_length_bytes);
        int("message-ttl", self.message_ttl_ms);
        let text = |s: &str| FieldValue::LongStr(bytes::Bytes::copy_from_slice(s.as_bytes()));
        if let Some(o) = self.overflow {
            let name = match o {
                Overflow::DropHead => "drop-head",
                Overflow::RejectPublish => "reject-publish",
                Overflow::RejectPublishDlx => "reject-publish-dlx",
            };
            t.insert("overflow", text(name));
        }
        for (k, v) in [
            ("alternate-exchange", &self.alternate_exchange),
            ("dead-letter-exchange", &self.dead_letter_exchange),
            ("dead-letter-routing-key", &self.dead_letter_routing_key),
        ] {
            if let Some(s) = v {
                t.insert(k, text(s));
            }
        }
        t
    }

    /// A queue's settings under this (merged) definition: `declared` is what its
    /// arguments alone say, `arguments` the arguments themselves (to tell a key given as
    /// its default from one not given).
    pub fn settle(&self, declared: &QueueSettings, arguments: &FieldTable) -> QueueSettings {
        let overflow = if arguments.get("x-overflow").is_some() {
            declared.overflow
        } else {
            self.overflow.unwrap_or(declared.overflow)
        };
        // Each dead-lettering key on its own: the argument if given, else the policy's.
        let dead_letter_exchange = declared
            .dead_letter_exchange
            .clone()
            .or_else(|| self.dead_letter_exchange.clone());
        let dead_letter_routing_key = declared
            .dead_letter_routing_key
            .clone()
            .or_else(|| self.dead_letter_routing_key.clone());
        QueueSettings {
            max_length: min_of(declared.max_length, self.max_length),
            max_length_bytes: min_of(declared.max_length_bytes, self.max_length_bytes),
            overflow,
            message_ttl_ms: min_of(declared.message_ttl_ms, self.message_ttl_ms),
            expires_ms: min_of(declared.expires_ms, self.expires_ms),
            dead_letter_exchange,
            dead_letter_routing_key,
            max_priority: declared.max_priority,
            single_active_consumer: declared.single_active_consumer,
            quorum: declared.quorum,
            delivery_limit: declared.delivery_limit,
        }
    }
}

/// The keys a policy may set.
const KEYS: [&str; 8] = [
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "expires",
    "max-length",
    "max-length-bytes",
    "message-ttl",
    "overflow",
];

fn min_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A policy, validated and compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    /// As set and stored.
    pub record: PolicyRecord,
    /// Its settings.
    pub definition: Definition,
    apply_to: ApplyTo,
    regex: Regex,
    /// Its place in [`PolicyMatches`], given by [`Policies::put`].
    slot: usize,
}

impl Policy {
    /// Validates a policy with RabbitMQ's reasons (without the "Validation failed"
    /// heading).
    pub fn new(record: PolicyRecord) -> Result<Self, String> {
        if record.name.is_empty() || record.name.len() > MAX_POLICY_NAME_BYTES {
            return Err(format!(
                "a policy name must have 1 to {MAX_POLICY_NAME_BYTES} bytes"
            ));
        }
        if record.pattern.len() > MAX_PATTERN_BYTES {
            return Err(format!("pattern is longer than {MAX_PATTERN_BYTES} bytes"));
        }
        let apply_to = ApplyTo::parse(&record.apply_to).ok_or_else(|| {
            format!(
                "<<\"{}\">> is not a valid apply-to value; use queues, exchanges or all",
                record.apply_to
            )
        })?;
        if record.operator && apply_to == ApplyTo::Exchanges {
            return Err("operator policies apply to queues only".into());
        }
        let regex = RegexBuilder::new(&record.pattern)
            .size_limit(REGEX_SIZE_LIMIT_BYTES)
            .dfa_size_limit(REGEX_DFA_CACHE_BYTES)
            .build()
            .map_err(|e| {
                let first = e.to_string();
                let reason = first.lines().last().unwrap_or("invalid").trim().to_string();
                format!("pattern should be regular expression but is invalid: {reason}")
            })?;
        let definition = Definition::parse(&record.definition, record.operator)?;
        Ok(Policy {
            record,
            definition,
            apply_to,
            regex,
            slot: 0,
        })
    }

    /// The order lookups go in: policies before operator policies, then the highest
    /// priority, then the first name (names are unique within a kind).
    fn precedence(&self) -> (bool, i128, &str) {
        let r = &self.record;
        (r.operator, -i128::from(r.priority), r.name.as_str())
    }

    /// Whether it applies to `name`, a queue or an exchange.
    pub fn matches(&self, name: &str, target: Target) -> bool {
        self.apply_to.covers(target) && self.regex.is_match(name)
    }
}

impl Applied {
    /// Puts this in force on a queue; returns whether its settings changed.
    pub fn apply_to_queue(self, decl: &mut super::queue::Declaration) -> bool {
        let settings = self.definition.settle(&decl.declared, &decl.arguments);
        decl.apply(self.names(), settings)
    }

    /// Puts this in force on an exchange.
    pub fn apply_to_exchange(self, x: &mut super::exchange::Exchange) {
        x.policy_matches = self.matches;
        x.apply(self.policy, self.definition.alternate_exchange);
    }

    /// The names and merged definition, as a queue lists them.
    pub fn names(&self) -> super::queue::PolicyNames {
        super::queue::PolicyNames {
            policy: self.policy.clone(),
            operator_policy: self.operator_policy.clone(),
            definition: self.definition.to_table(),
            matches: self.matches,
        }
    }
}

/// What applies to one queue or exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The policy in force, by name.
    pub policy: Option<String>,
    /// The operator policy in force, by name.
    pub operator_policy: Option<String>,
    /// Their definitions merged.
    pub definition: Definition,
    /// Every policy of the vhost that matches the name, the one in force or not.
    pub matches: PolicyMatches,
}

/// A vhost's policies of both kinds, each kind in precedence order (priority, highest
/// first, then name).
#[derive(Debug, Clone, Default)]
pub struct Policies {
    list: Vec<Policy>,
}

impl Policies {
    /// How many there are, of both kinds.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every policy, operator policies after the others, each kind in precedence order.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.list.iter()
    }

    /// The policy of this kind and name.
    pub fn get(&self, operator: bool, name: &str) -> Option<&Policy> {
        self.list
            .iter()
            .find(|p| p.record.operator == operator && p.record.name == name)
    }

    /// Adds or replaces a policy; returns its slot, the bit of [`PolicyMatches`] that
    /// says whether it matches (a replaced policy keeps its slot).
    pub fn put(&mut self, mut policy: Policy) -> usize {
        let slot = match self.remove(policy.record.operator, &policy.record.name) {
            Some(slot) => slot,
            None => (0..MAX_POLICIES_PER_VHOST)
                .find(|s| self.list.iter().all(|p| p.slot != *s))
                .expect("a free slot: policies past the vhost's limit"),
        };
        policy.slot = slot;
        self.list.push(policy);
        self.list
            .sort_by(|a, b| a.precedence().cmp(&b.precedence()));
        assert!(
            self.list.len() <= MAX_POLICIES_PER_VHOST,
            "policies past the vhost's limit"
        );
        slot
    }

    /// Removes a policy; returns the slot it had, if it existed.
    pub fn remove(&mut self, operator: bool, name: &str) -> Option<usize> {
        let at = self
            .list
            .iter()
            .position(|p| p.record.operator == operator && p.record.name == name)?;
        Some(self.list.remove(at).slot)
    }

    /// Which policies match the queue or exchange `name`: each policy is matched.
    pub fn matches(&self, name: &str, target: Target) -> PolicyMatches {
        let mut m = PolicyMatches::default();
        for p in &self.list {
            m.set(p.slot, p.matches(name, target));
        }
        m
    }

    /// Brings `m` up to date after the policy in `slot` was put or removed: only that
    /// policy is matched.
    pub fn rematch(&self, slot: usize, name: &str, target: Target, m: &mut PolicyMatches) {
        let now = self
            .list
            .iter()
            .find(|p| p.slot == slot)
            .is_some_and(|p| p.matches(name, target));
        m.set(slot, now);
    }

    /// What applies to the queue or exchange `name`.
    pub fn applied(&self, name: &str, target: Target) -> Applied {
        if self.list.is_empty() {
            return Applied::default();
        }
        self.applied_from(self.matches(name, target), target)
    }

    /// What applies to a queue or exchange that the policies in `matches` match.
    pub fn applied_from(&self, matches: PolicyMatches, target: Target) -> Applied {
        let first = |operator: bool| {
            self.list
                .iter()
                .find(|p| p.record.operator == operator && matches.get(p.slot))
        };
        let user = first(false);
        let operator = match target {
            Target::Queue => first(true),
            Target::Exchange => None,
        };
        Applied {
            policy: user.map(|p| p.record.name.clone()),
            operator_policy: operator.map(|p| p.record.name.clone()),
            definition: Definition::merged(
                user.map(|p| &p.definition),
                operator.map(|p| &p.definition),
            ),
            matches,
        }
    }

    /// Checks the order the lookups rely on.
    pub fn check_invariants(&self) {
        assert!(self.list.len() <= MAX_POLICIES_PER_VHOST);
        let mut slots: Vec<usize> = self.list.iter().map(|p| p.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), self.list.len(), "two policies in one slot");
        assert!(slots.iter().all(|s| *s < MAX_POLICIES_PER_VHOST));
        for pair in self.list.windows(2) {
            assert!(
                pair[0].precedence() < pair[1].precedence(),
                "policies out of precedence order"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> FieldValue {
        FieldValue::LongStr(bytes::Bytes::copy_from_slice(s.as_bytes()))
    }

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn policy(operator: bool, name: &str, pattern: &str, priority: i64, def: FieldTable) -> Policy {
        Policy::new(PolicyRecord {
            operator,
            vhost: "/".into(),
            name: name.into(),
            pattern: pattern.into(),
            apply_to: "all".into(),
            priority,
            definition: def,
        })
        .expect("valid")
    }

    #[test]
    fn bad_definitions_get_rabbitmqs_reasons() {
        let cases: Vec<(FieldTable, bool, &str)> = vec![
            (table(&[]), false, "no policy provided"),
            (
                table(&[
                    ("max-length", FieldValue::I64(5)),
                    ("foo", FieldValue::I64(1)),
                ]),
                false,
                "[{<<\"foo\">>,1}] are not recognised policy settings",
            ),
            (
                table(&[("max-length", FieldValue::I64(-1))]),
                false,
                "-1 is not a valid maximum length",
            ),
            (
                table(&[("max-priority", FieldValue::I64(5))]),
                false,
                "[{<<\"max-priority\">>,5}] are not recognised policy settings",
            ),
            (
                table(&[("dead-letter-exchange", text("x"))]),
                true,
                "[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings",
            ),
            (
                table(&[("overflow", text("bogus"))]),
                false,
                "<<\"bogus\">> is not a valid overflow value",
            ),
            (
                table(&[("expires", FieldValue::I64(0))]),
                false,
                "0 is not a valid queue expiry",
            ),
            (
                table(&[("message-ttl", text("1000"))]),
                false,
                "<<\"1000\">> is not a valid message TTL",
            ),
        ];
        for (def, operator, reason) in cases {
            assert_eq!(Definition::parse(&def, operator), Err(reason.to_string()));
        }
        let bad_pattern = Policy::new(PolicyRecord {
            operator: false,
            vhost: "/".into(),
            name: "p".into(),
            pattern: "(".into(),
            apply_to: "all".into(),
            priority: 0,
            definition: table(&[("max-length", FieldValue::I64(1))]),
        })
        .expect_err("refused");
        assert!(
            bad_pattern.starts_with("pattern should be regular expression but is invalid"),
            "{bad_pattern}"
        );
    }

    #[test]
    fn the_highest_priority_applies_and_the_operator_caps() {
        let mut ps = Policies::default();
        ps.put(policy(
            false,
            "low",
            "^q",
            0,
            table(&[
                ("max-length", FieldValue::I64(100)),
                ("dead-letter-exchange", text("dlx-low")),
            ]),
        ));
        ps.put(policy(
            false,
            "high",
            "^q\\.",
            5,
            table(&[
                ("max-length", FieldValue::I64(50)),
                ("message-ttl", FieldValue::I64(60_000)),
            ]),
        ));
        ps.put(policy(
            true,
            "cap",
            ".*",
            0,
            table(&[
                ("max-length", FieldValue::I64(10)),
                ("expires", FieldValue::I64(1000)),
            ]),
        ));
        ps.check_invariants();
        // Only the highest-priority policy applies: no dead-lettering from "low".
        let a = ps.applied("q.1", Target::Queue);
        assert_eq!(a.policy.as_deref(), Some("high"));
        assert_eq!(a.operator_policy.as_deref(), Some("cap"));
        assert_eq!(a.definition.max_length, Some(10));
        assert_eq!(a.definition.message_ttl_ms, Some(60_000));
        assert_eq!(a.definition.expires_ms, Some(1000));
        assert_eq!(a.definition.dead_letter_exchange, None);
        let b = ps.applied("qx", Target::Queue);
        assert_eq!(b.policy.as_deref(), Some("low"));
        assert_eq!(
            b.definition.dead_letter_exchange.as_deref(),
            Some("dlx-low")
        );
        // Operator policies do not apply to exchanges.
        let x = ps.applied("q.x", Target::Exchange);
        assert_eq!(x.operator_policy, None);
        assert!(ps.remove(false, "high").is_some());
        assert_eq!(
            ps.applied("q.1", Target::Queue).policy.as_deref(),
            Some("low")
        );
    }

    #[test]
    fn arguments_win_for_dead_lettering_and_the_minimum_for_limits() {
        let args = table(&[
            ("x-max-length", FieldValue::I64(20)),
            ("x-message-ttl", FieldValue::I64(5_000)),
            ("x-dead-letter-exchange", text("arg-dlx")),
            ("x-overflow", text("drop-head")),
        ]);
        let declared = QueueSettings::from_arguments(&args, "q", "/").expect("valid");
        let def = Definition {
            max_length: Some(30),
            message_ttl_ms: Some(1_000),
            dead_letter_exchange: Some("policy-dlx".into()),
            dead_letter_routing_key: Some("rk".into()),
            overflow: Some(Overflow::RejectPublish),
            expires_ms: Some(9_000),
            ..Definition::default()
        };
        let s = def.settle(&declared, &args);
        assert_eq!(s.max_length, Some(20));
        assert_eq!(s.message_ttl_ms, Some(1_000));
        assert_eq!(s.expires_ms, Some(9_000));
        assert_eq!(s.dead_letter_exchange.as_deref(), Some("arg-dlx"));
        assert_eq!(s.dead_letter_routing_key.as_deref(), Some("rk"));
        assert_eq!(s.overflow, Overflow::DropHead, "x-overflow given: it wins");
        let bare = QueueSettings::default();
        let s = def.settle(&bare, &FieldTable::default());
        assert_eq!(s.overflow, Overflow::RejectPublish);
        assert_eq!(s.dead_letter_exchange.as_deref(), Some("policy-dlx"));
        // The empty definition changes nothing.
        assert_eq!(Definition::default().settle(&declared, &args), declared);
    }

    #[test]
    fn kept_matches_follow_puts_and_removes_one_policy_at_a_time() {
        let names = ["q.1", "qx", "orders", "q.orders", "x"];
        let patterns = ["^q", "^q\\.", "orders$", ".*", "^x$", "nothing"];
        let mut ps = Policies::default();
        let mut kept: Vec<PolicyMatches> =
            names.iter().map(|n| ps.matches(n, Target::Queue)).collect();
        // Puts, replacements with other patterns, and removes, in a fixed order.
        let mut state: u64 = 7;
        let mut slots_seen = std::collections::BTreeSet::new();
        for step in 0..300 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let which = (state >> 33) as usize;
            let name = format!("p{}", which % 12);
            let operator = which % 5 == 0;
            let slot = if step % 3 == 2 {
                match ps.remove(operator, &name) {
                    Some(slot) => slot,
                    None => continue,
                }
            } else {
                let pattern = patterns[(which / 12) % patterns.len()];
                let def = table(&[("max-length", FieldValue::I64(which as i64 % 100))]);
                ps.put(policy(operator, &name, pattern, (which % 4) as i64, def))
            };
            slots_seen.insert(slot);
            ps.check_invariants();
            for (n, m) in names.iter().zip(kept.iter_mut()) {
                ps.rematch(slot, n, Target::Queue, m);
                assert_eq!(*m, ps.matches(n, Target::Queue), "{n} after step {step}");
                assert_eq!(
                    ps.applied_from(*m, Target::Queue),
                    ps.applied(n, Target::Queue)
                );
            }
        }
        // Slots are reused: 24 names of two kinds never need more than 24.
        assert!(slots_seen.iter().all(|s| *s < 24), "{slots_seen:?}");
    }
}
