// The Redis side of the token bucket: one Lua script decides every limit of a request
// atomically, with time from Redis (`TIME`), mirroring token_bucket.h exactly.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "ratelimit/resp.h"
#include "ratelimit/token_bucket.h"

struct redisReply;

namespace ratelimit {

// KEYS: one bucket key per limit.
// ARGV: four integers per limit: count, period_ms, burst, cost.
// Reply: {allowed (0|1), now_ms, then per limit: level_units, reset_ms, retry_after_ms}.
// A bucket is stored as the string "<level_units> <stamp_ms>" with PX = reset_ms, and
// deleted when full, so a key lives exactly until its bucket would be full again.
// Rejected requests and cost-0 requests write nothing.
const std::string& script_source();
const std::string& script_sha1();  // 40 lowercase hex digits

struct ScriptLimit {
    std::string_view key;  // full Redis key (see key.h)
    BucketParams params;
    int64_t cost = 1;
};

// RESP-encoded EVALSHA / EVAL commands for a set of limits.
std::string format_evalsha(const ScriptLimit* limits, size_t n);
std::string format_eval(const ScriptLimit* limits, size_t n);

// Turns "EVALSHA <sha> ..." into the equivalent "EVAL <script> ..." (the NOSCRIPT fallback).
// Returns an empty string if `evalsha` is not a command made by format_evalsha.
std::string evalsha_to_eval(std::string_view evalsha);

struct ScriptResult {
    bool allowed = false;
    int64_t now_ms = 0;
    std::vector<LimitOutcome> outcomes;
};

// Parses the script's reply for `n` limits. Returns false (and sets `error`) on an error
// reply or a reply of the wrong shape.
bool parse_script_reply(const redisReply* reply, size_t n, ScriptResult& result,
                        std::string& error);

}  // namespace ratelimit
