// Redis keys for buckets: "<prefix><policy>:<key id>", the key id bounded in length.
#pragma once

#include <array>
#include <string>
#include <string_view>

namespace ratelimit {

// The longest key id: every buffer holding one is sized from this.
constexpr size_t kMaxKeyBytes = 128;

// Room for a key id that is not the key itself.
using KeyIdBuffer = std::array<char, kMaxKeyBytes>;

// The id of `key` in its bucket's Redis key, at most kMaxKeyBytes: the key itself (returned
// without a copy) if it is that short; otherwise "#sha1:" and its 40-digit SHA-1, written into
// `scratch`, so no client controls the length of a Redis key. A long key's {hash tag}, if any,
// stays in front of the digest (see cluster_map.h), itself digested if the whole would not fit.
// A short id is used as it is, so the id of a long key names the same bucket given as a key.
// Binary keys are kept byte for byte.
std::string_view key_id(std::string_view key, KeyIdBuffer& scratch);

// Appends "<prefix><policy>:<key id>" to `out`.
void append_bucket_key(std::string& out, std::string_view prefix, std::string_view policy,
                       std::string_view key);
// The same from a key id already made (key_id): "<prefix><policy>:<id>".
void append_bucket_id(std::string& out, std::string_view prefix, std::string_view policy,
                      std::string_view id);

std::string bucket_key(std::string_view prefix, std::string_view policy, std::string_view key);

}  // namespace ratelimit
