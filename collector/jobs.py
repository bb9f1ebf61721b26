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
        """One item of the job (a window, a day, a breakdown, a media's call) failed for now: retried on the
        next run. An error that is the account's (`account_failure_status`: a token error, or a permission
        error on an account-level call) is raised, and fails the job and the account. A media's own call
        asks `object_reason` first, so only its token errors and outlived faults get here (docs/errors.md)."""
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
    """The ig_account.status an error on an ACCOUNT-LEVEL call (profile, media or stories listing, account
    insights, demographics) means for the whole account, or None when it is not account-level. On a media's
    own call only a token error is the account's (`object_reason`)."""
    if isinstance(error, exceptions.TokenInvalid):
        # 463 is "expired"; a 190 without subcode says so only in its text ("Session has expired on ...").
        expired = error.subcode == 463 or (
            error.subcode is None and "session has expired" in str(error).lower())
        return "token_expired" if expired else "token_invalid"
    if isinstance(error, exceptions.PermissionDenied):
        return "permission_denied"
    return None


def object_reason(error: exceptions.GraphError) -> str | None:
    """The ig_unavailable reason an error on a media's (or story's) OWN call records for that media, or None
    when the error is not the media's: a token error is the account's (raised by `JobRun.item_failed`), a
    throttle or transient fault that outlived its retries is the call's (the job fails, the media is tried
    again on the next run). Nothing else of the account is touched (docs/errors.md)."""
    if isinstance(error, exceptions.TokenInvalid | exceptions.Throttled | exceptions.ServerError
                  | exceptions.GraphTransportError):
        return None
    if isinstance(error, exceptions.PermissionDenied):
        return models.UnavailableReason.PERMISSION_DENIED
    if isinstance(error, exceptions.NotEnoughViewers):
        return models.UnavailableReason.NOT_ENOUGH_VIEWERS
    if isinstance(error, exceptions.PreConversionMedia):
        return models.UnavailableReason.PRE_CONVERSION
    if isinstance(error, exceptions.ObjectNotFound | exceptions.InvalidParameter):
        return models.UnavailableReason.OBJECT_GONE
    if isinstance(error, exceptions.UnsupportedMetric | exceptions.MetricTypeRequired):
        return models.UnavailableReason.UNSUPPORTED
    return models.UnavailableReason.GRAPH_ERROR


# Reasons recorded from an error that may not hold at the next refresh: the media's insights are not marked
# refreshed, so its next media job asks again (the other reasons are Meta's settled answer for the media).
RETRIED_REASONS = frozenset({models.UnavailableReason.PERMISSION_DENIED,
                             models.UnavailableReason.GRAPH_ERROR})


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
    """Run `work` for every item, at most `limit` at once. After the first error no new item starts, the
    items already running finish (what they fetched is handed to the writer, not cancelled away), and the
    error is raised as itself (not an ExceptionGroup); an account-level Graph error outranks the others.
    A stop (ShutdownRequested) is such an error: a sibling's request already on the wire gets its answer
    (and stores it) instead of being cancelled with the group.

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
    errors: list[Exception] = []

    async def worker() -> None:
        for item in pending:
            if errors:
                return
            try:
                await work(item)
            except Exception as error:  # kept, raised below once the others are done
                errors.append(error)
                return

    async with asyncio.TaskGroup() as group:
        for _ in range(count):
            group.create_task(worker())
    if errors:
        raise next((error for error in errors if isinstance(error, exceptions.GraphError)
                    and account_failure_status(error)), errors[0])
