// The arguments of the ratelimit_redis directive, parsed without nginx so that they can be
// unit-tested and fuzzed. The nginx glue turns `error` into an `nginx -t` message.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ratelimit {

struct RedisEndpoint {
    std::string host;       // TCP: host name or address (IPv6 without brackets)
    int port = 6379;
    std::string unix_path;  // set for "unix:/path"

    bool is_unix() const { return !unix_path.empty(); }
};

enum class RedisMode { standalone, cluster, sentinel };

struct RedisConfig {
    std::vector<RedisEndpoint> addresses;
    RedisMode mode = RedisMode::standalone;
    std::string master;
    std::string user;
    std::string password;
    int db = 0;
    std::string prefix = "rl:";
    int64_t connect_timeout_ms = 200;
    int64_t timeout_ms = 100;
    int64_t batch_wait_ms = 0;  // a script call waits this long to fill (0: off)
    bool ssl = false;
    bool ssl_verify = true;
    std::string ssl_trusted_certificate;
    std::string ssl_server_name;
};

// "host:port", "[v6]:port", "host" (port 6379) or "unix:/path".
std::optional<RedisEndpoint> parse_endpoint(std::string_view text);

// The longest batch_wait= accepted: it adds to every request's latency.
constexpr int64_t kMaxBatchWaitMs = 5;

// nginx-style time: "150ms", "2s", "1m", "1h"; a bare number means seconds.
std::optional<int64_t> parse_duration_ms(std::string_view text);

// Parses every argument after the directive name. On failure returns false and sets
// `error` to a message that quotes the offending argument, e.g.
//   invalid value "abc" in "timeout=abc"
//   unknown parameter "foo=1"
//   "sentinel" mode requires "master="
bool parse_redis_args(const std::vector<std::string_view>& args, RedisConfig& config,
                      std::string& error);

}  // namespace ratelimit
