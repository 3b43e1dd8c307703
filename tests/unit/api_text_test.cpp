#include "ratelimit/api_text.h"

#include <gtest/gtest.h>

namespace ratelimit {
namespace {

TEST(PercentEncoding, EveryByteRoundTrips)
{
    std::string all;
    for (int c = 0; c < 256; c++) {
        all += char(c);
    }
    std::string encoded = percent_encode(all);
    for (char c : encoded) {
        EXPECT_TRUE(isalnum(static_cast<unsigned char>(c)) || c == '%' || c == '-' || c == '.'
                    || c == '_' || c == '~') << int(c);
    }
    EXPECT_EQ(percent_decode(encoded), all);
}

TEST(PercentEncoding, Examples)
{
    EXPECT_EQ(percent_encode("a/b c\"<>"), "a%2Fb%20c%22%3C%3E");
    EXPECT_EQ(percent_decode("a%2fb%2F+%00"), std::string("a/b/+\0", 6));
    EXPECT_EQ(percent_decode("plain"), "plain");
}

TEST(PercentEncoding, MalformedEscapes)
{
    EXPECT_EQ(percent_decode("%"), std::nullopt);
    EXPECT_EQ(percent_decode("a%4"), std::nullopt);
    EXPECT_EQ(percent_decode("%zz"), std::nullopt);
    EXPECT_EQ(percent_decode("%4g"), std::nullopt);
}

TEST(JsonString, EscapesEverythingOutsidePrintableAscii)
{
    std::string out;
    append_json_string(out, std::string("a\"b\\c\n\x01\x7f\xff<>&'", 13));
    EXPECT_EQ(out, "\"a\\\"b\\\\c\\u000A\\u0001\\u007F\\u00FF\\u003C\\u003E\\u0026\\u0027\"");
}

TEST(ApiRoute, Endpoints)
{
    EXPECT_EQ(route_api_path("").path, ApiPath::dashboard);
    EXPECT_EQ(route_api_path("status").path, ApiPath::status);
    EXPECT_EQ(route_api_path("%73tatus").path, ApiPath::status);
    EXPECT_EQ(route_api_path("metrics").path, ApiPath::metrics);
    EXPECT_EQ(route_api_path("status/").path, ApiPath::not_found);
    EXPECT_EQ(route_api_path("nothing").path, ApiPath::not_found);
    EXPECT_EQ(route_api_path("other/x/y").path, ApiPath::not_found);
}

TEST(ApiRoute, Buckets)
{
    ApiRoute r = route_api_path("buckets/api/a%2Fb/c%00%FF");
    EXPECT_EQ(r.path, ApiPath::bucket);
    EXPECT_EQ(r.policy, "api");
    EXPECT_EQ(r.key, std::string("a/b/c\0\xff", 7));
    EXPECT_EQ(route_api_path("buckets/p/%2F").key, "/");
}

TEST(ApiRoute, MalformedBuckets)
{
    for (const char* path : {"buckets", "buckets/", "buckets/p", "buckets/p/", "buckets//k",
                             "buckets/p/%zz", "buckets/%/k", "%zz"}) {
        EXPECT_EQ(route_api_path(path).path, ApiPath::malformed) << path;
    }
}

}  // namespace
}  // namespace ratelimit
