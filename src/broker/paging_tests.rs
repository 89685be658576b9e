//! Tests of paging and of the store contract, driving the broker with an in-memory store
//! the way the server drives it with fjall.

use crate::broker::test_rig::{HeldRead, Rig, delivered, small_budget};
use crate::broker::{BrokerConfig, Output};
use crate::proto::command::{Command, Reply};
use crate::proto::method::*;
use crate::store::Store;

const N: u32 = 3000;

#[test]
fn a_transient_backlog_beyond_the_budget_is_paged_and_read_back_in_order() {
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "q", false);
    for i in 0..N {
        rig.publish(1, "", "q", i, false);
    }
    assert_eq!(rig.message_count(1, "q"), N);
    let budget = rig.broker.config().memory.queue_memory_budget_bytes;
    assert!(
        rig.broker.memory_bytes() <= budget + 1024,
        "memory {} over budget {budget}",
        rig.broker.memory_bytes()
    );
    assert!(
        rig.store.state().paged_count() as u32 > N / 2,
        "most of the backlog is in the store"
    );
    for i in 0..N {
        assert_eq!(rig.get(1, "q"), Some((i, false)), "message {i}");
    }
    assert_eq!(rig.get(1, "q"), None);
    assert_eq!(
        rig.store.state().paged_count(),
        0,
        "paged messages are forgotten once read back"
    );
    rig.broker.check_invariants();
}

#[test]
fn a_persistent_backlog_stays_in_the_store_and_consumers_get_it_in_order() {
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "dq", true);
    for i in 0..N {
        rig.publish(1, "", "dq", i, true);
    }
    assert_eq!(rig.store.state().entry_count() as u32, N);
    assert_eq!(
        rig.store.state().paged_count(),
        0,
        "durable entries are not written twice"
    );
    let r = rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "dq".into(),
            no_ack: true,
            ..Default::default()
        }),
    );
    let mut got: Vec<u32> = r
        .iter()
        .filter_map(|(_, r)| match r {
            Reply::Content { message, .. } | Reply::Deliver { message, .. } => Some(
                u32::from_be_bytes(message.body.as_ref().try_into().unwrap()),
            ),
            _ => None,
        })
        .collect();
    // Each read of a batch delivers more; the rig answers reads at once, so one drain
    // delivers everything.
    got.dedup();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(rig.store.state().entry_count(), 0);
    rig.broker.check_invariants();
}

#[test]
fn purge_drops_the_paged_tail_too() {
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "q", false);
    rig.declare(1, "dq", true);
    for i in 0..N {
        rig.publish(1, "", "q", i, false);
        rig.publish(1, "", "dq", i, true);
    }
    for q in ["q", "dq"] {
        let r = rig.method(
            1,
            Method::QueuePurge(QueuePurge {
                queue: q.into(),
                ..Default::default()
            }),
        );
        assert!(
            r.iter().any(|(_, r)| matches!(r, Reply::Method { method: Method::QueuePurgeOk(ok), .. } if ok.message_count == N)),
            "{r:?}"
        );
        assert_eq!(rig.get(1, q), None);
    }
    assert_eq!(rig.store.state().paged_count(), 0);
    assert_eq!(rig.store.state().entry_count(), 0);
    // The queue keeps working after a purge of its paged tail.
    rig.publish(1, "", "q", 7, false);
    assert_eq!(rig.get(1, "q"), Some((7, false)));
}

#[test]
fn recovery_reads_a_head_and_the_rest_on_demand_all_flagged_redelivered() {
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "dq", true);
    for i in 0..N {
        rig.publish(1, "", "dq", i, true);
    }
    let mut rig = rig.restart();
    rig.open(2);
    assert_eq!(rig.message_count(2, "dq"), N);
    assert!(
        rig.broker.memory_bytes() < 200 * 1024,
        "only the head was read: {}",
        rig.broker.memory_bytes()
    );
    // Published after the restart: behind the recovered backlog, not redelivered.
    rig.publish(2, "", "dq", N, true);
    for i in 0..N {
        assert_eq!(rig.get(2, "dq"), Some((i, true)), "message {i}");
    }
    assert_eq!(rig.get(2, "dq"), Some((N, false)));
    assert_eq!(rig.get(2, "dq"), None);
    assert_eq!(rig.store.state().entry_count(), 0);
}

