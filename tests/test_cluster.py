"""Several daemons on one database (collector.leases): real `python -m collector run` subprocesses against
the simulator over HTTP and a real PostgreSQL, 30 accounts.

Each daemon is one instance (instance id = host name + pid, carried in its User-Agent), with its own
config file, state_dir and HTTP port, as on separate hosts. The schedule's intervals are an hour, so one
pass collects every job of every account exactly once and the call counts can be compared with one
daemon doing the same work. The simulator records every call with its User-Agent: the tests check from
the server's side that no two instances worked on one account at the same time.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector import pacific
from collector.simulator import stats as sim_stats
from collector.simulator import world as world_mod
from tests import fixtures_db, fixtures_sim
from tests.test_daemon import (
    BACKFILL_DAYS,
    JOBS,
    MEDIA_MAX_AGE_DAYS,
    ROOT,
    WORLD,
    DaemonProcess,
    assert_stored_exactly,
    collected,
    free_port,
    job_states,
    metric_samples,
    until,
)

ACCOUNTS = 30
LEASE_S = 3.0
# Generous bounds for what the issue states as "within lease_s + 5 s" and "within 5 s": the daemons tick
# every 0.1 s, and a loaded machine may delay a claim by a few seconds; the bounds catch a lease that is
# not released or not taken over, not a slow tick.
TAKEOVER_AFTER_KILL_S = LEASE_S + 5.0
TAKEOVER_AFTER_TERM_S = 5.0
PASS_TIMEOUT_S = 60.0


@dataclass
class Node:
    """One instance's files (DaemonProcess reads `dir` and `config`)."""

    dir: Path
    config: Path
    http_port: int


def write_node(base: Path, name: str, dsn: str, sim: fixtures_sim.RunningSimulator,
               accounts: list[world_mod.SimAccount], *, workers: int) -> Node:
    folder = base / name
    folder.mkdir(parents=True)
    port = free_port()
    config = fixtures_sim.write_config(folder, sim, dsn, accounts=accounts, accounts_csv=True, sections={
        "graph": {"request_timeout_s": 5.0},
        "rate_limit": {"app_calls_per_s": 0, "account_calls_per_s": 0},
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.5},
        "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": MEDIA_MAX_AGE_DAYS,
                    "max_concurrent_accounts": workers},
        "schedule": {"media_discovery_interval_s": 3600.0, "stories_interval_s": 3600.0,
                     "profile_interval_s": 3600.0, "demographics_interval_s": 3600.0, "tick_s": 0.1,
                     "shutdown_grace_s": 3.0, "job_retry_base_s": 0.5},
        "log": {"level": "info", "json": True},
        "database": {"connect_timeout_s": 2.0},
        "http": {"listen": f"127.0.0.1:{port}"},
        "cluster": {"lease_s": LEASE_S},
    })
    return Node(folder, config, port)


def agent(daemon: DaemonProcess) -> str:
    """The User-Agent of a daemon's Graph calls (its default instance id is host name + pid)."""
    assert daemon.proc is not None
    return f"ig-insights-collector/0.1 (instance {socket.gethostname()}-{daemon.proc.pid})"


def instance_id(daemon: DaemonProcess) -> str:
    assert daemon.proc is not None
    return f"{socket.gethostname()}-{daemon.proc.pid}"


def calls_by_account(calls: list[sim_stats.AgentCall]) -> dict[str, dict[str, list[float]]]:
    """ig_user_id -> User-Agent -> arrival times."""
    out: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for call in calls:
        out[call.ig_user_id][call.user_agent].append(call.at)
    return out


def assert_one_instance_at_a_time(calls: list[sim_stats.AgentCall]) -> None:
    """Per account, the calls of different instances never interleave: each instance's calls on it lie in
    a time span that no other instance's calls enter (a takeover starts after the holder's last call)."""
    for ig_user_id, by_agent in calls_by_account(calls).items():
        spans = sorted((min(times), max(times), ua) for ua, times in by_agent.items())
        for (_, end, ua), (start, _, next_ua) in itertools.pairwise(spans):
            assert end < start, f"{ig_user_id}: {ua} and {next_ua} called it at the same time"


async def simulate(start_simulator: fixtures_sim.StartSimulator,
                   latency_ms: float) -> fixtures_sim.RunningSimulator:
    return await start_simulator(accounts=ACCOUNTS, media_per_account=4, seed=11, world_knobs=WORLD,
                                 refresh_min_age_s=0.0, record_agents=True, latency_ms=latency_ms)


@pytest.fixture
async def cluster_sim(start_simulator: fixtures_sim.StartSimulator) -> fixtures_sim.RunningSimulator:
    return await simulate(start_simulator, 20.0)


