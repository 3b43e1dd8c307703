// Text of the management API (ratelimit_api): its paths, keys in them, and JSON strings.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace ratelimit {

// "%XX" escapes decoded (any byte, "%00" included); nullopt on a malformed escape.
// '+' stays '+'.
std::optional<std::string> percent_decode(std::string_view text);

// Every byte but [A-Za-z0-9._~-] as "%XX": what buckets/<policy>/<key> takes back.
std::string percent_encode(std::string_view bytes);

// Appends a quoted JSON string. Bytes outside printable ASCII, and " \ < > & ', are
// escaped as \u00XX (a byte above 0x7f as that Latin-1 code point), so the result is
// valid JSON and inert in HTML whatever the input bytes.
void append_json_string(std::string& out, std::string_view bytes);

// A number as JSON and Prometheus take it ("%.15g": 0.25, 1, 1e-07).
std::string format_number(double value);

enum class ApiPath {
    dashboard,
    status,
    metrics,
    bucket,
    limit,        // limits/<policy>/<key>
    limit_list,   // limits/<policy>/
    policy,       // policies/<policy>
    not_found,
    malformed,
};

struct ApiRoute {
    ApiPath path = ApiPath::not_found;
    std::string policy;  // bucket, limit, limit_list, policy: decoded policy name
    std::string key;     // bucket, limit: decoded key, any bytes, never empty
};

// Routes the raw path after the location's prefix (query string removed):
// "" dashboard, "status", "metrics", "buckets/<policy>/<key>" and "limits/<policy>/<key>" (the
// key is everything after the policy's '/', percent-decoded), "limits/<policy>/" and
// "policies/<policy>". Such a path with an empty policy or key, or a bad escape, is malformed;
// any other path is not found.
ApiRoute route_api_path(std::string_view rest);

}  // namespace ratelimit
