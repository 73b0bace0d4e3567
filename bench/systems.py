"""The systems under test, how they are found, configured and started.

A system is what the load tool talks to: the bare backend (no proxy), or
HAProxy, nginx or maitred in front of it. Each peer is found on PATH (or
given by an option); one that is missing stays in the results as missing,
with the reason and the command that installs it -- it is never dropped.

Equivalent limits
-----------------
One ``Limits`` value configures every proxy the same way:

============  ===============================  ==========================
              concurrency / queue / wait       when the queue is full
============  ===============================  ==========================
maitred       max_concurrency, max_queue,      503 at once
              queue_timeout
HAProxy       server ``maxconn``, ``maxqueue``  503 at once (an
              and ``timeout queue``             ``http-request deny`` on
                                               ``queue()``: a lone
                                               server's ``maxqueue``
                                               alone would overflow into
                                               the unbounded backend
                                               queue)
nginx         ``limit_conn`` on one shared key  no queue: 503 at once
============  ===============================  ==========================

Every proxy runs one worker on one core (HAProxy ``nbthread 1``, nginx
``worker_processes 1``), binds 127.0.0.1 on a free port, keeps upstream
connections alive and runs in the foreground as the bench's child.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import wire
from .procs import Child, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

SYSTEM_NAMES = ("backend", "haproxy", "nginx", "maitred-h11", "maitred-compiled")

INSTALL_HINTS = {
    "haproxy": "apt-get install -y haproxy",
    "nginx": "apt-get install -y nginx",
    "wrk": "apt-get install -y wrk",
    "maitred": "pip install . (from the repository root)",
}


@dataclass
class Limits:
    """Admission limits, the same for every proxy; None means unlimited."""

    concurrency: int | None = None
    max_queue: int = 0
    queue_timeout_ms: float = 150.0
    max_connections: int = 10000
    client_header_s: float = 10.0
    idle_s: float = 120.0


@dataclass
class Peer:
    """One system of the comparison and whether it can run here."""

    name: str
    kind: str  # backend, haproxy, nginx or maitred
    command: list[str] = field(default_factory=list)
    engine: str | None = None
    available: bool = True
    reason: str | None = None
    version: str | None = None

    def describe(self) -> dict:
        # Programs by name only: results are shared, this machine's paths not.
        command = self.command and [
            os.path.basename(self.command[0]), *self.command[1:]
        ]
        return {
            "name": self.name, "kind": self.kind, "available": self.available,
            "reason": self.reason, "version": self.version,
            "engine": self.engine, "command": shlex.join(command or []) or None,
        }


def find_peers(names: list[str], tools: dict[str, str | None]) -> list[Peer]:
    """The named systems, each found or marked missing with the reason."""
    unknown = sorted(set(names) - set(SYSTEM_NAMES))
    if unknown:
        raise ValueError(f"unknown systems {unknown}; known: {SYSTEM_NAMES}")
    maitred = None
    if any(name.startswith("maitred") for name in names):
        maitred = maitred_command(tools.get("maitred"))
    return [_find_peer(name, tools, maitred) for name in names]


def _find_peer(name: str, tools: dict, maitred: list[str] | None) -> Peer:
    if name == "backend":
        return Peer(name, "backend", version=python_version())
    if name.startswith("maitred"):
        engine = name.partition("-")[2]
        if maitred is None:
            return _missing(name, "maitred", engine, "maitred not found on PATH "
                            "and `python -m proxy --help` failed")
        version = tool_version(maitred, "--version") or _maitred_metadata()
        return Peer(name, "maitred", maitred, engine, version=version)
    path = find_tool(name, tools.get(name))
    if path is None:
        return _missing(name, name, None, f"{name} not found")
    return Peer(name, name, [path], version=tool_version([path], "-v"))


def _maitred_metadata() -> str | None:
    try:
        return "maitred " + importlib.metadata.version("maitred")
    except importlib.metadata.PackageNotFoundError:
        return None


def _missing(name: str, kind: str, engine: str | None, why: str) -> Peer:
    reason = f"{why} (install: {INSTALL_HINTS[kind]})"
    return Peer(name, kind, engine=engine, available=False, reason=reason)


def find_tool(name: str, override: str | None) -> str | None:
    """The path of a peer binary: the override if it exists, else PATH."""
    if override:
        return override if Path(override).is_file() else None
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def maitred_command(override: str | None) -> list[str] | None:
    """How to run maitred: an explicit command, PATH, or ``python -m proxy``."""
    if override:
        return shlex.split(override)
    path = shutil.which("maitred")
    if path:
        return [path]
    module = [sys.executable, "-m", "proxy"]
    try:
        probe = subprocess.run([*module, "--help"], cwd=REPO_ROOT, timeout=30,
                               capture_output=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return module if probe.returncode == 0 else None


def tool_version(command: list[str], flag: str) -> str | None:
    """The first line a tool prints about its version, or None."""
    try:
        done = subprocess.run([*command, flag], cwd=REPO_ROOT, timeout=30,
                              capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def python_version() -> str:
    return "bench backend on Python " + sys.version.split()[0]


@dataclass
class Running:
    """A started system: its port and the process whose cost is its cost."""

    peer: Peer
    port: int
    measured: Child
    queue_reader: Callable[[], Awaitable[int | None]] | None = None

    async def queued(self) -> int | None:
        if self.queue_reader is None:
            return None
        return await self.queue_reader()


def start_backend(workdir: Path, slots: int, service_ms: float,
                  cpu: int | None) -> tuple[Child, int]:
    """Start the controlled-capacity backend; returns it and its port."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.backend", "--port", str(port),
           "--slots", str(slots), "--service-ms", str(service_ms)]
    child = Child.listening("backend", cmd, workdir / f"backend-{port}.log",
                            cpu, port, cwd=REPO_ROOT)
    return child, port