#[test]
fn a_fanout_message_is_stored_once_and_deleted_with_its_last_reference() {
    let mut rig = Rig::new(BrokerConfig::default());
    rig.open(1);
    rig.declare(1, "a", true);
    rig.declare(1, "b", true);
    rig.declare(1, "c", false);
    for q in ["a", "b", "c"] {
        rig.method(
            1,
            Method::QueueBind(QueueBind {
                queue: q.into(),
                exchange: "amq.fanout".into(),
                ..Default::default()
            }),
        );
    }
    rig.publish(1, "amq.fanout", "", 42, true);
    assert_eq!(rig.store.state().shared_count(), 1);
    assert_eq!(
        rig.store.state().entry_count(),
        2,
        "one entry per durable queue"
    );
    assert_eq!(rig.get(1, "a"), Some((42, false)));
    assert_eq!(rig.store.state().shared_count(), 1, "b still refers to it");
    assert_eq!(rig.get(1, "c"), Some((42, false)));
    assert_eq!(rig.get(1, "b"), Some((42, false)));
    assert_eq!(rig.store.state().shared_count(), 0);
    assert_eq!(rig.store.state().entry_count(), 0);
}

#[test]
fn a_get_on_an_empty_head_waits_for_the_next_batch() {
    // A driver slow to answer reads: once memory runs dry, a get must wait for the read,
    // not report an empty queue.
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "q", false);
    for i in 0..N {
        rig.publish(1, "", "q", i, false);
    }
    let ((queue, from_seq, max, max_bytes, epoch), mut next) = park_a_get(&mut rig);
    let entries = rig.store.load(queue, from_seq, max, max_bytes).unwrap();
    rig.broker.handle_loaded(queue, epoch, entries, rig.now);
    let r = rig.drain();
    assert_eq!(
        r.iter()
            .map(|(_, r)| r.clone())
            .filter(|r| matches!(r, Reply::PauseReading(_)))
            .collect::<Vec<_>>(),
        [Reply::PauseReading(false)],
        "the connection was held while its get waited, and is let go"
    );
    let answers: Vec<&Reply> = r
        .iter()
        .map(|(_, r)| r)
        .filter(|r| !matches!(r, Reply::PauseReading(_)))
        .collect();
    assert!(
        matches!(answers.as_slice(), [Reply::Content { message, .. }] if message.body.as_ref() == next.to_be_bytes()),
        "the parked get is answered with the next message: {r:?}"
    );
    next += 1;
    while let Some((i, _)) = rig.get(1, "q") {
        assert_eq!(i, next);
        next += 1;
    }
    assert_eq!(next, N);
}

#[test]
fn commands_behind_a_parked_get_wait_for_it() {
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "q", false);
    for i in 0..N {
        rig.publish(1, "", "q", i, false);
    }
    let ((queue, from_seq, max, max_bytes, epoch), _) = park_a_get(&mut rig);
    // A command behind the parked get gets no answer yet...
    let passive = Method::QueueDeclare(QueueDeclare {
        queue: "q".into(),
        passive: true,
        ..Default::default()
    });
    let r = rig.command(
        1,
        Command::Method {
            channel: 1,
            method: passive,
        },
    );
    assert!(
        r.iter().all(|(_, r)| matches!(r, Reply::PauseReading(_))),
        "answered too early: {r:?}"
    );
    // ...and is answered after the get, once the read is in.
    let entries = rig.store.load(queue, from_seq, max, max_bytes).unwrap();
    rig.broker.handle_loaded(queue, epoch, entries, rig.now);
    let r = rig.drain();
    let order: Vec<&str> = r
        .iter()
        .filter_map(|(_, r)| match r {
            Reply::Content {
                method: Method::BasicGetOk(_),
                ..
            } => Some("get-ok"),
            Reply::Method {
                method: Method::QueueDeclareOk(_),
                ..
            } => Some("declare-ok"),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["get-ok", "declare-ok"]);
}

