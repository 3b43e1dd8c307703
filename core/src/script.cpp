#include "ratelimit/script.h"

#include <hiredis/hiredis.h>

#include <charconv>
#include <functional>
#include <optional>

#include "ratelimit/embed.h"
#include "ratelimit/resp.h"
#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

// core/lua/decide.lua: mirrors token_bucket.cpp; every value stays below 2^53, where Lua's
// doubles are exact. Integer division goes through math.fmod (exact), never a rounded quotient.
// KEYS: the K distinct keys. ARGV: R, P, then per parameter set `count period_ms burst` (3P),
// then per key its parameter set (K), then per request either `k` (one limit: key k, cost 1)
// or `-n` followed by n pairs `key cost`. Reply: one string, "<now_ms>" then per request
// " <allowed> <level>..." (a string costs Redis and hiredis far less than an array).
// Per decision Redis runs what it must: one read (MGET for the batch) and one PSETEX.
RATELIMIT_EMBED(decide_lua, "core/lua/decide.lua")

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

// The node-wide variant (Redis Cluster, Redis 7+): keys of several slots of one node in one
// call. Redis allows that only for undeclared keys of a script flagged allow-cross-slot-keys,
// read one by one (an MGET may not span slots). So no KEYS: ARGV starts with K and the keys.
// Every read comes before any write: a key that is not on the node fails the call untouched.
std::string node_wide_source()
{
    std::string source(decide_lua());
    auto replace = [&source](std::string_view from, std::string_view to) {
        size_t at = source.find(from);
        source.replace(at, from.size(), to);
    };
    replace("local keys, argv = KEYS, ARGV\n",
            "local keys, argv = {}, {}\n"
            "local nkeys = tonumber(ARGV[1]) or 0\n"
            "for i = 1, nkeys do keys[i] = ARGV[i + 1] end\n"
            "for i = nkeys + 2, #ARGV do argv[i - nkeys - 1] = ARGV[i] end\n");
    replace("local stored = redis.call('MGET', unpack(keys))\n",
            "local stored = {}\n"
            "for i = 1, nk do stored[i] = redis.call('GET', keys[i]) end\n");
    return "#!lua flags=allow-cross-slot-keys\n" + source;
}

}  // namespace

const std::string& script_source(ScriptForm form)
{
    static const std::string source(decide_lua());
    static const std::string node_wide = node_wide_source();
    return form == ScriptForm::node_wide ? node_wide : source;
}

const std::string& script_sha1(ScriptForm form)
{
    static const std::string sha = sha1_hex(script_source());
    static const std::string node_wide = sha1_hex(script_source(ScriptForm::node_wide));
    return form == ScriptForm::node_wide ? node_wide : sha;
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
    index_keys();
}

