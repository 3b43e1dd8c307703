// The Redis side of the token bucket: one Lua script decides a whole batch of requests, each
// with all its limits, atomically and in arrival order, with time from Redis (`TIME`),
// mirroring token_bucket.h exactly.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ratelimit/resp.h"
#include "ratelimit/token_bucket.h"

struct redisReply;

namespace ratelimit {

// Stored bucket (a Redis string), version 2:  "v2 <level_units> <period_ms> <stamp_ms>".
// Readers accept any "v<N>" with N >= 2 and ignore fields after the fourth, so a later version
// may append fields. Version 1 (unversioned, before 0.3): "<level_units> <stamp_ms>", read in
// the reader's own period. A level written under another period is converted, tokens kept,
// capped at the reader's burst (see convert_level in token_bucket.h). PX is the time until the
// bucket is full again; a bucket that is full is deleted.
//
// Two forms of one script: keys declared (KEYS, all of one slot in Redis Cluster), and
// node-wide (Redis Cluster on Redis 7+: no declared keys, so one call may read and write keys
// of several slots served by one node).
enum class ScriptForm { keys_declared, node_wide };
const std::string& script_source(ScriptForm form = ScriptForm::keys_declared);
const std::string& script_sha1(ScriptForm form = ScriptForm::keys_declared);  // 40 hex digits

struct BatchReply;

// One limit of one request.
struct ScriptLimit {
    std::string_view key;  // full Redis key (see key.h)
    BucketParams params;
    int64_t cost = 1;
};

// The requests of one script call. Each key is sent (and read, and written) once however many
// requests name it; requests are decided in the order they were added, each all or nothing,
// exactly as if decided one by one. Buffers are kept across clear(): no allocation once warm.
class ScriptBatch {
public:
    void clear() noexcept;
    // Adds one request, or nothing if it throws (std::bad_alloc). Its keys must be distinct
    // (the caller merges a bucket named twice into one limit whose cost is the sum). Returns
    // the request's index.
    size_t add_request(const ScriptLimit* limits, size_t n);

    size_t requests() const noexcept;
    size_t keys() const noexcept;
    size_t limits_of(size_t request) const noexcept;

    // The RESP-encoded command for everything added, appended to `out`:
    // EVALSHA <sha1> <K> <keys...> <argv...>   (or EVAL <source> ...); node-wide:
    // EVALSHA <sha1> 0 <K> <keys...> <argv...>.
    void append_evalsha(std::string& out, ScriptForm form = ScriptForm::keys_declared) const;
    void append_eval(std::string& out, ScriptForm form = ScriptForm::keys_declared) const;

    // The limits of one request as added (merged per key); valid until the batch changes.
    void request_limits(size_t request, std::vector<ScriptLimit>& out) const;

private:
    // Layout is the implementer's (see script.cpp).
    struct Key {
        std::string name;
        BucketParams params;           // of the first request that named the key
    };
    std::vector<Key> keys_;
    size_t nkeys_ = 0;                 // keys_[0..nkeys_) are in use (entries are reused)
    std::vector<uint32_t> requests_;   // per request: index of its first entry in limits_
    struct Limit {
        uint32_t key;                  // index into keys_
        int64_t cost;
    };
    std::vector<Limit> limits_;
    // Open addressing over keys_ (linear probing, size a power of two, at most half full).
    // A slot is in use when its generation is the batch's: clear() empties all in O(1).
    struct Slot {
        uint32_t generation = 0;
        uint32_t key = 0;
    };
    std::vector<Slot> slots_;
    uint32_t generation_ = 1;

    uint32_t key_index(std::string_view name, const BucketParams& params);
    void grow_slots();
    void index_keys() noexcept;
    void append_command(std::string& out, std::string_view verb, std::string_view script,
                        ScriptForm form) const;
    bool simple(size_t request) const noexcept;
    mutable std::vector<uint32_t> key_sets_;  // per key: its parameter set, while encoding
    friend bool parse_batch_reply(const redisReply*, const ScriptBatch&, BatchReply&,
                                  std::string&);
};

// Turns "EVALSHA <sha> ..." into the equivalent "EVAL <script> ..." (the NOSCRIPT fallback).
// Returns an empty string if `evalsha` is not a command made by ScriptBatch::append_evalsha.
std::string evalsha_to_eval(std::string_view evalsha);

// The script's reply to a batch. Reused across calls: parse_batch_reply keeps its buffers.
struct BatchReply {
    int64_t now_ms = 0;                 // Redis time of the call
    std::vector<uint8_t> allowed;       // per request
    std::vector<uint32_t> first;        // per request: index of its first level in `levels`
    std::vector<int64_t> levels;        // per limit of each request, in add_request order:
                                        // the level after the decision (cost taken if allowed)
};

// Parses the reply to `batch`'s command. Returns false (and sets `error`) on an error reply
// or a reply of the wrong shape.
bool parse_batch_reply(const redisReply* reply, const ScriptBatch& batch, BatchReply& out,
                       std::string& error);

}  // namespace ratelimit