/// Takes messages with no-ack gets while holding back every read of the store, until
/// memory runs dry and a get parks. Returns the read held back and how many gets were
/// answered (the bodies are 0, 1, ... in order).
fn park_a_get(rig: &mut Rig) -> ((u64, u64, usize, u64, u64), u32) {
    let get = Method::BasicGet(BasicGet {
        queue: "q".into(),
        no_ack: true,
        ..Default::default()
    });
    let mut held_load = None;
    let mut next = 0u32;
    loop {
        rig.now += 1;
        rig.broker.handle_command(
            1,
            Command::Method {
                channel: 1,
                method: get.clone(),
            },
            rig.now,
        );
        let mut answered = false;
        while let Some(out) = rig.broker.poll_output() {
            match out {
                Output::Persist { batch, ops, .. } => {
                    rig.store.write(&ops).unwrap();
                    rig.broker.handle_persisted(batch);
                }
                // Held back: the read is slow.
                Output::Load {
                    queue,
                    from_seq,
                    max,
                    max_bytes,
                    epoch,
                } => held_load = Some((queue, from_seq, max, max_bytes, epoch)),
                Output::Admin { .. } => panic!("no admin requests here"),
                Output::Replies { replies, .. } => {
                    for r in replies {
                        if r == Reply::PauseReading(true) {
                            // The get parked and holds its connection.
                            continue;
                        }
                        let Reply::Content { message, .. } = r else {
                            panic!("unexpected {r:?}")
                        };
                        assert_eq!(message.body.as_ref(), next.to_be_bytes());
                        next += 1;
                        answered = true;
                    }
                }
            }
        }
        if !answered {
            return (held_load.expect("a read was asked for"), next);
        }
        assert!(next < N, "memory never ran dry");
    }
}

/// Page-outs waiting for the store weigh what they hold, properties too: a publisher of
/// empty bodies with 120 KiB of headers is held back once the unsynced writes reach the
/// cap, as one of 120 KiB bodies is (it used to be charged 128 bytes a message, so the
/// job queue to a slow disk grew without bound).
#[test]
fn unsynced_page_outs_weigh_their_headers_and_hold_back_input() {
    use crate::proto::props::BasicProperties;
    use crate::proto::table::{FieldTable, FieldValue};
    use std::sync::Arc;

    let mut config = small_budget();
    config.memory.max_unsynced_store_bytes = 4 * 1024 * 1024;
    let cap = config.memory.max_unsynced_store_bytes;
    let mut rig = Rig::new(config);
    rig.open(1);
    rig.declare(1, "q", false);
    let mut headers = FieldTable::default();
    headers.insert("h", FieldValue::LongStr(vec![b'h'; 120 * 1024].into()));
    let message = Arc::new(crate::proto::command::Message {
        exchange: String::new(),
        routing_key: "q".into(),
        properties: BasicProperties {
            headers: Some(headers),
            ..Default::default()
        },
        body: bytes::Bytes::new(),
    });
    let weight = crate::store::memory_cost(&message);
    // Publish without letting the store answer, as under a disk slower than the client.
    let mut published = 0u64;
    let mut held = Vec::new();
    while rig.broker.wants_input() {
        assert!(published < 1000, "input never held back");
        published += 1;
        rig.broker.handle_command(
            1,
            Command::Publish {
                channel: 1,
                mandatory: false,
                immediate: false,
                message: message.clone(),
            },
            rig.now,
        );
        while let Some(out) = rig.broker.poll_output() {
            if let Output::Persist { batch, ops, .. } = out {
                held.push((batch, ops));
            }
        }
    }
    let budget_messages = 64 * 1024 / weight + 1;
    let unsynced_most = cap / weight + 1;
    assert!(
        published <= budget_messages + unsynced_most + 1,
        "{published} messages of {weight} bytes taken with a cap of {cap}"
    );
    // The store catches up: input is taken again and nothing was lost.
    for (batch, ops) in held {
        rig.store.write(&ops).unwrap();
        rig.store.sync().unwrap();
        rig.broker.handle_persisted(batch);
    }
    rig.drain();
    assert!(rig.broker.wants_input());
    assert_eq!(rig.message_count(1, "q") as u64, published);
    rig.broker.check_invariants();
}

