"""ratelimit_api: status, metrics, buckets and the dashboard's headers, against real traffic,
a real Redis and several nginx workers; counters checked to the request."""

import http.client
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import free_port, run_threads, wait_for
from test_failures import HungRedis

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"


def api_conf(redis=None, policies="", locations="", http_extra="", api="ratelimit_api write;",
             listen="reuseport", redis_args="timeout=1s"):
    redis_line = f"ratelimit_redis 127.0.0.1:{redis.port} {redis_args};" if redis else ""
    return f"""
    {redis_line}
    {policies}
    {http_extra}
    server {{
        listen 127.0.0.1:@PORT@ {listen};
        {locations}
        location /rl/ {{ {api} }}
        location /ro/ {{ ratelimit_api; }}
    }}
"""


def status(n, prefix="/rl/"):
    r = n.get(prefix + "status")
    assert r.status == 200, r.body
    assert r.header("Content-Type") == "application/json"
    return json.loads(r.body)


def policy(s, name):
    return next(p for p in s["policies"] if p["name"] == name)


def parallel(n, paths, threads=8):
    """Sends every path on its own connection from several threads; returns the statuses."""
    results = [None] * len(paths)

    def run(i0):
        for i in range(i0, len(paths), threads):
            results[i] = n.get(paths[i]).status

    run_threads(run, threads)
    return results


def raw_get(port, path, headers=b""):
    """A request with arbitrary header bytes (http.client refuses control bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers
                  + b"\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


POLICIES = """
    ratelimit_policy a rate=1r/h burst=5;
    ratelimit_policy b rate=1r/h burst=100;
    log_format pids '$pid $ratelimit_status';
"""

LOCATIONS = f"""
    access_log @LOG@ pids;
    location /one {{ ratelimit $arg_k policy=a; {BACKEND} }}
    location /two {{
        ratelimit $arg_k policy=a; ratelimit $arg_u policy=a; ratelimit $arg_k policy=b;
        {BACKEND}
    }}
    location /dry {{ ratelimit $arg_k policy=a; ratelimit_dry_run on; {BACKEND} }}
