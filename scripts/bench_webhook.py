"""Webhook acknowledgement latency: how long a signed story_insights delivery waits for its 200, now that
the 200 goes out only once its rows are committed (group commit through Writer.wait_committed).

    .venv/bin/python scripts/bench_webhook.py [--concurrency 200] [--rounds 5] [--sequential 50]

The receiver runs as the daemon runs it (shipped defaults: the writer's 1 s flush interval, 200,000-row
buffer, 2 connections; commit timeout 10 s) on an aiohttp server on 127.0.0.1, against a scratch database
(on $DATABASE_URL's server, else 127.0.0.1:5432 if it answers, else the embedded PostgreSQL). Printed:

  baseline      deliveries sent one at a time: each waits for a commit of its own
  concurrent    `--concurrency` deliveries at once, `--rounds` times: p50 / p99 / max of the time from
                sending a delivery to its 200, and how many writer transactions they shared
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_throttle

from collector import logs, metrics, models, settings, webhook
from collector.storage import writer as storage_writer

APP_SECRET = "bench-webhook-app-secret"
ACCOUNT = "17841400000000001"
PATH = "/webhooks/instagram"


def delivery(media_id: int) -> tuple[bytes, str]:
    body = orjson.dumps({"object": "instagram", "entry": [{
        "id": ACCOUNT, "time": int(time.time()),
        "changes": [{"field": "story_insights", "value": {
            "media_id": str(media_id), "reach": 120, "replies": 3, "taps_forward": 40, "exits": 7}}]}]})
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return body, signature


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50_ms": round(cuts[49] * 1000, 1), "p99_ms": round(cuts[98] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


async def bench(args: argparse.Namespace) -> dict[str, object]:
    counters = metrics.Metrics()
    config = settings.WebhookSettings(verify_token=models.Secret("bench-verify"),
                                      app_secret=models.Secret(APP_SECRET), path=PATH)
    account = models.Account(ig_user_id=ACCOUNT, login="facebook", access_token=models.Secret("EAAbench"),
                             source="bench")
    media_ids = iter(range(17_950_000_000_000_000, 17_960_000_000_000_000))
    with tempfile.TemporaryDirectory() as state:
        async with bench_throttle.database(Path(state)) as (dsn, where):
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
            writer = storage_writer.Writer(pool, metrics=counters)  # the shipped defaults
            writer.start()
            receiver = webhook.WebhookReceiver(config, accounts=lambda: {ACCOUNT: account}, writer=writer,
                                               metrics=counters)
            app = web.Application()
            app.add_routes(receiver.routes())
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}"
            try:
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector) as session:
                    async def post(media_id: int) -> float:
                        body, signature = delivery(media_id)
                        started = time.perf_counter()
                        async with session.post(url, data=body,
                                                headers={"X-Hub-Signature-256": signature}) as response:
                            await response.read()
                            assert response.status == 200, response.status
                        return time.perf_counter() - started

                    # Warm up with as many connections as the measured rounds use: the first burst of 200 new
                    # connections overflows the listen backlog (128) and some wait for a SYN retry (1 s).
                    await asyncio.gather(*(post(next(media_ids)) for _ in range(args.concurrency)))
                    sequential = [await post(next(media_ids)) for _ in range(args.sequential)]
                    commits_before = _commits(counters)
                    concurrent: list[float] = []
                    for _ in range(args.rounds):
                        concurrent += await asyncio.gather(
                            *(post(next(media_ids)) for _ in range(args.concurrency)))
                    commits = _commits(counters) - commits_before
            finally:
                await runner.cleanup()
                await writer.close()
                await pool.close()
    return {
        "database": where,
        "settings": "shipped defaults (writer flush_interval_s 0.25, connections 2; commit timeout 10 s)",
        "baseline_sequential": {"deliveries": args.sequential, **quantiles(sequential)},
        "concurrent": {"concurrency": args.concurrency, "rounds": args.rounds, "deliveries": len(concurrent),
                       **quantiles(concurrent), "writer_commits": commits,
                       "deliveries_per_commit": round(len(concurrent) / max(1, commits), 1)},
    }


def _commits(counters: metrics.Metrics) -> int:
    """Writer batches committed so far (the flush-time histogram's count)."""
    for family in counters.writer_flush_seconds.collect():
        for sample in family.samples:
            if sample.name.endswith("_count"):
                return int(sample.value)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=50)
    args = parser.parse_args()
    logs.configure(json=False, level="warning")
    result = asyncio.run(bench(args))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
