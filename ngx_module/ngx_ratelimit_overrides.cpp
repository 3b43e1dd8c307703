#include "ngx_ratelimit_overrides.h"

#include <algorithm>
#include <cstring>

#include "ngx_ratelimit_adaptive.h"
#include "ngx_ratelimit_log.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/key.h"
#include "ratelimit/override_store.h"

namespace ngx_ratelimit {

// A policy's runtime state, found by name (so that it survives reload).
struct PolicyOverrides {
    PolicyOverrides* next;
    ngx_atomic_t keys;     // key overrides in the table: 0 and no change, requests skip it
    ngx_atomic_t changed;  // 1: `change` is in force (read under the lock)
    ratelimit::Override change;
    ngx_atomic_t decided_key;
    ngx_atomic_t unlimited;
    ngx_atomic_t blocked;
    size_t name_len;
    u_char name[1];
};

// One key override. A hash table rather than a tree: the request path's lookup costs a
// bucket and a node, not a cache miss per level of a tree of 100,000.
struct OverrideNode {
    OverrideNode* next;  // in its bucket's chain
    uint32_t hash;
    u_short len;         // of data
    ratelimit::Override value;
    u_char data[1];      // "<policy>:<key id>"
};

struct OverridesShared {
    OverrideNode** buckets;         // key overrides by "<policy>:<key id>": chains by hash
    ngx_uint_t nbuckets;            // a power of two, doubled as entries reach it
    ngx_uint_t entries;
    PolicyOverrides* policies;
    ngx_atomic_t version;           // Redis mode: the version of Redis's table applied here
    ngx_atomic_t poll_at_ms;        // when the next poll is due: the worker that moves it polls
    ngx_atomic_t dropped;           // overrides that found no room in the zone
};

namespace {

constexpr ngx_uint_t kFirstBuckets = 1024;

// Request-path scratch: the fields of one request's limits, reused by every request.
std::string field_scratch;

ngx_slab_pool_t* pool_of(MainConf* mcf)
{
    return reinterpret_cast<ngx_slab_pool_t*>(mcf->zone->shm.addr);
}

uint32_t hash_of(std::string_view field)
{
    return ngx_crc32_short(reinterpret_cast<u_char*>(const_cast<char*>(field.data())),
                           field.size());
}

// The link that points at the node of `field` (or at the end of its chain).
OverrideNode** link_of(OverridesShared* sh, uint32_t hash, std::string_view field)
{
    OverrideNode** link = &sh->buckets[hash & (sh->nbuckets - 1)];
    for (; *link; link = &(*link)->next) {
        OverrideNode* o = *link;
        if (o->hash == hash && o->len == field.size()
            && ngx_memcmp(o->data, field.data(), field.size()) == 0)
        {
            break;
        }
    }
    return link;
}

const OverrideNode* lookup(OverridesShared* sh, uint32_t hash, std::string_view field)
{
    return *link_of(sh, hash, field);
}

// Twice the buckets once there are as many entries (held lock); without room, chains grow.
void grow(MainConf* mcf, OverridesShared* sh)
{
    ngx_uint_t n = sh->nbuckets * 2;
    auto* buckets = static_cast<OverrideNode**>(zone_alloc_locked(mcf->zone, n * sizeof(void*)));
    if (buckets == nullptr) {
        return;
    }
    ngx_memzero(buckets, n * sizeof(void*));
    for (ngx_uint_t i = 0; i < sh->nbuckets; i++) {
        while (OverrideNode* o = sh->buckets[i]) {
            sh->buckets[i] = o->next;
            o->next = buckets[o->hash & (n - 1)];
            buckets[o->hash & (n - 1)] = o;
        }
    }
    ngx_slab_free_locked(pool_of(mcf), sh->buckets);
    sh->buckets = buckets;
    sh->nbuckets = n;
}

std::string_view as_sv(const ngx_str_t& s)
{
    return std::string_view(reinterpret_cast<const char*>(s.data), s.len);
}

// The policy's record, created when missing (held lock). nullptr: no room.
PolicyOverrides* policy_record(MainConf* mcf, OverridesShared* sh, std::string_view name,
                               bool create)
{
    for (PolicyOverrides* p = sh->policies; p; p = p->next) {
        if (std::string_view(reinterpret_cast<char*>(p->name), p->name_len) == name) {
            return p;
        }
    }
    if (!create) {
        return nullptr;
    }
    auto* p = static_cast<PolicyOverrides*>(
        zone_alloc_locked(mcf->zone, offsetof(PolicyOverrides, name) + name.size()));
    if (p == nullptr) {
        return nullptr;
    }
    std::memset(static_cast<void*>(p), 0, offsetof(PolicyOverrides, name));
    p->name_len = name.size();
    ngx_memcpy(p->name, name.data(), name.size());
    p->next = sh->policies;
    sh->policies = p;
    return p;
}

void remove_node(ngx_slab_pool_t* shpool, OverridesShared* sh, OverrideNode** link)
{
    OverrideNode* o = *link;
    *link = o->next;
    sh->entries--;
    ngx_slab_free_locked(shpool, o);
}

// Sets or removes one entry (held lock): "<policy>" is the policy's change, "<policy>:<key>"
// a key override. Returns the replaced value; *stored false when there was no room.
std::optional<ratelimit::Override> set_locked(MainConf* mcf, OverridesShared* sh,
                                              std::string_view field,
                                              const ratelimit::Override* value, bool* stored)
{
    *stored = true;
    size_t colon = field.find(':');
    PolicyOverrides* policy = policy_record(mcf, sh, field.substr(0, colon), value != nullptr);
    if (policy == nullptr) {
        *stored = value == nullptr;
        return std::nullopt;
    }
    std::optional<ratelimit::Override> old;
    if (colon == std::string_view::npos) {
        if (policy->changed) {
            old = policy->change;
        }
        if (value) {
            policy->change = *value;
        }
        policy->changed = value != nullptr;
        return old;
    }
    uint32_t hash = hash_of(field);
    OverrideNode** link = link_of(sh, hash, field);
    if (OverrideNode* o = *link) {
        old = o->value;
        if (value) {
            o->value = *value;
            return old;
        }
        remove_node(pool_of(mcf), sh, link);
        (void) ngx_atomic_fetch_add(&policy->keys, -1);
        return old;
    }
    if (value == nullptr) {
        return old;
    }
    auto* o = static_cast<OverrideNode*>(
        zone_alloc_locked(mcf->zone, offsetof(OverrideNode, data) + field.size()));
    if (o == nullptr) {
        *stored = false;
        (void) ngx_atomic_fetch_add(&sh->dropped, 1);
        return old;
    }
    o->hash = hash;
    o->len = u_short(field.size());
    o->value = *value;
    ngx_memcpy(o->data, field.data(), field.size());
    o->next = nullptr;
    *link_of(sh, hash, field) = o;  // the chain's end (zone_alloc_locked touched no override)
    if (++sh->entries >= sh->nbuckets) {
        grow(mcf, sh);
    }
    (void) ngx_atomic_fetch_add(&policy->keys, 1);
    return old;
}

// Empties the table (held lock): Redis lost what the node had applied.
void clear_locked(MainConf* mcf, OverridesShared* sh)
{
    ngx_slab_pool_t* shpool = pool_of(mcf);
    for (ngx_uint_t i = 0; i < sh->nbuckets; i++) {
        while (sh->buckets[i]) {
            remove_node(shpool, sh, &sh->buckets[i]);
        }
    }
    for (PolicyOverrides* p = sh->policies; p; p = p->next) {
        p->keys = 0;
        p->changed = 0;
    }
}

std::string field_of(const ngx_str_t& policy, std::string_view key)
{
    return key.empty() ? ratelimit::override_field(as_sv(policy))
                       : ratelimit::override_field(as_sv(policy), key);
}

}  // namespace


OverridesShared* create_overrides_shared(ngx_slab_pool_t* shpool)
{
    auto* sh = static_cast<OverridesShared*>(ngx_slab_calloc(shpool, sizeof(OverridesShared)));
    if (sh == nullptr) {
        return nullptr;
    }
    sh->buckets = static_cast<OverrideNode**>(
        ngx_slab_calloc(shpool, kFirstBuckets * sizeof(OverrideNode*)));
    sh->nbuckets = kFirstBuckets;
    return sh->buckets ? sh : nullptr;
}


void bind_overrides(ngx_cycle_t* cycle, MainConf* mcf) noexcept
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    if (sh == nullptr) {
        return;
    }
    ngx_slab_pool_t* shpool = pool_of(mcf);
    ngx_shmtx_lock(&shpool->mutex);
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        policies[i].overrides = policy_record(mcf, sh, as_sv(policies[i].name), true);
        if (policies[i].overrides == nullptr) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "ratelimit: the zone has no room for the runtime limits of policy "
                          "\"%V\"", &policies[i].name);
        }
    }
    ngx_shmtx_unlock(&shpool->mutex);
}


