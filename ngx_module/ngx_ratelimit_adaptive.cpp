// Adaptive controllers: the directive, the counts in the zone, the interval timer (one worker
// per node takes each interval), the Redis call that merges the fleet's counts, the factor in
// force, and what the API shows of them. The control law is the core's (ratelimit/adaptive.h).

#include "ngx_ratelimit_adaptive.h"

#include <algorithm>
#include <cmath>

#include "ngx_ratelimit_counters.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/api_text.h"
#include "ratelimit/redis_config.h"

namespace ngx_ratelimit {

enum Count : size_t { requests, errors, slow, warm, admitted, latency_ms, kCounts };

// A controller's state in the zone: plain atomics, shared by every worker, kept across reload.
struct AdaptiveShared {
    AdaptiveShared* next;
    ngx_atomic_t interval;         // the last interval a worker of this node took (election)
    ngx_atomic_t counts[kCounts];  // this node's, since that interval was taken
    ngx_atomic_t totals[kCounts];  // this node's, since the zone was made (metrics)
    ngx_atomic_t seen[kCounts];    // what the last step saw (the fleet's, in Redis mode)
    ngx_atomic_t factor_ppm;       // in force, in millionths
    ngx_atomic_t earlier_ppm;
    ngx_atomic_t streak;
    ngx_atomic_t ceiling_ppm;
    ngx_atomic_t base_us;          // the least mean response time seen at home
    ngx_atomic_t proposed;         // interval + 1 the state was computed in (Redis mode), or 0
    ngx_atomic_t steps;            // intervals computed, and those without data
    ngx_atomic_t decays;
    size_t name_len;
    u_char name[1];
};

namespace {

constexpr int64_t kPpm = 1000000;

int64_t ppm(double factor)
{
    return std::llround(factor * double(kPpm));
}


int64_t read(const ngx_atomic_t& a)
{
    return int64_t(ngx_atomic_int_t(a));
}


void add(ngx_atomic_t& counter, int64_t n = 1)
{
    ngx_atomic_fetch_add(&counter, ngx_atomic_int_t(n));
}


double factor_of(const AdaptiveShared* shared)
{
    if (shared == nullptr) {
        return 1.0;
    }
    int64_t f = read(shared->factor_ppm);
    return f > 0 && f <= kPpm ? double(f) / double(kPpm) : 1.0;
}


ratelimit::AdaptiveState load_state(const AdaptiveShared* s)
{
    return ratelimit::AdaptiveState{factor_of(s), double(read(s->earlier_ppm)) / double(kPpm),
                                    read(s->streak), double(read(s->ceiling_ppm)) / double(kPpm),
                                    double(read(s->base_us)) / 1000.0};
}


// Writes the state the workers apply from now on; a notice when the factor goes below 1 or
// comes back (at most one per interval).
void store_state(Adaptive& a, const ratelimit::AdaptiveState& state)
{
    AdaptiveShared* s = a.shared;
    int64_t before = read(s->factor_ppm);
    int64_t after = std::clamp<int64_t>(ppm(state.factor), 1, kPpm);
    s->earlier_ppm = ngx_atomic_uint_t(std::clamp<int64_t>(ppm(state.earlier), 1, kPpm));
    s->streak = ngx_atomic_uint_t(state.streak);
    s->ceiling_ppm = ngx_atomic_uint_t(std::clamp<int64_t>(ppm(state.ceiling), 1, kPpm));
    s->base_us = ngx_atomic_uint_t(std::max<int64_t>(0, std::llround(state.base_ms * 1000.0)));
    s->factor_ppm = ngx_atomic_uint_t(after);
    if ((before == kPpm) != (after == kPpm)) {
        ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                      after < kPpm
                          ? "ratelimit: adaptive \"%V\" scales its policies to %.3f"
                          : "ratelimit: adaptive \"%V\" is back to full limits (%.3f)",
                      &a.name, double(after) / double(kPpm));
    }
}


void store_seen(AdaptiveShared* s, const ratelimit::IntervalCounts& c)
{
    const int64_t values[kCounts] = {c.requests, c.errors, c.slow, c.warm, c.admitted,
                                     c.latency_ms};
    for (size_t i = 0; i < kCounts; i++) {
        s->seen[i] = ngx_atomic_uint_t(values[i]);
    }
}


// This node's counts since the last interval was taken, taken out of the zone.
ratelimit::IntervalCounts take_counts(AdaptiveShared* s)
{
    int64_t values[kCounts];
    for (size_t i = 0; i < kCounts; i++) {
        values[i] = read(s->counts[i]);
        add(s->counts[i], -values[i]);
    }
    return ratelimit::IntervalCounts{values[requests], values[errors], values[slow], values[warm],
                                     values[admitted], values[latency_ms]};
}


void step_locally(Adaptive& a, const ratelimit::IntervalCounts& counts)
{
    ratelimit::AdaptiveState state = load_state(a.shared);
    // The node's own counts were taken under the factor in force now, and are not late.
    store_state(a, ratelimit::next_state(state, state.factor, counts, a.targets, 0));
    store_seen(a.shared, counts);
    add(a.shared->steps);
}


void decay(Adaptive& a)
{
    a.shared->proposed = 0;
    store_state(a, ratelimit::decayed_state(load_state(a.shared)));
    add(a.shared->decays);
}


void on_fleet_reply(Adaptive* a, const ratelimit::CallResult& result) noexcept
try {
    ratelimit::FleetInterval fleet;
    std::string error;
    if (result.status != ratelimit::CallStatus::ok
        || !ratelimit::parse_fleet_interval(result.reply, fleet, error))
    {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ratelimit: adaptive \"%V\": Redis call failed (%s), the factor decays",
                      &a->name, error.empty() ? ratelimit::to_string(result.status)
                                              : error.c_str());
        decay(*a);
        return;
    }
    AdaptiveShared* s = a->shared;
    if (read(s->proposed) == fleet.interval + 1) {
        return;  // computed for this interval already (two calls in one Redis interval)
    }
    // Every node computes from the same state and totals, so all apply the same factor; a
    // node without the fleet's state (the first, or Redis lost it) starts from its own.
    ratelimit::AdaptiveState state = fleet.state ? *fleet.state : load_state(s);
    store_state(*a, ratelimit::next_state(state, state.earlier, fleet.totals, a->targets));
    store_seen(s, fleet.totals);
    s->proposed = ngx_atomic_uint_t(fleet.interval + 1);
    add(s->steps);
} catch (...) {
    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "ratelimit: adaptive: out of memory");
}


