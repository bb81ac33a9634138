"""How store-v6.db was made, by the release of schema v6 (commit 438d941, its own server:
``git worktree add /tmp/v6 438d941 && cd /tmp/v6 && make install &&
.venv/bin/python /path/to/make_store_v6.py OUT``): a real ``serve`` acknowledged three
batches (plain events, LLM events, and plain events under an ``Idempotency-Key``), so its
``dedup`` table holds their fingerprints as that release wrote them."""

import json, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path

out = Path(sys.argv[1])
cli = [sys.executable, "-m", "trubrics_ingestion"]
key = json.loads(
    subprocess.run(
        [*cli, "keys", "create", "--project", "v6", "--json", "--data-dir", str(out)],
        capture_output=True, check=True, text=True,
    ).stdout
)["key"]
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = subprocess.Popen([*cli, "serve", "--port", str(port), "--data-dir", str(out)])
for _ in range(100):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz")
        break
    except OSError:
        time.sleep(0.1)
BATCHES = [
    ("/publish_events", [{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}], {}),
    ("/publish_llm_events", [{"user_id": "u", "prompt": "p", "generation": "g"}], {}),
    ("/publish_events", [{"user_id": "k", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}],
     {"idempotency-key": "k1"}),
]
for path, items, headers in BATCHES:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(items).encode(),
        {"x-api-key": key, "content-type": "application/json", **headers},
    )
    print(urllib.request.urlopen(request).read())
server.send_signal(signal.SIGTERM)
server.wait(30)
