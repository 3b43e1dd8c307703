// ngx_http_ratelimit_module: directives, configuration, and the worker lifecycle.
// The request path lives in ngx_ratelimit_handler.cpp, the shared-memory buckets in
// ngx_ratelimit_zone.cpp, the Redis connection in ngx_ratelimit_loop.cpp.

#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ngx_ratelimit.h"
#include "ngx_ratelimit_adaptive.h"
#include "ngx_ratelimit_overrides.h"
#include "ngx_ratelimit_delay.h"
#include "ngx_ratelimit_loop.h"
#include "ngx_ratelimit_zone.h"
#include "ratelimit/lease.h"
#include "ratelimit/version.h"

using namespace ngx_ratelimit;

namespace {

constexpr ssize_t kDefaultZoneSize = 10 * 1024 * 1024;

// Runs a C++ object's destructor when its configuration pool goes away.
template <typename T>
T* pool_new(ngx_pool_t* pool)
{
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(pool, sizeof(T));
    if (cln == nullptr) {
        return nullptr;
    }
    T* obj = new (cln->data) T();
    cln->handler = [](void* data) { static_cast<T*>(data)->~T(); };
    return obj;
}


void* create_main_conf(ngx_conf_t* cf) noexcept
{
    auto* mcf = static_cast<MainConf*>(ngx_pcalloc(cf->pool, sizeof(MainConf)));
    if (mcf == nullptr) {
        return nullptr;
    }
    /*
     * set by ngx_pcalloc():
     *
     *     mcf->redis = nullptr;
     *     mcf->zone = nullptr;
     */
    if (ngx_array_init(&mcf->policies, cf->pool, 4, sizeof(Policy)) != NGX_OK
        || ngx_array_init(&mcf->adaptives, cf->pool, 1, sizeof(Adaptive)) != NGX_OK)
    {
        return nullptr;
    }
    mcf->zone_size = ssize_t(NGX_CONF_UNSET_SIZE);
    return mcf;
}


char* init_main_conf(ngx_conf_t* cf, void* conf) noexcept
{
    auto* mcf = static_cast<MainConf*>(conf);
    if (mcf->zone_size == ssize_t(NGX_CONF_UNSET_SIZE)) {
        mcf->zone_size = kDefaultZoneSize;
    }
    if (!resolve_adaptive(cf, mcf)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts && mcf->redis == nullptr; i++) {
        if (policies[i].lease_ms > 0) {
            // Local mode decides every request in the zone already: nothing to lease from.
            ngx_conf_log_error(NGX_LOG_WARN, cf, 0, "ratelimit_policy \"%V\": lease= has no "
                               "effect without ratelimit_redis", &policies[i].name);
        }
    }
    mcf->zone = add_zone(cf, mcf, size_t(mcf->zone_size));
    return mcf->zone ? NGX_CONF_OK : static_cast<char*>(NGX_CONF_ERROR);
}


void* create_loc_conf(ngx_conf_t* cf) noexcept
{
    auto* lcf = static_cast<LocConf*>(ngx_pcalloc(cf->pool, sizeof(LocConf)));
    if (lcf == nullptr) {
        return nullptr;
    }
    /*
     * set by ngx_pcalloc():
     *
     *     lcf->limits = nullptr;
     *     lcf->default_policy_name = { 0, nullptr };
     *     lcf->default_policy = nullptr;
     */
    lcf->status = NGX_CONF_UNSET_UINT;
    lcf->headers = NGX_CONF_UNSET_UINT;
    lcf->dry_run = NGX_CONF_UNSET;
    lcf->log_level = NGX_CONF_UNSET_UINT;
    lcf->failure_mode = NGX_CONF_UNSET_UINT;
    lcf->failure_nodes = NGX_CONF_UNSET;
    return lcf;
}


// Policies are resolved here, once the whole http block is read, so that `ratelimit`
// lines may come before the `ratelimit_policy` they use.
bool resolve_limits(ngx_conf_t* cf, MainConf* mcf, LocConf* lcf)
{
    if (lcf->limits == nullptr) {
        return true;
    }
    auto* limits = static_cast<Limit*>(lcf->limits->elts);
    if (lcf->limits->nelts > kMaxLimitsPerRequest) {
        auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
            ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
        static ngx_str_t server_level = ngx_string("(server level)");
        ngx_str_t* where = clcf->name.len ? &clcf->name : &server_level;
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "%ui \"ratelimit\" limits apply to location \"%V\", at most %uz "
                      "are allowed, the first in %V:%ui", lcf->limits->nelts, where,
                      kMaxLimitsPerRequest, &limits[0].file, limits[0].line);
        return false;
    }
    bool uses_variable = false;
    for (ngx_uint_t i = 0; i < lcf->limits->nelts; i++) {
        Limit& limit = limits[i];
        if (limit.policy_value) {
            uses_variable = true;
            continue;
        }
        if (limit.policy) {
            continue;  // resolved (and checked) at an enclosing level
        }
        limit.policy = find_policy(mcf, limit.policy_name);
        if (limit.policy == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"ratelimit\" uses unknown policy \"%V\" in %V:%ui",
                          &limit.policy_name, &limit.file, limit.line);
            return false;
        }
        if (!check_delay(cf, limit.policy->name, limit.policy->params, limit.delay, limit.file,
                         limit.line))
        {
            return false;
        }
    }
    if (uses_variable && lcf->default_policy == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"ratelimit\" with a variable policy needs \"ratelimit_default_policy\" "
                      "in %V:%ui", &limits[0].file, limits[0].line);
        return false;
    }
    return true;
}


