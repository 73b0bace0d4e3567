"""Tests for proxy.config: the schema, the loader and the typed settings."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import tomllib
from pathlib import Path

import pytest

from proxy.config import (
    FIELDS,
    LIVE_KEYS,
    SECTIONS,
    Settings,
    format_duration,
    format_size,
    live_fields,
    load,
    parse_duration,
    parse_live,
    parse_size,
)
from proxy.errors import ConfigError, MaitredError

ROOT = Path(__file__).resolve().parent.parent
EDGE_EXAMPLE = ROOT / "configs" / "edge.toml"
CORE_STUB = ROOT / "proxy" / "_core.pyi"

# The sketch from the design contract, as written there.
DESIGN_SKETCH = """
[listen]
address = "0.0.0.0:8080"
backlog = 1024
max_connections = 10000
http_engine = "compiled"      # or "h11", the pure-Python reference

[upstream]
url = "http://127.0.0.1:8000"
connect_timeout = "2s"
response_timeout = "30s"      # first response byte
read_timeout = "30s"          # between response bytes once it started
max_idle_connections = 64     # pooled keep-alive connections

[limits]
max_concurrency = 64          # tokens: requests at the backend at once
max_queue = 256               # waiters beyond that
queue_timeout = "250ms"       # longest wait for a token
max_body = "10MiB"

[timeouts]
client_header = "10s"
client_body = "30s"           # between body chunks
idle = "60s"                  # keep-alive wait for the next request
shutdown = "30s"              # drain time on SIGTERM before in-flight work is cut

[shed]
retry_after = "auto"          # or whole seconds

[admin]
address = "127.0.0.1:9901"    # loopback unless a token is set
token_env = "MAITRED_ADMIN_TOKEN"
"""

SYNTAX_ERROR = """\
[limits]
max_concurrency = 64
max_queue = = 256
"""

PUBLIC_ADMIN = """\
[admin]
address = "0.0.0.0:9901"
"""


def defaults() -> Settings:
    return load(environ={})


def load_text(tmp_path: Path, text: str, environ=None) -> Settings:
    path = tmp_path / "maitred.toml"
    path.write_text(text)
    return load(path, environ={} if environ is None else environ)


def load_error(tmp_path: Path, text: str = "", environ=None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, environ)
    return caught.value


def to_toml(tables: dict[str, dict[str, object]]) -> str:
    """Enough of a TOML writer for to_dict()'s strings, integers and bools."""
    lines = []
    for section, values in tables.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


# Defaults and the example --------------------------------------------------


def test_defaults_match_the_design_sketch(tmp_path):
    sketch = load_text(tmp_path, DESIGN_SKETCH)

    assert sketch == defaults()
    assert sketch.listen.http_engine == "compiled"


def test_defaults_have_no_warnings_and_no_source():
    settings = defaults()

    assert settings.warnings == ()
    assert settings.source is None


def test_defaults_agree_with_the_core_constructor():
    tree = ast.parse(CORE_STUB.read_text())
    core = next(n for n in tree.body if getattr(n, "name", "") == "Core")
    init = next(n for n in core.body if getattr(n, "name", "") == "__init__")
    args = init.args
    stub = {
        arg.arg: ast.literal_eval(default)
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
        if arg.arg not in ("resolution", "clock")
    }

    assert defaults().core_kwargs() == stub


def test_edge_example_sets_every_key_to_its_default():
    written = tomllib.loads(EDGE_EXAMPLE.read_text())
    schema: dict[str, dict[str, object]] = {}
    for spec in FIELDS:
        schema.setdefault(spec.section, {})[spec.key] = spec.default

    assert written == schema


def test_edge_example_comments_each_key_with_its_schema_doc():
    assignment = re.compile(r"(\w+) = .*?  # (.*)")
    section = ""
    docs = {}
    for line in EDGE_EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line):
            section = header[1]
        elif match := assignment.fullmatch(line):
            docs[f"{section}.{match[1]}"] = match[2]

    assert docs == {spec.name: spec.doc for spec in FIELDS}


