"""A whole collection pass: every job for every configured account, accounts concurrently, with progress
reports and a summary; what `ig-collector once` runs."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from collector import (
    collect,
    discovery,
    exceptions,
    graph,
    metrics,
    models,
    progress,
    settings,
    token_tools,
)
from collector.storage import writer as storage_writer

# Jobs of one pass: the profile first (a bad token stops the account there; followers_count tells why follower
# metrics are missing), then the others at once.
PASS_JOBS = (models.Job.PROFILE, models.Job.MEDIA, models.Job.STORIES, models.Job.ACCOUNT_INSIGHTS,
             models.Job.DEMOGRAPHICS)


@dataclass(slots=True)
class PassSummary:
    accounts_total: int = 0
    accounts_ok: int = 0
    accounts_failed: dict[str, str] = field(default_factory=dict)  # ig_user_id -> status
    jobs_failed: int = 0
    interrupted: bool = False
    wall_s: float = 0.0
    calls: int = 0
    throttles: int = 0
    retries: int = 0
    unavailable: int = 0
    rows_written: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 1
        return 1 if self.accounts_failed else 0

    def read_counters(self, counters: metrics.Metrics) -> None:
        self.calls = int(counters.total(counters.graph_calls))
        self.throttles = int(counters.total(counters.throttles))
        self.retries = int(counters.total(counters.graph_retries))
        self.unavailable = int(counters.total(counters.unavailable))
        jobs_ok = counters.total(counters.jobs, outcome="ok")
        self.jobs_failed = int(counters.total(counters.jobs) - jobs_ok)
        self.rows_written = {table.value: int(counters.total(counters.rows_written, table=table.value))
                             for table in models.Table}

    def as_dict(self) -> dict[str, Any]:
        return {
            "accounts_total": self.accounts_total, "accounts_ok": self.accounts_ok,
            "accounts_failed": len(self.accounts_failed),
            "failed_by_status": _count_values(self.accounts_failed), "jobs_failed": self.jobs_failed,
            "interrupted": self.interrupted, "wall_s": round(self.wall_s, 3), "graph_calls": self.calls,
            "calls_per_s": round(self.calls / self.wall_s, 1) if self.wall_s else 0.0,
            "throttles": self.throttles, "retries": self.retries, "unavailable": self.unavailable,
            "rows_written": self.rows_written,
        }


def _count_values(mapping: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in mapping.values():
        counts[value] = counts.get(value, 0) + 1
    return counts


async def run_pass(config: settings.Config, pool: asyncpg.Pool, *, stop: asyncio.Event,
                   metrics: metrics.Metrics,
                   on_progress: Callable[[progress.PassProgress], None] | None = None,
                   progress_interval_s: float = 1.0) -> PassSummary:
    """Every job for every configured account (and every account the [[tokens]] reach, discovered first),
    accounts concurrently. When `stop` is set, no new account or job starts; what was fetched is flushed
    before returning."""
    started = time.monotonic()
    summary = PassSummary(accounts_total=len(config.accounts))
    now = datetime.now(UTC)
    done = 0

    def snapshot() -> progress.PassProgress:
        return progress.PassProgress(
            accounts_total=summary.accounts_total, accounts_done=done,
            accounts_failed=len(summary.accounts_failed),
            calls=int(metrics.total(metrics.graph_calls)),
            rows_written=int(metrics.total(metrics.rows_written)),
            throttles=int(metrics.total(metrics.throttles)),
            retries=int(metrics.total(metrics.graph_retries)),
            elapsed_s=time.monotonic() - started,
            budget_held=client.throttle.held_count("app") + client.throttle.held_count("account"),
            app_usage_pct=max(client.throttle.usage("app").values(), default=None))

    async with graph.client_for(config, metrics, stop=stop) as client, \
            storage_writer.Writer(pool, metrics=metrics) as writer:
        config = await _with_discovered(config, client, pool, now=now, counters=metrics, summary=summary)
        accounts = iter(config.accounts)
        collector = collect.Collector(config, client, writer, pool, metrics, stop=stop)

        async def worker() -> None:
            nonlocal done
            for account in accounts:
                if stop.is_set():
                    return
                failed = await _collect_account(collector, account, now, stop)
                if failed == INTERRUPTED:  # neither collected nor failed: the next pass does it
                    return
                if failed is not None:
                    summary.accounts_failed[account.ig_user_id] = failed
                else:
                    summary.accounts_ok += 1
                done += 1

        async def report() -> None:
            while on_progress is not None:
                on_progress(snapshot())
                await asyncio.sleep(progress_interval_s)

        reporter = asyncio.create_task(report(), name="progress")
        count = min(config.collect.max_concurrent_accounts, max(1, len(config.accounts)))
        workers = [asyncio.create_task(worker(), name=f"account-worker-{i}") for i in range(count)]
        stopped = asyncio.create_task(stop.wait(), name="stop-wait")
        try:
            running = set(workers)
            while running and not stopped.done():
                # Only the workers still running: a finished one in the set would make every wait return
                # at once, a busy loop through the tail of the pass (5 % of its CPU, docs/benchmarks.md).
                done_now, _ = await asyncio.wait([*running, stopped], return_when=asyncio.FIRST_COMPLETED)
                running -= done_now
            if stopped.done():
                # Let in-flight jobs reach their next stop check, then abandon what is left.
                _, late = await asyncio.wait(workers, timeout=config.schedule.shutdown_grace_s)
                for task in late:
                    task.cancel()
            results = await asyncio.gather(*workers, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    raise result
        finally:
            for pending in (*workers, stopped, reporter):
                pending.cancel()
            await asyncio.gather(*workers, stopped, reporter, return_exceptions=True)
            await writer.flush()
    summary.interrupted = stop.is_set()
    summary.wall_s = time.monotonic() - started
    summary.read_counters(metrics)
    if on_progress is not None:
        on_progress(snapshot())
    return summary


INTERRUPTED = "interrupted"


async def _with_discovered(config: settings.Config, client: graph.GraphClient, pool: asyncpg.Pool, *,
                           now: datetime, counters: metrics.Metrics, summary: PassSummary) -> settings.Config:
    """The config with the accounts its [[tokens]] reach, after checking the tokens (collector/discovery.py,
    collector/token_tools.py): the pass collects exactly those plus the configured ones."""
    try:
        token_tools.report(await token_tools.check_all(client, config, now), counters)
        found = await discovery.run_round(client, pool, config, now=now, counters=counters)
    except exceptions.ShutdownRequested:
        return config  # stopped while discovering: no worker starts (they check `stop` first)
    config = dataclasses.replace(config, accounts=discovery.merge(config.accounts, found.accounts))
    summary.accounts_total = len(config.accounts)
    return config


async def _collect_account(collector: collect.Collector, account: models.Account, now: datetime,
                           stop: asyncio.Event) -> str | None:
    """All jobs of one account; returns None when all succeeded, else the account's status.

    The profile first: an answer that fails the account (token, permission, gone) stops it there. Then the
    account's other jobs run concurrently (a pass of a small agency takes a few round trips, not their sum),
    bounded by the account's budget and `[rate_limit] account_max_in_flight`. A job failing the account does
    not cancel the others: what they fetch is stored (they fail on their own if the token is dead).
    """
    if stop.is_set():
        return INTERRUPTED
    try:
        profile = await collector.run_job(account, models.Job.PROFILE, now)
    except exceptions.ShutdownRequested:
        return INTERRUPTED
    if not profile.ok and profile.account_level:
        return profile.status
    if stop.is_set():
        return INTERRUPTED
    results = await asyncio.gather(*(collector.run_job(account, job, now) for job in PASS_JOBS[1:]),
                                   return_exceptions=True)
    outcomes = [profile]
    for result in results:
        if isinstance(result, exceptions.ShutdownRequested):
            return INTERRUPTED
        if isinstance(result, BaseException):
            raise result
        outcomes.append(result)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if not failed:
        return None
    account_level = [outcome for outcome in failed if outcome.account_level]
    return (account_level or failed)[0].status
