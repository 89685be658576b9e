//! RabbitMQ's JSON shapes: field tables, message properties, limits, policies and the
//! objects the management API lists (definitions documents are in `definitions`). Field
//! names are RabbitMQ's, because clients (amqpstorm's management client,
//! rabbitmqadmin-style scripts) read them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::broker::MessageCounters;
use crate::broker::admin::{
    BindingInfo, Definitions, ExchangeDef, ExchangeInfo, MAX_CHANNELS, MAX_CONNECTIONS, MAX_QUEUES,
    QueueDef, QueueInfo,
};
use crate::proto::props::BasicProperties;
use crate::proto::shortstr::ShortStr;
use crate::proto::table::{
    FieldTable, FieldValue, MAX_FIELD_DEPTH, MAX_TABLE_BYTES, TableLimitError,
};
use crate::store::{
    PermissionRecord, PolicyRecord, TopicPermissionRecord, UserLimits, UserRecord, VhostLimits,
};

pub mod definitions;

/// The version this API claims to be compatible with (clients check it).
pub const RABBITMQ_VERSION: &str = "3.10.8";

/// The runtime parameter component RabbitMQ keeps vhost limits under (in definitions).
pub const VHOST_LIMITS_COMPONENT: &str = "vhost-limits";

/// The runtime-parameter component of operator policies in definitions documents.
pub const OPERATOR_POLICY_COMPONENT: &str = "operator_policy";

/// RabbitMQ's name for its salted SHA-256 password hashing.
pub const HASHING_ALGORITHM: &str = "rabbit_password_hashing_sha256";

/// A field value as JSON: numbers as numbers, strings as strings, tables as objects.
pub fn value_to_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Decimal(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        FieldValue::LongStr(b) | FieldValue::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(BASE64.encode(b)),
        },
        FieldValue::Array(items) => Value::Array(items.iter().map(value_to_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Void => Value::Null,
    }
}

/// A field table as a JSON object.
pub fn table_to_json(t: &FieldTable) -> Value {
    Value::Object(
        t.iter()
            .map(|(k, v)| (k.to_string(), value_to_json(v)))
            .collect(),
    )
}

/// A JSON value as a field value, as RabbitMQ's management API converts arguments:
/// integers become longs, other numbers doubles. `depth` is the nesting of the table or
/// array holding the value (the top table is 1); past [`MAX_FIELD_DEPTH`] the conversion
/// stops, so it recurses at most that deep whatever the document.
fn json_to_value(v: &Value, depth: usize) -> Result<FieldValue, TableLimitError> {
    Ok(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes())),
        Value::Array(items) => {
            if depth >= MAX_FIELD_DEPTH {
                return Err(TableLimitError::TooDeep);
            }
            let items = items
                .iter()
                .map(|item| json_to_value(item, depth + 1))
                .collect::<Result<_, _>>()?;
            FieldValue::Array(items)
        }
        Value::Object(m) => {
            if depth >= MAX_FIELD_DEPTH {
                return Err(TableLimitError::TooDeep);
            }
            FieldValue::Table(object_to_table(m, depth + 1)?)
        }
    })
}

fn object_to_table(m: &Map<String, Value>, depth: usize) -> Result<FieldTable, TableLimitError> {
    let mut entries = Vec::with_capacity(m.len());
    let mut bytes = 4usize;
    for (k, v) in m {
        // Keys are AMQP short strings: a longer one could only be stored cut short.
        if k.len() > 255 {
            return Err(TableLimitError::TooLarge);
        }
        bytes += 1 + k.len();
        if bytes > MAX_TABLE_BYTES {
            return Err(TableLimitError::TooLarge);
        }
        entries.push((k.clone(), json_to_value(v, depth)?));
    }
    // A JSON object's keys are distinct already.
    Ok(FieldTable::from_distinct(entries))
}

