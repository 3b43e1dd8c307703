// ClusterClient against fake nodes: the slot map from CLUSTER SLOTS, routing per slot, MOVED,
// ASK (with ASKING) and TRYAGAIN followed, and the map refreshed after a MOVED.
#include "ratelimit/cluster_client.h"

#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "fake_loop.h"
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

}  // namespace
}  // namespace ratelimit
