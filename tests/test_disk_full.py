"""Nothing acknowledged is lost when the disk fills up or turns read-only under the server.

The server must then refuse honestly (503 with a JSON ``detail`` and ``Retry-After``, so
SDKs retry), never acknowledge what it could not store, never answer 500 and never die;
and once there is room again it must take batches again by itself, without a restart.

These tests mount filesystems, so they need root (CAP_SYS_ADMIN). Without it they skip,
loudly, except under CI (``CI=true``), where a skip would hide a missing guarantee. The
last test injects a single failing statement instead, which no filesystem can do on cue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from support.node import Node
from support.processes import is_gone, kill_node
from support.waiting import wait_until
from test_crash import (
    Ledger,
    Load,
    batch_body,
    check_nothing_acknowledged_is_lost,
    resend,
    wait_for_acks,
)

FS_SIZE = "8m"
RECOVERY_BOUND_S = 5.0  # after room comes back, a POST must succeed within this
PROBE_BATCHES = 24  # batches of 100 events posted at a full or read-only disk
TIMEOUT_S = 10.0


# --- mounts ----------------------------------------------------------------------------------


def cannot_mount(reason: str) -> None:
    """Skip loudly, or fail under CI where the guarantee must actually be checked."""
    reason = reason.strip().splitlines()[0] if reason.strip() else "unknown reason"
    message = f"NOT TESTED: {reason} (needs root with CAP_SYS_ADMIN to mount filesystems)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A system command with a bound on its time (mount, umount, mkfs, e2fsck)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} -> {result.returncode}: {result.stderr}")
    return result


@contextlib.contextmanager
def mounted(target: Path, *mount_args: str) -> Iterator[Path]:
    """``mount *mount_args target``, and always unmount afterwards, whatever happened."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        cannot_mount(f"running as uid {os.geteuid()}, not root")
    result = run("mount", *mount_args, str(target), check=False)
    if result.returncode != 0:
        cannot_mount(f"`mount {' '.join(mount_args)}` failed: {result.stderr.strip()}")
    try:
        yield target
    finally:
        unmount(target)


def unmount(target: Path) -> None:
    """Stop what of ours still uses ``target`` (any process naming it on its command line:
    a server, its child, a CLI reader), then unmount, lazily if it stays busy."""
    for pid in processes_naming(target):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not os.path.ismount(target):
        return
    deadline = time.monotonic() + 10
    while run("umount", str(target), check=False).returncode != 0:
        if time.monotonic() > deadline:
            run("umount", "-l", str(target), check=False)
            return
        time.sleep(0.1)


def processes_naming(path: Path) -> list[int]:
    """Processes (never this one) whose command line contains ``path``: ones we started."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes() and not is_gone(int(entry.name)):
                    found.append(int(entry.name))
    return found


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(path: Path) -> Path:
    """Write a filler file until ENOSPC, in big then small blocks: almost nothing is left."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (b"\0" * (1 << 20), b"\0" * (1 << 12), b"\0"):
            with contextlib.suppress(OSError):  # ENOSPC: on to the next, smaller block
                while os.write(fd, block):
                    pass
        os.fsync(fd)
    finally:
        os.close(fd)
    assert free_bytes(path) < 64 * 1024, f"still {free_bytes(path)} bytes free"
    return filler


# --- requests --------------------------------------------------------------------------------


def post(node: Node, tag: str, ledger: Ledger, size: int = 100) -> requests.Response:
    """POST one marked batch and file it under its answer."""
    response = requests.post(
        node.url + "/publish_events",
        data=batch_body(tag, size),
        headers={"x-api-key": node.key, "content-type": "application/json"},
        timeout=TIMEOUT_S,
    )
    ledger.record(tag, size, response.status_code, response.text)
    return response


