"""Configuration as operators write it: directives in included files, many limits on one
level, and a zone name that other modules' zones cannot clash with."""

import pytest

from conftest import Nginx

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"


# --- directives in included files ----------------------------------------------------------

def sites(workdir, bad_lines):
    """sites/a1.conf holds `bad_lines` (from its line 3 on); b2..b5.conf are other servers."""
    d = workdir / "sites"
    d.mkdir(parents=True, exist_ok=True)
    (d / "a1.conf").write_text("server {\n    listen 127.0.0.1:1;\n" + bad_lines + "}\n")
    for i in range(2, 6):
        (d / f"b{i}.conf").write_text(
            "server {\n    listen 127.0.0.1:%d;\n    location / { ratelimit $remote_addr "
            "policy=good; }\n}\n" % (i + 1))
    return d


@pytest.mark.parametrize("bad,words", [
    ("    location / { ratelimit $remote_addr policy=nope; }\n",
     ['unknown policy "nope"', "a1.conf:3"]),
    ("    location / { ratelimit $remote_addr policy=$arg_p; }\n",
     ["ratelimit_default_policy", "a1.conf:3"]),
    ("    location / {\n        ratelimit_default_policy ghost;\n    }\n",
     ['unknown policy "ghost"', "a1.conf:4"]),
])
def test_merge_time_errors_name_the_included_file_and_line(workdir, bad, words):
    d = sites(workdir / "bad", bad)
    n = Nginx(workdir / "bad", "ratelimit_policy good rate=1r/s;\n"
              f"    include {d}/*.conf;\n")
    t = n.test_config()
    assert t.returncode != 0
    emerg = [line for line in t.stderr.splitlines() if "[emerg]" in line]
    assert len(emerg) == 1, t.stderr
    for w in words:
        assert w in emerg[0], t.stderr
    assert "b5.conf" not in t.stderr and "nginx.conf" not in emerg[0]


def test_limits_in_included_files_apply(workdir, nginx_factory):
    d = workdir / "inc"
    d.mkdir()
    (d / "policies.conf").write_text("ratelimit_policy p rate=1r/h burst=3;\n")
    (d / "site.conf").write_text(
        "server {\n    listen 127.0.0.1:@PORT@;\n"
        "    location / { ratelimit $remote_addr policy=p; %s }\n}\n" % BACKEND)
    n = nginx_factory(f"include {d}/policies.conf;\n    include {d}/site.conf;\n", start=False)
    # The included server gets the same placeholders as the main file.
    site = (d / "site.conf").read_text().replace("@PORT@", str(n.port)) \
        .replace("@BACKEND@", str(n.backend_port))
    (d / "site.conf").write_text(site)
    n.start()
    assert [n.get("/").header("X-RateLimit-Remaining") for _ in range(3)] == ["2", "1", "0"]
    assert n.get("/").status == 429


# --- more limits than one request can take -------------------------------------------------

def many_limits(n):
    return "\n".join("        ratelimit k%d policy=p;" % i for i in range(n))


def test_more_than_64_limits_fail_nginx_t_naming_the_location(workdir):
    n = Nginx(workdir / "many", f"""
    ratelimit_policy p rate=1r/s;
    server {{
        listen 127.0.0.1:@PORT@;
        location /ok {{
{many_limits(64)}
        }}
        location /crowded {{
{many_limits(65)}
        }}
    }}""")
    t = n.test_config()
    assert t.returncode != 0
    assert "[emerg]" in t.stderr
    assert '65 "ratelimit" limits apply to location "/crowded"' in t.stderr, t.stderr
    assert "at most 64" in t.stderr and "nginx.conf:" in t.stderr


def test_inherited_limits_count_where_they_apply(workdir):
    # 40 at the server level, inherited by /a (none of its own): fine. /b has 70 of its own.
    n = Nginx(workdir / "inherit", f"""
    ratelimit_policy p rate=1r/s;
    server {{
        listen 127.0.0.1:@PORT@;
{many_limits(40)}
        location /a {{ }}
        location /b {{
{many_limits(70)}
        }}
    }}""")
    t = n.test_config()
    assert t.returncode != 0
    assert 'apply to location "/b"' in t.stderr, t.stderr
    ok = Nginx(workdir / "ok", f"""
    ratelimit_policy p rate=1r/s;
    server {{
        listen 127.0.0.1:@PORT@;
{many_limits(64)}
        location /a {{ }}
    }}""")
    assert ok.test_config().returncode == 0


def test_64_limits_on_one_request_are_decided(nginx_factory):
    n = nginx_factory(f"""
    ratelimit_policy p rate=1r/h burst=2;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
{many_limits(64)}
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}
    }}""")
    r = n.get("/")
    assert (r.status, r.header("X-Status"), r.header("X-RateLimit-Remaining")) == \
        (200, "PASSED", "1")
    n.get("/")
    assert n.get("/").status == 429


# --- the module's zone and an operator's zone named "ratelimit" ----------------------------

def test_operator_zone_named_ratelimit_does_not_clash(nginx_factory):
    n = nginx_factory(f"""
    limit_req_zone $binary_remote_addr zone=ratelimit:1m rate=1r/m;
    ratelimit_zone 1m;
    ratelimit_policy p rate=1r/h burst=5;
    server {{
        listen 127.0.0.1:@PORT@;
        location /ours {{ ratelimit $remote_addr policy=p; {BACKEND} }}
        location /theirs {{ limit_req zone=ratelimit; {BACKEND} }}
    }}""")
    assert [n.get("/ours").header("X-RateLimit-Remaining") for _ in range(2)] == ["4", "3"]
    assert n.get("/theirs").status == 200
    assert n.get("/theirs").status == 503  # limit_req's own zone works too
    assert n.get("/ours").header("X-RateLimit-Remaining") == "2"
