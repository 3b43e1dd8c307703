// mode=sentinel: the master's address from the sentinels, following Redis's guidelines for
// Sentinel clients (https://redis.io/docs/latest/develop/reference/sentinel-clients/).

#include "ngx_ratelimit_sentinel.h"

#include <arpa/inet.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "ngx_ratelimit_loop.h"
#include "ratelimit/resp.h"

namespace ngx_ratelimit {
namespace {

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



// mode=sentinel. A search asks the sentinels in turn, starting with the last one that answered
// well, `SENTINEL get-master-addr-by-name <master>` on a short-lived connection, each within
// connect_timeout of its own; the address named is then asked `ROLE`, and used only if it says
// "master" — else the next sentinel is asked, and the one that misled is logged. A search goes
// on when the connection that started it gives up (its connect_timeout passed): its answer
// serves the next connection, so hung sentinels cost one attempt, not every one. Meanwhile one
// sentinel is subscribed to `+switch-master`: when it names another master, the watcher (the
// transport) drops its connection, so the next one asks again. user=/password= are sent to the
// sentinels too (sentinels with ACLs need them; the AUTH error of a sentinel without a password
// is ignored). With `ssl` the sentinels are spoken to over TLS as well, each checked against
// its own host (or ssl_server_name). A master named by host name (sentinels with
// announce-hostnames) is resolved through nginx's `resolver`.
class SentinelEndpoint final : public Endpoint {
public:
    SentinelEndpoint(const EndpointConfig& config, ngx_log_t* log);
    ~SentinelEndpoint() override
    {
        found_ = nullptr;
        stop();
        sub_.close();
#if (NGX_SSL)
        for (TlsSession*& session : sessions_) {
            tls_free_session(&session);
        }
        tls_free_session(&check_session_);
#endif
    }

