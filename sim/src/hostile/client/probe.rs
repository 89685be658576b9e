//! The direct-delivery probe: on a channel of its own, which no hostile action touches, a
//! hostile client consumes (no-ack) from an exclusive queue with `x-max-length` 0 (drop
//! head) and now and then publishes one small message to it. A queue offers a message
//! to a consumer that can take it before its length limit counts it, as RabbitMQ does,
//! so every such message must arrive: one that has not arrived within
//! [`PROBE_DELIVERED_WITHIN_MS`] on a live connection was dropped.
//!
//! The probe runs only where the broker's per-connection output limit is the default:
//! with a small one, the consumer's connection is often too far behind to take a
//! message, and the queue rightly drops it.

use rand::Rng;

use warren::proto::method::*;
use warren::proto::props::BasicProperties;
use warren::proto::table::{FieldTable, FieldValue};

use super::{CH_PROBE, ChanState, HOSTILE_ID_PREFIX, HostileClient, hostile_key};
use crate::workload::{body_for, correlation_for};

/// How long a probe message may take to arrive on a live connection. Memory and disk
/// alarms block the publisher for up to 1.5 s a window.
const PROBE_DELIVERED_WITHIN_MS: u64 = 5_000;

/// The probe's consumer tag.
const PROBE_TAG: &str = "probe";

/// The probe's state in one session.
#[derive(Debug, Default)]
pub(super) struct Probe {
    /// The message in flight: its id and when it was published.
    waiting: Option<(String, u64)>,
}

impl HostileClient {
    /// The probe's queue: in the client's own namespace, exclusive to its connection.
    fn probe_queue(&self) -> String {
        format!("h{}.direct", self.id)
    }

    /// Opens the probe's channel, declares its queue and consumes from it, in one write;
    /// again after the broker closed the channel (a previous session's exclusive queue
    /// may still hold the name for a moment).
    pub(super) fn probe_setup(&mut self, now_ms: u64) {
        if !self.probe_on {
            return;
        }
        let queue = self.probe_queue();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if !s
            .chan(CH_PROBE)
            .is_some_and(|c| c.state == ChanState::Closed)
        {
            return;
        }
        s.probe = Probe::default();
        let limit: FieldTable = [("x-max-length".to_string(), FieldValue::I32(0))]
            .into_iter()
            .collect();
        let methods = [
            Method::ChannelOpen(ChannelOpen::default()),
            Method::QueueDeclare(QueueDeclare {
                queue: queue.clone(),
                exclusive: true,
                arguments: limit,
                ..Default::default()
            }),
            Method::BasicConsume(BasicConsume {
                queue,
                consumer_tag: PROBE_TAG.into(),
                no_ack: true,
                ..Default::default()
            }),
        ];
        for m in &methods {
            s.send(CH_PROBE, m, now_ms);
        }
        if let Some(ch) = s.chan(CH_PROBE) {
            ch.state = ChanState::Opening;
            ch.opened_ms = now_ms;
        }
    }

    /// Fails if the message in flight is overdue; otherwise now and then publishes the
    /// next one once the consumer is in place.
    pub(super) fn probe_tick(&mut self, now_ms: u64) -> Result<(), String> {
        let queue = self.probe_queue();
        let id = self.id;
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if let Some((msg_id, sent_ms)) = &s.probe.waiting {
            if now_ms.saturating_sub(*sent_ms) > PROBE_DELIVERED_WITHIN_MS {
                return Err(format!(
                    "hostile client {id}: {msg_id}, published at {sent_ms} ms to {queue} \
                     (x-max-length 0) while its no-ack consumer waited, has not arrived at \
                     {now_ms} ms: the queue dropped what a consumer could take"
                ));
            }
            return Ok(());
        }
        let consuming = s.open(CH_PROBE)
            && s.chan(CH_PROBE)
                .is_some_and(|c| c.consumers.iter().any(|t| t == PROBE_TAG));
        if !consuming || !self.g.rng.gen_ratio(1, 10) {
            return Ok(());
        }
        let msg_id = format!("{HOSTILE_ID_PREFIX}{}.{}", self.id, self.next_msg);
        self.next_msg += 1;
        let props = BasicProperties {
            delivery_mode: Some(1),
            message_id: Some(msg_id.as_str().into()),
            correlation_id: correlation_for(hostile_key(&msg_id)),
            ..Default::default()
        };
        let body = body_for(hostile_key(&msg_id), 8);
        let publish = Method::BasicPublish(BasicPublish {
            routing_key: queue,
            ..Default::default()
        });
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        s.link
            .send_content(CH_PROBE, &publish, &props, &body, now_ms);
        s.probe.waiting = Some((msg_id, now_ms));
        self.stats.probes += 1;
        Ok(())
    }

    /// A delivery on the probe's channel: the message in flight arrived.
    pub(super) fn probe_delivered(&mut self, msg_id: &str) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.probe.waiting.as_ref().is_some_and(|(w, _)| w == msg_id) {
            s.probe.waiting = None;
            self.stats.probes_delivered += 1;
        }
    }
}
