//! The node: overview, nodes, connections, channels, consumers, health checks and (in
//! `metrics`) the Prometheus endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::admin::json::{RABBITMQ_VERSION, message_stats, table_to_json};
use crate::broker::admin::{
    AdminReply, AdminRequest, ChannelInfo, ConnectionInfo, ConsumerInfo, Overview,
    consumer_arguments,
};

mod cluster;
mod metrics;

use super::{
    ApiError, ApiResult, Ctx, Principal, State, authenticate, json_response, listing, no_content,
    ok_json, rates_of,
};
pub(super) use cluster::cluster_metrics;
use cluster::cluster_nodes;
pub(super) use cluster::{forget_member, join_member};
pub(super) use metrics::metrics;

// ----- naming connections as RabbitMQ does -----

/// An address with IPv4-mapped IPv6 shown as IPv4.
fn plain(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// The peer's address, and the broker side's as well as it is known (the listener's —
/// AMQPS for a connection that came over TLS — or for a wildcard listener the loopback
/// address a loopback peer used).
fn ends(ctx: &Ctx, peer: &str) -> (Option<SocketAddr>, SocketAddr) {
    let listener = match ctx.amqps {
        Some(amqps) if ctx.core.tls_session(peer).is_some() => amqps,
        _ => ctx.amqp,
    };
    let peer = peer.parse::<SocketAddr>().ok().map(plain);
    let mut local = plain(listener);
    if local.ip().is_unspecified()
        && let Some(p) = peer.filter(|p| p.ip().is_loopback())
    {
        local = SocketAddr::new(p.ip(), local.port());
    }
    (peer, local)
}

/// RabbitMQ's connection name: "peer_ip:peer_port -> ip:port".
fn connection_name(ctx: &Ctx, peer: &str) -> String {
    match ends(ctx, peer) {
        (Some(p), local) => format!("{p} -> {local}"),
        (None, local) => format!("{peer} -> {local}"),
    }
}

fn peer_fields(ctx: &Ctx, peer: &str) -> (String, u16, String, u16) {
    let (p, local) = ends(ctx, peer);
    (
        p.map(|p| p.ip().to_string())
            .unwrap_or_else(|| peer.to_string()),
        p.map(|p| p.port()).unwrap_or(0),
        local.ip().to_string(),
        local.port(),
    )
}

fn connection_json(ctx: &Ctx, c: &ConnectionInfo) -> Value {
    let (peer_host, peer_port, host, port) = peer_fields(ctx, &c.peer);
    let tls = ctx.core.tls_session(&c.peer);
    let mut v = json!({
        "name": connection_name(ctx, &c.peer),
        "pid": format!("<{}.{}.0>", ctx.node, c.id),
        "node": ctx.node,
        "user": c.user,
        "user_who_performed_action": c.user,
        "vhost": c.vhost,
        "peer_host": peer_host,
        "peer_port": peer_port,
        "host": host,
        "port": port,
        "channels": c.channels,
        "state": "running",
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "auth_mechanism": "PLAIN",
        "ssl": tls.is_some(),
        "ssl_protocol": tls.as_ref().map(|t| t.protocol),
        "ssl_cipher": tls.as_ref().map(|t| t.cipher.clone()),
        "client_properties": table_to_json(&c.client_properties),
        "connected_at": c.connected_at_ms,
    });
    // The name a client gave its connection (`connection_name` among its properties), as
    // RabbitMQ lists it: clients and tools find their connection by it.
    if let Some(given) = c
        .client_properties
        .get("connection_name")
        .and_then(|n| n.as_str())
    {
        v["user_provided_name"] = json!(given);
    }
    v
}

fn channel_name(ctx: &Ctx, peer: &str, number: u16) -> String {
    format!("{} ({number})", connection_name(ctx, peer))
}

/// The prefix of channels' rate history keys.
const CHANNEL_RATES: &str = "ch\0";

fn channel_json(ctx: &Ctx, ch: &ChannelInfo) -> Value {
    let (peer_host, peer_port, _, _) = peer_fields(ctx, &ch.peer);
    let key = format!("{CHANNEL_RATES}{}\0{}", ch.conn, ch.number);
    let (rates, _) = rates_of(ctx, &key, Instant::now(), &ch.stats, &[0; 3]);
    json!({
        "name": channel_name(ctx, &ch.peer, ch.number),
        "number": ch.number,
        "node": ctx.node,
        "user": ch.user,
        "vhost": ch.vhost,
        "connection_details": {
            "name": connection_name(ctx, &ch.peer),
            "peer_host": peer_host,
            "peer_port": peer_port,
        },
        "prefetch_count": ch.prefetch_count,
        "global_prefetch_count": ch.global_prefetch_count,
        "messages_unacknowledged": ch.messages_unacknowledged,
        "messages_unconfirmed": 0,
        "messages_uncommitted": 0,
        "acks_uncommitted": 0,
        "consumer_count": ch.consumer_count,
        "confirm": ch.confirm,
        "transactional": ch.transactional,
        "state": if ch.flow_blocked { "flow" } else { "running" },
        "message_stats": message_stats(&ch.stats, &rates),
    })
}

fn consumer_json(ctx: &Ctx, c: &ConsumerInfo) -> Value {
    let (peer_host, peer_port, _, _) = peer_fields(ctx, &c.peer);
    json!({
        "consumer_tag": c.tag,
        "queue": { "name": c.queue, "vhost": c.vhost },
        "channel_details": {
            "name": channel_name(ctx, &c.peer, c.channel),
            "number": c.channel,
            "connection_name": connection_name(ctx, &c.peer),
            "peer_host": peer_host,
            "peer_port": peer_port,
            "user": c.user,
            "node": ctx.node,
        },
        "ack_required": c.ack_required,
        "prefetch_count": c.prefetch_count,
        "exclusive": c.exclusive,
        "arguments": table_to_json(&consumer_arguments(c.priority)),
        "active": true,
        "activity_status": "up",
    })
}

// ----- overview and nodes -----

async fn overview_of(s: &Ctx) -> Result<Overview, ApiError> {
    match s.call(AdminRequest::Overview).await? {
        AdminReply::Overview(o) => Ok(*o),
        _ => Err(ApiError::not_found()),
    }
}

/// The listeners, named by protocol as RabbitMQ names them ("amqp/ssl" for AMQPS).
fn listeners(s: &Ctx) -> Value {
    let all = [
        ("amqp", Some(s.amqp)),
        ("amqp/ssl", s.amqps),
        ("http", Some(s.http)),
        ("https", s.https),
    ];
    let listed: Vec<Value> = all
        .into_iter()
        .filter_map(|(protocol, address)| {
            let address = plain(address?);
            Some(json!({ "node": s.node, "protocol": protocol,
                         "ip_address": address.ip().to_string(), "port": address.port() }))
        })
        .collect();
    Value::Array(listed)
}

pub(super) async fn overview(s: State, headers: HeaderMap) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    if !who.is_monitor() {
        return ok_json(own_overview(&s, &who).await?);
    }
    let o = overview_of(&s).await?;
    let messages = o.messages_ready + o.messages_unacknowledged;
    let depth = [messages, o.messages_ready, o.messages_unacknowledged];
    let (rates, depth_rates) = rates_of(&s, "totals", Instant::now(), &o.stats, &depth);
    ok_json(json!({
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "erlang_version": "none (warren is written in Rust)",
        "cluster_name": s.node,
        "node": s.node,
        "rates_mode": "basic",
        "disable_stats": false,
        "enable_queue_totals": true,
        "user_tags": who.tags,
        "statistics_db_event_queue": 0,
        "message_stats": message_stats(&o.stats, &rates),
        "queue_totals": {
            "messages": messages,
            "messages_details": { "rate": depth_rates[0] },
            "messages_ready": o.messages_ready,
            "messages_ready_details": { "rate": depth_rates[1] },
            "messages_unacknowledged": o.messages_unacknowledged,
            "messages_unacknowledged_details": { "rate": depth_rates[2] },
        },
        "object_totals": {
            "connections": o.connections,
            "channels": o.channels,
            "consumers": o.consumers,
            "exchanges": o.exchanges,
            "queues": o.queues,
        },
        "listeners": listeners(&s),
        "contexts": [{ "node": s.node, "description": "warren management", "path": "/",
                       "port": s.http.port().to_string() }],
    }))
}

