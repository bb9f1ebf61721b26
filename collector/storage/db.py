"""Where the database is and the one connection pool of the process.

Resolution order: `[database] url` from the config, then `$DATABASE_URL`, then an embedded PostgreSQL
(pgserver: real PostgreSQL binaries in a wheel) whose data directory persists in `embedded_dir`, so a
laptop run needs no server at all. Every asyncpg/OS error is translated into `StorageError` here, with
the password masked.
"""

from __future__ import annotations

import asyncio
import os
import types
import urllib.parse
import warnings
from pathlib import Path

import asyncpg
import structlog

from collector import exceptions, redaction, settings
from collector.storage import migrations

EMBEDDED_DATABASE = "ig_collector"
_DEFAULT_EMBEDDED_DIR = settings.DatabaseSettings().embedded_dir

_log = structlog.get_logger(__name__)


class Database:
    """The process's asyncpg pool and where it points. Close it with `async with` or `close()`."""

    def __init__(self, pool: asyncpg.Pool, *, dsn_for_display: str, embedded: bool) -> None:
        self.pool = pool
        self.dsn_for_display = dsn_for_display
        self.embedded = embedded

    async def migrate(self) -> list[str]:
        """Apply pending migrations (see `migrations.migrate`); returns the names applied."""
        try:
            async with self.pool.acquire() as conn:
                return await migrations.migrate(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise exceptions.StorageError(f"database {self.dsn_for_display} unusable: {exc}") from exc

    async def close(self) -> None:
        await self.pool.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None,
    ) -> None:
        await self.close()


async def open_database(db_settings: settings.DatabaseSettings, *, state_dir: Path | None = None) -> Database:
    """Resolve the DSN (config url, $DATABASE_URL, embedded), open a pool and check it answers.

    `state_dir` (the config's state directory) moves the embedded data directory to
    `state_dir / "postgres"` when `embedded_dir` is left at its default.
    """
    dsn = db_settings.url or os.environ.get("DATABASE_URL") or None
    embedded = dsn is None
    if dsn is None:
        data_dir = db_settings.embedded_dir
        if state_dir is not None and data_dir == _DEFAULT_EMBEDDED_DIR:
            data_dir = state_dir / "postgres"
        dsn = await asyncio.to_thread(start_embedded, data_dir)
    shown = redaction.mask_dsn(dsn)
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=db_settings.pool_max_size,
            timeout=db_settings.connect_timeout_s,
            server_settings={"application_name": "ig-collector"},
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, ValueError) as exc:
        reason = _strip_secret(f"{type(exc).__name__}: {exc}", dsn)
        raise exceptions.StorageError(f"cannot connect to database {shown}: {reason}") from exc
    _log.info("database_opened", dsn=shown, embedded=embedded)
    return Database(pool, dsn_for_display=shown, embedded=embedded)


def start_embedded(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL in `data_dir`; return the DSN of its collector database.

    Blocking (initdb takes seconds the first time): call it in a thread. The server stops when the last
    process using it exits; the data directory stays for the next run.
    """
    try:
        data_dir = data_dir.expanduser().resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = load_pgserver().get_server(data_dir, cleanup_mode="stop")
        if EMBEDDED_DATABASE not in server.psql("SELECT datname FROM pg_database;"):
            server.psql(f"CREATE DATABASE {EMBEDDED_DATABASE};")
        return str(server.get_uri(EMBEDDED_DATABASE))
    except Exception as exc:  # pgserver raises subprocess, OS and assertion errors alike
        raise exceptions.StorageError(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}") from exc


def load_pgserver() -> types.ModuleType:
    # pgserver's import asks platformdirs for XDG_RUNTIME_DIR, which warns when it is unset (systemd
    # services, containers); the fallback it picks is fine, so the warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # noqa: PLC0415  (imported only when the embedded server is used)
    return pgserver


def _strip_secret(text: str, dsn: str) -> str:
    password = urllib.parse.urlsplit(dsn).password if "://" in dsn else None
    text = text.replace(dsn, redaction.mask_dsn(dsn))
    return text.replace(password, "***") if password else text
