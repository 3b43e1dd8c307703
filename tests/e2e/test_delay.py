"""Shaping (delay=): limit_req's delay, exact across the fleet. A request that leaves fewer than
burst - delay tokens waits (burst - delay - tokens left) / rate, holding only a timer.

Waits are measured from the client: each response's arrival relative to the fastest response
of its round, so a busy machine's scheduling noise (the same for every request) cancels."""

import json
import re
import signal
import socket
import threading
import time

import pytest

from conftest import wait_for
from test_valgrind import H2

TOLERANCE_MS = 50
EXAMPLE = "ratelimit_policy shaped rate=5r/s burst=12 delay=8;"


def conf(redis, policies=EXAMPLE, limits="ratelimit $http_x_key policy=shaped;", extra="",
         listen="listen 127.0.0.1:@PORT@;", content="proxy_pass http://127.0.0.1:@BACKEND@;"):
    redis_line = f"ratelimit_redis 127.0.0.1:{redis.port} timeout=2s;" if redis else ""
    return f"""
    {redis_line}
    {policies}
    log_format delay '$status $ratelimit_status $ratelimit_delay';
    server {{
        {listen}
        access_log logs/delay.log delay;
        {extra}
        location / {{
            {limits}
            add_header X-Status $ratelimit_status always;
            add_header X-Delay $ratelimit_delay always;
            {content}
        }}
        location /rl/ {{ ratelimit_api; }}
    }}
"""


def start(nginx_factory, http_conf, **kw):
    return nginx_factory(http_conf, **kw)


class Reply:
    def __init__(self, raw, at, sent):
        head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1]) if head and head[0] else 0
        self.headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            self.headers.setdefault(k.strip().lower(), v.strip())
        self.at = at  # seconds since the round started, when the first byte arrived
        self.latency_ms = (at - sent) * 1000  # since this request was sent

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<%s %s %s at %.0fms>" % (self.status, self.header("X-Status"),
                                         self.header("X-Delay"), self.at * 1000)


def fire(schedule, key="k", path="/"):
    """Sends one request per (port, offset in seconds) of `schedule`, each from its own thread
    and connection, all released together; returns the replies in schedule order."""
    barrier = threading.Barrier(len(schedule) + 1)
    replies = [None] * len(schedule)
    t0 = [0.0]

    def one(i, port, offset):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        barrier.wait()
        delay = t0[0] + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic() - t0[0]
        s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nX-Key: %s\r\nConnection: close\r\n\r\n"
                  % (path.encode(), key.encode()))
        raw = s.recv(65536)
        at = time.monotonic() - t0[0]
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
        s.close()
        replies[i] = Reply(raw, at, sent)

    threads = [threading.Thread(target=one, args=(i, port, offset))
               for i, (port, offset) in enumerate(schedule)]
    for t in threads:
        t.start()
    t0[0] = time.monotonic()
    barrier.wait()
    for t in threads:
        t.join(30)
    return replies


def measured(one_round, attempts=3):
    """Runs a timed round, `one_round(key)` (each with a key of its own: a full bucket), until
    its assertions hold, at most `attempts` times; returns (its result, rounds run). A machine
    shared with other work stalls nginx or the client past the tolerance now and then; a wrong
    wait fails every round."""
    for attempt in range(attempts):
        try:
            return one_round("k%d" % attempt), attempt + 1
        except AssertionError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def relative_ms(replies):
    """Each reply's arrival in ms after the fastest reply's."""
    first = min(r.at for r in replies)
    return [(r.at - first) * 1000 for r in replies]


def assert_at_once(replies, tolerance=150):
    """Every reply came with the fastest one, or as soon as its (late) thread sent it."""
    for r, t in zip(replies, relative_ms(replies)):
        assert min(t, r.latency_ms) <= tolerance, (r, replies)


