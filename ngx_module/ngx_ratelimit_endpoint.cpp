// The endpoints of ratelimit_redis: a fixed address, a host name re-resolved through nginx's
// resolver before each connection, a master found through the sentinels, and the nodes of a
// Redis Cluster.

#include "ngx_ratelimit_endpoint.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <vector>

#include "ngx_ratelimit_loop.h"
#include "ratelimit/resp.h"

namespace ngx_ratelimit {

void Peer::set(const struct sockaddr* sa, socklen_t len, std::string_view name)
{
    len = std::min<socklen_t>(len, sizeof(storage));
    ngx_memcpy(&storage, sa, len);
    socklen = len;
    text.assign(name.data(), name.size());
}


ngx_addr_t Peer::addr() const
{
    ngx_addr_t a{};
    a.sockaddr = const_cast<struct sockaddr*>(&storage.sockaddr);
    a.socklen = socklen;
    a.name.len = text.size();
    a.name.data = reinterpret_cast<u_char*>(const_cast<char*>(text.data()));
    return a;
}

namespace {

std::string_view as_view(const ngx_str_t& s)
{
    return std::string_view(reinterpret_cast<const char*>(s.data), s.len);
}


std::string sockaddr_text(const sockaddr* sa, socklen_t len)
{
    u_char buf[NGX_SOCKADDR_STRLEN];
    size_t n = ngx_sock_ntop(const_cast<sockaddr*>(sa), len, buf, sizeof(buf), 1);
    return std::string(reinterpret_cast<char*>(buf), n);
}


// The address as the configuration resolved it.
class FixedEndpoint final : public Endpoint {
public:
    explicit FixedEndpoint(const ngx_addr_t& addr) : addr_(addr) {}

    void find(Found found) noexcept override { found(&addr_); }
    void cancel() noexcept override {}

private:
    ngx_addr_t addr_;
};


// Half of connect_timeout: what a DNS answer or a sentinel may take.
ngx_msec_t half_connect_timeout(const EndpointConfig& config)
{
    return std::max<ngx_msec_t>(ngx_msec_t(config.redis->connect_timeout_ms / 2), 1);
}


// A host name resolved again before each connection: a configured one, or one a sentinel
// named for the master. The answer is awaited for half of connect_timeout at most: past that
// (or on an error) the last address is used (if any: `known`, where the configuration
// resolved it), and a late answer still serves the next connection.
class HostEndpoint final : public Endpoint {
public:
    HostEndpoint(std::string host, in_port_t port, const ngx_addr_t* known,
                 const EndpointConfig& config, ngx_log_t* log)
        : host_(std::move(host)), port_(port), resolver_(config.resolver),
          resolver_timeout_(config.resolver_timeout), budget_(half_connect_timeout(config)),
          log_(log)
    {
        if (known) {
            peer_.set(known->sockaddr, known->socklen, as_view(known->name));
        }
        timer_ = make_ngx_timer([this] { on_budget(); }, true, log);
    }

    const std::string& host() const noexcept { return host_; }
    in_port_t port() const noexcept { return port_; }

    ~HostEndpoint() override
    {
        cancel();
        if (ctx_) {
            ngx_resolve_name_done(ctx_);
        }
    }

    void find(Found found) noexcept override;
    void cancel() noexcept override
    {
        found_ = nullptr;
        timer_->stop();
    }

private:
    bool start() noexcept;
    static void on_resolved(ngx_resolver_ctx_t* ctx) noexcept;
    void resolved(ngx_resolver_ctx_t* ctx) noexcept;
    void on_budget() noexcept;
    void deliver() noexcept;
    void failed(const char* why) noexcept;

