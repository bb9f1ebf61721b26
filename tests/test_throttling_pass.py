"""Throttling discipline, end to end: full passes against the simulator over HTTP into a real PostgreSQL.

- Tight per-account budgets (code 80002 blocks with Meta's regain header) plus 5 % injected faults: every
  expected value is stored exactly once, calls that reach a blocked account are under 1 % of all calls, and
  no call is retried before its backoff ended.
- An app-level throttle (code 4) pauses the whole host; every account resumes afterwards.
- One account paused does not hold up the others (by counts: they complete while it stays paused).
- A user throttle (code 17) on a Facebook user token pauses every account whose calls use that token, and
  no account with another token.

Retry timing is checked from both sides: the simulator records when each try of each request identity
arrived (`Options(record_arrivals=True)`), the client logs each retry decision (`graph_retry` /
`graph_throttled`, with the request's path and params) and the test stamps those events with the same
monotonic clock. Try n+1 of a request must arrive no earlier than the decision after try n plus its wait.

Timing settings: the simulator reports regain time in whole minutes like Meta (a 1-s block reads "1
minute"), so the client would honour 60 s; `pause_cap_s` is set just above the simulated block here. In
production the cap stays at its default (an hour): Meta's estimate is the only safe pause there.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import defaultdict
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog

from collector import catalogue, config, metrics, pacific, passes
from collector import progress as pass_progress
from collector.simulator import faults, limits, stats
from collector.simulator import world as world_mod
from tests import fixtures_sim

BACKFILL_DAYS = 3
RETRY_EVENTS = ("graph_retry", "graph_throttled")
# 5 % of calls get one injected fault, spread over every kind the simulator has.
FIVE_PERCENT = faults.FaultRates(http_5xx=0.01, code1=0.01, code2=0.01, slow=0.005, drop=0.01, truncate=0.005,
                                 slow_delay_s=0.6)
WORLD_KNOBS = {"invalid_token_fraction": 0.0, "history_days": 60}


@dataclass(frozen=True, slots=True)
class RetryEvent:
    at: float  # time.monotonic() when the client decided to retry
    event: str
    identity: str  # faults.identity of the request: the simulator's key for its tries
    wait_s: float
    fields: dict[str, Any]  # the whole event (scope, code, accounts_paused, ...)


@pytest.fixture
def retry_events() -> Iterator[list[RetryEvent]]:
    """The client's retry decisions, stamped with the monotonic clock the simulator records arrivals in."""
    events: list[RetryEvent] = []

    def capture(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if event_dict.get("event") in RETRY_EVENTS:
            events.append(RetryEvent(time.monotonic(), event_dict["event"],
                                     faults.identity("GET", event_dict["path"], event_dict["params"]),
                                     event_dict["wait_s"], dict(event_dict)))
        raise structlog.DropEvent

    previous = structlog.get_config()
    structlog.configure(processors=[capture], cache_logger_on_first_use=False)
    try:
        yield events
    finally:
        structlog.configure(**previous)


async def run_pass(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str, pool: asyncpg.Pool,
                   sections: dict[str, dict[str, Any]]) -> passes.PassSummary:
    base: dict[str, dict[str, Any]] = {
        "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": 90},
    }
    for name, values in sections.items():
        base.setdefault(name, {}).update(values)
    path = fixtures_sim.write_config(tmp_path, sim, dsn, sections=base)
    return await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=metrics.Metrics())


def as_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


# -------------------------------------------------------------------------------- expected data


