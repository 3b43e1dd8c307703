// The request path: evaluate a request's limits, decide them (Redis, or the shared zone),
// suspend the request while Redis answers, resume it, and report the decision in headers
// and variables.

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/headers.h"
#include "ratelimit/key.h"
#include "ratelimit/script.h"

namespace ngx_ratelimit {
namespace {

ngx_str_t status_names[] = {
    ngx_null_string,
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("SKIPPED"),
    ngx_string("FAILED_OPEN"),
    ngx_string("FAILED_CLOSED"),
    ngx_string("LOCAL_PASSED"),
    ngx_string("LOCAL_REJECTED"),
};

enum class Phase { waiting, resumed, done };

// One evaluated limit of this request.
struct RequestLimit {
    Policy* policy;
    ngx_str_t key;
    int64_t cost;
    bool lacked_tokens;  // the request was rejected for want of this bucket's tokens
};

// Lives in the request pool, inside the pool cleanup entry that finds it again after an
// internal redirect (which clears module contexts).
struct RequestCtx {
    ngx_http_request_t* r;
    Phase phase;
    ngx_int_t rc;                 // what the handler returns once resumed
    Status status;
    bool has_report;
    bool rejected;                // with the configured status (not dry run)
    ngx_str_t policy;             // the most restrictive limit, for headers and variables
    int64_t limit;
    int64_t remaining;
    int64_t reset;
    int64_t retry_after;
    int64_t window;
    RequestLimit* limits;
    ngx_uint_t nlimits;
    ratelimit::CallId call;
    bool call_pending;
    ngx_event_t resume_ev;
};

static_assert(std::is_trivially_destructible<RequestCtx>::value, "lives in a pool");

ngx_http_output_header_filter_pt next_header_filter;


std::string_view as_view(const ngx_str_t& s)
{
    return std::string_view(reinterpret_cast<const char*>(s.data), s.len);
}


// Stops anything that could still reach this request: the Redis callback and the resume.
void detach(RequestCtx* ctx) noexcept
{
    if (ctx->call_pending) {
        ctx->call_pending = false;
        if (ratelimit::RedisClient* client = redis_client()) {
            client->cancel(ctx->call);
        }
    }
    if (ctx->resume_ev.posted) {
        ngx_delete_posted_event(&ctx->resume_ev);
    }
}


// Both the pool cleanup that holds the ctx and the request cleanup run this; the pool entry
// is also how find_ctx recognises the ctx after an internal redirect.
void detach_cleanup(void* data) noexcept
{
    detach(static_cast<RequestCtx*>(data));
}


RequestCtx* find_ctx(ngx_http_request_t* r)
{
    auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_ratelimit_module));
    if (ctx || !(r->internal || r->filter_finalize)) {
        return ctx;
    }
    for (ngx_pool_cleanup_t* cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == detach_cleanup) {
            ctx = static_cast<RequestCtx*>(cln->data);
            ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_module);
            return ctx;
        }
    }
    return nullptr;
}


RequestCtx* create_ctx(ngx_http_request_t* r)
{
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(RequestCtx));
    ngx_http_cleanup_t* hcln = ngx_http_cleanup_add(r, 0);
    if (cln == nullptr || hcln == nullptr) {
        return nullptr;
    }
    auto* ctx = static_cast<RequestCtx*>(cln->data);
    ngx_memzero(ctx, sizeof(RequestCtx));
    ctx->r = r;
    ctx->phase = Phase::done;
    ctx->rc = NGX_DECLINED;
    cln->handler = detach_cleanup;
    // Runs early when the request is terminated (client abort, shutdown), before the pool.
    hcln->handler = detach_cleanup;
    hcln->data = ctx;
    ngx_http_set_ctx(r, ctx, ngx_http_ratelimit_module);
    return ctx;
}


int64_t request_cost(ngx_http_request_t* r, const Limit& limit)
{
    if (limit.cost_value == nullptr) {
        return limit.cost;
    }
    ngx_str_t value;
    if (ngx_http_complex_value(r, limit.cost_value, &value) != NGX_OK) {
        return 1;
    }
    auto cost = ratelimit::parse_non_negative_int(as_view(value));
    if (!cost || *cost > 1000000000) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ratelimit: cost \"%V\" is not a non-negative integer, counting 1",
                      &value);
        return 1;
    }
    return *cost;
}


