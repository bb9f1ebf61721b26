"""The real daemon (`python -m collector run`) as a subprocess, against the simulator over HTTP and a real
PostgreSQL, with the schedule compressed to seconds by its config.

Each test gets its own database on the TEST_DATABASE_URL server. The PostgreSQL outage is real from the
daemon's side: it reaches the database through a TCP relay that the test cuts (every connection reset,
new ones refused) and restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from prometheus_client import parser

from collector.simulator import api, server
from collector.simulator import world as world_mod

ROOT = Path(__file__).resolve().parent.parent
ADMIN_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")
JOBS = {"profile", "media", "stories", "account_insights", "demographics"}


# ---------------------------------------------------------------------------------------- fixtures


@dataclass
class Sim:
    url: str
    world: world_mod.World
    accounts: list[world_mod.SimAccount]


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    world = world_mod.World(7, 6, 12, invalid_token_fraction=0.0, history_days=60)
    # Tokens may be refreshed at any age here, so the daemon's first refresh happens in the test.
    app = server.make_app(world, api.Options(refresh_min_age_s=0.0))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Sim(f"http://127.0.0.1:{port}", world, list(world.accounts()))
    finally:
        await runner.cleanup()


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


class Relay:
    """A TCP relay in front of PostgreSQL that can be cut (connections reset, new ones refused)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Setup:
    dir: Path
    dsn: str
    sim: Sim
    http_port: int = field(default_factory=free_port)
    extra: str = ""

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
        self.config.write_text(f"""
accounts_file = "accounts.csv"
state_dir = "state"

[database]
url = "{self.dsn}"
connect_timeout_s = 3.0

[graph]
instagram_base_url = "{self.sim.url}"
facebook_base_url = "{self.sim.url}"
request_timeout_s = 5.0

[retry]
base_delay_s = 0.05
max_delay_s = 0.5

[collect]
account_backfill_days = 3
media_max_age_days = 30
max_concurrent_accounts = 4

[schedule]
media_discovery_interval_s = 2.0
stories_interval_s = 2.0
profile_interval_s = 2.0
demographics_interval_s = 3.0
tick_s = 0.1
shutdown_grace_s = 5.0
token_refresh_after_days = 7.0
job_retry_base_s = 1.0

[http]
listen = "127.0.0.1:{self.http_port}"

[log]
level = "info"
json = true
{self.extra}
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

    def events(self) -> list[dict[str, object]]:
        out = []
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(line)
                if isinstance(event, dict):
                    out.append(event)
        return out

    def logged(self, event: str) -> bool:
        return any(e.get("event") == event for e in self.events())

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
        await asyncio.sleep(0.2)


@pytest.fixture
def setup(tmp_path: Path, database: str, sim: Sim) -> Setup:
    return Setup(tmp_path, database, sim)


@pytest.fixture
def processes() -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    yield started
    for p in started:
        p.kill()


async def job_states(dsn: str) -> dict[tuple[str, str], asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('collector_job_state') IS NOT NULL"):
            return {}
        rows = await conn.fetch("SELECT ig_user_id::text AS id, job, last_success_at, consecutive_failures "
                                "FROM collector_job_state")
    finally:
        await conn.close()
    return {(r["id"], r["job"]): r for r in rows}


def all_collected(ids: list[str]) -> Callable[[dict[tuple[str, str], asyncpg.Record]], bool]:
    def check(states: dict[tuple[str, str], asyncpg.Record]) -> bool:
        return all(states.get((i, j)) is not None and states[(i, j)]["last_success_at"] is not None
                   for i in ids for j in JOBS)
    return check


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, await r.read()


# ------------------------------------------------------------------------------------------- tests


@pytest.fixture
async def notify(tmp_path: Path) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


async def test_collects_on_schedule_serves_health_and_stops_cleanly(
        setup: Setup, processes: list[DaemonProcess], notify: NotifyListener) -> None:
    accounts = setup.sim.accounts[:3]
    ids = [a.ig_user_id for a in accounts]
    setup.write(accounts)
    daemon = DaemonProcess(setup, notify)
    processes.append(daemon)
    await daemon.start()

    async def collected() -> bool:
        return all_collected(ids)(await job_states(setup.dsn))

    await until(collected, 30, daemon)
    first = await job_states(setup.dsn)

    async def media_ran_again() -> bool:
        states = await job_states(setup.dsn)
        return all(states[(i, "media")]["last_success_at"] > first[(i, "media")]["last_success_at"]
                   for i in ids)

    await until(media_ran_again, 15, daemon)  # the 2 s interval came round again

    status, body = await http_get(setup.http_port, "/healthz")
    health = orjson.loads(body)
    assert status == 200, health
    assert health["checks"]["database"]["ok"] is True
    status, body = await http_get(setup.http_port, "/metrics")
    assert status == 200
    names = {f.name for f in parser.text_string_to_metric_families(body.decode())}
    assert {"ig_collector_graph_calls", "ig_collector_rows_written", "ig_collector_last_success_age_seconds",
            "ig_collector_queue_depth", "ig_collector_token_expiry_days"} <= names

    assert await daemon.stop() == 0
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


async def test_sighup_adds_accounts_and_keeps_old_config_when_invalid(
        setup: Setup, processes: list[DaemonProcess]) -> None:
    first, added = setup.sim.accounts[:2], setup.sim.accounts[2:4]
    setup.write(first)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    await daemon.start()

    async def collected(ids: list[str]) -> bool:
        return all_collected(ids)(await job_states(setup.dsn))

    await until(lambda: collected([a.ig_user_id for a in first]), 30, daemon)

    good_config = setup.config.read_text()
    setup.config.write_text(good_config + "\n[schedule]\ntick_s = 'fast'\n")  # invalid: reported, old kept
    daemon.signal(signal.SIGHUP)
    await until(lambda: daemon.logged("config_reload_failed"), 10, daemon)

    setup.write(first + added)
    daemon.signal(signal.SIGHUP)
    await until(lambda: daemon.logged("config_reloaded"), 10, daemon)
    started = time.monotonic()
    await until(lambda: collected([a.ig_user_id for a in added]), 20, daemon)
    assert time.monotonic() - started < 15
    assert await daemon.stop() == 0


async def test_token_refresh_persists_across_restart(setup: Setup, processes: list[DaemonProcess]) -> None:
    accounts = [a for a in setup.sim.accounts if a.login == "instagram"][:2]
    assert accounts, "the simulated world has Instagram Login accounts"
    setup.write(accounts)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    await daemon.start()
    store = setup.dir / "state" / "tokens.json"

    def refreshed() -> bool:
        if not store.exists():
            return False
        data = orjson.loads(store.read_bytes())["accounts"]
        return all(data.get(a.ig_user_id, {}).get("access_token") for a in accounts)

    await until(refreshed, 20, daemon)
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    before = orjson.loads(store.read_bytes())["accounts"]
    assert await daemon.stop() == 0

    again = DaemonProcess(setup)
    processes.append(again)
    await again.start()
    await asyncio.sleep(2)
    after = orjson.loads(store.read_bytes())["accounts"]
    # The stored tokens are loaded and not refreshed again (not a week old yet).
    def tokens_of(data: dict[str, dict[str, str]]) -> dict[str, str]:
        return {k: v["access_token"] for k, v in data.items()}

    assert tokens_of(after) == tokens_of(before)
    assert not again.logged("token_refreshed")
    assert await again.stop() == 0
    for a in accounts:
        assert before[a.ig_user_id]["access_token"] not in again.log.read_text()


async def test_database_outage_loses_nothing_and_healthz_goes_503(
        setup: Setup, processes: list[DaemonProcess]) -> None:
    parts = urllib.parse.urlsplit(setup.dsn)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    await relay.start()
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{relay.port}" if userinfo else f"127.0.0.1:{relay.port}"
    real_dsn = setup.dsn
    setup.dsn = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    accounts = setup.sim.accounts[:3]
    ids = [a.ig_user_id for a in accounts]
    setup.write(accounts)
    daemon = DaemonProcess(setup)
    processes.append(daemon)
    try:
        await _outage(setup, relay, daemon, real_dsn, ids)
    finally:
        await relay.cut()


async def _outage(setup: Setup, relay: Relay, daemon: DaemonProcess, real_dsn: str, ids: list[str]) -> None:
    await daemon.start()
    await relay.cut()

    async def unhealthy() -> bool:
        status, _ = await http_get(setup.http_port, "/healthz")
        return status == 503

    await until(unhealthy, 15, daemon)
    await asyncio.sleep(3)  # jobs keep fetching into the writer's buffer meanwhile
    assert daemon.proc is not None and daemon.proc.returncode is None
    await relay.start()  # the database is back, same address

    async def healthy() -> bool:
        status, _ = await http_get(setup.http_port, "/healthz")
        return status == 200

    await until(healthy, 15, daemon)
    await until(lambda: _collected(real_dsn, ids), 30, daemon)
    assert await daemon.stop() == 0

    # Everything the simulator has for these accounts (media within the age limit) is stored.
    conn = await asyncpg.connect(real_dsn)
    try:
        stored = {r["m"] for r in await conn.fetch("SELECT media_id::text AS m FROM ig_media")}
    finally:
        await conn.close()
    cutoff = time.time() - 30 * 86400
    expected = {m.media_id for i in ids for m in setup.sim.world.media_of(i)
                if not m.is_story and m.timestamp.timestamp() > cutoff}
    assert expected <= stored


async def _collected(dsn: str, ids: list[str]) -> bool:
    return all_collected(ids)(await job_states(dsn))
