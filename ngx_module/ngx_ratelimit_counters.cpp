// Counting decisions and Redis calls in the zone: atomics only on the request path; the top
// rejected keys take a try-lock and skip the update when another worker holds it.

#include "ngx_ratelimit_counters.h"

#include <signal.h>

#include <algorithm>
#include <cerrno>

#include "ngx_ratelimit_zone.h"
#include "ratelimit/sha1.h"

namespace ngx_ratelimit {
namespace {

// Set in the master by bind_counters, inherited by the workers it forks.
ApiShared* shared = nullptr;


void add(ngx_atomic_t& counter, int64_t n = 1)
{
    ngx_atomic_fetch_add(&counter, ngx_atomic_int_t(n));
}


PolicyStats* find_stats(ApiShared* api, const ngx_str_t& name)
{
    for (PolicyStats* s = api->policies; s; s = s->next) {
        if (s->name_len == name.len && ngx_memcmp(s->name, name.data, name.len) == 0) {
            return s;
        }
    }
    return nullptr;
}


PolicyStats* create_stats(ngx_slab_pool_t* shpool, ApiShared* api, const ngx_str_t& name)
{
    auto* s = static_cast<PolicyStats*>(
        ngx_slab_calloc_locked(shpool, offsetof(PolicyStats, name) + name.len));
    if (s == nullptr) {
        return nullptr;
    }
    s->name_len = name.len;
    ngx_memcpy(s->name, name.data, name.len);
    // Without room for the sketch the policy is still counted, only without top keys.
    s->top = static_cast<TopKeys*>(ngx_slab_calloc_locked(shpool, sizeof(TopKeys)));
    s->next = api->policies;
    api->policies = s;
    return s;
}


bool try_lock(TopKeys* top)
{
    return ngx_atomic_cmp_set(&top->lock, 0, ngx_atomic_uint_t(ngx_pid));
}


void unlock(TopKeys* top)
{
    ngx_atomic_cmp_set(&top->lock, ngx_atomic_uint_t(ngx_pid), 0);
}


// For writers: the lock is held for a few dozen nanoseconds, so wait briefly rather than drop
// a rejection whenever two workers reject at once; give up only on a holder that was preempted.
bool lock_for_writing(TopKeys* top)
{
    for (int i = 0; i < 1024; i++) {
        if (try_lock(top)) {
            return true;
        }
        ngx_cpu_pause();
    }
    ngx_sched_yield();
    return try_lock(top);
}


// For readers: waits a little for the lock, and takes it over from a holder that died.
bool lock_for_reading(TopKeys* top)
{
    for (int i = 0; i < 2000; i++) {
        if (try_lock(top)) {
            return true;
        }
        ngx_atomic_uint_t holder = top->lock;
        if (holder != 0 && kill(pid_t(holder), 0) == -1 && errno == ESRCH) {
            ngx_atomic_cmp_set(&top->lock, holder, 0);
            continue;
        }
        ngx_sched_yield();
    }
    return false;
}


void space_saving_add(TopSlot* slot, std::string_view key)
{
    if (key.size() > sizeof(TopEntry::key)) {
        return;  // key_id() makes none: never copied past the entry
    }
    TopEntry* min = nullptr;
    for (uint32_t i = 0; i < slot->used; i++) {
        TopEntry& e = slot->entries[i];
        if (e.len == key.size() && ngx_memcmp(e.key, key.data(), key.size()) == 0) {
            e.count++;
            return;
        }
        if (min == nullptr || e.count < min->count) {
            min = &e;
        }
    }
    TopEntry* e = slot->used < kTopEntries ? &slot->entries[slot->used++] : min;
    // Space-Saving: a newcomer replaces the least counted key and inherits its count.
    e->count = e == min ? e->count + 1 : 1;
    e->len = uint16_t(key.size());
    ngx_memcpy(e->key, key.data(), key.size());
}


void remember_rejected_key(TopKeys* top, const ngx_str_t& key)
{
    // The id in the Redis key, so the key shown reaches the same bucket.
    ratelimit::KeyIdBuffer scratch;
    std::string_view id = ratelimit::key_id(
        std::string_view(reinterpret_cast<const char*>(key.data), key.len), scratch);
    if (!lock_for_writing(top)) {
        return;  // its holder was preempted: this rejection goes uncounted here
    }
    int64_t minute = int64_t(ngx_time()) / 60;
    TopSlot* slot = &top->slots[minute % kTopSlots];
    if (slot->minute != minute) {
        slot->minute = minute;
        slot->used = 0;
    }
    space_saving_add(slot, id);
    unlock(top);
}


bool is_rejection(Status status)
{
    return status == Status::rejected || status == Status::rejected_dry_run
           || status == Status::local_rejected;
}


// The histogram bucket of `ms` among `bounds` (then +Inf).
template <size_t N>
size_t histogram_bucket(const int64_t (&bounds)[N], int64_t ms)
{
    size_t i = 0;
    while (i < N && ms > bounds[i]) {
        i++;
    }
    return i;
}

}  // namespace


ApiShared* create_api_shared(ngx_slab_pool_t* shpool)
{
    return static_cast<ApiShared*>(ngx_slab_calloc(shpool, sizeof(ApiShared)));
}


const NodeStats* node_stats()
{
    return shared ? &shared->node : nullptr;
}


int64_t read_counter(const ngx_atomic_t& counter)
{
    return int64_t(counter);
}


ngx_int_t bind_counters(ngx_cycle_t* cycle, MainConf* mcf) noexcept
{
    // Runs from init_module, whose failure would end the master: never fails.
    ApiShared* api = zone_api(mcf->zone);
    auto* shpool = reinterpret_cast<ngx_slab_pool_t*>(mcf->zone->shm.addr);
    if (api == nullptr) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0, "ratelimit: zone without counters");
        return NGX_OK;
    }
    ngx_shmtx_lock(&shpool->mutex);
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        Policy& policy = policies[i];
        policy.stats = find_stats(api, policy.name);
        if (policy.stats == nullptr) {
            policy.stats = create_stats(shpool, api, policy.name);
        }
        if (policy.stats == nullptr || policy.stats->top == nullptr) {
            ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                          "ratelimit: zone \"ratelimit\" has no room for the %s of policy "
                          "\"%V\"", policy.stats ? "top keys" : "counters", &policy.name);
        }
    }
    ngx_shmtx_unlock(&shpool->mutex);
    shared = api;
    return NGX_OK;
}


