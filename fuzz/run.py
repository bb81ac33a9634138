"""``make fuzz``: a real server, attacked by schemathesis and then by raw bytes.

1. Schemathesis reads the served ``/openapi.json`` and generates valid and invalid
   requests for every operation (examples, coverage and fuzzing phases), checking among
   others that nothing is a 5xx and that statuses and bodies conform to the document.
2. A crude byte-level fuzz posts bodies no schema-driven generator would write:
   truncations, byte flips, huge numbers, deep nesting, broken and bombing gzip.

Afterwards the store must still be readable (``events count`` materialises everything a
200 acknowledged) and the server log must hold no traceback. It prints the figures and
exits non-zero on any 5xx, hang, schemathesis failure or store problem. Installs nothing:
``make install`` brings schemathesis with the dev extras.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "trubrics_ingestion"]
SCHEMATHESIS_TIMEOUT_S = 300  # the whole schemathesis run, so `make fuzz` cannot hang
REQUEST_TIMEOUT_S = 10.0  # one request: longer than this is a hang
EXPECTED = {200, 400, 413, 415, 422}
CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,"
    "response_schema_conformance,response_headers_conformance,negative_data_rejection,"
    "positive_data_acceptance,missing_required_header,unsupported_method,ignored_auth"
)
PATHS = ("/publish_events", "/publish_llm_events", "/api/ingestion/publish_llm_events")


@dataclass
class Outcome:
    """What one phase saw: requests by status, and every problem in words."""

    name: str
    statuses: Counter[int] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_key(data_dir: Path) -> str:
    args = ["keys", "create", "--project", "fuzz", "--json", "--data-dir", str(data_dir)]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, check=True, timeout=60)
    return str(json.loads(done.stdout)["key"])


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``serve`` as a user would run it; returns once /healthz answers."""
    args = ["serve", "--port", str(port), "--data-dir", str(data_dir)]
    with open(log, "wb") as out:
        server = subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text(errors='replace')}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return server
        except requests.ConnectionError:
            time.sleep(0.05)
    server.kill()
    raise RuntimeError("server did not start within 20 s")


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def check_store(data_dir: Path, log: Path, outcome: Outcome) -> None:
    """Every acknowledged batch must materialise: a poisoned batch shows up here, not as a
    status code, because the 200 went out before the rows were built."""
    args = ["events", "count", "--data-dir", str(data_dir)]
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        outcome.problems.append(f"`events count` fails after the {outcome.name}: {last[0]}")
    for error, count in tracebacks(log.read_text(errors="replace")).items():
        outcome.problems.append(f"server log, {count} traceback(s) ending in: {error}")


def tracebacks(text: str) -> Counter[str]:
    """The last line of each traceback (the exception), counted: a materialiser stuck on a
    batch logs the same one every second."""
    found: Counter[str] = Counter()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Traceback"):
            rest = lines[index + 1 :]
            found[next((x for x in rest if x and not x.startswith(" ")), "?")] += 1
    return found


# ---------------------------------------------------------------- schemathesis


