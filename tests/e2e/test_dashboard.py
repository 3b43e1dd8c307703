"""The dashboard in a real browser: Debian's headless Chromium, driven through its DevTools
protocol (over --remote-debugging-pipe), loads the page while real traffic flows and must show
the configured policies, the live counters, a chart of that traffic and the top keys as text.
A screenshot is left at build/dashboard.png for a person to look at."""

import base64
import fcntl
import http.client
import json
import urllib.parse
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"
CHROMIUM = shutil.which("chromium")
SCREENSHOT = REPO / "build" / "dashboard.png"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")


def high_fd(fd):
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 100)
    os.close(fd)
    return high


class DevTools:
    """Chromium with the DevTools protocol on a pipe (fd 3: commands in, fd 4: events out)."""

    def __init__(self, workdir, url):
        cmd_r, self.cmd_w = os.pipe()
        self.out_r, out_w = os.pipe()
        # Above 4, so that the shell's redirections to 3 and 4 cannot overwrite them.
        cmd_r, out_w = (high_fd(fd) for fd in (cmd_r, out_w))
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-pipe", "--user-data-dir=%s" % (workdir / "chromium"),
                "--no-first-run", "--window-size=1280,1700", "--hide-scrollbars", url]
        self.proc = subprocess.Popen(
            ["bash", "-c", 'exec "$0" "$@" 3<&%d 4>&%d' % (cmd_r, out_w)] + args,
            pass_fds=(cmd_r, out_w), stdout=subprocess.DEVNULL,
            stderr=open(workdir / "chromium.log", "w"))
        os.close(cmd_r)
        os.close(out_w)
        self.log_path = workdir / "chromium.log"
        self.buf = b""
        self.next_id = 0
        self.session = None

    def call(self, method, params=None, session=True, timeout=20):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        try:
            os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            raise AssertionError("chromium exited: " + self.log())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while b"\0" not in self.buf:
                chunk = os.read(self.out_r, 1 << 20)
                assert chunk, "chromium closed the DevTools pipe: " + self.log()
                self.buf += chunk
            raw, self.buf = self.buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                return reply["result"]
        raise AssertionError("no DevTools reply to " + method)

    def log(self):
        return self.log_path.read_text(errors="replace")[-3000:]

    def attach_to_page(self):
        for _ in range(100):
            pages = [t for t in self.call("Target.getTargets", session=False)["targetInfos"]
                     if t["type"] == "page"]
            if pages:
                self.session = self.call("Target.attachToTarget",
                                         {"targetId": pages[0]["targetId"], "flatten": True},
                                         session=False)["sessionId"]
                return
            time.sleep(0.1)
        raise AssertionError("chromium opened no page")

    def eval(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.out_r)


# What the page shows, read from its DOM.
PAGE_STATE = """(() => {
  const cards = [];  // [name, card]: a policy may be named "__proto__"
  for (const s of document.querySelectorAll('section[data-policy]')) {
    const counters = {};
    for (const b of s.querySelectorAll('.counters b')) {
      counters[b.className.replace('counter-', '')] = Number(b.textContent);
    }
    const series = {};
    for (const line of s.querySelectorAll('polyline')) {
      const pts = (line.getAttribute('points') || '').trim();
      series[line.getAttribute('class')] = pts ? pts.split(' ').map(p => Number(p.split(',')[1])) : [];
    }
    const keys = [...s.querySelectorAll('td.key')].map(td => td.textContent);
    const overrides = [...s.querySelectorAll('td.key-override')].map(td => td.textContent);
    cards.push([s.dataset.policy,
                {counters, series, keys, overrides, runtime: s.querySelector('.runtime').textContent,
                 sub: s.querySelector('.sub').textContent,
                 legend: s.querySelector('.legend').textContent}]);
  }
  return {cards, scripts: document.scripts.length, version: document.getElementById('version').textContent,
          redis: document.getElementById('redis-state').textContent,
          error: document.getElementById('poll-error').textContent,
          refill: !document.getElementById('inspect-refill').hidden};
})()"""


