// ratelimit_api's runtime limits: limits/<policy>/<key> (a key's override), limits/<policy>/
// (the list, paged) and policies/<policy> (a policy's runtime change). Reads come from the
// zone; in Redis mode a change is written to Redis (the request waits, as a bucket request
// does) and is in force on this node at once, on the others at their next poll. Every change
// is logged at `notice` with the client's address and the old and new values.

#include <hiredis/hiredis.h>

#include <cstring>
#include <string>
#include <type_traits>

#include "ngx_ratelimit_api.h"
#include "ngx_ratelimit_overrides.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/key.h"
#include "ratelimit/override_store.h"
#include "ratelimit/overrides.h"

namespace ngx_ratelimit {
namespace {

constexpr size_t kDefaultPage = 100;
constexpr size_t kMaxPage = 1000;

std::string_view as_sv(const ngx_str_t& s)
{
    return std::string_view(reinterpret_cast<const char*>(s.data), s.len);
}

std::string shown(const std::optional<ratelimit::Override>& value)
{
    return value ? ratelimit::format_override(*value) : std::string("none");
}

std::string bucket_text(const ratelimit::BucketParams& params)
{
    return "\"rate\":\"" + ratelimit::format_rate({params.count, params.period_ms})
           + "\",\"burst\":" + std::to_string(params.burst);
}

// {"policy": ..., "key": ..., "override": {...}}
std::string limit_json(const Policy& policy, std::string_view key,
                       const ratelimit::Override& value)
{
    std::string out = "{\"policy\":";
    ratelimit::append_json_string(out, as_sv(policy.name));
    out += ",\"key\":";
    ratelimit::append_json_string(out, ratelimit::percent_encode(key));
    out += ",\"override\":" + ratelimit::format_override(value) + "}";
    return out;
}

// The configured values, the runtime change (or null) and what is in force.
std::string policy_json(const Policy& policy, const std::optional<ratelimit::Override>& change)
{
    std::string out = "{\"policy\":";
    ratelimit::append_json_string(out, as_sv(policy.name));
    out += ",\"configured\":{" + bucket_text(policy.params) + "}";
    out += ",\"change\":" + (change ? ratelimit::format_override(*change) : std::string("null"));
    ratelimit::BucketParams params =
        ratelimit::params_in_force(policy.params, change ? &*change : nullptr, nullptr);
    out += ",\"in_force\":{" + bucket_text(params);
    int64_t delay = ratelimit::delay_in_force(change ? &*change : nullptr);
    if (delay >= 0) {
        out += ",\"delay\":" + std::to_string(delay);
    }
    out += "},\"source\":\"";
    out += change ? "api" : "configuration";
    out += "\"}\n";
    return out;
}

void audit(ngx_http_request_t* r, const Policy& policy, std::string_view key,
           const std::optional<ratelimit::Override>& old,
           const std::optional<ratelimit::Override>& now)
{
    std::string before = shown(old);
    std::string after = shown(now);
    if (key.empty()) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "ratelimit: API: policy \"%V\" changed by %V: %s -> %s", &policy.name,
                      &r->connection->addr_text, before.c_str(), after.c_str());
        return;
    }
    std::string encoded = ratelimit::percent_encode(key);
    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "ratelimit: API: override of policy \"%V\" key \"%s\" changed by %V: %s -> %s",
                  &policy.name, encoded.c_str(), &r->connection->addr_text, before.c_str(),
                  after.c_str());
}

// The answer to a change once it is made: the entry, or 204 when removed.
ngx_int_t answer_change(ngx_http_request_t* r, const Policy& policy, std::string_view key,
                        const std::optional<ratelimit::Override>& old,
                        const ratelimit::Override* value)
{
    if (value == nullptr) {
        return old ? api_send_json(r, NGX_HTTP_NO_CONTENT, {})
                   : api_send_error(r, NGX_HTTP_NOT_FOUND,
                                    key.empty() ? "no runtime change" : "no override");
    }
    if (key.empty()) {
        return api_send_json(r, NGX_HTTP_OK, policy_json(policy, *value));
    }
    return api_send_json(r, NGX_HTTP_OK, limit_json(policy, key, *value) + "\n");
}


// A change written to Redis: the request waits for the reply.
struct WriteRequest {
    ngx_http_request_t* r;
    const Policy* policy;
    ngx_str_t key;                 // empty: the policy's change
    bool has_value;                // false: a removal
    ratelimit::Override value;
    ratelimit::CallId call;
    bool call_pending;
    ngx_int_t rc;                  // once Redis replied
    ngx_event_t done_ev;
};

static_assert(std::is_trivially_copyable<ratelimit::Override>::value, "lives in a pool");

