"""The compiled HTTP/1.1 engine (proxy/_http.pyx) against h11, the reference.

Hypothesis builds request and response byte streams: valid ones, and ones
mutated where framing is decided (line endings, whitespace, length fields,
chunk sizes and extensions, duplicate and folded fields, control bytes,
sizes at the limits). Each stream is split at random points into reads and
fed to both engines by a driver that does what the data path does with a
codec: read events, answer each request (or relay each response), start
the next cycle, answer errors with a canned response. Both engines must
leave the same trace: heads compared field by field, bodies as
concatenated bytes, END, PAUSED and NEED_DATA where they happen, every byte
written, the same error status.

Where the compiled engine is knowingly stricter than the reference, the
generator marks the stream, and the compiled engine may stop earlier with
the status listed for it in docs/http-engines.md; everything before that
point must still agree. Each such difference is also pinned by a named
test below.
"""

from __future__ import annotations

import importlib.machinery
import itertools
import re
from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import _heads, _http
from proxy._heads import end_to_end, upstream_fields
from proxy.codec import (
    END,
    NEED_DATA,
    PAUSED,
    H11Engine,
    ResponseHead,
    make_engine,
)
from proxy.errors import HttpError, UpstreamError
from proxy.responses import REASONS

FUZZ = settings(
    max_examples=600,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)

UPSTREAM_LIMIT = 64 * 1024  # the least limit the upstream codecs apply

# Bytes h11 takes in a field value or reason phrase and RFC 9110 does not.
LENIENT_CONTROLS = frozenset([*range(1, 9), *range(14, 32), 127])


def engines(max_head: int = 32 * 1024, max_target: int = 8 * 1024):
    return (
        make_engine("compiled", max_head, max_target),
        H11Engine(max_head, max_target),
    )


def test_compiled_engine_is_the_extension():
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    assert _http.__file__.endswith(suffixes), _http.__file__
    assert make_engine("compiled", 1024, 256).name == "compiled"


# -- traces ---------------------------------------------------------------------


class Trace(list):
    """What a driver saw and wrote; adjacent body pieces are merged."""

    def add(self, item) -> None:
        if type(item) is bytes:
            if not item:
                return
            if self and type(self[-1]) is bytes:
                self[-1] += item
                return
        self.append(item)


def assert_agree(compiled: Trace, reference: Trace, allowed: set) -> None:
    """Equal traces, or the compiled engine stopped first with an error
    `allowed` for this stream, after the same events."""
    if compiled == reference:
        return
    detail = f"\ncompiled:  {compiled!r}\nreference: {reference!r}"
    errors = [i for i, item in enumerate(compiled) if item[0] == "error"]
    assert errors and allowed, "the engines differ" + detail
    stop = errors[0]
    assert compiled[stop][1] in allowed, "unexpected error" + detail
    before = compiled[:stop]
    assert len(before) <= len(reference), detail
    for mine, theirs in zip(before, reference[:stop], strict=True):
        if mine == theirs:
            continue
        # The last body piece may be cut short where the compiled engine
        # stopped; the reference went on reading it.
        assert type(mine) is bytes and type(theirs) is bytes, detail
        assert theirs.startswith(mine) and mine is before[-1], detail


def request_fields(head) -> tuple:
    return (
        "request",
        head.method,
        head.target,
        head.version,
        tuple(head.headers),
        head.content_length,
        head.chunked,
        head.keep_alive,
        head.expect_continue,
    )


def response_fields(head) -> tuple:
    # keep_alive is left out: the h11 engine sets it True on every head
    # (see docs/http-engines.md); the data path reads `reusable` instead.
    return (
        "response",
        head.status,
        head.reason,
        head.version,
        tuple(head.headers),
        head.content_length,
        head.chunked,
    )


def feeds(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(stream), *cuts})
    return [stream[a:b] for a, b in itertools.pairwise(points)]


# -- the client side: a driver ------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """How the driver answers one request."""

    status: int = 200
    reason: bytes = b"OK"
    length: int | None = 2
    chunked: bool = False
    headers: tuple = ()
    pieces: tuple = (b"ok",)
    canned: bool = False  # answer with canned(), as a shed does
    early: bool = False  # answer right after the head, before the body
    probe: bool = False  # read one more event before answering
    interim: bool = False  # send a 103 first
    force_body: bool = False  # send the pieces even where none may go


class ClientDriver:
    """Drives a client codec the way proxy/client.py does."""

    def __init__(self, engine, replies, error_body: bytes) -> None:
        self.codec = engine.client_codec()
        self.replies = iter(replies)
        self.error_body = error_body
        self.trace = Trace()
        self.head = None
        self.reply = Reply()
        self.replied = False
        self.done = False

    def run(self, reads: list[bytes], eof: bool) -> Trace:
        for data in reads + [b""] * eof:
            if self.done:
                break
            try:
                self.codec.receive(data)
            except HttpError as err:
                self.fail(err)
                break
            self.pump()
        return self.trace

    def pump(self) -> None:
        while not self.done:
            try:
                event = self.codec.next_event()
            except HttpError as err:
                self.fail(err)
                return
            if type(event) is bytes:
                self.trace.add(event)
            elif event is NEED_DATA or event is PAUSED:
                self.trace.add(repr(event))
                self.trace.add(("buffered", self.codec.buffered))
                return
            elif event is END:
                self.message_end()
            else:
                self.trace.add(request_fields(event))
                self.head = event
                self.reply = next(self.replies, Reply())
                self.replied = False
                if self.reply.early:
                    self.respond()

    def message_end(self) -> None:
        self.trace.add("END")
        if self.head is None:  # the client closed between requests
            self.done = True
            return
        if self.reply.probe:
            try:
                self.trace.add(("probe", repr(self.codec.next_event())))
            except HttpError as err:
                self.fail(err)
                return
        if not self.replied:
            self.respond()
        if self.done:
            return
        cycled = self.codec.next_cycle()
        self.trace.add(("next_cycle", cycled))
        self.head = None
        self.done = not cycled

    def respond(self) -> None:
        reply, head, codec = self.reply, self.head, self.codec
        self.replied = True
        headers = list(reply.headers)
        if not head.keep_alive:
            headers.append((b"Connection", b"close"))
        try:
            if reply.canned and head.method != b"HEAD":
                body = b"".join(reply.pieces)
                self.out(codec.canned(reply.status, reply.reason, headers, body))
                return
            if reply.interim:
                hint = [(b"Link", b"</a>")]
                interim = ResponseHead(103, b"Early Hints", b"1.1", hint, None,
                                       False, True)
                self.out(codec.response_head(interim, list(hint)))
            final = ResponseHead(reply.status, reply.reason, b"1.1", [],
                                 reply.length, reply.chunked, True)
            self.out(codec.response_head(final, headers))
            bodiless = head.method == b"HEAD" or reply.status in (204, 304)
            for piece in reply.pieces:
                if reply.force_body or not bodiless:
                    self.out(codec.body(piece))
            self.out(codec.end())
        except HttpError:
            raise
        except Exception:  # h11 raises LocalProtocolError, ours ValueError
            self.trace.add("send-error")
            self.done = True

    def out(self, data: bytes) -> None:
        self.trace.add(("out", data))

    def fail(self, err: HttpError) -> None:
        # As client.py's _answer_error: a canned answer, then close.
        self.trace.add(("error", err.status))
        self.done = True
        headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Connection", b"close"),
        ]
        try:
            self.out(self.codec.canned(err.status, REASONS[err.status],
                                       headers, self.error_body))
        except Exception:
            self.trace.add("canned-error")


