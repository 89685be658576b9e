//! rabbitmqctl's tables: the columns each listing offers (by rabbitmqctl name, with
//! where the value is in the API's JSON) and how values print in a cell.

use serde_json::Value;

/// A table column: its rabbitmqctl name and where its value is in the API's JSON.
pub(super) type Column = (&'static str, &'static str);

pub(super) const QUEUE_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("vhost", "vhost"),
    ("durable", "durable"),
    ("auto_delete", "auto_delete"),
    ("exclusive", "exclusive"),
    ("arguments", "arguments"),
    ("policy", "policy"),
    ("messages", "messages"),
    ("messages_ready", "messages_ready"),
    ("messages_unacknowledged", "messages_unacknowledged"),
    ("message_bytes", "message_bytes"),
    ("message_bytes_ready", "message_bytes_ready"),
    (
        "message_bytes_unacknowledged",
        "message_bytes_unacknowledged",
    ),
    ("consumers", "consumers"),
    ("exclusive_consumer_tag", "exclusive_consumer_tag"),
    ("state", "state"),
    ("type", "type"),
    ("node", "node"),
];
pub(super) const EXCHANGE_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("vhost", "vhost"),
    ("type", "type"),
    ("durable", "durable"),
    ("auto_delete", "auto_delete"),
    ("internal", "internal"),
    ("arguments", "arguments"),
    ("policy", "policy"),
];
pub(super) const BINDING_COLUMNS: &[Column] = &[
    ("source_name", "source"),
    ("source_kind", "=exchange"),
    ("destination_name", "destination"),
    ("destination_kind", "destination_type"),
    ("routing_key", "routing_key"),
    ("arguments", "arguments"),
    ("vhost", "vhost"),
];
pub(super) const CONNECTION_COLUMNS: &[Column] = &[
    ("name", "name"),
    ("pid", "pid"),
    ("user", "user"),
    ("vhost", "vhost"),
    ("peer_host", "peer_host"),
    ("peer_port", "peer_port"),
    ("host", "host"),
    ("port", "port"),
    ("state", "state"),
    ("channels", "channels"),
    ("protocol", "protocol"),
    ("auth_mechanism", "auth_mechanism"),
    ("ssl", "ssl"),
    ("type", "type"),
    ("node", "node"),
    ("client_properties", "client_properties"),
    ("connected_at", "connected_at"),
];
pub(super) const CHANNEL_COLUMNS: &[Column] = &[
    ("pid", "name"),
    ("name", "name"),
    ("connection", "connection_details.name"),
    ("number", "number"),
    ("user", "user"),
    ("vhost", "vhost"),
    ("transactional", "transactional"),
    ("confirm", "confirm"),
    ("consumer_count", "consumer_count"),
    ("messages_unacknowledged", "messages_unacknowledged"),
    ("messages_unconfirmed", "messages_unconfirmed"),
    ("prefetch_count", "prefetch_count"),
    ("global_prefetch_count", "global_prefetch_count"),
    ("state", "state"),
];
pub(super) const CONSUMER_COLUMNS: &[Column] = &[
    ("queue_name", "queue.name"),
    ("channel_pid", "channel_details.name"),
    ("consumer_tag", "consumer_tag"),
    ("ack_required", "ack_required"),
    ("prefetch_count", "prefetch_count"),
    ("active", "active"),
    ("exclusive", "exclusive"),
    ("arguments", "arguments"),
];

/// The value at a dotted path; "=text" is a constant.
pub(super) fn lookup(item: &Value, path: &str) -> Value {
    if let Some(constant) = path.strip_prefix('=') {
        return Value::String(constant.to_string());
    }
    path.split('.')
        .try_fold(item, |v, k| v.get(k))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A value as rabbitmqctl prints it in a table cell.
pub(super) fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "[{}]",
            m.iter()
                .map(|(k, v)| format!("{{\"{k}\",{}}}", erlang_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.to_string(),
    }
}

fn erlang_term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => cell(other),
    }
}
