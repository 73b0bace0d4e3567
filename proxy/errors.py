"""maitred's errors: one hierarchy for everything it raises on purpose.

Library code raises these and never prints or exits; the CLI turns them into
messages and exit codes, the protocol edge into responses, each in one place.
"""

from __future__ import annotations


class MaitredError(Exception):
    """Base class of every error maitred raises on purpose."""


class ConfigError(MaitredError):
    """A setting that cannot be used: a bad value, an unknown key, a bad file.

    ``key`` names what is wrong: the setting ("limits.max_concurrency") or
    the environment variable that set it. It is None for errors about the
    file as a whole, whose message starts with the file's path instead.
    ``str(err)`` is always one line, "key: message".
    """

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        if self.key is None:
            return self.message
        return f"{self.key}: {self.message}"


class ListenError(MaitredError):
    """A listener could not bind; names the setting that chose the address."""

    def __init__(self, key: str, host: str, port: int, err: OSError) -> None:
        reason = err.strerror or str(err)
        super().__init__(f"{key}: cannot listen on {host}:{port}: {reason}")
        self.key = key


class HttpError(MaitredError):
    """A request the proxy answers itself; ``status`` is what the client gets.

    The message is short and quotes the bad value; it goes in the response
    body for client errors, so it never carries more than the client sent.
    """

    status = 500


class BadRequest(HttpError):
    """Malformed or ambiguous framing: answered 400, then the connection closes."""

    status = 400


class RequestTimeout(HttpError):
    """The head or the body did not arrive in time."""

    status = 408


class PayloadTooLarge(HttpError):
    """The body is over ``limits.max_body``."""

    status = 413


class UriTooLong(HttpError):
    """The request target is over ``limits.max_target``."""

    status = 414


class HeadersTooLarge(HttpError):
    """The head is over ``limits.max_head``."""

    status = 431


class NotImplementedMethod(HttpError):
    """A method or transfer coding the proxy does not relay (CONNECT, gzip)."""

    status = 501


class VersionNotSupported(HttpError):
    """An HTTP version other than 1.0 and 1.1."""

    status = 505


class UpstreamError(HttpError):
    """The backend refused, reset, or sent a malformed response."""

    status = 502


class UpstreamTimeout(HttpError):
    """The backend did not connect, answer or keep sending in time."""

    status = 504
