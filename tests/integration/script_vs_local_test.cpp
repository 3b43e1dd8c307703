// The Redis script against the C++ maths: for every reply, decide_all on the state the test
// tracks, at the reply's now_ms, must give the same decision, levels, resets and retries.
#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ratelimit/script.h"
#include "ratelimit/token_bucket.h"
#include "redis_server.h"

namespace ratelimit {
namespace {

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

class ScriptVsLocal : public ::testing::Test {
protected:
    void SetUp() override
    {
        ctx_ = redisConnect("127.0.0.1", server_.port());
        ASSERT_TRUE(ctx_ && !ctx_->err);
    }
    void TearDown() override { redisFree(ctx_); }

    // Sends one RESP-encoded command as is, so the test covers format_eval/format_evalsha.
    ReplyPtr send_raw(const std::string& resp)
    {
        void* reply = nullptr;
        if (redisAppendFormattedCommand(ctx_, resp.data(), resp.size()) != REDIS_OK
            || redisGetReply(ctx_, &reply) != REDIS_OK) {
            ADD_FAILURE() << "redis I/O failed: " << ctx_->errstr;
        }
        return ReplyPtr(static_cast<redisReply*>(reply));
    }

    ReplyPtr argv(const std::vector<std::string>& args)
    {
        std::vector<const char*> ptrs;
        std::vector<size_t> lens;
        for (const auto& a : args) {
            ptrs.push_back(a.data());
            lens.push_back(a.size());
        }
        void* reply = redisCommandArgv(ctx_, int(args.size()), ptrs.data(), lens.data());
        EXPECT_NE(reply, nullptr);
        return ReplyPtr(static_cast<redisReply*>(reply));
    }

    std::optional<std::string> get(const std::string& key)
    {
        auto r = argv({"GET", key});
        if (!r || r->type != REDIS_REPLY_STRING) {
            return std::nullopt;
        }
        return std::string(r->str, r->len);
    }

    long long pttl(const std::string& key) { return argv({"PTTL", key})->integer; }

    ScriptResult run(const std::vector<ScriptLimit>& limits)
    {
        auto reply = send_raw(format_eval(limits.data(), limits.size()));
        ScriptResult result;
        std::string error;
        EXPECT_TRUE(parse_script_reply(reply.get(), limits.size(), result, error)) << error;
        return result;
    }

