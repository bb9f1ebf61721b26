"""The collector against answers an INDEPENDENT Graph fake may give (reference graph-api.md §2-§4, §9, §12):
shapes the simulator does not produce, played over real HTTP by a small aiohttp proxy in front of the
simulator that rewrites requests or answers. What is stored is compared with a pass over the plain
simulator, or with the simulator's world; no patching."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.test_utils
import asyncpg
import orjson
import pytest
from aiohttp import web

from collector import config, metrics, pacific, passes
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
    query: Callable[[web.Request], dict[str, str]] | None = None  # the query sent on to the simulator
    hits: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits.append((request.path, dict(request.query)))
        if self.before is not None and (early := self.before(request)) is not None:
            return early
        query = dict(request.query) if self.query is None else self.query(request)
        async with self.session.get(self.upstream + request.path, params=query) as response:
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


async def plain_snapshot(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str,
                         pool: asyncpg.Pool) -> dict[str, set[tuple[Any, ...]]]:
    """What a pass over the plain simulator stores (the expectation a pass through the proxy is held to);
    the tables are emptied again for that pass."""
    plain = await run_pass(tmp_path, sim, dsn, pool)
    assert plain.exit_code == 0
    expected = await snapshot(pool)
    await wipe(pool)
    return expected


async def assert_stored_as_plain(tmp_path: Path, via_proxy: fixtures_sim.RunningSimulator, dsn: str,
                                 pool: asyncpg.Pool, expected: dict[str, set[tuple[Any, ...]]],
                                 refused: list[str]) -> None:
    """A pass through the proxy, which refused something (`refused`, filled by its hook), succeeds and stores
    exactly what the pass over the plain simulator did (`expected`, from `plain_snapshot`)."""
    summary = await run_pass(tmp_path, via_proxy, dsn, pool)
    assert refused
    assert summary.exit_code == 0, summary.accounts_failed
    got = await snapshot(pool)
    for name, rows in expected.items():
        assert got[name] == rows, name


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
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)

    proxy, via_proxy = await proxy_for(sim)
    proxy.after = odd_shapes
    odd = await run_pass(tmp_path, via_proxy, db_dsn, pool)
    assert odd.exit_code == 0, odd.accounts_failed
    got = await snapshot(pool)
    assert expected["media_insight"] and expected["account_insight"]
    for name in expected:
        assert got[name] == expected[name], name


@pytest.mark.parametrize("spelling", ["07:00Z all year", "00:00Z"])
async def test_daily_end_times_spelled_otherwise_name_the_same_days(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool, spelling: str) -> None:
    """Meta's docs say daily periods end "on UTC-07:00" (07:00Z all year), its samples 08:00Z in winter; a
    fake may end them at 00:00Z. Each value is the same Pacific day's: stored under the same end_time as the
    plain simulator's, and no day is recorded as having no value."""
    sim = await frozen_sim(start_simulator, accounts=2, media_per_account=2, seed=46)
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)
    respelled: list[str] = []

    def after(request: web.Request, answer: Answer) -> None:
        if not request.path.endswith("/insights") or request.query.get("period") != "day":
            return
        for item in (answer.body or {}).get("data") or ():
            for entry in item.get("values") or ():
                end = pacific.parse_graph_time(entry["end_time"])
                moved = end.replace(hour=7) if spelling.startswith("07") else end.replace(hour=0)
                entry["end_time"] = moved.strftime("%Y-%m-%dT%H:%M:%S+0000")
                respelled.append(entry["end_time"])

    proxy, via_proxy = await proxy_for(sim)
    proxy.after = after
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool)
    assert summary.exit_code == 0, summary.accounts_failed
    assert respelled
    got = await snapshot(pool)
    assert got["account_insight"] == expected["account_insight"]
    assert got["unavailable"] == expected["unavailable"]


# -- windows: stricter readings of Meta's rules --------------------------------------------------------------

def insights_of(request: web.Request, metric: str) -> bool:
    return request.path.endswith("/insights") and metric in request.query.get("metric", "").split(",")