char* merge_loc_conf(ngx_conf_t* cf, void* parent, void* child) noexcept
{
    auto* prev = static_cast<LocConf*>(parent);
    auto* conf = static_cast<LocConf*>(child);
    auto* mcf = static_cast<MainConf*>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_ratelimit_module));

    // As limit_req: a level inherits the limits above only when it has none of its own.
    // An API location is limited only by its own lines.
    if (conf->limits == nullptr && conf->api == api_off) {
        conf->limits = prev->limits;
    }
    if (conf->default_policy_name.data == nullptr) {
        conf->default_policy_name = prev->default_policy_name;
        conf->default_policy_file = prev->default_policy_file;
        conf->default_policy_line = prev->default_policy_line;
    }
    if (conf->default_policy_name.data && conf->default_policy == nullptr) {
        conf->default_policy = find_policy(mcf, conf->default_policy_name);
        if (conf->default_policy == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "\"ratelimit_default_policy\" uses unknown policy \"%V\" in %V:%ui",
                          &conf->default_policy_name, &conf->default_policy_file,
                          conf->default_policy_line);
            return static_cast<char*>(NGX_CONF_ERROR);
        }
    }

    ngx_conf_merge_uint_value(conf->status, prev->status, 429);
    ngx_conf_merge_uint_value(conf->headers, prev->headers, headers_x);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_uint_value(conf->log_level, prev->log_level, NGX_LOG_ERR);
    ngx_conf_merge_uint_value(conf->failure_mode, prev->failure_mode, failure_open);
    ngx_conf_merge_value(conf->failure_nodes, prev->failure_nodes, 1);

    if (!resolve_limits(cf, mcf, conf)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}