#[test]
fn a_consumer_that_acks_nothing_stops_reading_the_backlog_into_memory_under_the_memory_alarm() {
    use crate::broker::Resource;
    let mut rig = Rig::new(small_budget());
    let budget = rig.broker.config().memory.queue_memory_budget_bytes;
    rig.open(1);
    rig.open(2);
    rig.declare(1, "hoard", false);
    rig.declare(1, "other", false);
    for i in 0..N {
        rig.publish(1, "", "hoard", i, false);
        rig.publish(1, "", "other", i, false);
    }
    assert!(
        rig.store.state().paged_count() as u32 > N,
        "both backlogs are paged"
    );
    rig.broker.handle_alarm(Resource::Memory, true, rig.now);
    rig.drain();

    // Prefetch 0 and manual acks: everything may go out, and nothing comes back.
    let consume = |no_ack: bool, queue: &str| {
        Method::BasicConsume(BasicConsume {
            queue: queue.into(),
            no_ack,
            ..Default::default()
        })
    };
    let mut got = delivered(&rig.method(2, consume(false, "hoard")));
    let held = |rig: &Rig| {
        rig.broker
            .queue("/", "hoard")
            .unwrap()
            .messages
            .unacked_cost
    };
    let one = held(&rig) / got.len() as u64;
    assert!(
        (got.len() as u32) < N && held(&rig) <= 2 * budget + one,
        "under the alarm the backlog was read into unacked deliveries: {} of {N} delivered, {} bytes held against a budget of {budget}",
        got.len(),
        held(&rig)
    );
    assert!(held(&rig) > budget, "reads stopped only past the budget");

    // Another queue's consumer, which holds nothing, still reads its backlog.
    let others = delivered(&rig.method(1, consume(true, "other")));
    assert_eq!(others.len() as u32, N, "the other queue is served whole");

    // Acking brings the queue under its budget: reading resumes, and stops again.
    let (last_tag, _) = *got.last().unwrap();
    let more = delivered(&rig.method(
        2,
        Method::BasicAck(BasicAck {
            delivery_tag: last_tag,
            multiple: true,
        }),
    ));
    assert!(!more.is_empty(), "acks let reading resume");
    assert!(held(&rig) <= 2 * budget + one);
    got.extend(more);
    assert!((got.len() as u32) < N);

    // Once the alarm clears the rest goes out, in order.
    rig.broker.handle_alarm(Resource::Memory, false, rig.now);
    got.extend(delivered(&rig.drain()));
    let bodies: Vec<u32> = got.iter().map(|&(_, b)| b).collect();
    assert_eq!(bodies, (0..N).collect::<Vec<_>>());
    rig.broker.check_invariants();
}

#[test]
fn under_the_stall_a_get_reads_its_message_and_an_ack_frees_another_consumer() {
    use crate::broker::Resource;
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.open(2);
    rig.declare(1, "q", false);
    for i in 0..N {
        rig.publish(1, "", "q", i, false);
    }
    rig.broker.handle_alarm(Resource::Memory, true, rig.now);
    rig.drain();
    // Connection 1 takes what it can and holds it; then it stops consuming.
    let r = rig.method(
        1,
        Method::BasicConsume(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        }),
    );
    let got = delivered(&r);
    let (last_tag, _) = *got.last().unwrap();
    rig.method(
        1,
        Method::BasicCancel(BasicCancel {
            consumer_tag: "c".into(),
            ..Default::default()
        }),
    );
    // A get on the same connection finds nothing in memory, and its reads are held
    // back. Parked, it would hold every later command of its connection, the ack that
    // ends the stall among them: it reads its one message.
    assert_eq!(rig.get(1, "q"), Some((got.len() as u32, false)));
    // A consumer elsewhere waits: the queue reads nothing for consumers.
    let consume = Method::BasicConsume(BasicConsume {
        queue: "q".into(),
        no_ack: true,
        ..Default::default()
    });
    let r = rig.method(2, consume);
    assert!(delivered(&r).is_empty(), "{r:?}");
    // Connection 1's ack brings the queue back under its budget: the consumer gets the
    // rest.
    let r = rig.method(
        1,
        Method::BasicAck(BasicAck {
            delivery_tag: last_tag,
            multiple: true,
        }),
    );
    let rest: Vec<u32> = delivered(&r).iter().map(|&(_, b)| b).collect();
    assert_eq!(rest, (got.len() as u32 + 1..N).collect::<Vec<_>>());
    rig.broker.check_invariants();
}

