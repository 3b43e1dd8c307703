"""Redis Cluster mode (`ratelimit_redis seeds... mode=cluster`) against a real 3-master,
3-replica cluster: configuration checks, exact limits over all slots, hash tags, resharding
under traffic, a replica promoted, a master lost, and the connection count per worker."""

import collections
import http.client
import json
import re
import subprocess
import threading
import time

import pytest

from cluster import RedisCluster, key_slot
from conftest import Nginx, Resp, free_port, wait_for

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"
TIMEOUTS = "connect_timeout=300ms timeout=1s"


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    c = RedisCluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture
def redis_cluster(shared_cluster):
    """The module's cluster, healthy and empty. Tests may reshard it or fail it over (they
    leave it healthy); tests that kill nodes use `doomed_cluster`."""
    shared_cluster.wait_healthy()
    shared_cluster.flush()
    return shared_cluster


@pytest.fixture
def doomed_cluster(workdir):
    c = RedisCluster(workdir / "cluster")
    yield c
    c.stop()


def conf(cluster, locations, policies="ratelimit_policy p rate=1r/h burst=3;",
         redis_args=TIMEOUTS, seeds=None, listen=""):
    return f"""
    ratelimit_redis {seeds or cluster.seeds} mode=cluster {redis_args};
    {policies}
    server {{
        listen 127.0.0.1:@PORT@ {listen};
        keepalive_requests 100000;
        {locations}
    }}
"""


def location(path, limits="ratelimit $http_x_key policy=p;", mode="closed"):
    return f"""
        location {path} {{
            {limits}
            ratelimit_failure_mode {mode};
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}"""


class Client:
    """One keep-alive HTTP connection to nginx."""

    def __init__(self, port, timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def get(self, path, key):
        self.conn.request("GET", path, headers={"X-Key": key})
        r = self.conn.getresponse()
        r.read()
        return r.status, r.getheader("X-Status"), r.getheader("X-RateLimit-Remaining")

    def close(self):
        self.conn.close()


def bucket(policy, key):
    return "rl:%s:%s" % (policy, key)


def keys_in(cluster, policy, count, where, name="k", tagged=False):
    """`count` keys whose bucket (in `policy`; for `tagged`, the bucket of the key "{k}")
    lies in a slot accepted by `where(slot)`."""
    out = []
    i = 0
    while len(out) < count:
        k = "%s%d" % (name, i)
        if where(key_slot(bucket(policy, "{%s}" % k if tagged else k))):
            out.append(k)
        i += 1
    return out


def on_master(cluster, master):
    ranges = cluster.slot_ranges()
    return lambda slot: cluster.slot_owner(slot, ranges).port == master.port


# --- configuration -------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    ("prefix={x}", ["ratelimit_redis", "{x}"]),
    ("prefix=app{x}:", ["ratelimit_redis", "app{x}:"]),
    ("db=1", ["ratelimit_redis", "db"]),
])
def test_nginx_t_refuses_what_cannot_work_in_a_cluster(workdir, args, words):
    seeds = "127.0.0.1:%d 127.0.0.1:%d" % (free_port(), free_port())
    n = Nginx(workdir / "bad", f'ratelimit_redis {seeds} mode=cluster "{args}";')
    t = n.test_config()
    assert t.returncode != 0
    for w in words:
        assert w in t.stderr, t.stderr
    if args == "db=1":
        assert re.search(r'db\W{0,3}1\b|"1"', t.stderr), t.stderr


@pytest.mark.parametrize("args", ["", "prefix=app: db=0", "timeout=50ms connect_timeout=1s"])
def test_nginx_t_accepts_cluster_mode(workdir, args):
    seeds = "127.0.0.1:%d 127.0.0.1:%d" % (free_port(), free_port())
    n = Nginx(workdir / "good", f"""
        ratelimit_redis {seeds} mode=cluster {args};
        ratelimit_policy p rate=1r/s;
        server {{ listen 127.0.0.1:@PORT@; location / {{ ratelimit $http_x_key policy=p; }} }}
    """)
    t = n.test_config()
    assert t.returncode == 0, t.stderr


# --- an ACL user -----------------------------------------------------------------------------

README_ACL = ("on >s3cret ~rl:* +evalsha +eval +ping +select +mget +psetex +get +del +time "
              "+cluster|slots +asking").split()


