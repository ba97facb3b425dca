"""What reading a request's head and body costs a worker thread, with and without deadlines.

Over a TCP connection on 127.0.0.1, gunicorn's own parser reads a 30-stream POST /score
(head, then the body through `read_body`), as the worker does:

- per read: a plain socket; `read_body` sets a socket timeout for the body and puts it back,
  as the service did before read deadlines (and still does on a connection that is not a
  DeadlineSocket);
- deadlines: a DeadlineSocket; a deadline for the head (from its first read), then one for
  the body.

The whole request is in the socket's buffer before the server reads it, as it usually is.
Figures: the median per request over 20,000 requests, in 5 alternated rounds; the medians of
those rounds, in us.

    .venv/bin/python bench/readpath.py
"""

from __future__ import annotations

import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from scorer.http.fastpath import read_body
from scorer.serving.deadlines import DeadlineSocket

REQUESTS = 20_000
ROUNDS = 5


def connection(deadlines: bool) -> tuple[socket.socket, socket.socket]:
    """Return (server side, client side) of a fresh loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(True)
    return (DeadlineSocket.adopt(server) if deadlines else server), client


def request_bytes() -> bytes:
    urls = [f"https://streams.example.com/live/{n}" for n in range(30)]
    body = orjson.dumps({"user": {"userid": "u"}, "streams": [{"streamUrl": u} for u in urls]})
    head = (
        "POST /score HTTP/1.1\r\nHost: scorer\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def one_round(deadlines: bool, raw: bytes) -> float:
    """Return the median microseconds to read one request, head and body, over REQUESTS."""
    server, client = connection(deadlines)
    parser = RequestParser(Config(), server, ("127.0.0.1", 0))
    length = str(len(raw) - raw.index(b"\r\n\r\n") - 4)
    start: Callable[[], None] = lambda: None  # noqa: E731
    end: Callable[[], None] = lambda: None  # noqa: E731
    if isinstance(server, DeadlineSocket):
        sock = server
        start = lambda: sock.start_phase(5.0, from_first_read=True)  # noqa: E731
        end = sock.end_phase
    timings = []
    for _ in range(REQUESTS):
        client.sendall(raw)
        began = time.perf_counter_ns()
        start()  # what the worker does: the head's deadline...
        request = next(parser)
        end()  # ...ended when the head is in
        environ = {"gunicorn.socket": server, "wsgi.input": request.body, "CONTENT_LENGTH": length}
        read_body(environ, 1_048_576, 5.0)
        timings.append(time.perf_counter_ns() - began)
    server.close()
    client.close()
    return statistics.median(timings) / 1000


def main() -> None:
    raw = request_bytes()
    results: dict[str, list[float]] = {"per read": [], "deadlines": []}
    for _ in range(ROUNDS):
        results["per read"].append(one_round(False, raw))
        results["deadlines"].append(one_round(True, raw))
    for name, values in results.items():
        rounds = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name:>10}: {statistics.median(values):6.1f} us  (rounds: {rounds})")


if __name__ == "__main__":
    main()
