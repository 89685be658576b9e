//! Topic permissions: RabbitMQ's `/api/topic-permissions`, `/api/users/{user}/topic-permissions`
//! and `/api/vhosts/{vhost}/topic-permissions`. Administrators only, as in RabbitMQ.

use axum::extract::Path;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde_json::Value;

use crate::admin::json::topic_permission_json;
use crate::broker::admin::{AdminReply, AdminRequest};
use crate::store::TopicPermissionRecord;

use super::{
    ApiError, ApiResult, Ctx, State, authenticate, no_content, ok_json, parse_body, required_text,
};

async fn all(s: &Ctx) -> Result<Vec<TopicPermissionRecord>, ApiError> {
    match s.call(AdminRequest::ListTopicPermissions).await? {
        AdminReply::TopicPermissions(p) => Ok(p),
        _ => Err(ApiError::not_found()),
    }
}

async fn listed(
    s: State,
    headers: HeaderMap,
    keep: impl Fn(&TopicPermissionRecord) -> bool,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let shown = all(&s)
        .await?
        .iter()
        .filter(|p| keep(p))
        .map(topic_permission_json)
        .collect();
    ok_json(Value::Array(shown))
}

/// `GET /api/topic-permissions`.
pub(super) async fn list_topic_permissions(s: State, headers: HeaderMap) -> ApiResult {
    listed(s, headers, |_| true).await
}

/// `GET /api/topic-permissions/{vhost}/{user}`.
pub(super) async fn get_topic_permissions(
    s: State,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    listed(s, headers, |p| p.vhost == vhost && p.user == user).await
}

/// `GET /api/users/{user}/topic-permissions`.
pub(super) async fn user_topic_permissions(
    s: State,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> ApiResult {
    listed(s, headers, |p| p.user == user).await
}

/// `GET /api/vhosts/{vhost}/topic-permissions`.
pub(super) async fn vhost_topic_permissions(
    s: State,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    listed(s, headers, |p| p.vhost == vhost).await
}

/// `PUT /api/topic-permissions/{vhost}/{user}` with `{"exchange", "write", "read"}`.
pub(super) async fn put_topic_permissions(
    s: State,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let body = parse_body(&body)?;
    let field = |k: &str| required_text(&body, k);
    let record = TopicPermissionRecord {
        user,
        vhost,
        exchange: field("exchange")?,
        write: field("write")?,
        read: field("read")?,
    };
    s.call(AdminRequest::SetTopicPermissions(record)).await?;
    no_content()
}

/// `DELETE /api/topic-permissions/{vhost}/{user}`: clears them on every exchange.
pub(super) async fn delete_topic_permissions(
    s: State,
    headers: HeaderMap,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let request = AdminRequest::ClearTopicPermissions {
        user,
        vhost,
        exchange: None,
    };
    s.call(request).await?;
    no_content()
}

/// `DELETE /api/topic-permissions/{vhost}/{user}/{exchange}`: clears them on one exchange
/// (`warren ctl clear_topic_permissions USER EXCHANGE`).
pub(super) async fn delete_topic_permission(
    s: State,
    headers: HeaderMap,
    Path((vhost, user, exchange)): Path<(String, String, String)>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let request = AdminRequest::ClearTopicPermissions {
        user,
        vhost,
        exchange: Some(exchange),
    };
    s.call(request).await?;
    no_content()
}
