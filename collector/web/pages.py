"""What each page shows, built from the database (`queries`) and the daemon's own state (`Source`).

Pure data for the templates: numbers stay numbers here; formatting happens in the templates' filters.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from collector import metrics, models, redaction, scheduler, settings, status
from collector.storage import queries as storage_queries
from collector.web import charts, queries, series

LATE_AFTER_PERIODS = 2.0  # a job is late after two periods without a success (the daemon's `stale` rule)
SERIES_DAYS = 90
MEDIA_SHOWN = 24
ERRORS_SHOWN = 12
TOKENS_SHOWN = 10
BUSIEST_SHOWN = 10
PAGE_SIZES = (25, 50, 100, 200)  # offered in the form; any size up to MAX_PAGE_SIZE is accepted
MAX_PAGE_SIZE = 200  # 200 rows stay well under 200 KB of HTML
CALL_SERIES = ("calls", "throttles")


class Source(Protocol):
    """What the pages read from the running daemon (all cheap, in memory)."""

    @property
    def config(self) -> settings.Config: ...

    @property
    def accounts(self) -> Sequence[models.Account]:
        """Every account the daemon collects (configured, and discovered from [[tokens]]), as configured."""
        ...

    @property
    def pool(self) -> asyncpg.Pool | None: ...

    @property
    def metrics(self) -> metrics.Metrics: ...

    def usage(self, scope: str) -> Mapping[str, float]:
        """Last usage percent Meta reported, by host (`app`) or account id (`account`)."""
        ...

    def paused(self, scope: str) -> int:
        """How many scopes are paused now."""
        ...

    def held(self, scope: str) -> int:
        """How many scopes their usage budget holds calls back now (spreading its last calls, or waiting for
        its window to roll)."""
        ...

    def token_expiry_days(self, account: models.Account, now: datetime) -> float | None: ...

    def token_error(self, ig_user_id: str) -> str | None:
        """The last failed refresh of the account's token, token-free."""
        ...


def counter_totals(m: metrics.Metrics) -> tuple[float, float]:
    """The totals `series.CounterSeries` samples, in the order of CALL_SERIES."""
    return m.total(m.graph_calls), m.total(m.throttles)


def late_after_s(schedule: settings.ScheduleSettings) -> dict[str, float]:
    return {job.value: LATE_AFTER_PERIODS * scheduler.interval_s(job, schedule) for job in models.Job}


def text(value: str | None) -> str | None:
    """Error texts pass the log redaction before they reach a page (they never should hold a secret)."""
    return None if value is None else redaction.redact(value)


@dataclass(frozen=True, slots=True)
class JobCell:
    job: str
    state: scheduler.JobState | None
    level: str  # ok, late, failing, never


def job_cell(job: models.Job, state: scheduler.JobState | None, now: datetime,
             late_s: Mapping[str, float]) -> JobCell:
    if state is not None and state.failing:
        level = "failing"
    elif state is None or state.last_success_at is None:
        level = "never"
    elif (now - state.last_success_at).total_seconds() > late_s[job.value]:
        level = "late"
    else:
        level = "ok"
    return JobCell(job.value, state, level)


def _next_due(account_id: str, states: Mapping[status.Key, scheduler.JobState], now: datetime,
              schedule: settings.ScheduleSettings) -> tuple[datetime, str]:
    due = [(scheduler.next_due(account_id, job, states.get((account_id, job)), now, schedule), job.value)
           for job in models.Job]
    return min(due)


def _token_days(source: Source, account: models.Account | None, now: datetime) -> float | None:
    if account is None or account.login != "instagram":
        return None
    return source.token_expiry_days(account, now)


