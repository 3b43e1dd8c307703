"""The module end to end: nginx -> C++ core -> Redis, with exact header values."""

import re
import select
import signal
import socket
import subprocess
import time

from conftest import Resp, wait_for


def redis_http(redis, locations, extra=""):
    return f"""
    ratelimit_redis 127.0.0.1:{redis.port} timeout=2s;
    {extra}
    server {{
        listen 127.0.0.1:@PORT@;
        {locations}
    }}
"""


def test_basic_limit_exact_headers(redis, nginx_factory):
    # 3 tokens refilled at 3 per hour: one token every 1200 s.
    n = nginx_factory(redis_http(redis, """
        location / { ratelimit $remote_addr policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    """, "ratelimit_policy p rate=3r/h;"))

    seen = []
    for _ in range(3):
        r = n.get("/")
        seen.append((r.status, r.header("X-RateLimit-Limit"), r.header("X-RateLimit-Remaining"),
                     r.header("X-RateLimit-Reset"), r.header("Retry-After")))
    assert seen == [(200, "3", "2", "1200", None),
                    (200, "3", "1", "2400", None),
                    (200, "3", "0", "3600", None)]

    r = n.get("/")
    assert r.status == 429
    assert r.header("X-RateLimit-Remaining") == "0"
    assert r.header("X-RateLimit-Limit") == "3"
    assert r.header("Retry-After") == "1200"
    assert "rejected by policy \"p\"" in n.log()
    # The bucket lives in Redis under <prefix><policy>:<key>.
    assert redis.cmd("EXISTS", "rl:p:127.0.0.1") == 1


def test_headers_on_proxied_upstream_response(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location /api/ { ratelimit $remote_addr policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    """, "ratelimit_policy p rate=10r/m burst=5;"))
    r = n.get("/api/x")
    assert r.status == 200
    assert r.header("X-Backend") == "yes"
    assert r.body == b"backend /api/x\n"
    assert r.header("X-RateLimit-Limit") == "5"
    assert r.header("X-RateLimit-Remaining") == "4"


def test_unlimited_location_has_no_headers(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location /free { proxy_pass http://127.0.0.1:@BACKEND@; }
    """, "ratelimit_policy p rate=10r/m;"))
    r = n.get("/free")
    assert r.status == 200
    assert r.header("X-RateLimit-Limit") is None


def test_roles_through_a_map(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location / {
            ratelimit $rl_identity policy=$rl_role;
            ratelimit_default_policy anonymous;
            add_header X-Policy $ratelimit_policy always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }
    """, """
        ratelimit_policy anonymous rate=60r/m burst=70;
        ratelimit_policy user rate=100r/m burst=120;
        ratelimit_policy admin rate=1000r/m burst=1200;
        map $http_x_api_key $rl_role {
            ""         anonymous;
            ~^admin-   admin;
            ~^bogus-   nosuchpolicy;
            default    user;
        }
        map $http_x_api_key $rl_identity {
            ""       $binary_remote_addr;
            default  $http_x_api_key;
        }
    """))
    anon = n.get("/")
    user = n.get("/", {"X-Api-Key": "alice"})
    admin = n.get("/", {"X-Api-Key": "admin-root"})
    bogus = n.get("/", {"X-Api-Key": "bogus-1"})
    assert (anon.status, anon.header("X-RateLimit-Limit"), anon.header("X-Policy")) == \
        (200, "70", "anonymous")
    assert (user.header("X-RateLimit-Limit"), user.header("X-RateLimit-Remaining"),
            user.header("X-Policy")) == ("120", "119", "user")
    assert (admin.header("X-RateLimit-Limit"), admin.header("X-Policy")) == ("1200", "admin")
    # An unknown role name selects the default policy.
    assert (bogus.header("X-RateLimit-Limit"), bogus.header("X-Policy")) == ("70", "anonymous")
    assert redis.cmd("EXISTS", "rl:user:alice") == 1
    assert redis.cmd("EXISTS", "rl:admin:admin-root") == 1


def test_two_nginx_instances_share_one_bucket_exactly(redis, nginx_factory):
    conf = redis_http(redis, """
        location / { ratelimit $http_x_api_key policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    """, "ratelimit_policy p rate=1r/h burst=10;")
    a = nginx_factory(conf, workers=2)
    b = nginx_factory(conf, workers=2)
    statuses = []
    remaining = []
    for i in range(30):
        r = (a if i % 2 == 0 else b).get("/", {"X-Api-Key": "shared"})
        statuses.append(r.status)
        if r.status == 200:
            remaining.append(int(r.header("X-RateLimit-Remaining")))
    assert statuses.count(200) == 10
    assert statuses[:10] == [200] * 10 and set(statuses[10:]) == {429}
    assert remaining == list(range(9, -1, -1))


def test_empty_key_skips_the_limit(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location / {
            ratelimit $http_x_api_key policy=p;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }
    """, "ratelimit_policy p rate=1r/h burst=1;"))
    for _ in range(3):
        r = n.get("/")
        assert r.status == 200
        assert r.header("X-Status") == "SKIPPED"
        assert r.header("X-RateLimit-Limit") is None
    assert n.get("/", {"X-Api-Key": "k"}).header("X-Status") == "PASSED"
    assert n.get("/", {"X-Api-Key": "k"}).header("X-Status") == "REJECTED"


