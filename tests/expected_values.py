"""What a pass must have stored for simulated accounts: exactly the simulator's values, and what Meta
withholds recorded as unavailable (never as 0). Shared by the tests that run whole passes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from collector import catalogue, pacific
from collector.simulator import world as world_mod
from tests import fixtures_sim


def as_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


async def assert_stored_exactly(pool: asyncpg.Pool, world: world_mod.World,
                                good: Sequence[world_mod.SimAccount], *, started_s: float, now: datetime,
                                backfill_days: int, withheld: Mapping[str, str] | None = None) -> None:
    """Media, media insights, daily account insights and demographics of the `good` accounts (collected
    without errors by a pass that started at `started_s`) are exactly the world's. `withheld`: media id ->
    the ig_unavailable reason its insights were recorded with instead (an error injected on its call)."""
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
        if withheld and media_id in withheld:
            assert unavailable[("media", media_id, "*", "")] == withheld[media_id]
            continue
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
    days = pacific.complete_days(now, backfill_days)
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
