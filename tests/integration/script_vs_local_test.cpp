// The Redis script against the C++ maths: for every reply, deciding the batch's requests one by
// one with decide_all on the state the test tracks, at the reply's now_ms, must give the same
// decisions and levels (and, through outcome_after, the same resets and retries).
#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "ratelimit/key.h"
#include "ratelimit/script.h"
#include "ratelimit/sha1.h"
#include "ratelimit/shaping.h"
#include "ratelimit/token_bucket.h"
#include "raw_redis.h"

namespace ratelimit {
namespace {

using Requests = std::vector<std::vector<ScriptLimit>>;
class Mirror;
class RandomBatches;

using testing::ReplyPtr;

class ScriptVsLocal : public testing::RawRedisTest {
protected:

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

    int64_t redis_now_ms()
    {
        auto t = argv({"TIME"});
        return std::stoll(t->element[0]->str) * 1000 + std::stoll(t->element[1]->str) / 1000;
    }

    BatchReply run(const Requests& requests, bool evalsha = false)
    {
        batch_.clear();
        for (const auto& r : requests) {
            batch_.add_request(r.data(), r.size());
        }
        std::string command;
        evalsha ? batch_.append_evalsha(command, form_) : batch_.append_eval(command, form_);
        auto reply = send_raw(command);
        if (evalsha && is_noscript(reply.get())) {
            reply = send_raw(evalsha_to_eval(command));
        }
        BatchReply result;
        std::string error;
        if (!parse_batch_reply(reply.get(), batch_, result, error)) {
            ADD_FAILURE() << error;
            // Sized as a reply, so that the checks that follow fail instead of crashing.
            result.allowed.assign(requests.size(), 0);
            result.first.assign(requests.size(), 0);
            result.levels.assign(requests.size() * 4 + 4, -1);
        }
        return result;
    }

    void run_and_check(RandomBatches& batches, const Requests& requests, int step,
                       Mirror& mirror, BatchReply& reply);

    ScriptBatch batch_;
    ScriptForm form_ = ScriptForm::keys_declared;
};

// Tracks the stored state of each key as the caller of decide_all would.
class Mirror {
public:
    void set(const std::string& key, BucketState state) { states_[key] = state; }

    // Decides `requests` one by one with the local maths at the reply's time, checks the
    // reply against them, and records what the script must have stored. Returns the local
    // outcomes, per request and limit.
    std::vector<std::vector<LimitOutcome>> check(const Requests& requests, const BatchReply& reply)
    {
        std::vector<std::vector<LimitOutcome>> outcomes;
        EXPECT_EQ(reply.allowed.size(), requests.size());
        if (reply.allowed.size() != requests.size()) {
            return outcomes;
        }
        for (size_t r = 0; r < requests.size(); r++) {
            const auto& limits = requests[r];
            std::vector<LimitInput> inputs;
            for (const auto& l : limits) {
                auto it = states_.find(std::string(l.key));
                inputs.push_back({l.params, l.cost, it == states_.end() ? nullptr : &it->second});
            }
            std::vector<LimitOutcome> local(limits.size());
            bool allowed = decide_all(inputs.data(), local.data(), limits.size(), reply.now_ms);
            EXPECT_EQ(reply.allowed[r] == 1, allowed) << "request " << r;
            for (size_t i = 0; i < limits.size(); i++) {
                int64_t level = reply.levels[reply.first[r] + i];
                LimitOutcome o = outcome_after(limits[i].params, limits[i].cost, level,
                                               reply.allowed[r] == 1);
                EXPECT_EQ(o.level_units, local[i].level_units) << "request " << r << " limit " << i;
                EXPECT_EQ(o.reset_ms, local[i].reset_ms) << "request " << r << " limit " << i;
                EXPECT_EQ(o.retry_after_ms, local[i].retry_after_ms)
                    << "request " << r << " limit " << i;
            }
            for (size_t i = 0; allowed && i < limits.size(); i++) {
                if (limits[i].cost > 0) {
                    BucketState after = stored_state(inputs[i].state, local[i], reply.now_ms);
                    after.period_ms = limits[i].params.period_ms;
                    states_[std::string(limits[i].key)] = after;
                }
            }
            outcomes.push_back(std::move(local));
        }
        return outcomes;
    }

