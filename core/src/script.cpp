#include "ratelimit/script.h"

#include <hiredis/hiredis.h>

#include <charconv>
#include <functional>
#include <optional>

#include "ratelimit/resp.h"
#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

// Mirrors token_bucket.cpp; every value stays below 2^53, where Lua's doubles are exact.
// Integer division goes through math.fmod (exact), never a rounded quotient.
// KEYS: the K distinct keys. ARGV: R, then per key `count period_ms burst`, then per request
// `n` and n pairs `key_index cost`. Reply: {now_ms, per request: allowed, its n levels}.
const char kScript[] = R"lua(-- ratelimit v2: a batch of requests, token buckets, in order
if redis.replicate_commands then redis.replicate_commands() end
local nk, argv = #KEYS, ARGV
local nr = tonumber(argv[1])
if nk == 0 or not nr or nr < 1 or #argv < 1 + 3 * nk + nr then
  return redis.error_reply('ratelimit: bad arguments')
end
local fmod, floor, tonumber = math.fmod, math.floor, tonumber
local function ceil_div(a, b)
  local r = fmod(a, b)
  if r == 0 then return (a - r) / b end
  return (a - r) / b + 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
local counts, periods, caps, levels = {}, {}, {}, {}
for i = 1, nk do
  local count, period, burst = tonumber(argv[3 * i - 1]), tonumber(argv[3 * i]),
                               tonumber(argv[3 * i + 1])
  if not (count and period and burst) or count <= 0 or period <= 0 or burst <= 0 then
    return redis.error_reply('ratelimit: bad arguments')
  end
  local cap = burst * period
  local level = cap
  local stored = redis.pcall('GET', KEYS[i])
  if type(stored) == 'string' then
    local l, p, s, v, rest
    v, l, p, s, rest = string.match(stored, '^v(%d+) (%d+) (%d+) (%d+)(.*)$')
    if v then
      if tonumber(v) < 2 or (rest ~= '' and string.sub(rest, 1, 1) ~= ' ') then l = nil end
    else
      l, s = string.match(stored, '^(%d+) (%d+)$')
      p = period
    end
    if l then
      l, p, s = tonumber(l), tonumber(p), tonumber(s)
      if l < 9007199254740992 and p > 0 and p <= 86400000 then
        if p ~= period then
          local frac = fmod(l, p)
          local tokens = (l - frac) / p
          if tokens >= burst then
            l = cap
          else
            local x = frac * period
            l = tokens * period + (x - fmod(x, p)) / p
          end
        end
        if l < cap then
          local elapsed = now - s
          if elapsed < 0 then elapsed = 0 end
          if elapsed < ceil_div(cap - l, count) then
            level = l + elapsed * count
          end
        end
      end
    end
  end
  counts[i], periods[i], caps[i], levels[i] = count, period, cap, level
