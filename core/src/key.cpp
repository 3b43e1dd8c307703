#include "ratelimit/key.h"

#include <cstring>
#include <stdexcept>

#include "ratelimit/cluster_map.h"
#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

constexpr std::string_view kDigestMark = "#sha1:";
constexpr size_t kDigestBytes = kDigestMark.size() + 40;
// The longest {hash tag} kept as it is in front of a digest: "{" tag "}" digest fits.
constexpr size_t kMaxKeptTagBytes = kMaxKeyBytes - 2 - kDigestBytes;
static_assert(2 + kDigestBytes + kDigestBytes <= kMaxKeyBytes, "a digested tag must fit");

// Writes into a KeyIdBuffer, never past it.
class IdWriter {
public:
    explicit IdWriter(KeyIdBuffer& buffer) : buffer_(buffer) {}

    void put(std::string_view bytes)
    {
        if (bytes.size() > buffer_.size() - len_) {
            throw std::logic_error("key id longer than kMaxKeyBytes");
        }
        std::memcpy(buffer_.data() + len_, bytes.data(), bytes.size());
        len_ += bytes.size();
    }

    void put_digest(std::string_view of)
    {
        static const char hex[] = "0123456789abcdef";
        char text[40];
        char* p = text;
        for (uint8_t byte : sha1(of)) {
            *p++ = hex[byte >> 4];
            *p++ = hex[byte & 0xf];
        }
        put(kDigestMark);
        put(std::string_view(text, sizeof(text)));
    }

    std::string_view id() const { return std::string_view(buffer_.data(), len_); }

private:
    KeyIdBuffer& buffer_;
    size_t len_ = 0;
};

}  // namespace

std::string_view key_id(std::string_view key, KeyIdBuffer& scratch)
{
    if (key.size() <= kMaxKeyBytes) {
        return key;
    }
    IdWriter id(scratch);
    // The {hash tag} keeps the bucket in the slot Redis Cluster gives the key; a tag too long
    // to fit is replaced by its own digest, which keeps keys sharing it together.
    std::string_view tag = hash_tag(key);
    if (tag.size() != key.size()) {
        id.put("{");
        if (tag.size() > kMaxKeptTagBytes) {
            id.put_digest(tag);
        } else {
            id.put(tag);
        }
        id.put("}");
    }
    id.put_digest(key);
    return id.id();
}

void append_bucket_key(std::string& out, std::string_view prefix, std::string_view policy,
                       std::string_view key)
{
    KeyIdBuffer scratch;
    append_bucket_id(out, prefix, policy, key_id(key, scratch));
}

void append_bucket_id(std::string& out, std::string_view prefix, std::string_view policy,
                      std::string_view id)
{
    out.append(prefix);
    out.append(policy);
    out += ':';
    out.append(id);
}

std::string bucket_key(std::string_view prefix, std::string_view policy, std::string_view key)
{
    std::string out;
    append_bucket_key(out, prefix, policy, key);
    return out;
}

}  // namespace ratelimit
