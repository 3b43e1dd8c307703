// A real redis-server for a test: started on a free loopback port (or a unix socket) in a
// temporary directory, stopped by PID. Shared by the integration tests.
#pragma once

#include <sys/types.h>

#include <string>

namespace ratelimit::testing {

class RedisServer {
public:
    // Starts redis-server and waits until it answers PING. Aborts the test run if it can't.
    RedisServer();
    ~RedisServer();
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;

    int port() const { return port_; }
    const std::string& unix_path() const { return unix_path_; }

    void stop();     // SIGTERM, wait for exit
    void restart();  // stop, then start again on the same port
    // Runs one command synchronously (hiredis blocking API) and returns the reply as text:
    // status/string as is, integers in decimal, errors prefixed "ERR:", nil as "(nil)",
    // arrays as space-separated elements.
    std::string command(const std::string& cmd);

private:
    void start();

    int port_ = 0;
    pid_t pid_ = -1;
    std::string dir_;
    std::string unix_path_;
};

}  // namespace ratelimit::testing
