#include "ratelimit/key.h"

#include "ratelimit/cluster_map.h"
#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

// The {hash tag} of a long key, kept in front of its digest so that the bucket stays in the
// slot Redis Cluster gives the key; a tag itself too long is replaced by its own digest, which
// keeps keys sharing it together and the key short.
void append_tag_of(std::string& out, std::string_view key)
{
    std::string_view tag = hash_tag(key);
    if (tag.size() == key.size()) {
        return;
    }
    out += '{';
    if (tag.size() > kMaxKeyBytes) {
        out += "#sha1:";
        out += sha1_hex(tag);
    } else {
        out.append(tag);
    }
    out += '}';
}

}  // namespace

void append_bucket_key(std::string& out, std::string_view prefix, std::string_view policy,
                       std::string_view key)
{
    out.append(prefix);
    out.append(policy);
    out += ':';
    if (key.size() > kMaxKeyBytes) {
        append_tag_of(out, key);
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