void step_with_fleet(Adaptive& a, MainConf* mcf, const ratelimit::IntervalCounts& counts)
{
    ratelimit::CallRouter* router = redis_router();
    std::string key = ratelimit::adaptive_key(mcf->redis->prefix, as_view(a.name));
    if (router == nullptr || !router->available(router->slot_group_of(key))) {
        decay(a);
        return;
    }
    AdaptiveShared* s = a.shared;
    std::optional<ratelimit::Proposal> mine;
    if (int64_t proposed = read(s->proposed)) {
        mine = ratelimit::Proposal{proposed - 1, load_state(s)};
    }
    Adaptive* ap = &a;
    auto submitted = router->submit(
        router->slot_group_of(key),
        ratelimit::adaptive_command(key, a.targets.interval_ms, counts, mine),
        [ap](const ratelimit::CallResult& result) { on_fleet_reply(ap, result); }, nullptr);
    if (submitted.status != ratelimit::CallStatus::ok) {
        decay(a);
    }
}


int64_t wall_ms()
{
    ngx_time_t* tp = ngx_timeofday();
    return int64_t(tp->sec) * 1000 + int64_t(tp->msec);
}


// Until just after the next interval boundary of the wall clock, which every node shares.
ngx_msec_t until_next_interval(const Adaptive& a)
{
    int64_t interval = a.targets.interval_ms;
    return ngx_msec_t(interval - wall_ms() % interval + std::min<int64_t>(interval / 20, 50));
}


void on_interval(ngx_event_t* ev) noexcept
{
    auto* a = static_cast<Adaptive*>(ev->data);
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }
    ngx_add_timer(ev, until_next_interval(*a));
    AdaptiveShared* s = a->shared;
    int64_t n = wall_ms() / a->targets.interval_ms;
    ngx_atomic_uint_t taken = s->interval;
    // One worker of the node takes each interval.
    if (int64_t(taken) >= n || !ngx_atomic_cmp_set(&s->interval, taken, ngx_atomic_uint_t(n))) {
        return;
    }
    auto* mcf = static_cast<MainConf*>(
        ngx_http_cycle_get_module_main_conf(ngx_cycle, ngx_http_ratelimit_module));
    try {
        ratelimit::IntervalCounts counts = take_counts(s);
        if (mcf->redis) {
            step_with_fleet(*a, mcf, counts);
        } else {
            step_locally(*a, counts);
        }
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "ratelimit: adaptive: out of memory");
    }
}


