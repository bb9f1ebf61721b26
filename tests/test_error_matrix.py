"""The error matrix of docs/errors.md, cell by cell, against the simulator over HTTP into PostgreSQL.

The test reads the matrix from the doc (so the doc and the behaviour cannot drift apart): for every cell it
injects the row's error (Meta's recorded bodies, reference graph-api.md §3.2, §6.3, §7) on the column's
endpoint of account A, runs one pass, and compares what is stored with a pass over the plain simulator:
`none` nothing lost; `object`/`metric`/`call` only that object's (or call's) data missing, recorded as the
cell says; `account` the account's status set, what was fetched before the error stored, never a wrong
value, and the other account untouched.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from collector import catalogue, config, metrics, models, passes
from collector.simulator import injected, rules
from tests import expected_values, fixtures_db, fixtures_sim
from tests.test_reference_collect import frozen_sim, snapshot, wipe

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ENDPOINTS = ("profile", "media", "media_next", "stories", "media_insights", "story_insights",
             "account_series", "account_insights", "demographics")
JOB_OF = {"profile": models.Job.PROFILE, "media": models.Job.MEDIA, "media_next": models.Job.MEDIA,
          "stories": models.Job.STORIES, "media_insights": models.Job.MEDIA,
          "story_insights": models.Job.STORIES, "account_series": models.Job.ACCOUNT_INSIGHTS,
          "account_insights": models.Job.ACCOUNT_INSIGHTS,
          "demographics": models.Job.DEMOGRAPHICS}
SECTIONS = {
    "rate_limit": {"account_calls_per_s": 0, "app_calls_per_s": 0, "pause_cap_s": 0.05},
    "retry": {"base_delay_s": 0.01, "max_delay_s": 0.02, "max_attempts": 2, "throttle_base_delay_s": 0.01,
              "throttle_max_attempts": 2},
    # One account at a time: had one account's refusal taught the other anything, the other's calls would
    # come later and show it (an account's jobs run at once, so concurrent accounts would race).
    "collect": {"account_backfill_days": 1, "media_max_age_days": 90, "max_concurrent_accounts": 1},
}
WORLD = {"accounts": 2, "media_per_account": 5, "seed": 51,
         "world_knobs": {"empty_page_fraction": 0.0, "low_follower_fraction": 0.0,
                         "pre_conversion_fraction": 0.0, "few_viewers_fraction": 0.0}}
FIRST_PAGE = 2  # media_next: A's first media page is cut to this many items, with a `next` to the rest
PERMISSION = rules.error("(#10) Application does not have permission for this action", 10)
Body = Mapping[str, Any] | bytes


def read_matrix() -> dict[tuple[str, str], str]:
    """(error, endpoint) -> cell, from the table between the error-matrix markers of docs/errors.md."""
    block = DOC.read_text().split("<!-- error-matrix:start -->")[1].split("<!-- error-matrix:end -->")[0]
    lines = [line.strip().strip("|") for line in block.strip().splitlines()]
    header = [cell.strip() for cell in lines[0].split("|")]
    assert tuple(header[1:]) == ENDPOINTS, header
    cells: dict[tuple[str, str], str] = {}
    for line in lines[2:]:
        row = [cell.strip() for cell in line.split("|")]
        for endpoint, cell in zip(ENDPOINTS, row[1:], strict=True):
            cells[(row[0].strip("`"), endpoint)] = cell
    return cells


@dataclass(frozen=True)
class Error:
    """What an error row sends: (HTTP status, error envelope or raw body), cycled over the columns."""

    answers: tuple[tuple[int, Body], ...]
    times: int | None = None  # None: every matching call
    beside_data: bool = False  # the envelope goes beside the real answer's data, with HTTP 200


def throttle(code: int, message: str) -> Body:
    return rules.error(message, code)


ERRORS: dict[str, Error] = {
    "10-permission": Error(((400, PERMISSION),)),
    "10-viewers": Error(((400, rules.not_enough_viewers()),)),
    "3-capability": Error(((400, rules.error(
        "(#3) Application does not have the capability to make this API call.", 3)),)),
    # [INF] the reference quotes this message only up to "missing the ads_management...".
    "200-299-permission": Error(tuple(
        (403, rules.error(f"(#{code}) The calling app is missing the ads_management permission", code))
        for code in (200, 250, 299))),
    "100-33-missing": Error(((400, rules.object_not_found("17900000000000000")),)),
    "100-33-once": Error(((400, rules.object_not_found("17900000000000000")),), times=1),
    "100-2108006": Error(((400, rules.pre_conversion()),)),
    "100-invalid": Error(((400, rules.error("Invalid parameter", 100)),)),
    "190": Error(((400, rules.error("Invalid OAuth access token.", 190)),
                  (400, rules.token_invalid(460)), (400, rules.token_invalid(467)),
                  (400, rules.error("Error validating access token: The user has not authorized application "
                                    "1000000000000001.", 190, subcode=458)))),
    "190-463": Error(((400, rules.token_expired("Tuesday, 01-Dec-25 06:00:00 PST",
                                                "Tuesday, 01-Dec-25 06:07:02 PST")),)),
    "102": Error(((400, rules.error("Session key invalid", 102)),)),
    "throttle-once": Error(THROTTLES := (
        (400, rules.app_throttled()),
        (400, throttle(17, "(#17) User request limit reached")),
        (400, throttle(32, "(#32) Page request limit reached")),
        (400, throttle(613, "(#613) Calls to this api have exceeded the rate limit.")),
        (400, throttle(80001, "(#80001) There have been too many calls to this Page account. Wait a bit and "
                              "try again. For more info, please refer to "
                              "https://developers.facebook.com/docs/graph-api/overview/rate-limiting.")),
        (400, rules.account_throttled())), times=1),
    "throttle-persistent": Error(THROTTLES),
    "1-2-once": Error(((500, rules.server_unknown()), (500, rules.server_transient())), times=1),
    "1-2-persistent": Error(((500, rules.server_unknown()), (500, rules.server_transient()))),
    "5xx-no-body": Error(((502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),)),
    "unknown-code": Error(((400, rules.error("(#9999) An error the collector has never seen", 9999)),)),
    "200-error-object": Error(((200, PERMISSION),)),
    "data-plus-error": Error(((200, PERMISSION),), beside_data=True),
}
MATRIX = read_matrix()


def test_the_doc_and_the_test_cover_the_same_errors() -> None:
    assert {error for error, _ in MATRIX} == set(ERRORS)
    assert len(MATRIX) == len(ERRORS) * len(ENDPOINTS)


@dataclass(frozen=True)
class Targets:
    """The objects of account A the injections aim at, and which rows belong to what."""

    account: int
    feed: frozenset[int]  # A's posts
    first_page: frozenset[int]  # the posts of A's first media page in the media_next column
    stories: frozenset[int]  # A's live stories
    media: int  # the post whose insights call fails
    story: int  # the story whose insights call fails

    def owned(self, table: str, row: tuple[Any, ...]) -> bool:
        """Whether `row` of snapshot table `table` is account A's."""
        mine = self.feed | self.stories
        if table in ("account", "account_insight", "jobs"):
            return row[0] == self.account
        if table == "media":
            return row[1] == self.account
        if table == "media_insight":
            return row[0] in mine
        assert table == "unavailable"
        return (row[0] == "account" and row[1] == self.account) or (row[0] == "media" and row[1] in mine)


