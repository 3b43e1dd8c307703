"""The whole directive contract: several limits, cost, dry run, header styles, variables,
local mode, bounded keys, internal redirects and configuration errors."""

import hashlib
import http.client
import time

import pytest

from conftest import Nginx, free_port, wait_for

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"


def server(locations, http_extra="", redis=None, redis_args=""):
    redis_line = f"ratelimit_redis 127.0.0.1:{redis.port} timeout=2s {redis_args};" if redis else ""
    return f"""
    {redis_line}
    {http_extra}
    server {{
        listen 127.0.0.1:@PORT@;
        {locations}
    }}
"""


def evalsha_calls(redis):
    stats = redis.cmd("INFO", "commandstats").decode()
    for line in stats.splitlines():
        if line.startswith("cmdstat_evalsha:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


# --- several limits ------------------------------------------------------------------------

def test_several_limits_all_or_nothing_in_one_round_trip(redis, nginx_factory):
    conf = server(f"""
        location / {{
            ratelimit $http_x_user policy=user;
            ratelimit global policy=global;
            add_header X-Policy $ratelimit_policy always;
            {BACKEND}
        }}""", """
        ratelimit_policy user rate=1r/h burst=2;
        ratelimit_policy global rate=1r/h burst=10;
    """, redis)
    n = nginx_factory(conf)
    # A second node: it has not seen u1's bucket run dry, so Redis itself rejects there.
    other_node = nginx_factory(conf)
    before = evalsha_calls(redis)
    first = n.get("/", {"X-User": "u1"})
    assert (first.status, first.header("X-RateLimit-Remaining"), first.header("X-Policy")) == \
        (200, "1", "user")
    assert n.get("/", {"X-User": "u1"}).status == 200
    rejected = other_node.get("/", {"X-User": "u1"})
    assert rejected.status == 429
    assert rejected.header("X-Policy") == "user"
    # The rejected request took nothing from the global bucket: 10 - 2 - 1 left after u2.
    other = n.get("/", {"X-User": "u2"})
    assert other.status == 200
    assert (other.header("X-Policy"), other.header("X-RateLimit-Remaining")) == ("user", "1")
    version, level, period, _stamp = redis.cmd("GET", "rl:global:global").split()
    assert (version, int(period)) == (b"v2", 3600000)
    assert int(level) // 3600000 == 7  # whole tokens; the rest is the refill of a few ms
    # One script call per request, whatever the number of limits.
    assert evalsha_calls(redis) - before == 4


def test_most_restrictive_limit_is_reported(redis, nginx_factory):
    n = nginx_factory(server(f"""
        location / {{
            ratelimit $remote_addr policy=wide;
            ratelimit $remote_addr policy=narrow;
            {BACKEND}
        }}""", """
        ratelimit_policy wide rate=100r/s burst=100;
        ratelimit_policy narrow rate=1r/h burst=5;
    """, redis))
    r = n.get("/")
    assert (r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining")) == ("5", "4")


def test_retry_after_waits_for_every_limit(redis, nginx_factory):
    n = nginx_factory(server(f"""
        location / {{
            ratelimit $remote_addr policy=fast;
            ratelimit $remote_addr policy=slow cost=60;
            {BACKEND}
        }}""", """
        ratelimit_policy fast rate=1r/s burst=1;
        ratelimit_policy slow rate=1r/h burst=100;
    """, redis))
    assert n.get("/").status == 200
    r = n.get("/")
    # "fast" is the most restrictive (0 left), but the request needs 60 tokens of "slow",
    # which has 40: 20 more at one an hour.
    assert (r.status, r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining")) == \
        (429, "1", "0")
    assert r.header("Retry-After") == "72000"


def test_limits_are_inherited_only_by_levels_without_their_own(redis, nginx_factory):
    n = nginx_factory(server(f"""
        ratelimit $remote_addr policy=outer;
        location /inherit {{ {BACKEND} }}
        location /own {{ ratelimit $remote_addr policy=inner; {BACKEND} }}
    """, """
        ratelimit_policy outer rate=1r/h burst=50;
        ratelimit_policy inner rate=1r/h burst=7;
    """, redis))
    assert n.get("/inherit").header("X-RateLimit-Limit") == "50"
    assert n.get("/own").header("X-RateLimit-Limit") == "7"


# --- cost ----------------------------------------------------------------------------------

def test_static_and_variable_cost(redis, nginx_factory):
    n = nginx_factory(server(f"""
        location /static {{ ratelimit s policy=p cost=4; {BACKEND} }}
        location /var {{ ratelimit v policy=p cost=$http_x_cost; {BACKEND} }}
        location /zero {{ ratelimit s policy=p cost=0; {BACKEND} }}
    """, "ratelimit_policy p rate=1r/h burst=10;", redis))
    assert [n.get("/static").header("X-RateLimit-Remaining") for _ in range(2)] == ["6", "2"]
    r = n.get("/static")
    assert r.status == 429 and r.header("X-RateLimit-Remaining") == "2"
    # cost=0 only reports the bucket, and passes even when the bucket is nearly empty.
    z = n.get("/zero")
    assert (z.status, z.header("X-RateLimit-Remaining")) == (200, "2")

    assert n.get("/var", {"X-Cost": "3"}).header("X-RateLimit-Remaining") == "7"
    garbage = n.get("/var", {"X-Cost": "lots"})
    assert garbage.header("X-RateLimit-Remaining") == "6"
    assert n.get("/var").header("X-RateLimit-Remaining") == "5"  # empty counts 1 too
    assert 'cost "lots" is not a non-negative integer' in n.log()
    assert n.get("/var", {"X-Cost": "11"}).status == 429  # more than burst: never


# --- dry run, status, log level ------------------------------------------------------------

def test_dry_run_counts_but_never_rejects(redis, nginx_factory):
    n = nginx_factory(server(f"""
        location / {{
            ratelimit $remote_addr policy=p;
            ratelimit_dry_run on;
            ratelimit_log_level warn;
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}""", "ratelimit_policy p rate=1r/h burst=1;", redis))
    assert n.get("/").header("X-Status") == "PASSED"
    r = n.get("/")
    assert (r.status, r.header("X-Status"), r.header("Retry-After")) == \
        (200, "REJECTED_DRY_RUN", None)
    assert r.header("X-RateLimit-Remaining") == "0"
    assert "[warn]" in n.log() and "rejected in dry run by policy \"p\"" in n.log()


def test_custom_status_and_log_level(redis, nginx_factory):
    n = nginx_factory(server(f"""
        location / {{
            ratelimit $remote_addr policy=p;
            ratelimit_status 503;
            ratelimit_log_level notice;
            {BACKEND}
        }}""", "ratelimit_policy p rate=1r/h burst=1;", redis))
    n.get("/")
    r = n.get("/")
    assert r.status == 503 and r.header("Retry-After") == "3600"
    assert any("[notice]" in line and "rejected by policy" in line for line in n.log().splitlines())


# --- header styles -------------------------------------------------------------------------

@pytest.mark.parametrize("style", ["x-ratelimit", "ietf", "both", "off"])
def test_header_styles(redis, nginx_factory, style):
    n = nginx_factory(server(f"""
        location / {{ ratelimit $remote_addr policy=api; ratelimit_headers {style}; {BACKEND} }}
    """, "ratelimit_policy api rate=3r/h burst=3;", redis))
    r = n.get("/")
    x = (r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining"),
         r.header("X-RateLimit-Reset"))
    ietf = (r.header("RateLimit-Policy"), r.header("RateLimit"))
    want_x = ("3", "2", "1200")
    want_ietf = ('"api";q=3;w=3600', '"api";r=2;t=1200')
    assert x == (want_x if style in ("x-ratelimit", "both") else (None, None, None))
    assert ietf == (want_ietf if style in ("ietf", "both") else (None, None))
    n.get("/")
    n.get("/")
    rejected = n.get("/")
    assert rejected.status == 429
    assert rejected.header("Retry-After") == (None if style == "off" else "1200")


# --- variables -----------------------------------------------------------------------------

def test_variables_in_log_format_and_map(redis, nginx_factory):
    n = nginx_factory(server(f"""
        access_log @DIR@/rl.log rl;
        location / {{
            ratelimit $remote_addr policy=p;
            add_header X-Tier $tier always;
            {BACKEND}
        }}""", """
        ratelimit_policy p rate=1r/h burst=2;
        log_format rl "$ratelimit_status $ratelimit_policy $ratelimit_limit $ratelimit_remaining $ratelimit_reset";
        map $ratelimit_remaining $tier { "0" last; default plenty; }
    """, redis).replace("@DIR@", "/tmp"), start=False)
    n.conf.write_text(n.conf.read_text().replace("/tmp/rl.log", str(n.dir / "rl.log")))
    n.start()
    assert n.get("/").header("X-Tier") == "plenty"
    assert n.get("/").header("X-Tier") == "last"
    n.get("/")
    assert wait_for(lambda: len((n.dir / "rl.log").read_text().splitlines()) == 3)
    lines = (n.dir / "rl.log").read_text().splitlines()
    assert lines == ["PASSED p 2 1 3600", "PASSED p 2 0 7200", "REJECTED p 2 0 7200"]


# --- local mode ----------------------------------------------------------------------------

LOCAL = f"""
    ratelimit_zone 1m;
    ratelimit_policy p rate=1r/h burst=20;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $http_x_key policy=p;
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}
    }}
"""


def test_local_mode_is_exact_across_workers_and_survives_reload(nginx_factory):
    n = nginx_factory(LOCAL, workers=2)
    results = [n.get("/", {"X-Key": "k"}) for _ in range(12)]
    assert [r.status for r in results] == [200] * 12
    assert [r.header("X-RateLimit-Remaining") for r in results] == \
        [str(i) for i in range(19, 7, -1)]
    assert results[0].header("X-Status") == "PASSED"

    old = set(n.worker_pids())
    n.reload()
    assert wait_for(lambda: set(n.worker_pids()) and not set(n.worker_pids()) & old, 10)
    after = [n.get("/", {"X-Key": "k"}) for _ in range(9)]
    assert [r.header("X-RateLimit-Remaining") for r in after] == \
        [str(i) for i in range(7, -1, -1)] + ["0"]
    assert after[-1].status == 429
    assert after[-1].header("X-Status") == "REJECTED"
    assert after[-1].header("Retry-After") == "3600"


class KeepAlive:
    """One keep-alive connection: thousands of requests in a second or two."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, key):
        self.conn.request("GET", "/", headers={"X-Key": key})
        r = self.conn.getresponse()
        r.read()
        return r.status, r.getheader("X-RateLimit-Remaining"), r.getheader("X-Status")

    def close(self):
        self.conn.close()


def test_local_mode_zone_full_evicts_old_buckets(nginx_factory):
    # The smallest zone; short keys and ~120-byte keys take slabs of different sizes, so
    # freeing one bucket of one kind does not make room for the other.
    n = nginx_factory(LOCAL.replace("ratelimit_zone 1m;", "ratelimit_zone 32k;").replace(
        "burst=20", "burst=3"))
    c = KeepAlive(n.port)
    try:
        def short(i):
            return "s-%d" % i

        def long(i):
            return "l-%d-" % i + "x" * 120

        for rounds in range(2):
            # Every request is counted (a request the zone could not count would carry no
            # headers), long and short keys alternating in large batches.
            for make in (short, long):
                for i in range(400):
                    assert c.get(make(i)) == (200, "2", "PASSED"), (make(i), rounds)
                # A key just counted goes on being counted, and is rejected past its burst.
                assert [c.get(make(399))[:2] for _ in range(3)] == \
                    [(200, "1"), (200, "0"), (429, "0")]
        # The zone cannot hold 800 buckets: the oldest ones were evicted (a fresh bucket
        # again), which is what a full zone should do.
        assert c.get(short(200)) == (200, "2", "PASSED")
    finally:
        c.close()
    assert "is full" not in n.log()


# --- keys ----------------------------------------------------------------------------------

def test_long_and_binary_keys_prefix_and_db(redis, nginx_factory):
    n = nginx_factory(server(f"""
        location /long {{ ratelimit $http_x_key policy=p; {BACKEND} }}
        location /bin {{ ratelimit $binary_remote_addr policy=p; {BACKEND} }}
    """, "ratelimit_policy p rate=1r/h burst=5;", redis, "prefix=app: db=3"))
    long_key = "k" * 300
    assert n.get("/long", {"X-Key": long_key}).header("X-RateLimit-Remaining") == "4"
    assert n.get("/long", {"X-Key": long_key}).header("X-RateLimit-Remaining") == "3"
    digest = hashlib.sha1(long_key.encode()).hexdigest()
    assert redis.cmd("SELECT", "0") == "OK"
    c = __import__("conftest").Resp(redis.port)
    c.call("SELECT", "3")
    assert c.call("EXISTS", "app:p:#sha1:" + digest) == 1
    exact = "k" * 128  # at the limit: kept as is
    n.get("/long", {"X-Key": exact})
    assert c.call("EXISTS", "app:p:" + exact) == 1
    assert n.get("/bin").status == 200
    assert c.call("EXISTS", b"app:p:\x7f\x00\x00\x01") == 1
    assert c.call("DBSIZE") == 3
    c.close()
    assert redis.cmd("DBSIZE") == 0


# --- internal redirects --------------------------------------------------------------------

def test_internal_redirects_never_charge_twice(redis, nginx_factory, workdir):
    root = workdir / "www"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    (root / "sorry.html").write_text("slow down\n")
    not_found = free_port()  # an upstream that answers 404 to everything
    n = nginx_factory(server(f"""
        root {root};
        ratelimit $remote_addr policy=p;
        location / {{ index index.html; }}
        location /try {{ try_files /nope /index.html; }}
        location /err {{
            error_page 404 = /index.html;
            proxy_intercept_errors on;
            proxy_pass http://127.0.0.1:{not_found};
        }}
        location /named {{ try_files /nope @fallback; }}
        location /err-named {{
            error_page 404 = @fallback;
            proxy_intercept_errors on;
            proxy_pass http://127.0.0.1:{not_found};
        }}
        location @fallback {{ {BACKEND} }}
        location /gone {{ error_page 429 /sorry.html; }}
        location = /sorry.html {{ internal; }}
    }}
    server {{
        listen 127.0.0.1:{not_found};
        location / {{ return 404; }}
    """, "ratelimit_policy p rate=1r/h burst=6;", redis))
    seen = []
    for path in ("/", "/try", "/err", "/named", "/err-named", "/"):
        r = n.get(path)
        seen.append((path, r.status, r.header("X-RateLimit-Remaining")))
    # One token each, whichever way the request went inside nginx.
    assert seen == [("/", 200, "5"), ("/try", 200, "4"), ("/err", 200, "3"),
                    ("/named", 200, "2"), ("/err-named", 200, "1"), ("/", 200, "0")]
    sorry = n.get("/gone")
    assert (sorry.status, sorry.body, sorry.header("Retry-After")) == (429, b"slow down\n", "3600")
    level = int(redis.cmd("GET", "rl:p:127.0.0.1").split()[1])  # "v2 <level> <period> <stamp>"
    assert level < 3600000  # less than one whole token: six taken, no more, no fewer


# --- configuration errors ------------------------------------------------------------------

BAD_CONFIGS = [
    ("ratelimit_policy p rate=abc;", ["ratelimit_policy", "rate=abc"]),
    ("ratelimit_policy p rate=10r/s burst=0;", ["ratelimit_policy", "burst=0"]),
    ("ratelimit_policy p rate=10r/s foo=1;", ["ratelimit_policy", "foo=1"]),
    ("ratelimit_policy p rate=10r/s; ratelimit_policy p rate=1r/s;", ["ratelimit_policy", "duplicate", '"p"']),
    ("ratelimit_policy bad.name rate=1r/s;", ["ratelimit_policy", "bad.name"]),
    ("ratelimit_policy p burst=3;", ["ratelimit_policy", "rate"]),
    ("server { location / { ratelimit $remote_addr policy=nope; } }", ["ratelimit", '"nope"']),
    ("ratelimit_policy p rate=1r/s; server { location / { ratelimit $remote_addr policy=$arg_p; } }",
     ["ratelimit_default_policy"]),
    ("ratelimit_default_policy ghost;", ["ratelimit_default_policy", '"ghost"']),
    ("ratelimit_policy p rate=1r/s; server { location / { ratelimit $a policy=p cost=-1; } }",
     ["ratelimit", "cost=-1"]),
    ("ratelimit_policy p rate=1r/s; server { location / { ratelimit $a; } }", ['"ratelimit"']),
    ("ratelimit_status 600;", ["ratelimit_status", "600"]),
    ("ratelimit_status 399;", ["ratelimit_status", "399"]),
    ("ratelimit_headers sometimes;", ["ratelimit_headers", "sometimes"]),
    ("ratelimit_log_level loud;", ["ratelimit_log_level", "loud"]),
    ("ratelimit_failure_mode maybe;", ["ratelimit_failure_mode", "maybe"]),
    ("ratelimit_failure_mode open nodes=3;", ["ratelimit_failure_mode", "nodes=3"]),
    ("ratelimit_zone 1k;", ["ratelimit_zone", "1k"]),
    ("ratelimit_redis 127.0.0.1:99999;", ["ratelimit_redis", "127.0.0.1:99999"]),
    ("ratelimit_redis 127.0.0.1:6379 timeout=abc;", ["ratelimit_redis", "timeout=abc"]),
    ("ratelimit_redis 127.0.0.1:6379 connect_timeout=-1s;", ["ratelimit_redis", "connect_timeout=-1s"]),
    ("ratelimit_redis 127.0.0.1:6379 color=blue;", ["ratelimit_redis", "unknown option \"color=...\""]),
    ("ratelimit_redis 127.0.0.1:6379 db=x;", ["ratelimit_redis", "db=x"]),
    ("ratelimit_redis 127.0.0.1:6379; ratelimit_redis 127.0.0.1:6380;", ["ratelimit_redis", "duplicate"]),
    ("ratelimit_redis 127.0.0.1:6379 mode=sentinel;", ["ratelimit_redis", "master"]),
    ("ratelimit_redis 127.0.0.1:6379 mode=cluster db=2;", ["ratelimit_redis", '"db=2"']),
    ('ratelimit_redis 127.0.0.1:6379 mode=cluster "prefix={rl}:";',
     ["ratelimit_redis", '"prefix={rl}:"', "hash slot"]),
    ("ratelimit_redis unix:/tmp/r.sock mode=cluster;", ["ratelimit_redis", "unix:/tmp/r.sock"]),
    ("ratelimit_redis 127.0.0.1:26379 mode=sentinel master=m ssl;",
     ["ratelimit_redis", '"ssl_trusted_certificate="']),
    ("ratelimit_redis 127.0.0.1:26379 nowhere.invalid:26379 mode=sentinel master=m;",
     ["ratelimit_redis", "nowhere.invalid:26379"]),
    ("server { location /rl/ { ratelimit_api read; } }", ["ratelimit_api", '"read"']),
    ("server { location /rl/ { ratelimit_api; ratelimit_api; } }", ["ratelimit_api", "duplicate"]),
    ("server { location ~ ^/rl/ { ratelimit_api; } }", ["ratelimit_api", "prefix location"]),
    ("server { ratelimit_api; }", ["ratelimit_api", "not allowed"]),
]


@pytest.mark.parametrize("conf,words", BAD_CONFIGS, ids=[c for c, _ in BAD_CONFIGS])
def test_bad_configuration_fails_nginx_t_naming_directive_and_value(workdir, conf, words):
    n = Nginx(workdir / "bad", conf)
    t = n.test_config()
    assert t.returncode != 0
    assert "[emerg]" in t.stderr
    for w in words:
        assert w in t.stderr, t.stderr
