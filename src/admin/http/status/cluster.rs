//! What a cluster member adds to the node objects of `/api/nodes` and to `/metrics`: each
//! member's role, Raft log position and lag behind the leader, and the leader's commit
//! latency.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::metrics::Exposition;
use crate::admin::http::{ApiError, ApiResult, Ctx, State, authenticate, no_content};
use crate::cluster::latency::WINDOW;
use crate::cluster::settings::{MemberAddress, node_name};
use crate::cluster::status::ClusterView;
use crate::cluster::{Change, NodeId, Role};

/// How long a membership change may take to commit before the API gives up waiting (it
/// may still take effect).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of `PUT /api/cluster/members/{id}`: the new member's addresses, as a
/// member's entry in the `[cluster]` section names them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    raft: SocketAddr,
    amqp: SocketAddr,
    #[serde(default)]
    http: Option<SocketAddr>,
}

/// The id in a member's path: a node id, or a node name `warren-ID@HOST`, which must be
/// the name `name_of` gives that id (the node's name as its addresses make it, when they
/// are known).
fn member_id(
    text: &str,
    name_of: impl FnOnce(NodeId) -> Option<String>,
) -> Result<NodeId, ApiError> {
    let (digits, named) = match text.strip_prefix("warren-") {
        Some(rest) => (
            rest.split_once('@').map_or(rest, |(id, _)| id),
            text.contains('@'),
        ),
        None => (text, false),
    };
    let id = digits
        .parse::<NodeId>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{text:?} is not a member: give a node id (1 or more) or a name warren-ID@HOST"
            ))
        })?;
    if named {
        match name_of(id) {
            Some(name) if name == text => {}
            Some(name) => {
                return Err(ApiError::bad_request(format!(
                    "{text:?} is not a member's name: node {id} is {name}"
                )));
            }
            None => {
                return Err(ApiError::bad_request(format!(
                    "{text:?} is not a member: no node {id} is known"
                )));
            }
        }
    }
    Ok(id)
}

/// Hands a membership change to the Raft thread and waits for it to commit.
async fn change_members(s: &Ctx, change: Change) -> Result<(), ApiError> {
    let Some(view) = &s.cluster else {
        return Err(ApiError::bad_request("this node is not a cluster member"));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if !(view.changes)(change, reply) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the Raft thread is busy or stopped; try again",
        ));
    }
    match tokio::time::timeout(CHANGE_TIMEOUT, answer).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => Err(ApiError::bad_request(why)),
        Ok(Err(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the Raft thread stopped",
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "the change was not committed within {} s; it may still take effect",
                CHANGE_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// `PUT /api/cluster/members/{id}`: adds a node, which must be running with `join` (it
/// joins as a learner and votes once it has caught up).
pub(in crate::admin::http) async fn join_member(
    s: State,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let body: JoinBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("a member's addresses: {e}")))?;
    let id = member_id(&id, |id| Some(node_name(id, body.amqp.ip())))?;
    let member = MemberAddress {
        id,
        raft: body.raft,
        amqp: body.amqp,
        http: body.http,
    };
    change_members(&s, Change::AddLearner(member)).await?;
    no_content()
}

/// `DELETE /api/cluster/members/{id}`: removes a member (rabbitmqctl's
/// forget_cluster_node); not the leader itself.
pub(in crate::admin::http) async fn forget_member(
    s: State,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authenticate(&s, &headers).await?.require_admin()?;
    let id = member_id(&id, |id| {
        let members = s.cluster.as_ref()?.members();
        members.iter().find(|m| m.id == id).map(|m| m.node_name())
    })?;
    change_members(&s, Change::Remove(id)).await?;
    no_content()
}

/// The fields a cluster member adds to its node object, and the other members' objects:
/// each one's role, how far its Raft log matches the leader's, and how far behind it is.
pub(super) fn cluster_nodes(s: &Ctx, me: &mut Value) -> Vec<Value> {
    let Some(view) = &s.cluster else {
        return Vec::new();
    };
    let status = view.status.borrow().clone();
    me["cluster_id"] = json!(status.id);
    me["cluster_role"] = json!(if status.membership.learners.contains(&status.id) {
        "learner"
    } else {
        status.role.name()
    });
    me["raft_voter"] = json!(status.membership.voters.contains(&status.id));
    me["raft_term"] = json!(status.term);
    me["raft_last_index"] = json!(status.last_index);
    me["raft_commit_index"] = json!(status.commit);
    me["raft_applied_index"] = json!(status.applied);
    me["raft_first_index"] = json!(status.first_index);
    me["raft_snapshots_sent"] = json!(status.snapshots_sent);
    me["raft_snapshots_installed"] = json!(status.snapshots_installed);
    me["raft_lag"] = json!(0);
    if status.role == Role::Leader {
        let l = status.commit_latency;
        me["raft_commit_latency"] = json!({
            "commits": l.count,
            "sum_us": l.sum_us,
            "window_s": WINDOW.as_secs(),
            "window_commits": l.window_count,
            "p50_us": l.p50_us,
            "p99_us": l.p99_us,
            "max_us": l.max_us,
        });
    }
    let mut others = Vec::new();
    for m in view.members().iter().filter(|m| m.id != status.id) {
        let matched = status
            .progress
            .iter()
            .find(|(id, _)| *id == m.id)
            .map(|(_, i)| *i);
        let lag = matched.map(|i| status.last_index.saturating_sub(i));
        others.push(json!({
            "name": m.node_name(),
            "type": "disc",
            // What the leader can tell: whether it heard from the member within the last
            // election timeout.
            "running": status.active.contains(&m.id),
            "cluster_id": m.id,
            "cluster_role": if status.leader == Some(m.id) {
                "leader"
            } else if status.membership.learners.contains(&m.id) {
                "learner"
            } else {
                "follower"
            },
            "raft_voter": status.membership.voters.contains(&m.id),
            "raft_match_index": matched,
            "raft_lag": lag,
            "listeners": [{ "protocol": "amqp", "ip_address": m.amqp.ip().to_string(), "port": m.amqp.port() }],
        }));
    }
    others
}

