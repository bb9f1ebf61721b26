"""Soak: the real daemon (`python -m collector run`) against the simulator for a while, watching its memory.

    .venv/bin/python scripts/bench_soak.py [--duration-s 300] [--accounts 300] [--media 20] [--discovered 20]
                                           [--interval-s 60] [--token-refresh-s 30] [--warmup-s 90]

A benchmark, not a test: it always exits 0. It starts the simulator (`python -m collector simulate`, every
account's token valid, tokens refreshable at any age), a scratch database (bench_throttle.database: dropped
afterwards), and the daemon as a subprocess with the SHIPPED DEFAULTS except:

- the schedule intervals, shortened so that a pass of every account happens every `--interval-s`
  (media discovery with every media's insights, stories; profile and demographics every 2 x that);
  the daily account insights keep their Pacific-midnight slot (they run once, the backfill, at start);
- `token_refresh_after_days`, tiny (`--token-refresh-s`): every Instagram Login token (half the accounts)
  is refreshed again and again, so each account's calls move to a new token many times;
- `[collect] discovery_interval_s` = `--interval-s`: `--discovered` Facebook Login accounts are not in the
  accounts file but reached through a `[[tokens]]` user token, discovered again every interval;
- `[http] listen` on a free loopback port (for /metrics); state_dir, accounts, database and base URLs.

Every non-default setting is printed. The webhook is left out.

Sampled every `--sample-s`: the daemon's RSS (VmRSS of /proc/PID/status), its open file descriptors
(/proc/PID/fd) and, from /metrics, the jobs finished per job kind, the Graph calls and the token refreshes.
A "pass" is every account's media job done once: passes = media jobs finished / accounts.

Printed: RSS after the warm-up and at the end; the slope (MB per hour, least squares over the samples after
`--warmup-s`) and its standard error; MB per 1,000 passes and per 100,000 Graph calls (end minus warm-up);
open fds at the first sample and at the end; the row counts of the data tables (the passes stored data).
`leak suspected` is printed when the slope is clearly positive after the warm-up: more than 3 standard
errors above 0 and more than 1 MB of growth over the measured window. The asyncio task count is not
exposed by /metrics and is not reported.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_throttle  # the scratch-database helper

from collector import logs

ROOT = Path(__file__).resolve().parent.parent
# Meta's budgets, made large: the simulator's nominal app budget (200 calls per account and hour) would have
# budget pacing hold a soak's shortened passes within minutes; this measures the passes, not the pacing.
SIM_BUDGETS = ("--app-calls", "100000000", "--app-window-s", "3600", "--account-calls", "1000000",
               "--account-window-s", "3600")
TABLES = ("ig_account", "ig_media", "ig_media_insight", "ig_media_insight_history", "ig_account_insight",
          "ig_unavailable", "collector_job_state", "collector_token", "collector_discovered_account")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--duration-s", type=float, default=300.0, help="how long the daemon runs")
    p.add_argument("--warmup-s", type=float, default=90.0, help="samples before this are not in the slope")
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--accounts", type=int, default=300, help="simulator accounts (half of each login)")
    p.add_argument("--media", type=int, default=20, help="media per account")
    p.add_argument("--discovered", type=int, default=20,
                   help="Facebook Login accounts reached through a [[tokens]] user token, not configured")
    p.add_argument("--interval-s", type=float, default=60.0, help="media/stories interval (and discovery)")
    p.add_argument("--token-refresh-s", type=float, default=30.0,
                   help="token_refresh_after_days, in seconds")
    p.add_argument("--latency-ms", type=float, default=50.0, help="simulated Graph latency")
    p.add_argument("--seed", type=int, default=7)
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def schedule_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The non-default settings, as written into the config (TOML values)."""
    every_h = args.interval_s / 3600.0
    return {
        "schedule.media_discovery_interval_s": args.interval_s,
        "schedule.stories_interval_s": args.interval_s,
        "schedule.profile_interval_s": 2 * args.interval_s,
        "schedule.demographics_interval_s": 2 * args.interval_s,
        "schedule.media_tiers": f"[{{ every_h = {every_h!r} }}]",
        "schedule.token_refresh_after_days": args.token_refresh_s / 86400.0,  # printed with its seconds
        "collect.discovery_interval_s": args.interval_s,
    }


