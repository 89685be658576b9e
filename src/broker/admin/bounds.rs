//! The size of the names an administrative request carries. Over AMQP every name is a short
//! string, at most 255 bytes; the management API and definitions documents take names from
//! JSON and URL paths of any length. A longer name could never be used over AMQP, some are
//! part of the store's keys (which the disk limits to 64 KiB), and each is matched against
//! every policy pattern: so every name a request names is held to AMQP's bound before the
//! request does anything.

use crate::store::{PermissionRecord, PolicyRecord, TopicPermissionRecord};

use super::{AdminError, AdminRequest, BindingInfo, Definitions, bad_request};

/// The longest name accepted, in bytes: AMQP's short string.
pub const MAX_NAME_BYTES: usize = 255;

/// Refuses `name` (a `what`) when it is longer than [`MAX_NAME_BYTES`].
pub(super) fn check_name(what: &str, name: &str) -> Result<(), AdminError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(bad_request(format!(
            "{what} name is {} bytes long; names are at most {MAX_NAME_BYTES} bytes",
            name.len()
        )));
    }
    Ok(())
}

fn check_names<'a>(names: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), AdminError> {
    names
        .into_iter()
        .try_for_each(|(what, name)| check_name(what, name))
}

fn permission(p: &PermissionRecord) -> [(&str, &str); 2] {
    [("user", &p.user), ("vhost", &p.vhost)]
}

fn topic_permission(p: &TopicPermissionRecord) -> [(&str, &str); 3] {
    [
        ("user", &p.user),
        ("vhost", &p.vhost),
        ("exchange", &p.exchange),
    ]
}

fn policy(p: &PolicyRecord) -> [(&str, &str); 2] {
    [("vhost", &p.vhost), ("policy", &p.name)]
}

fn binding(b: &BindingInfo) -> [(&str, &str); 4] {
    [
        ("vhost", &b.vhost),
        ("source", &b.source),
        ("destination", &b.destination),
        ("routing key", &b.routing_key),
    ]
}

fn definitions(d: &Definitions) -> Result<(), AdminError> {
    check_names(d.users.iter().map(|u| ("user", u.name.as_str())))?;
    check_names(d.vhosts.iter().map(|v| ("vhost", v.as_str())))?;
    check_names(d.permissions.iter().flat_map(permission))?;
    check_names(d.topic_permissions.iter().flat_map(topic_permission))?;
    check_names(d.policies.iter().flat_map(policy))?;
    check_names(d.vhost_limits.iter().map(|(v, _)| ("vhost", v.as_str())))?;
    check_names(d.user_limits.iter().map(|(u, _)| ("user", u.as_str())))?;
    check_names(
        d.queues
            .iter()
            .flat_map(|q| [("vhost", &*q.vhost), ("queue", &*q.name)]),
    )?;
    check_names(d.exchanges.iter().flat_map(|x| {
        [
            ("vhost", &*x.vhost),
            ("exchange", &*x.name),
            ("exchange type", &*x.kind),
        ]
    }))?;
    check_names(d.bindings.iter().flat_map(binding))
}

impl AdminRequest {
    /// Refuses the request when a name it carries is longer than [`MAX_NAME_BYTES`].
    pub(super) fn check_name_sizes(&self) -> Result<(), AdminError> {
        use AdminRequest as R;
        let one = |what, name: &Option<String>| match name {
            Some(n) => check_name(what, n),
            None => Ok(()),
        };
        match self {
            R::PutUser { name, .. } | R::DeleteUser { name } => check_name("user", name),
            R::PutVhost { name, .. } | R::DeleteVhost { name } => check_name("vhost", name),
            R::SetPermissions(p) => check_names(permission(p)),
            R::ClearPermissions { user, vhost } => {
                check_names([("user", user.as_str()), ("vhost", vhost.as_str())])
            }
            R::SetVhostLimits { vhost, .. } | R::ClearVhostLimits { vhost, .. } => {
                check_name("vhost", vhost)
            }
            R::SetUserLimits { user, .. } | R::ClearUserLimits { user, .. } => {
                check_name("user", user)
            }
            R::SetTopicPermissions(p) => check_names(topic_permission(p)),
            R::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => {
                check_names([("user", user.as_str()), ("vhost", vhost.as_str())])?;
                one("exchange", exchange)
            }
            R::SetPolicy(p) => check_names(policy(p)),
            R::ClearPolicy { vhost, name, .. } => {
                check_names([("vhost", vhost.as_str()), ("policy", name.as_str())])
            }
            R::DeclareQueue { vhost, name, .. }
            | R::DeleteQueue { vhost, name, .. }
            | R::PurgeQueue { vhost, name, .. } => {
                check_names([("vhost", vhost.as_str()), ("queue", name.as_str())])
            }
            R::DeclareExchange {
                vhost, name, kind, ..
            } => check_names([
                ("vhost", vhost.as_str()),
                ("exchange", name.as_str()),
                ("exchange type", kind.as_str()),
            ]),
            R::DeleteExchange { vhost, name, .. } => {
                check_names([("vhost", vhost.as_str()), ("exchange", name.as_str())])
            }
            R::Bind { binding: b, .. } | R::Unbind { binding: b, .. } => check_names(binding(b)),
            R::Publish {
                vhost,
                exchange,
                routing_key,
                ..
            } => check_names([
                ("vhost", vhost.as_str()),
                ("exchange", exchange.as_str()),
                ("routing key", routing_key.as_str()),
            ]),
            R::Get { vhost, queue, .. }
            | R::Peek { vhost, queue, .. }
            | R::Republish { vhost, queue, .. } => {
                check_names([("vhost", vhost.as_str()), ("queue", queue.as_str())])
            }
            R::ImportDefinitions(d) => definitions(d),
            // Lookups, listings and node operations: a name they carry that is too long
            // names nothing, and they store nothing.
            _ => Ok(()),
        }
    }
}