def test_edge_example_loads_as_the_defaults():
    settings = load(EDGE_EXAMPLE, environ={})

    assert settings == defaults()
    assert settings.source == str(EDGE_EXAMPLE)


# Typed settings --------------------------------------------------------------


def test_section_classes_hold_the_schema_keys_in_order():
    settings = defaults()

    for section in SECTIONS:
        typed = getattr(settings, section)
        names = [f.name for f in dataclasses.fields(typed) if f.init]
        assert names == [f.key for f in FIELDS if f.section == section]


def test_values_are_typed_seconds_bytes_and_addresses():
    settings = defaults()

    assert settings.limits.queue_timeout == 0.25
    assert settings.limits.max_body == 10 * 1024 * 1024
    assert settings.limits.max_head == 32 * 1024
    assert settings.listen.address == ("0.0.0.0", 8080)
    assert settings.admin.address == ("127.0.0.1", 9901)
    assert settings.shed.retry_after == "auto"


def test_settings_are_frozen():
    settings = defaults()

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.limits.max_concurrency = 1  # type: ignore[misc]


def test_to_dict_speaks_the_file_format_and_reads_back(tmp_path):
    settings = load_text(tmp_path, '[limits]\nqueue_timeout = "1.5s"\n')
    tables = settings.to_dict()

    assert tables["limits"]["queue_timeout"] == "1.5s"
    assert tables["limits"]["max_body"] == "10MiB"
    assert tables["listen"]["address"] == "0.0.0.0:8080"
    assert load_text(tmp_path, to_toml(tables)) == settings


def test_core_kwargs_take_upstream_timeouts_as_connect_response_read(tmp_path):
    text = '[upstream]\nconnect_timeout = "1s"\nread_timeout = "5s"\n'
    kwargs = load_text(tmp_path, text).core_kwargs()

    assert (kwargs["connect"], kwargs["response"], kwargs["read"]) == (1, 30, 5)


# Bad values ------------------------------------------------------------------

BAD_VALUES = [
    ('[limits]\nmax_concurrency = "abc"', "limits.max_concurrency", "got"),
    ("[limits]\nmax_concurrency = 0", "limits.max_concurrency", "from 1 to"),
    ("[limits]\nmax_concurrency = true", "limits.max_concurrency", "got true"),
    ("[limits]\nmax_concurrency = 64.0", "limits.max_concurrency", "integer"),
    ("[limits]\nmax_queue = -1", "limits.max_queue", "from 0 to 1000000"),
    ("[listen]\nbacklog = 70000", "listen.backlog", "from 1 to 65535"),
    ("[limits]\nqueue_timeout = 5", "limits.queue_timeout", "with a unit"),
    ('[limits]\nqueue_timeout = "5"', "limits.queue_timeout", "with a unit"),
    ('[limits]\nqueue_timeout = "5d"', "limits.queue_timeout", "(ms, s, m, h)"),
    ('[timeouts]\nidle = "0s"', "timeouts.idle", "from 1ms to 24h"),
    ('[timeouts]\nidle = "25h"', "timeouts.idle", "from 1ms to 24h"),
    ('[limits]\nmax_body = "10MB"', "limits.max_body", "B, KiB, MiB or GiB"),
    ('[limits]\nmax_head = "512B"', "limits.max_head", "from 1KiB to 1MiB"),
    ('[limits]\nmax_target = "2MiB"', "limits.max_target", "from 256B to 1MiB"),
    ('[listen]\nhttp_engine = "fast"', "listen.http_engine", '"compiled", "h11"'),
    ('[log]\nlevel = "trace"', "log.level", '"debug", "info"'),
    ('[log]\naccess = "true"', "log.access", "true or false"),
    ('[listen]\naddress = ":8080"', "listen.address", "a host is required"),
    ('[listen]\naddress = "::1:8080"', "listen.address", "in brackets"),
    ('[listen]\naddress = "localhost"', "listen.address", "host:port"),
    ('[listen]\naddress = "host:65536"', "listen.address", "host:port"),
    ("[shed]\nretry_after = 0", "shed.retry_after", '"auto" or whole'),
    ('[shed]\nretry_after = "soon"', "shed.retry_after", '"auto" or whole'),
    ('[admin]\ntoken_env = "MY TOKEN"', "admin.token_env", "variable name"),
    ("[upstream]\nmax_idle_connections = [1]", "upstream.", "got an array"),
    ("limits = 5", "limits", "expected a table [limits], got 5"),
]


