"""Database fixtures (real PostgreSQL).

    async def test_x(pool):          # asyncpg pool on a FRESH migrated database, dropped after the test
    async def test_y(db_dsn):        # the DSN of that fresh database (for a CLI subprocess, a config file)
    def test_z(database_url):        # the migrated template (session); do not write to it

The server is $TEST_DATABASE_URL when set, else an embedded PostgreSQL (pgserver) started once per session
in a temp dir. The template is migrated once per session; each test gets `CREATE DATABASE ... TEMPLATE`
(tens of ms). Names carry the pid and a random suffix, so parallel pytest processes never collide.

`embedded_server()` starts a private pgserver instance a test may stop and restart
(`EmbeddedServer.stop()` / `.start()`, then `.close()`), for outage tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from collector.storage import db, migrations

_PREFIX = f"igc_{os.getpid()}_{secrets.token_hex(3)}"
_counter = itertools.count()


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` (URL form, including pgserver's ?host=/socket form)."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


class EmbeddedServer:
    """A pgserver instance in its own directory that a test can stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = db.load_pgserver().get_server(data_dir, cleanup_mode="stop")

    def uri(self, database: str = "postgres") -> str:
        return str(self._server.get_uri(database))

    def stop(self) -> None:
        pgserver = db.load_pgserver()
        pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user)

    def start(self) -> None:
        # pgserver's own start path (same socket dir, same options); it records the new postmaster so
        # its exit hook stops the right process.
        self._server.ensure_postgres_running()

    def psql(self, command: str) -> str:
        return str(self._server.psql(command))

    def close(self) -> None:
        """Stop the server and delete its directory (pgserver's exit hook then has nothing to do)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        self._server.cleanup_mode = None
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def embedded_server() -> EmbeddedServer:
    """Start a private embedded server in a new temp dir; `close()` it when done."""
    # Short path: the unix socket lives in the data dir and socket paths are limited to ~100 bytes.
    data_dir = Path(tempfile.mkdtemp(prefix="igc-pg-")) / "data"
    return EmbeddedServer(data_dir)


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Admin DSN of the test server (a maintenance database we never write to)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = embedded_server()
    yield server.uri("postgres")
    server.close()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str, name: str, *, template: str | None = None) -> AsyncIterator[str]:
    """Create database `name` (empty, or a copy of `template`) on the server, yield its DSN, drop it after."""
    admin = await asyncpg.connect(server_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        yield with_database(server_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A migrated template database, created once per session."""
    async with scratch_database(server_url, f"{_PREFIX}_template") as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def db_dsn(server_url: str, database_url: str) -> AsyncIterator[str]:
    """A fresh database cloned from the migrated template, dropped after the test."""
    template = urllib.parse.urlsplit(database_url).path.lstrip("/")
    async with scratch_database(server_url, f"{_PREFIX}_{next(_counter)}", template=template) as dsn:
        yield dsn


@pytest_asyncio.fixture(loop_scope="session")
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool on the test's fresh database."""
    p = await asyncpg.create_pool(db_dsn, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await asyncio.wait_for(p.close(), timeout=10)


@pytest_asyncio.fixture(loop_scope="session")
async def empty_db_dsn(server_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (migration tests)."""
    async with scratch_database(server_url, f"{_PREFIX}_empty_{next(_counter)}") as dsn:
        yield dsn
