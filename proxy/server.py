"""The proxy process: one listener, one core, one upstream pool.

``Proxy`` wires the parts together and owns what is process-wide: the
listening socket, the core's tick (the single event-loop timer that drives
every deadline), the canned shed responses, and draining. The admin API
and the CLI act on a running Proxy only through its methods here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from proxy import _core
from proxy.client import ClientProtocol
from proxy.codec import make_engine
from proxy.config import (
    FIELDS,
    LIVE_KEYS,
    Settings,
    format_address,
    live_fields,
    load,
)
from proxy.errors import ConfigError, ListenError
from proxy.logs import access_logger
from proxy.responses import raw_shed, retry_after
from proxy.upstream import UpstreamPool

log = logging.getLogger("maitred.error")

# The core's deadline resolution: every deadline fires within this much.
TICK = 0.01
# How often the Retry-After estimate is refreshed.
_RETRY_AFTER_EVERY = 1.0
# Live settings whose config name differs from the core's.
_CORE_NAMES = {
    "connect_timeout": "connect",
    "response_timeout": "response",
    "read_timeout": "read",
}
_LIVE_FIELDS = {f.key: f for f in live_fields()}
# Live settings the proxy keeps itself (they are not admission limits).
_PROXY_LIMITS = frozenset({"max_body", "max_head", "max_target"})


class Proxy:
    """A running maitred data path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.core = _core.Core(**settings.core_kwargs(), resolution=TICK)
        try:
            self.engine = make_engine(
                settings.listen.http_engine,
                settings.limits.max_head,
                settings.limits.max_target,
            )
        except ValueError as err:
            raise ConfigError("listen.http_engine", str(err)) from None
        self.max_body = settings.limits.max_body
        self.upstream_host = settings.upstream.host_header.encode()
        self.clients: set[ClientProtocol] = set()
        self.draining = False
        self.access = access_logger(settings.log.access_format)
        self.retry_after = 1
        self.connections_shed = b""
        self.pool: UpstreamPool | None = None
        self.server: asyncio.AbstractServer | None = None
        self._tick_handle: asyncio.TimerHandle | None = None
        self._retry_after_at = 0.0
        self._refresh_retry_after()

    @property
    def address(self) -> tuple[str, int]:
        """The address the listener is bound to (the real port, if 0 was given)."""
        return self.server.sockets[0].getsockname()[:2]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        listen = self.settings.listen
        upstream = self.settings.upstream
        self.pool = UpstreamPool(
            self, upstream.host, upstream.port, upstream.max_idle_connections
        )
        host, port = listen.address
        try:
            self.server = await loop.create_server(
                lambda: ClientProtocol(self),
                host,
                port,
                backlog=listen.backlog,
                reuse_address=True,
            )
        except OSError as err:
            raise ListenError("listen.address", host, port, err) from None
        self._tick_handle = loop.call_later(TICK, self._tick)

    # -- the tick -------------------------------------------------------------

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._tick_handle = loop.call_later(TICK, self._tick)
        for timer in self.core.tick():
            try:
                timer.owner.on_deadline(timer.phase)
            except Exception:
                log.exception("deadline handler failed")
        if time.monotonic() >= self._retry_after_at:
            self._refresh_retry_after()

    def _refresh_retry_after(self) -> None:
        bounds, counts, total = self.core.histogram("upstream_duration")
        observed = sum(counts)
        mean = total / observed if observed else 0.0
        limits = self.core.limits()
        seconds = retry_after(
            self.settings.shed.retry_after, limits["queue_timeout"], mean
        )
        if seconds != self.retry_after or not self.connections_shed:
            self.retry_after = seconds
            self.connections_shed = raw_shed("connections", seconds)
        self._retry_after_at = time.monotonic() + _RETRY_AFTER_EVERY

    # -- live changes ---------------------------------------------------------

    def set_limits(self, changes: dict[str, float], who: str) -> None:
        """Apply validated live settings (config names) at once.

        Waiters a raised cap admits go upstream now; lowering a cap cancels
        nothing. One log line per change says who, old and new.
        """
        before = self.limits()
        core_changes = {
            _CORE_NAMES.get(key, key): value
            for key, value in changes.items()
            if key not in _PROXY_LIMITS
        }
        admitted = self.core.set_limits(**core_changes)
        self.max_body = int(changes.get("max_body", self.max_body))
        self.engine.max_head = int(changes.get("max_head", self.engine.max_head))
        self.engine.max_target = int(
            changes.get("max_target", self.engine.max_target)
        )
        for key, value in changes.items():
            if before[key] != value:
                kind = _LIVE_FIELDS[key].kind
                log.info("limit %s: %s -> %s (by %s)", key,
                         kind.format(before[key]), kind.format(value), who)
        for waiter in admitted:
            waiter.owner.admitted()
        self._refresh_retry_after()

    def limits(self) -> dict[str, float]:
        """The live settings in force, by their config names."""
        core = self.core.limits()
        limits = {key: core[_CORE_NAMES.get(key, key)]
                  for key in LIVE_KEYS if key not in _PROXY_LIMITS}
        limits["max_body"] = self.max_body
        limits["max_head"] = self.engine.max_head
        limits["max_target"] = self.engine.max_target
        return limits

    def status(self) -> dict:
        """A JSON-ready snapshot for the admin API and ``maitred status``."""
        stats = self.core.stats()
        histograms = {}
        for name in ("queue_wait", "upstream_duration"):
            bounds, counts, total = self.core.histogram(name)
            histograms[name] = {"bounds": list(bounds), "counts": counts,
                                "sum": total}
        return {
            "inflight": stats["inflight"],
            "queued": stats["queued"],
            "connections": stats["connections"],
            "draining": self.draining,
            "limits": self.limits(),
            "counters": {
                "admitted": stats["admitted"],
                "enqueued": stats["enqueued"],
                "requests": stats["requests"],
                "shed": stats["shed"],
            },
            "histograms": histograms,
            "engine": self.engine.name,
        }

    def reload(self, settings: Settings) -> None:
        """Apply a re-read config: live settings now, the rest at restart.

        ``self.settings`` stays the config the process started with: its
        static settings are the ones in force, so a changed one is
        reported at every reload until a restart. The live settings in
        force are those of ``limits()``, not of ``self.settings``.
        """
        current = self.limits()
        fresh = {key: getattr(getattr(settings, f.section), key)
                 for f in live_fields() for key in [f.key]}
        changed = {k: v for k, v in fresh.items() if current[k] != v}
        if changed:
            self.set_limits(changed, who="SIGHUP reload")
        static = [
            f.name for f in FIELDS
            if not f.live
            and getattr(getattr(settings, f.section), f.key)
            != getattr(getattr(self.settings, f.section), f.key)
        ]
        if static:
            log.warning("reload: %s change only at restart", ", ".join(static))

    # -- draining -------------------------------------------------------------

    async def drain(self, timeout: float, stop_listening: bool = True) -> bool:
        """Stop taking new work, let in-flight work finish; True if all did.

        For a shutdown (SIGTERM) the listener closes, and idle keep-alive
        connections with it. From the admin API (``stop_listening`` False)
        the listener stays open and every new request gets a 503 saying
        ``draining``, so whoever sends traffic sees why.
        """
        if not self.draining:
            log.info("draining: %d in flight, %d queued",
                     self.core.inflight, self.core.queued)
        self.draining = True
        self.core.drain()
        if stop_listening:
            if self.server is not None:
                self.server.close()
            for client in list(self.clients):
                client.close_if_idle()
        deadline = time.monotonic() + timeout
        while self.core.inflight or self.core.queued:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(TICK)
        return True

    async def close(self) -> None:
        """Cut whatever is left and stop."""
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            if client.transport is not None:
                client.transport.abort()
        if self.pool is not None:
            self.pool.close()
        # Let the transports' connection_lost callbacks run.
        for _ in range(3):
            await asyncio.sleep(0)
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None


