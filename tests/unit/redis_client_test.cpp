// RedisClient against a fake event loop: manual clock, manual timers, a scripted transport.
#include "ratelimit/redis_client.h"

#include "fake_loop.h"

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <string>
#include <vector>

namespace ratelimit {
namespace {

using namespace testing_fakes;

std::string cmd(const char* format, const char* arg = nullptr)
{
    char* out = nullptr;
    int len = arg ? redisFormatCommand(&out, format, arg) : redisFormatCommand(&out, format);
    std::string s(out, static_cast<size_t>(len));
    redisFreeCommand(out);
    return s;
}

// What a callback saw.
struct Seen {
    CallStatus status;
    std::string text;  // integer or string reply, "ERR:..." for errors
};

std::string reply_text(const redisReply* r)
{
    if (!r) {
        return "";
    }
    switch (r->type) {
    case REDIS_REPLY_INTEGER:
        return std::to_string(r->integer);
    case REDIS_REPLY_ERROR:
        return "ERR:" + std::string(r->str, r->len);
    case REDIS_REPLY_NIL:
        return "(nil)";
    case REDIS_REPLY_ARRAY:
        return "array:" + std::to_string(r->elements);
    default:
        return std::string(r->str, r->len);
    }
}

class RedisClientTest : public ::testing::Test {
protected:
    void make(ClientOptions options = {})
    {
        ClientObserver observer;
        observer.on_error = [this](std::string_view m) { errors.emplace_back(m); };
        observer.on_state = [this](ClientState s) { states.push_back(s); };
        client = std::make_unique<RedisClient>(loop, std::move(options), observer);
    }
    Callback record(std::vector<Seen>& into)
    {
        return [&into](const CallResult& r) {
            into.push_back({r.status, reply_text(r.reply)});
        };
    }
    // Submits a GET, expects acceptance.
    CallId get(const char* key, std::vector<Seen>& into)
    {
        auto s = client->submit(cmd("GET %s", key), record(into));
        EXPECT_EQ(s.status, CallStatus::ok);
        EXPECT_NE(s.id, 0u);
        return s.id;
    }
    // Connects and answers nothing else.
    void connect_up()
    {
        std::vector<Seen> seen;
        get("warmup", seen);
        loop.transport().accept();
        loop.transport().feed("$-1\r\n");
        ASSERT_EQ(seen.size(), 1u);
        ASSERT_EQ(client->state(), ClientState::up);
        loop.transport().take();
    }

