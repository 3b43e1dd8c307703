"""Client aborts and Redis timeouts with nginx under valgrind (memcheck), over HTTP/1.1 and
HTTP/2 (h2c): the paths where a request goes away while its Redis call is still pending, or
while it waits on its delay= timer.

nginx runs as a single process (master_process off) so that memcheck sees the request
handling. Slow, so skipped unless RL_VALGRIND=1 (`make test-valgrind` sets it)."""

import os
import re
import socket
import struct
import subprocess
import time

import pytest

import conftest
from conftest import Resp, wait_for

pytestmark = pytest.mark.skipif(os.environ.get("RL_VALGRIND") != "1",
                                reason="valgrind run: make test-valgrind (RL_VALGRIND=1)")

VALGRIND = ["valgrind", "--tool=memcheck", "--error-exitcode=99", "--track-origins=no",
            "--leak-check=no", "--num-callers=30"]
SINGLE_PROCESS = "master_process off;"


def conf(redis_port, timeout):
    # One server, two listeners: HTTP/1.1 on @PORT@, h2c (prior knowledge) on H2PORT.
    return f"""
    ratelimit_redis 127.0.0.1:{redis_port} timeout={timeout} connect_timeout=1s;
    ratelimit_policy p rate=1r/h burst=1000;
    server {{
        listen 127.0.0.1:@PORT@;
        listen 127.0.0.1:H2PORT http2;
        location / {{
            ratelimit $http_x_key policy=p;
            ratelimit_failure_mode closed;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }}
        location /rl/ {{ ratelimit_api write; }}
    }}
"""


@pytest.fixture
def valgrind_nginx(nginx_factory, monkeypatch):
    """Starts nginx under valgrind; at the end stops it and checks valgrind's summary."""
    started = []

    def make(http_conf):
        h2port = conftest.free_port()
        n = nginx_factory(http_conf.replace("H2PORT", str(h2port)), main_conf=SINGLE_PROCESS,
                          start=False)
        n.h2port = h2port
        n.vg_log = n.dir / "valgrind.log"
        monkeypatch.setattr(conftest, "NGINX_PREFIX_CMD", VALGRIND + ["--log-file=%s" % n.vg_log])
        n.start()
        started.append(n)
        return n

    yield make
    for n in started:
        proc = n.proc
        n.stop(timeout=30)
        log = n.vg_log.read_text()
        summary = re.search(r"ERROR SUMMARY: (\d+) errors", log)
        assert summary, "no valgrind summary in %s:\n%s" % (n.vg_log, log[-2000:])
        assert summary.group(1) == "0", "valgrind found errors:\n" + log
        assert proc.returncode == 0, "nginx under valgrind exited with %s" % proc.returncode


