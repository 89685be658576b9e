//! Policies and operator policies put in force on queues and exchanges, with RabbitMQ's
//! precedence, at once on what exists, and across a restart.

use super::*;
use crate::proto::table::FieldValue;
use crate::store::PolicyRecord;

fn policy(
    operator: bool,
    name: &str,
    pattern: &str,
    priority: i64,
    def: &[(&str, i64)],
) -> AdminRequest {
    AdminRequest::SetPolicy(PolicyRecord {
        operator,
        vhost: "/".into(),
        name: name.into(),
        pattern: pattern.into(),
        apply_to: "queues".into(),
        priority,
        definition: def
            .iter()
            .map(|(k, v)| (k.to_string(), FieldValue::I64(*v)))
            .collect(),
    })
}

fn queue_info(h: &mut Harness, name: &str) -> QueueInfo {
    h.queues().into_iter().find(|q| q.name == name).unwrap()
}

fn fill(h: &mut Harness, queue: &str, n: usize) {
    for _ in 0..n {
        h.admin(publish(Actor::Node, queue, b"m", true)).unwrap();
    }
    h.drain();
}

fn declare_with(h: &mut Harness, name: &str, arguments: FieldTable) {
    h.admin(AdminRequest::DeclareQueue {
        actor: Actor::Node,
        vhost: "/".into(),
        name: name.into(),
        durable: true,
        auto_delete: false,
        arguments,
    })
    .unwrap();
}

#[test]
fn a_policy_applies_at_once_to_existing_queues_and_the_operator_caps_it() {
    let mut h = Harness::new();
    h.declare_durable_queue(Actor::Node, "/", "jobs.a");
    h.declare_durable_queue(Actor::Node, "/", "other");
    let args: FieldTable = [("x-max-length".to_string(), FieldValue::I64(3))]
        .into_iter()
        .collect();
    declare_with(&mut h, "jobs.b", args);
    fill(&mut h, "jobs.a", 8);
    fill(&mut h, "other", 8);
    fill(&mut h, "jobs.b", 3);
    // The highest priority wins; the lower one is not merged in.
    h.admin(policy(false, "high", "^jobs\\.", 5, &[("max-length", 5)]))
        .unwrap();
    h.admin(policy(false, "low", "^jobs", 0, &[("max-length", 1)]))
        .unwrap();
    h.drain();
    let a = queue_info(&mut h, "jobs.a");
    assert_eq!(a.policy.as_deref(), Some("high"));
    assert_eq!(a.messages_ready, 5, "drop-head down to the policy's limit");
    assert_eq!(ready(&mut h, "other"), 8, "the pattern does not match");
    assert_eq!(
        ready(&mut h, "jobs.b"),
        3,
        "the argument (3) is smaller than the policy (5)"
    );
    // An operator policy caps the policy.
    h.admin(policy(true, "cap", ".*", 0, &[("max-length", 2)]))
        .unwrap();
    h.drain();
    let a = queue_info(&mut h, "jobs.a");
    assert_eq!(a.operator_policy.as_deref(), Some("cap"));
    assert_eq!(a.messages_ready, 2);
    assert_eq!(
        a.effective_policy_definition.get("max-length"),
        Some(&FieldValue::I64(2))
    );
    assert_eq!(
        ready(&mut h, "other"),
        2,
        "operator policies match on their own"
    );
    assert_eq!(ready(&mut h, "jobs.b"), 2);
    // Cleared, the limits go with them: the queue takes messages again.
    h.admin(AdminRequest::ClearPolicy {
        operator: true,
        vhost: "/".into(),
        name: "cap".into(),
    })
    .unwrap();
    fill(&mut h, "jobs.a", 2);
    assert_eq!(ready(&mut h, "jobs.a"), 4);
    let gone = h.admin(AdminRequest::ClearPolicy {
        operator: true,
        vhost: "/".into(),
        name: "cap".into(),
    });
    assert_eq!(gone.unwrap_err().kind, AdminErrorKind::NotFound);
    // A queue declared later gets the policy as it is declared.
    h.declare_durable_queue(Actor::Node, "/", "jobs.c");
    fill(&mut h, "jobs.c", 7);
    assert_eq!(ready(&mut h, "jobs.c"), 5);
}

