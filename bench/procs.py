"""Child processes of the bench: started pinned, watched, stopped by PID.

Every server the bench starts is its own child, in the foreground, bound to
127.0.0.1 on a port chosen free at run time. It runs in a new session so
that a Ctrl-C at the terminal reaches only the bench, which then stops its
children itself, and it gets SIGTERM from the kernel if the bench dies
without stopping it (PR_SET_PDEATHSIG). ``Child.stop`` sends SIGTERM to the
child's PID, waits, then SIGKILL, and finally kills by PID any of its own
descendants (nginx's workers) that outlived it.

The /proc readers here give the memory (RSS) and CPU time of a process
together with its descendants.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class StartError(Exception):
    """A server did not come up; the message says why, with its log's tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """The command run on one core through taskset, or as is without one."""
    if cpu is None or shutil.which("taskset") is None:
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


class Child:
    """One server process of the bench; its output goes to a log file."""

    def __init__(self, name: str, cmd: list[str], log: Path, cpu: int | None,
                 cwd: Path | None = None):
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            try:
                self.proc = subprocess.Popen(
                    pinned(cmd, cpu), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, cwd=cwd,
                    preexec_fn=_die_with_parent,
                )
            except OSError as error:
                raise StartError(f"{name} could not be run: {error}") from None
        self.pid = self.proc.pid

    @classmethod
    def listening(cls, name: str, cmd: list[str], log: Path, cpu: int | None,
                  port: int, cwd: Path | None = None) -> Child:
        """Start a child and return once it listens on ``port``; a child
        that never does is stopped before the error goes on."""
        child = cls(name, cmd, log, cpu, cwd)
        try:
            child.wait_for_port(port)
        except BaseException:
            child.stop()
            raise
        return child

    def wait_for_port(self, port: int, timeout: float = 15.0) -> None:
        """Return once 127.0.0.1:port accepts; StartError if the child died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(
                    f"{self.name} exited with {self.proc.returncode}: "
                    f"{self.log_tail()}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise StartError(f"{self.name} did not listen on {port} in {timeout}s")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip()
        except OSError:
            return ""
        return " | ".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace``; then leftover descendants."""
        descendants = [(pid, _start_time(pid)) for pid in _descendants(self.pid)]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, started in descendants:
            _kill_if_same(pid, started)

    def rss_kib(self) -> int:
        return sum(_rss_kib(pid) for pid in [self.pid, *_descendants(self.pid)])

    def cpu_seconds(self) -> float:
        pids = [self.pid, *_descendants(self.pid)]
        return sum(_cpu_ticks(pid) for pid in pids) / _CLOCK_TICKS

    def open_fds(self) -> int:
        total = 0
        for pid in [self.pid, *_descendants(self.pid)]:
            try:
                total += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:
                pass
        return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = _children(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(_children(child))
    return found


def _kill_if_same(pid: int, started: int) -> None:
    """SIGKILL pid if it is still the process that started at ``started``."""
    if started and _start_time(pid) == started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stat_fields(pid: int) -> list[str]:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rpartition(")")[2].split()


def _start_time(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else 0


def _rss_kib(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[21]) * _PAGE_KIB if fields else 0


def _cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0