Policy* request_policy(ngx_http_request_t* r, const Limit& limit, LocConf* lcf, MainConf* mcf)
{
    if (limit.policy_value == nullptr) {
        return limit.policy;
    }
    ngx_str_t name;
    if (ngx_http_complex_value(r, limit.policy_value, &name) != NGX_OK || name.len == 0) {
        return lcf->default_policy;
    }
    Policy* policy = find_policy(mcf, name);
    return policy ? policy : lcf->default_policy;
}


// Evaluates keys, policies and costs; limits with an empty key are skipped.
ngx_int_t evaluate_limits(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, MainConf* mcf)
{
    auto* limits = static_cast<Limit*>(lcf->limits->elts);
    ctx->limits = static_cast<RequestLimit*>(
        ngx_palloc(r->pool, lcf->limits->nelts * sizeof(RequestLimit)));
    if (ctx->limits == nullptr) {
        return NGX_ERROR;
    }
    ctx->nlimits = 0;
    for (ngx_uint_t i = 0; i < lcf->limits->nelts; i++) {
        ngx_str_t key;
        if (ngx_http_complex_value(r, &limits[i].key, &key) != NGX_OK) {
            return NGX_ERROR;
        }
        if (key.len == 0) {
            continue;
        }
        RequestLimit& limit = ctx->limits[ctx->nlimits++];
        limit.key = key;
        limit.policy = request_policy(r, limits[i], lcf, mcf);
        limit.cost = request_cost(r, limits[i]);
        limit.lacked_tokens = false;
    }
    return NGX_OK;
}


void log_rejection(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, bool dry_run)
{
    ngx_log_error(lcf->log_level, r->connection->log, 0,
                  "ratelimit: %s by policy \"%V\" (limit %L, retry after %Ls)",
                  dry_run ? "rejected in dry run" : "rejected", &ctx->policy, ctx->limit,
                  ctx->retry_after);
}


// The bucket a limit is decided with: its policy's, or this node's share of it when the
// `local` failure mode stands in for Redis.
ratelimit::BucketParams bucket_of(const RequestLimit& limit, LocConf* lcf, bool local_fallback)
{
    return local_fallback ? node_share(limit.policy->params, lcf->failure_nodes)
                          : limit.policy->params;
}


// Counts the request once its decision is final (ngx_ratelimit_counters.cpp).
void count(RequestCtx* ctx) noexcept
{
    try {
        CountedLimit few[8];
        std::vector<CountedLimit> many(ctx->nlimits > 8 ? ctx->nlimits : 0);
        CountedLimit* counted = many.empty() ? few : many.data();
        for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
            const RequestLimit& limit = ctx->limits[i];
            counted[i] = CountedLimit{limit.policy, limit.key, limit.lacked_tokens};
        }
        count_request(counted, ctx->nlimits, ctx->status, false);
    } catch (...) {
    }
}


// Records a bucket decision: the most restrictive limit, the status, the handler's result.
void apply_outcomes(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf,
                    const ratelimit::LimitOutcome* outcomes, bool allowed, bool local_fallback)
{
    std::vector<ratelimit::LimitReport> reports;
    reports.reserve(ctx->nlimits);
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        RequestLimit& limit = ctx->limits[i];
        limit.lacked_tokens = !allowed && outcomes[i].retry_after_ms > 0;
        reports.push_back(ratelimit::make_report(as_view(limit.policy->name),
                                                 bucket_of(limit, lcf, local_fallback),
                                                 outcomes[i]));
    }
    size_t best = ratelimit::most_restrictive(reports.data(), reports.size());
    const ratelimit::LimitReport& report = reports[best];
    ctx->has_report = true;
    ctx->policy = ctx->limits[best].policy->name;
    ctx->limit = report.limit;
    ctx->remaining = report.remaining;
    ctx->reset = report.reset_seconds;
    ctx->window = report.window_seconds;
    // The request needs every limit's cost: it can pass again once the slowest has it.
    ctx->retry_after = 0;
    for (const ratelimit::LimitReport& each : reports) {
        ctx->retry_after = std::max(ctx->retry_after, each.retry_after_seconds);
    }

    if (allowed) {
        ctx->status = local_fallback ? Status::local_passed : Status::passed;
        ctx->rc = NGX_DECLINED;
        return;
    }
    if (lcf->dry_run) {
        ctx->status = Status::rejected_dry_run;
        ctx->rc = NGX_DECLINED;
        log_rejection(r, ctx, lcf, true);
        return;
    }
    ctx->status = local_fallback ? Status::local_rejected : Status::rejected;
    ctx->rejected = true;
    ctx->rc = ngx_int_t(lcf->status);
    log_rejection(r, ctx, lcf, false);
}


