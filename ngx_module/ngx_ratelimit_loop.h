// The core's EventLoop on nginx: a Redis stream over an nginx connection
// (ngx_event_connect_peer, c->recv/c->send) and timers as nginx events.
#pragma once

#include <memory>

#include "ngx_ratelimit_nginx.h"
#include "ratelimit/transport.h"

namespace ngx_ratelimit {

class NgxEventLoop final : public ratelimit::EventLoop {
public:
    // `peer` (address and name) must outlive the loop: it lives in the cycle's conf.
    NgxEventLoop(const ngx_addr_t& peer, ngx_log_t* log) : peer_(peer), log_(log) {}

    std::unique_ptr<ratelimit::Transport> make_transport() override;
    std::unique_ptr<ratelimit::Timer> make_timer(std::function<void()> on_fire,
                                                 TimerKind kind) override;
    int64_t now_ms() noexcept override { return int64_t(ngx_current_msec); }

private:
    const ngx_addr_t& peer_;
    ngx_log_t* log_;
};

}  // namespace ngx_ratelimit
