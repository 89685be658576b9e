"""End-to-end scenarios mirroring RabbitMQ's six tutorials, with pika.

Each test asserts what an application written from the tutorial relies on:
the exact messages arrive, at the right consumers, exactly once, and nothing
extra arrives.  Broker address: env AMQP_HOST / AMQP_PORT (see conftest.py).
Every name carries a unique suffix so that reruns against a long-running
broker never collide, and the queues/exchanges are deleted afterwards.
"""
from __future__ import annotations

import threading
import time
import uuid

import pika
import pika.exceptions
import pytest

pytestmark = pytest.mark.timeout(60)


def collect(ch, queue, expected, *, timeout=10.0, settle=0.5, auto_ack=True):
    """Consume from ``queue`` until ``expected`` messages arrived, then keep
    listening for ``settle`` seconds so that extra deliveries are caught too.
    Returns a list of (method, properties, body)."""
    got = []
    deadline = time.monotonic() + timeout
    settle_until = None if expected > 0 else time.monotonic() + settle
    for method, props, body in ch.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.05):
        now = time.monotonic()
        if method is not None:
            got.append((method, props, body))
            if not auto_ack:
                ch.basic_ack(method.delivery_tag)
            if len(got) == expected:
                settle_until = now + settle
        if settle_until is not None and now >= settle_until:
            break
        if now >= deadline:
            break
    ch.cancel()
    return got


def bodies(msgs):
    return [body.decode() for _, _, body in msgs]


# --- 1. "Hello World!" -------------------------------------------------------------------


def test_hello_world(connect, uid, cleanup):
    queue = cleanup.queue(f"hello-{uid}")

    sender = connect().channel()
    ok = sender.queue_declare(queue=queue)
    assert ok.method.queue == queue
    assert ok.method.message_count == 0
    sender.basic_publish(exchange="", routing_key=queue, body=b"Hello World!")

    receiver = connect().channel()
    receiver.queue_declare(queue=queue)  # idempotent redeclare, as the tutorial's receiver does
    msgs = collect(receiver, queue, 1)
    assert bodies(msgs) == ["Hello World!"]
    method, props, _ = msgs[0]
    assert method.exchange == ""
    assert method.routing_key == queue
    assert method.redelivered is False
    # Consumed with auto-ack: the queue is now empty.
    assert receiver.queue_declare(queue=queue, passive=True).method.message_count == 0


def test_hello_world_consume_before_publish(connect, uid, cleanup):
    """The tutorial's receiver starts first and waits; the message is pushed to it."""
    queue = cleanup.queue(f"hello-early-{uid}")
    conn = connect()
    receiver = conn.channel()
    receiver.queue_declare(queue=queue)
    received = []
    receiver.basic_consume(queue, lambda ch, m, p, b: received.append(b), auto_ack=True)
    conn.process_data_events(time_limit=0.2)
    assert received == []

    connect().channel().basic_publish(exchange="", routing_key=queue, body=b"Hello World!")
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    conn.process_data_events(time_limit=0.3)
    assert received == [b"Hello World!"]


# --- 2. Work queues ----------------------------------------------------------------------


class Worker(threading.Thread):
    """A tutorial worker: its own connection, prefetch 1, manual ack after the 'work'."""

    def __init__(self, params, queue, name, work_seconds=0.0, hold_first=None):
        super().__init__(daemon=True, name=name)
        self.params, self.queue, self.work_seconds = params, queue, work_seconds
        self.hold_first = hold_first  # an Event: don't ack the first task until it is set
        self.done: list[str] = []
        self.received: list[str] = []
        self.redelivered: list[str] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            conn = pika.BlockingConnection(self.params)
            ch = conn.channel()
            ch.queue_declare(queue=self.queue, durable=True)
            ch.basic_qos(prefetch_count=1)
            pending = []

            def on_message(ch_, method, props, body):
                task = body.decode()
                self.received.append(task)
                if method.redelivered:
                    self.redelivered.append(task)
                pending.append((method.delivery_tag, task))

            ch.basic_consume(self.queue, on_message)
            self.ready.set()
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.02)
                while pending:
                    if self.hold_first is not None and not self.hold_first.is_set():
                        break
                    tag, task = pending.pop(0)
                    if self.work_seconds:
                        time.sleep(self.work_seconds)
                    self.done.append(task)
                    ch.basic_ack(delivery_tag=tag)
            conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            self.ready.set()


