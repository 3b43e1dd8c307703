"""Bounded logs: warnings that clients or load cause are written about once per second per
worker and reason, with the occurrences held back counted in the next line."""

import http.client
import re
import time

HELD = re.compile(r"\(and (\d+) more in the last (\d+)s\)")


def occurrences(log, text):
    """Lines containing `text`, and the occurrences they stand for (1 + those held back)."""
    lines = [line for line in log.splitlines() if text in line]
    total = 0
    for line in lines:
        m = HELD.search(line)
        total += 1 + (int(m.group(1)) if m else 0)
    return lines, total


def test_junk_costs_write_a_handful_of_lines_with_the_count(nginx_factory):
    n = nginx_factory("""
    ratelimit_policy p rate=1r/h burst=100000;
    server {
        listen 127.0.0.1:@PORT@;
        location / {
            ratelimit $http_x_key policy=p cost=$arg_cost;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }
    }
""")
    conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
    start = time.monotonic()
    for i in range(400):
        conn.request("GET", "/?cost=junk%d" % i, headers={"X-Key": "k"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200
    elapsed = time.monotonic() - start
    time.sleep(1.1)
    # The next one after a quiet second is written, with the count of those held back.
    conn.request("GET", "/?cost=last", headers={"X-Key": "k"})
    r = conn.getresponse()
    r.read()
    conn.close()
    # Every junk cost counted 1: 100000 - 401.
    assert r.getheader("X-RateLimit-Remaining") == "99599"

    lines, total = occurrences(n.log(), "is not a non-negative integer, counting 1")
    assert 2 <= len(lines) <= elapsed + 3, lines
    assert total == 401, lines
    assert 'cost "last"' in lines[-1] and HELD.search(lines[-1]), lines[-1]
    assert "[warn]" in lines[0] and HELD.search(lines[0]) is None