async def assert_everything_stored_once(pool: asyncpg.Pool, world: world_mod.World,
                                        started_s: float) -> int:
    """Every value the world holds for the pass is in PostgreSQL, nothing else, and each media insight was
    written once (one history row per value). Returns the number of values compared."""
    now = datetime.now(UTC)
    cat = catalogue.Catalogue()
    accounts = list(world.accounts())

    stored_accounts = {str(r["ig_user_id"]): (r["status"], r["username"], r["followers_count"])
                       for r in await pool.fetch("SELECT * FROM ig_account")}
    assert stored_accounts == {a.ig_user_id: ("ok", a.username, a.followers_count) for a in accounts}

    expected_media: dict[str, world_mod.SimMedia] = {}
    for account in accounts:
        cutoff = now - timedelta(days=90)
        expected_media.update({m.media_id: m for m in world.media_of(account.ig_user_id)
                               if m.timestamp > cutoff + timedelta(minutes=5)})
        expected_media.update({s.media_id: s for s in world.stories_of(account.ig_user_id)})
    skip = fixtures_sim.boundary_stories(world, accounts, started_s)
    for media_id in skip:
        expected_media.pop(media_id, None)
    media_rows = {str(r["media_id"]): r for r in await pool.fetch("SELECT * FROM ig_media")
                  if str(r["media_id"]) not in skip}
    assert set(media_rows) == set(expected_media)

    unavailable = {(r["object_type"], str(r["object_id"]), r["metric"], r["scope"]): r["reason"]
                   for r in await pool.fetch("SELECT * FROM ig_unavailable")}
    expected_insight: dict[tuple[str, str, str, str], int | float] = {}
    for media_id, media in expected_media.items():
        login = world.account(media.ig_user_id).login
        assert media_rows[media_id]["insights_refreshed_at"] is not None, media_id  # no item left failed
        if world.media_unavailable(media) is not None:
            assert ("media", media_id, "*", "") in unavailable, media_id
            continue
        wanted = set(cat.media_metrics(login, media.media_product_type))
        supported = world.supported_media_metrics(media, login)
        for metric in wanted & supported:
            expected_insight[(media_id, metric, "", "")] = world.media_metric_value(media_id, metric)
        for metric, breakdown in cat.media_breakdowns(media.media_product_type):
            if metric in supported:
                for dim, value in world.media_breakdown(media_id, metric, breakdown).items():
                    expected_insight[(media_id, metric, breakdown, dim.upper())] = value
    insight = {(str(r["media_id"]), r["metric"], r["breakdown"], r["dimension"]): as_number(r["value"])
               for r in await pool.fetch("SELECT * FROM ig_media_insight") if str(r["media_id"]) not in skip}
    assert insight == expected_insight
    # Exactly once: the history gains a row only when an upsert inserts or changes a value.
    history = await pool.fetch(
        "SELECT media_id, metric, breakdown, dimension, count(*) AS n FROM ig_media_insight_history "
        "GROUP BY 1, 2, 3, 4")
    history = [r for r in history if str(r["media_id"]) not in skip]
    assert len(history) == len(expected_insight) and all(r["n"] == 1 for r in history)

    expected_account: dict[tuple[Any, ...], int | float] = {}
    for account in accounts:
        uid = account.ig_user_id
        for day in pacific.complete_days(now, BACKFILL_DAYS):
            end = pacific.day_end_utc(day)
            for metric in (*catalogue.ACCOUNT_TOTAL_VALUE, *catalogue.ACCOUNT_TIME_SERIES,
                           catalogue.FOLLOWER_COUNT):
                value = world.account_day_value(uid, metric, day)
                if value is None:
                    assert ("account", uid, metric, end.isoformat()) in unavailable, (uid, metric, day)
                else:
                    expected_account[(uid, metric, "day", end, "", "")] = value
        today_end = pacific.day_end_utc(pacific.today(now))
        for metric in catalogue.DEMOGRAPHICS:
            for breakdown in catalogue.DEMOGRAPHIC_BREAKDOWNS:
                for dim, value in world.demographics(uid, metric, breakdown).items():
                    expected_account[(uid, metric, "this_month", today_end, breakdown, dim)] = value
    account_rows = {(str(r["ig_user_id"]), r["metric"], r["period"], r["end_time"], r["breakdown"],
                     r["dimension"]): as_number(r["value"])
                    for r in await pool.fetch("SELECT * FROM ig_account_insight")}
    online = {k for k in account_rows if k[1] == catalogue.ONLINE_FOLLOWERS}
    assert {k: v for k, v in account_rows.items() if k not in online} == expected_account
    for account in accounts:  # online_followers: a map per hour, present exactly for >= 100 followers
        assert any(k[0] == account.ig_user_id for k in online) != account.low_followers
    return len(expected_insight) + len(expected_account)


