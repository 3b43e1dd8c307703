// What the parts of ratelimit_api share: responses, and the runtime limits' endpoints
// (ngx_ratelimit_overrides_api.cpp) the router of ngx_ratelimit_api.cpp hands over to.
#pragma once

#include <string>
#include <string_view>

#include "ngx_ratelimit.h"
#include "ratelimit/api_text.h"

namespace ngx_ratelimit {

// A JSON response, and a JSON {"error": message}; `allow` fills the Allow header.
ngx_int_t api_send_json(ngx_http_request_t* r, ngx_uint_t status, std::string_view body);
ngx_int_t api_send_error(ngx_http_request_t* r, ngx_uint_t status, std::string_view message,
                         std::string_view allow = {});

// limits/<policy>/<key>, limits/<policy>/ and policies/<policy>, every method. A PUT's body
// has been read (r->request_body).
ngx_int_t serve_runtime_limits(ngx_http_request_t* r, MainConf* mcf, LocConf* lcf,
                               const ratelimit::ApiRoute& route);

// A policy's runtime state in status (fields appended to its object) and in metrics.
void append_runtime_limits_status(std::string& out, const Policy& policy);
void append_runtime_limits_metrics(std::string& out, MainConf* mcf);

// The bucket a key of a policy is decided with now (runtime limits applied).
ratelimit::BucketParams bucket_in_force(MainConf* mcf, Policy* policy, const ngx_str_t& key);

}  // namespace ngx_ratelimit
