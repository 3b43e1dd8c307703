#include "ratelimit/script.h"

#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "ratelimit/sha1.h"

namespace ratelimit {
namespace {

struct ReplyDeleter {
    void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

// Parses one complete RESP value with hiredis, as the client will.
ReplyPtr read_resp(const std::string& resp)
{
    redisReader* reader = redisReaderCreate();
    redisReaderFeed(reader, resp.data(), resp.size());
    void* reply = nullptr;
    int rc = redisReaderGetReply(reader, &reply);
    redisReaderFree(reader);
    EXPECT_EQ(rc, REDIS_OK);
    return ReplyPtr(static_cast<redisReply*>(reply));
}

std::vector<std::string> command_args(const std::string& resp)
{
    ReplyPtr reply = read_resp(resp);
    std::vector<std::string> args;
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        ADD_FAILURE() << "not an array";
        return args;
    }
    for (size_t i = 0; i < reply->elements; i++) {
        EXPECT_EQ(reply->element[i]->type, REDIS_REPLY_STRING);
        args.emplace_back(reply->element[i]->str, reply->element[i]->len);
    }
    return args;
}

const std::string kBinaryKey("rl:p:\x00\r\n$*", 10);

std::vector<ScriptLimit> two_limits()
{
    return {{"rl:a:k", {10, 1000, 5}, 1}, {kBinaryKey, {60, 60000, 100}, 3}};
}

TEST(Script, Sha1IsOfTheSource)
{
    EXPECT_EQ(script_sha1(), sha1_hex(script_source()));
    EXPECT_EQ(script_sha1().size(), 40u);
    EXPECT_NE(script_source().find("redis.call('TIME')"), std::string::npos);
}

TEST(Script, FormatEvalsha)
{
    auto limits = two_limits();
    auto args = command_args(format_evalsha(limits.data(), limits.size()));
    std::vector<std::string> expected = {"EVALSHA", script_sha1(), "2", "rl:a:k", kBinaryKey,
                                         "10", "1000", "5", "1", "60", "60000", "100", "3"};
    EXPECT_EQ(args, expected);
}

TEST(Script, FormatEval)
{
    auto limits = two_limits();
    auto args = command_args(format_eval(limits.data(), 1));
    std::vector<std::string> expected = {"EVAL", script_source(), "1", "rl:a:k",
                                         "10", "1000", "5", "1"};
    EXPECT_EQ(args, expected);
}

TEST(Script, EvalshaToEvalRoundTrip)
{
    auto limits = two_limits();
    std::string evalsha = format_evalsha(limits.data(), limits.size());
    EXPECT_EQ(evalsha_to_eval(evalsha), format_eval(limits.data(), limits.size()));
}

TEST(Script, EvalshaToEvalRejectsOtherCommands)
{
    auto limits = two_limits();
    std::string evalsha = format_evalsha(limits.data(), limits.size());
    EXPECT_EQ(evalsha_to_eval(""), "");
    EXPECT_EQ(evalsha_to_eval(format_eval(limits.data(), 1)), "");
    EXPECT_EQ(evalsha_to_eval("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"), "");
    EXPECT_EQ(evalsha_to_eval(evalsha.substr(0, evalsha.size() - 1)), "");
    EXPECT_EQ(evalsha_to_eval(evalsha + "x"), "");
    std::string other_sha = evalsha;
    other_sha[other_sha.find(script_sha1())] ^= 1;
    EXPECT_EQ(evalsha_to_eval(other_sha), "");
    EXPECT_EQ(evalsha_to_eval("*99999999999999999999999\r\n$7\r\nEVALSHA\r\n"), "");
    // Found by tests/fuzz/fuzz_script_reply.cpp: lengths with leading zeros were copied into
    // the EVAL command, which Redis rejects.
    std::string padded = evalsha;
    padded.replace(padded.find("$1\r\n1\r\n"), 4, "$01\r\n");
    EXPECT_EQ(evalsha_to_eval(padded), "");
    EXPECT_EQ(evalsha_to_eval("*0" + evalsha.substr(1)), "");
}

TEST(ScriptReply, Parses)
{
    auto reply = read_resp("*8\r\n:1\r\n:1700000000123\r\n:4000\r\n:100\r\n:0\r\n"
                           ":0\r\n:2000\r\n:7\r\n");
    ScriptResult result;
    std::string error;
    ASSERT_TRUE(parse_script_reply(reply.get(), 2, result, error)) << error;
    EXPECT_TRUE(result.allowed);
    EXPECT_EQ(result.now_ms, 1700000000123);
    ASSERT_EQ(result.outcomes.size(), 2u);
    EXPECT_EQ(result.outcomes[0].level_units, 4000);
    EXPECT_EQ(result.outcomes[0].reset_ms, 100);
    EXPECT_EQ(result.outcomes[0].retry_after_ms, 0);
    EXPECT_EQ(result.outcomes[1].level_units, 0);
    EXPECT_EQ(result.outcomes[1].reset_ms, 2000);
    EXPECT_EQ(result.outcomes[1].retry_after_ms, 7);
}

TEST(ScriptReply, Rejected)
{
    auto reply = read_resp("*5\r\n:0\r\n:5\r\n:10\r\n:20\r\n:30\r\n");
    ScriptResult result;
    result.allowed = true;
    std::string error;
    ASSERT_TRUE(parse_script_reply(reply.get(), 1, result, error));
    EXPECT_FALSE(result.allowed);
    EXPECT_EQ(result.outcomes[0].retry_after_ms, 30);
}

TEST(ScriptReply, ErrorReply)
{
    auto reply = read_resp("-ERR ratelimit: bad arguments\r\n");
    ScriptResult result;
    std::string error;
    EXPECT_FALSE(parse_script_reply(reply.get(), 1, result, error));
    EXPECT_EQ(error, "ERR ratelimit: bad arguments");
    EXPECT_FALSE(is_noscript(reply.get()));

    // Found by tests/fuzz/fuzz_script_reply.cpp: "-\r\n" left `error` empty.
    auto empty = read_resp("-\r\n");
    EXPECT_FALSE(parse_script_reply(empty.get(), 1, result, error));
    EXPECT_EQ(error, "empty error reply");
}

TEST(ScriptReply, WrongShapes)
{
    for (const char* resp : {
             "+OK\r\n",
             ":1\r\n",
             "$-1\r\n",
             "*-1\r\n",
             "*4\r\n:1\r\n:5\r\n:10\r\n:20\r\n",                  // one short
             "*6\r\n:1\r\n:5\r\n:10\r\n:20\r\n:30\r\n:40\r\n",    // one too many
             "*5\r\n:2\r\n:5\r\n:10\r\n:20\r\n:30\r\n",           // allowed not 0/1
             "*5\r\n:1\r\n$1\r\n5\r\n:10\r\n:20\r\n:30\r\n",      // string now
             "*5\r\n:1\r\n:5\r\n:10\r\n*0\r\n:30\r\n",            // nested array
             "*5\r\n:1\r\n:5\r\n:10\r\n:20\r\n$-1\r\n",           // nil retry
         }) {
        auto reply = read_resp(resp);
        ScriptResult result;
        std::string error;
        EXPECT_FALSE(parse_script_reply(reply.get(), 1, result, error)) << resp;
        EXPECT_FALSE(error.empty()) << resp;
    }
    ScriptResult result;
    std::string error;
    EXPECT_FALSE(parse_script_reply(nullptr, 1, result, error));
}

TEST(ScriptReply, Noscript)
{
    auto reply = read_resp("-NOSCRIPT No matching script. Please use EVAL.\r\n");
    EXPECT_TRUE(is_noscript(reply.get()));
    EXPECT_FALSE(is_noscript(read_resp("-NOSCRIP\r\n").get()));
    EXPECT_FALSE(is_noscript(read_resp("+NOSCRIPT\r\n").get()));
    EXPECT_FALSE(is_noscript(nullptr));
}

}  // namespace
}  // namespace ratelimit