    std::string host_;
    in_port_t port_;
    ngx_resolver_t* resolver_;
    ngx_msec_t resolver_timeout_;
    ngx_msec_t budget_;
    ngx_log_t* log_;
    Peer peer_;                           // the last address known
    ngx_resolver_ctx_t* ctx_ = nullptr;   // a query under way
    Found found_;
    std::unique_ptr<ratelimit::Timer> timer_;
    bool failing_ = false;                // logged once until the name resolves again
};


void HostEndpoint::find(Found found) noexcept
{
    try {
        found_ = std::move(found);
    } catch (...) {
        return;
    }
    if (ctx_ == nullptr && !start()) {
        deliver();
        return;
    }
    if (found_) {
        timer_->start(int64_t(budget_));
    }
}


bool HostEndpoint::start() noexcept
{
    ngx_resolver_ctx_t* ctx = ngx_resolve_start(resolver_, nullptr);
    if (ctx == nullptr || ctx == NGX_NO_RESOLVER) {
        failed("cannot start resolving");
        return false;
    }
    ctx->name.data = reinterpret_cast<u_char*>(host_.data());
    ctx->name.len = host_.size();
    ctx->handler = &HostEndpoint::on_resolved;
    ctx->data = this;
    ctx->timeout = resolver_timeout_;
    ctx->cancelable = 1;  // an exiting worker does not wait for it
    ctx_ = ctx;
    // The handler may run before this returns (an answer in the resolver's cache).
    if (ngx_resolve_name(ctx) != NGX_OK) {
        ctx_ = nullptr;  // freed by the resolver
        failed("cannot start resolving");
        return false;
    }
    return true;
}


void HostEndpoint::on_resolved(ngx_resolver_ctx_t* ctx) noexcept
{
    static_cast<HostEndpoint*>(ctx->data)->resolved(ctx);
}


void HostEndpoint::resolved(ngx_resolver_ctx_t* ctx) noexcept
{
    if (ctx->state != NGX_OK || ctx->naddrs == 0) {
        failed(ctx->state != NGX_OK ? ngx_resolver_strerror(ctx->state) : "no address");
    } else {
        // The current address while the name still has it (round-robin names stay put).
        ngx_uint_t pick = 0;
        for (ngx_uint_t i = 0; i < ctx->naddrs; i++) {
            if (ngx_cmp_sockaddr(ctx->addrs[i].sockaddr, ctx->addrs[i].socklen,
                                 &peer_.storage.sockaddr, peer_.socklen, 0) == NGX_OK) {
                pick = i;
                break;
            }
        }
        ngx_sockaddr_t sa{};
        socklen_t len = std::min<socklen_t>(ctx->addrs[pick].socklen, sizeof(sa));
        ngx_memcpy(&sa, ctx->addrs[pick].sockaddr, len);
        ngx_inet_set_port(&sa.sockaddr, port_);
        if (ngx_cmp_sockaddr(&sa.sockaddr, len, &peer_.storage.sockaddr, peer_.socklen, 1)
            != NGX_OK) {
            try {
                peer_.set(&sa.sockaddr, len, sockaddr_text(&sa.sockaddr, len));
                ngx_log_error(NGX_LOG_NOTICE, log_, 0,
                              "ratelimit: Redis host \"%s\" resolves to %s now", host_.c_str(),
                              peer_.text.c_str());
            } catch (...) {
            }
        }
        failing_ = false;
    }
    ngx_resolve_name_done(ctx);
    ctx_ = nullptr;
    deliver();
}


void HostEndpoint::on_budget() noexcept
{
    failed("no answer in time");
    deliver();
}


void HostEndpoint::failed(const char* why) noexcept
{
    if (failing_) {
        return;
    }
    failing_ = true;
    if (peer_.socklen == 0) {
        ngx_log_error(NGX_LOG_ERR, log_, 0, "ratelimit: cannot resolve Redis host \"%s\" (%s)",
                      host_.c_str(), why);
        return;
    }
    ngx_log_error(NGX_LOG_WARN, log_, 0,
                  "ratelimit: cannot resolve Redis host \"%s\" (%s), connecting to %s",
                  host_.c_str(), why, peer_.text.c_str());
}


void HostEndpoint::deliver() noexcept
{
    timer_->stop();
    if (!found_) {
        return;
    }
    Found found = std::move(found_);
    found_ = nullptr;
    ngx_addr_t addr = peer_.addr();
    found(peer_.socklen ? &addr : nullptr);
}


// A conversation with a sentinel on an nginx connection: sends `command` once connected and
// hands over each reply. Either callback may close or reopen the link.
class SentinelLink {
public:
    using OnReply = std::function<void(const redisReply* reply)>;
    using OnFailed = std::function<void(std::string_view why)>;