def assert_example(replies, tolerance=TOLERANCE_MS):
    """rate=5r/s burst=12 delay=8, 13 at once: 8 at once, 4 waiting 200/400/600/800 ms, 1 out."""
    statuses = sorted((r.status, r.header("X-Status")) for r in replies)
    assert statuses == [(200, "DELAYED")] * 4 + [(200, "PASSED")] * 8 + [(429, "REJECTED")], \
        replies
    # Answered at once: with the fastest answer, or (a thread the machine let send late) as
    # soon as it was sent.
    assert_at_once([r for r in replies if r.header("X-Status") != "DELAYED"], tolerance)
    rel = relative_ms(replies)
    # The delayed ones end 200, 400, 600, 800 ms after the fastest answer: each waits for its
    # turn counted from the first decision, however late its thread sent it.
    waited = sorted(t for r, t in zip(replies, rel) if r.header("X-Status") == "DELAYED")
    for got, expected in zip(waited, (200, 400, 600, 800)):
        assert abs(got - expected) <= tolerance, (waited, replies)
    # What the module computed ($ratelimit_delay): less what refilled while they arrived.
    delays = sorted(int(r.header("X-Delay")) for r in replies if r.status == 200)
    assert delays[:8] == [0] * 8
    for got, expected in zip(delays[8:], (200, 400, 600, 800)):
        assert expected - 2 * tolerance <= got <= expected, delays
    return waited


# --- the example ---------------------------------------------------------------------------

def test_the_limit_req_example_from_13_clients(redis, nginx_factory):
    n = start(nginx_factory, conf(redis))
    waited, rounds = measured(lambda key: assert_example(fire([(n.port, 0)] * 13, key)))
    print("measured waits (ms, expected 200/400/600/800):", [round(w) for w in waited],
          "in round", rounds)
    log = (n.dir / "logs" / "delay.log").read_text().split("\n")
    assert sum(line.startswith("200 DELAYED ") for line in log) == 4 * rounds
    # Delays are logged one level below rejections (error -> warn), as limit_req does.
    assert len(re.findall(r"\[warn\].*ratelimit: delaying request \d+ms by policy \"shaped\"",
                          n.log())) == 4 * rounds
    assert len(re.findall(r"\[error\].*ratelimit: rejected by policy", n.log())) == rounds


def test_delayed_response_headers_are_those_of_a_passed_one(redis, nginx_factory):
    # At 1r/s the second request waits unless a second passed between the two.
    n = start(nginx_factory, conf(redis, "ratelimit_policy p rate=1r/s burst=2 delay=1;",
                                  "ratelimit $http_x_key policy=p;"))
    first = n.get("/", {"X-Key": "h"})
    second = n.get("/", {"X-Key": "h"})
    assert first.header("X-Status") == "PASSED"
    assert second.header("X-Status") == "DELAYED" and 1 <= int(second.header("X-Delay")) <= 1000
    for r in (first, second):
        assert r.status == 200 and r.header("X-Backend") == "yes"
        assert r.header("X-RateLimit-Limit") == "2" and r.header("Retry-After") is None
    assert second.header("X-RateLimit-Remaining") == "0"


def test_local_mode_shapes_the_same_way(nginx_factory):
    n = start(nginx_factory, conf(None))
    measured(lambda key: assert_example(fire([(n.port, 0)] * 13, key)))


def test_delay_on_a_ratelimit_line_overrides_the_policy(redis, nginx_factory):
    n = start(nginx_factory, conf(redis, "ratelimit_policy shaped rate=5r/s burst=12;",
                                  "ratelimit $http_x_key policy=shaped delay=8;"))
    measured(lambda key: assert_example(fire([(n.port, 0)] * 13, key)))


