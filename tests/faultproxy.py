"""A fault-injecting HTTP proxy in front of the emulator, switched by the test at runtime.

The service reaches DynamoDB through it (`AWS_ENDPOINT_URL_DYNAMODB`) while S3 and the test's own
set-up talk to the emulator directly. Faults apply to every request the proxy sees, except the
two throttling modes, which only rewrite BatchGetItem answers and pass everything else through.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BATCH_GET = "DynamoDB_20120810.BatchGetItem"
DYNAMODB_ERROR = "com.amazonaws.dynamodb.v20120810#"

PASS = "pass"
DELAY = "delay"  # wait `seconds`, then forward
FAIL_500 = "fail500"  # answer 500 InternalServerError without forwarding
CLOSE = "close"  # read the request, then close the connection without an answer
UNPROCESSED = "unprocessed"  # BatchGetItem: forward, then hand back every other key unprocessed
THROTTLE = "throttle"  # BatchGetItem: answer 400 ProvisionedThroughputExceededException
MODES = (PASS, DELAY, FAIL_500, CLOSE, UNPROCESSED, THROTTLE)


class FaultProxy:
    """Forward HTTP to `upstream_port`, injecting the fault of the current mode."""

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        self.upstream_port = upstream_port
        self._lock = threading.Lock()
        self._mode = PASS
        self._seconds = 0.0
        self._remaining: int | None = None  # BatchGetItem calls left to fault; None: all
        self._released = threading.Event()  # set to cut every pending delay short
        self.seen: Counter[str] = Counter()  # requests seen, by X-Amz-Target ("" for none)
        self.faulted: Counter[str] = Counter()  # requests faulted, by mode
        self._connections: set[socket.socket] = set()  # client connections open now
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.listen()

    # --- control ---------------------------------------------------------------------------
    def set_mode(self, mode: str, *, seconds: float = 0.0, times: int | None = None) -> None:
        """Fault every request from now on, or only the next `times` BatchGetItem calls."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self._mode, self._seconds, self._remaining = mode, seconds, times
            if mode == DELAY:
                self._released.clear()
            else:
                self._released.set()

    def refuse(self) -> None:
        """Stop listening and drop open connections, so the store is unreachable."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:  # kept-alive ones would otherwise go on being served
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def listen(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Release pending delays and stop listening."""
        self._released.set()
        self.refuse()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- per request -----------------------------------------------------------------------
    def _fault_for(self, target: str) -> tuple[str, float]:
        """Return the mode that applies to this request, consuming one of `times`."""
        with self._lock:
            self.seen[target] += 1
            mode = self._mode
            if mode in (UNPROCESSED, THROTTLE) and target != BATCH_GET:
                return PASS, 0.0
            if mode != PASS and self._remaining is not None:
                if target != BATCH_GET:
                    return PASS, 0.0
                if self._remaining <= 0:
                    return PASS, 0.0
                self._remaining -= 1
            if mode != PASS:
                self.faulted[mode] += 1
            return mode, self._seconds

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        """Send the request to the emulator and return (status, headers, body)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()


def unprocess_half(body: bytes) -> bytes:
    """Move every other answered item of a BatchGetItem answer to UnprocessedKeys."""
    answer = json.loads(body)
    unprocessed = answer.setdefault("UnprocessedKeys", {})
    for table, items in answer.get("Responses", {}).items():
        kept, moved = items[1::2], items[0::2]
        answer["Responses"][table] = kept
        if moved:
            keys = [{"pk": item["pk"], "sk": item["sk"]} for item in moved]
            unprocessed.setdefault(table, {"Keys": []})["Keys"].extend(keys)
    return json.dumps(answer).encode()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: the tests read the counters instead

        def setup(self) -> None:
            super().setup()
            with proxy._lock:
                proxy._connections.add(self.connection)

        def finish(self) -> None:
            with proxy._lock:
                proxy._connections.discard(self.connection)
            super().finish()

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            target = self.headers.get("X-Amz-Target", "")
            mode, seconds = proxy._fault_for(target)
            if mode == CLOSE:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if mode == FAIL_500:
                self._answer(500, _error("InternalServerError", "injected by faultproxy"))
                return
            if mode == THROTTLE:
                self._answer(
                    400, _error("ProvisionedThroughputExceededException", "injected by faultproxy")
                )
                return
            if mode == DELAY and proxy._released.wait(seconds):
                pass  # released early: forward now
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = f"127.0.0.1:{proxy.upstream_port}"
            status, upstream_headers, answer = proxy.forward(self.command, self.path, headers, body)
            if mode == UNPROCESSED and status == 200:
                answer = unprocess_half(answer)
            content_type = dict(upstream_headers).get("Content-Type", "application/json")
            self._answer(status, answer, content_type)

        def _answer(self, status: int, body: bytes, content_type: str = JSON_10) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                self.close_connection = True  # the client gave up (read timeout): nothing to do

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _relay

    return Handler


JSON_10 = "application/x-amz-json-1.0"


def _error(code: str, message: str) -> bytes:
    return json.dumps({"__type": DYNAMODB_ERROR + code, "message": message}).encode()
