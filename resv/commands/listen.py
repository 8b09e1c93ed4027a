"""`resv listen --port P --secret whsec_...`: a receiver for development.

Verifies each request's Standard Webhooks signature with the
`standardwebhooks` package, answers 204, and prints one JSON line per event
on stdout: `{"webhook_id", "type", "timestamp", "data"}`. A retried delivery
(same webhook-id) is acknowledged again and not printed twice. A request
that does not verify gets 400 and a line on stderr, never on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

MAX_BODY = 1024 * 1024
REMEMBERED = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret", default=os.environ.get("RESV_LISTEN_SECRET"),
                        help="the endpoint's whsec_... secret (default: $RESV_LISTEN_SECRET)")


def run(args: argparse.Namespace) -> int:
    from standardwebhooks import Webhook

    if not args.secret or not args.secret.startswith("whsec_"):
        print("resv listen: --secret whsec_... is required (the secret POST /webhooks answered)", file=sys.stderr)
        return 2
    try:
        verifier = Webhook(args.secret)
    except Exception:
        print("resv listen: --secret is not a whsec_ secret", file=sys.stderr)
        return 2
    seen: OrderedDict[str, None] = OrderedDict()
    lock = Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                self._answer(413)
                return
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                event = verifier.verify(body, headers)
            except Exception as exc:
                print(f"resv listen: refused a request: {exc}", file=sys.stderr, flush=True)
                self._answer(400)
                return
            webhook_id = headers.get("webhook-id", "")
            with lock:
                fresh = webhook_id not in seen
                if fresh:
                    seen[webhook_id] = None
                    if len(seen) > REMEMBERED:
                        seen.popitem(last=False)
                    line = {"webhook_id": webhook_id, "type": event.get("type"),
                            "timestamp": event.get("timestamp"), "data": event.get("data")}
                    print(json.dumps(line, separators=(",", ":")), flush=True)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:  # stdout carries events only
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"resv listen: receiving on http://{args.host}:{args.port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
