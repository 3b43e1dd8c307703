#include "ratelimit/shaping.h"

#include <gtest/gtest.h>

#include <vector>

#include "ratelimit/token_bucket.h"

namespace ratelimit {
namespace {

// The issue's example: rate=5r/s burst=12 delay=8.
const BucketParams kFivePerSecond{5, 1000, 12};

// Decides `n` requests of cost 1 at one instant from a full bucket; the wait of each admitted
// one, -1 for a rejected one.
std::vector<int64_t> waits_at_once(const BucketParams& params, int64_t delay, int n)
{
    std::vector<int64_t> waits;
    BucketState state;
    const BucketState* stored = nullptr;
    for (int i = 0; i < n; i++) {
        LimitInput input{params, 1, stored};
        LimitOutcome outcome;
        if (!decide_all(&input, &outcome, 1, 1000)) {
            waits.push_back(-1);
            continue;
        }
        waits.push_back(delay_ms(params, delay, outcome.level_units));
        state = stored_state(stored, outcome, 1000);
        stored = &state;
    }
    return waits;
}

TEST(DelayMs, TheIssueExample)
{
    std::vector<int64_t> expected{0, 0, 0, 0, 0, 0, 0, 0, 200, 400, 600, 800, -1};
    EXPECT_EQ(waits_at_once(kFivePerSecond, 8, 13), expected);
}

TEST(DelayMs, WithoutDelayNothingWaits)
{
    std::vector<int64_t> expected(12, 0);
    expected.push_back(-1);
    EXPECT_EQ(waits_at_once(kFivePerSecond, kNoDelay, 13), expected);
}

TEST(DelayMs, DelayZeroShapesEveryRequestBelowFull)
{
    std::vector<int64_t> waits = waits_at_once(BucketParams{5, 1000, 3}, 0, 4);
    EXPECT_EQ(waits, (std::vector<int64_t>{200, 400, 600, -1}));
}

TEST(DelayMs, DelayEqualToBurstNeverWaits)
{
    EXPECT_EQ(delay_ms(kFivePerSecond, 12, 0), 0);
    EXPECT_EQ(delay_ms(kFivePerSecond, 40, 0), 0);  // more than burst: as burst
}

TEST(DelayMs, FractionsRoundUpToTheMillisecond)
{
    // 3r/s: 3 units per ms; one token (1000 units) short is 333.33 ms -> 334.
    EXPECT_EQ(delay_ms(BucketParams{3, 1000, 4}, 2, 1000), 334);
    // A level one unit short of the threshold waits one millisecond.
    EXPECT_EQ(delay_ms(kFivePerSecond, 8, 3999), 1);
    EXPECT_EQ(delay_ms(kFivePerSecond, 8, 4000), 0);
}

TEST(DelayMs, SlowRatesInTheirOwnPeriod)
{
    // 60r/m, burst 10, delay 4: one token short is one second.
    const BucketParams per_minute{60, 60000, 10};
    EXPECT_EQ(delay_ms(per_minute, 4, 5 * 60000), 1000);
    EXPECT_EQ(delay_ms(per_minute, 4, 0), 6000);
}

TEST(MaxDelayMs, IsTheWaitFromAnEmptyBucket)
{
    EXPECT_EQ(max_delay_ms(kFivePerSecond, 8), 800);
    EXPECT_EQ(max_delay_ms(kFivePerSecond, kNoDelay), 0);
    EXPECT_EQ(max_delay_ms(BucketParams{1, 60000, 100}, 0), 6000000);
}

TEST(ShareDelay, ScalesLikeTheBurst)
{
    EXPECT_EQ(share_delay(8, 1, 12), 8);
    EXPECT_EQ(share_delay(8, 3, 4), 3);
    EXPECT_EQ(share_delay(12, 5, 3), 3);
    EXPECT_EQ(share_delay(kNoDelay, 3, 4), kNoDelay);
}

}  // namespace
}  // namespace ratelimit