    FakeLoop loop;
    std::unique_ptr<RedisClient> client;
    std::vector<std::string> errors;
    std::vector<ClientState> states;
};

TEST_F(RedisClientTest, ToString)
{
    EXPECT_STREQ(to_string(CallStatus::ok), "ok");
    EXPECT_STREQ(to_string(CallStatus::timeout), "timeout");
    EXPECT_STREQ(to_string(CallStatus::down), "down");
}

TEST_F(RedisClientTest, ConnectsOnFirstSubmitAndSendsQueuedCalls)
{
    make();
    EXPECT_EQ(client->state(), ClientState::idle);
    EXPECT_TRUE(loop.transports.empty());
    std::vector<Seen> seen;
    get("a", seen);
    get("b", seen);
    EXPECT_EQ(client->state(), ClientState::connecting);
    EXPECT_EQ(loop.transport().connects, 1);
    EXPECT_EQ(loop.transport().written, "");  // nothing before the connection is up
    loop.transport().accept();
    EXPECT_EQ(client->state(), ClientState::up);
    EXPECT_EQ(loop.transport().take(), cmd("GET a") + cmd("GET b"));
    EXPECT_TRUE(seen.empty());
    EXPECT_EQ((std::vector<ClientState>{ClientState::connecting, ClientState::up}), states);
}

TEST_F(RedisClientTest, PipelinedRepliesMatchInOrderAcrossOddSplits)
{
    make();
    std::vector<Seen> seen;
    get("a", seen);
    get("b", seen);
    auto s = client->submit(cmd("INCR c"), record(seen));
    ASSERT_EQ(s.status, CallStatus::ok);
    get("d", seen);
    get("e", seen);
    loop.transport().accept();
    std::string replies = "$5\r\nhello\r\n$-1\r\n:42\r\n-ERR wrong\r\n*2\r\n$1\r\nx\r\n:1\r\n";
    // Odd splits: 1, 2, 3, ... bytes.
    size_t pos = 0;
    for (size_t step = 1; pos < replies.size(); step++) {
        size_t n = std::min(step, replies.size() - pos);
        loop.transport().feed(std::string_view(replies).substr(pos, n));
        pos += n;
    }
    ASSERT_EQ(seen.size(), 5u);
    EXPECT_EQ(seen[0].text, "hello");
    EXPECT_EQ(seen[1].text, "(nil)");
    EXPECT_EQ(seen[2].text, "42");
    EXPECT_EQ(seen[3].text, "ERR:ERR wrong");
    EXPECT_EQ(seen[4].text, "array:2");
    for (const Seen& x : seen) {
        EXPECT_EQ(x.status, CallStatus::ok);
    }
    EXPECT_EQ(client->pending(), 0u);
}

TEST_F(RedisClientTest, ManyRepliesInOneChunk)
{
    make();
    connect_up();
    std::vector<Seen> seen;
    std::string all;
    for (int i = 0; i < 100; i++) {
        ASSERT_EQ(client->submit(cmd("INCR k"), record(seen)).status, CallStatus::ok);
        all += ":" + std::to_string(i + 1) + "\r\n";
    }
    loop.transport().feed(all);
    ASSERT_EQ(seen.size(), 100u);
    for (int i = 0; i < 100; i++) {
        EXPECT_EQ(seen[i].text, std::to_string(i + 1));
    }
}

TEST_F(RedisClientTest, CallbacksAreNeverSynchronous)
{
    ClientOptions o;
    o.max_pending = 1;
    make(o);
    int calls = 0;
    auto cb = [&](const CallResult&) { calls++; };
    EXPECT_EQ(client->submit(cmd("PING"), cb).status, CallStatus::ok);
    EXPECT_EQ(client->submit(cmd("PING"), cb).status, CallStatus::overloaded);
    EXPECT_EQ(calls, 0);
    loop.transport().accept();
    EXPECT_EQ(calls, 0);
    loop.transport().feed("+PONG\r\n");
    EXPECT_EQ(calls, 1);
    // Once up, a submit still doesn't call back inline.
    EXPECT_EQ(client->submit(cmd("PING"), cb).status, CallStatus::ok);
    EXPECT_EQ(calls, 1);
}

TEST_F(RedisClientTest, Overloaded)
{
    ClientOptions o;
    o.max_pending = 3;
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    get("b", seen);
    get("c", seen);
    auto s = client->submit(cmd("GET d"), record(seen));
    EXPECT_EQ(s.status, CallStatus::overloaded);
    EXPECT_EQ(s.id, 0u);
    EXPECT_EQ(client->pending(), 3u);
    loop.transport().accept();
    loop.transport().feed(":1\r\n");
    EXPECT_EQ(client->submit(cmd("GET d"), record(seen)).status, CallStatus::ok);
    EXPECT_TRUE(seen.size() == 1u);
}

TEST_F(RedisClientTest, TimeoutLeavesAbandonedEntryThatStillMatches)
{
    ClientOptions o;
    o.timeout_ms = 100;
    o.failures_to_down = 10;
    make(o);
    connect_up();
    std::vector<Seen> a, b;
    get("a", a);
    loop.advance(50);
    get("b", b);
    const FakeTimer* t = loop.timer_of_kind(EventLoop::TimerKind::request);
    ASSERT_NE(t, nullptr);
    loop.advance(49);
    EXPECT_TRUE(a.empty());
    loop.advance(1);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
    EXPECT_TRUE(b.empty());
    EXPECT_EQ(client->pending(), 2u);  // a stays for matching
    // a's late reply is swallowed; b gets its own.
    loop.transport().feed("$2\r\nla\r\n$2\r\nlb\r\n");
    EXPECT_EQ(a.size(), 1u);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::ok);
    EXPECT_EQ(b[0].text, "lb");
    EXPECT_EQ(client->pending(), 0u);
    EXPECT_EQ(client->state(), ClientState::up);
    EXPECT_EQ(client->last_latency_ms(), 50);
}

TEST_F(RedisClientTest, TimerFollowsEarliestDeadline)
{
    ClientOptions o;
    o.timeout_ms = 100;
    o.failures_to_down = 10;
    make(o);
    connect_up();
    std::vector<Seen> a, b;
    get("a", a);
    loop.advance(30);
    get("b", b);
    loop.transport().feed(":1\r\n");  // a answered
    ASSERT_EQ(a.size(), 1u);
    loop.advance(70);  // a's old deadline: nothing to expire
    EXPECT_TRUE(b.empty());
    loop.advance(29);
    EXPECT_TRUE(b.empty());
    loop.advance(1);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::timeout);
}

TEST_F(RedisClientTest, CancelDropsCallbackButKeepsMatching)
{
    make();
    std::vector<Seen> a, b, c;
    CallId ia = get("a", a);
    get("b", b);
    loop.transport().accept();
    client->cancel(ia);
    client->cancel(ia);       // twice: harmless
    client->cancel(123456);   // unknown
    client->cancel(0);
    loop.transport().feed(":1\r\n:2\r\n");
    EXPECT_TRUE(a.empty());
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].text, "2");
    CallId ic = get("c", c);
    loop.transport().feed(":3\r\n");
    client->cancel(ic);  // finished
    ASSERT_EQ(c.size(), 1u);
}

TEST_F(RedisClientTest, CancelledCallIsNotCalledOnTimeoutOrDisconnect)
{
    ClientOptions o;
    o.failures_to_down = 10;
    make(o);
    connect_up();
    std::vector<Seen> a, b;
    CallId ia = get("a", a);
    client->cancel(ia);
    loop.advance(o.timeout_ms);
    EXPECT_TRUE(a.empty());
    CallId ib = get("b", b);
    client->cancel(ib);
    loop.transport().peer_close();
    EXPECT_TRUE(b.empty());
}

