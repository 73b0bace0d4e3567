"""Writing a scenario's results: one JSON file, a Markdown table, PNG plots.

The JSON holds everything -- machine facts, pinning, versions, settings,
every round's row, the summary with its spread across rounds, the goals --
so that tables and plots can be redrawn from it. The Markdown opens with a
warning when the figures come from a ``--quick`` smoke run, lists every
system including the missing ones, and closes with the goals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write(report: dict, out: Path, markdown_body: str,
          plot: Callable[[dict, Path, object], list[str]]) -> dict[str, str]:
    """Write ``<scenario>.json``, ``.md`` and the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    name = report["scenario"]
    files = {"json": f"{name}.json", "markdown": f"{name}.md"}
    pyplot = _pyplot()
    if pyplot is None:
        report["notes"].append(
            "plots not drawn: matplotlib is not installed "
            "(pip install '.[bench]')")
    else:
        files["plots"] = plot(report, out, pyplot)
    report["files"] = files
    (out / files["json"]).write_text(json.dumps(report, indent=2) + "\n")
    text = header(report) + markdown_body + goals(report) + notes(report)
    (out / files["markdown"]).write_text(text)
    return files


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


def header(report: dict) -> str:
    machine = report["machine"]
    lines = [f"# bench: {report['scenario']}", ""]
    if report["quick"]:
        lines += ["> **Smoke run (`--quick`)**: tiny durations; these figures "
                  "check the harness and mean nothing about performance.", ""]
    lines += [
        f"- date: {report['started']} ({report['elapsed_s']:.0f} s)",
        f"- machine: {machine['cpu_count']} cores, {machine['cpu_model']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}, "
        f"load average (1 min) {machine['loadavg_start'][0]:.2f} at start, "
        f"{machine['loadavg_end'][0]:.2f} at end",
        f"- pinning: {_pinning(report['pinning'])}",
        f"- settings: {_settings(report['settings'])}",
        "",
        "| system | status | version |",
        "| --- | --- | --- |",
    ]
    for system in report["systems"]:
        status = "ok" if system["available"] else f"MISSING: {system['reason']}"
        if system.get("start_error"):
            status = f"FAILED TO START: {short(system['start_error'])}"
        lines.append(f"| {system['name']} | {status} | {system['version'] or ''} |")
    return "\n".join(lines) + "\n\n"


def _pinning(pinning: dict) -> str:
    if not pinning["applied"]:
        return f"none ({pinning['why_not']})"
    return (f"proxy on core {pinning['proxy_cpu']}, load tool and backend on "
            f"core {pinning['load_cpu']}")


def _settings(settings: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def goals(report: dict) -> str:
    if not report["goals"]:
        return ""
    lines = ["", "## Goals (maitred)", "", "| goal | system | measured | met |",
             "| --- | --- | --- | --- |"]
    for goal in report["goals"]:
        met = {True: "yes", False: "**NO**", None: "unknown"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {goal['system']} | "
                     f"{goal['measured']} | {met} |")
    return "\n".join(lines) + "\n"


def notes(report: dict) -> str:
    if not report["notes"]:
        return ""
    return "\n## Notes\n\n" + "".join(f"- {note}\n" for note in report["notes"])


def short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_rows(result: dict, width: int, make_row) -> list[list]:
    """Table rows of the summary: a missing system, or one that never
    started, takes one row that says so; the rest come from ``make_row``."""
    failed = {s["name"]: s["start_error"] for s in result["systems"]
              if s.get("start_error")}
    never_ran = {name for name in failed if not any(
        e.get("valid_rounds") for e in result["summary"]
        if e["system"] == name)}
    rows, done = [], set()
    for entry in result["summary"]:
        name = entry["system"]
        if "missing" in entry:
            rows.append([name, "MISSING", *[None] * (width - 3),
                         short(entry["missing"], 120)])
        elif name in never_ran:
            if name not in done:
                rows.append([name, "FAILED TO START", *[None] * (width - 3),
                             "see systems above"])
                done.add(name)
        else:
            rows.append(make_row(entry))
    return rows


def rounds_cell(entry: dict) -> str:
    text = f"{entry['valid_rounds']}/{entry['rounds']}"
    if entry.get("invalid_reasons"):
        text += " (" + "; ".join(short(r, 120) for r in
                                 entry["invalid_reasons"]) + ")"
    return text


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + " --- |" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def percent(fraction: float | None) -> str | None:
    return None if fraction is None else f"{fraction * 100:.1f}%"


def goal(text: str, system: str, measured, met: bool | None) -> dict:
    return {"goal": text, "system": system, "measured": measured, "met": met}


def system_label(peer_names: list[str]):
    """A stable colour and marker per system across every plot."""
    styles = ["o-", "s-", "^-", "D-", "v-", "x-"]
    return {name: styles[i % len(styles)] for i, name in enumerate(peer_names)}