/// `/api/overview` for a user without the monitoring tag, as RabbitMQ's
/// `get_overview(User, …)` has it: totals over the vhosts it has permissions in and over its
/// own connections and channels, and nothing of the node (no listeners, contexts or
/// node-wide message rates).
async fn own_overview(s: &Ctx, who: &Principal) -> Result<Value, ApiError> {
    let (mut queues, mut exchanges, mut consumers) = (0usize, 0usize, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for vhost in &who.vhosts {
        let request = AdminRequest::ListQueues {
            vhost: Some(vhost.clone()),
        };
        if let AdminReply::Queues(qs) = s.call(request).await? {
            queues += qs.len();
            for q in &qs {
                ready += q.messages_ready;
                unacked += q.messages_unacknowledged;
                consumers += q.consumers;
            }
        }
        let request = AdminRequest::ListExchanges {
            vhost: Some(vhost.clone()),
        };
        if let AdminReply::Exchanges(xs) = s.call(request).await? {
            exchanges += xs.len();
        }
    }
    let mine = |user: Option<&str>| user == Some(who.name.as_str());
    let connections = match s.call(AdminRequest::ListConnections).await? {
        AdminReply::Connections(c) => c.iter().filter(|c| mine(c.user.as_deref())).count(),
        _ => 0,
    };
    let channels = match s.call(AdminRequest::ListChannels).await? {
        AdminReply::Channels(c) => c.iter().filter(|c| mine(Some(&c.user))).count(),
        _ => 0,
    };
    Ok(json!({
        "management_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "cluster_name": s.node,
        "rates_mode": "basic",
        "disable_stats": false,
        "enable_queue_totals": true,
        "user_tags": who.tags,
        "message_stats": {},
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "connections": connections,
            "channels": channels,
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
    }))
}

pub(super) async fn whoami(s: State, headers: HeaderMap) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    ok_json(json!({ "name": who.name, "tags": who.tags }))
}

