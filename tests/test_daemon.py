"""The real daemon (`python -m collector run`) as a subprocess, against the simulator over HTTP and a real
PostgreSQL, with the schedule compressed to seconds by its config.

Each test gets its own database on the TEST_DATABASE_URL server, except the outage test: it runs its own
embedded PostgreSQL (pgserver) and stops and restarts it under the running daemon. What the daemon stored
is compared with the simulator's world (the values it serves), as tests/test_collect.py does for one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from prometheus_client import parser

from collector import catalogue, pacific
from collector.simulator import world as world_mod
from collector.storage import migrations, partitions
from tests import fixtures_db, fixtures_sim

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
JOBS = {"profile", "media", "stories", "account_insights", "demographics"}
BACKFILL_DAYS = 3
MEDIA_MAX_AGE_DAYS = 30
GRACE_S = 3.0
WORLD = {"invalid_token_fraction": 0.0, "history_days": 60}

# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture
async def database() -> AsyncIterator[str]:
    name = f"daemon_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urllib.parse.urlsplit(ADMIN_DSN)
        yield urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LEASE_S = 3.0


@dataclass
class Setup:
    dir: Path
    dsn: str
    sim: fixtures_sim.RunningSimulator
    http_port: int = field(default_factory=free_port)
    extra: str = ""  # more keys for [database] (the last section written before [http])

    @property
    def config(self) -> Path:
        return self.dir / "config.toml"

    @property
    def accounts_csv(self) -> Path:
        return self.dir / "accounts.csv"

    def write(self, accounts: list[world_mod.SimAccount]) -> None:
        lines = ["ig_user_id,login,access_token"]
        lines += [f"{a.ig_user_id},{a.login},{a.access_token}" for a in accounts]
        self.accounts_csv.write_text("\n".join(lines) + "\n")
        # Rate limits off (the throttling tests cover them): the schedule, not pacing, sets the pace here.
        self.config.write_text(f"""
accounts_file = "accounts.csv"
state_dir = "state"

[graph]
instagram_base_url = "{self.sim.base_url}"
facebook_base_url = "{self.sim.base_url}"
request_timeout_s = 5.0

[rate_limit]
app_calls_per_s = 0
account_calls_per_s = 0

[retry]
base_delay_s = 0.05
max_delay_s = 0.5

[collect]
account_backfill_days = {BACKFILL_DAYS}
media_max_age_days = {MEDIA_MAX_AGE_DAYS}
max_concurrent_accounts = 4

[schedule]
media_discovery_interval_s = 2.0
stories_interval_s = 2.0
profile_interval_s = 2.0
demographics_interval_s = 3.0
tick_s = 0.1
shutdown_grace_s = {GRACE_S}
token_refresh_after_days = 7.0
job_retry_base_s = 0.5

[log]
level = "info"
json = true

[database]
url = "{self.dsn}"
connect_timeout_s = 2.0
{self.extra}

[http]
listen = "127.0.0.1:{self.http_port}"

[cluster]
# A daemon killed by a test is replaced by a new instance (another pid): it takes the dead one's leases
# over after lease_s, so keep that short.
lease_s = {LEASE_S}
""")


class NotifyListener:
    """The $NOTIFY_SOCKET end systemd would hold."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []
        # Read as systemd does, continuously: an unread queue would make the daemon drop notifications.
        asyncio.get_running_loop().add_reader(self.sock, self.drain)

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock)
        self.sock.close()

    def drain(self) -> list[str]:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        return self.messages


