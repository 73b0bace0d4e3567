"""Configuration: one schema, the loader built on it, and the typed settings.

Every setting is declared exactly once, as a :class:`Field` in ``FIELDS``:
its section and key, its kind (how it is written and parsed), its default
as written in TOML, its allowed range or choices, a one-line doc, and
whether it may change while the proxy runs. Everything else derives from
that table:

- ``load()`` reads the TOML file, refuses unknown sections and keys (with a
  suggestion), parses each value with its field's kind and checks its range;
- every key can be overridden by ``MAITRED_<SECTION>_<KEY>`` in the
  environment, parsed from text with the same checks;
- ``live_fields()``, ``LIVE_KEYS`` and ``parse_live()`` give the admin API
  (``PATCH /limits``) and the CLI (``maitred limits set``) the settings that
  may change live, with the same validation;
- ``Settings.to_dict()`` writes the settings back in the file's own words
  for ``maitred check-config``; ``configs/edge.toml`` documents every field
  with its doc, and the tests hold the example and the typed section
  classes to the schema.

Precedence is defaults, then the file, then the environment. Values are
checked where they are built: a bad one raises :class:`ConfigError` whose
text is one line naming the key (or the variable), what was expected and
what was given. Values that are legal but odd (a queue that can never fill)
become ``Settings.warnings`` for the caller to log. Nothing here prints,
logs or exits.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from proxy.errors import ConfigError

__all__ = [
    "FIELDS",
    "LIVE_KEYS",
    "AdminSettings",
    "ConfigError",
    "Field",
    "Kind",
    "LimitsSettings",
    "ListenSettings",
    "LogSettings",
    "SECTIONS",
    "Settings",
    "ShedSettings",
    "TimeoutsSettings",
    "UpstreamSettings",
    "format_duration",
    "format_size",
    "live_fields",
    "load",
    "parse_duration",
    "parse_live",
    "parse_size",
]

TomlValue = str | int | float | bool


class _Invalid(ValueError):
    """A value that does not fit; the message says what was expected."""


def _show(value: object) -> str:
    """A value as it was written, quoted and kept to one short line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return json.dumps(shown)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"


def _name(text: str) -> str:
    """A key from a file, quoted when it is not a plain TOML bare key."""
    return text if re.fullmatch(r"[A-Za-z0-9_-]+", text) else json.dumps(text)


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# Durations and sizes -------------------------------------------------------

