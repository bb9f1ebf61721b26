"""Scheduling rules with explicit times: nothing sleeps, nothing reads the clock."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta

import pytest

from collector import models, scheduler, settings

S = settings.ScheduleSettings()
NOW = datetime(2025, 6, 10, 12, 0, 0, tzinfo=UTC)  # 05:00 PDT


def ok(at: datetime) -> scheduler.JobState:
    return scheduler.JobState(last_success_at=at, last_attempt_at=at, consecutive_failures=0)


def test_new_account_is_due_at_once() -> None:
    for job in models.Job:
        assert scheduler.next_due("17841400000000001", job, None, NOW, S) == NOW
        assert scheduler.next_due("17841400000000001", job, scheduler.JobState(), NOW, S) == NOW


def test_phase_is_stable_and_differs_per_job() -> None:
    a = scheduler.phase("17841400000000001", models.Job.MEDIA)
    assert a == scheduler.phase("17841400000000001", models.Job.MEDIA)
    assert 0.0 <= a < 1.0
    assert a != scheduler.phase("17841400000000001", models.Job.STORIES)
    assert a != scheduler.phase("17841400000000002", models.Job.MEDIA)


def test_interval_job_runs_once_per_interval_on_its_own_slot() -> None:
    acct, job = "17841400000000001", models.Job.MEDIA
    first = scheduler.next_due(acct, job, ok(NOW), NOW, S)
    assert NOW + timedelta(minutes=30) <= first <= NOW + timedelta(minutes=90)
    # Each later run lands exactly one interval after the previous slot, even when it started late.
    late_start = first + timedelta(seconds=40)
    second = scheduler.next_due(acct, job, ok(late_start), late_start, S)
    assert second - first == timedelta(seconds=S.media_discovery_interval_s)
    offset = first.timestamp() % S.media_discovery_interval_s
    assert offset == pytest.approx(scheduler.phase(acct, job) * S.media_discovery_interval_s, abs=1e-3)


def test_daily_account_insights_after_pacific_midnight_with_jitter() -> None:
    acct, job = "17841400000000001", models.Job.ACCOUNT_INSIGHTS
    due = scheduler.next_due(acct, job, ok(NOW), NOW, S)
    # The next Pacific midnight after 2025-06-10 05:00 PDT is 2025-06-11 07:00 UTC.
    midnight = datetime(2025, 6, 11, 7, 0, tzinfo=UTC)
    low = midnight + timedelta(seconds=S.account_insights_after_midnight_s)
    assert low <= due < low + timedelta(seconds=S.jitter_fraction * 86400)
    # Winter: midnight PST is 08:00 UTC.
    winter = datetime(2025, 1, 10, 20, 0, tzinfo=UTC)
    due_w = scheduler.next_due(acct, job, ok(winter), winter, S)
    assert due_w >= datetime(2025, 1, 11, 8, 0, tzinfo=UTC) + timedelta(seconds=1800)
    assert due_w < datetime(2025, 1, 11, 8, 0, tzinfo=UTC) + timedelta(hours=3)


def test_daily_trigger_across_dst_change() -> None:
    # 2025-03-09 is the spring-forward day: its midnight is still PST (08:00 UTC), the next one is PDT.
    s0 = settings.ScheduleSettings(account_insights_after_midnight_s=0, jitter_fraction=0)
    spring = datetime(2025, 3, 9).date()
    assert scheduler.daily_trigger(spring, 0.0, s0) == datetime(2025, 3, 9, 8, tzinfo=UTC)
    next_day = spring + timedelta(days=1)
    assert scheduler.daily_trigger(next_day, 0.0, s0) == datetime(2025, 3, 10, 7, tzinfo=UTC)


def test_account_days() -> None:
    assert scheduler.account_days(None, NOW, S, 30) is None  # never succeeded: the backfill
    assert scheduler.account_days(NOW - timedelta(hours=20), NOW, S, 30) == 3
    assert scheduler.account_days(NOW - timedelta(days=6), NOW, S, 30) == 8  # downtime widens the window
    assert scheduler.account_days(NOW - timedelta(days=90), NOW, S, 30) == 30


def test_failed_job_backs_off_then_caps_at_its_period() -> None:
    acct, job = "17841400000000001", models.Job.MEDIA
    failing = scheduler.JobState(NOW - timedelta(hours=3), NOW, 1)
    assert scheduler.next_due(acct, job, failing, NOW, S) == NOW + timedelta(seconds=60)
    failing = scheduler.JobState(NOW - timedelta(hours=3), NOW, 3)
    assert scheduler.next_due(acct, job, failing, NOW, S) == NOW + timedelta(seconds=240)
    failing = scheduler.JobState(None, NOW, 40)
    assert scheduler.next_due(acct, job, failing, NOW, S) == NOW + timedelta(seconds=3600)
    fast = settings.ScheduleSettings(media_discovery_interval_s=2.0)
    assert scheduler.next_due(acct, job, failing, NOW, fast) == NOW + timedelta(seconds=2)


def test_restart_after_downtime_spreads_10000_accounts_over_the_interval() -> None:
    job = models.Job.MEDIA
    interval = S.media_discovery_interval_s
    down_since = NOW - timedelta(hours=5)
    per_second: collections.Counter[int] = collections.Counter()
    per_minute: collections.Counter[int] = collections.Counter()
    for i in range(10_000):
        due = scheduler.next_due(str(17841400000000000 + i), job, ok(down_since), NOW, S)
        delay = (due - NOW).total_seconds()
        assert 0.0 <= delay < interval
        per_second[int(delay)] += 1
        per_minute[int(delay // 60)] += 1
    assert max(per_second.values()) <= 12  # 2.8 per second on average; never a burst
    assert len(per_minute) == 60
    expected = 10_000 / 60
    assert all(0.6 * expected <= n <= 1.4 * expected for n in per_minute.values())


def test_restart_spreads_missed_daily_job_over_the_jitter_window() -> None:
    job = models.Job.ACCOUNT_INSIGHTS
    window = S.jitter_fraction * 86400
    down_since = NOW - timedelta(days=2)
    delays = [
        (scheduler.next_due(str(17841400000000000 + i), job, ok(down_since), NOW, S) - NOW).total_seconds()
        for i in range(10_000)
    ]
    assert min(delays) >= 0 and max(delays) < window
    per_second = collections.Counter(int(d) for d in delays)
    assert max(per_second.values()) <= 8


def test_steady_state_hourly_load_has_no_burst() -> None:
    # Jobs that succeeded at their own slots are due again at distinct seconds of the next hour.
    job = models.Job.STORIES
    dues = []
    for i in range(10_000):
        acct = str(17841400000000000 + i)
        slot = scheduler.next_due(acct, job, ok(NOW - timedelta(hours=2)), NOW, S)
        ran = slot + timedelta(seconds=3)
        dues.append(scheduler.next_due(acct, job, ok(ran), ran, S))
    per_second = collections.Counter(int(d.timestamp()) for d in dues)
    assert max(per_second.values()) <= 12


H = 3600.0
D = 86400.0


def test_media_due_by_age_tier() -> None:
    tiers = S.media_tiers
    young = NOW - timedelta(hours=5)
    assert scheduler.media_due(young, None, NOW, tiers)
    assert not scheduler.media_due(young, NOW - timedelta(minutes=30), NOW, tiers)
    assert scheduler.media_due(young, NOW - timedelta(minutes=59), NOW, tiers)  # within the tolerance
    three_days = NOW - timedelta(days=3)
    assert not scheduler.media_due(three_days, NOW - timedelta(hours=2), NOW, tiers)
    assert scheduler.media_due(three_days, NOW - timedelta(hours=6), NOW, tiers)
    month = NOW - timedelta(days=20)
    assert not scheduler.media_due(month, NOW - timedelta(hours=12), NOW, tiers)
    assert scheduler.media_due(month, NOW - timedelta(days=1), NOW, tiers)
    old = NOW - timedelta(days=60)
    assert not scheduler.media_due(old, NOW - timedelta(days=3), NOW, tiers)
    assert scheduler.media_due(old, NOW - timedelta(days=7), NOW, tiers)
    bounded = ((2 * D, H), (30 * D, D))
    assert not scheduler.media_due(old, None, NOW, bounded)  # older than every tier
    assert scheduler.media_due(None, NOW - timedelta(days=2), NOW, bounded)  # unknown age: slowest tier
