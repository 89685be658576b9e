//! Users, password hashes and per-vhost permissions.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use regex::Regex;
use sha2::{Digest, Sha256};

use crate::store::{PermissionRecord, TopicPermissionRecord, UserRecord};

/// Hashes a password as RabbitMQ's `rabbit_password_hashing_sha256` does: base64 of a
/// 4-byte salt followed by SHA-256(salt ++ password).
pub fn hash_password(password: &str, salt: [u8; 4]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut raw = salt.to_vec();
    raw.extend_from_slice(&hasher.finalize());
    BASE64.encode(raw)
}

/// Checks a password against a hash made by [`hash_password`].
pub fn check_password(hash: &str, password: &str) -> bool {
    let Ok(raw) = BASE64.decode(hash) else {
        return false;
    };
    let Some(salt) = raw.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) else {
        return false;
    };
    // Both sides are hashes of fixed length; comparing them leaks nothing useful.
    hash_password(password, salt) == hash
}

/// A user's permissions in one vhost, compiled.
#[derive(Debug, Clone)]
pub struct Permissions {
    /// The record as configured.
    pub record: PermissionRecord,
    configure: Regex,
    write: Regex,
    read: Regex,
}

/// What a permission check asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Declare or delete.
    Configure,
    /// Publish to an exchange, bind to a queue.
    Write,
    /// Consume from a queue, bind from an exchange.
    Read,
}

impl Access {
    /// The permission's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Configure => "configure",
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    // As in RabbitMQ, the empty pattern is a synonym of ^$ (it matches no name).
    let pattern = if pattern.is_empty() { "^$" } else { pattern };
    Regex::new(pattern).map_err(|e| format!("invalid regular expression '{pattern}': {e}"))
}

impl Permissions {
    /// Compiles a permission record; fails on an invalid regular expression.
    pub fn new(record: PermissionRecord) -> Result<Self, String> {
        Ok(Permissions {
            configure: compile(&record.configure)?,
            write: compile(&record.write)?,
            read: compile(&record.read)?,
            record,
        })
    }

    /// Whether the permission allows `access` to a resource called `name`.
    pub fn allows(&self, access: Access, name: &str) -> bool {
        let pattern = match access {
            Access::Configure => &self.record.configure,
            Access::Write => &self.record.write,
            Access::Read => &self.record.read,
        };
        // The common grant-everything pattern needs no regex engine.
        if pattern == ".*" {
            return true;
        }
        let re = match access {
            Access::Configure => &self.configure,
            Access::Write => &self.write,
            Access::Read => &self.read,
        };
        re.is_match(name)
    }
}

/// A user's topic permissions on one exchange, compiled: `{username}` and `{vhost}` in the
/// patterns stand for the record's user and vhost, as in RabbitMQ.
#[derive(Debug, Clone)]
pub struct TopicPermission {
    /// As set.
    pub record: TopicPermissionRecord,
    write: Regex,
    read: Regex,
}

impl TopicPermission {
    /// Compiles a record; fails on an invalid regular expression.
    pub fn new(record: TopicPermissionRecord) -> Result<Self, String> {
        let expand = |p: &str| {
            p.replace("{username}", &record.user)
                .replace("{vhost}", &record.vhost)
        };
        Ok(TopicPermission {
            write: compile(&expand(&record.write))?,
            read: compile(&expand(&record.read))?,
            record,
        })
    }

    /// Whether the user may publish with (write) or bind with (read) `routing_key`.
    pub fn allows(&self, access: Access, routing_key: &str) -> bool {
        match access {
            Access::Write => self.write.is_match(routing_key),
            Access::Read => self.read.is_match(routing_key),
            Access::Configure => true,
        }
    }
}

/// The most topic permissions one user holds in one vhost (one per exchange).
pub const MAX_TOPIC_PERMISSIONS_PER_USER_VHOST: usize = 1000;

/// The user database.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: BTreeMap<String, UserRecord>,
    /// By user, then vhost (lookups with borrowed names, no allocation).
    permissions: BTreeMap<String, BTreeMap<String, Permissions>>,
    /// Topic permissions by user, then vhost, then exchange.
    topic: BTreeMap<String, BTreeMap<String, BTreeMap<String, TopicPermission>>>,
}

impl Users {
    /// A user by name.
    pub fn get(&self, name: &str) -> Option<&UserRecord> {
        self.users.get(name)
    }

    /// Every user, by name.
    pub fn iter(&self) -> impl Iterator<Item = &UserRecord> {
        self.users.values()
    }

    /// Adds or replaces a user.
    pub fn put(&mut self, user: UserRecord) {
        self.users.insert(user.name.clone(), user);
    }

