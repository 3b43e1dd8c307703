#include "ngx_ratelimit_lease.h"

#include <algorithm>
#include <string>

#include "ngx_ratelimit_zone.h"
#include "ratelimit/batcher.h"

namespace ngx_ratelimit {
namespace {

constexpr size_t kMaxLeaseKey = 256;  // longer Redis keys are decided per request
constexpr size_t kProbe = 8;          // slots a key may take, from its hash on
constexpr int64_t kSweepMs = 100;
constexpr int64_t kTakeTimeoutMs = 5000;  // a take whose worker went away is forgotten

struct LeaseSlot {
    uint32_t hash;
    uint16_t len;  // of key; 0: free
    u_char key[kMaxLeaseKey];
    int64_t seen_ms;
    ratelimit::LeaseRate rate;
    ratelimit::BucketParams params;
    int64_t lease_ms;
    int64_t tokens;        // whole tokens left in the lease
    int64_t expires_ms;    // the lease may be spent before then
    int64_t level_units;   // the bucket's level its grant reply showed
    int64_t next_take_ms;  // no lease asked for before then (after none was given)
    int64_t taking_until;  // a take is on its way until then
    uint64_t generation;   // of the last take: a reply to an older one is given back
    PolicyStats* stats;    // in the zone: the same in every worker and across reload
};

struct LeaseTable {
    LeaseSlot slots[kLeaseSlots];
    uint64_t generations;
};

// A call to send once the zone's lock is released.
struct Take {
    std::string key;
    ratelimit::BucketParams params;
    int64_t returned;
    int64_t want;
    int64_t lease_ms;
    uint64_t generation;
    PolicyStats* stats;
};

class Locked {
public:
    explicit Locked(ngx_shm_zone_t* zone)
    {
        table_ = static_cast<LeaseTable*>(zone_leases(zone, &shpool_));
        if (table_) {
            ngx_shmtx_lock(&shpool_->mutex);
        }
    }
    ~Locked()
    {
        if (table_) {
            ngx_shmtx_unlock(&shpool_->mutex);
        }
    }
    Locked(const Locked&) = delete;
    Locked& operator=(const Locked&) = delete;
    LeaseTable* table() const { return table_; }

private:
    ngx_slab_pool_t* shpool_ = nullptr;
    LeaseTable* table_ = nullptr;
};

uint32_t hash_of(std::string_view key)
{
    return ngx_crc32_short((u_char*) key.data(), key.size());
}

bool holds(const LeaseSlot& s, uint32_t hash, std::string_view key)
{
    return s.len == key.size() && s.hash == hash && ngx_memcmp(s.key, key.data(), key.size()) == 0;
}

bool taking(const LeaseSlot& s, int64_t now)
{
    return now < s.taking_until;
}

LeaseSlot* find(LeaseTable* t, std::string_view key)
{
    uint32_t hash = hash_of(key);
    for (size_t i = 0; i < kProbe; i++) {
        LeaseSlot& s = t->slots[(hash + i) % kLeaseSlots];
        if (holds(s, hash, key)) {
            return &s;
        }
    }
    return nullptr;
}

// The key's slot, or a new one in place of a free slot or of the least recently seen one
// that holds no tokens and waits for no take; nullptr when there is none.
LeaseSlot* find_or_add(LeaseTable* t, const LeaseLimit& limit, int64_t now)
{
    if (limit.redis_key.size() > kMaxLeaseKey) {
        return nullptr;
    }
    uint32_t hash = hash_of(limit.redis_key);
    LeaseSlot* victim = nullptr;
    for (size_t i = 0; i < kProbe; i++) {
        LeaseSlot& s = t->slots[(hash + i) % kLeaseSlots];
        if (holds(s, hash, limit.redis_key)) {
            s.params = limit.params;
            s.lease_ms = limit.lease_ms;
            s.stats = limit.stats;
            return &s;
        }
        if (s.len == 0) {
            victim = &s;
            break;
        }
        if (s.tokens == 0 && !taking(s, now) && (victim == nullptr || s.seen_ms < victim->seen_ms)) {
            victim = &s;
        }
    }
    if (victim) {
        *victim = LeaseSlot{};
        victim->hash = hash;
        victim->len = uint16_t(limit.redis_key.size());
        ngx_memcpy(victim->key, limit.redis_key.data(), limit.redis_key.size());
        victim->params = limit.params;
        victim->lease_ms = limit.lease_ms;
        victim->stats = limit.stats;
    }
    return victim;
}

bool usable(const LeaseSlot& s, int64_t cost, int64_t now)
{
    return now < s.expires_ms && s.tokens >= cost;
}

// Ends the slot's lease (its tokens go back in `take`) and asks for a new one when the key is
// hot. False: nothing to send.
bool plan_take(LeaseTable* t, LeaseSlot& s, int64_t cost, int64_t now, Take& take)
{
    if (taking(s, now)) {
        return false;
    }
    int64_t want = now >= s.next_take_ms
                       ? ratelimit::lease_want(s.params, s.rate, now, s.lease_ms, cost) : 0;
    if (want == 0 && (s.tokens == 0 || now < s.expires_ms)) {
        return false;
    }
    take = Take{std::string(reinterpret_cast<char*>(s.key), s.len), s.params, s.tokens, want,
                s.lease_ms, ++t->generations, s.stats};
    s.tokens = 0;
    s.expires_ms = 0;
    s.generation = take.generation;
    s.taking_until = want > 0 ? now + kTakeTimeoutMs : 0;
    return true;
}

void on_lease_reply(ngx_shm_zone_t* zone, ratelimit::CallRouter* router, const Take& take,
                    int64_t sent_ms, const ratelimit::CallResult& result) noexcept;

// Sends one lease call (a take, a give-back, or both); a call not sent loses its returned
// tokens, as a lost reply would (under-admission only).
void send(ngx_shm_zone_t* zone, ratelimit::CallRouter* router, Take take) noexcept
{
    try {
        int64_t sent_ms = ratelimit::monotonic_ms();
        std::string command = ratelimit::format_lease_call(take.key, take.params, take.returned,
                                                           take.want);
        int group = router->slot_group_of(take.key);
        auto submitted = router->submit(
            group, std::move(command),
            [zone, router, take, sent_ms](const ratelimit::CallResult& result) {
                on_lease_reply(zone, router, take, sent_ms, result);
            },
            nullptr);
        if (submitted.status == ratelimit::CallStatus::ok) {
            count_lease_call(take.stats);
        } else {
            ratelimit::CallResult failed;
            failed.status = submitted.status;
            on_lease_reply(zone, router, take, sent_ms, failed);
        }
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "ratelimit: lease call not sent");
    }
}

void on_lease_reply(ngx_shm_zone_t* zone, ratelimit::CallRouter* router, const Take& take,
                    int64_t sent_ms, const ratelimit::CallResult& result) noexcept
{
    auto reply = result.status == ratelimit::CallStatus::ok
                     ? ratelimit::read_lease_reply(result.reply) : std::nullopt;
    if (!reply && result.status == ratelimit::CallStatus::ok) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0, "ratelimit: unexpected reply to a lease");
    }
    if (reply) {
        count_lease_reply(take.stats, reply->granted, take.returned);
    }
    if (take.want == 0) {
        return;  // tokens given back: nothing was granted
    }
    int64_t granted = reply ? reply->granted : 0;
    int64_t now = ratelimit::monotonic_ms();
    bool kept = false;
    {
        Locked locked(zone);
        LeaseSlot* s = locked.table() ? find(locked.table(), take.key) : nullptr;
        if (s && s->generation == take.generation) {
            s->taking_until = 0;
            if (granted > 0) {
                // Counted from when the call left: the lease never outlives `lease` at Redis.
                s->tokens = granted;
                s->expires_ms = sent_ms + take.lease_ms;
                s->level_units = reply->level_units;
                kept = true;
            } else {
                s->next_take_ms = now + take.lease_ms;
            }
        }
    }
    if (granted > 0 && !kept) {
        // The key left the table, or a newer take replaced this one: give the grant back.
        send(zone, router,
             Take{take.key, take.params, granted, 0, take.lease_ms, 0, take.stats});
    }
}

