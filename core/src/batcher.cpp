#include "ratelimit/batcher.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace ratelimit {
namespace {

constexpr size_t kSpareBatches = 4;

}  // namespace

int64_t monotonic_ms() noexcept
{
    using namespace std::chrono;
    return duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count();
}

Batcher::Batcher(EventLoop& loop, RedisClient& client, BatcherOptions options,
                 BatchObserver on_send)
    : loop_(loop), client_(client), options_(options), on_send_(on_send)
{
    options_.max_requests = std::max<size_t>(options_.max_requests, 1);
    options_.max_in_flight = std::max<size_t>(options_.max_in_flight, 1);
    flush_timer_ = loop_.make_timer([this] { flush(); }, EventLoop::TimerKind::request);
}

Batcher::~Batcher()
{
    shutdown();
}

Batcher::Queued Batcher::decide(const ScriptLimit* limits, size_t n, VerdictHandler handler,
                                void* owner)
{
    if (shut_down_) {
        return {CallStatus::shutdown, 0};
    }
    if (client_.state() == ClientState::down) {
        return {CallStatus::down, 0};
    }
    if (waiting_ >= options_.max_waiting) {
        return {CallStatus::overloaded, 0};
    }
    Batch& batch = open_batch();
    batch.waiters.reserve(options_.max_requests);
    batch.script.add_request(limits, n);
    uint64_t id = next_id_++;
    batch.waiters.push_back(Waiter{id, handler, owner});
    waiting_++;
    if (!flush_timer_->armed()) {
        flush_timer_->start(0);
    }
    return {CallStatus::ok, id};
}

// The batch new requests join: the last one, unless it left already or is full.
Batcher::Batch& Batcher::open_batch()
{
    if (!batches_.empty()) {
        Batch& last = *batches_.back();
        if (!last.sent && last.waiters.size() < options_.max_requests) {
            return last;
        }
    }
    std::unique_ptr<Batch> batch;
    if (!spare_.empty()) {
        batch = std::move(spare_.back());
        spare_.pop_back();
    } else {
        batch = std::make_unique<Batch>();
    }
    batch->since = RedisClient::Since{loop_.now_ms(), client_.failure_epoch()};
    batches_.push_back(std::move(batch));
    return *batches_.back();
}

void Batcher::cancel(uint64_t id) noexcept
{
    if (id == 0) {
        return;
    }
    for (auto& batch : batches_) {
        for (Waiter& waiter : batch->waiters) {
            if (waiter.id == id) {
                if (waiter.handler) {
                    waiter.handler = nullptr;
                    waiting_--;
                }
                return;
            }
        }
    }
}

void Batcher::shutdown() noexcept
{
    shut_down_ = true;
    if (flush_timer_) {
        flush_timer_->stop();
    }
    for (auto& batch : batches_) {
        if (batch->sent) {
            client_.cancel(batch->call);
        }
    }
    batches_.clear();
    spare_.clear();
    waiting_ = 0;
    in_flight_ = 0;
}

// Sends the batches waiting to leave, as many as may be on the wire at once.
void Batcher::flush() noexcept
{
    while (!shut_down_ && in_flight_ < options_.max_in_flight) {
        auto it = std::find_if(batches_.begin(), batches_.end(),
                               [](const auto& b) { return !b->sent; });
        if (it == batches_.end()) {
            return;
        }
        send(**it);
    }
}

void Batcher::send(Batch& batch) noexcept
{
    Batch* b = &batch;
    try {
        std::string command;
        command.reserve(command_capacity_);
        b->script.append_evalsha(command);
        command_capacity_ = std::max(command_capacity_, command.size());
        b->sent = true;
        b->sent_ms = monotonic_ms();
        auto submitted = client_.submit(
            std::move(command), [this, b](const CallResult& result) { on_reply(b, result); },
            &b->since);
        if (submitted.status != CallStatus::ok) {
            fail(*b, submitted.status, {});
            recycle(b);
            return;
        }
        b->call = submitted.id;
        in_flight_++;
        if (on_send_) {
            on_send_(b->waiters.size());
        }
    } catch (...) {
        b->sent = true;
        fail(*b, CallStatus::overloaded, "out of memory");
        recycle(b);
    }
}

void Batcher::on_reply(Batch* batch, const CallResult& result) noexcept
{
    in_flight_--;
    if (result.status != CallStatus::ok) {
        fail(*batch, result.status, {});
    } else {
        std::string error;
        bool parsed = false;
        try {
            parsed = parse_batch_reply(result.reply, batch->script, reply_, error);
        } catch (...) {
            error = "out of memory";
        }
        if (!parsed) {
            fail(*batch, CallStatus::ok, error);
        } else {
            Verdict verdict;
            verdict.decided = true;
            verdict.now_ms = reply_.now_ms;
            verdict.sent_ms = batch->sent_ms;
            // Index loop: a handler may queue requests (into another batch) or cancel.
            for (size_t i = 0; i < batch->waiters.size() && !shut_down_; i++) {
                verdict.allowed = reply_.allowed[i] != 0;
                verdict.levels = reply_.levels.data() + reply_.first[i];
                deliver(batch->waiters[i], verdict);
            }
        }
    }
    if (shut_down_) {
        return;
    }
    recycle(batch);
    if (!flush_timer_->armed()) {
        flush_timer_->start(0);
    }
}

void Batcher::fail(Batch& batch, CallStatus status, std::string_view error) noexcept
{
    Verdict verdict;
    verdict.status = status;
    verdict.error = error;
    verdict.sent_ms = batch.sent_ms;
    for (size_t i = 0; i < batch.waiters.size() && !shut_down_; i++) {
        deliver(batch.waiters[i], verdict);
    }
}

void Batcher::deliver(Waiter& waiter, const Verdict& verdict) noexcept
{
    VerdictHandler handler = waiter.handler;
    if (handler == nullptr) {
        return;
    }
    waiter.handler = nullptr;
    waiting_--;
    handler(waiter.owner, verdict);
}

void Batcher::recycle(Batch* batch) noexcept
{
    auto it = std::find_if(batches_.begin(), batches_.end(),
                           [batch](const auto& b) { return b.get() == batch; });
    if (it == batches_.end()) {
        return;
    }
    std::unique_ptr<Batch> owned = std::move(*it);
    batches_.erase(it);
    if (spare_.size() < kSpareBatches) {
        owned->script.clear();
        owned->waiters.clear();
        owned->call = 0;
        owned->sent = false;
        try {
            spare_.push_back(std::move(owned));
        } catch (...) {
        }
    }
}

}  // namespace ratelimit
