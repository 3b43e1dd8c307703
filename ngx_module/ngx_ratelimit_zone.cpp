#include "ngx_ratelimit_zone.h"

#include <algorithm>
#include <string>

#include "ngx_ratelimit_counters.h"
#include "ngx_ratelimit_lease.h"
#include "ngx_ratelimit_overrides.h"
#include "ratelimit/batcher.h"
#include "ratelimit/key.h"

namespace ngx_ratelimit {
namespace {

struct BucketNode {
    u_char color;     // shares its first bytes with ngx_rbtree_node_t's tail, as limit_req
    u_char pad;
    u_short len;      // of data
    ngx_queue_t queue;
    int64_t level_units;
    int64_t stamp_ms;
    int64_t full_at_ms;  // when the bucket is full again: it may then be dropped
    ratelimit::BucketParams params;  // the level is in units of params.period_ms
    u_char data[1];      // "<space><policy>:<key or digest>"
};

// When the API last forgot a remembered bucket (ratelimit::monotonic_ms()), per bucket id
// hash modulo this: a reply to a call sent before then may show the level before the refill,
// and must not be remembered (a shared entry only forgoes remembering some other bucket).
constexpr size_t kForgetStamps = 64;

struct ZoneShared {
    ngx_rbtree_t rbtree;
    ngx_rbtree_node_t sentinel;
    ngx_queue_t queue;      // most recently used first
    ngx_atomic_t memories;  // rejection-memory nodes: none, and requests skip the lookup
    ApiShared* api;         // counters and top keys (ngx_ratelimit_counters.cpp)
    void* leases;           // the node's token leases (ngx_ratelimit_lease.cpp), or nullptr
    OverridesShared* overrides;  // runtime limits (ngx_ratelimit_overrides.cpp)
    int64_t forgot_ms[kForgetStamps];
};

// The bucket ids of one request: "<space><policy>:<key or digest>", built in a buffer the
// worker reuses, so deciding allocates nothing once warm.
struct Ids {
    std::string_view id[kMaxLimitsPerRequest];
    ngx_uint_t hash[kMaxLimitsPerRequest];
};

std::string id_scratch;

void make_ids(BucketSpace space, const LocalLimit* limits, size_t n, Ids& ids)
{
    size_t ends[kMaxLimitsPerRequest];
    id_scratch.clear();
    for (size_t i = 0; i < n; i++) {
        std::string_view policy(reinterpret_cast<const char*>(limits[i].policy.data),
                                limits[i].policy.len);
        std::string_view key(reinterpret_cast<const char*>(limits[i].key.data),
                             limits[i].key.len);
        ratelimit::append_bucket_key(
            id_scratch, std::string_view(reinterpret_cast<const char*>(&space), 1), policy, key);
        ends[i] = id_scratch.size();
    }
    for (size_t i = 0, start = 0; i < n; start = ends[i], i++) {
        ids.id[i] = std::string_view(id_scratch).substr(start, ends[i] - start);
        ids.hash[i] = ngx_crc32_short(reinterpret_cast<u_char*>(&id_scratch[start]),
                                      ends[i] - start);
    }
}

bool same_params(const ratelimit::BucketParams& a, const ratelimit::BucketParams& b)
{
    return a.count == b.count && a.period_ms == b.period_ms && a.burst == b.burst;
}

struct Zone {
    ZoneShared* sh;
    ngx_slab_pool_t* shpool;
    bool leases_wanted;  // some policy has lease=
};


BucketNode* node_of(ngx_rbtree_node_t* node)
{
    return reinterpret_cast<BucketNode*>(&node->color);
}


void rbtree_insert(ngx_rbtree_node_t* temp, ngx_rbtree_node_t* node,
                   ngx_rbtree_node_t* sentinel) noexcept
{
    ngx_rbtree_node_t** p;
    for (;;) {
        if (node->key != temp->key) {
            p = node->key < temp->key ? &temp->left : &temp->right;
        } else {
            BucketNode* a = node_of(node);
            BucketNode* b = node_of(temp);
            p = ngx_memn2cmp(a->data, b->data, a->len, b->len) < 0 ? &temp->left : &temp->right;
        }
        if (*p == sentinel) {
            break;
        }
        temp = *p;
    }
    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


ngx_rbtree_node_t* lookup(ZoneShared* sh, ngx_uint_t hash, std::string_view id)
{
    ngx_rbtree_node_t* node = sh->rbtree.root;
    ngx_rbtree_node_t* sentinel = sh->rbtree.sentinel;
    while (node != sentinel) {
        if (hash != node->key) {
            node = hash < node->key ? node->left : node->right;
            continue;
        }
        BucketNode* b = node_of(node);
        ngx_int_t rc = ngx_memn2cmp((u_char*) id.data(), b->data,
                                    id.size(), b->len);
        if (rc == 0) {
            return node;
        }
        node = rc < 0 ? node->left : node->right;
    }
    return nullptr;
}


void free_node(Zone* zone, ngx_queue_t* q)
{
    BucketNode* b = ngx_queue_data(q, BucketNode, queue);
    auto* node = reinterpret_cast<ngx_rbtree_node_t*>(
        reinterpret_cast<u_char*>(b) - offsetof(ngx_rbtree_node_t, color));
    if (b->data[0] == u_char(BucketSpace::memory)) {
        (void) ngx_atomic_fetch_add(&zone->sh->memories, -1);
    }
    ngx_queue_remove(q);
    ngx_rbtree_delete(&zone->sh->rbtree, node);
    ngx_slab_free_locked(zone->shpool, node);
}


// Drops up to two buckets that are full again (they equal a missing bucket).
void expire(Zone* zone, int64_t now_ms)
{
    for (int i = 0; i < 2; i++) {
        if (ngx_queue_empty(&zone->sh->queue)) {
            return;
        }
        ngx_queue_t* q = ngx_queue_last(&zone->sh->queue);
        BucketNode* b = ngx_queue_data(q, BucketNode, queue);
        if (b->full_at_ms > now_ms) {
            return;
        }
        free_node(zone, q);
    }
}


// Drops the least recently used bucket, whatever its state, to make room; never one of
// `keep`, the buckets of the request being decided. False: nothing left to drop.
bool evict_lru(Zone* zone, BucketNode* const* keep, size_t nkeep)
{
    ngx_queue_t* sentinel = ngx_queue_sentinel(&zone->sh->queue);
    for (ngx_queue_t* q = ngx_queue_last(&zone->sh->queue); q != sentinel;
         q = ngx_queue_prev(q))
    {
        BucketNode* b = ngx_queue_data(q, BucketNode, queue);
        if (std::find(keep, keep + nkeep, b) == keep + nkeep) {
            free_node(zone, q);
            return true;
        }
    }
    return false;
}


// A new bucket starts full, which is what a missing bucket means. When the zone is full,
// least recently used buckets go until the allocation succeeds: one freed bucket may be of
// another slab size, which frees no room for this one.
BucketNode* create_node(Zone* zone, ngx_uint_t hash, std::string_view id,
                        const ratelimit::BucketParams& params, int64_t now_ms,
                        BucketNode* const* keep, size_t nkeep)
{
    size_t size = offsetof(ngx_rbtree_node_t, color) + offsetof(BucketNode, data) + id.size();
    ngx_rbtree_node_t* node;
    while ((node = static_cast<ngx_rbtree_node_t*>(ngx_slab_alloc_locked(zone->shpool, size)))
           == nullptr)
    {
        if (!evict_lru(zone, keep, nkeep)) {
            return nullptr;
        }
    }
    node->key = hash;
    BucketNode* b = node_of(node);
    b->len = u_short(id.size());
    ngx_memcpy(b->data, id.data(), id.size());
    b->level_units = params.capacity_units();
    b->stamp_ms = now_ms;
    b->full_at_ms = now_ms;
    b->params = params;
    if (id[0] == char(BucketSpace::memory)) {
        (void) ngx_atomic_fetch_add(&zone->sh->memories, 1);
    }
    ngx_rbtree_insert(&zone->sh->rbtree, node);
    ngx_queue_insert_head(&zone->sh->queue, &b->queue);
    return b;
}


// The lease table is made the first time a configuration has a policy with lease=.
void add_leases(Zone* zone)
{
    if (!zone->leases_wanted || zone->sh->leases) {
        return;
    }
    ngx_shmtx_lock(&zone->shpool->mutex);
    zone->sh->leases = create_lease_table(zone->shpool);
    ngx_shmtx_unlock(&zone->shpool->mutex);
    if (zone->sh->leases == nullptr) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "ratelimit: no room for the lease table in ratelimit_zone, leases off");
    }
}


ngx_int_t init_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept
{
    auto* old = static_cast<Zone*>(data);
    auto* zone = static_cast<Zone*>(shm_zone->data);
    if (old) {
        // Same name and size as before the reload: keep every bucket.
        zone->sh = old->sh;
        zone->shpool = old->shpool;
        add_leases(zone);
        return NGX_OK;
    }
    zone->shpool = reinterpret_cast<ngx_slab_pool_t*>(shm_zone->shm.addr);
    if (shm_zone->shm.exists) {
        zone->sh = static_cast<ZoneShared*>(zone->shpool->data);
        add_leases(zone);
        return NGX_OK;
    }
    zone->sh = static_cast<ZoneShared*>(ngx_slab_alloc(zone->shpool, sizeof(ZoneShared)));
    if (zone->sh == nullptr) {
        return NGX_ERROR;
    }
    zone->shpool->data = zone->sh;
    ngx_rbtree_init(&zone->sh->rbtree, &zone->sh->sentinel, rbtree_insert);
    ngx_queue_init(&zone->sh->queue);
    zone->sh->memories = 0;
    zone->sh->leases = nullptr;
    ngx_memzero(zone->sh->forgot_ms, sizeof(zone->sh->forgot_ms));
    zone->sh->api = create_api_shared(zone->shpool);
    zone->sh->overrides = create_overrides_shared(zone->shpool);
    if (zone->sh->api == nullptr || zone->sh->overrides == nullptr) {
        return NGX_ERROR;
    }

    static const char ctx[] = " in ratelimit_zone";
    zone->shpool->log_ctx = static_cast<u_char*>(ngx_slab_alloc(zone->shpool, sizeof(ctx)));
    if (zone->shpool->log_ctx == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(zone->shpool->log_ctx, ctx, sizeof(ctx));
    zone->shpool->log_nomem = 0;
    add_leases(zone);
    return NGX_OK;
}


int64_t zone_now_ms()
{
    // The monotonic clock is the same for every worker of this host, and across reloads.
    return int64_t(ngx_current_msec);
}


// The rejection memory's bound of a bucket: `level_units` as of `stamp_ms`, under b->params.
void hold_level(BucketNode* b, int64_t level_units, int64_t stamp_ms)
{
    b->level_units = level_units;
    b->stamp_ms = stamp_ms;
    b->full_at_ms = stamp_ms + ratelimit::outcome_after(b->params, 0, level_units, true).reset_ms;
}


}  // namespace


ngx_shm_zone_t* add_zone(ngx_conf_t* cf, MainConf* mcf, size_t size)
{
    // Named after the module: an operator's own zones ("ratelimit", say) never clash with it.
    static ngx_str_t name = ngx_string("ngx_http_ratelimit_module");
    ngx_shm_zone_t* shm_zone = ngx_shared_memory_add(cf, &name, size, &ngx_http_ratelimit_module);
    if (shm_zone == nullptr) {
        return nullptr;
    }
    auto* zone = static_cast<Zone*>(ngx_pcalloc(cf->pool, sizeof(Zone)));
    if (zone == nullptr) {
        return nullptr;
    }
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        zone->leases_wanted = zone->leases_wanted || policies[i].lease_ms > 0;
    }
    // The table takes a part of the zone; in a zone not twice its size, leases are off.
    if (zone->leases_wanted && mcf->redis && size < 2 * lease_table_bytes()) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0, "ratelimit_zone %uz is too small for the "
                           "lease table (%uz bytes), leases off", size, lease_table_bytes());
        zone->leases_wanted = false;
    }
    shm_zone->init = init_zone;
    shm_zone->data = zone;
    return shm_zone;
}