/// The Raft families alone, as a follower's management port serves them.
pub(crate) fn cluster_metrics(view: &ClusterView) -> String {
    let mut out = Exposition::default();
    out.cluster(view);
    out.text
}

impl Exposition {
    /// The Raft families: this node's role and log, the leader's commit latency, and each
    /// other member's lag behind the leader (on the leader only).
    pub(super) fn cluster(&mut self, view: &ClusterView) {
        let status = view.status.borrow().clone();
        let leader = status.role == Role::Leader;
        self.singles(&[
            (
                "warren_raft_leader",
                "gauge",
                "1 while this node leads the cluster",
                u64::from(leader),
            ),
            (
                "warren_raft_term",
                "gauge",
                "The current Raft term",
                status.term,
            ),
            (
                "warren_raft_commit_index",
                "gauge",
                "The highest log index known committed",
                status.commit,
            ),
            (
                "warren_raft_applied_index",
                "gauge",
                "The last log index applied to the store",
                status.applied,
            ),
            (
                "warren_raft_first_index",
                "gauge",
                "The first index in the log (those before are compacted away)",
                status.first_index,
            ),
            (
                "warren_raft_snapshots_sent_total",
                "counter",
                "Store snapshots sent to members too far behind for the log",
                status.snapshots_sent,
            ),
            (
                "warren_raft_snapshots_installed_total",
                "counter",
                "Store snapshots received and installed",
                status.snapshots_installed,
            ),
            (
                "warren_raft_voters",
                "gauge",
                "Members that vote, as of the last entry applied here",
                status.membership.voters.len() as u64,
            ),
            (
                "warren_raft_learners",
                "gauge",
                "Members that take the log without voting yet (joining)",
                status.membership.learners.len() as u64,
            ),
        ]);
        if !leader {
            return;
        }
        let l = status.commit_latency;
        let seconds = |us: u64| us as f64 / 1e6;
        let name = "warren_raft_commit_latency_seconds";
        self.family(
            name,
            "summary",
            &format!(
                "From a store batch's proposal to its commit by a majority, on the leader (quantiles over the last {} s)",
                WINDOW.as_secs()
            ),
            &[
                ("{quantile=\"0.5\"}".to_string(), seconds(l.p50_us)),
                ("{quantile=\"0.99\"}".to_string(), seconds(l.p99_us)),
                ("{quantile=\"1\"}".to_string(), seconds(l.max_us)),
            ],
        );
        let _ = writeln!(self.text, "{name}_sum {}", seconds(l.sum_us));
        let _ = writeln!(self.text, "{name}_count {}", l.count);
        let lag: Vec<(String, f64)> = view
            .members()
            .iter()
            .filter(|m| m.id != status.id)
            .map(|m| {
                let matched = status
                    .progress
                    .iter()
                    .find(|(id, _)| *id == m.id)
                    .map_or(0, |(_, i)| *i);
                (
                    format!("{{member=\"{}\"}}", m.id),
                    status.last_index.saturating_sub(matched) as f64,
                )
            })
            .collect();
        self.family(
            "warren_raft_follower_lag_entries",
            "gauge",
            "How many log entries each other member is behind the leader",
            &lag,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::member_id;

    #[test]
    fn a_member_is_named_by_its_id_or_its_node_name() {
        let known = |id| (id == 12).then(|| "warren-12@10.0.0.12".to_string());
        assert_eq!(member_id("3", known).unwrap(), 3);
        assert_eq!(member_id("warren-12@10.0.0.12", known).unwrap(), 12);
        assert_eq!(member_id("warren-7", known).unwrap(), 7);
        // The host must be the member's.
        assert!(member_id("warren-12@10.0.0.13", known).is_err());
        assert!(member_id("warren-7@10.0.0.7", known).is_err());
        for bad in ["0", "", "x", "warren-@h", "-1", "99999999999999999999999"] {
            assert!(member_id(bad, known).is_err(), "{bad}");
        }
    }
}