// Resolves the addresses the module connects to (standalone: the first; sentinel: each
// sentinel) now, as proxy_pass does; host names are resolved again at each reconnection where
// a `resolver` is configured (ngx_ratelimit_endpoint.cpp).
bool resolve_redis_addresses(ngx_conf_t* cf, ngx_command_t* cmd, MainConf* mcf,
                             const ratelimit::RedisConfig& redis)
{
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    size_t n = redis.mode == ratelimit::RedisMode::standalone ? 1 : redis.addresses.size();
    mcf->redis_addrs = static_cast<ngx_addr_t*>(ngx_pcalloc(cf->pool, n * sizeof(ngx_addr_t)));
    if (mcf->redis_addrs == nullptr) {
        return false;
    }
    size_t found = 0;
    ngx_uint_t first = 1;
    for (ngx_uint_t i = 1; i < cf->args->nelts && found < n; i++) {
        std::string_view arg = as_view(value[i]);
        size_t eq = arg.find('=');
        if (arg == "ssl" || (eq != std::string_view::npos
                             && arg.substr(0, eq).find(':') == std::string_view::npos)) {
            continue;  // an option, not an address (as parse_redis_args tells them apart)
        }
        ngx_url_t u{};
        u.url = value[i];
        u.default_port = 6379;
        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": %s in address \"%V\"", &cmd->name,
                               u.err ? u.err : "host not found", &u.url);
            return false;
        }
        if (found == 0) {
            first = i;
        }
        mcf->redis_addrs[found++] = u.addrs[0];
    }
    mcf->redis_peer = mcf->redis_addrs[0];
    mcf->redis_peer.name = value[first];  // as written: a host name stays one in the logs
    if (redis.mode == ratelimit::RedisMode::sentinel) {
        // Logs and the API name the master; its address comes from the sentinels.
        std::string name = "master \"" + redis.master + "\"";
        mcf->redis_peer.name.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, name.size()));
        if (mcf->redis_peer.name.data == nullptr) {
            return false;
        }
        ngx_memcpy(mcf->redis_peer.name.data, name.data(), name.size());
        mcf->redis_peer.name.len = name.size();
    }
    return true;
}


#if (NGX_SSL)

// A NUL-terminated copy in the configuration's pool, as OpenSSL and nginx's file names need.
bool pool_string(ngx_pool_t* pool, const std::string& text, ngx_str_t& out)
{
    out.len = text.size();
    out.data = static_cast<u_char*>(ngx_pnalloc(pool, text.size() + 1));
    if (out.data == nullptr) {
        return false;
    }
    ngx_memcpy(out.data, text.data(), text.size());
    out.data[text.size()] = '\0';
    return true;
}


bool is_ip_address(const char* name)
{
    u_char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

// Chains of managed Redis services have intermediates; OpenSSL's own default.
constexpr ngx_int_t kTlsVerifyDepth = 100;

// The client context of `ssl`, made here as proxy_ssl makes its own and freed with the
// configuration. The trusted certificates are loaded now, so a bad file fails `nginx -t`.
bool create_redis_tls(ngx_conf_t* cf, ngx_command_t* cmd, const ratelimit::RedisConfig& redis,
                      RedisTls& tls)
{
    const std::string& name =
        redis.ssl_server_name.empty() ? redis.addresses[0].host : redis.ssl_server_name;
    if (redis.ssl_verify && redis.ssl_trusted_certificate.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"ssl_verify=on\" (the default with \"ssl\") needs "
                           "\"ssl_trusted_certificate=\"", &cmd->name);
        return false;
    }
    if (redis.ssl_verify && name.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"ssl_verify=on\" needs \"ssl_server_name=\" with a "
                           "unix: address", &cmd->name);
        return false;
    }

    auto* ssl = static_cast<ngx_ssl_t*>(ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t)));
    if (ssl == nullptr) {
        return false;
    }
    ssl->log = cf->log;
    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3, nullptr) != NGX_OK) {
        return false;
    }
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        ngx_ssl_cleanup_ctx(ssl);
        return false;
    }
    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;
    // The transport's output buffer may move between a send() that would block and its retry.
    SSL_CTX_set_mode(ssl->ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

    if (!redis.ssl_trusted_certificate.empty()) {
        ngx_str_t file;
        if (!pool_string(cf->pool, redis.ssl_trusted_certificate, file)) {
            return false;
        }
        if (ngx_ssl_trusted_certificate(cf, ssl, &file, kTlsVerifyDepth) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": cannot load \"ssl_trusted_certificate=%s\"",
                               &cmd->name, redis.ssl_trusted_certificate.c_str());
            return false;
        }
    }
    // Sessions are offered to NgxTransport, which keeps one for the next connect.
    if (ngx_ssl_client_session_cache(cf, ssl, 1) != NGX_OK) {
        return false;
    }

    if (!pool_string(cf->pool, name, tls.server_name)) {
        return false;
    }
    tls.name_is_address = is_ip_address(name.c_str());
    tls.verify = redis.ssl_verify;
    tls.ssl = ssl;
    return true;
}

