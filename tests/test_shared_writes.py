"""Two instances writing the same values at the same moment (a webhook delivered to both, or a holder
whose lease expired while a call was in flight) store them once: the media-insight merge appends history
only for values it inserted or changed, and a concurrent writer's row is seen once its transaction
commits. The other instance's transaction is held open here, so the interleaving is forced, not hoped for.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from collector import models
from collector.storage import writer

T0 = datetime(2026, 3, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=1)
HELD_OPEN_S = 0.3


async def other_instance_writes(pool: asyncpg.Pool, value: int, started: asyncio.Event,
                                release: asyncio.Event) -> None:
    """What another instance's merge does for media 1 / reach, committed only when `release` is set."""
    async with pool.acquire() as conn, conn.transaction():
        changed = await conn.fetch(
            "INSERT INTO ig_media_insight AS t (media_id, metric, breakdown, dimension, value, collected_at) "
            "VALUES (1, 'reach', '', '', $1, $2) ON CONFLICT (media_id, metric, breakdown, dimension) "
            "DO UPDATE SET value = EXCLUDED.value, collected_at = EXCLUDED.collected_at "
            "WHERE t.value IS DISTINCT FROM EXCLUDED.value RETURNING t.value", value, T0)
        if changed:
            await conn.execute(
                "INSERT INTO ig_media_insight_history (media_id, metric, breakdown, dimension, value, "
                "collected_at) VALUES (1, 'reach', '', '', $1, $2)", value, T0)
        started.set()
        await release.wait()


async def race(pool: asyncpg.Pool, value: int) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    other = asyncio.create_task(other_instance_writes(pool, value, started, release))
    await started.wait()
    async with writer.Writer(pool) as w:
        await w.add(models.Table.MEDIA_INSIGHT, [models.MediaInsightRow(1, "reach", "", "", value, T1)])
        flushing = asyncio.create_task(w.flush())
        await asyncio.sleep(HELD_OPEN_S)  # our merge now waits for the other transaction
        release.set()
        await other
        await flushing


async def test_same_new_value_from_two_instances_is_stored_once(pool: asyncpg.Pool) -> None:
    await race(pool, 10)  # a key neither has stored yet: both insert
    assert await pool.fetchval("SELECT count(*) FROM ig_media_insight_history") == 1
    assert await pool.fetchval("SELECT value FROM ig_media_insight") == 10


async def test_same_changed_value_from_two_instances_appends_history_once(pool: asyncpg.Pool) -> None:
    await race(pool, 10)
    await race(pool, 11)  # a stored key both see change
    history = await pool.fetch("SELECT value FROM ig_media_insight_history ORDER BY value")
    assert [r["value"] for r in history] == [10, 11]
    assert await pool.fetchval("SELECT collected_at FROM ig_media_insight") == T0  # the first sighting
