//! Resource alarms on a real server: with the disk alarm in force from the start, a
//! publisher is blocked after its first publish while a consumer keeps draining.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::{RawClient, Server};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

#[test]
fn disk_alarm_blocks_publishers_and_lets_consumers_drain() {
    let mut config = tempfile::NamedTempFile::new().unwrap();
    // No file system has this much free space: the disk alarm is on from the first check.
    writeln!(config, "disk_free_limit_bytes = {}", 1u64 << 62).unwrap();
    let path = config.path().to_str().unwrap().to_string();
    let server = Server::start_with(&["--config", &path]);
    std::thread::sleep(Duration::from_millis(300));

    let mut consumer = RawClient::open(server.port);
    consumer.open_channel(1);
    consumer.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "alarmed".into(),
            ..Default::default()
        }),
    );
    assert!(matches!(
        consumer.expect_method().1,
        Method::QueueDeclareOk(_)
    ));

    let mut publisher = RawClient::open(server.port);
    publisher.open_channel(1);
    publisher.publish(1, "", "alarmed", BasicProperties::default(), b"first");
    let (ch, m) = publisher.expect_method();
    assert_eq!(ch, 0);
    assert_eq!(
        m,
        Method::ConnectionBlocked(ConnectionBlocked {
            reason: "low on disk".into()
        })
    );
    // Further publishes are not read while blocked.
    publisher.publish(1, "", "alarmed", BasicProperties::default(), b"second");
    std::thread::sleep(Duration::from_millis(200));

    consumer.send_method(
        1,
        Method::BasicGet(BasicGet {
            queue: "alarmed".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let (_, m, _, body) = consumer.expect_content();
    assert!(matches!(m, Method::BasicGetOk(_)));
    assert_eq!(body, b"first");
    consumer.send_method(
        1,
        Method::BasicGet(BasicGet {
            queue: "alarmed".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let (_, m) = consumer.expect_method();
    assert!(
        matches!(m, Method::BasicGetEmpty(_)),
        "the blocked publisher's second message was not taken: {m:?}"
    );
}

#[test]
fn alarms_show_in_the_health_check_and_metrics() {
    use base64::Engine;
    let mut config = tempfile::NamedTempFile::new().unwrap();
    writeln!(config, "disk_free_limit_bytes = {}", 1u64 << 62).unwrap();
    let path = config.path().to_str().unwrap().to_string();
    let server = Server::start_with(&["--config", &path]);
    std::thread::sleep(Duration::from_millis(300));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("guest:guest")
    );
    let mut health = agent
        .get(format!("{}/api/health/checks/alarms", server.http_url()))
        .header("authorization", &auth)
        .call()
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let body = health.body_mut().read_to_string().unwrap();
    assert!(body.contains("\"resource\":\"disk\""), "{body}");
    let metrics = agent
        .get(format!("{}/metrics", server.http_url()))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains("rabbitmq_alarms_free_disk_space_watermark 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rabbitmq_alarms_memory_used_watermark 0"),
        "{metrics}"
    );
}
