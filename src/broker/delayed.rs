//! Delayed messages: the `x-delayed-message` exchange, RabbitMQ's plugin's interface. A
//! message published to one with an `x-delay` header (a positive integer of milliseconds
//! up to 2^32 - 1, the plugin's bounds) waits that long, then the exchange routes it as
//! its `x-delayed-type` says; without one it is routed at once.
//!
//! Unlike the plugin, a persistent message to a durable delayed exchange is stored before
//! it is confirmed, and it is released in the same store batch that puts it in its queues:
//! a crash at any point loses no confirmed delayed message and releases none twice. What
//! waits is bounded in count and bytes; past the bound a publish is refused (a confirming
//! publisher gets `basic.nack`). Deleting the exchange or its vhost drops what waits in it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::proto::command::Message;
use crate::proto::table::FieldValue;
use crate::store::{DelayedRecord, StoreOp};

use super::Broker;
use super::channel::Confirm;
use super::death::Allowance;

pub use super::exchange::DELAYED_TYPE;

/// The longest delay honoured, in milliseconds (the plugin's: Erlang's longest timer).
pub const MAX_DELAY_MS: i64 = 4_294_967_295;

/// The most messages waiting in all delayed exchanges of a broker.
pub const MAX_DELAYED_MESSAGES: usize = 1_000_000;

/// The most bytes (as queues weigh messages) waiting in all delayed exchanges.
pub const MAX_DELAYED_BYTES: u64 = 256 << 20;

/// Messages released in one call of [`Broker::handle_timeout`] at most.
const RELEASES_PER_ROUND: usize = 4096;

/// The delay a message asks for, if it asks for one the plugin would honour.
pub fn delay_of(message: &Message) -> Option<u64> {
    let headers = message.properties.headers.as_ref()?;
    let delay = match headers.get("x-delay")? {
        v @ (FieldValue::I8(_)
        | FieldValue::U8(_)
        | FieldValue::I16(_)
        | FieldValue::U16(_)
        | FieldValue::I32(_)
        | FieldValue::U32(_)
        | FieldValue::I64(_)) => v.as_i64()?,
        _ => return None,
    };
    (delay > 0 && delay <= MAX_DELAY_MS).then_some(delay as u64)
}

/// A message waiting in a delayed exchange.
#[derive(Debug, Clone)]
pub struct Held {
    /// Virtual host.
    pub vhost: String,
    /// The exchange.
    pub exchange: String,
    /// The message.
    pub message: Arc<Message>,
    /// Whether the store holds it.
    pub stored: bool,
}

/// Every message waiting in a delayed exchange, by due time then id, and the keys of
/// those in each exchange (so that deleting one exchange walks its own messages only).
#[derive(Debug, Default)]
pub struct DelayedMessages {
    by_due: BTreeMap<(u64, u64), Held>,
    next_id: u64,
    bytes: u64,
    /// The keys of `by_due` waiting in each exchange, by (vhost, exchange).
    by_exchange: BTreeMap<(String, String), BTreeSet<(u64, u64)>>,
}

impl DelayedMessages {
    /// How many wait.
    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }

    /// How many wait in one exchange.
    pub fn count_in(&self, vhost: &str, exchange: &str) -> u64 {
        self.by_exchange
            .get(&(vhost.to_string(), exchange.to_string()))
            .map_or(0, |keys| keys.len() as u64)
    }

    /// Files `key` (a message held as `held`) under its exchange, or takes it out.
    fn index(&mut self, key: (u64, u64), held: &Held, add: bool) {
        let exchange = (held.vhost.clone(), held.exchange.clone());
        if add {
            self.by_exchange.entry(exchange).or_default().insert(key);
        } else if let Some(keys) = self.by_exchange.get_mut(&exchange) {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_exchange.remove(&exchange);
            }
        }
    }

    /// When the next one is due.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.by_due.keys().next().map(|(due, _)| *due)
    }

    /// Whether one more message of this weight fits.
    fn fits(&self, message: &Message) -> bool {
        self.by_due.len() < MAX_DELAYED_MESSAGES
            && self.bytes + crate::store::memory_cost(message) <= MAX_DELAYED_BYTES
    }

    /// Holds a message until `due_ms` under a new id (or the stored id it had).
    fn hold(&mut self, due_ms: u64, id: Option<u64>, held: Held) -> u64 {
        let id = id.unwrap_or(self.next_id);
        self.next_id = self.next_id.max(id + 1);
        self.bytes += crate::store::memory_cost(&held.message);
        self.index((due_ms, id), &held, true);
        let old = self.by_due.insert((due_ms, id), held);
        assert!(old.is_none(), "delayed message {id} held twice");
        id
    }

    /// Takes the first message due by `now_ms`.
    fn take_due(&mut self, now_ms: u64) -> Option<(u64, Held)> {
        let (&(due, id), _) = self.by_due.first_key_value()?;
        if due > now_ms {
            return None;
        }
        let held = self.by_due.remove(&(due, id))?;
        self.bytes -= crate::store::memory_cost(&held.message);
        self.index((due, id), &held, false);
        Some((id, held))
    }

    /// Drops what waits in one exchange of `vhost`, or in all of them (`exchange` None);
    /// returns the ids of those stored. Walks only the messages it drops.
    fn drop_in(&mut self, vhost: &str, exchange: Option<&str>) -> Vec<u64> {
        let exchanges: Vec<(String, String)> = match exchange {
            Some(x) => vec![(vhost.to_string(), x.to_string())],
            None => self
                .by_exchange
                .range((vhost.to_string(), String::new())..)
                .take_while(|((v, _), _)| v == vhost)
                .map(|(k, _)| k.clone())
                .collect(),
        };
        let mut stored = Vec::new();
        for exchange in exchanges {
            let Some(keys) = self.by_exchange.remove(&exchange) else {
                continue;
            };
            for k in keys {
                if let Some(h) = self.by_due.remove(&k) {
                    self.bytes -= crate::store::memory_cost(&h.message);
                    if h.stored {
                        stored.push(k.1);
                    }
                }
            }
        }
        stored
    }

    /// The byte count matches what is held, and ids are below the next one.
    pub fn check_invariants(&self) {
        let bytes: u64 = self
            .by_due
            .values()
            .map(|h| crate::store::memory_cost(&h.message))
            .sum();
        assert_eq!(bytes, self.bytes, "delayed bytes");
        assert_eq!(
            self.by_exchange.values().map(BTreeSet::len).sum::<usize>(),
            self.by_due.len(),
            "delayed messages filed by exchange"
        );
        for ((vhost, exchange), keys) in &self.by_exchange {
            assert!(!keys.is_empty(), "an exchange filed with nothing waiting");
            for k in keys {
                let h = self.by_due.get(k).expect("a filed delayed message waits");
                assert_eq!(
                    (&h.vhost, &h.exchange),
                    (vhost, exchange),
                    "filed where it waits"
                );
            }
        }
        assert!(self.by_due.len() <= MAX_DELAYED_MESSAGES);
        assert!(self.by_due.keys().all(|(_, id)| *id < self.next_id));
    }
}

