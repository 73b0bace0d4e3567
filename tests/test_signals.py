"""``maitred run`` as a real process: SIGHUP reloads, SIGTERM and SIGINT
drain, a second signal exits at once.

Each test starts ``python -m proxy run --config FILE`` on loopback ports
picked free, in front of a SampleBackend running in the test process, and
talks to it over sockets and its admin API. The process is killed by its
PID after the test if it is still running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from wire import Reader, eventually, get, request

from proxy.demo import SampleBackend
from proxy.responses import SHED_BODY

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 15.0
SHUTDOWN_SECONDS = 10

GET_OK = get("/")
GET_100MS = get("/?delay=100")
GET_800MS = get("/?delay=800")
GET_20S = get("/?delay=20000")

GET_LIMITS = b"GET /limits HTTP/1.1\r\nHost: admin\r\n\r\n"
GET_STATUS = b"GET /status HTTP/1.1\r\nHost: admin\r\n\r\n"
GET_HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n"
GET_READYZ = b"GET /readyz HTTP/1.1\r\nHost: admin\r\n\r\n"
PATCH_QUEUE_TIMEOUT_4S = (
    b"PATCH /limits HTTP/1.1\r\nHost: admin\r\n"
    b"Content-Type: application/json\r\nContent-Length: 24\r\n\r\n"
    b'{"queue_timeout": "4s"}\n'
)

CONFIG = """\
[listen]
address = "127.0.0.1:{port}"

[upstream]
url = "http://127.0.0.1:{backend}"

[limits]
max_concurrency = {max_concurrency}
max_queue = {max_queue}
queue_timeout = "{queue_timeout}"

[timeouts]
shutdown = "{shutdown}"

[shed]
retry_after = {retry_after}

[admin]
address = "127.0.0.1:{admin}"
"""
SETTINGS = {
    "max_concurrency": 8,
    "max_queue": 64,
    "queue_timeout": "10s",
    "shutdown": f"{SHUTDOWN_SECONDS}s",
    "retry_after": '"auto"',
}
BROKEN_FILES = {
    "out-of-range": "[limits]\nmax_concurrency = 0\n",
    "not-toml": "[limits\nmax_concurrency = 16\n",
}

# What a request sent after the signal may get: a draining 503, or no
# answer at all because the listener is closed or closing.
NOT_TAKEN = {"ConnectionRefusedError", "ConnectionResetError",
             "ConnectionError", "BrokenPipeError"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Maitred:
    """One ``maitred run`` process and the lines it logged."""

    def __init__(self, config: Path, ports: dict[str, int],
                 settings: dict) -> None:
        self.config = config
        self.ports = ports
        self.port = ports["port"]
        self.admin_port = ports["admin"]
        self.write_config(**settings)
        self.lines: list[str] = []
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("MAITRED_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proxy", "run", "--config", str(config)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    def write_config(self, **settings) -> None:
        """(Re)write the config file: SETTINGS, changed by ``settings``."""
        self.config.write_text(
            CONFIG.format(**self.ports, **{**SETTINGS, **settings})
        )

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def logged(self, text: str, timeout: float = 5.0) -> bool:
        return eventually(lambda: any(text in line for line in self.lines),
                          timeout)

    def admin(self, raw: bytes):
        return request(self.admin_port, raw, timeout=5)

    def admin_json(self, raw: bytes) -> dict:
        return json.loads(self.admin(raw).body)

    def wait_serving(self) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"maitred exited early:\n{self.log}")
            try:
                return self.admin(GET_HEALTHZ).status == 200
            except OSError:
                return False

        assert eventually(answers, START_TIMEOUT), self.log

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(5)


@pytest.fixture
def backend(loop_thread):
    backend = SampleBackend(seats=64, service_time=0.0)
    loop_thread.run(backend.start())
    yield backend
    loop_thread.run(backend.stop())


@pytest.fixture
def start_maitred(tmp_path, backend):
    """Write a config and start ``maitred run`` with it; killed afterwards."""
    started: list[Maitred] = []

    def start(**settings) -> Maitred:
        ports = {"port": free_port(), "admin": free_port(),
                 "backend": backend.address[1]}
        maitred = Maitred(tmp_path / "maitred.toml", ports, settings)
        started.append(maitred)
        maitred.wait_serving()
        return maitred

    yield start
    for maitred in started:
        maitred.kill()


def send_held(port: int, raw: bytes, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        sock.sendall(raw)
        socks.append(sock)
    return socks


def read_all(socks: list[socket.socket]) -> list:
    """Each socket's response, or the name of the error reading it."""
    answers = []
    for sock in socks:
        try:
            response = Reader(sock).response()
            answers.append((response.status, response.body))
        except OSError as err:
            answers.append(type(err).__name__)
    return answers


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def try_new_request(port: int):
    """A fresh request after the signal: its status and shed reason."""
    try:
        response = request(port, GET_OK, timeout=5)
    except OSError as err:
        return type(err).__name__
    return response.status, response.header("x-maitred-shed")


