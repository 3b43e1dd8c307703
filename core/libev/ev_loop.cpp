#include "ev_loop.h"

#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string_view>
#include <utility>

namespace ratelimit {
namespace {

class EvTransport final : public Transport {
public:
    EvTransport(struct ev_loop* loop, const sockaddr_storage& addr, socklen_t addr_len)
        : loop_(loop), addr_(addr), addr_len_(addr_len)
    {
        ev_io_init(&read_io_, on_read_event, -1, EV_READ);
        ev_io_init(&write_io_, on_write_event, -1, EV_WRITE);
        ev_timer_init(&fail_timer_, on_fail_timer, 0., 0.);
        read_io_.data = this;
        write_io_.data = this;
        fail_timer_.data = this;
    }

    ~EvTransport() override { close(); }

    bool connect(TransportSink& sink) noexcept override
    {
        close();
        int fd = ::socket(addr_.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return false;
        }
        if (addr_.ss_family != AF_UNIX) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        fd_ = fd;
        sink_ = &sink;
        int rc;
        do {
            rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr_), addr_len_);
        } while (rc != 0 && errno == EINTR);
        if (rc != 0 && errno != EINPROGRESS) {
            // Reported from the loop, never from inside connect().
            fail_later(std::strerror(errno));
            return true;
        }
        // Connected or in progress: the first write event tells which.
        state_ = State::connecting;
        ev_io_set(&read_io_, fd, EV_READ);
        ev_io_set(&write_io_, fd, EV_WRITE);
        ev_io_start(loop_, &write_io_);
        return true;
    }

    bool write(std::string_view bytes) noexcept override
    {
        if (state_ != State::connecting && state_ != State::connected) {
            return false;
        }
        try {
            if (out_pos_ > 0 && out_pos_ == out_.size()) {
                out_.clear();
                out_pos_ = 0;
            }
            out_.append(bytes.data(), bytes.size());
        } catch (...) {
            fail_later("out of memory");
            return false;
        }
        if (state_ == State::connected) {
            ev_io_start(loop_, &write_io_);
        }
        return true;
    }

    void close() noexcept override
    {
        ev_io_stop(loop_, &read_io_);
        ev_io_stop(loop_, &write_io_);
        ev_timer_stop(loop_, &fail_timer_);
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
        state_ = State::closed;
        out_.clear();
        out_pos_ = 0;
        generation_++;
    }

private:
    enum class State { closed, connecting, connected, failing };

    static void on_read_event(struct ev_loop*, ev_io* w, int)
    {
        static_cast<EvTransport*>(w->data)->handle_read();
    }
    static void on_write_event(struct ev_loop*, ev_io* w, int)
    {
        static_cast<EvTransport*>(w->data)->handle_write();
    }
    static void on_fail_timer(struct ev_loop*, ev_timer* w, int)
    {
        auto* self = static_cast<EvTransport*>(w->data);
        std::string reason = std::move(self->fail_reason_);
        self->fail(reason);
    }

    void handle_read() noexcept
    {
        char buf[16384];
        for (;;) {
            ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
            if (n > 0) {
                uint64_t generation = generation_;
                sink_->on_data(buf, static_cast<size_t>(n));
                if (generation != generation_) {
                    return;  // closed (or reconnected) by the sink
                }
                continue;
            }
            if (n == 0) {
                fail("connection closed by peer");
                return;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                fail(std::strerror(errno));
            }
            return;
        }
    }

