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
from proxy.client import HEAD, ClientProtocol
from proxy.codec import make_engine
from proxy.config import Settings
from proxy.responses import raw_shed, retry_after
from proxy.upstream import UpstreamPool

log = logging.getLogger("maitred.error")

# The core's deadline resolution: every deadline fires within this much.
TICK = 0.01
# How often the Retry-After estimate is refreshed.
_RETRY_AFTER_EVERY = 1.0


class Proxy:
    """A running maitred data path."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.core = _core.Core(**settings.core_kwargs(), resolution=TICK)
        self.engine = make_engine(
            settings.listen.http_engine,
            settings.limits.max_head,
            settings.limits.max_target,
        )
        self.max_body = settings.limits.max_body
        self.upstream_host = settings.upstream.host_header.encode()
        self.clients: set[ClientProtocol] = set()
        self.draining = False
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
        self.server = await loop.create_server(
            lambda: ClientProtocol(self),
            host,
            port,
            backlog=listen.backlog,
            reuse_address=True,
        )
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
        if loop.time() >= self._retry_after_at:
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

    def set_limits(self, **limits: float) -> None:
        """Change limits and timeouts at once; waiters the new cap admits go."""
        max_body = limits.pop("max_body", None)
        for waiter in self.core.set_limits(**limits):
            waiter.owner.admitted()
        if max_body is not None:
            self.max_body = int(max_body)
        self._refresh_retry_after()

    def limits(self) -> dict[str, float]:
        limits = self.core.limits()
        limits["max_body"] = self.max_body
        return limits

    # -- draining -------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Stop taking work, let in-flight work finish; True if all did."""
        if not self.draining:
            log.info("draining: %d in flight, %d queued",
                     self.core.inflight, self.core.queued)
        self.draining = True
        self.core.drain()
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            if client.phase == HEAD and not client.codec.buffered:
                client._close()
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
    loop = asyncio.get_running_loop()
    proxy = Proxy(settings)
    await proxy.start()
    host, port = proxy.address
    upstream = settings.upstream
    log.info(
        "maitred listening on %s:%d, upstream %s:%d, max_concurrency %d, "
        "max_queue %d, engine %s",
        host, port, upstream.host, upstream.port,
        settings.limits.max_concurrency, settings.limits.max_queue,
        proxy.engine.name,
    )
    stop = asyncio.Event()

    def on_stop_signal(name: str) -> None:
        if stop.is_set():
            log.warning("second %s: exiting at once", name)
            os._exit(1)
        log.info("%s: draining for up to %ss", name, settings.timeouts.shutdown)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal, sig.name)
    await stop.wait()
    finished = await proxy.drain(settings.timeouts.shutdown)
    if not finished:
        log.warning("shutdown timeout: cutting %d in-flight requests",
                    proxy.core.inflight)
    await proxy.close()
    log.info("maitred stopped")
