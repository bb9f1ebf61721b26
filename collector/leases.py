"""Account leases: several daemons on one database, each account's jobs run by one of them at a time.

The unit of work an instance claims is an account (all its jobs run in one instance at a time, so the
per-account pacing stays local). `collector_lease` holds one row per account: `next_due_at` (the earliest
due time of its jobs, written by the holder on release) and, while it is held, the `holder` (instance id)
and `lease_until` (database clock).

- **claim**: one statement picks due, free (or expired) accounts in due order with `FOR UPDATE SKIP
  LOCKED` (concurrent claimers never wait for, nor get, each other's rows), sets the holder and the lease
  end, and returns the claimed accounts' `collector_job_state` rows, so the claimer decides what to run
  from the committed state, not from `next_due_at` (a hint) nor from its own memory (another instance may
  have run the account since).
- **renew**: every `lease_s / 3` one statement extends every lease the instance holds and records its
  heartbeat and counters in `collector_instance`. A lease the instance no longer holds (taken over after
  it expired: a long pause, a database outage) is dropped from `held`; the daemon starts no further job of
  that account. An instance that cannot renew for `lease_s` treats all its leases as gone.
- **release**: after the account's job states are committed, the lease is cleared and `next_due_at` set
  to the account's next due time; SIGTERM releases every lease at once, so others take over immediately.
  A killed instance's leases expire after `lease_s`, and the next claimer takes them over.

The database guarantees one holder per account at any instant; a holder that lost its lease while a call
was in flight may still write that job's rows. Every data upsert is idempotent by natural key and history
is appended only when a value changes, so the overlap can cost calls, never duplicate data.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import asyncpg
import structlog

from collector import exceptions, metrics, models, scheduler, settings

log = structlog.get_logger(__name__)

# The lease is renewed this many times per lease_s: two renewals can fail before the lease expires.
RENEWALS_PER_LEASE = 3

CLAIM_SQL = """
WITH picked AS (
    SELECT ig_user_id, holder FROM collector_lease
    WHERE ig_user_id = ANY($1::bigint[]) AND next_due_at <= $2
      AND (holder IS NULL OR lease_until < now())
    ORDER BY next_due_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE collector_lease
    SET holder = $4, lease_until = now() + $5 * interval '1 second', claimed_at = now()
    WHERE ig_user_id = ANY(ARRAY(SELECT ig_user_id FROM picked))  -- by primary key, not a join plan
    RETURNING ig_user_id, next_due_at
)
SELECT c.ig_user_id, c.next_due_at, p.holder AS previous_holder,
       s.job, s.last_success_at, s.last_attempt_at, s.consecutive_failures
FROM claimed AS c JOIN picked AS p USING (ig_user_id)
LEFT JOIN collector_job_state AS s USING (ig_user_id)
"""

# Accounts become claimable: new rows get their due time; a free row keeps an earlier due time (LEAST: the
# worst a stale value costs is one claim that finds nothing due), except one left overdue for longer than
# $4 seconds (no instance was there to claim it, e.g. after an outage): that one takes the due time just
# computed, which spreads the overdue jobs over their catch-up slots (collector.scheduler) instead of
# firing them all at once.
REGISTER_SQL = """
INSERT INTO collector_lease AS l (ig_user_id, next_due_at)
SELECT * FROM unnest($1::bigint[], $2::timestamptz[])
ON CONFLICT (ig_user_id) DO UPDATE SET next_due_at = CASE
    WHEN l.next_due_at < $3::timestamptz - $4 * interval '1 second' THEN EXCLUDED.next_due_at
    ELSE LEAST(l.next_due_at, EXCLUDED.next_due_at) END
WHERE l.holder IS NULL
"""

RENEW_SQL = """
WITH renewed AS (
    UPDATE collector_lease SET lease_until = now() + $2 * interval '1 second'
    WHERE holder = $1 AND ig_user_id = ANY($3::bigint[])
    RETURNING ig_user_id
), beat AS (
    INSERT INTO collector_instance AS i (instance_id, started_at, heartbeat_at, lease_s, claims, takeovers,
                                         renewals, releases, lost)
    VALUES ($1, $4, now(), $2, $5, $6, $7, $8, $9)
    ON CONFLICT (instance_id) DO UPDATE SET
        started_at = EXCLUDED.started_at, heartbeat_at = now(), stopped_at = NULL,
        lease_s = EXCLUDED.lease_s, claims = EXCLUDED.claims, takeovers = EXCLUDED.takeovers,
        renewals = EXCLUDED.renewals, releases = EXCLUDED.releases, lost = EXCLUDED.lost
)
SELECT ig_user_id FROM renewed
"""

RELEASE_SQL = """
UPDATE collector_lease AS l
SET holder = NULL, lease_until = NULL, released_at = now(), next_due_at = r.next_due_at
FROM unnest($2::bigint[], $3::timestamptz[]) AS r(ig_user_id, next_due_at)
WHERE l.ig_user_id = r.ig_user_id AND l.holder = $1
"""

# Leases left by an earlier life of this instance id (killed, same configured id): ours to take back.
RELEASE_ALL_SQL = """
UPDATE collector_lease SET holder = NULL, lease_until = NULL, released_at = now() WHERE holder = $1
"""

STOPPED_SQL = "UPDATE collector_instance SET stopped_at = now(), heartbeat_at = now() WHERE instance_id = $1"

HOLDERS_SQL = """
SELECT ig_user_id::text AS ig_user_id, holder, lease_until, lease_until < now() AS expired, next_due_at
FROM collector_lease WHERE holder IS NOT NULL
"""

INSTANCES_SQL = """
SELECT instance_id, started_at, heartbeat_at, stopped_at, lease_s, claims, takeovers, renewals, releases,
       lost,
       (SELECT count(*) FROM collector_lease AS l
        WHERE l.holder = i.instance_id AND l.lease_until >= now()) AS held
