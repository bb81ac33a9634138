"""The console: a node's traffic, live, and its conversations, in the browser.

``tokens`` are the console's sign-in secrets (kept hashed, like keys); ``sessions`` turn a
token into a cookie; ``live`` feeds the requests the app answers to the browsers watching
(bounded, dropping with a count: a stalled viewer never slows ingestion); ``overview`` and
``conversations`` read what the pages show, from an engine when one is configured
(``engines``) or else from the node's store; ``web`` serves it all under ``/console``,
with its pages and assets from ``static/`` (plain HTML, CSS and JS: no build step, no
request leaves the node).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..keys import open_key_store
from ..store.sqlite import connect
from ..urls import parse_sink_url
from .conversations import Conversations, StoreConversations
from .engines import open_engine
from .live import LiveFeed
from .overview import Overview
from .sessions import Sessions
from .tokens import open_tokens
from .web import ConsoleApp

__all__ = ["ConsoleApp", "LiveFeed", "open_console"]


def open_console(
    database: Path,
    *,
    registry: str | None,
    forward_to: Sequence[str],
    last_used: Callable[[], Mapping[str, float]],
    refusals: Callable[[], Mapping[str, int]],
    status: Callable[[], Mapping[str, Any]],
) -> tuple[LiveFeed, ConsoleApp]:
    """The live feed (for the app to hand answered requests to) and the console's app.
    Its reads use connections of their own: the store's, the key store's (the registry
    when ``registry`` is set) and the first engine of ``forward_to``, if any (one for the
    pages, one for the overview: they are read in different threads)."""
    feed = LiveFeed()
    conversations: Conversations = (
        open_engine(parse_sink_url(forward_to[0])) if forward_to else StoreConversations(database)
    )
    overview = Overview(
        database,
        keys=open_key_store(registry, lambda: connect(database)),
        last_used=last_used,
        refusals=refusals,
        status=status,
        engine=open_engine(parse_sink_url(forward_to[0])) if forward_to else None,
    )
    app = ConsoleApp(
        sessions=Sessions(open_tokens(registry, lambda: connect(database))),
        feed=feed,
        overview=overview.read,
        conversations=conversations,
        on_close=overview.close,
    )
    return feed, app