def write_config(directory: Path, base_url: str, dsn: str, http_port: int, user_token: str | None,
                 args: argparse.Namespace) -> Path:
    s = schedule_settings(args)
    tokens = ""
    if user_token:
        tokens = f'\n[[tokens]]\nlogin = "facebook"\naccess_token = {json.dumps(user_token)}\n'
    path = directory / "config.toml"
    path.write_text(f"""state_dir = {json.dumps(str(directory / 'state'))}
accounts_file = "accounts.csv"
{tokens}
[database]
url = {json.dumps(dsn)}

[graph]
instagram_base_url = {json.dumps(base_url)}
facebook_base_url = {json.dumps(base_url)}

[collect]
discovery_interval_s = {s['collect.discovery_interval_s']!r}

[schedule]
media_discovery_interval_s = {s['schedule.media_discovery_interval_s']!r}
stories_interval_s = {s['schedule.stories_interval_s']!r}
profile_interval_s = {s['schedule.profile_interval_s']!r}
demographics_interval_s = {s['schedule.demographics_interval_s']!r}
media_tiers = {s['schedule.media_tiers']}
token_refresh_after_days = {s['schedule.token_refresh_after_days']!r}

[http]
listen = "127.0.0.1:{http_port}"
""")
    return path


async def start_simulator(args: argparse.Namespace,
                          directory: Path) -> tuple[asyncio.subprocess.Process, str]:
    command = [sys.executable, "-m", "collector", "simulate", "--log-level", "warning", "--port", "0",
               "--write-accounts", str(directory / "all_accounts.csv"), "--seed", str(args.seed),
               "--accounts", str(args.accounts), "--media", str(args.media),
               "--latency-ms", str(args.latency_ms), "--invalid-token-fraction", "0",
               "--refresh-min-age-s", "0", *SIM_BUDGETS]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode()
    match = re.search(r"listening on (http://\S+)", line)
    if match is None:
        process.terminate()
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return process, match.group(1)


async def split_accounts(session: aiohttp.ClientSession, base_url: str, directory: Path,
                         discovered: int) -> tuple[int, int, str | None]:
    """accounts.csv without the first `discovered` Facebook Login accounts, which a new simulated Facebook
    user (its user token for [[tokens]]) reaches instead. (configured, instagram-login, user token)."""
    with (directory / "all_accounts.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    facebook = [r["ig_user_id"] for r in rows if r["login"] == "facebook"][:discovered]
    token = None
    if facebook:
        async with session.post(f"{base_url}/__sim/users",
                                params={"ig_user_ids": ",".join(facebook)}) as response:
            response.raise_for_status()
            token = (await response.json())["access_token"]
    kept = [r for r in rows if r["ig_user_id"] not in set(facebook)]
    with (directory / "accounts.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ig_user_id", "login", "access_token"])
        writer.writeheader()
        writer.writerows(kept)
    return len(kept), sum(1 for r in rows if r["login"] == "instagram"), token


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


_SAMPLE_RE = re.compile(r"^(\w+)(?:\{([^}]*)\})? (\S+)$")


def parse_metrics(text: str) -> dict[str, float]:
    """The few sums the soak follows: jobs by kind, Graph calls, token refreshes, rows written."""
    out: dict[str, float] = {"calls": 0.0, "token_calls": 0.0, "rows": 0.0}
    for line in text.splitlines():
        match = _SAMPLE_RE.match(line)
        if match is None:
            continue
        name, labels, value = match.group(1), dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")), \
            float(match.group(3))
        if name == "ig_collector_jobs_total":
            key = f"jobs_{labels.get('job')}"
            out[key] = out.get(key, 0.0) + value
        elif name == "ig_collector_graph_calls_total":
            out["calls"] += value
            if labels.get("endpoint") == "token":
                out["token_calls"] += value
        elif name == "ig_collector_rows_written_total":
            out["rows"] += value
    return out


