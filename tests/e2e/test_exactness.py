"""Exactness under concurrency: many clients on one key, several workers (and instances),
the number of passed requests stays within burst + rate x elapsed."""

import http.client
import os
import signal
import threading
import time

from conftest import Nginx, run_threads, wait_for


def hammer(ports, headers, threads=8, seconds=2.0, at_least=0):
    """Keep-alive clients spread over `ports` for `seconds`, and on until `at_least` answers
    came (a busy machine answers fewer per second; 60 s at most); returns (statuses, elapsed)
    where elapsed runs from before the first request was sent to after the last answer came."""
    statuses = []
    errors = []
    lock = threading.Lock()
    answered = [0]
    start = time.monotonic()
    stop_at = start + seconds

    def going():
        now = time.monotonic()
        return now < stop_at or (answered[0] < at_least and now < start + 60)

    def run(i):
        conn = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=10)
        mine = []
        try:
            while going():
                conn.request("GET", "/", headers=headers)
                r = conn.getresponse()
                r.read()
                mine.append(r.status)
                with lock:
                    answered[0] += 1
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            errors.append(repr(e))
        finally:
            conn.close()
            with lock:
                statuses.extend(mine)

    run_threads(run, threads)
    assert errors == []
    return statuses, time.monotonic() - start


LOCAL = """
    ratelimit_zone 1m;
    ratelimit_policy p rate=50r/s burst=10;
    server {
        listen 127.0.0.1:@PORT@;
        keepalive_requests 100000;
        location / { ratelimit $http_x_key policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    }
"""


def test_local_mode_workers_with_lagging_clocks_stay_exact(workdir):
    """Each worker has its own cached clock. With `timer_resolution 1s` it steps once a second,
    at a phase of its own: one worker is then up to a second behind the other. A bucket stamped
    by the worker ahead must not be stamped back by the one behind, or the next decision of
    the worker ahead credits the same second again (50 tokens here, each time)."""
    n = Nginx(workdir / "lag", LOCAL, workers=2, main_conf="timer_resolution 1s;")
    n.start()
    try:
        started = time.monotonic()
        assert wait_for(lambda: len(n.worker_pids()) == 2)
        # A worker respawned half a second later ticks half a second after the other.
        time.sleep(max(0.0, started + 0.5 - time.monotonic()))
        killed = n.worker_pids()[1]
        os.kill(killed, signal.SIGKILL)
        assert wait_for(lambda: len(n.worker_pids()) == 2 and killed not in n.worker_pids())
        time.sleep(0.2)
        statuses, elapsed = hammer([n.port], {"X-Key": "hot"}, threads=8, seconds=3.0)
    finally:
        n.stop()
    passed = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # Each worker's clock may lag real time by up to the resolution: one more second of rate.
    bound = 10 + 50 * (elapsed + 1.0)
    assert len(statuses) > 3 * bound, "not saturated: the test proves nothing"
    assert passed <= bound, (passed, bound, len(statuses))
    # And the bucket refills: each clock steps once a second, and a step refills at most the
    # burst (50 r/s for a second is 50 tokens, capped at 10), so at least a burst a second
    # (two workers ticking half a second apart give about two: 72-159 passed in 3 s).
    assert passed >= 10 + 10 * (elapsed - 1.0), (passed, bound, len(statuses))
    expected = "worker process %d exited on signal 9" % killed
    assert [line for line in n.bad_log_lines() if expected not in line] == []


def test_two_instances_two_workers_concurrent_clients_share_one_bucket_exactly(redis,
                                                                                nginx_factory):
    # The concurrent counterpart of test_basic's one-at-a-time test: 2 nginx x 2 workers,
    # 12 keep-alive clients on one key. At one token an hour, exactly `burst` pass.
    conf = f"""
    ratelimit_redis 127.0.0.1:{redis.port} timeout=2s;
    ratelimit_policy p rate=1r/h burst=50;
    server {{
        listen 127.0.0.1:@PORT@;
        keepalive_requests 100000;
        location / {{ ratelimit $http_x_api_key policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }}
    }}
"""
    a = nginx_factory(conf, workers=2)
    b = nginx_factory(conf, workers=2)
    statuses, _ = hammer([a.port, b.port], {"X-Api-Key": "shared"}, threads=12, seconds=2.0,
                         at_least=501)
    assert set(statuses) == {200, 429}
    assert len(statuses) > 500, "too few requests to prove anything"
    assert statuses.count(200) == 50
