// The little of RESP the core writes and recognises itself: commands as arrays of bulk
// strings (what redisFormatCommandArgv produces) and the error replies it acts upon.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

struct redisReply;

namespace ratelimit {

// Appends "$<len>\r\n<arg>\r\n".
void append_bulk(std::string& out, std::string_view arg);

// "*<n>\r\n" followed by each argument as a bulk string.
std::string format_command(std::initializer_list<std::string_view> args);

// True for a "NOSCRIPT ..." error reply.
bool is_noscript(const redisReply* reply);

// True for Redis Cluster's "MOVED ...", "ASK ...", "TRYAGAIN ...", "CROSSSLOT ..." and a
// script's "... non local key ..." replies: a key is elsewhere for now, which says nothing
// about the health of the node that answered.
bool is_redirect(const redisReply* reply);

}  // namespace ratelimit
