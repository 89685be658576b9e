"""AMQP over TLS with pika and kombu (py-amqp), against a warren started here with a
``[tls]`` section: certificates made by trustme (a server CA, a client CA, and a CA
nobody trusts), ``verify = "verify_peer"`` and ``fail_if_no_peer_cert = true``.

Checked: a client with the right chain and a client certificate publishes and consumes;
a client trusting another CA, a client without a certificate, a client whose certificate
comes from another CA and a client whose certificate has expired are refused; a broker
serving an expired certificate is refused by the clients; after the server certificate is
replaced and SIGHUP sent, new connections get the new one while a connection opened
before goes on.

The warren binary is given by env ``WARREN_BIN`` (run_suites.py sets it for a warren
started with ``--broker-cmd``); without it the tests skip.
"""
from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

import datetime

import amqp.exceptions
import kombu
import kombu.exceptions
import pika
import pika.exceptions
import pytest
import trustme

WARREN = os.environ.get("WARREN_BIN", "")

pytestmark = pytest.mark.skipif(not WARREN, reason="WARREN_BIN (a warren binary to start with TLS) is not set")

LISTENING = re.compile(r"^warren: (\S+) listening on (\S+)$")

# A certificate that was valid for a day, a month ago.
_NOW = datetime.datetime.now(datetime.timezone.utc)
EXPIRED = {"not_before": _NOW - datetime.timedelta(days=31), "not_after": _NOW - datetime.timedelta(days=30)}


