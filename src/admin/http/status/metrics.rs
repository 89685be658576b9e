//! `GET /metrics`: the node, its queues and limits in Prometheus text format.

use std::fmt::Write as _;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::Value;

use crate::admin::json::{user_limits_json, vhost_limits_json};
use crate::broker::MessageCounters;
use crate::broker::admin::{AdminReply, AdminRequest, Overview};
use crate::store::{UserLimits, VhostLimits};

use super::super::resources::{queue_infos, queues_json};
use super::super::{ApiError, ApiResult, State};
use super::{memory_used_bytes, open_files, overview_of};

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`: Prometheus text format, unauthenticated like RabbitMQ's
/// rabbitmq_prometheus plugin. Counters carry RabbitMQ's metric names; rates over the
/// last few seconds are given too, as gauges, for scrapers that want them ready-made.
pub(crate) async fn metrics(s: State) -> ApiResult {
    let o = overview_of(&s).await?;
    let queues = queue_infos(&s, None).await?;
    let views = queues_json(&s, &queues);
    let AdminReply::VhostLimits(vhost_limits) = s
        .call(AdminRequest::ListVhostLimits { vhost: None })
        .await?
    else {
        return Err(ApiError::not_found());
    };
    let user_limits = super::super::limits::all_user_limits(&s).await?;
    let mut out = Exposition::default();
    out.node_totals(&o);
    out.message_counters(&o.stats);
    out.node_state(&o);
    out.limits(&vhost_limits, &user_limits);
    out.queues(&views);
    if let Some(view) = &s.cluster {
        out.cluster(view);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.text,
    )
        .into_response())
}

/// Prometheus text being written, one metric family at a time.
#[derive(Default)]
pub(super) struct Exposition {
    pub(super) text: String,
}

/// A node-wide family of one sample: name, type, help and value.
type Single = (&'static str, &'static str, &'static str, u64);

/// A per-queue family: name, type, help, and the path of its value in the queue's JSON.
type PerQueue = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
);

/// The per-queue families, in the order they are written.
const QUEUE_FAMILIES: [PerQueue; 10] = [
    (
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Ready messages",
        &["messages_ready"],
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Unacknowledged messages",
        &["messages_unacknowledged"],
    ),
    (
        "rabbitmq_queue_messages",
        "gauge",
        "Ready and unacknowledged messages",
        &["messages"],
    ),
    (
        "rabbitmq_queue_consumers",
        "gauge",
        "Consumers",
        &["consumers"],
    ),
    (
        "rabbitmq_queue_messages_published_total",
        "counter",
        "Messages that entered the queue",
        &["message_stats", "publish"],
    ),
    (
        "rabbitmq_queue_messages_delivered_total",
        "counter",
        "Deliveries and gets from the queue",
        &["message_stats", "deliver_get"],
    ),
    (
        "rabbitmq_queue_messages_acked_total",
        "counter",
        "Acknowledgements of the queue's messages",
        &["message_stats", "ack"],
    ),
    (
        "warren_queue_publish_rate",
        "gauge",
        "Messages entering the queue per second (last ~5 s)",
        &["message_stats", "publish_details", "rate"],
    ),
    (
        "warren_queue_deliver_get_rate",
        "gauge",
        "Deliveries and gets per second (last ~5 s)",
        &["message_stats", "deliver_get_details", "rate"],
    ),
    (
        "warren_queue_ack_rate",
        "gauge",
        "Acknowledgements per second (last ~5 s)",
        &["message_stats", "ack_details", "rate"],
    ),
];

impl Exposition {
    /// Writes one family: its help, its type and its samples (`labels`, value).
    pub(super) fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let out = &mut self.text;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    }

    /// Writes families of one unlabelled sample each.
    pub(super) fn singles(&mut self, families: &[Single]) {
        for &(name, kind, help, value) in families {
            self.family(name, kind, help, &[(String::new(), value as f64)]);
        }
    }

    /// Connections, channels, consumers, queues and messages of the node.
    fn node_totals(&mut self, o: &Overview) {
        self.singles(&[
            (
                "rabbitmq_connections",
                "gauge",
                "Open client connections",
                o.connections,
            ),
            ("rabbitmq_channels", "gauge", "Open channels", o.channels),
            ("rabbitmq_consumers", "gauge", "Consumers", o.consumers),
            ("rabbitmq_queues", "gauge", "Queues", o.queues),
            (
                "rabbitmq_queue_messages_ready_total",
                "gauge",
                "Ready messages in all queues",
                o.messages_ready,
            ),
            (
                "rabbitmq_queue_messages_unacked_total",
                "gauge",
                "Delivered, unacknowledged messages of all queues",
                o.messages_unacknowledged,
            ),
        ]);
    }

    /// The node's message counters.
    fn message_counters(&mut self, c: &MessageCounters) {
        self.singles(&[
            (
                "rabbitmq_global_messages_received_total",
                "counter",
                "Messages published",
                c.publish,
            ),
            (
                "rabbitmq_global_messages_delivered_total",
                "counter",
                "Messages delivered to consumers and basic.get",
                c.deliver_get(),
            ),
            (
                "rabbitmq_global_messages_redelivered_total",
                "counter",
                "Messages redelivered",
                c.redeliver,
            ),
            (
                "rabbitmq_global_messages_acknowledged_total",
                "counter",
                "Messages acknowledged",
                c.ack,
            ),
            (
                "rabbitmq_global_messages_confirmed_total",
                "counter",
                "Publisher confirms sent",
                c.confirm,
            ),
            (
                "rabbitmq_global_messages_unroutable_returned_total",
                "counter",
                "Messages that reached no queue",
                c.unroutable,
            ),
        ]);
    }

    /// The alarms, the process's memory and files, and whether the AMQP side runs.
    fn node_state(&mut self, o: &Overview) {
        for (alarm, resource) in [
            ("memory_used_watermark", "memory"),
            ("free_disk_space_watermark", "disk"),
            ("file_descriptor_limit", "file_descriptors"),
        ] {
            self.family(
                &format!("rabbitmq_alarms_{alarm}"),
                "gauge",
                "1 while the alarm is in effect",
                &[(
                    String::new(),
                    u64::from(o.alarms.iter().any(|a| a == resource)) as f64,
                )],
            );
        }
        self.singles(&[
            (
                "rabbitmq_process_resident_memory_bytes",
                "gauge",
                "Resident memory",
                memory_used_bytes(),
            ),
            (
                "rabbitmq_process_open_fds",
                "gauge",
                "Open file descriptors",
                open_files(),
            ),
            (
                "warren_app_running",
                "gauge",
                "1 while the AMQP side runs (not stopped by stop_app)",
                u64::from(o.app_running),
            ),
        ]);
    }

    /// The limits set on vhosts and on users.
    fn limits(&mut self, vhosts: &[(String, VhostLimits)], users: &[(String, UserLimits)]) {
        let vhosts: Vec<(&str, Value)> = vhosts
            .iter()
            .map(|(v, l)| (v.as_str(), vhost_limits_json(l)))
            .collect();
        self.family(
            "warren_vhost_limit",
            "gauge",
            "Limits set on vhosts (set_vhost_limits); a negative value does not limit",
            &limit_samples("vhost", &vhosts),
        );
        let users: Vec<(&str, Value)> = users
            .iter()
            .map(|(u, l)| (u.as_str(), user_limits_json(l)))
            .collect();
        self.family(
            "warren_user_limit",
            "gauge",
            "Limits set on users (set_user_limits); a negative value does not limit",
            &limit_samples("user", &users),
        );
    }

    /// The per-queue families, one sample per queue in each.
    fn queues(&mut self, views: &[Value]) {
        let labels: Vec<String> = views
            .iter()
            .map(|q| {
                format!(
                    "{{vhost=\"{}\",queue=\"{}\"}}",
                    escape_label(q["vhost"].as_str().unwrap_or("")),
                    escape_label(q["name"].as_str().unwrap_or(""))
                )
            })
            .collect();
        for (name, kind, help, path) in QUEUE_FAMILIES {
            let samples: Vec<(String, f64)> = views
                .iter()
                .zip(&labels)
                .map(|(q, labels)| {
                    let value = path.iter().fold(q, |v, key| &v[*key]);
                    (labels.clone(), value.as_f64().unwrap_or(0.0))
                })
                .collect();
            self.family(name, kind, help, &samples);
        }
    }
}

/// One sample per limit of each owner (a vhost or a user), labelled with both.
fn limit_samples(owner: &str, entries: &[(&str, Value)]) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for (name, limits) in entries {
        for (limit, value) in limits.as_object().into_iter().flatten() {
            samples.push((
                format!("{{{owner}=\"{}\",limit=\"{limit}\"}}", escape_label(name)),
                value.as_f64().unwrap_or(0.0),
            ));
        }
    }
    samples
}