    SentinelLink(OnReply on_reply, OnFailed on_failed, ngx_log_t* log)
        : on_reply_(std::move(on_reply)), on_failed_(std::move(on_failed)), log_(log)
    {
    }
    ~SentinelLink() { close(); }

    // False: it could not even start (nothing follows). With `tls` (its `peer` must stay put),
    // the command goes once the sentinel is verified; `session` keeps its last TLS session.
    bool open(const Peer& peer, const std::string& command, const TlsServer* tls = nullptr,
              TlsSession** session = nullptr) noexcept;
    void close() noexcept;
    bool is_open() const noexcept { return c_ != nullptr; }

private:
    static void on_read(ngx_event_t* ev) noexcept;
    static void on_write(ngx_event_t* ev) noexcept;
    void handle_write() noexcept;
    void handle_read() noexcept;
    void ready() noexcept;
#if (NGX_SSL)
    static void on_handshake(ngx_connection_t* c) noexcept;
    static void on_new_session(ngx_connection_t* c) noexcept;
    void handshake_done() noexcept;
#endif
    bool send() noexcept;
    void failed(std::string_view why) noexcept;

    OnReply on_reply_;
    OnFailed on_failed_;
    ngx_log_t* log_;
    ngx_connection_t* c_ = nullptr;
    const TlsServer* tls_ = nullptr;   // owned by the endpoint; nullptr: plain TCP
    TlsSession** session_ = nullptr;
    bool connected_ = false;           // TCP connected (and TLS verified): the command goes
    const std::string* command_ = nullptr;  // owned by the endpoint, outlives the link
    size_t sent_ = 0;
    redisReader* reader_ = nullptr;
    uint64_t generation_ = 0;  // bumped by close(): a callback closed or reopened the link
};


bool SentinelLink::open(const Peer& peer, const std::string& command, const TlsServer* tls,
                        TlsSession** session) noexcept
{
    close();
    tls_ = tls && tls->tls && tls->tls->ssl ? tls : nullptr;
    session_ = session;
    ngx_connection_t* c = nullptr;
    ngx_int_t rc = open_connection(peer.addr(), log_, this, &SentinelLink::on_read,
                                   &SentinelLink::on_write, &c);
    if (rc != NGX_OK && rc != NGX_AGAIN) {
        return false;
    }
    reader_ = redisReaderCreate();
    if (reader_ == nullptr) {
        ngx_close_connection(c);
        return false;
    }
    c_ = c;
    connected_ = false;
    command_ = &command;
    sent_ = 0;
    if (rc == NGX_OK) {
        ngx_post_event(c_->write, &ngx_posted_events);
    }
    return true;
}


void SentinelLink::close() noexcept
{
    generation_++;
    if (c_) {
        close_connection(c_);
        c_ = nullptr;
    }
    if (reader_) {
        redisReaderFree(reader_);
        reader_ = nullptr;
    }
}


void SentinelLink::failed(std::string_view why) noexcept
{
    close();
    on_failed_(why);
}


void SentinelLink::on_write(ngx_event_t* ev) noexcept
{
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    static_cast<SentinelLink*>(c->data)->handle_write();
}


void SentinelLink::on_read(ngx_event_t* ev) noexcept
{
    auto* c = static_cast<ngx_connection_t*>(ev->data);
    static_cast<SentinelLink*>(c->data)->handle_read();
}


bool SentinelLink::send() noexcept
{
    while (sent_ < command_->size()) {
        ssize_t n = c_->send(c_, reinterpret_cast<u_char*>(const_cast<char*>(&(*command_)[sent_])),
                             command_->size() - sent_);
        if (n == NGX_AGAIN) {
            break;
        }
        if (n == NGX_ERROR) {
            return false;
        }
        sent_ += size_t(n);
    }
    return ngx_handle_write_event(c_->write, 0) == NGX_OK;
}


void SentinelLink::handle_write() noexcept
{
    if (!connected_) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c_->fd, SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&err), &len) == -1) {
            err = ngx_socket_errno;
        }
        if (err) {
            failed("connect() failed");
            return;
        }
#if (NGX_SSL)
        if (tls_) {
            ngx_int_t rc = tls_start(c_, *tls_, session_ ? *session_ : nullptr,
                                     &SentinelLink::on_handshake, &SentinelLink::on_new_session,
                                     log_);
            if (rc == NGX_ERROR) {
                failed("TLS failed");
            } else if (rc == NGX_OK) {
                handshake_done();
            }
            return;
        }
