// nginx's C headers, included once for the C++ glue, and the small helpers around them.
#pragma once

#include <string_view>

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_http.h>
}

namespace ngx_ratelimit {

inline std::string_view as_view(const ngx_str_t& s)
{
    return std::string_view(reinterpret_cast<const char*>(s.data), s.len);
}

}  // namespace ngx_ratelimit
