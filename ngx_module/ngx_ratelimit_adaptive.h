// Adaptive controllers (ratelimit_adaptive): fed by the answers of requests decided under a
// policy naming them, each interval they give a factor that scales those policies' rate and
// burst. Counts add up in the zone; in Redis mode one worker per node adds the node's counts
// to Redis and computes the fleet's factor (core: ratelimit/adaptive.h).
#pragma once

#include <string>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_request.h"
#include "ratelimit/adaptive.h"

namespace ngx_ratelimit {

struct AdaptiveShared;  // in the zone, found by name

// ratelimit_adaptive name latency= errors= min= interval=
struct Adaptive {
    ngx_str_t name;
    ratelimit::AdaptiveTargets targets;
    AdaptiveShared* shared;  // nullptr: no room in the zone (the factor stays 1)
    ngx_event_t* timer;      // this worker's, each interval
};

char* set_adaptive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// ratelimit_policy's adaptive=name: resolved once the http block is read (a controller may be
// declared after the policy). False after logging what is wrong.
bool resolve_adaptive(ngx_conf_t* cf, MainConf* mcf);
// Binds each controller to its state in the zone, by name (in the master, as bind_counters).
ngx_int_t bind_adaptive(ngx_cycle_t* cycle, MainConf* mcf) noexcept;
ngx_int_t init_worker_adaptive(ngx_cycle_t* cycle, MainConf* mcf) noexcept;
ngx_int_t install_adaptive_log_handler(ngx_conf_t* cf) noexcept;

// `params` (the policy's, or a runtime override's) scaled by the policy's controller's factor.
ratelimit::BucketParams adapted(const Policy& policy, const ratelimit::BucketParams& params) noexcept;
// The policy's bucket as it applies now: its params scaled by its controller's factor.
ratelimit::BucketParams params_in_force(const Policy& policy) noexcept;
double policy_factor(const Policy& policy) noexcept;
// A decided request that goes on to the upstream counts as admitted for its controllers.
void count_admitted(const RequestCtx* ctx) noexcept;

// The API: `adaptive` in status (a JSON array), and the metrics.
void append_adaptive_status(std::string& out, MainConf* mcf);
void append_adaptive_metrics(std::string& out, MainConf* mcf);

}  // namespace ngx_ratelimit
