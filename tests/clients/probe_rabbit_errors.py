#!/usr/bin/env python3
"""Probe how an AMQP 0-9-1 broker reacts to protocol errors, over raw sockets.

    python3 tests/clients/probe_rabbit_errors.py --host 127.0.0.1 --port 5673 [--json out.json] [--md out.md]

Standard library only.  For each probe it opens a fresh TCP connection, does
what the probe says (usually: a proper handshake, then one bad thing) and
records exactly what the broker sends back: decoded frames (connection.close /
channel.close with reply code, reply text, class id, method id; basic.return;
confirms; ...), raw bytes when they are not frames (e.g. a protocol header),
and whether / how soon the broker closed the socket.  It answers a broker's
connection.close with close-ok, as a client would, and records what follows.

Run it against RabbitMQ and against warren and diff the Markdown (``--md``),
which leaves out timings finer than "immediately / after ~N s".
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE

METHOD_NAMES = {
    (10, 10): "connection.start", (10, 11): "connection.start-ok", (10, 20): "connection.secure",
    (10, 21): "connection.secure-ok", (10, 30): "connection.tune", (10, 31): "connection.tune-ok",
    (10, 40): "connection.open", (10, 41): "connection.open-ok", (10, 50): "connection.close",
    (10, 51): "connection.close-ok", (10, 60): "connection.blocked", (10, 61): "connection.unblocked",
    (10, 70): "connection.update-secret", (10, 71): "connection.update-secret-ok",
    (20, 10): "channel.open", (20, 11): "channel.open-ok", (20, 20): "channel.flow",
    (20, 21): "channel.flow-ok", (20, 40): "channel.close", (20, 41): "channel.close-ok",
    (40, 10): "exchange.declare", (40, 11): "exchange.declare-ok", (40, 20): "exchange.delete",
    (40, 21): "exchange.delete-ok", (40, 30): "exchange.bind", (40, 31): "exchange.bind-ok",
    (40, 40): "exchange.unbind", (40, 51): "exchange.unbind-ok",
    (50, 10): "queue.declare", (50, 11): "queue.declare-ok", (50, 20): "queue.bind", (50, 21): "queue.bind-ok",
    (50, 30): "queue.purge", (50, 31): "queue.purge-ok", (50, 40): "queue.delete", (50, 41): "queue.delete-ok",
    (50, 50): "queue.unbind", (50, 51): "queue.unbind-ok",
    (60, 10): "basic.qos", (60, 11): "basic.qos-ok", (60, 20): "basic.consume", (60, 21): "basic.consume-ok",
    (60, 30): "basic.cancel", (60, 31): "basic.cancel-ok", (60, 40): "basic.publish", (60, 50): "basic.return",
    (60, 60): "basic.deliver", (60, 70): "basic.get", (60, 71): "basic.get-ok", (60, 72): "basic.get-empty",
    (60, 80): "basic.ack", (60, 90): "basic.reject", (60, 100): "basic.recover-async",
    (60, 110): "basic.recover", (60, 111): "basic.recover-ok", (60, 120): "basic.nack",
    (85, 10): "confirm.select", (85, 11): "confirm.select-ok",
    (90, 10): "tx.select", (90, 11): "tx.select-ok", (90, 20): "tx.commit", (90, 21): "tx.commit-ok",
    (90, 30): "tx.rollback", (90, 31): "tx.rollback-ok",
}


# --- encoding --------------------------------------------------------------------------


def shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(b)) + b


def longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def enc_value(v) -> bytes:
    if isinstance(v, bool):
        return b"t" + struct.pack(">B", int(v))
    if isinstance(v, int):
        return b"l" + struct.pack(">q", v)
    if isinstance(v, (str, bytes)):
        return b"S" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    if isinstance(v, list):
        inner = b"".join(enc_value(x) for x in v)
        return b"A" + struct.pack(">I", len(inner)) + inner
    raise TypeError(type(v))


def table(d: dict) -> bytes:
    body = b"".join(shortstr(k) + enc_value(v) for k, v in d.items())
    return struct.pack(">I", len(body)) + body


def frame(ftype: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + bytes([end])


def method(channel: int, cls: int, meth: int, args: bytes = b"", end: int = FRAME_END) -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack(">HH", cls, meth) + args, end)


def content_header(channel: int, cls: int, body_size: int, flags: int = 0, props: bytes = b"") -> bytes:
    return frame(FRAME_HEADER, channel, struct.pack(">HHQH", cls, 0, body_size, flags) + props)


def body(channel: int, data: bytes) -> bytes:
    return frame(FRAME_BODY, channel, data)


def bits(*flags: bool) -> bytes:
    v = 0
    for i, f in enumerate(flags):
        v |= int(bool(f)) << i
    return struct.pack(">B", v)


# Common methods
def channel_open(ch):
    return method(ch, 20, 10, shortstr(""))


def channel_close_ok(ch):
    return method(ch, 20, 41)


def connection_close_ok():
    return method(0, 10, 51)


def basic_qos(ch, prefetch_count=10):
    return method(ch, 60, 10, struct.pack(">IHB", 0, prefetch_count, 0))


def queue_declare(ch, name, passive=False, durable=False, exclusive=False, auto_delete=False, nowait=False,
                  arguments=None):
    return method(ch, 50, 10, struct.pack(">H", 0) + shortstr(name)
                  + bits(passive, durable, exclusive, auto_delete, nowait) + table(arguments or {}))


def exchange_declare(ch, name, etype, passive=False, durable=False, auto_delete=False, internal=False,
                     nowait=False, arguments=None):
    return method(ch, 40, 10, struct.pack(">H", 0) + shortstr(name) + shortstr(etype)
                  + bits(passive, durable, auto_delete, internal, nowait) + table(arguments or {}))


def exchange_delete(ch, name, if_unused=False, nowait=False):
    return method(ch, 40, 20, struct.pack(">H", 0) + shortstr(name) + bits(if_unused, nowait))


def queue_delete(ch, name):
    return method(ch, 50, 40, struct.pack(">H", 0) + shortstr(name) + bits(False, False, False))


def basic_publish(ch, exchange, routing_key, mandatory=False, immediate=False):
    return method(ch, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key)
                  + bits(mandatory, immediate))


def basic_ack(ch, tag, multiple=False):
    return method(ch, 60, 80, struct.pack(">Q", tag) + bits(multiple))


def confirm_select(ch):
    return method(ch, 85, 10, bits(False))


def publish_message(ch, exchange, routing_key, data: bytes, mandatory=False, body_size=None):
    return (basic_publish(ch, exchange, routing_key, mandatory)
            + content_header(ch, 60, len(data) if body_size is None else body_size)
            + (body(ch, data) if data else b""))


# --- decoding --------------------------------------------------------------------------


class Reader:
    def __init__(self, data: bytes):
        self.d, self.i = data, 0

    def take(self, n):
        if self.i + n > len(self.d):
            raise ValueError("truncated")
        b = self.d[self.i:self.i + n]
        self.i += n
        return b

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def shortstr(self):
        return self.take(self.u8()).decode(errors="replace")

    def longstr(self):
        return self.take(self.u32())

    def table(self):
        end_len = self.u32()
        sub = Reader(self.take(end_len))
        out = {}
        while sub.i < len(sub.d):
            k = sub.shortstr()
            out[k] = sub.value()
        return out

    def value(self):
        t = chr(self.u8())
        if t == "t":
            return bool(self.u8())
        if t == "b":
            return struct.unpack(">b", self.take(1))[0]
        if t == "B":
            return self.u8()
        if t in "s":
            return struct.unpack(">h", self.take(2))[0]
        if t == "u":
            return self.u16()
        if t == "I":
            return struct.unpack(">i", self.take(4))[0]
        if t == "i":
            return self.u32()
        if t in "lL":
            return struct.unpack(">q" if t == "l" else ">Q", self.take(8))[0]
        if t == "f":
            return struct.unpack(">f", self.take(4))[0]
        if t == "d":
            return struct.unpack(">d", self.take(8))[0]
        if t == "D":
            scale = self.u8()
            return str(Decimal(struct.unpack(">i", self.take(4))[0]).scaleb(-scale))
        if t == "S":
            raw = self.longstr()
            try:
                return raw.decode()
            except UnicodeDecodeError:
                return {"bytes": raw.hex()}
        if t == "x":
            return {"bytes": self.longstr().hex()}
        if t == "A":
            sub = Reader(self.take(self.u32()))
            arr = []
            while sub.i < len(sub.d):
                arr.append(sub.value())
            return arr
        if t == "T":
            return {"timestamp": self.u64()}
        if t == "F":
            return self.table()
        if t == "V":
            return None
        raise ValueError(f"unknown field type {t!r}")


def decode_method(cls: int, meth: int, args: bytes) -> dict:
    r = Reader(args)
    name = METHOD_NAMES.get((cls, meth), f"unknown({cls},{meth})")
    out: dict = {"method": name}
    try:
        if name == "connection.start":
            out.update(version=f"{r.u8()}-{r.u8()}", server_properties=r.table(),
                       mechanisms=r.longstr().decode(), locales=r.longstr().decode())
        elif name == "connection.tune":
            out.update(channel_max=r.u16(), frame_max=r.u32(), heartbeat=r.u16())
        elif name == "connection.secure":
            out.update(challenge=r.longstr().decode(errors="replace"))
        elif name == "connection.open-ok":
            out.update(reserved=r.shortstr())
        elif name in ("connection.close", "channel.close"):
            code, text, c, m = r.u16(), r.shortstr(), r.u16(), r.u16()
            out.update(reply_code=code, reply_text=text, class_id=c, method_id=m,
                       failing_method=METHOD_NAMES.get((c, m), f"({c},{m})") if c else None)
        elif name == "connection.blocked":
            out.update(reason=r.shortstr())
        elif name == "channel.open-ok":
            out.update(reserved=r.longstr().decode(errors="replace"))
        elif name == "queue.declare-ok":
            out.update(queue=r.shortstr(), message_count=r.u32(), consumer_count=r.u32())
        elif name in ("queue.delete-ok", "queue.purge-ok"):
            out.update(message_count=r.u32())
        elif name == "basic.return":
            out.update(reply_code=r.u16(), reply_text=r.shortstr(), exchange=r.shortstr(), routing_key=r.shortstr())
        elif name in ("basic.ack", "basic.nack"):
            out.update(delivery_tag=r.u64(), multiple=bool(r.u8() & 1))
        elif name == "basic.deliver":
            out.update(consumer_tag=r.shortstr(), delivery_tag=r.u64(), redelivered=bool(r.u8() & 1),
                       exchange=r.shortstr(), routing_key=r.shortstr())
        elif name == "basic.get-ok":
            out.update(delivery_tag=r.u64(), redelivered=bool(r.u8() & 1), exchange=r.shortstr(),
                       routing_key=r.shortstr(), message_count=r.u32())
        elif name == "basic.consume-ok":
            out.update(consumer_tag=r.shortstr())
        elif args:
            out.update(args_hex=args.hex())
    except (ValueError, struct.error) as exc:
        out.update(decode_error=str(exc), args_hex=args.hex())
    return out


# --- connection driver -----------------------------------------------------------------


@dataclass
class Event:
    t: float
    kind: str  # frame | raw | eof | reset | sent
    channel: int | None = None
    data: dict = field(default_factory=dict)

    def short(self) -> str:
        if self.kind == "frame":
            d = dict(self.data)
            ftype = d.pop("frame")
            if ftype == "method":
                name = d.pop("method")
                if name in ("connection.close", "channel.close"):
                    fm = d.get("failing_method")
                    return (f"ch{self.channel} {name} {d['reply_code']} \"{d['reply_text']}\" "
                            f"class_id={d['class_id']} method_id={d['method_id']}" + (f" ({fm})" if fm else ""))
                if name == "connection.start":
                    return f"ch{self.channel} connection.start (version {d['version']}, mechanisms {d['mechanisms']!r})"
                extra = " ".join(f"{k}={v!r}" for k, v in d.items())
                return f"ch{self.channel} {name}" + (f" {extra}" if extra else "")
            return f"ch{self.channel} {ftype} frame " + " ".join(f"{k}={v!r}" for k, v in d.items())
        if self.kind == "raw":
            return f"raw bytes {self.data['hex']} ({self.data['text']!r})"
        if self.kind == "sent":
            return f"(client sent {self.data['what']})"
        return {"eof": "server closed the socket (EOF)", "reset": "connection reset by server"}.get(self.kind,
                                                                                                    self.kind)


class Conn:
    def __init__(self, host, port, timeout=5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.t0 = time.monotonic()
        self.closed = False
        self.frame_max = 131072
        self.channel_max = 0
        self.server_properties: dict = {}
        self.events: list[Event] = []

    def send(self, data: bytes):
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.events.append(Event(time.monotonic() - self.t0, "sent",
                                     data={"what": f"<send failed: {type(exc).__name__}>"}))

    def mark(self):
        """Start the observation window: events are timed from here."""
        self.t0 = time.monotonic()
        self.events = []

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except socket.timeout:
            return None
        except ConnectionResetError:
            self.closed = True
            self.events.append(Event(time.monotonic() - self.t0, "reset"))
            return b""
        if not chunk:
            self.closed = True
            self.events.append(Event(time.monotonic() - self.t0, "eof"))
        return chunk

    def _parse(self, allow_raw=False):
        out = []
        while True:
            if allow_raw and self.buf[:4] == b"AMQP":
                if len(self.buf) < 8:
                    break
                raw, self.buf = self.buf[:8], self.buf[8:]
                out.append(Event(time.monotonic() - self.t0, "raw",
                                 data={"hex": raw.hex(), "text": raw.decode("latin-1")}))
                continue
            if len(self.buf) < 7:
                break
            ftype, ch, size = struct.unpack(">BHI", self.buf[:7])
            if ftype not in (1, 2, 3, 8):
                raw, self.buf = self.buf, b""
                out.append(Event(time.monotonic() - self.t0, "raw",
                                 data={"hex": raw.hex(), "text": raw.decode("latin-1")}))
                break
            if len(self.buf) < 7 + size + 1:
                break
            payload, end = self.buf[7:7 + size], self.buf[7 + size]
            self.buf = self.buf[8 + size:]
            t = time.monotonic() - self.t0
            if ftype == FRAME_METHOD:
                cls, meth = struct.unpack(">HH", payload[:4])
                data = {"frame": "method", **decode_method(cls, meth, payload[4:])}
            elif ftype == FRAME_HEADER:
                cls, _w, bsize, flags = struct.unpack(">HHQH", payload[:14])
                data = {"frame": "header", "class_id": cls, "body_size": bsize, "flags": hex(flags)}
            elif ftype == FRAME_BODY:
                data = {"frame": "body", "size": len(payload), "body": payload[:64].decode("latin-1")}
            else:
                data = {"frame": "heartbeat", "size": size}
            if end != FRAME_END:
                data["bad_frame_end"] = end
            out.append(Event(t, "frame", ch, data))
        return out

    def read(self, quiet=1.0, total=6.0, until=None, allow_raw=False, answer_close=True, post_close_wait=10.0):
        """Collect events until EOF, `until(event)` is true, `quiet` s without data, or `total` s.
        Once the server sent connection.close, wait up to `post_close_wait` s for it to close the socket."""
        got = []
        deadline = time.monotonic() + total
        while not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            chunk = self._recv(min(quiet, left))
            if chunk is None:
                break
            self.buf += chunk
            new = self._parse(allow_raw=allow_raw)
            for ev in new:
                self.events.append(ev)
                got.append(ev)
                if answer_close and ev.kind == "frame" and ev.data.get("method") == "connection.close":
                    quiet = max(quiet, post_close_wait)
                    deadline = max(deadline, time.monotonic() + post_close_wait)
                    try:
                        self.send(connection_close_ok())
                        self.events.append(Event(time.monotonic() - self.t0, "sent",
                                                 data={"what": "connection.close-ok"}))
                    except OSError:
                        pass
            if until and any(until(ev) for ev in new):
                break
        return got

    def expect_method(self, name, total=5.0):
        evs = self.read(quiet=total, total=total,
                        until=lambda e: e.kind == "frame" and e.data.get("method") in (name, "connection.close"))
        for e in evs:
            if e.kind == "frame" and e.data.get("method") == name:
                return e
        raise RuntimeError(f"expected {name}, got {[e.short() for e in evs]}")

    def handshake(self, user="guest", password="guest", vhost="/", frame_max=131072, channel_max=None,
                  capabilities=None, heartbeat=0, open_vhost=True):
        self.send(b"AMQP\x00\x00\x09\x01")
        start = self.expect_method("connection.start")
        self.server_properties = start.data.get("server_properties", {})
        caps = capabilities if capabilities is not None else {
            "publisher_confirms": True, "exchange_exchange_bindings": True, "basic.nack": True,
            "consumer_cancel_notify": True, "connection.blocked": True, "authentication_failure_close": True,
        }
        props = {"product": "warren-probe", "capabilities": caps}
        resp = b"\x00" + user.encode() + b"\x00" + password.encode()
        self.send(method(0, 10, 11, table(props) + shortstr("PLAIN") + longstr(resp) + shortstr("en_US")))
        tune = self.read(quiet=5.0, total=5.0, until=lambda e: e.kind == "frame"
                         and e.data.get("method") in ("connection.tune", "connection.close"))
        tune = [e for e in tune if e.kind == "frame" and e.data.get("method") == "connection.tune"]
        if not tune:
            return False
        t = tune[0].data
        self.channel_max = t["channel_max"] if channel_max is None else channel_max
        self.frame_max = frame_max
        self.send(method(0, 10, 31, struct.pack(">HIH", self.channel_max, frame_max, heartbeat)))
        if not open_vhost:
            return True
        self.send(method(0, 10, 40, shortstr(vhost) + shortstr("") + bits(False)))
        ok = self.read(quiet=5.0, total=5.0, until=lambda e: e.kind == "frame"
                       and e.data.get("method") in ("connection.open-ok", "connection.close"))
        return any(e.kind == "frame" and e.data.get("method") == "connection.open-ok" for e in ok)

    def open_channel(self, ch):
        self.send(channel_open(ch))
        self.expect_method("channel.open-ok")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- probes ----------------------------------------------------------------------------


PROBES = []


def probe(title):
    def deco(fn):
        PROBES.append((fn.__name__, title, fn))
        return fn
    return deco


def _new(ctx, **kw) -> Conn:
    c = Conn(ctx.host, ctx.port)
    if not c.handshake(user=ctx.user, password=ctx.password, **kw):
        raise RuntimeError("handshake failed: " + "; ".join(e.short() for e in c.events))
    return c


def _observe(c: Conn, quiet=2.0, total=8.0, **kw):
    c.read(quiet=quiet, total=total, **kw)
    return c.events


def _raw_header(ctx, header: bytes, label: str):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.send(header)
    c.events.append(Event(0.0, "sent", data={"what": label}))
    _observe(c, quiet=3.0, total=12.0, allow_raw=True)
    c.close()
    return c.events


@probe("1a. bad protocol header AMQP\\x00\\x00\\x09\\x02 (0-9-2)")
def p_header_0_9_2(ctx):
    return _raw_header(ctx, b"AMQP\x00\x00\x09\x02", "AMQP 00 00 09 02")


@probe("1b. 'HTTP/1.1' instead of a protocol header")
def p_header_http(ctx):
    return _raw_header(ctx, b"HTTP/1.1", "HTTP/1.1")


@probe("1c. a full HTTP request line 'GET / HTTP/1.1\\r\\n...'")
def p_header_http_get(ctx):
    return _raw_header(ctx, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", "GET / HTTP/1.1 request")


@probe("1d. AMQP\\x01\\x01\\x00\\x09 (the 0-9 header with class 1 / instance 1)")
def p_header_0_9_old(ctx):
    return _raw_header(ctx, b"AMQP\x01\x01\x00\x09", "AMQP 01 01 00 09")


@probe("1e. AMQP\\x01\\x01\\x08\\x00 (0-8)")
def p_header_0_8(ctx):
    return _raw_header(ctx, b"AMQP\x01\x01\x08\x00", "AMQP 01 01 08 00")


@probe("1f. AMQP\\x00\\x01\\x00\\x00 (AMQP 1.0)")
def p_header_1_0(ctx):
    return _raw_header(ctx, b"AMQP\x00\x01\x00\x00", "AMQP 00 01 00 00")


@probe("1g. only 4 bytes 'AMQP' then silence (observed up to 15 s)")
def p_header_partial(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.send(b"AMQP")
    c.read(quiet=15.0, total=15.0, allow_raw=True)
    c.close()
    return c.events


@probe("1h. connection.start-ok with an unknown mechanism 'BOGUS' (observed up to 10 s)")
def p_bad_mechanism(ctx):
    c = Conn(ctx.host, ctx.port)
    c.send(b"AMQP\x00\x00\x09\x01")
    c.expect_method("connection.start")
    c.mark()
    c.send(method(0, 10, 11, table({}) + shortstr("BOGUS") + longstr(b"\x00guest\x00guest") + shortstr("en_US")))
    return _observe(c, quiet=10.0, total=10.0)


@probe("1i. connection.tune-ok sent instead of start-ok (wrong handshake order)")
def p_wrong_handshake_order(ctx):
    c = Conn(ctx.host, ctx.port)
    c.send(b"AMQP\x00\x00\x09\x01")
    c.expect_method("connection.start")
    c.mark()
    c.send(method(0, 10, 31, struct.pack(">HIH", 0, 131072, 0)))
    return _observe(c, quiet=10.0, total=10.0)


@probe("2a. method frame larger than the negotiated frame_max (131072): 140000-byte payload")
def p_frame_too_large(ctx):
    c = _new(ctx, frame_max=131072)
    c.open_channel(1)
    c.mark()
    pad = "x" * (140000 - 200)
    c.send(queue_declare(1, "probe-too-large", arguments={"x-pad": pad}))
    return _observe(c)


def _frame_of_total_size(total):
    """A queue.declare method frame on channel 1 whose whole frame (7 + payload + 1) is `total` bytes."""
    base = queue_declare(1, "probe-fm", arguments={"x-pad": ""})
    pad = total - len(base)
    f = queue_declare(1, "probe-fm", arguments={"x-pad": "x" * pad})
    assert len(f) == total, (len(f), total)
    return f


@probe("2b. method frame of exactly frame_max bytes in total (7+payload+1 = 131072)")
def p_frame_exact(ctx):
    c = _new(ctx, frame_max=131072)
    c.open_channel(1)
    c.mark()
    c.send(_frame_of_total_size(131072))
    return _observe(c)


@probe("2c. method frame of frame_max+1 bytes in total (131073)")
def p_frame_plus_one(ctx):
    c = _new(ctx, frame_max=131072)
    c.open_channel(1)
    c.mark()
    c.send(_frame_of_total_size(131073))
    return _observe(c)


@probe("2e. frame of frame_max+8 bytes in total (payload = frame_max = 131072)")
def p_frame_plus_eight(ctx):
    c = _new(ctx, frame_max=131072)
    c.open_channel(1)
    c.mark()
    c.send(_frame_of_total_size(131080))
    return _observe(c)


@probe("2f. frame of frame_max+9 bytes in total (payload = frame_max+1 = 131073)")
def p_frame_plus_nine(ctx):
    c = _new(ctx, frame_max=131072)
    c.open_channel(1)
    c.mark()
    c.send(_frame_of_total_size(131081))
    return _observe(c)


@probe("2d. body frame larger than frame_max (after publish + header)")
def p_body_too_large(ctx):
    c = _new(ctx, frame_max=131072)
    c.open_channel(1)
    c.mark()
    data = b"y" * 140000
    c.send(basic_publish(1, "", "probe-nowhere") + content_header(1, 60, len(data)) + body(1, data))
    return _observe(c)


@probe("3. frame with a wrong frame-end byte (channel.open on ch1 ending 0x00)")
def p_bad_frame_end(ctx):
    c = _new(ctx)
    c.mark()
    c.send(method(1, 20, 10, shortstr(""), end=0x00))
    return _observe(c)


@probe("4a. unknown frame type 5 on channel 0")
def p_unknown_frame_type_ch0(ctx):
    c = _new(ctx)
    c.mark()
    c.send(frame(5, 0, b"hello"))
    return _observe(c)


@probe("4b. unknown frame type 5 on an open channel 1")
def p_unknown_frame_type_ch1(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(frame(5, 1, b"hello"))
    return _observe(c)


@probe("5a. method with unknown class id 99 (method 10) on open channel 1")
def p_unknown_class(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 99, 10, b""))
    return _observe(c)


@probe("5b. unknown method id 99 in class basic (60) on open channel 1")
def p_unknown_method(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 60, 99, b""))
    return _observe(c)


@probe("5c. unknown method id 99 in class connection (10) on channel 0")
def p_unknown_method_conn(ctx):
    c = _new(ctx)
    c.mark()
    c.send(method(0, 10, 99, b""))
    return _observe(c)


@probe("5d. truncated arguments: basic.qos on channel 1 with a 3-byte argument block")
def p_truncated_args(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 60, 10, b"\x00\x00\x00"))
    return _observe(c)


@probe("6a. basic.qos on channel 5, never opened")
def p_qos_unopened(ctx):
    c = _new(ctx)
    c.mark()
    c.send(basic_qos(5))
    return _observe(c)


@probe("6b. basic.qos on channel 1 after channel.close / close-ok")
def p_qos_closed(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(method(1, 20, 40, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)))
    c.expect_method("channel.close-ok")
    c.mark()
    c.send(basic_qos(1))
    return _observe(c)


@probe("6c. basic.qos on channel 1 after channel.close sent but before close-ok arrives")
def p_qos_closing(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 20, 40, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)) + basic_qos(1))
    return _observe(c)


@probe("6d. any method on channel 0 that belongs on a channel (basic.qos on ch0)")
def p_qos_ch0(ctx):
    c = _new(ctx)
    c.mark()
    c.send(basic_qos(0))
    return _observe(c)


@probe("7a. content body frame on open channel 1 without a preceding basic.publish")
def p_body_without_publish(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(body(1, b"orphan body"))
    return _observe(c)


@probe("7b. content header frame on open channel 1 without a preceding basic.publish")
def p_header_without_publish(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(content_header(1, 60, 5))
    return _observe(c)


@probe("7c. basic.publish, then another method instead of the content header")
def p_method_instead_of_header(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-q") + basic_qos(1))
    return _observe(c)


@probe("8. channel.open twice on channel 1")
def p_channel_open_twice(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(channel_open(1))
    return _observe(c)


@probe("9a. wrong password, client capabilities include authentication_failure_close=true")
def p_bad_auth_afc(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.handshake(user=ctx.user, password="wrong-password", open_vhost=False)
    _observe(c)
    return c.events


@probe("9b. wrong password, no authentication_failure_close capability (capabilities table empty)")
def p_bad_auth_noafc(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.handshake(user=ctx.user, password="wrong-password", capabilities={}, open_vhost=False)
    _observe(c, quiet=5.0, total=10.0)
    return c.events


@probe("9c. unknown user, with authentication_failure_close=true")
def p_bad_user(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.handshake(user="no-such-user", password="x", open_vhost=False)
    _observe(c)
    return c.events


@probe("10. connection.open to unknown vhost '/no-such-vhost'")
def p_unknown_vhost(ctx):
    c = Conn(ctx.host, ctx.port)
    c.handshake(user=ctx.user, password=ctx.password, open_vhost=False)
    c.mark()
    c.send(method(0, 10, 40, shortstr("/no-such-vhost") + shortstr("") + bits(False)))
    return _observe(c)


@probe("11a. heartbeat frame on channel 1 (open)")
def p_heartbeat_ch1(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(frame(FRAME_HEARTBEAT, 1, b""))
    return _observe(c)


@probe("11b. heartbeat frame on channel 0 with a non-empty payload")
def p_heartbeat_payload(ctx):
    c = _new(ctx)
    c.mark()
    c.send(frame(FRAME_HEARTBEAT, 0, b"xx"))
    return _observe(c)


@probe("12. content header declares body size 5, then a 10-byte body frame")
def p_body_too_long(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-body-size", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(basic_publish(1, "", "probe-body-size") + content_header(1, 60, 5) + body(1, b"0123456789"))
    return _observe(c)


@probe("12c. as 12, then basic.qos on the same channel")
def p_body_too_long_then_method(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-body-size2", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(basic_publish(1, "", "probe-body-size2") + content_header(1, 60, 5) + body(1, b"0123456789"))
    c.send(basic_qos(1))
    return _observe(c)


@probe("12d. content header declares body size 10, body frame of 5 bytes, then basic.qos")
def p_body_too_short_then_method(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-nowhere") + content_header(1, 60, 10) + body(1, b"01234"))
    c.send(basic_qos(1))
    return _observe(c)


@probe("12e. content header with body size 0 followed by a body frame")
def p_empty_body_then_body(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-nowhere") + content_header(1, 60, 0) + body(1, b"x"))
    return _observe(c)


@probe("12b. content header with class id 50 (queue) instead of 60 after basic.publish")
def p_header_wrong_class(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-q") + content_header(1, 50, 2) + body(1, b"hi"))
    return _observe(c)


@probe("13. exchange.declare with type 'foo'")
def p_exchange_type_foo(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_declare(1, "probe-foo", "foo"))
    return _observe(c)


@probe("14a. exclusive queue of connection A: queue.declare (same args) from connection B")
def p_exclusive_other_conn(ctx):
    a = _new(ctx)
    a.open_channel(1)
    a.send(queue_declare(1, "probe-exclusive", exclusive=True))
    a.expect_method("queue.declare-ok")
    b = _new(ctx)
    b.open_channel(1)
    b.mark()
    b.send(queue_declare(1, "probe-exclusive", exclusive=True))
    ev = _observe(b)
    a.close()
    return ev


@probe("14b. exclusive queue of connection A: passive queue.declare from connection B")
def p_exclusive_passive(ctx):
    a = _new(ctx)
    a.open_channel(1)
    a.send(queue_declare(1, "probe-exclusive2", exclusive=True))
    a.expect_method("queue.declare-ok")
    b = _new(ctx)
    b.open_channel(1)
    b.mark()
    b.send(queue_declare(1, "probe-exclusive2", passive=True))
    ev = _observe(b)
    a.close()
    return ev


@probe("15a. basic.ack of unknown delivery tag 12345 on open channel 1")
def p_ack_unknown(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_ack(1, 12345))
    return _observe(c)


@probe("15b. basic.ack of delivery tag 0 with multiple=false (nothing outstanding)")
def p_ack_zero(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_ack(1, 0))
    return _observe(c)


@probe("16. basic.publish (with content) to a non-existent exchange")
def p_publish_no_exchange(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(publish_message(1, "probe-no-such-exchange", "rk", b"hello"))
    return _observe(c)


@probe("16b. same, on a channel in confirm mode")
def p_publish_no_exchange_confirm(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(confirm_select(1))
    c.expect_method("confirm.select-ok")
    c.mark()
    c.send(publish_message(1, "probe-no-such-exchange", "rk", b"hello"))
    return _observe(c)


@probe("17. queue.declare non-durable, then redeclare durable=true (same channel)")
def p_redeclare_durable(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_delete(1, "probe-redeclare"))
    c.expect_method("queue.delete-ok")
    c.send(queue_declare(1, "probe-redeclare", durable=False, auto_delete=False))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(queue_declare(1, "probe-redeclare", durable=True))
    ev = _observe(c)
    d = _new(ctx)
    d.open_channel(1)
    d.send(queue_delete(1, "probe-redeclare"))
    d.read(quiet=1.0, total=2.0)
    d.close()
    return ev


@probe("17b. exchange.declare direct, then redeclare as fanout")
def p_redeclare_exchange_type(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(exchange_declare(1, "probe-ex-redeclare", "direct", auto_delete=True))
    c.expect_method("exchange.declare-ok")
    c.mark()
    c.send(exchange_declare(1, "probe-ex-redeclare", "fanout", auto_delete=True))
    return _observe(c)


@probe("18a. exchange.delete of amq.direct")
def p_delete_amq_direct(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_delete(1, "amq.direct"))
    return _observe(c)


@probe("18b. exchange.declare of a new name starting with 'amq.' (amq.probe, direct)")
def p_declare_amq_prefix(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_declare(1, "amq.probe", "direct"))
    return _observe(c)


@probe("18c. exchange.delete of the default exchange ''")
def p_delete_default(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_delete(1, ""))
    return _observe(c)


@probe("18d. exchange.delete of a non-existent exchange")
def p_delete_missing_exchange(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_delete(1, "probe-no-such-exchange"))
    return _observe(c)


@probe("18e. queue.delete of a non-existent queue")
def p_delete_missing_queue(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(queue_delete(1, "probe-no-such-queue"))
    return _observe(c)


@probe("19a. publish to default exchange, routing key of a non-existent queue, mandatory=true")
def p_mandatory_unroutable(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(publish_message(1, "", "probe-no-such-queue", b"hello", mandatory=True))
    return _observe(c)


@probe("19b. same, on a channel in confirm mode")
def p_mandatory_unroutable_confirm(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(confirm_select(1))
    c.expect_method("confirm.select-ok")
    c.mark()
    c.send(publish_message(1, "", "probe-no-such-queue", b"hello", mandatory=True))
    return _observe(c)


@probe("19c. same, mandatory=false, confirm mode")
def p_unroutable_confirm(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(confirm_select(1))
    c.expect_method("confirm.select-ok")
    c.mark()
    c.send(publish_message(1, "", "probe-no-such-queue", b"hello"))
    return _observe(c)


@probe("19d. basic.publish with immediate=true (to an existing queue)")
def p_immediate(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-immediate", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(basic_publish(1, "", "probe-immediate", immediate=True) + content_header(1, 60, 2) + body(1, b"hi"))
    return _observe(c)


@probe("20a. channel.open on channel 11 after tune-ok channel_max=10")
def p_channel_above_max(ctx):
    c = _new(ctx, channel_max=10)
    c.mark()
    c.send(channel_open(11))
    return _observe(c)


@probe("20b. channel.open on channel 10 after tune-ok channel_max=10 (the maximum itself)")
def p_channel_at_max(ctx):
    c = _new(ctx, channel_max=10)
    c.mark()
    c.send(channel_open(10))
    return _observe(c)


@probe("20c. channel.open on channel 2048 after accepting the server's channel_max (2047)")
def p_channel_above_server_max(ctx):
    c = _new(ctx)
    c.mark()
    c.send(channel_open(c.channel_max + 1))
    return _observe(c)


@probe("20d. tune-ok with channel_max=0 ('no limit' per spec) while the server proposed 2047")
def p_channel_max_zero(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    if c.handshake(user=ctx.user, password=ctx.password, channel_max=0):
        c.send(channel_open(65535))
    _observe(c, quiet=5.0, total=10.0)
    return c.events


@probe("20e. tune-ok channel_max=2, then channel.open on channels 1, 2, 3 (count limit)")
def p_channel_count(ctx):
    c = _new(ctx, channel_max=2)
    c.mark()
    c.send(channel_open(1) + channel_open(2) + channel_open(3))
    return _observe(c)


@probe("20f. channel.open on channel 0")
def p_channel_zero(ctx):
    c = _new(ctx)
    c.mark()
    c.send(channel_open(0))
    return _observe(c)


@probe("20g. tune-ok with channel_max=3000 (above the server's 2047)")
def p_channel_max_above(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    if c.handshake(user=ctx.user, password=ctx.password, channel_max=3000):
        c.send(channel_open(2500))
    _observe(c, quiet=5.0, total=10.0)
    return c.events


@probe("21. tune-ok with frame_max 1024 (below the 4096 minimum)")
def p_frame_max_small(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.handshake(user=ctx.user, password=ctx.password, frame_max=1024)
    _observe(c, quiet=5.0, total=10.0)
    return c.events


@probe("22. tune-ok with frame_max 0 (no limit) above the server's proposal")
def p_frame_max_zero(ctx):
    c = Conn(ctx.host, ctx.port)
    c.mark()
    c.handshake(user=ctx.user, password=ctx.password, frame_max=0)
    _observe(c, quiet=5.0, total=10.0)
    return c.events


@probe("22b. tune-ok with frame_max 4096 (the minimum), then a 5000-byte method frame")
def p_frame_max_min(ctx):
    c = _new(ctx, frame_max=4096)
    c.open_channel(1)
    c.mark()
    c.send(queue_declare(1, "probe-fm-min", arguments={"x-pad": "x" * 5000}))
    return _observe(c)


@probe("22c. tune-ok heartbeat=1 s, then silence (observed up to 10 s)")
def p_heartbeat_timeout(ctx):
    c = _new(ctx)
    c.mark()
    # Re-tuning is impossible after open: do the handshake again on a new connection.
    c.close()
    c = Conn(ctx.host, ctx.port)
    c.handshake(user=ctx.user, password=ctx.password, heartbeat=1)
    c.mark()
    _observe(c, quiet=10.0, total=10.0)
    return c.events


@probe("23. a second connection.open after the connection is open")
def p_open_twice(ctx):
    c = _new(ctx)
    c.mark()
    c.send(method(0, 10, 40, shortstr("/") + shortstr("") + bits(False)))
    return _observe(c)


@probe("24. basic.consume on a non-existent queue")
def p_consume_missing(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 60, 20, struct.pack(">H", 0) + shortstr("probe-no-such-queue") + shortstr("")
                  + bits(False, False, False, False) + table({})))
    return _observe(c)


@probe("25. channel-level error leaves the connection usable: after 404 on ch1, channel.open ch2")
def p_after_channel_error(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-no-such-queue", passive=True))
    c.expect_method("channel.close")
    c.mark()
    c.send(channel_close_ok(1) + channel_open(2) + channel_open(1))
    return _observe(c)


def queue_bind(ch, queue, exchange, key="", unbind=False):
    if unbind:
        return method(ch, 50, 50, struct.pack(">H", 0) + shortstr(queue) + shortstr(exchange)
                      + shortstr(key) + table({}))
    return method(ch, 50, 20, struct.pack(">H", 0) + shortstr(queue) + shortstr(exchange)
                  + shortstr(key) + bits(False) + table({}))


def exchange_unbind(ch, destination, source, key=""):
    return method(ch, 40, 40, struct.pack(">H", 0) + shortstr(destination) + shortstr(source)
                  + shortstr(key) + bits(False) + table({}))


def basic_consume(ch, queue, tag="", no_ack=False, exclusive=False, arguments=None):
    return method(ch, 60, 20, struct.pack(">H", 0) + shortstr(queue) + shortstr(tag)
                  + bits(False, no_ack, exclusive, False) + table(arguments or {}))


REPLY_TO = "amq.rabbitmq.reply-to"


@probe("26a. queue.unbind from an exchange that does not exist (the queue exists)")
def p_unbind_missing_exchange(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-unbind-q", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(queue_bind(1, "probe-unbind-q", "probe-no-such-exchange", "k", unbind=True))
    return _observe(c)


@probe("26b. queue.unbind of a queue that does not exist (from amq.direct)")
def p_unbind_missing_queue(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(queue_bind(1, "probe-no-such-queue", "amq.direct", "k", unbind=True))
    return _observe(c)


@probe("26c. queue.unbind of a binding that was never made (queue and exchange exist)")
def p_unbind_missing_binding(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-unbind-q2", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(queue_bind(1, "probe-unbind-q2", "amq.direct", "never", unbind=True))
    return _observe(c)


@probe("26d. exchange.unbind with a source exchange that does not exist")
def p_exchange_unbind_missing(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_unbind(1, "amq.fanout", "probe-no-such-exchange", "k"))
    return _observe(c)


@probe("26e. queue.unbind from the default exchange")
def p_unbind_default(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-unbind-q3", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(queue_bind(1, "probe-unbind-q3", "", "probe-unbind-q3", unbind=True))
    return _observe(c)


@probe("27a. passive exchange.declare of the default exchange ''")
def p_passive_default_exchange(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_declare(1, "", "direct", passive=True))
    return _observe(c)


@probe("27b. passive exchange.declare of amq.direct")
def p_passive_amq_direct(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(exchange_declare(1, "amq.direct", "direct", passive=True))
    return _observe(c)


@probe("28a. an exclusive consumer, then another exclusive consume on the queue (same connection)")
def p_second_exclusive_consumer(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.open_channel(2)
    c.send(queue_declare(1, "probe-excl-consumer", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.send(basic_consume(1, "probe-excl-consumer", "first", exclusive=True))
    c.expect_method("basic.consume-ok")
    c.mark()
    c.send(basic_consume(2, "probe-excl-consumer", "second", exclusive=True))
    return _observe(c)


@probe("28b. an exclusive consumer, then a plain consume on the queue from another connection")
def p_consume_after_exclusive_consumer(ctx):
    a = _new(ctx)
    a.open_channel(1)
    a.send(queue_declare(1, "probe-excl-consumer2", auto_delete=True))
    a.expect_method("queue.declare-ok")
    a.send(basic_consume(1, "probe-excl-consumer2", "first", exclusive=True))
    a.expect_method("basic.consume-ok")
    b = _new(ctx)
    b.open_channel(1)
    b.mark()
    b.send(basic_consume(1, "probe-excl-consumer2", "second"))
    ev = _observe(b)
    a.close()
    return ev


@probe("28c. a plain consumer, then an exclusive consume on the queue")
def p_exclusive_after_consumer(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.open_channel(2)
    c.send(queue_declare(1, "probe-excl-consumer3", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.send(basic_consume(1, "probe-excl-consumer3", "first"))
    c.expect_method("basic.consume-ok")
    c.mark()
    c.send(basic_consume(2, "probe-excl-consumer3", "second", exclusive=True))
    return _observe(c)


@probe("28d. basic.consume on another connection's exclusive queue")
def p_consume_other_exclusive_queue(ctx):
    a = _new(ctx)
    a.open_channel(1)
    a.send(queue_declare(1, "probe-exclusive3", exclusive=True))
    a.expect_method("queue.declare-ok")
    b = _new(ctx)
    b.open_channel(1)
    b.mark()
    b.send(basic_consume(1, "probe-exclusive3", "other"))
    ev = _observe(b)
    a.close()
    return ev


@probe("29a. direct reply-to: publish with reply_to amq.rabbitmq.reply-to and no reply consumer")
def p_reply_to_without_consumer(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-rpc-server")
           + content_header(1, 60, 0, flags=0x0200, props=shortstr(REPLY_TO)))
    return _observe(c)


@probe("29b. direct reply-to: basic.consume on amq.rabbitmq.reply-to without no-ack")
def p_reply_to_with_acks(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_consume(1, REPLY_TO, "", no_ack=False))
    return _observe(c)


@probe("29c. direct reply-to: passive queue.declare of amq.rabbitmq.reply-to")
def p_reply_to_passive(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(queue_declare(1, REPLY_TO, passive=True))
    return _observe(c)


@probe("29d. direct reply-to: consume no-ack, then publish with reply_to (no queue named by the key)")
def p_reply_to_round(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(basic_consume(1, REPLY_TO, "rpc", no_ack=True))
    c.expect_method("basic.consume-ok")
    c.mark()
    c.send(basic_publish(1, "", "probe-rpc-server", mandatory=True)
           + content_header(1, 60, 0, flags=0x0200, props=shortstr(REPLY_TO)))
    return _observe(c)


@probe("29e. direct reply-to: publish to amq.rabbitmq.reply-to.<unknown token>")
def p_reply_to_unknown_token(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(publish_message(1, "", REPLY_TO + ".g2dkAA1yYWJiaXQAAAAA", b"x", mandatory=True))
    return _observe(c)


@probe("29f. direct reply-to: a second basic.consume on amq.rabbitmq.reply-to on the same channel")
def p_reply_to_twice(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(basic_consume(1, REPLY_TO, "rpc", no_ack=True))
    c.expect_method("basic.consume-ok")
    c.mark()
    c.send(basic_consume(1, REPLY_TO, "rpc2", no_ack=True))
    return _observe(c)


@probe("30a. basic.qos on channel 1 with 3 bytes after its arguments")
def p_junk_after_args(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 60, 10, struct.pack(">IHB", 0, 1, 0) + b"abc"))
    return _observe(c)


@probe("30b. basic.publish, then a content header with weight 1")
def p_header_weight(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-q")
           + frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 1, 0, 0)))
    return _observe(c)


@probe("30c. basic.publish, then a content header with 2 bytes after its properties")
def p_header_trailing(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-q")
           + frame(FRAME_HEADER, 1, struct.pack(">HHQH", 60, 0, 0, 0) + b"zz"))
    return _observe(c)


@probe("30d. basic.publish, then a content header with only the continuation flag set")
def p_header_continuation(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(basic_publish(1, "", "probe-q") + content_header(1, 60, 0, flags=0x0001))
    return _observe(c)


@probe("30e. basic.deliver from the client, with its content header and body")
def p_client_deliver(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    args = shortstr("x") + struct.pack(">Q", 1) + bits(False) + shortstr("") + shortstr("q")
    c.send(method(1, 60, 60, args) + content_header(1, 60, 2) + body(1, b"hi"))
    return _observe(c)


@probe("30f. connection.close-ok from the client on a running connection")
def p_unsolicited_close_ok(ctx):
    c = _new(ctx)
    c.mark()
    c.send(connection_close_ok())
    return _observe(c)


@probe("30g. channel.flow-ok on open channel 1 (the broker sent no channel.flow)")
def p_unsolicited_flow_ok(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.mark()
    c.send(method(1, 20, 21, bits(True)))
    return _observe(c)


@probe("30h. basic.consume with x-priority \"5\" (a string)")
def p_consume_priority_string(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-cq", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(basic_consume(1, "probe-cq", "c", arguments={"x-priority": "5"}))
    return _observe(c)


@probe("30i. basic.consume with x-stream-offset on a classic queue")
def p_consume_stream_offset(ctx):
    c = _new(ctx)
    c.open_channel(1)
    c.send(queue_declare(1, "probe-cq", auto_delete=True))
    c.expect_method("queue.declare-ok")
    c.mark()
    c.send(basic_consume(1, "probe-cq", "c", arguments={"x-stream-offset": "first"}))
    return _observe(c)


@dataclass
class Ctx:
    host: str
    port: int
    user: str
    password: str


def describe_close_timing(events: list[Event]) -> str:
    for e in events:
        if e.kind in ("eof", "reset"):
            return "immediately" if e.t < 0.5 else f"after ~{round(e.t)} s"
    return ""


def run_all(ctx: Ctx, only=None):
    results = []
    for name, title, fn in PROBES:
        if only and not any(o in name for o in only):
            continue
        try:
            evs = fn(ctx)
            err = None
        except Exception as exc:  # noqa: BLE001 - record and go on
            evs, err = [], f"{type(exc).__name__}: {exc}"
        results.append({"probe": name, "title": title, "error": err,
                        "events": [{"t": round(e.t, 3), "kind": e.kind, "channel": e.channel, **e.data}
                                   for e in evs],
                        "lines": [e.short() for e in evs], "close_timing": describe_close_timing(evs)})
    return results


def server_properties(ctx: Ctx) -> dict:
    c = Conn(ctx.host, ctx.port)
    c.send(b"AMQP\x00\x00\x09\x01")
    start = c.expect_method("connection.start")
    c.close()
    return start.data


def to_markdown(ctx: Ctx, start: dict, results) -> str:
    out = [f"# Broker error behaviour probe: {ctx.host}:{ctx.port}", ""]
    props = start.get("server_properties", {})
    out.append(f"connection.start: version {start.get('version')}, mechanisms `{start.get('mechanisms')}`, "
               f"locales `{start.get('locales')}`")
    out.append("")
    out.append("server-properties:")
    out.append("```")
    out.append(json.dumps(props, indent=2, sort_keys=False))
    out.append("```")
    out.append("")
    for r in results:
        out.append(f"## {r['title']}")
        if r["error"]:
            out.append(f"- PROBE ERROR: {r['error']}")
        for line in r["lines"]:
            out.append(f"- {line}")
        if not r["lines"] and not r["error"]:
            out.append("- (nothing received; socket still open at the end of the observation window)")
        elif r["lines"] and not any(e["kind"] in ("eof", "reset") for e in r["events"]):
            out.append("- (socket still open at the end of the observation window)")
        if r["close_timing"]:
            out.append(f"- socket closed {r['close_timing']}")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--json", help="write full results (with timings) as JSON")
    ap.add_argument("--md", help="write the Markdown report here instead of stdout")
    ap.add_argument("--only", help="comma list of substrings of probe function names")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name, title, _ in PROBES:
            print(f"{name:32} {title}")
        return 0
    ctx = Ctx(args.host, args.port, args.user, args.password)
    try:
        start = server_properties(ctx)
    except (OSError, RuntimeError) as exc:
        print(f"cannot get connection.start from {ctx.host}:{ctx.port}: {exc}", file=sys.stderr)
        start = {"error": str(exc)}
    results = run_all(ctx, args.only.split(",") if args.only else None)
    md = to_markdown(ctx, start, results)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(md + "\n")
    else:
        print(md)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"connection_start": start, "probes": results}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