// Decides with this node's shared-memory buckets: local mode, or the `local` failure mode.
void decide_locally(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, bool fallback)
{
    auto* mcf = static_cast<MainConf*>(
        ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module));
    std::vector<LocalLimit> limits(ctx->nlimits);
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        limits[i] = LocalLimit{limit.policy->name, bucket_of(limit, lcf, fallback), limit.key,
                               limit.cost};
    }
    std::vector<ratelimit::LimitOutcome> outcomes(ctx->nlimits);
    LocalResult result = zone_decide(mcf->zone,
                                     fallback ? BucketSpace::failover : BucketSpace::local,
                                     limits.data(), limits.size(), outcomes.data());
    if (result == LocalResult::no_memory) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: zone \"ratelimit\" is full, request allowed");
        ctx->status = fallback ? Status::local_passed : Status::passed;
        ctx->rc = NGX_DECLINED;
        return;
    }
    apply_outcomes(r, ctx, lcf, outcomes.data(), result == LocalResult::allowed, fallback);
}


// Redis could not decide: the configured failure mode does.
void apply_failure(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf)
{
    switch (lcf->failure_mode) {
    case failure_closed:
        ctx->status = Status::failed_closed;
        ctx->rc = NGX_HTTP_SERVICE_UNAVAILABLE;
        return;
    case failure_local:
        decide_locally(r, ctx, lcf, true);
        return;
    default:
        ctx->status = Status::failed_open;
        ctx->rc = NGX_DECLINED;
    }
}


void apply_script_reply(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf,
                        const ratelimit::CallResult& result)
{
    if (result.status != ratelimit::CallStatus::ok) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "ratelimit: Redis call failed (%s)", ratelimit::to_string(result.status));
        apply_failure(r, ctx, lcf);
        return;
    }
    ratelimit::ScriptResult script;
    std::string error;
    if (!ratelimit::parse_script_reply(result.reply, ctx->nlimits, script, error)) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "ratelimit: Redis replied: %s",
                      error.c_str());
        apply_failure(r, ctx, lcf);
        return;
    }
    apply_outcomes(r, ctx, lcf, script.outcomes.data(), script.allowed, false);
}


// Runs the phases again once the decision is in: the same steps nginx takes when an
// upstream event resumes a request.
void resume_request(ngx_event_t* ev) noexcept
{
    auto* ctx = static_cast<RequestCtx*>(ev->data);
    ngx_http_request_t* r = ctx->r;
    ngx_connection_t* c = r->connection;

    ngx_http_set_log_request(c->log, r);
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}