def start_system(peer: Peer, upstream: int, backend: Child, limits: Limits,
                 workdir: Path, cpu: int | None) -> tuple[Running, Child | None]:
    """Start ``peer`` in front of 127.0.0.1:upstream.

    Returns the running system and the child to stop (None for the bare
    backend, which the caller owns).
    """
    if peer.kind == "backend":
        return Running(peer, upstream, backend), None
    port = free_port()
    starters = {"haproxy": _haproxy, "nginx": _nginx, "maitred": _maitred}
    cmd, reader = starters[peer.kind](peer, port, upstream, limits, workdir)
    child = Child.listening(peer.name, cmd,
                            workdir / f"{peer.name}-{port}.log", cpu, port,
                            cwd=REPO_ROOT)
    return Running(peer, port, child, reader), child


def _fd_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _haproxy(peer, port, upstream, limits, workdir):
    sock = workdir / f"haproxy-{port}.sock"
    path = workdir / f"haproxy-{port}.cfg"
    path.write_text(haproxy_config(port, upstream, limits, sock))
    return [*peer.command, "-db", "-f", str(path)], _haproxy_queue(sock)


def haproxy_config(port: int, upstream: int, limits: Limits, sock: Path) -> str:
    server = f"server app 127.0.0.1:{upstream}"
    rules = ""
    if limits.concurrency is not None:
        server += f" maxconn {limits.concurrency}"
        if limits.max_queue > 0:
            server += f" maxqueue {limits.max_queue}"
            full = f"queue(app) ge {limits.max_queue}"
        else:
            full = f"srv_conn(app/app) ge {limits.concurrency}"
        rules = f"    http-request deny deny_status 503 if {{ {full} }}\n"
    maxconn = min(limits.max_connections + 100, haproxy_maxconn_cap())
    return f"""\
global
    nbthread 1
    maxconn {maxconn}
    stats socket {sock} mode 600 level user
defaults
    mode http
    timeout connect 2s
    timeout client {_ms(limits.idle_s)}
    timeout server 30s
    timeout queue {round(limits.queue_timeout_ms)}ms
    timeout http-request {_ms(limits.client_header_s)}
    timeout http-keep-alive {_ms(limits.idle_s)}
frontend bench
    bind 127.0.0.1:{port}
    maxconn {min(limits.max_connections, maxconn)}
    default_backend app
backend app
{rules}    {server}
"""


