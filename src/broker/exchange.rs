//! Exchanges, their bindings, and routing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::HashMap;

use crate::proto::shortstr::ShortStr;
use crate::proto::table::{FieldTable, FieldValue};

use super::topic::TopicTrie;

/// Identity of a queue for the life of the broker (and, for durable queues, in the store).
pub type QueueId = u64;

/// The type name of RabbitMQ's delayed-message exchange (see `super::delayed`).
pub const DELAYED_TYPE: &str = "x-delayed-message";

/// The exchange types: AMQP's four and the consistent-hash exchange.
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
    /// `x-consistent-hash` (RabbitMQ's plugin): each message goes to one binding, chosen
    /// by a hash of its routing key (or a header or property), with the bindings'
    /// weights given as their binding keys.
    ConsistentHash,
}

impl ExchangeKind {
    /// Parses a type name from `exchange.declare`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            "x-consistent-hash" => Some(ExchangeKind::ConsistentHash),
            _ => None,
        }
    }

    /// Parses the type of an `exchange.declare` with its arguments: the kind that routes,
    /// and whether it is RabbitMQ's delayed-message exchange (`x-delayed-message`, routing
    /// as its `x-delayed-type` says). `Err(None)` is an unknown type, `Err(Some(text))` a
    /// delayed exchange without a usable `x-delayed-type` (RabbitMQ's 406 text).
    pub fn parse_declared(
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(Self, bool), Option<String>> {
        if name != DELAYED_TYPE {
            return Self::parse(name).map(|k| (k, false)).ok_or(None);
        }
        match arguments.get("x-delayed-type").and_then(FieldValue::as_str) {
            Some(DELAYED_TYPE) => Err(Some(
                "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'".into(),
            )),
            Some(inner) => Self::parse(inner).map(|k| (k, true)).ok_or(None),
            None => Err(Some(
                "Invalid argument, 'x-delayed-type' must be an existing exchange type".into(),
            )),
        }
    }

    /// The type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => "x-consistent-hash",
        }
    }

    /// Checks the declaration arguments this type reads; the error is RabbitMQ's text.
    pub fn check_arguments(self, arguments: &FieldTable) -> Result<(), String> {
        if self != ExchangeKind::ConsistentHash {
            return Ok(());
        }
        hash_on(arguments).map(|_| ())
    }

    /// Checks a binding this type would take: for `x-consistent-hash`, a weight; for
    /// `headers`, its `x-match` (RabbitMQ's texts).
    pub fn check_binding(self, binding: &Binding) -> Result<(), String> {
        match self {
            ExchangeKind::ConsistentHash => weight(&binding.routing_key).map(|_| ()),
            ExchangeKind::Headers => check_x_match(&binding.arguments),
            _ => Ok(()),
        }
    }
}

/// Most bindings of an `x-consistent-hash` exchange: its ring is rebuilt when they change.
pub const MAX_HASH_BINDINGS: usize = 1_000;

/// Largest binding weight of an `x-consistent-hash` exchange.
pub const MAX_HASH_WEIGHT: u64 = 1_000_000;

/// A consistent-hash binding's weight: its binding key, an integer from 1 to
/// [`MAX_HASH_WEIGHT`].
fn weight(key: &str) -> Result<u64, String> {
    match key.parse::<i64>() {
        Ok(n) if n < 1 => Err("The binding key must be greater than 0".into()),
        Ok(n) if n as u64 > MAX_HASH_WEIGHT => {
            Err(format!("The binding key must be at most {MAX_HASH_WEIGHT}"))
        }
        Ok(n) => Ok(n as u64),
        Err(_) => Err(format!(
            "The binding key must be an integer: <<\"{}\">>",
            key.chars().take(64).collect::<String>()
        )),
    }
}

/// What a consistent-hash exchange hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HashOn {
    RoutingKey,
    /// A header's value (messages without it all go to one binding, as in RabbitMQ).
    Header(String),
    /// A message property (messages without it all go to one binding, as in RabbitMQ).
    Property(HashProperty),
}