@pytest.mark.parametrize("text, key, fragment", BAD_VALUES)
def test_bad_value_is_one_line_naming_the_key(tmp_path, text, key, fragment):
    error = load_error(tmp_path, text + "\n")
    message = str(error)

    assert error.key.startswith(key)
    assert message.startswith(f"{error.key}: ")
    assert fragment in message
    assert "\n" not in message


def test_bad_integer_says_the_range_and_quotes_the_value(tmp_path):
    error = load_error(tmp_path, '[limits]\nmax_concurrency = "abc"\n')

    assert isinstance(error, MaitredError)
    assert str(error) == (
        'limits.max_concurrency: expected an integer from 1 to 1000000, got "abc"'
    )


def test_unknown_key_suggests_the_closest_one(tmp_path):
    error = load_error(tmp_path, '[limits]\nqueue_timout = "1s"\n')

    assert error.key == "limits.queue_timout"
    expected = "limits.queue_timout: unknown key (did you mean queue_timeout?)"
    assert str(error) == expected


def test_key_in_the_wrong_section_points_to_its_home(tmp_path):
    error = load_error(tmp_path, '[timeouts]\nmax_body = "1MiB"\n')

    assert str(error).endswith("unknown key (did you mean limits.max_body?)")


def test_unknown_section_is_refused(tmp_path):
    error = load_error(tmp_path, "[limit]\nmax_queue = 1\n")

    assert str(error) == "limit: unknown section (did you mean limits?)"


def test_key_outside_any_section_is_refused(tmp_path):
    error = load_error(tmp_path, "max_queue = 1\n")

    assert "outside any section (did you mean limits.max_queue?)" in str(error)


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    error = load_error(tmp_path, SYNTAX_ERROR)

    assert error.key is None
    assert str(error).startswith(str(tmp_path / "maitred.toml"))
    assert "line 3" in str(error)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such config file") as caught:
        load(tmp_path / "absent.toml", environ={})

    assert str(tmp_path / "absent.toml") in str(caught.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path, environ={})


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nlevel = "\xe9"\n')

    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path, environ={})


# Durations and sizes -------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("250ms", 0.25), ("1.5s", 1.5), ("2m", 120), ("1h", 3600), ("100ms", 0.1)],
)
def test_durations_read_with_their_unit(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5", "5 s", "-1s", "5d", "1.s", "", "1e3s"])
def test_duration_without_a_known_unit_is_refused(text):
    with pytest.raises(ValueError, match=r"with a unit \(ms, s, m, h\)"):
        parse_duration(text)


@pytest.mark.parametrize(
    "seconds, text",
    [(0.25, "250ms"), (2, "2s"), (1.5, "1.5s"), (90, "90s"), (120, "2m")]
    + [(7200, "2h"), (0.0005, "0.5ms"), (0, "0s")],
)
def test_durations_format_in_the_largest_exact_unit(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.1, 0.3, 1 / 3, 59.999, 86400, 1e-6])
def test_formatted_durations_read_back_exactly(seconds):
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    "value, size",
    [("512", 512), (512, 512), ("0B", 0), ("32KiB", 32768)]
    + [("10MiB", 10 << 20), ("2GiB", 2 << 30)],
)
def test_sizes_read_in_binary_units(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["10MB", "1.5MiB", "8kib", "-1", -1, "1 KiB"])
def test_size_in_other_units_is_refused(value):
    with pytest.raises(ValueError, match="B, KiB, MiB or GiB"):
        parse_size(value)


