"""The floor: the least a gunicorn gthread worker can do per scoring request.

Read the body, parse it with orjson, answer a fixed small JSON. Served with the same gunicorn
settings as the service, it bounds what any Python WSGI scorer can reach on this machine.
"""

from collections.abc import Callable, Iterable
from typing import Any

import orjson

ANSWER = orjson.dumps({"scores": [0.0]})
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(ANSWER)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer /health with 200 and anything else after parsing its JSON body."""
    if environ.get("PATH_INFO") != "/health":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        orjson.loads(environ["wsgi.input"].read(length) or b"{}")
    start_response("200 OK", HEADERS)
    return [ANSWER]