LocalResult zone_decide(ngx_shm_zone_t* shm_zone, BucketSpace space, const LocalLimit* limits,
                        size_t n, ratelimit::LimitOutcome* outcomes)
{
    if (n > kMaxLimitsPerRequest) {
        return LocalResult::no_memory;
    }
    auto* zone = static_cast<Zone*>(shm_zone->data);
    int64_t now = zone_now_ms();

    Ids ids;
    make_ids(space, limits, n, ids);

    ngx_shmtx_lock(&zone->shpool->mutex);
    expire(zone, now);

    BucketNode* nodes[kMaxLimitsPerRequest];
    ratelimit::BucketState states[kMaxLimitsPerRequest];
    ratelimit::LimitInput inputs[kMaxLimitsPerRequest];
    for (size_t i = 0; i < n; i++) {
        ngx_rbtree_node_t* node = lookup(zone->sh, ids.hash[i], ids.id[i]);
        nodes[i] = node ? node_of(node) : nullptr;
        inputs[i].params = limits[i].params;
        inputs[i].cost = limits[i].cost;
        inputs[i].state = nullptr;
        if (nodes[i]) {
            // Kept across a rate change: converted from the period it was stored in.
            states[i] = {nodes[i]->level_units, nodes[i]->stamp_ms,
                         nodes[i]->params.period_ms};
            inputs[i].state = &states[i];
            ngx_queue_remove(&nodes[i]->queue);
            ngx_queue_insert_head(&zone->sh->queue, &nodes[i]->queue);
        }
    }

    bool allowed = ratelimit::decide_all(inputs, outcomes, n, now);
    LocalResult result = allowed ? LocalResult::allowed : LocalResult::rejected;

    // Room for every new bucket first, so that a full zone takes from none of them.
    for (size_t i = 0; allowed && i < n; i++) {
        if (limits[i].cost > 0 && nodes[i] == nullptr) {
            nodes[i] = create_node(zone, ids.hash[i], ids.id[i], limits[i].params, now, nodes, n);
            if (nodes[i] == nullptr) {
                result = LocalResult::no_memory;
                allowed = false;
            }
        }
    }
    for (size_t i = 0; allowed && i < n; i++) {
        if (limits[i].cost == 0) {
            continue;  // nothing taken, nothing to store (as the script)
        }
        // Never stamped back by a worker whose cached clock lags another's.
        ratelimit::BucketState before{nodes[i]->level_units, nodes[i]->stamp_ms};
        ratelimit::BucketState after = ratelimit::stored_state(&before, outcomes[i], now);
        nodes[i]->level_units = after.level_units;
        nodes[i]->stamp_ms = after.stamp_ms;
        nodes[i]->full_at_ms = after.stamp_ms + outcomes[i].reset_ms;
        nodes[i]->params = limits[i].params;
    }

    ngx_shmtx_unlock(&zone->shpool->mutex);
    return result;
}


