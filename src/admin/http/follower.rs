//! The management port of a cluster member that does not lead. Its broker is not running,
//! so nothing it could answer would be current: every request is redirected (307, method
//! and body kept) to the same path on the leader's management port, or answered 503 with
//! the reason while no leader is known. `GET /metrics` is answered here, with this
//! member's Raft figures, so that a scraper of every member sees each one's lag and role.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::serve;
use super::status::cluster_metrics;
use crate::cluster::settings::MemberAddress;
use crate::cluster::status::ClusterView;

/// What a follower's management port needs.
#[derive(Debug, Clone)]
pub struct FollowerView {
    /// Every member and this node's status.
    pub cluster: ClusterView,
    /// The management port members use when their `http` address is not configured.
    pub http_port: u16,
}

impl FollowerView {
    /// Where `m` serves its management API.
    fn http_of(&self, m: &MemberAddress) -> SocketAddr {
        m.http
            .unwrap_or_else(|| SocketAddr::new(m.amqp.ip(), self.http_port))
    }
}

/// Serves `listener` as a follower's management port until the task is aborted.
pub async fn serve_follower(listener: tokio::net::TcpListener, view: FollowerView) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .fallback(redirect)
        .with_state(Arc::new(view));
    serve::serve(
        serve::Listener::Plain(listener),
        app,
        serve::Limits::default(),
    )
    .await;
}

async fn metrics(State(view): State<Arc<FollowerView>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            // Every answer closes its connection: one kept open would outlive the
            // follower's port once this node leads.
            (header::CONNECTION, "close"),
        ],
        cluster_metrics(&view.cluster),
    )
        .into_response()
}

async fn redirect(State(view): State<Arc<FollowerView>>, uri: Uri) -> Response {
    let status = view.cluster.status.borrow().clone();
    let all = view.cluster.members();
    let members: Vec<String> = all
        .iter()
        .map(|m| format!("http://{}", view.http_of(m)))
        .collect();
    let me = all.iter().find(|m| m.id == status.id);
    let leader = status
        .leader
        .filter(|&id| id != status.id)
        .and_then(|id| all.iter().find(|m| m.id == id));
    // Members on one IP with their own ports need their `http` addresses configured: the
    // default would send a client back here.
    let unknown = leader.is_some_and(|l| me.is_some_and(|me| view.http_of(l) == view.http_of(me)));
    let (Some(leader), false) = (leader, unknown) else {
        let why = if unknown {
            "its management address is not known (set `http` in the cluster's members)"
        } else {
            "no leader is known yet"
        };
        let reason = format!(
            "node {} does not lead the cluster; {why}; members: {}",
            status.id,
            members.join(", ")
        );
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1"), (header::CONNECTION, "close")],
            axum::Json(json!({ "error": "not_leader", "reason": reason, "members": members })),
        )
            .into_response();
    };
    let base = format!("http://{}", view.http_of(leader));
    let target = format!("{base}{}", uri.path_and_query().map_or("/", |p| p.as_str()));
    let reason = format!(
        "node {} does not lead the cluster; the leader is node {} ({base})",
        status.id, leader.id
    );
    (
        StatusCode::TEMPORARY_REDIRECT,
        [
            (header::LOCATION, target),
            (header::CONNECTION, "close".to_string()),
        ],
        axum::Json(json!({
            "error": "not_leader",
            "reason": reason,
            "leader": base,
            "members": members,
        })),
    )
        .into_response()
}
