// Runtime limits in Redis: one hash of the overrides in force, a version counter raised by
// every change, and a sorted set of the fields by the version that last changed them, so a
// node catches up with what changed since its version (core/lua/overrides_*.lua). The three
// keys share a hash slot ("{overrides}" unless the prefix has a tag of its own).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct redisReply;

namespace ratelimit {

// The field of a policy change ("<policy>") or of a key override ("<policy>:<key id>", the
// key as its bucket is named: long keys by their digest). Policy names hold no ':'.
std::string override_field(std::string_view policy);
std::string override_field(std::string_view policy, std::string_view key);

// The key the calls are routed by (its slot is the others').
std::string override_version_key(std::string_view prefix);

// Sets `field` to `value`, or removes it when `value` is empty.
std::string format_override_write(std::string_view prefix, std::string_view field,
                                  std::string_view value);

struct OverrideWriteReply {
    int64_t version = 0;
    std::optional<std::string> old_value;  // nullopt: there was none
};
bool parse_override_write_reply(const redisReply* reply, OverrideWriteReply& out,
                                std::string& error);

// What changed since `since`, at most `page` fields.
std::string format_override_read(std::string_view prefix, int64_t since, size_t page);

struct OverrideChange {
    std::string field;
    std::string value;  // empty: removed
};

struct OverridePage {
    int64_t reached = 0;  // the version the node is at once it applied `changes`
    bool reset = false;   // Redis is behind the node (its data was lost): drop everything first
    bool more = false;    // a full page: read again from `reached`
    std::vector<OverrideChange> changes;
};
bool parse_override_read_reply(const redisReply* reply, int64_t since, size_t page,
                               OverridePage& out, std::string& error);

}  // namespace ratelimit
