"""Throughput of the storage writer for media-insight rows, against baselines measured in the same run.

    .venv/bin/python scripts/bench_writer.py [--rows 1000000] [--batch-rows 50000] [--connections 2]
                                             [--repeat 3] [--dsn postgresql://...]

Creates a scratch database (dropped at the end) on the server of --dsn (default $TEST_DATABASE_URL, then
$DATABASE_URL), applies the migrations and measures, each on an empty or prepared ig_media_insight:

  copy      plain COPY into the target table (no upsert: the ceiling)
  naive     COPY into a temp staging table + INSERT ... ON CONFLICT DO UPDATE (no history), fresh / half
  writer    storage.writer.Writer end to end (add() per media of 10 metrics, then flush()), fresh / half /
            unchanged re-run; it also maintains ig_media_insight_history

"half": the second pass covers keys [N/2, 3N/2): half of its rows exist already, with changed values.
--repeat runs the whole sequence that many times (interleaved, so load from other processes hits every
method alike) and prints each run, then the median per method and the ratios of the medians.
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

from collector import models
from collector.storage import migrations, writer

METRICS = tuple(
    sys.intern(m) for m in ("reach", "views", "likes", "comments", "saved", "shares", "total_interactions",
                             "profile_visits", "follows", "ig_reels_avg_watch_time"))
PER_MEDIA = len(METRICS)
FIRST_MEDIA_ID = 17_900_000_000_000_000  # Graph-sized ids


def make_rows(first: int, count: int, bump: int, at: datetime) -> list[models.MediaInsightRow]:
    """`count` rows from key number `first`; ten metrics per media; value = key number + bump."""
    return [
        models.MediaInsightRow(FIRST_MEDIA_ID + i // PER_MEDIA, METRICS[i % PER_MEDIA], "", "", i + bump, at)
        for i in range(first, first + count)
    ]


async def timed(label: str, rows: int, body: Callable[[], Awaitable[None]],
                results: dict[str, list[float]]) -> None:
    started = time.perf_counter()
    cpu = time.process_time()
    await body()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    results.setdefault(label, []).append(rows / elapsed)
    print(f"  {label:<22} {rows:>9,} rows {elapsed:7.2f} s {rows / elapsed:>10,.0f} rows/s"
          f"  client CPU {cpu * 1e6 / rows:4.2f} µs/row  load {os.getloadavg()[0]:.1f}", flush=True)


async def reset(conn: asyncpg.Connection) -> None:
    await conn.execute("TRUNCATE ig_media_insight, ig_media_insight_history")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")  # every measurement starts from the same WAL state


async def copy_batches(conn: asyncpg.Connection, table: str, rows: list[models.MediaInsightRow], batch: int,
                       after: str | None = None) -> None:
    for start in range(0, len(rows), batch):
        async with conn.transaction():
            await conn.copy_records_to_table(table, records=rows[start:start + batch])
            if after:
                await conn.execute(after)


NAIVE_UPSERT = """
INSERT INTO ig_media_insight AS t SELECT * FROM bench_stage
ON CONFLICT (media_id, metric, breakdown, dimension) DO UPDATE
    SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at
"""


async def run_writer(pool: asyncpg.Pool, rows: list[models.MediaInsightRow], batch: int,
                     connections: int) -> None:
    async with writer.Writer(pool, batch_max_rows=batch, buffer_max_rows=max(200_000, 4 * batch),
                             connections=connections) as w:
        for start in range(0, len(rows), PER_MEDIA):  # one add per media, as the collector does
            await w.add(models.Table.MEDIA_INSIGHT, rows[start:start + PER_MEDIA])
        await w.flush()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=50_000, help="batch size of every method")
    parser.add_argument("--connections", type=int, default=2, help="the writer's connections")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole sequence this many times")
    parser.add_argument(
        "--dsn", default=os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    if not args.dsn:
        parser.error("give --dsn or set TEST_DATABASE_URL / DATABASE_URL")
    n, batch = args.rows - args.rows % PER_MEDIA, args.batch_rows
    scratch = f"igc_bench_{os.getpid()}"
    admin = await asyncpg.connect(args.dsn)
    await admin.execute(f'CREATE DATABASE "{scratch}"')
    parts = urllib.parse.urlsplit(args.dsn)
    dsn = urllib.parse.urlunsplit(parts._replace(path=f"/{scratch}"))
    try:
        conn = await asyncpg.connect(dsn)
        await migrations.migrate(conn)
        await conn.execute("CREATE TEMP TABLE bench_stage (LIKE ig_media_insight) ON COMMIT DELETE ROWS")
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        fresh = make_rows(0, n, 0, t0)
        half = make_rows(n // 2, n, 1, t0 + timedelta(hours=1))
        print(f"{n:,} media-insight rows, batches of {batch:,}, writer connections {args.connections}, "
              f"server {conn.get_server_version()}, load {os.getloadavg()}")
        results: dict[str, list[float]] = {}
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max(2, args.connections))
        for run in range(args.repeat):
            print(f"run {run + 1}/{args.repeat}")
            await reset(conn)
            await timed("copy (target)", n, lambda: copy_batches(conn, "ig_media_insight", fresh, batch),
                        results)
            await reset(conn)
            await timed("naive fresh", n,
                        lambda: copy_batches(conn, "bench_stage", fresh, batch, NAIVE_UPSERT), results)
            await timed("naive half", n,
                        lambda: copy_batches(conn, "bench_stage", half, batch, NAIVE_UPSERT), results)
            await reset(conn)
            await timed("writer fresh", n, lambda: run_writer(pool, fresh, batch, args.connections), results)
            await timed("writer half", n, lambda: run_writer(pool, half, batch, args.connections), results)
            await timed("writer unchanged", n, lambda: run_writer(pool, half, batch, args.connections),
                        results)
            history = await conn.fetchval("SELECT count(*) FROM ig_media_insight_history")
            current = await conn.fetchval("SELECT count(*) FROM ig_media_insight")
            expected_history = n + n // 2 + n // 2  # fresh + new half + changed half
            print(f"  check: ig_media_insight {current:,} rows (expect {n + n // 2:,}), "
                  f"history {history:,} (expect {expected_history:,})")
            if (current, history) != (n + n // 2, expected_history):
                raise SystemExit("writer stored the wrong rows")
        await pool.close()
        await conn.close()

        median = {label: statistics.median(rates) for label, rates in results.items()}
        print(f"medians of {args.repeat} run(s), rows/s:")
        for label, rate in median.items():
            print(f"  {label:<22} {rate:>10,.0f}")
        print("ratios of the medians:")
        for a, b in (("writer fresh", "naive fresh"), ("writer half", "naive half"),
                     ("writer fresh", "copy (target)"), ("writer unchanged", "naive half")):
            print(f"  {a} / {b}: {median[a] / median[b]:.2f}")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
