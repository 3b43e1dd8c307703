// Shared-memory token buckets: local mode, and the `local` failure mode. One bucket per
// (namespace, policy, key) in an rbtree with LRU eviction, as limit_req keeps its states;
// the maths is the core's (token_bucket.h), so local and Redis decisions agree.
#pragma once

#include "ngx_ratelimit.h"
#include "ratelimit/token_bucket.h"

namespace ngx_ratelimit {

// Registers the module's zone ("ngx_http_ratelimit_module", `size` bytes). It survives reload when the size
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

}  // namespace ngx_ratelimit
