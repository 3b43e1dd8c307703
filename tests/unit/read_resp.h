// Replies for unit tests: one complete RESP value parsed by hiredis, as the client would.
#pragma once

#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace ratelimit {

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

inline ReplyPtr read_resp(const std::string& resp)
{
    redisReader* reader = redisReaderCreate();
    redisReaderFeed(reader, resp.data(), resp.size());
    void* reply = nullptr;
    int rc = redisReaderGetReply(reader, &reply);
    redisReaderFree(reader);
    EXPECT_EQ(rc, REDIS_OK);
    return ReplyPtr(static_cast<redisReply*>(reply));
}

}  // namespace ratelimit
