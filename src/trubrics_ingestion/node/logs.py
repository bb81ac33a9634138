"""Logging as one JSON object per line, for every line a node prints.

Our loggers, uvicorn's, asyncio's, warnings and uncaught exceptions all go through the
stdlib ``logging`` module to one handler on stderr whose ``JsonFormatter`` writes
``{"time", "level", "logger", "msg", ...fields}``; the forwarder child configures the
same. Structured fields travel in ``extra={"fields": {...}}``.
The access log writes one such line per request (``AccessLog``); it never carries a
header value, so never a key. The lines of requests answered in one iteration of the
event loop reach stderr in one write (``JsonLinesHandler.write_lines``), not one each.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import msgspec

from ..config import DEFAULTS

ACCESS_LOGGER = "trubrics_ingestion.access"
_encode = msgspec.json.Encoder(enc_hook=str).encode  # Paths and the like, as text


class JsonFormatter(logging.Formatter):
    """``{"time": ISO-8601 UTC, "level", "logger", "msg", **fields, "exc"?}`` on one line."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        line = self._head(record.created, record.levelname.lower(), record.name, _message(record))
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return _encode(line).decode()
        except (TypeError, ValueError, OverflowError):  # a field that is not JSON: say what
            return _encode({**line, "msg": repr(record.msg), "args": repr(record.args)}).decode()

    def line(
        self, created: float, level: str, logger: str, msg: str, fields: dict[str, Any]
    ) -> str:
        """What ``format`` makes of a record with these attributes, JSON ``fields`` and no
        exception, for a caller with no record to make (``AccessLog``)."""
        line = self._head(created, level, logger, msg)
        line.update(fields)
        return _encode(line).decode()

    def _head(self, created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
        return {"time": self._time(created), "level": level, "logger": logger, "msg": msg}

    def _time(self, created: float) -> str:
        """``2026-06-20T12:00:00.123Z``; the part up to the second is formatted once a second."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` (stderr) that also takes lines already formatted, many at once."""

    def write_lines(self, lines: Iterable[str], blame: logging.LogRecord) -> None:
        """Write ``lines`` with one system call, in order among other records (the
        handler's lock); a failure is reported as ``emit`` would, naming ``blame``."""
        text = "".join([line + self.terminator for line in lines])
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            try:
                self.stream.write(text)
                self.flush()
            except Exception:
                self.handleError(blame)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # a bad %-format in some library's call
        return f"{record.msg!r} % {record.args!r}"


def config(level: str = DEFAULTS.log_level) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document, also handed to ``uvicorn.Config(log_config=)``.

    Everything propagates to the root logger's JSON handler; uvicorn's loggers lose their
    own handlers and formats.
    """
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "()": JsonLinesHandler,
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
        },
    }


def configure(level: str = DEFAULTS.log_level) -> None:
    """JSON lines on stderr for this process: logs, warnings and uncaught exceptions."""
    logging.config.dictConfig(config(level))
    logging.captureWarnings(True)
    # Nothing of this is printed; not computing it makes each record cheaper.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("trubrics_ingestion").critical(
        "uncaught exception", exc_info=(kind, error, traceback)
    )


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    thread = args.thread.name if args.thread is not None else None
    logging.getLogger("trubrics_ingestion").critical(
        "uncaught exception in a thread",
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        extra={"fields": {"thread": thread}},
    )


class AccessLog:
    """One ``request`` line per request, at level info, written together per call.

    With the node's own logging (``config``: JSON lines handlers, no filters), each line
    is formatted straight from its fields and all go out in one write: no record, no
    trip through the logging machinery (measured: 3.1 us a line before, 1.4 after).
    Otherwise each line is a record as ``Logger.info`` would make it (cheaper: a copy
    of one made at start, with its own time and fields), handled one by one.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        model = logging.LogRecord(self._logger.name, logging.INFO, __file__, 0, "request", (), None)
        self._model = model.__dict__.copy()
        self._started = model.created - model.relativeCreated / 1000
        self._blame = model  # what a failed write is reported with

    def write(self, lines: Iterable[tuple[dict[str, Any], float]]) -> None:
        """Log each line's fields as of its time (Unix)."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        writers = _line_writers(logger)
        if writers is None:
            for fields, created in lines:
                logger.handle(self._record(fields, created))
            return
        lines, name = list(lines), logger.name
        for handler, formatter in writers:
            texts = [formatter.line(at, "info", name, "request", fields) for fields, at in lines]
            handler.write_lines(texts, self._blame)

    def _record(self, fields: dict[str, Any], created: float) -> logging.LogRecord:
        record = logging.LogRecord.__new__(logging.LogRecord)
        attributes = record.__dict__
        attributes.update(self._model)
        attributes["created"] = created
        attributes["msecs"] = (created - int(created)) * 1000
        attributes["relativeCreated"] = (created - self._started) * 1000
        attributes["fields"] = fields
        return record


def _line_writers(logger: logging.Logger) -> list[tuple[JsonLinesHandler, JsonFormatter]] | None:
    """The handlers a record of ``logger`` reaches and their formatters, if each writes
    what ``JsonFormatter.line`` makes as it would write a record (else None)."""
    if logger.disabled or logger.filters:
        return None
    writers = []
    for handler in _handlers(logger):
        formatter = handler.formatter
        if not (
            isinstance(handler, JsonLinesHandler)
            and isinstance(formatter, JsonFormatter)
            and not handler.filters
            and handler.level <= logging.INFO
        ):
            return None
        writers.append((handler, formatter))
    return writers


def _handlers(logger: logging.Logger) -> Iterator[logging.Handler]:
    """The handlers a record of ``logger`` reaches, as ``Logger.callHandlers`` finds them."""
    current: logging.Logger | None = logger
    while current is not None:
        yield from current.handlers
        current = current.parent if current.propagate else None
