//! Resource alarms, as RabbitMQ raises them: while memory use is above its watermark or
//! free disk space below its limit, connections that publish are blocked
//! (`connection.blocked` to clients that understand it, and their input is no longer
//! read); consumers keep draining. When every alarm clears they are unblocked.
//!
//! A failing store raises one more: from [`Broker::handle_store_failed`] until
//! [`Broker::handle_store_recovered`], publishers are blocked the same way and a publish
//! that would have to be stored (a persistent message reaching a durable queue) is refused
//! (`basic.nack` in confirm mode) instead of being confirmed late or not at all. Everything
//! else goes on: consumers are served and their acks are written as the store allows.
//! Batches already handed to the driver are retried by it, in order; the confirms that
//! depend on them wait for [`Broker::handle_persisted`] as always, so nothing is confirmed
//! that is not on disk.

use crate::proto::command::{ConnId, Message};
use crate::proto::method::{ConnectionBlocked, ConnectionUnblocked, Method};

use super::Broker;
use super::exchange::QueueId;
pub use crate::store::commit::StoreFault;

/// A watched resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// Memory use crossed the high watermark.
    Memory,
    /// Free disk space fell below the limit.
    Disk,
    /// The store fails its writes.
    Store,
}

impl Resource {
    /// RabbitMQ's name, as in `/api/health/checks/alarms` (`store` is warren's own).
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk",
            Resource::Store => "store",
        }
    }
}

/// Limits that raise the memory and disk alarms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlarmLimits {
    /// Memory alarm when resident memory exceeds this fraction of physical memory.
    pub memory_high_watermark: f64,
    /// Disk alarm when free space on the data directory's file system falls below this.
    pub disk_free_limit_bytes: u64,
}

impl Default for AlarmLimits {
    /// RabbitMQ's defaults: 40% of memory, 50 MB of disk.
    fn default() -> Self {
        AlarmLimits {
            memory_high_watermark: 0.4,
            disk_free_limit_bytes: 50_000_000,
        }
    }
}

/// What the driver measured of the machine; a figure it could not read is `None` and
/// raises nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceReading {
    /// This process's resident memory.
    pub memory_used_bytes: Option<u64>,
    /// Physical memory.
    pub memory_total_bytes: Option<u64>,
    /// Free space on the data directory's file system.
    pub disk_free_bytes: Option<u64>,
}

impl AlarmLimits {
    /// Whether each alarm should be on for `reading`: (memory, disk).
    pub fn alarms(&self, reading: &ResourceReading) -> (bool, bool) {
        let memory = match (reading.memory_used_bytes, reading.memory_total_bytes) {
            (Some(used), Some(total)) => used as f64 > self.memory_high_watermark * total as f64,
            _ => false,
        };
        let disk = reading
            .disk_free_bytes
            .is_some_and(|free| free < self.disk_free_limit_bytes);
        (memory, disk)
    }
}

impl StoreFault {
    fn reason(self) -> &'static str {
        match self {
            StoreFault::NoSpace => "store out of disk space",
            StoreFault::Io => "store failing I/O",
        }
    }
}

impl Broker {
    /// The driver measured memory and disk: alarms are raised or cleared against
    /// [`BrokerConfig::alarms`](super::BrokerConfig::alarms).
    pub fn handle_resources(&mut self, reading: ResourceReading, now_ms: u64) {
        self.node.last_reading = reading;
        let (memory, disk) = self.config.alarms.alarms(&reading);
        for (resource, on) in [(Resource::Memory, memory), (Resource::Disk, disk)] {
            if self.node.alarms.contains(&resource) != on {
                tracing::warn!(alarm = resource.as_str(), active = on, "resource alarm");
                self.handle_alarm(resource, on, now_ms);
            }
        }
    }

    /// A resource alarm was raised (`active`) or cleared.
    pub fn handle_alarm(&mut self, resource: Resource, active: bool, now_ms: u64) {
        self.now_ms = now_ms;
        let changed = if active {
            self.node.alarms.insert(resource)
        } else {
            self.node.alarms.remove(&resource)
        };
        if !changed {
            return;
        }
        if resource == Resource::Memory && !active {
            self.topology.loads_recheck = true;
        }
        let mut ids: Vec<ConnId> = self.sessions.conns.keys().copied().collect();
        ids.sort_unstable();
        if self.node.alarms.is_empty() {
            for conn in ids {
                self.unblock(conn);
            }
        } else {
            for conn in ids {
                if self
                    .sessions
                    .conns
                    .get(&conn)
                    .is_some_and(|c| c.has_published && !c.blocked)
                {
                    self.block(conn);
                }
            }
        }
        self.finish_round();
    }