/// A JSON object as a field table (null or absent is an empty table), refused unless it
/// keeps the limits every stored table keeps ([`FieldTable::check_limits`]): `what` names
/// the table in the error.
pub fn json_to_table(v: Option<&Value>, what: &str) -> Result<FieldTable, String> {
    let refuse = |e: TableLimitError| match e {
        TableLimitError::TooLarge => format!(
            "{what}: field table larger than {MAX_TABLE_BYTES} bytes encoded, or a key longer than 255 bytes"
        ),
        TableLimitError::TooDeep => format!("{what}: {e}"),
    };
    let table = match v {
        // Erlang writes an empty proplist as [], which some documents carry for {}.
        None | Some(Value::Null) => return Ok(FieldTable::default()),
        Some(Value::Array(a)) if a.is_empty() => return Ok(FieldTable::default()),
        Some(Value::Object(m)) => object_to_table(m, 1).map_err(refuse)?,
        Some(other) => return Err(format!("{what}: expected a JSON object, got {other}")),
    };
    table.check_limits().map_err(refuse)?;
    Ok(table)
}

/// A property's short string as JSON text; bytes that are not UTF-8 are replaced.
fn text_json(s: &ShortStr) -> Value {
    Value::String(s.to_str_lossy().into_owned())
}

/// Message properties as the management API shows them.
pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("content_type", p.content_type.as_ref().map(text_json));
    put(
        "content_encoding",
        p.content_encoding.as_ref().map(text_json),
    );
    put("headers", p.headers.as_ref().map(table_to_json));
    put("delivery_mode", p.delivery_mode.map(|v| json!(v)));
    put("priority", p.priority.map(|v| json!(v)));
    put("correlation_id", p.correlation_id.as_ref().map(text_json));
    put("reply_to", p.reply_to.as_ref().map(text_json));
    put("expiration", p.expiration.as_ref().map(text_json));
    put("message_id", p.message_id.as_ref().map(text_json));
    put("timestamp", p.timestamp.map(|v| json!(v)));
    put("type", p.kind.as_ref().map(text_json));
    put("user_id", p.user_id.as_ref().map(text_json));
    put("app_id", p.app_id.as_ref().map(text_json));
    put("cluster_id", p.cluster_id.as_ref().map(text_json));
    Value::Object(m)
}

/// Message properties from the management API's JSON (unknown keys are ignored, as
/// RabbitMQ does). Text properties are AMQP short strings and the headers a field table:
/// values that could only be stored cut short or not read back are refused.
pub fn json_to_properties(v: &Value) -> Result<BasicProperties, String> {
    for (k, x) in v.as_object().into_iter().flatten() {
        if let Value::String(text) = x
            && text.len() > 255
        {
            return Err(format!("invalid property {k}: longer than 255 bytes"));
        }
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(ShortStr::from);
    let small = |k: &str| -> Result<Option<u8>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => match x.as_u64().or_else(|| x.as_str()?.parse().ok()) {
                Some(n) if n <= 255 => Ok(Some(n as u8)),
                _ => Err(format!("invalid property {k}: {x}")),
            },
        }
    };
    Ok(BasicProperties {
        content_type: text("content_type"),
        content_encoding: text("content_encoding"),
        headers: match v.get("headers") {
            Some(h) if h.is_object() => Some(json_to_table(Some(h), "headers")?),
            _ => None,
        },
        delivery_mode: small("delivery_mode")?,
        priority: small("priority")?,
        correlation_id: text("correlation_id"),
        reply_to: text("reply_to"),
        expiration: match v.get("expiration") {
            Some(Value::Number(n)) => Some(ShortStr::from(n.to_string())),
            _ => text("expiration"),
        },
        message_id: text("message_id"),
        timestamp: v.get("timestamp").and_then(Value::as_u64),
        kind: text("type"),
        user_id: text("user_id"),
        app_id: text("app_id"),
        cluster_id: text("cluster_id"),
    })
}

/// Per-second rates of a set of counters, as RabbitMQ's `*_details` objects give them.
pub type Rates = [f64; 10];

/// RabbitMQ's `message_stats` object: each counter and its `_details.rate`.
pub fn message_stats(c: &MessageCounters, rates: &Rates) -> Value {
    let mut m = Map::new();
    for (i, (name, count)) in c.named().iter().enumerate() {
        m.insert(name.to_string(), json!(count));
        m.insert(format!("{name}_details"), json!({ "rate": rates[i] }));
    }
    Value::Object(m)
}

fn details(rate: f64) -> Value {
    json!({ "rate": rate })
}

/// A user as `/api/users` shows it, with its limits (`{}` when it has none).
pub fn user_json(u: &UserRecord, limits: Option<&UserLimits>) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": u.tags,
        "limits": user_limits_json(&limits.copied().unwrap_or_default()),
    })
}

// ----- limits -----

fn limits_object(pairs: &[(&str, Option<i64>)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), json!(v))))
            .collect(),
    )
}

