"""`ig-collector run`: the long-running service.

Shape (StyleGuide 8-10): a thin scheduler loop claims accounts whose jobs are due from PostgreSQL
(`leases`: one statement, `FOR UPDATE SKIP LOCKED`, never more than the workers can take), so several
daemons on one database share the accounts instead of each collecting all of them; N worker tasks take
a claimed account and run its due jobs (`scheduler.next_due` over the job states the claim returned)
through `Collector.run_job`; the collector hands rows and the job state to the one `Writer` (which applies
backpressure while PostgreSQL is slow or down). Once the account's job states are committed its lease is
released with its next due time. Leases are renewed while held; SIGTERM releases them at once.

Signals only set events. SIGTERM/SIGINT: stop scheduling, drop queued work that has not started, let
in-flight jobs finish within `shutdown_grace_s` (the collector starts no new Graph call once stopping),
cancel what is left, flush the writer (shielded), release every lease (the accounts dropped from the
queue at once, the others after the flush), close the client and the pool, exit 0. A second signal
skips the grace period. SIGHUP: reload the config and the accounts file, and discover the accounts of
[[tokens]] again (also done at start and every `[collect] discovery_interval_s`); an invalid config is
logged and the old one stays in use; in-flight jobs are not touched.

Fatal tasks (scheduler, workers, token refresher, gauges, watchdog) run in one `asyncio.TaskGroup`: if
one of them dies the daemon stops (exit 3) and systemd restarts it. One account's failure never gets that
far: a job's exception is logged with its account and job, counted, and retried on its back-off.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from collector import (
    collect,
    config,
    discovery,
    eventloop,
    exceptions,
    graph,
    httpserver,
    leases,
    metrics,
    models,
    passes,
    ratelimit,
    retry,
    scheduler,
    sdnotify,
    settings,
    status,
    token_tools,
    tokens,
    webhook,
)
from collector.storage import db, retention, token_table
from collector.storage import writer as storage_writer
from collector.web import app as web_app

log = structlog.get_logger("collector.daemon")

EXIT_OK = 0
EXIT_FATAL = 3
GAUGE_INTERVAL_S = 5.0
# The job states of every account are re-read this often for the freshness gauges: the accounts other
# instances collect would otherwise look stale here.
STATE_REFRESH_S = 60.0
TOKEN_CHECK_MAX_S = 3600.0
MAINTENANCE_INTERVAL_S = 86400.0  # history partitions ahead and [retention], daily (the first at start)
MAINTENANCE_RETRY_S = 3600.0  # after a failed maintenance (database down, a lock held too long)
RELOAD_STATE_TIMEOUT_S = 5.0  # a reload reading state while the database is down falls back to memory
# Settings read once at start; a reload that changes them is reported, and they take effect on restart.
RESTART_ONLY = ("database", "graph", "rate_limit", "retry", "http", "webhook", "state_dir", "log", "cluster")

Key = tuple[str, models.Job]  # (ig_user_id, job)


def run(config_path: Path, args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code (0 after a clean stop)."""
    cfg = config.load(config_path)
    use_uvloop = not getattr(args, "no_uvloop", False)
    with eventloop.runner(use_uvloop) as runner:
        return runner.run(Daemon(config_path, cfg).serve())


