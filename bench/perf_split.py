#!/usr/bin/env python3
"""Splits a `perf record --call-graph dwarf` profile of an nginx worker or of redis-server into
who the time is spent for, from each sample's stack (see bench/profile.py).

  perf_split.py nginx <perf.data> [module .so name [µs per request]]
  perf_split.py redis <perf.data> [µs per request]
With µs per request (the process's CPU per request while recording), shares are also shown
in µs per request.

nginx: each sample goes to the innermost frame that is nginx's or the module's own code
(libc, libstdc++, hiredis and the kernel are charged to whoever called them; nginx helpers such
as ngx_palloc or ngx_sprintf to their caller), then split by kernel or user leaf.
redis: by the outermost phase of a command on the stack (redis.call inside the script, the Lua
VM, EVALSHA around it, the rest of command dispatch, reading/parsing, writing replies, cron).
"""

import subprocess
import sys
from collections import Counter

NGX_HELPERS = {"ngx_palloc", "ngx_pnalloc", "ngx_pcalloc", "ngx_pmemalign", "ngx_pfree",
               "ngx_vslprintf", "ngx_sprintf", "ngx_snprintf", "ngx_slprintf", "ngx_list_push",
               "ngx_array_push", "ngx_rbtree_insert", "ngx_rbtree_delete", "ngx_alloc",
               "ngx_calloc", "ngx_shmtx_lock", "ngx_shmtx_unlock", "ngx_time_update",
               "ngx_post_event", "ngx_unix_send", "ngx_unix_recv", "ngx_handle_read_event",
               "ngx_handle_write_event", "ngx_event_add_timer", "ngx_event_del_timer",
               "[unknown]"}

REDIS_PHASES = [  # (frame on the stack, phase), outermost phase that matches wins
    ("serverCron", "cron"),
    ("beforeSleep", "replies: write + beforeSleep"),
    ("writeToClient", "replies: write + beforeSleep"),
    ("handleClientsWithPendingWrites", "replies: write + beforeSleep"),
    ("readQueryFromClient", "read + parse (networking)"),
    ("processCommand", "command dispatch (lookup, ACL, stats)"),
    ("evalGenericCommand", "EVALSHA: script lookup, args, reply conversion"),
    ("evalShaCommand", "EVALSHA: script lookup, args, reply conversion"),
    ("lua_pcall", "Lua VM: script body (match, format, maths)"),
    ("scriptCall", "redis.call(): GET/SET/DEL/TIME"),
]


def samples(data):
    out = subprocess.run(["perf", "script", "-i", data, "-F", "sym,dso,ip"],
                         capture_output=True, text=True).stdout
    for block in out.split("\n\n"):
        frames = []
        for line in block.strip().splitlines():
            line = line.strip()
            if not line or " " not in line:
                continue
            _, rest = line.split(" ", 1)
            sym, _, dso = rest.rpartition(" (")
            frames.append((sym, dso.rstrip(")")))
        # an inlined frame belongs to the function it was inlined in (the next real frame)
        for i in range(len(frames) - 2, -1, -1):
            if frames[i][1] == "inlined":
                frames[i] = (frames[i][0], frames[i + 1][1])
        if frames:
            yield frames  # leaf first


def nginx_owner(frames, module):
    """("module" or "nginx", the innermost frame of that owner)."""
    for sym, dso in frames:
        if module in dso and not sym.startswith(("std::", "__", "operator", "void std::")):
            return "module", sym
        if dso.endswith("/nginx") and sym.startswith("ngx_") and sym not in NGX_HELPERS:
            return "nginx", sym
    return "nginx", "?"  # no frame of ours: event loop start-up, interrupts


def split_nginx(data, module):
    count = Counter()
    syms = Counter()
    for frames in samples(data):
        owner, where = nginx_owner(frames, module)
        leaf_sym, leaf_dso = frames[0]
        if "kernel" in leaf_dso:
            part = "kernel"
        elif module in leaf_dso or (owner == "nginx" and leaf_dso.endswith("/nginx")):
            part = "own code"
        elif "libc.so" in leaf_dso:
            part = "libc (malloc/free/memcpy)"
        elif "libstdc++" in leaf_dso:
            part = "libstdc++"
        elif "hiredis" in leaf_dso:
            part = "hiredis"
        elif leaf_dso.endswith("/nginx"):
            part = "nginx helpers (pool, sprintf)"
        else:
            part = "other (%s)" % leaf_dso.rsplit("/", 1)[-1]
        count[(owner, part)] += 1
        if owner == "module":
            syms[where.replace("(anonymous namespace)::", "")[:100]] += 1
    return count, syms


def split_redis(data):
    count = Counter()
    leaves = Counter()
    for frames in samples(data):
        names = {sym for sym, _ in frames}
        phase = "other"
        if names & {"__GI___writev", "__libc_write", "__GI___libc_write"}:
            phase = "replies: write + beforeSleep"
        elif "epoll_wait" in names:
            phase = "event loop (epoll_wait)"
        for frame, label in REDIS_PHASES:
            if frame in names:
                phase = label
        kernel = "kernel" if "kernel" in frames[0][1] else "user"
        count[(phase, kernel)] += 1
        if phase.startswith("Lua VM"):
            leaves["%s (%s)" % (frames[0][0][:60], frames[0][1].rsplit("/", 1)[-1])] += 1
    return count, leaves


def main():
    what, data = sys.argv[1], sys.argv[2]
    if what == "nginx":
        count, syms = split_nginx(data, sys.argv[3] if len(sys.argv) > 3 else "ratelimit")
        us = float(sys.argv[4]) if len(sys.argv) > 4 else None
    else:
        count, syms = split_redis(data)
        us = float(sys.argv[3]) if len(sys.argv) > 3 else None
    total = sum(count.values()) or 1
    print("%s: %d samples%s" % (what, total, ", %.1f µs per request" % us if us else ""))
    groups = Counter()
    for (a, _), n in count.items():
        groups[a] += n
    for a, n in groups.most_common():
        parts = ", ".join("%s %.1f%%" % (b, 100.0 * m / total)
                          for (x, b), m in count.most_common() if x == a)
        share = "%5.1f%%" % (100.0 * n / total)
        if us:
            share += " = %5.2f µs" % (us * n / total)
        print("  %-48s %s   (%s)" % (a, share, parts))
    if syms:
        print("  by innermost module function / Lua VM leaf:")
        for s, n in syms.most_common(12):
            print("    %5.1f%%  %s" % (100.0 * n / total, s))


if __name__ == "__main__":
    main()
