#include "ngx_ratelimit_loop.h"

#include <arpa/inet.h>

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
        // ngx_add_timer keeps a set timer that is due within 300 ms of the new time (its lazy
        // delay): a timer moved earlier would fire late.
        if (event_.ev.timer_set) {
            ngx_del_timer(&event_.ev);
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
    NgxTransport(Endpoint& endpoint, ngx_log_t* log, const RedisTls* tls,
                 TlsSession** tls_session)
        : endpoint_(endpoint), log_(log), tls_(tls), tls_session_(tls_session)
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
    void established();
#if (NGX_SSL)
    static void on_handshake(ngx_connection_t* c) noexcept;
    static void on_new_session(ngx_connection_t* c) noexcept;
    void start_tls();
    void handshake_done();
#endif
    TlsServer tls_server() const;
    bool flush();
    void fail(const char* reason);
    void fail_later(const char* reason);

    Endpoint& endpoint_;
    Peer peer_;                  // where the current connection goes
    std::string tls_name_;       // the name TLS checks there, if the endpoint gave one
    bool finding_ = false;       // inside endpoint_.find() called by connect()
    bool start_failed_ = false;
    ngx_log_t* log_;
    const RedisTls* tls_;                    // nullptr or no context: plain TCP
    TlsSession** tls_session_;               // the loop's, kept across reconnects
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


}  // namespace


ngx_int_t open_connection(const ngx_addr_t& addr, ngx_log_t* log, void* data,
                          ngx_event_handler_pt on_read, ngx_event_handler_pt on_write,
                          ngx_connection_t** out) noexcept
{
    ngx_peer_connection_t pc{};
    pc.sockaddr = addr.sockaddr;
    pc.socklen = addr.socklen;
    pc.name = const_cast<ngx_str_t*>(&addr.name);
    pc.get = ngx_event_get_peer;
    pc.log = log;
    pc.log_error = NGX_ERROR_ERR;

    ngx_int_t rc = ngx_event_connect_peer(&pc);
    if (rc != NGX_OK && rc != NGX_AGAIN) {
        if (pc.connection) {
            ngx_close_connection(pc.connection);
        }
        return rc;
    }
    ngx_connection_t* c = pc.connection;
    c->data = data;
    c->read->handler = on_read;
    c->write->handler = on_write;
    c->log = log;
    c->read->log = log;
    c->write->log = log;
    *out = c;
    return rc;
}


namespace {

// False if the attempt could not start; a refused connection is reported later.
bool
NgxTransport::connect_peer(const ngx_addr_t& peer)
{
    try {
        peer_.set(peer.sockaddr, peer.socklen,
                  std::string_view(reinterpret_cast<const char*>(peer.name.data),
                                   peer.name.len));
        tls_name_.assign(endpoint_.tls_name());
    } catch (...) {
        return false;
    }
    ngx_int_t rc = open_connection(peer_.addr(), log_, this, &NgxTransport::on_read,
                                   &NgxTransport::on_write, &c_);
    if (rc == NGX_ERROR) {
        return false;
    }
    if (rc != NGX_OK && rc != NGX_AGAIN) {
        // Refused and the like: reported through the sink, never from inside connect().
        fail_later("connect() failed");
        return true;
    }
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
        close_connection(c_);
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
#if (NGX_SSL)
    if (tls_ && tls_->ssl) {
        start_tls();
        return;
    }
#endif
    established();
}


// The stream is ready (TCP connected, TLS verified): the client may talk.
void
NgxTransport::established()
{
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


TlsServer
NgxTransport::tls_server() const
{
    return TlsServer{tls_, tls_name_.empty() ? nullptr : tls_name_.c_str(), "Redis",
                     peer_.text.c_str()};
}


#if (NGX_SSL)

// After the TCP connect: the TLS handshake, through nginx's events. The client's connect timer
// covers it, since on_connected comes only once the server is verified.
void
NgxTransport::start_tls()
{
    ngx_int_t rc = tls_start(c_, tls_server(), *tls_session_, &NgxTransport::on_handshake,
                             &NgxTransport::on_new_session, log_);
    if (rc == NGX_ERROR) {
        fail("TLS failed");
        return;
    }
    if (rc == NGX_OK) {
        handshake_done();
    }
}


void
NgxTransport::on_handshake(ngx_connection_t* c) noexcept
{
    static_cast<NgxTransport*>(c->data)->handshake_done();
}


void
NgxTransport::handshake_done()
{
    c_->read->handler = &NgxTransport::on_read;
    c_->write->handler = &NgxTransport::on_write;
    if (const char* why = tls_established(c_, tls_server(), tls_session_, log_)) {
        fail(why);
        return;
    }
    established();
}


// OpenSSL made a session (at the end of a TLS 1.2 handshake, or a TLS 1.3 ticket later on):
// kept for the next connect.
void
NgxTransport::on_new_session(ngx_connection_t* c) noexcept
{
    tls_keep_session(c, static_cast<NgxTransport*>(c->data)->tls_session_);
}

bool is_ip_address(const char* name)
{
    u_char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}


const char* verified_name(const TlsServer& server)
{
    return server.name ? server.name : reinterpret_cast<const char*>(server.tls->server_name.data);
}


// SNI, and the name the certificate must carry.
bool set_server_name(ngx_connection_t* c, const TlsServer& server, ngx_log_t* log)
{
    SSL* ssl = c->ssl->connection;
    const char* name = verified_name(server);
    bool is_address = server.name ? is_ip_address(name) : server.tls->name_is_address;
    // SNI carries host names only (RFC 6066).
    if (*name && !is_address && SSL_set_tlsext_host_name(ssl, name) == 0) {
        ngx_ssl_error(NGX_LOG_ERR, log, 0,
                      const_cast<char*>("ratelimit: SSL_set_tlsext_host_name(\"%s\") failed"),
                      name);
        return false;
    }
    if (!server.tls->verify) {
        return true;
    }
    if (*name == '\0') {
        // A unix: sentinel: OpenSSL would check no name at all.
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit: TLS to %s %s: no name to verify (\"ssl_server_name=\")",
                      server.what, server.peer);
        return false;
    }
    // Checked with the chain, so that SSL_get_verify_result tells either failure.
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    int ok = is_address ? X509_VERIFY_PARAM_set1_ip_asc(param, name)
                        : X509_VERIFY_PARAM_set1_host(param, name, 0);
    if (ok != 1) {
        ngx_ssl_error(NGX_LOG_ERR, log, 0,
                      const_cast<char*>("ratelimit: cannot check the name \"%s\""), name);
        return false;
    }
    return true;
}

#endif  // NGX_SSL

}  // namespace


#if (NGX_SSL)

ngx_int_t tls_start(ngx_connection_t* c, const TlsServer& server, TlsSession* session,
                    ngx_connection_handler_pt on_done, ngx_connection_handler_pt on_session,
                    ngx_log_t* log) noexcept
{
    // ngx_ssl_create_connection allocates from the connection's pool; a plain one has none
    // (close_connection destroys it).
    c->pool = ngx_create_pool(256, log);
    if (c->pool == nullptr
        || ngx_ssl_create_connection(server.tls->ssl, c, NGX_SSL_CLIENT) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, log, 0, "ratelimit: cannot start TLS to %s %s", server.what,
                      server.peer);
        return NGX_ERROR;
    }
    c->ssl->save_session = on_session;
    if (!set_server_name(c, server, log)
        || (session && ngx_ssl_set_session(c, session) != NGX_OK))
    {
        return NGX_ERROR;
    }
    // ngx_ssl_handshake swaps in its own event handlers until it is done.
    ngx_int_t rc = ngx_ssl_handshake(c);
    if (rc == NGX_AGAIN) {
        c->ssl->handler = on_done;
        return NGX_AGAIN;
    }
    return NGX_OK;
}


