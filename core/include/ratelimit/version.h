// The module's version: reported by the status API and written to the error log at start.
#pragma once

#define RATELIMIT_VERSION "0.4.0"

namespace ratelimit {

constexpr const char kVersion[] = RATELIMIT_VERSION;

}  // namespace ratelimit