AdaptiveShared* find_shared(ApiShared* api, const ngx_str_t& name)
{
    for (AdaptiveShared* s = api->adaptives; s; s = s->next) {
        if (s->name_len == name.len && ngx_memcmp(s->name, name.data, name.len) == 0) {
            return s;
        }
    }
    return nullptr;
}


AdaptiveShared* create_shared(ngx_slab_pool_t* shpool, ApiShared* api, const ngx_str_t& name)
{
    auto* s = static_cast<AdaptiveShared*>(
        ngx_slab_calloc_locked(shpool, offsetof(AdaptiveShared, name) + name.len));
    if (s == nullptr) {
        return nullptr;
    }
    s->factor_ppm = kPpm;
    s->earlier_ppm = kPpm;
    s->ceiling_ppm = kPpm;
    s->name_len = name.len;
    ngx_memcpy(s->name, name.data, name.len);
    s->next = api->adaptives;
    api->adaptives = s;
    return s;
}


Adaptive* find_adaptive(MainConf* mcf, const ngx_str_t& name)
{
    auto* all = static_cast<Adaptive*>(mcf->adaptives.elts);
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        if (all[i].name.len == name.len && ngx_strncmp(all[i].name.data, name.data, name.len) == 0)
        {
            return &all[i];
        }
    }
    return nullptr;
}


// The distinct controllers of a request's limits, at most `max`.
size_t controllers_of(const RequestCtx* ctx, Adaptive** out, size_t max)
{
    size_t n = 0;
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        Adaptive* a = ctx->limits[i].policy->adaptive;
        if (a == nullptr || a->shared == nullptr || std::find(out, out + n, a) != out + n) {
            continue;
        }
        if (n < max) {
            out[n++] = a;
        }
    }
    return n;
}


bool went_upstream(Status status)
{
    return status == Status::passed || status == Status::local_passed
           || status == Status::failed_open || status == Status::rejected_dry_run;
}


// LOG phase: the answer of a request decided under a policy naming a controller feeds it.
ngx_int_t log_handler(ngx_http_request_t* r) noexcept
{
    if (r != r->main) {
        return NGX_OK;
    }
    RequestCtx* ctx = find_ctx(r);
    if (ctx == nullptr || ctx->nlimits == 0 || !went_upstream(ctx->status)) {
        return NGX_OK;
    }
    Adaptive* controllers[8];
    size_t n = controllers_of(ctx, controllers, 8);
    if (n == 0) {
        return NGX_OK;
    }
    if (r->upstream_states == nullptr || r->upstream_states->nelts == 0) {
        // Admitted, but it reached no upstream (served from the location itself, a cache):
        // it says nothing of the upstream, and is no longer counted as admitted.
        for (size_t i = 0; i < n; i++) {
            add(controllers[i]->shared->counts[admitted], -1);
            add(controllers[i]->shared->totals[admitted], -1);
        }
        return NGX_OK;
    }
    // Every try counts toward the time; the last one's status is the answer (0: none came).
    auto* states = static_cast<ngx_http_upstream_state_t*>(r->upstream_states->elts);
    int64_t time_ms = 0;
    for (ngx_uint_t i = 0; i < r->upstream_states->nelts; i++) {
        if (states[i].peer != nullptr || states[i].status != 0) {
            time_ms += int64_t(states[i].response_time);
        }
    }
    ngx_uint_t status = states[r->upstream_states->nelts - 1].status;
    bool failed = status == 0 || status >= 500;
    for (size_t i = 0; i < n; i++) {
        AdaptiveShared* s = controllers[i]->shared;
        int64_t latency = controllers[i]->targets.latency_ms;
        const int64_t hit[kCounts] = {1, failed, time_ms > latency, time_ms > latency / 2, 0,
                                      time_ms};
        for (size_t c = 0; c < kCounts; c++) {
            if (hit[c] != 0) {
                add(s->counts[c], hit[c]);
                add(s->totals[c], hit[c]);
            }
        }
    }
    return NGX_OK;
}

}  // namespace


