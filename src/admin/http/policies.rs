//! Policies and operator policies: RabbitMQ's `/api/policies` and `/api/operator-policies`.
//!
//! Policies are read and changed by policymakers (and administrators) in the vhosts they
//! have permissions in (the monitoring tag, which sees every vhost, gives no more here);
//! operator policies by administrators only, as in RabbitMQ.

use axum::extract::Path;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::admin::json::{policy_from_json, policy_json};
use crate::broker::admin::{AdminReply, AdminRequest};

use super::{
    ApiError, ApiResult, Principal, State, authenticate, created_or_updated, no_content, ok_json,
    parse_body,
};

/// May `p` read and change this kind of policy?
fn require_policy_rights(p: &Principal, operator: bool) -> Result<(), ApiError> {
    if operator {
        p.require_admin()
    } else if p.is_admin() || p.has("policymaker") {
        Ok(())
    } else {
        Err(ApiError::not_authorised("Not policymaker user"))
    }
}

async fn list(s: State, headers: HeaderMap, operator: bool, vhost: Option<String>) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    require_policy_rights(&who, operator)?;
    if let Some(v) = &vhost {
        who.require_own_vhost(v)?;
    }
    let AdminReply::Policies(all) = s
        .call(AdminRequest::ListPolicies { operator, vhost })
        .await?
    else {
        return Err(ApiError::not_found());
    };
    let shown: Vec<Value> = all
        .iter()
        .filter(|p| who.require_own_vhost(&p.vhost).is_ok())
        .map(policy_json)
        .collect();
    ok_json(Value::Array(shown))
}

async fn get_one(
    s: State,
    headers: HeaderMap,
    operator: bool,
    vhost: String,
    name: String,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    require_policy_rights(&who, operator)?;
    who.require_own_vhost(&vhost)?;
    let request = AdminRequest::ListPolicies {
        operator,
        vhost: Some(vhost),
    };
    let AdminReply::Policies(all) = s.call(request).await? else {
        return Err(ApiError::not_found());
    };
    match all.iter().find(|p| p.name == name) {
        Some(p) => ok_json(policy_json(p)),
        None => Err(ApiError::not_found()),
    }
}

async fn put_one(
    s: State,
    headers: HeaderMap,
    operator: bool,
    (vhost, name): (String, String),
    body: Bytes,
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    require_policy_rights(&who, operator)?;
    who.require_own_vhost(&vhost)?;
    let body = parse_body(&body)?;
    let record = policy_from_json(&body, operator, &vhost, &name).map_err(ApiError::bad_request)?;
    created_or_updated(s.call(AdminRequest::SetPolicy(record)).await?)
}

async fn delete_one(
    s: State,
    headers: HeaderMap,
    operator: bool,
    (vhost, name): (String, String),
) -> ApiResult {
    let who = authenticate(&s, &headers).await?;
    require_policy_rights(&who, operator)?;
    who.require_own_vhost(&vhost)?;
    s.call(AdminRequest::ClearPolicy {
        operator,
        vhost,
        name,
    })
    .await?;
    no_content()
}

/// `GET /api/policies`.
pub(super) async fn list_policies(s: State, headers: HeaderMap) -> ApiResult {
    list(s, headers, false, None).await
}

/// `GET /api/policies/{vhost}`.
pub(super) async fn vhost_policies(
    s: State,
    headers: HeaderMap,
    Path(v): Path<String>,
) -> ApiResult {
    list(s, headers, false, Some(v)).await
}

/// `GET /api/policies/{vhost}/{name}`.
pub(super) async fn get_policy(
    s: State,
    headers: HeaderMap,
    Path((v, n)): Path<(String, String)>,
) -> ApiResult {
    get_one(s, headers, false, v, n).await
}

/// `PUT /api/policies/{vhost}/{name}` with `{"pattern", "definition", "priority", "apply-to"}`.
pub(super) async fn put_policy(
    s: State,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    put_one(s, headers, false, key, body).await
}

/// `DELETE /api/policies/{vhost}/{name}`.
pub(super) async fn delete_policy(
    s: State,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
) -> ApiResult {
    delete_one(s, headers, false, key).await
}

/// `GET /api/operator-policies`.
pub(super) async fn list_operator_policies(s: State, headers: HeaderMap) -> ApiResult {
    list(s, headers, true, None).await
}

/// `GET /api/operator-policies/{vhost}`.
pub(super) async fn vhost_operator_policies(
    s: State,
    headers: HeaderMap,
    Path(v): Path<String>,
) -> ApiResult {
    list(s, headers, true, Some(v)).await
}

/// `GET /api/operator-policies/{vhost}/{name}`.
pub(super) async fn get_operator_policy(
    s: State,
    headers: HeaderMap,
    Path((v, n)): Path<(String, String)>,
) -> ApiResult {
    get_one(s, headers, true, v, n).await
}

/// `PUT /api/operator-policies/{vhost}/{name}`.
pub(super) async fn put_operator_policy(
    s: State,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    put_one(s, headers, true, key, body).await
}

/// `DELETE /api/operator-policies/{vhost}/{name}`.
pub(super) async fn delete_operator_policy(
    s: State,
    headers: HeaderMap,
    Path(key): Path<(String, String)>,
) -> ApiResult {
    delete_one(s, headers, true, key).await
}
