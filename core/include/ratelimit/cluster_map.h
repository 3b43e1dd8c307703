// Redis Cluster's key space: the hash slot of a key (CRC16 and {hash tags}, as Redis defines
// them), the slot map read from CLUSTER SLOTS, and the MOVED/ASK redirections.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct redisReply;

namespace ratelimit {

constexpr int kSlotCount = 16384;

// The part of `key` Redis hashes: the text between the first '{' and the next '}' when it is
// not empty, else the whole key.
std::string_view hash_tag(std::string_view key) noexcept;

int key_slot(std::string_view key) noexcept;

struct NodeAddress {
    std::string host;  // as the cluster announces it (an address, or a name)
    int port = 0;

    std::string text() const;  // "host:port", "[v6]:port"
    bool operator==(const NodeAddress& other) const
    {
        return host == other.host && port == other.port;
    }
};

// Which master serves each slot. Slots no master serves map to -1.
struct SlotMap {
    std::vector<NodeAddress> masters;
    std::vector<int16_t> owner = std::vector<int16_t>(kSlotCount, -1);  // index into masters

    int master_of(int slot) const { return owner[size_t(slot)]; }
};

// Parses a CLUSTER SLOTS reply. A master announced with an empty host (a node that does not
// know its own address) takes `asked_host`, the host the question went to.
bool parse_cluster_slots(const redisReply* reply, std::string_view asked_host, SlotMap& map,
                         std::string& error);

// "MOVED <slot> <host>:<port>" or "ASK <slot> <host>:<port>".
struct Redirect {
    bool ask = false;
    int slot = 0;
    NodeAddress node;
};
std::optional<Redirect> parse_redirect(std::string_view error);

}  // namespace ratelimit
