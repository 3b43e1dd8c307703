// The token-bucket maths, shared by local (shared-memory) buckets and mirrored exactly by
// the Redis script (script.h); tests check that both give the same decisions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ratelimit/policy.h"

namespace ratelimit {

// A stored bucket. A bucket that does not exist is full.
struct BucketState {
    int64_t level_units = 0;  // tokens * period_ms
    int64_t stamp_ms = 0;     // time of level_units
    int64_t period_ms = 0;    // period level_units was written in; 0 = the reader's (legacy)
};

// What one limit looked like after a decision.
struct LimitOutcome {
    int64_t level_units = 0;     // after the decision (after taking cost when allowed)
    int64_t reset_ms = 0;        // until the bucket is full again
    int64_t retry_after_ms = 0;  // until `cost` is available; 0 when it is now
};

// A level written under a period of `from_period_ms` in units of `to`'s period: whole tokens
// kept, the fraction scaled down, capped at `to`'s capacity. from_period_ms 0 or equal to
// to.period_ms: the level as is. A period outside (0, 86400000] or a level of 2^53 or more
// cannot come from a valid bucket and reads as full (the zone never holds one; a stored Redis
// value like that is an error to the scripts and to view_stored). Exact, no overflow.
int64_t convert_level(int64_t level_units, int64_t from_period_ms, const BucketParams& to);

// The level of `state` at `now_ms`: converted to `params`' period, refilled, capped at
// capacity. A clock that goes backwards refills nothing.
int64_t refill(const BucketParams& params, const BucketState& state, int64_t now_ms);

// One limit of a request: its bucket, its cost, and its state (nullptr = no state yet).
struct LimitInput {
    BucketParams params;
    int64_t cost = 1;
    const BucketState* state = nullptr;
};

// Decides all limits of one request together: allowed only if every bucket holds its cost,
// and then the cost is taken from every bucket; otherwise from none.
// Fills `outcomes[i]` for each input and returns whether the request is allowed.
// The caller stores {outcomes[i].level_units, now_ms, period_ms} back when allowed and
// cost > 0.
bool decide_all(const LimitInput* inputs, LimitOutcome* outcomes, size_t n, int64_t now_ms);

// The outcome of one limit from its level after a decision (what the script replies):
// equal to what decide_all gives for that limit.
LimitOutcome outcome_after(const BucketParams& params, int64_t cost, int64_t level_after,
                           bool allowed);

// The state to store for a limit after an allowed decision at `now_ms` (`before`: the state
// it was decided with, nullptr for a new bucket). The stamp never goes backwards: a decider
// whose clock lags the stored stamp refilled nothing, so the level is as of that stamp, and
// stamping it earlier would credit the lag a second time at the next refill.
BucketState stored_state(const BucketState* before, const LimitOutcome& outcome,
                         int64_t now_ms);

// Whole tokens left, >= 0.
int64_t remaining_tokens(const BucketParams& params, const LimitOutcome& outcome);

// Milliseconds to seconds, rounded up (reset), and at least 1 (Retry-After).
int64_t ceil_seconds(int64_t ms);
int64_t retry_after_seconds(int64_t ms);

// Seconds to refill an empty bucket, rounded up (the ietf "w=" parameter).
int64_t window_seconds(const BucketParams& params);

}  // namespace ratelimit