void apply_overrides(MainConf* mcf, RequestLimit* limits, ngx_uint_t n, bool count) noexcept
{
    bool any = false;
    for (ngx_uint_t i = 0; i < n; i++) {
        limits[i].params = params_in_force(*limits[i].policy);
        limits[i].use = OverrideUse::none;
        const PolicyOverrides* p = limits[i].policy->overrides;
        any = any || (p && (p->keys || p->changed));
    }
    if (!any || n > kMaxLimitsPerRequest) {
        return;
    }
    size_t ends[kMaxLimitsPerRequest];
    try {
        field_scratch.clear();
        for (ngx_uint_t i = 0; i < n; i++) {
            ratelimit::append_bucket_id(field_scratch, {}, as_sv(limits[i].policy->name),
                                        as_sv(limits[i].id));
            ends[i] = field_scratch.size();
        }
    } catch (...) {
        return;  // out of memory: the configured buckets
    }
    OverridesShared* sh = zone_overrides(mcf->zone);
    ratelimit::Override change[kMaxLimitsPerRequest];
    ratelimit::Override key[kMaxLimitsPerRequest];
    bool has_change[kMaxLimitsPerRequest];
    bool has_key[kMaxLimitsPerRequest];

    ngx_slab_pool_t* shpool = pool_of(mcf);
    ngx_shmtx_lock(&shpool->mutex);
    for (ngx_uint_t i = 0, start = 0; i < n; start = ends[i], i++) {
        const PolicyOverrides* p = limits[i].policy->overrides;
        has_change[i] = p && p->changed;
        has_key[i] = false;
        if (has_change[i]) {
            change[i] = p->change;
        }
        if (p && p->keys) {
            std::string_view field = std::string_view(field_scratch).substr(start, ends[i] - start);
            if (const OverrideNode* o = lookup(sh, hash_of(field), field)) {
                key[i] = o->value;
                has_key[i] = true;
            }
        }
    }
    ngx_shmtx_unlock(&shpool->mutex);

    for (ngx_uint_t i = 0; i < n; i++) {
        RequestLimit& limit = limits[i];
        PolicyOverrides* p = limit.policy->overrides;
        // An adaptive factor scales overridden values as it scales configured ones.
        limit.params = adapted(*limit.policy,
                               ratelimit::params_in_force(limit.policy->params,
                                                          has_change[i] ? &change[i] : nullptr,
                                                          has_key[i] ? &key[i] : nullptr));
        limit.use = has_change[i] ? OverrideUse::policy : OverrideUse::none;
        // A runtime delay replaces the policy's (not a `ratelimit` line's own delay=).
        if (has_change[i] && change[i].has_delay && limit.delay == limit.policy->delay) {
            limit.delay = std::min(change[i].delay, limit.params.burst);
        }
        if (!has_key[i]) {
            continue;
        }
        ngx_atomic_t* counter = key[i].unlimited ? &p->unlimited
                                : key[i].block   ? &p->blocked
                                                 : &p->decided_key;
        if (count) {
            (void) ngx_atomic_fetch_add(counter, 1);
        }
        if (key[i].unlimited) {
            limit.use = OverrideUse::unlimited;
        } else if (key[i].block) {
            limit.use = OverrideUse::block;
        } else {
            limit.use = OverrideUse::key;
        }
    }
}