    void find(Found found) noexcept override;
    // The search under way goes on: its answer serves the next connection.
    void cancel() noexcept override { found_ = nullptr; }
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
    void stop() noexcept;
    void ask(size_t index) noexcept;
    void next(std::string_view why) noexcept;
    void deliver(const ngx_addr_t* addr) noexcept;
    bool command_reply(const redisReply* reply) noexcept;
    void on_query_reply(const redisReply* reply) noexcept;
    void on_master(const redisReply* reply) noexcept;
    void named(std::string_view host, in_port_t port, const Peer* numeric);
    void check(const ngx_addr_t* addr) noexcept;
    void on_check_reply(const redisReply* reply) noexcept;
    void on_check_failed(std::string_view why) noexcept;
    void confirmed() noexcept;
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
    std::string role_command_;
    std::string sub_command_;
    ngx_msec_t budget_;           // per sentinel: its answer and the ROLE check
    ngx_log_t* log_;
    Found found_;
    std::function<void()> on_moved_;
    SentinelLink query_;
    std::unique_ptr<ratelimit::Timer> query_timer_;
    bool searching_ = false;
    size_t first_ = 0;            // the last sentinel that answered well
    size_t current_ = 0;
    size_t tried_ = 0;
    int seen_ = 0;                // replies read on the query (or check) connection
    std::string auth_error_;
    // The address the current sentinel named, while ROLE is asked there.
    std::string named_text_;      // "host:port" as the sentinel says
    std::string named_host_;
    in_port_t named_port_ = 0;
    std::unique_ptr<Endpoint> resolving_;  // a host name the sentinel named, being resolved
    Peer candidate_;
    SentinelLink check_;
    TlsServer check_tls_{};
    TlsSession* check_session_ = nullptr;
    std::string master_text_;     // the master last given, "host:port" as the sentinels say
    std::string master_host_;
    SentinelLink sub_;
    std::unique_ptr<ratelimit::Timer> sub_timer_;  // resubscribes after a failure
    size_t sub_index_ = 0;
};


SentinelEndpoint::SentinelEndpoint(const EndpointConfig& config, ngx_log_t* log)
    : config_(config), master_(config.redis->master),
      budget_(std::max<ngx_msec_t>(ngx_msec_t(config.redis->connect_timeout_ms), 1)), log_(log),
      query_([this](const redisReply* r) { on_query_reply(r); },
             [this](std::string_view why) { next(why); }, log),
      check_([this](const redisReply* r) { on_check_reply(r); },
             [this](std::string_view why) { on_check_failed(why); }, log),
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
    role_command_ = auth_ + ratelimit::format_command({"ROLE"});
    sub_command_ = auth_ + ratelimit::format_command({"SUBSCRIBE", "+switch-master"});
    // Cancelable: a search nobody waits for does not hold up an exiting worker.
    query_timer_ = make_ngx_timer([this] { next("timed out"); }, true, log);
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
    try {
        found_ = std::move(found);
    } catch (...) {
        return;
    }
    if (searching_) {
        return;  // the search under way answers this connection too
    }
    searching_ = true;
    tried_ = 0;
    ask(first_);
}


// Ends the search under way, if any.
void SentinelEndpoint::stop() noexcept
{
    searching_ = false;
    query_timer_->stop();
    query_.close();
    check_.close();
    resolving_.reset();
}


void SentinelEndpoint::ask(size_t index) noexcept
{
    current_ = index;
    seen_ = 0;
    auth_error_.clear();
    query_timer_->start(int64_t(budget_));
    if (!open(query_, index, query_command_)) {
        next("connect() failed");
    }
}


// Gives up on the current sentinel and asks the next one, or reports that none answered.
void SentinelEndpoint::next(std::string_view why) noexcept
{
    const Peer& sentinel = sentinels_[current_];
    ngx_log_error(NGX_LOG_WARN, log_, 0, "ratelimit: sentinel %s, master \"%s\": %*s",
                  sentinel.text.c_str(), master_.c_str(), why.size(), why.data());
    query_timer_->stop();
    query_.close();
    check_.close();
    if (resolving_) {
        resolving_->cancel();  // not destroyed here: this may be its own callback
    }
    if (++tried_ >= sentinels_.size()) {
        ngx_log_error(NGX_LOG_ERR, log_, 0,
                      "ratelimit: no sentinel gave the address of master \"%s\"",
                      master_.c_str());
        searching_ = false;
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


// True for the reply to the command itself; the one to AUTH before it (if any) is kept when
// it is an error, for the log.
bool SentinelEndpoint::command_reply(const redisReply* reply) noexcept
{
    if (++seen_ == (auth_.empty() ? 1 : 2)) {
        return true;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        try {
            auth_error_.assign(reply->str, reply->len);
        } catch (...) {
        }
    }
    return false;
}


void SentinelEndpoint::on_query_reply(const redisReply* reply) noexcept
{
    if (command_reply(reply)) {
        on_master(reply);
    }
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
        named(host, port, is_ip ? &numeric : nullptr);
    } catch (...) {
        next("out of memory");
    }
}


// A sentinel named the master: its address (after a DNS query for a host name) is checked.
void SentinelEndpoint::named(std::string_view host, in_port_t port, const Peer* numeric)
{
    query_.close();
    named_text_ = host_port_text(host, std::to_string(port));
    named_host_.assign(host.data(), host.size());
    named_port_ = port;
    if (numeric) {
        ngx_addr_t addr = numeric->addr();
        check(&addr);
        return;
    }
    resolving_ = make_host_endpoint(named_host_, port, nullptr, config_, log_);
    resolving_->find([this](const ngx_addr_t* addr) {
        if (addr == nullptr) {
            next("cannot resolve the master it names");
            return;
        }
        check(addr);
    });
}


// Asks the address a sentinel named for its ROLE (AUTH first, as for any connection there).
void SentinelEndpoint::check(const ngx_addr_t* addr) noexcept
{
    try {
        candidate_.set(addr->sockaddr, addr->socklen, named_text_);
    } catch (...) {
        next("out of memory");
        return;
    }
    seen_ = 0;
    auth_error_.clear();
    bool opened;
    if (config_.tls && config_.tls->ssl) {
        const char* name =
            config_.redis->ssl_server_name.empty() ? named_host_.c_str() : nullptr;
        check_tls_ = TlsServer{config_.tls, name, "Redis", candidate_.text.c_str()};
        opened = check_.open(candidate_, role_command_, &check_tls_, &check_session_);
    } else {
        opened = check_.open(candidate_, role_command_);
    }
    if (!opened) {
        on_check_failed("connect() failed");
    }
}


void SentinelEndpoint::on_check_failed(std::string_view why) noexcept
{
    try {
        next("named " + named_text_ + ", which does not answer ROLE: " + std::string(why));
    } catch (...) {
        next("named a master that does not answer ROLE");
    }
}


// ROLE's reply: ["master", ...] for a master; "slave" (or "sentinel") otherwise.
void SentinelEndpoint::on_check_reply(const redisReply* reply) noexcept
{
    if (!command_reply(reply)) {
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && reply->len >= 6
        && std::string_view(reply->str, 6) == "NOPERM") {
        // An ACL user without +role (as the README of 0.3 gave it): used unchecked, and said.
        ngx_log_error(NGX_LOG_WARN, log_, 0,
                      "ratelimit: cannot check that %s, which sentinel %s names as master "
                      "\"%s\", is one: the user may not run ROLE (add +role to its ACL)",
                      named_text_.c_str(), sentinels_[current_].text.c_str(), master_.c_str());
        confirmed();
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 && element(reply, 0) == "master") {
        confirmed();
        return;
    }
    try {
        std::string role = reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1
                               ? std::string(element(reply, 0))
                               : reply->type == REDIS_REPLY_ERROR
                                     ? std::string(reply->str, reply->len)
                                     : std::string("unexpected reply");
        if (!auth_error_.empty()) {
            role += " (AUTH: " + auth_error_ + ")";
        }
        next("named " + named_text_ + ", which is not a master (ROLE: " + role + ")");
    } catch (...) {
        next("named an address that is not a master");
    }
}


// The address named is a master: it goes to the transport, and this sentinel is asked first
// from now on.
void SentinelEndpoint::confirmed() noexcept
{
    query_timer_->stop();
    check_.close();
    searching_ = false;
    first_ = current_;
    if (named_text_ != master_text_) {
        ngx_log_error(NGX_LOG_NOTICE, log_, 0, "ratelimit: sentinel %s gives %s as master \"%s\"",
                      sentinels_[current_].text.c_str(), named_text_.c_str(), master_.c_str());
    }
    try {
        master_text_ = named_text_;
        master_host_ = named_host_;
    } catch (...) {
    }
    if (!sub_.is_open() && !sub_timer_->armed()) {
        subscribe(current_);
    }
    ngx_addr_t addr = candidate_.addr();
    deliver(&addr);
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

}  // namespace


std::unique_ptr<Endpoint> make_sentinel_endpoint(const EndpointConfig& config, ngx_log_t* log)
{
    return std::make_unique<SentinelEndpoint>(config, log);
}

}  // namespace ngx_ratelimit