TEST_F(RedisClientTest, HandshakeAuthAndSelectGoFirst)
{
    ClientOptions o;
    o.user = "alice";
    o.password = "s3cret";
    o.db = 5;
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(),
              cmd("AUTH alice s3cret") + cmd("SELECT 5") + cmd("GET a"));
    EXPECT_EQ(client->state(), ClientState::connecting);
    loop.transport().feed("+OK\r\n");
    EXPECT_EQ(client->state(), ClientState::connecting);
    // A call during the handshake is pipelined straight behind it.
    get("b", seen);
    EXPECT_EQ(loop.transport().take(), cmd("GET b"));
    loop.transport().feed("+OK\r\n");
    EXPECT_EQ(client->state(), ClientState::up);
    EXPECT_TRUE(seen.empty());
    loop.transport().feed("$1\r\nA\r\n$1\r\nB\r\n");
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].text, "A");
    EXPECT_EQ(seen[1].text, "B");
}

TEST_F(RedisClientTest, PasswordOnlyAuth)
{
    ClientOptions o;
    o.password = "pw";
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(), cmd("AUTH pw") + cmd("GET a"));
}

TEST_F(RedisClientTest, AuthErrorDropsConnection)
{
    ClientOptions o;
    o.password = "bad";
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    loop.transport().accept();
    loop.transport().feed("-WRONGPASS invalid username-password pair\r\n");
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::disconnected);
    EXPECT_EQ(client->state(), ClientState::idle);
    EXPECT_FALSE(loop.transport().open);
    ASSERT_FALSE(errors.empty());
    EXPECT_NE(errors.back().find("AUTH"), std::string::npos);
    EXPECT_NE(errors.back().find("WRONGPASS"), std::string::npos);
    // The next submit reconnects.
    get("b", seen);
    EXPECT_EQ(loop.transport().connects, 2);
}

// A connect that takes connect_timeout is a failure, and a new attempt starts at once for the
// calls that may still wait; each fails by connect_timeout + timeout from its queuing.
TEST_F(RedisClientTest, ConnectTimeoutRetriesWithinEachCallsWait)
{
    ClientOptions o;
    o.connect_timeout_ms = 200;
    o.timeout_ms = 50;
    o.failures_to_down = 3;
    make(o);
    std::vector<Seen> a, b;
    get("a", a);        // waits until +250 at most
    loop.advance(100);  // longer than timeout_ms: still connecting
    EXPECT_TRUE(a.empty());
    get("b", b);        // until +350
    loop.advance(100);  // the connect timeout: a second attempt, both still waiting
    EXPECT_TRUE(a.empty());
    EXPECT_TRUE(b.empty());
    EXPECT_EQ(loop.transport().connects, 2);
    EXPECT_EQ(client->state(), ClientState::connecting);
    loop.advance(50);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
    EXPECT_TRUE(b.empty());
    loop.advance(100);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::timeout);
    loop.advance(50);  // the second attempt's timeout: nobody waits, no third attempt
    EXPECT_EQ(client->state(), ClientState::idle);
    EXPECT_EQ(loop.transport().connects, 2);
    EXPECT_GE(loop.transport().closes, 2);
}

// The retry serves the calls once the second attempt connects (a slow first answer, such as a
// sentinel that hangs, costs the attempt, not the requests).
TEST_F(RedisClientTest, ConnectTimeoutRetryDeliversTheWaitingCalls)
{
    ClientOptions o;
    o.connect_timeout_ms = 200;
    o.timeout_ms = 100;
    make(o);
    std::vector<Seen> a;
    get("a", a);
    loop.advance(200);
    EXPECT_TRUE(a.empty());
    loop.transport().accept();  // the second attempt
    EXPECT_EQ(loop.transport().take(), cmd("GET a"));
    loop.transport().feed(":7\r\n");
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::ok);
    EXPECT_EQ(a[0].text, "7");
    EXPECT_EQ(client->state(), ClientState::up);
}

// Three connect timeouts in a row open the breaker: the calls fail at once.
TEST_F(RedisClientTest, ConnectTimeoutsOpenTheBreaker)
{
    ClientOptions o;
    o.connect_timeout_ms = 100;
    o.timeout_ms = 1000;
    o.failures_to_down = 3;
    make(o);
    std::vector<Seen> a;
    get("a", a);
    loop.advance(200);
    EXPECT_TRUE(a.empty());
    EXPECT_EQ(loop.transport().connects, 3);
    loop.advance(100);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
    EXPECT_EQ(client->state(), ClientState::down);
}

TEST_F(RedisClientTest, QueuedCallsGetTimeoutFromConnection)
{
    ClientOptions o;
    o.connect_timeout_ms = 200;
    o.timeout_ms = 50;
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    loop.advance(150);
    loop.transport().accept();
    loop.advance(49);
    EXPECT_TRUE(seen.empty());
    loop.advance(1);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::timeout);
}

