"""Integration tier: the webhook receiver over real HTTP, storing through a real Writer into PostgreSQL.

Each test gets a fresh migrated database (the `pool` fixture of tests/fixtures_db.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web

from collector import metrics, models, settings, webhook
from collector.storage import writer as storage_writer

APP_SECRET = "test-app-secret-0123456789"
VERIFY_TOKEN = "test-verify-token-abcdef"
FB_ACCOUNT = "17841400000000001"
IG_ACCOUNT = "17841400000000002"  # Instagram Login: Meta should not send these, but may
UNKNOWN_ACCOUNT = "17841499999999999"
PATH = "/webhooks/instagram"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "send_webhook.py"

# Media ids unique across tests, so tests sharing a database never see each other's rows.
_media_ids = itertools.count(18_000_000_000_000_000 + os.getpid() * 1_000_000)


def sign(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def story_body(media_id: int, values: dict[str, object], *, account: str = FB_ACCOUNT) -> bytes:
    return orjson.dumps({"object": "instagram", "entry": [{
        "id": account, "time": 1_750_000_000,
        "changes": [{"field": "story_insights", "value": {"media_id": str(media_id), **values}}]}]})


def _account(ig_user_id: str, login: models.Login) -> models.Account:
    return models.Account(ig_user_id, login, models.Secret("token"), "test")


@dataclass
class Server:
    url: str
    session: aiohttp.ClientSession
    metrics: metrics.Metrics
    writer: storage_writer.Writer
    pool: asyncpg.Pool

    async def post(self, body: bytes, *, signature: str | None = "sign",
                   headers: dict[str, str] | None = None) -> tuple[int, str]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if signature == "sign":
            h["X-Hub-Signature-256"] = sign(body)
        elif signature is not None:
            h["X-Hub-Signature-256"] = signature
        async with self.session.post(self.url, data=body, headers=h) as response:
            return response.status, await response.text()

    async def verify(self, **params: str) -> tuple[int, str]:
        async with self.session.get(self.url, params=params) as response:
            return response.status, await response.text()

    def count(self, outcome: str) -> float:
        return self.metrics.total(self.metrics.webhook_deliveries, outcome=outcome)

    async def stored(self, media_id: int) -> dict[str, Any]:
        """Everything the database holds for one media, after the writer committed what it was given."""
        await self.writer.flush()
        async with self.pool.acquire() as conn:
            media = await conn.fetchrow("SELECT * FROM ig_media WHERE media_id = $1", media_id)
            insights = await conn.fetch(
                "SELECT metric, breakdown, dimension, value FROM ig_media_insight WHERE media_id = $1 "
                "ORDER BY metric", media_id)
            history = await conn.fetchval(
                "SELECT count(*) FROM ig_media_insight_history WHERE media_id = $1", media_id)
            unavailable = await conn.fetch(
                "SELECT metric, reason FROM ig_unavailable WHERE object_type = 'media' AND object_id = $1 "
                "ORDER BY metric", media_id)
        return {"media": media, "insights": {r["metric"]: r["value"] for r in insights},
                "dims": {(r["breakdown"], r["dimension"]) for r in insights},
                "history": history, "unavailable": [tuple(r) for r in unavailable]}


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(pool: asyncpg.Pool) -> AsyncIterator[ServerFactory]:
    """Start receivers (each its own aiohttp app on a free port) sharing one real Writer."""
    cleanups: list[Callable[[], Awaitable[None]]] = []
    session = aiohttp.ClientSession()
    async with storage_writer.Writer(pool, flush_interval_s=0.05) as writer:

        async def start(*, body_max_bytes: int = 1024 * 1024,
                        accounts: dict[str, models.Account] | None = None) -> Server:
            config = settings.WebhookSettings(
                verify_token=models.Secret(VERIFY_TOKEN), app_secret=models.Secret(APP_SECRET),
                path=PATH, body_max_bytes=body_max_bytes)
            known = accounts if accounts is not None else {
                FB_ACCOUNT: _account(FB_ACCOUNT, "facebook"), IG_ACCOUNT: _account(IG_ACCOUNT, "instagram")}
            counters = metrics.Metrics()
            receiver = webhook.WebhookReceiver(config, accounts=lambda: known, writer=writer,
                                               metrics=counters)
            app = web.Application()
            app.add_routes(receiver.routes())
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            cleanups.append(runner.cleanup)
            port = runner.addresses[0][1]
            return Server(f"http://127.0.0.1:{port}{PATH}", session, counters, writer, pool)

        try:
            yield start
        finally:
            await session.close()
            for cleanup in reversed(cleanups):
                await cleanup()


@pytest.fixture
async def server(make_server: ServerFactory) -> Server:
    return await make_server()


async def test_handshake(server: Server) -> None:
    ok = await server.verify(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                "hub.challenge": "1158201444"})
    assert ok == (200, "1158201444")
    assert await server.verify(**{"hub.mode": "subscribe", "hub.verify_token": "wrong",
                                  "hub.challenge": "1"}) == (403, "forbidden")
    assert (await server.verify(**{"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN,
                                   "hub.challenge": "1"}))[0] == 403
    assert (await server.verify(**{"hub.challenge": "1"}))[0] == 403
    assert (await server.verify(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN}))[0] == 400
    assert server.count("verify_ok") == 1
    assert server.count("verify_failed") == 4


async def test_signed_delivery_is_stored_with_history(server: Server) -> None:
    media_id = next(_media_ids)
    body = story_body(media_id, {"impressions": 444, "reach": 44, "taps_forward": 4, "taps_back": 3,
                                 "exits": 3, "replies": 0, "views": -1, "note": "not a metric"})
    assert await server.post(body) == (200, "ok")
    row = await server.stored(media_id)
    media = row["media"]
    assert media is not None
    assert (media["ig_user_id"], media["media_product_type"], media["media_type"], media["posted_at"]) == (
        int(FB_ACCOUNT), "STORY", None, None)
    assert media["insights_refreshed_at"] is not None
    assert row["insights"] == {"impressions": 444, "reach": 44, "taps_forward": 4, "taps_back": 3,
                               "exits": 3, "replies": 0}
    assert row["dims"] == {("", "")}
    assert row["history"] == 6
    assert row["unavailable"] == [("views", "not_enough_viewers")]
    assert server.count("stored") == 1


async def test_same_delivery_twice_stores_once(make_server: ServerFactory) -> None:
    server = await make_server()
    media_id = next(_media_ids)
    body = story_body(media_id, {"reach": 10, "replies": 1})
    assert (await server.post(body))[0] == 200
    first = await server.stored(media_id)
    assert (await server.post(body))[0] == 200
    assert server.count("stored") == 1 and server.count("duplicate") == 1
    # A receiver that never saw it (a restart): the database upsert is what makes it idempotent.
    fresh = await make_server()
    assert (await fresh.post(body))[0] == 200
    again = await fresh.stored(media_id)
    assert again["insights"] == first["insights"] == {"reach": 10, "replies": 1}
    assert again["history"] == first["history"] == 2
    # A later, different value is new history.
    assert (await server.post(story_body(media_id, {"reach": 12, "replies": 1})))[0] == 200
    later = await server.stored(media_id)
    assert later["insights"] == {"reach": 12, "replies": 1}
    assert later["history"] == 3


async def test_forged_unsigned_and_altered_bodies_are_rejected(server: Server) -> None:
    media_id = next(_media_ids)
    body = story_body(media_id, {"reach": 5})
    assert (await server.post(body, signature=None))[0] == 401
    assert (await server.post(body, signature="sha1=" + "0" * 40))[0] == 401
    assert (await server.post(body, signature=sign(body, "another-secret")))[0] == 403
    assert (await server.post(body, signature="sha256=nothex"))[0] == 403
    altered = body.replace(b'"reach":5', b'"reach":9')
    assert altered != body
    assert (await server.post(altered, signature=sign(body)))[0] == 403
    assert server.count("unsigned") == 2 and server.count("bad_signature") == 3
    row = await server.stored(media_id)
    assert row["media"] is None and row["insights"] == {} and row["history"] == 0
    # Upper-case hex is the same signature.
    assert (await server.post(body, signature="sha256=" + sign(body)[7:].upper()))[0] == 200


async def test_oversize_is_413_and_server_keeps_serving(make_server: ServerFactory) -> None:
    server = await make_server(body_max_bytes=4096)
    media_id = next(_media_ids)
    big = story_body(media_id, {"reach": 1, "pad": "x" * 10_000})
    assert (await server.post(big))[0] == 413  # Content-Length says too much: refused before reading

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the stream read is capped
        for _ in range(64):
            yield b" " * 1024

    headers = {"X-Hub-Signature-256": "sha256=" + "0" * 64}
    async with server.session.post(server.url, data=chunks(), headers=headers) as response:
        assert response.status == 413
    assert server.count("too_large") == 2
    small = story_body(media_id, {"reach": 1})
    assert (await server.post(small))[0] == 200
    assert (await server.stored(media_id))["insights"] == {"reach": 1}


@pytest.mark.parametrize("body", [
    b"{not json", b"", b"[]", b'{"object":"instagram"}', b'{"object":"instagram","entry":[{"id":"x"}]}',
    b'{"object":"instagram","entry":[{"id":"17841400000000001","changes":[{"field":"story_insights",'
    b'"value":{"reach":1}}]}]}',
    b'{"object":"instagram","entry":[{"id":"17841400000000001","changes":[{"field":"story_insights",'
    b'"value":{"media_id":"99999999999999999999","reach":1}}]}]}',
])
async def test_malformed_is_400_and_nothing_stored(server: Server, body: bytes) -> None:
    status, text = await server.post(body)
    assert (status, text) == (400, "malformed")
    assert server.count("malformed") == 1
    assert (await server.verify(**{"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                   "hub.challenge": "7"})) == (200, "7")


async def test_one_bad_change_rejects_the_whole_delivery(server: Server) -> None:
    good, bad = next(_media_ids), next(_media_ids)
    body = orjson.dumps({"object": "instagram", "entry": [{"id": FB_ACCOUNT, "time": 1, "changes": [
        {"field": "story_insights", "value": {"media_id": str(good), "reach": 3}},
        {"field": "story_insights", "value": {"media_id": str(bad)}}]}]})
    assert (await server.post(body))[0] == 400
    assert (await server.stored(good))["media"] is None


async def test_unknown_accounts_other_fields_and_instagram_login(server: Server) -> None:
    unknown, ig_login = next(_media_ids), next(_media_ids)
    body = orjson.dumps({"object": "instagram", "entry": [
        {"id": UNKNOWN_ACCOUNT, "time": 1, "changes": [
            {"field": "story_insights", "value": {"media_id": str(unknown), "reach": 3}}]},
        {"id": FB_ACCOUNT, "time": 1, "changes": [{"field": "comments", "value": {"id": "1", "text": "hi"}}]},
        {"id": IG_ACCOUNT, "time": 1_750_000_000_000, "changes": [
            {"field": "story_insights", "value": {"media_id": str(ig_login), "reach": 8}}]}]})
    assert await server.post(body) == (200, "ok")
    assert server.count("unknown_account") == 1
    assert server.count("ignored_field") == 1
    assert server.count("stored") == 1
    assert (await server.stored(unknown))["media"] is None
    assert (await server.stored(ig_login))["insights"] == {"reach": 8}
    other = orjson.dumps({"object": "page", "entry": []})
    assert (await server.post(other))[0] == 200
    assert server.count("ignored_object") == 1


async def test_accounts_are_read_per_delivery(make_server: ServerFactory) -> None:
    accounts: dict[str, models.Account] = {}
    server = await make_server(accounts=accounts)
    media_id = next(_media_ids)
    body = story_body(media_id, {"reach": 2})
    assert (await server.post(body))[0] == 200
    assert server.count("unknown_account") == 1
    accounts[FB_ACCOUNT] = _account(FB_ACCOUNT, "facebook")  # what a SIGHUP reload does
    assert (await server.post(body))[0] == 200
    assert (await server.stored(media_id))["insights"] == {"reach": 2}


async def test_200_concurrent_deliveries_all_stored(server: Server) -> None:
    media_ids = [next(_media_ids) for _ in range(200)]
    bodies = [story_body(m, {"reach": i, "replies": 1, "exits": 2}) for i, m in enumerate(media_ids)]
    results = await asyncio.gather(*(server.post(b) for b in bodies))
    assert all(r == (200, "ok") for r in results)
    assert server.count("stored") == 200
    await server.writer.flush()
    async with server.pool.acquire() as conn:
        media = await conn.fetchval("SELECT count(*) FROM ig_media WHERE media_id = ANY($1)", media_ids)
        insights = await conn.fetchval(
            "SELECT count(*) FROM ig_media_insight WHERE media_id = ANY($1)", media_ids)
        reach = await conn.fetchval(
            "SELECT sum(value) FROM ig_media_insight WHERE metric = 'reach' AND media_id = ANY($1)",
            media_ids)
    assert (media, insights, reach) == (200, 600, sum(range(200)))


async def test_concurrent_updates_of_one_story(server: Server) -> None:
    """Different numbers for the same story in one writer batch must not break the batch."""
    media_id = next(_media_ids)
    results = await asyncio.gather(*(server.post(story_body(media_id, {"reach": r})) for r in range(20)))
    assert all(status == 200 for status, _ in results)
    row = await server.stored(media_id)
    assert set(row["insights"]) == {"reach"}
    assert 1 <= row["history"] <= 20


async def test_send_webhook_script(server: Server) -> None:
    media_id = next(_media_ids)
    env = {**os.environ, "IG_APP_SECRET": APP_SECRET, "IG_WEBHOOK_VERIFY_TOKEN": VERIFY_TOKEN}

    def run(*args: str, secret_env: dict[str, str] = env,
            interpreter: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*interpreter, str(SCRIPT), *args], env=secret_env, capture_output=True,
                              text=True, timeout=30, check=False)

    deliver = await asyncio.to_thread(run, "deliver", server.url, "--ig-user-id", FB_ACCOUNT, "--media-id",
                                      str(media_id), "--metric", "reach=7", "--metric", "views=9")
    assert deliver.returncode == 0, deliver.stdout + deliver.stderr
    assert deliver.stdout.strip() == "200 ok"
    # Run as the docs show it, and as an executable (its shebang; the standard library only).
    verify = await asyncio.to_thread(run, "verify", server.url)
    assert verify.returncode == 0 and verify.stdout.startswith("200 ")
    verify = await asyncio.to_thread(run, "verify", server.url, interpreter=())
    assert verify.returncode == 0 and verify.stdout.startswith("200 ")
    forged = await asyncio.to_thread(run, "deliver", server.url, "--ig-user-id", FB_ACCOUNT, "--media-id",
                                     str(media_id), "--metric", "reach=1",
                                     secret_env={**env, "IG_APP_SECRET": "wrong"})
    assert forged.returncode == 1 and forged.stdout.startswith("403")
    assert APP_SECRET not in deliver.stdout + deliver.stderr + verify.stdout + verify.stderr
    assert (await server.stored(media_id))["insights"] == {"reach": 7, "views": 9}


async def test_uncommitted_deliveries_answer_503_then_recover(pool: asyncpg.Pool) -> None:
    """A writer stuck behind a table lock cannot commit: deliveries are answered 503 (Meta retries) once the
    commit does not come within commit_timeout_s, or the full buffer takes no more within
    enqueue_timeout_s. Never 200 for rows that are not committed; Meta's retries then store everything."""
    config = settings.WebhookSettings(verify_token=models.Secret(VERIFY_TOKEN),
                                      app_secret=models.Secret(APP_SECRET), path=PATH)
    counters = metrics.Metrics()
    known = {FB_ACCOUNT: _account(FB_ACCOUNT, "facebook")}
    media_ids = [next(_media_ids) for _ in range(3)]
    statuses: list[int] = []
    retried: list[int] = []
    async with pool.acquire() as locker:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE ig_media IN ACCESS EXCLUSIVE MODE")
        locked = True
        # 3 rows per delivery (media + 2 insights): the second delivery fills the 5-row buffer.
        async with storage_writer.Writer(pool, flush_interval_s=0.01, buffer_max_rows=5) as writer:
            receiver = webhook.WebhookReceiver(config, accounts=lambda: known, writer=writer,
                                               metrics=counters, enqueue_timeout_s=0.3,
                                               commit_timeout_s=0.3)
            app = web.Application()
            app.add_routes(receiver.routes())
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            url = f"http://127.0.0.1:{runner.addresses[0][1]}{PATH}"
            try:
                async with aiohttp.ClientSession() as session:
                    async def post(media_id: int) -> int:
                        body = story_body(media_id, {"reach": 1, "replies": 2})
                        headers = {"X-Hub-Signature-256": sign(body)}
                        async with session.post(url, data=body, headers=headers) as response:
                            return response.status

                    for media_id in media_ids:  # commit timeout, commit timeout, enqueue timeout
                        statuses.append(await post(media_id))
                    await lock.rollback()
                    locked = False
                    for media_id in media_ids:  # Meta's retries, once the database moves again
                        retried.append(await post(media_id))
            finally:
                if locked:  # never leave the writer's final flush waiting on the lock
                    await lock.rollback()
                await runner.cleanup()
    assert statuses == [503, 503, 503]
    assert retried == [200, 200, 200]
    assert counters.total(counters.webhook_deliveries, outcome="busy") == 3
    assert counters.total(counters.webhook_deliveries, outcome="stored") == 3
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM ig_media_insight WHERE media_id = ANY($1)",
                                     media_ids)
    assert stored == 6
