// RedisClient over the libev loop against a real redis-server.
#include <ev.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <cstdarg>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ev_loop.h"
#include "ratelimit/redis_client.h"
#include "redis_server.h"

namespace ratelimit {
namespace {

using testing::RedisServer;

std::string fmt(const char* format, ...)
{
    va_list ap;
    va_start(ap, format);
    char* out = nullptr;
    int len = redisvFormatCommand(&out, format, ap);
    va_end(ap);
    EXPECT_GT(len, 0);
    std::string s(out, static_cast<size_t>(len));
    redisFreeCommand(out);
    return s;
}

std::string text(const redisReply* r)
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
        return "array";
    default:
        return std::string(r->str, r->len);
    }
}

struct Result {
    bool done = false;
    CallStatus status = CallStatus::ok;
    std::string text;
};

// One ev loop, one EvLoop, one client.
class Harness {
public:
    Harness(EvEndpoint endpoint, ClientOptions options)
        : loop_(ev_loop_new(EVFLAG_AUTO)), evloop_(loop_, std::move(endpoint))
    {
        ClientObserver observer;
        observer.on_error = [this](std::string_view m) { errors.emplace_back(m); };
        client = std::make_unique<RedisClient>(evloop_, std::move(options), observer);
        ev_timer_init(&tick_, [](struct ev_loop*, ev_timer*, int) {}, 0.005, 0.005);
        ev_timer_start(loop_, &tick_);
    }
    ~Harness()
    {
        client.reset();
        ev_timer_stop(loop_, &tick_);
        ev_loop_destroy(loop_);
    }

    // Runs the loop until `done` or `ms` elapse; returns `done()`.
    bool run_until(const std::function<bool()>& done, int64_t ms = 3000)
    {
        int64_t end = evloop_.now_ms() + ms;
        while (!done() && evloop_.now_ms() < end) {
            ev_run(loop_, EVRUN_ONCE);
        }
        return done();
    }
    void run_for(int64_t ms)
    {
        run_until([] { return false; }, ms);
    }

    // Submits and waits for the callback.
    Result call(std::string command, int64_t ms = 3000)
    {
        auto result = std::make_shared<Result>();
        auto s = client->submit(std::move(command), [result](const CallResult& r) {
            result->done = true;
            result->status = r.status;
            result->text = text(r.reply);
        });
        if (s.status != CallStatus::ok) {
            result->done = true;
            result->status = s.status;
            return *result;
        }
        EXPECT_TRUE(run_until([&] { return result->done; }, ms)) << "no callback";
        return *result;
    }

    int64_t now() { return evloop_.now_ms(); }

    std::unique_ptr<RedisClient> client;
    std::vector<std::string> errors;

private:
    struct ev_loop* loop_;
    EvLoop evloop_;
    ev_timer tick_;
};

EvEndpoint tcp(const RedisServer& server)
{
    EvEndpoint e;
    e.host = "127.0.0.1";
    e.port = server.port();
    return e;
}

TEST(RedisClientIntegration, PipelinedRepliesArriveInOrder)
{
    RedisServer server;
    Harness h(tcp(server), {});
    constexpr int n = 1000;
    std::vector<int64_t> got;
    std::vector<CallStatus> statuses;
    for (int i = 0; i < n; i++) {
        auto s = h.client->submit(fmt("INCR counter"), [&](const CallResult& r) {
            statuses.push_back(r.status);
            got.push_back(r.reply && r.reply->type == REDIS_REPLY_INTEGER ? r.reply->integer
                                                                          : -1);
        });
        ASSERT_EQ(s.status, CallStatus::ok);
    }
    EXPECT_EQ(h.client->pending(), static_cast<size_t>(n));
    ASSERT_TRUE(h.run_until([&] { return got.size() == n; }));
    for (int i = 0; i < n; i++) {
        ASSERT_EQ(statuses[i], CallStatus::ok);
        ASSERT_EQ(got[i], i + 1);
    }
    EXPECT_EQ(h.client->pending(), 0u);
    EXPECT_EQ(h.client->state(), ClientState::up);
    EXPECT_GE(h.client->last_latency_ms(), 0);
}

