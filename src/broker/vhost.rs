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
    /// The exchange called `name`; `""` and `"amq.default"` are the default exchange.
    pub fn exchange(&self, name: &str) -> Option<&Exchange> {
        let name = if name == "amq.default" { "" } else { name };
        self.exchanges.get(super::name_lookup(name))
    }

    /// A vhost holding only the predeclared exchanges.
    pub fn new(name: &str) -> Self {
        let exchanges = PREDECLARED
            .iter()
            .map(|(x, kind)| {
                let internal = *x == "amq.rabbitmq.trace";
                let mut e = Exchange::new(x, *kind, true, false, internal, FieldTable::default());
                e.builtin = true;
                (super::name_key(x.to_string()), e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_exchange_is_found_by_both_its_names_under_a_key_with_an_allocation() {
        let v = VHost::new("/");
        let by_empty = v.exchange("").expect("the default exchange");
        let by_alias = v.exchange("amq.default").expect("the default exchange");
        assert!(std::ptr::eq(by_empty, by_alias));
        assert_eq!(by_empty.name, "");
        let key = v.exchanges.keys().find(|k| k.is_empty()).expect("its key");
        assert!(
            key.capacity() > 0,
            "the empty key must not point at address 1"
        );
        assert!(std::ptr::eq(
            v.exchange("amq.topic").unwrap(),
            &v.exchanges["amq.topic"]
        ));
        assert!(v.exchange("nope").is_none());
    }
}
