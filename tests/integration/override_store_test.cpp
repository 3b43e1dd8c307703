// The runtime limits' scripts (core/lua/overrides_*.lua) against a real Redis: writes raise
// the version and return the old value; a node catches up page by page, removals included,
// and starts again when Redis lost its data.
#include <gtest/gtest.h>

#include "ratelimit/override_store.h"
#include "ratelimit/resp.h"
#include "raw_redis.h"

namespace ratelimit::testing {
namespace {

class OverrideStore : public RawRedisTest {
protected:
    OverrideWriteReply write(std::string_view field, std::string_view value)
    {
        OverrideWriteReply out;
        std::string error;
        auto reply = send_raw(format_override_write("rl:", field, value));
        EXPECT_TRUE(parse_override_write_reply(reply.get(), out, error)) << error;
        return out;
    }

    OverridePage read(int64_t since, size_t page)
    {
        OverridePage out;
        std::string error;
        auto reply = send_raw(format_override_read("rl:", since, page));
        EXPECT_TRUE(parse_override_read_reply(reply.get(), since, page, out, error)) << error;
        return out;
    }
};

TEST_F(OverrideStore, WritesAreVersionedAndReturnTheOldValue)
{
    OverrideWriteReply first = write("p:a", "{\"burst\":5}");
    EXPECT_EQ(first.version, 1);
    EXPECT_FALSE(first.old_value);
    OverrideWriteReply second = write("p:a", "{\"burst\":6}");
    EXPECT_EQ(second.version, 2);
    EXPECT_EQ(second.old_value, "{\"burst\":5}");
    OverrideWriteReply removed = write("p:a", "");
    EXPECT_EQ(removed.version, 3);
    EXPECT_EQ(removed.old_value, "{\"burst\":6}");
    EXPECT_FALSE(write("p:a", "").old_value);
}

TEST_F(OverrideStore, ANodeCatchesUpPageByPage)
{
    write("p:a", "{\"burst\":1}");
    write("p:b", "{\"burst\":2}");
    write("p", "{\"rate\":\"5r/s\"}");
    write("p:a", "");
    OverridePage page = read(0, 2);
    ASSERT_EQ(page.changes.size(), 2u);  // b (2), p (3): a's last change is at 4
    EXPECT_EQ(page.changes[0].field, "p:b");
    EXPECT_EQ(page.changes[1].field, "p");
    EXPECT_TRUE(page.more);
    EXPECT_EQ(page.reached, 3);
    page = read(page.reached, 2);
    ASSERT_EQ(page.changes.size(), 1u);
    EXPECT_EQ(page.changes[0].field, "p:a");
    EXPECT_EQ(page.changes[0].value, "");  // removed
    EXPECT_FALSE(page.more);
    EXPECT_EQ(page.reached, 4);
    EXPECT_TRUE(read(4, 2).changes.empty());
}

TEST_F(OverrideStore, ANodeAheadOfRedisStartsAgain)
{
    write("p:a", "{\"burst\":1}");
    send_raw(format_command({"FLUSHALL"}));
    write("p:b", "{\"burst\":2}");
    OverridePage page = read(7, 10);
    EXPECT_TRUE(page.reset);
    ASSERT_EQ(page.changes.size(), 1u);
    EXPECT_EQ(page.changes[0].field, "p:b");
    EXPECT_EQ(page.reached, 1);
}

}  // namespace
}  // namespace ratelimit::testing