def test_same_shaping_as_limit_req_with_burst_and_delay_one_higher(nginx_factory):
    # The README's migration: limit_req burst=12 delay=8 is burst=13 delay=9 here. 14 at once to
    # each, side by side: 9 at once, 4 waiting 200..800 ms, 1 rejected, the same statuses.
    http_conf = """
    limit_req_zone $http_x_key zone=z:1m rate=5r/s;
    limit_req_status 429;
    ratelimit_policy p rate=5r/s burst=13 delay=9;
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            limit_req zone=z burst=12 delay=8;
            add_header X-Status $limit_req_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }
        location /here {
            ratelimit $http_x_key policy=p;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }
    }
"""
    n = nginx_factory(http_conf)

    def shaped(path, key):
        """(status, $..._status, ms after the fastest answer) of 14 at once, sorted."""
        replies = fire([(n.port, 0)] * 14, key, path)
        return sorted(zip([r.status for r in replies], [r.header("X-Status") for r in replies],
                          relative_ms(replies)))

    def one_round(key):
        theirs, ours = shaped("/", key), shaped("/here", key)
        assert [o[:2] for o in theirs] == [o[:2] for o in ours] == \
            [(200, "DELAYED")] * 4 + [(200, "PASSED")] * 9 + [(429, "REJECTED")], (theirs, ours)
        for side in (theirs, ours):
            assert max(t for _, name, t in side if name != "DELAYED") <= TOLERANCE_MS, side
            waited = sorted(t for _, name, t in side if name == "DELAYED")
            for got, want in zip(waited, (200, 400, 600, 800)):
                assert abs(got - want) <= TOLERANCE_MS, (theirs, ours)

    measured(one_round)


# --- the fleet -----------------------------------------------------------------------------

def test_two_instances_sharing_redis_interleave_their_waits(redis, nginx_factory):
    # Requests alternate between the instances, 50 ms apart: request k (1..12) leaves
    # 12 - k tokens (plus what refilled since the first) and, past delay=2, completes
    # (k - 2) x 200 ms after the first (the 50 ms steps refill what they wait less); so the
    # instances' waits interleave, each one longer than the one before, on either instance.
    policy = "ratelimit_policy shaped rate=5r/s burst=12 delay=2;"
    a = start(nginx_factory, conf(redis, policy))
    b = start(nginx_factory, conf(redis, policy))
    schedule = [((a if k % 2 else b).port, (k - 1) * 0.050) for k in range(1, 13)]
    expected = [(k - 1) * 50 if k <= 2 else (k - 2) * 200 for k in range(1, 13)]

    def one_round(key):
        replies = fire(schedule, key)
        assert [r.status for r in replies] == [200] * 12, replies
        rel = relative_ms(replies)
        for k, (got, want) in enumerate(zip(rel, expected), 1):
            assert abs(got - want) <= TOLERANCE_MS, (k, [round(t) for t in rel], expected)
        assert [r.header("X-Status") for r in replies] == ["PASSED"] * 2 + ["DELAYED"] * 10
        # The delayed ones complete in request order, alternating between the instances.
        order = sorted(range(2, 12), key=lambda i: rel[i])
        assert order == list(range(2, 12))
        return rel

    rel, _ = measured(one_round)
    print("two instances (ms after the first, expected):",
          [(("A" if k % 2 else "B"), round(t), e) for k, t, e in zip(range(1, 13), rel, expected)])


def test_several_limits_wait_for_the_longest(redis, nginx_factory):
    # a: 5r/s burst=12 delay=6 -> request k waits (k-6) x 200 ms; b: 1r/s burst=12 delay=9 ->
    # (k-9) x 1000 ms. 11 at once: 6 at once, then 200, 400, 600 (a), 1000, 2000 (b).
    policies = """ratelimit_policy a rate=5r/s burst=12 delay=6;
                  ratelimit_policy b rate=1r/s burst=12 delay=9;"""
    limits = "ratelimit $http_x_key policy=a; ratelimit $http_x_key policy=b;"
    n = start(nginx_factory, conf(redis, policies, limits))

    def one_round(key):
        replies = fire([(n.port, 0)] * 11, key)
        assert [r.status for r in replies] == [200] * 11, replies
        waited = sorted(relative_ms(replies))
        for got, want in zip(waited, [0] * 6 + [200, 400, 600, 1000, 2000]):
            assert abs(got - want) <= TOLERANCE_MS, [round(t) for t in waited]

    measured(one_round)


