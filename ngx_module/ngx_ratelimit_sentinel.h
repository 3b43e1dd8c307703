// mode=sentinel: where the master is, as Redis's guidelines for Sentinel clients say (ask the
// sentinels in turn, check with ROLE what they name), and +switch-master to learn of a failover.
#pragma once

#include <memory>

#include "ngx_ratelimit_endpoint.h"

namespace ngx_ratelimit {

std::unique_ptr<Endpoint> make_sentinel_endpoint(const EndpointConfig& config, ngx_log_t* log);

}  // namespace ngx_ratelimit
