"""The seed's administration workflow, run literally: rabbitmqctl's words through the
broker's ctl command, then a real client (pika) uses what they set up.

The ctl command is given by env ``AMQP_CTL`` (a command prefix, e.g.
``"target/release/warren ctl --data-dir /tmp/x"``; run_suites.py sets it for a warren
started with ``--broker-cmd``). Against the reference RabbitMQ:
``AMQP_CTL="/work/shared/scripts/reference-rabbitmq ctl"``. Without it the tests skip.
"""
from __future__ import annotations

import os
import shlex
import subprocess

import pika
import pika.exceptions
import pytest

CTL = shlex.split(os.environ.get("AMQP_CTL", ""))

pytestmark = pytest.mark.skipif(not CTL, reason="AMQP_CTL (the broker's ctl command) is not set")


def ctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(CTL + list(args), capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"ctl {args} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def params(user: str, password: str) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=os.environ.get("AMQP_HOST", "127.0.0.1"),
        port=int(os.environ.get("AMQP_PORT", "5672")),
        virtual_host="/",
        credentials=pika.PlainCredentials(user, password),
        socket_timeout=10,
        stack_timeout=15,
        connection_attempts=1,
    )


@pytest.fixture
def user(uid):
    """A fresh user name, deleted at teardown."""
    name = f"xjk-{uid}"
    yield name
    ctl("delete_user", name, check=False)


def queue_lines(*args: str) -> list[str]:
    out = ctl("list_queues", *args).stdout
    return [line for line in out.splitlines() if "\t" in line]


def test_add_user_tags_permissions_then_pika_works(user, uid, cleanup):
    ctl("add_user", user, "123")
    ctl("set_user_tags", user, "administrator")
    ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    assert any(line.startswith(f"{user}\t") for line in ctl("list_users").stdout.splitlines())

    queue = cleanup.queue(f"admin-{uid}")
    conn = pika.BlockingConnection(params(user, "123"))
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.confirm_delivery()
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode(),
                             pika.BasicProperties(delivery_mode=2))
        method, _props, body = ch.basic_get(queue, auto_ack=False)
        assert body == b"m0"
        ch.basic_ack(method.delivery_tag)
        # A consumer receives the next one.
        got = []
        for m, _p, b in ch.consume(queue, inactivity_timeout=5):
            got.append(b)
            ch.basic_ack(m.delivery_tag)
            break
        ch.cancel()
        assert got == [b"m1"]
        ch.queue_declare(queue, passive=True)
    finally:
        conn.close()
    # list_queues shows the queue with its message count.
    assert f"{queue}\t1" in queue_lines()
    assert f"{queue}\t1\t0" in queue_lines("name", "messages_ready", "messages_unacknowledged")
    # A delivery held unacked is counted, bytes too, until its connection closes.
    conn = pika.BlockingConnection(params(user, "123"))
    try:
        _m, _p, body = conn.channel().basic_get(queue, auto_ack=False)
        assert body == b"m2"
        cols = ("name", "messages_ready", "messages_unacknowledged", "message_bytes",
                "message_bytes_ready", "message_bytes_unacknowledged")
        assert f"{queue}\t0\t1\t2\t0\t2" in queue_lines(*cols)
    finally:
        conn.close()
    assert f"{queue}\t1\t0\t2\t2\t0" in queue_lines(*cols)


def test_user_without_write_permission_gets_403(user, uid, cleanup):
    ctl("add_user", user, "pw")
    ctl("set_permissions", "-p", "/", user, ".*", "", ".*")
    queue = cleanup.queue(f"admin-ro-{uid}")
    conn = pika.BlockingConnection(params(user, "pw"))
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.basic_publish("", queue, b"refused")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
            # The refusal arrives asynchronously; any round trip surfaces it.
            ch.queue_declare(queue, passive=True)
        assert exc.value.reply_code == 403
        assert exc.value.reply_text == (
            f"ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user '{user}'")
    finally:
        if conn.is_open:
            conn.close()


def test_change_password_and_delete_user_take_effect_on_next_login(user):
    ctl("add_user", user, "old")
    ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
    open_conn = pika.BlockingConnection(params(user, "old"))
    ctl("change_password", user, "new")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(user, "old"))
    pika.BlockingConnection(params(user, "new")).close()
    # The connection opened before the change is still usable.
    open_conn.channel().close()

    ctl("delete_user", user)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(params(user, "new"))
    # Deleting a user closes its connections (320 CONNECTION_FORCED).
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as exc:
        for _ in range(50):
            open_conn.process_data_events(time_limit=0.1)
    assert exc.value.reply_code == 320
    assert "is deleted" in exc.value.reply_text