#endif


// Redis Cluster has one database, and a '{' in the prefix would make it the hash tag of every
// key: all buckets of the fleet in one slot, on one master.
bool check_cluster(ngx_conf_t* cf, ngx_command_t* cmd, const ratelimit::RedisConfig& redis)
{
    if (redis.db != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"db=%d\" is not possible with mode=cluster (only db 0)",
                           &cmd->name, redis.db);
        return false;
    }
    if (redis.prefix.find('{') != std::string::npos) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"prefix=%s\" contains \"{\", which with mode=cluster "
                           "would put every bucket in one hash slot", &cmd->name,
                           redis.prefix.c_str());
        return false;
    }
    for (const ratelimit::RedisEndpoint& seed : redis.addresses) {
        if (seed.is_unix()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": seed \"unix:%s\": mode=cluster needs TCP addresses",
                               &cmd->name, seed.unix_path.c_str());
            return false;
        }
    }
    return true;
}


/*
 * ratelimit_redis address ... [mode=] [master=] [user=] [password=] [db=] [prefix=]
 *                 [connect_timeout=] [timeout=] [ssl] [ssl_verify=] ...;
 * Without it the module runs in local mode (buckets in this node's shared memory).
 * mode=sentinel: the addresses are sentinels, asked for master= at each (re)connection.
 * mode=cluster: the addresses are seeds, asked for the slot map (see cluster_client.h).
 */
char* set_redis(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
try {
    auto* mcf = static_cast<MainConf*>(conf);
    if (mcf->redis) {
        return const_cast<char*>("is duplicate");
    }
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    std::vector<std::string_view> args;
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        args.push_back(as_view(value[i]));
    }

    auto* redis = pool_new<ratelimit::RedisConfig>(cf->pool);
    if (redis == nullptr) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    std::string error;
    if (!ratelimit::parse_redis_args(args, *redis, error)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": %s", &cmd->name, error.c_str());
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (redis->mode == ratelimit::RedisMode::cluster && !check_cluster(cf, cmd, *redis)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (!redis->ssl && (!redis->ssl_trusted_certificate.empty()
                        || !redis->ssl_server_name.empty()))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": \"%s\" needs \"ssl\"", &cmd->name,
                           redis->ssl_server_name.empty() ? "ssl_trusted_certificate="
                                                          : "ssl_server_name=");
        return static_cast<char*>(NGX_CONF_ERROR);
    }
#if (NGX_SSL)
    if (redis->ssl && !create_redis_tls(cf, cmd, *redis, mcf->redis_tls)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
#else
    if (redis->ssl) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": \"ssl\" needs nginx built with OpenSSL", &cmd->name);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
#endif
    if (!resolve_redis_addresses(cf, cmd, mcf, *redis)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    mcf->redis = redis;
    return NGX_CONF_OK;
} catch (...) {
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": out of memory", &cmd->name);
    return static_cast<char*>(NGX_CONF_ERROR);
}


