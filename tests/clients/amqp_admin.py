"""Tiny AMQP-side admin helper used by run_suites.py (runs in the suite venv, needs pika).

    python amqp_admin.py --host H --port P delete-queue NAME [NAME...]
    python amqp_admin.py --host H --port P delete-exchange NAME [NAME...]

Each deletion uses its own channel; a missing queue/exchange is not an error.
"""
from __future__ import annotations

import argparse
import sys

import pika
import pika.exceptions


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5672)
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--vhost", default="/")
    ap.add_argument("action", choices=("delete-queue", "delete-exchange"))
    ap.add_argument("names", nargs="+")
    args = ap.parse_args(argv)
    params = pika.ConnectionParameters(
        host=args.host, port=args.port, virtual_host=args.vhost,
        credentials=pika.PlainCredentials(args.user, args.password),
        socket_timeout=5, stack_timeout=10, connection_attempts=1,
    )
    conn = pika.BlockingConnection(params)
    rc = 0
    for name in args.names:
        ch = conn.channel()
        try:
            if args.action == "delete-queue":
                ok = ch.queue_delete(name)
                print(f"deleted queue {name!r} ({ok.method.message_count} messages)")
            else:
                ch.exchange_delete(name)
                print(f"deleted exchange {name!r}")
            ch.close()
        except pika.exceptions.ChannelClosedByBroker as exc:
            print(f"{args.action} {name!r}: {exc.reply_code} {exc.reply_text}")
            if exc.reply_code != 404:
                rc = 1
    conn.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
