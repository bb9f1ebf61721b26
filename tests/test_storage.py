"""Migrations, database opening (URL, masking, embedded fallback) and the read helpers."""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from collector import exceptions, jobs, models, redaction, settings
from collector.storage import db, migrations, queries, writer

CLUSTER_TABLES = {"collector_lease", "collector_instance", "collector_token"}  # not counted by table_counts
EXPECTED_TABLES = {
    "ig_account", "ig_media", "ig_media_insight", "ig_media_insight_history", "ig_account_insight",
    "ig_unavailable", "collector_job_state", "collector_schema_migrations", "collector_discovered_account",
    *CLUSTER_TABLES,
}


# Every migration the code ships, in order: a test that applies them from empty must see all of them.
ALL_MIGRATIONS = ["001_init", "002_unavailable_current", "003_history_partitioned", "004_cluster",
                  "005_discovered_accounts",
                  "006_web_indexes",
                  "007_status_reason_comments"]


async def tables(conn: asyncpg.Connection) -> set[str]:
    # Tables, not their partitions (tests/test_history_partitions.py checks those).
    rows = await conn.fetch("SELECT tablename FROM pg_tables t JOIN pg_class c ON c.oid = "
                            "format('%I.%I', t.schemaname, t.tablename)::regclass "
                            "WHERE schemaname = 'public' AND NOT c.relispartition")
    return {r["tablename"] for r in rows}


async def test_migrate_from_empty_database(empty_db_dsn: str) -> None:
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        assert await migrations.migrate(conn) == ALL_MIGRATIONS
        assert await tables(conn) == EXPECTED_TABLES
        row = await conn.fetchrow("SELECT version, name, checksum FROM collector_schema_migrations")
        assert (row["version"], row["name"]) == (1, "init")
        assert row["checksum"] == migrations.available()[0].checksum
        assert await migrations.migrate(conn) == []  # idempotent
        # Analysts get comments on the tables.
        comment = await conn.fetchval("SELECT obj_description('ig_media_insight'::regclass)")
        assert "Current value" in comment
    finally:
        await conn.close()


COLUMN_COMMENT = ("SELECT col_description(c.oid, a.attnum) FROM pg_class c "
                  "JOIN pg_attribute a ON a.attrelid = c.oid WHERE c.oid = $1::regclass AND a.attname = $2")
# The values the code can write. ig_account.status: "ok" (a profile read, collector/collect.py), the
# account-level failures (only an outcome in jobs.ACCOUNT_STATUSES is written to ig_account) and "unlinked"
# (collector/storage/discovered.py); ig_unavailable.reason: every models.UnavailableReason.
WRITTEN = {
    ("ig_account", "status"): {"ok", *jobs.ACCOUNT_STATUSES, "unlinked"},
    ("ig_unavailable", "reason"): {r.value for r in models.UnavailableReason},
}


@pytest.mark.parametrize(("table", "column"), list(WRITTEN))
async def test_column_comments_list_exactly_the_values_the_code_writes(
        pool: asyncpg.Pool, table: str, column: str) -> None:
    comment = await pool.fetchval(COLUMN_COMMENT, table, column)
    assert comment.startswith("One of: "), comment
    listed = comment.removeprefix("One of: ").split(". ")[0].split(", ")
    assert len(listed) == len(set(listed)) and set(listed) == WRITTEN[table, column]


async def test_the_history_comment_names_a_section_of_the_operations_guide(pool: asyncpg.Pool) -> None:
    comment = await pool.fetchval("SELECT obj_description('ig_media_insight_history'::regclass, 'pg_class')")
    [section] = re.findall(r'docs/operations\.md, "([^"]+)"', comment)
    headings = (Path(__file__).parent.parent / "docs" / "operations.md").read_text().splitlines()
    assert f"## {section}" in headings


async def test_concurrent_migrators_apply_once(empty_db_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_db_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.migrate(c) for c in conns))
        assert sorted(results) == [[], [], ALL_MIGRATIONS]
        assert await conns[0].fetchval("SELECT count(*) FROM collector_schema_migrations") == len(
            ALL_MIGRATIONS)
    finally:
        for c in conns:
            await c.close()


async def test_up_to_date_check_is_one_statement(empty_db_dsn: str) -> None:
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        shipped = migrations.available()
        assert not await migrations.up_to_date(conn, shipped)  # no table yet
        await migrations.migrate(conn)
        assert await migrations.up_to_date(conn, shipped)
        assert not await migrations.up_to_date(conn, shipped[:-1])  # the database is newer
        await conn.execute("DELETE FROM collector_schema_migrations WHERE version = $1", shipped[-1].version)
        assert not await migrations.up_to_date(conn, shipped)  # one pending
    finally:
        await conn.close()


async def test_up_to_date_wants_the_partitions_ahead(empty_db_dsn: str) -> None:
    """`once` under cron never runs the daemon's maintenance: its migration check must notice a month ahead
    that is missing (a month has passed since the last migrate) and take the path that creates it."""
    conn = await asyncpg.connect(empty_db_dsn)
    try:
        shipped = migrations.available()
        now = datetime.now(UTC)
        await migrations.migrate(conn, now=now)
        assert await migrations.up_to_date(conn, shipped, now)
        next_month = now + timedelta(days=32)
        assert not await migrations.up_to_date(conn, shipped, next_month)  # its furthest month is missing
        await migrations.migrate(conn, now=next_month)
        assert await migrations.up_to_date(conn, shipped, next_month)
    finally:
        await conn.close()