void on_script_reply(RequestCtx* ctx, const ratelimit::CallResult& result) noexcept
{
    ngx_http_request_t* r = ctx->r;
    ctx->call_pending = false;
    try {
        auto* lcf = static_cast<LocConf*>(
            ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
        apply_script_reply(r, ctx, lcf, result);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: failed to apply the Redis reply, request allowed");
        ctx->status = Status::failed_open;
        ctx->rc = NGX_DECLINED;
    }
    count(ctx);
    ctx->phase = Phase::resumed;
    ngx_post_event(&ctx->resume_ev, &ngx_posted_events);
}


// Sends this request's limits to Redis. NGX_AGAIN: the request waits for the reply.
ngx_int_t ask_redis(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, MainConf* mcf,
                    ratelimit::RedisClient* client)
{
    std::vector<std::string> keys(ctx->nlimits);
    std::vector<ratelimit::ScriptLimit> limits(ctx->nlimits);
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        ratelimit::append_bucket_key(keys[i], mcf->redis->prefix, as_view(limit.policy->name),
                                     as_view(limit.key));
        limits[i] = ratelimit::ScriptLimit{keys[i], limit.policy->params, limit.cost};
    }

    auto submitted = client->submit(
        ratelimit::format_evalsha(limits.data(), limits.size()),
        [ctx](const ratelimit::CallResult& result) { on_script_reply(ctx, result); });

    if (submitted.status != ratelimit::CallStatus::ok) {
        // "down" was logged once when the breaker opened; the rest is worth a line each.
        if (submitted.status != ratelimit::CallStatus::down) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "ratelimit: Redis call not sent (%s)",
                          ratelimit::to_string(submitted.status));
        }
        apply_failure(r, ctx, lcf);
        return ctx->rc;
    }

    count_script_call(1);
    ctx->call = submitted.id;
    ctx->call_pending = true;
    ctx->phase = Phase::waiting;
    ctx->resume_ev.handler = resume_request;
    ctx->resume_ev.data = ctx;
    ctx->resume_ev.log = r->connection->log;

    // Watch the client while it waits, as limit_req does while delaying: a client that
    // goes away finalizes the request (499), whose cleanup detaches it from Redis.
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
    ngx_connection_t* c = r->connection;
    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    } else if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        detach(ctx);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return NGX_AGAIN;
}


ngx_int_t decide(ngx_http_request_t* r, LocConf* lcf)
{
    auto* mcf = static_cast<MainConf*>(
        ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module));
    RequestCtx* ctx = create_ctx(r);
    if (ctx == nullptr || evaluate_limits(r, ctx, lcf, mcf) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (ctx->nlimits == 0) {
        ctx->status = Status::skipped;
        return NGX_DECLINED;
    }

    ratelimit::RedisClient* client = redis_client();
    ngx_int_t rc;
    if (mcf->redis == nullptr) {
        decide_locally(r, ctx, lcf, false);
        rc = ctx->rc;
    } else if (client == nullptr) {
        apply_failure(r, ctx, lcf);
        rc = ctx->rc;
    } else if ((rc = ask_redis(r, ctx, lcf, mcf, client)) == NGX_AGAIN) {
        return NGX_AGAIN;
    }
    count(ctx);
    return rc;
}

}  // namespace


// PREACCESS handler. Allowed requests go on with NGX_DECLINED (never NGX_OK, which would
// skip other handlers); rejected ones end with the configured status.
ngx_int_t access_handler(ngx_http_request_t* r) noexcept
{
    try {
        if (r != r->main) {
            return NGX_DECLINED;
        }
        auto* lcf = static_cast<LocConf*>(
            ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
        RequestCtx* ctx = find_ctx(r);
        if (ctx) {
            switch (ctx->phase) {
            case Phase::waiting:
                return NGX_AGAIN;
            case Phase::resumed:
                ctx->phase = Phase::done;
                return ctx->rc;
            case Phase::done:
                // Decided once already (internal redirect, error page): never twice.
                return NGX_DECLINED;
            }
        }
        if (lcf->limits == nullptr) {
            return NGX_DECLINED;
        }
        return decide(r, lcf);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: out of memory, request allowed");
        return NGX_DECLINED;
    }
}


namespace {

ngx_int_t push_header(ngx_http_request_t* r, const char* name, ngx_str_t value)
{
    ngx_table_elt_t* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.len = ngx_strlen(name);
    h->key.data = (u_char*) name;
    h->value = value;
    h->lowcase_key = nullptr;
#if (nginx_version >= 1023000)
    h->next = nullptr;
#endif
    return NGX_OK;
}


ngx_int_t push_number(ngx_http_request_t* r, const char* name, int64_t value)
{
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    ngx_str_t s{size_t(ngx_sprintf(p, "%L", value) - p), p};
    return push_header(r, name, s);
}


ngx_int_t push_text(ngx_http_request_t* r, const char* name, const std::string& value)
{
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, value.size()));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(p, value.data(), value.size());
    return push_header(r, name, ngx_str_t{value.size(), p});
}


