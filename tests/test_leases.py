"""collector.leases against a real PostgreSQL: claims partition the due accounts, an expired lease is taken
over and its old holder learns it lost it, release hands the next due time on; and which jobs of a claimed
account are due (pure)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from collector import leases, metrics, models, scheduler, settings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
IDS = [str(17841400000000000 + i) for i in range(1, 41)]
S = settings.ScheduleSettings()


def instance(pool: asyncpg.Pool, name: str, lease_s: float = 60.0) -> leases.Leases:
    return leases.Leases(pool, settings.ClusterSettings(instance_id=name, lease_s=lease_s), metrics.Metrics(),
                         started_at=NOW)


async def test_concurrent_claims_partition_the_due_accounts(pool: asyncpg.Pool) -> None:
    a, b, c = (instance(pool, name) for name in "abc")
    await a.register(dict.fromkeys(IDS, NOW), NOW)
    ids = [int(i) for i in IDS]
    claims = await asyncio.gather(*(x.claim(ids, NOW, 15) for x in (a, b, c)))
    claimed = [claim.ig_user_id for batch in claims for claim in batch]
    assert sorted(claimed) == sorted(IDS)  # 15 + 15 + 10: every account once, none twice
    assert await a.claim(ids, NOW, 15) == []  # all held
    assert all(claim.previous_holder is None for batch in claims for claim in batch)


async def test_expired_lease_is_taken_over_and_the_old_holder_loses_it(pool: asyncpg.Pool) -> None:
    old, new = instance(pool, "old", lease_s=0.2), instance(pool, "new")
    await old.register({IDS[0]: NOW}, NOW)
    [claim] = await old.claim([int(IDS[0])], NOW, 10)
    assert old.holds(IDS[0]) and claim.states == {}
    assert await new.claim([int(IDS[0])], NOW, 10) == []  # still held
    await asyncio.sleep(0.4)  # the lease ends (database clock) and the old holder's own view runs out
    assert not old.holds(IDS[0])
    [taken] = await new.claim([int(IDS[0])], NOW, 10)
    assert taken.previous_holder == "old" and new.counters.takeovers == 1
    assert await old.renew() == [IDS[0]]  # it learns it lost the account
    assert old.counters.lost == 1 and old.held == []


async def test_release_hands_on_the_next_due_time_and_stop_releases_all(pool: asyncpg.Pool) -> None:
    a, b = instance(pool, "a"), instance(pool, "b")
    await a.start()
    await a.register({IDS[0]: NOW, IDS[1]: NOW}, NOW)
    ids = [int(IDS[0]), int(IDS[1])]
    assert len(await a.claim(ids, NOW, 10)) == 2
    later = NOW + timedelta(hours=1)
    await a.release({IDS[0]: later})
    assert await b.claim(ids, NOW, 10) == []  # IDS[0] not due yet, IDS[1] still held by a
    await a.release_all({})  # a stops: IDS[1] is free again with the due time it was claimed with
    [claim] = await b.claim(ids, NOW, 10)
    assert claim.ig_user_id == IDS[1] and claim.due_from == NOW and claim.previous_holder is None
    [claim] = await b.claim(ids, later, 10)
    assert claim.ig_user_id == IDS[0] and claim.due_from == later
    assert await pool.fetchval(
        "SELECT stopped_at IS NOT NULL FROM collector_instance WHERE instance_id = $1", "a")


async def test_register_never_delays_but_respreads_long_overdue_work(pool: asyncpg.Pool) -> None:
    a = instance(pool, "a", lease_s=60.0)
    uid = IDS[0]
    await a.register({uid: NOW + timedelta(minutes=10)}, NOW)
    await a.register({uid: NOW + timedelta(minutes=30)}, NOW)  # later: kept at 10 min
    assert await pool.fetchval("SELECT next_due_at FROM collector_lease") == NOW + timedelta(minutes=10)
    await a.register({uid: NOW + timedelta(minutes=5)}, NOW)  # earlier: taken
    assert await pool.fetchval("SELECT next_due_at FROM collector_lease") == NOW + timedelta(minutes=5)
    much_later = NOW + timedelta(hours=3)  # nobody claimed it for hours (everything was down)
    await a.register({uid: much_later + timedelta(minutes=20)}, much_later)
    assert await pool.fetchval("SELECT next_due_at FROM collector_lease") == much_later + timedelta(
        minutes=20)


def test_due_jobs_are_judged_at_the_due_time_the_releaser_computed() -> None:
    uid = IDS[0]
    done = NOW - timedelta(minutes=30)
    states = {job: scheduler.JobState(done, done, 0) for job in models.Job}
    due_from = leases.next_due(uid, states, done, S)  # what the last holder stored on release
    claim_at = due_from + timedelta(seconds=3)  # claimed a moment after
    due = leases.due_jobs(uid, states, due_from, claim_at, schedule=S, order=models.Job)
    assert due and all(
        scheduler.next_due(uid, job, states[job], done, S) <= claim_at for job in due)
    # Asked at the claim time itself, the scheduler would move a passed due time to its next slot.
    assert not [job for job in due if scheduler.next_due(uid, job, states[job], claim_at, S) <= claim_at]
    # After the jobs ran, the account's next due time is later than the claim.
    ran = {job: scheduler.JobState(claim_at, claim_at, 0) for job in models.Job}
    assert leases.next_due(uid, ran, due_from, S) > claim_at
    # A brand-new account: every job due at once.
    assert leases.due_jobs(uid, {}, NOW, NOW, schedule=S, order=models.Job) == list(models.Job)
