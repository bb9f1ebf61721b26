"""The batched writer: rows in, committed batches out, whatever PostgreSQL is doing.

Producers `add` rows (the table's NamedTuples, column order = staging order) to one in-memory buffer kept
in arrival order. A background task cuts the buffer's FRONT into batches of at most `batch_max_rows` rows
and commits each in one transaction: per table, COPY into a temp staging table and one merge statement
(collector.storage.upserts), tables in `models.Table` order. Because a batch is always a prefix of
everything added, a job-state row can never commit before the data added ahead of it.

A batch with many media-insight rows (≥ `split_min_rows`) is written on `connections` connections at
once: its media-insight rows first, split by media_id, each part committing on its own; then the rest of
the batch in one transaction (see Writer._plan). One backend is one core, and the merge is backend-bound
(~4-9 µs a row against ~1 µs in the client): two backends use both cores. Readers may
see a batch's insights a moment before its other rows, never a job state or a media row's
insights_refreshed_at before the insights they vouch for.

While the database is unreachable the batch is retried with capped exponential backoff for as long as the
process lives; the buffer keeps growing until `buffer_max_rows`, then `add` blocks (backpressure, so the
fetchers slow down instead of memory growing). "Unreachable" includes every way a connection can die
mid-COPY or mid-transaction, whatever asyncpg raises about it (see `_transient`): the attempt is retried
on a fresh connection. Only a rejection of the data by PostgreSQL on a live connection (a bug: bad data,
schema drift) is fatal: the writer stops, keeps the rejected batch in its buffer (`buffered_rows`), and
every later call raises StorageError.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import operator
import random
import time
import types
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import asyncpg.pool
import structlog

from collector import exceptions, models
from collector import metrics as metrics_mod
from collector.storage import upserts

Row = tuple[Any, ...]

# Position of `value`, and of the timestamps staged as int8 microseconds, in the rows of the tables that
# carry metric values (upserts.VALUED).
_VALUE_INDEX = {models.Table.MEDIA_INSIGHT: 4, models.Table.ACCOUNT_INSIGHT: 6}
_TIMESTAMP_INDEXES = {models.Table.MEDIA_INSIGHT: (5,), models.Table.ACCOUNT_INSIGHT: (3, 7)}
_FLOAT_EXACT_INT = 2**53
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1
_FLOAT_KINDS = frozenset({int, float})
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_RETRY_BASE_DELAY_S = 0.1
_RETRY_MAX_DELAY_S = 5.0


class ConnectionLost(Exception):
    """The connection an attempt ran on was closed under it, whatever asyncpg raised about it."""


# Errors that mean "the database is not reachable right now", never "this batch is wrong".
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unix socket gone
    TimeoutError,  # connect timeout
    asyncpg.PostgresConnectionError,  # includes connection lost in the middle of a statement
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.PostgresSystemError,  # SQLSTATE class 58: I/O errors outside PostgreSQL
    asyncpg.InternalClientError,  # the protocol left mid-operation by a dropped connection
    ConnectionLost,
)

# Everything a write can raise from the database side: transient ones are retried, the rest are fatal.
_DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    *_TRANSIENT_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError)


# What asyncpg says when a statement, a COPY or a transaction's exit meets a connection that an outage
# already dropped (or left mid-operation): the connection is gone, the data was not judged.
_CONNECTION_STATE_MESSAGES = (
    "connection is closed",
    "released back to the pool",
    "another operation is in progress",
    "another operation is cancelling",
)


def _transient(exc: BaseException) -> bool:
    """A failure that another attempt on a fresh connection can get past: the database or the connection
    went away, whatever the exception says on the surface. Only a rejection of the data by PostgreSQL (an
    ERROR with a SQLSTATE outside the connection, resource and operator classes) or a client-side bug on a
    live connection is not. One rejection is transient too: a history row that met its month's partition
    being attached.

    The chain counts: a connection cut mid-COPY makes the transaction's ROLLBACK fail with an InterfaceError
    ("another operation is in progress") or an InternalClientError ("cannot switch to state …"), raised
    while the real cause (ConnectionDoesNotExistError, AdminShutdownError) is being handled."""
    if isinstance(exc, asyncpg.CheckViolationError) and "violates partition constraint" in str(exc):
        # A history row routed to the default partition while its month's partition was being attached
        # (collector.storage.partitions): routed again, it goes to the new partition.
        return True
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _connection_failure(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _connection_failure(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_ERRORS):
        return True
    message = str(exc)
    return isinstance(exc, asyncpg.InterfaceError) and any(m in message for m in _CONNECTION_STATE_MESSAGES)


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
        batch_max_rows: int = 50_000,
        # Short, so PostgreSQL merges on its own core while the fetchers work: at 1 s, a pass shorter than a
        # second left all its rows to the final flush (0.12-0.16 s after the last answer of the small-agency
        # pass against 0.07-0.08 s at 0.2 s; docs/benchmarks.md, issue 9).
        flush_interval_s: float = 0.25,
        buffer_max_rows: int = 200_000,
        connections: int = 2,
        split_min_rows: int = 4_000,
        metrics: metrics_mod.Metrics | None = None,
    ) -> None:
        if batch_max_rows < 1 or buffer_max_rows < 1 or flush_interval_s <= 0 or connections < 1:
            raise ValueError(
                "batch_max_rows, buffer_max_rows, flush_interval_s and connections must be positive")
        self._pool = pool
        self._batch_max_rows = batch_max_rows
        self._flush_interval_s = flush_interval_s
        self._buffer_max_rows = buffer_max_rows
        self._metrics = metrics
        self._connections = connections
        self._split_min_rows = split_min_rows
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

    async def add(self, table: models.Table, rows: Sequence[Row]) -> int:
        """Queue rows for `table`; blocks while more than `buffer_max_rows` rows wait to be committed.
        Returns the writer's mark after these rows: `await wait_committed(mark)` returns once they are in.

        The rows are copied, so the caller may reuse its list.
        """
        self._check_usable()
        if not rows:
            return self._added
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
        return self._added

    async def flush(self) -> None:
        """Return once every row added before this call is committed."""
        await self.wait_committed(self._added)

    async def wait_committed(self, mark: int) -> None:
        """Return once every row up to `mark` (what `add` returned) is committed.

        A waiter makes the rows due at once rather than at the flush interval. That is a group commit:
        whatever other callers add while a batch commits goes into the next batch together, so many
        concurrent waiters cost a few transactions, not one each.
        """
        self._check_usable()
        if self._committed >= mark:
            return
        self._flush_upto = max(self._flush_upto, mark)
        self._wake.set()
        async with self._changed:
            await self._changed.wait_for(lambda: self._committed >= mark or self._failure is not None)
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
            _log.error("writer_failed", error=str(exc), rows_unwritten=self.buffered_rows)
        except Exception as exc:  # a bug; still never leave producers blocked forever
            self._failure = exceptions.StorageError(f"writer crashed: {exc!r}")
            self._failure.__cause__ = exc
            _log.exception("writer_failed", rows_unwritten=self.buffered_rows)
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
        phases = self._plan(batch)
        done: set[tuple[int, int]] = set()  # (phase, part) committed: a retry does not redo them
        while True:
            started = time.monotonic()
            try:
                for number, phase in enumerate(phases):
                    await self._write_phase(number, phase, done)
                break
            except _DATABASE_ERRORS as exc:
                if not _transient(exc):
                    self._keep(batch)
                    raise exceptions.StorageError(f"writer batch rejected by the database: {exc}") from exc
                attempt += 1
                delay_s = min(_RETRY_MAX_DELAY_S, _RETRY_BASE_DELAY_S * 2 ** min(attempt, 10))
                delay_s *= random.uniform(0.5, 1.0)  # noqa: S311  (jitter, not cryptography)
                if self._metrics is not None:
                    self._metrics.writer_errors.inc()
                _log.warning("writer_retry", attempt=attempt, delay_s=round(delay_s, 3), rows=batch.rows,
                             error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay_s)
        self._committed += batch.rows
        if self._metrics is not None:
            self._metrics.writer_flush_seconds.observe(time.monotonic() - started)
            for table, rows in batch.tables.items():
                self._metrics.rows_written.labels(table=table.value).inc(len(rows))
            self._metrics.writer_buffered_rows.set(self._added - self._committed)
        async with self._changed:
            self._changed.notify_all()

    def _keep(self, batch: _Batch) -> None:
        """Put a batch the database rejected back at the front of the buffer: the writer stops, but what was
        fetched is not dropped (`buffered_rows` still counts it, and the log says how much is unwritten)."""
        for table in reversed(models.Table):
            rows = batch.tables.get(table)
            if rows:
                self._pending.appendleft((table, rows))
        self._pending_rows += batch.rows

    def _plan(self, batch: _Batch) -> list[list[dict[models.Table, list[Row]]]]:
        """The transactions of one batch, in phases: the parts of a phase run concurrently on their own
        connections and commit independently; a phase starts once the previous one has committed.

        A small batch is one transaction. A batch with at least `split_min_rows` media-insight rows first
        commits those rows in `connections` parts split by media_id (a key is always in the same part, so
        the last row of a key still wins), then everything else in one transaction, tables in
        `models.Table` order. So JOB_STATE and the ig_media rows (whose insights_refreshed_at vouches for
        the insights: the collector adds them after the insights) still commit after the data they vouch
        for. Retrying a committed part is never needed (the attempt skips it), and would be harmless:
        re-applying unchanged values writes nothing.
        """
        insights = batch.tables.get(models.Table.MEDIA_INSIGHT)
        parts = self._connections
        if parts < 2 or insights is None or len(insights) < self._split_min_rows:
            return [[batch.tables]]
        split = [[row for row in insights if row[0] % parts == part] for part in range(parts)]
        phases = [[{models.Table.MEDIA_INSIGHT: rows} for rows in split if rows]]
        rest: dict[models.Table, list[Row]] = {
            table: rows for table, rows in batch.tables.items() if table is not models.Table.MEDIA_INSIGHT}
        if rest:
            phases.append([rest])
        return phases

    async def _write_phase(self, number: int, phase: list[dict[models.Table, list[Row]]],
                           done: set[tuple[int, int]]) -> None:
        todo = [(number, part) for part in range(len(phase)) if (number, part) not in done]
        # Wait for every part before raising: a part still running must not overlap the retry.
        results = await asyncio.gather(
            *(self._write(phase[part]) for _, part in todo), return_exceptions=True)
        failures: list[BaseException] = []
        for key, result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(result)
            else:
                done.add(key)
        if failures:
            # A non-transient failure is fatal whatever the other parts did; raise that one first.
            raise next((exc for exc in failures if not _transient(exc)), failures[0])

    async def _write(self, tables: dict[models.Table, list[Row]]) -> None:
        async with self._pool.acquire() as conn:
            try:
                async with conn.transaction():
                    await conn.execute(upserts.SETUP)
                    for table in models.Table:
                        rows = tables.get(table)
                        if rows:
                            await _write_table(conn, table, rows)
            except Exception as exc:
                # After an aborted transaction the staging tables may hold dead rows, which would break
                # the ctid = arrival order the dedupe relies on: start the next attempt on a fresh session.
                # A connection the outage already closed (or the pool took back) cannot be terminated; that
                # must not replace the error that says what happened.
                lost = _is_closed(conn)
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
                if lost and not _transient(exc):
                    # Whatever asyncpg raised, the connection died under the attempt: PostgreSQL did not
                    # judge the data (a rejection is an ERROR on a live connection).
                    raise ConnectionLost(f"connection lost mid-write: {type(exc).__name__}: {exc}") from exc
                raise


def _is_closed(conn: asyncpg.pool.PoolConnectionProxy) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # already released back to the pool
        return True


async def _write_table(conn: asyncpg.pool.PoolConnectionProxy, table: models.Table, rows: list[Row]) -> None:
    kind: upserts.ValueKind | None = None
    records: Iterable[Row] = rows
    if table in upserts.VALUED:
        kind, records = _staged(table, rows)
    elif table is models.Table.JOB_STATE:
        records = _fold_job_states(rows)
    await conn.copy_records_to_table(upserts.stage_table(table, kind), records=records)
    try:
        # A savepoint, so that a duplicate key aborts only this attempt; set, used and released in one round
        # trip (one simple-query message): during a busy pass every round trip of a commit waits a whole
        # event-loop cycle, and three per table made a commit take 0.3-0.65 s (docs/benchmarks.md, issue 9).
        await conn.execute(_FAST_SQL[table, kind])
    except (asyncpg.CardinalityViolationError, asyncpg.UniqueViolationError):
        # The same key twice in one batch (ON CONFLICT cannot touch a row twice, the fast form's plain
        # INSERT cannot insert it twice), or another writer inserted a key first: merge the last of each
        # key, every key through ON CONFLICT.
        await conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
        await conn.execute(_SQL[table, kind, True])


_SQL = {
    (table, kind, dedupe): upserts.upsert_sql(table, kind, dedupe=dedupe)
    for table in models.Table
    for kind in (tuple(upserts.ValueKind) if table in upserts.VALUED else (None,))
    for dedupe in (False, True)
}
_SAVEPOINT = "writer_merge"
_FAST_SQL = {
    (table, kind): f"SAVEPOINT {_SAVEPOINT}; {sql.strip().rstrip(';')}; RELEASE SAVEPOINT {_SAVEPOINT}"
    for (table, kind, dedupe), sql in _SQL.items() if not dedupe
}


def _staged(table: models.Table, rows: list[Row]) -> tuple[upserts.ValueKind, Iterable[Row]]:
    """The rows of a table with values as staged: value as the batch's ValueKind, timestamps as int8
    microseconds since the Unix epoch (see upserts). Column-wise with C-level map/zip: this is the hot path,
    and rebuilding each row in Python would cost more than the conversions save."""
    columns = [list(map(operator.itemgetter(i), rows)) for i in range(len(rows[0]))]
    index = _VALUE_INDEX[table]
    kind = _value_kind(columns[index])
    if kind is upserts.ValueKind.TEXT:
        columns[index] = list(map(str, columns[index]))
    for index in _TIMESTAMP_INDEXES[table]:
        columns[index] = _micros(columns[index])
    return kind, zip(*columns, strict=True)


def _value_kind(values: list[Any]) -> upserts.ValueKind:
    """The cheapest staging type that carries every value of the batch exactly.

    C-level scans only: this runs on every batch of the hot path.
    """
    kinds = set(map(type, values))
    if kinds == {int}:
        if min(values) >= _INT8_MIN and max(values) <= _INT8_MAX:
            return upserts.ValueKind.INT
        return upserts.ValueKind.TEXT
    if not kinds <= _FLOAT_KINDS:
        return upserts.ValueKind.TEXT
    # Ints and floats: float8 carries ints within ±2**53. min/max over mixed ints and floats compare
    # exactly; a NaN can only make this say TEXT ('nan'::numeric is NaN too).
    if int in kinds and not (min(values) >= -_FLOAT_EXACT_INT and max(values) <= _FLOAT_EXACT_INT):
        return upserts.ValueKind.TEXT
    return upserts.ValueKind.FLOAT


def _micros(stamps: list[datetime | None]) -> list[int | None]:
    """Microseconds since the Unix epoch, converted once per distinct value (a batch holds a handful).

    Naive datetimes are local time, as asyncpg's timestamptz encoder takes them; None stays NULL.
    """
    micros = {stamp: None if stamp is None else (stamp.astimezone(UTC) - _UNIX_EPOCH) // _MICROSECOND
              for stamp in set(stamps)}
    return list(map(micros.__getitem__, stamps))


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
