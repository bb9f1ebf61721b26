"""Retention of the partitioned history: `[retention]` history_days and history_full_days.

* `history_days`: a month partition whose every row is older than the cutoff (its upper bound ≤ the Pacific
  midnight `history_days` days before today) is dropped whole: no DELETE, no vacuum. Rows of the default
  partition older than the cutoff are deleted (it holds only strays).
* `history_full_days`: a month partition entirely older than that cutoff is downsampled once: each series
  (media, metric, breakdown, dimension) keeps only its last row of each Pacific day. The partition is rebuilt
  as a new table and swapped in (a short lock at the swap; the rebuild itself only stops inserts into that
  old month), and marked so it is not rebuilt again. The default partition's old rows are downsampled with
  a DELETE.

`plan` is a pure function of the partitions, the settings and `now`; `apply` carries a plan out, one
partition per transaction, and `describe` measures a plan for `prune --dry-run`. `maintain` is the daemon's
daily task: months ahead (collector.storage.partitions), then the policy.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from collector import exceptions, pacific, settings
from collector.storage import migrations, partitions, sizing

# One instance at a time runs the daily maintenance ("igc-rete" in ASCII).
MAINTENANCE_LOCK_KEY = 0x6967632D72657465

_log = structlog.get_logger(__name__)


class Kind(enum.StrEnum):
    DROP = "drop"  # drop a whole month partition
    DOWNSAMPLE = "downsample"  # rebuild a month partition with the last row per series and Pacific day
    DELETE_DEFAULT = "delete_default"  # delete the default partition's rows older than the cutoff
    DOWNSAMPLE_DEFAULT = "downsample_default"  # the same downsampling, by DELETE, in the default partition


@dataclass(frozen=True, slots=True)
class Action:
    kind: Kind
    partition: partitions.Partition
    cutoff: datetime  # the rows concerned are older than this


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    rows_before: int
    rows_after: int
    bytes_before: int
    bytes_after: int
    duration_s: float


def cutoff(now: datetime, days: int | None) -> datetime | None:
    """The Pacific midnight `days` days before today's (None: no limit). Rows older than it are concerned."""
    if days is None:
        return None
    return pacific.day_start_utc(pacific.today(now) - timedelta(days=days))


def plan(parts: Sequence[partitions.Partition], policy: settings.RetentionSettings,
         now: datetime) -> list[Action]:
    """What the policy does to these partitions at `now`, oldest first; empty when it keeps everything."""
    drop_before = cutoff(now, policy.history_days)
    full_before = cutoff(now, policy.history_full_days)
    actions: list[Action] = []
    for part in parts:
        month = part.month
        if month is None:
            if drop_before is not None:
                actions.append(Action(Kind.DELETE_DEFAULT, part, drop_before))
            if full_before is not None:
                actions.append(Action(Kind.DOWNSAMPLE_DEFAULT, part, full_before))
        elif drop_before is not None and month.end <= drop_before:
            actions.append(Action(Kind.DROP, part, drop_before))
        elif full_before is not None and month.end <= full_before and not part.downsampled:
            actions.append(Action(Kind.DOWNSAMPLE, part, full_before))
    return actions


async def current_plan(conn: partitions.Connection, policy: settings.RetentionSettings,
                       now: datetime) -> list[Action]:
    await migrations.require_applied(conn)  # raises StorageError: run `migrate` first
    return plan(await partitions.list_partitions(conn, partitions.HISTORY), policy, now)


async def apply(conn: partitions.Connection, actions: Sequence[Action]) -> list[Outcome]:
    """Carry out `actions`, one transaction each. Raises asyncpg errors (a lock timeout: try again later;
    what was done before stays done)."""
    outcomes: list[Outcome] = []
    for action in actions:
        name = action.partition.name
        if not await _still_due(conn, action):
            continue
        rows_before, bytes_before = await _measure(conn, name)
        started = time.monotonic()
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", partitions.DDL_LOCK_KEY)
            # Another process (a `prune`, another instance) may have done it while this one waited.
            if not await _still_due(conn, action):
                continue
            await conn.execute(f"SET LOCAL lock_timeout = '{partitions.LOCK_TIMEOUT}'")
            await _RUN[action.kind](conn, action)
        duration_s = round(time.monotonic() - started, 3)
        rows_after, bytes_after = (0, 0) if action.kind is Kind.DROP else await _measure(conn, name)
        outcome = Outcome(action, rows_before, rows_after, bytes_before, bytes_after, duration_s)
        _log.info("retention_applied", action=action.kind.value, partition=name,
                  cutoff=action.cutoff.isoformat(), rows_before=rows_before, rows_after=rows_after,
                  bytes_freed=bytes_before - bytes_after, duration_s=outcome.duration_s)
        outcomes.append(outcome)
    return outcomes


