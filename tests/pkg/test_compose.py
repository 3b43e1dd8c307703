"""conf-examples/docker-compose.yml: two nginx instances of the Dockerfile's image sharing one
Redis, plus a demo backend. Its structure is checked, and every configuration it mounts passes
`nginx -t` once rendered the way the image's entry point renders it (service names, which only
Docker's DNS resolves, stand for 127.0.0.1 here; the module is the one `make` builds)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pkg_support import ENABLED, NGINX, REPO

EXAMPLES = REPO / "conf-examples"
COMPOSE = EXAMPLES / "docker-compose.yml"
MODULE = REPO / "build" / "ngx_http_ratelimit_module.so"


def services():
    return yaml.safe_load(COMPOSE.read_text())["services"]


def nginx_services():
    return {name: s for name, s in services().items()
            if "RATELIMIT_REDIS" in (s.get("environment") or {})}


def mounts(service):
    """(host path, container path) of each bind mount, host paths relative to the file."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out.append(((COMPOSE.parent / source).resolve(), target))
    return out


def test_compose_structure():
    all_services = services()
    assert "redis" in all_services and all_services["redis"]["image"].startswith("redis:")
    instances = nginx_services()
    assert len(instances) >= 2, "two nginx instances are needed to show a shared bucket"

    redis_addrs = {s["environment"]["RATELIMIT_REDIS"] for s in instances.values()}
    assert redis_addrs == {"redis:6379"}, "the instances must share one Redis"
    host_ports = []
    for name, s in instances.items():
        assert "redis" in s["depends_on"], name
        # Docker's DNS, so that a recreated Redis container's new address is followed.
        assert s["environment"]["RATELIMIT_RESOLVER"] == "127.0.0.11", name
        # While Redis is away, the instances together admit no more than the limit.
        assert s["environment"]["RATELIMIT_NODES"] == str(len(instances)), name
        backend_host = s["environment"]["RATELIMIT_BACKEND"].split(":")[0]
        assert backend_host in all_services, f"{name}: backend {backend_host} is no service"
        assert backend_host in s["depends_on"], name
        host_ports += [p.rsplit(":", 1)[0] for p in s["ports"]]
        assert any(t == "/etc/nginx/ratelimit/nginx.conf.template" for _, t in mounts(s)), name
    assert len(set(host_ports)) == len(host_ports), "two instances publish the same port"

    for name, s in all_services.items():
        for source, _ in mounts(s):
            assert source.is_file(), f"{name} mounts {source}, which does not exist"


def test_compose_builds_the_image_once():
    all_services = services()
    builders = {name: s for name, s in all_services.items() if "build" in s}
    assert len(builders) == 1, f"more than one service builds an image: {sorted(builders)}"
    (builder, b), = builders.items()
    assert (COMPOSE.parent / b["build"]["context"] / b["build"]["dockerfile"]).resolve() \
        == REPO / "Dockerfile"
    assert b["pull_policy"] == "build"
    version = re.search(r'#define RATELIMIT_VERSION "(.*)"',
                        (REPO / "core/include/ratelimit/version.h").read_text()).group(1)
    assert b["image"] == f"nginx-ratelimit:{version}"
    users = {name for name, s in all_services.items() if s.get("image") == b["image"]}
    assert set(nginx_services()) | {"backend"} <= users
    for name in users - {builder}:
        assert all_services[name]["pull_policy"] == "never", name


def entrypoint_defaults():
    """The variables the entry point sets when the environment does not."""
    script = (EXAMPLES / "docker" / "docker-entrypoint.sh").read_text()
    return dict(re.findall(r'^: "\$\{(\w+):=([^}]*)\}"', script, flags=re.M))


def render(template, environment, tmp):
    """envsubst of the entry point, with service names replaced by 127.0.0.1."""
    text = template.read_text()
    for var, value in {**entrypoint_defaults(), **environment}.items():
        host, _, port = value.partition(":")
        if host in services():
            value = f"127.0.0.1:{port}"
        text = text.replace("${%s}" % var, value)
    assert "${" not in text, "a variable the entry point does not set is left"
    text = text.replace(f"include {ENABLED};", f"load_module {MODULE};")
    # nginx -t creates the pid file: keep it out of the host's /run.
    text = re.sub(r"^pid\s+\S+;", f"pid {tmp}/nginx.pid;", text, flags=re.M)
    conf = tmp / template.name.replace(".template", "")
    conf.write_text(text)
    return conf


def nginx_t(conf):
    return subprocess.run([NGINX, "-e", "stderr", "-t", "-c", str(conf)],
                          capture_output=True, text=True, timeout=30)


def mounted_configs():
    out = []
    for name, s in services().items():
        for source, target in mounts(s):
            if source.suffix in (".conf", ".template"):
                out.append(pytest.param(name, source, id=f"{name}:{source.name}"))
    return out


@pytest.mark.parametrize("service,source", mounted_configs())
def test_mounted_config_passes_nginx_t(service, source, tmp_path):
    assert MODULE.is_file(), f"{MODULE} is missing: build it with `make module`"
    tmp_path.chmod(0o755)
    environment = services()[service].get("environment") or {}
    conf = render(source, environment, tmp_path)
    r = nginx_t(conf)
    assert r.returncode == 0 and "test is successful" in r.stderr, f"{service}: {r.stderr}"
    if "ratelimit_redis" in conf.read_text():
        text = conf.read_text()
        assert re.search(r"ratelimit_redis 127\.0\.0\.1:6379 ", text)
        assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=\d+s", text, flags=re.M)
        nodes = len(nginx_services())
        assert re.search(rf"^\s*ratelimit_failure_mode local nodes={nodes};", text, flags=re.M)
