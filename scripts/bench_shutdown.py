"""How long `ig-collector once` and `ig-collector run` take to exit after SIGTERM while calls are throttled.

    .venv/bin/python scripts/bench_shutdown.py [--repeat 3] [--accounts 6] [--media 12]

For each command, `--repeat` times each: a fresh scratch database (bench_throttle.database), the simulator
subprocess reset (budgets and blocks cleared), the command started as a subprocess with the SHIPPED
DEFAULTS (only base URLs, database URL and accounts file set), SIGTERM once the simulator has answered
`--throttled` calls with 80002 (each account blocked `--block-s` after `--account-budget` calls, regain
time in minutes as Meta reports it), and the time from the signal to the process's exit measured.

Baseline, measured in the same run: the same, on a simulator without budgets (nothing throttled), with the
signal sent after as many calls as the throttled run had made. The target (issue 10): exit within 1 s plus
the longest request still on the wire (here at most --latency-ms x 1.5, or --slow-delay-s for the 'slow'
faults), never more than shutdown_grace_s (10 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_throttle  # the simulator subprocess and scratch-database helpers

from collector import logs, settings

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--accounts", type=int, default=6)
    p.add_argument("--media", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--latency-ms", type=float, default=50.0, help="simulated Graph latency")
    p.add_argument("--account-budget", type=int, default=10, help="calls per account before its block")
    p.add_argument("--block-s", type=float, default=600.0, help="how long a blocked account stays blocked")
    p.add_argument("--fault-rate", type=float, default=0.05)
    p.add_argument("--slow-delay-s", type=float, default=2.0)
    p.add_argument("--throttled", type=int, default=3, help="80002 answers before the signal")
    return p.parse_args()


def sim_args(args: argparse.Namespace, *, budget: bool) -> argparse.Namespace:
    """The namespace bench_throttle.simulator reads. With budgets, the usage headers are withheld (only
    throttled answers carry one), as in tests/test_shutdown.py: the budget pacing would otherwise keep the
    accounts out of the blocks whose pauses this measures the stop during."""
    return argparse.Namespace(
        fault_rate=args.fault_rate, seed=args.seed, accounts=args.accounts, media=args.media,
        latency_ms=args.latency_ms, backfill_days=30, account_budget=args.account_budget if budget else 0,
        budget_window_s=3600.0, block_s=args.block_s, slow_delay_s=args.slow_delay_s,
        usage_after_calls=10**9 if budget else 0, usage_lag_calls=0)


def write_config(directory: Path, base_url: str, dsn: str) -> Path:
    """Shipped defaults, but for where the Graph API, the database and the accounts are."""
    path = directory / "config.toml"
    path.write_text(f"""state_dir = {json.dumps(str(directory / 'state'))}
accounts_file = "accounts.csv"

[database]
url = {json.dumps(dsn)}

[graph]
instagram_base_url = {json.dumps(base_url)}
facebook_base_url = {json.dumps(base_url)}
""")
    return path


async def stats(session: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with session.get(f"{base_url}/__sim/stats") as response:
        result: dict[str, Any] = await response.json()
        return result


async def one(command: str, directory: Path, base_url: str, *, until_throttled: int | None,
              until_calls: int | None) -> tuple[float, int, int]:
    """(seconds from SIGTERM to exit, calls before the signal, exit code) of one run."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base_url}/__sim/reset") as response:
            assert response.status == 200
        async with bench_throttle.database(directory) as (dsn, _):
            config = write_config(directory, base_url, dsn)
            env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
            extra = ["--no-progress"] if command == "once" else []
            log = directory / f"{command}.log"
            with log.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "collector", command, "-c", str(config), "--log-json", *extra,
                    cwd=ROOT, env=env, stdout=out, stderr=out)
            try:
                deadline = time.monotonic() + 120
                while True:
                    snap = await stats(session, base_url)
                    if until_throttled is not None and snap["throttled_total"] >= until_throttled:
                        break
                    if until_calls is not None and snap["calls"] >= until_calls:
                        break
                    if proc.returncode is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{command} did not get there: {log.read_text()[-2000:]}")
                    await asyncio.sleep(0.02)
                calls = snap["calls"]
                signalled = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = await proc.wait()
                return time.monotonic() - signalled, calls, code
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def summary(samples: list[float]) -> str:
    return (f"median {statistics.median(samples):.3f} s, max {max(samples):.3f} s "
            f"({', '.join(f'{s:.3f}' for s in samples)})")


async def bench(args: argparse.Namespace) -> list[str]:
    grace_s = settings.ScheduleSettings().shutdown_grace_s
    lines = [f"shipped defaults: shutdown_grace_s {grace_s:g} s, graph request_timeout_s "
             f"{settings.GraphSettings().request_timeout_s:g} s; simulator: {args.accounts} accounts x "
             f"{args.media} media, latency {args.latency_ms:g} ms, faults {args.fault_rate:.0%} "
             f"(slow answers {args.slow_delay_s:g} s)",
             f"throttled: {args.account_budget} calls per account, then blocked {args.block_s:g} s (80002, "
             f"regain {args.block_s / 60:g} min); SIGTERM after {args.throttled} throttled answers"]
    with tempfile.TemporaryDirectory(prefix="bench_shutdown_") as tmp:
        directory = Path(tmp)
        for command in ("once", "run"):
            throttled: list[float] = []
            baseline: list[float] = []
            codes: set[int] = set()
            async with bench_throttle.simulator(sim_args(args, budget=True), directory) as url:
                calls_at_signal = []
                for _ in range(args.repeat):
                    elapsed, calls, code = await one(command, directory, url, until_throttled=args.throttled,
                                                     until_calls=None)
                    throttled.append(elapsed)
                    calls_at_signal.append(calls)
                    codes.add(code)
            async with bench_throttle.simulator(sim_args(args, budget=False), directory) as url:
                for calls in calls_at_signal:
                    elapsed, _, code = await one(command, directory, url, until_throttled=None,
                                                 until_calls=calls)
                    baseline.append(elapsed)
                    codes.add(code)
            lines.append(f"{command:>4}  throttled: {summary(throttled)}")
            lines.append(f"{command:>4}  baseline (no budgets, same call count): {summary(baseline)}; "
                         f"exit codes {sorted(codes)}")
    return lines


def main() -> int:
    args = parse_args()
    logs.configure(level="warning", json=False)
    for line in asyncio.run(bench(args)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