@pytest.mark.parametrize(
    "size, text",
    [(0, "0B"), (1000, "1000B"), (8192, "8KiB"), (10 << 20, "10MiB")]
    + [(1 << 40, "1024GiB"), (1536, "1536B")],
)
def test_sizes_format_in_the_largest_exact_unit(size, text):
    assert format_size(size) == text


# Addresses and the upstream URL --------------------------------------------


@pytest.mark.parametrize(
    "text, address",
    [("127.0.0.1:9000", ("127.0.0.1", 9000)), ("[::1]:9000", ("::1", 9000))]
    + [("edge.example:80", ("edge.example", 80)), ("0.0.0.0:0", ("0.0.0.0", 0))],
)
def test_listen_address_reads_as_host_and_port(tmp_path, text, address):
    settings = load_text(tmp_path, f'[listen]\naddress = "{text}"\n')

    assert settings.listen.address == address
    assert settings.to_dict()["listen"]["address"] == text


@pytest.mark.parametrize(
    "url, host, port, host_header",
    [
        ("http://127.0.0.1:8000", "127.0.0.1", 8000, "127.0.0.1:8000"),
        ("http://backend", "backend", 80, "backend"),
        ("http://[::1]:8000/", "::1", 8000, "[::1]:8000"),
    ],
)
def test_upstream_url_gives_host_port_and_host_header(
    tmp_path, url, host, port, host_header
):
    upstream = load_text(tmp_path, f'[upstream]\nurl = "{url}"\n').upstream

    assert (upstream.host, upstream.port, upstream.host_header) == (
        host,
        port,
        host_header,
    )


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("https://backend:8443", "https is not supported"),
        ("http://backend:8000/api", "a path, query or fragment"),
        ("http://backend:8000?debug=1", "a path, query or fragment"),
        ("http://user:secret@backend", "user name or password"),
        ("ftp://backend", "an http:// URL"),
        ("http://backend:0", "an http:// URL"),
        ("http://", "an http:// URL"),
        ("http://back\\tend:8000", "an http:// URL"),  # TOML escape: a tab
    ],
)
def test_upstream_url_must_be_plain_http_host_and_port(tmp_path, url, fragment):
    error = load_error(tmp_path, f'[upstream]\nurl = "{url}"\n')

    assert error.key == "upstream.url"
    assert fragment in str(error)


# The admin listener ----------------------------------------------------------


def test_admin_beyond_loopback_without_token_is_refused(tmp_path):
    error = load_error(tmp_path, PUBLIC_ADMIN)

    assert error.key == "admin.address"
    assert "token is required: set MAITRED_ADMIN_TOKEN" in str(error)


def test_empty_admin_token_counts_as_none(tmp_path):
    error = load_error(tmp_path, PUBLIC_ADMIN, {"MAITRED_ADMIN_TOKEN": ""})

    assert error.key == "admin.address"


def test_admin_beyond_loopback_with_token_is_accepted(tmp_path):
    settings = load_text(tmp_path, PUBLIC_ADMIN, {"MAITRED_ADMIN_TOKEN": "s3"})

    assert settings.admin.address == ("0.0.0.0", 9901)
    assert settings.admin_token == "s3"
    assert "s3" not in repr(settings)


def test_admin_token_is_read_from_the_variable_token_env_names(tmp_path):
    text = PUBLIC_ADMIN + 'token_env = "EDGE_ADMIN_TOKEN"\n'
    settings = load_text(tmp_path, text, {"EDGE_ADMIN_TOKEN": "s3"})

    assert settings.admin_token == "s3"


