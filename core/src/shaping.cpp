#include "ratelimit/shaping.h"

#include <algorithm>

namespace ratelimit {
namespace {

int64_t ceil_div(int64_t a, int64_t b)
{
    return a / b + (a % b != 0 ? 1 : 0);
}

// Units the bucket must hold for a request to pass at once: (burst - delay) tokens.
int64_t threshold_units(const BucketParams& params, int64_t delay)
{
    return (params.burst - std::min(delay, params.burst)) * params.period_ms;
}

}  // namespace

int64_t delay_ms(const BucketParams& params, int64_t delay, int64_t level_after_units)
{
    if (delay < 0 || params.count <= 0) {
        return 0;
    }
    int64_t missing = threshold_units(params, delay) - std::max<int64_t>(level_after_units, 0);
    return missing > 0 ? ceil_div(missing, params.count) : 0;
}

int64_t max_delay_ms(const BucketParams& params, int64_t delay)
{
    return delay_ms(params, delay, 0);
}

int64_t share_delay(int64_t delay, int64_t nodes, int64_t share_burst)
{
    if (delay < 0 || nodes <= 1) {
        return delay;
    }
    return std::min(ceil_div(delay, nodes), share_burst);
}

}  // namespace ratelimit