def test_dashboard_in_headless_chromium(redis, nginx_factory, workdir):
    n = nginx_factory(f"""
    ratelimit_redis 127.0.0.1:{redis.port};
    ratelimit_policy api rate=20r/s burst=20;
    ratelimit_policy login rate=5r/m burst=3;
    ratelimit_policy shaped rate=10r/s burst=10 delay=5;
    ratelimit_policy constructor rate=1r/m burst=2;
    ratelimit_policy toString rate=1r/m burst=2;
    ratelimit_policy __proto__ rate=1r/m burst=2;
    ratelimit_policy hot rate=1000r/s burst=1000 lease=200ms;
    server {{
        listen 127.0.0.1:@PORT@;
        location /api {{ ratelimit $http_x_key policy=api; {BACKEND} }}
        location /login {{ ratelimit $http_x_key policy=login; {BACKEND} }}
        location /shaped {{ ratelimit $http_x_key policy=shaped; {BACKEND} }}
        location /hot {{ ratelimit global policy=hot; {BACKEND} }}
        location /odd {{
            ratelimit $http_x_key policy=constructor;
            ratelimit $http_x_key policy=toString;
            ratelimit $http_x_key policy=__proto__;
            {BACKEND}
        }}
        location /ratelimit/ {{ ratelimit_api write; }}
    }}
    """)
    hostile = '<img src=x onerror="document.title=1">"\\'
    stop = threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            n.get("/api", {"X-Key": "client-%d" % (i % 3)})
            n.get("/api", {"X-Key": "heavy"})
            n.get("/hot")  # about 50 r/s on one key: hot, decided from leases
            if i % 4 == 0:
                n.get("/login", {"X-Key": hostile})
                n.get("/odd", {"X-Key": "odd"})
            i += 1
            time.sleep(0.01)

    def shaped_traffic():  # one client at a time: past the first 5, each waits its turn
        while not stop.is_set():
            n.get("/shaped", {"X-Key": "s"})

    # Runtime limits the page lists: a key override (one of them a hostile key) and a policy
    # change.
    for path, body in (("limits/api/partner", '{"unlimited": true}'),
                       ("limits/api/" + urllib.parse.quote(hostile, safe=""), '{"burst": 7}'),
                       ("policies/login", '{"burst": 4}')):
        conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        conn.request("PUT", "/ratelimit/" + path, body=body)
        assert conn.getresponse().status == 200, path
        conn.close()

    t = threading.Thread(target=traffic)
    t.start()
    shaper = threading.Thread(target=shaped_traffic)
    shaper.start()
    browser = DevTools(workdir, "http://127.0.0.1:%d/ratelimit/" % n.port)
    try:
        browser.attach_to_page()
        time.sleep(6)  # real seconds of polling while the traffic runs
        stop.set()
        t.join()
        shaper.join()
        time.sleep(2.5)  # two more polls: the page catches up with the final counters

        state = browser.eval(PAGE_STATE)
        state["cards"] = dict(state["cards"])
        status = json.loads(n.get("/ratelimit/status").body)
        assert state["error"] == ""
        # Names that are also properties of every JavaScript object (defect 11 of issue 15).
        odd = ("constructor", "toString", "__proto__")
        assert set(state["cards"]) == {"api", "login", "shaped", "hot", *odd}
        assert state["version"] == status["version"] and state["redis"] == "up"
        assert state["refill"] is True
        assert state["scripts"] == 1, "a key became markup"
        for p in status["policies"]:
            card = state["cards"][p["name"]]
            shown = {k: v for k, v in card["counters"].items()}
            assert shown == p["counters"], p["name"]
            assert [k for k in card["keys"]] == [t["key"] for t in p["top"]]
        for name in odd:
            card = state["cards"][name]
            assert 2 <= card["counters"]["passed"] <= 3 and card["counters"]["rejected"] > 0, name
            assert card["keys"] == ["odd"], name
        api = state["cards"]["api"]
        assert api["counters"]["passed"] > 50 and api["counters"]["rejected"] > 20
        # The chart drew the traffic: points above the baseline (y=132) for both series.
        for series in ("series-passed", "series-rejected"):
            ys = api["series"][series]
            assert len(ys) >= 4, series
            assert min(ys) < 120, (series, ys)
        # Delayed requests beside passed and rejected ones: counted, and a series of their own.
        shaped = state["cards"]["shaped"]
        assert shaped["counters"]["delayed"] > 20, shaped["counters"]
        ys = shaped["series"]["series-delayed"]
        assert len(ys) >= 4 and min(ys) < 120, ys
        assert "delayed" in shaped["legend"]
        # Leases: the policy's line says how many requests they decided, as status counts them.
        lease = [p for p in status["policies"] if p["name"] == "hot"][0]["lease"]
        assert lease["decisions"] > 0
        assert "lease 200 ms: %d decided from leases, %d leases of" % (
            lease["decisions"], lease["leases"]) in state["cards"]["hot"]["sub"]
        assert "lease" not in api["sub"]
        # The hostile key is listed as text, percent-encoded as the buckets path takes it.
        login = state["cards"]["login"]
        assert login["keys"] and login["keys"][0].startswith("%3Cimg%20src%3Dx")
        # Runtime limits: the overrides listed (keys as text), the policy change in force.
        assert sorted(api["overrides"]) == sorted(
            ["partner", urllib.parse.quote(hostile, safe="")]), api["overrides"]
        assert "2 key overrides" in api["runtime"] and "configuration" in api["runtime"]
        assert "burst 4 (from the API)" in login["runtime"], login["runtime"]
        assert browser.eval("document.title") == "nginx ratelimit"

        # The inspect form reads the bucket of a top key through the API.
        result = browser.eval("""(async () => {
            document.querySelector('section[data-policy="login"] td button').click();
            for (let i = 0; i < 50; i++) {
              const t = document.getElementById('inspect-result').textContent;
              if (t) return t;
              await new Promise(r => setTimeout(r, 100));
            }
            return '';
        })()""")
        assert result.startswith("HTTP 200") and '"exists": true' in result, result

        shot = browser.call("Page.captureScreenshot", {"format": "png"})
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
        assert SCREENSHOT.stat().st_size > 10000
    finally:
        stop.set()
        t.join()
        shaper.join()
        browser.close()
