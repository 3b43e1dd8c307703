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
    double decrease_gain = 1.0;    // cut = gain * how far past the target (0..1)
    double max_cut = 0.5;          // at most halves per interval
    double behind = 0.05;          // more admitted than answered well by this share (or
                                   //   by sqrt(answered), when more): behind
    double first_step = 0.03;      // relative increase after one healthy interval,
    double max_step = 0.25;        //   doubling per healthy interval up to this
    double add_step = 0.01;        // plus this much of the full limit
    double drain = 0.3;            // a cut goes this share of itself below what the upstream
                                   //   kept up with, so that its queue drains
    double near_ceiling = 0.9;     // from this share of the last estimate of the upstream's
                                   //   capacity, increase by first_step only,
    int64_t ceiling_intervals = 3; //   for this many healthy intervals
    double decay_step = 0.25;      // no data (Redis unreachable): back toward 1 by this
};

// Counts of one interval, summed over workers (and nodes). `admitted`: requests let through
// to the upstream; the others count answers: all of them, the failed ones, those slower than
// the latency target, and those slower than half of it (a queue is building).
struct IntervalCounts {
    int64_t requests = 0;
    int64_t errors = 0;
    int64_t slow = 0;
    int64_t warm = 0;
    int64_t admitted = 0;
};

// The controller's state; the same inputs give the same state on every node.
struct AdaptiveState {
    double factor = 1.0;           // in force now, in [min, 1]
    double earlier = 1.0;          // the factor before it
    int64_t streak = 0;            // healthy intervals in a row
    double ceiling = 1.0;          // the factor the upstream kept up with when last overloaded
};

// How far the interval is past its targets: 0 (within them) to 1 (every request slow or
// failed). The larger of the slow and the error share's excess, each relative to the room
// its target leaves.
double overload(const IntervalCounts& counts, const AdaptiveTargets& targets,
                const AdaptiveConstants& constants = {});

// One step of the control law. `measured_under` is the factor that was in force while
// `counts` were collected (the fleet sees them one interval late): a cut starts from it, so
// a cut already made is not made again on stale data.
// - fewer than min_samples requests: nothing changes;
// - past a target, errors within theirs, and more good answers than admitted requests (the
//   upstream's queue drains: the cut already made works): hold;
// - past a target otherwise: multiplicative decrease from the factor the counts were taken
//   under, cut = min(max_cut, decrease_gain * overload), and no higher than what the upstream
//   kept up with (measured_under * good answers / admitted) less drain * cut, so that its
//   queue drains; when slow, that capacity estimate becomes the ceiling;
// - within the targets but behind (more admitted than answered well, by more than `behind`
//   or sqrt(answered)): down to what was answered, a new ceiling;
// - a queue building (warm share above the slow target) but within targets: hold;
// - healthy: increase by add_step + factor * step, step doubling from first_step each
//   healthy interval in a row up to max_step; near the ceiling (near_ceiling of it) by
//   first_step only, for ceiling_intervals, then the ceiling is forgotten (capacity came
//   back) and the step doubles again from first_step;
// always within [min_factor, 1].
AdaptiveState next_state(const AdaptiveState& state, double measured_under,
                         const IntervalCounts& counts, const AdaptiveTargets& targets,
                         const AdaptiveConstants& constants = {});

// An interval without data (Redis unreachable): the factor goes back toward 1.
AdaptiveState decayed_state(const AdaptiveState& state, const AdaptiveConstants& constants = {});

// The state as stored in Redis: "<factor> <earlier> <streak> <ceiling>" (factors in
// millionths); nullopt on anything else.
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
