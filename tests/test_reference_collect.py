"""The collector against answers an INDEPENDENT Graph fake may give (reference graph-api.md §2-§4, §9, §12):
shapes the simulator does not produce, played over real HTTP by a small aiohttp proxy in front of the
simulator that rewrites requests or answers. What is stored is compared with a pass over the plain
simulator, or with the simulator's world; no patching."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.test_utils
import asyncpg
import orjson
import pytest
from aiohttp import web

from collector import config, metrics, passes
from tests import fixtures_sim

NOW = datetime.now(UTC).replace(microsecond=0)
ENUM_KEYS = {"action_type", "story_navigation_action_type", "media_product_type", "follow_type",
             "contact_button_type"}
DATA_TABLES = ("ig_account", "ig_media", "ig_media_insight", "ig_media_insight_history", "ig_account_insight",
               "ig_unavailable", "collector_job_state")


@dataclasses.dataclass
class Answer:
    """What the simulator said; a hook may change any of it."""

    status: int
    body: Any  # decoded JSON, or None when the body was not JSON
    headers: dict[str, str]


Before = Callable[[web.Request], web.StreamResponse | None]  # answer instead of the simulator
After = Callable[[web.Request, Answer], None]  # rewrite the simulator's answer in place


@dataclasses.dataclass
class Proxy:
    """Forwards every GET to the simulator; `before` may answer first, `after` may rewrite the answer."""

    upstream: str
    session: aiohttp.ClientSession
    before: Before | None = None
    after: After | None = None
    hits: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((request.path, dict(request.query)))
        if self.before is not None and (early := self.before(request)) is not None:
            return early
        async with self.session.get(self.upstream + request.path, params=request.query) as response:
            raw = await response.read()
            headers = {k: v for k, v in response.headers.items()
                       if k.lower() not in ("content-length", "content-type", "content-encoding",
                                            "transfer-encoding", "date", "server")}
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            answer = Answer(response.status, body, headers)
        if self.after is not None and body is not None:
            self.after(request, answer)
        payload = raw if answer.body is None else orjson.dumps(answer.body)
        return web.Response(status=answer.status, body=payload, headers=answer.headers,
                            content_type="application/json")


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[fixtures_sim.RunningSimulator], Awaitable[
        tuple[Proxy, fixtures_sim.RunningSimulator]]]]:
    servers: list[aiohttp.test_utils.TestServer] = []
    session = aiohttp.ClientSession()

    async def start(sim: fixtures_sim.RunningSimulator) -> tuple[Proxy, fixtures_sim.RunningSimulator]:
        proxy = Proxy(sim.base_url, session)
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", proxy.handle)
        server = aiohttp.test_utils.TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return proxy, dataclasses.replace(sim, base_url=str(server.make_url("")).rstrip("/"))

    yield start
    for server in servers:
        await server.close()
    await session.close()


def error(status: int, message: str, code: int, **extra: Any) -> web.Response:
    body = {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "Ref",
                      **extra}}
    return web.json_response(body, status=status)


FAST = {
    "rate_limit": {"account_calls_per_s": 0, "app_calls_per_s": 0},
    "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05, "max_attempts": 3},
    "collect": {"account_backfill_days": 3, "media_max_age_days": 90},
}


async def run_pass(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str, pool: asyncpg.Pool,
                   **collect: Any) -> passes.PassSummary:
    sections = {**FAST, "collect": {**FAST["collect"], **collect}}
    path = fixtures_sim.write_config(tmp_path, sim, dsn, sections=sections)
    return await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=metrics.Metrics())


async def snapshot(pool: asyncpg.Pool) -> dict[str, set[tuple[Any, ...]]]:
    """Everything stored, without the times of collection and free-text details."""
    queries = {
        "account": "SELECT ig_user_id, username, login, followers_count, media_count, status FROM ig_account",
        "media": "SELECT media_id, ig_user_id, media_type, media_product_type, posted_at, permalink, "
                 "like_count, comments_count FROM ig_media",
        "media_insight": "SELECT media_id, metric, breakdown, dimension, value FROM ig_media_insight",
        "account_insight": "SELECT ig_user_id, metric, period, end_time, breakdown, dimension, value "
                           "FROM ig_account_insight",
        "unavailable": "SELECT object_type, object_id, metric, scope, reason FROM ig_unavailable",
        "jobs": "SELECT ig_user_id, job, last_error IS NULL FROM collector_job_state",
    }
    return {name: {tuple(r) for r in await pool.fetch(sql)} for name, sql in queries.items()}


async def wipe(pool: asyncpg.Pool) -> None:
    await pool.execute(f"TRUNCATE {', '.join(DATA_TABLES)}")


async def frozen_sim(start_simulator: fixtures_sim.StartSimulator,
                     **kwargs: Any) -> fixtures_sim.RunningSimulator:
    """A small world whose clock stands still, so two passes see exactly the same answers."""
    knobs = {"invalid_token_fraction": 0.0, "media_span_days": 60.0, **kwargs.pop("world_knobs", {})}
    frozen_s = NOW.timestamp()
    return await start_simulator(now=NOW, clock=lambda: frozen_s, world_knobs=knobs, **kwargs)


# -- odd but valid shapes ------------------------------------------------------------------------------------

def _walk(node: Any, visit: Callable[[dict[str, Any]], None]) -> None:
    if isinstance(node, dict):
        visit(node)
        for value in list(node.values()):
            _walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            _walk(value, visit)


def odd_shapes(request: web.Request, answer: Answer) -> None:
    """Same facts, other spellings: ids and counts as JSON numbers or strings, timestamps with `Z`, with
    fractions or without an offset, values as numeric strings, stray items Meta never documents, `end_time`
    on lifetime values, lower-case enum dimensions."""
    body = answer.body
    if not isinstance(body, dict) or "error" in body:
        return
    counter = [0]

    def visit(node: dict[str, Any]) -> None:
        counter[0] += 1
        flip = counter[0] % 3
        if isinstance(node.get("id"), str) and node["id"].isdigit():
            node["id"] = int(node["id"])
        stamp = node.get("timestamp")
        if isinstance(stamp, str) and stamp.endswith("+0000"):
            node["timestamp"] = [stamp[:-5] + "Z", stamp[:-5] + ".000+0000", stamp[:-5]][flip]
        for key in ("followers_count", "media_count", "comments_count"):
            if isinstance(node.get(key), int):
                node[key] = str(node[key])
        value = node.get("value")
        if isinstance(value, int) and not isinstance(value, bool) and flip == 0:
            node["value"] = str(value)
        if isinstance(node.get("results"), list):
            if set(node.get("dimension_keys") or ()) <= ENUM_KEYS:  # Meta's samples spell these lower-case
                for result in node["results"]:
                    result["dimension_values"] = [str(v).lower() for v in result["dimension_values"]]
            node["results"].append("junk")
            node["results"].append({"dimension_values": ["X"], "value": None})
        if isinstance(node.get("breakdowns"), list):
            node["breakdowns"].append(None)
        if node.get("period") == "lifetime" and isinstance(node.get("values"), list):
            for entry in node["values"]:
                if isinstance(entry, dict) and not isinstance(entry.get("value"), dict):
                    entry.setdefault("end_time", "2025-06-09T07:00:00+0000")

    _walk(body, visit)
    data = body.get("data")
    if isinstance(data, list) and "/insights" in request.path:
        data.extend(["junk", None, {"name": "reach"}])  # items without the documented shape


async def test_odd_but_valid_shapes_store_exactly_what_the_plain_simulator_gives(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await frozen_sim(start_simulator, accounts=4, media_per_account=8, seed=41)
    plain = await run_pass(tmp_path, sim, db_dsn, pool)
    assert plain.exit_code == 0
    expected = await snapshot(pool)
    await wipe(pool)

    proxy, via_proxy = await proxy_for(sim)
    proxy.after = odd_shapes
    odd = await run_pass(tmp_path, via_proxy, db_dsn, pool)
    assert odd.exit_code == 0, odd.accounts_failed
    got = await snapshot(pool)
    assert expected["media_insight"] and expected["account_insight"]
    for name in expected:
        assert got[name] == expected[name], name
