//! Vhost and user limits: RabbitMQ's `/api/vhost-limits` and `/api/user-limits`.
//!
//! RabbitMQ's paths set or clear one limit (`PUT`/`DELETE .../{name}` with `{"value": N}`).
//! warren also takes `PUT` of a whole object (`{"value": {...}}`) and `DELETE` of all limits
//! on `/api/vhost-limits/{vhost}` and `/api/user-limits/{user}`: `warren ctl
//! set_vhost_limits` replaces a vhost's limits in one durable change, as rabbitmqctl does.
//! Reading needs a management user (who sees the vhosts it may use, and its own limits
//! unless it is a monitoring user); changes need an administrator.

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::admin::json::{
    user_limits_from_json, user_limits_json, vhost_limits_from_json, vhost_limits_json,
};
use crate::broker::admin::{AdminReply, AdminRequest};
use crate::store::{UserLimits, VhostLimits};

use super::{ApiError, ApiResult, Ctx, State, authenticate, no_content, ok_json, parse_body};

/// Every user's limits (users without any are left out).
pub(super) async fn all_user_limits(s: &Ctx) -> Result<Vec<(String, UserLimits)>, ApiError> {
    match s.call(AdminRequest::ListUserLimits { user: None }).await? {
        AdminReply::UserLimits(l) => Ok(l),
        _ => Err(ApiError::not_found()),
    }
}

/// The `value` of a PUT body, or RabbitMQ's error for a body without one.
fn value_of(body: &[u8]) -> Result<Value, ApiError> {
    let mut body = parse_body(body)?;
    match body.get_mut("value") {
        Some(v) => Ok(v.take()),
        None => Err(ApiError::bad_request("[{key_missing,value}]")),
    }
}

/// One named limit set to `value`, as a limits object for the parsers (which refuse an
/// unknown name or a value that is not an integer with RabbitMQ's messages).
fn one_limit(name: &str, value: Value) -> Value {
    json!({ name: value })
}

/// RabbitMQ's 404 for a vhost or user that does not exist.
fn missing(what: &'static str) -> impl Fn(ApiError) -> ApiError {
    move |e| {
        if e.status == StatusCode::NOT_FOUND {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
        } else {
            e
        }
    }
}

// ----- vhosts -----

async fn vhost_limits(
    s: &Ctx,
    vhost: Option<String>,
) -> Result<Vec<(String, VhostLimits)>, ApiError> {
    match s.call(AdminRequest::ListVhostLimits { vhost }).await? {
        AdminReply::VhostLimits(l) => Ok(l),
        _ => Err(ApiError::not_found()),
    }
}

fn vhost_entries(all: &[(String, VhostLimits)]) -> Value {
    Value::Array(
        all.iter()
            .map(|(v, l)| json!({ "vhost": v, "value": vhost_limits_json(l) }))
            .collect(),
    )
}

/// `GET /api/vhost-limits`: the limits of the vhosts the user may see.
pub(super) async fn list_vhost_limits(s: State, headers: HeaderMap) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let mut all = vhost_limits(&s, None).await?;
    all.retain(|(v, _)| who.sees_vhost(v));
    ok_json(vhost_entries(&all))
}

/// `GET /api/vhost-limits/{vhost}`.
pub(super) async fn get_vhost_limits(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    who.require_vhost(&vhost)?;
    let these = vhost_limits(&s, Some(vhost))
        .await
        .map_err(|_| ApiError::not_found())?;
    ok_json(vhost_entries(&these))
}

/// `PUT /api/vhost-limits/{vhost}` with `{"value": {...}}`: replaces every limit.
pub(super) async fn put_vhost_limits(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let limits = vhost_limits_from_json(&value_of(&body)?).map_err(ApiError::bad_request)?;
    let request = AdminRequest::SetVhostLimits {
        vhost,
        limits,
        replace: true,
    };
    s.call(request).await.map_err(missing("vhost_not_found"))?;
    no_content()
}