# -------------------------------------------------------------------------------- retry timing


def assert_no_early_retry(arrivals: dict[str, list[stats.Arrival]],
                          events: list[RetryEvent]) -> tuple[int, int]:
    """Every retry of a request arrived after the client's decision plus the wait it decided on, and every
    repeated try was a decided retry. Returns (retries checked, reconnects).

    One exception, and it is aiohttp's, not ours: a request whose persistent (keep-alive) connection is
    closed without an answer is re-sent once at once on a new connection (RFC 9112 §9.3.1; aiohttp has no
    public switch for it). That is how a stale keep-alive connection is survived, and only after "drop".
    """
    decided: dict[str, list[RetryEvent]] = defaultdict(list)
    for event in events:
        decided[event.identity].append(event)
    checked = reconnects = 0
    for identity, tries in arrivals.items():
        decisions = sorted(decided.get(identity, []), key=lambda e: e.at)
        next_decision = 0
        for previous, after in itertools.pairwise(tries):
            if next_decision < len(decisions) and decisions[next_decision].at < after.at:
                retry = decisions[next_decision]
                next_decision += 1
                assert retry.at >= previous.at, (identity, "a decision before the try it decides on")
                # 1 ms of slack: time.monotonic() is read at slightly different points on the two sides.
                assert after.at >= retry.at + retry.wait_s - 0.001, (identity, previous, after, retry)
                checked += 1
            else:
                assert previous.outcome == "drop", (identity, "a try without a retry decision", tries)
                reconnects += 1
    return checked, reconnects


def assert_ok_once(arrivals: dict[str, list[stats.Arrival]]) -> None:
    """No request was served successfully twice: nothing fetched was fetched again."""
    twice = {identity: tries for identity, tries in arrivals.items()
             if sum(t.outcome == "ok" for t in tries) > 1}
    assert not twice


# -------------------------------------------------------------------------------- the tests


async def test_tight_budgets_and_faults_lose_nothing_and_respect_blocks(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        retry_events: list[RetryEvent]) -> None:
    # Each account may make 12 calls per rolling 2 s (6/s); the client's ceiling is 10/s, so it has to
    # slow down from the usage headers to stay out of the 1-s blocks.
    sim = await start_simulator(
        accounts=12, media_per_account=6, seed=11, world_knobs=WORLD_KNOBS, record_arrivals=True,
        account_budget=limits.Budget(calls=12, window_s=2.0, block_s=1.0), faults=FIVE_PERCENT)
    started_s = sim.world.clock()
    summary = await run_pass(tmp_path, sim, db_dsn, pool, {
        "graph": {"request_timeout_s": 0.3},  # below slow_delay_s: "slow" answers time out
        "rate_limit": {"account_calls_per_s": 10.0, "account_burst": 3, "pause_cap_s": 1.2},
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.4, "max_attempts": 6,
                  "throttle_base_delay_s": 1.0},
    })
    snap = sim.stats.snapshot()
    assert summary.exit_code == 0 and summary.jobs_failed == 0, summary.as_dict()
    assert sum(snap["faults"].values()) >= 0.03 * snap["calls"], snap  # the faults really happened

    compared = await assert_everything_stored_once(pool, sim.world, started_s)
    assert compared > 1000
    assert_ok_once(sim.stats.arrivals)

    while_blocked = snap["while_blocked_total"]
    assert while_blocked < 0.01 * snap["calls"], snap
    checked, reconnects = assert_no_early_retry(sim.stats.arrivals, retry_events)
    # Every fault was followed by a checked retry (or, after a drop, by aiohttp's one reconnect).
    assert checked + reconnects >= sum(snap["faults"].values())