// ratelimit_policy name rate=Nr/s|m|h|d [burst=N] [delay=N] [lease=time];
// lease=: a time from 1ms to 10s (ratelimit/lease.h), the longest a node holds a lease.
char* set_policy(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
try {
    auto* mcf = static_cast<MainConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);

    if (!ratelimit::is_valid_policy_name(as_view(value[1]))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": invalid policy name \"%V\" (expected [A-Za-z0-9_-]+)",
                           &cmd->name, &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (find_policy(mcf, value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": duplicate policy \"%V\"",
                           &cmd->name, &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }

    std::optional<ratelimit::Rate> rate;
    std::optional<int64_t> burst;
    ngx_str_t adaptive = ngx_null_string;
    int64_t lease_ms = 0;
    int64_t delay = ratelimit::kNoDelay;
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        std::string_view arg = as_view(value[i]);
        if (arg.substr(0, 9) == "adaptive=") {
            adaptive = ngx_str_t{value[i].len - 9, value[i].data + 9};
            if (!ratelimit::is_valid_policy_name(as_view(adaptive))) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": invalid controller name \"%V\"", &cmd->name,
                                   &value[i]);
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            continue;
        }
        if (arg.substr(0, 5) == "rate=") {
            rate = ratelimit::parse_rate(arg.substr(5));
            if (!rate) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": invalid rate \"%V\" (expected Nr/s, Nr/m, Nr/h "
                                   "or Nr/d)", &cmd->name, &value[i]);
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            continue;
        }
        if (arg.substr(0, 6) == "burst=") {
            burst = ratelimit::parse_positive_int(arg.substr(6));
            if (!burst) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": invalid burst \"%V\" (expected a positive "
                                   "integer)", &cmd->name, &value[i]);
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            continue;
        }
        if (arg.substr(0, 6) == "lease=") {
            auto lease = ratelimit::parse_lease_ms(arg.substr(6));
            if (!lease) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": invalid lease \"%V\" (expected a time from 1ms to "
                                   "10s)", &cmd->name, &value[i]);
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            lease_ms = *lease;
            continue;
        }
        if (arg.substr(0, 6) == "delay=") {
            if (!parse_delay(cf, cmd->name, arg.substr(6), delay)) {
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            continue;
        }
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": invalid parameter \"%V\"",
                           &cmd->name, &value[i]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (!rate) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"rate\" parameter",
                           &cmd->name);
        return static_cast<char*>(NGX_CONF_ERROR);
    }

    ratelimit::BucketParams params{rate->count, rate->period_ms, burst ? *burst : rate->count};
    std::string problem = ratelimit::check_bucket(params);
    if (!problem.empty()) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" \"%V\": %s", &cmd->name, &value[1],
                           problem.c_str());
        return static_cast<char*>(NGX_CONF_ERROR);
    }

    if (!check_delay(cf, value[1], params, delay, cf->conf_file->file.name,
                     cf->conf_file->line))
    {
        return static_cast<char*>(NGX_CONF_ERROR);
    }

    auto* policy = static_cast<Policy*>(ngx_array_push(&mcf->policies));
    if (policy == nullptr) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    policy->name = value[1];
    policy->rate = *rate;
    policy->params = params;
    policy->lease_ms = lease_ms;
    policy->stats = nullptr;      // bound to the zone in init_module
    policy->overrides = nullptr;
    policy->adaptive_name = adaptive;  // resolved by init_main_conf
    policy->adaptive = nullptr;
    policy->delay = delay;
    return NGX_CONF_OK;
} catch (...) {
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": out of memory", &cmd->name);
    return static_cast<char*>(NGX_CONF_ERROR);
}


ngx_http_complex_value_t* compile_value(ngx_conf_t* cf, ngx_str_t* text)
{
    auto* cv = static_cast<ngx_http_complex_value_t*>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (cv == nullptr) {
        return nullptr;
    }
    ngx_http_compile_complex_value_t ccv{};
    ccv.cf = cf;
    ccv.value = text;
    ccv.complex_value = cv;
    return ngx_http_compile_complex_value(&ccv) == NGX_OK ? cv : nullptr;
}


