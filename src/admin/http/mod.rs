//! The management HTTP API (axum): RabbitMQ's paths and JSON shapes for the common
//! operations, HTTP basic auth against the broker's users, and the node token for
//! `warren ctl`.
//!
//! Access follows RabbitMQ's user tags: `administrator` may do everything;
//! `monitoring` may read everything; `management` and `policymaker` see and use the vhosts
//! they have permissions in (and their own connections); a user without one of these tags
//! (or with wrong credentials) gets 401. Operations on queues, exchanges, bindings and
//! messages also need the user's permissions in the vhost, as over AMQP. The node token
//! (`Authorization: Bearer`, from the node file) acts as the node itself.
//!
//! Every request becomes one or two [`AdminRequest`]s to the core task; nothing here
//! holds broker state except the rate history.

pub mod follower;
mod got;
mod guard;
mod limits;
mod listing;
mod objects;
mod policies;
mod resources;
mod serve;
mod session;
mod status;
mod topic;
mod ui;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Value, json};

use crate::broker::admin::{Actor, AdminError, AdminErrorKind, AdminReply, AdminRequest, Whoami};
use crate::cluster::status::ClusterView;
use crate::server::{AdminHandle, TlsListener};

use super::nodefile::{NodeFile, new_token, node_name, same_secret, unregister};
use super::rates::RateTracker;
use listing::{PageRequest, flag, listing, name_filter, page_request, pick_columns};

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port (0 picks a free one).
    pub port: u16,
    /// The data dir, where the node file goes.
    pub data_dir: PathBuf,
    /// The AMQP listener's address (for listings and health checks).
    pub amqp: SocketAddr,
    /// The AMQPS listener's address, if there is one (for listings and health checks).
    pub amqps: Option<SocketAddr>,
    /// The HTTPS listener, if configured: bound already, so that its certificates were
    /// checked before the broker started.
    pub https: Option<Arc<TlsListener>>,
    /// The node's name (`warren@<hostname>` if none).
    pub node_name: Option<String>,
    /// The cluster, when this node is a member of one.
    pub cluster: Option<ClusterView>,
}

/// A running HTTP API.
#[derive(Debug)]
pub struct HttpServer {
    /// The address it listens on.
    pub local: SocketAddr,
    /// The address of its HTTPS listener, if it has one.
    pub https: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
    https_task: Option<tokio::task::JoinHandle<()>>,
    node_file: PathBuf,
    /// The node's entry in the runtime registry, if it has one.
    registered: Option<PathBuf>,
}

impl HttpServer {
    /// Stops serving and removes the node file and the registry entry.
    pub fn stop(self) {
        self.task.abort();
        if let Some(task) = &self.https_task {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.node_file);
        if let Some(path) = &self.registered {
            unregister(path);
        }
    }
}

/// Shared by the handlers.
struct Ctx {
    core: AdminHandle,
    token: String,
    node: String,
    amqp: SocketAddr,
    http: SocketAddr,
    /// The TLS listeners' addresses, if any.
    amqps: Option<SocketAddr>,
    https: Option<SocketAddr>,
    started: Instant,
    started_epoch_ms: u64,
    rates: Mutex<RateTracker>,
    /// Failed logins per peer.
    logins: guard::LoginThrottle,
    /// Web UI sessions.
    sessions: session::Sessions,
    /// The cluster, when this node is a member of one.
    cluster: Option<ClusterView>,
}

type State = axum::extract::State<Arc<Ctx>>;

