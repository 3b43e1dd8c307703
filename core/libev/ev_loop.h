// The core's EventLoop on libev, for tests and tools: one TCP or unix-socket endpoint,
// non-blocking sockets, level-triggered ev_io watchers and ev_timer timers.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ratelimit/transport.h"

struct ev_loop;

namespace ratelimit {

struct EvEndpoint {
    std::string host = "127.0.0.1";  // numeric IPv4/IPv6 or a name (resolved once, blocking)
    int port = 6379;
    std::string unix_path;           // when set, host and port are ignored
};

class EvLoop final : public EventLoop {
public:
    // Resolves the endpoint at once; throws std::runtime_error if it cannot.
    EvLoop(struct ev_loop* loop, EvEndpoint endpoint);
    ~EvLoop() override = default;
    EvLoop(const EvLoop&) = delete;
    EvLoop& operator=(const EvLoop&) = delete;

    std::unique_ptr<Transport> make_transport() override;
    // The kind makes no difference here: every timer keeps ev_run alive.
    std::unique_ptr<Timer> make_timer(std::function<void()> on_fire, TimerKind kind) override;
    int64_t now_ms() noexcept override;  // CLOCK_MONOTONIC

    struct ev_loop* raw() const { return loop_; }

private:
    struct ev_loop* loop_;
    sockaddr_storage addr_{};
    socklen_t addr_len_ = 0;
};

}  // namespace ratelimit