def h2_curl(n, max_time=None, key="k"):
    """One request with curl over h2c (prior knowledge); returns (curl exit code, status)."""
    cmd = ["curl", "-s", "--http2-prior-knowledge", "-H", "X-Key: " + key, "-o", "/dev/null",
           "-w", "%{http_code}", "http://127.0.0.1:%d/" % n.h2port]
    if max_time is not None:
        cmd += ["--max-time", str(max_time)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout


class H2:
    """A minimal h2c client (prior knowledge) that can multiplex streams and reset one:
    what curl cannot be told to do. Response statuses are read from nginx's first header,
    which is always either an indexed :status or :status with a 3-digit raw literal."""

    STATIC_STATUS = {8: "200", 9: "204", 10: "206", 11: "304", 12: "400", 13: "404", 14: "500"}

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.next_id = 1
        self.status = {}  # stream id -> status
        self.done = set()  # streams ended (END_STREAM or RST_STREAM from the server)
        self.ended_at = {}  # stream id -> time.monotonic() when its end was read
        self.sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + self._frame(4, 0, 0, b""))

    @staticmethod
    def _frame(ftype, flags, sid, payload):
        return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
            struct.pack(">I", sid) + payload

    def request(self, key="k", path="/"):
        block = b""
        for name, value in ((":method", "GET"), (":scheme", "http"), (":path", path),
                            (":authority", "localhost"), ("x-key", key)):
            name, value = name.encode(), value.encode()  # literal, not indexed, no Huffman
            block += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
        sid = self.next_id
        self.next_id += 2
        self.sock.sendall(self._frame(1, 0x5, sid, block))  # HEADERS, END_STREAM|END_HEADERS
        return sid

    def reset(self, sid):
        self.sock.sendall(self._frame(3, 0, sid, struct.pack(">I", 8)))  # RST_STREAM CANCEL

    def wait(self, sids, timeout=10):
        """Reads frames until every stream in `sids` has ended; returns their statuses."""
        deadline = time.monotonic() + timeout
        while not set(sids) <= self.done:
            assert time.monotonic() < deadline, "h2 streams %s did not end" % sids
            while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
                chunk = self.sock.recv(65536)
                assert chunk, "nginx closed the h2 connection"
                self.buf += chunk
            length = int.from_bytes(self.buf[:3], "big")
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7fffffff
            payload, self.buf = self.buf[9:9 + length], self.buf[9 + length:]
            if ftype == 4 and not flags & 1:  # SETTINGS: acknowledge
                self.sock.sendall(self._frame(4, 1, 0, b""))
            elif ftype == 6 and not flags & 1:  # PING
                self.sock.sendall(self._frame(6, 1, 0, payload))
            elif ftype == 1 and sid not in self.status:  # HEADERS
                first = payload[0]
                if first & 0x80:
                    self.status[sid] = self.STATIC_STATUS[first & 0x7f]
                else:
                    assert first == 0x48 and payload[1] == 3, payload[:8]
                    self.status[sid] = payload[2:5].decode()
            elif ftype == 7:  # GOAWAY
                raise AssertionError("GOAWAY from nginx: %r" % payload)
            if ftype == 3 or (ftype in (0, 1) and flags & 1):
                self.done.add(sid)
                self.ended_at.setdefault(sid, time.monotonic())
        return [self.status.get(sid) for sid in sids]

    def close(self):
        self.sock.close()


def status_of(n, key="k"):
    r = n.get("/", {"X-Key": key})
    return r.status, r.header("X-Status")


def h1_abort(n, count):
    clients = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", n.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Key: k\r\n\r\n")
        clients.append(s)
    return clients


def test_client_aborts_while_redis_is_paused(redis, valgrind_nginx):
    # A long Redis timeout: the clients give up first, then Redis answers calls of requests
    # that are gone.
    n = valgrind_nginx(conf(redis.port, "5s"))
    assert status_of(n) == (200, "PASSED")  # connected, script cached
    assert h2_curl(n) == (0, "200")
    h2 = H2(n.h2port)
    assert h2.wait([h2.request()]) == ["200"]

    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "1500", "ALL")
    clients = h1_abort(n, 3)
    kept = [h2.request(), h2.request()]
    cancelled = h2.request()  # reset while its Redis call waits; the others go on
    dropped = H2(n.h2port)  # a connection closed with two streams waiting
    dropped.request()
    dropped.request()
    assert h2_curl(n, max_time=0.5)[0] == 28  # curl's timeout: the client went away
    h2.reset(cancelled)
    dropped.close()
    for s in clients:
        s.close()
    pauser.close()

    assert h2.wait(kept) == ["200", "200"]
    access_log = n.dir / "logs" / "access.log"
    assert wait_for(lambda: access_log.read_text().count(" 499 ") >= 3, 10)
    time.sleep(0.5)  # any late reply has arrived
    assert h2.wait([h2.request()]) == ["200"]
    h2.close()
    assert status_of(n) == (200, "PASSED")


def test_redis_timeouts_and_aborts_after_them(redis, valgrind_nginx):
    n = valgrind_nginx(conf(redis.port, "100ms"))
    # Under valgrind the first requests may outlast connect_timeout + timeout while the worker
    # connects and loads the script (the timeout runs from when a request starts waiting).
    assert wait_for(lambda: status_of(n) == (200, "PASSED"), 20, step=0.2)
    h2 = H2(n.h2port)

    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "2000", "ALL")
    # Clients that go away while their calls wait, just before the calls time out.
    clients = h1_abort(n, 2)
    sid = h2.request()
    time.sleep(0.05)
    h2.reset(sid)
    for s in clients:
        s.close()
    time.sleep(0.2)
    # Timeouts take the failure mode (closed); after a few the breaker opens and requests
    # fail at once. Either way: 503 FAILED_CLOSED, and no request waits for Redis.
    assert status_of(n) == (503, "FAILED_CLOSED")
    assert h2.wait([h2.request() for _ in range(3)]) == ["503"] * 3
    assert h2_curl(n) == (0, "503")
    pauser.close()

    # Once Redis answers again the breaker's probe closes it.
    assert wait_for(lambda: status_of(n) == (200, "PASSED"), 10, step=0.2)
    assert h2.wait([h2.request()]) == ["200"]
    h2.close()


