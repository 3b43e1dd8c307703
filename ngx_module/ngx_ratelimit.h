// Types shared by the nginx glue: configuration, the worker's Redis runtime, and the entry
// points each file provides to the module definition.
#pragma once

#include "ngx_ratelimit_loop.h"
#include "ngx_ratelimit_nginx.h"
#include "ratelimit/batcher.h"
#include "ratelimit/cluster_client.h"
#include "ratelimit/policy.h"
#include "ratelimit/redis_client.h"
#include "ratelimit/redis_config.h"

extern "C" {
extern ngx_module_t ngx_http_ratelimit_module;
}

namespace ngx_ratelimit {

// `ratelimit` lines that may apply to one request (after inheritance): a request's limits
// are decided together, in fixed-size arrays. More makes `nginx -t` fail.
constexpr size_t kMaxLimitsPerRequest = 64;

struct PolicyStats;      // ngx_ratelimit_counters.cpp
struct PolicyOverrides;  // ngx_ratelimit_overrides.cpp
struct Adaptive;         // ngx_ratelimit_adaptive.h

// ratelimit_policy name rate=... burst=...
struct Policy {
    ngx_str_t name;
    ratelimit::Rate rate;
    ratelimit::BucketParams params;
    int64_t lease_ms;    // lease=: 0, none
    PolicyStats* stats;  // its counters in the zone, bound by name; nullptr: not counted
    ngx_str_t adaptive_name;  // adaptive=name, or empty
    Adaptive* adaptive;       // resolved adaptive=name, or nullptr
    PolicyOverrides* overrides;  // its runtime changes in the zone, bound by name, or nullptr
    int64_t delay;       // delay=N, or ratelimit::kNoDelay (ngx_ratelimit_delay.cpp)
};

// $ratelimit_status of a request.
enum class Status : ngx_uint_t {
    none,
    passed,
    rejected,
    rejected_dry_run,
    skipped,
    failed_open,
    failed_closed,
    local_passed,
    local_rejected,
    delayed,           // passed after waiting (delay=)
    delayed_dry_run,   // would have waited; passed at once
};

// One `ratelimit` line.
struct Limit {
    ngx_http_complex_value_t key;
    ngx_http_complex_value_t* policy_value;  // policy=$variable, or nullptr
    ngx_str_t policy_name;                   // policy=name
    Policy* policy;                          // resolved policy=name
    ngx_http_complex_value_t* cost_value;    // cost=$variable, or nullptr
    int64_t cost;
    ngx_str_t file;                          // where it was written (a copy), for late errors
    ngx_uint_t line;
    int64_t delay;                           // delay=N on this line, or kNoDelay: the policy's
};

enum HeaderStyle : ngx_uint_t {
    headers_off = 0,
    headers_x = 1,
    headers_ietf = 2,
    headers_both = 3,
};

enum FailureMode : ngx_uint_t {
    failure_open = 0,
    failure_closed,
    failure_local,
};

struct MainConf {
    ngx_array_t policies;              // of Policy
    ngx_array_t adaptives;             // of Adaptive
    ratelimit::RedisConfig* redis;     // nullptr: local mode
    ngx_addr_t redis_peer;             // the first address, resolved at configuration
    ngx_addr_t* redis_addrs;           // each address (sentinel mode) or the first, likewise
    RedisTls redis_tls;                // `ssl`: its context, made at configuration
    ngx_shm_zone_t* zone;
    ssize_t zone_size;
};

struct LocConf {
    ngx_array_t* limits;               // of Limit; nullptr: none at this level
    ngx_str_t default_policy_name;
    ngx_str_t default_policy_file;     // where it was written, for the merge-time error
    ngx_uint_t default_policy_line;
    Policy* default_policy;
    ngx_uint_t status;
    ngx_uint_t headers;
    ngx_flag_t dry_run;
    ngx_uint_t log_level;
    ngx_uint_t failure_mode;
    ngx_int_t failure_nodes;
    ngx_uint_t api;                    // ratelimit_api: api_off, api_read or api_write
};

enum ApiAccess : ngx_uint_t {
    api_off = 0,
    api_read,
    api_write,
};

Policy* find_policy(MainConf* mcf, const ngx_str_t& name);

// The worker's Redis client and its batcher; nullptr in local mode, in the master, and after
// exit_process.
ratelimit::RedisClient* redis_client();           // standalone and sentinel
const ratelimit::ClusterClient* redis_cluster();  // mode=cluster
ratelimit::CallRouter* redis_router();            // either: routes a key's calls
ratelimit::Batcher* redis_batcher();
ngx_int_t init_worker_redis(ngx_cycle_t* cycle, MainConf* mcf);
// "local", "redis" (one server, or the master of sentinels) or "cluster": logs and the API.
const char* mode_name(const MainConf* mcf);
void exit_worker_redis();

// ngx_ratelimit_handler.cpp
ngx_int_t access_handler(ngx_http_request_t* r) noexcept;

// ngx_ratelimit_filter.cpp
ngx_int_t install_header_filter() noexcept;
ngx_int_t add_variables(ngx_conf_t* cf) noexcept;

// ngx_ratelimit_counters.cpp: node-wide counters and top rejected keys, in the zone.
// One limit of a decided request, as the counters see it.
struct CountedLimit {
    const Policy* policy;
    ngx_str_t key;
    bool lacked_tokens;  // its bucket could not pay: its key is one of the rejected keys
};
// Counts a decided request once per distinct policy under `status`; `decided_on_node`:
// rejected without asking Redis (a subset of the rejected). Takes no lock.
void count_request(const CountedLimit* limits, size_t n, Status status,
                   bool decided_on_node) noexcept;
// One request that waits `wait_ms` (delay=) for `policy`: the delay histogram.
void count_delay(const Policy* policy, int64_t wait_ms) noexcept;
// One script call to Redis that carried `decisions` requests' decisions.
void count_script_call(size_t decisions) noexcept;
// lease= of a policy (nullptr: not counted): a lease call sent, its answer (`granted` tokens
// leased, `returned` tokens given back), a request decided from a lease.
void count_lease_call(PolicyStats* stats) noexcept;
void count_lease_reply(PolicyStats* stats, int64_t granted, int64_t returned) noexcept;
void count_lease_decision(PolicyStats* stats) noexcept;
// Binds every configured policy to its counters in the zone (by name, so that they survive
// reload); runs in the master once the zone is ready.
ngx_int_t bind_counters(ngx_cycle_t* cycle, MainConf* mcf) noexcept;
// The Redis client's statistics hooks for this worker (added to its log hooks), and the
// worker's breaker state taken out of the node's count when it exits.
void observe_redis(ratelimit::ClientObserver& observer);
void forget_worker_redis_state(ratelimit::ClientState state) noexcept;
// ngx_ratelimit_api.cpp: the content handler of a ratelimit_api location.
ngx_int_t api_handler(ngx_http_request_t* r) noexcept;

}  // namespace ngx_ratelimit
