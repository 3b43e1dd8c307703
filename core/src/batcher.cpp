#include "ratelimit/batcher.h"

#include <hiredis/hiredis.h>

#include <algorithm>
#include <chrono>
#include <climits>
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

// A request whose limits span several groups: one part per group, merged when all are back.
struct Batcher::Part {
    Split* split;
    size_t first;  // its limits are split->order[first, end)
    size_t end;
};

struct Batcher::Split {
    uint64_t id = 0;
    VerdictHandler handler = nullptr;
    void* owner = nullptr;
    Batcher* batcher = nullptr;
    std::vector<size_t> order;    // limit indices, grouped by part
    std::vector<Part> parts;
    std::vector<uint64_t> part_ids;
    std::vector<int64_t> levels;  // per limit of the request
    size_t remaining = 0;
    Verdict merged;
    std::string error;
};

Batcher::Batcher(EventLoop& loop, CallRouter& router, BatcherOptions options,
                 BatchObserver on_send)
    : Batcher(loop, nullptr, &router, options, on_send)
{
}

Batcher::Batcher(EventLoop& loop, RedisClient& client, BatcherOptions options,
                 BatchObserver on_send)
    : Batcher(loop, std::make_unique<SingleRedis>(loop, client), nullptr, options, on_send)
{
}

// `router`, or else `own`, which the batcher keeps.
Batcher::Batcher(EventLoop& loop, std::unique_ptr<CallRouter> own, CallRouter* router,
                 BatcherOptions options, BatchObserver on_send)
    : loop_(loop), own_router_(std::move(own)), router_(router ? *router : *own_router_),
      options_(options), on_send_(on_send)
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
    if (waiting_ >= options_.max_waiting) {
        return {CallStatus::overloaded, 0};
    }
    return route(limits, n, handler, owner, false, 0, nullptr);
}

// Queues a request into the call of its group, or splits it over several. `declared`: by
// slot (calls that declare their keys), else by the router's groups.
Batcher::Queued Batcher::route(const ScriptLimit* limits, size_t n, VerdictHandler handler,
                               void* owner, bool declared, uint64_t id,
                               const RedisClient::Since* since)
{
    auto group_of = [this, declared](std::string_view key) {
        return declared ? router_.slot_group_of(key) : router_.group_of(key);
    };
    int group = n > 0 ? group_of(limits[0].key) : 0;
    for (size_t i = 1; i < n; i++) {
        if (group_of(limits[i].key) != group) {
            return decide_split(limits, n, handler, owner, declared, id, since);
        }
    }
    if (!router_.available(group)) {
        return {CallStatus::down, 0};
    }
    return {CallStatus::ok, queue(group, limits, n, handler, owner, id, since)};
}

uint64_t Batcher::queue(int group, const ScriptLimit* limits, size_t n, VerdictHandler handler,
                        void* owner, uint64_t id, const RedisClient::Since* since)
{
    Batch& batch = open_batch(group, since);
    // All or nothing (out of memory): the request joins the script and gets its waiter, or
    // neither; a batch opened for it alone is closed again.
    try {
        batch.waiters.reserve(options_.max_requests);  // the push_back below cannot throw
        batch.script.add_request(limits, n);
    } catch (...) {
        if (batch.waiters.empty()) {
            close_empty(batch);
        }
        throw;
    }
    if (id == 0) {
        id = next_id_++;
    }
    batch.waiters.push_back(Waiter{id, handler, owner});
    waiting_++;
    if (batch.waiters.size() == 1 && !ready(batch, loop_.now_ms())) {
        if (!flush_timer_->armed()) {
            flush_timer_->start(batch.ready_ms - loop_.now_ms());
        }
    } else if (!flush_timer_->armed() || batch.waiters.size() >= options_.max_requests) {
        flush_timer_->start(0);
    }
    return id;
}

