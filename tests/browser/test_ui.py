#!/usr/bin/env python3
"""The management web UI, driven in headless Chromium against a real `warren serve`.

    python3 tests/browser/test_ui.py --warren target/release/warren --out target/ui-test

It starts warren on kernel-picked ports, creates users with `warren ctl`, and walks the
tutorial's path through the UI: log in, overview, create a durable queue from the form,
publish to it from the exchange page, peek (the message stays), get with ack (it goes),
dead-letter a message and republish it from the dead-letter view, create a user and give it
permissions, export definitions, log out. It checks the refusals too: a wrong password, a
user with no tags, a forged cross-site POST and a POST without the CSRF token. Then it
declares 100,000 queues and times the first page of the queue list.

Screenshots of each page go to <out>/screenshots; the timings are printed. Needs Playwright
for Python and Chromium (Debian's /usr/bin/chromium unless --chromium says otherwise).
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

LISTENING = re.compile(r"^warren: (AMQP|HTTP) listening on (\S+)$")
TIMEOUT_MS = 15_000


class Warren:
    """A `warren serve` on ports the kernel picks, announced on its stdout."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.data = workdir / "data"
        self.log = open(workdir / "warren.log", "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--amqp-port", "0", "--http-port", "0", "--data-dir", str(self.data)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ports: dict[str, int] = {}
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while len(self.ports) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"warren did not announce its ports (log: {workdir / 'warren.log'})")
            line = self.proc.stdout.readline()
            m = LISTENING.match(line.strip())
            if m:
                self.ports[m.group(1)] = int(m.group(2).rsplit(":", 1)[1])
        threading.Thread(target=self._drain, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.ports['HTTP']}"
        self.token = json.loads((self.data / "node.json").read_text())["token"]

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)

    def ctl(self, *args: str) -> str:
        out = subprocess.run([self.binary, "ctl", "--data-dir", str(self.data), *args],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"warren ctl {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def api(self, method: str, path: str, body: object | None = None):
        """The HTTP API as the node (bearer token): the test's own view of the truth."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            text = r.read()
            return json.loads(text) if text else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class Shots:
    def __init__(self, folder: Path):
        self.folder = folder
        self.n = 0
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str) -> None:
        self.n += 1
        path = self.folder / f"{self.n:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"  screenshot {path}")


def step(text: str) -> None:
    print(f"- {text}", flush=True)


def notice(page: Page):
    return page.locator("#notice")


def login(page: Page, w: Warren, user: str, password: str) -> None:
    page.goto(w.url + "/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def queue_ready(w: Warren, name: str) -> int:
    return w.api("GET", f"/api/queues/%2F/{name}")["messages_ready"]


def amqp_open_connection(port: int) -> socket.socket:
    """A real AMQP connection as user xjk (raw frames: protocol header, start-ok, tune-ok,
    open), so that the connections page has something to show."""
    import struct

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"AMQP\x00\x00\x09\x01")

    def read_frame():
        head = b""
        while len(head) < 7:
            head += s.recv(7 - len(head))
        _, _, size = struct.unpack(">BHI", head)
        body = b""
        while len(body) < size + 1:
            body += s.recv(size + 1 - len(body))
        return body[:-1]

    def method(cls: int, mid: int, args: bytes, channel: int = 0) -> None:
        payload = struct.pack(">HH", cls, mid) + args
        s.sendall(struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce")

    def shortstr(v: bytes) -> bytes:
        return bytes([len(v)]) + v

    def longstr(v: bytes) -> bytes:
        return struct.pack(">I", len(v)) + v

    read_frame()  # connection.start
    product = shortstr(b"product") + b"S" + longstr(b"ui-test-client")
    props = longstr(product)
    method(10, 11, props + shortstr(b"PLAIN") + longstr(b"\x00xjk\x00123") + shortstr(b"en_US"))
    read_frame()  # connection.tune
    method(10, 31, struct.pack(">HIH", 16, 131072, 0))
    method(10, 40, shortstr(b"/") + shortstr(b"") + b"\x00")
    read_frame()  # connection.open-ok
    method(20, 10, shortstr(b""), channel=1)
    read_frame()  # channel.open-ok
    return s


def forged_site(target: str) -> tuple[http.server.HTTPServer, str]:
    """Another origin serving a page that posts a form to warren's API as soon as it loads."""
    page = f"""<!doctype html><form id=f method=POST enctype="text/plain"
      action="{target}/api/definitions"><input name='{{"vhosts":[{{"name":"forged","x":"' value='"}}]}}'></form>
      <script>document.getElementById('f').submit()</script>""".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # Another port of the same host: another origin, but the same site, so the browser
    # still sends the SameSite=Strict cookie and the server's own checks must refuse it.
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def run(args: argparse.Namespace) -> None:
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shots = Shots(out / "screenshots")
    work = Path(tempfile.mkdtemp(prefix="warren-ui-"))
    w = Warren(args.warren, work)
    conn = None
    try:
        w.ctl("add_user", "xjk", "123")
        w.ctl("set_user_tags", "xjk", "administrator")
        w.ctl("set_permissions", "-p", "/", "xjk", ".*", ".*", ".*")
        w.ctl("add_user", "plain", "secret")
        conn = amqp_open_connection(w.ports["AMQP"])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            ctx = browser.new_context(viewport={"width": 1280, "height": 900})
            ctx.set_default_timeout(TIMEOUT_MS)
            page = ctx.new_page()
            page.on("pageerror", lambda e: print(f"  page error: {e}", file=sys.stderr))
            walk(page, ctx, w, shots)
            phone(browser, w, shots)
            timings = hundred_thousand_queues(page, w, shots)
            browser.close()
        print(f"screenshots in {shots.folder}")
        for k, v in timings.items():
            print(f"{k}: {v}")
        (out / "timings.json").write_text(json.dumps(timings, indent=2))
    finally:
        if conn is not None:
            conn.close()
        w.stop()
        shutil.rmtree(work, ignore_errors=True)


def walk(page: Page, ctx, w: Warren, shots: Shots) -> None:
    step("wrong password refused")
    login(page, w, "xjk", "wrong")
    expect(notice(page)).to_contain_text("Login failed")
    shots.take(page, "login-refused")

    step("user without tags refused")
    login(page, w, "plain", "secret")
    expect(notice(page)).to_contain_text("no management tag")

    step("log in as the tutorial's administrator, see the overview")
    login(page, w, "xjk", "123")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator('[data-total="Connections"]')).to_have_text("1")
    expect(page.locator("#node")).to_contain_text("high watermark")
    cookie = next(c for c in ctx.cookies() if c["name"] == "warren_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert page.evaluate("document.cookie") == "", "the session cookie is readable by script"
    page.wait_for_timeout(2500)  # a second sample for the charts
    shots.take(page, "overview")

    step("connections and channels")
    page.get_by_role("link", name="Connections").click()
    expect(page.locator("main table")).to_contain_text("ui-test-client")
    shots.take(page, "connections")
    page.locator("main table a").first.click()
    expect(page.get_by_role("heading", name=re.compile("^Connection "))).to_be_visible()
    shots.take(page, "connection")
    page.get_by_role("link", name="Channels").click()
    expect(page.locator("main table")).to_contain_text("(1)")
    shots.take(page, "channels")

    step("create a durable queue from the form")
    page.get_by_role("link", name="Queues").click()
    form = page.get_by_role("form", name="Add a queue")
    form.get_by_label("Name", exact=True).fill("tutorial")
    expect(form.get_by_label("Durable")).to_be_checked()
    form.get_by_role("button", name="Add queue").click()
    expect(page.get_by_role("heading", name="Queue tutorial")).to_be_visible()
    q = w.api("GET", "/api/queues/%2F/tutorial")
    assert q["durable"] is True, q

    step("publish a message to it from the exchange page")
    page.get_by_role("link", name="Exchanges").click()
    shots.take(page, "exchanges")
    page.get_by_role("link", name="(AMQP default)").click()
    pub = page.get_by_role("form", name="Publish a message")
    pub.get_by_label("Routing key").fill("tutorial")
    pub.get_by_label("Payload").fill("hello from the browser")
    pub.get_by_role("button", name="Publish message").click()
    expect(notice(page)).to_contain_text("published and routed")
    shots.take(page, "exchange")

    step("the queue counts 1; a peek leaves it at 1, not redelivered")
    page.goto(w.url + "/#/queues/%2F/tutorial")
    expect(page.locator("#queue-ready")).to_have_text("1")
    get = page.get_by_role("form", name="Get messages")
    get.get_by_label("Mode").select_option("peek")
    get.get_by_role("button", name="Get messages").click()
    expect(page.locator("#messages")).to_contain_text("hello from the browser")
    assert queue_ready(w, "tutorial") == 1
    peeked = w.api("POST", "/api/queues/%2F/tutorial/get", {"count": 1, "ackmode": "peek"})
    assert peeked[0]["redelivered"] is False, peeked
    shots.take(page, "queue-peek")

    step("get with ack empties it")
    get.get_by_label("Mode").select_option("ack_requeue_false")
    get.get_by_role("button", name="Get messages").click()
    expect(page.locator("#queue-ready")).to_have_text("0")
    assert queue_ready(w, "tutorial") == 0

    step("dead-letter a message and republish it from the dead-letter view")
    w.api("PUT", "/api/queues/%2F/parked", {"durable": True})
    w.api("PUT", "/api/queues/%2F/work", {"durable": True, "arguments": {
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "parked"}})
    w.api("POST", "/api/exchanges/%2F/amq.default/publish", {
        "routing_key": "work", "payload": "needs a retry", "payload_encoding": "string",
        "properties": {"delivery_mode": 2}})
    w.api("POST", "/api/queues/%2F/work/get", {"count": 1, "ackmode": "reject_requeue_false"})
    assert queue_ready(w, "parked") == 1 and queue_ready(w, "work") == 0
    page.goto(w.url + "/#/queues/%2F/parked")
    page.get_by_role("button", name="Show dead letters").click()
    dead = page.locator("#dead-letters")
    expect(dead).to_contain_text("needs a retry")
    expect(dead).to_contain_text("rejected")
    dead.get_by_role("checkbox").first.check()
    shots.take(page, "dead-letters")
    dead.get_by_role("button", name="Republish selected").click()
    expect(notice(page)).to_contain_text("1 message(s) republished")
    assert queue_ready(w, "parked") == 0 and queue_ready(w, "work") == 1

    step("create a user and give it permissions")
    page.get_by_role("link", name="Admin").click()
    uf = page.get_by_role("form", name="Add or update a user")
    uf.get_by_label("Username").fill("ops")
    uf.get_by_label(re.compile("^Password")).fill("s3cret")
    uf.get_by_label(re.compile("^Tags")).fill("management")
    uf.get_by_role("button", name="Save user").click()
    expect(notice(page)).to_contain_text("User saved")
    pf = page.get_by_role("form", name="Set permissions")
    pf.get_by_label("User").select_option("ops")
    pf.get_by_label("Write regexp").fill("^ops-.*")
    pf.get_by_role("button", name="Set permission").click()
    expect(notice(page)).to_contain_text("Permission set")
    perms = w.api("GET", "/api/permissions/%2F/ops")
    assert perms["write"] == "^ops-.*" and perms["read"] == ".*", perms
    user = w.api("GET", "/api/users/ops")
    assert user["tags"] == ["management"], user

    step("set a policy from the admin page; the queue it matches runs under it")
    pol = page.get_by_role("form", name="Add or update a policy")
    pol.get_by_label("Name", exact=True).fill("work-limit")
    pol.get_by_label(re.compile("^Pattern")).fill("^work$")
    pol.get_by_label(re.compile("^Definition")).fill('{"max-length": 5000, "bogus": 1}')
    pol.get_by_role("button", name="Save policy").click()
    expect(notice(page)).to_contain_text("are not recognised policy settings")
    pol.get_by_label(re.compile("^Definition")).fill('{"max-length": 5000}')
    pol.get_by_role("button", name="Save policy").click()
    expect(notice(page)).to_contain_text("Policy saved")
    expect(page.get_by_role("cell", name='{"max-length":5000}')).to_be_visible()
    work = w.api("GET", "/api/queues/%2F/work")
    assert work["policy"] == "work-limit" and work["effective_policy_definition"] == {"max-length": 5000}, work

    step("export definitions, and preview an import")
    page.get_by_role("button", name="Export definitions").click()
    exported = page.locator("#exported")
    expect(exported).to_contain_text('"tutorial"')
    defs = json.loads(exported.input_value())
    assert any(u["name"] == "ops" for u in defs["users"])
    defs["queues"].append({"name": "from-import", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}})
    imp = page.get_by_role("form", name="Import definitions")
    imp.get_by_label("or paste them").fill(json.dumps(defs))
    imp.get_by_role("button", name="Preview import").click()
    preview = page.locator("#import-preview")
    expect(preview).to_contain_text("/ from-import")
    assert w.api("GET", "/api/queues/%2F?name=from-import") == [], "a preview imported something"
    shots.take(page, "admin")
    preview.get_by_role("button", name="Import these definitions").click()
    expect(notice(page)).to_contain_text("Definitions imported")
    assert len(w.api("GET", "/api/queues/%2F?name=from-import")) == 1

    step("a forged cross-site POST and a POST without the CSRF token are refused")
    server, forged_url = forged_site(w.url)
    try:
        evil = ctx.new_page()
        with evil.expect_response(lambda r: r.url.startswith(w.url)) as answer:
            evil.goto(forged_url)
        assert answer.value.status == 403, answer.value.status
        evil.close()
    finally:
        server.shutdown()
    assert not any(v["name"] == "forged" for v in w.api("GET", "/api/vhosts"))
    r = ctx.request.put(w.url + "/api/vhosts/no-csrf", headers={"Content-Type": "application/json"}, data="{}")
    assert r.status == 403, r.status
    assert "CSRF" in r.text(), r.text()
    assert not any(v["name"] == "no-csrf" for v in w.api("GET", "/api/vhosts"))

    step("log out: the session is gone")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    shots.take(page, "logged-out")
    r = ctx.request.get(w.url + "/api/overview")
    assert r.status == 401, r.status

    step("log in as the management user just created")
    login(page, w, "ops", "s3cret")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def phone(browser, w: Warren, shots: Shots) -> None:
    step("a phone's width")
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    login(page, w, "xjk", "123")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the overview is {width}px wide on a 390px screen"
    shots.take(page, "phone-overview")
    page.goto(w.url + "/#/queues")
    expect(page.locator("#queue-status")).to_contain_text("matching queues")
    shots.take(page, "phone-queues")
    ctx.close()