async def describe(conn: partitions.Connection, actions: Sequence[Action]) -> list[Outcome]:
    """What `apply` would do, measured without changing anything (rows_after: the rows that would stay;
    bytes_after: estimated from the share of rows that stays). Actions on the same partition are measured
    one after the other, as `apply` would leave it."""
    outcomes: list[Outcome] = []
    floors: dict[str, datetime] = {}  # partition -> rows older than this are already gone
    for action in actions:
        name = action.partition.name
        rows, size = await _measure(conn, name)
        floor = floors.get(name)
        if floor is not None:  # after a DELETE_DEFAULT of the same partition
            gone = await conn.fetchval(f'SELECT count(*) FROM "{name}" WHERE collected_at < $1', floor)
            size = size * (rows - gone) // rows if rows else 0
            rows -= gone
        if action.kind is Kind.DROP:
            kept = 0
        elif action.kind is Kind.DELETE_DEFAULT:
            kept = rows - await conn.fetchval(
                f'SELECT count(*) FROM "{name}" WHERE collected_at < $1', action.cutoff)
            floors[name] = action.cutoff
        else:
            kept = await conn.fetchval(
                f'SELECT count(*) FROM (SELECT DISTINCT {_SERIES}, {_DAY} FROM "{name}" '
                f"WHERE collected_at < $1 AND collected_at >= $2) AS d", action.cutoff, floor or _NO_FLOOR)
            kept += await conn.fetchval(
                f'SELECT count(*) FROM "{name}" WHERE collected_at >= $1', action.cutoff)
        outcomes.append(Outcome(action, rows, kept, size, size * kept // rows if rows else size, 0.0))
    return outcomes


async def maintain(pool: asyncpg.Pool, policy: settings.RetentionSettings, now: datetime) -> list[Outcome]:
    """The daily maintenance: partitions ahead, then the retention policy. With several instances on one
    database, one of them does it at a time (the others skip it this time). Raises StorageError."""
    try:
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK_KEY):
                _log.info("history_maintenance_skipped", reason="another instance is running it")
                return []
            try:
                created = await partitions.ensure(conn, now)
                outcomes = await apply(conn, await current_plan(conn, policy, now))
            finally:
                if not conn.is_closed():
                    await conn.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK_KEY)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise exceptions.StorageError(f"history maintenance failed: {exc}") from exc
    _log.info("history_maintenance_done", partitions_created=len(created), retention_actions=len(outcomes))
    return outcomes


def render(outcomes: Sequence[Outcome], *, policy: settings.RetentionSettings, dry_run: bool) -> str:
    """The prune report: the policy, then one line per action."""
    keep = "everything" if policy.history_days is None else f"{policy.history_days} days"
    full = "always" if policy.history_full_days is None else f"{policy.history_full_days} days"
    lines = [f"retention: history kept {keep}, full resolution {full}"
             + (" (dry run: nothing changed)" if dry_run else "")]
    if not outcomes:
        lines.append("nothing to do")
    verb = "would" if dry_run else "did"
    for o in outcomes:
        month = o.action.partition.month
        lines.append(
            f"  {verb} {o.action.kind.value:<18} {o.action.partition.name} "
            f"({'default' if month is None else month}; rows before {o.action.cutoff.isoformat()}): "
            f"rows {o.rows_before:,} -> {o.rows_after:,}, "
            f"size {sizing.human_bytes(o.bytes_before)} -> {sizing.human_bytes(o.bytes_after)}"
            + ("" if dry_run else f", {o.duration_s:.3f} s"))
    freed = sum(o.bytes_before - o.bytes_after for o in outcomes)
    lines.append(f"{'would free' if dry_run else 'freed'} {sizing.human_bytes(freed)}")
    return "\n".join(lines)


# -- the actions -----------------------------------------------------------------------------------------

_SERIES = ", ".join(partitions.HISTORY.series)
_NO_FLOOR = datetime(1, 1, 1, tzinfo=UTC)
_DAY = f"(collected_at AT TIME ZONE '{pacific.PACIFIC.key}')::date"
_COLUMNS = "media_id, metric, breakdown, dimension, value, collected_at"


async def _drop(conn: partitions.Connection, action: Action) -> None:
    await conn.execute(f'DROP TABLE "{action.partition.name}"')


async def _delete_default(conn: partitions.Connection, action: Action) -> None:
    await conn.execute(f'DELETE FROM "{action.partition.name}" WHERE collected_at < $1', action.cutoff)