# -- generating requests --------------------------------------------------------
#
# Each message draws a mutation rate: most are clean, some get a few odd
# choices, a few many. Every choice point offers valid options and odd
# ones; an odd one is taken with the message's rate, in percent.


@dataclass
class Message:
    head: bytes
    body: bytes
    # The errors the compiled engine may stop with, for a documented
    # difference this message contains.
    lenient: set = field(default_factory=set)


class Choices:
    """Draws for one message, at its mutation rate."""

    def __init__(self, draw, rate: int) -> None:
        self.draw = draw
        self.rate = rate

    def chance(self, percent: int) -> bool:
        return self.draw(chances(percent))

    def odd(self) -> bool:
        return self.rate > 0 and self.chance(self.rate)

    def pick(self, valid: list, odd: list = ()):
        if odd and self.odd():
            return self.draw(st.sampled_from(odd))
        return self.draw(st.sampled_from(valid))


RATES = [0] * 5 + [3] * 3 + [10, 30]


def chances(percent: int) -> st.SearchStrategy[bool]:
    # Hypothesis favours the ends of an integer range, so "integers(0, 99)
    # < 3" holds far more often than 3 times in 100; a sampled list keeps
    # the odds.
    return st.sampled_from([False] * (100 - percent) + [True] * percent)

VALUE_BYTES = list(range(0x21, 0x7F)) + [0x20] * 8 + [0x09, 0x80, 0xE9, 0xFF]
ODD_VALUE_BYTES = [0x00, 0x01, 0x0B, 0x0C, 0x0D, 0x1F, 0x7F]

NAMES = [b"X-A", b"Accept", b"Cookie", b"user-agent", b"Connection",
         b"Expect", b"Upgrade", b"Keep-Alive", b"TE"]
ODD_NAMES = [b"Bad Name", b"", b"X\x00", b"\xc3\xa9", b"X(1)", b"X\x01",
             b"Host", b"Transfer-Encoding", b"Content-Length"]
SEPARATORS = [b": "] * 6 + [b":", b":  ", b":\t"]
ODD_SEPARATORS = [b" : ", b" :", b"\t:"]
SPECIAL_VALUES = {
    b"Connection": [b"close", b"Close", b"keep-alive", b"close, x",
                    b"closed", b"Upgrade", b"keep-alive, CLOSE"],
    b"Expect": [b"100-continue", b"100-Continue", b"100-continue, x"],
    b"Upgrade": [b"websocket", b"h2c", b" , "],
}
HOSTS = [b"h.test", b"h.test:8080", b"", b"a b"]
EOLS = [b"\r\n"] * 5 + [b"\n"]
ODD_EOLS = [b"\r", b"\r\r\n", b"\n\r"]
BLANK_LINES = [b"\r\n"] * 5 + [b"\n"]


def field_value(c: Choices) -> bytes:
    alphabet = VALUE_BYTES + ODD_VALUE_BYTES if c.odd() else VALUE_BYTES
    value = bytes(c.draw(st.lists(st.sampled_from(alphabet), max_size=10)))
    return value.strip(b" \t") if c.chance(80) else value


def field_line(c: Choices) -> bytes:
    name = c.pick(NAMES, ODD_NAMES)
    if c.chance(25):
        name = c.pick([b"Connection", b"connection", b"Expect", b"Upgrade"])
    special = SPECIAL_VALUES.get(name)
    if special and c.chance(60):
        value = c.pick(special)
    else:
        value = field_value(c)
    return name + c.pick(SEPARATORS, ODD_SEPARATORS) + value


def lines_to_bytes(c: Choices, lines: list[bytes]) -> bytes:
    return b"".join(line + c.pick(EOLS, ODD_EOLS) for line in lines)


def lenient_controls(lines: list[bytes]) -> bool:
    return any(LENIENT_CONTROLS.intersection(line) for line in lines)


def pad_to(c: Choices, lines: list[bytes], size_so_far: int, limit: int,
           name: bytes = b"X-Pad") -> None:
    """Add a field so the section lands on its limit, give or take 2."""
    target = limit + c.draw(st.sampled_from([-2, -1, 0, 1, 2]))
    room = target - size_so_far - len(name) - 4
    if room >= 0:
        lines.append(name + b": " + b"p" * room)


# Content-Length values: (form, the compiled engine may refuse it alone).
LENGTH_FORMS = [(b"%d", False)] * 6 + [
    (b"0%d", False),
    (b"%d, %d", False),
    (b"%020d", False),
]
ODD_LENGTH_FORMS = [
    (b"%d,%d1", False),
    (b"+%d", False),
    (b"-1", False),
    (b"", False),
    (b"0x%d", False),
    (b"%021d", False),
    (b"9223372036854775807", False),
    (b"9223372036854775808", True),
    (b"99999999999999999999", True),
]
TE_VALUES = [b"chunked"] * 4 + [b"Chunked", b"CHUNKED"]
ODD_TE_VALUES = [b"chunked, chunked", b"gzip", b"gzip, chunked", b"identity",
                 b""]
SIZE_FORMS = [(b"%x", False)] * 4 + [(b"%X", False), (b"%05x", False),
                                     (b"%020x", False)]
