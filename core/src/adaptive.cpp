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


// Factors within a thousandth of each other are one (the limits apply them in per mille).
constexpr double kSameFactor = 0.001;

bool below(double factor, double than)
{
    return factor < than * (1.0 - kSameFactor);
}

bool above(double factor, double than)
{
    return factor > than * (1.0 + kSameFactor);
}


int64_t rounded_div(int64_t num, int64_t den)
{
    return (num + den / 2) / den;
}

double mean_ms(const IntervalCounts& counts)
{
    return counts.requests > 0 ? double(counts.latency_ms) / double(counts.requests) : 0.0;
}


// What the upstream kept up with, as a factor: the one the counts were taken under, scaled by
// the share of admitted requests it answered well.
double kept_up(double measured_under, int64_t good, const IntervalCounts& counts)
{
    return measured_under * double(good) / double(counts.admitted);
}


// About how many requests wait in the upstream's queue: throughput times the mean response
// time (Little's law), or at least what the interval added to it (admitted, not answered:
// the answers of a queue that builds lag behind it).
double queued(int64_t good, const IntervalCounts& counts, const AdaptiveTargets& targets)
{
    return std::max(double(good) * mean_ms(counts) / double(targets.interval_ms),
                    double(counts.admitted - counts.requests));
}


// The factor under which the upstream answers well drain_intervals' worth of its queue more
// than it is sent: it rises back toward what it kept up with as the queue empties.
double draining_factor(double measured_under, int64_t good, const IntervalCounts& counts,
                       const AdaptiveTargets& targets, const AdaptiveConstants& constants)
{
    double wanted = std::max(double(good) - queued(good, counts, targets)
                                                / double(constants.drain_intervals),
                             (1.0 - constants.max_drain) * double(good));
    return measured_under * wanted / double(counts.admitted);
}


// A negative streak marks the coming counts that a cut took effect in (their interval mixes
// two factors and the burst the cut left): bit 0 the next counts to arrive, bit 1 the ones
// after them. A cut marks its own, `late` counts ahead; stale counts before it may refine it.
int64_t marked(const AdaptiveState& state)
{
    return state.streak < 0 ? -state.streak : 0;
}


int64_t mark_cut(int64_t rest, int64_t late)
{
    return -(rest | (int64_t(1) << std::clamp<int64_t>(late, 0, 1)));
}


// The state unchanged, but for the mark of the counts that just arrived.
AdaptiveState held_state(const AdaptiveState& state, int64_t rest)
{
    return AdaptiveState{state.factor, state.factor, -rest, state.ceiling, state.base_ms};
}


// Counts taken under a higher factor than the one in force come from before the last cut.
bool from_before_a_cut(const AdaptiveState& state, double measured_under)
{
    return above(measured_under, state.factor);
}


// `next` with its factor at `target`; a cut deep enough marks its own window.
AdaptiveState lowered(AdaptiveState next, const AdaptiveState& state, double target,
                      int64_t rest, int64_t late, const AdaptiveTargets& targets,
                      const AdaptiveConstants& constants)
{
    next.factor = bounded(target, targets);
    if (next.factor < constants.big_cut * state.factor) {
        next.streak = mark_cut(rest, late);  // its own window mixes two factors and a burst
    }
    return next;
}


// Past a target: slow answers measure the upstream's capacity and set the factor that drains
// its queue; errors alone cut in proportion.
AdaptiveState cut_back(const AdaptiveState& state, double measured_under, double over,
                       int64_t good, const IntervalCounts& counts, const AdaptiveTargets& targets,
                       int64_t rest, int64_t late, const AdaptiveConstants& constants)
{
    AdaptiveState next = held_state(state, rest);
    double target = std::min(state.factor,
                             measured_under * (1.0 - std::min(constants.max_cut,
                                                              constants.decrease_gain * over)));
    if (share(counts.slow, counts.requests) > constants.slow_share && counts.admitted > 0) {
        // A slow upstream is busy all the time: what it answered well (its errors are left
        // out) is its capacity. Admit so much less that its queue drains in drain_intervals:
        // as it drains, the factor rises back toward that capacity.
        target = draining_factor(measured_under, good, counts, targets, constants);
        if (good >= constants.min_samples) {  // a handful of good answers measure nothing
            next.ceiling = std::min(1.0, kept_up(measured_under, good, counts));
        }
    }
    if (from_before_a_cut(state, measured_under)) {
        target = std::min(target, state.factor);  // they only refine it
    }
    return lowered(next, state, target, rest, late, targets, constants);
}