bool zone_memory_empty(ngx_shm_zone_t* shm_zone) noexcept
{
    return static_cast<Zone*>(shm_zone->data)->sh->memories == 0;
}


bool zone_recall(ngx_shm_zone_t* shm_zone, const LocalLimit* limits, size_t n, int64_t now_ms,
                 ratelimit::LimitOutcome* outcomes, bool* set_aside)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    *set_aside = false;
    if (zone->sh->memories == 0 || n > kMaxLimitsPerRequest) {
        return false;
    }
    Ids ids;
    make_ids(BucketSpace::memory, limits, n, ids);
    int64_t levels[kMaxLimitsPerRequest];
    BucketNode* known[kMaxLimitsPerRequest];
    bool reject = false;

    ngx_shmtx_lock(&zone->shpool->mutex);
    for (size_t i = 0; i < n; i++) {
        const ratelimit::BucketParams& params = limits[i].params;
        levels[i] = params.capacity_units();
        known[i] = nullptr;
        ngx_rbtree_node_t* node = lookup(zone->sh, ids.hash[i], ids.id[i]);
        if (node == nullptr) {
            continue;
        }
        BucketNode* b = node_of(node);
        if (!same_params(b->params, params)) {
            free_node(zone, &b->queue);  // the policy changed: what we knew no longer holds
            continue;
        }
        known[i] = b;
        ratelimit::BucketState state{b->level_units, b->stamp_ms, params.period_ms};
        levels[i] = ratelimit::refill(params, state, now_ms);
        if (limits[i].cost > 0 && levels[i] < limits[i].cost * params.period_ms) {
            reject = true;
        }
    }
    // The request goes to Redis with what has refilled: set its cost aside, so that the
    // requests arriving before the reply are rejected here instead of all following it to
    // Redis (a flood would send every request of a round trip after each refill). The reply
    // stores the bucket's real level in place of this.
    for (size_t i = 0; !reject && i < n; i++) {
        BucketNode* b = known[i];
        if (b == nullptr || limits[i].cost == 0) {
            continue;
        }
        hold_level(b, levels[i] - limits[i].cost * b->params.period_ms, now_ms);
        *set_aside = true;
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);

    for (size_t i = 0; reject && i < n; i++) {
        outcomes[i] = ratelimit::outcome_after(limits[i].params, limits[i].cost, levels[i], false);
    }
    return reject;
}