void detach(WriteRequest* wr) noexcept
{
    if (wr->call_pending) {
        wr->call_pending = false;
        if (ratelimit::CallRouter* router = redis_router()) {
            router->cancel(wr->call);
        }
    }
    if (wr->done_ev.posted) {
        ngx_delete_posted_event(&wr->done_ev);
    }
}

void detach_cleanup(void* data) noexcept
{
    detach(static_cast<WriteRequest*>(data));
}

void finish_write(ngx_event_t* ev) noexcept
{
    auto* wr = static_cast<WriteRequest*>(ev->data);
    ngx_http_request_t* r = wr->r;
    ngx_connection_t* c = r->connection;
    ngx_http_set_log_request(c->log, r);
    ngx_http_finalize_request(r, wr->rc);
    ngx_http_run_posted_requests(c);
}

// Redis replied: the change is in force here, logged, and answered.
void on_written(WriteRequest* wr, const ratelimit::CallResult& result) noexcept
{
    ngx_http_request_t* r = wr->r;
    wr->call_pending = false;
    try {
        auto* mcf = static_cast<MainConf*>(
            ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module));
        ratelimit::OverrideWriteReply reply;
        std::string error = result.status == ratelimit::CallStatus::ok
                                ? std::string()
                                : std::string(ratelimit::to_string(result.status));
        if (error.empty() && !ratelimit::parse_override_write_reply(result.reply, reply, error)) {
            error = "Redis: " + error;
        }
        if (!error.empty()) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "ratelimit: API: runtime limit not written: %s", error.c_str());
            wr->rc = api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "Redis unavailable");
        } else {
            std::string_view key = as_sv(wr->key);
            const ratelimit::Override* value = wr->has_value ? &wr->value : nullptr;
            apply_written_override(mcf, wr->policy->name, key, value, reply.version);
            std::optional<ratelimit::Override> old;
            ratelimit::Override read;
            if (reply.old_value
                && ratelimit::read_stored_override(*reply.old_value,
                                                   key.empty() ? ratelimit::OverrideTarget::policy
                                                               : ratelimit::OverrideTarget::key,
                                                   read))
            {
                old = read;
            }
            if (value || old) {
                audit(r, *wr->policy, key, old, wr->has_value ? std::optional(wr->value)
                                                              : std::nullopt);
            }
            wr->rc = answer_change(r, *wr->policy, key, old, value);
        }
    } catch (...) {
        wr->rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_post_event(&wr->done_ev, &ngx_posted_events);
}

ngx_int_t write_to_redis(ngx_http_request_t* r, MainConf* mcf, const Policy& policy,
                         const ngx_str_t& key, const ratelimit::Override* value)
{
    ratelimit::CallRouter* router = redis_router();
    if (router == nullptr) {
        return api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "Redis unavailable");
    }
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(WriteRequest));
    ngx_http_cleanup_t* hcln = ngx_http_cleanup_add(r, 0);
    if (cln == nullptr || hcln == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto* wr = static_cast<WriteRequest*>(cln->data);
    std::memset(static_cast<void*>(wr), 0, sizeof(WriteRequest));
    wr->r = r;
    wr->policy = &policy;
    wr->key = key;
    wr->has_value = value != nullptr;
    if (value) {
        wr->value = *value;
    }
    wr->done_ev.handler = finish_write;
    wr->done_ev.data = wr;
    wr->done_ev.log = r->connection->log;
    cln->handler = detach_cleanup;
    hcln->handler = detach_cleanup;  // runs first when the request is terminated
    hcln->data = wr;

    std::string field = key.len ? ratelimit::override_field(as_sv(policy.name), as_sv(key))
                                : ratelimit::override_field(as_sv(policy.name));
    const std::string& prefix = mcf->redis->prefix;
    std::string slot_key = ratelimit::override_version_key(prefix);
    auto submitted = router->submit(
        router->slot_group_of(slot_key),
        ratelimit::format_override_write(prefix, field,
                                         value ? ratelimit::format_override(*value) : ""),
        [wr](const ratelimit::CallResult& result) { on_written(wr, result); }, nullptr);
    if (submitted.status != ratelimit::CallStatus::ok) {
        return api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                              std::string("Redis unavailable (")
                                  + ratelimit::to_string(submitted.status) + ")");
    }
    wr->call = submitted.id;
    wr->call_pending = true;
    r->main->count++;
    return NGX_DONE;
}

// A change in local mode: the zone is where it lives.
ngx_int_t write_to_zone(ngx_http_request_t* r, MainConf* mcf, const Policy& policy,
                        std::string_view key, const ratelimit::Override* value)
{
    bool stored;
    auto old = set_override(mcf, policy.name, key, value, &stored);
    if (!stored) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: API: the zone has no room for another runtime limit");
        return api_send_error(r, 507, "the zone is full: nothing stored");
    }
    if (value || old) {
        audit(r, policy, key, old, value ? std::optional(*value) : std::nullopt);
    }
    return answer_change(r, policy, key, old, value);
}

