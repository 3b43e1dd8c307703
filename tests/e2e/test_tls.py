"""TLS to Redis (`ssl`): Debian's redis-server on a TLS port with certificates made here by
`openssl`; a good certificate decides exactly, a wrong CA or name fails verification with a
clear error line and the failure mode, `ssl_verify=off` connects anyway, sessions are resumed
on reconnect, and `nginx -t` refuses what cannot work."""

import signal
import socket
import ssl
import subprocess
import threading

import pytest

from conftest import Nginx, Resp, ServerProcess, free_port, wait_for
from test_exactness import hammer
from test_endpoints import DnsResponder
from test_failures import conf as failures_conf, timed_get

SERVER_NAME = "redis.test"  # the certificate's DNS name; its IP entry is 127.0.0.1


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
            "-subj", f"/CN={name}", cwd=d)
    return d / f"{name}.crt"


def make_certs(d):
    """A CA and a server certificate it signed (redis.test and 127.0.0.1), and another CA."""
    d.chmod(0o755)
    ca = make_ca(d, "ca")
    other_ca = make_ca(d, "other-ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={SERVER_NAME}", cwd=d)
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", "2", "-days", "2", "-extfile", "ext.cnf", "-out", "server.crt", cwd=d)
    for f in d.iterdir():
        f.chmod(0o644)  # nginx may read them as another user
    return {"ca": ca, "other_ca": other_ca, "cert": d / "server.crt", "key": d / "server.key"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("tls"))


class TlsResp(Resp):
    """The tests' RESP client over TLS, to look at what nginx wrote."""

    def __init__(self, port, ca, timeout=2.0, name=SERVER_NAME):
        ctx = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        super().__init__(port, sock=ctx.wrap_socket(raw, server_hostname=name))


class TlsRedis(ServerProcess):
    """redis-server with no plain TCP port (`--port 0`) and a TLS one."""

    def __init__(self, workdir, certs, password=None):
        self.certs = certs
        self.port = free_port()
        self.password = password
        args = ["redis-server", "--port", "0", "--tls-port", str(self.port),
                "--bind", "127.0.0.1",
                "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
                "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
                "--save", "", "--appendonly", "no", "--dir", str(workdir),
                "--logfile", str(workdir / "redis.log")]
        if password:
            args += ["--requirepass", password]
        workdir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert wait_for(self.ping), "redis-server (TLS) did not start"

    def connect(self):
        return TlsResp(self.port, self.certs["ca"])

    cmd = ServerProcess.call  # the name conftest's RedisServer gives it


@pytest.fixture
def tls_redis(workdir, certs):
    server = TlsRedis(workdir / "redis-tls", certs)
    yield server
    server.stop()


# Where a test asserts decisions, not timing: generous for an ASan build on a busy machine.
DECIDING = "connect_timeout=1s timeout=2s"


def conf(port, tls_args, mode="closed", extra="connect_timeout=300ms timeout=200ms"):
    return failures_conf(port, mode, redis_args=f"{extra} {tls_args}", burst=3)


def assert_decides_exactly(n, redis, key="k"):
    results = [n.get("/", {"X-Key": key}) for _ in range(4)]
    assert [(r.status, r.header("X-Status")) for r in results] == \
        [(200, "PASSED")] * 3 + [(429, "REJECTED")]
    assert [r.header("X-RateLimit-Remaining") for r in results] == ["2", "1", "0", "0"]
    assert results[0].header("X-RateLimit-Limit") == "3"
    stored = redis.cmd("GET", f"rl:p:{key}")
    assert stored is not None and stored.startswith(b"v2 ")


# --- connecting ----------------------------------------------------------------------------

def test_good_certificate_decides_exactly_over_tls(tls_redis, certs, nginx_factory):
    # The name checked is the address's host by default: 127.0.0.1, the certificate's IP entry.
    n = nginx_factory(conf(tls_redis.port, f"ssl ssl_trusted_certificate={certs['ca']}",
                           extra=DECIDING))
    assert_decides_exactly(n, tls_redis)
    assert "ratelimit: TLS to Redis 127.0.0.1:%d: TLSv1.3, new session" % tls_redis.port \
        in n.log()
    assert "failed" not in n.log()


