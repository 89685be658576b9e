//! Queues, exchanges, bindings and messages operated on by an administrator, with the same
//! checks and RabbitMQ error texts as the AMQP methods they mirror.

use std::sync::Arc;

use bytes::Bytes;

use crate::proto::command::Message;
use crate::proto::method::{ExchangeDeclare, QueueDeclare};
use crate::proto::props::BasicProperties;
use crate::proto::table::FieldTable;

use super::super::auth::Access;
use super::super::death::DeathReason;
use super::super::declare::{
    assert_exchange_equivalent, assert_queue_equivalent, exclusive_lock_error,
};
use super::super::error::{access_refused, precondition_failed, resource};
use super::super::exchange::{Binding, Destination, ExchangeKind};
use super::super::{Broker, QueueId};
use super::{
    Actor, AdminError, AdminErrorKind, AdminReply, AdminResult, BindingInfo, GetAck, GotMessage,
    bad_request, check_table, not_found,
};

/// Most messages one [`super::AdminRequest::Get`] takes.
pub(super) const MAX_GET_COUNT: usize = 10_000;

impl Broker {
    /// Fails unless `actor` may have `access` to the named resource in `vhost`.
    pub(super) fn admin_check(
        &self,
        actor: &Actor,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), AdminError> {
        let Actor::User(user) = actor else {
            return Ok(());
        };
        // RabbitMQ names the default exchange "amq.default" in permission checks.
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        let allowed = self
            .accounts
            .users
            .permissions(user, vhost)
            .is_some_and(|p| p.allows(access, name));
        if allowed {
            Ok(())
        } else {
            Err(access_refused(format!(
                "access to {} refused for user '{user}'",
                resource(kind, name, vhost)
            ))
            .into())
        }
    }

    fn require_vhost(&self, vhost: &str) -> Result<(), AdminError> {
        if self.topology.vhosts.contains_key(vhost) {
            Ok(())
        } else {
            Err(not_found(format!("Virtual host {vhost} does not exist")))
        }
    }

