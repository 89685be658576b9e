//! Direct reply-to, as RabbitMQ implements it: an RPC client consumes (no-ack) from the
//! pseudo-queue `amq.rabbitmq.reply-to` and publishes requests with that `reply_to`; the
//! broker rewrites it to `amq.rabbitmq.reply-to.<token>`, and a reply published to the
//! default exchange with that routing key goes straight to the client's consumer, with no
//! queue in between.
//!
//! The token names the consumer's connection, channel and channel incarnation, with a
//! random nonce drawn from the broker's secret generator, so a reply finds its channel
//! without a table (nothing to clean up when channels close) and a client cannot forge the
//! token of another client's channel.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;

use crate::proto::command::{ConnId, Message, Reply};
use crate::proto::method::*;
use crate::proto::shortstr::ShortStr;

use super::Broker;
use super::error::*;

/// The pseudo-queue an RPC client consumes from, and the `reply_to` it publishes with.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The prefix of the routable names the broker gives `reply_to`.
pub const REPLY_TO_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// Bytes of the random part of a token.
const NONCE_BYTES: usize = 12;

/// Bytes of a decoded token: connection id, channel number, channel uid, nonce.
const TOKEN_BYTES: usize = 8 + 2 + 8 + NONCE_BYTES;

/// A channel's direct reply-to consumer.
#[derive(Debug, Clone)]
pub struct ReplyConsumer {
    /// The consumer tag deliveries carry.
    pub tag: Arc<str>,
    /// The routable name replies are published to (`amq.rabbitmq.reply-to.<token>`).
    pub address: String,
}

/// Where a token says its consumer is.
struct Target {
    conn: ConnId,
    channel: u16,
    uid: u64,
}

