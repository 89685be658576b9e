"""Direct reply-to RPC and RabbitMQ's idempotent unbinds, with pika (the tutorial's RPC,
without a reply queue): run against warren and against RabbitMQ, these pass on both."""
from __future__ import annotations

import ast

import pika
import pika.exceptions
import pytest

REPLY_TO = "amq.rabbitmq.reply-to"


def _get_one(ch, queue: str, auto_ack: bool = False):
    """The next message on `queue`, waiting up to 5 s: one published on another connection
    may still be on its way when this channel asks."""
    for _ in range(100):
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        ch.connection.sleep(0.05)
    raise AssertionError(f"no message arrived on {queue}")


def _serve_one(ch, queue: str) -> None:
    """Answers one request on `queue`: the body upper-cased, to the request's reply_to."""
    method, props, body = _get_one(ch, queue)
    ch.basic_publish(
        "",
        props.reply_to,
        body.upper(),
        pika.BasicProperties(correlation_id=props.correlation_id),
    )
    ch.basic_ack(method.delivery_tag)


def test_direct_reply_to_round_trip(connect, uid):
    server = connect().channel()
    queue = f"rpc-{uid}"
    server.queue_declare(queue, auto_delete=True)

    client = connect().channel()
    replies = []
    client.basic_consume(REPLY_TO, lambda ch, m, p, b: replies.append((m, p, b)), auto_ack=True)
    for i in range(3):
        client.basic_publish(
            "",
            queue,
            f"hello {i}".encode(),
            pika.BasicProperties(reply_to=REPLY_TO, correlation_id=str(i)),
        )
        _serve_one(server, queue)
        client.connection.process_data_events(time_limit=5)
        while len(replies) <= i:
            client.connection.process_data_events(time_limit=1)
        method, props, body = replies[i]
        assert body == f"HELLO {i}".encode()
        assert props.correlation_id == str(i)
        assert method.routing_key.startswith(REPLY_TO + ".")
        assert method.exchange == ""


def test_the_server_sees_a_routable_reply_address(connect, uid):
    server = connect().channel()
    queue = f"rpc-addr-{uid}"
    server.queue_declare(queue, auto_delete=True)
    client = connect().channel()
    client.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    client.basic_publish("", queue, b"x", pika.BasicProperties(reply_to=REPLY_TO))
    method, props, _ = _get_one(server, queue, auto_ack=True)
    assert props.reply_to.startswith(REPLY_TO + ".") and props.reply_to != REPLY_TO + "."
    # The pseudo-queue and the address are there for a passive declare.
    assert server.queue_declare(REPLY_TO, passive=True).method.queue == REPLY_TO
    assert server.queue_declare(props.reply_to, passive=True).method.consumer_count == 1


def test_a_reply_to_a_closed_channel_is_returned(connect, uid):
    server = connect().channel()
    queue = f"rpc-gone-{uid}"
    server.queue_declare(queue, auto_delete=True)
    client_conn = connect()
    client = client_conn.channel()
    client.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
    client.basic_publish("", queue, b"x", pika.BasicProperties(reply_to=REPLY_TO))
    _, props, _ = _get_one(server, queue, auto_ack=True)
    client.close()
    server.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        server.basic_publish("", props.reply_to, b"late", mandatory=True)


def test_publishing_with_reply_to_needs_a_reply_consumer(connect, uid):
    ch = connect().channel()
    ch.basic_publish("", f"nowhere-{uid}", b"x", pika.BasicProperties(reply_to=REPLY_TO))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare(f"after-{uid}", auto_delete=True)
    assert err.value.reply_code == 406
    assert "fast reply consumer does not exist" in err.value.reply_text


