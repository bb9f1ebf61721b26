"""Partitioned history (migration 003): the conversion of a populated table, partitions ahead, retention
(drop / downsample), db-size, and that the growth-curve query prunes partitions and can use the index."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from collector import config, exceptions, metrics, models, pacific, passes, settings
from collector.storage import conversion, migrations, partitions, retention, sizing, writer
from tests import fixtures_sim

HISTORY = partitions.HISTORY.name
COLUMNS = "media_id, metric, breakdown, dimension, value, collected_at"
ALL_ROWS = (f"SELECT {COLUMNS} FROM {HISTORY} "
            "ORDER BY media_id, metric, breakdown, dimension, collected_at, value")
Month = partitions.Month
NOW = datetime(2026, 6, 15, 19, 0, tzinfo=UTC)  # 2026-06-15 12:00 Pacific (PDT)


def start(year: int, month: int, day: int = 1) -> datetime:
    """The Pacific midnight starting that day, in UTC."""
    return pacific.day_start_utc(date(year, month, day))


async def fill_history(conn: asyncpg.Connection, rows: int, *, first: datetime, span: timedelta) -> None:
    """`rows` rows spread evenly over [first, first + span): 40 media x 5 metrics, a breakdown on one."""
    await conn.execute(f"""
        INSERT INTO {HISTORY} ({COLUMNS})
        SELECT 9000 + i % 40, (ARRAY['reach','views','likes','saved','profile_activity'])[1 + i / 40 % 5],
               CASE WHEN i / 40 % 5 = 4 THEN 'action_type' ELSE '' END,
               CASE WHEN i / 40 % 5 = 4 THEN 'BIO_LINK_CLICKED' ELSE '' END,
               (i * 7)::numeric / 3, $1::timestamptz + $2::interval * i / $3
        FROM generate_series(0, $3 - 1) AS i""", first, span, rows)


BOUNDARY = [  # exactly at a Pacific month start, just before it, odd values
    (1, "reach", "", "", Decimal("10"), start(2026, 2, 1)),
    (1, "reach", "", "", Decimal("9"), start(2026, 2, 1) - timedelta(microseconds=1)),
    (2, "views", "", "", Decimal("123456789012345678901234567890.000001"), start(2026, 3, 1)),
    (3, "reach", "", "", Decimal("-1.5"), datetime(2025, 12, 31, 23, 59, tzinfo=UTC)),  # a December day
]


async def old_schema(dsn: str) -> asyncpg.Connection:
    """A connection to a database as version 002 left it (history not partitioned)."""
    conn = await asyncpg.connect(dsn)
    await migrations.migrate(conn, upto=2)
    assert not await partitions.is_partitioned(conn, partitions.HISTORY)
    return conn


async def partition_of(conn: asyncpg.Connection, media_id: int, at: datetime) -> str:
    return str(await conn.fetchval(
        f"SELECT tableoid::regclass::text FROM {HISTORY} WHERE media_id = $1 AND collected_at = $2",
        media_id, at))


# -- conversion ----------------------------------------------------------------------------------------------


async def test_migrate_converts_a_populated_history_with_identical_rows(empty_db_dsn: str) -> None:
    conn = await old_schema(empty_db_dsn)
    try:
        await fill_history(conn, 3000, first=start(2025, 11, 3), span=timedelta(days=110))
        await conn.executemany(f"INSERT INTO {HISTORY} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)", BOUNDARY)
        before = await conn.fetch(ALL_ROWS)
        pages = await conn.fetchval(f"SELECT pg_relation_size('{HISTORY}') / 8192")
        assert pages > 10  # so that batch_pages=3 makes several batches

        assert "003_history_partitioned" in await migrations.migrate(conn, now=NOW, batch_pages=3)

        assert await partitions.is_partitioned(conn, partitions.HISTORY)
        assert [tuple(r) for r in await conn.fetch(ALL_ROWS)] == [tuple(r) for r in before]
        months = [p.month for p in await partitions.list_partitions(conn, partitions.HISTORY)]
        # The data's months (Pacific), the current month of NOW and two ahead, those of the real clock (made
        # by 003 itself), then the default.
        real = Month.of(datetime.now(UTC))
        expected = {Month(2025, 11), Month(2025, 12), Month(2026, 1), Month(2026, 2), Month(2026, 3),
                    Month(2026, 6), Month(2026, 7), Month(2026, 8), real, real.next(), real.next(2)}
        assert months == [*sorted(expected), None]
        assert await conn.fetchval(f'SELECT count(*) FROM "{HISTORY}_default"') == 0
        assert await partition_of(conn, 1, start(2026, 2, 1)) == f"{HISTORY}_p2026_02"
        just_before = start(2026, 2, 1) - timedelta(microseconds=1)
        assert await partition_of(conn, 1, just_before) == f"{HISTORY}_p2026_01"
        # 23:59 UTC on Dec 31 is 15:59 Pacific on Dec 31: December.
        assert await partition_of(conn, 3, BOUNDARY[3][5]) == f"{HISTORY}_p2025_12"
        # Nothing of the conversion is left.
        leftovers = await conn.fetch(
            "SELECT relname FROM pg_class WHERE relname LIKE '%history_next%' "
            "OR relname LIKE 'collector_history%' "
            "UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'igc_history%'")
        assert leftovers == []
        columns = await conn.fetch(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 ORDER BY attnum",
            HISTORY)
        assert [c["attname"] for c in columns] == COLUMNS.split(", ")
        assert await migrations.migrate(conn, now=NOW) == []
    finally:
        await conn.close()


def insight_rows(round_: int, at: datetime) -> list[models.MediaInsightRow]:
    """20 media x 3 metrics, every value new in each round: each row appends one history row."""
    return [models.MediaInsightRow(7000 + m, metric, "", "", round_ * 1000 + m, at)
            for m in range(20) for metric in ("reach", "views", "saved")]


async def writer_rows(conn: asyncpg.Connection) -> set[tuple[int, str, Decimal]]:
    rows = await conn.fetch(
        f"SELECT media_id, metric, value FROM {HISTORY} WHERE media_id BETWEEN 7000 AND 7019")
    return {(r["media_id"], r["metric"], r["value"]) for r in rows}


def expected_writer_rows(rounds: int) -> set[tuple[int, str, Decimal]]:
    return {(r.media_id, r.metric, Decimal(r.value)) for i in range(rounds) for r in insight_rows(i, NOW)}


async def test_rows_written_at_every_step_of_a_conversion_are_kept(empty_db_dsn: str) -> None:
    """The real writer adds history rows before 003, after it, between copy batches, after the copy, after
    the verification and after the swap: every row is there, once."""
    conn = await old_schema(empty_db_dsn)
    pool = await asyncpg.create_pool(empty_db_dsn, min_size=1, max_size=3)
    rounds = itertools.count()
    try:
        async with writer.Writer(pool, flush_interval_s=0.05) as w:
            async def write_round() -> None:
                await w.add(models.Table.MEDIA_INSIGHT, insight_rows(next(rounds), NOW))
                await w.flush()

            await fill_history(conn, 3000, first=start(2026, 4, 1), span=timedelta(days=60))
            await write_round()
            await migrations.migrate(conn, now=NOW, finish=False)  # 003's SQL: trigger on, nothing copied
            assert await conversion.pending(conn)
            await write_round()
            await conversion.ensure_ahead(conn, NOW)
            await conversion.copy(conn, batch_pages=2, max_batches=3)
            await write_round()
            await conversion.copy(conn, batch_pages=2)
            await write_round()
            await conversion.verify(conn)
            await write_round()
            await conversion.swap(conn)
            assert not await conversion.pending(conn)
            await write_round()  # the writer's cached statements now meet the partitioned table
        count = next(rounds)
        assert await writer_rows(conn) == expected_writer_rows(count)
        assert await conn.fetchval(f"SELECT count(*) FROM {HISTORY}") == 3000 + count * 60
        assert await partitions.is_partitioned(conn, partitions.HISTORY)
    finally:
        await pool.close()
        await conn.close()


async def test_rows_written_concurrently_with_migrate_are_kept(empty_db_dsn: str) -> None:
    """A writer running flat out while `migrate` converts (small batches, many transactions). Its rows are
    of the real clock: the months ahead exist from 003's own transaction on."""
    conn = await old_schema(empty_db_dsn)
    pool = await asyncpg.create_pool(empty_db_dsn, min_size=1, max_size=3)
    try:
        await fill_history(conn, 20_000, first=start(2026, 3, 1), span=timedelta(days=100))
        done = asyncio.Event()
        rounds = 0
        async with writer.Writer(pool, flush_interval_s=0.01) as w:
            async def keep_writing() -> None:
                nonlocal rounds
                while not done.is_set() or rounds < 2:
                    await w.add(models.Table.MEDIA_INSIGHT, insight_rows(rounds, datetime.now(UTC)))
                    rounds += 1
                    await w.flush()

            task = asyncio.create_task(keep_writing())
            try:
                await migrations.migrate(conn, batch_pages=4)
            finally:
                done.set()
            await task
        assert await writer_rows(conn) == expected_writer_rows(rounds)
        assert await conn.fetchval(f"SELECT count(*) FROM {HISTORY}") == 20_000 + rounds * 60
    finally:
        await pool.close()
        await conn.close()


