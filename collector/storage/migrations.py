"""Schema migrations: the numbered `sql/NNN_name.sql` files (package `collector.sql`), applied in order.

Each file runs in its own transaction under a session advisory lock, so a `once` and a `run` started
together never apply the same file twice: the second waits, then finds nothing left to do. Applied files
are recorded with a checksum; editing an applied file, or running old code against a newer database, is
refused instead of guessed at.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NamedTuple

import asyncpg
import asyncpg.pool
import structlog

from collector import exceptions
from collector.storage import conversion, partitions

# Any fixed 64-bit key shared by every collector process ("igc-migr" in ASCII).
_LOCK_KEY = 0x6967632D6D696772

_FILE_RE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS collector_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE collector_schema_migrations IS
    'Applied sql/NNN_name.sql files (version = NNN); checksum is the sha256 of the file as applied.';
"""

# Rows applied but not shipped (or changed), shipped but not applied, a pending history conversion, a missing
# partition of the furthest month ahead: none when up to date.
_UP_TO_DATE = """
WITH shipped(version, checksum) AS (VALUES $shipped)
SELECT 1 FROM collector_schema_migrations a
 WHERE NOT EXISTS (SELECT 1 FROM shipped s WHERE s.version = a.version AND s.checksum = a.checksum)
UNION ALL
SELECT 1 FROM shipped s
 WHERE NOT EXISTS (SELECT 1 FROM collector_schema_migrations a
                   WHERE a.version = s.version AND a.checksum = s.checksum)
UNION ALL
SELECT 1 WHERE to_regclass('collector_history_conversion') IS NOT NULL
UNION ALL
SELECT 1 FROM (VALUES $ahead) AS ahead(name) WHERE to_regclass(ahead.name) IS NULL
"""

_log = structlog.get_logger(__name__)


class Migration(NamedTuple):
    version: int
    name: str
    sql: str
    checksum: str


def available() -> list[Migration]:
    """The migrations shipped with the code, in version order."""
    found: list[Migration] = []
    for entry in importlib.resources.files("collector.sql").iterdir():
        match = _FILE_RE.match(entry.name)
        if match is None:
            continue
        sql = entry.read_text(encoding="utf-8")
        checksum = hashlib.sha256(sql.encode()).hexdigest()
        found.append(Migration(int(match[1]), match[2], sql, checksum))
    found.sort()
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise exceptions.StorageError(f"duplicate migration versions in collector.sql: {versions}")
    return found


# A plain connection or one borrowed from a pool.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


async def migrate(conn: Connection, *, now: datetime | None = None, upto: int | None = None,
                  finish: bool = True, batch_pages: int = conversion.BATCH_PAGES) -> list[str]:
    """Apply the pending migrations (those up to version `upto` when given); return the names applied
    (`"001_init"`), empty when up to date.

    Unless `finish` is false, still under the lock: a pending conversion of the history to a partitioned
    table (started by 003; collector.storage.conversion, copying `batch_pages` pages per transaction) is
    finished before the next file is applied, so later migrations always meet the partitioned table; at the
    end the partitions of the Pacific month of `now` (default: the clock) and the months ahead are created
    (collector.storage.partitions). `upto` and `finish=False` are for tests and benchmarks that need a
    database as an older version left it.

    Raises StorageError when an applied file changed, the database is newer than this code, or a
    migration fails (that migration is rolled back; earlier ones stay applied).
    """
    migrations = [m for m in available() if upto is None or m.version <= upto]
    try:
        if await up_to_date(conn, migrations, now):
            return []
        # A session lock (not a transaction one) so it spans the per-file transactions.
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        try:
            moment = now or datetime.now(UTC)

            async def finish_conversion() -> None:
                await conversion.finish(conn, moment, batch_pages=batch_pages)

            done = await _apply(conn, migrations, between=finish_conversion if finish else None)
            if finish:
                await _ensure_partitions(conn, moment)
            return done
        finally:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise exceptions.StorageError(f"database migration failed: {exc}") from exc