def test_server_name_is_sent_and_checked(tls_redis, certs, nginx_factory):
    n = nginx_factory(conf(tls_redis.port, f"ssl ssl_verify=on ssl_server_name={SERVER_NAME} "
                                           f"ssl_trusted_certificate={certs['ca']}",
                           extra=DECIDING))
    assert_decides_exactly(n, tls_redis)


def test_tls_with_password_auth(workdir, certs, nginx_factory):
    server = TlsRedis(workdir / "redis-auth", certs, password="s3cret")
    try:
        n = nginx_factory(conf(server.port, f"ssl ssl_trusted_certificate={certs['ca']}",
                               extra="password=s3cret timeout=2s"))
        assert_decides_exactly(n, server)
        assert "s3cret" not in n.log()
    finally:
        server.stop()


def test_session_is_resumed_on_reconnect(tls_redis, certs, nginx_factory):
    n = nginx_factory(conf(tls_redis.port, f"ssl ssl_trusted_certificate={certs['ca']}",
                           mode="open", extra="timeout=2s"))
    assert n.get("/", {"X-Key": "a"}).header("X-Status") == "PASSED"
    # A TLS 1.3 ticket arrives after the handshake, with the first reply; then the connection
    # is cut by Redis and the worker connects again, offering it.
    assert tls_redis.cmd("CLIENT", "KILL", "TYPE", "normal") >= 1
    assert wait_for(lambda: n.get("/", {"X-Key": "b"}).header("X-Status") == "PASSED", 5)
    assert wait_for(lambda: "TLSv1.3, reused session" in n.log(), 5), n.log()
    assert tls_redis.cmd("EXISTS", "rl:p:a", "rl:p:b") == 2
    # A new Redis process cannot resume the old session: a full handshake, and on it goes.
    tls_redis.stop()
    tls_redis.start()
    assert wait_for(lambda: n.get("/", {"X-Key": "c"}).header("X-Status") == "PASSED", 5)
    assert n.log().count("TLSv1.3, new session") == 2


def test_concurrent_clients_two_workers_exact_over_tls_and_reload(tls_redis, certs,
                                                                   nginx_factory):
    # Pipelined, coalesced calls through SSL_write/SSL_read on both workers, then a reload.
    n = nginx_factory(f"""
    ratelimit_redis 127.0.0.1:{tls_redis.port} timeout=2s ssl
                    ssl_trusted_certificate={certs['ca']};
    ratelimit_policy p rate=1r/h burst=60;
    server {{
        listen 127.0.0.1:@PORT@;
        keepalive_requests 100000;
        location / {{ ratelimit $http_x_key policy=p; proxy_pass http://127.0.0.1:@BACKEND@; }}
    }}
""", workers=2)
    statuses, _ = hammer([n.port], {"X-Key": "shared"}, threads=8, seconds=1.5, at_least=201)
    assert len(statuses) > 200, "too few requests to prove anything"
    assert statuses.count(200) == 60 and set(statuses) == {200, 429}
    n.reload_and_wait()
    statuses, _ = hammer([n.port], {"X-Key": "after"}, threads=4, seconds=0.5, at_least=80)
    assert statuses.count(200) == 60


# --- verification failures ------------------------------------------------------------------

def assert_fails_verification(n, port, reason):
    r, elapsed = timed_get(n)
    assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
    assert elapsed < 0.5 + 0.3  # connect_timeout + timeout, and a margin for a busy machine
    line = f"ratelimit: Redis 127.0.0.1:{port} failed TLS verification as "
    errors = [l for l in n.log().splitlines() if line in l]
    assert errors, n.log()
    assert "[error]" in errors[0] and reason in errors[0], errors[0]
    # Every attempt fails the same way; nothing reaches Redis.
    assert timed_get(n)[0].header("X-Status") == "FAILED_CLOSED"