"""


@pytest.mark.parametrize("mode", ["redis", "local"])
def test_counters_are_exact_across_workers(request, nginx_factory, workdir, mode):
    redis = request.getfixturevalue("redis") if mode == "redis" else None
    log = workdir / "pids.log"
    n = nginx_factory(api_conf(redis, POLICIES, LOCATIONS.replace("@LOG@", str(log))),
                      workers=4)
    paths = (["/one?k=x"] * 8 + ["/two?k=y&u=z"] * 3 + ["/one"] * 4)
    results = parallel(n, paths)
    assert results.count(429) == 3 and results.count(200) == 12
    assert [n.get("/dry?k=x").status for _ in range(2)] == [200, 200]

    # Several workers decided: the counters are node-wide.
    pids = {line.split()[0] for line in log.read_text().splitlines()}
    assert len(pids) >= 2, pids

    s = status(n)
    assert s["mode"] == mode and s["write"] is True
    assert re.fullmatch(r"\d+\.\d+\.\d+", s["version"])
    a, b = policy(s, "a"), policy(s, "b")
    # /two has two limits of policy a: the request counts once for a. "/one" without k skipped.
    # Some rejections may come from the node's rejection memory (Redis mode): a subset.
    on_node = a["counters"]["rejected_on_node"]
    assert a["counters"] == {"passed": 8, "rejected": 3, "rejected_dry_run": 2,
                             "failed_open": 0, "failed_closed": 0, "local_passed": 0,
                             "local_rejected": 0, "delayed": 0, "delayed_dry_run": 0,
                             "rejected_on_node": on_node}
    assert 0 <= on_node <= (3 if mode == "redis" else 0)
    assert b["counters"]["passed"] == 3 and b["counters"]["rejected"] == 0
    assert (a["rate"], a["burst"], b["burst"]) == ("1r/h", 5, 100)
    assert a["rate_per_second"] == pytest.approx(1 / 3600)
    # Dry-run rejections are rejections in the top keys too; b rejected nobody.
    assert a["top"] == [{"key": "x", "count": 5}]
    assert b["top"] == []
    if mode == "redis":
        r = s["redis"]
        assert r["state"] == "up" and r["address"] == "127.0.0.1:%d" % redis.port
        # 13 requests were decided, each by Redis or by the node (dry-run rejections too, from
        # what an earlier reply showed); a script call carries one or more. The other calls are
        # the node's polls of the runtime limits (about 4 a second).
        assert 1 <= r["script_calls"] <= 13 - on_node
        assert r["script_calls"] <= r["calls"] <= r["script_calls"] + 40
        assert r["decisions_per_script_call"] >= 1
        assert r["in_flight"] == 0 and r["errors"] == 0 and r["timeouts"] == 0
    else:
        assert s["redis"] is None

    # Reading changes nothing.
    assert status(n)["policies"] == s["policies"]


def test_metrics_parse_with_prometheus_client(redis, nginx_factory, workdir):
    from prometheus_client.parser import text_string_to_metric_families

    log = workdir / "pids.log"
    n = nginx_factory(api_conf(redis, POLICIES, LOCATIONS.replace("@LOG@", str(log))),
                      workers=2)
    parallel(n, ["/one?k=m"] * 7 + ["/two?k=w&u=v"] * 2)
    r = n.get("/rl/metrics")
    assert r.status == 200
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8"
    text = r.body.decode()
    assert "\n# TYPE nginx_ratelimit_requests_total counter\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The parser strips _total from counter family names.
    requests = {(s.labels["policy"], s.labels["outcome"]): s.value
                for s in families["nginx_ratelimit_requests"].samples}
    assert requests[("a", "passed")] == 7 and requests[("a", "rejected")] == 2
    assert requests[("b", "passed")] == 2 and requests[("b", "rejected")] == 0
    assert all(f.name.startswith("nginx_ratelimit_") for f in families.values())
    hist = families["nginx_ratelimit_redis_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in hist.samples if s.name.endswith("_bucket")]
    assert buckets[-1][0] == "+Inf"
    values = [v for _, v in buckets]
    assert values == sorted(values)
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    calls = families["nginx_ratelimit_redis_calls"].samples[0].value
    # Every call timed once; 9 decisions travelled in at most 9 calls (coalesced, or rejected
    # on the node without a call), beside the node's polls of the runtime limits (4 a second).
    assert count == buckets[-1][1] == calls
    script_calls = families["nginx_ratelimit_redis_script_calls"].samples[0].value
    assert 1 <= script_calls <= 9 and script_calls <= calls <= script_calls + 40
    assert families["nginx_ratelimit_redis_up"].samples[0].value == 1
    # Labels are the policy and the outcome, never a key.
    for f in families.values():
        for s in f.samples:
            assert set(s.labels) <= {"policy", "outcome", "le", "version", "mode"}


HOSTILE = b'q"\\<script>alert(1)</script>\x01\x1f\x7f\xff\xfe&\'/%'


def test_hostile_keys_in_status_and_buckets(redis, nginx_factory):
    n = nginx_factory(api_conf(
        redis, "ratelimit_policy a rate=1r/h burst=1; ratelimit_policy lt rate=1r/h burst=1;", f"""
        location /k {{ ratelimit $http_x_key policy=a; {BACKEND} }}
        location /t {{ ratelimit $http_x_key policy=lt; {BACKEND} }}
    """))
    long_key = b"L" * 200
    for key in (HOSTILE, long_key):
        statuses = [raw_get(n.port, b"/k", b"X-Key: " + key + b"\r\n") for _ in range(3)]
        assert statuses == [200, 429, 429]
    raw = n.get("/rl/status").body
    assert b"<" not in raw and b"\x01" not in raw and b"\xff" not in raw
    top = {t["key"]: t["count"] for t in policy(json.loads(raw), "a")["top"]}
    assert len(top) == 2
    hostile = urllib.parse.quote(HOSTILE, safe="")
    assert top[hostile] == 2
    assert urllib.parse.unquote_to_bytes(hostile) == HOSTILE
    # A long key is shown as the digest its bucket is stored under, which the path accepts.
    digest = next(k for k in top if k != hostile)
    assert urllib.parse.unquote(digest).startswith("#sha1:")

    for path_key in (hostile, digest, urllib.parse.quote(long_key)):
        r = n.get("/rl/buckets/a/" + path_key)
        assert r.status == 200, (path_key, r.body)
        b = json.loads(r.body)
        assert b["exists"] is True and b["tokens"] < 0.01 and b["capacity"] == 1
    assert json.loads(n.get("/rl/buckets/a/" + hostile).body)["key"] == hostile

    # Refill the hostile one: its Redis key is gone, the next request passes.
    assert n.get("/rl/buckets/a/" + hostile, method="DELETE").status == 204
    assert redis.cmd("EXISTS", b"rl:a:" + HOSTILE) == 0
    assert raw_get(n.port, b"/k", b"X-Key: " + HOSTILE + b"\r\n") == 200

    # Long keys with a {hash tag} of 120 and 128 bytes: their ids were up to 176 bytes, written
    # past the sketch's entries (defect 1 of issue 15). Every id fits in 128 bytes, the sketch
    # counts what happened, and each id shown names its bucket.
    tagged = [b"{" + bytes([c]) * length + b"}-" + str(i).encode()
              for i, (c, length) in enumerate((c, length) for c in b"abcdefghijklmnop"
                                              for length in (120, 128))]
    for key in tagged:
        statuses = [raw_get(n.port, b"/t", b"X-Key: " + key + b"\r\n") for _ in range(3)]
        assert statuses == [200, 429, 429], key
    raw = n.get("/rl/status").body
    assert len(raw) < 16384, len(raw)
    top = {urllib.parse.unquote_to_bytes(t["key"]): t["count"]
           for t in policy(json.loads(raw), "lt")["top"]}
    assert 0 < len(top) <= 10
    assert all(0 < count <= 2 * len(tagged) for count in top.values()), top
    assert sum(top.values()) <= 2 * len(tagged)
    for key in top:
        assert len(key) <= 128 and (key in tagged or key.startswith(b"{#sha1:")), key
        b = json.loads(n.get("/rl/buckets/lt/" + urllib.parse.quote(key, safe="")).body)
        assert b["exists"] is True and b["tokens"] < 0.01 and b["capacity"] == 1, (key, b)
    redis_keys = redis.cmd("KEYS", "rl:lt:*")
    assert len(redis_keys) == len(tagged)
    assert max(len(k) for k in redis_keys) <= len(b"rl:lt:") + 128


def test_bucket_get_reads_without_consuming_and_delete_refills(redis, nginx_factory):
    n = nginx_factory(api_conf(redis, "ratelimit_policy a rate=1r/h burst=5;", f"""
        location /one {{ ratelimit $arg_k policy=a; {BACKEND} }}
    """))
    assert [n.get("/one?k=u").status for _ in range(2)] == [200, 200]
    ttl = redis.cmd("PTTL", "rl:a:u")
    stored = redis.cmd("GET", "rl:a:u")
    for _ in range(3):
        r = n.get("/rl/buckets/a/u")
        assert r.status == 200 and r.header("Content-Type") == "application/json"
        b = json.loads(r.body)
        assert b["exists"] is True and b["capacity"] == 5
        assert 3 <= b["tokens"] < 3.01
        assert b["rate_per_second"] == pytest.approx(1 / 3600)
        assert 7190 <= b["reset"] <= 7200
    # GET took nothing and wrote nothing.
    assert redis.cmd("GET", "rl:a:u") == stored
    assert redis.cmd("PTTL", "rl:a:u") <= ttl
    assert n.get("/one?k=u").header("X-RateLimit-Remaining") == "2"

    # A missing bucket is full; HEAD answers the same without a body.
    missing = json.loads(n.get("/rl/buckets/a/nobody").body)
    assert missing == {"policy": "a", "key": "nobody", "exists": False, "tokens": 5,
                       "capacity": 5, "rate_per_second": missing["rate_per_second"], "reset": 0}
    head = n.get("/rl/buckets/a/u", method="HEAD")
    assert head.status == 200 and head.body == b""

    # DELETE refills; without `write` it is 405 and changes nothing.
    r = n.get("/ro/buckets/a/u", method="DELETE")
    assert r.status == 405 and r.header("Allow") == "GET, HEAD"
    assert redis.cmd("EXISTS", "rl:a:u") == 1
    assert n.get("/rl/buckets/a/u", method="DELETE").status == 204
    assert redis.cmd("EXISTS", "rl:a:u") == 0
    assert json.loads(n.get("/rl/buckets/a/u").body)["tokens"] == 5
    assert n.get("/one?k=u").header("X-RateLimit-Remaining") == "4"


class HoldingProxy:
    """A TCP proxy to Redis that, while `hold` is set, holds back the script replies (bulk
    strings) on every connection until released; other replies (DEL's integer) pass."""

    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.port = free_port()
        self.hold = threading.Event()
        self.released = threading.Event()
        self.held = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.stopped = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.1)
        while not self.stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            server = socket.create_connection(("127.0.0.1", self.redis_port))
            self.conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src, dst, replies):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if replies and self.hold.is_set() and data.startswith(b"$"):
                    self.held += 1
                    self.released.wait()
                dst.sendall(data)
        except OSError:
            pass

    def close(self):
        self.stopped = True
        self.released.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def connections_to_two_workers(n, tries=40):
    """Two keep-alive connections that different workers accepted (reuseport spreads them)."""
    by_pid = {}
    for _ in range(tries):
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        c.request("GET", "/pid")
        pid = c.getresponse().read()
        if pid in by_pid:
            c.close()
        else:
            by_pid[pid] = c
        if len(by_pid) == 2:
            return list(by_pid.values())
    pytest.fail("every connection went to one worker")


