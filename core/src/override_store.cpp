#include "ratelimit/override_store.h"

#include <hiredis/hiredis.h>

#include "ratelimit/cluster_map.h"
#include "ratelimit/embed.h"
#include "ratelimit/policy.h"
#include "ratelimit/resp.h"

namespace ratelimit {
namespace {

RATELIMIT_EMBED(write_lua, "core/lua/overrides_write.lua")
RATELIMIT_EMBED(read_lua, "core/lua/overrides_read.lua")

// "<prefix>{overrides}:<name>", or "<prefix>overrides:<name>" when the prefix has a hash tag
// (which then puts all three in its slot).
std::string store_key(std::string_view prefix, std::string_view name)
{
    std::string key(prefix);
    bool tagged = hash_tag(prefix).size() != prefix.size();
    key += tagged ? "overrides:" : "{overrides}:";
    key.append(name);
    return key;
}

std::string format_eval(std::string_view script, std::string_view prefix,
                        std::string_view arg1, std::string_view arg2)
{
    std::string version = store_key(prefix, "version");
    std::string data = store_key(prefix, "data");
    std::string changes = store_key(prefix, "changes");
    return format_command({"EVAL", script, "3", version, data, changes, arg1, arg2});
}

bool read_int(const redisReply* reply, int64_t& out)
{
    if (reply->type == REDIS_REPLY_INTEGER) {
        out = reply->integer;
        return true;
    }
    if (reply->type != REDIS_REPLY_STRING) {
        return false;
    }
    auto value = parse_non_negative_int(std::string_view(reply->str, reply->len));
    out = value ? *value : 0;
    return value.has_value();
}

bool is_text(const redisReply* reply)
{
    return reply->type == REDIS_REPLY_STRING;
}

}  // namespace


std::string override_field(std::string_view policy)
{
    return std::string(policy);
}


std::string override_field(std::string_view policy, std::string_view key)
{
    std::string field(policy);
    field += ':';
    field.append(key);
    return field;
}


std::string override_version_key(std::string_view prefix)
{
    return store_key(prefix, "version");
}


std::string format_override_write(std::string_view prefix, std::string_view field,
                                  std::string_view value)
{
    return format_eval(write_lua(), prefix, field, value);
}


bool parse_override_write_reply(const redisReply* reply, OverrideWriteReply& out,
                                std::string& error)
{
    if (reply->type == REDIS_REPLY_ERROR) {
        error.assign(reply->str, reply->len);
        return false;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1
        || !read_int(reply->element[0], out.version))
    {
        error = "unexpected reply to the overrides script";
        return false;
    }
    out.old_value.reset();
    if (reply->elements > 1 && is_text(reply->element[1])) {
        out.old_value.emplace(reply->element[1]->str, reply->element[1]->len);
    }
    return true;
}


std::string format_override_read(std::string_view prefix, int64_t since, size_t page)
{
    return format_eval(read_lua(), prefix, std::to_string(since), std::to_string(page));
}


bool parse_override_read_reply(const redisReply* reply, int64_t since, size_t page,
                               OverridePage& out, std::string& error)
{
    out = OverridePage{};
    if (reply->type == REDIS_REPLY_ERROR) {
        error.assign(reply->str, reply->len);
        return false;
    }
    int64_t version = 0;
    int64_t reset = 0;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 || (reply->elements - 2) % 3
        || !read_int(reply->element[0], version) || !read_int(reply->element[1], reset))
    {
        error = "unexpected reply to the overrides script";
        return false;
    }
    out.reset = reset != 0;
    out.reached = out.reset ? 0 : since;
    for (size_t i = 2; i < reply->elements; i += 3) {
        const redisReply* field = reply->element[i];
        const redisReply* value = reply->element[i + 2];
        int64_t score = 0;
        if (!is_text(field) || !is_text(value) || !read_int(reply->element[i + 1], score)
            || score <= out.reached || score > version)
        {
            error = "unexpected reply to the overrides script";
            return false;
        }
        out.reached = score;
        out.changes.push_back({std::string(field->str, field->len),
                               std::string(value->str, value->len)});
    }
    out.more = out.changes.size() >= page;
    if (!out.more) {
        out.reached = version;
    }
    return true;
}

}  // namespace ratelimit
