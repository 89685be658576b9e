//! A cluster member's settings: the `[cluster]` section of the config file.
//!
//! ```toml
//! [cluster]
//! node_id = 1
//! cookie = "a secret every member shares"
//! members = [
//!   { id = 1, raft = "10.0.0.1:25672", amqp = "10.0.0.1:5672" },
//!   # `http`: where a follower redirects HTTP clients when this member leads (by
//!   # default the `amqp` IP with this node's HTTP port).
//!   { id = 2, raft = "10.0.0.2:25672", amqp = "10.0.0.2:5672" },
//!   { id = 3, raft = "10.0.0.3:25672", amqp = "10.0.0.3:5672" },
//! ]
//! # Entries the Raft log keeps behind what the store holds durably (default 10000):
//! # a member further behind is sent the leader's store instead.
//! log_retain_entries = 10000
//! # Wait to be added to a running cluster (`warren ctl join_cluster`, run against a
//! # member) instead of starting a new one with `members` (default false).
//! join = false
//! ```
//!
//! Once a member's store records the cluster's members (from the first entry it applies,
//! or the snapshot it installs), that record wins over `members` here.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Change, NodeId, RETAIN_ENTRIES};

/// Most members of a cluster: Raft's majorities grow with it, and past seven every commit
/// waits on more fsyncs than it gains in safety.
pub const MAX_MEMBERS: usize = 7;
/// Fewest bytes of a cookie.
pub const MIN_COOKIE_BYTES: usize = 16;
/// Most bytes of a cookie.
pub const MAX_COOKIE_BYTES: usize = 255;
/// Most entries a log may be set to keep behind its store ([`ClusterFile::log_retain_entries`]).
pub const MAX_RETAIN_ENTRIES: u64 = 1_000_000;

/// One member, as every member's config lists it (and as a membership change carries it
/// in the Raft log).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberAddress {
    /// Its node id (1 or more, unique in the cluster).
    pub id: NodeId,
    /// Where it listens for the other members' Raft messages.
    pub raft: SocketAddr,
    /// Where clients reach its AMQP listener (named to clients a follower turns away).
    pub amqp: SocketAddr,
    /// Where its management HTTP API listens, to which a follower redirects HTTP
    /// clients; by default the IP of `amqp` with the `--http-port` of the node reading
    /// it (members on one IP with ports of their own must set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
}

impl MemberAddress {
    /// The member's node name, `warren-ID@IP` (its AMQP address's IP): what `/api/nodes`,
    /// `cluster_status` and `forget_cluster_node` call it, and its own name unless
    /// `--node-name` gives another.
    pub fn node_name(&self) -> String {
        node_name(self.id, self.amqp.ip())
    }
}

/// A member's node name from its id and the IP clients reach it on.
pub fn node_name(id: NodeId, ip: std::net::IpAddr) -> String {
    format!("warren-{id}@{ip}")
}

/// The cluster's members as a member's store records them with the last entry it applied:
/// the voters and learners of the configuration in effect, with every one's address.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// Members that vote, in order.
    pub voters: Vec<NodeId>,
    /// Members that take the log without voting yet, in order.
    pub learners: Vec<NodeId>,
    /// Every voter's and learner's addresses, by id.
    pub members: Vec<MemberAddress>,
    /// The addresses of the last members removed (at most [`FORMER_MEMBERS_KEPT`], the
    /// latest last), so that one that still runs, never having heard of its removal, can
    /// be told when it next makes itself heard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former: Vec<MemberAddress>,
}

/// How many removed members' addresses a membership keeps.
pub const FORMER_MEMBERS_KEPT: usize = 8;

impl Membership {
    /// A new cluster's: every configured member votes.
    pub fn bootstrap(members: &[MemberAddress]) -> Self {
        let mut m = Membership {
            voters: members.iter().map(|m| m.id).collect(),
            learners: Vec::new(),
            members: members.to_vec(),
            former: Vec::new(),
        };
        m.tidy();
        m
    }

