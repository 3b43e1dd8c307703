#include <gtest/gtest.h>

#include "ratelimit/api_text.h"
#include "ratelimit/override_store.h"
#include "ratelimit/overrides.h"
#include "read_resp.h"

namespace ratelimit {
namespace {

const BucketParams kConfigured{10, 1000, 20};

ParsedOverride key_body(std::string_view body)
{
    return parse_override(body, OverrideTarget::key, kConfigured);
}

ParsedOverride policy_body(std::string_view body)
{
    return parse_override(body, OverrideTarget::policy, kConfigured);
}

TEST(OverrideBody, RateAndBurst)
{
    ParsedOverride p = key_body(R"({"rate": "500r/m", "burst": 600})");
    ASSERT_TRUE(p.ok) << p.error;
    EXPECT_TRUE(p.value.has_rate && p.value.has_burst);
    EXPECT_EQ(p.value.rate.count, 500);
    EXPECT_EQ(p.value.rate.period_ms, 60000);
    EXPECT_EQ(p.value.burst, 600);
    EXPECT_EQ(format_override(p.value), R"({"rate":"500r/m","burst":600})");
    BucketParams in_force = params_in_force(kConfigured, nullptr, &p.value);
    EXPECT_EQ(in_force.count, 500);
    EXPECT_EQ(in_force.period_ms, 60000);
    EXPECT_EQ(in_force.burst, 600);
}

TEST(OverrideBody, EitherAloneKeepsTheOther)
{
    ParsedOverride burst = key_body(R"({"burst": 3})");
    ASSERT_TRUE(burst.ok) << burst.error;
    BucketParams in_force = params_in_force(kConfigured, nullptr, &burst.value);
    EXPECT_EQ(in_force.count, 10);
    EXPECT_EQ(in_force.burst, 3);
    EXPECT_EQ(format_override(burst.value), R"({"burst":3})");
}

TEST(OverrideBody, Flags)
{
    ParsedOverride unlimited = key_body(R"({"unlimited": true})");
    ASSERT_TRUE(unlimited.ok);
    EXPECT_TRUE(unlimited.value.unlimited);
    EXPECT_EQ(format_override(unlimited.value), R"({"unlimited":true})");
    ParsedOverride block = key_body(R"({"block":true})");
    ASSERT_TRUE(block.ok);
    EXPECT_TRUE(block.value.block);
    EXPECT_EQ(format_override(block.value), R"({"block":true})");
}

TEST(OverrideBody, StoredTextParsesBack)
{
    for (const char* body : {R"({"rate":"5r/s"})", R"({"rate":"7r/h","burst":9})",
                             R"({"block":true})", R"({"unlimited":true})"}) {
        ParsedOverride p = key_body(body);
        ASSERT_TRUE(p.ok) << body;
        EXPECT_EQ(format_override(p.value), body);
    }
}

TEST(OverrideBody, BadBodiesSayWhy)
{
    EXPECT_NE(key_body("").error, "");
    EXPECT_EQ(key_body("{").error, "body is not valid JSON");
    EXPECT_EQ(key_body("[1]").error, "body must be a JSON object");
    EXPECT_NE(key_body("{}").error.find("nothing to change"), std::string::npos);
    EXPECT_NE(key_body(R"({"rate": "fast"})").error.find("\"rate\""), std::string::npos);
    EXPECT_NE(key_body(R"({"rate": 5})").error.find("\"rate\""), std::string::npos);
    EXPECT_NE(key_body(R"({"burst": -1})").error.find("\"burst\""), std::string::npos);
    EXPECT_NE(key_body(R"({"burst": 0})").error.find("\"burst\""), std::string::npos);
    EXPECT_NE(key_body(R"({"burst": 1.5})").error.find("\"burst\""), std::string::npos);
    EXPECT_NE(key_body(R"({"burst": "5"})").error.find("\"burst\""), std::string::npos);
    EXPECT_NE(key_body(R"({"burst": 1e30})").error.find("\"burst\""), std::string::npos);
    EXPECT_NE(key_body(R"({"unlimited": false})").error.find("must be true"), std::string::npos);
    EXPECT_NE(key_body(R"({"unlimited": true, "block": true})").error, "");
    EXPECT_NE(key_body(R"({"block": true, "burst": 5})").error, "");
    EXPECT_EQ(key_body(R"({"colour": 1})").error, "unknown field \"colour\"");
    EXPECT_EQ(key_body(R"({"delay": 1})").error, "unknown field \"delay\"");
    // The bucket must stay exact, as ratelimit_policy demands.
    EXPECT_NE(key_body(R"({"rate": "1r/d", "burst": 900000000000})").error.find("too large"),
              std::string::npos);
    ParsedOverride big = key_body(std::string(kMaxOverrideBody + 1, ' '));
    EXPECT_FALSE(big.ok);
    EXPECT_TRUE(big.too_large);
}

TEST(OverrideBody, PolicyChange)
{
    ParsedOverride p = policy_body(R"({"rate": "2r/s", "delay": 5})");
    ASSERT_TRUE(p.ok) << p.error;
    EXPECT_EQ(format_override(p.value), R"({"rate":"2r/s","delay":5})");
    EXPECT_EQ(delay_in_force(&p.value), 5);
    EXPECT_EQ(delay_in_force(nullptr), -1);
    EXPECT_NE(policy_body(R"({"delay": 21})").error.find("exceed"), std::string::npos);
    EXPECT_TRUE(policy_body(R"({"delay": 21, "burst": 30})").ok);
    EXPECT_EQ(policy_body(R"({"block": true})").error, "unknown field \"block\"");
    EXPECT_EQ(policy_body(R"({"unlimited": true})").error, "unknown field \"unlimited\"");
}

TEST(ParamsInForce, KeyOverridesThePolicyChange)
{
    Override change;
    change.has_rate = true;
    change.rate = Rate{1, 1000};
    change.has_burst = true;
    change.burst = 2;
    Override key;
    key.has_burst = true;
    key.burst = 50;
    BucketParams p = params_in_force(kConfigured, &change, &key);
    EXPECT_EQ(p.count, 1);
    EXPECT_EQ(p.burst, 50);
    p = params_in_force(kConfigured, &change, nullptr);
    EXPECT_EQ(p.burst, 2);
    p = params_in_force(kConfigured, nullptr, nullptr);
    EXPECT_EQ(p.burst, 20);
    EXPECT_EQ(p.count, 10);
}

TEST(ParamsInForce, AnInexactCombinationFallsBack)
{
    Override change;
    change.has_rate = true;
    change.rate = Rate{1, 86400000};
    Override key;
    key.has_burst = true;
    key.burst = int64_t(1) << 40;  // fine at 10r/s, too large at 1r/d
    BucketParams p = params_in_force(kConfigured, &change, &key);
    EXPECT_EQ(p.period_ms, 86400000);
    EXPECT_EQ(p.burst, 20);
}

TEST(OverrideKey, Bounds)
{
    EXPECT_EQ(check_override_key("alice"), "");
    EXPECT_EQ(check_override_key(std::string(128, 'k')), "");
    EXPECT_NE(check_override_key(std::string(129, 'k')), "");
    EXPECT_NE(check_override_key(""), "");
}

TEST(ApiRoutes, LimitsAndPolicies)
{
    ApiRoute r = route_api_path("limits/api/a%2Fb/c");
    EXPECT_EQ(r.path, ApiPath::limit);
    EXPECT_EQ(r.policy, "api");
    EXPECT_EQ(r.key, "a/b/c");
    r = route_api_path("limits/api/");
    EXPECT_EQ(r.path, ApiPath::limit_list);
    EXPECT_EQ(r.policy, "api");
    EXPECT_EQ(route_api_path("limits/api").path, ApiPath::malformed);
    EXPECT_EQ(route_api_path("limits//k").path, ApiPath::malformed);
    EXPECT_EQ(route_api_path("limits").path, ApiPath::malformed);
    EXPECT_EQ(route_api_path("limits/api/%zz").path, ApiPath::malformed);
    r = route_api_path("policies/api");
    EXPECT_EQ(r.path, ApiPath::policy);
    EXPECT_EQ(r.policy, "api");
    EXPECT_EQ(route_api_path("policies/api/x").path, ApiPath::not_found);
    EXPECT_EQ(route_api_path("policies/").path, ApiPath::malformed);
    EXPECT_EQ(route_api_path("buckets/api/").path, ApiPath::malformed);
}

TEST(OverrideStore, WriteReply)
{
    OverrideWriteReply out;
    std::string error;
    ASSERT_TRUE(parse_override_write_reply(read_resp("*2\r\n:7\r\n$4\r\nold!\r\n").get(), out,
                                           error));
    EXPECT_EQ(out.version, 7);
    EXPECT_EQ(out.old_value, "old!");
    ASSERT_TRUE(parse_override_write_reply(read_resp("*2\r\n:8\r\n$-1\r\n").get(), out, error));
    EXPECT_FALSE(out.old_value);
    EXPECT_FALSE(parse_override_write_reply(read_resp("-ERR x\r\n").get(), out, error));
    EXPECT_EQ(error, "ERR x");
    EXPECT_FALSE(parse_override_write_reply(read_resp(":1\r\n").get(), out, error));
}

TEST(OverrideStore, ReadReplyPages)
{
    OverridePage page;
    std::string error;
    // Two changes since 3, the second a removal; a page of 10: the node reaches the version.
    std::string two = "*8\r\n:9\r\n:0\r\n$3\r\np:a\r\n$1\r\n5\r\n$11\r\n{\"burst\":1}\r\n"
                      "$1\r\np\r\n$1\r\n8\r\n$0\r\n\r\n";
    ASSERT_TRUE(parse_override_read_reply(read_resp(two).get(), 3, 10, page, error)) << error;
    EXPECT_EQ(page.reached, 9);
    EXPECT_FALSE(page.more);
    EXPECT_FALSE(page.reset);
    ASSERT_EQ(page.changes.size(), 2u);
    EXPECT_EQ(page.changes[0].field, "p:a");
    EXPECT_EQ(page.changes[0].value, "{\"burst\":1}");
    EXPECT_EQ(page.changes[1].value, "");
    // A full page: the node continues from its last score.
    ASSERT_TRUE(parse_override_read_reply(read_resp(two).get(), 3, 2, page, error));
    EXPECT_EQ(page.reached, 8);
    EXPECT_TRUE(page.more);
    // Nothing new.
    ASSERT_TRUE(parse_override_read_reply(read_resp("*2\r\n:3\r\n:0\r\n").get(), 3, 2, page,
                                          error));
    EXPECT_EQ(page.reached, 3);
    EXPECT_TRUE(page.changes.empty());
    // Redis lost its data: start again.
    ASSERT_TRUE(parse_override_read_reply(read_resp("*2\r\n:0\r\n:1\r\n").get(), 3, 2, page,
                                          error));
    EXPECT_TRUE(page.reset);
    EXPECT_EQ(page.reached, 0);
    // Scores out of order or beyond the version cannot be applied.
    std::string bad = "*5\r\n:9\r\n:0\r\n$3\r\np:a\r\n$2\r\n10\r\n$0\r\n\r\n";
    EXPECT_FALSE(parse_override_read_reply(read_resp(bad).get(), 3, 10, page, error));
}

TEST(OverrideStore, KeysShareASlot)
{
    EXPECT_EQ(override_version_key("rl:"), "rl:{overrides}:version");
    EXPECT_EQ(override_version_key("{t}rl:"), "{t}rl:overrides:version");
    EXPECT_EQ(override_field("api", "k:1"), "api:k:1");
}

}  // namespace
}  // namespace ratelimit
