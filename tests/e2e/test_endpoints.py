"""Addresses that move: a Redis host name followed through nginx's `resolver` (a DNS responder
in the test), and mode=sentinel following a failover (a master, a replica, three sentinels)."""

import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import ServerProcess, free_port, wait_for

BACKEND = "proxy_pass http://127.0.0.1:@BACKEND@;"


def location_conf(redis_line, extra_http=""):
    return f"""
    {extra_http}
    {redis_line}
    ratelimit_policy p rate=1r/h burst=100000;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $http_x_key policy=p;
            ratelimit_failure_mode open;
            add_header X-Status $ratelimit_status always;
            {BACKEND}
        }}
    }}
"""


class RedisProcess(ServerProcess):
    """A redis-server on any loopback address (127.0.0.2 is loopback too on Linux)."""

    def __init__(self, workdir, host, port, *extra, password=None):
        self.host, self.port, self.dir = host, port, workdir
        self.password = password
        if password:
            extra += ("--requirepass", password)
        workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", host, "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--logfile",
             str(workdir / "redis.log"), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self.ping), "redis-server on %s:%d did not start" % (host, port)


class DnsResponder:
    """Answers A queries for the names in `answers` (AAAA: no address), on UDP 127.0.0.1."""

    def __init__(self, answers):
        self.answers = dict(answers)
        self.queries = 0
        self.silent = False  # never answers: a resolver that does not respond
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            reply = None if self.silent else self._answer(data)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, data):
        if len(data) < 12:
            return None
        qid, _flags, qdcount = struct.unpack("!HHH", data[:6])
        pos, labels = 12, []
        while pos < len(data) and data[pos] != 0:
            n = data[pos]
            labels.append(data[pos + 1:pos + 1 + n].decode("ascii", "replace"))
            pos += 1 + n
        question_end = pos + 5
        qtype, _qclass = struct.unpack("!HH", data[pos + 1:question_end])
        name = ".".join(labels).lower()
        self.queries += 1
        question = data[12:question_end]
        address = self.answers.get(name)
        if address is None:  # NXDOMAIN
            return struct.pack("!HHHHHH", qid, 0x8183, qdcount, 0, 0, 0) + question
        records = b""
        if qtype == 1:
            records = (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4)
                       + socket.inet_aton(address))
        count = 1 if records else 0
        return struct.pack("!HHHHHH", qid, 0x8180, qdcount, count, 0, 0) + question + records

    def close(self):
        self.stopped = True
        self.thread.join()
        self.sock.close()


def status_of(n, key):
    start = time.monotonic()
    r = n.get("/", {"X-Key": key}, timeout=5)
    return r.header("X-Status"), time.monotonic() - start


def test_host_name_followed_through_the_resolver(workdir, nginx_factory):
    # "localhost" resolves to 127.0.0.1 when the configuration is read (the system's resolver,
    # no change to /etc/hosts); nginx's `resolver` then asks the test's DNS responder.
    port = free_port()
    first = RedisProcess(workdir / "r1", "127.0.0.1", port)
    second = RedisProcess(workdir / "r2", "127.0.0.2", port)
    dns = DnsResponder({"localhost": "127.0.0.1"})
    try:
        n = nginx_factory(location_conf(
            f"ratelimit_redis localhost:{port} connect_timeout=200ms timeout=200ms;",
            f"resolver 127.0.0.1:{dns.port} valid=1s;"))
        for _ in range(5):
            assert status_of(n, "one")[0] == "PASSED"
        assert first.call("EXISTS", "rl:p:one") == 1
        assert second.call("EXISTS", "rl:p:one") == 0
        assert dns.queries > 0, "the resolver was never asked"

        dns.answers["localhost"] = "127.0.0.2"
        first.stop()
        start = time.monotonic()
        worst = 0.0
        while time.monotonic() - start < 10:
            status, elapsed = status_of(n, "two")
            worst = max(worst, elapsed)
            if status == "PASSED":
                break
            assert status == "FAILED_OPEN", status
            time.sleep(0.05)
        assert status == "PASSED", "decisions did not resume on the new address"
        assert second.call("EXISTS", "rl:p:two") == 1
        assert worst < 0.4 + 0.3, "a request waited %.3fs" % worst
        assert wait_for(lambda: "resolves to 127.0.0.2:%d now" % port in n.log(), 2)
        assert "cannot resolve" not in n.log()  # the responder always answered
    finally:
        dns.close()
        first.stop()
        second.stop()


