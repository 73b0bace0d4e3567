"""The ``maitred`` command.

Only this module turns errors into messages and exit codes: a bad config
exits 2 with one line naming the key, anything else the user can fix
exits 1 with one line. No traceback reaches a user.
"""

from __future__ import annotations

import functools
import sys

import click

from proxy import config as config_module
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

    uvloop.run(run_demo(port, with_load, click.echo))


if __name__ == "__main__":
    main()
