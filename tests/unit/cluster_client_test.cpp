// ClusterClient against fake nodes: the slot map from CLUSTER SLOTS, routing per slot, MOVED,
// ASK (with ASKING) and TRYAGAIN followed, and the map refreshed after a MOVED.
#include "ratelimit/cluster_client.h"

#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "fake_loop.h"
#include "ratelimit/batcher.h"
#include "ratelimit/resp.h"

namespace ratelimit {
namespace {

using namespace testing_fakes;

// Every node's loop is the shared fake loop; transports are told apart by node address.
class NodeLoop final : public EventLoop {
public:
    NodeLoop(FakeLoop& loop, std::map<std::string, FakeTransport*>& by_node, std::string node)
        : loop_(loop), by_node_(by_node), node_(std::move(node)) {}
    std::unique_ptr<Transport> make_transport() override
    {
        auto transport = loop_.make_transport();
        by_node_[node_] = static_cast<FakeTransport*>(transport.get());
        return transport;
    }
    std::unique_ptr<Timer> make_timer(std::function<void()> fn, TimerKind kind) override
    {
        return loop_.make_timer(std::move(fn), kind);
    }
    int64_t now_ms() noexcept override { return loop_.now_ms(); }

private:
    FakeLoop& loop_;
    std::map<std::string, FakeTransport*>& by_node_;
    std::string node_;
};

std::string bulk(const std::string& text)
{
    return "$" + std::to_string(text.size()) + "\r\n" + text + "\r\n";
}

// The script's reply to one request: Redis time, its flag, its level.
std::string script_reply(int64_t now, bool allowed, int64_t level)
{
    return bulk(std::to_string(now) + (allowed ? " 1 " : " 0 ") + std::to_string(level));
}

// What the batcher sends for one request of one limit, in `form`.
std::string script_call(const ScriptLimit& limit, ScriptForm form)
{
    ScriptBatch batch;
    batch.add_request(&limit, 1);
    std::string out;
    batch.append_evalsha(out, form);
    return out;
}

// A CLUSTER SLOTS reply: slots 0-8191 on port 7000, 8192-16383 on `upper` (all 127.0.0.1).
std::string two_masters(int upper)
{
    return "*2\r\n*3\r\n:0\r\n:8191\r\n*2\r\n" + bulk("127.0.0.1") + ":7000\r\n"
           "*3\r\n:8192\r\n:16383\r\n*2\r\n" + bulk("127.0.0.1") + ":" + std::to_string(upper)
           + "\r\n";
}

class ClusterClientTest : public ::testing::Test {
protected:
    explicit ClusterClientTest(bool node_wide = false)
    {
        ClusterOptions options;
        options.node_wide = node_wide;
        options.client.noscript_fallback = [](std::string_view command) {
            return "EVAL:" + std::string(command);
        };
        ClusterHost host;
        host.loop_for = [this](const NodeAddress& node) {
            return std::make_unique<NodeLoop>(loop, transports, node.text());
        };
        host.on_map = [this](size_t masters) { maps.push_back(masters); };
        cluster = std::make_unique<ClusterClient>(
            loop, std::vector<NodeAddress>{{"127.0.0.1", 7000}}, options, host);
    }
    ~ClusterClientTest() override { cluster.reset(); }

    FakeTransport& node(const std::string& name)
    {
        EXPECT_EQ(transports.count(name), 1u) << name;
        FakeTransport& t = *transports.at(name);
        if (t.connecting) {
            t.accept();
        }
        return t;
    }
    // The seed answers the first CLUSTER SLOTS.
    void load_map(int upper = 7001)
    {
        loop.advance(0);
        EXPECT_EQ(node("127.0.0.1:7000").take(), format_command({"CLUSTER", "SLOTS"}));
        node("127.0.0.1:7000").feed(two_masters(upper));
        ASSERT_TRUE(cluster->has_map());
    }
    CallId send(int slot, const std::string& command)
    {
        auto submitted = cluster->submit(
            slot, command,
            [this](const CallResult& r) {
                replies.push_back(r.status == CallStatus::ok
                                      ? std::string(r.reply->str, r.reply->len)
                                      : std::string("status:") + to_string(r.status));
            },
            nullptr);
        EXPECT_EQ(submitted.status, CallStatus::ok);
        return submitted.id;
    }

