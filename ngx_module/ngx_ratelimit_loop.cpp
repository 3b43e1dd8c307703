#include "ngx_ratelimit_loop.h"

#include <string>

namespace ngx_ratelimit {
namespace {

// Timer events need an ev->data that debug logging can read as a connection.
ngx_connection_t dummy_connection;


class NgxTimer final : public ratelimit::Timer {
public:
    NgxTimer(std::function<void()> on_fire, bool cancelable, ngx_log_t* log)
        : on_fire_(std::move(on_fire))
    {
        event_.owner = this;
        event_.ev.handler = &NgxTimer::fire;
        event_.ev.data = &dummy_connection;
        event_.ev.log = log;
        // A background timer must not keep an exiting worker alive.
        event_.ev.cancelable = cancelable;
    }

    ~NgxTimer() override { stop(); }

    void start(int64_t delay_ms) noexcept override
    {
        if (delay_ms <= 0) {
            // "Soon": after the events of this iteration, without a trip through epoll.
            if (event_.ev.timer_set) {
                ngx_del_timer(&event_.ev);
            }
            if (!event_.ev.posted) {
                ngx_post_event(&event_.ev, &ngx_posted_events);
            }
            return;
        }
        if (event_.ev.posted) {
            ngx_delete_posted_event(&event_.ev);
        }
        ngx_add_timer(&event_.ev, ngx_msec_t(delay_ms));
    }

    void stop() noexcept override
    {
        if (event_.ev.timer_set) {
            ngx_del_timer(&event_.ev);
        }
        if (event_.ev.posted) {
            ngx_delete_posted_event(&event_.ev);
        }
    }

    bool armed() const noexcept override { return event_.ev.timer_set || event_.ev.posted; }

private:
    struct Event {
        ngx_event_t ev;  // first member: the handler gets &ev and finds its owner
        NgxTimer* owner;
    };

    static void fire(ngx_event_t* ev) noexcept
    {
        try {
            reinterpret_cast<Event*>(ev)->owner->on_fire_();
        } catch (...) {
            ngx_log_error(NGX_LOG_ALERT, ev->log, 0, "ratelimit: timer handler failed");
        }
    }

    std::function<void()> on_fire_;
    Event event_{};
};


// A byte stream to Redis on an nginx connection. Reads are drained until EAGAIN, so the
// edge-triggered registration nginx uses for connections loses nothing.
class NgxTransport final : public ratelimit::Transport {
public:
    NgxTransport(Endpoint& endpoint, ngx_log_t* log) : endpoint_(endpoint), log_(log)
    {
        failure_ev_.handler = &NgxTransport::on_failure_event;
        failure_ev_.data = this;
        failure_ev_.log = log;
        flush_ev_.handler = &NgxTransport::on_flush_event;
        flush_ev_.data = this;
        flush_ev_.log = log;
        endpoint_.watch([this] { moved(); });
    }

    ~NgxTransport() override
    {
        endpoint_.watch(nullptr);
        if (alive_) {
            *alive_ = false;
        }
        close();
    }

    bool connect(ratelimit::TransportSink& sink) noexcept override;
    bool write(std::string_view bytes) noexcept override;
    void close() noexcept override;

private:
    static void on_read(ngx_event_t* ev) noexcept;
    static void on_write(ngx_event_t* ev) noexcept;
    static void on_failure_event(ngx_event_t* ev) noexcept;
    static void on_flush_event(ngx_event_t* ev) noexcept;

    void found(const ngx_addr_t* peer);
    void moved();
    bool connect_peer(const ngx_addr_t& peer);
    void handle_read();
    void handle_write();
    bool flush();
    void fail(const char* reason);
    void fail_later(const char* reason);

