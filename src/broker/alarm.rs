//! Resource alarms, as RabbitMQ raises them: while memory use is above its watermark or
//! free disk space below its limit, connections that publish are blocked
//! (`connection.blocked` to clients that understand it, and their input is no longer
//! read); consumers keep draining. When every alarm clears they are unblocked.

use crate::proto::command::ConnId;
use crate::proto::method::{ConnectionBlocked, ConnectionUnblocked, Method};

use super::Broker;

/// A watched resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// Memory use crossed the high watermark.
    Memory,
    /// Free disk space fell below the limit.
    Disk,
}

impl Resource {
    /// RabbitMQ's name, as in `/api/health/checks/alarms`.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Memory => "memory",
            Resource::Disk => "disk",
        }
    }
}

impl Broker {
    /// A resource alarm was raised (`active`) or cleared.
    pub fn handle_alarm(&mut self, resource: Resource, active: bool, now_ms: u64) {
        self.now_ms = now_ms;
        let changed = if active {
            self.alarms.insert(resource)
        } else {
            self.alarms.remove(&resource)
        };
        if !changed {
            return;
        }
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        if self.alarms.is_empty() {
            for conn in ids {
                self.unblock(conn);
            }
        } else {
            for conn in ids {
                if self
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
        self.alarms.iter().copied()
    }

    /// Called after a connection published: blocks it if an alarm is in force.
    pub(super) fn note_publisher(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.has_published = true;
        if !self.alarms.is_empty() && !c.blocked {
            self.block(conn);
        }
    }

    fn block(&mut self, conn: ConnId) {
        let reason = match (
            self.alarms.contains(&Resource::Memory),
            self.alarms.contains(&Resource::Disk),
        ) {
            (true, true) => "low on memory & disk",
            (true, false) => "low on memory",
            _ => "low on disk",
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.blocked = true;
        let notify = c.blocked_notify;
        if notify {
            self.send_method(
                conn,
                0,
                Method::ConnectionBlocked(ConnectionBlocked {
                    reason: reason.to_string(),
                }),
            );
        }
        self.set_paused(conn, super::flow::PAUSED_BY_ALARM, true);
    }

    fn unblock(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
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
    use crate::proto::method::BasicPublish;
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

    fn publish(b: &mut Broker, conn: ConnId) {
        let message = Arc::new(Message {
            exchange: String::new(),
            routing_key: "nowhere".into(),
            properties: BasicProperties::default(),
            body: Bytes::from_static(b"x"),
        });
        let publish = BasicPublish {
            routing_key: "nowhere".into(),
            ..Default::default()
        };
        b.handle_command(
            conn,
            Command::Publish {
                channel: 1,
                publish,
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
}
