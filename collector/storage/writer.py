"""The batched writer: rows in, committed batches out, whatever PostgreSQL is doing.

Producers `add` rows (the table's NamedTuples, column order = staging order) to one in-memory buffer kept
in arrival order. A background task cuts the buffer's FRONT into batches of at most `batch_max_rows` rows
and commits each in one transaction: per table, COPY into a temp staging table and one merge statement
(collector.storage.upserts), tables in `models.Table` order. Because a batch is always a prefix of
everything added, a job-state row can never commit before the data added ahead of it.

While the database is unreachable the batch is retried with capped exponential backoff for as long as the
process lives; the buffer keeps growing until `buffer_max_rows`, then `add` blocks (backpressure, so the
fetchers slow down instead of memory growing). Any other database error (a bug: bad data, schema drift) is
fatal: the writer stops and every later call raises StorageError.
"""

from __future__ import annotations

import asyncio
import collections
import operator
import random
import time
import types
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import asyncpg.pool
import structlog

from collector import exceptions, models
from collector import metrics as metrics_mod
from collector.storage import upserts

Row = tuple[Any, ...]

# Position of `value` in the rows of the tables that carry metric values.
_VALUE_INDEX = {models.Table.MEDIA_INSIGHT: 4, models.Table.ACCOUNT_INSIGHT: 6}
_FLOAT_EXACT_INT = 2**53
_FLOAT_KINDS = frozenset({int, float})

_RETRY_BASE_DELAY_S = 0.1
_RETRY_MAX_DELAY_S = 5.0

# Errors that mean "the database is not reachable right now", never "this batch is wrong".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unix socket gone
    TimeoutError,  # connect timeout
    asyncpg.PostgresConnectionError,  # includes connection lost in the middle of a statement
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)

_log = structlog.get_logger(__name__)


class _Batch(NamedTuple):
    tables: dict[models.Table, list[Row]]
    rows: int