/// The properties a consistent-hash exchange may hash on: RabbitMQ's plugin takes these
/// three and refuses the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HashProperty {
    MessageId,
    CorrelationId,
    Timestamp,
}

impl HashProperty {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "message_id" => HashProperty::MessageId,
            "correlation_id" => HashProperty::CorrelationId,
            "timestamp" => HashProperty::Timestamp,
            _ => return None,
        })
    }
}

/// The `hash-header` / `hash-property` arguments of a consistent-hash exchange.
fn hash_on(arguments: &FieldTable) -> Result<HashOn, String> {
    let text = |key: &str| -> Result<Option<&str>, String> {
        match arguments.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| format!("{key} must be a string")),
        }
    };
    match (text("hash-header")?, text("hash-property")?) {
        (Some(_), Some(_)) => Err("hash-header and hash-property are mutually exclusive".into()),
        (Some(h), None) => Ok(HashOn::Header(h.to_string())),
        (None, Some(p)) => HashProperty::parse(p)
            .map(HashOn::Property)
            .ok_or_else(|| format!("Unsupported property: {p}")),
        (None, None) => Ok(HashOn::RoutingKey),
    }
}

/// A consistent-hash exchange's ring: each binding owns as many buckets as its weight,
/// in the order the bindings were made; a message's hash picks a bucket with jump
/// consistent hashing, so that adding a binding moves only the messages it takes.
#[derive(Debug, Clone)]
struct HashRing {
    on: HashOn,
    /// Each binding's destination with the end (exclusive) of its buckets.
    ends: Vec<(u64, Destination)>,
}

impl HashRing {
    fn rebuild(&mut self, bindings: &BTreeMap<u64, Arc<Binding>>) {
        self.ends.clear();
        let mut end = 0u64;
        for b in bindings.values() {
            // Bindings were checked when made; one that is not a weight owns nothing.
            let w = weight(&b.routing_key).unwrap_or(0);
            if w > 0 {
                end += w;
                self.ends.push((end, b.destination.clone()));
            }
        }
    }

    /// Adds the buckets of a binding that comes after all the others.
    fn push(&mut self, binding: &Binding) {
        let w = weight(&binding.routing_key).unwrap_or(0);
        if w > 0 {
            let end = self.ends.last().map_or(0, |(end, _)| *end) + w;
            self.ends.push((end, binding.destination.clone()));
        }
    }

    /// The destination a message goes to, if any.
    fn pick(&self, message: &mut Routing<'_>, work: &mut u64) -> Option<&Destination> {
        let total = self.ends.last()?.0;
        let hash = match &self.on {
            HashOn::RoutingKey => fnv1a(message.routing_key.as_bytes()),
            // A message without the value hashes as an empty key: all such messages go
            // to one binding.
            HashOn::Header(h) => message.header_hash(h.as_bytes(), work),
            HashOn::Property(p) => {
                fnv1a(&property_bytes(*p, message.properties).unwrap_or_default())
            }
        };
        let bucket = jump_hash(hash, total, work);
        let i = self.ends.partition_point(|(end, _)| *end <= bucket);
        self.ends.get(i).map(|(_, d)| d)
    }
}

/// A property's value as bytes, if the message has it.
fn property_bytes(p: HashProperty, m: &crate::proto::props::BasicProperties) -> Option<Vec<u8>> {
    let s = |v: &Option<ShortStr>| v.as_ref().map(|v| v.as_bytes().to_vec());
    match p {
        HashProperty::MessageId => s(&m.message_id),
        HashProperty::CorrelationId => s(&m.correlation_id),
        HashProperty::Timestamp => m.timestamp.map(|t| t.to_be_bytes().to_vec()),
    }
}

