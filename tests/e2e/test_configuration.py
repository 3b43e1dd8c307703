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