def test_acl_user_of_the_readme_on_every_node(redis_cluster, nginx_factory):
    """user=/password= go to every master; the README's ACL for cluster mode is enough."""
    c = redis_cluster
    for node in c.live():
        assert node.cmd("ACL", "SETUSER", "nginx", *README_ACL) == "OK"
    try:
        good = nginx_factory(conf(c, location("/"), redis_args=TIMEOUTS
                                  + " user=nginx password=s3cret"))
        client = Client(good.port)
        for m in c.masters():
            for k in keys_in(c, "p", 2, on_master(c, m), name="acl-%d-" % m.port):
                got = [client.get("/", k) for _ in range(4)]
                assert [g[:2] for g in got] == [(200, "PASSED")] * 3 + [(429, "REJECTED")], got
            users = re.findall(r"user=(\S+)", "\n".join(
                line for line in m.cmd("CLIENT", "LIST").decode().splitlines()
                if "cmd=client|list" not in line and "flags=N" in line))
            assert users == ["nginx"], (m.addr, users)
        # The NOSCRIPT path too (EVAL under the same ACL).
        for m in c.masters():
            m.cmd("SCRIPT", "FLUSH")
        assert client.get("/", "acl-after-flush")[:2] == (200, "PASSED")
        client.close()
        assert "NOPERM" not in good.log() and "s3cret" not in good.log()

        bad = nginx_factory(conf(c, location("/"), redis_args=TIMEOUTS
                                 + " user=nginx password=wrong"))
        assert bad.get("/", {"X-Key": "acl-bad"}).header("X-Status") == "FAILED_CLOSED"
        assert wait_for(lambda: "WRONGPASS" in bad.log(), 3), bad.log()[-1500:]
        assert "password=wrong" not in bad.log()
    finally:
        for node in c.live():
            node.cmd("ACL", "DELUSER", "nginx")


# --- exact limits over all slots -----------------------------------------------------------

def test_exact_limits_for_keys_spread_over_all_masters(redis_cluster, nginx_factory):
    c = redis_cluster
    n = nginx_factory(conf(c, location("/")))
    keys = ["user-%d" % i for i in range(60)]
    ranges = c.slot_ranges()
    any_node = c.masters()[0]
    owner = {}
    for k in keys:
        slot = any_node.cmd("CLUSTER", "KEYSLOT", bucket("p", k))
        assert slot == key_slot(bucket("p", k))
        owner[k] = c.slot_owner(slot, ranges).port
    masters = [m.port for m in c.masters()]
    assert set(owner.values()) == set(masters), "the keys must cover every master"

    client = Client(n.port)
    for k in keys:
        got = [client.get("/", k) for _ in range(5)]
        assert [s for s, _, _ in got] == [200, 200, 200, 429, 429], (k, got)
        assert [x for _, x, _ in got] == ["PASSED"] * 3 + ["REJECTED"] * 2, (k, got)
        assert [r for _, _, r in got[:3]] == ["2", "1", "0"], (k, got)
    client.close()

    # Every bucket lives on the master that serves its slot, and nowhere else.
    for m in c.masters():
        mine = [k for k in keys if owner[k] == m.port]
        assert m.cmd("DBSIZE") == len(mine), m.addr
        assert all(m.cmd("EXISTS", bucket("p", k)) == 1 for k in mine), m.addr


def test_exact_under_concurrency_from_two_nginx(redis_cluster, nginx_factory):
    """Two nginx of two workers each, four clients: one hot key per master passes exactly
    burst times."""
    c = redis_cluster
    cfg = conf(c, location("/"), "ratelimit_policy p rate=1r/h burst=40;")
    ports = [nginx_factory(cfg, workers=2).port, nginx_factory(cfg, workers=2).port]
    hot = [keys_in(c, "p", 1, on_master(c, m), name="hot-%d-" % m.port)[0] for m in c.masters()]
    traffic = Traffic(ports, hot, threads=4)
    try:  # until every hot key is rejected, however slow the machine
        assert wait_for(lambda: all(traffic.seen(k, 429) for k in hot), 60, 0.05)
        time.sleep(0.2)  # a few more rejections
    finally:
        results = traffic.finish()
    assert traffic.errors == []
    for k in hot:
        mine = [r for r in results if r[1] == k]
        assert {(r[2], r[3]) for r in mine} == {(200, "PASSED"), (429, "REJECTED")}, k
        assert len([r for r in mine if r[2] == 200]) == 40, k


# --- hash tags -----------------------------------------------------------------------------

TWO_POLICIES = """
    ratelimit_policy a rate=1r/h burst=2;
    ratelimit_policy b rate=1r/h burst=5;
"""