_DURATION = re.compile(r"([0-9]{1,20}(?:\.[0-9]{1,20})?)(ms|s|m|h)")
_SECONDS_PER = {
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_SIZE = re.compile(r"([0-9]{1,20})(B|KiB|MiB|GiB)?")
_BYTES_PER = {"GiB": 1 << 30, "MiB": 1 << 20, "KiB": 1 << 10, "B": 1}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as "250ms", "1.5s", "2m" or "1h".

    A bare number is refused, since "5" could mean seconds or milliseconds:
    ValueError says what was expected.
    """
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise _Invalid(
            f"expected a duration with a unit (ms, s, m, h), got {_show(text)}"
        )
    number, unit = match.groups()
    return float(Decimal(number) * _SECONDS_PER[unit])


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.25 -> "250ms", 2 -> "2s", 120 -> "2m"."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds == 0:
        return "0s"
    exact = Decimal(repr(float(seconds)))
    for unit in ("h", "m", "s"):
        count = exact / _SECONDS_PER[unit]
        if count >= 1 and count % 1 == 0:
            return _plain(count) + unit
    if exact >= 1:
        return _plain(exact) + "s"
    return _plain(exact * 1000) + "ms"


def _plain(number: Decimal) -> str:
    return format(number.normalize(), "f")


def parse_size(value: str | int) -> int:
    """Bytes in a size such as "32KiB" or "10MiB"; a bare integer is bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        expected = "a size in B, KiB, MiB or GiB"
        raise _Invalid(f"expected {expected}, got {_show(value)}")
    number, unit = match.groups()
    return int(number) * _BYTES_PER[unit or "B"]


def format_size(size: int) -> str:
    """The largest exact unit: 10485760 -> "10MiB", 1000 -> "1000B"."""
    if size < 0:
        raise ValueError(f"not a size: {size!r}")
    for unit in ("GiB", "MiB", "KiB"):
        count, rest = divmod(size, _BYTES_PER[unit])
        if count and not rest:
            return f"{count}{unit}"
    return f"{size}B"


# Hosts and addresses -------------------------------------------------------

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _is_hostname(host: str) -> bool:
    """A DNS name or an IPv4 address (IPv6 is checked apart, in brackets)."""
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return _HOSTNAME.fullmatch(host) is not None


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def format_address(host: str, port: int) -> str:
    """host:port as a user writes it: an IPv6 host in brackets."""
    return f"{_bracketed(host)}:{port}"


_URL_EXPECTED = 'an http:// URL such as "http://127.0.0.1:8000"'


def _split_http_url(url: str) -> tuple[str, int]:
    """(host, port) of an upstream URL; only http://host[:port] will do."""
    shown = _show(url)
    if not url.isprintable() or " " in url:
        # urlsplit would quietly drop tabs and newlines and strip spaces.
        raise _Invalid(f"expected {_URL_EXPECTED}, got {shown}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _Invalid(f"expected {_URL_EXPECTED}, got {shown}") from None
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise _Invalid(
            "https is not supported: maitred speaks plain HTTP to the "
            f"backend; got {shown}"
        )
    if scheme != "http" or not parts.netloc:
        raise _Invalid(f"expected {_URL_EXPECTED}, got {shown}")
    if "@" in parts.netloc:
        raise _Invalid(f"a user name or password is not allowed, got {shown}")
    if parts.path not in ("", "/") or "?" in url or "#" in url:
        raise _Invalid(
            f"a path, query or fragment is not allowed (only http://host"
            f"[:port]), got {shown}"
        )
    host = parts.hostname or ""
    ipv6 = parts.netloc.startswith("[") and _is_ipv6(host)
    if not (ipv6 or _is_hostname(host)) or port == 0:
        raise _Invalid(f"expected {_URL_EXPECTED}, got {shown}")
    return host, 80 if port is None else port


# Kinds: how one type of setting is written and read -------------------------


class Kind(ABC):
    """How one type of setting is written in TOML, in JSON and in the
    environment, and how it is written back. ``name`` lets code generated
    from the schema (CLI options, docs) pick a matching type.
    """

    name: str
    noun: str  # what is expected, for error messages and docs

    @abstractmethod
    def parse(self, spec: Field, value: object) -> Any:
        """The Python value of a TOML or JSON value; raises _Invalid."""

    def from_text(self, text: str) -> object:
        """An environment string turned into the TOML value it stands for."""
        return text

    def format(self, value: Any) -> TomlValue:
        """The value as the TOML file would write it."""
        return value


class _Integer(Kind):
    name = "integer"
    noun = "an integer"

    def parse(self, spec: Field, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise spec._invalid(value)
        return value

    def from_text(self, text: str) -> object:
        return int(text) if re.fullmatch(r"[+-]?[0-9]{1,20}", text) else text


_TRUE_WORDS = ("true", "1", "yes")
_FALSE_WORDS = ("false", "0", "no")


class _Boolean(Kind):
    name = "boolean"
    noun = "true or false"

    def parse(self, spec: Field, value: object) -> bool:
        if not isinstance(value, bool):
            raise spec._invalid(value)
        return value

    def from_text(self, text: str) -> object:
        word = text.lower()
        if word in _TRUE_WORDS:
            return True
        return False if word in _FALSE_WORDS else text


class _Choice(Kind):
    name = "choice"
    noun = "one of the choices"  # Field.expected lists them

    def parse(self, spec: Field, value: object) -> str:
        if not isinstance(value, str) or value not in spec.choices:
            raise spec._invalid(value)
        return value


class _Duration(Kind):
    name = "duration"
    noun = "a duration with a unit (ms, s, m, h)"

    def parse(self, spec: Field, value: object) -> float:
        if not isinstance(value, str):
            raise spec._invalid(value)
        try:
            return parse_duration(value)
        except _Invalid:
            raise spec._invalid(value) from None

    def format(self, value: Any) -> TomlValue:
        return format_duration(value)


class _Size(Kind):
    name = "size"
    noun = "a size in B, KiB, MiB or GiB"

    def parse(self, spec: Field, value: object) -> int:
        if not isinstance(value, str | int):
            raise spec._invalid(value)
        try:
            return parse_size(value)
        except _Invalid:
            raise spec._invalid(value) from None

    def format(self, value: Any) -> TomlValue:
        return format_size(value)


class _Address(Kind):
    """host:port to listen on; port 0 asks the kernel for a free port."""

    name = "address"
    noun = 'host:port such as "127.0.0.1:8080" or "[::1]:8080"'

    def parse(self, spec: Field, value: object) -> tuple[str, int]:
        if not isinstance(value, str):
            raise spec._invalid(value)
        if value.startswith("["):
            host, sep, port = value[1:].partition("]:")
            valid = bool(sep) and _is_ipv6(host)
        else:
            host, sep, port = value.rpartition(":")
            if sep and not host:
                raise _Invalid(
                    "a host is required (0.0.0.0 means every interface), "
                    f"got {_show(value)}"
                )
            if ":" in host:
                raise _Invalid(
                    'write an IPv6 address in brackets, such as "[::1]:8080", '
                    f"got {_show(value)}"
                )
            valid = bool(sep) and _is_hostname(host)
        if not valid or not _PORT.fullmatch(port) or int(port) > 65535:
            raise spec._invalid(value)
        return host, int(port)

    def format(self, value: Any) -> TomlValue:
        return format_address(*value)


class _HttpUrl(Kind):
    name = "url"
    noun = _URL_EXPECTED

    def parse(self, spec: Field, value: object) -> str:
        if not isinstance(value, str):
            raise spec._invalid(value)
        _split_http_url(value)
        return value


class _RetryAfter(Kind):
    name = "retry_after"
    noun = '"auto" or whole seconds'

    def parse(self, spec: Field, value: object) -> int | str:
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int):
            raise spec._invalid(value)
        return value

    def from_text(self, text: str) -> object:
        return int(text) if re.fullmatch(r"[0-9]{1,20}", text) else text


class _EnvName(Kind):
    name = "env_name"
    noun = "an environment variable name (letters, digits and _)"

    def parse(self, spec: Field, value: object) -> str:
        if not isinstance(value, str):
            raise spec._invalid(value)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise spec._invalid(value)
        return value


_INTEGER = _Integer()
_BOOLEAN = _Boolean()
_CHOICE = _Choice()
_DURATION_KIND = _Duration()
_SIZE_KIND = _Size()
_ADDRESS = _Address()
_HTTP_URL = _HttpUrl()
_RETRY_AFTER = _RetryAfter()
_ENV_NAME = _EnvName()


# The schema ----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One setting: where it lives, how it is written, what it may be.

    ``default`` is written as in the TOML file ("250ms", not 0.25).
    ``bounds`` is the inclusive range of the parsed value, if any.
    """

    section: str
    key: str
    kind: Kind
    default: TomlValue
    doc: str
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    live: bool = False

    @property
    def name(self) -> str:
        """The dotted name errors and docs use: "limits.max_concurrency"."""
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        """The environment variable that overrides this setting."""
        return f"MAITRED_{self.section.upper()}_{self.key.upper()}"

    @property
    def expected(self) -> str:
        """What a valid value looks like, for errors and help texts."""
        if self.choices:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        if self.bounds is None:
            return self.kind.noun
        low, high = (self.kind.format(bound) for bound in self.bounds)
        return f"{self.kind.noun} from {low} to {high}"

    def _invalid(self, value: object) -> _Invalid:
        return _Invalid(f"expected {self.expected}, got {_show(value)}")

    def parse(self, value: object) -> Any:
        """The Python value of a TOML or JSON value; ValueError if it is bad."""
        return self._check(self.kind.parse(self, value), value)

    def parse_text(self, text: str) -> Any:
        """The same, from an environment or command-line string."""
        return self.parse(self.kind.from_text(text))

    def _check(self, result: Any, value: object) -> Any:
        """``result`` if it is within bounds; ``value`` is what was written."""
        if self.bounds is None or not isinstance(result, int | float):
            return result
        low, high = self.bounds
        if not low <= result <= high:
            raise self._invalid(value)
        return result


_TIMEOUT = (0.001, 24 * 3600.0)
_COUNT = (1, 1_000_000)

FIELDS: tuple[Field, ...] = (
    Field(
        "listen",
        "address",
        _ADDRESS,
        "0.0.0.0:8080",
        "where clients connect: host:port or [v6]:port",
    ),
    Field(
        "listen",
        "backlog",
        _INTEGER,
        1024,
        "kernel queue of connections not yet accepted",
        bounds=(1, 65535),
    ),
    Field(
        "listen",
        "max_connections",
        _INTEGER,
        10000,
        "open client connections; past it: 503 and close",
        bounds=_COUNT,
    ),
    Field(
        "listen",
        "http_engine",
        _CHOICE,
        "compiled",
        "HTTP/1.1 parser: compiled, or h11 (the reference)",
        choices=("compiled", "h11"),
    ),
    Field(
        "upstream",
        "url",
        _HTTP_URL,
        "http://127.0.0.1:8000",
        "the backend: http://host[:port], no path",
    ),
    Field(
        "upstream",
        "connect_timeout",
        _DURATION_KIND,
        "2s",
        "longest wait to open a backend connection",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "upstream",
        "response_timeout",
        _DURATION_KIND,
        "30s",
        "longest wait for the first response byte",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "upstream",
        "read_timeout",
        _DURATION_KIND,
        "30s",
        "longest gap between response bytes",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "upstream",
        "max_idle_connections",
        _INTEGER,
        64,
        "pooled keep-alive backend connections",
        bounds=(0, 100_000),
    ),
    Field(
        "limits",
        "max_concurrency",
        _INTEGER,
        64,
        "tokens: requests at the backend at once",
        bounds=_COUNT,
        live=True,
    ),
    Field(
        "limits",
        "max_queue",
        _INTEGER,
        256,
        "waiters for a token; 0 sheds at once",
        bounds=(0, 1_000_000),
        live=True,
    ),
    Field(
        "limits",
        "queue_timeout",
        _DURATION_KIND,
        "250ms",
        "longest wait for a token, then 503",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "limits",
        "max_body",
        _SIZE_KIND,
        "10MiB",
        "request body; over it: 413",
        bounds=(0, 1 << 40),
        live=True,
    ),
    Field(
        "limits",
        "max_head",
        _SIZE_KIND,
        "32KiB",
        "whole request head; over it: 431",
        bounds=(1 << 10, 1 << 20),
        live=True,
    ),
    Field(
        "limits",
        "max_target",
        _SIZE_KIND,
        "8KiB",
        "request target; over it: 414",
        bounds=(256, 1 << 20),
        live=True,
    ),
    Field(
        "timeouts",
        "client_header",
        _DURATION_KIND,
        "10s",
        "time to send a whole request head, then 408",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "timeouts",
        "client_body",
        _DURATION_KIND,
        "30s",
        "longest gap between request body chunks",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "timeouts",
        "idle",
        _DURATION_KIND,
        "60s",
        "keep-alive wait for the next request",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "timeouts",
        "shutdown",
        _DURATION_KIND,
        "30s",
        "drain time on SIGTERM before in-flight work is cut",
        bounds=_TIMEOUT,
        live=True,
    ),
    Field(
        "shed",
        "retry_after",
        _RETRY_AFTER,
        "auto",
        'Retry-After on a 503: "auto" or whole seconds',
        bounds=(1, 86400),
    ),
    Field(
        "admin",
        "address",
        _ADDRESS,
        "127.0.0.1:9901",
        "admin API; loopback unless a token is set",
    ),
    Field(
        "admin",
        "token_env",
        _ENV_NAME,
        "MAITRED_ADMIN_TOKEN",
        "variable that holds the admin token",
    ),
    Field(
        "log",
        "level",
        _CHOICE,
        "info",
        "least severe level logged",
        choices=("debug", "info", "warning", "error"),
    ),
    Field(
        "log",
        "access",
        _BOOLEAN,
        False,
        "write one access-log line per request",
    ),
    Field(
        "log",
        "access_format",
        _CHOICE,
        "text",
        "access-log lines as text or json",
        choices=("text", "json"),
    ),
)

SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(f.section for f in FIELDS))
_BY_NAME = {f.name: f for f in FIELDS}
_BY_ENV = {f.env: f for f in FIELDS}
_DEFAULTS = {f.name: f.parse(f.default) for f in FIELDS}

# Names under MAITRED_ADMIN_ that are not settings; admin.token_env's value
# is reserved too.
_RESERVED_ENV = ("MAITRED_ADMIN", "MAITRED_ADMIN_TOKEN")
# Variables Kubernetes injects for a Service named like a section
# ("maitred-admin" gives MAITRED_ADMIN_SERVICE_HOST, MAITRED_ADMIN_PORT_...):
# never settings, so never refused as unknown ones.
_SERVICE_LINK = re.compile(
    r"_SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?|_PORT(_[0-9]+_[A-Z]+.*)?"
)


def live_fields() -> tuple[Field, ...]:
    """The settings that may change while the proxy runs."""
    return tuple(f for f in FIELDS if f.live)


LIVE_KEYS: tuple[str, ...] = tuple(f.key for f in live_fields())
_LIVE = {f.key: f for f in live_fields()}


def parse_live(key: str, value: object) -> int | float:
    """Check a new value for the live setting ``key`` ("queue_timeout").

    ``value`` comes from JSON or a command line: a string is read as in the
    environment ("100ms", "128"); a JSON number is taken as is, and as
    seconds for a duration.
    """
    spec = _LIVE.get(key)
    if spec is None:
        hint = _did_you_mean(key, list(LIVE_KEYS))
        known = hint or f" (one of {', '.join(LIVE_KEYS)})"
        raise ConfigError(key, f"not a setting that can change live{known}")
    try:
        if isinstance(value, str):
            return spec.parse_text(value)
        if spec.kind is _DURATION_KIND and isinstance(value, int | float):
            if not isinstance(value, bool):
                return float(spec._check(value, value))
        return spec.parse(value)
    except _Invalid as err:
        raise ConfigError(spec.name, str(err)) from None


# Typed settings --------------------------------------------------------------
# One frozen class per section, fields in schema order (a test checks).


@dataclass(frozen=True)
class ListenSettings:
    address: tuple[str, int]
    backlog: int
    max_connections: int
    http_engine: str


@dataclass(frozen=True)
class UpstreamSettings:
    """``host``, ``port`` and ``host_header`` are derived from ``url``."""

    url: str
    connect_timeout: float
    response_timeout: float
    read_timeout: float
    max_idle_connections: int
    host: str = field(init=False)
    port: int = field(init=False)
    host_header: str = field(init=False)

    def __post_init__(self) -> None:
        host, port = _split_http_url(self.url)
        header = _bracketed(host)
        if port != 80:
            header = f"{header}:{port}"
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "host_header", header)


@dataclass(frozen=True)
class LimitsSettings:
    max_concurrency: int
    max_queue: int
    queue_timeout: float
    max_body: int
    max_head: int
    max_target: int


@dataclass(frozen=True)
class TimeoutsSettings:
    client_header: float
    client_body: float
    idle: float
    shutdown: float


@dataclass(frozen=True)
class ShedSettings:
    retry_after: int | Literal["auto"]


@dataclass(frozen=True)
class AdminSettings:
    address: tuple[str, int]
    token_env: str


@dataclass(frozen=True)
class LogSettings:
    level: str
    access: bool
    access_format: str


_SECTION_CLASSES: dict[str, type] = {
    "listen": ListenSettings,
    "upstream": UpstreamSettings,
    "limits": LimitsSettings,
    "timeouts": TimeoutsSettings,
    "shed": ShedSettings,
    "admin": AdminSettings,
    "log": LogSettings,
}


@dataclass(frozen=True)
class Settings:
    """Everything maitred was configured with, checked and typed.

    Durations are float seconds, sizes int bytes, addresses (host, port).
    ``warnings`` lists legal but odd combinations; ``source`` is the file
    read (None for defaults and environment only) and does not take part in
    equality; ``admin_token`` is the value of the variable named by
    ``admin.token_env``, None when unset or empty.
    """

    listen: ListenSettings
    upstream: UpstreamSettings
    limits: LimitsSettings
    timeouts: TimeoutsSettings
    shed: ShedSettings
    admin: AdminSettings
    log: LogSettings
    warnings: tuple[str, ...] = ()
    source: str | None = field(default=None, compare=False)
    admin_token: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, dict[str, TomlValue]]:
        """The settings shaped like the TOML file, in its own words."""
        result: dict[str, dict[str, TomlValue]] = {}
        for spec in FIELDS:
            value = getattr(getattr(self, spec.section), spec.key)
            table = result.setdefault(spec.section, {})
            table[spec.key] = spec.kind.format(value)
        return result

    def core_kwargs(self) -> dict[str, int | float]:
        """Keyword arguments for the compiled core (``proxy._core.Core``)."""
        limits, timeouts, upstream = self.limits, self.timeouts, self.upstream
        return {
            "max_concurrency": limits.max_concurrency,
            "max_queue": limits.max_queue,
            "queue_timeout": limits.queue_timeout,
            "max_connections": self.listen.max_connections,
            "client_header": timeouts.client_header,
            "client_body": timeouts.client_body,
            "idle": timeouts.idle,
            "connect": upstream.connect_timeout,
            "response": upstream.response_timeout,
            "read": upstream.read_timeout,
            "shutdown": timeouts.shutdown,
        }


# Loading -------------------------------------------------------------------


def load(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Read the settings: defaults, then the TOML file, then the environment.

    ``path`` None means defaults and environment only; ``environ`` None
    means ``os.environ``. Raises ConfigError on the first problem found.
    """
    env = os.environ if environ is None else environ
    source = None if path is None else os.fspath(path)

    values = dict(_DEFAULTS)
    if source is not None:
        values.update(_values_from_file(source))
    values.update(_values_from_environ(env))
    token_env = values["admin.token_env"]
    _refuse_unknown_variables(env, token_env)

    sections = {}
    for name, cls in _SECTION_CLASSES.items():
        keys = [f.key for f in FIELDS if f.section == name]
        sections[name] = cls(**{key: values[f"{name}.{key}"] for key in keys})
    settings = Settings(
        **sections, source=source,
        admin_token=env.get(token_env, "").strip() or None
    )
    _check_admin(settings)
    return replace(settings, warnings=_warnings(settings))


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise ConfigError(None, f"{path}: no such config file") from None
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(None, f"{path}: cannot read: {reason}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        message = f"{path}: not UTF-8 text (byte {err.start})"
        raise ConfigError(None, message) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(None, f"{path}: invalid TOML: {err}") from None


def _values_from_file(path: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, table in _read_toml(path).items():
        if section not in SECTIONS:
            raise _unknown_section(section, table)
        if not isinstance(table, dict):
            message = f"expected a table [{section}], got {_show(table)}"
            raise ConfigError(section, message)
        for key, value in table.items():
            spec = _BY_NAME.get(f"{section}.{key}")
            if spec is None:
                raise _unknown_key(section, key)
            values[spec.name] = _parse(spec, value, spec.name)
    return values


def _values_from_environ(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for spec in FIELDS:
        text = env.get(spec.env)
        if text is not None:
            values[spec.name] = _parse(spec, text, spec.env, text=True)
    return values


def _parse(spec: Field, value: Any, where: str, *, text: bool = False) -> Any:
    try:
        return spec.parse_text(value) if text else spec.parse(value)
    except _Invalid as err:
        raise ConfigError(where, str(err)) from None


def _unknown_section(name: str, value: object) -> ConfigError:
    if isinstance(value, dict):
        hint = _did_you_mean(name, list(SECTIONS))
        return ConfigError(_name(name), f"unknown section{hint}")
    # A key above the first [section] header.
    homes = [f.name for f in FIELDS if f.key == name]
    hint = f" (did you mean {homes[0]}?)" if homes else ""
    return ConfigError(_name(name), f"unknown key outside any section{hint}")


def _unknown_key(section: str, key: str) -> ConfigError:
    here = [f.key for f in FIELDS if f.section == section]
    hint = _did_you_mean(key, here)
    if not hint:
        homes = [f.name for f in FIELDS if f.key == key]
        hint = f" (did you mean {homes[0]}?)" if homes else ""
    return ConfigError(f"{section}.{_name(key)}", f"unknown key{hint}")


def _refuse_unknown_variables(env: Mapping[str, str], token_env: str) -> None:
    """MAITRED_<SECTION>_* must name a setting, apart from reserved names."""
    for name in sorted(env):
        if name in _BY_ENV or name in _RESERVED_ENV or name == token_env:
            continue
        if _is_service_link(name):
            continue
        for section in SECTIONS:
            prefix = f"MAITRED_{section.upper()}_"
            if name.startswith(prefix):
                raise _unknown_variable(name, prefix, section)
        _refuse_misspelt_section(name)


def _refuse_misspelt_section(name: str) -> None:
    """MAITRED_LIMITZ_MAX_QUEUE is a typo, not someone else's variable."""
    if not name.startswith("MAITRED_"):
        return
    word, _, rest = name.removeprefix("MAITRED_").partition("_")
    sections = [section.upper() for section in SECTIONS]
    close = difflib.get_close_matches(word, sections, n=1, cutoff=0.8)
    if rest and close:
        guess = f"MAITRED_{close[0]}_{rest}"
        hint = f" (did you mean {guess}?)" if guess in _BY_ENV else ""
        raise ConfigError(name, f"unknown section {word.lower()!r}{hint}")


def _is_service_link(name: str) -> bool:
    for section in SECTIONS:
        prefix = f"MAITRED_{section.upper()}"
        if name.startswith(prefix) and _SERVICE_LINK.fullmatch(name[len(prefix):]):
            return True
    return False


def _unknown_variable(name: str, prefix: str, section: str) -> ConfigError:
    keys = [f.key.upper() for f in FIELDS if f.section == section]
    close = difflib.get_close_matches(name.removeprefix(prefix), keys, n=1)
    hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
    return ConfigError(name, f"unknown setting{hint}")


def _check_admin(settings: Settings) -> None:
    """The admin API binds loopback unless a token guards it, and never
    shares a port with the data listener."""
    admin_host, admin_port = settings.admin.address
    listen_host, listen_port = settings.listen.address
    shown = _show(_ADDRESS.format(settings.admin.address))
    if settings.admin_token is None and not _is_loopback(admin_host):
        message = (
            f"{shown} is not loopback, so a token is required: "
            f"set {settings.admin.token_env}"
        )
        raise ConfigError("admin.address", message)

    wildcard = ("0.0.0.0", "::")
    hosts = (admin_host, listen_host)
    overlap = admin_host == listen_host or any(h in wildcard for h in hosts)
    if admin_port == listen_port != 0 and overlap:
        message = f"{shown} is the data port; the admin API needs its own"
        raise ConfigError("admin.address", message)


def _warnings(settings: Settings) -> tuple[str, ...]:
    """Legal but odd combinations, one line each, naming the keys."""
    limits, listen = settings.limits, settings.listen
    response_timeout = settings.upstream.response_timeout
    found = []
    if limits.queue_timeout >= response_timeout:
        found.append(
            f"limits.queue_timeout ({format_duration(limits.queue_timeout)}) "
            "is not shorter than upstream.response_timeout "
            f"({format_duration(response_timeout)}): waiters may wait "
            "longer than the backend has to answer"
        )
    if limits.max_queue > listen.max_connections:
        found.append(
            f"limits.max_queue ({limits.max_queue}) is more than "
            f"listen.max_connections ({listen.max_connections}): every "
            "waiter holds a connection, so the queue can never fill"
        )
    if limits.max_concurrency > listen.max_connections:
        found.append(
            f"limits.max_concurrency ({limits.max_concurrency}) is more "
            f"than listen.max_connections ({listen.max_connections}): every "
            "request holds a connection, so some tokens are never used"
        )
    if limits.max_target > limits.max_head:
        found.append(
            f"limits.max_target ({format_size(limits.max_target)}) is more "
            f"than limits.max_head ({format_size(limits.max_head)}): the "
            "target is part of the head, so 431 comes before 414"
        )
    return tuple(found)
