#include "ratelimit/sha1.h"

#include <gtest/gtest.h>

namespace ratelimit {
namespace {

// RFC 3174 section 7.3 and FIPS 180 examples.
TEST(Sha1, RfcVectors)
{
    EXPECT_EQ(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    EXPECT_EQ(sha1_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    EXPECT_EQ(sha1_hex(std::string(1000000, 'a')), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    std::string repeated;
    for (int i = 0; i < 10; i++) {
        repeated += "0123456701234567012345670123456701234567012345670123456701234567";
    }
    EXPECT_EQ(sha1_hex(repeated), "dea356a2cddd90c7a7ecedc5ebb563934f460452");
}

TEST(Sha1, EmptyAndKnownStrings)
{
    EXPECT_EQ(sha1_hex(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    EXPECT_EQ(sha1_hex("The quick brown fox jumps over the lazy dog"),
              "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");
}

// Lengths around the padding boundaries (55, 56, 63, 64, 65 bytes), checked against
// values from `sha1sum`.
TEST(Sha1, PaddingBoundaries)
{
    EXPECT_EQ(sha1_hex(std::string(55, 'a')), "c1c8bbdc22796e28c0e15163d20899b65621d65a");
    EXPECT_EQ(sha1_hex(std::string(56, 'a')), "c2db330f6083854c99d4b5bfb6e8f29f201be699");
    EXPECT_EQ(sha1_hex(std::string(63, 'a')), "03f09f5b158a7a8cdad920bddc29b81c18a551f5");
    EXPECT_EQ(sha1_hex(std::string(64, 'a')), "0098ba824b5c16427bd7a1122a5a442a25ec644d");
    EXPECT_EQ(sha1_hex(std::string(65, 'a')), "11655326c708d70319be2610e8a57d9a5b959d3b");
}

TEST(Sha1, BinaryInputAndRawDigest)
{
    auto digest = sha1("abc");
    EXPECT_EQ(digest[0], 0xa9);
    EXPECT_EQ(digest[19], 0x9d);
    std::string binary("\0\xff\x80", 3);
    EXPECT_EQ(sha1_hex(binary), "e4bc8a01806054986edd720593bc12f760eca5b9");
}

// Every byte value once, and the over-long keys of the end-to-end tests: the digests name
// existing buckets in Redis, so they must never change (checked against Python's hashlib).
TEST(Sha1, StableDigestsOfKeys)
{
    std::string all;
    for (int i = 0; i < 256; i++) {
        all += char(i);
    }
    EXPECT_EQ(sha1_hex(all), "4916d6bdb7f78e6803698cab32d1586ea457dfc8");
    EXPECT_EQ(sha1_hex(std::string(300, 'k')), "3413fbe006ad15aea62a1f28045806be6e49b709");
    EXPECT_EQ(sha1_hex(std::string(129, 'k')), "b4cc423df271afe3df9415c3778f5e7f557e8a29");
}

}  // namespace
}  // namespace ratelimit