TEST(RedisClientIntegration, LargeReplies)
{
    RedisServer server;
    Harness h(tcp(server), {});
    std::string big(100000, 'x');
    ASSERT_EQ(h.call(fmt("SET big %b", big.data(), big.size())).text, "OK");
    int done = 0;
    for (int i = 0; i < 20; i++) {
        h.client->submit(fmt("GET big"), [&](const CallResult& r) {
            EXPECT_EQ(r.status, CallStatus::ok);
            EXPECT_EQ(r.reply->len, big.size());
            done++;
        });
    }
    EXPECT_TRUE(h.run_until([&] { return done == 20; }));
}

TEST(RedisClientIntegration, UnixSocket)
{
    RedisServer server;
    EvEndpoint e;
    e.unix_path = server.unix_path();
    Harness h(e, {});
    EXPECT_EQ(h.call(fmt("SET %s %s", "k", "v")).text, "OK");
    Result r = h.call(fmt("GET %s", "k"));
    EXPECT_EQ(r.status, CallStatus::ok);
    EXPECT_EQ(r.text, "v");
}

TEST(RedisClientIntegration, ConnectionRefused)
{
    RedisServer server;
    EvEndpoint e = tcp(server);
    server.stop();
    ClientOptions o;
    o.failures_to_down = 10;
    Harness h(e, o);
    Result r = h.call(fmt("PING"));
    EXPECT_EQ(r.status, CallStatus::disconnected);
    EXPECT_EQ(h.client->state(), ClientState::idle);
    ASSERT_FALSE(h.errors.empty());
}

TEST(RedisClientIntegration, TimeoutWhileRedisIsPaused)
{
    RedisServer server;
    ClientOptions o;
    o.timeout_ms = 100;
    o.failures_to_down = 10;
    Harness h(tcp(server), o);
    ASSERT_EQ(h.call(fmt("PING")).text, "PONG");
    ASSERT_EQ(server.command("CLIENT PAUSE 500 ALL"), "OK");
    int64_t start = h.now();
    Result a = h.call(fmt("GET a"), 2000);
    int64_t took = h.now() - start;
    EXPECT_EQ(a.status, CallStatus::timeout);
    EXPECT_GE(took, 90);
    EXPECT_LT(took, 300);  // the timeout, not the pause
    // The late reply is matched to the abandoned entry; the connection stays usable.
    EXPECT_TRUE(h.run_until([&] { return h.client->pending() == 0; }, 2000));
    Result b = h.call(fmt("SET a 1"));
    EXPECT_EQ(b.status, CallStatus::ok);
    EXPECT_EQ(b.text, "OK");
    EXPECT_EQ(h.client->state(), ClientState::up);
}

TEST(RedisClientIntegration, ReconnectsAfterRestart)
{
    RedisServer server;
    Harness h(tcp(server), {});
    ASSERT_EQ(h.call(fmt("SET a 1")).text, "OK");
    server.restart();
    // The client notices the closed connection, then reconnects on the next call.
    EXPECT_TRUE(h.run_until([&] { return h.client->state() == ClientState::idle; }, 2000));
    Result r = h.call(fmt("GET a"));
    EXPECT_EQ(r.status, CallStatus::ok);
    EXPECT_EQ(r.text, "(nil)");  // a fresh server with no persistence
    EXPECT_EQ(h.client->state(), ClientState::up);
}

TEST(RedisClientIntegration, BreakerOpensAndProbeRecovers)
{
    RedisServer server;
    ClientOptions o;
    o.failures_to_down = 3;
    o.probe_interval_ms = 200;
    o.connect_timeout_ms = 100;
    Harness h(tcp(server), o);
    std::vector<ClientState> states;
    ASSERT_EQ(h.call(fmt("PING")).text, "PONG");
    server.stop();
    EXPECT_TRUE(h.run_until([&] { return h.client->state() == ClientState::idle; }, 2000));
    for (int i = 0; i < 3; i++) {
        Result r = h.call(fmt("PING"));
        EXPECT_EQ(r.status, CallStatus::disconnected) << i;
    }
    EXPECT_EQ(h.client->state(), ClientState::down);
    int64_t start = h.now();
    auto s = h.client->submit(fmt("PING"), [](const CallResult&) { FAIL() << "called"; });
    EXPECT_EQ(s.status, CallStatus::down);
    EXPECT_LE(h.now() - start, 5);

    h.run_for(250);  // a probe or so fails while the server is away
    EXPECT_EQ(h.client->state(), ClientState::down);
    server.restart();
    start = h.now();
    EXPECT_TRUE(h.run_until([&] { return h.client->state() == ClientState::up; }, 2000));
    EXPECT_LE(h.now() - start, 400);
    EXPECT_EQ(h.call(fmt("PING")).text, "PONG");
}