    FakeLoop loop;
    std::map<std::string, FakeTransport*> transports;
    std::unique_ptr<ClusterClient> cluster;
    std::vector<size_t> maps;
    std::vector<std::string> replies;
};

TEST_F(ClusterClientTest, SlotsGoToTheirMasters)
{
    load_map();
    EXPECT_EQ(maps, std::vector<size_t>{2});
    EXPECT_EQ(cluster->group_of("foo"), 12182);
    send(12182, "cmd-upper");
    send(5, "cmd-lower");
    EXPECT_EQ(node("127.0.0.1:7001").take(), "cmd-upper");
    EXPECT_EQ(node("127.0.0.1:7000").take(), "cmd-lower");
    node("127.0.0.1:7001").feed(bulk("u"));
    node("127.0.0.1:7000").feed(bulk("l"));
    EXPECT_EQ(replies, (std::vector<std::string>{"u", "l"}));
    EXPECT_EQ(cluster->nodes().size(), 2u);
}

TEST_F(ClusterClientTest, MovedIsFollowedAndTheMapRefreshed)
{
    load_map();
    send(12182, "cmd");
    node("127.0.0.1:7001").take();
    node("127.0.0.1:7001").feed("-MOVED 12182 127.0.0.1:7002\r\n");
    EXPECT_TRUE(replies.empty());
    EXPECT_EQ(node("127.0.0.1:7002").take(), "cmd");
    node("127.0.0.1:7002").feed(bulk("ok"));
    EXPECT_EQ(replies, std::vector<std::string>{"ok"});
    // The slot goes to the new master at once; the whole map is asked for soon after.
    send(12182, "again");
    EXPECT_EQ(node("127.0.0.1:7002").take(), "again");
    loop.advance(100);
    std::string asked = node("127.0.0.1:7000").take() + node("127.0.0.1:7001").take()
                        + node("127.0.0.1:7002").take();
    EXPECT_EQ(asked, format_command({"CLUSTER", "SLOTS"}));
}

TEST_F(ClusterClientTest, AskSendsAskingThenTheScriptAsEval)
{
    load_map();
    send(100, "EVALSHA x");
    node("127.0.0.1:7000").take();
    node("127.0.0.1:7000").feed("-ASK 100 127.0.0.1:7001\r\n");
    EXPECT_EQ(node("127.0.0.1:7001").take(), format_command({"ASKING"}) + "EVAL:EVALSHA x");
    node("127.0.0.1:7001").feed("+OK\r\n");
    node("127.0.0.1:7001").feed(bulk("done"));
    EXPECT_EQ(replies, std::vector<std::string>{"done"});
    // ASK does not move the slot.
    send(100, "next");
    EXPECT_EQ(node("127.0.0.1:7000").take(), "next");
}

TEST_F(ClusterClientTest, TryAgainIsRetriedShortlyAndRedirectsAreBounded)
{
    load_map();
    send(100, "cmd");
    FakeTransport& a = node("127.0.0.1:7000");
    a.take();
    a.feed("-TRYAGAIN Multiple keys request during rehashing of slot\r\n");
    EXPECT_EQ(a.take(), "");
    loop.advance(10);
    EXPECT_EQ(a.take(), "cmd");
    a.feed("-TRYAGAIN again\r\n");
    loop.advance(10);
    a.feed("-TRYAGAIN again\r\n");
    loop.advance(10);
    a.feed("-TRYAGAIN and again\r\n");  // the fourth: delivered as it is
    ASSERT_EQ(replies.size(), 1u);
    EXPECT_EQ(replies[0].substr(0, 8), "TRYAGAIN");
}

TEST_F(ClusterClientTest, CancelledCallGetsNoReplyEvenAfterARedirect)
{
    load_map();
    CallId id = send(12182, "cmd");
    node("127.0.0.1:7001").take();
    node("127.0.0.1:7001").feed("-MOVED 12182 127.0.0.1:7000\r\n");
    cluster->cancel(id);
    node("127.0.0.1:7000").feed(bulk("late"));
    EXPECT_TRUE(replies.empty());
}

TEST_F(ClusterClientTest, RedirectsDoNotOpenTheBreaker)
{
    load_map();
    for (int i = 0; i < 5; i++) {
        send(100, "cmd");
        node("127.0.0.1:7000").feed("-ASK 100 127.0.0.1:7001\r\n");
        node("127.0.0.1:7001").feed("+OK\r\n");
        node("127.0.0.1:7001").feed(bulk("ok"));
    }
    EXPECT_EQ(replies.size(), 5u);
    EXPECT_TRUE(cluster->available(100));
}

class NodeWideTest : public ClusterClientTest {
protected:
    NodeWideTest() : ClusterClientTest(true) {}
    ~NodeWideTest() override { batcher.reset(); }  // before the cluster it uses