@pytest.mark.parametrize("lag_calls", [0, 3])
async def test_budget_pacing_alone_stays_out_of_blocks(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        lag_calls: int) -> None:
    # No per-second ceiling (the shipped default): only the usage headers pace the calls. 20 calls per
    # rolling 2 s per account, reports from the 3rd answer on, lagging `lag_calls` answers; 5 % faults.
    sim = await start_simulator(
        accounts=8, media_per_account=6, seed=13, world_knobs=WORLD_KNOBS, record_arrivals=True,
        account_budget=limits.Budget(calls=20, window_s=2.0, block_s=1.0), faults=FIVE_PERCENT,
        usage_reporting=limits.Reporting(after_calls=2, lag_calls=lag_calls))
    started_s = sim.world.clock()
    summary = await run_pass(tmp_path, sim, db_dsn, pool, {
        # No short request timeout: an answer that comes late is not re-fetched, so "stored once" and "served
        # once" hold under load. The world runs 1,800 times faster than Meta's hour: the report age and the
        # pause cap scale with it.
        "rate_limit": {"pause_cap_s": 1.2, "usage_max_age_s": 3.0},
        "retry": {"base_delay_s": 0.05, "max_delay_s": 0.4, "max_attempts": 6,
                  "throttle_base_delay_s": 1.0},
    })
    snap = sim.stats.snapshot()
    assert summary.exit_code == 0 and summary.jobs_failed == 0, summary.as_dict()
    assert await assert_everything_stored_once(pool, sim.world, started_s) > 500
    assert_ok_once(sim.stats.arrivals)
    assert snap["while_blocked_total"] < 0.01 * snap["calls"], snap


async def test_app_throttle_pauses_the_host_and_every_account_resumes(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        retry_events: list[RetryEvent]) -> None:
    # The app may make 60 calls per 60 s; past that it is blocked 1 s (and the window starts over).
    # No usage headers before a block (`after_calls`): the budget pacing would keep the app out of it, and
    # this test is about what happens once Meta throttles.
    sim = await start_simulator(accounts=10, media_per_account=4, seed=5, world_knobs=WORLD_KNOBS,
                                record_arrivals=True, app_budget=limits.Budget(calls=60, window_s=60.0,
                                                                               block_s=1.0),
                                usage_reporting=limits.Reporting(after_calls=10**9))
    started_s = sim.world.clock()
    in_flight = 2  # at most this many requests outstanding: "already in flight" is a count, not a timing
    summary = await run_pass(tmp_path, sim, db_dsn, pool, {
        "graph": {"max_concurrency": in_flight},
        "rate_limit": {"account_calls_per_s": 20.0, "pause_cap_s": 5.0},
        # Code 4 comes without a regain estimate: the pause is the throttle backoff, [1 s, 2 s] at first.
        "retry": {"throttle_base_delay_s": 1.0},
    })
    snap = sim.stats.snapshot()
    assert summary.exit_code == 0 and summary.jobs_failed == 0, summary.as_dict()
    await assert_everything_stored_once(pool, sim.world, started_s)
    assert snap["throttled"].get("app", 0) >= 1
    # Only requests already on the wire when the block began (the other connection's) reach it.
    assert snap["while_blocked"].get("app", 0) <= in_flight - 1, snap
    assert_no_early_retry(sim.stats.arrivals, retry_events)

    # The whole host paused: after the first code-4 answer reached the client, no call of ANY account
    # arrived until the pause it decided on was over.
    tries = sorted((t for ts in sim.stats.arrivals.values() for t in ts), key=lambda t: t.at)
    first = min((e for e in retry_events if e.event == "graph_throttled"), key=lambda e: e.at)
    during = [t for t in tries if first.at < t.at < first.at + first.wait_s]
    assert len(during) <= in_flight - 1, during  # sent before the answer came: the other connection's
    after = {t.ig_user_id for t in tries if t.at >= first.at + first.wait_s}
    assert len(after) == 10  # every account resumed


