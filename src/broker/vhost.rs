//! Virtual hosts: a namespace of exchanges and queues.

use super::HashMap;

use crate::proto::table::FieldTable;

use super::exchange::{Exchange, ExchangeKind, QueueId};

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Its name.
    pub name: String,
    /// Exchanges by name, including the predeclared ones.
    pub exchanges: HashMap<String, Exchange>,
    /// Queues by name.
    pub queues: HashMap<String, QueueId>,
    /// Policies and operator policies.
    pub policies: super::policy::Policies,
}

/// The exchanges every vhost starts with, which cannot be deleted.
pub const PREDECLARED: [(&str, ExchangeKind); 7] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    ("amq.rabbitmq.trace", ExchangeKind::Topic),
];

impl VHost {
    /// A vhost holding only the predeclared exchanges.
    pub fn new(name: &str) -> Self {
        let exchanges = PREDECLARED
            .iter()
            .map(|(x, kind)| {
                let internal = *x == "amq.rabbitmq.trace";
                let mut e = Exchange::new(x, *kind, true, false, internal, FieldTable::default());
                e.builtin = true;
                (x.to_string(), e)
            })
            .collect();
        VHost {
            name: name.to_string(),
            exchanges,
            queues: HashMap::default(),
            policies: Default::default(),
        }
    }
}