ODD_SIZE_FORMS = [
    (b"%021x", False),
    (b"%x ", True),
    (b"%x\t", True),
    (b"0x%x", False),
    (b" %x", False),
    (b"-%x", False),
    (b"8000000000000000", True),
    (b"ffffffffffffffffffff", True),
]
EXTENSIONS = [(b"", False)] * 8 + [
    (b";a", False),
    (b";a=b", False),
    (b';a="q s"', False),
    (b"; a = b", False),
    (b";a=b;c", False),
    (b";a=b ;c", False),
    (b';a="x\\"y"', False),
    (b";A-1=tok!", False),
]
ODD_EXTENSIONS = [
    (b" ;a", False),
    (b";a\nb", False),
    (b";a ", True),
    (b";", True),
    (b";=b", True),
    (b";a=", True),
    (b';a="open', True),
    (b";a=b\x00", True),
    (b";a=\rb", True),
    (b";\x7f", True),
    (b";a=b\t", True),
    (b';a="\x01"', True),
]
ODD_DATA_ENDS = [b"\n", b"", b"XX", b"\r", b"\r\r\n"]


def form_text(form: bytes, n: int) -> bytes:
    return form % ((n,) * form.count(b"%")) if b"%" in form else form


def length_body(c: Choices, lines: list[bytes], lenient: set) -> bytes:
    size = c.draw(st.integers(0, 12))
    data = c.draw(st.binary(min_size=size, max_size=size))
    form, strict = c.pick(LENGTH_FORMS, ODD_LENGTH_FORMS)
    text = form_text(form, size)
    lines.append(b"Content-Length: " + text)
    if strict:
        lenient.add(400)
    if c.chance(12):
        again = c.pick([text, text, b"%d" % (size + 1)])
        lines.append(b"Content-Length: " + again)
    if c.odd():
        data = data[:-1] if data and c.chance(50) else data + b"!"
    return data


def chunked_body(c: Choices, lines: list[bytes], lenient: set,
                 limit: int) -> bytes:
    lines.append(b"Transfer-Encoding: " + c.pick(TE_VALUES, ODD_TE_VALUES))
    if c.chance(5):
        lines.append(b"Transfer-Encoding: chunked")
    parts = []
    sizes = st.sampled_from([1, 2, 3, 5, 9, 10, 11, 15, 16, 26, 31, 43])
    for size in c.draw(st.lists(sizes, max_size=3)):
        form, strict_size = c.pick(SIZE_FORMS, ODD_SIZE_FORMS)
        ext, strict_ext = c.pick(EXTENSIONS, ODD_EXTENSIONS)
        line = form_text(form, size) + ext
        if c.chance(3):  # a chunk-size line at the limit
            target = limit + c.draw(st.sampled_from([-2, -1, 0, 1]))
            line += b";p=" + b"x" * max(0, target - len(line) - 5)
            if len(line) + 2 > limit:
                lenient.add(431)
        if strict_size or strict_ext:
            lenient.add(400)
        data = c.draw(st.binary(min_size=size, max_size=size))
        if c.odd():
            data = data[:-1] + b"\r\n" if c.chance(50) else data + b"#"
        end = c.pick([b"\r\n"], ODD_DATA_ENDS + [b"\n"] * 3)
        parts.append(line + b"\r\n" + data + end)
    last = c.pick([b"0", b"0", b"000", b"0;x=y"], [b"0 "])
    if last == b"0 ":
        lenient.add(400)
    parts.append(last + c.pick([b"\r\n"], [b"\n"]))
    trailer = [field_line(c) for _ in range(c.draw(st.integers(0, 2)))]
    if trailer and c.odd():
        trailer.insert(c.draw(st.integers(1, len(trailer))), b" folded")
        lenient.add(400)  # obs-fold in a trailer section
    if c.chance(3):
        pad_to(c, trailer, sum(len(t) + 2 for t in trailer) + 2, limit,
               b"X-Trailer-Pad")
    if lenient_controls(trailer):
        lenient.add(400)
    section = lines_to_bytes(c, trailer) + c.pick(BLANK_LINES)
    if trailer and len(section) > limit:
        lenient.add(431)
    return b"".join(parts) + section


METHODS = [b"GET"] * 4 + [b"POST"] * 3 + [
    b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"get", b"M-1!",
]
ODD_METHODS = [b"CONNECT", b"GE T", b"G\x00T", b"", b"G\xc3T"]
VERSIONS = [b"HTTP/1.1"] * 3 + [b"HTTP/1.0"]
ODD_VERSIONS = [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/11",
                b"HTTP/1.x", b"http/1.1", b"HTTP/1.1 "]
TARGETS = [b"/", b"/a/b?c=d&e", b"/", b"*", b"http://h.test/x", b"/%7e"]
ODD_TARGETS = [b"/a b", b"/\x7f", b"/\xc3\xa9", b""]


def request_message(c: Choices, max_head: int, max_target: int) -> Message:
    method = c.pick(METHODS, ODD_METHODS)
    target = c.pick(TARGETS, ODD_TARGETS)
    if c.chance(5):
        target = b"/" + b"t" * (max_target - 1 + c.draw(st.integers(-1, 1)))
    version = c.pick(VERSIONS, ODD_VERSIONS)
    start = method + b" " + target + c.pick([b" "], [b"  ", b"\t"]) + version
    lenient: set = set()
    lines = [] if c.odd() else [b"Host: " + c.pick(HOSTS)]
    if c.chance(5):
        lines.append(b"host: " + c.pick(HOSTS))
    lines.extend(field_line(c) for _ in range(c.draw(st.integers(0, 4))))
    framings = ["none", "none", "length"]
    if version == b"HTTP/1.1":  # Transfer-Encoding in 1.0 is refused
        framings.append("chunked")
    framing = c.pick(framings, ["both", "chunked", "chunked"])
    body = b""
    if framing in ("length", "both"):
        body = length_body(c, lines, lenient)
    if framing in ("chunked", "both"):
        body = chunked_body(c, lines, lenient, max_head)
    lines = list(c.draw(st.permutations(lines)))
    if lines and c.odd():
        fold = c.pick([b" folded", b"\tfolded", b" "])
        lines.insert(c.draw(st.integers(0, len(lines))), fold)
    if c.chance(4):
        pad_to(c, lines, len(start) + sum(len(x) + 2 for x in lines) + 4,
               max_head)
    if lenient_controls(lines):
        lenient.add(400)
    head = lines_to_bytes(c, [start, *lines]) + c.pick(BLANK_LINES)
    return Message(head, body, lenient)


