# syntax=docker/dockerfile:1
#
# maitred as a container image, in two stages: "build" compiles maitred's
# wheel (the Cython core included) and collects its dependencies' wheels;
# the runtime stage is a slim Python with those wheels installed and
# nothing else: no compiler, no sources.
#
#   docker build -t maitred .
#   docker run --rm maitred check-config /etc/maitred/maitred.toml
#
# docs/sidecar.md says how to run it. tests/test_deploy.py replays the pip
# steps of both stages without Docker and runs ENTRYPOINT + CMD as written
# here, so keep those steps plain pip and those two lines in exec form.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-bookworm AS build
# The full image has gcc and the Python headers the extension needs.
WORKDIR /src
# .dockerignore lets in only what the wheel and the image are made of.
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim-bookworm
# A fixed numeric user, so Kubernetes' runAsNonRoot can check it.
RUN groupadd --gid 10001 maitred \
    && useradd --uid 10001 --gid maitred --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin maitred
# The wheels are mounted from the build stage for this one step only, and
# installed without an index: nothing else comes in, none of them stays.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels maitred
# The default config; mount your own file (or a ConfigMap) over it, and
# override single keys with MAITRED_<SECTION>_<KEY> variables.
COPY configs/sidecar.toml /etc/maitred/maitred.toml
USER 10001:10001
# 8080 takes the traffic, 9901 is the admin API (probes, limits, metrics).
EXPOSE 8080 9901
# The check runs inside the container, so the admin API may stay on
# loopback. http.client rather than urllib, which would send the check to
# a proxy named in HTTP_PROXY.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import http.client as h; \
        c = h.HTTPConnection('127.0.0.1', 9901, timeout=2); \
        c.request('GET', '/healthz'); \
        raise SystemExit(c.getresponse().status != 200)"]
# maitred runs as PID 1 (exec form, no shell): the first SIGTERM drains
# and exits 0, a second one exits at once. It starts no child processes,
# so there is nothing to reap; see docs/sidecar.md about --init.
STOPSIGNAL SIGTERM
ENTRYPOINT ["maitred"]
CMD ["run", "--config", "/etc/maitred/maitred.toml"]