async def overview(source: Source, calls: series.CounterSeries, now: datetime) -> dict[str, object]:
    cfg = source.config
    ids = [a.ig_user_id for a in source.accounts]
    async with queries.snapshot(_pool(source)) as conn:
        counts = await queries.status_counts(conn, ids)
        fresh = await queries.freshness(conn, ids, late_after_s(cfg.schedule), now)
        errors = await queries.recent_errors(conn, ids, ERRORS_SHOWN)
        not_ok = await queries.accounts_not_ok(conn, ids, ERRORS_SHOWN)

    calls.sample()
    points = calls.points()
    labels = [datetime.fromtimestamp(p.start_s, UTC).strftime("%H:%M") for p in points]
    call_rate = charts.bars("Graph API calls per second, by minute", labels,
                            [charts.Series("calls/s", [round(p.rate(0), 2) for p in points])])
    throttles = charts.bars("Throttling answers per minute", labels,
                            [charts.Series("throttles", [p.increases[1] for p in points])])
    last_hour = [p for p in points if p.start_s >= now.timestamp() - 3600]
    calls_total, throttles_total = counter_totals(source.metrics)
    traffic = {
        "calls_total": calls_total,
        "throttles_total": throttles_total,
        "calls_last_hour": sum(p.increases[0] for p in last_hour),
        "throttles_last_hour": sum(p.increases[1] for p in last_hour),
        "calls_per_s_now": points[-1].rate(0) if points else 0.0,
        "minutes": len(points),
    }

    by_id = {a.ig_user_id: a for a in source.accounts}
    tokens: list[tuple[float, str]] = []
    unknown_tokens = 0
    for account in source.accounts:
        if account.login != "instagram":
            continue
        days = source.token_expiry_days(account, now)
        if days is None:
            unknown_tokens += 1
        else:
            tokens.append((days, account.ig_user_id))
    soonest = heapq.nsmallest(TOKENS_SHOWN, tokens)
    account_usage = source.usage("account")
    busiest = heapq.nlargest(BUSIEST_SHOWN, ((pct, i) for i, pct in account_usage.items() if i in by_id))
    async with queries.snapshot(_pool(source)) as conn:
        names = await queries.usernames(conn, [i for _, i in soonest] + [i for _, i in busiest])
    return {
        "now": now,
        "accounts_total": len(ids),
        "status_counts": counts,
        "freshness": fresh,
        "traffic": traffic,
        "call_chart": call_rate,
        "throttle_chart": throttles,
        "app_usage": sorted(source.usage("app").items()),
        "busiest": [(i, names.get(i), pct) for pct, i in busiest],
        "paused": {"app": source.paused("app"), "account": source.paused("account")},
        "held": {"app": source.held("app"), "account": source.held("account")},
        "slow_down_at_pct": cfg.rate_limit.slow_down_at_pct,
        # slow_down_at_pct lowers the per-second ceilings only: with none set (the default) it does nothing.
        "ceilings": cfg.rate_limit.app_calls_per_s > 0 or cfg.rate_limit.account_calls_per_s > 0,
        "tokens": [(i, names.get(i), days, text(source.token_error(i))) for days, i in soonest],
        "unknown_tokens": unknown_tokens,
        "errors": [{**dict(r.items()), "last_error": text(r["last_error"])} for r in errors],
        "not_ok": [{**dict(r.items()), "status_detail": text(r["status_detail"])} for r in not_ok],
    }


async def accounts(source: Source, chosen: queries.AccountFilter, now: datetime) -> dict[str, object]:
    cfg = source.config
    pool = _pool(source)
    ids = [a.ig_user_id for a in source.accounts]
    async with queries.snapshot(pool) as conn:
        rows, matched = await queries.accounts_page(conn, ids, [a.login for a in source.accounts], chosen)
        counts = await queries.status_counts(conn, ids)
    page_ids = [r["ig_user_id"] for r in rows]
    states = await status.load_job_states(pool, page_ids) if page_ids else {}
    by_id = {a.ig_user_id: a for a in source.accounts}
    late_s = late_after_s(cfg.schedule)
    out_rows = []
    for row in rows:
        account_id = row["ig_user_id"]
        cells = [job_cell(job, states.get((account_id, job)), now, late_s) for job in models.Job]
        due, due_job = _next_due(account_id, states, now, cfg.schedule)
        out_rows.append({**dict(row.items()), "status_detail": text(row["status_detail"]), "jobs": cells,
                         "next_due": due, "next_job": due_job,
                         "token_days": _token_days(source, by_id.get(account_id), now)})
    return {"now": now, "rows": out_rows, "matched": matched, "filter": chosen, "status_counts": counts,
            "total": len(ids), "sorts": list(queries.SORTS),
            "page_sizes": sorted({*PAGE_SIZES, chosen.limit}),
            "jobs": [job.value for job in models.Job]}