    /// The membership after a committed change (which the replica checked fits).
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::AddLearner(address) => {
                self.members.retain(|m| m.id != address.id);
                self.members.push(address.clone());
                self.learners.push(address.id);
                self.former.retain(|m| m.id != address.id);
            }
            Change::Promote(id) => {
                self.learners.retain(|l| l != id);
                self.voters.push(*id);
            }
            Change::Remove(id) => {
                self.voters.retain(|v| v != id);
                self.learners.retain(|l| l != id);
                if let Some(at) = self.members.iter().position(|m| m.id == *id) {
                    let gone = self.members.remove(at);
                    self.former.retain(|m| m.id != *id);
                    self.former.push(gone);
                    if self.former.len() > FORMER_MEMBERS_KEPT {
                        self.former.remove(0);
                    }
                }
            }
        }
        self.tidy();
    }

    fn tidy(&mut self) {
        self.voters.sort_unstable();
        self.voters.dedup();
        self.learners.sort_unstable();
        self.learners.dedup();
        self.members.sort_by_key(|m| m.id);
    }

    /// A member's addresses.
    pub fn member(&self, id: NodeId) -> Option<&MemberAddress> {
        self.members.iter().find(|m| m.id == id)
    }

    /// A removed member's addresses, while they are kept.
    pub fn former(&self, id: NodeId) -> Option<&MemberAddress> {
        self.former.iter().find(|m| m.id == id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// The record a store keeps.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a membership encodes")
    }

    /// A store's record.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the store's cluster membership: {e}"))
    }
}

/// The `[cluster]` section as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// This node's id.
    pub node_id: Option<NodeId>,
    /// The secret a member presents to another before any Raft message.
    pub cookie: Option<String>,
    /// Every member, this node included.
    #[serde(default)]
    pub members: Vec<MemberAddress>,
    /// Entries the Raft log keeps behind what the store holds durably, for members a
    /// little behind; a member further behind is sent the leader's store.
    pub log_retain_entries: Option<u64>,
    /// This node joins a running cluster (`warren ctl join_cluster`, run against a
    /// member) rather than starting a new one with `members`; once it has joined, its
    /// store knows the members, and this is ignored.
    #[serde(default)]
    pub join: bool,
}

/// A checked cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: NodeId,
    /// The shared secret.
    pub cookie: String,
    /// Every member, this node included, by id.
    pub members: Vec<MemberAddress>,
    /// Entries the Raft log keeps behind what the store holds durably.
    pub retain_entries: u64,
    /// Wait to be added to a running cluster instead of starting one.
    pub join: bool,
}

impl ClusterFile {
    /// Checks the section: a node id among the members, distinct ids and addresses, at
    /// most [`MAX_MEMBERS`], and a cookie of a sane length.
    pub fn settings(self) -> Result<ClusterSettings, String> {
        let node_id = self.node_id.ok_or("[cluster] needs node_id")?;
        let cookie = self.cookie.ok_or("[cluster] needs cookie")?;
        if !(MIN_COOKIE_BYTES..=MAX_COOKIE_BYTES).contains(&cookie.len()) {
            return Err(format!(
                "[cluster] cookie must be {MIN_COOKIE_BYTES} to {MAX_COOKIE_BYTES} bytes"
            ));
        }
        let mut members = self.members;
        if members.is_empty() || members.len() > MAX_MEMBERS {
            return Err(format!(
                "[cluster] members must list 1 to {MAX_MEMBERS} nodes"
            ));
        }
        members.sort_by_key(|m| m.id);
        for pair in members.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(format!(
                    "[cluster] member id {} is listed twice",
                    pair[0].id
                ));
            }
        }
        for (i, m) in members.iter().enumerate() {
            if m.id == 0 {
                return Err("[cluster] member ids start at 1".into());
            }
            if members[..i].iter().any(|o| o.raft == m.raft) {
                return Err(format!("[cluster] raft address {} is listed twice", m.raft));
            }
        }
        if !members.iter().any(|m| m.id == node_id) {
            return Err(format!(
                "[cluster] node_id {node_id} is not one of the members"
            ));
        }
        let retain_entries = self.log_retain_entries.unwrap_or(RETAIN_ENTRIES);
        if !(1..=MAX_RETAIN_ENTRIES).contains(&retain_entries) {
            return Err(format!(
                "[cluster] log_retain_entries must be 1 to {MAX_RETAIN_ENTRIES}"
            ));
        }
        Ok(ClusterSettings {
            node_id,
            cookie,
            members,
            retain_entries,
            join: self.join,
        })
    }
}

impl ClusterSettings {
    /// This node's entry.
    pub fn me(&self) -> &MemberAddress {
        self.member(self.node_id)
            .expect("settings are checked to list this node")
    }

