//! Tenant limits: RabbitMQ's per-vhost `max-connections` and `max-queues` and per-user
//! `max-connections` and `max-channels`, checked where RabbitMQ checks them (connection.open,
//! channel.open, queue.declare of a new queue) with RabbitMQ's reply codes and texts.
//!
//! A limit that is not set, or is negative, does not limit; 0 allows none. The usage the
//! limits are checked against is counted as connections open a vhost and close, and as
//! channels open and close, so that a check costs O(1) however many connections there are.

use std::sync::Arc;

use crate::proto::command::ConnId;
use crate::store::{UserLimits, VhostLimits};

use super::error::{AmqpResult, not_allowed, precondition_failed};
use super::{Broker, HashMap};

/// The limits in force and the usage they are checked against.
#[derive(Debug, Default)]
pub(super) struct Tenants {
    /// Limits of vhosts that have some.
    pub(super) vhost_limits: HashMap<String, VhostLimits>,
    /// Limits of users that have some.
    pub(super) user_limits: HashMap<String, UserLimits>,
    /// Connections that opened each vhost (and are not closed).
    vhost_connections: HashMap<Arc<str>, u32>,
    /// Connections of each user that opened a vhost.
    user_connections: HashMap<Arc<str>, u32>,
    /// Channels open on each user's connections.
    user_channels: HashMap<Arc<str>, u32>,
}

/// The limit, when `count` has reached it (a negative limit is none).
fn reached(limit: Option<i64>, count: usize) -> Option<i64> {
    limit.filter(|&n| n >= 0 && i64::try_from(count).map_or(true, |c| c >= n))
}

fn count_up(map: &mut HashMap<Arc<str>, u32>, key: &Arc<str>) {
    *map.entry(key.clone()).or_default() += 1;
}

fn count_down(map: &mut HashMap<Arc<str>, u32>, key: &str) {
    match map.get_mut(key) {
        Some(n) if *n > 1 => *n -= 1,
        Some(_) => {
            map.remove(key);
        }
        None => debug_assert!(false, "usage of {key} counted down below zero"),
    }
}

impl Tenants {
    fn vhost(&self, vhost: &str) -> VhostLimits {
        self.vhost_limits.get(vhost).copied().unwrap_or_default()
    }

    fn user(&self, user: &str) -> UserLimits {
        self.user_limits.get(user).copied().unwrap_or_default()
    }

    fn count(map: &HashMap<Arc<str>, u32>, key: &str) -> usize {
        map.get(key).map_or(0, |n| *n as usize)
    }
}