TEST_F(RedisClientTest, ConnectionLossFailsPendingAndReconnectsOnNextSubmit)
{
    make();
    connect_up();
    std::vector<Seen> seen;
    get("a", seen);
    get("b", seen);
    loop.transport().peer_close();
    ASSERT_EQ(seen.size(), 2u);
    EXPECT_EQ(seen[0].status, CallStatus::disconnected);
    EXPECT_EQ(seen[1].status, CallStatus::disconnected);
    EXPECT_EQ(client->state(), ClientState::idle);
    EXPECT_EQ(client->pending(), 0u);
    get("c", seen);
    EXPECT_EQ(loop.transport().connects, 2);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(), cmd("GET c"));
    loop.transport().feed(":7\r\n");
    ASSERT_EQ(seen.size(), 3u);
    EXPECT_EQ(seen[2].text, "7");
}

TEST_F(RedisClientTest, TransportThatCannotStart)
{
    make();
    std::vector<Seen> seen;
    get("warm", seen);  // creates the transport
    loop.transport().accept();
    loop.transport().peer_close();
    loop.transport().refuse_start = true;
    auto s = client->submit(cmd("GET a"), record(seen));
    EXPECT_EQ(s.status, CallStatus::disconnected);
    EXPECT_EQ(client->pending(), 0u);
    EXPECT_EQ(seen.size(), 1u);  // only warm's disconnect
}

TEST_F(RedisClientTest, BreakerOpensAfterThreeFailuresAndProbeRecovers)
{
    ClientOptions o;
    o.failures_to_down = 3;
    o.probe_interval_ms = 1000;
    make(o);
    std::vector<Seen> seen;
    for (int i = 0; i < 3; i++) {
        EXPECT_EQ(client->state(), ClientState::idle);
        get("a", seen);
        loop.transport().refuse();
    }
    ASSERT_EQ(seen.size(), 3u);
    for (const Seen& s : seen) {
        EXPECT_EQ(s.status, CallStatus::disconnected);
    }
    EXPECT_EQ(client->state(), ClientState::down);
    EXPECT_EQ(client->submit(cmd("GET a"), record(seen)).status, CallStatus::down);
    EXPECT_EQ(loop.transport().connects, 3);
    const FakeTimer* probe = loop.timer_of_kind(EventLoop::TimerKind::background);
    ASSERT_NE(probe, nullptr);
    EXPECT_EQ(probe->due, loop.now + 1000);

    // A failed probe re-arms.
    loop.advance(1000);
    EXPECT_EQ(loop.transport().connects, 4);
    EXPECT_EQ(client->state(), ClientState::down);
    loop.transport().refuse();
    EXPECT_EQ(client->state(), ClientState::down);
    EXPECT_EQ(client->submit(cmd("GET a"), record(seen)).status, CallStatus::down);

    // A good probe: connect, PING, PONG -> up.
    loop.advance(1000);
    EXPECT_EQ(loop.transport().connects, 5);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(), cmd("PING"));
    EXPECT_EQ(client->state(), ClientState::down);
    loop.transport().feed("+PONG\r\n");
    EXPECT_EQ(client->state(), ClientState::up);
    EXPECT_EQ(loop.timer_of_kind(EventLoop::TimerKind::background), nullptr);
    get("b", seen);
    EXPECT_EQ(loop.transport().take(), cmd("GET b"));  // same connection
    loop.transport().feed(":9\r\n");
    EXPECT_EQ(seen.back().text, "9");
    EXPECT_EQ(seen.size(), 4u);
}

TEST_F(RedisClientTest, ProbeConnectTimeoutRearms)
{
    ClientOptions o;
    o.failures_to_down = 1;
    o.probe_interval_ms = 500;
    o.connect_timeout_ms = 100;
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    loop.advance(100);  // connect timeout: one failure opens the breaker
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::timeout);
    EXPECT_EQ(client->state(), ClientState::down);
    loop.advance(500);
    EXPECT_EQ(loop.transport().connects, 2);
    loop.advance(100);  // probe times out
    EXPECT_EQ(client->state(), ClientState::down);
    loop.advance(500);
    EXPECT_EQ(loop.transport().connects, 3);
}