/// Binds the HTTP port, writes the node file and starts serving.
pub async fn start(settings: HttpSettings, core: AdminHandle) -> std::io::Result<HttpServer> {
    let addr = SocketAddr::new(settings.bind, settings.port);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) if settings.bind == IpAddr::from([0u16; 8]) => {
            tracing::warn!(error = %e, "cannot listen on [::] for HTTP; using 0.0.0.0");
            let v4 = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), settings.port);
            tokio::net::TcpListener::bind(v4).await?
        }
        Err(e) => return Err(e),
    };
    let local = listener.local_addr()?;
    let node = settings.node_name.clone().unwrap_or_else(node_name);
    let token = new_token()?;
    let file = NodeFile {
        url: format!("http://{}", loopback_address(local)),
        token: token.clone(),
        pid: std::process::id(),
        node: node.clone(),
        data_dir: settings.data_dir.display().to_string(),
    };
    let node_file = file.write(&settings.data_dir)?;
    // `warren ctl` with no flags finds the node here, whatever its data dir.
    let registered = match file.register() {
        Ok(path) => Some(path),
        Err(e) => {
            tracing::warn!("not registered for `warren ctl`: {e}");
            None
        }
    };
    let ctx = Arc::new(Ctx {
        core,
        token,
        node,
        amqp: settings.amqp,
        http: local,
        amqps: settings.amqps,
        https: settings.https.as_ref().map(|l| l.local_addr()),
        cluster: settings.cluster.clone(),
        started: Instant::now(),
        started_epoch_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        rates: Mutex::new(RateTracker::default()),
        logins: guard::LoginThrottle::default(),
        sessions: session::Sessions::default(),
    });
    let app = router(ctx);
    let limits = serve::Limits::default();
    let https = settings.https.as_ref().map(|l| l.local_addr());
    let https_task = settings.https.map(|l| {
        let listener = serve::Listener::Tls(l);
        tokio::spawn(serve::serve(listener, app.clone(), limits.clone()))
    });
    if let Some(address) = https {
        tracing::info!(%address, "HTTPS listener ready");
        println!("warren: HTTPS listening on {address}");
    }
    let task = tokio::spawn(serve::serve(serve::Listener::Plain(listener), app, limits));
    tracing::info!(address = %local, "HTTP listener ready");
    println!("warren: HTTP listening on {local}");
    Ok(HttpServer {
        local,
        https,
        task,
        https_task,
        node_file,
        registered,
    })
}

/// How a local client reaches a listener bound to `local`: the loopback address of the
/// same family when it listens on every address.
fn loopback_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

/// Every route of the API, behind the cross-site and peer layers.
fn router(ctx: Arc<Ctx>) -> Router {
    let router = Router::new();
    let router = ui::routes(router);
    let router = status_routes(router);
    let router = object_routes(router);
    let router = limit_routes(router);
    let router = policy_routes(router);
    let router = topic_routes(router);
    let router = queue_and_exchange_routes(router);
    let router = binding_routes(router);
    let router = connection_routes(router);
    let router = health_routes(router);
    let router = app_routes(router);
    router
        .fallback(not_found_handler)
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            session::session_layer,
        ))
        .layer(axum::middleware::from_fn(guard::cross_site_layer))
        .layer(axum::middleware::from_fn(peer_layer))
        .with_state(ctx)
}

/// The overview, identity and node routes.
fn status_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use status::*;
    router
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/extensions", get(extensions))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route(
            "/api/cluster/members/{id}",
            axum::routing::put(join_member).delete(forget_member),
        )
}