end
local reply, dirty, order = {now}, {}, {}
local ks, needs = {}, {}
local a = 3 * nk + 2
for r = 1, nr do
  local n = tonumber(argv[a])
  if not n or n < 0 or n ~= floor(n) then
    return redis.error_reply('ratelimit: bad arguments')
  end
  local allowed = 1
  for j = 1, n do
    local k, cost = tonumber(argv[a + 2 * j - 1]), tonumber(argv[a + 2 * j])
    if not (k and cost) or not levels[k] or cost < 0 or cost ~= floor(cost) then
      return redis.error_reply('ratelimit: bad arguments')
    end
    local need = cost * periods[k]
    if levels[k] < need then allowed = 0 end
    ks[j], needs[j] = k, need
  end
  reply[#reply + 1] = allowed
  for j = 1, n do
    local k = ks[j]
    if allowed == 1 and needs[j] > 0 then
      levels[k] = levels[k] - needs[j]
      if not dirty[k] then dirty[k] = true; order[#order + 1] = k end
    end
    reply[#reply + 1] = levels[k]
  end
  a = a + 1 + 2 * n
end
if a - 1 ~= #argv then
  return redis.error_reply('ratelimit: bad arguments')
end
for _, k in ipairs(order) do
  local level = levels[k]
  if level >= caps[k] then
    redis.call('DEL', KEYS[k])
  else
    redis.call('SET', KEYS[k], string.format('v2 %d %d %d', level, periods[k], now),
               'PX', string.format('%d', ceil_div(caps[k] - level, counts[k])))
  end
end
return reply
)lua";

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
        return std::nullopt;  // "$014": not how append_evalsha (nor Redis) writes a length
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

// Appends "<prefix><digits>\r\n".
void append_line(std::string& out, char prefix, uint64_t value)
{
    char digits[24];
    auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
    out += prefix;
    out.append(digits, size_t(end - digits));
    out += "\r\n";
}

// Appends an integer as a bulk string: "$<len>\r\n<digits>\r\n".
void append_int(std::string& out, int64_t value)
{
    char digits[24];
    auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
    size_t len = size_t(end - digits);
    out += '$';
    if (len >= 10) {
        out += char('0' + len / 10);
    }
    out += char('0' + len % 10);
    out += "\r\n";
    out.append(digits, len);
    out += "\r\n";
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

void ScriptBatch::clear() noexcept
{
    nkeys_ = 0;
    requests_.clear();
    limits_.clear();
    if (++generation_ == 0) {  // wrapped: forget every slot once
        for (Slot& slot : slots_) {
            slot.generation = 0;
        }
        generation_ = 1;
    }
}

void ScriptBatch::grow_slots()
{
    slots_.assign(slots_.empty() ? 16 : slots_.size() * 2, Slot{});
    size_t mask = slots_.size() - 1;
    for (size_t k = 0; k < nkeys_; k++) {
        size_t i = std::hash<std::string_view>{}(keys_[k].name) & mask;
        while (slots_[i].generation == generation_) {
            i = (i + 1) & mask;
        }
        slots_[i] = {generation_, uint32_t(k)};
    }
}

uint32_t ScriptBatch::key_index(std::string_view name, const BucketParams& params)
{
    if (2 * (nkeys_ + 1) > slots_.size()) {
        grow_slots();
    }
    size_t mask = slots_.size() - 1;
    size_t i = std::hash<std::string_view>{}(name) & mask;
    for (; slots_[i].generation == generation_; i = (i + 1) & mask) {
        if (keys_[slots_[i].key].name == name) {
            return slots_[i].key;
        }
    }
    if (nkeys_ == keys_.size()) {
        keys_.emplace_back();
    }
    keys_[nkeys_].name.assign(name.data(), name.size());
    keys_[nkeys_].params = params;
    slots_[i] = {generation_, uint32_t(nkeys_)};
    return uint32_t(nkeys_++);
}

size_t ScriptBatch::add_request(const ScriptLimit* limits, size_t n)
{
    requests_.push_back(uint32_t(limits_.size()));
    for (size_t i = 0; i < n; i++) {
        limits_.push_back({key_index(limits[i].key, limits[i].params), limits[i].cost});
    }
    return requests_.size() - 1;
}

size_t ScriptBatch::requests() const noexcept
{
    return requests_.size();
}

size_t ScriptBatch::keys() const noexcept
{
    return nkeys_;
}

size_t ScriptBatch::limits_of(size_t request) const noexcept
{
    if (request >= requests_.size()) {
        return 0;
    }
    size_t end = request + 1 < requests_.size() ? requests_[request + 1] : limits_.size();
    return end - requests_[request];
}

// <verb> <script> K keys... R (count period burst)... (n (key_index cost)...)...
void ScriptBatch::append_command(std::string& out, std::string_view verb,
                                 std::string_view script) const
{
    size_t key_bytes = 0;
    for (size_t k = 0; k < nkeys_; k++) {
        key_bytes += keys_[k].name.size();
    }
    size_t args = 3 + nkeys_ + 1 + 3 * nkeys_ + requests_.size() + 2 * limits_.size();
    out.reserve(out.size() + script.size() + key_bytes + 16 * args + 64);

    append_line(out, '*', args);
    append_bulk(out, verb);
    append_bulk(out, script);
    append_int(out, int64_t(nkeys_));
    for (size_t k = 0; k < nkeys_; k++) {
        append_bulk(out, keys_[k].name);
    }
    append_int(out, int64_t(requests_.size()));
    for (size_t k = 0; k < nkeys_; k++) {
        const BucketParams& p = keys_[k].params;
        append_int(out, p.count);
        append_int(out, p.period_ms);
        append_int(out, p.burst);
    }
    for (size_t r = 0; r < requests_.size(); r++) {
        size_t n = limits_of(r);
        append_int(out, int64_t(n));
        for (size_t j = requests_[r]; j < requests_[r] + n; j++) {
            append_int(out, int64_t(limits_[j].key) + 1);
            append_int(out, limits_[j].cost);
        }
    }
}

void ScriptBatch::append_evalsha(std::string& out) const
{
    append_command(out, "EVALSHA", script_sha1());
}

void ScriptBatch::append_eval(std::string& out) const
{
    append_command(out, "EVAL", script_source());
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

bool parse_batch_reply(const redisReply* reply, const ScriptBatch& batch, BatchReply& out,
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
    size_t nreq = batch.requests_.size();
    size_t nlimits = batch.limits_.size();
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 + nreq + nlimits) {
        error = "unexpected reply to the ratelimit script";
        return false;
    }
    out.allowed.resize(nreq);
    out.first.resize(nreq);
    out.levels.resize(nlimits);
    bool ok = read_integer(reply->element[0], out.now_ms);
    size_t e = 1;
    for (size_t r = 0; ok && r < nreq; r++) {
        int64_t allowed = 0;
        ok = read_integer(reply->element[e++], allowed) && (allowed == 0 || allowed == 1);
        out.allowed[r] = uint8_t(allowed);
        out.first[r] = batch.requests_[r];
        size_t end = batch.requests_[r] + batch.limits_of(r);
        for (size_t j = batch.requests_[r]; ok && j < end; j++) {
            // A level is a bucket's: between empty and full.
            const BucketParams& p = batch.keys_[batch.limits_[j].key].params;
            ok = read_integer(reply->element[e++], out.levels[j]) && out.levels[j] >= 0
                 && out.levels[j] <= p.capacity_units();
        }
    }
    if (!ok) {
        error = "unexpected reply to the ratelimit script";
        return false;
    }
    return true;
}

}  // namespace ratelimit
