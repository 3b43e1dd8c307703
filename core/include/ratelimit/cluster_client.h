// Redis Cluster as the batcher sees it: one group per master (node-wide calls, Redis 7+), or
// per hash slot where the server takes no node-wide calls, over one pipelined RedisClient per
// master. The slot map comes from CLUSTER SLOTS
// through any known node (the seeds first) and is refreshed periodically, when a node fails
// and when a MOVED reply shows it stale. MOVED and ASK (with ASKING) are followed, and
// TRYAGAIN retried shortly, within the call's timeout. Each master has its own breaker.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ratelimit/call_router.h"
#include "ratelimit/cluster_map.h"

namespace ratelimit {

struct ClusterOptions {
    ClientOptions client;                 // of every node's connection
    int64_t refresh_interval_ms = 5000;   // slot map refresh while nothing seems to change
    int64_t refresh_retry_ms = 100;       // after a change
    int64_t refresh_degraded_ms = 500;    // while a master is down, or when no node answered
    int max_redirects = 3;                // MOVED, ASK and TRYAGAIN followed per call
    bool node_wide = true;                // coalesce per master; off: per slot
    int64_t tryagain_delay_ms = 10;
    // The probe a master's breaker sends while it is down, given a key of one of its slots.
    std::function<std::string(const std::string& key)> probe_command;
    std::string probe_key_prefix = "probe";
};

// What the host provides per node: an event loop whose transports connect to that node, and
// the observer of its client.
struct ClusterHost {
    std::function<std::unique_ptr<EventLoop>(const NodeAddress&)> loop_for;
    std::function<ClientObserver(const NodeAddress&)> observer_for;
    std::function<void(std::string_view message)> on_error;  // slot map problems
    std::function<void(size_t masters)> on_map;              // the masters changed
    std::function<void(const RedisClient&)> on_retire;       // before a node's client goes
};

class ClusterClient final : public CallRouter {
public:
    ClusterClient(EventLoop& loop, std::vector<NodeAddress> seeds, ClusterOptions options,
                  ClusterHost host);
    ~ClusterClient() override;
    ClusterClient(const ClusterClient&) = delete;
    ClusterClient& operator=(const ClusterClient&) = delete;

    // Groups: a slot (0..16383) for calls that declare their keys, or -1 - a node's id for
    // node-wide calls.
    int group_of(std::string_view key) const noexcept override;
    int slot_group_of(std::string_view key) const noexcept override { return key_slot(key); }
    ScriptForm form(int group) const noexcept override
    {
        return group < 0 ? ScriptForm::node_wide : ScriptForm::keys_declared;
    }
    bool retry_declared(int group, std::string_view error) noexcept override;
    bool routes(int group) const noexcept override { return node_of_group(group) != nullptr; }
    bool available(int group) const noexcept override;
    RedisClient::Since since(int group) const noexcept override;
    RedisClient::Submitted submit(int group, std::string command, Callback callback,
                                  const RedisClient::Since* since) override;
    void cancel(CallId id) noexcept override;

    // Pending callbacks are dropped; every connection closes.
    void shutdown() noexcept;

    struct NodeView {
        const NodeAddress* address;
        const RedisClient* client;
        size_t slots;  // served according to the map
    };
    // The masters of the slot map (and seeds until a map is known); `all`: every node known.
    std::vector<NodeView> nodes(bool all = false) const;
    bool has_map() const noexcept { return has_map_; }

private:
    struct Node;
    struct Pending;

    Node& node_named(const NodeAddress& address);
    void make_client(Node& node);
    Node& node_for(int slot) const;
    Node* node_of_group(int group) const noexcept;  // nullptr: a node gone since
    void send(CallId id, Pending& pending, Node& node, bool asking) noexcept;
    void on_node_reply(CallId id, const CallResult& result) noexcept;
    bool follow(CallId id, Pending& pending, const CallResult& result) noexcept;
    void finish(CallId id, const CallResult& result) noexcept;
    void on_retry_timer() noexcept;

    void refresh_soon() noexcept;
    void on_refresh_timer() noexcept;
    void ask_next_node() noexcept;
    void on_slots(Node* asked, uint64_t round, const CallResult& result) noexcept;
    void use_map(const SlotMap& map, const NodeAddress& asked);
    void retire_unused_nodes() noexcept;
    std::string probe_for(const Node& node) const;

    EventLoop& loop_;
    ClusterOptions options_;
    ClusterHost host_;
    std::vector<NodeAddress> seeds_;
    std::vector<std::unique_ptr<Node>> nodes_;
    std::vector<Node*> slots_;          // per slot: its master, nullptr while unknown
    Node* fallback_ = nullptr;          // where unknown slots go (a MOVED tells the truth)
    std::unordered_map<CallId, Pending> pending_;
    std::vector<CallId> retry_;         // TRYAGAIN: sent again when retry_timer_ fires
    std::unique_ptr<Timer> retry_timer_;
    std::unique_ptr<Timer> refresh_timer_;
    CallId next_id_ = 1;
    uint64_t refresh_round_ = 0;        // bumped per refresh; late answers are ignored
    std::vector<Node*> ask_order_;      // of this round: masters first
    size_t asked_ = 0;                  // of ask_order_, in this round
    size_t next_to_ask_ = 0;
    bool refreshing_ = false;
    bool refresh_soon_ = false;
    bool has_map_ = false;
    bool node_wide_ = true;             // off once a server refused a node-wide call
    uint32_t next_node_id_ = 0;
    bool shut_down_ = false;
};

}  // namespace ratelimit
