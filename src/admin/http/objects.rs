//! Users, vhosts, permissions, definitions, and the node's app actions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::admin::json::definitions::{
    definitions_from_json, definitions_to_json, marked_plain_password,
};
use crate::admin::json::{
    HASHING_ALGORITHM, message_stats, parse_tags, permission_json, user_json,
};
use crate::broker::admin::{AdminErrorKind, AdminReply, AdminRequest, Password, PutMode};
use crate::store::PermissionRecord;

use super::{
    ApiError, ApiResult, Ctx, State, authenticate, created_or_updated, json_response, listing,
    no_content, ok_json, parse_body, rates_of, required_text,
};

/// `If-None-Match: *` makes a PUT create-only, `If-Match: *` update-only (RFC 9110);
/// `warren ctl add_user` and `change_password` use them.
fn put_mode(headers: &HeaderMap) -> PutMode {
    let star = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()) == Some("*");
    if star("if-none-match") {
        PutMode::CreateOnly
    } else if star("if-match") {
        PutMode::UpdateOnly
    } else {
        PutMode::Upsert
    }
}

// ----- users -----

pub(super) async fn list_users(
    s: State,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let AdminReply::Users(users) = s.call(AdminRequest::ListUsers).await? else {
        return Err(ApiError::not_found());
    };
    let limits = super::limits::all_user_limits(&s).await?;
    let limits_of = |name: &str| limits.iter().find(|(u, _)| u == name).map(|(_, l)| l);
    listing(
        users
            .iter()
            .map(|u| user_json(u, limits_of(&u.name)))
            .collect(),
        &q,
    )
}

pub(super) async fn get_user(s: State, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let AdminReply::Users(users) = s.call(AdminRequest::ListUsers).await? else {
        return Err(ApiError::not_found());
    };
    let user = users
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(ApiError::not_found)?;
    let limits = super::limits::all_user_limits(&s).await?;
    let mine = limits.iter().find(|(u, _)| *u == name).map(|(_, l)| l);
    ok_json(user_json(user, mine))
}

pub(super) async fn put_user(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let body = parse_body(&body)?;
    if let Some(alg) = body.get("hashing_algorithm").and_then(Value::as_str)
        && alg != HASHING_ALGORITHM
    {
        return Err(ApiError::bad_request(format!(
            "unsupported hashing_algorithm '{alg}'"
        )));
    }
    let password = match (body.get("password"), body.get("password_hash")) {
        (Some(Value::String(p)), _) => Password::Plain(p.clone()),
        (_, Some(Value::String(h))) if h.is_empty() => Password::Clear,
        (_, Some(Value::String(h))) => Password::Hash(h.clone()),
        _ => Password::Keep,
    };
    let tags = body.get("tags").map(|t| parse_tags(Some(t)));
    let reply = s
        .call(AdminRequest::PutUser {
            name,
            password,
            tags,
            mode: put_mode(&headers),
        })
        .await?;
    created_or_updated(reply)
}

pub(super) async fn delete_user(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    s.call(AdminRequest::DeleteUser { name }).await?;
    no_content()
}

pub(super) async fn bulk_delete_users(s: State, headers: HeaderMap, body: Bytes) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let body = parse_body(&body)?;
    let users = body
        .get("users")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_request("expected {\"users\": [...]}"))?;
    for name in users.iter().filter_map(Value::as_str) {
        // Missing users are skipped, as in RabbitMQ.
        let _ = s
            .core
            .call(AdminRequest::DeleteUser { name: name.into() })
            .await;
    }
    no_content()
}

pub(super) async fn user_permissions(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let perms = permissions(&s).await?;
    let mine: Vec<Value> = perms
        .iter()
        .filter(|p| p.user == name)
        .map(permission_json)
        .collect();
    ok_json(Value::Array(mine))
}

/// `POST /api/warren/authenticate {"username", "password"}`: checks a user's password
/// (`warren ctl authenticate_user`); any user may be checked, whatever its tags.
pub(super) async fn authenticate_user(s: State, headers: HeaderMap, body: Bytes) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let body = parse_body(&body)?;
    let field = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request(format!("missing '{k}'")))
    };
    let request = AdminRequest::Authenticate {
        username: field("username")?,
        password: field("password")?,
        // The operator checks a password; where the user may log in from is not asked.
        from_loopback: true,
    };
    match s.core.call(request).await {
        Ok(AdminReply::Whoami(w)) => ok_json(json!({
            "authenticated": true, "name": w.user.name, "tags": w.user.tags,
        })),
        Err(e) if e.kind == AdminErrorKind::NotAuthenticated => {
            ok_json(json!({ "authenticated": false }))
        }
        Err(e) => Err(e.into()),
        Ok(_) => Err(ApiError::not_found()),
    }
}

// ----- vhosts -----

async fn vhost_json(s: &Ctx, name: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let AdminReply::Vhosts(vhosts) = s.call(AdminRequest::ListVhosts).await? else {
        return Err(ApiError::not_found());
    };
    if name.is_none() {
        let live = vhosts.iter().map(|v| format!("v\0{}", v.name)).collect();
        s.forget_rates("v\0", &live);
    }
    let now = std::time::Instant::now();
    let mut out = Vec::new();
    for v in vhosts.iter().filter(|v| name.is_none_or(|n| n == v.name)) {
        let messages = v.messages_ready + v.messages_unacknowledged;
        let depth = [messages, v.messages_ready, v.messages_unacknowledged];
        let key = format!("v\0{}", v.name);
        let (rates, depth_rates) = rates_of(s, &key, now, &v.stats, &depth);
        let stats = message_stats(&v.stats, &rates);
        out.push(json!({
            "name": v.name,
            "description": "",
            "tags": [],
            "metadata": { "description": "", "tags": [] },
            "tracing": false,
            "cluster_state": { s.node.as_str(): "running" },
            "messages": messages,
            "messages_details": { "rate": depth_rates[0] },
            "messages_ready": v.messages_ready,
            "messages_ready_details": { "rate": depth_rates[1] },
            "messages_unacknowledged": v.messages_unacknowledged,
            "messages_unacknowledged_details": { "rate": depth_rates[2] },
            "message_stats": stats,
        }));
    }
    Ok(out)
}

