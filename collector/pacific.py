"""Pacific-day arithmetic.

Meta's daily insights are days of America/Los_Angeles: a daily value's `end_time` is the Pacific midnight that
ends the day, in UTC (07:00Z in summer, 08:00Z in winter) — reference §9. A day is named here by its Pacific
`date`; `day_end_utc(d)` is the `end_time` Meta reports for it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")

# Meta rejects windows longer than this between since and until (reference §2.4).
MAX_WINDOW_S = 30 * 86400


def today(now: datetime) -> date:
    """The Pacific calendar date at `now` (an aware datetime)."""
    return now.astimezone(PACIFIC).date()


# A pass asks for the same ~31 days for every account (two zoneinfo conversions per call, 2 % of the
# collector's CPU before): memoised. Dates are immutable, the results aware and immutable too.
@functools.lru_cache(maxsize=1024)
def day_start_utc(day: date) -> datetime:
    """The Pacific midnight that starts `day`, in UTC."""
    return datetime.combine(day, time(0), tzinfo=PACIFIC).astimezone(UTC)


@functools.lru_cache(maxsize=1024)
def day_end_utc(day: date) -> datetime:
    """The Pacific midnight that ends `day`, in UTC: the `end_time` Meta gives the day's value."""
    return day_start_utc(day + timedelta(days=1))


@functools.lru_cache(maxsize=1024)
def day_closed_by(end_time: datetime) -> date:
    """The Pacific day a daily value's `end_time` closes: the day before the Pacific midnight nearest to it.
    Meta's samples say 07:00Z in summer and 08:00Z in winter, its docs "periods ending on UTC-07:00" (07:00Z
    all year); a fake may say 00:00Z. All of them name the same day here (reference §9: build for both)."""
    local = end_time.astimezone(PACIFIC)
    midnight = local.date() if local.hour < 12 else local.date() + timedelta(days=1)
    return midnight - timedelta(days=1)


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def complete_days(now: datetime, count: int) -> list[date]:
    """The `count` complete Pacific days before today, oldest first."""
    last = today(now) - timedelta(days=1)
    return [last - timedelta(days=offset) for offset in range(count - 1, -1, -1)]


def windows(days: Sequence[date], max_span_s: int = MAX_WINDOW_S) -> list[list[date]]:
    """Split sorted, distinct `days` into runs of consecutive days whose span (start of the first to the
    end of the last) is at most `max_span_s`, so each run is one since/until request."""
    runs: list[list[date]] = []
    for day in days:
        current = runs[-1] if runs else None
        if (
            current is not None
            and day == current[-1] + timedelta(days=1)
            and epoch(day_end_utc(day)) - epoch(day_start_utc(current[0])) <= max_span_s
        ):
            current.append(day)
        else:
            runs.append([day])
    return runs


def parse_graph_time(text: str) -> datetime:
    """Parse Meta's ISO-8601 timestamps (`+0000` without colon, `Z`, fractional seconds); always aware.

    Meta's timestamps are UTC (reference §9), so one without an offset is read as UTC: a naive datetime
    compared with the aware clock would raise TypeError in the middle of a job. Raises ValueError for text
    that is not a timestamp.
    """
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
