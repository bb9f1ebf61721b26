"""The simulator's discovery and token-lifecycle endpoints (collector/simulator/accounts_api.py) over HTTP,
and the token checks the collector makes with them (collector/token_tools.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from collector import config, graph, metrics, token_tools
from collector.simulator import limits
from tests import fixtures_sim

FIELDS = "instagram_business_account{id,username}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, Any]:
    async with http.get(url, params=params) as resp:
        return resp.status, orjson.loads(await resp.read())


async def test_me_accounts_pages_and_user_token_collection(
        http: aiohttp.ClientSession, start_simulator: fixtures_sim.StartSimulator) -> None:
    sim = await start_simulator(accounts=20, media_per_account=2, world_knobs={"invalid_token_fraction": 0.0})
    directory = sim.simulator.accounts
    fb = [a for a in sim.world.accounts() if a.login == "facebook"][:4]
    user = directory.add_user([a.ig_user_id for a in fb], pages_without_account=2)
    token = directory.user_token(user)
    status, body = await get(http, f"{sim.base_url}/v24.0/me", access_token=token)
    assert (status, body) == (200, {"id": user.user_id, "name": user.name})
    url, seen, pages = f"{sim.base_url}/v24.0/me/accounts", [], 0
    params = {"fields": FIELDS, "limit": "4", "access_token": token}
    while True:
        status, body = await get(http, url, **params)
        assert status == 200
        pages += 1
        seen += body["data"]
        if "next" not in body.get("paging", {}):
            break
        url, params = body["paging"]["next"], {}
    assert pages == 2 and len(seen) == 6
    linked = [p["instagram_business_account"] for p in seen if "instagram_business_account" in p]
    assert linked == [{"id": a.ig_user_id, "username": a.username} for a in fb]
    assert all(set(p) <= {"id", "instagram_business_account"} for p in seen)

    # The user token reaches the linked accounts (and their media), and nothing else.
    status, body = await get(http, f"{sim.base_url}/v24.0/{fb[0].ig_user_id}", fields="id,username",
                             access_token=token)
    assert (status, body["username"]) == (200, fb[0].username)
    media = sim.world.media_of(fb[0].ig_user_id)[0]
    status, body = await get(http, f"{sim.base_url}/v24.0/{media.media_id}", fields="id", access_token=token)
    assert (status, body["id"]) == (200, media.media_id)
    other = next(a for a in sim.world.accounts() if a.login == "facebook" and a not in fb)
    status, body = await get(http, f"{sim.base_url}/v24.0/{other.ig_user_id}", access_token=token)
    assert (status, body["error"]["code"], body["error"]["error_subcode"]) == (400, 100, 33)

    page = directory.page_of(fb[0].ig_user_id)
    async with http.post(f"{sim.base_url}/__sim/pages/{page.page_id}/unlink") as resp:
        assert resp.status == 200
    status, body = await get(http, f"{sim.base_url}/v24.0/{fb[0].ig_user_id}", access_token=token)
    assert body["error"]["code"] == 100
    async with http.post(f"{sim.base_url}/__sim/pages/404/link") as resp:
        assert resp.status == 404
    async with http.post(f"{sim.base_url}/__sim/users",
                         params={"ig_user_ids": fb[2].ig_user_id, "pages_without_account": "1"}) as resp:
        made = orjson.loads(await resp.read())
    assert [p["ig_user_id"] for p in made["pages"]].count(fb[2].ig_user_id) == 1 and len(made["pages"]) == 2
    status, body = await get(http, f"{sim.base_url}/v24.0/me/accounts", fields=FIELDS,
                             access_token=made["access_token"])
    key = "instagram_business_account"
    linked_ids = [p[key]["id"] for p in body["data"] if key in p]
    assert linked_ids == [fb[2].ig_user_id]

    narrow = directory.user_token(directory.add_user([fb[1].ig_user_id], scopes=("instagram_basic",)))
    status, body = await get(http, f"{sim.base_url}/v24.0/{fb[1].ig_user_id}/insights", metric="reach",
                             period="day", access_token=narrow)
    assert (status, body["error"]["code"]) == (400, 10)
    expired = directory.user_token(user, expires_in_s=-10)
    status, body = await get(http, f"{sim.base_url}/v24.0/me/accounts", access_token=expired)
    assert (body["error"]["code"], body["error"]["error_subcode"]) == (190, 463)
    assert token not in repr(body)


async def test_token_checks_report_scope_and_expiry_in_logs_and_metrics(
        tmp_path: Any, start_simulator: fixtures_sim.StartSimulator) -> None:
    sim = await start_simulator(accounts=8, media_per_account=1, world_knobs={"invalid_token_fraction": 0.0})
    directory = sim.simulator.accounts
    fb = [a.ig_user_id for a in sim.world.accounts() if a.login == "facebook"]
    fine = directory.user_token(directory.add_user(fb[:1]))
    narrow = directory.user_token(directory.add_user(fb[1:2], scopes=("instagram_basic",)))
    soon = directory.user_token(directory.add_user(fb[2:3]), expires_in_s=86400)
    revoked = directory.user_token(directory.add_user(fb[3:4], token_error=460))
    app = {"app_id": directory.app_id, "app_secret": directory.app_secret}
    path = fixtures_sim.write_config(tmp_path, sim, "postgresql://unused@127.0.0.1:1/x", accounts=[],
                                     sections={"app": app})
    tables = "".join(f'\n[[tokens]]\nlogin = "facebook"\naccess_token = "{t}"\n'
                     for t in (fine, narrow, soon, revoked))
    path.write_text(path.read_text() + tables)
    cfg = config.load(path)
    counters = metrics.Metrics()
    with structlog.testing.capture_logs() as logs:
        async with graph.client_for(cfg, counters) as client:
            checks = await token_tools.check_all(client, cfg, datetime.now(UTC))
        token_tools.report(checks, counters)
    kinds = {c.subject.metric_label: [k for k, _ in c.problems] for c in checks}
    assert kinds == {"#1": [], "#2": ["missing_scope"], "#3": ["expiring"], "#4": ["invalid"]}
    exposition = counters.exposition().decode()
    assert 'ig_collector_token_problem{problem="missing_scope",token="#2"} 1.0' in exposition
    assert 'ig_collector_token_problem{problem="expiring",token="#3"} 1.0' in exposition
    assert 'ig_collector_token_problem{problem="missing_scope",token="#1"} 0.0' in exposition
    assert {(e["token"], e["problem"]) for e in logs if e["event"] == "token_problem"} == {
        ("[[tokens]] #2 (facebook, access_token)", "missing_scope"),
        ("[[tokens]] #3 (facebook, access_token)", "expiring"),
        ("[[tokens]] #4 (facebook, access_token)", "invalid")}
    for token in (fine, narrow, soon, revoked, directory.app_secret):
        assert token not in exposition + repr(logs)


async def test_user_budget_answers_code_17_for_every_account_of_the_user(
        http: aiohttp.ClientSession, start_simulator: fixtures_sim.StartSimulator) -> None:
    """`user_budget` counts every call made with a user's tokens, whichever account it is for (and
    `/me/accounts` too); past it each of them answers code 17 until the block ends. Another user, and the
    same accounts called with their own tokens, are not limited by it."""
    sim = await start_simulator(accounts=8, media_per_account=2, world_knobs={"invalid_token_fraction": 0.0},
                                user_budget=limits.Budget(calls=3, window_s=60, block_s=90),
                                throttle_status=429, record_arrivals=True)
    directory = sim.simulator.accounts
    fb = [a for a in sim.world.accounts() if a.login == "facebook"]
    token = directory.user_token(directory.add_user([fb[0].ig_user_id, fb[1].ig_user_id]))
    other = directory.user_token(directory.add_user([fb[2].ig_user_id]))
    base = f"{sim.base_url}/v24.0"
    assert (await get(http, f"{base}/{fb[0].ig_user_id}", fields="id", access_token=token))[0] == 200
    assert (await get(http, f"{base}/{fb[1].ig_user_id}/media", access_token=token))[0] == 200
    assert (await get(http, f"{base}/me/accounts", fields=FIELDS, access_token=token))[0] == 200
    for account, path in ((fb[1], "/media"), (fb[0], ""), (fb[0], "/insights")):
        status, body = await get(http, f"{base}/{account.ig_user_id}{path}", access_token=token)
        assert (status, body["error"]["code"], body["error"]["message"]) == (
            429, 17, "(#17) User request limit reached")
    status, body = await get(http, f"{base}/me/accounts", access_token=token)
    assert (status, body["error"]["code"]) == (429, 17)
    # Not the accounts' budgets: the other user's token, and the accounts' own tokens, still go through.
    assert (await get(http, f"{base}/{fb[2].ig_user_id}", fields="id", access_token=other))[0] == 200
    assert (await get(http, f"{base}/{fb[0].ig_user_id}", fields="id",
                      access_token=fb[0].access_token))[0] == 200
    assert sim.stats.throttled == {"user": 4} and sim.stats.while_blocked == {"user": 3}
    throttled = [t for tries in sim.stats.arrivals.values() for t in tries if t.outcome == "throttled"]
    assert sorted(t.ig_user_id for t in throttled) == sorted(  # /me/accounts is for no account: ""
        [fb[1].ig_user_id, fb[0].ig_user_id, fb[0].ig_user_id, ""])
    assert token not in repr(sim.stats.snapshot())
