"""Acceptance tier: `python -m collector run` with a `[webhook]` section, as a subprocess, against the
simulator and a real PostgreSQL (a fresh database from tests/fixtures_db.py). Deliveries go over real HTTP
to the daemon's shared /metrics listener; the story rows are read back from the database."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
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
APP_SECRET = "daemon-webhook-app-secret-42"
VERIFY_TOKEN = "daemon-webhook-verify-token-42"
PATH = "/hooks/ig"
UNKNOWN_ACCOUNT = "17841499999999999"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _story(account: str, media_id: int, values: dict[str, object]) -> bytes:
    return orjson.dumps({"object": "instagram", "entry": [{"id": account, "time": int(time.time() * 1000),
                         "changes": [{"field": "story_insights",
                                      "value": {"media_id": str(media_id), **values}}]}]})


@pytest.fixture
async def sim_url() -> AsyncIterator[tuple[str, list[world_mod.SimAccount]]]:
    world = world_mod.World(11, 2, 2, invalid_token_fraction=0.0, history_days=5)
    runner = web.AppRunner(server.make_app(world, api.Options()), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", list(world.accounts())
    finally:
        await runner.cleanup()


async def _until_serving(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process,
                         log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"daemon exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    pytest.fail(f"daemon not serving:\n{log.read_text()[-4000:]}")


async def _start_daemon(tmp_path: Path, db_dsn: str, url: str, accounts: list[world_mod.SimAccount],
                        port: int) -> tuple[asyncio.subprocess.Process, Path]:
    (tmp_path / "accounts.csv").write_text("ig_user_id,login,access_token\n" + "".join(
        f"{a.ig_user_id},{a.login},{a.access_token}\n" for a in accounts))
    (tmp_path / "config.toml").write_text(f"""
