// Batcher against the fake event loop: requests of one loop iteration share one script call,
// later ones wait for a free slot, verdicts fan out in order, cancels and failures.
#include "ratelimit/batcher.h"

#include <gtest/gtest.h>

#include <new>
#include <string>
#include <vector>

#include "fail_alloc.h"
#include "fake_loop.h"

namespace ratelimit {
namespace {

using namespace testing_fakes;

struct Seen {
    int request;
    bool decided;
    CallStatus status;
    bool allowed;
    std::vector<int64_t> levels;
    std::string error;
};

// One request as the test sees it: its limits and where its verdict goes.
struct Req {
    int number;
    size_t nlimits;
    std::vector<Seen>* seen;
};

void record(void* owner, const Verdict& v) noexcept
{
    auto* req = static_cast<Req*>(owner);
    Seen s{req->number, v.decided, v.status, v.allowed, {}, std::string(v.error)};
    if (v.decided) {
        s.levels.assign(v.levels, v.levels + req->nlimits);
    }
    req->seen->push_back(s);
}

// RESP of the script's reply: one string, now, then per request its flag and levels.
std::string reply(int64_t now, const std::vector<std::pair<bool, std::vector<int64_t>>>& reqs)
{
    std::string text = std::to_string(now);
    for (const auto& r : reqs) {
        text += r.first ? " 1" : " 0";
        for (int64_t level : r.second) {
            text += " " + std::to_string(level);
        }
    }
    return "$" + std::to_string(text.size()) + "\r\n" + text + "\r\n";
}

class BatcherTest : public ::testing::Test {
protected:
    void make(BatcherOptions options = {}, ClientOptions client_options = {})
    {
        client = std::make_unique<RedisClient>(loop, client_options);
        batcher = std::make_unique<Batcher>(loop, *client, options, &BatcherTest::observe);
        sent_sizes().clear();
    }
    static std::vector<size_t>& sent_sizes()
    {
        static std::vector<size_t> sizes;
        return sizes;
    }
    static void observe(size_t requests) noexcept { sent_sizes().push_back(requests); }

    uint64_t decide(Req& req, std::vector<ScriptLimit> limits)
    {
        req.nlimits = limits.size();
        auto q = batcher->decide(limits.data(), limits.size(), record, &req);
        EXPECT_EQ(q.status, CallStatus::ok);
        return q.id;
    }
    // `count` requests on one key, numbered 0, 1, …, decided in order; the batcher keeps their
    // addresses, so they live in the returned vector.
    std::vector<Req> decide_on_one_key(int count, std::vector<Seen>& seen)
    {
        std::vector<Req> reqs(size_t(count), Req{0, 0, &seen});
        for (int i = 0; i < count; i++) {
            reqs[size_t(i)].number = i;
            decide(reqs[size_t(i)], {{"rl:p:x", params, 1}});
        }
        return reqs;
    }
    // Lets the posted flush run and the connection come up; returns what was written.
    std::string run_and_take()
    {
        loop.advance(0);
        if (loop.transports.size() == 1 && loop.transport().connecting) {
            loop.transport().accept();
        }
        return loop.transport().take();
    }
    static std::string expected(const std::vector<std::vector<ScriptLimit>>& requests,
                                ScriptForm form = ScriptForm::keys_declared)
    {
        ScriptBatch batch;
        for (const auto& r : requests) {
            batch.add_request(r.data(), r.size());
        }
        std::string out;
        batch.append_evalsha(out, form);
        return out;
    }