// The body of a PUT, or why there is none to read: 413 when too large.
ngx_int_t read_body(ngx_http_request_t* r, std::string& body)
{
    if (r->request_body == nullptr) {
        return NGX_OK;
    }
    if (r->request_body->temp_file) {
        return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
    }
    for (ngx_chain_t* cl = r->request_body->bufs; cl; cl = cl->next) {
        if (cl->buf->in_file) {
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
        body.append(reinterpret_cast<const char*>(cl->buf->pos), cl->buf->last - cl->buf->pos);
        if (body.size() > ratelimit::kMaxOverrideBody) {
            return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        }
    }
    return NGX_OK;
}

ngx_int_t put(ngx_http_request_t* r, MainConf* mcf, const Policy& policy, const ngx_str_t& key)
{
    std::string body;
    if (read_body(r, body) != NGX_OK) {
        return api_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                              "body larger than " + std::to_string(ratelimit::kMaxOverrideBody)
                                  + " bytes: nothing stored");
    }
    bool keyed = key.len > 0;
    ratelimit::BucketParams base = policy.params;
    if (keyed) {
        auto change = find_override(mcf, policy.name, {});
        base = ratelimit::params_in_force(policy.params, change ? &*change : nullptr, nullptr);
    }
    ratelimit::ParsedOverride parsed = ratelimit::parse_override(
        body, keyed ? ratelimit::OverrideTarget::key : ratelimit::OverrideTarget::policy, base);
    if (!parsed.ok) {
        return api_send_error(r, parsed.too_large ? NGX_HTTP_REQUEST_ENTITY_TOO_LARGE
                                                  : NGX_HTTP_BAD_REQUEST,
                              parsed.error + ": nothing stored");
    }
    return mcf->redis ? write_to_redis(r, mcf, policy, key, &parsed.value)
                      : write_to_zone(r, mcf, policy, as_sv(key), &parsed.value);
}

ngx_int_t remove_entry(ngx_http_request_t* r, MainConf* mcf, const Policy& policy,
                       const ngx_str_t& key)
{
    return mcf->redis ? write_to_redis(r, mcf, policy, key, nullptr)
                      : write_to_zone(r, mcf, policy, as_sv(key), nullptr);
}

size_t arg_number(ngx_http_request_t* r, const char* name, size_t fallback, size_t most)
{
    ngx_str_t value;
    if (ngx_http_arg(r, (u_char*) name, ngx_strlen(name), &value) != NGX_OK) {
        return fallback;
    }
    auto n = ratelimit::parse_non_negative_int(as_sv(value));
    return n ? std::min<size_t>(size_t(*n), most) : fallback;
}

// limits/<policy>/?offset=N&limit=M: {"policy", "total", "offset", "overrides": [...],
// "next_offset": N or null}.
ngx_int_t list(ngx_http_request_t* r, MainConf* mcf, const Policy& policy)
{
    size_t offset = arg_number(r, "offset", 0, SIZE_MAX);
    size_t limit = arg_number(r, "limit", kDefaultPage, kMaxPage);
    size_t total = 0;
    std::vector<ListedOverride> page = list_overrides(mcf, policy.name, offset, limit, &total);
    std::string out = "{\"policy\":";
    ratelimit::append_json_string(out, as_sv(policy.name));
    out += ",\"total\":" + std::to_string(total) + ",\"offset\":" + std::to_string(offset);
    out += ",\"overrides\":[";
    for (size_t i = 0; i < page.size(); i++) {
        out += i ? "," : "";
        out += limit_json(policy, page[i].key, page[i].value);
    }
    out += "],\"next_offset\":";
    size_t next = offset + page.size();
    out += next < total ? std::to_string(next) : std::string("null");
    out += "}\n";
    return api_send_json(r, NGX_HTTP_OK, out);
}

}  // namespace


