// ratelimit_api: status (JSON), metrics (Prometheus text 0.0.4), one bucket read or refilled
// (Redis or the local zone), and the dashboard, under a location's prefix. A bucket request
// in Redis mode waits for Redis in the content phase (r->main->count++, NGX_DONE) and is
// detached from its call by a cleanup when it goes away first.

#include <hiredis/hiredis.h>
#include <sys/random.h>

#include <cstdio>
#include <string>
#include <type_traits>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_adaptive.h"
#include "ngx_ratelimit_api.h"
#include "ngx_ratelimit_counters.h"
#include "ngx_ratelimit_lease.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/api_text.h"
#include "ratelimit/bucket_view.h"
#include "ratelimit/key.h"
#include "ratelimit/overrides.h"
#include "ratelimit/resp.h"
#include "ratelimit/shaping.h"
#include "ratelimit/version.h"

namespace ngx_ratelimit {

std::string_view dashboard_page();  // ngx_ratelimit_dashboard.cpp

namespace {

const char kJson[] = "application/json";
const char kMetricsType[] = "text/plain; version=0.0.4; charset=utf-8";
const char kHtml[] = "text/html; charset=utf-8";
const char kNoncePlaceholder[] = "@NONCE@";

const char* const kStatusLabels[kStatuses] = {
    "", "passed", "rejected", "rejected_dry_run", "skipped", "failed_open", "failed_closed",
    "local_passed", "local_rejected", "delayed", "delayed_dry_run",
};

std::string number(double value)
{
    return ratelimit::format_number(value);
}


// A response.

ngx_int_t add_header(ngx_http_request_t* r, const char* name, std::string_view value)
{
    auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, value.size()));
    if (h == nullptr || p == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(p, value.data(), value.size());
    h->hash = 1;
    h->key.len = ngx_strlen(name);
    h->key.data = (u_char*) name;
    h->value = ngx_str_t{value.size(), p};
    h->lowcase_key = nullptr;
#if (nginx_version >= 1023000)
    h->next = nullptr;
#endif
    return NGX_OK;
}


ngx_int_t send(ngx_http_request_t* r, ngx_uint_t status, const char* type,
               std::string_view body, std::string_view csp = {}, std::string_view allow = {})
{
    r->headers_out.status = status;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type.data = (u_char*) type;
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;
    r->headers_out.content_length_n = off_t(body.size());
    if (add_header(r, "Cache-Control", "no-store") != NGX_OK
        || add_header(r, "X-Content-Type-Options", "nosniff") != NGX_OK
        || (!csp.empty()
            && (add_header(r, "Content-Security-Policy", csp) != NGX_OK
                || add_header(r, "X-Frame-Options", "DENY") != NGX_OK
                || add_header(r, "Referrer-Policy", "no-referrer") != NGX_OK))
        || (!allow.empty() && add_header(r, "Allow", allow) != NGX_OK))
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (body.empty() || r->method == NGX_HTTP_HEAD) {
        r->header_only = 1;
    }
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    ngx_buf_t* b = ngx_create_temp_buf(r->pool, body.size());
    if (b == nullptr) {
        return NGX_ERROR;
    }
    b->last = ngx_cpymem(b->pos, body.data(), body.size());
    b->last_buf = r == r->main ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out{b, nullptr};
    return ngx_http_output_filter(r, &out);
}


ngx_int_t send_error(ngx_http_request_t* r, ngx_uint_t status, std::string_view message,
                     std::string_view allow = {})
{
    std::string body = "{\"error\":";
    ratelimit::append_json_string(body, message);
    body += "}\n";
    return send(r, status, kJson, body, {}, allow);
}


// status

// mode=cluster: the masters as the worker answering sees them.
void append_cluster_nodes(std::string& out)
{
    const ratelimit::ClusterClient* cluster = redis_cluster();
    if (cluster == nullptr) {
        return;
    }
    out += ",\"nodes\":[";
    bool first = true;
    for (const auto& node : cluster->nodes()) {
        out += first ? "{\"address\":" : ",{\"address\":";
        first = false;
        ratelimit::append_json_string(out, node.address->text());
        out += ",\"state\":\"";
        out += node.client->state() == ratelimit::ClientState::down ? "down" : "up";
        out += "\",\"slots\":" + std::to_string(node.slots);
        int64_t latency = node.client->last_latency_ms();
        out += ",\"latency_ms\":" + (latency >= 0 ? std::to_string(latency) : "null");
        out += '}';
    }
    out += ']';
}


void append_redis(std::string& out, MainConf* mcf)
{
    const NodeStats* node = node_stats();
    ratelimit::RedisClient* client = redis_client();
    bool down = (node && read_counter(node->workers_down) > 0)
                || (client && client->state() == ratelimit::ClientState::down);
    out += "{\"address\":";
    // The address only: never user= or password=.
    ratelimit::append_json_string(out, as_view(mcf->redis_peer.name));
    out += ",\"state\":\"";
    out += down ? "down" : "up";
    out += '"';
    if (node == nullptr) {
        out += '}';
        return;
    }
    int64_t count = read_counter(node->latency_count);
    int64_t calls = read_counter(node->script_calls);
    out += ",\"workers_down\":" + std::to_string(read_counter(node->workers_down));
    out += ",\"latency_ms\":";
    out += count ? std::to_string(read_counter(node->last_latency_ms)) : "null";
    out += ",\"latency_avg_ms\":";
    out += count ? number(double(read_counter(node->latency_sum_ms)) / double(count)) : "null";
    out += ",\"calls\":" + std::to_string(read_counter(node->calls));
    out += ",\"errors\":" + std::to_string(read_counter(node->error_replies)
                                           + read_counter(node->disconnects));
    out += ",\"timeouts\":" + std::to_string(read_counter(node->timeouts));
    out += ",\"reconnects\":" + std::to_string(read_counter(node->reconnects));
    out += ",\"in_flight\":" + std::to_string(read_counter(node->in_flight));
    out += ",\"breaker_opened\":" + std::to_string(read_counter(node->breaker_opened));
    out += ",\"breaker_closed\":" + std::to_string(read_counter(node->breaker_closed));
    out += ",\"script_calls\":" + std::to_string(calls);
    out += ",\"decisions_per_script_call\":";
    out += calls ? number(double(read_counter(node->script_decisions)) / double(calls)) : "null";
    append_cluster_nodes(out);
    out += '}';
}


// delay= of a policy and the waits it made: sum and histogram (not cumulative), in ms.
void append_delay(std::string& out, const Policy& policy)
{
    out += ",\"delay\":";
    out += policy.delay == ratelimit::kNoDelay ? "null" : std::to_string(policy.delay);
    const PolicyStats* stats = policy.stats;
    int64_t count = 0;
    std::string buckets;
    for (size_t i = 0; i < kDelayBuckets; i++) {
        int64_t n = stats ? read_counter(stats->delay_buckets[i]) : 0;
        count += n;
        buckets += i ? ",{\"le_ms\":" : "{\"le_ms\":";
        buckets += i + 1 < kDelayBuckets ? std::to_string(kDelayBoundsMs[i]) : "null";
        buckets += ",\"count\":" + std::to_string(n) + "}";
    }
    out += ",\"waits\":{\"count\":" + std::to_string(count) + ",\"sum_ms\":"
           + std::to_string(stats ? read_counter(stats->delay_sum_ms) : 0) + ",\"buckets\":["
           + buckets + "]}";
}


// lease= of a policy and what the node's leases did: null without lease=.
void append_lease(std::string& out, const Policy& policy, ngx_shm_zone_t* zone)
{
    out += ",\"lease\":";
    if (policy.lease_ms == 0) {
        out += "null";
        return;
    }
    const PolicyStats* stats = policy.stats;
    auto count = [stats](const ngx_atomic_t LeaseStats::*field) {
        return std::to_string(stats ? read_counter(stats->lease.*field) : 0);
    };
    out += "{\"period_ms\":" + std::to_string(policy.lease_ms);
    out += ",\"calls\":" + count(&LeaseStats::calls);
    out += ",\"leases\":" + count(&LeaseStats::granted);
    out += ",\"tokens_leased\":" + count(&LeaseStats::tokens);
    out += ",\"tokens_returned\":" + count(&LeaseStats::returned);
    out += ",\"decisions\":" + count(&LeaseStats::decisions);
    out += ",\"keys_leased\":" + std::to_string(leased_keys(zone, stats)) + '}';
}


void append_policy(std::string& out, const Policy& policy, ngx_shm_zone_t* zone)
{
    out += "{\"name\":";
    ratelimit::append_json_string(out, as_view(policy.name));
    out += ",\"rate\":";
    ratelimit::append_json_string(out, ratelimit::format_rate(policy.rate));
    out += ",\"rate_per_second\":" + number(policy.rate.per_second());
    out += ",\"burst\":" + std::to_string(policy.params.burst);
    if (policy.adaptive) {
        // One read of the factor: it may change between two, and the limit shown must be its own.
        double factor = policy_factor(policy);
        ratelimit::BucketParams now = ratelimit::scaled_params(policy.params, factor);
        out += ",\"adaptive\":";
        ratelimit::append_json_string(out, as_view(policy.adaptive_name));
        out += ",\"factor\":" + number(factor);
        out += ",\"rate_per_second_in_force\":"
               + number(double(now.count) * 1000.0 / double(now.period_ms));
        out += ",\"burst_in_force\":" + std::to_string(now.burst);
    } else {
        out += ",\"factor\":1";
    }
    append_delay(out, policy);
    append_lease(out, policy, zone);
    out += ",\"counters\":{";
    const PolicyStats* stats = policy.stats;
    for (size_t s = size_t(Status::passed); s < kStatuses; s++) {
        if (Status(s) == Status::skipped) {
            continue;
        }
        out += s == size_t(Status::passed) ? "\"" : ",\"";
        out += kStatusLabels[s];
        out += "\":" + std::to_string(stats ? read_counter(stats->by_status[s]) : 0);
    }
    out += ",\"rejected_on_node\":"
           + std::to_string(stats ? read_counter(stats->rejected_on_node) : 0);
    out += '}';
    append_runtime_limits_status(out, policy);
    out += ",\"top\":[";
    bool first = true;
    for (const TopKey& top : top_keys(stats)) {
        out += first ? "{\"key\":" : ",{\"key\":";
        ratelimit::append_json_string(out, ratelimit::percent_encode(top.key));
        out += ",\"count\":" + std::to_string(top.count) + "}";
        first = false;
    }
    out += "]}";
}


std::string status_json(MainConf* mcf, LocConf* lcf)
{
    std::string out = "{\"version\":";
    ratelimit::append_json_string(out, ratelimit::kVersion);
    out += ",\"mode\":\"";
    out += mode_name(mcf);
    out += '"';
    out += ",\"write\":";
    out += lcf->api == api_write ? "true" : "false";
    ngx_time_t* tp = ngx_timeofday();
    out += ",\"time\":" + number(double(tp->sec) + double(tp->msec) / 1000.0);
    out += ",\"redis\":";
    if (mcf->redis) {
        append_redis(out, mcf);
    } else {
        out += "null";
    }
    out += ",\"policies\":[";
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        if (i) {
            out += ',';
        }
        append_policy(out, policies[i], mcf->zone);
    }
    out += "],\"adaptive\":";
    append_adaptive_status(out, mcf);
    out += "}\n";
    return out;
}


