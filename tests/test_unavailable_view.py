"""ig_unavailable_current: only the reasons that still hold as of the latest collection."""

from datetime import UTC, datetime, timedelta

import asyncpg

from collector import models
from collector.storage import writer as storage_writer

T1 = datetime(2026, 11, 20, 12, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)
DAY_END = datetime(2026, 11, 19, 8, tzinfo=UTC)


async def current(pool: asyncpg.Pool) -> set[tuple[str, int, str, str]]:
    rows = await pool.fetch("SELECT object_type, object_id, metric, scope FROM ig_unavailable_current")
    return {tuple(r) for r in rows}  # type: ignore[misc]


async def test_media_reason_holds_until_a_later_refresh_drops_it(pool: asyncpg.Pool) -> None:
    async with storage_writer.Writer(pool) as writer:
        await writer.add(models.Table.MEDIA, [
            models.MediaRow(1, 9, "IMAGE", "STORY", T1, None, None, None, T1, T1)])
        await writer.add(models.Table.UNAVAILABLE, [
            models.UnavailableRow("media", 1, "*", "", "not_enough_viewers", None, T1)])
        await writer.flush()
        assert await current(pool) == {("media", 1, "*", "")}
        # The next refresh had enough viewers: values stored, no reason recorded.
        await writer.add(models.Table.MEDIA, [
            models.MediaRow(1, 9, "IMAGE", "STORY", T1, None, None, None, T2, T2)])
        await writer.add(models.Table.MEDIA_INSIGHT, [models.MediaInsightRow(1, "reach", "", "", 7, T2)])
    assert await current(pool) == set()
    # The record of what happened stays in ig_unavailable itself.
    assert await pool.fetchval("SELECT count(*) FROM ig_unavailable") == 1


async def test_account_day_reason_holds_until_the_day_arrives(pool: asyncpg.Pool) -> None:
    scope = DAY_END.isoformat()
    async with storage_writer.Writer(pool) as writer:
        await writer.add(models.Table.UNAVAILABLE, [
            models.UnavailableRow("account", 9, "reach", scope, "no_data", None, T1),
            models.UnavailableRow("account", 9, "follower_demographics", "this_month:age",
                                  "fewer_than_100_followers", None, T1)])
        await writer.flush()
        assert len(await current(pool)) == 2
        # Meta's data lag: the day arrives on a later pass.
        await writer.add(models.Table.ACCOUNT_INSIGHT, [
            models.AccountInsightRow(9, "reach", "day", DAY_END, "", "", 12, T2)])
    assert await current(pool) == {("account", 9, "follower_demographics", "this_month:age")}
