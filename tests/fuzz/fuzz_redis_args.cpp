// libFuzzer target: the ratelimit_redis directive's arguments. The input is split into
// arguments on NUL and space, as nginx would hand them over.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ratelimit/redis_config.h"
#include "fuzz_check.h"

using namespace ratelimit;


extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view input(reinterpret_cast<const char*>(data), size);
    std::vector<std::string_view> args;
    size_t start = 0;
    for (size_t i = 0; i <= input.size(); i++) {
        if (i == input.size() || input[i] == '\0' || input[i] == ' ') {
            if (i > start) {
                args.push_back(input.substr(start, i - start));
            }
            start = i + 1;
        }
    }

    for (std::string_view arg : args) {
        if (auto endpoint = parse_endpoint(arg)) {
            CHECK(endpoint->is_unix() || !endpoint->host.empty());
            CHECK(endpoint->port > 0 && endpoint->port <= 65535);
        }
        if (auto ms = parse_duration_ms(arg)) {
            CHECK(*ms >= 0);
        }
    }

    RedisConfig config;
    std::string error;
    if (parse_redis_args(args, config, error)) {
        CHECK(!config.addresses.empty());
        CHECK(config.timeout_ms > 0 && config.connect_timeout_ms > 0);
        CHECK(config.db >= 0);
        CHECK(config.mode != RedisMode::sentinel || !config.master.empty());
    } else {
        CHECK(!error.empty());
    }
    return 0;
}
