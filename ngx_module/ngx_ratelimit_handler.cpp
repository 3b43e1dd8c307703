// The request path: evaluate a request's limits, decide them (Redis through the worker's
// batcher, the node's rejection memory, or the shared zone), suspend the request while Redis
// answers and resume it. Headers and variables: ngx_ratelimit_filter.cpp.

#include <algorithm>
#include <string>

#include "ngx_ratelimit_adaptive.h"
#include "ngx_ratelimit_delay.h"
#include "ngx_ratelimit_lease.h"
#include "ngx_ratelimit_log.h"
#include "ngx_ratelimit_overrides.h"
#include "ngx_ratelimit_request.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/headers.h"
#include "ratelimit/key.h"

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
    ngx_string("DELAYED"),
    ngx_string("DELAYED_DRY_RUN"),
};

// The Redis keys of the request being queued, reused by every request of this worker.
std::string key_scratch;


// Stops anything that could still reach this request: the verdict and the resume.
void detach(RequestCtx* ctx) noexcept
{
    if (ctx->pending) {
        if (ratelimit::Batcher* batcher = redis_batcher()) {
            batcher->cancel(ctx->pending);
        }
        ctx->pending = 0;
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
        log_throttled(NGX_LOG_WARN, r->connection->log, LogReason::junk_cost,
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


// The limit of this request that already names the bucket (policy, key id), if any: by the
// id in the Redis key both become (key.h), which the zone's buckets and rejection memory use
// too, so a long key and the text of its digest are one bucket, checked and taken once.
RequestLimit* same_bucket(RequestCtx* ctx, const Policy* policy, std::string_view id)
{
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        RequestLimit& limit = ctx->limits[i];
        if (limit.policy == policy && as_view(limit.id) == id) {
            return &limit;
        }
    }
    return nullptr;
}


// The key's id (key.h): the key itself, or its digest copied into the request's pool.
ngx_int_t make_key_id(ngx_http_request_t* r, const ngx_str_t& key, ngx_str_t* id)
{
    ratelimit::KeyIdBuffer scratch;
    std::string_view made = ratelimit::key_id(as_view(key), scratch);
    if (made.data() == reinterpret_cast<const char*>(key.data)) {
        *id = key;
        return NGX_OK;
    }
    id->data = static_cast<u_char*>(ngx_pnalloc(r->pool, made.size()));
    if (id->data == nullptr) {
        return NGX_ERROR;
    }
    id->len = made.size();
    ngx_memcpy(id->data, made.data(), made.size());
    return NGX_OK;
}


// Evaluates keys, policies and costs; limits with an empty key are skipped, and limits that
// name the same bucket become one whose cost is their sum.
ngx_int_t evaluate_limits(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, MainConf* mcf)
{
    auto* limits = static_cast<Limit*>(lcf->limits->elts);
    ngx_uint_t n = std::min<ngx_uint_t>(lcf->limits->nelts, ngx_uint_t(kMaxLimitsPerRequest));
    ctx->limits = static_cast<RequestLimit*>(ngx_palloc(r->pool, n * sizeof(RequestLimit)));
    if (ctx->limits == nullptr) {
        return NGX_ERROR;
    }
    ctx->nlimits = 0;
    for (ngx_uint_t i = 0; i < n; i++) {
        ngx_str_t key;
        if (ngx_http_complex_value(r, &limits[i].key, &key) != NGX_OK) {
            return NGX_ERROR;
        }
        if (key.len == 0) {
            continue;
        }
        ngx_str_t id;
        if (make_key_id(r, key, &id) != NGX_OK) {
            return NGX_ERROR;
        }
        Policy* policy = request_policy(r, limits[i], lcf, mcf);
        int64_t cost = request_cost(r, limits[i]);
        if (RequestLimit* twin = same_bucket(ctx, policy, as_view(id))) {
            twin->cost = std::min<int64_t>(twin->cost + cost, 1000000000LL * 64);
            twin->delay = stricter_delay(twin->delay, limit_delay(limits[i], policy));
            continue;
        }
        ctx->limits[ctx->nlimits++] =
            RequestLimit{policy, key, id, cost, false, limit_delay(limits[i], policy),
                         OverrideUse::none, {}};
    }
    // Sets each limit's params: its policy's in force, or a runtime override's.
    apply_overrides(mcf, ctx->limits, ctx->nlimits, true);
    // A key exempt by an override is not limited by that line.
    auto kept = std::remove_if(
        ctx->limits, ctx->limits + ctx->nlimits,
        [](const RequestLimit& limit) { return limit.use == OverrideUse::unlimited; });
    ctx->exempt = kept != ctx->limits + ctx->nlimits;
    ctx->nlimits = ngx_uint_t(kept - ctx->limits);
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
    return local_fallback ? node_share(limit.params, lcf->failure_nodes) : limit.params;
}


// The request's limits as the zone takes them.
void zone_limits(RequestCtx* ctx, LocConf* lcf, bool local_fallback, LocalLimit* out)
{
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        out[i] = LocalLimit{limit.policy->name, bucket_of(limit, lcf, local_fallback),
                            limit.id, limit.cost};
    }
}


// Records a bucket decision: the most restrictive limit, the status, the handler's result.
void apply_outcomes(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf,
                    const ratelimit::LimitOutcome* outcomes, bool allowed, bool local_fallback)
{
    ratelimit::LimitReport reports[kMaxLimitsPerRequest];
    ratelimit::BucketParams buckets[kMaxLimitsPerRequest];
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        RequestLimit& limit = ctx->limits[i];
        limit.lacked_tokens = !allowed && outcomes[i].retry_after_ms > 0;
        buckets[i] = bucket_of(limit, lcf, local_fallback);
        reports[i] = ratelimit::make_report(as_view(limit.policy->name), buckets[i],
                                            outcomes[i]);
    }
    size_t best = ratelimit::most_restrictive(reports, ctx->nlimits);
    const ratelimit::LimitReport& report = reports[best];
    ctx->has_report = true;
    ctx->policy = ctx->limits[best].policy->name;
    ctx->limit = report.limit;
    ctx->remaining = report.remaining;
    ctx->reset = report.reset_seconds;
    ctx->window = report.window_seconds;
    // The request needs every limit's cost: it can pass again once the slowest has it.
    ctx->retry_after = 0;
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        ctx->retry_after = std::max(ctx->retry_after, reports[i].retry_after_seconds);
    }

    if (allowed) {
        ctx->status = local_fallback ? Status::local_passed : Status::passed;
        ctx->rc = NGX_DECLINED;
        shape(r, ctx, lcf, buckets, outcomes, local_fallback ? lcf->failure_nodes : 1,
              local_fallback);
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


MainConf* main_conf(ngx_http_request_t* r)
{
    return static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_ratelimit_module));
}


