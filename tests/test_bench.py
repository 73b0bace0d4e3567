"""Smoke tests of the benchmark harness itself, in seconds.

They check that the harness measures what it says: the backend's capacity
is what it claims, the generator keeps to its schedule and is open-loop,
results are classified and summarized right, each scenario's JSON has every
field, proxies really apply the configured limits, and a missing peer is
reported. No test asserts how fast anything is. Tests that drive HAProxy,
nginx or wrk skip, saying so, only when that binary is not installed.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/

from bench import datapath, loadgen, procs, stats, systems, wire
from bench.backend import STATS_PATH
from bench.harness import Context
from bench.procs import free_port
from bench.scenarios import burst

ROOT = Path(__file__).resolve().parent.parent
SLOTS, SERVICE_MS = 4, 50.0
CAPACITY = SLOTS * 1000.0 / SERVICE_MS  # 80 requests/s

RESPONSE_KEYS = {
    "offered", "offered_rps", "ok", "good", "goodput_rps",
    "goodput_of_capacity", "success_p50_ms", "success_p99_ms", "shed",
    "shed_p50_ms", "shed_p99_ms", "timeouts", "errors", "error_kinds",
    "status_counts", "shed_reasons", "connections_opened",
    "max_open_connections",
}
LAG_KEYS = {"lag_p99_ms", "lag_max_ms", "valid", "invalid_reason"}
REPORT_KEYS = {
    "bench", "scenario", "quick", "started", "elapsed_s", "command", "machine",
    "pinning", "systems", "settings", "notes", "results", "summary", "goals",
    "files",
}
MACHINE_KEYS = {
    "cpu_count", "cpu_model", "memory_kib", "kernel", "platform", "python",
    "uvloop", "loadavg_start", "loadavg_end", "git_commit",
}
SYSTEM_KEYS = {"name", "kind", "available", "reason", "version", "engine",
               "command", "start_error"}

TINY = ["--quick", "--duration-s", "0.4", "--warmup-s", "0.1", "--rounds", "1"]


def needs(binary: str):
    return pytest.mark.skipif(
        systems.find_tool(binary, None) is None,
        reason=f"{binary} is not installed (apt-get install {binary})",
    )


@pytest.fixture
def backend(tmp_path):
    child, port = systems.start_backend(tmp_path, SLOTS, SERVICE_MS, None)
    yield port
    child.stop()


def backend_stats(port: int) -> dict:
    return loadgen.run_in_loop(
        lambda: wire.get_json(port, STATS_PATH.decode(), timeout=2.0))


def run_bench(out: Path, *args: str) -> dict:
    """Run ``python -m bench`` as a user would; return its JSON report."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / f"{args[0]}.json").read_text())


# -- the backend ---------------------------------------------------------


def test_backend_never_exceeds_its_stated_capacity(backend):
    """A burst of 4N requests at once takes at least 4 service times."""
    async def burst_of(count: int) -> list[int]:
        async def one() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", backend)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            raw = await reader.read()
            writer.close()
            return int(raw.split(b" ", 2)[1])
        return await asyncio.gather(*(one() for _ in range(count)))

    started = time.perf_counter()
    statuses = loadgen.run_in_loop(lambda: burst_of(4 * SLOTS))
    elapsed = time.perf_counter() - started
    counters = backend_stats(backend)
    assert statuses == [200] * (4 * SLOTS)
    assert elapsed >= 4 * SERVICE_MS / 1000.0 * 0.95
    assert counters["max_inflight"] == SLOTS
    assert counters["max_queued"] >= 2 * SLOTS
    assert counters["capacity_rps"] == CAPACITY


def test_backend_serves_half_its_capacity_with_service_time_latency(backend):
    spec = loadgen.LoadSpec(port=backend, phases=[loadgen.Phase(1.0, CAPACITY / 2)],
                            arrivals="constant")
    result = loadgen.run(spec)
    figures = stats.summarize(result, 0.0, 1.0, 0.5, CAPACITY)
    assert figures["offered"] == CAPACITY / 2
    assert figures["good"] == figures["offered"]
    assert figures["success_p50_ms"] >= SERVICE_MS
    assert backend_stats(backend)["served"] == figures["offered"]
    assert figures["goodput_of_capacity"] == 0.5


