#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

uint32_t rotl(uint32_t x, int n)
{
    return (x << n) | (x >> (32 - n));
}

uint32_t load_be32(const uint8_t* p)
{
    return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | p[3];
}

void process_block(uint32_t h[5], const uint8_t* block)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++) {
        w[i] = load_be32(block + 4 * i);
    }
    for (int i = 16; i < 80; i++) {
        w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rotl(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rotl(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

}  // namespace

std::array<uint8_t, 20> sha1(std::string_view data)
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    const auto* bytes = reinterpret_cast<const uint8_t*>(data.data());
    size_t full = data.size() / 64 * 64;
    for (size_t off = 0; off < full; off += 64) {
        process_block(h, bytes + off);
    }
    // The tail, 0x80, zeros, and the bit length fill one or two final blocks.
    uint8_t tail[128] = {};
    size_t rest = data.size() - full;
    for (size_t i = 0; i < rest; i++) {
        tail[i] = bytes[full + i];
    }
    tail[rest] = 0x80;
    size_t tail_len = rest + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = uint64_t(data.size()) * 8;
    for (int i = 0; i < 8; i++) {
        tail[tail_len - 1 - i] = uint8_t(bits >> (8 * i));
    }
    for (size_t off = 0; off < tail_len; off += 64) {
        process_block(h, tail + off);
    }
    std::array<uint8_t, 20> digest{};
    for (int i = 0; i < 20; i++) {
        digest[i] = uint8_t(h[i / 4] >> (24 - 8 * (i % 4)));
    }
    return digest;
}

std::string sha1_hex(std::string_view data)
{
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(40);
    for (uint8_t byte : sha1(data)) {
        out += digits[byte >> 4];
        out += digits[byte & 0xf];
    }
    return out;
}

}  // namespace ratelimit