    pub(super) fn find_queue(&self, vhost: &str, name: &str) -> Result<QueueId, AdminError> {
        self.require_vhost(vhost)?;
        self.topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.queues.get(name))
            .copied()
            .ok_or_else(|| not_found(format!("no {}", resource("queue", name, vhost))))
    }

    /// Refuses a user's operation on an exclusive queue: over HTTP no connection owns it,
    /// so it is always another connection's (RabbitMQ's RESOURCE_LOCKED text). The node
    /// itself may purge and delete one, as `rabbitmqctl` may.
    fn check_not_locked(&self, actor: &Actor, id: QueueId) -> Result<(), AdminError> {
        let Some(q) = self.topology.queues.get(&id) else {
            return Ok(());
        };
        if q.decl.exclusive_owner.is_some() && matches!(actor, Actor::User(_)) {
            return Err(exclusive_lock_error(&q.decl.name, &q.decl.vhost).into());
        }
        Ok(())
    }

    pub(super) fn admin_declare_queue(
        &mut self,
        actor: &Actor,
        vhost: &str,
        name: &str,
        durable: bool,
        auto_delete: bool,
        arguments: FieldTable,
    ) -> AdminResult {
        self.require_vhost(vhost)?;
        if name.is_empty() {
            return Err(bad_request("queue name must not be empty"));
        }
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            ))
            .into());
        }
        self.admin_check(actor, vhost, Access::Configure, "queue", name)?;
        check_table(&arguments, "arguments")?;
        let m = QueueDeclare {
            queue: name.to_string(),
            durable,
            auto_delete,
            arguments,
            ..QueueDeclare::default()
        };
        if let Some(&id) = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.queues.get(name))
        {
            self.check_not_locked(actor, id)?;
            let q = self
                .topology
                .queues
                .get(&id)
                .ok_or_else(|| not_found("queue vanished"))?;
            assert_queue_equivalent(q, &m, vhost)?;
            return Ok(AdminReply::Put { created: false });
        }
        if let Some(dlx) = m
            .arguments
            .get("x-dead-letter-exchange")
            .and_then(crate::proto::table::FieldValue::as_str)
        {
            // Dead letters are published to the exchange on the declarer's behalf.
            self.admin_check(actor, vhost, Access::Read, "queue", name)?;
            self.admin_check(actor, vhost, Access::Write, "exchange", dlx)?;
        }
        // No connection owns it: the id 0 is never a connection's.
        let id = self.create_queue(0, vhost, name, &m)?;
        self.touch_queue(id);
        Ok(AdminReply::Put { created: true })
    }

    pub(super) fn admin_delete_queue(
        &mut self,
        actor: &Actor,
        vhost: &str,
        name: &str,
        if_empty: bool,
        if_unused: bool,
    ) -> AdminResult {
        let id = self.find_queue(vhost, name)?;
        self.admin_check(actor, vhost, Access::Configure, "queue", name)?;
        self.check_not_locked(actor, id)?;
        let q = self
            .topology
            .queues
            .get(&id)
            .ok_or_else(|| not_found("queue vanished"))?;
        if if_unused && !q.consumers.is_empty() {
            return Err(
                precondition_failed(format!("{} in use", resource("queue", name, vhost))).into(),
            );
        }
        if if_empty && q.ready_count() > 0 {
            return Err(precondition_failed(format!(
                "{} is not empty",
                resource("queue", name, vhost)
            ))
            .into());
        }
        Ok(AdminReply::Count(self.delete_queue(id)))
    }

    pub(super) fn admin_purge_queue(
        &mut self,
        actor: &Actor,
        vhost: &str,
        name: &str,
    ) -> AdminResult {
        let id = self.find_queue(vhost, name)?;
        self.admin_check(actor, vhost, Access::Read, "queue", name)?;
        self.check_not_locked(actor, id)?;
        Ok(AdminReply::Count(self.purge_ready(id)))
    }

    pub(super) fn admin_declare_exchange(
        &mut self,
        actor: &Actor,
        vhost: &str,
        name: &str,
        kind: &str,
        [durable, auto_delete, internal]: [bool; 3],
        arguments: FieldTable,
    ) -> AdminResult {
        self.require_vhost(vhost)?;
        let parsed = ExchangeKind::parse_declared(kind, &arguments).map_err(|e| {
            bad_request(e.unwrap_or_else(|| format!("invalid exchange type '{kind}'")))
        })?;
        if name.is_empty() {
            return Err(access_refused("operation not permitted on the default exchange").into());
        }
        self.admin_check(actor, vhost, Access::Configure, "exchange", name)?;
        check_table(&arguments, "arguments")?;
        parsed.0.check_arguments(&arguments).map_err(bad_request)?;
        let m = ExchangeDeclare {
            exchange: name.to_string(),
            kind: kind.to_string(),
            durable,
            auto_delete,
            internal,
            arguments,
            ..ExchangeDeclare::default()
        };
        let max = self.config.limits.max_exchanges_per_vhost;
        let v = self
            .topology
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| not_found(format!("no_such_vhost: {vhost}")))?;
        if let Some(x) = v.exchanges.get(name) {
            assert_exchange_equivalent(x, parsed, &m, vhost)?;
            return Ok(AdminReply::Put { created: false });
        }
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            ))
            .into());
        }
        if v.exchanges.len() >= max {
            return Err(AdminError::new(
                AdminErrorKind::PreconditionFailed,
                format!("exchange limit of {max} in vhost '{vhost}' reached"),
            ));
        }
        if let Some(ae) = m
            .arguments
            .get("alternate-exchange")
            .and_then(crate::proto::table::FieldValue::as_str)
        {
            // Unroutable messages are published to it on the declarer's behalf.
            self.admin_check(actor, vhost, Access::Read, "exchange", name)?;
            self.admin_check(actor, vhost, Access::Write, "exchange", ae)?;
        }
        if !self.topology.vhosts.contains_key(vhost) {
            return Err(not_found(format!("no_such_vhost: {vhost}")).into());
        }
        // The same creation as exchange.declare's: policies, delayed type, store record.
        self.add_exchange(vhost, name.to_string(), parsed, m)?;
        Ok(AdminReply::Put { created: true })
    }

    pub(super) fn admin_delete_exchange(
        &mut self,
        actor: &Actor,
        vhost: &str,
        name: &str,
        if_unused: bool,
    ) -> AdminResult {
        self.require_vhost(vhost)?;
        if name.is_empty() || name == "amq.default" {
            return Err(access_refused("operation not permitted on the default exchange").into());
        }
        self.admin_check(actor, vhost, Access::Configure, "exchange", name)?;
        let x = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(name))
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", name, vhost))))?;
        if x.builtin {
            return Err(access_refused(format!(
                "deletion of system {} not allowed",
                resource("exchange", name, vhost)
            ))
            .into());
        }
        if if_unused && x.binding_count() > 0 {
            return Err(precondition_failed(format!(
                "{} in use",
                resource("exchange", name, vhost)
            ))
            .into());
        }
        self.delete_exchange(vhost, name);
        Ok(AdminReply::Done)
    }

    pub(super) fn admin_bind(&mut self, actor: &Actor, b: BindingInfo, bind: bool) -> AdminResult {
        self.require_vhost(&b.vhost)?;
        if b.source.is_empty() || b.source == "amq.default" {
            return Err(access_refused("operation not permitted on the default exchange").into());
        }
        let dest_kind = if b.to_queue { "queue" } else { "exchange" };
        self.admin_check(actor, &b.vhost, Access::Write, dest_kind, &b.destination)?;
        self.admin_check(actor, &b.vhost, Access::Read, "exchange", &b.source)?;
        if let Actor::User(user) = actor {
            self.check_topic(user, &b.vhost, Access::Read, &b.source, &b.routing_key)?;
        }
        check_table(&b.arguments, "arguments")?;
        let v = self
            .topology
            .vhosts
            .get(&b.vhost)
            .ok_or_else(|| not_found(format!("no_such_vhost: {}", b.vhost)))?;
        if !v.exchanges.contains_key(&b.source) {
            return Err(not_found(format!(
                "no {}",
                resource("exchange", &b.source, &b.vhost)
            )));
        }
        let destination = if b.to_queue {
            let id = v.queues.get(&b.destination).ok_or_else(|| {
                not_found(format!(
                    "no {}",
                    resource("queue", &b.destination, &b.vhost)
                ))
            })?;
            let id = *id;
            self.check_not_locked(actor, id)?;
            Destination::Queue(id)
        } else {
            if !v.exchanges.contains_key(&b.destination) {
                return Err(not_found(format!(
                    "no {}",
                    resource("exchange", &b.destination, &b.vhost)
                )));
            }
            Destination::Exchange(b.destination.clone())
        };
        let binding = Binding {
            destination,
            routing_key: b.routing_key,
            arguments: b.arguments,
        };
        if bind {
            self.add_binding(&b.vhost, &b.source, binding)?;
        } else {
            self.remove_binding(&b.vhost, &b.source, &binding);
        }
        Ok(AdminReply::Done)
    }

    pub(super) fn admin_publish(
        &mut self,
        actor: &Actor,
        vhost: &str,
        exchange: &str,
        routing_key: String,
        properties: BasicProperties,
        body: Bytes,
    ) -> AdminResult {
        self.require_vhost(vhost)?;
        let exchange = if exchange == "amq.default" {
            ""
        } else {
            exchange
        };
        let x = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", exchange, vhost))))?;
        if x.internal {
            return Err(access_refused(format!(
                "cannot publish to internal {}",
                resource("exchange", exchange, vhost)
            ))
            .into());
        }
        self.admin_check(actor, vhost, Access::Write, "exchange", exchange)?;
        if let Actor::User(user) = actor {
            self.check_topic(user, vhost, Access::Write, exchange, &routing_key)?;
        }
        if let Some(headers) = &properties.headers {
            check_table(headers, "headers")?;
        }
        if let (Actor::User(user), Some(claimed)) = (actor, &properties.user_id)
            && claimed.as_bytes() != user.as_bytes()
        {
            return Err(precondition_failed(format!(
                "user_id property set to '{claimed}' but authenticated user was '{user}'"
            ))
            .into());
        }
        let message = Message {
            exchange: exchange.to_string(),
            routing_key,
            properties,
            body,
        };
        if let Err(why) = super::super::publish::parse_expiration(&message) {
            return Err(bad_request(format!("invalid expiration: {why}")));
        }
        self.counters.totals.publish += 1;
        let message = Arc::new(message);
        if let Some(delay_ms) = self.delay_for(vhost, exchange, &message) {
            // Held, not routed yet: "routed" says whether it was taken.
            let taken = self.hold_delayed(vhost, message, delay_ms)
                != crate::broker::channel::Confirm::Nack;
            return Ok(AdminReply::Routed(taken));
        }
        let queues = self.route(vhost, exchange, &message);
        let routed = !queues.is_empty();
        if routed {
            self.enqueue_routed(queues, message, crate::broker::death::Allowance::FRESH);
        } else {
            self.counters.totals.unroutable += 1;
        }
        Ok(AdminReply::Routed(routed))
    }

    pub(super) fn admin_get(
        &mut self,
        actor: &Actor,
        vhost: &str,
        queue: &str,
        count: usize,
        ack: GetAck,
    ) -> AdminResult {
        let id = self.inspectable_queue(actor, vhost, queue)?;
        self.touch_queue(id);
        let now = self.now_ms;
        let expired = self
            .topology
            .queues
            .get_mut(&id)
            .map(|q| q.messages.drop_expired(now))
            .unwrap_or_default();
        self.dead_letter(id, expired, DeathReason::Expired);
        let mut taken = Vec::new();
        let mut out = Vec::new();
        if let Some(q) = self.topology.queues.get_mut(&id) {
            for _ in 0..count.min(MAX_GET_COUNT) {
                let Some(entry) = q.messages.pop() else { break };
                q.stats.got(false, entry.redelivered);
                self.counters.totals.got(false, entry.redelivered);
                out.push(GotMessage {
                    message: entry.message.clone(),
                    redelivered: entry.redelivered,
                    message_count: q.ready_count(),
                    position: entry.seq,
                });
                taken.push(entry);
            }
        }
        match ack {
            GetAck::Requeue | GetAck::RejectRequeue => {
                if let Some(q) = self.topology.queues.get_mut(&id) {
                    // In one pass: put back one by one, each would move the rest.
                    q.messages.requeue_many(taken);
                }
                self.schedule_dispatch(id);
            }
            GetAck::Ack => {
                if let Some(q) = self.topology.queues.get_mut(&id) {
                    q.stats.ack += out.len() as u64;
                }
                self.counters.totals.ack += out.len() as u64;
                for entry in taken {
                    self.release(id, &entry);
                }
            }
            GetAck::Reject => self.dead_letter(id, taken, DeathReason::Rejected),
        }
        Ok(AdminReply::Messages(out))
    }
}