@pytest.mark.parametrize("answer,why", [("nxdomain", "Host not found"),
                                         ("silent", "no answer in time")])
def test_resolver_failure_keeps_the_last_address(workdir, nginx_factory, answer, why):
    port = free_port()
    redis = RedisProcess(workdir / "r1", "127.0.0.1", port)
    dns = DnsResponder({})  # NXDOMAIN for every name
    dns.silent = answer == "silent"
    try:
        n = nginx_factory(location_conf(
            f"ratelimit_redis localhost:{port} connect_timeout=200ms timeout=200ms;",
            f"resolver 127.0.0.1:{dns.port} valid=1s;"))
        assert status_of(n, "one")[0] == "PASSED"
        redis.call("CLIENT", "KILL", "TYPE", "normal")  # nginx reconnects, resolving again
        time.sleep(1.2)
        assert wait_for(lambda: status_of(n, "one")[0] == "PASSED", 5)
        assert redis.call("EXISTS", "rl:p:one") == 1
        assert n.log().count("cannot resolve Redis host \"localhost\"") == 1
        assert why in n.log()
    finally:
        dns.close()
        redis.stop()


class Sentinel(ServerProcess):
    def __init__(self, workdir, master_port, password=None, master_host="127.0.0.1",
                 quorum=2, options=""):
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        conf = workdir / "sentinel.conf"
        auth = f"requirepass {password}\nsentinel auth-pass m {password}\n" if password else ""
        conf.write_text(f"""port {self.port}
bind 127.0.0.1
dir {workdir}
logfile {workdir}/sentinel.log
{options}
sentinel monitor m {master_host} {master_port} {quorum}
sentinel down-after-milliseconds m 500
sentinel failover-timeout m 2000
{auth}""")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self.ping), "sentinel did not start"

    def master(self):
        try:
            ip, port = self.call("SENTINEL", "get-master-addr-by-name", "m")
            return int(port)
        except (OSError, RuntimeError, TypeError, ValueError):
            return None

    def knows_everyone(self):
        try:
            info = self.call("SENTINEL", "master", "m")
        except (OSError, RuntimeError):
            return False
        fields = dict(zip(info[::2], info[1::2]))
        return (int(fields[b"num-slaves"]) == 1 and int(fields[b"num-other-sentinels"]) == 2
                and fields[b"flags"] == b"master")


