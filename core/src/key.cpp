#include "ratelimit/key.h"

#include "ratelimit/sha1.h"

namespace ratelimit {

void append_bucket_key(std::string& out, std::string_view prefix, std::string_view policy,
                       std::string_view key)
{
    out.append(prefix);
    out.append(policy);
    out += ':';
    if (key.size() > kMaxKeyBytes) {
        out += "#sha1:";
        out += sha1_hex(key);
    } else {
        out.append(key);
    }
}

std::string bucket_key(std::string_view prefix, std::string_view policy, std::string_view key)
{
    std::string out;
    append_bucket_key(out, prefix, policy, key);
    return out;
}

}  // namespace ratelimit
