// libFuzzer target: what a cluster node says about the key space. The input is fed to a hiredis
// reader; every reply it yields goes through parse_cluster_slots (a map, when parsed, must
// name a master for every slot it assigns), is_redirect and, as error text, parse_redirect.
// The raw input is also a key: its slot is in range and its hash tag inside it.
#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ratelimit/cluster_map.h"
#include "ratelimit/resp.h"
#include "fuzz_check.h"

using namespace ratelimit;

namespace {

void check_reply(const redisReply* reply)
{
    is_redirect(reply);
    SlotMap map;
    std::string error;
    if (parse_cluster_slots(reply, "10.0.0.1", map, error)) {
        CHECK(!map.masters.empty());
        for (int slot = 0; slot < kSlotCount; slot++) {
            int owner = map.master_of(slot);
            CHECK(owner >= -1 && owner < int(map.masters.size()));
        }
        for (const NodeAddress& node : map.masters) {
            CHECK(!node.host.empty() && node.port > 0 && node.port <= 65535);
        }
    } else {
        CHECK(!error.empty());
    }
    if (reply->type == REDIS_REPLY_ERROR && reply->str) {
        if (auto redirect = parse_redirect(std::string_view(reply->str, reply->len))) {
            CHECK(redirect->slot >= 0 && redirect->slot < kSlotCount);
            CHECK(redirect->node.port > 0 && redirect->node.port <= 65535);
        }
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    std::string_view text(reinterpret_cast<const char*>(data), size);
    int slot = key_slot(text);
    CHECK(slot >= 0 && slot < kSlotCount);
    std::string_view tag = hash_tag(text);
    CHECK(tag.data() >= text.data() && tag.data() + tag.size() <= text.data() + text.size());
    if (auto redirect = parse_redirect(text)) {
        CHECK(redirect->slot >= 0 && redirect->slot < kSlotCount);
    }

    redisReader* reader = has_huge_array(text) ? nullptr : redisReaderCreate();
    if (reader == nullptr) {
        return 0;
    }
    redisReaderFeed(reader, text.data(), text.size());
    for (int i = 0; i < 16; i++) {
        void* reply = nullptr;
        if (redisReaderGetReply(reader, &reply) != REDIS_OK || reply == nullptr) {
            break;
        }
        check_reply(static_cast<const redisReply*>(reply));
        freeReplyObject(reply);
    }
    redisReaderFree(reader);
    return 0;
}
