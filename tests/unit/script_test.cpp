#include "ratelimit/script.h"
#include "ratelimit/bucket_view.h"
#include "ratelimit/lease.h"

#include <hiredis/hiredis.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "ratelimit/bucket_view.h"
#include "ratelimit/sha1.h"
#include "read_resp.h"

namespace ratelimit {
namespace {

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
const BucketParams kA{10, 1000, 5};
const BucketParams kB{60, 60000, 100};
const BucketParams kC{1, 1000, 2};

// Two requests sharing kBinaryKey: {a cost 1, binary cost 3} then {binary cost 0, c cost 2}.
void add_two_requests(ScriptBatch& batch)
{
    ScriptLimit first[2] = {{"rl:a:k", kA, 1}, {kBinaryKey, kB, 3}};
    ScriptLimit second[2] = {{kBinaryKey, kB, 0}, {"rl:c:k", kC, 2}};
    EXPECT_EQ(batch.add_request(first, 2), 0u);
    EXPECT_EQ(batch.add_request(second, 2), 1u);
}

std::vector<std::string> two_requests_argv()
{
    return {"3", "rl:a:k", kBinaryKey, "rl:c:k",
            "2", "3",                                     // requests, parameter sets
            "10", "1000", "5", "60", "60000", "100", "1", "1000", "2",
            "1", "2", "3",                                // each key's parameter set
            "-2", "1", "1", "2", "3",                     // request 0: key 1 cost 1, key 2 cost 3
            "-2", "2", "0", "3", "2"};                    // request 1: key 2 cost 0, key 3 cost 2
}

TEST(Script, Sha1IsOfTheSource)
{
    EXPECT_EQ(script_sha1(), sha1_hex(script_source()));
    EXPECT_EQ(script_sha1().size(), 40u);
    EXPECT_NE(script_source().find("redis.call('TIME')"), std::string::npos);
}

std::string file_text(const std::string& path)
{
    std::ifstream in(RATELIMIT_SOURCE_DIR "/" + path, std::ios::binary);
    EXPECT_TRUE(in) << path;
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(Script, EmbeddedTextIsTheFileOnDisk)
{
    EXPECT_EQ(script_source(), file_text("core/lua/decide.lua"));
    // The scripts that read one bucket are sent after the reader they share.
    const std::string reader = file_text("core/lua/bucket_read.lua");
    EXPECT_EQ(bucket_read_script(), reader);
    EXPECT_EQ(bucket_view_script(), reader + file_text("core/lua/view.lua"));
    EXPECT_EQ(lease_script(), reader + file_text("core/lua/lease.lua"));
    EXPECT_EQ(script_sha1(), sha1_hex(file_text("core/lua/decide.lua")));
    // The node-wide form is the same file with its reads and arguments rewritten.
    const std::string& node_wide = script_source(ScriptForm::node_wide);
    EXPECT_NE(node_wide, script_source());
    EXPECT_NE(node_wide.find("stored[i] = redis.call('GET', keys[i])"), std::string::npos);
    EXPECT_EQ(node_wide.find("KEYS"), std::string::npos);
}

TEST(ScriptBatch, EncodesKeysOnceThenParamsThenRequests)
{
    ScriptBatch batch;
    add_two_requests(batch);
    EXPECT_EQ(batch.requests(), 2u);
    EXPECT_EQ(batch.keys(), 3u);
    EXPECT_EQ(batch.limits_of(0), 2u);
    EXPECT_EQ(batch.limits_of(1), 2u);
    EXPECT_EQ(batch.limits_of(2), 0u);
    std::string out = "prefix";
    batch.append_evalsha(out);
    ASSERT_EQ(out.substr(0, 6), "prefix");
    auto args = command_args(out.substr(6));
    std::vector<std::string> expected = {"EVALSHA", script_sha1()};
    for (const auto& a : two_requests_argv()) {
        expected.push_back(a);
    }
    EXPECT_EQ(args, expected);

    std::string eval;
    batch.append_eval(eval);
    expected[0] = "EVAL";
    expected[1] = script_source();
    EXPECT_EQ(command_args(eval), expected);
}

TEST(ScriptBatch, ClearReusesAndEncodesAfresh)
{
    ScriptBatch batch;
    add_two_requests(batch);
    ScriptLimit other[1] = {{"rl:z:k", kC, 7}};
    batch.add_request(other, 1);
    batch.clear();
    EXPECT_EQ(batch.requests(), 0u);
    EXPECT_EQ(batch.keys(), 0u);
    add_two_requests(batch);
    std::string reused;
    batch.append_evalsha(reused);
    ScriptBatch fresh;
    add_two_requests(fresh);
    std::string expected;
    fresh.append_evalsha(expected);
    EXPECT_EQ(reused, expected);
}

TEST(ScriptBatch, ManyRequestsOverManyKeysDedupe)
{
    ScriptBatch batch;
    std::vector<std::string> names;
    for (int k = 0; k < 150; k++) {
        names.push_back("rl:p:" + std::to_string(k));
    }
    for (int round = 0; round < 3; round++) {
        batch.clear();
        std::vector<std::string> first_seen;
        for (int r = 0; r < 400; r++) {
            ScriptLimit limits[2] = {{names[size_t(r) % 150], kA, 1},
                                     {names[size_t(r * 7 + 1 + round) % 150], kB, r % 3}};
            size_t n = limits[0].key == limits[1].key ? 1 : 2;
            batch.add_request(limits, n);
            for (size_t i = 0; i < n; i++) {
                if (std::find(first_seen.begin(), first_seen.end(), limits[i].key)
                    == first_seen.end()) {
                    first_seen.emplace_back(limits[i].key);
                }
            }
        }
        ASSERT_EQ(first_seen.size(), 150u);
        EXPECT_EQ(batch.requests(), 400u);
        EXPECT_EQ(batch.keys(), 150u);
        std::string out;
        batch.append_evalsha(out);
        auto args = command_args(out);
        ASSERT_GT(args.size(), 3u + 150u);
        EXPECT_EQ(args[2], "150");
        for (size_t k = 0; k < 150; k++) {
            EXPECT_EQ(args[3 + k], first_seen[k]);  // each once, first-seen order
        }
        EXPECT_EQ(args[3 + 150], "400");
        EXPECT_EQ(args[3 + 151], "2");  // two parameter sets: kA and kB
        // Each request's key indices name its own keys; a lone cost-1 limit is its key alone.
        size_t a = 3 + 150 + 2 + 3 * 2 + 150;
        for (int r = 0; r < 400; r++) {
            long entry = std::stol(args[a]);
            if (entry > 0) {
                ASSERT_EQ(batch.limits_of(size_t(r)), 1u);
                EXPECT_EQ(args[3 + size_t(entry) - 1], names[size_t(r) % 150]);
                a += 1;
                continue;
            }
            size_t n = size_t(-entry);
            ASSERT_EQ(n, batch.limits_of(size_t(r)));
            EXPECT_EQ(args[3 + std::stoul(args[a + 1]) - 1], names[size_t(r) % 150]);
            EXPECT_EQ(args[a + 2], "1");
            a += 1 + 2 * n;
        }
        EXPECT_EQ(a, args.size());
    }
}

TEST(Script, EvalshaToEvalRoundTrip)
{
    ScriptBatch batch;
    add_two_requests(batch);
    std::string evalsha;
    std::string eval;
    batch.append_evalsha(evalsha);
    batch.append_eval(eval);
    EXPECT_EQ(evalsha_to_eval(evalsha), eval);
}

TEST(Script, NodeWideFormDeclaresNoKeysAndLeadsArgvWithThem)
{
    ScriptBatch batch;
    add_two_requests(batch);
    std::string declared;
    std::string node_wide;
    batch.append_evalsha(declared);
    batch.append_evalsha(node_wide, ScriptForm::node_wide);
    std::vector<std::string> a = command_args(declared);
    std::vector<std::string> b = command_args(node_wide);
    ASSERT_EQ(b.size(), a.size() + 1);
    EXPECT_EQ(b[1], script_sha1(ScriptForm::node_wide));
    EXPECT_NE(b[1], a[1]);
    EXPECT_EQ(b[2], "0");
    EXPECT_TRUE(std::equal(a.begin() + 2, a.end(), b.begin() + 3));  // K, keys, ARGV as before
    EXPECT_EQ(script_source(ScriptForm::node_wide).rfind("#!lua flags=allow-cross-slot-keys\n", 0),
              0u);
    std::string eval;
    batch.append_eval(eval, ScriptForm::node_wide);
    EXPECT_EQ(evalsha_to_eval(node_wide), eval);
}

TEST(Script, RequestLimitsGiveBackWhatWasAdded)
{
    ScriptBatch batch;
    BucketParams p{10, 1000, 5};
    ScriptLimit first[] = {{"rl:a:x", p, 1}};
    ScriptLimit second[] = {{"rl:a:y", p, 2}, {"rl:a:x", p, 3}};
    batch.add_request(first, 1);
    batch.add_request(second, 2);
    std::vector<ScriptLimit> out;
    batch.request_limits(1, out);
    ASSERT_EQ(out.size(), 2u);
    EXPECT_EQ(out[0].key, "rl:a:y");
    EXPECT_EQ(out[0].cost, 2);
    EXPECT_EQ(out[1].key, "rl:a:x");
    EXPECT_EQ(out[1].params.burst, 5);
    batch.request_limits(0, out);
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].key, "rl:a:x");
}

TEST(Script, EvalshaToEvalRejectsOtherCommands)
{
    ScriptBatch batch;
    add_two_requests(batch);
    std::string evalsha;
    std::string eval;
    batch.append_evalsha(evalsha);
    batch.append_eval(eval);
    EXPECT_EQ(evalsha_to_eval(""), "");
    EXPECT_EQ(evalsha_to_eval(eval), "");
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
    padded.replace(padded.find("$1\r\n3\r\n"), 4, "$01\r\n");
    EXPECT_EQ(evalsha_to_eval(padded), "");
    EXPECT_EQ(evalsha_to_eval("*0" + evalsha.substr(1)), "");
}

TEST(ScriptReply, Parses)
{
    ScriptBatch batch;
    add_two_requests(batch);
    // now; request 0 allowed, levels 4000 and 0; request 1 rejected, levels 0 and 1500.
    auto reply = read_resp("$31\r\n1700000000123 1 4000 0 0 0 1500\r\n");
    BatchReply result;
    std::string error;
    ASSERT_TRUE(parse_batch_reply(reply.get(), batch, result, error)) << error;
    EXPECT_EQ(result.now_ms, 1700000000123);
    EXPECT_EQ(result.allowed, (std::vector<uint8_t>{1, 0}));
    EXPECT_EQ(result.first, (std::vector<uint32_t>{0, 2}));
    EXPECT_EQ(result.levels, (std::vector<int64_t>{4000, 0, 0, 1500}));

    // Reused: a smaller batch shrinks the vectors.
    ScriptBatch one;
    ScriptLimit limit[1] = {{"rl:a:k", kA, 1}};
    one.add_request(limit, 1);
    auto small = read_resp("$8\r\n5 1 5000\r\n");
    ASSERT_TRUE(parse_batch_reply(small.get(), one, result, error)) << error;
    EXPECT_EQ(result.now_ms, 5);
    EXPECT_EQ(result.allowed, (std::vector<uint8_t>{1}));
    EXPECT_EQ(result.first, (std::vector<uint32_t>{0}));
    EXPECT_EQ(result.levels, (std::vector<int64_t>{5000}));
}

TEST(ScriptReply, ErrorReply)
{
    ScriptBatch batch;
    add_two_requests(batch);
    auto reply = read_resp("-ERR ratelimit: bad arguments\r\n");
    BatchReply result;
    std::string error;
    EXPECT_FALSE(parse_batch_reply(reply.get(), batch, result, error));
    EXPECT_EQ(error, "ERR ratelimit: bad arguments");
    EXPECT_FALSE(is_noscript(reply.get()));

    // Found by tests/fuzz/fuzz_script_reply.cpp: "-\r\n" left `error` empty.
    auto empty = read_resp("-\r\n");
    EXPECT_FALSE(parse_batch_reply(empty.get(), batch, result, error));
    EXPECT_EQ(error, "empty error reply");
}

TEST(ScriptReply, WrongShapes)
{
    ScriptBatch batch;
    ScriptLimit limit[1] = {{"rl:a:k", kA, 1}};  // capacity 5000
    batch.add_request(limit, 1);
    batch.add_request(limit, 1);
    auto bulk = [](const std::string& text) {
        return "$" + std::to_string(text.size()) + "\r\n" + text + "\r\n";
    };
    for (const std::string& resp : {
             std::string("+OK\r\n"),
             std::string(":1\r\n"),
             std::string("$-1\r\n"),
             std::string("*-1\r\n"),
             std::string("*5\r\n:5\r\n:1\r\n:10\r\n:1\r\n:20\r\n"),  // an array
             bulk("5 1 10 1"),            // one short
             bulk("5 1 10 1 20 30"),      // one too many
             bulk("5 2 10 1 20"),         // allowed not 0/1
             bulk("x 1 10 1 20"),         // not a number
             bulk("5 1 10  1 20"),        // two spaces
             bulk(" 5 1 10 1 20"),        // leading space
             bulk("5 1 10 1 20 "),        // trailing space
             bulk("5 1 -1 1 20"),         // level below empty
             bulk("5 1 10 1 5001"),       // level above full
             bulk("5 1 10 1 2e3"),        // exponent
             bulk(""),
         }) {
        auto reply = read_resp(resp);
        BatchReply result;
        std::string error;
        EXPECT_FALSE(parse_batch_reply(reply.get(), batch, result, error)) << resp;
        EXPECT_FALSE(error.empty()) << resp;
    }
    BatchReply result;
    std::string error;
    EXPECT_FALSE(parse_batch_reply(nullptr, batch, result, error));
    auto good = read_resp("$12\r\n5 1 10 0 5000\r\n");
    EXPECT_TRUE(parse_batch_reply(good.get(), batch, result, error)) << error;
}

// What the log shows of a reply it cannot take: where, and a bounded, printable excerpt.
TEST(ScriptReply, UnreadableReplyErrorSaysWhereBounded)
{
    ScriptBatch batch;
    ScriptLimit limit[1] = {{"rl:a:k", kA, 1}};
    batch.add_request(limit, 1);
    auto bulk = [](const std::string& text) {
        return read_resp("$" + std::to_string(text.size()) + "\r\n" + text + "\r\n");
    };
    BatchReply result;
    std::string error;
    EXPECT_FALSE(parse_batch_reply(bulk("5 1 -3000").get(), batch, result, error));
    EXPECT_EQ(error, "unexpected reply to the ratelimit script at byte 4: \"-3000\"");
    std::string junk = "5 1 10 \"" + std::string(1000, '\x01');
    EXPECT_FALSE(parse_batch_reply(bulk(junk).get(), batch, result, error));
    EXPECT_EQ(error, "unexpected reply to the ratelimit script at byte 6: \" "
                         + std::string(31, '?') + "\"");
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
