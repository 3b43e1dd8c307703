// The core's EventLoop on nginx: a Redis stream over an nginx connection
// (ngx_event_connect_peer, c->recv/c->send) and timers as nginx events.
#pragma once

#include <memory>

#include "ngx_ratelimit_endpoint.h"
#include "ngx_ratelimit_nginx.h"
#include "ratelimit/transport.h"

namespace ngx_ratelimit {

// Starts a non-blocking connection to `addr` whose events go to `on_read`/`on_write` with
// `data` as c->data, logging to `log`. Returns ngx_event_connect_peer's rc: NGX_OK (connected
// at once) or NGX_AGAIN with *out set; on a failure nothing is left open.
ngx_int_t open_connection(const ngx_addr_t& addr, ngx_log_t* log, void* data,
                          ngx_event_handler_pt on_read, ngx_event_handler_pt on_write,
                          ngx_connection_t** out) noexcept;

#if (NGX_SSL)
using TlsContext = ngx_ssl_t;
using TlsSession = ngx_ssl_session_t;
#else
struct TlsContext;  // nginx without OpenSSL: `ssl` is refused at configuration
struct TlsSession;
#endif

// TLS to Redis (`ssl`): the context made at configuration time and what to check. The
// transport runs the handshake after the TCP connect; the core never sees TLS.
struct RedisTls {
    TlsContext* ssl;         // nullptr: plain TCP
    ngx_str_t server_name;   // NUL-terminated; SNI (unless an address) and name verification
    bool name_is_address;    // an IP address: checked against the certificate's IP entries
    bool verify;
};

// One TLS client connection's server, for the helpers below: the Redis transport's and the
// sentinel link's. `name` (NUL-terminated, or nullptr for tls->server_name) is sent as SNI and
// checked against the certificate; `what` and `peer` name the server in logs ("Redis",
// "127.0.0.1:6380").
struct TlsServer {
    const RedisTls* tls;
    const char* name;
    const char* what;
    const char* peer;
};

#if (NGX_SSL)
// Starts TLS on the connected `c` (c->data its owner): SNI, the name to verify, `session` (if
// any) offered for resumption, `on_session` told of each new session. NGX_AGAIN: `on_done` is
// called when the handshake ends; NGX_OK: it has ended (both: tls_established tells how);
// NGX_ERROR: logged.
ngx_int_t tls_start(ngx_connection_t* c, const TlsServer& server, TlsSession* session,
                    ngx_connection_handler_pt on_done, ngx_connection_handler_pt on_session,
                    ngx_log_t* log) noexcept;
// After tls_start: nullptr if the handshake succeeded and, with ssl_verify=on, the
// certificate is trusted and carries the name. Otherwise logs why, frees *session (never
// resume what was not verified) and returns a short reason.
const char* tls_established(ngx_connection_t* c, const TlsServer& server,
                            TlsSession** session, ngx_log_t* log) noexcept;
// The session of `c` replaces *slot (from an on_session callback).
void tls_keep_session(ngx_connection_t* c, TlsSession** slot) noexcept;
void tls_free_session(TlsSession** slot) noexcept;
#endif

// Closes a connection made by open_connection (sending TLS's close_notify, if any).
void close_connection(ngx_connection_t* c) noexcept;

class NgxEventLoop final : public ratelimit::EventLoop {
public:
    // `endpoint` (where each connection goes) and `tls` (in the cycle's conf) must outlive
    // the loop.
    NgxEventLoop(Endpoint& endpoint, ngx_log_t* log, const RedisTls* tls = nullptr)
        : endpoint_(endpoint), log_(log), tls_(tls) {}
    ~NgxEventLoop() override;

    std::unique_ptr<ratelimit::Transport> make_transport() override;
    std::unique_ptr<ratelimit::Timer> make_timer(std::function<void()> on_fire,
                                                 TimerKind kind) override;
    int64_t now_ms() noexcept override { return int64_t(ngx_current_msec); }

private:
    Endpoint& endpoint_;
    ngx_log_t* log_;
    const RedisTls* tls_;
    TlsSession* tls_session_ = nullptr;  // the last TLS session, resumed on reconnect
};

// An nginx timer event as the core's Timer; `cancelable`: it never keeps an exiting worker.
std::unique_ptr<ratelimit::Timer> make_ngx_timer(std::function<void()> on_fire, bool cancelable,
                                                 ngx_log_t* log);

}  // namespace ngx_ratelimit
