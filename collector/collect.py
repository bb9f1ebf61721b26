"""Collection: one job for one account, Graph API → rows → writer (the whole pass is `passes`).

Each job turns Meta's answers into the row types of `models` and hands them to the writer; nothing here
touches SQL except the two small reads of state (followers count, media refresh times). Data Meta does not
give is recorded in `ig_unavailable` with its reason, never stored as 0.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import structlog

from collector import (
    catalogue,
    exceptions,
    graph,
    jobs,
    metrics,
    models,
    pacific,
    parsing,
    settings,
)
from collector.storage import queries
from collector.storage import writer as storage_writer

log = structlog.get_logger("collector.collect")

MediaDue = Callable[[datetime | None, datetime | None, datetime], bool]

PROFILE_FIELDS = "id,username,followers_count,media_count"
MEDIA_FIELDS = ("id", "media_type", "media_product_type", "timestamp", "permalink", "like_count",
                "comments_count")
STORY_FIELDS = ("id", "media_type", "media_product_type", "timestamp", "permalink")
PAGE_LIMIT = "100"
STORY_LIFETIME = timedelta(hours=24)
# A story this close to the end of its 24 h may expire between the /stories listing and its insights call;
# Meta's error for an expired story is undocumented (reference §3.2), so any permanent answer then means
# "expired", and nothing is learned about the STORY kind from it.
STORY_EXPIRY_MARGIN = timedelta(hours=1)
# Instagram lets an account pin up to 3 posts; they lead the /media listing whatever their age.
MAX_PINNED = 3
# follower_count: "only supports querying data for the last 30 days excluding the current day" (§2.4).
FOLLOWER_COUNT_DAYS = 30
# "An unknown error has occurred." is how Meta refuses a breakdown (§2.1); the transient code-1 fault says
# "An unknown error occurred".
_BREAKDOWN_REFUSED = re.compile(r"unknown error has occurred", re.IGNORECASE)
_LAST_30_DAYS = re.compile(r"last \d+ days", re.IGNORECASE)
# Withheld from accounts under 100 followers (or 100 engagements, for the engaged audience), reference §2.5.
_THRESHOLD_GATED = catalogue.NEEDS_100_FOLLOWERS | {"engaged_audience_demographics"}


def _withheld(metric: str, followers: int | None) -> bool:
    """Whether Meta may withhold `metric` from an account with `followers` (under 100, reference §2.5)."""
    return metric in _THRESHOLD_GATED and followers is not None and followers < 100


class Collector:
    """Runs jobs for accounts. One per process; safe to use from many tasks at once."""

    def __init__(self, config: settings.Config, client: graph.GraphClient, writer: storage_writer.Writer,
                 pool: asyncpg.Pool, metrics: metrics.Metrics, *, stop: asyncio.Event | None = None) -> None:
        self._config = config
        self._collect = config.collect
        self._client = client
        self._writer = writer
        self._pool = pool
        self._metrics = metrics
        self._stop = stop or asyncio.Event()
        self._catalogue = catalogue.Catalogue(config.collect.metrics)
        self._capabilities = catalogue.Capabilities()
        self._followers: dict[str, int | None] = {}
        # Account metrics Meta refused to serve as total_value (incompatible metric type): asked as series.
        self._series_only: set[str] = set()
        # Kinds (capability keys) whose insights Meta wants asked with metric_type=total_value.
        self._needs_total_value: set[tuple[str, ...]] = set()
        # The 30-day window rule as Meta enforces it; halved when Meta says a window is too long.
        self._window_s = pacific.MAX_WINDOW_S
        # Capability keys whose first call is over: later calls skip `Capabilities.first_call` (an async
        # context manager per call) since it would let them through at once anyway.
        self._probed: set[tuple[str, ...]] = set()
        # The catalogue is fixed for the process: one plan per (login, product type, media type).
        self._plans: dict[tuple[str, str | None, str | None], catalogue.MediaPlan] = {}
        # How many days back follower_count reaches; one less each time Meta refuses the oldest day (it may
        # count its 30 days from now rather than from the Pacific day).
        self._follower_count_days = FOLLOWER_COUNT_DAYS

    # ------------------------------------------------------------------ jobs

    async def run_job(self, account: models.Account, job: models.Job, now: datetime, *,
                      media_due: MediaDue | None = None,
                      account_days: int | None = None) -> jobs.JobOutcome:
        """Run one job for one account, record its state, and say how it went. Never raises for Graph
        errors: an account's trouble is recorded and reported, not propagated."""
        run = jobs.JobRun(account, now)
        outcome: jobs.JobOutcome
        try:
            if job is models.Job.PROFILE:
                await self._profile(run)
            elif job is models.Job.MEDIA:
                await self._media(run, media_due)
            elif job is models.Job.STORIES:
                await self._stories(run)
            elif job is models.Job.ACCOUNT_INSIGHTS:
                await self._account_insights(run, account_days or self._collect.account_backfill_days)
            elif job is models.Job.DEMOGRAPHICS:
                await self._demographics(run)
            outcome = (jobs.JobOutcome("ok") if not run.failures
                       else jobs.JobOutcome("failed", f"{len(run.failures)} items failed: {run.failures[0]}"))
        except exceptions.ObjectNotFound as exc:
            outcome = jobs.JobOutcome("not_found", exc.describe()) if job is models.Job.PROFILE \
                else jobs.JobOutcome("failed", exc.describe())
        except exceptions.GraphError as exc:
            status = jobs.account_failure_status(exc)
            outcome = jobs.JobOutcome(status or "failed", exc.describe())
        if outcome.account_level:
            await self._writer.add(models.Table.ACCOUNT, [models.AccountRow(
                run.user_id, None, account.login, None, None, outcome.status, outcome.detail,
                datetime.now(UTC))])
        if outcome.ok or not self._stop.is_set():
            await self._writer.add(models.Table.JOB_STATE, [models.JobStateRow(
                run.user_id, job.value, outcome.ok, now, outcome.detail)])
        self._metrics.jobs.labels(job.value, outcome.status).inc()
        if not outcome.ok:
            log.warning("job_failed", ig_user_id=account.ig_user_id, job=job.value, status=outcome.status,
                        detail=outcome.detail)
        return outcome

    async def _profile(self, run: jobs.JobRun) -> None:
        body = await self._client.get(run.account, run.account.ig_user_id, {"fields": PROFILE_FIELDS},
                                      endpoint="profile")
        followers = parsing.int_or_none(body.get("followers_count"))
        self._followers[run.account.ig_user_id] = followers
        await self._writer.add(models.Table.ACCOUNT, [models.AccountRow(
            run.user_id, parsing.str_or_none(body.get("username")), run.account.login, followers,
            parsing.int_or_none(body.get("media_count")), "ok", None, datetime.now(UTC))])

    async def _media(self, run: jobs.JobRun, media_due: MediaDue | None) -> None:
        cutoff = run.now - timedelta(days=self._collect.media_max_age_days)
        refreshed = await queries.media_refresh_state(self._pool, run.user_id) if media_due else {}
        listed = 0
        async for page in self._walk(run, "media", MEDIA_FIELDS):
            listed += len(page)
            self._check_stop()
            recent = []
            for item in page:
                media = parsing.media_item(item)
                if media is None:
                    log.warning("media_item_unreadable", ig_user_id=run.account.ig_user_id)
                    continue
                if media.posted_at is not None and media.posted_at < cutoff:
                    continue
                recent.append(media)
            due = [m for m in recent
                   if media_due is None or media_due(m.posted_at, refreshed.get(m.media_id), run.now)]
            due_ids = {m.media_id for m in due}
            not_due = [_media_row(m, run) for m in recent if m.media_id not in due_ids]
            if not_due:  # before the insights: an error there must not lose the listing already read
                await self._writer.add(models.Table.MEDIA, not_due)
            await self._insights_for(run, due, story=False)
            # Media come newest first; a page that ends past the age limit ends the walk. Judging by the
            # page's last item (not its first), and never by one of the first MAX_PINNED items of the
            # listing, keeps pinned old posts at the top from ending it early, even on tiny pages.
            last = parsing.media_item(page[-1]) if page else None
            if (last is not None and last.posted_at is not None and last.posted_at < cutoff
                    and listed > MAX_PINNED):
                break

    async def _stories(self, run: jobs.JobRun) -> None:
        async for page in self._walk(run, "stories", STORY_FIELDS):
            self._check_stop()
            stories = [m for m in (parsing.media_item(item, story=True) for item in page) if m is not None]
            await self._insights_for(run, stories, story=True)

    async def _walk(self, run: jobs.JobRun, edge: str,
                    fields: tuple[str, ...]) -> AsyncIterator[list[dict[str, Any]]]:
        """The pages of a media edge. When Meta refuses a field we asked for before the first page (the
        Instagram Login host may not serve `media_product_type`, reference §1.1), that field is dropped for
        the login flow, remembered, and the walk starts again without it."""
        key = ("fields", run.account.login, edge)
        while True:
            usable = self._capabilities.usable(fields, *key)
            params = {"fields": ",".join(usable), "limit": PAGE_LIMIT}
            walked = False
            try:
                async for page in self._client.pages(run.account, f"{run.account.ig_user_id}/{edge}", params,
                                                     endpoint=edge):
                    walked = True
                    yield page
                return
            except exceptions.GraphError as exc:
                if exc.partial:  # the items that came with the error are stored, then the error counts
                    yield exc.partial
                    raise
                # Code 100, or a code without a meaning of its own (Graph's 12, "deprecated"): a refusal that
                # names a field we asked for is about that field.
                if type(exc) is not exceptions.GraphApiError and not isinstance(exc,
                                                                              exceptions.InvalidParameter):
                    raise
                message = str(exc)
                refused = {f for f in usable if f != "id" and re.search(rf"\b{f}\b", message)}
                if walked or not refused:
                    raise
                log.warning("fields_dropped", edge=edge, login=run.account.login, fields=sorted(refused),
                            error=exc.describe())
                self._capabilities.learn(refused, *key)

    async def _insights_for(self, run: jobs.JobRun, media: Sequence[parsing.Media], *, story: bool) -> None:
        """Fetch insights for each media (bounded per account), then store the media rows with the time
        their insights were refreshed."""
        stored: set[int] = set()

        async def one(item: parsing.Media) -> None:
            self._check_stop()  # a stop lets calls in flight finish but starts no new one
            if await self._media_insights(run, item):
                await self._writer.add(models.Table.MEDIA, [_media_row(item, run, refreshed=True)])
            else:
                await self._writer.add(models.Table.MEDIA, [_media_row(item, run)])
            stored.add(item.media_id)

        try:
            await jobs.bounded(media, one, self._collect.media_concurrency_per_account)
        except Exception:
            # The job stops (a token error, a stop request): the media listed but not reached are still
            # stored, without insights (their next media job asks again).
            rest = [_media_row(m, run) for m in media if m.media_id not in stored]
            if rest:
                await self._writer.add(models.Table.MEDIA, rest)
            raise

    async def _media_insights(self, run: jobs.JobRun, media: parsing.Media) -> bool:
        """Insights of one media. True when Meta's answer is settled (values stored or recorded as
        unavailable); False when the call failed for now (retried on the next refresh)."""
        kind = (run.account.login, media.media_product_type, media.media_type)
        plan = self._plans.get(kind)
        if plan is None:
            plan = self._plans[kind] = self._catalogue.media_plan(*kind)
        if plan.key in self._probed:
            return await self._media_insights_of_kind(run, media, plan)
        async with self._capabilities.first_call(*plan.key):
            settled = await self._media_insights_of_kind(run, media, plan)
        self._probed.add(plan.key)
        return settled

    async def _media_insights_of_kind(self, run: jobs.JobRun, media: parsing.Media,
                                      plan: catalogue.MediaPlan) -> bool:
        key = plan.key
        wanted = self._capabilities.usable(plan.metrics, *key)
        absent = jobs.Absences("media", media.media_id, run.now, self._metrics)
        record = absent.add
        expiring = plan.product == "STORY" and (
            media.posted_at is None or run.now - media.posted_at >= STORY_LIFETIME - STORY_EXPIRY_MARGIN)

        refused = self._capabilities.unsupported(*key)
        for metric in refused & set(plan.metrics) if refused else ():
            record(metric, models.UnavailableReason.UNSUPPORTED, "refused earlier for this media type")
        settled = True
        # Why a metric absent from the answer is absent: Meta gave no value, or the error that came with it.
        missing: tuple[str, str] | None = (models.UnavailableReason.NO_DATA, "no value in Meta's answer")
        items: list[dict[str, Any]] | None
        try:
            items = await self._insights_dropping_unsupported(
                run.account, str(media.media_id), wanted, params={}, key=() if expiring else key,
                record=record, endpoint="media_insights")
        except exceptions.GraphError as exc:
            # The error is this media's (docs/errors.md): it can make only this media's data unavailable.
            reason = jobs.object_reason(exc)
            if expiring and jobs.permanent(exc) and not isinstance(
                    exc, exceptions.PreConversionMedia | exceptions.NotEnoughViewers):
                # Whatever Meta says about a story at the end of its life (code 10, 100, an unknown error)
                # is about the story, not the account: never a failure that stops the account.
                reason = models.UnavailableReason.STORY_EXPIRED
            if reason is None:  # a token error (raised: the account's) or a fault that outlived its retries
                run.item_failed(f"media {media.media_id}", exc)
                log.warning("media_insights_failed", ig_user_id=run.account.ig_user_id,
                            media_id=media.media_id, error=exc.describe())
                settled = False
            elif reason in jobs.RETRIED_REASONS:
                log.warning("media_insights_unavailable", ig_user_id=run.account.ig_user_id,
                            media_id=media.media_id, reason=reason, error=exc.describe())
                settled = False
            items = exc.partial  # values Meta sent beside its error are stored like any others
            missing = None if reason is None else (reason, exc.describe())
            if items is None and missing is not None:
                record("*", *missing)
        if items is not None:
            values = parsing.parse_insight_items(items)
            media_id, now = media.media_id, run.now
            rows: list[models.MediaInsightRow] = [
                _new_row(models.MediaInsightRow, (media_id, metric, breakdown, dimension, value, now))
                for metric, breakdown, dimension, value, _ in values]
            got = {v.metric for v in values}
            for metric in wanted:
                if missing is not None and metric not in got and not absent.has(metric):
                    record(metric, *missing)
            try:
                if self._collect.media_breakdowns:
                    rows.extend(await self._media_breakdowns(run, media, plan, got=got, absent=absent))
            finally:  # a stop (or a failure) during the breakdowns keeps what was fetched before them
                if rows:
                    await self._writer.add(models.Table.MEDIA_INSIGHT, rows)
                if absent.rows:
                    await self._writer.add(models.Table.UNAVAILABLE, absent.rows)
            return settled
        if absent.rows:
            await self._writer.add(models.Table.UNAVAILABLE, absent.rows)
        return settled

    async def _media_breakdowns(self, run: jobs.JobRun, media: parsing.Media, plan: catalogue.MediaPlan, *,
                                got: set[str], absent: jobs.Absences) -> list[models.MediaInsightRow]:
        rows: list[models.MediaInsightRow] = []
        key = plan.key
        for metric, breakdown in plan.breakdowns:
            if metric not in got or (key and breakdown in self._capabilities.unsupported(*key, metric)):
                continue
            try:
                body = await self._client.get(run.account, f"{media.media_id}/insights",
                                              {"metric": metric, "breakdown": breakdown},
                                              endpoint="media_insights")
            except exceptions.GraphError as exc:
                if not _breakdown_refused(exc):
                    # Like the media's main call: this breakdown's reason, a token error (raised), or a
                    # fault for the next run.
                    if (reason := jobs.object_reason(exc)) is not None:
                        absent.add(metric, reason, exc.describe(), scope=breakdown)
                    else:
                        run.item_failed(f"media {media.media_id} {metric} by {breakdown}", exc)
                    continue
                if key:
                    self._capabilities.learn([breakdown], *key, metric)
                absent.add(metric, models.UnavailableReason.UNSUPPORTED, exc.describe(), scope=breakdown)
                continue
            rows.extend(models.MediaInsightRow(media.media_id, v.metric, v.breakdown, v.dimension, v.value,
                                               run.now)
                        for v in parsing.parse_insight_items(body.get("data") or ()) if v.breakdown)
        return rows

    async def _insights_dropping_unsupported(
            self, account: models.Account, object_id: str, metrics: Sequence[str], *, params: dict[str, str],
            key: tuple[str, ...], record: Callable[[str, str, str | None], None],
            endpoint: str, below_threshold: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """One insights call for `metrics`. When Meta refuses some metrics, drop the ones it names, record
        them as unsupported, remember that for `key`, and ask again for the rest: one bad metric never
        loses the others. Raises when nothing is left to ask or the refusal names nothing we asked.
        `below_threshold` (metric -> reason): metrics this object may be refused for a data threshold
        (reference §2.5); their refusal is recorded with that reason and not learned for `key`."""
        remaining = list(metrics)
        if key and key in self._needs_total_value and "metric_type" not in params:
            params = {**params, "metric_type": "total_value"}
        while remaining:
            try:
                body = await self._client.get(account, f"{object_id}/insights",
                                              {**params, "metric": ",".join(remaining)}, endpoint=endpoint)
            except exceptions.MetricTypeRequired as exc:
                # "(#100) The following metrics (views) should be specified with parameter
                # metric_type=total_value" on a call that sent none (a media's: reference §2.3, §3.3 OBS):
                # asked again with it, and so from now on for this kind.
                if (not exc.needs_total_value or "metric_type" in params
                        or not set(exc.metrics) & set(remaining)):
                    raise
                params = {**params, "metric_type": "total_value"}
                if key:
                    self._needs_total_value.add(key)
                log.info("metric_type_added", object_id=object_id, metrics=sorted(exc.metrics), key=list(key))
                continue
            except exceptions.UnsupportedMetric as exc:
                refused = set(exc.metrics) & set(remaining)
                if exc.allowed is not None:
                    refused |= set(remaining) - set(exc.allowed)
                if not refused:
                    raise
                local = below_threshold or {}
                self._capabilities.learn(refused - local.keys(), *key)
                for metric in sorted(refused):
                    reason = local.get(metric) or (
                        models.UnavailableReason.DEPRECATED if metric in catalogue.DEPRECATED
                        else models.UnavailableReason.UNSUPPORTED)
                    record(metric, reason, str(exc))
                log.info("metrics_dropped", object_id=object_id, metrics=sorted(refused), key=list(key))
                remaining = [m for m in remaining if m not in refused]
                continue
            data = body.get("data")
            return data if isinstance(data, list) else []
        return []

    async def _account_insights(self, run: jobs.JobRun, day_count: int) -> None:
        days = pacific.complete_days(run.now, day_count)
        followers = await self._followers_of(run.account)
        absent = jobs.Absences("account", run.user_id, run.now, self._metrics)

        async def day_totals(day: date) -> None:
            self._check_stop()
            await self._account_day_totals(run, day, absent=absent, followers=followers)

        try:
            series = [m for m in self._catalogue.account_time_series()] + sorted(self._series_only)
            for metric in series:
                await self._account_series(run, metric, days, absent=absent, followers=followers)
            follower_days = [d for d in days
                             if d >= pacific.today(run.now) - timedelta(days=self._follower_count_days)]
            if follower_days and catalogue.FOLLOWER_COUNT not in series:
                await self._account_series(run, catalogue.FOLLOWER_COUNT, follower_days, absent=absent,
                                           followers=followers)
            await jobs.bounded(days, day_totals, self._collect.media_concurrency_per_account)
        finally:  # an account-level error or a stop ends the job; the absences already learned are kept
            if absent.rows:
                await self._writer.add(models.Table.UNAVAILABLE, absent.rows)

    async def _account_series(self, run: jobs.JobRun, metric: str, days: list[date], *, absent: jobs.Absences,
                              followers: int | None) -> None:
        """A daily time series (reach, follower_count) in as few ≤ 30-day windows as Meta allows."""
        pending = pacific.windows(days, self._window_s)
        while pending:
            self._check_stop()
            window = pending.pop(0)
            params = {"metric": metric, "period": "day", "since": str(pacific.epoch(pacific.day_start_utc(
                window[0]))), "until": str(pacific.epoch(pacific.day_end_utc(window[-1])))}
            if metric != catalogue.FOLLOWER_COUNT:
                params["metric_type"] = "time_series"
            failure: exceptions.GraphError | None = None
            try:
                body = await self._client.get(run.account, f"{run.account.ig_user_id}/insights", params,
                                              endpoint="account_insights")
            except exceptions.RangeTooLong:
                if len(window) == 1:
                    raise
                self._window_s = max(86400, self._window_s // 2)
                pending[:0] = pacific.windows(window, self._window_s)
                continue
            except exceptions.UnsupportedMetric as exc:
                absent.add(metric, self._absent_reason(metric, followers)
                           if self._below_threshold(metric, followers, exc)
                           else models.UnavailableReason.UNSUPPORTED, str(exc))
                return
            except exceptions.GraphError as exc:
                if (metric == catalogue.FOLLOWER_COUNT and isinstance(exc, exceptions.InvalidParameter)
                        and _LAST_30_DAYS.search(str(exc))):
                    # Meta's 30 days are shorter than ours: the oldest day is out of its reach.
                    self._follower_count_days = max(1, min(self._follower_count_days,
                                                           (pacific.today(run.now) - window[0]).days - 1))
                    absent.add(metric, models.UnavailableReason.NO_DATA, str(exc),
                               scope=pacific.day_end_utc(window[0]).isoformat())
                    if len(window) > 1:
                        pending.insert(0, window[1:])
                    continue
                if not exc.partial and self._below_threshold(metric, followers, exc):
                    for day in window:
                        absent.add(metric, self._absent_reason(metric, followers), exc.describe(),
                                   scope=pacific.day_end_utc(day).isoformat())
                    continue
                failure, body = exc, {"data": exc.partial}
            # Each value under the end of the Pacific day it closes, as Meta's samples spell it (07:00Z or
            # 08:00Z), whatever spelling this answer used: the same day is one row, and counts as present.
            values = [v._replace(end_time=pacific.day_end_utc(pacific.day_closed_by(v.end_time)))
                      for v in parsing.parse_insight_items(body.get("data") or ()) if v.end_time is not None]
            user_id, now = run.user_id, run.now
            rows: list[models.AccountInsightRow] = [
                _new_row(models.AccountInsightRow, (user_id, metric, "day", end_time, "", "", value, now))
                for metric, _, _, value, end_time in values]
            if rows:
                await self._writer.add(models.Table.ACCOUNT_INSIGHT, rows)
            if failure is not None:  # after storing what came with it; an account-level error is raised
                run.item_failed(f"{metric} {window[0]}..{window[-1]}", failure)
                continue
            have = {v.end_time for v in values}
            for day in window:
                end = pacific.day_end_utc(day)
                if end not in have:
                    absent.add(metric, self._absent_reason(metric, followers), "no value in Meta's answer",
                           scope=end.isoformat())

    async def _account_day_totals(self, run: jobs.JobRun, day: date, *, absent: jobs.Absences,
                                  followers: int | None) -> None:
        """Every total-value metric for one Pacific day, in one call: Meta gives one total per window."""
        key = ("account", run.account.login)
        if key in self._probed:
            await self._account_day_totals_call(run, day, absent=absent, followers=followers)
            return
        async with self._capabilities.first_call(*key):
            await self._account_day_totals_call(run, day, absent=absent, followers=followers)
        self._probed.add(key)

    async def _account_day_totals_call(self, run: jobs.JobRun, day: date, *, absent: jobs.Absences,
                                       followers: int | None) -> None:
        end = pacific.day_end_utc(day)
        scope = end.isoformat()
        key = ("account", run.account.login)
        metrics = [m for m in self._capabilities.usable(self._catalogue.account_total_value(), *key)
                   if m not in self._series_only]
        for metric in self._capabilities.unsupported(*key) & set(self._catalogue.account_total_value()):
            absent.add(metric, models.UnavailableReason.UNSUPPORTED, "refused earlier for this login flow",
                       scope)
        params = {"period": "day", "metric_type": "total_value",
                  "since": str(pacific.epoch(pacific.day_start_utc(day))), "until": str(pacific.epoch(end))}
        failure: exceptions.GraphError | None = None
        record = functools.partial(jobs.scoped, absent, scope)
        while True:
            gated = {m: self._absent_reason(m, followers) for m in metrics if _withheld(m, followers)}
            try:
                items = await self._insights_dropping_unsupported(
                    run.account, run.account.ig_user_id, metrics, params=params, key=key, record=record,
                    endpoint="account_insights", below_threshold=gated)
            except exceptions.MetricTypeRequired as exc:
                moved = set(exc.metrics) & set(metrics)
                if exc.needs_total_value or not moved:
                    raise
                # "incompatible with the metric type (total_value)": ask those as a daily series instead.
                self._series_only |= moved
                metrics = [m for m in metrics if m not in moved]
                continue
            except exceptions.GraphError as exc:
                refused = [m for m in gated if self._below_threshold(m, followers, exc)]
                if refused and not exc.partial:
                    # The whole call refused, maybe for the small account's follower-gated metrics: those
                    # are recorded, the rest asked again (a second refusal is the call's failure).
                    for metric in refused:
                        record(metric, gated[metric], exc.describe())
                    metrics = [m for m in metrics if m not in refused]
                    if metrics:
                        continue
                    items = []
                else:
                    failure, items = exc, exc.partial or []
            break
        values = parsing.parse_insight_items(items)
        user_id, now = run.user_id, run.now
        rows: list[models.AccountInsightRow] = [
            _new_row(models.AccountInsightRow, (user_id, metric, "day", end, breakdown, dimension, value,
                                                now))
            for metric, breakdown, dimension, value, _ in values]
        if rows:
            await self._writer.add(models.Table.ACCOUNT_INSIGHT, rows)
        if failure is not None:  # after storing what came with it; an account-level error is raised
            run.item_failed(f"account totals {day}", failure)
            return
        got = {v.metric for v in values}
        for metric in metrics:
            if metric not in got and metric not in self._capabilities.unsupported(*key):
                absent.add(metric, self._absent_reason(metric, followers), "no value in Meta's answer",
                           scope=scope)

    async def _demographics(self, run: jobs.JobRun) -> None:
        followers = await self._followers_of(run.account)
        rows: list[models.AccountInsightRow] = []
        absent = jobs.Absences("account", run.user_id, run.now, self._metrics)
        # Each (metric, breakdown), and online_followers, is its own call and its own answer: they go at once
        # within the account's fan-out (nine in a row were the longest chain of a small agency's pass).
        calls: list[Callable[[], Awaitable[None]]] = [
            functools.partial(self._demographic, run, metric, breakdown, followers=followers, rows=rows,
                              absent=absent)
            for metric in self._catalogue.demographics() for breakdown in catalogue.DEMOGRAPHIC_BREAKDOWNS]
        calls.append(functools.partial(self._online_followers, run, followers, rows, absent))

        async def one(call: Callable[[], Awaitable[None]]) -> None:
            self._check_stop()
            await call()

        try:
            await jobs.bounded(calls, one, self._collect.media_concurrency_per_account)
        finally:  # an account-level error or a stop ends the job; what was fetched is stored
            if rows:
                await self._writer.add(models.Table.ACCOUNT_INSIGHT, rows)
            if absent.rows:
                await self._writer.add(models.Table.UNAVAILABLE, absent.rows)

    async def _demographic(self, run: jobs.JobRun, metric: str, breakdown: str, *, followers: int | None,
                           rows: list[models.AccountInsightRow], absent: jobs.Absences) -> None:
        """One demographic metric by one breakdown, appended to `rows` (or recorded in `absent`)."""
        timeframe = self._collect.demographics_timeframe
        end = pacific.day_end_utc(pacific.today(run.now))
        scope = f"{timeframe}:{breakdown}"
        # Refusals are remembered per account: Meta withholds demographics below a data threshold of the
        # account (100 followers, 100 engagements in the timeframe), and its error for that is unknown
        # (reference §2.5), so one account's refusal says nothing about the others.
        key = ("demographics", metric, run.account.ig_user_id)
        if breakdown in self._capabilities.unsupported(*key):
            absent.add(metric, models.UnavailableReason.UNSUPPORTED, "refused earlier for this metric", scope)
            return
        failure: exceptions.GraphError | None = None
        try:
            body = await self._client.get(
                run.account, f"{run.account.ig_user_id}/insights",
                {"metric": metric, "period": "lifetime", "metric_type": "total_value",
                 "timeframe": timeframe, "breakdown": breakdown}, endpoint="account_insights")
        except exceptions.GraphError as exc:
            if not exc.partial and self._below_threshold(metric, followers, exc):
                absent.add(metric, self._absent_reason(metric, followers), exc.describe(), scope)
                return
            if _breakdown_refused(exc) and not exc.partial:
                self._capabilities.learn([breakdown], *key)
                absent.add(metric, models.UnavailableReason.UNSUPPORTED, str(exc), scope)
                return
            failure, body = exc, {"data": exc.partial}
        values = [v for v in parsing.parse_insight_items(body.get("data") or ()) if v.breakdown]
        rows.extend(models.AccountInsightRow(run.user_id, v.metric, timeframe, end, v.breakdown,
                                             v.dimension, v.value, run.now) for v in values)
        if failure is not None:  # after keeping what came with it; an account-level error is raised
            run.item_failed(f"{metric} by {breakdown}", failure)
        elif not values:
            absent.add(metric, self._absent_reason(metric, followers), "empty data set", scope)

    async def _online_followers(self, run: jobs.JobRun, followers: int | None,
                                rows: list[models.AccountInsightRow],
                                absent: jobs.Absences) -> None:
        """online_followers: per day an hour → followers map; stored as breakdown 'hour', dimension
        '0'..'23'."""
        metric = catalogue.ONLINE_FOLLOWERS
        failure: exceptions.GraphError | None = None
        try:
            body = await self._client.get(run.account, f"{run.account.ig_user_id}/insights",
                                          {"metric": metric, "period": "lifetime"},
                                          endpoint="account_insights")
        except exceptions.GraphError as exc:
            if not exc.partial and self._below_threshold(metric, followers, exc):
                absent.add(metric, self._absent_reason(metric, followers), exc.describe(), "")
                return
            if isinstance(exc, exceptions.UnsupportedMetric | exceptions.InvalidParameter):
                absent.add(metric, models.UnavailableReason.UNSUPPORTED, str(exc), "")
                return
            if not exc.partial:
                run.item_failed(metric, exc)
                return
            failure, body = exc, {"data": exc.partial}
        found = False
        data = body.get("data")
        for item in data if isinstance(data, list) else ():
            entries = item.get("values") if isinstance(item, dict) else None
            for entry in entries if isinstance(entries, list) else ():
                hours = entry.get("value") if isinstance(entry, dict) else None
                end = parsing.time_or_none(entry.get("end_time")) if isinstance(entry, dict) else None
                if not isinstance(hours, dict) or end is None:
                    continue
                for hour, count in hours.items():
                    value = parsing.number(count)
                    if value is not None:
                        found = True
                        rows.append(models.AccountInsightRow(run.user_id, metric, "lifetime", end, "hour",
                                                             str(hour), value, run.now))
        if failure is not None:  # after keeping what came with it; an account-level error is raised
            run.item_failed(metric, failure)
        elif not found:
            absent.add(metric, self._absent_reason(metric, followers), "empty data set", "")

    # ------------------------------------------------------------------ helpers

    def _below_threshold(self, metric: str, followers: int | None, error: exceptions.GraphError) -> bool:
        """True when `error` refusing `metric` is Meta withholding it from an account under 100 followers.
        Meta documents an empty data set for that; the error it may send instead is unknown (reference
        §2.5), so any permanent refusal of a follower-gated metric of such an account counts, and is
        neither a failure nor something learned about the metric for the other accounts."""
        return (_withheld(metric, followers) and jobs.permanent(error)
                and not isinstance(error, exceptions.ObjectNotFound | exceptions.RangeTooLong
                                   | exceptions.MetricTypeRequired))

    def _absent_reason(self, metric: str, followers: int | None) -> str:
        if metric in catalogue.NEEDS_100_FOLLOWERS and followers is not None and followers < 100:
            return models.UnavailableReason.FEW_FOLLOWERS
        return models.UnavailableReason.NO_DATA

    async def _followers_of(self, account: models.Account) -> int | None:
        if account.ig_user_id not in self._followers:
            self._followers[account.ig_user_id] = await queries.followers_count(self._pool,
                                                                               int(account.ig_user_id))
        return self._followers[account.ig_user_id]

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise exceptions.ShutdownRequested()


# Rows are built with tuple.__new__, skipping the NamedTuple's Python-level __new__: ~10 rows per Graph call
# (docs/benchmarks.md, Fix 3). The field order is the row type's; mypy does not check it, the tests do.
_new_row = tuple.__new__


def _breakdown_refused(error: exceptions.GraphError) -> bool:
    """Meta refuses a breakdown with a code-100 error or "An unknown error has occurred." (reference §2.1,
    §3.1); any other error is a failure to retry later, not something to learn."""
    if isinstance(error, exceptions.UnsupportedMetric | exceptions.InvalidParameter):
        return True
    return isinstance(error, exceptions.ServerError) and bool(_BREAKDOWN_REFUSED.search(str(error)))


def _media_row(media: parsing.Media, run: jobs.JobRun, *, refreshed: bool = False) -> models.MediaRow:
    return models.MediaRow(media.media_id, run.user_id, media.media_type, media.media_product_type,
                           media.posted_at, media.permalink, media.like_count, media.comments_count,
                           run.now, run.now if refreshed else None)
