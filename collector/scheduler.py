"""When each job of each account is due: pure functions of `now` and the persisted job state.

The daemon's loop is thin: it asks `next_due()` once per (account, job) when it loads the state and again
after every run, keeps the answers in a heap and dispatches what has come due. Nothing here sleeps or reads
a clock, so every rule is tested with explicit times.

Spreading the load. Every (account, job) has a fixed *phase* in [0, 1) derived from a hash of its id and
job name. Interval jobs run on a grid of slots `k * interval + phase * interval` (epoch-aligned), so
10,000 accounts with an hourly job fire at 10,000 distinct seconds of the hour, and a late run snaps back
to the account's own slot instead of drifting. Daily account insights run after each Pacific midnight,
plus `account_insights_after_midnight_s`, plus `phase * jitter_fraction` of a day.

Catching up. A job whose due time passed while the daemon was down is not fired at once: it goes to its
next slot at or after `now` on its catch-up grid (the job's own interval; for the daily job the jitter
window), so after an outage the backlog arrives at the steady-state rate instead of in one burst. Only a
job with no state at all (a brand-new account) is due immediately: its first collection starts at once.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from collector import models, pacific, settings

DAY_S = 86400.0
# A failed job is retried after `schedule.job_retry_base_s`, doubling per consecutive failure, capped at the
# job's own period and at RETRY_MAX_S (so a daily job with a transient failure is retried within the hour).
RETRY_MAX_S = 3600.0
# A media item whose refresh interval has *almost* passed is refreshed now rather than one media-job
# interval later: job runs drift by a few seconds around their slot.
MEDIA_DUE_TOLERANCE = 0.1


@dataclass(frozen=True, slots=True)
class JobState:
    """What `collector_job_state` remembers about one (account, job)."""

    last_success_at: datetime | None = None
    last_attempt_at: datetime | None = None
    consecutive_failures: int = 0

    @property
    def failing(self) -> bool:
        """The last attempt failed (it is newer than the last success)."""
        if self.consecutive_failures <= 0 or self.last_attempt_at is None:
            return False
        return self.last_success_at is None or self.last_attempt_at > self.last_success_at

    def after(self, attempted_at: datetime, *, succeeded: bool) -> JobState:
        """The state after one more run (what the writer's job-state upsert stores, kept in memory)."""
        if succeeded:
            return JobState(attempted_at, attempted_at, 0)
        return JobState(self.last_success_at, attempted_at, self.consecutive_failures + 1)


def phase(ig_user_id: str, job: models.Job) -> float:
    """A stable pseudo-random fraction in [0, 1) for one (account, job): the same on every host and run."""
    digest = hashlib.blake2b(f"{ig_user_id}:{job.value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def interval_s(job: models.Job, schedule: settings.ScheduleSettings) -> float:
    """The nominal period of a job (the daily job: one day)."""
    match job:
        case models.Job.PROFILE:
            return schedule.profile_interval_s
        case models.Job.MEDIA:
            return schedule.media_discovery_interval_s
        case models.Job.STORIES:
            return schedule.stories_interval_s
        case models.Job.DEMOGRAPHICS:
            return schedule.demographics_interval_s
        case models.Job.ACCOUNT_INSIGHTS:
            return DAY_S


def next_due(ig_user_id: str, job: models.Job, state: JobState | None, now: datetime,
             schedule: settings.ScheduleSettings) -> datetime:
    """When the job should next run, given what is known at `now`. A result <= now means: due now."""
    if state is None or (state.last_success_at is None and state.last_attempt_at is None):
        return now  # never ran: the first collection (with the backfill) starts at once
    frac = phase(ig_user_id, job)
    candidate: datetime | None
    if state.failing:
        assert state.last_attempt_at is not None  # failing implies an attempt
        candidate = state.last_attempt_at + timedelta(seconds=retry_delay_s(job, state, schedule))
    elif state.last_success_at is None:
        candidate = None
    elif job is models.Job.ACCOUNT_INSIGHTS:
        candidate = _next_daily_trigger(state.last_success_at, frac, schedule)
    else:
        period = interval_s(job, schedule)
        # The account's own slot at least half a period after the last success: a run that started late
        # (queue delay) keeps its phase instead of pushing every later run back.
        candidate = _slot_at_or_after(state.last_success_at + timedelta(seconds=period / 2), period, frac)
    if candidate is not None and candidate >= now:
        return candidate
    return _slot_at_or_after(now, catch_up_period_s(job, schedule), frac)


def retry_delay_s(job: models.Job, state: JobState, schedule: settings.ScheduleSettings) -> float:
    """Back-off after `state.consecutive_failures` failures in a row (exponential, capped)."""
    exponent = min(max(state.consecutive_failures - 1, 0), 30)
    return min(schedule.job_retry_base_s * 2.0**exponent, RETRY_MAX_S, catch_up_period_s(job, schedule))


def catch_up_period_s(job: models.Job, schedule: settings.ScheduleSettings) -> float:
    """The grid overdue work is spread over: the interval, or for the daily job its jitter window."""
    if job is models.Job.ACCOUNT_INSIGHTS:
        return DAY_S * schedule.jitter_fraction
    return interval_s(job, schedule)


def _slot_at_or_after(t: datetime, period_s: float, frac: float) -> datetime:
    """The first time >= t on the grid `k * period_s + frac * period_s` seconds after the epoch."""
    if period_s <= 0:
        return t
    offset = frac * period_s
    ts = t.timestamp()
    k = math.ceil((ts - offset) / period_s)
    return datetime.fromtimestamp(k * period_s + offset, UTC)


def daily_trigger(day: date, frac: float, schedule: settings.ScheduleSettings) -> datetime:
    """When the daily account-insights job of an account with phase `frac` fires for Pacific date `day`."""
    delay_s = schedule.account_insights_after_midnight_s + frac * schedule.jitter_fraction * DAY_S
    return pacific.day_start_utc(day) + timedelta(seconds=delay_s)


def _next_daily_trigger(after: datetime, frac: float, schedule: settings.ScheduleSettings) -> datetime:
    day = pacific.today(after) - timedelta(days=1)
    while (trigger := daily_trigger(day, frac, schedule)) <= after:
        day += timedelta(days=1)
    return trigger


def account_days(last_success_at: datetime | None, now: datetime, schedule: settings.ScheduleSettings,
                 backfill_days: int) -> int | None:
    """Trailing Pacific days the daily job (re)collects now: None (the full backfill) when it never succeeded;
    else the configured trailing days, widened by the days missed since the last success (downtime), and
    never more than the backfill."""
    if last_success_at is None:
        return None
    missed = (pacific.today(now) - pacific.today(last_success_at)).days
    days = max(schedule.account_insights_trailing_days, schedule.account_insights_trailing_days + missed - 1)
    return min(days, backfill_days)


def media_due(posted_at: datetime | None, insights_refreshed_at: datetime | None, now: datetime,
              tiers: tuple[tuple[float, float], ...]) -> bool:
    """Whether a media item's insights are refreshed in this media job, by its age tier.

    `tiers`: (max age s, refresh interval s) in increasing age; media older than every tier is not refreshed
    (the collector also stops at `media_max_age_days`). Unknown posting time: the slowest tier.
    """
    if not tiers:
        return insights_refreshed_at is None
    if posted_at is None:
        refresh_s = tiers[-1][1]
    else:
        age_s = (now - posted_at).total_seconds()
        for max_age_s, tier_refresh_s in tiers:
            if age_s < max_age_s:
                refresh_s = tier_refresh_s
                break
        else:
            return False
    if insights_refreshed_at is None:
        return True
    elapsed_s = (now - insights_refreshed_at).total_seconds()
    return elapsed_s >= refresh_s * (1.0 - MEDIA_DUE_TOLERANCE)