std::optional<ratelimit::Override> find_override(MainConf* mcf, const ngx_str_t& policy,
                                                 std::string_view key)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    std::string field = field_of(policy, key);
    std::optional<ratelimit::Override> found;
    ngx_slab_pool_t* shpool = pool_of(mcf);
    ngx_shmtx_lock(&shpool->mutex);
    if (key.empty()) {
        PolicyOverrides* p = policy_record(mcf, sh, as_sv(policy), false);
        if (p && p->changed) {
            found = p->change;
        }
    } else if (const OverrideNode* o = lookup(sh, hash_of(field), field)) {
        found = o->value;
    }
    ngx_shmtx_unlock(&shpool->mutex);
    return found;
}


std::optional<ratelimit::Override> set_override(MainConf* mcf, const ngx_str_t& policy,
                                                std::string_view key,
                                                const ratelimit::Override* value, bool* stored)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    std::string field = field_of(policy, key);
    ngx_slab_pool_t* shpool = pool_of(mcf);
    ngx_shmtx_lock(&shpool->mutex);
    auto old = set_locked(mcf, sh, field, value, stored);
    ngx_shmtx_unlock(&shpool->mutex);
    return old;
}


std::vector<ListedOverride> list_overrides(MainConf* mcf, const ngx_str_t& policy,
                                           size_t offset, size_t limit, size_t* total)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    std::string prefix = ratelimit::override_field(as_sv(policy), {});
    std::vector<ListedOverride> out;
    *total = 0;
    ngx_slab_pool_t* shpool = pool_of(mcf);
    ngx_shmtx_lock(&shpool->mutex);
    try {
        for (ngx_uint_t i = 0; i < sh->nbuckets; i++) {
            for (const OverrideNode* o = sh->buckets[i]; o; o = o->next) {
                std::string_view field(reinterpret_cast<const char*>(o->data), o->len);
                if (field.substr(0, prefix.size()) != prefix) {
                    continue;
                }
                if (*total >= offset && out.size() < limit) {
                    out.push_back({std::string(field.substr(prefix.size())), o->value});
                }
                ++*total;
            }
        }
    } catch (...) {
        ngx_shmtx_unlock(&shpool->mutex);
        throw;
    }
    ngx_shmtx_unlock(&shpool->mutex);
    return out;
}


