//! Vhost and user limits as an administrator sets, clears and lists them
//! (`set_vhost_limits`, `set_user_limits`, `/api/vhost-limits`, `/api/user-limits`).
//!
//! Setting a vhost's limits replaces them all, as `rabbitmqctl set_vhost_limits` does, or
//! only the ones given (the HTTP API's PUT of one limit); setting a user's limits changes
//! only the ones given, as `rabbitmqctl set_user_limits` does. Every change is durable
//! before it is answered. Limits apply to what comes next: connections and channels
//! already open are not closed, as in RabbitMQ.

use crate::store::{StoreOp, UserLimits, VhostLimits};

use super::super::Broker;
use super::{AdminReply, AdminResult, not_found};

/// RabbitMQ's names of the limits.
pub const MAX_CONNECTIONS: &str = "max-connections";
/// The vhost limit on queues.
pub const MAX_QUEUES: &str = "max-queues";
/// The user limit on channels.
pub const MAX_CHANNELS: &str = "max-channels";

/// Keeps `base`'s limits except those set in `given`.
fn merge(base: Option<i64>, given: Option<i64>) -> Option<i64> {
    given.or(base)
}

impl Broker {
    fn vhost_missing(vhost: &str) -> super::AdminError {
        not_found(format!("Virtual host '{vhost}' does not exist"))
    }

    fn user_missing(user: &str) -> super::AdminError {
        not_found(format!("User \"{user}\" does not exist"))
    }

    pub(super) fn list_vhost_limits(&self, vhost: Option<&str>) -> AdminResult {
        if let Some(v) = vhost
            && !self.topology.vhosts.contains_key(v)
        {
            return Err(Self::vhost_missing(v));
        }
        let mut all: Vec<(String, VhostLimits)> = self
            .accounts
            .tenants
            .vhost_limits
            .iter()
            .filter(|(name, _)| vhost.is_none_or(|v| v == name.as_str()))
            .map(|(name, l)| (name.clone(), *l))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(AdminReply::VhostLimits(all))
    }

    pub(super) fn list_user_limits(&self, user: Option<&str>) -> AdminResult {
        if let Some(u) = user
            && self.accounts.users.get(u).is_none()
        {
            return Err(Self::user_missing(u));
        }
        let mut all: Vec<(String, UserLimits)> = self
            .accounts
            .tenants
            .user_limits
            .iter()
            .filter(|(name, _)| user.is_none_or(|u| u == name.as_str()))
            .map(|(name, l)| (name.clone(), *l))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(AdminReply::UserLimits(all))
    }

    /// Sets a vhost's limits: all of them (`replace`) or those given.
    pub(super) fn set_vhost_limits(
        &mut self,
        vhost: &str,
        given: VhostLimits,
        replace: bool,
    ) -> AdminResult {
        if !self.topology.vhosts.contains_key(vhost) {
            return Err(Self::vhost_missing(vhost));
        }
        let limits = if replace {
            given
        } else {
            let old = self.vhost_limits_of(vhost);
            VhostLimits {
                max_connections: merge(old.max_connections, given.max_connections),
                max_queues: merge(old.max_queues, given.max_queues),
            }
        };
        self.store_vhost_limits(vhost, limits);
        Ok(AdminReply::Done)
    }

    /// Clears one limit of a vhost by name (an unknown name changes nothing, as in
    /// RabbitMQ), or all of them. Clearing all of a vhost that has none is an error, as
    /// `rabbitmqctl clear_vhost_limits` makes it.
    pub(super) fn clear_vhost_limits(&mut self, vhost: &str, name: Option<&str>) -> AdminResult {
        if !self.topology.vhosts.contains_key(vhost) {
            return Err(Self::vhost_missing(vhost));
        }
        let mut limits = self.vhost_limits_of(vhost);
        match name {
            None if limits.is_empty() => return Err(not_found("Parameter does not exist")),
            None => limits = VhostLimits::default(),
            Some(MAX_CONNECTIONS) => limits.max_connections = None,
            Some(MAX_QUEUES) => limits.max_queues = None,
            Some(_) => return Ok(AdminReply::Done),
        }
        self.store_vhost_limits(vhost, limits);
        Ok(AdminReply::Done)
    }

    /// Sets the given limits of a user, keeping the others.
    pub(super) fn set_user_limits(&mut self, user: &str, given: UserLimits) -> AdminResult {
        if self.accounts.users.get(user).is_none() {
            return Err(Self::user_missing(user));
        }
        let old = self.user_limits_of(user);
        let limits = UserLimits {
            max_connections: merge(old.max_connections, given.max_connections),
            max_channels: merge(old.max_channels, given.max_channels),
        };
        self.store_user_limits(user, limits);
        Ok(AdminReply::Done)
    }

    /// Clears one limit of a user by name (an unknown name changes nothing, as in
    /// RabbitMQ), or all of them.
    pub(super) fn clear_user_limits(&mut self, user: &str, name: Option<&str>) -> AdminResult {
        if self.accounts.users.get(user).is_none() {
            return Err(Self::user_missing(user));
        }
        let mut limits = self.user_limits_of(user);
        match name {
            None => limits = UserLimits::default(),
            Some(MAX_CONNECTIONS) => limits.max_connections = None,
            Some(MAX_CHANNELS) => limits.max_channels = None,
            Some(_) => return Ok(AdminReply::Done),
        }
        self.store_user_limits(user, limits);
        Ok(AdminReply::Done)
    }

    fn vhost_limits_of(&self, vhost: &str) -> VhostLimits {
        self.accounts
            .tenants
            .vhost_limits
            .get(vhost)
            .copied()
            .unwrap_or_default()
    }

    fn user_limits_of(&self, user: &str) -> UserLimits {
        self.accounts
            .tenants
            .user_limits
            .get(user)
            .copied()
            .unwrap_or_default()
    }

    /// Puts a vhost's limits in force and in the store (empty limits remove them).
    pub(super) fn store_vhost_limits(&mut self, vhost: &str, limits: VhostLimits) {
        if self.vhost_limits_of(vhost) == limits {
            return;
        }
        if limits.is_empty() {
            self.accounts.tenants.vhost_limits.remove(vhost);
        } else {
            self.accounts
                .tenants
                .vhost_limits
                .insert(vhost.to_string(), limits);
        }
        self.round.journal.push(StoreOp::PutVhostLimits {
            vhost: vhost.to_string(),
            limits,
        });
    }

    /// Puts a user's limits in force and in the store (empty limits remove them).
    pub(super) fn store_user_limits(&mut self, user: &str, limits: UserLimits) {
        if self.user_limits_of(user) == limits {
            return;
        }
        if limits.is_empty() {
            self.accounts.tenants.user_limits.remove(user);
        } else {
            self.accounts
                .tenants
                .user_limits
                .insert(user.to_string(), limits);
        }
        self.round.journal.push(StoreOp::PutUserLimits {
            user: user.to_string(),
            limits,
        });
    }

    /// Forgets the limits of a vhost being deleted (the store drops them with it).
    pub(super) fn forget_vhost_limits(&mut self, vhost: &str) {
        self.accounts.tenants.vhost_limits.remove(vhost);
    }

    /// Forgets the limits of a user being deleted (the store drops them with it).
    pub(super) fn forget_user_limits(&mut self, user: &str) {
        self.accounts.tenants.user_limits.remove(user);
    }
}
