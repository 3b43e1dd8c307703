// The endpoints of ratelimit_redis: a fixed address, a host name re-resolved through nginx's
// resolver before each connection, and the nodes of a Redis Cluster. The sentinels' endpoint
// is in ngx_ratelimit_sentinel.cpp.

#include "ngx_ratelimit_endpoint.h"

#include <arpa/inet.h>

#include <algorithm>
#include <vector>

#include "ngx_ratelimit_loop.h"
#include "ngx_ratelimit_sentinel.h"

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

std::string sockaddr_text(const sockaddr* sa, socklen_t len)
{
    u_char buf[NGX_SOCKADDR_STRLEN];
    size_t n = ngx_sock_ntop(const_cast<sockaddr*>(sa), len, buf, sizeof(buf), 1);
    return std::string(reinterpret_cast<char*>(buf), n);
}

namespace {


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


// A host name resolved again before each connection: a configured one, one a sentinel named
// for the master, or a cluster node's. The answer is awaited for half of connect_timeout at
// most: past that (or on an error) the last address is used (if any: `known`, where the
// configuration resolved it), and a late answer still serves the next connection. `tls_name`:
// the name TLS checks there, when not the configured one (a cluster node's own).
class HostEndpoint final : public Endpoint {
public:
    HostEndpoint(std::string host, in_port_t port, const ngx_addr_t* known,
                 const EndpointConfig& config, ngx_log_t* log, std::string tls_name = {})
        : host_(std::move(host)), port_(port), resolver_(config.resolver),
          resolver_timeout_(config.resolver_timeout), budget_(half_connect_timeout(config)),
          log_(log), tls_name_(std::move(tls_name))
    {
        if (known) {
            peer_.set(known->sockaddr, known->socklen, as_view(known->name));
        }
        timer_ = make_ngx_timer([this] { on_budget(); }, true, log);
    }

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
    std::string_view tls_name() const noexcept override { return tls_name_; }

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
    std::string tls_name_;
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
            // Names announced by the cluster (cluster-announce-hostname) need a resolver.
            ngx_log_error(NGX_LOG_ERR, log_, 0,
                          "ratelimit: cluster node %s is not an IP address; configure a "
                          "\"resolver\" or set \"cluster-preferred-endpoint-type ip\" on "
                          "the cluster",
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


std::unique_ptr<Endpoint> make_host_endpoint(std::string host, in_port_t port,
                                             const ngx_addr_t* known,
                                             const EndpointConfig& config, ngx_log_t* log)
{
    return std::make_unique<HostEndpoint>(std::move(host), port, known, config, log);
}


std::unique_ptr<Endpoint> make_node_endpoint(const EndpointConfig& config,
                                             const ratelimit::NodeAddress& node, ngx_log_t* log)
{
    const auto& seeds = config.redis->addresses;
    bool own_tls_name = config.redis->ssl_server_name.empty();
    // TLS checks each node against its own name, unless ssl_server_name= gives the one name.
    std::string tls_name = own_tls_name ? node.host : std::string();
    bool by_name = config.resolver != nullptr && !node.host.empty() && !is_numeric(node.host);
    for (size_t i = 0; i < seeds.size(); i++) {
        if (seeds[i].host == node.host && seeds[i].port == node.port) {
            if (!by_name) {
                return std::make_unique<NodeEndpoint>(&config.addrs[i], node, own_tls_name, log);
            }
            return std::make_unique<HostEndpoint>(node.host, in_port_t(node.port),
                                                  &config.addrs[i], config, log, tls_name);
        }
    }
    if (by_name) {  // announced by host name (cluster-preferred-endpoint-type hostname)
        return std::make_unique<HostEndpoint>(node.host, in_port_t(node.port), nullptr, config,
                                              log, tls_name);
    }
    return std::make_unique<NodeEndpoint>(nullptr, node, own_tls_name, log);
}


std::unique_ptr<Endpoint> make_endpoint(const EndpointConfig& config, ngx_log_t* log)
{
    const ratelimit::RedisConfig& redis = *config.redis;
    if (redis.mode == ratelimit::RedisMode::sentinel) {
        return make_sentinel_endpoint(config, log);
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