/// FNV-1a: a fixed hash, so that a key goes to the same binding in every run.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Jump consistent hash (Lamping and Veach): a bucket in `0..buckets` for `key`, moving
/// only 1/n of the keys when a bucket is added. Takes about ln(buckets) steps.
fn jump_hash(mut key: u64, buckets: u64, work: &mut u64) -> u64 {
    let (mut b, mut j) = (0u64, 0u64);
    while j < buckets {
        *work += 1;
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as u64;
    }
    b
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    /// Destinations by binding key, each with the number of bindings leading there.
    Direct(HashMap<String, HashMap<Destination, u32>>),
    /// Every destination (the keys of `Bindings::by_destination`).
    Fanout,
    Topic(TopicTrie<Destination>),
    /// Headers exchanges compare each binding's table with the message's headers.
    Headers,
    /// Consistent-hash exchanges pick one binding by the message's hash.
    Hash(HashRing),
}

/// An exchange's bindings, indexed so that adding one, removing one, and removing every
/// binding to one destination cost no more than the bindings concerned, whatever the
/// exchange holds.
#[derive(Debug, Clone, Default)]
struct Bindings {
    /// Each binding with the order number it was made under.
    ids: HashMap<Arc<Binding>, u64>,
    /// Bindings in the order they were made.
    order: BTreeMap<u64, Arc<Binding>>,
    /// The order numbers of the bindings to each destination.
    by_destination: HashMap<Destination, BTreeSet<u64>>,
    next_id: u64,
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
    /// Exchanges with bindings to this one (for cleanup on delete).
    pub bound_from: BTreeSet<String>,
    /// The alternate exchange in force: the `alternate-exchange` argument, else the
    /// policy's.
    alternate: Option<String>,
    /// The policy in force, by name.
    pub policy: Option<String>,
    /// Every policy of the vhost that matches the exchange's name, by slot.
    pub policy_matches: super::policy_matches::PolicyMatches,
    /// An `x-delayed-message` exchange: messages with an `x-delay` header wait that long
    /// before `kind` routes them.
    pub delayed: bool,
    bindings: Bindings,
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
        let alternate = arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
            .map(str::to_string);
        let index = match kind {
            ExchangeKind::Direct => Index::Direct(HashMap::default()),
            ExchangeKind::Fanout => Index::Fanout,
            ExchangeKind::Topic => Index::Topic(TopicTrie::default()),
            ExchangeKind::Headers => Index::Headers,
            ExchangeKind::ConsistentHash => Index::Hash(HashRing {
                on: hash_on(&arguments).unwrap_or(HashOn::RoutingKey),
                ends: Vec::new(),
            }),
        };
        Exchange {
            name: name.to_string(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            builtin: false,
            bound_from: BTreeSet::new(),
            alternate,
            policy: None,
            policy_matches: Default::default(),
            delayed: false,
            bindings: Bindings::default(),
            index,
        }
    }

