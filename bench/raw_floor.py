"""The raw floor: uvicorn (uvloop + httptools) and one msgspec decode per batch, no app.

What any Python node must at least spend per event: the HTTP stack the product runs on
(same loop, same parser, no access log) and the project's own ``Event`` struct decoding
the batch. No routing, auth, limits, logging or storage: a POST's whole body is decoded
and answered ``{"status":"success"}``; any other request (``/healthz`` polling) gets the
same 200 without a body to decode. bench/floor.py is the app with storage off; the gap
between the two floors is the app, the gap from this one to the node is everything.

Usage: ``python bench/raw_floor.py --port N --data-dir D`` (the data dir is ignored; it is
accepted so that every server of the bench starts alike).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import uvicorn
from starlette.types import Receive, Scope, Send

from trubrics_ingestion.schema import Event

DECODER = msgspec.json.Decoder(list[Event])
OK = b'{"status":"success"}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(OK)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, decode it (400 if it does not decode), answer."""
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    status = 200
    if scope["method"] == "POST":
        try:
            DECODER.decode(b"".join(chunks))
        except msgspec.DecodeError:  # ValidationError included
            status = 400
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": OK})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, help="ignored")
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
