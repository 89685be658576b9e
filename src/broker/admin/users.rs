//! Users, vhosts and permissions, and resetting the node.

use rand::RngCore;

use crate::store::{PermissionRecord, StoreOp, TopicPermissionRecord, UserRecord};

use super::super::auth::{Permissions, TopicPermission, hash_password};
use super::super::vhost::VHost;
use super::super::{Broker, QueueId};
use super::bounds::MAX_NAME_BYTES;
use super::{
    AdminError, AdminErrorKind, AdminReply, AdminResult, Password, PutMode, Whoami, bad_request,
    not_found,
};

fn check_name(kind: &str, name: &str) -> Result<(), AdminError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(bad_request(format!(
            "{kind} name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A stored hash must decode to a 4-byte salt and a SHA-256 digest (or be empty: no
/// password).
fn check_hash(hash: &str) -> Result<(), AdminError> {
    use base64::Engine;
    if hash.is_empty() {
        return Ok(());
    }
    match base64::engine::general_purpose::STANDARD.decode(hash) {
        Ok(raw) if raw.len() == 36 => Ok(()),
        _ => Err(bad_request(
            "password_hash is not a rabbit_password_hashing_sha256 hash",
        )),
    }
}

impl Broker {
    pub(super) fn authenticate(
        &self,
        username: &str,
        password: &str,
        from_loopback: bool,
    ) -> AdminResult {
        let loopback_only = self.config.loopback_users.iter().any(|u| u == username);
        if self
            .accounts
            .users
            .authenticate(username, password)
            .is_none()
            || (loopback_only && !from_loopback)
        {
            return Err(AdminError::new(
                AdminErrorKind::NotAuthenticated,
                format!("Error: failed to authenticate user \"{username}\""),
            ));
        }
        self.whoami(username)
    }

    pub(super) fn whoami(&self, username: &str) -> AdminResult {
        let user = self
            .accounts
            .users
            .get(username)
            .cloned()
            .ok_or_else(|| not_found(format!("User \"{username}\" does not exist")))?;
        let vhosts = self
            .accounts
            .users
            .all_permissions()
            .filter(|p| p.user == username)
            .map(|p| p.vhost.clone())
            .collect();
        Ok(AdminReply::Whoami(Whoami { user, vhosts }))
    }

    pub(super) fn put_user(
        &mut self,
        name: &str,
        password: Password,
        tags: Option<Vec<String>>,
        mode: PutMode,
    ) -> AdminResult {
        check_name("user", name)?;
        let existing = self.accounts.users.get(name).cloned();
        match (&existing, mode) {
            (Some(_), PutMode::CreateOnly) => {
                return Err(AdminError::new(
                    AdminErrorKind::AlreadyExists,
                    format!("User \"{name}\" already exists"),
                ));
            }
            (None, PutMode::UpdateOnly) => {
                return Err(not_found(format!("User \"{name}\" does not exist")));
            }
            _ => {}
        }
        let password_hash = match password {
            Password::Keep => existing
                .as_ref()
                .map(|u| u.password_hash.clone())
                .unwrap_or_default(),
            Password::Clear => String::new(),
            Password::Plain(p) => {
                let mut salt = [0u8; 4];
                self.rng.fill_bytes(&mut salt);
                hash_password(&p, salt)
            }
            Password::Hash(h) => {
                check_hash(&h)?;
                h
            }
        };
        let tags = match tags {
            Some(t) => t
                .into_iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect(),
            None => existing
                .as_ref()
                .map(|u| u.tags.clone())
                .unwrap_or_default(),
        };
        let user = UserRecord {
            name: name.to_string(),
            password_hash,
            tags,
        };
        self.accounts.users.put(user.clone());
        self.round.journal.push(StoreOp::PutUser(user));
        Ok(AdminReply::Put {
            created: existing.is_none(),
        })
    }

    pub(super) fn delete_user(&mut self, name: &str) -> AdminResult {
        if !self.accounts.users.remove(name) {
            return Err(not_found(format!("User \"{name}\" does not exist")));
        }
        self.forget_user_limits(name);
        // The store drops the user's permissions with it.
        self.round
            .journal
            .push(StoreOp::DeleteUser(name.to_string()));
        let reason = format!("user '{name}' is deleted");
        self.force_close_where(&reason, |c| c.user.as_deref() == Some(name));
        Ok(AdminReply::Done)
    }

    pub(super) fn put_vhost(&mut self, name: &str, mode: PutMode) -> AdminResult {
        check_name("vhost", name)?;
        if self.topology.vhosts.contains_key(name) {
            if mode == PutMode::CreateOnly {
                return Err(AdminError::new(
                    AdminErrorKind::AlreadyExists,
                    format!("Virtual host '{name}' already exists"),
                ));
            }
            return Ok(AdminReply::Put { created: false });
        }
        if mode == PutMode::UpdateOnly {
            return Err(not_found(format!("Virtual host '{name}' does not exist")));
        }
        self.topology
            .vhosts
            .insert(name.to_string(), VHost::new(name));
        self.round.journal.push(StoreOp::PutVhost(name.to_string()));
        Ok(AdminReply::Put { created: true })
    }

    pub(super) fn delete_vhost(&mut self, name: &str) -> AdminResult {
        if !self.topology.vhosts.contains_key(name) {
            return Err(not_found(format!("Virtual host '{name}' does not exist")));
        }
        let reason = format!("vhost '{name}' is deleted");
        self.force_close_where(&reason, |c| c.vhost.as_deref() == Some(name));
        self.drop_vhost(name);
        Ok(AdminReply::Done)
    }

    /// Removes a vhost with its queues (and their messages), exchanges and permissions.
    /// Its connections must be closed already.
    fn drop_vhost(&mut self, name: &str) {
        let queues: Vec<QueueId> = self
            .topology
            .vhosts
            .get(name)
            .map(|v| v.queues.values().copied().collect())
            .unwrap_or_default();
        for q in queues {
            self.delete_queue(q);
        }
        self.drop_delayed(name, None);
        self.topology.vhosts.remove(name);
        self.forget_vhost_limits(name);
        self.accounts.users.clear_vhost(name);
        // The store drops the vhost's exchanges, bindings and permissions with it.
        self.round
            .journal
            .push(StoreOp::DeleteVhost(name.to_string()));
    }

    /// RabbitMQ's 404s for permissions of a user or in a vhost that does not exist.
    fn require_user_and_vhost(&self, user: &str, vhost: &str) -> Result<(), AdminError> {
        if self.accounts.users.get(user).is_none() {
            return Err(not_found(format!("User {user} does not exist")));
        }
        if !self.topology.vhosts.contains_key(vhost) {
            return Err(not_found(format!("Virtual host {vhost} does not exist")));
        }
        Ok(())
    }

    pub(super) fn set_permissions(&mut self, record: PermissionRecord) -> AdminResult {
        self.require_user_and_vhost(&record.user, &record.vhost)?;
        let perms = Permissions::new(record.clone()).map_err(bad_request)?;
        self.accounts.users.set_permissions(perms);
        self.round.journal.push(StoreOp::PutPermission(record));
        Ok(AdminReply::Done)
    }

    pub(super) fn clear_permissions(&mut self, user: &str, vhost: &str) -> AdminResult {
        self.require_user_and_vhost(user, vhost)?;
        if self.accounts.users.clear_permissions(user, vhost) {
            self.round.journal.push(StoreOp::DeletePermission {
                user: user.to_string(),
                vhost: vhost.to_string(),
            });
        }
        Ok(AdminReply::Done)
    }

    pub(super) fn set_topic_permissions(&mut self, record: TopicPermissionRecord) -> AdminResult {
        self.require_user_and_vhost(&record.user, &record.vhost)?;
        if record.exchange.is_empty() {
            return Err(bad_request("topic permissions need an exchange"));
        }
        let perms = TopicPermission::new(record.clone()).map_err(bad_request)?;
        if !self.accounts.users.set_topic(perms) {
            return Err(bad_request(format!(
                "user {} has topic permissions on {} exchanges of vhost {}, the most a user may hold",
                record.user,
                super::super::auth::MAX_TOPIC_PERMISSIONS_PER_USER_VHOST,
                record.vhost
            )));
        }
        self.round.journal.push(StoreOp::PutTopicPermission(record));
        Ok(AdminReply::Done)
    }

    /// Clears a user's topic permissions in a vhost, on one exchange or all.
    pub(super) fn clear_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> AdminResult {
        self.require_user_and_vhost(user, vhost)?;
        for exchange in self.accounts.users.clear_topic(user, vhost, exchange) {
            self.round.journal.push(StoreOp::DeleteTopicPermission {
                user: user.to_string(),
                vhost: vhost.to_string(),
                exchange,
            });
        }
        Ok(AdminReply::Done)
    }

    /// Empties the node as `rabbitmqctl reset` does: every vhost (with its queues and
    /// messages), user and permission goes, then the first-start defaults are created
    /// again, all in one store batch.
    pub(super) fn reset(&mut self) -> AdminResult {
        if self.node.app_running {
            return Err(AdminError::new(
                AdminErrorKind::PreconditionFailed,
                "the broker app is still running; stop it with `warren ctl stop_app` first",
            ));
        }
        debug_assert!(self.sessions.conns.values().all(|c| c.user.is_none()));
        let mut vhosts: Vec<String> = self.topology.vhosts.keys().cloned().collect();
        vhosts.sort();
        for v in vhosts {
            self.drop_vhost(&v);
        }
        let users: Vec<String> = self.accounts.users.iter().map(|u| u.name.clone()).collect();
        for u in users {
            self.accounts.users.remove(&u);
            self.forget_user_limits(&u);
            self.round.journal.push(StoreOp::DeleteUser(u));
        }
        self.counters.totals = Default::default();
        self.create_defaults();
        Ok(AdminReply::Done)
    }
}