@pytest.fixture
async def slow_sim(start_simulator: fixtures_sim.StartSimulator) -> fixtures_sim.RunningSimulator:
    """More latency per call: an account's jobs last long enough to stop an instance in their middle."""
    return await simulate(start_simulator, 150.0)


@pytest.fixture
async def database(server_url: str) -> AsyncIterator[str]:
    async with fixtures_db.scratch_database(server_url, f"cluster_{uuid.uuid4().hex[:12]}") as dsn:
        yield dsn


@pytest.fixture
def processes() -> Any:
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()


async def start_instances(nodes: list[Node], processes: list[DaemonProcess]) -> list[DaemonProcess]:
    daemons = [DaemonProcess(node) for node in nodes]  # type: ignore[arg-type]  # Node has what it reads
    processes.extend(daemons)
    await asyncio.gather(*(d.start() for d in daemons))
    return daemons


async def holders(dsn: str) -> dict[str, str]:
    """ig_user_id -> holder of every held lease."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT ig_user_id::text AS id, holder FROM collector_lease "
                                "WHERE holder IS NOT NULL")
    finally:
        await conn.close()
    return {r["id"]: r["holder"] for r in rows}


async def unfinished(dsn: str, ids: list[str]) -> set[str]:
    states = await job_states(dsn)
    return {i for i in ids if any(states.get((i, j)) is None or states[(i, j)]["last_success_at"] is None
                                  for j in JOBS)}


async def hold_unfinished(dsn: str, ids: list[str], holder: str) -> set[str]:
    """Wait until `holder` holds accounts whose pass is not finished; return them."""
    found: set[str] = set()

    async def holding() -> bool:
        nonlocal found
        held = {i for i, h in (await holders(dsn)).items() if h == holder}
        found = held & await unfinished(dsn, ids)
        return bool(found)

    await until(holding, PASS_TIMEOUT_S)
    return found


# ------------------------------------------------------------------------------------------- tests


async def test_three_instances_share_the_work_once(
        tmp_path: Path, server_url: str, database: str, cluster_sim: fixtures_sim.RunningSimulator,
        processes: list[DaemonProcess]) -> None:
    sim = cluster_sim
    accounts = sim.accounts()
    ids = [a.ig_user_id for a in accounts]
    days = pacific.complete_days(datetime.now(UTC), BACKFILL_DAYS)

    # One daemon doing the whole pass: the baseline.
    async with fixtures_db.scratch_database(server_url, f"cluster_one_{uuid.uuid4().hex[:8]}") as alone_dsn:
        [alone] = await start_instances([write_node(tmp_path, "alone", alone_dsn, sim, accounts, workers=12)],
                                        processes)
        await until(lambda: collected(alone_dsn, ids), PASS_TIMEOUT_S, alone)
        assert await alone.stop() == 0
    calls_one = sim.stats.calls
    sim.stats.reset()

    nodes = [write_node(tmp_path, name, database, sim, accounts, workers=4) for name in "abc"]
    daemons = await start_instances(nodes, processes)
    await until(lambda: collected(database, ids), PASS_TIMEOUT_S, daemons[0])
    for d in daemons:
        assert await d.stop() == 0
        d.stopped_cleanly()
    calls_three = sim.stats.calls

    assert calls_three <= 1.1 * calls_one, (calls_three, calls_one, dict(sim.stats.by_agent))
    by_account = calls_by_account(sim.stats.agent_calls)
    assert set(by_account) == set(ids)
    for ig_user_id, by_agent in by_account.items():
        assert len(by_agent) == 1, f"{ig_user_id} was collected by {sorted(by_agent)}"
    assert set(sim.stats.by_agent) <= {agent(d) for d in daemons}
    await assert_stored_exactly(database, sim.world, ids, days)


async def test_killed_and_stopped_instances_are_taken_over(
        tmp_path: Path, database: str, slow_sim: fixtures_sim.RunningSimulator,
        processes: list[DaemonProcess]) -> None:
    sim = slow_sim
    accounts = sim.accounts()
    ids = [a.ig_user_id for a in accounts]
    days = pacific.complete_days(datetime.now(UTC), BACKFILL_DAYS)
    # The survivor has room for all 30 accounts (a takeover waits for the lease, never for a free worker);
    # it starts with one account configured, so the other two take the rest, and gets all of them by a
    # reload (SIGHUP) once those two are in the middle of their accounts' jobs.
    a, b = (write_node(tmp_path, name, database, sim, accounts, workers=15) for name in "ab")
    c = write_node(tmp_path, "c", database, sim, accounts[:1], workers=ACCOUNTS)
    [survivor] = await start_instances([c], processes)
    killed, stopped = await start_instances([a, b], processes)
    await hold_unfinished(database, ids, instance_id(killed))
    held_by_stopped = await hold_unfinished(database, ids, instance_id(stopped))
    write_node(tmp_path, "c-all", database, sim, accounts, workers=ACCOUNTS)
    (c.dir / "accounts.csv").write_bytes((tmp_path / "c-all" / "accounts.csv").read_bytes())
    survivor.signal(signal.SIGHUP)
    await until(lambda: survivor.logged("config_reloaded"), 20, survivor)

    # SIGTERM one in the middle of its accounts' jobs: it releases them on the way out, at once.
    stopped.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    # SIGKILL another in the middle: its leases expire after lease_s, then the survivor takes them over.
    killed.kill()
    killed_at = time.monotonic()
    assert killed.proc is not None and stopped.proc is not None
    await killed.proc.wait()
    held_by_killed = {i for i, h in (await holders(database)).items() if h == instance_id(killed)}
    left_by_killed = held_by_killed & await unfinished(database, ids)
    assert left_by_killed, "killed in the middle of its accounts' jobs"
    assert await asyncio.wait_for(stopped.proc.wait(), 20) == 0
    assert instance_id(stopped) not in (await holders(database)).values()  # released on the way out
    left_by_stopped = held_by_stopped & await unfinished(database, ids)

    await until(lambda: collected(database, ids), PASS_TIMEOUT_S, survivor)
    samples = await metric_samples(c.http_port)
    assert samples["ig_collector_lease_takeovers_total"] >= len(held_by_killed)
    assert samples["ig_collector_lease_claims_total"] >= len(left_by_stopped) + len(held_by_killed)
    assert samples["ig_collector_lease_renewals_total"] > 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "status", "-c", str(c.config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    shown = out.decode().split("Instances sharing this database")[1]
    # INSTANCE STATE STARTED(n ago) HEARTBEAT(n ago) HELD CLAIMS TAKEOVERS RENEWALS RELEASES LOST
    rows = {cells[0]: cells for cells in map(str.split, shown.splitlines())
            if len(cells) == 12 and cells[1] in ("running", "stopped", "silent")}
    assert rows[instance_id(stopped)][1] == "stopped"
    assert rows[instance_id(survivor)][1] == "running"
    assert int(rows[instance_id(survivor)][8]) >= len(held_by_killed)  # its takeovers
    assert await survivor.stop() == 0

    calls = calls_by_account(sim.stats.agent_calls)
    for ig_user_id in left_by_killed:
        later = [t for ua, times in calls[ig_user_id].items() if ua != agent(killed) for t in times
                 if t > killed_at]
        assert later, f"{ig_user_id}, held by the killed instance, was not collected by another"
        assert min(later) - killed_at <= TAKEOVER_AFTER_KILL_S, (ig_user_id, min(later) - killed_at)
    takeovers = [e for e in survivor.events("lease_taken_over")
                 if e["previous_holder"] == instance_id(killed)]
    assert {e["ig_user_id"] for e in takeovers} >= held_by_killed
    for ig_user_id in left_by_stopped:
        after = [t for t in calls[ig_user_id][agent(survivor)] if t > stopped_at]
        assert after, f"{ig_user_id}, left unfinished by the stopped instance, was not collected by another"
        assert min(after) - stopped_at <= TAKEOVER_AFTER_TERM_S, (ig_user_id, min(after) - stopped_at)
    assert_one_instance_at_a_time(sim.stats.agent_calls)
    await assert_stored_exactly(database, sim.world, ids, days)


async def test_rolling_restart_loses_nothing(
        tmp_path: Path, database: str, slow_sim: fixtures_sim.RunningSimulator,
        processes: list[DaemonProcess]) -> None:
    sim = slow_sim
    accounts = sim.accounts()
    ids = [a.ig_user_id for a in accounts]
    days = pacific.complete_days(datetime.now(UTC), BACKFILL_DAYS)
    nodes = [write_node(tmp_path, name, database, sim, accounts, workers=3) for name in "abc"]
    daemons = await start_instances(nodes, processes)

    for i, node in enumerate(nodes):  # one at a time: stop, start the new version, go on to the next
        assert await daemons[i].stop() == 0
        daemons[i].stopped_cleanly()
        [daemons[i]] = await start_instances([node], processes)

    await until(lambda: collected(database, ids), PASS_TIMEOUT_S, daemons[-1])
    for d in daemons:
        assert await d.stop() == 0
    assert_one_instance_at_a_time(sim.stats.agent_calls)
    await assert_stored_exactly(database, sim.world, ids, days)
    conn = await asyncpg.connect(database)
    try:
        instances = await conn.fetch("SELECT instance_id, stopped_at FROM collector_instance")
        held = await conn.fetchval("SELECT count(*) FROM collector_lease WHERE holder IS NOT NULL")
    finally:
        await conn.close()
    assert len(instances) == 6 and all(r["stopped_at"] is not None for r in instances)
    assert held == 0  # every stop released its leases