    /// The exchange's bindings, in the order they were made.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.order.values().map(|b| &**b)
    }

    /// How many bindings the exchange has.
    pub fn binding_count(&self) -> usize {
        self.bindings.order.len()
    }

    /// Whether the exchange has a binding to `destination`.
    pub fn binds_to(&self, destination: &Destination) -> bool {
        self.bindings.by_destination.contains_key(destination)
    }

    /// The type name as declared.
    pub fn type_name(&self) -> &'static str {
        if self.delayed {
            DELAYED_TYPE
        } else {
            self.kind.as_str()
        }
    }

    /// The alternate exchange in force, if any.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.alternate.as_deref()
    }

    /// Puts a policy in force (by name, with the alternate exchange it sets): its
    /// alternate exchange applies unless the arguments name one.
    pub fn apply(&mut self, policy: Option<String>, alternate: Option<String>) {
        self.alternate = self
            .arguments
            .get("alternate-exchange")
            .and_then(FieldValue::as_str)
            .map(str::to_string)
            .or(alternate);
        self.policy = policy;
    }

    /// Adds a binding; returns false if an identical one exists.
    pub fn bind(&mut self, binding: Binding) -> bool {
        if self.bindings.ids.contains_key(&binding) {
            return false;
        }
        match &mut self.index {
            Index::Direct(map) => {
                *map.entry(super::name_key(binding.routing_key.clone()))
                    .or_default()
                    .entry(binding.destination.clone())
                    .or_insert(0) += 1;
            }
            Index::Topic(trie) => trie.insert(&binding.routing_key, binding.destination.clone()),
            Index::Fanout | Index::Headers | Index::Hash(_) => {}
        }
        let b = &mut self.bindings;
        let id = b.next_id;
        b.next_id += 1;
        b.by_destination
            .entry(binding.destination.clone())
            .or_default()
            .insert(id);
        let binding = Arc::new(binding);
        if let Index::Hash(ring) = &mut self.index {
            // A new binding comes last in the order: its buckets follow the others'.
            ring.push(&binding);
        }
        b.order.insert(id, binding.clone());
        b.ids.insert(binding, id);
        debug_assert_eq!(b.ids.len(), b.order.len());
        true
    }

    /// Removes the binding equal to `binding`; returns whether it existed.
    pub fn unbind(&mut self, binding: &Binding) -> bool {
        let Some(id) = self.bindings.ids.remove(binding) else {
            return false;
        };
        let removed = self.bindings.order.remove(&id);
        debug_assert!(removed.is_some(), "binding indexed but not ordered");
        if let Some(ids) = self.bindings.by_destination.get_mut(&binding.destination) {
            ids.remove(&id);
            if ids.is_empty() {
                self.bindings.by_destination.remove(&binding.destination);
            }
        }
        self.unindex(binding);
        true
    }

    /// Removes every binding to `destination`; returns them, in the order they were made.
    pub fn unbind_destination(&mut self, destination: &Destination) -> Vec<Binding> {
        let Some(ids) = self.bindings.by_destination.remove(destination) else {
            return Vec::new();
        };
        let mut gone = Vec::with_capacity(ids.len());
        // A consistent-hash ring is made again once, not once per binding removed.
        let hash = matches!(self.index, Index::Hash(_));
        for id in ids {
            let Some(binding) = self.bindings.order.remove(&id) else {
                debug_assert!(false, "binding ordered but not indexed");
                continue;
            };
            self.bindings.ids.remove(&binding);
            if !hash {
                self.unindex(&binding);
            }
            gone.push(Arc::unwrap_or_clone(binding));
        }
        if let Index::Hash(ring) = &mut self.index {
            ring.rebuild(&self.bindings.order);
        }
        gone
    }

    /// Checks that the binding indexes agree with each other.
    pub fn check_invariants(&self) {
        let b = &self.bindings;
        assert_eq!(
            b.ids.len(),
            b.order.len(),
            "exchange {} binding index",
            self.name
        );
        for (binding, id) in &b.ids {
            assert!(
                b.order.get(id).is_some_and(|o| o == binding),
                "exchange {} binding order",
                self.name
            );
            assert!(
                b.by_destination
                    .get(&binding.destination)
                    .is_some_and(|ids| ids.contains(id)),
                "exchange {} binding destinations",
                self.name
            );
        }
        if let Index::Hash(ring) = &self.index {
            let mut fresh = HashRing {
                on: ring.on.clone(),
                ends: Vec::new(),
            };
            fresh.rebuild(&b.order);
            assert_eq!(fresh.ends, ring.ends, "exchange {} hash ring", self.name);
        }
        let listed: usize = b.by_destination.values().map(BTreeSet::len).sum();
        assert_eq!(
            listed,
            b.order.len(),
            "exchange {} destination index",
            self.name
        );
        assert!(b.order.keys().all(|id| *id < b.next_id));
    }

    fn unindex(&mut self, binding: &Binding) {
        match &mut self.index {
            Index::Direct(map) => {
                if let Some(dests) = map.get_mut(&binding.routing_key) {
                    if let Some(n) = dests.get_mut(&binding.destination) {
                        *n -= 1;
                        if *n == 0 {
                            dests.remove(&binding.destination);
                        }
                    }
                    if dests.is_empty() {
                        map.remove(&binding.routing_key);
                    }
                }
            }
            Index::Topic(trie) => {
                trie.remove(&binding.routing_key, &binding.destination);
            }
            Index::Hash(ring) => ring.rebuild(&self.bindings.order),
            Index::Fanout | Index::Headers => {}
        }
    }

    /// Calls `found` for each destination a message with this routing key and headers
    /// reaches through this exchange's own bindings (not following other exchanges); a
    /// destination may be reported more than once. Adds the routing steps taken (index
    /// nodes visited, bindings and header entries compared) to `work`. The cost is linear
    /// in what is visited: trie nodes times words for topic exchanges, binding entries
    /// for headers exchanges; the message's headers are indexed, and a header's value
    /// hashed, once per routing ([`Routing`]), however many exchanges read them.
    pub fn route<'a>(
        &'a self,
        message: &mut Routing<'_>,
        work: &mut u64,
        found: &mut impl FnMut(&'a Destination),
    ) {
        *work += 1;
        let routing_key = message.routing_key;
        match &self.index {
            Index::Hash(ring) => {
                if let Some(d) = ring.pick(message, work) {
                    found(d);
                }
            }
            Index::Direct(map) => {
                if let Some(dests) = map.get(super::name_lookup(routing_key)) {
                    *work += dests.len() as u64;
                    dests.keys().for_each(found);
                }
            }
            Index::Fanout => {
                *work += self.bindings.by_destination.len() as u64;
                self.bindings.by_destination.keys().for_each(found);
            }
            Index::Topic(trie) => trie.matches(routing_key, work, found),
            Index::Headers => {
                let headers = message.headers(work);
                for b in self.bindings.order.values() {
                    *work += 1 + b.arguments.len() as u64;
                    if headers.matches(&b.arguments) {
                        found(&b.destination);
                    }
                }
            }
        }
    }
}

