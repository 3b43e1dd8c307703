#include "ratelimit/policy.h"

#include <gtest/gtest.h>

namespace ratelimit {
namespace {

TEST(ParseRate, AcceptsEveryUnit)
{
    auto s = parse_rate("10r/s");
    ASSERT_TRUE(s);
    EXPECT_EQ(s->count, 10);
    EXPECT_EQ(s->period_ms, 1000);
    EXPECT_EQ(parse_rate("60r/m")->period_ms, 60000);
    EXPECT_EQ(parse_rate("5r/h")->period_ms, 3600000);
    EXPECT_EQ(parse_rate("1r/d")->period_ms, 86400000);
    EXPECT_EQ(parse_rate("1r/d")->count, 1);
}

TEST(ParseRate, PerSecond)
{
    EXPECT_DOUBLE_EQ(parse_rate("60r/m")->per_second(), 1.0);
    EXPECT_DOUBLE_EQ(parse_rate("5r/s")->per_second(), 5.0);
}

TEST(ParseRate, RejectsBadInput)
{
    for (const char* bad : {"", "abc", "0r/s", "-1r/s", "+1r/s", "10r/x", "10r/", "10r", "r/s",
                            "10/s", "10R/s", "10r/S", " 10r/s", "10r/s ", "10 r/s", "10r/ss",
                            "1.5r/s", "99999999999999999999r/s"}) {
        EXPECT_FALSE(parse_rate(bad)) << bad;
    }
}

TEST(ParseInt, Positive)
{
    EXPECT_EQ(parse_positive_int("1"), 1);
    EXPECT_EQ(parse_positive_int("9223372036854775807"), INT64_MAX);
    for (const char* bad : {"", "0", "-1", "+1", " 1", "1 ", "1a", "9223372036854775808",
                            "99999999999999999999"}) {
        EXPECT_FALSE(parse_positive_int(bad)) << bad;
    }
}

TEST(ParseInt, NonNegative)
{
    EXPECT_EQ(parse_non_negative_int("0"), 0);
    EXPECT_EQ(parse_non_negative_int("42"), 42);
    for (const char* bad : {"", "-0", "-1", "+1", "1.0", "x", "9223372036854775808"}) {
        EXPECT_FALSE(parse_non_negative_int(bad)) << bad;
    }
}

TEST(PolicyName, Charset)
{
    EXPECT_TRUE(is_valid_policy_name("api_v2-Free"));
    EXPECT_TRUE(is_valid_policy_name("0"));
    EXPECT_FALSE(is_valid_policy_name(""));
    EXPECT_FALSE(is_valid_policy_name("a b"));
    EXPECT_FALSE(is_valid_policy_name("a:b"));
    EXPECT_FALSE(is_valid_policy_name("a.b"));
    EXPECT_FALSE(is_valid_policy_name(std::string_view("a\0b", 3)));
}

TEST(CheckBucket, AcceptsOrdinaryBuckets)
{
    EXPECT_EQ(check_bucket({10, 1000, 10}), "");
    EXPECT_EQ(check_bucket({1, 86400000, 1000}), "");
}

TEST(CheckBucket, CapacityLimitIsTwoToThe53)
{
    const int64_t limit = int64_t(1) << 53;
    // The largest burst whose capacity stays below 2^53 passes, the next fails.
    int64_t max_burst = (limit - 1) / 86400000;
    EXPECT_EQ(check_bucket({1, 86400000, max_burst}), "");
    EXPECT_NE(check_bucket({1, 86400000, max_burst + 1}), "");
}

TEST(CheckBucket, Messages)
{
    EXPECT_EQ(check_bucket({1, 86400000, 5000000000}),
              "burst 5000000000 is too large for rate 1r/d");
    EXPECT_EQ(check_bucket({10000000000000, 1000, 1}), "rate 10000000000000r/s is too large");
    EXPECT_NE(check_bucket({0, 1000, 1}), "");
    EXPECT_NE(check_bucket({-1, 1000, 1}), "");
    EXPECT_NE(check_bucket({1, 1000, 0}), "");
    EXPECT_NE(check_bucket({1, 1000, -5}), "");
    EXPECT_NE(check_bucket({1, 0, 1}), "");
    EXPECT_NE(check_bucket({1, 1234, 1}), "");
}

TEST(FormatRate, RoundTrips)
{
    EXPECT_EQ(format_rate({60, 60000}), "60r/m");
    for (const char* text : {"1r/s", "60r/m", "7r/h", "123456r/d"}) {
        EXPECT_EQ(format_rate(*parse_rate(text)), text);
    }
}

}  // namespace
}  // namespace ratelimit