void zone_release(ngx_shm_zone_t* shm_zone, const LocalLimit* limits, size_t n)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    if (zone->sh->memories == 0 || n > kMaxLimitsPerRequest) {
        return;
    }
    Ids ids;
    make_ids(BucketSpace::memory, limits, n, ids);

    ngx_shmtx_lock(&zone->shpool->mutex);
    for (size_t i = 0; i < n; i++) {
        ngx_rbtree_node_t* node = lookup(zone->sh, ids.hash[i], ids.id[i]);
        if (node == nullptr || limits[i].cost == 0) {
            continue;
        }
        BucketNode* b = node_of(node);
        if (!same_params(b->params, limits[i].params)) {
            continue;
        }
        // A reply stored since may already be below this: a bound too high only sends a
        // request to Redis, which decides.
        hold_level(b, std::min(b->level_units + limits[i].cost * b->params.period_ms,
                               b->params.capacity_units()),
                   b->stamp_ms);
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
}


void zone_remember(ngx_shm_zone_t* shm_zone, const LocalLimit* limits, size_t n,
                   const int64_t* levels, bool allowed, int64_t sent_ms)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    bool short_of = false;
    for (size_t i = 0; i < n; i++) {
        short_of = short_of || levels[i] < limits[i].cost * limits[i].params.period_ms;
    }
    if ((!short_of && zone->sh->memories == 0) || n > kMaxLimitsPerRequest) {
        return;
    }
    (void) allowed;  // either way, the levels are the bucket's after the decision
    Ids ids;
    make_ids(BucketSpace::memory, limits, n, ids);

    ngx_shmtx_lock(&zone->shpool->mutex);
    for (size_t i = 0; i < n; i++) {
        const ratelimit::BucketParams& params = limits[i].params;
        if (sent_ms <= zone->sh->forgot_ms[ids.hash[i] % kForgetStamps]) {
            continue;  // sent before the API refilled it: the level may be the old one
        }
        ngx_rbtree_node_t* node = lookup(zone->sh, ids.hash[i], ids.id[i]);
        BucketNode* b = node ? node_of(node) : nullptr;
        if (levels[i] >= limits[i].cost * params.period_ms) {
            if (b) {
                free_node(zone, &b->queue);  // it could take this request again: nothing to keep
            }
            continue;
        }
        if (b == nullptr) {
            b = create_node(zone, ids.hash[i], ids.id[i], params, sent_ms, nullptr, 0);
            if (b == nullptr) {
                continue;  // no room: Redis keeps deciding, which is always right
            }
        } else {
            ngx_queue_remove(&b->queue);
            ngx_queue_insert_head(&zone->sh->queue, &b->queue);
        }
        b->params = params;
        hold_level(b, std::max<int64_t>(levels[i], 0), sent_ms);
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
}