#endif
        ready();
        return;
    }
    if (!send()) {
        failed("send() failed");
    }
}


// Connected (and verified): the command goes, the replies come.
void SentinelLink::ready() noexcept
{
    connected_ = true;
    if (ngx_handle_read_event(c_->read, 0) != NGX_OK) {
        failed("read event failed");
        return;
    }
    if (!send()) {
        failed("send() failed");
    }
}


#if (NGX_SSL)

void SentinelLink::on_handshake(ngx_connection_t* c) noexcept
{
    static_cast<SentinelLink*>(c->data)->handshake_done();
}


void SentinelLink::handshake_done() noexcept
{
    c_->read->handler = &SentinelLink::on_read;
    c_->write->handler = &SentinelLink::on_write;
    if (const char* why = tls_established(c_, *tls_, session_, log_)) {
        failed(why);
        return;
    }
    ready();
}


void SentinelLink::on_new_session(ngx_connection_t* c) noexcept
{
    tls_keep_session(c, static_cast<SentinelLink*>(c->data)->session_);
}

#endif


void SentinelLink::handle_read() noexcept
{
    if (c_->close) {
        failed("worker is shutting down");
        return;
    }
    if (!connected_) {
        handle_write();
        return;
    }
    uint64_t generation = generation_;
    u_char buf[1024];
    for (;;) {
        ssize_t n = c_->recv(c_, buf, sizeof(buf));
        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c_->read, 0) != NGX_OK) {
                failed("read event failed");
            }
            return;
        }
        if (n <= 0) {
            failed(n == 0 ? "connection closed" : "recv() failed");
            return;
        }
        if (redisReaderFeed(reader_, reinterpret_cast<const char*>(buf), size_t(n)) != REDIS_OK) {
            failed("out of memory");
            return;
        }
        for (;;) {
            void* reply = nullptr;
            if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
                failed("protocol error");
                return;
            }
            if (reply == nullptr) {
                break;
            }
            on_reply_(static_cast<redisReply*>(reply));
            freeReplyObject(reply);
            if (generation != generation_) {
                return;  // closed (or reopened) by the callback
            }
        }
    }
}


// mode=sentinel: asks the sentinels in turn, starting with the last one that answered,
// `SENTINEL get-master-addr-by-name <master>` on a short-lived connection; each gets half of
// connect_timeout. Meanwhile one sentinel is subscribed to `+switch-master`: when it names
// another master, the watcher (the transport) drops its connection, so the next one asks
// again. user=/password= are sent to the sentinels too (sentinels with ACLs need them; the
// AUTH error of a sentinel without a password is ignored). With `ssl` the sentinels are spoken
// to over TLS as well, each checked against its own host (or ssl_server_name). A master named
// by host name (sentinels with announce-hostnames) is resolved through nginx's `resolver`.
class SentinelEndpoint final : public Endpoint {
public:
    SentinelEndpoint(const EndpointConfig& config, ngx_log_t* log);
    ~SentinelEndpoint() override
    {
        cancel();
        sub_.close();
#if (NGX_SSL)
        for (TlsSession*& session : sessions_) {
            tls_free_session(&session);
        }
#endif
    }

    void find(Found found) noexcept override;
    void cancel() noexcept override
    {
        found_ = nullptr;
        query_timer_->stop();
        query_.close();
        if (named_) {
            named_->cancel();
        }
    }
    void watch(std::function<void()> on_moved) noexcept override
    {
        try {
            on_moved_ = std::move(on_moved);
        } catch (...) {
        }
    }
    std::string_view tls_name() const noexcept override
    {
        return config_.redis->ssl_server_name.empty() ? std::string_view(master_host_)
                                                       : std::string_view();
    }

private:
    bool open(SentinelLink& link, size_t index, const std::string& command) noexcept;
    void ask(size_t index) noexcept;
    void next(std::string_view why) noexcept;
    void deliver(const ngx_addr_t* addr) noexcept;
    void on_query_reply(const redisReply* reply) noexcept;
    void on_master(const redisReply* reply) noexcept;
    void found_master(std::string_view host, in_port_t port, const Peer* numeric);
    void subscribe(size_t index) noexcept;
    void on_sub_reply(const redisReply* reply) noexcept;
    void on_sub_failed(std::string_view why) noexcept;
    void switched(std::string_view payload) noexcept;