    FakeLoop loop;
    std::unique_ptr<RedisClient> client;
    std::unique_ptr<Batcher> batcher;
    const BucketParams params{10, 1000, 10};
};

TEST_F(BatcherTest, RequestsOfOneIterationShareOneCallAndFanOutInOrder)
{
    make();
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen}, c{3, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    decide(b, {{"rl:p:x", params, 1}, {"rl:p:y", params, 2}});
    decide(c, {{"rl:p:x", params, 3}});
    EXPECT_TRUE(seen.empty());  // never from inside decide()
    std::string wire = run_and_take();
    EXPECT_EQ(wire, expected({{{"rl:p:x", params, 1}},
                              {{"rl:p:x", params, 1}, {"rl:p:y", params, 2}},
                              {{"rl:p:x", params, 3}}}));
    EXPECT_EQ(sent_sizes(), std::vector<size_t>{3});
    loop.transport().feed(reply(5000, {{true, {9000}}, {true, {8000, 8000}}, {false, {8000}}}));
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[0].request, 1);
    EXPECT_EQ(seen[0].levels, std::vector<int64_t>{9000});
    EXPECT_EQ(seen[1].levels, (std::vector<int64_t>{8000, 8000}));
    EXPECT_TRUE(seen[1].allowed);
    EXPECT_EQ(seen[2].request, 3);
    EXPECT_TRUE(seen[2].decided);
    EXPECT_FALSE(seen[2].allowed);
    EXPECT_EQ(batcher->waiting(), 0u);
}

TEST_F(BatcherTest, LaterRequestsJoinTheNextCallWhichLeavesWhenASlotFrees)
{
    BatcherOptions o;
    o.max_in_flight = 1;
    make(o);
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen}, c{3, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    std::string first = run_and_take();
    EXPECT_EQ(first, expected({{{"rl:p:x", params, 1}}}));
    decide(b, {{"rl:p:y", params, 1}});
    loop.advance(0);
    decide(c, {{"rl:p:x", params, 1}});
    loop.advance(0);
    EXPECT_EQ(loop.transport().take(), "");  // one call on the wire at a time
    EXPECT_EQ(batcher->in_flight(), 1u);
    loop.transport().feed(reply(1, {{true, {9000}}}));
    ASSERT_EQ(seen.size(), 1u);
    loop.advance(0);
    EXPECT_EQ(loop.transport().take(),
              expected({{{"rl:p:y", params, 1}}, {{"rl:p:x", params, 1}}}));
    loop.transport().feed(reply(2, {{true, {9000}}, {true, {8000}}}));
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[2].levels, std::vector<int64_t>{8000});
}

TEST_F(BatcherTest, BatchSizeIsBounded)
{
    BatcherOptions o;
    o.max_requests = 2;
    o.max_in_flight = 8;
    make(o);
    std::vector<Seen> seen;
    std::vector<Req> reqs = decide_on_one_key(5, seen);
    run_and_take();
    EXPECT_EQ(sent_sizes(), (std::vector<size_t>{2, 2, 1}));
}

TEST_F(BatcherTest, BatchWaitHoldsANewCallSoThatLaterRequestsJoinIt)
{
    BatcherOptions o;
    o.wait_ms = 2;
    make(o);
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    loop.advance(1);
    decide(b, {{"rl:p:y", params, 1}});  // a later iteration, within the wait
    loop.advance(0);
    EXPECT_TRUE(sent_sizes().empty());
    loop.advance(1);  // 2 ms after the call's first request: it leaves with both
    EXPECT_EQ(sent_sizes(), std::vector<size_t>{2});
    EXPECT_EQ(run_and_take(), expected({{{"rl:p:x", params, 1}}, {{"rl:p:y", params, 1}}}));
    loop.transport().feed(reply(1, {{true, {9000}}, {true, {9000}}}));
    ASSERT_EQ(seen.size(), 2u);
}

TEST_F(BatcherTest, BatchWaitEndsWhenTheCallIsFull)
{
    BatcherOptions o;
    o.wait_ms = 5;
    o.max_requests = 2;
    o.max_in_flight = 8;
    make(o);
    std::vector<Seen> seen;
    std::vector<Req> reqs = decide_on_one_key(3, seen);
    loop.advance(0);
    EXPECT_EQ(sent_sizes(), std::vector<size_t>{2});  // full: at once
    loop.advance(4);
    EXPECT_EQ(sent_sizes(), std::vector<size_t>{2});  // the third waits for its call to fill
    loop.advance(1);
    EXPECT_EQ(sent_sizes(), (std::vector<size_t>{2, 1}));
}

