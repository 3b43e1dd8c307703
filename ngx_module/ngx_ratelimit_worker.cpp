// The worker's Redis runtime: one client and connection (per master in cluster mode) and one
// batcher per worker process, created after fork and shut down in exit_process so that no
// socket outlives the worker.

#include <new>
#include <string>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_overrides.h"
#include "ngx_ratelimit_endpoint.h"
#include "ngx_ratelimit_lease.h"
#include "ngx_ratelimit_log.h"
#include "ngx_ratelimit_loop.h"
#include "ratelimit/cluster_client.h"
#include "ratelimit/key.h"
#include "ratelimit/script.h"

namespace ngx_ratelimit {
namespace {

// One cluster node's connections: its endpoint and a loop whose transports go there.
class NodeLoop final : public ratelimit::EventLoop {
public:
    NodeLoop(std::unique_ptr<Endpoint> endpoint, ngx_log_t* log, const RedisTls& tls)
        : endpoint_(std::move(endpoint)), loop_(*endpoint_, log, &tls) {}

    std::unique_ptr<ratelimit::Transport> make_transport() override
    {
        return loop_.make_transport();
    }
    std::unique_ptr<ratelimit::Timer> make_timer(std::function<void()> on_fire,
                                                 TimerKind kind) override
    {
        return loop_.make_timer(std::move(on_fire), kind);
    }
    int64_t now_ms() noexcept override { return loop_.now_ms(); }

private:
    std::unique_ptr<Endpoint> endpoint_;
    NgxEventLoop loop_;
};

// Standalone and sentinel: one client. Cluster: one client per master, in `cluster`.
struct Worker {
    Worker(std::unique_ptr<Endpoint> where, const RedisTls& tls, ngx_log_t* log)
        : endpoint(std::move(where)), loop(*endpoint, log, &tls) {}

    ratelimit::CallRouter& router()
    {
        if (cluster) {
            return *cluster;
        }
        return *single;
    }

    std::unique_ptr<Endpoint> endpoint;  // where each connection goes (cluster: the first seed)
    NgxEventLoop loop;
    std::unique_ptr<ratelimit::RedisClient> client;
    std::unique_ptr<ratelimit::SingleRedis> single;
    std::unique_ptr<ratelimit::ClusterClient> cluster;
    std::unique_ptr<ratelimit::Batcher> batcher;
    std::unique_ptr<ratelimit::Timer> lease_sweep;  // declared last: it goes first
};

// A plain pointer, not a static object: nothing of ours may run after exit_process.
Worker* worker = nullptr;


const char* state_name(ratelimit::ClientState state)
{
    switch (state) {
    case ratelimit::ClientState::idle:
        return "idle";
    case ratelimit::ClientState::connecting:
        return "connecting";
    case ratelimit::ClientState::up:
        return "up";
    case ratelimit::ClientState::down:
        return "down";
    }
    return "?";
}


// While Redis is down, the breaker probes with a decision like the ones requests ask for (one
// token of a bucket that refills in a millisecond), so that a server which answers PING but
// refuses the script (READONLY, OOM, NOPERM) stays down. Its key cannot be a bucket's: those
// have a ':' after the policy name.
std::string probe_command(const std::string& key)
{
    ratelimit::ScriptLimit limit{key, ratelimit::BucketParams{1000, 1000, 1}, 1};
    ratelimit::ScriptBatch batch;
    batch.add_request(&limit, 1);
    std::string command;
    batch.append_eval(command);
    return command;
}


ratelimit::ClientOptions client_options(const ratelimit::RedisConfig& redis)
{
    ratelimit::ClientOptions options;
    options.connect_timeout_ms = redis.connect_timeout_ms;
    options.timeout_ms = redis.timeout_ms;
    options.user = redis.user;
    options.password = redis.password;
    options.db = redis.db;
    options.noscript_fallback = [](std::string_view command) {
        return ratelimit::evalsha_to_eval(command);
    };
    options.probe_command = probe_command(redis.prefix + "probe");
    return options;
}


ratelimit::ClientObserver client_observer(ngx_log_t* log, const std::string& name)
{
    ratelimit::ClientObserver observer;
    observer.on_error = [log, name](std::string_view message) {
        log_throttled(NGX_LOG_ERR, log, LogReason::redis_error, "ratelimit: Redis %s: %*s",
                      name.c_str(), message.size(), message.data());
    };
    // Logged once per transition: down, up, and reconnecting after a connection was lost.
    observer.on_state = [log, name, was_up = false](ratelimit::ClientState state) mutable {
        if (state == ratelimit::ClientState::down || state == ratelimit::ClientState::up) {
            ngx_uint_t level = state == ratelimit::ClientState::down ? NGX_LOG_ERR
                                                                     : NGX_LOG_NOTICE;
            ngx_log_error(level, log, 0, "ratelimit: Redis %s is %s", name.c_str(),
                          state_name(state));
        } else if (state == ratelimit::ClientState::connecting && was_up) {
            ngx_log_error(NGX_LOG_NOTICE, log, 0, "ratelimit: Redis %s: reconnecting",
                          name.c_str());
            was_up = false;  // once until it is up again, however many attempts it takes
        }
        was_up = was_up || state == ratelimit::ClientState::up;
    };
    observe_redis(observer);
    return observer;
}


std::string as_string(const ngx_str_t& s)
{
    return std::string(reinterpret_cast<const char*>(s.data), s.len);
}


// mode=cluster: the seeds, and per master a loop to it and the observer of its client.
void start_cluster(Worker& w, ngx_cycle_t* cycle, MainConf* mcf, const EndpointConfig& where)
{
    std::vector<ratelimit::NodeAddress> seeds;
    for (const ratelimit::RedisEndpoint& seed : mcf->redis->addresses) {
        seeds.push_back(ratelimit::NodeAddress{seed.host, seed.port});
    }
    ratelimit::ClusterOptions options;
    options.client = client_options(*mcf->redis);
    options.client.probe_command.clear();  // until the map names the node's slots
    options.probe_command = probe_command;
    options.probe_key_prefix = mcf->redis->prefix + "probe";

    ngx_log_t* log = cycle->log;
    const RedisTls* tls = &mcf->redis_tls;
    ratelimit::ClusterHost host;
    host.loop_for = [where, log, tls](const ratelimit::NodeAddress& node) {
        return std::make_unique<NodeLoop>(make_node_endpoint(where, node, log), log, *tls);
    };
    host.observer_for = [log](const ratelimit::NodeAddress& node) {
        return client_observer(log, node.text());
    };
    host.on_error = [log](std::string_view message) {
        log_throttled(NGX_LOG_ERR, log, LogReason::redis_error, "ratelimit: Redis cluster: %*s",
                      message.size(), message.data());
    };
    host.on_map = [log](size_t masters) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0, "ratelimit: Redis cluster: slot map of %uz masters",
                      masters);
    };
    host.on_retire = [](const ratelimit::RedisClient& client) {
        forget_worker_redis_state(client.state());
    };
    w.cluster = std::make_unique<ratelimit::ClusterClient>(w.loop, std::move(seeds),
                                                           std::move(options), std::move(host));
}

}  // namespace


