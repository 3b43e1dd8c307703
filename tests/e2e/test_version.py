"""The error log names the module and its version (core/include/ratelimit/version.h) when
nginx starts and again on each reload, with the mode the configuration selects."""

import re

from conftest import REPO, wait_for


def version():
    text = (REPO / "core" / "include" / "ratelimit" / "version.h").read_text()
    return re.search(r'#define RATELIMIT_VERSION "([^"]+)"', text).group(1)


def start_lines(nginx):
    return re.findall(r"\[notice\] \d+#\d+: ngx_http_ratelimit_module (\S+) \((\w+) mode\)",
                      nginx.log())


def test_error_log_prints_version_at_start_and_reload(redis, nginx_factory):
    n = nginx_factory(f"""
    ratelimit_redis 127.0.0.1:{redis.port};
    ratelimit_policy p rate=10r/s;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{ ratelimit $remote_addr policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }}
    }}
""")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version())
    assert start_lines(n) == [(version(), "redis")]
    assert n.get("/").status == 200

    n.reload()
    assert wait_for(lambda: len(start_lines(n)) == 2), n.log()
    assert start_lines(n)[1] == (version(), "redis")


def test_error_log_prints_local_mode(nginx_factory):
    n = nginx_factory("""
    ratelimit_policy p rate=10r/s;
    server {
        listen 127.0.0.1:@PORT@;
        location / { ratelimit $remote_addr policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }
    }
""")
    assert start_lines(n) == [(version(), "local")]
