"""``GET /metrics``: parsed with prometheus-client's own parser, the names
DESIGN.md promises, and counts that add up to what the test sent.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from wire import Reader, get, request

from proxy._core import OUTCOMES, SHED_REASONS
from proxy.config import LIVE_KEYS

GET_METRICS = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n"
PATCH_CAP_TO_5 = (
    b"PATCH /limits HTTP/1.1\r\nHost: admin\r\n"
    b"Content-Type: application/json\r\nContent-Length: 22\r\n\r\n"
    b'{"max_concurrency": 5}'
)

GET_OK = get("/")
GET_50MS = get("/?delay=50")
GET_300MS = get("/?delay=300")
GET_400MS = get("/?delay=400")

SERVICE_TIME = 0.05
# uvloop's timers have millisecond resolution: a 50 ms sleep may end a
# hair early by the monotonic clock.
CLOCK_SLACK = 0.002


def scrape(admin) -> dict:
    """Every sample of one scrape: {(name, sorted labels): value}."""
    response = request(admin.address[1], GET_METRICS)
    assert response.status == 200
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def by_label(samples: dict, name: str, label: str) -> dict[str, float]:
    return {
        dict(labels)[label]: v
        for (sample, labels), v in samples.items()
        if sample == name
    }


def buckets(samples: dict, name: str) -> list[tuple[float, float]]:
    """A histogram's (upper bound, cumulative count), in bound order."""
    found = [
        (float(dict(labels)["le"]), v)
        for (sample, labels), v in samples.items()
        if sample == f"{name}_bucket"
    ]
    return sorted(found)


def send_held(harness, raws: list[bytes]) -> list[socket.socket]:
    socks = []
    for raw in raws:
        sock = harness.connect()
        sock.sendall(raw)
        socks.append(sock)
    return socks


def read_and_close(socks: list[socket.socket]) -> list:
    try:
        return [Reader(sock).response() for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def test_metrics_are_served_as_prometheus_text(start_proxy, start_admin):
    admin = start_admin(start_proxy())

    response = request(admin.address[1], GET_METRICS)

    assert response.status == 200
    content_type = response.header("content-type")
    assert content_type.startswith("text/plain; version=0.0.4")


def test_every_documented_name_is_exported(start_proxy, start_admin):
    admin = start_admin(start_proxy())

    response = request(admin.address[1], GET_METRICS)
    families = {
        family.name: family
        for family in text_string_to_metric_families(response.body.decode())
    }
    samples = scrape(admin)

    assert families["maitred_requests"].type == "counter"
    assert families["maitred_shed"].type == "counter"
    assert set(by_label(samples, "maitred_requests_total", "outcome")) == {
        "proxied", "shed", "bad_request", "upstream_error", "upstream_timeout",
        "upstream_truncated", "client_abort_queued", "client_abort_inflight",
    }
    assert set(by_label(samples, "maitred_shed_total", "reason")) == {
        "queue_full", "queue_timeout", "connections", "draining",
    }
    for gauge in ("maitred_inflight", "maitred_queue_depth",
                  "maitred_connections", "maitred_limit"):
        assert families[gauge].type == "gauge"
    assert set(by_label(samples, "maitred_limit", "name")) == set(LIVE_KEYS)
    for histogram in ("maitred_queue_wait_seconds",
                      "maitred_upstream_duration_seconds"):
        assert families[histogram].type == "histogram"
        assert (f"{histogram}_count", ()) in samples
        assert (f"{histogram}_sum", ()) in samples
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "process_resident_memory_bytes") > 0


def test_outcome_and_reason_labels_match_the_core(start_proxy, start_admin):
    samples = scrape(start_admin(start_proxy()))

    assert set(by_label(samples, "maitred_requests_total", "outcome")) == set(
        OUTCOMES
    )
    assert set(by_label(samples, "maitred_shed_total", "reason")) == set(
        SHED_REASONS
    )


def test_counters_add_up_to_what_was_sent(start_proxy, start_admin):
    harness = start_proxy(**{"limits.max_concurrency": "1",
                             "limits.max_queue": "3",
                             "limits.queue_timeout": "150ms"})
    admin = start_admin(harness)
    before = request(harness.port, GET_OK)
    held = send_held(harness, [GET_400MS])
    try:
        harness.wait_for(lambda s: s["inflight"] == 1)
        # Three wait and time out, four find the queue full.
        held += send_held(harness, [GET_OK] * 7)
    finally:
        answers = [before, *read_and_close(held)]
    harness.wait_for(lambda s: s["inflight"] == 0 and s["connections"] == 0)
    samples = scrape(admin)

    sent = len(answers)
    ok = sum(1 for r in answers if r.status == 200)
    shed_by_reason = {}
    for r in answers:
        if r.status == 503:
            reason = r.header("x-maitred-shed")
            shed_by_reason[reason] = shed_by_reason.get(reason, 0) + 1
    assert ok + sum(shed_by_reason.values()) == sent
    assert shed_by_reason.get("queue_full") and shed_by_reason.get(
        "queue_timeout"
    )

    admitted = value(samples, "maitred_admitted_total")
    outcomes = by_label(samples, "maitred_requests_total", "outcome")
    reasons = by_label(samples, "maitred_shed_total", "reason")
    assert admitted == outcomes["proxied"] == ok
    assert outcomes["shed"] == sum(reasons.values())
    assert admitted + outcomes["shed"] == sent
    assert sum(outcomes.values()) == sent
    assert {k: v for k, v in reasons.items() if v} == shed_by_reason