ngx_int_t serve_runtime_limits(ngx_http_request_t* r, MainConf* mcf, LocConf* lcf,
                               const ratelimit::ApiRoute& route)
{
    bool listing = route.path == ratelimit::ApiPath::limit_list;
    const char* allow = listing ? "GET, HEAD" : "GET, HEAD, PUT, DELETE";
    bool read = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    bool change = r->method & (NGX_HTTP_PUT | NGX_HTTP_DELETE);
    if (!read && !(change && !listing)) {
        return api_send_error(r, NGX_HTTP_NOT_ALLOWED, "method not allowed", allow);
    }
    if (change && lcf->api != api_write) {
        return api_send_error(r, NGX_HTTP_NOT_ALLOWED,
                              "changing limits needs \"ratelimit_api write\"", "GET, HEAD");
    }
    ngx_str_t name{route.policy.size(), (u_char*) route.policy.data()};
    Policy* policy = find_policy(mcf, name);
    if (policy == nullptr) {
        return api_send_error(r, NGX_HTTP_NOT_FOUND, "unknown policy");
    }
    if (listing) {
        return list(r, mcf, *policy);
    }
    std::string problem;
    if (route.path == ratelimit::ApiPath::limit) {
        problem = ratelimit::check_override_key(route.key);
    }
    if (!problem.empty()) {
        return api_send_error(r, NGX_HTTP_BAD_REQUEST, problem);
    }
    ngx_str_t key{route.key.size(),
                  static_cast<u_char*>(ngx_pnalloc(r->pool, route.key.size() + 1))};
    if (key.data == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(key.data, route.key.data(), key.len);
    if (read) {
        auto found = find_override(mcf, policy->name, route.key);
        if (key.len == 0) {
            return api_send_json(r, NGX_HTTP_OK, policy_json(*policy, found));
        }
        return found ? api_send_json(r, NGX_HTTP_OK, limit_json(*policy, route.key, *found) + "\n")
                     : api_send_error(r, NGX_HTTP_NOT_FOUND, "no override");
    }
    return r->method == NGX_HTTP_PUT ? put(r, mcf, *policy, key)
                                     : remove_entry(r, mcf, *policy, key);
}


void append_runtime_limits_status(std::string& out, const Policy& policy)
{
    OverrideCounts counts = override_counts(policy);
    ratelimit::BucketParams params = ratelimit::params_in_force(
        policy.params, counts.changed ? &counts.change : nullptr, nullptr);
    out += ",\"overrides\":" + std::to_string(counts.keys);
    out += ",\"in_force\":{" + bucket_text(params) + ",\"source\":\"";
    out += counts.changed ? "api" : "configuration";
    out += "\"}";
}


void append_runtime_limits_metrics(std::string& out, MainConf* mcf)
{
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    auto line = [&out](const char* name, const Policy& policy, int64_t value) {
        out += "nginx_ratelimit_";
        out += name;
        out += "{policy=\"";
        out.append(as_sv(policy.name));
        out += "\"} " + std::to_string(value) + "\n";
    };
    out += "# HELP nginx_ratelimit_overrides Key overrides in force on this node.\n"
           "# TYPE nginx_ratelimit_overrides gauge\n";
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        line("overrides", policies[i], override_counts(policies[i]).keys);
    }
    out += "# HELP nginx_ratelimit_policy_changed 1 while a runtime change of the policy is in "
           "force.\n# TYPE nginx_ratelimit_policy_changed gauge\n";
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        line("policy_changed", policies[i], override_counts(policies[i]).changed ? 1 : 0);
    }
    // Labels are the policy only (as every metric of the module): one name per kind.
    const struct {
        const char* name;
        const char* help;
        int64_t OverrideCounts::*count;
    } kinds[] = {
        {"override_limited_total", "Requests decided with a key override's rate or burst.",
         &OverrideCounts::decided_key},
        {"override_unlimited_total", "Requests a key's unlimited override exempted.",
         &OverrideCounts::unlimited},
        {"override_blocked_total", "Requests a key's block override rejected.",
         &OverrideCounts::blocked},
    };
    for (const auto& kind : kinds) {
        out += std::string("# HELP nginx_ratelimit_") + kind.name + " " + kind.help
               + "\n# TYPE nginx_ratelimit_" + kind.name + " counter\n";
        for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
            line(kind.name, policies[i], override_counts(policies[i]).*kind.count);
        }
    }
    if (mcf->redis) {
        out += "# HELP nginx_ratelimit_overrides_version Version of Redis's runtime limits "
               "applied on this node.\n# TYPE nginx_ratelimit_overrides_version gauge\n";
        out += "nginx_ratelimit_overrides_version " + std::to_string(overrides_version(mcf)) + "\n";
    }
    out += "# HELP nginx_ratelimit_overrides_dropped_total Runtime limits the zone had no room "
           "for.\n# TYPE nginx_ratelimit_overrides_dropped_total counter\n";
    out += "nginx_ratelimit_overrides_dropped_total " + std::to_string(overrides_dropped(mcf))
           + "\n";
}


ratelimit::BucketParams bucket_in_force(MainConf* mcf, Policy* policy, const ngx_str_t& key)
{
    ratelimit::KeyIdBuffer scratch;
    std::string_view id = ratelimit::key_id(as_sv(key), scratch);
    ngx_str_t id_str{id.size(), reinterpret_cast<u_char*>(const_cast<char*>(id.data()))};
    RequestLimit limit{policy, key, id_str, 0, false, policy->delay, OverrideUse::none, {}};
    apply_overrides(mcf, &limit, 1, false);
    return limit.params;
}

}  // namespace ngx_ratelimit