    EndpointConfig config_;
    std::vector<Peer> sentinels_;
    std::vector<std::string> tls_names_;   // each sentinel's host (without ssl_server_name)
    std::vector<TlsServer> tls_;           // empty: plain TCP
    std::vector<TlsSession*> sessions_;    // each sentinel's last TLS session
    std::string master_;
    std::string auth_;            // AUTH command, or empty
    std::string query_command_;
    std::string sub_command_;
    ngx_msec_t budget_;
    ngx_log_t* log_;
    Found found_;
    std::function<void()> on_moved_;
    SentinelLink query_;
    std::unique_ptr<ratelimit::Timer> query_timer_;
    size_t first_ = 0;            // the last sentinel that answered
    size_t current_ = 0;
    size_t tried_ = 0;
    int seen_ = 0;                // replies read on the query connection
    std::string auth_error_;
    std::string master_text_;     // the master last given, "host:port" as the sentinels say
    std::string master_host_;
    std::unique_ptr<HostEndpoint> named_;  // the master's host name, if not an address
    SentinelLink sub_;
    std::unique_ptr<ratelimit::Timer> sub_timer_;  // resubscribes after a failure
    size_t sub_index_ = 0;
};


SentinelEndpoint::SentinelEndpoint(const EndpointConfig& config, ngx_log_t* log)
    : config_(config), master_(config.redis->master), budget_(half_connect_timeout(config)),
      log_(log),
      query_([this](const redisReply* r) { on_query_reply(r); },
             [this](std::string_view why) { next(why); }, log),
      sub_([this](const redisReply* r) { on_sub_reply(r); },
           [this](std::string_view why) { on_sub_failed(why); }, log)
{
    const ratelimit::RedisConfig& redis = *config.redis;
    for (size_t i = 0; i < redis.addresses.size(); i++) {
        sentinels_.emplace_back();
        sentinels_.back().set(config.addrs[i].sockaddr, config.addrs[i].socklen,
                              as_view(config.addrs[i].name));
        tls_names_.push_back(redis.addresses[i].host);
    }
    if (config.tls && config.tls->ssl) {
        // Pointers into the vectors above, which no longer change.
        for (size_t i = 0; i < sentinels_.size(); i++) {
            const char* name = redis.ssl_server_name.empty() ? tls_names_[i].c_str() : nullptr;
            tls_.push_back(TlsServer{config.tls, name, "sentinel", sentinels_[i].text.c_str()});
        }
        sessions_.assign(sentinels_.size(), nullptr);
    }
    if (!redis.password.empty()) {
        auth_ = redis.user.empty()
                    ? ratelimit::format_command({"AUTH", redis.password})
                    : ratelimit::format_command({"AUTH", redis.user, redis.password});
    }
    query_command_ =
        auth_ + ratelimit::format_command({"SENTINEL", "get-master-addr-by-name", master_});
    sub_command_ = auth_ + ratelimit::format_command({"SUBSCRIBE", "+switch-master"});
    query_timer_ = make_ngx_timer([this] { next("timed out"); }, false, log);
    sub_timer_ = make_ngx_timer([this] { subscribe((sub_index_ + 1) % sentinels_.size()); },
                                true, log);
}


bool SentinelEndpoint::open(SentinelLink& link, size_t index, const std::string& command) noexcept
{
    if (tls_.empty()) {
        return link.open(sentinels_[index], command);
    }
    return link.open(sentinels_[index], command, &tls_[index], &sessions_[index]);
}


void SentinelEndpoint::find(Found found) noexcept
{
    cancel();
    try {
        found_ = std::move(found);
    } catch (...) {
        return;
    }
    tried_ = 0;
    ask(first_);
}


void SentinelEndpoint::ask(size_t index) noexcept
{
    current_ = index;
    seen_ = 0;
    auth_error_.clear();
    if (!open(query_, index, query_command_)) {
        next("connect() failed");
        return;
    }
    query_timer_->start(int64_t(budget_));
}