// metrics

void metric_head(std::string& out, const char* name, const char* type, const char* help)
{
    out += "# HELP nginx_ratelimit_";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE nginx_ratelimit_";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}


void metric(std::string& out, const char* name, const std::string& labels, int64_t value)
{
    out += "nginx_ratelimit_";
    out += name;
    if (!labels.empty()) {
        out += '{' + labels + '}';
    }
    out += ' ' + std::to_string(value) + '\n';
}


std::string policy_label(const Policy& policy)
{
    // Policy names are [A-Za-z0-9_-]+: nothing to escape.
    return "policy=\"" + std::string(as_view(policy.name)) + '"';
}


void append_redis_metrics(std::string& out, const NodeStats& node)
{
    struct Counter {
        const char* name;
        const char* help;
        const ngx_atomic_t& value;
    };
    const Counter counters[] = {
        {"redis_calls_total", "Redis calls sent.", node.calls},
        {"redis_error_replies_total", "Redis error replies (NOSCRIPT excepted).",
         node.error_replies},
        {"redis_disconnects_total", "Redis calls failed by a broken connection.",
         node.disconnects},
        {"redis_timeouts_total", "Redis calls that timed out.", node.timeouts},
        {"redis_reconnects_total", "Connections to Redis opened again (probes included).",
         node.reconnects},
        {"redis_breaker_opened_total", "Times a worker marked Redis down.",
         node.breaker_opened},
        {"redis_breaker_closed_total", "Times a worker found Redis up again after down.",
         node.breaker_closed},
        {"redis_script_calls_total", "Calls of the decision script.", node.script_calls},
        {"redis_script_decisions_total", "Requests decided by those script calls.",
         node.script_decisions},
    };
    for (const Counter& c : counters) {
        metric_head(out, c.name, "counter", c.help);
        metric(out, c.name, {}, read_counter(c.value));
    }
    metric_head(out, "redis_calls_in_flight", "gauge", "Redis calls sent and not yet answered.");
    metric(out, "redis_calls_in_flight", {}, read_counter(node.in_flight));
    metric_head(out, "redis_workers_down", "gauge",
                "Workers whose circuit breaker holds Redis down.");
    metric(out, "redis_workers_down", {}, read_counter(node.workers_down));

    metric_head(out, "redis_latency_seconds", "histogram", "Redis round-trip time.");
    int64_t cumulative = 0;
    for (size_t i = 0; i < kLatencyBuckets; i++) {
        cumulative += read_counter(node.latency_buckets[i]);
        std::string le = i + 1 < kLatencyBuckets ? number(double(kLatencyBoundsMs[i]) / 1000.0)
                                                 : "+Inf";
        metric(out, "redis_latency_seconds_bucket", "le=\"" + le + '"', cumulative);
    }
    out += "nginx_ratelimit_redis_latency_seconds_sum "
           + number(double(read_counter(node.latency_sum_ms)) / 1000.0) + '\n';
    metric(out, "redis_latency_seconds_count", {}, read_counter(node.latency_count));
}


// The waits of delay=, per policy, as a histogram in seconds.
void append_delay_metrics(std::string& out, const Policy* policies, ngx_uint_t n)
{
    metric_head(out, "delay_seconds", "histogram",
                "Time requests waited before passing (delay=), per policy.");
    for (ngx_uint_t p = 0; p < n; p++) {
        const PolicyStats* stats = policies[p].stats;
        std::string label = policy_label(policies[p]);
        int64_t cumulative = 0;
        for (size_t i = 0; i < kDelayBuckets; i++) {
            cumulative += stats ? read_counter(stats->delay_buckets[i]) : 0;
            std::string le = i + 1 < kDelayBuckets ? number(double(kDelayBoundsMs[i]) / 1000.0)
                                                   : "+Inf";
            metric(out, "delay_seconds_bucket", label + ",le=\"" + le + '"', cumulative);
        }
        int64_t sum_ms = stats ? read_counter(stats->delay_sum_ms) : 0;
        out += "nginx_ratelimit_delay_seconds_sum{" + label + "} "
               + number(double(sum_ms) / 1000.0) + '\n';
        metric(out, "delay_seconds_count", label, cumulative);
    }
}


// lease=, per policy that has it: what the node's leases did, and the keys leased now.
void append_lease_metrics(std::string& out, const Policy* policies, ngx_uint_t n,
                          ngx_shm_zone_t* zone)
{
    struct Counter {
        const char* name;
        const char* help;
        ngx_atomic_t LeaseStats::*field;
    };
    const Counter counters[] = {
        {"lease_calls_total", "Lease script calls sent (takes and give-backs).",
         &LeaseStats::calls},
        {"leases_total", "Leases of tokens granted to this node.", &LeaseStats::granted},
        {"lease_tokens_total", "Tokens taken from the buckets by this node's leases.",
         &LeaseStats::tokens},
        {"lease_tokens_returned_total", "Unused leased tokens given back to the buckets.",
         &LeaseStats::returned},
        {"lease_decisions_total", "Requests decided from a lease, without a Redis call.",
         &LeaseStats::decisions},
    };
    bool any = false;
    for (ngx_uint_t p = 0; p < n; p++) {
        any = any || policies[p].lease_ms > 0;
    }
    if (!any) {
        return;
    }
    for (const Counter& c : counters) {
        metric_head(out, c.name, "counter", c.help);
        for (ngx_uint_t p = 0; p < n; p++) {
            if (policies[p].lease_ms > 0) {
                const PolicyStats* stats = policies[p].stats;
                metric(out, c.name, policy_label(policies[p]),
                       stats ? read_counter(stats->lease.*c.field) : 0);
            }
        }
    }
    metric_head(out, "leased_keys", "gauge", "Keys that hold a lease on this node now.");
    for (ngx_uint_t p = 0; p < n; p++) {
        if (policies[p].lease_ms > 0) {
            metric(out, "leased_keys", policy_label(policies[p]),
                   leased_keys(zone, policies[p].stats));
        }
    }
}


// mode=cluster: per master, as the worker answering sees it. Addresses need no escaping.
void append_cluster_metrics(std::string& out)
{
    const ratelimit::ClusterClient* cluster = redis_cluster();
    if (cluster == nullptr) {
        return;
    }
    auto nodes = cluster->nodes();
    metric_head(out, "redis_node_up", "gauge",
                "1 unless the answering worker holds this cluster master down.");
    for (const auto& node : nodes) {
        metric(out, "redis_node_up", "node=\"" + node.address->text() + '"',
               node.client->state() == ratelimit::ClientState::down ? 0 : 1);
    }
    metric_head(out, "redis_node_slots", "gauge", "Hash slots each cluster master serves.");
    for (const auto& node : nodes) {
        metric(out, "redis_node_slots", "node=\"" + node.address->text() + '"',
               int64_t(node.slots));
    }
}


std::string metrics_text(MainConf* mcf)
{
    std::string out;
    metric_head(out, "info", "gauge", "The module's version and mode.");
    out += "nginx_ratelimit_info{version=\"";
    out += ratelimit::kVersion;
    out += "\",mode=\"";
    out += mode_name(mcf);
    out += "\"} 1\n";

    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    metric_head(out, "requests_total", "counter",
                "Requests decided, per policy and outcome ($ratelimit_status).");
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        const PolicyStats* stats = policies[i].stats;
        for (size_t s = size_t(Status::passed); s < kStatuses; s++) {
            if (Status(s) != Status::skipped) {
                metric(out, "requests_total",
                       policy_label(policies[i]) + ",outcome=\"" + kStatusLabels[s] + '"',
                       stats ? read_counter(stats->by_status[s]) : 0);
            }
        }
    }
    metric_head(out, "rejected_on_node_total", "counter",
                "Rejections decided on this node without a Redis call.");
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        const PolicyStats* stats = policies[i].stats;
        metric(out, "rejected_on_node_total", policy_label(policies[i]),
               stats ? read_counter(stats->rejected_on_node) : 0);
    }
    append_delay_metrics(out, policies, mcf->policies.nelts);
    if (mcf->redis) {
        append_lease_metrics(out, policies, mcf->policies.nelts, mcf->zone);
    }
    metric_head(out, "policy_burst", "gauge", "Bucket capacity of each policy, in requests.");
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        metric(out, "policy_burst", policy_label(policies[i]), policies[i].params.burst);
    }
    append_adaptive_metrics(out, mcf);
    append_runtime_limits_metrics(out, mcf);
    if (mcf->redis) {
        metric_head(out, "redis_up", "gauge", "1 unless a worker holds Redis down.");
        const NodeStats* node = node_stats();
        bool down = node && read_counter(node->workers_down) > 0;
        metric(out, "redis_up", {}, down ? 0 : 1);
        if (node) {
            append_redis_metrics(out, *node);
        }
        append_cluster_metrics(out);
    }
    return out;
}