def get_on(conn, path, method="GET"):
    conn.request(method, path)
    r = conn.getresponse()
    r.read()
    return r


# A decision call sent before the API's DELETE and answered after it (here: by another worker,
# its reply held back) must not make the node remember the level from before the refill: the
# refilled bucket would be rejected on the node for up to its refill time (an hour here).
def test_reply_sent_before_a_refill_does_not_remember_the_old_level(redis, nginx_factory):
    proxy = HoldingProxy(redis.port)
    try:
        conf = api_conf(None, "ratelimit_policy a rate=1r/h burst=2;", f"""
            location /one {{ ratelimit $arg_k policy=a; {BACKEND} }}
            location /pid {{ return 200 $pid; }}
        """, http_extra=f"ratelimit_redis 127.0.0.1:{proxy.port} timeout=10s;")
        n = nginx_factory(conf, workers=2)
        a, b = connections_to_two_workers(n)
        # Both workers connected, the script loaded.
        assert get_on(a, "/one?k=warm-a").status == 200
        assert get_on(b, "/one?k=warm-b").status == 200
        assert get_on(a, "/one?k=u").getheader("X-RateLimit-Remaining") == "1"

        proxy.hold.set()
        result = {}
        taker = threading.Thread(target=lambda: result.setdefault("r", get_on(a, "/one?k=u")))
        taker.start()
        # Redis took the last token (less than one left); its reply is held on the way back.
        def took_last():
            stored = re.fullmatch(rb"v2 (\d+) 3600000 \d+", redis.cmd("GET", "rl:a:u"))
            return proxy.held == 1 and stored and int(stored.group(1)) < 3600000
        assert wait_for(took_last), (proxy.held, redis.cmd("GET", "rl:a:u"))
        assert get_on(b, "/rl/buckets/a/u", "DELETE").status == 204
        assert redis.cmd("EXISTS", "rl:a:u") == 0
        proxy.released.set()
        taker.join()
        assert result["r"].status == 200

        r = get_on(b, "/one?k=u")
        assert (r.status, r.getheader("X-RateLimit-Remaining")) == (200, "1")
        assert policy(status(n), "a")["counters"]["rejected_on_node"] == 0
    finally:
        proxy.close()


