// The adaptive controller's script (core/lua/adaptive.lua) against a real Redis: nodes' counts
// add up per interval, the first state proposed for an interval is the one every node reads,
// and a node without a proposal reads the last one kept.
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include "ratelimit/adaptive.h"
#include "raw_redis.h"

namespace ratelimit {
namespace {

class AdaptiveScript : public testing::RawRedisTest {
protected:
    FleetInterval call(const IntervalCounts& counts, const std::optional<Proposal>& mine,
                       int64_t interval_ms = 400)
    {
        auto reply = send_raw(adaptive_command(key_, interval_ms, counts, mine));
        FleetInterval fleet;
        std::string error;
        EXPECT_TRUE(parse_fleet_interval(reply.get(), fleet, error)) << error;
        return fleet;
    }

    // Waits for the start of the next interval (by the script's own clock, Redis TIME).
    int64_t next_interval(int64_t interval_ms = 400)
    {
        int64_t now = call({}, std::nullopt, interval_ms).interval;
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
            int64_t n = call({}, std::nullopt, interval_ms).interval;
            if (n != now) {
                return n;
            }
        }
    }

    std::string key_ = adaptive_key("rl:", "backend");
};

TEST_F(AdaptiveScript, KeyKeepsTheControllerInOneClusterSlot)
{
    EXPECT_EQ(key_, "rl:adaptive:{backend}");
}

TEST_F(AdaptiveScript, NodesCountsAddUpAndAreReadTheNextInterval)
{
    int64_t n = next_interval();
    call(IntervalCounts{10, 1, 2, 3, 12, 400}, std::nullopt);
    call(IntervalCounts{5, 0, 1, 1, 6, 250}, std::nullopt);
    FleetInterval next = call({}, std::nullopt);
    if (next.interval != n) {
        GTEST_SKIP() << "the interval ended while the test ran";
    }
    while (next.interval == n) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        next = call({}, std::nullopt);
    }
    ASSERT_EQ(next.interval, n + 1);
    EXPECT_EQ(next.totals.requests, 15);
    EXPECT_EQ(next.totals.errors, 1);
    EXPECT_EQ(next.totals.slow, 3);
    EXPECT_EQ(next.totals.warm, 4);
    EXPECT_EQ(next.totals.admitted, 18);
    EXPECT_EQ(next.totals.latency_ms, 650);
}

TEST_F(AdaptiveScript, FirstProposalForAnIntervalIsTheFleetsState)
{
    int64_t n = next_interval();
    // Proposals for the previous interval: the first is kept, the second ignored.
    AdaptiveState first{0.5, 0.8, -2, 0.6, 31.5};
    AdaptiveState second{0.9, 0.9, 1, 1.0, 0.0};
    FleetInterval a = call({}, Proposal{n - 1, first});
    FleetInterval b = call({}, Proposal{n - 1, second});
    ASSERT_EQ(a.interval, n);
    ASSERT_EQ(b.interval, n);
    ASSERT_TRUE(a.state && b.state);
    EXPECT_EQ(a.state->factor, 0.5);
    EXPECT_EQ(b.state->factor, 0.5);
    EXPECT_EQ(b.state->ceiling, 0.6);
    EXPECT_EQ(b.state->streak, -2);
    EXPECT_EQ(b.state->base_ms, 31.5);
    // A proposal for another interval is not kept; a node without one reads the last kept.
    FleetInterval stale = call({}, Proposal{n - 5, second});
    EXPECT_EQ(stale.state->factor, 0.5);
    next_interval();
    FleetInterval restarted = call({}, std::nullopt);
    ASSERT_TRUE(restarted.state);
    EXPECT_EQ(restarted.state->factor, 0.5);
}

TEST_F(AdaptiveScript, NoStateAtAllReadsAsNone)
{
    key_ = adaptive_key("rl:", "fresh");
    FleetInterval fleet = call({}, std::nullopt);
    EXPECT_FALSE(fleet.state);
    EXPECT_EQ(fleet.totals.requests, 0);
}

TEST_F(AdaptiveScript, EmbeddedScriptIsTheFile)
{
    std::ifstream file(RATELIMIT_SOURCE_DIR "/core/lua/adaptive.lua", std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    ASSERT_FALSE(text.empty());
    EXPECT_EQ(adaptive_script(), text);
}

}  // namespace
}  // namespace ratelimit