// Fills the (empty or stale) slots with keys_[0..nkeys_).
void ScriptBatch::index_keys() noexcept
{
    for (Slot& slot : slots_) {
        slot.generation = 0;
    }
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
    size_t first = limits_.size();
    size_t nkeys = nkeys_;
    try {
        for (size_t i = 0; i < n; i++) {
            limits_.push_back({key_index(limits[i].key, limits[i].params), limits[i].cost});
        }
        requests_.push_back(uint32_t(first));
    } catch (...) {
        // All or nothing: half a request would shift the verdicts of every later one.
        limits_.resize(first);
        if (nkeys_ != nkeys) {
            nkeys_ = nkeys;
            index_keys();
        }
        throw;
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

// <verb> <script> K keys... R P (count period burst)... (set of each key)... then per request
// `k` (one limit, cost 1) or `-n (key cost)...`; every index 1-based.
void ScriptBatch::append_command(std::string& out, std::string_view verb,
                                 std::string_view script, ScriptForm form) const
{
    // Distinct parameter sets, usually one per policy: found by a scan, there are few.
    BucketParams sets[64];
    size_t nsets = 0;
    auto set_index = [&](const BucketParams& p) -> size_t {
        for (size_t i = 0; i < nsets; i++) {
            if (sets[i].count == p.count && sets[i].period_ms == p.period_ms
                && sets[i].burst == p.burst) {
                return i;
            }
        }
        return nsets;
    };
    key_sets_.resize(nkeys_);
    for (size_t k = 0; k < nkeys_; k++) {
        size_t i = set_index(keys_[k].params);
        if (i == nsets && nsets < 64) {
            sets[nsets++] = keys_[k].params;
        }
        key_sets_[k] = uint32_t(i < 64 ? i : 63);
    }
    // More than 64 distinct sets in one batch cannot come from nginx (policies are few, and
    // the failure mode's share never reaches Redis); fall back to one set per key.
    bool per_key = false;
    for (size_t k = 0; k < nkeys_ && !per_key; k++) {
        const BucketParams& p = keys_[k].params;
        const BucketParams& q = sets[key_sets_[k]];
        per_key = p.count != q.count || p.period_ms != q.period_ms || p.burst != q.burst;
    }

    size_t key_bytes = 0;
    for (size_t k = 0; k < nkeys_; k++) {
        key_bytes += keys_[k].name.size();
    }
    size_t entries = 0;
    for (size_t r = 0; r < requests_.size(); r++) {
        entries += simple(r) ? 1 : 1 + 2 * limits_of(r);
    }
    size_t np = per_key ? nkeys_ : nsets;
    bool node_wide = form == ScriptForm::node_wide;
    size_t args = 3 + nkeys_ + (node_wide ? 1 : 0) + 2 + 3 * np + nkeys_ + entries;
    out.reserve(out.size() + script.size() + key_bytes + 16 * args + 64);

    append_line(out, '*', args);
    append_bulk(out, verb);
    append_bulk(out, script);
    if (node_wide) {
        append_int(out, 0);  // no declared keys: K and the keys lead ARGV
    }
    append_int(out, int64_t(nkeys_));
    for (size_t k = 0; k < nkeys_; k++) {
        append_bulk(out, keys_[k].name);
    }
    append_int(out, int64_t(requests_.size()));
    append_int(out, int64_t(np));
    for (size_t i = 0; i < np; i++) {
        const BucketParams& p = per_key ? keys_[i].params : sets[i];
        append_int(out, p.count);
        append_int(out, p.period_ms);
        append_int(out, p.burst);
    }
    for (size_t k = 0; k < nkeys_; k++) {
        append_int(out, int64_t(per_key ? k : key_sets_[k]) + 1);
    }
    for (size_t r = 0; r < requests_.size(); r++) {
        if (simple(r)) {
            append_int(out, int64_t(limits_[requests_[r]].key) + 1);
            continue;
        }
        size_t n = limits_of(r);
        append_int(out, -int64_t(n));
        for (size_t j = requests_[r]; j < requests_[r] + n; j++) {
            append_int(out, int64_t(limits_[j].key) + 1);
            append_int(out, limits_[j].cost);
        }
    }
}

// One limit of cost 1: the common request, sent as its key alone.
bool ScriptBatch::simple(size_t request) const noexcept
{
    return limits_of(request) == 1 && limits_[requests_[request]].cost == 1;
}

void ScriptBatch::append_evalsha(std::string& out, ScriptForm form) const
{
    append_command(out, "EVALSHA", script_sha1(form), form);
}

void ScriptBatch::append_eval(std::string& out, ScriptForm form) const
{
    append_command(out, "EVAL", script_source(form), form);
}

void ScriptBatch::request_limits(size_t request, std::vector<ScriptLimit>& out) const
{
    out.clear();
    size_t first = request < requests_.size() ? requests_[request] : 0;
    for (size_t j = first; j < first + limits_of(request); j++) {
        const Key& key = keys_[limits_[j].key];
        out.push_back(ScriptLimit{key.name, key.params, limits_[j].cost});
    }
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
    if (!verb || *verb != "EVALSHA" || !sha) {
        return {};
    }
    ScriptForm form = ScriptForm::keys_declared;
    if (*sha == script_sha1(ScriptForm::node_wide)) {
        form = ScriptForm::node_wide;
    } else if (*sha != script_sha1()) {
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
    append_bulk(out, script_source(form));
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
    if (reply->type != REDIS_REPLY_STRING) {
        error = "unexpected reply to the ratelimit script";
        return false;
    }
    size_t nreq = batch.requests_.size();
    size_t nlimits = batch.limits_.size();
    const char* token = reply->str;  // where the number being read starts
    out.allowed.resize(nreq);
    out.first.resize(nreq);
    out.levels.resize(nlimits);
    const char* p = reply->str;
    const char* end = reply->str + reply->len;
    // The next space-separated decimal integer, >= 0.
    auto next = [&](int64_t& value) {
        if (p != reply->str) {
            if (p == end || *p != ' ') {
                return false;
            }
            p++;
        }
        token = p;
        auto [stop, ec] = std::from_chars(p, end, value);
        if (ec != std::errc() || stop == p || value < 0) {
            return false;
        }
        p = stop;
        return true;
    };
    bool ok = next(out.now_ms);
    for (size_t r = 0; ok && r < nreq; r++) {
        int64_t allowed = 0;
        ok = next(allowed) && (allowed == 0 || allowed == 1);
        out.allowed[r] = uint8_t(allowed);
        out.first[r] = batch.requests_[r];
        size_t stop = batch.requests_[r] + batch.limits_of(r);
        for (size_t j = batch.requests_[r]; ok && j < stop; j++) {
            // A level is a bucket's: between empty and full.
            const BucketParams& params = batch.keys_[batch.limits_[j].key].params;
            ok = next(out.levels[j]) && out.levels[j] <= params.capacity_units();
        }
    }
    if (!ok || p != end) {
        // Never taken as a decision (a negative or past-full level is no bucket's): the whole
        // call fails, and the log shows where, bounded and printable.
        size_t at = size_t((ok ? p : token) - reply->str);
        error = "unexpected reply to the ratelimit script at byte " + std::to_string(at) + ": \"";
        for (size_t i = at; i < reply->len && i < at + 32; i++) {
            char c = reply->str[i];
            error += c >= 0x20 && c < 0x7f && c != '"' ? c : '?';
        }
        error += '"';
        return false;
    }
    return true;
}

}  // namespace ratelimit