    Endpoint& endpoint_;
    Peer peer_;                  // where the current connection goes
    bool finding_ = false;       // inside endpoint_.find() called by connect()
    bool start_failed_ = false;
    ngx_log_t* log_;
    ratelimit::TransportSink* sink_ = nullptr;
    ngx_connection_t* c_ = nullptr;
    bool connected_ = false;
    std::string out_;
    size_t out_sent_ = 0;
    const char* failure_ = nullptr;
    ngx_event_t failure_ev_{};
    ngx_event_t flush_ev_{};     // sends what this event-loop iteration wrote, in one go
    bool* alive_ = nullptr;  // cleared by the destructor, for handlers that call the sink
};


// Asks the endpoint where to connect (a DNS answer or the sentinels may take a while), then
// connects there.
bool
NgxTransport::connect(ratelimit::TransportSink& sink) noexcept
{
    close();
    sink_ = &sink;

    finding_ = true;
    start_failed_ = false;
    endpoint_.find([this](const ngx_addr_t* peer) { found(peer); });
    finding_ = false;
    return !start_failed_;
}


void
NgxTransport::found(const ngx_addr_t* peer)
{
    if (peer && connect_peer(*peer)) {
        return;
    }
    if (finding_) {
        start_failed_ = true;  // found at once: connect() says it could not start
    } else {
        fail_later(peer ? "connect() failed" : "no address to connect to");
    }
}


// The endpoint names another address: this connection goes, the next one goes there.
void
NgxTransport::moved()
{
    if (c_) {
        fail_later("the master moved");
    }
}


// False if the attempt could not start; a refused connection is reported later.
bool
NgxTransport::connect_peer(const ngx_addr_t& peer)
{
    try {
        peer_.set(peer.sockaddr, peer.socklen,
                  std::string_view(reinterpret_cast<const char*>(peer.name.data),
                                   peer.name.len));
    } catch (...) {
        return false;
    }
    ngx_addr_t addr = peer_.addr();
    ngx_peer_connection_t pc{};
    pc.sockaddr = addr.sockaddr;
    pc.socklen = addr.socklen;
    pc.name = &addr.name;
    pc.get = ngx_event_get_peer;
    pc.log = log_;
    pc.log_error = NGX_ERROR_ERR;

    ngx_int_t rc = ngx_event_connect_peer(&pc);
    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        if (pc.connection) {
            ngx_close_connection(pc.connection);
        }
        if (rc == NGX_ERROR) {
            return false;
        }
        // Refused and the like: reported through the sink, never from inside connect().
        fail_later("connect() failed");
        return true;
    }

    c_ = pc.connection;
    c_->data = this;
    c_->read->handler = &NgxTransport::on_read;
    c_->write->handler = &NgxTransport::on_write;
    c_->log = log_;
    c_->read->log = log_;
    c_->write->log = log_;
    connected_ = false;
    // Small pipelined writes must not wait for the previous one's ACK (Nagle's algorithm):
    // that would add a round trip whenever Redis is on another host. TCP only.
    if (peer.sockaddr->sa_family != AF_UNIX) {
        (void) ngx_tcp_nodelay(c_);  // logs its own failure; the connection still works
    }

