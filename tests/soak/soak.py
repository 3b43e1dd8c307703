#!/usr/bin/env python3
"""Soak test (make soak; not part of make test): mixed traffic against a real nginx and
Redis for SOAK_SECONDS (default 600), with Redis restarts and nginx reloads along the way.
Reports requests, outcomes, errors and worker RSS at start and end; exits non-zero on any
transport error, unexpected status, or bad line in the nginx error log."""

import collections
import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from conftest import Nginx, RedisServer, http_request  # noqa: E402

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
THREADS = int(os.environ.get("SOAK_THREADS", "12"))
EXPECTED = {200, 429, 503}


def http_conf(redis_port):
    return f"""
    ratelimit_redis 127.0.0.1:{redis_port} timeout=150ms;
    ratelimit_policy anonymous rate=60r/m burst=70;
    ratelimit_policy user rate=100r/m burst=120;
    ratelimit_policy admin rate=1000r/m burst=1200;
    ratelimit_policy global rate=5000r/s burst=5000;
    map $http_x_api_key $role {{ "" anonymous; ~^admin- admin; default user; }}
    map $http_x_api_key $identity {{ "" $binary_remote_addr; default $http_x_api_key; }}
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $identity policy=$role cost=$http_x_cost;
            ratelimit global policy=global;
            ratelimit_default_policy anonymous;
            ratelimit_failure_mode local nodes=2;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }}
        location /closed {{
            ratelimit $identity policy=$role;
            ratelimit_default_policy anonymous;
            ratelimit_failure_mode closed;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }}
    }}
"""


def worker_rss_kib(nginx):
    total = 0
    for pid in nginx.worker_pids():
        try:
            status = Path("/proc/%d/status" % pid).read_text()
            total += int(status.split("VmRSS:")[1].split()[0])
        except (OSError, IndexError):
            pass
    return total


class Traffic:
    def __init__(self, port):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.outcomes = collections.Counter()
        self.errors = collections.Counter()

    def one(self, rnd):
        kind = rnd.random()
        headers = {}
        if kind < 0.5:
            headers["X-Api-Key"] = "user-%d" % rnd.randrange(200)
        elif kind < 0.6:
            headers["X-Api-Key"] = "admin-%d" % rnd.randrange(5)
        elif kind < 0.7:
            headers["X-Api-Key"] = "k" * rnd.randrange(100, 3000)  # long keys
        if rnd.random() < 0.1:
            headers["X-Cost"] = rnd.choice(["0", "2", "5", "junk", "-1", "99999999999"])
        path = "/closed" if rnd.random() < 0.1 else "/"
        if rnd.random() < 0.02:
            # A client that goes away before the answer.
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: aborter\r\n\r\n")
            s.close()
            return "aborted"
        r = http_request(self.port, path, headers, timeout=10)
        return r.status

    def run(self, seed):
        rnd = random.Random(seed)
        while not self.stop.is_set():
            try:
                outcome = self.one(rnd)
                with self.lock:
                    self.outcomes[outcome] += 1
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                with self.lock:
                    self.errors[type(e).__name__] += 1


def main():
    with tempfile.TemporaryDirectory(prefix="rl-soak-") as d:
        os.chmod(d, 0o755)
        redis = RedisServer(Path(d) / "redis")
        nginx = Nginx(Path(d) / "nginx", http_conf(redis.port), workers=2).start()

        time.sleep(1)
        rss_start = worker_rss_kib(nginx)
        traffic = Traffic(nginx.port)
        threads = [threading.Thread(target=traffic.run, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()

        start = time.monotonic()
        restarts = reloads = 0
        next_restart, next_reload = 30, 20
        while time.monotonic() - start < SECONDS:
            time.sleep(1)
            elapsed = time.monotonic() - start
            if elapsed >= next_restart:
                redis.restart()
                restarts += 1
                next_restart += 30
            if elapsed >= next_reload:
                nginx.reload()
                reloads += 1
                next_reload += 20
            if int(elapsed) % 60 == 0:
                print("  %4ds  requests %d  errors %d  rss %d KiB" % (
                    elapsed, sum(traffic.outcomes.values()), sum(traffic.errors.values()),
                    worker_rss_kib(nginx)), flush=True)

        traffic.stop.set()
        for t in threads:
            t.join()
        time.sleep(2)  # let old workers exit
        rss_end = worker_rss_kib(nginx)
        bad = nginx.bad_log_lines()
        nginx.stop()
        redis.stop()

    total = sum(traffic.outcomes.values())
    unexpected = {k: v for k, v in traffic.outcomes.items() if k not in EXPECTED and k != "aborted"}
    print("soak: %ds, %d requests (%.0f/s), %d Redis restarts, %d reloads" % (
        SECONDS, total, total / SECONDS, restarts, reloads))
    print("outcomes:", dict(traffic.outcomes))
    print("errors:", dict(traffic.errors) or "none")
    print("worker RSS: %d KiB at start, %d KiB at end" % (rss_start, rss_end))
    for line in bad[:20]:
        print("bad log line:", line)
    ok = not traffic.errors and not unexpected and not bad and total > 0
    print("soak:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