@pytest.mark.parametrize("address", ["127.0.0.2:9901", "[::1]:9901", "localhost:1"])
def test_admin_on_loopback_needs_no_token(tmp_path, address):
    settings = load_text(tmp_path, f'[admin]\naddress = "{address}"\n')

    assert settings.admin_token is None


def test_admin_on_the_data_port_is_refused(tmp_path):
    error = load_error(tmp_path, '[admin]\naddress = "127.0.0.1:8080"\n')

    assert error.key == "admin.address"
    assert "data port" in str(error)


# Environment overrides -----------------------------------------------------


def test_environment_overrides_the_file(tmp_path):
    environ = {
        "MAITRED_LIMITS_MAX_CONCURRENCY": "128",
        "MAITRED_UPSTREAM_URL": "http://127.0.0.1:9000",
        "MAITRED_LOG_ACCESS": "true",
    }
    text = "[limits]\nmax_concurrency = 32\nmax_queue = 16\n"
    settings = load_text(tmp_path, text, environ)

    assert settings.limits.max_concurrency == 128
    assert settings.limits.max_queue == 16
    assert settings.upstream.port == 9000
    assert settings.log.access is True


def test_environment_applies_without_a_file():
    settings = load(environ={"MAITRED_LIMITS_QUEUE_TIMEOUT": "1s"})

    assert settings.limits.queue_timeout == 1.0


def test_load_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MAITRED_LIMITS_MAX_QUEUE", "7")

    assert load().limits.max_queue == 7


@pytest.mark.parametrize(
    "text, value",
    [("true", True), ("1", True), ("yes", True), ("False", False), ("0", False)]
    + [("no", False)],
)
def test_environment_booleans_take_common_words(text, value):
    settings = load(environ={"MAITRED_LOG_ACCESS": text})

    assert settings.log.access is value


@pytest.mark.parametrize(
    "name, text",
    [
        ("MAITRED_LIMITS_MAX_CONCURRENCY", "lots"),
        ("MAITRED_LIMITS_MAX_CONCURRENCY", ""),
        ("MAITRED_LOG_ACCESS", "maybe"),
        ("MAITRED_TIMEOUTS_IDLE", "60"),
    ],
)
def test_environment_type_error_names_the_variable(name, text):
    with pytest.raises(ConfigError) as caught:
        load(environ={name: text})

    assert caught.value.key == name
    assert str(caught.value).startswith(f"{name}: expected ")
    assert f"got {json.dumps(text)}" in str(caught.value)


def test_unknown_variable_under_a_known_section_is_refused():
    with pytest.raises(ConfigError) as caught:
        load(environ={"MAITRED_LIMITS_FOO": "1"})

    assert str(caught.value) == "MAITRED_LIMITS_FOO: unknown setting"


def test_misspelt_variable_suggests_the_setting():
    with pytest.raises(ConfigError, match="did you mean MAITRED_LOG_LEVEL"):
        load(environ={"MAITRED_LOG_LEVLE": "debug"})


def test_reserved_and_unrelated_variables_are_ignored():
    environ = {
        "MAITRED_ADMIN": "http://127.0.0.1:9901",
        "MAITRED_ADMIN_TOKEN": "s3",
        "MAITRED_ADMIN_SECRET": "s4",
        "MAITRED_ADMIN_TOKEN_ENV": "MAITRED_ADMIN_SECRET",
        "MAITRED_CONFIG": "edge.toml",
        "PATH": "/usr/bin",
    }
    settings = load(environ=environ)

    assert settings.admin_token == "s4"


# Live settings ---------------------------------------------------------------


def test_live_keys_are_limits_timeouts_and_upstream_timeouts():
    expected = {f.key for f in FIELDS if f.section in ("limits", "timeouts")}
    expected |= {"connect_timeout", "response_timeout", "read_timeout"}

    assert set(LIVE_KEYS) == expected
    assert len(LIVE_KEYS) == len(expected)
    assert LIVE_KEYS == tuple(f.key for f in live_fields())