def test_api_bucket_calls_of_requests_that_went_away(redis, valgrind_nginx):
    # The API's bucket requests wait for Redis in the content phase: clients that leave
    # first, streams reset, a connection closed with streams waiting; then Redis answers.
    n = valgrind_nginx(conf(redis.port, "5s"))
    assert n.get("/rl/buckets/p/k").status == 200
    h2 = H2(n.h2port)
    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "1500", "ALL")
    clients = []
    for method in (b"GET", b"DELETE"):
        s = socket.create_connection(("127.0.0.1", n.port))
        s.sendall(method + b" /rl/buckets/p/k HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(s)
    kept = h2.request(path="/rl/buckets/p/k")
    cancelled = h2.request(path="/rl/buckets/p/k")
    dropped = H2(n.h2port)
    dropped.request(path="/rl/buckets/p/k")
    time.sleep(0.3)
    h2.reset(cancelled)
    dropped.close()
    for s in clients:
        s.close()
    pauser.close()
    assert h2.wait([kept]) == ["200"]
    time.sleep(0.5)
    assert h2.wait([h2.request(path="/rl/status")]) == ["200"]
    h2.close()
    assert n.get("/rl/buckets/p/k").status == 200


def test_client_aborts_while_delayed(redis, valgrind_nginx):
    # delay=: requests that hold only a timer while they wait, then go away (HTTP/1.1 closed,
    # an h2 stream reset, an h2 connection closed with a stream waiting) before it fires.
    # 2r/s burst=8 delay=1: past the first request, the k-th waits (k - 1) x 500 ms.
    n = valgrind_nginx(conf(redis.port, "5s").replace("rate=1r/h burst=1000",
                                                      "rate=2r/s burst=8 delay=1"))
    assert status_of(n) == (200, "PASSED")
    h2 = H2(n.h2port)
    clients = h1_abort(n, 2)
    kept = h2.request()
    cancelled = h2.request()
    dropped = H2(n.h2port)
    dropped.request()
    time.sleep(0.3)
    h2.reset(cancelled)
    dropped.close()
    for s in clients:
        s.close()
    assert h2.wait([kept], timeout=20) == ["200"]
    access_log = n.dir / "logs" / "access.log"
    assert wait_for(lambda: access_log.read_text().count(" 499 ") >= 4, 10)
    time.sleep(3)  # past every timer the gone requests had
    assert status_of(n, key="other") == (200, "PASSED")
    assert h2.wait([h2.request(key="other")]) == ["200"]
    h2.close()


def test_tls_handshake_verification_failure_reuse_and_shutdown(workdir, valgrind_nginx,
                                                                tmp_path_factory):
    # TLS through nginx's OpenSSL handling: handshakes, a session resumed after Redis cut the
    # connection, a verification failure, close_notify at exit.
    from test_tls import TlsRedis, make_certs
    certs = make_certs(tmp_path_factory.mktemp("vg-tls"))
    server = TlsRedis(workdir / "redis-tls", certs)
    try:
        tls = "ssl ssl_trusted_certificate=%s" % certs["ca"]
        conf_tls = conf(server.port, "5s").replace("connect_timeout=1s", "connect_timeout=2s " + tls)
        n = valgrind_nginx(conf_tls)
        assert status_of(n) == (200, "PASSED")
        assert server.cmd("CLIENT", "KILL", "TYPE", "normal") >= 1
        assert wait_for(lambda: status_of(n) == (200, "PASSED"), 20)
        assert wait_for(lambda: "reused session" in n.log(), 10), n.log()

        wrong = conf(server.port, "1s").replace(
            "connect_timeout=1s", "connect_timeout=2s ssl ssl_trusted_certificate=%s"
            % certs["other_ca"])
        m = valgrind_nginx(wrong)
        assert status_of(m) == (503, "FAILED_CLOSED")
        assert "failed TLS verification" in m.log()
    finally:
        server.stop()
