//! Definitions documents in RabbitMQ's format: what `GET /api/definitions` and
//! `warren ctl export_definitions` write, and what an import reads (users, vhosts,
//! permissions, limits, policies, queues, exchanges and bindings).

use super::*;

/// A definitions document in RabbitMQ's format.
pub fn definitions_to_json(d: &Definitions, vhost_only: bool) -> Value {
    let queues: Vec<Value> = d
        .queues
        .iter()
        .map(|q| {
            json!({
                "name": q.name, "vhost": q.vhost, "durable": q.durable,
                "auto_delete": q.auto_delete, "arguments": table_to_json(&q.arguments),
            })
        })
        .collect();
    let exchanges: Vec<Value> = d
        .exchanges
        .iter()
        .map(|x| {
            json!({
                "name": x.name, "vhost": x.vhost, "type": x.kind, "durable": x.durable,
                "auto_delete": x.auto_delete, "internal": x.internal,
                "arguments": table_to_json(&x.arguments),
            })
        })
        .collect();
    let bindings: Vec<Value> = d
        .bindings
        .iter()
        .map(|b| {
            let mut v = binding_json(b);
            if let Some(m) = v.as_object_mut() {
                m.remove("properties_key");
            }
            v
        })
        .collect();
    // Operator policies are runtime parameters in RabbitMQ's documents.
    let operator_policies = d.policies.iter().filter(|p| p.operator).map(|p| {
        let mut value = policy_json(p);
        if let Some(m) = value.as_object_mut() {
            m.remove("vhost");
            m.remove("name");
        }
        json!({
            "value": value, "vhost": p.vhost,
            "component": OPERATOR_POLICY_COMPONENT, "name": p.name,
        })
    });
    let parameters: Vec<Value> = d
        .vhost_limits
        .iter()
        .map(|(vhost, l)| {
            json!({
                "value": vhost_limits_json(l), "vhost": vhost,
                "component": VHOST_LIMITS_COMPONENT, "name": "limits",
            })
        })
        .chain(operator_policies)
        .collect();
    let policies: Vec<Value> = d
        .policies
        .iter()
        .filter(|p| !p.operator)
        .map(policy_json)
        .collect();
    let mut doc = json!({
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "parameters": parameters,
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    });
    if !vhost_only {
        let limits_of = |name: &str| {
            d.user_limits
                .iter()
                .find(|(u, _)| u == name)
                .map(|(_, l)| l)
        };
        doc["users"] = Value::Array(
            d.users
                .iter()
                .map(|u| user_json(u, limits_of(&u.name)))
                .collect(),
        );
        doc["vhosts"] = Value::Array(
            d.vhosts
                .iter()
                .map(|v| json!({ "name": v, "limits": [], "metadata": { "description": "", "tags": [] } }))
                .collect(),
        );
        doc["permissions"] = Value::Array(d.permissions.iter().map(permission_json).collect());
        doc["topic_permissions"] = Value::Array(
            d.topic_permissions
                .iter()
                .map(topic_permission_json)
                .collect(),
        );
        doc["global_parameters"] = json!([]);
    }
    doc
}

fn text_field(v: &Value, key: &str, what: &str) -> Result<String, String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("{what}: missing or non-string '{key}'"))
}

fn bool_field(v: &Value, key: &str, default: bool) -> bool {
    match v.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => default,
    }
}

/// Reads a definitions document. With `vhost` set (an import into one vhost), every
/// object lands in that vhost and users, vhosts and permissions are ignored.
pub fn definitions_from_json(doc: &Value, vhost: Option<&str>) -> Result<Definitions, String> {
    let mut d = Definitions {
        into_vhost: vhost.map(str::to_string),
        ..Definitions::default()
    };
    if vhost.is_none() {
        read_access_definitions(doc, &mut d)?;
    }
    read_vhost_limit_definitions(doc, vhost, &mut d)?;
    for p in definitions_list(doc, "policies") {
        let v = definition_vhost(p, vhost, "policy")?;
        let name = text_field(p, "name", "policy")?;
        let policy = policy_from_json(p, false, &v, &name)
            .map_err(|e| format!("policy {name} in vhost {v}: {e}"))?;
        d.policies.push(policy);
    }
    for q in definitions_list(doc, "queues") {
        d.queues.push(queue_definition(q, vhost)?);
    }
    for x in definitions_list(doc, "exchanges") {
        d.exchanges.push(exchange_definition(x, vhost)?);
    }
    for b in definitions_list(doc, "bindings") {
        d.bindings.push(binding_definition(b, vhost)?);
    }
    Ok(d)
}