# -- SIGHUP -------------------------------------------------------------------


def test_sighup_with_a_good_file_applies_new_limits_on_open_connections(
    start_maitred,
):
    maitred = start_maitred(max_concurrency=8, queue_timeout="10s")
    client = socket.create_connection(("127.0.0.1", maitred.port), timeout=5)
    try:
        reader = Reader(client)
        client.sendall(GET_OK)
        assert reader.response().status == 200
        maitred.write_config(max_concurrency=16, queue_timeout="100ms")

        maitred.signal(signal.SIGHUP)

        assert maitred.logged("SIGHUP: config reloaded"), maitred.log
        limits = maitred.admin_json(GET_LIMITS)
        client.sendall(GET_OK)
        after = reader.response()
    finally:
        client.close()
    assert limits["max_concurrency"] == 16
    assert limits["queue_timeout"] == pytest.approx(0.1)
    assert after.status == 200
    assert "limit max_concurrency: 8 -> 16 (by SIGHUP reload)" in maitred.log
    assert maitred.process.poll() is None


@pytest.mark.parametrize("broken", BROKEN_FILES.values(),
                         ids=list(BROKEN_FILES))
def test_sighup_with_a_broken_file_keeps_the_old_limits_and_logs_an_error(
    start_maitred, broken
):
    maitred = start_maitred(max_concurrency=8)
    before = maitred.admin_json(GET_LIMITS)
    maitred.config.write_text(broken)

    maitred.signal(signal.SIGHUP)

    assert maitred.logged("config not reloaded"), maitred.log
    error = next(line for line in maitred.lines
                 if "config not reloaded" in line)
    assert "ERROR" in error
    assert str(maitred.config) in error or "limits.max_concurrency" in error
    assert maitred.admin_json(GET_LIMITS) == before
    assert request(maitred.port, GET_OK).status == 200
    assert maitred.process.poll() is None


def test_sighup_reports_a_static_change_and_keeps_it_until_restart(
    start_maitred,
):
    maitred = start_maitred(max_concurrency=1, max_queue=0, retry_after=2)
    # Holds the only token for the whole test; cut when the test ends.
    held = send_held(maitred.port, GET_20S, 1)
    try:
        assert eventually(
            lambda: maitred.admin_json(GET_STATUS)["inflight"] == 1
        )
        before = request(maitred.port, GET_OK)
        maitred.write_config(max_concurrency=1, max_queue=0, retry_after=7,
                             queue_timeout="5s")

        for reloads in (1, 2):
            maitred.signal(signal.SIGHUP)
            assert eventually(lambda n=reloads: maitred.count(
                "SIGHUP: config reloaded") == n), maitred.log
        reloaded = maitred.admin_json(GET_LIMITS)
        # A live change afterwards recomputes Retry-After from the
        # settings in force.
        assert maitred.admin(PATCH_QUEUE_TIMEOUT_4S).status == 200
        after = request(maitred.port, GET_OK)
    finally:
        close_all(held)
    assert (before.status, before.header("retry-after")) == (503, "2")
    assert (after.status, after.header("retry-after")) == (503, "2")
    assert reloaded["queue_timeout"] == 5.0
    warning = "reload: shed.retry_after change only at restart"
    assert maitred.count(warning) == 2