async def _downsample_default(conn: partitions.Connection, action: Action) -> None:
    # A row goes when a later one (by time, then physical order for equal times) of the same series and
    # Pacific day exists.
    name = action.partition.name
    series = " AND ".join(f"l.{c} = d.{c}" for c in partitions.HISTORY.series)
    await conn.execute(
        f'DELETE FROM "{name}" AS d WHERE d.collected_at < $1 AND EXISTS (SELECT FROM "{name}" AS l '
        f"WHERE {series} AND l.collected_at < $1 "
        f"AND (l.collected_at AT TIME ZONE '{pacific.PACIFIC.key}')::date "
        f"= (d.collected_at AT TIME ZONE '{pacific.PACIFIC.key}')::date "
        f"AND (l.collected_at, l.ctid) > (d.collected_at, d.ctid))", action.cutoff)


async def _downsample(conn: partitions.Connection, action: Action) -> None:
    """Rebuild the partition as a new table holding the last row per series and Pacific day, then swap.

    SHARE on the old partition stops inserts into that month only (there are none: its month is long past)
    while the copy runs; the parent is locked (ACCESS EXCLUSIVE) only for the detach/attach/rename at the
    end, all catalog work: the new table carries a CHECK equal to its bounds, so ATTACH does not scan it.
    """
    part = action.partition
    month = part.month
    assert month is not None
    spec = partitions.HISTORY
    name, new = part.name, f"{part.name}_new"
    await conn.execute(f'LOCK TABLE "{name}" IN SHARE MODE')
    await conn.execute(f'CREATE TABLE "{new}" (LIKE "{spec.name}" INCLUDING DEFAULTS INCLUDING STORAGE)')
    await conn.execute(
        f'ALTER TABLE "{new}" ADD CONSTRAINT "{name}_bounds" CHECK ({partitions.bounds_check(spec, month)})')
    await conn.execute(
        f'INSERT INTO "{new}" ({_COLUMNS}) SELECT DISTINCT ON ({_SERIES}, {_DAY}) {_COLUMNS} FROM "{name}" '
        f"ORDER BY {_SERIES}, {_DAY}, collected_at DESC, ctid DESC")
    for sql in partitions.index_sql(spec, name, "_new"):
        await conn.execute(sql)
    await conn.execute(f'ALTER TABLE "{spec.name}" DETACH PARTITION "{name}"')
    await conn.execute(
        f'ALTER TABLE "{spec.name}" ATTACH PARTITION "{new}" {partitions.bounds_clause(month)}')
    await conn.execute(f'DROP TABLE "{name}"')
    await conn.execute(f'ALTER TABLE "{new}" RENAME TO "{name}"')
    for index_name, _ in spec.indexes:
        await conn.execute(f'ALTER INDEX "{name}_{index_name}_new" RENAME TO "{name}_{index_name}"')
    await conn.execute(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bounds"')
    await conn.execute(f"COMMENT ON TABLE \"{name}\" IS '{partitions.DOWNSAMPLED_COMMENT}'")


_RUN = {
    Kind.DROP: _drop,
    Kind.DOWNSAMPLE: _downsample,
    Kind.DELETE_DEFAULT: _delete_default,
    Kind.DOWNSAMPLE_DEFAULT: _downsample_default,
}


async def _still_due(conn: partitions.Connection, action: Action) -> bool:
    name = action.partition.name
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{name}"'):
        return False
    if action.kind is Kind.DOWNSAMPLE:
        comment = await conn.fetchval("SELECT obj_description($1::regclass, 'pg_class')", f'"{name}"')
        return bool(comment != partitions.DOWNSAMPLED_COMMENT)
    return True


async def _measure(conn: partitions.Connection, name: str) -> tuple[int, int]:
    """(rows, bytes) of a partition. The rows of a month partition are estimated as the planner does (the
    rows per page of its last VACUUM/ANALYZE times its pages now): a month of a large history holds hundreds
    of millions of rows, and counting them would take longer than dropping them. The default partition, and
    a partition never analysed, are counted."""
    row = (await conn.fetch(
        "SELECT reltuples, relpages, pg_relation_size(oid) / current_setting('block_size')::int AS pages, "
        "pg_total_relation_size(oid) AS size, pg_get_expr(relpartbound, oid) = 'DEFAULT' AS is_default "
        "FROM pg_class WHERE oid = $1::regclass", f'"{name}"'))[0]
    if row["reltuples"] < 0 or row["relpages"] == 0 or row["is_default"]:
        rows = await conn.fetchval(f'SELECT count(*) FROM "{name}"')
    else:
        rows = round(row["reltuples"] / row["relpages"] * row["pages"])
    return int(rows), int(row["size"])

