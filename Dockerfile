# syntax=docker/dockerfile:1
# Debian's nginx with the libnginx-mod-http-ratelimit package, built by the same `make deb`
# that CI runs.
#
#   docker build -t nginx-ratelimit .
#   docker run --rm -p 8080:8080 -e RATELIMIT_REDIS=redis.example.net:6379 nginx-ratelimit
#
# The configuration is conf-examples/docker/nginx.conf.template, rendered at every start by
# docker-entrypoint.sh from the environment: RATELIMIT_REDIS (host:port of Redis),
# RATELIMIT_BACKEND (host:port of the application; default: a demo backend inside the
# container), RATELIMIT_RESOLVER (the DNS server that re-resolves the Redis name at each
# reconnection; default Docker's 127.0.0.11) and RATELIMIT_NODES (the number of instances
# sharing the limits; default 1). Without a reachable Redis, requests are decided by each
# container's shared-memory buckets with 1/RATELIMIT_NODES of the limits
# (ratelimit_failure_mode local nodes=N). Mount your own template over
# /etc/nginx/ratelimit/nginx.conf.template to change it. Logs go to stdout/stderr; `docker stop`
# sends SIGQUIT, so nginx finishes the requests in flight. Two instances sharing one Redis:
# conf-examples/docker-compose.yml.
#
# No Docker engine runs where this is developed: tests/pkg/test_dockerfile.py executes the RUN
# steps in order on a Debian host, in a temporary directory holding what the COPY lines copy.
# So RUN steps reach copied files by paths relative to WORKDIR, and apt's lists live in a cache
# mount instead of being deleted.

# --- build: the Debian package, against the nginx-dev of the same Debian nginx -------------
FROM debian:bookworm-slim AS build
RUN --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make
WORKDIR /src
COPY Makefile config config.make README.md CHANGELOG.md ./
COPY core/include/ core/include/
COPY core/src/ core/src/
COPY core/lua/ core/lua/
COPY ngx_module/ ngx_module/
COPY debian/ debian/
COPY conf-examples/ conf-examples/
RUN --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    make deb

# --- runtime: Debian's nginx plus the package -------------------------------------------------
FROM debian:bookworm-slim
WORKDIR /etc/nginx/ratelimit
COPY --from=build /src/build/libnginx-mod-http-ratelimit_*.deb ./
RUN --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ./libnginx-mod-http-ratelimit_*.deb gettext-base curl \
 && rm ./libnginx-mod-http-ratelimit_*.deb
COPY conf-examples/docker/nginx.conf.template conf-examples/docker/docker-entrypoint.sh ./
ENV RATELIMIT_REDIS=127.0.0.1:6379 \
    RATELIMIT_BACKEND=127.0.0.1:8081 \
    RATELIMIT_RESOLVER=127.0.0.11 \
    RATELIMIT_NODES=1
# The image is only built if its configuration passes nginx -t (nothing connects to Redis).
RUN ./docker-entrypoint.sh nginx -t -c "$PWD/nginx.conf"

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS -o /dev/null http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/etc/nginx/ratelimit/docker-entrypoint.sh"]
CMD ["nginx", "-c", "/etc/nginx/ratelimit/nginx.conf", "-g", "daemon off;"]