def test_bucket_get_reads_v1_and_v2_stored_formats(redis, nginx_factory):
    n = nginx_factory(api_conf(redis, "ratelimit_policy h rate=60r/h burst=10;", ""))
    now_ms = int(redis.cmd("TIME")[0]) * 1000
    # v2 written under a per-minute period: 2.5 tokens, converted to this policy's period.
    redis.cmd("SET", "rl:h:v2", "v2 150000 60000 %d" % now_ms)
    b = json.loads(n.get("/rl/buckets/h/v2").body)
    assert b["exists"] and 2.5 <= b["tokens"] < 2.6
    # A later version with more fields is read the same way.
    redis.cmd("SET", "rl:h:v3", "v3 150000 60000 %d whatever else" % now_ms)
    assert 2.5 <= json.loads(n.get("/rl/buckets/h/v3").body)["tokens"] < 2.6
    # Legacy v1 is in the reader's own period (3600000 units per token).
    redis.cmd("SET", "rl:h:v1", "%d %d" % (4 * 3600000, now_ms))
    assert 4 <= json.loads(n.get("/rl/buckets/h/v1").body)["tokens"] < 4.1
    # A value no bucket can hold is an error, never a full bucket (as 0.3 read it).
    redis.cmd("SET", "rl:h:bad", "v2 -3600000 3600000 %d" % now_ms)
    assert n.get("/rl/buckets/h/bad").status == 503
    assert "ratelimit: unreadable bucket value" in n.log()


