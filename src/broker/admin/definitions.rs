//! Definitions: users, vhosts, permissions and topology as one document, the content of
//! RabbitMQ's `export_definitions` / `import_definitions` (the JSON form lives in
//! `crate::admin::json`).

use crate::proto::table::FieldTable;
use crate::store::{
    PermissionRecord, PolicyRecord, TopicPermissionRecord, UserLimits, UserRecord, VhostLimits,
};

use super::super::Broker;
use super::super::exchange::ExchangeKind;
use super::snapshot::BindingInfo;
use super::{Actor, AdminReply, AdminResult, Password, PutMode, bad_request, not_found};

/// A queue in a definitions document.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// An exchange in a definitions document.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
}

/// Everything an export holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Definitions {
    /// Users with their password hashes.
    pub users: Vec<UserRecord>,
    /// Vhost names.
    pub vhosts: Vec<String>,
    /// Permissions.
    pub permissions: Vec<PermissionRecord>,
    /// Queues (exclusive ones are not exported).
    pub queues: Vec<QueueDef>,
    /// Exchanges (the predeclared ones are not exported).
    pub exchanges: Vec<ExchangeDef>,
    /// Bindings (the default exchange's implicit ones are not exported).
    pub bindings: Vec<BindingInfo>,
    /// Vhosts' limits (RabbitMQ's `vhost-limits` parameters).
    pub vhost_limits: Vec<(String, VhostLimits)>,
    /// Users' limits (each user's `limits` in RabbitMQ's documents).
    pub user_limits: Vec<(String, UserLimits)>,
    /// Policies and operator policies.
    pub policies: Vec<PolicyRecord>,
    /// Topic permissions.
    pub topic_permissions: Vec<TopicPermissionRecord>,
    /// The vhost a document imported into one vhost (`POST /api/definitions/{vhost}`) goes
    /// to: it must exist.
    pub into_vhost: Option<String>,
}

impl Broker {
    pub(super) fn export_definitions(&self, vhost: Option<&str>) -> Definitions {
        let mut defs = Definitions::default();
        if vhost.is_none() {
            defs.users = self.accounts.users.iter().cloned().collect();
            defs.vhosts = self.list_vhosts().into_iter().map(|v| v.name).collect();
            defs.permissions = self.accounts.users.all_permissions().cloned().collect();
            defs.topic_permissions = self.accounts.users.all_topic().cloned().collect();
            if let Ok(AdminReply::UserLimits(l)) = self.list_user_limits(None) {
                defs.user_limits = l;
            }
        }
        let limits = self.accounts.tenants.vhost_limits.iter();
        defs.vhost_limits = limits
            .filter(|(v, _)| vhost.is_none_or(|only| only == v.as_str()))
            .map(|(v, l)| (v.clone(), *l))
            .collect();
        defs.vhost_limits.sort_by(|a, b| a.0.cmp(&b.0));
        for operator in [false, true] {
            if let Ok(AdminReply::Policies(ps)) = self.list_policies(operator, vhost) {
                defs.policies.extend(ps);
            }
        }
        defs.queues = self
            .list_queues(vhost)
            .into_iter()
            .filter(|q| q.owner.is_none())
            .map(|q| QueueDef {
                vhost: q.vhost,
                name: q.name,
                durable: q.durable,
                auto_delete: q.auto_delete,
                arguments: q.arguments,
            })
            .collect();
        defs.exchanges = self
            .list_exchanges(vhost)
            .into_iter()
            .filter(|x| {
                self.topology
                    .vhosts
                    .get(&x.vhost)
                    .and_then(|v| v.exchanges.get(&x.name))
                    .is_some_and(|e| !e.builtin)
            })
            .map(|x| ExchangeDef {
                vhost: x.vhost,
                name: x.name,
                kind: x.kind,
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
                arguments: x.arguments,
            })
            .collect();
        let exported_queue = |vhost: &str, name: &str| {
            defs.queues
                .iter()
                .any(|q| q.vhost == vhost && q.name == name)
        };
        let bindings: Vec<BindingInfo> = self
            .list_bindings(vhost)
            .into_iter()
            .filter(|b| !b.source.is_empty())
            .filter(|b| !b.to_queue || exported_queue(&b.vhost, &b.destination))
            .collect();
        defs.bindings = bindings;
        defs
    }

