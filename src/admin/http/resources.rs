//! Queues, exchanges, bindings and messages.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::admin::json::{
    binding_json, exchange_json, json_to_properties, json_to_table, properties_key, queue_json,
};
use crate::broker::admin::{
    AdminReply, AdminRequest, BindingInfo, ExchangeInfo, GetAck, MAX_REPUBLISH_COUNT, QueueInfo,
};

use super::{
    ApiError, ApiResult, Ctx, PageRequest, Principal, State, authenticate, created_or_updated,
    flag, listing, name_filter, no_content, ok_json, page_request, parse_body, pick_columns,
    rates_of,
};

/// The exchange name RabbitMQ's API uses for the default exchange.
fn exchange_name(name: &str) -> String {
    if name == "amq.default" {
        String::new()
    } else {
        name.to_string()
    }
}

// ----- queues -----

/// The key of a queue's rate history.
fn queue_rate_key(q: &QueueInfo) -> String {
    format!("{QUEUE_RATES}{}\0{}", q.vhost, q.name)
}

/// The prefix of queues' rate history keys.
const QUEUE_RATES: &str = "q\0";

pub(super) async fn queue_infos(
    s: &Ctx,
    vhost: Option<String>,
) -> Result<Vec<QueueInfo>, ApiError> {
    let every = vhost.is_none();
    let AdminReply::Queues(queues) = s.call(AdminRequest::ListQueues { vhost }).await? else {
        return Err(ApiError::not_found());
    };
    if every {
        // A full listing: the history of queues not in it (deleted) goes.
        let live = queues.iter().map(queue_rate_key).collect();
        s.forget_rates(QUEUE_RATES, &live);
    }
    Ok(queues)
}

async fn exchange_infos(s: &Ctx, vhost: Option<String>) -> Result<Vec<ExchangeInfo>, ApiError> {
    match s.call(AdminRequest::ListExchanges { vhost }).await? {
        AdminReply::Exchanges(x) => Ok(x),
        _ => Err(ApiError::not_found()),
    }
}

pub(super) fn queues_json(s: &Ctx, queues: &[QueueInfo]) -> Vec<Value> {
    let now = Instant::now();
    queues
        .iter()
        .map(|q| {
            let depth = [
                q.messages_ready + q.messages_unacknowledged,
                q.messages_ready,
                q.messages_unacknowledged,
            ];
            let (rates, depth_rates) = rates_of(s, &queue_rate_key(q), now, &q.stats, &depth);
            queue_json(q, &s.node, &rates, &depth_rates)
        })
        .collect()
}

async fn visible_queues(
    s: &Ctx,
    who: &Principal,
    vhost: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    if let Some(v) = &vhost {
        who.require_vhost(v)?;
    }
    let mut queues = Vec::new();
    for scope in who.listing_scope(vhost) {
        queues.extend(queue_infos(s, scope).await?);
    }
    queues.retain(|q| who.sees_vhost(&q.vhost));
    Ok(queues_json(s, &queues))
}

/// `/api/queues` and `/api/queues/{vhost}`.
pub(super) async fn list_queues(
    s: State,
    headers: HeaderMap,
    vhost: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let vhost = vhost.map(|Path(v)| v);
    if let Some(vhost) = &vhost {
        require_known_vhost(&s, vhost).await?;
    }
    let sort = q.get("sort").map_or("", String::as_str);
    if let (Some(page), Some(order)) = (page_request(&q)?, queue_order(sort)) {
        return queue_page(&s, &who, vhost, &q, page, order).await;
    }
    listing(visible_queues(&s, &who, vhost).await?, &q)
}

/// How a queue listing sorted by `key` orders the queues themselves, for the sort keys that
/// are plain fields of a queue ("" is the broker's own order).
fn queue_order(key: &str) -> Option<fn(&QueueInfo, &QueueInfo) -> Ordering> {
    Some(match key {
        "" | "node" | "state" | "type" | "policy" => |_, _| Ordering::Equal,
        "name" => |a, b| a.name.cmp(&b.name),
        "vhost" => |a, b| a.vhost.cmp(&b.vhost),
        "durable" => |a, b| a.durable.cmp(&b.durable),
        "auto_delete" => |a, b| a.auto_delete.cmp(&b.auto_delete),
        "exclusive" => |a, b| a.owner.is_some().cmp(&b.owner.is_some()),
        "messages" => |a, b| {
            (a.messages_ready + a.messages_unacknowledged)
                .cmp(&(b.messages_ready + b.messages_unacknowledged))
        },
        "messages_ready" => |a, b| a.messages_ready.cmp(&b.messages_ready),
        "messages_unacknowledged" => {
            |a, b| a.messages_unacknowledged.cmp(&b.messages_unacknowledged)
        }
        "message_bytes" => |a, b| {
            (a.message_bytes_ready + a.message_bytes_unacknowledged)
                .cmp(&(b.message_bytes_ready + b.message_bytes_unacknowledged))
        },
        "message_bytes_ready" => |a, b| a.message_bytes_ready.cmp(&b.message_bytes_ready),
        "message_bytes_unacknowledged" => |a, b| {
            a.message_bytes_unacknowledged
                .cmp(&b.message_bytes_unacknowledged)
        },
        "consumers" => |a, b| a.consumers.cmp(&b.consumers),
        _ => return None,
    })
}

