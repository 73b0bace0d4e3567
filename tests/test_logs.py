"""The access log: off by default, one line per request when turned on."""

from __future__ import annotations

import json
import logging

import pytest
from wire import Reader, get, request

from proxy.logs import ACCESS, access_logger


@pytest.fixture
def access_on():
    level = ACCESS.level
    ACCESS.setLevel(logging.INFO)
    yield
    ACCESS.setLevel(level)


def test_access_log_is_off_by_default():
    assert not ACCESS.isEnabledFor(logging.INFO)
    assert access_logger("text") is None


def test_access_log_writes_one_text_line_per_request(access_on, start_proxy,
                                                     caplog):
    harness = start_proxy()
    caplog.set_level(logging.INFO, logger="maitred.access")
    assert request(harness.port, get("/hello")).status == 200
    harness.wait_for(lambda s: s["requests"]["proxied"] == 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "maitred.access"]
    assert len(lines) == 1
    assert lines[0].startswith('127.0.0.1 "GET /hello HTTP/1.1" 200 proxied ')


def test_access_log_records_sheds_in_json(access_on, caplog):
    caplog.set_level(logging.INFO, logger="maitred.access")
    write = access_logger("json")

    class Head:
        method, target, version = b"GET", b"/x", b"1.1"

    write(b"::1", Head, 503, "shed", 0.0001)
    line = json.loads(caplog.records[-1].getMessage())
    assert line == {"client": "::1", "method": "GET", "target": "/x",
                    "version": "1.1", "status": 503, "outcome": "shed",
                    "seconds": 0.0001}


def test_access_log_records_the_status_of_a_request_cut_mid_body(
    access_on, start_proxy, caplog
):
    harness = start_proxy(**{"timeouts.client_body": "200ms"})
    caplog.set_level(logging.INFO, logger="maitred.access")
    with harness.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab")
        assert Reader(sock).response().status == 408
    harness.wait_for(lambda s: s["requests"]["bad_request"] == 1)
    lines = [r.getMessage() for r in caplog.records if r.name == "maitred.access"]
    assert len(lines) == 1
    assert '" 408 bad_request ' in lines[0]
