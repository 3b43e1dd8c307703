// libFuzzer target: policy parsing (rates, integers, names) and, for every bucket the
// parsers and check_bucket accept, the token-bucket maths and the header values built on it.
//
// Input: lines "<rate>\n<burst>\n<cost>\n<policy name>\n<level>\n<elapsed ms>"; each
// parser also sees the whole input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "ratelimit/headers.h"
#include "ratelimit/policy.h"
#include "ratelimit/token_bucket.h"
#include "fuzz_check.h"

using namespace ratelimit;


namespace {

constexpr int64_t kExactLimit = int64_t(1) << 53;

void check_parsers(std::string_view text)
{
    if (auto rate = parse_rate(text)) {
        CHECK(rate->count > 0);
        auto again = parse_rate(format_rate(*rate));
        CHECK(again && again->count == rate->count && again->period_ms == rate->period_ms);
    }
    if (auto v = parse_positive_int(text)) {
        CHECK(*v > 0);
        CHECK(parse_positive_int(std::to_string(*v)) == v);
    }
    if (auto v = parse_non_negative_int(text)) {
        CHECK(*v >= 0);
        CHECK(parse_non_negative_int(std::to_string(*v)) == v);
    }
    is_valid_policy_name(text);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view input(reinterpret_cast<const char*>(data), size);
    check_parsers(input);

    std::vector<std::string_view> f;
    size_t start = 0;
    while (f.size() < 6) {
        size_t nl = input.find('\n', start);
        f.push_back(input.substr(start, nl == std::string_view::npos ? nl : nl - start));
        if (nl == std::string_view::npos) {
            break;
        }
        start = nl + 1;
    }
    for (std::string_view field : f) {
        check_parsers(field);
    }
    f.resize(6);

    auto rate = parse_rate(f[0]);
    if (!rate) {
        return 0;
    }
    BucketParams params{rate->count, rate->period_ms, rate->count};
    if (auto burst = parse_positive_int(f[1])) {
        params.burst = *burst;
    }
    std::string problem = check_bucket(params);
    if (!problem.empty()) {
        return 0;
    }
    // What check_bucket promises: every unit count of this bucket is exact in Lua.
    CHECK(params.capacity_units() < kExactLimit);
    CHECK(params.count * params.period_ms < kExactLimit);

    int64_t cost = parse_non_negative_int(f[2]).value_or(1);
    std::string_view name = is_valid_policy_name(f[3]) ? f[3] : "p";

    // A stored state as the module writes it: a level within [0, capacity] and a stamp
    // in the past (or, for a clock that went backwards, the future).
    const int64_t now = int64_t(1) << 41;
    BucketState state;
    bool has_state = false;
    if (auto level = parse_non_negative_int(f[4])) {
        has_state = true;
        state.level_units = *level % (params.capacity_units() + 1);
        int64_t elapsed = parse_non_negative_int(f[5]).value_or(0) % (int64_t(1) << 40);
        state.stamp_ms = f[5].size() > 0 && f[5][0] == '0' ? now + elapsed : now - elapsed;
    }

    LimitInput in[2];
    in[0] = {params, cost, has_state ? &state : nullptr};
    in[1] = {BucketParams{1, 1000, 1}, 0, nullptr};  // a second, free limit
    LimitOutcome out[2];
    bool allowed = decide_all(in, out, 2, now);

    int64_t capacity = params.capacity_units();
    CHECK(out[0].level_units <= capacity);
    CHECK(out[0].level_units >= 0);
    CHECK(out[0].reset_ms >= 0);
    CHECK(out[0].retry_after_ms >= 0);
    CHECK(allowed == (out[0].retry_after_ms == 0));
    if (has_state) {
        CHECK(refill(params, state, now) >= state.level_units);
        CHECK(refill(params, state, now) <= capacity);
    }

    LimitReport reports[2] = {make_report(name, params, out[0]),
                              make_report("free", in[1].params, out[1])};
    CHECK(reports[0].remaining >= 0 && reports[0].remaining <= params.burst);
    CHECK(reports[0].limit == params.burst);
    CHECK(allowed ? reports[0].retry_after_seconds == 0 : reports[0].retry_after_seconds >= 1);
    CHECK(reports[0].window_seconds >= 1);
    CHECK(most_restrictive(reports, 2) < 2);
    ietf_policy_value(reports[0]);
    ietf_limit_value(reports[0]);
    return 0;
}
