"""Never the weak link: Redis failures and the failure modes, the circuit breaker, a hung
Redis, reload and quit under load, client aborts (HTTP/1.1 and HTTP/2), hostile input."""

import socket
import subprocess
import threading
import time

import pytest

from conftest import Resp, free_port, http_request, wait_for

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"


def conf(port, mode="open", redis_args="timeout=100ms connect_timeout=200ms", burst=1000,
         extra_http=""):
    return f"""
    ratelimit_redis 127.0.0.1:{port} {redis_args};
    ratelimit_policy p rate=1r/h burst={burst};
    {extra_http}
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $http_x_key policy=p;
            ratelimit_failure_mode {mode};
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}
    }}
"""


def timed_get(n, key="k"):
    start = time.monotonic()
    r = n.get("/", {"X-Key": key})
    return r, time.monotonic() - start


class HungRedis:
    """Accepts connections and never answers: the worst kind of broken Redis."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(128)
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except OSError:
                pass

    def close(self):
        self.stopped = True
        self.thread.join()
        for c in self.conns:
            c.close()
        self.sock.close()


# --- failure modes -------------------------------------------------------------------------

@pytest.mark.parametrize("mode,status,code", [
    ("open", "FAILED_OPEN", 200),
    ("closed", "FAILED_CLOSED", 503),
    ("local", "LOCAL_PASSED", 200),
])
def test_failure_modes_when_redis_refuses(nginx_factory, mode, status, code):
    n = nginx_factory(conf(free_port(), mode))  # nothing listens there
    r, elapsed = timed_get(n)
    assert (r.status, r.header("X-Status")) == (code, status)
    if mode == "local":
        assert r.header("X-RateLimit-Limit") == "1000"
    else:
        assert r.header("X-RateLimit-Limit") is None
        assert r.header("Retry-After") is None
    assert elapsed < 1.0


def test_local_failure_mode_decides_with_a_node_share(nginx_factory):
    n = nginx_factory(conf(free_port(), "local nodes=3", burst=7))
    results = [n.get("/", {"X-Key": "k"}) for _ in range(4)]
    # burst 7 over 3 nodes: ceil(7/3) = 3 tokens here, then LOCAL_REJECTED.
    assert [r.header("X-Status") for r in results] == \
        ["LOCAL_PASSED"] * 3 + ["LOCAL_REJECTED"]
    assert results[0].header("X-RateLimit-Limit") == "3"
    assert results[-1].status == 429
    assert results[-1].header("Retry-After") == "10800"  # rate/3: a token every 3 h


def test_timeout_takes_the_failure_mode_within_the_timeout(redis, nginx_factory):
    n = nginx_factory(conf(redis.port, "closed"))
    assert timed_get(n)[0].header("X-Status") == "PASSED"
    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "1500", "ALL")
    r, elapsed = timed_get(n)
    pauser.close()
    assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
    assert 0.05 < elapsed < 0.6


def test_error_reply_takes_the_failure_mode(redis, nginx_factory):
    n = nginx_factory(conf(redis.port, "closed"))
    assert timed_get(n)[0].header("X-Status") == "PASSED"
    redis.cmd("ACL", "SETUSER", "default", "-evalsha", "-eval")
    r, _ = timed_get(n)
    assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
    assert "NOPERM" in n.log() or "no permissions" in n.log()
    redis.cmd("ACL", "SETUSER", "default", "+@all")
    assert wait_for(lambda: timed_get(n)[0].header("X-Status") == "PASSED", 5)


def test_redis_killed_and_restarted_mid_load(redis, nginx_factory):
    n = nginx_factory(conf(redis.port, "open", burst=100000), workers=2)
    load = Load(n.port, threads=6, record_status=True)
    try:  # conditions, not sleeps: a busy machine answers fewer requests per second
        assert wait_for(lambda: ("PASSED" in {x for _, x in load.results[-20:]}), 10)
        redis.proc.kill()  # SIGKILL: no goodbye to the clients
        redis.proc.wait()
        killed = len(load.results)
        assert wait_for(lambda: "FAILED_OPEN" in {x for _, x in load.results[killed:]}, 10)
        redis.start()
        # The probe brings Redis back within a second or so.
        assert wait_for(lambda: [x for _, x in load.results[-20:]] == ["PASSED"] * 20, 15)
    finally:
        load.finish()
    assert load.errors == []
    assert {s for s, _ in load.results} == {200}
    seen = [x for _, x in load.results]
    assert "FAILED_OPEN" in seen
    # Traffic went back to Redis: the last decisions are Redis ones again.
    assert seen[-20:] == ["PASSED"] * 20


def test_breaker_opens_on_a_hung_redis_and_requests_stop_waiting(nginx_factory):
    hung = HungRedis()
    try:
        n = nginx_factory(conf(hung.port, "open", redis_args="timeout=400ms connect_timeout=400ms"))
        first = [timed_get(n) for _ in range(3)]
        later = [timed_get(n) for _ in range(20)]
    finally:
        hung.close()
    assert all(r.status == 200 and r.header("X-Status") == "FAILED_OPEN" for r, _ in first + later)
    # Each of the first requests waits for the timeout, and not much longer ...
    assert all(0.35 < t < 1.2 for _, t in first), [round(t, 3) for _, t in first]
    # ... then the breaker is open and requests take the failure mode at once.
    assert max(t for _, t in later) < 0.2, [round(t, 3) for _, t in later]
    assert "is down" in n.log()


def test_breaker_closes_when_redis_comes_back(redis, nginx_factory):
    n = nginx_factory(conf(redis.port, "open"))
    assert n.get("/", {"X-Key": "k"}).header("X-Status") == "PASSED"
    redis.stop()
    for _ in range(5):
        assert n.get("/", {"X-Key": "k"}).header("X-Status") == "FAILED_OPEN"
    assert "is down" in n.log()
    redis.start()
    # The background probe (at most one per second) brings Redis back.
    assert wait_for(lambda: n.get("/", {"X-Key": "k"}).header("X-Status") == "PASSED", 4, 0.1)
    assert "is up" in n.log()


# --- reload and quit under load ------------------------------------------------------------

class Load:
    """Threads sending requests in a loop, recording every outcome."""

    def __init__(self, port, threads=8, record_status=False):
        self.port = port
        self.record_status = record_status
        self.stop = threading.Event()
        self.results = []
        self.errors = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i):
        while not self.stop.is_set():
            try:
                r = http_request(self.port, "/", {"X-Key": "key-%d" % (i % 3)}, timeout=10)
                self.results.append((r.status, r.header("X-Status")) if self.record_status
                                    else r.status)
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                self.errors.append(repr(e))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()


def test_reload_under_load_fails_no_request(redis, nginx_factory):
    n = nginx_factory(conf(redis.port, "closed", redis_args="timeout=1s", burst=100000), workers=2)
    load = Load(n.port)
    try:
        for _ in range(5):
            time.sleep(0.4)
            n.reload()
        time.sleep(0.5)
    finally:
        load.finish()
    assert load.errors == []
    assert len(load.results) > 100
    assert set(load.results) == {200}
    # Old workers close Redis and exit once their requests are done.
    assert wait_for(lambda: len(n.worker_pids()) == 2, 10)
    clients = redis.cmd("CLIENT", "LIST").decode().strip().splitlines()
    assert wait_for(lambda: len(redis.cmd("CLIENT", "LIST").decode().strip().splitlines()) <= 3, 10), clients


def test_quit_under_load_finishes_requests_and_exits(redis, nginx_factory, workdir):
    # Static content: a backend in the same nginx would stop listening at once (502).
    www = workdir / "www"
    www.mkdir()
    (www / "index.html").write_text("hello\n")
    n = nginx_factory(conf(redis.port, "closed", redis_args="timeout=1s", burst=100000)
                      .replace(BACKEND, f"root {www};"), workers=2)
    assert n.get("/", {"X-Key": "q"}).header("X-Status") == "PASSED"  # connected
    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "300", "WRITE")
    results = []
    errors = []

    def client():
        try:
            r = http_request(n.port, "/", {"X-Key": "q"})
            results.append((r.status, r.header("X-Status"), r.header("X-RateLimit-Remaining")))
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            errors.append(repr(e))

    waiting = [threading.Thread(target=client) for _ in range(4)]
    for t in waiting:
        t.start()
    time.sleep(0.1)
    start = time.monotonic()
    n.stop()  # SIGQUIT: graceful
    assert time.monotonic() - start < 5
    for t in waiting:
        t.join()
    pauser.close()
    # Every request that was waiting for Redis when nginx was told to quit got its decision
    # from Redis once the pause ended, and its answer.
    assert errors == []
    assert len(results) == 4
    assert {(s, x) for s, x, _ in results} == {(200, "PASSED")}, results
    assert sorted(int(rem) for _, _, rem in results) == [99995, 99996, 99997, 99998]


def test_old_workers_exit_at_once_while_redis_is_down(nginx_factory):
    hung = HungRedis()
    try:
        n = nginx_factory(conf(hung.port, "open"), workers=2)
        for _ in range(8):
            n.get("/", {"X-Key": "k"})
        old = set(n.worker_pids())
        n.reload()
        start = time.monotonic()
        # The breaker's probe timer is cancelable: it does not hold the old workers.
        assert wait_for(lambda: not set(n.worker_pids()) & old, 5)
        assert time.monotonic() - start < 2
        assert n.get("/", {"X-Key": "k"}).status == 200
    finally:
        hung.close()


# --- client aborts -------------------------------------------------------------------------

def test_http2_client_abort_while_waiting(redis, nginx_factory):
    n = nginx_factory(conf(redis.port, "open", redis_args="timeout=2s").replace(
        "listen 127.0.0.1:@PORT@;", "listen 127.0.0.1:@PORT@ http2;"))
    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "800", "ALL")
    aborted = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--max-time", "0.3",
                              "-H", "X-Key: h2", "http://127.0.0.1:%d/" % n.port],
                             capture_output=True)
    pauser.close()
    assert aborted.returncode == 28  # curl's timeout: the client went away
    time.sleep(1.0)
    ok = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                         "--http2-prior-knowledge", "-H", "X-Key: h2",
                         "http://127.0.0.1:%d/" % n.port], capture_output=True, text=True)
    assert ok.stdout == "200"
    assert n.bad_log_lines() == []


# --- hostile input -------------------------------------------------------------------------

def test_hostile_keys_costs_and_policies(redis, nginx_factory):
    n = nginx_factory(f"""
    ratelimit_redis 127.0.0.1:{redis.port} timeout=1s;
    ratelimit_policy p rate=10r/s burst=20;
    ratelimit_policy q rate=1r/s burst=2;
    large_client_header_buffers 4 32k;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $http_x_key policy=$http_x_policy cost=$http_x_cost;
            ratelimit_default_policy p;
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}
    }}