fn encode_token(target: &Target, nonce: [u8; NONCE_BYTES]) -> String {
    let mut raw = Vec::with_capacity(TOKEN_BYTES);
    raw.extend_from_slice(&target.conn.to_be_bytes());
    raw.extend_from_slice(&target.channel.to_be_bytes());
    raw.extend_from_slice(&target.uid.to_be_bytes());
    raw.extend_from_slice(&nonce);
    format!("{REPLY_TO_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The target a reply address names, if it is well formed.
fn decode_address(address: &str) -> Option<Target> {
    let token = address.strip_prefix(REPLY_TO_PREFIX)?;
    // The encoded length is fixed: anything longer is not ours (and is not decoded).
    if token.len() != (TOKEN_BYTES * 4).div_ceil(3) {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    let raw: [u8; TOKEN_BYTES] = raw.try_into().ok()?;
    let (conn, rest) = raw.split_at(8);
    let (channel, rest) = rest.split_at(2);
    let (uid, _) = rest.split_at(8);
    Some(Target {
        conn: u64::from_be_bytes(conn.try_into().ok()?),
        channel: u16::from_be_bytes(channel.try_into().ok()?),
        uid: u64::from_be_bytes(uid.try_into().ok()?),
    })
}

/// Whether a routing key or queue name is a reply address (`amq.rabbitmq.reply-to.…`).
pub fn is_reply_address(name: &str) -> bool {
    name.starts_with(REPLY_TO_PREFIX)
}

impl Broker {
    /// `basic.consume` on `amq.rabbitmq.reply-to`: at most one per channel, no-ack only.
    pub(super) fn reply_consume(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: BasicConsume,
    ) -> AmqpResult<()> {
        self.open_session(conn)?;
        if !m.no_ack {
            return Err(precondition_failed("reply consumer cannot acknowledge"));
        }
        let uid = self
            .channel_uid(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        if self
            .channel_mut(conn, channel)
            .is_some_and(|ch| ch.reply_consumer.is_some())
        {
            return Err(precondition_failed("reply consumer already set"));
        }
        let tag: Arc<str> = if m.consumer_tag.is_empty() {
            self.generate_name("amq.ctag-").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        if self
            .channel_mut(conn, channel)
            .is_some_and(|ch| ch.consumers.contains_key(&tag))
        {
            return Err(not_allowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let mut nonce = [0u8; NONCE_BYTES];
        self.secret_rng.fill_bytes(&mut nonce);
        let address = encode_token(&Target { conn, channel, uid }, nonce);
        let ch = self
            .channel_mut(conn, channel)
            .ok_or_else(|| command_invalid("no channel"))?;
        ch.reply_consumer = Some(ReplyConsumer {
            tag: tag.clone(),
            address,
        });
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::BasicConsumeOk(BasicConsumeOk {
                consumer_tag: tag.to_string(),
            }),
        )
    }

    /// Cancels the channel's reply consumer if `tag` is its tag; returns whether it was.
    pub(super) fn reply_cancel(&mut self, conn: ConnId, channel: u16, tag: &str) -> bool {
        let Some(ch) = self.channel_mut(conn, channel) else {
            return false;
        };
        if ch.reply_consumer.as_ref().is_some_and(|r| &*r.tag == tag) {
            ch.reply_consumer = None;
            true
        } else {
            false
        }
    }

    /// A published message whose `reply_to` is `amq.rabbitmq.reply-to` gets the channel's
    /// reply address instead; without a reply consumer on the channel that is a 406.
    pub(super) fn rewrite_reply_to(
        &mut self,
        conn: ConnId,
        channel: u16,
        message: Arc<Message>,
    ) -> AmqpResult<Arc<Message>> {
        if !matches!(&message.properties.reply_to, Some(r) if *r == REPLY_TO) {
            return Ok(message);
        }
        let address = self
            .channel_mut(conn, channel)
            .and_then(|ch| ch.reply_consumer.as_ref())
            .map(|r| r.address.clone())
            .ok_or_else(|| precondition_failed("fast reply consumer does not exist"))?;
        let mut rewritten = Message::clone(&message);
        rewritten.properties.reply_to = Some(ShortStr::from(address));
        Ok(Arc::new(rewritten))
    }

    /// The reply consumer a reply address names, if it is still there, in `vhost`:
    /// the connection, channel number and consumer tag.
    fn reply_target(&mut self, vhost: &str, address: &str) -> Option<(ConnId, u16, Arc<str>)> {
        let target = decode_address(address)?;
        let conn = self.sessions.conns.get(&target.conn)?;
        if conn.vhost.as_deref() != Some(vhost) {
            return None;
        }
        let ch = conn.channels.get(&target.channel)?;
        let reply = ch.reply_consumer.as_ref()?;
        (ch.uid == target.uid && reply.address == address)
            .then(|| (target.conn, target.channel, reply.tag.clone()))
    }

    /// Delivers a message published to the default exchange with a reply address as its
    /// routing key straight to that reply consumer. Returns false if the address names no
    /// live reply consumer (the message is then unroutable).
    pub(super) fn deliver_reply(
        &mut self,
        vhost: &str,
        routing_key: &str,
        message: Arc<Message>,
    ) -> bool {
        let Some((conn, channel, tag)) = self.reply_target(vhost, routing_key) else {
            return false;
        };
        // A reply waits in no queue: to a client that does not read what it was sent, it
        // is refused (unroutable) once its connection holds the delivery limit unwritten,
        // so that replies cannot pile up without bound.
        let write_limit = self.config.limits.max_unflushed_bytes_per_connection;
        if self
            .sessions
            .conns
            .get(&conn)
            .is_none_or(|c| c.unflushed_bytes >= write_limit)
        {
            return false;
        }
        let Some(ch) = self.channel_mut(conn, channel) else {
            return false;
        };
        let delivery_tag = ch.next_tag;
        ch.next_tag += 1;
        ch.stats.delivered(true, false);
        self.counters.totals.delivered(true, false);
        let deliver = BasicDeliver {
            consumer_tag: tag.to_string(),
            delivery_tag,
            redelivered: false,
            exchange: String::new(),
            routing_key: routing_key.to_string(),
        };
        self.send(
            conn,
            Reply::Content {
                channel,
                method: Method::BasicDeliver(deliver),
                message,
            },
        );
        true
    }

    /// A `queue.declare` of `amq.rabbitmq.reply-to`, passive or not, succeeds, as in
    /// RabbitMQ (no messages, one consumer); of a reply address, if its consumer is
    /// there. Returns `None` for other names.
    pub(super) fn reply_declare(
        &mut self,
        conn: ConnId,
        channel: u16,
        name: &str,
        nowait: bool,
    ) -> Option<AmqpResult<()>> {
        if name != REPLY_TO && !is_reply_address(name) {
            return None;
        }
        let vhost = match self.open_session(conn) {
            Ok((vhost, _)) => vhost,
            Err(e) => return Some(Err(e)),
        };
        if name != REPLY_TO && self.reply_target(&vhost, name).is_none() {
            return Some(Err(not_found(format!(
                "no {}",
                resource("queue", name, &vhost)
            ))));
        }
        let ok = QueueDeclareOk {
            queue: name.to_string(),
            message_count: 0,
            consumer_count: 1,
        };
        Some(self.reply(conn, channel, nowait, Method::QueueDeclareOk(ok)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_refuse_what_is_not_theirs() {
        let address = encode_token(
            &Target {
                conn: 7,
                channel: 65535,
                uid: u64::MAX,
            },
            [9; NONCE_BYTES],
        );
        assert!(is_reply_address(&address));
        let t = decode_address(&address).expect("decodes");
        assert_eq!((t.conn, t.channel, t.uid), (7, 65535, u64::MAX));
        assert!(decode_address(REPLY_TO).is_none());
        assert!(decode_address(&format!("{address}x")).is_none());
        assert!(decode_address(&format!("{REPLY_TO_PREFIX}{}", "!".repeat(40))).is_none());
        assert!(decode_address(&format!("{REPLY_TO_PREFIX}{}", "A".repeat(10_000))).is_none());
    }
}
