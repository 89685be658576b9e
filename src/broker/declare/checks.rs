//! What a declaration is checked against, with RabbitMQ's error texts: equivalence with
//! what exists (inequivalent arguments and flags), exclusive use, queue types and the
//! arguments each accepts, and the size of argument tables.

use crate::proto::method::*;
use crate::proto::table::{FieldTable, FieldValue};

use crate::broker::error::*;
use crate::broker::exchange::{Exchange, ExchangeKind};
use crate::broker::queue::Queue;

/// Queue arguments whose values must match on redeclaration, as RabbitMQ checks them.
const EQUIVALENT_QUEUE_ARGS: [&str; 12] = [
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
    "x-queue-master-locator",
];

/// Refuses arguments that are nested too deeply or too large to store and read back.
pub(super) fn check_table_limits(
    args: &FieldTable,
    kind: &str,
    name: &str,
    vhost: &str,
) -> AmqpResult<()> {
    args.check_limits().map_err(|e| {
        precondition_failed(format!(
            "invalid arguments for {}: {e}",
            resource(kind, name, vhost)
        ))
    })
}

/// RabbitMQ strips carriage returns and line feeds from names.
pub(super) fn strip_cr_lf(name: &str) -> String {
    name.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

pub(in crate::broker) fn exclusive_lock_error(name: &str, vhost: &str) -> AmqpError {
    resource_locked(format!(
        "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
        resource("queue", name, vhost)
    ))
}

pub(super) fn inequivalent(
    arg: &str,
    kind: &str,
    name: &str,
    vhost: &str,
    received: String,
    current: String,
) -> AmqpError {
    precondition_failed(format!(
        "inequivalent arg '{arg}' for {}: received {received} but current is {current}",
        resource(kind, name, vhost)
    ))
}

pub(in crate::broker) fn assert_exchange_equivalent(
    x: &Exchange,
    (kind, delayed): (ExchangeKind, bool),
    m: &ExchangeDeclare,
    vhost: &str,
) -> AmqpResult<()> {
    let q = |s: &str| format!("'{s}'");
    let b = |v: bool| format!("'{v}'");
    let declared = if delayed {
        crate::broker::exchange::DELAYED_TYPE
    } else {
        kind.as_str()
    };
    if x.kind != kind || x.delayed != delayed {
        let name = if x.kind != kind && x.delayed == delayed {
            kind.as_str()
        } else {
            declared
        };
        return Err(inequivalent(
            "type",
            "exchange",
            &x.name,
            vhost,
            q(name),
            q(x.type_name()),
        ));
    }
    if x.durable != m.durable {
        return Err(inequivalent(
            "durable",
            "exchange",
            &x.name,
            vhost,
            b(m.durable),
            b(x.durable),
        ));
    }
    if x.auto_delete != m.auto_delete {
        return Err(inequivalent(
            "auto_delete",
            "exchange",
            &x.name,
            vhost,
            b(m.auto_delete),
            b(x.auto_delete),
        ));
    }
    if x.internal != m.internal {
        return Err(inequivalent(
            "internal",
            "exchange",
            &x.name,
            vhost,
            b(m.internal),
            b(x.internal),
        ));
    }
    let key = "alternate-exchange";
    if !arg_equivalent(m.arguments.get(key), x.arguments.get(key)) {
        return Err(inequivalent(
            key,
            "exchange",
            &x.name,
            vhost,
            describe(m.arguments.get(key)),
            describe(x.arguments.get(key)),
        ));
    }
    Ok(())
}

pub(in crate::broker) fn assert_queue_equivalent(
    q: &Queue,
    m: &QueueDeclare,
    vhost: &str,
) -> AmqpResult<()> {
    let b = |v: bool| format!("'{v}'");
    let durable = q.decl.durable || q.decl.exclusive_owner.is_some() && m.durable;
    if durable != m.durable {
        return Err(inequivalent(
            "durable",
            "queue",
            &q.decl.name,
            vhost,
            b(m.durable),
            b(q.decl.durable),
        ));
    }
    if q.decl.auto_delete != m.auto_delete {
        return Err(inequivalent(
            "auto_delete",
            "queue",
            &q.decl.name,
            vhost,
            b(m.auto_delete),
            b(q.decl.auto_delete),
        ));
    }
    for key in EQUIVALENT_QUEUE_ARGS {
        let (new, old) = (m.arguments.get(key), q.decl.arguments.get(key));
        // A classic queue declared without a type is the same as one declared "classic".
        if key == "x-queue-type" && queue_type(new) == queue_type(old) {
            continue;
        }
        if !arg_equivalent(new, old) {
            return Err(inequivalent(
                key,
                "queue",
                &q.decl.name,
                vhost,
                describe(new),
                describe(old),
            ));
        }
    }
    Ok(())
}

pub(super) fn queue_type(v: Option<&FieldValue>) -> &str {
    v.and_then(FieldValue::as_str).unwrap_or("classic")
}

/// Arguments of other queue types that RabbitMQ 3.10 refuses on a classic queue.
const NOT_FOR_CLASSIC: &[&str] = &[
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-dead-letter-strategy",
    "x-queue-leader-locator",
];

/// Classic-queue arguments that RabbitMQ 3.10 refuses on a quorum queue.
const NOT_FOR_QUORUM: &[&str] = &["x-max-priority", "x-queue-mode", "x-queue-version"];

/// Refuses the first argument of `refused` that the declare carries, in RabbitMQ's words
/// for a queue of type `module`.
pub(super) fn refuse_foreign_arguments(
    m: &QueueDeclare,
    refused: &[&str],
    module: &str,
    name: &str,
    vhost: &str,
) -> AmqpResult<()> {
    match refused.iter().find(|key| m.arguments.get(key).is_some()) {
        None => Ok(()),
        Some(key) => Err(precondition_failed(format!(
            "invalid arg '{key}' for {} of queue type {module}",
            resource("queue", name, vhost)
        ))),
    }
}

pub(super) fn validate_queue_type(m: &QueueDeclare, name: &str, vhost: &str) -> AmqpResult<()> {
    match m.arguments.get("x-queue-type") {
        None => refuse_foreign_arguments(m, NOT_FOR_CLASSIC, "rabbit_classic_queue", name, vhost),
        Some(v) => match v.as_str() {
            Some("classic") => {
                refuse_foreign_arguments(m, NOT_FOR_CLASSIC, "rabbit_classic_queue", name, vhost)
            }
            Some("quorum") => {
                refuse_foreign_arguments(m, NOT_FOR_QUORUM, "rabbit_quorum_queue", name, vhost)?;
                // Quorum queues are replicated and durable by design; warren runs them as
                // classic durable queues and keeps RabbitMQ's restrictions on them.
                let invalid = |what: &str| {
                    precondition_failed(format!(
                        "invalid property '{what}' for {}",
                        resource("queue", name, vhost)
                    ))
                };
                if m.auto_delete {
                    Err(invalid("auto-delete"))
                } else if m.exclusive {
                    Err(invalid("exclusive-owner"))
                } else if !m.durable {
                    Err(invalid("non-durable"))
                } else {
                    Ok(())
                }
            }
            _ => Err(precondition_failed(format!(
                "invalid arg 'x-queue-type' for {}: \"unsupported queue type '{}'\"",
                resource("queue", name, vhost),
                v.as_str().map_or_else(|| describe(Some(v)), str::to_string)
            ))),
        },
    }
}

/// Argument equivalence: integers compare by value whatever their width, strings by
/// content.
pub(super) fn arg_equivalent(a: Option<&FieldValue>, b: Option<&FieldValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x == y,
        },
        _ => false,
    }
}

pub(super) fn describe(v: Option<&FieldValue>) -> String {
    match v {
        None => "none".into(),
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => format!("'{s}'"),
            (_, Some(n)) => format!("'{n}'"),
            _ => format!("{v:?}"),
        },
    }
}
