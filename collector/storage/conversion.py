"""Finishing migration 003: copy the unpartitioned history into the partitioned table, then swap.

sql/003_history_partitioned.sql prepared everything in one short transaction (read its header): the new
partitioned table `ig_media_insight_history_next`, a trigger that copies every row inserted from then on
into it (marking the row in the old table), and `collector_history_conversion`, the page range holding
every earlier row. This module, run by `migrations.migrate` after the SQL files, under its advisory lock:

1. copies the unmarked rows page range by page range (`batch_pages` pages, one transaction each, progress
   committed with the batch: an interrupted conversion resumes where it stopped), creating the partitions
   of the months it meets first so that no row lands in the default partition;
2. verifies, under one snapshot, that both tables hold the same rows per Pacific month (the trigger makes
   them move together from then on);
3. swaps in one transaction with a short lock: drops the trigger and the old table, renames the new one.

Writers are never stopped but for the instant of the swap (and of 003's own transaction); readers see the
complete history throughout (the old table until the swap).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import asyncpg
import structlog

from collector import exceptions
from collector.storage import partitions

# ~8 kB pages: 2,000 pages are ~16 MB, ~150k history rows per transaction.
BATCH_PAGES = 2_000
SWAP_ATTEMPTS = 10
_STATE = "collector_history_conversion"
_OLD = partitions.HISTORY.name
_NEW = f"{_OLD}_next"
_COLUMNS = "media_id, metric, breakdown, dimension, value, collected_at"
_RANGE = "ctid >= format('(%s,0)', $1::bigint)::tid AND ctid < format('(%s,0)', $2::bigint)::tid"
_MONTH = partitions.month_sql(partitions.HISTORY.column)

_log = structlog.get_logger(__name__)


async def pending(conn: partitions.Connection) -> bool:
    """Whether a conversion was started (migration 003 applied) and not finished."""
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", _STATE))


async def finish(conn: partitions.Connection, now: datetime, *,
                 batch_pages: int = BATCH_PAGES) -> int | None:
    """Run a pending conversion to the end; the number of rows it copied, None when nothing was pending.
    `now` places the months ahead, created first so that the rows written meanwhile find their partition."""
    if not await pending(conn):
        return None
    started = time.monotonic()
    await ensure_ahead(conn, now)
    copied = await copy(conn, batch_pages=batch_pages)
    await verify(conn)
    await swap(conn)
    _log.info("history_conversion_finished", copied=copied, duration_s=round(time.monotonic() - started, 3))
    return copied


async def copy(conn: partitions.Connection, *, batch_pages: int = BATCH_PAGES,
               max_batches: int | None = None) -> int:
    """Copy the next page ranges (all that are left, or `max_batches` of them); the rows copied so far."""
    state = (await conn.fetch(f"SELECT end_page, next_page, copied FROM {_STATE}"))[0]
    end_page, page, copied = state["end_page"], state["next_page"], state["copied"]
    _log.info("history_conversion_copying", pages=end_page, from_page=page, copied=copied)
    batches = 0
    while page < end_page and (max_batches is None or batches < max_batches):
        batches += 1
        upto = min(page + batch_pages, end_page)
        await _ensure_months(conn, page, upto)
        async with conn.transaction():
            status = await conn.execute(
                f"INSERT INTO {_NEW} ({_COLUMNS}) SELECT {_COLUMNS} FROM {_OLD} "
                f"WHERE {_RANGE} AND NOT igc_during_conversion", page, upto)
            rows = int(status.rsplit(" ", 1)[-1])
            copied += rows
            await conn.execute(f"UPDATE {_STATE} SET next_page = $1, copied = $2", upto, copied)
        page = upto
        _log.debug("history_conversion_batch", page=page, pages=end_page, copied=copied)
    return int(copied)


async def ensure_ahead(conn: partitions.Connection, now: datetime) -> None:
    """The partitions of the new table for the Pacific month of `now` and the months ahead."""
    first = partitions.Month.of(now)
    await _create_missing(conn, [first.next(i) for i in range(partitions.MONTHS_AHEAD + 1)])


async def _ensure_months(conn: partitions.Connection, page: int, upto: int) -> None:
    """Create the partitions of the months found in the page range that the new table lacks."""
    months = await conn.fetch(
        f"SELECT DISTINCT {_MONTH} AS month FROM {_OLD} WHERE {_RANGE} AND NOT igc_during_conversion",
        page, upto)
    await _create_missing(conn, [partitions.Month(row["month"].year, row["month"].month) for row in months])


async def _create_missing(conn: partitions.Connection, months: list[partitions.Month]) -> None:
    existing = {p.month for p in await partitions.list_partitions(conn, partitions.HISTORY, parent=_NEW)}
    for month in months:
        if month not in existing:
            # Named as the final table's partition: renaming the parent at the swap keeps its partitions.
            await partitions.create_partition(conn, partitions.HISTORY, month, parent=_NEW)


async def verify(conn: partitions.Connection) -> None:
    """Both tables hold the same number of rows per Pacific month, read under one snapshot."""
    sql = f"SELECT {_MONTH} AS month, count(*) AS n FROM {{table}} GROUP BY 1"
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        old = {r["month"]: r["n"] for r in await conn.fetch(sql.format(table=_OLD))}
        new = {r["month"]: r["n"] for r in await conn.fetch(sql.format(table=_NEW))}
    if old != new:
        diff = {str(m): (old.get(m, 0), new.get(m, 0)) for m in sorted(set(old) | set(new))
                if old.get(m, 0) != new.get(m, 0)}
        raise exceptions.StorageError(
            f"history conversion: the copy does not match the table (month: (old, new) rows): {diff}; "
            f"nothing was swapped")
    _log.info("history_conversion_verified", rows=sum(old.values()), months=len(old))


async def swap(conn: partitions.Connection) -> None:
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{partitions.LOCK_TIMEOUT}'")
                await conn.execute(f"LOCK TABLE {_OLD} IN ACCESS EXCLUSIVE MODE")
                await conn.execute(f"""
DROP TABLE {_OLD};
DROP FUNCTION igc_history_conversion_copy();
ALTER TABLE {_NEW} RENAME TO {_OLD};
ALTER INDEX {_NEW}_media_idx RENAME TO {_OLD}_media_idx;
DROP TABLE {_STATE};
COMMENT ON TABLE {_OLD} IS 'Append-only: one row each time a media metric value was first stored or changed. '
    'Range-partitioned by collected_at, one partition per Pacific month.';
COMMENT ON COLUMN {_OLD}.collected_at IS 'When this value was first seen.';
""")
            return
        except asyncpg.LockNotAvailableError:
            _log.warning("history_conversion_swap_waiting", attempt=attempt)
            await asyncio.sleep(min(5.0, 0.2 * attempt))
    raise exceptions.StorageError(
        f"history conversion: could not lock {_OLD} for the swap ({SWAP_ATTEMPTS} tries); run migrate again")