def test_a_rejection_by_any_limit_rejects_without_waiting(redis, nginx_factory):
    policies = """ratelimit_policy a rate=5r/s burst=12 delay=0;
                  ratelimit_policy one rate=1r/m burst=1;"""
    limits = "ratelimit $http_x_key policy=a; ratelimit $http_x_key policy=one;"
    n = start(nginx_factory, conf(redis, policies, limits))
    first = n.get("/", {"X-Key": "k"})
    assert first.header("X-Status") == "DELAYED" and 150 <= int(first.header("X-Delay")) <= 200
    started = time.monotonic()
    second = n.get("/", {"X-Key": "k"})
    assert second.status == 429 and second.header("X-Status") == "REJECTED"
    assert second.header("X-Delay") == "0" and time.monotonic() - started < 0.15


def test_failure_modes_local_shapes_open_does_not(redis, nginx_factory):
    n = start(nginx_factory, conf(redis, extra="ratelimit_failure_mode local;"))
    redis.stop()

    def one_round(key):
        replies = fire([(n.port, 0)] * 13, key)
        statuses = sorted((r.status, r.header("X-Status")) for r in replies)
        assert statuses == [(200, "LOCAL_PASSED")] * 12 + [(429, "LOCAL_REJECTED")]
        delays = sorted(int(r.header("X-Delay")) for r in replies if r.status == 200)
        assert delays[:8] == [0] * 8 and all(d > 100 for d in delays[8:]), delays
        rel = relative_ms(replies)
        waited = sorted(t for r, t in zip(replies, rel) if int(r.header("X-Delay")) > 0)
        for got, want in zip(waited, (200, 400, 600, 800)):
            assert abs(got - want) <= TOLERANCE_MS, waited

    measured(one_round)

    m = start(nginx_factory, conf(redis, extra="ratelimit_failure_mode open;"))
    replies = fire([(m.port, 0)] * 13)
    assert {(r.status, r.header("X-Status"), r.header("X-Delay")) for r in replies} == \
        {(200, "FAILED_OPEN", "0")}
    assert_at_once(replies)


# --- dry run, visibility -------------------------------------------------------------------

def test_dry_run_counts_and_logs_delays_but_passes_at_once(redis, nginx_factory):
    n = start(nginx_factory, conf(redis, extra="ratelimit_dry_run on;"))
    replies = fire([(n.port, 0)] * 13)
    statuses = sorted(r.header("X-Status") for r in replies)
    assert statuses == ["DELAYED_DRY_RUN"] * 4 + ["PASSED"] * 8 + ["REJECTED_DRY_RUN"]
    assert {r.status for r in replies} == {200}
    assert {r.header("X-Delay") for r in replies} == {"0"}
    assert_at_once(replies)
    assert len(re.findall(r"\[warn\].*delaying in dry run \(not waiting\) \d+ms by policy",
                          n.log())) == 4
    status = json.loads(n.get("/rl/status").body)
    counters = status["policies"][0]["counters"]
    assert counters["delayed_dry_run"] == 4 and counters["delayed"] == 0
    assert status["policies"][0]["waits"]["count"] == 0