def slope_mb_per_h(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of (seconds, MB) in MB/h, and its standard error."""
    n = len(points)
    if n < 3:
        return float("nan"), float("nan")
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return float("nan"), float("nan")
    b = sum((t - mx) * (v - my) for t, v in points) / sxx
    a = my - b * mx
    residual = sum((v - (a + b * t)) ** 2 for t, v in points)
    se = math.sqrt(residual / (n - 2) / sxx)
    return b * 3600.0, se * 3600.0


async def row_counts(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in TABLES}
    finally:
        await conn.close()


async def soak(args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench_soak_") as tmp:
        directory = Path(tmp)
        sim, base_url = await start_simulator(args, directory)
        try:
            async with aiohttp.ClientSession() as session, bench_throttle.database(directory) as (dsn, where):
                configured, instagram, user_token = await split_accounts(session, base_url, directory,
                                                                         args.discovered)
                http_port = free_port()
                config = write_config(directory, base_url, dsn, http_port, user_token, args)
                lines.append(f"simulator: {args.accounts} accounts x {args.media} media ({instagram} "
                             f"Instagram Login, the rest Facebook Login), latency {args.latency_ms:g} ms, "
                             f"budgets {' '.join(SIM_BUDGETS)} (never reached); {configured} "
                             f"in the accounts file, {args.discovered} reached through one [[tokens]] user "
                             f"token; database: {where}")
                shown = {k: v if isinstance(v, str) else f"{v:g}" for k, v in schedule_settings(args).items()}
                shown["schedule.token_refresh_after_days"] += f" ({args.token_refresh_s:g} s)"
                lines.append("non-default settings (the rest shipped defaults): "
                             + ", ".join(f"{k} = {v}" for k, v in shown.items())
                             + f", http.listen = 127.0.0.1:{http_port}")
                env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
                log_path = directory / "daemon.log"
                with log_path.open("wb") as out:
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "collector", "run", "-c", str(config), "--log-json",
                        cwd=ROOT, env=env, stdout=out, stderr=out)
                samples: list[dict[str, float]] = []
                try:
                    started = time.monotonic()
                    metrics_url = f"http://127.0.0.1:{http_port}/metrics"
                    while time.monotonic() - started < args.duration_s:
                        if proc.returncode is not None:
                            raise RuntimeError(f"the daemon exited ({proc.returncode}): "
                                               f"{log_path.read_text()[-2000:]}")
                        try:
                            async with session.get(metrics_url) as response:
                                counts = parse_metrics(await response.text())
                        except aiohttp.ClientError:
                            await asyncio.sleep(0.5)  # not serving yet
                            continue
                        samples.append({"t": time.monotonic() - started, "rss": rss_mb(proc.pid),
                                        "fds": open_fds(proc.pid), **counts})
                        await asyncio.sleep(args.sample_s)
                    final_fds = open_fds(proc.pid)
                finally:
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGTERM)
                        try:
                            await asyncio.wait_for(proc.wait(), timeout=60)
                        except TimeoutError:
                            proc.kill()
                            await proc.wait()
                lines.append(f"daemon exit code {proc.returncode}; "
                             f"log {log_path.stat().st_size / 1e6:.1f} MB")
                rows = await row_counts(dsn)
                lines.extend(report(args, samples, final_fds, configured + args.discovered, rows))
        finally:
            if sim.returncode is None:
                sim.terminate()
                await sim.wait()
    return lines


def report(args: argparse.Namespace, samples: list[dict[str, float]], final_fds: int, accounts: int,
           rows: dict[str, int]) -> list[str]:
    lines: list[str] = []
    if not samples:
        return ["no samples: the daemon never served /metrics"]
    after = [s for s in samples if s["t"] >= args.warmup_s]
    warm, end, first = (after[0] if after else samples[-1]), samples[-1], samples[0]

    def passes(s: dict[str, float]) -> float:
        return s.get("jobs_media", 0.0) / accounts

    lines.append(f"samples: {len(samples)} over {end['t']:.0f} s (every {args.sample_s:g} s), "
                 f"{len(after)} after the {args.warmup_s:g} s warm-up")
    lines.append(f"passes of all {accounts} accounts: {passes(end):.1f} (media jobs / accounts; "
                 f"{passes(warm):.1f} at warm-up); Graph calls {end['calls']:.0f} "
                 f"({end['calls'] - warm['calls']:.0f} after warm-up); token refreshes "
                 f"{end['token_calls']:.0f}; rows written {end['rows']:.0f}")
    jobs = {k[5:]: int(v) for k, v in end.items() if k.startswith("jobs_")}
    lines.append(f"jobs finished: {jobs}")
    lines.append(f"RSS: first sample {first['rss']:.1f} MB, after warm-up {warm['rss']:.1f} MB, "
                 f"end {end['rss']:.1f} MB, max {max(s['rss'] for s in samples):.1f} MB")
    slope, se = slope_mb_per_h([(s["t"], s["rss"]) for s in after])
    grown = end["rss"] - warm["rss"]
    d_passes, d_calls = passes(end) - passes(warm), end["calls"] - warm["calls"]
    per_1000 = grown / d_passes * 1000 if d_passes > 0 else float("nan")
    per_100k = grown / d_calls * 100_000 if d_calls > 0 else float("nan")
    lines.append(f"RSS slope after warm-up: {slope:+.2f} MB/h (standard error {se:.2f}); end - warm-up "
                 f"{grown:+.2f} MB = {per_1000:+.1f} MB per 1,000 passes, {per_100k:+.2f} MB per 100,000 "
                 f"Graph calls")
    lines.append(f"open fds: {first['fds']:.0f} at the first sample, {final_fds} at the end "
                 f"(max {max(s['fds'] for s in samples):.0f})")
    lines.append("asyncio tasks: not exposed by /metrics (not measured)")
    lines.append("rows: " + ", ".join(f"{t} {n}" for t, n in rows.items()))
    window_h = (end["t"] - warm["t"]) / 3600.0
    if not math.isnan(slope) and slope > 3 * se and slope * window_h > 1.0:
        lines.append("leak suspected")
    return lines


def main() -> int:
    args = parse_args()
    logs.configure(level="warning", json=False)
    try:
        lines = asyncio.run(soak(args))
    except Exception as exc:  # a benchmark: report, never fail the caller
        lines = [f"soak failed: {exc!r}"]
    for line in lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