async def test_changed_migration_is_refused(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE collector_schema_migrations SET checksum = 'edited' WHERE version = 1")
    async with pool.acquire() as conn:
        with pytest.raises(exceptions.StorageError, match="changed after it was applied"):
            await migrations.migrate(conn)


async def test_newer_database_is_refused(pool: asyncpg.Pool) -> None:
    await pool.execute(
        "INSERT INTO collector_schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')")
    async with pool.acquire() as conn:
        with pytest.raises(exceptions.StorageError, match=r"999_future.*upgrade the collector"):
            await migrations.migrate(conn)


def test_mask_dsn() -> None:
    assert redaction.mask_dsn("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redaction.mask_dsn("postgresql://bob@db/x") == "postgresql://bob@db/x"
    assert redaction.mask_dsn("postgresql://db/x?user=bob&password=s3cret&sslmode=require") == (
        "postgresql://db/x?user=bob&password=***&sslmode=require")
    keywords = "host=db user=bob password=s3cret dbname=x"
    assert redaction.mask_dsn(keywords) == "host=db user=bob password=*** dbname=x"


async def test_unreachable_database_raises_storage_error_without_password() -> None:
    s = settings.DatabaseSettings(url="postgresql://bob:hunter2secret@127.0.0.1:1/nope", connect_timeout_s=2)
    with pytest.raises(exceptions.StorageError) as info:
        await db.open_database(s)
    assert "hunter2secret" not in str(info.value)
    assert "postgresql://bob:***@127.0.0.1:1/nope" in str(info.value)
    assert info.value.__cause__ is not None


async def test_auth_failure_raises_storage_error(db_dsn: str) -> None:
    # The test server trusts local connections, so an unknown role is the authentication failure we can cause.
    hostinfo = db_dsn.split("://", 1)[1].split("@", 1)[-1]
    bad = f"postgresql://igc_no_such_role:wrong-pw-zz@{hostinfo}"
    with pytest.raises(exceptions.StorageError) as info:
        await db.open_database(settings.DatabaseSettings(url=bad, connect_timeout_s=5))
    assert "wrong-pw-zz" not in str(info.value)
    assert "igc_no_such_role:***@" in str(info.value)
    assert isinstance(info.value.__cause__, asyncpg.PostgresError)


async def test_open_database_url_then_env(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with await db.open_database(settings.DatabaseSettings(url=db_dsn)) as database:
        assert not database.embedded
        assert await database.pool.fetchval("SELECT 1") == 1
        assert await database.migrate() == []
    monkeypatch.setenv("DATABASE_URL", db_dsn)
    async with await db.open_database(settings.DatabaseSettings()) as database:
        assert not database.embedded
        assert await database.pool.fetchval("SELECT count(*) FROM collector_schema_migrations") == len(
            ALL_MIGRATIONS)


async def test_open_database_embedded_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    # Not under tmp_path: pytest keeps that 0700 (and other pytest runs prune it), while the embedded
    # server runs as the unprivileged `pgserver` user when we are root.
    state_dir = Path(tempfile.mkdtemp(prefix="igc-state-"))
    try:
        database = await db.open_database(settings.DatabaseSettings(), state_dir=state_dir)
        async with database:
            assert database.embedded
            assert (state_dir / "postgres" / "PG_VERSION").exists()
            assert await database.migrate() == ALL_MIGRATIONS
            assert f"/{db.EMBEDDED_DATABASE}?host=" in database.dsn_for_display
        # Persistent: a second open finds the migrated database.
        async with await db.open_database(settings.DatabaseSettings(), state_dir=state_dir) as again:
            assert await again.migrate() == []
    finally:
        pgserver = db.load_pgserver()
        server = pgserver.get_server(state_dir / "postgres")
        await asyncio.to_thread(pgserver.pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=server.pgdata,
                                user=server.system_user)
        server.cleanup_mode = None  # stopped: nothing left for pgserver's exit hook
        shutil.rmtree(state_dir, ignore_errors=True)


async def test_read_helpers(pool: asyncpg.Pool) -> None:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    async with writer.Writer(pool) as w:
        await w.add(models.Table.MEDIA, [
            models.MediaRow(11, 1, "IMAGE", "FEED", now, None, 1, 2, now, now),
            models.MediaRow(12, 1, "VIDEO", "REELS", now, None, 1, 2, now, None),
            models.MediaRow(13, 2, "VIDEO", "REELS", now, None, 1, 2, now, None),
        ])
        await w.add(models.Table.JOB_STATE, [models.JobStateRow(1, "media", True, now, None)])
    counts = await queries.table_counts(pool)
    assert counts["ig_media"] == 3 and counts["collector_job_state"] == 1
    assert counts["ig_media_insight_history"] == 0
    assert set(counts) == EXPECTED_TABLES - {"collector_schema_migrations", *CLUSTER_TABLES}
    assert await queries.media_refresh_state(pool, 1) == {11: now, 12: None}
    states = await queries.job_states(pool)
    assert [(r["ig_user_id"], r["job"], r["last_success_at"]) for r in states] == [(1, "media", now)]
