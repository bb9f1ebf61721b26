"""The lease path of several daemons on one database (collector.leases), 1 instance against 3, same run.

    .venv/bin/python scripts/bench_cluster.py [--accounts 10000] [--instances 1,3] [--dsn postgresql://...]
                                              [--job-ms 0] [--json FILE]

What it measures, exactly: not a collection. Each instance is its own process running the daemon's
claim path against a scratch database (dropped at the end): `Leases.register` of every account, then
`Leases.claim` of up to `[collect] max_concurrent_accounts` accounts at a time (shipped default 100), for
each claimed account the due jobs chosen by `leases.due_jobs` from the job states the claim returned, each
"run" as `--job-ms` of sleep (default 0: no Graph call at all, so the figures are the coordination
overhead alone), its job state written through the real `storage.writer.Writer` and committed
(`flush`), then `Leases.release` with `leases.next_due`; and the renewal loop every lease_s / 3. An
instance stops after its claims came back empty for 1 s (every account is then collected; its jobs are
next due in an hour or more). The instances run at the same time on one database.

Printed per instance count:
  claim latency p50 / p99   wall time of one claim statement that returned accounts (ms)
  empty claims              claim statements that found nothing (idle polls, one per tick_s)
  lease round trips / job   (register + claim + release + renew statements) / jobs run
  writer commits / job      writer transactions / jobs run (each is ~4 statements; 0 would not be safe)
  jobs run                  total over the instances; 5 per account when each account is run once
  duplicate jobs            job runs beyond one per (account, job): 0 means no two instances ran one
  wall s                    from the first claim to the last instance's end

Settings: [cluster] lease_s = 60 and [collect] max_concurrent_accounts = 100 (the shipped defaults),
tick_s = 1.0 (default). Non-default flags are printed beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector import leases, metrics, models, passes, scheduler, settings
from collector.storage import migrations, writer

FIRST_ID = 17_841_400_000_000_000
RESULT_PREFIX = "BENCH_RESULT "
IDLE_STOP_S = 1.0


class CountingLeases(leases.Leases):
    """Leases that count their statements and time their claims (the bench's only addition)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.statements = 0
        self.claim_ms: list[float] = []
        self.empty_claims = 0

    async def _execute(self, sql: str, *args: object) -> None:
        self.statements += 1
        await super()._execute(sql, *args)

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        self.statements += 1
        if sql is not leases.CLAIM_SQL:
            return await super()._fetch(sql, *args)
        started = time.perf_counter()
        rows = await super()._fetch(sql, *args)
        if rows:
            self.claim_ms.append((time.perf_counter() - started) * 1000)
        else:
            self.empty_claims += 1
        return rows


async def instance_main(dsn: str, name: str, accounts: int, job_ms: float) -> dict[str, Any]:
    schedule = settings.ScheduleSettings()
    collect = settings.CollectSettings()
    cluster = settings.ClusterSettings(instance_id=name)
    ids = [str(FIRST_ID + i) for i in range(accounts)]
    int_ids = [int(i) for i in ids]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=settings.DatabaseSettings().pool_max_size)
    counters = metrics.Metrics()
    lease = CountingLeases(pool, cluster, counters, started_at=datetime.now(UTC))
    runs: list[tuple[str, str]] = []
    try:
        await lease.start()
        now = datetime.now(UTC)
        await lease.register({i: now for i in ids}, now)  # no state yet: every account due now

        async def renew() -> None:
            while True:
                await asyncio.sleep(lease.renew_interval_s)
                await lease.renew()

        renewer = asyncio.create_task(renew())
        async with writer.Writer(pool, metrics=counters) as w:
            started = time.perf_counter()
            idle_since: float | None = None
            while True:
                now = datetime.now(UTC)
                claims = await lease.claim(int_ids, now, collect.max_concurrent_accounts)
                if not claims:
                    idle_since = idle_since or time.perf_counter()
                    if time.perf_counter() - idle_since >= IDLE_STOP_S:
                        break
                    await asyncio.sleep(schedule.tick_s)
                    continue
                idle_since = None
                done: dict[str, datetime] = {}
                for claim in claims:
                    states = dict(claim.states)
                    uid = claim.ig_user_id
                    for job in leases.due_jobs(uid, states, claim.due_from, now, schedule=schedule,
                                               order=passes.PASS_JOBS):
                        if job_ms:
                            await asyncio.sleep(job_ms / 1000)
                        at = datetime.now(UTC)
                        states[job] = (states.get(job) or scheduler.JobState()).after(at, succeeded=True)
                        await w.add(models.Table.JOB_STATE, [models.JobStateRow(int(uid), job.value, True, at,
                                                                                 None)])
                        runs.append((uid, job.value))
                    done[uid] = leases.next_due(uid, states, claim.due_from, schedule)
                await w.flush()
                await lease.release(done)
            wall_s = time.perf_counter() - started - IDLE_STOP_S
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        await lease.release_all({})
        commits = sum(s.value for f in counters.writer_flush_seconds.collect() for s in f.samples
                      if s.name.endswith("_count"))
    finally:
        await pool.close()
    return {"instance": name, "claim_ms": lease.claim_ms, "empty_claims": lease.empty_claims,
            "statements": lease.statements, "writer_commits": int(commits), "runs": runs, "wall_s": wall_s,
            "claims": lease.counters.claims, "takeovers": lease.counters.takeovers}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_cluster(dsn: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    children = [subprocess.Popen(
        [sys.executable, __file__, "instance", "--dsn", dsn, "--name", f"bench-{n}-{i}",
         "--accounts", str(args.accounts), "--job-ms", str(args.job_ms)],
        stdout=subprocess.PIPE, text=True) for i in range(n)]
    results = []
    for child in children:
        out, _ = child.communicate()
        line = next(x for x in out.splitlines() if x.startswith(RESULT_PREFIX))
        results.append(orjson.loads(line[len(RESULT_PREFIX):]))
    claim_ms = [ms for r in results for ms in r["claim_ms"]]
    runs = collections.Counter(tuple(run) for r in results for run in r["runs"])
    jobs = sum(runs.values())
    statements = sum(r["statements"] for r in results)
    return {
        "instances": n, "claim_p50_ms": round(percentile(claim_ms, 0.5), 2),
        "claim_p99_ms": round(percentile(claim_ms, 0.99), 2), "claims": len(claim_ms),
        "empty_claims": sum(r["empty_claims"] for r in results),
        "lease_round_trips_per_job": round(statements / jobs, 4) if jobs else None,
        "writer_commits_per_job": round(sum(r["writer_commits"] for r in results) / jobs, 4)
        if jobs else None,
        "jobs_run": jobs, "duplicate_jobs": jobs - len(runs),
        "accounts_run": len({account for account, _ in runs}),
        "per_instance_accounts": [r["claims"] for r in results],
        "wall_s": round(max(r["wall_s"] for r in results), 2),
    }


async def with_scratch_database(server_dsn: str, body: Any) -> Any:
    name = f"bench_cluster_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = urllib.parse.urlunsplit(urllib.parse.urlsplit(server_dsn)._replace(path=f"/{name}"))
        conn = await asyncpg.connect(dsn)
        try:
            await migrations.migrate(conn)
        finally:
            await conn.close()
        return await asyncio.to_thread(body, dsn)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("role", nargs="?", default="parent", choices=("parent", "instance"))
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--instances", default="1,3")
    parser.add_argument("--job-ms", type=float, default=0.0)
    parser.add_argument("--dsn", default=os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
                        or "postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--name", default="bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.role == "instance":
        result = asyncio.run(instance_main(args.dsn, args.name, args.accounts, args.job_ms))
        sys.stdout.write(RESULT_PREFIX + orjson.dumps(result).decode() + "\n")
        return 0
    non_default = {k: v for k, v in (("accounts", args.accounts), ("job_ms", args.job_ms)) if
                   v != parser.get_default(k)}
    rows = [asyncio.run(with_scratch_database(args.dsn, lambda dsn, n=int(n): run_cluster(dsn, n, args)))
            for n in args.instances.split(",")]
    print(f"accounts {args.accounts}, lease_s 60, max_concurrent_accounts 100, tick_s 1.0 (shipped defaults)"
          + (f"; non-default: {non_default}" if non_default else ""))
    header = ("instances", "claim_p50_ms", "claim_p99_ms", "claims", "empty_claims",
              "lease_round_trips_per_job", "writer_commits_per_job", "jobs_run", "duplicate_jobs",
              "accounts_run", "wall_s")
    print("  ".join(header))
    for row in rows:
        print("  ".join(str(row[h]).ljust(len(h)) for h in header))
        print(f"    accounts claimed per instance: {row['per_instance_accounts']}")
    if args.json:
        args.json.write_text(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    return 0 if all(r["duplicate_jobs"] == 0 and r["accounts_run"] == args.accounts for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
