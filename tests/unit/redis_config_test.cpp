#include "ratelimit/redis_config.h"

#include <gtest/gtest.h>

namespace ratelimit {
namespace {

struct Parsed {
    bool ok;
    RedisConfig config;
    std::string error;
};

Parsed parse(std::vector<std::string_view> args)
{
    Parsed p;
    p.ok = parse_redis_args(args, p.config, p.error);
    return p;
}

TEST(Endpoint, HostPort)
{
    auto e = parse_endpoint("redis.local:6380");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->host, "redis.local");
    EXPECT_EQ(e->port, 6380);
    EXPECT_FALSE(e->is_unix());
    e = parse_endpoint("127.0.0.1");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->host, "127.0.0.1");
    EXPECT_EQ(e->port, 6379);
    EXPECT_EQ(parse_endpoint("h:65535")->port, 65535);
}

TEST(Endpoint, Ipv6)
{
    auto e = parse_endpoint("[::1]:6379");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->host, "::1");
    EXPECT_EQ(e->port, 6379);
    e = parse_endpoint("[fe80::1]");
    ASSERT_TRUE(e);
    EXPECT_EQ(e->host, "fe80::1");
    EXPECT_EQ(e->port, 6379);
}

TEST(Endpoint, Unix)
{
    auto e = parse_endpoint("unix:/run/redis.sock");
    ASSERT_TRUE(e);
    EXPECT_TRUE(e->is_unix());
    EXPECT_EQ(e->unix_path, "/run/redis.sock");
}

TEST(Endpoint, Rejects)
{
    for (const char* bad : {"", "host:", ":80", ":", "host:99999", "host:0", "host:-1",
                            "host:80x", "unix:", "::1", "[::1", "[::1]x", "[::1]:", "[]:6379",
                            "a:b:c", "ho st:80", "host :80", "host:6379 "}) {
        EXPECT_FALSE(parse_endpoint(bad)) << bad;
    }
}

TEST(Duration, Units)
{
    EXPECT_EQ(parse_duration_ms("150ms"), 150);
    EXPECT_EQ(parse_duration_ms("2s"), 2000);
    EXPECT_EQ(parse_duration_ms("2"), 2000);
    EXPECT_EQ(parse_duration_ms("1m"), 60000);
    EXPECT_EQ(parse_duration_ms("1h"), 3600000);
    EXPECT_EQ(parse_duration_ms("1m30s"), 90000);
    EXPECT_EQ(parse_duration_ms("1s500ms"), 1500);
    EXPECT_EQ(parse_duration_ms("0"), 0);
}

TEST(Duration, Rejects)
{
    for (const char* bad : {"", "abc", "ms", "-1s", "1x", "1 s", " 1s", "1.5s", "s1",
                            "99999999999999999999ms", "9999999999999999s", "1sms"}) {
        EXPECT_FALSE(parse_duration_ms(bad)) << bad;
    }
}

TEST(RedisArgs, Defaults)
{
    auto p = parse({"127.0.0.1:6379"});
    ASSERT_TRUE(p.ok) << p.error;
    EXPECT_EQ(p.config.addresses.size(), 1u);
    EXPECT_EQ(p.config.mode, RedisMode::standalone);
    EXPECT_EQ(p.config.db, 0);
    EXPECT_EQ(p.config.prefix, "rl:");
    EXPECT_EQ(p.config.connect_timeout_ms, 200);
    EXPECT_EQ(p.config.timeout_ms, 100);
    EXPECT_EQ(p.config.batch_wait_ms, 0);
    EXPECT_FALSE(p.config.ssl);
    EXPECT_TRUE(p.config.ssl_verify);
}