def scan(node, pattern):
    cursor, found = b"0", []
    while True:
        cursor, keys = node.cmd("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        found += keys
        if cursor == b"0":
            return found


def test_hash_tags_keep_one_identitys_limits_all_or_nothing(redis_cluster, nginx_factory):
    """Limits a (burst 2) and b (burst 5) on one request. A second nginx empties a behind the
    first one's back, so the first asks Redis (its memory of a says a token is left): the
    rejection must take nothing from b wherever one call covers both buckets."""
    c = redis_cluster
    locations = (
        location("/tagged", 'ratelimit "{$http_x_key}" policy=a; '
                            'ratelimit "{$http_x_key}" policy=b;')
        + location("/tagged-a", 'ratelimit "{$http_x_key}" policy=a;')
        + location("/tagged-b", 'ratelimit "{$http_x_key}" policy=b;')
        + location("/plain", "ratelimit $http_x_key policy=a; ratelimit $http_x_key policy=b;")
        + location("/plain-a", "ratelimit $http_x_key policy=a;")
        + location("/plain-b", "ratelimit $http_x_key policy=b;"))
    first = Client(nginx_factory(conf(c, locations, TWO_POLICIES)).port)
    second = Client(nginx_factory(conf(c, locations, TWO_POLICIES)).port)
    ranges = c.slot_ranges()

    def owner(policy, key):
        return c.slot_owner(key_slot(bucket(policy, key)), ranges)

    def b_left_after_a_runs_out(path, ident):
        assert first.get(path, ident) == (200, "PASSED", "1"), ident  # a: 1, b: 4
        assert second.get(path + "-a", ident) == (200, "PASSED", "0"), ident  # a: 0
        assert first.get(path, ident)[:2] == (429, "REJECTED"), ident
        status, xs, left = first.get(path + "-b", ident)
        assert (status, xs) == (200, "PASSED"), ident
        return left  # "3" when the rejection took nothing from b

    # One identity per master; both of its buckets share the slot of the tag.
    for m in c.masters():
        ident = keys_in(c, "a", 1, on_master(c, m), name="id-%d-" % m.port, tagged=True)[0]
        key = "{%s}" % ident
        slot = m.cmd("CLUSTER", "KEYSLOT", bucket("a", key))
        assert slot == m.cmd("CLUSTER", "KEYSLOT", bucket("b", key)) == key_slot(key)
        assert b_left_after_a_runs_out("/tagged", ident) == "3", ident
        assert m.cmd("EXISTS", bucket("a", key), bucket("b", key)) == 2

    # A key longer than 128 bytes is stored as a digest, but keeps its tag (and slot).
    long_key = "{long-id}" + "x" * 200
    assert b_left_after_a_runs_out("/plain", long_key) == "3"
    stored = scan(owner("a", "{long-id}"), "*{long-id}*")
    assert len(stored) == 2 and all(len(k) < 150 for k in stored), stored

    # Two slots of one master: Redis 7 takes one call for the node, so still all-or-nothing.
    same_node = next(k for k in ("node-%d" % i for i in range(10000))
                     if key_slot(bucket("a", k)) != key_slot(bucket("b", k))
                     and owner("a", k).port == owner("b", k).port)
    assert b_left_after_a_runs_out("/plain", same_node) == "3"

    # Two masters: decided separately, but a request still passes only when both pass.
    apart = next(k for k in ("apart-%d" % i for i in range(1000))
                 if owner("a", k).port != owner("b", k).port)
    assert b_left_after_a_runs_out("/plain", apart) in ("2", "3")
    first.close()
    second.close()


# --- resharding under traffic --------------------------------------------------------------

class Traffic:
    """Threads with keep-alive connections cycling over keys, recording every answer."""

    def __init__(self, ports, keys, path="/", threads=4):
        ports = ports if isinstance(ports, list) else [ports]
        self.keys = keys
        self.results = []  # (time answered, key, status, x-status, remaining, seconds taken)
        self.errors = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.tally = collections.Counter()  # (key, status) -> answers so far, live
        self.threads = [threading.Thread(target=self._run, args=(ports[i % len(ports)], path, i),
                                         daemon=True)
                        for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, port, path, i):
        client = Client(port)
        j = i
        mine = []
        try:
            while not self.stop.is_set():
                k = self.keys[j % len(self.keys)]
                j += len(self.threads)
                start = time.monotonic()
                status, xs, rem = client.get(path, k)
                end = time.monotonic()
                mine.append((end, k, status, xs, rem, end - start))
                with self.lock:
                    self.tally[(k, status)] += 1
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            self.errors.append(repr(e))
        finally:
            client.close()
            with self.lock:
                self.results.extend(mine)

    def seen(self, key, status=None):
        """Answers so far for `key` (with `status`, if given)."""
        with self.lock:
            return sum(n for (k, st), n in self.tally.items()
                       if k == key and status in (None, st))

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        return sorted(self.results)


def test_resharding_under_traffic_loses_no_decision(redis_cluster, nginx_factory):
    c = redis_cluster
    burst = 1000000  # every request passes; each takes exactly one token
    policies = (f"ratelimit_policy p rate=1r/h burst={burst};\n"
                f"    ratelimit_policy p2 rate=1r/h burst={burst};")
    # Two buckets in one slot: one script call with two keys (CROSSSLOT-free, TRYAGAIN-prone).
    tagged = location("/tagged", 'ratelimit "{$http_x_key}" policy=p; '
                                 'ratelimit "{$http_x_key}" policy=p2;')
    n = nginx_factory(conf(c, location("/") + tagged, policies), workers=2)
    before = c.slot_ranges()
    src = c.by_port(before[0][2])
    dst = next(m for m in c.masters() if m.port != src.port)
    # redis-cli takes the source's lowest slots first.
    moving = set(sorted(s for first, last, port, _ in before if port == src.port
                        for s in range(first, last + 1))[:300])
    moved_keys = keys_in(c, "p", 24, lambda s: s in moving, name="mv")
    other_keys = keys_in(c, "p", 12, lambda s: s not in moving, name="st")
    tags = keys_in(c, "p", 12, lambda s: s in moving, name="tg", tagged=True)
    keys = moved_keys + other_keys

    traffic = Traffic(n.port, keys)
    tagged_traffic = Traffic(n.port, tags, path="/tagged", threads=2)
    try:  # every key has its bucket before the slots move, however slow the machine
        assert wait_for(lambda: all(traffic.seen(k) for k in keys)
                        and all(tagged_traffic.seen(t) for t in tags), 30, 0.05)
        t0 = time.monotonic()
        c.cli("--cluster", "reshard", src.addr, "--cluster-from", src.node_id(),
              "--cluster-to", dst.node_id(), "--cluster-slots", "300", "--cluster-yes")
        t1 = time.monotonic()
        c.wait_healthy()
        time.sleep(1.0)
    finally:
        results = sorted(traffic.finish() + tagged_traffic.finish())
    assert traffic.errors == [] and tagged_traffic.errors == []

    after = c.slot_ranges()
    for k in moved_keys:
        assert c.slot_owner(key_slot(bucket("p", k)), after).port == dst.port, k
        assert dst.cmd("EXISTS", bucket("p", k)) == 1, k
    for t in tags:
        assert dst.cmd("EXISTS", bucket("p", "{%s}" % t), bucket("p2", "{%s}" % t)) == 2, t
    for group in (moved_keys, tags):
        during = [r for r in results if t0 <= r[0] <= t1 and r[1] in group]
        assert during, "no request on a moving key while the slots moved"

    bad = [r for r in results if r[2] != 200 or r[3] != "PASSED"]
    assert bad == [], "requests failed during the reshard: %r" % bad[:10]
    # Exactness: each key's answers saw burst-1, burst-2, ... each exactly once.
    for k in keys + tags:
        seen = sorted((int(r[4]) for r in results if r[1] == k), reverse=True)
        assert seen == list(range(burst - 1, burst - 1 - len(seen), -1)), \
            (k, [x for x in seen if seen.count(x) > 1][:5])
    assert len(results) > 200


# --- redirections and the API ----------------------------------------------------------

def asking(node, *args):
    """A command on `node` for a slot it imports (ASKING first, on the same connection)."""
    conn = Resp(node.port)
    try:
        assert conn.call("ASKING") == "OK"
        return conn.call(*args)
    finally:
        conn.close()


def test_ask_redirect_during_a_slot_migration(redis_cluster, nginx_factory):
    """One slot half-migrated by hand: a bucket still on the source is decided there, a new
    one goes to the target (ASK, then ASKING); when the slot is handed over, MOVED."""
    c = redis_cluster
    n = nginx_factory(conf(c, location("/")))
    ranges = c.slot_ranges()
    tag = keys_in(c, "p", 1, lambda s: True, name="ask", tagged=True)[0]
    old, new = "{%s}old" % tag, "{%s}new" % tag
    slot = key_slot(bucket("p", old))
    assert slot == key_slot(bucket("p", new))
    src = c.slot_owner(slot, ranges)
    dst = next(m for m in c.masters() if m.port != src.port)
    client = Client(n.port)
    assert [client.get("/", old)[2] for _ in range(2)] == ["2", "1"]

    assert dst.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id()) == "OK"
    assert src.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id()) == "OK"
    assert client.get("/", new) == (200, "PASSED", "2")  # created on the target
    assert client.get("/", old) == (200, "PASSED", "0")  # still on the source
    assert src.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 1
    assert asking(dst, "EXISTS", bucket("p", new)) == 1

    # Hand the slot over: the old bucket moves with it, tokens and all.
    assert src.cmd("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000,
                   "KEYS", bucket("p", old)) == "OK"
    for m in c.masters():
        m.cmd("CLUSTER", "SETSLOT", slot, "NODE", dst.node_id())
    assert client.get("/", new) == (200, "PASSED", "1")
    assert client.get("/", old)[:2] == (429, "REJECTED")
    assert dst.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 2
    assert client.get("/", new) == (200, "PASSED", "0")
    client.close()
    c.wait_healthy()