// dashboard

std::string nonce()
{
    unsigned char bytes[18];
    if (getrandom(bytes, sizeof(bytes), GRND_NONBLOCK) != ssize_t(sizeof(bytes))) {
        for (unsigned char& b : bytes) {
            b = static_cast<unsigned char>(ngx_random());
        }
    }
    u_char text[32];
    ngx_str_t src{sizeof(bytes), bytes};
    ngx_str_t dst{0, text};
    ngx_encode_base64(&dst, &src);
    return std::string(reinterpret_cast<const char*>(text), dst.len);
}


ngx_int_t send_dashboard(ngx_http_request_t* r)
{
    std::string n = nonce();
    std::string page(dashboard_page());
    for (size_t at; (at = page.find(kNoncePlaceholder)) != std::string::npos;) {
        page.replace(at, sizeof(kNoncePlaceholder) - 1, n);
    }
    std::string csp = "default-src 'none'; script-src 'nonce-" + n + "'; style-src 'nonce-" + n
                      + "'; connect-src 'self'; img-src 'none'; base-uri 'none'; "
                        "form-action 'none'; frame-ancestors 'none'";
    return send(r, NGX_HTTP_OK, kHtml, page, csp);
}


// buckets

struct BucketRequest {
    ngx_http_request_t* r;
    const Policy* policy;
    ratelimit::BucketParams params;  // in force for the key
    ngx_str_t key;
    bool refill;                 // DELETE
    ratelimit::CallId call;
    bool call_pending;
    ngx_uint_t status;           // the answer, once Redis replied
    ngx_str_t body;
    ngx_event_t done_ev;
};

