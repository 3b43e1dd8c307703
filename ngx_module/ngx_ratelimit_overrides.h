// Limits changed at runtime through ratelimit_api (limits/ and policies/), as the node holds
// them: a table in the module's zone that every worker reads on the request path. In Redis
// mode Redis holds them and one worker per node at a time catches the zone up with it every
// kPollMs (ratelimit/override_store.h); in local mode the zone is where they live.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_request.h"
#include "ratelimit/overrides.h"

namespace ngx_ratelimit {

constexpr ngx_msec_t kPollMs = 250;

struct OverridesShared;

// Allocates the table; called by init_zone when the zone is new.
OverridesShared* create_overrides_shared(ngx_slab_pool_t* shpool);

// Binds every configured policy to its runtime changes in the zone, by name (init_module).
void bind_overrides(ngx_cycle_t* cycle, MainConf* mcf) noexcept;

// The request path: each limit's bucket in force (`params`) and what made it (`use`), read in
// one hold of the zone's lock, so a request sees one state of the table. A policy without
// runtime changes costs one check. `count`: the requests an override decided are counted.
void apply_overrides(MainConf* mcf, RequestLimit* limits, ngx_uint_t n, bool count) noexcept;

// What the API reads and writes (under the zone's lock inside). `key` empty: the policy's
// change. set_override returns the value it replaced; nullptr `value` removes.
std::optional<ratelimit::Override> find_override(MainConf* mcf, const ngx_str_t& policy,
                                                 std::string_view key);
std::optional<ratelimit::Override> set_override(MainConf* mcf, const ngx_str_t& policy,
                                                std::string_view key,
                                                const ratelimit::Override* value, bool* stored);

// One page of a policy's key overrides, in the table's order, and how many it has.
struct ListedOverride {
    std::string key;
    ratelimit::Override value;
};
std::vector<ListedOverride> list_overrides(MainConf* mcf, const ngx_str_t& policy,
                                           size_t offset, size_t limit, size_t* total);

// Counters for status and metrics.
struct OverrideCounts {
    int64_t keys = 0;          // key overrides in force
    bool changed = false;      // a runtime change of the policy is in force
    ratelimit::Override change;
    int64_t decided_key = 0;   // requests decided with a key override's rate/burst
    int64_t unlimited = 0;     // requests a key's `unlimited` exempted
    int64_t blocked = 0;       // requests a key's `block` rejected
};
OverrideCounts override_counts(const Policy& policy);
// The Redis version this node has applied, and overrides that found no room in the zone.
int64_t overrides_version(MainConf* mcf);
int64_t overrides_dropped(MainConf* mcf);

// Redis mode: the worker's poll of Redis (started with its Redis client, stopped before it).
void start_override_poll(ngx_cycle_t* cycle, MainConf* mcf) noexcept;
void stop_override_poll() noexcept;
// A change this node wrote at `version`: in force here at once, unless the poll got past it.
void apply_written_override(MainConf* mcf, const ngx_str_t& policy, std::string_view key,
                            const ratelimit::Override* value, int64_t version);

}  // namespace ngx_ratelimit
