"""Refreshed Instagram Login tokens in PostgreSQL (`collector_token`), shared by every daemon instance.

`collector.tokens.TokenStore` keeps the records in memory; this module loads them from the table, moves a
`state_dir/tokens.json` of an earlier version in, and provides the `tokens.RefreshGuard` that makes one
instance refresh a token while the others skip it: the account's row is locked `FOR UPDATE SKIP LOCKED`
for the refresh call and the write of its answer, in one transaction. An instance that finds the row
locked skips the account this round and picks the new token up with its next `load`.

The table is owned by the collector's role and readable by no other (migration 004 revokes PUBLIC); a
token is a bound parameter, never part of a statement's text, and never logged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import structlog

from collector import exceptions, models, redaction, tokens

log = structlog.get_logger(__name__)

IMPORTED_SUFFIX = ".moved-to-database"

_COLUMNS = ("source_fingerprint, first_seen_at, access_token, refreshed_at, expires_at, last_attempt_at, "
            "last_error")
LOAD_SQL = f"SELECT ig_user_id::text AS ig_user_id, {_COLUMNS} FROM collector_token"  # noqa: S608 (constants)
ENSURE_SQL = """
INSERT INTO collector_token (ig_user_id, source_fingerprint, first_seen_at) VALUES ($1, $2, $3)
ON CONFLICT (ig_user_id) DO NOTHING
"""
LOCK_SQL = f"SELECT {_COLUMNS} FROM collector_token WHERE ig_user_id = $1 FOR UPDATE SKIP LOCKED"  # noqa: S608
SAVE_SQL = """
INSERT INTO collector_token AS t (ig_user_id, source_fingerprint, first_seen_at, access_token, refreshed_at,
                                  expires_at, last_attempt_at, last_error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (ig_user_id) DO UPDATE SET
    source_fingerprint = EXCLUDED.source_fingerprint, first_seen_at = EXCLUDED.first_seen_at,
    access_token = EXCLUDED.access_token, refreshed_at = EXCLUDED.refreshed_at,
    expires_at = EXCLUDED.expires_at, last_attempt_at = EXCLUDED.last_attempt_at,
    last_error = EXCLUDED.last_error
"""
# A file moved in by an instance never replaces a newer refresh another instance stored (two hosts, two
# state_dirs): only a row refreshed earlier, or never, takes the file's record.
IMPORT_SQL = SAVE_SQL + """WHERE t.refreshed_at IS NULL
    OR (EXCLUDED.refreshed_at IS NOT NULL AND EXCLUDED.refreshed_at > t.refreshed_at)
"""

# InternalClientError: a statement cut off by a dropped connection ("cannot switch to state ...").
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
              TimeoutError)


class TokenTable:
    """The `collector_token` rows behind one process's `TokenStore`."""

    def __init__(self, pool: asyncpg.Pool, store: tokens.TokenStore) -> None:
        self._pool = pool
        self._store = store

    async def load(self) -> None:
        """Adopt every stored record (the newest tokens, whichever instance refreshed them)."""
        try:
            rows = await self._pool.fetch(LOAD_SQL)
        except _DB_ERRORS as exc:
            raise exceptions.StorageError(f"cannot read the token table: {exc}") from exc
        for row in rows:
            self._store.put(row["ig_user_id"], _record(row, row["ig_user_id"]))

    async def move_file_in(self) -> int:
        """Move `state_dir/tokens.json` (an earlier version's store) into the table, then rename it to
        `tokens.json.moved-to-database`; returns the records moved (0: no file). A damaged file is a
        ConfigError, as before."""
        path = self._store.path
        if not path.exists():
            return 0
        file_store = tokens.TokenStore(path.parent)
        file_store.load()
        records = file_store.records()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for ig_user_id, record in records.items():
                    await conn.execute(IMPORT_SQL, int(ig_user_id), *_values(record))
        except _DB_ERRORS as exc:
            raise exceptions.StorageError(f"cannot move the token file into the database: {exc}") from exc
        os.replace(path, path.with_name(path.name + IMPORTED_SUFFIX))
        log.info("token_file_moved_to_database", records=len(records), file=str(path))
        return len(records)

    @contextlib.asynccontextmanager
    async def guard(self, account: models.Account) -> AsyncIterator[bool]:
        """`tokens.RefreshGuard`: lock the account's row (skip when another instance holds it), adopt the
        stored record, yield, then store the record as the refresh left it; all in one transaction."""
        uid = int(account.ig_user_id)
        seed = self._store.observe(account, datetime.now(UTC))
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(ENSURE_SQL, uid, seed.source_fingerprint, seed.first_seen_at)
                row = await conn.fetchrow(LOCK_SQL, uid)
                if row is None:
                    yield False  # another instance is refreshing it now
                    return
                self._store.put(account.ig_user_id, _record(row, account.ig_user_id))
                yield True
                record = self._store.record(account.ig_user_id)
                if record is not None:
                    await conn.execute(SAVE_SQL, uid, *_values(record))
        except _DB_ERRORS as exc:
            raise exceptions.StorageError(f"cannot store a refreshed token: {exc}") from exc


def _record(row: asyncpg.Record, ig_user_id: str) -> tokens.TokenRecord:
    token = row["access_token"]
    if token:
        redaction.register_secret(token, owner=ig_user_id)
    return tokens.TokenRecord(
        source_fingerprint=row["source_fingerprint"], first_seen_at=row["first_seen_at"],
        token=models.Secret(token) if token else None, refreshed_at=row["refreshed_at"],
        expires_at=row["expires_at"], last_attempt_at=row["last_attempt_at"], last_error=row["last_error"])


def _values(record: tokens.TokenRecord) -> tuple[object, ...]:
    return (record.source_fingerprint, record.first_seen_at, record.token.reveal() if record.token else None,
            record.refreshed_at, record.expires_at, record.last_attempt_at, record.last_error)
