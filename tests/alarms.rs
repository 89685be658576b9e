//! Resource alarms on a real server: with the disk alarm in force from the start, a
//! publisher is blocked after its first publish while a consumer keeps draining; with the
//! memory alarm in force, a consumer that acks nothing does not pull a paged backlog into
//! memory.

mod common;

use std::io::Write as _;
use std::time::Duration;

use common::{RawClient, Server};
use warren::proto::method::*;
use warren::proto::props::BasicProperties;

/// A config file holding `text`, and its path (the file lives as long as the handle).
fn config_file(text: &str) -> (tempfile::NamedTempFile, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{text}").unwrap();
    let path = file.path().to_str().unwrap().to_string();
    (file, path)
}

/// No file system has this much free space: the disk alarm is on from the first check.
const DISK_ALARM: &str = "disk_free_limit_bytes = 4611686018427387904";

#[test]
fn disk_alarm_blocks_publishers_and_lets_consumers_drain() {
    let (_config, path) = config_file(DISK_ALARM);
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
    let (_config, path) = config_file(DISK_ALARM);
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

/// Deliveries that arrive on `client` until it has been quiet for `quiet`: their delivery
/// tags, in order.
fn deliveries_until_quiet(client: &mut RawClient, quiet: Duration) -> Vec<u64> {
    client.stream.set_read_timeout(Some(quiet)).unwrap();
    let mut tags = Vec::new();
    loop {
        match client.try_recv_frame() {
            Ok(Some(warren::proto::frame::Frame::Method {
                method: Method::BasicDeliver(d),
                ..
            })) => tags.push(d.delivery_tag),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the server closed the connection"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }
    client
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tags
}

#[test]
fn under_the_memory_alarm_a_consumer_that_acks_nothing_does_not_pull_the_paged_backlog() {
    const BACKLOG: u64 = 6_000;
    let (_budget, budget_path) = config_file("queue_memory_budget_bytes = 65536");
    let server = Server::start_with(&["--config", &budget_path]);
    let mut publisher = RawClient::open(server.port);
    publisher.open_channel(1);
    publisher.send_method(
        1,
        Method::QueueDeclare(QueueDeclare {
            queue: "backlog".into(),
            durable: true,
            ..Default::default()
        }),
    );
    assert!(matches!(
        publisher.expect_method().1,
        Method::QueueDeclareOk(_)
    ));
    publisher.send_method(1, Method::ConfirmSelect(ConfirmSelect::default()));
    assert!(matches!(
        publisher.expect_method().1,
        Method::ConfirmSelectOk(_)
    ));
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    for _ in 0..BACKLOG {
        publisher.publish(1, "", "backlog", persistent.clone(), &[7u8; 1024]);
    }
    loop {
        match publisher.expect_method().1 {
            Method::BasicAck(a) if a.delivery_tag == BACKLOG => break,
            Method::BasicAck(_) => {}
            other => panic!("expected confirms, got {other:?}"),
        }
    }
    let (dir, _) = server.terminate(Duration::from_secs(10));

    // Back up with the memory alarm in force from the first reading: the head of the
    // queue is read back at start, the rest stays in the store until consumers near it.
    let (_alarm, alarm_path) =
        config_file("queue_memory_budget_bytes = 65536\nmemory_high_watermark = 0.000001");
    let server = Server::start_in(dir, &["--config", &alarm_path]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut hoarder = RawClient::open(server.port);
    hoarder.open_channel(1);
    hoarder.send_method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "backlog".into(),
            consumer_tag: "hoard".into(),
            ..Default::default()
        }),
    );
    let first = deliveries_until_quiet(&mut hoarder, Duration::from_millis(1500));
    assert!(
        !first.is_empty() && (first.len() as u64) < BACKLOG / 4,
        "a consumer that acks nothing took {} of {BACKLOG} under the memory alarm",
        first.len()
    );
    // Acking lets the queue read a little more, and then it holds back again.
    hoarder.send_method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: *first.last().unwrap(),
            multiple: true,
        }),
    );
    let second = deliveries_until_quiet(&mut hoarder, Duration::from_millis(1500));
    assert!(
        !second.is_empty() && ((first.len() + second.len()) as u64) < BACKLOG / 2,
        "after acking everything, {} more arrived of the {} left",
        second.len(),
        BACKLOG - first.len() as u64
    );
    println!(
        "under the memory alarm: {} delivered, then {} more once they were acked, of {BACKLOG}",
        first.len(),
        second.len()
    );
}
