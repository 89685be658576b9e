"""pytest plugin for aio-pika's own tests (the sdist's tests/): the broker under test in
place of a Docker container.

aio-pika's conftest starts RabbitMQ in a container (image ``mosquito/aiormq-rabbitmq``)
through ``tests.docker_client`` and refuses to run without Docker. This plugin, loaded
with ``-p aio_pika_broker`` before the conftest is imported, replaces that module's
``check_docker_available`` and ``DockerClient`` so that the "container" is the broker at
env ``AMQP_HOST``/``AMQP_PORT``: the conftest's fixtures, its readiness probe and every
test then run unchanged against it. Stopping the "container" does nothing.

AMQPS is port ``AMQPS_PORT`` when set (0 otherwise: the TLS tests then fail to connect).
"""
from __future__ import annotations

import os


class _Broker:
    """Stands in for tests.docker_client.DockerClient."""

    def __init__(self, _info=None):
        pass

    def run(self, image, ports, environment=None):
        from tests.docker_client import ContainerInfo

        host = os.environ.get("AMQP_HOST", "127.0.0.1")
        mapped = {"5672/tcp": int(os.environ["AMQP_PORT"]), "5671/tcp": int(os.environ.get("AMQPS_PORT", "0"))}
        return ContainerInfo(id=f"broker-for-{image}", ports={p: mapped.get(p, 0) for p in ports}, host=host)

    def kill(self, _container_id):
        pass

    def remove(self, _container_id):
        pass


def pytest_load_initial_conftests(early_config, parser, args):
    # Runs before conftest.py files are imported: their `from .docker_client import ...`
    # then takes these.
    import tests.docker_client as dc

    dc.check_docker_available = lambda: None
    dc.DockerClient = _Broker