def test_status_and_metrics_show_delays(redis, nginx_factory):
    n = start(nginx_factory, conf(redis))
    replies = fire([(n.port, 0)] * 13)
    # The counters and the histogram say what the replies said. (13 at once: 8 passed, 4 waited
    # 200..800 ms, 1 rejected; a thread the machine lets send late finds a token refilled, so
    # the split is taken from the replies, not assumed.)
    named = [r.header("X-Status") for r in replies]
    delays = [int(r.header("X-Delay")) for r in replies if r.header("X-Status") == "DELAYED"]
    assert named.count("PASSED") >= 8 and len(delays) >= 3, replies
    status = json.loads(n.get("/rl/status").body)
    policy = status["policies"][0]
    assert policy["delay"] == 8
    assert policy["counters"]["delayed"] == len(delays)
    assert policy["counters"]["passed"] == named.count("PASSED")
    assert policy["counters"]["rejected"] == named.count("REJECTED")
    waits = policy["waits"]
    assert waits["count"] == len(delays) and waits["sum_ms"] == sum(delays), (waits, delays)
    by_bound = {b["le_ms"]: b["count"] for b in waits["buckets"]}
    assert by_bound[250] == sum(d <= 250 for d in delays), (by_bound, delays)
    assert by_bound[500] == sum(250 < d <= 500 for d in delays), (by_bound, delays)
    assert by_bound[1000] == sum(500 < d <= 1000 for d in delays), (by_bound, delays)
    metrics = n.get("/rl/metrics").body.decode()
    lines = ['nginx_ratelimit_requests_total{policy="shaped",outcome="delayed"} %d' % len(delays),
             'nginx_ratelimit_delay_seconds_bucket{policy="shaped",le="0.25"} %d'
             % sum(d <= 250 for d in delays),
             'nginx_ratelimit_delay_seconds_bucket{policy="shaped",le="1"} %d' % len(delays),
             'nginx_ratelimit_delay_seconds_count{policy="shaped"} %d' % len(delays)]
    for line in lines:
        assert line in metrics, (line, metrics)


def test_log_level_of_delays_is_one_below_rejections(redis, nginx_factory):
    n = start(nginx_factory, conf(redis, extra="ratelimit_log_level notice;"))
    fire([(n.port, 0)] * 13)
    assert len(re.findall(r"\[info\].*delaying request", n.log())) == 4
    assert len(re.findall(r"\[notice\].*rejected by policy", n.log())) == 1


# --- a waiting request holds only a timer ---------------------------------------------------

