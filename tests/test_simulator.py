"""The Graph API simulator over real HTTP: the behaviours of graph-api.md §12 the collector relies on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from collector.simulator import faults, limits
from collector.simulator import world as world_mod
from tests.fixtures_sim import RunningSimulator, StartSimulator

NOW = datetime(2026, 3, 20, 18, 30, tzinfo=UTC)  # a fixed instant: every expected value is exact
NOW_S = NOW.timestamp()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fixed(start_simulator: StartSimulator, **kwargs: Any) -> RunningSimulator:
    kwargs.setdefault("world_knobs", {})
    return await start_simulator(now=NOW, clock=lambda: NOW_S, **kwargs)


async def get(http: aiohttp.ClientSession, sim: RunningSimulator, path: str,
              account: world_mod.SimAccount | None, **params: str) -> tuple[int, Any, dict[str, str]]:
    if account is not None:
        params.setdefault("access_token", account.access_token)
    url = path if path.startswith("http") else f"{sim.base_url}{path}"
    async with http.get(url, params=params) as resp:
        return resp.status, orjson.loads(await resp.read()), dict(resp.headers)


def first(sim: RunningSimulator, pred: Any) -> world_mod.SimAccount:
    return next(a for a in sim.world.accounts() if pred(a))


def good(a: world_mod.SimAccount) -> bool:
    return a.token_error is None and not a.low_followers


# --- profile, headers, tokens ------------------------------------------------------------------------

async def test_profile_and_usage_headers(http: aiohttp.ClientSession, simulator: RunningSimulator) -> None:
    acct = first(simulator, good)
    status, body, headers = await get(http, simulator, f"/v24.0/{acct.ig_user_id}", acct,
                                      fields="id,username,followers_count,media_count")
    assert status == 200
    assert body == {"id": acct.ig_user_id, "username": acct.username,
                    "followers_count": acct.followers_count, "media_count": acct.media_count}
    assert headers["facebook-api-version"] == "v24.0"
    assert orjson.loads(headers["X-App-Usage"]).keys() == {"call_count", "total_time", "total_cputime"}
    buc = orjson.loads(headers["X-Business-Use-Case-Usage"])
    assert buc[acct.ig_user_id][0]["type"] == "instagram"
    assert buc[acct.ig_user_id][0]["estimated_time_to_regain_access"] == 0
    # unversioned path and /me; the default version is echoed
    status, body, headers = await get(http, simulator, "/me", acct, fields="id,username")
    assert (status, body["id"], headers["facebook-api-version"]) == (200, acct.ig_user_id, "v24.0")


async def test_world_shape(simulator: RunningSimulator) -> None:
    accounts = simulator.accounts()
    assert [a.login for a in accounts[:4]] == ["instagram", "facebook", "instagram", "facebook"]
    assert all(a.access_token.startswith("IGAA" if a.login == "instagram" else "EAA") for a in accounts)
    assert any(a.low_followers for a in accounts)
    assert any(a.media_count < a.real_media_count for a in accounts)
    media = simulator.world.media_of(accounts[0].ig_user_id)
    assert len(media) == 30 and all(int(m.media_id) < 2**63 for m in media)
    assert [m.timestamp for m in media] == sorted((m.timestamp for m in media), reverse=True)
    big = world_mod.World(7, 10_000, 50)
    last = big.account(str(world_mod.ACCOUNT_ID_BASE + 9_999))
    assert big.media_of(last.ig_user_id)[49].media_id == "1790009999" + "0000049"


async def test_token_errors(http: aiohttp.ClientSession, start_simulator: StartSimulator) -> None:
    sim = await start_simulator(world_knobs={"invalid_token_fraction": 0.5})
    acct = first(sim, good)
    status, body, _ = await get(http, sim, f"/{acct.ig_user_id}", None)
    assert (status, body["error"]["code"]) == (400, 104)
    status, body, _ = await get(http, sim, f"/{acct.ig_user_id}", None, access_token="IGAAnonsense")
    assert body["error"]["code"] == 190 and "error_subcode" not in body["error"]
    bad = [a for a in sim.world.accounts() if a.token_error is not None]
    assert {a.token_error for a in bad} <= {460, 463, 467} and bad
    for a in bad:
        status, body, _ = await get(http, sim, f"/{a.ig_user_id}", a)
        err = body["error"]
        assert (status, err["code"], err["error_subcode"]) == (400, 190, a.token_error)
        assert err["type"] == "OAuthException"
        assert err["message"].startswith("Error validating access token: ")
        assert a.access_token not in orjson.dumps(body).decode()
    other = next(a for a in sim.world.accounts() if a.ig_user_id != acct.ig_user_id)
    status, body, _ = await get(http, sim, f"/{other.ig_user_id}/media", acct)
    assert (body["error"]["code"], body["error"]["error_subcode"]) == (100, 33)
    assert body["error"]["type"] == "GraphMethodException"


async def test_token_refresh_exchange_and_debug(http: aiohttp.ClientSession,
                                                start_simulator: StartSimulator) -> None:
    sim = await start_simulator(world_knobs={"invalid_token_fraction": 0.0})
    ig = first(sim, lambda a: a.login == "instagram")
    fb = first(sim, lambda a: a.login == "facebook")
    status, body, _ = await get(http, sim, "/refresh_access_token", ig, grant_type="ig_refresh_token")
    assert status == 200 and body["token_type"] == "bearer" and body["expires_in"] == 60 * 86400
    fresh = body["access_token"]
    assert fresh.startswith("IGAA") and fresh != ig.access_token
    status, body, _ = await get(http, sim, f"/{ig.ig_user_id}", None, access_token=fresh)
    assert (status, body["id"]) == (200, ig.ig_user_id)
    # the refreshed token is younger than 24 h: refreshing it again is refused
    status, body, _ = await get(http, sim, "/refresh_access_token", None, grant_type="ig_refresh_token",
                                access_token=fresh)
    assert (status, body["error"]["code"]) == (400, 100)
    app = sim.simulator.accounts
    status, body, _ = await get(http, sim, "/v24.0/oauth/access_token", None, grant_type="fb_exchange_token",
                                client_id=app.app_id, client_secret="bad", fb_exchange_token=fb.access_token)
    assert (status, body["error"]["code"]) == (400, 101)
    status, body, _ = await get(http, sim, "/v24.0/oauth/access_token", None, grant_type="fb_exchange_token",
                                client_id=app.app_id, client_secret=app.app_secret,
                                fb_exchange_token=fb.access_token)
    assert status == 200 and body["access_token"].startswith("EAA")
    status, body, _ = await get(http, sim, "/v24.0/debug_token", None, input_token=fb.access_token,
                                access_token="1|secret")
    assert (status, body["error"]["code"]) == (400, 190)  # not the app's token
    status, body, _ = await get(http, sim, "/v24.0/debug_token", None, input_token=fb.access_token,
                                access_token=f"{app.app_id}|{app.app_secret}")
    assert body["data"]["is_valid"] is True and body["data"]["user_id"] == fb.ig_user_id
    assert body["data"]["expires_at"] == fb.token_issued_at + 60 * 86400


# --- media discovery -------------------------------------------------------------------------------

async def test_media_paging_with_empty_page(http: aiohttp.ClientSession,
                                            start_simulator: StartSimulator) -> None:
    sim = await start_simulator(media_per_account=23, world_knobs={"empty_page_fraction": 0.5})
    acct = first(sim, lambda a: good(a) and a.empty_page)
    status, page, _ = await get(http, sim, f"/v24.0/{acct.ig_user_id}/media", acct, limit="10",
                                fields="id,media_type,media_product_type,timestamp,like_count")
    seen, pages, empty_pages = [], 0, 0
    while True:
        assert status == 200
        pages += 1
        empty_pages += not page["data"]
        seen += page["data"]
        nxt = page.get("paging", {}).get("next")
        if nxt is None:
            break
        assert nxt.startswith(sim.base_url) and "access_token=" in nxt
        status, page, _ = await get(http, sim, nxt, None)
    expected = sim.world.media_of(acct.ig_user_id)
    assert [m["id"] for m in seen] == [m.media_id for m in expected]
    assert (pages, empty_pages) == (4, 1)
    for item, media in zip(seen, expected, strict=True):
        assert item["timestamp"] == media.timestamp.strftime("%Y-%m-%dT%H:%M:%S+0000")
        assert item.get("like_count") == sim.world.like_count(media)
        assert item["media_product_type"] == media.media_product_type
    # limit is capped at 100; a plain account has no empty page
    plain = first(sim, lambda a: good(a) and not a.empty_page)
    _, page, _ = await get(http, sim, f"/{plain.ig_user_id}/media", plain, limit="500")
    assert len(page["data"]) == 23 and "next" not in page["paging"]


# --- media insights --------------------------------------------------------------------------------

async def test_media_insights_values_and_errors(http: aiohttp.ClientSession,
                                                start_simulator: StartSimulator) -> None:
    sim = await start_simulator(world_knobs={"invalid_token_fraction": 0.0, "pre_conversion_fraction": 0.2})
    w = sim.world
    ig = first(sim, lambda a: a.login == "instagram")
    media = [m for m in w.media_of(ig.ig_user_id) if not m.pre_conversion]
    reel = next(m for m in media if m.media_product_type == "REELS")
    metrics = sorted(w.supported_media_metrics(reel, "instagram"))
    status, body, _ = await get(http, sim, f"/v24.0/{reel.media_id}/insights", ig, metric=",".join(metrics))
    assert status == 200
    got = {item["name"]: item["values"][0]["value"] for item in body["data"]}
    assert got == {m: w.media_metric_value(reel.media_id, m) for m in metrics}
    assert isinstance(got["reels_skip_rate"], float) and 0 < got["reels_skip_rate"] < 1
    assert body["data"][0]["id"] == f"{reel.media_id}/insights/{metrics[0]}/lifetime"

    image = next(m for m in media if m.media_type == "IMAGE")
    status, body, _ = await get(http, sim, f"/{image.media_id}/insights", ig,
                                metric="reach,shares,ig_reels_avg_watch_time")
    assert (status, body["error"]["code"]) == (400, 100)
    assert body["error"]["message"] == ("(#100) The Media Insights API does not support the shares, "
                                        "ig_reels_avg_watch_time metric for this media product type.")
    status, body, _ = await get(http, sim, f"/{image.media_id}/insights", ig, metric="reach,total_likes")
    assert body["error"]["message"].startswith("(#100) metric[1] must be one of the following values: ")
    assert "total_likes" not in body["error"]["message"]
    for dead in ("impressions", "plays", "video_views", "engagement", "clips_replays_count"):
        _, body, _ = await get(http, sim, f"/{image.media_id}/insights", ig, metric=dead)
        assert body["error"]["message"].startswith("(#100) metric[0] must be one of the following values: ")

    status, body, _ = await get(http, sim, f"/{image.media_id}/insights", ig, metric="profile_activity",
                                breakdown="action_type")
    assert status == 200
    item = body["data"][0]
    results = item["total_value"]["breakdowns"][0]["results"]
    dims = {r["dimension_values"][0]: r["value"] for r in results}
    assert dims == w.media_breakdown(image.media_id, "profile_activity", "action_type")
    assert all(d == d.lower() for d in dims) and sum(dims.values()) == item["total_value"]["value"]
    status, body, _ = await get(http, sim, f"/{image.media_id}/insights", ig, metric="reach,profile_activity",
                                breakdown="action_type")
    assert (status, body["error"]["code"]) == (500, 1)
    assert body["error"]["message"] == "An unknown error has occurred."

    pre = next(m for m in w.media_of(ig.ig_user_id) if m.pre_conversion)
    status, body, _ = await get(http, sim, f"/{pre.media_id}/insights", ig, metric="reach")
    err = body["error"]
    assert (status, err["code"], err["error_subcode"], err["is_transient"]) == (400, 100, 2108006, False)
    assert err["error_data"] == {"blame_field_specs": [[""]]} and err["message"] == "Invalid parameter"
    assert err["error_user_title"] == "Media posted before business account conversion"

    fb = first(sim, lambda a: a.login == "facebook")
    fb_media = next(m for m in w.media_of(fb.ig_user_id) if not m.pre_conversion)
    status, body, _ = await get(http, sim, f"/{fb_media.media_id}/insights", fb, metric="reach,total_likes")
    assert status == 200 and [i["name"] for i in body["data"]] == ["reach", "total_likes"]


async def test_views_as_total_value_and_growth(http: aiohttp.ClientSession,
                                               start_simulator: StartSimulator) -> None:
    sim = await start_simulator(world_knobs={"views_as_total_value": True, "invalid_token_fraction": 0.0,
                                             "pre_conversion_fraction": 0.0})
    acct = first(sim, lambda a: True)
    media = sim.world.media_of(acct.ig_user_id)[0]
    _, body, _ = await get(http, sim, f"/{media.media_id}/insights", acct, metric="views,reach")
    views, reach = body["data"]
    assert "values" not in views and views["total_value"]["value"] == sim.world.media_metric_value(
        media.media_id, "views")
    async with http.post(f"{sim.base_url}/__sim/advance", params={"epochs": "2"}) as resp:
        assert (await resp.json())["epoch"] == 2
    _, body, _ = await get(http, sim, f"/{media.media_id}/insights", acct, metric="reach")
    assert body["data"][0]["values"][0]["value"] > reach["values"][0]["value"]


async def test_stories(http: aiohttp.ClientSession, start_simulator: StartSimulator) -> None:
    clock = [NOW_S]
    sim = await start_simulator(now=NOW, clock=lambda: clock[0], accounts=30,
                                world_knobs={"invalid_token_fraction": 0.0, "few_viewers_fraction": 0.3})
    w = sim.world
    live = [(a, s) for a in sim.world.accounts() for s in w.stories_of(a.ig_user_id)]
    assert live and all(NOW_S - 86400 < s.timestamp.timestamp() <= NOW_S for _, s in live)
    acct, story = next((a, s) for a, s in live if not s.few_viewers)
    _, body, _ = await get(http, sim, f"/{acct.ig_user_id}/stories", acct, fields="id,media_product_type")
    assert [d["id"] for d in body["data"]] == [s.media_id for s in w.stories_of(acct.ig_user_id)]
    status, body, _ = await get(http, sim, f"/{story.media_id}/insights", acct,
                                metric="reach,navigation", breakdown="")
    assert status == 200
    status, body, _ = await get(http, sim, f"/{story.media_id}/insights", acct, metric="navigation",
                                breakdown="story_navigation_action_type")
    dims = {r["dimension_values"][0] for r in body["data"][0]["total_value"]["breakdowns"][0]["results"]}
    assert dims <= {"tap_forward", "tap_back", "tap_exit", "swipe_forward"}
    few_acct, few = next((a, s) for a, s in live if s.few_viewers)
    status, body, _ = await get(http, sim, f"/{few.media_id}/insights", few_acct, metric="reach")
    assert (status, body["error"]["code"]) == (400, 10)
    assert body["error"]["message"] == "(#10) Not enough viewers for the media to show insights"
    clock[0] = story.timestamp.timestamp() + 86400  # the story has expired
    status, body, _ = await get(http, sim, f"/{story.media_id}/insights", acct, metric="reach")
    assert (body["error"]["code"], body["error"]["error_subcode"]) == (100, 33)
    assert w.media_unavailable(story) == "story_expired"


# --- account insights -------------------------------------------------------------------------------

async def test_account_insights_rules(http: aiohttp.ClientSession, start_simulator: StartSimulator) -> None:
    sim = await fixed(start_simulator)
    acct = first(sim, good)
    path = f"/v24.0/{acct.ig_user_id}/insights"

    async def err(**params: str) -> tuple[int, int, str]:
        status, body, _ = await get(http, sim, path, acct, **params)
        return status, body["error"]["code"], body["error"]["message"]

    assert await err(metric="reach,views,likes", period="day") == (400, 100, (
        "(#100) The following metrics (views, likes) should be specified with parameter "
        "metric_type=total_value"))
    assert await err(metric="follower_count", period="day", metric_type="total_value") == (400, 100, (
        "(#100) The following metric (follower_count) is incompatible with the metric type (total_value)"))
    since = int(NOW_S) - 40 * 86400
    assert await err(metric="reach", period="day", since=str(since), until=str(since + 2592001)) == (
        400, 100, "(#100) There cannot be more than 30 days (2592000 s) between since and until")
    assert await err(metric="follower_count", period="day", since=str(since),
                     until=str(since + 86400 * 2)) == (400, 100, (
        "(#100) (follower_count) metric only supports querying data for the last 30 days excluding the "
        "current day"))
    assert (await err(metric="impressions", period="day"))[2].startswith(
        "(#100) Starting from version 22 and above, the impressions metric is no longer supported")
    assert (await err(metric="reach,profile_views", period="day"))[2] == (
        "(#100) The following metrics (profile_views) should be specified with parameter "
        "metric_type=total_value")
    assert await err(metric="likes", period="day", metric_type="total_value", breakdown="follow_type") == (
        500, 1, "An unknown error has occurred.")


async def test_account_time_series_and_totals(http: aiohttp.ClientSession,
                                              start_simulator: StartSimulator) -> None:
    sim = await fixed(start_simulator)
    w, acct = sim.world, first(sim, good)
    path = f"/{acct.ig_user_id}/insights"
    today = world_mod.pacific_date(NOW_S)
    days = [today - timedelta(days=n) for n in range(29, 0, -1)]
    since, until = world_mod.day_start_s(days[0]), world_mod.day_start_s(today)
    status, body, _ = await get(http, sim, path, acct, metric="reach,follower_count", period="day",
                                since=str(since), until=str(until))
    assert status == 200
    reach, followers = body["data"]
    assert [v["end_time"] for v in reach["values"]] == [world_mod.day_end_time(d) for d in days]
    assert {v["end_time"][11:] for v in reach["values"]} <= {"07:00:00+0000", "08:00:00+0000"}
    assert [v["value"] for v in reach["values"]] == [w.account_day_value(acct.ig_user_id, "reach", d)
                                                      for d in days]
    assert [v["value"] for v in followers["values"]] == [w.follower_count(acct.ig_user_id, d) for d in days]
    assert reach["id"] == f"{acct.ig_user_id}/insights/reach/day"
    assert "access_token=" in body["paging"]["next"]

    # total_value over a window: ONE total, the sum of the window's Pacific days
    status, body, _ = await get(http, sim, path, acct, metric="views,accounts_engaged", period="day",
                                metric_type="total_value", since=str(since), until=str(until))
    views = body["data"][0]["total_value"]["value"]
    assert views == sum(w.account_day_value(acct.ig_user_id, "views", d) or 0 for d in days)
    one_day = days[-1]
    status, body, _ = await get(http, sim, path, acct, metric="reach", period="day",
                                metric_type="total_value", breakdown="media_product_type",
                                since=str(world_mod.day_start_s(one_day)),
                                until=str(world_mod.day_start_s(today)))
    total_value = body["data"][0]["total_value"]
    assert total_value["value"] == w.account_day_value(acct.ig_user_id, "reach", one_day)
    breakdown = total_value["breakdowns"][0]
    assert breakdown["dimension_keys"] == ["media_product_type"]
    got = {tuple(r["dimension_values"]): r["value"] for r in breakdown["results"]}
    assert got == w.account_breakdown_values(acct.ig_user_id, "reach", "media_product_type",
                                             total_value["value"])
    assert sum(got.values()) == total_value["value"]

    # default window: the last 24 h (today's Pacific day here)
    _, body, _ = await get(http, sim, path, acct, metric="reach", period="day")
    assert [v["end_time"] for v in body["data"][0]["values"]] == [world_mod.day_end_time(today)]


async def test_demographics_online_and_few_followers(http: aiohttp.ClientSession,
                                                    start_simulator: StartSimulator) -> None:
    sim = await fixed(start_simulator, accounts=20)
    w, acct = sim.world, first(sim, good)
    path = f"/{acct.ig_user_id}/insights"
    status, body, _ = await get(http, sim, path, acct, metric="follower_demographics", period="lifetime",
                                metric_type="total_value", timeframe="this_month", breakdown="city")
    assert status == 200
    total_value = body["data"][0]["total_value"]
    assert "value" not in total_value
    breakdown = total_value["breakdowns"][0]
    assert breakdown["dimension_keys"] == ["city"] and len(breakdown["results"]) == 45
    got = {r["dimension_values"][0]: r["value"] for r in breakdown["results"]}
    assert got == w.demographics(acct.ig_user_id, "follower_demographics", "city", "this_month")
    status, body, _ = await get(http, sim, path, acct, metric="online_followers", period="lifetime")
    today = world_mod.pacific_date(NOW_S)
    assert body["data"][0]["values"] == [{"value": w.online_followers(acct.ig_user_id, today),
                                         "end_time": world_mod.day_end_time(today)}]
    assert set(body["data"][0]["values"][0]["value"]) == {str(h) for h in range(24)}

    small = first(sim, lambda a: a.token_error is None and a.low_followers)
    yesterday = world_mod.day_start_s(today - timedelta(days=1))
    for params in ({"metric": "follower_count", "period": "day", "since": str(yesterday),
                    "until": str(world_mod.day_start_s(today))},
                   {"metric": "follower_demographics", "period": "lifetime", "metric_type": "total_value",
                    "timeframe": "this_month", "breakdown": "age"},
                   {"metric": "online_followers", "period": "lifetime"}):
        status, body, _ = await get(http, sim, f"/{small.ig_user_id}/insights", small, **params)
        assert (status, body["data"]) == (200, [])
    _, body, _ = await get(http, sim, f"/{small.ig_user_id}/insights", small, metric="reach,follower_count",
                           period="day")
    assert [i["name"] for i in body["data"]] == ["reach"]


# --- budgets, faults, batch, stats -----------------------------------------------------------------

async def test_account_and_app_budgets(http: aiohttp.ClientSession, start_simulator: StartSimulator) -> None:
    sim = await start_simulator(world_knobs={"invalid_token_fraction": 0.0},
                                account_budget=limits.Budget(calls=3, window_s=60, block_s=90),
                                throttle_status=429)
    a, b = sim.accounts()[:2]
    for _ in range(3):
        status, _, headers = await get(http, sim, f"/{a.ig_user_id}", a)
        assert status == 200
    assert orjson.loads(headers["X-Business-Use-Case-Usage"])[a.ig_user_id][0]["call_count"] == 100
    for _ in range(3):
        status, body, headers = await get(http, sim, f"/{a.ig_user_id}", a)
        assert (status, body["error"]["code"]) == (429, 80002)
        assert body["error"]["message"].startswith("(#80002) There have been too many calls to this ")
        usage = orjson.loads(headers["X-Business-Use-Case-Usage"])[a.ig_user_id][0]
        assert usage["estimated_time_to_regain_access"] == 2  # 90 s, in whole minutes
    status, _, _ = await get(http, sim, f"/{b.ig_user_id}", b)
    assert status == 200
    assert sim.stats.throttled["account"] == 3 and sim.stats.while_blocked["account"] == 2

    app_sim = await start_simulator(app_budget=limits.Budget(calls=2, window_s=60, block_s=60),
                                    world_knobs={"invalid_token_fraction": 0.0})
    x, y = app_sim.accounts()[:2]
    assert (await get(http, app_sim, f"/{x.ig_user_id}", x))[0] == 200
    assert (await get(http, app_sim, f"/{y.ig_user_id}", y))[0] == 200
    status, body, _ = await get(http, app_sim, f"/{y.ig_user_id}", y)
    assert (status, body["error"]["code"], body["error"]["message"]) == (
        400, 4, "(#4) Application request limit reached")
    async with http.get(f"{app_sim.base_url}/__sim/stats") as resp:
        snapshot = await resp.json()
    assert snapshot["throttled"] == {"app": 1} and snapshot["by_code"] == {"4": 1}


async def test_fault_injection_is_deterministic(http: aiohttp.ClientSession,
                                                start_simulator: StartSimulator) -> None:
    rates = faults.FaultRates(code1=0.15, code2=0.15, http_5xx=0.1, drop=0.1, truncate=0.1)
    outcomes = []
    for _ in range(2):
        sim = await start_simulator(seed=5, faults=rates, world_knobs={"invalid_token_fraction": 0.0})
        acct = sim.accounts()[0]
        params = {"fields": "id,username"}
        identity = faults.identity("GET", acct.ig_user_id, params)
        run, n = [], 0
        for _ in range(25):
            n += 1
            expected = faults.decide(5, identity, n, rates)
            if expected == "drop":
                # aiohttp re-sends an idempotent request once after a server disconnect: the client sees
                # the outcome of the next occurrence, or the error if that one is dropped too.
                n += 1
                resent = faults.decide(5, identity, n, rates)
                expected = "drop" if resent == "drop" else resent
            try:
                async with http.get(f"{sim.base_url}/v24.0/{acct.ig_user_id}",
                                    params={**params, "access_token": acct.access_token}) as resp:
                    raw = await resp.read()
                    try:
                        body = orjson.loads(raw)
                        got = f"code{body['error']['code']}" if resp.status == 500 else None
                    except orjson.JSONDecodeError:
                        got = "http_5xx" if resp.status == 502 else "truncate"
            except aiohttp.ServerDisconnectedError:
                got = "drop"
            assert got == expected, n
            run.append(got)
        outcomes.append(run)
        assert sim.stats.calls == n and sim.stats.faults["drop"] >= 1
    assert outcomes[0] == outcomes[1] and None in outcomes[0] and len(set(outcomes[0])) >= 4


async def test_batch(http: aiohttp.ClientSession, start_simulator: StartSimulator) -> None:
    sim = await start_simulator(world_knobs={"invalid_token_fraction": 0.0})
    fb = first(sim, lambda a: a.login == "facebook")
    ig = first(sim, lambda a: a.login == "instagram")
    media = sim.world.media_of(fb.ig_user_id)[0]
    ops = [{"method": "GET", "relative_url": f"v24.0/{fb.ig_user_id}?fields=username"},
           {"method": "GET", "relative_url": f"{media.media_id}/insights?metric=impressions"}]
    async with http.post(f"{sim.base_url}/v24.0/", data={"batch": orjson.dumps(ops).decode(),
                                                        "access_token": fb.access_token}) as resp:
        answers = await resp.json()
    assert [a["code"] for a in answers] == [200, 400]
    assert orjson.loads(answers[0]["body"]) == {"username": fb.username, "id": fb.ig_user_id}
    assert orjson.loads(answers[1]["body"])["error"]["code"] == 100
    assert sim.stats.calls == 2 and sim.stats.by_kind["batch"] == 1
    async with http.post(f"{sim.base_url}/", data={"batch": "[]", "access_token": ig.access_token}) as resp:
        assert (await resp.json())["error"]["code"] == 3


async def test_stats_and_reset(http: aiohttp.ClientSession, simulator: RunningSimulator) -> None:
    acct = first(simulator, good)
    await get(http, simulator, f"/{acct.ig_user_id}/media", acct)
    await get(http, simulator, f"/{acct.ig_user_id}/insights", acct, metric="reach", period="day")
    async with http.get(f"{simulator.base_url}/__sim/stats") as resp:
        snapshot = await resp.json()
    assert snapshot["calls"] == 2 and snapshot["by_kind"] == {"media": 1, "account_insights": 1}
    async with http.post(f"{simulator.base_url}/__sim/reset") as resp:
        assert resp.status == 200
    assert simulator.stats.calls == 0



async def test_latency_slow_fault_and_shape_knobs(http: aiohttp.ClientSession,
                                                  start_simulator: StartSimulator) -> None:
    slow = faults.FaultRates(slow=1.0, slow_delay_s=0.05)
    sim = await start_simulator(latency_ms=30, latency_jitter=0.0, faults=slow,
                                world_knobs={"omit_media_product_type_on_instagram": True,
                                             "demographics_timeframe_key": True,
                                             "invalid_token_fraction": 0.0, "low_follower_fraction": 0.0})
    ig = first(sim, lambda a: a.login == "instagram")
    fb = first(sim, lambda a: a.login == "facebook")
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body, _ = await get(http, sim, f"/{ig.ig_user_id}/media", ig, fields="id,media_product_type")
    assert loop.time() - started >= 0.075 and status == 200
    assert all("media_product_type" not in item for item in body["data"])
    _, body, _ = await get(http, sim, f"/{fb.ig_user_id}/media", fb, fields="id,media_product_type")
    assert all("media_product_type" in item for item in body["data"])
    _, body, _ = await get(http, sim, f"/{fb.ig_user_id}/insights", fb,
                           metric="engaged_audience_demographics", period="lifetime",
                           metric_type="total_value", timeframe="this_week", breakdown="gender")
    breakdown = body["data"][0]["total_value"]["breakdowns"][0]
    assert breakdown["dimension_keys"] == ["timeframe", "gender"]
    assert {r["dimension_values"][0] for r in breakdown["results"]} == {"THIS_WEEK"}
    assert sim.stats.faults["slow"] == 3
