#include "ratelimit/lease.h"

#include <hiredis/hiredis.h>

#include <algorithm>

#include "ratelimit/bucket_view.h"
#include "ratelimit/embed.h"
#include "ratelimit/redis_config.h"
#include "ratelimit/resp.h"

namespace ratelimit {
namespace {

RATELIMIT_EMBED(lease_lua, "core/lua/lease.lua")

int64_t window_ms(int64_t lease_ms)
{
    return lease_ms * kLeaseWindows;
}

// Requests in the last whole window, 0 once that window is more than one window ago.
int64_t last_window_count(const LeaseRate& rate, int64_t now_ms, int64_t lease_ms)
{
    return now_ms - rate.window_start_ms < 2 * window_ms(lease_ms) ? rate.last_count : 0;
}

std::optional<int64_t> field(std::string_view& text)
{
    size_t space = text.find(' ');
    std::string_view f = text.substr(0, space);
    text = space == std::string_view::npos ? std::string_view() : text.substr(space + 1);
    if (f == "0") {
        return 0;
    }
    return parse_positive_int(f);
}

}  // namespace

std::optional<int64_t> parse_lease_ms(std::string_view text)
{
    auto ms = parse_duration_ms(text);
    if (!ms || *ms < kMinLeaseMs || *ms > kMaxLeaseMs) {
        return std::nullopt;
    }
    return ms;
}

void note_request(LeaseRate& rate, int64_t now_ms, int64_t lease_ms)
{
    int64_t since = now_ms - rate.window_start_ms;
    if (since >= window_ms(lease_ms) || since < 0) {
        rate.last_count = since < 2 * window_ms(lease_ms) && since >= 0 ? rate.count : 0;
        rate.window_start_ms = now_ms;
        rate.count = 0;
    }
    rate.count++;
}

bool is_hot(const LeaseRate& rate, int64_t now_ms, int64_t lease_ms)
{
    return last_window_count(rate, now_ms, lease_ms) > kHotPerLease * kLeaseWindows;
}

int64_t lease_want(const BucketParams& params, const LeaseRate& rate, int64_t now_ms,
                   int64_t lease_ms, int64_t cost)
{
    if (!is_hot(rate, now_ms, lease_ms) || cost <= 0) {
        return 0;
    }
    int64_t per_lease = (last_window_count(rate, now_ms, lease_ms) + kLeaseWindows - 1)
                        / kLeaseWindows;
    int64_t want = std::min(per_lease * cost, params.burst / kBurstShare);
    return want >= kMinGrant ? want : 0;
}

int64_t lease_grant(const BucketParams& params, int64_t level_units, int64_t want)
{
    int64_t granted = std::min(want, level_units / params.period_ms / kLevelShare);
    return granted >= kMinGrant ? granted : 0;
}

int64_t lease_hold_bound(const BucketParams& params, int64_t nodes)
{
    return nodes * (params.burst / kBurstShare);
}

const std::string& lease_script()
{
    static const std::string source = std::string(bucket_read_script()).append(lease_lua());
    return source;
}

std::string format_lease_call(std::string_view key, const BucketParams& params,
                              int64_t returned, int64_t want)
{
    return format_command({"EVAL", lease_script(), "1", key, std::to_string(params.count),
                           std::to_string(params.period_ms), std::to_string(params.burst),
                           std::to_string(returned), std::to_string(want)});
}

std::optional<LeaseReply> parse_lease_reply(std::string_view text)
{
    auto granted = field(text);
    auto level = field(text);
    auto now = field(text);
    if (!granted || !level || !now || !text.empty()) {
        return std::nullopt;
    }
    return LeaseReply{*granted, *level, *now};
}

std::optional<LeaseReply> read_lease_reply(const redisReply* reply)
{
    if (reply == nullptr || reply->type != REDIS_REPLY_STRING) {
        return std::nullopt;
    }
    return parse_lease_reply(std::string_view(reply->str, reply->len));
}

}  // namespace ratelimit
