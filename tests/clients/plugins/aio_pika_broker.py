"""pytest plugin for aio-pika's own tests (the sdist's tests/): the broker under test in
place of a Docker container.

aio-pika's conftest starts RabbitMQ in a container (image ``mosquito/aiormq-rabbitmq``)
through ``tests.docker_client`` and refuses to run without Docker. This plugin, loaded
with ``-p aio_pika_broker`` before the conftest is imported, replaces that module's
``check_docker_available`` and ``DockerClient`` so that the "container" is a broker here:
the conftest's fixtures, its readiness probe and every test then run unchanged.

- The session's shared container (the conftest's ``rabbitmq_container`` fixture) is the
  broker at env ``AMQP_HOST``/``AMQP_PORT``, and AMQPS is port ``AMQPS_PORT`` when set (0
  otherwise: the TLS tests then fail to connect). Killing it does nothing.
- Any other container (``test_robust_recovery.py`` starts one per test, which it stops,
  kills and restarts) is a ``warren serve`` of its own when env ``WARREN_BIN`` names the
  binary: on ports the kernel picks and a data directory of its own. Killing it is
  SIGKILL, starting it again runs it on the same data directory (on new ports, which the
  tests read back as they do from Docker), and ``rabbitmqctl`` run in it is
  ``warren ctl``. Without ``WARREN_BIN`` such a container is the shared broker too, and
  those tests fail.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

LISTENING = re.compile(r"^warren: (\S+) listening on (\S+)$")


def _from_fixture(name: str) -> bool:
    """Whether the conftest's fixture `name` is among the callers."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


class _Warren:
    """One `warren serve` standing in for a container: started, SIGKILLed and started
    again on the same data directory."""

    def __init__(self, binary: str):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="aio-pika-broker-")
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = dict(os.environ, WARREN_LOG="warn", WARREN_RUNTIME_DIR=os.path.join(self.dir, "run"))
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--bind", os.environ.get("AMQP_HOST", "127.0.0.1"),
             "--amqp-port", "0", "--http-port", "0", "--data-dir", os.path.join(self.dir, "data")],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env)
        ports: dict[str, int] = {}
        ready = threading.Event()

        def read(proc: subprocess.Popen) -> None:
            # To the end of stdout, so that the broker never blocks on a full pipe.
            for line in proc.stdout:
                m = LISTENING.match(line.strip())
                if m:
                    ports[m.group(1)] = int(m.group(2).rsplit(":", 1)[1])
                    if "AMQP" in ports and "HTTP" in ports:
                        ready.set()
            ready.set()

        threading.Thread(target=read, args=(self.proc,), daemon=True).start()
        if not ready.wait(30) or "AMQP" not in ports:
            self.kill()
            raise RuntimeError(f"warren did not announce its listeners: {ports}")
        self.ports = ports

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def ctl(self, command: list[str]) -> int:
        return subprocess.run([self.binary, "ctl", "--data-dir", os.path.join(self.dir, "data"), *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30).returncode

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Broker:
    """Stands in for tests.docker_client.DockerClient."""

    _own: dict[str, _Warren] = {}
    _execs: dict[str, int] = {}
    _ids = itertools.count(1)

    def __init__(self, _info=None):
        pass

    def run(self, image, ports, environment=None):
        from tests.docker_client import ContainerInfo

        host = os.environ.get("AMQP_HOST", "127.0.0.1")
        binary = os.environ.get("WARREN_BIN")
        if binary and not _from_fixture("rabbitmq_container"):
            warren = _Warren(binary)
            warren.start()
            cid = f"warren-{next(self._ids)}"
            self._own[cid] = warren
            return ContainerInfo(id=cid, ports=self._parse_ports(self.inspect(cid)), host=host)
        mapped = {"5672/tcp": int(os.environ["AMQP_PORT"]), "5671/tcp": int(os.environ.get("AMQPS_PORT", "0"))}
        return ContainerInfo(id=f"broker-for-{image}", ports={p: mapped.get(p, 0) for p in ports}, host=host)

    def start(self, container_id):
        self._own[container_id].start()

    def inspect(self, container_id):
        return {"ports": {"5672/tcp": self._own[container_id].ports["AMQP"]}}

    def _parse_ports(self, info):
        return dict(info["ports"])

    def kill(self, container_id):
        if container_id in self._own:
            self._own[container_id].kill()

    def remove(self, container_id):
        warren = self._own.pop(container_id, None)
        if warren is not None:
            warren.remove()

    def _request(self, method, path, body=None):
        # `rabbitmqctl` run in a container: POST /containers/ID/exec, POST /exec/ID/start,
        # then GET /exec/ID/json until it has ended. The command runs at once, to its end.
        parts = path.strip("/").split("/")
        if method == "POST" and parts[0] == "containers" and parts[2:] == ["exec"]:
            cmd = list(body["Cmd"])
            assert cmd[0] == "rabbitmqctl", cmd
            exec_id = f"exec-{next(self._ids)}"
            self._execs[exec_id] = self._own[parts[1]].ctl(cmd[1:])
            return {"Id": exec_id}
        if method == "POST" and parts[0] == "exec" and parts[2:] == ["start"]:
            return {}
        if method == "GET" and parts[0] == "exec" and parts[2:] == ["json"]:
            return {"Running": False, "ExitCode": self._execs[parts[1]]}
        raise NotImplementedError(f"{method} {path}: not a request this stand-in knows")


def pytest_load_initial_conftests(early_config, parser, args):
    # Runs before conftest.py files are imported: their `from .docker_client import ...`
    # then takes these.
    import tests.docker_client as dc

    dc.check_docker_available = lambda: None
    dc.DockerClient = _Broker
