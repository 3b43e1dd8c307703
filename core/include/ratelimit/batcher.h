// Coalesced decisions: the requests a worker decides in one event-loop iteration travel to
// Redis in one script call, and the ones that arrive while earlier calls are on their way
// join the next call, which leaves as soon as a call comes back (never later than one round
// trip; with wait_ms, a new call first waits that long for more requests). Outcomes are
// exactly those of deciding the requests one by one, in arrival order.
// Calls are made per group of the CallRouter (a hash slot in cluster mode): a request whose
// limits span several groups is decided per group, each part all or nothing, and passes only
// if every part passes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ratelimit/call_router.h"
#include "ratelimit/redis_client.h"
#include "ratelimit/script.h"

namespace ratelimit {

struct BatcherOptions {
    size_t max_requests = 128;   // per script call: keeps one call short for Redis
    size_t max_in_flight = 2;    // script calls on the wire at once, per group
    size_t max_waiting = 16384;  // requests queued or in flight; beyond: overloaded
    int64_t wait_ms = 0;         // batch_wait=: a call leaves this long after its first
                                 // request (or when full), to fill; 0: at once
};

// What one request learns.
struct Verdict {
    bool decided = false;              // false: Redis could not decide; see status and error
    CallStatus status = CallStatus::ok;  // why not (ok: an error reply or a malformed one)
    std::string_view error;            // Redis's error text or the reply problem
    bool allowed = false;
    int64_t now_ms = 0;                // Redis time of the decision
    int64_t sent_ms = 0;               // monotonic_ms() when the call was sent, or earlier
    const int64_t* levels = nullptr;   // per limit, after the decision
};

// Called once per request, never from inside decide(). `owner` is what decide() was given.
using VerdictHandler = void (*)(void* owner, const Verdict& verdict) noexcept;

// Called when a script call leaves, with the number of requests it carries.
using BatchObserver = void (*)(size_t requests) noexcept;

// Milliseconds of the host's monotonic clock, read fresh (not an event loop's cached time):
// the same clock for every process of the host.
int64_t monotonic_ms() noexcept;

class Batcher {
public:
    Batcher(EventLoop& loop, CallRouter& router, BatcherOptions options = {},
            BatchObserver on_send = nullptr);
    // One Redis.
    Batcher(EventLoop& loop, RedisClient& client, BatcherOptions options = {},
            BatchObserver on_send = nullptr);
    ~Batcher();
    Batcher(const Batcher&) = delete;
    Batcher& operator=(const Batcher&) = delete;

    struct Queued {
        CallStatus status;  // ok: `handler` will be called exactly once, later
        uint64_t id;
    };
    // Queues one request (its keys distinct). Any immediate refusal (down: the node of one of
    // its groups; overloaded; shutdown) is returned instead of calling `handler`. May throw
    // std::bad_alloc.
    Queued decide(const ScriptLimit* limits, size_t n, VerdictHandler handler, void* owner);

    // The request's handler will never be called. Safe for finished or unknown ids. A request
    // whose call is on its way is still decided by Redis; only its verdict is dropped.
    void cancel(uint64_t id) noexcept;

    // Drops every request without calling its handler and stops sending.
    void shutdown() noexcept;

    size_t waiting() const noexcept { return waiting_; }
    size_t in_flight() const noexcept { return in_flight_; }

private:
    struct Waiter {
        uint64_t id;
        VerdictHandler handler;  // nullptr once cancelled
        void* owner;
    };
    struct Batch {
        int group = 0;
        ScriptBatch script;
        std::vector<Waiter> waiters;
        RedisClient::Since since{};  // of its first request
        int64_t sent_ms = 0;
        int64_t ready_ms = 0;  // the loop's time it may leave from (wait_ms), unless full
        CallId call = 0;
        bool sent = false;
    };

    struct Split;
    struct Part;

    Batcher(EventLoop& loop, std::unique_ptr<CallRouter> own, CallRouter* router,
            BatcherOptions options, BatchObserver on_send);
    Queued route(const ScriptLimit* limits, size_t n, VerdictHandler handler, void* owner,
                 bool declared, uint64_t id, const RedisClient::Since* since);

    // `id` 0: a new one. `since`: of an earlier call whose requests go again, in a batch of
    // their own.
    uint64_t queue(int group, const ScriptLimit* limits, size_t n, VerdictHandler handler,
                   void* owner, uint64_t id = 0, const RedisClient::Since* since = nullptr);
    Queued decide_split(const ScriptLimit* limits, size_t n, VerdictHandler handler,
                        void* owner, bool declared, uint64_t id,
                        const RedisClient::Since* since);
    void requeue(Batch& batch, bool declared) noexcept;
    static void on_part(void* part, const Verdict& verdict) noexcept;
    void cancel_waiter(uint64_t id) noexcept;
    Batch& open_batch(int group, const RedisClient::Since* since = nullptr);
    void close_empty(Batch& batch) noexcept;
    void flush() noexcept;
    bool ready(const Batch& batch, int64_t now) const noexcept;
    bool send(Batch& batch) noexcept;  // false: it failed at once and was recycled
    void on_reply(Batch* batch, const CallResult& result) noexcept;
    void fail(Batch& batch, CallStatus status, std::string_view error) noexcept;
    void deliver(Waiter& waiter, const Verdict& verdict) noexcept;
    void recycle(Batch* batch) noexcept;

    EventLoop& loop_;
    std::unique_ptr<CallRouter> own_router_;  // one Redis
    CallRouter& router_;
    BatcherOptions options_;
    BatchObserver on_send_;
    std::unique_ptr<Timer> flush_timer_;  // started with 0: after this iteration's events
    std::deque<std::unique_ptr<Batch>> batches_;  // in flight first, then waiting to leave
    std::vector<std::unique_ptr<Batch>> spare_;   // cleared batches, buffers kept
    std::unordered_map<int, Batch*> open_;        // per group: the batch new requests join
    std::unordered_map<int, size_t> flying_;      // per group: calls on the wire
    std::unordered_map<uint64_t, std::unique_ptr<Split>> splits_;  // by request id
    std::vector<int> groups_;                     // of the request being queued
    BatchReply reply_;
    size_t command_capacity_ = 256;
    uint64_t next_id_ = 1;
    size_t waiting_ = 0;
    size_t in_flight_ = 0;
    bool shut_down_ = false;
};

}  // namespace ratelimit