""")
    # (headers, expected limit, expected remaining): junk costs count 1, unknown policies
    # fall back to the default (p, burst 20).
    cases = [
        ({"X-Key": "k" * 20000}, "20", "19"),
        ({"X-Key": "\x01\x02\xff binary", "X-Policy": "q"}, "2", "1"),
        ({"X-Key": "a", "X-Cost": "99999999999999999999999"}, "20", "19"),
        ({"X-Key": "a", "X-Cost": "-5"}, "20", "18"),
        ({"X-Key": "a", "X-Cost": "1e3"}, "20", "17"),
        ({"X-Key": "a", "X-Policy": "../../etc/passwd"}, "20", "16"),
        ({"X-Key": "a", "X-Policy": "q" * 5000}, "20", "15"),
        ({"X-Key": "a", "X-Policy": "q", "X-Cost": "2"}, "2", "0"),  # the real q: its own
        ({"X-Key": "%00%ff", "X-Policy": "p\x7f"}, "20", "19"),
    ]
    for headers, limit, remaining in cases:
        headers = {k: v.encode("latin-1") for k, v in headers.items()}
        r = n.get("/", headers)
        assert (r.status, r.header("X-Status")) == (200, "PASSED"), headers
        assert (r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining")) == \
            (limit, remaining), headers
    keys = redis.cmd("KEYS", "*")
    assert max(len(k) for k in keys) <= len("rl:p:") + 6 + 40


def test_many_distinct_keys_keep_memory_bounded(nginx_factory):
    # Local mode: buckets live in a fixed-size zone, evicted when it is full.
    n = nginx_factory(f"""
    ratelimit_zone 64k;
    ratelimit_policy p rate=1r/h burst=5;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{ ratelimit $http_x_key policy=p; {BACKEND} }}
    }}
""")
    def rss():
        return sum(int(open("/proc/%d/status" % p).read().split("VmRSS:")[1].split()[0])
                   for p in n.worker_pids())
    for i in range(500):
        n.get("/", {"X-Key": "warm-%d" % i})
    before = rss()
    for i in range(5000):
        assert n.get("/", {"X-Key": "distinct-%d-%s" % (i, "x" * 100)}).status == 200
    after = rss()
    assert after - before < 2048, (before, after)  # KiB
