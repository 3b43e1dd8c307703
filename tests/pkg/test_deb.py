"""The Debian package from `make deb`: its version agrees everywhere, it depends on the exact
nginx ABI it was built for, installs the Debian way (module, load_module snippet, the
modules-enabled symlink made by its maintainer scripts, examples), serves a request through
Redis with Debian's nginx, and `apt-get purge` leaves nothing behind. Safe where nginx runs:
the system service is never started or stopped (dpkg's own nginx-reload trigger reloads it
only if it is running, as for any libnginx-mod-* package)."""

import re
from pathlib import Path

import pytest

from pkg_support import (ENABLED, MODULE_SO, PACKAGE, REPO, SNIPPET, PackagedNginx, apt_get,
                         deb_path, e2e, installed, needs_root, purge, ratelimit_paths, run,
                         version)


def field(deb, name):
    return run("dpkg-deb", "-f", str(deb), name).stdout.strip()


def nginx_abi():
    """The ABI the nginx-dev sources were built with, which the installed nginx provides."""
    text = open("/usr/share/nginx/src/debian/libnginx-mod.abisubstvars").read()
    return re.search(r"^nginx:abi=(\S+)", text, re.M).group(1)


def test_changelog_agrees_with_version_h():
    r = run("dpkg-parsechangelog", "-l", str(REPO / "debian" / "changelog"), "-S", "Version")
    assert r.stdout.strip() == version()
    assert f"## {version()}" in (REPO / "CHANGELOG.md").read_text()


def test_package_metadata_and_contents():
    deb = deb_path()
    assert field(deb, "Package") == PACKAGE
    assert field(deb, "Version") == version()
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    abi = nginx_abi()
    assert abi in depends, depends
    assert any(d.startswith("libhiredis") for d in depends), depends
    provides = run("dpkg-query", "-W", "-f=${Provides}", "nginx").stdout
    assert abi in provides, f"the installed nginx does not provide {abi}: {provides}"

    listing = run("dpkg-deb", "-c", str(deb)).stdout
    files = {line.split()[-1].lstrip(".") for line in listing.splitlines()
             if not line.startswith("d")}
    doc = f"/usr/share/doc/{PACKAGE}"
    for path in (str(MODULE_SO), str(SNIPPET), f"{doc}/copyright",
                 f"{doc}/examples/api-roles.conf", f"{doc}/examples/quickstart.conf"):
        assert path in files, f"{path} not in the package:\n{listing}"
    assert all(f.startswith(("/usr/lib/nginx/modules/", "/usr/share/nginx/modules-available/",
                             doc + "/")) for f in files), files
    # The enabling symlink belongs to the admin (maintainer scripts), not to the package.
    assert not any(f.startswith("/etc/") for f in files)
    scripts = run("dpkg-deb", "-I", str(deb), "postinst").stdout
    assert "modules-enabled" in scripts and "50-mod-http-ratelimit.conf" in scripts


@pytest.fixture
def installed_package():
    deb = deb_path()
    purge()  # a run that died half-way left it installed: start clean
    before = ratelimit_paths()
    apt_get("install", "-y", "-q", f"./{deb.name}", cwd=deb.parent)
    yield before
    purge()


def config(workdir, port, backend_port, redis_port):
    return f"""
# Only this package's module, enabled the Debian way (the symlink its postinst made).
include {ENABLED};
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log notice;
events {{ worker_connections 64; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;

    ratelimit_redis 127.0.0.1:{redis_port} timeout=2s;
    ratelimit_policy pkg rate=1r/h burst=2;

    server {{
        listen 127.0.0.1:{backend_port};
        location / {{ return 200 "backend\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            ratelimit pkg-test policy=pkg;
            proxy_pass http://127.0.0.1:{backend_port};
        }}
    }}
}}
"""


@needs_root
def test_install_serve_purge(installed_package, tmp_path):
    before = installed_package
    assert installed()
    assert MODULE_SO.is_file() and SNIPPET.is_file()
    assert SNIPPET.read_text().strip() == "load_module modules/ngx_http_ratelimit_module.so;"
    assert ENABLED.is_symlink() and ENABLED.resolve() == SNIPPET
    assert run("dpkg", "-s", PACKAGE).stdout.count("Status: install ok installed") == 1

    tmp_path.chmod(0o755)
    redis = e2e.RedisServer(tmp_path / "redis")
    port, backend = e2e.free_port(), e2e.free_port()
    nginx = PackagedNginx(tmp_path, config(tmp_path, port, backend, redis.port))
    try:
        t = nginx.test()
        assert t.returncode == 0 and "test is successful" in t.stderr, t.stderr
        nginx.start(port)
        statuses = []
        for _ in range(3):
            r = e2e.http_request(port, "/")
            statuses.append((r.status, r.header("X-RateLimit-Limit"),
                             r.header("X-RateLimit-Remaining")))
        assert statuses == [(200, "2", "1"), (200, "2", "0"), (429, "2", "0")]
        assert redis.cmd("EXISTS", "rl:pkg:pkg-test") == 1, "the bucket is not in Redis"
        assert f"ngx_http_ratelimit_module {version()} (redis mode)" in nginx.log()
    finally:
        nginx.stop()
        redis.stop()
    assert not e2e.BAD_LOG.search(nginx.log()), nginx.log()

    purge()
    assert not installed()
    assert run("dpkg", "-L", PACKAGE, check=False).returncode != 0
    assert not ENABLED.is_symlink() and not ENABLED.exists()
    assert not ENABLED.with_name(ENABLED.name + ".removed").is_symlink()
    assert not MODULE_SO.exists() and not SNIPPET.exists()
    assert not Path("/usr/share/doc", PACKAGE).exists()
    assert ratelimit_paths() == before
