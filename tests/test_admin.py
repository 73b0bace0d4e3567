"""The admin API over loopback: limits, status, probes, drain, token auth,
and live limit changes while a steady load runs through the proxy.

Every admin request is a raw named constant sent on its own connection;
the proxy, its backend and the admin listener run in the test harness.
"""

from __future__ import annotations

import json
import socket

import pytest
from wire import Reader, eventually, get, request

from proxy.config import LIVE_KEYS, load

TOKEN = "correct-horse-battery"


def admin_request(method: str, path: str, body: bytes = b"",
                  token: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: admin\r\n"
    if token is not None:
        head += f"Authorization: Bearer {token}\r\n"
    if body or method in ("PATCH", "POST"):
        head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def patch(changes: dict) -> bytes:
    return admin_request("PATCH", "/limits", json.dumps(changes).encode())


GET_LIMITS = admin_request("GET", "/limits")
GET_STATUS = admin_request("GET", "/status")
GET_HEALTHZ = admin_request("GET", "/healthz")
GET_READYZ = admin_request("GET", "/readyz")
POST_DRAIN = admin_request("POST", "/drain")
GET_NOWHERE = admin_request("GET", "/nowhere")
DELETE_LIMITS = admin_request("DELETE", "/limits")

GET_LIMITS_RIGHT_TOKEN = admin_request("GET", "/limits", token=TOKEN)
GET_LIMITS_WRONG_TOKEN = admin_request("GET", "/limits", token="guess")
GET_LIMITS_BASIC_AUTH = (
    b"GET /limits HTTP/1.1\r\nHost: admin\r\n"
    b"Authorization: Basic Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5\r\n\r\n"
)
PATCH_WITHOUT_TOKEN = patch({"max_concurrency": 3})
POST_DRAIN_WRONG_TOKEN = admin_request("POST", "/drain", token="guess")

PATCH_BAD_JSON = admin_request("PATCH", "/limits", b'{"max_queue": 5,')
PATCH_NOT_AN_OBJECT = admin_request("PATCH", "/limits", b"[5]")
PATCH_UNKNOWN_FIELD = patch({"max_queue": 5, "max_concurency": 4})
PATCH_OUT_OF_RANGE = patch({"max_queue": 5, "max_concurrency": 0})
PATCH_TIMEOUT_TOO_LONG = patch({"queue_timeout": "25h"})
PATCH_NOT_LIVE = patch({"max_connections": 10})
PATCH_NULL = patch({"queue_timeout": None})

PATCH_SEVERAL = patch({
    "max_concurrency": 12,
    "max_queue": 7,
    "queue_timeout": "100ms",
    "idle": 5,
    "max_body": "1KiB",
})

GET_OK = get("/")
GET_SLOW = get("/?delay=400")


def answer(admin, raw: bytes):
    """Send one raw admin request; the response and its JSON body."""
    response = request(admin.address[1], raw)
    payload = None
    if response.header("content-type") == "application/json":
        payload = json.loads(response.body)
    return response, payload


def send_held(harness, raw: bytes, count: int) -> list[socket.socket]:
    """Open ``count`` connections and send ``raw`` on each; answers unread."""
    socks = []
    for _ in range(count):
        sock = harness.connect()
        sock.sendall(raw)
        socks.append(sock)
    return socks


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# -- reading and changing limits ----------------------------------------------


def test_limits_lists_every_live_setting_with_its_configured_value(
    start_proxy, start_admin
):
    harness = start_proxy(**{"limits.max_concurrency": "9",
                             "limits.queue_timeout": "80ms"})
    admin = start_admin(harness)

    response, limits = answer(admin, GET_LIMITS)

    assert response.status == 200
    assert sorted(limits) == sorted(LIVE_KEYS)
    assert limits["max_concurrency"] == 9
    assert limits["queue_timeout"] == pytest.approx(0.08)
    assert limits["max_body"] == 10 * 1024 * 1024


def test_patch_changes_the_named_limits_and_answers_the_new_ones(
    start_proxy, start_admin
):
    harness = start_proxy()
    admin = start_admin(harness)

    response, limits = answer(admin, PATCH_SEVERAL)

    assert response.status == 200
    assert limits["max_concurrency"] == 12
    assert limits["max_queue"] == 7
    assert limits["queue_timeout"] == pytest.approx(0.1)
    assert limits["idle"] == 5
    assert limits["max_body"] == 1024
    assert answer(admin, GET_LIMITS)[1] == limits
    core = harness.loop.call(harness.proxy.core.limits)
    assert core["max_concurrency"] == 12
    assert core["queue_timeout"] == pytest.approx(0.1)
    assert harness.proxy.max_body == 1024


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (PATCH_BAD_JSON, "not JSON"),
        (PATCH_NOT_AN_OBJECT, "JSON object"),
        (PATCH_UNKNOWN_FIELD, "max_concurency"),
        (PATCH_OUT_OF_RANGE, "limits.max_concurrency"),
        (PATCH_TIMEOUT_TOO_LONG, "limits.queue_timeout"),
        (PATCH_NOT_LIVE, "max_connections"),
        (PATCH_NULL, "got null"),
    ],
    ids=["bad-json", "not-an-object", "unknown-field", "out-of-range",
         "timeout-too-long", "not-live", "null"],
)
def test_rejected_patch_is_400_naming_the_problem_and_changes_nothing(
    start_proxy, start_admin, raw, named
):
    harness = start_proxy()
    admin = start_admin(harness)
    before = answer(admin, GET_LIMITS)[1]

    response, payload = answer(admin, raw)

    assert response.status == 400
    assert named in payload["error"]
    assert "\n" not in payload["error"]
    assert answer(admin, GET_LIMITS)[1] == before