def test_the_reply_consumer_does_not_ack(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
    assert err.value.reply_code == 406


def test_unbinding_what_is_gone_succeeds(connect, uid):
    """aio-pika's RPC deletes its auto-delete exchange before unbinding from it."""
    ch = connect().channel()
    queue = f"unbind-{uid}"
    exchange = f"unbind-x-{uid}"
    ch.queue_declare(queue, auto_delete=True)
    ch.exchange_declare(exchange, "direct", auto_delete=True)
    ch.queue_bind(queue, exchange, "k")
    ch.exchange_delete(exchange)
    ch.queue_unbind(queue, exchange, "k")
    ch.queue_unbind(f"no-such-queue-{uid}", "amq.direct", "k")
    ch.queue_unbind(queue, "amq.direct", "never-bound")
    ch.exchange_unbind("amq.fanout", f"no-such-exchange-{uid}", "k")
    # The channel is still open and the queue still works.
    ch.basic_publish("", queue, b"still here")
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"still here"


def test_the_default_exchange_refuses_a_passive_declare(connect):
    ch = connect().channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.exchange_declare("", passive=True)
    assert err.value.reply_code == 403


def test_properties_that_are_not_utf8_pass_unchanged(connect, uid):
    """A short string is bytes: a Go client's binary correlation id, or pika given bytes
    (for a property or a header's key), reaches the consumer byte for byte, as on RabbitMQ."""
    ch = connect().channel()
    queue = f"bytes-{uid}"
    ch.queue_declare(queue, auto_delete=True)
    raw = b"\xff\xfe\x00id\x80"
    sent = pika.BasicProperties(
        content_type=b"text/\xff", correlation_id=raw, message_id=raw, reply_to=raw,
        type=raw, app_id=raw, headers={"k": raw, b"\xfekey": 1},
    )
    ch.basic_publish("", queue, b"body", sent)
    _, got, body = _get_one(ch, queue, auto_ack=True)
    assert body == b"body"
    for name in ("content_type", "correlation_id", "message_id", "reply_to", "type", "app_id"):
        assert getattr(got, name) == getattr(sent, name), name
    assert got.headers == {"k": raw, b"\xfekey": 1}


@pytest.mark.parametrize("field,text", [
    ("expiration", "PRECONDITION_FAILED - invalid expiration '\\xff1': no_integer"),
    ("user_id", "PRECONDITION_FAILED - user_id property set to '\\xff1' but authenticated user was 'guest'"),
])
def test_expiration_and_user_id_that_are_not_utf8_are_refused(connect, uid, field, text):
    """The two properties the broker reads: what is not a number, or not the user, is a 406
    naming the bytes (RabbitMQ puts them in its text raw, warren escaped)."""
    ch = connect().channel()
    ch.basic_publish("", f"nowhere-{uid}", b"x", pika.BasicProperties(**{field: b"\xff1"}))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as err:
        ch.queue_declare(f"after-{uid}", auto_delete=True)
    assert err.value.reply_code == 406
    reply = err.value.reply_text
    if reply.startswith(('b"', "b'")):  # RabbitMQ's text is not UTF-8: pika gives repr(bytes)
        reply = ast.literal_eval(reply).decode("ascii", "backslashreplace")
    assert reply == text


def test_a_headers_binding_matches_keys_that_are_not_utf8(connect, uid):
    """Headers exchange keys compare as bytes, as RabbitMQ compares them."""
    ch = connect().channel()
    exchange = f"hx-{uid}"
    queue = f"hx-q-{uid}"
    ch.exchange_declare(exchange, "headers", auto_delete=True)
    ch.queue_declare(queue, auto_delete=True)
    ch.queue_bind(queue, exchange, arguments={"x-match": "all", b"\xffk": b"\xfev"})
    ch.basic_publish(exchange, "", b"match", pika.BasicProperties(headers={b"\xffk": b"\xfev"}))
    ch.basic_publish(exchange, "", b"other", pika.BasicProperties(headers={b"\xfek": b"\xfev"}))
    ch.basic_publish("", queue, b"last")
    bodies = [_get_one(ch, queue, auto_ack=True)[2] for _ in range(2)]
    assert bodies == [b"match", b"last"]