impl Broker {
    /// Refuses a connection.open that would pass the vhost's or the user's connection
    /// limit (530 NOT_ALLOWED, as `rabbit_reader` does before checking vhost access).
    pub(super) fn check_connection_limits(&self, user: &str, vhost: &str) -> AmqpResult<()> {
        let t = &self.accounts.tenants;
        let open = Tenants::count(&t.vhost_connections, vhost);
        if let Some(limit) = reached(t.vhost(vhost).max_connections, open) {
            return Err(not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
            )));
        }
        let open = Tenants::count(&t.user_connections, user);
        if let Some(limit) = reached(t.user(user).max_connections, open) {
            return Err(not_allowed(format!(
                "connection refused for user '{user}': user connection limit ({limit}) is reached"
            )));
        }
        Ok(())
    }

    /// Refuses a channel.open that would pass the user's channel limit (530 NOT_ALLOWED,
    /// closing the connection, as RabbitMQ does).
    pub(super) fn check_channel_limit(&self, conn: ConnId) -> AmqpResult<()> {
        let Some(user) = self
            .sessions
            .conns
            .get(&conn)
            .and_then(|c| c.user.as_deref())
        else {
            return Ok(());
        };
        let t = &self.accounts.tenants;
        let open = Tenants::count(&t.user_channels, user);
        match reached(t.user(user).max_channels, open) {
            Some(limit) => Err(not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of ({limit})"
            ))),
            None => Ok(()),
        }
    }

    /// Refuses to create a queue in a vhost whose queue limit is reached (406
    /// PRECONDITION_FAILED, as `rabbit_channel` does for queues that do not exist yet).
    pub(super) fn check_queue_limit(&self, vhost: &str, name: &str) -> AmqpResult<()> {
        let queues = self
            .topology
            .vhosts
            .get(vhost)
            .map_or(0, |v| v.queues.len());
        match reached(self.accounts.tenants.vhost(vhost).max_queues, queues) {
            Some(limit) => Err(precondition_failed(format!(
                "cannot declare queue '{name}': queue limit in vhost '{vhost}' ({limit}) is reached"
            ))),
            None => Ok(()),
        }
    }

    /// Puts the limits read back from the store in force.
    pub(super) fn restore_limits(
        &mut self,
        vhost_limits: &[(String, VhostLimits)],
        user_limits: &[(String, UserLimits)],
    ) {
        for (vhost, limits) in vhost_limits {
            if self.topology.vhosts.contains_key(vhost) && !limits.is_empty() {
                self.accounts
                    .tenants
                    .vhost_limits
                    .insert(vhost.clone(), *limits);
            }
        }
        for (user, limits) in user_limits {
            if self.accounts.users.get(user).is_some() && !limits.is_empty() {
                self.accounts
                    .tenants
                    .user_limits
                    .insert(user.clone(), *limits);
            }
        }
    }

    /// Counts a connection that opened its vhost.
    pub(super) fn connection_opened(&mut self, conn: ConnId) {
        let Some(c) = self.sessions.conns.get(&conn) else {
            return;
        };
        if let (Some(user), Some(vhost)) = (&c.user, &c.vhost) {
            count_up(&mut self.accounts.tenants.vhost_connections, vhost);
            count_up(&mut self.accounts.tenants.user_connections, user);
        }
    }

    /// Uncounts a connection that is closing (call before it is removed).
    pub(super) fn connection_closed(&mut self, conn: ConnId) {
        let Some(c) = self.sessions.conns.get(&conn) else {
            return;
        };
        if let (Some(user), Some(vhost)) = (&c.user, &c.vhost) {
            count_down(&mut self.accounts.tenants.vhost_connections, vhost);
            count_down(&mut self.accounts.tenants.user_connections, user);
        }
    }

    /// Counts a channel that opened.
    pub(super) fn channel_opened(&mut self, conn: ConnId) {
        if let Some(user) = self.sessions.conns.get(&conn).and_then(|c| c.user.as_ref()) {
            count_up(&mut self.accounts.tenants.user_channels, user);
        }
    }

    /// Uncounts a channel that closed.
    pub(super) fn channel_closed(&mut self, conn: ConnId) {
        if let Some(user) = self
            .sessions
            .conns
            .get(&conn)
            .and_then(|c| c.user.as_deref())
        {
            count_down(&mut self.accounts.tenants.user_channels, user);
        }
    }

    /// Asserts that the usage counts match the connections and channels open.
    pub(super) fn check_tenant_invariants(&self) {
        let mut vhosts: HashMap<&str, u32> = HashMap::default();
        let mut users: HashMap<&str, u32> = HashMap::default();
        let mut channels: HashMap<&str, u32> = HashMap::default();
        for c in self.sessions.conns.values() {
            if let (Some(user), Some(vhost)) = (c.user.as_deref(), c.vhost.as_deref()) {
                *vhosts.entry(vhost).or_default() += 1;
                *users.entry(user).or_default() += 1;
            }
            if let Some(user) = c.user.as_deref()
                && !c.channels.is_empty()
            {
                *channels.entry(user).or_default() += c.channels.len() as u32;
            }
        }
        let same = |counted: &HashMap<Arc<str>, u32>, actual: &HashMap<&str, u32>| {
            counted.len() == actual.len()
                && counted
                    .iter()
                    .all(|(k, n)| actual.get(&**k).copied() == Some(*n))
        };
        let t = &self.accounts.tenants;
        assert!(
            same(&t.vhost_connections, &vhosts),
            "vhost connection counts"
        );
        assert!(same(&t.user_connections, &users), "user connection counts");
        assert!(same(&t.user_channels, &channels), "user channel counts");
    }
}

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn negative_limits_do_not_limit_and_zero_allows_none() {
        assert_eq!(reached(None, 1_000), None);
        assert_eq!(reached(Some(-1), 1_000), None);
        assert_eq!(reached(Some(0), 0), Some(0));
        assert_eq!(reached(Some(2), 1), None);
        assert_eq!(reached(Some(2), 2), Some(2));
        assert_eq!(reached(Some(i64::MAX), usize::MAX), Some(i64::MAX));
    }
}
