//! What a connection hands to the broker ([`Command`]) and what the broker hands back
//! ([`Reply`]).
//!
//! The protocol layer ([`super::connection::Connection`]) owns framing, the handshake's
//! wire mechanics, heartbeats, channel numbering and content assembly. Everything that needs
//! broker state (credentials, vhosts, queues, consumers) crosses this boundary as a command,
//! and the answers come back as replies in the order the broker produced them. Replies
//! for one connection are ordered; that ordering is what makes a `channel.close-ok` from the
//! broker a safe point to reuse a channel number.

use std::sync::Arc;

use bytes::Bytes;

use super::method::{BasicDeliver, ChannelClose, Method};
use super::props::BasicProperties;
use super::table::FieldTable;

/// Identifies one client connection for the lifetime of a broker process.
pub type ConnId = u64;

/// A published message as it arrived: the routing information of its `basic.publish` and
/// its content. Shared (behind an [`Arc`]) by every queue it was routed to.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Exchange named by the publisher ("" for the default exchange).
    pub exchange: String,
    /// Routing key given by the publisher.
    pub routing_key: String,
    /// The content header's properties.
    pub properties: BasicProperties,
    /// The body, reassembled from its body frames.
    pub body: Bytes,
}

impl Message {
    /// Bytes this message is charged for in queue length limits (`x-max-length-bytes`),
    /// which like RabbitMQ's count the body only.
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64
    }

    /// True when the publisher asked for the message to survive a restart
    /// (`delivery_mode = 2`).
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }
}

/// Credentials and client details presented in `connection.start-ok`.
#[derive(Debug, Clone, PartialEq)]
pub struct Login {
    /// The SASL mechanism the client chose (`PLAIN` or `AMQPLAIN`).
    pub mechanism: String,
    /// User name decoded from the mechanism's response.
    pub username: String,
    /// Password decoded from the mechanism's response.
    pub password: String,
    /// The client's properties table, including its `capabilities`.
    pub client_properties: FieldTable,
}

impl Login {
    /// Whether the client advertised a capability (a `true` entry in the `capabilities`
    /// table of its client properties).
    pub fn has_capability(&self, name: &str) -> bool {
        capability(&self.client_properties, name)
    }
}

/// Reads a boolean entry of the `capabilities` table of client properties.
pub fn capability(client_properties: &FieldTable, name: &str) -> bool {
    match client_properties.get("capabilities") {
        Some(super::table::FieldValue::Table(caps)) => {
            caps.get(name).and_then(|v| v.as_bool()).unwrap_or(false)
        }
        _ => false,
    }
}

/// An input from a connection to the broker.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `connection.start-ok` arrived with these credentials. The broker answers with
    /// [`Reply::LoginOk`], or refuses the login with `connection.close` (403) or
    /// [`Reply::Disconnect`].
    Login(Login),
    /// `connection.open` for a virtual host. The broker answers `connection.open-ok` or a
    /// `connection.close`.
    OpenVhost {
        /// The virtual host's name.
        vhost: String,
    },
    /// `channel.open` on a channel number that was free. The protocol layer has already
    /// answered `channel.open-ok`.
    ChannelOpen {
        /// The channel number.
        channel: u16,
    },
    /// The client sent `channel.close`. The broker releases the channel (returning its
    /// unacked messages to their queues) and answers `channel.close-ok`.
    ChannelClose {
        /// The channel number.
        channel: u16,
    },
    /// The protocol layer found a channel-level error (such as an oversized message). The
    /// broker releases the channel and sends this `channel.close` to the client.
    ChannelError {
        /// The channel number.
        channel: u16,
        /// The close to send, with its reply code and text.
        close: ChannelClose,
    },
    /// Any other method on an open channel that does not carry content.
    Method {
        /// The channel number.
        channel: u16,
        /// The decoded method.
        method: Method,
    },
    /// The connection's first `basic.publish` method frame arrived (sent once, before its
    /// content). From now on the connection counts as a publisher: a resource alarm
    /// blocks it even while the content of this first message is still arriving.
    Publishing,
    /// A complete `basic.publish`: method, content header and all body frames.
    Publish {
        /// The channel number.
        channel: u16,
        /// The publish's `mandatory` flag: a message no queue takes is returned.
        mandatory: bool,
        /// The publish's `immediate` flag (refused, as RabbitMQ does).
        immediate: bool,
        /// The message as it will be stored and delivered, with the exchange and routing
        /// key the publish named.
        message: Arc<Message>,
    },
    /// The driver wrote this many bytes of replies to the socket. The broker counts the
    /// bytes it has produced for each connection and pauses deliveries to a connection
    /// whose unwritten backlog is over its limit.
    Drained {
        /// Bytes written since the previous report.
        bytes: usize,
    },
    /// The connection is gone (closed by either side, a protocol error, or the socket
    /// dropped). The broker releases everything the connection held. Sent once, last.
    Closed,
}

/// Most reply bytes a driver writes before it reports them to the broker on their own.
pub const DRAIN_REPORT_BYTES: usize = 16 * 1024;

/// When a driver reports written reply bytes (`Command::Drained`). A report of its own is
/// one more hand-off to the broker per write; so written bytes ride along with the next
/// commands the connection sends anyway (a consumer's ack follows its delivery), and are
/// reported alone only once `threshold` of them have gathered. The broker then counts at
/// most `threshold` bytes more than are really waiting, and its limit on unwritten bytes
/// must be larger, or a connection it paused for output would never hear that the output
/// was written: [`DrainReport::new`] takes at most a quarter of the limit.
#[derive(Debug, Clone)]
pub struct DrainReport {
    threshold: usize,
    unreported: usize,
}

