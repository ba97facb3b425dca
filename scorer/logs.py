"""Log format and level for the service's own loggers."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    """Send the service's logs to stderr, tagged with the process id of the worker."""
    logging.basicConfig(
        level=level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # botocore logs every retry at DEBUG and credential lookups at INFO: noise at our level.
    logging.getLogger("botocore").setLevel(max(logging.WARNING, logging.getLogger().level))