def test_api_reads_buckets_on_their_masters_and_lists_the_nodes(redis_cluster, nginx_factory):
    c = redis_cluster
    api = "location /rl/ { ratelimit_api write; }"
    n = nginx_factory(conf(c, location("/") + api))
    client = Client(n.port)
    keys = {m.port: keys_in(c, "p", 2, on_master(c, m), name="api-%d-" % m.port)
            for m in c.masters()}
    for port, ks in keys.items():
        for k in ks:
            assert [client.get("/", k)[0] for _ in range(3)] == [200] * 3
            b = json.loads(n.get("/rl/buckets/p/" + k).body)
            assert b["exists"] is True and b["tokens"] < 0.01 and b["capacity"] == 3, b
        # DELETE refills the bucket on its own master.
        assert n.get("/rl/buckets/p/" + ks[0], method="DELETE").status == 204
        owner = c.by_port(port)
        assert (owner.cmd("EXISTS", bucket("p", ks[0])), owner.cmd("EXISTS", bucket("p", ks[1]))) \
            == (0, 1)
        assert client.get("/", ks[0]) == (200, "PASSED", "2")

    status = json.loads(n.get("/rl/status").body)
    nodes = status["redis"]["nodes"]
    assert {x["address"] for x in nodes} == {m.addr for m in c.masters()}, nodes
    assert {x["state"] for x in nodes} == {"up"}
    assert sum(x["slots"] for x in nodes) == 16384
    metrics = n.get("/rl/metrics").body.decode()
    for m in c.masters():
        assert re.search(r'^nginx_ratelimit_\w+\{[^}]*node="%s"[^}]*\} ' % re.escape(m.addr),
                         metrics, re.M), (m.addr, metrics[-1500:])

    # Scripts forgotten by every master (as after a restart): NOSCRIPT, load, decide.
    for m in c.masters():
        assert m.cmd("SCRIPT", "FLUSH") == "OK"
    for ks in keys.values():
        assert client.get("/", ks[1]) == (429, "REJECTED", "0")
        assert client.get("/", "fresh-" + ks[1]) == (200, "PASSED", "2")
    client.close()

    # A replica promoted while nginx is idle: the periodic refresh finds the new master.
    old = c.masters()[0]
    promoted = c.replica_of(old)
    assert wait_synced(old, promoted)
    assert promoted.cmd("CLUSTER", "FAILOVER") == "OK"
    assert wait_for(lambda: promoted.info("replication")["role"] == "master", 10, 0.02)

    def listed():
        nodes = json.loads(n.get("/rl/status").body)["redis"]["nodes"]
        return {x["address"] for x in nodes} == {m.addr for m in c.masters()}
    assert wait_for(listed, 10, 0.2), n.get("/rl/status").body
    c.wait_healthy()


