"""Logging channels: ``maitred.error`` (events worth a line) and
``maitred.access`` (one line per request, off by default for speed).

Nothing is logged on the admit/shed path; the access channel is guarded by
``isEnabledFor`` where it is used.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable

ERROR = logging.getLogger("maitred.error")
ACCESS = logging.getLogger("maitred.access")


def configure(settings) -> None:
    """Set up both channels from the ``[log]`` settings, writing to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("maitred")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(settings.level.upper())
    ACCESS.setLevel(logging.INFO if settings.access else logging.CRITICAL + 1)
    if settings.access_format == "json":
        # A JSON line is the whole message: no prefix to strip.
        access_handler = logging.StreamHandler(sys.stderr)
        access_handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS.handlers[:] = [access_handler]
        ACCESS.propagate = False


AccessLog = Callable[[bytes, object, int, str, float], None]


def access_logger(access_format: str) -> AccessLog | None:
    """The access-log writer, or None when the channel is off (the default).

    Text lines read ``ADDR "METHOD TARGET HTTP/V" STATUS OUTCOME SECONDS``;
    JSON lines carry the same fields by name. The status is 0 when no
    response could be sent (the client left first).
    """
    if not ACCESS.isEnabledFor(logging.INFO):
        return None

    def text(peer: bytes, request, status: int, outcome: str,
             seconds: float) -> None:
        ACCESS.info(
            '%s "%s %s HTTP/%s" %d %s %.6f',
            peer.decode(), request.method.decode("latin-1"),
            request.target.decode("latin-1"), request.version.decode(),
            status, outcome, seconds,
        )

    def json_line(peer: bytes, request, status: int, outcome: str,
                  seconds: float) -> None:
        ACCESS.info(json.dumps({
            "client": peer.decode(),
            "method": request.method.decode("latin-1"),
            "target": request.target.decode("latin-1"),
            "version": request.version.decode(),
            "status": status,
            "outcome": outcome,
            "seconds": round(seconds, 6),
        }))

    return json_line if access_format == "json" else text
