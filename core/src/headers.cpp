#include "ratelimit/headers.h"

namespace ratelimit {
namespace {

std::string quoted_policy(const LimitReport& report)
{
    std::string out;
    out += '"';
    out.append(report.policy);
    out += '"';
    return out;
}

}  // namespace

LimitReport make_report(std::string_view policy, const BucketParams& params,
                        const LimitOutcome& outcome)
{
    LimitReport report;
    report.policy = policy;
    report.limit = params.burst;
    report.remaining = remaining_tokens(params, outcome);
    report.reset_seconds = ceil_seconds(outcome.reset_ms);
    report.retry_after_seconds =
        outcome.retry_after_ms > 0 ? retry_after_seconds(outcome.retry_after_ms) : 0;
    report.window_seconds = window_seconds(params);
    return report;
}

size_t most_restrictive(const LimitReport* reports, size_t n)
{
    size_t best = 0;
    for (size_t i = 1; i < n; i++) {
        const LimitReport& r = reports[i];
        const LimitReport& b = reports[best];
        if (r.remaining < b.remaining
            || (r.remaining == b.remaining && r.reset_seconds > b.reset_seconds)) {
            best = i;
        }
    }
    return best;
}

std::string ietf_policy_value(const LimitReport& report)
{
    return quoted_policy(report) + ";q=" + std::to_string(report.limit)
           + ";w=" + std::to_string(report.window_seconds);
}

std::string ietf_limit_value(const LimitReport& report)
{
    return quoted_policy(report) + ";r=" + std::to_string(report.remaining)
           + ";t=" + std::to_string(report.reset_seconds);
}

}  // namespace ratelimit