async def account(source: Source, ig_user_id: str, now: datetime) -> dict[str, object] | None:
    cfg = source.config
    pool = _pool(source)
    configured = next((a for a in source.accounts if a.ig_user_id == ig_user_id), None)
    states = await status.load_job_states(pool, [ig_user_id])
    errors = {r["job"]: text(r["last_error"])
              for r in await storage_queries.job_states(pool, [int(ig_user_id)]) if r["last_error"]}
    async with queries.snapshot(pool) as conn:
        row = await queries.account(conn, ig_user_id)
        series_rows = await queries.account_series(conn, ig_user_id, now - timedelta(days=SERIES_DAYS))
        media = await queries.recent_media(conn, ig_user_id, MEDIA_SHOWN)
        insights = await queries.media_insights(conn, [m["media_id"] for m in media])
        unavailable = await queries.unavailable(conn, ig_user_id)
    if row is None and configured is None:
        return None
    late_s = late_after_s(cfg.schedule)
    jobs = []
    for job in models.Job:
        state = states.get((ig_user_id, job))
        jobs.append({"cell": job_cell(job, state, now, late_s),
                     "next_due": scheduler.next_due(ig_user_id, job, state, now, cfg.schedule)})
    reach = series_rows["reach"]
    followers = series_rows["follower_count"]
    views = series_rows["views"]
    chronological = list(reversed(media))
    media_labels = [_media_label(m) for m in chronological]
    return {
        "now": now,
        "account": row,
        "ig_user_id": ig_user_id,
        "login": configured.login if configured else (row["login"] if row else None),
        "configured": configured is not None,
        "status_detail": text(row["status_detail"]) if row else None,
        "jobs": jobs,
        "job_errors": errors,
        "token_days": _token_days(source, configured, now),
        "token_error": text(source.token_error(ig_user_id)) if configured else None,
        "reach_chart": charts.line("Daily reach", [_day(r["end_time"]) for r in reach],
                                   [float(r["value"]) for r in reach]),
        "followers_chart": charts.bars("New followers per day (follower_count)",
                                       [_day(r["end_time"]) for r in followers],
                                       [charts.Series("follower_count",
                                                      [float(r["value"]) for r in followers])]),
        "views_chart": charts.line("Daily views", [_day(r["end_time"]) for r in views],
                                   [float(r["value"]) for r in views]),
        "series_days": SERIES_DAYS,
        "latest_reach": reach[-1] if reach else None,
        "media_chart": charts.bars(
            f"Views and reach of the {len(media)} newest media", media_labels,
            [charts.Series(metric, [insights.get(m["media_id"], {}).get(metric) for m in chronological])
             for metric in ("views", "reach")]),
        "media": media,
        "insights": insights,
        "media_metrics": queries.MEDIA_METRICS,
        "unavailable": [{**dict(r.items()), "detail": text(r["detail"])}
                        for r in unavailable],
    }


def _pool(source: Source) -> asyncpg.Pool:
    pool = source.pool
    if pool is None:
        raise RuntimeError("the database pool is not open yet")
    return pool


def _day(end_time: datetime) -> str:
    """A daily row's Pacific day: its end_time is the end of that day, so the day is the one before."""
    return (end_time - timedelta(hours=12)).strftime("%Y-%m-%d")


def _media_label(media: asyncpg.Record) -> str:
    posted = media["posted_at"]
    return posted.strftime("%m-%d") if posted else str(media["media_id"])[-6:]


def page_of(offset: int, limit: int) -> int:
    return offset // limit + 1


def pages(matched: int, limit: int) -> int:
    return max(1, -(-matched // limit))


def age(delta: timedelta) -> str:
    return status._age(delta)


def until(due: datetime, now: datetime) -> str:
    return status._until(due, now)
