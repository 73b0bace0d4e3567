"""The client connection: one asyncio Protocol per accepted socket.

Theory of operation
-------------------
A client connection carries one request at a time through these phases:

    HEAD ──► QUEUED ──► CONNECTING ──► FORWARDING ──► HEAD (keep-alive)
      │         │            │              │
      └─────────┴────────────┴──────────────┴──► CLOSED

HEAD        reading a request head. The connection's Timer runs the
            whole-head deadline (client_header) from the first byte, or the
            keep-alive idle deadline before it.
QUEUED      the core queued the request's Waiter; the core's wheel owns the
            deadline. The body stays unread in the codec (bounded: reading
            pauses when too much piles up), so a shed costs no upload.
CONNECTING  a token is held; an upstream connection is taken from the pool
            or being opened (connect deadline).
FORWARDING  head sent upstream; the body streams with back-pressure both
            ways. The deadline always belongs to the side the exchange waits
            on (``_arm_exchange``): client_body while the client uploads or
            while it does not read the response, read_timeout while the
            backend does not take the body or once its response started,
            response_timeout from the end of the request to the first byte.
            So a slow client is never blamed on the backend, nor the other
            way round.

Everything is driven by callbacks: data_received, the upstream's events,
and ``on_deadline`` from the core's tick. No task, no per-request timer.
Cython compiles this module with the types in client.pxd: the methods the
event loop, the core and the upstream call stay Python methods; the rest
are C methods, and the core is called in C.

Invariant: the token is released exactly once, in ``_release``, on every
path: response relayed, upstream error or timeout, client gone, bad body.
``_release`` checks the Waiter's state, so a second call is harmless, and
the core raises if anything else ever releases twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy import _core
from proxy._core import (
    ADMITTED,
    HOLDING,
    OUTCOME_BAD_REQUEST,
    OUTCOME_CLIENT_ABORT_INFLIGHT,
    OUTCOME_CLIENT_ABORT_QUEUED,
    OUTCOME_PROXIED,
    OUTCOME_SHED,
    OUTCOME_UPSTREAM_ERROR,
    OUTCOME_UPSTREAM_TIMEOUT,
    OUTCOME_UPSTREAM_TRUNCATED,
    PHASE_CLIENT_BODY,
    PHASE_CLIENT_HEADER,
    PHASE_CONNECT,
    PHASE_IDLE,
    PHASE_QUEUE,
    PHASE_READ,
    PHASE_RESPONSE,
    QUEUED,
    WAITING,
    Timer,
    Waiter,
)
from proxy._heads import IDEMPOTENT, RequestHead, ResponseHead
from proxy.codec import END, NEED_DATA, PAUSED
from proxy.errors import (
    HttpError,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamError,
    UpstreamTimeout,
)
from proxy.responses import REASONS, SHED_BODY, error_body, shed_headers
from proxy.target import resolve

if TYPE_CHECKING:
    from proxy.server import Proxy
    from proxy.upstream import UpstreamProtocol

log = logging.getLogger("maitred.error")

HEAD, QUEUED_PHASE, CONNECTING, FORWARDING, CLOSED = range(5)

# Read pauses, by reason; reading resumes when none is left.
_PAUSE_BUFFER = 1  # too much unread input piled up in the codec
_PAUSE_UPLOAD = 2  # the upstream is not taking the body fast enough

# Unread bytes a queued or pipelining client may leave in the codec.
_MAX_BUFFERED = 64 * 1024

_UPSTREAM_TIMEOUT_PHASES = frozenset({PHASE_CONNECT, PHASE_RESPONSE, PHASE_READ})


class ClientProtocol:
    """One client connection (an asyncio protocol)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.core = proxy.core
        self.pool = proxy.pool
        self.transport = None
        self.codec = None
        self.timer = Timer(self)
        self.waiter = Waiter(self)
        self.phase = HEAD
        self.counted = False
        self.peer = b""
        self.paused = 0
        self.writing_paused = False
        self.request = None
        self.request_done = False
        self.body_bytes = 0
        self.response_started = False
        self.upstream = None
        self.reused = False
        self.retried = False
        self.connecting = None
        self.keep_alive = True
        self.status = 0
        self.started = 0.0
        self.target = b""
        self.host = None

    # -- asyncio callbacks --------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if not self.core.open_connection():
            self.phase = CLOSED
            transport.write(self.proxy.connections_shed)
            transport.close()
            return
        self.counted = True
        self.proxy.clients.add(self)
        self.codec = self.proxy.engine.client_codec()
        peer = transport.get_extra_info("peername")
        self.peer = peer[0].encode() if peer else b""
        self.core.arm(self.timer, PHASE_CLIENT_HEADER)

    def data_received(self, data: bytes) -> None:
        if self.phase == CLOSED:
            return
        if self.phase == HEAD and self.timer.phase == PHASE_IDLE:
            # The whole-head deadline starts with the head's first byte.
            self.core.arm(self.timer, PHASE_CLIENT_HEADER)
        try:
            self.codec.receive(data)
        except HttpError as err:
            self._reject(err)
            return
        self._pump()

    def eof_received(self) -> bool:
        request = self.request
        complete = self.request_done or (
            request is not None and not request.has_body
        )
        if self.phase in (HEAD, QUEUED_PHASE) or not complete:
            # Gone before its request was complete, or while it waited:
            # nobody is left to answer. connection_lost does the accounting.
            return False
        # A half-close after a complete request (a request without a body is
        # complete with its head, even before the codec yields its end):
        # answer, then close.
        self.keep_alive = False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = CLOSED
        self.core.disarm(self.timer)
        if self.waiter.state == WAITING:
            self.core.cancel(self.waiter)
            self._access(OUTCOME_CLIENT_ABORT_QUEUED)
        elif self.waiter.state == HOLDING:
            self._drop_upstream()
            self._release(OUTCOME_CLIENT_ABORT_INFLIGHT)
        if self.counted:
            self.counted = False
            self.core.close_connection()
            self.proxy.clients.discard(self)

    def pause_writing(self) -> None:
        # The client reads the response slower than the backend sends it:
        # stop reading the backend, and wait on the client's budget.
        self.writing_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()
        if self.phase == FORWARDING:
            self._arm_exchange()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()
        if self.phase == FORWARDING:
            self._arm_exchange()

    def close_if_idle(self) -> None:
        """Close the connection if it waits between requests (a drain)."""
        if self.phase == HEAD and not self.codec.buffered:
            self._close()

    # -- reading requests ---------------------------------------------------

    def _pump(self) -> None:
        """Turn buffered client bytes into work, as far as the phase allows."""
        codec = self.codec
        while self.phase == HEAD or self.phase == FORWARDING:
            try:
                event = codec.next_event()
            except HttpError as err:
                self._reject(err)
                return
            if type(event) is bytes:
                self._request_body(event)
            elif event is END:
                self._request_end()
            elif event is NEED_DATA:
                # What piled up while queued or connecting is taken.
                self._resume(_PAUSE_BUFFER)
                return
            elif event is PAUSED:
                break
            else:
                self._request_head(event)
        if self.phase != CLOSED and codec.buffered > _MAX_BUFFERED:
            self._pause(_PAUSE_BUFFER)

    def _request_head(self, head: RequestHead) -> None:
        self.request = head
        self.request_done = False
        self.response_started = False
        self.body_bytes = 0
        self.retried = False
        self.keep_alive = head.keep_alive and self.keep_alive
        self.status = 0
        if self.proxy.access is not None:
            self.started = self.core.now()
        limit = self.proxy.max_body
        if head.content_length is not None and head.content_length > limit:
            self._reject(PayloadTooLarge(f"{head.content_length} bytes"))
            return
        try:
            self.target, self.host = resolve(
                head.method, head.target, head.host
            )
        except HttpError as err:
            self._reject(err)
            return
        self.core.disarm(self.timer)
        result = self.core.acquire(self.waiter)
        if result == ADMITTED:
            self._start_upstream()
        elif result == QUEUED:
            self.phase = QUEUED_PHASE
        else:
            self._shed(_core.SHED_REASONS[result])

    def _request_body(self, data: bytes) -> None:
        self.body_bytes += len(data)
        if self.body_bytes > self.proxy.max_body:
            self._reject(PayloadTooLarge(f"over {self.proxy.max_body} bytes"))
            return
        up = self.upstream
        up.transport.write(up.codec.body(data))
        if self.phase == FORWARDING:
            self._arm_exchange()

    def _request_end(self) -> None:
        self.request_done = True
        up = self.upstream
        if up is not None:
            data = up.codec.end()
            if data:
                up.transport.write(data)
        if self.phase == FORWARDING:
            self._arm_exchange()
        elif self.phase == HEAD:
            self._next_request()

    # -- admission ----------------------------------------------------------

    def admitted(self) -> None:
        """The core handed this queued request a token."""
        if self.phase != QUEUED_PHASE:
            self._release(OUTCOME_CLIENT_ABORT_INFLIGHT)
            return
        self._start_upstream()
        self._resume(_PAUSE_BUFFER)
        if self.phase == FORWARDING:
            self._pump()

    def _shed(self, reason: str) -> None:
        """Answer 503 for a request that got no token."""
        head = self.request
        close = (
            head.has_body
            or not self.keep_alive
            or reason in ("draining", "connections")
            or self.proxy.draining
        )
        if not close:
            # Consume the (empty) body so the connection can go on.
            close = self.codec.next_event() is not END
        headers = shed_headers(reason, self.proxy.retry_after, close)
        self.transport.write(
            self.codec.canned(503, REASONS[503], headers, SHED_BODY[reason])
        )
        self.status = 503
        self._access(OUTCOME_SHED)
        if close:
            self._close()
        else:
            self._next_request()

    # -- the upstream exchange ----------------------------------------------

    def _start_upstream(self) -> None:
        self.phase = CONNECTING
        # A request that could not be retried takes only a pooled connection
        # seen alive just now: it must never be written into a dead one.
        up = None if self.retried else self.pool.take(
            check=not self._retryable()
        )
        if up is not None:
            self._attach(up, reused=True)
            return
        self.core.arm(self.timer, PHASE_CONNECT)
        self.connecting = self.pool.connect(self)

    def upstream_connected(self, up: UpstreamProtocol) -> None:
        """The pool opened the connection this request asked for."""
        self.connecting = None
        if self.phase != CONNECTING:
            self.pool.put(up)
            return
        self._attach(up, reused=False)
        self._pump()

    def _attach(self, up: UpstreamProtocol, reused: bool) -> None:
        """An upstream connection is ours: send the head; the body follows."""
        self.phase = FORWARDING
        self.upstream = up
        self.reused = reused
        up.attach(self)
        if self.writing_paused:
            # The client has not taken the last response yet.
            up.pause_reading()
        data = up.codec.forward_request(
            self.request, self.target, self.host, self.peer,
            self.proxy.upstream_host,
        )
        if self.request_done:
            # A retry: the request (without a body) was read already.
            data += up.codec.end()
        up.transport.write(data)
        self._arm_exchange()

    def upstream_data(self, up: UpstreamProtocol) -> None:
        """Relay what the upstream sent: head, body pieces, end."""
        codec = up.codec
        out = []
        try:
            while up.client is self:
                event = codec.next_event()
                if type(event) is bytes:
                    out.append(self.codec.body(event))
                    continue
                if event is NEED_DATA or event is PAUSED:
                    break
                if event is END:
                    out.append(self.codec.end())
                    self.transport.writelines(out)
                    out = None
                    self._response_end(up)
                    return
                self._response_head(event, out)
        except UpstreamError as err:
            if out:
                self.transport.writelines(out)
            self.upstream_failed(err, OUTCOME_UPSTREAM_ERROR)
            return
        if out:
            self.transport.writelines(out)
            if self.phase == FORWARDING:
                self._arm_exchange()

    def _response_head(self, head: ResponseHead, out: list) -> None:
        if head.status < 200:
            if head.status == 100 and self.request.expect_continue:
                out.append(self.codec.forward_response(head, False))
            return
        self.response_started = True
        self.status = head.status
        if head.status == 204:
            # A 204 has no content to describe (RFC 9110 8.6).
            head.content_length = None
        if not self.request_done:
            # An early response: the rest of the body will not be read, so
            # the connection closes after it; say so.
            self.keep_alive = False
        out.append(self.codec.forward_response(
            head, not self.keep_alive or self.proxy.draining
        ))

    def _response_end(self, up: UpstreamProtocol) -> None:
        self.upstream = None
        up.detach()
        self._resume(_PAUSE_UPLOAD)
        if up.codec.reusable:
            up.codec.next_cycle()
            self.pool.put(up)
        else:
            up.close()
        self._release(OUTCOME_PROXIED)
        self.phase = HEAD
        if self.request_done:
            self._next_request()
        else:
            # The backend answered before the body ended (early response):
            # the rest of the body is not worth reading.
            self._close()

    def upstream_failed(self, err: Exception, outcome: int) -> None:
        """The upstream side broke before the exchange ended cleanly."""
        if self.phase not in (CONNECTING, FORWARDING):
            return
        if self._can_retry(err):
            self._drop_upstream()
            self.retried = True
            self._start_upstream()
            return
        self._drop_upstream()
        if self.response_started:
            if outcome == OUTCOME_UPSTREAM_ERROR:
                outcome = OUTCOME_UPSTREAM_TRUNCATED
            self.transport.abort()
            self.phase = CLOSED
        else:
            status = 504 if isinstance(err, UpstreamTimeout) else 502
            self._answer_error(status, str(err))
        self._release(outcome)

    def _can_retry(self, err: Exception) -> bool:
        # A reused pooled connection that died before any response byte:
        # an idempotent request without a body goes once more, on a fresh one.
        up = self.upstream
        return (
            up is not None
            and self.reused
            and not self.retried
            and not up.received
            and not isinstance(err, UpstreamTimeout)
            and self._retryable()
            and self.request_done
        )

    def _retryable(self) -> bool:
        # Sending it twice does no harm, and nothing of it is lost.
        request = self.request
        return request.method in IDEMPOTENT and not request.has_body

    def _drop_upstream(self) -> None:
        """Abandon the upstream side: close its connection, stop connecting."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            up.detach()
            up.abort()
            self._resume(_PAUSE_UPLOAD)
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None

    def _release(self, outcome: int) -> None:
        """Give the token back, exactly once, and hand it to the next waiter."""
        if self.waiter.state != HOLDING:
            return
        waiter = self.core.release(self.waiter, outcome)
        self._access(outcome)
        if waiter is not None:
            waiter.owner.admitted()

    def _access(self, outcome: int) -> None:
        """One access-log line for the request that just ended, if enabled."""
        access = self.proxy.access
        if access is not None and self.request is not None:
            elapsed = self.core.now() - self.started
            access(self.peer, self.request, self.status,
                   _core.OUTCOMES[outcome], elapsed)

    # -- deadlines ----------------------------------------------------------

    def _arm_exchange(self) -> None:
        """Arm the deadline of the side the upstream exchange waits on."""
        if self.writing_paused:
            # The client does not take the response as fast as it comes.
            phase = PHASE_CLIENT_BODY
        elif self.paused & _PAUSE_UPLOAD or self.response_started:
            # The backend does not take the body, or its response is
            # under way: its between-bytes budget.
            phase = PHASE_READ
        elif not self.request_done:
            phase = PHASE_CLIENT_BODY
        else:
            phase = PHASE_RESPONSE
        self.core.arm(self.timer, phase)

    def on_deadline(self, phase: int) -> None:
        """The core's tick says this connection's deadline passed."""
        if self.phase == CLOSED:
            return
        if phase == PHASE_QUEUE:
            self._shed("queue_timeout")
        elif phase in _UPSTREAM_TIMEOUT_PHASES:
            name = _core.PHASES[phase]
            if phase == PHASE_READ and not self.response_started:
                name = "request body write"
            self.upstream_failed(
                UpstreamTimeout(f"upstream {name} timeout"),
                OUTCOME_UPSTREAM_TIMEOUT,
            )
        elif phase == PHASE_CLIENT_BODY and self.writing_paused:
            self._client_stalled()
        elif phase == PHASE_CLIENT_BODY:
            self._reject(RequestTimeout("request body stalled"))
        elif phase == PHASE_CLIENT_HEADER and self.codec.buffered:
            self._reject(RequestTimeout("request head not complete in time"))
        else:
            self._close()

    def _client_stalled(self) -> None:
        """The client stopped reading its response: cut the exchange."""
        self._drop_upstream()
        self.transport.abort()
        self.phase = CLOSED
        self.core.disarm(self.timer)
        self._release(OUTCOME_CLIENT_ABORT_INFLIGHT)

    # -- endings ------------------------------------------------------------

    def _next_request(self) -> None:
        """Start the next keep-alive cycle, or close."""
        if not self.keep_alive or self.proxy.draining or not self.codec.next_cycle():
            self._close()
            return
        self.phase = HEAD
        self.request = None
        self.response_started = False
        self.core.arm(
            self.timer,
            PHASE_CLIENT_HEADER if self.codec.buffered else PHASE_IDLE,
        )
        self._resume(_PAUSE_BUFFER)
        if self.codec.buffered:
            # Pipelined requests: go on once this callback chain unwinds.
            asyncio.get_running_loop().call_soon(self._pump)

    def _reject(self, err: HttpError) -> None:
        """A bad request: answer with its status (if we still can), close."""
        self.status = err.status
        if self.waiter.state == HOLDING:
            self._drop_upstream()
            self._release(OUTCOME_BAD_REQUEST)
        elif self.waiter.state == WAITING:
            self.core.cancel(self.waiter)
        else:
            self.core.record(OUTCOME_BAD_REQUEST)
            self._access(OUTCOME_BAD_REQUEST)
        if self.response_started:
            self.transport.abort()
            self.phase = CLOSED
            return
        self._answer_error(err.status, str(err))

    def _answer_error(self, status: int, detail: str) -> None:
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Connection", b"close"),
        ]
        body = error_body(status, detail)
        self.status = status
        try:
            data = self.codec.canned(status, REASONS[status], headers, body)
        except Exception:  # the codec's state forbids a response: just close
            log.debug("no %d response possible", status, exc_info=True)
            data = b""
        if data:
            self.transport.write(data)
        self._close()

    def _close(self) -> None:
        if self.phase != CLOSED:
            self.phase = CLOSED
            self.core.disarm(self.timer)
            self.transport.close()

    def _pause(self, reason: int) -> None:
        if not self.paused and self.phase != CLOSED:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused and self.phase != CLOSED:
                self.transport.resume_reading()

    def upload_paused(self, paused: bool) -> None:
        """The upstream's write buffer filled up (True) or drained (False)."""
        if paused:
            self._pause(_PAUSE_UPLOAD)
        else:
            self._resume(_PAUSE_UPLOAD)
        if self.phase == FORWARDING:
            self._arm_exchange()