    void handle_write() noexcept
    {
        if (state_ == State::connecting) {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
                err = errno;
            }
            if (err != 0) {
                fail(std::strerror(err));
                return;
            }
            state_ = State::connected;
            ev_io_start(loop_, &read_io_);
            if (out_pos_ == out_.size()) {
                ev_io_stop(loop_, &write_io_);
            }
            uint64_t generation = generation_;
            sink_->on_connected();
            if (generation != generation_) {
                return;
            }
            // Anything written meanwhile goes out on the next write event.
            return;
        }
        while (out_pos_ < out_.size()) {
            ssize_t n = ::send(fd_, out_.data() + out_pos_, out_.size() - out_pos_, MSG_NOSIGNAL);
            if (n > 0) {
                out_pos_ += static_cast<size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (out_pos_ > out_.size() / 2) {
                    out_.erase(0, out_pos_);
                    out_pos_ = 0;
                }
                return;  // partial write: wait for the next write event
            }
            fail(n < 0 ? std::strerror(errno) : "send returned 0");
            return;
        }
        out_.clear();
        out_pos_ = 0;
        ev_io_stop(loop_, &write_io_);
    }

    // Closes and tells the sink. Only ever called from the loop.
    void fail(const std::string& reason) noexcept
    {
        TransportSink* sink = sink_;
        close();
        if (sink) {
            sink->on_closed(reason);
        }
    }

    void fail_later(const char* reason) noexcept
    {
        TransportSink* sink = sink_;
        close();
        sink_ = sink;
        try {
            fail_reason_ = reason;
        } catch (...) {
        }
        state_ = State::failing;
        ev_timer_set(&fail_timer_, 0., 0.);
        ev_timer_start(loop_, &fail_timer_);
    }

    struct ev_loop* loop_;
    sockaddr_storage addr_;
    socklen_t addr_len_;
    ev_io read_io_;
    ev_io write_io_;
    ev_timer fail_timer_;
    int fd_ = -1;
    State state_ = State::closed;
    TransportSink* sink_ = nullptr;
    std::string out_;
    size_t out_pos_ = 0;
    std::string fail_reason_;
    uint64_t generation_ = 0;
};

class EvTimer final : public Timer {
public:
    EvTimer(struct ev_loop* loop, std::function<void()> on_fire)
        : loop_(loop), on_fire_(std::move(on_fire))
    {
        ev_timer_init(&timer_, on_timer, 0., 0.);
        timer_.data = this;
    }
    ~EvTimer() override { ev_timer_stop(loop_, &timer_); }

    void start(int64_t delay_ms) noexcept override
    {
        ev_timer_stop(loop_, &timer_);
        ev_timer_set(&timer_, delay_ms > 0 ? static_cast<double>(delay_ms) / 1000.0 : 0., 0.);
        ev_timer_start(loop_, &timer_);
    }
    void stop() noexcept override { ev_timer_stop(loop_, &timer_); }
    bool armed() const noexcept override { return ev_is_active(&timer_); }

private:
    static void on_timer(struct ev_loop*, ev_timer* w, int)
    {
        auto* self = static_cast<EvTimer*>(w->data);
        if (self->on_fire_) {
            self->on_fire_();
        }
    }

    struct ev_loop* loop_;
    std::function<void()> on_fire_;
    ev_timer timer_;
};

}  // namespace

EvLoop::EvLoop(struct ev_loop* loop, EvEndpoint endpoint) : loop_(loop)
{
    if (!endpoint.unix_path.empty()) {
        sockaddr_un un{};
        if (endpoint.unix_path.size() >= sizeof(un.sun_path)) {
            throw std::runtime_error("unix socket path too long: " + endpoint.unix_path);
        }
        un.sun_family = AF_UNIX;
        std::memcpy(un.sun_path, endpoint.unix_path.c_str(), endpoint.unix_path.size() + 1);
        std::memcpy(&addr_, &un, sizeof(un));
        addr_len_ = sizeof(un);
        return;
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* result = nullptr;
    std::string port = std::to_string(endpoint.port);
    int rc = getaddrinfo(endpoint.host.c_str(), port.c_str(), &hints, &result);
    if (rc != 0 || !result) {
        throw std::runtime_error("cannot resolve " + endpoint.host + ": " + gai_strerror(rc));
    }
    std::memcpy(&addr_, result->ai_addr, result->ai_addrlen);
    addr_len_ = result->ai_addrlen;
    freeaddrinfo(result);
}

std::unique_ptr<Transport> EvLoop::make_transport()
{
    return std::make_unique<EvTransport>(loop_, addr_, addr_len_);
}

std::unique_ptr<Timer> EvLoop::make_timer(std::function<void()> on_fire, TimerKind)
{
    return std::make_unique<EvTimer>(loop_, std::move(on_fire));
}

int64_t EvLoop::now_ms() noexcept
{
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

}  // namespace ratelimit
