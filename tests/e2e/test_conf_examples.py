"""Every configuration shipped in conf-examples/ (and the one in README.md) passes `nginx -t`
with the built module; a bad policy fails it with a message naming the directive and the value.

Snippets (every conf-examples/*.conf but quickstart.conf) are http-block contents, wrapped as
    load_module <module>; pid ...; error_log ...; events {} http { <snippet> }
quickstart.conf is a whole nginx.conf with @MODULE@, @PREFIX@ and @REDIS_PORT@ placeholders.
`nginx -t` does not connect to Redis (ratelimit_redis only resolves its address), so no Redis
is needed here."""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "conf-examples"
MODULE = REPO / "build" / "ngx_http_ratelimit_module.so"
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")

SNIPPETS = sorted(p for p in EXAMPLES.glob("*.conf") if p.name != "quickstart.conf")


def require_module():
    assert MODULE.is_file(), f"{MODULE} is missing: build it with `make module`"


def nginx_t(prefix, conf):
    """Runs `nginx -t` on conf with prefix as the nginx prefix; returns the CompletedProcess."""
    return subprocess.run(
        [NGINX, "-t", "-p", f"{prefix}/", "-c", str(conf)],
        capture_output=True, text=True, timeout=30,
    )


def wrap_snippet(tmp, snippet_text):
    tmp.chmod(0o755)
    (tmp / "logs").mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"load_module {MODULE};\n"
        f"pid {tmp}/nginx.pid;\n"
        f"error_log {tmp}/error.log;\n"
        "events {}\n"
        "http {\n"
        f"{snippet_text}\n"
        "}\n"
    )
    return conf


def test_there_are_snippets():
    names = {p.name for p in SNIPPETS}
    for expected in ("api-roles.conf", "allowlist.conf", "user-and-global.conf", "cost.conf",
                     "dry-run.conf", "local-mode.conf", "sentinel.conf", "tls.conf",
                     "cluster.conf", "from-limit-req.conf"):
        assert expected in names


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[p.name for p in SNIPPETS])
def test_snippet_passes_nginx_t(snippet, tmp_path):
    require_module()
    text = snippet.read_text()
    # Protected locations must reach the content phase; `return` would bypass every limit.
    assert not re.search(r"^\s*return\b", text, re.M), f"{snippet.name} uses `return`"
    # nginx -t creates the log files it opens: keep them in tmp_path, not in /var/log/nginx.
    conf = wrap_snippet(tmp_path, text.replace("/var/log/nginx/", f"{tmp_path}/logs/"))
    r = nginx_t(tmp_path, conf)
    assert r.returncode == 0, f"nginx -t failed for {snippet.name}:\n{r.stderr}"
    assert "test is successful" in r.stderr


def render_quickstart(tmp, redis_port="6379"):
    text = (EXAMPLES / "quickstart.conf").read_text()
    for placeholder in ("@MODULE@", "@PREFIX@", "@REDIS_PORT@"):
        assert placeholder in text, f"quickstart.conf lacks {placeholder}"
    text = (text.replace("@MODULE@", str(MODULE))
                .replace("@PREFIX@", str(tmp))
                .replace("@REDIS_PORT@", redis_port))
    assert not re.search(r"@[A-Z_]+@", text), "unrendered placeholder left"
    (tmp / "logs").mkdir(exist_ok=True)
    (tmp / "tmp").mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    return conf


def test_quickstart_passes_nginx_t(tmp_path):
    require_module()
    tmp_path.chmod(0o755)
    conf = render_quickstart(tmp_path)
    r = nginx_t(tmp_path, conf)
    assert r.returncode == 0, f"nginx -t failed for quickstart.conf:\n{r.stderr}"
    assert "test is successful" in r.stderr


def test_run_script_is_executable():
    script = EXAMPLES / "run-quickstart.sh"
    assert script.is_file() and os.access(script, os.X_OK)
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_readme_config_passes_nginx_t(tmp_path):
    """The complete nginx.conf in README.md (the block with load_module) works as pasted,
    once its module path points at the build."""
    require_module()
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", readme, re.S)
    full = [b for b in blocks if "load_module" in b]
    assert full, "README.md has no ```nginx block with load_module"
    text = re.sub(r"load_module\s+\S+;", f"load_module {MODULE};", full[0])
    text = text.replace("/run/nginx.pid", f"{tmp_path}/nginx.pid")
    text = re.sub(r"error_log\s+[^\s;]+", f"error_log {tmp_path}/error.log", text)
    tmp_path.chmod(0o755)
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    r = nginx_t(tmp_path, conf)
    assert r.returncode == 0, f"nginx -t failed for the README config:\n{r.stderr}"


def test_bad_rate_fails_naming_directive_and_value(tmp_path):
    require_module()
    conf = wrap_snippet(tmp_path, "ratelimit_policy x rate=abc;")
    r = nginx_t(tmp_path, conf)
    assert r.returncode != 0, "nginx -t accepted rate=abc"
    assert "ratelimit_policy" in r.stderr
    assert "abc" in r.stderr
