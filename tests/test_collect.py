"""A full collection pass against the simulator over HTTP into a real PostgreSQL: what is stored must be
exactly the simulator's values, what Meta withholds must be recorded as unavailable (never as 0), and a
second pass must change nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from collector import catalogue, config, metrics, models, passes
from tests import expected_values, fixtures_sim

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
    await expected_values.assert_stored_exactly(pool, world, good, started_s=started_s, now=now,
                                                backfill_days=BACKFILL_DAYS)


async def test_second_pass_is_idempotent(tmp_path: Path, twenty: fixtures_sim.RunningSimulator, db_dsn: str,
                                         pool: asyncpg.Pool) -> None:
    await run_pass(tmp_path, twenty, db_dsn, pool)
    first = await counts(pool)
    await run_pass(tmp_path, twenty, db_dsn, pool)
    assert await counts(pool) == first


async def test_changed_values_append_history(tmp_path: Path, start_simulator: fixtures_sim.StartSimulator,
                                             db_dsn: str, pool: asyncpg.Pool) -> None:
    """Each history row of the second pass is a series that changed, or a series first seen then: a
    breakdown dimension Meta omitted while it was 0 (e.g. a story's SWIPE_FORWARD growing from 0 to 1) is
    stored, and gets its first history row, only once it is non-zero. Never a row without a change, never
    two rows for one series in one pass."""
    sim = await start_simulator(accounts=3, media_per_account=5, seed=3, world_knobs={
        "invalid_token_fraction": 0.0})
    await run_pass(tmp_path, sim, db_dsn, pool)
    before = await pool.fetchval("SELECT count(*) FROM ig_media_insight_history")
    between = await pool.fetchval("SELECT clock_timestamp()")
    sim.world.advance()
    await run_pass(tmp_path, sim, db_dsn, pool)
    after = await pool.fetchval("SELECT count(*) FROM ig_media_insight_history")
    rows = await pool.fetch(
        "SELECT value, lag(value) OVER s AS previous, row_number() OVER s AS n, collected_at > $1 AS second "
        "FROM ig_media_insight_history "
        "WINDOW s AS (PARTITION BY media_id, metric, breakdown, dimension ORDER BY collected_at)", between)
    added = [r for r in rows if r["second"]]
    changed = [r for r in added if r["previous"] is not None]
    first_seen = [r for r in added if r["previous"] is None]
    assert after > before
    assert len(added) == after - before
    assert changed, "advancing the world must change values"
    # No row without a change:
    assert all(r["value"] != r["previous"] for r in rows if r["previous"] is not None)
    assert all(r["n"] <= 2 for r in rows)  # no value changed twice in one pass
    assert all(r["value"] > 0 for r in first_seen)  # a dimension is stored once it is non-zero
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
        values = {r["metric"]: expected_values.as_number(r["value"]) for r in await pool.fetch(
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
