// The dashboard served at GET <prefix>: one self-contained page (inline CSS and JavaScript,
// no external assets) that polls `status` every second. Every key and name it shows goes
// through textContent, never markup. "@NONCE@" is replaced per response by the nonce that
// the Content-Security-Policy allows.

#include <string_view>

namespace ngx_ratelimit {
namespace {

const char kPage[] = R"html(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nginx ratelimit</title>
<style nonce="@NONCE@">
:root { --fg: #1d2430; --muted: #5d6778; --line: #d9dee7; --bg: #f5f7fa; --card: #fff;
        --pass: #2f7d4f; --rej: #c2412d; --warn: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: var(--fg); background: var(--bg); }
header { display: flex; flex-wrap: wrap; gap: 6px 24px; align-items: baseline;
         padding: 12px 20px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0 12px 0 0; }
.kv { color: var(--muted); }
.kv b { color: var(--fg); font-weight: 600; }
.kv b.state-up { color: var(--pass); } .kv b.state-down { color: var(--rej); }
main { padding: 16px 20px; display: grid; gap: 16px;
       grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
          padding: 12px 14px; }
section h2 { font-size: 16px; margin: 0 0 4px; }
.sub { color: var(--muted); margin-bottom: 8px; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: 2px 6px 2px 0; vertical-align: top; }
th { color: var(--muted); font-weight: normal; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap;
             padding-right: 12px; }
td.b, th.b { width: 1%; }
.counters { display: grid; grid-template-columns: repeat(4, 1fr); gap: 4px 12px;
            margin: 6px 0 8px; }
.counters div { display: flex; flex-direction: column; }
.counters span { color: var(--muted); font-size: 12px; }
.counters b { font-size: 16px; font-variant-numeric: tabular-nums; }
svg.chart { width: 100%; height: 150px; display: block; background: #fbfcfd;
            border: 1px solid var(--line); border-radius: 4px; }
.legend { font-size: 12px; color: var(--muted); margin: 2px 0 8px; }
.legend .p { color: var(--pass); font-weight: 600; } .legend .r { color: var(--rej); font-weight: 600; }
.key { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-all; }
button { font: inherit; padding: 2px 10px; border: 1px solid var(--line); border-radius: 4px;
         background: #eef1f5; cursor: pointer; }
button:hover { background: #e2e7ee; }
#inspect { grid-column: 1 / -1; }
#inspect form { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
#inspect input { font: inherit; padding: 3px 6px; min-width: 320px; flex: 1;
                 border: 1px solid var(--line); border-radius: 4px; }
#inspect select { font: inherit; padding: 3px 6px; }
pre { background: #fbfcfd; border: 1px solid var(--line); border-radius: 4px; padding: 8px;
      white-space: pre-wrap; word-break: break-all; margin: 8px 0 0; min-height: 2em; }
.error { color: var(--rej); }
.empty { color: var(--muted); font-style: italic; }
</style>
</head>
<body>
<header>
  <h1>nginx ratelimit</h1>
  <span class="kv">version <b id="version">-</b></span>
  <span class="kv">mode <b id="mode">-</b></span>
  <span class="kv">Redis <b id="redis-state">-</b> <span id="redis-address"></span></span>
  <span class="kv">latency <b id="redis-latency">-</b></span>
  <span class="kv">calls <b id="redis-calls">-</b></span>
  <span class="kv">errors / timeouts <b id="redis-errors">-</b></span>
  <span class="kv" id="redis-nodes" hidden></span>
  <span class="kv">updated <b id="updated">never</b></span>
  <span class="kv error" id="poll-error"></span>
</header>
<main id="policies"></main>
<main>
<section id="inspect">
  <h2>Inspect a bucket</h2>
  <form id="inspect-form" autocomplete="off">
    <select id="inspect-policy" aria-label="policy"></select>
    <input id="inspect-key" aria-label="key"
           placeholder="key, percent-encoded as in the top lists (other characters are encoded)">
    <button type="submit" id="inspect-get">Inspect</button>
    <button type="button" id="inspect-refill" hidden>Refill</button>
  </form>
  <pre id="inspect-result"></pre>
</section>
</main>
<script nonce="@NONCE@">
"use strict";
(function () {
  var base = location.pathname.replace(/\/?$/, "/");
  var HISTORY = 300;             // seconds kept; the chart spans what it has, 30 s at least
  var series = {};               // policy -> [{t, passed, rejected}]
  var last = null;               // previous status
  var cards = {};
  var writable = false;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    return e;
  }
  function passedOf(c) { return c.passed + c.local_passed; }
  function rejectedOf(c) { return c.rejected + c.local_rejected + c.rejected_dry_run; }
  function fmtRate(x) { return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2); }

  // Keys go into the path percent-encoded; "%XX" typed by the user is kept as is.
  function encodeKey(text) {
    return text.replace(/%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9._~%-]+/g, function (s) {
      return encodeURIComponent(s).replace(/[!'()*]/g, function (c) {
        return "%" + c.charCodeAt(0).toString(16).toUpperCase();
      });
    });
  }

  function card(p) {
    if (cards[p.name]) { return cards[p.name]; }
    var c = {};
    c.root = el("section");
    c.root.setAttribute("data-policy", p.name);
    c.root.appendChild(el("h2", null, p.name));
    c.sub = c.root.appendChild(el("div", "sub"));
    c.counters = c.root.appendChild(el("div", "counters"));
    c.values = {};
    [["passed", "passed"], ["rejected", "rejected"], ["rejected_dry_run", "dry-run rejected"],
     ["failed_open", "failed open"], ["failed_closed", "failed closed"],
     ["local_passed", "local passed"], ["local_rejected", "local rejected"],
     ["rejected_on_node", "rejected on node"]].forEach(function (f) {
      var d = c.counters.appendChild(el("div"));
      d.appendChild(el("span", null, f[1]));
      c.values[f[0]] = d.appendChild(el("b", "counter-" + f[0], "0"));
    });
    c.chart = c.root.appendChild(svg("svg", {"class": "chart", viewBox: "0 0 600 142",
                                             preserveAspectRatio: "none"}));
    c.legend = c.root.appendChild(el("div", "legend"));
    c.root.appendChild(el("h2", null, "Top rejected keys, last 5 minutes"));
    c.top = c.root.appendChild(el("table", "top"));
    $("policies").appendChild(c.root);
    cards[p.name] = c;
    var opt = el("option", null, p.name);
    opt.value = p.name;
    $("inspect-policy").appendChild(opt);
    return c;
  }

  function drawChart(c, points) {
    while (c.chart.firstChild) { c.chart.removeChild(c.chart.firstChild); }
    var max = 1;
    points.forEach(function (q) { max = Math.max(max, q.passed, q.rejected); });
    var now = points.length ? points[points.length - 1].t : 0;
    var span = points.length ? Math.min(HISTORY, Math.max(30, now - points[0].t)) : 30;
    function xy(q, v) {
      var x = 600 - (now - q.t) / span * 600;
      var y = 132 - v / max * 124;
      return x.toFixed(1) + "," + y.toFixed(1);
    }
    [0.25, 0.5, 0.75].forEach(function (f) {
      c.chart.appendChild(svg("line", {x1: 0, x2: 600, y1: 132 - f * 124, y2: 132 - f * 124,
                                       stroke: "#e6e9ef", "stroke-width": 1}));
    });
    var label = svg("text", {x: 4, y: 14, "font-size": 11, fill: "#5d6778"});
    label.textContent = fmtRate(max) + "/s";
    c.chart.appendChild(label);
    var from = svg("text", {x: 4, y: 138, "font-size": 10, fill: "#5d6778"});
    from.textContent = "-" + Math.round(span) + " s";
    c.chart.appendChild(from);
    var to = svg("text", {x: 596, y: 138, "font-size": 10, fill: "#5d6778", "text-anchor": "end"});
    to.textContent = "now";
    c.chart.appendChild(to);
    [["passed", "#2f7d4f"], ["rejected", "#c2412d"]].forEach(function (s) {
      var line = svg("polyline", {fill: "none", stroke: s[1], "stroke-width": 2,
                                  "class": "series-" + s[0],
                                  points: points.map(function (q) { return xy(q, q[s[0]]); }).join(" ")});
      c.chart.appendChild(line);
    });
    var tail = points.length ? points[points.length - 1] : {passed: 0, rejected: 0};
    c.legend.textContent = "";
    c.legend.appendChild(el("span", "p", "passed " + fmtRate(tail.passed) + "/s"));
    c.legend.appendChild(document.createTextNode("  "));
    c.legend.appendChild(el("span", "r", "rejected " + fmtRate(tail.rejected) + "/s"));
    c.legend.appendChild(document.createTextNode("  now, per second; the chart keeps "
                                                 + HISTORY / 60 + " minutes"));
    c.chart.setAttribute("data-points", String(points.length));
  }

  function drawTop(c, p) {
    c.top.textContent = "";
    if (!p.top.length) {
      c.top.appendChild(el("tr")).appendChild(el("td", "empty", "none"));
      return;
    }
    var head = c.top.appendChild(el("tr"));
    head.appendChild(el("th", null, "key"));
    head.appendChild(el("th", "n", "rejections"));
    head.appendChild(el("th", "b"));
    p.top.forEach(function (t) {
      var tr = c.top.appendChild(el("tr"));
      tr.appendChild(el("td", "key", t.key));
      tr.appendChild(el("td", "n", t.count));
      var b = tr.appendChild(el("td", "b")).appendChild(el("button", null, "inspect"));
      b.type = "button";
      b.addEventListener("click", function () {
        $("inspect-policy").value = p.name;
        $("inspect-key").value = t.key;
        inspect("GET");
      });
    });
  }

  // Cluster masters: address, state and slots, as text.
  function renderNodes(nodes) {
    var box = $("redis-nodes");
    box.hidden = !nodes;
    box.textContent = "";
    if (!nodes) { return; }
    box.appendChild(document.createTextNode("masters"));
    nodes.forEach(function (n) {
      var b = document.createElement("b");
      b.className = "state-" + n.state;
      b.textContent = " " + n.address + " " + n.state;
      box.appendChild(b);
      box.appendChild(document.createTextNode(" (" + n.slots + " slots)"));
    });
  }

  function render(s) {
    writable = !!s.write;
    $("inspect-refill").hidden = !writable;
    $("version").textContent = s.version;
    $("mode").textContent = s.mode;
    var r = s.redis;
    $("redis-state").textContent = r ? r.state : "not used (local mode)";
    $("redis-state").className = r ? "state-" + r.state : "";
    $("redis-latency").textContent = r && r.latency_ms !== null && r.latency_ms !== undefined
        ? r.latency_ms + " ms (avg " + Number(r.latency_avg_ms).toFixed(2) + " ms)" : "-";
    $("redis-calls").textContent = r && r.calls !== undefined ? r.calls : "-";
    $("redis-errors").textContent = r && r.errors !== undefined
        ? r.errors + " / " + r.timeouts : "-";
    $("redis-address").textContent = r ? "at " + r.address : "";
    renderNodes(r && r.nodes);
    $("updated").textContent = new Date(s.time * 1000).toLocaleTimeString();
    s.policies.forEach(function (p) {
      var c = card(p);
      c.sub.textContent = "rate " + p.rate + " (" + fmtRate(p.rate_per_second) + "/s), burst " + p.burst;
      for (var k in c.values) { c.values[k].textContent = String(p.counters[k]); }
      var pts = series[p.name] || (series[p.name] = []);
      var prev = last && last.policies.filter(function (q) { return q.name === p.name; })[0];
      var dt = last ? s.time - last.time : 0;
      if (prev && dt > 0) {
        pts.push({t: s.time,
                  passed: Math.max(0, passedOf(p.counters) - passedOf(prev.counters)) / dt,
                  rejected: Math.max(0, rejectedOf(p.counters) - rejectedOf(prev.counters)) / dt});
        while (pts.length && pts[0].t < s.time - HISTORY) { pts.shift(); }
      }
      drawChart(c, pts);
      drawTop(c, p);
    });
    last = s;
  }

  function poll() {
    fetch(base + "status", {cache: "no-store", credentials: "same-origin"})
      .then(function (res) {
        if (!res.ok) { throw new Error("status: HTTP " + res.status); }
        return res.json();
      })
      .then(function (s) { $("poll-error").textContent = ""; render(s); })
      .catch(function (e) { $("poll-error").textContent = String(e.message || e); })
      .then(function () { setTimeout(poll, 1000); });
  }

  function inspect(method) {
    var policy = $("inspect-policy").value;
    var key = encodeKey($("inspect-key").value);
    var out = $("inspect-result");
    out.className = "";
    if (!policy || !key) { out.textContent = "choose a policy and a key"; return; }
    var url = base + "buckets/" + encodeURIComponent(policy) + "/" + key;
    fetch(url, {method: method, cache: "no-store", credentials: "same-origin"})
      .then(function (res) {
        return res.text().then(function (body) {
          out.className = res.ok ? "" : "error";
          if (method === "DELETE" && res.status === 204) {
            out.textContent = "refilled " + policy + "/" + key;
            return;
          }
          var text = body;
          try { text = JSON.stringify(JSON.parse(body), null, 2); } catch (e) { }
          out.textContent = "HTTP " + res.status + "\n" + text;
        });
      })
      .catch(function (e) { out.className = "error"; out.textContent = String(e.message || e); });
  }

  $("inspect-form").addEventListener("submit", function (e) { e.preventDefault(); inspect("GET"); });
  $("inspect-refill").addEventListener("click", function () { inspect("DELETE"); });
  poll();
})();
</script>
</body>
</html>
)html";

}  // namespace


std::string_view dashboard_page()
{
    return std::string_view(kPage, sizeof(kPage) - 1);
}

}  // namespace ngx_ratelimit
