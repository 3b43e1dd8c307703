// Reading one bucket without consuming it (the API's GET buckets/<policy>/<key>): a read-only
// Lua script with time from Redis (`TIME`), and the same reading in C++ for tests and tools.
// Both read every stored format: v2 "v2 <level_units> <period_ms> <stamp_ms>" (any v<N>,
// N >= 2, fields after the 4th ignored) and legacy v1 "<level_units> <stamp_ms>" (in the
// reader's own period). A missing value (or a key of another type) is a full bucket that does
// not exist; a value no bucket can hold (junk, a negative level, a level, period or stamp past
// what the scripts read exactly) is an error, never a full bucket.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ratelimit/policy.h"

struct redisReply;

namespace ratelimit {

struct StoredBucket {
    int64_t level_units = 0;
    int64_t period_ms = 0;  // 0: legacy v1, the reader's own period
    int64_t stamp_ms = 0;
};

std::optional<StoredBucket> parse_stored_bucket(std::string_view text);

struct BucketView {
    bool exists = false;
    int64_t level_units = 0;  // refilled to now_ms, in params' units
    int64_t now_ms = 0;
};

// What the script replies for `stored` (nullopt: no key) at `now_ms`; nullopt where the
// script replies an error (the value is unreadable).
std::optional<BucketView> view_stored(std::optional<std::string_view> stored,
                                      const BucketParams& params, int64_t now_ms);

// core/lua/bucket_read.lua: the bucket reader the scripts that read one bucket (this one,
// the lease script) are sent after.
std::string_view bucket_read_script();

const std::string& bucket_view_script();

// RESP "EVAL <script> 1 <key> <count> <period_ms> <burst>".
// Reply: {exists (0|1), level_units, now_ms}.
std::string format_bucket_view(std::string_view key, const BucketParams& params);

bool parse_bucket_view_reply(const redisReply* reply, BucketView& view, std::string& error);

// Seconds until the bucket is full again, rounded up.
int64_t view_reset_seconds(const BucketParams& params, const BucketView& view);

}  // namespace ratelimit