def test_sentinel_failover_resumes_on_the_promoted_replica(workdir, nginx_factory):
    master = RedisProcess(workdir / "master", "127.0.0.1", free_port(),
                          "--repl-diskless-sync-delay", "0")
    replica = RedisProcess(workdir / "replica", "127.0.0.1", free_port(),
                           "--replicaof", "127.0.0.1", str(master.port))
    sentinels = []
    try:
        assert wait_for(lambda: b"master_link_status:up" in replica.call("INFO", "replication"),
                        10), "the replica did not sync"
        sentinels = [Sentinel(workdir / ("s%d" % i), master.port) for i in range(3)]
        assert wait_for(lambda: all(s.knows_everyone() for s in sentinels), 20), \
            "the sentinels did not find the replica and each other"
        addresses = " ".join("127.0.0.1:%d" % s.port for s in sentinels)
        n = nginx_factory(location_conf(
            f"ratelimit_redis {addresses} mode=sentinel master=m "
            "connect_timeout=200ms timeout=200ms;"))
        for _ in range(5):
            assert status_of(n, "before")[0] == "PASSED"
        assert master.call("EXISTS", "rl:p:before") == 1
        assert wait_for(lambda: replica.call("EXISTS", "rl:p:before") == 1, 2)

        killed = time.monotonic()
        master.stop(signal.SIGKILL)
        switched = None
        worst = 0.0
        statuses = set()
        def any_switched():  # the first sentinel to say so (nginx may ask any of them)
            return any(s.master() == replica.port for s in sentinels)
        while time.monotonic() - killed < 15:
            if switched is None and any_switched():
                switched = time.monotonic()
            status, elapsed = status_of(n, "after")
            worst = max(worst, elapsed)
            statuses.add(status)
            if status == "PASSED":
                break
            assert status == "FAILED_OPEN", status
            time.sleep(0.02)
        resumed = time.monotonic()
        if switched is None and any_switched():  # said between the last poll and the answer
            switched = resumed
        assert status == "PASSED", "decisions did not resume on the promoted replica"
        assert replica.call("EXISTS", "rl:p:after") == 1
        assert "FAILED_OPEN" in statuses  # the failover did take a while
        # Within the failover time plus a second (measured from when a sentinel says so).
        assert switched is not None
        assert resumed - switched < 1.0 + 0.5, "resumed %.2fs after the switch" % (resumed - switched)
        # No request waited longer than connect_timeout + timeout (and the test's own slack).
        assert worst < 0.4 + 0.3, "a request waited %.3fs" % worst
        print("failover: switched after %.2fs, resumed %.2fs later, worst wait %.3fs"
              % (switched - killed, resumed - switched, worst))
        assert "as master \"m\"" in n.log()
    finally:
        for s in sentinels:
            s.stop()
        replica.stop()
        master.stop()


def test_sentinel_with_passwords_and_an_unknown_master(workdir, nginx_factory):
    """password= goes to the master and to sentinels that require one; a master name the
    sentinels do not monitor takes the failure mode and says so in the log."""
    secret = "s3cret"
    master = RedisProcess(workdir / "master", "127.0.0.1", free_port(), password=secret)
    sentinels = []
    try:
        sentinels = [Sentinel(workdir / ("s%d" % i), master.port, secret) for i in range(2)]
        assert wait_for(lambda: sentinels[0].master() == master.port, 5)
        addresses = " ".join("127.0.0.1:%d" % s.port for s in sentinels)
        good = nginx_factory(location_conf(
            f"ratelimit_redis {addresses} mode=sentinel master=m password={secret};"))
        assert status_of(good, "k")[0] == "PASSED"
        assert master.call("EXISTS", "rl:p:k") == 1

        unknown = nginx_factory(location_conf(
            f"ratelimit_redis {addresses} mode=sentinel master=nope password={secret};"))
        status, elapsed = status_of(unknown, "k")
        assert status == "FAILED_OPEN" and elapsed < 0.2 + 0.1 + 0.3
        assert wait_for(lambda: 'no sentinel gave the address of master "nope"' in unknown.log(), 2)
        assert "unknown master" in unknown.log()

        no_password = nginx_factory(location_conf(
            f"ratelimit_redis {addresses} mode=sentinel master=m;"))
        assert status_of(no_password, "k")[0] == "FAILED_OPEN"
        assert wait_for(lambda: "NOAUTH" in no_password.log(), 2)
        assert secret not in good.log() + unknown.log() + no_password.log()
    finally:
        for s in sentinels:
            s.stop()
        master.stop()