/// Virtual hosts, users, permissions and definitions.
fn object_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use objects::*;
    router
        .route("/api/vhosts", get(list_vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(get_vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/users", get(list_users))
        .route("/api/users/bulk-delete", post(bulk_delete_users))
        .route(
            "/api/users/{user}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/permissions", get(list_permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(get_permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/definitions", get(export_all).post(import_all))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

/// Topic permissions.
fn topic_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use topic::*;
    router
        .route("/api/topic-permissions", get(list_topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(get_topic_permissions)
                .put(put_topic_permissions)
                .delete(delete_topic_permissions),
        )
        .route(
            "/api/topic-permissions/{vhost}/{user}/{exchange}",
            axum::routing::delete(delete_topic_permission),
        )
        .route(
            "/api/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
}

/// Policies and operator policies.
fn policy_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use policies::*;
    router
        .route("/api/policies", get(list_policies))
        .route("/api/policies/{vhost}", get(vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(get_policy).put(put_policy).delete(delete_policy),
        )
        .route("/api/operator-policies", get(list_operator_policies))
        .route(
            "/api/operator-policies/{vhost}",
            get(vhost_operator_policies),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(get_operator_policy)
                .put(put_operator_policy)
                .delete(delete_operator_policy),
        )
}

/// Per-vhost and per-user limits.
fn limit_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use limits::*;
    router
        .route("/api/vhost-limits", get(list_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}",
            get(get_vhost_limits)
                .put(put_vhost_limits)
                .delete(delete_vhost_limits),
        )
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/user-limits", get(list_user_limits))
        .route(
            "/api/user-limits/{user}",
            get(get_user_limits)
                .put(put_user_limits)
                .delete(delete_user_limits),
        )
        .route(
            "/api/user-limits/{user}/{name}",
            axum::routing::put(put_user_limit).delete(delete_user_limit),
        )
}

/// Queues and exchanges, their messages and their bindings.
fn queue_and_exchange_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use resources::*;
    router
        .route("/api/queues", get(list_queues))
        .route("/api/queues/{vhost}", get(list_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(get_queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/republish", post(republish))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/exchanges", get(list_exchanges))
        .route("/api/exchanges/{vhost}", get(list_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(get_exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
}

/// Bindings.
fn binding_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use resources::*;
    router
        .route("/api/bindings", get(list_bindings))
        .route("/api/bindings/{vhost}", get(list_bindings))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(bindings_between).post(create_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(get_binding).delete(delete_binding),
        )
}

/// Connections, channels and consumers.
fn connection_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use status::*;
    router
        .route("/api/connections", get(list_connections))
        .route(
            "/api/connections/{name}",
            get(get_connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/channels", get(list_channels))
        .route("/api/channels/{name}", get(get_channel))
        .route("/api/consumers", get(list_consumers))
        .route("/api/consumers/{vhost}", get(list_consumers))
}

/// The health checks and the aliveness test.
fn health_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    use status::*;
    router
        .route("/api/health/checks/alarms", get(health_alarms))
        .route("/api/health/checks/local-alarms", get(health_alarms))
        .route("/api/health/checks/virtual-hosts", get(health_ok))
        .route("/api/health/checks/node-is-quorum-critical", get(health_ok))
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(health_ok),
        )
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(health_ok),
        )
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/aliveness-test/{vhost}", get(aliveness_test))
}

/// warren's own actions (`warren ctl`) and the Prometheus metrics.
fn app_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
    router
        .route("/api/login", post(session::login))
        .route("/api/logout", post(session::logout))
        .route("/api/session", get(session::session))
        .route("/api/warren/authenticate", post(objects::authenticate_user))
        .route("/api/warren/{action}", post(objects::app_action))
        .route("/metrics", get(status::metrics))
}

// ----- errors -----

/// An error answer: RabbitMQ's `{"error": ..., "reason": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error: &'static str,
    reason: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }

    fn bad_request(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    fn not_authorised(reason: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }
}

/// Errors carry no `WWW-Authenticate` challenge, not even a 401: a browser that got one
/// would prompt for credentials and then send them with every request to this origin,
/// which is what cross-site requests exploit.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error, "reason": self.reason });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        use AdminErrorKind as K;
        match e.kind {
            K::NotAuthenticated => {
                ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", e.reason)
            }
            K::AccessRefused => ApiError::not_authorised(e.reason),
            K::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.reason),
            K::AlreadyExists => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "already_exists", e.reason)
            }
            K::BadRequest | K::PreconditionFailed | K::Locked => ApiError::bad_request(e.reason),
        }
    }
}

type ApiResult = Result<Response, ApiError>;

async fn not_found_handler() -> ApiError {
    ApiError::not_found()
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn ok_json(v: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, v))
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn created_or_updated(reply: AdminReply) -> ApiResult {
    match reply {
        AdminReply::Put { created: true } => Ok(StatusCode::CREATED.into_response()),
        _ => no_content(),
    }
}

/// A string field a request body must have, or RabbitMQ's `key_missing` error.
fn required_text(body: &Value, key: &str) -> Result<String, ApiError> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request(format!("[{{key_missing,{key}}}]")))
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

// ----- authentication -----

/// The authenticated requester.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    name: String,
    tags: Vec<String>,
    /// Authenticated with the node token.
    node: bool,
    /// Vhosts the user has permissions in.
    vhosts: Vec<String>,
}

/// RabbitMQ's reason for refusing a user a vhost it may not use.
const VHOST_REFUSED: &str = "User not authorised to access virtual host";

impl Principal {
    fn has(&self, tag: &str) -> bool {
        self.node || self.tags.iter().any(|t| t == tag)
    }

    fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    fn is_monitor(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    fn is_mgmt(&self) -> bool {
        self.is_monitor() || self.has("management") || self.has("policymaker")
    }

    fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    fn require_monitor(&self) -> Result<(), ApiError> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not monitor user"))
        }
    }

    /// Whether listings show this vhost's objects.
    fn sees_vhost(&self, vhost: &str) -> bool {
        self.is_monitor() || self.vhosts.iter().any(|v| v == vhost)
    }

    /// The vhosts a listing asks the core about: the one named, every one (`None`) for a
    /// user who sees them all, or each of the user's own, in name order (the order of a
    /// full listing). A user who sees one vhost costs the core a listing of that vhost,
    /// not of the whole broker.
    fn listing_scope(&self, vhost: Option<String>) -> Vec<Option<String>> {
        match vhost {
            Some(v) => vec![Some(v)],
            None if self.is_monitor() => vec![None],
            None => {
                let mut own = self.vhosts.clone();
                own.sort_unstable();
                own.dedup();
                own.into_iter().map(Some).collect()
            }
        }
    }

    /// Fails unless the user may work in `vhost` (administrators and the node may work in
    /// any; permissions still apply to what they do there).
    fn require_vhost(&self, vhost: &str) -> Result<(), ApiError> {
        if self.is_admin() || self.sees_vhost(vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(VHOST_REFUSED))
        }
    }

    /// Fails unless the user has permissions in `vhost` (or is an administrator or the
    /// node): what changing a vhost's settings, such as its policies, needs. Unlike
    /// [`Principal::require_vhost`], the monitoring tag, which sees every vhost, does not
    /// count (RabbitMQ's `user_matches_vhost`).
    fn require_own_vhost(&self, vhost: &str) -> Result<(), ApiError> {
        if self.is_admin() || self.vhosts.iter().any(|v| v == vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised(VHOST_REFUSED))
        }
    }

    fn actor(&self) -> Actor {
        if self.node {
            Actor::Node
        } else {
            Actor::User(self.name.clone())
        }
    }
}

/// The peer's address (recorded by [`peer_layer`]).
fn peer_of(headers: &HeaderMap) -> Option<SocketAddr> {
    headers
        .get(PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<SocketAddr>().ok())
}

/// A peer address with an IPv4-mapped IPv6 address shown as IPv4.
fn plain_peer(p: SocketAddr) -> SocketAddr {
    match p.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(p, |v4| SocketAddr::new(IpAddr::V4(v4), p.port())),
        IpAddr::V4(_) => p,
    }
}

/// Whether the request came from a loopback address.
fn peer_is_loopback(headers: &HeaderMap) -> bool {
    peer_of(headers).is_some_and(|a| match a.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

/// An internal header carrying the peer address to the handlers; any value a client sent
/// under this name is replaced.
const PEER_HEADER: &str = "x-warren-peer";

/// Middleware that records the TCP peer's address in [`PEER_HEADER`].
async fn peer_layer(
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    request.headers_mut().remove(PEER_HEADER);
    if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
        request.headers_mut().insert(PEER_HEADER, v);
    }
    next.run(request).await
}

/// Authenticates a request: the node token, basic auth against the broker's users for a
/// user with at least one management tag, or a web UI session ([`session`]). Failed
/// passwords are logged with the peer's address and slow down that peer's next attempts
/// ([`guard::LoginThrottle`]).
async fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return session_principal(ctx, headers).await;
    };
    // The node token (256 random bits) cannot be guessed, so `warren ctl` is never held up
    // by someone else's failed passwords from the same address.
    let is_token = value.starts_with("Bearer ");
    throttled(
        ctx,
        headers,
        !is_token,
        check_credentials(ctx, headers, value),
    )
    .await
}

/// Checks a user's password (the web UI's login form) as basic auth checks it.
async fn login_with_password(
    ctx: &Ctx,
    headers: &HeaderMap,
    username: &str,
    password: &str,
) -> Result<Principal, ApiError> {
    throttled(
        ctx,
        headers,
        true,
        check_password(ctx, headers, username, password),
    )
    .await
}

fn login_failed() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed")
}

/// Runs a credential check under the peer's login throttle (when `throttle`), and logs and
/// counts its failure.
async fn throttled(
    ctx: &Ctx,
    headers: &HeaderMap,
    throttle: bool,
    check: impl std::future::Future<Output = Result<Principal, (Option<String>, ApiError)>>,
) -> Result<Principal, ApiError> {
    let peer = peer_of(headers);
    if let Some(ip) = peer.map(|p| p.ip()).filter(|_| throttle) {
        match ctx.logins.admit(ip, Instant::now()) {
            Some(wait) if wait.is_zero() => {}
            Some(wait) => tokio::time::sleep(wait).await,
            None => {
                tracing::warn!(peer = %ip, "HTTP API login refused: too many failed attempts");
                return Err(login_failed());
            }
        }
    }
    let result = check.await;
    if let Err((user, e)) = &result
        && e.status == StatusCode::UNAUTHORIZED
        && e.error == "not_authorized"
    {
        let shown = peer.map_or_else(|| "unknown".to_string(), |p| plain_peer(p).to_string());
        let user = user.as_deref().unwrap_or("");
        // Debug formatting escapes what a client put in the name (no forged log lines).
        tracing::warn!(peer = %shown, user = ?user, "HTTP API login failed");
        if let Some(p) = peer {
            ctx.logins.failed(p.ip(), Instant::now());
        }
    }
    result.map_err(|(_, e)| e)
}

