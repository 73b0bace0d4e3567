"""The container image and the deployment examples, checked without Docker.

No Docker engine runs where these tests do, so they do what an image build
and a container would, with the very commands the files hold:

- The Dockerfile is read (continuation lines, stages, exec-form JSON) and
  its facts are checked: a numeric non-root USER, a HEALTHCHECK on
  /healthz, EXPOSE equal to the sidecar config's ports, the config path.
- The build is replayed: the context is made as .dockerignore says, the
  build stage's pip step runs on it, the runtime stage's pip step installs
  the wheels into a fresh virtual environment standing for the image, and
  ENTRYPOINT + CMD run from there with configs/sidecar.toml and only
  environment overrides, in front of the compose file's sample app, until
  SIGTERM drains them and maitred exits 0. Paths the Dockerfile names
  (/wheels, /etc/maitred/...) live under a temporary root per stage.
- The compose file and the Kubernetes manifests are parsed, and the config
  each one mounts is loaded by proxy.config with the environment each one
  sets, so ports, probes and paths are checked against what maitred would
  really run with.
"""

from __future__ import annotations

import http.client
import json
import os
import posixpath
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import venv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from proxy import config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SIDECAR = ROOT / "configs" / "sidecar.toml"
COMPOSE = ROOT / "configs" / "docker-compose.yml"
KUBERNETES = ROOT / "configs" / "kubernetes"
CONFIG_PATH = "/etc/maitred/maitred.toml"

BUILD_TIMEOUT = 300.0
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", "<"}


# -- reading the Dockerfile ------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    rest: str

    def flags(self) -> tuple[dict[str, str], str]:
        """Leading --name=value options, and what follows them."""
        found = {}
        rest = self.rest
        while rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            name, _, value = token[2:].partition("=")
            found[name] = value
            rest = rest.lstrip()
        return found, rest

    def exec_form(self) -> list[str]:
        """The JSON array after the flags (and after CMD for HEALTHCHECK)."""
        _, rest = self.flags()
        if self.keyword == "HEALTHCHECK":
            keyword, _, rest = rest.partition(" ")
            assert keyword == "CMD", self.rest
        value = json.loads(rest)
        assert isinstance(value, list), f"{self.keyword} is not in exec form"
        assert all(isinstance(item, str) for item in value), value
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
        return found[0]


def logical_lines(text: str) -> Iterator[str]:
    """Instructions one per line, as Docker joins them: a trailing
    backslash continues, comment and blank lines are skipped even inside a
    continuation, and continued lines keep their leading spaces."""
    current = None
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        body = raw.rstrip()
        more = body.endswith("\\")
        if more:
            body = body[:-1]
        current = body.lstrip() if current is None else current + body
        if not more:
            yield current
            current = None
    assert current is None, "the Dockerfile ends inside a continuation"


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base, _, name = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: args[m.group(1) or m.group(2)],
                rest,
            ).partition(" AS ")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return stages


def runtime_stage() -> Stage:
    return read_dockerfile()[-1]


def image_command() -> list[str]:
    """What the image runs: ENTRYPOINT followed by CMD."""
    stage = runtime_stage()
    return stage.one("ENTRYPOINT").exec_form() + stage.one("CMD").exec_form()


def sidecar_settings(environ: dict[str, str] | None = None) -> config.Settings:
    return config.load(SIDECAR, environ=environ or {})


# -- the build context -----------------------------------------------------


def _translate(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: * and ? stay within one path
    segment, ** spans any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignore_rules(path: Path = DOCKERIGNORE) -> list[tuple[bool, str]]:
    """(is_exception, cleaned pattern) for each line, in order."""
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((exception, pattern))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its
    parent folders decides, and "!" lets a path back in."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exception, pattern in rules:
        if exception != ignored:
            continue
        regex = _translate(pattern)
        if any(regex.match(c) for c in candidates):
            ignored = not exception
    return ignored


def build_context(source: Path, dest: Path) -> None:
    """Copy what ``docker build`` would send from ``source`` to ``dest``."""
    rules = ignore_rules()
    exceptions = [p for exception, p in rules if exception]
    for folder, dirs, files in os.walk(source):
        here = Path(folder).relative_to(source).as_posix()
        here = "" if here == "." else here + "/"
        dirs[:] = [
            d for d in dirs
            if not is_ignored(here + d, rules)
            or any(p.startswith(here + d + "/") for p in exceptions)
        ]
        for name in files:
            if not is_ignored(here + name, rules):
                target = dest / (here + name)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / name, target)