    /// Removes a user and its permissions; returns whether it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.permissions.remove(name);
        self.topic.remove(name);
        self.users.remove(name).is_some()
    }

    /// Checks credentials; returns the user when they are right.
    pub fn authenticate(&self, name: &str, password: &str) -> Option<&UserRecord> {
        self.users
            .get(name)
            .filter(|u| check_password(&u.password_hash, password))
    }

    /// Sets a user's permissions in a vhost.
    pub fn set_permissions(&mut self, perms: Permissions) {
        self.permissions
            .entry(perms.record.user.clone())
            .or_default()
            .insert(perms.record.vhost.clone(), perms);
    }

    /// Clears a user's permissions in a vhost; returns whether there were any.
    pub fn clear_permissions(&mut self, user: &str, vhost: &str) -> bool {
        let Some(of_user) = self.permissions.get_mut(user) else {
            return false;
        };
        let removed = of_user.remove(vhost).is_some();
        if of_user.is_empty() {
            self.permissions.remove(user);
        }
        removed
    }

    /// Removes every permission in a vhost.
    pub fn clear_vhost(&mut self, vhost: &str) {
        for of_user in self.permissions.values_mut() {
            of_user.remove(vhost);
        }
        self.permissions.retain(|_, of_user| !of_user.is_empty());
        for of_user in self.topic.values_mut() {
            of_user.remove(vhost);
        }
        self.topic.retain(|_, of_user| !of_user.is_empty());
    }

    /// Sets a user's topic permissions on an exchange; false when the user already has
    /// the most a user may hold in the vhost and this exchange is not one of them.
    pub fn set_topic(&mut self, p: TopicPermission) -> bool {
        let r = &p.record;
        let of_vhost = self
            .topic
            .entry(r.user.clone())
            .or_default()
            .entry(r.vhost.clone())
            .or_default();
        if !of_vhost.contains_key(&r.exchange)
            && of_vhost.len() >= MAX_TOPIC_PERMISSIONS_PER_USER_VHOST
        {
            return false;
        }
        of_vhost.insert(r.exchange.clone(), p);
        true
    }

    /// Clears a user's topic permissions in a vhost on one exchange or all; returns the
    /// exchanges cleared.
    pub fn clear_topic(&mut self, user: &str, vhost: &str, exchange: Option<&str>) -> Vec<String> {
        let Some(of_user) = self.topic.get_mut(user) else {
            return Vec::new();
        };
        let Some(of_vhost) = of_user.get_mut(vhost) else {
            return Vec::new();
        };
        let cleared: Vec<String> = match exchange {
            Some(x) => of_vhost
                .remove(x)
                .map(|_| x.to_string())
                .into_iter()
                .collect(),
            None => std::mem::take(of_vhost).into_keys().collect(),
        };
        if of_vhost.is_empty() {
            of_user.remove(vhost);
        }
        if of_user.is_empty() {
            self.topic.remove(user);
        }
        cleared
    }

    /// A user's topic permissions on an exchange of a vhost, if it has any.
    pub fn topic(&self, user: &str, vhost: &str, exchange: &str) -> Option<&TopicPermission> {
        self.topic.get(user)?.get(vhost)?.get(exchange)
    }

    /// Every topic permission record, by user, vhost and exchange.
    pub fn all_topic(&self) -> impl Iterator<Item = &TopicPermissionRecord> {
        self.topic
            .values()
            .flat_map(|v| v.values())
            .flat_map(|x| x.values().map(|p| &p.record))
    }

    /// A user's permissions in a vhost.
    pub fn permissions(&self, user: &str, vhost: &str) -> Option<&Permissions> {
        self.permissions.get(user)?.get(vhost)
    }

    /// Every permission record.
    pub fn all_permissions(&self) -> impl Iterator<Item = &PermissionRecord> {
        self.permissions
            .values()
            .flat_map(|of_user| of_user.values().map(|p| &p.record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_rabbitmq_scheme() {
        // rabbitmqctl hash_password style: salt CAFEBABE then sha256(salt ++ "test12").
        let h = hash_password("test12", [0xCA, 0xFE, 0xBA, 0xBE]);
        let raw = BASE64.decode(&h).unwrap();
        assert_eq!(&raw[..4], &[0xCA, 0xFE, 0xBA, 0xBE]);
        let mut d = Sha256::new();
        d.update([0xCA, 0xFE, 0xBA, 0xBE]);
        d.update(b"test12");
        assert_eq!(&raw[4..], d.finalize().as_slice());
        assert!(check_password(&h, "test12"));
        assert!(!check_password(&h, "test13"));
        assert!(!check_password("not base64!", "x"));
    }

    #[test]
    fn empty_pattern_matches_nothing() {
        let p = Permissions::new(PermissionRecord {
            user: "u".into(),
            vhost: "/".into(),
            configure: String::new(),
            write: "^amq\\.gen".into(),
            read: ".*".into(),
        })
        .unwrap();
        assert!(!p.allows(Access::Configure, "q"));
        assert!(p.allows(Access::Write, "amq.gen-abc"));
        assert!(!p.allows(Access::Write, "q"));
        assert!(p.allows(Access::Read, ""));
    }
}