void zone_forget_rejections(ngx_shm_zone_t* shm_zone, const ngx_str_t& policy,
                            const ngx_str_t& key)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    LocalLimit limit{policy, {}, key, 0};
    Ids ids;
    make_ids(BucketSpace::memory, &limit, 1, ids);
    ngx_shmtx_lock(&zone->shpool->mutex);
    if (ngx_rbtree_node_t* node = lookup(zone->sh, ids.hash[0], ids.id[0])) {
        free_node(zone, &node_of(node)->queue);
    }
    // Read under the lock: a reply remembered after this one was sent after it.
    zone->sh->forgot_ms[ids.hash[0] % kForgetStamps] = ratelimit::monotonic_ms();
    ngx_shmtx_unlock(&zone->shpool->mutex);
}


ratelimit::BucketParams node_share(const ratelimit::BucketParams& params, int64_t nodes)
{
    if (nodes <= 1) {
        return params;
    }
    // rate/N as N times the period keeps the count an integer.
    return ratelimit::BucketParams{params.count, params.period_ms * nodes,
                                   (params.burst + nodes - 1) / nodes};
}

}  // namespace ngx_ratelimit


// The API's view of the zone: one bucket read or dropped, by policy name and key.
namespace ngx_ratelimit {
namespace {

std::string bucket_id(BucketSpace space, const ngx_str_t& policy, const ngx_str_t& key,
                      ngx_uint_t* hash)
{
    std::string id;
    ratelimit::append_bucket_key(
        id, std::string_view(reinterpret_cast<const char*>(&space), 1),
        std::string_view(reinterpret_cast<const char*>(policy.data), policy.len),
        std::string_view(reinterpret_cast<const char*>(key.data), key.len));
    *hash = ngx_crc32_short(reinterpret_cast<u_char*>(id.data()), id.size());
    return id;
}

}  // namespace


void* zone_leases(ngx_shm_zone_t* shm_zone, ngx_slab_pool_t** shpool)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    *shpool = zone->shpool;
    return zone->sh ? zone->sh->leases : nullptr;
}