class Pki:
    """The certificates of one broker and its clients, written where the broker reads them."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.server_ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.stranger_ca = trustme.CA()
        self.client = self.client_ca.issue_cert("app@clients")
        self.stranger = self.stranger_ca.issue_cert("app@clients")
        self.expired_client = self.client_ca.issue_cert("app@clients", **EXPIRED)
        self.client_ca.cert_pem.write_to_path(str(directory / "clients-ca.pem"))
        self.install(self.server_ca)

    def install(self, ca: trustme.CA, **validity) -> None:
        """Replaces the server's chain and key with a new certificate of `ca` (valid now,
        or over `validity`), renaming new files over the old ones as certificate tools do."""
        leaf = ca.issue_cert("localhost", "127.0.0.1", **validity)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        for name, data in (("server.pem", chain), ("server.key", leaf.private_key_pem.bytes())):
            tmp = self.dir / (name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(self.dir / name)

    def files(self, cert: trustme.LeafCert, name: str) -> tuple[str, str]:
        """A client certificate and key written as files (py-amqp takes paths)."""
        cert_path, key_path = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(key_path))
        return str(cert_path), str(key_path)

    def ca_file(self, ca: trustme.CA, name: str) -> str:
        path = self.dir / f"{name}-ca.pem"
        ca.cert_pem.write_to_path(str(path))
        return str(path)


class Broker:
    """`warren serve` with TLS, on ports the kernel picks; stopped by `stop()`."""

    def __init__(self, directory: Path):
        self.dir = directory
        (directory / "warren.toml").write_text(
            "[tls]\n"
            'certfile = "server.pem"\n'
            'keyfile = "server.key"\n'
            'cacertfile = "clients-ca.pem"\n'
            'verify = "verify_peer"\n'
            "fail_if_no_peer_cert = true\n"
        )
        env = dict(os.environ, WARREN_RUNTIME_DIR=str(directory / "run"), WARREN_LOG="warn")
        self.proc = subprocess.Popen(
            [WARREN, "serve", "--amqp-port", "0", "--http-port", "0", "--amqps-port", "0",
             "--data-dir", str(directory / "data"), "--config", str(directory / "warren.toml")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, env=env)
        self.ports: dict[str, int] = {}
        ready = threading.Event()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        if not ready.wait(30) or "AMQPS" not in self.ports:
            self.stop()
            raise RuntimeError(f"warren did not announce its listeners: {self.ports}")

    def _read(self, ready: threading.Event) -> None:
        # Reads stdout to its end, so that the broker never blocks on a full pipe.
        for line in self.proc.stdout:
            m = LISTENING.match(line.strip())
            if m:
                self.ports[m.group(1)] = int(m.group(2).rsplit(":", 1)[1])
                if m.group(1) == "HTTP":
                    ready.set()
        ready.set()

    @property
    def amqps(self) -> int:
        return self.ports["AMQPS"]

    def hang_up(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def broker(pki):
    b = Broker(pki.dir)
    yield b
    b.stop()


def pika_params(port: int, ca: trustme.CA, client: trustme.LeafCert | None) -> pika.ConnectionParameters:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    if client is not None:
        client.configure_cert(context)
    return pika.ConnectionParameters(
        host="127.0.0.1", port=port, virtual_host="/",
        credentials=pika.PlainCredentials("guest", "guest"),
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
        socket_timeout=10, stack_timeout=15, connection_attempts=1)


def kombu_connection(port: int, ca_file: str, client: tuple[str, str] | None) -> kombu.Connection:
    sslopts = {"ca_certs": ca_file, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}
    if client is not None:
        sslopts["certfile"], sslopts["keyfile"] = client
    return kombu.Connection(f"amqp://guest:guest@127.0.0.1:{port}//", ssl=sslopts,
                            connect_timeout=10, transport_options={"max_retries": 0})


def pika_round_trip(conn: pika.BlockingConnection, queue: str, body: bytes) -> None:
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=False)
    ch.basic_publish("", queue, body)
    for _ in range(100):
        method, _, got = ch.basic_get(queue, auto_ack=True)
        if method is not None:
            assert got == body
            return
        conn.sleep(0.05)
    raise AssertionError("the message did not come back")


def pika_refused(params: pika.ConnectionParameters) -> bool:
    try:
        conn = pika.BlockingConnection(params)
    # pika raises a failed certificate check as the ssl module's error itself.
    except (pika.exceptions.AMQPConnectionError, OSError):
        return True
    conn.close()
    return False


def kombu_refused(connection: kombu.Connection) -> bool:
    with connection:
        try:
            # One attempt: kombu's connect() retries after a pause of 2 s.
            connection.ensure_connection(max_retries=0)
        except (OSError, amqp.exceptions.AMQPError, kombu.exceptions.OperationalError):
            return True
    return False


def test_pika_with_the_right_chain_and_a_client_certificate_publishes_and_consumes(broker, pki):
    conn = pika.BlockingConnection(pika_params(broker.amqps, pki.server_ca, pki.client))
    try:
        pika_round_trip(conn, f"tls-pika-{uuid.uuid4().hex[:8]}", b"over TLS")
    finally:
        conn.close()


def test_kombu_with_the_right_chain_and_a_client_certificate_publishes_and_consumes(broker, pki):
    client = pki.files(pki.client, "client")
    queue = kombu.Queue(f"tls-kombu-{uuid.uuid4().hex[:8]}", routing_key="tls-kombu")
    with kombu_connection(broker.amqps, pki.ca_file(pki.server_ca, "server"), client) as conn:
        conn.connect()
        assert conn.connected
        with conn.Producer() as producer:
            producer.publish({"hello": "over TLS"}, routing_key=queue.name, declare=[queue])
        with conn.SimpleQueue(queue.name) as q:
            message = q.get(timeout=10)
            assert message.payload == {"hello": "over TLS"}
            message.ack()


def test_clients_trusting_another_ca_are_refused(broker, pki):
    assert pika_refused(pika_params(broker.amqps, pki.stranger_ca, pki.client))
    client = pki.files(pki.client, "client")
    assert kombu_refused(kombu_connection(broker.amqps, pki.ca_file(pki.stranger_ca, "stranger"), client))


def test_a_client_certificate_is_required_and_must_come_from_the_client_ca(broker, pki):
    assert pika_refused(pika_params(broker.amqps, pki.server_ca, None)), "no certificate"
    assert pika_refused(pika_params(broker.amqps, pki.server_ca, pki.stranger)), "another CA's"
    server_ca = pki.ca_file(pki.server_ca, "server")
    assert kombu_refused(kombu_connection(broker.amqps, server_ca, None))
    stranger = pki.files(pki.stranger, "stranger-client")
    assert kombu_refused(kombu_connection(broker.amqps, server_ca, stranger))


def test_an_expired_client_certificate_is_refused(broker, pki):
    assert pika_refused(pika_params(broker.amqps, pki.server_ca, pki.expired_client))
    expired = pki.files(pki.expired_client, "expired-client")
    assert kombu_refused(kombu_connection(broker.amqps, pki.ca_file(pki.server_ca, "server"), expired))


def test_clients_refuse_a_broker_serving_an_expired_certificate(tmp_path):
    pki = Pki(tmp_path)
    pki.install(pki.server_ca, **EXPIRED)
    broker = Broker(tmp_path)
    try:
        assert pika_refused(pika_params(broker.amqps, pki.server_ca, pki.client))
        client = pki.files(pki.client, "client")
        assert kombu_refused(kombu_connection(broker.amqps, pki.ca_file(pki.server_ca, "server"), client))
        # The same chain, valid, is taken once it is in force: the refusal was the date.
        pki.install(pki.server_ca)
        broker.hang_up()
        deadline = time.monotonic() + 10
        while pika_refused(pika_params(broker.amqps, pki.server_ca, pki.client)):
            assert time.monotonic() < deadline, "the valid certificate was not put in force"
            time.sleep(0.2)
    finally:
        broker.stop()


def test_new_connections_get_a_reloaded_certificate_while_open_ones_go_on(tmp_path):
    pki = Pki(tmp_path)
    broker = Broker(tmp_path)
    try:
        before = pika.BlockingConnection(pika_params(broker.amqps, pki.server_ca, pki.client))
        queue = f"tls-reload-{uuid.uuid4().hex[:8]}"
        pika_round_trip(before, queue, b"before the reload")

        new_ca = trustme.CA()
        pki.install(new_ca)
        broker.hang_up()
        client = pki.files(pki.client, "client")
        new_ca_file = pki.ca_file(new_ca, "new")
        deadline = time.monotonic() + 10
        while kombu_refused(kombu_connection(broker.amqps, new_ca_file, client)):
            assert time.monotonic() < deadline, "the new certificate was not put in force"
            time.sleep(0.2)
        after = pika.BlockingConnection(pika_params(broker.amqps, new_ca, pki.client))
        pika_round_trip(after, queue + "-after", b"after the reload")
        after.close()
        assert pika_refused(pika_params(broker.amqps, pki.server_ca, pki.client)), "the old chain is gone"
        # The connection opened before the reload keeps its session.
        pika_round_trip(before, queue, b"still going")
        before.close()
    finally:
        broker.stop()
