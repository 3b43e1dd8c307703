// What a decision shows: the X-RateLimit-* / RateLimit headers and Retry-After on every
// response of a limited request (error pages and proxied responses included), and the
// $ratelimit_* variables.

#include <string>

#include "ngx_ratelimit_request.h"
#include "ratelimit/headers.h"

namespace ngx_ratelimit {
namespace {

ngx_http_output_header_filter_pt next_header_filter;


ngx_int_t push_header(ngx_http_request_t* r, const char* name, ngx_str_t value)
{
    ngx_table_elt_t* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.len = ngx_strlen(name);
    h->key.data = (u_char*) name;
    h->value = value;
    h->lowcase_key = nullptr;
#if (nginx_version >= 1023000)
    h->next = nullptr;
#endif
    return NGX_OK;
}


ngx_int_t push_number(ngx_http_request_t* r, const char* name, int64_t value)
{
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    ngx_str_t s{size_t(ngx_sprintf(p, "%L", value) - p), p};
    return push_header(r, name, s);
}


ngx_int_t push_text(ngx_http_request_t* r, const char* name, const std::string& value)
{
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, value.size()));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(p, value.data(), value.size());
    return push_header(r, name, ngx_str_t{value.size(), p});
}


ngx_int_t add_headers(ngx_http_request_t* r, RequestCtx* ctx, ngx_uint_t style)
{
    if ((style & headers_x)
        && (push_number(r, "X-RateLimit-Limit", ctx->limit) != NGX_OK
            || push_number(r, "X-RateLimit-Remaining", ctx->remaining) != NGX_OK
            || push_number(r, "X-RateLimit-Reset", ctx->reset) != NGX_OK))
    {
        return NGX_ERROR;
    }
    if (style & headers_ietf) {
        ratelimit::LimitReport report;
        report.policy = as_view(ctx->policy);
        report.limit = ctx->limit;
        report.remaining = ctx->remaining;
        report.reset_seconds = ctx->reset;
        report.window_seconds = ctx->window;
        if (push_text(r, "RateLimit-Policy", ratelimit::ietf_policy_value(report)) != NGX_OK
            || push_text(r, "RateLimit", ratelimit::ietf_limit_value(report)) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }
    if (ctx->rejected && ctx->retry_after > 0) {
        return push_number(r, "Retry-After", ctx->retry_after);
    }
    return NGX_OK;
}


ngx_int_t header_filter(ngx_http_request_t* r) noexcept
{
    try {
        if (r == r->main) {
            RequestCtx* ctx = find_ctx(r);
            auto* lcf = static_cast<LocConf*>(
                ngx_http_get_module_loc_conf(r, ngx_http_ratelimit_module));
            if (ctx && ctx->has_report && lcf->headers != headers_off
                && add_headers(r, ctx, lcf->headers) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    } catch (...) {
        return NGX_ERROR;
    }
    return next_header_filter(r);
}


enum class Var : uintptr_t { status, limit, remaining, reset, policy, delay };


ngx_int_t get_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                       uintptr_t data) noexcept
{
    RequestCtx* ctx = find_ctx(r->main);
    v->not_found = 1;
    if (ctx == nullptr || ctx->status == Status::none) {
        return NGX_OK;
    }
    auto set = [v](u_char* p, size_t len) {
        v->data = p;
        v->len = unsigned(len);
        v->valid = 1;
        v->no_cacheable = 1;
        v->not_found = 0;
    };
    Var which = Var(data);
    if (which == Var::status) {
        const ngx_str_t& name = status_name(ctx->status);
        set(name.data, name.len);
        return NGX_OK;
    }
    if (!ctx->has_report && which != Var::delay) {
        return NGX_OK;
    }
    if (which == Var::policy) {
        set(ctx->policy.data, ctx->policy.len);
        return NGX_OK;
    }
    int64_t number = which == Var::limit       ? ctx->limit
                     : which == Var::remaining ? ctx->remaining
                     : which == Var::reset     ? ctx->reset
                                               : ctx->wait_ms;
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    set(p, size_t(ngx_sprintf(p, "%L", number) - p));
    return NGX_OK;
}


ngx_http_variable_t variables[] = {
    {ngx_string("ratelimit_status"), nullptr, get_variable, uintptr_t(Var::status),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_limit"), nullptr, get_variable, uintptr_t(Var::limit),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_remaining"), nullptr, get_variable, uintptr_t(Var::remaining),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_reset"), nullptr, get_variable, uintptr_t(Var::reset),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_policy"), nullptr, get_variable, uintptr_t(Var::policy),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("ratelimit_delay"), nullptr, get_variable, uintptr_t(Var::delay),
     NGX_HTTP_VAR_NOCACHEABLE, 0},
};

}  // namespace


ngx_int_t install_header_filter() noexcept
{
    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    return NGX_OK;
}


ngx_int_t add_variables(ngx_conf_t* cf) noexcept
{
    for (ngx_http_variable_t& v : variables) {
        ngx_http_variable_t* var = ngx_http_add_variable(cf, &v.name, v.flags);
        if (var == nullptr) {
            return NGX_ERROR;
        }
        var->get_handler = v.get_handler;
        var->data = v.data;
    }
    return NGX_OK;
}

}  // namespace ngx_ratelimit
