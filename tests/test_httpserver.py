"""/healthz and /metrics over real HTTP, with the database check against a real PostgreSQL (and against an
address where no PostgreSQL listens)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from prometheus_client import parser

from collector import exceptions, httpserver, metrics

DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://root@127.0.0.1:5432/test")


class PoolHealth:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def database_ok(self) -> bool:
        return await httpserver.ping_database(self.pool, timeout_s=1.0)

    def freshness(self) -> Mapping[str, object]:
        return {"accounts": 2, "stale": 0}


@pytest.fixture
async def live_pool() -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(DSN, min_size=0, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def dead_pool() -> AsyncIterator[asyncpg.Pool]:
    # Port 1 on localhost: nothing listens, connections are refused at once.
    pool = await asyncpg.create_pool("postgresql://root@127.0.0.1:1/test", min_size=0, max_size=1)
    try:
        yield pool
    finally:
        await pool.close()


async def get(port: int, path: str) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as r:
        return r.status, r.headers["Content-Type"], await r.read()


async def test_healthz_ok_and_metrics_parse(live_pool: asyncpg.Pool) -> None:
    m = metrics.Metrics()
    m.rows_written.labels(table="ig_media").inc(7)
    m.token_expiry_days.labels(ig_user_id="17841400000000001").set(52.5)
    async with httpserver.HttpServer("127.0.0.1:0", metrics=m, health=PoolHealth(live_pool)) as server:
        status, ctype, body = await get(server.port, "/healthz")
        assert status == 200
        health = orjson.loads(body)
        assert health["status"] == "ok"
        assert health["checks"]["database"]["ok"] is True
        assert health["checks"]["event_loop"]["ok"] is True
        assert health["freshness"] == {"accounts": 2, "stale": 0}
        status, ctype, body = await get(server.port, "/metrics")
        assert status == 200
        assert ctype.startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
        rows = [s for s in families["ig_collector_rows_written"].samples if s.name.endswith("_total")]
        assert rows[0].labels == {"table": "ig_media"} and rows[0].value == 7
        expiry = families["ig_collector_token_expiry_days"].samples[0]
        assert expiry.value == 52.5


async def test_healthz_503_when_database_down(dead_pool: asyncpg.Pool) -> None:
    async with httpserver.HttpServer("127.0.0.1:0", metrics=metrics.Metrics(),
                                     health=PoolHealth(dead_pool)) as server:
        status, _, body = await get(server.port, "/healthz")
        assert status == 503
        health = orjson.loads(body)
        assert health["checks"]["database"]["ok"] is False
        assert health["status"] == "unhealthy"


async def test_loop_lag_is_measured(live_pool: asyncpg.Pool) -> None:
    async with httpserver.HttpServer("127.0.0.1:0", health=PoolHealth(live_pool)) as server:
        await asyncio.sleep(0.3)
        time.sleep(0.4)  # block the loop on purpose
        await asyncio.sleep(0.3)
        _, _, body = await get(server.port, "/healthz")
        lag = orjson.loads(body)["checks"]["event_loop"]["max_lag_s"]
        assert lag >= 0.4 - httpserver.LAG_STEP_S  # woke at least that late


async def test_extra_routes_share_the_app() -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    server = httpserver.HttpServer("127.0.0.1:0", metrics=metrics.Metrics())
    server.add_routes([web.get("/webhooks/instagram", hello)])
    async with server:
        status, _, body = await get(server.port, "/webhooks/instagram")
        assert (status, body) == (200, b"hi")
        with pytest.raises(RuntimeError):
            server.add_routes([web.get("/late", hello)])


def test_parse_listen() -> None:
    assert httpserver.parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert httpserver.parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "localhost:", "host:99999", ":80"):
        with pytest.raises(exceptions.ConfigError):
            httpserver.parse_listen(bad)


async def test_port_in_use_is_a_config_error() -> None:
    async with httpserver.HttpServer("127.0.0.1:0", metrics=metrics.Metrics()) as first:
        with pytest.raises(exceptions.ConfigError):
            await httpserver.HttpServer(f"127.0.0.1:{first.port}", metrics=metrics.Metrics()).start()
