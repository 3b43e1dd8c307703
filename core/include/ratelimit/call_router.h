// Where the batcher's script calls go. Calls travel in groups: every key of one call is in the
// same group, and each group has its own queue and its own calls in flight. One Redis has one
// group; a Redis Cluster has one per hash slot, routed to the master serving it.
#pragma once

#include <string>
#include <string_view>

#include "ratelimit/redis_client.h"

namespace ratelimit {

class CallRouter {
public:
    virtual ~CallRouter() = default;
    virtual int group_of(std::string_view key) const noexcept = 0;
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