// ratelimit_adaptive name [latency=time] [errors=percent] [min=percent] [interval=time];
char* set_adaptive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* mcf = static_cast<MainConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (!ratelimit::is_valid_policy_name(as_view(value[1]))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": invalid name \"%V\" (expected [A-Za-z0-9_-]+)", &cmd->name,
                           &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (find_adaptive(mcf, value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": duplicate controller \"%V\"",
                           &cmd->name, &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    ratelimit::AdaptiveTargets targets;
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        std::string_view arg = as_view(value[i]);
        size_t eq = arg.find('=');
        std::string_view name = arg.substr(0, eq);
        std::string_view text = eq == std::string_view::npos ? std::string_view()
                                                             : arg.substr(eq + 1);
        bool ok = eq != std::string_view::npos;
        if (ok && (name == "latency" || name == "interval")) {
            auto ms = ratelimit::parse_duration_ms(text);
            ok = ms.has_value();
            (name == "latency" ? targets.latency_ms : targets.interval_ms) = ms.value_or(0);
        } else if (ok && (name == "errors" || name == "min")) {
            auto share = ratelimit::parse_percent(text);
            ok = share.has_value();
            (name == "errors" ? targets.error_share : targets.min_factor) = share.value_or(0);
        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": invalid parameter \"%V\"",
                               &cmd->name, &value[i]);
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        if (!ok) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": invalid value \"%V\" (expected %s)",
                               &cmd->name, &value[i],
                               name == "latency" || name == "interval" ? "a time such as 250ms"
                                                                        : "a percentage such as 5%");
            return static_cast<char*>(NGX_CONF_ERROR);
        }
    }
    std::string problem = ratelimit::check_targets(targets);
    if (!problem.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" \"%V\": %s", &cmd->name, &value[1],
                           problem.c_str());
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    auto* a = static_cast<Adaptive*>(ngx_array_push(&mcf->adaptives));
    if (a == nullptr) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    *a = Adaptive{value[1], targets, nullptr, nullptr};
    return NGX_CONF_OK;
}


bool resolve_adaptive(ngx_conf_t* cf, MainConf* mcf)
{
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        Policy& policy = policies[i];
        if (policy.adaptive_name.len == 0) {
            continue;
        }
        policy.adaptive = find_adaptive(mcf, policy.adaptive_name);
        if (policy.adaptive == nullptr) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"ratelimit_policy\" \"%V\": unknown controller "
                               "\"adaptive=%V\" (no ratelimit_adaptive of that name)",
                               &policy.name, &policy.adaptive_name);
            return false;
        }
    }
    return true;
}


ngx_int_t bind_adaptive(ngx_cycle_t* cycle, MainConf* mcf) noexcept
{
    ApiShared* api = zone_api(mcf->zone);
    if (api == nullptr || mcf->adaptives.nelts == 0) {
        return NGX_OK;
    }
    auto* shpool = reinterpret_cast<ngx_slab_pool_t*>(mcf->zone->shm.addr);
    ngx_shmtx_lock(&shpool->mutex);
    auto* all = static_cast<Adaptive*>(mcf->adaptives.elts);
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        all[i].shared = find_shared(api, all[i].name);
        if (all[i].shared == nullptr) {
            all[i].shared = create_shared(shpool, api, all[i].name);
        }
        if (all[i].shared == nullptr) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "ratelimit: the zone has no room for adaptive \"%V\": its factor "
                          "stays 1", &all[i].name);
        }
    }
    ngx_shmtx_unlock(&shpool->mutex);
    return NGX_OK;
}


ngx_int_t init_worker_adaptive(ngx_cycle_t* cycle, MainConf* mcf) noexcept
{
    auto* all = static_cast<Adaptive*>(mcf->adaptives.elts);
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        Adaptive& a = all[i];
        if (a.shared == nullptr) {
            continue;
        }
        a.timer = static_cast<ngx_event_t*>(ngx_pcalloc(cycle->pool, sizeof(ngx_event_t)));
        if (a.timer == nullptr) {
            return NGX_ERROR;
        }
        a.timer->handler = on_interval;
        a.timer->data = &a;
        a.timer->log = cycle->log;
        a.timer->cancelable = 1;  // does not hold up a graceful shutdown
        ngx_add_timer(a.timer, until_next_interval(a));
    }
    return NGX_OK;
}


ngx_int_t install_adaptive_log_handler(ngx_conf_t* cf) noexcept
{
    auto* cmcf = static_cast<ngx_http_core_main_conf_t*>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
    auto* h = static_cast<ngx_http_handler_pt*>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    *h = log_handler;
    return NGX_OK;
}


