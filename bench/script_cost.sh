#!/usr/bin/env bash
# Redis CPU per decision of batched script variants, beside one pipelined SET PX: which parts of a
# script body cost what. Each bench/script-cost/<name>.lua decides one bucket per key (KEYS);
# its first line says its arguments: "-- ARGS: none", "once" (count period burst cost, once per
# call) or "per-key" (those four per key, as today's script). redis-benchmark -c 50 -P 16, random
# keys out of 10,000, Redis CPU from INFO cpu. Also today's script (core/src/script.cpp) as
# "today", with N limits in one request.
#   bench/script_cost.sh [name ...]        env: NS="1 16 50" (keys per call), PORT, CALLS
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${PORT:-6491}
NS=${NS:-"1 16 50"}
CALLS=${CALLS:-320000}   # decisions per measurement
RUN=$(mktemp -d -t rl-script-cost.XXXX)
python3 - "$HERE/../core/src/script.cpp" > "$RUN/today.lua" <<'PY'
import re, sys
print("-- ARGS: per-key")
print(re.search(r'R"lua\((.*?)\)lua"', open(sys.argv[1]).read(), re.S).group(1))
PY
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$RUN" >/dev/null &
RPID=$!
trap 'kill $RPID; wait $RPID 2>/dev/null || true; rm -rf "$RUN"' EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
cli() { redis-cli -p "$PORT" "$@"; }
cpu() { cli INFO cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/{s+=$2} END{printf "%.6f", s}'; }
run() {  # label decisions_per_call commands args...
  local label=$1 d=$2 n=$3; shift 3
  cli FLUSHALL >/dev/null
  local c0 c1; c0=$(cpu)
  redis-benchmark -p "$PORT" -c 50 -P 16 -n "$n" -r 10000 --csv "$@" >/dev/null 2>&1
  c1=$(cpu)
  awk -v a="$c0" -v b="$c1" -v n="$n" -v d="$d" -v l="$label" \
      'BEGIN{printf "%-28s %6.2f us/decision\n", l, (b-a)*1e6/(n*d)}'
}
run "SET PX (reference)" 1 "$CALLS" SET 'rl:ref:__rand_int__' 'v2 99999000 1000 1795946804450' PX 60000
names=("$@")
[ ${#names[@]} -gt 0 ] || names=($(cd "$HERE/script-cost" && ls *.lua | sed 's/\.lua$//') today)
for s in "${names[@]}"; do
  file="$HERE/script-cost/$s.lua"; [ "$s" = today ] && file="$RUN/today.lua"
  kind=$(head -1 "$file" | sed -n 's/^-- ARGS: *//p')
  sha=$(cli -x SCRIPT LOAD < "$file")
  for N in $NS; do
    keys=(); args=()
    for _ in $(seq "$N"); do keys+=("rl:k__rand_int__"); done
    case $kind in
      once) args=(1 1000 1000000 1) ;;
      per-key) for _ in $(seq "$N"); do args+=(1 1000 1000000 1); done ;;
    esac
    run "$s N=$N" "$N" $((CALLS / N)) EVALSHA "$sha" "$N" "${keys[@]}" "${args[@]}"
  done
done