// Decides with this node's shared-memory buckets: local mode, or the `local` failure mode.
void decide_locally(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, bool fallback)
{
    LocalLimit limits[kMaxLimitsPerRequest];
    ratelimit::LimitOutcome outcomes[kMaxLimitsPerRequest];
    zone_limits(ctx, lcf, fallback, limits);
    LocalResult result = zone_decide(main_conf(r)->zone,
                                     fallback ? BucketSpace::failover : BucketSpace::local,
                                     limits, ctx->nlimits, outcomes);
    if (result == LocalResult::no_memory) {
        log_throttled(NGX_LOG_ERR, r->connection->log, LogReason::zone_full,
                      "ratelimit: the shared zone is full, request allowed");
        ctx->status = fallback ? Status::local_passed : Status::passed;
        ctx->rc = NGX_DECLINED;
        return;
    }
    apply_outcomes(r, ctx, lcf, outcomes, result == LocalResult::allowed, fallback);
}


// Redis could not decide: what the rejection memory set aside goes back, and the configured
// failure mode decides.
void apply_failure(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf)
{
    if (ctx->set_aside) {
        ctx->set_aside = false;
        LocalLimit limits[kMaxLimitsPerRequest];
        zone_limits(ctx, lcf, false, limits);
        zone_release(main_conf(r)->zone, limits, ctx->nlimits);
    }
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


// The rejection memory: a request that needs more than what the last replies showed of its
// buckets (refilled since) is rejected here, without a Redis call.
bool rejected_on_node(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, MainConf* mcf)
{
    if (zone_memory_empty(mcf->zone)) {
        return false;
    }
    LocalLimit limits[kMaxLimitsPerRequest];
    ratelimit::LimitOutcome outcomes[kMaxLimitsPerRequest];
    zone_limits(ctx, lcf, false, limits);
    if (!zone_recall(mcf->zone, limits, ctx->nlimits, ratelimit::monotonic_ms(), outcomes,
                     &ctx->set_aside)) {
        return false;
    }
    ctx->on_node = true;
    apply_outcomes(r, ctx, lcf, outcomes, false, false);
    return true;
}


// The Redis keys of the request's buckets, in key_scratch (valid until it is next filled).
void redis_keys(RequestCtx* ctx, MainConf* mcf, std::string_view* keys)
{
    size_t ends[kMaxLimitsPerRequest];
    key_scratch.clear();
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        ratelimit::append_bucket_id(key_scratch, mcf->redis->prefix,
                                    as_view(limit.policy->name), as_view(limit.id));
        ends[i] = key_scratch.size();
    }
    for (ngx_uint_t i = 0, start = 0; i < ctx->nlimits; start = ends[i], i++) {
        keys[i] = std::string_view(key_scratch).substr(start, ends[i] - start);
    }
}


