"""``python -m bench <scenario> [--quick] [--out DIR] [options]``.

Every setting has one default for a full run and one for ``--quick``; the
scenario modules and ``COMMON`` below declare them, and the command-line
options are made from those declarations, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .harness import Context, choose_cpus, machine_facts
from .scenarios import SCENARIOS
from .systems import SYSTEM_NAMES, find_peers

COMMON = {  # setting: (full run, --quick run)
    "slots": (8, 8),
    "service_ms": (20.0, 20.0),
    "max_concurrency": (None, None),
    "max_queue": (None, None),
    "queue_timeout_ms": (150.0, 150.0),
    "slo_ms": (500.0, 500.0),
    "client_timeout_ms": (1000.0, 1000.0),
    "arrivals": ("poisson", "poisson"),
    "seed": (1, 1),
    "max_lag_ms": (10.0, 10.0),
    "max_client_connections": (9000, 9000),
}

HELP = {
    "slots": "backend service slots N",
    "service_ms": "backend service time S per request (capacity N*1000/S)",
    "max_concurrency": "proxies' concurrency limit (default: slots)",
    "max_queue": "proxies' queue length (default: slots)",
    "queue_timeout_ms": "longest queue wait (HAProxy timeout queue)",
    "slo_ms": "a 2xx counts as goodput when it completes within this",
    "client_timeout_ms": "the load generator gives up after this",
    "arrivals": "poisson or constant",
    "max_lag_ms": "a run whose generator lag p99 exceeds this is invalid",
    "max_client_connections": "the load generator's connection cap",
    "multiples": "offered loads, comma-separated multiples of capacity",
    "duration_s": "measured window of each run",
    "warmup_s": "load before the measured window, not counted",
}

ROOT_RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    args.argv = argv
    signal.signal(signal.SIGTERM, _terminate)
    _raise_fd_limit()
    out = Path(args.out) if args.out else ROOT_RESULTS / _stamp()
    names = ([args.scenario] if args.scenario != "all"
             else list(SCENARIOS))
    try:
        for name in names:
            run_scenario(name, args, out)
    except KeyboardInterrupt:
        print("bench: interrupted; every server it started was stopped",
              file=sys.stderr)
        return 130
    print(f"bench: results in {out}", file=sys.stderr)
    return 0


def _raise_fd_limit() -> None:
    """Idle and overload runs hold thousands of sockets; so do the
    servers, which inherit the limit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def run_scenario(name: str, args: argparse.Namespace, out: Path) -> dict:
    """Run one scenario and write its JSON, Markdown and plots into out."""
    module = SCENARIOS[name]
    settings = resolve_settings(module, args)
    tools = {"haproxy": args.haproxy, "nginx": args.nginx,
             "maitred": args.maitred, "wrk": args.wrk}
    peers = find_peers(args.systems.split(","), tools)
    pinning = choose_cpus(not args.no_pin, args.proxy_cpu, args.load_cpu)
    started = dt.datetime.now().astimezone()
    load_at_start = list(os.getloadavg())
    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
        ctx = Context(name, args.quick, settings, peers, Path(workdir),
                      pinning["proxy_cpu"], pinning["load_cpu"], tools)
        result = module.run(ctx)
    machine = machine_facts()
    machine["loadavg_start"] = load_at_start
    full = {
        "bench": "maitred", "scenario": name, "quick": args.quick,
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - clock, 1),
        "command": ["python", "-m", "bench", *args.argv],
        "machine": machine, "pinning": pinning,
        "systems": [_system_entry(peer, ctx) for peer in peers],
        "settings": settings, "notes": ctx.notes, **result,
    }
    files = report.write(full, out, module.markdown(full), module.plot)
    print(f"bench: {name} -> {out / files['markdown']}", file=sys.stderr)
    return full


def _system_entry(peer, ctx: Context) -> dict:
    entry = peer.describe()
    entry["start_error"] = ctx.failed.get(peer.name)
    return entry


def resolve_settings(module, args: argparse.Namespace) -> dict:
    """Full or quick defaults, overridden by the options given."""
    column = 1 if args.quick else 0
    declared = {**COMMON, **module.DEFAULTS}
    settings = {}
    for key, defaults in declared.items():
        given = getattr(args, key, None)
        settings[key] = defaults[column] if given is None else given
    for key in ("max_concurrency", "max_queue"):
        if settings[key] is None:
            settings[key] = settings["slots"]
    return settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure maitred beside the bare backend, HAProxy and nginx.",
    )
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: every part, tiny durations (~1 min)")
    parser.add_argument("--out", help="results folder "
                        "(default: bench/results/<timestamp>/)")
    parser.add_argument("--systems", default=",".join(SYSTEM_NAMES),
                        help="comma-separated, from: " + ",".join(SYSTEM_NAMES))
    for tool in ("haproxy", "nginx", "wrk"):
        parser.add_argument(f"--{tool}", help=f"{tool} binary (default: PATH)")
    parser.add_argument("--maitred", help="command that runs maitred "
                        "(default: maitred on PATH, else python -m proxy)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin processes to cores")
    parser.add_argument("--proxy-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    _add_settings(parser)
    return parser


def _add_settings(parser: argparse.ArgumentParser) -> None:
    declared: dict[str, list[tuple]] = {}
    for defaults in [COMMON, *(m.DEFAULTS for m in SCENARIOS.values())]:
        for key, pair in defaults.items():
            pairs = declared.setdefault(key, [])
            if pair not in pairs:
                pairs.append(pair)
    for key, pairs in sorted(declared.items()):
        if len(pairs) == 1:
            default = "full: {}, quick: {}".format(*pairs[0])
        else:
            default = "default depends on the scenario, see bench/README.md"
        option = "--" + key.replace("_", "-")
        helptext = f"{HELP.get(key, key.replace('_', ' '))} [{default}]"
        parser.add_argument(option, dest=key, type=_kind(*pairs[0]),
                            default=None, help=helptext.replace("%", "%%"))


def _kind(full, quick):
    sample = full if full is not None else quick
    if isinstance(sample, list):
        return lambda text: [float(part) for part in text.split(",")]
    if isinstance(sample, str):
        return str
    if isinstance(sample, float):
        return float
    return int
