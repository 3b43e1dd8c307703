// The read-only bucket script against a real Redis: it reads every stored format as the C++
// reader does, takes nothing, and reads what the decision script wrote.
#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ratelimit/bucket_view.h"
#include "ratelimit/script.h"
#include "raw_redis.h"

namespace ratelimit {
namespace {

using testing::ReplyPtr;

class BucketViewScript : public testing::RawRedisTest {
protected:

    BucketView view(const std::string& key, const BucketParams& params)
    {
        auto v = try_view(key, params);
        EXPECT_TRUE(v) << last_error_;
        return v.value_or(BucketView{});
    }

    std::optional<BucketView> try_view(const std::string& key, const BucketParams& params)
    {
        auto reply = send_raw(format_bucket_view(key, params));
        BucketView v;
        if (!parse_bucket_view_reply(reply.get(), v, last_error_)) {
            return std::nullopt;
        }
        return v;
    }

    std::string last_error_;

    void set(const std::string& key, const std::string& value)
    {
        ReplyPtr(static_cast<redisReply*>(redisCommand(ctx_, "SET %b %b", key.data(), key.size(),
                                                       value.data(), value.size())));
    }

    std::string get(const std::string& key)
    {
        ReplyPtr r(static_cast<redisReply*>(redisCommand(ctx_, "GET %b", key.data(),
                                                         key.size())));
        return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "(nil)";
    }

};

TEST_F(BucketViewScript, MatchesTheCppReaderForEveryFormat)
{
    const BucketParams params{60, 60000, 100};
    std::vector<std::string> stored = {
        "60000 0", "v2 60000 60000 0", "v2 150000 1000 0", "v3 7 3600000 5 more fields",
        "v2 999999999 1000 0", "v1 1 2 3", "garbage", "v2 1 0 3", "v2 -5 1000 0", "-5 0",
        "v2 9007199254740992 1000 0", "v2 5 1000 9007199254740992",
    };
    for (const std::string& value : stored) {
        // A stamp in the near past of Redis's clock, so the refill is partial.
        BucketView probe = view("rl:missing", params);
        std::string text = value;
        size_t zero = text.rfind(" 0");
        if (zero != std::string::npos && zero + 2 == text.size()) {
            text = text.substr(0, zero) + " " + std::to_string(probe.now_ms - 500);
        }
        set("rl:k", text);
        std::optional<BucketView> got = try_view("rl:k", params);
        std::optional<std::string_view> as_stored(text);
        auto expected = view_stored(as_stored, params, got ? got->now_ms : probe.now_ms);
        ASSERT_EQ(bool(got), bool(expected)) << text << ": " << last_error_;
        if (!got) {
            EXPECT_NE(last_error_.find("ratelimit: unreadable bucket value"), std::string::npos);
        } else {
            EXPECT_EQ(got->exists, expected->exists) << text;
            EXPECT_EQ(got->level_units, expected->level_units) << text;
        }
        EXPECT_EQ(get("rl:k"), text) << "the view changed the bucket";
    }
}

TEST_F(BucketViewScript, MissingKeyIsAFullBucket)
{
    BucketView v = view("rl:none", BucketParams{1, 1000, 5});
    EXPECT_FALSE(v.exists);
    EXPECT_EQ(v.level_units, 5000);
    EXPECT_GT(v.now_ms, 0);
    EXPECT_EQ(server_.command("EXISTS rl:none"), "0");
}

TEST_F(BucketViewScript, ReadsWhatTheDecisionScriptWrote)
{
    const BucketParams params{3, 3600000, 3};  // one token every 1200 s
    ScriptLimit limit{"rl:p:user", params, 2};
    ScriptBatch batch;
    batch.add_request(&limit, 1);
    std::string command;
    batch.append_eval(command);
    auto reply = send_raw(command);
    BatchReply result;
    std::string error;
    ASSERT_TRUE(parse_batch_reply(reply.get(), batch, result, error)) << error;
    ASSERT_TRUE(result.allowed[0]);
    BucketView v = view("rl:p:user", params);
    EXPECT_TRUE(v.exists);
    // One token left, plus what refilled since (3 units per ms).
    EXPECT_EQ(v.level_units, result.levels[0] + (v.now_ms - result.now_ms) * 3);
    EXPECT_EQ(view_reset_seconds(params, v), 2400 - (v.now_ms - result.now_ms) / 1000);
}

TEST_F(BucketViewScript, BadArgumentsAreAnErrorReply)
{
    auto reply = send_raw(format_bucket_view("rl:k", BucketParams{0, 1000, 1}));
    BucketView v;
    std::string error;
    EXPECT_FALSE(parse_bucket_view_reply(reply.get(), v, error));
    EXPECT_NE(error.find("bad arguments"), std::string::npos);
}

}  // namespace
}  // namespace ratelimit

namespace ratelimit {
namespace {

TEST_F(BucketViewScript, KeyOfAnotherTypeReadsAsMissing)
{
    ReplyPtr(static_cast<redisReply*>(redisCommand(ctx_, "HSET rl:h f v")));
    BucketView v = view("rl:h", BucketParams{1, 1000, 5});
    EXPECT_FALSE(v.exists);
    EXPECT_EQ(v.level_units, 5000);
}

}  // namespace
}  // namespace ratelimit