// Token leases (ngx_ratelimit_lease.cpp): a request whose every limit holds a lease with its
// cost passes on the node; any other request counts toward its keys' rates (a hot key gets a
// lease) and goes on to Redis.
bool passed_on_lease(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, MainConf* mcf)
{
    bool any = false;
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        any = any || ctx->limits[i].policy->lease_ms > 0;
    }
    if (!any) {
        return false;
    }
    std::string_view keys[kMaxLimitsPerRequest];
    redis_keys(ctx, mcf, keys);
    LeaseLimit limits[kMaxLimitsPerRequest];
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        limits[i] = LeaseLimit{keys[i], limit.params, limit.cost, limit.policy->lease_ms,
                               limit.policy->stats};
    }
    ratelimit::LimitOutcome outcomes[kMaxLimitsPerRequest];
    if (!lease_decide(mcf->zone, redis_router(), limits, ctx->nlimits, outcomes)) {
        return false;
    }
    apply_outcomes(r, ctx, lcf, outcomes, true, false);
    return true;
}


// What a blocked key is told to wait (Retry-After: 3600): a block has no end the node knows of.
constexpr int64_t kBlockedRetryMs = 3600 * 1000;

// A key blocked by an override: the request is rejected on the node, as by a bucket that
// never refills, without asking Redis. The other limits show as they would be untouched.
bool rejected_by_block(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf)
{
    ratelimit::LimitOutcome outcomes[kMaxLimitsPerRequest];
    bool blocked = false;
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        if (limit.use == OverrideUse::block) {
            blocked = true;
            outcomes[i] = ratelimit::LimitOutcome{0, kBlockedRetryMs, kBlockedRetryMs};
        } else {
            outcomes[i] = ratelimit::outcome_after(limit.params, 0,
                                                   limit.params.capacity_units(), true);
        }
    }
    if (!blocked) {
        return false;
    }
    ctx->on_node = true;
    apply_outcomes(r, ctx, lcf, outcomes, false, false);
    return true;
}


