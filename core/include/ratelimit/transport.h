// What the Redis client needs from an event loop: a byte stream and timers.
// Implemented with libev (core/libev) for the core's tests and tools, and with nginx
// connections and events in ngx_module/. The client never blocks and never sees a socket.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

namespace ratelimit {

// Receives a transport's events. Never called from inside Transport::connect/write/close.
class TransportSink {
public:
    virtual ~TransportSink() = default;
    virtual void on_connected() noexcept = 0;
    virtual void on_data(const char* data, size_t len) noexcept = 0;
    // The stream failed or was closed by the peer (connect failure included). The transport
    // is closed when this is called; the sink may call connect() again later.
    virtual void on_closed(std::string_view reason) noexcept = 0;
};

class Transport {
public:
    virtual ~Transport() = default;
    // Starts connecting to the configured endpoint. Returns false (with no callback to come)
    // if the attempt could not even start; otherwise exactly one of on_connected/on_closed
    // follows. The transport enforces no timeout: the client does.
    virtual bool connect(TransportSink& sink) noexcept = 0;
    // Queues bytes and sends them as the socket allows. Returns false if the stream is
    // already broken; on_closed follows asynchronously in that case.
    virtual bool write(std::string_view bytes) noexcept = 0;
    // Closes the stream; no callback follows. Idempotent.
    virtual void close() noexcept = 0;
};

class Timer {
public:
    virtual ~Timer() = default;
    // Restarts if armed. 0: as soon as the events of this loop iteration are handled.
    virtual void start(int64_t delay_ms) noexcept = 0;
    virtual void stop() noexcept = 0;                    // idempotent
    virtual bool armed() const noexcept = 0;
};

// The event loop as the client sees it.
class EventLoop {
public:
    enum class TimerKind {
        request,     // keeps an exiting nginx worker alive until it fires (call timeouts)
        background,  // never does (probes, backoff)
    };
    virtual ~EventLoop() = default;
    virtual std::unique_ptr<Transport> make_transport() = 0;
    virtual std::unique_ptr<Timer> make_timer(std::function<void()> on_fire, TimerKind kind) = 0;
    virtual int64_t now_ms() noexcept = 0;  // monotonic
};

}  // namespace ratelimit