def test_histograms_are_consistent_with_the_requests_served(
    start_proxy, start_admin
):
    harness = start_proxy(**{"limits.max_concurrency": "1",
                             "limits.queue_timeout": "10s"})
    admin = start_admin(harness)
    held = send_held(harness, [GET_300MS])
    try:
        harness.wait_for(lambda s: s["inflight"] == 1)
        held += send_held(harness, [GET_50MS] * 3)
        harness.wait_for(lambda s: s["queued"] == 3)
    finally:
        answers = read_and_close(held)
    harness.wait_for(lambda s: s["inflight"] == 0 and s["connections"] == 0)
    samples = scrape(admin)

    assert [r.status for r in answers] == [200] * 4
    for name in ("maitred_queue_wait_seconds",
                 "maitred_upstream_duration_seconds"):
        counts = [count for _, count in buckets(samples, name)]
        assert counts == sorted(counts), f"{name} buckets not cumulative"
        assert buckets(samples, name)[-1][0] == float("inf")
        assert counts[-1] == value(samples, f"{name}_count")

    # Each request held its token for at least the backend's service time.
    upstream = "maitred_upstream_duration_seconds"
    floor = SERVICE_TIME - CLOCK_SLACK
    assert value(samples, f"{upstream}_count") == 4
    assert value(samples, f"{upstream}_sum") >= 0.3 - CLOCK_SLACK + 3 * floor
    below = [count for bound, count in buckets(samples, upstream)
             if bound < floor]
    assert set(below) <= {0.0}

    # Three waited; the second and third behind one and two 50 ms requests.
    wait = "maitred_queue_wait_seconds"
    assert value(samples, f"{wait}_count") == 3
    assert value(samples, "maitred_queued_total") == 3
    assert value(samples, f"{wait}_sum") >= (1 + 2) * floor


def test_gauges_show_what_is_in_flight_queued_and_open(
    start_proxy, start_admin
):
    harness = start_proxy(**{"limits.max_concurrency": "2",
                             "limits.queue_timeout": "10s"})
    admin = start_admin(harness)
    held = send_held(harness, [GET_400MS] * 3)
    try:
        harness.wait_for(lambda s: s["queued"] == 1 and s["inflight"] == 2)
        during = scrape(admin)
    finally:
        answers = read_and_close(held)

    assert [r.status for r in answers] == [200] * 3
    assert value(during, "maitred_inflight") == 2
    assert value(during, "maitred_queue_depth") == 1
    assert value(during, "maitred_connections") == 3
    assert value(during, "maitred_draining") == 0


def test_limit_gauge_follows_a_live_change(start_proxy, start_admin):
    harness = start_proxy(**{"limits.max_concurrency": "2",
                             "limits.queue_timeout": "300ms"})
    admin = start_admin(harness)
    assert value(scrape(admin), "maitred_limit", name="max_concurrency") == 2

    response = request(admin.address[1], PATCH_CAP_TO_5)
    assert json.loads(response.body)["max_concurrency"] == 5
    samples = scrape(admin)

    assert value(samples, "maitred_limit", name="max_concurrency") == 5
    assert value(samples, "maitred_limit", name="queue_timeout") == (
        pytest.approx(0.3)
    )


def test_scrapes_during_load_leave_the_counts_exact(
    start_proxy, start_admin, start_load
):
    harness = start_proxy(seats=64, service_time=0.005,
                          **{"limits.max_concurrency": "4",
                             "limits.max_queue": "2",
                             "limits.queue_timeout": "20ms"})
    admin = start_admin(harness)
    load = start_load(harness.port, GET_OK, clients=12, max_requests=600,
                      max_seconds=3.0)
    deadline = time.monotonic() + 3.0
    scrapes = 0
    while (load.sent < 300 or scrapes < 5) and time.monotonic() < deadline:
        scrape(admin)
        scrapes += 1

    outcomes = load.stop()
    harness.wait_for(lambda s: s["inflight"] == 0 and s["connections"] == 0)
    samples = scrape(admin)

    assert set(outcomes) <= {200, 503}, outcomes
    admitted = value(samples, "maitred_admitted_total")
    shed = sum(by_label(samples, "maitred_shed_total", "reason").values())
    assert admitted == outcomes[200]
    assert shed == outcomes[503]
    assert admitted + shed == load.sent