// The outcome of a request decided from a lease: the bucket as this node knows it, the
// tokens left in its lease on top of the level the grant showed.
ratelimit::LimitOutcome lease_outcome(const LeaseSlot& s, int64_t cost)
{
    int64_t level = std::min(s.params.capacity_units(),
                             s.level_units + s.tokens * s.params.token_units());
    return ratelimit::outcome_after(s.params, cost, level, true);
}

void sweep(ngx_shm_zone_t* zone, ratelimit::CallRouter* router) noexcept
{
    Take takes[16];
    size_t n = 0;
    {
        Locked locked(zone);
        LeaseTable* t = locked.table();
        if (t == nullptr) {
            return;
        }
        int64_t now = ratelimit::monotonic_ms();
        for (LeaseSlot& s : t->slots) {
            if (n == std::size(takes)) {
                break;
            }
            // A key still seen gives its lease back with its next take, in the same call.
            if (s.len != 0 && s.tokens > 0 && now >= s.expires_ms + s.lease_ms
                && !taking(s, now))
            {
                try {
                    takes[n] = Take{std::string(reinterpret_cast<char*>(s.key), s.len),
                                    s.params, s.tokens, 0, s.lease_ms, ++t->generations,
                                    s.stats};
                } catch (...) {
                    break;
                }
                s.tokens = 0;
                s.generation = takes[n].generation;
                n++;
            }
        }
    }
    for (size_t i = 0; i < n; i++) {
        send(zone, router, std::move(takes[i]));
    }
}