void count_request(const CountedLimit* limits, size_t n, Status status,
                   bool decided_on_node) noexcept
{
    if (status == Status::none || status == Status::skipped) {
        return;
    }
    try {
        for (size_t i = 0; i < n; i++) {
            PolicyStats* stats = limits[i].policy->stats;
            if (stats == nullptr) {
                continue;
            }
            bool first = true;
            for (size_t j = 0; j < i && first; j++) {
                first = limits[j].policy->stats != stats;
            }
            if (first) {
                add(stats->by_status[size_t(status)]);
                if (decided_on_node && is_rejection(status)) {
                    add(stats->rejected_on_node);
                }
            }
            if (limits[i].lacked_tokens && is_rejection(status) && stats->top) {
                remember_rejected_key(stats->top, limits[i].key);
            }
        }
    } catch (...) {
        // Only the top keys may throw (a digest); a lost update is within their contract.
    }
}


void count_delay(const Policy* policy, int64_t wait_ms) noexcept
{
    if (PolicyStats* stats = policy->stats) {
        add(stats->delay_buckets[histogram_bucket(kDelayBoundsMs, wait_ms)]);
        add(stats->delay_sum_ms, wait_ms);
    }
}


void count_script_call(size_t decisions) noexcept
{
    if (shared) {
        add(shared->node.script_calls);
        add(shared->node.script_decisions, int64_t(decisions));
    }
}


