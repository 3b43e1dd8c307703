// Shaping, as limit_req's `delay=`: how long an admitted request waits, read from the level its
// bucket has after the decision. Redis replies and local buckets give the same level, so every
// node of a fleet computes the same wait for the same draw.
#pragma once

#include <cstdint>

#include "ratelimit/policy.h"

namespace ratelimit {

// No `delay=`: nothing waits (limit_req's nodelay).
constexpr int64_t kNoDelay = -1;

// Milliseconds an admitted request waits: until its bucket, at `level_after_units` once the
// request's tokens are taken, would have refilled to `burst - delay` tokens. 0 when it holds
// that many, and always with kNoDelay. Rounded up to the millisecond; exact integer maths.
int64_t delay_ms(const BucketParams& params, int64_t delay, int64_t level_after_units);

// The longest wait `delay` allows: (burst - delay) / rate, rounded up; 0 with kNoDelay.
int64_t max_delay_ms(const BucketParams& params, int64_t delay);

// `delay` for this node's share of a bucket (the `local` failure mode with nodes=N, whose
// burst is burst/N rounded up): delay/N rounded up, at most `share_burst`.
int64_t share_delay(int64_t delay, int64_t nodes, int64_t share_burst);

}  // namespace ratelimit
