#!/usr/bin/env python3
"""Side-by-side benchmark: warren against RabbitMQ 3.10 on this machine, same client.

    scripts/bench.py                    # every scenario, both brokers
    scripts/bench.py --only transient,latency --duration 5
    scripts/bench.py --brokers warren   # warren alone
    scripts/bench.py --brokers warren,warren-cluster --only persistent,u-persistent,l-persistent
                                        # one node against a three-node cluster

It builds warren (release), installs Debian's rabbitmq-server if it is missing, starts
each broker on its own free port with its own data directory, runs the same
`warren perf` scenarios against each, and prints a table: throughput (or latency, or
memory) of both brokers and their ratio, plus each broker's CPU time per message (from
/proc/PID/stat) and peak resident memory (sampled from /proc/PID/status) during the
scenario. Use --json FILE to keep the raw figures.

The `l-` scenarios use an independent client instead of `warren perf`: bench/lapin-perf,
built on lapin (a Rust AMQP client applications use), which writes each publish and each
ack on its own. It is built here (cargo, release) the first time one of them runs.

The machine is shared and noisy: compare the ratios of one run, not absolute numbers
across runs.
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WARREN = ROOT / "target" / "release" / "warren"
# The broker binary and the `warren perf` client binary (--warren-bin, --perf-bin): two
# builds of warren can be compared with one client.
WARREN_BIN = WARREN
PERF_BIN = WARREN
# The independent client (bench/lapin-perf), for the scenarios whose client is "lapin".
LAPIN_DIR = ROOT / "bench" / "lapin-perf"
LAPIN_BIN = LAPIN_DIR / "target" / "release" / "lapin-perf"
# More `warren serve` arguments (--warren-args), e.g. "--threads 2".
WARREN_ARGS: list[str] = []
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    return wait_port_on("127.0.0.1", port, timeout)


def wait_port_on(host: str, port: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            if time.time() >= deadline:
                return False
            time.sleep(0.1)


def answers_api(host: str, port: int) -> bool:
    """Whether GET /api/overview on this management port answers 200 (a cluster's leader;
    a follower redirects), redirects not followed."""
    conn = http.client.HTTPConnection(host, port, timeout=1)
    try:
        conn.request("GET", "/api/overview",
                     headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def pid_listening(port: int) -> int | None:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    for part in out.split("pid=")[1:]:
        return int(part.split(",")[0])
    return None


class Sampler:
    """Samples a process's resident memory every 50 ms; keeps the peak."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return
            self._stop.wait(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


# ----- brokers -----

class Broker:
    name = "?"
    port = 0

    def start(self): ...
    def stop(self): ...
    def pid(self) -> int: ...
    def restart(self) -> float:
        """Stops gracefully, starts again; returns seconds until the AMQP port answers."""
        self.stop()
        t0 = time.time()
        self.start()
        return time.time() - t0


class Warren(Broker):
    name = "warren"

    def __init__(self, sync: str):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-warren-"))
        self.port, self.http_port, self.sync = free_port(), free_port(), sync
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [str(WARREN_BIN), "serve", "--amqp-port", str(self.port), "--http-port", str(self.http_port),
             "--data-dir", str(self.dir), "--sync", self.sync, *WARREN_ARGS],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, WARREN_LOG="warn"))
        if not wait_port(self.port, 120):
            raise SystemExit("warren did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)

    def pid(self) -> int:
        return self.proc.pid

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class WarrenCluster(Broker):
    """Three warren processes on this machine as one cluster (127.0.0.1, .2, .3); clients
    use the leader, whose process is the one measured. Against `warren`, the figures show
    what replication costs: every batch is fsynced by two of the three before its confirm."""
    name = "warren-cluster"

    def __init__(self, sync: str):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        self.sync = sync
        self.nodes = []
        for i in (1, 2, 3):
            host = f"127.0.0.{i}"
            self.nodes.append({"i": i, "host": host, "amqp": free_port(), "http": free_port(),
                               "raft": free_port(), "proc": None})
        members = "\n".join(f'  {{ id = {n["i"]}, raft = "{n["host"]}:{n["raft"]}", amqp = "{n["host"]}:{n["amqp"]}" }},'
                            for n in self.nodes)
        for n in self.nodes:
            (self.dir / f"node{n['i']}.toml").write_text(
                f'[cluster]\nnode_id = {n["i"]}\ncookie = "bench-cluster-cookie-0123"\nmembers = [\n{members}\n]\n')
        self.leader = None
        self.port = 0

    def start(self):
        for n in self.nodes:
            n["proc"] = subprocess.Popen(
                [str(WARREN_BIN), "serve", "--config", str(self.dir / f"node{n['i']}.toml"), "--bind", n["host"],
                 "--amqp-port", str(n["amqp"]), "--http-port", str(n["http"]),
                 "--data-dir", str(self.dir / f"data{n['i']}"), "--node-name", f"bench{n['i']}@localhost",
                 "--sync", self.sync, *WARREN_ARGS],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, WARREN_LOG="warn"))
        deadline = time.time() + 120
        while time.time() < deadline:
            # Only the leader answers the API itself (followers redirect to it).
            serving = [n for n in self.nodes if answers_api(n["host"], n["http"])]
            if len(serving) == 1:
                self.leader = serving[0]
                self.port = self.leader["amqp"]
                self.host = self.leader["host"]
                return
            time.sleep(0.1)
        raise SystemExit("the warren cluster elected no leader")

    def stop(self):
        for n in self.nodes:
            if n["proc"] and n["proc"].poll() is None:
                n["proc"].terminate()
        for n in self.nodes:
            if n["proc"]:
                n["proc"].wait(120)

    def pid(self) -> int:
        return self.leader["proc"].pid

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitMQ(Broker):
    name = "rabbitmq"

    def __init__(self):
        if not shutil.which("rabbitmq-server"):
            print("installing rabbitmq-server from Debian's packages ...", file=sys.stderr)
            subprocess.run(["apt-get", "update", "-qq"], check=True)
            subprocess.run(["apt-get", "install", "-y", "-q", "rabbitmq-server"], check=True,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), stdout=subprocess.DEVNULL)
        self.base = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
        self.port = free_port()
        dist = free_port()
        self.node = f"bench{self.port}@localhost"
        self.env = dict(os.environ, RABBITMQ_NODE_PORT=str(self.port), RABBITMQ_NODENAME=self.node,
                        RABBITMQ_DIST_PORT=str(dist), HOME=str(self.base),
                        RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"), RABBITMQ_LOG_BASE=str(self.base / "log"),
                        RABBITMQ_FEATURE_FLAGS_FILE=str(self.base / "feature_flags"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"))
        (self.base / "mnesia").mkdir()
        (self.base / "log").mkdir()
        (self.base / "enabled_plugins").write_text("[].\n")
        # The Debian scripts run the server as the rabbitmq user: it must own the folder.
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=False)
        self.proc = None

    def start(self):
        # Debian's default of 1024 open files stops RabbitMQ accepting at ~870 connections
        # (its file descriptor alarm); give it what warren gets: up to 65536, within the hard
        # limit. Debian's wrapper switches to the rabbitmq user with su, whose PAM session
        # resets the soft limit, so switch here and raise it after the switch.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
        if os.geteuid() == 0:
            cmd = ["su", "rabbitmq", "-s", "/bin/sh", "-c",
                   f"ulimit -n {nofile} && cd /var/lib/rabbitmq && exec /usr/lib/rabbitmq/bin/rabbitmq-server"]
        else:
            cmd = ["rabbitmq-server"]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        if not wait_port(self.port, 180):
            raise SystemExit(f"RabbitMQ did not start; see {self.base}/log")

    def stop(self):
        subprocess.run(["rabbitmqctl", "-q", "-n", self.node, "stop"], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proc:
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)

    def pid(self) -> int:
        return pid_listening(self.port) or self.proc.pid

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


# ----- scenarios -----

@dataclass
class Scenario:
    key: str
    title: str
    args: list[str]
    metric: str = "consume_rate"   # consume_rate | latency | idle_rss | restart | backlog_rss
    extra: dict = field(default_factory=dict)
    client: str = "warren"         # warren (`warren perf`) | lapin (bench/lapin-perf)


def scenarios(duration: int) -> list[Scenario]:
    d = ["--duration", str(duration)]
    return [
        Scenario("transient", "1p1c 16 B transient, auto-ack", ["--size", "16", "--autoack", *d]),
        Scenario("manual", "1p1c 16 B, manual acks (multi-ack 100, prefetch 200)",
                 ["--size", "16", "--multi-ack", "100", "--prefetch", "200", *d]),
        Scenario("persistent", "1p1c 16 B persistent, confirms (window 200), manual acks",
                 ["--size", "16", "--persistent", "--confirm", "200", "--multi-ack", "100", "--prefetch", "200", *d]),
        Scenario("1k", "1p1c 1 KiB, auto-ack", ["--size", "1024", "--autoack", *d]),
        Scenario("64k", "1p1c 64 KiB, auto-ack", ["--size", "65536", "--autoack", *d]),
        Scenario("fanout", "fanout to 10 queues, 1 consumer each, auto-ack",
                 ["--size", "16", "--autoack", "--exchange-type", "fanout", "--queues", "10", "--consumers", "10", *d]),
        Scenario("many", "100 queues, 100 producers, 100 consumers, 10,000 msg/s in all",
                 ["--size", "16", "--queues", "100", "--producers", "100", "--consumers", "100", "--rate", "10000",
                  "--latency", "--multi-ack", "10", "--prefetch", "100", *d], metric="latency"),
        Scenario("latency", "1p1c at 10,000 msg/s: latency", ["--size", "16", "--rate", "10000", "--latency", *d],
                 metric="latency"),
        # Ordinary clients: every publish and every ack is its own write (`--unbatched`),
        # as pika, amqplib, lapin and the Go and Java clients do.
        Scenario("u-transient", "unbatched: 10 producers x 1,000 msg/s, 10 consumers ack each",
                 ["--size", "16", "--producers", "10", "--consumers", "10", "--queues", "10", "--rate", "10000",
                  "--unbatched", "--prefetch", "100", "--latency", *d], metric="latency"),
        Scenario("u-persistent", "unbatched: same, persistent + confirms (window 20)",
                 ["--size", "16", "--producers", "10", "--consumers", "10", "--queues", "10", "--rate", "10000",
                  "--unbatched", "--prefetch", "100", "--persistent", "--confirm", "20", "--latency", *d],
                 metric="latency"),
        Scenario("u-conns", "unbatched: 1,000 producers x 10 msg/s, 10 consumers ack each",
                 ["--size", "16", "--producers", "1000", "--consumers", "10", "--queues", "10", "--rate", "10000",
                  "--unbatched", "--prefetch", "100", "--latency", *d], metric="latency"),
        Scenario("u-rpc", "unbatched: 100 RPC clients, 10 servers, round trip per call",
                 ["--size", "16", "--rpc", "--producers", "100", "--consumers", "10", "--prefetch", "10", *d],
                 metric="latency"),
        # The same load from an independent client built on lapin.
        Scenario("l-transient", "lapin: 10 producers x 1,000 msg/s, 10 consumers ack each",
                 ["--size", "16", "--producers", "10", "--consumers", "10", "--queues", "10", "--rate", "10000",
                  "--prefetch", "100", *d], metric="latency", client="lapin"),
        Scenario("l-persistent", "lapin: same, persistent + confirms (window 20)",
                 ["--size", "16", "--producers", "10", "--consumers", "10", "--queues", "10", "--rate", "10000",
                  "--prefetch", "100", "--persistent", "--confirm", "20", *d], metric="latency", client="lapin"),
        # Publishers that wait for each confirm before the next publish (as with pika's
        # BlockingConnection or the Java client's waitForConfirms): throughput is set by
        # how soon a sync follows the publishes it covers.
        Scenario("l-sync", "lapin: 10 producers each waiting for every confirm, persistent, 10 consumers",
                 ["--size", "16", "--producers", "10", "--consumers", "10", "--queues", "10", "--rate", "1000000",
                  "--prefetch", "100", "--persistent", "--confirm", "1", *d], client="lapin"),
        Scenario("idle", "1,000 idle connections with a channel each: broker memory per connection",
                 ["--idle-connections", "1000", "--duration", "5"], metric="idle_rss"),
        Scenario("restart", "restart with 1,000,000 persistent messages queued",
                 ["--size", "16", "--persistent", "--confirm", "1000", "--consumers", "0", "--count", "1000000",
                  "--duration", "0"], metric="restart"),
        Scenario("backlog", "peak memory while 10,000,000 16 B messages wait in one queue",
                 ["--size", "16", "--consumers", "0", "--count", "10000000", "--duration", "0"], metric="backlog_rss"),
    ]


def perf(broker: Broker, sc: Scenario, timeout: float) -> dict:
    uri = f"amqp://guest:guest@{getattr(broker, 'host', '127.0.0.1')}:{broker.port}/%2f"
    if sc.client == "lapin":
        cmd = [str(LAPIN_BIN), "--uri", uri, *sc.args]
    else:
        cmd = [str(PERF_BIN), "perf", "--uri", uri, "--quiet", *sc.args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{sc.client} client failed against {broker.name}: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_scenario(broker: Broker, sc: Scenario, timeout: float) -> dict:
    pid = broker.pid()
    cpu0, rss0 = cpu_seconds(pid), rss_bytes(pid)
    sampler = Sampler(pid)
    t0 = time.time()
    result = perf(broker, sc, timeout)
    wall = time.time() - t0
    peak = sampler.stop()
    cpu = cpu_seconds(pid) - cpu0
    msgs = max(result.get("consumed", 0), result.get("published", 0), 1)
    row = {"result": result, "cpu_s": cpu, "wall_s": wall, "peak_rss": peak, "rss_before": rss0,
           "cpu_us_per_msg": cpu / msgs * 1e6}
    if sc.metric == "restart":
        row["restart_s"] = broker.restart()
        row["after_restart_rss"] = rss_bytes(broker.pid())
    return row


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}/s"


def fmt_mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def headline(sc: Scenario, row: dict) -> tuple[str, float, bool]:
    """The figure shown for a scenario, its numeric value, and whether higher is better."""
    r = row["result"]
    if sc.metric == "consume_rate":
        return fmt_rate(r["consume_rate"]), r["consume_rate"], True
    if sc.metric == "latency":
        lat = r.get("latency_us") or {}
        text = (f"{lat.get('p50', 0)}/{lat.get('p99', 0)}/{lat.get('p999', 0)} µs "
                f"{r['consume_rate']:,.0f}/s")
        conf = r.get("confirm_latency_us")
        if conf:
            text += f" confirm {conf['p50']}/{conf['p99']}/{conf['p999']} µs"
        return text, float(lat.get("p99", 0)), False
    if sc.metric == "idle_rss":
        per = (row["peak_rss"] - row["rss_before"]) / 1000
        return f"{per / 1024:,.1f} KiB/conn", per, False
    if sc.metric == "restart":
        return f"{row['restart_s']:.2f} s ({fmt_rate(r['publish_rate'])} in)", row["restart_s"], False
    if sc.metric == "backlog_rss":
        return f"{fmt_mib(row['peak_rss'])} ({fmt_rate(r['publish_rate'])} in)", row["peak_rss"], False
    raise ValueError(sc.metric)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated scenario keys")
    ap.add_argument("--duration", type=int, default=10, help="seconds per throughput scenario")
    ap.add_argument("--brokers", default="warren,rabbitmq",
                    help="two or more of warren, rabbitmq, warren-cluster (three warren nodes replicating)")
    ap.add_argument("--sync", default="batch", help="warren's --sync setting")
    ap.add_argument("--json", help="write raw figures here")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--warren-bin", help="the warren binary to serve (default: the release build)")
    ap.add_argument("--perf-bin", help="the warren binary whose `perf` is the client (default: the release build)")
    ap.add_argument("--warren-args", default="", help="more `warren serve` arguments, e.g. \"--threads 2\"")
    args = ap.parse_args()
    global WARREN_BIN, PERF_BIN, WARREN_ARGS
    WARREN_ARGS = args.warren_args.split()
    WARREN_BIN = Path(args.warren_bin).resolve() if args.warren_bin else WARREN
    PERF_BIN = Path(args.perf_bin).resolve() if args.perf_bin else WARREN

    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--bin", "warren"], cwd=ROOT, check=True)
    chosen = scenarios(args.duration)
    if args.only:
        keys = set(args.only.split(","))
        chosen = [s for s in chosen if s.key in keys]
    if any(s.client == "lapin" for s in chosen) and (not args.no_build or not LAPIN_BIN.exists()):
        subprocess.run(["cargo", "build", "--release", "--manifest-path", str(LAPIN_DIR / "Cargo.toml")],
                       check=True)
    names = args.brokers.split(",")
    results: dict[str, dict[str, dict]] = {n: {} for n in names}
    for sc in chosen:
        for name in names:
            # A fresh broker per scenario, so no scenario inherits another's memory.
            broker = (Warren(args.sync) if name == "warren" else
                      WarrenCluster(args.sync) if name == "warren-cluster" else RabbitMQ())
            print(f"{name}: {sc.title} ...", file=sys.stderr, flush=True)
            try:
                broker.start()
                time.sleep(1)
                results[name][sc.key] = run_scenario(broker, sc, timeout=3600)
            except Exception as e:  # a scenario failing must not hide the others
                print(f"  failed: {e}", file=sys.stderr)
                results[name][sc.key] = {"error": str(e)}
            finally:
                broker.cleanup()

    print()
    head = f"{'scenario':<64} " + " ".join(f"{n:>64}" for n in names)
    if len(names) == 2:
        head += f" {'ratio':>8} {'CPU µs/msg':>22}"
    print(head)
    print("-" * len(head))
    for sc in chosen:
        cells, values, higher = [], [], True
        for n in names:
            row = results[n].get(sc.key, {})
            if "error" in row or not row:
                cells.append("error")
                values.append(None)
                continue
            text, value, higher = headline(sc, row)
            cells.append(f"{text} [{fmt_mib(row['peak_rss'])}]")
            values.append(value)
        line = f"{sc.title:<64} " + " ".join(f"{c:>64}" for c in cells)
        if len(names) == 2 and None not in values and values[0] and values[1]:
            ratio = values[0] / values[1] if higher else values[1] / values[0]
            cpu = [results[n][sc.key]["cpu_us_per_msg"] for n in names]
            cpu_text = f"{cpu[0]:.2f} vs {cpu[1]:.2f}" if sc.metric in ("consume_rate", "latency") else ""
            line += f" {ratio:>7.2f}x {cpu_text:>22}"
        print(line)
    print("\nratio: how many times better warren is (higher throughput, or lower latency/memory/time).")
    print("latency rows: p50/p99/p99.9 of publish-to-delivery (RPC: the round trip of a call), then")
    print("messages (RPC: calls) received per second, and with confirms p50/p99/p99.9 of publish-to-confirm;")
    print("CPU µs/msg is per message received (RPC: per call).")
    print("[brackets]: the broker's peak resident memory during the scenario.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