def test_wrong_ca_fails_verification_with_the_failure_mode(tls_redis, certs, nginx_factory):
    n = nginx_factory(conf(tls_redis.port, f"ssl ssl_trusted_certificate={certs['other_ca']}"))
    # Redis sends its CA along: a chain ending in a self-signed root nginx does not trust.
    assert_fails_verification(n, tls_redis.port,
                              '"127.0.0.1": self-signed certificate in certificate chain')
    assert tls_redis.cmd("DBSIZE") == 0


def test_wrong_name_fails_verification_with_the_failure_mode(tls_redis, certs, nginx_factory):
    n = nginx_factory(conf(tls_redis.port, "ssl ssl_server_name=other "
                                           f"ssl_trusted_certificate={certs['ca']}"))
    assert_fails_verification(n, tls_redis.port, '"other": hostname mismatch')
    assert tls_redis.cmd("DBSIZE") == 0


def test_verification_failure_counts_for_the_breaker(tls_redis, certs, nginx_factory):
    n = nginx_factory(conf(tls_redis.port, f"ssl ssl_trusted_certificate={certs['other_ca']}",
                           mode="open"))
    statuses = {n.get("/", {"X-Key": "k"}).header("X-Status") for _ in range(5)}
    assert statuses == {"FAILED_OPEN"}
    assert wait_for(lambda: "Redis 127.0.0.1:%d is down" % tls_redis.port in n.log(), 3)


def test_ssl_verify_off_connects_with_the_wrong_ca(tls_redis, certs, nginx_factory):
    n = nginx_factory(conf(tls_redis.port, "ssl ssl_verify=off ssl_server_name=other "
                                           f"ssl_trusted_certificate={certs['other_ca']}",
                           extra=DECIDING))
    assert_decides_exactly(n, tls_redis)
    assert "failed TLS verification" not in n.log()


def test_connect_timeout_covers_a_handshake_that_never_ends(redis, nginx_factory):
    # A plain Redis takes the ClientHello for the start of an inline command and waits.
    n = nginx_factory(conf(redis.port, "ssl ssl_verify=off"))
    r, elapsed = timed_get(n)
    assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
    assert 0.25 < elapsed < 0.5 + 0.3
    assert "ratelimit: Redis 127.0.0.1:%d: Redis connect timeout" % redis.port in n.log()


