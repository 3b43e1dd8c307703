// libFuzzer target: RedisClient driven by the input through a fake event loop (manual clock,
// manual timers, a scripted transport; see tests/unit/redis_client_test.cpp). Each input
// byte picks an action: submit, cancel, accept/refuse/close the connection, feed Redis
// bytes (canned replies or raw input), move the clock, shut down. Callbacks may re-enter
// the client (submit, cancel, shutdown), as the nginx module's do.
//
// Checked: a callback is never called synchronously from submit(), at most once per call,
// never after cancel() or shutdown(); when the connection finally closes, every call not
// cancelled nor dropped by shutdown() has had its callback exactly once.
#include <hiredis/hiredis.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ratelimit/redis_client.h"
#include "ratelimit/script.h"
#include "fuzz_check.h"

using namespace ratelimit;


namespace {

class Input {
public:
    Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
    bool empty() const { return pos_ >= size_; }
    uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
    std::string_view bytes(size_t n)
    {
        n = std::min(n, size_ - std::min(pos_, size_));
        std::string_view out(reinterpret_cast<const char*>(data_ + pos_), n);
        pos_ += n;
        return out;
    }

private:
    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
};

class FakeLoop;

class FakeTransport final : public Transport {
public:
    bool connect(TransportSink& sink) noexcept override
    {
        if (refuse_start) {
            return false;
        }
        sink_ = &sink;
        connecting = true;
        open = false;
        return true;
    }
    bool write(std::string_view) noexcept override { return connecting || open; }
    void close() noexcept override
    {
        connecting = false;
        open = false;
    }

    TransportSink* sink_ = nullptr;
    bool connecting = false;
    bool open = false;
    bool refuse_start = false;
};

class FakeTimer final : public Timer {
public:
    FakeTimer(FakeLoop& loop, std::function<void()> fn) : loop_(loop), fn(std::move(fn)) {}
    ~FakeTimer() override;
    void start(int64_t delay_ms) noexcept override;
    void stop() noexcept override { armed_ = false; }
    bool armed() const noexcept override { return armed_; }

    FakeLoop& loop_;
    std::function<void()> fn;
    bool armed_ = false;
    int64_t due = 0;
};

class FakeLoop final : public EventLoop {
public:
    std::unique_ptr<Transport> make_transport() override
    {
        auto t = std::make_unique<FakeTransport>();
        transport = t.get();
        return t;
    }
    std::unique_ptr<Timer> make_timer(std::function<void()> on_fire, TimerKind) override
    {
        auto t = std::make_unique<FakeTimer>(*this, std::move(on_fire));
        timers.push_back(t.get());
        return t;
    }
    int64_t now_ms() noexcept override { return now; }

    void advance(int64_t ms)
    {
        int64_t target = now + ms;
        for (int fired = 0; fired < 1000; fired++) {
            FakeTimer* next = nullptr;
            for (FakeTimer* t : timers) {
                if (t->armed_ && t->due <= target && (!next || t->due < next->due)) {
                    next = t;
                }
            }
            if (!next) {
                break;
            }
            now = std::max(now, next->due);
            next->armed_ = false;
            next->fn();
        }
        now = target;
    }

    int64_t now = 1000000;
    FakeTransport* transport = nullptr;
    std::vector<FakeTimer*> timers;
};

FakeTimer::~FakeTimer()
{
    auto& v = loop_.timers;
    v.erase(std::remove(v.begin(), v.end(), this), v.end());
}

void FakeTimer::start(int64_t delay_ms) noexcept
{
    CHECK(delay_ms >= 0);
    armed_ = true;
    due = loop_.now + delay_ms;
}

// A reply to a one-request batch: the string "<now> <allowed> <level>".
std::string script_reply(Input& in)
{
    std::string text = "123 " + std::to_string(in.byte() & 1) + " " + std::to_string(in.byte());
    return "$" + std::to_string(text.size()) + "\r\n" + text + "\r\n";
}

const std::string& evalsha_command()
{
    static const std::string command = [] {
        ScriptLimit limit;
        limit.key = "rl:p:k";
        limit.params = BucketParams{60, 60000, 10};
        ScriptBatch batch;
        batch.add_request(&limit, 1);
        std::string out;
        batch.append_evalsha(out);
        return out;
    }();
    return command;
}

enum class CallState { pending, called, cancelled, dropped };

struct Harness {
    FakeLoop loop;
    std::unique_ptr<RedisClient> client;
    std::map<CallId, CallState> calls;
    std::vector<CallId> ids;
    Input* in = nullptr;
    int in_submit = 0;
    int depth = 0;
    bool reentrant = true;
    bool shut_down = false;

    void shutdown()
    {
        for (auto& [id, state] : calls) {
            if (state == CallState::pending) {
                state = CallState::dropped;
            }
        }
        shut_down = true;
        client->shutdown();
    }

    void callback(CallId* id, const CallResult& result)
    {
        CHECK(in_submit == 0);
        CHECK(!shut_down);
        CHECK(*id != 0);  // submit() returned before any callback
        auto it = calls.find(*id);
        CHECK(it != calls.end());
        CHECK(it->second == CallState::pending);
        it->second = CallState::called;
        CHECK((result.status == CallStatus::ok) == (result.reply != nullptr));
        if (result.reply) {
            is_noscript(result.reply);
        }
        if (!reentrant || depth > 3 || in->empty()) {
            return;
        }
        depth++;
        switch (in->byte() % 8) {
        case 0:
            submit();
            break;
        case 1:
            cancel();
            break;
        case 2:
            if (in->byte() % 4 == 0) {
                shutdown();
            }
            break;
        default:
            break;
        }
        depth--;
    }