async def test_an_interrupted_copy_resumes_where_it_stopped(empty_db_dsn: str) -> None:
    conn = await old_schema(empty_db_dsn)
    try:
        await fill_history(conn, 3000, first=start(2026, 1, 5), span=timedelta(days=30))
        before = await conn.fetch(ALL_ROWS)
        await migrations.migrate(conn, now=NOW, finish=False)
        await conversion.copy(conn, batch_pages=2, max_batches=2)  # then the process "dies"
        await migrations.migrate(conn, now=NOW, batch_pages=2)  # the next migrate finishes the job
        assert [tuple(r) for r in await conn.fetch(ALL_ROWS)] == [tuple(r) for r in before]
    finally:
        await conn.close()


# -- partitions ahead ---------------------------------------------------------------------------------------


async def test_partitions_exist_ahead_and_a_stray_month_moves_out_of_the_default(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        # The template was migrated at the real clock; at NOW (June 2026) June, July and August are made.
        created = await partitions.ensure(conn, NOW)
        assert {f"{HISTORY}_p2026_06", f"{HISTORY}_p2026_07", f"{HISTORY}_p2026_08"} <= set(created)
        assert await partitions.ensure(conn, NOW) == []
        # A row for September (no partition yet) lands in the default partition...
        stray = (5, "reach", "", "", Decimal(1), start(2026, 9, 10))
        await conn.execute(f"INSERT INTO {HISTORY} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)", *stray)
        assert await partition_of(conn, 5, stray[5]) == f"{HISTORY}_default"
        # ... and moves into September's partition when the clock reaches July.
        assert await partitions.ensure(conn, start(2026, 7, 2)) == [f"{HISTORY}_p2026_09"]
        assert await partition_of(conn, 5, stray[5]) == f"{HISTORY}_p2026_09"
        assert await conn.fetchval(f'SELECT count(*) FROM "{HISTORY}_default"') == 0
    finally:
        await conn.close()


async def test_strays_of_past_months_get_their_partition(db_dsn: str) -> None:
    """Rows of a month without a partition (say, imported) land in the default partition; the next ensure
    (the daily maintenance) gives their months partitions and moves them there, so retention drops them
    like any month."""
    conn = await asyncpg.connect(db_dsn)
    try:
        rows = [(1, "reach", "", "", Decimal(1), start(2024, 2, 1)),  # first instant of February 2024
                (1, "reach", "", "", Decimal(2), start(2024, 2, 1) - timedelta(microseconds=1)),  # January
                (2, "views", "", "", Decimal(3), start(2024, 2, 20))]
        await conn.executemany(f"INSERT INTO {HISTORY} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)", rows)
        assert await partitions.stray_months(conn, partitions.HISTORY) == [Month(2024, 1), Month(2024, 2)]
        created = await partitions.ensure(conn, NOW)
        assert {f"{HISTORY}_p2024_01", f"{HISTORY}_p2024_02"} <= set(created)
        assert await conn.fetchval(f'SELECT count(*) FROM "{HISTORY}_default"') == 0
        assert await partition_of(conn, 1, rows[0][5]) == f"{HISTORY}_p2024_02"
        assert await partition_of(conn, 1, rows[1][5]) == f"{HISTORY}_p2024_01"
        assert await conn.fetchval(f'SELECT count(*) FROM "{HISTORY}_p2024_02"') == 2
        assert await partitions.stray_months(conn, partitions.HISTORY) == []
    finally:
        await conn.close()


def test_months_are_pacific() -> None:
    assert Month.of(datetime(2026, 7, 1, 6, 59, tzinfo=UTC)) == Month(2026, 6)  # 23:59 PDT on June 30
    assert Month.of(datetime(2026, 7, 1, 7, 0, tzinfo=UTC)) == Month(2026, 7)
    assert Month(2026, 12).next() == Month(2027, 1)
    assert Month(2026, 1).start == datetime(2026, 1, 1, 8, tzinfo=UTC)  # PST
    assert Month(2026, 6).end == datetime(2026, 7, 1, 7, tzinfo=UTC)  # PDT


async def test_growth_curve_query_prunes_partitions_and_uses_the_index(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        for month in (Month(2026, 3), Month(2026, 4), Month(2026, 5)):
            await partitions.create_partition(conn, partitions.HISTORY, month)
        await fill_history(conn, 3000, first=start(2026, 3, 1), span=timedelta(days=90))
        await conn.execute(f"ANALYZE {HISTORY}")
        await conn.execute("SET enable_seqscan = off")  # a few thousand rows: a seq scan would be cheaper
        plan = "\n".join(r[0] for r in await conn.fetch(
            f"EXPLAIN SELECT collected_at, value FROM {HISTORY} WHERE media_id = 9001 AND metric = 'reach' "
            "AND breakdown = '' AND dimension = '' AND collected_at >= $1 AND collected_at < $2 "
            "ORDER BY collected_at", start(2026, 4, 10), start(2026, 5, 20)))
        # Only the months of the range: no other month, not the default partition (the range is covered).
        assert "_p2026_04" in plan and "_p2026_05" in plan
        assert "_p2026_03" not in plan and f"{HISTORY}_default" not in plan
        assert "Index Scan" in plan and "Seq Scan" not in plan
    finally:
        await conn.close()


# -- retention ----------------------------------------------------------------------------------------------


def parts(*months: Month | None, downsampled: tuple[Month, ...] = ()) -> list[partitions.Partition]:
    return [partitions.Partition(
        HISTORY, "x" if m is None else partitions.partition_name(partitions.HISTORY, m), m, m in downsampled)
        for m in months]


def test_plan_keeps_everything_by_default() -> None:
    assert retention.plan(parts(Month(2020, 1), None), settings.RetentionSettings(), NOW) == []


def test_plan_drops_whole_months_older_than_the_cutoff_and_downsamples_older_than_full() -> None:
    # NOW is 2026-06-15 Pacific: 14 days back is June 1 (the May partition's end), 45 days back May 1.
    policy = settings.RetentionSettings(history_days=14, history_full_days=10)
    plan = retention.plan(parts(Month(2026, 4), Month(2026, 5), Month(2026, 6), None), policy, NOW)
    assert [(a.kind, a.partition.month) for a in plan] == [
        (retention.Kind.DROP, Month(2026, 4)), (retention.Kind.DROP, Month(2026, 5)),
        (retention.Kind.DELETE_DEFAULT, None), (retention.Kind.DOWNSAMPLE_DEFAULT, None)]
    assert plan[0].cutoff == start(2026, 6, 1)
    policy = settings.RetentionSettings(history_days=45, history_full_days=14)
    plan = retention.plan(
        parts(Month(2026, 4), Month(2026, 5), Month(2026, 6), downsampled=(Month(2026, 4),)), policy, NOW)
    # 45 days back is May 1: April goes; May ends on June 1 = 14 days back: downsampled; June is kept.
    assert [(a.kind, a.partition.month) for a in plan] == [
        (retention.Kind.DROP, Month(2026, 4)), (retention.Kind.DOWNSAMPLE, Month(2026, 5))]
    plan = retention.plan(parts(Month(2026, 5), downsampled=(Month(2026, 5),)),
                          settings.RetentionSettings(history_full_days=14), NOW)
    assert plan == []  # already downsampled


async def test_retention_drops_what_it_should_and_nothing_else(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        for month in (Month(2026, 4), Month(2026, 5), Month(2026, 6)):
            await partitions.create_partition(conn, partitions.HISTORY, month)
        cutoff = start(2026, 6, 1)  # history_days=14 at NOW
        rows = [
            (1, "reach", "", "", Decimal(1), start(2026, 4, 10)),  # April: dropped
            (2, "reach", "", "", Decimal(2), cutoff - timedelta(microseconds=1)),  # last instant of May
            (3, "reach", "", "", Decimal(3), cutoff),  # first instant of June: kept
            (4, "reach", "", "", Decimal(4), start(2026, 6, 14)),  # kept
            (5, "reach", "", "", Decimal(5), start(2025, 1, 1)),  # default partition, older: deleted
            (6, "reach", "", "", Decimal(6), start(2031, 1, 1)),  # default partition, newer: kept
        ]
        await conn.executemany(f"INSERT INTO {HISTORY} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)", rows)
        policy = settings.RetentionSettings(history_days=14)
        plan = await retention.current_plan(conn, policy, NOW)
        dry = await retention.describe(conn, plan)
        assert {(o.action.partition.name, o.rows_before, o.rows_after) for o in dry} == {
            (f"{HISTORY}_p2026_04", 1, 0), (f"{HISTORY}_p2026_05", 1, 0), (f"{HISTORY}_default", 2, 1)}
        assert await conn.fetchval(f"SELECT count(*) FROM {HISTORY}") == 6  # a dry run changes nothing
        text = retention.render(dry, policy=policy, dry_run=True)
        assert "would drop" in text and "p2026_04" in text and "dry run" in text

        outcomes = await retention.apply(conn, plan)
        assert [o.action.kind for o in outcomes] == [
            retention.Kind.DROP, retention.Kind.DROP, retention.Kind.DELETE_DEFAULT]
        left = await conn.fetch(f"SELECT media_id FROM {HISTORY} ORDER BY media_id")
        assert [r["media_id"] for r in left] == [3, 4, 6]
        # The same (now stale) plan again, as a second instance or a `prune` would run it: what is done is
        # skipped.
        assert [o.action.kind for o in await retention.apply(conn, plan)] == [retention.Kind.DELETE_DEFAULT]
        names = [p.name for p in await partitions.list_partitions(conn, partitions.HISTORY)]
        assert f"{HISTORY}_p2026_04" not in names and f"{HISTORY}_p2026_06" in names
        assert f"{HISTORY}_default" in names
        assert await retention.current_plan(conn, policy, NOW) != []  # the default is always looked at
        again = await retention.apply(conn, await retention.current_plan(conn, policy, NOW))
        assert [(o.rows_before, o.rows_after) for o in again] == [(1, 1)]
    finally:
        await conn.close()


async def test_downsampling_keeps_exactly_the_last_value_per_pacific_day_per_series(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        for month in (Month(2026, 4), Month(2026, 5), Month(2026, 6)):
            await partitions.create_partition(conn, partitions.HISTORY, month)
        rows: list[tuple[int, str, str, str, Decimal, datetime]] = []
        # Hourly snapshots of three series (one a breakdown) over April 28 - May 3 Pacific, plus strays in
        # the default partition (2025) and rows in June (not entirely older than the cutoff: kept whole).
        series = [(10, "reach", "", ""), (10, "profile_activity", "action_type", "BIO_LINK_CLICKED"),
                  (11, "reach", "", "")]
        first = start(2026, 4, 28)
        for hour in range(6 * 24):
            for n, (media_id, metric, breakdown, dimension) in enumerate(series):
                at = first + timedelta(hours=hour, minutes=n)
                rows.append((media_id, metric, breakdown, dimension, Decimal(hour * 10 + n), at))
        for hour in range(30):
            rows.append((12, "reach", "", "", Decimal(hour), start(2025, 3, 9) + timedelta(hours=hour)))
            rows.append((12, "reach", "", "", Decimal(hour), start(2026, 6, 2) + timedelta(hours=hour)))
        await conn.executemany(f"INSERT INTO {HISTORY} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)", rows)
        policy = settings.RetentionSettings(history_full_days=10)  # cutoff June 5: April and May downsampled
        cutoff = retention.cutoff(NOW, policy.history_full_days)
        assert cutoff == start(2026, 6, 5)

        last: dict[tuple[object, ...], tuple[int, str, str, str, Decimal, datetime]] = {}
        for row in sorted(rows, key=lambda r: r[5]):
            # April, May and the default partition's 2025 rows are downsampled; June is not entirely older.
            key = (*row[:4], pacific.today(row[5])) if row[5] < start(2026, 6, 1) else row
            last[key] = row
        expected = sorted(last.values(), key=lambda r: (r[0], r[1], r[2], r[3], r[5]))

        plan = await retention.current_plan(conn, policy, NOW)
        assert [(a.kind, a.partition.month) for a in plan] == [
            (retention.Kind.DOWNSAMPLE, Month(2026, 4)), (retention.Kind.DOWNSAMPLE, Month(2026, 5)),
            (retention.Kind.DOWNSAMPLE_DEFAULT, None)]
        dry = await retention.describe(conn, plan)
        await retention.apply(conn, plan)
        kept = [tuple(r) for r in await conn.fetch(
            f"SELECT {COLUMNS} FROM {HISTORY} ORDER BY media_id, metric, breakdown, dimension, collected_at")]
        assert kept == expected
        assert sum(o.rows_after for o in dry) == sum(1 for r in expected if r[5] < start(2026, 6, 1))
        # Marked: the next run has nothing to rebuild (the default partition is looked at again, finds
        # nothing more to delete).
        again = await retention.apply(conn, await retention.current_plan(conn, policy, NOW))
        assert [(o.action.kind, o.rows_before - o.rows_after) for o in again] == [
            (retention.Kind.DOWNSAMPLE_DEFAULT, 0)]
        # The rebuilt partitions are ordinary partitions with their index.
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = $1",
                                   f"{HISTORY}_p2026_05")
        assert [r["indexname"] for r in indexes] == [f"{HISTORY}_p2026_05_media_idx"]
    finally:
        await conn.close()


async def test_retention_refuses_an_unconverted_history(empty_db_dsn: str) -> None:
    conn = await old_schema(empty_db_dsn)
    policy = settings.RetentionSettings(history_days=1)
    try:
        with pytest.raises(exceptions.StorageError, match=r"\(003_history_partitioned, .* not applied\): "
                           "run `ig-collector migrate` first"):
            await retention.current_plan(conn, policy, NOW)
        await migrations.migrate(conn, now=NOW, finish=False)  # every file applied, the copy not done
        with pytest.raises(exceptions.StorageError,
                           match=r"not partitioned yet .*: run `ig-collector migrate` first"):
            await retention.current_plan(conn, policy, NOW)
    finally:
        await conn.close()


# -- db-size ------------------------------------------------------------------------------------------------


async def test_db_size_counts_rows_and_measures_growth_from_the_data(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        # 700 history rows over the last 7 days (100 a day), 50 older ones outside the window.
        await fill_history(conn, 700, first=now - timedelta(days=7), span=timedelta(days=7))
        await fill_history(conn, 50, first=now - timedelta(days=40), span=timedelta(days=1))
    sizes = {s.table: s for s in await sizing.measure(pool, now, window_days=7)}
    history = sizes[HISTORY]
    assert history.rows == 750
    assert history.partitions >= 3  # months ahead and the default
    assert history.rows_per_day == pytest.approx(100, rel=0.01)
    assert history.bytes > 0 and history.bytes_per_day == pytest.approx(100 * history.bytes / 750, rel=0.01)
    assert history.projected(30)[0] == pytest.approx(750 + 3000, abs=30)
    assert sizes["ig_account"].rows_per_day is None and sizes["ig_account"].rows == 0
    report = sizing.render(list(sizes.values()), window_days=7)
    assert HISTORY in report and "rows +365d" in report and "total" in report


async def test_a_lock_held_by_a_long_query_does_not_fail_migrate(db_dsn: str) -> None:
    """Creating a partition waits at most partitions.LOCK_TIMEOUT behind a query holding the default
    partition; `migrate` then goes on (the rows of a missing month go to the default partition meanwhile) and
    the next attempt creates it."""
    reader = await asyncpg.connect(db_dsn)
    conn = await asyncpg.connect(db_dsn)
    later = datetime.now(UTC) + timedelta(days=200)  # months that do not exist yet
    try:
        async with reader.transaction():
            await reader.execute(f'LOCK TABLE "{HISTORY}_default" IN ACCESS SHARE MODE')  # a long SELECT
            assert await migrations.migrate(conn, now=later) == []
        missing = {Month.of(later).next(i) for i in range(partitions.MONTHS_AHEAD + 1)}
        assert not missing & {p.month for p in await partitions.list_partitions(conn, partitions.HISTORY)}
        assert len(await partitions.ensure(conn, later)) == len(missing)
    finally:
        await reader.close()
        await conn.close()


async def test_one_instance_at_a_time_runs_the_maintenance(pool: asyncpg.Pool) -> None:
    policy = settings.RetentionSettings(history_days=14)
    async with pool.acquire() as other:
        await other.execute("SELECT pg_advisory_lock($1)", retention.MAINTENANCE_LOCK_KEY)
        try:
            assert await retention.maintain(pool, policy, NOW) == []  # skipped: the other one runs it
            assert Month(2026, 6) not in {p.month for p in await partitions.list_partitions(
                other, partitions.HISTORY)}
        finally:
            await other.execute("SELECT pg_advisory_unlock($1)", retention.MAINTENANCE_LOCK_KEY)
    await retention.maintain(pool, policy, NOW)
    async with pool.acquire() as conn:
        assert Month(2026, 6) in {p.month for p in await partitions.list_partitions(conn, partitions.HISTORY)}


TREE_SIZE = """
WITH RECURSIVE tree(oid) AS (
    SELECT $1::regclass::oid
    UNION ALL
    SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid)
SELECT sum(pg_total_relation_size(oid)) FROM tree"""


async def test_db_size_measures_every_table_after_a_pass(
        tmp_path: Path, db_dsn: str, pool: asyncpg.Pool,
        start_simulator: fixtures_sim.StartSimulator) -> None:
    """Every table's bytes are its own total size (heap, indexes, TOAST), a partitioned one's summed over its
    partitions, computed here from pg_inherits; plain tables read 0 B when their size came from
    pg_partition_tree (which lists nothing for a table that is not partitioned)."""
    sim = await start_simulator(accounts=3, media_per_account=5, world_knobs={"invalid_token_fraction": 0.0})
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections={
        "rate_limit": {"account_calls_per_s": 0, "app_calls_per_s": 0},
        "collect": {"account_backfill_days": 3}})
    summary = await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=metrics.Metrics())
    assert summary.accounts_ok == 3
    async with pool.acquire() as conn:
        before = {t: await conn.fetchval(TREE_SIZE, t) for t in sizing._TIME_COLUMNS}
        sizes = {s.table: s for s in await sizing.measure(pool, datetime.now(UTC))}
        after = {t: await conn.fetchval(TREE_SIZE, t) for t in sizing._TIME_COLUMNS}
    assert sizes.keys() == before.keys()
    written = {t for t, s in sizes.items() if s.rows}
    assert written >= {"ig_account", "ig_media", "ig_media_insight", HISTORY, "ig_account_insight",
                       "collector_job_state"}
    for table, size in sizes.items():
        # Autovacuum may add a table's free-space and visibility maps meanwhile: between the two readings.
        assert min(before[table], after[table]) <= size.bytes <= max(before[table], after[table]), table
        assert size.bytes > 0 or table not in written, table
    assert sizes[HISTORY].partitions >= 3 and sizes["ig_account"].partitions == 0
    total = sum(s.bytes for s in sizes.values())
    assert min(sum(before.values()), sum(after.values())) <= total <= max(sum(before.values()),
                                                                           sum(after.values()))
    report = sizing.render(list(sizes.values()), window_days=7)
    total_line = next(line for line in report.splitlines() if line.startswith("total"))
    assert total_line.split()[2:4] == sizing.human_bytes(total).split()