TEST(RedisClientIntegration, NoscriptFallsBackToEval)
{
    RedisServer server;
    const std::string script = "return 42";
    int conversions = 0;
    ClientOptions o;
    std::string sha;
    o.noscript_fallback = [&](std::string_view command) {
        conversions++;
        EXPECT_EQ(command, fmt("EVALSHA %s 0", sha.c_str()));
        return fmt("EVAL %s 0", script.c_str());
    };
    Harness h(tcp(server), o);
    sha = h.call(fmt("SCRIPT LOAD %s", script.c_str())).text;
    ASSERT_EQ(sha.size(), 40u);
    // Loaded: EVALSHA works directly.
    Result r = h.call(fmt("EVALSHA %s 0", sha.c_str()));
    EXPECT_EQ(r.text, "42");
    EXPECT_EQ(conversions, 0);
    ASSERT_EQ(server.command("SCRIPT FLUSH"), "OK");
    r = h.call(fmt("EVALSHA %s 0", sha.c_str()));
    EXPECT_EQ(r.status, CallStatus::ok);
    EXPECT_EQ(r.text, "42");
    EXPECT_EQ(conversions, 1);
    EXPECT_EQ(h.client->state(), ClientState::up);
}

TEST(RedisClientIntegration, AuthWithPassword)
{
    RedisServer server;
    ASSERT_EQ(server.command("CONFIG SET requirepass s3cret"), "OK");
    {
        ClientOptions o;
        o.password = "s3cret";
        Harness h(tcp(server), o);
        Result r = h.call(fmt("SET k v"));
        EXPECT_EQ(r.status, CallStatus::ok);
        EXPECT_EQ(r.text, "OK");
    }
    {
        ClientOptions o;
        o.password = "wrong";
        o.failures_to_down = 10;
        Harness h(tcp(server), o);
        Result r = h.call(fmt("GET k"));
        EXPECT_EQ(r.status, CallStatus::disconnected);
        ASSERT_FALSE(h.errors.empty());
        EXPECT_NE(h.errors.front().find("AUTH"), std::string::npos) << h.errors.front();
    }
    {
        ClientOptions o;  // no password: the command itself fails with NOAUTH
        o.failures_to_down = 10;
        Harness h(tcp(server), o);
        Result r = h.call(fmt("GET k"));
        EXPECT_EQ(r.status, CallStatus::ok);
        EXPECT_EQ(r.text.rfind("ERR:NOAUTH", 0), 0u) << r.text;
    }
}

TEST(RedisClientIntegration, AuthWithUserAndPassword)
{
    RedisServer server;
    ASSERT_EQ(server.command("ACL SETUSER alice on >pw ~* &* +@all"), "OK");
    ClientOptions o;
    o.user = "alice";
    o.password = "pw";
    Harness h(tcp(server), o);
    Result r = h.call(fmt("ACL WHOAMI"));
    EXPECT_EQ(r.status, CallStatus::ok);
    EXPECT_EQ(r.text, "alice");
}

TEST(RedisClientIntegration, SelectDb)
{
    RedisServer server;
    ClientOptions o3;
    o3.db = 3;
    Harness h3(tcp(server), o3);
    ASSERT_EQ(h3.call(fmt("SET k in3")).text, "OK");
    EXPECT_EQ(h3.call(fmt("GET k")).text, "in3");
    Harness h0(tcp(server), {});
    EXPECT_EQ(h0.call(fmt("GET k")).text, "(nil)");
    EXPECT_EQ(h0.call(fmt("SELECT 3")).text, "OK");
    EXPECT_EQ(h0.call(fmt("GET k")).text, "in3");
}

TEST(RedisClientIntegration, ShutdownWithCallsInFlight)
{
    RedisServer server;
    Harness h(tcp(server), {});
    ASSERT_EQ(h.call(fmt("PING")).text, "PONG");
    int called = 0;
    for (int i = 0; i < 10; i++) {
        h.client->submit(fmt("PING"), [&](const CallResult&) { called++; });
    }
    h.client->shutdown();
    h.run_for(50);
    EXPECT_EQ(called, 0);
    EXPECT_EQ(h.client->submit(fmt("PING"), [](const CallResult&) {}).status,
              CallStatus::shutdown);
}

}  // namespace
}  // namespace ratelimit
