"""A counting HTTP proxy in front of the emulator: how many DynamoDB keys each server reads.

moto keeps no per-call counts, and the seed exposes no metrics, so both servers are pointed at
this proxy for the stampede scenario; it forwards every request unchanged and counts the keys in
BatchGetItem (and GetItem) bodies.
"""

import http.client
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class KeyCounter:
    """Thread-safe tally of keys requested, in total and per distinct key."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.keys: Counter[str] = Counter()

    def add(self, target: str, body: bytes) -> None:
        """Count the keys of one DynamoDB call."""
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return
        if target.endswith(".BatchGetItem"):
            keys = [
                json.dumps(key, sort_keys=True)
                for table in payload.get("RequestItems", {}).values()
                for key in table.get("Keys", [])
            ]
        elif target.endswith(".GetItem"):
            keys = [json.dumps(payload.get("Key", {}), sort_keys=True)]
        else:
            return
        with self.lock:
            self.calls += 1
            self.keys.update(keys)

    def snapshot(self) -> dict[str, Any]:
        """Return calls, keys requested, and distinct keys so far."""
        with self.lock:
            return {
                "calls": self.calls,
                "keys_requested": sum(self.keys.values()),
                "unique_keys": len(self.keys),
            }

    def reset(self) -> None:
        """Forget everything counted."""
        with self.lock:
            self.calls = 0
            self.keys.clear()


def make_handler(upstream: str, counter: KeyCounter) -> type[BaseHTTPRequestHandler]:
    """Build a handler class forwarding to upstream and counting into counter."""
    parts = urlsplit(upstream)
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            target = self.headers.get("X-Amz-Target", "")
            if "DynamoDB" in target:
                counter.add(target, body)
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = http.client.HTTPConnection(
                    parts.hostname or "127.0.0.1", parts.port, timeout=60
                )
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            try:
                conn.request(self.command, self.path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                local.conn = None
                self.send_error(502)
                return
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_HEADERS:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = forward

        def log_message(self, format: str, *args: Any) -> None:
            """Stay quiet: the bench prints its own summary."""

    return Handler


def start_proxy(upstream: str) -> tuple[ThreadingHTTPServer, KeyCounter, int]:
    """Start the proxy on a free 127.0.0.1 port in a daemon thread."""
    counter = KeyCounter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(upstream, counter))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, counter, int(server.server_address[1])
