#!/usr/bin/env python3
"""Failover of a three-node warren cluster, driven by pika.

Three `warren serve` processes on loopback (127.0.0.1, .2 and .3, free ports) form one
cluster. A pika publisher sends persistent messages with publisher confirms and a pika
consumer acks each delivery, both given all three addresses, while:

  * a follower is killed and kept down until the leader's Raft log has dropped what it
    lacks (the members keep only 100 entries behind their stores), then restarted: it must
    catch up from a snapshot of the leader's store, which the leader reports sending;
  * the leader is killed with SIGKILL, five times in a row, and restarted each time once
    another node leads (it rejoins as a follower);
  * then, twice, the leader's Raft traffic is dropped with iptables (its AMQP port stays
    reachable), and let through again once another node leads;
  * then a fourth node, started with `join = true`, is added with `warren ctl
    join_cluster` (it takes the leader's store and votes once caught up), a follower is
    stopped and removed with `warren ctl forget_cluster_node`, and the leader is killed
    once more: the node that joined must help elect the next leader.

At the end every confirmed message must have been delivered, the old leader must have
stopped its broker while cut off and turn clients away with CONNECTION_FORCED and the
members' addresses, and the time from each kill or cut to the first
confirm on the new leader is printed (goal: under 5 s).

    tests/cluster/failover.py --warren target/release/warren [--kills 5] [--cuts 2]

Needs root and iptables for the cuts (`--cuts 0` skips them).
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pika

QUEUE = "failover"
COOKIE = "failover-test-cookie-0123456789"
# Entries a member's Raft log keeps behind its store: few, so that a member down for a
# second or two must catch up from a snapshot.
RETAIN_ENTRIES = 100
FAILOVER_GOAL_S = 5.0
# Longest a failover may take before the test gives up on it.
FAILOVER_LIMIT_S = 30.0


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def listening(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Node:
    def __init__(self, root, warren, i, members, join=False):
        self.i = i
        self.host = f"127.0.0.{i}"
        self.amqp = members[i]["amqp"]
        self.http = members[i]["http"]
        self.raft = members[i]["raft"]
        self.dir = os.path.join(root, f"node{i}")
        self.config = os.path.join(root, f"node{i}.toml")
        self.log = os.path.join(root, f"node{i}.log")
        self.warren = warren
        self.proc = None
        lines = "\n".join(
            f'  {{ id = {j}, raft = "127.0.0.{j}:{m["raft"]}", amqp = "127.0.0.{j}:{m["amqp"]}", '
            f'http = "127.0.0.{j}:{m["http"]}" }},'
            for j, m in sorted(members.items())
        )
        with open(self.config, "w") as f:
            f.write(f'[cluster]\nnode_id = {i}\ncookie = "{COOKIE}"\n'
                    f'log_retain_entries = {RETAIN_ENTRIES}\njoin = {str(join).lower()}\n'
                    f'members = [\n{lines}\n]\n')

    def start(self):
        log = open(self.log, "a")
        self.proc = subprocess.Popen(
            [self.warren, "serve", "--config", self.config, "--bind", self.host,
             "--amqp-port", str(self.amqp), "--http-port", str(self.http),
             "--data-dir", self.dir,
             "--log", "warn,warren::node=info"],
            stdout=log, stderr=log)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def http_get(self, path):
        """(status, headers, body) of a GET on this node's management port, redirects not
        followed; None if it does not answer."""
        conn = http.client.HTTPConnection(self.host, self.http, timeout=2)
        try:
            conn.request("GET", path, headers={
                "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        except OSError:
            return None
        finally:
            conn.close()

    def serving(self):
        """Whether this node runs the broker: only the leader answers the API itself (a
        follower redirects to it)."""
        if self.proc.poll() is not None or not listening(self.host, self.http):
            return False
        answer = self.http_get("/api/overview")
        return answer is not None and answer[0] == 200

    def refusal(self):
        """The reason this node gives a client it turns away, or None if it takes it."""
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters(
                host=self.host, port=self.amqp, connection_attempts=1, socket_timeout=2))
        except pika.exceptions.AMQPError as e:
            # pika guesses at a login or vhost failure when a broker closes a connection
            # during the handshake; the broker's code and text are in the message.
            return str(e)
        conn.close()
        return None


class Ledger:
    """What the clients saw, shared by their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.confirmed = {}  # id -> (time confirmed, host of the node that confirmed it)
        self.delivered = set()
        self.redelivered = 0
        self.publish_errors = 0
        self.consume_errors = 0
        self.stop = threading.Event()

    def first_confirm_after(self, t, not_by):
        """The first confirm after `t` from a node other than `not_by`."""
        with self.lock:
            times = [c for c, host in self.confirmed.values() if c > t and host != not_by]
        return min(times) if times else None