# --- failover ------------------------------------------------------------------------------

def wait_synced(master, replica, timeout=5):
    target = int(master.info("replication")["master_repl_offset"])
    return wait_for(
        lambda: int(replica.info("replication")["master_repl_offset"]) >= target, timeout)


def promotion_under_traffic(port, keys, replica, cause, path="/", timeout=10, step=0.02):
    """Traffic on `keys` while `cause()` (true when done) gets `replica` promoted, and 3 s
    after; every answer is a decision or the closed failure mode. Returns the results, when
    the cause came and when the replica was master."""
    traffic = Traffic(port, keys, path=path, threads=3)
    try:
        time.sleep(0.5)
        caused = time.monotonic()
        assert cause()
        assert wait_for(lambda: replica.info("replication")["role"] == "master", timeout,
                        step), "the replica was not promoted"
        promoted = time.monotonic()
        time.sleep(3.0)
    finally:
        results = traffic.finish()
    assert traffic.errors == []
    outcomes = {(r[2], r[3]) for r in results}
    assert outcomes <= {(200, "PASSED"), (503, "FAILED_CLOSED")}, outcomes
    return results, caused, promoted


def test_replica_promoted_decisions_resume_and_tokens_survive(redis_cluster, nginx_factory):
    c = redis_cluster
    burst = 1000000
    policies = ("ratelimit_policy p rate=1r/h burst=5;\n"
                f"    ratelimit_policy big rate=1r/h burst={burst};")
    locations = location("/") + location("/probe", "ratelimit $http_x_key policy=big;")
    n = nginx_factory(conf(c, locations, policies), workers=2)
    master = c.slot_owner(key_slot(bucket("p", "survivor")))
    replica = c.replica_of(master)
    probes = keys_in(c, "big", 8, on_master(c, master), name="probe")

    client = Client(n.port)
    assert [client.get("/", "survivor")[2] for _ in range(2)] == ["4", "3"]
    assert wait_synced(master, replica), "the replica did not catch up"

    results, asked, promoted = promotion_under_traffic(
        n.port, probes, replica, lambda: replica.cmd("CLUSTER", "FAILOVER") == "OK",
        path="/probe", timeout=10, step=0.02)
    # Decisions resume within a few seconds of the promotion, and stay.
    failed = [r[0] for r in results if r[2] != 200]
    assert not failed or max(failed) < promoted + 2.0, \
        "503 for %.2fs after the promotion" % (max(failed) - promoted)
    late = [r for r in results if r[0] > promoted + 2.0]
    assert len(late) > 20
    assert [r for r in results if asked <= r[0] <= promoted + 0.5], "no traffic over the switch"
    # A graceful failover loses no write: every token was taken exactly once.
    for k in probes:
        seen = sorted((int(r[4]) for r in results if r[1] == k and r[2] == 200), reverse=True)
        assert seen == list(range(burst - 1, burst - 1 - len(seen), -1)), k

    # The bucket kept its tokens on the new master (3 left, take one).
    assert client.get("/", "survivor") == (200, "PASSED", "2")
    assert replica.cmd("EXISTS", bucket("p", "survivor")) == 1
    client.close()
    c.wait_healthy()