def test_sentinel_switch_master_moves_a_healthy_connection(workdir, nginx_factory):
    """+switch-master: after a manual failover that the old master does not follow (it refuses
    the sentinels' reconfiguration, as one cut off from them would), the connection to it,
    still healthy, goes, and decisions continue on the new master."""
    master = RedisProcess(workdir / "master", "127.0.0.1", free_port(),
                          "--repl-diskless-sync-delay", "0",
                          "--rename-command", "CLIENT", "client-renamed-by-the-test")
    replica = RedisProcess(workdir / "replica", "127.0.0.1", free_port(),
                           "--replicaof", "127.0.0.1", str(master.port))
    sentinels = []
    try:
        assert wait_for(lambda: b"master_link_status:up" in replica.call("INFO", "replication"),
                        10), "the replica did not sync"
        sentinels = [Sentinel(workdir / ("s%d" % i), master.port) for i in range(3)]
        assert wait_for(lambda: all(s.knows_everyone() for s in sentinels), 20)
        addresses = " ".join("127.0.0.1:%d" % s.port for s in sentinels)
        n = nginx_factory(location_conf(
            f"ratelimit_redis {addresses} mode=sentinel master=m "
            "connect_timeout=200ms timeout=200ms;"))
        assert status_of(n, "before")[0] == "PASSED"
        assert master.call("EXISTS", "rl:p:before") == 1
        # The subscription to +switch-master is on a sentinel before the failover (a condition,
        # not a sleep: on a busy machine it takes longer).
        assert wait_for(lambda: any(b"cmd=subscribe" in s.call("CLIENT", "LIST")
                                    for s in sentinels), 5)

        assert sentinels[0].call("SENTINEL", "FAILOVER", "m") == "OK"
        assert wait_for(lambda: sentinels[0].master() == replica.port, 10)
        switched = time.monotonic()
        assert wait_for(lambda: b"role:master" in replica.call("INFO", "replication"), 5)

        def moved():
            status, elapsed = status_of(n, "after")
            assert elapsed < 0.4 + 0.3, "a request waited %.3fs" % elapsed
            return status == "PASSED" and replica.call("EXISTS", "rl:p:after") == 1
        assert wait_for(moved, 5), "decisions stayed on the old master"
        assert time.monotonic() - switched < 2.0
        # The old master never followed: without +switch-master nginx would have stayed there.
        assert b"role:master" in master.call("INFO", "replication")
        assert "connection closed by Redis" not in n.log()  # it did not drop nginx either
        assert "+switch-master" in n.log()
    finally:
        for s in sentinels:
            s.stop()
        replica.stop()
        master.stop()


def test_sentinel_naming_the_master_by_host_name(workdir, nginx_factory):
    """A sentinel with announce-hostnames names the master "localhost" (which it resolved
    itself, to 127.0.0.1): nginx resolves the name through its `resolver`, the test's DNS
    responder, which answers 127.0.0.2, an address of the same master. Without a `resolver`
    the error line says so and the failure mode applies."""
    port = free_port()
    master = RedisProcess(workdir / "master", "127.0.0.1", port,
                          "--bind", "127.0.0.1", "127.0.0.2")
    dns = DnsResponder({"localhost": "127.0.0.2"})
    sentinel = None
    try:
        sentinel = Sentinel(workdir / "s", port, master_host="localhost", quorum=1,
                            options="sentinel resolve-hostnames yes\n"
                                    "sentinel announce-hostnames yes")
        assert sentinel.call("SENTINEL", "get-master-addr-by-name", "m") == \
            [b"localhost", str(port).encode()]
        redis_line = f"ratelimit_redis 127.0.0.1:{sentinel.port} mode=sentinel master=m;"
        n = nginx_factory(location_conf(redis_line, f"resolver 127.0.0.1:{dns.port} valid=1s;"))
        assert status_of(n, "k")[0] == "PASSED"
        assert master.call("EXISTS", "rl:p:k") == 1
        clients = master.call("CLIENT", "LIST").decode()
        assert "laddr=127.0.0.2:%d" % port in clients, clients  # nginx, at the DNS answer
        assert dns.queries > 0
        assert 'gives localhost:%d as master "m"' % port in n.log()
        assert 'Redis host "localhost" resolves to 127.0.0.2:%d now' % port in n.log()

        no_resolver = nginx_factory(location_conf(redis_line))
        assert status_of(no_resolver, "k")[0] == "FAILED_OPEN"
        assert wait_for(lambda: 'names master "m" by the host name "localhost", and no '
                        '"resolver" is configured' in no_resolver.log(), 2), no_resolver.log()

        # A name the resolver does not know: no address to fall back on, the failure mode.
        nxdomain = DnsResponder({})
        try:
            unknown = nginx_factory(location_conf(
                redis_line, f"resolver 127.0.0.1:{nxdomain.port} valid=1s;"))
            assert status_of(unknown, "k")[0] == "FAILED_OPEN"
            assert wait_for(lambda: 'cannot resolve Redis host "localhost" (Host not found)'
                            in unknown.log(), 2), unknown.log()
        finally:
            nxdomain.close()
    finally:
        dns.close()
        if sentinel:
            sentinel.stop()
        master.stop()


