//! What the clients are checked on: hostile connections keep to their own namespace and
//! get the errors they provoke, and each workload client's own view of the wire (tags,
//! redelivered flags, prefetch, nothing unpublished or corrupt).

use super::*;

impl Model {
    /// A hostile client's command: not modelled, but it must keep to its namespace (a
    /// hostile command that names a modelled queue or exchange is a simulator bug, which
    /// would make the modelled clients' checks meaningless).
    pub(super) fn hostile_command(&mut self, command: &Command) -> Check {
        let Some(ns) = &self.namespace else {
            return fail("a hostile connection in a run without a hostile namespace");
        };
        let queue = |q: &str| ns.is_queue(q);
        let exchange = |x: &str| ns.is_exchange(x);
        let text = |t: Option<&warren::proto::table::FieldValue>| {
            t.and_then(|v| v.as_str()).map(strip_cr_lf)
        };
        let touched = match command {
            Command::Publish { message, .. } => {
                if key_of(message).is_some()
                    || message
                        .properties
                        .message_id
                        .as_ref()
                        .and_then(ShortStr::as_str)
                        .is_none_or(|id| !is_hostile_id(id))
                {
                    return fail(format!(
                        "simulator: a hostile client published message id {:?}",
                        message.properties.message_id
                    ));
                }
                exchange(&message.exchange) || queue(&message.routing_key)
            }
            Command::Method { method, .. } => match method {
                Method::QueueDeclare(m) => {
                    let dlx = text(m.arguments.get("x-dead-letter-exchange"));
                    let dlrk = text(m.arguments.get("x-dead-letter-routing-key"));
                    queue(&m.queue)
                        || dlx.is_some_and(|x| exchange(&x))
                        || dlrk.is_some_and(|k| queue(&k))
                }
                Method::QueueBind(m) => queue(&m.queue) || exchange(&m.exchange),
                Method::QueueUnbind(m) => queue(&m.queue) || exchange(&m.exchange),
                Method::QueuePurge(m) => queue(&m.queue),
                Method::QueueDelete(m) => queue(&m.queue),
                Method::BasicConsume(m) => queue(&m.queue),
                Method::BasicGet(m) => queue(&m.queue),
                Method::ExchangeDeclare(m) => {
                    let ae = text(m.arguments.get("alternate-exchange"));
                    exchange(&m.exchange) || ae.is_some_and(|x| exchange(&x))
                }
                Method::ExchangeDelete(m) => exchange(&m.exchange),
                Method::ExchangeBind(m) => exchange(&m.source) || exchange(&m.destination),
                Method::ExchangeUnbind(m) => exchange(&m.source) || exchange(&m.destination),
                _ => false,
            },
            _ => false,
        };
        if touched {
            return fail(format!(
                "simulator: a hostile client's command touches the modelled namespace: {command:?}"
            ));
        }
        Ok(())
    }

    /// A reply to a hostile client: not modelled, but no modelled message may reach it,
    /// and the broker must not fail internally.
    pub(super) fn hostile_reply(&mut self, conn: ConnId, reply: &Reply) -> Check {
        if let Some((_, method, message)) = reply.content() {
            if let Some(key) = key_of(message) {
                return fail(format!(
                    "isolation: {} ({}) of a modelled client sent to hostile connection {conn} [history: {}]",
                    msg_id_text(key),
                    method.name(),
                    self.history_of(key)
                ));
            }
            return Ok(());
        }
        match reply {
            Reply::Method { method, .. } => {
                let close = match method {
                    Method::ConnectionClose(c) => Some((c.reply_code, &c.reply_text)),
                    Method::ChannelClose(c) => Some((c.reply_code, &c.reply_text)),
                    _ => None,
                };
                match close {
                    Some((code, text)) if code == warren::proto::constants::INTERNAL_ERROR => {
                        fail(format!(
                            "broker failed internally on hostile connection {conn}: {code} {text}"
                        ))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Checks what a client saw on the wire.
    pub fn observed(&mut self, client: usize, o: &Observed) -> Check {
        match o {
            Observed::Delivery {
                channel,
                queue,
                key,
                tag,
                prev_tag,
                redelivered,
                intact,
                consumer_unacked,
            } => {
                if !self.msgs.contains_key(key) {
                    return fail(format!(
                        "client {client} received {}, which was never published",
                        msg_id_text(*key)
                    ));
                }
                if !intact {
                    return fail(format!(
                        "client {client} received {} with a corrupt body or correlation id",
                        msg_id_text(*key)
                    ));
                }
                if tag <= prev_tag {
                    return fail(format!(
                        "client {client} saw delivery tag {tag} after {prev_tag} on channel {channel}"
                    ));
                }
                let copy = (client, queue.clone(), *key);
                self.note(*key, format!("client {client} saw it from {queue} on ch {channel} tag {tag} redelivered={redelivered}"));
                if self.seen_by_clients.contains(&copy) && !redelivered {
                    return fail(format!(
                        "client {client} saw {} from {queue} again without the redelivered flag [history: {}]",
                        msg_id_text(*key),
                        self.history_of(*key)
                    ));
                }
                self.seen_by_clients.insert(copy);
                if let Some((n, prefetch)) = consumer_unacked {
                    if *prefetch > 0 && n > &u32::from(*prefetch) {
                        return fail(format!(
                            "client {client} holds {n} unacked deliveries of one consumer, over its prefetch {prefetch}"
                        ));
                    }
                }
                Ok(())
            }
            Observed::StrayConfirm { tag } => fail(format!(
                "client {client} got a confirm for {tag}, which it was not waiting for"
            )),
            Observed::Unexpected { channel, method } => fail(format!(
                "client {client} got an unexpected {method} on channel {channel}"
            )),
            Observed::ConnectionClosed { code, text } => fail(format!(
                "client {client}'s connection closed by the server: {code} {text}"
            )),
        }
    }
}