Batcher::Queued Batcher::decide_split(const ScriptLimit* limits, size_t n,
                                      VerdictHandler handler, void* owner, bool declared,
                                      uint64_t id, const RedisClient::Since* since)
{
    groups_.resize(n);
    for (size_t i = 0; i < n; i++) {
        groups_[i] = declared ? router_.slot_group_of(limits[i].key)
                              : router_.group_of(limits[i].key);
        if (!router_.available(groups_[i])) {
            return {CallStatus::down, 0};
        }
    }
    auto split = std::make_unique<Split>();
    split->id = id ? id : next_id_++;
    split->handler = handler;
    split->owner = owner;
    split->batcher = this;
    split->levels.resize(n);
    split->merged.decided = true;
    split->merged.allowed = true;
    split->merged.sent_ms = INT64_MAX;
    // Parts in the order of their first limit; within a part, the request's order.
    std::vector<bool> placed(n, false);
    for (size_t i = 0; i < n; i++) {
        if (placed[i]) {
            continue;
        }
        size_t first = split->order.size();
        for (size_t j = i; j < n; j++) {
            if (!placed[j] && groups_[j] == groups_[i]) {
                placed[j] = true;
                split->order.push_back(j);
            }
        }
        split->parts.push_back(Part{split.get(), first, split->order.size()});
    }
    split->remaining = split->parts.size();
    Split& registered = *splits_.emplace(split->id, std::move(split)).first->second;
    try {
        std::vector<ScriptLimit> part_limits;
        part_limits.reserve(n);
        registered.part_ids.reserve(registered.parts.size());
        for (Part& part : registered.parts) {
            part_limits.clear();
            for (size_t k = part.first; k < part.end; k++) {
                part_limits.push_back(limits[registered.order[k]]);
            }
            int group = groups_[registered.order[part.first]];
            registered.part_ids.push_back(queue(group, part_limits.data(), part_limits.size(),
                                                on_part, &part, 0, since));
        }
    } catch (...) {
        cancel(registered.id);  // the parts queued so far
        throw;
    }
    return {CallStatus::ok, registered.id};
}

void Batcher::on_part(void* owner, const Verdict& verdict) noexcept
{
    auto* part = static_cast<Part*>(owner);
    Split* split = part->split;
    Verdict& merged = split->merged;
    if (verdict.decided) {
        for (size_t k = part->first; k < part->end; k++) {
            split->levels[split->order[k]] = verdict.levels[k - part->first];
        }
        merged.allowed = merged.allowed && verdict.allowed;
        merged.now_ms = std::max(merged.now_ms, verdict.now_ms);
    } else if (merged.decided) {
        merged.decided = false;
        merged.status = verdict.status;
        try {
            split->error.assign(verdict.error);
        } catch (...) {
        }
    }
    // The earliest send: the rejection memory's bound then holds for every part.
    merged.sent_ms = std::min(merged.sent_ms, verdict.sent_ms);
    if (--split->remaining > 0) {
        return;
    }
    Batcher* self = split->batcher;
    auto it = self->splits_.find(split->id);
    std::unique_ptr<Split> done = std::move(it->second);
    self->splits_.erase(it);
    merged.error = done->error;
    merged.levels = merged.decided ? done->levels.data() : nullptr;
    merged.allowed = merged.decided && merged.allowed;
    done->handler(done->owner, merged);
}

// The batch new requests of `group` join: the open one, unless it is full. Requests that go
// again (`since`) get one of their own, timed from their first call.
Batcher::Batch& Batcher::open_batch(int group, const RedisClient::Since* since)
{
    auto open = open_.find(group);
    if (since == nullptr && open != open_.end()
        && open->second->waiters.size() < options_.max_requests) {
        return *open->second;
    }
    std::unique_ptr<Batch> batch;
    if (!spare_.empty()) {
        batch = std::move(spare_.back());
        spare_.pop_back();
    } else {
        batch = std::make_unique<Batch>();
    }
    batch->group = group;
    batch->since = since ? *since : router_.since(group);
    // Requests that go again have waited already.
    batch->ready_ms = since || options_.wait_ms == 0 ? 0 : loop_.now_ms() + options_.wait_ms;
    batches_.push_back(std::move(batch));
    Batch* added = batches_.back().get();
    if (since == nullptr) {
        try {
            open_[group] = added;
        } catch (...) {
            close_empty(*added);
            throw;
        }
    }
    return *added;
}

// A batch that got no request (out of memory while adding its first): never sent.
void Batcher::close_empty(Batch& batch) noexcept
{
    auto open = open_.find(batch.group);
    if (open != open_.end() && open->second == &batch) {
        open_.erase(open);
    }
    recycle(&batch);
}

void Batcher::cancel(uint64_t id) noexcept
{
    if (id == 0) {
        return;
    }
    if (!splits_.empty()) {
        auto it = splits_.find(id);
        if (it != splits_.end()) {
            std::unique_ptr<Split> split = std::move(it->second);
            splits_.erase(it);
            for (uint64_t part : split->part_ids) {
                cancel(part);  // a part that went again per slot may be a split itself
            }
            return;
        }
    }
    cancel_waiter(id);
}

