"""The ``maitred`` command, run with click's CliRunner against a live admin
API in the test harness: limits, status, top, drain, their error paths,
check-config and run with a bad file.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner
from wire import eventually, get, request

from proxy.cli import main
from proxy.config import LIVE_KEYS

TOKEN = "correct-horse-battery"

GET_OK = get("/")
NOT_HTTP_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"

# Every live setting, a new value as typed on the command line, and the
# value the proxy must then hold (seconds, bytes, counts).
NEW_LIMITS = {
    "connect_timeout": ("1500ms", 1.5),
    "response_timeout": ("20s", 20.0),
    "read_timeout": ("15s", 15.0),
    "max_concurrency": ("4", 4),
    "max_queue": ("9", 9),
    "queue_timeout": ("100ms", 0.1),
    "max_body": ("1MiB", 1024 * 1024),
    "max_head": ("16KiB", 16 * 1024),
    "max_target": ("4KiB", 4 * 1024),
    "client_header": ("5s", 5.0),
    "client_body": ("20s", 20.0),
    "idle": ("45s", 45.0),
    "shutdown": ("12s", 12.0),
}

GOOD_CONFIG = """\
[upstream]
url = "http://127.0.0.1:8000"

[limits]
max_concurrency = 8
queue_timeout = "100ms"
"""
BAD_CONFIG = """\
[limits]
max_concurrency = 0
"""
MISSPELT_CONFIG = """\
[limits]
max_concurency = 8
"""


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def admin_url(admin) -> str:
    host, port = admin.address
    return f"http://{host}:{port}"


def assert_one_line_failure(result, code: int, *words: str) -> str:
    """A readable failure: one line, the exit code, no traceback."""
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def free_port() -> int:
    """A loopback port nothing listens on (as far as can be known)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def limits_of(harness) -> dict:
    return harness.loop.call(harness.proxy.limits)


# -- limits -------------------------------------------------------------------


def test_limits_show_prints_every_live_setting(start_proxy, start_admin):
    harness = start_proxy(**{"limits.queue_timeout": "80ms"})
    admin = start_admin(harness)

    result = cli("limits", "show", "--admin", admin_url(admin))

    assert result.exit_code == 0, result.output
    shown = {line.split()[0]: line.split()[1]
             for line in result.output.splitlines()}
    assert set(shown) == set(LIVE_KEYS)
    assert shown["queue_timeout"] == "80ms"
    assert shown["max_body"] == "10MiB"