#[test]
fn a_get_whose_messages_in_memory_all_expired_reads_the_paged_ones() {
    // The head of the backlog (in memory and the start of the paged part) expires; the
    // rest does not. A get must skip the expired ones wherever they are, reading the
    // paged part back as often as it takes, and not call the queue empty.
    let mut rig = Rig::new(small_budget());
    rig.open(1);
    rig.declare(1, "q", false);
    let expiring = N / 2;
    for i in 0..N {
        let properties = crate::proto::props::BasicProperties {
            expiration: (i < expiring).then(|| "1000".into()),
            ..Default::default()
        };
        rig.publish_props(1, "", "q", i, properties);
    }
    let counted = rig.message_count(1, "q");
    let batch = rig.broker.config().memory.page_in_batch as u32;
    assert!(
        rig.store.state().paged_count() as u32 > N - expiring + batch,
        "more than a batch of expiring messages is paged too"
    );
    rig.now += 2_000;
    assert_eq!(
        rig.get(1, "q"),
        Some((expiring, false)),
        "the first message that has not expired ({counted} counted)"
    );
    let mut next = expiring + 1;
    while let Some((i, _)) = rig.get(1, "q") {
        assert_eq!(i, next);
        next += 1;
    }
    assert_eq!(next, N);
    rig.broker.check_invariants();
}

/// A management API request; the store's reads it causes are answered unless
/// `hold_reads`. Returns its answer if it came, the reads held back and how many were
/// answered.
fn admin_request(
    rig: &mut Rig,
    request: crate::broker::admin::AdminRequest,
    hold_reads: bool,
) -> (
    Option<crate::broker::admin::AdminResult>,
    Vec<HeldRead>,
    usize,
) {
    rig.now += 1;
    rig.broker.handle_admin(9, request, rig.now);
    admin_outputs(rig, hold_reads)
}

/// Runs the broker's outputs as [`admin_request`] does.
fn admin_outputs(
    rig: &mut Rig,
    hold_reads: bool,
) -> (
    Option<crate::broker::admin::AdminResult>,
    Vec<HeldRead>,
    usize,
) {
    let out = rig.run_outputs(hold_reads);
    assert!(out.answers.len() <= 1, "answered twice: {:?}", out.answers);
    let answer = out.answers.into_iter().next().map(|(id, result)| {
        assert_eq!(id, 9);
        result
    });
    (answer, out.held, out.reads)
}

/// Messages 0 to N/2 expire after a second, the rest do not; most are paged. Returns
/// N/2, once they have expired.
fn expiring_head(rig: &mut Rig) -> u32 {
    rig.open(1);
    rig.declare(1, "q", false);
    let expiring = N / 2;
    for i in 0..N {
        let properties = crate::proto::props::BasicProperties {
            expiration: (i < expiring).then(|| "1000".into()),
            ..Default::default()
        };
        rig.publish_props(1, "", "q", i, properties);
    }
    rig.now += 2_000;
    expiring
}

/// A management peek at queue "q", as the node.
fn q_peek(count: usize) -> crate::broker::admin::AdminRequest {
    crate::broker::admin::AdminRequest::Peek {
        actor: crate::broker::admin::Actor::Node,
        vhost: "/".into(),
        queue: "q".into(),
        count,
    }
}

/// A management get from queue "q", as the node.
fn q_get(count: usize, ack: crate::broker::admin::GetAck) -> crate::broker::admin::AdminRequest {
    crate::broker::admin::AdminRequest::Get {
        actor: crate::broker::admin::Actor::Node,
        vhost: "/".into(),
        queue: "q".into(),
        count,
        ack,
    }
}

