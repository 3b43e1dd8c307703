// A fake event loop for the core's unit tests: manual clock, manual timers, and a scripted
// transport whose bytes the test reads and whose replies it feeds.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "ratelimit/transport.h"

namespace ratelimit {
namespace testing_fakes {

class FakeLoop;

class FakeTransport final : public Transport {
public:
    bool connect(TransportSink& sink) noexcept override
    {
        connects++;
        if (refuse_start) {
            return false;
        }
        sink_ = &sink;
        written.clear();  // a new stream
        connecting = true;
        open = false;
        return true;
    }
    bool write(std::string_view bytes) noexcept override
    {
        if (!connecting && !open) {
            return false;
        }
        written.append(bytes.data(), bytes.size());
        return true;
    }
    void close() noexcept override
    {
        closes++;
        connecting = false;
        open = false;
    }

    // Test side.
    void accept()
    {
        ASSERT_TRUE(connecting);
        connecting = false;
        open = true;
        sink_->on_connected();
    }
    void refuse(std::string_view reason = "connection refused")
    {
        ASSERT_TRUE(connecting);
        connecting = false;
        sink_->on_closed(reason);
    }
    void feed(std::string_view data)
    {
        ASSERT_TRUE(open);
        sink_->on_data(data.data(), data.size());
    }
    void peer_close()
    {
        ASSERT_TRUE(open);
        open = false;
        sink_->on_closed("closed by peer");
    }
    std::string take()
    {
        std::string out;
        out.swap(written);
        return out;
    }

    TransportSink* sink_ = nullptr;
    bool connecting = false;
    bool open = false;
    bool refuse_start = false;
    int connects = 0;
    int closes = 0;
    std::string written;
};

class FakeTimer final : public Timer {
public:
    FakeTimer(FakeLoop& loop, std::function<void()> fn, EventLoop::TimerKind kind)
        : loop_(loop), fn(std::move(fn)), kind(kind)
    {
    }
    ~FakeTimer() override;
    void start(int64_t delay_ms) noexcept override;
    void stop() noexcept override { armed_ = false; }
    bool armed() const noexcept override { return armed_; }

    FakeLoop& loop_;
    std::function<void()> fn;
    EventLoop::TimerKind kind;
    bool armed_ = false;
    int64_t due = 0;
};

class FakeLoop final : public EventLoop {
public:
    std::unique_ptr<Transport> make_transport() override
    {
        auto t = std::make_unique<FakeTransport>();
        transports.push_back(t.get());
        return t;
    }
    std::unique_ptr<Timer> make_timer(std::function<void()> on_fire, TimerKind kind) override
    {
        auto t = std::make_unique<FakeTimer>(*this, std::move(on_fire), kind);
        timers.push_back(t.get());
        return t;
    }
    int64_t now_ms() noexcept override { return now; }

    // Moves the clock, firing due timers in order.
    void advance(int64_t ms)
    {
        int64_t target = now + ms;
        for (;;) {
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
    FakeTransport& transport()
    {
        EXPECT_EQ(transports.size(), 1u);
        return *transports.at(0);
    }
    const FakeTimer* timer_of_kind(TimerKind kind) const
    {
        for (FakeTimer* t : timers) {
            if (t->kind == kind && t->armed_) {
                return t;
            }
        }
        return nullptr;
    }

    int64_t now = 1000;
    std::vector<FakeTransport*> transports;
    std::vector<FakeTimer*> timers;
};

// A loop may outlive what made its timers (a test that makes its client again).
inline FakeTimer::~FakeTimer()
{
    auto& timers = loop_.timers;
    timers.erase(std::remove(timers.begin(), timers.end(), this), timers.end());
}

inline void FakeTimer::start(int64_t delay_ms) noexcept
{
    armed_ = true;
    due = loop_.now + delay_ms;
}

}  // namespace testing_fakes
}  // namespace ratelimit
