#!/usr/bin/env python3
"""Run a Go package's tests and write per-test outcomes as JSON, in the format of
unittest_json_runner.py, for run_suites.py.

The package is built from a GOPATH (Debian's /usr/share/gocode, where its -dev packages
put Go sources and their tests) into one test binary, and its tests run through
``go tool test2json``. A test that panics ends its binary's process; the tests it had not
reached run again in a new process, so that one panic costs one test, not the rest of
the suite. A package-level failure after every test passed (a goroutine-leak check in
TestMain, say) is recorded as a failure of ``TestMain``.

    go_test_runner.py --package github.com/rabbitmq/amqp091-go --tags integration \\
        --work .deps/go --json results.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

# Output lines kept per test, for the failure's detail.
MAX_LINES_PER_TEST = 200


def reason_of(lines: list[str]) -> str:
    """The line that says why a test failed: a panic, else the first `file_test.go:N:`
    message, else the last line."""
    for ln in lines:
        if ln.startswith("panic:"):
            return ln.strip()
    for ln in lines:
        if re.match(r"^\s+\S+_test\.go:\d+:", ln):
            return ln.strip()
    return lines[-1].strip() if lines else ""


def run_once(binary: Path, names: list[str], cwd: Path, env: dict, timeout_s: int,
             records: dict[str, dict], order: list[str]) -> tuple[int, list[str], list[str]]:
    """Runs `names` in one process. Returns its exit status, the tests started and not
    finished (the one that panicked), and the package-level output."""
    pattern = "^(" + "|".join(re.escape(n) for n in names) + ")$"
    cmd = ["go", "tool", "test2json", "-t", str(binary), "-test.v", "-test.run", pattern,
           f"-test.timeout={timeout_s}s"]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    output: dict[str, list[str]] = {}
    package_output: list[str] = []
    started: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            package_output.append(line.rstrip("\n"))
            continue
        test, action = ev.get("Test"), ev.get("Action")
        if action == "output":
            text = ev.get("Output", "").rstrip("\n")
            sink = output.setdefault(test, []) if test else package_output
            if len(sink) < MAX_LINES_PER_TEST:
                sink.append(text)
        elif test and action == "run":
            started.append(test)
        elif test and action in ("pass", "fail", "skip"):
            outcome = {"pass": "passed", "fail": "failed", "skip": "skipped"}[action]
            lines = output.get(test, [])
            detail = "\n".join(lines + [reason_of(lines)]) if outcome == "failed" else ""
            if test not in records:
                order.append(test)
            records[test] = {"id": test, "outcome": outcome, "detail": detail}
    rc = proc.wait()
    unfinished = [t for t in started if t not in records]
    for t in unfinished:
        # A panic's trace is printed as the package's output, after the test's own.
        lines = output.get(t, []) + package_output
        order.append(t)
        records[t] = {"id": t, "outcome": "failed",
                      "detail": "\n".join(lines + [reason_of(lines) or "ended its test process"])}
    return rc, unfinished, package_output


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", required=True, help="import path of the package under test")
    ap.add_argument("--gopath", type=Path, default=Path("/usr/share/gocode"), help="GOPATH holding it")
    ap.add_argument("--tags", default="", help="build tags (go test -tags)")
    ap.add_argument("--work", type=Path, required=True, help="build cache and test binary go here")
    ap.add_argument("--json", type=Path, required=True, help="where to write the outcomes")
    ap.add_argument("--timeout", type=int, default=120, help="limit for one test process (s)")
    args = ap.parse_args()

    src = args.gopath / "src" / args.package
    if not src.is_dir():
        print(f"{src} not found", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=str(args.gopath), GOFLAGS="",
               GOCACHE=str((args.work / "cache").resolve()), GOTOOLCHAIN="local")
    binary = (args.work / (Path(args.package).name + ".test")).resolve()
    subprocess.run(["go", "test", "-c", "-tags", args.tags, "-o", str(binary), args.package],
                   cwd=args.work, env=env, check=True)
    listed = subprocess.run([str(binary), "-test.list", "."], cwd=src, env=env, check=True,
                            capture_output=True, text=True).stdout.split()
    remaining = [n for n in listed if n.startswith(("Test", "Example"))]
    records: dict[str, dict] = {}
    order: list[str] = []
    # Each process finishes at least the test that ends it, so this ends.
    for _ in range(len(remaining) + 1):
        if not remaining:
            break
        rc, unfinished, package_output = run_once(binary, remaining, src, env, args.timeout, records, order)
        if rc != 0 and not unfinished and all(records.get(n, {}).get("outcome") != "failed" for n in remaining):
            # Every test passed and the process still failed: its TestMain said why.
            order.append("TestMain")
            said = [ln for ln in package_output
                    if ln.strip() and ln.strip() not in ("PASS", "FAIL") and not ln.startswith(("=== ", "--- "))]
            records["TestMain"] = {"id": "TestMain", "outcome": "failed",
                                   "detail": "\n".join(package_output + [said[0] if said else f"exit status {rc}"])}
        left = [n for n in remaining if n not in records]
        if len(left) == len(remaining):
            break
        remaining = left
    for n in remaining:
        if n not in records:
            order.append(n)
            records[n] = {"id": n, "outcome": "failed", "detail": "never ran: its test process ended first"}
    args.json.write_text(json.dumps({"records": [records[n] for n in order]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
