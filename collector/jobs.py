"""What every job run shares: its outcome, its context, the absences it records, and bounded fan-out.

Kept apart from `collect` so the jobs themselves read as Graph API → rows, and so the daemon and the pass
can reason about outcomes without the jobs' details.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from collector import exceptions, metrics, models

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JobOutcome:
    status: str  # "ok", "failed" (transient, gave up), or an account status reason (token_invalid, ...)
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def account_level(self) -> bool:
        """The account cannot be collected at all (bad token, permissions, gone): skip its other jobs."""
        return self.status in ACCOUNT_STATUSES


# Account-level failures, as recorded in ig_account.status.
ACCOUNT_STATUSES = frozenset({"token_invalid", "token_expired", "permission_denied", "not_found"})


@dataclass(slots=True)
class JobRun:
    """What one run of a job needs to carry: the account, the clock, and the items that failed."""

    account: models.Account
    now: datetime
    failures: list[str] = field(default_factory=list)
    user_id: int = field(init=False)  # the account id as stored (bigint); put in every row

    def __post_init__(self) -> None:
        self.user_id = int(self.account.ig_user_id)

    def item_failed(self, what: str, error: exceptions.GraphError) -> None:
        """One item of the job failed for now (retried on the next run). An account-level error (token,
        permission) is not an item's: it is raised, and fails the job and the account."""
        if account_failure_status(error):
            raise error
        self.failures.append(f"{what}: {error.describe()}")


@dataclass(slots=True)
class Absences:
    """Data Meta did not give for one object during one job, to be recorded in ig_unavailable."""

    object_type: str
    object_id: int
    seen_at: datetime
    counters: metrics.Metrics
    rows: list[models.UnavailableRow] = field(default_factory=list)

    def add(self, metric: str, reason: str, detail: str | None, scope: str = "") -> None:
        self.rows.append(models.UnavailableRow(self.object_type, self.object_id, metric, scope, reason,
                                               detail, self.seen_at))
        self.counters.unavailable.labels(reason).inc()

    def has(self, metric: str) -> bool:
        return any(row.metric == metric for row in self.rows)


def account_failure_status(error: exceptions.GraphError) -> str | None:
    """The ig_account.status an error means for the whole account, or None when it is not account-level."""
    if isinstance(error, exceptions.TokenInvalid):
        # 463 is "expired"; a 190 without subcode says so only in its text ("Session has expired on ...").
        expired = error.subcode == 463 or (
            error.subcode is None and "session has expired" in str(error).lower())
        return "token_expired" if expired else "token_invalid"
    if isinstance(error, exceptions.PermissionDenied):
        return "permission_denied"
    return None


def permanent(error: exceptions.GraphError) -> bool:
    """Another try would get the same answer: not a throttle, a token problem, a transport fault or a 5xx."""
    if isinstance(error, exceptions.Throttled | exceptions.TokenInvalid | exceptions.GraphTransportError):
        return False
    if isinstance(error, exceptions.ServerError):
        return error.http_status is not None and error.http_status < 500 and not error.is_transient
    return True


def scoped(absent: Absences, scope: str, metric: str, reason: str, detail: str | None) -> None:
    absent.add(metric, reason, detail, scope)


async def bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """Run `work` for every item, at most `limit` at once; the first error cancels the rest and is raised
    as itself (not an ExceptionGroup). ShutdownRequested is the exception: it stops taking items, lets the
    other workers' current items finish, and is raised once they have.

    `limit` workers take the items in turn, rather than a task per item behind a semaphore: a task and a
    semaphore round per media or day cost ~10 % of the collector's CPU (docs/benchmarks.md).
    """
    queue = list(items)
    count = min(max(1, limit), len(queue))
    if count <= 1:
        for item in queue:
            await work(item)
        return
    pending = iter(queue)
    stopped: list[exceptions.ShutdownRequested] = []

    async def worker() -> None:
        for item in pending:
            try:
                await work(item)
            except exceptions.ShutdownRequested as exc:
                # A stop ends this worker only: a sibling's request already on the wire gets its answer
                # (and stores it) instead of being cancelled with the group.
                stopped.append(exc)
                return

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(worker())
        if stopped:
            raise stopped[0]
    except BaseExceptionGroup as errors:
        first = errors.exceptions[0]
        for error in errors.exceptions:  # an account-level Graph error outranks whatever else failed
            if isinstance(error, exceptions.GraphError) and account_failure_status(error):
                first = error
                break
        raise first from None