    /// A member's entry.
    pub fn member(&self, id: NodeId) -> Option<&MemberAddress> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The member ids.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_membership_follows_its_changes_and_round_trips() {
        let mut m = Membership::bootstrap(&[member(2, 20), member(1, 10)]);
        assert_eq!(m.voters, vec![1, 2]);
        m.apply(&Change::AddLearner(member(3, 30)));
        assert_eq!(
            (m.voters.clone(), m.learners.clone()),
            (vec![1, 2], vec![3])
        );
        m.apply(&Change::Promote(3));
        assert_eq!(
            (m.voters.clone(), m.learners.clone()),
            (vec![1, 2, 3], vec![])
        );
        m.apply(&Change::Remove(1));
        assert_eq!(m.voters, vec![2, 3]);
        assert!(m.member(1).is_none() && !m.contains(1));
        assert_eq!(m.member(3).map(|a| a.raft.port()), Some(30));
        assert_eq!(m.former(1).map(|a| a.raft.port()), Some(10));
        assert_eq!(Membership::decode(&m.encode()).unwrap(), m);
        assert!(Membership::decode(b"{}").is_err());
        // A record from before removed members were kept reads as keeping none.
        let old = br#"{"voters":[2],"learners":[],"members":[]}"#;
        assert!(Membership::decode(old).unwrap().former.is_empty());
        // Coming back makes a node a member again, not a former one; and only the last
        // few removed are kept.
        m.apply(&Change::AddLearner(member(1, 11)));
        assert!(m.former(1).is_none());
        for id in 10..30 {
            m.apply(&Change::AddLearner(member(id, 1000 + id as u16)));
            m.apply(&Change::Remove(id));
        }
        assert_eq!(m.former.len(), FORMER_MEMBERS_KEPT);
        assert!(m.former(29).is_some() && m.former(10).is_none());
    }

    fn member(id: NodeId, port: u16) -> MemberAddress {
        MemberAddress {
            id,
            raft: SocketAddr::from(([127, 0, 0, 1], port)),
            amqp: SocketAddr::from(([127, 0, 0, 1], port + 1)),
            http: None,
        }
    }

    fn file(node_id: NodeId, members: Vec<MemberAddress>) -> ClusterFile {
        ClusterFile {
            node_id: Some(node_id),
            cookie: Some("0123456789abcdef".into()),
            members,
            log_retain_entries: None,
            join: false,
        }
    }

    #[test]
    fn a_section_is_checked() {
        let ok = file(2, vec![member(3, 30), member(1, 10), member(2, 20)])
            .settings()
            .unwrap();
        assert_eq!(ok.ids(), vec![1, 2, 3]);
        assert_eq!(ok.me().raft.port(), 20);
        let err = |f: ClusterFile| f.settings().unwrap_err();
        assert!(err(file(4, vec![member(1, 10)])).contains("not one of the members"));
        assert!(err(file(1, vec![member(1, 10), member(1, 20)])).contains("twice"));
        assert!(err(file(1, vec![member(1, 10), member(2, 10)])).contains("twice"));
        assert!(err(file(0, vec![member(0, 10)])).contains("start at 1"));
        assert!(err(file(1, vec![])).contains("1 to 7"));
        let mut short = file(1, vec![member(1, 10)]);
        short.cookie = Some("short".into());
        assert!(err(short).contains("cookie"));
        let mut none_kept = file(1, vec![member(1, 10)]);
        none_kept.log_retain_entries = Some(0);
        assert!(err(none_kept).contains("log_retain_entries"));
        let parsed: ClusterFile = toml::from_str(
            "node_id = 1\ncookie = \"0123456789abcdef\"\nmembers = [{ id = 1, raft = \"127.0.0.1:25672\", amqp = \"127.0.0.1:5672\" }]",
        )
        .unwrap();
        assert_eq!(parsed.clone().settings().unwrap().me().amqp.port(), 5672);
        assert_eq!(parsed.settings().unwrap().me().http, None);
        let joining: ClusterFile = toml::from_str(
            "node_id = 4\ncookie = \"0123456789abcdef\"\njoin = true\nmembers = [{ id = 4, raft = \"127.0.0.4:25672\", amqp = \"127.0.0.4:5672\" }]",
        )
        .unwrap();
        assert!(joining.settings().unwrap().join);
        let parsed: ClusterFile = toml::from_str(
            "node_id = 1\ncookie = \"0123456789abcdef\"\nmembers = [{ id = 1, raft = \"127.0.0.1:25672\", amqp = \"127.0.0.1:5672\", http = \"127.0.0.1:15672\" }]",
        )
        .unwrap();
        assert_eq!(
            parsed.settings().unwrap().me().http.map(|a| a.port()),
            Some(15672)
        );
    }
}