    void submit()
    {
        std::string command;
        switch (in->byte() % 3) {
        case 0:
            command = "*1\r\n$4\r\nPING\r\n";
            break;
        case 1:
            command = evalsha_command();
            break;
        default:
            command = std::string(in->bytes(in->byte() % 32));
            break;
        }
        // The id is known only once submit() returns: the callback reads it through a
        // shared cell, and checks it was set (a synchronous call would see 0).
        auto cell = std::make_shared<CallId>(0);
        in_submit++;
        auto submitted = client->submit(std::move(command),
                                        [this, cell](const CallResult& r) { callback(cell.get(), r); });
        in_submit--;
        if (submitted.status == CallStatus::ok) {
            CHECK(submitted.id != 0);
            CHECK(calls.count(submitted.id) == 0);
            *cell = submitted.id;
            calls[submitted.id] = CallState::pending;
            ids.push_back(submitted.id);
        } else {
            CHECK(submitted.id == 0);
        }
    }

    void cancel()
    {
        CallId id = ids.empty() ? in->byte() : ids[in->byte() % ids.size()];
        client->cancel(id);
        auto it = calls.find(id);
        if (it != calls.end() && it->second == CallState::pending) {
            it->second = CallState::cancelled;
        }
    }

    void feed(std::string_view bytes)
    {
        FakeTransport* t = loop.transport;
        if (t && t->open) {
            t->sink_->on_data(bytes.data(), bytes.size());
        }
    }

    void step()
    {
        FakeTransport* t = loop.transport;
        switch (in->byte() % 16) {
        case 0:
        case 1:
        case 2:
            submit();
            break;
        case 3:
            cancel();
            break;
        case 4:
            if (t && t->connecting) {
                t->connecting = false;
                t->open = true;
                t->sink_->on_connected();
            }
            break;
        case 5:
            if (t && (t->connecting || t->open)) {
                t->connecting = false;
                t->open = false;
                t->sink_->on_closed("closed by the fuzzer");
            }
            break;
        case 6:
            feed("+OK\r\n");
            break;
        case 7:
            feed("+PONG\r\n");
            break;
        case 8: {
            std::string reply = script_reply(*in);
            feed(reply);
            break;
        }
        case 9:
            feed("-NOSCRIPT No matching script. Please use EVAL.\r\n");
            break;
        case 10:
            feed("-ERR something\r\n");
            break;
        case 11: {
            // Raw bytes, without arrays: hiredis 0.14 allocates an array's element pointers
            // from its announced count (see has_huge_array in fuzz_check.h); arrays come from case 8.
            std::string raw(in->bytes(in->byte() % 64));
            std::replace(raw.begin(), raw.end(), '*', '+');
            feed(raw);
            break;
        }
        case 12:
            loop.advance(in->byte() % 16);
            break;
        case 13:
            loop.advance(int64_t(in->byte()) * 20);
            break;
        case 14:
            if (t) {
                t->refuse_start = in->byte() % 4 == 0;
            }
            break;
        case 15:
            if (in->byte() % 8 == 0) {
                shutdown();
            }
            break;
        }
        CHECK(client->pending() <= 64);  // max_pending is at most 8, plus the handshake
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    Input in(data, size);
    ClientOptions options;
    uint8_t flags = in.byte();
    options.connect_timeout_ms = 50 + (flags & 3) * 100;
    options.timeout_ms = 20 + ((flags >> 2) & 3) * 50;
    options.max_pending = 1 + ((flags >> 4) & 7);
    options.failures_to_down = 1 + (in.byte() % 4);
    options.probe_interval_ms = 200;
    uint8_t handshake = in.byte();
    if (handshake & 1) {
        options.password = "secret";
    }
    if (handshake & 2) {
        options.user = "user";
    }
    if (handshake & 4) {
        options.db = 2;
    }
    if (handshake & 8) {
        options.noscript_fallback = [](std::string_view command) { return evalsha_to_eval(command); };
    }

    Harness h;
    h.in = &in;
    int states = 0;
    ClientObserver observer;
    observer.on_error = [](std::string_view message) { CHECK(!message.empty()); };
    observer.on_state = [&states](ClientState) { states++; };
    h.client = std::make_unique<RedisClient>(h.loop, options, observer);

    for (int steps = 0; steps < 4096 && !in.empty() && !h.shut_down; steps++) {
        h.step();
    }

    if (!h.shut_down) {
        // Close whatever connection there is: every call still pending must be answered.
        h.reentrant = false;
        FakeTransport* t = h.loop.transport;
        if (t && (t->connecting || t->open)) {
            t->connecting = false;
            t->open = false;
            t->sink_->on_closed("closed at the end");
        }
        for (auto& [id, state] : h.calls) {
            CHECK(state != CallState::pending);
        }
        CHECK(h.client->pending() == 0);
    }
    h.client.reset();
    return 0;
}