def test_buckets_in_local_mode(nginx_factory):
    n = nginx_factory(api_conf(None, "ratelimit_policy a rate=1r/h burst=3;", f"""
        location /one {{ ratelimit $arg_k policy=a; {BACKEND} }}
    """), workers=2)
    # $arg_k is taken as sent: the key is the 5 bytes "z%2Fw", "z%252Fw" in the API's path.
    assert [n.get("/one?k=z%2Fw").status for _ in range(4)] == [200, 200, 200, 429]
    b = json.loads(n.get("/rl/buckets/a/z%252Fw").body)
    assert b["exists"] is True and b["tokens"] < 0.01 and 10790 <= b["reset"] <= 10800
    assert json.loads(n.get("/rl/buckets/a/z%2Fw").body)["exists"] is False
    assert n.get("/rl/buckets/a/z%252Fw", method="DELETE").status == 204
    b = json.loads(n.get("/rl/buckets/a/z%252Fw").body)
    assert b["exists"] is False and b["tokens"] == 3
    assert n.get("/one?k=z%2Fw").status == 200
    s = status(n)
    assert s["mode"] == "local" and s["redis"] is None
    assert policy(s, "a")["top"] == [{"key": "z%252Fw", "count": 1}]


def test_status_codes(redis, nginx_factory):
    n = nginx_factory(api_conf(redis, "ratelimit_policy a rate=1r/h burst=3;",
                               "location /plain { ratelimit_api; }"))
    cases = [
        ("GET", "/plain", 200), ("GET", "/plain/status", 200), ("GET", "/plainstatus", 404),
        ("GET", "/plain/buckets/a/k", 200), ("GET", "/plain/", 200),
        ("GET", "/rl/", 200), ("GET", "/rl/status", 200), ("GET", "/rl/metrics", 200),
        ("HEAD", "/rl/status", 200), ("GET", "/rl/status?x=1", 200),
        ("GET", "/rl/buckets/a/k", 200),
        ("GET", "/rl/nothing", 404), ("GET", "/rl/status/", 404),
        ("GET", "/rl/buckets/zz/k", 404),
        ("GET", "/rl/buckets", 400), ("GET", "/rl/buckets/a", 400),
        ("GET", "/rl/buckets/a/", 400), ("GET", "/rl/buckets//k", 400),
        ("POST", "/rl/status", 405), ("DELETE", "/rl/status", 405),
        ("PUT", "/rl/buckets/a/k", 405), ("DELETE", "/rl/", 405),
        ("DELETE", "/ro/buckets/a/k", 405), ("DELETE", "/rl/buckets/a/k", 204),
    ]
    for method, path, code in cases:
        r = n.get(path, {"Origin": "http://evil.example"}, method=method)
        assert r.status == code, (method, path, r.status, r.body)
        assert not any(h.startswith("access-control-") for h in r.headers), r.headers
        if code >= 400:
            assert "error" in json.loads(r.body)
    allow = n.get("/rl/status", method="POST").header("Allow")
    assert allow == "GET, HEAD"
    assert n.get("/rl/buckets/a/k", method="PUT").header("Allow") == "GET, HEAD, DELETE"
    # A request body is read and dropped.
    assert n.get("/rl/status", {"Content-Length": "0"}).status == 200