REPLY_FIELDS = [
    (b"Content-Type", b"text/plain"),
    (b"Server", b"a b"),
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive, X-Hop"),
    (b"Host", b"origin.test"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Transfer-Encoding", b"Chunked"),
    (b"Content-Length", b"2"),
    (b"Content-Length", b"2, 2"),
    (b"X-Obs", b"caf\xc3\xa9"),
    (b"Set-Cookie", b"a=1"),
]


def reply(c: Choices) -> Reply:
    sizes = st.sampled_from([0, 1, 5, 10, 26, 300])
    pieces = tuple(c.draw(st.lists(sizes.flatmap(
        lambda n: st.binary(min_size=n, max_size=n)), max_size=3)))
    total = sum(map(len, pieces))
    framing = c.pick(["length", "length", "chunked", "unknown"], ["wrong"])
    return Reply(
        status=c.pick([200, 200, 201, 204, 304, 404, 503]),
        reason=c.pick([b"OK", b"", b"Not  Found"]),
        length={"length": total, "wrong": total + 1}.get(framing),
        chunked=framing == "chunked",
        headers=tuple(c.draw(st.lists(
            st.sampled_from(REPLY_FIELDS[:5] + REPLY_FIELDS[9:]
                            if not c.odd() else REPLY_FIELDS),
            max_size=4))),
        pieces=pieces,
        canned=c.chance(15),
        early=c.chance(10),
        probe=c.chance(30),
        interim=c.chance(10),
        force_body=c.odd(),
    )


@st.composite
def client_cases(draw):
    max_head = draw(st.sampled_from([512, 32 * 1024]))
    max_target = draw(st.sampled_from([24, 8 * 1024]))
    messages, replies = [], []
    for _ in range(draw(st.integers(1, 3))):
        c = Choices(draw, draw(st.sampled_from(RATES)))
        messages.append(request_message(c, max_head, max_target))
        replies.append(reply(c))
    c = Choices(draw, 3)
    prefix = c.pick([b""], [b"\r\n", b" ", b"\n"])
    stream = prefix + b"".join(m.head + m.body for m in messages)
    if len(stream) < 400 and c.chance(10):
        reads = [stream[i:i + 1] for i in range(len(stream))]
    else:
        reads = feeds(stream, draw(st.lists(st.integers(0, len(stream)),
                                            max_size=6)))
    return {
        "limits": (max_head, max_target),
        "reads": reads,
        "eof": c.chance(40),
        "replies": replies,
        "error_body": b"maitred: bad request\n",
        "lenient": set().union(*(m.lenient for m in messages)),
    }


@FUZZ
@given(client_cases())
def test_client_codecs_agree_on_generated_request_streams(case):
    traces = [
        ClientDriver(engine, case["replies"], case["error_body"]).run(
            case["reads"], case["eof"]
        )
        for engine in engines(*case["limits"])
    ]
    assert_agree(*traces, case["lenient"])


# -- the upstream side: a driver -------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: bytes = b"GET"
    target: bytes = b"/"
    headers: tuple = ((b"Host", b"origin.test"),)
    length: int | None = None
    chunked: bool = False
    pieces: tuple = ()


class UpstreamDriver:
    """Drives an upstream codec the way proxy/client.py does."""

    def __init__(self, engine, requests: list[Request], probe: bool) -> None:
        self.codec = engine.upstream_codec()
        self.requests = requests
        self.probe = probe
        self.sent = 0
        self.trace = Trace()
        self.done = False

    def run(self, reads: list[bytes], eof: bool) -> Trace:
        self.send()
        for data in reads + [b""] * eof:
            if self.done:
                break
            self.codec.receive(data)
            self.pump()
        return self.trace

    def send(self) -> None:
        request = self.requests[self.sent]
        self.sent += 1
        codec = self.codec
        try:
            self.out(codec.request_head(
                request.method, request.target, list(request.headers),
                request.length, request.chunked,
            ))
            for piece in request.pieces:
                self.out(codec.body(piece))
            self.out(codec.end())
        except HttpError:
            raise
        except Exception:
            self.trace.add("send-error")
            self.done = True

    def out(self, data: bytes) -> None:
        self.trace.add(("out", data))

    def pump(self) -> None:
        while not self.done:
            try:
                event = self.codec.next_event()
            except UpstreamError:
                self.trace.add(("error", "upstream"))
                self.done = True
                return
            if type(event) is bytes:
                self.trace.add(event)
            elif event is NEED_DATA or event is PAUSED:
                self.trace.add(repr(event))
                return
            elif event is END:
                self.message_end()
            else:
                self.trace.add(response_fields(event))

    def message_end(self) -> None:
        self.trace.add("END")
        if self.probe:
            try:
                self.trace.add(("probe", repr(self.codec.next_event())))
            except UpstreamError:
                self.trace.add(("error", "upstream"))
                self.done = True
                return
        reusable = self.codec.reusable
        self.trace.add(("reusable", reusable))
        if not reusable or self.sent == len(self.requests):
            self.done = True
            return
        self.codec.next_cycle()
        self.send()


REQUEST_FIELDS = [
    (b"Accept", b"*/*"),
    (b"X-Forwarded-For", b"10.0.0.1, 127.0.0.1"),
    (b"Connection", b"close"),
    (b"Upgrade", b"websocket"),
    (b"Cookie", b"a=1; b=2"),
]


def upstream_request(c: Choices) -> Request:
    pieces = tuple(c.draw(st.lists(st.binary(min_size=1, max_size=5),
                                   max_size=2)))
    framing = c.pick(["none", "length", "chunked"])
    fields = [(b"Host", b"origin.test"), *c.draw(st.lists(
        st.sampled_from(REQUEST_FIELDS), max_size=2, unique=True))]
    return Request(
        method=c.pick([b"GET", b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS"]),
        target=c.pick([b"/", b"/x?y=1", b"*"]),
        headers=tuple(c.draw(st.permutations(fields))),
        length=sum(map(len, pieces)) if framing == "length" else None,
        chunked=framing == "chunked",
        pieces=pieces if framing != "none" else (),
    )


STATUS_CODES = [b"200"] * 6 + [b"201", b"204", b"304", b"404", b"500",
                               b"199", b"999"]
ODD_STATUS_CODES = [b"101", b"099", b"000", b"20", b"2000"]
REASON_PHRASES = [b" OK"] * 4 + [b"", b" ", b" Not  Found ", b" a\tb",
                                 b" caf\xc3\xa9"]
ODD_REASON_PHRASES = [b" x\x01y", b"OK", b" \x00"]
RESPONSE_VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/2.0",
                                         b"HTTP/0.9"]
ODD_RESPONSE_VERSIONS = [b"HTTP/1.x", b"HTTP/1.1 ", b"HTTP/1"]


def response_message(c: Choices, interim: bool = False) -> Message:
    if interim:
        status = c.pick([b"100", b"103"], [b"101"])
    else:
        status = c.pick(STATUS_CODES, ODD_STATUS_CODES)
    reason = c.pick(REASON_PHRASES, ODD_REASON_PHRASES)
    start = c.pick(RESPONSE_VERSIONS, ODD_RESPONSE_VERSIONS) + b" " + status
    start += reason
    lenient: set = set()
    lines = [field_line(c) for _ in range(c.draw(st.integers(0, 4)))]
    framing = "none" if interim else c.pick(
        ["none", "length", "length", "chunked", "chunked"], ["both"])
    body = b""
    if framing in ("length", "both"):
        body = length_body(c, lines, lenient)
    if framing in ("chunked", "both"):
        body = chunked_body(c, lines, lenient, UPSTREAM_LIMIT)
    if framing == "none" and not interim and c.chance(50):
        body = c.draw(st.binary(max_size=8))
    lines = list(c.draw(st.permutations(lines)))
    if lines and c.odd():
        lines.insert(c.draw(st.integers(1, len(lines))), b" folded")
        lenient.add("upstream")  # obs-fold in a response head
    if c.chance(2):
        pad_to(c, lines, len(start) + 4 + sum(len(x) + 2 for x in lines),
               UPSTREAM_LIMIT)
    if lenient_controls([reason, *lines]):
        lenient.add("upstream")
    head = lines_to_bytes(c, [start, *lines]) + c.pick(BLANK_LINES)
    if len(head) > UPSTREAM_LIMIT:
        lenient.add("upstream")
    return Message(head, body, {"upstream"} if lenient else set())


@st.composite
def upstream_cases(draw):
    exchanges = draw(st.integers(1, 2))
    messages, requests = [], []
    for _ in range(exchanges):
        c = Choices(draw, draw(st.sampled_from(RATES)))
        requests.append(upstream_request(c))
        if c.chance(15):
            messages.append(response_message(c, interim=True))
        messages.append(response_message(c))
    stream = b"".join(m.head + m.body for m in messages)
    c = Choices(draw, 0)
    return {
        "requests": requests,
        "reads": feeds(stream, draw(st.lists(st.integers(0, len(stream)),
                                             max_size=6))),
        "eof": c.chance(50),
        "probe": c.chance(30),
        "lenient": set().union(*(m.lenient for m in messages)),
    }


@FUZZ
@given(upstream_cases())
def test_upstream_codecs_agree_on_generated_response_streams(case):
    traces = [
        UpstreamDriver(engine, case["requests"], case["probe"]).run(
            case["reads"], case["eof"]
        )
        for engine in engines()
    ]
    assert_agree(*traces, case["lenient"])


# -- serialising: the same bytes for the same inputs and states ------------------


@st.composite
def exchanges(draw):
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
    close = draw(chances(30))
    request = b"%s / HTTP/%s\r\nHost: h\r\n%s\r\n" % (
        method, version, b"Connection: close\r\n" if close else b"")
    pieces = draw(st.lists(st.sampled_from([1, 9, 10, 15, 16, 255, 256]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)), max_size=3))
    headers = draw(st.lists(st.sampled_from(REPLY_FIELDS), max_size=5))
    status = draw(st.sampled_from([100, 103, 200, 204, 304, 404]))
    length = draw(st.sampled_from([None, sum(map(len, pieces))]))
    chunked = draw(chances(30))
    return request, status, length, chunked, headers, pieces


@settings(FUZZ, max_examples=200)
@given(exchanges())
def test_response_heads_and_bodies_are_written_alike(exchange):
    request, status, length, chunked, headers, pieces = exchange
    written = []
    for engine in engines():
        codec = engine.client_codec()
        codec.receive(request)
        codec.next_event()
        head = ResponseHead(status, b"Fine", b"1.1", [], length, chunked, True)
        try:
            out = [codec.response_head(head, list(headers))]
            if status >= 200:
                out.extend(codec.body(piece) for piece in pieces)
                out.append(codec.end())
        except Exception:  # h11 raises LocalProtocolError, ours ValueError
            out = ["refused"]
        written.append(out)
    assert written[0] == written[1]


@pytest.mark.parametrize("state", ["fresh", "request read", "body read",
                                   "response sent"])
@pytest.mark.parametrize("close", [False, True])
def test_canned_responses_are_written_alike(state, close):
    headers = [(b"Content-Type", b"text/plain"), (b"Retry-After", b"1"),
               (b"X-Maitred-Shed", b"queue_full")]
    if close:
        headers.append((b"Connection", b"close"))
    request = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab"
    written = []
    for engine in engines():
        codec = engine.client_codec()
        if state != "fresh":
            codec.receive(request)
            codec.next_event()
        if state in ("body read", "response sent"):
            assert codec.next_event() == b"ab"
            assert codec.next_event() is END
        if state == "response sent":
            head = ResponseHead(200, b"OK", b"1.1", [], 0, False, True)
            codec.response_head(head, [])
        written.append(codec.canned(503, b"Service Unavailable",
                                    list(headers), b"busy\n"))
    assert written[0] == written[1]


def test_continue_is_written_as_h11_writes_it():
    # The h11 codec's continue_() cannot be called (it builds its 100
    # without headers, a TypeError), so the comparison is with h11 itself.
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue"
                      b"\r\nContent-Length: 1\r\n\r\n")
    conn.next_event()
    expected = conn.send(h11.InformationalResponse(status_code=100,
                                                   headers=[]))
    compiled, _ = engines()
    codec = compiled.client_codec()
    with pytest.raises(RuntimeError):
        codec.continue_()  # no request yet
    codec.receive(b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                  b"Content-Length: 1\r\n\r\nx")
    assert codec.next_event().expect_continue
    assert codec.continue_() == expected
    assert codec.next_event() == b"x"