void apply_verdict(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf,
                   const ratelimit::Verdict& verdict)
{
    if (!verdict.decided) {
        if (verdict.error.empty()) {
            log_throttled(NGX_LOG_WARN, r->connection->log, LogReason::call_failed,
                          "ratelimit: Redis call failed (%s)",
                          ratelimit::to_string(verdict.status));
        } else {
            log_throttled(NGX_LOG_ERR, r->connection->log, LogReason::redis_error,
                          "ratelimit: Redis replied: %*s", verdict.error.size(),
                          verdict.error.data());
        }
        apply_failure(r, ctx, lcf);
        return;
    }
    ratelimit::LimitOutcome outcomes[kMaxLimitsPerRequest];
    bool short_of = false;
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        outcomes[i] = ratelimit::outcome_after(limit.params, limit.cost, verdict.levels[i],
                                               verdict.allowed);
        short_of = short_of || verdict.levels[i] < limit.cost * limit.params.period_ms;
    }
    ngx_shm_zone_t* zone = main_conf(r)->zone;
    if (short_of || !zone_memory_empty(zone)) {
        LocalLimit limits[kMaxLimitsPerRequest];
        zone_limits(ctx, lcf, false, limits);
        zone_remember(zone, limits, ctx->nlimits, verdict.levels, verdict.allowed,
                      verdict.sent_ms);
    }
    apply_outcomes(r, ctx, lcf, outcomes, verdict.allowed, false);
}


// Counts the request once its decision is final (ngx_ratelimit_counters.cpp).
void count(RequestCtx* ctx) noexcept
{
    CountedLimit counted[kMaxLimitsPerRequest];
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const RequestLimit& limit = ctx->limits[i];
        counted[i] = CountedLimit{limit.policy, limit.key, limit.lacked_tokens};
    }
    // Rejections decided on the node are a subset of the rejected ones (dry run aside).
    count_request(counted, ctx->nlimits, ctx->status,
                  ctx->on_node && ctx->status == Status::rejected);
    count_admitted(ctx);
    if (ctx->wait_ms > 0) {
        count_delay(ctx->limits[ctx->wait_limit].policy, ctx->wait_ms);
    }
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


void on_verdict(void* owner, const ratelimit::Verdict& verdict) noexcept
{
    auto* ctx = static_cast<RequestCtx*>(owner);
    ngx_http_request_t* r = ctx->r;
    auto* lcf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
    ctx->pending = 0;
    try {
        apply_verdict(r, ctx, lcf, verdict);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "ratelimit: failed to apply the Redis reply");
        apply_failure(r, ctx, lcf);
    }
    count(ctx);
    ctx->phase = Phase::resumed;
    ngx_post_event(&ctx->resume_ev, &ngx_posted_events);
}


// Queues this request's limits for the next script call. NGX_AGAIN: the request waits.
ngx_int_t ask_redis(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf, MainConf* mcf,
                    ratelimit::Batcher* batcher)
{
    std::string_view keys[kMaxLimitsPerRequest];
    redis_keys(ctx, mcf, keys);
    ratelimit::ScriptLimit limits[kMaxLimitsPerRequest];
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        limits[i] = ratelimit::ScriptLimit{keys[i], ctx->limits[i].params,
                                           ctx->limits[i].cost};
    }

    auto queued = batcher->decide(limits, ctx->nlimits, on_verdict, ctx);
    if (queued.status != ratelimit::CallStatus::ok) {
        // "down" was logged once when the breaker opened; the rest is worth a line.
        if (queued.status != ratelimit::CallStatus::down) {
            log_throttled(NGX_LOG_WARN, r->connection->log, LogReason::call_not_sent,
                          "ratelimit: Redis call not sent (%s)",
                          ratelimit::to_string(queued.status));
        }
        apply_failure(r, ctx, lcf);
        return ctx->rc;
    }

    ctx->pending = queued.id;
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
        ctx->phase = Phase::done;
        r->read_event_handler = ngx_http_block_reading;
        r->write_event_handler = ngx_http_core_run_phases;
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    return NGX_AGAIN;
}