def test_dashboard_is_self_contained_and_locked_down(redis, nginx_factory):
    n = nginx_factory(api_conf(redis, "ratelimit_policy a rate=1r/h burst=3;", ""))
    r = n.get("/rl/")
    assert r.status == 200 and r.header("Content-Type") == "text/html; charset=utf-8"
    csp = r.header("Content-Security-Policy")
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9+/=]+)'", csp).group(1)
    assert "default-src 'none'" in csp and "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp
    page = r.body.decode()
    assert page.count('nonce="%s"' % nonce) == 2  # the one <script> and the one <style>
    assert page.count("<script") == 1
    # No external assets: nothing is loaded from anywhere but `status` and `buckets`.
    assert not re.search(r"\s(src|href)\s*=", page)
    assert "innerHTML" not in page and "document.write" not in page
    assert r.header("X-Content-Type-Options") == "nosniff"
    assert r.header("Access-Control-Allow-Origin") is None
    # A fresh nonce each time.
    assert n.get("/rl/").header("Content-Security-Policy") != csp


def test_api_location_is_not_limited_by_inherited_lines(redis, nginx_factory):
    n = nginx_factory(f"""
    ratelimit_redis 127.0.0.1:{redis.port};
    ratelimit_policy tiny rate=1r/h burst=1;
    ratelimit $remote_addr policy=tiny;
    server {{
        listen 127.0.0.1:@PORT@;
        location /rl/ {{ ratelimit_api; }}
        location /own/ {{ ratelimit_api; ratelimit $remote_addr policy=tiny; }}
        location / {{ {BACKEND} }}
    }}
    """)
    assert [n.get("/rl/status").status for _ in range(5)] == [200] * 5
    assert [n.get("/own/status").status for _ in range(2)] == [200, 429]
    assert [n.get("/x").status for _ in range(2)] == [429, 429]  # the same bucket


def test_password_never_shown(redis, nginx_factory):
    secret = "Sup3r-s3cret-pw"
    redis.cmd("CONFIG", "SET", "requirepass", secret)
    n = nginx_factory(api_conf(None, f"""
        ratelimit_redis 127.0.0.1:{redis.port} password={secret} timeout=1s;
        ratelimit_policy a rate=1r/h burst=3;
    """, f"location /one {{ ratelimit $arg_k policy=a; {BACKEND} }}"))
    assert n.get("/one?k=1").status == 200
    assert n.get("/rl/buckets/a/1").status == 200
    for path in ("/rl/status", "/rl/metrics", "/rl/"):
        assert secret.encode() not in n.get(path).body
    assert secret not in n.log()

    # Error paths: a misspelled option (its value may be the password) is named, never shown.
    for arg, shown in ((f"pasword={secret}", '"pasword=..."'),
                       (f"Password={secret}", '"Password=..."'),
                       (f"password:{secret}", '"password:..."')):
        bad = nginx_factory(api_conf(None, f"""
            ratelimit_redis 127.0.0.1:{redis.port} {arg} timeout=1s;
            ratelimit_policy a rate=1r/h burst=3;
        """), start=False)
        t = bad.test_config()
        assert t.returncode != 0
        assert '"ratelimit_redis"' in t.stderr and shown in t.stderr, t.stderr
        assert secret not in t.stderr + t.stdout + bad.log()