pub(super) async fn cluster_name(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?;
    ok_json(json!({ "name": s.node }))
}

pub(super) async fn extensions(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?;
    ok_json(json!([]))
}

/// Resident memory of this process, from /proc (0 where there is none).
fn memory_used_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

async fn node_json(s: &Ctx) -> Result<Value, ApiError> {
    let o = overview_of(s).await?;
    Ok(json!({
        "name": s.node,
        "type": "disc",
        "running": true,
        "being_drained": !o.app_running,
        "os_pid": std::process::id().to_string(),
        "uptime": s.uptime_ms(),
        "started_at": s.started_epoch_ms,
        "mem_used": memory_used_bytes(),
        "mem_limit": o.resources.memory_total_bytes
            .map(|total| (total as f64 * o.limits.memory_high_watermark) as u64),
        "mem_total": o.resources.memory_total_bytes,
        "disk_free": o.resources.disk_free_bytes,
        "disk_free_limit": o.limits.disk_free_limit_bytes,
        "alarms": o.alarms,
        "mem_alarm": o.alarms.iter().any(|a| a == "memory"),
        "disk_free_alarm": o.alarms.iter().any(|a| a == "disk"),
        "fd_used": open_files(),
        "sockets_used": o.connections,
        "processors": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "partitions": [],
        "applications": [{ "name": "warren", "description": "warren AMQP 0-9-1 broker",
                           "version": env!("CARGO_PKG_VERSION") }],
        "listeners": listeners(s),
    }))
}