def haproxy_maxconn_cap() -> int:
    """HAProxy refuses to start unless the file-descriptor limit covers two
    descriptors per connection (client and server side)."""
    return (_fd_limit() - 64) // 2


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _haproxy_queue(sock: Path):
    async def read() -> int | None:
        reader, writer = await asyncio.open_unix_connection(str(sock))
        try:
            writer.write(b"show stat\n")
            text = (await asyncio.wait_for(reader.read(), 1.0)).decode()
        finally:
            writer.close()
        lines = text.splitlines()
        if not lines or not lines[0].startswith("# "):
            return None
        columns = lines[0][2:].split(",")
        qcur = columns.index("qcur")
        return sum(int(row.split(",")[qcur] or 0) for row in lines[1:]
                   if row.startswith("app,"))
    return read


def _nginx(peer, port, upstream, limits, workdir):
    prefix = workdir / f"nginx-{port}"
    (prefix / "temp").mkdir(parents=True)
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, upstream, limits))
    cmd = [*peer.command, "-p", str(prefix), "-c", str(conf),
           "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    return cmd, _no_queue


async def _no_queue() -> int:
    return 0  # nginx's limit_conn has no queue


def nginx_config(prefix: Path, port: int, upstream: int | None,
                 limits: Limits) -> str:
    """One worker; a proxy to ``upstream``, or an origin answering 200."""
    connections = min(2 * limits.max_connections + 100, _fd_limit() - 100)
    if upstream is None:
        location = 'return 200 "ok\\n";'
        upstream_block = ""
    else:
        location = _nginx_proxy_location(limits)
        upstream_block = (f"    upstream app {{ server 127.0.0.1:{upstream}; "
                          "keepalive 128; }\n")
    temp = prefix / "temp"
    return f"""\
worker_processes 1;
worker_rlimit_nofile {_fd_limit()};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    keepalive_timeout {limits.idle_s:g}s;
    keepalive_requests 10000000;
    client_header_timeout {limits.client_header_s:g}s;
    limit_conn_zone $server_name zone=bench:1m;
{upstream_block}    server {{
        listen 127.0.0.1:{port} backlog=4096;
        server_name bench;
        location / {{ {location} }}
    }}
}}
"""


def _nginx_proxy_location(limits: Limits) -> str:
    parts = [
        "proxy_pass http://app;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_connect_timeout 2s;",
        "proxy_read_timeout 30s;",
    ]
    if limits.concurrency is not None:
        parts.append(f"limit_conn bench {limits.concurrency};")
    return " ".join(parts)


def start_nginx_origin(nginx: str, workdir: Path,
                       cpu: int | None) -> tuple[Child, int]:
    """An nginx that answers 200 at once: the fast origin for ``overhead``."""
    port = free_port()
    prefix = workdir / f"origin-{port}"
    (prefix / "temp").mkdir(parents=True)
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, None, Limits()))
    cmd = [nginx, "-p", str(prefix), "-c", str(conf),
           "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    child = Child.listening("nginx origin", cmd, prefix / "stdout.log", cpu,
                            port)
    return child, port


def _maitred(peer, port, upstream, limits, workdir):
    admin = free_port()
    path = workdir / f"{peer.name}-{port}.toml"
    path.write_text(maitred_config(port, admin, upstream, limits, peer.engine))
    reader = _maitred_queue(admin)
    return [*peer.command, "run", "--config", str(path)], reader


def maitred_config(port: int, admin: int, upstream: int, limits: Limits,
                   engine: str | None) -> str:
    concurrency = limits.concurrency or 4096
    queue = limits.max_queue if limits.concurrency else 4096
    return f"""\
[listen]
address = "127.0.0.1:{port}"
max_connections = {limits.max_connections}
http_engine = "{engine or "compiled"}"

[upstream]
url = "http://127.0.0.1:{upstream}"
connect_timeout = "2s"
response_timeout = "30s"
read_timeout = "30s"
max_idle_connections = {max(128, limits.concurrency or 0)}

[limits]
max_concurrency = {concurrency}
max_queue = {queue}
queue_timeout = "{limits.queue_timeout_ms:g}ms"
max_body = "1MiB"

[timeouts]
client_header = "{limits.client_header_s:g}s"
client_body = "30s"
idle = "{limits.idle_s:g}s"
shutdown = "2s"

[admin]
address = "127.0.0.1:{admin}"
"""


def _maitred_queue(admin: int):
    async def read() -> int | None:
        status = await wire.get_json(admin, "/status", timeout=0.5)
        return int(status["queued"])
    return read