ApiShared* zone_api(ngx_shm_zone_t* shm_zone)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    return zone->sh ? zone->sh->api : nullptr;
}


OverridesShared* zone_overrides(ngx_shm_zone_t* shm_zone)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    return zone->sh ? zone->sh->overrides : nullptr;
}


void* zone_alloc_locked(ngx_shm_zone_t* shm_zone, size_t size)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    void* p;
    while ((p = ngx_slab_alloc_locked(zone->shpool, size)) == nullptr) {
        if (!evict_lru(zone, nullptr, 0)) {
            return nullptr;
        }
    }
    return p;
}


ratelimit::BucketView zone_peek(ngx_shm_zone_t* shm_zone, BucketSpace space,
                                const ngx_str_t& policy, const ratelimit::BucketParams& params,
                                const ngx_str_t& key)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    ngx_uint_t hash;
    std::string id = bucket_id(space, policy, key, &hash);
    ratelimit::BucketView view;
    view.now_ms = zone_now_ms();
    view.level_units = params.capacity_units();
    ngx_shmtx_lock(&zone->shpool->mutex);
    if (ngx_rbtree_node_t* node = lookup(zone->sh, hash, id)) {
        BucketNode* b = node_of(node);
        view.exists = true;
        // Converted from the period it was stored in (a rate changed since, by reload or API).
        view.level_units = ratelimit::refill(
            params, {b->level_units, b->stamp_ms, b->params.period_ms}, view.now_ms);
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
    return view;
}


bool zone_forget(ngx_shm_zone_t* shm_zone, BucketSpace space, const ngx_str_t& policy,
                 const ngx_str_t& key)
{
    auto* zone = static_cast<Zone*>(shm_zone->data);
    ngx_uint_t hash;
    std::string id = bucket_id(space, policy, key, &hash);
    ngx_shmtx_lock(&zone->shpool->mutex);
    ngx_rbtree_node_t* node = lookup(zone->sh, hash, id);
    if (node) {
        free_node(zone, &node_of(node)->queue);
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
    return node != nullptr;
}


}  // namespace ngx_ratelimit