def test_backend_answers_stats_outside_its_slots(backend):
    counters = backend_stats(backend)
    assert counters["slots"] == SLOTS
    assert counters["inflight"] == 0 and counters["queued"] == 0


# -- the in-process data path measurement ----------------------------------


@pytest.mark.parametrize("engine", ["compiled", "h11"])
def test_datapath_measures_whole_exchanges_and_leaves_no_token(engine):
    # measure() raises if a connection closed, if requests and responses
    # did not pair up or if a token stayed in flight.
    figure = asyncio.run(datapath.measure(engine, 200, profile=False))
    assert figure > 0


# -- the load generator --------------------------------------------------


def test_schedule_is_bounded_sorted_and_follows_the_phases():
    phases = [loadgen.Phase(1.0, 100.0), loadgen.Phase(1.0, 1000.0)]
    times = loadgen.schedule(phases, "constant", 1, 10_000)
    assert len(times) == 1100
    assert times == sorted(times)
    assert sum(1 for t in times if t < 1.0) == 100
    assert len(loadgen.schedule(phases, "poisson", 7, 500)) == 500


def test_poisson_schedule_has_the_asked_rate():
    times = loadgen.schedule([loadgen.Phase(10.0, 1000.0)], "poisson", 3, 10**6)
    assert abs(len(times) - 10_000) < 4 * math.sqrt(10_000)
    assert times != loadgen.schedule([loadgen.Phase(10.0, 1000.0)], "poisson",
                                     4, 10**6)


def test_generator_keeps_its_schedule_while_responses_lag(tmp_path):
    """Open loop: a backend of 5 requests/s still receives all 100 requests
    of a 100/s schedule, on time, while most of them wait."""
    child, port = systems.start_backend(tmp_path, 1, 200.0, None)
    try:
        spec = loadgen.LoadSpec(port=port, phases=[loadgen.Phase(1.0, 100.0)],
                                arrivals="constant", timeout_s=1.5)
        result = loadgen.run(spec)
        counters = backend_stats(port)
    finally:
        child.stop()
    received = counters["served"] + counters["inflight"] + counters["queued"]
    assert received == len(result.sched) == 100
    assert stats.lag_check(result, 10.0)["valid"]
    assert result.status.count(loadgen.TIMEOUT) > 80
    assert result.max_open_connections > 80  # nothing waited for a connection


def test_generator_counts_refused_connections_as_errors():
    spec = loadgen.LoadSpec(port=free_port(), phases=[loadgen.Phase(0.2, 50)],
                            prewarm=0)
    result = loadgen.run(spec)
    figures = stats.summarize(result, 0.0, 0.2, 0.5, 100.0)
    assert figures["errors"] == figures["offered"] > 0
    assert figures["error_kinds"] == {"connect_error": figures["offered"]}


def test_lagging_generator_makes_the_run_invalid():
    result = loadgen.LoadResult(sched=[0.0, 0.1], status=[200, 200],
                                latency=[0.01, 0.01], lag=[0.0, 0.05])
    check = stats.lag_check(result, 10.0)
    assert not check["valid"]
    assert "lag" in check["invalid_reason"]


def test_summary_classifies_good_shed_timeout_and_error():
    result = loadgen.LoadResult(
        sched=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
        status=[200, 200, 503, loadgen.TIMEOUT, 502, loadgen.CONNECTION_LOST],
        latency=[0.02, 0.9, 0.0005, math.nan, 0.01, math.nan],
        lag=[0.0] * 6,
    )
    figures = stats.summarize(result, 0.0, 1.0, 0.5, 10.0)
    assert (figures["ok"], figures["good"], figures["shed"]) == (2, 1, 1)
    assert figures["timeouts"] == 1
    assert figures["error_kinds"] == {"status_502": 1, "connection_lost": 1}
    assert figures["goodput_of_capacity"] == 0.1
    assert figures["shed_p99_ms"] == 0.5


# -- the response parser -------------------------------------------------