/// `DELETE /api/vhost-limits/{vhost}`: clears every limit (404 when there are none, as
/// `rabbitmqctl clear_vhost_limits` fails then).
pub(super) async fn delete_vhost_limits(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    s.call(AdminRequest::ClearVhostLimits { vhost, name: None })
        .await?;
    no_content()
}

/// `PUT /api/vhost-limits/{vhost}/{name}` with `{"value": N}`.
pub(super) async fn put_vhost_limit(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let value = value_of(&body)?;
    let limits = vhost_limits_from_json(&one_limit(&name, value)).map_err(ApiError::bad_request)?;
    let request = AdminRequest::SetVhostLimits {
        vhost,
        limits,
        replace: false,
    };
    s.call(request).await.map_err(missing("vhost_not_found"))?;
    no_content()
}

/// `DELETE /api/vhost-limits/{vhost}/{name}`.
pub(super) async fn delete_vhost_limit(
    s: State,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let request = AdminRequest::ClearVhostLimits {
        vhost,
        name: Some(name),
    };
    s.call(request).await.map_err(missing("vhost_not_found"))?;
    no_content()
}

// ----- users -----

fn user_entries(all: &[(String, UserLimits)]) -> Value {
    Value::Array(
        all.iter()
            .map(|(u, l)| json!({ "user": u, "value": user_limits_json(l) }))
            .collect(),
    )
}

/// `GET /api/user-limits`: every user's limits for monitoring users, one's own otherwise.
pub(super) async fn list_user_limits(s: State, headers: HeaderMap) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    let mut all = all_user_limits(&s).await?;
    if !who.is_monitor() {
        all.retain(|(u, _)| *u == who.name);
    }
    ok_json(user_entries(&all))
}

/// `GET /api/user-limits/{user}`.
pub(super) async fn get_user_limits(
    s: State,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    if !who.is_monitor() && user != who.name {
        return Err(ApiError::not_authorised("Not monitor user"));
    }
    match s
        .call(AdminRequest::ListUserLimits { user: Some(user) })
        .await
    {
        Ok(AdminReply::UserLimits(l)) => ok_json(user_entries(&l)),
        Err(e) if e.status != StatusCode::NOT_FOUND => Err(e),
        _ => Err(ApiError::not_found()),
    }
}

async fn set_user_limits(s: &Ctx, user: String, limits: UserLimits) -> ApiResult {
    s.call(AdminRequest::SetUserLimits { user, limits })
        .await
        .map_err(missing("user_not_found"))?;
    no_content()
}

/// `PUT /api/user-limits/{user}` with `{"value": {...}}`: sets the limits given, keeping
/// the others (as `rabbitmqctl set_user_limits`).
pub(super) async fn put_user_limits(
    s: State,
    headers: HeaderMap,
    Path(user): Path<String>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let limits = user_limits_from_json(&value_of(&body)?).map_err(ApiError::bad_request)?;
    set_user_limits(&s, user, limits).await
}

/// `DELETE /api/user-limits/{user}`: clears every limit of the user.
pub(super) async fn delete_user_limits(
    s: State,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    s.call(AdminRequest::ClearUserLimits { user, name: None })
        .await
        .map_err(missing("user_not_found"))?;
    no_content()
}

/// `PUT /api/user-limits/{user}/{name}` with `{"value": N}`.
pub(super) async fn put_user_limit(
    s: State,
    headers: HeaderMap,
    Path((user, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let value = value_of(&body)?;
    let limits = user_limits_from_json(&one_limit(&name, value)).map_err(ApiError::bad_request)?;
    set_user_limits(&s, user, limits).await
}

/// `DELETE /api/user-limits/{user}/{name}`.
pub(super) async fn delete_user_limit(
    s: State,
    headers: HeaderMap,
    Path((user, name)): Path<(String, String)>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let request = AdminRequest::ClearUserLimits {
        user,
        name: Some(name),
    };
    s.call(request).await.map_err(missing("user_not_found"))?;
    no_content()
}