fn bodies(result: Option<crate::broker::admin::AdminResult>) -> Vec<u32> {
    match result {
        Some(Ok(crate::broker::admin::AdminReply::Messages(m))) => m
            .iter()
            .map(|m| u32::from_be_bytes(m.message.body.as_ref().try_into().unwrap()))
            .collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_management_get_or_peek_waits_for_the_paged_messages_it_asks_for_up_to_the_budget() {
    use crate::broker::Resource;
    use crate::broker::admin::GetAck;
    let mut rig = Rig::new(small_budget());
    let expiring = expiring_head(&mut rig);
    let budget = rig.broker.config().memory.queue_memory_budget_bytes;
    // Memory holds only expired messages: the peek waits for the read it starts...
    let (answer, held, _) = admin_request(&mut rig, q_peek(1000), true);
    assert!(answer.is_none(), "answered before the read: {answer:?}");
    assert_eq!(held.len(), 1);
    rig.broker.check_invariants();
    // ...and, once the reads are in, has the first messages that have not expired, as
    // many as the queue's memory budget holds: reads for it stop there.
    let (queue, from_seq, max, max_bytes, epoch) = held[0];
    let entries = rig.store.load(queue, from_seq, max, max_bytes).unwrap();
    rig.broker.handle_loaded(queue, epoch, entries, rig.now);
    let (answer, ..) = admin_outputs(&mut rig, false);
    let first = bodies(answer);
    assert!(first.len() > 10 && first.len() < 1000, "{}", first.len());
    assert_eq!(
        first,
        (expiring..expiring + first.len() as u32).collect::<Vec<_>>()
    );
    let held_bytes = rig.broker.memory_bytes();
    assert!(held_bytes >= budget, "{held_bytes} against {budget}");
    assert!(held_bytes < budget + 1024, "{held_bytes} against {budget}");
    // What memory holds is answered at once.
    let (answer, held, _) = admin_request(&mut rig, q_peek(5), true);
    assert!(held.is_empty());
    assert_eq!(bodies(answer), (expiring..expiring + 5).collect::<Vec<_>>());
    // Nothing waits under the memory alarm: a get has what memory holds.
    rig.broker.handle_alarm(Resource::Memory, true, rig.now);
    let (answer, held, _) = admin_request(&mut rig, q_get(N as usize, GetAck::Requeue), true);
    assert!(held.is_empty(), "{held:?}");
    assert_eq!(bodies(answer), first);
    rig.broker.handle_alarm(Resource::Memory, false, rig.now);
    // Nor does a get that takes its messages (its requester may be gone by the time the
    // reads are in).
    let (answer, ..) = admin_request(&mut rig, q_get(N as usize, GetAck::Ack), false);
    assert_eq!(bodies(answer), first);
    rig.broker.check_invariants();
}

#[test]
fn a_waiting_management_get_finds_its_queue_gone_when_it_is_deleted_meanwhile() {
    use crate::broker::admin::{AdminErrorKind, GetAck};
    let mut rig = Rig::new(small_budget());
    expiring_head(&mut rig);
    let get = q_get(1, GetAck::Requeue);
    let (answer, held, _) = admin_request(&mut rig, get, true);
    assert!(answer.is_none() && held.len() == 1);
    rig.now += 1;
    rig.broker.handle_command(
        1,
        Command::Method {
            channel: 1,
            method: Method::QueueDelete(QueueDelete {
                queue: "q".into(),
                ..Default::default()
            }),
        },
        rig.now,
    );
    let (answer, ..) = admin_outputs(&mut rig, false);
    match answer {
        Some(Err(e)) => assert_eq!(e.kind, AdminErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
    // The read that was in flight finds nothing to serve.
    let (queue, from_seq, max, max_bytes, epoch) = held[0];
    let entries = rig.store.load(queue, from_seq, max, max_bytes).unwrap();
    rig.broker.handle_loaded(queue, epoch, entries, rig.now);
    assert_eq!(admin_outputs(&mut rig, false).0.map(|_| ()), None);
    rig.broker.check_invariants();
}

#[test]
fn management_gets_waiting_on_one_queue_are_bounded() {
    use crate::broker::admin::MAX_WAITING_ADMIN;
    let mut rig = Rig::new(small_budget());
    expiring_head(&mut rig);
    let peek = q_peek(10);
    for _ in 0..MAX_WAITING_ADMIN {
        let (answer, ..) = admin_request(&mut rig, peek.clone(), true);
        assert!(answer.is_none());
    }
    // One more has what memory holds: nothing, all of it having expired.
    let (answer, ..) = admin_request(&mut rig, peek, true);
    assert_eq!(bodies(answer), Vec::<u32>::new());
    rig.broker.check_invariants();
}

#[test]
fn a_management_get_that_takes_or_any_under_the_memory_alarm_does_not_wait() {
    use crate::broker::Resource;
    use crate::broker::admin::GetAck;
    let mut rig = Rig::new(small_budget());
    expiring_head(&mut rig);
    let get = |ack| q_get(3, ack);
    // Memory holds nothing that has not expired; the rest is paged. A get that takes its
    // messages is answered at once, from memory: its requester may be gone by the time
    // reads are in, and nobody would see what it took.
    let (answer, ..) = admin_request(&mut rig, get(GetAck::Ack), true);
    assert_eq!(bodies(answer), Vec::<u32>::new());
    // Under the memory alarm nothing waits to read more in.
    rig.broker.handle_alarm(Resource::Memory, true, rig.now);
    let (answer, ..) = admin_request(&mut rig, get(GetAck::Requeue), true);
    assert_eq!(bodies(answer), Vec::<u32>::new());
    rig.broker.check_invariants();
}
