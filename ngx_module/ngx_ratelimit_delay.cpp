// Shaping: limit_req's `delay=` for this module's buckets. The wait comes from the level the
// bucket has after the decision (ratelimit/shaping.h), so across a fleet a request waits for the
// tokens every node drew before it. A waiting request holds a timer on its connection's write
// event and nothing else; the client is watched (ngx_http_test_reading) and one that leaves
// ends the request with 499, its tokens spent.

#include "ngx_ratelimit_delay.h"

#include <algorithm>

namespace ngx_ratelimit {
namespace {

// Waits longer than this make `nginx -t` warn: a request held for minutes is rarely wanted.
constexpr int64_t kLongWaitMs = 60000;


// limit_req's delay_log_level: one level below the rejections', info at least.
ngx_uint_t delay_log_level(ngx_uint_t rejection_level)
{
    return rejection_level == NGX_LOG_INFO ? NGX_LOG_INFO : rejection_level + 1;
}


void log_delay(ngx_http_request_t* r, const LocConf* lcf, const ngx_str_t& policy,
               int64_t wait_ms, bool dry_run)
{
    ngx_log_error(delay_log_level(lcf->log_level), r->connection->log, 0,
                  "ratelimit: %s %Lms by policy \"%V\"",
                  dry_run ? "delaying in dry run (not waiting)" : "delaying request", wait_ms,
                  &policy);
}


// The request's write event handler while it waits: the timer's expiry clears `delayed`
// (ngx_http_request_handler); anything earlier is a spurious wake-up.
void end_delay(ngx_http_request_t* r) noexcept
{
    ngx_event_t* wev = r->connection->write;
    if (wev->delayed) {
        if (ngx_handle_write_event(wev, 0) != NGX_OK) {
            ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        }
        return;
    }
    if (ngx_handle_read_event(r->connection->read, 0) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }
    if (RequestCtx* ctx = find_ctx(r)) {
        ctx->phase = Phase::done;
    }
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}

}  // namespace


bool parse_delay(ngx_conf_t* cf, const ngx_str_t& directive, std::string_view value,
                 int64_t& delay)
{
    auto parsed = ratelimit::parse_non_negative_int(value);
    if (!parsed || *parsed > 1000000000) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": invalid delay \"delay=%*s\" (expected a non-negative "
                           "integer, at most the burst)", &directive, value.size(),
                           value.data());
        return false;
    }
    delay = *parsed;
    return true;
}


bool check_delay(ngx_conf_t* cf, const ngx_str_t& owner, const ratelimit::BucketParams& params,
                 int64_t delay, const ngx_str_t& file, ngx_uint_t line)
{
    if (delay == ratelimit::kNoDelay) {
        return true;
    }
    if (delay > params.burst) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"delay=%L\" is more than the burst %L of policy \"%V\" in %V:%ui",
                      delay, params.burst, &owner, &file, line);
        return false;
    }
    int64_t longest = ratelimit::max_delay_ms(params, delay);
    if (longest > kLongWaitMs) {
        ngx_log_error(NGX_LOG_WARN, cf->log, 0,
                      "\"delay=%L\" with policy \"%V\" lets requests wait up to %Ls "
                      "((burst - delay) / rate) in %V:%ui", delay, &owner,
                      (longest + 999) / 1000, &file, line);
    }
    return true;
}


int64_t limit_delay(const Limit& line, const Policy* policy)
{
    return line.delay != ratelimit::kNoDelay ? line.delay : policy->delay;
}


int64_t stricter_delay(int64_t a, int64_t b)
{
    if (a == ratelimit::kNoDelay || b == ratelimit::kNoDelay) {
        return std::max(a, b);
    }
    return std::min(a, b);
}


void shape(ngx_http_request_t* r, RequestCtx* ctx, const LocConf* lcf,
           const ratelimit::BucketParams* buckets, const ratelimit::LimitOutcome* outcomes,
           int64_t nodes, bool local_fallback)
{
    int64_t wait = 0;
    for (ngx_uint_t i = 0; i < ctx->nlimits; i++) {
        const ratelimit::BucketParams& bucket = buckets[i];
        int64_t delay = ratelimit::share_delay(ctx->limits[i].delay, nodes, bucket.burst);
        int64_t ms = ratelimit::delay_ms(bucket, delay, outcomes[i].level_units);
        if (ms > wait) {
            wait = ms;
            ctx->wait_limit = i;
        }
    }
    if (wait == 0) {
        return;
    }
    const ngx_str_t& policy = ctx->limits[ctx->wait_limit].policy->name;
    if (lcf->dry_run) {
        ctx->status = Status::delayed_dry_run;
        log_delay(r, lcf, policy, wait, true);
        return;
    }
    // The `local` failure mode keeps its status: LOCAL_* says who decided.
    ctx->status = local_fallback ? Status::local_passed : Status::delayed;
    ctx->wait_ms = wait;
    log_delay(r, lcf, policy, wait, false);
}


ngx_int_t start_delay(ngx_http_request_t* r, RequestCtx* ctx) noexcept
{
    ngx_connection_t* c = r->connection;
    if (c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);
    } else if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ctx->phase = Phase::delaying;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = end_delay;
    c->write->delayed = 1;
    ngx_add_timer(c->write, ngx_msec_t(ctx->wait_ms));
    return NGX_AGAIN;
}

}  // namespace ngx_ratelimit
