"""Crash consistency: `once` and `run` killed with SIGKILL at seeded random points, then run again on the same
database, store every expected value exactly once (one history row per media insight: nothing written twice,
nothing lost; tests/test_daemon.py `assert_stored_exactly`).

A kill point is a count of calls the simulator has received (not a time): the process is killed as soon as
the count is reached, wherever it is (fetching, in a COPY, mid-commit). Points are drawn with a fixed seed
from 1 .. the call count of one uninterrupted pass, measured first in the same test. The suite runs a few
points of each command; the 20-point runs are marked slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector import pacific
from tests import fixtures_db, fixtures_sim, test_daemon

SEED = 20261203


async def until_calls(sim: fixtures_sim.RunningSimulator, count: int,
                      proc: asyncio.subprocess.Process) -> None:
    """Until the simulator has received `count` calls (or the process ended by itself)."""
    while sim.stats.calls < count and proc.returncode is None:
        await asyncio.sleep(0.002)


async def run_once(config: Path, log: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "DATABASE_URL")}
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "once", "-c", str(config), "--no-progress",
            cwd=test_daemon.ROOT, env=env, stdout=out, stderr=out)


Fresh = Callable[[], contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def fresh_database(server_url: str, database_url: str) -> Fresh:
    """`async with fresh_database() as dsn`: a fresh migrated database per kill point, dropped after."""
    template = urllib.parse.urlsplit(database_url).path.lstrip("/")
    counter = iter(range(1_000_000))

    def make() -> contextlib.AbstractAsyncContextManager[str]:
        return fixtures_db.scratch_database(server_url, f"{fixtures_db._PREFIX}_crash_{next(counter)}",
                                            template=template)

    return make


@pytest.fixture
def processes() -> Iterator[list[test_daemon.DaemonProcess]]:
    started: list[test_daemon.DaemonProcess] = []
    yield started
    for p in started:
        p.kill()


async def crash_and_recover(command: str, points: int, tmp_path: Path,
                            start_simulator: fixtures_sim.StartSimulator,
                            fresh_database: Fresh,
                            processes: list[test_daemon.DaemonProcess]) -> None:
    sim = await start_simulator(accounts=3, media_per_account=8, seed=7, world_knobs=test_daemon.WORLD,
                                latency_ms=5.0, refresh_min_age_s=0.0)
    accounts = sim.accounts()
    ids = [a.ig_user_id for a in accounts]
    days = pacific.complete_days(datetime.now(UTC), test_daemon.BACKFILL_DAYS)

    # The call count of one uninterrupted pass: the range the kill points are drawn from.
    async with fresh_database() as dsn:
        setup = test_daemon.Setup(tmp_path / "reference", dsn, sim)
        setup.dir.mkdir()
        setup.write(accounts)
        proc = await run_once(setup.config, setup.dir / "once.log")
        assert await asyncio.wait_for(proc.wait(), 120) == 0, (setup.dir / "once.log").read_text()[-3000:]
        total = sim.stats.calls
        await test_daemon.assert_stored_exactly(dsn, sim.world, ids, days)

    kill_at = sorted(random.Random(f"{SEED}-{command}").sample(range(1, total), points))
    for number, calls in enumerate(kill_at):
        sim.simulator.reset()
        async with fresh_database() as dsn:
            setup = test_daemon.Setup(tmp_path / f"{command}-{number}", dsn, sim)
            setup.dir.mkdir()
            setup.write(accounts)
            log = setup.dir / "once.log"
            if command == "once":
                proc = await run_once(setup.config, log)
                await until_calls(sim, calls, proc)
                if proc.returncode is None:
                    proc.kill()  # SIGKILL
                await proc.wait()
                again = await run_once(setup.config, log)
                assert await asyncio.wait_for(again.wait(), 120) == 0, log.read_text()[-3000:]
            else:
                daemon = test_daemon.DaemonProcess(setup)
                processes.append(daemon)
                await daemon.start()
                assert daemon.proc is not None
                await until_calls(sim, calls, daemon.proc)
                daemon.proc.send_signal(signal.SIGKILL)
                await daemon.proc.wait()
                restarted = test_daemon.DaemonProcess(setup)
                processes.append(restarted)
                await restarted.start()
                await test_daemon.until(lambda dsn=dsn: test_daemon.collected(dsn, ids), 60, restarted)
                assert await restarted.stop(timeout_s=60) == 0
                restarted.stopped_cleanly()
            await test_daemon.assert_stored_exactly(dsn, sim.world, ids, days)


@pytest.mark.parametrize(("command", "points"), [("once", 3), ("run", 2)])
async def test_sigkill_then_rerun_stores_everything_exactly_once(
        command: str, points: int, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator,
        fresh_database: Fresh,
        processes: list[test_daemon.DaemonProcess]) -> None:
    await crash_and_recover(command, points, tmp_path, start_simulator, fresh_database, processes)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("command", ["once", "run"])
async def test_sigkill_at_20_points_then_rerun_stores_everything_exactly_once(
        command: str, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator,
        fresh_database: Fresh,
        processes: list[test_daemon.DaemonProcess]) -> None:
    await crash_and_recover(command, 20, tmp_path, start_simulator, fresh_database, processes)
