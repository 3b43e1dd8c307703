#include "ratelimit/redis_config.h"

#include <limits>

#include "ratelimit/policy.h"

namespace ratelimit {
namespace {

std::string quote(std::string_view text)
{
    std::string out = "\"";
    out.append(text);
    out += '"';
    return out;
}

bool is_host_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.'
           || c == '-' || c == '_';
}

bool valid_host(std::string_view host, bool v6)
{
    if (host.empty()) {
        return false;
    }
    for (char c : host) {
        if (!is_host_char(c) && !(v6 && c == ':')) {
            return false;
        }
    }
    return true;
}

std::optional<int> parse_port(std::string_view text)
{
    auto port = parse_positive_int(text);
    if (!port || *port > 65535) {
        return std::nullopt;
    }
    return int(*port);
}

std::optional<RedisEndpoint> parse_tcp(std::string_view host,
                                       std::optional<std::string_view> port, bool v6)
{
    RedisEndpoint endpoint;
    if (!valid_host(host, v6)) {
        return std::nullopt;
    }
    endpoint.host = std::string(host);
    if (port) {
        auto number = parse_port(*port);
        if (!number) {
            return std::nullopt;
        }
        endpoint.port = *number;
    }
    return endpoint;
}

std::optional<int64_t> unit_ms(std::string_view unit)
{
    if (unit == "ms") {
        return 1;
    }
    if (unit.size() != 1) {
        return std::nullopt;
    }
    return unit_period_ms(unit[0]);
}

// One "<digits><unit>" term of a duration; advances `pos`.
std::optional<int64_t> parse_term(std::string_view text, size_t& pos)
{
    size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
        pos++;
    }
    size_t unit_start = pos;
    while (pos < text.size() && !(text[pos] >= '0' && text[pos] <= '9')) {
        pos++;
    }
    auto value = parse_non_negative_int(text.substr(start, unit_start - start));
    auto unit = unit_ms(text.substr(unit_start, pos - unit_start));
    if (!value || !unit || *value > std::numeric_limits<int64_t>::max() / *unit) {
        return std::nullopt;
    }
    return *value * *unit;
}

// An invalid address as an error shows it: whole when its port is digits (or absent), else
// without what follows the ':' ("password:secret" is an option written with ':').
std::string shown_address(std::string_view arg)
{
    size_t colon = arg.find(':');
    if (colon == std::string_view::npos || arg[0] == '[' || arg.substr(0, 5) == "unix:"
        || arg.find_first_not_of("0123456789", colon + 1) == std::string_view::npos)
    {
        return std::string(arg);
    }
    return std::string(arg.substr(0, colon)) + ":...";
}

struct Parser {
    RedisConfig& config;
    std::string& error;

    bool fail(std::string message)
    {
        error = std::move(message);
        return false;
    }

    bool invalid(std::string_view value, std::string_view arg)
    {
        return fail("invalid value " + quote(value) + " in " + quote(arg));
    }

    bool set_string(std::string& field, std::string_view value, std::string_view arg)
    {
        if (value.empty()) {
            return invalid(value, arg);
        }
        field = std::string(value);
        return true;
    }

    bool set_duration(int64_t& field, std::string_view value, std::string_view arg)
    {
        auto ms = parse_duration_ms(value);
        if (!ms || *ms <= 0) {
            return invalid(value, arg);
        }
        field = *ms;
        return true;
    }

    bool set_batch_wait(std::string_view value, std::string_view arg)
    {
        auto ms = parse_duration_ms(value);
        if (!ms || *ms < 0 || *ms > kMaxBatchWaitMs) {
            return fail("invalid value " + quote(value) + " in " + quote(arg)
                        + " (expected 0 to " + std::to_string(kMaxBatchWaitMs) + "ms)");
        }
        config.batch_wait_ms = *ms;
        return true;
    }

    bool set_mode(std::string_view value, std::string_view arg)
    {
        if (value == "standalone") {
            config.mode = RedisMode::standalone;
        } else if (value == "cluster") {
            config.mode = RedisMode::cluster;
        } else if (value == "sentinel") {
            config.mode = RedisMode::sentinel;
        } else {
            return invalid(value, arg);
        }
        return true;
    }

    bool set_db(std::string_view value, std::string_view arg)
    {
        auto db = parse_non_negative_int(value);
        if (!db || *db > std::numeric_limits<int>::max()) {
            return invalid(value, arg);
        }
        config.db = int(*db);
        return true;
    }

