"""`ig-collector status`: each configured (or discovered) account's last success per job, status, and next
due time.

Read from the database (what the daemon committed) and computed with the daemon's own `scheduler`
functions, so the next due time shown is the one the daemon would choose. Token expiry comes from the
token table when the caller may read it (the collector's role). Below the table: the daemon instances
that share the database, which accounts each holds now, and each one's lease counters (collector.leases).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import asyncpg

from collector import discovery, exceptions, leases, models, scheduler, settings, tokens
from collector.storage import db, discovered, migrations, queries, token_table

Key = tuple[str, models.Job]

_JOB_COLUMNS = {
    models.Job.PROFILE: "PROFILE",
    models.Job.MEDIA: "MEDIA",
    models.Job.STORIES: "STORIES",
    models.Job.ACCOUNT_INSIGHTS: "ACCT_INSIGHTS",
    models.Job.DEMOGRAPHICS: "DEMOGRAPHICS",
}


async def load_job_states(pool: asyncpg.Pool,
                          ig_user_ids: Sequence[str] | None = None) -> dict[Key, scheduler.JobState]:
    """The rows of `collector_job_state` (all, or those of `ig_user_ids`) as scheduler state; unknown job
    names are skipped. Raises StorageError."""
    jobs = {job.value: job for job in models.Job}
    states: dict[Key, scheduler.JobState] = {}
    ids = None if ig_user_ids is None else [int(i) for i in ig_user_ids]
    for row in await queries.job_states(pool, ids):
        job = jobs.get(row["job"])
        if job is not None:
            states[(str(row["ig_user_id"]), job)] = scheduler.JobState(
                row["last_success_at"], row["last_attempt_at"], row["consecutive_failures"])
    return states


async def _load_accounts(pool: asyncpg.Pool) -> dict[str, dict[str, object]]:
    return {row["ig_user_id"]: dict(row.items()) for row in await queries.account_statuses(pool)}


async def main(config: settings.Config, *, out: TextIO | None = None) -> int:
    """Print the table; exit 0 (3 when the database cannot be read or is not migrated: raised as
    StorageError)."""
    database = await db.open_database(config.database, state_dir=config.state_dir)
    store: tokens.TokenStore | None = tokens.TokenStore(config.state_dir)
    async with database:
        async with database.pool.acquire() as conn:
            await migrations.require_applied(conn)
        states = await load_job_states(database.pool)
        accounts = await _load_accounts(database.pool)
        # Accounts found through [[tokens]] are shown too, as the last discovery left them.
        found = discovery.remembered(await discovered.known(database.pool), config.tokens)
        held = [dict(r.items()) for r in await leases.holders(database.pool)]
        instances = [dict(r.items()) for r in await leases.instances(database.pool)]
        try:
            assert store is not None
            await token_table.TokenTable(database.pool, store).load()
        except exceptions.StorageError:
            store = None  # a role that may not read the tokens: their expiry shows as "?"
    config = dataclasses.replace(config, accounts=discovery.merge(config.accounts, found))
    now = datetime.now(UTC)
    lines = render(config, states, accounts, store, now)
    lines += render_cluster(held, instances, now)
    (out or sys.stdout).write("\n".join(lines) + "\n")
    return 0


def render(config: settings.Config, states: Mapping[Key, scheduler.JobState],
           accounts: Mapping[str, Mapping[str, object]], store: tokens.TokenStore | None,
           now: datetime) -> list[str]:
    """The table as lines (pure: everything it shows is passed in)."""
    header = ["IG_USER_ID", "USERNAME", "STATUS", *_JOB_COLUMNS.values(), "NEXT DUE", "TOKEN"]
    table: list[list[str]] = [header]
    for account in config.accounts:
        row = accounts.get(account.ig_user_id, {})
        cells = [account.ig_user_id, str(row.get("username") or "-"), str(row.get("status") or "new")]
        next_key: tuple[datetime, models.Job] | None = None
        for job in _JOB_COLUMNS:
            state = states.get((account.ig_user_id, job))
            cells.append(_last_success(state, now))
            due = scheduler.next_due(account.ig_user_id, job, state, now, config.schedule)
            if next_key is None or due < next_key[0]:
                next_key = (due, job)
        assert next_key is not None  # there is always a job
        cells.append(f"{_until(next_key[0], now)} ({next_key[1].value})")
        cells.append(_token(account, store, now))
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.append("")
    lines.append("Job columns: age of the last success; '!N' after it: the last N attempts failed.")
    details = [(a.ig_user_id, accounts[a.ig_user_id].get("status_detail")) for a in config.accounts
               if a.ig_user_id in accounts and accounts[a.ig_user_id].get("status") not in (None, "ok")]
    lines.extend(f"{ig_user_id}: {detail}" for ig_user_id, detail in details if detail)
    return lines


def render_cluster(held: Sequence[Mapping[str, Any]], instances: Sequence[Mapping[str, Any]],
                   now: datetime) -> list[str]:
    """Which instance holds which accounts, and each instance's lease counters (pure)."""
    if not instances:
        return []
    by_holder: dict[str, list[str]] = {}
    for row in held:
        if not row["expired"]:
            by_holder.setdefault(row["holder"], []).append(row["ig_user_id"])
    expired = [row for row in held if row["expired"]]
    header = ["INSTANCE", "STATE", "STARTED", "HEARTBEAT", "HELD", "CLAIMS", "TAKEOVERS", "RENEWALS",
              "RELEASES", "LOST"]
    table = [header]
    for row in instances:
        stale = (now - row["heartbeat_at"]).total_seconds() > row["lease_s"]
        state = "stopped" if row["stopped_at"] else "silent" if stale else "running"
        holding = len(by_holder.get(row["instance_id"], []))
        table.append([row["instance_id"], state, f"{_age(now - row['started_at'])} ago",
                      f"{_age(now - row['heartbeat_at'])} ago", str(holding),
                      *(str(row[k]) for k in ("claims", "takeovers", "renewals", "releases", "lost"))])
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["", "Instances sharing this database (counters since each one started):"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    for holder, ids in sorted(by_holder.items()):
        more = f", … ({len(ids)} in all)" if len(ids) > HELD_SHOWN else ""
        shown = ", ".join(sorted(ids)[:HELD_SHOWN]) + more
        lines.append(f"{holder} holds: {shown}")
    if expired:
        lines.append(f"Expired leases, to be taken over: {len(expired)} "
                     f"({', '.join(sorted(r['ig_user_id'] for r in expired)[:HELD_SHOWN])})")
    return lines


HELD_SHOWN = 10


def _last_success(state: scheduler.JobState | None, now: datetime) -> str:
    if state is None:
        return "never"
    text = _age(now - state.last_success_at) if state.last_success_at else "never"
    return f"{text} !{state.consecutive_failures}" if state.failing else text


def _age(delta: timedelta) -> str:
    return _duration(max(0.0, delta.total_seconds()))


def _until(due: datetime, now: datetime) -> str:
    seconds = (due - now).total_seconds()
    return "now" if seconds <= 0 else f"in {_duration(seconds)}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}" if unit != "d" else f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _token(account: models.Account, store: tokens.TokenStore | None, now: datetime) -> str:
    if account.login != "instagram":
        return "-"
    if store is None:
        return "?"
    days = store.expiry_days(account, now)
    return "unknown" if days is None else f"{days:.0f}d left"

