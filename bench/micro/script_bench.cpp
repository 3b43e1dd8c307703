// Micro-benchmarks of the Redis side of a decision: encoding the script command and parsing
// its reply (today's API: format_evalsha / parse_script_reply). One request with `range(0)`
// limits per iteration.
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <string>
#include <vector>

#include "ratelimit/key.h"
#include "ratelimit/script.h"

namespace {

using namespace ratelimit;

struct Limits {
    std::vector<std::string> keys;
    std::vector<ScriptLimit> limits;
    explicit Limits(size_t n)
    {
        for (size_t i = 0; i < n; i++) {
            keys.push_back(bucket_key("rl:", "api", "key" + std::to_string(1000 + i)));
        }
        for (const std::string& k : keys) {
            limits.push_back({k, {100, 1000, 200}, 1});
        }
    }
};

// The script's reply to an allowed request: {1, now_ms, level, reset, retry per limit}.
std::string reply_bytes(size_t n)
{
    std::string out = "*" + std::to_string(2 + 3 * n) + "\r\n:1\r\n:1795946804450\r\n";
    for (size_t i = 0; i < n; i++) {
        out += ":199000\r\n:10\r\n:0\r\n";
    }
    return out;
}

void BM_FormatEvalsha(benchmark::State& state)
{
    Limits l(size_t(state.range(0)));
    for (auto _ : state) {
        std::string cmd = format_evalsha(l.limits.data(), l.limits.size());
        benchmark::DoNotOptimize(cmd.data());
    }
}
BENCHMARK(BM_FormatEvalsha)->Arg(1)->Arg(3);

void BM_EvalshaToEval(benchmark::State& state)
{
    Limits l(1);
    std::string cmd = format_evalsha(l.limits.data(), 1);
    for (auto _ : state) {
        benchmark::DoNotOptimize(evalsha_to_eval(cmd).data());
    }
}
BENCHMARK(BM_EvalshaToEval);

// hiredis turning the bytes into a reply (what RedisClient::on_data does), then the parse.
void BM_ReadAndParseReply(benchmark::State& state)
{
    size_t n = size_t(state.range(0));
    std::string bytes = reply_bytes(n);
    redisReader* reader = redisReaderCreate();
    ScriptResult result;
    std::string error;
    for (auto _ : state) {
        void* reply = nullptr;
        redisReaderFeed(reader, bytes.data(), bytes.size());
        redisReaderGetReply(reader, &reply);
        bool ok = parse_script_reply(static_cast<redisReply*>(reply), n, result, error);
        freeReplyObject(reply);
        if (!ok) {
            state.SkipWithError("reply not parsed");
            break;
        }
    }
    redisReaderFree(reader);
}
BENCHMARK(BM_ReadAndParseReply)->Arg(1)->Arg(3);

void BM_ParseScriptReply(benchmark::State& state)
{
    size_t n = size_t(state.range(0));
    std::string bytes = reply_bytes(n);
    redisReader* reader = redisReaderCreate();
    void* reply = nullptr;
    redisReaderFeed(reader, bytes.data(), bytes.size());
    redisReaderGetReply(reader, &reply);
    ScriptResult result;
    std::string error;
    for (auto _ : state) {
        benchmark::DoNotOptimize(
            parse_script_reply(static_cast<redisReply*>(reply), n, result, error));
    }
    freeReplyObject(reply);
    redisReaderFree(reader);
}
BENCHMARK(BM_ParseScriptReply)->Arg(1)->Arg(3);

}  // namespace
