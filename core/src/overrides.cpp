#include "ratelimit/overrides.h"

#include <nlohmann/json.hpp>

#include "ratelimit/key.h"

namespace ratelimit {
namespace {

using nlohmann::json;

// 2^53: levels stay exact in Lua's doubles (as check_bucket).
constexpr int64_t kExactLimit = int64_t(1) << 53;

ParsedOverride failure(std::string error)
{
    ParsedOverride parsed;
    parsed.error = std::move(error);
    return parsed;
}

// A field name as an error quotes it: short, printable.
void append_field_name(std::string& out, std::string_view name)
{
    out += '"';
    for (unsigned char c : name.substr(0, 32)) {
        out += (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? char(c) : '?';
    }
    out += name.size() > 32 ? "...\"" : "\"";
}


bool read_flag(const json& value, bool& out, std::string& error, const char* name)
{
    if (!value.is_boolean() || !value.get<bool>()) {
        error = std::string("\"") + name + "\" must be true";
        return false;
    }
    out = true;
    return true;
}

bool read_count(const json& value, int64_t& out, std::string& error, const char* name,
                int64_t least)
{
    if (!value.is_number_integer() || value.get<int64_t>() < least
        || value.get<int64_t>() >= kExactLimit)
    {
        error = std::string("\"") + name + "\" must be an integer of at least "
                + std::to_string(least);
        return false;
    }
    out = value.get<int64_t>();
    return true;
}

bool read_field(const std::string& name, const json& value, OverrideTarget target,
                Override& out, std::string& error)
{
    if (name == "rate") {
        auto rate = value.is_string() ? parse_rate(value.get<std::string>()) : std::nullopt;
        if (!rate) {
            error = "\"rate\" must be a string such as \"500r/m\" (r/s, r/m, r/h or r/d)";
            return false;
        }
        out.has_rate = true;
        out.rate = *rate;
        return true;
    }
    if (name == "burst") {
        out.has_burst = true;
        return read_count(value, out.burst, error, "burst", 1);
    }
    if (name == "delay" && target == OverrideTarget::policy) {
        out.has_delay = true;
        return read_count(value, out.delay, error, "delay", 0);
    }
    if (name == "unlimited" && target == OverrideTarget::key) {
        return read_flag(value, out.unlimited, error, "unlimited");
    }
    if (name == "block" && target == OverrideTarget::key) {
        return read_flag(value, out.block, error, "block");
    }
    std::string shown;
    append_field_name(shown, name);
    error = "unknown field " + shown;
    return false;
}

// What the fields say together: something to change, flags alone, an exact bucket.
std::string check_whole(const Override& value, OverrideTarget target,
                        const BucketParams* base)
{
    bool sized = value.has_rate || value.has_burst || value.has_delay;
    if (value.unlimited && value.block) {
        return "\"unlimited\" and \"block\" exclude each other";
    }
    if ((value.unlimited || value.block) && sized) {
        return std::string("\"") + (value.block ? "block" : "unlimited")
               + "\" takes no rate or burst";
    }
    if (!sized && !value.unlimited && !value.block) {
        return target == OverrideTarget::key
                   ? "nothing to change: give rate, burst, unlimited or block"
                   : "nothing to change: give rate, burst or delay";
    }
    if (base == nullptr) {
        return {};
    }
    const BucketParams& configured = *base;
    BucketParams params = params_in_force(configured,
                                          target == OverrideTarget::policy ? &value : nullptr,
                                          target == OverrideTarget::key ? &value : nullptr);
    if (value.has_rate || value.has_burst) {
        BucketParams asked = configured;
        if (value.has_rate) {
            asked.count = value.rate.count;
            asked.period_ms = value.rate.period_ms;
        }
        if (value.has_burst) {
            asked.burst = value.burst;
        }
        std::string problem = check_bucket(asked);
        if (!problem.empty()) {
            return problem;
        }
    }
    if (value.has_delay && value.delay > params.burst) {
        return "\"delay\" must not exceed the burst (" + std::to_string(params.burst) + ")";
    }
    return {};
}

bool exact(const BucketParams& params)
{
    return params.count > 0 && params.period_ms > 0 && params.burst > 0
           && params.count <= (kExactLimit - 1) / params.period_ms
           && params.burst <= (kExactLimit - 1) / params.period_ms;
}

void apply(BucketParams& params, const Override& value)
{
    if (value.has_rate) {
        params.count = value.rate.count;
        params.period_ms = value.rate.period_ms;
    }
    if (value.has_burst) {
        params.burst = value.burst;
    }
}

}  // namespace


namespace {

// `configured` nullptr: the syntax only.
ParsedOverride parse_checked(std::string_view body, OverrideTarget target,
                             const BucketParams* configured) noexcept
{
    try {
        if (body.size() > kMaxOverrideBody) {
            ParsedOverride parsed = failure("body larger than "
                                            + std::to_string(kMaxOverrideBody) + " bytes");
            parsed.too_large = true;
            return parsed;
        }
        json doc = json::parse(body.begin(), body.end(), nullptr, false);
        if (doc.is_discarded()) {
            return failure("body is not valid JSON");
        }
        if (!doc.is_object()) {
            return failure("body must be a JSON object");
        }
        ParsedOverride parsed;
        for (const auto& [name, value] : doc.items()) {
            if (!read_field(name, value, target, parsed.value, parsed.error)) {
                return parsed;
            }
        }
        parsed.error = check_whole(parsed.value, target, configured);
        parsed.ok = parsed.error.empty();
        return parsed;
    } catch (...) {
        return failure("body could not be read");
    }
}


}  // namespace


ParsedOverride parse_override(std::string_view body, OverrideTarget target,
                              const BucketParams& configured) noexcept
{
    return parse_checked(body, target, &configured);
}


bool read_stored_override(std::string_view text, OverrideTarget target, Override& out) noexcept
{
    ParsedOverride parsed = parse_checked(text, target, nullptr);
    out = parsed.value;
    return parsed.ok;
}


std::string format_override(const Override& value)
{
    if (value.unlimited) {
        return "{\"unlimited\":true}";
    }
    if (value.block) {
        return "{\"block\":true}";
    }
    std::string out = "{";
    if (value.has_rate) {
        out += "\"rate\":\"" + format_rate(value.rate) + "\"";
    }
    if (value.has_burst) {
        out += out.size() > 1 ? "," : "";
        out += "\"burst\":" + std::to_string(value.burst);
    }
    if (value.has_delay) {
        out += out.size() > 1 ? "," : "";
        out += "\"delay\":" + std::to_string(value.delay);
    }
    out += '}';
    return out;
}


BucketParams params_in_force(const BucketParams& configured, const Override* policy_change,
                             const Override* key_override) noexcept
{
    BucketParams params = configured;
    if (policy_change) {
        apply(params, *policy_change);
        if (!exact(params)) {
            params = configured;
        }
    }
    if (key_override) {
        BucketParams keyed = params;
        apply(keyed, *key_override);
        // A policy changed since the override was set may leave it inexact: the policy's then.
        if (exact(keyed)) {
            params = keyed;
        }
    }
    return params;
}


int64_t delay_in_force(const Override* policy_change) noexcept
{
    return policy_change && policy_change->has_delay ? policy_change->delay : -1;
}


std::string check_override_key(std::string_view key)
{
    if (key.empty()) {
        return "empty key";
    }
    if (key.size() > kMaxKeyBytes) {
        return "key longer than " + std::to_string(kMaxKeyBytes)
               + " bytes: address it by the digest form its bucket is named by";
    }
    return {};
}

}  // namespace ratelimit