/// A page of a queue listing, filtered, sorted and cut before any queue is rendered, so that
/// its cost is one pass and a sort over the queues, whatever their number; the same answer
/// as [`listing`] gives for the rendered queues.
async fn queue_page(
    s: &Ctx,
    who: &Principal,
    vhost: Option<String>,
    q: &HashMap<String, String>,
    page: PageRequest,
    order: fn(&QueueInfo, &QueueInfo) -> Ordering,
) -> ApiResult {
    if let Some(v) = &vhost {
        who.require_vhost(v)?;
    }
    let filter = name_filter(q)?;
    let mut queues = Vec::new();
    for scope in who.listing_scope(vhost) {
        queues.extend(queue_infos(s, scope).await?);
    }
    queues
        .retain(|x| who.sees_vhost(&x.vhost) && filter.as_ref().is_none_or(|f| f.accepts(&x.name)));
    queues.sort_by(order);
    if flag(q, "sort_reverse") {
        queues.reverse();
    }
    let total = queues.len();
    let (range, page_count) = page.range(total)?;
    let items = pick_columns(queues_json(s, &queues[range]), q);
    page.answer(items, total, page_count)
}

/// 404 for a vhost that does not exist.
async fn require_known_vhost(s: &Ctx, vhost: &str) -> Result<(), ApiError> {
    match s.call(AdminRequest::ListVhosts).await? {
        AdminReply::Vhosts(v) if v.iter().any(|x| x.name == vhost) => Ok(()),
        _ => Err(ApiError::not_found()),
    }
}

pub(super) async fn get_queue(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let q = queue_infos(&s, Some(vhost))
        .await?
        .into_iter()
        .find(|q| q.name == name)
        .ok_or_else(ApiError::not_found)?;
    let mut rendered = queues_json(&s, std::slice::from_ref(&q));
    ok_json(rendered.pop().expect("one queue rendered"))
}

pub(super) async fn put_queue(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let reply = s
        .call(AdminRequest::DeclareQueue {
            actor: who.actor(),
            vhost,
            name,
            durable: body.get("durable").and_then(Value::as_bool).unwrap_or(true),
            auto_delete: body
                .get("auto_delete")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            arguments: json_to_table(body.get("arguments"), "arguments")
                .map_err(ApiError::bad_request)?,
        })
        .await?;
    created_or_updated(reply)
}

pub(super) async fn delete_queue(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    s.call(AdminRequest::DeleteQueue {
        actor: who.actor(),
        vhost,
        name,
        if_empty: flag(&q, "if-empty"),
        if_unused: flag(&q, "if-unused"),
    })
    .await?;
    no_content()
}

pub(super) async fn purge_queue(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    s.call(AdminRequest::PurgeQueue {
        actor: who.actor(),
        vhost,
        name,
    })
    .await?;
    no_content()
}

pub(super) async fn get_messages(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1) as usize;
    let peek = body.get("ackmode").and_then(Value::as_str) == Some("peek");
    let ack = match body.get("ackmode").and_then(Value::as_str) {
        Some("peek") => GetAck::Requeue,
        Some("ack_requeue_false") => GetAck::Ack,
        Some("reject_requeue_true") => GetAck::RejectRequeue,
        Some("reject_requeue_false") => GetAck::Reject,
        Some("ack_requeue_true") => GetAck::Requeue,
        // Older clients send only "requeue".
        None if body.get("requeue").and_then(Value::as_bool) == Some(false) => GetAck::Ack,
        None => GetAck::Requeue,
        Some(other) => return Err(ApiError::bad_request(format!("unknown ackmode '{other}'"))),
    };
    let base64_only = body.get("encoding").and_then(Value::as_str) == Some("base64");
    let truncate = body.get("truncate").and_then(Value::as_u64);
    // "peek" (warren's own mode) reads without taking: nothing is redelivered.
    let request = if peek {
        AdminRequest::Peek {
            actor: who.actor(),
            vhost,
            queue: name,
            count,
        }
    } else {
        AdminRequest::Get {
            actor: who.actor(),
            vhost,
            queue: name,
            count,
            ack,
        }
    };
    let AdminReply::Messages(messages) = s.call(request).await? else {
        return Err(ApiError::not_found());
    };
    // Written piece by piece as the client reads it (see `got`).
    let reply = super::got::GotReply::new(
        messages,
        super::got::Shape {
            truncate: truncate.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            base64_only,
        },
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        axum::body::Body::from_stream(futures_util::stream::iter(reply)),
    )
        .into_response())
}

