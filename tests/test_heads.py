"""The compiled message heads and forwarding rules (proxy/_heads.pyx)."""

import importlib
import importlib.machinery
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._heads import (
    RequestHead,
    ResponseHead,
    end_to_end,
    upstream_fields,
    valid_host,
)


@pytest.mark.parametrize(
    "module", ["proxy._heads", "proxy.client", "proxy.upstream", "proxy.target"]
)
def test_the_data_path_modules_are_compiled(module):
    # A build that fell back to the plain Python files would still pass
    # every other test, at a fraction of the speed.
    path = importlib.import_module(module).__file__
    assert path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), path


# The reference grammar for a Host value: a reg-name or an IP literal in
# brackets, then an optional port of up to five digits.
HOST_GRAMMAR = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]{0,5})?"
)
HOST_BYTES = st.sampled_from(list(b"aZ09.-_~%!$&'()*+,;=[]:/@ ?#\t\x00\x7f\xff"))


@settings(max_examples=2000, deadline=None)
@given(st.lists(HOST_BYTES, max_size=12).map(bytes))
def test_valid_host_agrees_with_the_reference_grammar(host):
    assert valid_host(host) == bool(HOST_GRAMMAR.fullmatch(host))


def test_valid_host_takes_names_literals_and_ports():
    assert valid_host(b"example.com:8080")
    assert valid_host(b"[::1]:443")
    assert valid_host(b"")
    assert not valid_host(b"example.com:123456")
    assert not valid_host(b"a b")
    assert not valid_host(b"user@example.com")
    assert not valid_host(b"[]")


def test_end_to_end_drops_hop_by_hop_and_connection_named_fields():
    headers = [
        (b"Keep-Alive", b"timeout=5"),
        (b"Connection", b"keep-alive, X-Secret, X-Forwarded-For"),
        (b"X-Secret", b"1"),
        (b"Content-Length", b"3"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Accept", b"*/*"),
    ]
    assert end_to_end(headers) == [
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"Accept", b"*/*"),
    ]


# The reference model of end_to_end: RFC 9110 7.6.1 read plainly.
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
    b"upgrade", b"content-length",
}
PROXY_OWNED = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}


def reference_end_to_end(headers):
    named = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named |= {token.strip(b" \t").lower()
                      for token in value.split(b",")}
    dropped = HOP_BY_HOP | (named - PROXY_OWNED)
    return [(n, v) for n, v in headers if n.lower() not in dropped]


NAMES = st.sampled_from([
    b"Connection", b"connection", b"Keep-Alive", b"Close", b"close", b"TE",
    b"X-Forwarded-For", b"Host", b"Accept", b"X-A", b"Content-Length",
    b"Upgrade", b"Proxy-Connection",
])
TOKENS = st.sampled_from([
    b"close", b"Close", b"keep-alive", b"KEEP-ALIVE", b"x-a", b"accept",
    b"x-forwarded-for", b"host", b"", b" upgrade ",
])
FIELD = st.tuples(
    NAMES,
    st.one_of(st.lists(TOKENS, max_size=3).map(b",".join),
              st.just(b"value")),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(FIELD, max_size=6))
def test_end_to_end_agrees_with_the_reference_model(headers):
    assert end_to_end(headers) == reference_end_to_end(headers)


def test_a_close_option_drops_a_field_named_close_only_when_listed():
    close_field = (b"Close", b"x")
    assert end_to_end([(b"Connection", b"close"), close_field]) == []
    assert end_to_end([(b"Connection", b"keep-alive"), close_field]) == [
        close_field
    ]


def test_upstream_fields_set_host_and_forwarded_fields_once():
    headers = [
        (b"host", b"site"),
        (b"X-Forwarded-For", b"1.1.1.1"),
        (b"x-forwarded-for", b"2.2.2.2"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"evil"),
        (b"Accept", b"*/*"),
    ]
    assert upstream_fields(headers, b"site", b"127.0.0.1", b"backend") == [
        (b"Accept", b"*/*"),
        (b"Host", b"site"),
        (b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2, 127.0.0.1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", b"site"),
    ]


def test_upstream_fields_skip_empty_forwarded_for_values():
    headers = [(b"X-Forwarded-For", b""), (b"X-Forwarded-For", b"1.1.1.1")]
    fields = dict(upstream_fields(headers, b"h", b"127.0.0.1", b"b"))
    assert fields[b"X-Forwarded-For"] == b"1.1.1.1, 127.0.0.1"
    fields = dict(upstream_fields(headers[:1], b"h", b"127.0.0.1", b"b"))
    assert fields[b"X-Forwarded-For"] == b"127.0.0.1"


def test_upstream_fields_without_a_host_send_the_backends_own():
    assert upstream_fields([], None, b"::1", b"backend:8000") == [
        (b"Host", b"backend:8000"),
        (b"X-Forwarded-For", b"::1"),
        (b"X-Forwarded-Proto", b"http"),
    ]


def test_heads_read_their_host_and_body():
    head = RequestHead(b"POST", b"/", b"1.1", [(b"HOST", b"a")], 0, False,
                       True, False)
    assert head.host == b"a"
    assert not head.has_body
    head.content_length = 5
    assert head.has_body
    response = ResponseHead(204, b"No Content", b"1.1", [], None, False, True)
    assert response.status == 204
