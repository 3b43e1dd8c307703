#include "ratelimit/bucket_view.h"

#include <hiredis/hiredis.h>

#include "ratelimit/embed.h"
#include "ratelimit/resp.h"
#include "ratelimit/token_bucket.h"

namespace ratelimit {
namespace {

constexpr int64_t kMaxExactLevel = int64_t(1) << 53;  // Lua's doubles are exact below
constexpr int64_t kMaxPeriodMs = 86400000;              // one day, the longest rate period

// core/lua/view.lua: mirrors view_stored() below (a key of another type reads as missing, as
// in the decision script; a value no bucket can hold is an error); values stay below 2^53 as
// in the decision script, except tokens * period on a conversion, which is compared with the
// capacity first.
RATELIMIT_EMBED(bucket_read_lua, "core/lua/bucket_read.lua")
RATELIMIT_EMBED(view_lua, "core/lua/view.lua")

std::optional<int64_t> number(std::string_view text)
{
    if (text.empty()) {
        return std::nullopt;
    }
    return text == "0" ? std::optional<int64_t>(0) : parse_positive_int(text);
}

// Splits `text` at its first space.
std::string_view take_field(std::string_view& text)
{
    size_t space = text.find(' ');
    std::string_view field = text.substr(0, space);
    text = space == std::string_view::npos ? std::string_view() : text.substr(space + 1);
    return field;
}

bool read_integer(const redisReply* reply, int64_t& out)
{
    if (!reply || reply->type != REDIS_REPLY_INTEGER) {
        return false;
    }
    out = reply->integer;
    return true;
}

}  // namespace

std::optional<StoredBucket> parse_stored_bucket(std::string_view text)
{
    if (!text.empty() && text[0] == 'v') {
        bool more = text.find(' ') != std::string_view::npos;
        auto version = number(take_field(text).substr(1));
        if (!more || !version || *version < 2) {
            return std::nullopt;
        }
        auto level = number(take_field(text));
        auto period = number(take_field(text));
        bool has_tail = text.find(' ') != std::string_view::npos;
        auto stamp = number(has_tail ? take_field(text) : text);
        if (!level || !period || !stamp || *period == 0) {
            return std::nullopt;
        }
        return StoredBucket{*level, *period, *stamp};
    }
    size_t space = text.find(' ');
    if (space == std::string_view::npos) {
        return std::nullopt;
    }
    auto level = number(text.substr(0, space));
    auto stamp = number(text.substr(space + 1));
    if (!level || !stamp) {
        return std::nullopt;
    }
    return StoredBucket{*level, 0, *stamp};
}

std::optional<BucketView> view_stored(std::optional<std::string_view> stored,
                                      const BucketParams& params, int64_t now_ms)
{
    BucketView view;
    view.now_ms = now_ms;
    view.level_units = params.capacity_units();
    if (!stored) {
        return view;
    }
    // A value no bucket can hold is unreadable, as in both scripts: never a full bucket.
    std::optional<StoredBucket> bucket = parse_stored_bucket(*stored);
    if (!bucket || bucket->level_units >= kMaxExactLevel || bucket->period_ms > kMaxPeriodMs
        || bucket->stamp_ms >= kMaxExactLevel) {
        return std::nullopt;
    }
    view.exists = true;
    BucketState state{bucket->level_units, bucket->stamp_ms, bucket->period_ms};
    view.level_units = refill(params, state, now_ms);
    return view;
}

std::string_view bucket_read_script()
{
    return bucket_read_lua();
}

const std::string& bucket_view_script()
{
    static const std::string source = std::string(bucket_read_lua()).append(view_lua());
    return source;
}

std::string format_bucket_view(std::string_view key, const BucketParams& params)
{
    return format_command({"EVAL", bucket_view_script(), "1", key,
                           std::to_string(params.count), std::to_string(params.period_ms),
                           std::to_string(params.burst)});
}

bool parse_bucket_view_reply(const redisReply* reply, BucketView& view, std::string& error)
{
    if (!reply) {
        error = "no reply";
        return false;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        error.assign(reply->str, reply->len);
        return false;
    }
    int64_t exists = 0;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3
        || !read_integer(reply->element[0], exists) || (exists != 0 && exists != 1)
        || !read_integer(reply->element[1], view.level_units)
        || !read_integer(reply->element[2], view.now_ms))
    {
        error = "unexpected reply to the bucket view script";
        return false;
    }
    view.exists = exists == 1;
    return true;
}

int64_t view_reset_seconds(const BucketParams& params, const BucketView& view)
{
    int64_t missing = params.capacity_units() - view.level_units;
    if (missing <= 0) {
        return 0;
    }
    return ceil_seconds(missing / params.count + (missing % params.count != 0 ? 1 : 0));
}

}  // namespace ratelimit