pub(super) async fn nodes(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?.require_monitor()?;
    let mut me = node_json(&s).await?;
    let others = cluster_nodes(&s, &mut me);
    let mut all = vec![me];
    all.extend(others);
    ok_json(Value::Array(all))
}

pub(super) async fn node(s: State, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    authenticate(&s, &headers).await?.require_monitor()?;
    if name != s.node {
        return Err(ApiError::not_found());
    }
    let mut me = node_json(&s).await?;
    cluster_nodes(&s, &mut me);
    ok_json(me)
}

// ----- connections, channels, consumers -----

async fn connections(s: &Ctx, who: &Principal) -> Result<Vec<ConnectionInfo>, ApiError> {
    let AdminReply::Connections(mut conns) = s.call(AdminRequest::ListConnections).await? else {
        return Err(ApiError::not_found());
    };
    // Monitoring users see every connection; management users their own.
    if !who.is_monitor() {
        conns.retain(|c| c.user.as_deref() == Some(who.name.as_str()));
    }
    Ok(conns)
}

pub(super) async fn list_connections(
    s: State,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let conns = connections(&s, &who).await?;
    listing(conns.iter().map(|c| connection_json(&s, c)).collect(), &q)
}

/// A connection by its name (as listed), its pid, or its numeric id.
fn find_connection<'a>(
    s: &Ctx,
    conns: &'a [ConnectionInfo],
    name: &str,
) -> Option<&'a ConnectionInfo> {
    conns.iter().find(|c| {
        connection_name(s, &c.peer) == name
            || format!("<{}.{}.0>", s.node, c.id) == name
            || c.id.to_string() == name
    })
}

pub(super) async fn get_connection(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let conns = connections(&s, &who).await?;
    let c = find_connection(&s, &conns, &name).ok_or_else(ApiError::not_found)?;
    ok_json(connection_json(&s, c))
}

pub(super) async fn close_connection(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let conns = connections(&s, &who).await?;
    let c = find_connection(&s, &conns, &name).ok_or_else(ApiError::not_found)?;
    if !who.is_admin() && c.user.as_deref() != Some(who.name.as_str()) {
        return Err(ApiError::not_authorised("Not administrator user"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    s.call(AdminRequest::CloseConnection { id: c.id, reason })
        .await?;
    no_content()
}

async fn channels(s: &Ctx, who: &Principal) -> Result<Vec<ChannelInfo>, ApiError> {
    let AdminReply::Channels(mut chans) = s.call(AdminRequest::ListChannels).await? else {
        return Err(ApiError::not_found());
    };
    if !who.is_monitor() {
        chans.retain(|c| c.user == who.name);
    }
    Ok(chans)
}

pub(super) async fn connection_channels(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let conns = connections(&s, &who).await?;
    let c = find_connection(&s, &conns, &name).ok_or_else(ApiError::not_found)?;
    let id = c.id;
    let chans = channels(&s, &who).await?;
    let these: Vec<Value> = chans
        .iter()
        .filter(|ch| ch.conn == id)
        .map(|ch| channel_json(&s, ch))
        .collect();
    ok_json(Value::Array(these))
}

pub(super) async fn list_channels(
    s: State,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let chans = channels(&s, &who).await?;
    listing(chans.iter().map(|c| channel_json(&s, c)).collect(), &q)
}

pub(super) async fn get_channel(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let chans = channels(&s, &who).await?;
    let ch = chans
        .iter()
        .find(|c| channel_name(&s, &c.peer, c.number) == name)
        .ok_or_else(ApiError::not_found)?;
    ok_json(channel_json(&s, ch))
}

async fn consumers(
    s: &Ctx,
    who: &Principal,
    vhost: Option<String>,
) -> Result<Vec<Value>, ApiError> {
    if let Some(v) = &vhost {
        who.require_vhost(v)?;
    }
    let mut list = Vec::new();
    for vhost in who.listing_scope(vhost) {
        let AdminReply::Consumers(some) = s.call(AdminRequest::ListConsumers { vhost }).await?
        else {
            return Err(ApiError::not_found());
        };
        list.extend(some);
    }
    Ok(list
        .iter()
        .filter(|c| who.sees_vhost(&c.vhost))
        .map(|c| consumer_json(s, c))
        .collect())
}

/// `/api/consumers` and `/api/consumers/{vhost}`.
pub(super) async fn list_consumers(
    s: State,
    headers: HeaderMap,
    vhost: Option<Path<String>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let vhost = vhost.map(|Path(v)| v);
    listing(consumers(&s, &who, vhost).await?, &q)
}

// ----- health checks -----

fn health_failed(reason: String) -> ApiResult {
    Ok(json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "status": "failed", "reason": reason }),
    ))
}

