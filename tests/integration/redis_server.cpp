#include "redis_server.h"

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace ratelimit::testing {
namespace {

int free_port()
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof(addr);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0
        || getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        std::perror("free_port");
        std::abort();
    }
    close(fd);
    return ntohs(addr.sin_port);
}

std::string reply_text(const redisReply* r)
{
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        return std::string(r->str, r->len);
    case REDIS_REPLY_ERROR:
        return "ERR:" + std::string(r->str, r->len);
    case REDIS_REPLY_INTEGER:
        return std::to_string(r->integer);
    case REDIS_REPLY_NIL:
        return "(nil)";
    case REDIS_REPLY_ARRAY: {
        std::string out;
        for (size_t i = 0; i < r->elements; i++) {
            if (i) {
                out += ' ';
            }
            out += reply_text(r->element[i]);
        }
        return out;
    }
    }
    return "?";
}

}  // namespace

RedisServer::RedisServer()
{
    char tmpl[] = "/tmp/rl-redis-XXXXXX";
    if (!mkdtemp(tmpl)) {
        std::perror("mkdtemp");
        std::abort();
    }
    dir_ = tmpl;
    unix_path_ = dir_ + "/redis.sock";
    port_ = free_port();
    start();
}

RedisServer::~RedisServer()
{
    stop();
    std::string cmd = "rm -rf '" + dir_ + "'";
    if (std::system(cmd.c_str()) != 0) {
        std::fprintf(stderr, "could not remove %s\n", dir_.c_str());
    }
}

void RedisServer::start()
{
    std::string port = std::to_string(port_);
    pid_ = fork();
    if (pid_ == 0) {
        execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--unixsocket", unix_path_.c_str(), "--save", "", "--appendonly", "no", "--dir",
               dir_.c_str(), "--logfile", (dir_ + "/redis.log").c_str(), nullptr);
        std::perror("execlp redis-server");
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {
        timeval tv{0, 200000};
        redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
        if (c && !c->err) {
            auto* r = static_cast<redisReply*>(redisCommand(c, "PING"));
            bool ok = r && r->type == REDIS_REPLY_STATUS;
            if (r) {
                freeReplyObject(r);
            }
            redisFree(c);
            if (ok) {
                return;
            }
        } else if (c) {
            redisFree(c);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::fprintf(stderr, "redis-server did not start on port %d\n", port_);
    std::abort();
}

void RedisServer::stop()
{
    if (pid_ <= 0) {
        return;
    }
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
}

void RedisServer::restart()
{
    stop();
    start();
}

std::string RedisServer::command(const std::string& cmd)
{
    timeval tv{2, 0};
    redisContext* c = redisConnectWithTimeout("127.0.0.1", port_, tv);
    if (!c || c->err) {
        if (c) {
            redisFree(c);
        }
        return "ERR:connect";
    }
    auto* r = static_cast<redisReply*>(redisCommand(c, cmd.c_str()));
    std::string out = r ? reply_text(r) : "ERR:io";
    if (r) {
        freeReplyObject(r);
    }
    redisFree(c);
    return out;
}

}  // namespace ratelimit::testing