/// `POST /api/queues/{vhost}/{name}/republish` with `{"positions": [...]}`: sends the dead
/// letters at these positions (from a peek or get) back to the exchange and routing key
/// they were first published with; answers `{"republished": n}`.
pub(super) async fn republish(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let Some(list) = body.get("positions").and_then(Value::as_array) else {
        return Err(ApiError::bad_request(
            "positions: expected a list of message positions",
        ));
    };
    if list.len() > MAX_REPUBLISH_COUNT {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_REPUBLISH_COUNT} messages can be republished at once"
        )));
    }
    let positions = list
        .iter()
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| ApiError::bad_request("positions: expected integers"))
        })
        .collect::<Result<Vec<u64>, ApiError>>()?;
    let reply = s
        .call(AdminRequest::Republish {
            actor: who.actor(),
            vhost,
            queue: name,
            positions,
        })
        .await?;
    let AdminReply::Count(n) = reply else {
        return Err(ApiError::not_found());
    };
    ok_json(json!({ "republished": n }))
}

pub(super) async fn queue_bindings(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let bindings = binding_infos(&s, Some(vhost)).await?;
    let these: Vec<Value> = bindings
        .iter()
        .filter(|b| b.to_queue && b.destination == name)
        .map(binding_json)
        .collect();
    ok_json(Value::Array(these))
}

// ----- exchanges -----

async fn visible_exchanges(
    s: &Ctx,
    who: &Principal,
    vhost: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    if let Some(v) = &vhost {
        who.require_vhost(v)?;
    }
    let mut exchanges = Vec::new();
    for scope in who.listing_scope(vhost) {
        exchanges.extend(exchange_infos(s, scope).await?);
    }
    Ok(exchanges
        .iter()
        .filter(|x| who.sees_vhost(&x.vhost))
        .map(exchange_json)
        .collect())
}

/// `/api/exchanges` and `/api/exchanges/{vhost}`.
pub(super) async fn list_exchanges(
    s: State,
    headers: HeaderMap,
    vhost: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let vhost = vhost.map(|Path(v)| v);
    if let Some(vhost) = &vhost {
        require_known_vhost(&s, vhost).await?;
    }
    listing(visible_exchanges(&s, &who, vhost).await?, &q)
}

pub(super) async fn get_exchange(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let name = exchange_name(&name);
    let x = exchange_infos(&s, Some(vhost))
        .await?
        .into_iter()
        .find(|x| x.name == name)
        .ok_or_else(ApiError::not_found)?;
    ok_json(exchange_json(&x))
}

pub(super) async fn put_exchange(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,type}]"))?
        .to_string();
    let b = |k: &str, d: bool| body.get(k).and_then(Value::as_bool).unwrap_or(d);
    let reply = s
        .call(AdminRequest::DeclareExchange {
            actor: who.actor(),
            vhost,
            name: exchange_name(&name),
            kind,
            durable: b("durable", true),
            auto_delete: b("auto_delete", false),
            internal: b("internal", false),
            arguments: json_to_table(body.get("arguments"), "arguments")
                .map_err(ApiError::bad_request)?,
        })
        .await?;
    created_or_updated(reply)
}

pub(super) async fn delete_exchange(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    s.call(AdminRequest::DeleteExchange {
        actor: who.actor(),
        vhost,
        name: exchange_name(&name),
        if_unused: flag(&q, "if-unused"),
    })
    .await?;
    no_content()
}

pub(super) async fn publish(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,routing_key}]"))?
        .to_string();
    let payload = body
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("[{key_missing,payload}]"))?;
    let payload = match body.get("payload_encoding").and_then(Value::as_str) {
        Some("base64") => Bytes::from(
            BASE64
                .decode(payload)
                .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        ),
        _ => Bytes::copy_from_slice(payload.as_bytes()),
    };
    let mut properties = json_to_properties(body.get("properties").unwrap_or(&json!({})))
        .map_err(ApiError::bad_request)?;
    if let Some(mode) = body.get("delivery_mode").and_then(Value::as_u64) {
        properties.delivery_mode = Some(mode.min(2) as u8);
    }
    let reply = s
        .call(AdminRequest::Publish {
            actor: who.actor(),
            vhost,
            exchange: exchange_name(&name),
            routing_key,
            properties: Box::new(properties),
            body: payload,
        })
        .await?;
    let AdminReply::Routed(routed) = reply else {
        return Err(ApiError::not_found());
    };
    ok_json(json!({ "routed": routed }))
}