def targets(sim: fixtures_sim.RunningSimulator) -> Targets:
    world, cat = sim.world, catalogue.Catalogue()
    account = sim.accounts()[0]
    feed = world.media_of(account.ig_user_id)
    stories = world.stories_of(account.ig_user_id)
    assert feed and stories

    def complete(media: Any) -> bool:  # Meta serves every metric we ask: an answer without refusals
        wanted = set(cat.media_metrics(account.login, media.media_product_type))
        return wanted <= world.supported_media_metrics(media, account.login)

    post = next((m for m in feed if complete(m)), feed[0])
    story = max(stories, key=lambda s: s.timestamp)  # the youngest: far from its 24 h
    return Targets(int(account.ig_user_id), frozenset(int(m.media_id) for m in feed),
                   frozenset(int(m.media_id) for m in feed[:FIRST_PAGE]),
                   frozenset(int(s.media_id) for s in stories), int(post.media_id), int(story.media_id))


def injection(endpoint: str, t: Targets, status: int, body: Body, error: Error) -> injected.Injection:
    def when(test: Callable[[Mapping[str, str]], bool]) -> Callable[[Mapping[str, str]], bool]:
        return test

    kind, object_id, test = {
        "profile": ("profile", t.account, None),
        "media": ("media", t.account, when(lambda q: "after" not in q)),
        "media_next": ("media", t.account, when(lambda q: "after" in q)),
        "stories": ("stories", t.account, None),
        "media_insights": ("media_insights", t.media, when(lambda q: "breakdown" not in q)),
        "story_insights": ("media_insights", t.story, when(lambda q: "breakdown" not in q)),
        "account_series": ("account_insights", t.account, when(
            lambda q: q.get("metric_type") != "total_value" and q.get("period") == "day")),
        "account_insights": ("account_insights", t.account, when(
            lambda q: q.get("metric_type") == "total_value" and q.get("period") == "day")),
        "demographics": ("account_insights", t.account, when(lambda q: q.get("breakdown") == "country")),
    }[endpoint]
    envelope = body if isinstance(body, Mapping) else None
    return injected.Injection(kind=kind, status=status, error=envelope,
                              raw=body if isinstance(body, bytes) else None, beside_data=error.beside_data,
                              object_id=str(object_id), when=test, times=error.times)