@pytest.mark.parametrize(
    "key, value, parsed",
    [
        ("queue_timeout", "100ms", 0.1),
        ("queue_timeout", 0.1, 0.1),
        ("idle", 5, 5.0),
        ("max_concurrency", 8, 8),
        ("max_concurrency", "128", 128),
        ("max_body", "1MiB", 1 << 20),
        ("max_queue", 0, 0),
        ("read_timeout", "2m", 120.0),
    ],
)
def test_parse_live_reads_json_and_command_line_values(key, value, parsed):
    assert parse_live(key, value) == parsed


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_concurrency", True),
        ("max_concurrency", 8.5),
        ("max_concurrency", 0),
        ("queue_timeout", "100"),
        ("queue_timeout", 0),
        ("queue_timeout", math.nan),
        ("queue_timeout", 10**400),
        ("max_head", "2MiB"),
    ],
)
def test_parse_live_refuses_bad_values_naming_the_setting(key, value):
    with pytest.raises(ConfigError) as caught:
        parse_live(key, value)

    assert caught.value.key.endswith(f".{key}")
    assert "expected" in str(caught.value)


def test_parse_live_refuses_settings_that_cannot_change_live():
    with pytest.raises(ConfigError, match="not a setting that can change live"):
        parse_live("url", "http://127.0.0.1:1")

    with pytest.raises(ConfigError, match="did you mean max_concurrency"):
        parse_live("max_concurency", 8)


# Warnings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ('[limits]\nqueue_timeout = "30s"', "limits.queue_timeout"),
        ("[limits]\nmax_queue = 20000", "limits.max_queue"),
        ('[limits]\nmax_target = "64KiB"', "limits.max_target"),
        (
            "[listen]\nmax_connections = 10\n[limits]\nmax_concurrency = 20\n"
            "max_queue = 0",
            "limits.max_concurrency",
        ),
    ],
)
def test_legal_but_odd_values_warn(tmp_path, text, key):
    warnings = load_text(tmp_path, text + "\n").warnings

    assert len(warnings) == 1
    assert warnings[0].startswith(key)
    assert "\n" not in warnings[0]


def test_kubernetes_service_link_variables_are_not_settings():
    environ = {
        "MAITRED_ADMIN_SERVICE_HOST": "10.0.0.1",
        "MAITRED_ADMIN_SERVICE_PORT": "9901",
        "MAITRED_ADMIN_SERVICE_PORT_ADMIN": "9901",
        "MAITRED_ADMIN_PORT": "tcp://10.0.0.1:9901",
        "MAITRED_ADMIN_PORT_9901_TCP_ADDR": "10.0.0.1",
        "MAITRED_LISTEN_PORT_8080_TCP_PROTO": "tcp",
    }
    assert load(None, environ=environ) == load(None, environ={})


def test_a_misspelt_setting_is_still_refused_beside_service_links():
    with pytest.raises(ConfigError, match="MAITRED_ADMIN_PORTS"):
        load(None, environ={"MAITRED_ADMIN_PORTS": "1"})


def test_a_blank_admin_token_counts_as_no_token():
    environ = {"MAITRED_ADMIN_TOKEN": "   ", "MAITRED_ADMIN_ADDRESS": "0.0.0.0:9901"}
    with pytest.raises(ConfigError, match="admin.address"):
        load(None, environ=environ)


def test_a_misspelt_section_in_a_variable_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError) as caught:
        load(None, environ={"MAITRED_LIMITZ_MAX_QUEUE": "5"})
    assert caught.value.key == "MAITRED_LIMITZ_MAX_QUEUE"
    assert "MAITRED_LIMITS_MAX_QUEUE" in str(caught.value)


def test_variables_of_other_programs_named_maitred_are_left_alone():
    environ = {"MAITRED_FUZZ_EXAMPLES": "100", "MAITRED_SERVICE_HOST": "x"}
    assert load(None, environ=environ) == load(None, environ={})