TEST_F(BatcherTest, CancelledRequestGetsNoVerdict)
{
    make();
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    uint64_t ida = decide(a, {{"rl:p:x", params, 1}});
    decide(b, {{"rl:p:x", params, 1}});
    run_and_take();
    batcher->cancel(ida);
    batcher->cancel(ida);  // twice is harmless
    batcher->cancel(12345);
    EXPECT_EQ(batcher->waiting(), 1u);
    loop.transport().feed(reply(1, {{true, {9000}}, {true, {8000}}}));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].request, 2);
}

TEST_F(BatcherTest, TimeoutFailsEveryRequestOfTheCallAsOneFailure)
{
    ClientOptions co;
    co.timeout_ms = 100;
    make({}, co);
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    decide(b, {{"rl:p:y", params, 1}});
    run_and_take();
    loop.advance(100);
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_FALSE(seen[0].decided);
    EXPECT_EQ(seen[0].status, CallStatus::timeout);
    EXPECT_EQ(seen[1].status, CallStatus::timeout);
    EXPECT_EQ(client->state(), ClientState::up);
}

TEST_F(BatcherTest, ErrorReplyReachesEveryRequestAsUndecided)
{
    make();
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    decide(b, {{"rl:p:y", params, 1}});
    run_and_take();
    loop.transport().feed("-OOM command not allowed when used memory > 'maxmemory'.\r\n");
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_FALSE(seen[1].decided);
    EXPECT_EQ(seen[1].status, CallStatus::ok);
    EXPECT_NE(seen[1].error.find("OOM"), std::string::npos);
}

TEST_F(BatcherTest, RefusesWhenOverloadedOrDownWithoutCallingBack)
{
    BatcherOptions o;
    o.max_waiting = 1;
    ClientOptions co;
    co.failures_to_down = 1;
    make(o, co);
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    ScriptLimit limit{"rl:p:x", params, 1};
    decide(a, {limit});
    EXPECT_EQ(batcher->decide(&limit, 1, record, &b).status, CallStatus::overloaded);
    loop.advance(0);
    loop.transport().refuse();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::disconnected);
    EXPECT_EQ(batcher->decide(&limit, 1, record, &b).status, CallStatus::down);
    EXPECT_EQ(seen.size(), 1u);
}

TEST_F(BatcherTest, ShutdownDropsEverything)
{
    make();
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    run_and_take();
    decide(b, {{"rl:p:x", params, 1}});
    batcher->shutdown();
    loop.transport().feed(reply(1, {{true, {9000}}}));
    loop.advance(1000);
    EXPECT_TRUE(seen.empty());
    ScriptLimit limit{"rl:p:x", params, 1};
    EXPECT_EQ(batcher->decide(&limit, 1, record, &b).status, CallStatus::shutdown);
}


// Out of memory while queueing: the request is queued whole (script and waiter) or not at all,
// whichever allocation fails; the verdicts of the requests around it stay theirs.
TEST_F(BatcherTest, OutOfMemoryInQueueIsAllOrNothing)
{
    const std::vector<ScriptLimit> a = {{"rl:policy-a:first-key", params, 1}};
    const std::vector<ScriptLimit> b = {{"rl:policy-b:second-key", params, 2},
                                        {"rl:policy-b:third-key-of-b", params, 3}};
    const std::vector<ScriptLimit> c = {{"rl:policy-c:fourth-key", params, 1}};
    int refused = 0;
    int queued = 0;
    for (size_t n = 0; n < 40; n++) {
        batcher.reset();  // each round from cold: every buffer allocated anew
        client.reset();
        loop.transports.clear();
        make();
        std::vector<Seen> seen;
        Req ra{1, 0, &seen}, rb{2, b.size(), &seen}, rc{3, 0, &seen};
        decide(ra, a);
        bool threw = false;
        testing_fakes::fail_allocation_after(n);
        try {
            batcher->decide(b.data(), b.size(), record, &rb);
        } catch (const std::bad_alloc&) {
            threw = true;
        }
        bool failed = testing_fakes::allocation_failed();
        testing_fakes::allow_allocations();
        EXPECT_EQ(threw, failed) << n;
        (threw ? refused : queued)++;
        decide(rc, c);
        EXPECT_EQ(batcher->waiting(), threw ? 2u : 3u) << n;
        std::string wire = run_and_take();
        if (threw) {
            EXPECT_EQ(wire, expected({a, c})) << n;
            loop.transport().feed(reply(1, {{true, {9001}}, {true, {9003}}}));
        } else {
            EXPECT_EQ(wire, expected({a, b, c})) << n;
            loop.transport().feed(reply(1, {{true, {9001}}, {true, {8002, 7002}}, {true, {9003}}}));
        }
        ASSERT_EQ(seen.size(), threw ? 2u : 3u) << n;
        EXPECT_EQ(seen[0].levels, (std::vector<int64_t>{9001})) << n;
        EXPECT_EQ(seen.back().request, 3) << n;
        EXPECT_EQ(seen.back().levels, (std::vector<int64_t>{9003})) << n;
        EXPECT_EQ(batcher->waiting(), 0u);
        if (HasFailure()) {
            FAIL() << "failing allocation " << n;
        }
    }
    EXPECT_GT(refused, 3);  // several allocations of queue() failed in turn
    EXPECT_GT(queued, 0);   // and past them all, the request queued
}

