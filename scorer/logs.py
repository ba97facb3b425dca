"""Log format and level for the service's own loggers, and client data made safe to log.

Clients send text the service logs (a user id, stream URLs, text a model puts in an exception).
Each record must start exactly one line, so that no such text can pass for a record of its own:
client values are logged as escaped literals, and whatever line breaks a record still carries
(a traceback, a stack) continue on indented lines.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
CONTINUATION = "\n    "
"""What separates the lines of one record: a record's own lines never start at column 0."""

# Every character str.splitlines() breaks on, C0 and C1 controls but tab, and DEL.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class RecordFormatter(logging.Formatter):
    """Format a record as one line, plus indented lines for a traceback or a stack.

    Any other control character (a terminal escape, a bare carriage return) is written out
    as an escape instead of being sent to the terminal or the log collector.
    """

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # isprintable() is False for every character _UNSAFE matches, and fast: most records.
        if text.isprintable() or _UNSAFE.search(text) is None:
            return text
        return CONTINUATION.join(_UNSAFE.sub(_escape, line) for line in text.splitlines())


class ClientText:
    """A value a client sent, rendered for a log line only if the line is written.

    As a Python literal: strings quoted, every control and line-break character escaped.
    A value nested too deeply for repr() (JSON allows 1024 levels) is not rendered at all,
    rather than failing the request that logs it.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        try:
            return repr(self.value)
        except RecursionError:
            return "<nested too deeply to log>"


def configure_logging(level: str) -> None:
    """Send the service's logs to stderr, tagged with the process id of the worker."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RecordFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # botocore logs every retry at DEBUG and credential lookups at INFO: noise at our level.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLogger().level))
