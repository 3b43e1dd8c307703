// The lease maths: when a key is hot, how many tokens a node asks for, what a bucket grants.
#include <gtest/gtest.h>

#include "ratelimit/lease.h"

namespace ratelimit {
namespace {

const BucketParams kParams{100, 1000, 1000};  // 100 r/s, burst 1000

LeaseRate seen(int64_t requests, int64_t over_ms, int64_t lease_ms)
{
    LeaseRate rate;
    for (int64_t i = 0; i < requests; i++) {
        note_request(rate, 1000 + i * over_ms / requests, lease_ms);
    }
    note_request(rate, 1000 + over_ms, lease_ms);  // opens the next window
    return rate;
}

TEST(Lease, ParsesATimeWithinBounds)
{
    EXPECT_EQ(parse_lease_ms("50ms"), 50);
    EXPECT_EQ(parse_lease_ms("1ms"), 1);
    EXPECT_EQ(parse_lease_ms("10s"), 10000);
    EXPECT_EQ(parse_lease_ms("2"), 2000);
    EXPECT_FALSE(parse_lease_ms("0ms"));
    EXPECT_FALSE(parse_lease_ms("11s"));
    EXPECT_FALSE(parse_lease_ms("fast"));
    EXPECT_FALSE(parse_lease_ms(""));
}

TEST(Lease, HotAboveTwoRequestsPerLeasePeriod)
{
    // Window: 4 x 50 ms = 200 ms. 8 requests in it are 2 per lease period: not hot; 9 are.
    EXPECT_FALSE(is_hot(seen(8, 200, 50), 1200, 50));
    EXPECT_TRUE(is_hot(seen(9, 200, 50), 1200, 50));
    // A window that ended long ago says nothing.
    EXPECT_FALSE(is_hot(seen(100, 200, 50), 1200 + 400, 50));
}

TEST(Lease, WantsWhatTheRecentRateUsesInOneLease)
{
    LeaseRate rate = seen(40, 200, 50);  // 10 per lease period
    EXPECT_EQ(lease_want(kParams, rate, 1200, 50, 1), 10);
    EXPECT_EQ(lease_want(kParams, rate, 1200, 50, 3), 30);
    // Never more than a fair share of the burst.
    EXPECT_EQ(lease_want(kParams, rate, 1200, 50, 100), 1000 / kBurstShare);
    // A burst too small to share: no lease.
    EXPECT_EQ(lease_want(BucketParams{100, 1000, 15}, rate, 1200, 50, 1), 0);
    // Not hot: nothing.
    EXPECT_EQ(lease_want(kParams, seen(5, 200, 50), 1200, 50, 1), 0);
}

TEST(Lease, GrantShrinksAsTheBucketEmpties)
{
    EXPECT_EQ(lease_grant(kParams, 1000 * 1000, 50), 50);
    EXPECT_EQ(lease_grant(kParams, 100 * 1000, 50), 25);   // a quarter of 100 tokens
    EXPECT_EQ(lease_grant(kParams, 8 * 1000 + 999, 50), 2);
    EXPECT_EQ(lease_grant(kParams, 7 * 1000 + 999, 50), 0);  // per request again
    EXPECT_EQ(lease_grant(kParams, 0, 50), 0);
    EXPECT_EQ(lease_grant(kParams, 1000 * 1000, 1), 0);
}

TEST(Lease, GrantsNeverTakeMoreThanTheBucketHolds)
{
    // Nodes taking leases in turn from one bucket: each grant leaves tokens behind.
    int64_t level = kParams.capacity_units();
    int64_t taken = 0;
    for (int i = 0; i < 1000; i++) {
        int64_t g = lease_grant(kParams, level, 125);
        level -= g * kParams.period_ms;
        taken += g;
        ASSERT_GE(level, 0);
    }
    EXPECT_LE(taken, kParams.burst);
    EXPECT_GE(level, 0);
    EXPECT_LT(level, 8 * kParams.period_ms);  // down to where grants stop
}

TEST(Lease, HoldBoundIsOneFairSharePerNode)
{
    EXPECT_EQ(lease_hold_bound(kParams, 4), 4 * 125);
    EXPECT_EQ(lease_hold_bound(BucketParams{1, 1000, 7}, 10), 0);
}

TEST(Lease, ReadsTheScriptsReply)
{
    auto r = parse_lease_reply("25 975000 1700000000123");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->granted, 25);
    EXPECT_EQ(r->level_units, 975000);
    EXPECT_EQ(r->now_ms, 1700000000123);
    EXPECT_TRUE(parse_lease_reply("0 0 1"));
    EXPECT_FALSE(parse_lease_reply("25 975000"));
    EXPECT_FALSE(parse_lease_reply("25 975000 1 2"));
    EXPECT_FALSE(parse_lease_reply("-1 0 1"));
    EXPECT_FALSE(parse_lease_reply(""));
}

}  // namespace
}  // namespace ratelimit