def test_parser_frames_length_chunked_and_pipelined_responses():
    parser = wire.ResponseParser()
    data = (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
            b"HTTP/1.1 503 Service Unavailable\r\nX-Maitred-Shed: queue_full\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nbus\r\n0\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Len")
    first = parser.feed(data[:20]) + parser.feed(data[20:])
    assert [(r.status, r.keep_alive, r.shed_reason) for r in first] == [
        (200, True, ""), (503, True, "queue_full")]
    assert parser.feed(b"gth: 0\r\n\r\n")[0].keep_alive is False


def test_parser_ends_a_close_framed_body_at_eof():
    parser = wire.ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\nsome body") == []
    response = parser.eof()
    assert response.status == 200 and not response.keep_alive


def test_parser_rejects_what_is_not_http():
    with pytest.raises(wire.ProtocolError):
        wire.ResponseParser().feed(b"SSH-2.0-OpenSSH\r\n\r\n")
    with pytest.raises(wire.ProtocolError):
        wire.ResponseParser().feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")


# -- configuration of the systems ----------------------------------------


def test_maitred_config_uses_the_documented_keys(tmp_path):
    limits = systems.Limits(concurrency=8, max_queue=8, queue_timeout_ms=150)
    text = systems.maitred_config(1001, 1002, 1003, limits, "h11")
    config = tomllib.loads(text)
    assert set(config) == {"listen", "upstream", "limits", "timeouts", "admin"}
    assert set(config["listen"]) == {"address", "max_connections",
                                     "http_engine"}
    assert set(config["upstream"]) == {"url", "connect_timeout",
                                       "response_timeout", "read_timeout",
                                       "max_idle_connections"}
    assert config["limits"] == {"max_concurrency": 8, "max_queue": 8,
                                "queue_timeout": "150ms", "max_body": "1MiB"}
    assert set(config["timeouts"]) == {"client_header", "client_body", "idle",
                                       "shutdown"}
    for address in (config["listen"]["address"], config["admin"]["address"],
                    config["upstream"]["url"]):
        assert "127.0.0.1:" in address


def test_haproxy_config_bounds_the_queue(tmp_path):
    limits = systems.Limits(concurrency=8, max_queue=4, queue_timeout_ms=150)
    text = systems.haproxy_config(1001, 1002, limits, tmp_path / "s.sock")
    assert "maxconn 8 maxqueue 4" in text
    assert "deny deny_status 503 if { queue(app) ge 4 }" in text
    assert "timeout queue 150ms" in text
    assert "nbthread 1" in text


# -- whole scenarios, tiny -----------------------------------------------


def test_tiny_overload_run_reports_every_field(tmp_path):
    report = run_bench(tmp_path, "overload", *TINY, "--systems", "backend",
                       "--multiples", "0.5,2")
    assert REPORT_KEYS <= set(report)
    assert MACHINE_KEYS <= set(report["machine"])
    assert SYSTEM_KEYS <= set(report["systems"][0])
    assert report["quick"] is True
    assert len(report["results"]) == 2
    for row in report["results"]:
        assert RESPONSE_KEYS | LAG_KEYS <= set(row), row.get("error")
    for entry in report["summary"]:
        assert {"goodput_rps", "goodput_rps_spread", "success_p99_ms",
                "shed_p99_ms", "valid_rounds", "rounds"} <= set(entry)
    markdown = (tmp_path / "overload.md").read_text()
    assert "Smoke run" in markdown and "| backend | 2x |" in markdown
    if "plots" in report["files"]:
        assert (tmp_path / "overload.png").stat().st_size > 0


def test_missing_peer_is_reported_not_skipped(tmp_path):
    report = run_bench(tmp_path, "overload", *TINY, "--multiples", "1",
                       "--systems", "backend,haproxy,maitred-h11",
                       "--haproxy", str(tmp_path / "no-haproxy"),
                       "--maitred", str(tmp_path / "no-maitred"))
    by_name = {s["name"]: s for s in report["systems"]}
    assert by_name["haproxy"]["available"] is False
    assert "apt-get install -y haproxy" in by_name["haproxy"]["reason"]
    assert "failed to start" not in by_name["haproxy"]["reason"]
    assert by_name["maitred-h11"]["start_error"]
    assert {"system": "haproxy", "missing": by_name["haproxy"]["reason"]} in (
        report["summary"])
    markdown = (tmp_path / "overload.md").read_text()
    assert "| haproxy | MISSING |" in markdown
    assert "| maitred-h11 | FAILED TO START |" in markdown


