"""The real structlog pipeline: JSON output, redaction of tokens everywhere an event can carry them."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson
import pytest
import structlog

from collector import logs, progress, redaction

TOKEN = "tok-LOGTEST-0123456789"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    redaction.register_secret(TOKEN)
    logs.configure(level="info", json=True, stream=stream)
    yield stream
    redaction.forget_secrets()
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == "ig-collector"]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_iso_utc_timestamp_and_level(captured: io.StringIO) -> None:
    structlog.get_logger("t").info("pass_done", accounts=3, when=datetime(2025, 1, 2, tzinfo=UTC))
    (event,) = lines(captured)
    assert event["event"] == "pass_done" and event["level"] == "info" and event["accounts"] == 3
    assert event["when"] == "2025-01-02T00:00:00+00:00"
    assert str(event["timestamp"]).endswith("Z")


def test_tokens_are_redacted_everywhere(captured: io.StringIO) -> None:
    log = structlog.get_logger("t")
    url = f"https://graph.instagram.com/v24.0/1/media?access_token={TOKEN}&after=x"
    log.info(f"calling {url}", url=url, nested={"params": {"access_token": TOKEN}, "list": [TOKEN]},
             obj=ValueError(f"bad {TOKEN}"), shape="next=https://x/?access_token=IGAAunregisteredtoken0123456789")
    try:
        raise RuntimeError(f"failed with {TOKEN}")
    except RuntimeError:
        log.exception("call_failed")
    structlog.contextvars.bind_contextvars(token_hint=TOKEN)
    try:
        log.warning("with_context")
    finally:
        structlog.contextvars.clear_contextvars()
    logging.getLogger("aiohttp.client").warning("foreign %s", url)
    out = captured.getvalue()
    assert TOKEN not in out
    assert "IGAAunregisteredtoken0123456789" not in out
    events = lines(captured)
    foreign = f"foreign {url}".replace(TOKEN, "***")
    assert [e["event"] for e in events][1:] == ["call_failed", "with_context", foreign]
    assert "RuntimeError: failed with ***" in str(events[1]["exception"])
    assert events[3]["logger"] == "aiohttp.client"


def test_level_filters_and_foreign_info_is_dropped(captured: io.StringIO) -> None:
    logs.configure(level="warning", json=True, stream=captured)
    structlog.get_logger("t").info("hidden")
    logging.getLogger("asyncpg").info("hidden too")
    structlog.get_logger("t").warning("shown")
    assert [e["event"] for e in lines(captured)] == ["shown"]


def test_console_renderer_redacts(captured: io.StringIO) -> None:
    logs.configure(level="info", json=False, stream=captured)
    structlog.get_logger("t").info("console", token=TOKEN)
    out = captured.getvalue()
    assert "console" in out and TOKEN not in out and "***" in out


def test_progress_logs_periodically_when_not_a_tty(captured: io.StringIO) -> None:
    now = [0.0]
    display = progress.ProgressDisplay(captured, tty=False, log_interval_s=10.0, clock=lambda: now[0])
    for second in range(25):
        now[0] = float(second)
        display(progress.PassProgress(10, second // 3, 0, second * 10, second * 100, 0, 0, float(second)))
    display.close()
    events = [e for e in lines(captured) if e["event"] == "pass_progress"]
    assert [e["elapsed_s"] for e in events] == [0.0, 10.0, 20.0, 24.0]
    assert events[-1]["calls"] == 240 and events[-1]["calls_per_s"] == 10.0


def test_progress_redraws_one_line_on_a_tty() -> None:
    stream = io.StringIO()
    now = [0.0]
    display = progress.ProgressDisplay(stream, tty=True, redraw_interval_s=1.0, clock=lambda: now[0])
    display(progress.PassProgress(2, 0, 0, 0, 0, 0, 0, 0.0))
    now[0] = 0.5
    display(progress.PassProgress(2, 1, 0, 50, 10, 1, 2, 0.5))  # too soon: not drawn until close()
    display.close()
    out = stream.getvalue()
    assert out.count("\r") == 2 and out.endswith("\n") and "\n" not in out[:-1]
    assert "accounts 1/2  calls 50 (100/s)  rows 10  throttles 1  retries 2  failed 0  00:00" in out
