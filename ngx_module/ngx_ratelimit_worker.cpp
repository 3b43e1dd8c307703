// The worker's Redis runtime: one client, one connection and one batcher per worker process,
// created after fork and shut down in exit_process so that no socket outlives the worker.

#include <new>
#include <string>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_endpoint.h"
#include "ngx_ratelimit_log.h"
#include "ngx_ratelimit_loop.h"
#include "ratelimit/key.h"
#include "ratelimit/script.h"

namespace ngx_ratelimit {
namespace {

struct Worker {
    Worker(std::unique_ptr<Endpoint> where, const RedisTls& tls, ngx_log_t* log,
           ratelimit::ClientOptions options, ratelimit::ClientObserver observer)
        : endpoint(std::move(where)), loop(*endpoint, log, &tls),
          client(loop, std::move(options), std::move(observer)),
          batcher(loop, client, ratelimit::BatcherOptions{}, count_script_call)
    {
    }

    std::unique_ptr<Endpoint> endpoint;  // where each connection goes; outlives the client
    NgxEventLoop loop;
    ratelimit::RedisClient client;
    ratelimit::Batcher batcher;  // declared last: it goes first
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
std::string probe_command(const ratelimit::RedisConfig& redis)
{
    std::string key = redis.prefix + "probe";
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
    options.probe_command = probe_command(redis);
    return options;
}


ratelimit::ClientObserver client_observer(ngx_log_t* log, const ngx_str_t* name)
{
    ratelimit::ClientObserver observer;
    observer.on_error = [log, name](std::string_view message) {
        log_throttled(NGX_LOG_ERR, log, LogReason::redis_error, "ratelimit: Redis %V: %*s",
                      name, message.size(), message.data());
    };
    // Logged once per transition: down, up, and reconnecting after a connection was lost.
    observer.on_state = [log, name, was_up = false](ratelimit::ClientState state) mutable {
        if (state == ratelimit::ClientState::down || state == ratelimit::ClientState::up) {
            ngx_uint_t level = state == ratelimit::ClientState::down ? NGX_LOG_ERR
                                                                     : NGX_LOG_NOTICE;
            ngx_log_error(level, log, 0, "ratelimit: Redis %V is %s", name, state_name(state));
        } else if (state == ratelimit::ClientState::connecting && was_up) {
            ngx_log_error(NGX_LOG_NOTICE, log, 0, "ratelimit: Redis %V: reconnecting", name);
            was_up = false;  // once until it is up again, however many attempts it takes
        }
        was_up = was_up || state == ratelimit::ClientState::up;
    };
    observe_redis(observer);
    return observer;
}

}  // namespace


ratelimit::RedisClient* redis_client()
{
    return worker ? &worker->client : nullptr;
}


ratelimit::Batcher* redis_batcher()
{
    return worker ? &worker->batcher : nullptr;
}


ngx_int_t init_worker_redis(ngx_cycle_t* cycle, MainConf* mcf)
{
    try {
        EndpointConfig where{mcf->redis, mcf->redis_addrs, nullptr, 0, &mcf->redis_tls};
        where.resolver = configured_resolver(cycle, &where.resolver_timeout);
        worker = new Worker(make_endpoint(where, cycle->log), mcf->redis_tls, cycle->log,
                            client_options(*mcf->redis),
                            client_observer(cycle->log, &mcf->redis_peer.name));
        return NGX_OK;
    } catch (...) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "ratelimit: cannot create the Redis client");
        return NGX_ERROR;
    }
}


void exit_worker_redis()
{
    if (worker == nullptr) {
        return;
    }
    forget_worker_redis_state(worker->client.state());
    worker->batcher.shutdown();
    worker->client.shutdown();
    delete worker;
    worker = nullptr;
}

}  // namespace ngx_ratelimit