class FakeSentinel:
    """A sentinel that misbehaves, on 127.0.0.1: with `master` None it accepts connections and
    never answers (a hung sentinel); else it names `master` ("ip", port) for every
    get-master-addr-by-name (a lying one, when that is a replica)."""

    def __init__(self, master=None):
        self.master = master
        self.accepted = 0
        self.asked = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(conn)
            if self.master:
                threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn):
        buf = b""
        try:
            while not self.stopped:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                buf += chunk
                while True:
                    command, buf = self._command(buf)
                    if command is None:
                        break
                    conn.sendall(self._answer(command))
        except OSError:
            pass

    @staticmethod
    def _command(buf):
        """One RESP array of bulk strings from the front of `buf`, or None if incomplete."""
        if b"\r\n" not in buf:
            return None, buf
        head, rest = buf.split(b"\r\n", 1)
        args = []
        for _ in range(int(head[1:])):
            if b"\r\n" not in rest:
                return None, buf
            size, rest = rest.split(b"\r\n", 1)
            n = int(size[1:])
            if len(rest) < n + 2:
                return None, buf
            args.append(rest[:n])
            rest = rest[n + 2:]
        return [a.decode() for a in args], rest

    def _answer(self, command):
        verb = command[0].upper()
        if verb == "SENTINEL" and command[1].lower() == "get-master-addr-by-name":
            self.asked += 1
            ip, port = self.master[0].encode(), str(self.master[1]).encode()
            return b"*2\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(ip), ip, len(port), port)
        if verb == "SUBSCRIBE":
            return b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
        if verb in ("AUTH", "PING"):
            return b"+OK\r\n"
        return b"-ERR unknown command\r\n"

    def close(self):
        self.stopped = True
        self.thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


def until_decided(n, key, within=10.0):
    """Requests until Redis decides one; none may wait longer than connect_timeout + timeout
    (0.4 s in these configurations) and the test's slack. Returns the statuses seen."""
    start = time.monotonic()
    seen = []
    while time.monotonic() - start < within:
        status, elapsed = status_of(n, key)
        assert elapsed < 0.4 + 0.3, "a request waited %.3fs" % elapsed
        seen.append(status)
        if status == "PASSED":
            return seen
        assert status == "FAILED_OPEN", status
        time.sleep(0.02)
    raise AssertionError("Redis never decided %d requests: ...%s" % (len(seen), seen[-5:]))


def sentinel_conf(sentinels):
    addresses = " ".join("127.0.0.1:%d" % port for port in sentinels)
    return location_conf(f"ratelimit_redis {addresses} mode=sentinel master=m "
                         "connect_timeout=200ms timeout=200ms;")