class DaemonProcess:
    def __init__(self, setup: Setup, notify: NotifyListener | None = None) -> None:
        self.setup = setup
        self.notify = notify
        self.log = setup.dir / f"daemon-{uuid.uuid4().hex[:6]}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        dropped = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "DATABASE_URL")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        if self.notify is not None:
            env.update(NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC="1000000")
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector", "run", "-c", str(self.setup.config),
                cwd=ROOT, env=env, stdout=out, stderr=out)
        await until(lambda: self.logged("daemon_ready"), 20, self)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict) and (name is None or event.get("event") == name):
                    out.append(event)
        return out

    def logged(self, event: str, times: int = 1) -> bool:
        return len(self.events(event)) >= times

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def stop(self, timeout_s: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    def tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else ""

    def stopped_cleanly(self) -> dict[str, Any]:
        """The daemon_stopped event; asserts the writer committed everything it accepted."""
        [stopped] = self.events("daemon_stopped")
        assert stopped["exit_code"] == 0
        assert stopped["rows_unwritten"] == 0, stopped
        return stopped


async def until(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float,
                daemon: DaemonProcess | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if daemon is not None and daemon.proc is not None and daemon.proc.returncode is not None:
            pytest.fail(f"daemon exited {daemon.proc.returncode}:\n{daemon.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s\n{daemon.tail() if daemon else ''}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def sim(start_simulator: fixtures_sim.StartSimulator) -> fixtures_sim.RunningSimulator:
    # Tokens may be refreshed at any age here, so the daemon's first refresh happens in the test.
    return await start_simulator(accounts=6, media_per_account=12, seed=7, world_knobs=WORLD,
                                 refresh_min_age_s=0.0)


@pytest.fixture
def setup(tmp_path: Path, database: str, sim: fixtures_sim.RunningSimulator) -> Setup:
    return Setup(tmp_path, database, sim)


@pytest.fixture
def processes() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


async def job_states(dsn: str) -> dict[tuple[str, str], asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('collector_job_state') IS NOT NULL"):
            return {}
        rows = await conn.fetch("SELECT ig_user_id::text AS id, job, last_success_at, last_attempt_at, "
                                "consecutive_failures FROM collector_job_state")
    finally:
        await conn.close()
    return {(r["id"], r["job"]): r for r in rows}


async def collected(dsn: str, ids: list[str]) -> bool:
    states = await job_states(dsn)
    return all(states.get((i, j)) is not None and states[(i, j)]["last_success_at"] is not None
               for i in ids for j in JOBS)


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    timeout = aiohttp.ClientTimeout(total=5)  # a stuck daemon fails the test instead of hanging it
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.read()


async def metric_samples(port: int) -> dict[str, float]:
    """Every sample of /metrics, by name (labels summed)."""
    _, body = await http_get(port, "/metrics")
    totals: dict[str, float] = {}
    for family in parser.text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def as_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


async def assert_stored_exactly(dsn: str, world: world_mod.World, ids: list[str], days: list[Any]) -> None:
    """What the daemon stored for these accounts is exactly what the simulator serves: profiles, every
    media within the age limit with each insight value, the backfilled daily account values, and one
    history row per media insight (nothing was written twice: the values never changed)."""
    cat = catalogue.Catalogue()
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        accounts = {str(r["ig_user_id"]): r for r in await conn.fetch("SELECT * FROM ig_account")}
        media_rows = {str(r["media_id"]): r for r in await conn.fetch("SELECT * FROM ig_media")}
        insight = {(str(r["media_id"]), r["metric"]): as_number(r["value"]) for r in await conn.fetch(
            "SELECT media_id, metric, value FROM ig_media_insight WHERE breakdown = ''")}
        account_rows = {(str(r["ig_user_id"]), r["metric"], r["end_time"]): as_number(r["value"])
                        for r in await conn.fetch(
                            "SELECT * FROM ig_account_insight WHERE period = 'day' AND breakdown = ''")}
        insight_count = await conn.fetchval("SELECT count(*) FROM ig_media_insight")
        history_count = await conn.fetchval("SELECT count(*) FROM ig_media_insight_history")
        distinct_history = await conn.fetchval(
            "SELECT count(*) FROM (SELECT DISTINCT media_id, metric, breakdown, dimension "
            "FROM ig_media_insight_history) AS d")
    finally:
        await conn.close()
    assert insight_count > 0
    assert history_count == distinct_history == insight_count

    for uid in ids:
        account = world.account(uid)
        row = accounts[uid]
        assert (row["status"], row["username"], row["followers_count"]) == (
            "ok", account.username, account.followers_count)
        # A media near the age limit may fall either side of it between the run and this check.
        cutoff = now - timedelta(days=MEDIA_MAX_AGE_DAYS)
        slack = timedelta(hours=1)
        for media in world.media_of(uid) + world.stories_of(uid):
            if not media.is_story and media.timestamp < cutoff + slack:
                continue
            stored = media_rows.get(media.media_id)
            assert stored is not None, media
            if world.media_unavailable(media) is not None:
                continue
            wanted = set(cat.media_metrics(account.login, media.media_product_type))
            for metric in wanted & world.supported_media_metrics(media, account.login):
                expected = world.media_metric_value(media.media_id, metric)
                assert insight[(media.media_id, metric)] == expected, (media.media_id, metric)
        for day in days:
            end = pacific.day_end_utc(day)
            for metric in (*catalogue.ACCOUNT_TOTAL_VALUE, "reach"):
                value = world.account_day_value(uid, metric, day)
                if value is not None:
                    assert account_rows[(uid, metric, end)] == value, (uid, metric, day)


# ------------------------------------------------------------------------------------------- tests


async def test_collects_on_schedule_serves_health_and_stops_cleanly(
        setup: Setup, processes: list[DaemonProcess], notify: NotifyListener) -> None:
    accounts = setup.sim.accounts()[:2]
    ids = [a.ig_user_id for a in accounts]
    setup.write(accounts)
    daemon = DaemonProcess(setup, notify)
    processes.append(daemon)
    days = pacific.complete_days(datetime.now(UTC), BACKFILL_DAYS)
    await daemon.start()

    await until(lambda: collected(setup.dsn, ids), 20, daemon)
    first = await job_states(setup.dsn)

    async def media_ran_again() -> bool:
        states = await job_states(setup.dsn)
        return all(states[(i, "media")]["last_success_at"] > first[(i, "media")]["last_success_at"]
                   for i in ids)

    await until(media_ran_again, 10, daemon)  # the 2 s interval came round again
    # The daily job is not repeated within the day.
    again = await job_states(setup.dsn)
    assert all(again[(i, "account_insights")]["last_attempt_at"] == first[(i, "account_insights")][
        "last_attempt_at"] for i in ids)

    status, body = await http_get(setup.http_port, "/healthz")
    health = orjson.loads(body)
    assert status == 200, health
    assert health["checks"]["database"]["ok"] is True
    assert health["freshness"]["accounts"] == 2
    status, body = await http_get(setup.http_port, "/metrics")
    assert status == 200
    names = {f.name for f in parser.text_string_to_metric_families(body.decode())}
    assert {"ig_collector_graph_calls", "ig_collector_rows_written", "ig_collector_last_success_age_seconds",
            "ig_collector_queue_depth", "ig_collector_token_expiry_days"} <= names

    assert await daemon.stop() == 0
    daemon.stopped_cleanly()
    await assert_stored_exactly(setup.dsn, setup.sim.world, ids, days)
    messages = notify.drain()
    assert any(m.startswith("READY=1") for m in messages)
    assert any(m.startswith("STOPPING=1") for m in messages)
    assert "WATCHDOG=1" in messages
    text = daemon.log.read_text()
    for a in accounts:
        assert a.access_token not in text  # tokens never logged

    # `status` reads the same state back.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector", "status", "-c", str(setup.config), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    table = out.decode()
    for i in ids:
        assert i in table
    assert "never" not in table.split("\n\n")[0]


async def test_sighup_adds_and_readds_accounts_and_keeps_old_config_when_invalid(
        setup: Setup, processes: list[DaemonProcess]) -> None:
    first, added = setup.sim.accounts()[:2], setup.sim.accounts()[2:3]
    setup.write(first)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    await daemon.start()
    await until(lambda: collected(setup.dsn, [a.ig_user_id for a in first]), 20, daemon)

    good_config = setup.config.read_text()
    setup.config.write_text(good_config + "\n[schedule]\ntick_s = 'fast'\n")  # invalid: reported, old kept
    daemon.signal(signal.SIGHUP)
    await until(lambda: daemon.logged("config_reload_failed"), 10, daemon)
    setup.config.write_text(good_config)

    setup.write(first + added)
    daemon.signal(signal.SIGHUP)
    await until(lambda: daemon.logged("config_reloaded"), 10, daemon)
    await until(lambda: collected(setup.dsn, [a.ig_user_id for a in added]), 30, daemon)

    # Removed, then put back: the account resumes its schedule (its daily job is not run again) instead of
    # starting over as a new account.
    back = first[0].ig_user_id
    before = (await job_states(setup.dsn))[(back, "account_insights")]["last_attempt_at"]
    setup.write(first[1:] + added)
    daemon.signal(signal.SIGHUP)
    await until(lambda: daemon.logged("config_reloaded", 2), 10, daemon)
    setup.write(first + added)
    daemon.signal(signal.SIGHUP)
    await until(lambda: daemon.logged("config_reloaded", 3), 10, daemon)
    readded = time.monotonic()
    base = await job_states(setup.dsn)

    async def profile_ran_again() -> bool:
        states = await job_states(setup.dsn)
        return states[(back, "profile")]["last_attempt_at"] > base[(back, "profile")]["last_attempt_at"]

    await until(profile_ran_again, 10, daemon)  # collected again after the re-add
    await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - readded)))
    assert (await job_states(setup.dsn))[(back, "account_insights")]["last_attempt_at"] == before
    assert await daemon.stop() == 0
    daemon.stopped_cleanly()


async def test_token_refresh_persists_across_restart(setup: Setup, processes: list[DaemonProcess]) -> None:
    accounts = [a for a in setup.sim.accounts() if a.login == "instagram"][:2]
    assert accounts, "the simulated world has Instagram Login accounts"
    setup.write(accounts)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    await daemon.start()

    async def refreshed() -> bool:
        data = await stored_tokens(setup.dsn)
        return all(data.get(a.ig_user_id) for a in accounts)

    await until(refreshed, 20, daemon)
    before = await stored_tokens(setup.dsn)
    assert await daemon.stop() == 0
    assert not (setup.dir / "state" / "tokens.json").exists()  # in the database, not in a file

    again = DaemonProcess(setup)
    processes.append(again)
    await again.start()
    ids = [a.ig_user_id for a in accounts]
    base = await job_states(setup.dsn)

    async def profile_ran() -> bool:  # the stored (refreshed) tokens are accepted by the simulator
        states = await job_states(setup.dsn)
        return all(states[(i, "profile")]["last_success_at"] > base[(i, "profile")]["last_success_at"]
                   for i in ids)

    await until(profile_ran, 10, again)
    after = await stored_tokens(setup.dsn)

    # The stored tokens are loaded and not refreshed again (not a week old yet).
    assert after == before
    assert not again.logged("token_refreshed")
    assert await again.stop() == 0
    for a in accounts:
        assert before[a.ig_user_id] not in again.log.read_text()


async def stored_tokens(dsn: str) -> dict[str, str]:
    """ig_user_id -> the refreshed token stored in collector_token."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('collector_token') IS NOT NULL"):
            return {}
        rows = await conn.fetch("SELECT ig_user_id::text AS id, access_token FROM collector_token "
                                "WHERE access_token IS NOT NULL")
    finally:
        await conn.close()
    return {r["id"]: r["access_token"] for r in rows}


def media_insight_answers(sim: fixtures_sim.RunningSimulator) -> set[str]:
    """Media ids whose (plain, not broken down) insights call the simulator answered successfully."""
    ids = set()
    for identity, arrivals in list(sim.stats.arrivals.items()):
        found = re.match(r"GET (\d+)/insights\?(.*)$", identity)
        if found and "breakdown=" not in found[2] and "period=" not in found[2] and any(
                a.outcome == "ok" for a in arrivals):
            ids.add(found[1])
    return ids


@pytest.mark.parametrize("signals", [1, 2], ids=["graceful", "forced"])
async def test_sigterm_during_busy_run_exits_0_with_everything_fetched_written(
        signals: int, tmp_path: Path, database: str, start_simulator: fixtures_sim.StartSimulator,
        processes: list[DaemonProcess]) -> None:
    # Slow answers, so SIGTERM lands while the first collection (with its backfill) is in flight. Forced:
    # slower still, so that the graceful stop the first signal starts (it waits for the requests on the
    # wire) is still going when the second signal comes, a poll (0.1 s) after `daemon_stopping`: at 60 ms
    # the daemon was sometimes gone by then.
    sim = await start_simulator(accounts=4, media_per_account=24, seed=7, world_knobs=WORLD,
                                latency_ms=60.0 if signals == 1 else 1000.0, record_arrivals=True)
    setup = Setup(tmp_path, database, sim)
    accounts = sim.accounts()[:4]
    setup.write(accounts)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    await daemon.start()
    await until(lambda: len(media_insight_answers(sim)) >= 8, 20, daemon)
    assert not await collected(setup.dsn, [a.ig_user_id for a in accounts])  # still busy

    daemon.signal(signal.SIGTERM)
    if signals == 2:
        await until(lambda: daemon.logged("daemon_stopping"), 5, daemon)  # (two at once would coalesce)
        daemon.signal(signal.SIGTERM)
    assert daemon.proc is not None
    # How fast it exits is scripts/bench_shutdown.py's business; tests/test_shutdown.py bounds it.
    assert await asyncio.wait_for(daemon.proc.wait(), 60) == 0
    daemon.stopped_cleanly()
    answered = media_insight_answers(sim)

    conn = await asyncpg.connect(setup.dsn)
    try:
        stored = {str(r["media_id"]) for r in await conn.fetch(
            "SELECT media_id FROM ig_media_insight UNION SELECT object_id FROM ig_unavailable "
            "WHERE object_type = 'media'")}
        values = {(str(r["media_id"]), r["metric"]): as_number(r["value"]) for r in await conn.fetch(
            "SELECT media_id, metric, value FROM ig_media_insight WHERE breakdown = ''")}
    finally:
        await conn.close()
    assert values
    for (media_id, metric), value in values.items():
        assert value == sim.world.media_metric_value(media_id, metric), (media_id, metric)
    if signals == 1:
        # Graceful: in-flight jobs finished within the grace period, so every insights answer the
        # simulator gave is in the database (as values, or as recorded unavailability).
        assert not daemon.logged("jobs_cancelled_after_grace")
        assert answered <= stored, sorted(answered - stored)
    else:
        # Forced: the second signal cancelled in-flight jobs at once; what they had handed to the writer
        # was still committed (rows_unwritten == 0 above).
        assert daemon.logged("stop_forced")


# The writer's backpressure path livelocks once the database is back (collector/storage/writer.py: with
# producers waiting for space and nothing pending after a commit, `_run` spins without yielding, so the
# waiters never wake and the event loop is stuck). Strict: the marker must go when the writer is fixed.
@pytest.mark.parametrize("buffer_max_rows", [
    200_000,  # the default: the whole outage fits in the buffer
    100,  # a few seconds of fetching fill it: backpressure
], ids=["buffering", "backpressure"])
async def test_postgresql_restart_mid_run_loses_nothing(
        buffer_max_rows: int, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator,
        processes: list[DaemonProcess]) -> None:
    server = await asyncio.to_thread(fixtures_db.embedded_server)
    try:
        admin = await asyncpg.connect(server.uri())
        await admin.execute("CREATE DATABASE daemon")
        await admin.close()
        sim = await start_simulator(accounts=6, media_per_account=12, seed=7, world_knobs=WORLD,
                                    latency_ms=10.0)
        extra = f"writer_buffer_max_rows = {buffer_max_rows}"
        setup = Setup(tmp_path, server.uri("daemon"), sim, extra=extra)
        await _restart_mid_run(setup, server, processes, buffer_max_rows)
    finally:
        await asyncio.to_thread(server.close)


async def _restart_mid_run(setup: Setup, server: fixtures_db.EmbeddedServer, processes: list[DaemonProcess],
                           buffer_max_rows: int) -> None:
    accounts = setup.sim.accounts()[:3]
    ids = [a.ig_user_id for a in accounts]
    setup.write(accounts)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    days = pacific.complete_days(datetime.now(UTC), BACKFILL_DAYS)
    await daemon.start()
    await until(lambda: setup.sim.stats.by_kind["media_insights"] > 0, 10, daemon)

    await asyncio.to_thread(server.stop)  # while jobs are fetching
    down = time.monotonic()
    calls_at_stop = setup.sim.stats.calls

    async def health_is(code: int) -> bool:
        status, _ = await http_get(setup.http_port, "/healthz")
        return status == code

    await until(lambda: health_is(503), 10, daemon)

    async def buffered() -> float:
        return (await metric_samples(setup.http_port))["ig_collector_writer_buffered_rows"]

    if buffer_max_rows > 1000:
        # Fetching goes on into the buffer while the database is away.
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - down)))
        assert setup.sim.stats.calls > calls_at_stop
        assert await buffered() > 0
    else:
        await until(lambda: _at_least(buffered(), buffer_max_rows), 15, daemon)
        # Fetching pauses: once the jobs in flight reach their next write, every worker waits for the writer
        # and no Graph call leaves (a job may make a few calls before its first write, e.g. demographics).
        await asyncio.sleep(max(1.0, 3.0 - (time.monotonic() - down)))
        quiet_deadline = time.monotonic() + 15
        calls = setup.sim.stats.calls
        while True:
            await asyncio.sleep(1.0)
            if setup.sim.stats.calls == calls:
                break
            assert time.monotonic() < quiet_deadline, "fetching never paused behind the full writer buffer"
            calls = setup.sim.stats.calls
    assert daemon.proc is not None and daemon.proc.returncode is None

    await asyncio.to_thread(server.start)
    await until(lambda: health_is(200), 15, daemon)

    async def caught_up() -> bool:  # and still answering: a wedged event loop fails here within 5 s
        return await health_is(200) and await collected(setup.dsn, ids)

    await until(caught_up, 20, daemon)
    samples = await metric_samples(setup.http_port)
    assert samples["ig_collector_writer_errors_total"] >= 1
    if buffer_max_rows <= 1000:
        assert samples["ig_collector_writer_wait_seconds_total"] > 0
    assert await daemon.stop() == 0
    daemon.stopped_cleanly()
    assert daemon.logged("writer_retry")
    await assert_stored_exactly(setup.dsn, setup.sim.world, ids, days)


async def _at_least(value: Awaitable[float], floor: float) -> bool:
    return await value >= floor


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names the installed entry point (/opt/ig-collector/...); point it at this checkout's so
    # verify checks everything else instead of stopping at "not executable".
    entry = Path(sys.executable).parent / "ig-collector"
    command = str(entry) if entry.exists() else f"{sys.executable} -m collector"
    unit = (ROOT / "config" / "ig-collector.service").read_text()
    assert unit.count("\nExecStart=") == 1
    unit = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={command}", unit)
    path = tmp_path / "ig-collector.service"
    path.write_text(unit)
    result = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert "ig-collector.service" not in result.stderr, result.stderr  # no warning about our unit


async def test_daily_maintenance_applies_retention_at_start(tmp_path: Path, database: str,
                                                            sim: fixtures_sim.RunningSimulator,
                                                            processes: list[DaemonProcess]) -> None:
    """The daemon's maintenance task runs once at start: the months ahead exist and [retention] drops a
    month partition entirely older than history_days (then it runs daily)."""
    conn = await asyncpg.connect(database)
    old = partitions.Month.of(datetime.now(UTC)).next(-3)
    try:
        await migrations.migrate(conn)
        await partitions.create_partition(conn, partitions.HISTORY, old)
        await conn.execute("INSERT INTO ig_media_insight_history (media_id, metric, value, collected_at) "
                           "VALUES (1, 'reach', 1, $1)", old.start)
    finally:
        await conn.close()
    setup = Setup(tmp_path, database, sim, extra="\n[retention]\nhistory_days = 30")
    setup.write(setup.sim.accounts()[:1])
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    await daemon.start()
    await until(lambda: daemon.logged("history_maintenance_done"), 20, daemon)
    dropped = [e["partition"] for e in daemon.events("retention_applied") if e["action"] == "drop"]
    assert dropped == [partitions.partition_name(partitions.HISTORY, old)]
    assert await daemon.stop() == 0
    conn = await asyncpg.connect(database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM ig_media_insight_history WHERE media_id = 1") == 0
        names = {p.month for p in await partitions.list_partitions(conn, partitions.HISTORY)}
        now = partitions.Month.of(datetime.now(UTC))
        assert {now, now.next(), now.next(2)} <= names and old not in names
    finally:
        await conn.close()