// The file and line being read, for errors found at merge time. The name is copied: the
// ngx_conf_file_t that holds it lives on ngx_conf_parse()'s stack, one per included file.
bool copy_position(ngx_conf_t* cf, ngx_str_t* file, ngx_uint_t* line)
{
    file->len = cf->conf_file->file.name.len;
    file->data = static_cast<u_char*>(ngx_pnalloc(cf->pool, file->len));
    if (file->data == nullptr) {
        return false;
    }
    ngx_memcpy(file->data, cf->conf_file->file.name.data, file->len);
    *line = cf->conf_file->line;
    return true;
}


// ratelimit key policy=name|$variable [cost=number|$variable] [delay=number];
char* set_limit(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);

    if (lcf->limits == nullptr) {
        lcf->limits = ngx_array_create(cf->pool, 2, sizeof(Limit));
        if (lcf->limits == nullptr) {
            return static_cast<char*>(NGX_CONF_ERROR);
        }
    }
    auto* limit = static_cast<Limit*>(ngx_array_push(lcf->limits));
    if (limit == nullptr) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    ngx_memzero(limit, sizeof(Limit));
    limit->cost = 1;
    limit->delay = ratelimit::kNoDelay;
    if (!copy_position(cf, &limit->file, &limit->line)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }

    ngx_http_compile_complex_value_t ccv{};
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &limit->key;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }

    bool has_policy = false;
    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        ngx_str_t arg = value[i];
        if (ngx_strncmp(arg.data, "policy=", 7) == 0) {
            ngx_str_t name{arg.len - 7, arg.data + 7};
            if (name.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": empty policy in \"%V\"",
                                   &cmd->name, &arg);
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            if (name.data[0] == '$') {
                limit->policy_value = compile_value(cf, &name);
                if (limit->policy_value == nullptr) {
                    return static_cast<char*>(NGX_CONF_ERROR);
                }
            } else {
                limit->policy_name = name;
            }
            has_policy = true;
            continue;
        }
        if (ngx_strncmp(arg.data, "cost=", 5) == 0) {
            ngx_str_t cost{arg.len - 5, arg.data + 5};
            if (cost.len && cost.data[0] == '$') {
                limit->cost_value = compile_value(cf, &cost);
                if (limit->cost_value == nullptr) {
                    return static_cast<char*>(NGX_CONF_ERROR);
                }
                continue;
            }
            auto parsed = ratelimit::parse_non_negative_int(as_view(cost));
            if (!parsed || *parsed > 1000000000) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "\"%V\": invalid cost \"%V\" (expected an integer from 0 "
                                   "to 1000000000 or a variable)", &cmd->name, &arg);
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            limit->cost = *parsed;
            continue;
        }
        if (ngx_strncmp(arg.data, "delay=", 6) == 0) {
            if (!parse_delay(cf, cmd->name, as_view(arg).substr(6), limit->delay)) {
                return static_cast<char*>(NGX_CONF_ERROR);
            }
            continue;
        }
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": invalid parameter \"%V\"",
                           &cmd->name, &arg);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    if (!has_policy) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"policy\" parameter",
                           &cmd->name);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}


