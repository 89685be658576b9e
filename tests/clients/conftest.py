"""Fixtures for warren's own pika end-to-end scenarios (test_tutorials.py, test_bulk.py).

The broker under test is given by env ``AMQP_HOST`` (default ``127.0.0.1``) and
``AMQP_PORT`` (default ``5672``), user ``AMQP_USERNAME``/``AMQP_PASSWORD``
(default guest/guest), vhost ``AMQP_VHOST`` (default ``/``).
"""
from __future__ import annotations

import os
import uuid

import pika
import pytest


def _params() -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host=os.environ.get("AMQP_HOST", "127.0.0.1"),
        port=int(os.environ.get("AMQP_PORT", "5672")),
        virtual_host=os.environ.get("AMQP_VHOST", "/"),
        credentials=pika.PlainCredentials(
            os.environ.get("AMQP_USERNAME", "guest"),
            os.environ.get("AMQP_PASSWORD", "guest"),
        ),
        # Keep a dead or hung broker from hanging the test run.
        socket_timeout=10,
        stack_timeout=15,
        blocked_connection_timeout=30,
        heartbeat=30,
        connection_attempts=1,
    )


@pytest.fixture
def amqp_params() -> pika.ConnectionParameters:
    return _params()


@pytest.fixture
def connect(amqp_params):
    """Factory: ``connect()`` opens a new BlockingConnection, closed at teardown."""
    opened: list[pika.BlockingConnection] = []

    def _connect() -> pika.BlockingConnection:
        conn = pika.BlockingConnection(amqp_params)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        if conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - best-effort teardown
                pass


@pytest.fixture
def uid() -> str:
    """A short unique suffix for queue/exchange names, so reruns never collide."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def cleanup(connect):
    """Register queues/exchanges to delete at teardown (on a fresh connection)."""
    queues: list[str] = []
    exchanges: list[str] = []

    class _Cleanup:
        def queue(self, name: str) -> str:
            queues.append(name)
            return name

        def exchange(self, name: str) -> str:
            exchanges.append(name)
            return name

    yield _Cleanup()
    if not queues and not exchanges:
        return
    try:
        conn = connect()
    except Exception:  # noqa: BLE001 - broker gone: nothing to clean
        return
    for kind, names in (("queue", queues), ("exchange", exchanges)):
        for name in names:
            try:
                ch = conn.channel()
                if kind == "queue":
                    ch.queue_delete(name)
                else:
                    ch.exchange_delete(name)
                ch.close()
            except Exception:  # noqa: BLE001
                if not conn.is_open:
                    return
