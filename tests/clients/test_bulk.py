"""Bulk publish/consume integrity test with pika.

Publishes BULK_COUNT (default 100,000) messages to a queue with publisher
confirms on, each body carrying a unique sequence number, then consumes them
with manual acks and asserts that:

* every publish was confirmed (basic.ack), none nacked, none returned;
* every sequence number is consumed;
* nothing is consumed that was not published;
* a message delivered more than once was flagged ``redelivered`` on the later
  deliveries;
* the queue is empty at the end.

The publisher is pika's asynchronous SelectConnection, with up to
``BULK_WINDOW`` (default 1000) unconfirmed messages in flight, so the test
measures the broker rather than one round trip per message.  Run it alone as
a script too: ``python test_bulk.py [count]`` (env AMQP_HOST / AMQP_PORT).
"""
from __future__ import annotations

import os
import struct
import sys
import time
import uuid

import pika
import pika.exceptions
import pytest

COUNT = int(os.environ.get("BULK_COUNT", "100000"))
WINDOW = int(os.environ.get("BULK_WINDOW", "1000"))
PREFETCH = int(os.environ.get("BULK_PREFETCH", "500"))
PAYLOAD_PAD = b"x" * int(os.environ.get("BULK_PAD", "64"))
# Sequence numbers are sent as text (what a person would write) plus a fixed-size binary copy
# so that a corrupted body is told apart from a wrong number.
_HDR = struct.Struct(">Q")


def make_body(seq: int) -> bytes:
    return _HDR.pack(seq) + b"seq=%d;" % seq + PAYLOAD_PAD


def parse_body(body: bytes) -> int:
    (seq,) = _HDR.unpack_from(body)
    if body != make_body(seq):
        raise AssertionError(f"corrupted body for seq {seq}: {body[:40]!r}...")
    return seq


class ConfirmingPublisher:
    """Publishes 0..count-1 with confirms, at most `window` unconfirmed."""

    def __init__(self, params, queue, count, window, timeout):
        self.params, self.queue, self.count, self.window = params, queue, count, window
        self.timeout = timeout
        self.next_seq = 0
        self.next_tag = 1  # delivery tags of a confirm-mode channel start at 1
        self.unconfirmed: dict[int, int] = {}  # delivery tag -> seq
        self.acked = 0
        self.nacked: list[int] = []
        self.returned: list[int] = []
        self.error: str | None = None
        self.done = False
        self.conn = None
        self.ch = None

    def run(self):
        self.conn = pika.SelectConnection(
            self.params,
            on_open_callback=self._on_open,
            on_open_error_callback=lambda c, e: self._fail(f"connection open failed: {e!r}"),
            on_close_callback=self._on_conn_closed,
        )
        self.conn.ioloop.call_later(self.timeout, lambda: self._fail(f"timed out after {self.timeout}s"))
        self.conn.ioloop.start()

    def _fail(self, msg):
        if self.error is None and not self.done:
            self.error = msg
        self._stop()

    def _stop(self):
        if self.conn.is_open:
            self.conn.close()
        elif self.conn.is_closed:
            self.conn.ioloop.stop()

    def _on_conn_closed(self, conn, reason):
        if not self.done and self.error is None:
            self.error = f"connection closed early: {reason!r}"
        conn.ioloop.stop()

    def _on_open(self, conn):
        conn.channel(on_open_callback=self._on_channel)

    def _on_channel(self, ch):
        self.ch = ch
        ch.add_on_close_callback(lambda c, reason: self._fail(f"channel closed: {reason!r}") if not self.done else None)
        ch.add_on_return_callback(self._on_return)
        ch.confirm_delivery(self._on_confirm, callback=lambda _frame: self._pump())

    def _on_return(self, ch, method, props, body):
        self.returned.append(parse_body(body))

    def _on_confirm(self, frame):
        method = frame.method
        kind = method.NAME.split(".")[1]  # 'Ack' or 'Nack'
        tags = [t for t in self.unconfirmed if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        if not method.multiple and method.delivery_tag not in self.unconfirmed:
            self._fail(f"confirm for unknown or already confirmed delivery tag {method.delivery_tag}")
            return
        for tag in tags:
            seq = self.unconfirmed.pop(tag)
            if kind == "Ack":
                self.acked += 1
            else:
                self.nacked.append(seq)
        self._pump()

    def _pump(self):
        props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient)
        while self.next_seq < self.count and len(self.unconfirmed) < self.window:
            seq = self.next_seq
            self.ch.basic_publish("", self.queue, make_body(seq), props, mandatory=True)
            self.unconfirmed[self.next_tag] = seq
            self.next_tag += 1
            self.next_seq += 1
        if self.next_seq == self.count and not self.unconfirmed and not self.done:
            self.done = True
            self.conn.close()


