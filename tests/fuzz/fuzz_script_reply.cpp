// libFuzzer target: Redis replies to the ratelimit script. The input is fed to a hiredis
// reader; every reply it yields goes through parse_batch_reply (batches of 1 to 3 requests of
// 1 to 2 limits), is_noscript, outcome_after and the header values the module builds from a
// parsed reply. The raw input also goes through
// evalsha_to_eval, whose output, when any, must be a well-formed EVAL command.
#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ratelimit/headers.h"
#include "ratelimit/script.h"
#include "fuzz_check.h"

using namespace ratelimit;


namespace {

const BucketParams kParams[2] = {{1, 1000, 10}, {2, 60000, 10}};

// Batches the replies are parsed against: requests of one or two limits over two keys.
const std::vector<ScriptBatch>& batches()
{
    static const std::vector<ScriptBatch> all = [] {
        std::vector<ScriptBatch> out;
        ScriptLimit one[1] = {{"rl:p:a", kParams[0], 1}};
        ScriptLimit two[2] = {{"rl:p:b", kParams[1], 0}, {"rl:p:a", kParams[0], 3}};
        for (size_t r = 1; r <= 3; r++) {
            for (size_t shape = 0; shape < 2; shape++) {
                ScriptBatch batch;
                for (size_t i = 0; i < r; i++) {
                    (i + shape) % 2 ? batch.add_request(two, 2) : batch.add_request(one, 1);
                }
                out.push_back(std::move(batch));
            }
        }
        return out;
    }();
    return all;
}

void check_reply(const redisReply* reply)
{
    is_noscript(reply);
    BatchReply result;
    for (const ScriptBatch& batch : batches()) {
        std::string error;
        if (!parse_batch_reply(reply, batch, result, error)) {
            CHECK(!error.empty());
            continue;
        }
        CHECK(result.allowed.size() == batch.requests());
        CHECK(result.first.size() == batch.requests());
        for (size_t r = 0; r < batch.requests(); r++) {
            size_t n = batch.limits_of(r);
            CHECK(result.first[r] + n <= result.levels.size());
            LimitReport reports[2];
            for (size_t i = 0; i < n; i++) {
                // Limit i of a two-limit request is key b then key a; a one-limit one is a.
                const BucketParams& params = n == 2 && i == 0 ? kParams[1] : kParams[0];
                int64_t cost = n == 2 ? (i == 0 ? 0 : 3) : 1;
                LimitOutcome o = outcome_after(params, cost, result.levels[result.first[r] + i],
                                               result.allowed[r] == 1);
                CHECK(o.reset_ms >= 0 && o.retry_after_ms >= 0);
                reports[i] = make_report("p", params, o);
                CHECK(reports[i].remaining >= 0);
                CHECK(reports[i].reset_seconds >= 0);
                CHECK(reports[i].retry_after_seconds >= 0);
                ietf_limit_value(reports[i]);
            }
            CHECK(most_restrictive(reports, n) < n);
        }
    }
}

// The fallback must be a RESP array "EVAL <script> <same args...>".
void check_eval(std::string_view evalsha, const std::string& eval)
{
    redisReader* reader = redisReaderCreate();
    CHECK(reader);
    CHECK(redisReaderFeed(reader, eval.data(), eval.size()) == REDIS_OK);
    void* out = nullptr;
    CHECK(redisReaderGetReply(reader, &out) == REDIS_OK && out);
    auto* reply = static_cast<redisReply*>(out);
    CHECK(reply->type == REDIS_REPLY_ARRAY && reply->elements >= 3);
    CHECK(std::string_view(reply->element[0]->str, reply->element[0]->len) == "EVAL");
    CHECK(std::string_view(reply->element[1]->str, reply->element[1]->len) == script_source());
    void* more = nullptr;
    CHECK(redisReaderGetReply(reader, &more) == REDIS_OK && !more);  // nothing left over
    freeReplyObject(reply);
    redisReaderFree(reader);
    CHECK(evalsha.size() < eval.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view input(reinterpret_cast<const char*>(data), size);

    redisReader* reader = redisReaderCreate();
    if (!reader) {
        return 0;
    }
    if (!has_huge_array(input) && redisReaderFeed(reader, input.data(), input.size()) == REDIS_OK) {
        for (int i = 0; i < 64; i++) {
            void* reply = nullptr;
            if (redisReaderGetReply(reader, &reply) != REDIS_OK || !reply) {
                break;
            }
            check_reply(static_cast<redisReply*>(reply));
            freeReplyObject(reply);
        }
    }
    redisReaderFree(reader);
    check_reply(nullptr);

    std::string eval = evalsha_to_eval(input);
    if (!eval.empty()) {
        check_eval(input, eval);
    }

    // A command made by append_evalsha from this input always converts, to append_eval's.
    static ScriptBatch batch;  // reused, as the module reuses its batches
    batch.clear();
    size_t n = size % 4 + 1;
    ScriptLimit limits[4];
    for (size_t i = 0; i < n; i++) {
        limits[i].key = input.substr(0, size / (i + 1));
        limits[i].params = BucketParams{int64_t(size) + 1, 1000, int64_t(i) + 1};
        limits[i].cost = int64_t(i);
    }
    batch.add_request(limits, n);  // keys repeat across requests (and within one if short)
    batch.add_request(limits + n / 2, n - n / 2);
    CHECK(batch.requests() == 2);
    CHECK(batch.keys() <= n);
    std::string evalsha;
    std::string made_eval;
    batch.append_evalsha(evalsha);
    batch.append_eval(made_eval);
    CHECK(evalsha_to_eval(evalsha) == made_eval);
    return 0;
}
