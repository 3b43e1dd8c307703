// Where the batcher's script calls go. Calls travel in groups: every key of one call is in the
// same group, and each group has its own queue and its own calls in flight. One Redis has one
// group; a Redis Cluster has one per master (node-wide calls, Redis 7+) or per hash slot.
#pragma once

#include <string>
#include <string_view>

#include "ratelimit/redis_client.h"
#include "ratelimit/script.h"

namespace ratelimit {

class CallRouter {
public:
    virtual ~CallRouter() = default;
    virtual int group_of(std::string_view key) const noexcept = 0;
    // The group of calls that declare their keys (KEYS), one slot each in a cluster.
    virtual int slot_group_of(std::string_view key) const noexcept { return group_of(key); }
    // The form of script the calls of `group` take.
    virtual ScriptForm form(int group) const noexcept
    {
        (void) group;
        return ScriptForm::keys_declared;
    }
    // A node-wide call of `group` failed with `error` before writing anything: true if its
    // requests are to go again in calls that declare their keys (a key was not on the node, or
    // the server takes no node-wide calls).
    virtual bool retry_declared(int group, std::string_view error) noexcept
    {
        (void) group;
        (void) error;
        return false;
    }
    // False once the node of `group` has left the map since calls were queued for it: their
    // requests are routed again (group_of tells where to now).
    virtual bool routes(int group) const noexcept
    {
        (void) group;
        return true;
    }
    // False while the node serving `group` is down: its requests take the failure mode at once.
    virtual bool available(int group) const noexcept = 0;
    // Now, as a call of `group` queued now would be timed and counted.
    virtual RedisClient::Since since(int group) const noexcept = 0;
    // As RedisClient::submit, to the node serving `group`.
    virtual RedisClient::Submitted submit(int group, std::string command, Callback callback,
                                          const RedisClient::Since* since) = 0;
    virtual void cancel(CallId id) noexcept = 0;
};

// One Redis: a single group.
class SingleRedis final : public CallRouter {
public:
    SingleRedis(EventLoop& loop, RedisClient& client) : loop_(loop), client_(client) {}

    int group_of(std::string_view) const noexcept override { return 0; }
    bool available(int) const noexcept override { return client_.state() != ClientState::down; }
    RedisClient::Since since(int) const noexcept override
    {
        return RedisClient::Since{loop_.now_ms(), client_.failure_epoch()};
    }
    RedisClient::Submitted submit(int, std::string command, Callback callback,
                                  const RedisClient::Since* since) override
    {
        return client_.submit(std::move(command), std::move(callback), since);
    }
    void cancel(CallId id) noexcept override { client_.cancel(id); }

private:
    EventLoop& loop_;
    RedisClient& client_;
};

}  // namespace ratelimit