TEST_F(RedisClientTest, OneStallIsOneFailureHoweverManyCallsItHeld)
{
    ClientOptions o;
    o.failures_to_down = 3;
    make(o);
    connect_up();
    std::vector<Seen> seen;
    get("a", seen);
    get("b", seen);
    get("c", seen);
    get("d", seen);
    loop.advance(o.timeout_ms);
    ASSERT_EQ(seen.size(), 4u);
    for (const Seen& s : seen) {
        EXPECT_EQ(s.status, CallStatus::timeout);
    }
    // Four calls, one round trip: the breaker stays closed and the connection stays.
    EXPECT_EQ(client->state(), ClientState::up);
    EXPECT_TRUE(loop.transport().open);
    // A call queued before the failure was counted but sent after it is the same stall.
    RedisClient::Since before{loop.now - 1, client->failure_epoch() - 1};
    auto s = client->submit(cmd("GET e"), record(seen), &before);
    ASSERT_EQ(s.status, CallStatus::ok);
    loop.advance(o.timeout_ms);
    EXPECT_EQ(seen.back().status, CallStatus::timeout);
    EXPECT_EQ(client->state(), ClientState::up);
    // Two more round trips that fail, one after the other: three in a row open the breaker.
    get("f", seen);
    loop.advance(o.timeout_ms);
    EXPECT_EQ(client->state(), ClientState::up);
    get("g", seen);
    loop.advance(o.timeout_ms);
    EXPECT_EQ(client->state(), ClientState::down);
    EXPECT_FALSE(loop.transport().open);
    EXPECT_EQ(client->pending(), 0u);
    EXPECT_EQ(client->submit(cmd("GET a"), record(seen)).status, CallStatus::down);
}

TEST_F(RedisClientTest, TimeoutRunsFromWhenTheCallerStartedWaiting)
{
    ClientOptions o;
    o.timeout_ms = 100;
    o.failures_to_down = 10;
    make(o);
    connect_up();
    std::vector<Seen> a, b;
    get("a", a);  // due at +100
    loop.advance(10);
    // b (a MOVED re-send, say) started waiting 60 ms ago: due at +50, before a, behind it.
    RedisClient::Since since{loop.now - 60, client->failure_epoch()};
    ASSERT_EQ(client->submit(cmd("GET b"), record(b), &since).status, CallStatus::ok);
    loop.advance(39);
    EXPECT_TRUE(b.empty());
    loop.advance(1);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::timeout);
    EXPECT_TRUE(a.empty());
    loop.advance(49);
    EXPECT_TRUE(a.empty());
    loop.advance(1);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
}

// While (re)connecting, a call gets `timeout` once the connection is up, but never waits
// longer than connect_timeout + timeout from when its caller started waiting.
TEST_F(RedisClientTest, NoWaitLongerThanConnectTimeoutPlusTimeout)
{
    ClientOptions o;
    o.connect_timeout_ms = 200;
    o.timeout_ms = 50;
    make(o);
    std::vector<Seen> a, b;
    get("a", a);  // starts the connection: due at most at +250
    // b started waiting 100 ms before it was queued (at -100): due at +150 at the latest.
    RedisClient::Since since{loop.now - 100, client->failure_epoch()};
    ASSERT_EQ(client->submit(cmd("GET b"), record(b), &since).status, CallStatus::ok);
    loop.advance(120);
    loop.transport().accept();  // a is due at +170, b still at +150
    loop.advance(29);
    EXPECT_TRUE(b.empty());
    loop.advance(1);
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::timeout);
    EXPECT_TRUE(a.empty());
    loop.advance(20);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
    EXPECT_EQ(client->state(), ClientState::up);
}

// A call whose caller has waited connect_timeout + timeout times out even while the
// connection is still being made (a connect that started after it was queued).
TEST_F(RedisClientTest, OldCallTimesOutWhileConnecting)
{
    ClientOptions o;
    o.connect_timeout_ms = 200;
    o.timeout_ms = 50;
    make(o);
    std::vector<Seen> a;
    RedisClient::Since since{loop.now - 200, client->failure_epoch()};
    ASSERT_EQ(client->submit(cmd("GET a"), record(a), &since).status, CallStatus::ok);
    loop.advance(49);
    EXPECT_TRUE(a.empty());
    loop.advance(1);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
    // Not a failure of Redis: the connection goes on, and the late reply is swallowed.
    loop.transport().accept();
    EXPECT_EQ(client->state(), ClientState::up);
    loop.transport().feed("$1\r\nv\r\n");
    EXPECT_EQ(a.size(), 1u);
    EXPECT_EQ(client->pending(), 0u);
}

TEST_F(RedisClientTest, ErrorRepliesCountPerRoundTripGoodRepliesReset)
{
    ClientOptions o;
    o.failures_to_down = 3;
    make(o);
    connect_up();
    std::vector<Seen> seen;
    // Three calls in flight together that all fail: one failed round trip.
    get("x", seen);
    get("y", seen);
    get("z", seen);
    loop.transport().feed("-ERR a\r\n-ERR b\r\n-ERR c\r\n");
    EXPECT_EQ(client->state(), ClientState::up);
    // err, ok, err, err: never 3 in a row.
    get("x", seen);
    loop.transport().feed(":1\r\n");
    get("x", seen);
    loop.transport().feed("-ERR d\r\n");
    get("x", seen);
    loop.transport().feed("-ERR e\r\n");
    EXPECT_EQ(client->state(), ClientState::up);
    // NOSCRIPT doesn't count (no fallback configured: delivered as is).
    get("x", seen);
    loop.transport().feed("-NOSCRIPT No matching script\r\n");
    EXPECT_EQ(seen.back().text, "ERR:NOSCRIPT No matching script");
    EXPECT_EQ(client->state(), ClientState::up);
    // The third failed round trip in a row opens it; its callback still sees its reply.
    get("w", seen);
    loop.transport().feed("-ERR g\r\n");
    EXPECT_EQ(client->state(), ClientState::down);
    EXPECT_EQ(seen.back().status, CallStatus::ok);
    EXPECT_EQ(seen.back().text, "ERR:ERR g");
}

