"""Years of history: the partitioned ig_media_insight_history against the unpartitioned one, same run.

    .venv/bin/python scripts/bench_history.py [--rows 30000000] [--writer-rows 500000] [--repeat 5]
                                              [--dsn postgresql://...]

Creates two scratch databases on the server of --dsn (default $TEST_DATABASE_URL, then $DATABASE_URL), both
dropped at the end: `plain` stays at migration 002 (the unpartitioned table), `part` is filled the same way
at 002 and then converted by `migrate` (003 and collector.storage.conversion, shipped defaults), so the
conversion of a populated table is measured too. Each history gets --rows synthetic rows over 13 Pacific
months, generated server-side: media posted evenly over the span, 8 metrics, 100 snapshots each over the 30
days after posting (7.2 h apart), as the refresh tiers would append them.

Then, on both, it prints:
  * the writer's rows/s (storage.writer.Writer, shipped defaults: every row a new value, so every row also
    appends one history row), fresh keys then the same keys changed, --repeat times interleaved; and plain
    history-only INSERT ... SELECT rows/s (the partition routing alone);
  * the growth-curve query of one media and metric (ordered by collected_at), over the 90 days after its
    posting and over all time: median and p99 of 200 runs, and the EXPLAIN of the partitioned one;
  * the time to drop the oldest month (partitioned: retention's DROP; plain: DELETE of the same rows);
  * the database size before and after a retention run (history_days=180, history_full_days=90).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import models, settings
from collector.storage import migrations, partitions, retention, sizing, writer

HISTORY = partitions.HISTORY.name
METRICS = ("reach", "views", "likes", "comments", "saved", "shares", "total_interactions", "profile_visits")
SNAPSHOTS = 100  # per media and metric
SNAPSHOT_EVERY = timedelta(days=30) / SNAPSHOTS
WRITER_METRICS = 10
FIRST_WRITER_MEDIA = 18_000_000_000_000_000
RETENTION = settings.RetentionSettings(history_days=180, history_full_days=90)
# i -> media i / 800 (8 metrics x 100 snapshots), snapshot (i / 8) % 100, metric i % 8.
FILL_SQL = f"""
INSERT INTO {HISTORY} (media_id, metric, breakdown, dimension, value, collected_at)
SELECT 17000000000000000 + i / {8 * SNAPSHOTS},
       (ARRAY{list(METRICS)!r})[1 + i % 8], '', '',
       (i / {8 * SNAPSHOTS}) % 1000 + (i / 8) % {SNAPSHOTS} * 7 + i % 8,
       $1::timestamptz + $2::interval * (i / {8 * SNAPSHOTS}) / $4 + $3::interval * ((i / 8) % {SNAPSHOTS})
