#include "ratelimit/cluster_map.h"

#include <hiredis/hiredis.h>

#include <charconv>

namespace ratelimit {
namespace {

// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster uses it.
uint16_t crc16(std::string_view data) noexcept
{
    uint16_t crc = 0;
    for (unsigned char byte : data) {
        crc ^= uint16_t(byte) << 8;
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000) ? uint16_t((crc << 1) ^ 0x1021) : uint16_t(crc << 1);
        }
    }
    return crc;
}

std::optional<int> parse_int(std::string_view text)
{
    int value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) {
        return std::nullopt;
    }
    return value;
}

std::string_view str(const redisReply* reply)
{
    return std::string_view(reply->str, reply->len);
}

// One entry of a CLUSTER SLOTS reply: first slot, last slot, then the master [host, port, ...]
// and its replicas, which we do not use.
bool parse_range(const redisReply* range, std::string_view asked_host, SlotMap& map,
                 std::string& error)
{
    if (range->type != REDIS_REPLY_ARRAY || range->elements < 3
        || range->element[0]->type != REDIS_REPLY_INTEGER
        || range->element[1]->type != REDIS_REPLY_INTEGER
        || range->element[2]->type != REDIS_REPLY_ARRAY
        || range->element[2]->elements < 2
        || range->element[2]->element[0]->type != REDIS_REPLY_STRING
        || range->element[2]->element[1]->type != REDIS_REPLY_INTEGER) {
        error = "malformed CLUSTER SLOTS entry";
        return false;
    }
    long long first = range->element[0]->integer;
    long long last = range->element[1]->integer;
    long long port = range->element[2]->element[1]->integer;
    if (first < 0 || last >= kSlotCount || first > last || port <= 0 || port > 65535) {
        error = "CLUSTER SLOTS entry out of range";
        return false;
    }
    NodeAddress node{std::string(str(range->element[2]->element[0])), int(port)};
    if (node.host.empty() || node.host == "?") {
        node.host = std::string(asked_host);
    }
    size_t index = 0;
    while (index < map.masters.size() && !(map.masters[index] == node)) {
        index++;
    }
    if (index == map.masters.size()) {
        map.masters.push_back(std::move(node));
    }
    for (long long slot = first; slot <= last; slot++) {
        map.owner[size_t(slot)] = int16_t(index);
    }
    return true;
}

}  // namespace

std::string_view hash_tag(std::string_view key) noexcept
{
    size_t open = key.find('{');
    if (open == std::string_view::npos) {
        return key;
    }
    size_t close = key.find('}', open + 1);
    if (close == std::string_view::npos || close == open + 1) {
        return key;
    }
    return key.substr(open + 1, close - open - 1);
}

int key_slot(std::string_view key) noexcept
{
    return crc16(hash_tag(key)) & (kSlotCount - 1);
}

std::string NodeAddress::text() const
{
    std::string out;
    bool v6 = host.find(':') != std::string::npos;
    if (v6) {
        out += '[';
    }
    out += host;
    if (v6) {
        out += ']';
    }
    out += ':';
    out += std::to_string(port);
    return out;
}

bool parse_cluster_slots(const redisReply* reply, std::string_view asked_host, SlotMap& map,
                         std::string& error)
{
    map = SlotMap{};
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY) {
        error = reply && reply->type == REDIS_REPLY_ERROR
                    ? "CLUSTER SLOTS: " + std::string(str(reply))
                    : "CLUSTER SLOTS: not an array";
        return false;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        if (!parse_range(reply->element[i], asked_host, map, error)) {
            return false;
        }
    }
    if (map.masters.empty()) {
        error = "CLUSTER SLOTS: no slot is served";
        return false;
    }
    return true;
}

std::optional<Redirect> parse_redirect(std::string_view error)
{
    Redirect redirect;
    if (error.substr(0, 6) == "MOVED ") {
        error.remove_prefix(6);
    } else if (error.substr(0, 4) == "ASK ") {
        redirect.ask = true;
        error.remove_prefix(4);
    } else {
        return std::nullopt;
    }
    size_t space = error.find(' ');
    size_t colon = error.rfind(':');
    if (space == std::string_view::npos || colon == std::string_view::npos || colon < space) {
        return std::nullopt;
    }
    auto slot = parse_int(error.substr(0, space));
    auto port = parse_int(error.substr(colon + 1));
    if (!slot || *slot < 0 || *slot >= kSlotCount || !port || *port <= 0 || *port > 65535) {
        return std::nullopt;
    }
    std::string_view host = error.substr(space + 1, colon - space - 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    redirect.slot = *slot;
    redirect.node = NodeAddress{std::string(host), *port};
    return redirect;
}

}  // namespace ratelimit
