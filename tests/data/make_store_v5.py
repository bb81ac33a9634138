"""How store-v5.db and store-v5.ndjson were made, with the release of schema v5 (commit
cbafe6f; it imports modules that release had, so it runs only there:
``git worktree add /tmp/v5 cbafe6f && PYTHONPATH=/tmp/v5/src python make_store_v5.py OUT``):
batches of both endpoints, some materialised into rows (a pruned range, forward cursors),
some still only journaled, and that release's export of them all."""

import asyncio, json, shutil, sqlite3, sys
from pathlib import Path
from trubrics_ingestion.store.journal import Journal
from trubrics_ingestion.store.sqlite import connect
from trubrics_ingestion.store import materialise, read
from trubrics_ingestion.forward import cursors

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
db = out / "trubrics.db"
for p in out.glob("trubrics.db*"):
    p.unlink()


def event_batch(i):
    return json.dumps(
        [
            {
                "user_id": f"u{i}-{j}",
                "event": f"e{j}",
                "timestamp": f"2026-11-{10 + i % 10:02d}T0{j % 10}:00:00"
                + ("+02:00" if j % 2 else ""),
                "properties": {
                    "n": j,
                    "$thread_id": f"t{i}" if j % 3 == 0 else None,
                    "nested": {"a": [1, 2]},
                },
            }
            for j in range(5)
        ]
    ).encode()


def llm_batch(i):
    return json.dumps(
        [
            {
                "user_id": f"l{i}-{j}",
                "prompt": f"p{j}",
                "generation": f"g{j}",
                "assistant_id": "gpt",
                "latency": 1.5,
                "timestamp": f"2026-11-2{j}T12:00:00Z",
                "properties": {"k": "v"},
                "thread_id": f"th{i}",
            }
            for j in range(3)
        ]
    ).encode()


async def main():
    journal = Journal(db, dedup_window_s=0)
    journal.start()
    received = 1_764_000_000_000_000
    for i in range(30):
        src, body = ("event", event_batch(i)) if i % 3 else ("llm", llm_batch(i))
        project = "alpha" if i % 4 else "beta"
        assert await journal.append(project, src, body, received + i * 1_000_000)
    journal.close()


asyncio.run(main())
conn = connect(db)
for _ in range(20):
    materialise.materialise(conn, max_batches=1)  # 20 batches -> rows, 10 left
cursors.ensure_table(conn)
cursors.advance(conn, "a", 37)  # mid-way through the rows (not a batch boundary)
seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
cursors.advance(conn, "b", seqs[-1])  # everything materialised delivered
conn.execute("DELETE FROM events WHERE seq <= 5")  # as if pruned
conn.close()
shutil.copy(db, out / "copy.db")
c2 = connect(out / "copy.db")
records = list(read.export(c2))
c2.close()
(out / "copy.db").unlink()
for p in out.glob("copy.db-*"):
    p.unlink()
(out / "store-v5.ndjson").write_text("".join(read.to_ndjson(r) + "\n" for r in records))
print(len(records), "events;", "rows", len(seqs) - 5)