FROM generate_series($5::bigint, $6::bigint - 1) AS i
"""
# Appends only: the partition routing alone (rows of the last hour, so the current month's partition).
APPEND_SQL = f"""
INSERT INTO {HISTORY} (media_id, metric, breakdown, dimension, value, collected_at)
SELECT 16000000000000000 + i / 10, 'm' || i % 10, '', '', i, $1::timestamptz + interval '1 ms' * (i % 3600000)
FROM generate_series($2::bigint, $3::bigint - 1) AS i
"""
CURVE_SQL = f"""SELECT collected_at, value FROM {HISTORY}
WHERE media_id = $1 AND metric = $2 AND breakdown = '' AND dimension = ''
  AND collected_at >= $3 AND collected_at < $4 ORDER BY collected_at"""
CURVE_ALL_SQL = f"""SELECT collected_at, value FROM {HISTORY}
WHERE media_id = $1 AND metric = $2 AND breakdown = '' AND dimension = '' ORDER BY collected_at"""


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


async def timed(label: str, body: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await body()
    elapsed = time.perf_counter() - started
    say(f"{label}: {elapsed:.2f} s (load {os.getloadavg()[0]:.1f})")
    return elapsed


async def fill(conn: asyncpg.Connection, rows: int, first: datetime, span: timedelta) -> None:
    """--rows rows, index dropped during the bulk insert and rebuilt after (as one would load it)."""
    media = max(1, rows // (8 * SNAPSHOTS))
    posting_span = span - timedelta(days=31)
    await conn.execute(f"DROP INDEX {HISTORY}_media_idx")
    step = 2_000_000
    for lo in range(0, rows, step):
        await conn.execute(FILL_SQL, first, posting_span, SNAPSHOT_EVERY, media, lo, min(rows, lo + step))
    await conn.execute(f"CREATE INDEX {HISTORY}_media_idx ON {HISTORY} (media_id, collected_at)")
    await conn.execute(f"VACUUM ANALYZE {HISTORY}")


async def checkpoint(conn: asyncpg.Connection) -> None:
    """Every measurement starts from the same WAL state (needs superuser; skipped otherwise)."""
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


def writer_rows(run: int, count: int, bump: int, at: datetime) -> list[models.MediaInsightRow]:
    first = FIRST_WRITER_MEDIA + run * count
    return [models.MediaInsightRow(first + i // WRITER_METRICS, f"m{i % WRITER_METRICS}", "", "", i + bump,
                                   at) for i in range(count)]


async def run_writer(pool: asyncpg.Pool, rows: list[models.MediaInsightRow]) -> None:
    async with writer.Writer(pool) as w:  # shipped defaults
        for lo in range(0, len(rows), WRITER_METRICS):  # one add per media, as the collector does
            await w.add(models.Table.MEDIA_INSIGHT, rows[lo:lo + WRITER_METRICS])
        await w.flush()


async def curve_times(conn: asyncpg.Connection, sql: str, *args: object,
                      runs: int = 200) -> tuple[float, float]:
    statement = await conn.prepare(sql)
    await statement.fetch(*args)  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await statement.fetch(*args)
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000_000, help="synthetic history rows (default 30M)")
    parser.add_argument("--writer-rows", type=int, default=500_000, help="rows per writer measurement")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved writer runs per table (default 5)")
    parser.add_argument(
        "--dsn", default=os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set TEST_DATABASE_URL / DATABASE_URL")
    now = datetime.now(UTC)
    first = partitions.Month.of(now).next(-12).start  # 13 Pacific months up to now
    span = now - first
    admin = await asyncpg.connect(args.dsn)
    names = {kind: f"igc_bench_history_{kind}_{os.getpid()}" for kind in ("plain", "part")}
    conns: dict[str, asyncpg.Connection] = {}
    pools: dict[str, asyncpg.Pool] = {}
    try:
        for kind, name in names.items():
            await admin.execute(f'CREATE DATABASE "{name}"')
            dsn = urllib.parse.urlunsplit(urllib.parse.urlsplit(args.dsn)._replace(path=f"/{name}"))
            conns[kind] = await asyncpg.connect(dsn)
            await migrations.migrate(conns[kind], upto=2)
            pools[kind] = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        plain, part = conns["plain"], conns["part"]
        say(f"server {plain.get_server_version()}; {args.rows:,} rows over {span.days} days from "
            f"{first:%Y-%m-%d %H:%M}Z; 2 cores shared; load {os.getloadavg()}")
        for kind in ("plain", "part"):
            await timed(f"{kind}: fill {args.rows:,} rows at migration 002 (+ index, VACUUM ANALYZE)",
                        lambda kind=kind: fill(conns[kind], args.rows, first, span))  # type: ignore[misc]
        conversion_s = await timed("part: migrate (003: convert to partitioned, shipped batch size)",
                                   lambda: migrations.migrate(part))
        say(f"part: conversion {args.rows / conversion_s:,.0f} rows/s")
        await part.execute(f"VACUUM ANALYZE {HISTORY}")
        for kind in ("plain", "part"):
            count = await conns[kind].fetchval(f"SELECT count(*) FROM {HISTORY}")
            size = await conns[kind].fetchval("SELECT pg_database_size(current_database())")
            say(f"{kind}: {count:,} history rows, database {sizing.human_bytes(size)}")

        # -- writer throughput ------------------------------------------------------------------------------
        rates: dict[str, list[float]] = {}
        n = args.writer_rows - args.writer_rows % WRITER_METRICS
        for run in range(args.repeat):
            for kind in ("plain", "part") if run % 2 == 0 else ("part", "plain"):
                at = datetime.now(UTC)
                fresh = writer_rows(run, n, 0, at)
                changed = writer_rows(run, n, 1, at + timedelta(seconds=1))
                for label, rows in (("fresh", fresh), ("changed", changed)):
                    await checkpoint(conns[kind])
                    elapsed = await timed(f"{kind}: writer {label} {n:,} rows (run {run + 1})",
                                          lambda rows=rows, kind=kind: run_writer(pools[kind], rows))  # type: ignore[misc]
                    rates.setdefault(f"writer {label} {kind}", []).append(n / elapsed)
                await checkpoint(conns[kind])
                elapsed = await timed(
                    f"{kind}: history-only INSERT ... SELECT {n:,} rows (run {run + 1})",
                    lambda kind=kind, lo=run * n: conns[kind].execute(  # type: ignore[misc]
                        APPEND_SQL, datetime.now(UTC) - timedelta(hours=1), lo, lo + n))
                rates.setdefault(f"history insert {kind}", []).append(n / elapsed)

        # -- growth curve -----------------------------------------------------------------------------------
        media = await plain.fetchval(f"SELECT media_id FROM {HISTORY} WHERE collected_at >= $1 LIMIT 1",
                                     first + span / 2)
        posted = await plain.fetchval(f"SELECT min(collected_at) FROM {HISTORY} WHERE media_id = $1", media)
        window = (media, "reach", posted, posted + timedelta(days=90))
        curves: dict[str, tuple[float, float]] = {}
        for kind in ("plain", "part"):
            curves[f"90 days {kind}"] = await curve_times(conns[kind], CURVE_SQL, *window)
            curves[f"all time {kind}"] = await curve_times(conns[kind], CURVE_ALL_SQL, media, "reach")
        plan = await part.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {CURVE_SQL}", *window)
        points = len(await part.fetch(CURVE_SQL, *window))

        # -- drop one month ---------------------------------------------------------------------------------
        oldest = (await partitions.list_partitions(part, partitions.HISTORY))[0]
        assert oldest.month is not None
        month_rows = await part.fetchval(f'SELECT count(*) FROM "{oldest.name}"')
        drop = retention.Action(retention.Kind.DROP, oldest, oldest.month.end)
        started = time.perf_counter()
        [dropped] = await retention.apply(part, [drop])
        drop_part_s = time.perf_counter() - started
        say(f"part: drop {oldest.name} ({month_rows:,} rows): {drop_part_s:.3f} s "
            f"(the DROP transaction {dropped.duration_s:.3f} s)")
        drop_plain_s = await timed(
            f"plain: DELETE the same month ({month_rows:,} rows)",
            lambda: plain.execute(f"DELETE FROM {HISTORY} WHERE collected_at < $1", oldest.month.end))  # type: ignore[union-attr]

        # -- retention run ----------------------------------------------------------------------------------
        before = await part.fetchval("SELECT pg_database_size(current_database())")
        rows_before = await part.fetchval(f"SELECT count(*) FROM {HISTORY}")
        actions = await retention.current_plan(part, RETENTION, datetime.now(UTC))
        started = time.perf_counter()
        outcomes = await retention.apply(part, actions)
        retention_s = time.perf_counter() - started
        after = await part.fetchval("SELECT pg_database_size(current_database())")
        rows_after = await part.fetchval(f"SELECT count(*) FROM {HISTORY}")
        sizes = await sizing.measure(pools["part"], datetime.now(UTC), window_days=7)
        history_size = next(s for s in sizes if s.table == HISTORY)

        # -- report -----------------------------------------------------------------------------------------
        median = {label: statistics.median(values) for label, values in rates.items()}
        print("\n== results (medians of", args.repeat, "interleaved runs; shipped defaults) ==")
        for what in ("writer fresh", "writer changed", "history insert"):
            p, q = median[f"{what} plain"], median[f"{what} part"]
            print(f"{what:<16} unpartitioned {p:>10,.0f} rows/s  partitioned {q:>10,.0f} rows/s  "
                  f"partitioned/unpartitioned {q / p:.3f} (goal >= 0.90)")
        for label, (p50, p99) in curves.items():
            print(f"growth curve {label:<16} median {p50:6.3f} ms  p99 {p99:6.3f} ms  (goal <= 5 ms)")
        print(f"growth curve: media {media}, reach, {points} points over 90 days; EXPLAIN (partitioned):")
        print("\n".join("    " + r[0] for r in plan))
        print(f"drop one month ({month_rows:,} rows): partitioned {drop_part_s:.3f} s (goal <= 1 s; "
              f"the DROP transaction alone {dropped.duration_s:.3f} s), "
              f"unpartitioned DELETE {drop_plain_s:.2f} s (and leaves dead rows to vacuum)")
        print(f"conversion of {args.rows:,} rows by migrate: {conversion_s:.1f} s")
        print(f"retention run (history_days={RETENTION.history_days}, "
              f"history_full_days={RETENTION.history_full_days}; {len(outcomes)} actions) "
              f"{retention_s:.1f} s: "
              f"rows {rows_before:,} -> {rows_after:,}, database {sizing.human_bytes(before)} -> "
              f"{sizing.human_bytes(after)}")
        for outcome in outcomes:
            print(f"    {outcome.action.kind.value:<18} {outcome.action.partition.name}: rows "
                  f"{outcome.rows_before:,} -> {outcome.rows_after:,} in {outcome.duration_s:.2f} s")
        print(f"history bytes per row (heap + index, after retention): "
              f"{history_size.bytes / max(1, history_size.rows):.1f}")
    finally:
        for pool in pools.values():
            await pool.close()
        for conn in conns.values():
            await conn.close()
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
