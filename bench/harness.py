"""What every scenario shares: the run's context, starting a system with
its backend, pinning, and the facts of the machine.

Pinning: each proxy runs on one core (``proxy_cpu``, 0 by default); the
load tool, the backend and the bench itself share the other (``load_cpu``,
1). A machine with one core, or ``--no-pin``, runs unpinned, and the results
say so.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .procs import StartError
from .stats import aggregate
from .systems import (
    REPO_ROOT,
    Limits,
    Peer,
    Running,
    find_tool,
    start_backend,
    start_system,
)


@dataclass
class Context:
    """One invocation of one scenario."""

    scenario: str
    quick: bool
    settings: dict
    peers: list[Peer]
    workdir: Path
    proxy_cpu: int | None
    load_cpu: int | None
    tools: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def capacity_rps(self) -> float:
        return self.settings["slots"] * 1000.0 / self.settings["service_ms"]

    def available(self) -> list[Peer]:
        return [peer for peer in self.peers if peer.available]

    def log(self, message: str) -> None:
        print(f"[bench {self.scenario}] {message}", file=sys.stderr, flush=True)

    def admission_limits(self, **extra) -> Limits:
        """The equivalent limits of the overload-type scenarios."""
        return Limits(
            concurrency=self.settings["max_concurrency"],
            max_queue=self.settings["max_queue"],
            queue_timeout_ms=self.settings["queue_timeout_ms"],
            **extra,
        )


@contextmanager
def serving(ctx: Context, peer: Peer, limits: Limits, slots: int,
            service_ms: float) -> Iterator[tuple[Running, int]]:
    """A fresh backend and ``peer`` in front of it; both stopped on exit.

    Yields the running system and the backend's own port (for its stats).
    """
    with ExitStack() as stack:
        backend, backend_port = start_backend(
            ctx.workdir, slots, service_ms, ctx.load_cpu
        )
        stack.callback(backend.stop)
        running, child = start_system(
            peer, backend_port, backend, limits, ctx.workdir, ctx.proxy_cpu
        )
        if child is not None:
            stack.callback(child.stop)
        yield running, backend_port


def attempt(ctx: Context, peer: Peer) -> bool:
    """False when ``peer`` already failed to start in this invocation."""
    return peer.name not in ctx.failed


def start_failed(ctx: Context, peer: Peer, error: StartError) -> dict:
    """Remember the failure (later runs skip the peer) and make its row."""
    ctx.failed[peer.name] = str(error)
    ctx.log(f"{peer.name} failed to start: {error}")
    return {"system": peer.name, "error": f"failed to start: {error}"}


def per_system(ctx: Context, rows: list[dict], keys: list[str],
               by: str | None = None, values=(None,)) -> list[dict]:
    """Medians over rounds for each system (and each value of ``by``).

    A system that is not installed gets one entry saying why, never none.
    """
    summary = []
    for peer in ctx.peers:
        if not peer.available:
            summary.append({"system": peer.name, "missing": peer.reason})
            continue
        for value in values:
            mine = [row for row in rows if row["system"] == peer.name
                    and (by is None or row.get(by) == value)]
            entry = {"system": peer.name} if by is None else {
                "system": peer.name, by: value}
            entry.update(aggregate(mine, keys))
            summary.append(entry)
    return summary


def require_tool(ctx: Context, name: str) -> str | None:
    """The path of a load tool, or None after noting that it is missing."""
    path = find_tool(name, ctx.tools.get(name))
    if path is None:
        ctx.notes.append(f"{name} not found: this scenario could not run "
                         f"(install: apt-get install -y {name})")
    return path


def choose_cpus(pin: bool, proxy_cpu: int, load_cpu: int) -> dict:
    """Pin the bench to the load core; say which cores each part uses."""
    allowed = sorted(os.sched_getaffinity(0))
    usable = pin and proxy_cpu in allowed and load_cpu in allowed
    usable = usable and proxy_cpu != load_cpu
    if not usable:
        why = "disabled by --no-pin" if not pin else (
            f"cores {proxy_cpu} and {load_cpu} are not both available "
            f"(allowed: {allowed})")
        return {"applied": False, "why_not": why, "proxy_cpu": None,
                "load_cpu": None}
    os.sched_setaffinity(0, {load_cpu})
    return {
        "applied": True, "proxy_cpu": proxy_cpu, "load_cpu": load_cpu,
        "proxy": f"core {proxy_cpu} (taskset), one worker/thread",
        "load_tool_and_backend": f"core {load_cpu} (taskset)",
    }


def machine_facts() -> dict:
    """What a reader needs to judge the figures: cores, CPU, versions, load."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_kib": _meminfo_kib("MemTotal"),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "uvloop": _module_version("uvloop"),
        "loadavg_end": list(os.getloadavg()),
        "git_commit": _git_commit(),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or None


def _meminfo_kib(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _module_version(name: str) -> str | None:
    try:
        module = __import__(name)
    except ImportError:
        return None
    return getattr(module, "__version__", None)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