const char* tls_established(ngx_connection_t* c, const TlsServer& server,
                            TlsSession** session, ngx_log_t* log) noexcept
{
    if (!c->ssl || !c->ssl->handshaked) {
        // OpenSSL's reason is in the line nginx logged just before.
        ngx_log_error(NGX_LOG_ERR, log, 0, "ratelimit: TLS handshake with %s %s failed",
                      server.what, server.peer);
        return "TLS handshake failed";
    }
    long rc = SSL_get_verify_result(c->ssl->connection);
    if (server.tls->verify && rc != X509_V_OK) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "ratelimit: %s %s failed TLS verification as \"%s\": %s (%l)",
                      server.what, server.peer, verified_name(server),
                      X509_verify_cert_error_string(rc), rc);
        tls_free_session(session);
        return "TLS certificate verification failed";
    }
    ngx_log_error(NGX_LOG_INFO, log, 0, "ratelimit: TLS to %s %s: %s, %s session", server.what,
                  server.peer, SSL_get_version(c->ssl->connection),
                  SSL_session_reused(c->ssl->connection) ? "reused" : "new");
    return nullptr;
}


void tls_keep_session(ngx_connection_t* c, TlsSession** slot) noexcept
{
    ngx_ssl_session_t* session = ngx_ssl_get_session(c);
    if (session == nullptr || slot == nullptr) {
        if (session) {
            ngx_ssl_free_session(session);
        }
        return;
    }
    tls_free_session(slot);
    *slot = session;
}


void tls_free_session(TlsSession** slot) noexcept
{
    if (slot && *slot) {
        ngx_ssl_free_session(*slot);
        *slot = nullptr;
    }
}

#endif  // NGX_SSL


void close_connection(ngx_connection_t* c) noexcept
{
    ngx_pool_t* pool = c->pool;  // made for TLS only
#if (NGX_SSL)
    if (c->ssl) {
        c->ssl->no_wait_shutdown = 1;  // send close_notify, wait for nothing
        if (ngx_ssl_shutdown(c) == NGX_AGAIN) {
            c->timedout = 1;  // the socket is full: a quiet shutdown frees it now
            (void) ngx_ssl_shutdown(c);
        }
    }
#endif
    ngx_close_connection(c);
    if (pool) {
        ngx_destroy_pool(pool);
    }
}


NgxEventLoop::~NgxEventLoop()
{
#if (NGX_SSL)
    if (tls_session_) {
        ngx_ssl_free_session(tls_session_);
    }
#endif
}


std::unique_ptr<ratelimit::Transport>
NgxEventLoop::make_transport()
{
    return std::make_unique<NgxTransport>(endpoint_, log_, tls_, &tls_session_);
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
