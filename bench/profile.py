#!/usr/bin/env python3
"""Where the time goes: one bench variant under wrk load, with `perf record -g` on the nginx
worker and on redis-server, then `perf report` summaries (by DSO and by symbol).

Usage: python3 bench/profile.py [variant]      (default: ratelimit; see bench.py)
Environment: SCENARIO (open: random keys, limits never hit, default; flood: 40 connections on
one key over its limit, see bench.py), DUR (s of perf recording, default 10), OUT (directory
for perf data and reports, default build/profile), CALLGRAPH (perf --call-graph mode,
default dwarf,16384).
Needs linux-perf (Debian) and root (or perf_event_paranoid <= 1). Also prints the worker's
syscalls and malloc/calloc calls per request (uprobes on libc, removed afterwards).
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

DUR = int(os.environ.get("DUR", "10"))
OUT = Path(os.environ.get("OUT", bench.REPO / "build" / "profile"))
SYSCALL_SECS = 4
SYSCALLS = ["epoll_wait", "recvfrom", "read", "readv", "sendto", "write", "writev"]
SCENARIO = os.environ.get("SCENARIO", "open")
CALLGRAPH = os.environ.get("CALLGRAPH", "dwarf,16384")


ALLOCS = ["malloc", "calloc"]  # hiredis makes its reply objects with calloc


def malloc_probe():
    """Adds uprobes on libc's malloc and calloc (to count calls per request); returns the
    cleanup, or None when perf cannot add them."""
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    if all("probe_libc:" + f in listed for f in ALLOCS):
        return lambda: None
    args = [a for f in ALLOCS if "probe_libc:" + f not in listed for a in ("-a", f)]
    if subprocess.run(["perf", "probe", "-q", "-x", libc] + args,
                      capture_output=True).returncode != 0:
        return None
    return lambda: subprocess.run(["perf", "probe", "-q"] +
                                  [a for f in args[1::2] for a in ("-d", "probe_libc:" + f)],
                                  capture_output=True)


def report(data, name, *args):
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                          "--percent-limit", "0.7", *args],
                         capture_output=True, text=True).stdout
    (OUT / name).write_text(out)
    return out


def main():
    variant = sys.argv[1] if len(sys.argv) > 1 else "ratelimit"
    per_req = {}
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rl-profile-") as d:
        run = Path(d)
        os.chmod(run, 0o755)
        (run / "tmp").mkdir()
        redis = bench.start_redis(run)
        nginx = None
        cleanup = malloc_probe()
        try:
            nginx = bench.start_nginx(run, variant, redis, scenario=SCENARIO)
            env = dict(os.environ, NKEYS="10000")
            if SCENARIO == "flood":
                env["KEY"] = "flood"
            load = subprocess.Popen(
                ["wrk", "-t1", "-c%d" % (bench.FLOOD_CONNS if SCENARIO == "flood" else bench.CONNS),
                 "-d%ds" % (DUR + 4 + SYSCALL_SECS), "-s",
                 str(bench.HERE / "peers" / "wrk-keys.lua"),
                 "http://127.0.0.1:%d/" % nginx["port"]],
                stdout=subprocess.PIPE, text=True, env=env)
            time.sleep(2)
            t0 = time.monotonic()
            ticks0 = {who: bench.cpu_ticks(pid) for who, pid in
                      (("nginx", nginx["worker"]), ("redis", redis["pid"]))}
            cmds = {}
            for who, pid in (("nginx", nginx["worker"]), ("redis", redis["pid"])):
                cmds[who] = subprocess.Popen(
                    ["perf", "record", "-q", "-F", "999", "--call-graph", CALLGRAPH, "-p", str(pid),
                     "-o", str(OUT / ("%s-%s.data" % (variant, who))), "--", "sleep", str(DUR)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p in cmds.values():
                p.wait()
            secs = time.monotonic() - t0
            events = ["syscalls:sys_enter_" + c for c in SYSCALLS]
            if cleanup:
                events += ["probe_libc:" + f for f in ALLOCS]
            stat = subprocess.run(
                ["perf", "stat", "-x,", "-e", ",".join(events),
                 "-p", str(nginx["worker"]), "--", "sleep", str(SYSCALL_SECS)],
                capture_output=True, text=True).stderr
            ticks = {who: bench.cpu_ticks(pid) - ticks0[who] for who, pid in
                     (("nginx", nginx["worker"]), ("redis", redis["pid"]))}
            result = load.communicate()[0].strip().splitlines()[-1]
            print(result)
            rps = float(result.split("rps=")[1].split()[0])
            for who, t in ticks.items():
                per_req[who] = t / bench.TICK * 1e6 / (rps * secs)
                print("%s CPU: %.1f us/req (%.0f%% of a core) while recording" % (
                    who, per_req[who], 100.0 * t / bench.TICK / secs))
            counts = {}
            for line in stat.splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith(("syscalls:sys_enter_", "probe_")):
                    counts[fields[2].split(":")[1].replace("sys_enter_", "")] = fields[0]
            # One writev() per response (empty_gif, keep-alive): a better request count for
            # these seconds than wrk's average rate.
            responses = float(counts["writev"]) if counts.get("writev", "").isdigit() else \
                rps * SYSCALL_SECS
            print("nginx worker syscalls and mallocs per response (writev): " + ", ".join(
                "%s %.2f" % (c, float(n) / responses) if n.isdigit() else "%s ?" % c
                for c, n in counts.items()))
        finally:
            if nginx:
                bench.stop_nginx(nginx)
            bench.stop_redis(redis)
            if cleanup:
                cleanup()
    for who in ("nginx", "redis"):
        data = OUT / ("%s-%s.data" % (variant, who))
        print("== %s: by DSO" % who)
        print(report(data, "%s-%s-dso.txt" % (variant, who), "--sort", "dso", "-g", "none"))
        print("== %s: top symbols" % who)
        print("\n".join(report(data, "%s-%s-sym.txt" % (variant, who), "--sort", "dso,sym",
                               "-g", "none").splitlines()[:60]))
        report(data, "%s-%s-callers.txt" % (variant, who), "--sort", "sym", "-g",
               "caller,0.5,callee", "--percent-limit", "2")
    split = str(bench.HERE / "perf_split.py")
    subprocess.run([sys.executable, split, "nginx", str(OUT / ("%s-nginx.data" % variant)),
                    "ngx_http_ratelimit_module", "%.2f" % per_req["nginx"]])
    if per_req["redis"] > 0.5:
        subprocess.run([sys.executable, split, "redis", str(OUT / ("%s-redis.data" % variant)),
                        "%.2f" % per_req["redis"]])
    print("reports in", OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
