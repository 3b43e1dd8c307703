// Micro-benchmarks of the core's per-request functions (Google Benchmark), run by `make bench`
// before the macro table: bucket maths, bucket keys, response header values. The Redis command
// encoding and reply parsing are in script_bench.cpp.
#include <benchmark/benchmark.h>

#include <string>

#include "ratelimit/headers.h"
#include "ratelimit/key.h"
#include "ratelimit/token_bucket.h"

namespace {

using namespace ratelimit;

const BucketParams kParams{100, 1000, 200};  // 100r/s burst=200

void BM_Refill(benchmark::State& state)
{
    BucketState bucket{kParams.capacity_units() / 2, 1'000'000};
    int64_t now = 1'000'000;
    for (auto _ : state) {
        benchmark::DoNotOptimize(refill(kParams, bucket, now));
        now += 3;
    }
}
BENCHMARK(BM_Refill);

// One request with `range(0)` limits, each with a stored bucket.
void BM_DecideAll(benchmark::State& state)
{
    size_t n = size_t(state.range(0));
    BucketState states[8];
    LimitInput inputs[8];
    LimitOutcome outcomes[8];
    for (size_t i = 0; i < n; i++) {
        states[i] = {kParams.capacity_units() / 2, 1'000'000};
        inputs[i] = {kParams, 1, &states[i]};
    }
    int64_t now = 1'000'000;
    for (auto _ : state) {
        benchmark::DoNotOptimize(decide_all(inputs, outcomes, n, now));
        benchmark::ClobberMemory();
        now += 3;
    }
}
BENCHMARK(BM_DecideAll)->Arg(1)->Arg(3)->Arg(8);

// "<prefix><policy>:<key>" into a reused buffer; range(0) is the key's length, and keys
// longer than kMaxKeyBytes take the SHA-1 digest path.
void BM_AppendBucketKey(benchmark::State& state)
{
    std::string key(size_t(state.range(0)), 'k');
    std::string out;
    for (auto _ : state) {
        out.clear();
        append_bucket_key(out, "rl:", "api", key);
        benchmark::DoNotOptimize(out.data());
    }
}
BENCHMARK(BM_AppendBucketKey)->Arg(16)->Arg(kMaxKeyBytes)->Arg(kMaxKeyBytes + 1)->Arg(1024);

// What the header filter computes for one allowed request: the report, then the IETF values.
void BM_HeaderValues(benchmark::State& state)
{
    LimitOutcome outcome{kParams.capacity_units() / 2, 1000, 0};
    for (auto _ : state) {
        LimitReport report = make_report("api", kParams, outcome);
        std::string policy = ietf_policy_value(report);
        std::string limit = ietf_limit_value(report);
        benchmark::DoNotOptimize(policy.data());
        benchmark::DoNotOptimize(limit.data());
    }
}
BENCHMARK(BM_HeaderValues);

}  // namespace

BENCHMARK_MAIN();
