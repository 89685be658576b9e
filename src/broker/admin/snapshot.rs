//! Snapshots of the broker's state for listings: plain data, copied out of the core, with
//! the fields RabbitMQ's `list_*` commands and management API show.

use crate::proto::command::ConnId;
use crate::proto::table::{FieldTable, FieldValue};

use super::super::Broker;
use super::super::channel::Mode;
use super::super::exchange::Destination;
use super::super::stats::MessageCounters;

/// A vhost with its message totals.
#[derive(Debug, Clone, PartialEq)]
pub struct VhostInfo {
    /// Name.
    pub name: String,
    /// Ready messages in its queues.
    pub messages_ready: u64,
    /// Unacknowledged messages of its queues.
    pub messages_unacknowledged: u64,
    /// Message counters summed over its queues.
    pub stats: MessageCounters,
}

/// A queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    /// Vhost.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The connection owning an exclusive queue.
    pub owner: Option<ConnId>,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// Ready messages.
    pub messages_ready: u64,
    /// Delivered, not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Bytes of ready message bodies.
    pub message_bytes_ready: u64,
    /// Bytes of the bodies delivered and not yet acknowledged.
    pub message_bytes_unacknowledged: u64,
    /// Consumers.
    pub consumers: u64,
    /// The tag of an exclusive consumer.
    pub exclusive_consumer_tag: Option<String>,
    /// When it was last used, if idle (no consumer), in broker time.
    pub idle_since_ms: Option<u64>,
    /// The policy in force.
    pub policy: Option<String>,
    /// The operator policy in force.
    pub operator_policy: Option<String>,
    /// Their merged definition (`effective_policy_definition`).
    pub effective_policy_definition: FieldTable,
    /// Message counters.
    pub stats: MessageCounters,
}

/// An exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeInfo {
    /// Vhost.
    pub vhost: String,
    /// Name ("" for the default exchange).
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not published to directly.
    pub internal: bool,
    /// Declaration arguments.
    pub arguments: FieldTable,
    /// The policy in force.
    pub policy: Option<String>,
    /// Messages waiting in a delayed-message exchange (none for other types).
    pub messages_delayed: Option<u64>,
}

/// A binding between an exchange and a queue or another exchange, as listed and as
/// asked for by bind/unbind.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingInfo {
    /// Vhost.
    pub vhost: String,
    /// Source exchange ("" for the default exchange's implicit bindings).
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// True when the destination is a queue.
    pub to_queue: bool,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// A client connection.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionInfo {
    /// Broker-wide id.
    pub id: ConnId,
    /// Peer address ("ip:port").
    pub peer: String,
    /// Authenticated user, once logged in.
    pub user: Option<String>,
    /// Vhost, once opened.
    pub vhost: Option<String>,
    /// Open channels.
    pub channels: u64,
    /// What the client said about itself.
    pub client_properties: FieldTable,
    /// When it connected, in broker time.
    pub connected_at_ms: u64,
}

/// A channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelInfo {
    /// The connection.
    pub conn: ConnId,
    /// Peer address of the connection.
    pub peer: String,
    /// Channel number.
    pub number: u16,
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Per-consumer prefetch (`basic.qos` global=false).
    pub prefetch_count: u16,
    /// Per-channel prefetch (`basic.qos` global=true).
    pub global_prefetch_count: u16,
    /// Deliveries awaiting acks.
    pub messages_unacknowledged: u64,
    /// Consumers.
    pub consumer_count: u64,
    /// Publisher confirms on.
    pub confirm: bool,
    /// In a transaction.
    pub transactional: bool,
    /// Paused by `channel.flow`.
    pub flow_blocked: bool,
    /// Messages published, delivered, got, acked and confirmed on the channel.
    pub stats: MessageCounters,
}

/// A consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerInfo {
    /// The connection.
    pub conn: ConnId,
    /// Peer address of the connection.
    pub peer: String,
    /// Channel number.
    pub channel: u16,
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// The queue consumed from.
    pub queue: String,
    /// Consumer tag.
    pub tag: String,
    /// Deliveries must be acknowledged.
    pub ack_required: bool,
    /// Prefetch limit (0 = none).
    pub prefetch_count: u16,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// `x-priority`.
    pub priority: i64,
}

/// Totals for the whole broker.
#[derive(Debug, Clone, PartialEq)]
pub struct Overview {
    /// Message counters.
    pub stats: MessageCounters,
    /// Ready messages in all queues.
    pub messages_ready: u64,
    /// Unacknowledged messages of all queues.
    pub messages_unacknowledged: u64,
    /// Client connections.
    pub connections: u64,
    /// Channels.
    pub channels: u64,
    /// Consumers.
    pub consumers: u64,
    /// Queues.
    pub queues: u64,
    /// Exchanges.
    pub exchanges: u64,
    /// Vhosts.
    pub vhosts: u64,
    /// Users.
    pub users: u64,
    /// Whether the AMQP side runs.
    pub app_running: bool,
    /// Resource alarms in force ("memory", "disk").
    pub alarms: Vec<String>,
    /// The last reading of memory and disk.
    pub resources: crate::broker::ResourceReading,
    /// The limits the alarms compare it with.
    pub limits: crate::broker::AlarmLimits,
}

