// A request's state while the module decides it, shared by the request path
// (ngx_ratelimit_handler.cpp) and the header filter and variables (ngx_ratelimit_filter.cpp).
#pragma once

#include <type_traits>

#include "ngx_ratelimit.h"

namespace ngx_ratelimit {

enum class Phase { waiting, resumed, delaying, done };

// What runtime limits did to one limit of a request (ngx_ratelimit_overrides.h).
enum class OverrideUse : u_char {
    none,       // the configured bucket
    policy,     // the policy's runtime change
    key,        // the key's override (rate and/or burst)
    unlimited,  // the key is exempt: the limit is dropped
    block,      // the key is blocked: rejected on the node
};

// One evaluated limit of this request; buckets named twice are merged (costs summed).
struct RequestLimit {
    Policy* policy;
    ngx_str_t key;
    ngx_str_t id;        // the key's id in its bucket's names (ratelimit::key_id), made once
    int64_t cost;
    bool lacked_tokens;  // the request was rejected for want of this bucket's tokens
    int64_t delay;       // delay=N in force for this limit, or kNoDelay
    OverrideUse use;
    ratelimit::BucketParams params;  // in force for this request: every step decides with it
};

// Lives in the request pool, inside the pool cleanup entry that finds it again after an
// internal redirect (which clears module contexts).
struct RequestCtx {
    ngx_http_request_t* r;
    Phase phase;
    ngx_int_t rc;                 // what the handler returns once resumed
    Status status;
    bool has_report;
    bool rejected;                // with the configured status (not dry run)
    bool on_node;                 // rejected on the node (rejection memory, a block), without Redis
    bool exempt;                  // some limit was dropped: its key is `unlimited`
    bool set_aside;               // the rejection memory set its cost aside until Redis decides
    ngx_str_t policy;             // the most restrictive limit, for headers and variables
    int64_t limit;
    int64_t remaining;
    int64_t reset;
    int64_t retry_after;
    int64_t window;
    RequestLimit* limits;
    ngx_uint_t nlimits;
    uint64_t pending;             // the batcher's id while Redis decides, else 0
    ngx_event_t resume_ev;
    int64_t wait_ms;              // delay=: how long it waits (waited) before it goes on
    ngx_uint_t wait_limit;        // the limit whose wait is the longest
};

static_assert(std::is_trivially_destructible<RequestCtx>::value, "lives in a pool");

// The request's ctx, recovered after an internal redirect; nullptr if it has none.
RequestCtx* find_ctx(ngx_http_request_t* r) noexcept;

const ngx_str_t& status_name(Status status) noexcept;

}  // namespace ngx_ratelimit