impl DrainReport {
    /// Reports for a broker whose limit on a connection's unwritten bytes is `limit`.
    pub fn new(limit: usize) -> Self {
        DrainReport {
            threshold: DRAIN_REPORT_BYTES.min(limit / 4).max(1),
            unreported: 0,
        }
    }

    /// `bytes` of replies (as the broker counted them) were written.
    pub fn written(&mut self, bytes: usize) {
        self.unreported = self.unreported.saturating_add(bytes);
    }

    /// The report to send now, if any: with other commands whenever something was
    /// written, alone once the threshold is reached.
    #[must_use]
    pub fn take(&mut self, with_other_commands: bool) -> Option<Command> {
        let due = self.unreported >= self.threshold || (with_other_commands && self.unreported > 0);
        if !due {
            return None;
        }
        let bytes = std::mem::take(&mut self.unreported);
        debug_assert!(bytes > 0);
        Some(Command::Drained { bytes })
    }

    /// Bytes written and not reported yet (always below the threshold between calls).
    pub fn unreported(&self) -> usize {
        self.unreported
    }
}

/// An output from the broker to one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A method without content. Connection- and channel-level `close` and `close-ok`
    /// replies also change the protocol layer's state (see `Connection::handle_reply`).
    Method {
        /// The channel number (0 for connection methods).
        channel: u16,
        /// The method to send.
        method: Method,
    },
    /// A method that carries content (`basic.deliver`, `basic.get-ok`, `basic.return`).
    Content {
        /// The channel number.
        channel: u16,
        /// The method to send before the content.
        method: Method,
        /// The message whose properties and body follow the method.
        message: Arc<Message>,
    },
    /// A `basic.deliver` of `message` to a consumer, its exchange and routing key the
    /// message's: nothing is copied for it until it is written.
    Deliver {
        /// The channel number.
        channel: u16,
        /// The consumer's tag.
        consumer_tag: Arc<str>,
        /// The delivery tag on the channel.
        delivery_tag: u64,
        /// Whether the message was delivered before.
        redelivered: bool,
        /// The message delivered.
        message: Arc<Message>,
    },
    /// The login was accepted; the protocol layer continues with `connection.tune`.
    LoginOk,
    /// Close the socket without a closing handshake (a refused login from a client that
    /// did not advertise `authentication_failure_close`).
    Disconnect,
    /// Stop (true) or resume (false) reading from the client: a resource alarm blocks
    /// publishing connections, as RabbitMQ's `connection.blocked` does.
    PauseReading(bool),
}

impl Reply {
    /// A [`Reply::Deliver`]'s method, as it goes on the wire.
    fn deliver_method(
        consumer_tag: &str,
        delivery_tag: u64,
        redelivered: bool,
        message: &Message,
    ) -> BasicDeliver {
        BasicDeliver {
            consumer_tag: consumer_tag.to_string(),
            delivery_tag,
            redelivered,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
        }
    }

    /// The method and message of a reply that carries content.
    pub fn content(&self) -> Option<(u16, Method, &Arc<Message>)> {
        match self {
            Reply::Content {
                channel,
                method,
                message,
            } => Some((*channel, method.clone(), message)),
            Reply::Deliver {
                channel,
                consumer_tag,
                delivery_tag,
                redelivered,
                message,
            } => Some((
                *channel,
                Method::BasicDeliver(Self::deliver_method(
                    consumer_tag,
                    *delivery_tag,
                    *redelivered,
                    message,
                )),
                message,
            )),
            _ => None,
        }
    }

    /// Approximate bytes this reply occupies on the wire; used for write-backlog accounting.
    pub fn wire_size(&self) -> usize {
        match self {
            Reply::Method { .. } => 64,
            // Headers count: a message with an empty body can carry a large header.
            Reply::Content { message, .. } | Reply::Deliver { message, .. } => {
                128 + message.body.len() + message.properties.encoded_len()
            }
            Reply::LoginOk | Reply::Disconnect | Reply::PauseReading(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bytes_ride_along_with_commands_and_are_reported_alone_at_the_threshold() {
        let mut d = DrainReport::new(4 * 1024 * 1024);
        assert_eq!(d.take(true), None, "nothing written, nothing to report");
        d.written(100);
        assert_eq!(
            d.take(false),
            None,
            "a small write waits for other commands"
        );
        assert_eq!(d.take(true), Some(Command::Drained { bytes: 100 }));
        assert_eq!(d.unreported(), 0);
        d.written(DRAIN_REPORT_BYTES - 1);
        assert_eq!(d.take(false), None);
        d.written(1);
        assert_eq!(
            d.take(false),
            Some(Command::Drained {
                bytes: DRAIN_REPORT_BYTES
            })
        );
    }

    #[test]
    fn a_small_limit_lowers_the_threshold_below_it() {
        // A broker that pauses a connection at 1,000 unwritten bytes hears of every 250
        // written, so a paused connection always hears its output was written.
        let mut d = DrainReport::new(1000);
        d.written(249);
        assert_eq!(d.take(false), None);
        d.written(1);
        assert_eq!(d.take(false), Some(Command::Drained { bytes: 250 }));
        let mut tiny = DrainReport::new(0);
        tiny.written(1);
        assert_eq!(tiny.take(false), Some(Command::Drained { bytes: 1 }));
    }
}