def test_redis_down_buckets_503_and_state_logged_once(redis, nginx_factory):
    n = nginx_factory(api_conf(redis, "ratelimit_policy a rate=1r/h burst=3;", f"""
        location /one {{ ratelimit $arg_k policy=a; ratelimit_failure_mode local; {BACKEND} }}
    """))
    assert n.get("/one?k=1").status == 200
    redis.stop()
    for method in ("GET", "DELETE"):
        r = n.get("/rl/buckets/a/1", method=method)
        assert r.status == 503, (method, r.body)
        assert "Redis" in json.loads(r.body)["error"]
    # Failed round trips open the breaker: requests decide locally, the API still answers.
    statuses = [n.get("/one?k=2").status for _ in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    s = status(n)
    assert s["redis"]["state"] == "down" and s["redis"]["breaker_opened"] == 1
    assert s["redis"]["workers_down"] == 1
    c = policy(s, "a")["counters"]
    assert c["passed"] == 1 and c["local_passed"] == 3 and c["local_rejected"] == 3
    assert n.get("/rl/buckets/a/1").status == 503
    assert n.log().count("is down") == 1

    redis.start()
    # The probe finds Redis again within its interval.
    assert wait_for(lambda: status(n)["redis"]["state"] == "up", 5)
    assert n.get("/rl/buckets/a/1").status == 200
    s = status(n)
    assert s["redis"]["breaker_closed"] == 1 and s["redis"]["workers_down"] == 0
    assert s["redis"]["reconnects"] >= 1
    log = n.log()
    assert log.count("is down") == 1 and log.count("is up") == 2  # first connect, recovery

    # A connection lost while up: one "reconnecting" line, then "up" again.
    redis.restart()
    assert wait_for(lambda: n.get("/one?k=3").status == 200 and "is up" in n.log()
                    and n.log().count("is up") == 3, 5)
    # Once per lost connection: when Redis stopped, and when it restarted.
    assert n.log().count("reconnecting") == 2


def test_counters_and_top_keys_survive_reload(redis, nginx_factory):
    base = """
        ratelimit_policy a rate=1r/h burst=2;
    """
    locations = f"location /one {{ ratelimit $arg_k policy=a; {BACKEND} }}"
    n = nginx_factory(api_conf(redis, base, locations), workers=2)
    parallel(n, ["/one?k=r"] * 5 + ["/one?k=s"] * 3)
    before = policy(status(n), "a")
    assert before["counters"]["passed"] == 4 and before["counters"]["rejected"] == 4
    assert before["top"] == [{"key": "r", "count": 3}, {"key": "s", "count": 1}]

    old = set(n.worker_pids())
    n.write_conf(api_conf(redis, base + "ratelimit_policy c rate=5r/s;", locations), workers=2)
    n.reload()
    assert wait_for(lambda: set(n.worker_pids()) and not set(n.worker_pids()) & old, 10)
    s = status(n)
    assert policy(s, "a")["counters"] == before["counters"]
    assert policy(s, "a")["top"] == before["top"]
    assert policy(s, "c")["counters"]["passed"] == 0
    assert n.get("/one?k=r").status == 429
    assert policy(status(n), "a")["counters"]["rejected"] == 5


# Keeps Redis busy (a script spinning on TIME) for about 1.5 seconds.
BUSY = """local s = redis.call('TIME')
local t0 = s[1] * 1000000 + s[2]
while true do
  local t = redis.call('TIME')
  if t[1] * 1000000 + t[2] - t0 > 1500000 then return 1 end
end"""


def test_clients_gone_while_bucket_calls_wait(redis, nginx_factory):
    h2 = free_port()
    n = nginx_factory(api_conf(redis, "ratelimit_policy a rate=1r/h burst=3;", "",
                               listen=";\n listen 127.0.0.1:%d http2" % h2,
                               redis_args="timeout=3s"))
    blocker = threading.Thread(target=lambda: redis.cmd("EVAL", BUSY, 0))
    blocker.start()
    time.sleep(0.1)
    # HTTP/1.1 clients that leave before Redis answers, a GET and a DELETE ...
    for method in (b"GET", b"DELETE"):
        s = socket.create_connection(("127.0.0.1", n.port))
        s.sendall(method + b" /rl/buckets/a/gone HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
        s.close()
    # ... and an HTTP/2 stream reset by its client.
    aborted = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "--max-time", "0.2",
                              "http://127.0.0.1:%d/rl/buckets/a/gone" % h2],
                             capture_output=True)
    assert aborted.returncode == 28  # curl's timeout
    blocker.join()
    # Redis answered calls whose requests are gone: nothing touched them, the worker serves on.
    time.sleep(0.2)
    ok = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                         "%{http_code}", "http://127.0.0.1:%d/rl/buckets/a/gone" % h2],
                        capture_output=True, text=True)
    assert ok.stdout == "200"
    assert status(n)["redis"]["in_flight"] == 0


def test_hung_redis_answers_503_within_the_timeout(nginx_factory):
    hung = HungRedis()
    try:
        n = nginx_factory(api_conf(hung, "ratelimit_policy a rate=1r/h burst=3;", "",
                                   redis_args="timeout=300ms connect_timeout=200ms"))
        for method in ("GET", "DELETE"):
            start = time.monotonic()
            r = n.get("/rl/buckets/a/k", method=method)
            assert r.status == 503 and time.monotonic() - start < 1.5
        s = status(n)
        # The two bucket calls, and the node's polls of the runtime limits, if any was sent.
        assert s["redis"]["timeouts"] >= 2 and s["redis"]["in_flight"] >= 2
    finally:
        hung.close()