# --- a master lost -------------------------------------------------------------------------

def test_lost_master_takes_the_failure_mode_only_for_its_slots(doomed_cluster, nginx_factory):
    c = doomed_cluster
    locations = (location("/closed") + location("/open", mode="open")
                 + location("/local", mode="local"))
    redis_args = "connect_timeout=200ms timeout=300ms"
    n = nginx_factory(conf(c, locations, redis_args=redis_args))
    victim = c.masters()[0]
    replica = c.replica_of(victim)
    others = [m for m in c.masters() if m.port != victim.port]
    dead_keys = keys_in(c, "p", 4, on_master(c, victim), name="dead")
    live_keys = []
    for m in others:
        live_keys += keys_in(c, "p", 3, on_master(c, m), name="live-%d-" % m.port)

    client = Client(n.port)
    # Connections to every master exist before the loss.
    assert client.get("/closed", dead_keys[0])[:2] == (200, "PASSED")
    assert client.get("/closed", live_keys[0])[:2] == (200, "PASSED")
    assert client.get("/closed", live_keys[-1])[:2] == (200, "PASSED")

    replica.kill()  # first, so that nothing is promoted: the slots stay down
    victim.kill()

    slow = []
    for rnd in range(5):
        for k in dead_keys:
            start = time.monotonic()
            assert client.get("/closed", k)[:2] == (503, "FAILED_CLOSED"), (rnd, k)
            assert client.get("/open", k)[:2] == (200, "FAILED_OPEN"), (rnd, k)
            elapsed = time.monotonic() - start
            if elapsed > 2 * 0.5 + 0.3:  # two requests, each connect_timeout + timeout
                slow.append((rnd, k, elapsed))
            # `local`: this node's own bucket of the policy (burst 3) decides meanwhile.
            assert client.get("/local", k)[:2] == \
                ((200, "LOCAL_PASSED") if rnd < 3 else (429, "LOCAL_REJECTED")), (rnd, k)
        for k in live_keys:
            status, xs, _ = client.get("/closed", k)
            expected = 200 if rnd < 3 - (k in (live_keys[0], live_keys[-1])) else 429
            assert status == expected, (rnd, k, status, xs)
            assert xs == ("PASSED" if status == 200 else "REJECTED")
    assert slow == []
    client.close()
    assert victim.addr in n.log(), "the error log does not name the lost node"

    # A fresh nginx whose first seed is the dead node still finds the cluster.
    m = nginx_factory(conf(c, locations, redis_args=redis_args,
                           seeds="%s %s" % (victim.addr, others[0].addr)))
    fresh = Client(m.port)
    # live_keys[1] was exhausted through the first nginx: the bucket is shared.
    assert wait_for(lambda: fresh.get("/closed", live_keys[1])[:2] == (429, "REJECTED"), 5), \
        m.log()[-2000:]
    assert fresh.get("/closed", dead_keys[1])[:2] == (503, "FAILED_CLOSED")

    # The master comes back (empty: nothing was persisted) and gets its slots decided again,
    # by both nginx, once their background probes find it.
    victim.start()
    assert wait_for(lambda: fresh.get("/closed", dead_keys[1])[:2] == (200, "PASSED"), 10, 0.2)
    client = Client(n.port)
    assert wait_for(lambda: client.get("/closed", dead_keys[2])[:2] == (200, "PASSED"), 10, 0.2)
    assert client.get("/open", dead_keys[2]) == (200, "PASSED", "1")
    assert victim.cmd("EXISTS", bucket("p", dead_keys[2])) == 1
    assert "ratelimit: Redis %s is up" % victim.addr in n.log().split("is down")[-1]
    client.close()
    fresh.close()