    const BucketState* state(const std::string& key) const
    {
        auto it = states_.find(key);
        return it == states_.end() ? nullptr : &it->second;
    }

private:
    std::map<std::string, BucketState> states_;
};

std::string stored(int64_t level, int64_t period, int64_t stamp)
{
    return "v2 " + std::to_string(level) + " " + std::to_string(period) + " "
           + std::to_string(stamp);
}

// Keys the batch wrote: named by an allowed request with cost > 0.
std::set<std::string> written(const Requests& requests, const BatchReply& reply)
{
    std::set<std::string> keys;
    for (size_t r = 0; r < requests.size(); r++) {
        for (const auto& l : requests[r]) {
            if (reply.allowed[r] && l.cost > 0) {
                keys.emplace(l.key);
            }
        }
    }
    return keys;
}

// Four keys, each with its own parameters, named at random by the requests of one batch.
class RandomBatches {
public:
    static constexpr size_t kKeys = 4;
    const std::string keys[kKeys] = {"rl:a:k", "rl:b:k", "rl:c:k", "rl:d:k"};
    const BucketParams params[kKeys] = {
        {50, 1000, 3}, {600, 60000, 5}, {7, 1000, 2}, {1, 60000, 4}};

    explicit RandomBatches(unsigned seed) : rng(seed) {}

    Requests next()
    {
        Requests requests(1 + rng() % 8);
        for (auto& limits : requests) {
            size_t first = rng() % kKeys;
            size_t n = 1 + rng() % 3;
            for (size_t j = 0; j < n; j++) {
                size_t k = (first + j) % kKeys;
                limits.push_back({keys[k], params[k], int64_t(rng() % 4)});
            }
        }
        return requests;
    }

