// The lease script against a real Redis: grants as lease_grant says, debits the bucket as a
// decision would, gives tokens back capped at the burst, and the decision script sees it all.
#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ratelimit/bucket_view.h"
#include "ratelimit/lease.h"
#include "ratelimit/script.h"
#include "raw_redis.h"

namespace ratelimit {
namespace {

using testing::ReplyPtr;

// One token an hour: refill is at most a few units while a test runs.
const BucketParams kSlow{1, 3600000, 1000};

class LeaseScript : public testing::RawRedisTest {
protected:
    LeaseReply lease(const std::string& key, const BucketParams& params, int64_t returned,
                     int64_t want)
    {
        auto reply = send_raw(format_lease_call(key, params, returned, want));
        auto parsed = read_lease_reply(reply.get());
        EXPECT_TRUE(parsed) << (reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "");
        return parsed.value_or(LeaseReply{});
    }

    // The bucket's level as the decision script sees it, taking `cost` tokens.
    int64_t decide(const std::string& key, const BucketParams& params, int64_t cost,
                   bool* allowed = nullptr)
    {
        ScriptLimit limit{key, params, cost};
        ScriptBatch batch;
        batch.add_request(&limit, 1);
        std::string command;
        batch.append_eval(command);
        auto reply = send_raw(command);
        BatchReply result;
        std::string error;
        EXPECT_TRUE(parse_batch_reply(reply.get(), batch, result, error)) << error;
        if (allowed) {
            *allowed = result.allowed[0];
        }
        return result.levels[0];
    }
};

TEST_F(LeaseScript, GrantIsDebitedAsADecisionWouldBe)
{
    LeaseReply r = lease("rl:p:k", kSlow, 0, 100);
    EXPECT_EQ(r.granted, 100);
    EXPECT_EQ(r.level_units, 900 * kSlow.period_ms);
    EXPECT_GT(r.now_ms, 0);
    int64_t level = decide("rl:p:k", kSlow, 1);
    EXPECT_GE(level, 899 * kSlow.period_ms);
    EXPECT_LT(level, 899 * kSlow.period_ms + 1000);
}

TEST_F(LeaseScript, UnusedTokensGoBackCappedAtTheBurst)
{
    lease("rl:p:k", kSlow, 0, 100);
    LeaseReply back = lease("rl:p:k", kSlow, 60, 0);
    EXPECT_EQ(back.granted, 0);
    EXPECT_GE(back.level_units, 960 * kSlow.period_ms);
    EXPECT_LT(back.level_units, 960 * kSlow.period_ms + 1000);
    // More than the bucket misses: it is full again, and a full bucket is a missing key.
    LeaseReply full = lease("rl:p:k", kSlow, 500, 0);
    EXPECT_EQ(full.level_units, kSlow.capacity_units());
    EXPECT_EQ(server_.command("EXISTS rl:p:k"), "0");
}

TEST_F(LeaseScript, ReturnAndNewGrantInOneCall)
{
    lease("rl:p:k", kSlow, 0, 100);
    LeaseReply r = lease("rl:p:k", kSlow, 40, 100);
    EXPECT_EQ(r.granted, 100);
    EXPECT_GE(r.level_units, 840 * kSlow.period_ms);
    EXPECT_LT(r.level_units, 840 * kSlow.period_ms + 1000);
}

TEST_F(LeaseScript, AgreesWithLeaseGrantAsTheBucketEmpties)
{
    // Spend the bucket down with decisions; at each level the script grants as the core says.
    const BucketParams params{1, 3600000, 40};
    for (int64_t tokens = 40; tokens > 0; tokens -= 3) {
        server_.command("DEL rl:p:e");
        if (tokens < 40) {
            decide("rl:p:e", params, 40 - tokens);
        }
        int64_t before = decide("rl:p:e", params, 0);
        LeaseReply r = lease("rl:p:e", params, 0, 30);
        EXPECT_EQ(r.granted, lease_grant(params, before, 30)) << tokens << " tokens";
        EXPECT_LE(r.granted * 4, tokens);
        if (tokens < 8) {
            EXPECT_EQ(r.granted, 0) << "near the limit decisions are per request";
        }
    }
}

TEST_F(LeaseScript, NeverMoreThanTheBucketGaveOut)
{
    // Nodes leasing in turn: the grants and the decisions together never exceed the burst.
    const BucketParams params{1, 3600000, 1000};
    int64_t out = 0;
    for (int i = 0; i < 200; i++) {
        out += lease("rl:p:n", params, 0, 125).granted;
        bool allowed = false;
        decide("rl:p:n", params, 1, &allowed);
        out += allowed ? 1 : 0;
    }
    EXPECT_LE(out, 1000);
    EXPECT_GE(out, 990);  // grants stop under 8 tokens; decisions take the rest
}

TEST_F(LeaseScript, ReadsEveryStoredFormatAsTheCppReader)
{
    // lease.lua reads a bucket with view.lua's reader (bucket_read.lua): a lease of nothing
    // shows the level as view_stored computes it, and a value no bucket can hold is an error
    // in both.
    const BucketParams params{60, 60000, 100};
    int64_t now = lease("rl:probe", params, 0, 0).now_ms;
    std::string recent = std::to_string(now - 500);  // a partial refill
    for (const std::string& text : std::vector<std::string>{"60000 " + recent,
         "v2 60000 60000 " + recent, "v2 150000 1000 " + recent, "v2 1500 1000 " + recent,
         "v3 7 3600000 " + recent + " more fields", "v2 999999999 1000 0", "v1 1 2 3", "garbage",
         "v2 1 0 3", "v2 12 60000 " + std::to_string(now + 10000)}) {
        ReplyPtr(static_cast<redisReply*>(
            redisCommand(ctx_, "SET rl:f %b", text.data(), text.size())));
        auto reply = send_raw(format_lease_call("rl:f", params, 0, 0));
        auto got = read_lease_reply(reply.get());
        std::optional<std::string_view> stored(text);
        auto expected = view_stored(stored, params, got ? got->now_ms : now);
        ASSERT_EQ(got.has_value(), expected.has_value()) << text;
        if (got) {
            EXPECT_EQ(got->level_units, expected->level_units) << text;
        } else {
            EXPECT_EQ(reply->type, REDIS_REPLY_ERROR) << text;
        }
    }
}

TEST_F(LeaseScript, BadArgumentsAreAnErrorReply)
{
    auto reply = send_raw(format_lease_call("rl:k", BucketParams{0, 1000, 1}, 0, 5));
    ASSERT_TRUE(reply);
    EXPECT_EQ(reply->type, REDIS_REPLY_ERROR);
    auto negative = send_raw(format_lease_call("rl:k", kSlow, -1, 5));
    ASSERT_TRUE(negative);
    EXPECT_EQ(negative->type, REDIS_REPLY_ERROR);
}

}  // namespace
}  // namespace ratelimit
