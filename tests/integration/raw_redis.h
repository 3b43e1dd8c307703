// A test fixture with a real redis-server and a blocking hiredis connection that sends
// RESP-encoded commands as they are, so tests cover the core's own encoding.
#pragma once

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <memory>
#include <string>

#include "redis_server.h"

namespace ratelimit::testing {

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

class RawRedisTest : public ::testing::Test {
protected:
    void SetUp() override
    {
        ctx_ = redisConnect("127.0.0.1", server_.port());
        ASSERT_TRUE(ctx_ && !ctx_->err);
    }
    void TearDown() override { redisFree(ctx_); }

    ReplyPtr send_raw(const std::string& resp)
    {
        void* reply = nullptr;
        if (redisAppendFormattedCommand(ctx_, resp.data(), resp.size()) != REDIS_OK
            || redisGetReply(ctx_, &reply) != REDIS_OK) {
            ADD_FAILURE() << "redis I/O failed: " << ctx_->errstr;
        }
        return ReplyPtr(static_cast<redisReply*>(reply));
    }

    RedisServer server_;
    redisContext* ctx_ = nullptr;
};

}  // namespace ratelimit::testing
