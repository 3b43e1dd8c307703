#include "ratelimit/api_text.h"

#include <cstdio>

namespace ratelimit {
namespace {

const char kHex[] = "0123456789ABCDEF";

int hex_value(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

bool is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
           || c == '-' || c == '.' || c == '_' || c == '~';
}

}  // namespace

std::optional<std::string> percent_decode(std::string_view text)
{
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); i++) {
        if (text[i] != '%') {
            out += text[i];
            continue;
        }
        if (i + 2 >= text.size()) {
            return std::nullopt;
        }
        int hi = hex_value(text[i + 1]);
        int lo = hex_value(text[i + 2]);
        if (hi < 0 || lo < 0) {
            return std::nullopt;
        }
        out += char(hi * 16 + lo);
        i += 2;
    }
    return out;
}

std::string percent_encode(std::string_view bytes)
{
    std::string out;
    out.reserve(bytes.size());
    for (char ch : bytes) {
        auto c = static_cast<unsigned char>(ch);
        if (is_unreserved(c)) {
            out += ch;
        } else {
            out += '%';
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    return out;
}

void append_json_string(std::string& out, std::string_view bytes)
{
    out += '"';
    for (char ch : bytes) {
        auto c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c >= 0x20 && c < 0x7f && c != '<' && c != '>' && c != '&' && c != '\'') {
            out += ch;
        } else {
            out += "\\u00";
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    out += '"';
}

ApiRoute route_api_path(std::string_view rest)
{
    ApiRoute route;
    size_t slash = rest.find('/');
    auto first = percent_decode(rest.substr(0, slash));
    if (!first) {
        route.path = ApiPath::malformed;
        return route;
    }
    bool keyed = *first == "buckets" || *first == "limits";
    if (slash == std::string_view::npos) {
        route.path = first->empty() ? ApiPath::dashboard
                     : *first == "status" ? ApiPath::status
                     : *first == "metrics" ? ApiPath::metrics
                     : keyed || *first == "policies" ? ApiPath::malformed
                                                     : ApiPath::not_found;
        return route;
    }
    if (!keyed && *first != "policies") {
        return route;
    }
    std::string_view after = rest.substr(slash + 1);
    size_t end = after.find('/');
    auto policy = percent_decode(after.substr(0, end));
    if (!policy || policy->empty()) {
        route.path = ApiPath::malformed;
        return route;
    }
    route.policy = std::move(*policy);
    if (*first == "policies") {
        route.path = end == std::string_view::npos ? ApiPath::policy : ApiPath::not_found;
        return route;
    }
    std::optional<std::string> key;
    if (end != std::string_view::npos) {
        key = percent_decode(after.substr(end + 1));
    }
    if (*first == "limits" && key && key->empty()) {
        route.path = ApiPath::limit_list;
        return route;
    }
    if (!key || key->empty()) {
        route.path = ApiPath::malformed;
        return route;
    }
    route.path = *first == "limits" ? ApiPath::limit : ApiPath::bucket;
    route.key = std::move(*key);
    return route;
}

std::string format_number(double value)
{
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.15g", value);
    return buf;
}

}  // namespace ratelimit
