"""Read helpers for the CLI and the daemon (status, scheduling); every query the collector reads with."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from collector import exceptions, models

# Exact counts (not pg_class estimates): `status` is run by an operator, and the tables are indexed.
_COUNTED_TABLES = (*(t.value for t in models.Table), "ig_media_insight_history")
_COUNT_SQL = " UNION ALL ".join(
    f"SELECT '{name}' AS name, count(*) AS n FROM {name}" for name in _COUNTED_TABLES  # noqa: S608  (constants)
)


async def table_counts(pool: asyncpg.Pool) -> dict[str, int]:
    """Row count of every collector table, by table name."""
    rows = await _fetch(pool, _COUNT_SQL)
    return {row["name"]: row["n"] for row in rows}


async def media_refresh_state(pool: asyncpg.Pool, ig_user_id: int) -> dict[int, datetime | None]:
    """media_id -> insights_refreshed_at (None: never fetched) for every known media of the account."""
    rows = await _fetch(
        pool, "SELECT media_id, insights_refreshed_at FROM ig_media WHERE ig_user_id = $1", ig_user_id)
    return {row["media_id"]: row["insights_refreshed_at"] for row in rows}


async def followers_count(pool: asyncpg.Pool, ig_user_id: int) -> int | None:
    """The account's stored followers_count (None when unknown): tells "fewer than 100 followers" apart
    from other reasons Meta leaves follower metrics out."""
    rows = await _fetch(pool, "SELECT followers_count FROM ig_account WHERE ig_user_id = $1", ig_user_id)
    return rows[0]["followers_count"] if rows else None


async def job_states(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every collector_job_state row (ig_user_id, job, last_success_at, last_attempt_at, last_error,
    consecutive_failures), ordered by account and job."""
    return await _fetch(
        pool,
        "SELECT ig_user_id, job, last_success_at, last_attempt_at, last_error, consecutive_failures "
        "FROM collector_job_state ORDER BY ig_user_id, job")


async def _fetch(pool: asyncpg.Pool, sql: str, *args: object) -> list[asyncpg.Record]:
    try:
        return await pool.fetch(sql, *args)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc
