"""Throwaway real engines for tests: PostgreSQL 15, ZooKeeper 3.8 and a sharded ClickHouse
(Debian's 18.16) cluster, installed by ``scripts/install-engines.sh``.

Why real servers rather than fakes: the forwarders' hard cases (a server down mid-batch,
duplicate rows collapsing only at merge or FINAL, ON CLUSTER DDL, one shard missing) are
behaviours of the engines, which no fake reproduces.

Each server runs on free loopback ports (picked by binding port 0) with its data in its own
temp dir, as its Debian service user when we are root (PostgreSQL refuses to run as root),
and is stopped by its pid: every class is a context manager whose exit stops the processes
and deletes the data, whatever happened in the test. Servers are started under
``setpriv --pdeathsig``, so they die with the thread that started them even if pytest is
killed: start them from the main thread (pytest fixtures and test bodies are).

``stop()``/``start()`` restart a server on the same ports and data (for outage tests); the
URLs stay valid. ``kill()`` simulates a crash.

TLS: ``make_tls_files`` makes a throwaway CA and a server certificate for 127.0.0.1 and
localhost; ``PostgresServer(tls=...)`` then accepts only TLS connections over TCP, and
``ClickHouseCluster(tls=...)`` also serves HTTPS on each node's ``https_port``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from trubrics_ingestion.forward import Row, Sink
from trubrics_ingestion.forward.sink import Columns

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CLICKHOUSE_SERVER = Path("/usr/sbin/clickhouse-server")
ZOOKEEPER_CLASSPATH = (
    Path("/usr/share/java/zookeeper.jar"),
    Path("/usr/share/java/slf4j-simple.jar"),
)
INSTALL_HINT = "run scripts/install-engines.sh"
START_TIMEOUT_S = 60.0  # generous: 2 cores shared with the rest of the suite
STOP_TIMEOUT_S = 30.0
CLUSTER = "trubrics"


class EngineError(RuntimeError):
    """A server did not start, stop or answer as expected (the message carries its log)."""


class ClickHouseError(EngineError):
    """ClickHouse answered an HTTP query with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message.strip()}")
        self.status = status


# --- availability ----------------------------------------------------------------------------


def engines_available() -> str | None:
    """Why the engines cannot run here, or None: tests use it to skip (or fail under CI)."""
    missing = [str(path) for path in _required_paths() if not path.exists()]
    if shutil.which("java") is None:
        missing.append("java")
    if shutil.which("setpriv") is None:
        missing.append("setpriv")
    if missing:
        return f"missing {', '.join(missing)}; {INSTALL_HINT}"
    if os.geteuid() == 0:
        for user in ("postgres", "clickhouse"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"no {user!r} user to run the server as; {INSTALL_HINT}"
    return None


def require_engines() -> None:
    """Skip the calling test loudly when the engines are missing, but fail under CI
    (``CI=true``), where a skip would silently drop the forwarders' tests."""
    import pytest  # only tests call this; the module itself stays importable without pytest

    reason = engines_available()
    if reason is None:
        return
    message = f"NOT TESTED: real engines unavailable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _required_paths() -> Iterable[Path]:
    yield from (PG_BIN / name for name in ("initdb", "postgres", "pg_isready", "psql"))
    yield CLICKHOUSE_SERVER
    yield from ZOOKEEPER_CLASSPATH


# --- processes -------------------------------------------------------------------------------


_HANDED_OUT: set[int] = set()


def _ephemeral_floor() -> int:
    """Lowest port the kernel gives to outgoing connections (Linux default 32768)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_port() -> int:
    """A port that was free a moment ago, below the ephemeral range, never handed out twice.

    Binding port 0 would return an ephemeral port, and the kernel may give that very port to
    some outgoing connection before the server binds it (seen in CI: "Address already in use"
    at ClickHouse startup). Ports below the ephemeral range are only taken by listeners."""
    low, high = 20000, _ephemeral_floor()
    for _ in range(1000):
        port = random.randrange(low, high) if high > low else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port found")


def _service_user(name: str) -> str | None:
    """Run as the package's user when root (postgres refuses root); else as ourselves."""
    return name if os.geteuid() == 0 else None


def _as_user(user: str | None) -> list[str]:
    """Command prefix that switches to ``user`` (a no-op prefix when None)."""
    if user is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--"]


def _env(home: Path) -> dict[str, str]:
    """A small, predictable environment (root's HOME would be unreadable to service users)."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": str(home)}


def _make_dir(path: Path, user: str | None) -> Path:
    """A dir the service user owns, so it can write there (mkdtemp's 0700 root dir it cannot)."""
    path.mkdir(parents=True, exist_ok=True)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


_RUNNING: set[ServerProcess] = set()  # for the atexit safety net


class ServerProcess:
    """One server process: started (as a service user) with its output in a log file,
    signalled and waited for by pid; registered so that interpreter exit kills leftovers."""

    def __init__(self, name: str, argv: list[str], log_path: Path, user: str | None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                # A second setpriv: the uid change would clear a parent-death signal set before.
                [*_as_user(self.user), "setpriv", "--pdeathsig", "TERM", "--", *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(self.log_path.parent),
                cwd=self.log_path.parent,
                start_new_session=True,  # our stop(), not the terminal's Ctrl-C, ends it
            )
        _RUNNING.add(self)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, sig: int) -> None:
        """Send ``sig`` if still running (lets a cluster stop its nodes in parallel)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Signal the pid and wait for it to exit; SIGKILL if it outlives ``timeout``."""
        if self.process is None:
            return None
        self.send(sig)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout)
        _RUNNING.discard(self)
        return code

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float) -> float:
        """Poll ``ready`` until true; fail early (with the log) if the process exits."""
        started = time.monotonic()
        while True:
            if not self.alive():
                raise EngineError(f"{self.name} exited before {what}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, EngineError):
                if ready():
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise EngineError(f"{self.name}: no {what} after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    @classmethod
    def kill_leftovers(cls) -> None:
        """Last resort at interpreter exit, for servers a test created without ``with``."""
        for server in list(_RUNNING):
            server.stop(signal.SIGKILL, timeout=5)


atexit.register(ServerProcess.kill_leftovers)


class Server:
    """Base of the engines: a temp dir, start/stop/kill, and context-manager cleanup."""

    name = "server"

    def __init__(self) -> None:
        # mkdtemp makes a 0700 root dir; 0755 lets the service users reach their subdirs.
        self.root = Path(tempfile.mkdtemp(prefix=f"trubrics-{self.name}-"))
        self.root.chmod(0o755)
        self.start_seconds: float | None = None  # how long the last start() took
        self._closed = False

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop (if running) and delete the data; idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ is not called when __enter__ raises
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate, and a server certificate and key it signed (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, name: str = "trubrics test CA") -> TlsFiles:
    """A new CA (``name``) and a server certificate it signed for 127.0.0.1 and localhost,
    valid for a day, made with the openssl command line (no Python dependency)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.crt", directory / "server.key", directory / "server.csr"
    extensions = directory / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    new_key = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-days", "1",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    _openssl("req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "1", "-extfile", extensions)  # fmt: skip
    return TlsFiles(ca=ca, cert=cert, key=key)


def _openssl(*args: str | Path) -> None:
    argv = ["openssl", *map(str, args)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise EngineError(f"openssl {args[0]} failed:\n{result.stderr}")


def _install_tls(tls: TlsFiles, directory: Path, user: str | None) -> tuple[Path, Path]:
    """Copies of the server's certificate and key in ``directory``, owned by ``user``
    (servers refuse a key others may read)."""
    cert, key = directory / "server.crt", directory / "server.key"
    shutil.copyfile(tls.cert, cert)
    shutil.copyfile(tls.key, key)
    key.chmod(0o600)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (cert, key):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    return cert, key


# --- PostgreSQL ------------------------------------------------------------------------------


class PostgresServer(Server):
    """A PostgreSQL 15 cluster with trust auth for user ``postgres`` on 127.0.0.1.

    ``settings`` become ``-c name=value`` options (e.g. ``{"max_connections": "20"}``).
    ``hba`` replaces pg_hba.conf's lines (e.g. to ask other users for a password). With
    ``tls``, TCP connections must use TLS (``hostssl``; the socket stays trusted).
    """

    name = "postgres"

    def __init__(
        self,
        settings: Mapping[str, str] | None = None,
        *,
        tls: TlsFiles | None = None,
        hba: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.user = _service_user("postgres")
        self.dir = _make_dir(self.root / "pg", self.user)
        self.data = self.dir / "data"
        self.settings = dict(settings or {})
        self.hba = list(hba) if hba is not None else None
        if tls is not None:
            cert, key = _install_tls(tls, self.dir, self.user)
            self.settings.update(ssl="on", ssl_cert_file=str(cert), ssl_key_file=str(key))
            if self.hba is None:
                self.hba = ["local all all trust", "hostssl all all 127.0.0.1/32 trust"]
        self.port = free_port()
        self.process = ServerProcess("postgres", self._argv(), self.dir / "postgres.log", self.user)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> Self:
        started = time.monotonic()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self.process.start()
        self.process.wait_until(self._ready, "readiness", START_TIMEOUT_S)
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, data is checkpointed."""
        self.process.stop(signal.SIGINT)

    def kill(self) -> None:
        """Immediate shutdown (SIGQUIT): like a crash, the next start replays the WAL."""
        self.process.stop(signal.SIGQUIT)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (unaligned, tuples only, stop on error); return stdout."""
        url = self.url.rsplit("/", 1)[0] + "/" + database
        result = subprocess.run(
            [str(PG_BIN / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url],
            input=sql,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise EngineError(f"psql failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _argv(self) -> list[str]:
        argv = [str(PG_BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}"]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _initdb(self) -> None:
        argv = [str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust"]
        argv += ["-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]  # no fsync: throwaway data
        result = subprocess.run(
            _as_user(self.user) + argv,
            env=_env(self.dir),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise EngineError(f"initdb failed:\n{result.stdout}{result.stderr}")
        if self.hba is not None:  # rewritten in place: the file stays the server's
            (self.data / "pg_hba.conf").write_text("".join(f"{line}\n" for line in self.hba))

    def _ready(self) -> bool:
        probe = [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(probe, timeout=10).returncode == 0


# --- ZooKeeper -------------------------------------------------------------------------------


class ZooKeeperServer(Server):
    """A standalone ZooKeeper for ClickHouse's replication and ON CLUSTER DDL queue.

    ``tick_ms`` bounds session timeouts (2..20 ticks): 500 ms lets the ephemeral nodes of a
    killed ClickHouse expire within 10 s instead of 40.
    """

    name = "zookeeper"

    def __init__(self, tick_ms: int = 500) -> None:
        super().__init__()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = self.root / "zk"
        (self.dir / "data").mkdir(parents=True)
        config = {
            "tickTime": tick_ms,
            "dataDir": self.dir / "data",
            "clientPort": self.port,
            "clientPortAddress": self.host,
            "admin.enableServer": "false",  # its Jetty would take port 8080
            "4lw.commands.whitelist": "ruok,srvr,stat,mntr",
            "maxClientCnxns": 0,
        }
        (self.dir / "zoo.cfg").write_text("".join(f"{k}={v}\n" for k, v in config.items()))
        argv = ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
        argv += ["-cp", ":".join(map(str, ZOOKEEPER_CLASSPATH))]
        argv += ["org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.dir / "zoo.cfg")]
        # Java does not care who runs it; the data dir is ours.
        self.process = ServerProcess("zookeeper", argv, self.dir / "zookeeper.log", None)

    @property
    def hosts(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> Self:
        started = time.monotonic()
        self.process.start()
        # Not ``ruok``: it answers imok before the server takes sessions; srvr says "Mode:" then.
        self.process.wait_until(self._serving, "serving", START_TIMEOUT_S)
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        self.process.stop(signal.SIGTERM)

    def kill(self) -> None:
        self.process.stop(signal.SIGKILL)

    def _serving(self) -> bool:
        return "Mode: " in self.four_letter("srvr")

    def four_letter(self, command: str) -> str:
        """A ZooKeeper four-letter-word command (``ruok``, ``srvr``, ``mntr``)."""
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(command.encode())
            chunks = []
            while chunk := sock.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode()


# --- ClickHouse ------------------------------------------------------------------------------


class ClickHouseNode:
    """One clickhouse-server process of a cluster (shard ``shard``, its only replica)."""

    def __init__(
        self, root: Path, shard: int, user: str | None, tls: TlsFiles | None = None
    ) -> None:
        self.shard = shard
        self.dir = _make_dir(root / f"node{shard}", user)
        self.http_port, self.tcp_port, self.interserver_port = (free_port() for _ in range(3))
        self.https_port = free_port() if tls is not None else None
        self.tls = None if tls is None else _install_tls(tls, self.dir, user)
        argv = [str(CLICKHOUSE_SERVER), f"--config-file={self.dir / 'config.xml'}"]
        self.process = ServerProcess(f"clickhouse node{shard}", argv, self.dir / "server.log", user)
        self.user = user

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def write_config(self, config: str, users: str) -> None:
        (self.dir / "config.xml").write_text(config)
        (self.dir / "users.xml").write_text(users)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.dir / "config.xml", self.dir / "users.xml"):
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        self.process.start()

    def wait_ready(self, with_zookeeper: bool) -> None:
        """Up when /ping answers and, with ZooKeeper, the session is open and no replicated
        table is read-only any more (inserts right after a restart would fail otherwise)."""
        self.process.wait_until(self._pings, "answer to /ping", START_TIMEOUT_S)
        if with_zookeeper:
            self.process.wait_until(self._replicas_writable, "ZooKeeper session", START_TIMEOUT_S)

    def stop(self) -> None:
        self.process.stop(signal.SIGTERM)

    def kill(self) -> None:
        self.process.stop(signal.SIGKILL)

    def query(
        self, sql: str, data: bytes | None = None, settings: Mapping[str, Any] | None = None
    ) -> str:
        """Run ``sql`` over HTTP. With ``data`` (e.g. for ``INSERT ... FORMAT JSONEachRow``)
        the statement goes in the URL and the rows in the body."""
        params = {k: str(v) for k, v in (settings or {}).items()}
        if data is None:
            body = sql.encode()
        else:
            params["query"] = sql
            body = data
        url = f"{self.http_url}/?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as error:
            raise ClickHouseError(error.code, error.read().decode(errors="replace")) from None

    def _pings(self) -> bool:
        with urllib.request.urlopen(f"{self.http_url}/ping", timeout=2) as response:
            return bool(response.read() == b"Ok.\n")

    def _replicas_writable(self) -> bool:
        self.query("SELECT count() FROM system.zookeeper WHERE path = '/'")
        return self.query("SELECT count() FROM system.replicas WHERE is_readonly").strip() == "0"


class ClickHouseCluster(Server):
    """``shards`` clickhouse-server processes forming cluster ``trubrics`` (one replica per
    shard), with ZooKeeper, ``<distributed_ddl>`` and macros ``{shard}``, ``{replica}`` and
    ``{cluster}``: ``CREATE TABLE ... ON CLUSTER trubrics`` and
    ``ReplicatedMergeTree('/clickhouse/tables/{shard}/t', '{replica}')`` both work.

    Without ``zookeeper`` the cluster starts (and owns) its own. A shared ZooKeeper is safe:
    each cluster keeps its nodes under its own ZooKeeper root.
    """

    name = "clickhouse"

    def __init__(
        self,
        shards: int = 2,
        zookeeper: ZooKeeperServer | None = None,
        *,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__()
        self.cluster = CLUSTER
        self._own_zookeeper = zookeeper is None
        self.zookeeper = zookeeper if zookeeper is not None else ZooKeeperServer()
        self.zk_root = f"/trubrics-{uuid.uuid4().hex[:12]}"
        user = _service_user("clickhouse")
        self.nodes = [ClickHouseNode(self.root, shard, user, tls) for shard in range(1, shards + 1)]
        users = _users_xml()
        for node in self.nodes:
            node.write_config(self._config_xml(node), users)

    @property
    def http_urls(self) -> list[str]:
        return [node.http_url for node in self.nodes]

    @property
    def url(self) -> str:
        """The first node, in the form the forwarder's configuration takes."""
        return f"clickhouse://127.0.0.1:{self.nodes[0].http_port}/default?cluster={self.cluster}"

    @property
    def https_url(self) -> str:
        """The first node over HTTPS (with ``tls``), as the forwarder's configuration takes it."""
        port = self.nodes[0].https_port
        assert port is not None, "a cluster made without tls= serves no HTTPS"
        return f"clickhouses://127.0.0.1:{port}/default?cluster={self.cluster}"

    def start(self) -> Self:
        """Start ZooKeeper if we own it, then every node in parallel, and wait for them."""
        started = time.monotonic()
        if self._own_zookeeper and not self.zookeeper.process.alive():
            self.zookeeper.start()
        if not self.zookeeper.process.alive():
            raise EngineError("start the ZooKeeper server before the ClickHouse cluster")
        _ensure_znode(self.zookeeper, self.zk_root)
        for node in self.nodes:
            if not node.process.alive():
                node.start()
        for node in self.nodes:
            node.wait_ready(with_zookeeper=True)
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, in parallel); our own ZooKeeper runs until close()."""
        self._signal_all(signal.SIGTERM)

    def kill(self) -> None:
        """Crash every node (SIGKILL); start() then also waits until ZooKeeper lets the
        replicated tables leave read-only mode (measured: immediate on the same ports)."""
        self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        for node in self.nodes:
            node.process.send(sig)
        for node in self.nodes:
            node.process.stop(sig)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._own_zookeeper:
                self.zookeeper.close()

    def query(
        self,
        sql: str,
        data: bytes | None = None,
        settings: Mapping[str, Any] | None = None,
        node: int = 0,
    ) -> str:
        """Run ``sql`` over HTTP on ``nodes[node]`` (the first one by default)."""
        return self.nodes[node].query(sql, data=data, settings=settings)

    def insert_json(
        self,
        table: str,
        rows: Iterable[Mapping[str, Any]],
        settings: Mapping[str, Any] | None = None,
        node: int = 0,
    ) -> None:
        """``INSERT INTO table FORMAT JSONEachRow``, one compact JSON row a line."""
        body = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        sql = f"INSERT INTO {table} FORMAT JSONEachRow"
        self.query(sql, data=body.encode(), settings=settings, node=node)

    def _config_xml(self, node: ClickHouseNode) -> str:
        shards = "".join(
            f"<shard><internal_replication>true</internal_replication><replica>"
            f"<host>127.0.0.1</host><port>{other.tcp_port}</port></replica></shard>"
            for other in self.nodes
        )
        zk = self.zookeeper
        return f"""<?xml version="1.0"?>
<yandex>
    <logger><level>information</level><console>1</console></logger>{_https_xml(node)}
    <listen_host>127.0.0.1</listen_host>
    <http_port>{node.http_port}</http_port>
    <tcp_port>{node.tcp_port}</tcp_port>
    <interserver_http_port>{node.interserver_port}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{node.dir}/data/</path>
    <tmp_path>{node.dir}/tmp/</tmp_path>
    <user_files_path>{node.dir}/user_files/</user_files_path>
    <format_schema_path>{node.dir}/format_schemas/</format_schema_path>
    <users_config>{node.dir}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <remote_servers><{self.cluster}>{shards}</{self.cluster}></remote_servers>
    <zookeeper>
        <node><host>{zk.host}</host><port>{zk.port}</port></node>
        <session_timeout_ms>10000</session_timeout_ms>
        <root>{self.zk_root}</root>
    </zookeeper>
    <macros>
        <cluster>{self.cluster}</cluster>
        <shard>{node.shard:02d}</shard>
        <replica>node{node.shard}</replica>
    </macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
"""


def _https_xml(node: ClickHouseNode) -> str:
    """HTTPS on ``node.https_port`` with its certificate (18.16 needs no DH parameters)."""
    if node.tls is None:
        return ""
    cert, key = node.tls
    return f"""
    <https_port>{node.https_port}</https_port>
    <openSSL><server>
        <certificateFile>{cert}</certificateFile>
        <privateKeyFile>{key}</privateKeyFile>
        <verificationMode>none</verificationMode>
        <loadDefaultCAFile>false</loadDefaultCAFile>
        <disableProtocols>sslv2,sslv3</disableProtocols>
    </server></openSSL>"""


def _users_xml() -> str:
    """User ``default`` without password, from loopback only; no quotas."""
    return """<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <load_balancing>in_order</load_balancing>
            <distributed_ddl_task_timeout>60</distributed_ddl_task_timeout>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>127.0.0.1</ip><ip>::1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries><errors>0</errors><result_rows>0</result_rows>
                <read_rows>0</read_rows><execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
"""


def _ensure_znode(zookeeper: ZooKeeperServer, path: str) -> None:
    """Create the single-level znode ``path`` if missing: ClickHouse refuses to start on a
    ZooKeeper root that does not exist. A few bytes of ZooKeeper's wire protocol (connect,
    create with the open ACL, close) spare a JVM start of zkCli.sh or a client library."""

    def string(value: bytes) -> bytes:
        return struct.pack(">i", len(value)) + value

    def call(sock: socket.socket, payload: bytes) -> bytes:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
        return _recv_exactly(sock, size)

    with socket.create_connection((zookeeper.host, zookeeper.port), timeout=10) as sock:
        # ConnectRequest: protocol version, last zxid seen, timeout, session id, password.
        call(sock, struct.pack(">iqiq", 0, 0, 10_000, 0) + string(bytes(16)))
        acl = struct.pack(">ii", 1, 0x1F) + string(b"world") + string(b"anyone")
        create = struct.pack(">ii", 1, 1) + string(path.encode()) + string(b"") + acl
        _xid, _zxid, error = struct.unpack(">iqi", call(sock, create + struct.pack(">i", 0))[:16])
        if error not in (0, -110):  # ok, or NodeExists
            raise EngineError(f"ZooKeeper create {path} failed with error {error}")
        call(sock, struct.pack(">ii", 2, -11))  # closeSession


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EngineError("ZooKeeper closed the connection")
        data += chunk
    return data


def send_rows(sink: Sink, rows: Sequence[Row]) -> None:
    """Encode and send ``rows`` through ``sink``, as the forwarder does with a batch."""
    sink.send(sink.encode(Columns.of(rows)), len(rows))
