// Response header values for a decision: X-RateLimit-*, IETF RateLimit/RateLimit-Policy,
// Retry-After, and the choice of the limit they describe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ratelimit/token_bucket.h"

namespace ratelimit {

// A limit as the headers and variables see it.
struct LimitReport {
    std::string_view policy;
    int64_t limit = 0;             // burst
    int64_t remaining = 0;         // whole tokens, >= 0
    int64_t reset_seconds = 0;     // until full, rounded up
    int64_t retry_after_seconds = 0;  // >= 1 when this limit rejected, else 0
    int64_t window_seconds = 0;    // to refill from empty, rounded up
};

LimitReport make_report(std::string_view policy, const BucketParams& params,
                        const LimitOutcome& outcome);

// Index of the most restrictive report: lowest remaining, ties broken by longest reset.
// n must be > 0.
size_t most_restrictive(const LimitReport* reports, size_t n);

// RateLimit-Policy: "<policy>";q=<burst>;w=<window>
std::string ietf_policy_value(const LimitReport& report);
// RateLimit: "<policy>";r=<remaining>;t=<reset>
std::string ietf_limit_value(const LimitReport& report);

}  // namespace ratelimit