def test_master_killed_its_replica_takes_over(doomed_cluster, nginx_factory):
    """SIGKILL, no goodbye: the failure mode while the cluster notices (node timeout 1s) and
    elects the replica, then decisions on the new master; no request waits longer than
    connect_timeout + timeout."""
    c = doomed_cluster
    policies = "ratelimit_policy big rate=1r/h burst=1000000;"
    limits = "ratelimit $http_x_key policy=big;"
    n = nginx_factory(conf(c, location("/", limits), policies,
                           redis_args="connect_timeout=200ms timeout=300ms"), workers=2)
    victim = c.masters()[0]
    replica = c.replica_of(victim)
    keys = keys_in(c, "big", 6, on_master(c, victim), name="doomed")
    keys += keys_in(c, "big", 6, lambda s: c.slot_owner(s).port != victim.port, name="safe")

    results, killed, promoted = promotion_under_traffic(
        n.port, keys, replica, lambda: victim.kill() or True, timeout=15, step=0.05)
    slow = [r for r in results if r[5] > 0.5 + 0.3]
    assert slow == [], slow[:5]
    # The other masters' keys never failed; the victim's resume within 2s of the election.
    safe = [r for r in results if r[1].startswith("safe")]
    assert {r[2] for r in safe} == {200}
    failed = [r[0] for r in results if r[2] == 503]
    assert failed and min(failed) >= killed, "no failure while the master was away?"
    assert max(failed) < promoted + 2.0, "503 for %.2fs after the election" % (
        max(failed) - promoted)
    assert len([r for r in results if r[0] > promoted + 2.0 and r[1].startswith("doomed")]) > 20
    assert "%s is down" % victim.addr in n.log()
    # The old master is out of the slot map: nothing keeps connecting to it.
    mentions = n.log().count(victim.addr)
    time.sleep(2.5)
    assert n.log().count(victim.addr) == mentions, n.log().splitlines()[-4:]


def test_a_stalled_master_holds_up_only_its_own_slots(redis_cluster, nginx_factory):
    """CLIENT PAUSE on one master: its keys take the failure mode after `timeout`, while one
    worker keeps deciding the other masters' keys at full speed."""
    c = redis_cluster
    n = nginx_factory(conf(c, location("/"), "ratelimit_policy p rate=1r/h burst=1000000;",
                           redis_args="connect_timeout=200ms timeout=300ms"))
    stalled = c.masters()[0]
    stuck = keys_in(c, "p", 3, on_master(c, stalled), name="stuck")
    free = keys_in(c, "p", 6, lambda s: c.slot_owner(s).port != stalled.port, name="free")
    client = Client(n.port)
    for k in stuck + free:
        assert client.get("/", k)[:2] == (200, "PASSED")

    traffic = Traffic(n.port, free, threads=2)
    try:
        pauser = Resp(stalled.port)
        assert pauser.call("CLIENT", "PAUSE", "1500", "ALL") == "OK"
        paused = time.monotonic()
        stuck_results = []
        for k in stuck:
            start = time.monotonic()
            stuck_results.append((client.get("/", k)[:2], time.monotonic() - start))
        time.sleep(max(0.0, paused + 1.0 - time.monotonic()))
    finally:
        results = traffic.finish()
        pauser.close()
    assert traffic.errors == []
    for got, elapsed in stuck_results:
        assert got == (503, "FAILED_CLOSED") and elapsed < 0.3 + 0.25, stuck_results
    during = [r for r in results if paused < r[0] < paused + 1.0]
    assert len(during) > 50
    assert {(r[2], r[3]) for r in during} == {(200, "PASSED")}
    assert max(r[5] for r in during) < 0.15, sorted(r[5] for r in during)[-5:]
    # The pause ends: the stalled master decides again.
    assert wait_for(lambda: client.get("/", stuck[0])[:2] == (200, "PASSED"), 5)
    client.close()


# --- connections ---------------------------------------------------------------------------

def nginx_connections(master_port, pids):
    """Established connections to `master_port`, per nginx worker pid (ss -p)."""
    out = subprocess.run(["ss", "-tnpH", "state", "established",
                          "( dport = :%d )" % master_port],
                         capture_output=True, text=True).stdout
    per_pid = {p: 0 for p in pids}
    for line in out.splitlines():
        for pid in re.findall(r"pid=(\d+)", line):
            if int(pid) in per_pid:
                per_pid[int(pid)] += 1
    return per_pid


