// Bounded logs: warnings that clients or load can cause (junk costs, too many waiting calls,
// Redis errors) are written at most about once per second per worker and reason; the
// occurrences held back in between are counted in the next line written.
#pragma once

#include "ngx_ratelimit_nginx.h"

namespace ngx_ratelimit {

enum class LogReason : unsigned {
    junk_cost,
    call_not_sent,
    call_failed,
    redis_error,
    zone_full,
    count_,  // the number of reasons
};

// As ngx_log_error (nginx's formats), throttled per `reason` in this worker; a written line
// ends with "(and N more in the last Ss)" when N occurrences were held back before it.
void log_throttled(ngx_uint_t level, ngx_log_t* log, LogReason reason, const char* fmt, ...)
    noexcept;

}  // namespace ngx_ratelimit