def first_page_with_next(t: Targets) -> injected.Injection:
    """A's first media page ends after FIRST_PAGE items with a `next` (the simulator's own cursor) to the
    rest, so the walk has a second page for the media_next column."""
    def cut(query: Mapping[str, str], page: dict[str, Any]) -> dict[str, Any]:
        after = base64.urlsafe_b64encode(f"p:{FIRST_PAGE - 1}".encode()).decode().rstrip("=")
        rest = urllib.parse.urlencode({**{k: v for k, v in query.items() if k != "access_token"},
                                       "after": after})
        return {"data": page["data"][:FIRST_PAGE], "paging": {"cursors": {"after": after}, "next": (
            f"https://graph.instagram.com/v24.0/{t.account}/media?{rest}")}}

    return injected.Injection(kind="media", status=200, object_id=str(t.account),
                              when=lambda q: "after" not in q, rewrite=cut)


def touched(endpoint: str, t: Targets, scope: str) -> Callable[[str, tuple[Any, ...]], bool]:
    """The rows the failing call (and only it) decides: missing or recorded otherwise when it fails. A
    refused breakdown (`metric` scope) is remembered for its account only (docs/errors.md)."""
    day_totals = set(catalogue.ACCOUNT_TOTAL_VALUE)
    series = set(catalogue.ACCOUNT_TIME_SERIES) | {catalogue.FOLLOWER_COUNT}
    accounts = t.account

    def rows(table: str, row: tuple[Any, ...]) -> bool:
        if endpoint == "profile":
            return table == "account" and row[0] == t.account
        if endpoint in ("media", "media_next", "stories", "media_insights", "story_insights"):
            ids = {"media": t.feed, "media_next": t.feed - t.first_page, "stories": t.stories,
                   "media_insights": {t.media}, "story_insights": {t.story}}[endpoint]
            if table in ("media", "media_insight"):
                return row[0] in ids and (table == "media_insight" or endpoint in ("media", "media_next",
                                                                                   "stories"))
            return table == "unavailable" and row[0] == "media" and row[1] in ids
        if endpoint in ("account_series", "account_insights"):
            metrics = series if endpoint == "account_series" else day_totals
            if table == "account_insight":
                return row[0] == t.account and row[2] == "day" and row[1] in metrics
            return table == "unavailable" and row[:2] == ("account", t.account) and row[2] in metrics
        if endpoint == "demographics":
            if table == "account_insight":
                return accounts in (None, row[0]) and row[4] == "country"
            return (table == "unavailable" and row[0] == "account" and accounts in (None, row[1])
                    and row[3].endswith(":country"))
        return False

    return rows