// ratelimit_default_policy name;  (checked against the policies at merge time)
char* set_default_policy(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (lcf->default_policy_name.data) {
        return const_cast<char*>("is duplicate");
    }
    if (!ratelimit::is_valid_policy_name(as_view(value[1]))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": invalid policy name \"%V\"",
                           &cmd->name, &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    lcf->default_policy_name = value[1];
    if (!copy_position(cf, &lcf->default_policy_file, &lcf->default_policy_line)) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    return NGX_CONF_OK;
}


// ratelimit_zone size;  (shared memory for local buckets and counters)
char* set_zone(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* mcf = static_cast<MainConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (mcf->zone_size != ssize_t(NGX_CONF_UNSET_SIZE)) {
        return const_cast<char*>("is duplicate");
    }
    ssize_t size = ngx_parse_size(&value[1]);
    if (size == NGX_ERROR || size < ssize_t(8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": invalid size \"%V\" (at least %uz bytes)", &cmd->name,
                           &value[1], 8 * ngx_pagesize);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    mcf->zone_size = size;
    return NGX_CONF_OK;
}


// ratelimit_failure_mode open | closed | local [nodes=N];
char* set_failure_mode(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (lcf->failure_mode != NGX_CONF_UNSET_UINT) {
        return const_cast<char*>("is duplicate");
    }
    std::string_view mode = as_view(value[1]);
    if (mode == "open") {
        lcf->failure_mode = failure_open;
    } else if (mode == "closed") {
        lcf->failure_mode = failure_closed;
    } else if (mode == "local") {
        lcf->failure_mode = failure_local;
    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": invalid mode \"%V\" (expected open, closed or local)",
                           &cmd->name, &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    lcf->failure_nodes = 1;
    if (cf->args->nelts == 3) {
        std::string_view arg = as_view(value[2]);
        std::optional<int64_t> nodes;
        if (arg.substr(0, 6) == "nodes=") {
            nodes = ratelimit::parse_positive_int(arg.substr(6));
        }
        if (lcf->failure_mode != failure_local || !nodes || *nodes > 10000) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": invalid parameter \"%V\" (only \"local nodes=N\", N "
                               "from 1 to 10000)", &cmd->name, &value[2]);
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        lcf->failure_nodes = *nodes;
    }
    return NGX_CONF_OK;
}


// Enumerations (ratelimit_headers, ratelimit_log_level): the message names the directive
// and lists what it takes, unlike the stock enum slot.
char* set_enum(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* field = reinterpret_cast<ngx_uint_t*>(static_cast<char*>(conf) + cmd->offset);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    auto* choices = static_cast<ngx_conf_enum_t*>(cmd->post);
    if (*field != NGX_CONF_UNSET_UINT) {
        return const_cast<char*>("is duplicate");
    }
    u_char expected[128];
    u_char* p = expected;
    for (ngx_conf_enum_t* e = choices; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strncasecmp(e->name.data, value[1].data, value[1].len) == 0)
        {
            *field = e->value;
            return NGX_CONF_OK;
        }
        p = ngx_slprintf(p, expected + sizeof(expected), "%s%V", p == expected ? "" : ", ",
                         &e->name);
    }
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\": invalid value \"%V\" (expected %*s)",
                       &cmd->name, &value[1], p - expected, expected);
    return static_cast<char*>(NGX_CONF_ERROR);
}


// ratelimit_status code;  (400-599)
char* set_status(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (lcf->status != NGX_CONF_UNSET_UINT) {
        return const_cast<char*>("is duplicate");
    }
    ngx_int_t status = ngx_atoi(value[1].data, value[1].len);
    if (status < 400 || status > 599) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\": invalid status \"%V\" (expected 400 to 599)", &cmd->name,
                           &value[1]);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    lcf->status = ngx_uint_t(status);
    return NGX_CONF_OK;
}


/*
 * ratelimit_api [write];  (location) the status, metrics, buckets and dashboard endpoints
 * under the location's prefix; `write` allows DELETE of a bucket (a refill).
 */
