"""Monthly range partitions of the append-only tables (declarative partitioning, no extension).

A partition holds one Pacific calendar month: from the Pacific midnight that starts the 1st to the one that
starts the next month, in UTC (collector.pacific). Every Pacific day therefore lies in exactly one partition,
which is what lets retention downsample "the last value per Pacific day" partition by partition. Partitions
are named `<table>_pYYYY_MM`; the `<table>_default` partition takes strays (rows of a month that has no
partition). `ensure` creates the current month and `MONTHS_AHEAD` more, so a write never waits for DDL,
and the months of any strays; `migrate` and the daemon's daily maintenance call it.

A partition is created without blocking writers: as a plain table, filled with the default partition's rows of
its month (usually none), then attached (ATTACH takes SHARE UPDATE EXCLUSIVE on the parent, which inserts do
not conflict with; ATTACH builds the partition's indexes). Every DDL here runs with a short lock_timeout:
waiting behind a long query would queue the writers behind the DDL.

PostgreSQL checks a row routed to the default partition against the default's constraint after locking it,
so a row of a month whose partition is being attached at that instant fails with "violates partition
constraint"; the writer retries it (it then goes to the new partition). Creating months ahead keeps this
from happening at all in normal operation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg
import asyncpg.pool
import structlog

from collector import pacific

# The current Pacific month and this many after it always exist.
MONTHS_AHEAD = 2
# How long DDL waits for a lock before giving up (and trying again later).
LOCK_TIMEOUT = "2s"
# Serialises this module's and retention's DDL across processes (a daemon and a `migrate` or `prune`); any
# fixed key ("igc-part" in ASCII).
DDL_LOCK_KEY = 0x6967632D70617274

Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A time-partitioned table: its partition key and the column lists of its (non-unique) indexes."""

    name: str
    column: str
    indexes: tuple[tuple[str, tuple[str, ...]], ...]  # (index name suffix, columns)
    series: tuple[str, ...]  # the columns naming one series (downsampling keeps the last row per day)


HISTORY = TableSpec(
    name="ig_media_insight_history",
    column="collected_at",
    indexes=(("media_idx", ("media_id", "collected_at")),),
    series=("media_id", "metric", "breakdown", "dimension"),
)
# Every append-only table that grows with time. The other collector tables hold latest values (one row per
# account, media, metric or day, updated in place) and are not partitioned.
PARTITIONED: tuple[TableSpec, ...] = (HISTORY,)


