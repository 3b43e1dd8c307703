// SHA-1 (RFC 3174, from OpenSSL's libcrypto): the script's EVALSHA name and the digest of
// over-long keys.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace ratelimit {

std::array<uint8_t, 20> sha1(std::string_view data);
std::string sha1_hex(std::string_view data);  // 40 lowercase hex digits

}  // namespace ratelimit