// Decides the request, or queues it for Redis (NGX_AGAIN): what the handler returns.
ngx_int_t start_deciding(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf)
{
    MainConf* mcf = main_conf(r);
    if (evaluate_limits(r, ctx, lcf, mcf) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (ctx->nlimits == 0) {
        ctx->status = ctx->exempt ? Status::passed : Status::skipped;
        return NGX_DECLINED;
    }
    if (rejected_by_block(r, ctx, lcf)) {
        return ctx->rc;
    }
    if (mcf->redis == nullptr) {
        decide_locally(r, ctx, lcf, false);
        return ctx->rc;
    }
    ratelimit::Batcher* batcher = redis_batcher();
    if (batcher == nullptr) {
        apply_failure(r, ctx, lcf);
        return ctx->rc;
    }
    if (passed_on_lease(r, ctx, lcf, mcf) || rejected_on_node(r, ctx, lcf, mcf)) {
        return ctx->rc;
    }
    return ask_redis(r, ctx, lcf, mcf, batcher);
}


// What the handler returns once the request is decided: an admitted request that must wait
// (delay=) waits first (ngx_ratelimit_delay.cpp).
ngx_int_t proceed(ngx_http_request_t* r, RequestCtx* ctx, ngx_int_t rc) noexcept
{
    return rc == NGX_DECLINED && ctx->wait_ms > 0 ? start_delay(r, ctx) : rc;
}


ngx_int_t decide(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf)
{
    ngx_int_t rc = start_deciding(r, ctx, lcf);
    if (rc != NGX_AGAIN && ctx->status != Status::none && ctx->status != Status::skipped) {
        count(ctx);
    }
    return proceed(r, ctx, rc);
}


// Something threw on the request path (out of memory): the failure mode decides.
ngx_int_t decide_after_exception(ngx_http_request_t* r, RequestCtx* ctx, LocConf* lcf) noexcept
{
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "ratelimit: out of memory, the failure mode decides");
    if (ctx == nullptr) {
        return lcf->failure_mode == failure_closed ? NGX_HTTP_SERVICE_UNAVAILABLE
                                                   : NGX_DECLINED;
    }
    detach(ctx);
    ctx->phase = Phase::done;
    ctx->has_report = false;
    ctx->rejected = false;
    ctx->wait_ms = 0;
    try {
        apply_failure(r, ctx, lcf);
    } catch (...) {
        ctx->status = lcf->failure_mode == failure_closed ? Status::failed_closed
                                                          : Status::failed_open;
        ctx->rc = lcf->failure_mode == failure_closed ? NGX_HTTP_SERVICE_UNAVAILABLE
                                                      : NGX_DECLINED;
    }
    return ctx->rc;
}

}  // namespace


RequestCtx* find_ctx(ngx_http_request_t* r) noexcept
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


const ngx_str_t& status_name(Status status) noexcept
{
    return status_names[ngx_uint_t(status)];
}


// PREACCESS handler. Allowed requests go on with NGX_DECLINED (never NGX_OK, which would
// skip other handlers); rejected ones end with the configured status.
ngx_int_t access_handler(ngx_http_request_t* r) noexcept
{
    if (r != r->main) {
        return NGX_DECLINED;
    }
    auto* lcf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
    RequestCtx* ctx = find_ctx(r);
    if (ctx) {
        switch (ctx->phase) {
        case Phase::waiting:
        case Phase::delaying:
            return NGX_AGAIN;
        case Phase::resumed:
            ctx->phase = Phase::done;
            return proceed(r, ctx, ctx->rc);
        case Phase::done:
            // Decided once already (internal redirect, error page): never twice.
            return NGX_DECLINED;
        }
    }
    if (lcf->limits == nullptr) {
        return NGX_DECLINED;
    }
    ctx = create_ctx(r);
    if (ctx == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    try {
        return decide(r, ctx, lcf);
    } catch (...) {
        return decide_after_exception(r, ctx, lcf);
    }
}

}  // namespace ngx_ratelimit