// Gives up on the current sentinel and asks the next one, or reports that none answered.
void SentinelEndpoint::next(std::string_view why) noexcept
{
    const Peer& sentinel = sentinels_[current_];
    ngx_log_error(NGX_LOG_WARN, log_, 0, "ratelimit: sentinel %s, master \"%s\": %*s",
                  sentinel.text.c_str(), master_.c_str(), why.size(), why.data());
    query_timer_->stop();
    query_.close();
    if (++tried_ >= sentinels_.size()) {
        ngx_log_error(NGX_LOG_ERR, log_, 0,
                      "ratelimit: no sentinel gave the address of master \"%s\"",
                      master_.c_str());
        deliver(nullptr);
        return;
    }
    ask((current_ + 1) % sentinels_.size());
}


void SentinelEndpoint::deliver(const ngx_addr_t* addr) noexcept
{
    if (!found_) {
        return;
    }
    Found found = std::move(found_);
    found_ = nullptr;
    found(addr);
}


void SentinelEndpoint::on_query_reply(const redisReply* reply) noexcept
{
    bool last = ++seen_ == (auth_.empty() ? 1 : 2);
    if (!last) {
        if (reply->type == REDIS_REPLY_ERROR) {
            try {
                auth_error_.assign(reply->str, reply->len);
            } catch (...) {
            }
        }
        return;
    }
    on_master(reply);
}


// Address text of a reply element.
std::string_view element(const redisReply* reply, size_t i)
{
    const redisReply* e = reply->element[i];
    if (e->type != REDIS_REPLY_STRING) {
        return {};
    }
    return std::string_view(e->str, e->len);
}


// 0 if not a port.
in_port_t parse_port(std::string_view text)
{
    ngx_int_t port = ngx_atoi(reinterpret_cast<u_char*>(const_cast<char*>(text.data())),
                              text.size());
    return port < 1 || port > 65535 ? 0 : in_port_t(port);
}


// An IP address as the sentinels give it; false for a host name (or nothing valid).
bool parse_ip(std::string_view ip, in_port_t port, Peer& out)
{
    if (ip.empty() || ip.size() >= NGX_SOCKADDR_STRLEN) {
        return false;
    }
    std::string host(ip);
    ngx_sockaddr_t sa{};
    socklen_t len;
    if (inet_pton(AF_INET, host.c_str(), &sa.sockaddr_in.sin_addr) == 1) {
        sa.sockaddr_in.sin_family = AF_INET;
        len = sizeof(sockaddr_in);
    } else if (inet_pton(AF_INET6, host.c_str(), &sa.sockaddr_in6.sin6_addr) == 1) {
        sa.sockaddr_in6.sin6_family = AF_INET6;
        len = sizeof(sockaddr_in6);
    } else {
        return false;
    }
    ngx_inet_set_port(&sa.sockaddr, port);
    out.set(&sa.sockaddr, len, sockaddr_text(&sa.sockaddr, len));
    return true;
}


// What a DNS name may be (RFC 1035 lengths; letters, digits, '-', '.', '_').
bool is_host_name(std::string_view host)
{
    if (host.empty() || host.size() > 253) {
        return false;
    }
    return std::all_of(host.begin(), host.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')
               || ch == '-' || ch == '.' || ch == '_';
    });
}


std::string host_port_text(std::string_view host, std::string_view port)
{
    bool v6 = host.find(':') != std::string_view::npos;
    return (v6 ? "[" : "") + std::string(host) + (v6 ? "]:" : ":") + std::string(port);
}


// The reply to get-master-addr-by-name: [host, port], nil for an unknown master, or an error.
// The host is an IP address, or a name with announce-hostnames.
void SentinelEndpoint::on_master(const redisReply* reply) noexcept
{
    try {
        if (reply->type == REDIS_REPLY_ERROR) {
            std::string why = "error reply: " + std::string(reply->str, reply->len);
            if (!auth_error_.empty()) {
                why += " (AUTH: " + auth_error_ + ")";
            }
            next(why);
            return;
        }
        if (reply->type == REDIS_REPLY_NIL) {
            next("unknown master");
            return;
        }
        std::string_view host;
        in_port_t port = 0;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
            host = element(reply, 0);
            port = parse_port(element(reply, 1));
        }
        Peer numeric;
        bool is_ip = port && parse_ip(host, port, numeric);
        if (!is_ip && (port == 0 || !is_host_name(host))) {
            next("unexpected reply");
            return;
        }
        if (!is_ip && config_.resolver == nullptr) {
            ngx_log_error(NGX_LOG_ERR, log_, 0,
                          "ratelimit: sentinel %s names master \"%s\" by the host name "
                          "\"%*s\", and no \"resolver\" is configured to resolve it",
                          sentinels_[current_].text.c_str(), master_.c_str(), host.size(),
                          host.data());
            next("a host name, and no resolver");
            return;
        }
        found_master(host, port, is_ip ? &numeric : nullptr);
    } catch (...) {
        next("out of memory");
    }
}