ratelimit::RedisClient* redis_client()
{
    return worker ? worker->client.get() : nullptr;
}


const ratelimit::ClusterClient* redis_cluster()
{
    return worker ? worker->cluster.get() : nullptr;
}


ratelimit::CallRouter* redis_router()
{
    return worker ? &worker->router() : nullptr;
}


ratelimit::Batcher* redis_batcher()
{
    return worker ? worker->batcher.get() : nullptr;
}


const char* mode_name(const MainConf* mcf)
{
    if (mcf->redis == nullptr) {
        return "local";
    }
    return mcf->redis->mode == ratelimit::RedisMode::cluster ? "cluster" : "redis";
}


ngx_int_t init_worker_redis(ngx_cycle_t* cycle, MainConf* mcf)
{
    try {
        EndpointConfig where{mcf->redis, mcf->redis_addrs, nullptr, 0, &mcf->redis_tls};
        where.resolver = configured_resolver(cycle, &where.resolver_timeout);
        bool cluster = mcf->redis->mode == ratelimit::RedisMode::cluster;
        auto w = std::make_unique<Worker>(
            cluster ? make_node_endpoint(where, {mcf->redis->addresses[0].host,
                                                 mcf->redis->addresses[0].port}, cycle->log)
                    : make_endpoint(where, cycle->log),
            mcf->redis_tls, cycle->log);
        if (cluster) {
            start_cluster(*w, cycle, mcf, where);
        } else {
            w->client = std::make_unique<ratelimit::RedisClient>(
                w->loop, client_options(*mcf->redis),
                client_observer(cycle->log, as_string(mcf->redis_peer.name)));
            w->single = std::make_unique<ratelimit::SingleRedis>(w->loop, *w->client);
        }
        ratelimit::BatcherOptions batching;
        batching.wait_ms = mcf->redis->batch_wait_ms;
        w->batcher = std::make_unique<ratelimit::Batcher>(w->loop, w->router(), batching,
                                                          count_script_call);
        w->lease_sweep = start_lease_sweep(w->loop, w->router(), mcf->zone);
        worker = w.release();
        start_override_poll(cycle, mcf);
        return NGX_OK;
    } catch (...) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "ratelimit: cannot create the Redis client");
        return NGX_ERROR;
    }
}


void exit_worker_redis()
{
    stop_override_poll();
    if (worker == nullptr) {
        return;
    }
    if (worker->lease_sweep) {
        worker->lease_sweep->stop();
    }
    worker->batcher->shutdown();
    if (worker->cluster) {
        for (const auto& node : worker->cluster->nodes(true)) {
            forget_worker_redis_state(node.client->state());
        }
        worker->cluster->shutdown();
    } else {
        forget_worker_redis_state(worker->client->state());
        worker->client->shutdown();
    }
    delete worker;
    worker = nullptr;
}

}  // namespace ngx_ratelimit
