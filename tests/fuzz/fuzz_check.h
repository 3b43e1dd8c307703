// CHECK for fuzz targets: a failed property is a crash libFuzzer records.
#pragma once

#include <cstdint>
#include <string_view>

#define CHECK(cond) \
    do { \
        if (!(cond)) { \
            __builtin_trap(); \
        } \
    } while (0)

// hiredis 0.14 callocs an array's element pointers as soon as it reads "*<count>", before
// any element arrives: "*1700002300\r\n" asks for 13 GB, which libFuzzer reports as an
// out-of-memory crash or a timeout. That is hiredis trusting its server, not this code; such
// inputs skip the reader.
inline bool has_huge_array(std::string_view input)
{
    for (size_t i = 0; i < input.size(); i++) {
        if (input[i] != '*') {
            continue;
        }
        uint64_t count = 0;
        for (size_t j = i + 1; j < input.size() && input[j] >= '0' && input[j] <= '9'; j++) {
            count = count * 10 + uint64_t(input[j] - '0');
            if (count > 1024) {
                return true;
            }
        }
    }
    return false;
}