class Daemon:
    """One service instance. `serve()` is the whole life: open, run, drain, close."""

    def __init__(self, config_path: Path, cfg: settings.Config, *,
                 notifier: sdnotify.Notifier | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._path = config_path
        self._config = cfg
        self._notifier = notifier or sdnotify.Notifier()
        self._clock = clock
        self.metrics = metrics.Metrics()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._wake = asyncio.Event()  # a reload or a finished job: the scheduler looks again at once
        self._reload_requested = False
        self._configured: dict[str, models.Account] = {a.ig_user_id: a for a in cfg.accounts}
        self._accounts: dict[str, models.Account] = dict(self._configured)  # with the effective token
        self._states: dict[Key, scheduler.JobState] = {}
        self._in_flight: set[Key] = set()
        self._workers = max(1, cfg.collect.max_concurrent_accounts)
        # Claimed accounts waiting for or in a worker. Bounded: the scheduler never claims more accounts
        # than the workers can start (StyleGuide 9).
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=self._workers)
        self._claimed: set[str] = set()
        self._leases: leases.Leases | None = None
        self._unregistered: set[str] = set()  # accounts to make claimable (new, or the schedule changed)
        self._releasing: dict[str, datetime] = {}  # finished accounts -> next due, released once committed
        self._due_from: dict[str, datetime] = {}  # held accounts -> their row's next_due_at when claimed
        self._release_wake = asyncio.Event()
        self._claims_failing = False  # the last claim failed (database unreachable): logged once
        self._tokens = tokens.TokenStore(cfg.state_dir)
        self._discovered: dict[str, models.Account] = {}  # from [[tokens]], as of the last discovery
        self._discover_now = asyncio.Event()  # SIGHUP: discover again at once
        self._discovered_once = asyncio.Event()  # the first discovery round has run (or failed)
        self._token_table: token_table.TokenTable | None = None
        self._freshness: dict[str, object] = {}
        self._pool: asyncpg.Pool | None = None
        self._health_pool: asyncpg.Pool | None = None
        self._client: graph.GraphClient | None = None
        self._writer: storage_writer.Writer | None = None
        self._collector: collect.Collector | None = None
        self._throttle: ratelimit.Throttle | None = None

    # ------------------------------------------------------------------ life cycle

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        try:
            cfg = self._config
            database = await db.open_database(cfg.database, state_dir=cfg.state_dir)
            async with database:
                # /healthz gets a one-connection pool of its own: through the shared pool a writer and
                # workers holding every connection for longer than the probe's timeout would read as
                # "database down".
                health = await db.open_database(dataclasses.replace(cfg.database, pool_max_size=1),
                                                state_dir=cfg.state_dir)
                async with health:
                    self._pool, self._health_pool = database.pool, health.pool
                    applied = await database.migrate()
                    if applied:
                        log.info("migrations_applied", names=applied)
                    self._states = await status.load_job_states(database.pool)
                    await self._open_tokens(database.pool)
                    self._leases = leases.Leases(database.pool, cfg.cluster, self.metrics,
                                                 started_at=self._clock())
                    await self._leases.start()
                    self._schedule_all(self._clock())
                    try:
                        return await self._run_with(database.pool)
                    finally:
                        await self._release_leases()
        finally:
            self._uninstall_signals(loop)

    async def _run_with(self, pool: asyncpg.Pool) -> int:
        cfg = self._config
        throttle = self._throttle = ratelimit.Throttle(cfg.rate_limit, self.metrics)
        policy = retry.RetryPolicy(cfg.retry, pause_cap_s=cfg.rate_limit.pause_cap_s)
        writer = storage_writer.Writer(pool, buffer_max_rows=max(1, cfg.database.writer_buffer_max_rows),
                                       metrics=self.metrics)
        # The stop event abandons calls waiting on a pause, a backoff or a limiter (graph module docstring).
        async with graph.GraphClient(cfg.graph, throttle, policy, self.metrics, stop=self._stop,
                                     instance_id=self._instance_id()) as client:
            writer.start()
            try:
                self._client, self._writer = client, writer
                self._collector = collect.Collector(cfg, client, writer, pool, self.metrics, stop=self._stop)
                code = await self._serve_http(writer)
            finally:
                self._notifier.status("flushing")
                # Everything fetched is committed before the Graph session and then (in serve) the pool
                # close, even if this task is cancelled meanwhile.
                await _close_writer(writer)
        log.info("daemon_stopped", exit_code=code, rows_unwritten=writer.buffered_rows,
                 rows_written=int(self.metrics.total(self.metrics.rows_written)))
        return code

    async def _serve_http(self, writer: storage_writer.Writer) -> int:
        started: list[httpserver.HttpServer] = []
        try:
            for server in self._http_servers(writer):
                await server.start()
                started.append(server)
            return await self._supervise()
        finally:
            for server in reversed(started):
                await server.stop()

    async def _supervise(self) -> int:
        code = EXIT_OK
        try:
            async with asyncio.TaskGroup() as tg:
                sched = tg.create_task(self._scheduler_loop(), name="scheduler")
                workers = [tg.create_task(self._worker(), name=f"worker-{i}") for i in range(self._workers)]
                background = [
                    tg.create_task(self._notifier.watchdog_loop(), name="watchdog"),
                    tg.create_task(self._token_loop(), name="token-refresh"),
                    tg.create_task(self._gauge_loop(), name="gauges"),
                    tg.create_task(self._discovery_loop(), name="discovery"),
                    tg.create_task(self._renew_loop(), name="lease-renew"),
                    tg.create_task(self._release_loop(), name="lease-release"),
                    tg.create_task(self._maintenance_loop(), name="history-maintenance"),
                ]
                self._notifier.ready(self._status_line())
                log.info("daemon_ready", accounts=len(self._accounts), workers=self._workers,
                         config=str(self._path), instance_id=self._instance_id())
                await self._stop.wait()
                self._notifier.stopping("draining in-flight jobs")
                log.info("daemon_stopping", in_flight=len(self._in_flight),
                         grace_s=self._config.schedule.shutdown_grace_s)
                await _cancel(sched)
                await self._drain(workers)
                for task in background:
                    await _cancel(task)
        except* Exception as group:
            for exc in group.exceptions:
                log.error("fatal_task_failed", error=repr(exc), exc_info=exc)
            code = EXIT_FATAL
        return code

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        """Drop queued jobs that have not started (they stay due), then give the running ones the grace
        period."""
        while not self._queue.empty():
            ig_user_id = self._queue.get_nowait()
            if ig_user_id is not None:
                self._claimed.discard(ig_user_id)
                self._finished(ig_user_id)  # released at once (still due): another instance takes it
        for _ in workers:
            self._queue.put_nowait(None)  # the queue was just emptied and holds one slot per worker
        grace = asyncio.create_task(asyncio.wait(workers, timeout=self._config.schedule.shutdown_grace_s))
        forced = asyncio.create_task(self._force.wait())
        await asyncio.wait([grace, forced], return_when=asyncio.FIRST_COMPLETED)
        await _cancel(forced)
        await _cancel(grace)
        late = [w for w in workers if not w.done()]
        if late:
            log.warning("jobs_cancelled_after_grace", jobs=len(late))
        for task in late:
            await _cancel(task)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)

    @staticmethod
    def _uninstall_signals(loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop.is_set():
            log.warning("stop_forced", signal=name)
            self._force.set()
        else:
            log.info("stop_requested", signal=name)
            self._stop.set()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    # ------------------------------------------------------------------ scheduling

    def _schedule_all(self, now: datetime) -> None:
        self._unregistered.update(self._accounts)

    def _schedule_account(self, ig_user_id: str, now: datetime) -> None:
        """Make the account claimable (by this instance or another) from its stored state."""
        self._unregistered.add(ig_user_id)

    def _account_states(self, ig_user_id: str) -> dict[models.Job, scheduler.JobState]:
        return {job: state for job in models.Job if (state := self._states.get((ig_user_id, job)))}

    def _account_next_due(self, ig_user_id: str, at: datetime) -> datetime:
        return leases.next_due(ig_user_id, self._account_states(ig_user_id), at, self._config.schedule)

    def _due_jobs(self, ig_user_id: str, now: datetime) -> list[models.Job]:
        return leases.due_jobs(ig_user_id, self._account_states(ig_user_id),
                               self._due_from.get(ig_user_id, now), now, schedule=self._config.schedule,
                               order=passes.PASS_JOBS)

    async def _claim_due(self, now: datetime) -> int:
        """Register new accounts, then claim due ones while the workers have room; a database error is
        logged and retried on the next tick (the claimed work goes on)."""
        lease = self._leases
        if lease is None:
            return 0
        try:
            if self._unregistered:
                batch = {i: self._account_next_due(i, now) for i in self._unregistered if i in self._accounts}
                await lease.register(batch, now)
                self._unregistered.difference_update(batch)
                self._unregistered.intersection_update(self._accounts)
            room = self._workers - len(self._claimed)
            claims = await lease.claim([int(i) for i in self._accounts], now, room)
        except exceptions.StorageError as exc:
            if not self._claims_failing:
                log.warning("lease_claim_failed", error=str(exc), then="retried every tick")
            self._claims_failing = True
            self._rerun_held(now)
            return 0
        if self._claims_failing:
            log.info("lease_claims_resumed")
            self._claims_failing = False
        for claim in claims:
            self._merge_states(claim)
            self._due_from[claim.ig_user_id] = claim.due_from
            if claim.ig_user_id not in self._accounts or not self._due_jobs(claim.ig_user_id, now):
                self._finished(claim.ig_user_id)  # nothing due after all (a stale next_due_at): give it back
                continue
            self._claimed.add(claim.ig_user_id)
            self._queue.put_nowait(claim.ig_user_id)
        return len(claims)

    def _merge_states(self, claim: leases.Claim) -> None:
        """The committed state of a claimed account replaces ours unless ours is newer (our own run whose
        state is not committed yet: only after a lost lease)."""
        for job, state in claim.states.items():
            key = (claim.ig_user_id, job)
            known = self._states.get(key)
            if known is None or _attempted(state) >= _attempted(known):
                self._states[key] = state

    def _rerun_held(self, now: datetime) -> None:
        """While no claim can be made (the database is unreachable), accounts this instance still holds,
        finished but not yet released (the release waits for the writer), go on: their jobs due again (a
        retry after a failure) run as if claimed anew, for as long as the lease is ours."""
        lease = self._leases
        if lease is None:
            return
        for ig_user_id, due in list(self._releasing.items()):
            if len(self._claimed) >= self._workers:
                break
            if due <= now and ig_user_id in self._accounts and lease.holds(ig_user_id):
                del self._releasing[ig_user_id]
                self._due_from[ig_user_id] = due
                self._claimed.add(ig_user_id)
                self._queue.put_nowait(ig_user_id)

    def _finished(self, ig_user_id: str) -> None:
        """The account's jobs are done (or will not start here): release it once its states are committed."""
        now = self._clock()
        due_from = self._due_from.pop(ig_user_id, now)
        if self._leases is not None and self._leases.holds(ig_user_id):
            self._releasing[ig_user_id] = self._account_next_due(ig_user_id, due_from)
            self._release_wake.set()

    async def _scheduler_loop(self) -> None:
        while not self._stop.is_set():
            if self._reload_requested:
                self._reload_requested = False
                await self._reload()
            await self._claim_due(self._clock())
            self.metrics.queue_depth.labels(queue="jobs").set(self._queue.qsize())
            self._wake.clear()
            try:
                async with asyncio.timeout(self._config.schedule.tick_s):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _worker(self) -> None:
        while True:
            ig_user_id = await self._queue.get()
            if ig_user_id is None:
                return
            try:
                await self._run_account(ig_user_id)
            finally:
                self._claimed.discard(ig_user_id)
                self._wake.set()  # room for another claim

    async def _run_account(self, ig_user_id: str) -> None:
        """Run the claimed account's due jobs in pass order while the lease holds, then hand it back."""
        lease = self._leases
        try:
            for job in self._due_jobs(ig_user_id, self._clock()):
                if self._stop.is_set() or lease is None or not lease.holds(ig_user_id):
                    break
                key = (ig_user_id, job)
                self._in_flight.add(key)
                try:
                    await self._run(key)
                finally:
                    self._in_flight.discard(key)
        finally:
            self._finished(ig_user_id)

    async def _run(self, key: Key) -> None:
        ig_user_id, job = key
        account = self._accounts.get(ig_user_id)
        collector = self._collector
        if account is None or collector is None:
            return  # removed by a reload while queued
        started = self._clock()
        state = self._states.get(key) or scheduler.JobState()
        schedule = self._config.schedule
        tiers = schedule.media_tiers

        def media_due(posted_at: datetime | None, refreshed_at: datetime | None, now: datetime) -> bool:
            return scheduler.media_due(posted_at, refreshed_at, now, tiers)

        days = scheduler.account_days(state.last_success_at, started, schedule,
                                      self._config.collect.account_backfill_days)
        succeeded: bool
        with structlog.contextvars.bound_contextvars(ig_user_id=ig_user_id, job=job.value):
            try:
                outcome = await collector.run_job(account, job, started, media_due=media_due,
                                                  account_days=days)
            except exceptions.ShutdownRequested:
                return  # stopped part-way: no state recorded, so it is due again after the restart
            except Exception as exc:  # one account's bug must not take the daemon down
                log.exception("job_crashed", error=type(exc).__name__)
                self.metrics.jobs.labels(job.value, "crashed").inc()
                succeeded = False
            else:
                succeeded = outcome.ok
                if outcome.ok and job is models.Job.PROFILE:
                    self.metrics.account_status.labels(ig_user_id=ig_user_id).set(1)
                elif outcome.account_level:
                    self.metrics.account_status.labels(ig_user_id=ig_user_id).set(0)
        self._states[key] = state.after(started, succeeded=succeeded)

    # ------------------------------------------------------------------ reload

    async def _reload(self) -> None:
        self._notifier.reloading()
        try:
            new = await asyncio.to_thread(config.load, self._path)
        except exceptions.ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), kept="the previous config")
            self._notifier.ready(self._status_line())
            return
        old = self._config
        changed_restart_only = [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]
        if changed_restart_only:
            log.warning("config_reload_needs_restart", sections=changed_restart_only)
        # Keep what is only read at start, take the rest.
        kept = {name: getattr(old, name) for name in RESTART_ONLY}
        new = dataclasses.replace(new, **kept)
        now = self._clock()
        self._config = new
        # Discovered accounts stay until the discovery this reload asks for says otherwise.
        after, added, removed, tokens_changed = await self._set_accounts(
            discovery.merge(new.accounts, self._discovered.values()))
        self._discover_now.set()
        if old.schedule != new.schedule:
            self._schedule_all(now)  # re-derive every due time under the new schedule
        if old.collect != new.collect and self._client and self._writer and self._pool:
            # In-flight jobs finish with the collector they started with.
            self._collector = collect.Collector(new, self._client, self._writer, self._pool, self.metrics,
                                                stop=self._stop)
        log.info("config_reloaded", accounts=len(after), added=len(added), removed=len(removed),
                 tokens_changed=len(tokens_changed))
        self._notifier.ready(self._status_line())

    async def _reload_states(self, ig_user_ids: list[str]) -> None:
        """Re-read the stored state of accounts (re-)added by a reload: one collected before (this run,
        another run, `ig-collector once`) resumes its schedule instead of being treated as new. The newer
        of the stored and the in-memory state wins (the writer may not have committed the latest yet)."""
        pool = self._pool
        if pool is None:
            return
        try:
            async with asyncio.timeout(RELOAD_STATE_TIMEOUT_S):
                stored = await status.load_job_states(pool, ig_user_ids)
        except (exceptions.StorageError, TimeoutError) as exc:
            log.warning("reload_state_unreadable", accounts=len(ig_user_ids), error=str(exc) or "timeout",
                        using="the state in memory")
            return
        for key, state in stored.items():
            known = self._states.get(key)
            if known is None or _attempted(state) >= _attempted(known):
                self._states[key] = state

    async def _set_accounts(self, accounts: tuple[models.Account, ...]) -> tuple[
            dict[str, models.Account], list[str], list[str], list[str]]:
        """Collect `accounts` from now on (a reload, a discovery): removed ones are no longer scheduled, added
        ones are due at once unless collected before. Returns (accounts by id, added, removed, tokens
        changed)."""
        before = self._configured
        after = {a.ig_user_id: a for a in accounts}
        added = [i for i in after if i not in before]
        removed = [i for i in before if i not in after]
        tokens_changed = [i for i in after if i in before and after[i].access_token != before[i].access_token]
        self._configured = after
        self._apply_tokens()
        # Removed accounts are no longer claimed here; their state stays known: an account put back later
        # resumes instead of starting over.
        if added:
            await self._reload_states(added)
        for ig_user_id in added:
            self._schedule_account(ig_user_id, self._clock())  # no state at all: due at once
        return after, added, removed, tokens_changed

    # ------------------------------------------------------------------ discovery ([[tokens]])

    async def _discovery_loop(self) -> None:
        """At start, on SIGHUP and every `[collect] discovery_interval_s`: check the tokens, discover the
        accounts of [[tokens]], and collect exactly those plus the configured ones (discovery.py)."""
        while True:
            self._discover_now.clear()
            client, pool = self._client, self._pool
            if client is not None and pool is not None:
                await self._discover(client, pool)
            self._discovered_once.set()
            try:
                async with asyncio.timeout(self._config.collect.discovery_interval_s):
                    await self._discover_now.wait()
            except TimeoutError:
                pass

    async def _discover(self, client: graph.GraphClient, pool: asyncpg.Pool) -> None:
        cfg = self._config
        try:
            token_tools.report(await token_tools.check_all(client, cfg, self._clock()), self.metrics)
            found = await discovery.run_round(client, pool, cfg, configured=list(cfg.accounts),
                                              now=self._clock(), counters=self.metrics)
        except exceptions.ShutdownRequested:
            return  # stopping: the Graph client abandoned the round's waiting calls
        except exceptions.CollectorError as exc:  # the database is down: keep the accounts known so far
            log.warning("discovery_failed", error=str(exc), kept="the accounts discovered before")
            return
        self._discovered = {a.ig_user_id: a for a in found.accounts}
        _, added, removed, _ = await self._set_accounts(discovery.merge(cfg.accounts, found.accounts))
        if added or removed:
            log.info("discovered_accounts_changed", added=len(added), removed=len(removed),
                     accounts=len(self._configured))

    def _apply_tokens(self) -> None:
        self._accounts = {i: self._tokens.effective(a) for i, a in self._configured.items()}

    # ------------------------------------------------------------------ tokens

    async def _open_tokens(self, pool: asyncpg.Pool) -> None:
        """The token records live in PostgreSQL (shared by every instance); a token file of an earlier
        version is moved in first."""
        table = token_table.TokenTable(pool, self._tokens)
        await table.move_file_in()
        await table.load()
        self._token_table = table
        self._apply_tokens()

    async def _token_loop(self) -> None:
        await self._discovered_once.wait()  # so discovered accounts' refreshed tokens are not forgotten
        while True:
            client, table = self._client, self._token_table
            if client is not None and table is not None:
                try:
                    await table.load()  # tokens another instance refreshed
                    self._apply_tokens()
                    await tokens.refresh_round(
                        self._tokens, list(self._configured.values()), self._clock(),
                        schedule=self._config.schedule, call=_refresh_call(client), counters=self.metrics,
                        guard=table.guard)
                except exceptions.ShutdownRequested:
                    return  # stopping: the refresh is due again after the restart
                except exceptions.StorageError as exc:
                    log.warning("token_round_failed", error=str(exc))
                self._apply_tokens()
                self._tokens.forget_except(self._configured)
            await asyncio.sleep(self._token_check_interval_s())

    def _token_check_interval_s(self) -> float:
        schedule = self._config.schedule
        after_s = schedule.token_refresh_after_days * 86400.0
        return max(schedule.tick_s, min(TOKEN_CHECK_MAX_S, after_s / 10))

    # ------------------------------------------------------------------ maintenance

    async def _maintenance_loop(self) -> None:
        """Daily: history partitions ahead and the [retention] policy (collector.storage.retention). A failure
        is logged and retried an hour later; it never stops the daemon (a missing month's rows go to the
        default partition meanwhile, and are moved into their partition when it is created)."""
        while True:
            delay_s = MAINTENANCE_INTERVAL_S
            if self._pool is not None:
                try:
                    await retention.maintain(self._pool, self._config.retention, self._clock())
                except exceptions.StorageError as exc:
                    log.warning("history_maintenance_failed", error=str(exc), retry_in_s=MAINTENANCE_RETRY_S)
                    delay_s = MAINTENANCE_RETRY_S
            await asyncio.sleep(delay_s)

    # ------------------------------------------------------------------ observability

    async def _gauge_loop(self) -> None:
        refreshed = asyncio.get_running_loop().time()
        while True:
            if asyncio.get_running_loop().time() - refreshed >= STATE_REFRESH_S:
                await self._reload_states(list(self._accounts))  # newer-wins merge, errors logged
                refreshed = asyncio.get_running_loop().time()
            self._update_gauges(self._clock())
            self._notifier.status(self._status_line())
            await asyncio.sleep(GAUGE_INTERVAL_S)

    def _update_gauges(self, now: datetime) -> None:
        schedule = self._config.schedule
        ages: dict[str, float | None] = {}
        stale: list[str] = []
        for ig_user_id in self._accounts:
            worst: float | None = 0.0
            for job in models.Job:
                state = self._states.get((ig_user_id, job))
                if state is None or state.last_success_at is None:
                    worst = None
                    continue
                age_s = (now - state.last_success_at).total_seconds()
                self.metrics.last_success_age.labels(ig_user_id=ig_user_id, job=job.value).set(age_s)
                # Stale: two periods without a success (the daily job: two days).
                if age_s > 2 * scheduler.interval_s(job, schedule) and ig_user_id not in stale:
                    stale.append(ig_user_id)
                if worst is not None:
                    worst = max(worst, age_s)
            ages[ig_user_id] = worst
        known = [a for a in ages.values() if a is not None]
        self._freshness = {
            "accounts": len(self._accounts),
            "never_collected": sum(1 for a in ages.values() if a is None),
            "stale": len(stale),
            "stale_examples": stale[:10],
            "oldest_success_age_s": round(max(known), 1) if known else None,
            "jobs_in_flight": len(self._in_flight),
            "accounts_claimed": len(self._claimed),
            "leases_held": len(self._leases.held) if self._leases else 0,
            "instance_id": self._instance_id(),
        }

    def _status_line(self) -> str:
        return (f"{len(self._accounts)} accounts, {len(self._in_flight)} jobs in flight, "
                f"{self._freshness.get('stale', 0)} stale")

    def _http_servers(self, writer: storage_writer.Writer) -> list[httpserver.HttpServer]:
        cfg = self._config
        servers: list[httpserver.HttpServer] = []
        main: httpserver.HttpServer | None = None
        if cfg.http.listen:
            main = httpserver.HttpServer(cfg.http.listen, metrics=self.metrics, health=_Health(self))
            open_paths = ["/healthz"]
            if cfg.webhook is not None and not cfg.webhook.listen:
                open_paths.append(cfg.webhook.path)  # Meta cannot log in: the signature guards it
            web_app.WebUI(_WebSource(self)).attach(main, open_paths=tuple(open_paths))
            servers.append(main)
        if cfg.webhook is not None:
            receiver = webhook.WebhookReceiver(cfg.webhook, accounts=lambda: self._accounts, writer=writer,
                                               metrics=self.metrics)
            if cfg.webhook.listen:
                hooks = httpserver.HttpServer(cfg.webhook.listen)
                hooks.add_routes(receiver.routes())
                servers.append(hooks)
            elif main is not None:
                main.add_routes(receiver.routes())
            else:
                log.warning("webhook_not_served", reason="neither [webhook] listen nor [http] listen is set")
        return servers

    # ------------------------------------------------------------------ for tests and status

    @property
    def accounts(self) -> Mapping[str, models.Account]:
        return self._accounts

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._pool

    @property
    def health_pool(self) -> asyncpg.Pool | None:
        return self._health_pool

    @property
    def freshness(self) -> Mapping[str, object]:
        return self._freshness

    # ------------------------------------------------------------------ leases

    def _instance_id(self) -> str:
        return self._leases.instance_id if self._leases else leases.instance_id(self._config.cluster)

    async def _renew_loop(self) -> None:
        lease = self._leases
        if lease is None:
            return
        while True:
            try:
                async with asyncio.timeout(lease.renew_interval_s):
                    await lease.renew()
            except (exceptions.StorageError, TimeoutError) as exc:
                log.warning("lease_renew_failed", error=str(exc) or "timeout", held=len(lease.held))
            await asyncio.sleep(lease.renew_interval_s)

    async def _release_loop(self) -> None:
        """Release finished accounts in batches, each once the writer has committed their job states (a
        claimer reads them: releasing earlier would let it run the same jobs again)."""
        lease, writer = self._leases, self._writer
        if lease is None or writer is None:
            return
        while True:
            await self._release_wake.wait()
            self._release_wake.clear()
            batch = dict(self._releasing)  # finished before the flush: their job states are in it
            try:
                await writer.flush()
                # Still waiting (one taken up again meanwhile by _rerun_held is not released).
                batch = {uid: due for uid, due in batch.items() if self._releasing.get(uid) == due}
                await lease.release(batch)
            except exceptions.StorageError as exc:
                log.warning("lease_release_failed", accounts=len(self._releasing), error=str(exc))
                await asyncio.sleep(lease.renew_interval_s)
                self._release_wake.set()
                continue
            for ig_user_id, due in batch.items():
                if self._releasing.get(ig_user_id) == due:
                    del self._releasing[ig_user_id]
            self._wake.set()  # released accounts may be claimable again at once

    async def _release_leases(self) -> None:
        """On the way out, after the writer's final flush: give back every lease at once with the next due
        time of the committed states (unwritten rows: due now), so other instances take over at once."""
        lease = self._leases
        if lease is None:
            return
        now = self._clock()
        clean = self._writer is None or self._writer.buffered_rows == 0
        due = {uid: self._account_next_due(uid, self._due_from.get(uid, now)) if clean else now
               for uid in lease.held}
        try:
            async with asyncio.timeout(RELOAD_STATE_TIMEOUT_S):
                await lease.release_all(due)
        except (exceptions.StorageError, TimeoutError) as exc:
            log.warning("lease_release_failed", accounts=len(due), error=str(exc) or "timeout",
                        then=f"they expire after lease_s ({lease.lease_s:g} s)")