def parameters(nodes):
    return [pika.ConnectionParameters(host=n.host, port=n.amqp, heartbeat=10,
                                      blocked_connection_timeout=30,
                                      connection_attempts=1, socket_timeout=2)
            for n in nodes]


def connect(nodes, until):
    """A connection to whichever node takes it, tried until the event `until` is set."""
    while not until.is_set():
        try:
            return pika.BlockingConnection(parameters(nodes))
        except pika.exceptions.AMQPError:
            time.sleep(0.1)
    return None


def publisher(nodes, ledger):
    next_id = 0
    while not ledger.stop.is_set():
        conn = connect(nodes, ledger.stop)
        if conn is None:
            return
        host = conn._impl.params.host
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(QUEUE, durable=True)
            props = pika.BasicProperties(delivery_mode=2)
            while not ledger.stop.is_set():
                body = str(next_id).encode()
                next_id += 1
                # With confirms on, this returns once the broker confirmed the message.
                ch.basic_publish("", QUEUE, body, props, mandatory=True)
                with ledger.lock:
                    ledger.confirmed[int(body)] = (time.monotonic(), host)
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            with ledger.lock:
                ledger.publish_errors += 1
            time.sleep(0.05)


def consumer(nodes, ledger, done):
    while not done.is_set():
        # The consumer goes on after the publisher stops, until every message is in.
        conn = connect(nodes, done)
        if conn is None:
            return
        try:
            ch = conn.channel()
            ch.queue_declare(QUEUE, durable=True)
            ch.basic_qos(prefetch_count=200)
            for method, props, body in ch.consume(QUEUE, inactivity_timeout=0.5):
                if done.is_set():
                    break
                if method is None:
                    continue
                with ledger.lock:
                    ledger.delivered.add(int(body))
                    ledger.redelivered += method.redelivered
                ch.basic_ack(method.delivery_tag)
            conn.close()
        except (pika.exceptions.AMQPError, OSError):
            with ledger.lock:
                ledger.consume_errors += 1
            time.sleep(0.05)