async def up_to_date(conn: Connection, migrations: list[Migration], now: datetime | None = None) -> bool:
    """Whether every shipped migration is applied, unchanged, and nothing else is, no history conversion is
    pending and the partitions ahead exist: one round trip (the simple query protocol, no prepare), so a start
    with nothing pending costs no lock and no schema statement. Any doubt (no table yet, a difference) sends
    the caller down the locked path, which says what is wrong and does what is missing."""
    if not migrations:
        return False
    shipped = ", ".join(f"({m.version}, '{m.checksum}')" for m in migrations)  # ints and hex digests only
    furthest = partitions.Month.of(now or datetime.now(UTC)).next(partitions.MONTHS_AHEAD)
    ahead = ", ".join(f"('{partitions.partition_name(spec, furthest)}')" for spec in partitions.PARTITIONED)
    try:
        # Literals, not parameters: parameters would need the extended protocol (a second round trip).
        status = await conn.execute(_UP_TO_DATE.replace("$shipped", shipped).replace("$ahead", ahead))
    except asyncpg.UndefinedTableError:
        return False
    return status == "SELECT 0"



async def require_applied(conn: Connection) -> None:
    """For the commands that read the schema without migrating it (`status`, `db-size`, `prune`): raise
    StorageError (exit 3) saying to run `ig-collector migrate` first when a migration shipped with this code
    is not applied, or the history conversion that 003 starts is not finished. A database newer than the
    code passes (`migrate` is what refuses it)."""
    try:
        applied: set[int] = set()
        if await conn.fetchval("SELECT to_regclass('collector_schema_migrations') IS NOT NULL"):
            rows = await conn.fetch("SELECT version FROM collector_schema_migrations")
            applied = {r["version"] for r in rows}
        converting = await conversion.pending(conn)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc
    missing = [f"{m.version:03d}_{m.name}" for m in available() if m.version not in applied]
    if missing:
        state = ("was never migrated" if not applied else
                 f"is not migrated to this version ({', '.join(missing)} not applied)")
        raise exceptions.StorageError(f"the database {state}: run `ig-collector migrate` first")
    if converting:
        raise exceptions.StorageError(
            f"{partitions.HISTORY.name} is not partitioned yet (its conversion is not finished): "
            "run `ig-collector migrate` first")


async def _ensure_partitions(conn: Connection, now: datetime) -> None:
    """Months ahead; a lock timeout (a long query on the table) is not fatal: rows of a missing month go to
    the default partition, and the daemon's daily maintenance tries again."""
    try:
        await partitions.ensure(conn, now)
    except asyncpg.LockNotAvailableError as exc:
        _log.warning("partitions_not_created", error=str(exc), retry="daily maintenance")


async def _apply(conn: Connection, migrations: list[Migration], *,
                 between: Callable[[], Awaitable[None]] | None = None) -> list[str]:
    """Apply the files not applied yet, in order; `between` runs before each of them and after the last."""
    await conn.execute(_BOOTSTRAP)
    rows = await conn.fetch(
        "SELECT version, name, checksum FROM collector_schema_migrations ORDER BY version")
    applied = {r["version"]: r for r in rows}
    known = {m.version: m for m in migrations}
    for version, row in applied.items():
        if version not in known:
            raise exceptions.StorageError(
                f"the database has migration {version:03d}_{row['name']}, which this version of the "
                "collector does not know; upgrade the collector")
        if known[version].checksum != row["checksum"]:
            raise exceptions.StorageError(
                f"migration {version:03d}_{row['name']} changed after it was applied (checksum mismatch); "
                "migrations are append-only: restore the file and add a new one")
    done: list[str] = []
    for m in migrations:
        if m.version in applied:
            continue
        if between is not None:
            await between()
        label = f"{m.version:03d}_{m.name}"
        try:
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO collector_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version, m.name, m.checksum)
        except asyncpg.PostgresError as exc:
            raise exceptions.StorageError(f"migration {label} failed: {exc}") from exc
        _log.info("migration_applied", version=m.version, name=m.name)
        done.append(label)
    if between is not None:
        await between()
    return done
