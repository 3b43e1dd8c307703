// Node-wide counters and top rejected keys, in the module's zone: plain data and atomics,
// shared by every worker, kept across reload (policies are found again by name).
#pragma once

#include <string>
#include <vector>

#include "ngx_ratelimit.h"
#include "ratelimit/key.h"

namespace ngx_ratelimit {

constexpr size_t kStatuses = size_t(Status::delayed_dry_run) + 1;
// Upper bounds of the Redis round-trip histogram, in milliseconds; +Inf follows.
constexpr int64_t kLatencyBoundsMs[] = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000};
constexpr size_t kLatencyBuckets = sizeof(kLatencyBoundsMs) / sizeof(kLatencyBoundsMs[0]) + 1;
// Upper bounds of the delay= wait histogram, in milliseconds; +Inf follows.
constexpr int64_t kDelayBoundsMs[] = {10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
                                      60000};
constexpr size_t kDelayBuckets = sizeof(kDelayBoundsMs) / sizeof(kDelayBoundsMs[0]) + 1;

// Top rejected keys: a Space-Saving sketch per minute over the last kTopSlots minutes,
// updated under a short spin lock that skips only a preempted holder.
constexpr size_t kTopSlots = 5;
constexpr size_t kTopEntries = 24;
constexpr size_t kTopShown = 10;

struct TopEntry {
    uint32_t count;
    uint16_t len;
    u_char key[ratelimit::kMaxKeyBytes];  // ratelimit::key_id(): as it names the bucket
};

struct TopSlot {
    int64_t minute;  // ngx_time() / 60 of its entries
    uint32_t used;
    TopEntry entries[kTopEntries];
};

struct TopKeys {
    ngx_atomic_t lock;  // 0, or the pid of the holder
    TopSlot slots[kTopSlots];
};

// lease= (ngx_ratelimit_lease.cpp): what the node's leases of a policy's keys did.
struct LeaseStats {
    ngx_atomic_t calls;      // lease script calls sent (takes and give-backs)
    ngx_atomic_t granted;    // leases Redis granted
    ngx_atomic_t tokens;     // tokens those leases took from the buckets
    ngx_atomic_t returned;   // unused tokens given back (calls Redis answered)
    ngx_atomic_t decisions;  // requests decided from a lease, without Redis
};

struct PolicyStats {
    PolicyStats* next;                  // every policy the zone has counted, by name
    ngx_atomic_t by_status[kStatuses];  // requests, by $ratelimit_status
    ngx_atomic_t rejected_on_node;      // rejected without a Redis call
    TopKeys* top;                       // nullptr: no room left in the zone
    ngx_atomic_t delay_buckets[kDelayBuckets];  // waits (delay=), not cumulative
    ngx_atomic_t delay_sum_ms;
    LeaseStats lease;
    size_t name_len;
    u_char name[1];
};

struct NodeStats {
    ngx_atomic_t calls;             // Redis calls sent
    ngx_atomic_t error_replies;     // error replies (NOSCRIPT excepted)
    ngx_atomic_t disconnects;       // calls failed because their connection failed
    ngx_atomic_t timeouts;          // calls whose timeout expired
    ngx_atomic_t reconnects;        // connections opened again (probes included)
    ngx_atomic_t in_flight;         // calls sent and not yet ended (a signed difference)
    ngx_atomic_t breaker_opened;    // transitions to down
    ngx_atomic_t breaker_closed;    // transitions from down to up
    ngx_atomic_t workers_down;      // workers whose breaker is open now
    ngx_atomic_t script_calls;
    ngx_atomic_t script_decisions;  // requests decided by those calls
    ngx_atomic_t latency_buckets[kLatencyBuckets];  // not cumulative
    ngx_atomic_t latency_sum_ms;
    ngx_atomic_t latency_count;
    ngx_atomic_t last_latency_ms;
};

struct AdaptiveShared;  // ngx_ratelimit_adaptive.cpp

struct ApiShared {
    NodeStats node;
    PolicyStats* policies;
    AdaptiveShared* adaptives;  // every controller the zone has known, by name
};

// Allocates the zone's counters; called by init_zone when the zone is new.
ApiShared* create_api_shared(ngx_slab_pool_t* shpool);

// The node's counters (nullptr before bind_counters).
const NodeStats* node_stats();

struct TopKey {
    std::string key;  // bytes as the bucket is named
    uint64_t count;
};
// The most rejected keys of the last kTopSlots minutes, most first, at most kTopShown.
std::vector<TopKey> top_keys(const PolicyStats* stats);

int64_t read_counter(const ngx_atomic_t& counter);

}  // namespace ngx_ratelimit