/// The array under `key` of a definitions document (none if absent or not an array).
fn definitions_list<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The vhost of a definition: `vhost` for an import into one vhost, else its own.
fn definition_vhost(v: &Value, vhost: Option<&str>, what: &str) -> Result<String, String> {
    match vhost {
        Some(only) => Ok(only.to_string()),
        None => text_field(v, "vhost", what),
    }
}

/// The vhosts, users (with their limits) and permissions of a definitions document.
fn read_access_definitions(doc: &Value, d: &mut Definitions) -> Result<(), String> {
    for v in definitions_list(doc, "vhosts") {
        d.vhosts.push(text_field(v, "name", "vhost")?);
    }
    for u in definitions_list(doc, "users") {
        read_user_definition(u, d)?;
    }
    for p in definitions_list(doc, "permissions") {
        d.permissions.push(PermissionRecord {
            user: text_field(p, "user", "permission")?,
            vhost: text_field(p, "vhost", "permission")?,
            configure: text_field(p, "configure", "permission")?,
            write: text_field(p, "write", "permission")?,
            read: text_field(p, "read", "permission")?,
        });
    }
    for p in definitions_list(doc, "topic_permissions") {
        d.topic_permissions.push(TopicPermissionRecord {
            user: text_field(p, "user", "topic permission")?,
            vhost: text_field(p, "vhost", "topic permission")?,
            exchange: text_field(p, "exchange", "topic permission")?,
            write: text_field(p, "write", "topic permission")?,
            read: text_field(p, "read", "topic permission")?,
        });
    }
    Ok(())
}

/// One user of a definitions document, and its limits if it has any.
fn read_user_definition(u: &Value, d: &mut Definitions) -> Result<(), String> {
    let name = text_field(u, "name", "user")?;
    if let Some(alg) = u.get("hashing_algorithm").and_then(Value::as_str)
        && alg != HASHING_ALGORITHM
    {
        return Err(format!(
            "user {name}: unsupported hashing_algorithm '{alg}'"
        ));
    }
    let password_hash = match (u.get("password_hash"), u.get("password")) {
        (Some(Value::String(h)), _) => h.clone(),
        (_, Some(Value::String(p))) => plain_password_marker(p),
        _ => String::new(),
    };
    if let Some(l) = u.get("limits") {
        let limits = user_limits_from_json(l).map_err(|e| format!("user {name}: {e}"))?;
        if !limits.is_empty() {
            d.user_limits.push((name.clone(), limits));
        }
    }
    d.users.push(UserRecord {
        name,
        password_hash,
        tags: parse_tags(u.get("tags")),
    });
    Ok(())
}

/// The vhost limits among the parameters of a definitions document (the last of a vhost
/// wins).
fn read_vhost_limit_definitions(
    doc: &Value,
    vhost: Option<&str>,
    d: &mut Definitions,
) -> Result<(), String> {
    for p in definitions_list(doc, "parameters") {
        let component = p.get("component").and_then(Value::as_str);
        if component == Some(OPERATOR_POLICY_COMPONENT) {
            let vhost = definition_vhost(p, vhost, "parameter")?;
            let name = text_field(p, "name", "operator policy")?;
            let value = p.get("value").unwrap_or(&Value::Null);
            let policy = policy_from_json(value, true, &vhost, &name)
                .map_err(|e| format!("operator policy {name} in vhost {vhost}: {e}"))?;
            d.policies.push(policy);
            continue;
        }
        // Other components (federation, shovels) are features warren does not have; as
        // before, they are not imported.
        if component != Some(VHOST_LIMITS_COMPONENT) {
            continue;
        }
        let vhost = definition_vhost(p, vhost, "parameter")?;
        let limits = vhost_limits_from_json(p.get("value").unwrap_or(&Value::Null))
            .map_err(|e| format!("limits of vhost {vhost}: {e}"))?;
        d.vhost_limits.retain(|(v, _)| *v != vhost);
        d.vhost_limits.push((vhost, limits));
    }
    Ok(())
}

/// One queue of a definitions document.
fn queue_definition(q: &Value, vhost: Option<&str>) -> Result<QueueDef, String> {
    Ok(QueueDef {
        vhost: definition_vhost(q, vhost, "queue")?,
        name: text_field(q, "name", "queue")?,
        durable: bool_field(q, "durable", true),
        auto_delete: bool_field(q, "auto_delete", false),
        arguments: json_to_table(q.get("arguments"), "queue arguments")?,
    })
}

/// One exchange of a definitions document.
fn exchange_definition(x: &Value, vhost: Option<&str>) -> Result<ExchangeDef, String> {
    Ok(ExchangeDef {
        vhost: definition_vhost(x, vhost, "exchange")?,
        name: text_field(x, "name", "exchange")?,
        kind: text_field(x, "type", "exchange")?,
        durable: bool_field(x, "durable", true),
        auto_delete: bool_field(x, "auto_delete", false),
        internal: bool_field(x, "internal", false),
        arguments: json_to_table(x.get("arguments"), "exchange arguments")?,
    })
}