fn sum(a: &mut MessageCounters, b: &MessageCounters) {
    a.publish += b.publish;
    a.deliver += b.deliver;
    a.deliver_no_ack += b.deliver_no_ack;
    a.get += b.get;
    a.get_no_ack += b.get_no_ack;
    a.redeliver += b.redeliver;
    a.ack += b.ack;
}

fn in_vhost(filter: Option<&str>, vhost: &str) -> bool {
    filter.is_none_or(|f| f == vhost)
}

impl Broker {
    pub(super) fn list_vhosts(&self) -> Vec<VhostInfo> {
        let mut out: Vec<VhostInfo> = self
            .topology
            .vhosts
            .keys()
            .map(|name| VhostInfo {
                name: name.clone(),
                messages_ready: 0,
                messages_unacknowledged: 0,
                stats: MessageCounters::default(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        for q in self.topology.queues.values() {
            if let Ok(i) = out.binary_search_by(|v| v.name.as_str().cmp(&q.decl.vhost)) {
                out[i].messages_ready += q.ready_count();
                out[i].messages_unacknowledged += q.messages.unacked;
                sum(&mut out[i].stats, &q.stats);
            }
        }
        out
    }

    /// The queues of `vhost` (of every vhost when `None`), found through the vhost's own
    /// index: a listing of one vhost costs that vhost's queues, not the broker's.
    fn queues_of(&self, vhost: Option<&str>) -> Vec<&crate::broker::Queue> {
        match vhost {
            None => self.topology.queues.values().collect(),
            Some(name) => self.topology.vhosts.get(name).map_or_else(Vec::new, |v| {
                v.queues
                    .values()
                    .filter_map(|id| self.topology.queues.get(id))
                    .collect()
            }),
        }
    }

    pub(super) fn list_queues(&self, vhost: Option<&str>) -> Vec<QueueInfo> {
        let mut out: Vec<QueueInfo> = self
            .queues_of(vhost)
            .into_iter()
            .map(|q| QueueInfo {
                vhost: q.decl.vhost.clone(),
                name: q.decl.name.clone(),
                durable: q.decl.durable,
                auto_delete: q.decl.auto_delete,
                owner: q.decl.exclusive_owner,
                arguments: q.decl.arguments.clone(),
                messages_ready: q.ready_count(),
                messages_unacknowledged: q.messages.unacked,
                message_bytes_ready: q.messages.ready_bytes(),
                message_bytes_unacknowledged: q.messages.unacked_bytes,
                consumers: q.consumers.len() as u64,
                exclusive_consumer_tag: q.consumers.exclusive_holder().map(|c| c.tag.to_string()),
                idle_since_ms: q.consumers.is_empty().then_some(q.expiry.last_used_ms),
                policy: q.decl.policy.policy.clone(),
                operator_policy: q.decl.policy.operator_policy.clone(),
                effective_policy_definition: q.decl.policy.definition.clone(),
                stats: q.stats,
            })
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        out
    }

    pub(super) fn list_exchanges(&self, vhost: Option<&str>) -> Vec<ExchangeInfo> {
        let mut out: Vec<ExchangeInfo> = self
            .topology
            .vhosts
            .values()
            .filter(|v| in_vhost(vhost, &v.name))
            .flat_map(|v| {
                v.exchanges.values().map(|x| ExchangeInfo {
                    vhost: v.name.clone(),
                    name: x.name.clone(),
                    kind: x.type_name().to_string(),
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments: x.arguments.clone(),
                    policy: x.policy.clone(),
                    messages_delayed: x
                        .delayed
                        .then(|| self.topology.delayed.count_in(&v.name, &x.name)),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        out
    }

    pub(super) fn list_bindings(&self, vhost: Option<&str>) -> Vec<BindingInfo> {
        let mut out = Vec::new();
        let mut vhosts: Vec<_> = self
            .topology
            .vhosts
            .values()
            .filter(|v| in_vhost(vhost, &v.name))
            .collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        for v in vhosts {
            // Every queue is bound to the default exchange under its own name.
            let mut names: Vec<&String> = v.queues.keys().collect();
            names.sort();
            for name in names {
                out.push(BindingInfo {
                    vhost: v.name.clone(),
                    source: String::new(),
                    destination: name.clone(),
                    to_queue: true,
                    routing_key: name.clone(),
                    arguments: FieldTable::default(),
                });
            }
            let mut exchanges: Vec<_> = v.exchanges.values().collect();
            exchanges.sort_by(|a, b| a.name.cmp(&b.name));
            for x in exchanges {
                for b in x.bindings() {
                    let (destination, to_queue) = match &b.destination {
                        Destination::Queue(id) => match self.topology.queues.get(id) {
                            Some(q) => (q.decl.name.clone(), true),
                            None => continue,
                        },
                        Destination::Exchange(name) => (name.clone(), false),
                    };
                    out.push(BindingInfo {
                        vhost: v.name.clone(),
                        source: x.name.clone(),
                        destination,
                        to_queue,
                        routing_key: b.routing_key.clone(),
                        arguments: b.arguments.clone(),
                    });
                }
            }
        }
        out
    }

    pub(super) fn list_connections(&self) -> Vec<ConnectionInfo> {
        let mut out: Vec<ConnectionInfo> = self
            .sessions
            .conns
            .iter()
            .filter(|(_, c)| c.user.is_some())
            .map(|(id, c)| ConnectionInfo {
                id: *id,
                peer: c.info.peer.clone(),
                user: c.user.as_deref().map(str::to_string),
                vhost: c.vhost.as_deref().map(str::to_string),
                channels: c.channels.len() as u64,
                client_properties: c.client_properties.clone(),
                connected_at_ms: c.connected_at_ms,
            })
            .collect();
        out.sort_by_key(|c| c.id);
        out
    }

    pub(super) fn list_channels(&self) -> Vec<ChannelInfo> {
        let mut out = Vec::new();
        for (id, c) in &self.sessions.conns {
            let (Some(user), Some(vhost)) = (&c.user, &c.vhost) else {
                continue;
            };
            for ch in c.channels.values() {
                out.push(ChannelInfo {
                    conn: *id,
                    peer: c.info.peer.clone(),
                    number: ch.number,
                    user: user.to_string(),
                    vhost: vhost.to_string(),
                    prefetch_count: ch.consumer_prefetch,
                    global_prefetch_count: ch.channel_prefetch,
                    messages_unacknowledged: ch.unacked.len() as u64,
                    consumer_count: ch.consumers.len() as u64,
                    confirm: matches!(ch.mode, Mode::Confirm { .. }),
                    transactional: matches!(ch.mode, Mode::Tx { .. }),
                    flow_blocked: !ch.flow_active,
                    stats: ch.stats,
                });
            }
        }
        out.sort_by_key(|c| (c.conn, c.number));
        out
    }

    pub(super) fn list_consumers(&self, vhost: Option<&str>) -> Vec<ConsumerInfo> {
        let mut out = Vec::new();
        for q in self.queues_of(vhost) {
            for r in &q.consumers {
                let Some(c) = self.sessions.conns.get(&r.conn) else {
                    continue;
                };
                let Some(consumer) = c
                    .channels
                    .get(&r.channel)
                    .and_then(|ch| ch.consumers.get(&r.tag))
                else {
                    continue;
                };
                out.push(ConsumerInfo {
                    conn: r.conn,
                    peer: c.info.peer.clone(),
                    channel: r.channel,
                    user: c.user.as_deref().unwrap_or_default().to_string(),
                    vhost: q.decl.vhost.clone(),
                    queue: q.decl.name.clone(),
                    tag: r.tag.to_string(),
                    ack_required: !consumer.no_ack,
                    prefetch_count: consumer.prefetch,
                    exclusive: q.consumers.exclusive(),
                    priority: r.priority,
                });
            }
        }
        out.sort_by(|a, b| (&a.vhost, &a.queue, &a.tag).cmp(&(&b.vhost, &b.queue, &b.tag)));
        out
    }

    pub(super) fn overview(&self) -> Overview {
        let mut o = Overview {
            stats: self.counters.totals,
            messages_ready: 0,
            messages_unacknowledged: 0,
            connections: self
                .sessions
                .conns
                .values()
                .filter(|c| c.user.is_some())
                .count() as u64,
            channels: 0,
            consumers: 0,
            queues: self.topology.queues.len() as u64,
            exchanges: self
                .topology
                .vhosts
                .values()
                .map(|v| v.exchanges.len() as u64)
                .sum(),
            vhosts: self.topology.vhosts.len() as u64,
            users: self.accounts.users.iter().count() as u64,
            app_running: self.node.app_running,
            alarms: self.alarms().map(|a| a.as_str().to_string()).collect(),
            resources: self.node.last_reading,
            limits: self.config.alarms,
        };
        for q in self.topology.queues.values() {
            o.messages_ready += q.ready_count();
            o.messages_unacknowledged += q.messages.unacked;
            o.consumers += q.consumers.len() as u64;
        }
        o.channels = self
            .sessions
            .conns
            .values()
            .map(|c| c.channels.len() as u64)
            .sum();
        o
    }
}

/// A consumer's arguments as RabbitMQ lists them.
pub fn consumer_arguments(priority: i64) -> FieldTable {
    let mut t = FieldTable::default();
    if priority != 0 {
        t.insert("x-priority", FieldValue::I64(priority));
    }
    t
}