async fn exchange_bindings(
    s: &Ctx,
    headers: &HeaderMap,
    vhost: String,
    name: &str,
    as_source: bool,
) -> ApiResult {
    let who = authenticate(s, headers).await?;
    who.require_vhost(&vhost)?;
    let name = exchange_name(name);
    let bindings = binding_infos(s, Some(vhost)).await?;
    let these: Vec<Value> = bindings
        .iter()
        .filter(|b| {
            if as_source {
                b.source == name
            } else {
                !b.to_queue && b.destination == name
            }
        })
        .map(binding_json)
        .collect();
    ok_json(Value::Array(these))
}

pub(super) async fn exchange_bindings_source(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    exchange_bindings(&s, &headers, vhost, &name, true).await
}

pub(super) async fn exchange_bindings_destination(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    exchange_bindings(&s, &headers, vhost, &name, false).await
}

// ----- bindings -----

async fn binding_infos(s: &Ctx, vhost: Option<String>) -> Result<Vec<BindingInfo>, ApiError> {
    match s.call(AdminRequest::ListBindings { vhost }).await? {
        AdminReply::Bindings(b) => Ok(b),
        _ => Err(ApiError::not_found()),
    }
}

async fn visible_bindings(
    s: &Ctx,
    who: &Principal,
    vhost: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    if let Some(v) = &vhost {
        who.require_vhost(v)?;
    }
    let mut bindings = Vec::new();
    for scope in who.listing_scope(vhost) {
        bindings.extend(binding_infos(s, scope).await?);
    }
    Ok(bindings
        .iter()
        .filter(|b| who.sees_vhost(&b.vhost))
        .map(binding_json)
        .collect())
}

/// `/api/bindings` and `/api/bindings/{vhost}`.
pub(super) async fn list_bindings(
    s: State,
    headers: HeaderMap,
    vhost: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let vhost = vhost.map(|Path(v)| v);
    listing(visible_bindings(&s, &who, vhost).await?, &q)
}

fn to_queue(kind: &str) -> Result<bool, ApiError> {
    match kind {
        "q" => Ok(true),
        "e" => Ok(false),
        _ => Err(ApiError::not_found()),
    }
}

/// The bindings from `source` to `dest`.
async fn between(
    s: &Ctx,
    who: &Principal,
    vhost: &str,
    source: &str,
    kind: &str,
    dest: &str,
) -> Result<Vec<BindingInfo>, ApiError> {
    who.require_vhost(vhost)?;
    let q = to_queue(kind)?;
    let source = exchange_name(source);
    let bindings = binding_infos(s, Some(vhost.to_string())).await?;
    Ok(bindings
        .into_iter()
        .filter(|b| b.source == source && b.to_queue == q && b.destination == dest)
        .collect())
}

pub(super) async fn bindings_between(
    s: State,
    headers: HeaderMap,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let found = between(&s, &who, &vhost, &source, &kind, &dest).await?;
    ok_json(Value::Array(found.iter().map(binding_json).collect()))
}

pub(super) async fn create_binding(
    s: State,
    headers: HeaderMap,
    Path((vhost, source, kind, dest)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let arguments =
        json_to_table(body.get("arguments"), "arguments").map_err(ApiError::bad_request)?;
    let location = properties_key(&routing_key, &arguments);
    s.call(AdminRequest::Bind {
        actor: who.actor(),
        binding: BindingInfo {
            vhost,
            source: exchange_name(&source),
            destination: dest,
            to_queue: to_queue(&kind)?,
            routing_key,
            arguments,
        },
    })
    .await?;
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

pub(super) async fn get_binding(
    s: State,
    headers: HeaderMap,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let found = between(&s, &who, &vhost, &source, &kind, &dest).await?;
    let b = found
        .iter()
        .find(|b| properties_key(&b.routing_key, &b.arguments) == props)
        .ok_or_else(ApiError::not_found)?;
    ok_json(binding_json(b))
}

pub(super) async fn delete_binding(
    s: State,
    headers: HeaderMap,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let found = between(&s, &who, &vhost, &source, &kind, &dest).await?;
    let b = found
        .into_iter()
        .find(|b| properties_key(&b.routing_key, &b.arguments) == props)
        .ok_or_else(ApiError::not_found)?;
    s.call(AdminRequest::Unbind {
        actor: who.actor(),
        binding: BindingInfo {
            vhost: b.vhost,
            source: b.source,
            destination: b.destination,
            to_queue: b.to_queue,
            routing_key: b.routing_key,
            arguments: b.arguments,
        },
    })
    .await?;
    no_content()
}
