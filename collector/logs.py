"""structlog set-up: JSON lines for machines, a console renderer for people, and token redaction on both.

Every event passes through `redact_event` after exceptions are formatted and before rendering, so a token
inside a message, a URL, a nested dict or a traceback never reaches the output. Standard-library loggers
(aiohttp, asyncpg) are rendered by the same chain, at WARNING or above, so their lines are JSON and
redacted too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
import structlog.typing

from collector import redaction

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def redact(text: str) -> str:
    """`text` with every registered secret and token-shaped value masked (see `collector.redaction`)."""
    return redaction.redact(text)


def configure(*, level: str = "info", json: bool | None = None, stream: TextIO | None = None) -> None:
    """Set up structlog and stdlib logging for this process; safe to call again (the last call wins).

    `json=None` picks JSON unless `stream` (default stderr) is a TTY.
    """
    out = stream if stream is not None else sys.stderr
    as_json = json if json is not None else not _isatty(out)
    numeric = _LEVELS.get(level.lower())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r} (expected one of {', '.join(_LEVELS)})")

    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Tracebacks become text here, in both modes, so that redaction sees them.
        structlog.processors.format_exc_info,
        redact_event,
    ]
    renderer: structlog.typing.Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=_isatty(out))
        if _isatty(out):
            renderer = _clearing_line(renderer)

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        # Not cached: `configure` may run again (tests, a level change on reload) and must take effect.
        cache_logger_on_first_use=False,
    )

    # Foreign loggers go through the same processors; their chatter below WARNING is not ours to show.
    handler = logging.StreamHandler(out)
    handler.set_name("ig-collector")
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "ig-collector"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))


def redact_event(logger: Any, method_name: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secrets in every string value (and the event), recursively."""
    for key, value in event_dict.items():
        event_dict[key] = _redact_value(value)
    return event_dict


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redaction.redact(value)
    if value is None or isinstance(value, bool | int | float | decimal.Decimal):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    if isinstance(value, enum.Enum):
        return _redact_value(value.value)
    # Anything else (a yarl.URL, an exception instance) is rendered as text now, so it is redacted too.
    return redaction.redact(str(value))


def _clearing_line(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    """On a terminal, erase the current line first: a progress line being redrawn there
    (`progress.ProgressDisplay`) is overwritten instead of having the log line glued to its end."""

    def render(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
        return "\r\x1b[2K" + str(renderer(logger, method_name, event_dict))

    return render


def _dumps(obj: Any, **kwargs: Any) -> str:
    # Decimal is not native to orjson; after _redact_value everything else is.
    return orjson.dumps(obj, default=str).decode()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False