async def test_one_paused_account_does_not_hold_up_the_others(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        retry_events: list[RetryEvent]) -> None:
    """By counts, not by rates: the hot account is blocked for 10 minutes after 15 calls; the other three
    complete every job while it stays paused (the pass is stopped once they are done, abandoning the
    hot account's waits). How fast the others go during a pause is measured by scripts/bench_throttle.py."""
    world = world_mod.World(3, 4, 20, **WORLD_KNOBS)
    hot = next(world.accounts()).ig_user_id
    others = [a.ig_user_id for a in world.accounts() if a.ig_user_id != hot]
    blocked = limits.Budget(calls=15, window_s=3600.0, block_s=600.0)
    sim = await start_simulator(accounts=4, media_per_account=20, seed=3, world_knobs=WORLD_KNOBS,
                                record_arrivals=True, account_budgets={hot: blocked},
                                # Usage headers only in throttled answers: the budget pacing would
                                # keep the hot account out of the block this test is about.
                                usage_reporting=limits.Reporting(after_calls=10**9))
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections={
        "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": 90,
                    "max_concurrent_accounts": 4},
        # Pacing off so the hot account certainly trips its budget; the pause is Meta's 10 minutes.
        "rate_limit": {"account_calls_per_s": 10.0, "account_burst": 1, "slow_down_at_pct": 100.0},
    })
    stop = asyncio.Event()

    def progress(snapshot: pass_progress.PassProgress) -> None:
        if snapshot.accounts_done >= len(others):
            stop.set()

    summary = await passes.run_pass(config.load(path), pool, stop=stop, metrics=metrics.Metrics(),
                                    on_progress=progress, progress_interval_s=0.05)
    assert summary.interrupted and summary.accounts_ok == len(others), summary.as_dict()
    assert not summary.accounts_failed
    snap = sim.stats.snapshot()
    assert snap["throttled"].get("account", 0) >= 1
    assert snap["while_blocked"].get("account", 0) <= 1, snap  # only a call already in flight
    pause = min(e.at for e in retry_events if e.event == "graph_throttled")
    tries = [t for ts in sim.stats.arrivals.values() for t in ts]
    assert not [t for t in tries if t.ig_user_id == hot and t.at > pause]  # paused until the stop
    states = {(str(r["ig_user_id"]), r["job"]): r["last_success_at"]
              for r in await pool.fetch("SELECT * FROM collector_job_state")}
    for account_id in others:  # every job of every other account completed during the hot one's pause
        assert all(states.get((account_id, job.value)) is not None for job in passes.PASS_JOBS), account_id
    assert not all(states.get((hot, job.value)) is not None for job in passes.PASS_JOBS)


