#include "ratelimit/cluster_client.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <utility>

#include "ratelimit/resp.h"

namespace ratelimit {

struct ClusterClient::Node {
    NodeAddress address;
    std::unique_ptr<EventLoop> loop;      // its transports connect to `address`
    std::unique_ptr<RedisClient> client;  // declared after the loop: it goes first
    size_t slots = 0;                     // served according to the map
    bool seed = false;
    uint32_t id = 0;                      // node-wide group: -1 - id
};

// A call the batcher made: kept until its final reply, for redirections and cancel.
struct ClusterClient::Pending {
    int slot = 0;          // its group
    std::string command;
    Callback callback;
    RedisClient::Since since{};
    int redirects = 0;
    Node* node = nullptr;  // where it was sent last
    CallId call = 0;       // its id there
};

ClusterClient::ClusterClient(EventLoop& loop, std::vector<NodeAddress> seeds,
                             ClusterOptions options, ClusterHost host)
    : loop_(loop), options_(std::move(options)), host_(std::move(host)),
      seeds_(std::move(seeds)), slots_(kSlotCount, nullptr), node_wide_(options_.node_wide)
{
    for (const NodeAddress& seed : seeds_) {
        node_named(seed).seed = true;
    }
    fallback_ = nodes_.front().get();
    retry_timer_ = loop_.make_timer([this] { on_retry_timer(); }, EventLoop::TimerKind::request);
    refresh_timer_ =
        loop_.make_timer([this] { on_refresh_timer(); }, EventLoop::TimerKind::background);
    refresh_timer_->start(0);
}

ClusterClient::~ClusterClient()
{
    shutdown();
}

void ClusterClient::shutdown() noexcept
{
    shut_down_ = true;
    if (retry_timer_) {
        retry_timer_->stop();
        refresh_timer_->stop();
    }
    pending_.clear();
    retry_.clear();
    for (auto& node : nodes_) {
        node->client->shutdown();
    }
}

// Nodes and routing.

ClusterClient::Node& ClusterClient::node_named(const NodeAddress& address)
{
    for (auto& node : nodes_) {
        if (node->address == address) {
            return *node;
        }
    }
    auto node = std::make_unique<Node>();
    node->address = address;
    node->id = next_node_id_++;
    node->loop = host_.loop_for(address);
    make_client(*node);
    nodes_.push_back(std::move(node));
    return *nodes_.back();
}

// A fresh client for `node`: idle, no breaker open, nothing pending.
void ClusterClient::make_client(Node& node)
{
    ClientObserver observer =
        host_.observer_for ? host_.observer_for(node.address) : ClientObserver{};
    // A master that fails, or loses its connection, may have been replaced: ask the cluster.
    observer.on_state = [this, inner = std::move(observer.on_state),
                         was_up = false](ClientState state) mutable {
        if (inner) {
            inner(state);
        }
        if (state == ClientState::down || (state == ClientState::connecting && was_up)) {
            refresh_soon();
        }
        was_up = state == ClientState::up;
    };
    node.client = std::make_unique<RedisClient>(*node.loop, options_.client, std::move(observer));
}

ClusterClient::Node& ClusterClient::node_for(int slot) const
{
    Node* node = slots_[size_t(slot)];
    return node ? *node : *fallback_;
}

ClusterClient::Node* ClusterClient::node_of_group(int group) const noexcept
{
    if (group >= 0) {
        return &node_for(group);
    }
    for (const auto& node : nodes_) {
        if (-1 - int64_t(node->id) == group) {
            return node.get();
        }
    }
    return nullptr;
}

int ClusterClient::group_of(std::string_view key) const noexcept
{
    int slot = key_slot(key);
    // Until a map names the masters, calls go to a seed, which may be a replica: with their
    // keys declared it answers MOVED, where a node-wide call would get READONLY (and the
    // connection, with the other calls on it, would go).
    return node_wide_ && has_map_ ? -1 - int(node_for(slot).id) : slot;
}

// Errors of a node-wide call that wrote nothing and that calls declaring their keys resolve: a
// key not on the node (a stale map or a slot being moved), a master turned replica (its
// slots' new master answers a MOVED), or a server before Redis 7.
bool ClusterClient::retry_declared(int group, std::string_view error) noexcept
{
    (void) group;
    auto has = [error](std::string_view text) { return error.find(text) != error.npos; };
    if (has("non local key") || has("same slot") || has("CROSSSLOT") || has("TRYAGAIN")
        || error.substr(0, 8) == "READONLY") {
        refresh_soon();
        return true;
    }
    if (has("Error compiling script") || has("shebang") || has("flags")) {
        if (node_wide_ && host_.on_error) {
            host_.on_error("the server refuses node-wide script calls (Redis 7+): "
                           "decisions are coalesced per slot");
        }
        node_wide_ = false;
        return true;
    }
    return false;
}

bool ClusterClient::available(int group) const noexcept
{
    Node* node = node_of_group(group);
    return !shut_down_ && node && node->client->state() != ClientState::down;
}

RedisClient::Since ClusterClient::since(int group) const noexcept
{
    Node* node = node_of_group(group);
    return RedisClient::Since{loop_.now_ms(), node ? node->client->failure_epoch() : 0};
}

RedisClient::Submitted ClusterClient::submit(int group, std::string command, Callback callback,
                                             const RedisClient::Since* since)
{
    if (shut_down_) {
        return {CallStatus::shutdown, 0};
    }
    Node* target = node_of_group(group);
    if (target == nullptr) {
        return {CallStatus::disconnected, 0};  // its node left the map since the call queued
    }
    Node& node = *target;
    CallId id = next_id_++;
    Pending pending;
    pending.slot = group;
    pending.callback = std::move(callback);
    pending.since = since ? *since : this->since(group);
    auto submitted = node.client->submit(
        command, [this, id](const CallResult& result) { on_node_reply(id, result); },
        &pending.since);
    if (submitted.status != CallStatus::ok) {
        return {submitted.status, 0};
    }
    pending.command = std::move(command);
    pending.node = &node;
    pending.call = submitted.id;
    pending_.emplace(id, std::move(pending));
    return {CallStatus::ok, id};
}

void ClusterClient::cancel(CallId id) noexcept
{
    auto it = pending_.find(id);
    if (it == pending_.end()) {
        return;
    }
    if (it->second.node) {
        it->second.node->client->cancel(it->second.call);
    }
    pending_.erase(it);
}

// Sends a call again, to `node`; ASK: preceded by ASKING, as EVAL since `node` may not have
// the script yet (a NOSCRIPT resend would go without ASKING).
void ClusterClient::send(CallId id, Pending& pending, Node& node, bool asking) noexcept
{
    try {
        RedisClient::Since since{pending.since.ms, node.client->failure_epoch()};
        std::string command = pending.command;
        if (asking) {
            node.client->submit(format_command({"ASKING"}), [](const CallResult&) {}, &since);
            if (options_.client.noscript_fallback) {
                std::string eval = options_.client.noscript_fallback(command);
                if (!eval.empty()) {
                    command = std::move(eval);
                }
            }
        }
        auto submitted = node.client->submit(
            std::move(command), [this, id](const CallResult& result) { on_node_reply(id, result); },
            &since);
        if (submitted.status == CallStatus::ok) {
            pending.node = &node;
            pending.call = submitted.id;
            return;
        }
        finish(id, CallResult{submitted.status, nullptr});
    } catch (...) {
        finish(id, CallResult{CallStatus::overloaded, nullptr});
    }
}

void ClusterClient::on_node_reply(CallId id, const CallResult& result) noexcept
{
    auto it = pending_.find(id);
    if (it == pending_.end()) {
        return;
    }
    Pending& pending = it->second;
    pending.node = nullptr;
    if (result.status == CallStatus::ok && is_redirect(result.reply)
        && pending.redirects < options_.max_redirects && follow(id, pending, result)) {
        return;
    }
    finish(id, result);
}

bool ClusterClient::follow(CallId id, Pending& pending, const CallResult& result) noexcept
{
    try {
        std::string_view text(result.reply->str, result.reply->len);
        pending.redirects++;
        if (text.substr(0, 8) == "TRYAGAIN") {  // keys of the slot half moved: soon settled
            retry_.push_back(id);
            if (!retry_timer_->armed()) {
                retry_timer_->start(options_.tryagain_delay_ms);
            }
            return true;
        }
        auto redirect = parse_redirect(text);
        if (!redirect) {
            return false;
        }
        Node& target = node_named(redirect->node);
        if (!redirect->ask) {
            slots_[size_t(redirect->slot)] = &target;
            refresh_soon();
        }
        send(id, pending, target, redirect->ask);
        return true;
    } catch (...) {
        return false;
    }
}

void ClusterClient::finish(CallId id, const CallResult& result) noexcept
{
    auto it = pending_.find(id);
    if (it == pending_.end()) {
        return;
    }
    Callback callback = std::move(it->second.callback);
    pending_.erase(it);
    try {
        callback(result);
    } catch (...) {
    }
}

void ClusterClient::on_retry_timer() noexcept
{
    std::vector<CallId> due;
    due.swap(retry_);
    for (CallId id : due) {
        auto it = pending_.find(id);
        if (it == pending_.end()) {
            continue;
        }
        // A node-wide call whose node left the map meanwhile goes to a node of the map, whose
        // answer (a key not on it) sends its requests again per slot.
        Node* node = node_of_group(it->second.slot);
        send(id, it->second, node ? *node : *fallback_, false);
    }
}

// The slot map.

void ClusterClient::refresh_soon() noexcept
{
    if (shut_down_ || refreshing_ || refresh_soon_) {
        return;
    }
    refresh_soon_ = true;  // later changes join this refresh instead of postponing it
    refresh_timer_->start(options_.refresh_retry_ms);
}

void ClusterClient::on_refresh_timer() noexcept
{
    refresh_soon_ = false;
    retire_unused_nodes();
    refreshing_ = true;
    refresh_round_++;
    asked_ = 0;
    ask_order_.clear();
    size_t n = nodes_.size();
    for (size_t i = 0; i < n; i++) {  // masters first, starting where the last round did
        Node* node = nodes_[(next_to_ask_ + i) % n].get();
        if (node->slots > 0) {
            ask_order_.push_back(node);
        }
    }
    for (auto& node : nodes_) {
        if (node->slots == 0) {
            ask_order_.push_back(node.get());
        }
    }
    next_to_ask_++;
    ask_next_node();
}

// Asks the masters of the map in turn, then the other nodes (seeds), skipping the ones known
// down, until one answers.
void ClusterClient::ask_next_node() noexcept
{
    while (asked_ < ask_order_.size()) {
        Node* node = ask_order_[asked_++];
        if (node->client->state() == ClientState::down) {
            continue;
        }
        try {
            uint64_t round = refresh_round_;
            auto submitted = node->client->submit(
                format_command({"CLUSTER", "SLOTS"}),
                [this, node, round](const CallResult& result) { on_slots(node, round, result); });
            if (submitted.status == CallStatus::ok) {
                return;
            }
        } catch (...) {
        }
    }
    refreshing_ = false;
    if (host_.on_error) {
        host_.on_error("no cluster node answered CLUSTER SLOTS");
    }
    refresh_timer_->start(options_.refresh_degraded_ms);
}

void ClusterClient::on_slots(Node* asked, uint64_t round, const CallResult& result) noexcept
{
    if (shut_down_ || round != refresh_round_ || !refreshing_) {
        return;
    }
    std::string error = "CLUSTER SLOTS failed";
    try {
        SlotMap map;
        if (result.status == CallStatus::ok
            && parse_cluster_slots(result.reply, asked->address.host, map, error)) {
            use_map(map, asked->address);
            refreshing_ = false;
            // While a master of the map is down, its replica may be elected any moment.
            bool degraded = std::any_of(nodes_.begin(), nodes_.end(), [](const auto& node) {
                return node->slots > 0 && node->client->state() == ClientState::down;
            });
            refresh_timer_->start(degraded ? options_.refresh_degraded_ms
                                           : options_.refresh_interval_ms);
            return;
        }
        if (result.status != CallStatus::ok) {
            error += ": ";
            error += to_string(result.status);
        }
    } catch (...) {
        error = "out of memory";
    }
    if (host_.on_error) {
        host_.on_error(asked->address.text() + ": " + error);
    }
    ask_next_node();
}

void ClusterClient::use_map(const SlotMap& map, const NodeAddress& asked)
{
    std::vector<Node*> owners;
    owners.reserve(map.masters.size());
    for (const NodeAddress& master : map.masters) {
        owners.push_back(&node_named(master));
    }
    bool changed = !has_map_;
    std::vector<Node*> before;
    for (auto& node : nodes_) {
        if (node->slots > 0) {
            before.push_back(node.get());
        }
        node->slots = 0;
    }
    for (int slot = 0; slot < kSlotCount; slot++) {
        int owner = map.master_of(slot);
        Node* node = owner >= 0 ? owners[size_t(owner)] : nullptr;
        changed = changed || slots_[size_t(slot)] != node;
        slots_[size_t(slot)] = node;
        if (node) {
            node->slots++;
        }
    }
    fallback_ = &node_named(asked);
    has_map_ = true;
    if (!changed) {
        return;
    }
    for (Node* owner : owners) {
        owner->client->set_probe_command(probe_for(*owner));
    }
    retire_unused_nodes();  // the asked node is the fallback: it stays
    // Told when the masters change, not for every slot a resharding moves.
    std::vector<Node*> after(owners);
    std::sort(before.begin(), before.end());
    std::sort(after.begin(), after.end());
    if (host_.on_map && (before != after || before.empty())) {
        host_.on_map(owners.size());
    }
}

// Nodes that serve no slot any more go once nothing of theirs is pending; seeds stay, to ask.
void ClusterClient::retire_unused_nodes() noexcept
{
    auto unused = [this](const std::unique_ptr<Node>& node) {
        if (node->slots > 0 || node.get() == fallback_ || node->client->pending() > 0) {
            return false;
        }
        for (int slot = 0; slot < kSlotCount; slot++) {
            if (slots_[size_t(slot)] == node.get()) {
                return false;  // named by a MOVED since the last map
            }
        }
        for (const auto& [id, pending] : pending_) {
            if (pending.node == node.get()) {
                return false;
            }
        }
        // Seeds stay, to ask when no master answers; one that is down is not probed meanwhile.
        if (node->seed && node->client->state() != ClientState::down) {
            return false;
        }
        if (host_.on_retire) {
            host_.on_retire(*node->client);
        }
        node->client->shutdown();
        if (node->seed) {
            try {
                make_client(*node);
            } catch (...) {
            }
            return false;
        }
        return true;
    };
    nodes_.erase(std::remove_if(nodes_.begin(), nodes_.end(), unused), nodes_.end());
}

// A decision like the ones requests make, on a key of one of the node's slots: a node that
// answers PING but refuses the script, or no longer serves the slot, stays down.
std::string ClusterClient::probe_for(const Node& node) const
{
    if (!options_.probe_command) {
        return {};
    }
    for (int tag = 0; tag < 1000000; tag++) {
        std::string key = options_.probe_key_prefix + "{" + std::to_string(tag) + "}";
        if (slots_[size_t(key_slot(key))] == &node) {
            return options_.probe_command(key);
        }
    }
    return {};
}

std::vector<ClusterClient::NodeView> ClusterClient::nodes(bool all) const
{
    std::vector<NodeView> out;
    for (const auto& node : nodes_) {
        if (all || node->slots > 0 || (!has_map_ && node->seed)) {
            out.push_back(NodeView{&node->address, node->client.get(), node->slots});
        }
    }
    return out;
}

}  // namespace ratelimit