@pytest.mark.parametrize("eof", [False, True])
@pytest.mark.parametrize("upgrade", [b"websocket", b" , "])
def test_upgrade_offer_pauses_until_answered(upgrade, eof):
    reads = [b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: %s\r\n\r\n" % upgrade]
    traces = [ClientDriver(engine, [Reply(probe=True)], b"").run(reads, eof)
              for engine in engines()]
    assert traces[0] == traces[1]
    # An empty offer (only commas) is no offer; EOF comes after the probe.
    probe = "PAUSED" if upgrade.strip(b" ,") else "NEED_DATA"
    assert ("probe", probe) in traces[0]


@pytest.mark.parametrize("offer", [False, True])
def test_switching_protocols_needs_an_upgrade_offer(offer):
    fields = [(b"Host", b"o")] + [(b"Upgrade", b"websocket")] * offer
    results = []
    for engine in engines():
        codec = engine.upstream_codec()
        codec.request_head(b"GET", b"/", list(fields), None, False)
        codec.end()
        codec.receive(b"HTTP/1.1 101 Switching Protocols\r\n"
                      b"Upgrade: websocket\r\n\r\nraw bytes")
        try:
            results.append((codec.next_event().status, codec.next_event(),
                            codec.reusable))
        except UpstreamError:
            results.append("refused")
    assert results[0] == results[1] == (
        [(101, PAUSED, False)] if offer else ["refused"])[0]


def test_upstream_request_heads_are_written_alike():
    fields = [(b"Accept", b"*/*"), (b"Host", b"origin.test"),
              (b"X-Forwarded-For", b"10.0.0.1")]
    for length, chunked in ((None, False), (5, False), (None, True)):
        written = [
            engine.upstream_codec().request_head(
                b"PUT", b"/x", list(fields), length, chunked)
            for engine in engines()
        ]
        assert written[0] == written[1]
        assert written[0].startswith(b"PUT /x HTTP/1.1\r\nHost: origin.test")


# -- forwarding a head from its spans ------------------------------------------
#
# forward_request and forward_response write a parsed head straight from
# the bytes it arrived in. They must write what the list path writes
# (request_head / response_head over end_to_end's fields), leave the codec
# in the same state, and agree with the reference engine.

FORWARD_NAMES = [
    b"Accept", b"X-A", b"Host", b"host", b"Connection", b"connection",
    b"Keep-Alive", b"Close", b"X-Forwarded-For", b"x-forwarded-for",
    b"X-Forwarded-Proto", b"X-Forwarded-Host", b"TE", b"Upgrade",
    b"Proxy-Connection", b"Trailer", b"Server", b"Date",
]
FORWARD_VALUES = [
    b"v", b"", b"  spaced  ", b"close", b"keep-alive", b"Keep-Alive, close",
    b"x-a", b"close, x-a", b"10.0.0.1", b"a b", b"\xe9t\xe9",
]


@st.composite
def forwarded_fields(draw, request: bool) -> list[tuple[bytes, bytes]]:
    fields = draw(st.lists(
        st.tuples(st.sampled_from(FORWARD_NAMES),
                  st.sampled_from(FORWARD_VALUES)),
        max_size=7,
    ))
    hosts = [i for i, (name, _) in enumerate(fields) if name.lower() == b"host"]
    # A request carries one valid Host; a response may carry any.
    if request:
        fields = [f for i, f in enumerate(fields) if i not in hosts[1:]]
        fields = [(n, b"h.test") if n.lower() == b"host" else (n, v)
                  for n, v in fields] or [(b"Host", b"h.test")]
        if not any(n.lower() == b"host" for n, _ in fields):
            fields.append((b"Host", b"h.test"))
    framing = draw(st.sampled_from(["none", "length", "chunked"]))
    if framing == "length":
        fields.append((b"Content-Length", b"%d" % draw(st.integers(0, 99))))
    elif framing == "chunked":
        fields.append((b"Transfer-Encoding", b"chunked"))
    return fields


def head_bytes(start: bytes, fields) -> bytes:
    lines = [start] + [name + b": " + value for name, value in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parsed(codec, data: bytes):
    codec.receive(data)
    return codec.next_event()


@settings(FUZZ, max_examples=300)
@given(forwarded_fields(request=True),
       st.sampled_from([None, b"site.test"]),
       st.sampled_from([b"GET", b"POST", b"HEAD"]))
def test_forward_request_writes_what_the_list_path_writes(fields, host,
                                                          method):
    compiled, reference = engines()
    head = parsed(compiled.client_codec(),
                  head_bytes(method + b" /p HTTP/1.1", fields))
    args = (b"/p", host, b"127.0.0.1", b"backend:80")
    direct = compiled.upstream_codec()
    written = direct.forward_request(head, *args)
    listed = compiled.upstream_codec()
    expected = listed.request_head(
        head.method, b"/p",
        upstream_fields(head.headers, host, b"127.0.0.1", b"backend:80"),
        head.content_length, head.chunked,
    )
    assert written == expected
    assert reference.upstream_codec().forward_request(head, *args) == written
    assert direct.body(b"x" * (head.content_length or 0)) == listed.body(
        b"x" * (head.content_length or 0))
    assert direct.end() == listed.end()


@settings(FUZZ, max_examples=300)
@given(forwarded_fields(request=False),
       st.sampled_from([200, 204, 304, 404, 103]),
       st.sampled_from([b"GET / HTTP/1.1", b"HEAD / HTTP/1.1",
                        b"GET / HTTP/1.0", b"GET / HTTP/1.1\r\n"
                        b"Connection: close"]),
       st.booleans())
def test_forward_response_writes_what_the_list_path_writes(fields, status,
                                                           request, close):
    compiled, reference = engines()
    upstream = compiled.upstream_codec()
    upstream.request_head(b"GET", b"/", [(b"Host", b"o")], None, False)
    upstream.end()
    try:
        head = parsed(upstream, head_bytes(b"HTTP/1.1 %d Fine" % status,
                                           fields))
    except UpstreamError:
        return  # a head the parser refuses is not forwarded
    if status == 204:
        head.content_length = None  # as the data path does
    codecs = []
    for engine in (compiled, compiled, reference):
        codec = engine.client_codec()
        parsed(codec, request + b"\r\nHost: h\r\n\r\n")
        codec.next_event()
        codecs.append(codec)
    direct, listed, h11 = codecs
    written = direct.forward_response(head, close)
    headers = end_to_end(head.headers)
    if close:
        headers.append((b"Connection", b"close"))
    assert _heads.response_fields(head.headers, close) == headers
    assert written == listed.response_head(head, headers)
    assert written == h11.forward_response(head, close)
    if status >= 200 and not request.startswith(b"HEAD") and status not in (
            204, 304):
        length = head.content_length
        piece = b"xyz" if length is None else b"x" * length
        assert direct.body(piece) == listed.body(piece)
        assert direct.end() == listed.end()
        assert direct.next_cycle() == listed.next_cycle()


def test_forwarding_a_head_of_many_long_fields_writes_them_all():
    compiled, reference = engines(max_head=256 * 1024)
    fields = [(b"X-F%d" % i, b"v" * (i % 97)) for i in range(600)]
    fields += [(b"X-Forwarded-For", b"10.0.0.%d" % i) for i in range(40)]
    request = parsed(compiled.client_codec(), head_bytes(
        b"GET / HTTP/1.1", [(b"Host", b"h.test"), *fields]))
    written = compiled.upstream_codec().forward_request(
        request, b"/", b"h.test", b"127.0.0.1", b"b")
    assert written == reference.upstream_codec().forward_request(
        request, b"/", b"h.test", b"127.0.0.1", b"b")
    assert len(re.findall(rb"\r\nX-F\d+: ", written)) == 600
    assert b"10.0.0.39, 127.0.0.1\r\n" in written

    upstream = compiled.upstream_codec()
    upstream.request_head(b"GET", b"/", [(b"Host", b"o")], None, False)
    upstream.end()
    response = parsed(upstream, head_bytes(
        b"HTTP/1.1 200 OK", [*fields, (b"Content-Length", b"0")]))
    client = compiled.client_codec()
    parsed(client, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    client.next_event()
    written = client.forward_response(response, False)
    assert len(re.findall(rb"\r\nX-F\d+: ", written)) == 600
    assert written.endswith(b"\r\nContent-Length: 0\r\n\r\n")


# -- decisions and documented differences (docs/http-engines.md) ---------------


def run_client(engine, data: bytes, reads: int = 1) -> list:
    """Feed `data` in `reads` pieces; the events, or the error status."""
    codec = engine.client_codec()
    size = -(-len(data) // reads)
    events = []
    try:
        for i in range(0, len(data), size):
            codec.receive(data[i:i + size])
            while (event := codec.next_event()) not in (NEED_DATA, PAUSED):
                events.append(event if type(event) is bytes or event is END
                              else "head")
                if event is END:
                    break
    except HttpError as err:
        events.append(err.status)
    return events


def run_upstream(engine, data: bytes, method: bytes = b"GET"):
    codec = engine.upstream_codec()
    codec.request_head(method, b"/", [(b"Host", b"o")], None, False)
    codec.end()
    codec.receive(data)
    events = []
    try:
        while (event := codec.next_event()) not in (NEED_DATA, PAUSED):
            events.append(event)
            if event is END:
                break
    except UpstreamError:
        events.append("refused")
    return events, codec


def both(run, *args):
    compiled, reference = engines()
    return run(compiled, *args), run(reference, *args)


@pytest.mark.parametrize(("fields", "status"), [
    ([b"Content-Length: 5, 5"], None),
    ([b"Content-Length: 5", b"content-length: 5"], None),
    ([b"Content-Length: 5", b"Content-Length: 05"], 400),
    ([b"Content-Length: 5,6"], 400),
    ([b"Content-Length: 5, "], 400),
    ([b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"], 501),
    ([b"Transfer-Encoding: gzip, chunked"], 501),
    ([b"Transfer-Encoding: Chunked"], None),
    ([b"Transfer-Encoding: chunked", b"Content-Length: 5"], 400),
    ([b"Transfer-Encoding: gzip", b"Content-Length: x"], 501),
    ([b"Content-Length: x", b"Transfer-Encoding: gzip"], 400),
    ([b"Transfer-Encoding: gzip", b"Bad Name: x"], 400),
    ([b"Host: b"], 400),
    ([b"Transfer-Encoding: gzip", b"Host: b"], 501),
])
def test_framing_fields_get_the_same_status(fields, status):
    body = b"0\r\n\r\n" if b"chunked" in b"".join(fields) else b"hello"
    request = b"POST / HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n%s" % (
        b"\r\n".join(fields), body)
    compiled, reference = both(run_client, request)
    assert compiled == reference
    assert compiled[-1] == status if status else compiled[0] == "head"


def test_host_is_required_in_http_1_1_only():
    for version, status in ((b"1.1", [400]), (b"1.0", ["head", END])):
        request = b"GET / HTTP/%s\r\nAccept: */*\r\n\r\n" % version
        assert both(run_client, request) == (status, status)


def test_lone_lf_line_endings_are_accepted_in_heads_and_trailers():
    data = (b"POST /x HTTP/1.1\nHost: h\nTransfer-Encoding: chunked\n\n"
            b"2\r\nab\r\n0\r\nX-T: 1\n\n")
    assert both(run_client, data) == (["head", b"ab", END],) * 2
    # What goes upstream is written with CRLF, whatever the client used.
    compiled, _ = engines()
    codec = compiled.upstream_codec()
    head = codec.request_head(b"GET", b"/", [(b"Host", b"h")], None, False)
    assert head == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_chunk_size_lines_and_data_need_crlf():
    lone_lf_size = (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
                    b"chunked\r\n\r\n2\nab\r\n0\r\n\r\n")
    lone_lf_data = lone_lf_size.replace(b"2\nab\r\n", b"2\r\nab\n")
    assert both(run_client, lone_lf_size) == (["head", 400],) * 2
    assert both(run_client, lone_lf_data) == (["head", b"ab", 400],) * 2


def test_request_head_over_max_head_is_431_whatever_the_reads():
    compiled, reference = engines(max_head=1024)
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: "
    head += b"p" * (1024 - len(head) - 4) + b"\r\n\r\n"
    assert len(head) == 1024
    for reads in (1, 3, len(head)):
        assert run_client(compiled, head, reads) == ["head", END]
        too_long = head.replace(b"X-Pad: ", b"X-Pad: p")
        assert run_client(compiled, too_long, reads) == [431]
        assert run_client(reference, too_long, reads) == [431]


def test_long_chunk_size_lines_and_trailers_are_431_whatever_the_reads():
    # Difference: h11 takes a long line or trailer section that arrives in
    # one read and refuses it (431) only when split across reads.
    compiled, reference = engines(max_head=1024)
    start = (b"POST / HTTP/1.1\r\nHost: h\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n")
    long_line = b"1;e=" + b"x" * 1100 + b"\r\na\r\n0\r\n\r\n"
    long_trailer = b"0\r\nX-T: " + b"x" * 1100 + b"\r\n\r\n"
    assert run_client(compiled, start + long_line) == ["head", 431]
    assert run_client(reference, start + long_line) == ["head", b"a", END]
    assert run_client(compiled, start + long_trailer) == ["head", 431]
    assert run_client(reference, start + long_trailer) == ["head", END]
    # Split into small reads, both refuse it.
    assert run_client(reference, start + long_line, 16) == ["head", 431]


@pytest.mark.parametrize("byte", sorted(LENIENT_CONTROLS))
def test_control_bytes_in_field_values_are_refused(byte):
    # Difference: h11 takes \x01-\x08, \x0e-\x1f and \x7f in values and
    # reason phrases (RFC 9110 5.5 makes them invalid).
    ctl = bytes([byte])
    request = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a%sb\r\n\r\n" % ctl
    assert both(run_client, request) == ([400], ["head", END])
    trailer = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n0\r\nX-T: %s\r\n\r\n" % ctl)
    assert both(run_client, trailer) == (["head", 400], ["head", END])
    response = b"HTTP/1.1 200 O%sK\r\nContent-Length: 0\r\n\r\n" % ctl
    compiled, reference = both(run_upstream, response)
    assert compiled[0] == ["refused"]
    assert reference[0][0].reason == b"O%sK" % ctl


@pytest.mark.parametrize("byte", [0x00, 0x0B, 0x0C, 0x0D])
def test_nul_cr_and_other_whitespace_in_values_are_refused_by_both(byte):
    request = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a%sb\r\n\r\n" % bytes(
        [byte])
    assert both(run_client, request) == ([400], [400])


def test_transfer_encoding_in_http_1_0_is_refused_by_both():
    request = (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"0\r\n\r\n")
    assert both(run_client, request) == ([400], [400])


@pytest.mark.parametrize("extra", [-1, 0, 1, 2])
def test_heads_at_the_limit_dribbled_byte_by_byte_agree(extra):
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: "
    head += b"p" * (512 + extra - len(head) - 4) + b"\r\n\r\n"
    reads = [head[i:i + 1] for i in range(len(head))]
    traces = [ClientDriver(engine, [], b"").run(reads, False)
              for engine in engines(max_head=512)]
    assert traces[0] == traces[1]
    assert (("error", 431) in traces[0]) == (extra > 0)


@pytest.mark.parametrize("line", [
    b"5;a", b"5;a=b", b'5;a="q \\" s"', b"5; a = b", b"5;a=b ;c=d",
    b"00005", b"5;A-1=tok!",
])
def test_chunk_extensions_by_rfc_9112_are_accepted(line):
    request = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n" + line + b"\r\nhello\r\n0\r\n\r\n")
    assert both(run_client, request) == (["head", b"hello", END],) * 2


@pytest.mark.parametrize("line", [
    b"5 ", b"5\t", b"5;a ", b"5;", b"5;=b", b"5;a=", b'5;a="open',
    b"5;a=b\x00", b"5;a=\rb", b"5;\x7f", b'5;a="\x01"',
])
def test_chunk_extensions_h11_lets_through_are_refused(line):
    # Difference: h11 reads anything after ";" up to the CRLF, and
    # whitespace after the size.
    request = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n" + line + b"\r\nhello\r\n0\r\n\r\n")
    assert both(run_client, request) == (["head", 400],
                                         ["head", b"hello", END])


@pytest.mark.parametrize("line", [b" 5", b"-5", b"0x5", b"", b"5 ;a",
                                  b"000000000000000000005"])
def test_malformed_chunk_sizes_are_refused_by_both(line):
    request = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n" + line + b"\r\nhello\r\n0\r\n\r\n")
    assert both(run_client, request) == (["head", 400],) * 2


def test_lengths_of_2_to_the_63_or_more_are_refused():
    # Difference: h11 takes up to 20 digits as a Python int.
    largest = b"9223372036854775807"
    request = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n"
    assert both(run_client, request % largest) == (["head"], ["head"])
    assert both(run_client, request % b"9223372036854775808") == (
        [400], ["head"])
    chunked = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n8000000000000000\r\nabc")
    assert both(run_client, chunked) == (["head", 400], ["head", b"abc"])


def test_obs_fold_is_refused_in_trailers_and_response_heads():
    # Difference: the reference refuses folds in request heads only; h11
    # unfolds them elsewhere.
    trailer = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n0\r\nX-T: a\r\n b\r\n\r\n")
    assert both(run_client, trailer) == (["head", 400], ["head", END])
    folded_head = b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"
    assert both(run_client, folded_head) == ([400], [400])
    response = b"HTTP/1.1 200 OK\r\nX: a\r\n\tb\r\nContent-Length: 0\r\n\r\n"
    compiled, reference = both(run_upstream, response)
    assert compiled[0] == ["refused"]
    assert reference[0][0].headers == [(b"X", b"a b"),
                                       (b"Content-Length", b"0")]


def test_response_with_length_and_chunked_framing_is_not_pooled():
    # Framed by Transfer-Encoding (RFC 9112 6.3), but a backend that sends
    # both may mean the other: its connection is not used again.
    response = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    for events, codec in both(run_upstream, response):
        assert events[0].chunked and events[1:] == [b"abc", END]
        assert not codec.reusable


def test_response_keep_alive_describes_the_response():
    # The h11 engine reports keep_alive True on every response head.
    response = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    compiled, reference = both(run_upstream, response)
    assert compiled[0][0].keep_alive is False
    assert reference[0][0].keep_alive is True
    assert compiled[1].reusable is reference[1].reusable is False


def test_canned_answer_to_head_is_the_head_alone():
    written = []
    for engine in engines():
        codec = engine.client_codec()
        codec.receive(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        codec.next_event()
        written.append(codec.canned(503, b"Service Unavailable", [], b"busy"))
    assert written[0] == written[1] == (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\n")


def test_head_response_relays_declared_length_without_body():
    compiled, reference = engines()
    results = []
    for engine in (compiled, reference):
        events, codec = run_upstream(
            engine, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", b"HEAD")
        results.append(([e if e is END else e.content_length for e in events],
                        codec.reusable))
    assert results[0] == results[1] == ([5000, END], True)