char* set_api(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept
{
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (lcf->api != api_off) {
        return const_cast<char*>("is duplicate");
    }
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
#if (NGX_PCRE)
    bool regex = clcf->regex != nullptr;
#else
    bool regex = false;
#endif
    if (regex || clcf->named || clcf->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" needs a prefix location, not \"%V\"", &cmd->name,
                           &clcf->name);
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    lcf->api = api_read;
    if (cf->args->nelts == 2) {
        if (ngx_strcmp(value[1].data, "write") != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "\"%V\": invalid parameter \"%V\" (expected \"write\")",
                               &cmd->name, &value[1]);
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        lcf->api = api_write;
    }
    clcf->handler = api_handler;
    return NGX_CONF_OK;
}


ngx_conf_enum_t headers_styles[] = {
    {ngx_string("off"), headers_off},
    {ngx_string("x-ratelimit"), headers_x},
    {ngx_string("ietf"), headers_ietf},
    {ngx_string("both"), headers_both},
    {ngx_null_string, 0},
};

ngx_conf_enum_t log_levels[] = {
    {ngx_string("info"), NGX_LOG_INFO},
    {ngx_string("notice"), NGX_LOG_NOTICE},
    {ngx_string("warn"), NGX_LOG_WARN},
    {ngx_string("error"), NGX_LOG_ERR},
    {ngx_null_string, 0},
};

ngx_command_t commands[] = {
    {ngx_string("ratelimit_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, set_redis,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_policy"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, set_policy,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_adaptive"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, set_adaptive,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_zone,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE23
         | NGX_CONF_TAKE4,
     set_limit, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_default_policy"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_default_policy, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_status"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_status, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_headers"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_enum, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, headers),
     headers_styles},

    {ngx_string("ratelimit_failure_mode"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE12,
     set_failure_mode, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    {ngx_string("ratelimit_dry_run"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, dry_run), nullptr},

    {ngx_string("ratelimit_log_level"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     set_enum, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, log_level),
     log_levels},

    {ngx_string("ratelimit_api"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
     set_api, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},

    ngx_null_command,
};


ngx_int_t postconfiguration(ngx_conf_t* cf) noexcept
{
    auto* cmcf = static_cast<ngx_http_core_main_conf_t*>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
    auto* h = static_cast<ngx_http_handler_pt*>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    *h = access_handler;
    if (install_adaptive_log_handler(cf) != NGX_OK) {
        return NGX_ERROR;
    }
    return install_header_filter();
}


ngx_int_t preconfiguration(ngx_conf_t* cf) noexcept
{
    return add_variables(cf);
}


ngx_http_module_t module_ctx = {
    preconfiguration,
    postconfiguration,
    create_main_conf,
    init_main_conf,
    nullptr,  // create server configuration
    nullptr,  // merge server configuration
    create_loc_conf,
    merge_loc_conf,
};


// Runs in the master at start and on each reload, once the zone exists: policies find their
// counters again by name, and the error log says which version is loaded.
ngx_int_t init_module(ngx_cycle_t* cycle) noexcept
{
    auto* mcf = static_cast<MainConf*>(
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_ratelimit_module));
    if (mcf == nullptr) {
        return NGX_OK;
    }
    if (!ngx_test_config) {
        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0, "ngx_http_ratelimit_module %s (%s mode)",
                      RATELIMIT_VERSION, mode_name(mcf));
    }
    bind_overrides(cycle, mcf);
    if (bind_counters(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }
    return bind_adaptive(cycle, mcf);
}


// Redis connections are made in workers only, after fork, and closed before exit.
ngx_int_t init_process(ngx_cycle_t* cycle) noexcept
{
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }
    auto* mcf = static_cast<MainConf*>(
        ngx_http_cycle_get_module_main_conf(cycle, ngx_http_ratelimit_module));
    if (mcf == nullptr) {
        return NGX_OK;
    }
    if (init_worker_adaptive(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }
    return mcf->redis ? init_worker_redis(cycle, mcf) : NGX_OK;
}


void exit_process(ngx_cycle_t*) noexcept
{
    exit_worker_redis();
}

}  // namespace


Policy* ngx_ratelimit::find_policy(MainConf* mcf, const ngx_str_t& name)
{
    auto* policies = static_cast<Policy*>(mcf->policies.elts);
    for (ngx_uint_t i = 0; i < mcf->policies.nelts; i++) {
        if (policies[i].name.len == name.len
            && ngx_strncmp(policies[i].name.data, name.data, name.len) == 0)
        {
            return &policies[i];
        }
    }
    return nullptr;
}


ngx_module_t ngx_http_ratelimit_module = {
    NGX_MODULE_V1,
    &module_ctx,
    commands,
    NGX_HTTP_MODULE,
    nullptr,       // init master
    init_module,
    init_process,
    nullptr,       // init thread
    nullptr,       // exit thread
    exit_process,
    nullptr,       // exit master
    NGX_MODULE_V1_PADDING,
};