def test_script_flush_falls_back_to_eval(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location / { ratelimit $remote_addr policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    """, "ratelimit_policy p rate=1r/h burst=100;"))
    assert n.get("/").header("X-RateLimit-Remaining") == "99"
    redis.cmd("SCRIPT", "FLUSH")
    r = n.get("/")
    assert r.status == 200
    assert r.header("X-RateLimit-Remaining") == "98"


def test_client_that_disconnects_while_waiting_for_redis(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location / { ratelimit $remote_addr policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    """, "ratelimit_policy p rate=1r/h burst=100;"))
    assert n.get("/").status == 200  # connected, script cached

    pauser = Resp(redis.port)
    pauser.call("CLIENT", "PAUSE", "1000", "ALL")
    clients = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", n.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(s)
    time.sleep(0.3)
    for s in clients:
        s.close()
    pauser.close()

    # The late replies arrive for requests that are gone; nginx must simply go on.
    access_log = n.dir / "logs" / "access.log"
    assert wait_for(lambda: access_log.read_text().count(" 499 ") == 5, 5)
    time.sleep(1.0)
    r = n.get("/")
    assert r.status == 200
    # 100 - 1 - 5 - 1: aborted requests still spent their token once Redis ran the script
    # (documented), and nothing was charged twice.
    assert int(r.header("X-RateLimit-Remaining")) == 93
    assert n.bad_log_lines() == []


def test_unix_socket_and_password(redis, nginx_factory):
    redis.cmd("CONFIG", "SET", "requirepass", "s3cret")
    conf = f"""
    ratelimit_redis unix:{redis.unix_path} password=s3cret;
    ratelimit_policy p rate=1r/h burst=4;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $remote_addr policy=p;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }}
    }}
"""
    n = nginx_factory(conf)
    r = n.get("/")
    assert (r.status, r.header("X-Status"), r.header("X-RateLimit-Remaining")) == \
        (200, "PASSED", "3")
    # A wrong password is a failure (open by default), and the log says why.
    wrong = nginx_factory(conf.replace("s3cret", "wrong"))
    r = wrong.get("/")
    assert (r.status, r.header("X-Status")) == (200, "FAILED_OPEN")
    assert wait_for(lambda: "WRONGPASS" in wrong.log() or "invalid password" in wrong.log(), 3)


def strace_redis_socket(n, redis, sockaddr_match):
    """Attaches strace to the worker, makes it reconnect to Redis, and returns the socket
    calls made on the new Redis connection's descriptor (connect, setsockopt)."""
    out = n.dir / "strace.txt"
    worker = n.worker_pids()[0]
    tracer = subprocess.Popen(["strace", "-e", "trace=connect,setsockopt,close",
                               "-o", str(out), "-p", str(worker)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([tracer.stderr], [], [], 10)
        assert ready and b"attached" in tracer.stderr.readline(), "strace did not attach"
        redis.cmd("CLIENT", "KILL", "TYPE", "normal")  # the worker's connection, not ours
        assert wait_for(lambda: n.get("/").header("X-Status") == "PASSED", 5, 0.1)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
    calls = out.read_text().splitlines()
    fds = [re.match(r"(?:\d+\s+)?connect\((\d+),", c).group(1) for c in calls
           if c.lstrip("0123456789 ").startswith("connect(") and sockaddr_match in c]
    assert fds, "no reconnect to Redis seen:\n" + "\n".join(calls)
    fd = fds[-1]
    return [c.lstrip("0123456789 ") for c in calls
            if re.search(r"(connect|setsockopt)\(%s," % fd, c)]


def test_tcp_nodelay_on_the_redis_connection(redis, nginx_factory):
    n = nginx_factory(redis_http(redis, """
        location / {
            ratelimit $remote_addr policy=p;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }
    """, "ratelimit_policy p rate=1r/h burst=100;"))
    assert n.get("/").header("X-Status") == "PASSED"
    calls = strace_redis_socket(n, redis, "htons(%d)" % redis.port)
    assert any("SOL_TCP, TCP_NODELAY, [1]" in c for c in calls), calls


def test_no_tcp_nodelay_on_a_unix_socket(redis, nginx_factory):
    n = nginx_factory(f"""
    ratelimit_redis unix:{redis.unix_path};
    ratelimit_policy p rate=1r/h burst=100;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $remote_addr policy=p;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }}
    }}
""")
    assert n.get("/").header("X-Status") == "PASSED"
    calls = strace_redis_socket(n, redis, str(redis.unix_path))
    assert not any("TCP_NODELAY" in c for c in calls), calls
    assert "setsockopt(TCP_NODELAY) failed" not in n.log()
