// Shared-memory token buckets: local mode, and the `local` failure mode. One bucket per
// (namespace, policy, key) in an rbtree with LRU eviction, as limit_req keeps its states;
// the maths is the core's (token_bucket.h), so local and Redis decisions agree.
#pragma once

#include "ngx_ratelimit.h"
#include "ratelimit/bucket_view.h"
#include "ratelimit/token_bucket.h"

namespace ngx_ratelimit {

// Registers the module's zone ("ratelimit", `size` bytes). It survives reload when the size
// is unchanged.
ngx_shm_zone_t* add_zone(ngx_conf_t* cf, MainConf* mcf, size_t size);

// Which family of buckets: local mode, or the failure mode's (whose params differ).
enum class BucketSpace : u_char { local = 'L', failover = 'F' };

struct LocalLimit {
    ngx_str_t policy;
    ratelimit::BucketParams params;
    ngx_str_t key;
    int64_t cost;
};

enum class LocalResult { allowed, rejected, no_memory };

// Decides every limit of a request together under the zone's lock, exactly as the Redis
// script would (all or nothing), and fills `outcomes`.
LocalResult zone_decide(ngx_shm_zone_t* zone, BucketSpace space, const LocalLimit* limits,
                        size_t n, ratelimit::LimitOutcome* outcomes);

// burst/N (rounded up) and rate/N: this node's share of the fleet's limit.
ratelimit::BucketParams node_share(const ratelimit::BucketParams& params, int64_t nodes);

// The zone's counters block (ngx_ratelimit_counters.h), allocated with the zone.
struct ApiShared;
ApiShared* zone_api(ngx_shm_zone_t* zone);

// One bucket as it is now, without taking anything (the API's GET); a missing bucket is full.
ratelimit::BucketView zone_peek(ngx_shm_zone_t* zone, BucketSpace space, const ngx_str_t& policy,
                                const ratelimit::BucketParams& params, const ngx_str_t& key);

// Drops one bucket, which refills it (the API's DELETE); false if there was none.
bool zone_forget(ngx_shm_zone_t* zone, BucketSpace space, const ngx_str_t& policy,
                 const ngx_str_t& key);

// Forgets what the node's rejection memory holds of one bucket, after the API refilled it.
// Today there is no rejection memory and this removes nothing: it is the hook the rejection
// memory fills in.
void zone_forget_rejections(ngx_shm_zone_t* zone, const Policy& policy, const ngx_str_t& key);

}  // namespace ngx_ratelimit