# -- replaying the build ---------------------------------------------------


@dataclass
class Image:
    """A runtime stage replayed: its files under ``root``, its Python in
    ``venv``, and the ENV it sets."""

    root: Path
    venv: Path
    env: dict[str, str]

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def argv(self, command: list[str]) -> list[str]:
        """A command as the image would run it, with the image's
        executables and its absolute paths mapped to the replay."""
        executable = self.venv / "bin" / command[0]
        assert executable.exists(), f"the image has no {command[0]}"
        rest = [self.path(a).as_posix() if a.startswith("/") else a
                for a in command[1:]]
        return [str(executable), *rest]

    def environ(self, **overrides: str) -> dict[str, str]:
        """A container's environment: the image's ENV plus overrides."""
        environ = {
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.defpath}",
            "LANG": "C.UTF-8",
            **self.env,
        }
        environ.update(overrides)
        return environ


def _pip_tokens(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    flags, rest = instruction.flags()
    tokens = shlex.split(rest)
    assert tokens[0] == "pip", f"a RUN the test cannot replay: {rest}"
    assert not SHELL_OPERATORS & set(tokens), f"keep pip steps plain: {rest}"
    return flags, tokens


def _mounts(flags: dict[str, str], roots: dict[str, Path]) -> dict[str, Path]:
    """--mount=type=bind,from=STAGE,source=S,target=T as {T: STAGE's S}."""
    if "mount" not in flags:
        return {}
    spec = dict(part.split("=", 1) for part in flags["mount"].split(","))
    assert spec["type"] == "bind", spec
    source = roots[spec["from"]] / spec["source"].lstrip("/")
    return {spec["target"]: source}


class Replay:
    """The image built without Docker: each stage's WORKDIR, COPY and pip
    steps in order, each stage's paths under a root of its own. The
    runtime stage installs into a fresh venv standing for the image's
    Python; its user is not created (the tests run as whoever runs them).
    """

    def __init__(self, work: Path) -> None:
        self.stages = read_dockerfile()
        self.context = work / "context"
        self.venv = work / "image-venv"
        self.log = work / "build.log"
        self.roots = {stage.name or str(n): work / f"stage{n}"
                      for n, stage in enumerate(self.stages)}
        self.env: dict[str, str] = {}

    def build(self) -> Image:
        build_context(ROOT, self.context)
        venv.create(self.venv, with_pip=True)
        for root, stage in zip(self.roots.values(), self.stages, strict=True):
            self._stage(stage, root, runtime=stage is self.stages[-1])
        return Image(root, self.venv, self.env)

    def _stage(self, stage: Stage, root: Path, runtime: bool) -> None:
        pip = ([str(self.venv / "bin" / "pip")] if runtime
               else [sys.executable, "-m", "pip"])
        cwd = root
        cwd.mkdir(parents=True)
        for instruction in stage.instructions:
            keyword = instruction.keyword
            if keyword == "WORKDIR":
                cwd = root / instruction.rest.lstrip("/")
                cwd.mkdir(parents=True, exist_ok=True)
            elif keyword == "COPY":
                self._copy(instruction, cwd, root)
            elif keyword == "RUN" and runtime and _adds_user(instruction):
                continue
            elif keyword == "RUN":
                self._pip(instruction, pip, cwd, root)
            elif keyword == "ENV":
                self.env.update(_env_pairs(instruction.rest))
            else:
                assert keyword in _NOT_REPLAYED, f"cannot replay {keyword}"

    def _pip(self, instruction: Instruction, pip: list[str], cwd: Path,
             root: Path) -> None:
        flags, tokens = _pip_tokens(instruction)
        mounts = _mounts(flags, self.roots)
        argv = pip + [
            str(mounts.get(t) or root / t.lstrip("/")) if t.startswith("/")
            else t
            for t in tokens[1:]
        ]
        environ = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
        with self.log.open("ab") as out:
            done = subprocess.run(argv, cwd=cwd, stdout=out, stderr=out,
                                  env=environ, timeout=BUILD_TIMEOUT)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            command = shlex.join(argv)
            pytest.fail(f"{command} exited {done.returncode}:\n{tail}")

    def _copy(self, instruction: Instruction, cwd: Path, root: Path) -> None:
        flags, rest = instruction.flags()
        assert not flags, f"a COPY the test cannot replay: {instruction.rest}"
        *sources, dest = rest.split()
        target = cwd / dest
        if dest.startswith("/"):
            target = root / dest.lstrip("/")
        for source in sources:
            if source == ".":
                shutil.copytree(self.context, target, dirs_exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.context / source, target)


# What only describes the image; the tests below check it.
_NOT_REPLAYED = {"USER", "EXPOSE", "HEALTHCHECK", "STOPSIGNAL",
                 "ENTRYPOINT", "CMD", "LABEL"}


def _adds_user(instruction: Instruction) -> bool:
    return instruction.rest.split()[0] in ("groupadd", "useradd")


def _env_pairs(rest: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in shlex.split(rest))


def _has_compiler() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is not None


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    """The image's runtime stage, built once for this module."""
    if not _has_compiler():
        pytest.skip("no C compiler: the build stage cannot compile the "
                    "Cython core here")
    return Replay(tmp_path_factory.mktemp("image")).build()


# -- processes and requests ------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str, token: str | None = None,
        timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def running(argv: list[str], environ: dict[str, str], log: Path,
            cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A process that is killed (by its PID) if the test leaves it running."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=environ, stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, cwd=cwd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_until(check, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None, timeout: float = 20.0):
    """Poll ``check`` until it returns a true value; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            output = log.read_text(errors="replace") if log else ""
            pytest.fail(f"exited {proc.returncode} before {what}:\n{output}")
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def ready(port: int) -> bool:
    return get(port, "/readyz", timeout=1.0)[0] == 200


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except ConnectionRefusedError:
        return True
    return False


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class SlowRequest(threading.Thread):
    """One GET through maitred that holds a token for ``ms`` milliseconds."""

    def __init__(self, port: int, ms: int) -> None:
        super().__init__(daemon=True)
        self.port, self.ms = port, ms
        self.result: tuple[int, bytes] | Exception | None = None

    def run(self) -> None:
        try:
            self.result = get(self.port, f"/?ms={self.ms}", timeout=15.0)
        except Exception as err:  # reported by the test that reads it
            self.result = err


# -- the compose file and the Kubernetes manifests -------------------------


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def kubernetes() -> dict[str, dict]:
    """The manifests by kind (one of each)."""
    found = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in found, document["kind"]
            found[document["kind"]] = document
    return found


def container(pod: dict, name: str) -> dict:
    (found,) = [c for c in pod["containers"] if c["name"] == name]
    return found


def pod_spec() -> dict:
    return kubernetes()["Deployment"]["spec"]["template"]["spec"]


def named_ports(spec: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in spec.get("ports", [])}


def prestop_sleep(spec: dict) -> int:
    command = spec["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def duration(text: str) -> float:
    """A compose duration such as "30s" or "1m30s", in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def kubernetes_settings(tmp_path: Path) -> config.Settings:
    """What maitred runs with in the pod: the ConfigMap's file at the path
    the container mounts it, plus the container's environment (a stand-in
    for values that come from a Secret)."""
    maitred = container(pod_spec(), "maitred")
    (mount,) = maitred["volumeMounts"]
    (volume,) = [v for v in pod_spec()["volumes"]
                 if v["name"] == mount["name"]]
    configmap = kubernetes()["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    key = posixpath.relpath(CONFIG_PATH, mount["mountPath"])
    path = tmp_path / key
    path.write_text(configmap["data"][key])
    environ = {}
    for variable in maitred["env"]:
        environ[variable["name"]] = variable.get("value", "from-a-secret")
    return config.load(path, environ=environ)


def compose_settings() -> config.Settings:
    """What maitred runs with under compose: the mounted file plus the
    service's environment."""
    service = compose()["services"]["maitred"]
    mounted = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        mounted[target] = COMPOSE.parent / source
    environ = {k: str(v) for k, v in service.get("environment", {}).items()}
    return config.load(mounted[CONFIG_PATH], environ=environ)


@pytest.fixture(scope="module")
def sample_app(tmp_path_factory) -> Iterator[int]:
    """The compose file's sample app, run as compose runs it (the port
    argument swapped for a free one); yields its port."""
    app = compose()["services"]["app"]
    assert app["entrypoint"][0] == "python"
    port = free_port()
    argv = [sys.executable, *app["entrypoint"][1:], str(port)]
    log = tmp_path_factory.mktemp("app") / "app.log"
    with running(argv, dict(os.environ), log) as proc:
        wait_until(lambda: get(port, "/?ms=0")[0] == 200, "the sample app",
                   proc, log)
        yield port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


# -- the Dockerfile's facts ------------------------------------------------


def test_image_runs_as_a_fixed_non_root_user():
    stage = runtime_stage()
    user, _, group = stage.one("USER").rest.partition(":")
    assert user.isdigit() and int(user) != 0, "Kubernetes needs a numeric UID"
    assert group.isdigit() and int(group) != 0
    (adds,) = [i for i in stage.all("RUN") if _adds_user(i)]
    assert f"--uid {user}" in adds.rest
    assert f"--gid {group}" in adds.rest


def test_image_healthcheck_gets_healthz_on_the_sidecar_admin_port():
    check = runtime_stage().one("HEALTHCHECK")
    flags, _ = check.flags()
    assert {"interval", "timeout", "retries"} <= set(flags)
    command = check.exec_form()
    assert command[:2] == ["python", "-c"]
    code = command[2]
    host, port = sidecar_settings().admin.address
    assert f"'{host}', {port}" in code
    assert "'/healthz'" in code
    compile(code, "HEALTHCHECK", "exec")


def test_image_exposes_the_sidecar_data_and_admin_ports():
    exposed = {int(p.split("/")[0]) for p in runtime_stage().one("EXPOSE")
               .rest.split()}
    settings = sidecar_settings()
    assert exposed == {settings.listen.address[1], settings.admin.address[1]}


def test_image_runs_maitred_with_the_config_in_etc_maitred():
    assert image_command() == ["maitred", "run", "--config", CONFIG_PATH]
    copies = [i.rest.split() for i in runtime_stage().all("COPY")]
    assert ["configs/sidecar.toml", CONFIG_PATH] in copies
    assert runtime_stage().one("STOPSIGNAL").rest == "SIGTERM"


def test_image_is_slim_python_with_only_the_built_wheels():
    build, runtime = read_dockerfile()
    assert build.name == "build"
    version = build.base.removeprefix("python:").split("-")[0]
    assert runtime.base == f"python:{version}-slim-bookworm"
    assert build.base == f"python:{version}-bookworm", "same Debian and Python"
    (install,) = [i for i in runtime.all("RUN") if not _adds_user(i)]
    flags, tokens = _pip_tokens(install)
    assert tokens[:2] == ["pip", "install"] and "--no-index" in tokens
    assert "from=build" in flags["mount"]


def test_build_context_leaves_out_local_build_output(tmp_path):
    tree = tmp_path / "tree"
    kept = ["pyproject.toml", "setup.py", "README.md", "proxy/__init__.py",
            "proxy/_core.pyx", "proxy/_core.pyi", "proxy/py.typed",
            "configs/sidecar.toml"]
    dropped = ["proxy/_core.c", "proxy/_core.cpython-311-x86_64-linux-gnu.so",
               "proxy/__pycache__/cli.cpython-311.pyc", "build/lib/x.py",
               ".git/HEAD", ".venv/bin/python", "tests/test_x.py",
               "configs/edge.toml", "bench/run.py", "maitred.egg-info/PKG"]
    for name in kept + dropped:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(name)
    build_context(tree, tmp_path / "context")
    sent = {p.relative_to(tmp_path / "context").as_posix()
            for p in (tmp_path / "context").rglob("*") if p.is_file()}
    assert sent == set(kept)


# -- the image, replayed and run -------------------------------------------


def test_image_holds_the_core_compiled_from_its_wheel(image):
    code = "import proxy._core as core; print(core.__file__)"
    done = subprocess.run(image.argv(["python", "-c", code]), cwd=image.root,
                          env=image.environ(), capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    where = Path(done.stdout.strip())
    assert where.is_relative_to(image.venv) and where.suffix == ".so"


def test_image_entrypoint_serves_then_drains_on_sigterm(
    image, sample_app, tmp_path
):
    port, admin, token = free_port(), free_port(), secrets.token_hex(8)
    environ = image.environ(
        MAITRED_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        MAITRED_UPSTREAM_URL=f"http://127.0.0.1:{sample_app}",
        MAITRED_ADMIN_ADDRESS=f"127.0.0.1:{admin}",
        MAITRED_ADMIN_TOKEN=token,
        MAITRED_LIMITS_MAX_QUEUE="7",
    )
    log = tmp_path / "maitred.log"
    command = image.argv(image_command())
    with running(command, environ, log, cwd=image.root) as proc:
        wait_until(lambda: ready(admin), "/readyz", proc, log)
        assert get(port, "/") == (200, b"hello from the app\n")

        # The probes need no token; the rest of the admin API does.
        assert get(admin, "/healthz")[0] == 200
        assert get(admin, "/status")[0] == 401
        status, body = get(admin, "/limits", token)
        assert status == 200
        limits = json.loads(body)
        assert limits["max_concurrency"] == 32  # from the file
        assert limits["max_queue"] == 7  # from the environment
        assert children(proc.pid) == []
        assert _healthcheck(image, admin) == 0

        slow = SlowRequest(port, 1500)
        slow.start()
        wait_until(lambda: _inflight(admin, token) == 1, "in flight")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: get(admin, "/readyz")[0] == 503, "not ready")
        wait_until(lambda: refused(port), "the listener to close")
        slow.join(15)
        assert slow.result == (200, b"hello from the app\n")
        assert proc.wait(15) == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    assert _healthcheck(image, admin) != 0


def test_image_entrypoint_exits_at_once_on_a_second_signal(
    image, sample_app, tmp_path
):
    port, admin = free_port(), free_port()
    environ = image.environ(
        MAITRED_LISTEN_ADDRESS=f"127.0.0.1:{port}",
        MAITRED_UPSTREAM_URL=f"http://127.0.0.1:{sample_app}",
        MAITRED_ADMIN_ADDRESS=f"127.0.0.1:{admin}",
    )
    log = tmp_path / "maitred.log"
    command = image.argv(image_command())
    with running(command, environ, log, cwd=image.root) as proc:
        wait_until(lambda: ready(admin), "/readyz", proc, log)
        slow = SlowRequest(port, 8000)
        slow.start()
        wait_until(lambda: _inflight(admin, None) == 1, "in flight")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: get(admin, "/readyz")[0] == 503, "not ready")
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert proc.wait(5) != 0
        assert time.monotonic() - started < 2.0
        slow.join(15)
        assert isinstance(slow.result, Exception), "cut, not answered"


def _inflight(admin: int, token: str | None) -> int:
    status, body = get(admin, "/status", token, timeout=1.0)
    return json.loads(body)["inflight"] if status == 200 else -1


def _healthcheck(image: Image, admin: int) -> int:
    """Run the image's HEALTHCHECK, its admin port moved to ``admin``."""
    command = runtime_stage().one("HEALTHCHECK").exec_form()
    port = sidecar_settings().admin.address[1]
    code = command[2].replace(f", {port},", f", {admin},")
    assert code != command[2]
    argv = image.argv([command[0], command[1], code])
    return subprocess.run(argv, env=image.environ(), cwd=image.root,
                          timeout=10, capture_output=True).returncode


# -- environment only ------------------------------------------------------


def test_run_without_a_config_file_serves_from_environment_alone(
    sample_app, tmp_path
):
    port, admin = free_port(), free_port()
    environ = {
        "PATH": os.environ["PATH"],
        "MAITRED_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "MAITRED_UPSTREAM_URL": f"http://127.0.0.1:{sample_app}",
        "MAITRED_ADMIN_ADDRESS": f"127.0.0.1:{admin}",
    }
    log = tmp_path / "maitred.log"
    argv = [sys.executable, "-m", "proxy", "run"]
    with running(argv, environ, log) as proc:
        wait_until(lambda: ready(admin), "/readyz", proc, log)
        assert get(port, "/") == (200, b"hello from the app\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"MAITRED_LIMITS_MAX_CONCURRENCY": "lots"},
         "MAITRED_LIMITS_MAX_CONCURRENCY"),
        ({"MAITRED_LIMITS_MAX_CONCURENCY": "8"},
         "MAITRED_LIMITS_MAX_CONCURENCY"),
        ({"MAITRED_ADMIN_ADDRESS": "0.0.0.0:9901"}, "MAITRED_ADMIN_TOKEN"),
    ],
)
def test_run_refuses_a_bad_environment_with_exit_2_naming_it(variables, named):
    environ = {"PATH": os.environ["PATH"], **variables}
    argv = [sys.executable, "-m", "proxy", "run", "--config", str(SIDECAR)]
    done = subprocess.run(argv, env=environ, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2
    assert named in done.stderr
    assert "Traceback" not in done.stderr


# -- compose ---------------------------------------------------------------


def test_compose_runs_maitred_in_the_app_network_namespace():
    services = compose()["services"]
    maitred = services["maitred"]
    assert maitred["network_mode"] == "service:app"
    assert "app" in maitred["depends_on"]
    assert (COMPOSE.parent / maitred["build"] / "Dockerfile").samefile(
        DOCKERFILE
    )
    assert "healthcheck" not in maitred, "the image's HEALTHCHECK applies"
    assert services["app"]["image"] == runtime_stage().base


def test_compose_ports_and_grace_agree_with_the_config_it_mounts():
    settings = compose_settings()
    services = compose()["services"]
    published = {int(p.rsplit(":", 1)[1]) for p in services["app"]["ports"]}
    assert published == {settings.listen.address[1]}
    assert settings.upstream.host == "127.0.0.1"
    assert [str(settings.upstream.port)] == services["app"]["command"]
    assert settings.admin_token is None
    assert settings.admin.address == sidecar_settings().admin.address
    grace = duration(services["maitred"]["stop_grace_period"])
    assert grace > settings.timeouts.shutdown


def test_compose_and_kubernetes_run_the_same_sample_app():
    app = compose()["services"]["app"]
    pod_app = container(pod_spec(), "app")
    assert app["entrypoint"] == pod_app["command"]
    assert app["command"] == pod_app["args"]
    assert app["image"] == pod_app["image"]


# -- Kubernetes ------------------------------------------------------------


def test_kubernetes_configmap_holds_the_sidecar_config_verbatim():
    configmap = kubernetes()["ConfigMap"]
    assert configmap["data"]["maitred.toml"] == SIDECAR.read_text()


def test_kubernetes_probes_and_ports_agree_with_the_mounted_config(tmp_path):
    settings = kubernetes_settings(tmp_path)
    maitred = container(pod_spec(), "maitred")
    ports = named_ports(maitred)
    assert ports == {"http": settings.listen.address[1],
                     "admin": settings.admin.address[1]}
    assert maitred["livenessProbe"]["httpGet"] == {"path": "/healthz",
                                                   "port": "admin"}
    assert maitred["readinessProbe"]["httpGet"] == {"path": "/readyz",
                                                    "port": "admin"}
    assert settings.admin.address[0] == "0.0.0.0", "the kubelet must reach it"
    app = container(pod_spec(), "app")
    assert settings.upstream.host == "127.0.0.1"
    assert app["args"] == [str(settings.upstream.port)]
    assert "ports" not in app, "only maitred's port is the pod's"


def test_kubernetes_admin_token_comes_from_a_secret(tmp_path):
    settings = kubernetes_settings(tmp_path)
    maitred = container(pod_spec(), "maitred")
    (token,) = [v for v in maitred["env"]
                if v["name"] == settings.admin.token_env]
    assert set(token["valueFrom"]) == {"secretKeyRef"}
    assert settings.admin_token == "from-a-secret"


def test_kubernetes_service_sends_traffic_to_maitred_only():
    found = kubernetes()
    deployment, service = found["Deployment"], found["Service"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    maitred_ports = named_ports(container(pod_spec(), "maitred"))
    targets = [p["targetPort"] for p in service["spec"]["ports"]]
    assert targets == ["http"] and "http" in maitred_ports


def test_kubernetes_pod_drains_within_its_grace_period(tmp_path):
    shutdown = kubernetes_settings(tmp_path).timeouts.shutdown
    spec = pod_spec()
    maitred_stop = prestop_sleep(container(spec, "maitred")) + shutdown
    assert spec["terminationGracePeriodSeconds"] > maitred_stop
    assert prestop_sleep(container(spec, "app")) >= maitred_stop
    assert spec["enableServiceLinks"] is False


def test_kubernetes_containers_request_resources_and_drop_privileges():
    seccomp = pod_spec()["securityContext"]["seccompProfile"]
    assert seccomp == {"type": "RuntimeDefault"}
    for spec in pod_spec()["containers"]:
        assert {"cpu", "memory"} <= set(spec["resources"]["requests"])
        assert "memory" in spec["resources"]["limits"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    maitred = container(pod_spec(), "maitred")
    assert maitred["image"].split(":")[0] == "maitred"
    assert "command" not in maitred and "args" not in maitred, (
        "the pod runs the image's ENTRYPOINT and CMD"
    )