def run_schemathesis(base: str, key: str, workdir: Path, args: argparse.Namespace) -> Outcome:
    """The CLI in a subprocess (its public, stable interface), with a HAR to count from."""
    outcome = Outcome("schemathesis")
    har = workdir / "schemathesis.har"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base}/openapi.json",
        "--header", f"x-api-key: {key}",
        "--checks", CHECKS,
        "--mode", "all",
        "--continue-on-failure",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(args.max_examples),
        "--request-timeout", str(REQUEST_TIMEOUT_S),
        "--generation-database", "none",
        "--report", "har", "--report-har-path", str(har),
        "--no-color",
    ]  # fmt: skip
    if args.seed is not None:
        command += ["--seed", str(args.seed)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py")}
    started = time.monotonic()
    try:
        # in workdir: schemathesis keeps a .schemathesis/ replay store in its working directory
        done = subprocess.run(command, env=env, cwd=workdir, timeout=SCHEMATHESIS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        outcome.problems.append(f"schemathesis did not finish in {SCHEMATHESIS_TIMEOUT_S} s")
        return outcome
    print(f"schemathesis took {time.monotonic() - started:.0f} s, exit code {done.returncode}")
    if done.returncode != 0:
        outcome.problems.append(
            f"schemathesis exited with {done.returncode} (see its report above)"
        )
    count_har(har, outcome)
    return outcome


def count_har(har: Path, outcome: Outcome) -> None:
    """Requests by status and by operation, from the HAR schemathesis recorded."""
    if not har.exists():
        outcome.problems.append("schemathesis wrote no HAR report")
        return
    operations: Counter[str] = Counter()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        outcome.statuses[int(entry["response"]["status"])] += 1
        path = "/" + entry["request"]["url"].split("/", 3)[3].split("?")[0]
        operations[f"{entry['request']['method']} {path}"] += 1
    print("schemathesis requests by operation:")
    for operation, n in sorted(operations.items(), key=lambda item: -item[1])[:12]:
        print(f"  {n:6d}  {operation[:70]}")


# ---------------------------------------------------------------- the bytes fuzz


def seed_bodies() -> list[bytes]:
    """Valid batches to mutate: mutating near-valid input reaches deeper than noise."""
    event = {
        "user_id": "u1",
        "event": "Sign up",
        "timestamp": "2026-06-20T12:00:00Z",
        "properties": {"country": "US", "n": 1, "x": 1.5, "ok": True, "$thread_id": "t"},
    }
    llm = {
        "user_id": "u1",
        "prompt": "Hi?",
        "generation": "Hello!",
        "assistant_id": "gpt-4o",
        "latency": 1.2,
        "timestamp": "2026-06-20T12:00:00Z",
        "thread_id": "t",
        "properties": {"plan": "team", "nested": {"a": [1, 2, {"b": None}]}},
    }
    batches: list[Any] = [[event], [event] * 3, [llm], [llm] * 2, [event, llm], [], [event] * 100]
    return [json.dumps(batch, ensure_ascii=bool(i % 2)).encode() for i, batch in enumerate(batches)]


def truncate(rng: random.Random, body: bytes) -> bytes:
    return body[: rng.randrange(len(body) + 1)]


def flip_bytes(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body or b"\0")
    for _ in range(rng.randint(1, 6)):
        index = rng.randrange(len(data))
        data[index] = (
            rng.randrange(256) if rng.random() < 0.5 else data[index] ^ (1 << rng.randrange(8))
        )
    return bytes(data)


HUGE_NUMBERS = [
    b"1" * 5000,
    b"1e999",
    b"-1e999",
    b"1e308",
    b"1e300",
    b"-0",
    b"18446744073709551616",
    b"9" * 400,
    b"0.0000000000000000000000000001",
    b"1E400",
    b"-",
    b"01",
    b"1.",
    b".5",
]


def huge_number(rng: random.Random, body: bytes) -> bytes:
    """Replace one number (or a value) with one at or past the edge of what JSON can say."""
    digits = [i for i, c in enumerate(body) if chr(c).isdigit()]
    if not digits:
        return body + rng.choice(HUGE_NUMBERS)
    start = end = rng.choice(digits)
    while start > 0 and chr(body[start - 1]) in "0123456789.-eE+":
        start -= 1
    while end < len(body) and chr(body[end]) in "0123456789.-eE+":
        end += 1
    return body[:start] + rng.choice(HUGE_NUMBERS) + body[end:]


def deep_nesting(rng: random.Random, body: bytes) -> bytes:
    depth = rng.choice([64, 500, 1000, 5000, 100_000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    nested = opener * depth + b"1" + closer * depth
    if rng.random() < 0.5:  # as a property value inside an otherwise valid event
        return (b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z","properties":{"d":'
                + nested + b"}}]")  # fmt: skip
    return nested if rng.random() < 0.5 else truncate(rng, nested)


def splice(rng: random.Random, body: bytes) -> bytes:
    """Insert random bytes, a repeated slice, or text that JSON escapes get wrong."""
    at = rng.randrange(len(body) + 1)
    chunk = rng.choice([
        rng.randbytes(rng.randint(1, 16)), body[at : at + rng.randint(1, 64)] * rng.randint(2, 20),
        b'"\\ud800"', b"\\u0000", b"\xef\xbb\xbf", b"\xc3\x28", b"\xed\xa0\x80", b"\x00",
        b",", b'"', b"\\", b"null", b'"$thread_id":[]',
    ])  # fmt: skip
    return body[:at] + chunk + body[at:]


def random_bytes(rng: random.Random, body: bytes) -> bytes:
    if rng.random() < 0.02:  # past the 10 MiB limit: a 413 from the Content-Length alone
        return rng.randbytes(11 * 1024 * 1024)
    return rng.randbytes(rng.choice([0, 1, 2, 10, 100, 1000, 20_000]))


MUTATORS: list[Callable[[random.Random, bytes], bytes]] = [
    truncate, flip_bytes, huge_number, deep_nesting, splice, random_bytes,
]  # fmt: skip


def encode_for_wire(rng: random.Random, body: bytes) -> tuple[bytes, dict[str, str]]:
    """Maybe gzip (well or badly), with a Content-Encoding that may or may not say so."""
    headers = {"content-type": "application/json"}
    roll = rng.random()
    if roll < 0.55:
        return body, headers
    packed = gzip.compress(body)
    headers["content-encoding"] = rng.choice(
        ["gzip", "gzip", "x-gzip", "GZIP", "identity", "br", ""]
    )
    if roll < 0.75:
        return packed, headers
    if roll < 0.83:
        return truncate(rng, packed), headers
    if roll < 0.9:
        return flip_bytes(rng, packed), headers
    if roll < 0.95:  # two members back to back, or trailing garbage after one
        return packed + rng.choice([packed, rng.randbytes(8)]), headers
    return GZIP_BOMB, headers


# 11 MiB of JSON whitespace in 11 KB of gzip: decompressed past the limit, so a 413.
GZIP_BOMB = gzip.compress(b"[" + b" " * (11 * 1024 * 1024) + b"]")


def bodies(rng: random.Random, n: int) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    seeds = seed_bodies()
    for _ in range(n):
        body = rng.choice(seeds)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            body = rng.choice(MUTATORS)(rng, body)
        data, headers = encode_for_wire(rng, body)
        yield rng.choice(PATHS), data, headers


def run_bytes_fuzz(base: str, key: str, args: argparse.Namespace) -> Outcome:
    """POST every mutated body with the valid key; any 5xx, hang or odd answer is a problem."""
    outcome = Outcome("bytes fuzz")
    rng = random.Random(args.bytes_seed)
    session = requests.Session()
    started = time.monotonic()
    for path, data, headers in bodies(rng, args.bytes_cases):
        try:
            response = session.post(
                base + path,
                data=data,
                headers={**headers, "x-api-key": key},
                timeout=REQUEST_TIMEOUT_S,
            )
        except requests.RequestException as error:  # a hang, or the server went away
            outcome.statuses[0] += 1
            outcome.problems.append(f"{path} {headers} {data[:120]!r}: {error!r}")
            session = requests.Session()
            continue
        outcome.statuses[response.status_code] += 1
        problem = odd_answer(response)
        if problem:
            outcome.problems.append(f"{path} {headers} {data[:120]!r}: {problem}")
    print(f"bytes fuzz took {time.monotonic() - started:.0f} s (seed {args.bytes_seed})")
    return outcome


def odd_answer(response: requests.Response) -> str | None:
    """What is wrong with an answer, if anything: the status set and the JSON shapes."""
    if response.status_code not in EXPECTED:
        return f"status {response.status_code}: {response.text[:300]}"
    try:
        payload = response.json()
    except ValueError:
        return f"status {response.status_code} with a non-JSON body: {response.text[:300]}"
    if response.status_code == 200:
        return None if payload.get("status") == "success" else f"200 with {payload}"
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not detail:
        return f"{response.status_code} without a detail: {payload}"
    if response.status_code == 422 and not all(
        isinstance(e, dict) and e.get("loc", [None])[0] == "body" and e.get("msg") and e.get("type")
        for e in detail
    ):
        return f"422 detail not in FastAPI's shape: {detail!r:.300}"
    return None


# ---------------------------------------------------------------- the report


def report(outcomes: list[Outcome]) -> int:
    """Print the figures; 0 only if nothing at all went wrong."""
    print("\n================ make fuzz: figures ================")
    for outcome in outcomes:
        total = sum(outcome.statuses.values())
        by_status = ", ".join(f"{s}: {n}" for s, n in sorted(outcome.statuses.items()))
        print(f"{outcome.name}: {total} requests ({by_status}); 5xx: {outcome.server_errors}")
    total = sum(sum(o.statuses.values()) for o in outcomes)
    server_errors = sum(o.server_errors for o in outcomes)
    problems = [p for o in outcomes for p in o.problems]
    print(f"total: {total} requests; 5xx: {server_errors}; problems: {len(problems)}")
    for problem in problems[:20]:
        print(f"\nPROBLEM: {problem}")
    return 1 if server_errors or problems else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=500, help="schemathesis, per operation")
    parser.add_argument("--seed", type=int, help="schemathesis seed (random by default)")
    parser.add_argument("--bytes-cases", type=int, default=2000)
    parser.add_argument("--bytes-seed", type=int, default=random.randrange(2**32))
    return parser.parse_args()


@contextmanager
def serving(workdir: Path) -> Iterator[tuple[str, str, Path, Path]]:
    """A fresh server and store: each phase gets its own, so each store verdict is its own."""
    data_dir, log = workdir / "data", workdir / "server.log"
    key = create_key(data_dir)
    port = free_port()
    server = start_server(data_dir, port, log)
    try:
        yield f"http://127.0.0.1:{port}", key, data_dir, log
    finally:
        stop_server(server)


def main() -> int:
    args = parse_args()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="trubrics-fuzz-") as tmp:
        with serving(Path(tmp) / "schemathesis") as (base, key, data_dir, log):
            outcomes.append(run_schemathesis(base, key, Path(tmp), args))
            check_store(data_dir, log, outcomes[-1])
        with serving(Path(tmp) / "bytes") as (base, key, data_dir, log):
            outcomes.append(run_bytes_fuzz(base, key, args))
            check_store(data_dir, log, outcomes[-1])
    return report(outcomes)


if __name__ == "__main__":
    sys.exit(main())