    /// The alarms in force.
    pub fn alarms(&self) -> impl Iterator<Item = Resource> + '_ {
        self.node.alarms.iter().copied()
    }

    /// The store failed a write, a sync or a read: publishes that need it are refused and
    /// publishers blocked until [`Broker::handle_store_recovered`]. The driver keeps the
    /// batches it was given and writes them again, in order; a fault reported again (the
    /// retry failed too) changes only its kind.
    pub fn handle_store_failed(&mut self, fault: StoreFault, now_ms: u64) {
        self.now_ms = now_ms;
        self.node.store_fault = Some(fault);
        self.handle_alarm(Resource::Store, true, now_ms);
    }

    /// The store writes again and has room: publishes are taken again.
    pub fn handle_store_recovered(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.node.store_fault = None;
        self.handle_alarm(Resource::Store, false, now_ms);
    }

    /// The store fault in force, if any.
    pub fn store_fault(&self) -> Option<StoreFault> {
        self.node.store_fault
    }

    /// Whether a publish of `message` to `queues` must be refused because it would need
    /// the failing store.
    pub(super) fn store_refuses(&self, queues: &[QueueId], message: &Message) -> bool {
        self.node.store_fault.is_some()
            && message.is_persistent()
            && queues
                .iter()
                .any(|q| self.topology.queues.get(q).is_some_and(|q| q.decl.durable))
    }

    /// Called after a connection published: blocks it if an alarm is in force.
    pub(super) fn note_publisher(&mut self, conn: ConnId) {
        let Some(c) = self.sessions.conns.get_mut(&conn) else {
            return;
        };
        c.has_published = true;
        if !self.node.alarms.is_empty() && !c.blocked {
            self.block(conn);
        }
    }

    /// The text of `connection.blocked`: RabbitMQ's for memory and disk, then the store's.
    fn block_reason(&self) -> String {
        let low = match (
            self.node.alarms.contains(&Resource::Memory),
            self.node.alarms.contains(&Resource::Disk),
        ) {
            (true, true) => Some("low on memory & disk"),
            (true, false) => Some("low on memory"),
            (false, true) => Some("low on disk"),
            (false, false) => None,
        };
        let store = self
            .node
            .store_fault
            .filter(|_| self.node.alarms.contains(&Resource::Store))
            .map(StoreFault::reason);
        match (low, store) {
            (Some(low), Some(store)) => format!("{low}; {store}"),
            (Some(one), None) | (None, Some(one)) => one.to_string(),
            (None, None) => String::new(),
        }
    }

    fn block(&mut self, conn: ConnId) {
        let reason = self.block_reason();
        let Some(c) = self.sessions.conns.get_mut(&conn) else {
            return;
        };
        c.blocked = true;
        let notify = c.blocked_notify;
        if notify {
            self.send_method(
                conn,
                0,
                Method::ConnectionBlocked(ConnectionBlocked { reason }),
            );
        }
        self.set_paused(conn, super::flow::PAUSED_BY_ALARM, true);
    }

    fn unblock(&mut self, conn: ConnId) {
        let Some(c) = self.sessions.conns.get_mut(&conn) else {
            return;
        };
        if !c.blocked {
            return;
        }
        c.blocked = false;
        if c.blocked_notify {
            self.send_method(conn, 0, Method::ConnectionUnblocked(ConnectionUnblocked {}));
        }
        self.set_paused(conn, super::flow::PAUSED_BY_ALARM, false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::broker::{BrokerConfig, ConnInfo, Output};
    use crate::proto::command::{Command, Login, Message, Reply};
    use crate::proto::props::BasicProperties;
    use crate::proto::table::{FieldTable, FieldValue};
    use crate::store::Recovered;

    fn replies(b: &mut Broker) -> Vec<Reply> {
        let mut out = Vec::new();
        while let Some(o) = b.poll_output() {
            if let Output::Replies { replies, .. } = o {
                out.extend(replies);
            }
        }
        out
    }

    fn open(b: &mut Broker, conn: ConnId, blocked_capable: bool) {
        b.handle_connect(
            conn,
            ConnInfo {
                peer: "test".into(),
                loopback: true,
            },
            0,
        );
        let caps: FieldTable = [(
            "connection.blocked".to_string(),
            FieldValue::Bool(blocked_capable),
        )]
        .into_iter()
        .collect();
        let props: FieldTable = [("capabilities".to_string(), FieldValue::Table(caps))]
            .into_iter()
            .collect();
        let login = Login {
            mechanism: "PLAIN".into(),
            username: "guest".into(),
            password: "guest".into(),
            client_properties: props,
        };
        b.handle_command(conn, Command::Login(login), 0);
        b.handle_command(conn, Command::OpenVhost { vhost: "/".into() }, 0);
        b.handle_command(conn, Command::ChannelOpen { channel: 1 }, 0);
        replies(b);
    }

    fn method(b: &mut Broker, conn: ConnId, method: Method) {
        b.handle_command(conn, Command::Method { channel: 1, method }, 0);
    }

    fn publish_to(b: &mut Broker, conn: ConnId, queue: &str, persistent: bool) {
        let properties = BasicProperties {
            delivery_mode: Some(if persistent { 2 } else { 1 }),
            ..Default::default()
        };
        let message = Arc::new(Message {
            exchange: String::new(),
            routing_key: queue.into(),
            properties,
            body: Bytes::from_static(b"x"),
        });
        b.handle_command(
            conn,
            Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message,
            },
            0,
        );
    }

    /// Drains the outputs like a driver whose store takes batches but has not synced
    /// them: returns the replies and the numbers of the batches emitted.
    fn outputs(b: &mut Broker) -> (Vec<Reply>, Vec<u64>) {
        let mut replies = Vec::new();
        let mut batches = Vec::new();
        while let Some(o) = b.poll_output() {
            match o {
                Output::Replies { replies: r, .. } => replies.extend(r),
                Output::Persist { batch, .. } => batches.push(batch),
                Output::Load { .. } => panic!("nothing is paged here"),
                Output::Admin { .. } => panic!("no admin requests here"),
            }
        }
        (replies, batches)
    }

    fn confirms(replies: &[Reply]) -> Vec<(bool, u64)> {
        replies
            .iter()
            .filter_map(|r| match r {
                Reply::Method {
                    method: Method::BasicAck(a),
                    ..
                } => Some((true, a.delivery_tag)),
                Reply::Method {
                    method: Method::BasicNack(n),
                    ..
                } => Some((false, n.delivery_tag)),
                _ => None,
            })
            .collect()
    }

    fn publish(b: &mut Broker, conn: ConnId) {
        let message = Arc::new(Message {
            exchange: String::new(),
            routing_key: "nowhere".into(),
            properties: BasicProperties::default(),
            body: Bytes::from_static(b"x"),
        });
        b.handle_command(
            conn,
            Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message,
            },
            0,
        );
    }

    #[test]
    fn alarms_block_publishers_only_and_clear() {
        let mut b = Broker::new(BrokerConfig::default(), 1, Recovered::default());
        open(&mut b, 1, true);
        open(&mut b, 2, false);
        open(&mut b, 3, true);
        publish(&mut b, 1);
        publish(&mut b, 2);
        replies(&mut b);

        b.handle_alarm(Resource::Disk, true, 10);
        let got = replies(&mut b);
        let blocked = Reply::Method {
            channel: 0,
            method: Method::ConnectionBlocked(ConnectionBlocked {
                reason: "low on disk".into(),
            }),
        };
        assert_eq!(
            got.iter().filter(|r| **r == blocked).count(),
            1,
            "only the capable publisher is told"
        );
        assert_eq!(
            got.iter()
                .filter(|r| **r == Reply::PauseReading(true))
                .count(),
            2,
            "both publishers pause"
        );

        // Connection 3 had not published: it is blocked when it does.
        publish(&mut b, 3);
        let got = replies(&mut b);
        assert!(got.contains(&blocked) && got.contains(&Reply::PauseReading(true)));

        b.handle_alarm(Resource::Memory, true, 20);
        assert!(
            replies(&mut b).is_empty(),
            "already blocked connections are left alone"
        );
        b.handle_alarm(Resource::Disk, false, 30);
        assert!(replies(&mut b).is_empty(), "the memory alarm still holds");
        b.handle_alarm(Resource::Memory, false, 40);
        let got = replies(&mut b);
        let unblocked = Reply::Method {
            channel: 0,
            method: Method::ConnectionUnblocked(ConnectionUnblocked {}),
        };
        assert_eq!(got.iter().filter(|r| **r == unblocked).count(), 2);
        assert_eq!(
            got.iter()
                .filter(|r| **r == Reply::PauseReading(false))
                .count(),
            3
        );
        assert_eq!(b.alarms().count(), 0);
    }

    #[test]
    fn a_failing_store_refuses_what_it_would_have_to_store_and_confirms_nothing_unsynced() {
        use crate::proto::method::{BasicConsume, ConfirmSelect, QueueDeclare};
        let mut b = Broker::new(BrokerConfig::default(), 1, Recovered::default());
        open(&mut b, 1, true);
        open(&mut b, 2, true);
        for (queue, durable) in [("durable", true), ("transient", false)] {
            method(
                &mut b,
                1,
                Method::QueueDeclare(QueueDeclare {
                    queue: queue.into(),
                    durable,
                    ..Default::default()
                }),
            );
        }
        method(
            &mut b,
            1,
            Method::ConfirmSelect(ConfirmSelect { nowait: false }),
        );
        // Two stored messages for the consumer, in a batch the store has not synced yet.
        publish_to(&mut b, 1, "durable", true);
        publish_to(&mut b, 1, "durable", true);
        let (got, batches) = outputs(&mut b);
        assert!(confirms(&got).is_empty(), "not synced, not confirmed");
        let before = *batches.last().expect("a batch for the durable queue");

        b.handle_store_failed(StoreFault::NoSpace, 10);
        assert_eq!(b.store_fault(), Some(StoreFault::NoSpace));
        assert!(b.alarms().any(|a| a == Resource::Store));
        let (got, _) = outputs(&mut b);
        assert!(
            got.contains(&Reply::Method {
                channel: 0,
                method: Method::ConnectionBlocked(ConnectionBlocked {
                    reason: "store out of disk space".into()
                }),
            }),
            "the publisher is blocked with the reason: {got:?}"
        );
        assert!(confirms(&got).is_empty(), "the failure confirms nothing");

        // A persistent message for a durable queue is refused; others are taken.
        publish_to(&mut b, 1, "durable", true);
        publish_to(&mut b, 1, "durable", false);
        publish_to(&mut b, 1, "transient", true);
        let (got, batches) = outputs(&mut b);
        assert!(
            confirms(&got).is_empty(),
            "confirms go out in order, behind the unsynced ones"
        );
        assert!(batches.is_empty(), "nothing to store");
        assert_eq!(b.queue("/", "durable").map(|q| q.ready_count()), Some(3));

        // Consumers are served, and their acks still go to the store.
        method(
            &mut b,
            2,
            Method::BasicConsume(BasicConsume {
                queue: "durable".into(),
                consumer_tag: "c".into(),
                ..Default::default()
            }),
        );
        let (got, _) = outputs(&mut b);
        let delivered = got
            .iter()
            .filter(|r| matches!(r, Reply::Deliver { .. }))
            .count();
        assert_eq!(delivered, 3);
        method(
            &mut b,
            2,
            Method::BasicAck(crate::proto::method::BasicAck {
                delivery_tag: 3,
                multiple: true,
            }),
        );
        let (_, batches) = outputs(&mut b);
        assert_eq!(batches.len(), 1, "the acks of stored messages are written");

        // The retried batch is synced: its confirms go out, then those behind them; the
        // fault still holds.
        b.handle_persisted(before);
        let (got, _) = outputs(&mut b);
        assert_eq!(confirms(&got), [(true, 2), (false, 3), (true, 5)]);
        publish_to(&mut b, 1, "durable", true);
        let (got, _) = outputs(&mut b);
        assert_eq!(confirms(&got), [(false, 6)]);

        b.handle_store_recovered(20);
        assert_eq!(b.store_fault(), None);
        let (got, _) = outputs(&mut b);
        assert!(got.contains(&Reply::Method {
            channel: 0,
            method: Method::ConnectionUnblocked(ConnectionUnblocked {}),
        }));
        publish_to(&mut b, 1, "durable", true);
        let (got, batches) = outputs(&mut b);
        assert!(
            confirms(&got).is_empty() && batches.len() == 1,
            "stored again"
        );
        b.check_invariants();
    }

    #[test]
    fn the_block_reason_names_every_alarm() {
        let mut b = Broker::new(BrokerConfig::default(), 1, Recovered::default());
        open(&mut b, 1, true);
        publish(&mut b, 1);
        replies(&mut b);
        b.handle_alarm(Resource::Disk, true, 1);
        b.handle_store_failed(StoreFault::Io, 2);
        assert_eq!(b.block_reason(), "low on disk; store failing I/O");
        replies(&mut b);
        b.handle_alarm(Resource::Disk, false, 3);
        assert_eq!(b.block_reason(), "store failing I/O");
        assert!(
            replies(&mut b).is_empty(),
            "the store alarm keeps the publisher blocked"
        );
    }
}
