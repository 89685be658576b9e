"""The x-delayed-message exchange with pika, as applications use RabbitMQ's plugin: a
message with an x-delay header arrives after its delay, one without arrives at once, and
a delayed exchange without x-delayed-type is refused with the plugin's 406."""
from __future__ import annotations

import time

import pika
import pika.exceptions
import pytest


def _delayed_exchange(ch, name: str, queue: str) -> None:
    ch.exchange_declare(name, "x-delayed-message", durable=True, auto_delete=False,
                        arguments={"x-delayed-type": "direct"})
    ch.queue_declare(queue, durable=True)
    ch.queue_bind(queue, name, "k")


def _wait_for(ch, queue: str, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        method, props, body = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            return props, body
        ch.connection.sleep(0.05)
    return None


def test_a_delayed_message_arrives_after_its_delay(connect, uid):
    ch = connect().channel()
    exchange, queue = f"later-{uid}", f"later-q-{uid}"
    _delayed_exchange(ch, exchange, queue)
    ch.confirm_delivery()
    sent = time.monotonic()
    ch.basic_publish(exchange, "k", b"wait for me",
                     pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500}))
    got = _wait_for(ch, queue, 10)
    waited = time.monotonic() - sent
    assert got is not None, "the delayed message never arrived"
    assert got[1] == b"wait for me"
    assert waited >= 1.4, f"arrived after {waited:.2f} s, before its 1.5 s delay"
    assert waited < 5, f"arrived only after {waited:.2f} s"
    ch.queue_delete(queue)
    ch.exchange_delete(exchange)


def test_without_a_delay_a_message_is_routed_at_once(connect, uid):
    ch = connect().channel()
    exchange, queue = f"now-{uid}", f"now-q-{uid}"
    _delayed_exchange(ch, exchange, queue)
    ch.basic_publish(exchange, "k", b"at once")
    ch.basic_publish(exchange, "k", b"zero", pika.BasicProperties(headers={"x-delay": 0}))
    assert _wait_for(ch, queue, 2)[1] == b"at once"
    assert _wait_for(ch, queue, 2)[1] == b"zero"
    ch.queue_delete(queue)
    ch.exchange_delete(exchange)


def test_a_delayed_exchange_needs_a_delayed_type(connect, uid):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare(f"bad-{uid}", "x-delayed-message")
    assert e.value.reply_code == 406
    assert "'x-delayed-type' must be an existing exchange type" in e.value.reply_text
