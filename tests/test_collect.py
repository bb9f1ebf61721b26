"""A full collection pass against the simulator over HTTP into a real PostgreSQL: what is stored must be
exactly the simulator's values, what Meta withholds must be recorded as unavailable (never as 0), and a
second pass must change nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector import catalogue, config, metrics, models, pacific, passes
from collector.simulator import world as world_mod
from tests import fixtures_sim

BACKFILL_DAYS = 4
FAST = {
    "rate_limit": {"account_calls_per_s": 0, "app_calls_per_s": 0},
    "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05},
    "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": 90},
}


async def run_pass(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str, pool: asyncpg.Pool,
                   **kwargs: Any) -> passes.PassSummary:
    path = fixtures_sim.write_config(tmp_path, sim, dsn, sections=FAST, **kwargs)
    return await passes.run_pass(config.load(path), pool, stop=asyncio.Event(), metrics=metrics.Metrics())


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    tables = [t.value for t in models.Table if t is not models.Table.JOB_STATE]
    tables.append("ig_media_insight_history")
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


def as_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


@pytest.fixture
async def twenty(start_simulator: fixtures_sim.StartSimulator) -> fixtures_sim.RunningSimulator:
    return await start_simulator(accounts=24, media_per_account=12, seed=7)


async def test_full_pass_stores_exactly_the_simulators_values(
        tmp_path: Path, twenty: fixtures_sim.RunningSimulator, db_dsn: str, pool: asyncpg.Pool) -> None:
    world = twenty.world
    started_s = world.clock()
    summary = await run_pass(tmp_path, twenty, db_dsn, pool)
    now = datetime.now(UTC)
    accounts = list(world.accounts())
    assert {a.login for a in accounts} == {"instagram", "facebook"}
    bad_tokens = {a.ig_user_id for a in accounts if a.token_error}
    assert bad_tokens, "the seed must give some invalid tokens"
    assert set(summary.accounts_failed) == bad_tokens
    assert summary.exit_code == 1

    stored = {str(r["ig_user_id"]): r for r in await pool.fetch("SELECT * FROM ig_account")}
    assert set(stored) == {a.ig_user_id for a in accounts}
    for account in accounts:
        row = stored[account.ig_user_id]
        if account.token_error:
            assert row["status"] == ("token_expired" if account.token_error == 463 else "token_invalid")
            assert "code=190" in row["status_detail"]
            continue
        assert (row["status"], row["username"], row["followers_count"], row["media_count"], row["login"]) == (
            "ok", account.username, account.followers_count, account.media_count, account.login)

    good = [a for a in accounts if not a.token_error]
    cat = catalogue.Catalogue()
    skip = fixtures_sim.boundary_stories(world, good, started_s)
    media_rows = {str(r["media_id"]): r for r in await pool.fetch("SELECT * FROM ig_media")
                  if str(r["media_id"]) not in skip}
    insight = {(str(r["media_id"]), r["metric"], r["breakdown"], r["dimension"]): as_number(r["value"])
               for r in await pool.fetch("SELECT * FROM ig_media_insight") if str(r["media_id"]) not in skip}
    unavailable = {(r["object_type"], str(r["object_id"]), r["metric"], r["scope"]): r["reason"]
                   for r in await pool.fetch("SELECT * FROM ig_unavailable")}
    expected_media: dict[str, world_mod.SimMedia] = {}
    for account in good:
        cutoff = now - timedelta(days=90)
        for media in world.media_of(account.ig_user_id):
            if media.timestamp > cutoff + timedelta(minutes=5):
                expected_media[media.media_id] = media
        for story in world.stories_of(account.ig_user_id):
            if story.media_id not in skip:
                expected_media[story.media_id] = story
    assert set(media_rows) == set(expected_media)

    expected_insight: dict[tuple[str, str, str, str], int | float] = {}
    for media_id, media in expected_media.items():
        account = world.account(media.ig_user_id)
        row = media_rows[media_id]
        assert (str(row["ig_user_id"]), row["media_type"], row["media_product_type"], row["permalink"]) == (
            media.ig_user_id, media.media_type, media.media_product_type,
            None if media.is_story else media.permalink) or row["permalink"] == media.permalink
        assert row["posted_at"] == media.timestamp
        assert row["like_count"] == (None if media.is_story else world.like_count(media))
        reason = world.media_unavailable(media)
        if reason == "pre_conversion":
            assert unavailable[("media", media_id, "*", "")] == "posted_before_business_conversion"
            continue
        if reason == "not_enough_viewers":
            assert unavailable[("media", media_id, "*", "")] == "not_enough_viewers"
            continue
        wanted = set(cat.media_metrics(account.login, media.media_product_type))
        supported = world.supported_media_metrics(media, account.login)
        for metric in wanted & supported:
            expected_insight[(media_id, metric, "", "")] = world.media_metric_value(media_id, metric)
        for metric in wanted - supported:
            assert unavailable[("media", media_id, metric, "")] == "unsupported_for_product_type", metric
        for metric, breakdown in cat.media_breakdowns(media.media_product_type):
            if metric in supported:
                for dim, value in world.media_breakdown(media_id, metric, breakdown).items():
                    expected_insight[(media_id, metric, breakdown, dim.upper())] = value
    assert insight == expected_insight
    assert not any(value == 0 and key[2] == "" for key, value in insight.items()
                   if world.media_metric_value(key[0], key[1]) != 0)

    # Account insights: one row per Pacific day and metric, exactly the simulator's daily values.
    days = pacific.complete_days(now, BACKFILL_DAYS)
    account_rows = {(str(r["ig_user_id"]), r["metric"], r["period"], r["end_time"], r["breakdown"],
                     r["dimension"]): as_number(r["value"])
                    for r in await pool.fetch("SELECT * FROM ig_account_insight")}
    expected_account: dict[tuple[Any, ...], int | float] = {}
    for account in good:
        uid = account.ig_user_id
        for day in days:
            end = pacific.day_end_utc(day)
            for metric in (*catalogue.ACCOUNT_TOTAL_VALUE, "reach"):
                value = world.account_day_value(uid, metric, day)
                if value is None:
                    assert ("account", uid, metric, end.isoformat()) in unavailable, (uid, metric, day)
                else:
                    expected_account[(uid, metric, "day", end, "", "")] = value
            followers = world.follower_count(uid, day)
            if followers is None:
                assert unavailable[("account", uid, "follower_count", end.isoformat())] == (
                    "fewer_than_100_followers" if account.low_followers else "no_data")
            else:
                expected_account[(uid, "follower_count", "day", end, "", "")] = followers
        today_end = pacific.day_end_utc(pacific.today(now))
        for metric in catalogue.DEMOGRAPHICS:
            for breakdown in catalogue.DEMOGRAPHIC_BREAKDOWNS:
                values = world.demographics(uid, metric, breakdown)
                if not values:
                    assert ("account", uid, metric, f"this_month:{breakdown}") in unavailable
                for dim, value in values.items():
                    expected_account[(uid, metric, "this_month", today_end, breakdown, dim)] = value
    online = {k: v for k, v in account_rows.items() if k[1] == "online_followers"}
    demographic_or_daily = {k: v for k, v in account_rows.items() if k[1] != "online_followers"}
    assert demographic_or_daily == expected_account
    for account in good:
        has_online = any(k[0] == account.ig_user_id for k in online)
        assert has_online != account.low_followers
    if any(a.low_followers for a in good):
        low = next(a for a in good if a.low_followers)
        assert unavailable[("account", low.ig_user_id, "follower_demographics", "this_month:age")] == (
            "fewer_than_100_followers")


async def test_second_pass_is_idempotent(tmp_path: Path, twenty: fixtures_sim.RunningSimulator, db_dsn: str,
                                         pool: asyncpg.Pool) -> None:
    await run_pass(tmp_path, twenty, db_dsn, pool)
    first = await counts(pool)
    await run_pass(tmp_path, twenty, db_dsn, pool)
    assert await counts(pool) == first


async def test_changed_values_append_history(tmp_path: Path, start_simulator: fixtures_sim.StartSimulator,
                                             db_dsn: str, pool: asyncpg.Pool) -> None:
    sim = await start_simulator(accounts=3, media_per_account=5, seed=3, world_knobs={
        "invalid_token_fraction": 0.0})
    await run_pass(tmp_path, sim, db_dsn, pool)
    before = await pool.fetchval("SELECT count(*) FROM ig_media_insight_history")
    sim.world.advance()
    await run_pass(tmp_path, sim, db_dsn, pool)
    after = await pool.fetchval("SELECT count(*) FROM ig_media_insight_history")
    changed = await pool.fetchval(
        "SELECT count(*) FROM (SELECT media_id, metric, breakdown, dimension FROM ig_media_insight_history "
        "GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) AS grown")
    assert after > before
    assert changed == after - before
    curve = await pool.fetch(
        "SELECT h.value FROM ig_media_insight_history h JOIN ig_media_insight i USING "
        "(media_id, metric, breakdown, dimension) WHERE i.metric = 'reach' "
        "ORDER BY h.media_id, h.collected_at")
    assert curve


async def test_media_count_lower_than_real_and_empty_pages_lose_nothing(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await start_simulator(accounts=4, media_per_account=30, seed=11, world_knobs={
        "invalid_token_fraction": 0.0, "empty_page_fraction": 1.0, "media_count_underreport_fraction": 1.0,
        "media_span_days": 60.0})
    await run_pass(tmp_path, sim, db_dsn, pool)
    for account in sim.world.accounts():
        assert account.empty_page and account.media_count < account.real_media_count
        stored = await pool.fetchval(
            "SELECT count(*) FROM ig_media WHERE ig_user_id = $1 AND media_product_type <> 'STORY'",
            int(account.ig_user_id))
        assert stored == account.real_media_count
    assert sim.stats.by_kind["media"] <= 4 * 3  # one 25..100-item page set per account


async def test_unsupported_metric_is_dropped_remembered_and_the_rest_stored(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await start_simulator(accounts=2, media_per_account=40, seed=5, world_knobs={
        "invalid_token_fraction": 0.0, "pre_conversion_fraction": 0.0, "media_span_days": 60.0})
    await run_pass(tmp_path, sim, db_dsn, pool)
    images = [m for a in sim.world.accounts() for m in sim.world.media_of(a.ig_user_id)
              if m.media_type == "IMAGE"]
    assert len(images) > 2
    for media in images:
        reasons = await pool.fetch(
            "SELECT metric, reason FROM ig_unavailable WHERE object_id = $1", int(media.media_id))
        assert ("shares", "unsupported_for_product_type") in [tuple(r) for r in reasons]
        stored = await pool.fetch(
            "SELECT metric FROM ig_media_insight WHERE media_id = $1 AND breakdown = ''", int(media.media_id))
        assert {r["metric"] for r in stored} >= {"reach", "likes", "saved", "views"}
    # The refusal is learned: one call per login flow was refused, not one per image.
    refused = sim.stats.by_code[100]
    assert refused <= 2, refused


@pytest.mark.parametrize("knob", ["omit_media_product_type_on_instagram",
                                  "refuse_media_product_type_on_instagram"])
async def test_instagram_login_without_media_product_type_still_collects_everything(
        knob: str, tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await start_simulator(accounts=2, media_per_account=40, seed=21, world_knobs={
        "invalid_token_fraction": 0.0, "pre_conversion_fraction": 0.0, "media_span_days": 60.0,
        "views_as_total_value": True, "demographics_timeframe_key": True, knob: True})
    await run_pass(tmp_path, sim, db_dsn, pool)
    cat = catalogue.Catalogue()
    ig = next(a for a in sim.world.accounts() if a.login == "instagram")
    media = sim.world.media_of(ig.ig_user_id)
    assert {m.media_type for m in media} >= {"VIDEO", "IMAGE"}
    for item in media:
        stored_type = await pool.fetchval("SELECT media_product_type FROM ig_media WHERE media_id = $1",
                                          int(item.media_id))
        assert stored_type is None  # absent from Meta's answer: not guessed into the table
        values = {r["metric"]: as_number(r["value"]) for r in await pool.fetch(
            "SELECT metric, value FROM ig_media_insight WHERE media_id = $1 AND breakdown = ''",
            int(item.media_id))}
        plan = cat.media_plan("instagram", None, item.media_type)
        supported = sim.world.supported_media_metrics(item, "instagram")
        assert values == {m: sim.world.media_metric_value(item.media_id, m)
                          for m in set(plan.metrics) & supported}, item
        # Every metric of the item's true kind that Meta serves is there.
        assert set(values) >= set(cat.media_metrics("instagram", item.media_product_type)) & supported
    demographics = await pool.fetch(
        "SELECT breakdown, dimension FROM ig_account_insight WHERE metric = 'follower_demographics' "
        "AND ig_user_id = $1", int(ig.ig_user_id))
    assert {r["breakdown"] for r in demographics} <= set(catalogue.DEMOGRAPHIC_BREAKDOWNS)