def test_limits_show_json_is_what_the_api_answers(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness)

    result = cli("limits", "show", "--admin", admin_url(admin), "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == limits_of(harness)


def test_limits_set_changes_every_live_setting(start_proxy, start_admin):
    assert set(NEW_LIMITS) == set(LIVE_KEYS)
    harness = start_proxy()
    admin = start_admin(harness)
    options = []
    for key, (text, _) in NEW_LIMITS.items():
        options += ["--" + key.replace("_", "-"), text]

    result = cli("limits", "set", "--admin", admin_url(admin), *options)

    assert result.exit_code == 0, result.output
    held = limits_of(harness)
    for key, (_, expected) in NEW_LIMITS.items():
        assert held[key] == pytest.approx(expected), key
    lines = result.output.splitlines()
    assert "max_concurrency: 64 -> 4" in lines
    assert "queue_timeout: 250ms -> 100ms" in lines
    assert len(lines) == len(LIVE_KEYS)


def test_limits_set_json_prints_the_new_limits(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness)

    result = cli("limits", "set", "--admin", admin_url(admin), "--json",
                 "--max-queue", "17")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_queue"] == 17
    assert limits_of(harness)["max_queue"] == 17


def test_limits_set_without_a_limit_is_a_usage_error(start_proxy, start_admin):
    admin = start_admin(start_proxy())

    result = cli("limits", "set", "--admin", admin_url(admin))

    assert result.exit_code == 2
    assert "name at least one limit" in result.output


def test_limits_set_rejects_a_bad_value_in_one_line_and_changes_nothing(
    start_proxy, start_admin
):
    harness = start_proxy()
    admin = start_admin(harness)
    before = limits_of(harness)

    result = cli("limits", "set", "--admin", admin_url(admin),
                 "--max-queue", "5", "--max-concurrency", "0")

    assert_one_line_failure(result, 2, "limits.max_concurrency", "got 0")
    assert limits_of(harness) == before


def test_limits_set_rejects_a_value_that_is_not_a_duration(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness)

    result = cli("limits", "set", "--admin", admin_url(admin),
                 "--queue-timeout", "fast")

    assert_one_line_failure(result, 2, "limits.queue_timeout", "fast")
    assert limits_of(harness)["queue_timeout"] == 0.25


# -- finding the admin API ----------------------------------------------------


def test_admin_address_comes_from_maitred_admin(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness)
    host, port = admin.address

    result = cli("limits", "show", "--json",
                 env={"MAITRED_ADMIN": f"{host}:{port}"})

    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == limits_of(harness)


def test_admin_address_comes_from_the_config(start_proxy, start_admin,
                                             tmp_path):
    harness = start_proxy()
    admin = start_admin(harness)
    host, port = admin.address
    path = tmp_path / "maitred.toml"
    path.write_text(f'[admin]\naddress = "{host}:{port}"\n')

    result = cli("status", "--json", "--config", str(path),
                 env={"MAITRED_ADMIN": None})

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["limits"] == limits_of(harness)


def test_unreachable_admin_address_is_one_line_and_exit_1():
    url = f"http://127.0.0.1:{free_port()}"

    result = cli("limits", "show", "--admin", url)

    assert_one_line_failure(result, 1, "cannot reach the admin API", url)


@pytest.fixture
def banner_port():
    """A loopback port where something that is not HTTP answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()

    def answer_with_a_banner():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(NOT_HTTP_BANNER)

    thread = threading.Thread(target=answer_with_a_banner, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_address_that_does_not_speak_http_is_one_line(banner_port):
    result = cli("status", "--admin", f"127.0.0.1:{banner_port}")

    assert_one_line_failure(result, 1, "did not answer HTTP")


def test_address_that_is_not_an_admin_api_is_one_line(start_proxy):
    harness = start_proxy()

    result = cli("status", "--admin", f"127.0.0.1:{harness.port}")

    assert_one_line_failure(result, 1, "did not answer JSON")


# -- token --------------------------------------------------------------------


@pytest.fixture
def token_config(tmp_path, monkeypatch):
    """A config whose token_env names a variable that holds TOKEN."""
    path = tmp_path / "maitred.toml"
    path.write_text('[admin]\ntoken_env = "SHOP_ADMIN_TOKEN"\n')
    monkeypatch.setenv("SHOP_ADMIN_TOKEN", TOKEN)
    return path


def test_refused_token_is_one_line_and_exit_1(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness, TOKEN)

    result = cli("limits", "set", "--admin", admin_url(admin),
                 "--token", "guess", "--max-concurrency", "3")

    assert_one_line_failure(result, 1, "refused the token")
    assert limits_of(harness)["max_concurrency"] == 64


def test_missing_token_is_refused(start_proxy, start_admin):
    admin = start_admin(start_proxy(), TOKEN)

    result = cli("status", "--admin", admin_url(admin),
                 env={"MAITRED_ADMIN_TOKEN": None})

    assert_one_line_failure(result, 1, "refused the token")


def test_token_from_the_configs_token_env_is_sent(start_proxy, start_admin,
                                                   token_config):
    harness = start_proxy()
    admin = start_admin(harness, TOKEN)

    result = cli("limits", "set", "--admin", admin_url(admin),
                 "--config", str(token_config), "--max-concurrency", "3")

    assert result.exit_code == 0, result.output
    assert limits_of(harness)["max_concurrency"] == 3


# -- status, top, drain -------------------------------------------------------


def test_status_prints_in_flight_queue_and_counters(start_proxy, start_admin):
    harness = start_proxy(**{"limits.max_concurrency": "7"})
    admin = start_admin(harness)
    assert request(harness.port, GET_OK).status == 200
    harness.wait_for(lambda s: s["connections"] == 0)

    result = cli("status", "--admin", admin_url(admin))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "in flight    0 / 7" in lines
    assert "admitted     1" in lines
    assert "requests     proxied 1" in lines
    assert "draining     no" in lines


def test_top_refreshes_the_given_number_of_times(start_proxy, start_admin):
    harness = start_proxy(**{"limits.max_concurrency": "5"})
    admin = start_admin(harness)

    result = cli("top", "--admin", admin_url(admin), "--json",
                 "--count", "2", "--interval", "0.05")

    assert result.exit_code == 0, result.output
    frames = [json.loads(line) for line in result.output.splitlines()]
    assert len(frames) == 2
    assert frames[-1]["max_concurrency"] == 5
    assert frames[-1]["inflight"] == 0
    assert {"admitted_per_s", "shed_per_s", "upstream_p99"} <= set(frames[-1])


def test_top_shows_in_flight_against_the_cap(start_proxy, start_admin):
    admin = start_admin(start_proxy(**{"limits.max_concurrency": "5"}))

    result = cli("top", "--admin", admin_url(admin), "--count", "1")

    assert result.exit_code == 0, result.output
    assert "maitred top" in result.output
    assert "] 0 / 5" in result.output


@pytest.mark.parametrize(
    ("options", "refused"),
    [(["--interval", "-1", "--count", "2"], "--interval"),
     (["--interval", "0", "--count", "2"], "--interval"),
     (["--count", "0"], "--count")],
    ids=["negative-interval", "zero-interval", "zero-count"],
)
def test_top_refuses_a_refresh_option_out_of_range(start_proxy, start_admin,
                                                   options, refused):
    admin = start_admin(start_proxy())

    result = cli("top", "--admin", admin_url(admin), *options)

    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{refused}'" in result.output


def test_drain_stops_new_work(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness)

    result = cli("drain", "--admin", admin_url(admin))

    assert result.exit_code == 0, result.output
    assert "draining" in result.output
    assert eventually(lambda: harness.stats()["draining"])


# -- live tuning under load ---------------------------------------------------


def test_limits_set_under_load_caps_the_backend_without_failures(
    start_proxy, start_admin, start_load
):
    harness = start_proxy(seats=64, service_time=0.02, **{
        "limits.max_concurrency": "16",
        "limits.max_queue": "64",
        "limits.queue_timeout": "10s",
    })
    admin = start_admin(harness)
    load = start_load(harness.port, GET_OK, clients=24)
    assert eventually(lambda: harness.backend_counts()["active"] >= 8)

    lowered = cli("limits", "set", "--admin", admin_url(admin),
                  "--max-concurrency", "4")
    assert lowered.exit_code == 0, lowered.output
    harness.wait_for(lambda s: s["inflight"] <= 4)
    harness.reset_backend_peak()
    served = harness.backend_counts()["served"]
    # Enough requests through at the new cap for a higher peak to show.
    assert eventually(
        lambda: harness.backend_counts()["served"] >= served + 60
    )
    peak_at_4 = harness.backend_counts()["peak"]

    raised = cli("limits", "set", "--admin", admin_url(admin),
                 "--max-concurrency", "32")
    queued_after_raise = harness.stats()["queued"]
    outcomes = load.stop()

    assert "max_concurrency: 16 -> 4" in lowered.output
    assert peak_at_4 <= 4
    assert raised.exit_code == 0, raised.output
    assert queued_after_raise == 0
    assert set(outcomes) == {200}, outcomes


# -- check-config and run -----------------------------------------------------


def test_check_config_accepts_a_good_file(tmp_path):
    path = tmp_path / "good.toml"
    path.write_text(GOOD_CONFIG)

    result = cli("check-config", str(path))

    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{path}: ok"


@pytest.mark.parametrize(
    ("text", "named"),
    [(BAD_CONFIG, "limits.max_concurrency"),
     (MISSPELT_CONFIG, "did you mean max_concurrency"),
     ("[limits\n", "invalid TOML")],
    ids=["out-of-range", "misspelt", "not-toml"],
)
def test_check_config_refuses_a_bad_file_with_exit_2(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)

    result = cli("check-config", str(path))

    assert_one_line_failure(result, 2, named)


def test_check_config_of_a_missing_file_exits_2(tmp_path):
    result = cli("check-config", str(tmp_path / "absent.toml"))

    assert_one_line_failure(result, 2, "no such config file")


def test_run_with_a_bad_config_exits_2_before_starting(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)

    result = cli("run", "--config", str(path))

    assert_one_line_failure(result, 2, "limits.max_concurrency")


def test_run_names_the_setting_whose_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "taken.toml"
        path.write_text(
            f'[listen]\naddress = "127.0.0.1:0"\n'
            f'[admin]\naddress = "127.0.0.1:{port}"\n'
        )
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "run", "--config", str(path)],
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"maitred: admin.address: cannot listen on 127.0.0.1:{port}"
    )
    assert "Traceback" not in result.stderr


def test_top_first_frame_counts_only_its_own_interval(start_proxy, start_admin):
    harness = start_proxy()
    admin = start_admin(harness)
    for _ in range(5):
        assert request(harness.port, get()).status == 200

    result = cli("top", "--admin", admin_url(admin), "--json",
                 "--count", "1", "--interval", "0.05")

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["admitted_per_s"] == 0
