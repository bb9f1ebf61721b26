"""Server time and size of the web UI's pages with 10,000 accounts in the database.

    .venv/bin/python scripts/bench_web.py [--accounts 10000] [--repeat 20] [--dsn postgresql://...]

Creates a scratch database (dropped at the end) on the server of --dsn (default $TEST_DATABASE_URL, then
$DATABASE_URL, then the local test server), applies the migrations and fills it with synthetic rows by COPY:
per account a profile, five job states (2 % failing with an error, 1 % late), 10 media with 5 insights each
and 30 days of reach / follower_count / views. Then it serves the real `collector.web` app (the shipped
defaults: 50 rows a page) on an `HttpServer` on 127.0.0.1 and requests each page `--repeat` times.

Printed per page: the server time (median and max, measured by a middleware around the handler, i.e. the
queries plus the rendering), the Python CPU time of the handler (the rest of the server time is PostgreSQL
and waiting for a CPU: the load average is printed too), the round trip seen by the client, and the size
of the HTML. The baseline,
measured in the same run, is the static stylesheet: the cost of the server and the client themselves.
The goal is < 200 ms of server time per page and <= 200 KB for an /accounts page.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import httpserver, metrics, models, settings
from collector.storage import migrations
from collector.web import app as web_app

JOBS = [job.value for job in models.Job]
MEDIA_PER_ACCOUNT = 10
DAYS = 30
BASE_ID = 17841400000000000


class BenchSource:
    """The `pages.Source` of the benchmark: a config of N accounts, the pool, fresh counters."""

    def __init__(self, config: settings.Config, pool: asyncpg.Pool) -> None:
        self._config = config
        self._pool = pool
        self._metrics = metrics.Metrics()

    @property
    def config(self) -> settings.Config:
        return self._config

    @property
    def accounts(self) -> Sequence[models.Account]:
        return self._config.accounts

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._pool

    @property
    def metrics(self) -> metrics.Metrics:
        return self._metrics

    def usage(self, scope: str) -> Mapping[str, float]:
        return {}

    def paused(self, scope: str) -> int:
        return 0

    def held(self, scope: str) -> int:
        return 0

    def token_expiry_days(self, account: models.Account, now: datetime) -> float | None:
        return None

    def token_error(self, ig_user_id: str) -> str | None:
        return None


async def fill(conn: asyncpg.Connection, accounts: int, now: datetime) -> dict[str, int]:
    ids = [BASE_ID + i for i in range(accounts)]
    statuses = ["token_invalid" if i % 50 == 7 else "permission_denied" if i % 97 == 3 else "ok"
                for i in range(accounts)]
    await conn.copy_records_to_table("ig_account", records=[
        (uid, f"user_{i:05d}", "instagram" if i % 2 else "facebook", 100 + (i * 7919) % 100_000, 10 + i % 90,
         statuses[i], None if statuses[i] == "ok" else "Error validating access token (synthetic)", now)
        for i, uid in enumerate(ids)],
        columns=["ig_user_id", "username", "login", "followers_count", "media_count", "status",
                 "status_detail", "updated_at"])
    states = []
    for i, uid in enumerate(ids):
        for k, job in enumerate(JOBS):
            failing = statuses[i] != "ok" or (i + k) % 53 == 0
            late = i % 101 == 5
            success = None if statuses[i] != "ok" else now - timedelta(days=5 if late else 0, minutes=i % 50)
            states.append((uid, job, success, now - timedelta(minutes=(i * 13 + k) % 600),
                           "synthetic error (HTTP 500)" if failing else None, 1 if failing else 0))
    await conn.copy_records_to_table("collector_job_state", records=states, columns=[
        "ig_user_id", "job", "last_success_at", "last_attempt_at", "last_error", "consecutive_failures"])
    media, insights = [], []
    for i, uid in enumerate(ids):
        for m in range(MEDIA_PER_ACCOUNT):
            media_id = 17900000000000000 + i * MEDIA_PER_ACCOUNT + m
            posted = now - timedelta(days=m * 3, hours=i % 24)
            media.append((media_id, uid, "IMAGE", "FEED", posted, None, 10 + m, m, posted, now, now))
            insights += [(media_id, metric, "", "", 100 + (i + m * 31) % 900, now)
                         for metric in ("views", "reach", "saved", "shares", "total_interactions")]
    await conn.copy_records_to_table("ig_media", records=media, columns=[
        "media_id", "ig_user_id", "media_type", "media_product_type", "posted_at", "permalink", "like_count",
        "comments_count", "first_seen_at", "last_seen_at", "insights_refreshed_at"])
    await conn.copy_records_to_table("ig_media_insight", records=insights, columns=[
        "media_id", "metric", "breakdown", "dimension", "value", "collected_at"])
    day_end = now.replace(hour=8, minute=0, second=0, microsecond=0)
    series = [(uid, metric, "day", day_end - timedelta(days=d), "", "", (i + d * 17) % 500, now)
              for i, uid in enumerate(ids) for d in range(DAYS)
              for metric in ("reach", "follower_count", "views")]
    await conn.copy_records_to_table("ig_account_insight", records=series, columns=[
        "ig_user_id", "metric", "period", "end_time", "breakdown", "dimension", "value", "collected_at"])
    await conn.execute("ANALYZE")
    return {"ig_account": len(ids), "collector_job_state": len(states), "ig_media": len(media),
            "ig_media_insight": len(insights), "ig_account_insight": len(series)}


async def measure(base: str, path: str, repeat: int, server_ms: list[float], cpu_ms: list[float],
                  session: aiohttp.ClientSession) -> dict[str, float]:
    round_trips, sizes = [], []
    server_ms.clear()
    cpu_ms.clear()
    for _ in range(repeat):
        start = time.perf_counter()
        async with session.get(base + path) as response:
            body = await response.read()
            assert response.status == 200, (path, response.status)
        round_trips.append((time.perf_counter() - start) * 1000)
        sizes.append(len(body))
    return {"server_median_ms": statistics.median(server_ms), "server_max_ms": max(server_ms),
            "python_cpu_median_ms": statistics.median(cpu_ms),
            "round_trip_median_ms": statistics.median(round_trips), "size_kb": max(sizes) / 1024}


async def main(args: argparse.Namespace) -> int:
    dsn = args.dsn or os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL") \
        or "postgresql://root@127.0.0.1:5432/test"
    name = f"bench_web_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    scratch = urllib.parse.urlunsplit(urllib.parse.urlsplit(dsn)._replace(path=f"/{name}"))
    try:
        conn = await asyncpg.connect(scratch)
        try:
            await migrations.migrate(conn)
            now = datetime.now(UTC)
            started = time.perf_counter()
            counts = await fill(conn, args.accounts, now)
            print(f"filled in {time.perf_counter() - started:.1f} s: "
                  + ", ".join(f"{table} {n:,}" for table, n in counts.items()), flush=True)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(scratch, min_size=1,
                                         max_size=settings.DatabaseSettings().pool_max_size)
        accounts = tuple(models.Account(str(BASE_ID + i), "instagram" if i % 2 else "facebook",
                                        models.Secret(f"token-{i:08d}-synthetic"), f"bench line {i}")
                         for i in range(args.accounts))
        config = settings.Config(source=Path("bench.toml"), accounts=accounts,
                                 http=settings.HttpSettings(listen="127.0.0.1:0"))
        server_ms: list[float] = []
        cpu_ms: list[float] = []

        @web.middleware
        async def timed(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
            start, cpu = time.perf_counter(), time.process_time()
            response = await handler(request)
            server_ms.append((time.perf_counter() - start) * 1000)
            cpu_ms.append((time.process_time() - cpu) * 1000)  # one request at a time: this request's
            return response

        server = httpserver.HttpServer("127.0.0.1:0")
        server.app.middlewares.append(timed)
        web_app.WebUI(BenchSource(config, pool)).attach(server)
        pages = [("baseline: /static/style.css", "/static/style.css"),
                 ("/", "/"),
                 ("/accounts", "/accounts"),
                 ("/accounts?limit=200", "/accounts?limit=200"),
                 ("/accounts sorted by oldest success", "/accounts?sort=oldest_success&desc=1"),
                 ("/accounts filtered (text)", "/accounts?q=user_09"),
                 ("/accounts last page", f"/accounts?offset={args.accounts - 50}"),
                 ("/accounts/{id}", f"/accounts/{BASE_ID + args.accounts // 2}")]
        try:
            if args.keep and args.repeat == 0:
                return 0
            await server.start()
            base = f"http://127.0.0.1:{server.port}"
            print(f"{args.accounts:,} accounts; shipped defaults (50 rows a page); {args.repeat} requests "
                  f"a page after one warm-up; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            print(f"{'page':40} {'server median':>14} {'server max':>11} {'python CPU':>11} "
                  f"{'round trip':>11} {'size':>9}")
            async with aiohttp.ClientSession() as session:
                for label, path in pages:
                    await measure(base, path, 1, server_ms, cpu_ms, session)  # warm-up: templates, pool
                    m = await measure(base, path, args.repeat, server_ms, cpu_ms, session)
                    print(f"{label:40} {m['server_median_ms']:11.1f} ms {m['server_max_ms']:8.1f} ms "
                          f"{m['python_cpu_median_ms']:8.1f} ms "
                          f"{m['round_trip_median_ms']:8.1f} ms {m['size_kb']:6.1f} KB", flush=True)
        finally:
            await server.stop()
            await pool.close()
    finally:
        if args.keep:
            print(f"kept the scratch database: {scratch}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database (to EXPLAIN queries)")
    sys.exit(asyncio.run(main(parser.parse_args())))