def probe_while_broken(node: Node, ledger: Ledger, phase: str) -> dict[int, int]:
    """Post batches, four at a time (group commits fail together), at a disk that cannot take
    them: each answer must be an honest 503 (or a 200 that is really stored, checked at the
    end), and the server must stay up and healthy. Returns the status counts."""

    def one(n: int) -> int:
        response = post(node, f"{phase}-b{n}", ledger)
        if response.status_code == 503:
            assert_honest_503(response)
        return response.status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = dict(Counter(pool.map(one, range(PROBE_BATCHES))))
    assert node.process is not None and node.process.poll() is None, node.log()[-4000:]
    assert requests.get(node.url + "/healthz", timeout=TIMEOUT_S).status_code == 200
    assert set(statuses) <= {200, 503}, f"{statuses}\n{node.log()[-4000:]}"
    assert statuses.get(503), f"never refused: {statuses}"
    return statuses


def assert_honest_503(response: requests.Response) -> None:
    """What an SDK needs to back off and retry: a JSON reason and when to come back."""
    detail = response.json().get("detail")
    assert isinstance(detail, str) and detail, response.text
    retry_after = response.headers.get("retry-after", "")
    assert retry_after.isdigit() and int(retry_after) >= 0, dict(response.headers)


def wait_for_200(node: Node, ledger: Ledger, phase: str) -> float:
    """Retry as an SDK would until a batch is taken; returns how long that took."""
    started = time.monotonic()
    for n in range(1000):
        response = post(node, f"{phase}-b{n}", ledger, size=10)
        if response.status_code == 200:
            return time.monotonic() - started
        if time.monotonic() - started > RECOVERY_BOUND_S:
            pytest.fail(f"no recovery in {RECOVERY_BOUND_S}s: {response.status_code}\n{node.log()}")
        time.sleep(0.1)
    raise AssertionError("unreachable")


def stop(node: Node) -> None:
    """Kill the server (and any child) before the filesystem under them goes away."""
    if node.process is not None and node.process.poll() is None:
        kill_node(node)
    node.process = None


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


# --- tests -----------------------------------------------------------------------------------


def test_a_full_disk_gets_503_and_the_server_recovers_by_itself(
    make_node: Callable[..., Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An 8 MB tmpfs as the data dir, filled to the last byte under a running server: every
    batch gets an honest 503, the server stays up, and once the filler is deleted it takes
    batches again by itself (no restart); the SDK-style resends of the 503'd batches are
    then stored, and everything acknowledged is exported exactly once."""
    ledger = Ledger()
    with mounted(tmp_path / "fs", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs") as data_dir:
        node = make_node(data_dir=data_dir)  # creates the key while there is room
        try:
            for n in range(3):
                assert post(node, f"before-b{n}", ledger).status_code == 200

            filler = fill(data_dir)
            statuses = probe_while_broken(node, ledger, "full")
            for _ in range(3):  # and stays so while the journal probes the full disk
                unready = requests.get(node.url + "/readyz", timeout=TIMEOUT_S)
                assert unready.status_code == 503 and "disk" in unready.json()["detail"]
                time.sleep(1.0)

            filler.unlink()
            # Ready again without any publish traffic (a balancer sends none to an unready
            # node): the journal probes the disk by itself.
            freed = time.monotonic()
            wait_until(
                lambda: requests.get(node.url + "/readyz", timeout=TIMEOUT_S).status_code == 200,
                15,
                "readiness after room came back",
            )
            ready_in = time.monotonic() - freed
            took = wait_for_200(node, ledger, "after")
            refused = ledger.refused
            resend(node.url, node.key, ledger, refused)  # as the SDKs retry a 503
            assert not ledger.refused, node.log()[-4000:]
            for n in range(3):
                assert post(node, f"later-b{n}", ledger).status_code == 200
            stored = [event["user_id"] for event in node.export()]
        finally:
            stop(node)
    figures = check_nothing_acknowledged_is_lost(ledger, stored, node.log())
    report(
        capsys,
        f"[disk full] {statuses} while full, /readyz 503; ready again {ready_in:.2f}s after"
        f" room came back, 200 {took:.2f}s after that;"
        f" {len(refused)} refused batches resent and stored; {figures.acked_events} events"
        f" acknowledged, lost={figures.lost} duplicates={figures.duplicates}",
    )


def test_a_disk_filling_up_under_load_loses_nothing_acknowledged(
    make_node: Callable[..., Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same, with the disk filling while 8 clients post: group commits fail whole, and
    still every 200 is stored once, every 503 not at all, and the journal recovers once
    there is room."""
    ledger = Ledger()
    with mounted(tmp_path / "fs", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs") as data_dir:
        node = make_node(data_dir=data_dir)
        try:
            with Load(lambda: node.url, node.key, ledger):
                wait_for_acks(ledger, 100, 20, node.log())
                filler = fill(data_dir)
                wait_until(lambda: len(ledger.refused) >= 50, 15, "503s", node.log())
                assert node.process is not None and node.process.poll() is None
                assert requests.get(node.url + "/healthz", timeout=TIMEOUT_S).status_code == 200
                refused_while_full = len(ledger.refused)
                filler.unlink()
                wait_for_acks(ledger, 100, RECOVERY_BOUND_S, node.log())
            unanswered = ledger.refused + ledger.unknown
            resend(node.url, node.key, ledger, unanswered)  # as the SDKs retry
            assert not ledger.refused + ledger.unknown, node.log()[-4000:]
            stored = [event["user_id"] for event in node.export()]
        finally:
            stop(node)
    figures = check_nothing_acknowledged_is_lost(ledger, stored, node.log())
    report(
        capsys,
        f"[disk full under load] {refused_while_full}+ batches refused (503) while full,"
        f" {len(unanswered)} refused or cut off resent after ({ledger.repeats} answered as"
        f" already stored); {figures.acked_batches} batches / {figures.acked_events} events"
        f" acknowledged, lost={figures.lost} duplicates={figures.duplicates}",
    )


def test_a_read_only_filesystem_gets_503_and_nothing_acknowledged_is_lost(
    make_node: Callable[..., Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``mount -o remount,ro`` first, as an operator would; but Linux refuses it (EBUSY)
    while any file on the filesystem is open for writing, and the server always holds its
    database open. So when the remount is refused, the filesystem turns read-only under the
    server the way it does in production: ext4 (``errors=remount-ro``) hits an error. ext4
    will not go read-write again without an unmount, so recovery is then the operator's:
    SIGTERM (must still exit 0), unmount, fsck, mount, start; and every 200 must be there."""
    image = ext4_image(tmp_path / "ext4.img")
    mount_args = ("-o", "loop,errors=remount-ro", str(image))
    ledger = Ledger()
    with mounted(tmp_path / "ro", *mount_args) as data_dir:
        node = make_node(data_dir=data_dir)
        try:
            for n in range(3):
                assert post(node, f"before-b{n}", ledger).status_code == 200

            refusal = turn_read_only(data_dir)
            with pytest.raises(OSError):
                (data_dir / "probe").write_bytes(b"x")  # really read-only now
            statuses = probe_while_broken(node, ledger, "ro")
            assert 200 not in statuses, "a 200 from a read-only filesystem cannot be true"

            if refusal is None:
                run("mount", "-o", "remount,rw", str(data_dir))
                took = wait_for_200(node, ledger, "after")
                resend(node.url, node.key, ledger, ledger.refused)
                assert not ledger.refused, node.log()[-4000:]
                how = f"remount,ro; remount,rw -> 200 again after {took:.2f}s"
            else:
                code, took = sigterm(node)
                how = (
                    f"ext4 error -> read-only (remount,ro refused: {refusal});"
                    f" SIGTERM -> exit {code} in {took:.2f}s; umount, e2fsck, mount, start"
                )
        finally:
            stop(node)
        log = node.log()
        if refusal is not None:
            unmount(data_dir)
            fsck = run("e2fsck", "-fy", str(image), check=False)
            assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors fixed
            run("mount", *mount_args, str(data_dir))
            try:
                node.start()
                wait_for_200(node, ledger, "after")
                resend(node.url, node.key, ledger, ledger.refused)  # as the SDKs retry a 503
                assert not ledger.refused, node.log()[-4000:]
            finally:
                stop(node)
            log += node.log()
        stored = [event["user_id"] for event in node.export()]
    figures = check_nothing_acknowledged_is_lost(ledger, stored, log)
    report(
        capsys,
        f"[read-only] {statuses} while read-only; via {how}; refused batches resent and"
        f" stored; {figures.acked_events} events acknowledged, lost={figures.lost}"
        f" duplicates={figures.duplicates}",
    )


def ext4_image(image: Path) -> Path:
    """A small empty ext4 filesystem in a file, to loop-mount."""
    if shutil.which("mkfs.ext4") is None:
        cannot_mount("mkfs.ext4 is not installed")
    with open(image, "wb") as out:
        out.truncate(32 << 20)
    run("mkfs.ext4", "-q", "-F", str(image))
    return image


def turn_read_only(mountpoint: Path) -> str | None:
    """Make the filesystem read-only under the running server: by ``remount,ro`` if the
    kernel allows it (returns None), else by an ext4 error (returns the remount's refusal).

    The error comes from ext4's sysfs ``trigger_fs_error``; with ``errors=remount-ro`` the
    filesystem turns read-only at once, files already open for writing included."""
    remount = run("mount", "-o", "remount,ro", str(mountpoint), check=False)
    if remount.returncode == 0:
        return None
    device = run("findmnt", "-no", "SOURCE", str(mountpoint)).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    if not trigger.exists():
        cannot_mount(f"remount,ro refused and no {trigger} to turn ext4 read-only")
    trigger.write_text("1")
    wait_until(lambda: "ro" in mount_options(mountpoint), 5, "ext4 to turn read-only")
    return remount.stderr.strip().splitlines()[0] if remount.stderr.strip() else "refused"


def mount_options(mountpoint: Path) -> set[str]:
    """The options a mount has now (``emergency_ro`` is ext4's own read-only)."""
    options = run("findmnt", "-no", "OPTIONS", str(mountpoint)).stdout.strip().split(",")
    return {"ro" if option == "emergency_ro" else option for option in options}


def sigterm(node: Node) -> tuple[int, float]:
    """Stop the server as a supervisor would; it must exit, and cleanly, in bounded time."""
    assert node.process is not None
    started = time.monotonic()
    node.process.send_signal(signal.SIGTERM)
    try:
        code = node.process.wait(TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {TIMEOUT_S}s after SIGTERM\n{node.log()[-4000:]}")
    took = time.monotonic() - started
    node.process = None
    assert code == 0, f"exit {code} after SIGTERM\n{node.log()[-4000:]}"
    return code, took


class FailsOnce:
    """A store connection whose first ``INSERT INTO bodies`` (after the batch's row and its
    dedup fingerprint) fails as a bad disk makes it: no black-box way makes exactly one
    statement of a commit fail, so it is injected."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.failed = False

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.lstrip().startswith("INSERT INTO bodies") and not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.executemany(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_a_batch_refused_after_a_disk_error_is_stored_when_retried(tmp_path: Path) -> None:
    """503 says "nothing was stored, retry"; the retry, with the identical body, as the
    SDKs send it, must then be stored, not waved through as an already-stored duplicate."""
    from trubrics_ingestion.errors import StorageUnavailable
    from trubrics_ingestion.schema import decode_batch
    from trubrics_ingestion.store.journal import Batch, Entry, Journal
    from trubrics_ingestion.store.sqlite import connect

    database = tmp_path / "trubrics.db"
    conn = connect(database)
    journal = Journal(database)
    body = batch_body("retried-b0", 3)

    async def attempt(connection: Any) -> bool | Exception:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        batch = Batch.of("p", "event", 1_780_000_000_000_000, body, decode_batch(body, "event"))
        entry = Entry(batch, idempotency_key=None, future=future, loop=loop)
        journal._commit(connection, [entry])
        try:
            return await asyncio.wait_for(future, TIMEOUT_S)
        except StorageUnavailable as refused:
            return refused

    async def first_then_retry() -> tuple[bool | Exception, bool | Exception]:
        return await attempt(FailsOnce(conn)), await attempt(conn)

    first, retry = asyncio.run(first_then_retry())
    journaled = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
    conn.close()
    assert isinstance(first, StorageUnavailable), first  # the client is told to retry
    assert retry is True, f"the retry was answered as a duplicate; journal rows: {journaled}"
    assert journaled == 1
