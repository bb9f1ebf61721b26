"""What discovery remembers (sql/005_discovered_accounts.sql): which token last reached each discovered
account, and the `unlinked` status of the ones no token reaches any more. Every query discovery runs, in
one transaction per round; asyncpg errors become `StorageError` here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from collector import exceptions, models

_KNOWN_SQL = """SELECT ig_user_id::text AS ig_user_id, login, username, token_fingerprint, unlinked_at
FROM collector_discovered_account"""
_SEEN_SQL = """INSERT INTO collector_discovered_account
    (ig_user_id, login, username, token_fingerprint, first_seen_at, last_seen_at, unlinked_at)
SELECT id, login, username, fp, $5, $5, NULL
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS f(id, login, username, fp)
ON CONFLICT (ig_user_id) DO UPDATE SET login = EXCLUDED.login,
    username = coalesce(EXCLUDED.username, collector_discovered_account.username),
    token_fingerprint = EXCLUDED.token_fingerprint, last_seen_at = EXCLUDED.last_seen_at,
    unlinked_at = NULL"""
_UNLINK_SQL = """UPDATE collector_discovered_account SET unlinked_at = $2
WHERE ig_user_id = ANY($1::bigint[]) AND unlinked_at IS NULL"""
_ACCOUNT_UNLINKED_SQL = """UPDATE ig_account SET status = 'unlinked', status_detail = $2, updated_at = $3
WHERE ig_user_id = ANY($1::bigint[]) AND status <> 'unlinked'"""
_ACCOUNT_RELINKED_SQL = """UPDATE ig_account SET status = 'ok', status_detail = NULL, updated_at = $2
WHERE ig_user_id = ANY($1::bigint[]) AND status = 'unlinked'
RETURNING ig_user_id::text"""

UNLINKED_DETAIL = ("no [[tokens]] entry reaches this account any more (its Page was unlinked, or the token "
                   "lost it)")


@dataclass(frozen=True, slots=True)
class Known:
    """A discovered account as remembered."""

    ig_user_id: str
    login: models.Login
    username: str | None
    token_fingerprint: str
    unlinked: bool


@dataclass(frozen=True, slots=True)
class Seen:
    ig_user_id: str
    login: models.Login
    username: str | None
    token_fingerprint: str


async def known(pool: asyncpg.Pool) -> list[Known]:
    """Every account discovery has ever found."""
    try:
        rows = await pool.fetch(_KNOWN_SQL)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc
    return [Known(r["ig_user_id"], r["login"], r["username"], r["token_fingerprint"],
                  r["unlinked_at"] is not None) for r in rows]


async def record(pool: asyncpg.Pool, *, seen: Sequence[Seen], unlinked: Sequence[str],
                 reachable: Sequence[str], now: datetime) -> list[str]:
    """One round in one transaction: remember what was seen, mark `unlinked` accounts (discovery row and
    ig_account status; their data stays), and put `reachable` accounts that were unlinked back to ok.
    Returns the ids that went back to ok."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            if seen:
                await conn.execute(_SEEN_SQL, [int(s.ig_user_id) for s in seen], [s.login for s in seen],
                                   [s.username for s in seen], [s.token_fingerprint for s in seen], now)
            ids = [int(i) for i in unlinked]
            if ids:
                await conn.execute(_UNLINK_SQL, ids, now)
                await conn.execute(_ACCOUNT_UNLINKED_SQL, ids, UNLINKED_DETAIL, now)
            rows = await conn.fetch(_ACCOUNT_RELINKED_SQL, [int(i) for i in reachable], now)
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc
    return [r["ig_user_id"] for r in rows]