// Two groups on one connection: keys ending in 'y' form group 1, the others group 0.
// Calls of every group over one connection, the group of each recorded as it leaves.
class RecordingRouter : public CallRouter {
public:
    RecordingRouter(EventLoop& loop, RedisClient& client) : single(loop, client) {}
    RedisClient::Since since(int group) const noexcept override { return single.since(group); }
    RedisClient::Submitted submit(int group, std::string command, Callback callback,
                                  const RedisClient::Since* since) override
    {
        groups_sent.push_back(group);
        return single.submit(group, std::move(command), std::move(callback), since);
    }
    void cancel(CallId id) noexcept override { single.cancel(id); }

    SingleRedis single;
    std::vector<int> groups_sent;
};

class TwoGroups final : public RecordingRouter {
public:
    using RecordingRouter::RecordingRouter;
    int group_of(std::string_view key) const noexcept override { return key.back() == 'y'; }
    bool available(int group) const noexcept override { return group != down_group; }

    int down_group = -1;
};

class GroupedBatcherTest : public BatcherTest {
protected:
    ~GroupedBatcherTest() override { batcher.reset(); }  // before the router it uses
    void make_grouped(BatcherOptions options = {})
    {
        client = std::make_unique<RedisClient>(loop, ClientOptions{});
        router = std::make_unique<TwoGroups>(loop, *client);
        batcher = std::make_unique<Batcher>(loop, *router, options);
    }
    std::unique_ptr<TwoGroups> router;
};

TEST_F(GroupedBatcherTest, RequestSpanningGroupsIsDecidedPerGroupAndMerged)
{
    make_grouped();
    std::vector<Seen> seen;
    Req a{1, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}, {"rl:p:y", params, 2}, {"rl:q:x", params, 3}});
    std::string wire = run_and_take();
    EXPECT_EQ(wire, expected({{{"rl:p:x", params, 1}, {"rl:q:x", params, 3}}})
                        + expected({{{"rl:p:y", params, 2}}}));
    EXPECT_EQ(router->groups_sent, (std::vector<int>{0, 1}));
    loop.transport().feed(reply(5, {{true, {9000, 7000}}}));
    EXPECT_TRUE(seen.empty());  // one part is still out
    loop.transport().feed(reply(6, {{false, {1000}}}));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_TRUE(seen[0].decided);
    EXPECT_FALSE(seen[0].allowed);  // a request passes only if every part passes
    EXPECT_EQ(seen[0].levels, (std::vector<int64_t>{9000, 1000, 7000}));  // request order
    EXPECT_EQ(batcher->waiting(), 0u);
}

TEST_F(GroupedBatcherTest, APartThatFailsFailsTheRequest)
{
    make_grouped();
    std::vector<Seen> seen;
    Req a{1, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}, {"rl:p:y", params, 1}});
    run_and_take();
    loop.transport().feed("-CLUSTERDOWN The cluster is down\r\n");
    loop.transport().feed(reply(6, {{true, {1000}}}));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_FALSE(seen[0].decided);
    EXPECT_NE(seen[0].error.find("CLUSTERDOWN"), std::string::npos);
}