    bool set_verify(std::string_view value, std::string_view arg)
    {
        if (value != "on" && value != "off") {
            return invalid(value, arg);
        }
        config.ssl_verify = value == "on";
        return true;
    }

    bool option(std::string_view name, std::string_view value, std::string_view arg)
    {
        if (name == "mode") {
            return set_mode(value, arg);
        }
        if (name == "db") {
            return set_db(value, arg);
        }
        if (name == "connect_timeout") {
            return set_duration(config.connect_timeout_ms, value, arg);
        }
        if (name == "timeout") {
            return set_duration(config.timeout_ms, value, arg);
        }
        if (name == "batch_wait") {
            return set_batch_wait(value, arg);
        }
        if (name == "ssl_verify") {
            return set_verify(value, arg);
        }
        std::string* field = name == "master"                    ? &config.master
                             : name == "user"                    ? &config.user
                             : name == "password"                ? &config.password
                             : name == "prefix"                  ? &config.prefix
                             : name == "ssl_trusted_certificate" ? &config.ssl_trusted_certificate
                             : name == "ssl_server_name"         ? &config.ssl_server_name
                                                                 : nullptr;
        if (!field) {
            // Its value may be a secret under a misspelled name (pasword=): never shown.
            return fail("unknown option " + quote(std::string(name) + "=..."));
        }
        return set_string(*field, value, arg);
    }

    bool argument(std::string_view arg)
    {
        if (arg == "ssl") {
            config.ssl = true;
            return true;
        }
        size_t eq = arg.find('=');
        // "unix:/path" may contain '=', an option name never contains ':'.
        if (eq == std::string_view::npos || arg.substr(0, eq).find(':') != std::string_view::npos) {
            auto endpoint = parse_endpoint(arg);
            if (!endpoint) {
                return fail("invalid address " + quote(shown_address(arg)));
            }
            config.addresses.push_back(std::move(*endpoint));
            return true;
        }
        return option(arg.substr(0, eq), arg.substr(eq + 1), arg);
    }

    bool finish()
    {
        if (config.addresses.empty()) {
            return fail("no Redis address");
        }
        if (config.mode == RedisMode::sentinel && config.master.empty()) {
            return fail("\"sentinel\" mode requires \"master=\"");
        }
        return true;
    }
};

}  // namespace

std::optional<RedisEndpoint> parse_endpoint(std::string_view text)
{
    if (text.substr(0, 5) == "unix:") {
        if (text.size() == 5) {
            return std::nullopt;
        }
        RedisEndpoint endpoint;
        endpoint.unix_path = std::string(text.substr(5));
        return endpoint;
    }
    if (!text.empty() && text[0] == '[') {
        size_t close = text.find(']');
        if (close == std::string_view::npos) {
            return std::nullopt;
        }
        std::string_view after = text.substr(close + 1);
        if (!after.empty() && after[0] != ':') {
            return std::nullopt;
        }
        std::optional<std::string_view> port;
        if (!after.empty()) {
            port = after.substr(1);
        }
        return parse_tcp(text.substr(1, close - 1), port, true);
    }
    size_t colon = text.find(':');
    if (colon == std::string_view::npos) {
        return parse_tcp(text, std::nullopt, false);
    }
    return parse_tcp(text.substr(0, colon), text.substr(colon + 1), false);
}

std::optional<int64_t> parse_duration_ms(std::string_view text)
{
    if (auto seconds = parse_non_negative_int(text)) {
        if (*seconds > std::numeric_limits<int64_t>::max() / 1000) {
            return std::nullopt;
        }
        return *seconds * 1000;
    }
    if (text.empty()) {
        return std::nullopt;
    }
    int64_t total = 0;
    size_t pos = 0;
    while (pos < text.size()) {
        auto term = parse_term(text, pos);
        if (!term || *term > std::numeric_limits<int64_t>::max() - total) {
            return std::nullopt;
        }
        total += *term;
    }
    return total;
}

bool parse_redis_args(const std::vector<std::string_view>& args, RedisConfig& config,
                      std::string& error)
{
    Parser parser{config, error};
    for (std::string_view arg : args) {
        if (!parser.argument(arg)) {
            return false;
        }
    }
    return parser.finish();
}

}  // namespace ratelimit
