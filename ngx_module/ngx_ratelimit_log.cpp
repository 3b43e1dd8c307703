#include "ngx_ratelimit_log.h"

#include <cstdarg>

namespace ngx_ratelimit {
namespace {

constexpr ngx_msec_t kLogInterval = 1000;

// Per process: every worker has its own copy after fork.
struct Throttle {
    bool written;         // a line of this reason was written once
    ngx_msec_t last;      // when
    ngx_uint_t held;      // occurrences not written since
};

Throttle throttles[unsigned(LogReason::count_)];

}  // namespace


void log_throttled(ngx_uint_t level, ngx_log_t* log, LogReason reason, const char* fmt, ...)
    noexcept
{
    if (log->log_level < level) {
        return;  // would not be written anyway
    }
    Throttle& t = throttles[unsigned(reason)];
    ngx_msec_t now = ngx_current_msec;
    if (t.written && ngx_msec_int_t(now - t.last) < ngx_msec_int_t(kLogInterval)) {
        t.held++;
        return;
    }

    u_char line[NGX_MAX_ERROR_STR];
    va_list args;
    va_start(args, fmt);
    u_char* p = ngx_vslprintf(line, line + sizeof(line), fmt, args);
    va_end(args);
    if (t.held) {
        ngx_msec_t since = now - t.last;
        p = ngx_slprintf(p, line + sizeof(line), " (and %ui more in the last %Ms)", t.held,
                         (since + 999) / 1000);
    }
    ngx_log_error(level, log, 0, "%*s", size_t(p - line), line);
    t.written = true;
    t.last = now;
    t.held = 0;
}

}  // namespace ngx_ratelimit