static_assert(std::is_trivially_destructible<BucketRequest>::value, "lives in a pool");


std::string bucket_json(const Policy& policy, const ratelimit::BucketParams& params,
                        const ngx_str_t& key, const ratelimit::BucketView& view)
{
    std::string out = "{\"policy\":";
    ratelimit::append_json_string(out, as_view(policy.name));
    out += ",\"key\":";
    ratelimit::append_json_string(out, ratelimit::percent_encode(as_view(key)));
    out += ",\"exists\":";
    out += view.exists ? "true" : "false";
    out += ",\"tokens\":" + number(double(view.level_units) / double(params.period_ms));
    out += ",\"capacity\":" + std::to_string(params.burst);
    out += ",\"rate_per_second\":"
           + number(double(params.count) * 1000.0 / double(params.period_ms));
    out += ",\"reset\":" + std::to_string(ratelimit::view_reset_seconds(params, view));
    out += "}\n";
    return out;
}


void detach(BucketRequest* br) noexcept
{
    if (br->call_pending) {
        br->call_pending = false;
        if (ratelimit::CallRouter* router = redis_router()) {
            router->cancel(br->call);
        }
    }
    if (br->done_ev.posted) {
        ngx_delete_posted_event(&br->done_ev);
    }
}


void detach_cleanup(void* data) noexcept
{
    detach(static_cast<BucketRequest*>(data));
}


