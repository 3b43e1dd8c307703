#!/usr/bin/env python3
"""make bench: this module against its peers, in one run on this machine, printed as tables,
checked against the targets of issue 8 and written to bench/RESULTS.md.

Variants (each: `location / { <limiter>; empty_gif; }`, one nginx worker unless named -w2,
wrk -t1 -c50 with a random X-Api-Key out of 10,000 per request, limits never hit, so every
request is decided):
  baseline     no limiter
  limit_req    nginx's own limit_req (per node, shared memory)
  openresty    access_by_lua + lua-resty-redis + EVALSHA token bucket (bench/peers/)
  ratelimit    this module, Redis mode (shared, exact)
  rl-local     this module, local mode (shared memory)
  ratelimit-ovr  `ratelimit` with OVERRIDES (default 100,000) per-key overrides in force (runtime
               limits, issue 18) in a 32m zone: the wrk keys' own (same bucket as the policy, so
               every request finds one) and the rest for other keys; its nginx CPU per request
               against `ratelimit`'s is the lookup's cost (VARIANTS="ratelimit ratelimit-ovr")
  rl-cluster   this module, mode=cluster, on a Redis Cluster of 3 masters (no replicas) started
               on this machine beside the standalone Redis; besides the totals, per master: its
               share of the decisions, Redis CPU per decision, decisions per script call
  <v>-w2       the same with worker_processes 2
Rounds are interleaved (a b c d e, a b c d e, ...) so drift on a noisy machine hits every
variant alike; the tables show medians over rounds and ratios within the run. Each round also
measures the reference cost of one `SET key value PX ms` pipelined at depth 16 on the same Redis
(redis-benchmark -P 16) and the flood scenario: 40 connections on one key over its limit
(100 r/s, burst 100) with 10 legitimate connections on random keys; then a flood-only phase
counts the Redis calls the flood key costs. Last, the Redis memory per live bucket: 100,000
buckets created through nginx by the module and by the OpenResty peer.

Before the tables, the core's micro-benchmarks (build/core/core_bench, Google Benchmark).

Environment: DUR (s per measured run, default 8), WARM (s, 2), ROUNDS (3), CONNS (50),
VARIANTS (default: all of the above with limit_req-w2 and ratelimit-w2), FLOOD (limiters in the
flood, default "limit_req openresty ratelimit"; empty: no flood), FLOOD_DUR (s of the flood-only
phase, default DUR/2), MEM (limiters measured for memory, default "ratelimit openresty"; empty:
none), MEM_KEYS (100000), REF_N (SET commands per reference run, 300000), CORE_BENCH (path of
core_bench, empty: skip), LIVE (1: buckets that stay alive between requests, see SCENARIOS),
RESULTS (file to write, default bench/RESULTS.md; empty: none), SHAPING (0: no shaping row).
A short run: DUR=2 WARM=1 ROUNDS=1 MEM_KEYS=5000 make bench.
Last, the moderate-load rows (BENCH_ONLY=moderate: those alone): an open-loop client
(asyncio, in this process: Poisson arrivals at MODERATE_RPS requests/s in all, default 1000,
each sent at its time on an idle keep-alive connection or a new one, whatever the answers;
latency from its send to its whole answer) against nginx proxying each request to an upstream
(another server of the same nginx); limit_req and this module on random keys (1 worker), then
one global key on 2 instances (1 worker each, half the rate each) with lease= off and on
(lease=50ms), then random keys again with batch_wait=1ms and 2ms. Rows: achieved rate,
p50/p99, p99 added vs limit_req, script calls per decision (decisions per call), Redis CPU per
decision and the part of it spent running scripts (INFO commandstats). It replaces only the section between
<!-- moderate --> markers of RESULTS. (h2load --rps is not used: it fires every connection's
request at the same instant, bursts that would fill script calls as a real load does not.)
BENCH_ONLY=cluster: the cluster row alone (rl-cluster, beside the standalone ratelimit row and
the SET PX reference measured alike; no flood, no memory, no micro-benchmarks); it replaces only
the cluster section of RESULTS (the part between its <!-- cluster --> markers, appended when
there is none), leaving the full run's tables.
BENCH_ONLY=shaping: the shaping row alone (delay=): a steady overload of 2x the rate on one key,
sent open-loop (a fixed schedule, whatever the answers) for SHAPE_DUR s (default 10), against
limit_req with delay= and this module (Redis and local mode) shaped alike: the admitted rate
against the policy's (target within 2 %), the longest wait against the bound (burst - delay) /
rate, and nginx CPU per request (from /proc/<pid>/schedstat) against limit_req's (target within
3 us). It replaces the shaping section of RESULTS (between <!-- shaping --> markers) and plots
the last round's waits and admitted counts to bench/shaping.png.
"""