/// Checks with nothing to fail on a single node.
pub(super) async fn health_ok(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?;
    ok_json(json!({ "status": "ok" }))
}

/// Fails (503) while a resource alarm is in force, as RabbitMQ's alarms check does.
pub(super) async fn health_alarms(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?;
    let o = overview_of(&s).await?;
    if o.alarms.is_empty() {
        return ok_json(json!({ "status": "ok" }));
    }
    let alarms: Vec<Value> = o
        .alarms
        .iter()
        .map(|a| json!({ "node": s.node, "resource": a }))
        .collect();
    Ok(json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "status": "failed", "reason": "resource alarm(s) in effect", "alarms": alarms }),
    ))
}

pub(super) async fn port_listener(
    s: State,
    headers: HeaderMap,
    Path(port): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?;
    let port: u16 = port
        .parse()
        .map_err(|_| ApiError::bad_request("invalid port"))?;
    let amqp_up = s.core.app_running();
    let is = |address: Option<SocketAddr>| address.is_some_and(|a| a.port() == port);
    let http = is(Some(s.http)) || is(s.https);
    let amqp = is(Some(s.amqp)) || is(s.amqps);
    if http || (amqp && amqp_up) {
        ok_json(json!({ "status": "ok", "port": port }))
    } else {
        health_failed(format!("No active listener on port {port}"))
    }
}

pub(super) async fn protocol_listener(
    s: State,
    headers: HeaderMap,
    Path(protocol): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?;
    let up = match protocol.as_str() {
        "amqp" | "amqp091" | "amqp0-9-1" | "amqp0.9.1" => s.core.app_running(),
        "amqp/ssl" | "amqps" => s.amqps.is_some() && s.core.app_running(),
        "http" | "management" => true,
        "https" => s.https.is_some(),
        _ => false,
    };
    if up {
        ok_json(json!({ "status": "ok", "protocol": protocol }))
    } else {
        health_failed(format!("No active listener for protocol {protocol}"))
    }
}

/// Declares the `aliveness-test` queue, publishes to it and gets the message back.
pub(super) async fn aliveness_test(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let queue = "aliveness-test".to_string();
    s.call(AdminRequest::DeclareQueue {
        actor: who.actor(),
        vhost: vhost.clone(),
        name: queue.clone(),
        durable: false,
        auto_delete: false,
        arguments: Default::default(),
    })
    .await?;
    s.call(AdminRequest::Publish {
        actor: who.actor(),
        vhost: vhost.clone(),
        exchange: String::new(),
        routing_key: queue.clone(),
        properties: Box::default(),
        body: Bytes::from_static(b"test_message"),
    })
    .await?;
    let reply = s
        .call(AdminRequest::Get {
            actor: who.actor(),
            vhost,
            queue,
            count: 1,
            ack: crate::broker::admin::GetAck::Ack,
        })
        .await?;
    match reply {
        AdminReply::Messages(m) if m.iter().any(|m| &m.message.body[..] == b"test_message") => {
            ok_json(json!({ "status": "ok" }))
        }
        _ => health_failed("aliveness test message not received".into()),
    }
}
