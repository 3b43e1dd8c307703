#include "ratelimit/token_bucket.h"

#include <gtest/gtest.h>

#include <limits>
#include <random>

namespace ratelimit {
namespace {

// 10r/s, burst 5: capacity 5000 units, one token = 1000 units, 10 units per ms.
const BucketParams kTenPerSecond{10, 1000, 5};
// 60r/m, burst 2: capacity 120000 units, one token = 60000 units, 60 units per ms.
const BucketParams kSixtyPerMinute{60, 60000, 2};

LimitOutcome decide_one(const BucketParams& params, int64_t cost, const BucketState* state,
                        int64_t now, bool* allowed = nullptr)
{
    LimitInput input{params, cost, state};
    LimitOutcome outcome;
    bool ok = decide_all(&input, &outcome, 1, now);
    if (allowed) {
        *allowed = ok;
    }
    return outcome;
}

TEST(Refill, AddsCountUnitsPerMillisecond)
{
    BucketState state{1000, 100};
    EXPECT_EQ(refill(kTenPerSecond, state, 100), 1000);
    EXPECT_EQ(refill(kTenPerSecond, state, 101), 1010);
    EXPECT_EQ(refill(kTenPerSecond, state, 500), 5000);
    EXPECT_EQ(refill(kTenPerSecond, state, 499), 4990);
}

TEST(Refill, CappedAtCapacityAfterLongIdle)
{
    BucketState state{0, 0};
    EXPECT_EQ(refill(kTenPerSecond, state, 1000000), 5000);
    EXPECT_EQ(refill(kTenPerSecond, state, std::numeric_limits<int64_t>::max()), 5000);
    const BucketParams huge{(int64_t(1) << 40), 1000, 8000};
    EXPECT_EQ(refill(huge, state, std::numeric_limits<int64_t>::max()), huge.capacity_units());
}

TEST(Refill, ClockStillOrBackwardsRefillsNothing)
{
    BucketState state{1234, 10000};
    EXPECT_EQ(refill(kTenPerSecond, state, 10000), 1234);
    EXPECT_EQ(refill(kTenPerSecond, state, 9000), 1234);
    EXPECT_EQ(refill(kTenPerSecond, state, 0), 1234);
}

TEST(Refill, StoredLevelAboveCapacityIsCapped)
{
    // A policy whose burst shrank since the state was written.
    EXPECT_EQ(refill(kTenPerSecond, BucketState{99999, 0}, 0), 5000);
}

TEST(Decide, AbsentStateIsFull)
{
    bool allowed = false;
    auto out = decide_one(kTenPerSecond, 1, nullptr, 5000, &allowed);
    EXPECT_TRUE(allowed);
    EXPECT_EQ(out.level_units, 4000);
    EXPECT_EQ(out.reset_ms, 100);
    EXPECT_EQ(out.retry_after_ms, 0);
    EXPECT_EQ(remaining_tokens(kTenPerSecond, out), 4);
}

TEST(Decide, FullBucketTakesExactlyBurst)
{
    BucketState state{5000, 0};
    for (int i = 0; i < 5; i++) {
        bool allowed = false;
        auto out = decide_one(kTenPerSecond, 1, &state, 0, &allowed);
        ASSERT_TRUE(allowed) << i;
        state = {out.level_units, 0};
    }
    EXPECT_EQ(state.level_units, 0);
    bool allowed = true;
    auto out = decide_one(kTenPerSecond, 1, &state, 0, &allowed);
    EXPECT_FALSE(allowed);
    EXPECT_EQ(out.level_units, 0);
    EXPECT_EQ(out.reset_ms, 500);
    EXPECT_EQ(out.retry_after_ms, 100);
}

TEST(Decide, EmptyBucketRetryAndReset)
{
    BucketState state{0, 1000};
    bool allowed = true;
    auto out = decide_one(kSixtyPerMinute, 1, &state, 1000, &allowed);
    EXPECT_FALSE(allowed);
    EXPECT_EQ(out.retry_after_ms, 1000);
    EXPECT_EQ(out.reset_ms, 2000);
    EXPECT_EQ(remaining_tokens(kSixtyPerMinute, out), 0);
    // 999 ms later: one ms short.
    out = decide_one(kSixtyPerMinute, 1, &state, 1999, &allowed);
    EXPECT_FALSE(allowed);
    EXPECT_EQ(out.retry_after_ms, 1);
    // 1000 ms later: exactly one token.
    out = decide_one(kSixtyPerMinute, 1, &state, 2000, &allowed);
    EXPECT_TRUE(allowed);
    EXPECT_EQ(out.level_units, 0);
    EXPECT_EQ(out.retry_after_ms, 0);
}

TEST(Decide, PartialUnitsRoundRetryUp)
{
    // 7r/s: 7 units per ms, one token = 1000 units. From 0, 1000/7 = 142.86 -> 143 ms.
    const BucketParams seven{7, 1000, 3};
    BucketState state{0, 0};
    bool allowed = true;
    auto out = decide_one(seven, 1, &state, 0, &allowed);
    EXPECT_FALSE(allowed);
    EXPECT_EQ(out.retry_after_ms, 143);
    EXPECT_EQ(out.reset_ms, 429);  // ceil(3000 / 7)
    EXPECT_EQ(decide_one(seven, 1, &state, 142, &allowed).level_units, 994);
    EXPECT_FALSE(allowed);
    decide_one(seven, 1, &state, 143, &allowed);
    EXPECT_TRUE(allowed);
}

TEST(Decide, CostAboveBurstIsRejectedWithFormulaRetry)
{
    bool allowed = true;
    auto out = decide_one(kTenPerSecond, 8, nullptr, 0, &allowed);
    EXPECT_FALSE(allowed);
    EXPECT_EQ(out.level_units, 5000);
    EXPECT_EQ(out.reset_ms, 0);
    EXPECT_EQ(out.retry_after_ms, 300);  // (8000 - 5000) / 10
}

TEST(Decide, HugeCostDoesNotOverflow)
{
    bool allowed = true;
    auto out = decide_one(kTenPerSecond, std::numeric_limits<int64_t>::max(), nullptr, 0, &allowed);
    EXPECT_FALSE(allowed);
    EXPECT_GT(out.retry_after_ms, 0);
    EXPECT_EQ(out.level_units, 5000);
}

TEST(Decide, CostZeroAlwaysAllowedTakesNothing)
{
    BucketState empty{0, 0};
    bool allowed = false;
    auto out = decide_one(kTenPerSecond, 0, &empty, 0, &allowed);
    EXPECT_TRUE(allowed);
    EXPECT_EQ(out.level_units, 0);
    EXPECT_EQ(out.retry_after_ms, 0);
    EXPECT_EQ(out.reset_ms, 500);
    out = decide_one(kTenPerSecond, 0, nullptr, 0, &allowed);
    EXPECT_TRUE(allowed);
    EXPECT_EQ(out.level_units, 5000);
    EXPECT_EQ(out.reset_ms, 0);
}

TEST(Decide, ClockBackwardsRefillsNothing)
{
    BucketState state{1000, 50000};
    bool allowed = false;
    auto out = decide_one(kTenPerSecond, 1, &state, 40000, &allowed);
    EXPECT_TRUE(allowed);
    EXPECT_EQ(out.level_units, 0);
    EXPECT_EQ(out.reset_ms, 500);
}

TEST(DecideAll, AllOrNothing)
{
    BucketState full{5000, 0};
    BucketState short_one{500, 0};  // half a token
    LimitInput inputs[3] = {
        {kTenPerSecond, 1, &full}, {kTenPerSecond, 1, &short_one}, {kSixtyPerMinute, 1, nullptr}};
    LimitOutcome outcomes[3];
    EXPECT_FALSE(decide_all(inputs, outcomes, 3, 0));
    EXPECT_EQ(outcomes[0].level_units, 5000);
    EXPECT_EQ(outcomes[0].retry_after_ms, 0);
    EXPECT_EQ(outcomes[1].level_units, 500);
    EXPECT_EQ(outcomes[1].retry_after_ms, 50);
    EXPECT_EQ(outcomes[2].level_units, 120000);
    EXPECT_EQ(outcomes[2].retry_after_ms, 0);
    EXPECT_EQ(outcomes[2].reset_ms, 0);

    // 50 ms later the short one holds a token: all three are taken.
    EXPECT_TRUE(decide_all(inputs, outcomes, 3, 50));
    EXPECT_EQ(outcomes[0].level_units, 4000);
    EXPECT_EQ(outcomes[1].level_units, 0);
    EXPECT_EQ(outcomes[2].level_units, 60000);
    EXPECT_EQ(outcomes[2].reset_ms, 1000);
    for (const auto& o : outcomes) {
        EXPECT_EQ(o.retry_after_ms, 0);
    }
}

TEST(DecideAll, DifferentCostsPerLimit)
{
    LimitInput inputs[2] = {{kTenPerSecond, 3, nullptr}, {kSixtyPerMinute, 0, nullptr}};
    LimitOutcome outcomes[2];
    EXPECT_TRUE(decide_all(inputs, outcomes, 2, 0));
    EXPECT_EQ(outcomes[0].level_units, 2000);
    EXPECT_EQ(outcomes[1].level_units, 120000);
}

TEST(ConvertLevel, SamePeriodOrLegacyIsIdentity)
{
    EXPECT_EQ(convert_level(4321, 1000, kTenPerSecond), 4321);
    EXPECT_EQ(convert_level(4321, 0, kTenPerSecond), 4321);
    EXPECT_EQ(convert_level(0, 1000, kTenPerSecond), 0);
}

TEST(ConvertLevel, TokensKeptAcrossPeriods)
{
    // 10r/m burst 10 with 4 tokens left, reloaded as 1r/s burst 10: still 4 tokens, not 9.
    const BucketParams per_second{1, 1000, 10};
    EXPECT_EQ(convert_level(4 * 60000, 60000, per_second), 4000);
    // And back: 4 tokens of 1r/s are 4 tokens of 10r/m.
    const BucketParams per_minute{10, 60000, 10};
    EXPECT_EQ(convert_level(4000, 1000, per_minute), 4 * 60000);
}

TEST(ConvertLevel, FractionScaledDown)
{
    // 2.5 tokens of a minute (150000 units) are 2.5 tokens of a second.
    EXPECT_EQ(convert_level(150000, 60000, {1, 1000, 10}), 2500);
    // 1 unit of a second (1/1000 token) is 60 units of a minute; 59 units of a minute round
    // down to 0 units of a second.
    EXPECT_EQ(convert_level(1, 1000, {1, 60000, 10}), 60);
    EXPECT_EQ(convert_level(59, 60000, {1, 1000, 10}), 0);
    EXPECT_EQ(convert_level(60059, 60000, {1, 1000, 10}), 1000);
    EXPECT_EQ(convert_level(86399999, 86400000, {1, 3600000, 10}), 3599999);
}

TEST(ConvertLevel, CappedAtNewBurst)
{
    const BucketParams small{1, 1000, 3};
    EXPECT_EQ(convert_level(8 * 60000, 60000, small), 3000);
    EXPECT_EQ(convert_level(3 * 60000, 60000, small), 3000);
    EXPECT_EQ(convert_level(3 * 60000 - 1, 60000, small), 2999);
}

TEST(ConvertLevel, NoOverflowAtTheLimits)
{
    // Largest burst for 1r/ms... capacity just below 2^53 in both periods.
    const BucketParams day{1, 86400000, 104249991};
    const BucketParams second{1, 1000, 9007199254740};
    EXPECT_EQ(convert_level(day.capacity_units() - 1, 86400000, second),
              (day.burst - 1) * 1000 + 999);
    EXPECT_EQ(convert_level(second.capacity_units() - 1, 1000, day), day.capacity_units());
    EXPECT_EQ(convert_level((104249990LL) * 1000 + 999, 1000, day),
              104249990LL * 86400000 + 999LL * 86400000 / 1000);
    // Impossible inputs read as full, as the script reads them.
    EXPECT_EQ(convert_level(int64_t(1) << 53, 1000, {1, 60000, 5}), 300000);
    EXPECT_EQ(convert_level(std::numeric_limits<int64_t>::max(), 3600000, kTenPerSecond), 5000);
    EXPECT_EQ(convert_level(1000, 86400001, kTenPerSecond), 5000);
    EXPECT_EQ(convert_level(1000, -5, kTenPerSecond), 5000);
    EXPECT_EQ(convert_level(-7, 60000, kTenPerSecond), 0);
}

TEST(Refill, ConvertsBeforeRefilling)
{
    // 4 of 10 tokens under 10r/m, read under 1r/s 100 ms later: 4 tokens + 100 ms of 1r/s.
    BucketState state{4 * 60000, 1000, 60000};
    EXPECT_EQ(refill({1, 1000, 10}, state, 1100), 4100);
    EXPECT_EQ(refill({1, 1000, 10}, state, 1000 + 6000), 10000);
    // Legacy (period 0) is in the reader's own period.
    BucketState legacy{4 * 60000, 1000, 0};
    EXPECT_EQ(refill({10, 60000, 10}, legacy, 1100), 4 * 60000 + 1000);
}

TEST(OutcomeAfter, EqualsDecideAll)
{
    const BucketParams params[4] = {kTenPerSecond, kSixtyPerMinute, {7, 1000, 3}, {1, 3600000, 4}};
    std::mt19937 rng(99);
    for (int step = 0; step < 20000; step++) {
        size_t n = 1 + rng() % 4;
        BucketState states[4];
        LimitInput inputs[4];
        for (size_t i = 0; i < n; i++) {
            const BucketParams& p = params[(step + i) % 4];
            states[i] = {int64_t(rng() % uint64_t(p.capacity_units() + 1)), int64_t(rng() % 100),
                         0};
            int64_t cost = rng() % 6 == 0 ? int64_t(rng()) * 1000000 : int64_t(rng() % 5);
            inputs[i] = {p, cost, rng() % 5 == 0 ? nullptr : &states[i]};
        }
        LimitOutcome outcomes[4];
        bool allowed = decide_all(inputs, outcomes, n, 100 + int64_t(rng() % 50));
        for (size_t i = 0; i < n; i++) {
            LimitOutcome o = outcome_after(inputs[i].params, inputs[i].cost,
                                           outcomes[i].level_units, allowed);
            ASSERT_EQ(o.level_units, outcomes[i].level_units) << step;
            ASSERT_EQ(o.reset_ms, outcomes[i].reset_ms) << step;
            ASSERT_EQ(o.retry_after_ms, outcomes[i].retry_after_ms) << step;
        }
    }
}

TEST(StoredState, StampNeverGoesBackwards)
{
    LimitOutcome outcome;
    outcome.level_units = 777;
    BucketState ahead{100, 5000};
    EXPECT_EQ(stored_state(&ahead, outcome, 4990).stamp_ms, 5000);  // lagging clock
    EXPECT_EQ(stored_state(&ahead, outcome, 5010).stamp_ms, 5010);
    EXPECT_EQ(stored_state(&ahead, outcome, 4990).level_units, 777);
    EXPECT_EQ(stored_state(nullptr, outcome, 4990).stamp_ms, 4990);
}

// Two deciders sharing one bucket, one of them 10 ms behind (two nginx workers, each with
// its own cached clock), alternating once a millisecond: over the whole run at most
// burst + rate x elapsed pass, and under this saturation hardly fewer.
TEST(StoredState, LaggingDeciderCreditsNothingTwice)
{
    const BucketParams params{1, 10, 5};  // 1 token per 10 ms, burst 5
    BucketState state{params.capacity_units(), 0};
    int64_t passed = 0;
    int64_t real_now = 0;
    for (int step = 0; step < 1000; step++) {
        real_now += 1;
        int64_t now = step % 2 ? real_now - 10 : real_now;
        LimitInput input{params, 1, &state};
        LimitOutcome outcome;
        if (decide_all(&input, &outcome, 1, now)) {
            passed++;
            state = stored_state(&state, outcome, now);
        }
    }
    EXPECT_LE(passed, 5 + real_now / 10);
    EXPECT_GE(passed, 5 + real_now / 10 - 2);
}

TEST(Seconds, Rounding)
{
    EXPECT_EQ(ceil_seconds(0), 0);
    EXPECT_EQ(ceil_seconds(1), 1);
    EXPECT_EQ(ceil_seconds(1000), 1);
    EXPECT_EQ(ceil_seconds(1001), 2);
    EXPECT_EQ(retry_after_seconds(0), 1);
    EXPECT_EQ(retry_after_seconds(1), 1);
    EXPECT_EQ(retry_after_seconds(2000), 2);
    EXPECT_EQ(retry_after_seconds(2001), 3);
}

TEST(Seconds, Window)
{
    EXPECT_EQ(window_seconds(kTenPerSecond), 1);     // 500 ms
    EXPECT_EQ(window_seconds(kSixtyPerMinute), 2);   // 2000 ms
    EXPECT_EQ(window_seconds({7, 1000, 3}), 1);      // 429 ms
    EXPECT_EQ(window_seconds({1, 86400000, 2}), 172800);
    EXPECT_EQ(window_seconds({3, 1000, 10}), 4);     // 3334 ms
}

TEST(Remaining, WholeTokensOnly)
{
    EXPECT_EQ(remaining_tokens(kTenPerSecond, {4999, 0, 0}), 4);
    EXPECT_EQ(remaining_tokens(kTenPerSecond, {999, 0, 0}), 0);
    EXPECT_EQ(remaining_tokens(kTenPerSecond, {0, 0, 0}), 0);
    EXPECT_EQ(remaining_tokens(kTenPerSecond, {-5, 0, 0}), 0);
}

}  // namespace
}  // namespace ratelimit
