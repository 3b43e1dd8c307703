// The core's EventLoop on nginx: a Redis stream over an nginx connection
// (ngx_event_connect_peer, c->recv/c->send) and timers as nginx events.
#pragma once

#include <memory>

#include "ngx_ratelimit_endpoint.h"
#include "ngx_ratelimit_nginx.h"
#include "ratelimit/transport.h"

namespace ngx_ratelimit {

class NgxEventLoop final : public ratelimit::EventLoop {
public:
    // `endpoint` (where each connection goes) must outlive the loop.
    NgxEventLoop(Endpoint& endpoint, ngx_log_t* log) : endpoint_(endpoint), log_(log) {}

    std::unique_ptr<ratelimit::Transport> make_transport() override;
    std::unique_ptr<ratelimit::Timer> make_timer(std::function<void()> on_fire,
                                                 TimerKind kind) override;
    int64_t now_ms() noexcept override { return int64_t(ngx_current_msec); }

private:
    Endpoint& endpoint_;
    ngx_log_t* log_;
};

// An nginx timer event as the core's Timer; `cancelable`: it never keeps an exiting worker.
std::unique_ptr<ratelimit::Timer> make_ngx_timer(std::function<void()> on_fire, bool cancelable,
                                                 ngx_log_t* log);

}  // namespace ngx_ratelimit