# -- SIGTERM and SIGINT -------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_stop_signal_under_load_finishes_admitted_requests_and_exits_0(
    start_maitred, start_load, backend, loop_thread, sig
):
    maitred = start_maitred(max_concurrency=8)
    held = send_held(maitred.port, GET_800MS, 4)
    try:
        assert eventually(
            lambda: maitred.admin_json(GET_STATUS)["inflight"] == 4
        ), maitred.log
        load = start_load(maitred.port, GET_100MS, clients=3,
                          max_requests=300, max_seconds=10.0,
                          keep_alive=False)
        assert eventually(lambda: load.sent >= 3), maitred.log

        maitred.signal(sig)

        assert eventually(lambda: maitred.admin(GET_READYZ).status == 503)
        assert maitred.process.poll() is None
        after_signal = try_new_request(maitred.port)
        answers = read_all(held)
    finally:
        close_all(held)
    # The drain ends when the held requests do; the timeout is a backstop.
    code = maitred.process.wait(SHUTDOWN_SECONDS + 5)
    outcomes = load.stop()

    assert answers == [(200, b"ok\n")] * 4
    assert after_signal in NOT_TAKEN | {(503, "draining")}
    assert code == 0, maitred.log
    assert set(outcomes) <= {200, 503} | NOT_TAKEN, outcomes
    assert set(load.bodies) <= {b"ok\n", SHED_BODY["draining"]}
    # Every request the backend served reached its client.
    served = loop_thread.call(lambda: backend.served)
    assert served == len(answers) + outcomes[200]
    assert maitred.logged(f"{sig.name}: draining")
    assert maitred.logged("maitred stopped")
    assert "cutting" not in maitred.log


@pytest.mark.parametrize("served", [True, False],
                         ids=["after a response", "before any request"])
def test_stop_signal_closes_idle_connections_at_once(start_maitred, served):
    maitred = start_maitred()
    idle = socket.create_connection(("127.0.0.1", maitred.port), timeout=5)
    held = []
    try:
        reader = Reader(idle)
        if served:
            idle.sendall(GET_OK)
            assert reader.response().status == 200
        held = send_held(maitred.port, GET_800MS, 1)
        assert eventually(
            lambda: maitred.admin_json(GET_STATUS)["inflight"] == 1
        )

        maitred.signal(signal.SIGTERM)

        # Closed while the held request is still being served.
        closed = reader.closed(timeout=0.5)
        answers = read_all(held)
    finally:
        idle.close()
        close_all(held)
    code = maitred.process.wait(SHUTDOWN_SECONDS + 5)
    assert closed
    assert answers == [(200, b"ok\n")]
    assert code == 0, maitred.log
    assert "Traceback" not in maitred.log


def test_drain_past_the_shutdown_timeout_cuts_in_flight_work_and_exits_0(
    start_maitred,
):
    maitred = start_maitred(shutdown="300ms")
    held = send_held(maitred.port, GET_20S, 1)
    try:
        assert eventually(
            lambda: maitred.admin_json(GET_STATUS)["inflight"] == 1
        )

        maitred.signal(signal.SIGTERM)

        code = maitred.process.wait(10)
        answers = read_all(held)
    finally:
        close_all(held)
    assert code == 0, maitred.log
    assert answers != [(200, b"ok\n")]
    assert maitred.logged("shutdown timeout: cutting 1 in-flight")


def test_second_stop_signal_exits_at_once(start_maitred):
    maitred = start_maitred(shutdown="60s")
    held = send_held(maitred.port, GET_20S, 1)
    try:
        assert eventually(
            lambda: maitred.admin_json(GET_STATUS)["inflight"] == 1
        )
        maitred.signal(signal.SIGTERM)
        assert eventually(lambda: maitred.admin(GET_READYZ).status == 503)

        maitred.signal(signal.SIGTERM)

        # Well before the 20 s request or the 60 s drain could end.
        code = maitred.process.wait(5)
        answers = read_all(held)
    finally:
        close_all(held)
    assert code != 0
    assert answers != [(200, b"ok\n")]
    assert maitred.logged("second SIGTERM: exiting at once")


# -- starting -----------------------------------------------------------------


def test_run_on_a_taken_port_exits_1_with_one_line(tmp_path, backend):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"port": taken.getsockname()[1], "admin": free_port(),
                 "backend": backend.address[1]}
        maitred = Maitred(tmp_path / "maitred.toml", ports, {})
        try:
            code = maitred.process.wait(START_TIMEOUT)
        finally:
            maitred.kill()
    assert code == 1
    assert len(maitred.lines) == 1, maitred.log
    assert maitred.lines[0].startswith("maitred: ")
    assert str(ports["port"]) in maitred.lines[0]
    assert "in use" in maitred.lines[0]
