"""Live progress of a collection pass: one redrawn line on a terminal, a periodic log event otherwise.

`passes.run_pass` calls its `on_progress` callback with `PassProgress` snapshots as often as it likes;
`ProgressDisplay` rate-limits the output itself, so the callback stays cheap on the hot path.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import TextIO

import structlog

log = structlog.get_logger("collector.progress")


@dataclasses.dataclass(frozen=True, slots=True)
class PassProgress:
    """A snapshot of one pass's counters."""

    accounts_total: int
    accounts_done: int  # finished, successfully or not
    accounts_failed: int  # finished with a permanent failure (token, permission, ...)
    calls: int  # Graph API requests sent
    rows_written: int  # rows committed to PostgreSQL
    throttles: int
    retries: int
    elapsed_s: float
    # Why a pass can slow down with nothing throttled: the scopes (the app and accounts) whose reported usage
    # holds calls back now, and the highest usage Meta last reported for the app (None: none reported yet).
    budget_held: int = 0
    app_usage_pct: float | None = None

    @property
    def calls_per_s(self) -> float:
        return self.calls / self.elapsed_s if self.elapsed_s > 0 else 0.0


def format_line(p: PassProgress) -> str:
    """The one-line rendering used on a terminal."""
    return (f"accounts {p.accounts_done}/{p.accounts_total}  calls {p.calls} ({p.calls_per_s:.0f}/s)  "
            f"rows {p.rows_written}  throttles {p.throttles}  retries {p.retries}  "
            f"failed {p.accounts_failed}  {_clock(p.elapsed_s)}{_budget(p)}")


def _budget(p: PassProgress) -> str:
    parts = [] if p.app_usage_pct is None else [f"app usage {p.app_usage_pct:.0f}%"]
    if p.budget_held:
        parts.append(f"held by budget {p.budget_held}")
    return "  " + "  ".join(parts) if parts else ""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressDisplay:
    """The `on_progress` callback of a pass. Call `close()` when the pass is over (prints the last state)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None,
                 redraw_interval_s: float = 0.2, log_interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = tty if tty is not None else _isatty(self._stream)
        self._interval_s = redraw_interval_s if self._tty else log_interval_s
        self._clock = clock
        self._last_shown: float | None = None
        self._latest: PassProgress | None = None
        self._width = 0

    def __call__(self, progress: PassProgress) -> None:
        self._latest = progress
        now = self._clock()
        if self._last_shown is not None and now - self._last_shown < self._interval_s:
            return
        self._last_shown = now
        self._show(progress)

    def close(self) -> None:
        """Show the final snapshot (if any) and end the terminal line."""
        if self._latest is None:
            return
        self._show(self._latest)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
        self._latest = None

    def _show(self, p: PassProgress) -> None:
        if self._tty:
            line = format_line(p)
            # Pad over the previous, possibly longer line instead of relying on terminal escape codes.
            self._stream.write("\r" + line.ljust(self._width))
            self._stream.flush()
            self._width = len(line)
        else:
            fields = dataclasses.asdict(p)
            fields.update(elapsed_s=round(p.elapsed_s, 3), calls_per_s=round(p.calls_per_s, 1))
            log.info("pass_progress", **fields)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
