"""Logging channels: ``maitred.error`` (events worth a line) and
``maitred.access`` (one line per request, off by default for speed).

Nothing is logged on the admit/shed path; the access channel is guarded by
``isEnabledFor`` where it is used.
"""

from __future__ import annotations

import logging
import sys

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
