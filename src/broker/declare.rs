//! Topology methods: exchange.* and queue.*, with RabbitMQ's checks and error texts.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::proto::command::ConnId;
use crate::proto::method::*;
use crate::proto::table::FieldTable;
use crate::store::{BindingRecord, ExchangeRecord, QueueRecord, StoreOp};

use super::Broker;
use super::auth::Access;
use super::error::*;
use super::exchange::{Binding, Destination, Exchange, ExchangeKind, QueueId};
use super::policy::Target;
use super::queue::{Declaration, Queue, QueueSettings};

mod apply;
mod checks;

use checks::*;
pub(super) use checks::{
    assert_exchange_equivalent, assert_queue_equivalent, exclusive_lock_error,
};

impl Broker {
    /// A random name with a prefix, as RabbitMQ makes them (`amq.gen-…`, `amq.ctag-…`).
    pub(super) fn generate_name(&mut self, prefix: &str) -> String {
        let mut raw = [0u8; 16];
        self.rng.fill_bytes(&mut raw);
        format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Fails unless the connection's user has `access` to `name` in its vhost.
    /// RabbitMQ's topic authorisation: on a topic exchange where the user has topic
    /// permissions, a publish's routing key must match the write pattern and a binding's
    /// key the read pattern (elsewhere, and without topic permissions, anything goes).
    pub(super) fn check_topic(
        &self,
        user: &str,
        vhost: &str,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> AmqpResult<()> {
        let Some(p) = self.accounts.users.topic(user, vhost, exchange) else {
            return Ok(());
        };
        let is_topic = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(exchange))
            .is_some_and(|x| x.kind == ExchangeKind::Topic);
        if !is_topic || p.allows(access, routing_key) {
            return Ok(());
        }
        Err(access_refused(format!(
            "access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
        )))
    }

    /// [`Broker::check_topic`] for the user and vhost of a connection.
    pub(super) fn check_topic_access(
        &self,
        conn: ConnId,
        access: Access,
        exchange: &str,
        routing_key: &str,
    ) -> AmqpResult<()> {
        let (vhost, user) = self.open_session(conn)?;
        self.check_topic(&user, &vhost, access, exchange, routing_key)
    }

    pub(super) fn check_access(
        &self,
        conn: ConnId,
        access: Access,
        kind: &str,
        name: &str,
    ) -> AmqpResult<()> {
        let Some((vhost, user)) = self.session(conn) else {
            return Err(command_invalid("connection not open"));
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
            .permissions(&user, &vhost)
            .is_some_and(|p| p.allows(access, name));
        if allowed {
            Ok(())
        } else {
            Err(access_refused(format!(
                "access to {} refused for user '{user}'",
                resource(kind, name, &vhost)
            )))
        }
    }

    /// Resolves the empty queue name to the channel's last declared queue.
    pub(super) fn expand_queue_name(
        &self,
        conn: ConnId,
        channel: u16,
        name: &str,
    ) -> AmqpResult<String> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        let last = self
            .sessions
            .conns
            .get(&conn)
            .and_then(|c| c.channels.get(&channel))
            .map(|ch| ch.last_queue.clone())
            .unwrap_or_default();
        if last.is_empty() {
            Err(not_found("no previously declared queue"))
        } else {
            Ok(last)
        }
    }

    /// A queue the connection may read from (consume, get, purge), by the name a method
    /// gave (empty: the channel's last declared queue): its id, name and vhost.
    pub(super) fn readable_queue(
        &self,
        conn: ConnId,
        channel: u16,
        name: &str,
    ) -> AmqpResult<(QueueId, String, Arc<str>)> {
        let (vhost, _) = self.open_session(conn)?;
        let name = self.expand_queue_name(conn, channel, name)?;
        let id = self.usable_queue(conn, &vhost, &name)?;
        self.check_access(conn, Access::Read, "queue", &name)?;
        Ok((id, name, vhost))
    }

    /// Finds a queue the connection may use: 404 if missing, 405 if another connection's
    /// exclusive queue.
    pub(super) fn usable_queue(
        &self,
        conn: ConnId,
        vhost: &str,
        name: &str,
    ) -> AmqpResult<QueueId> {
        let id = self
            .topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.queues.get(name))
            .copied()
            .ok_or_else(|| not_found(format!("no {}", resource("queue", name, vhost))))?;
        let q = self
            .topology
            .queues
            .get(&id)
            .ok_or_else(|| not_found(format!("no {}", resource("queue", name, vhost))))?;
        if q.decl.exclusive_owner.is_some_and(|owner| owner != conn) {
            return Err(exclusive_lock_error(name, vhost));
        }
        Ok(id)
    }