    std::mt19937 rng;
};

// Runs one batch by `step`'s form and verb and checks the reply and what was stored against
// `mirror`: the value (level, period, stamp) and a TTL that ends when readers see it full.
void ScriptVsLocal::run_and_check(RandomBatches& batches, const Requests& requests, int step,
                                  Mirror& mirror, BatchReply& reply)
{
    std::map<std::string, std::optional<std::string>> before;
    for (const auto& k : batches.keys) {
        before[k] = get(k);
    }
    // Both forms of the script, each by EVALSHA and by EVAL, against one mirror.
    form_ = (step / 2) % 2 ? ScriptForm::node_wide : ScriptForm::keys_declared;
    reply = run(requests, step % 2 == 0);
    mirror.check(requests, reply);
    auto wrote = written(requests, reply);
    for (size_t i = 0; i < RandomBatches::kKeys; i++) {
        const std::string& k = batches.keys[i];
        if (!wrote.count(k)) {
            // Untouched, rejected and cost-0 keys are not written (they may expire).
            auto now = get(k);
            EXPECT_TRUE(now == before[k] || !now) << k;
            continue;
        }
        const BucketState* s = mirror.state(k);
        ASSERT_NE(s, nullptr);
        EXPECT_EQ(get(k), stored(s->level_units, s->period_ms, s->stamp_ms)) << k;
        long long ttl = pttl(k);
        int64_t reset = outcome_after(batches.params[i], 0, s->level_units, true).reset_ms
                        + std::max<int64_t>(0, s->stamp_ms - reply.now_ms);
        EXPECT_LE(ttl, reset);
        EXPECT_GE(ttl, reset - 50);
    }
}

TEST_F(ScriptVsLocal, RandomBatchesMatchLocalMathsOneByOne)
{
    RandomBatches batches(12345);
    Mirror mirror;
    int allowed = 0;
    int rejected = 0;
    int shared = 0;
    for (int step = 0; step < 250; step++) {
        Requests requests = batches.next();
        BatchReply reply;
        run_and_check(batches, requests, step, mirror, reply);
        for (size_t r = 0; r < requests.size(); r++) {
            (reply.allowed[r] ? allowed : rejected)++;
        }
        size_t total = 0;
        for (const auto& limits : requests) {
            total += limits.size();
        }
        shared += batch_.keys() < total ? 1 : 0;  // some key named by several requests
        std::this_thread::sleep_for(std::chrono::milliseconds(batches.rng() % 12));
        if (HasFailure()) {
            FAIL() << "at step " << step;
        }
    }
    EXPECT_GT(allowed, 100);
    EXPECT_GT(rejected, 100);
    EXPECT_GT(shared, 100);
}

// Buckets stamped ahead of Redis's clock (written by a master whose clock was ahead, before a
// failover): the level is as of the stamp, which both keep, so the lag is credited once.
TEST_F(ScriptVsLocal, StampsAheadOfRedisTimeMatchLocalMaths)
{
    RandomBatches batches(777);
    Mirror mirror;
    int ahead = 0;
    for (int step = 0; step < 120; step++) {
        if (step % 10 == 0) {
            int64_t now = redis_now_ms();
            for (size_t k = 0; k < RandomBatches::kKeys; k++) {
                const BucketParams& p = batches.params[k];
                BucketState s{int64_t(batches.rng() % p.capacity_units()),
                              now + 100 + int64_t(batches.rng() % 3000), p.period_ms};
                argv({"SET", batches.keys[k], stored(s.level_units, s.period_ms, s.stamp_ms)});
                mirror.set(batches.keys[k], s);
            }
        }
        Requests requests = batches.next();
        BatchReply reply;
        run_and_check(batches, requests, step, mirror, reply);
        for (const auto& k : written(requests, reply)) {
            ahead += mirror.state(k)->stamp_ms > reply.now_ms ? 1 : 0;
        }
        if (HasFailure()) {
            FAIL() << "at step " << step;
        }
    }
    EXPECT_GT(ahead, 20);  // writes that kept a stamp ahead of the call's time
}

// Two limits of one request that become one Redis key: a long key and the text of its digest.
// The caller merges them (summed cost, ngx_ratelimit_handler.cpp); the script refuses them
// unmerged, which before 0.4 it checked against one level and took twice (a negative level).
TEST_F(ScriptVsLocal, TwoLimitsOnOneRedisKey)
{
    const BucketParams p{1, 60000, 5};
    std::string long_key(200, 'k');
    std::string redis_key = bucket_key("rl:", "p", long_key);
    ASSERT_EQ(redis_key, bucket_key("rl:", "p", "#sha1:" + sha1_hex(long_key)));
    KeyIdBuffer scratch;
    ASSERT_EQ(key_id(long_key, scratch), "#sha1:" + sha1_hex(long_key));

    for (auto form : {ScriptForm::keys_declared, ScriptForm::node_wide}) {
        form_ = form;
        argv({"DEL", redis_key});
        batch_.clear();
        ScriptLimit both[2] = {{redis_key, p, 3}, {redis_key, p, 2}};
        batch_.add_request(both, 2);
        std::string command;
        batch_.append_eval(command, form);
        auto refused = send_raw(command);
        ASSERT_EQ(refused->type, REDIS_REPLY_ERROR);
        EXPECT_NE(std::string(refused->str).find("ratelimit: bad arguments"), std::string::npos);
        EXPECT_EQ(argv({"EXISTS", redis_key})->integer, 0);

        // Merged, as the handler sends them: 5 of 5, then 5 more refused; never below empty.
        Mirror mirror;
        Requests merged = {{{redis_key, p, 5}}, {{redis_key, p, 5}}, {{redis_key, p, 1}}};
        BatchReply reply = run(merged);
        mirror.check(merged, reply);
        EXPECT_EQ(reply.allowed, (std::vector<uint8_t>{1, 0, 0}));
        EXPECT_EQ(get(redis_key), stored(0, 60000, reply.now_ms));
    }
}

TEST_F(ScriptVsLocal, ManyRequestsOnOneKeyInOneBatch)
{
    const std::string key = "rl:one:k";
    const BucketParams p{1, 60000, 10};  // 1r/m: no refill to speak of during the test
    Requests requests;
    for (int i = 0; i < 40; i++) {
        requests.push_back({{key, p, i % 5 == 4 ? 0 : (i % 7 == 3 ? 2 : 1)}});
    }
    BatchReply reply = run(requests);
    EXPECT_EQ(batch_.keys(), 1u);
    Mirror mirror;
    mirror.check(requests, reply);
    int64_t taken = 0;
    for (size_t r = 0; r < requests.size(); r++) {
        taken += reply.allowed[r] ? requests[r][0].cost : 0;
    }
    EXPECT_EQ(taken, 10);  // exactly the burst, whatever the order of costs
    for (size_t r = 0; r < requests.size(); r++) {
        EXPECT_TRUE(requests[r][0].cost > 0 || reply.allowed[r]) << r;  // cost 0 always passes
    }
    EXPECT_EQ(get(key), stored(mirror.state(key)->level_units, 60000, reply.now_ms));
    EXPECT_EQ(reply.levels.back(), mirror.state(key)->level_units);

    // A request over two keys, rejected by the empty one, leaves the other untouched for the
    // requests after it in the same batch.
    const std::string other = "rl:one:other";
    Requests mixed = {{{other, p, 3}, {key, p, 1}}, {{other, p, 10}}, {{other, p, 1}}};
    BatchReply second = run(mixed);
    mirror.check(mixed, second);
    EXPECT_EQ(second.allowed, (std::vector<uint8_t>{0, 1, 0}));
    EXPECT_EQ(get(other), stored(0, 60000, second.now_ms));
}

TEST_F(ScriptVsLocal, RejectedAndCostZeroWriteNothing)
{
    const std::string key = "rl:p:nowrite";
    const BucketParams p{1, 60000, 1};
    Requests take = {{{key, p, 1}}};
    Mirror mirror;
    BatchReply first = run(take);
    mirror.check(take, first);
    ASSERT_TRUE(first.allowed[0]);
    auto value = get(key);
    ASSERT_TRUE(value);

    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    Requests again = {{{key, p, 1}}, {{key, p, 0}, {"rl:p:absent", p, 0}}};
    BatchReply second = run(again);
    mirror.check(again, second);
    EXPECT_EQ(second.allowed, (std::vector<uint8_t>{0, 1}));
    EXPECT_EQ(get(key), value);
    EXPECT_EQ(argv({"EXISTS", "rl:p:absent"})->integer, 0);

    // All or nothing: the short bucket rejects, the full one keeps its key absent.
    Requests both = {{{"rl:p:fresh", {1, 60000, 5}, 1}, {key, p, 1}}};
    BatchReply third = run(both);
    mirror.check(both, third);
    EXPECT_FALSE(third.allowed[0]);
    EXPECT_EQ(argv({"EXISTS", "rl:p:fresh"})->integer, 0);
    EXPECT_EQ(get(key), value);
}

TEST_F(ScriptVsLocal, KeyExpiresWhenBucketIsFull)
{
    const std::string key = "rl:fast:k";
    const BucketParams p{100, 1000, 2};  // 10 ms per token
    Requests one = {{{key, p, 1}}};
    BatchReply reply = run(one);
    ASSERT_TRUE(reply.allowed[0]);
    EXPECT_EQ(outcome_after(p, 1, reply.levels[0], true).reset_ms, 10);
    EXPECT_EQ(argv({"EXISTS", key})->integer, 1);
    EXPECT_LE(pttl(key), 10);
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    EXPECT_EQ(argv({"EXISTS", key})->integer, 0);
    // The next request sees a full bucket again.
    reply = run({{{key, p, 0}}});
    EXPECT_EQ(reply.levels[0], 2000);
}

TEST_F(ScriptVsLocal, ReadsVersion1Values)
{
    // Today's format, "<level> <stamp>" in the reader's period, as 0.2 writes it.
    const std::string key = "rl:v1:k";
    const BucketParams p{10, 60000, 10};
    int64_t stamp = redis_now_ms() - 100;
    argv({"SET", key, "120000 " + std::to_string(stamp)});  // 2 tokens, 100 ms ago
    Mirror mirror;
    mirror.set(key, {120000, stamp, 0});
    Requests take = {{{key, p, 1}}, {{key, p, 1}}, {{key, p, 1}}};
    BatchReply reply = run(take);
    mirror.check(take, reply);
    EXPECT_EQ(reply.allowed, (std::vector<uint8_t>{1, 1, 0}));
    int64_t elapsed = reply.now_ms - stamp;
    EXPECT_EQ(reply.levels[1], 120000 + 10 * elapsed - 120000);
    // Written back in version 2.
    EXPECT_EQ(get(key), stored(reply.levels[1], 60000, reply.now_ms));
}

TEST_F(ScriptVsLocal, RateChangedKeepsTokens)
{
    // 4 of 10 tokens left under 10r/m, read under 1r/s: 4 tokens, not 9.
    const std::string key = "rl:reload:k";
    int64_t stamp = redis_now_ms();
    argv({"SET", key, stored(4 * 60000, 60000, stamp)});
    const BucketParams per_second{1, 1000, 10};
    Mirror mirror;
    mirror.set(key, {4 * 60000, stamp, 60000});
    Requests peek = {{{key, per_second, 0}}};
    BatchReply reply = run(peek);
    mirror.check(peek, reply);
    int64_t elapsed = reply.now_ms - stamp;
    ASSERT_LT(elapsed, 1000);
    EXPECT_EQ(reply.levels[0], 4000 + elapsed);
    EXPECT_EQ(remaining_tokens(per_second, {reply.levels[0], 0, 0}), 4);

    // And the other way round: 4 tokens of 1r/s are 4 tokens of 10r/m, not nearly none.
    argv({"SET", key, stored(4000, 1000, stamp)});
    const BucketParams per_minute{10, 60000, 10};
    mirror.set(key, {4000, stamp, 1000});
    Requests take = {{{key, per_minute, 1}}};
    reply = run(take);
    mirror.check(take, reply);
    ASSERT_TRUE(reply.allowed[0]);
    EXPECT_EQ(remaining_tokens(per_minute, {reply.levels[0], 0, 0}), 3);
    EXPECT_EQ(get(key), stored(reply.levels[0], 60000, reply.now_ms));

    // Burst lowered: 8 tokens of a burst-10 bucket read with burst 3 are 3 (full).
    argv({"SET", key, stored(8 * 60000, 60000, stamp)});
    const BucketParams small{1, 60000, 3};
    mirror.set(key, {8 * 60000, stamp, 60000});
    Requests capped = {{{key, small, 0}}, {{key, small, 3}}, {{key, small, 1}}};
    reply = run(capped);
    mirror.check(capped, reply);
    EXPECT_EQ(reply.levels[0], 3 * 60000);
    EXPECT_EQ(reply.allowed, (std::vector<uint8_t>{1, 1, 0}));
}

TEST_F(ScriptVsLocal, LaterVersionsWithMoreFieldsAreRead)
{
    const std::string key = "rl:v3:k";
    const BucketParams p{1, 60000, 10};
    int64_t stamp = redis_now_ms();
    argv({"SET", key, "v3 120000 60000 " + std::to_string(stamp) + " extra 7"});
    BatchReply reply = run({{{key, p, 0}}});
    EXPECT_EQ(reply.levels[0], 120000 + (reply.now_ms - stamp));
}

TEST_F(ScriptVsLocal, BinaryKeys)
{
    const std::string key("rl:p:\x00\xff\r\n \"*$", 13);
    const std::string other("rl:p:\x00\xfe\r\n \"*$", 13);
    Requests requests = {{{key, {10, 1000, 3}, 2}, {other, {10, 1000, 3}, 1}}};
    Mirror mirror;
    for (int i = 0; i < 3; i++) {
        BatchReply reply = run(requests);
        mirror.check(requests, reply);
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
    Requests requests = {{{"rl:big:k", big, 1}}};
    Mirror mirror;
    BatchReply reply = run(requests);
    mirror.check(requests, reply);
    ASSERT_TRUE(reply.allowed[0]);
    EXPECT_EQ(get("rl:big:k"),
              stored(big.capacity_units() - big.period_ms, big.period_ms, reply.now_ms));
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    reply = run(requests);
    mirror.check(requests, reply);
    // The same level read under 1r/s keeps its tokens, capped at that burst.
    Requests small = {{{"rl:big:k", {1, 1000, 104249991}, 0}}};
    reply = run(small);
    mirror.check(small, reply);
}

// A value no bucket can hold (junk, a negative level as two limits on one key wrote before
// 0.4) fails the call with an error naming the key: never read as a full bucket, and left as
// it is (it expires, or the API's DELETE refills it).
TEST_F(ScriptVsLocal, UnreadableStoredValueIsAnErrorNeverFull)
{
    const BucketParams p{10, 1000, 3};
    for (const char* junk :
         {"garbage", "-5 100", "1e+15 100", "12", "1 2 3", "v1 100 1000 5", "v2 100 0 5",
          "v2 100 86400001 5", "v2 99999999999999999 1000 5", "v2 100 1000 5x", "v2 100 1000",
          "vx 100 1000 5", "v2 -1 1000 5", " 1 2", "v2 -3000 1000 5", "v2 100 1000 -5",
          "v2 100 1000 9007199254740992"}) {
        argv({"SET", "rl:p:bad\r\n\xff", junk});
        for (auto form : {ScriptForm::keys_declared, ScriptForm::node_wide}) {
            batch_.clear();
            ScriptLimit ok{"rl:p:good", p, 1};
            ScriptLimit bad{"rl:p:bad\r\n\xff", p, 1};
            batch_.add_request(&ok, 1);
            batch_.add_request(&bad, 1);
            std::string command;
            batch_.append_eval(command, form);
            auto reply = send_raw(command);
            BatchReply result;
            std::string error;
            EXPECT_FALSE(parse_batch_reply(reply.get(), batch_, result, error)) << junk;
            EXPECT_EQ(error, "ratelimit: unreadable bucket value at rl:p:bad???") << junk;
            EXPECT_EQ(get("rl:p:bad\r\n\xff"), junk);
            EXPECT_EQ(argv({"EXISTS", "rl:p:good"})->integer, 0);  // nothing written
        }
    }
    // A key of another type reads as missing (GET/MGET cannot tell it from no key).
    argv({"HSET", "rl:p:hash", "f", "v"});
    BatchReply reply = run({{{"rl:p:hash", p, 0}}});
    EXPECT_TRUE(reply.allowed[0]);
    EXPECT_EQ(reply.levels[0], 3000);
    EXPECT_EQ(argv({"TYPE", "rl:p:hash"})->str, std::string("hash"));  // cost 0: untouched
    reply = run({{{"rl:p:hash", p, 1}}});
    EXPECT_TRUE(reply.allowed[0]);
    EXPECT_EQ(get("rl:p:hash"), stored(2000, 1000, reply.now_ms));
}

TEST_F(ScriptVsLocal, BadArgumentsAreAnErrorReply)
{
    // ARGV: R, P, P parameter sets, each key's set, then per request `k` or `-n` and n pairs.
    const std::string& src = script_source();
    const std::vector<std::string> head = {"EVAL", src, "1", "k"};
    auto with = [&](std::vector<std::string> argv) {
        std::vector<std::string> all = head;
        all.insert(all.end(), argv.begin(), argv.end());
        return all;
    };
    for (std::vector<std::string> args : {
             std::vector<std::string>{"EVAL", src, "0"},
             {"EVAL", src, "0", "1", "1", "10", "1000", "5"},
             with({"1", "1", "10", "1000", "5", "1"}),                  // no request
             with({"1", "1", "10", "1000", "5", "1", "-1", "1"}),      // short pair
             with({"1", "1", "0", "1000", "5", "1", "1"}),             // count 0
             with({"1", "1", "10", "1000", "5", "2", "1"}),            // no such set
             with({"1", "0", "1", "1"}),                               // no set at all
             with({"1", "1", "10", "1000", "5", "1", "0"}),            // key 0
             with({"1", "1", "10", "1000", "5", "1", "2"}),            // key > K
             with({"1", "1", "10", "1000", "5", "1", "-1", "2", "1"}), // key > K in a pair
             with({"1", "1", "10", "1000", "5", "1", "-1", "1", "-1"}),  // cost < 0
             with({"1", "1", "10", "1000", "5", "1", "-1", "1", "x"}),   // cost junk
             with({"1", "1", "10", "1000", "5", "1", "1", "9"}),       // extra argument
             with({"2", "1", "10", "1000", "5", "1", "1"}),            // R too big
             with({"x", "1", "10", "1000", "5", "1", "1"}),            // R junk
         }) {
        auto reply = argv(args);
        ASSERT_EQ(reply->type, REDIS_REPLY_ERROR) << args.size() << " " << args.back();
        EXPECT_NE(std::string(reply->str).find("ratelimit: bad arguments"), std::string::npos);
        EXPECT_EQ(argv({"EXISTS", "k"})->integer, 0);
    }
    // The same shapes, well formed, are decided.
    for (std::vector<std::string> args : {
             with({"1", "1", "10", "1000", "5", "1", "1"}),
             with({"1", "1", "10", "1000", "5", "1", "-1", "1", "1"}),
         }) {
        argv({"DEL", "k"});
        auto good = argv(args);
        ASSERT_EQ(good->type, REDIS_REPLY_STRING) << args.back();
        std::string text(good->str, good->len);
        EXPECT_NE(text.find(" 1 4000"), std::string::npos) << text;
        EXPECT_EQ(text.size() - text.find(" 1 4000"), 7u) << text;
    }
}

// The script files as they are, run by redis-cli: what an operator can check by hand (view.lua
// after the reader it shares, as the module sends it).
TEST_F(ScriptVsLocal, ScriptFilesRunWithRedisCliEval)
{
    const std::string lua = RATELIMIT_SOURCE_DIR "/core/lua/";
    const std::string view = "/tmp/ratelimit-view-" + std::to_string(getpid()) + ".lua";
    ASSERT_EQ(std::system(("cat " + lua + "bucket_read.lua " + lua + "view.lua > " + view).c_str()),
              0);
    auto redis_cli = [&](const std::string& args) {
        std::string cmd = "redis-cli -p " + std::to_string(server_.port()) + " --eval " + args
                          + " 2>&1";
        std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd.c_str(), "r"), pclose);
        std::string out;
        char buf[512];
        while (pipe && fgets(buf, sizeof buf, pipe.get())) {
            out += buf;
        }
        return out;
    };
    // One request on rl:cli:k (10 r/s, burst 5), cost 1: allowed, 4 tokens left.
    std::string decided = redis_cli(lua + "decide.lua rl:cli:k , 1 1 10 1000 5 1 1");
    EXPECT_NE(decided.find(" 1 4000"), std::string::npos) << decided;
    EXPECT_EQ(get("rl:cli:k").value_or("").rfind("v2 4000 1000 ", 0), 0u);
    std::string viewed = redis_cli(view + " rl:cli:k , 10 1000 5");
    std::remove(view.c_str());
    EXPECT_EQ(viewed.substr(0, 2), "1\n") << viewed;
    EXPECT_NE(viewed.find("\n4"), std::string::npos) << viewed;  // 4000 and some refill
    std::string bad = redis_cli(lua + "decide.lua rl:cli:k , x");
    EXPECT_NE(bad.find("ratelimit: bad arguments"), std::string::npos) << bad;
}

TEST_F(ScriptVsLocal, EvalshaAfterScriptFlushFallsBackToEval)
{
    Requests requests = {{{"rl:sha:k", {10, 1000, 5}, 1}}, {{"rl:sha:k", {10, 1000, 5}, 2}}};
    batch_.clear();
    for (const auto& r : requests) {
        batch_.add_request(r.data(), r.size());
    }
    std::string evalsha;
    batch_.append_evalsha(evalsha);
    argv({"SCRIPT", "FLUSH"});
    auto missing = send_raw(evalsha);
    EXPECT_TRUE(is_noscript(missing.get()));
    auto fallback = send_raw(evalsha_to_eval(evalsha));
    BatchReply result;
    std::string error;
    ASSERT_TRUE(parse_batch_reply(fallback.get(), batch_, result, error)) << error;
    EXPECT_EQ(result.levels, (std::vector<int64_t>{4000, 2000}));

    argv({"SCRIPT", "FLUSH"});
    auto loaded = argv({"SCRIPT", "LOAD", script_source()});
    ASSERT_EQ(loaded->type, REDIS_REPLY_STRING);
    EXPECT_EQ(std::string(loaded->str, loaded->len), script_sha1());
    argv({"DEL", "rl:sha:k"});
    auto reply = send_raw(evalsha);
    ASSERT_TRUE(parse_batch_reply(reply.get(), batch_, result, error)) << error;
    EXPECT_EQ(result.allowed, (std::vector<uint8_t>{1, 1}));
    EXPECT_EQ(result.levels, (std::vector<int64_t>{4000, 2000}));
}

// Shaping (delay=): the wait of a request is the longest of its limits' waits, each read from
// the level after the decision. From the script's levels and from the local maths on the same
// sequence, every request must get the same wait.
int64_t request_wait(const std::vector<ScriptLimit>& limits, const std::vector<int64_t>& delays,
                     const int64_t* levels)
{
    int64_t wait = 0;
    for (size_t i = 0; i < limits.size(); i++) {
        wait = std::max(wait, delay_ms(limits[i].params, delays[i], levels[i]));
    }
    return wait;
}

TEST_F(ScriptVsLocal, WaitsFromScriptLevelsEqualWaitsFromLocalMaths)
{
    const std::string keys[3] = {"rl:s:a", "rl:s:b", "rl:s:c"};
    const BucketParams params[3] = {{5, 1000, 12}, {50, 1000, 6}, {120, 60000, 9}};
    const int64_t delays[3] = {8, 0, 3};
    Mirror mirror;
    std::mt19937 rng(16);
    int waited = 0;
    int at_once = 0;
    int rejected = 0;
    for (int step = 0; step < 200; step++) {
        Requests requests(1 + rng() % 6);
        std::vector<std::vector<int64_t>> request_delays;
        for (auto& limits : requests) {
            std::vector<int64_t> d;
            size_t first = rng() % 3;
            for (size_t j = 0, n = 1 + rng() % 2; j < n; j++) {
                size_t k = (first + j) % 3;
                limits.push_back({keys[k], params[k], int64_t(1 + rng() % 2)});
                d.push_back(rng() % 4 == 0 ? kNoDelay : delays[k]);
            }
            request_delays.push_back(d);
        }
        BatchReply reply = run(requests, step % 2 == 0);
        auto local = mirror.check(requests, reply);
        ASSERT_EQ(local.size(), requests.size());
        for (size_t r = 0; r < requests.size(); r++) {
            if (!reply.allowed[r]) {
                rejected++;
                continue;
            }
            std::vector<int64_t> local_levels;
            for (const auto& o : local[r]) {
                local_levels.push_back(o.level_units);
            }
            int64_t from_script =
                request_wait(requests[r], request_delays[r], &reply.levels[reply.first[r]]);
            int64_t from_local = request_wait(requests[r], request_delays[r], local_levels.data());
            EXPECT_EQ(from_script, from_local) << "step " << step << " request " << r;
            (from_script > 0 ? waited : at_once)++;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
        if (HasFailure()) {
            FAIL() << "at step " << step;
        }
    }
    // Each kind seen often enough for the comparison to mean something.
    EXPECT_GT(waited, 20);
    EXPECT_GT(at_once, 20);
    EXPECT_GT(rejected, 20);
}

TEST_F(ScriptVsLocal, TheIssueExampleWaitsFromOneBatch)
{
    // rate=5r/s burst=12 delay=8, 13 requests at once: 8 at once, 4 waiting 200..800 ms, 1 out.
    const BucketParams p{5, 1000, 12};
    Requests requests(13, std::vector<ScriptLimit>{{"rl:s:example", p, 1}});
    BatchReply reply = run(requests);
    std::vector<int64_t> waits;
    for (size_t r = 0; r < requests.size(); r++) {
        waits.push_back(reply.allowed[r] ? delay_ms(p, 8, reply.levels[reply.first[r]]) : -1);
    }
    EXPECT_EQ(waits, (std::vector<int64_t>{0, 0, 0, 0, 0, 0, 0, 0, 200, 400, 600, 800, -1}));
}

}  // namespace
}  // namespace ratelimit