class PlainTextServer:
    """Answers whatever comes with a line of plain text, then closes: not TLS."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.recv(4096)
                c.sendall(b"-ERR this is not TLS\r\n")
            except OSError:
                pass
            c.close()

    def close(self):
        self.sock.close()


def test_handshake_failure_takes_the_failure_mode(nginx_factory):
    server = PlainTextServer()
    try:
        n = nginx_factory(conf(server.port, "ssl ssl_verify=off"))
        r, elapsed = timed_get(n)
        assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
        assert elapsed < 0.5
        log = n.log()
        assert "ratelimit: TLS handshake with Redis 127.0.0.1:%d failed" % server.port in log
        assert "SSL_do_handshake() failed" in log  # nginx's line, with OpenSSL's reason
    finally:
        server.close()


# --- configuration --------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    ("ssl", ["ratelimit_redis", '"ssl_verify=on"', '"ssl_trusted_certificate="']),
    ("ssl ssl_verify=on ssl_server_name=redis.test",
     ["ratelimit_redis", '"ssl_trusted_certificate="']),
    ("ssl ssl_trusted_certificate=/nonexistent/ca.pem",
     ["ratelimit_redis", "/nonexistent/ca.pem"]),
    ("ssl_trusted_certificate=/etc/ssl/certs/ca-certificates.crt",
     ["ratelimit_redis", "ssl_trusted_certificate=", '"ssl"']),
])
def test_bad_tls_configuration_fails_nginx_t(workdir, args, words):
    n = Nginx(workdir / "bad", f"ratelimit_redis 127.0.0.1:6379 {args};")
    t = n.test_config()
    assert t.returncode != 0
    assert "[emerg]" in t.stderr
    for w in words:
        assert w in t.stderr, t.stderr


def test_a_file_that_is_not_a_certificate_fails_nginx_t(workdir):
    junk = workdir / "junk.pem"
    junk.write_text("not a certificate\n")
    n = Nginx(workdir / "bad", f"ratelimit_redis 127.0.0.1:6379 ssl "
                               f"ssl_trusted_certificate={junk};")
    t = n.test_config()
    assert t.returncode != 0
    assert "ratelimit_redis" in t.stderr and str(junk) in t.stderr, t.stderr


def test_good_tls_configuration_passes_nginx_t(workdir, certs):
    n = Nginx(workdir / "good", f"ratelimit_redis 127.0.0.1:6379 ssl "
                                f"ssl_trusted_certificate={certs['ca']};")
    t = n.test_config()
    assert t.returncode == 0, t.stderr


# --- sentinel over TLS ----------------------------------------------------------------------

class TlsSentinel(ServerProcess):
    """A sentinel with only a TLS port, watching a TLS master (tls-replication: it speaks TLS
    to the master too)."""

    def __init__(self, workdir, certs, master_port):
        workdir.mkdir(parents=True, exist_ok=True)
        self.certs = certs
        self.port = free_port()
        conf = workdir / "sentinel.conf"
        conf.write_text(f"""port 0
