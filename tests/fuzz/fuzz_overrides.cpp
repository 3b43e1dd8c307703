// libFuzzer target: bodies of PUT limits/ and policies/ (JSON from any client), the paths that
// name them, and the overrides' stored text read back by every node.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ratelimit/api_text.h"
#include "ratelimit/overrides.h"
#include "fuzz_check.h"

using namespace ratelimit;

namespace {

bool exact(const BucketParams& p)
{
    return check_bucket(p).empty();
}

void check_body(std::string_view text, OverrideTarget target)
{
    const BucketParams configured{7, 60000, 13};
    ParsedOverride parsed = parse_override(text, target, configured);
    CHECK(parsed.ok == parsed.error.empty());
    CHECK(!parsed.too_large || text.size() > kMaxOverrideBody);
    if (!parsed.ok) {
        return;
    }
    const Override& v = parsed.value;
    CHECK(!(v.unlimited && v.block));
    CHECK(target == OverrideTarget::key || (!v.unlimited && !v.block));
    const Override* change = target == OverrideTarget::policy ? &v : nullptr;
    const Override* key = target == OverrideTarget::key ? &v : nullptr;
    CHECK(exact(params_in_force(configured, change, key)));
    // What is stored parses back to the same override.
    std::string stored = format_override(v);
    ParsedOverride again = parse_override(stored, target, configured);
    CHECK(again.ok && format_override(again.value) == stored);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view text(reinterpret_cast<const char*>(data), size);
    check_body(text, OverrideTarget::key);
    check_body(text, OverrideTarget::policy);

    ApiRoute route = route_api_path(text);
    if (route.path == ApiPath::limit || route.path == ApiPath::limit_list
        || route.path == ApiPath::policy)
    {
        CHECK(!route.policy.empty());
        CHECK((route.path == ApiPath::limit) == !route.key.empty());
    }
    if (route.path == ApiPath::limit) {
        ApiRoute again = route_api_path("limits/" + percent_encode(route.policy) + "/"
                                        + percent_encode(route.key));
        CHECK(again.path == ApiPath::limit && again.policy == route.policy
              && again.key == route.key);
    }
    return 0;
}