TEST_F(GroupedBatcherTest, GroupsHaveTheirOwnCallsInFlight)
{
    BatcherOptions o;
    o.max_in_flight = 1;
    make_grouped(o);
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen}, c{3, 0, &seen};
    decide(a, {{"rl:p:x", params, 1}});
    run_and_take();
    decide(b, {{"rl:p:y", params, 1}});  // another group: leaves at once
    decide(c, {{"rl:q:x", params, 1}});  // group 0 waits for its call
    EXPECT_EQ(run_and_take(), expected({{{"rl:p:y", params, 1}}}));
    loop.transport().feed(reply(1, {{true, {9000}}}));
    loop.advance(0);
    EXPECT_EQ(loop.transport().take(), expected({{{"rl:q:x", params, 1}}}));
    EXPECT_EQ(router->groups_sent, (std::vector<int>{0, 1, 0}));
}

TEST_F(GroupedBatcherTest, DownGroupRefusesAtOnceOthersStillQueue)
{
    make_grouped();
    router->down_group = 1;
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    ScriptLimit split[] = {{"rl:p:x", params, 1}, {"rl:p:y", params, 1}};
    EXPECT_EQ(batcher->decide(split, 2, record, &a).status, CallStatus::down);
    EXPECT_EQ(batcher->waiting(), 0u);
    decide(b, {{"rl:p:x", params, 1}});
    EXPECT_EQ(run_and_take(), expected({{{"rl:p:x", params, 1}}}));
}

TEST_F(GroupedBatcherTest, CancellingASplitRequestDropsEveryPart)
{
    make_grouped();
    std::vector<Seen> seen;
    Req a{1, 0, &seen};
    uint64_t id = decide(a, {{"rl:p:x", params, 1}, {"rl:p:y", params, 1}});
    EXPECT_EQ(batcher->waiting(), 2u);
    batcher->cancel(id);
    EXPECT_EQ(batcher->waiting(), 0u);
    run_and_take();
    loop.transport().feed(reply(5, {{true, {9000}}}));
    loop.transport().feed(reply(5, {{true, {9000}}}));
    EXPECT_TRUE(seen.empty());
}

// Node-wide calls (group 0) that go again declared when the node answers that a key is not
// there: per slot, keys ending in 'y' in group 2, the others in group 1.
class NodeWide final : public RecordingRouter {
public:
    using RecordingRouter::RecordingRouter;
    int group_of(std::string_view) const noexcept override { return 0; }
    int slot_group_of(std::string_view key) const noexcept override
    {
        return key.back() == 'y' ? 2 : 1;
    }
    ScriptForm form(int group) const noexcept override
    {
        return group == 0 ? ScriptForm::node_wide : ScriptForm::keys_declared;
    }
    bool retry_declared(int group, std::string_view error) noexcept override
    {
        retries++;
        return group == 0 && error.find("not on this node") != std::string_view::npos;
    }
    bool available(int) const noexcept override { return true; }

    int retries = 0;
};

class RequeueDeclaredTest : public BatcherTest {
protected:
    ~RequeueDeclaredTest() override { batcher.reset(); }  // before the router it uses
    void SetUp() override
    {
        client = std::make_unique<RedisClient>(loop, ClientOptions{});
        router = std::make_unique<NodeWide>(loop, *client);
        batcher = std::make_unique<Batcher>(loop, *router, BatcherOptions{});
    }
    // A (x and y: two slots) and B (x) leave in one node-wide call, which the node refuses.
    void send_and_refuse()
    {
        ida = decide(a, limits_a);
        idb = decide(b, limits_b);
        EXPECT_EQ(run_and_take(), expected({limits_a, limits_b}, ScriptForm::node_wide));
        loop.transport().feed("-ERR ratelimit: a key is not on this node\r\n");
        loop.advance(0);
    }