#[test]
fn invalid_policies_are_refused_with_rabbitmqs_reasons_and_change_nothing() {
    let mut h = Harness::new();
    let before = h.ops.len();
    let e = h
        .admin(policy(false, "p", "^q", 0, &[("max-length", -1)]))
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::BadRequest);
    assert_eq!(
        e.reason,
        "Validation failed\n\n-1 is not a valid maximum length\n"
    );
    let e = h
        .admin(policy(true, "p", "^q", 0, &[("max-priority", 3)]))
        .unwrap_err();
    assert!(
        e.reason.contains("are not recognised policy settings"),
        "{e:?}"
    );
    let e = h
        .admin(policy(false, "p", "(", 0, &[("max-length", 1)]))
        .unwrap_err();
    assert!(
        e.reason.contains("pattern should be regular expression"),
        "{e:?}"
    );
    // Dead letters are routed with this key: a publish's bound holds.
    let mut long_key = policy(false, "p", "^q", 0, &[]);
    if let AdminRequest::SetPolicy(p) = &mut long_key {
        let key = bytes::Bytes::from("k".repeat(256));
        p.definition
            .insert("dead-letter-routing-key", FieldValue::LongStr(key));
    }
    let e = h.admin(long_key).unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::BadRequest);
    assert!(
        e.reason.contains(
            "dead letter routing key is 256 bytes long; routing keys are at most 255 bytes"
        ),
        "{e:?}"
    );
    assert_eq!(h.ops.len(), before, "nothing stored");
    assert_eq!(
        h.admin(AdminRequest::ListPolicies {
            operator: false,
            vhost: None
        }),
        Ok(AdminReply::Policies(vec![]))
    );
}

#[test]
fn policies_are_durable_and_apply_to_recovered_queues_and_exchanges() {
    let mut h = Harness::new();
    h.declare_durable_queue(Actor::Node, "/", "jobs.a");
    h.admin(policy(false, "p", "^jobs", 0, &[("max-length", 2)]))
        .unwrap();
    let mut ae = FieldTable::default();
    ae.insert(
        "alternate-exchange",
        FieldValue::LongStr(Bytes::from_static(b"amq.fanout")),
    );
    h.admin(AdminRequest::SetPolicy(PolicyRecord {
        operator: false,
        vhost: "/".into(),
        name: "ae".into(),
        pattern: "^amq\\.direct$".into(),
        apply_to: "exchanges".into(),
        priority: 0,
        definition: ae,
    }))
    .unwrap();
    fill(&mut h, "jobs.a", 4);
    let mut state = crate::store::memory::MemoryState::default();
    for op in &h.ops {
        state.apply(op);
    }
    let recovered = state.recovered(crate::store::HeadLimit::ALL);
    assert_eq!(recovered.policies.len(), 2);
    let mut restarted = Broker::new(BrokerConfig::default(), 1, recovered);
    restarted.check_invariants();
    let queues =
        match admin_answer(&mut restarted, AdminRequest::ListQueues { vhost: None }, 1).result {
            Ok(AdminReply::Queues(q)) => q,
            other => panic!("{other:?}"),
        };
    let q = queues.iter().find(|q| q.name == "jobs.a").unwrap();
    assert_eq!(q.policy.as_deref(), Some("p"));
    assert_eq!(q.messages_ready, 2);
    let x = restarted.topology.vhosts["/"].exchanges["amq.direct"].alternate_exchange();
    assert_eq!(
        x,
        Some("amq.fanout"),
        "the predeclared exchange gets the policy"
    );
    // Deleting the vhost deletes its policies with it.
    h.admin(AdminRequest::PutVhost {
        name: "v".into(),
        mode: PutMode::CreateOnly,
    })
    .unwrap();
    h.admin(AdminRequest::SetPolicy(PolicyRecord {
        operator: true,
        vhost: "v".into(),
        name: "cap".into(),
        pattern: ".*".into(),
        apply_to: "all".into(),
        priority: 0,
        definition: [("expires".to_string(), FieldValue::I64(1000))]
            .into_iter()
            .collect(),
    }))
    .unwrap();
    h.admin(AdminRequest::DeleteVhost { name: "v".into() })
        .unwrap();
    let mut state = crate::store::memory::MemoryState::default();
    for op in &h.ops {
        state.apply(op);
    }
    let recovered = state.recovered(crate::store::HeadLimit::ALL);
    assert!(recovered.policies.iter().all(|p| p.vhost == "/"));
}

#[test]
fn policies_round_trip_through_definitions() {
    let mut h = Harness::new();
    h.admin(policy(false, "p", "^jobs", 4, &[("message-ttl", 60_000)]))
        .unwrap();
    h.admin(policy(
        true,
        "cap",
        ".*",
        0,
        &[("max-length-bytes", 1 << 20)],
    ))
    .unwrap();
    let Ok(AdminReply::Definitions(defs)) =
        h.admin(AdminRequest::ExportDefinitions { vhost: None })
    else {
        panic!("export");
    };
    assert_eq!(defs.policies.len(), 2);
    let back = (*defs).clone();
    let mut fresh = Harness::new();
    fresh
        .admin(AdminRequest::ImportDefinitions(Box::new(back)))
        .unwrap();
    for operator in [false, true] {
        assert_eq!(
            fresh.admin(AdminRequest::ListPolicies {
                operator,
                vhost: None
            }),
            h.admin(AdminRequest::ListPolicies {
                operator,
                vhost: None
            })
        );
    }
}