OverrideCounts override_counts(const Policy& policy)
{
    OverrideCounts counts;
    const PolicyOverrides* p = policy.overrides;
    if (p == nullptr) {
        return counts;
    }
    counts.keys = int64_t(p->keys);
    counts.changed = p->changed != 0;
    if (counts.changed) {
        counts.change = p->change;  // a torn read shows in status at worst, never in a decision
    }
    counts.decided_key = int64_t(p->decided_key);
    counts.unlimited = int64_t(p->unlimited);
    counts.blocked = int64_t(p->blocked);
    return counts;
}


int64_t overrides_version(MainConf* mcf)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    return sh ? int64_t(sh->version) : 0;
}


int64_t overrides_dropped(MainConf* mcf)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    return sh ? int64_t(sh->dropped) : 0;
}


// The poll of Redis (Redis mode).
namespace {

constexpr size_t kPollPage = 1000;

struct Poll {
    MainConf* mcf;
    ngx_event_t ev;
    ngx_log_t* log;
};

Poll* poll_state;

// Applies one page of changes read since `since`, unless another worker applied it first.
void apply_page(MainConf* mcf, int64_t since, const ratelimit::OverridePage& page, ngx_log_t* log)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    size_t unreadable = 0;
    size_t dropped = 0;
    ngx_slab_pool_t* shpool = pool_of(mcf);
    ngx_shmtx_lock(&shpool->mutex);
    if (int64_t(sh->version) == since) {
        if (page.reset) {
            clear_locked(mcf, sh);
        }
        for (const ratelimit::OverrideChange& change : page.changes) {
            std::string_view field = change.field;
            bool is_key = field.find(':') != std::string_view::npos;
            ratelimit::Override value;
            bool removed = change.value.empty();
            if (!removed && !ratelimit::read_stored_override(
                                change.value,
                                is_key ? ratelimit::OverrideTarget::key
                                       : ratelimit::OverrideTarget::policy,
                                value))
            {
                unreadable++;
                removed = true;  // never a guess: the configured bucket
            }
            bool stored;
            set_locked(mcf, sh, field, removed ? nullptr : &value, &stored);
            dropped += stored ? 0 : 1;
        }
        sh->version = ngx_atomic_uint_t(page.reached);
    }
    ngx_shmtx_unlock(&shpool->mutex);
    if (unreadable) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit: %uz runtime limits in Redis cannot be read, ignored",
                      unreadable);
    }
    if (dropped) {
        log_throttled(NGX_LOG_ERR, log, LogReason::zone_full,
                      "ratelimit: the zone has no room for %uz runtime limits read from "
                      "Redis, kept what fits",
                      dropped);
    }
}