def serve(settings: Settings) -> None:
    """Run a proxy until SIGTERM/SIGINT; drain, then return (exit 0)."""
    import uvloop

    from proxy.logs import configure

    configure(settings.log)
    uvloop.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from proxy.admin import AdminServer

    loop = asyncio.get_running_loop()
    proxy = Proxy(settings)
    await proxy.start()
    admin = AdminServer(proxy, settings.admin_token)
    await admin.start(*settings.admin.address)
    for warning in settings.warnings:
        log.warning("config: %s", warning)
    upstream = settings.upstream
    log.info(
        "maitred listening on %s, upstream %s, admin %s, "
        "max_concurrency %d, max_queue %d, engine %s",
        format_address(*proxy.address),
        format_address(upstream.host, upstream.port),
        format_address(*admin.address), settings.limits.max_concurrency,
        settings.limits.max_queue, proxy.engine.name,
    )
    stop = asyncio.Event()

    def on_stop_signal(name: str) -> None:
        if stop.is_set():
            log.warning("second %s: exiting at once", name)
            os._exit(1)
        log.info("%s: draining for up to %ss", name,
                 proxy.limits()["shutdown"])
        stop.set()

    def on_reload_signal() -> None:
        try:
            fresh = load(settings.source)
        except ConfigError as err:
            log.error("SIGHUP: config not reloaded, keeping the old one: %s", err)
            return
        proxy.reload(fresh)
        log.info("SIGHUP: config reloaded from %s", settings.source or "environment")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    await stop.wait()
    finished = await proxy.drain(proxy.limits()["shutdown"])
    if not finished:
        log.warning("shutdown timeout: cutting %d in-flight requests",
                    proxy.core.inflight)
    admin.close()
    await proxy.close()
    log.info("maitred stopped")