def _wait(cond, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _publish_tasks(ch, queue, tasks):
    for task in tasks:
        ch.basic_publish(
            exchange="",
            routing_key=queue,
            body=task.encode(),
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )


def test_work_queue_prefetch_one_holds_back_busy_worker(connect, amqp_params, uid, cleanup):
    """With prefetch 1, a worker that has not acked its task gets no other task:
    everything else goes to the other worker, and each task is done exactly once."""
    queue = cleanup.queue(f"task_queue-{uid}")
    producer = connect().channel()
    producer.queue_declare(queue=queue, durable=True)

    release = threading.Event()
    busy = Worker(amqp_params, queue, "busy", hold_first=release)
    busy.start()
    assert busy.ready.wait(10) and busy.error is None, busy.error
    tasks = [f"task {i}" for i in range(10)]
    _publish_tasks(producer, queue, tasks)
    assert _wait(lambda: len(busy.received) >= 1), "the first worker never got a task"
    time.sleep(0.3)
    assert busy.received == ["task 0"], "prefetch 1 must hold back further tasks"

    free = Worker(amqp_params, queue, "free")
    free.start()
    try:
        assert _wait(lambda: len(free.done) == 9), f"free worker did {free.done}"
        time.sleep(0.3)
        assert busy.received == ["task 0"], "busy worker got a task beyond its prefetch"
        release.set()
        assert _wait(lambda: busy.done == ["task 0"])
    finally:
        busy.stop.set()
        free.stop.set()
        busy.join(10)
        free.join(10)
    assert busy.error is None and free.error is None, (busy.error, free.error)
    assert free.done == tasks[1:]  # FIFO, each once
    assert busy.redelivered == [] and free.redelivered == []
    assert producer.queue_declare(queue=queue, passive=True).method.message_count == 0


def test_work_queue_fair_dispatch_two_workers(connect, amqp_params, uid, cleanup):
    """Two workers, prefetch 1, manual ack, each task takes time: the tasks are
    shared between both workers, none is lost or done twice."""
    queue = cleanup.queue(f"task_queue-{uid}")
    producer = connect().channel()
    producer.queue_declare(queue=queue, durable=True)
    workers = [Worker(amqp_params, queue, f"w{i}", work_seconds=0.1) for i in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        assert w.ready.wait(10) and w.error is None, w.error
    time.sleep(0.2)  # both consumers registered
    tasks = [f"task {i}" for i in range(12)]
    try:
        _publish_tasks(producer, queue, tasks)
        assert _wait(lambda: sum(len(w.done) for w in workers) >= len(tasks)), [w.done for w in workers]
        time.sleep(0.3)
    finally:
        for w in workers:
            w.stop.set()
        for w in workers:
            w.join(10)
    for w in workers:
        assert w.error is None, w.error
    done = workers[0].done + workers[1].done
    assert sorted(done) == sorted(tasks), "every task done exactly once"
    # Each worker can hold one task at a time and spends 0.1 s on it: the other
    # worker must get a fair share.
    assert all(len(w.done) >= 4 for w in workers), [len(w.done) for w in workers]
    # Each worker sees its own tasks in queue order.
    for w in workers:
        assert w.done == sorted(w.done, key=lambda t: int(t.split()[1]))
    assert producer.queue_declare(queue=queue, passive=True).method.message_count == 0


def test_work_queue_unacked_task_is_redelivered_to_other_worker(connect, uid, cleanup):
    """A worker that dies without acking: its task goes to another worker, flagged redelivered."""
    queue = cleanup.queue(f"task_queue-{uid}")
    producer = connect().channel()
    producer.queue_declare(queue=queue, durable=True)
    _publish_tasks(producer, queue, ["important"])

    dying_conn = connect()
    dying = dying_conn.channel()
    dying.basic_qos(prefetch_count=1)
    method, props, body = dying.basic_get(queue, auto_ack=False)
    assert body == b"important" and method.redelivered is False
    dying_conn.close()  # dies without acking

    other = connect().channel()
    other.basic_qos(prefetch_count=1)
    msgs = collect(other, queue, 1, auto_ack=False)
    assert bodies(msgs) == ["important"]
    assert msgs[0][0].redelivered is True


# --- 3. Publish/Subscribe (fanout) ------------------------------------------------------


def test_publish_subscribe_fanout(connect, uid, cleanup):
    exchange = cleanup.exchange(f"logs-{uid}")
    emitter = connect().channel()
    emitter.exchange_declare(exchange=exchange, exchange_type="fanout")
    # Published before anybody subscribed: goes nowhere.
    emitter.basic_publish(exchange=exchange, routing_key="", body=b"lost")

    subscribers = []
    for _ in range(3):
        conn = connect()
        ch = conn.channel()
        ok = ch.queue_declare(queue="", exclusive=True)
        name = ok.method.queue
        assert name, "server must name the queue"
        ch.queue_bind(exchange=exchange, queue=name)
        subscribers.append((conn, ch, name))
    names = [s[2] for s in subscribers]
    assert len(set(names)) == 3, names

    logs = [f"log line {i}" for i in range(5)]
    for line in logs:
        # The routing key is ignored by a fanout exchange.
        emitter.basic_publish(exchange=exchange, routing_key=f"ignored.{line}", body=line.encode())

    for _, ch, name in subscribers:
        msgs = collect(ch, name, len(logs))
        assert bodies(msgs) == logs
        assert all(m.exchange == exchange for m, _, _ in msgs)

    # The queues are exclusive: another connection may not use them ...
    conn0, _, name0 = subscribers[0]
    intruder = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        intruder.basic_consume(name0, lambda *a: None)
    assert exc.value.reply_code == 405  # RESOURCE_LOCKED

    # ... and are deleted when their connection closes.
    conn0.close()
    probe = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        probe.queue_declare(queue=name0, passive=True)
    assert exc.value.reply_code == 404


# --- 4. Routing (direct) -----------------------------------------------------------------


def test_routing_direct(connect, uid, cleanup):
    exchange = cleanup.exchange(f"direct_logs-{uid}")
    emitter = connect().channel()
    emitter.exchange_declare(exchange=exchange, exchange_type="direct")

    def subscriber(severities):
        ch = connect().channel()
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        for sev in severities:
            ch.queue_bind(exchange=exchange, queue=q, routing_key=sev)
        return ch, q

    errors_ch, errors_q = subscriber(["error"])
    all_ch, all_q = subscriber(["info", "warning", "error"])

    sent = [
        ("info", "info: started"),
        ("error", "error: disk full"),
        ("warning", "warning: slow"),
        ("debug", "debug: nobody listens"),
        ("error", "error: again"),
        ("ERROR", "case matters"),
        ("info", "info: done"),
    ]
    for sev, text in sent:
        emitter.basic_publish(exchange=exchange, routing_key=sev, body=text.encode())

    got_errors = collect(errors_ch, errors_q, 2)
    assert bodies(got_errors) == ["error: disk full", "error: again"]
    assert [m.routing_key for m, _, _ in got_errors] == ["error", "error"]

    got_all = collect(all_ch, all_q, 5)
    assert bodies(got_all) == [
        "info: started",
        "error: disk full",
        "warning: slow",
        "error: again",
        "info: done",
    ]
    assert [m.routing_key for m, _, _ in got_all] == ["info", "error", "warning", "error", "info"]


def test_routing_direct_unbind(connect, uid, cleanup):
    exchange = cleanup.exchange(f"direct_logs-{uid}")
    ch = connect().channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=q, routing_key="info")
    ch.queue_bind(exchange=exchange, queue=q, routing_key="error")
    ch.basic_publish(exchange=exchange, routing_key="info", body=b"1")
    ch.queue_unbind(exchange=exchange, queue=q, routing_key="info")
    ch.basic_publish(exchange=exchange, routing_key="info", body=b"2")
    ch.basic_publish(exchange=exchange, routing_key="error", body=b"3")
    assert bodies(collect(ch, q, 2)) == ["1", "3"]


# --- 5. Topics ---------------------------------------------------------------------------


TOPIC_CASES = [
    # routing key,              Q1 *.orange.*, Q2 *.*.rabbit | lazy.#, all #, one *
    ("quick.orange.rabbit", True, True),
    ("lazy.orange.elephant", True, True),
    ("quick.orange.fox", True, False),
    ("lazy.brown.fox", False, True),
    ("lazy.pink.rabbit", False, True),  # matches both Q2 bindings: delivered once
    ("quick.brown.fox", False, False),
    ("orange", False, False),
    ("quick.orange.new.rabbit", False, False),
    ("lazy.orange.new.rabbit", False, True),
    ("lazy", False, True),  # '#' matches zero words
    ("lazy.", False, True),  # an empty last word
    (".orange.", True, False),  # empty words match '*'
    ("quick.orange", False, False),
    ("quick.orange.rabbit.", False, False),
]


def test_topics(connect, uid, cleanup):
    exchange = cleanup.exchange(f"topic_logs-{uid}")
    emitter = connect().channel()
    emitter.exchange_declare(exchange=exchange, exchange_type="topic")

    def subscriber(keys):
        ch = connect().channel()
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        for key in keys:
            ch.queue_bind(exchange=exchange, queue=q, routing_key=key)
        return ch, q

    q1 = subscriber(["*.orange.*"])
    q2 = subscriber(["*.*.rabbit", "lazy.#"])
    everything = subscriber(["#"])
    single = subscriber(["*"])

    for key, _, _ in TOPIC_CASES:
        emitter.basic_publish(exchange=exchange, routing_key=key, body=key.encode())

    def expect(pred):
        return [key for key, *flags in TOPIC_CASES if pred(key, *flags)]

    want_q1 = expect(lambda k, a, b: a)
    want_q2 = expect(lambda k, a, b: b)
    want_all = [key for key, _, _ in TOPIC_CASES]
    want_single = [key for key, _, _ in TOPIC_CASES if "." not in key]

    assert bodies(collect(*q1, len(want_q1))) == want_q1
    assert bodies(collect(*q2, len(want_q2))) == want_q2
    assert bodies(collect(*everything, len(want_all))) == want_all
    assert bodies(collect(*single, len(want_single))) == want_single


def test_topic_hash_in_middle_and_exact(connect, uid, cleanup):
    exchange = cleanup.exchange(f"topic_logs-{uid}")
    ch = connect().channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic")
    q_mid = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=q_mid, routing_key="kern.#.critical")
    q_exact = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=q_exact, routing_key="kern.critical")
    keys = ["kern.critical", "kern.disk.critical", "kern.disk.sda.critical", "kern.disk", "cron.critical",
            "kern.critical.later"]
    for key in keys:
        ch.basic_publish(exchange=exchange, routing_key=key, body=key.encode())
    assert bodies(collect(ch, q_mid, 3)) == ["kern.critical", "kern.disk.critical", "kern.disk.sda.critical"]
    assert bodies(collect(ch, q_exact, 1)) == ["kern.critical"]


