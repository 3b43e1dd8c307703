#!/usr/bin/env python3
"""make bench: this module against its peers, in one run on this machine, printed as a table.

Variants (each: one nginx worker, `location / { <limiter>; empty_gif; }`, wrk -t1 -c50 with a
random X-Api-Key out of 10,000 per request, limits never hit, so every request is decided):
  baseline     no limiter
  limit_req    nginx's own limit_req (per node, shared memory)
  openresty    access_by_lua + lua-resty-redis + EVALSHA token bucket (bench/peers/)
  ratelimit    this module, Redis mode (shared, exact)
  rl-local     this module, local mode (shared memory)
Rounds are interleaved (a b c d e, a b c d e, ...) so drift on a noisy machine hits every
variant alike; the table shows medians and ratios against the baseline of the same run.

Environment: DUR (s, default 8), WARM (s, 2), ROUNDS (3), CONNS (50), VARIANTS (all).
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODULE = Path(os.environ.get("RL_MODULE", REPO / "build" / "ngx_http_ratelimit_module.so"))
NGINX = "/usr/sbin/nginx"
DUR = int(os.environ.get("DUR", "8"))
WARM = int(os.environ.get("WARM", "2"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CONNS = int(os.environ.get("CONNS", "50"))
TICK = os.sysconf("SC_CLK_TCK")

LUA_MODULES = ["/usr/lib/nginx/modules/ndk_http_module.so",
               "/usr/lib/nginx/modules/ngx_http_lua_module.so"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def limiter(variant, redis_port):
    """(main-level lines, http-level lines, location lines) of each variant."""
    if variant == "baseline":
        return "", "", ""
    if variant == "limit_req":
        return ("", "limit_req_zone $http_x_api_key zone=z:10m rate=100000r/s;",
                "limit_req zone=z burst=100000 nodelay;")
    if variant == "openresty":
        loads = "".join("load_module %s;\n" % m for m in LUA_MODULES)
        return (loads,
                'lua_package_path "%s/?.lua;/usr/share/lua/5.1/?.lua;;";\n'
                'init_by_lua_block { require("tb_limiter").init("%s/tokenbucket.lua") }'
                % (HERE / "peers", HERE / "peers"),
                'access_by_lua_block { return require("tb_limiter").check("127.0.0.1", %d, '
                '1000000000, 1000000000) }' % redis_port)
    rl = ("load_module %s;" % MODULE, "", "ratelimit $http_x_api_key policy=bench;")
    policy = "ratelimit_policy bench rate=100000r/s burst=100000;"
    if variant == "ratelimit":
        return (rl[0], "ratelimit_redis 127.0.0.1:%d;\n%s" % (redis_port, policy), rl[2])
    if variant == "rl-local":
        return (rl[0], "ratelimit_zone 16m;\n" + policy, rl[2])
    raise ValueError(variant)


def write_conf(run, variant, port, redis_port, workers=1):
    main, http, loc = limiter(variant, redis_port)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = run / ("%s.conf" % variant)
    conf.write_text(f"""
{main}
{user}
worker_processes {workers};
error_log {run}/error-{variant}.log warn;
pid {run}/nginx-{variant}.pid;
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
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ {loc} empty_gif; }}
    }}
}}
""")
    return conf


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


def wrk(port, seconds, latency=False):
    cmd = ["wrk", "-t1", "-c%d" % CONNS, "-d%ds" % seconds, "-s", str(HERE / "peers" / "wrk-keys.lua"),
           "http://127.0.0.1:%d/" % port]
    if latency:
        cmd.insert(1, "--latency")
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, NKEYS="10000"))
    m = re.search(r"RESULT (.*)", out.stdout)
    if not m:
        raise RuntimeError("wrk failed: " + out.stdout + out.stderr)
    result = dict(kv.split("=") for kv in m.group(1).split())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    result["non2xx"] = non2xx.group(1) if non2xx else "0"
    return {k: float(v) for k, v in result.items()}


def start_nginx(run, variant, redis, workers=1):
    """Starts nginx for `variant`; returns {proc, port, workers: [pid...], worker: first pid}."""
    port = free_port()
    conf = write_conf(run, variant, port, redis["port"], workers)
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


def measure(run, variant, redis):
    nginx = start_nginx(run, variant, redis)
    try:
        port, worker = nginx["port"], nginx["worker"]
        wrk(port, WARM)
        n0, r0 = cpu_ticks(worker), cpu_ticks(redis["pid"])
        result = wrk(port, DUR, latency=True)
        n1, r1 = cpu_ticks(worker), cpu_ticks(redis["pid"])
        requests = max(result["requests"], 1)
        result["nginx_us"] = (n1 - n0) / TICK * 1e6 / requests
        result["redis_us"] = (r1 - r0) / TICK * 1e6 / requests
        return result
    finally:
        stop_nginx(nginx)


def available_variants():
    wanted = os.environ.get("VARIANTS", "baseline limit_req openresty ratelimit rl-local").split()
    missing = [m for m in LUA_MODULES if not Path(m).exists()]
    if "openresty" in wanted and (missing or not Path("/usr/share/lua/5.1/nginx/redis.lua").exists()):
        print("note: openresty variant skipped (libnginx-mod-http-lua / lua-nginx-redis missing)")
        wanted.remove("openresty")
    return wanted


def main():
    if not shutil.which("wrk"):
        print("wrk is missing (apt-get install wrk)")
        return 1
    variants = available_variants()
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as d:
        run = Path(d)
        os.chmod(run, 0o755)
        (run / "tmp").mkdir()
        redis = start_redis(run)
        rport = redis["port"]
        try:
            results = {v: [] for v in variants}
            for rnd in range(ROUNDS):
                for v in variants:
                    subprocess.run(["redis-cli", "-p", str(rport), "FLUSHALL"],
                                   capture_output=True)
                    r = measure(run, v, redis)
                    results[v].append(r)
                    print("round %d %-10s %8.0f req/s  nginx %5.1f us/req  redis %5.1f us/req"
                          % (rnd + 1, v, r["rps"], r["nginx_us"], r["redis_us"]), flush=True)
                    errs = sum(r[k] for k in r if k.startswith("err_"))
                    if errs or r["non2xx"]:
                        print("   errors %d, non-2xx %d" % (errs, r["non2xx"]))
        finally:
            stop_redis(redis)
    print_table(variants, results)
    return 0


def print_table(variants, results):
    med = {v: {k: statistics.median(r[k] for r in results[v]) for k in results[v][0]}
           for v in variants}
    base = med.get("baseline", {}).get("rps")
    print()
    print("| variant | req/s (median of %d) | vs baseline | p50 ms | p99 ms | nginx CPU us/req | "
          "Redis CPU us/req | errors |" % ROUNDS)
    print("|---|---|---|---|---|---|---|---|")
    for v in variants:
        m = med[v]
        errs = sum(sum(r[k] for k in r if k.startswith("err_")) + r["non2xx"] for r in results[v])
        print("| %s | %.0f | %s | %.2f | %.2f | %.1f | %s | %d |" % (
            v, m["rps"], "%.2f" % (m["rps"] / base) if base else "-", m["p50_us"] / 1000,
            m["p99_us"] / 1000, m["nginx_us"],
            "%.1f" % m["redis_us"] if v in ("openresty", "ratelimit") else "-", errs))


if __name__ == "__main__":
    sys.exit(main())