/// One binding of a definitions document.
fn binding_definition(b: &Value, vhost: Option<&str>) -> Result<BindingInfo, String> {
    let kind = text_field(b, "destination_type", "binding")?;
    Ok(BindingInfo {
        vhost: definition_vhost(b, vhost, "binding")?,
        source: text_field(b, "source", "binding")?,
        destination: text_field(b, "destination", "binding")?,
        to_queue: kind == "queue",
        routing_key: text_field(b, "routing_key", "binding").unwrap_or_default(),
        arguments: json_to_table(b.get("arguments"), "binding arguments")?,
    })
}

/// Definitions may carry a plain `password` instead of a hash; it is marked here and
/// hashed by the HTTP layer before import (the core only takes hashes in imports).
fn plain_password_marker(p: &str) -> String {
    format!("\u{0}plain:{p}")
}

/// The plain password marked by [`definitions_from_json`], if `hash` is one.
pub fn marked_plain_password(hash: &str) -> Option<&str> {
    hash.strip_prefix("\u{0}plain:")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Policies go out as RabbitMQ writes them (operator policies as runtime parameters)
    /// and come back the same; topic permissions too.
    #[test]
    fn policies_and_topic_permissions_round_trip_through_definitions() {
        let definition = json_to_table(Some(&json!({"max-length": 5})), "d").unwrap();
        let policy = |operator: bool, name: &str| PolicyRecord {
            operator,
            vhost: "/".into(),
            name: name.into(),
            pattern: "^q".into(),
            apply_to: "queues".into(),
            priority: 3,
            definition: definition.clone(),
        };
        let defs = Definitions {
            policies: vec![policy(false, "p"), policy(true, "cap")],
            topic_permissions: vec![TopicPermissionRecord {
                user: "u".into(),
                vhost: "/".into(),
                exchange: "amq.topic".into(),
                write: "^a".into(),
                read: ".*".into(),
            }],
            ..Definitions::default()
        };
        let doc = definitions_to_json(&defs, false);
        assert_eq!(doc["policies"][0]["apply-to"], "queues");
        assert_eq!(doc["parameters"][0]["component"], "operator_policy");
        let back = definitions_from_json(&doc, None).unwrap();
        assert_eq!(back.policies, vec![policy(true, "cap"), policy(false, "p")]);
        assert_eq!(back.topic_permissions, defs.topic_permissions);
        let bad = json!({"policies": [{"vhost": "/", "name": "x", "definition": {}}]});
        assert!(definitions_from_json(&bad, None).is_err(), "no pattern");
    }

    #[test]
    fn definitions_round_trip() {
        let doc = json!({
            "users": [{"name": "u", "password_hash": "h", "tags": "administrator,monitoring"}],
            "vhosts": [{"name": "/"}],
            "permissions": [{"user": "u", "vhost": "/", "configure": ".*", "write": "", "read": ".*"}],
            "queues": [{"name": "q", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],
            "exchanges": [{"name": "x", "vhost": "/", "type": "topic", "durable": true,
                           "auto_delete": false, "internal": false, "arguments": {}}],
            "bindings": [{"source": "x", "vhost": "/", "destination": "q", "destination_type": "queue",
                          "routing_key": "a.#", "arguments": {}}],
        });
        let d = definitions_from_json(&doc, None).unwrap();
        assert_eq!(d.users[0].tags, ["administrator", "monitoring"]);
        let again = definitions_from_json(&definitions_to_json(&d, false), None).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn limits_travel_in_definitions() {
        let doc = json!({
            "users": [{"name": "u", "password_hash": "", "tags": [], "limits": {"max-channels": 3}}],
            "vhosts": [{"name": "v"}],
            "parameters": [
                {"value": {"max-queues": 1}, "vhost": "v", "component": "vhost-limits", "name": "limits"},
                {"value": {"uri": "amqp://"}, "vhost": "v", "component": "federation-upstream", "name": "up"}
            ],
        });
        let d = definitions_from_json(&doc, None).unwrap();
        assert_eq!(d.user_limits[0].1.max_channels, Some(3));
        assert_eq!(d.vhost_limits[0].1.max_queues, Some(1));
        let out = definitions_to_json(&d, false);
        assert_eq!(out["parameters"][0]["component"], "vhost-limits");
        assert_eq!(out["users"][0]["limits"], json!({"max-channels": 3}));
        assert_eq!(definitions_from_json(&out, None).unwrap(), d);
        let bad = json!({"parameters": [{"value": {"max-queues": "x"}, "vhost": "v",
                                          "component": "vhost-limits", "name": "limits"}]});
        assert!(definitions_from_json(&bad, None).is_err());
    }
}