ngx_int_t keep(ngx_http_request_t* r, BucketRequest* br, ngx_uint_t status,
               const std::string& body)
{
    br->status = status;
    br->body.len = body.size();
    br->body.data = static_cast<u_char*>(ngx_pnalloc(r->pool, body.size() + 1));
    if (br->body.data == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(br->body.data, body.data(), body.size());
    return NGX_OK;
}


void on_redis_reply(BucketRequest* br, const ratelimit::CallResult& result) noexcept
{
    ngx_http_request_t* r = br->r;
    br->call_pending = false;
    try {
        std::string error;
        auto* mcf = static_cast<MainConf*>(
            ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module));
        ngx_int_t rc = NGX_OK;
        ratelimit::BucketView view;
        if (result.status != ratelimit::CallStatus::ok) {
            error = std::string("Redis unavailable (") + ratelimit::to_string(result.status)
                    + ")";
        } else if (br->refill) {
            if (result.reply->type != REDIS_REPLY_INTEGER) {
                error = "Redis refused the refill";
            } else {
                zone_forget_rejections(mcf->zone, br->policy->name, br->key);
                rc = keep(r, br, NGX_HTTP_NO_CONTENT, {});
            }
        } else if (!ratelimit::parse_bucket_view_reply(result.reply, view, error)) {
            error = "Redis: " + error;
        } else {
            rc = keep(r, br, NGX_HTTP_OK, bucket_json(*br->policy, br->params, br->key, view));
        }
        if (!error.empty()) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "ratelimit: API: %s",
                          error.c_str());
            rc = keep(r, br, NGX_HTTP_SERVICE_UNAVAILABLE,
                      "{\"error\":\"Redis unavailable\"}\n");
        }
        if (rc != NGX_OK) {
            br->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    } catch (...) {
        br->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        br->body.len = 0;
    }
    ngx_post_event(&br->done_ev, &ngx_posted_events);
}