    fn exchange_exists(&self, vhost: &str, name: &str) -> AmqpResult<&Exchange> {
        self.topology
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(name))
            .ok_or_else(|| not_found(format!("no {}", resource("exchange", name, vhost))))
    }

    // ----- exchange.* -----

    pub(super) fn exchange_declare(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: ExchangeDeclare,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let name = strip_cr_lf(&m.exchange);
        if m.passive {
            if name.is_empty() {
                return Err(access_refused(
                    "operation not permitted on the default exchange",
                ));
            }
            self.exchange_exists(&vhost, &name)?;
            return self.reply(
                conn,
                channel,
                m.nowait,
                Method::ExchangeDeclareOk(ExchangeDeclareOk {}),
            );
        }
        let (kind, delayed) =
            ExchangeKind::parse_declared(&m.kind, &m.arguments).map_err(|e| match e {
                Some(text) => precondition_failed(text),
                None => command_invalid(format!("invalid exchange type '{}'", m.kind)),
            })?;
        if name.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Configure, "exchange", &name)?;
        let nowait = m.nowait;
        let v = self
            .topology
            .vhosts
            .get(&*vhost)
            .ok_or_else(|| not_allowed("vhost gone"))?;
        match v.exchanges.get(&name) {
            Some(x) => assert_exchange_equivalent(x, (kind, delayed), &m, &vhost)?,
            None => {
                self.check_new_exchange(conn, &vhost, &name, &m)?;
                self.add_exchange(&vhost, name, (kind, delayed), m)?;
            }
        }
        self.reply(
            conn,
            channel,
            nowait,
            Method::ExchangeDeclareOk(ExchangeDeclareOk {}),
        )
    }

    /// Refuses an exchange `exchange.declare` would create: a reserved name, one past the
    /// vhost's limit, arguments past the table limits, or an alternate exchange the
    /// declarer may not use.
    fn check_new_exchange(
        &self,
        conn: ConnId,
        vhost: &str,
        name: &str,
        m: &ExchangeDeclare,
    ) -> AmqpResult<()> {
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        let max = self.config.limits.max_exchanges_per_vhost;
        if self
            .topology
            .vhosts
            .get(vhost)
            .is_some_and(|v| v.exchanges.len() >= max)
        {
            return Err(not_allowed(format!(
                "exchange limit of {max} in vhost '{vhost}' reached"
            )));
        }
        check_table_limits(&m.arguments, "exchange", name, vhost)?;
        if let Ok((kind, _)) = ExchangeKind::parse_declared(&m.kind, &m.arguments) {
            kind.check_arguments(&m.arguments)
                .map_err(precondition_failed)?;
        }
        if let Some(ae) = m.arguments.get("alternate-exchange") {
            let Some(ae) = ae.as_str() else {
                return Err(precondition_failed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in {}",
                    super::queue::type_name(ae),
                    resource("exchange", name, vhost)
                )));
            };
            // Unroutable messages are published to it on the declarer's behalf.
            self.check_access(conn, Access::Read, "exchange", name)?;
            self.check_access(conn, Access::Write, "exchange", ae)?;
        }
        Ok(())
    }

    /// Creates the exchange an `exchange.declare` asked for, and stores it if durable.
    pub(super) fn add_exchange(
        &mut self,
        vhost: &str,
        name: String,
        (kind, delayed): (ExchangeKind, bool),
        m: ExchangeDeclare,
    ) -> AmqpResult<()> {
        let Some(v) = self.topology.vhosts.get_mut(vhost) else {
            return Err(not_allowed("vhost gone"));
        };
        let mut x = Exchange::new(
            &name,
            kind,
            m.durable,
            m.auto_delete,
            m.internal,
            m.arguments.clone(),
        );
        v.policies
            .applied(&name, Target::Exchange)
            .apply_to_exchange(&mut x);
        x.delayed = delayed;
        let type_name = x.type_name();
        v.exchanges.insert(name.clone(), x);
        if m.durable {
            self.round
                .journal
                .push(StoreOp::PutExchange(ExchangeRecord {
                    vhost: vhost.to_string(),
                    name,
                    kind: type_name.into(),
                    auto_delete: m.auto_delete,
                    internal: m.internal,
                    arguments: m.arguments,
                }));
        }
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: ExchangeDelete,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let name = strip_cr_lf(&m.exchange);
        if name.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Configure, "exchange", &name)?;
        if name.starts_with("amq.") {
            return Err(access_refused(format!(
                "deletion of system {} not allowed",
                resource("exchange", &name, &vhost)
            )));
        }
        if let Some(x) = self
            .topology
            .vhosts
            .get(&*vhost)
            .and_then(|v| v.exchanges.get(&name))
        {
            if m.if_unused && x.binding_count() > 0 {
                return Err(precondition_failed(format!(
                    "{} in use",
                    resource("exchange", &name, &vhost)
                )));
            }
            self.delete_exchange(&vhost, &name);
        }
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::ExchangeDeleteOk(ExchangeDeleteOk {}),
        )
    }

    pub(super) fn exchange_bind(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: ExchangeBind,
        bind: bool,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        if m.source.is_empty() || m.destination.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Write, "exchange", &m.destination)?;
        self.check_access(conn, Access::Read, "exchange", &m.source)?;
        self.check_topic_access(conn, Access::Read, &m.source, &m.routing_key)?;
        if bind {
            self.exchange_exists(&vhost, &m.source)?;
            self.exchange_exists(&vhost, &m.destination)?;
        }
        // Unbinding is idempotent, as in RabbitMQ: a binding whose exchanges are gone is
        // gone too, and removing it succeeds.
        check_table_limits(&m.arguments, "exchange", &m.destination, &vhost)?;
        let binding = Binding {
            destination: Destination::Exchange(m.destination.clone()),
            routing_key: m.routing_key,
            arguments: m.arguments,
        };
        if bind {
            self.add_binding(&vhost, &m.source, binding)?;
            self.reply(
                conn,
                channel,
                m.nowait,
                Method::ExchangeBindOk(ExchangeBindOk {}),
            )
        } else {
            self.remove_binding(&vhost, &m.source, &binding);
            self.reply(
                conn,
                channel,
                m.nowait,
                Method::ExchangeUnbindOk(ExchangeUnbindOk {}),
            )
        }
    }

    // ----- queue.* -----

    pub(super) fn queue_declare(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueDeclare,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let requested = strip_cr_lf(&m.queue);
        // RabbitMQ answers a declare of the reply-to pseudo-queue, passive or not, as it
        // answers a passive one.
        if let Some(answer) = self.reply_declare(conn, channel, &requested, m.nowait) {
            return answer;
        }
        if m.passive {
            let name = self.expand_queue_name(conn, channel, &requested)?;
            let id = self.usable_queue(conn, &vhost, &name)?;
            return self.declare_ok(conn, channel, id, m.nowait);
        }
        let name = if requested.is_empty() {
            self.generate_name("amq.gen-")
        } else if requested.starts_with("amq.") {
            return Err(access_refused(format!(
                "queue name '{requested}' contains reserved prefix 'amq.*'"
            )));
        } else {
            requested
        };
        self.check_access(conn, Access::Configure, "queue", &name)?;
        let existing = self
            .topology
            .vhosts
            .get(&*vhost)
            .and_then(|v| v.queues.get(&name))
            .copied();
        let id = match existing {
            Some(id) => {
                let q = self
                    .topology
                    .queues
                    .get(&id)
                    .ok_or_else(|| not_found("queue vanished"))?;
                // RabbitMQ's strict check: the owner must be this connection if the
                // declare says exclusive, and no one if it does not.
                if q.decl.exclusive_owner != m.exclusive.then_some(conn) {
                    return Err(exclusive_lock_error(&name, &vhost));
                }
                assert_queue_equivalent(q, &m, &vhost)?;
                id
            }
            None => {
                if let Some(dlx) = m
                    .arguments
                    .get("x-dead-letter-exchange")
                    .and_then(|v| v.as_str())
                {
                    // Dead letters are published to the exchange on the declarer's behalf.
                    self.check_access(conn, Access::Read, "queue", &name)?;
                    self.check_access(conn, Access::Write, "exchange", dlx)?;
                }
                self.create_queue(conn, &vhost, &name, &m)?
            }
        };
        if let Some(ch) = self.channel_mut(conn, channel) {
            ch.last_queue = name;
        }
        self.touch_queue(id);
        self.declare_ok(conn, channel, id, m.nowait)
    }

    pub(super) fn create_queue(
        &mut self,
        conn: ConnId,
        vhost: &str,
        name: &str,
        m: &QueueDeclare,
    ) -> AmqpResult<QueueId> {
        self.check_queue_limit(vhost, name)?;
        check_table_limits(&m.arguments, "queue", name, vhost)?;
        let settings = QueueSettings::from_arguments(&m.arguments, name, vhost)?;
        validate_queue_type(m, name, vhost)?;
        if self.topology.queues.len() >= self.config.limits.max_queues {
            return Err(precondition_failed(format!(
                "cannot declare {}: the broker's limit of {} queues is reached",
                resource("queue", name, vhost),
                self.config.limits.max_queues
            )));
        }
        let id = self.topology.next_queue_id;
        self.topology.next_queue_id += 1;
        let mut decl = Declaration {
            name: name.to_string(),
            vhost: vhost.to_string(),
            // An exclusive durable queue is not stored, so it must not store messages
            // either.
            durable: m.durable && !m.exclusive,
            exclusive_owner: m.exclusive.then_some(conn),
            auto_delete: m.auto_delete,
            arguments: m.arguments.clone(),
            declared: settings.clone(),
            policy: Default::default(),
            settings,
        };
        if let Some(v) = self.topology.vhosts.get(vhost) {
            v.policies
                .applied(name, Target::Queue)
                .apply_to_queue(&mut decl);
        }
        let q = Queue::new(id, decl, self.topology.meter.clone(), self.now_ms);
        if m.exclusive {
            if let Some(c) = self.sessions.conns.get_mut(&conn) {
                c.exclusive_queues.push(id);
            }
        } else if m.durable {
            // Exclusive queues die with their connection, so they are never stored.
            self.round.journal.push(StoreOp::PutQueue(QueueRecord {
                vhost: vhost.to_string(),
                name: name.to_string(),
                id,
                auto_delete: m.auto_delete,
                arguments: m.arguments.clone(),
            }));
        }
        self.topology.queues.insert(id, q);
        if let Some(v) = self.topology.vhosts.get_mut(vhost) {
            v.queues.insert(name.to_string(), id);
        }
        Ok(id)
    }

    fn declare_ok(
        &mut self,
        conn: ConnId,
        channel: u16,
        id: QueueId,
        nowait: bool,
    ) -> AmqpResult<()> {
        let q = self
            .topology
            .queues
            .get(&id)
            .ok_or_else(|| not_found("queue vanished"))?;
        let ok = QueueDeclareOk {
            queue: q.decl.name.clone(),
            message_count: q.ready_count() as u32,
            consumer_count: q.consumers.len() as u32,
        };
        self.reply(conn, channel, nowait, Method::QueueDeclareOk(ok))
    }

    pub(super) fn queue_bind(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueBind,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let queue = self.expand_queue_name(conn, channel, &m.queue)?;
        // With both the queue and the key empty, the key is the last declared queue's name.
        let routing_key = if m.queue.is_empty() && m.routing_key.is_empty() {
            queue.clone()
        } else {
            m.routing_key
        };
        let binding =
            self.queue_binding(conn, &vhost, &m.exchange, &queue, routing_key, m.arguments)?;
        self.add_binding(&vhost, &m.exchange, binding)?;
        self.reply(conn, channel, m.nowait, Method::QueueBindOk(QueueBindOk {}))
    }

    pub(super) fn queue_unbind(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueUnbind,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let queue = self.expand_queue_name(conn, channel, &m.queue)?;
        // Unbinding is idempotent, as in RabbitMQ: with the exchange or the queue gone, the
        // binding is gone and the unbind succeeds (after the same permission checks).
        let gone = self.exchange_exists(&vhost, &m.exchange).is_err()
            || self
                .topology
                .vhosts
                .get(&*vhost)
                .is_none_or(|v| !v.queues.contains_key(&queue));
        if gone && !m.exchange.is_empty() {
            self.check_access(conn, Access::Write, "queue", &queue)?;
            self.check_access(conn, Access::Read, "exchange", &m.exchange)?;
            check_table_limits(&m.arguments, "queue", &queue, &vhost)?;
        } else {
            let binding = self.queue_binding(
                conn,
                &vhost,
                &m.exchange,
                &queue,
                m.routing_key,
                m.arguments,
            )?;
            self.remove_binding(&vhost, &m.exchange, &binding);
        }
        self.reply(
            conn,
            channel,
            false,
            Method::QueueUnbindOk(QueueUnbindOk {}),
        )
    }

    /// Checks a queue binding's participants and permissions, in RabbitMQ's order.
    fn queue_binding(
        &self,
        conn: ConnId,
        vhost: &str,
        exchange: &str,
        queue: &str,
        routing_key: String,
        arguments: FieldTable,
    ) -> AmqpResult<Binding> {
        if exchange.is_empty() {
            return Err(access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        self.check_access(conn, Access::Write, "queue", queue)?;
        self.check_access(conn, Access::Read, "exchange", exchange)?;
        self.exchange_exists(vhost, exchange)?;
        self.check_topic_access(conn, Access::Read, exchange, &routing_key)?;
        let id = self.usable_queue(conn, vhost, queue)?;
        check_table_limits(&arguments, "queue", queue, vhost)?;
        Ok(Binding {
            destination: Destination::Queue(id),
            routing_key,
            arguments,
        })
    }

    pub(super) fn queue_purge(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueuePurge,
    ) -> AmqpResult<()> {
        let (id, _, _) = self.readable_queue(conn, channel, &m.queue)?;
        let count = self.purge_ready(id) as u32;
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::QueuePurgeOk(QueuePurgeOk {
                message_count: count,
            }),
        )
    }

    pub(super) fn queue_delete(
        &mut self,
        conn: ConnId,
        channel: u16,
        m: QueueDelete,
    ) -> AmqpResult<()> {
        let (vhost, _) = self.open_session(conn)?;
        let name = self.expand_queue_name(conn, channel, &m.queue)?;
        self.check_access(conn, Access::Configure, "queue", &name)?;
        let count = match self.usable_queue(conn, &vhost, &name) {
            Ok(id) => {
                let q = self
                    .topology
                    .queues
                    .get(&id)
                    .ok_or_else(|| not_found("queue vanished"))?;
                if m.if_unused && !q.consumers.is_empty() {
                    return Err(precondition_failed(format!(
                        "{} in use",
                        resource("queue", &name, &vhost)
                    )));
                }
                if m.if_empty && q.ready_count() > 0 {
                    return Err(precondition_failed(format!(
                        "{} is not empty",
                        resource("queue", &name, &vhost)
                    )));
                }
                self.delete_queue(id)
            }
            // Deleting a queue that does not exist succeeds, as in RabbitMQ.
            Err(e) if e.code == crate::proto::constants::NOT_FOUND => 0,
            Err(e) => return Err(e),
        };
        self.reply(
            conn,
            channel,
            m.nowait,
            Method::QueueDeleteOk(QueueDeleteOk {
                message_count: count as u32,
            }),
        )
    }

    /// Sends a reply unless the client asked for none.
    pub(super) fn reply(
        &mut self,
        conn: ConnId,
        channel: u16,
        nowait: bool,
        method: Method,
    ) -> AmqpResult<()> {
        if !nowait {
            self.send_method(conn, channel, method);
        }
        Ok(())
    }
}