FROM collector_instance AS i ORDER BY heartbeat_at DESC
"""

# InternalClientError: a statement cut off by a dropped connection ("cannot switch to state ...").
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
              TimeoutError)
_JOBS = {job.value: job for job in models.Job}


def default_instance_id() -> str:
    """`<host name>-<pid>`: unique per process, readable in `status`."""
    return f"{socket.gethostname()}-{os.getpid()}"


def instance_id(cluster: settings.ClusterSettings) -> str:
    return cluster.instance_id or default_instance_id()


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """One claimed account, with its committed job states at the moment of the claim."""

    ig_user_id: str
    # The row's next_due_at: the `now` its due times were computed at (see `due_jobs`).
    due_from: datetime
    previous_holder: str | None  # set: a takeover of that instance's expired lease
    states: dict[models.Job, scheduler.JobState]


@dataclasses.dataclass(slots=True)
class Counters:
    claims: int = 0
    takeovers: int = 0
    renewals: int = 0
    releases: int = 0
    lost: int = 0


class Leases:
    """This instance's leases: the SQL above, what it holds, and its counters (also in /metrics)."""

    def __init__(self, pool: asyncpg.Pool, cluster: settings.ClusterSettings, counters: metrics.Metrics, *,
                 started_at: datetime) -> None:
        self._pool = pool
        self.instance_id = instance_id(cluster)
        self.lease_s = cluster.lease_s
        self._metrics = counters
        self._started_at = started_at
        self._monotonic = time.monotonic
        # ig_user_id -> monotonic time until which we are sure to hold it (our clock, conservative: the
        # lease end counted from before the statement that set it was sent).
        self._held: dict[str, float] = {}
        self.counters = Counters()
        counters.cluster_info.labels(instance_id=self.instance_id).set(1)

    @property
    def renew_interval_s(self) -> float:
        return self.lease_s / RENEWALS_PER_LEASE

    def holds(self, ig_user_id: str) -> bool:
        """Whether this instance still holds the account's lease (as far as it can know)."""
        until = self._held.get(ig_user_id)
        return until is not None and self._monotonic() < until

    @property
    def held(self) -> list[str]:
        return list(self._held)

    async def start(self) -> None:
        """Take back leases an earlier life of this instance id left behind, and record the instance."""
        await self._execute(RELEASE_ALL_SQL, self.instance_id)
        await self.renew()

    async def register(self, next_due: Mapping[str, datetime], now: datetime) -> None:
        """Make accounts claimable (new rows, due times computed at `now`); see REGISTER_SQL."""
        if not next_due:
            return
        ids = [int(i) for i in next_due]
        await self._execute(REGISTER_SQL, ids, list(next_due.values()), now, self.lease_s)

    async def claim(self, ig_user_ids: Sequence[int], now: datetime, limit: int) -> list[Claim]:
        """Claim up to `limit` accounts among `ig_user_ids` whose next due time is <= now, free or expired."""
        if limit <= 0 or not ig_user_ids:
            return []
        sent = self._monotonic()
        rows = await self._fetch(CLAIM_SQL, ig_user_ids, now, limit, self.instance_id, self.lease_s)
        claims: dict[str, Claim] = {}
        for row in rows:
            uid = str(row["ig_user_id"])
            claim = claims.get(uid)
            if claim is None:
                previous = row["previous_holder"]
                claim = claims[uid] = Claim(uid, row["next_due_at"],
                                            previous if previous != self.instance_id else None, {})
            job = _JOBS.get(row["job"]) if row["job"] is not None else None
            if job is not None:
                claim.states[job] = scheduler.JobState(row["last_success_at"], row["last_attempt_at"],
                                                       row["consecutive_failures"])
        for claim in claims.values():
            self._held[claim.ig_user_id] = sent + self.lease_s
            self.counters.claims += 1
            self._metrics.lease_claims.inc()
            if claim.previous_holder is not None:
                self.counters.takeovers += 1
                self._metrics.lease_takeovers.inc()
                log.info("lease_taken_over", ig_user_id=claim.ig_user_id,
                         previous_holder=claim.previous_holder)
        self._metrics.leases_held.set(len(self._held))
        return list(claims.values())

    async def renew(self) -> list[str]:
        """Extend every held lease and record the heartbeat; returns the accounts found lost (another
        instance took them over). A database error is raised (StorageError); holds() then runs out on its
        own once the leases could have expired."""
        ids = [int(i) for i in self._held]
        sent = self._monotonic()
        c = self.counters
        rows = await self._fetch(RENEW_SQL, self.instance_id, self.lease_s, ids, self._started_at,
                                 c.claims, c.takeovers, c.renewals + len(ids), c.releases, c.lost)
        kept = {str(r["ig_user_id"]) for r in rows}
        # Only what was sent: accounts claimed or released while the statement ran are not judged by it.
        lost = [uid for uid in map(str, ids) if uid not in kept and uid in self._held]
        for uid in kept:
            if uid in self._held:
                self._held[uid] = sent + self.lease_s
        for uid in lost:
            del self._held[uid]
            log.warning("lease_lost", ig_user_id=uid,
                        reason="taken over by another instance after it expired")
        c.renewals += len(kept)
        c.lost += len(lost)
        self._metrics.lease_renewals.inc(len(kept))
        self._metrics.leases_lost.inc(len(lost))
        self._metrics.leases_held.set(len(self._held))
        return lost

    async def release(self, next_due: Mapping[str, datetime]) -> None:
        """Give accounts back, each with its next due time (their job states are committed already)."""
        mine = {uid: due for uid, due in next_due.items() if uid in self._held}
        if not mine:
            return
        await self._execute(RELEASE_SQL, self.instance_id, [int(i) for i in mine], list(mine.values()))
        for uid in mine:
            self._held.pop(uid, None)
        self.counters.releases += len(mine)
        self._metrics.lease_releases.inc(len(mine))
        self._metrics.leases_held.set(len(self._held))

    async def release_all(self, next_due: Mapping[str, datetime]) -> None:
        """On stop: release every held lease at once (`next_due` where known; the others keep the due time
        they were claimed with, so they are due again at once) and record the stop."""
        held = list(self._held)
        await self.release({uid: next_due[uid] for uid in held if uid in next_due})
        await self._execute(RELEASE_ALL_SQL, self.instance_id)
        await self._execute(STOPPED_SQL, self.instance_id)
        released = len([uid for uid in held if uid not in next_due])
        self.counters.releases += released
        self._metrics.lease_releases.inc(released)
        self._held.clear()
        self._metrics.leases_held.set(0)
        log.info("leases_released", accounts=len(held))

    async def _execute(self, sql: str, *args: object) -> None:
        try:
            await self._pool.execute(sql, *args)
        except _DB_ERRORS as exc:
            raise exceptions.StorageError(f"lease statement failed: {exc}") from exc

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        try:
            return await self._pool.fetch(sql, *args)
        except _DB_ERRORS as exc:
            raise exceptions.StorageError(f"lease statement failed: {exc}") from exc