// A sentinel answered: the master's address goes to the transport, after a DNS query for a
// host name.
void SentinelEndpoint::found_master(std::string_view host, in_port_t port, const Peer* numeric)
{
    query_timer_->stop();
    query_.close();
    first_ = current_;
    std::string text = host_port_text(host, std::to_string(port));
    if (text != master_text_) {
        ngx_log_error(NGX_LOG_NOTICE, log_, 0, "ratelimit: sentinel %s gives %s as master \"%s\"",
                      sentinels_[current_].text.c_str(), text.c_str(), master_.c_str());
    }
    master_text_ = std::move(text);
    master_host_.assign(host.data(), host.size());
    if (!sub_.is_open() && !sub_timer_->armed()) {
        subscribe(current_);
    }
    if (numeric) {
        named_.reset();
        ngx_addr_t addr = numeric->addr();
        deliver(&addr);
        return;
    }
    if (!named_ || named_->host() != master_host_ || named_->port() != port) {
        named_ = std::make_unique<HostEndpoint>(master_host_, port, nullptr, config_, log_);
    }
    named_->find([this](const ngx_addr_t* addr) { deliver(addr); });
}


void SentinelEndpoint::subscribe(size_t index) noexcept
{
    sub_index_ = index;
    if (!open(sub_, index, sub_command_)) {
        on_sub_failed("connect() failed");
    }
}


void SentinelEndpoint::on_sub_failed(std::string_view why) noexcept
{
    ngx_log_error(NGX_LOG_INFO, log_, 0,
                  "ratelimit: sentinel %s, subscription to +switch-master: %*s",
                  sentinels_[sub_index_].text.c_str(), why.size(), why.data());
    sub_.close();
    sub_timer_->start(1000);  // then the next sentinel
}


// ["message", "+switch-master", "<master> <old ip> <old port> <new ip> <new port>"]
void SentinelEndpoint::on_sub_reply(const redisReply* reply) noexcept
{
    if (reply->type == REDIS_REPLY_ERROR) {
        if (reply->len >= 6 && std::string_view(reply->str, 6) == "NOAUTH") {
            on_sub_failed(std::string_view(reply->str, reply->len));
        }
        return;  // the AUTH error of a sentinel without a password
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || element(reply, 0) != "message") {
        return;
    }
    switched(element(reply, 2));
}


void SentinelEndpoint::switched(std::string_view payload) noexcept
{
    try {
        std::vector<std::string_view> words;
        size_t pos = 0;
        while (pos < payload.size()) {
            size_t end = payload.find(' ', pos);
            end = end == std::string_view::npos ? payload.size() : end;
            words.push_back(payload.substr(pos, end - pos));
            pos = end + 1;
        }
        if (words.size() != 5 || words[0] != master_ || parse_port(words[4]) == 0) {
            return;
        }
        // As get-master-addr-by-name gives it: an address, or a host name.
        std::string text = host_port_text(words[3], std::to_string(parse_port(words[4])));
        ngx_log_error(NGX_LOG_NOTICE, log_, 0,
                      "ratelimit: sentinel %s: +switch-master \"%s\" to %s",
                      sentinels_[sub_index_].text.c_str(), master_.c_str(), text.c_str());
        if (text != master_text_ && on_moved_) {
            on_moved_();
        }
    } catch (...) {
    }
}


bool is_numeric(const std::string& host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}