@dataclass(frozen=True, slots=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def of(cls, moment: datetime) -> Month:
        """The Pacific month `moment` (aware) falls in."""
        day = pacific.today(moment)
        return cls(day.year, day.month)

    def next(self, months: int = 1) -> Month:
        index = self.year * 12 + self.month - 1 + months
        return Month(index // 12, index % 12 + 1)

    @property
    def start(self) -> datetime:
        """The Pacific midnight starting the 1st, in UTC (the partition's inclusive lower bound)."""
        return pacific.day_start_utc(date(self.year, self.month, 1))

    @property
    def end(self) -> datetime:
        """The exclusive upper bound: the next month's start."""
        return self.next().start

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class Partition:
    """An attached partition: a month, or the default partition (month None)."""

    table: str
    name: str
    month: Month | None
    downsampled: bool

    @property
    def is_default(self) -> bool:
        return self.month is None


DOWNSAMPLED_COMMENT = "downsampled: the last value of each series per Pacific day"


def partition_name(spec: TableSpec, month: Month) -> str:
    return f"{spec.name}_p{month.year:04d}_{month.month:02d}"


def default_name(spec: TableSpec) -> str:
    return f"{spec.name}_default"


_NAME_RE = re.compile(r"_p(\d{4})_(\d{2})$")


async def list_partitions(conn: Connection, spec: TableSpec, *, parent: str | None = None) -> list[Partition]:
    """The attached partitions of `spec` (of `parent` when given: the table during its conversion), months in
    order, the default partition (if any) last. Partitions not named by this module are ignored (retention
    never touches what it did not create)."""
    rows = await conn.fetch(
        """SELECT c.relname, c.relpartbound IS NOT NULL AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
                  AS is_default, obj_description(c.oid, 'pg_class') AS comment
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = to_regclass($1)""", parent or spec.name)
    found: list[Partition] = []
    for row in rows:
        name = row["relname"]
        downsampled = row["comment"] == DOWNSAMPLED_COMMENT
        if row["is_default"]:
            found.append(Partition(spec.name, name, None, downsampled))
            continue
        match = _NAME_RE.search(name)
        if match is None or name != partition_name(spec, Month(int(match[1]), int(match[2]))):
            continue
        found.append(Partition(spec.name, name, Month(int(match[1]), int(match[2])), downsampled))
    found.sort(key=lambda p: (p.month is None, p.month or Month(0, 1)))
    return found


async def is_partitioned(conn: Connection, spec: TableSpec) -> bool:
    kind = await conn.fetchval("SELECT relkind FROM pg_class WHERE oid = to_regclass($1)", spec.name)
    return bool(kind in {b"p", "p"})


async def ensure(conn: Connection, now: datetime, *, months_ahead: int = MONTHS_AHEAD,
                 specs: Sequence[TableSpec] = PARTITIONED) -> list[str]:
    """Create the partitions of the current Pacific month and `months_ahead` more that are missing, and
    those of the months that have rows in the default partition (strays, moved into their month: retention
    then treats them like any other month); return the names created. Raises asyncpg errors (a lock timeout
    included): the caller decides to retry."""
    created: list[str] = []
    first = Month.of(now)
    for spec in specs:
        if not await is_partitioned(conn, spec):
            continue
        existing = {p.month for p in await list_partitions(conn, spec)}
        wanted = [first.next(offset) for offset in range(months_ahead + 1)]
        wanted += await stray_months(conn, spec)
        for month in sorted(set(wanted)):
            if month not in existing:
                created.append(await create_partition(conn, spec, month))
    return created


def month_sql(column: str) -> str:
    """SQL: the Pacific month (first day, a timestamp) of the timestamptz `column`."""
    return f"date_trunc('month', {column} AT TIME ZONE '{pacific.PACIFIC.key}')"


async def stray_months(conn: Connection, spec: TableSpec) -> list[Month]:
    """The months of the rows in the default partition (normally none: one look at an empty table)."""
    if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", default_name(spec)):
        return []
    rows = await conn.fetch(
        f'SELECT DISTINCT {month_sql(spec.column)} AS month FROM "{default_name(spec)}" ORDER BY 1')
    return [Month(row["month"].year, row["month"].month) for row in rows]


def index_sql(spec: TableSpec, table: str, suffix: str = "") -> list[str]:
    """CREATE INDEX statements giving `table{suffix}` the indexes of a partition named `table`."""
    return [f'CREATE INDEX "{table}_{name}{suffix}" ON "{table}{suffix}" ({", ".join(columns)})'
            for name, columns in spec.indexes]


def bounds_check(spec: TableSpec, month: Month) -> str:
    """A CHECK expression equal to the partition constraint of `month`: attaching a table that has it skips
    the validation scan."""
    return (f"{spec.column} IS NOT NULL AND {spec.column} >= '{month.start.isoformat()}' "
            f"AND {spec.column} < '{month.end.isoformat()}'")


def bounds_clause(month: Month) -> str:
    return f"FOR VALUES FROM ('{month.start.isoformat()}') TO ('{month.end.isoformat()}')"


async def create_partition(conn: Connection, spec: TableSpec, month: Month, *,
                           parent: str | None = None) -> str:
    """Create and attach `month`'s partition (to `parent` when given: the table during its conversion),
    moving its rows out of the default partition first; returns its name. One short transaction; writers
    are not blocked (see the module docstring)."""
    name = partition_name(spec, month)
    parent = parent or spec.name
    default = default_name(spec)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", DDL_LOCK_KEY)
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
            return name  # another process made it meanwhile
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(f'CREATE TABLE "{name}" (LIKE "{parent}" INCLUDING DEFAULTS INCLUDING STORAGE)')
        await conn.execute(
            f'ALTER TABLE "{name}" ADD CONSTRAINT "{name}_bounds" CHECK ({bounds_check(spec, month)})')
        moved = 0
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", default):
            # No row of the month may reach the default partition between the move and the ATTACH.
            await conn.execute(f'LOCK TABLE "{default}" IN EXCLUSIVE MODE')
            status = await conn.execute(
                f'WITH moved AS (DELETE FROM "{default}" WHERE {spec.column} >= $1 AND {spec.column} < $2 '
                f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved', month.start, month.end)
            moved = int(status.rsplit(" ", 1)[-1])
        await conn.execute(f'ALTER TABLE "{parent}" ATTACH PARTITION "{name}" {bounds_clause(month)}')
        await conn.execute(f'ALTER TABLE "{name}" DROP CONSTRAINT "{name}_bounds"')
    _log.info("partition_created", table=spec.name, partition=name, month=str(month),
              moved_from_default=moved)
    return name