async def test_follower_count_counted_from_now_drops_only_the_oldest_day(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """A fake may count follower_count's "last 30 days excluding the current day" back from now, not from
    the Pacific day: the oldest day is refused; it is recorded, the other 29 are stored, no job fails, and
    the second account does not repeat the refused call."""
    sim = await frozen_sim(start_simulator, accounts=2, media_per_account=1, seed=43,
                           world_knobs={"low_follower_fraction": 0.0})
    proxy, via_proxy = await proxy_for(sim)
    refused: list[str] = []

    def before(request: web.Request) -> web.StreamResponse | None:
        if insights_of(request, "follower_count") and int(request.query["since"]) < time_s() - 30 * 86400:
            refused.append(request.query["since"])
            return error(400, "(#100) (follower_count) metric only supports querying data for the last 30 "
                              "days excluding the current day", 100)
        return None

    proxy.before = before
    # One account at a time: accounts collected at once may both ask before either has learned.
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool, account_backfill_days=31,
                             max_concurrent_accounts=1)
    assert summary.exit_code == 0, summary.accounts_failed
    assert len(refused) == 1
    today = pacific.today(datetime.now(UTC))
    expected_ends = {pacific.day_end_utc(today - timedelta(days=n)) for n in range(1, 30)}
    for account in sim.world.accounts():
        ends = {r["end_time"] for r in await pool.fetch(
            "SELECT end_time FROM ig_account_insight WHERE ig_user_id = $1 AND metric = 'follower_count'",
            int(account.ig_user_id))}
        assert ends == expected_ends
    oldest = await pool.fetch("SELECT object_id, reason FROM ig_unavailable WHERE metric = 'follower_count'")
    assert [r["reason"] for r in oldest] == ["no_data"]


def time_s() -> float:
    return datetime.now(UTC).timestamp()


async def test_exactly_thirty_days_refused_still_collects_every_day(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """One team saw a window of exactly 30 days refused (reference §2.4): smaller windows, every day."""
    sim = await frozen_sim(start_simulator, accounts=2, media_per_account=1, seed=44)
    proxy, via_proxy = await proxy_for(sim)

    def before(request: web.Request) -> web.StreamResponse | None:
        query = request.query
        if request.path.endswith("/insights") and "since" in query and "until" in query and \
                int(query["until"]) - int(query["since"]) >= 30 * 86400 - 3600:
            return error(400, "(#100) There cannot be more than 30 days (2592000 s) between since and until",
                         100)
        return None

    proxy.before = before
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool, account_backfill_days=31)
    assert summary.exit_code == 0, summary.accounts_failed
    days = pacific.complete_days(datetime.now(UTC), 31)
    for account in sim.world.accounts():
        ends = {r["end_time"] for r in await pool.fetch(
            "SELECT end_time FROM ig_account_insight WHERE ig_user_id = $1 AND metric = 'reach' "
            "AND breakdown = ''", int(account.ig_user_id))}
        assert ends >= {pacific.day_end_utc(d) for d in days}


# -- media walk: pinned posts on a server that caps `limit` --------------------------------------------------

async def test_pinned_old_posts_filling_a_capped_first_page_do_not_end_the_walk(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await frozen_sim(start_simulator, accounts=1, media_per_account=12, seed=45,
                           world_knobs={"media_span_days": 135.0, "empty_page_fraction": 0.0})
    account = sim.accounts()[0]
    media = sim.world.media_of(account.ig_user_id)
    cutoff = NOW - timedelta(days=90)
    old = [m for m in media if m.timestamp < cutoff - timedelta(days=1)][:2]
    recent = {m.media_id for m in media if m.timestamp > cutoff + timedelta(minutes=5)}
    assert len(old) == 2 and len(recent) >= 4
    proxy, via_proxy = await proxy_for(sim)
    media_path = f"/v24.0/{account.ig_user_id}/media"

    def before(request: web.Request) -> web.StreamResponse | None:
        if request.path == media_path and "after" not in request.query:
            # The first page holds only the two pinned (old) posts; Meta's listing goes on after them.
            pinned = [{"id": m.media_id, "timestamp": m.timestamp.strftime("%Y-%m-%dT%H:%M:%S+0000"),
                       "media_type": m.media_type} for m in old]
            next_url = f"https://graph.instagram.com/v26.0{request.path[6:]}?limit=2&after=PINNED"
            return web.json_response({"data": pinned, "paging": {"cursors": {"after": "PINNED"},
                                                                 "next": next_url}})
        return None

    def query(request: web.Request) -> dict[str, str]:
        sent = dict(request.query)
        if request.path == media_path:
            sent["limit"] = "2"  # the server caps `limit`
            if sent.get("after") == "PINNED":
                del sent["after"]
        return sent

    proxy.before, proxy.query = before, query
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool)
    assert summary.exit_code == 0, summary.accounts_failed
    stored = {str(r["media_id"]) for r in await pool.fetch(
        "SELECT media_id FROM ig_media WHERE media_product_type IS DISTINCT FROM 'STORY'")}
    assert stored == recent


# -- stories at the end of their life ------------------------------------------------------------------------

EXPIRED_STORY_ANSWERS = [
    lambda: error(403, "(#10) Application does not have permission for this action", 10),
    lambda: error(400, "Invalid parameter", 100),
    lambda: error(400, "An unknown error has occurred.", 1),
    lambda: error(400, "Unsupported get request. Object with ID '1' does not exist", 100, error_subcode=33),
    lambda: error(400, "(#3) Application does not have the capability to make this API call.", 3),
    lambda: error(400, "(#100) The Media Insights API does not support the reach, views, shares, "
                       "total_interactions, reposts, follows, profile_visits, profile_activity, navigation, "
                       "replies, total_views metric for this media product type.", 100),
]


async def test_any_permanent_error_on_an_expiring_story_is_story_expired_and_teaches_nothing(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """The error for a story that expired between /stories and its insights call is undocumented
    (reference §3.2): whatever permanent answer comes, the story is recorded `story_expired`, the account
    stays ok, and the STORY kind is not taught that its metrics are unsupported."""
    sim = await frozen_sim(start_simulator, accounts=6, media_per_account=1, seed=46,
                           world_knobs={"story_slot_s": 3600, "few_viewers_fraction": 0.0})
    proxy, via_proxy = await proxy_for(sim)
    expiring: dict[str, int] = {}

    def after(request: web.Request, answer: Answer) -> None:
        if request.path.endswith("/stories") and isinstance(answer.body, dict):
            first = answer.body["data"][0]
            first["timestamp"] = (NOW - timedelta(hours=23, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S+0000")
            expiring.setdefault(first["id"], len(expiring) % len(EXPIRED_STORY_ANSWERS))

    def before(request: web.Request) -> web.StreamResponse | None:
        story_id = request.path.split("/")[-2] if request.path.endswith("/insights") else None
        if story_id in expiring:
            return EXPIRED_STORY_ANSWERS[expiring[story_id]]()
        return None

    proxy.before, proxy.after = before, after
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool)
    assert summary.exit_code == 0, summary.accounts_failed
    assert len(expiring) == 6
    reasons = {(str(r["object_id"]), r["metric"]): r["reason"] for r in await pool.fetch(
        "SELECT object_id, metric, reason FROM ig_unavailable WHERE object_type = 'media'")}
    for story_id, answer in expiring.items():
        if answer == len(EXPIRED_STORY_ANSWERS) - 1:  # refused metrics: recorded per metric, not learned
            assert reasons[(story_id, "reach")] == "unsupported_for_product_type"
        else:
            assert reasons[(story_id, "*")] == "story_expired", answer
    others = {m.media_id for a in sim.accounts() for m in sim.world.stories_of(a.ig_user_id)} - set(expiring)
    assert others, "the world must have live stories besides the expiring ones"
    with_reach = {str(r["media_id"]) for r in await pool.fetch(
        "SELECT media_id FROM ig_media_insight WHERE metric = 'reach' AND breakdown = ''")}
    assert others <= with_reach  # nothing was learned from the expiring stories
    states = await pool.fetch("SELECT job, last_error FROM collector_job_state WHERE job = 'stories'")
    assert states and all(r["last_error"] is None for r in states)
    details = " ".join(str(r[0]) for r in await pool.fetch(
        "SELECT detail FROM ig_unavailable UNION ALL SELECT status_detail FROM ig_account "
        "UNION ALL SELECT last_error FROM collector_job_state"))
    assert "story_expired" in str(reasons.values()) and details
    for account in sim.accounts():
        assert account.access_token not in details  # token hygiene of everything an error wrote


# -- demographics: a breakdown refused with "An unknown error has occurred." ---------------------------------

async def test_demographics_breakdown_refused_with_unknown_error_is_recorded_not_failed(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await frozen_sim(start_simulator, accounts=3, media_per_account=1, seed=47,
                           world_knobs={"low_follower_fraction": 0.0})
    proxy, via_proxy = await proxy_for(sim)
    refused: list[str] = []

    def before(request: web.Request) -> web.StreamResponse | None:
        if insights_of(request, "engaged_audience_demographics") and request.query.get("breakdown") == "city":
            refused.append(request.path)
            return error(400, "An unknown error has occurred.", 1)
        return None

    proxy.before = before
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool)
    assert summary.exit_code == 0, summary.accounts_failed
    # Retried as a possibly transient code 1 (3 tries), then learned; the 3 accounts ran at once.
    assert 1 <= len(refused) <= 3 * 3
    rows = await pool.fetch("SELECT object_id, reason FROM ig_unavailable WHERE metric = "
                            "'engaged_audience_demographics' AND scope = 'this_month:city'")
    assert {r["reason"] for r in rows} == {"unsupported_for_product_type"}
    cities = await pool.fetchval("SELECT count(*) FROM ig_account_insight WHERE metric = "
                                 "'follower_demographics' AND breakdown = 'city'")
    assert cities > 0


# -- accounts under 100 followers: an error instead of the documented empty data set -------------------------

GATED = ("follower_count", "online_followers", "follower_demographics", "follows_and_unfollows",
         "engaged_audience_demographics")
NEEDS_100 = {"follower_count", "online_followers", "follower_demographics", "follows_and_unfollows"}
ACCOUNT_METRICS = ("accounts_engaged", "comments", "likes", "profile_links_taps", "reach", "replies",
                   "reposts", "saves", "shares", "total_interactions", "views")


def few_followers_error(shape: str, metrics: list[str]) -> web.Response:
    if shape == "named":
        return error(400, f"(#100) The {', '.join(metrics)} metric is not available for accounts with fewer "
                          "than 100 followers", 100)
    if shape == "code10":
        return error(403, "(#10) Not enough followers to show insights", 10)
    if shape == "one_of":
        valid = ", ".join(ACCOUNT_METRICS)
        return error(400, f"(#100) metric[0] must be one of the following values: {valid}", 100)
    return error(400, "Invalid parameter", 100)


@pytest.mark.parametrize("shape", ["named", "code10", "one_of", "generic"])
async def test_few_followers_refused_with_an_error_loses_nothing_else(
        shape: str, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """Meta documents an empty data set for follower-gated metrics of an account under 100 followers; the
    error shape it may use instead is unknown (reference §2.5). Whatever it is, the small account's other
    metrics are stored, its gated ones are recorded `fewer_than_100_followers`, no job fails, and no other
    account loses its gated metrics (nothing is learned from a small account's refusal)."""
    sim = await frozen_sim(start_simulator, accounts=6, media_per_account=1, seed=48,
                           world_knobs={"low_follower_fraction": 0.5})
    small = {a.ig_user_id for a in sim.accounts() if a.low_followers}
    assert small and len(small) < len(sim.accounts())
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)

    proxy, via_proxy = await proxy_for(sim)
    refused: list[str] = []

    def before(request: web.Request) -> web.StreamResponse | None:
        parts = request.path.strip("/").split("/")
        if len(parts) == 3 and parts[2] == "insights" and parts[1] in small:
            gated = [m for m in request.query.get("metric", "").split(",") if m in GATED]
            if gated:
                refused.append(parts[1])
                return few_followers_error(shape, gated)
        return None

    proxy.before = before
    # One account at a time: a small account's refusal must not teach the accounts after it.
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool, max_concurrent_accounts=1)
    assert refused
    assert summary.exit_code == 0, summary.accounts_failed
    got = await snapshot(pool)
    for name in ("account", "media", "media_insight", "account_insight", "jobs"):
        assert got[name] == expected[name], name
    reasons = {(str(r["object_id"]), r["metric"], r["reason"]) for r in await pool.fetch(
        "SELECT object_id, metric, reason FROM ig_unavailable WHERE object_type = 'account'")}
    for account in small:
        for metric in NEEDS_100:
            assert (account, metric, "fewer_than_100_followers") in reasons, (account, metric)
    assert {r for r in reasons if r[0] not in small} == {r for r in expected["unavailable"]
                                                         if str(r[1]) not in small and r[0] == "account"
                                                         for r in [(str(r[1]), r[2], r[4])]}


async def test_one_accounts_demographics_refusal_is_not_learned_for_the_others(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """engaged_audience_demographics is withheld below 100 engagements in the timeframe, whatever the
    followers count, and the error shape for that is unknown (reference §2.5): one account refused it must
    not make the collector stop asking the other accounts."""
    sim = await frozen_sim(start_simulator, accounts=3, media_per_account=1, seed=49,
                           world_knobs={"low_follower_fraction": 0.0})
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)
    first = sim.accounts()[0].ig_user_id
    proxy, via_proxy = await proxy_for(sim)

    def before(request: web.Request) -> web.StreamResponse | None:
        if request.path == f"/v24.0/{first}/insights" and insights_of(request,
                                                                     "engaged_audience_demographics"):
            return error(400, "Invalid parameter", 100)
        return None

    proxy.before = before
    summary = await run_pass(tmp_path, via_proxy, db_dsn, pool, max_concurrent_accounts=1)
    assert summary.exit_code == 0, summary.accounts_failed
    got = await snapshot(pool)
    engaged = {r for r in expected["account_insight"] if r[1] == "engaged_audience_demographics"}
    assert {r for r in engaged if str(r[0]) != first}
    assert {r for r in got["account_insight"] if r[1] == "engaged_audience_demographics"} == \
        {r for r in engaged if str(r[0]) != first}


# -- media insights: `views` asked with metric_type=total_value ----------------------------------------------

async def test_media_views_that_need_metric_type_total_value_lose_nothing(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """After v22 `views` of a media may come as total_value, and a client added metric_type=total_value for
    it (reference §3.3 OBS); a fake may refuse `views` without it, with Meta's account-insights message
    (§2.3). The call is asked again with metric_type=total_value: every value is stored."""
    sim = await frozen_sim(start_simulator, accounts=3, media_per_account=6, seed=50)
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)
    accounts = {a.ig_user_id for a in sim.accounts()}
    proxy, via_proxy = await proxy_for(sim)
    refused: list[str] = []

    def before(request: web.Request) -> web.StreamResponse | None:
        parts = request.path.strip("/").split("/")
        if (len(parts) == 3 and parts[2] == "insights" and parts[1] not in accounts
                and insights_of(request, "views") and request.query.get("metric_type") != "total_value"):
            refused.append(parts[1])
            return error(400, "(#100) The following metrics (views) should be specified with parameter "
                              "metric_type=total_value", 100)
        return None

    proxy.before = before
    await assert_stored_as_plain(tmp_path, via_proxy, db_dsn, pool, expected, refused)


# -- listings: a server whose `limit` maximum is below 100 and says so with an error -------------------------

async def test_listing_limit_refused_with_an_error_is_halved_and_loses_nothing(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """`limit` max 100 is observed, the official maximum unknown (reference §4): a server may refuse ours
    with a code-100 error naming `limit` instead of capping it. The listing goes on with a smaller limit."""
    sim = await frozen_sim(start_simulator, accounts=2, media_per_account=30, seed=52)
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)
    proxy, via_proxy = await proxy_for(sim)
    refused: list[str] = []

    def before(request: web.Request) -> web.StreamResponse | None:
        if request.path.endswith(("/media", "/stories")) and int(request.query.get("limit", "25")) > 20:
            refused.append(request.query["limit"])
            return error(400, "(#100) The parameter limit must be at most 20", 100)
        return None

    proxy.before = before
    await assert_stored_as_plain(tmp_path, via_proxy, db_dsn, pool, expected, refused)


# -- Instagram Login: media_product_type refused with another code than 100 ----------------------------------

async def test_media_product_type_refused_with_an_unknown_code_is_dropped_like_a_code_100(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, proxy_for: Any, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """Whether graph.instagram.com serves `media_product_type` is unknown (reference §1.1); a server that
    does not may refuse the field with another code than 100 (Graph's code 12 is "deprecated"). The field is
    dropped and the listing collected as when the field is simply absent."""
    sim = await frozen_sim(start_simulator, accounts=4, media_per_account=8, seed=53,
                           world_knobs={"omit_media_product_type_on_instagram": True})
    expected = await plain_snapshot(tmp_path, sim, db_dsn, pool)
    instagram = {a.ig_user_id for a in sim.accounts() if a.login == "instagram"}
    assert instagram
    proxy, via_proxy = await proxy_for(sim)
    refused: list[str] = []

    def before(request: web.Request) -> web.StreamResponse | None:
        parts = request.path.strip("/").split("/")
        if (len(parts) == 3 and parts[1] in instagram and parts[2] in ("media", "stories")
                and "media_product_type" in request.query.get("fields", "").split(",")):
            refused.append(parts[1])
            return error(400, "(#12) media_product_type field is deprecated for versions v21.0 and higher",
                         12)
        return None

    proxy.before = before
    await assert_stored_as_plain(tmp_path, via_proxy, db_dsn, pool, expected, refused)