/// What routing reads of one message, shared by every exchange it visits: its headers are
/// indexed, and a header's value hashed for a consistent-hash exchange, once per routing
/// however many exchanges look at them.
pub struct Routing<'m> {
    /// The routing key.
    pub routing_key: &'m str,
    /// The message's properties.
    pub properties: &'m crate::proto::props::BasicProperties,
    headers: Option<HeaderIndex<'m>>,
    /// Header values hashed so far, by the header's key as the message holds it.
    hashed: HashMap<&'m [u8], u64>,
}

impl<'m> Routing<'m> {
    /// A routing of a message with this routing key and these properties.
    pub fn new(routing_key: &'m str, properties: &'m crate::proto::props::BasicProperties) -> Self {
        Routing {
            routing_key,
            properties,
            headers: None,
            hashed: HashMap::default(),
        }
    }

    /// The headers, indexed by the first visit that needs them.
    fn headers(&mut self, work: &mut u64) -> &HeaderIndex<'m> {
        self.headers.get_or_insert_with(|| {
            let index = HeaderIndex::new(self.properties.headers.as_ref());
            *work += index.len() as u64;
            index
        })
    }

    /// The hash of header `key`'s value as encoded (of nothing, if the message lacks it).
    fn header_hash(&mut self, key: &[u8], work: &mut u64) -> u64 {
        let Some((found, value)) = self.headers(work).get_entry(key) else {
            return fnv1a(&[]);
        };
        *self.hashed.entry(found).or_insert_with(|| {
            let mut out = bytes::BytesMut::new();
            value.encode(&mut out);
            *work += out.len() as u64;
            fnv1a(&out)
        })
    }
}

/// A message's headers, looked up by key: the first entry of each key, as
/// [`FieldTable::get`] finds it. Small tables are scanned; larger ones are hashed once
/// per routing, so that matching a binding costs one lookup per binding entry.
enum HeaderIndex<'a> {
    Scan(Option<&'a FieldTable>),
    Hashed(HashMap<&'a [u8], &'a FieldValue>),
}