def consume_all(params, queue, count, prefetch, timeout, idle_timeout=10.0):
    """Consume with manual acks until `count` distinct seqs were seen and the
    queue stays quiet; returns (first-delivery seqs set, duplicates, bad dups, extras)."""
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    seen = bytearray(count)
    distinct = 0
    deliveries = 0
    dup_flagged = 0
    dup_unflagged: list[int] = []
    out_of_range: list[int] = []
    deadline = time.monotonic() + timeout
    last_msg = time.monotonic()
    drain_after = None
    for method, props, body in ch.consume(queue, auto_ack=False, inactivity_timeout=0.2):
        now = time.monotonic()
        if method is None:
            if drain_after is not None and now >= drain_after:
                break
            if now - last_msg > idle_timeout:
                break
            if now > deadline:
                break
            continue
        last_msg = now
        deliveries += 1
        seq = parse_body(body)
        if not 0 <= seq < count:
            out_of_range.append(seq)
        elif seen[seq]:
            if method.redelivered:
                dup_flagged += 1
            else:
                dup_unflagged.append(seq)
        else:
            seen[seq] = 1
            distinct += 1
            if distinct == count:
                drain_after = now + 1.0  # keep listening briefly for extra deliveries
        ch.basic_ack(method.delivery_tag)
        if now > deadline:
            break
    ch.cancel()
    remaining = ch.queue_declare(queue=queue, passive=True).method.message_count
    conn.close()
    missing = [i for i in range(count) if not seen[i]]
    return {
        "deliveries": deliveries,
        "distinct": distinct,
        "missing": missing,
        "dup_flagged": dup_flagged,
        "dup_unflagged": dup_unflagged,
        "out_of_range": out_of_range,
        "remaining": remaining,
    }


def run_bulk(params, count=COUNT, window=WINDOW, prefetch=PREFETCH, timeout=600.0, log=print):
    queue = f"bulk-{uuid.uuid4().hex[:12]}"
    admin = pika.BlockingConnection(params)
    ach = admin.channel()
    ach.queue_declare(queue=queue, durable=False, auto_delete=False)
    admin.close()
    try:
        t0 = time.monotonic()
        pub = ConfirmingPublisher(params, queue, count, window, timeout)
        pub.run()
        t1 = time.monotonic()
        log(f"published {pub.next_seq} msgs, {pub.acked} confirmed in {t1 - t0:.1f}s "
            f"({pub.acked / max(t1 - t0, 1e-9):.0f}/s)")
        assert pub.error is None, pub.error
        assert pub.nacked == [], f"{len(pub.nacked)} nacked, first {pub.nacked[:10]}"
        assert pub.returned == [], f"{len(pub.returned)} returned, first {pub.returned[:10]}"
        assert pub.acked == count and not pub.unconfirmed, (pub.acked, len(pub.unconfirmed))

        res = consume_all(params, queue, count, prefetch, timeout)
        t2 = time.monotonic()
        log(f"consumed {res['deliveries']} deliveries ({res['distinct']} distinct) in {t2 - t1:.1f}s "
            f"({res['deliveries'] / max(t2 - t1, 1e-9):.0f}/s); redelivered dups {res['dup_flagged']}")
        assert res["missing"] == [], f"{len(res['missing'])} lost, first {res['missing'][:20]}"
        assert res["out_of_range"] == [], f"unexpected messages {res['out_of_range'][:20]}"
        assert res["dup_unflagged"] == [], (
            f"{len(res['dup_unflagged'])} delivered twice without redelivered, first {res['dup_unflagged'][:20]}"
        )
        assert res["remaining"] == 0, f"{res['remaining']} messages left in the queue"
        return res
    finally:
        try:
            admin = pika.BlockingConnection(params)
            admin.channel().queue_delete(queue)
            admin.close()
        except Exception:  # noqa: BLE001
            pass


def _params_from_env():
    return pika.ConnectionParameters(
        host=os.environ.get("AMQP_HOST", "127.0.0.1"),
        port=int(os.environ.get("AMQP_PORT", "5672")),
        virtual_host=os.environ.get("AMQP_VHOST", "/"),
        credentials=pika.PlainCredentials(
            os.environ.get("AMQP_USERNAME", "guest"), os.environ.get("AMQP_PASSWORD", "guest")
        ),
        socket_timeout=10,
        stack_timeout=15,
        blocked_connection_timeout=60,
        heartbeat=60,
        connection_attempts=1,
    )


@pytest.mark.timeout(900)
def test_bulk_publish_confirm_consume_ack(amqp_params):
    run_bulk(amqp_params, log=lambda m: print(m, file=sys.stderr))


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else COUNT
    run_bulk(_params_from_env(), count=n)
    print("OK")
