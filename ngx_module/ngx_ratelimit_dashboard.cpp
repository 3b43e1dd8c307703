// The dashboard served at GET <prefix>: one self-contained page (inline CSS and JavaScript,
// no external assets) that polls `status` every second, kept in ngx_module/dashboard/index.html
// and embedded at build time. Every key and name it shows goes through textContent, never
// markup. "@NONCE@" is replaced per response by the nonce that the Content-Security-Policy
// allows.

#include <string_view>

#include "ratelimit/embed.h"

RATELIMIT_EMBED(ngx_ratelimit_dashboard_html, "ngx_module/dashboard/index.html")

namespace ngx_ratelimit {

std::string_view dashboard_page()
{
    return ngx_ratelimit_dashboard_html();
}

}  // namespace ngx_ratelimit
