#include "ratelimit/adaptive.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <hiredis/hiredis.h>

#include "ratelimit/embed.h"
#include "ratelimit/resp.h"

RATELIMIT_EMBED(adaptive_lua, "core/lua/adaptive.lua")

namespace ratelimit {
namespace {

constexpr int64_t kDayMs = 86400000;
constexpr int64_t kExactLimit = int64_t(1) << 53;

double share(int64_t part, int64_t whole)
{
    return double(std::clamp<int64_t>(part, 0, whole)) / double(whole);
}


// How far `observed` is past `target`, relative to the room above the target: 0..1.
double excess(double observed, double target)
{
    if (observed <= target || target >= 1.0) {
        return 0.0;
    }
    return std::min(1.0, (observed - target) / (1.0 - target));
}


double bounded(double factor, const AdaptiveTargets& targets)
{
    return std::clamp(factor, targets.min_factor, 1.0);
}


int64_t rounded_div(int64_t num, int64_t den)
{
    return (num + den / 2) / den;
}

// Past a target: multiplicative decrease from the factor the counts were taken under.
AdaptiveState cut_back(AdaptiveState next, double measured_under, double over, int64_t good,
                       const IntervalCounts& counts, const AdaptiveTargets& targets,
                       const AdaptiveConstants& constants)
{
    double cut = std::min(constants.max_cut, constants.decrease_gain * over);
    double target = measured_under * (1.0 - cut);
    if (counts.admitted > good) {
        // The upstream fell behind: down to what it kept up with, less a share of the cut so
        // that its queue drains; when it was slow, that is its capacity (the ceiling).
        double kept_up = measured_under * double(good) / double(counts.admitted);
        target = kept_up * (1.0 - constants.drain * cut);
        if (share(counts.slow, counts.requests) > constants.slow_share) {
            next.ceiling = std::max(target, std::min(1.0, kept_up));
        }
    }
    next.factor = bounded(std::min(next.factor, target), targets);
    return next;
}


// Healthy: additive plus a relative step that doubles each healthy interval in a row; near
// the ceiling the smallest step only, and only for a while.
AdaptiveState increased(const AdaptiveState& state, const AdaptiveTargets& targets,
                        const AdaptiveConstants& constants)
{
    AdaptiveState next{state.factor, state.factor, state.streak + 1, state.ceiling};
    if (state.ceiling < 1.0 && state.factor >= constants.near_ceiling * state.ceiling) {
        bool entering = state.earlier < constants.near_ceiling * state.ceiling;
        next.streak = entering ? 1 : state.streak + 1;
        if (next.streak >= constants.ceiling_intervals) {
            next.ceiling = 1.0;  // capacity came back: climb, doubling again from the start
            next.streak = 0;
        }
        next.factor = bounded(state.factor * (1.0 + constants.first_step), targets);
        return next;
    }
    double step = std::min(constants.max_step,
                           constants.first_step * std::ldexp(1.0, int(std::min<int64_t>(
                                                                 state.streak, 16))));
    next.factor = bounded(state.factor + constants.add_step + state.factor * step, targets);
    return next;
}

}  // namespace


double overload(const IntervalCounts& counts, const AdaptiveTargets& targets,
                const AdaptiveConstants& constants)
{
    if (counts.requests <= 0) {
        return 0.0;
    }
    return std::max(excess(share(counts.slow, counts.requests), constants.slow_share),
                    excess(share(counts.errors, counts.requests), targets.error_share));
}


AdaptiveState next_state(const AdaptiveState& state, double measured_under,
                         const IntervalCounts& counts, const AdaptiveTargets& targets,
                         const AdaptiveConstants& constants)
{
    if (counts.requests < constants.min_samples) {
        return state;  // an idle or app-limited upstream teaches nothing
    }
    AdaptiveState held{state.factor, state.factor, 0, state.ceiling};
    double over = overload(counts, targets, constants);
    int64_t good = counts.requests - std::clamp<int64_t>(counts.errors, 0, counts.requests);
    if (over > 0.0) {
        bool errors_within = share(counts.errors, counts.requests) <= targets.error_share;
        if (errors_within && good >= counts.admitted) {
            return held;  // the upstream's queue drains: the cut already made works
        }
        return cut_back(held, measured_under, over, good, counts, targets, constants);
    }
    // Behind: more admitted than answered well, past the tolerance and past the counting
    // noise of a small sample (one standard deviation of a Poisson count).
    double slack = std::max(constants.behind * double(good), std::sqrt(double(good)));
    if (double(counts.admitted) > double(good) + slack) {
        double kept_up = measured_under * double(good) / double(counts.admitted);
        held.factor = bounded(std::min(state.factor, kept_up), targets);
        held.ceiling = std::max(held.factor, std::min(1.0, kept_up));
        return held;
    }
    if (share(counts.warm, counts.requests) > constants.slow_share) {
        return held;  // a queue is building
    }
    return increased(state, targets, constants);
}


AdaptiveState decayed_state(const AdaptiveState& state, const AdaptiveConstants& constants)
{
    double factor = std::min(1.0, state.factor + constants.decay_step);
    return AdaptiveState{factor, state.factor, 0, 1.0};
}


std::string format_state(const AdaptiveState& state)
{
    char text[64];
    std::snprintf(text, sizeof(text), "%lld %lld %lld %lld",
                  static_cast<long long>(std::llround(state.factor * 1e6)),
                  static_cast<long long>(std::llround(state.earlier * 1e6)),
                  static_cast<long long>(state.streak),
                  static_cast<long long>(std::llround(state.ceiling * 1e6)));
    return text;
}


std::optional<AdaptiveState> parse_state(std::string_view text)
{
    int64_t fields[4];
    for (size_t i = 0; i < 4; i++) {
        size_t space = text.find(' ');
        if ((space == std::string_view::npos) != (i == 3)) {
            return std::nullopt;
        }
        auto value = parse_non_negative_int(text.substr(0, space));
        if (!value) {
            return std::nullopt;
        }
        fields[i] = *value;
        text = i == 3 ? std::string_view() : text.substr(space + 1);
    }
    for (size_t i : {0, 1, 3}) {
        if (fields[i] == 0 || fields[i] > 1000000) {
            return std::nullopt;
        }
    }
    return AdaptiveState{double(fields[0]) / 1e6, double(fields[1]) / 1e6, fields[2],
                         double(fields[3]) / 1e6};
}


int64_t factor_permille(double factor)
{
    if (!(factor > 0.0)) {
        return 1;
    }
    return std::clamp<int64_t>(std::llround(factor * 1000.0), 1, 1000);
}


BucketParams scaled_params(const BucketParams& params, double factor)
{
    int64_t permille = factor_permille(factor);
    if (permille == 1000) {
        return params;
    }
    int64_t burst = std::max<int64_t>(1, rounded_div(params.burst * permille, 1000));
    // Exact per day when count and capacity stay below 2^53 units (check_bucket's bound).
    constexpr int64_t kMaxPerDay = (kExactLimit - 1) / kDayMs;
    if (params.period_ms > 0 && kDayMs % params.period_ms == 0 && burst <= kMaxPerDay) {
        int64_t per_day = params.count * (kDayMs / params.period_ms);
        int64_t scaled = std::max<int64_t>(1, rounded_div(per_day * permille, 1000));
        if (per_day < kExactLimit / 1000 && scaled <= kMaxPerDay) {
            return BucketParams{scaled, kDayMs, burst};
        }
    }
    return BucketParams{std::max<int64_t>(1, rounded_div(params.count * permille, 1000)),
                        params.period_ms, burst};
}


std::optional<double> parse_percent(std::string_view text)
{
    if (text.size() < 2 || text.back() != '%') {
        return std::nullopt;
    }
    text.remove_suffix(1);
    size_t dot = text.find('.');
    auto whole = parse_non_negative_int(text.substr(0, dot));
    if (!whole) {
        return std::nullopt;
    }
    double value = double(*whole);
    if (dot != std::string_view::npos) {
        std::string_view decimals = text.substr(dot + 1);
        auto digits = parse_non_negative_int(decimals);
        if (!digits || decimals.size() > 6) {
            return std::nullopt;
        }
        value += double(*digits) / std::pow(10.0, double(decimals.size()));
    }
    if (value > 100.0) {
        return std::nullopt;
    }
    return value / 100.0;
}


std::string check_targets(const AdaptiveTargets& targets)
{
    if (targets.latency_ms <= 0) {
        return "latency must be positive";
    }
    if (targets.error_share < 0.0 || targets.error_share >= 1.0) {
        return "errors must be below 100%";
    }
    if (targets.min_factor <= 0.0 || targets.min_factor > 1.0) {
        return "min must be above 0% and at most 100%";
    }
    if (targets.interval_ms < 100) {
        return "interval must be at least 100ms";
    }
    return {};
}


const std::string& adaptive_script()
{
    static const std::string source(adaptive_lua());
    return source;
}


std::string adaptive_key(std::string_view prefix, std::string_view controller)
{
    std::string key(prefix);
    key += "adaptive:{";
    key += controller;
    key += '}';
    return key;
}


std::string adaptive_command(std::string_view key, int64_t interval_ms,
                             const IntervalCounts& node, const std::optional<Proposal>& mine)
{
    std::string interval = std::to_string(interval_ms);
    std::string counts[5] = {std::to_string(node.requests), std::to_string(node.errors),
                             std::to_string(node.slow), std::to_string(node.warm),
                             std::to_string(node.admitted)};
    std::string proposed = mine ? std::to_string(mine->interval) : std::string();
    std::string state = mine ? format_state(mine->state) : std::string();
    return format_command({"EVAL", adaptive_script(), "1", key, interval, counts[0], counts[1],
                           counts[2], counts[3], counts[4], proposed, state});
}


bool parse_fleet_interval(const redisReply* reply, FleetInterval& out, std::string& error)
{
    if (reply == nullptr) {
        error = "no reply";
        return false;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        error.assign(reply->str, reply->len);
        return false;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 7) {
        error = "unexpected reply to the adaptive script";
        return false;
    }
    int64_t values[7] = {};
    for (size_t i : {0, 2, 3, 4, 5, 6}) {
        const redisReply* e = reply->element[i];
        if (e->type != REDIS_REPLY_INTEGER || e->integer < 0) {
            error = "unexpected reply to the adaptive script";
            return false;
        }
        values[i] = e->integer;
    }
    const redisReply* state = reply->element[1];
    out.interval = values[0];
    out.state.reset();
    if (state->type == REDIS_REPLY_STRING) {
        out.state = parse_state(std::string_view(state->str, state->len));
    }
    out.totals = IntervalCounts{values[2], values[3], values[4], values[5], values[6]};
    return true;
}

}  // namespace ratelimit
