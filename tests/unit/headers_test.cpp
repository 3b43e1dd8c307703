#include "ratelimit/headers.h"

#include <gtest/gtest.h>

namespace ratelimit {
namespace {

const BucketParams kTenPerSecond{10, 1000, 5};

TEST(MakeReport, Passed)
{
    LimitOutcome outcome{3999, 101, 0};
    auto r = make_report("api", kTenPerSecond, outcome);
    EXPECT_EQ(r.policy, "api");
    EXPECT_EQ(r.limit, 5);
    EXPECT_EQ(r.remaining, 3);
    EXPECT_EQ(r.reset_seconds, 1);
    EXPECT_EQ(r.retry_after_seconds, 0);
    EXPECT_EQ(r.window_seconds, 1);
}

TEST(MakeReport, RejectedHasRetryAfterAtLeastOne)
{
    auto r = make_report("api", kTenPerSecond, LimitOutcome{0, 500, 1});
    EXPECT_EQ(r.retry_after_seconds, 1);
    EXPECT_EQ(r.remaining, 0);
    r = make_report("api", kTenPerSecond, LimitOutcome{0, 500, 2500});
    EXPECT_EQ(r.retry_after_seconds, 3);
}

TEST(MakeReport, FullBucketResetsNow)
{
    auto r = make_report("day", {100, 86400000, 100}, LimitOutcome{8640000000, 0, 0});
    EXPECT_EQ(r.remaining, 100);
    EXPECT_EQ(r.reset_seconds, 0);
    EXPECT_EQ(r.window_seconds, 86400);
}

TEST(MostRestrictive, LowestRemainingThenLongestResetThenFirst)
{
    LimitReport reports[4];
    reports[0].remaining = 5;
    reports[0].reset_seconds = 100;
    reports[1].remaining = 2;
    reports[1].reset_seconds = 10;
    reports[2].remaining = 2;
    reports[2].reset_seconds = 30;
    reports[3].remaining = 2;
    reports[3].reset_seconds = 30;
    EXPECT_EQ(most_restrictive(reports, 4), 2u);
    EXPECT_EQ(most_restrictive(reports, 2), 1u);
    EXPECT_EQ(most_restrictive(reports, 1), 0u);
    reports[3].remaining = 0;
    EXPECT_EQ(most_restrictive(reports, 4), 3u);
}

TEST(Ietf, Values)
{
    LimitReport r;
    r.policy = "free-tier";
    r.limit = 100;
    r.remaining = 42;
    r.reset_seconds = 7;
    r.window_seconds = 60;
    EXPECT_EQ(ietf_policy_value(r), "\"free-tier\";q=100;w=60");
    EXPECT_EQ(ietf_limit_value(r), "\"free-tier\";r=42;t=7");
}

}  // namespace
}  // namespace ratelimit
