"""Running one ingestion node: open the store, start the journal, serve HTTP, shut down cleanly.

uvicorn (uvloop + httptools) serves the app. On SIGTERM or Ctrl-C it stops accepting,
lets in-flight requests finish (their batches still commit), and only then is the
journal closed, committing anything still queued. Every line printed, uvicorn's too, is
a JSON object (``logs.py``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from importlib.metadata import version
from typing import Any

import uvicorn
from starlette.types import ASGIApp

from .. import ingest
from ..config import Settings, shown
from ..console import ConsoleApp, LiveFeed, open_console
from ..ingest import app as http
from ..ingest.access import OperatorAccess
from ..ingest.body import BodyBudget
from ..ingest.connection import ConnectionLimits, LimitedHttpToolsProtocol
from ..ingest.limits import PayloadLimits
from ..ingest.ratelimit import RateLimiter
from ..keys import KeyStore, KeyStoreUnavailable, PolledKeyCache, open_key_cache, open_key_store
from ..keys.model import key_problem, weakness
from ..otlp.counts import OtlpCounts
from ..otlp.receiver import Receiver
from ..otlp.resolver import Resolver
from ..store import sqlite as store
from ..store.journal import Journal
from . import logs
from .children import background_children
from .logs import AccessLog
from .metrics import Metrics
from .status import NodeStatus

log = logging.getLogger("trubrics_ingestion")


def serve(settings: Settings, *, warnings: Sequence[str] = ()) -> None:
    """Serve until stopped; ``warnings`` (of the command line) are logged first. Whatever
    was opened is closed in the reverse order, also when the start fails halfway."""
    logs.configure(settings.log_level)
    for warning in warnings:
        log.warning(warning)
    with contextlib.ExitStack() as opened:
        conn = opened.enter_context(contextlib.closing(_open_store(settings)))
        key_store = opened.enter_context(
            contextlib.closing(open_key_store(settings.registry, lambda: conn))
        )
        _seed_key(key_store, settings)
        cache = opened.enter_context(
            contextlib.closing(
                open_key_cache(
                    key_store,
                    shared=settings.registry is not None,
                    database=settings.database_path,
                    refresh_interval_s=settings.key_refresh_interval_s,
                )
            )
        )
        metrics = opened.enter_context(
            contextlib.closing(
                Metrics(database=settings.database_path, per_project=settings.metrics_per_project)
            )
        )
        status = NodeStatus(
            settings.database_path,
            settings.forward_to,
            cache if isinstance(cache, PolledKeyCache) else None,
        )
        metrics.registry.register(status)
        journal = Journal(
            settings.database_path,
            dedup_window_s=settings.dedup_window_s,
            dedup_max_entries=settings.dedup_max_entries,
            metrics=metrics,
        )
        journal.start()
        opened.callback(journal.close)  # commits what is still queued
        for child in background_children(settings):
            child.start()
            opened.callback(child.stop)
        exports = _start_otlp(settings, metrics, opened)
        feed, console = open_console(
            settings.database_path,
            registry=settings.registry,
            forward_to=settings.forward_to,
            last_used=cache.last_used.copy,
            refusals=metrics.refusals,
            status=status.readiness,
        )
        opened.callback(console.close)
        app = build_app(
            settings,
            keys=cache,
            journal=journal,
            metrics=metrics,
            readiness=status.readiness,
            exports=exports,
            console=(feed, console),
        )
        opened.callback(app.close)  # counts and logs what the loop answered last
        log.info("starting", extra={"fields": startup_fields(settings)})
        url = f"http://{settings.host}:{settings.port}/console"
        log.info("console at %s", url, extra={"fields": {"console": url}})
        _hint_if_keyless(key_store, settings)
        config = uvicorn_config(app, settings, on_refused=metrics.refused)
        _exit_zero_on_stop_signals()
        _tune_gc()
        uvicorn.Server(config).run()


def _start_otlp(settings: Settings, metrics: Metrics, opened: contextlib.ExitStack) -> Receiver:
    """The OTLP receiver, and the resolver thread that turns its exports into events."""
    counts = OtlpCounts()
    metrics.registry.register(counts)
    resolver = Resolver(settings.database_path, window_s=settings.otlp_window_s, counts=counts)
    resolver.start()
    opened.callback(resolver.close)
    return Receiver(counts, resolver.wake)


def _tune_gc() -> None:
    """Fewer, cheaper cyclic garbage collections while serving.

    Every batch decodes into a few hundred objects, so CPython's default (a young
    collection every 700 allocations, a full one every 100 of those) collects several
    times per request, and each full collection walks everything imported at startup.
    Frozen, the startup heap is never walked again; the thresholds then let a young
    collection come every 50,000 allocations (a few MB of garbage at most, as cycles are
    rare here). Measured with ``make bench``: 3.4 -> 2.9 µs of CPU per event, and 50% more
    events per second."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)


def _open_store(settings: Settings) -> sqlite3.Connection:
    try:
        return store.connect(settings.database_path)
    except store.NotPrivate as exc:
        log.critical("the store cannot be kept private: %s", exc)
        raise SystemExit(1) from None