TEST_F(RedisClientTest, ReadonlyReplyDropsTheConnection)
{
    make();
    connect_up();
    std::vector<Seen> a, b;
    get("a", a);
    get("b", b);
    loop.transport().feed("-READONLY You can't write against a read only replica.\r\n");
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].text, "ERR:READONLY You can't write against a read only replica.");
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::disconnected);
    EXPECT_FALSE(loop.transport().open);
    EXPECT_EQ(client->state(), ClientState::idle);  // one failure: not down
    get("c", a);  // reconnects
    EXPECT_EQ(loop.transport().connects, 2);
}

TEST_F(RedisClientTest, ProbeSendsTheConfiguredCallAndAnErrorKeepsItDown)
{
    ClientOptions o;
    o.failures_to_down = 1;
    o.probe_interval_ms = 1000;
    o.probe_command = cmd("EVAL %s 0", "return 1");
    make(o);
    std::vector<Seen> seen;
    get("a", seen);
    loop.transport().refuse();
    ASSERT_EQ(client->state(), ClientState::down);
    loop.advance(1000);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(), o.probe_command);
    loop.transport().feed("-READONLY You can't write against a read only replica.\r\n");
    EXPECT_EQ(client->state(), ClientState::down);
    loop.advance(1000);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(), o.probe_command);
    loop.transport().feed(":1\r\n");
    EXPECT_EQ(client->state(), ClientState::up);
}

TEST_F(RedisClientTest, DisconnectWithPendingOpensBreakerWithoutCallingTimedOut)
{
    ClientOptions o;
    o.failures_to_down = 2;
    make(o);
    connect_up();
    std::vector<Seen> a, b;
    get("a", a);
    loop.advance(o.timeout_ms);  // 1 failure
    ASSERT_EQ(a.size(), 1u);
    get("b", b);
    loop.transport().peer_close();  // 2nd failure: down
    EXPECT_EQ(a.size(), 1u);        // the timed-out one isn't called again
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].status, CallStatus::disconnected);
    EXPECT_EQ(client->state(), ClientState::down);
}

TEST_F(RedisClientTest, NoscriptFallbackResendsUnderSameId)
{
    ClientOptions o;
    std::vector<std::string> converted;
    o.noscript_fallback = [&](std::string_view command) {
        converted.emplace_back(command);
        return cmd("EVAL %s 0", "return 1");
    };
    make(o);
    connect_up();
    std::vector<Seen> seen, other;
    auto s = client->submit(cmd("EVALSHA %s 0", "abc"), record(seen));
    ASSERT_EQ(s.status, CallStatus::ok);
    get("k", other);
    EXPECT_EQ(loop.transport().take(), cmd("EVALSHA %s 0", "abc") + cmd("GET k"));
    loop.transport().feed("-NOSCRIPT No matching script. Please use EVAL.\r\n");
    EXPECT_TRUE(seen.empty());
    ASSERT_EQ(converted.size(), 1u);
    EXPECT_EQ(converted[0], cmd("EVALSHA %s 0", "abc"));
    EXPECT_EQ(loop.transport().take(), cmd("EVAL %s 0", "return 1"));
    EXPECT_EQ(client->pending(), 2u);
    // GET k's reply comes first (it was sent before the fallback).
    loop.transport().feed("$1\r\nv\r\n:1\r\n");
    ASSERT_EQ(other.size(), 1u);
    EXPECT_EQ(other[0].text, "v");
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::ok);
    EXPECT_EQ(seen[0].text, "1");
}

TEST_F(RedisClientTest, NoscriptFallbackKeepsIdForCancelAndItsDeadline)
{
    ClientOptions o;
    o.timeout_ms = 100;
    o.failures_to_down = 10;
    o.noscript_fallback = [](std::string_view) { return cmd("EVAL %s 0", "return 1"); };
    make(o);
    connect_up();
    std::vector<Seen> a, b, c;
    auto sa = client->submit(cmd("EVALSHA %s 0", "abc"), record(a));
    loop.advance(50);
    get("c", c);  // due at +150
    loop.advance(30);
    loop.transport().feed("-NOSCRIPT x\r\n");  // a's EVAL goes behind c, still due at +100
    loop.advance(19);  // the timeout covers the resend: 100 ms from the submit
    EXPECT_TRUE(a.empty());
    loop.advance(1);
    ASSERT_EQ(a.size(), 1u);
    EXPECT_EQ(a[0].status, CallStatus::timeout);
    EXPECT_TRUE(c.empty());
    loop.transport().feed("$1\r\nv\r\n");  // c's reply
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(c[0].text, "v");

    auto sb = client->submit(cmd("EVALSHA %s 0", "abc"), record(b));
    loop.transport().feed(":5\r\n");  // late reply to a's EVAL: swallowed
    loop.transport().feed("-NOSCRIPT x\r\n");
    client->cancel(sb.id);  // the resent call keeps its id
    loop.transport().feed(":1\r\n");
    EXPECT_TRUE(b.empty());
    EXPECT_EQ(client->pending(), 0u);
    (void)sa;
}