    testing::RedisServer server_;
    redisContext* ctx_ = nullptr;
};

// Tracks the stored state of each key as the caller of decide_all would.
class Mirror {
public:
    // Checks `result` against the local maths and then records what the script wrote.
    void check(const std::vector<ScriptLimit>& limits, const ScriptResult& result)
    {
        std::vector<LimitInput> inputs;
        for (const auto& l : limits) {
            auto it = states_.find(std::string(l.key));
            inputs.push_back({l.params, l.cost, it == states_.end() ? nullptr : &it->second});
        }
        std::vector<LimitOutcome> local(limits.size());
        bool allowed = decide_all(inputs.data(), local.data(), limits.size(), result.now_ms);
        ASSERT_EQ(result.outcomes.size(), limits.size());
        EXPECT_EQ(result.allowed, allowed);
        for (size_t i = 0; i < limits.size(); i++) {
            EXPECT_EQ(result.outcomes[i].level_units, local[i].level_units) << "limit " << i;
            EXPECT_EQ(result.outcomes[i].reset_ms, local[i].reset_ms) << "limit " << i;
            EXPECT_EQ(result.outcomes[i].retry_after_ms, local[i].retry_after_ms) << "limit " << i;
        }
        for (size_t i = 0; allowed && i < limits.size(); i++) {
            if (limits[i].cost > 0) {
                states_[std::string(limits[i].key)] = {local[i].level_units, result.now_ms};
            }
        }
    }

private:
    std::map<std::string, BucketState> states_;
};

std::string stored(int64_t level, int64_t stamp)
{
    return std::to_string(level) + " " + std::to_string(stamp);
}

TEST_F(ScriptVsLocal, RandomSequenceMatchesLocalMaths)
{
    const std::string keys[3] = {"rl:a:k", "rl:b:k", "rl:c:k"};
    const BucketParams params[3] = {{50, 1000, 3}, {600, 60000, 5}, {7, 1000, 2}};
    std::mt19937 rng(12345);
    Mirror mirror;
    int allowed = 0;
    int rejected = 0;
    for (int step = 0; step < 300; step++) {
        std::vector<ScriptLimit> limits;
        size_t first = rng() % 3;
        size_t n = 1 + rng() % 3;
        for (size_t j = 0; j < n; j++) {
            size_t k = (first + j) % 3;
            limits.push_back({keys[k], params[k], int64_t(rng() % 4)});
        }
        ScriptResult result = run(limits);
        mirror.check(limits, result);
        (result.allowed ? allowed : rejected)++;
        for (size_t i = 0; result.allowed && i < limits.size(); i++) {
            if (limits[i].cost == 0) {
                continue;
            }
            std::string key(limits[i].key);
            EXPECT_EQ(get(key), stored(result.outcomes[i].level_units, result.now_ms));
            long long ttl = pttl(key);
            EXPECT_LE(ttl, result.outcomes[i].reset_ms);
            EXPECT_GE(ttl, result.outcomes[i].reset_ms - 50);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 12));
        if (HasFailure()) {
            FAIL() << "at step " << step;
        }
    }
    EXPECT_GT(allowed, 20);
    EXPECT_GT(rejected, 20);
}

TEST_F(ScriptVsLocal, RejectedAndCostZeroWriteNothing)
{
    const std::string key = "rl:p:nowrite";
    std::vector<ScriptLimit> take = {{key, {1, 60000, 1}, 1}};
    Mirror mirror;
    ScriptResult first = run(take);
    mirror.check(take, first);
    ASSERT_TRUE(first.allowed);
    auto value = get(key);
    ASSERT_TRUE(value);

    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ScriptResult second = run(take);
    mirror.check(take, second);
    EXPECT_FALSE(second.allowed);
    EXPECT_EQ(get(key), value);

    std::vector<ScriptLimit> peek = {{key, {1, 60000, 1}, 0}, {"rl:p:absent", {1, 60000, 1}, 0}};
    ScriptResult third = run(peek);
    mirror.check(peek, third);
    EXPECT_TRUE(third.allowed);
    EXPECT_EQ(get(key), value);
    EXPECT_EQ(argv({"EXISTS", "rl:p:absent"})->integer, 0);

    // All or nothing: the short bucket rejects, the full one keeps its key absent.
    std::vector<ScriptLimit> both = {{"rl:p:fresh", {1, 60000, 5}, 1}, {key, {1, 60000, 1}, 1}};
    ScriptResult fourth = run(both);
    mirror.check(both, fourth);
    EXPECT_FALSE(fourth.allowed);
    EXPECT_EQ(argv({"EXISTS", "rl:p:fresh"})->integer, 0);
    EXPECT_EQ(get(key), value);
}

TEST_F(ScriptVsLocal, KeyExpiresWhenBucketIsFull)
{
    const std::string key = "rl:fast:k";
    std::vector<ScriptLimit> limits = {{key, {100, 1000, 2}, 1}};  // 10 ms per token
    ScriptResult result = run(limits);
    ASSERT_TRUE(result.allowed);
    EXPECT_EQ(result.outcomes[0].reset_ms, 10);
    EXPECT_EQ(argv({"EXISTS", key})->integer, 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    EXPECT_EQ(argv({"EXISTS", key})->integer, 0);
    // The next request sees a full bucket again.
    result = run(limits);
    EXPECT_EQ(result.outcomes[0].level_units, 1000);
}

TEST_F(ScriptVsLocal, BinaryKeys)
{
    const std::string key("rl:p:\x00\xff\r\n \"*$", 13);
    const std::string other("rl:p:\x00\xfe\r\n \"*$", 13);
    std::vector<ScriptLimit> limits = {{key, {10, 1000, 3}, 2}, {other, {10, 1000, 3}, 1}};
    Mirror mirror;
    for (int i = 0; i < 3; i++) {
        ScriptResult result = run(limits);
        mirror.check(limits, result);
    }
    auto value = get(key);
    ASSERT_TRUE(value);
    EXPECT_NE(get(other), std::nullopt);
    EXPECT_NE(value, get(other));
}

TEST_F(ScriptVsLocal, LargeValuesStayIntegers)
{
    // Capacity just below 2^53: levels near 9e15 must be stored as digits, not 9e+15.
    const BucketParams big{1, 86400000, 104249991};
    std::vector<ScriptLimit> limits = {{"rl:big:k", big, 1}};
    Mirror mirror;
    ScriptResult result = run(limits);
    mirror.check(limits, result);
    ASSERT_TRUE(result.allowed);
    EXPECT_EQ(get("rl:big:k"), stored(big.capacity_units() - big.period_ms, result.now_ms));
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    result = run(limits);
    mirror.check(limits, result);
}

TEST_F(ScriptVsLocal, MalformedStoredValueCountsAsAbsent)
{
    std::vector<ScriptLimit> limits = {{"rl:p:bad", {10, 1000, 3}, 1}};
    for (const char* junk : {"garbage", "-5 100", "1e+15 100", "12", "1 2 3"}) {
        argv({"SET", "rl:p:bad", junk});
        ScriptResult result = run(limits);
        EXPECT_TRUE(result.allowed) << junk;
        EXPECT_EQ(result.outcomes[0].level_units, 2000) << junk;
    }
    argv({"SET", "rl:p:bad", "0"});
    argv({"HSET", "rl:p:hash", "f", "v"});
    std::vector<ScriptLimit> wrong_type = {{"rl:p:hash", {10, 1000, 3}, 1}};
    EXPECT_TRUE(run(wrong_type).allowed);
}

TEST_F(ScriptVsLocal, BadArgumentsAreAnErrorReply)
{
    auto reply = argv({"EVAL", script_source(), "1", "k", "10", "1000", "5"});
    ASSERT_EQ(reply->type, REDIS_REPLY_ERROR);
    EXPECT_NE(std::string(reply->str).find("ratelimit: bad arguments"), std::string::npos);
    reply = argv({"EVAL", script_source(), "1", "k", "0", "1000", "5", "1"});
    ASSERT_EQ(reply->type, REDIS_REPLY_ERROR);
    reply = argv({"EVAL", script_source(), "0"});
    ASSERT_EQ(reply->type, REDIS_REPLY_ERROR);
}

TEST_F(ScriptVsLocal, EvalshaAfterScriptLoad)
{
    std::vector<ScriptLimit> limits = {{"rl:sha:k", {10, 1000, 5}, 1}};
    std::string evalsha = format_evalsha(limits.data(), limits.size());
    argv({"SCRIPT", "FLUSH"});
    auto missing = send_raw(evalsha);
    EXPECT_TRUE(is_noscript(missing.get()));
    auto fallback = send_raw(evalsha_to_eval(evalsha));
    ScriptResult result;
    std::string error;
    ASSERT_TRUE(parse_script_reply(fallback.get(), 1, result, error)) << error;
    EXPECT_EQ(result.outcomes[0].level_units, 4000);

    argv({"SCRIPT", "FLUSH"});
    auto loaded = argv({"SCRIPT", "LOAD", script_source()});
    ASSERT_EQ(loaded->type, REDIS_REPLY_STRING);
    EXPECT_EQ(std::string(loaded->str, loaded->len), script_sha1());
    auto reply = send_raw(evalsha);
    ASSERT_TRUE(parse_script_reply(reply.get(), 1, result, error)) << error;
    EXPECT_TRUE(result.allowed);
    EXPECT_LE(result.outcomes[0].level_units, 4000);
}

}  // namespace
}  // namespace ratelimit