    /// Checks a document before anything of it is applied, so that a bad one changes
    /// nothing.
    fn validate_definitions(&self, defs: &Definitions) -> Result<(), super::AdminError> {
        let known_vhost =
            |v: &str| self.topology.vhosts.contains_key(v) || defs.vhosts.iter().any(|d| d == v);
        let known_user = |u: &str| {
            self.accounts.users.get(u).is_some() || defs.users.iter().any(|d| d.name == u)
        };
        for p in &defs.permissions {
            if !known_vhost(&p.vhost) || !known_user(&p.user) {
                return Err(bad_request(format!(
                    "permission of user '{}' in vhost '{}': no such user or vhost",
                    p.user, p.vhost
                )));
            }
            super::super::auth::Permissions::new(p.clone()).map_err(bad_request)?;
        }
        for p in &defs.topic_permissions {
            if !known_vhost(&p.vhost) || !known_user(&p.user) {
                return Err(bad_request(format!(
                    "topic permission of user '{}' in vhost '{}': no such user or vhost",
                    p.user, p.vhost
                )));
            }
            super::super::auth::TopicPermission::new(p.clone()).map_err(bad_request)?;
        }
        for (user, _) in &defs.user_limits {
            if !known_user(user) {
                return Err(bad_request(format!(
                    "limits of user '{user}': no such user"
                )));
            }
        }
        let tables = defs
            .queues
            .iter()
            .map(|q| (&q.arguments, "queue", &q.name))
            .chain(
                defs.exchanges
                    .iter()
                    .map(|x| (&x.arguments, "exchange", &x.name)),
            )
            .chain(
                defs.bindings
                    .iter()
                    .map(|b| (&b.arguments, "binding to", &b.destination)),
            );
        for (arguments, kind, name) in tables {
            super::check_table(arguments, &format!("arguments of {kind} '{name}'"))?;
        }
        self.validate_queue_limits(defs)?;
        for p in &defs.policies {
            super::super::policy::Policy::new(p.clone()).map_err(|e| {
                bad_request(format!(
                    "policy '{}' in vhost '{}': Validation failed\n\n{e}\n",
                    p.name, p.vhost
                ))
            })?;
        }
        for x in &defs.exchanges {
            if ExchangeKind::parse_declared(&x.kind, &x.arguments).is_err() {
                return Err(bad_request(format!("invalid exchange type '{}'", x.kind)));
            }
        }
        let vhost_of = defs
            .queues
            .iter()
            .map(|q| q.vhost.as_str())
            .chain(defs.exchanges.iter().map(|x| x.vhost.as_str()))
            .chain(defs.bindings.iter().map(|b| b.vhost.as_str()))
            .chain(defs.vhost_limits.iter().map(|(v, _)| v.as_str()))
            .chain(defs.policies.iter().map(|p| p.vhost.as_str()));
        for v in vhost_of {
            if !known_vhost(v) {
                return Err(bad_request(format!("no_such_vhost: {v}")));
            }
        }
        Ok(())
    }

    /// Refuses a document whose new queues would pass a queue limit already in force, so
    /// that the import fails whole instead of half-way.
    fn validate_queue_limits(&self, defs: &Definitions) -> Result<(), super::AdminError> {
        let mut new_queues: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
            Default::default();
        for q in &defs.queues {
            let exists = self
                .topology
                .vhosts
                .get(&q.vhost)
                .is_some_and(|v| v.queues.contains_key(&q.name));
            if !exists {
                new_queues.entry(&q.vhost).or_default().insert(&q.name);
            }
        }
        for (vhost, names) in new_queues {
            let existing = self
                .topology
                .vhosts
                .get(vhost)
                .map_or(0, |v| v.queues.len());
            let limit = self
                .accounts
                .tenants
                .vhost_limits
                .get(vhost)
                .and_then(|l| l.max_queues)
                .filter(|n| *n >= 0);
            if let Some(limit) = limit
                && (existing + names.len()) as u64 > limit as u64
            {
                let name = names.iter().next().copied().unwrap_or_default();
                return Err(super::AdminError::new(
                    super::AdminErrorKind::PreconditionFailed,
                    format!(
                        "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({limit}) is reached"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(super) fn import_definitions(&mut self, defs: Definitions) -> AdminResult {
        if let Some(v) = &defs.into_vhost
            && !self.topology.vhosts.contains_key(v)
        {
            return Err(not_found("vhost_not_found"));
        }
        self.validate_definitions(&defs)?;
        for v in &defs.vhosts {
            self.put_vhost(v, PutMode::Upsert)?;
        }
        for u in defs.users {
            let password = Password::Hash(u.password_hash);
            self.put_user(&u.name, password, Some(u.tags), PutMode::Upsert)?;
        }
        for p in defs.permissions {
            self.set_permissions(p)?;
        }
        for p in defs.topic_permissions {
            self.set_topic_permissions(p)?;
        }
        for (user, limits) in defs.user_limits {
            self.set_user_limits(&user, limits)?;
        }
        let node = Actor::Node;
        for x in defs.exchanges {
            let flags = [x.durable, x.auto_delete, x.internal];
            self.admin_declare_exchange(&node, &x.vhost, &x.name, &x.kind, flags, x.arguments)?;
        }
        for q in defs.queues {
            self.admin_declare_queue(
                &node,
                &q.vhost,
                &q.name,
                q.durable,
                q.auto_delete,
                q.arguments,
            )?;
        }
        // The default exchange's bindings are implicit (exports leave them out); RabbitMQ's
        // import takes them without effect, and so does this one.
        for b in defs.bindings.into_iter().filter(|b| !b.source.is_empty()) {
            self.admin_bind(&node, b, true)?;
        }
        // After the queues, as RabbitMQ's import does not hold a document's queues to the
        // limits the same document sets.
        for (vhost, limits) in defs.vhost_limits {
            self.store_vhost_limits(&vhost, limits);
        }
        for p in defs.policies {
            self.set_policy(p)?;
        }
        Ok(AdminReply::Done)
    }
}