def wait_for(what, check, limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")


def api_nodes(node):
    """The leader's /api/nodes, or None."""
    req = urllib.request.Request(f"http://{node.host}:{node.http}/api/nodes")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def all_in_step(nodes):
    """Whether the leader lists every member running, its log at most 1,000 entries behind."""
    leader = leader_of(nodes)
    listed = api_nodes(leader) if leader else None
    if not listed or len(listed) != len(nodes):
        return None
    if all(n.get("running") and (n.get("raft_lag") or 0) < 1000 for n in listed):
        return listed
    return None


def commit_latency(nodes):
    """The leader's commit latency from /api/nodes once a window with batches closed,
    checked against its /metrics."""
    leader = leader_of(nodes)
    me = member_entry(api_nodes(leader), leader) if leader else None
    latency = (me or {}).get("raft_commit_latency")
    if not latency or not latency["window_commits"]:
        return None
    assert 0 < latency["p50_us"] <= latency["p99_us"] <= latency["max_us"], latency
    with urllib.request.urlopen(f"http://{leader.host}:{leader.http}/metrics", timeout=2) as r:
        metrics = r.read().decode()
    counts = [line.split()[1] for line in metrics.splitlines()
              if line.startswith("warren_raft_commit_latency_seconds_count ")]
    assert counts and int(counts[0]) >= latency["commits"], counts
    assert "warren_raft_leader 1" in metrics.splitlines()
    return latency


def check_follower_http(nodes):
    """A follower redirects API requests to the leader's management port and serves its
    own Raft metrics."""
    leader = wait_for("a single leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
    for n in nodes:
        if n is leader:
            continue
        status, headers, body = n.http_get("/api/nodes?columns=name")
        want = f"http://{leader.host}:{leader.http}/api/nodes?columns=name"
        assert status == 307 and headers.get("location") == want, (status, headers, body)
        assert json.loads(body)["error"] == "not_leader", body
        status, _, body = n.http_get("/metrics")
        lines = body.decode().splitlines()
        assert status == 200 and "warren_raft_leader 0" in lines, body
    print(f"followers redirect the API to {leader.host}:{leader.http} and serve their metrics",
          flush=True)


def member_entry(listed, node):
    return next((n for n in listed or [] if n.get("cluster_id") == node.i), None)


# How far past the stopped member's last acknowledged index the leader's log must start
# before it is restarted: more than the appends that may have reached it unacknowledged.
MARGIN = 1000


def snapshot_round(nodes):
    """Kills a follower until the leader's log no longer holds what it lacks, restarts it,
    and checks that it caught up from a snapshot. Returns the leader's account."""
    leader = wait_for("a single leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
    follower = next(n for n in nodes if n is not leader)
    follower.kill()

    def compacted_past():
        listed = api_nodes(leader)
        me, other = member_entry(listed, leader), member_entry(listed, follower)
        if me and other and other.get("raft_match_index") is not None \
                and me["raft_first_index"] > other["raft_match_index"] + MARGIN:
            return (me["raft_first_index"], other["raft_match_index"])
        return None

    first, matched = wait_for("the leader's log to drop what the stopped member lacks",
                              compacted_past, 60)
    follower.start()
    wait_for("every member running and in step", lambda: all_in_step(nodes), 60)
    me = member_entry(api_nodes(leader), leader)
    assert me and me["raft_snapshots_sent"] >= 1, f"no snapshot sent: {me}"
    print(f"snapshot: node {follower.i} held index {matched}, the leader's log started at "
          f"{first}; it caught up from {me['raft_snapshots_sent']} snapshot(s)", flush=True)
    return follower.i, matched, first


def metric(node, name):
    """A single-valued family of this node's /metrics, or None."""
    answer = node.http_get("/metrics")
    if not answer or answer[0] != 200:
        return None
    for line in answer[2].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def ctl(warren, leader, *command):
    done = subprocess.run([warren, "ctl", "--data-dir", leader.dir, *command],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def fail_over(nodes, ledger, kind, iptables_cut=None):
    """Kills (or cuts off) the leader and waits for a confirm from another node; returns
    (old, new, seconds to the first confirm, confirmed before)."""
    old = wait_for("a single leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
    before = len(ledger.confirmed)
    t0 = time.monotonic()
    if kind == "kill":
        old.kill()
    else:
        iptables_cut(old)
    first = wait_for("a confirm after the failure",
                     lambda: ledger.first_confirm_after(t0, old.host), FAILOVER_LIMIT_S)
    new = wait_for("the new leader",
                   lambda: next((n for n in nodes if n is not old and n.serving()), None),
                   FAILOVER_LIMIT_S)
    return old, new, first - t0, before


def membership_round(root, warren, nodes, members, ledger, everyone):
    """Adds node 4 (waiting with `join = true`), removes a stopped follower, and kills the
    leader: the members left, node 4 among them, elect the next one."""
    members[4] = {"raft": free_port("127.0.0.4"), "amqp": free_port("127.0.0.4"),
                  "http": free_port("127.0.0.4")}
    new = Node(root, warren, 4, members, join=True)
    everyone.append(new)
    new.start()
    # Waiting to join, it knows no voters.
    wait_for("node 4 to wait for the cluster",
             lambda: metric(new, "warren_raft_voters") == 0, FAILOVER_LIMIT_S)
    leader = wait_for("a single leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
    t0 = time.monotonic()
    out = ctl(warren, leader, "join_cluster", "4", f"127.0.0.4:{new.raft}",
              f"127.0.0.4:{new.amqp}", f"127.0.0.4:{new.http}")
    joined = time.monotonic() - t0
    assert "caught up and votes" in out, out
    nodes.append(new)
    listed = wait_for("four members running and in step", lambda: all_in_step(nodes), 60)
    entry = member_entry(listed, new)
    assert entry["raft_voter"] and entry["cluster_role"] in ("follower", "leader"), entry
    installed = metric(new, "warren_raft_snapshots_installed_total")
    assert installed and installed >= 1, f"node 4 installed no snapshot: {installed}"
    print(f"join: node 4 joined and voted {joined:.2f} s after join_cluster, from "
          f"{installed:.0f} snapshot(s) of the leader's store", flush=True)
    leader = wait_for("a single leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
    gone = next(n for n in nodes if n is not leader and n is not new)
    gone.stop()
    # A name whose host is not the member's names no member.
    wrong = subprocess.run([warren, "ctl", "--data-dir", leader.dir, "forget_cluster_node",
                            f"warren-{gone.i}@10.255.255.1"],
                           capture_output=True, text=True, timeout=180)
    assert wrong.returncode != 0 and "not a member" in wrong.stderr + wrong.stdout, wrong
    ctl(warren, leader, "forget_cluster_node", f"warren-{gone.i}@{gone.host}")
    nodes.remove(gone)
    listed = wait_for("three members in step after the removal", lambda: all_in_step(nodes), 60)
    assert all(n["cluster_id"] != gone.i for n in listed), listed
    print(f"forget: node {gone.i} removed; members now "
          + ", ".join(f"{n['name']} {n['cluster_role']}" for n in listed), flush=True)
    # Stopped before its removal, it never applied it. Started again on its data, it
    # counts itself a voter until a member it asks for a vote tells it, and then stops,
    # recording that it is no member: a third start is refused.
    gone.start()
    t1 = time.monotonic()
    wait_for(f"node {gone.i}, removed while stopped, to be told and stop",
             lambda: gone.proc.poll() is not None, FAILOVER_LIMIT_S)
    told = time.monotonic() - t1
    with open(gone.log) as f:
        log = f.read()
    assert "was removed from the cluster" in log and "says so; it stops" in log, log[-3000:]
    gone.start()
    wait_for(f"node {gone.i} to refuse to start as a member",
             lambda: gone.proc.poll() is not None, FAILOVER_LIMIT_S)
    with open(gone.log) as f:
        log = f.read()
    assert gone.proc.returncode != 0 and "it was removed" in log, log[-3000:]
    print(f"forget: node {gone.i}, started again on its data, was told it was removed and "
          f"stopped after {told:.2f} s; a start after that is refused", flush=True)
    time.sleep(2)
    old, elected, secs, before = fail_over(nodes, ledger, "kill")
    old.start()
    print(f"kill: node {old.i} -> node {elected.i} with node 4 voting: first confirm after "
          f"{secs:.2f} s ({before} confirmed before)", flush=True)
    wait_for("every member running and in step", lambda: all_in_step(nodes), 60)
    return joined, gone, ("kill", old.i, elected.i, secs, before)


def leader_of(nodes):
    serving = [n for n in nodes if n.serving()]
    return serving[0] if len(serving) == 1 else None


def iptables(action, node, nodes):
    """Drops (-I) or lets through again (-D) the Raft traffic to and from `node`."""
    raft_ports = ",".join(str(n.raft) for n in nodes)
    rules = [
        ["-s", node.host, "-p", "tcp", "-m", "multiport", "--dports", raft_ports],
        ["-d", node.host, "-p", "tcp", "--dport", str(node.raft)],
    ]
    for rule in rules:
        subprocess.run(["iptables", action, "INPUT", *rule, "-j", "DROP"], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warren", required=True)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--cuts", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the data and logs")
    ap.add_argument("--no-membership", dest="membership", action="store_false",
                    help="skip the round that adds a node and removes one")
    args = ap.parse_args()
    warren = os.path.abspath(args.warren)
    if args.cuts and not shutil.which("iptables"):
        sys.exit("the cut rounds need iptables (or pass --cuts 0)")

    root = tempfile.mkdtemp(prefix="warren-failover-")
    members = {i: {"raft": free_port(f"127.0.0.{i}"), "amqp": free_port(f"127.0.0.{i}"),
                   "http": free_port(f"127.0.0.{i}")}
               for i in (1, 2, 3)}
    nodes = [Node(root, warren, i, members) for i in (1, 2, 3)]
    # Every node ever started, to stop and report on.
    everyone = list(nodes)
    ledger = Ledger()
    done = threading.Event()
    rounds = []
    cut = None
    ok = False
    try:
        for n in nodes:
            n.start()
        wait_for("a leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
        threads = [threading.Thread(target=publisher, args=(nodes, ledger), daemon=True),
                   threading.Thread(target=consumer, args=(nodes, ledger, done), daemon=True)]
        for t in threads:
            t.start()
        time.sleep(2)
        snapshot = snapshot_round(nodes)
        plan = ["kill"] * args.kills + ["cut"] * args.cuts

        def cut_off(node):
            nonlocal cut
            iptables("-I", node, nodes)
            cut = node

        for kind in plan:
            time.sleep(3)
            old, new, secs, before = fail_over(nodes, ledger, kind, cut_off)
            if kind == "kill":
                old.start()
            else:
                # Cut off from the majority, the old leader stops its broker and turns
                # clients away, saying why.
                wait_for(f"node {old.i} to stop its broker",
                         lambda: not old.serving(), FAILOVER_LIMIT_S)
                why = wait_for(f"node {old.i} to turn clients away", old.refusal,
                               FAILOVER_LIMIT_S)
                assert "(320)" in why and "does not lead the cluster" in why, why
                print(f"  node {old.i} turns clients away: {why}", flush=True)
                iptables("-D", old, nodes)
                cut = None
            rounds.append((kind, old.i, new.i, secs, before))
            print(f"{kind}: node {old.i} -> node {new.i}: first confirm after "
                  f"{secs:.2f} s ({before} confirmed before)", flush=True)
        # Every member is back, and the leader's /api/nodes says so once their logs match.
        listed = wait_for("every member running and in step", lambda: all_in_step(nodes),
                          FAILOVER_LIMIT_S)
        print("nodes: " + ", ".join(f"{n['name']} {n['cluster_role']}" for n in listed))
        # Each member goes by the name the others give it: warren-ID@IP.
        names = sorted(n["name"] for n in listed)
        assert names == sorted(f"warren-{n.i}@{n.host}" for n in nodes), names
        check_follower_http(nodes)
        latency = wait_for("the leader's commit latency", lambda: commit_latency(nodes), 15)
        print(f"commit latency on the leader over {latency['window_s']} s: "
              f"p50 {latency['p50_us'] / 1000:.1f} ms, p99 {latency['p99_us'] / 1000:.1f} ms, "
              f"max {latency['max_us'] / 1000:.1f} ms ({latency['window_commits']} batches; "
              f"{latency['commits']} since it started)", flush=True)
        leader = wait_for("a single leader", lambda: leader_of(nodes), FAILOVER_LIMIT_S)
        status = ctl(warren, leader, "cluster_status")
        raft = [line for line in status.splitlines() if ", log index " in line]
        assert len(raft) == len(nodes), status
        assert "Commit latency on the leader" in status, status
        if args.membership:
            joined, gone, last = membership_round(root, warren, nodes, members, ledger, everyone)
            rounds.append(last)
        ledger.stop.set()
        threads[0].join(timeout=30)
        confirmed = set(ledger.confirmed)
        # Every confirmed message must arrive.
        try:
            wait_for("every confirmed message to be delivered",
                     lambda: confirmed <= ledger.delivered, 60)
        except AssertionError:
            pass
        done.set()
        threads[1].join(timeout=30)
        with ledger.lock:
            missing = sorted(confirmed - ledger.delivered)
            delivered = len(ledger.delivered)
            redelivered = ledger.redelivered
        print()
        print(f"{'round':<6} {'kind':<5} {'old':>4} {'new':>4} {'kill/cut to first confirm':>26}")
        for r, (kind, old, new, secs, _) in enumerate(rounds, 1):
            print(f"{r:<6} {kind:<5} {old:>4} {new:>4} {secs:>24.2f} s")
        worst = max((r[3] for r in rounds), default=0.0)
        print(f"snapshot round: node {snapshot[0]} caught up from index {snapshot[1]} "
              f"with the leader's log starting at {snapshot[2]}")
        if args.membership:
            print(f"membership round: node 4 joined and voted {joined:.2f} s after "
                  f"join_cluster; node {gone.i} removed; the last round above elected a "
                  f"leader with node 4 voting")
        print(f"confirmed {len(confirmed)}, delivered {delivered} distinct "
              f"({redelivered} flagged redelivered), confirmed but never delivered "
              f"{len(missing)}; publisher reconnects {ledger.publish_errors}, consumer "
              f"reconnects {ledger.consume_errors}; slowest failover {worst:.2f} s "
              f"(goal {FAILOVER_GOAL_S:.0f} s)")
        assert not missing, f"confirmed messages lost: {missing[:20]}"
        assert len(confirmed) > 1000, "too few messages confirmed to mean anything"
        for kind, old, new, _, before in rounds:
            assert before > 0
        ok = True
    finally:
        done.set()
        ledger.stop.set()
        if cut is not None:
            iptables("-D", cut, nodes)
        everyone.extend(n for n in nodes if n not in everyone)
        for n in everyone:
            n.stop()
        if not ok:
            for n in everyone:
                print(f"--- node {n.i} log (last 30 lines)")
                with open(n.log, errors="replace") as f:
                    print("".join(f.readlines()[-30:]))
        if args.keep or not ok:
            print(f"data and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print("cluster failover: ok")


if __name__ == "__main__":
    main()
