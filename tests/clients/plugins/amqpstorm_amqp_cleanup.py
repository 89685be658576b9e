"""pytest plugin for amqpstorm's functional tests (amqpstorm/tests/functional).

amqpstorm's ``@setup(queue=True, exchange=True)`` test decorator deletes the
queues / exchanges a test created, after the test, through the RabbitMQ
management HTTP API (``amqpstorm.tests.functional.utility.clean``).  When the
broker has no HTTP API that cleanup raises ``ApiConnectionError`` in the
decorator's ``finally`` and fails every such test.  This plugin replaces it:

* ``--amqpstorm-cleanup=amqp`` (default): same deletions (queue.delete /
  exchange.delete of the test's names: the test function's name, or the
  decorator's ``override_names``), done over AMQP 0-9-1 with pika, one fresh
  channel per deletion so that a 404 channel close cannot cascade.
* ``--amqpstorm-cleanup=http``: keep amqpstorm's own HTTP cleanup (set
  ``AMQP_HTTP_URL`` to the broker's management API, e.g.
  ``http://127.0.0.1:<http_port>``).  Use this once the broker serves the
  management API.
* ``--amqpstorm-cleanup=none``: no cleanup at all.

The default may also be given by env ``AMQPSTORM_CLEANUP``.

The suite also connects with ``Connection(AMQP_HOST, user, password)``, i.e.
always port 5672.  When env ``AMQP_PORT`` is set, this plugin makes it the
default port of ``amqpstorm.Connection`` (explicit ports, e.g. from
``AMQP_URI``, are left alone).

Load with ``-p amqpstorm_amqp_cleanup`` (this directory on PYTHONPATH).
"""
from __future__ import annotations

import logging
import os

LOG = logging.getLogger("amqpstorm_amqp_cleanup")


def pytest_addoption(parser):
    group = parser.getgroup("amqpstorm cleanup")
    group.addoption(
        "--amqpstorm-cleanup",
        choices=("amqp", "http", "none"),
        default=os.environ.get("AMQPSTORM_CLEANUP", "amqp"),
        help="how amqpstorm's functional tests delete their queues/exchanges "
        "after each test (default: amqp, or env AMQPSTORM_CLEANUP)",
    )


def _amqp_params():
    import pika

    return pika.ConnectionParameters(
        host=os.environ.get("AMQP_HOST", "localhost"),
        port=int(os.environ.get("AMQP_PORT", "5672")),
        credentials=pika.PlainCredentials(
            os.environ.get("AMQP_USERNAME", "guest"),
            os.environ.get("AMQP_PASSWORD", "guest"),
        ),
        socket_timeout=5,
        blocked_connection_timeout=5,
        connection_attempts=2,
        retry_delay=0.5,
    )


def amqp_clean(names, queue=False, exchange=False):
    """Drop-in replacement for amqpstorm.tests.functional.utility.clean."""
    if not queue and not exchange:
        return
    import pika
    import pika.exceptions

    conn = pika.BlockingConnection(_amqp_params())
    try:
        for name in names:
            ops = []
            if queue:
                ops.append(("queue_delete", {"queue": name}))
            if exchange:
                ops.append(("exchange_delete", {"exchange": name}))
            for op, kwargs in ops:
                try:
                    ch = conn.channel()
                except pika.exceptions.AMQPError:
                    LOG.exception("cleanup: cannot open channel")
                    raise
                try:
                    getattr(ch, op)(**kwargs)
                except pika.exceptions.ChannelClosed as exc:
                    # e.g. 404 NOT_FOUND: nothing to delete.
                    LOG.debug("cleanup %s(%s): %s", op, kwargs, exc)
                    continue
                try:
                    ch.close()
                except pika.exceptions.AMQPError:
                    pass
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


def _patch_default_port():
    port = os.environ.get("AMQP_PORT")
    if not port:
        return
    import amqpstorm.connection

    cls = amqpstorm.connection.Connection
    if getattr(cls.__init__, "_warren_port_patch", False):
        return
    orig_init = cls.__init__

    def __init__(self, hostname, username, password, *args, **kwargs):
        if not args and "port" not in kwargs:
            kwargs["port"] = int(port)
        orig_init(self, hostname, username, password, *args, **kwargs)

    __init__._warren_port_patch = True
    cls.__init__ = __init__


def pytest_configure(config):
    _patch_default_port()
    mode = config.getoption("--amqpstorm-cleanup")
    from amqpstorm.tests.functional import utility

    if mode == "amqp":
        utility.clean = amqp_clean
    elif mode == "none":
        utility.clean = lambda names, queue=False, exchange=False: None
    # "http": leave amqpstorm's own management-API cleanup in place.


def pytest_report_header(config):
    return (
        f"amqpstorm cleanup: {config.getoption('--amqpstorm-cleanup')}; "
        f"AMQP_PORT={os.environ.get('AMQP_PORT', '(default 5672)')}"
    )