// Where a healthy upstream's factor settles: just below the capacity estimate.
double home_of(double ceiling, const AdaptiveConstants& constants)
{
    return ceiling >= 1.0 ? 1.0 : constants.home * ceiling;
}


// A queue is starting (answers slower than at home, or warm): a probe above home goes back
// home; at home, the estimate was too high and comes down to what was admitted (not on counts
// from before a cut, nor on those of the interval it took effect in).
AdaptiveState queue_starting(AdaptiveState next, const AdaptiveState& state,
                             double measured_under, bool cut_taking_effect, int64_t rest,
                             int64_t late, const AdaptiveTargets& targets,
                             const AdaptiveConstants& constants)
{
    double home = home_of(state.ceiling, constants);
    bool at_home = !below(state.factor, home) && !above(state.factor, home);
    next.streak = -rest;
    if (at_home && state.ceiling < 1.0 && !cut_taking_effect
        && !from_before_a_cut(state, measured_under)) {
        next.ceiling = std::min(state.ceiling, measured_under);
        home = home_of(next.ceiling, constants);
    }
    if (above(state.factor, home)) {
        next.factor = bounded(home, targets);
        next.streak = mark_cut(rest, late);
    }
    return next;
}


// A climb that ends as good as at 1 lands on it (at 0.9994 a factor would count as home,
// and sit below the full limit until a probe).
double landed(double factor)
{
    return below(factor, 1.0) ? factor : 1.0;
}


// Healthy: climb home fast; at home, probe above it slowly, or climb on if the upstream
// answers much faster than it did there (it has room now).
AdaptiveState increased(const AdaptiveState& state, double measured_under,
                        const IntervalCounts& counts, const AdaptiveTargets& targets,
                        int64_t rest, bool cut_taking_effect, int64_t late,
                        const AdaptiveConstants& constants)
{
    AdaptiveState next{state.factor, state.factor, std::max<int64_t>(0, state.streak) + 1,
                       state.ceiling, state.base_ms};
    double mean = mean_ms(counts);
    if (state.ceiling < 1.0 && state.base_ms > 0.0 && mean < constants.faster * state.base_ms) {
        next.ceiling = 1.0;
    }
    double home = home_of(next.ceiling, constants);
    if (below(state.factor, home) && next.ceiling < 1.0) {
        next.factor = bounded(home, targets);  // the estimate was measured: straight to it
        return next;
    }
    if (next.ceiling >= 1.0 && state.factor < 1.0) {  // no estimate: climb to the full limit
        double step = std::min(constants.max_step,
                               constants.climb_step
                                   * std::ldexp(1.0, int(std::min<int64_t>(next.streak - 1, 16))));
        double climbed = std::min(1.0, state.factor + constants.add_step + state.factor * step);
        next.factor = bounded(landed(climbed), targets);
        return next;
    }
    if (state.ceiling < 1.0 && state.base_ms > 0.0 && mean > constants.slower * state.base_ms) {
        return queue_starting(next, state, measured_under, cut_taking_effect, rest, late,
                              targets, constants);
    }
    if (mean > 0.0 && next.streak >= constants.settled) {  // once a drained queue is gone
        // The least mean seen, forgotten slowly (an upstream that got slower for good).
        next.base_ms = state.base_ms > 0.0 ? std::min(state.base_ms * constants.base_drift, mean)
                                           : mean;
    }
    if (measured_under > home) {
        next.ceiling = std::min(1.0, measured_under / constants.home);  // a probe held up
    }
    if (next.streak > constants.probe_after && !below(measured_under, state.factor)) {
        next.factor = bounded(state.factor * (1.0 + constants.probe_step), targets);
    }
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
                         int64_t late, const AdaptiveConstants& constants)
{
    if (counts.requests < constants.min_samples) {
        return state;  // an idle or app-limited upstream teaches nothing
    }
    bool cut_taking_effect = (marked(state) & 1) != 0;
    int64_t rest = marked(state) >> 1;
    AdaptiveState held = held_state(state, rest);
    double over = overload(counts, targets, constants);
    int64_t good = counts.requests - std::clamp<int64_t>(counts.errors, 0, counts.requests);
    // The tolerance of comparing admitted with answered: a share, or the counting noise of a
    // small sample (one standard deviation of a Poisson count).
    double slack = std::max(constants.behind * double(good), std::sqrt(double(good)));
    if (over > 0.0) {
        if (cut_taking_effect) {
            return held;  // the cut's own window
        }
        return cut_back(state, measured_under, over, good, counts, targets, rest, late,
                        constants);
    }
    // Behind: more admitted than answered well, past the tolerance.
    if (double(counts.admitted) > double(good) + slack && !cut_taking_effect) {
        double target = draining_factor(measured_under, good, counts, targets, constants);
        held.ceiling = std::min(1.0, kept_up(measured_under, good, counts));
        return lowered(held, state, std::min(state.factor, target), rest, late, targets,
                       constants);
    }
    if (share(counts.warm, counts.requests) > constants.slow_share) {
        return queue_starting(held, state, measured_under, cut_taking_effect, rest, late,
                              targets, constants);
    }
    return increased(state, measured_under, counts, targets, rest, cut_taking_effect, late,
                     constants);
}