async def test_user_throttle_pauses_every_account_of_the_token_and_no_other(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        retry_events: list[RetryEvent]) -> None:
    """Code 17 means the user behind the token hit its limit: every account whose calls use that Facebook user
    token is paused with the account that got it (Meta: more calls extend the block), the accounts with
    their own tokens go on, and nothing is lost once the pauses end."""
    sim = await start_simulator(accounts=4, media_per_account=4, seed=17, world_knobs=WORLD_KNOBS,
                                record_arrivals=True,
                                # 20 calls of the user per minute, then a 1-s block (the window starts over).
                                user_budget=limits.Budget(calls=20, window_s=60.0, block_s=1.0))
    directory = sim.simulator.accounts
    shared = [a for a in sim.accounts() if a.login == "facebook"]
    others = [a for a in sim.accounts() if a.login != "facebook"]
    assert len(shared) == 2 and len(others) == 2
    token = directory.user_token(directory.add_user([a.ig_user_id for a in shared]))
    configured = [dataclasses.replace(a, access_token=token) if a in shared else a for a in sim.accounts()]
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, accounts=configured, sections={
        "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": 90},
        # One connection: when a 17 comes back no other request is on the wire, so "no call during the
        # pause" is exact, not "at most the calls already sent".
        "graph": {"max_concurrency": 1},
        # Code 17 comes without a regain estimate: the pause is the throttle backoff, [1 s, 2 s] at first,
        # never shorter than the simulated block.
        "rate_limit": {"pause_cap_s": 5.0},
        "retry": {"throttle_base_delay_s": 1.0},
    })
    started_s = sim.world.clock()
    counters = metrics.Metrics()
    summary = await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=counters)
    snap = sim.stats.snapshot()
    assert summary.exit_code == 0 and summary.jobs_failed == 0, summary.as_dict()
    await assert_everything_stored_once(pool, sim.world, started_s)
    assert_ok_once(sim.stats.arrivals)
    assert snap["throttled"].get("user", 0) >= 1, snap
    assert set(snap["throttled"]) == {"user"}, snap
    assert snap["while_blocked"].get("user", 0) == 0, snap  # no call of the user reached its block
    assert_no_early_retry(sim.stats.arrivals, retry_events)

    shared_ids = {a.ig_user_id for a in shared}
    other_ids = {a.ig_user_id for a in others}
    tries = sorted((t for ts in sim.stats.arrivals.values() for t in ts), key=lambda t: t.at)
    throttles = sorted((e for e in retry_events if e.event == "graph_throttled"), key=lambda e: e.at)
    assert throttles and len(throttles) == snap["throttled"]["user"]
    for throttle in throttles:
        assert (throttle.fields["scope"], throttle.fields["code"], throttle.fields["accounts_paused"]) == (
            "user", 17, 2)
        assert throttle.fields["account"] in shared_ids
        assert token not in repr(throttle.fields)
        during = [t for t in tries if throttle.at < t.at < throttle.at + throttle.wait_s]
        # After the 17, no call of ANY account of the token reached the simulator until the pause ended ...
        assert not [t for t in during if t.ig_user_id in shared_ids], during
    # ... while the accounts with their own tokens were not paused: they made calls during the first pause.
    first = throttles[0]
    assert {t.ig_user_id for t in tries if first.at < t.at < first.at + first.wait_s} & other_ids
    assert {t.ig_user_id for t in tries if t.at >= first.at + first.wait_s} >= shared_ids  # both resumed
    assert counters.total(counters.throttles, scope="user", code="17") == len(throttles)
    assert counters.total(counters.throttles, scope="account") == 0


async def test_progress_shows_the_scopes_their_budget_holds_back(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    """A pass that slows down with nothing throttled says why: its progress counts the scopes whose reported
    usage holds calls back (and shows the app's usage), the gauge of /metrics too; none is left at the end."""
    sim = await start_simulator(
        accounts=2, media_per_account=6, seed=13, world_knobs=WORLD_KNOBS,
        account_budget=limits.Budget(calls=20, window_s=1.0, block_s=1.0))
    path = fixtures_sim.write_config(tmp_path, sim, db_dsn, sections={
        "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": 90},
        "rate_limit": {"pause_cap_s": 1.2, "usage_max_age_s": 3.0}})
    counters = metrics.Metrics()
    snapshots: list[pass_progress.PassProgress] = []
    gauge_while_held: list[float] = []

    def progress(snapshot: pass_progress.PassProgress) -> None:
        snapshots.append(snapshot)
        if snapshot.budget_held:
            gauge_while_held.append(counters.registry.get_sample_value(
                "ig_collector_budget_held_scopes", {"scope": "account"}) or 0.0)

    summary = await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=counters,
                                    on_progress=progress, progress_interval_s=0.02)
    assert summary.exit_code == 0 and summary.jobs_failed == 0, summary.as_dict()
    assert sim.stats.snapshot()["throttled_total"] == 0
    held = [s for s in snapshots if s.budget_held]
    assert held, snapshots  # each account needs more calls than its 20 per second: its budget held some back
    assert all(0 < s.budget_held <= 2 for s in held)
    assert any(value >= 1 for value in gauge_while_held)
    assert snapshots[-1].budget_held == 0
    assert snapshots[-1].app_usage_pct is not None
    assert "held by budget" in pass_progress.format_line(held[0])
    assert b'ig_collector_budget_held_scopes{scope="account"} 0.0' in counters.exposition()
