"""SIGTERM under tight budgets and 5 % faults, for `once` and `run` as subprocesses against the simulator.

Every account is blocked by code 80002 after a few calls, with a regain time of 10 minutes, so when the
signal comes nearly every call waits on a throttle pause (or a backoff). Those waits are abandoned at once;
only requests on the wire finish. The bound is asserted generously (the process is gone within
`shutdown_grace_s`, the shipped default, and never needed the grace period to run out); the real figure
is printed by scripts/bench_shutdown.py. Everything the simulator answered is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from collector import settings
from collector.simulator import faults, limits
from tests import fixtures_sim

ROOT = Path(__file__).resolve().parent.parent
GRACE_S = settings.ScheduleSettings().shutdown_grace_s  # the shipped default
FIVE_PERCENT = faults.FaultRates(http_5xx=0.01, code1=0.01, code2=0.01, slow=0.005, drop=0.01, truncate=0.005,
                                 slow_delay_s=0.6)
WORLD = {"invalid_token_fraction": 0.0, "history_days": 60}
ACCOUNTS = 6


class Process:
    """`python -m collector <command> -c config` with its JSON log in a file."""

    def __init__(self, directory: Path, command: str, config: Path) -> None:
        self.command = command
        self.config = config
        self.log = directory / f"{command}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        extra = ["--no-progress"] if self.command == "once" else []
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector", self.command, "-c", str(self.config), "--log-json",
                *extra, cwd=ROOT, env=env, stdout=out, stderr=out)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict) and event.get("event") == name:
                    out.append(event)
        return out

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def throttled_accounts(sim: fixtures_sim.RunningSimulator) -> set[str]:
    return {a.ig_user_id for ts in list(sim.stats.arrivals.values()) for a in ts if a.outcome == "throttled"}


async def wait_until_throttled(sim: fixtures_sim.RunningSimulator, proc: Process) -> None:
    """Until the client has been answered 80002 and paused an account for 10 minutes. Which accounts run
    into their block varies: an account whose first call of a media kind (the capability probe) is paused
    holds the other accounts' calls of that kind behind it, so not every account gets to its 20 calls."""
    deadline = time.monotonic() + 60  # a cap against a hang, not a timing assertion
    while not throttled_accounts(sim) or not proc.events("graph_throttled"):
        assert proc.proc is not None
        if proc.proc.returncode is not None:
            pytest.fail(f"{proc.command} exited {proc.proc.returncode}: {proc.log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, proc.log.read_text()[-3000:]
        await asyncio.sleep(0.05)


def answered(sim: fixtures_sim.RunningSimulator) -> tuple[set[str], set[str]]:
    """(accounts whose profile call, media whose plain insights call the simulator answered with 200)."""
    profiles, media = set(), set()
    for identity, tries in list(sim.stats.arrivals.items()):
        if not any(t.outcome == "ok" for t in tries):
            continue
        found = re.match(r"GET (\d+)/insights\?(.*)$", identity)
        if found and "breakdown=" not in found[2] and "period=" not in found[2]:
            media.add(found[1])
        elif re.match(r"GET (\d+)\?fields=", identity) and "username" in identity:
            profiles.add(tries[0].ig_user_id)
    return profiles, media


@pytest.mark.parametrize("command", ["once", "run"])
async def test_sigterm_abandons_throttle_waits_and_stores_what_was_fetched(
        command: str, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str) -> None:
    # 20 calls per account, then blocked for 10 minutes (the header says "10 minutes" to regain): room for
    # the ~14 account-level calls that leave at once after the profile and some media insights.
    sim = await start_simulator(
        accounts=ACCOUNTS, media_per_account=12, seed=7, world_knobs=WORLD, record_arrivals=True,
        account_budget=limits.Budget(calls=20, window_s=3600.0, block_s=600.0), faults=FIVE_PERCENT,
        latency_ms=20.0,
        # Usage headers only in throttled answers: the budget pacing would keep the accounts out of the
        # blocks whose pauses this test stops during.
        usage_reporting=limits.Reporting(after_calls=10**9))
    sections: dict[str, dict[str, Any]] = {
        "graph": {"request_timeout_s": 0.3},  # below slow_delay_s: "slow" answers time out and retry
        # Every account at once.
        "collect": {"account_backfill_days": 3, "media_max_age_days": 90,
                    "max_concurrent_accounts": ACCOUNTS},
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.4},
        # No slowing down from the usage headers: accounts run into their block within seconds.
        "rate_limit": {"slow_down_at_pct": 100.0},
    }
    if command == "run":
        sections["schedule"] = {"tick_s": 0.1}
    config = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections=sections)
    proc = Process(tmp_path, command, config)
    await proc.start()
    try:
        await wait_until_throttled(sim, proc)
        assert proc.proc is not None
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.proc.wait(), 60)
        elapsed_s = time.monotonic() - signalled
    finally:
        proc.kill()
    log = proc.log.read_text()
    assert code == (128 + signal.SIGTERM if command == "once" else 0), log[-3000:]
    assert proc.events("graph_waits_abandoned"), log[-3000:]
    # The grace period was never used up: only requests on the wire were waited for.
    assert not proc.events("jobs_cancelled_after_grace")
    assert elapsed_s <= GRACE_S, elapsed_s
    if command == "run":
        [stopped] = proc.events("daemon_stopped")
        assert stopped["rows_unwritten"] == 0

    assert throttled_accounts(sim)
    profiles, media = answered(sim)
    assert profiles and media
    conn = await asyncpg.connect(db_dsn)
    try:
        stored_profiles = {str(r["ig_user_id"]) for r in await conn.fetch(
            "SELECT ig_user_id FROM ig_account WHERE username IS NOT NULL")}
        stored_media = {str(r["media_id"]) for r in await conn.fetch(
            "SELECT media_id FROM ig_media_insight UNION SELECT object_id FROM ig_unavailable "
            "WHERE object_type = 'media'")}
    finally:
        await conn.close()
    assert profiles <= stored_profiles
    assert media <= stored_media, sorted(media - stored_media)
