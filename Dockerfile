# Debian's nginx with ngx_http_ratelimit_module.
#
#   docker build -t nginx-ratelimit .
#   docker run --rm --network host nginx-ratelimit
#
# The image runs conf-examples/quickstart.conf: nginx on 127.0.0.1:8080 in front of a demo
# backend, limits kept in a Redis expected on 127.0.0.1:6379 (with --network host, a Redis on the
# host). Without Redis requests are decided by the local shared-memory buckets
# (ratelimit_failure_mode local). For your own setup, mount a configuration over
# /etc/nginx/nginx.conf that starts with
#   load_module /usr/lib/nginx/modules/ngx_http_ratelimit_module.so;

# --- build: the module against the nginx-dev sources of the same Debian nginx ---------------
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx nginx-dev libhiredis-dev g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only the sources: a host build/ directory holds paths that mean nothing here.
COPY Makefile config config.make CMakeLists.txt ./
COPY core/ core/
COPY ngx_module/ ngx_module/
RUN make module

# --- runtime: Debian's nginx plus the module ------------------------------------------------
FROM debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx libhiredis0.14 libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/ngx_http_ratelimit_module.so /usr/lib/nginx/modules/ngx_http_ratelimit_module.so
COPY conf-examples/ /usr/share/doc/ngx-http-ratelimit-module/examples/
RUN mkdir -p /var/lib/nginx-ratelimit/logs /var/lib/nginx-ratelimit/tmp \
 && sed -e 's|@MODULE@|/usr/lib/nginx/modules/ngx_http_ratelimit_module.so|g' \
        -e 's|@PREFIX@|/var/lib/nginx-ratelimit|g' \
        -e 's|@REDIS_PORT@|6379|g' \
        /usr/share/doc/ngx-http-ratelimit-module/examples/quickstart.conf > /etc/nginx/nginx.conf \
 && ln -sf /dev/stderr /var/lib/nginx-ratelimit/logs/error.log \
 && ln -sf /dev/stdout /var/lib/nginx-ratelimit/logs/access.log \
 && nginx -t
EXPOSE 8080
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