pub(super) async fn list_vhosts(
    s: State,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let mut all = vhost_json(&s, None).await?;
    all.retain(|v| v["name"].as_str().is_some_and(|n| who.sees_vhost(n)));
    listing(all, &q)
}

/// `GET /api/vhosts/{vhost}`: administrators only, as in RabbitMQ 3.10 (other users list
/// the vhosts they may use with `GET /api/vhosts`).
pub(super) async fn get_vhost(s: State, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let mut found = vhost_json(&s, Some(&name)).await?;
    let v = found.pop().ok_or_else(ApiError::not_found)?;
    ok_json(v)
}

pub(super) async fn put_vhost(s: State, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let reply = s
        .call(AdminRequest::PutVhost {
            name,
            mode: put_mode(&headers),
        })
        .await?;
    created_or_updated(reply)
}

pub(super) async fn delete_vhost(
    s: State,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    s.call(AdminRequest::DeleteVhost { name }).await?;
    no_content()
}

// ----- permissions -----

async fn permissions(s: &Ctx) -> Result<Vec<PermissionRecord>, ApiError> {
    match s.call(AdminRequest::ListPermissions).await? {
        AdminReply::Permissions(p) => Ok(p),
        _ => Err(ApiError::not_found()),
    }
}

pub(super) async fn list_permissions(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let perms = permissions(&s).await?;
    ok_json(Value::Array(perms.iter().map(permission_json).collect()))
}

pub(super) async fn vhost_permissions(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let perms = permissions(&s).await?;
    let these: Vec<Value> = perms
        .iter()
        .filter(|p| p.vhost == vhost)
        .map(permission_json)
        .collect();
    ok_json(Value::Array(these))
}

pub(super) async fn get_permission(
    s: State,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let perms = permissions(&s).await?;
    let p = perms
        .iter()
        .find(|p| p.vhost == vhost && p.user == user)
        .ok_or_else(ApiError::not_found)?;
    ok_json(permission_json(p))
}

pub(super) async fn put_permission(
    s: State,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let body = parse_body(&body)?;
    let field = |k: &str| required_text(&body, k);
    let record = PermissionRecord {
        user,
        vhost,
        configure: field("configure")?,
        write: field("write")?,
        read: field("read")?,
    };
    let existed = permissions(&s)
        .await?
        .iter()
        .any(|p| p.user == record.user && p.vhost == record.vhost);
    s.call(AdminRequest::SetPermissions(record)).await?;
    if existed {
        no_content()
    } else {
        Ok(json_response(StatusCode::CREATED, json!({})))
    }
}

pub(super) async fn delete_permission(
    s: State,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    s.call(AdminRequest::ClearPermissions { user, vhost })
        .await?;
    no_content()
}

// ----- definitions -----

async fn export(s: &Ctx, vhost: Option<String>) -> ApiResult {
    let only_vhost = vhost.is_some();
    match s.call(AdminRequest::ExportDefinitions { vhost }).await? {
        AdminReply::Definitions(d) => ok_json(definitions_to_json(&d, only_vhost)),
        _ => Err(ApiError::not_found()),
    }
}

async fn import(s: &Ctx, vhost: Option<&str>, body: &[u8]) -> ApiResult {
    let doc = parse_body(body)?;
    let mut defs = definitions_from_json(&doc, vhost).map_err(ApiError::bad_request)?;
    for u in &mut defs.users {
        if let Some(plain) = marked_plain_password(&u.password_hash) {
            let mut salt = [0u8; 4];
            let token = crate::admin::nodefile::new_token().map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    e.to_string(),
                )
            })?;
            for (i, b) in salt.iter_mut().enumerate() {
                *b = u8::from_str_radix(&token[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            u.password_hash = crate::broker::hash_password(plain, salt);
        }
    }
    s.call(AdminRequest::ImportDefinitions(Box::new(defs)))
        .await?;
    no_content()
}

pub(super) async fn export_all(s: State, headers: HeaderMap) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    export(&s, None).await
}

pub(super) async fn export_vhost(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    export(&s, Some(vhost)).await
}

pub(super) async fn import_all(s: State, headers: HeaderMap, body: Bytes) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    import(&s, None, &body).await
}

pub(super) async fn import_vhost(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    import(&s, Some(&vhost), &body).await
}

// ----- the node's app -----

/// `POST /api/warren/{stop_app,start_app,reset}`.
pub(super) async fn app_action(
    s: State,
    headers: HeaderMap,
    Path(action): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let ctx: &Arc<Ctx> = &s;
    match action.as_str() {
        // The listener follows the broker's state; a client accepted just before the
        // stop is refused at login.
        "stop_app" => {
            ctx.call(AdminRequest::StopApp).await?;
        }
        "start_app" => {
            ctx.call(AdminRequest::StartApp).await?;
        }
        "reset" => {
            ctx.call(AdminRequest::Reset).await?;
        }
        _ => return Err(ApiError::not_found()),
    }
    no_content()
}
