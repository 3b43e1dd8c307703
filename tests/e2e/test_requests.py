"""Kinds of requests beyond a plain GET: subrequests (auth_request, SSI includes), HEAD, and
conditional requests answered 304. Only the main request is limited, and only once."""

import pytest

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"


def site(redis, root, locations):
    return f"""
    ratelimit_redis 127.0.0.1:{redis.port} timeout=2s;
    ratelimit_policy main rate=1r/h burst=10;
    ratelimit_policy sub rate=1r/h burst=10;
    ratelimit_policy tiny rate=1r/h burst=1;
    server {{
        listen 127.0.0.1:@PORT@;
        root {root};
        {locations}
    }}
"""


@pytest.fixture
def www(workdir):
    root = workdir / "www"
    root.mkdir()
    (root / "index.html").write_text("hello\n")
    (root / "page.shtml").write_text(
        'a <!--# include virtual="/inc/1" --> b <!--# include virtual="/inc/2" -->\n')
    return root


def remaining(r):
    return r.header("X-RateLimit-Remaining")


def test_auth_request_subrequest_is_not_charged(redis, nginx_factory, www):
    # The subrequest location has a limit of its own: it applies when /auth is requested
    # directly, never to auth_request's subrequest (the main request is decided, once).
    n = nginx_factory(site(redis, www, f"""
        location /protected {{
            auth_request /auth;
            ratelimit $remote_addr policy=main;
            {BACKEND}
        }}
        location = /auth {{ ratelimit $remote_addr policy=sub; {BACKEND} }}
    """))
    got = [n.get("/protected") for _ in range(3)]
    assert [(r.status, r.header("X-Backend"), remaining(r)) for r in got] == \
        [(200, "yes", "9"), (200, "yes", "8"), (200, "yes", "7")]
    assert all(r.header("X-RateLimit-Limit") == "10" for r in got)
    assert redis.cmd("EXISTS", "rl:sub:127.0.0.1") == 0
    direct = n.get("/auth")
    assert (direct.status, remaining(direct)) == (200, "9")
    assert redis.cmd("EXISTS", "rl:sub:127.0.0.1") == 1


def test_auth_request_with_a_rejected_main_request_never_asks_auth(redis, nginx_factory, www):
    # PREACCESS (the limit) runs before ACCESS (auth_request): a rejected request costs the
    # auth service nothing.
    n = nginx_factory(site(redis, www, f"""
        location /protected {{
            auth_request /auth;
            ratelimit $remote_addr policy=tiny;
            {BACKEND}
        }}
        location = /auth {{ {BACKEND} }}
    """))
    assert n.get("/protected").status == 200
    assert n.get("/protected").status == 429
    # The backend (logging to the same access log) saw one auth call.
    access = (n.dir / "logs" / "access.log").read_text()
    assert access.count("GET /auth HTTP") == 1, access


def test_ssi_includes_are_not_charged(redis, nginx_factory, www):
    n = nginx_factory(site(redis, www, f"""
        location / {{ ssi on; ssi_types *; ratelimit $remote_addr policy=main; }}
        location /inc/ {{ ratelimit $remote_addr policy=sub; {BACKEND} }}
    """))
    r = n.get("/page.shtml")
    assert r.status == 200
    assert r.body == b"a backend /inc/1\n b backend /inc/2\n\n"
    assert remaining(r) == "9"
    assert remaining(n.get("/page.shtml")) == "8"
    assert redis.cmd("EXISTS", "rl:sub:127.0.0.1") == 0


def test_head_requests_carry_headers_and_take_one_token(redis, nginx_factory, www):
    n = nginx_factory(site(redis, www, """
        location / { ratelimit $remote_addr policy=main; }
    """))
    heads = [n.get("/index.html", method="HEAD") for _ in range(2)]
    assert [(r.status, r.body, remaining(r)) for r in heads] == \
        [(200, b"", "9"), (200, b"", "8")]
    assert heads[0].header("X-RateLimit-Limit") == "10"
    assert remaining(n.get("/index.html")) == "7"


@pytest.mark.parametrize("condition", ["If-None-Match", "If-Modified-Since"])
def test_not_modified_responses_carry_headers_and_take_one_token(redis, nginx_factory, www,
                                                                 condition):
    n = nginx_factory(site(redis, www, """
        location / { ratelimit $remote_addr policy=main; }
    """))
    first = n.get("/index.html")
    assert (first.status, remaining(first)) == (200, "9")
    value = first.header("ETag") if condition == "If-None-Match" else first.header("Last-Modified")
    assert value
    got = [n.get("/index.html", {condition: value}) for _ in range(2)]
    assert [(r.status, r.body, remaining(r)) for r in got] == [(304, b"", "8"), (304, b"", "7")]
    assert all(r.header("X-RateLimit-Limit") == "10" for r in got)
