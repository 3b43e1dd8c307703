// Redis keys for buckets: "<prefix><policy>:<key>", bounded in length.
#pragma once

#include <string>
#include <string_view>

namespace ratelimit {

constexpr size_t kMaxKeyBytes = 128;

// Appends "<prefix><policy>:<key>" to `out`. A `key` longer than kMaxKeyBytes is replaced
// by "#sha1:" and its 40-digit SHA-1, so no client controls the length of a Redis key; its
// {hash tag}, if any, stays in front of the digest (see cluster_map.h). Binary keys are kept
// byte for byte.
void append_bucket_key(std::string& out, std::string_view prefix, std::string_view policy,
                       std::string_view key);

std::string bucket_key(std::string_view prefix, std::string_view policy, std::string_view key);

// True when two keys of one policy name one bucket: equal, or one too long to keep and the other
// the very text it is replaced by ("#sha1:<digest>"). Allocates only in that last case.
bool same_bucket_key(std::string_view a, std::string_view b);

}  // namespace ratelimit
