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

bool same_bucket_key(std::string_view a, std::string_view b)
{
    bool a_long = a.size() > kMaxKeyBytes;
    if (a_long == (b.size() > kMaxKeyBytes)) {
        return a == b;  // both kept as they are, or both replaced by digests of themselves
    }
    std::string_view kept = a_long ? b : a;
    if (kept.find("#sha1:") == std::string_view::npos) {
        return false;  // every replacement holds one
    }
    std::string replaced;
    append_bucket_key(replaced, {}, {}, a_long ? a : b);
    return std::string_view(replaced).substr(1) == kept;  // past the ':' after the policy
}

}  // namespace ratelimit