def next_due(ig_user_id: str, states: Mapping[models.Job, scheduler.JobState], at: datetime,
             schedule: settings.ScheduleSettings) -> datetime:
    """The account's earliest job due time as known at `at` (what `collector_lease.next_due_at` holds)."""
    return min(scheduler.next_due(ig_user_id, job, states.get(job), at, schedule) for job in models.Job)


def due_jobs(ig_user_id: str, states: Mapping[models.Job, scheduler.JobState], due_from: datetime,
             now: datetime, *, schedule: settings.ScheduleSettings,
             order: Iterable[models.Job]) -> list[models.Job]:
    """The account's jobs due at `now`, in `order`, their due times computed as at `due_from` (the claimed
    row's next_due_at). `scheduler.next_due` moves a due time that has passed to the job's next catch-up
    slot, so asking it at `now` would never find a job due; asked at the earliest due time, it gives the
    same due times the releaser computed for the same states (the catch-up slot at or after an earlier
    time that is already >= next_due_at is the same slot), and a state that changed since then is judged
    by its own candidate."""
    return [job for job in order
            if scheduler.next_due(ig_user_id, job, states.get(job), due_from, schedule) <= now]


async def holders(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Held leases (ig_user_id, holder, lease_until, expired, next_due_at), for `status`."""
    try:
        return await pool.fetch(HOLDERS_SQL)
    except _DB_ERRORS as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc


async def instances(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """Every instance that ran against this database, newest heartbeat first, with its counters."""
    try:
        return await pool.fetch(INSTANCES_SQL)
    except _DB_ERRORS as exc:
        raise exceptions.StorageError(f"database query failed: {exc}") from exc