void Batcher::cancel_waiter(uint64_t id) noexcept
{
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
            router_.cancel(batch->call);
        }
    }
    batches_.clear();
    spare_.clear();
    open_.clear();
    flying_.clear();
    splits_.clear();
    waiting_ = 0;
    in_flight_ = 0;
}

bool Batcher::ready(const Batch& batch, int64_t now) const noexcept
{
    return now >= batch.ready_ms || batch.waiters.size() >= options_.max_requests;
}

// Sends the batches waiting to leave, as many per group as may be on the wire at once; a
// batch still in its wait (batch_wait=) leaves from a later flush.
void Batcher::flush() noexcept
{
    size_t i = 0;
    int64_t now = loop_.now_ms();
    int64_t next = INT64_MAX;
    while (!shut_down_ && i < batches_.size()) {
        Batch& batch = *batches_[i];
        auto flying = flying_.find(batch.group);
        if (batch.sent || (flying != flying_.end() && flying->second >= options_.max_in_flight)) {
            i++;
            continue;
        }
        if (!ready(batch, now)) {
            next = std::min(next, batch.ready_ms);
            i++;
            continue;
        }
        if (!send(batch)) {
            continue;  // failed and recycled: the next batch moved to index i
        }
        i++;
    }
    if (!shut_down_ && next != INT64_MAX && !flush_timer_->armed()) {
        flush_timer_->start(next - now);
    }
}

bool Batcher::send(Batch& batch) noexcept
{
    Batch* b = &batch;
    auto open = open_.find(b->group);
    if (open != open_.end() && open->second == b) {
        open_.erase(open);
    }
    if (!router_.routes(b->group)) {
        // Its node left the map while it waited: its requests go where the map says now.
        b->sent_ms = monotonic_ms();
        requeue(*b, false);
        recycle(b);
        return false;
    }
    try {
        std::string command;
        command.reserve(command_capacity_);
        b->script.append_evalsha(command, router_.form(b->group));
        command_capacity_ = std::max(command_capacity_, command.size());
        b->sent = true;
        b->sent_ms = monotonic_ms();
        auto submitted = router_.submit(
            b->group, std::move(command),
            [this, b](const CallResult& result) { on_reply(b, result); }, &b->since);
        if (submitted.status != CallStatus::ok) {
            fail(*b, submitted.status, {});
            recycle(b);
            return false;
        }
        b->call = submitted.id;
        in_flight_++;
        flying_[b->group]++;
        if (on_send_) {
            on_send_(b->waiters.size());
        }
        return true;
    } catch (...) {
        b->sent = true;
        fail(*b, CallStatus::overloaded, "out of memory");
        recycle(b);
        return false;
    }
}

void Batcher::on_reply(Batch* batch, const CallResult& result) noexcept
{
    in_flight_--;
    auto flying = flying_.find(batch->group);
    if (flying != flying_.end() && --flying->second == 0) {
        flying_.erase(flying);
    }
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
        if (!parsed && router_.form(batch->group) == ScriptForm::node_wide
            && result.reply && result.reply->type == REDIS_REPLY_ERROR
            && router_.retry_declared(batch->group, error)) {
            requeue(*batch, true);
        } else if (!parsed) {
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
    // With batch_wait the timer may be set for a batch still waiting: a freed slot goes first.
    if (!flush_timer_->armed() || options_.wait_ms > 0) {
        flush_timer_->start(0);
    }
}

// Requests of a batch that wrote nothing go again, timed from its first request: `declared`,
// a node-wide call that found a key elsewhere, in calls that declare their keys (one slot
// each) whose redirections the router follows; else a batch whose node left the map, by the
// router's groups.
void Batcher::requeue(Batch& batch, bool declared) noexcept
{
    std::vector<ScriptLimit> limits;
    for (size_t i = 0; i < batch.waiters.size() && !shut_down_; i++) {
        Waiter& waiter = batch.waiters[i];
        if (waiter.handler == nullptr) {
            continue;
        }
        VerdictHandler handler = waiter.handler;
        waiter.handler = nullptr;
        waiting_--;
        CallStatus status = CallStatus::overloaded;
        try {
            batch.script.request_limits(i, limits);
            status = route(limits.data(), limits.size(), handler, waiter.owner, declared,
                           waiter.id, &batch.since).status;
            if (status == CallStatus::ok) {
                continue;
            }
        } catch (...) {
        }
        Verdict verdict;
        verdict.status = status;
        verdict.sent_ms = batch.sent_ms;
        handler(waiter.owner, verdict);
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
