// libFuzzer target: the API's text handling on hostile input: paths (routing and
// percent-decoding), percent-encoding round trips, JSON escaping, and stored bucket values.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ratelimit/api_text.h"
#include "ratelimit/bucket_view.h"
#include "fuzz_check.h"

using namespace ratelimit;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view text(reinterpret_cast<const char*>(data), size);

    ApiRoute route = route_api_path(text);
    if (route.path == ApiPath::bucket) {
        CHECK(!route.policy.empty() && !route.key.empty());
        // The key shown percent-encoded routes back to the same bucket.
        ApiRoute again = route_api_path("buckets/" + percent_encode(route.policy) + "/"
                                        + percent_encode(route.key));
        CHECK(again.path == ApiPath::bucket && again.policy == route.policy
              && again.key == route.key);
    }

    CHECK(percent_decode(percent_encode(text)) == std::string(text));

    std::string json;
    append_json_string(json, text);
    CHECK(json.size() >= 2 && json.front() == '"' && json.back() == '"');
    for (char c : json) {
        CHECK(c >= 0x20 && c < 0x7f && c != '<' && c != '>' && c != '&');
    }

    const BucketParams params{7, 60000, 13};
    auto view = view_stored(text, params, 1000000);
    // A value is read when it parses and could come from a bucket (as the script); the
    // bucket it shows is never past full.
    auto stored = parse_stored_bucket(text);
    bool holdable = stored && stored->level_units < (int64_t(1) << 53)
                    && stored->period_ms <= 86400000 && stored->stamp_ms < (int64_t(1) << 53);
    CHECK(bool(view) == holdable);
    CHECK(!view || (view->exists && view->level_units >= 0
                    && view->level_units <= params.capacity_units()));
    return 0;
}
