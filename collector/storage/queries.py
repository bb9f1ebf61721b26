"""Read helpers for the CLI and the daemon (status, scheduling); every query the collector reads with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from collector import exceptions, models

# Exact counts (not pg_class estimates): `status` is run by an operator, and the tables are indexed.
_COUNTED_TABLES = (*(t.value for t in models.Table), "ig_media_insight_history",
                   "collector_discovered_account")
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


_JOB_STATE_SQL = ("SELECT ig_user_id, job, last_success_at, last_attempt_at, last_error, "
                  "consecutive_failures FROM collector_job_state")
_JOB_STATE_OF_SQL = f"{_JOB_STATE_SQL} WHERE ig_user_id = ANY($1::bigint[])"


async def job_states(pool: asyncpg.Pool, ig_user_ids: Sequence[int] | None = None) -> list[asyncpg.Record]:
    """The collector_job_state rows (ig_user_id, job, last_success_at, last_attempt_at, last_error,
    consecutive_failures) of every account, or only of `ig_user_ids`; ordered by account and job."""
    if ig_user_ids is None:
        return await _fetch(pool, f"{_JOB_STATE_SQL} ORDER BY ig_user_id, job")
    return await _fetch(pool, f"{_JOB_STATE_OF_SQL} ORDER BY ig_user_id, job", list(ig_user_ids))


async def account_statuses(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every ig_account row's (ig_user_id as text, username, status, status_detail), for `status`."""
    return await _fetch(
        pool, "SELECT ig_user_id::text AS ig_user_id, username, status, status_detail FROM ig_account")


async def _fetch(pool: asyncpg.Pool, sql: str, *args: object) -> list[asyncpg.Record]:
    try:
        return await pool.fetch(sql, *args)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc
