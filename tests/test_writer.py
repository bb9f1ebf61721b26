"""The batched writer against a real PostgreSQL: upsert semantics, history, ordering, backpressure, outage."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest
import structlog.testing

from collector import exceptions, metrics, models
from collector.storage import writer
from tests import fixtures_db

T0 = datetime(2026, 3, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
METRICS = ("reach", "views", "likes", "saved")


def insight_rows(media: range, at: datetime, bump: int = 0) -> list[models.MediaInsightRow]:
    return [models.MediaInsightRow(m, metric, "", "", m * 10 + i + bump, at)
            for m in media for i, metric in enumerate(METRICS)]


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


async def test_rerun_with_same_values_writes_nothing(pool: asyncpg.Pool) -> None:
    m = metrics.Metrics()
    rows = insight_rows(range(1, 501), T0)
    async with writer.Writer(pool, batch_max_rows=300, metrics=m) as w:
        await w.add(models.Table.MEDIA_INSIGHT, rows)
        await w.flush()
        assert await count(pool, "ig_media_insight") == 2000
        assert await count(pool, "ig_media_insight_history") == 2000
        xmins = await pool.fetchval("SELECT sum(xmin::text::bigint) FROM ig_media_insight")
        await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(1, 501), T1))  # same values, later
        await w.flush()
    assert await count(pool, "ig_media_insight") == 2000
    assert await count(pool, "ig_media_insight_history") == 2000
    # Not even rewritten: same row versions, collected_at still the first sighting.
    assert await pool.fetchval("SELECT sum(xmin::text::bigint) FROM ig_media_insight") == xmins
    assert await pool.fetchval("SELECT max(collected_at) FROM ig_media_insight") == T0
    assert m.total(m.rows_written, table="ig_media_insight") == 4000


async def test_history_only_on_change(pool: asyncpg.Pool) -> None:
    async with writer.Writer(pool) as w:
        await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(1, 11), T0))
        await w.flush()
        changed = [r._replace(value=r.value + (r.media_id <= 3), collected_at=T1)
                   for r in insight_rows(range(1, 11), T0)]
        await w.add(models.Table.MEDIA_INSIGHT, changed)
    assert await count(pool, "ig_media_insight") == 40
    assert await count(pool, "ig_media_insight_history") == 40 + 12
    rows = await pool.fetch("SELECT media_id, value, collected_at FROM ig_media_insight"
                            " WHERE metric = 'reach' ORDER BY media_id")
    assert [(r["media_id"], r["value"], r["collected_at"]) for r in rows[:4]] == [
        (1, 11, T1), (2, 21, T1), (3, 31, T1), (4, 40, T0)]
    series = await pool.fetch("SELECT value, collected_at FROM ig_media_insight_history"
                              " WHERE media_id = 2 AND metric = 'reach' ORDER BY collected_at")
    assert [(r["value"], r["collected_at"]) for r in series] == [(20, T0), (21, T1)]


async def test_duplicate_keys_in_one_batch_last_wins(pool: asyncpg.Pool) -> None:
    first = models.MediaInsightRow(7, "reach", "", "", 1, T0)
    async with writer.Writer(pool) as w:
        await w.add(models.Table.MEDIA_INSIGHT, [first, first._replace(value=2), first._replace(value=3)])
        await w.add(models.Table.MEDIA, [
            models.MediaRow(7, 1, "IMAGE", "FEED", T0, "https://x/1", 5, 1, T0),
            models.MediaRow(7, 1, None, None, None, None, 6, None, T1),
        ])
    assert await pool.fetchval("SELECT value FROM ig_media_insight WHERE media_id = 7") == 3
    assert await count(pool, "ig_media_insight_history") == 1
    media = await pool.fetchrow("SELECT * FROM ig_media WHERE media_id = 7")
    assert (media["like_count"], media["last_seen_at"]) == (6, T1)


async def test_exact_values(pool: asyncpg.Pool) -> None:
    rows = [
        models.MediaInsightRow(1, "a", "", "", 0.1 + 0.2, T0),
        models.MediaInsightRow(1, "b", "", "", 12345678901234, T0),
        models.MediaInsightRow(1, "c", "", "", 2.5, T0),
    ]
    exact = [
        models.MediaInsightRow(2, "a", "", "", Decimal("0.123456789012345678901"), T0),
        models.MediaInsightRow(2, "b", "", "", 2**60 + 1, T0),
        models.MediaInsightRow(2, "c", "", "", 0.1, T0),
    ]
    account = [models.AccountInsightRow(9, "reach", "day", T0, "", "", Decimal("1.50"), T0)]
    async with writer.Writer(pool) as w:
        await w.add(models.Table.MEDIA_INSIGHT, rows)
        await w.flush()
        await w.add(models.Table.MEDIA_INSIGHT, exact)
        await w.add(models.Table.ACCOUNT_INSIGHT, account)
    got = {(r["media_id"], r["metric"]): r["v"] for r in
           await pool.fetch("SELECT media_id, metric, value::text AS v FROM ig_media_insight")}
    assert got == {(1, "a"): "0.30000000000000004", (1, "b"): "12345678901234", (1, "c"): "2.5",
                   (2, "a"): "0.123456789012345678901", (2, "b"): str(2**60 + 1), (2, "c"): "0.1"}
    assert await pool.fetchval("SELECT value::text FROM ig_account_insight") == "1.50"


async def test_coalesce_upserts(pool: asyncpg.Pool) -> None:
    async with writer.Writer(pool) as w:
        await w.add(models.Table.ACCOUNT, [models.AccountRow(1, "alice", "facebook", 100, 5, "ok", None, T0)])
        await w.add(models.Table.MEDIA, [
            models.MediaRow(7, 1, "VIDEO", "REELS", T0, "https://p", 3, 4, T0, T0)])
        await w.add(models.Table.UNAVAILABLE, [models.UnavailableRow(
            "media", 7, "views", "", models.UnavailableReason.NOT_ENOUGH_VIEWERS, "few", T0)])
        await w.flush()
        await w.add(models.Table.ACCOUNT, [
            models.AccountRow(1, None, "facebook", None, None, "token_invalid", "expired", T1)])
        await w.add(models.Table.MEDIA, [models.MediaRow(7, 1, None, None, None, None, None, None, T1)])
        await w.add(models.Table.UNAVAILABLE, [models.UnavailableRow(
            "media", 7, "views", "", models.UnavailableReason.NO_DATA, None, T1)])
    account = await pool.fetchrow("SELECT * FROM ig_account")
    assert tuple(account.values()) == (1, "alice", "facebook", 100, 5, "token_invalid", "expired", T1)
    media = await pool.fetchrow("SELECT * FROM ig_media")
    assert tuple(media.values()) == (7, 1, "VIDEO", "REELS", T0, "https://p", 3, 4, T0, T1, T0)
    unavailable = await pool.fetchrow(
        "SELECT reason, detail, first_seen_at, last_seen_at FROM ig_unavailable")
    assert tuple(unavailable.values()) == ("no_data", None, T0, T1)


async def test_job_state_sequences(pool: asyncpg.Pool) -> None:
    def job(ok: bool, minutes: int, detail: str | None = None) -> models.JobStateRow:
        return models.JobStateRow(1, "media", ok, T0 + timedelta(minutes=minutes), detail)

    async def state() -> tuple[object, ...]:
        row = await pool.fetchrow("SELECT last_success_at, last_attempt_at, last_error, consecutive_failures"
                                  " FROM collector_job_state")
        return tuple(row.values())

    async with writer.Writer(pool) as w:
        await w.add(models.Table.JOB_STATE, [job(False, 1, "boom")])
        await w.flush()
        assert await state() == (None, T0 + timedelta(minutes=1), "boom", 1)
        await w.add(models.Table.JOB_STATE, [job(False, 2, "boom2"), job(False, 3, "boom3")])  # one batch
        await w.flush()
        assert await state() == (None, T0 + timedelta(minutes=3), "boom3", 3)
        await w.add(models.Table.JOB_STATE, [job(False, 4, "x"), job(True, 5), job(False, 6, "y")])
        await w.flush()
        assert await state() == (T0 + timedelta(minutes=5), T0 + timedelta(minutes=6), "y", 1)
        await w.add(models.Table.JOB_STATE, [job(True, 7)])
        await w.flush()
        assert await state() == (T0 + timedelta(minutes=7), T0 + timedelta(minutes=7), None, 0)


@pytest.mark.parametrize(("batch_max_rows", "split_min_rows"), [(7, 4_000), (45, 1)],
                         ids=["one-transaction", "split-across-connections"])
async def test_job_state_never_commits_before_its_data(
        pool: asyncpg.Pool, batch_max_rows: int, split_min_rows: int) -> None:
    # Triggers fail the transaction if a job state, or a media row saying its insights were refreshed,
    # arrives while the data added before it is not visible to it (committed earlier, or in the same
    # transaction: the media check runs at commit).
    await pool.execute("""
        CREATE FUNCTION check_data_first() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF (SELECT count(*) FROM ig_media_insight) < 40 * NEW.ig_user_id THEN
                RAISE EXCEPTION 'job state before its data';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER data_first BEFORE INSERT OR UPDATE ON collector_job_state
            FOR EACH ROW EXECUTE FUNCTION check_data_first();
        CREATE FUNCTION check_insights_first() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF (SELECT count(*) FROM ig_media_insight WHERE media_id = NEW.media_id) < 4 THEN
                RAISE EXCEPTION 'media refreshed before its insights';
            END IF;
            RETURN NEW;
        END $$;
        CREATE CONSTRAINT TRIGGER insights_first AFTER INSERT OR UPDATE ON ig_media
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION check_insights_first();
    """)
    async with writer.Writer(pool, batch_max_rows=batch_max_rows, split_min_rows=split_min_rows,
                             flush_interval_s=0.01) as w:
        for account in range(1, 6):
            # Job state first in the call order of each step would be a bug in the caller; here the data
            # comes first and batches cut right through it.
            for media in range(account * 100, account * 100 + 10):
                await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(media, media + 1), T0))
                await w.add(models.Table.MEDIA, [models.MediaRow(media, account, "IMAGE", "FEED", T0, None,
                                                                 None, None, T0, T0)])
            await w.add(models.Table.JOB_STATE, [models.JobStateRow(account, "media", True, T0, None)])
    assert await count(pool, "collector_job_state") == 5
    assert await count(pool, "ig_media") == 50


async def _state(pool: asyncpg.Pool) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    current = await pool.fetch("SELECT * FROM ig_media_insight ORDER BY media_id, metric")
    history = await pool.fetch("SELECT * FROM ig_media_insight_history"
                               " ORDER BY media_id, metric, collected_at, value")
    return [tuple(r.values()) for r in current], [tuple(r.values()) for r in history]


async def test_split_batches_store_what_one_transaction_stores(pool: asyncpg.Pool) -> None:
    # Fresh rows, then a batch mixing new media, changed and unchanged values and a key twice (last
    # wins), then an unchanged re-run: a batch split across two connections must leave exactly what one
    # transaction leaves.
    changed = [r._replace(value=r.value + (r.media_id % 3 == 0), collected_at=T1)
               for r in insight_rows(range(50, 150), T0)]
    twice = [changed[0]._replace(value=-1), changed[0]._replace(value=-2)]
    steps = [insight_rows(range(1, 100), T0), changed + twice, changed + twice]
    states = []
    for connections in (1, 2):
        await pool.execute("TRUNCATE ig_media_insight, ig_media_insight_history")
        async with writer.Writer(pool, connections=connections, split_min_rows=1) as w:
            for rows in steps:
                await w.add(models.Table.MEDIA_INSIGHT, rows)
                await w.flush()
        states.append(await _state(pool))
    assert states[0] == states[1]
    current, history = states[1]
    assert len(current) == 149 * 4
    # Fresh; the 50 new media; the 17 known media with id % 3 == 0 (51..99); the key given twice.
    assert len(history) == 99 * 4 + 50 * 4 + 17 * 4 + 1
    assert (changed[0].media_id, changed[0].metric, "", "", -2, T1) in current


async def test_value_kinds_and_timestamps_are_exact(pool: asyncpg.Pool) -> None:
    paris = timezone(timedelta(hours=1))
    at = datetime(2026, 3, 1, 12, 30, 45, 123457, tzinfo=paris)
    batches = {  # one batch per staging kind: int8, float8, text
        "int": [2**63 - 1, -(2**63), 0],
        "float": [2**53, 0.5, -7],
        "text": [2**63, Decimal("1.10"), 3],
    }
    async with writer.Writer(pool) as w:
        for number, values in enumerate(batches.values()):
            await w.add(models.Table.MEDIA_INSIGHT, [models.MediaInsightRow(number, f"m{i}", "", "", v, at)
                                                     for i, v in enumerate(values)])
            await w.add(models.Table.ACCOUNT_INSIGHT, [
                models.AccountInsightRow(number, f"m{i}", "day", at + timedelta(days=i), "", "", v, at)
                for i, v in enumerate(values)])
            await w.flush()
    for table, end_time in (("ig_media_insight", "NULL"), ("ig_account_insight", "end_time")):
        rows = await pool.fetch(f"SELECT value::text AS v, collected_at, {end_time} AS e FROM {table}"
                                f" ORDER BY 1")
        assert sorted(r["v"] for r in rows) == sorted(
            str(v) for values in batches.values() for v in values)
        assert {r["collected_at"] for r in rows} == {at}
    ends = await pool.fetch("SELECT DISTINCT end_time FROM ig_account_insight ORDER BY 1")
    assert [r["end_time"] for r in ends] == [at + timedelta(days=i) for i in range(3)]


async def test_backpressure_blocks_add_until_committed(pool: asyncpg.Pool, db_dsn: str) -> None:
    m = metrics.Metrics()
    blocker = await asyncpg.connect(db_dsn)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE ig_media_insight IN ACCESS EXCLUSIVE MODE")
        async with writer.Writer(pool, batch_max_rows=50, buffer_max_rows=100, flush_interval_s=0.01,
                                 metrics=m) as w:
            await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(1, 26), T0))  # 100 rows: full
            blocked = asyncio.create_task(w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(26, 27), T0)))
            await asyncio.sleep(0.3)
            assert not blocked.done()
            assert w.buffered_rows == 100
            await tx.rollback()  # the database moves again
            await asyncio.wait_for(blocked, timeout=10)
        assert m.total(m.writer_wait_seconds) >= 0.25
        assert await count(pool, "ig_media_insight") == 104
    finally:
        await blocker.close()


async def test_producers_waiting_for_space_resume_promptly(pool: asyncpg.Pool) -> None:
    # Two bugs lived here: a commit that emptied the buffer while producers waited left the writer's loop
    # spinning without yielding (the event loop froze), and a producer that refilled the buffer after a
    # commit left the others asleep until the next flush interval (5 s here, past the timeout).
    async with writer.Writer(pool, batch_max_rows=1_000, buffer_max_rows=40, flush_interval_s=5.0) as w:
        async def produce(first: int) -> None:
            for start in range(first, first + 50, 10):
                await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(start, start + 10), T0))

        async with asyncio.timeout(10):
            await asyncio.gather(*(produce(base) for base in (1, 1001, 2001)))
    assert await count(pool, "ig_media_insight") == 3 * 50 * len(METRICS)


async def test_bad_data_is_fatal_storage_error(pool: asyncpg.Pool) -> None:
    w = writer.Writer(pool)
    w.start()
    await w.add(models.Table.ACCOUNT, [models.AccountRow(1, "a", "myspace", None, None, "ok", None, T0)])
    with pytest.raises(exceptions.StorageError, match="rejected"):
        await w.flush()
    with pytest.raises(exceptions.StorageError):
        await w.add(models.Table.ACCOUNT, [models.AccountRow(2, "b", "facebook", None, None, "ok", None, T0)])
    with pytest.raises(exceptions.StorageError):
        await w.close()
    assert w.buffered_rows == 1  # rejected, but kept: the writer stops without dropping what was fetched


async def test_close_flushes_even_when_cancelled(pool: asyncpg.Pool) -> None:
    w = writer.Writer(pool, flush_interval_s=60)
    w.start()
    await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(1, 101), T0))
    closing = asyncio.create_task(w.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    for _ in range(100):
        if await count(pool, "ig_media_insight") == 400:
            break
        await asyncio.sleep(0.05)
    assert await count(pool, "ig_media_insight") == 400


async def test_outage_keeps_rows_and_delivers_each_once() -> None:
    server = await asyncio.to_thread(fixtures_db.embedded_server)
    admin = await asyncpg.connect(server.uri())
    await admin.execute("CREATE DATABASE outage")
    await admin.close()
    dsn = server.uri("outage")
    conn = await asyncpg.connect(dsn)
    from collector.storage import migrations  # noqa: PLC0415
    await migrations.migrate(conn)
    await conn.close()
    m = metrics.Metrics()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        with structlog.testing.capture_logs() as logs:
            async with writer.Writer(pool, batch_max_rows=100, flush_interval_s=0.05, metrics=m) as w:
                await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(1, 51), T0))
                await w.flush()
                await asyncio.to_thread(server.stop)
                for start in range(51, 251, 25):  # 800 rows while the server is down
                    await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(start, start + 25), T0))
                await w.add(models.Table.MEDIA_INSIGHT, insight_rows(range(1, 51), T1, bump=1))  # changes
                await w.add(models.Table.JOB_STATE, [models.JobStateRow(1, "media", True, T1, None)])
                for _ in range(100):
                    if m.total(m.writer_errors) >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert m.total(m.writer_errors) >= 2
                await asyncio.to_thread(server.start)
                await asyncio.wait_for(w.flush(), timeout=30)
        assert any(e["event"] == "writer_retry" and e["log_level"] == "warning" for e in logs)
        assert await count(pool, "ig_media_insight") == 1000
        assert await pool.fetchval(
            "SELECT count(*) FROM (SELECT DISTINCT media_id, metric FROM ig_media_insight_history) d") == 1000
        assert await count(pool, "ig_media_insight_history") == 1000 + 200
        assert await count(pool, "collector_job_state") == 1
    finally:
        await pool.close()
        await asyncio.to_thread(server.close)


def _chained(error: BaseException, context: BaseException) -> BaseException:
    """`error` as raised while `context` was being handled (a transaction's exit after a failed COPY)."""
    error.__context__ = context
    return error


@pytest.mark.parametrize(("error", "transient"), [
    (asyncpg.InterfaceError(
        "cannot call Transaction.__aexit__(): the underlying connection is closed"), True),
    (asyncpg.InterfaceError(
        "cannot call Connection.terminate(): connection has been released back to the pool"), True),
    (asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"), True),
    (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
    (asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"), True),
    (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), True),
    (_chained(asyncpg.InterfaceError("the server expects 3 arguments for this query, 2 were passed"),
              asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle")), True),
    (writer.ConnectionLost("connection lost mid-write: ProtocolError: unexpected message"), True),
    (asyncpg.InterfaceError("the server expects 3 arguments for this query, 2 were passed"), False),
    (asyncpg.exceptions.UndefinedColumnError('column "x" does not exist'), False),
    (asyncpg.exceptions.NotNullViolationError('null value in column "metric"'), False),
    (_chained(asyncpg.exceptions.UniqueViolationError("duplicate key"),
              asyncpg.exceptions.CardinalityViolationError("ON CONFLICT DO UPDATE command cannot affect row "
                                                           "a second time")), False),
])
def test_outage_errors_are_retried_and_bad_data_is_not(error: BaseException, transient: bool) -> None:
    # Seen in a PostgreSQL restart under backpressure: asyncpg reports a connection the outage dropped as an
    # InterfaceError; taken as fatal it failed the writer and lost its buffer.
    assert writer._transient(error) is transient


class CuttingProxy:
    """A TCP proxy to PostgreSQL that aborts the first `cuts` connections once they have sent `after_bytes`
    bytes towards the server: a connection dying in the middle of a COPY, at a point chosen by count."""

    def __init__(self, dsn: str, *, after_bytes: int, cuts: int) -> None:
        parts = urllib.parse.urlsplit(dsn)
        query = urllib.parse.parse_qs(parts.query)
        self._socket_dir = query.get("host", [None])[0]
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 5432
        self._dsn = parts
        self.after_bytes = after_bytes
        self.cuts_left = cuts
        self.cut = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = self._dsn.username or "postgres"
        password = f":{self._dsn.password}" if self._dsn.password else ""
        return f"postgresql://{user}{password}@127.0.0.1:{port}{self._dsn.path}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._socket_dir:
            server_r, server_w = await asyncio.open_unix_connection(
                f"{self._socket_dir}/.s.PGSQL.{self._port}")
        else:
            server_r, server_w = await asyncio.open_connection(self._host, self._port)
        doomed = self.cuts_left > 0
        self.cuts_left -= doomed

        async def upstream() -> None:
            sent = 0
            while data := await client_r.read(65536):
                sent += len(data)
                if doomed and sent > self.after_bytes:
                    self.cut += 1
                    client_w.transport.abort()
                    server_w.transport.abort()
                    return
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.gather(upstream(), downstream())
        client_w.transport.abort()
        server_w.transport.abort()


async def test_connections_cut_mid_copy_are_retried_on_fresh_connections(db_dsn: str) -> None:
    """Two connections die in the middle of a COPY (each after 1 MB sent); the batch goes through on fresh
    ones, every row stored once, and the writer never fails."""
    m = metrics.Metrics()
    rows = insight_rows(range(1, 25_001), T0)  # 100,000 rows: several MB of COPY data
    async with CuttingProxy(db_dsn, after_bytes=1_000_000, cuts=2) as proxied:
        pool = await asyncpg.create_pool(proxied, min_size=0, max_size=4)
        try:
            async with writer.Writer(pool, metrics=m) as w:
                await w.add(models.Table.MEDIA_INSIGHT, rows)
                await asyncio.wait_for(w.flush(), timeout=60)
            assert await count(pool, "ig_media_insight") == 100_000
            assert await count(pool, "ig_media_insight_history") == 100_000
        finally:
            await asyncio.wait_for(pool.close(), timeout=10)
    assert m.total(m.writer_errors) >= 1
