// The node's token leases (lease= on a policy; the maths is the core's, ratelimit/lease.h):
// a table in the zone, shared by the node's workers, of the keys this node sees often, each
// with at most one lease. A request whose every limit holds a lease with its cost is decided
// from the leases, without Redis; the others go to Redis as before, and a hot key without a
// usable lease gets one in a call of its own, beside the decision. Leases end after `lease`
// time; a worker's sweep gives back what is left of them.
#pragma once

#include <string_view>

#include "ngx_ratelimit.h"
#include "ratelimit/lease.h"
#include "ratelimit/token_bucket.h"

namespace ngx_ratelimit {

// One limit of a request as the lease table sees it.
struct LeaseLimit {
    std::string_view redis_key;
    ratelimit::BucketParams params;
    int64_t cost;
    int64_t lease_ms;  // 0: the policy takes no leases
    PolicyStats* stats;  // the policy's counters, or nullptr
};

// Keys leased at once by a node (a fixed table in the zone; the least recently seen key
// without tokens gives its place to a new one).
constexpr size_t kLeaseSlots = 512;

// The table's size in the zone.
size_t lease_table_bytes() noexcept;

// The table in the zone's slab pool, made once per zone; nullptr when out of memory (leases
// are then off, logged).
void* create_lease_table(ngx_slab_pool_t* shpool) noexcept;

// Counts the request toward each leased key's rate and starts a lease for a hot key that has
// none usable. True, with `outcomes` filled, when every limit's lease had its cost: the
// tokens are taken and the request passes. `router` nullptr: Redis is not in use.
bool lease_decide(ngx_shm_zone_t* zone, ratelimit::CallRouter* router, const LeaseLimit* limits,
                  size_t n, ratelimit::LimitOutcome* outcomes);

// Keys of the policy counted by `stats` that hold a lease now (for the API's status).
int64_t leased_keys(ngx_shm_zone_t* zone, const PolicyStats* stats) noexcept;

// Every 100 ms, a worker gives back the unused tokens of the node's leases that ended more
// than a lease period ago (a key still requested gives them back with its next take).
std::unique_ptr<ratelimit::Timer> start_lease_sweep(ratelimit::EventLoop& loop,
                                                    ratelimit::CallRouter& router,
                                                    ngx_shm_zone_t* zone);

}  // namespace ngx_ratelimit
