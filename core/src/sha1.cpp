#include "ratelimit/sha1.h"

#include <openssl/evp.h>

#include <stdexcept>

namespace ratelimit {

// OpenSSL's libcrypto, which nginx links already (and TLS to Redis needs).
std::array<uint8_t, 20> sha1(std::string_view data)
{
    std::array<uint8_t, 20> digest{};
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), digest.data(), &len, EVP_sha1(), nullptr) != 1
        || len != digest.size())
    {
        throw std::runtime_error("SHA-1 is not available from libcrypto");
    }
    return digest;
}

std::string sha1_hex(std::string_view data)
{
    static const char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(40);
    for (uint8_t byte : sha1(data)) {
        out += hex[byte >> 4];
        out += hex[byte & 0xf];
    }
    return out;
}

}  // namespace ratelimit