TEST_F(RedisClientTest, CallbackMaySubmitAndCancel)
{
    make();
    connect_up();
    std::vector<Seen> seen, inner;
    CallId victim = 0;
    bool submitted = false;
    auto s = client->submit(cmd("GET a"), [&](const CallResult& r) {
        seen.push_back({r.status, reply_text(r.reply)});
        auto again = client->submit(cmd("GET inner"), record(inner));
        submitted = again.status == CallStatus::ok;
        client->cancel(victim);
    });
    ASSERT_EQ(s.status, CallStatus::ok);
    std::vector<Seen> v;
    victim = get("victim", v);
    loop.transport().take();
    // Both replies in one chunk: the callback cancels the next one before it is handled.
    loop.transport().feed(":1\r\n:2\r\n");
    EXPECT_TRUE(submitted);
    EXPECT_EQ(seen.size(), 1u);
    EXPECT_TRUE(v.empty());
    EXPECT_EQ(loop.transport().take(), cmd("GET inner"));
    loop.transport().feed(":3\r\n");
    ASSERT_EQ(inner.size(), 1u);
    EXPECT_EQ(inner[0].text, "3");
}

TEST_F(RedisClientTest, DisconnectCallbackMayCancelAnotherFailingCall)
{
    // Found by tests/fuzz/fuzz_client.cpp: the calls being failed had left calls_, where
    // cancel() looked for them, so a cancelled call's callback was still called.
    make();
    std::vector<Seen> seen, v;
    CallId victim = 0;
    auto s = client->submit(cmd("GET a"), [&](const CallResult& r) {
        seen.push_back({r.status, reply_text(r.reply)});
        client->cancel(victim);
    });
    ASSERT_EQ(s.status, CallStatus::ok);
    victim = get("victim", v);
    loop.transport().refuse();
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::disconnected);
    EXPECT_TRUE(v.empty());
    EXPECT_EQ(client->pending(), 0u);
}

TEST_F(RedisClientTest, CallbackMayShutDown)
{
    make();
    connect_up();
    std::vector<Seen> a, b;
    ASSERT_EQ(client->submit(cmd("GET a"),
                             [&](const CallResult& r) {
                                 a.push_back({r.status, reply_text(r.reply)});
                                 client->shutdown();
                             })
                  .status,
              CallStatus::ok);
    get("b", b);
    loop.transport().feed(":1\r\n:2\r\n");
    EXPECT_EQ(a.size(), 1u);
    EXPECT_TRUE(b.empty());
    EXPECT_EQ(client->pending(), 0u);
    EXPECT_FALSE(loop.transport().open);
    EXPECT_EQ(client->submit(cmd("GET c"), record(b)).status, CallStatus::shutdown);
    loop.advance(10000);
    EXPECT_TRUE(b.empty());
}

TEST_F(RedisClientTest, TimeoutCallbackMayShutDown)
{
    ClientOptions o;
    o.failures_to_down = 10;
    make(o);
    connect_up();
    std::vector<Seen> b;
    int a = 0;
    client->submit(cmd("GET a"), [&](const CallResult&) {
        a++;
        client->shutdown();
    });
    get("b", b);
    loop.advance(o.timeout_ms);
    EXPECT_EQ(a, 1);
    EXPECT_TRUE(b.empty());
}

TEST_F(RedisClientTest, DisconnectCallbackMayResubmitOrShutDown)
{
    make();
    connect_up();
    std::vector<Seen> retried;
    int called = 0;
    client->submit(cmd("GET a"), [&](const CallResult& r) {
        called++;
        EXPECT_EQ(r.status, CallStatus::disconnected);
        EXPECT_EQ(client->submit(cmd("GET retry"), record(retried)).status, CallStatus::ok);
    });
    int second = 0;
    client->submit(cmd("GET b"), [&](const CallResult&) {
        second++;
        client->shutdown();
    });
    std::vector<Seen> third;
    get("c", third);
    loop.transport().peer_close();
    EXPECT_EQ(called, 1);
    EXPECT_EQ(second, 1);
    EXPECT_TRUE(third.empty());   // dropped by the shutdown
    EXPECT_TRUE(retried.empty());  // dropped by the shutdown
    EXPECT_EQ(client->pending(), 0u);
}

