"""The admin API: a separate listener for people and Prometheus.

    GET   /limits    the live limits and timeouts (JSON)
    PATCH /limits    change some of them at once (JSON object)
    GET   /status    inflight, queued, connections, limits, counters (JSON)
    GET   /metrics   Prometheus exposition
    GET   /healthz   200 while the process runs
    GET   /readyz    200, or 503 while draining
    POST  /drain     stop taking new work, finish what is in flight

It never shares the data port. It binds loopback unless a token is set
(config refuses otherwise); with a token, every path but the two probes
needs ``Authorization: Bearer <token>``. A PATCH is validated whole before
anything changes: one bad field and nothing does.

Admin traffic is rare, so this is plain asyncio streams and h11, one
request per connection; none of it is on the data path.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11

from proxy import config
from proxy.errors import ConfigError, ListenError
from proxy.metrics import CONTENT_TYPE, exposition, make_registry

if TYPE_CHECKING:
    from proxy.server import Proxy

log = logging.getLogger("maitred.error")

_MAX_BODY = 64 * 1024
_READ_TIMEOUT = 10.0
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class AdminError(Exception):
    """An admin request that gets a 4xx answer with this message."""

    def __init__(self, status: int, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


class AdminServer:
    """Serves the admin API for one Proxy."""

    def __init__(self, proxy: Proxy, token: str | None) -> None:
        self.proxy = proxy
        self.token = token
        self.registry = make_registry(proxy)
        self._server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    async def start(self, host: str, port: int) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as err:
            raise ListenError("admin.address", host, port, err) from None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_BODY)
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                request, body = await _read(conn, reader)
            status, content_type, payload, extra = self._answer(
                request, body, writer
            )
        except (h11.RemoteProtocolError, TimeoutError):
            status, content_type, payload = _json(400, {"error": "bad request"})
            extra = []
        except ConnectionError:
            writer.close()
            return
        except Exception:
            log.exception("admin request failed")
            status, content_type, payload = _json(500, {"error": "internal error"})
            extra = []
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(payload))),
            ("Connection", "close"),
            *extra,
        ]
        if status == 401:
            headers.append(("WWW-Authenticate", 'Bearer realm="maitred"'))
        try:
            reason = HTTPStatus(status).phrase
            writer.write(conn.send(h11.Response(status_code=status,
                                                headers=headers, reason=reason)))
            writer.write(conn.send(h11.Data(data=payload)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    def _answer(self, request: h11.Request, body: bytes, writer) -> tuple:
        path = request.target.decode("latin-1").split("?", 1)[0]
        method = request.method.decode("latin-1")
        try:
            if path not in _OPEN_PATHS:
                self._check_token(request)
            return (*self._route(method, path, body, writer), [])
        except AdminError as err:
            extra = [("Allow", err.allow)] if err.allow else []
            return (*_json(err.status, {"error": str(err)}), extra)

    def _check_token(self, request: h11.Request) -> None:
        if self.token is None:
            return
        for name, value in request.headers:
            if name == b"authorization":
                scheme, _, given = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(
                    given.strip().encode(), self.token.encode()
                ):
                    return
        raise AdminError(401, "a valid bearer token is required")

    def _route(self, method: str, path: str, body: bytes, writer) -> tuple:
        routes = {
            ("GET", "/limits"): lambda: _json(200, self.proxy.limits()),
            ("PATCH", "/limits"): lambda: self._patch_limits(body, writer),
            ("GET", "/status"): lambda: _json(200, self.proxy.status()),
            ("GET", "/metrics"): lambda: (
                200, CONTENT_TYPE, exposition(self.registry)
            ),
            ("GET", "/healthz"): lambda: _json(200, {"status": "alive"}),
            ("GET", "/readyz"): self._readyz,
            ("POST", "/drain"): self._drain,
        }
        handler = routes.get((method, path))
        if handler is not None:
            return handler()
        allowed = sorted(m for m, p in routes if p == path)
        if allowed:
            raise AdminError(405, f"{method} is not allowed on {path}",
                             allow=", ".join(allowed))
        raise AdminError(404, f"no such path: {path}")

    def _patch_limits(self, body: bytes, writer) -> tuple:
        try:
            changes = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError) as err:
            raise AdminError(400, f"body is not JSON: {err}") from None
        if not isinstance(changes, dict) or not changes:
            raise AdminError(400, "expected a JSON object of limits to change")
        try:
            parsed = {key: config.parse_live(key, v) for key, v in changes.items()}
        except ConfigError as err:
            raise AdminError(400, str(err)) from None
        peer = writer.get_extra_info("peername")
        who = f"admin API ({peer[0]})" if peer else "admin API"
        try:
            self.proxy.set_limits(parsed, who=who)
        except ValueError as err:
            raise AdminError(400, str(err)) from None
        return _json(200, self.proxy.limits())

    def _readyz(self) -> tuple:
        if self.proxy.draining:
            return _json(503, {"status": "draining"})
        return _json(200, {"status": "ready"})

    def _drain(self) -> tuple:
        asyncio.get_running_loop().create_task(
            self.proxy.drain(self.proxy.limits()["shutdown"], stop_listening=False)
        )
        return _json(202, {"status": "draining"})


async def _read(conn: h11.Connection, reader: asyncio.StreamReader) -> tuple:
    request = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > _MAX_BODY:
                raise h11.RemoteProtocolError("body too large")
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:
            raise ConnectionError("admin client went away")


def _json(status: int, payload: object) -> tuple[int, str, bytes]:
    data = json.dumps(payload, indent=2, sort_keys=True).encode() + b"\n"
    return status, "application/json", data