def test_client_that_leaves_while_waiting_is_finalized_499(redis, nginx_factory):
    # 30r/m burst=3 delay=1: the 2nd request waits 2 s, the 3rd 4 s.
    n = start(nginx_factory, conf(redis, "ratelimit_policy p rate=30r/m burst=3 delay=1;",
                                  "ratelimit $http_x_key policy=p;"))
    workers = n.worker_pids()
    assert n.get("/", {"X-Key": "k"}).header("X-Status") == "PASSED"
    s = socket.create_connection(("127.0.0.1", n.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Key: k\r\n\r\n")
    time.sleep(0.2)
    s.close()
    log = n.dir / "logs" / "delay.log"
    assert wait_for(lambda: "499 DELAYED" in log.read_text(), 3), log.read_text()
    # Its tokens stay spent: the next request waits for the 3rd token's turn (4 s, less what
    # has refilled since the first; had they come back, 2 s at most), and waits it out.
    started = time.monotonic()
    r = n.get("/", {"X-Key": "k"})
    assert r.status == 200 and r.header("X-Status") == "DELAYED"
    waited = int(r.header("X-Delay"))
    assert 2500 <= waited <= 4000, waited
    assert time.monotonic() - started >= waited / 1000 - 0.1
    assert n.worker_pids() == workers


def decided(n):
    """All 13 of the example decided: 4 waiting and 1 rejected, as the error log says."""
    log = n.log()
    return log.count("delaying request") == 4 and log.count("rejected by policy") == 1


def test_quit_lets_waiting_requests_finish(redis, nginx_factory):
    # Served from a file: the backend server of this nginx stops listening at once.
    n = nginx_factory(conf(redis, content="root html;"), start=False)
    (n.dir / "html").mkdir()
    (n.dir / "html" / "index.html").write_text("static\n")
    n.start()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", fire([(n.port, 0)] * 13)))
    t.start()
    assert wait_for(lambda: decided(n), 5), n.log()
    n.proc.send_signal(signal.SIGQUIT)
    t.join(10)
    assert_example(result["r"], tolerance=2 * TOLERANCE_MS)  # one round only: nginx is gone
    n.proc.wait(10)
    assert n.proc.returncode == 0


def test_reload_does_not_disturb_waiting_requests(redis, nginx_factory):
    n = start(nginx_factory, conf(redis))
    old = n.worker_pids()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", fire([(n.port, 0)] * 13)))
    t.start()
    assert wait_for(lambda: decided(n), 5), n.log()
    n.reload()
    t.join(10)
    assert_example(result["r"], tolerance=2 * TOLERANCE_MS)  # one round only: a reload
    assert wait_for(lambda: n.worker_pids() and not set(n.worker_pids()) & set(old), 5)
    # The new workers share the bucket, still far from full: this one waits too.
    r = n.get("/", {"X-Key": "k"})
    assert r.status == 200 and r.header("X-Status") == "DELAYED"


def test_http2_streams_wait_independently_on_one_connection(redis, nginx_factory):
    n = start(nginx_factory, conf(redis, listen="listen 127.0.0.1:@PORT@ http2;"))

    def one_round(key):
        h2 = H2(n.port)
        started = time.monotonic()
        sids = [h2.request(key) for _ in range(13)]
        h2.wait(sids, timeout=10)
        h2.close()
        statuses = sorted(h2.status[sid] for sid in sids)
        assert statuses == ["200"] * 12 + ["429"], statuses
        times = sorted((h2.ended_at[sid] - started) * 1000 for sid in sids)
        rel = [t - times[0] for t in times]  # 8 passed and 1 rejected at once, then 4 waiting
        assert max(rel[:9]) <= TOLERANCE_MS, rel
        for got, want in zip(rel[9:], (200, 400, 600, 800)):
            assert abs(got - want) <= TOLERANCE_MS, [round(t) for t in rel]

    measured(one_round)


def test_http2_stream_reset_while_waiting(redis, nginx_factory):
    n = start(nginx_factory, conf(redis, "ratelimit_policy p rate=1r/s burst=4 delay=2;",
                                  "ratelimit $http_x_key policy=p;",
                                  listen="listen 127.0.0.1:@PORT@ http2;"))
    h2 = H2(n.port)
    at_once = [h2.request(), h2.request()]
    waiting = [h2.request(), h2.request()]  # 1000 and 2000 ms
    assert h2.wait(at_once) == ["200", "200"]
    # Reset once the stream waits on its timer, not while its Redis call is still out (that
    # is a 499 too, but without a decision: test_valgrind covers it).
    time.sleep(0.5)
    h2.reset(waiting[1])
    assert h2.wait([waiting[0]]) == ["200"]
    log = n.dir / "logs" / "delay.log"
    assert wait_for(lambda: "499 DELAYED" in log.read_text(), 3), log.read_text()
    time.sleep(1.2)  # past the reset stream's timer
    assert h2.wait([h2.request()]) == ["200"]
    h2.close()


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("policies,limits,message", [
    ("ratelimit_policy p rate=5r/s burst=12 delay=13;", "ratelimit $uri policy=p;",
     '"delay=13" is more than the burst 12 of policy "p"'),
    ("ratelimit_policy p rate=5r/s delay=-1;", "ratelimit $uri policy=p;",
     '"ratelimit_policy": invalid delay "delay=-1"'),
    ("ratelimit_policy p rate=5r/s;", "ratelimit $uri policy=p delay=x;",
     '"ratelimit": invalid delay "delay=x"'),
    ("ratelimit_policy p rate=5r/s burst=3;", "ratelimit $uri policy=p delay=4;",
     '"delay=4" is more than the burst 3 of policy "p"'),
])
def test_bad_delay_fails_nginx_t(redis, nginx_factory, policies, limits, message):
    n = nginx_factory(conf(redis, policies, limits), start=False)
    t = n.test_config()
    assert t.returncode != 0 and message in t.stderr, t.stderr


def test_long_waits_warn_at_nginx_t(redis, nginx_factory):
    n = nginx_factory(conf(redis, "ratelimit_policy p rate=1r/m burst=10 delay=2;",
                           "ratelimit $uri policy=p;"), start=False)
    t = n.test_config()
    assert t.returncode == 0, t.stderr
    assert re.search(r'\[warn\].*"delay=2" with policy "p" lets requests wait up to 480s',
                     t.stderr), t.stderr
    ok = nginx_factory(conf(redis), start=False).test_config()
    assert ok.returncode == 0 and "[warn]" not in ok.stderr, ok.stderr
