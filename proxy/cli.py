"""The ``maitred`` command.

Only this module turns errors into messages and exit codes: a bad config
exits 2 with one line naming the key, anything else the user can fix
exits 1 with one line. No traceback reaches a user.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from proxy import config as config_module
from proxy.adminclient import AdminClient, AdminClientError
from proxy.errors import ConfigError, MaitredError

EXIT_CONFIG = 2


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"maitred: {message}", err=True)
    sys.exit(code)


def _guard(func):
    """Run a command; errors the user can fix become one line and an exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ConfigError as err:
            _fail(str(err), EXIT_CONFIG)
        except AdminClientError as err:
            _fail(str(err), EXIT_CONFIG if err.rejected else 1)
        except MaitredError as err:
            _fail(str(err))
        except OSError as err:
            _fail(_describe_os_error(err))

    return wrapper


def _describe_os_error(err: OSError) -> str:
    text = err.strerror or str(err)
    if err.filename:
        return f"{err.filename}: {text}"
    return text


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="maitred")
def main() -> None:
    """maitred: an admission-control reverse proxy for HTTP/1.1 backends."""


@main.command()
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    help="TOML config file; without it, defaults plus MAITRED_* variables.",
)
@_guard
def run(config_path: str | None) -> None:
    """Serve until SIGTERM or SIGINT (which drain first)."""
    from proxy.server import serve

    settings = config_module.load(config_path)
    serve(settings)


@main.command("check-config")
@click.argument("path", metavar="FILE")
@_guard
def check_config(path: str) -> None:
    """Validate FILE (and MAITRED_* variables) without starting."""
    settings = config_module.load(path)
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{path}: ok")


@main.command()
@click.option("--load", "with_load", is_flag=True,
              help="Drive a short overload burst and report what happened.")
@click.option("--port", default=8080, show_default=True,
              help="Port for maitred on 127.0.0.1 (0 picks a free one).")
@_guard
def demo(with_load: bool, port: int) -> None:
    """Start a sample backend with maitred in front of it."""
    import uvloop

    from proxy.demo import run_demo

    try:
        uvloop.run(run_demo(port, with_load, click.echo))
    except KeyboardInterrupt:
        click.echo("\nstopped")


# -- talking to a running proxy -------------------------------------------------


def _admin_options(func):
    """--admin, --token, --config and --json, shared by every admin command."""
    options = [
        click.option("--admin", "admin_url", metavar="URL",
                     help="Admin API address (default: $MAITRED_ADMIN, then "
                          "the config's admin.address)."),
        click.option("--token", metavar="TOKEN",
                     help="Bearer token (default: the config's token_env "
                          "variable, MAITRED_ADMIN_TOKEN)."),
        click.option("--config", "config_path", metavar="FILE",
                     help="Config file to find the admin address in."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print JSON for scripts."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _client(admin_url: str | None, token: str | None,
            config_path: str | None) -> AdminClient:
    settings = None
    if admin_url is None:
        admin_url = os.environ.get("MAITRED_ADMIN")
    if admin_url is None or token is None:
        settings = config_module.load(config_path)
    if admin_url is None:
        host, port = settings.admin.address
        host = f"[{host}]" if ":" in host else host
        admin_url = f"http://{host}:{port}"
    if "://" not in admin_url:
        admin_url = "http://" + admin_url
    if token is None:
        token = settings.admin_token
    return AdminClient(admin_url, token)


def _print_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True))


def _print_limits(limits: dict) -> None:
    for spec in config_module.live_fields():
        value = limits.get(spec.key)
        if value is None:
            continue
        shown = spec.kind.format(value)
        click.echo(f"{spec.key:18} {shown!s:>10}   {spec.doc}")


@main.group()
def limits() -> None:
    """Show or change the limits of a running proxy."""


@limits.command("show")
@_admin_options
@_guard
def limits_show(admin_url, token, config_path, as_json) -> None:
    """Print the limits and timeouts in force."""
    current = _client(admin_url, token, config_path).get("/limits")
    if as_json:
        _print_json(current)
    else:
        _print_limits(current)


def _live_options(func):
    """One option per live setting, generated from the config schema."""
    for spec in reversed(config_module.live_fields()):
        flag = "--" + spec.key.replace("_", "-")
        func = click.option(flag, spec.key, metavar=spec.kind.name.upper(),
                            help=f"{spec.doc} ({spec.kind.noun})")(func)
    return func


@limits.command("set")
@_live_options
@_admin_options
@_guard
def limits_set(admin_url, token, config_path, as_json, **values) -> None:
    """Change limits at once, e.g. --max-concurrency 128 --queue-timeout 100ms."""
    changes = {k: v for k, v in values.items() if v is not None}
    if not changes:
        raise click.UsageError("name at least one limit to change")
    for key, value in changes.items():
        config_module.parse_live(key, value)
    client = _client(admin_url, token, config_path)
    before = client.get("/limits")
    after = client.patch("/limits", changes)
    if as_json:
        _print_json(after)
        return
    for spec in config_module.live_fields():
        if spec.key in changes:
            old, new = before[spec.key], after[spec.key]
            click.echo(f"{spec.key}: {spec.kind.format(old)} -> "
                       f"{spec.kind.format(new)}")


@main.command()
@_admin_options
@_guard
def status(admin_url, token, config_path, as_json) -> None:
    """Print in-flight, queue, connections and counters."""
    snapshot = _client(admin_url, token, config_path).get("/status")
    if as_json:
        _print_json(snapshot)
        return
    limits_now = snapshot["limits"]
    counters = snapshot["counters"]
    click.echo(f"in flight    {snapshot['inflight']} / "
               f"{limits_now['max_concurrency']}")
    click.echo(f"queued       {snapshot['queued']} / {limits_now['max_queue']}")
    click.echo(f"connections  {snapshot['connections']}")
    click.echo(f"draining     {'yes' if snapshot['draining'] else 'no'}")
    click.echo(f"admitted     {counters['admitted']}")
    click.echo("requests     " + _pairs(counters["requests"]))
    click.echo("shed         " + _pairs(counters["shed"]))


def _pairs(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


@main.command()
@_admin_options
@click.option("--interval", default=1.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds between refreshes.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Stop after this many refreshes (default: until Ctrl-C).")
@_guard
def top(admin_url, token, config_path, as_json, interval, count) -> None:
    """A live view: in-flight against the cap, queue, rates, latency."""
    from proxy.top import run_top

    client = _client(admin_url, token, config_path)
    try:
        run_top(client, interval, count, as_json, click.echo)
    except KeyboardInterrupt:
        pass


@main.command()
@_admin_options
@_guard
def drain(admin_url, token, config_path, as_json) -> None:
    """Stop taking new work; in-flight requests finish."""
    answer = _client(admin_url, token, config_path).post("/drain")
    if as_json:
        _print_json(answer)
    else:
        click.echo("draining: new requests get 503, in-flight ones finish")


if __name__ == "__main__":
    main()
