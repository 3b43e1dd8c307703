// Limits changed at runtime (ratelimit_api limits/ and policies/): the JSON bodies that set
// them, their stored text, and the bucket a request is decided with once they apply.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ratelimit/policy.h"

namespace ratelimit {

// Largest body accepted by PUT limits/ and policies/.
constexpr size_t kMaxOverrideBody = 4096;

// Per-key override: rate and/or burst, or `unlimited`, or `block`. Policy change: rate, burst
// and/or delay. Plain data: kept in shared memory as it is.
struct Override {
    bool has_rate = false;
    bool has_burst = false;
    bool has_delay = false;
    bool unlimited = false;  // the limit does not apply to the key
    bool block = false;      // every request of the key is rejected, as by a bucket never refilled
    Rate rate;
    int64_t burst = 0;
    int64_t delay = 0;
};

enum class OverrideTarget { key, policy };

struct ParsedOverride {
    bool ok = false;
    bool too_large = false;  // the body exceeds kMaxOverrideBody (413 rather than 400)
    Override value;
    std::string error;       // when !ok: what is wrong, for the client
};

// Parses and checks a JSON body such as {"rate": "500r/m", "burst": 600}, {"unlimited": true}
// or {"block": true} (`key`), or {"rate": ..., "burst": ..., "delay": ...} (`policy`), against
// the configured bucket: the bucket it puts in force must be exact (check_bucket), and a delay
// at most its burst. Unknown fields, wrong types, and nothing to change are errors. Never
// throws.
ParsedOverride parse_override(std::string_view body, OverrideTarget target,
                              const BucketParams& configured) noexcept;

// An override's stored text (format_override) read back, as written by any node: the same
// syntax, without the checks against a configuration (params_in_force keeps the bucket
// exact). false: not an override.
bool read_stored_override(std::string_view text, OverrideTarget target, Override& out) noexcept;

// The compact JSON of an override: how it is stored (Redis, logs) and shown by the API.
std::string format_override(const Override& value);

// The bucket in force: the configured one, changed by the policy's runtime change and then by
// the key's override (either may be nullptr). The one place where a limit's bucket is made,
// so that whatever else scales it (an adaptive factor) applies to overridden values alike.
BucketParams params_in_force(const BucketParams& configured, const Override* policy_change,
                             const Override* key_override) noexcept;

// The delay in force under a policy change (-1: the configuration's).
int64_t delay_in_force(const Override* policy_change) noexcept;

// Empty when `key` can carry an override (1 to kMaxKeyBytes bytes: a longer key is addressed by
// the digest form its bucket is named by), else why not.
std::string check_override_key(std::string_view key);

}  // namespace ratelimit
