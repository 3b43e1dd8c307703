#include "ratelimit/key.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "ratelimit/cluster_map.h"
#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

TEST(BucketKey, Layout)
{
    EXPECT_EQ(bucket_key("rl:", "api", "1.2.3.4"), "rl:api:1.2.3.4");
    EXPECT_EQ(bucket_key("", "p", ""), "p:");
}

TEST(BucketKey, BinaryKeptByteForByte)
{
    std::string key("\x00\xff\r\n:\x01", 6);
    std::string expected = std::string("rl:p:") + key;
    EXPECT_EQ(bucket_key("rl:", "p", key), expected);
    EXPECT_EQ(bucket_key("rl:", "p", key).size(), 11u);
}

TEST(BucketKey, LongKeysAreHashed)
{
    std::string at_limit(kMaxKeyBytes, 'k');
    EXPECT_EQ(bucket_key("rl:", "p", at_limit), "rl:p:" + at_limit);
    std::string over = at_limit + "x";
    EXPECT_EQ(bucket_key("rl:", "p", over), "rl:p:#sha1:" + sha1_hex(over));
    std::string huge(100000, 'z');
    EXPECT_EQ(bucket_key("rl:", "p", huge).size(), std::string("rl:p:#sha1:").size() + 40);
    EXPECT_NE(bucket_key("rl:", "p", huge), bucket_key("rl:", "p", huge + "z"));
}

// Whatever two keys of one policy become in Redis, their key ids say whether it is one key
// (the handler merges a request's limits by id).
TEST(BucketKey, EqualKeyIdsAreOneRedisKey)
{
    std::string long_key(200, 'k');
    std::string tagged = "{user}" + std::string(200, 'x');
    std::string huge_tag = "{" + std::string(300, 't') + "}x";
    std::vector<std::string> keys = {
        "a", "b", "#sha1:", long_key, long_key + "y", tagged, huge_tag,
        "#sha1:" + sha1_hex(long_key), "#sha1:" + sha1_hex(long_key + "y"),
        std::string(kMaxKeyBytes, 'k'), std::string(kMaxKeyBytes + 1, 'k'),
    };
    // The texts the long keys become, sent as keys of their own.
    for (const std::string& k : {tagged, huge_tag}) {
        keys.push_back(bucket_key("", "p", k).substr(2));
    }
    int same = 0;
    for (const std::string& a : keys) {
        for (const std::string& b : keys) {
            bool one = bucket_key("rl:", "p", a) == bucket_key("rl:", "p", b);
            KeyIdBuffer scratch_a, scratch_b;
            EXPECT_EQ(key_id(a, scratch_a) == key_id(b, scratch_b), one) << a << " | " << b;
            same += one && a != b ? 1 : 0;
        }
    }
    EXPECT_EQ(same, 8);  // each of the four long keys with its text, both ways
}

TEST(BucketKey, AppendsToExistingString)
{
    std::string out = "prefix-kept|";
    append_bucket_key(out, "rl:", "p", "k");
    EXPECT_EQ(out, "prefix-kept|rl:p:k");
}


TEST(BucketKey, LongKeyKeepsItsHashTagInFrontOfTheDigest)
{
    std::string key = "{user42}" + std::string(200, 'x');
    std::string redis_key = bucket_key("rl:", "p", key);
    EXPECT_EQ(redis_key, "rl:p:{user42}#sha1:" + sha1_hex(key));
    EXPECT_EQ(key_slot(redis_key), key_slot("rl:q:{user42}"));
}

TEST(BucketKey, LongKeyWithoutTagOrWithEmptyTagIsDigestOnly)
{
    std::string plain(200, 'x');
    EXPECT_EQ(bucket_key("rl:", "p", plain), "rl:p:#sha1:" + sha1_hex(plain));
    std::string empty_tag = "{}" + std::string(200, 'x');
    EXPECT_EQ(bucket_key("rl:", "p", empty_tag), "rl:p:#sha1:" + sha1_hex(empty_tag));
}

TEST(BucketKey, HugeHashTagIsReplacedByItsDigest)
{
    std::string tag(1000, 't');
    std::string key = "{" + tag + "}rest";
    std::string redis_key = bucket_key("rl:", "p", key);
    EXPECT_EQ(redis_key, "rl:p:{#sha1:" + sha1_hex(tag) + "}#sha1:" + sha1_hex(key));
    EXPECT_LT(redis_key.size(), 120u);
    EXPECT_EQ(key_slot(redis_key), key_slot(bucket_key("rl:", "q", "{" + tag + "}other")));
}

// Tags kept in front of a digest made ids of up to 176 bytes (defect 1 of issue 15): every id
// stays within kMaxKeyBytes, names the same bucket given as a key, and long keys sharing a tag
// stay in one slot.
TEST(KeyId, TaggedLongKeysStayWithinTheBound)
{
    const std::string_view prefix = "rl:", policy = "p";
    for (size_t tag_len = 1; tag_len <= 135; tag_len++) {
        std::string tag(tag_len, 't');
        for (size_t key_len : {kMaxKeyBytes - 1, kMaxKeyBytes, kMaxKeyBytes + 1,
                               tag_len + 2, tag_len + 3, tag_len + 50, size_t(4096)})
        {
            if (key_len < tag_len + 2) {
                continue;
            }
            std::string key = "{" + tag + "}" + std::string(key_len - tag_len - 2, 's');
            SCOPED_TRACE("tag " + std::to_string(tag_len) + ", key " + std::to_string(key_len));
            KeyIdBuffer scratch;
            std::string id(key_id(key, scratch));
            EXPECT_LE(id.size(), kMaxKeyBytes);
            std::string redis_key = bucket_key(prefix, policy, key);
            EXPECT_LE(redis_key.size(), prefix.size() + policy.size() + 1 + kMaxKeyBytes);
            EXPECT_EQ(redis_key, bucket_key(prefix, policy, id));
            if (key.size() <= kMaxKeyBytes) {
                EXPECT_EQ(id, key);
            } else {  // long keys sharing a tag share a slot
                EXPECT_EQ(key_slot(redis_key), key_slot(bucket_key(prefix, "q", key + "-other")));
            }
        }
    }
}

TEST(KeyId, TagKeptUpToWhereTheWholeFits)
{
    std::string fits(80, 'a');
    std::string key = "{" + fits + "}" + std::string(100, 'x');
    KeyIdBuffer scratch;
    std::string id(key_id(key, scratch));
    EXPECT_EQ(id, "{" + fits + "}#sha1:" + sha1_hex(key));
    EXPECT_EQ(id.size(), kMaxKeyBytes);

    std::string too_long(81, 'a');
    key = "{" + too_long + "}" + std::string(100, 'x');
    id = std::string(key_id(key, scratch));
    EXPECT_EQ(id, "{#sha1:" + sha1_hex(too_long) + "}#sha1:" + sha1_hex(key));
    EXPECT_LE(id.size(), kMaxKeyBytes);
}

TEST(KeyId, ShortKeyIsItselfWithoutACopy)
{
    std::string key(kMaxKeyBytes, 'k');
    KeyIdBuffer scratch;
    EXPECT_EQ(key_id(key, scratch).data(), key.data());
}

}  // namespace
}  // namespace ratelimit