void count_lease_call(PolicyStats* stats) noexcept
{
    if (stats) {
        add(stats->lease.calls);
    }
}


void count_lease_reply(PolicyStats* stats, int64_t granted, int64_t returned) noexcept
{
    if (stats == nullptr) {
        return;
    }
    if (granted > 0) {
        add(stats->lease.granted);
        add(stats->lease.tokens, granted);
    }
    add(stats->lease.returned, returned);
}


void count_lease_decision(PolicyStats* stats) noexcept
{
    if (stats) {
        add(stats->lease.decisions);
    }
}


void observe_redis(ratelimit::ClientObserver& observer)
{
    ApiShared* api = shared;
    if (api == nullptr) {
        return;
    }
    NodeStats* node = &api->node;
    observer.on_sent = [node] {
        add(node->calls);
        add(node->in_flight);
    };
    observer.on_done = [node](ratelimit::CallStatus status, int64_t latency_ms) {
        add(node->in_flight, -1);
        if (status == ratelimit::CallStatus::disconnected) {
            add(node->disconnects);
        } else if (status == ratelimit::CallStatus::timeout) {
            add(node->timeouts);  // failed by a connect timeout
        }
        if (status != ratelimit::CallStatus::ok) {
            return;
        }
        add(node->latency_buckets[histogram_bucket(kLatencyBoundsMs, latency_ms)]);
        add(node->latency_sum_ms, latency_ms);
        add(node->latency_count);
        node->last_latency_ms = ngx_atomic_uint_t(latency_ms);
    };
    observer.on_timeout = [node] { add(node->timeouts); };
    observer.on_error_reply = [node] { add(node->error_replies); };
    observer.on_connect = [node, first = true]() mutable {
        if (!first) {
            add(node->reconnects);
        }
        first = false;
    };
    auto log_state = std::move(observer.on_state);
    observer.on_state = [node, log_state, down = false](ratelimit::ClientState state) mutable {
        bool now_down = state == ratelimit::ClientState::down;
        if (now_down != down) {
            add(now_down ? node->breaker_opened : node->breaker_closed);
            add(node->workers_down, now_down ? 1 : -1);
        }
        down = now_down;
        if (log_state) {
            log_state(state);
        }
    };
}


void forget_worker_redis_state(ratelimit::ClientState state) noexcept
{
    if (shared && state == ratelimit::ClientState::down) {
        add(shared->node.workers_down, -1);
    }
}


std::vector<TopKey> top_keys(const PolicyStats* stats)
{
    std::vector<TopKey> keys;
    if (stats == nullptr || stats->top == nullptr) {
        return keys;
    }
    TopKeys* top = stats->top;
    int64_t minute = int64_t(ngx_time()) / 60;
    if (!lock_for_reading(top)) {
        return keys;
    }
    try {
        for (const TopSlot& slot : top->slots) {
            if (slot.minute <= minute - int64_t(kTopSlots) || slot.minute > minute) {
                continue;
            }
            for (uint32_t i = 0; i < slot.used; i++) {
                const TopEntry& e = slot.entries[i];
                std::string key(reinterpret_cast<const char*>(e.key), e.len);
                auto it = std::find_if(keys.begin(), keys.end(),
                                       [&](const TopKey& k) { return k.key == key; });
                if (it == keys.end()) {
                    keys.push_back({std::move(key), e.count});
                } else {
                    it->count += e.count;
                }
            }
        }
    } catch (...) {
        unlock(top);
        throw;
    }
    unlock(top);
    std::stable_sort(keys.begin(), keys.end(),
                     [](const TopKey& a, const TopKey& b) { return a.count > b.count; });
    if (keys.size() > kTopShown) {
        keys.resize(kTopShown);
    }
    return keys;
}

}  // namespace ngx_ratelimit