class Writer:
    """Batched, ordered, retrying writer of collector rows; see the module docstring.

    `async with Writer(pool) as w: await w.add(models.Table.MEDIA_INSIGHT, rows)`.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_max_rows: int = 10_000,
        flush_interval_s: float = 1.0,
        buffer_max_rows: int = 200_000,
        metrics: metrics_mod.Metrics | None = None,
    ) -> None:
        if batch_max_rows < 1 or buffer_max_rows < 1 or flush_interval_s <= 0:
            raise ValueError("batch_max_rows, buffer_max_rows and flush_interval_s must be positive")
        self._pool = pool
        self._batch_max_rows = batch_max_rows
        self._flush_interval_s = flush_interval_s
        self._buffer_max_rows = buffer_max_rows
        self._metrics = metrics
        # Added rows not yet cut into a batch, in arrival order.
        self._pending: collections.deque[tuple[models.Table, list[Row]]] = collections.deque()
        self._pending_rows = 0
        # Running totals; everything up to `_committed` (in arrival order) is in the database.
        self._added = 0
        self._committed = 0
        self._flush_upto = 0  # flush() callers wait for `_committed` to reach this
        self._space_waiters = 0  # add() callers blocked by backpressure
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._failure: exceptions.StorageError | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Writer:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is not None or self._closing:
            raise exceptions.StorageError("writer already started")
        self._task = asyncio.create_task(self._run(), name="storage-writer")

    async def close(self) -> None:
        """Commit everything added, then stop. The final flush goes on even if the caller is cancelled."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.shield(self._task)
        self._closed = True
        self._raise_if_failed()

    # -- producers -------------------------------------------------------------------------------------

    @property
    def buffered_rows(self) -> int:
        """Rows added but not yet committed."""
        return self._added - self._committed

    async def add(self, table: models.Table, rows: Sequence[Row]) -> None:
        """Queue rows for `table`; blocks while more than `buffer_max_rows` rows wait to be committed.

        The rows are copied, so the caller may reuse its list.
        """
        self._check_usable()
        if not rows:
            return
        if self._added - self._committed >= self._buffer_max_rows:
            await self._wait_for_space()
        batch = list(rows)
        self._pending.append((table, batch))
        self._pending_rows += len(batch)
        self._added += len(batch)
        if self._metrics is not None:
            self._metrics.writer_buffered_rows.set(self._added - self._committed)
        # A full batch, or a full buffer (producers are or will be waiting for space): write now, whatever
        # the interval says. Without the second test a producer that refilled the buffer after a commit left
        # the other waiters asleep until the next interval.
        buffer_full = self._added - self._committed >= self._buffer_max_rows
        if self._pending_rows >= self._batch_max_rows or buffer_full:
            self._wake.set()

    async def flush(self) -> None:
        """Return once every row added before this call is committed."""
        self._check_usable()
        target = self._added
        if self._committed >= target:
            return
        self._flush_upto = max(self._flush_upto, target)
        self._wake.set()
        async with self._changed:
            await self._changed.wait_for(lambda: self._committed >= target or self._failure is not None)
        self._raise_if_failed()

    async def _wait_for_space(self) -> None:
        started = time.monotonic()
        self._space_waiters += 1
        self._wake.set()  # whatever the interval says, the buffer is full: write now
        try:
            async with self._changed:
                await self._changed.wait_for(self._has_space)
        finally:
            self._space_waiters -= 1
        if self._metrics is not None:
            self._metrics.writer_wait_seconds.inc(time.monotonic() - started)
        self._raise_if_failed()

    def _has_space(self) -> bool:
        return self._added - self._committed < self._buffer_max_rows or self._failure is not None

    def _check_usable(self) -> None:
        self._raise_if_failed()
        if self._task is None or self._closing:
            raise exceptions.StorageError("writer is not open")

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- the background task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                drain_all = await self._wait_until_due()
                if not self._pending:
                    if self._closing:
                        return
                    continue
                # Write what is due: full batches, what flush() waits for, and when the interval passed
                # (or the writer closes, or producers wait for space) everything pending right now.
                drain_upto = self._added if drain_all else 0
                while self._pending and (
                    self._pending_rows >= self._batch_max_rows
                    or self._added - self._pending_rows < max(self._flush_upto, drain_upto)
                ):
                    await self._commit(self._take_batch())
        except exceptions.StorageError as exc:
            self._failure = exc
            _log.error("writer_failed", error=str(exc), rows_lost=self.buffered_rows)
        except Exception as exc:  # a bug; still never leave producers blocked forever
            self._failure = exceptions.StorageError(f"writer crashed: {exc!r}")
            self._failure.__cause__ = exc
            _log.exception("writer_failed", rows_lost=self.buffered_rows)
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def _wait_until_due(self) -> bool:
        """Sleep until a batch is full, flush() waits, the writer closes, producers wait for space, or the
        interval passes; return whether everything pending should be written now."""
        # Producers waiting for space only make a batch due when there is something to write: with an empty
        # buffer this must sleep, or the loop spins without yielding and the woken producers never run.
        if not (self._pending_rows >= self._batch_max_rows or self._flush_upto > self._committed
                or self._closing or (self._space_waiters and self._pending)):
            try:
                async with asyncio.timeout(self._flush_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                self._wake.clear()
                return True
            self._wake.clear()
        return self._closing or self._space_waiters > 0

    def _take_batch(self) -> _Batch:
        """Cut up to `batch_max_rows` rows off the front of the buffer, grouped by table."""
        tables: dict[models.Table, list[Row]] = {}
        taken = 0
        while self._pending and taken < self._batch_max_rows:
            table, rows = self._pending[0]
            room = self._batch_max_rows - taken
            if len(rows) > room:
                self._pending[0] = (table, rows[room:])
                rows = rows[:room]
            else:
                self._pending.popleft()
            tables.setdefault(table, []).extend(rows)
            taken += len(rows)
        self._pending_rows -= taken
        return _Batch(tables, taken)

    async def _commit(self, batch: _Batch) -> None:
        """Write one batch, retrying transient failures with backoff for as long as it takes."""
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._write(batch)
                break
            except _TRANSIENT_ERRORS as exc:
                attempt += 1
                delay_s = min(_RETRY_MAX_DELAY_S, _RETRY_BASE_DELAY_S * 2 ** min(attempt, 10))
                delay_s *= random.uniform(0.5, 1.0)  # noqa: S311  (jitter, not cryptography)
                if self._metrics is not None:
                    self._metrics.writer_errors.inc()
                _log.warning("writer_retry", attempt=attempt, delay_s=round(delay_s, 3), rows=batch.rows,
                             error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay_s)
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise exceptions.StorageError(f"writer batch rejected by the database: {exc}") from exc
        self._committed += batch.rows
        if self._metrics is not None:
            self._metrics.writer_flush_seconds.observe(time.monotonic() - started)
            for table, rows in batch.tables.items():
                self._metrics.rows_written.labels(table=table.value).inc(len(rows))
            self._metrics.writer_buffered_rows.set(self._added - self._committed)
        async with self._changed:
            self._changed.notify_all()

    async def _write(self, batch: _Batch) -> None:
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(upserts.SETUP)
                    for table in models.Table:
                        rows = batch.tables.get(table)
                        if rows:
                            await _write_table(conn, table, rows)
            except Exception:
                # After an aborted transaction the staging tables may hold dead rows, which would break
                # the ctid = arrival order the dedupe relies on: start the next attempt on a fresh session.
                conn.terminate()
                raise


async def _write_table(conn: asyncpg.pool.PoolConnectionProxy, table: models.Table, rows: list[Row]) -> None:
    spec = upserts.TABLES[table]
    exact = False
    if table in _VALUE_INDEX:
        index = _VALUE_INDEX[table]
        exact = not _float_exact(rows, index)
        if exact:
            rows = [(*row[:index], str(row[index]), *row[index + 1:]) for row in rows]
    elif table is models.Table.JOB_STATE:
        rows = _fold_job_states(rows)
    stage = spec.stage_exact if exact and spec.stage_exact else spec.stage
    await conn.copy_records_to_table(stage, records=rows)
    try:
        async with conn.transaction():  # a savepoint: a duplicate key aborts only this attempt
            await conn.execute(_SQL[table, exact, False])
    except asyncpg.CardinalityViolationError:
        # The same key twice in one batch (ON CONFLICT cannot touch a row twice): merge the last of each.
        await conn.execute(_SQL[table, exact, True])


_SQL = {
    (table, exact, dedupe): upserts.upsert_sql(table, exact=exact, dedupe=dedupe)
    for table in models.Table for exact in (False, True) for dedupe in (False, True)
}


def _float_exact(rows: list[Row], index: int) -> bool:
    """Whether every value of the batch survives float8 staging exactly (ints within ±2**53, floats).

    C-level scans only: this runs on every batch of the hot path.
    """
    values = list(map(operator.itemgetter(index), rows))
    kinds = set(map(type, values))
    if not kinds <= _FLOAT_KINDS:
        return False
    if int in kinds:
        # min/max over mixed ints and floats compare exactly; a NaN can only make this say False.
        return bool(min(values) >= -_FLOAT_EXACT_INT and max(values) <= _FLOAT_EXACT_INT)
    return True


def _fold_job_states(rows: list[Row]) -> list[Row]:
    """One staging row per (account, job) summarising the batch's attempts in order (see upserts):
    (ig_user_id, job, last_success_at, last_attempt_at, last_error, failures after the last success)."""
    folded: dict[tuple[int, str], tuple[int, str, datetime | None, datetime, str | None, int]] = {}
    for row in rows:
        state = models.JobStateRow(*row)
        key = (state.ig_user_id, state.job)
        previous = folded.get(key)
        success: datetime | None = None
        attempt, error, failures = state.attempted_at, None, 0
        if previous is not None:
            success, error, failures = previous[2], previous[4], previous[5]
            attempt = max(previous[3], attempt)
        if state.succeeded:
            success, error, failures = state.attempted_at, None, 0
        else:
            error, failures = state.detail, failures + 1
        folded[key] = (state.ig_user_id, state.job, success, attempt, error, failures)
    return list(folded.values())