# --- 6. RPC ------------------------------------------------------------------------------


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


class RpcServer(threading.Thread):
    def __init__(self, params, queue):
        super().__init__(daemon=True, name="rpc-server")
        self.params, self.queue = params, queue
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.served = 0
        self.error: BaseException | None = None

    def run(self):
        try:
            conn = pika.BlockingConnection(self.params)
            ch = conn.channel()
            ch.queue_declare(queue=self.queue)
            ch.basic_qos(prefetch_count=1)

            def on_request(ch_, method, props, body):
                response = str(fib(int(body)))
                ch_.basic_publish(
                    exchange="",
                    routing_key=props.reply_to,
                    properties=pika.BasicProperties(correlation_id=props.correlation_id),
                    body=response.encode(),
                )
                ch_.basic_ack(delivery_tag=method.delivery_tag)
                self.served += 1

            ch.basic_consume(self.queue, on_request)
            self.ready.set()
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.05)
            conn.close()
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self.ready.set()


class RpcClient:
    def __init__(self, conn):
        self.conn = conn
        self.ch = conn.channel()
        self.callback_queue = self.ch.queue_declare(queue="", exclusive=True).method.queue
        self.responses: dict[str, list[bytes]] = {}
        self.stray: list[tuple] = []
        self.ch.basic_consume(self.callback_queue, self.on_response, auto_ack=True)

    def on_response(self, ch, method, props, body):
        if props.correlation_id is None:
            self.stray.append((props, body))
        else:
            self.responses.setdefault(props.correlation_id, []).append(body)

    def send(self, queue, n) -> str:
        corr_id = str(uuid.uuid4())
        self.ch.basic_publish(
            exchange="",
            routing_key=queue,
            properties=pika.BasicProperties(reply_to=self.callback_queue, correlation_id=corr_id),
            body=str(n).encode(),
        )
        return corr_id

    def wait(self, corr_ids, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not all(c in self.responses for c in corr_ids) and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        self.conn.process_data_events(time_limit=0.3)  # anything extra?


def test_rpc(connect, amqp_params, uid, cleanup):
    queue = cleanup.queue(f"rpc_queue-{uid}")
    server = RpcServer(amqp_params, queue)
    server.start()
    try:
        assert server.ready.wait(10) and server.error is None, server.error
        client = RpcClient(connect())
        # One call, then several in flight at once: correlation ids tell the answers apart.
        first = client.send(queue, 30)
        client.wait([first])
        assert client.responses == {first: [b"832040"]}

        calls = {client.send(queue, n): n for n in (0, 1, 2, 10, 20, 25)}
        client.wait(list(calls))
        for corr_id, n in calls.items():
            assert client.responses.get(corr_id) == [str(fib(n)).encode()], (n, client.responses.get(corr_id))
        assert len(client.responses) == 1 + len(calls), "no response without a request"
        assert client.stray == []
    finally:
        server.stop.set()
        server.join(10)
    assert server.error is None, server.error
    assert server.served == 7
