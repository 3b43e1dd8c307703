// Micro-benchmarks of the Redis side of decisions: adding requests to a batch and encoding the
// script command, and reading + parsing its reply. Each iteration is one batch of `range(0)`
// one-limit requests; items processed are requests, so the figures read per request.
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <string>
#include <vector>

#include "ratelimit/key.h"
#include "ratelimit/script.h"

namespace {

using namespace ratelimit;

std::vector<std::string> bucket_keys(size_t n)
{
    std::vector<std::string> keys;
    for (size_t i = 0; i < n; i++) {
        keys.push_back(bucket_key("rl:", "api", "key" + std::to_string(1000 + i)));
    }
    return keys;
}

void fill(ScriptBatch& batch, const std::vector<std::string>& keys)
{
    batch.clear();
    for (const std::string& k : keys) {
        ScriptLimit limit{k, {100, 1000, 200}, 1};
        batch.add_request(&limit, 1);
    }
}

// The script's reply: one string, now then per request "1 <level>".
std::string reply_bytes(size_t n)
{
    std::string text = "1795946804450";
    for (size_t i = 0; i < n; i++) {
        text += " 1 199000";
    }
    return "$" + std::to_string(text.size()) + "\r\n" + text + "\r\n";
}

void BM_BatchAndEncode(benchmark::State& state)
{
    auto keys = bucket_keys(size_t(state.range(0)));
    ScriptBatch batch;
    std::string command;
    for (auto _ : state) {
        fill(batch, keys);
        command.clear();
        batch.append_evalsha(command);
        benchmark::DoNotOptimize(command.data());
    }
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_BatchAndEncode)->Arg(1)->Arg(32)->Arg(128);

void BM_EvalshaToEval(benchmark::State& state)
{
    auto keys = bucket_keys(1);
    ScriptBatch batch;
    fill(batch, keys);
    std::string command;
    batch.append_evalsha(command);
    for (auto _ : state) {
        benchmark::DoNotOptimize(evalsha_to_eval(command).data());
    }
}
BENCHMARK(BM_EvalshaToEval);

// hiredis turning the bytes into a reply (what RedisClient::on_data does), then the parse.
void BM_ReadAndParseReply(benchmark::State& state)
{
    size_t n = size_t(state.range(0));
    auto keys = bucket_keys(n);
    ScriptBatch batch;
    fill(batch, keys);
    std::string bytes = reply_bytes(n);
    redisReader* reader = redisReaderCreate();
    BatchReply result;
    std::string error;
    for (auto _ : state) {
        void* reply = nullptr;
        redisReaderFeed(reader, bytes.data(), bytes.size());
        redisReaderGetReply(reader, &reply);
        bool ok = parse_batch_reply(static_cast<redisReply*>(reply), batch, result, error);
        freeReplyObject(reply);
        if (!ok) {
            state.SkipWithError("reply not parsed");
            break;
        }
    }
    redisReaderFree(reader);
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_ReadAndParseReply)->Arg(1)->Arg(32)->Arg(128);

}  // namespace