void on_poll_reply(int64_t since, const ratelimit::CallResult& result) noexcept
{
    Poll* poll = poll_state;
    if (poll == nullptr || result.status != ratelimit::CallStatus::ok) {
        return;  // the next poll asks again
    }
    try {
        ratelimit::OverridePage page;
        std::string error;
        if (!ratelimit::parse_override_read_reply(result.reply, since, kPollPage, page, error)) {
            log_throttled(NGX_LOG_WARN, poll->log, LogReason::redis_error,
                          "ratelimit: reading the runtime limits from Redis: %s",
                          error.c_str());
            return;
        }
        apply_page(poll->mcf, since, page, poll->log);
        if (page.more) {
            // The rest at once, by whichever worker polls first.
            zone_overrides(poll->mcf->zone)->poll_at_ms = 0;
            if (poll->ev.timer_set) {
                ngx_del_timer(&poll->ev);
            }
            ngx_add_timer(&poll->ev, 1);
        }
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, poll->log, 0, "ratelimit: out of memory reading runtime limits");
    }
}

// Takes the node's next poll if it is due (a compare-and-swap on its time), and sends it.
void poll_redis(Poll* poll)
{
    OverridesShared* sh = zone_overrides(poll->mcf->zone);
    ratelimit::CallRouter* router = redis_router();
    if (sh == nullptr || router == nullptr) {
        return;
    }
    ngx_atomic_uint_t due = sh->poll_at_ms;
    ngx_atomic_uint_t now = ngx_current_msec;
    if (now < due || !ngx_atomic_cmp_set(&sh->poll_at_ms, due, now + kPollMs)) {
        return;
    }
    int64_t since = int64_t(sh->version);
    const std::string& prefix = poll->mcf->redis->prefix;
    std::string key = ratelimit::override_version_key(prefix);
    router->submit(router->slot_group_of(key),
                   ratelimit::format_override_read(prefix, since, kPollPage),
                   [since](const ratelimit::CallResult& result) { on_poll_reply(since, result); },
                   nullptr);
}

void on_poll_timer(ngx_event_t* ev) noexcept
{
    auto* poll = static_cast<Poll*>(ev->data);
    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }
    try {
        poll_redis(poll);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, poll->log, 0, "ratelimit: out of memory polling runtime limits");
    }
    if (!ev->timer_set) {
        ngx_add_timer(ev, kPollMs / 2);  // every worker ticks; one per kPollMs polls
    }
}

}  // namespace


void start_override_poll(ngx_cycle_t* cycle, MainConf* mcf) noexcept
{
    if (zone_overrides(mcf->zone) == nullptr) {
        return;
    }
    auto* poll = static_cast<Poll*>(ngx_pcalloc(cycle->pool, sizeof(Poll)));
    if (poll == nullptr) {
        return;
    }
    poll->mcf = mcf;
    poll->log = cycle->log;
    poll->ev.handler = on_poll_timer;
    poll->ev.data = poll;
    poll->ev.log = cycle->log;
    poll->ev.cancelable = 1;
    poll_state = poll;
    ngx_add_timer(&poll->ev, 1);
}


void stop_override_poll() noexcept
{
    if (poll_state && poll_state->ev.timer_set) {
        ngx_del_timer(&poll_state->ev);
    }
    poll_state = nullptr;
}


void apply_written_override(MainConf* mcf, const ngx_str_t& policy, std::string_view key,
                            const ratelimit::Override* value, int64_t version)
{
    OverridesShared* sh = zone_overrides(mcf->zone);
    std::string field = field_of(policy, key);
    ngx_slab_pool_t* shpool = pool_of(mcf);
    bool stored = true;
    ngx_shmtx_lock(&shpool->mutex);
    // Past it, the poll applied this change or a later one: that stands.
    if (int64_t(sh->version) < version) {
        set_locked(mcf, sh, field, value, &stored);
    }
    ngx_shmtx_unlock(&shpool->mutex);
    (void) stored;
}

}  // namespace ngx_ratelimit