tls-port {self.port}
bind 127.0.0.1
dir {workdir}
logfile {workdir}/sentinel.log
tls-cert-file {certs['cert']}
tls-key-file {certs['key']}
tls-ca-cert-file {certs['ca']}
tls-auth-clients no
tls-replication yes
sentinel monitor m 127.0.0.1 {master_port} 1
""")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self._knows_master), "sentinel (TLS) did not start"

    def connect(self):
        return TlsResp(self.port, self.certs["ca"])

    def _knows_master(self):
        try:
            return self.call("SENTINEL", "get-master-addr-by-name", "m") is not None
        except (OSError, RuntimeError):
            return False


def test_sentinel_over_tls_and_a_wrong_ca(workdir, tls_redis, certs, nginx_factory):
    """`ssl` with mode=sentinel: the sentinel and the master it names are both spoken to over
    TLS, each checked against its own address; a CA that signed neither fails on the sentinel,
    with the error line naming it, and the failure mode applies."""
    sentinel = TlsSentinel(workdir / "sentinel-tls", certs, tls_redis.port)
    try:
        redis_line = f"mode=sentinel master=m ssl ssl_trusted_certificate={certs['ca']}"
        n = nginx_factory(conf(sentinel.port, redis_line, mode="closed",
                               extra="connect_timeout=300ms timeout=2s"))
        assert_decides_exactly(n, tls_redis)
        log = n.log()
        assert "ratelimit: TLS to sentinel 127.0.0.1:%d: TLSv1.3, new session" % sentinel.port \
            in log, log
        assert "ratelimit: TLS to Redis 127.0.0.1:%d: TLSv1.3" % tls_redis.port in log
        assert "failed" not in log
        # Reconnecting asks the sentinel again, resuming its TLS session.
        assert tls_redis.cmd("CLIENT", "KILL", "TYPE", "normal") >= 1
        assert wait_for(lambda: n.get("/", {"X-Key": "b"}).header("X-Status") == "PASSED", 5)
        assert wait_for(lambda: "ratelimit: TLS to sentinel 127.0.0.1:%d: TLSv1.3, reused "
                        "session" % sentinel.port in n.log(), 3), n.log()

        wrong = nginx_factory(conf(sentinel.port, "mode=sentinel master=m ssl "
                                   f"ssl_trusted_certificate={certs['other_ca']}"))
        r, elapsed = timed_get(wrong)
        assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
        assert elapsed < 0.5 + 0.3
        line = f"ratelimit: sentinel 127.0.0.1:{sentinel.port} failed TLS verification as "
        errors = [l for l in wrong.log().splitlines() if line in l]
        assert errors, wrong.log()
        assert "[error]" in errors[0]
        assert '"127.0.0.1": self-signed certificate in certificate chain' in errors[0]
        assert 'no sentinel gave the address of master "m"' in wrong.log()
        assert "TLS to Redis" not in wrong.log()  # the master was never reached
    finally:
        sentinel.stop()


# --- a cluster over TLS --------------------------------------------------------------------

def make_node_cert(d, certs, name):
    """A certificate for the DNS name `name` alone, signed by the CA of `certs`, in `d`."""
    ca_dir = certs["ca"].parent
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "node.key", "-out", "node.csr", "-subj", f"/CN={name}", cwd=d)
    (d / "node-ext.cnf").write_text(f"subjectAltName=DNS:{name}\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", str(ca_dir / "ca.crt"), "-CAkey",
            str(ca_dir / "ca.key"), "-set_serial", "3", "-days", "2", "-extfile", "node-ext.cnf",
            "-out", "node.crt", cwd=d)
    return d / "node.crt", d / "node.key"


class TlsCluster:
    """Three masters speaking only TLS, between themselves too (`tls-cluster yes`). With
    `names`, each has a certificate of its own name only and announces that name
    (cluster-preferred-endpoint-type hostname)."""

    def __init__(self, workdir, certs, names=None):
        self.certs = certs
        self.nodes = []
        self.names = {}
        for i in range(3):
            port = free_port()
            while port + 10000 > 65535:  # the cluster bus listens 10000 higher
                port = free_port()
            d = workdir / f"tls-cluster-{port}"
            d.mkdir(parents=True)
            cert, key, announce = certs["cert"], certs["key"], []
            self.names[port] = SERVER_NAME
            if names:
                cert, key = make_node_cert(d, certs, names[i])
                announce = ["--cluster-announce-hostname", names[i],
                            "--cluster-preferred-endpoint-type", "hostname"]
                self.names[port] = names[i]
            tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key),
                   "--tls-ca-cert-file", str(certs["ca"])]
            proc = subprocess.Popen(
                ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                 *tls, *announce, "--tls-auth-clients", "no", "--tls-cluster", "yes",
                 "--tls-replication", "yes", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(d / "nodes.conf"), "--cluster-node-timeout", "1000",
                 "--save", "", "--appendonly", "no", "--dir", str(d),
                 "--logfile", str(d / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.nodes.append((port, proc))
        for port, _ in self.nodes:
            assert wait_for(lambda: self._pings(port)), "TLS cluster node did not start"
        subprocess.run(["redis-cli", "--tls", "--cacert", str(certs["ca"]), "--cluster",
                        "create", *[f"127.0.0.1:{p}" for p, _ in self.nodes], "--cluster-yes"],
                       check=True, capture_output=True, timeout=30)
        assert wait_for(lambda: all(b"cluster_state:ok" in self.cmd(p, "CLUSTER", "INFO")
                                    for p, _ in self.nodes), 10)

    def _pings(self, port):
        try:
            return self.cmd(port, "PING") == "PONG"
        except (OSError, RuntimeError):
            return False

    def cmd(self, port, *args):
        c = TlsResp(port, self.certs["ca"], name=self.names[port])
        try:
            return c.call(*args)
        finally:
            c.close()

    def master_of(self, key):
        """The port of the master serving `key`, from its own CLUSTER NODES line."""
        slot = self.cmd(self.nodes[0][0], "CLUSTER", "KEYSLOT", key)
        for port, _ in self.nodes:
            for line in self.cmd(port, "CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if "myself" not in fields[2] or "master" not in fields[2]:
                    continue
                for r in fields[8:]:
                    lo, _, hi = r.partition("-")
                    if r[0] != "[" and int(lo) <= slot <= int(hi or lo):
                        return port
        return None

    def stop(self):
        for _, proc in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)


def test_cluster_over_tls_decides_on_every_master(workdir, certs, nginx_factory):
    cluster = TlsCluster(workdir, certs)
    try:
        seed = cluster.nodes[0][0]
        n = nginx_factory(conf(seed, f"mode=cluster ssl ssl_trusted_certificate={certs['ca']}",
                               extra="connect_timeout=1s timeout=1s"))
        keys = [f"k{i}" for i in range(12)]
        masters = {cluster.master_of(f"rl:p:{k}") for k in keys}
        assert len(masters) == 3  # the keys are spread over every master
        for key in keys:
            statuses = [n.get("/", {"X-Key": key}).status for _ in range(4)]
            assert statuses == [200, 200, 200, 429], key
            owner = cluster.master_of(f"rl:p:{key}")
            assert cluster.cmd(owner, "GET", f"rl:p:{key}").startswith(b"v2 ")
        log = n.log()
        for port, _ in cluster.nodes:
            assert f"ratelimit: TLS to Redis 127.0.0.1:{port}: TLSv1.3" in log, log
        assert "failed" not in log and "Redis error" not in log, log
        assert not n.bad_log_lines()

        # Another CA: every master fails verification, and the failure mode applies.
        bad = nginx_factory(conf(seed, f"mode=cluster ssl "
                                       f"ssl_trusted_certificate={certs['other_ca']}",
                                 extra="connect_timeout=300ms timeout=200ms"))
        r = bad.get("/", {"X-Key": "k0"})
        assert (r.status, r.header("X-Status")) == (503, "FAILED_CLOSED")
        assert wait_for(lambda: "failed TLS verification" in bad.log(), 3), bad.log()
    finally:
        cluster.stop()


def test_cluster_nodes_are_verified_against_their_own_names(workdir, certs, nginx_factory):
    """Each master has a certificate of its own name only, and announces that name
    (cluster-preferred-endpoint-type hostname): nginx resolves each through its `resolver` and
    verifies each against its own name, so every master decides (not only the seed's)."""
    names = ["localhost", "node1.test", "node2.test"]
    cluster = TlsCluster(workdir, certs, names)
    dns = DnsResponder({name: "127.0.0.1" for name in names})
    try:
        seed = cluster.nodes[0][0]
        assert cluster.cmd(seed, "CLUSTER", "SLOTS")[0][2][0] in [n.encode() for n in names]
        n = nginx_factory(f"""
    resolver 127.0.0.1:{dns.port} valid=10s;
    ratelimit_redis localhost:{seed} mode=cluster ssl ssl_trusted_certificate={certs['ca']}
                    connect_timeout=1s timeout=1s;
    ratelimit_policy p rate=1r/h burst=3;
    server {{
        listen 127.0.0.1:@PORT@;
        location / {{
            ratelimit $http_x_key policy=p;
            ratelimit_failure_mode closed;
            add_header X-Status $ratelimit_status always;
            proxy_pass http://127.0.0.1:@BACKEND@;
        }}
    }}
""")
        keys = [f"k{i}" for i in range(12)]
        masters = {cluster.master_of(f"rl:p:{k}") for k in keys}
        assert len(masters) == 3  # the keys are spread over every master
        for key in keys:
            statuses = [n.get("/", {"X-Key": key}).status for _ in range(4)]
            assert statuses == [200, 200, 200, 429], (key, n.log())
            owner = cluster.master_of(f"rl:p:{key}")
            assert cluster.cmd(owner, "GET", f"rl:p:{key}").startswith(b"v2 ")
        log = n.log()
        assert "failed TLS verification" not in log and "not an IP address" not in log, log
        for port, _ in cluster.nodes:
            assert f"ratelimit: TLS to Redis 127.0.0.1:{port}: TLSv1.3" in log, log
    finally:
        dns.close()
        cluster.stop()
