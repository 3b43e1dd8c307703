#!/usr/bin/env bash
# Starts the quickstart demo (what `make run` does after building):
#   - a local redis-server on 127.0.0.1:$REDIS_PORT (default 6379), or the one already there,
#   - nginx with conf-examples/quickstart.conf on http://127.0.0.1:8080/ in front of a demo backend,
# prints what to try with curl, and stops everything it started on Ctrl-C or SIGTERM.
set -euo pipefail

REDIS_PORT="${REDIS_PORT:-6379}"
NGINX="${NGINX:-/usr/sbin/nginx}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
MODULE="$REPO/build/ngx_http_ratelimit_module.so"
CONF_TEMPLATE="$HERE/quickstart.conf"

die() { echo "run-quickstart: $*" >&2; exit 1; }

[ -f "$MODULE" ] || die "$MODULE is missing; build it with 'make module'"
[ -x "$NGINX" ] || die "$NGINX not found (apt-get install nginx)"
command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
command -v curl >/dev/null || die "curl not found (apt-get install curl)"

RUN_DIR=""
NGINX_PID=""
REDIS_PID=""

cleanup() {
    trap - EXIT INT TERM
    set +e
    if [ -n "$NGINX_PID" ] && kill -0 "$NGINX_PID" 2>/dev/null; then
        echo "stopping nginx (pid $NGINX_PID)"
        kill -TERM "$NGINX_PID" 2>/dev/null
        wait "$NGINX_PID" 2>/dev/null
    fi
    if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
        echo "stopping redis-server (pid $REDIS_PID)"
        kill -TERM "$REDIS_PID" 2>/dev/null
        wait "$REDIS_PID" 2>/dev/null
    fi
    if [ -n "$RUN_DIR" ]; then
        # Retried: a curl still writing into the directory can make the first pass fail.
        for _ in 1 2 3; do rm -rf "$RUN_DIR" 2>/dev/null && break; sleep 0.2; done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Answers 0 when a Redis server replies PONG on 127.0.0.1:$1 (plain bash, no redis-cli needed).
redis_ping() {
    local reply=""
    { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 1 reply <&3 || true
    exec 3<&- 3>&-
    [ "${reply%$'\r'}" = "+PONG" ]
}

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ratelimit-quickstart.XXXXXX")"
# nginx workers run as "nobody" when the master is root: let them read the runtime dir.
chmod 755 "$RUN_DIR"
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/tmp" "$RUN_DIR/redis"

# --- Redis ---------------------------------------------------------------------------------
if redis_ping "$REDIS_PORT"; then
    echo "using the Redis server already answering on 127.0.0.1:$REDIS_PORT"
else
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$RUN_DIR/redis" --logfile "$RUN_DIR/logs/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 50); do
        redis_ping "$REDIS_PORT" && break
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    if ! redis_ping "$REDIS_PORT"; then
        tail -5 "$RUN_DIR/logs/redis.log" >&2 2>/dev/null || true
        die "redis-server did not start on 127.0.0.1:$REDIS_PORT (port taken by something that is not an open Redis?)"
    fi
    echo "started redis-server on 127.0.0.1:$REDIS_PORT (pid $REDIS_PID)"
fi

# --- nginx ---------------------------------------------------------------------------------
CONF="$RUN_DIR/nginx.conf"
sed -e "s|@MODULE@|$MODULE|g" -e "s|@PREFIX@|$RUN_DIR|g" -e "s|@REDIS_PORT@|$REDIS_PORT|g" \
    "$CONF_TEMPLATE" > "$CONF"

"$NGINX" -t -q -p "$RUN_DIR/" -c "$CONF" || die "nginx -t failed for $CONF"

"$NGINX" -p "$RUN_DIR/" -c "$CONF" -g 'daemon off;' &
NGINX_PID=$!

for _ in $(seq 50); do
    curl -s -o /dev/null --max-time 1 http://127.0.0.1:8081/ && break
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
done
if ! kill -0 "$NGINX_PID" 2>/dev/null; then
    tail -5 "$RUN_DIR/logs/error.log" >&2 2>/dev/null || true
    NGINX_PID=""
    die "nginx exited (is 127.0.0.1:8080 or :8081 already in use?)"
fi

cat <<EOF

nginx (pid $NGINX_PID) is protecting a demo backend on http://127.0.0.1:8080/
config: $CONF
logs:   $RUN_DIR/logs/access.log (shows \$ratelimit_status), $RUN_DIR/logs/error.log

Try:
  # anonymous (keyed by client address, 60r/m burst=70): see X-RateLimit-Limit/Remaining/Reset
  curl -i http://127.0.0.1:8080/

  # an API user (keyed by X-Api-Key, 100r/m burst=120); keys starting "admin-" get 1000r/m
  curl -i -H 'X-Api-Key: alice' http://127.0.0.1:8080/

  # use up the anonymous burst: 200s, then 429s; then the headers of the last (rejected) one
  for i in \$(seq 75); do curl -s -o /dev/null -D $RUN_DIR/last.txt -w '%{http_code} ' http://127.0.0.1:8080/; done; echo; cat $RUN_DIR/last.txt

  # the dashboard (open it in a browser), the counters as JSON, Prometheus metrics, one bucket
  http://127.0.0.1:8080/ratelimit/
  curl -s http://127.0.0.1:8080/ratelimit/status
  curl -s http://127.0.0.1:8080/ratelimit/metrics
  curl -s http://127.0.0.1:8080/ratelimit/buckets/user/alice
  curl -s -X DELETE http://127.0.0.1:8080/ratelimit/buckets/user/alice   # refill it

Press Ctrl-C to stop nginx and the Redis server started here.
EOF

# Wait for Ctrl-C / SIGTERM (the traps clean up), or for nginx to stop by itself.
set +e
wait "$NGINX_PID"
status=$?
NGINX_PID=""
echo "nginx exited with status $status" >&2
tail -5 "$RUN_DIR/logs/error.log" >&2 2>/dev/null
exit 1
