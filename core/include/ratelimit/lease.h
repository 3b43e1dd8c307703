// Token leases for hot keys: a node that sees a key often takes a batch of tokens from the
// shared bucket in one script call (core/lua/lease.lua) and decides that key's requests from
// it without Redis until the lease ends; what is left goes back. Leased tokens have left the
// bucket, so no more requests pass than the bucket gave out; what leases cost is tokens one
// node holds while another is refused (the under-admission bound, lease_hold_bound).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "ratelimit/policy.h"

struct redisReply;

namespace ratelimit {

constexpr int64_t kMinLeaseMs = 1;
constexpr int64_t kMaxLeaseMs = 10000;
// A key's requests are counted over windows of this many lease periods.
constexpr int64_t kLeaseWindows = 4;
// Hot: more than this many requests per lease period at the node, over the last window.
constexpr int64_t kHotPerLease = 2;
// A lease is at most 1/kBurstShare of the burst (a fair share among nodes) ...
constexpr int64_t kBurstShare = 8;
// ... and at most 1/kLevelShare of the bucket's whole tokens when taken, so leases shrink as
// the bucket empties; below kMinGrant tokens none is given: decisions are per request again.
constexpr int64_t kLevelShare = 4;
constexpr int64_t kMinGrant = 2;

// "50ms", "1s": a duration within [kMinLeaseMs, kMaxLeaseMs]; nullopt otherwise.
std::optional<int64_t> parse_lease_ms(std::string_view text);

// A key's recent rate at the node: requests counted per window of kLeaseWindows lease periods.
struct LeaseRate {
    int64_t window_start_ms = 0;
    int64_t count = 0;       // requests in the current window
    int64_t last_count = 0;  // in the window before (0 if it ended long ago)
};

// Counts one request seen at `now_ms` (a monotonic clock).
void note_request(LeaseRate& rate, int64_t now_ms, int64_t lease_ms);

// More than kHotPerLease requests per lease period over the last whole window.
bool is_hot(const LeaseRate& rate, int64_t now_ms, int64_t lease_ms);

// Tokens a node asks for: what its recent rate uses in one lease period (`cost` tokens a
// request), never more than its fair share of the burst; 0: not worth a lease.
int64_t lease_want(const BucketParams& params, const LeaseRate& rate, int64_t now_ms,
                   int64_t lease_ms, int64_t cost);

// What a bucket at `level_units` grants to a request for `want` tokens (lease.lua computes the
// same): min(want, whole tokens / kLevelShare), or 0 when that is under kMinGrant.
int64_t lease_grant(const BucketParams& params, int64_t level_units, int64_t want);

// The most tokens `nodes` nodes hold in leases of one bucket at any moment: each node holds at
// most one lease per bucket, of at most burst / kBurstShare tokens. Over any interval, the
// requests that pass are at least burst + rate x t - 1 - this bound (plus the tokens of leases
// lost with a node or with Redis, which come back only as the bucket refills).
int64_t lease_hold_bound(const BucketParams& params, int64_t nodes);

// The lease script: KEYS[1] the bucket; ARGV count, period, burst, tokens returned, tokens
// wanted. Returns the unused tokens of a lease (capped at the burst), then grants as
// lease_grant. Reply: "<granted> <level after, in units> <Redis time ms>".
const std::string& lease_script();
std::string format_lease_call(std::string_view key, const BucketParams& params,
                              int64_t returned, int64_t want);

struct LeaseReply {
    int64_t granted = 0;
    int64_t level_units = 0;
    int64_t now_ms = 0;
};
// Reads the script's reply text; nullopt on anything else.
std::optional<LeaseReply> parse_lease_reply(std::string_view text);
// The same from a hiredis reply (a bulk string); nullopt on anything else, an error included.
std::optional<LeaseReply> read_lease_reply(const redisReply* reply);

}  // namespace ratelimit
