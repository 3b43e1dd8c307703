// An asynchronous, pipelined Redis client over one persistent connection.
// hiredis formats and parses; this class matches replies to calls in order, enforces
// timeouts, reconnects, and opens a circuit breaker when Redis keeps failing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ratelimit/transport.h"

struct redisReader;
struct redisReply;

namespace ratelimit {

struct ClientOptions {
    int64_t connect_timeout_ms = 200;
    int64_t timeout_ms = 100;
    size_t max_pending = 4096;     // calls in flight or queued; beyond: CallStatus::overloaded
    int failures_to_down = 3;      // consecutive failures that open the breaker
    int64_t probe_interval_ms = 1000;
    std::string user;              // AUTH user password (Redis 6 ACL); empty: password only
    std::string password;          // empty: no AUTH
    int db = 0;                    // SELECT when non-zero
    // When set, a call whose reply is a NOSCRIPT error is sent again, under the same id, as
    // noscript_fallback(original command) (EVALSHA -> EVAL, see script.h).
    std::function<std::string(std::string_view command)> noscript_fallback;
    // What the breaker's probe sends once a second while Redis is down: a call like the ones
    // requests make, so a server that answers PING but refuses scripts (READONLY, OOM,
    // NOPERM) stays down. Empty: PING.
    std::string probe_command;
};

enum class CallStatus {
    ok,            // a reply arrived (it may be an error reply)
    timeout,       // no reply within timeout_ms (or connect_timeout_ms while connecting)
    disconnected,  // the connection failed while the call waited
    down,          // the breaker is open: refused at once, Redis is being probed
    overloaded,    // too many calls pending
    shutdown,      // the client is shutting down
};

const char* to_string(CallStatus status);

enum class ClientState { idle, connecting, up, down };

struct CallResult {
    CallStatus status = CallStatus::ok;
    const redisReply* reply = nullptr;  // only with ok; valid during the callback only
};

using CallId = uint64_t;
using Callback = std::function<void(const CallResult&)>;

// Hooks for the host's log and statistics; all optional.
struct ClientObserver {
    std::function<void(std::string_view message)> on_error;    // connection problems
    std::function<void(ClientState)> on_state;                  // state changes
    std::function<void()> on_sent;  // submit accepted a call
    // A call left the client: ok (its reply arrived, after latency_ms), disconnected (its
    // connection failed) or shutdown (dropped). Once per call accepted by submit.
    std::function<void(CallStatus, int64_t latency_ms)> on_done;
    std::function<void()> on_timeout;      // a call's timeout expired (a reply may follow)
    std::function<void()> on_error_reply;  // an error reply, NOSCRIPT excepted
    std::function<void()> on_connect;      // a connection attempt starts (probes included)
};

class RedisClient final : private TransportSink {
public:
    RedisClient(EventLoop& loop, ClientOptions options, ClientObserver observer = {});
    ~RedisClient() override;
    RedisClient(const RedisClient&) = delete;
    RedisClient& operator=(const RedisClient&) = delete;

    struct Submitted {
        CallStatus status;  // ok: the callback will be called exactly once, later
        CallId id;
    };
    // Sends one RESP-encoded command (see redisFormatCommand). Never calls `callback`
    // synchronously: any immediate failure is returned instead, and the callback dropped.
    // `since` (default: now) is when the caller started waiting: the timeout runs from then
    // and covers the NOSCRIPT resend, and a failure counted after it is the same stall. A
    // call queued while connecting gets `timeout` once the connection is up, and never waits
    // longer than connect_timeout + timeout from `since`.
    struct Since {
        int64_t ms;      // loop time
        uint64_t epoch;  // failure_epoch() then
    };
    Submitted submit(std::string command, Callback callback, const Since* since = nullptr);

    // Bumped whenever a failed round trip is counted.
    uint64_t failure_epoch() const noexcept { return failure_epoch_; }

    // The callback of `id` will never be called. Safe for finished or unknown ids.
    void cancel(CallId id) noexcept;

    // Closes the connection and stops every timer; pending callbacks are dropped, not
    // called (an exiting nginx worker must not touch its requests).
    void shutdown() noexcept;

    // Replaces ClientOptions::probe_command (a cluster node's probe names a key of its slots).
    void set_probe_command(std::string command) { options_.probe_command = std::move(command); }

    ClientState state() const noexcept { return state_; }
    size_t pending() const noexcept;
    int64_t last_latency_ms() const noexcept { return last_latency_ms_; }

private:
    struct Call;
    struct Failing;
    // Where the current connection is; state_ is what the host sees. While the breaker is
    // open (state_ == down) a phase other than none means a probe is under way.
    enum class Phase { none, connecting, handshake, ready };

    Submitted submit_call(std::string command, Callback callback, const Since* since);
    void on_connected() noexcept override;
    void on_data(const char* data, size_t len) noexcept override;
    void on_closed(std::string_view reason) noexcept override;

    bool start_connect();
    void become_ready();
    void handle_reply(redisReply* reply);
    void on_call_timer() noexcept;
    void on_connect_timer() noexcept;
    void on_probe_timer() noexcept;
    void arm_call_timer();
    void arm_call_timer_for(int64_t due_ms);
    void close_connection() noexcept;
    void fail_all(CallStatus status) noexcept;
    void fail_calls(std::deque<Call>& failed, CallStatus status) noexcept;
    void connect_timed_out() noexcept;
    bool count_failure(uint64_t epoch) noexcept;
    void record_failure(std::string_view what, uint64_t epoch) noexcept;
    void set_state(ClientState state) noexcept;
    void drop_connection(std::string_view reason, CallStatus status, bool failure) noexcept;
    void probe_failed(std::string_view reason) noexcept;
    void log_error(std::string_view message) noexcept;
    void invoke(Callback& callback, const CallResult& result) noexcept;

    EventLoop& loop_;
    ClientOptions options_;
    ClientObserver observer_;
    std::unique_ptr<Transport> transport_;  // made once, reused for every connection
    std::unique_ptr<Timer> call_timer_;
    std::unique_ptr<Timer> connect_timer_;
    std::unique_ptr<Timer> probe_timer_;
    redisReader* reader_ = nullptr;
    std::deque<Call> calls_;        // in submission order; replies arrive in this order
    std::string unsent_;            // commands queued while connecting
    Failing* failing_ = nullptr;    // calls fail_all is failing, still cancellable
    CallId next_id_ = 1;
    ClientState state_ = ClientState::idle;
    Phase phase_ = Phase::none;
    uint64_t generation_ = 0;       // bumped when the connection is closed or shut down
    int failures_ = 0;
    uint64_t failure_epoch_ = 0;
    int64_t last_latency_ms_ = -1;
    int64_t call_timer_due_ms_ = 0;  // when call_timer_ fires, while it is armed
    bool shut_down_ = false;
};

}  // namespace ratelimit
