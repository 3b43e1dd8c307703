"""Shared by the packaging tests: the built .deb, apt as root, and the e2e suite's real
redis-server and HTTP helpers (tests/e2e/conftest.py, loaded under another name)."""

import importlib.util
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "libnginx-mod-http-ratelimit"
SNIPPET = Path("/usr/share/nginx/modules-available/mod-http-ratelimit.conf")
ENABLED = Path("/etc/nginx/modules-enabled/50-mod-http-ratelimit.conf")
MODULE_SO = Path("/usr/lib/nginx/modules/ngx_http_ratelimit_module.so")
NGINX = "/usr/sbin/nginx"

_spec = importlib.util.spec_from_file_location("e2e_support", REPO / "tests" / "e2e" / "conftest.py")
e2e = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(e2e)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="installs and purges a Debian package with apt-get: run as root (make test-pkg)")


def version():
    text = (REPO / "core" / "include" / "ratelimit" / "version.h").read_text()
    return re.search(r'#define RATELIMIT_VERSION "([^"]+)"', text).group(1)


def arch():
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def deb_path():
    deb = REPO / "build" / f"{PACKAGE}_{version()}_{arch()}.deb"
    assert deb.is_file(), f"{deb} is missing: build it with `make deb`"
    return deb


def run(*cmd, check=True, **kw):
    r = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {r.returncode}:\n"
                             f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def apt_get(*args, cwd=None):
    # Waits for the dpkg lock instead of failing when another apt runs on the machine.
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return run("apt-get", "-o", "DPkg::Lock::Timeout=300", *args, cwd=cwd, env=env)


def installed():
    r = run("dpkg-query", "-W", "-f=${Status}", PACKAGE, check=False)
    return r.returncode == 0 and r.stdout.strip() not in ("", "unknown ok not-installed")


def purge():
    if installed():
        apt_get("purge", "-y", "-q", PACKAGE)


def ratelimit_paths():
    """Every path under /usr and /etc whose name mentions ratelimit (to compare before/after)."""
    out = run("find", "/usr", "/etc", "-xdev", "-name", "*ratelimit*", check=False).stdout
    return set(out.split())


class PackagedNginx:
    """Debian's /usr/sbin/nginx with a configuration of its own (default prefix, so the
    snippet's `load_module modules/...` resolves like on a real install), its own pid file and
    error log; stopped by its PID, never through the system service."""

    def __init__(self, workdir, conf_text):
        self.dir = Path(workdir)
        self.conf = self.dir / "nginx.conf"
        self.error_log = self.dir / "error.log"
        self.conf.write_text(conf_text)
        self.proc = None

    def command(self, *extra):
        return [NGINX, "-e", str(self.error_log), "-c", str(self.conf), *extra]

    def test(self):
        return run(*self.command("-t"), check=False)

    def start(self, port):
        t = self.test()
        assert t.returncode == 0, t.stderr
        self.proc = subprocess.Popen(self.command("-g", "daemon off;"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert e2e.wait_for(lambda: self._listening(port)), self.log()
        return self

    @staticmethod
    def _listening(port):
        try:
            e2e.socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            self.proc.wait(timeout=15)
        self.proc = None

    def log(self):
        return self.error_log.read_text() if self.error_log.exists() else ""
