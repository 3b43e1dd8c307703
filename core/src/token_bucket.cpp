#include "ratelimit/token_bucket.h"

#include <limits>

namespace ratelimit {
namespace {

constexpr int64_t kExactLimit = int64_t(1) << 53;
constexpr int64_t kMaxPeriodMs = 86400000;

int64_t ceil_div(int64_t a, int64_t b)
{
    return a / b + (a % b != 0 ? 1 : 0);
}

// cost * period_ms, saturated: a cost no bucket can hold must not overflow.
int64_t need_units(const BucketParams& params, int64_t cost)
{
    if (cost > std::numeric_limits<int64_t>::max() / params.period_ms) {
        return std::numeric_limits<int64_t>::max();
    }
    return cost * params.period_ms;
}

int64_t reset_ms(const BucketParams& params, int64_t level)
{
    return ceil_div(params.capacity_units() - level, params.count);
}

int64_t retry_ms(const BucketParams& params, int64_t level, int64_t need)
{
    return level >= need ? 0 : ceil_div(need - level, params.count);
}

}  // namespace

int64_t convert_level(int64_t level_units, int64_t from_period_ms, const BucketParams& to)
{
    if (from_period_ms == 0 || from_period_ms == to.period_ms) {
        return level_units;
    }
    if (from_period_ms < 0 || from_period_ms > kMaxPeriodMs || level_units >= kExactLimit) {
        return to.capacity_units();
    }
    int64_t level = level_units < 0 ? 0 : level_units;
    int64_t tokens = level / from_period_ms;
    if (tokens >= to.burst) {
        return to.capacity_units();
    }
    // tokens * period < burst * period < 2^53; frac * period < 86400000^2 < 2^53.
    int64_t frac = level % from_period_ms;
    return tokens * to.period_ms + frac * to.period_ms / from_period_ms;
}

int64_t refill(const BucketParams& params, const BucketState& state, int64_t now_ms)
{
    int64_t capacity = params.capacity_units();
    int64_t level = convert_level(state.level_units, state.period_ms, params);
    level = level < 0 ? 0 : level;
    if (level >= capacity) {
        return capacity;
    }
    int64_t elapsed = now_ms > state.stamp_ms ? now_ms - state.stamp_ms : 0;
    // Compared before multiplying so that a long idle cannot overflow.
    if (elapsed >= reset_ms(params, level)) {
        return capacity;
    }
    return level + elapsed * params.count;
}

bool decide_all(const LimitInput* inputs, LimitOutcome* outcomes, size_t n, int64_t now_ms)
{
    bool allowed = true;
    for (size_t i = 0; i < n; i++) {
        const LimitInput& in = inputs[i];
        int64_t level =
            in.state ? refill(in.params, *in.state, now_ms) : in.params.capacity_units();
        int64_t need = need_units(in.params, in.cost);
        outcomes[i].level_units = level;
        outcomes[i].retry_after_ms = retry_ms(in.params, level, need);
        allowed = allowed && level >= need;
    }
    for (size_t i = 0; i < n; i++) {
        if (allowed) {
            outcomes[i].level_units -= need_units(inputs[i].params, inputs[i].cost);
        }
        outcomes[i].reset_ms = reset_ms(inputs[i].params, outcomes[i].level_units);
    }
    return allowed;
}

LimitOutcome outcome_after(const BucketParams& params, int64_t cost, int64_t level_after,
                           bool allowed)
{
    LimitOutcome out;
    out.level_units = level_after;
    out.reset_ms = reset_ms(params, level_after);
    // Allowed: the level before held the cost. Rejected: nothing was taken.
    out.retry_after_ms = allowed ? 0 : retry_ms(params, level_after, need_units(params, cost));
    return out;
}

BucketState stored_state(const BucketState* before, const LimitOutcome& outcome,
                         int64_t now_ms)
{
    int64_t stamp = before && before->stamp_ms > now_ms ? before->stamp_ms : now_ms;
    return BucketState{outcome.level_units, stamp};
}

int64_t remaining_tokens(const BucketParams& params, const LimitOutcome& outcome)
{
    return outcome.level_units > 0 ? outcome.level_units / params.period_ms : 0;
}

int64_t ceil_seconds(int64_t ms)
{
    return ms > 0 ? ceil_div(ms, 1000) : 0;
}

int64_t retry_after_seconds(int64_t ms)
{
    int64_t seconds = ceil_seconds(ms);
    return seconds < 1 ? 1 : seconds;
}

int64_t window_seconds(const BucketParams& params)
{
    return ceil_seconds(ceil_div(params.capacity_units(), params.count));
}

}  // namespace ratelimit
