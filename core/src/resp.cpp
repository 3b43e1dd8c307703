#include "ratelimit/resp.h"

#include <hiredis/hiredis.h>

namespace ratelimit {

void append_bulk(std::string& out, std::string_view arg)
{
    out += '$';
    out += std::to_string(arg.size());
    out += "\r\n";
    out.append(arg);
    out += "\r\n";
}

std::string format_command(std::initializer_list<std::string_view> args)
{
    std::string out = "*" + std::to_string(args.size()) + "\r\n";
    for (std::string_view arg : args) {
        append_bulk(out, arg);
    }
    return out;
}

bool is_noscript(const redisReply* reply)
{
    static constexpr std::string_view prefix = "NOSCRIPT";
    return reply && reply->type == REDIS_REPLY_ERROR && reply->str
           && reply->len >= prefix.size() && std::string_view(reply->str, prefix.size()) == prefix;
}

bool is_redirect(const redisReply* reply)
{
    if (!reply || reply->type != REDIS_REPLY_ERROR || !reply->str) {
        return false;
    }
    std::string_view text(reply->str, reply->len);
    return text.substr(0, 6) == "MOVED " || text.substr(0, 4) == "ASK "
           || text.substr(0, 8) == "TRYAGAIN" || text.substr(0, 9) == "CROSSSLOT"
           || text.find("non local key") != std::string_view::npos;
}

}  // namespace ratelimit