/// A vhost's limits as RabbitMQ shows them: the set ones, by name.
pub fn vhost_limits_json(l: &VhostLimits) -> Value {
    limits_object(&[
        (MAX_CONNECTIONS, l.max_connections),
        (MAX_QUEUES, l.max_queues),
    ])
}

/// A user's limits as RabbitMQ shows them: the set ones, by name.
pub fn user_limits_json(l: &UserLimits) -> Value {
    limits_object(&[
        (MAX_CHANNELS, l.max_channels),
        (MAX_CONNECTIONS, l.max_connections),
    ])
}

/// A JSON value as RabbitMQ's validation messages print it (an Erlang term).
fn erlang_term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

/// Reads limits named in `names` from a JSON object, with RabbitMQ's validation messages
/// (`scope` is "limits" for a vhost's, "user-limits" for a user's).
fn limits_from_json<const N: usize>(
    v: &Value,
    names: [&str; N],
    scope: &str,
) -> Result<[Option<i64>; N], String> {
    let vhost = scope == "limits";
    let failed = |why: String| {
        if vhost {
            format!("Validation failed\n\n{why}\n")
        } else {
            why
        }
    };
    let Value::Object(m) = v else {
        return Err(failed(format!(
            "{scope} should be a JSON object, actually was {}",
            erlang_term(v)
        )));
    };
    let mut out = [None; N];
    let mut unknown = Vec::new();
    for (k, x) in m {
        match names.iter().position(|n| n == k) {
            Some(i) => match x.as_i64() {
                Some(n) => out[i] = Some(n),
                None => {
                    return Err(failed(format!(
                        "{k} should be a number, actually was {}",
                        erlang_term(x)
                    )));
                }
            },
            None => unknown.push(format!("{{<<\"{k}\">>,{}}}", erlang_term(x))),
        }
    }
    if !unknown.is_empty() {
        return Err(failed(format!(
            "Unrecognised terms [{}] in {scope}",
            unknown.join(",")
        )));
    }
    Ok(out)
}

/// A vhost's limits from a JSON object (`set_vhost_limits`' argument).
pub fn vhost_limits_from_json(v: &Value) -> Result<VhostLimits, String> {
    let [max_connections, max_queues] =
        limits_from_json(v, [MAX_CONNECTIONS, MAX_QUEUES], "limits")?;
    Ok(VhostLimits {
        max_connections,
        max_queues,
    })
}

/// A user's limits from a JSON object (`set_user_limits`' argument).
pub fn user_limits_from_json(v: &Value) -> Result<UserLimits, String> {
    let [max_connections, max_channels] =
        limits_from_json(v, [MAX_CONNECTIONS, MAX_CHANNELS], "user-limits")?;
    Ok(UserLimits {
        max_connections,
        max_channels,
    })
}

/// A policy as `/api/policies` and `/api/operator-policies` show it.
pub fn policy_json(p: &PolicyRecord) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "definition": table_to_json(&p.definition),
        "priority": p.priority,
    })
}

/// A policy from the body of `PUT /api/policies/VHOST/NAME` (or a definitions entry,
/// which also names its vhost and name), with RabbitMQ's defaults: apply to all, priority
/// 0. `pattern` and `definition` are required.
pub fn policy_from_json(
    v: &Value,
    operator: bool,
    vhost: &str,
    name: &str,
) -> Result<PolicyRecord, String> {
    let failed = |why: String| format!("Validation failed\n\n{why}\n");
    let Value::Object(m) = v else {
        return Err(failed(format!(
            "a policy should be a JSON object, actually was {}",
            erlang_term(v)
        )));
    };
    let pattern = match m.get("pattern") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(failed(format!(
                "pattern should be a string, actually was {}",
                erlang_term(other)
            )));
        }
        None => return Err(failed("Key \"pattern\" not found in policy".into())),
    };
    let definition = match m.get("definition") {
        Some(d @ Value::Object(_)) => json_to_table(Some(d), "policy definition")?,
        Some(other) => {
            return Err(failed(format!(
                "definition should be a JSON object, actually was {}",
                erlang_term(other)
            )));
        }
        None => return Err(failed("Key \"definition\" not found in policy".into())),
    };
    let priority = match m.get("priority") {
        None | Some(Value::Null) => 0,
        Some(p) => match p.as_i64() {
            Some(n) => n,
            None => {
                return Err(failed(format!(
                    "priority should be a number, actually was {}",
                    erlang_term(p)
                )));
            }
        },
    };
    let apply_to = match m.get("apply-to") {
        None | Some(Value::Null) => "all".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(failed(format!(
                "apply-to should be a string, actually was {}",
                erlang_term(other)
            )));
        }
    };
    Ok(PolicyRecord {
        operator,
        vhost: vhost.to_string(),
        name: name.to_string(),
        pattern,
        apply_to,
        priority,
        definition,
    })
}

