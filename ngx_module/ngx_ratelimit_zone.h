// Shared-memory token buckets: local mode, and the `local` failure mode. One bucket per
// (namespace, policy, key) in an rbtree with LRU eviction, as limit_req keeps its states;
// the maths is the core's (token_bucket.h), so local and Redis decisions agree.
#pragma once

#include "ngx_ratelimit.h"
#include "ratelimit/bucket_view.h"
#include "ratelimit/token_bucket.h"

namespace ngx_ratelimit {

// Registers the module's zone ("ngx_http_ratelimit_module", `size` bytes). It survives reload when the size
// is unchanged.
ngx_shm_zone_t* add_zone(ngx_conf_t* cf, MainConf* mcf, size_t size);

// Which family of buckets: local mode, the failure mode's (whose params differ), or the
// rejection memory of Redis buckets.
enum class BucketSpace : u_char { local = 'L', failover = 'F', memory = 'M' };

struct LocalLimit {
    ngx_str_t policy;
    ratelimit::BucketParams params;
    ngx_str_t key;  // or its ratelimit::key_id: the same bucket
    int64_t cost;
};

enum class LocalResult { allowed, rejected, no_memory };

// Decides every limit of a request together under the zone's lock, exactly as the Redis
// script would (all or nothing), and fills `outcomes`.
LocalResult zone_decide(ngx_shm_zone_t* zone, BucketSpace space, const LocalLimit* limits,
                        size_t n, ratelimit::LimitOutcome* outcomes);

// The rejection memory. What the last Redis reply showed of a bucket, refilled at its rate
// since the call was sent, bounds its level from above (other nodes only take tokens).
// zone_recall fills `outcomes` from those bounds (a bucket it knows nothing of counts as full)
// and returns true when some limit's bound is below its cost: the request can be rejected on
// the node. Otherwise the cost of the request, which goes to Redis, is set aside from the
// buckets it knows until the reply replaces them. `now_ms` is ratelimit::monotonic_ms(), read
// fresh; `set_aside` tells whether some cost was set aside.
bool zone_recall(ngx_shm_zone_t* zone, const LocalLimit* limits, size_t n, int64_t now_ms,
                 ratelimit::LimitOutcome* outcomes, bool* set_aside);

// Gives back what zone_recall set aside for a request whose Redis call did not decide (an
// error, a timeout, the breaker): Redis took nothing, and the stale bound would reject the
// key on the node until the cost refilled.
void zone_release(ngx_shm_zone_t* zone, const LocalLimit* limits, size_t n);

// True when the rejection memory holds nothing: requests skip it (the common case).
bool zone_memory_empty(ngx_shm_zone_t* zone) noexcept;

// Keeps what a reply showed of each limit's bucket (`levels` after the decision) while the
// same request would not fit in it; forgets buckets the reply shows able to take it. A bucket
// the API forgot after `sent_ms` (monotonic_ms() when the call was sent) is left alone.
void zone_remember(ngx_shm_zone_t* zone, const LocalLimit* limits, size_t n,
                   const int64_t* levels, bool allowed, int64_t sent_ms);

// Forgets one bucket (refilled through the API), and what replies to calls sent until now
// would show of it.
void zone_forget_rejections(ngx_shm_zone_t* zone, const ngx_str_t& policy, const ngx_str_t& key);

// burst/N (rounded up) and rate/N: this node's share of the fleet's limit.
ratelimit::BucketParams node_share(const ratelimit::BucketParams& params, int64_t nodes);

// The lease table (ngx_ratelimit_lease.cpp) and the pool whose mutex guards it; nullptr: none.
void* zone_leases(ngx_shm_zone_t* zone, ngx_slab_pool_t** shpool);

// The zone's counters block (ngx_ratelimit_counters.h), allocated with the zone.
struct ApiShared;
ApiShared* zone_api(ngx_shm_zone_t* zone);

// The zone's runtime limits (ngx_ratelimit_overrides.h), allocated with the zone.
struct OverridesShared;
OverridesShared* zone_overrides(ngx_shm_zone_t* zone);

// Allocates with the zone's lock held, dropping least recently used buckets to make room
// (they refill); nullptr when nothing is left to drop.
void* zone_alloc_locked(ngx_shm_zone_t* zone, size_t size);

// One bucket as it is now, without taking anything (the API's GET); a missing bucket is full.
ratelimit::BucketView zone_peek(ngx_shm_zone_t* zone, BucketSpace space, const ngx_str_t& policy,
                                const ratelimit::BucketParams& params, const ngx_str_t& key);

// Drops one bucket, which refills it (the API's DELETE); false if there was none.
bool zone_forget(ngx_shm_zone_t* zone, BucketSpace space, const ngx_str_t& policy,
                 const ngx_str_t& key);

}  // namespace ngx_ratelimit