class _Health:
    """What /healthz reports, from the daemon's own state (cheap) plus a live `SELECT 1`."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def database_ok(self) -> bool:
        pool = self._daemon.health_pool
        return pool is not None and await httpserver.ping_database(pool)

    def freshness(self) -> Mapping[str, object]:
        return self._daemon.freshness


class _WebSource:
    """What the web UI reads from the daemon (`collector.web.pages.Source`): all in memory, cheap."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    @property
    def config(self) -> settings.Config:
        return self._daemon._config

    @property
    def accounts(self) -> Sequence[models.Account]:
        return list(self._daemon._configured.values())

    @property
    def pool(self) -> asyncpg.Pool | None:
        return self._daemon._pool

    @property
    def metrics(self) -> metrics.Metrics:
        return self._daemon.metrics

    def usage(self, scope: str) -> Mapping[str, float]:
        throttle = self._daemon._throttle
        return {} if throttle is None or scope not in ("app", "account") else throttle.usage(
            "app" if scope == "app" else "account")

    def paused(self, scope: str) -> int:
        throttle = self._daemon._throttle
        return 0 if throttle is None or scope not in ("app", "account") else throttle.paused_count(
            "app" if scope == "app" else "account")

    def held(self, scope: str) -> int:
        throttle = self._daemon._throttle
        return 0 if throttle is None or scope not in ("app", "account") else throttle.held_count(
            "app" if scope == "app" else "account")

    def token_expiry_days(self, account: models.Account, now: datetime) -> float | None:
        return self._daemon._tokens.expiry_days(account, now)

    def token_error(self, ig_user_id: str) -> str | None:
        record = self._daemon._tokens.record(ig_user_id)
        return None if record is None else record.last_error


def _refresh_call(client: graph.GraphClient) -> tokens.RefreshCall:
    async def call(account: models.Account) -> Mapping[str, object]:
        # reference §7.3: unversioned, on graph.instagram.com, the token in access_token.
        body: dict[str, Any] = await client.get_with_token(
            "instagram", account.access_token, "refresh_access_token", {"grant_type": "ig_refresh_token"},
            versioned=False)
        return body
    return call


def _attempted(state: scheduler.JobState) -> datetime:
    return state.last_attempt_at or state.last_success_at or datetime.min.replace(tzinfo=UTC)


async def _close_writer(writer: storage_writer.Writer) -> None:
    """Close the writer (its final flush) and wait for it even when this task is cancelled meanwhile: a
    cancelled wait would let the pool close under the flush. The cancellation is re-raised afterwards."""
    closing = asyncio.ensure_future(writer.close())
    cancelled = False
    while True:
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            if closing.cancelled():
                raise
            cancelled = True
            continue
        break
    if cancelled:
        raise asyncio.CancelledError


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # we ourselves are being cancelled