    if (rc == NGX_OK) {
        // Connected at once (unix sockets): report it from the event loop.
        ngx_post_event(c_->write, &ngx_posted_events);
    }
    return true;
}


bool
NgxTransport::write(std::string_view bytes) noexcept
{
    if (failure_) {
        return false;
    }
    try {
        out_.append(bytes.data(), bytes.size());
    } catch (...) {
        fail_later("out of memory");
        return false;
    }
    if (c_ == nullptr) {
        return false;
    }
    // Requests decided in the same event-loop iteration share one send().
    if (connected_ && !flush_ev_.posted) {
        ngx_post_event(&flush_ev_, &ngx_posted_events);
    }
    return true;
}


void
NgxTransport::close() noexcept
{
    endpoint_.cancel();
    if (c_) {
        ngx_close_connection(c_);
        c_ = nullptr;
    }
    if (failure_ev_.posted) {
        ngx_delete_posted_event(&failure_ev_);
    }
    if (flush_ev_.posted) {
        ngx_delete_posted_event(&flush_ev_);
    }
    connected_ = false;
    failure_ = nullptr;
    out_.clear();
    out_sent_ = 0;
}


// Sends what the socket takes; false on a broken connection.
bool
NgxTransport::flush()
{
    while (out_sent_ < out_.size()) {
        ssize_t n = c_->send(c_, reinterpret_cast<u_char*>(&out_[out_sent_]),
                             out_.size() - out_sent_);
        if (n == NGX_AGAIN) {
            break;
        }
        if (n == NGX_ERROR) {
            return false;
        }
        out_sent_ += size_t(n);
    }
    if (out_sent_ == out_.size()) {
        out_.clear();
        out_sent_ = 0;
    }
    return ngx_handle_write_event(c_->write, 0) == NGX_OK;
}


void
NgxTransport::fail_later(const char* reason)
{
    failure_ = reason;
    if (!failure_ev_.posted) {
        ngx_post_event(&failure_ev_, &ngx_posted_events);
    }
}


// Closes and tells the sink; the sink may destroy this transport.
void
NgxTransport::fail(const char* reason)
{
    ratelimit::TransportSink* sink = sink_;
    close();
    if (sink) {
        sink->on_closed(reason);
    }
}


void
NgxTransport::on_failure_event(ngx_event_t* ev) noexcept
{
    auto* t = static_cast<NgxTransport*>(ev->data);
    const char* reason = t->failure_ ? t->failure_ : "connection failed";
    t->fail(reason);
}


void
NgxTransport::on_flush_event(ngx_event_t* ev) noexcept
{
    auto* t = static_cast<NgxTransport*>(ev->data);
    if (t->c_ && t->connected_ && !t->flush()) {
        t->fail("send() failed");
    }
}


void
NgxTransport::on_read(ngx_event_t* ev) noexcept
{
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    static_cast<NgxTransport*>(c->data)->handle_read();
}


void
NgxTransport::on_write(ngx_event_t* ev) noexcept
{
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    static_cast<NgxTransport*>(c->data)->handle_write();
}


void
NgxTransport::handle_read()
{
    if (c_->close) {
        // worker_shutdown_timeout: nginx is closing every connection.
        fail("worker is shutting down");
        return;
    }
    if (!connected_) {
        handle_write();
        return;
    }

    bool alive = true;
    alive_ = &alive;
    u_char buf[16384];

    for (;;) {
        ssize_t n = c_->recv(c_, buf, sizeof(buf));
        if (n > 0) {
            sink_->on_data(reinterpret_cast<const char*>(buf), size_t(n));
            if (!alive) {
                return;
            }
            if (c_ == nullptr) {
                break;  // the sink closed the stream
            }
            continue;
        }
        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c_->read, 0) != NGX_OK) {
                alive_ = nullptr;
                fail("read event failed");
                return;
            }
            break;
        }
        alive_ = nullptr;
        fail(n == 0 ? "connection closed by Redis" : "recv() failed");
        return;
    }
    alive_ = nullptr;
}


void
NgxTransport::handle_write()
{
    if (connected_) {
        if (!flush()) {
            fail("send() failed");
        }
        return;
    }

    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c_->fd, SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&err), &len) == -1) {
        err = ngx_socket_errno;
    }
    if (err) {
        ngx_log_error(NGX_LOG_ERR, log_, err, "ratelimit: connect() to %s failed",
                      peer_.text.c_str());
        fail("connect() failed");
        return;
    }

    connected_ = true;
    if (ngx_handle_read_event(c_->read, 0) != NGX_OK) {
        fail("read event failed");
        return;
    }

    bool alive = true;
    alive_ = &alive;
    sink_->on_connected();
    if (!alive) {
        return;
    }
    alive_ = nullptr;
    if (c_ && connected_ && !flush()) {
        fail("send() failed");
    }
}

}  // namespace


std::unique_ptr<ratelimit::Transport>
NgxEventLoop::make_transport()
{
    return std::make_unique<NgxTransport>(endpoint_, log_);
}


std::unique_ptr<ratelimit::Timer>
make_ngx_timer(std::function<void()> on_fire, bool cancelable, ngx_log_t* log)
{
    return std::make_unique<NgxTimer>(std::move(on_fire), cancelable, log);
}


std::unique_ptr<ratelimit::Timer>
NgxEventLoop::make_timer(std::function<void()> on_fire, TimerKind kind)
{
    return std::make_unique<NgxTimer>(std::move(on_fire), kind == TimerKind::background, log_);
}

}  // namespace ngx_ratelimit