void finish_bucket_request(ngx_event_t* ev) noexcept
{
    auto* br = static_cast<BucketRequest*>(ev->data);
    ngx_http_request_t* r = br->r;
    ngx_connection_t* c = r->connection;
    ngx_http_set_log_request(c->log, r);
    ngx_int_t rc;
    try {
        bool answer = br->body.len || br->status == NGX_HTTP_NO_CONTENT;
        rc = answer ? send(r, br->status, kJson, as_view(br->body)) : ngx_int_t(br->status);
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


BucketRequest* create_bucket_request(ngx_http_request_t* r)
{
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(BucketRequest));
    ngx_http_cleanup_t* hcln = ngx_http_cleanup_add(r, 0);
    if (cln == nullptr || hcln == nullptr) {
        return nullptr;
    }
    auto* br = static_cast<BucketRequest*>(cln->data);
    ngx_memzero(static_cast<void*>(br), sizeof(BucketRequest));
    br->r = r;
    br->done_ev.handler = finish_bucket_request;
    br->done_ev.data = br;
    br->done_ev.log = r->connection->log;
    cln->handler = detach_cleanup;
    // Runs first when the request is terminated (client abort, shutdown).
    hcln->handler = detach_cleanup;
    hcln->data = br;
    return br;
}


ngx_int_t bucket_in_redis(ngx_http_request_t* r, MainConf* mcf, Policy& policy,
                          const ngx_str_t& key, bool refill)
{
    ratelimit::CallRouter* router = redis_router();
    if (router == nullptr) {
        return send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "Redis unavailable");
    }
    BucketRequest* br = create_bucket_request(r);
    if (br == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    br->policy = &policy;
    br->params = bucket_in_force(mcf, &policy, key);
    br->key = key;
    br->refill = refill;
    std::string redis_key = ratelimit::bucket_key(mcf->redis->prefix, as_view(policy.name),
                                                  as_view(key));
    std::string command = refill ? ratelimit::format_command({"DEL", redis_key})
                                 : ratelimit::format_bucket_view(redis_key, br->params);
    auto submitted = router->submit(
        router->slot_group_of(redis_key), std::move(command),
        [br](const ratelimit::CallResult& result) { on_redis_reply(br, result); }, nullptr);
    if (submitted.status != ratelimit::CallStatus::ok) {
        return send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                          std::string("Redis unavailable (")
                              + ratelimit::to_string(submitted.status) + ")");
    }
    br->call = submitted.id;
    br->call_pending = true;
    r->main->count++;
    return NGX_DONE;
}