/// Headers tables up to this many entries are scanned rather than hashed.
const HEADER_SCAN_MAX: usize = 8;

impl<'a> HeaderIndex<'a> {
    fn new(headers: Option<&'a FieldTable>) -> Self {
        match headers {
            Some(h) if h.len() > HEADER_SCAN_MAX => {
                let mut map = HashMap::default();
                for (k, v) in h.iter() {
                    map.entry(k.as_bytes()).or_insert(v);
                }
                HeaderIndex::Hashed(map)
            }
            other => HeaderIndex::Scan(other),
        }
    }

    fn len(&self) -> usize {
        match self {
            HeaderIndex::Scan(h) => h.map_or(0, FieldTable::len),
            HeaderIndex::Hashed(map) => map.len(),
        }
    }

    /// Keys are compared as bytes: a short string need not be UTF-8.
    fn get(&self, key: &[u8]) -> Option<&'a FieldValue> {
        self.get_entry(key).map(|(_, v)| v)
    }

    /// The entry of `key`, with the key as the table holds it.
    fn get_entry(&self, key: &[u8]) -> Option<(&'a [u8], &'a FieldValue)> {
        match self {
            HeaderIndex::Scan(h) => h.and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.as_bytes() == key)
                    .map(|(k, v)| (k.as_bytes(), v))
            }),
            HeaderIndex::Hashed(map) => map.get_key_value(key).map(|(k, v)| (*k, *v)),
        }
    }

    fn matches(&self, binding_args: &FieldTable) -> bool {
        let (all, with_x) = match_mode(binding_args);
        let mut any_matched = false;
        for (key, pattern) in binding_args.iter() {
            if *key == "x-match" || (!with_x && key.as_bytes().starts_with(b"x-")) {
                continue;
            }
            let matched = self
                .get(key.as_bytes())
                .is_some_and(|value| values_match(pattern, value));
            if all && !matched {
                return false;
            }
            any_matched |= matched;
        }
        all || any_matched
    }
}

/// A headers binding's `x-match`, if it has one, must be one of the four modes, as a
/// string.
fn check_x_match(arguments: &FieldTable) -> Result<(), String> {
    match arguments.get("x-match") {
        None => Ok(()),
        Some(FieldValue::LongStr(mode))
            if matches!(&mode[..], b"all" | b"any" | b"all-with-x" | b"any-with-x") =>
        {
            Ok(())
        }
        Some(FieldValue::LongStr(other)) => Err(format!(
            "Invalid x-match field value <<\"{}\">>; expected all, any, all-with-x, or any-with-x",
            String::from_utf8_lossy(&other[..other.len().min(64)])
        )),
        Some(other) => {
            let value = other
                .as_i64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("{other:?}").chars().take(64).collect());
            Err(format!(
                "Invalid x-match field type {} (value {value}); expected longstr",
                crate::proto::table::type_name(other)
            ))
        }
    }
}

/// The `x-match` mode of a headers binding: whether all entries must match, and whether
/// `x-` entries take part.
fn match_mode(binding_args: &FieldTable) -> (bool, bool) {
    let mode = binding_args
        .get("x-match")
        .and_then(FieldValue::as_str)
        .unwrap_or("all");
    match mode {
        "any" => (false, false),
        "any-with-x" => (false, true),
        "all-with-x" => (true, true),
        _ => (true, false),
    }
}

/// Headers-exchange matching, as RabbitMQ does it: `x-match` is `all` (default), `any`,
/// `all-with-x` or `any-with-x`; binding keys starting with `x-` are ignored unless the
/// mode ends in `-with-x`; values must be of the same type class and equal, and a void
/// pattern value matches any header of that name (its presence).
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    HeaderIndex::new(headers).matches(binding_args)
}