/// The user of a web UI session, looked up again: a deleted user or one without a
/// management tag any more ends its sessions.
async fn session_principal(ctx: &Ctx, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let user = headers
        .get(session::SESSION_USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(login_failed)?;
    let reply = ctx
        .core
        .call(AdminRequest::Whoami {
            username: user.to_string(),
        })
        .await;
    let Ok(AdminReply::Whoami(Whoami {
        user: record,
        vhosts,
    })) = reply
    else {
        ctx.sessions.end_user(user);
        return Err(login_failed());
    };
    let p = Principal {
        name: record.name,
        tags: record.tags,
        node: false,
        vhosts,
    };
    if !p.is_mgmt() {
        ctx.sessions.end_user(user);
        return Err(ApiError::not_authorised("Not management user"));
    }
    Ok(p)
}

/// Checks the `Authorization` header's credentials; a failure comes with the user name it
/// named, if any.
async fn check_credentials(
    ctx: &Ctx,
    headers: &HeaderMap,
    value: &str,
) -> Result<Principal, (Option<String>, ApiError)> {
    let refused = || (None, login_failed());
    if let Some(token) = value.strip_prefix("Bearer ") {
        if same_secret(token.trim(), &ctx.token) {
            return Ok(Principal {
                name: "warren-ctl".into(),
                tags: vec!["administrator".into()],
                node: true,
                vhosts: Vec::new(),
            });
        }
        return Err(refused());
    }
    let encoded = value.strip_prefix("Basic ").ok_or_else(refused)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| refused())?;
    let text = String::from_utf8(raw).map_err(|_| refused())?;
    let (username, password) = text.split_once(':').ok_or_else(refused)?;
    check_password(ctx, headers, username, password).await
}

/// Checks a user's password and that the user has a management tag.
async fn check_password(
    ctx: &Ctx,
    headers: &HeaderMap,
    username: &str,
    password: &str,
) -> Result<Principal, (Option<String>, ApiError)> {
    let named = |e: ApiError| (Some(username.to_string()), e);
    let reply = ctx
        .core
        .call(AdminRequest::Authenticate {
            username: username.into(),
            password: password.into(),
            from_loopback: peer_is_loopback(headers),
        })
        .await
        .map_err(|_| named(login_failed()))?;
    let AdminReply::Whoami(Whoami { user, vhosts }) = reply else {
        return Err(named(login_failed()));
    };
    let p = Principal {
        name: user.name,
        tags: user.tags,
        node: false,
        vhosts,
    };
    if !p.is_mgmt() {
        return Err(named(ApiError::not_authorised("Not management user")));
    }
    Ok(p)
}

impl Ctx {
    async fn call(&self, request: AdminRequest) -> Result<AdminReply, ApiError> {
        Ok(self.core.call(request).await?)
    }

    /// Forgets the rate history of objects of one kind (`prefix`) that a full listing no
    /// longer shows.
    fn forget_rates(&self, prefix: &str, live: &std::collections::HashSet<String>) {
        if let Ok(mut t) = self.rates.lock() {
            t.retain_live(prefix, live);
        }
    }

    fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Rates of `counters` (and of the depth gauges: messages, ready, unacknowledged) from the
/// history kept under `key`.
fn rates_of(
    ctx: &Ctx,
    key: &str,
    now: Instant,
    counters: &crate::broker::MessageCounters,
    depth: &[u64; 3],
) -> (super::json::Rates, super::json::DepthRates) {
    let values: Vec<u64> = counters
        .named()
        .iter()
        .map(|(_, v)| *v)
        .chain(depth.iter().copied())
        .collect();
    let rates = match ctx.rates.lock() {
        Ok(mut t) => t.observe(key, now, &values),
        Err(_) => vec![0.0; values.len()],
    };
    let mut counter_rates = [0.0; 10];
    counter_rates.copy_from_slice(&rates[..10]);
    (counter_rates, [rates[10], rates[11], rates[12]])
}
