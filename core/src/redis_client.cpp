#include "ratelimit/redis_client.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <new>
#include <utility>

#include "ratelimit/resp.h"

namespace ratelimit {

// One command sent (or queued) on the connection. Entries leave the deque only when their
// reply arrives (or the connection is dropped), so replies always match in order.
struct RedisClient::Call {
    enum class Kind { user, handshake };

    CallId id = 0;
    Kind kind = Kind::user;
    const char* what = "";      // handshake: "AUTH", "SELECT" or "probe"
    int64_t submitted_ms = 0;
    int64_t queued_ms = 0;      // when the caller started waiting: the deadline runs from it
    uint64_t epoch = 0;         // failure epoch then: one stall counts once
    int64_t deadline_ms = -1;   // -1 until the call is on a ready connection
    int64_t limit_ms = 0;       // queued_ms + connect_timeout + timeout: no wait is longer

    // When the call times out: its deadline on a ready connection, else its limit.
    int64_t due_ms() const { return deadline_ms >= 0 ? deadline_ms : limit_ms; }
    Callback callback;          // empty once cancelled or timed out
    std::string command;        // kept for the NOSCRIPT fallback
    bool timed_out = false;
    bool fell_back = false;     // the NOSCRIPT fallback was sent already
};

// The calls fail_all has taken out of calls_ and not yet failed: a callback it calls may
// cancel one of them. A stack, for fail_all re-entered from a callback.
struct RedisClient::Failing {
    std::deque<Call>* calls;
    Failing* next;
};

namespace {

bool is_error(const redisReply* reply)
{
    return reply->type == REDIS_REPLY_ERROR;
}

// A master turned replica: the connection must go, so that the next one finds the master.
bool is_readonly(const redisReply* reply)
{
    return is_error(reply) && reply->len >= 8 && std::string_view(reply->str, 8) == "READONLY";
}

std::string_view error_text(const redisReply* reply)
{
    return reply->str ? std::string_view(reply->str, reply->len) : std::string_view();
}

struct ReplyDeleter {
    void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// Calls an optional statistics hook; they never throw into the client.
template <typename Hook, typename... Args>
void notify(const Hook& hook, Args... args) noexcept
{
    if (hook) {
        try {
            hook(args...);
        } catch (...) {
        }
    }
}

}  // namespace

const char* to_string(CallStatus status)
{
    switch (status) {
    case CallStatus::ok:
        return "ok";
    case CallStatus::timeout:
        return "timeout";
    case CallStatus::disconnected:
        return "disconnected";
    case CallStatus::down:
        return "down";
    case CallStatus::overloaded:
        return "overloaded";
    case CallStatus::shutdown:
        return "shutdown";
    }
    return "unknown";
}

RedisClient::RedisClient(EventLoop& loop, ClientOptions options, ClientObserver observer)
    : loop_(loop), options_(std::move(options)), observer_(std::move(observer))
{
    options_.failures_to_down = std::max(options_.failures_to_down, 1);
    options_.max_pending = std::max<size_t>(options_.max_pending, 1);
    call_timer_ = loop_.make_timer([this] { on_call_timer(); }, EventLoop::TimerKind::request);
    connect_timer_ =
        loop_.make_timer([this] { on_connect_timer(); }, EventLoop::TimerKind::request);
    probe_timer_ =
        loop_.make_timer([this] { on_probe_timer(); }, EventLoop::TimerKind::background);
}

RedisClient::~RedisClient()
{
    shutdown();
    if (reader_) {
        redisReaderFree(reader_);
        reader_ = nullptr;
    }
    transport_.reset();
}

size_t RedisClient::pending() const noexcept
{
    return calls_.size();
}

RedisClient::Submitted RedisClient::submit(std::string command, Callback callback,
                                           const Since* since)
{
    Submitted submitted = submit_call(std::move(command), std::move(callback), since);
    if (submitted.status == CallStatus::ok) {
        notify(observer_.on_sent);
    }
    return submitted;
}

RedisClient::Submitted RedisClient::submit_call(std::string command, Callback callback,
                                                const Since* since)
{
    if (shut_down_) {
        return {CallStatus::shutdown, 0};
    }
    if (state_ == ClientState::down) {
        return {CallStatus::down, 0};
    }
    if (calls_.size() >= options_.max_pending) {
        return {CallStatus::overloaded, 0};
    }

    Call call;
    call.id = next_id_;
    call.submitted_ms = loop_.now_ms();
    call.queued_ms = since ? std::min(since->ms, call.submitted_ms) : call.submitted_ms;
    call.limit_ms = call.queued_ms + options_.connect_timeout_ms + options_.timeout_ms;
    call.epoch = since ? since->epoch : failure_epoch_;
    call.callback = std::move(callback);
    call.command = std::move(command);

    if (phase_ == Phase::ready) {
        call.deadline_ms = call.queued_ms + options_.timeout_ms;
        calls_.push_back(std::move(call));
        next_id_++;
        // A broken stream reports on_closed later; the call then fails as disconnected.
        transport_->write(calls_.back().command);
        arm_call_timer_for(calls_.back().due_ms());
        return {CallStatus::ok, calls_.back().id};
    }

    if (phase_ == Phase::handshake) {
        // The handshake is on the wire already: pipeline behind it.
        calls_.push_back(std::move(call));
        next_id_++;
        transport_->write(calls_.back().command);
        arm_call_timer_for(calls_.back().due_ms());
        return {CallStatus::ok, calls_.back().id};
    }

    size_t unsent_size = unsent_.size();
    unsent_ += call.command;
    try {
        calls_.push_back(std::move(call));
    } catch (...) {
        unsent_.resize(unsent_size);
        throw;
    }
    next_id_++;
    CallId id = calls_.back().id;
    int64_t due = calls_.back().due_ms();
    if (phase_ == Phase::connecting) {
        arm_call_timer_for(due);
        return {CallStatus::ok, id};
    }

    // No connection: start one. If it cannot even start, nothing is pending on it.
    if (!start_connect()) {
        calls_.pop_back();
        unsent_.resize(unsent_size);
        record_failure("cannot start connecting to Redis", failure_epoch_);
        return {state_ == ClientState::down ? CallStatus::down : CallStatus::disconnected, 0};
    }
    arm_call_timer_for(due);
    return {CallStatus::ok, id};
}

void RedisClient::cancel(CallId id) noexcept
{
    if (id == 0) {
        return;
    }
    auto mark = [id](std::deque<Call>& calls) {
        for (Call& call : calls) {
            if (call.kind == Call::Kind::user && call.id == id) {
                Callback dropped = std::move(call.callback);
                call.callback = nullptr;
                return true;  // `dropped` is destroyed here, after the entry is marked
            }
        }
        return false;
    };
    if (mark(calls_)) {
        return;
    }
    for (Failing* f = failing_; f; f = f->next) {
        if (mark(*f->calls)) {
            return;
        }
    }
}

void RedisClient::shutdown() noexcept
{
    shut_down_ = true;
    generation_++;
    if (transport_) {
        transport_->close();
    }
    if (call_timer_) {
        call_timer_->stop();
    }
    if (connect_timer_) {
        connect_timer_->stop();
    }
    if (probe_timer_) {
        probe_timer_->stop();
    }
    phase_ = Phase::none;
    state_ = ClientState::idle;
    std::deque<Call> dropped;
    dropped.swap(calls_);
    for (const Call& call : dropped) {
        if (call.kind == Call::Kind::user) {
            notify(observer_.on_done, CallStatus::shutdown, int64_t(0));
        }
    }
    unsent_.clear();
    // `dropped` (and every callback in it) is destroyed here without being called.
}

// Connecting.

bool RedisClient::start_connect()
{
    try {
        if (!transport_) {
            transport_ = loop_.make_transport();
            if (!transport_) {
                return false;
            }
        }
    } catch (...) {
        return false;
    }
    if (reader_) {
        redisReaderFree(reader_);
    }
    reader_ = redisReaderCreate();
    if (!reader_) {
        return false;
    }
    phase_ = Phase::connecting;
    notify(observer_.on_connect);
    connect_timer_->start(options_.connect_timeout_ms);
    if (state_ != ClientState::down) {
        set_state(ClientState::connecting);
    }
    if (!transport_->connect(*this)) {
        connect_timer_->stop();
        phase_ = Phase::none;
        if (state_ != ClientState::down) {
            set_state(ClientState::idle);
        }
        return false;
    }
    return true;
}

void RedisClient::on_connected() noexcept
{
    if (shut_down_ || phase_ != Phase::connecting) {
        return;
    }
    try {
        // Handshake entries go in front of the calls queued while connecting, and their
        // bytes go first on the wire, all in one write.
        std::deque<Call> handshake;
        std::string bytes;
        auto add = [&](const char* what, std::string command) {
            Call call;
            call.kind = Call::Kind::handshake;
            call.what = what;
            call.submitted_ms = loop_.now_ms();
            bytes += command;
            handshake.push_back(std::move(call));
        };
        if (!options_.password.empty()) {
            add("AUTH", options_.user.empty()
                            ? format_command({"AUTH", options_.password})
                            : format_command({"AUTH", options_.user, options_.password}));
        }
        if (options_.db != 0) {
            add("SELECT", format_command({"SELECT", std::to_string(options_.db)}));
        }
        if (state_ == ClientState::down) {
            add("probe", options_.probe_command.empty() ? format_command({"PING"})
                                                        : options_.probe_command);
        }
        bytes += unsent_;
        for (auto it = handshake.rbegin(); it != handshake.rend(); ++it) {
            calls_.push_front(std::move(*it));
        }
        unsent_.clear();
        phase_ = Phase::handshake;
        if (!bytes.empty()) {
            transport_->write(bytes);
        }
        if (handshake.empty()) {
            become_ready();
        }
    } catch (...) {
        if (state_ == ClientState::down) {
            probe_failed("out of memory");
        } else {
            drop_connection("out of memory while connecting to Redis", CallStatus::disconnected,
                            true);
        }
    }
}

void RedisClient::become_ready()
{
    phase_ = Phase::ready;
    connect_timer_->stop();
    if (state_ == ClientState::down) {
        failures_ = 0;
        probe_timer_->stop();
    }
    // The calls queued while connecting get `timeout` from now, within the wait they had left.
    int64_t deadline = loop_.now_ms() + options_.timeout_ms;
    for (Call& call : calls_) {
        if (call.kind == Call::Kind::user && call.deadline_ms < 0) {
            call.deadline_ms = std::min(deadline, call.limit_ms);
        }
    }
    set_state(ClientState::up);
    if (!shut_down_ && phase_ == Phase::ready) {
        arm_call_timer();
    }
}

void RedisClient::on_connect_timer() noexcept
{
    if (shut_down_ || phase_ == Phase::none || phase_ == Phase::ready) {
        return;
    }
    if (state_ == ClientState::down) {
        probe_failed("Redis probe: connect timeout");
        return;
    }
    connect_timed_out();
}

// A connection attempt that took connect_timeout is a failure. If nothing was sent yet, the
// calls whose callers may still wait (within connect_timeout + timeout of `since`) wait for a
// new attempt at once, so that a slow first answer (a sentinel that hangs, a name lookup)
// costs the attempt, not them.
void RedisClient::connect_timed_out() noexcept
{
    static constexpr std::string_view why = "Redis connect timeout";
    int64_t now = loop_.now_ms();
    auto may_wait = [now](const Call& call) {
        return call.kind == Call::Kind::user && call.callback && !call.timed_out
               && call.limit_ms > now;
    };
    if (phase_ != Phase::connecting || failures_ + 1 >= options_.failures_to_down
        || std::none_of(calls_.begin(), calls_.end(), may_wait)) {
        drop_connection(why, CallStatus::timeout, true);
        return;
    }
    log_error(why);
    close_connection();
    failures_++;
    failure_epoch_++;
    std::deque<Call> failed;
    try {
        std::deque<Call> all;
        all.swap(calls_);
        for (Call& call : all) {
            if (may_wait(call)) {
                unsent_ += call.command;
                calls_.push_back(std::move(call));
            } else if (call.kind == Call::Kind::user) {
                failed.push_back(std::move(call));
            }
        }
    } catch (...) {
        unsent_.clear();
        fail_all(CallStatus::timeout);
        return;
    }
    if (start_connect()) {
        arm_call_timer();
    } else {
        log_error("cannot start connecting to Redis");
        unsent_.clear();
        for (Call& call : calls_) {
            failed.push_back(std::move(call));
        }
        calls_.clear();
        set_state(ClientState::idle);
    }
    fail_calls(failed, CallStatus::timeout);
}

void RedisClient::on_probe_timer() noexcept
{
    if (shut_down_ || state_ != ClientState::down || phase_ != Phase::none) {
        return;
    }
    if (!start_connect()) {
        log_error("Redis probe: cannot start connecting");
        probe_timer_->start(options_.probe_interval_ms);
    }
}

void RedisClient::probe_failed(std::string_view reason) noexcept
{
    log_error(reason);
    close_connection();
    fail_all(CallStatus::disconnected);  // nothing but handshake entries: no callbacks
    if (!shut_down_ && state_ == ClientState::down) {
        probe_timer_->start(options_.probe_interval_ms);
    }
}

// Replies.

void RedisClient::on_data(const char* data, size_t len) noexcept
{
    if (shut_down_ || phase_ == Phase::none || !reader_) {
        return;
    }
    uint64_t generation = generation_;
    try {
        if (redisReaderFeed(reader_, data, len) != REDIS_OK) {
            drop_connection("Redis reader: out of memory", CallStatus::disconnected, true);
            return;
        }
        while (generation == generation_ && !shut_down_) {
            void* reply = nullptr;
            if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
                std::string message = "Redis protocol error: ";
                message += reader_->errstr;
                drop_connection(message, CallStatus::disconnected, true);
                return;
            }
            if (!reply) {
                return;
            }
            handle_reply(static_cast<redisReply*>(reply));
        }
    } catch (...) {
        if (generation == generation_ && !shut_down_) {
            drop_connection("out of memory reading from Redis", CallStatus::disconnected, true);
        }
    }
}

void RedisClient::handle_reply(redisReply* raw)
{
    ReplyPtr reply(raw);
    if (calls_.empty()) {
        drop_connection("unexpected reply from Redis", CallStatus::disconnected, true);
        return;
    }

    Call& front = calls_.front();
    if (front.kind == Call::Kind::handshake) {
        std::string what = front.what;
        calls_.pop_front();
        if (is_error(reply.get())) {
            std::string message = "Redis " + what + " failed: ";
            message += error_text(reply.get());
            if (state_ == ClientState::down) {
                probe_failed(message);
            } else {
                drop_connection(message, CallStatus::disconnected, true);
            }
            return;
        }
        if (calls_.empty() || calls_.front().kind != Call::Kind::handshake) {
            become_ready();
        }
        return;
    }

    int64_t now = loop_.now_ms();
    bool noscript = is_noscript(reply.get());
    if (noscript && options_.noscript_fallback && front.callback && !front.fell_back
        && !front.timed_out) {
        std::string fallback = options_.noscript_fallback(front.command);
        if (!fallback.empty()) {
            // Append first (push_back keeps references valid): if it throws, nothing moved.
            // The deadline stays: the timeout covers the protocol's own retries.
            calls_.push_back(std::move(front));
            calls_.pop_front();
            Call& again = calls_.back();
            again.command = std::move(fallback);
            again.fell_back = true;
            transport_->write(again.command);
            arm_call_timer_for(again.due_ms());
            return;
        }
    }

    Call call = std::move(front);
    calls_.pop_front();
    last_latency_ms_ = now - call.submitted_ms;
    notify(observer_.on_done, CallStatus::ok, last_latency_ms_);
    bool error = is_error(reply.get()) && !noscript && !is_redirect(reply.get());
    if (error) {
        notify(observer_.on_error_reply);
    }
    if (!call.timed_out && !error && !noscript) {  // a redirect: the node answered
        failures_ = 0;
    }
    if (calls_.empty()) {
        call_timer_->stop();
    }

    uint64_t generation = generation_;
    if (call.callback) {
        CallResult result;
        result.status = CallStatus::ok;
        result.reply = reply.get();
        invoke(call.callback, result);
        if (generation != generation_ || shut_down_) {
            return;
        }
    }
    if (error && !call.timed_out) {
        std::string message = "Redis error reply: ";
        message += error_text(reply.get());
        if (is_readonly(reply.get())) {
            count_failure(call.epoch);
            drop_connection(message, CallStatus::disconnected, false);
            return;
        }
        record_failure(message, call.epoch);
    }
}

// Timeouts.

// Deadlines need not grow in queue order (a NOSCRIPT or MOVED re-send keeps its older one):
// the timer follows the earliest of them all.
void RedisClient::arm_call_timer()
{
    bool any = false;
    int64_t earliest = 0;
    for (const Call& call : calls_) {
        if (call.kind == Call::Kind::user && !call.timed_out
            && (!any || call.due_ms() < earliest)) {
            earliest = call.due_ms();
            any = true;
        }
    }
    call_timer_->stop();
    if (any) {
        arm_call_timer_for(earliest);
    }
}

// Makes the timer fire by `due` at the latest.
void RedisClient::arm_call_timer_for(int64_t due)
{
    if (call_timer_->armed() && call_timer_due_ms_ <= due) {
        return;
    }
    call_timer_due_ms_ = due;
    call_timer_->start(std::max<int64_t>(due - loop_.now_ms(), 0));
}

void RedisClient::on_call_timer() noexcept
{
    if (shut_down_ || phase_ == Phase::none) {
        return;
    }
    uint64_t generation = generation_;
    int64_t now = loop_.now_ms();
    int expired = 0;
    // Callbacks may submit (push_back) or cancel (mark) but cannot remove entries without
    // bumping the generation, so indexes stay valid.
    for (size_t i = 0; i < calls_.size(); i++) {
        Call& call = calls_[i];
        if (call.kind != Call::Kind::user || call.timed_out || call.due_ms() > now) {
            continue;
        }
        call.timed_out = true;
        // Only a call on a ready connection timed out on Redis; a slow connection is the
        // connect timer's to count.
        if (call.deadline_ms >= 0) {
            count_failure(call.epoch);
        }
        expired++;
        notify(observer_.on_timeout);
        Callback callback = std::move(call.callback);
        call.callback = nullptr;
        if (callback) {
            CallResult result;
            result.status = CallStatus::timeout;
            invoke(callback, result);
            if (generation != generation_ || shut_down_) {
                return;
            }
        }
    }
    if (expired > 0) {
        std::string message = "Redis call timed out";
        if (expired > 1) {
            message = std::to_string(expired) + " Redis calls timed out";
        }
        if (failures_ >= options_.failures_to_down && phase_ == Phase::ready) {
            drop_connection(message, CallStatus::disconnected, false);
            return;
        }
        log_error(message);
    }
    try {
        arm_call_timer();
    } catch (...) {
    }
}

// Failures.

void RedisClient::on_closed(std::string_view reason) noexcept
{
    if (shut_down_ || phase_ == Phase::none) {
        return;
    }
    std::string message;
    try {
        message = phase_ == Phase::connecting ? "cannot connect to Redis: "
                                              : "Redis connection closed: ";
        message.append(reason.data(), reason.size());
    } catch (...) {
    }
    if (state_ == ClientState::down) {
        probe_failed(message);
        return;
    }
    bool failure = phase_ != Phase::ready || !calls_.empty();
    drop_connection(message, CallStatus::disconnected, failure);
}

// Counts a failed round trip. Calls that were waiting when a failure was counted were caught
// in that same stall (they queue behind it on the one connection): one stall, one failure.
bool RedisClient::count_failure(uint64_t epoch) noexcept
{
    if (epoch != failure_epoch_) {
        return false;
    }
    failures_++;
    failure_epoch_++;
    return true;
}

void RedisClient::record_failure(std::string_view what, uint64_t epoch) noexcept
{
    count_failure(epoch);
    if (failures_ >= options_.failures_to_down && phase_ != Phase::none) {
        drop_connection(what, CallStatus::disconnected, false);
        return;
    }
    log_error(what);
    if (failures_ >= options_.failures_to_down && state_ != ClientState::down) {
        set_state(ClientState::down);
        if (!shut_down_ && state_ == ClientState::down) {
            probe_timer_->start(options_.probe_interval_ms);
        }
    }
}

void RedisClient::drop_connection(std::string_view reason, CallStatus status,
                                  bool failure) noexcept
{
    log_error(reason);
    close_connection();
    if (failure) {
        failures_++;
        failure_epoch_++;
    }
    bool open = failures_ >= options_.failures_to_down;
    set_state(open ? ClientState::down : ClientState::idle);
    if (open && !shut_down_ && state_ == ClientState::down && !probe_timer_->armed()
        && phase_ == Phase::none) {
        probe_timer_->start(options_.probe_interval_ms);
    }
    fail_all(status);
}

void RedisClient::close_connection() noexcept
{
    generation_++;
    if (transport_) {
        transport_->close();
    }
    phase_ = Phase::none;
    call_timer_->stop();
    connect_timer_->stop();
    unsent_.clear();
}

void RedisClient::fail_all(CallStatus status) noexcept
{
    // Re-entrant submits land in the fresh calls_ (and start a new connection).
    std::deque<Call> failed;
    failed.swap(calls_);
    fail_calls(failed, status);
}

// Calls each callback of `failed` (taken out of calls_) with `status`; a callback may cancel
// one of the others.
void RedisClient::fail_calls(std::deque<Call>& failed, CallStatus status) noexcept
{
    Failing failing{&failed, failing_};
    failing_ = &failing;
    while (!failed.empty() && !shut_down_) {
        Callback callback = std::move(failed.front().callback);
        bool timed_out = failed.front().timed_out;
        if (failed.front().kind == Call::Kind::user) {
            notify(observer_.on_done, status, int64_t(0));
        }
        failed.pop_front();
        if (callback && !timed_out) {
            CallResult result;
            result.status = status;
            invoke(callback, result);
        }
    }
    failing_ = failing.next;
}

void RedisClient::set_state(ClientState state) noexcept
{
    if (state_ == state) {
        return;
    }
    state_ = state;
    if (observer_.on_state) {
        try {
            observer_.on_state(state);
        } catch (...) {
        }
    }
}

void RedisClient::log_error(std::string_view message) noexcept
{
    if (observer_.on_error) {
        try {
            observer_.on_error(message);
        } catch (...) {
        }
    }
}

void RedisClient::invoke(Callback& callback, const CallResult& result) noexcept
{
    try {
        callback(result);
    } catch (...) {
        log_error("a Redis call's callback threw an exception");
    }
}

}  // namespace ratelimit
