//! Exchanges, their bindings, and routing.

use super::HashMap;

use crate::proto::table::{FieldTable, FieldValue};

use super::topic::TopicTrie;

/// Identity of a queue for the life of the broker (and, for durable queues, in the store).
pub type QueueId = u64;

/// The four exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Routes on exact routing key.
    Direct,
    /// Routes to every binding.
    Fanout,
    /// Routes on dotted patterns with `*` and `#`.
    Topic,
    /// Routes on message headers (`x-match` all or any).
    Headers,
}

impl ExchangeKind {
    /// Parses a type name from `exchange.declare`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }

    /// The type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A queue.
    Queue(QueueId),
    /// Another exchange (exchange-to-exchange binding).
    Exchange(String),
}

/// One binding from an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (used by headers exchanges).
    pub arguments: FieldTable,
}

/// The routing index of an exchange, derived from its bindings.
#[derive(Debug, Clone)]
enum Index {
    Direct(HashMap<String, Vec<Destination>>),
    Fanout,
    Topic(TopicTrie<Destination>),
    /// Headers exchanges scan their bindings: matching depends on each binding's table.
    Headers,
}

/// An exchange.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Name within its vhost.
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding (as a source) goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Predeclared (the default exchange and `amq.*`): cannot be deleted.
    pub builtin: bool,
    bindings: Vec<Binding>,
    index: Index,
}

impl Exchange {
    /// A new exchange without bindings.
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Self {
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::default()),
            ExchangeKind::Fanout => Index::Fanout,
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers,
        };
        Exchange {
            name: name.to_string(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            builtin: false,
            bindings: Vec::new(),
            index,
        }
    }

    /// The exchange's bindings, in the order they were made.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// The `alternate-exchange` argument, if set.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
    }

    /// Adds a binding; returns false if an identical one exists.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.contains(&binding) {
            return false;
        }
        match &mut self.index {
            Index::Direct(map) => map
                .entry(binding.routing_key.clone())
                .or_default()
                .push(binding.destination.clone()),
            Index::Topic(trie) => trie.insert(&binding.routing_key, binding.destination.clone()),
            Index::Fanout | Index::Headers => {}
        }
        self.bindings.push(binding);
        true
    }

    /// Removes the binding equal to `binding`; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(pos) = self.bindings.iter().position(|b| b == binding) else {
            return false;
        };
        let removed = self.bindings.remove(pos);
        self.unindex(&removed);
        true
    }

    /// Removes every binding to `destination`; returns them.
    pub fn unbind_destination(&mut self, destination: &Destination) -> Vec<Binding> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.bindings)
            .into_iter()
            .partition(|b| &b.destination == destination);
        self.bindings = kept;
        for b in &gone {
            self.unindex(b);
        }
        gone
    }

    fn unindex(&mut self, binding: &Binding) {
        match &mut self.index {
            Index::Direct(map) => {
                if let Some(dests) = map.get_mut(&binding.routing_key) {
                    if let Some(i) = dests.iter().position(|d| d == &binding.destination) {
                        dests.swap_remove(i);
                    }
                    if dests.is_empty() {
                        map.remove(&binding.routing_key);
                    }
                }
            }
            Index::Topic(trie) => {
                trie.remove(&binding.routing_key, &binding.destination);
            }
            Index::Fanout | Index::Headers => {}
        }
    }

    /// Calls `found` for each destination a message with this routing key and headers
    /// reaches through this exchange's own bindings (not following other exchanges). Adds
    /// the routing steps taken (index nodes visited, bindings and header entries compared)
    /// to `work`.
    pub fn route<'a>(
        &'a self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        work: &mut u64,
        found: &mut impl FnMut(&'a Destination),
    ) {
        *work += 1;
        match &self.index {
            Index::Direct(map) => {
                if let Some(dests) = map.get(routing_key) {
                    *work += dests.len() as u64;
                    dests.iter().for_each(found);
                }
            }
            Index::Fanout => {
                *work += self.bindings.len() as u64;
                self.bindings.iter().for_each(|b| found(&b.destination));
            }
            Index::Topic(trie) => trie.matches(routing_key, work, found),
            Index::Headers => {
                for b in &self.bindings {
                    *work += 1 + b.arguments.len() as u64;
                    if headers_match(&b.arguments, headers) {
                        found(&b.destination);
                    }
                }
            }
        }
    }
}

/// Headers-exchange matching, as RabbitMQ does it: `x-match` is `all` (default), `any`,
/// `all-with-x` or `any-with-x`; binding keys starting with `x-` are ignored unless the
/// mode ends in `-with-x`; values must be of the same type class and equal, and a void
/// pattern value matches a void header.
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding_args
        .get("x-match")
        .and_then(FieldValue::as_str)
        .unwrap_or("all");
    let (all, with_x) = match mode {
        "any" => (false, false),
        "any-with-x" => (false, true),
        "all-with-x" => (true, true),
        _ => (true, false),
    };
    let empty = FieldTable::default();
    let headers = headers.unwrap_or(&empty);
    let mut any_matched = false;
    for (key, pattern) in binding_args.iter() {
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let matched = headers
            .get(key)
            .is_some_and(|value| values_match(pattern, value));
        if all && !matched {
            return false;
        }
        any_matched |= matched;
    }
    all || any_matched
}

fn values_match(pattern: &FieldValue, value: &FieldValue) -> bool {
    match (pattern.as_i64(), value.as_i64()) {
        (Some(a), Some(b)) => return a == b,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (pattern, value) {
        (FieldValue::Void, FieldValue::Void) => true,
        (FieldValue::F32(a), FieldValue::F64(b)) | (FieldValue::F64(b), FieldValue::F32(a)) => {
            f64::from(*a) == *b
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(v: &str) -> FieldValue {
        FieldValue::LongStr(Bytes::copy_from_slice(v.as_bytes()))
    }

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn headers_all_and_any() {
        let all = table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]);
        let any = table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]);
        let both = table(&[("format", s("pdf")), ("type", s("report"))]);
        let one = table(&[("format", s("pdf")), ("type", s("log"))]);
        assert!(headers_match(&all, Some(&both)));
        assert!(!headers_match(&all, Some(&one)));
        assert!(headers_match(&any, Some(&one)));
        assert!(!headers_match(&any, None));
        assert!(
            headers_match(&table(&[]), None),
            "no conditions: all matches"
        );
    }

    #[test]
    fn headers_integer_types_compare_by_value() {
        let b = table(&[("n", FieldValue::I8(5))]);
        assert!(headers_match(
            &b,
            Some(&table(&[("n", FieldValue::I64(5))]))
        ));
        assert!(!headers_match(&b, Some(&table(&[("n", s("5"))]))));
    }

    #[test]
    fn direct_index_follows_bindings() {
        let mut x = Exchange::new(
            "x",
            ExchangeKind::Direct,
            false,
            false,
            false,
            FieldTable::default(),
        );
        let b = Binding {
            destination: Destination::Queue(1),
            routing_key: "k".into(),
            arguments: FieldTable::default(),
        };
        assert!(x.bind(b.clone()));
        assert!(!x.bind(b.clone()));
        let mut hits = Vec::new();
        x.route("k", None, &mut 0, &mut |d| hits.push(d.clone()));
        assert_eq!(hits, [Destination::Queue(1)]);
        assert!(x.unbind(&b));
        hits.clear();
        x.route("k", None, &mut 0, &mut |d| hits.push(d.clone()));
        assert!(hits.is_empty());
    }
}
