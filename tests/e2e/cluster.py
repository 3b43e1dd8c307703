"""A real Redis Cluster for the end-to-end tests: 3 masters and 3 replicas (redis-server
processes on free loopback ports), created with `redis-cli --cluster create`, stopped by PID."""

import signal
import subprocess
from pathlib import Path

from conftest import Resp, free_port, wait_for

SLOTS = 16384


def _crc16_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data):
    """CRC16-CCITT (XMODEM), the checksum Redis Cluster uses for key slots."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc


def key_slot(key):
    """The slot of a Redis key, hash tags included (as CLUSTER KEYSLOT computes it)."""
    key = key.encode() if isinstance(key, str) else key
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % SLOTS


class ClusterNode:
    def __init__(self, workdir):
        self.port = free_port()
        self.bus_port = free_port()
        self.dir = Path(workdir)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
             "--cluster-config-file", str(self.dir / ("nodes-%d.conf" % self.port)),
             "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
             "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / ("redis-%d.log" % self.port))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cmd(self, *args, timeout=2.0):
        c = Resp(self.port, timeout=timeout)
        try:
            return c.call(*args)
        finally:
            c.close()

    def try_cmd(self, *args):
        try:
            return self.cmd(*args, timeout=0.5)
        except (OSError, RuntimeError):
            return None

    def info(self, section):
        text = self.cmd("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def node_id(self):
        return self.cmd("CLUSTER", "MYID").decode()

    def kill(self):
        """SIGKILL: the node vanishes without a word to its clients."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def addr(self):
        return "127.0.0.1:%d" % self.port


class RedisCluster:
    """Six nodes; `masters()` and `slot_map()` always ask the cluster, since tests reshard,
    fail over and kill nodes."""

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodes = []
        try:
            for _ in range(6):
                self.nodes.append(self._start_node())
            self.cli("--cluster", "create", *[n.addr for n in self.nodes],
                     "--cluster-replicas", "1", "--cluster-yes")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _start_node(self):
        """A node on free ports; ports found free can be taken meanwhile: then new ones."""
        taken = {p for n in self.nodes for p in (n.port, n.bus_port)}
        for _ in range(3):
            n = ClusterNode(self.dir)
            if {n.port, n.bus_port} & taken or n.port == n.bus_port:
                continue
            n.start()
            if wait_for(lambda: n.try_cmd("PING") == "PONG" or not n.alive(), 5) and n.alive():
                return n
            n.stop()
        log = self.dir / ("redis-%d.log" % n.port)
        raise AssertionError("redis-server did not start: %s"
                             % (log.read_text()[-1000:] if log.exists() else "no log"))

    def cli(self, *args, timeout=60):
        r = subprocess.run(["redis-cli", *args], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=timeout)
        assert r.returncode == 0 and "[ERR]" not in r.stdout, \
            "redis-cli %s failed:\n%s\n%s" % (" ".join(args), r.stdout, r.stderr)
        return r.stdout

    @property
    def seeds(self):
        return " ".join(n.addr for n in self.nodes[:3])

    def by_port(self, port):
        return next(n for n in self.nodes if n.port == port)

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def slot_ranges(self, via=None):
        """[(first, last, master port, [replica ports])] from CLUSTER SLOTS."""
        node = via or self.live()[0]
        return sorted((r[0], r[1], r[2][1], [x[1] for x in r[3:]])
                      for r in node.cmd("CLUSTER", "SLOTS"))

    def slot_owner(self, slot, ranges=None):
        for first, last, port, _ in ranges or self.slot_ranges():
            if first <= slot <= last:
                return self.by_port(port)
        raise AssertionError("slot %d is not served" % slot)

    def masters(self):
        ports = sorted({port for _, _, port, _ in self.slot_ranges()})
        return [self.by_port(p) for p in ports]

    def replica_of(self, master):
        for _, _, port, replicas in self.slot_ranges():
            if port == master.port and replicas:
                return self.by_port(replicas[0])
        raise AssertionError("%s has no replica" % master.addr)

    def _agreed(self, replicas):
        live = self.live()
        try:
            if any("cluster_state:ok" not in n.cmd("CLUSTER", "INFO").decode() for n in live):
                return False
            maps = [self.slot_ranges(n) for n in live]
        except (OSError, RuntimeError):
            return False
        if any(m != maps[0] for m in maps):
            return False
        covered = sum(last - first + 1 for first, last, _, _ in maps[0])
        return covered == SLOTS and (not replicas or all(r for _, _, _, r in maps[0]))

    def _replicas_synced(self):
        for n in self.live():
            try:
                info = n.info("replication")
            except (OSError, RuntimeError):
                return False
            if info.get("role") == "slave" and (info.get("master_link_status") != "up"
                                                or info.get("master_sync_in_progress") != "0"):
                return False
        return True

    def wait_healthy(self, timeout=20, replicas=True):
        """Every live node says cluster_state:ok and they all agree on who serves each slot
        (and, with `replicas`, that each master has one); every replica is linked to its master."""
        assert wait_for(lambda: self._agreed(replicas), timeout, 0.1), "cluster did not converge:\n%s" % (
            "\n".join(str(n.try_cmd("CLUSTER", "NODES")) for n in self.live()))
        assert wait_for(self._replicas_synced, timeout, 0.1), "replicas did not sync"

    def flush(self):
        for m in self.masters():
            m.cmd("FLUSHALL")

    def stop(self):
        for n in self.nodes:
            n.stop()