ngx_int_t bucket_in_zone(ngx_http_request_t* r, MainConf* mcf, Policy& policy,
                         const ngx_str_t& key, bool refill)
{
    if (refill) {
        zone_forget(mcf->zone, BucketSpace::local, policy.name, key);
        zone_forget_rejections(mcf->zone, policy.name, key);
        return send(r, NGX_HTTP_NO_CONTENT, kJson, {});
    }
    ratelimit::BucketParams params = bucket_in_force(mcf, &policy, key);
    ratelimit::BucketView view = zone_peek(mcf->zone, BucketSpace::local, policy.name, params, key);
    return send(r, NGX_HTTP_OK, kJson, bucket_json(policy, params, key, view));
}


ngx_int_t serve_bucket(ngx_http_request_t* r, MainConf* mcf, LocConf* lcf,
                       const ratelimit::ApiRoute& route)
{
    ngx_str_t name{route.policy.size(), (u_char*) route.policy.data()};
    Policy* policy = find_policy(mcf, name);
    if (policy == nullptr) {
        return send_error(r, NGX_HTTP_NOT_FOUND, "unknown policy");
    }
    bool refill = r->method == NGX_HTTP_DELETE;
    if (refill && lcf->api != api_write) {
        return send_error(r, NGX_HTTP_NOT_ALLOWED, "refilling needs \"ratelimit_api write\"",
                          "GET, HEAD");
    }
    ngx_str_t key{route.key.size(), static_cast<u_char*>(ngx_pnalloc(r->pool, route.key.size()))};
    if (key.data == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(key.data, route.key.data(), key.len);
    return mcf->redis ? bucket_in_redis(r, mcf, *policy, key, refill)
                      : bucket_in_zone(r, mcf, *policy, key, refill);
}


// The raw path (no query string) after the location's prefix, or nullopt when the raw URI
// does not start with the prefix (it was escaped or its slashes merged).
std::optional<std::string_view> path_after_prefix(ngx_http_request_t* r)
{
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    std::string_view raw = as_view(r->unparsed_uri);
    raw = raw.substr(0, raw.find('?'));
    std::string_view prefix = as_view(clcf->name);
    if (raw.substr(0, prefix.size()) != prefix) {
        return std::nullopt;
    }
    raw.remove_prefix(prefix.size());
    if (!prefix.empty() && prefix.back() != '/' && !raw.empty()) {
        // "location /rl": "/rl/status" is the status, "/rlstatus" nothing.
        if (raw[0] != '/') {
            return std::string_view("/");  // routes to "not found"
        }
        raw.remove_prefix(1);
    }
    return raw;
}


ngx_int_t serve(ngx_http_request_t* r)
{
    auto* mcf = static_cast<MainConf*>(
        ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module));
    auto* lcf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
    auto rest = path_after_prefix(r);
    ratelimit::ApiRoute route;
    if (rest) {
        route = ratelimit::route_api_path(*rest);
    } else {
        route.path = ratelimit::ApiPath::malformed;
    }
    switch (route.path) {
    case ratelimit::ApiPath::not_found:
        return send_error(r, NGX_HTTP_NOT_FOUND, "no such endpoint");
    case ratelimit::ApiPath::malformed:
        return send_error(r, NGX_HTTP_BAD_REQUEST, "malformed path");
    default:
        break;
    }
    if (route.path == ratelimit::ApiPath::limit || route.path == ratelimit::ApiPath::limit_list
        || route.path == ratelimit::ApiPath::policy)
    {
        return serve_runtime_limits(r, mcf, lcf, route);
    }
    bool read = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    if (route.path == ratelimit::ApiPath::bucket && (read || r->method == NGX_HTTP_DELETE)) {
        return serve_bucket(r, mcf, lcf, route);
    }
    if (!read) {
        return send_error(r, NGX_HTTP_NOT_ALLOWED, "method not allowed",
                          route.path == ratelimit::ApiPath::bucket ? "GET, HEAD, DELETE"
                                                                   : "GET, HEAD");
    }
    switch (route.path) {
    case ratelimit::ApiPath::dashboard:
        return send_dashboard(r);
    case ratelimit::ApiPath::status:
        return send(r, NGX_HTTP_OK, kJson, status_json(mcf, lcf));
    default:
        return send(r, NGX_HTTP_OK, kMetricsType, metrics_text(mcf));
    }
}

