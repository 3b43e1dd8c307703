// Policies and rates: "60r/m", names, and the limits that keep the bucket maths exact.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ratelimit {

// N requests per period. Stored as integers so the maths is exact (see token_bucket.h).
struct Rate {
    int64_t count = 0;      // N, > 0
    int64_t period_ms = 0;  // 1000, 60000, 3600000 or 86400000

    double per_second() const { return double(count) * 1000.0 / double(period_ms); }
};

// A token bucket: capacity `burst` tokens, refilled continuously at `rate`.
// Plain data: it is copied into nginx configuration and shared memory.
struct BucketParams {
    int64_t count = 0;      // rate numerator
    int64_t period_ms = 0;  // rate period
    int64_t burst = 0;      // capacity in whole tokens

    // Bucket levels are kept in units of 1/period_ms token: one token = period_ms units,
    // and each millisecond adds `count` units. All values stay below 2^53, so Lua's
    // doubles and C++ integers compute the same results.
    int64_t capacity_units() const { return burst * period_ms; }
    int64_t token_units() const { return period_ms; }
};

// Parses "Nr/s", "Nr/m", "Nr/h" or "Nr/d" (N a positive integer). nullopt on any other input.
std::optional<Rate> parse_rate(std::string_view text);

// Parses a positive decimal integer without sign or spaces; nullopt on overflow or junk.
std::optional<int64_t> parse_positive_int(std::string_view text);

// Parses a non-negative decimal integer (used for cost); nullopt on junk, sign, overflow.
std::optional<int64_t> parse_non_negative_int(std::string_view text);

// Milliseconds in one unit of a rate or a duration: 's', 'm', 'h' or 'd'.
std::optional<int64_t> unit_period_ms(char unit);

// Names match [A-Za-z0-9_-]+.
bool is_valid_policy_name(std::string_view name);

// Empty when the bucket can be computed exactly, else a reason such as
// "burst is too large for rate 5r/d" (capacity_units must stay below 2^53).
std::string check_bucket(const BucketParams& params);

// "60r/m" back from a rate, for logs, the status API and headers.
std::string format_rate(const Rate& rate);

}  // namespace ratelimit