@pytest.mark.parametrize("hung", [1, 2])
def test_sentinels_that_hang_are_passed_over(workdir, nginx_factory, hung):
    """One or two sentinels that accept and never answer, before a good one: each gets its own
    timeout, the search goes on past a connection that gave up, the master is reached, and the
    good sentinel is asked first from then on."""
    master = RedisProcess(workdir / "master", "127.0.0.1", free_port())
    fakes = [FakeSentinel() for _ in range(hung)]
    sentinel = None
    try:
        sentinel = Sentinel(workdir / "s", master.port, quorum=1)
        assert wait_for(lambda: sentinel.master() == master.port, 5)
        n = nginx_factory(sentinel_conf([f.port for f in fakes] + [sentinel.port]))
        seen = until_decided(n, "k")
        if hung == 1:
            # The first sentinel's timeout costs the first connection attempt, not the
            # request: it waits for the next attempt within connect_timeout + timeout.
            assert seen == ["PASSED"], seen
        assert master.call("EXISTS", "rl:p:k") == 1
        for fake in fakes:
            assert fake.accepted >= 1
            assert "sentinel 127.0.0.1:%d, master \"m\": timed out" % fake.port in n.log()
        accepted = [fake.accepted for fake in fakes]

        master.call("CLIENT", "KILL", "TYPE", "normal")  # nginx reconnects, asking again
        until_decided(n, "k2")
        assert master.call("EXISTS", "rl:p:k2") == 1
        assert [fake.accepted for fake in fakes] == accepted, "a hung sentinel was asked first"
    finally:
        for fake in fakes:
            fake.close()
        if sentinel:
            sentinel.stop()
        master.stop()


def test_sentinel_naming_a_replica_is_passed_over_and_logged(workdir, nginx_factory):
    """A first sentinel that names a replica as the master: ROLE there says "slave", so the
    next sentinel is asked and the master is used; the log names the sentinel that misled, and
    it is not asked first again."""
    master = RedisProcess(workdir / "master", "127.0.0.1", free_port(),
                          "--repl-diskless-sync-delay", "0")
    replica = RedisProcess(workdir / "replica", "127.0.0.1", free_port(),
                           "--replicaof", "127.0.0.1", str(master.port))
    liar = FakeSentinel(("127.0.0.1", replica.port))
    sentinel = None
    try:
        sentinel = Sentinel(workdir / "s", master.port, quorum=1)
        assert wait_for(lambda: sentinel.master() == master.port, 5)
        n = nginx_factory(sentinel_conf([liar.port, sentinel.port]))
        until_decided(n, "k")
        assert master.call("EXISTS", "rl:p:k") == 1
        assert liar.asked >= 1
        assert ("sentinel 127.0.0.1:%d, master \"m\": named 127.0.0.1:%d, which is not a master "
                "(ROLE: slave)" % (liar.port, replica.port)) in n.log()
        assert "READONLY" not in n.log()  # never sent a decision to the replica
        asked = liar.asked

        master.call("CLIENT", "KILL", "TYPE", "normal")
        until_decided(n, "k2")
        assert master.call("EXISTS", "rl:p:k2") == 1
        assert liar.asked == asked, "the sentinel that misled was asked first again"
    finally:
        liar.close()
        if sentinel:
            sentinel.stop()
        replica.stop()
        master.stop()


def test_sentinel_master_checked_without_role_permission_is_used_and_said(workdir, nginx_factory):
    """An ACL user without +role (as the 0.3 README gave it) cannot run the ROLE check: the
    address named is used unchecked, and the log says what to add."""
    master = RedisProcess(workdir / "master", "127.0.0.1", free_port())
    sentinel = None
    try:
        assert master.call("ACL", "SETUSER", "nginx", "on", ">secret", "~rl:*", "+evalsha",
                           "+eval", "+ping", "+select", "+mget", "+psetex", "+get", "+del",
                           "+time") == "OK"
        sentinel = Sentinel(workdir / "s", master.port, quorum=1)
        assert wait_for(lambda: sentinel.master() == master.port, 5)
        n = nginx_factory(location_conf(
            f"ratelimit_redis 127.0.0.1:{sentinel.port} mode=sentinel master=m user=nginx "
            "password=secret connect_timeout=200ms timeout=200ms;"))
        assert status_of(n, "k")[0] == "PASSED"
        assert master.call("EXISTS", "rl:p:k") == 1
        assert "the user may not run ROLE (add +role to its ACL)" in n.log()
        assert "secret" not in n.log()
    finally:
        if sentinel:
            sentinel.stop()
        master.stop()
