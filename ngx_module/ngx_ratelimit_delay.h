// Shaping (delay=): the directive's checks, the wait of an admitted request, and the wait
// itself, which holds only a timer on the request's connection, as limit_req's does.
#pragma once

#include <string_view>

#include "ngx_ratelimit_request.h"
#include "ratelimit/shaping.h"
#include "ratelimit/token_bucket.h"

namespace ngx_ratelimit {

// Parses the value of `delay=` (a non-negative integer) on `directive`; false after logging.
bool parse_delay(ngx_conf_t* cf, const ngx_str_t& directive, std::string_view value,
                 int64_t& delay);
// Checks `delay` against policy `owner`'s `params` (0 <= N <= burst: else an error naming
// both and where it was written) and warns when the longest wait it allows,
// (burst - N) / rate, exceeds 60 s.
bool check_delay(ngx_conf_t* cf, const ngx_str_t& owner, const ratelimit::BucketParams& params,
                 int64_t delay, const ngx_str_t& file, ngx_uint_t line);

// delay= of one `ratelimit` line for `policy`: the line's own, else the policy's.
int64_t limit_delay(const Limit& line, const Policy* policy);
// Two lines naming one bucket: the one that shapes more (the smaller N) holds.
int64_t stricter_delay(int64_t a, int64_t b);

// An admitted request's wait from its limits' levels after the decision (`buckets`: the
// params each was decided with; `nodes`: the share of the `local` failure mode, else 1):
// the longest of its limits' waits. Sets the status (DELAYED, DELAYED_DRY_RUN) and logs it
// one level below rejections, as limit_req does. Dry run: the request does not wait.
void shape(ngx_http_request_t* r, RequestCtx* ctx, const LocConf* lcf,
           const ratelimit::BucketParams* buckets, const ratelimit::LimitOutcome* outcomes,
           int64_t nodes, bool local_fallback);

// Holds the request for ctx->wait_ms (NGX_AGAIN), watching the client meanwhile; the request
// goes on through its phases when the timer fires.
ngx_int_t start_delay(ngx_http_request_t* r, RequestCtx* ctx) noexcept;

}  // namespace ngx_ratelimit