/// Topic permissions as `/api/topic-permissions` shows them.
pub fn topic_permission_json(p: &TopicPermissionRecord) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "exchange": p.exchange,
        "write": p.write,
        "read": p.read,
    })
}

/// A permission as `/api/permissions` shows it.
pub fn permission_json(p: &PermissionRecord) -> Value {
    json!({
        "user": p.user,
        "vhost": p.vhost,
        "configure": p.configure,
        "write": p.write,
        "read": p.read,
    })
}

/// Queue depth rates: messages, ready, unacknowledged (per second).
pub type DepthRates = [f64; 3];

/// A queue as `/api/queues` shows it.
pub fn queue_json(q: &QueueInfo, node: &str, rates: &Rates, depth: &DepthRates) -> Value {
    let messages = q.messages_ready + q.messages_unacknowledged;
    let mut v = json!({
        "name": q.name,
        "vhost": q.vhost,
        "durable": q.durable,
        "auto_delete": q.auto_delete,
        "exclusive": q.owner.is_some(),
        "arguments": table_to_json(&q.arguments),
        "node": node,
        "state": "running",
        "type": "classic",
        "policy": q.policy,
        "operator_policy": q.operator_policy,
        "effective_policy_definition": table_to_json(&q.effective_policy_definition),
        "messages": messages,
        "messages_details": details(depth[0]),
        "messages_ready": q.messages_ready,
        "messages_ready_details": details(depth[1]),
        "messages_unacknowledged": q.messages_unacknowledged,
        "messages_unacknowledged_details": details(depth[2]),
        "message_bytes": q.message_bytes_ready + q.message_bytes_unacknowledged,
        "message_bytes_ready": q.message_bytes_ready,
        "message_bytes_unacknowledged": q.message_bytes_unacknowledged,
        "consumers": q.consumers,
        "exclusive_consumer_tag": q.exclusive_consumer_tag,
        "message_stats": message_stats(&q.stats, rates),
    });
    if let Some(ms) = q.idle_since_ms {
        v["idle_since"] = Value::String(format_time(ms));
    }
    v
}

/// An exchange as `/api/exchanges` shows it.
pub fn exchange_json(x: &ExchangeInfo) -> Value {
    let mut v = json!({
        "name": x.name,
        "vhost": x.vhost,
        "type": x.kind,
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "",
        "policy": x.policy,
    });
    if let Some(n) = x.messages_delayed {
        v["messages_delayed"] = json!(n);
    }
    v
}

/// The key that names a binding among those with the same ends in
/// `/api/bindings/.../{props}`: the routing key ("~" when empty), plus a digest of the
/// arguments when there are any.
pub fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    use sha2::{Digest, Sha256};
    let key = if routing_key.is_empty() {
        "~".to_string()
    } else {
        routing_key.to_string()
    };
    if arguments.is_empty() {
        return key;
    }
    let mut encoded = bytes::BytesMut::new();
    arguments.encode(&mut encoded);
    let digest = Sha256::digest(&encoded);
    let short = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12]);
    format!("{}~{short}", routing_key)
}

/// A binding as `/api/bindings` shows it.
pub fn binding_json(b: &BindingInfo) -> Value {
    json!({
        "source": b.source,
        "vhost": b.vhost,
        "destination": b.destination,
        "destination_type": if b.to_queue { "queue" } else { "exchange" },
        "routing_key": b.routing_key,
        "arguments": table_to_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// Tags as RabbitMQ writes them: a list, or a comma-separated string (older versions).
pub fn parse_tags(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        Some(Value::String(s)) => s
            .split([',', ' '])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Milliseconds since the epoch as RabbitMQ prints times: "2024-01-02 03:04:05" (UTC).
pub fn format_time(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        // Past the year 9999: not a time the broker's clock gives.
        Err(_) => format!("{secs}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() {
        let v = json!({"x-message-ttl": 1000, "x-dead-letter-exchange": "dlx", "f": 1.5,
                       "nested": {"a": [true, null]}});
        let t = json_to_table(Some(&v), "arguments").unwrap();
        assert_eq!(t.get("x-message-ttl"), Some(&FieldValue::I64(1000)));
        assert_eq!(table_to_json(&t), v);
        assert_eq!(json_to_table(None, "a"), Ok(FieldTable::default()));
        assert!(json_to_table(Some(&json!([1])), "a").is_err());
        assert_eq!(
            json_to_table(Some(&json!([])), "a"),
            Ok(FieldTable::default())
        );
    }

    /// Nested JSON deeper than a stored table may be, or larger, is refused with a reason;
    /// the conversion stops at the limit instead of following the document down.
    #[test]
    fn deep_wide_or_long_keyed_tables_are_refused() {
        let mut deep = json!(1);
        for i in 0..120 {
            deep = if i % 2 == 0 {
                json!({ "k": deep })
            } else {
                json!([deep])
            };
        }
        let e = json_to_table(Some(&json!({ "x": deep })), "arguments").unwrap_err();
        assert!(
            e.starts_with("arguments: field tables and arrays nested deeper"),
            "{e}"
        );
        let mut ok = json!(1);
        for _ in 0..(MAX_FIELD_DEPTH - 1) {
            ok = json!({ "k": ok });
        }
        let t = json_to_table(Some(&ok), "arguments").unwrap();
        assert_eq!(t.check_limits(), Ok(()));
        let big: Map<String, Value> = (0..20_000)
            .map(|i| (format!("key-{i:08}"), json!(i)))
            .collect();
        let e = json_to_table(Some(&Value::Object(big)), "headers").unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        let long_key = json!({ "k".repeat(256): 1 });
        assert!(json_to_table(Some(&long_key), "a").is_err());
        let long_text = json!({ "content_type": "t".repeat(256) });
        assert!(json_to_properties(&long_text).is_err());
        let deep_headers = json!({ "headers": { "x": deep } });
        assert!(json_to_properties(&deep_headers).is_err());
    }

    #[test]
    fn properties_round_trip_through_json() {
        let v = json!({"delivery_mode": 2, "headers": {"k": "v"}, "type": "t", "priority": 5,
                       "expiration": "60000", "timestamp": 17});
        let p = json_to_properties(&v).unwrap();
        assert_eq!(p.delivery_mode, Some(2));
        assert_eq!(p.kind, Some("t".into()));
        assert_eq!(properties_to_json(&p), v);
        assert!(json_to_properties(&json!({"priority": 300})).is_err());
    }

    #[test]
    fn limits_parse_and_print_like_rabbitmq() {
        let l = vhost_limits_from_json(&json!({"max-queues": 10, "max-connections": -1})).unwrap();
        assert_eq!(l.max_queues, Some(10));
        assert_eq!(
            vhost_limits_json(&l).to_string(),
            r#"{"max-connections":-1,"max-queues":10}"#
        );
        assert_eq!(
            vhost_limits_from_json(&json!({"max-queues": "x"})).unwrap_err(),
            "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"
        );
        assert_eq!(
            vhost_limits_from_json(&json!({"max-foo": 1})).unwrap_err(),
            "Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,1}] in limits\n"
        );
        assert!(vhost_limits_from_json(&json!({"max-queues": 1.5})).is_err());
        let u = user_limits_from_json(&json!({"max-connections": 2, "max-channels": 0})).unwrap();
        assert_eq!(
            user_limits_json(&u).to_string(),
            r#"{"max-channels":0,"max-connections":2}"#
        );
        assert_eq!(
            user_limits_from_json(&json!({"max-queues": 1})).unwrap_err(),
            r#"Unrecognised terms [{<<"max-queues">>,1}] in user-limits"#
        );
        assert_eq!(user_limits_json(&UserLimits::default()), json!({}));
    }

    #[test]
    fn times_print_like_rabbitmq() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn properties_keys_distinguish_arguments() {
        let none = FieldTable::default();
        assert_eq!(properties_key("", &none), "~");
        assert_eq!(properties_key("k", &none), "k");
        let args: FieldTable = [("x", FieldValue::I64(1))].into_iter().collect();
        assert!(properties_key("k", &args).starts_with("k~"));
    }
}
