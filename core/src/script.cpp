#include "ratelimit/script.h"

#include <hiredis/hiredis.h>

#include <optional>

#include "ratelimit/resp.h"
#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

// Mirrors token_bucket.cpp line for line; every value stays below 2^53, where Lua's doubles
// are exact (math.ceil(a / b) included: a quotient below 2^53 rounds to the right side).
const char kScript[] = R"lua(-- ratelimit: token buckets, all limits of a request at once
local n = #KEYS
if n == 0 or #ARGV ~= 4 * n then
  return redis.error_reply('ratelimit: bad arguments')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local caps, counts, levels, needs = {}, {}, {}, {}
local allowed = true
local total = 0
for i = 1, n do
  local count = tonumber(ARGV[4 * i - 3])
  local period = tonumber(ARGV[4 * i - 2])
  local burst = tonumber(ARGV[4 * i - 1])
  local cost = tonumber(ARGV[4 * i])
  if not (count and period and burst and cost)
      or count <= 0 or period <= 0 or burst <= 0 or cost < 0 then
    return redis.error_reply('ratelimit: bad arguments')
  end
  local cap = burst * period
  local level = cap
  local stored = redis.pcall('GET', KEYS[i])
  if type(stored) == 'string' then
    local l, s = string.match(stored, '^(%d+) (%d+)$')
    if l then
      l = tonumber(l)
      s = tonumber(s)
      if l < cap then
        local elapsed = math.max(0, now - s)
        if elapsed < math.ceil((cap - l) / count) then
          level = l + elapsed * count
        end
      end
    end
  end
  caps[i], counts[i], levels[i], needs[i] = cap, count, level, cost * period
  if level < needs[i] then
    allowed = false
  end
  total = total + cost
end
local reply = {allowed and 1 or 0, now}
for i = 1, n do
  local retry = 0
  if levels[i] < needs[i] then
    retry = math.ceil((needs[i] - levels[i]) / counts[i])
  end
  if allowed then
    levels[i] = levels[i] - needs[i]
  end
  local reset = math.ceil((caps[i] - levels[i]) / counts[i])
  if allowed and total > 0 and needs[i] > 0 then
    if levels[i] == caps[i] then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%d %d', levels[i], now),
                 'PX', string.format('%d', reset))
    end
  end
  reply[#reply + 1] = levels[i]
  reply[#reply + 1] = reset
  reply[#reply + 1] = retry
end
return reply
)lua";

// RESP for: <verb> <script> <n> keys... (count period burst cost)...
std::string format_script_command(std::string_view verb, std::string_view script,
                                  const ScriptLimit* limits, size_t n)
{
    std::string out = "*" + std::to_string(3 + 5 * n) + "\r\n";
    append_bulk(out, verb);
    append_bulk(out, script);
    append_bulk(out, std::to_string(n));
    for (size_t i = 0; i < n; i++) {
        append_bulk(out, limits[i].key);
    }
    for (size_t i = 0; i < n; i++) {
        const BucketParams& p = limits[i].params;
        append_bulk(out, std::to_string(p.count));
        append_bulk(out, std::to_string(p.period_ms));
        append_bulk(out, std::to_string(p.burst));
        append_bulk(out, std::to_string(limits[i].cost));
    }
    return out;
}

// Reads a decimal number followed by CRLF at `pos`; advances `pos`.
std::optional<size_t> read_length(std::string_view text, size_t& pos)
{
    size_t value = 0;
    size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
        if (value > text.size()) {
            return std::nullopt;  // longer than the command: junk
        }
        value = value * 10 + size_t(text[pos] - '0');
        pos++;
    }
    if (pos == start || text.substr(pos, 2) != "\r\n") {
        return std::nullopt;
    }
    if (text[start] == '0' && pos - start > 1) {
        return std::nullopt;  // "$014": not how format_evalsha (nor Redis) writes a length
    }
    pos += 2;
    return value;
}

std::optional<std::string_view> read_bulk(std::string_view text, size_t& pos)
{
    if (pos >= text.size() || text[pos] != '$') {
        return std::nullopt;
    }
    pos++;
    auto len = read_length(text, pos);
    if (!len || text.size() - pos < *len + 2 || text.substr(pos + *len, 2) != "\r\n") {
        return std::nullopt;
    }
    std::string_view arg = text.substr(pos, *len);
    pos += *len + 2;
    return arg;
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

const std::string& script_source()
{
    static const std::string source = kScript;
    return source;
}

const std::string& script_sha1()
{
    static const std::string sha = sha1_hex(script_source());
    return sha;
}

std::string format_evalsha(const ScriptLimit* limits, size_t n)
{
    return format_script_command("EVALSHA", script_sha1(), limits, n);
}

std::string format_eval(const ScriptLimit* limits, size_t n)
{
    return format_script_command("EVAL", script_source(), limits, n);
}

std::string evalsha_to_eval(std::string_view evalsha)
{
    size_t pos = 1;
    if (evalsha.empty() || evalsha[0] != '*') {
        return {};
    }
    auto count = read_length(evalsha, pos);
    if (!count || *count < 3) {
        return {};
    }
    auto verb = read_bulk(evalsha, pos);
    auto sha = read_bulk(evalsha, pos);
    if (!verb || *verb != "EVALSHA" || !sha || *sha != script_sha1()) {
        return {};
    }
    size_t rest = pos;
    for (size_t i = 2; i < *count; i++) {
        if (!read_bulk(evalsha, pos)) {
            return {};
        }
    }
    if (pos != evalsha.size()) {
        return {};
    }
    std::string out = "*" + std::to_string(*count) + "\r\n";
    append_bulk(out, "EVAL");
    append_bulk(out, script_source());
    out.append(evalsha.substr(rest));
    return out;
}

bool parse_script_reply(const redisReply* reply, size_t n, ScriptResult& result,
                        std::string& error)
{
    if (!reply) {
        error = "no reply";
        return false;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        error.assign(reply->str, reply->len);
        if (error.empty()) {
            error = "empty error reply";
        }
        return false;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 + 3 * n) {
        error = "unexpected reply to the ratelimit script";
        return false;
    }
    int64_t allowed = 0;
    result.outcomes.assign(n, LimitOutcome{});
    bool ok = read_integer(reply->element[0], allowed) && (allowed == 0 || allowed == 1)
              && read_integer(reply->element[1], result.now_ms);
    for (size_t i = 0; ok && i < n; i++) {
        LimitOutcome& o = result.outcomes[i];
        redisReply** e = reply->element + 2 + 3 * i;
        ok = read_integer(e[0], o.level_units) && read_integer(e[1], o.reset_ms)
             && read_integer(e[2], o.retry_after_ms);
    }
    if (!ok) {
        error = "unexpected reply to the ratelimit script";
        return false;
    }
    result.allowed = allowed == 1;
    return true;
}

}  // namespace ratelimit
