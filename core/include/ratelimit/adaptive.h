// The adaptive controller (ratelimit_adaptive): what one interval of upstream answers says
// about the factor that scales the rate and burst of the policies naming it. Pure value
// types and functions: the nginx glue counts, elects, talks to Redis and applies the result.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ratelimit/policy.h"

struct redisReply;

namespace ratelimit {

// ratelimit_adaptive name latency= errors= min= interval=
struct AdaptiveTargets {
    int64_t latency_ms = 500;      // a request slower than this is slow
    double error_share = 0.05;     // errors=
    double min_factor = 0.10;      // min=
    int64_t interval_ms = 1000;    // interval=
};

// The law's inner constants (README, "Adapting to the upstream").
struct AdaptiveConstants {
    double slow_share = 0.10;      // latency= is a p90 target: 10 % of requests may be slower
    int64_t min_samples = 10;      // fewer answers in an interval change nothing
    double decrease_gain = 1.0;    // errors: cut = gain * how far past the target (0..1),
    double max_cut = 0.5;          //   at most halves per interval
    int64_t drain_intervals = 4;   // slow: admit so much less than the upstream answers that
                                   //   its queue (answers x mean response time) drains in this,
    double max_drain = 0.4;        //   at most this share less (enough answers to see it recover)
    double big_cut = 0.9;          // a cut below this share of the factor skips its own window
    double behind = 0.05;          // more admitted than answered well by this share (or by
                                   //   sqrt(answered), when more): behind
    double home = 0.95;            // the factor climbs to this share of the capacity estimate
    double climb_step = 0.10;      // relative increase below it after one healthy interval,
    double max_step = 0.25;        //   doubling per healthy interval up to this
    double add_step = 0.01;        // plus this much of the full limit
    int64_t probe_after = 10;      // healthy intervals at home before probing above it,
    double probe_step = 0.03;      //   by this much, once the last probe's counts came back
    double faster = 0.33;          // answers in this share of the least mean time they took at
                                   //   home: the upstream has room, the estimate is forgotten;
    double slower = 1.5;           //   in this multiple: a queue starts, a probe goes back home;
    int64_t settled = 3;           //   that time is learnt from this many healthy intervals on,
    double base_drift = 1.05;      //   and may rise by this factor per interval
    double decay_step = 0.25;      // no data (Redis unreachable): back toward 1 by this
};

// Counts of one interval, summed over workers (and nodes). `admitted`: requests let through
// to the upstream; the others count answers: all of them, the failed ones, those slower than
// the latency target, those slower than half of it (a queue is building), and the sum of
// their response times.
struct IntervalCounts {
    int64_t requests = 0;
    int64_t errors = 0;
    int64_t slow = 0;
    int64_t warm = 0;
    int64_t admitted = 0;
    int64_t latency_ms = 0;
};

// The controller's state; the same inputs give the same state on every node.
struct AdaptiveState {
    double factor = 1.0;           // in force now, in [min, 1]
    double earlier = 1.0;          // the factor before it
    int64_t streak = 0;            // healthy intervals in a row; below 0, -(bits): bit 0 marks
                                   //   the next counts to arrive as from an interval a cut took
                                   //   effect in, bit 1 the ones after them
    double ceiling = 1.0;          // the upstream's capacity estimate, as a factor
    double base_ms = 0.0;          // the least mean response time seen at home (0: none yet)
};

// How far the interval is past its targets: 0 (within them) to 1 (every request slow or
// failed). The larger of the slow and the error share's excess, each relative to the room
// its target leaves.
double overload(const IntervalCounts& counts, const AdaptiveTargets& targets,
                const AdaptiveConstants& constants = {});

// One step of the control law. `measured_under` is the factor that was in force while
// `counts` were collected, `late` how many intervals late they arrive (1 in a fleet, which
// reads an interval's totals once every node has added its counts; 0 on a node alone).
// - fewer than min_samples answers: nothing changes;
// - the counts of the interval a cut took effect in (they mix two factors and the burst the
//   cut left) cut nothing; counts taken before the last cut can lower it further, not raise it;
// - slow share past its target: the upstream is busy all the time, so what it answered well
//   is its capacity (measured_under * good / admitted: the estimate); the factor goes to what
//   admits good - queued / drain_intervals per interval (queued: good * mean response time /
//   interval, or at least admitted - answered), at least half of good: it rises back toward
//   the estimate as the queue drains;
// - error share past its target (and not slow): cut by min(max_cut, gain * overload);
// - within the targets but behind (admitted > good + max(behind * good, sqrt(good))): down
//   to what it kept up with, the new estimate;
// - a queue building (warm share above the slow target): hold; a probe goes back home; at
//   home the estimate comes down to what was admitted;
// - healthy: below home (home * estimate) straight to it; with no estimate climb to 1 by
//   add_step + factor * step, step doubling from climb_step up to max_step; at home, after
//   probe_after healthy intervals, probe by probe_step each time the last probe's counts came
//   back healthy (they raise the estimate); answers in `faster` of the least mean time seen at
//   home forget the estimate (the upstream has room: climb to 1), answers in `slower` times it
//   act as a queue building.
// Always within [min_factor, 1].
AdaptiveState next_state(const AdaptiveState& state, double measured_under,
                         const IntervalCounts& counts, const AdaptiveTargets& targets,
                         int64_t late = 1, const AdaptiveConstants& constants = {});

// An interval without data (Redis unreachable): the factor goes back toward 1.
AdaptiveState decayed_state(const AdaptiveState& state, const AdaptiveConstants& constants = {});

// The state as stored in Redis: "<factor> <earlier> <streak> <ceiling> <base_us>" (factors
// in millionths, the streak signed); nullopt on anything else.
std::string format_state(const AdaptiveState& state);
std::optional<AdaptiveState> parse_state(std::string_view text);

// A factor as the limits apply it: in thousandths, 1..1000.
int64_t factor_permille(double factor);

// `params` scaled by `factor` (rate and burst). 1 gives `params` unchanged; otherwise the
// rate is counted per day (an exact, fine-grained rate; levels convert between periods with
// tokens kept), or per its own period when that would not be exact. Burst at least 1.
BucketParams scaled_params(const BucketParams& params, double factor);

// Parses "5%" or "12.5%" as a fraction (0.05, 0.125); nullopt on junk or outside [0, 100].
std::optional<double> parse_percent(std::string_view text);
// Empty when the targets make sense, else why not ("errors=100% leaves no room" ...).
std::string check_targets(const AdaptiveTargets& targets);

// The fleet's side (core/lua/adaptive.lua): one call per node per interval adds the node's
// counts under `key` (adaptive_key) and returns the fleet's previous interval.
const std::string& adaptive_script();
std::string adaptive_key(std::string_view prefix, std::string_view controller);

struct Proposal {
    int64_t interval = 0;    // the interval it was computed in
    AdaptiveState state;
};
std::string adaptive_command(std::string_view key, int64_t interval_ms,
                             const IntervalCounts& node, const std::optional<Proposal>& mine);

struct FleetInterval {
    int64_t interval = 0;                  // now, by Redis time
    std::optional<AdaptiveState> state;    // the fleet's state of the previous interval
    IntervalCounts totals;                 // the fleet's counts of the previous interval
};
// False (and `error`) on an error reply or one of the wrong shape.
bool parse_fleet_interval(const redisReply* reply, FleetInterval& out, std::string& error);

}  // namespace ratelimit
