#!/bin/sh
# The Docker image's entry point: renders nginx.conf from nginx.conf.template (both next to this
# script) with the environment, then runs the command, by default nginx in the foreground.
# Mount your own nginx.conf.template over the image's to change the configuration; only
# ${RATELIMIT_REDIS}, ${RATELIMIT_BACKEND}, ${RATELIMIT_RESOLVER} and ${RATELIMIT_NODES} are
# replaced, nginx's own $variables are kept.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
: "${RATELIMIT_REDIS:=127.0.0.1:6379}"
: "${RATELIMIT_BACKEND:=127.0.0.1:8081}"
: "${RATELIMIT_RESOLVER:=127.0.0.11}"
: "${RATELIMIT_NODES:=1}"
export RATELIMIT_REDIS RATELIMIT_BACKEND RATELIMIT_RESOLVER RATELIMIT_NODES

if [ -f "$here/nginx.conf.template" ]; then
    envsubst '${RATELIMIT_REDIS} ${RATELIMIT_BACKEND} ${RATELIMIT_RESOLVER} ${RATELIMIT_NODES}' \
        <"$here/nginx.conf.template" >"$here/nginx.conf.tmp"
    mv "$here/nginx.conf.tmp" "$here/nginx.conf"
fi

exec "$@"
