"""End-to-end fixtures: a real redis-server and real Debian nginx processes loading the built
module, each on loopback ports of its own, stopped by PID."""

import http.client
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Overridable for the sanitizer and valgrind runs (see the Makefile's test-asan/test-valgrind).
MODULE = Path(os.environ.get("RL_MODULE", REPO / "build" / "ngx_http_ratelimit_module.so"))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
# A wrapper command put before nginx when starting it (not for `nginx -t`), e.g. "valgrind -q".
NGINX_PREFIX_CMD = shlex.split(os.environ.get("NGINX_PREFIX_CMD", ""))
# Lines that must never appear in an error log of ours.
BAD_LOG = re.compile(r"\[(alert|emerg|crit)\]|exited on signal|AddressSanitizer|runtime error:")


def pytest_configure(config):
    # An exception in a test's thread (a client, a load generator) fails the test, whatever
    # runs pytest: by default it is only a warning, and the thread's check is lost.
    config.addinivalue_line("filterwarnings",
                            "error::pytest.PytestUnhandledThreadExceptionWarning")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def run_threads(target, count):
    """Runs target(0) … target(count - 1), each on a thread of its own, and waits for them all
    (an exception in one fails the test: see pytest_configure)."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class Resp:
    """A minimal RESP client: enough to drive Redis from tests without extra packages."""

    def __init__(self, port, timeout=2.0, host="127.0.0.1", sock=None):
        """`sock`: an open connection to use (TLS) instead of connecting to host:port."""
        self.sock = sock or socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.pos = 0  # of the first byte of self.buf not read yet

    def close(self):
        self.sock.close()

    @staticmethod
    def encode(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self._reply()

    def pipeline(self, commands):
        """Sends every command (a sequence of arguments each) at once; returns their replies."""
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        return [self._reply() for _ in commands]

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0

    def _line(self):
        end = self.buf.find(b"\r\n", self.pos)
        while end < 0:
            self._fill()
            end = self.buf.find(b"\r\n", self.pos)
        line, self.pos = self.buf[self.pos:end], end + 2
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) - self.pos < n + 2:
                self._fill()
            data, self.pos = self.buf[self.pos:self.pos + n], self.pos + n + 2
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError("bad RESP line %r" % line)


class ServerProcess:
    """What a test's own redis-server or sentinel process offers: `call` (after AUTH when
    `password` is set), `ping` and `stop`. Subclasses set `proc` and `port`, and override
    `connect` to reach it otherwise than in plain TCP on `host`."""

    host = "127.0.0.1"
    password = None
    proc = None

    def connect(self):
        return Resp(self.port, timeout=1.0, host=self.host)

    def call(self, *args):
        c = self.connect()
        try:
            if self.password:
                c.call("AUTH", self.password)
            return c.call(*args)
        finally:
            c.close()

    def ping(self):
        try:
            return self.call("PING") == "PONG"
        except (OSError, RuntimeError):
            return False

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)


class RedisServer:
    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.unix_path = self.dir / "redis.sock"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--unixsocket", str(self.unix_path), "--unixsocketperm", "777",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self._pings), "redis-server did not start"

    def _pings(self):
        try:
            c = Resp(self.port, timeout=0.2)
            try:
                return c.call("PING") == "PONG"
            finally:
                c.close()
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def cmd(self, *args):
        c = Resp(self.port)
        try:
            return c.call(*args)
        finally:
            c.close()


class Nginx:
    """One nginx master (master_process on, daemon off) with the module loaded."""

    def __init__(self, workdir, http_conf, workers=1, main_conf=""):
        self.dir = Path(workdir)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.backend_port = free_port()
        self.conf = self.dir / "nginx.conf"
        self.error_log = self.dir / "logs" / "error.log"
        self.proc = None
        self.write_conf(http_conf, workers, main_conf)

    def write_conf(self, http_conf, workers=1, main_conf=""):
        user = "user root;" if os.geteuid() == 0 else ""
        temp = "\n".join("%s_temp_path %s/%s;" % (t, self.dir, t)
                         for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        body = (http_conf.replace("@PORT@", str(self.port))
                .replace("@BACKEND@", str(self.backend_port)))
        self.conf.write_text(f"""
load_module {MODULE};
{user}
worker_processes {workers};
error_log {self.error_log} info;
pid {self.dir}/nginx.pid;
{main_conf}
events {{ worker_connections 1024; }}
http {{
    access_log {self.dir}/logs/access.log;
    {temp}
    server {{
        listen 127.0.0.1:{self.backend_port};
        location / {{ add_header X-Backend yes; return 200 "backend $request_uri\\n"; }}
    }}
{body}
}}
""")

    def test_config(self):
        return subprocess.run([NGINX, "-t", "-p", str(self.dir), "-c", str(self.conf)],
                              capture_output=True, text=True)

    def start(self):
        t = self.test_config()
        assert t.returncode == 0, t.stderr
        self.proc = subprocess.Popen(NGINX_PREFIX_CMD + [NGINX, "-p", str(self.dir),
                                                         "-c", str(self.conf), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert wait_for(self._listening), "nginx did not start: %s" % self.log()
        return self

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def reload_and_wait(self, timeout=15):
        """Reloads, then waits until the old workers have exited: every request from then on
        meets the new configuration, however slow the machine."""
        old = set(self.worker_pids())
        self.reload()
        assert wait_for(lambda: self.worker_pids() and not old & set(self.worker_pids()),
                        timeout), "the old workers did not exit:\n%s" % self.log()[-2000:]

    def worker_pids(self):
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return [int(line.split()[0]) for line in out.splitlines() if "worker process" in line]

    def stop(self, sig=signal.SIGQUIT, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("nginx did not stop within %ss" % timeout)
        self.proc = None

    def log(self):
        return self.error_log.read_text() if self.error_log.exists() else ""

    def bad_log_lines(self):
        return [line for line in self.log().splitlines() if BAD_LOG.search(line)]

    def get(self, path="/", headers=None, method="GET", timeout=10):
        return http_request(self.port, path, headers, method, timeout)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<%d %r>" % (self.status, self.headers)


def http_request(port, path="/", headers=None, method="GET", timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read()
        hdrs = {}
        for k, v in r.getheaders():
            hdrs.setdefault(k.lower(), v)
        return Response(r.status, hdrs, body)
    finally:
        conn.close()


@pytest.fixture(scope="session", autouse=True)
def built_module():
    assert MODULE.exists(), "build the module first: make module"
    return MODULE


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="rl-e2e-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


@pytest.fixture
def redis(workdir):
    server = RedisServer(workdir / "redis")
    yield server
    server.stop()


@pytest.fixture
def nginx_factory(workdir):
    """Makes nginx instances; at teardown stops them and checks their logs are clean."""
    made = []

    def make(http_conf, workers=1, main_conf="", start=True):
        n = Nginx(workdir / ("nginx%d" % len(made)), http_conf, workers, main_conf)
        made.append(n)
        return n.start() if start else n

    yield make
    problems = []
    for n in made:
        n.stop()
        problems += n.bad_log_lines()
    assert not problems, "bad lines in nginx error logs:\n" + "\n".join(problems)
