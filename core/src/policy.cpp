#include "ratelimit/policy.h"

#include <limits>

namespace ratelimit {
namespace {

// Largest integer below which Lua's doubles are exact.
constexpr int64_t kExactLimit = int64_t(1) << 53;

bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

std::optional<int64_t> parse_digits(std::string_view text)
{
    if (text.empty()) {
        return std::nullopt;
    }
    int64_t value = 0;
    for (char c : text) {
        if (!is_digit(c)) {
            return std::nullopt;
        }
        int digit = c - '0';
        if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) {
            return std::nullopt;
        }
        value = value * 10 + digit;
    }
    return value;
}

}  // namespace

std::optional<int64_t> unit_period_ms(char unit)
{
    switch (unit) {
    case 's':
        return 1000;
    case 'm':
        return 60 * 1000;
    case 'h':
        return 3600 * 1000;
    case 'd':
        return 86400 * 1000;
    }
    return std::nullopt;
}

namespace {

char unit_of(int64_t period_ms)
{
    switch (period_ms) {
    case 1000:
        return 's';
    case 60 * 1000:
        return 'm';
    case 3600 * 1000:
        return 'h';
    case 86400 * 1000:
        return 'd';
    }
    return '?';
}

}  // namespace

std::optional<Rate> parse_rate(std::string_view text)
{
    if (text.size() < 4 || text.substr(text.size() - 3, 2) != "r/") {
        return std::nullopt;
    }
    auto count = parse_positive_int(text.substr(0, text.size() - 3));
    auto period = unit_period_ms(text.back());
    if (!count || !period) {
        return std::nullopt;
    }
    return Rate{*count, *period};
}

std::optional<int64_t> parse_positive_int(std::string_view text)
{
    auto value = parse_digits(text);
    if (!value || *value == 0) {
        return std::nullopt;
    }
    return value;
}

std::optional<int64_t> parse_non_negative_int(std::string_view text)
{
    return parse_digits(text);
}

bool is_valid_policy_name(std::string_view name)
{
    if (name.empty()) {
        return false;
    }
    for (char c : name) {
        bool ok = is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'
                  || c == '-';
        if (!ok) {
            return false;
        }
    }
    return true;
}

std::string check_bucket(const BucketParams& params)
{
    if (params.count <= 0 || unit_of(params.period_ms) == '?') {
        return "invalid rate";
    }
    std::string rate = format_rate(Rate{params.count, params.period_ms});
    if (params.burst <= 0) {
        return "burst must be positive";
    }
    // One period's refill, count * period_ms units, must be exact in Lua too.
    if (params.count > (kExactLimit - 1) / params.period_ms) {
        return "rate " + rate + " is too large";
    }
    if (params.burst > (kExactLimit - 1) / params.period_ms) {
        return "burst " + std::to_string(params.burst) + " is too large for rate " + rate;
    }
    return {};
}

std::string format_rate(const Rate& rate)
{
    return std::to_string(rate.count) + "r/" + unit_of(rate.period_ms);
}

}  // namespace ratelimit