AdaptiveState decayed_state(const AdaptiveState& state, const AdaptiveConstants& constants)
{
    double factor = std::min(1.0, state.factor + constants.decay_step);
    return AdaptiveState{factor, state.factor, 0, 1.0, 0.0};
}


std::string format_state(const AdaptiveState& state)
{
    char text[96];
    std::snprintf(text, sizeof(text), "%lld %lld %lld %lld %lld",
                  static_cast<long long>(std::llround(state.factor * 1e6)),
                  static_cast<long long>(std::llround(state.earlier * 1e6)),
                  static_cast<long long>(state.streak),
                  static_cast<long long>(std::llround(state.ceiling * 1e6)),
                  static_cast<long long>(std::llround(state.base_ms * 1e3)));
    return text;
}


std::optional<AdaptiveState> parse_state(std::string_view text)
{
    constexpr size_t kFields = 5;
    int64_t fields[kFields];
    for (size_t i = 0; i < kFields; i++) {
        size_t space = text.find(' ');
        bool last = i == kFields - 1;
        if ((space == std::string_view::npos) != last) {
            return std::nullopt;
        }
        std::string_view field = text.substr(0, space);
        bool negative = i == 2 && field.size() > 1 && field[0] == '-';  // the streak only
        auto value = parse_non_negative_int(negative ? field.substr(1) : field);
        if (!value) {
            return std::nullopt;
        }
        fields[i] = negative ? -*value : *value;
        text = last ? std::string_view() : text.substr(space + 1);
    }
    for (size_t i : {0, 1, 3}) {
        if (fields[i] == 0 || fields[i] > 1000000) {
            return std::nullopt;
        }
    }
    if (fields[2] < -3) {
        return std::nullopt;
    }
    return AdaptiveState{double(fields[0]) / 1e6, double(fields[1]) / 1e6, fields[2],
                         double(fields[3]) / 1e6, double(fields[4]) / 1e3};
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
    std::string counts[6] = {std::to_string(node.requests), std::to_string(node.errors),
                             std::to_string(node.slow),     std::to_string(node.warm),
                             std::to_string(node.admitted), std::to_string(node.latency_ms)};
    std::string proposed = mine ? std::to_string(mine->interval) : std::string();
    std::string state = mine ? format_state(mine->state) : std::string();
    return format_command({"EVAL", adaptive_script(), "1", key, interval, counts[0], counts[1],
                           counts[2], counts[3], counts[4], counts[5], proposed, state});
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
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 8) {
        error = "unexpected reply to the adaptive script";
        return false;
    }
    int64_t values[8] = {};
    for (size_t i : {0, 2, 3, 4, 5, 6, 7}) {
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
    out.totals = IntervalCounts{values[2], values[3], values[4], values[5], values[6], values[7]};
    return true;
}

}  // namespace ratelimit
