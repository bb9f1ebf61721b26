"""Pacific-day arithmetic: end_time at 07:00/08:00 UTC and ≤ 30-day request windows."""

import itertools
from datetime import UTC, date, datetime, timedelta

from collector import pacific


def test_day_end_is_pacific_midnight_in_utc_by_season() -> None:
    assert pacific.day_end_utc(date(2026, 7, 1)) == datetime(2026, 7, 2, 7, tzinfo=UTC)
    assert pacific.day_end_utc(date(2026, 1, 10)) == datetime(2026, 1, 11, 8, tzinfo=UTC)


def test_today_follows_pacific_calendar() -> None:
    # 05:00 UTC on the 26th is still the 25th in California.
    assert pacific.today(datetime(2026, 11, 26, 5, tzinfo=UTC)) == date(2026, 11, 25)
    assert pacific.today(datetime(2026, 11, 26, 9, tzinfo=UTC)) == date(2026, 11, 26)


def test_complete_days_exclude_today_oldest_first() -> None:
    days = pacific.complete_days(datetime(2026, 11, 26, 13, tzinfo=UTC), 30)
    assert len(days) == 30
    assert days[-1] == date(2026, 11, 25)
    assert days[0] == date(2026, 10, 27)
    assert all(b - a == timedelta(days=1) for a, b in itertools.pairwise(days))


def test_windows_never_exceed_thirty_days() -> None:
    days = pacific.complete_days(datetime(2026, 11, 26, 13, tzinfo=UTC), 95)
    runs = pacific.windows(days)
    assert [d for run in runs for d in run] == days
    for run in runs:
        span = pacific.epoch(pacific.day_end_utc(run[-1])) - pacific.epoch(pacific.day_start_utc(run[0]))
        assert span <= pacific.MAX_WINDOW_S
    # Outside DST changes a 30-day window is exactly the limit, so 95 days need 4 calls, not more.
    assert len(runs) == 4


def test_windows_split_at_gaps() -> None:
    days = [date(2026, 5, 1), date(2026, 5, 2), date(2026, 5, 5)]
    assert pacific.windows(days) == [[date(2026, 5, 1), date(2026, 5, 2)], [date(2026, 5, 5)]]


def test_parse_graph_time_accepts_offset_without_colon() -> None:
    assert pacific.parse_graph_time("2019-04-05T07:56:32+0000") == datetime(2019, 4, 5, 7, 56, 32, tzinfo=UTC)