TEST(RedisArgs, EveryOption)
{
    auto p = parse({"10.0.0.1:26379", "unix:/tmp/a=b.sock", "[::1]:26380", "mode=sentinel",
                    "master=mymaster", "user=u", "password=p=w", "db=3", "prefix=x:",
                    "connect_timeout=1s", "timeout=50ms", "batch_wait=2ms", "ssl",
                    "ssl_verify=off",
                    "ssl_trusted_certificate=/etc/ca.pem", "ssl_server_name=redis.example"});
    ASSERT_TRUE(p.ok) << p.error;
    const RedisConfig& c = p.config;
    ASSERT_EQ(c.addresses.size(), 3u);
    EXPECT_EQ(c.addresses[0].port, 26379);
    EXPECT_EQ(c.addresses[1].unix_path, "/tmp/a=b.sock");
    EXPECT_EQ(c.addresses[2].host, "::1");
    EXPECT_EQ(c.mode, RedisMode::sentinel);
    EXPECT_EQ(c.master, "mymaster");
    EXPECT_EQ(c.user, "u");
    EXPECT_EQ(c.password, "p=w");
    EXPECT_EQ(c.db, 3);
    EXPECT_EQ(c.prefix, "x:");
    EXPECT_EQ(c.connect_timeout_ms, 1000);
    EXPECT_EQ(c.timeout_ms, 50);
    EXPECT_EQ(c.batch_wait_ms, 2);
    EXPECT_TRUE(c.ssl);
    EXPECT_FALSE(c.ssl_verify);
    EXPECT_EQ(c.ssl_trusted_certificate, "/etc/ca.pem");
    EXPECT_EQ(c.ssl_server_name, "redis.example");
}

TEST(RedisArgs, Cluster)
{
    auto p = parse({"a:7000", "b:7001", "mode=cluster"});
    ASSERT_TRUE(p.ok) << p.error;
    EXPECT_EQ(p.config.mode, RedisMode::cluster);
    EXPECT_EQ(p.config.addresses.size(), 2u);
}

TEST(RedisArgs, ErrorsQuoteTheArgument)
{
    struct Case {
        std::vector<std::string_view> args;
        const char* error;
    } cases[] = {
        {{"h", "timeout=abc"}, "invalid value \"abc\" in \"timeout=abc\""},
        {{"h", "timeout=0"}, "invalid value \"0\" in \"timeout=0\""},
        {{"h", "connect_timeout="}, "invalid value \"\" in \"connect_timeout=\""},
        {{"h", "batch_wait=6ms"},
         "invalid value \"6ms\" in \"batch_wait=6ms\" (expected 0 to 5ms)"},
        {{"h", "batch_wait=1s"},
         "invalid value \"1s\" in \"batch_wait=1s\" (expected 0 to 5ms)"},
        {{"h", "batch_wait=x"},
         "invalid value \"x\" in \"batch_wait=x\" (expected 0 to 5ms)"},
        {{"h", "foo=1"}, "unknown option \"foo=...\""},
        {{"h", "pasword=s3cret"}, "unknown option \"pasword=...\""},
        {{"h", "Password=s3cret"}, "unknown option \"Password=...\""},
        {{"h", "password:s3cret"}, "invalid address \"password:...\""},
        {{"host:99999"}, "invalid address \"host:99999\""},
        {{"h", "host:"}, "invalid address \"host:\""},
        {{":80"}, "invalid address \":80\""},
        {{"unix:"}, "invalid address \"unix:\""},
        {{"h", "mode=sentinel"}, "\"sentinel\" mode requires \"master=\""},
        {{"h", "mode=replica"}, "invalid value \"replica\" in \"mode=replica\""},
        {{"h", "db=-1"}, "invalid value \"-1\" in \"db=-1\""},
        {{"h", "db=x"}, "invalid value \"x\" in \"db=x\""},
        {{"h", "db=99999999999"}, "invalid value \"99999999999\" in \"db=99999999999\""},
        {{"h", "prefix="}, "invalid value \"\" in \"prefix=\""},
        {{"h", "master="}, "invalid value \"\" in \"master=\""},
        {{"h", "ssl_verify=yes"}, "invalid value \"yes\" in \"ssl_verify=yes\""},
        {{"mode=cluster"}, "no Redis address"},
        {{}, "no Redis address"},
    };
    for (const Case& c : cases) {
        auto p = parse(c.args);
        EXPECT_FALSE(p.ok) << c.error;
        EXPECT_EQ(p.error, c.error);
    }
}

TEST(RedisArgs, SentinelWithMasterInAnyOrder)
{
    auto p = parse({"master=m", "s1:26379", "mode=sentinel"});
    ASSERT_TRUE(p.ok) << p.error;
    EXPECT_EQ(p.config.master, "m");
}

}  // namespace
}  // namespace ratelimit