def kept(endpoint: str, t: Targets, beside_data: bool) -> Callable[[str, tuple[Any, ...]], bool]:
    """Account A's rows fetched, in the failing job, before an account-level error: all must be stored."""
    series = set(catalogue.ACCOUNT_TIME_SERIES) | {catalogue.FOLLOWER_COUNT}
    breakdowns = {"age", "city"} | ({"country"} if beside_data else set())
    listing = {"media": t.feed if beside_data else frozenset(),
               "media_next": t.feed if beside_data else t.first_page,
               "stories": t.stories if beside_data else frozenset()}

    def rows(table: str, row: tuple[Any, ...]) -> bool:
        if endpoint in listing:
            return table in ("media", "media_insight") and row[0] in listing[endpoint]
        if endpoint in ("media_insights", "story_insights"):
            return table == "media" and row[0] in (t.feed if endpoint == "media_insights" else t.stories)
        if endpoint == "account_series":  # the first series call fails: only what came beside the error
            return (beside_data and table == "account_insight" and row[0] == t.account and row[2] == "day"
                    and row[1] in catalogue.ACCOUNT_TIME_SERIES[:1])
        if endpoint == "account_insights":
            return table == "account_insight" and row[0] == t.account and row[2] == "day" and (
                beside_data or row[1] in series)
        if endpoint == "demographics":
            return (table == "account_insight" and row[0] == t.account
                    and row[1] == "follower_demographics" and row[4] in breakdowns)
        return False

    return rows


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def matrix_db(server_url: str, database_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """One migrated database for all the cells, emptied before each (a database per cell costs more than
    the cell's pass on a busy machine)."""
    template = urllib.parse.urlsplit(database_url).path.lstrip("/")
    name = f"igc_matrix_{os.getpid()}_{secrets.token_hex(3)}"
    async with fixtures_db.scratch_database(server_url, name, template=template) as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            yield dsn, pool
        finally:
            await asyncio.wait_for(pool.close(), timeout=10)


BASELINE: dict[str, set[tuple[Any, ...]]] = {}
DATA_TABLES = ("account", "media", "media_insight", "account_insight")


async def run_pass(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str,
                   pool: asyncpg.Pool) -> passes.PassSummary:
    path = fixtures_sim.write_config(tmp_path, sim, dsn, sections=SECTIONS)
    return await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=metrics.Metrics())


@pytest.mark.parametrize(("error", "endpoint"), list(MATRIX))
async def test_cell(error: str, endpoint: str, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator,
                    matrix_db: tuple[str, asyncpg.Pool]) -> None:
    db_dsn, pool = matrix_db
    await wipe(pool)
    cell = MATRIX[(error, endpoint)]
    scope, _, value = (part.strip() for part in cell.partition(":"))
    spec = ERRORS[error]
    sim = await frozen_sim(start_simulator, **WORLD)
    t = targets(sim)
    if not BASELINE:
        plain = await run_pass(tmp_path, sim, db_dsn, pool)
        assert plain.exit_code == 0, plain.accounts_failed
        BASELINE.update(await snapshot(pool))
        await wipe(pool)
    base = BASELINE
    status, body = spec.answers[ENDPOINTS.index(endpoint) % len(spec.answers)]
    if endpoint == "media_next":
        sim.simulator.injected.add(first_page_with_next(t))
    forced = sim.simulator.injected.add(injection(endpoint, t, status, body, spec))

    await run_pass(tmp_path, sim, db_dsn, pool)
    got = await snapshot(pool)
    assert forced.served >= 1, "the injection never matched: the cell tested nothing"
    failed_jobs = {(row[0], row[1]) for row in got["jobs"] if not row[2]}

    if scope == "none":
        for table in base:
            assert got[table] == base[table], table
        return
    if scope == "account":
        check_account(got, base, t, endpoint, value, spec)
        assert (t.account, JOB_OF[endpoint].value) in failed_jobs
        assert all(uid == t.account for uid, _ in failed_jobs)
        return
    assert scope in ("object", "metric", "call"), cell
    mine = touched(endpoint, t, scope)
    for table, rows in base.items():
        if table == "jobs":
            continue
        expected = {r for r in rows if not mine(table, r)}
        assert {r for r in got[table] if not mine(table, r)} == expected, table
        if table in DATA_TABLES:
            assert {r for r in got[table] if mine(table, r)} <= rows, table  # never a wrong value
    if scope == "call":
        assert failed_jobs == {(t.account, JOB_OF[endpoint].value)}
        return
    assert not failed_jobs
    if scope == "object" and spec.beside_data:  # the values came beside the error: all stored
        for table in DATA_TABLES:
            assert {r for r in got[table] if mine(table, r)} == {r for r in base[table] if mine(table, r)}
    elif scope == "object":
        target = t.media if endpoint == "media_insights" else t.story
        assert ("media", target, "*", "", value) in got["unavailable"]
    if scope == "metric":
        for metric in catalogue.DEMOGRAPHICS:
            assert ("account", t.account, metric, "this_month:country", value) in got["unavailable"]