TEST_F(RedisClientTest, DisconnectCallbackResubmitReconnects)
{
    make();
    connect_up();
    std::vector<Seen> retried;
    client->submit(cmd("GET a"), [&](const CallResult&) {
        client->submit(cmd("GET retry"), record(retried));
    });
    loop.transport().peer_close();
    EXPECT_EQ(client->state(), ClientState::connecting);
    EXPECT_EQ(loop.transport().connects, 2);
    loop.transport().accept();
    EXPECT_EQ(loop.transport().take(), cmd("GET retry"));
    loop.transport().feed(":1\r\n");
    ASSERT_EQ(retried.size(), 1u);
    EXPECT_EQ(retried[0].text, "1");
}

TEST_F(RedisClientTest, ShutdownDropsCallbacksWithoutCalling)
{
    make();
    connect_up();
    std::vector<Seen> seen;
    get("a", seen);
    get("b", seen);
    client->shutdown();
    EXPECT_EQ(client->pending(), 0u);
    EXPECT_FALSE(loop.transport().open);
    for (const FakeTimer* t : loop.timers) {
        EXPECT_FALSE(t->armed_);
    }
    loop.advance(10000);
    EXPECT_TRUE(seen.empty());
    EXPECT_EQ(client->submit(cmd("GET c"), record(seen)).status, CallStatus::shutdown);
    client->shutdown();  // idempotent
}

TEST_F(RedisClientTest, ProtocolErrorDropsConnection)
{
    make();
    connect_up();
    std::vector<Seen> seen;
    get("a", seen);
    loop.transport().feed("?garbage\r\n");
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_EQ(seen[0].status, CallStatus::disconnected);
    EXPECT_FALSE(loop.transport().open);
}

TEST_F(RedisClientTest, CallbackExceptionIsContained)
{
    make();
    connect_up();
    std::vector<Seen> b;
    client->submit(cmd("GET a"), [](const CallResult&) { throw std::runtime_error("boom"); });
    get("b", b);
    loop.transport().feed(":1\r\n:2\r\n");
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(client->state(), ClientState::up);
}

TEST_F(RedisClientTest, LatencyIsMeasured)
{
    make();
    connect_up();
    std::vector<Seen> seen;
    get("a", seen);
    loop.advance(7);
    loop.transport().feed(":1\r\n");
    EXPECT_EQ(client->last_latency_ms(), 7);
}

}  // namespace
}  // namespace ratelimit

namespace ratelimit {
namespace {

// The statistics hooks: every accepted call ends exactly once, with its latency when answered.
class ClientStatsTest : public RedisClientTest {
protected:
    void make_counted(ClientOptions options = {})
    {
        ClientObserver observer;
        observer.on_sent = [this] { sent++; };
        observer.on_done = [this](CallStatus s, int64_t latency) { done.push_back({s, latency}); };
        observer.on_timeout = [this] { timeouts++; };
        observer.on_error_reply = [this] { error_replies++; };
        observer.on_connect = [this] { connects++; };
        client = std::make_unique<RedisClient>(loop, std::move(options), observer);
    }
    int sent = 0;
    int timeouts = 0;
    int error_replies = 0;
    int connects = 0;
    std::vector<std::pair<CallStatus, int64_t>> done;
};

TEST_F(ClientStatsTest, EveryCallEndsOnce)
{
    ClientOptions o;
    o.timeout_ms = 100;
    o.failures_to_down = 10;
    make_counted(o);
    std::vector<Seen> seen;
    get("a", seen);
    EXPECT_EQ(connects, 1);
    loop.transport().accept();
    loop.advance(7);
    loop.transport().feed("$1\r\nx\r\n");
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0], std::make_pair(CallStatus::ok, int64_t(7)));

    get("b", seen);  // times out, answered late
    loop.advance(100);
    EXPECT_EQ(timeouts, 1);
    EXPECT_EQ(done.size(), 1u);  // still on the wire
    loop.transport().feed("-ERR boom\r\n");
    EXPECT_EQ(error_replies, 1);
    ASSERT_EQ(done.size(), 2u);
    EXPECT_EQ(done[1], std::make_pair(CallStatus::ok, int64_t(100)));

    get("c", seen);
    get("d", seen);
    loop.transport().peer_close();
    ASSERT_EQ(done.size(), 4u);
    EXPECT_EQ(done[2].first, CallStatus::disconnected);
    EXPECT_EQ(done[3].first, CallStatus::disconnected);

    get("e", seen);  // reconnects; dropped at shutdown
    EXPECT_EQ(connects, 2);
    client->shutdown();
    ASSERT_EQ(done.size(), 5u);
    EXPECT_EQ(done[4].first, CallStatus::shutdown);
    EXPECT_EQ(sent, 5);
}

TEST_F(ClientStatsTest, RefusedSubmitsAreNotCounted)
{
    ClientOptions o;
    o.max_pending = 1;
    make_counted(o);
    std::vector<Seen> seen;
    get("a", seen);
    EXPECT_EQ(client->submit(cmd("GET b"), record(seen)).status, CallStatus::overloaded);
    EXPECT_EQ(sent, 1);
    client->shutdown();
    EXPECT_EQ(done.size(), 1u);
}

}  // namespace
}  // namespace ratelimit