def test_unknown_field_suggests_the_setting_meant(start_proxy, start_admin):
    admin = start_admin(start_proxy())

    payload = answer(admin, PATCH_UNKNOWN_FIELD)[1]

    assert "did you mean max_concurrency" in payload["error"]


def test_unknown_path_is_404_and_wrong_method_is_405(start_proxy, start_admin):
    admin = start_admin(start_proxy())

    assert answer(admin, GET_NOWHERE)[0].status == 404
    response, payload = answer(admin, DELETE_LIMITS)
    assert response.status == 405
    assert response.header("allow") == "GET, PATCH"
    assert "/limits" in payload["error"]


# -- status, probes, drain ----------------------------------------------------


def test_status_counts_what_is_in_flight_and_what_went_through(
    start_proxy, start_admin
):
    harness = start_proxy(**{"limits.max_concurrency": "2",
                             "limits.queue_timeout": "10s"})
    admin = start_admin(harness)
    assert request(harness.port, GET_OK).status == 200
    held = send_held(harness, GET_SLOW, 3)
    try:
        harness.wait_for(lambda s: s["queued"] == 1 and s["connections"] == 3)
        response, status = answer(admin, GET_STATUS)
        answers = [Reader(sock).response().status for sock in held]
    finally:
        close_all(held)

    assert response.status == 200
    assert status["inflight"] == 2
    assert status["queued"] == 1
    assert status["connections"] == 3
    assert status["draining"] is False
    assert status["limits"]["max_concurrency"] == 2
    assert status["counters"]["admitted"] == 3
    assert status["counters"]["requests"]["proxied"] == 1
    assert answers == [200, 200, 200]


def test_healthz_and_readyz_answer_200_while_serving(start_proxy, start_admin):
    admin = start_admin(start_proxy())

    assert answer(admin, GET_HEALTHZ)[0].status == 200
    assert answer(admin, GET_READYZ)[1] == {"status": "ready"}


def test_drain_fails_readiness_and_lets_in_flight_requests_finish(
    start_proxy, start_admin
):
    harness = start_proxy()
    admin = start_admin(harness)
    port = harness.port
    held = send_held(harness, GET_SLOW, 2)
    try:
        harness.wait_for(lambda s: s["inflight"] == 2)

        response, payload = answer(admin, POST_DRAIN)

        assert response.status == 202
        assert payload == {"status": "draining"}
        assert eventually(lambda: answer(admin, GET_READYZ)[0].status == 503)
        assert answer(admin, GET_HEALTHZ)[0].status == 200
        shed = request(port, GET_OK, timeout=2)
        answers = [Reader(sock).response() for sock in held]
    finally:
        close_all(held)
    assert [(r.status, r.body) for r in answers] == [(200, b"ok\n")] * 2
    # The listener stays open: a new request is told why it is refused.
    assert shed.status == 503
    assert shed.header("x-maitred-shed") == "draining"
    assert shed.header("connection") == "close"
    assert harness.stats()["shed"]["draining"] == 1


# -- token auth ---------------------------------------------------------------


@pytest.fixture
def token_from_config(tmp_path, monkeypatch) -> str | None:
    """The admin token as a config naming its own token_env would load it."""
    path = tmp_path / "maitred.toml"
    path.write_text('[admin]\ntoken_env = "SHOP_ADMIN_TOKEN"\n')
    monkeypatch.setenv("SHOP_ADMIN_TOKEN", TOKEN)
    return load(path).admin_token


