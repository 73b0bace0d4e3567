"""The scenarios, by the name given on the command line.

Each module has ``NAME``, ``DEFAULTS`` (setting -> (full run, --quick run)),
``run(ctx) -> dict`` with its results, summary and goals,
``markdown(report) -> str`` and ``plot(report, out, pyplot) -> [files]``.
"""

from . import burst, idle, overhead, overload, slow

SCENARIOS = {module.NAME: module for module in (overhead, overload, burst, idle, slow)}