fn values_match(pattern: &FieldValue, value: &FieldValue) -> bool {
    // RabbitMQ reads a pattern with no value as the header's presence.
    if matches!(pattern, FieldValue::Void) {
        return true;
    }
    match (pattern.as_i64(), value.as_i64()) {
        (Some(a), Some(b)) => return a == b,
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (pattern, value) {
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
    fn a_void_pattern_matches_the_headers_presence() {
        let binding = table(&[("x-match", s("all")), ("a", FieldValue::Void)]);
        for value in [FieldValue::I32(1), s("1"), FieldValue::Void] {
            let headers = table(&[("a", value.clone())]);
            assert!(headers_match(&binding, Some(&headers)), "{value:?}");
        }
        assert!(!headers_match(&binding, Some(&table(&[("b", s("1"))]))));
        assert!(!headers_match(&binding, None));
    }

    #[test]
    fn x_match_must_be_one_of_the_four_modes() {
        let bind = |args: FieldTable| Binding {
            destination: Destination::Exchange("e".into()),
            routing_key: String::new(),
            arguments: args,
        };
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            let b = bind(table(&[("x-match", s(mode))]));
            assert_eq!(ExchangeKind::Headers.check_binding(&b), Ok(()), "{mode}");
        }
        assert_eq!(
            ExchangeKind::Headers.check_binding(&bind(FieldTable::new())),
            Ok(())
        );
        assert_eq!(
            ExchangeKind::Headers.check_binding(&bind(table(&[("x-match", s("bogus"))]))),
            Err("Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x".into())
        );
        for bad in ["", "ALL"] {
            assert!(
                ExchangeKind::Headers
                    .check_binding(&bind(table(&[("x-match", s(bad))])))
                    .is_err()
            );
        }
        assert_eq!(
            ExchangeKind::Headers.check_binding(&bind(table(&[("x-match", FieldValue::I32(5))]))),
            Err("Invalid x-match field type signedint (value 5); expected longstr".into())
        );
        // Other exchange types leave binding arguments alone.
        assert_eq!(
            ExchangeKind::Direct.check_binding(&bind(table(&[("x-match", s("bogus"))]))),
            Ok(())
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

    fn direct_exchange() -> Exchange {
        let args = FieldTable::default();
        Exchange::new("x", ExchangeKind::Direct, false, false, false, args)
    }

    /// A binding of queue 1 by `key` (an empty key is a `String` with no allocation).
    fn queue_binding(key: &str) -> Binding {
        Binding {
            destination: Destination::Queue(1),
            routing_key: key.to_string(),
            arguments: FieldTable::default(),
        }
    }

    #[test]
    fn direct_index_follows_bindings() {
        let mut x = direct_exchange();
        let b = queue_binding("k");
        assert!(x.bind(b.clone()));
        assert!(!x.bind(b.clone()));
        let mut hits = Vec::new();
        let props = Default::default();
        x.route(&mut Routing::new("k", &props), &mut 0, &mut |d| {
            hits.push(d.clone())
        });
        assert_eq!(hits, [Destination::Queue(1)]);
        assert!(x.unbind(&b));
        hits.clear();
        x.route(&mut Routing::new("k", &props), &mut 0, &mut |d| {
            hits.push(d.clone())
        });
        assert!(hits.is_empty());
    }

    #[test]
    fn an_empty_binding_key_routes_and_is_stored_with_an_allocation() {
        let mut x = direct_exchange();
        let b = queue_binding("");
        assert!(x.bind(b.clone()));
        let Index::Direct(map) = &x.index else {
            panic!("a direct exchange has a direct index")
        };
        let key = map.keys().next().expect("the binding's key");
        assert!(key.is_empty() && key.capacity() > 0, "{key:?}");
        let mut hits = Vec::new();
        let props = Default::default();
        // As a decoded routing key may be: empty, with no allocation.
        let routing_key = String::new();
        x.route(&mut Routing::new(&routing_key, &props), &mut 0, &mut |d| {
            hits.push(d.clone())
        });
        assert_eq!(hits, [Destination::Queue(1)]);
        assert!(x.unbind(&b));
        let Index::Direct(map) = &x.index else {
            unreachable!()
        };
        assert!(map.is_empty(), "unbinding the empty key removes it");
    }
}