@pytest.mark.parametrize(
    "raw",
    [GET_LIMITS, GET_LIMITS_WRONG_TOKEN, GET_LIMITS_BASIC_AUTH,
     PATCH_WITHOUT_TOKEN, POST_DRAIN_WRONG_TOKEN],
    ids=["no-token", "wrong-token", "basic-auth", "patch-no-token",
         "drain-wrong-token"],
)
def test_request_without_the_right_token_is_401_and_does_nothing(
    start_proxy, start_admin, token_from_config, raw
):
    harness = start_proxy()
    admin = start_admin(harness, token_from_config)

    response, payload = answer(admin, raw)

    assert response.status == 401
    assert response.header("www-authenticate").startswith("Bearer")
    assert "token" in payload["error"]
    limits = harness.loop.call(harness.proxy.limits)
    assert limits["max_concurrency"] == 64
    assert harness.proxy.draining is False


def test_request_with_the_token_from_token_env_is_served(
    start_proxy, start_admin, token_from_config
):
    admin = start_admin(start_proxy(), token_from_config)

    response, limits = answer(admin, GET_LIMITS_RIGHT_TOKEN)

    assert response.status == 200
    assert limits["max_concurrency"] == 64


def test_probes_answer_without_a_token(start_proxy, start_admin,
                                       token_from_config):
    admin = start_admin(start_proxy(), token_from_config)

    assert answer(admin, GET_HEALTHZ)[0].status == 200
    assert answer(admin, GET_READYZ)[0].status == 200


# -- live changes under load --------------------------------------------------

UNDER_LOAD = {
    "limits.max_concurrency": "16",
    "limits.max_queue": "64",
    "limits.queue_timeout": "10s",
}


def test_lowering_the_cap_under_load_caps_what_the_backend_sees(
    start_proxy, start_admin, start_load
):
    harness = start_proxy(seats=64, service_time=0.02, **UNDER_LOAD)
    admin = start_admin(harness)
    load = start_load(harness.port, GET_OK, clients=24)
    assert eventually(lambda: harness.backend_counts()["active"] >= 8)

    response, limits = answer(admin, patch({"max_concurrency": 4}))
    assert response.status == 200
    assert limits["max_concurrency"] == 4
    assert harness.wait_for(lambda s: s["inflight"] <= 4)["inflight"] <= 4
    harness.reset_backend_peak()
    served = harness.backend_counts()["served"]
    # Enough requests through at the new cap for a higher peak to show.
    assert eventually(
        lambda: harness.backend_counts()["served"] >= served + 60
    )

    seen = harness.backend_counts()
    outcomes = load.stop()
    assert seen["peak"] <= 4
    assert set(outcomes) == {200}, outcomes


def test_raising_the_cap_admits_the_queued_requests_at_once(
    start_proxy, start_admin, start_load
):
    harness = start_proxy(seats=64, service_time=0.2, **{
        **UNDER_LOAD, "limits.max_concurrency": "2",
    })
    admin = start_admin(harness)
    load = start_load(harness.port, GET_OK, clients=12)
    assert harness.wait_for(lambda s: s["queued"] >= 8)["queued"] >= 8

    response, _ = answer(admin, patch({"max_concurrency": 32}))
    stats = harness.stats()

    assert response.status == 200
    assert stats["queued"] == 0
    assert stats["inflight"] > 2
    assert eventually(lambda: harness.backend_counts()["active"] > 2)
    outcomes = load.stop()
    assert set(outcomes) == {200}, outcomes


def test_lowering_the_cap_never_cancels_in_flight_requests(
    start_proxy, start_admin
):
    harness = start_proxy(**{"limits.max_concurrency": "8",
                             "limits.queue_timeout": "10s"})
    admin = start_admin(harness)
    held = send_held(harness, GET_SLOW, 8)
    try:
        assert eventually(lambda: harness.backend_counts()["active"] == 8)

        assert answer(admin, patch({"max_concurrency": 2}))[0].status == 200
        held += send_held(harness, GET_OK, 1)
        stats = harness.wait_for(lambda s: s["queued"] == 1)

        # The late request waits: nothing is admitted above the new cap.
        assert (stats["inflight"], stats["queued"]) == (8, 1)
        assert harness.backend_counts()["active"] == 8
        answers = [Reader(sock).response() for sock in held]
    finally:
        close_all(held)
    assert [(r.status, r.body) for r in answers] == [(200, b"ok\n")] * 9
    assert harness.stats()["requests"]["client_abort_inflight"] == 0