ngx_int_t add_headers(ngx_http_request_t* r, RequestCtx* ctx, ngx_uint_t style)
{
    if ((style & headers_x)
        && (push_number(r, "X-RateLimit-Limit", ctx->limit) != NGX_OK
            || push_number(r, "X-RateLimit-Remaining", ctx->remaining) != NGX_OK
            || push_number(r, "X-RateLimit-Reset", ctx->reset) != NGX_OK))
    {
        return NGX_ERROR;
    }
    if (style & headers_ietf) {
        ratelimit::LimitReport report;
        report.policy = as_view(ctx->policy);
        report.limit = ctx->limit;
        report.remaining = ctx->remaining;
        report.reset_seconds = ctx->reset;
        report.window_seconds = ctx->window;
        if (push_text(r, "RateLimit-Policy", ratelimit::ietf_policy_value(report)) != NGX_OK
            || push_text(r, "RateLimit", ratelimit::ietf_limit_value(report)) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }
    if (ctx->rejected && ctx->retry_after > 0) {
        return push_number(r, "Retry-After", ctx->retry_after);
    }
    return NGX_OK;
}


ngx_int_t header_filter(ngx_http_request_t* r) noexcept
{
    try {
        if (r == r->main) {
            RequestCtx* ctx = find_ctx(r);
            auto* lcf = static_cast<LocConf*>(
                ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
            if (ctx && ctx->has_report && lcf->headers != headers_off
                && add_headers(r, ctx, lcf->headers) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    } catch (...) {
        return NGX_ERROR;
    }
    return next_header_filter(r);
}


enum class Var : uintptr_t { status, limit, remaining, reset, policy };


ngx_int_t get_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                       uintptr_t data) noexcept
{
    RequestCtx* ctx = find_ctx(r->main);
    v->not_found = 1;
    if (ctx == nullptr || ctx->status == Status::none) {
        return NGX_OK;
    }
    auto set = [v](u_char* p, size_t len) {
        v->data = p;
        v->len = unsigned(len);
        v->valid = 1;
        v->no_cacheable = 1;
        v->not_found = 0;
    };
    Var which = Var(data);
    if (which == Var::status) {
        const ngx_str_t& name = status_names[ngx_uint_t(ctx->status)];
        set(name.data, name.len);
        return NGX_OK;
    }
    if (!ctx->has_report) {
        return NGX_OK;
    }
    if (which == Var::policy) {
        set(ctx->policy.data, ctx->policy.len);
        return NGX_OK;
    }
    int64_t number = which == Var::limit ? ctx->limit
                     : which == Var::remaining ? ctx->remaining : ctx->reset;
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    set(p, size_t(ngx_sprintf(p, "%L", number) - p));
    return NGX_OK;
}


ngx_http_variable_t variables[] = {
    {ngx_string("ratelimit_status"), nullptr, get_variable, uintptr_t(Var::status),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_limit"), nullptr, get_variable, uintptr_t(Var::limit),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_remaining"), nullptr, get_variable, uintptr_t(Var::remaining),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_reset"), nullptr, get_variable, uintptr_t(Var::reset),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_policy"), nullptr, get_variable, uintptr_t(Var::policy),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
};

}  // namespace


ngx_int_t install_header_filter() noexcept
{
    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    return NGX_OK;
}


ngx_int_t add_variables(ngx_conf_t* cf) noexcept
{
    for (ngx_http_variable_t& v : variables) {
        ngx_http_variable_t* var = ngx_http_add_variable(cf, &v.name, v.flags);
        if (var == nullptr) {
            return NGX_ERROR;
        }
        var->get_handler = v.get_handler;
        var->data = v.data;
    }
    return NGX_OK;
}

}  // namespace ngx_ratelimit