def check_account(got: dict[str, set[tuple[Any, ...]]], base: dict[str, set[tuple[Any, ...]]], t: Targets,
                  endpoint: str, status: str, spec: Error) -> None:
    statuses = {row[0]: row[5] for row in got["account"]}
    assert statuses[t.account] == status
    must_keep = kept(endpoint, t, spec.beside_data)
    for table, rows in base.items():
        if table == "jobs":
            continue
        others_got = {r for r in got[table] if not t.owned(table, r)}
        assert others_got == {r for r in rows if not t.owned(table, r)}, table  # the other account
        if table in DATA_TABLES and table != "account":
            assert {r for r in got[table] if t.owned(table, r)} <= rows, table  # never a wrong value
        assert {r for r in rows if must_keep(table, r)} <= got[table], table  # fetched before: stored


async def test_one_media_permission_error_leaves_every_other_value_of_its_account_stored(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """Issue 10: one media's `(#10) Application does not have permission for this action` (HTTP 400) cost
    the whole account. Now only that media's insights are missing (recorded `permission_denied`); every
    other value of the account is stored, exactly the simulator's, and the pass is ok."""
    sim = await frozen_sim(start_simulator, accounts=2, media_per_account=10, seed=52,
                           world_knobs={"low_follower_fraction": 0.0, "pre_conversion_fraction": 0.0})
    world = sim.world
    account = sim.accounts()[0]
    uid = account.ig_user_id
    media = [*world.media_of(uid), *world.stories_of(uid)]
    victim = media[len(media) // 2]
    assert not victim.is_story
    sim.simulator.injected.add(injected.Injection(kind="media_insights", object_id=victim.media_id,
                                                  status=400, error=PERMISSION))
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections={
        **SECTIONS, "collect": {"account_backfill_days": 3, "media_max_age_days": 90}})
    summary = await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=metrics.Metrics())
    assert summary.exit_code == 0, summary.accounts_failed
    now = datetime.now(UTC)

    statuses = {str(r["ig_user_id"]): r["status"] for r in await pool.fetch("SELECT * FROM ig_account")}
    assert statuses == {a.ig_user_id: "ok" for a in sim.accounts()}
    await expected_values.assert_stored_exactly(pool, world, sim.accounts(), started_s=world.clock(),
                                                now=now, backfill_days=3,
                                                withheld={victim.media_id: "permission_denied"})
    refreshed = await pool.fetchval("SELECT insights_refreshed_at FROM ig_media WHERE media_id = $1",
                                    int(victim.media_id))
    assert refreshed is None  # retried at its next refresh
    failed = await pool.fetch("SELECT job FROM collector_job_state WHERE last_error IS NOT NULL")
    assert not failed