    struct Verdicts {
        std::vector<Verdict> seen;
        std::vector<int64_t> levels;
    };
    static void record(void* owner, const Verdict& verdict) noexcept
    {
        auto* into = static_cast<Verdicts*>(owner);
        into->seen.push_back(verdict);
        into->levels.push_back(verdict.decided ? verdict.levels[0] : -1);
    }
    // One request of one limit through a batcher over the cluster.
    void decide(const ScriptLimit& limit, Verdicts& into)
    {
        if (!batcher) {
            batcher = std::make_unique<Batcher>(loop, *cluster);
        }
        ASSERT_EQ(batcher->decide(&limit, 1, &NodeWideTest::record, &into).status,
                  CallStatus::ok);
    }

    const BucketParams params{10, 1000, 10};
    std::unique_ptr<Batcher> batcher;
};

TEST_F(NodeWideTest, KeysOfOneMasterShareAGroupAndTheNodeWideForm)
{
    load_map();
    int upper = cluster->group_of("foo");  // slot 12182
    EXPECT_LT(upper, 0);
    EXPECT_EQ(cluster->group_of("rl:p:{foo}"), upper);
    EXPECT_EQ(cluster->group_of("rl:p:{foo}x"), upper);
    EXPECT_EQ(cluster->form(upper), ScriptForm::node_wide);
    EXPECT_NE(cluster->group_of("bar"), upper);  // slot 5061: the other master
    EXPECT_EQ(cluster->slot_group_of("foo"), 12182);
    EXPECT_EQ(cluster->form(12182), ScriptForm::keys_declared);
    send(upper, "node-wide");
    EXPECT_EQ(node("127.0.0.1:7001").take(), "node-wide");
}

// Before the map, calls go to a seed that may be a replica: declaring their keys, so that it
// answers MOVED (a node-wide call would get READONLY, which drops the connection).
TEST_F(NodeWideTest, BeforeTheMapCallsDeclareTheirKeysAndFollowMoved)
{
    EXPECT_EQ(cluster->group_of("foo"), 12182);
    EXPECT_EQ(cluster->form(cluster->group_of("foo")), ScriptForm::keys_declared);
    const ScriptLimit limit{"foo", params, 1};
    Verdicts verdicts;
    decide(limit, verdicts);
    loop.advance(0);  // the map is asked for; the call goes to the seed as well
    FakeTransport& seed = node("127.0.0.1:7000");
    EXPECT_EQ(seed.take(),
              format_command({"CLUSTER", "SLOTS"}) + script_call(limit, ScriptForm::keys_declared));
    seed.feed(two_masters(7001));
    EXPECT_LT(cluster->group_of("foo"), 0);  // node-wide from now on
    seed.feed("-MOVED 12182 127.0.0.1:7001\r\n");
    EXPECT_EQ(node("127.0.0.1:7001").take(), script_call(limit, ScriptForm::keys_declared));
    node("127.0.0.1:7001").feed(script_reply(5000, true, 9000));
    ASSERT_EQ(verdicts.seen.size(), 1u);
    EXPECT_TRUE(verdicts.seen[0].decided);
}

TEST_F(NodeWideTest, KeyNotOnTheNodeGoesAgainDeclaredAndAnOldServerEndsNodeWideCalls)
{
    load_map();
    int upper = cluster->group_of("foo");
    EXPECT_TRUE(cluster->retry_declared(
        upper, "ERR Script attempted to access a non local key in a cluster node script"));
    EXPECT_TRUE(cluster->retry_declared(upper, "READONLY You can't write against a replica."));
    EXPECT_FALSE(cluster->retry_declared(upper, "OOM command not allowed"));
    EXPECT_EQ(cluster->group_of("foo"), upper);
    EXPECT_TRUE(cluster->retry_declared(
        upper, "ERR Error compiling script (new function): user_script:1: unexpected symbol"));
    EXPECT_EQ(cluster->group_of("foo"), 12182);  // per slot from now on
}

// The re-send itself: a node-wide call that finds its key elsewhere wrote nothing; its request
// goes again once, declaring its key, to the slot's master (following the MOVED), and gets
// one verdict.
TEST_F(NodeWideTest, KeyNotOnTheNodeIsSentAgainDeclaredOnceWithOneVerdict)
{
    load_map();
    const ScriptLimit limit{"foo", params, 1};  // slot 12182: 7001 by the map
    Verdicts verdicts;
    decide(limit, verdicts);
    loop.advance(0);
    FakeTransport& upper = node("127.0.0.1:7001");
    EXPECT_EQ(upper.take(), script_call(limit, ScriptForm::node_wide));
    upper.feed("-ERR Script attempted to access a non local key in a cluster node script\r\n");
    EXPECT_TRUE(verdicts.seen.empty());
    loop.advance(0);
    // Sent again declaring its key, to the slot's master by the map...
    EXPECT_EQ(upper.take(), script_call(limit, ScriptForm::keys_declared));
    EXPECT_EQ(node("127.0.0.1:7000").take(), "");
    // ...which names the slot's real master.
    upper.feed("-MOVED 12182 127.0.0.1:7002\r\n");
    EXPECT_EQ(node("127.0.0.1:7002").take(), script_call(limit, ScriptForm::keys_declared));
    node("127.0.0.1:7002").feed(script_reply(5000, true, 9000));
    ASSERT_EQ(verdicts.seen.size(), 1u);
    EXPECT_TRUE(verdicts.seen[0].decided);
    EXPECT_TRUE(verdicts.seen[0].allowed);
    EXPECT_EQ(verdicts.levels[0], 9000);
    loop.advance(1000);  // the map is asked for again (after the MOVED), the script not
    std::string later = upper.take() + node("127.0.0.1:7000").take()
                        + node("127.0.0.1:7002").take();
    EXPECT_EQ(later.find("EVAL"), std::string::npos) << later;
    EXPECT_EQ(verdicts.seen.size(), 1u);
}

// A node-wide batch queued for a master that leaves the map before the batch leaves goes to
// the key's new master, instead of failing as disconnected.
TEST_F(NodeWideTest, BatchQueuedForANodeThatLeftTheMapIsRoutedAgain)
{
    load_map();
    loop.advance(5000);  // the periodic refresh asks a master
    if (node("127.0.0.1:7001").take() == format_command({"CLUSTER", "SLOTS"})) {
        node("127.0.0.1:7001").feed("-ERR busy\r\n");  // then 7000 is asked
    }
    EXPECT_EQ(node("127.0.0.1:7000").take(), format_command({"CLUSTER", "SLOTS"}));
    const ScriptLimit limit{"foo", params, 1};
    Verdicts verdicts;
    decide(limit, verdicts);  // for 7001, queued in this iteration
    node("127.0.0.1:7000").feed(two_masters(7002));  // 7001 leaves the map and goes
    EXPECT_LT(cluster->group_of("foo"), 0);
    EXPECT_FALSE(cluster->routes(-1 - 1));  // 7001 was the second node made
    loop.advance(0);
    EXPECT_EQ(node("127.0.0.1:7002").take(), script_call(limit, ScriptForm::node_wide));
    EXPECT_TRUE(verdicts.seen.empty());
    node("127.0.0.1:7002").feed(script_reply(5000, true, 9000));
    ASSERT_EQ(verdicts.seen.size(), 1u);
    EXPECT_TRUE(verdicts.seen[0].decided);
    EXPECT_EQ(verdicts.levels[0], 9000);
}

}  // namespace
}  // namespace ratelimit
