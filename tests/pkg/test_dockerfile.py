"""The Dockerfile, without a Docker engine: its structure (bookworm-slim, `make deb`, health
check, SIGQUIT, logs to stdout/stderr), then its RUN steps replayed in order on this machine
(tests/pkg/dockerfile.py) in a temporary directory holding what its COPY lines copy. Afterwards
the package is installed the way the image installs it and the image's configuration, rendered
from the environment by its entry point, passes `nginx -t`. The package is purged at the end."""

import json
import os
import subprocess
from pathlib import Path

import pytest

import dockerfile
from pkg_support import ENABLED, REPO, installed, needs_root, purge, run

DOCKERFILE = REPO / "Dockerfile"


def parsed(tmp):
    return dockerfile.stages(dockerfile.parse(DOCKERFILE.read_text()), tmp)


def test_dockerfile_structure(tmp_path):
    stages = parsed(tmp_path)
    assert len(stages) == 2
    assert all(s.image == "debian:bookworm-slim" for s in stages)
    build, final = stages
    runs = [i.args for i in build.instructions if i.keyword == "RUN"]
    assert any(dockerfile.split_options(r)[1].strip() == "make deb" for r in runs), runs
    copies = [i.args for i in final.instructions if i.keyword == "COPY"]
    assert any(f"--from={build.name}" in c and "libnginx-mod-http-ratelimit_" in c
               for c in copies), copies
    assert any("apt-get install" in i.args and "./libnginx-mod-http-ratelimit_" in i.args
               for i in final.instructions if i.keyword == "RUN")

    assert dockerfile.last(final.instructions, "STOPSIGNAL").args == "SIGQUIT"
    health = dockerfile.last(final.instructions, "HEALTHCHECK").args
    assert "CMD" in health and "/healthz" in health
    assert "8080" in dockerfile.last(final.instructions, "EXPOSE").args
    entrypoint = json.loads(dockerfile.last(final.instructions, "ENTRYPOINT").args)
    cmd = json.loads(dockerfile.last(final.instructions, "CMD").args)
    assert entrypoint == ["/etc/nginx/ratelimit/docker-entrypoint.sh"]
    assert cmd[0] == "nginx" and "daemon off;" in cmd

    # Every COPY source from the context exists and is not excluded by .dockerignore.
    ignored = (REPO / ".dockerignore").read_text().split()
    for stage in stages:
        for ins in stage.instructions:
            if ins.keyword == "COPY" and "--from=" not in ins.args:
                *sources, _ = ins.args.split()
                for s in sources:
                    assert (REPO / s).exists(), f"line {ins.line}: {s} does not exist"
                    assert not any(s.startswith(i) for i in ignored), s

    template = (REPO / "conf-examples" / "docker" / "nginx.conf.template").read_text()
    assert "error_log stderr" in template and "access_log /dev/stdout" in template
    assert "location = /healthz" in template
    assert "${RATELIMIT_REDIS}" in template and "${RATELIMIT_BACKEND}" in template
    assert f"include {ENABLED};" in template


def render(final, env, conf_name="nginx.conf"):
    """Runs the image's entry point as the container would, with `nginx -t` as the command."""
    conf = final.path(conf_name)
    return subprocess.run([str(final.path("docker-entrypoint.sh")), "nginx", "-t", "-c", str(conf)],
                          cwd=final.path("."), env=env, capture_output=True, text=True), conf


# The image's pid file. `nginx -t` creates it (empty) when it is missing: on this host that
# must not be left behind for the system's nginx service to find.
HOST_PID_FILE = Path("/run/nginx.pid")


@pytest.fixture
def replayed(tmp_path):
    purge()
    pid_file_existed = HOST_PID_FILE.exists()
    tmp_path.chmod(0o755)
    # Unlike in a container, other apt runs may hold the host's locks: wait for them.
    (tmp_path / "apt.conf").write_text('DPkg::Lock::Timeout "600";\n')
    env = {**os.environ, "APT_CONFIG": str(tmp_path / "apt.conf")}
    with open(tmp_path / "replay.log", "w") as log:
        try:
            yield dockerfile.replay(parsed(tmp_path / "root"), REPO, log, env)
        finally:
            purge()
            if not pid_file_existed and HOST_PID_FILE.exists() \
                    and HOST_PID_FILE.stat().st_size == 0:
                HOST_PID_FILE.unlink()


@needs_root
def test_dockerfile_steps_build_install_and_configure(replayed, tmp_path):
    build, final = replayed
    debs = list(build.path("build").glob("libnginx-mod-http-ratelimit_*.deb"))
    assert len(debs) == 1, "make deb in the build stage made no package"
    assert installed(), "the runtime stage did not install the package"
    assert ENABLED.is_symlink()
    assert not list(final.path(".").glob("*.deb")), "the runtime stage left the .deb behind"

    # The configuration the last RUN rendered with the image's ENV defaults.
    conf = final.path("nginx.conf").read_text()
    assert "ratelimit_redis 127.0.0.1:6379 " in conf
    assert "server 127.0.0.1:8081;" in conf
    assert "resolver 127.0.0.11 valid=10s" in conf and "ratelimit_failure_mode local nodes=1;" in conf

    # What a container started with other values gets: only those variables change.
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "RATELIMIT_REDIS": "127.0.0.2:6390", "RATELIMIT_BACKEND": "127.0.0.3:9000",
           "RATELIMIT_RESOLVER": "127.0.0.53", "RATELIMIT_NODES": "3"}
    r, path = render(final, env)
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr
    conf = path.read_text()
    assert "ratelimit_redis 127.0.0.2:6390 " in conf and "server 127.0.0.3:9000;" in conf
    assert "resolver 127.0.0.53 " in conf and "ratelimit_failure_mode local nodes=3;" in conf
    assert "$rl_role" in conf and "$hostname" in conf and "$binary_remote_addr" in conf
    assert "${" not in conf

    # A Redis address nginx cannot resolve makes the start fail loudly, not silently.
    r, _ = render(final, {**env, "RATELIMIT_REDIS": "no-such-host.invalid:6379"})
    assert r.returncode != 0 and "no-such-host.invalid" in r.stderr, r.stderr
    run("dpkg-query", "-W", "libnginx-mod-http-ratelimit")