// Whether limits[i] is the first of the request's limits under its policy's counters.
bool first_of_its_policy(const LeaseLimit* limits, size_t i)
{
    for (size_t j = 0; j < i; j++) {
        if (limits[j].stats == limits[i].stats) {
            return false;
        }
    }
    return true;
}


}  // namespace


size_t lease_table_bytes() noexcept
{
    return sizeof(LeaseTable);
}


void* create_lease_table(ngx_slab_pool_t* shpool) noexcept
{
    auto* t = static_cast<LeaseTable*>(ngx_slab_calloc_locked(shpool, sizeof(LeaseTable)));
    return t;
}


int64_t leased_keys(ngx_shm_zone_t* zone, const PolicyStats* stats) noexcept
{
    Locked locked(zone);
    LeaseTable* t = locked.table();
    if (t == nullptr || stats == nullptr) {
        return 0;
    }
    int64_t now = ratelimit::monotonic_ms();
    int64_t n = 0;
    for (const LeaseSlot& s : t->slots) {
        n += s.len != 0 && s.stats == stats && usable(s, 1, now) ? 1 : 0;
    }
    return n;
}


bool lease_decide(ngx_shm_zone_t* zone, ratelimit::CallRouter* router, const LeaseLimit* limits,
                  size_t n, ratelimit::LimitOutcome* outcomes)
{
    if (router == nullptr) {
        return false;
    }
    Take takes[kMaxLimitsPerRequest];
    size_t ntakes = 0;
    bool decided = false;
    {
        Locked locked(zone);
        LeaseTable* t = locked.table();
        if (t == nullptr) {
            return false;
        }
        int64_t now = ratelimit::monotonic_ms();
        LeaseSlot* slots[kMaxLimitsPerRequest];
        bool all = true;
        for (size_t i = 0; i < n; i++) {
            slots[i] = limits[i].lease_ms > 0 ? find_or_add(t, limits[i], now) : nullptr;
            if (slots[i]) {
                slots[i]->seen_ms = now;
                ratelimit::note_request(slots[i]->rate, now, limits[i].lease_ms);
            }
            all = all && slots[i] && usable(*slots[i], limits[i].cost, now);
        }
        if (all) {
            for (size_t i = 0; i < n; i++) {
                slots[i]->tokens -= limits[i].cost;
                outcomes[i] = lease_outcome(*slots[i], limits[i].cost);
                if (first_of_its_policy(limits, i)) {
                    count_lease_decision(limits[i].stats);  // one request, once per policy
                }
            }
            decided = true;
        }
        for (size_t i = 0; i < n; i++) {
            if (slots[i] && !usable(*slots[i], limits[i].cost, now)
                && plan_take(t, *slots[i], limits[i].cost, now, takes[ntakes]))
            {
                ntakes++;
            }
        }
    }
    for (size_t i = 0; i < ntakes; i++) {
        send(zone, router, std::move(takes[i]));
    }
    return decided;
}


std::unique_ptr<ratelimit::Timer> start_lease_sweep(ratelimit::EventLoop& loop,
                                                    ratelimit::CallRouter& router,
                                                    ngx_shm_zone_t* zone)
{
    ngx_slab_pool_t* shpool;
    if (zone_leases(zone, &shpool) == nullptr) {
        return nullptr;
    }
    auto timer = std::make_shared<ratelimit::Timer*>(nullptr);
    auto made = loop.make_timer(
        [zone, &router, timer] {
            sweep(zone, &router);
            (*timer)->start(kSweepMs);
        },
        ratelimit::EventLoop::TimerKind::background);
    *timer = made.get();
    made->start(kSweepMs);
    return made;
}

}  // namespace ngx_ratelimit
