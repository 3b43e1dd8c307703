#include "ratelimit/cluster_map.h"

#include <gtest/gtest.h>

#include "read_resp.h"

namespace ratelimit {
namespace {

TEST(KeySlot, MatchesRedis)
{
    // Values from CLUSTER KEYSLOT on Redis 7.
    EXPECT_EQ(key_slot("foo"), 12182);
    EXPECT_EQ(key_slot("bar"), 5061);
    EXPECT_EQ(key_slot("123456789"), 0x31C3 & 16383);
    EXPECT_EQ(key_slot(""), 0);
}

TEST(KeySlot, HashTagsAsRedisDefinesThem)
{
    EXPECT_EQ(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
    EXPECT_EQ(key_slot("rl:a:{user1000}"), key_slot("user1000"));
    EXPECT_EQ(hash_tag("foo{}{bar}"), "foo{}{bar}");  // an empty first tag: the whole key
    EXPECT_EQ(hash_tag("foo{{bar}}zap"), "{bar");     // the first '{' and the next '}'
    EXPECT_EQ(hash_tag("foo{bar}{zap}"), "bar");
    EXPECT_EQ(hash_tag("foo{bar"), "foo{bar");
}

TEST(ClusterSlots, ParsesMastersAndRanges)
{
    ReplyPtr reply = read_resp(
        "*2\r\n"
        "*4\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n"
        "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nr1\r\n"
        "*3\r\n:8192\r\n:16383\r\n*2\r\n$0\r\n\r\n:7001\r\n");
    SlotMap map;
    std::string error;
    ASSERT_TRUE(parse_cluster_slots(reply.get(), "10.0.0.9", map, error)) << error;
    ASSERT_EQ(map.masters.size(), 2u);
    EXPECT_EQ(map.masters[0].text(), "127.0.0.1:7000");
    EXPECT_EQ(map.masters[1].text(), "10.0.0.9:7001");  // empty host: the one we asked
    EXPECT_EQ(map.master_of(0), 0);
    EXPECT_EQ(map.master_of(8191), 0);
    EXPECT_EQ(map.master_of(8192), 1);
    EXPECT_EQ(map.master_of(16383), 1);
}

TEST(ClusterSlots, UnservedSlotsAndBadReplies)
{
    SlotMap map;
    std::string error;
    ReplyPtr partial = read_resp("*1\r\n*3\r\n:5\r\n:9\r\n*2\r\n$1\r\na\r\n:1\r\n");
    ASSERT_TRUE(parse_cluster_slots(partial.get(), "h", map, error));
    EXPECT_EQ(map.master_of(4), -1);
    EXPECT_EQ(map.master_of(5), 0);
    EXPECT_EQ(map.master_of(10), -1);

    ReplyPtr error_reply = read_resp("-ERR This instance has cluster support disabled\r\n");
    EXPECT_FALSE(parse_cluster_slots(error_reply.get(), "h", map, error));
    EXPECT_NE(error.find("cluster support disabled"), std::string::npos);
    ReplyPtr empty = read_resp("*0\r\n");
    EXPECT_FALSE(parse_cluster_slots(empty.get(), "h", map, error));
    ReplyPtr out_of_range = read_resp("*1\r\n*3\r\n:5\r\n:16384\r\n*2\r\n$1\r\na\r\n:1\r\n");
    EXPECT_FALSE(parse_cluster_slots(out_of_range.get(), "h", map, error));
    ReplyPtr bad_port = read_resp("*1\r\n*3\r\n:5\r\n:6\r\n*2\r\n$1\r\na\r\n:0\r\n");
    EXPECT_FALSE(parse_cluster_slots(bad_port.get(), "h", map, error));
    ReplyPtr not_nested = read_resp("*1\r\n:5\r\n");
    EXPECT_FALSE(parse_cluster_slots(not_nested.get(), "h", map, error));
}

TEST(Redirect, MovedAndAsk)
{
    auto moved = parse_redirect("MOVED 3999 127.0.0.1:6381");
    ASSERT_TRUE(moved);
    EXPECT_FALSE(moved->ask);
    EXPECT_EQ(moved->slot, 3999);
    EXPECT_EQ(moved->node.text(), "127.0.0.1:6381");
    auto ask = parse_redirect("ASK 12 ::1:7002");
    ASSERT_TRUE(ask);
    EXPECT_TRUE(ask->ask);
    EXPECT_EQ(ask->node.host, "::1");
    EXPECT_EQ(ask->node.text(), "[::1]:7002");
    EXPECT_FALSE(parse_redirect("ERR unknown"));
    EXPECT_FALSE(parse_redirect("MOVED 16384 a:1"));
    EXPECT_FALSE(parse_redirect("MOVED 1 a:0"));
    EXPECT_FALSE(parse_redirect("MOVED x a:1"));
    EXPECT_FALSE(parse_redirect("MOVED 1"));
}

}  // namespace
}  // namespace ratelimit