def hundred_thousand_queues(page: Page, w: Warren, shots: Shots) -> dict[str, float]:
    step("100,000 queues: the first page of the queue list")
    t0 = time.monotonic()
    for k in range(10):
        queues = [{"name": f"bulk-{i:06d}", "vhost": "/", "durable": False, "auto_delete": False,
                   "arguments": {}} for i in range(k * 10_000, (k + 1) * 10_000)]
        w.api("POST", "/api/definitions", {"queues": queues})
    declared = time.monotonic() - t0
    total = w.api("GET", "/api/overview")["object_totals"]["queues"]
    assert total >= 100_000, total
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    login(page, w, "xjk", "123")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    times = []
    for _ in range(3):
        page.goto(w.url + "/#/")
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        start = time.monotonic()
        page.get_by_role("link", name="Queues").click()
        expect(page.locator("#queue-list tbody tr")).to_have_count(100)
        times.append(time.monotonic() - start)
    status = page.locator("#queue-status")
    expect(status).to_contain_text("100,")
    shots.take(page, "queues-100k")
    start = time.monotonic()
    page.get_by_role("button", name="Next page").click()
    expect(page.get_by_text("Page 2 of")).to_be_visible()
    next_page = time.monotonic() - start
    form = page.get_by_role("search", name="Filter queues")
    form.get_by_label("Filter by name").fill("bulk-0999")
    form.get_by_label("Regular expression").check()
    start = time.monotonic()
    form.get_by_role("button", name="Apply").click()
    expect(status).to_contain_text("100 matching queues")
    filtered = time.monotonic() - start
    return {
        "queues declared": total,
        "declare 100,000 queues (s)": round(declared, 2),
        "queue list first page, 3 runs (ms)": [round(t * 1000) for t in times],
        "queue list next page (ms)": round(next_page * 1000),
        "queue list regex filter (ms)": round(filtered * 1000),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warren", default="target/release/warren")
    ap.add_argument("--out", default="target/ui-test")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    try:
        run(args)
    except Exception as e:  # noqa: BLE001 - the whole failure is the test's answer
        print(f"browser test FAILED: {e!r}", file=sys.stderr)
        raise
    print("browser test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