@pytest.mark.parametrize("peer", [
    pytest.param("haproxy", marks=needs("haproxy")),
    pytest.param("nginx", marks=needs("nginx")),
])
def test_proxy_sheds_and_caps_backend_concurrency(tmp_path, peer):
    report = run_bench(tmp_path, "overload", *TINY, "--systems", peer,
                       "--multiples", "4", "--slots", "2", "--service-ms", "50",
                       "--max-queue", "2")
    row = report["results"][0]
    assert "error" not in row, row.get("error")
    assert row["backend_max_inflight"] <= 2
    assert row["shed"] > 0 and row["ok"] > 0


@needs("wrk")
@needs("nginx")
def test_tiny_overhead_run_relates_systems_to_haproxy(tmp_path):
    report = run_bench(tmp_path, "overhead", "--quick", "--duration-s", "1",
                       "--warmup-s", "0", "--latency-duration-s", "1",
                       "--connections", "4", "--systems", "backend,haproxy")
    rows = {row["system"]: row for row in report["results"]}
    assert rows["haproxy"]["rps_vs_haproxy"] == 1.0
    assert rows["backend"]["added_light_p50_us"] == 0.0
    assert rows["haproxy"]["rps"] > 0 and rows["haproxy"]["proxy_cpu"] > 0
    assert report["settings"]["origin"] == "nginx return 200"


def test_missing_wrk_is_reported(tmp_path):
    report = run_bench(tmp_path, "overhead", "--quick", "--systems", "backend",
                       "--wrk", str(tmp_path / "no-wrk"))
    assert report["results"] == []
    assert any("wrk not found" in note for note in report["notes"])


def test_tiny_burst_run_sees_the_backend_queue_grow(tmp_path):
    report = run_bench(tmp_path, "burst", "--quick", "--duration-s", "0.4",
                       "--systems", "backend", "--bin-ms", "100")
    row = report["results"][0]
    assert row["peak_backend_queue"] > 0
    assert len(row["timeline"]["t"]) == 20
    assert {"recovery_s", "queue_drain_s", "goodput_during"} <= set(row)


def test_recovery_waits_for_every_later_window():
    timeline = {"t": [0.0, 1.0, 2.0, 3.0, 4.0],
                "offered_rps": [10.0] * 5,
                "goodput_rps": [10.0, 0.0, 10.0, 0.0, 10.0]}
    assert burst._recovery(timeline, 1.0, 0.9, 1) == 3.0
    assert burst._recovery(timeline, 1.0, 0.9, 2) is None


def test_tiny_idle_run_holds_its_connections(tmp_path):
    report = run_bench(tmp_path, "idle-connections", "--quick",
                       "--idle-count", "50", "--settle-s", "0.1",
                       "--systems", "backend")
    row = report["results"][0]
    assert row["held"] == 50
    assert row["fds_delta"] >= 50
    assert row["kib_per_connection"] is not None


def test_tiny_slow_clients_run_keeps_its_slow_clients_open(tmp_path):
    report = run_bench(tmp_path, "slow-clients", *TINY, "--loris", "20",
                       "--loris-ramp-s", "0.1", "--systems", "backend")
    rows = {row["loris"]: row for row in report["results"]}
    assert set(rows) == {0, 20}
    assert rows[20]["loris_open_at_end"] == 20
    assert rows[0]["loris_open_at_end"] == 0


def test_context_capacity_is_slots_over_service_time(tmp_path):
    ctx = Context("overload", True, {"slots": 8, "service_ms": 20.0}, [],
                  tmp_path, None, None)
    assert ctx.capacity_rps == 400.0


@needs("nginx")
def test_stopping_nginx_leaves_no_worker_behind(tmp_path):
    nginx = systems.find_tool("nginx", None)
    child, _ = systems.start_nginx_origin(nginx, tmp_path, None)
    workers = procs._descendants(child.pid)
    assert workers, "nginx started no worker process"
    child.stop()
    assert child.proc.poll() is not None
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists()