    std::unique_ptr<NodeWide> router;
    std::vector<Seen> seen;
    Req a{1, 0, &seen}, b{2, 0, &seen};
    const std::vector<ScriptLimit> limits_a = {{"rl:p:x", params, 1}, {"rl:p:y", params, 2}};
    const std::vector<ScriptLimit> limits_b = {{"rl:q:x", params, 1}};
    uint64_t ida = 0, idb = 0;
};

// Sent again once, declared and per slot (A split over two), each request with one verdict.
TEST_F(RequeueDeclaredTest, RefusedNodeWideCallGoesAgainOncePerSlotOneVerdictEach)
{
    send_and_refuse();
    EXPECT_TRUE(seen.empty());
    EXPECT_EQ(batcher->waiting(), 3u);  // A's two parts and B
    // Each in a batch of its own, timed from the first call: A's part x, A's part y, B.
    EXPECT_EQ(loop.transport().take(), expected({{limits_a[0]}}) + expected({{limits_a[1]}})
                                           + expected({limits_b}));
    EXPECT_EQ(router->groups_sent, (std::vector<int>{0, 1, 2, 1}));
    loop.transport().feed(reply(7, {{true, {9000}}}));
    EXPECT_TRUE(seen.empty());  // A's other part is still out
    loop.transport().feed(reply(7, {{false, {1000}}}));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].request, 1);
    EXPECT_TRUE(seen[0].decided);
    EXPECT_FALSE(seen[0].allowed);  // its y part was refused
    EXPECT_EQ(seen[0].levels, (std::vector<int64_t>{9000, 1000}));
    loop.transport().feed(reply(7, {{true, {8000}}}));
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[1].request, 2);
    EXPECT_TRUE(seen[1].allowed);
    EXPECT_EQ(seen[1].levels, (std::vector<int64_t>{8000}));
    loop.advance(0);
    EXPECT_EQ(loop.transport().take(), "");  // nothing goes a third time
    EXPECT_EQ(router->groups_sent.size(), 4u);
    EXPECT_EQ(batcher->waiting(), 0u);
    EXPECT_EQ(router->retries, 1);
}

// A declared call refused in turn fails its requests: never a second re-send.
TEST_F(RequeueDeclaredTest, ReSentCallRefusedAgainFailsItsRequests)
{
    send_and_refuse();
    loop.transport().take();
    for (int i = 0; i < 3; i++) {
        loop.transport().feed("-ERR ratelimit: a key is not on this node\r\n");
    }
    loop.advance(0);
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_FALSE(seen[0].decided);
    EXPECT_FALSE(seen[1].decided);
    EXPECT_NE(seen[1].error.find("not on this node"), std::string::npos);
    EXPECT_EQ(loop.transport().take(), "");
    EXPECT_EQ(router->groups_sent.size(), 4u);
}

// Cancelled while it goes again: no verdict for it (neither part of a split), the others'.
TEST_F(RequeueDeclaredTest, CancelDuringTheReSendDropsOnlyThatRequest)
{
    send_and_refuse();
    batcher->cancel(ida);
    EXPECT_EQ(batcher->waiting(), 1u);
    loop.transport().take();
    loop.transport().feed(reply(7, {{true, {9000}}}));
    loop.transport().feed(reply(7, {{true, {7000}}}));
    loop.transport().feed(reply(7, {{true, {8000}}}));
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].request, 2);
    EXPECT_EQ(seen[0].levels, (std::vector<int64_t>{8000}));
    batcher->cancel(idb);  // finished: nothing to do
    EXPECT_EQ(batcher->waiting(), 0u);
}

// Cancelled before the refusal came back: it does not go again at all.
TEST_F(RequeueDeclaredTest, CancelledBeforeTheRefusalIsNotSentAgain)
{
    ida = decide(a, limits_a);
    idb = decide(b, limits_b);
    run_and_take();
    batcher->cancel(idb);
    loop.transport().feed("-ERR ratelimit: a key is not on this node\r\n");
    loop.advance(0);
    EXPECT_EQ(loop.transport().take(), expected({{limits_a[0]}}) + expected({{limits_a[1]}}));
    EXPECT_EQ(batcher->waiting(), 2u);
}

}  // namespace
}  // namespace ratelimit
