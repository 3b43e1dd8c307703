#include "ratelimit/bucket_view.h"

#include <gtest/gtest.h>

namespace ratelimit {
namespace {

const BucketParams kPerMinute{60, 60000, 100};  // 60r/m burst 100: 1 unit per ms per token

TEST(StoredBucket, Formats)
{
    auto v2 = parse_stored_bucket("v2 120000 60000 5000");
    ASSERT_TRUE(v2);
    EXPECT_EQ(v2->level_units, 120000);
    EXPECT_EQ(v2->period_ms, 60000);
    EXPECT_EQ(v2->stamp_ms, 5000);
    auto v3 = parse_stored_bucket("v3 7 1000 9 extra fields");
    ASSERT_TRUE(v3);
    EXPECT_EQ(v3->level_units, 7);
    EXPECT_EQ(v3->stamp_ms, 9);
    auto v1 = parse_stored_bucket("42 17");
    ASSERT_TRUE(v1);
    EXPECT_EQ(v1->level_units, 42);
    EXPECT_EQ(v1->period_ms, 0);
    EXPECT_EQ(v1->stamp_ms, 17);
}

TEST(StoredBucket, Junk)
{
    for (const char* text : {"", "v1 1 2 3", "v2 1 2", "v2 1 0 3", "v2 1 2 3x", "1", "1 2 3",
                             "a b", "-1 2", "v 1 2 3", "v2  1 2 3"}) {
        EXPECT_FALSE(parse_stored_bucket(text)) << text;
    }
}

TEST(ViewStored, ValuesNoBucketCanHoldAreUnreadableNeverFull)
{
    // Found by fuzz_api_text: a huge level under another period overflowed the conversion.
    // A negative level: what two limits on one Redis key wrote before 0.4.
    for (const char* text : {"v239 688888888888399399 60000 67777777776",
                             "v2 9007199254740992 1000 5", "v2 5 86400001 5",
                             "v2 5 1000 9007199254740992", "v2 -5 1000 5", "-5 17", "junk",
                             "v2 5 0 5", ""}) {
        EXPECT_FALSE(view_stored(std::string_view(text), kPerMinute, 1000)) << text;
    }
}

TEST(ViewStored, MissingIsFullAndAbsent)
{
    auto missing = view_stored(std::nullopt, kPerMinute, 1000);
    ASSERT_TRUE(missing);
    EXPECT_FALSE(missing->exists);
    EXPECT_EQ(missing->level_units, kPerMinute.capacity_units());
}

TEST(ViewStored, RefillsToNow)
{
    // 1 token left at t=0; 60r/m refills 60 units per ms: 1000 ms later 1 more token.
    BucketView v = view_stored(std::string_view("60000 0"), kPerMinute, 1000).value();
    EXPECT_TRUE(v.exists);
    EXPECT_EQ(v.level_units, 120000);
    EXPECT_EQ(view_reset_seconds(kPerMinute, v), 98);
    BucketView later =
        view_stored(std::string_view("v2 60000 60000 0"), kPerMinute, 10000000).value();
    EXPECT_EQ(later.level_units, kPerMinute.capacity_units());
    EXPECT_EQ(view_reset_seconds(kPerMinute, later), 0);
}

}  // namespace
}  // namespace ratelimit