accounts_file = "accounts.csv"
state_dir = "state"
[database]
url = "{db_dsn}"
[graph]
instagram_base_url = "{url}"
facebook_base_url = "{url}"
[http]
listen = "127.0.0.1:{port}"
[webhook]
path = "{PATH}"
verify_token = "{VERIFY_TOKEN}"
app_secret_env = "TEST_WEBHOOK_APP_SECRET"
body_max_bytes = 65536
[log]
level = "debug"
json = true
""")
    log = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "DATABASE_URL")}
    env["TEST_WEBHOOK_APP_SECRET"] = APP_SECRET
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "collector", "run", "-c", str(tmp_path / "config.toml"),
            cwd=ROOT, env=env, stdout=out, stderr=out)
    return proc, log


async def test_daemon_receives_story_insights(
        tmp_path: Path, db_dsn: str, sim_url: tuple[str, list[world_mod.SimAccount]]) -> None:
    url, accounts = sim_url
    port = _free_port()
    proc, log = await _start_daemon(tmp_path, db_dsn, url, accounts, port)
    base = f"http://127.0.0.1:{port}"
    hook = base + PATH
    account = accounts[0].ig_user_id
    try:
        async with aiohttp.ClientSession() as session:
            await _until_serving(session, base + "/metrics", proc, log)

            async def post(body: bytes, signature: str | None) -> int:
                headers = {"X-Hub-Signature-256": signature} if signature else {}
                async with session.post(hook, data=body, headers=headers) as response:
                    return response.status

            async def get(params: dict[str, str]) -> tuple[int, str]:
                async with session.get(hook, params=params) as response:
                    return response.status, await response.text()

            # Handshake.
            hub = {"hub.mode": "subscribe", "hub.challenge": "31337"}
            assert await get({**hub, "hub.verify_token": VERIFY_TOKEN}) == (200, "31337")
            assert (await get({**hub, "hub.verify_token": "nope"}))[0] == 403

            # Stored, then the same delivery again.
            first = _story(account, 17_900_000_000_000_001, {"reach": 40, "replies": 2, "taps_back": 1})
            assert await post(first, _sign(first)) == 200
            assert await post(first, _sign(first)) == 200

            # Rejected: forged, unsigned, altered after signing, oversize, malformed.
            forged = _story(account, 17_900_000_000_000_002, {"reach": 1})
            assert await post(forged, _sign(forged, "not-the-secret")) == 403
            assert await post(forged, None) == 401
            assert await post(forged.replace(b'"reach":1', b'"reach":2'), _sign(forged)) == 403
            big = b'{"pad":"' + b"x" * 70_000 + b'"}'
            assert await post(big, _sign(big)) == 413
            for bad in (b"{oops", b'{"object":"instagram","entry":"x"}'):
                assert await post(bad, _sign(bad)) == 400
            unknown = _story(UNKNOWN_ACCOUNT, 17_900_000_000_000_003, {"reach": 9})
            assert await post(unknown, _sign(unknown)) == 200

            # 200 concurrent deliveries.
            bodies = [_story(account, 17_910_000_000_000_000 + i, {"reach": i, "exits": 1})
                      for i in range(200)]
            statuses = await asyncio.gather(*(post(b, _sign(b)) for b in bodies))
            assert statuses == [200] * 200

            async with session.get(base + "/healthz") as response:
                assert response.status in (200, 503)  # serving; health itself depends on collection
            async with session.get(base + "/metrics") as response:
                exposition = await response.text()
        families = parser.text_string_to_metric_families(exposition)
        outcomes = {s.labels["outcome"]: s.value for family in families
                    if family.name == "ig_collector_webhook_deliveries" for s in family.samples
                    if s.name.endswith("_total")}
        assert outcomes == {"verify_ok": 1, "verify_failed": 1, "stored": 201, "duplicate": 1,
                            "bad_signature": 2, "unsigned": 1, "too_large": 1, "malformed": 2,
                            "unknown_account": 1}

        proc.send_signal(signal.SIGTERM)  # the writer's last flush commits whatever is still buffered
        assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-4000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    conn = await asyncpg.connect(db_dsn)
    try:
        story = await conn.fetchrow("SELECT ig_user_id::text AS account, media_product_type FROM ig_media "
                                    "WHERE media_id = $1", 17_900_000_000_000_001)
        assert tuple(story) == (account, "STORY")
        history = await conn.fetchval(
            "SELECT count(*) FROM ig_media_insight_history WHERE media_id = $1", 17_900_000_000_000_001)
        assert history == 3  # three metrics, once each despite the repeat
        rejected = await conn.fetchval("SELECT count(*) FROM ig_media WHERE media_id = ANY($1)",
                                       [17_900_000_000_000_002, 17_900_000_000_000_003])
        assert rejected == 0
        many = await conn.fetchval(
            "SELECT count(*) FROM ig_media_insight WHERE media_id BETWEEN $1 AND $2",
            17_910_000_000_000_000, 17_910_000_000_000_199)
        assert many == 400
    finally:
        await conn.close()
    text = log.read_text()
    assert APP_SECRET not in text and VERIFY_TOKEN not in text
    assert '"webhook_change"' in text and '"webhook_rejected"' in text


async def test_sigkill_right_after_200s_loses_nothing(
        tmp_path: Path, db_dsn: str, sim_url: tuple[str, list[world_mod.SimAccount]]) -> None:
    """A 200 means committed: the daemon killed (no flush, no shutdown) the moment the last of 200
    concurrent deliveries is answered still has every one of them in the database."""
    url, accounts = sim_url
    port = _free_port()
    proc, log = await _start_daemon(tmp_path, db_dsn, url, accounts, port)
    base = f"http://127.0.0.1:{port}"
    account = accounts[0].ig_user_id
    first = 17_920_000_000_000_000
    try:
        async with aiohttp.ClientSession() as session:
            await _until_serving(session, base + "/metrics", proc, log)

            async def post(body: bytes) -> int:
                async with session.post(base + PATH, data=body,
                                        headers={"X-Hub-Signature-256": _sign(body)}) as response:
                    return response.status

            bodies = [_story(account, first + i, {"reach": 10 + i, "exits": 1}) for i in range(200)]
            statuses = await asyncio.gather(*(post(b) for b in bodies))
            proc.kill()  # SIGKILL: nothing after the answers runs
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert statuses == [200] * 200, log.read_text()[-4000:]
    conn = await asyncpg.connect(db_dsn)
    try:
        stored = {(r["media_id"], r["metric"]): r["value"] for r in await conn.fetch(
            "SELECT media_id, metric, value FROM ig_media_insight WHERE media_id BETWEEN $1 AND $2",
            first, first + 199)}
        media = await conn.fetchval("SELECT count(*) FROM ig_media WHERE media_id BETWEEN $1 AND $2",
                                    first, first + 199)
    finally:
        await conn.close()
    assert media == 200
    assert stored == {**{(first + i, "reach"): 10 + i for i in range(200)},
                      **{(first + i, "exits"): 1 for i in range(200)}}