impl Broker {
    /// Whether a publish to `exchange` must wait first: the exchange is a delayed one and
    /// the message asks for a delay.
    pub(super) fn delay_for(&self, vhost: &str, exchange: &str, message: &Message) -> Option<u64> {
        // Every publish comes here: the header (usually absent) is checked before the
        // exchange is looked up.
        let delay = delay_of(message)?;
        let delayed = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .is_some_and(|x| x.delayed);
        delayed.then_some(delay)
    }

    /// Holds a message published to its delayed exchange for `delay_ms`; returns what its
    /// confirm says.
    pub(super) fn hold_delayed(
        &mut self,
        vhost: &str,
        message: Arc<Message>,
        delay_ms: u64,
    ) -> Confirm {
        let exchange = message.exchange.as_str();
        let durable = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .is_some_and(|x| x.durable);
        let store = durable && message.is_persistent();
        if !self.topology.delayed.fits(&message) || (store && self.node.store_fault.is_some()) {
            return Confirm::Nack;
        }
        let due_ms = self.now_ms.saturating_add(delay_ms);
        let held = Held {
            vhost: vhost.to_string(),
            exchange: exchange.to_string(),
            message: message.clone(),
            stored: store,
        };
        let id = self.topology.delayed.hold(due_ms, None, held);
        if store {
            self.round.journal.push(StoreOp::PutDelayed(DelayedRecord {
                id,
                vhost: vhost.to_string(),
                exchange: exchange.to_string(),
                due_ms,
                message,
            }));
            Confirm::Waiting
        } else {
            Confirm::Ack
        }
    }

    /// When the next delayed message is due; while the store fails, stored ones wait
    /// (their release must be written) and are tried again a second later.
    pub(super) fn next_delayed_ms(&self) -> Option<u64> {
        let due = self.topology.delayed.next_due_ms()?;
        Some(if self.node.store_fault.is_some() {
            due.max(self.now_ms + 1000)
        } else {
            due
        })
    }

    /// Routes the delayed messages that are due (a bounded number per round): each goes
    /// through its exchange as a publish would, and a stored one leaves the store in the
    /// same batch that puts it in its queues.
    pub(super) fn release_delayed(&mut self) {
        if self.node.store_fault.is_some() {
            return;
        }
        for _ in 0..RELEASES_PER_ROUND {
            let Some((id, held)) = self.topology.delayed.take_due(self.now_ms) else {
                break;
            };
            self.counters.work += 1;
            let queues = self.route(&held.vhost, &held.exchange, &held.message);
            if queues.is_empty() {
                self.counters.totals.unroutable += 1;
            } else {
                let _ = self.enqueue_routed(queues, held.message, Allowance::FRESH);
            }
            if held.stored {
                self.round.journal.push(StoreOp::DeleteDelayed { id });
            }
        }
    }

    /// Drops what waits in a deleted exchange (or in every exchange of a deleted vhost,
    /// `exchange` None; the store drops those with the vhost).
    pub(super) fn drop_delayed(&mut self, vhost: &str, exchange: Option<&str>) {
        // Deleting a delayed exchange walks only what it holds: an exchange made, given a
        // message and deleted in a loop costs that message, whatever others hold.
        let stored = self.topology.delayed.drop_in(vhost, exchange);
        if exchange.is_some() {
            for id in stored {
                self.round.journal.push(StoreOp::DeleteDelayed { id });
            }
        }
    }

    /// Puts back what the store held, due when it was due.
    pub(super) fn restore_delayed(&mut self, delayed: Vec<DelayedRecord>) {
        for d in delayed {
            let held = Held {
                vhost: d.vhost,
                exchange: d.exchange,
                message: d.message,
                stored: true,
            };
            self.topology.delayed.hold(d.due_ms, Some(d.id), held);
        }
    }
}