def build_app(
    settings: Settings,
    *,
    keys: http.Keys,
    journal: http.Journal,
    metrics: Metrics | None = None,
    readiness: Callable[[], dict[str, Any]] = dict,
    exports: http.Exports | None = None,
    console: tuple[LiveFeed, ConsoleApp] | None = None,
) -> http.IngestionApp:
    """The ingestion app, configured by ``settings``. Without ``metrics``, it makes its own;
    ``readiness`` adds details to ``/readyz`` (the forwarding backlog, the key registry);
    without ``exports`` (an OTLP receiver), the OTLP endpoints are not served;
    ``console``: its live feed and app, served under ``/console``."""
    return http.IngestionApp(
        keys=keys,
        readiness=readiness,
        journal=journal,
        max_body_bytes=settings.max_body_bytes,
        limits=PayloadLimits(
            max_event_bytes=settings.max_event_bytes, max_depth=settings.max_depth
        ),
        rate=RateLimiter(
            events_per_s=settings.rate_limit_events_per_s, burst=settings.rate_limit_burst
        ),
        budget=BodyBudget(settings.max_buffered_bytes),
        openapi=resources.files(ingest).joinpath("openapi.json").read_bytes(),
        metrics=metrics
        if metrics is not None
        else Metrics(database=settings.database_path, per_project=settings.metrics_per_project),
        access_log=AccessLog() if settings.access_log else None,
        cors_origins=settings.cors_origins,
        access=OperatorAccess(settings.metrics_token),
        exports=exports,
        live=console[0] if console else None,
        console=console[1] if console else None,
    )


def startup_fields(settings: Settings) -> dict[str, object]:
    """What an operator needs to know of a starting node: every setting, by group, a
    secret only redacted (URLs without passwords, whether a token is set) or not at all."""
    return {"version": version("trubrics-ingestion"), **shown(settings)}


def uvicorn_config(
    app: ASGIApp, settings: Settings, *, on_refused: Callable[[int], None] | None = None
) -> uvicorn.Config:
    """The HTTP server settings, shared with the benchmark's validation-only floor;
    ``on_refused`` counts the requests the connection layer answers itself."""
    limits = ConnectionLimits(
        max_head_bytes=settings.max_head_bytes,
        max_headers=settings.max_headers,
        request_timeout_s=settings.request_timeout_s,
        max_connections=settings.max_connections,
        on_refused=on_refused,
    )
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=LimitedHttpToolsProtocol.with_limits(limits),
        lifespan="off",
        access_log=False,  # ours is in app.py, with the project and the events stored
        log_config=logs.config(settings.log_level),
        server_header=False,
        log_level=settings.log_level,
        timeout_graceful_shutdown=round(settings.shutdown_timeout_s),
    )


def _exit_zero_on_stop_signals() -> None:
    """Make SIGTERM/SIGINT a clean exit (status 0) once the journal is closed.

    uvicorn handles both during serving and re-raises the signal after its graceful
    shutdown; this handler turns that into ``SystemExit(0)``, so the ``finally`` that
    closes the journal still runs and supervisors see a clean stop.
    """

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def _seed_key(key_store: KeyStore, settings: Settings) -> None:
    """Register ``TRUBRICS_INIT_API_KEY`` for ``TRUBRICS_INIT_PROJECT`` (headless deployments).
    With an unreachable registry this is logged and skipped: another node, or this one's
    next start, seeds it; the node serves meanwhile."""
    if not (settings.init_project and settings.init_api_key):
        return
    problem = key_problem(settings.init_api_key)
    if problem:
        log.critical("TRUBRICS_INIT_API_KEY is not usable as a key: %s", problem)
        raise SystemExit(1)
    problem = weakness(settings.init_api_key.strip())
    if problem:  # stored as an unsalted SHA-256: guesses can be tried offline, very fast
        log.critical(
            "TRUBRICS_INIT_API_KEY is too weak to be a key (whoever reads its SHA-256, in the"
            " store, the key registry or a backup, could try guesses offline): %s",
            problem,
        )
        raise SystemExit(1)
    try:
        seeded = key_store.seed_key(settings.init_project, settings.init_api_key.strip())
    except KeyStoreUnavailable as exc:  # the node's own store failing stays fatal
        log.error("could not seed TRUBRICS_INIT_API_KEY in the key registry: %s", exc)
        return
    if seeded:
        log.info(
            "seeded a key from TRUBRICS_INIT_API_KEY",
            extra={"fields": {"project": settings.init_project}},
        )


def _hint_if_keyless(key_store: KeyStore, settings: Settings) -> None:
    """Tell a first-time user how to get a key (not with a registry: keys are managed
    there, and an unreachable one would only delay the start)."""
    if settings.registry:
        return
    if not any(key.revoked_at is None for key in key_store.list_keys()):
        command = f"{_this_command()} keys create --project default --data-dir {settings.data_dir}"
        log.warning(
            "No API keys yet. Create one with: %s", command, extra={"fields": {"command": command}}
        )


def _this_command() -> str:
    """How the operator ran us (``.venv/bin/trubrics-ingestion`` under ``make serve``)."""
    argv0 = sys.argv[0]
    return argv0 if argv0.endswith("trubrics-ingestion") else "trubrics-ingestion"