double policy_factor(const Policy& policy) noexcept
{
    return policy.adaptive ? factor_of(policy.adaptive->shared) : 1.0;
}


ratelimit::BucketParams adapted(const Policy& policy, const ratelimit::BucketParams& params) noexcept
{
    return policy.adaptive ? ratelimit::scaled_params(params, policy_factor(policy)) : params;
}


ratelimit::BucketParams params_in_force(const Policy& policy) noexcept
{
    return adapted(policy, policy.params);
}


void count_admitted(const RequestCtx* ctx) noexcept
{
    if (!went_upstream(ctx->status)) {
        return;
    }
    Adaptive* controllers[8];
    size_t n = controllers_of(ctx, controllers, 8);
    for (size_t i = 0; i < n; i++) {
        add(controllers[i]->shared->counts[admitted]);
        add(controllers[i]->shared->totals[admitted]);
    }
}


void append_adaptive_status(std::string& out, MainConf* mcf)
{
    static const char* const names[kCounts] = {"requests", "errors", "slow", "warm", "admitted",
                                               "latency_ms"};
    out += '[';
    auto* all = static_cast<Adaptive*>(mcf->adaptives.elts);
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        const Adaptive& a = all[i];
        out += i ? ",{\"name\":" : "{\"name\":";
        ratelimit::append_json_string(out, as_view(a.name));
        out += ",\"factor\":" + ratelimit::format_number(factor_of(a.shared));
        out += ",\"latency_ms\":" + std::to_string(a.targets.latency_ms);
        out += ",\"errors\":" + ratelimit::format_number(a.targets.error_share);
        out += ",\"min\":" + ratelimit::format_number(a.targets.min_factor);
        out += ",\"estimate\":"
               + ratelimit::format_number(a.shared ? load_state(a.shared).ceiling : 1.0);
        out += ",\"interval_ms\":" + std::to_string(a.targets.interval_ms);
        out += ",\"interval\":{";
        for (size_t c = 0; c < kCounts; c++) {
            out += c ? ",\"" : "\"";
            out += names[c];
            out += "\":" + std::to_string(a.shared ? read(a.shared->seen[c]) : 0);
        }
        out += "},\"intervals\":" + std::to_string(a.shared ? read(a.shared->steps) : 0);
        out += ",\"intervals_without_data\":"
               + std::to_string(a.shared ? read(a.shared->decays) : 0);
        out += '}';
    }
    out += ']';
}


void append_adaptive_metrics(std::string& out, MainConf* mcf)
{
    if (mcf->adaptives.nelts == 0) {
        return;
    }
    auto* all = static_cast<Adaptive*>(mcf->adaptives.elts);
    out += "# HELP nginx_ratelimit_adaptive_factor The factor each controller scales its "
           "policies' rate and burst by.\n# TYPE nginx_ratelimit_adaptive_factor gauge\n";
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        out += "nginx_ratelimit_adaptive_factor{controller=\"";
        out += as_view(all[i].name);
        out += "\"} " + ratelimit::format_number(factor_of(all[i].shared)) + '\n';
    }
    static const char* const kinds[latency_ms] = {"answered", "error", "slow", "warm", "admitted"};
    out += "# HELP nginx_ratelimit_adaptive_requests_total Requests this node fed each "
           "controller, by kind.\n# TYPE nginx_ratelimit_adaptive_requests_total counter\n";
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        for (size_t c = 0; c < latency_ms; c++) {
            out += "nginx_ratelimit_adaptive_requests_total{controller=\"";
            out += as_view(all[i].name);
            out += "\",kind=\"";
            out += kinds[c];
            out += "\"} " + std::to_string(all[i].shared ? read(all[i].shared->totals[c]) : 0);
            out += '\n';
        }
    }
    out += "# HELP nginx_ratelimit_adaptive_response_seconds_total Upstream response time of "
           "the answers this node fed each controller.\n"
           "# TYPE nginx_ratelimit_adaptive_response_seconds_total counter\n";
    for (ngx_uint_t i = 0; i < mcf->adaptives.nelts; i++) {
        int64_t ms = all[i].shared ? read(all[i].shared->totals[latency_ms]) : 0;
        out += "nginx_ratelimit_adaptive_response_seconds_total{controller=\"";
        out += as_view(all[i].name);
        out += "\"} " + ratelimit::format_number(double(ms) / 1000.0) + '\n';
    }
}

}  // namespace ngx_ratelimit