// A PUT's body has been read (or has failed to be): the request is served.
void body_read(ngx_http_request_t* r) noexcept
{
    ngx_int_t rc;
    try {
        rc = serve(r);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ratelimit: API: out of memory");
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
}

}  // namespace


ngx_int_t api_send_json(ngx_http_request_t* r, ngx_uint_t status, std::string_view body)
{
    return send(r, status, kJson, body);
}


ngx_int_t api_send_error(ngx_http_request_t* r, ngx_uint_t status, std::string_view message,
                         std::string_view allow)
{
    return send_error(r, status, message, allow);
}


ngx_int_t api_handler(ngx_http_request_t* r) noexcept
{
    try {
        if (r != r->main) {
            return NGX_HTTP_NOT_FOUND;
        }
        bool put = r->method == NGX_HTTP_PUT;
        if (put && r->headers_in.content_length_n <= off_t(ratelimit::kMaxOverrideBody)) {
            // Small bodies only, kept in memory (a larger one is refused once read).
            r->request_body_in_single_buf = 1;
            ngx_int_t rc = ngx_http_read_client_request_body(r, body_read);
            return rc >= NGX_HTTP_SPECIAL_RESPONSE ? rc : NGX_DONE;
        }
        ngx_int_t rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }
        if (put) {
            return send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                              "body larger than " + std::to_string(ratelimit::kMaxOverrideBody)
                                  + " bytes: nothing stored");
        }
        return serve(r);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ratelimit: API: out of memory");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

}  // namespace ngx_ratelimit