import asyncio
import contextlib
import gc
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODULE = Path(os.environ.get("RL_MODULE", REPO / "build" / "ngx_http_ratelimit_module.so"))
NGINX = "/usr/sbin/nginx"
DUR = int(os.environ.get("DUR", "8"))
WARM = int(os.environ.get("WARM", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNS = int(os.environ.get("CONNS", "50"))
FLOOD_CONNS, LEGIT_CONNS = 40, 10
FLOOD_RATE = 100  # r/s and burst of the flood's policy; legitimate keys stay far below it
FLOOD_DUR = int(os.environ.get("FLOOD_DUR", str(max(2, DUR // 2))))
MEM_KEYS = int(os.environ.get("MEM_KEYS", "100000"))
OVERRIDES = int(os.environ.get("OVERRIDES", "100000"))
REF_N = int(os.environ.get("REF_N", "300000"))
CORE_BENCH = os.environ.get("CORE_BENCH", str(REPO / "build" / "core" / "core_bench"))
RESULTS = os.environ.get("RESULTS", str(HERE / "RESULTS.md"))
TICK = os.sysconf("SC_CLK_TCK")
REDIS_VARIANTS = ("openresty", "ratelimit", "rl-cluster")  # the variants that talk to Redis
CLUSTER_MASTERS = 3
ONLY = os.environ.get("BENCH_ONLY", "")
if ONLY not in ("", "cluster", "shaping", "moderate"):
    sys.exit("BENCH_ONLY=%s: only BENCH_ONLY=cluster, shaping or moderate is known" % ONLY)
# BENCH_ONLY=moderate: the offered rate (requests/s) of the moderate-load rows.
MODERATE_RPS = int(os.environ.get("MODERATE_RPS", "1000"))

LUA_MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so",
               "/usr/lib/nginx/modules/ngx_http_lua_module.so"]

# Limiter parameters per scenario: the module's/limit_req's rate and burst, the peer's (tokens/s).
# LIVE=1: limits still never hit, but a bucket outlives the gap between its key's requests (as
# with real API limits), so Redis reads and overwrites live keys instead of creating each one
# again (at 100000r/s a bucket is full, so deleted or expired, 1 ms after a request).
SCENARIOS = {
    "open": (("1r/s", 1000000, "1", "1000000") if os.environ.get("LIVE") == "1" else
             ("100000r/s", 100000, "1000000000", "1000000000")),
    "flood": ("%dr/s" % FLOOD_RATE, FLOOD_RATE, str(FLOOD_RATE), str(FLOOD_RATE)),
    "mem": ("1r/h", 10, "0.000277778", "10"),                         # buckets live ~1 h
}


# Shaping (delay=): SHAPE_RATE r/s, bucket SHAPE_BURST with SHAPE_DELAY at once; limit_req's
# equivalent is burst - 1 and delay - 1 (it admits burst + 1 at once). Offered: 2x the rate.
SHAPE_RATE, SHAPE_BURST, SHAPE_DELAY = 200, 40, 20
SHAPE_DUR = float(os.environ.get("SHAPE_DUR", "10"))
SHAPE_WARM = 1.5  # s: the first burst drains (burst / (offered - rate) = 0.2 s) before counting
SHAPE_VARIANTS = ("limit_req", "ratelimit", "rl-local")
SHAPE_TRACES = {}  # variant -> its last run's (sent at, seconds to answer, status), for the plot
SHAPE_PLOT = HERE / "shaping.png"  # beside RESULTS.md


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_variant(variant):
    """("ratelimit", 2) for "ratelimit-w2"."""
    m = re.fullmatch(r"(.*)-w(\d+)", variant)
    return (m.group(1), int(m.group(2))) if m else (variant, 1)


def limiter(variant, redis, scenario="open"):
    """(main-level lines, http-level lines, location lines) of each variant."""
    if scenario == "shaping":
        return shaping_limiter(variant, redis)
    rate, burst, peer_rate, peer_burst = SCENARIOS[scenario]
    redis_port = redis["port"]
    if variant == "baseline":
        return "", "", ""
    if variant == "limit_req":
        return ("", "limit_req_zone $http_x_api_key zone=z:10m rate=%s;\nlimit_req_status 429;"
                % rate, "limit_req zone=z burst=%d nodelay;" % burst)
    if variant == "openresty":
        loads = "".join("load_module %s;\n" % m for m in LUA_MODULES)
        return (loads,
                'lua_package_path "%s/?.lua;/usr/share/lua/5.1/?.lua;;";\n'
                'init_by_lua_block { require("tb_limiter").init("%s/tokenbucket.lua") }'
                % (HERE / "peers", HERE / "peers"),
                'access_by_lua_block { return require("tb_limiter").check("127.0.0.1", %d, '
                '%s, %s) }' % (redis_port, peer_rate, peer_burst))
    rl = ("load_module %s;" % MODULE, "", "ratelimit $http_x_api_key policy=bench;")
    policy = "ratelimit_policy bench rate=%s burst=%d;" % (rate, burst)
    if variant == "ratelimit":
        return (rl[0], "ratelimit_redis 127.0.0.1:%d;\n%s" % (redis_port, policy), rl[2])
    if variant == "ratelimit-ovr":
        return (rl[0], "ratelimit_zone 32m;\nratelimit_redis 127.0.0.1:%d;\n%s"
                % (redis_port, policy), rl[2])
    if variant == "rl-local":
        return (rl[0], "ratelimit_zone 16m;\n" + policy, rl[2])
    if variant == "rl-cluster":
        seeds = " ".join("127.0.0.1:%d" % p for p in redis["ports"])
        return (rl[0], "ratelimit_redis %s mode=cluster;\n%s" % (seeds, policy), rl[2])
    raise ValueError(variant)


def nginx_conf(run, name, main, workers, http):
    """Writes <run>/<name>.conf: `main` lines, then an http block with `http` in it."""
    user = "user root;" if os.geteuid() == 0 else ""
    conf = run / ("%s.conf" % name)
    conf.write_text(f"""
{main}
{user}
worker_processes {workers};
error_log {run}/error-{name}.log warn;
pid {run}/nginx-{name}.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {run}/tmp;
    proxy_temp_path {run}/tmp;
    fastcgi_temp_path {run}/tmp;
    uwsgi_temp_path {run}/tmp;
    scgi_temp_path {run}/tmp;
{http}
}}
""")
    return conf


def write_conf(run, variant, port, redis, workers=1, scenario="open"):
    main, http, loc = limiter(variant, redis, scenario)
    return nginx_conf(run, variant, main, workers, f"""
    {http}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ {loc} empty_gif; }}
    }}""")


def cpu_ticks(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_port(port, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


# ---------------------------------------------------------------- Redis

def redis_call(port, *args):
    """One command over a fresh connection; returns the reply (str, int or list of str)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        f = s.makefile("rb")

        def reply():
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2].decode()
            if kind == b"*":
                return [reply() for _ in range(int(rest))]
            return rest.decode()
        return reply()


def redis_info(port):
    """INFO cpu/memory/stats/commandstats as one dict: floats, and cmd:<name> -> (calls, usec)."""
    info = {}
    for section in ("cpu", "memory", "stats", "commandstats"):
        for line in redis_call(port, "INFO", section).splitlines():
            if line.startswith("cmdstat_"):
                name, stats = line[len("cmdstat_"):].split(":", 1)
                kv = dict(x.split("=") for x in stats.split(","))
                info["cmd:" + name] = (int(kv["calls"]), int(kv["usec"]))
            elif ":" in line:
                k, v = line.split(":", 1)
                try:
                    info[k] = float(v)
                except ValueError:
                    pass
    return info


def memory_stats(port):
    """MEMORY STATS, flattened: {"dataset.bytes": ..., "db.0.overhead.hashtable.main": ...}."""
    out = {}

    def walk(items, prefix):
        for k, v in zip(items[::2], items[1::2]):
            if isinstance(v, list):
                walk(v, prefix + k + ".")
            else:
                try:
                    out[prefix + k] = float(v)
                except (TypeError, ValueError):
                    pass
    walk(redis_call(port, "MEMORY", "STATS"), "")
    return out


def redis_cpu_s(info):
    return info.get("used_cpu_sys", 0) + info.get("used_cpu_user", 0)


def script_calls(info):
    """(calls, usec) of EVALSHA + EVAL."""
    calls = usec = 0
    for name in ("evalsha", "eval"):
        c, u = info.get("cmd:" + name, (0, 0))
        calls, usec = calls + c, usec + u
    return calls, usec


def key_reads(info):
    """Keys looked up for reading (the script's MGET reads each bucket of a call once): the
    decisions a Redis served, whatever the number of script calls they came in."""
    return info.get("keyspace_hits", 0) + info.get("keyspace_misses", 0)


def redis_ports(redis):
    """The Redis servers of a variant: the cluster's masters, or the one standalone server."""
    return redis.get("ports", [redis["port"]])


def flush(redis):
    for port in redis_ports(redis):
        redis_call(port, "FLUSHALL")


def load_overrides(port, n, nkeys=10000):
    """n overrides of policy `bench` written into Redis as the API's write script leaves them
    (nodes load them at their first poll): key1..key<nkeys> (wrk's keys) with the policy's own
    burst, so decisions stay those of `ratelimit`, then other keys."""
    def resp(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out
    burst = SCENARIOS["open"][1]
    buf = bytearray()
    for i in range(1, n + 1):
        field = "bench:key%d" % i if i <= nkeys else "bench:other%d" % i
        buf += resp("HSET", "rl:{overrides}:data", field, '{"burst":%d}' % burst)
        buf += resp("ZADD", "rl:{overrides}:changes", i, field)
    buf += resp("SET", "rl:{overrides}:version", n)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(buf)
        seen = b""
        while seen.count(b"\r\n") < 2 * n + 1:
            seen += s.recv(1 << 20)


@contextlib.contextmanager
def scratch_dir():
    """A directory for one bench run's configs, logs and sockets (nginx's workers read it)."""
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as d:
        run = Path(d)
        os.chmod(run, 0o755)
        (run / "tmp").mkdir()
        yield run


def start_redis(run):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(run)],
                            stdout=subprocess.DEVNULL)
    if not wait_port(port):
        proc.kill()
        raise RuntimeError("redis-server did not start")
    return {"port": port, "pid": proc.pid, "proc": proc}


def stop_redis(redis):
    redis["proc"].terminate()
    redis["proc"].wait()


def free_cluster_port():
    """A port free with its cluster bus port (port + 10000)."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


def start_cluster(run, masters=CLUSTER_MASTERS):
    """A Redis Cluster of `masters` masters, no replicas, on loopback; waits until every node
    says cluster_state:ok. Returns {"ports", "procs", "port" (the first), "slots" per port}."""
    ports, procs = [], []
    try:
        for _ in range(masters):
            port = free_cluster_port()
            home = run / ("cluster-%d" % port)
            home.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(home), "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"],
                stdout=subprocess.DEVNULL))
            ports.append(port)
            if not wait_port(port):
                raise RuntimeError("redis-server (cluster node %d) did not start" % port)
        out = subprocess.run(["redis-cli", "--cluster", "create"]
                             + ["127.0.0.1:%d" % p for p in ports]
                             + ["--cluster-replicas", "0", "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed: " + out.stdout + out.stderr)
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in redis_call(p, "CLUSTER", "INFO") and
                      len(redis_call(p, "CLUSTER", "SLOTS")) == masters for p in ports):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not reach cluster_state:ok")
            time.sleep(0.2)
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    slots = {p: 0 for p in ports}
    for start, end, master, *_ in redis_call(ports[0], "CLUSTER", "SLOTS"):
        slots[int(master[1])] += end - start + 1
    return {"ports": ports, "procs": procs, "port": ports[0], "slots": slots}


def stop_cluster(cluster):
    for proc in cluster["procs"]:
        proc.terminate()
    for proc in cluster["procs"]:
        proc.wait()


# ---------------------------------------------------------------- nginx and wrk

def start_nginx(run, variant, redis, workers=1, scenario="open"):
    """Starts nginx for `variant`; returns {proc, port, workers: [pid...], worker: first pid}."""
    port = free_port()
    conf = write_conf(run, variant, port, redis, workers, scenario)
    proc = subprocess.Popen([NGINX, "-p", str(run), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not wait_port(port):
        proc.kill()
        raise RuntimeError("nginx (%s) did not start: %s" % (variant, proc.stderr.read()))
    pids = []
    deadline = time.monotonic() + 5
    while len(pids) < workers and time.monotonic() < deadline:
        pids = [int(p) for p in subprocess.run(["ps", "--ppid", str(proc.pid), "-o", "pid="],
                                               capture_output=True, text=True).stdout.split()]
        time.sleep(0.05)
    return {"proc": proc, "port": port, "workers": pids, "worker": pids[0]}


def stop_nginx(nginx):
    proc = nginx["proc"]
    proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_problems(run, variant):
    """Error-log lines of a variant's nginx ([warn] and worse); the log is then emptied."""
    log = run / ("error-%s.log" % variant)
    if not log.exists():
        return []
    lines = [l for l in log.read_text(errors="replace").splitlines()
             if re.search(r"\[(warn|error|crit|alert|emerg)\]", l)]
    log.unlink()
    return lines


def wrk_start(port, seconds, conns, latency=True, **env):
    cmd = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "-s",
           str(HERE / "peers" / "wrk-keys.lua"), "http://127.0.0.1:%d/" % port]
    if latency:
        cmd.insert(1, "--latency")
    full = dict(os.environ, NKEYS="10000")
    full.update({k: str(v) for k, v in env.items()})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full)


def wrk_result(proc):
    out, err = proc.communicate()
    m = re.search(r"RESULT (.*)", out)
    if not m:
        raise RuntimeError("wrk failed: " + out + err)
    result = {k: float(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = float(non2xx.group(1)) if non2xx else 0.0
    return result


def wrk(port, seconds, conns=CONNS, latency=True, **env):
    return wrk_result(wrk_start(port, seconds, conns, latency, **env))


def errors(r):
    return sum(r[k] for k in r if k.startswith("err_") and k != "err_status") + r["non2xx"]


class Meter:
    """CPU of nginx's workers and of Redis, and Redis's script calls, over a span of time.
    With a cluster, the Redis figures are sums over its masters, and "nodes" has each one's."""

    def __init__(self, nginx, redis):
        self.nginx, self.ports = nginx, redis_ports(redis)
        self.t0 = time.monotonic()
        self.n0 = sum(cpu_ticks(p) for p in nginx["workers"])
        self.i0 = [redis_info(p) for p in self.ports]

    def stop(self):
        secs = time.monotonic() - self.t0
        n1 = sum(cpu_ticks(p) for p in self.nginx["workers"])
        nodes = []
        for port, i0 in zip(self.ports, self.i0):
            i1 = redis_info(port)
            c0, u0 = script_calls(i0)
            c1, u1 = script_calls(i1)
            nodes.append({"port": port, "redis_s": redis_cpu_s(i1) - redis_cpu_s(i0),
                          "calls": c1 - c0, "script_s": (u1 - u0) / 1e6,
                          "reads": key_reads(i1) - key_reads(i0)})
        return {"secs": secs, "nginx_s": (n1 - self.n0) / TICK, "nodes": nodes,
                **{k: sum(n[k] for n in nodes) for k in ("redis_s", "calls", "script_s",
                                                          "reads")}}


def measure(run, variant, redis):
    """One run of a variant: throughput, latency, CPU per request, Redis calls."""
    name, workers = base_variant(variant)
    flush(redis)
    if name == "ratelimit-ovr":
        load_overrides(redis["port"], OVERRIDES)
    nginx = start_nginx(run, name, redis, workers)
    try:
        if name == "ratelimit-ovr":
            time.sleep(2)  # the first poll loads them, 1000 a call
        wrk(nginx["port"], WARM, latency=False)
        meter = Meter(nginx, redis)
        result = wrk(nginx["port"], DUR)
        m = meter.stop()
    finally:
        stop_nginx(nginx)
    problems = log_problems(run, name)
    result["log_lines"] = float(len(problems))
    if problems:
        print("   %s: %d error-log lines, e.g. %s" % (variant, len(problems), problems[0][:200]))
    requests = max(result["requests"], 1)
    result["nginx_us"] = m["nginx_s"] * 1e6 / requests
    result["redis_us"] = m["redis_s"] * 1e6 / requests
    result["script_us"] = m["script_s"] * 1e6 / requests
    result["calls_per_req"] = m["calls"] / requests
    result["dec_per_call"] = requests / m["calls"] if m["calls"] else 0.0
    result["reads_per_req"] = m["reads"] / requests
    if len(m["nodes"]) > 1:
        # Per master (in the order of redis["ports"]), with its decisions counted as the bucket
        # reads it served: its share, Redis CPU per decision, decisions per call, core load.
        for i, n in enumerate(m["nodes"]):
            result["n%d_share" % i] = n["reads"] / m["reads"] if m["reads"] else 0.0
            result["n%d_us" % i] = n["redis_s"] * 1e6 / n["reads"] if n["reads"] else 0.0
            result["n%d_dpc" % i] = n["reads"] / n["calls"] if n["calls"] else 0.0
            result["n%d_load" % i] = n["redis_s"] / m["secs"]
    return result


def measure_flood(run, variant, redis):
    """Flood + legitimate traffic together, then the flood alone (for its Redis calls)."""
    name, workers = base_variant(variant)
    flush(redis)
    nginx = start_nginx(run, name, redis, workers, scenario="flood")
    port = nginx["port"]
    try:
        warm = [wrk_start(port, WARM, FLOOD_CONNS, False, KEY="flood"),
                wrk_start(port, WARM, LEGIT_CONNS, False)]
        for p in warm:
            wrk_result(p)
        meter = Meter(nginx, redis)
        flood = wrk_start(port, DUR, FLOOD_CONNS, False, KEY="flood")
        legit = wrk_start(port, DUR, LEGIT_CONNS)
        f, g = wrk_result(flood), wrk_result(legit)
        m = meter.stop()
        meter = Meter(nginx, redis)
        alone = wrk(port, FLOOD_DUR, FLOOD_CONNS, latency=False, KEY="flood")
        a = meter.stop()
    finally:
        stop_nginx(nginx)
    # limit_req and this module log each rejection (at error level by default): not problems.
    problems = [l for l in log_problems(run, name)
                if "limiting requests" not in l and "rejected by policy" not in l]
    if problems:
        print("   flood %s: %d error-log lines, e.g. %s" % (variant, len(problems),
                                                          problems[0][:200]))
    total = max(f["requests"] + g["requests"], 1)
    return {"legit_rps": g["rps"], "legit_p99_us": g["p99_us"],
            "legit_errors": errors(g),
            "flood_rps": f["rps"], "nginx_us": m["nginx_s"] * 1e6 / total,
            "redis_us": m["redis_s"] * 1e6 / total,
            "flood_calls_s": a["calls"] / a["secs"],
            "flood_admitted_s": (alone["requests"] - alone["non2xx"]) / a["secs"],
            "workers": workers}


def shaping_limiter(variant, redis):
    """The shaping row's limiters: limit_req delay= and this module's delay=, shaped alike. Each
    answer's status and $request_time (the wait, measured by nginx) go to logs/shaped.log, and
    this module's computed wait ($ratelimit_delay)."""
    log = ("log_format shaped '$status $request_time%s';\n"
           % ("" if variant == "limit_req" else " $ratelimit_delay"),
           "access_log logs/shaped.log shaped;\n")
    if variant == "limit_req":
        return ("", log[0] + "limit_req_zone $http_x_api_key zone=z:1m rate=%dr/s;\n"
                "limit_req_status 429;\nlimit_req_log_level info;" % SHAPE_RATE,
                log[1] + "limit_req zone=z burst=%d delay=%d;"
                % (SHAPE_BURST - 1, SHAPE_DELAY - 1))
    policy = ("ratelimit_policy shaped rate=%dr/s burst=%d delay=%d;\nratelimit_log_level info;"
              % (SHAPE_RATE, SHAPE_BURST, SHAPE_DELAY))
    redis_line = "ratelimit_redis 127.0.0.1:%d;\n" % redis["port"] if variant == "ratelimit" else ""
    return ("load_module %s;" % MODULE, log[0] + redis_line + policy,
            log[1] + "ratelimit $http_x_api_key policy=shaped;")


def schedstat_ns(pid):
    """CPU time of a process in ns (finer than /proc/<pid>/stat's ticks at low request rates)."""
    return int(Path("/proc/%d/schedstat" % pid).read_text().split()[0])


async def open_loop_client(ports, rate, seconds, key=None, poisson=False, warm=0.0,
                           at_warm_end=None):
    """Sends `rate` requests/s in all, spread over `ports`, for `warm` + `seconds`, open-loop:
    each at its scheduled time (evenly spaced, or with `poisson` exponential gaps) on an idle
    keep-alive connection to its port (a new one when none is idle), whatever the answers.
    `key`: the X-Api-Key of every request, else a random one each. Calls `at_warm_end()` once
    the warm-up's sends are done. Returns, per request sent after the warm-up, (sent at,
    seconds from its send to the whole answer, status)."""
    idle = {port: [] for port in ports}
    results, tasks = [], []
    rng = random.Random(1)

    async def one(port, sent, request):
        conn = idle[port].pop() if idle[port] else await asyncio.open_connection("127.0.0.1",
                                                                                 port)
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        await reader.readexactly(length)
        if sent >= loop_start + warm:
            results.append((sent - loop_start - warm, time.monotonic() - sent,
                            int(head.split()[1])))
        if b"connection: close" in head.lower():
            writer.close()
        else:
            idle[port].append(conn)

    gc.disable()  # a collection would pause every answer then in flight
    loop_start = time.monotonic()
    when, i, warming = loop_start, 0, warm > 0
    while when < loop_start + warm + seconds:
        if warming and when >= loop_start + warm:
            warming = False
            if at_warm_end:
                at_warm_end()
        pause = when - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        request = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Api-Key: %s\r\n\r\n" % (
            key or "%016x" % rng.getrandbits(64)).encode()
        tasks.append(asyncio.ensure_future(one(ports[i % len(ports)], time.monotonic(), request)))
        i += 1
        when += rng.expovariate(rate) if poisson else 1.0 / rate
    await asyncio.gather(*tasks)
    gc.enable()
    for conns in idle.values():
        for _, writer in conns:
            writer.close()
    return results


async def shaped_client(port, rate, seconds):
    """Sends `rate` requests/s on one key for `seconds` on a fixed schedule (open loop)."""
    return await open_loop_client([port], rate, seconds, key="shaped")


def measure_shaping(run, variant, redis):
    """One shaped run: admitted rate, longest wait, nginx CPU per request."""
    flush(redis)
    (run / "logs").mkdir(exist_ok=True)
    served = run / "logs" / "shaped.log"
    served.unlink(missing_ok=True)
    nginx = start_nginx(run, variant, redis, 1, scenario="shaping")
    try:
        cpu0 = schedstat_ns(nginx["worker"])
        results = asyncio.run(shaped_client(nginx["port"], 2 * SHAPE_RATE, SHAPE_DUR))
        cpu1 = schedstat_ns(nginx["worker"])
    finally:
        stop_nginx(nginx)
    problems = [l for l in log_problems(run, variant)]
    if problems:
        print("   shaping %s: %d error-log lines, e.g. %s" % (variant, len(problems),
                                                            problems[0][:200]))
    SHAPE_TRACES[variant] = results
    steady = [r for r in results if r[0] >= SHAPE_WARM]
    last = max(r[0] for r in results)
    admitted = sum(1 for r in steady if r[2] == 200)
    ok = [r[1] for r in results if r[2] == 200]
    lines = [line.split() for line in served.read_text().splitlines()]
    waits = [float(f[1]) * 1000 for f in lines if f[0] == "200"]
    computed = [int(f[2]) for f in lines if f[0] == "200" and len(f) > 2]
    return {"offered_s": len(results) / (last + 1.0 / (2 * SHAPE_RATE)),
            "admitted_s": admitted / (last - SHAPE_WARM + 1.0 / (2 * SHAPE_RATE)),
            "max_wait_ms": max(waits) if waits else 0.0,
            "client_max_ms": max(ok) * 1000 if ok else 0.0,
            "computed_max_ms": max(computed) if computed else -1.0,
            "errors": sum(1 for r in results if r[2] not in (200, 429)) + len(problems),
            "nginx_us": (cpu1 - cpu0) / 1000.0 / max(len(results), 1)}


def table_shaping(rows):
    bound = (SHAPE_BURST - SHAPE_DELAY) * 1000.0 / SHAPE_RATE
    lreq = rows.get("limit_req", {}).get("nginx_us")
    out = ["Shaping (medians of %d round(s)): %dr/s, burst %d, delay %d here (limit_req: burst %d delay %d, the same "
           "shaping); offered 2x the rate on one key, open-loop, %.0f s; admitted counted after "
           "%.1f s; longest wait bound (burst - delay) / rate = %.0f ms." % (
               ROUNDS, SHAPE_RATE, SHAPE_BURST, SHAPE_DELAY, SHAPE_BURST - 1, SHAPE_DELAY - 1,
               SHAPE_DUR,
               SHAPE_WARM, bound), "",
           "| limiter | offered req/s | admitted req/s | × rate | longest wait computed ms "
           "($ratelimit_delay) | longest wait served ms (nginx's $request_time) | longest at "
           "the client ms | nginx CPU µs/req | − limit_req µs | errors + log lines |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for v, r in rows.items():
        out.append("| %s | %.1f | %.1f | %.3f | %s | %.0f | %.1f | %.1f | %s | %d |" % (
            v, r["offered_s"], r["admitted_s"], r["admitted_s"] / SHAPE_RATE,
            "-" if r["computed_max_ms"] < 0 else "%.0f" % r["computed_max_ms"], r["max_wait_ms"],
            r["client_max_ms"], r["nginx_us"],
            "-" if lreq is None or v == "limit_req" else "%+.1f" % (r["nginx_us"] - lreq),
            r["errors"]))
    return "\n".join(out)


def plot_shaping(traces, path=SHAPE_PLOT):
    """The shaping runs as a picture (SVG, then PNG through headless Chromium when there is
    one): per limiter, each request's wait at the client against when it was sent, with the
    bound (burst - delay) / rate; and the admitted count against burst + rate x t."""
    bound = (SHAPE_BURST - SHAPE_DELAY) * 1000.0 / SHAPE_RATE
    w, h, pad = 420, 200, 40
    parts = []
    for row, (variant, results) in enumerate(traces.items()):
        top = 30 + row * (h + 50)
        span = max(r[0] for r in results) or 1.0
        ymax = bound * 1.6

        def x(t, left):
            return left + pad + t / span * (w - pad - 10)

        def y(v, vmax):
            return top + h - min(v, vmax) / vmax * (h - 20)
        for left, title in ((0, "wait at the client (ms); red: rejected; line: bound"),
                            (w + 20, "admitted requests; line: burst + rate x t")):
            parts.append('<rect x="%d" y="%d" width="%d" height="%d" fill="#fbfcfd" '
                         'stroke="#d5dae3"/>' % (left + pad, top, w - pad - 10, h))
            parts.append('<text x="%d" y="%d" font-size="12">%s: %s</text>'
                         % (left + pad, top - 6, variant, title))
        parts.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#b7791f" '
                     'stroke-dasharray="4 3"/>' % (x(0, 0), x(span, 0), y(bound, ymax),
                                                   y(bound, ymax)))
        parts.append('<text x="2" y="%.1f" font-size="10">%.0f ms</text>'
                     % (y(bound, ymax) + 3, bound))
        for sent, took, status in results:
            parts.append('<circle cx="%.1f" cy="%.1f" r="1.2" fill="%s"/>' % (
                x(sent, 0), y(took * 1000, ymax), "#2f7d4f" if status == 200 else "#c2412d"))
        admitted, points = 0, []
        total = sum(1 for r in results if r[2] == 200)
        cmax = max(total, SHAPE_BURST + SHAPE_RATE * span) * 1.05
        for sent, _, status in sorted(results):
            if status == 200:
                admitted += 1
                points.append("%.1f,%.1f" % (x(sent, w + 20), y(admitted, cmax)))
        parts.append('<polyline fill="none" stroke="#2f7d4f" stroke-width="2" points="%s"/>'
                     % " ".join(points))
        parts.append('<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#b7791f" '
                     'stroke-dasharray="4 3"/>' % (x(0, w + 20), x(span, w + 20),
                                                   y(SHAPE_BURST, cmax),
                                                   y(SHAPE_BURST + SHAPE_RATE * span, cmax)))
        parts.append('<text x="%d" y="%d" font-size="10">0 .. %.0f s</text>'
                     % (w + 20 + pad, top + h + 14, span))
    height = 30 + len(traces) * (h + 50)
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif"><rect width="100%%" height="100%%" fill="white"/>%s</svg>'
           % (2 * w + 30, height, "".join(parts)))
    path.parent.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium")
    if not chromium:  # the SVG itself, then
        path = path.with_suffix(".svg")
        path.write_text(svg)
        return path
    with tempfile.TemporaryDirectory(prefix="rl-plot-") as tmp:
        svg_path = Path(tmp) / "shaping.svg"
        svg_path.write_text(svg)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--user-data-dir=%s/profile" % tmp,
                        "--screenshot=%s" % path, "--window-size=%d,%d" % (2 * w + 30, height),
                        svg_path.as_uri()], capture_output=True, timeout=60)
    return path


def run_shaping(started, load0):
    """BENCH_ONLY=shaping: the shaping row alone, written to its section of RESULTS."""
    rows = {}
    with scratch_dir() as run:
        redis = start_redis(run)
        try:
            runs = {v: [] for v in SHAPE_VARIANTS}
            for rnd in range(ROUNDS):  # interleaved, as the other rows
                for v in SHAPE_VARIANTS:
                    r = measure_shaping(run, v, redis)
                    runs[v].append(r)
                    print("round %d shaping %-9s offered %6.1f/s admitted %6.1f/s longest wait "
                          "%4.0f ms nginx %5.1f us/req" % (rnd + 1, v, r["offered_s"],
                                                           r["admitted_s"], r["max_wait_ms"],
                                                           r["nginx_us"]), flush=True)
            rows = {v: median_of(runs[v]) for v in SHAPE_VARIANTS}
        finally:
            stop_redis(redis)
    text = table_shaping(rows)
    print()
    print(text)
    print("\nplot:", plot_shaping(SHAPE_TRACES))
    if RESULTS:
        write_section(SHAPING_BEGIN, SHAPING_END, "BENCH_ONLY=shaping", started, load0,
                      "asyncio open-loop client, %.0f s per limiter" % SHAPE_DUR, text)
        print("\nthe shaping section of %s replaced" % RESULTS)
    return 0


def measure_set_reference(redis):
    """Redis CPU of one `SET key value PX ms`, pipelined at depth 16, 50 clients, 10k keys."""
    port = redis["port"]
    redis_call(port, "FLUSHALL")
    i0 = redis_info(port)
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-c", "50", "-n", str(REF_N),
                          "-P", "16", "-r", "10000", "--csv", "SET", "rl:ref:__rand_int__",
                          "v2 99999000 1000 1795946804450", "PX", "60000"],
                         capture_output=True, text=True, timeout=120)
    i1 = redis_info(port)
    calls = i1.get("cmd:set", (0, 0))[0] - i0.get("cmd:set", (0, 0))[0]
    if calls <= 0:
        raise RuntimeError("redis-benchmark SET failed: " + out.stdout + out.stderr)
    return {"set_us": (redis_cpu_s(i1) - redis_cpu_s(i0)) * 1e6 / calls,
            "set_cmd_us": (i1["cmd:set"][1] - i0.get("cmd:set", (0, 0))[1]) / calls}


def measure_memory(run, variant, redis):
    """Redis bytes per live bucket: MEM_KEYS distinct keys, each decided once through nginx.
    Counted: the data (used_memory less every overhead) and the main and expires hash tables;
    not counted: client buffers, which depend on the connections, not on the buckets."""
    port = redis["port"]
    redis_call(port, "FLUSHALL")
    time.sleep(0.2)
    stats0 = memory_stats(port)
    nginx = start_nginx(run, variant, redis, scenario="mem")
    try:
        deadline = time.monotonic() + 90
        start = 1  # keys mem<start>.. are not asked yet
        while time.monotonic() < deadline:
            keys = redis_call(port, "DBSIZE")
            if keys >= MEM_KEYS:
                break
            n = MEM_KEYS - keys
            r = wrk(nginx["port"], 3, latency=False, SEQ=1, PREFIX="mem", START=start, NKEYS=n)
            # Asked in order, once: the next pass starts after the last key surely answered.
            start += n if r["requests"] >= n + CONNS else max(0, int(r["requests"]) - CONNS)
    finally:
        stop_nginx(nginx)
    log_problems(run, variant)
    time.sleep(1.5)  # the connections closed, the dicts' incremental rehashing done
    keys = redis_call(port, "DBSIZE")
    stats1 = memory_stats(port)
    sample = redis_call(port, "RANDOMKEY")
    kind = redis_call(port, "TYPE", sample) if sample else "-"
    value = redis_call(port, "GET", sample) if kind == "string" else kind
    pttl = redis_call(port, "PTTL", sample) if sample else -2
    usage = redis_call(port, "MEMORY", "USAGE", sample) if sample else 0
    per_key = {f: (stats1.get(f, 0) - stats0.get(f, 0)) / keys if keys else 0.0
               for f in ("dataset.bytes", "db.0.overhead.hashtable.main",
                         "db.0.overhead.hashtable.expires")}
    tables = per_key["db.0.overhead.hashtable.main"] + per_key["db.0.overhead.hashtable.expires"]
    return {"keys": keys, "bytes": per_key["dataset.bytes"] + tables,
            "dataset": per_key["dataset.bytes"], "overhead": tables,
            "sample": "%s = %r (PTTL %s ms, MEMORY USAGE %s B)" % (sample, value, pttl, usage)}


# ---------------------------------------------------------------- the run

def available_variants(wanted):
    missing = [m for m in LUA_MODULES if not Path(m).exists()]
    peer_lib = Path("/usr/share/lua/5.1/nginx/redis.lua")
    if "openresty" in wanted and (missing or not peer_lib.exists()):
        print("note: openresty variant skipped (libnginx-mod-http-lua / lua-nginx-redis missing)")
        wanted = [v for v in wanted if base_variant(v)[0] != "openresty"]
    return wanted


def run_core_bench():
    if not CORE_BENCH or not Path(CORE_BENCH).exists():
        print("note: no core_bench (%s): micro-benchmarks skipped" % CORE_BENCH)
        return ""
    print("== core micro-benchmarks (%s)" % CORE_BENCH, flush=True)
    out = subprocess.run([CORE_BENCH, "--benchmark_min_time=0.2"], capture_output=True,
                         text=True)
    text = out.stdout.rstrip()
    print(text, flush=True)
    return text


def median_of(rows):
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main():
    if not shutil.which("wrk") and ONLY != "shaping":  # the shaping row has its own client
        print("wrk is missing (apt-get install wrk)")
        return 1
    if ONLY == "moderate":
        return moderate_main()
    started = datetime.now(timezone.utc)
    load0 = os.getloadavg()[0]
    if ONLY == "shaping":
        return run_shaping(started, load0)
    if ONLY == "cluster":  # with the standalone row, measured alike, to compare with
        micro, variants, flooded, memory_of = "", ["ratelimit", "rl-cluster"], [], []
    else:
        micro = run_core_bench()
        variants = available_variants(os.environ.get(
            "VARIANTS", "baseline limit_req openresty ratelimit rl-local limit_req-w2 "
            "ratelimit-w2 rl-cluster").split())
        flooded = available_variants(os.environ.get("FLOOD",
                                                    "limit_req openresty ratelimit").split())
        memory_of = [v for v in available_variants(os.environ.get(
            "MEM", "ratelimit openresty").split()) if v != "rl-cluster"]  # one server's memory
    clustered = any(base_variant(v)[0] == "rl-cluster" for v in variants + flooded)
    results = {v: [] for v in variants}
    floods = {v: [] for v in flooded}
    shaped = [] if ONLY == "cluster" or os.environ.get("SHAPING") == "0" else SHAPE_VARIANTS
    shaping = {}
    refs, memory = [], {}
    with scratch_dir() as run:
        redis = start_redis(run)
        cluster = None
        try:
            if clustered:
                cluster = start_cluster(run)
                print("cluster: %d masters on ports %s" % (
                    len(cluster["ports"]), " ".join(map(str, cluster["ports"]))), flush=True)

            def server_of(v):
                return cluster if base_variant(v)[0] == "rl-cluster" else redis
            for rnd in range(ROUNDS):
                for v in variants:
                    r = measure(run, v, server_of(v))
                    results[v].append(r)
                    print("round %d %-13s %8.0f req/s  p99 %6.2f ms  nginx %5.1f us/req  "
                          "redis %5.1f us/req  calls/req %.2f"
                          % (rnd + 1, v, r["rps"], r["p99_us"] / 1000, r["nginx_us"],
                             r["redis_us"], r["calls_per_req"]), flush=True)
                    if errors(r) or r["err_status"]:
                        print("   errors %d, non-2xx %d" % (errors(r), r["non2xx"]))
                ref = measure_set_reference(redis)
                refs.append(ref)
                print("round %d SET PX -P16     redis %5.2f us/SET" % (rnd + 1, ref["set_us"]),
                      flush=True)
                for v in flooded:
                    f = measure_flood(run, v, server_of(v))
                    floods[v].append(f)
                    print("round %d flood %-9s legit %7.0f req/s p99 %6.2f ms  flood %7.0f req/s"
                          "  nginx %5.1f us/req  flood-key calls %6.0f/s (admitted %4.0f/s)"
                          % (rnd + 1, v, f["legit_rps"], f["legit_p99_us"] / 1000, f["flood_rps"],
                             f["nginx_us"], f["flood_calls_s"], f["flood_admitted_s"]), flush=True)
            for v in memory_of:
                memory[v] = measure_memory(run, v, redis)
                print("memory %-10s %d keys, %.0f bytes/key; e.g. %s"
                      % (v, memory[v]["keys"], memory[v]["bytes"], memory[v]["sample"]), flush=True)
            for v in shaped:
                shaping[v] = measure_shaping(run, v, redis)
        finally:
            stop_redis(redis)
            if cluster:
                stop_cluster(cluster)
    med = {v: median_of(results[v]) for v in variants}
    fmed = {v: median_of(floods[v]) for v in flooded}
    ref = median_of(refs) if refs else None
    clusters = table_cluster(variants, med, results, ref, cluster)
    if ONLY == "cluster":
        tables = []
    else:
        tables = [table_variants(variants, med, results, ref), table_floods(flooded, fmed),
                  table_memory(memory), table_targets(med, fmed, ref, memory)]
        if shaping:
            tables.append("%s\n%s\n%s" % (SHAPING_BEGIN, table_shaping(shaping), SHAPING_END))
            print("shaping plot:", plot_shaping(SHAPE_TRACES))
    text = "\n\n".join(t for t in tables + [clusters] if t)
    print()
    print(text)
    if RESULTS and ONLY == "cluster":
        write_section(CLUSTER_BEGIN, CLUSTER_END, "BENCH_ONLY=cluster", started, load0,
                      "wrk -t1 -c%d, %d s per run after %d s of warm-up, %d round(s)"
                      % (CONNS, DUR, WARM, ROUNDS), clusters)
        print("\nthe cluster section of %s replaced" % RESULTS)
    elif RESULTS:
        # The cluster table between markers, which a BENCH_ONLY=cluster run replaces.
        if clusters:
            tables.append("%s\n%s\n%s" % (CLUSTER_BEGIN, clusters, CLUSTER_END))
        write_results(started, load0, micro, "\n\n".join(t for t in tables if t))
        print("\nwritten to", RESULTS)
    if not ONLY:
        return moderate_main()
    return 0


# ---------------------------------------------------------------- moderate load

MODERATE_ROWS = (  # name, limiter, instances, lease, batch_wait
    ("limit_req, random keys", "limit_req", 1, "", ""),
    ("ratelimit, random keys", "ratelimit", 1, "", ""),
    ("global key, 2 instances, leases off", "ratelimit", 2, "", ""),
    ("global key, 2 instances, leases on (50ms)", "ratelimit", 2, "50ms", ""),
    ("ratelimit, random keys, batch_wait=1ms", "ratelimit", 1, "", "1ms"),
    ("ratelimit, random keys, batch_wait=2ms", "ratelimit", 1, "", "2ms"),
)


def moderate_conf(run, name, port, backend, redis, limiter_name, lease, batch_wait):
    """nginx proxying every request to an upstream server of its own, with the limiter."""
    if limiter_name == "limit_req":
        main, http = "", ("limit_req_zone $http_x_api_key zone=z:10m rate=100000r/s;\n"
                          "limit_req_status 429;")
        loc = "limit_req zone=z burst=100000 nodelay;"
    else:
        main = "load_module %s;" % MODULE
        http = ("ratelimit_redis 127.0.0.1:%d %s;\nratelimit_policy bench rate=100000r/s "
                "burst=100000 %s;" % (redis["port"],
                                      "batch_wait=" + batch_wait if batch_wait else "",
                                      "lease=" + lease if lease else ""))
        loc = "ratelimit $http_x_api_key policy=bench;"
    return nginx_conf(run, name, main, 1, f"""
    {http}
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{backend};
        location / {{ empty_gif; }}
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{
            {loc}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://backend;
        }}
    }}""")


def moderate_start(run, name, redis, limiter_name, lease, batch_wait):
    port, backend = free_port(), free_port()
    conf = moderate_conf(run, name, port, backend, redis, limiter_name, lease, batch_wait)
    proc = subprocess.Popen([NGINX, "-p", str(run), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not wait_port(port):
        proc.kill()
        raise RuntimeError("nginx (%s) did not start: %s" % (name, proc.stderr.read()))
    return {"proc": proc, "port": port}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def moderate_row(run, redis, row):
    """One row: the open-loop client (Poisson arrivals at MODERATE_RPS in all, spread over the
    instances) for WARM s, then DUR s measured."""
    title, limiter_name, instances, lease, batch_wait = row
    flush(redis)
    nginxes = [moderate_start(run, "mod%d" % i, redis, limiter_name, lease, batch_wait)
               for i in range(instances)]
    info = {}
    try:
        results = asyncio.run(open_loop_client(
            [n["port"] for n in nginxes], MODERATE_RPS, DUR,
            key="global" if instances > 1 else None, poisson=True, warm=WARM,
            at_warm_end=lambda: info.update(i0=redis_info(redis["port"]))))
        info["i1"] = redis_info(redis["port"])
    finally:
        for n in nginxes:
            stop_nginx(n)
    problems = []
    for i in range(instances):
        problems += log_problems(run, "mod%d" % i)
    requests = len(results)
    calls, script_us = (a - b for a, b in zip(script_calls(info["i1"]), script_calls(info["i0"])))
    latencies = [r[1] * 1e6 for r in results]
    return {"title": title, "rps": requests / DUR,
            "p50_us": percentile(latencies, 0.5), "p99_us": percentile(latencies, 0.99),
            "calls_per_dec": calls / requests if requests else 0.0,
            "calls_s": calls / DUR, "redis_us": (redis_cpu_s(info["i1"]) - redis_cpu_s(info["i0"]))
            * 1e6 / max(requests, 1), "script_us": script_us / max(requests, 1),
            "errors": sum(1 for r in results if r[2] != 200) + len(problems)}


def moderate_main():
    started = datetime.now(timezone.utc)
    load0 = os.getloadavg()[0]
    rows = {r[0]: [] for r in MODERATE_ROWS}
    with scratch_dir() as run:
        redis = start_redis(run)
        try:
            for rnd in range(ROUNDS):
                for row in MODERATE_ROWS:
                    r = moderate_row(run, redis, row)
                    rows[row[0]].append(r)
                    print("round %d %-44s %6.0f req/s  p99 %5.2f ms  calls/decision %.2f  "
                          "redis %5.1f us/decision  errors %d"
                          % (rnd + 1, row[0], r["rps"], r["p99_us"] / 1000, r["calls_per_dec"],
                             r["redis_us"], r["errors"]), flush=True)
        finally:
            stop_redis(redis)
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0] if f != "title"}
           for k, v in rows.items()}
    # The p99 added: within each round (the same minute of a shared machine), then the median.
    lreq = rows[MODERATE_ROWS[0][0]]
    added = {k: statistics.median(r["p99_us"] - l["p99_us"] for r, l in zip(v, lreq))
             for k, v in rows.items()}
    table = ["| row (open loop, %d req/s offered, proxied) | req/s | p50 ms | p99 ms | "
             "p99 added vs limit_req ms (median of the rounds') | script calls/decision | "
             "decisions/call | script calls/s | Redis CPU µs/decision | of which in scripts | errors |"
             % MODERATE_RPS, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for title, *_ in MODERATE_ROWS:
        m = med[title]
        redis_row = title != MODERATE_ROWS[0][0]
        table.append("| %s | %.0f | %.2f | %.2f | %s | %s | %s | %s | %s | %s | %d |" % (
            title, m["rps"], m["p50_us"] / 1000, m["p99_us"] / 1000,
            fmt(added[title] / 1000, "%+.2f") if redis_row else "-",
            fmt(m["calls_per_dec"], "%.3f") if redis_row else "-",
            fmt(1 / m["calls_per_dec"], "%.1f") if redis_row and m["calls_per_dec"] else "-",
            fmt(m["calls_s"], "%.0f") if redis_row else "-",
            fmt(m["redis_us"]) if redis_row else "-",
            fmt(m["script_us"]) if redis_row else "-", m["errors"]))
    text = "\n".join(table)
    print()
    print(text)
    if RESULTS:
        write_section(MODERATE_BEGIN, MODERATE_END, "BENCH_ONLY=moderate", started, load0,
                      "open-loop asyncio client (Poisson arrivals, keep-alive connections, a "
                      "new one when none is idle; latency from each request's send to its "
                      "whole answer), %d s per run after %d s of warm-up, medians of %d "
                      "round(s)" % (DUR, WARM, ROUNDS),
                      text)
        print("\nthe moderate section of %s replaced" % RESULTS)
    return 0


# ---------------------------------------------------------------- tables

def fmt(x, spec="%.1f"):
    return "-" if x is None else spec % x


def table_variants(variants, med, results, ref):
    base = med.get("baseline", {}).get("rps")
    lreq = med.get("limit_req", {}).get("rps")
    rows = ["| variant | req/s (median of %d) | × baseline | × limit_req | p50 ms | p99 ms | "
            "nginx CPU µs/req | Redis CPU µs/decision | × SET PX | of which in EVALSHA (wall µs) | "
            "Redis calls/req | decisions/call | errors + log lines |" % ROUNDS,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        m = med[v]
        redis = base_variant(v)[0] in REDIS_VARIANTS
        errs = sum(errors(r) + r["log_lines"] for r in results[v])
        rows.append("| %s | %.0f | %s | %s | %.2f | %.2f | %.1f | %s | %s | %s | %s | %s | %d |" % (
            v, m["rps"], fmt(m["rps"] / base if base else None, "%.2f"),
            fmt(m["rps"] / lreq if lreq else None, "%.2f"),
            m["p50_us"] / 1000, m["p99_us"] / 1000, m["nginx_us"],
            fmt(m["redis_us"] if redis else None),
            fmt(m["redis_us"] / ref["set_us"] if redis and ref else None, "%.1f×"),
            fmt(m["script_us"] if redis else None),
            fmt(m["calls_per_req"] if redis else None, "%.2f"),
            fmt(m["dec_per_call"] if redis else None, "%.2f"), errs))
    if ref:
        rows.append("")
        rows.append("Reference: one `SET key value PX ms`, redis-benchmark -c 50 -P 16, 10k keys: "
                    "**%.2f µs** of Redis CPU per SET (%.2f µs inside the command), median of %d."
                    % (ref["set_us"], ref["set_cmd_us"], ROUNDS))
    return "\n".join(rows)


def table_floods(flooded, fmed):
    if not flooded:
        return ""
    rows = ["Flood: %d connections on one key (policy %d r/s, burst %d) + %d legitimate "
            "connections on random keys, %d s; then the flood alone for %d s."
            % (FLOOD_CONNS, FLOOD_RATE, FLOOD_RATE, LEGIT_CONNS, DUR, FLOOD_DUR), "",
            "| limiter | legit req/s | legit p99 ms | flood req/s | nginx CPU µs/req | "
            "Redis CPU µs/req | flood-key Redis calls/s | flood admitted/s | legit errors |",
            "|---|---|---|---|---|---|---|---|---|"]
    for v in flooded:
        f = fmed[v]
        redis = base_variant(v)[0] in REDIS_VARIANTS
        rows.append("| %s | %.0f | %.2f | %.0f | %.1f | %s | %s | %.0f | %d |" % (
            v, f["legit_rps"], f["legit_p99_us"] / 1000, f["flood_rps"], f["nginx_us"],
            fmt(f["redis_us"] if redis else None), fmt(f["flood_calls_s"] if redis else None,
                                                      "%.0f"),
            f["flood_admitted_s"], f["legit_errors"]))
    return "\n".join(rows)


def table_memory(memory):
    if not memory:
        return ""
    rows = ["Redis memory per live bucket (`MEMORY STATS` deltas over the buckets made through "
            "nginx, one request per key: the data plus the keyspace and expires hash tables):", "",
            "| limiter | buckets | bytes/bucket | of which data / hash tables "
            "| a stored bucket |", "|---|---|---|---|---|"]
    for v, m in memory.items():
        rows.append("| %s | %d | %.0f | %.0f / %.0f | `%s` |" % (
            v, m["keys"], m["bytes"], m["dataset"], m["overhead"], m["sample"]))
    return "\n".join(rows)


def table_cluster(variants, med, results, ref, cluster):
    """The cluster rows: totals over the masters, then each master's part."""
    clustered = [v for v in variants if base_variant(v)[0] == "rl-cluster"]
    if not clustered or not cluster:
        return ""
    alike = [v for v in variants if base_variant(v)[0] == "ratelimit"]  # standalone, same run
    rows = ["Cluster: this module with `mode=cluster` on %d masters (no replicas, all on this "
            "machine), under the load of the `ratelimit` row. A master's decisions are the bucket "
            "reads it served (`INFO stats` keyspace hits + misses: the script reads each bucket of "
            "a call once), its CPU from `INFO cpu`, its script calls from `INFO commandstats`; "
            "medians of %d rounds; the standalone rows of the same run beside them." % (
                len(cluster["ports"]), ROUNDS), "",
            "| variant | req/s | p50 ms | p99 ms | nginx CPU µs/req | Redis CPU µs/decision "
            "(all masters) | × SET PX | Redis calls/req | decisions/call | bucket reads/req | "
            "errors + log lines |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in alike + clustered:
        m = med[v]
        errs = sum(errors(r) + r["log_lines"] for r in results[v])
        rows.append("| %s | %.0f | %.2f | %.2f | %.1f | %.1f | %s | %.2f | %.2f | %.2f | %d |" % (
            v, m["rps"], m["p50_us"] / 1000, m["p99_us"] / 1000, m["nginx_us"], m["redis_us"],
            fmt(m["redis_us"] / ref["set_us"] if ref else None, "%.1f×"), m["calls_per_req"],
            m["dec_per_call"], m["reads_per_req"], errs))
    rows += ["", "Per master:", "",
             "| variant | master | slots | share of decisions | Redis CPU µs/decision | × SET PX "
             "| decisions/call | Redis CPU, share of a core |", "|---|---|---|---|---|---|---|---|"]
    for v in clustered:
        m = med[v]
        for i, port in enumerate(cluster["ports"]):
            rows.append("| %s | %d | %d | %.0f %% | %.1f | %s | %.2f | %.0f %% |" % (
                v, i + 1, cluster["slots"][port], 100 * m["n%d_share" % i], m["n%d_us" % i],
                fmt(m["n%d_us" % i] / ref["set_us"] if ref else None, "%.1f×"),
                m["n%d_dpc" % i], 100 * m["n%d_load" % i]))
    if ref:
        rows += ["", "Reference of this run: one pipelined `SET … PX` cost %.2f µs of Redis CPU "
                 "(standalone Redis, median of %d)." % (ref["set_us"], ROUNDS)]
    return "\n".join(rows)


def verdict(ok):
    return "-" if ok is None else ("PASS" if ok else "**FAIL**")


def table_targets(med, fmed, ref, memory):
    rl, lr, orr = med.get("ratelimit"), med.get("limit_req"), med.get("openresty")
    rows = ["Targets of issue 8 (medians of this run):", "",
            "| target | goal | this module | limit_req | OpenResty peer | verdict |",
            "|---|---|---|---|---|---|"]

    def add(name, goal, ours, lreq, peer, ok):
        rows.append("| %s | %s | %s | %s | %s | %s |" % (name, goal, ours, lreq, peer, verdict(ok)))

    for suffix, label in (("", ""), ("-w2", " (2 workers)")):
        m, l, o = med.get("ratelimit" + suffix), med.get("limit_req" + suffix), \
            med.get("openresty" + suffix)
        if m and l:
            add("nginx CPU/req, Redis mode" + label, "≤ limit_req + 3 µs = %.1f µs"
                % (l["nginx_us"] + 3), "%.1f µs" % m["nginx_us"], "%.1f µs" % l["nginx_us"],
                fmt(o["nginx_us"] if o else None, "%.1f µs"), m["nginx_us"] <= l["nginx_us"] + 3)
            add("throughput, Redis mode" + label, "≥ 0.80× limit_req",
                "%.2f× (%.0f/s)" % (m["rps"] / l["rps"], m["rps"]), "1.00× (%.0f/s)" % l["rps"],
                "%.2f×" % (o["rps"] / l["rps"]) if o else "-", m["rps"] >= 0.8 * l["rps"])
            add("p99, Redis mode" + label, "≤ limit_req + 1 ms = %.2f ms"
                % (l["p99_us"] / 1000 + 1), "%.2f ms" % (m["p99_us"] / 1000),
                "%.2f ms" % (l["p99_us"] / 1000), fmt(o["p99_us"] / 1000 if o else None,
                                                      "%.2f ms"),
                m["p99_us"] <= l["p99_us"] + 1000)
    if rl and ref:
        add("Redis CPU/decision", "≤ 2× SET PX (-P16) = %.1f µs" % (2 * ref["set_us"]),
            "%.1f µs = %.1f× (%.2f decisions/call)" % (
                rl["redis_us"], rl["redis_us"] / ref["set_us"], rl["dec_per_call"]), "-",
            "%.1f µs = %.1f× (%.2f/call)" % (orr["redis_us"], orr["redis_us"] / ref["set_us"],
                                              orr["dec_per_call"]) if orr else "-",
            rl["redis_us"] <= 2 * ref["set_us"])
    loc = med.get("rl-local")
    if loc and lr:
        add("throughput, local mode", "≥ 1.00× limit_req (0.95 allowed for noise)",
            "%.2f×" % (loc["rps"] / lr["rps"]), "1.00×", "-", loc["rps"] >= 0.95 * lr["rps"])
    frl, flr, fop = fmed.get("ratelimit"), fmed.get("limit_req"), fmed.get("openresty")
    if frl:
        bound = frl["flood_admitted_s"] + frl["workers"] * FLOOD_RATE
        add("flood: Redis calls/s of the flood key", "≤ admitted + workers × refills/s = %.0f/s"
            % bound, "%.0f/s (admitted %.0f/s)" % (frl["flood_calls_s"], frl["flood_admitted_s"]),
            "-", fmt(fop["flood_calls_s"] if fop else None, "%.0f/s"),
            frl["flood_calls_s"] <= bound)
    if frl and flr:
        add("flood: nginx CPU/req", "≤ limit_req's flood + 3 µs = %.1f µs" % (flr["nginx_us"] + 3),
            "%.1f µs" % frl["nginx_us"], "%.1f µs" % flr["nginx_us"],
            fmt(fop["nginx_us"] if fop else None, "%.1f µs"),
            frl["nginx_us"] <= flr["nginx_us"] + 3)
        add("flood: legitimate req/s (p99)", "reported", "%.0f (%.2f ms)" % (
            frl["legit_rps"], frl["legit_p99_us"] / 1000), "%.0f (%.2f ms)" % (
            flr["legit_rps"], flr["legit_p99_us"] / 1000),
            "%.0f (%.2f ms)" % (fop["legit_rps"], fop["legit_p99_us"] / 1000) if fop else "-", None)
    mrl, mop = memory.get("ratelimit"), memory.get("openresty")
    if mrl:
        add("Redis bytes per live bucket", "≤ OpenResty peer's", "%.0f B" % mrl["bytes"], "-",
            fmt(mop["bytes"] if mop else None, "%.0f B"),
            mrl["bytes"] <= mop["bytes"] if mop else None)
    return "\n".join(rows)


# ---------------------------------------------------------------- RESULTS.md

def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def machine():
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return "%s, %d cores, %.0f GiB RAM" % (model, os.cpu_count(), int(mem) / 2**20)


CLUSTER_BEGIN, CLUSTER_END = "<!-- cluster -->", "<!-- /cluster -->"
MODERATE_BEGIN, MODERATE_END = "<!-- moderate -->", "<!-- /moderate -->"


SHAPING_BEGIN, SHAPING_END = "<!-- shaping -->", "<!-- /shaping -->"


def write_section(begin, end, only, started, load0, how, table):
    """BENCH_ONLY=...: replaces that row's section of RESULTS (between `begin` and `end`),
    keeping the rest; appended when there is none."""
    path = Path(RESULTS)
    old = path.read_text() if path.exists() else "# make bench results\n"
    commit = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    section = "\n".join([
        begin,
        "Measured alone (`%s`, not in the run above): %s (UTC), commit %s, load average at "
        "start %.1f, at end %.1f; %s." % (only, started.strftime("%Y-%m-%d %H:%M"), commit,
                                         load0, os.getloadavg()[0], how),
        "", table, end])
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def write_results(started, load0, micro, text):
    version = re.search(r'"([^"]+)"', (REPO / "core/include/ratelimit/version.h").read_text())
    commit = first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    redis_v = re.search(r"v=(\S+)", first_line(["redis-server", "--version"]))
    knobs = " ".join("%s=%s" % (k, os.environ[k]) for k in
                     ("DUR", "WARM", "ROUNDS", "CONNS", "VARIANTS", "FLOOD", "FLOOD_DUR", "MEM",
                      "MEM_KEYS", "REF_N", "LIVE") if k in os.environ) or "defaults"
    head = ["# make bench results", "",
            "- date: %s (UTC), %.0f min" % (started.strftime("%Y-%m-%d %H:%M"),
                                           (datetime.now(timezone.utc) - started).seconds / 60),
            "- machine: %s; load average at start %.1f, at end %.1f (other work shares the "
            "cores: compare within this run)" % (machine(), load0, os.getloadavg()[0]),
            "- versions: module %s (commit %s), %s, Redis %s, kernel %s, wrk %s" % (
                version.group(1) if version else "?", commit,
                first_line([NGINX, "-v"]).replace("nginx version: ", ""),
                redis_v.group(1) if redis_v else "?", platform.release(),
                first_line(["wrk", "-v"]).split(" [")[0].replace("wrk ", "")),
            "- settings: %s; wrk -t1 -c%d, %d s per run after %d s of warm-up, %d interleaved "
            "rounds, 10,000 random keys" % (knobs, CONNS, DUR, WARM, ROUNDS), "",
            "Produced by `make bench` (bench/bench.py); CPU figures from /proc (nginx workers) "
            "and `INFO cpu` (Redis), calls from `INFO commandstats`.", ""]
    body = head + [text]
    if micro:
        body += ["", "Core micro-benchmarks (build/core/core_bench):", "", "```", micro, "```"]
    Path(RESULTS).write_text("\n".join(body) + "\n")


if __name__ == "__main__":
    sys.exit(main())
