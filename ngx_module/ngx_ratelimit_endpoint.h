// Where the next Redis connection goes. The transport asks before each connect; the answer
// may take a DNS query (a host name re-resolved through nginx's `resolver`) or a question to
// the sentinels (mode=sentinel), both without blocking. The core client knows nothing of it.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ngx_ratelimit_nginx.h"
#include "ratelimit/cluster_map.h"
#include "ratelimit/redis_config.h"

namespace ngx_ratelimit {

// An address and its name for logs, owned (ngx_addr_t points into it).
struct Peer {
    ngx_sockaddr_t storage{};
    socklen_t socklen = 0;
    std::string text;

    void set(const struct sockaddr* sa, socklen_t len, std::string_view name);
    ngx_addr_t addr() const;
};

class Endpoint {
public:
    // nullptr: no address could be found (the endpoint logged why).
    using Found = std::function<void(const ngx_addr_t* peer)>;
    virtual ~Endpoint() = default;
    // Calls `found` exactly once, possibly before returning, unless cancel() comes first.
    // The address is valid during the call only.
    virtual void find(Found found) noexcept = 0;
    // `found` will not be called. Idempotent.
    virtual void cancel() noexcept = 0;
    // `on_moved` is called when the endpoint learns that the address it gave last is no longer
    // the one to use (a sentinel's +switch-master); nullptr stops it.
    virtual void watch(std::function<void()> on_moved) noexcept { (void) on_moved; }
    // The name TLS checks on the address given last, where it is not the configured one
    // (RedisTls::server_name): the host a sentinel named for the master. Empty otherwise.
    virtual std::string_view tls_name() const noexcept { return {}; }
};

struct RedisTls;

// What the endpoint of `ratelimit_redis` needs from the configuration. `addrs` holds the
// addresses of `config.addresses`, resolved when the configuration was read.
struct EndpointConfig {
    const ratelimit::RedisConfig* redis;
    const ngx_addr_t* addrs;
    ngx_resolver_t* resolver;        // nullptr: names are not resolved again
    ngx_msec_t resolver_timeout;
    const RedisTls* tls;             // `ssl` (to the sentinels as well); nullptr: plain TCP
};

std::unique_ptr<Endpoint> make_endpoint(const EndpointConfig& config, ngx_log_t* log);

// A host name resolved again (through `config.resolver`) before each connection, within half
// of connect_timeout; `known`: its address until then, if any.
std::unique_ptr<Endpoint> make_host_endpoint(std::string host, in_port_t port,
                                             const ngx_addr_t* known,
                                             const EndpointConfig& config, ngx_log_t* log);

// "address:port" of a socket address, as nginx prints it.
std::string sockaddr_text(const struct sockaddr* sa, socklen_t len);

// Where the connections to one node of a cluster go (mode=cluster): a seed as configured, or
// the IP address the cluster announced.
std::unique_ptr<Endpoint> make_node_endpoint(const EndpointConfig& config,
                                             const ratelimit::NodeAddress& node, ngx_log_t* log);

// The http-level `resolver` when one is configured, else nullptr.
ngx_resolver_t* configured_resolver(ngx_cycle_t* cycle, ngx_msec_t* timeout);

}  // namespace ngx_ratelimit