// A cluster node: a seed as the configuration resolved it, or an address the cluster
// announced. TLS checks the node's own host unless ssl_server_name= is set.
class NodeEndpoint final : public Endpoint {
public:
    NodeEndpoint(const ngx_addr_t* configured, const ratelimit::NodeAddress& node,
                 bool own_tls_name, ngx_log_t* log)
        : log_(log)
    {
        if (own_tls_name) {
            tls_name_ = node.host;
        }
        if (configured) {
            peer_.set(configured->sockaddr, configured->socklen, node.text());
            return;
        }
        ngx_sockaddr_t sa{};
        socklen_t len = 0;
        if (inet_pton(AF_INET, node.host.c_str(), &sa.sockaddr_in.sin_addr) == 1) {
            sa.sockaddr_in.sin_family = AF_INET;
            sa.sockaddr_in.sin_port = htons(in_port_t(node.port));
            len = sizeof(sa.sockaddr_in);
        } else if (inet_pton(AF_INET6, node.host.c_str(), &sa.sockaddr_in6.sin6_addr) == 1) {
            sa.sockaddr_in6.sin6_family = AF_INET6;
            sa.sockaddr_in6.sin6_port = htons(in_port_t(node.port));
            len = sizeof(sa.sockaddr_in6);
        }
        peer_.set(&sa.sockaddr, len, node.text());
    }

    void find(Found found) noexcept override
    {
        if (peer_.socklen == 0) {
            // Names announced by the cluster (cluster-announce-hostname) are not resolved.
            ngx_log_error(NGX_LOG_ERR, log_, 0,
                          "ratelimit: cluster node %s is not an IP address; set "
                          "\"cluster-preferred-endpoint-type ip\" on the cluster",
                          peer_.text.c_str());
            found(nullptr);
            return;
        }
        ngx_addr_t addr = peer_.addr();
        found(&addr);
    }
    void cancel() noexcept override {}
    std::string_view tls_name() const noexcept override { return tls_name_; }

private:
    Peer peer_;
    std::string tls_name_;
    ngx_log_t* log_;
};

}  // namespace


std::unique_ptr<Endpoint> make_node_endpoint(const EndpointConfig& config,
                                             const ratelimit::NodeAddress& node, ngx_log_t* log)
{
    const auto& seeds = config.redis->addresses;
    bool own_tls_name = config.redis->ssl_server_name.empty();
    for (size_t i = 0; i < seeds.size(); i++) {
        if (seeds[i].host == node.host && seeds[i].port == node.port) {
            if (config.resolver == nullptr || is_numeric(seeds[i].host)) {
                return std::make_unique<NodeEndpoint>(&config.addrs[i], node, own_tls_name, log);
            }
            return std::make_unique<HostEndpoint>(seeds[i].host, in_port_t(seeds[i].port),
                                                  &config.addrs[i], config, log);
        }
    }
    return std::make_unique<NodeEndpoint>(nullptr, node, own_tls_name, log);
}


std::unique_ptr<Endpoint> make_endpoint(const EndpointConfig& config, ngx_log_t* log)
{
    const ratelimit::RedisConfig& redis = *config.redis;
    if (redis.mode == ratelimit::RedisMode::sentinel) {
        return std::make_unique<SentinelEndpoint>(config, log);
    }
    const ratelimit::RedisEndpoint& address = redis.addresses.front();
    if (config.resolver == nullptr || address.is_unix() || is_numeric(address.host)) {
        return std::make_unique<FixedEndpoint>(config.addrs[0]);
    }
    return std::make_unique<HostEndpoint>(address.host, in_port_t(address.port),
                                          &config.addrs[0], config, log);
}


ngx_resolver_t* configured_resolver(ngx_cycle_t* cycle, ngx_msec_t* timeout)
{
    auto* http = reinterpret_cast<ngx_http_conf_ctx_t*>(cycle->conf_ctx[ngx_http_module.index]);
    if (http == nullptr) {
        return nullptr;
    }
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        http->loc_conf[ngx_http_core_module.ctx_index]);
    // Without a `resolver` directive nginx still makes an empty one for the http block.
    if (clcf == nullptr || clcf->resolver == nullptr || clcf->resolver->connections.nelts == 0) {
        return nullptr;
    }
    // The http level's own settings are never merged: unset means the default, 30s.
    *timeout = clcf->resolver_timeout == NGX_CONF_UNSET_MSEC ? 30000 : clcf->resolver_timeout;
    return clcf->resolver;
}

}  // namespace ngx_ratelimit
