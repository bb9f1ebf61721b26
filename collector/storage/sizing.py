"""`ig-collector db-size`: each collector table's rows and bytes, its growth per day measured from the data,
and where that rate leads in 30 and 365 days.

Growth is counted, not guessed: the rows whose time column falls in the last `window_days` (the
`collected_at` of the history, `first_seen_at` of media and of unavailable data, `end_time` of account
insights), divided by the days the data actually covers in that window (at least one, so the first hours of
a new database do not extrapolate wildly). Bytes per day are those rows times the table's bytes per row
(indexes and TOAST included). Tables with one row per account (accounts, job state) do not grow with time;
the current media-insight values grow with the media (one row per media and metric), so their rate is the
media's rate times their rows per media. The history is the only table retention trims: its projection
ignores `[retention]` and says what the disk needs without it.

Counting scans the tables (the history only the partitions of the window): seconds on millions of rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from collector import exceptions
from collector.storage import migrations, partitions

_DAY_S = 86400.0
# table -> the column whose value is when the row was added (None: does not grow with time).
_TIME_COLUMNS: dict[str, str | None] = {
    "ig_account": None,
    "ig_media": "first_seen_at",
    "ig_media_insight": None,  # grows with ig_media (see the module docstring)
    partitions.HISTORY.name: partitions.HISTORY.column,
    "ig_account_insight": "end_time",
    "ig_unavailable": "first_seen_at",
    "collector_job_state": None,
    "collector_discovered_account": None,
}
PROJECTION_DAYS = (30, 365)


@dataclass(frozen=True, slots=True)
class TableSize:
    table: str
    rows: int
    bytes: int
    partitions: int  # 0 for a plain table
    rows_per_day: float | None  # None: does not grow with time
    basis: str  # how rows_per_day was measured

    @property
    def bytes_per_day(self) -> float | None:
        if self.rows_per_day is None:
            return None
        return self.rows_per_day * self.bytes / self.rows if self.rows else 0.0

    def projected(self, days: int) -> tuple[int, int]:
        """(rows, bytes) after `days` more days at the measured rate."""
        per_day, bytes_per_day = self.rows_per_day or 0.0, self.bytes_per_day or 0.0
        return round(self.rows + per_day * days), round(self.bytes + bytes_per_day * days)


async def measure(pool: asyncpg.Pool, now: datetime, *, window_days: int = 7) -> list[TableSize]:
    """Every collector table, measured at `now` over the last `window_days` days. Raises StorageError (one
    that says to run `migrate` first when the database is not migrated)."""
    try:
        async with pool.acquire() as conn:
            await migrations.require_applied(conn)
            sizes = [await _measure_table(conn, table, column, now, window_days)
                     for table, column in _TIME_COLUMNS.items()]
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise exceptions.StorageError(f"database size query failed: {exc}") from exc
    by_name = {s.table: s for s in sizes}
    media, values = by_name["ig_media"], by_name["ig_media_insight"]
    if media.rows and media.rows_per_day is not None:
        per_media = values.rows / media.rows
        by_name["ig_media_insight"] = TableSize(
            values.table, values.rows, values.bytes, values.partitions, media.rows_per_day * per_media,
            f"ig_media's rate x {per_media:.1f} rows per media")
    return [by_name[t] for t in _TIME_COLUMNS]


async def _measure_table(conn: partitions.Connection, table: str, column: str | None, now: datetime,
                         window_days: int) -> TableSize:
    # pg_partition_tree lists no row at all for a table that is not partitioned: a plain table is its own
    # total size, a partitioned one (no storage of its own) the sum over its tree.
    row = (await conn.fetch(
        "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT sum(pg_total_relation_size(t.relid)) "
        "FROM pg_partition_tree(c.oid) t) ELSE pg_total_relation_size(c.oid) END AS size, "
        "(SELECT count(*) FROM pg_partition_tree(c.oid) t WHERE t.isleaf AND t.level > 0) AS parts "
        "FROM pg_class c WHERE c.oid = $1::regclass", table))[0]
    rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
    if column is None:
        return TableSize(table, rows, int(row["size"]), int(row["parts"]), None, "does not grow with time")
    since = now - timedelta(days=window_days)
    window = (await conn.fetch(
        f"SELECT count(*) AS n, min({column}) AS first FROM {table} "
        f"WHERE {column} >= $1 AND {column} < $2", since, now))[0]
    start = max(since, window["first"]) if window["first"] is not None else since
    days = max(1.0, (now - start).total_seconds() / _DAY_S)
    per_day = window["n"] / days
    basis = f"{window['n']} rows by {column} over the last {days:.1f} days"
    return TableSize(table, rows, int(row["size"]), int(row["parts"]), per_day, basis)


def render(sizes: list[TableSize], *, window_days: int) -> str:
    """The db-size report: one line per table, then the totals."""
    headers = ["table", "rows", "size", "parts", "rows/day", "size/day",
               *(f"rows +{d}d" for d in PROJECTION_DAYS), *(f"size +{d}d" for d in PROJECTION_DAYS)]
    lines: list[list[str]] = [headers]
    for s in sizes:
        projected = [s.projected(d) for d in PROJECTION_DAYS]
        lines.append([
            s.table, f"{s.rows:,}", human_bytes(s.bytes), str(s.partitions or "-"),
            "-" if s.rows_per_day is None else f"{s.rows_per_day:,.0f}",
            "-" if s.bytes_per_day is None else human_bytes(s.bytes_per_day),
            *(f"{r:,}" for r, _ in projected), *(human_bytes(b) for _, b in projected)])
    total = [sum(s.projected(d)[1] for s in sizes) for d in PROJECTION_DAYS]
    per_day = sum(s.bytes_per_day or 0.0 for s in sizes)
    lines.append(["total", f"{sum(s.rows for s in sizes):,}", human_bytes(sum(s.bytes for s in sizes)), "",
                  "", human_bytes(per_day), "", "", *(human_bytes(b) for b in total)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = ["  ".join(cell.rjust(w) if i else cell.ljust(w)
                     for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"growth measured over the last {window_days} days:"]
    notes += [f"  {s.table}: {s.basis}" for s in sizes if s.rows_per_day is not None]
    notes.append("projections assume that rate and ignore [retention] (what the disk needs without it)")
    return "\n".join([*out, "", *notes])


def human_bytes(count: float) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