def test_one_connection_per_worker_per_master(redis_cluster, nginx_factory):
    c = redis_cluster
    n = nginx_factory(conf(c, location("/"), "ratelimit_policy p rate=1r/h burst=1000000;",
                           listen="reuseport"), workers=2)
    keys = []
    for m in c.masters():
        keys += keys_in(c, "p", 4, on_master(c, m), name="conn-%d-" % m.port)

    failures = []

    # Many short connections: reuseport spreads them over both workers.
    def burst_of_connections():
        for _ in range(15):
            cl = Client(n.port)
            for k in keys:
                got = cl.get("/", k)
                if got[:2] != (200, "PASSED"):
                    failures.append((k, got))
            cl.close()

    def traffic():
        threads = [threading.Thread(target=burst_of_connections) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []

    def assert_one_per_worker():
        pids = n.worker_pids()
        assert len(pids) == 2
        for m in c.masters():
            per_pid = nginx_connections(m.port, pids)
            assert per_pid == {p: 1 for p in pids}, (m.addr, per_pid)
            # Not this test's connection, nor a replica's, nor MIGRATE's cached one.
            clients = [line for line in m.cmd("CLIENT", "LIST").decode().splitlines()
                       if "flags=N" in line and "cmd=client|list" not in line
                       and "cmd=restore-asking" not in line]
            assert len(clients) == 2, (m.addr, clients)

    traffic()
    assert_one_per_worker()

    # Every master drops its clients (as on a restart): the workers reconnect, one each.
    for m in c.masters():
        assert m.cmd("CLIENT", "KILL", "TYPE", "normal") >= 2
    probe = Client(n.port)
    for k in keys:
        assert wait_for(lambda: probe.get("/", k)[:2] == (200, "PASSED"), 5), k
    probe.close()
    traffic()
    assert_one_per_worker()

    # A reload: new workers, one connection each per master; the old ones' are gone.
    n.reload_and_wait()
    traffic()
    assert_one_per_worker()



def test_requests_while_the_worker_reads_the_slot_map_wait_for_it(redis_cluster, nginx_factory):
    """Requests that arrive while a worker connects and reads the slot map — at start, after
    its connections are killed, after a reload — are decided by Redis, never failed, even when
    the first seed is a replica (as after a failover): before the map, calls go there with
    their keys declared, and its MOVED sends them on."""
    c = redis_cluster
    masters = c.masters()
    seeds = " ".join([c.replica_of(masters[0]).addr] + [m.addr for m in masters])
    n = nginx_factory(conf(c, location("/"), "ratelimit_policy p rate=1r/h burst=1000000;",
                           seeds=seeds, listen="reuseport"), workers=2, start=False)
    keys = []
    for m in masters:
        keys += keys_in(c, "p", 3, on_master(c, m), name="start-%d-" % m.port)
    failures = []

    def at_once(rounds=3, threads=8):
        """Concurrent keep-alive connections, each over every key, started together."""
        go = threading.Event()

        def run():
            go.wait()
            cl = Client(n.port)
            for _ in range(rounds):
                for k in keys:
                    try:
                        got = cl.get("/", k)
                    except (http.client.RemoteDisconnected, ConnectionResetError):
                        # An old worker closes its idle keep-alive connections on reload:
                        # not a decision; ask again on a new connection.
                        cl.close()
                        cl = Client(n.port)
                        got = cl.get("/", k)
                    if got[:2] != (200, "PASSED"):
                        failures.append((k, got))
            cl.close()
        workers = [threading.Thread(target=run) for _ in range(threads)]
        for t in workers:
            t.start()
        go.set()
        for t in workers:
            t.join()

    n.start()
    at_once()  # the workers' first requests: no connection, no slot map yet
    assert failures == [], failures[:5]

    for node in c.live():  # every connection goes (as on a restart of the nodes)
        node.cmd("CLIENT", "KILL", "TYPE", "normal")
    at_once()
    assert failures == [], failures[:5]

    old = set(n.worker_pids())
    n.reload()
    deadline = time.monotonic() + 15
    while old & set(n.worker_pids()) and time.monotonic() < deadline:
        at_once(rounds=1)  # while the new workers start
    at_once()
    assert not old & set(n.worker_pids())
    assert failures == [], failures[:5]


def test_runtime_limits_spread_through_the_cluster(redis_cluster, nginx_factory):
    """A key override and a policy change put through one nginx are in force on another, the
    runtime limits' three keys in one slot of the cluster."""
    c = redis_cluster
    cfg = conf(c, location("/") + "\n        location /rl/ { ratelimit_api write; }")
    a, b = nginx_factory(cfg), nginx_factory(cfg)

    def put(n, path, body):
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        conn.request("PUT", "/rl/" + path, body=body)
        status = conn.getresponse().status
        conn.close()
        return status

    def limit_on(n, key):
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        conn.request("GET", "/", headers={"X-Key": key})
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.getheader("X-RateLimit-Limit")

    assert put(a, "limits/p/vip", '{"burst": 9}') == 200
    assert put(a, "policies/p", '{"burst": 5}') == 200
    assert wait_for(lambda: limit_on(b, "vip") == "9", timeout=2)
    assert wait_for(lambda: limit_on(b, "other") == "5", timeout=2)
    owner = c.slot_owner(key_slot("rl:{overrides}:data"))
    assert owner.cmd("HGET", "rl:{overrides}:data", "p:vip") == b'{"burst":9}'
