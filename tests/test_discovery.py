"""Accounts discovered from [[tokens]] against the simulator over HTTP into a real PostgreSQL: one Facebook
user token reaching 40 accounts through paged /me/accounts, Instagram Login tokens, unlinking and
relinking a Page, a failing token that unlinks nothing, and the daemon discovering at start, on SIGHUP and
on its interval. Tokens never appear in what the collector prints or logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import structlog

from collector import config, daemon, discovery, graph, metrics, models, passes, sdnotify, status
from collector.simulator import accounts_api
from collector.simulator import world as world_mod
from tests import expected_values, fixtures_sim
from tests.test_daemon import until

BACKFILL_DAYS = 3
FAST = {
    "rate_limit": {"account_calls_per_s": 0, "app_calls_per_s": 0},
    "retry": {"base_delay_s": 0.01, "max_delay_s": 0.05},
    "collect": {"account_backfill_days": BACKFILL_DAYS, "media_max_age_days": 90},
}
NO_BAD_TOKENS = {"invalid_token_fraction": 0.0}


def write_config(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str,
                 tokens: list[tuple[str, str, str]], *, accounts: list[world_mod.SimAccount] | None = None,
                 sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """A config with `accounts` as [[accounts]] (none by default) and `tokens` as [[tokens]] tables of
    (login, key, value)."""
    merged = {name: dict(values) for name, values in FAST.items()}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    path = fixtures_sim.write_config(tmp_path, sim, dsn, accounts=accounts or [], sections=merged)
    lines = []
    for login, key, value in tokens:
        lines += ["", "[[tokens]]", f'login = "{login}"', f'{key} = "{value}"']
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


def facebook_accounts(sim: fixtures_sim.RunningSimulator, n: int) -> list[world_mod.SimAccount]:
    chosen = [a for a in sim.world.accounts() if a.login == "facebook"][:n]
    assert len(chosen) == n
    return chosen


FacebookSetup = tuple[list[world_mod.SimAccount], accounts_api.FacebookUser, str, Path]


def facebook_user(tmp_path: Path, sim: fixtures_sim.RunningSimulator, dsn: str,
                  monkeypatch: pytest.MonkeyPatch, *, accounts: int, without: int) -> FacebookSetup:
    """A Facebook user whose Pages link the first `accounts` Facebook Login accounts (plus `without` Pages
    without one), and a config whose only [[tokens]] entry is that user's token in $FB_TOKEN."""
    reached = facebook_accounts(sim, accounts)
    user = sim.simulator.accounts.add_user([a.ig_user_id for a in reached], pages_without_account=without)
    token = sim.simulator.accounts.user_token(user)
    monkeypatch.setenv("FB_TOKEN", token)
    path = write_config(tmp_path, sim, dsn, [("facebook", "access_token_env", "FB_TOKEN")])
    return reached, user, token, path


async def run_pass(path: Path, pool: asyncpg.Pool,
                   counters: metrics.Metrics | None = None) -> passes.PassSummary:
    return await passes.run_pass(config.load(path), pool, stop=asyncio.Event(),
                                 metrics=counters or metrics.Metrics())


async def statuses(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT ig_user_id, status FROM ig_account")
    return {str(r["ig_user_id"]): r["status"] for r in rows}


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs:
        yield logs


def assert_no_token(text: str, *tokens: str) -> None:
    for token in tokens:
        assert token not in text


async def test_one_facebook_token_collects_the_40_accounts_of_its_pages(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim = await start_simulator(accounts=90, media_per_account=3, seed=11, world_knobs=NO_BAD_TOKENS)
    reached, _, token, path = facebook_user(tmp_path, sim, db_dsn, monkeypatch, accounts=40, without=7)
    counters = metrics.Metrics()
    started_s = sim.world.clock()
    with captured_logs() as logs:
        summary = await run_pass(path, pool, counters)
    assert (summary.accounts_total, summary.accounts_ok, summary.accounts_failed) == (40, 40, {})
    # 47 Pages at Meta's default 25 a page: the walk followed paging.next to the end.
    assert counters.total(counters.graph_calls, endpoint="discovery") == 2
    stored = {str(r["ig_user_id"]): r for r in await pool.fetch("SELECT * FROM ig_account")}
    assert set(stored) == {a.ig_user_id for a in reached}
    for account in reached:
        row = stored[account.ig_user_id]
        assert (row["status"], row["username"], row["login"], row["followers_count"], row["media_count"]) == (
            "ok", account.username, "facebook", account.followers_count, account.media_count)
    await expected_values.assert_stored_exactly(pool, sim.world, reached, started_s=started_s,
                                                now=datetime.now(UTC), backfill_days=BACKFILL_DAYS)
    [ok] = [e for e in logs if e["event"] == "discovery_token_ok"]
    assert (ok["token"], ok["accounts"], ok["pages_without_account"]) == (
        "[[tokens]] #1 (facebook, access_token_env=FB_TOKEN)", 40, 7)
    assert_no_token(repr(logs) + repr(summary.as_dict()), token)


async def test_three_instagram_login_tokens_collect_their_three_accounts(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim = await start_simulator(accounts=12, media_per_account=4, seed=5, world_knobs=NO_BAD_TOKENS)
    mine = [a for a in sim.world.accounts() if a.login == "instagram"][:3]
    monkeypatch.setenv("IG_TOKEN_2", mine[1].access_token)
    (tmp_path / "ig3.token").write_text(mine[2].access_token + "\n")
    tokens = [("instagram", "access_token", mine[0].access_token),
              ("instagram", "access_token_env", "IG_TOKEN_2"),
              ("instagram", "access_token_file", "ig3.token"),
              ("instagram", "access_token_env", "IG_TOKEN_2")]  # the same account twice: collected once
    path = write_config(tmp_path, sim, db_dsn, tokens)
    started_s = sim.world.clock()
    summary = await run_pass(path, pool)
    assert (summary.accounts_total, summary.accounts_ok) == (3, 3)
    assert await statuses(pool) == {a.ig_user_id: "ok" for a in mine}
    await expected_values.assert_stored_exactly(pool, sim.world, mine, started_s=started_s,
                                                now=datetime.now(UTC), backfill_days=BACKFILL_DAYS)


async def test_configured_account_wins_over_the_discovered_one(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str) -> None:
    sim = await start_simulator(accounts=12, media_per_account=2, seed=5, world_knobs=NO_BAD_TOKENS)
    reached = facebook_accounts(sim, 3)
    user = sim.simulator.accounts.add_user([a.ig_user_id for a in reached])
    token = sim.simulator.accounts.user_token(user)
    path = write_config(tmp_path, sim, db_dsn, [("facebook", "access_token", token)], accounts=reached[:1])
    cfg = config.load(path)
    async with graph.client_for(cfg, metrics.Metrics()) as client:
        result = await discovery.discover(client, cfg.tokens, cfg.accounts)
    assert result.configured_wins == [reached[0].ig_user_id]
    merged = discovery.merge(cfg.accounts, [f.account for f in result.accounts])
    assert [a.ig_user_id for a in merged] == [a.ig_user_id for a in reached]
    assert merged[0].access_token == models.Secret(reached[0].access_token)  # the configured token
    assert merged[1].access_token == models.Secret(token)
    page = sim.simulator.accounts.page_of(reached[1].ig_user_id)
    assert merged[1].source.endswith(f"via Page {page.page_id}")


async def test_unlinking_a_page_marks_its_account_unlinked_and_relinking_restores_it(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str, pool: asyncpg.Pool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sim = await start_simulator(accounts=12, media_per_account=3, seed=9, world_knobs=NO_BAD_TOKENS)
    reached, user, token, path = facebook_user(tmp_path, sim, db_dsn, monkeypatch, accounts=4, without=1)
    ids = {a.ig_user_id for a in reached}
    gone = reached[1].ig_user_id
    page = sim.simulator.accounts.page_of(gone)

    assert (await run_pass(path, pool)).accounts_total == 4
    media_of = "SELECT count(*) FROM ig_media WHERE ig_user_id = $1"
    media_before = await pool.fetchval(media_of, int(gone))
    assert media_before > 0
    async with aiohttp.ClientSession() as http, \
            http.post(f"{sim.base_url}/__sim/pages/{page.page_id}/unlink") as resp:
        assert resp.status == 200

    with captured_logs() as logs:
        summary = await run_pass(path, pool)
    assert summary.accounts_total == 3 and gone not in summary.accounts_failed
    assert await statuses(pool) == {i: "unlinked" if i == gone else "ok" for i in ids}
    assert await pool.fetchval(media_of, int(gone)) == media_before  # its data stays
    assert [e["accounts"] for e in logs if e["event"] == "accounts_unlinked"] == [[gone]]
    out = io.StringIO()
    await status.main(config.load(path), out=out)
    lines = out.getvalue().splitlines()
    rows = {line.split()[0]: line.split()[2] for line in lines[1:] if line.split(" ", 1)[0].isdigit()}
    assert rows == {i: "unlinked" if i == gone else "ok" for i in ids}
    assert token not in out.getvalue()

    # A token whose discovery fails unlinks nothing: its accounts are kept (and collected) as last known.
    user.token_error = 460
    counters = metrics.Metrics()
    with captured_logs() as logs:
        summary = await run_pass(path, pool, counters)
    assert summary.accounts_total == 3
    assert set(summary.accounts_failed) == ids - {gone}  # collected with the bad token: token_invalid
    assert (await statuses(pool))[gone] == "unlinked"
    assert "unlinked" not in {s for i, s in (await statuses(pool)).items() if i != gone}
    [failed] = [e for e in logs if e["event"] == "discovery_token_failed"]
    assert failed["token"] == "[[tokens]] #1 (facebook, access_token_env=FB_TOKEN)"
    assert "code=190" in failed["error"]
    assert 'ig_collector_token_problem{problem="discovery_failed",token="#1"} 1.0' in (
        counters.exposition().decode())
    assert_no_token(repr(logs), token)

    user.token_error = None
    sim.simulator.accounts.set_linked(page.page_id, True)
    with captured_logs() as logs:
        summary = await run_pass(path, pool)
    assert (summary.accounts_total, summary.accounts_ok) == (4, 4)
    assert await statuses(pool) == dict.fromkeys(ids, "ok")
    assert [e["accounts"] for e in logs if e["event"] == "accounts_relinked"] == [[gone]]
    unlinked = "SELECT count(*) FROM collector_discovered_account WHERE unlinked_at IS NOT NULL"
    assert await pool.fetchval(unlinked) == 0


async def test_a_token_removed_from_the_config_unlinks_what_only_it_reached(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await start_simulator(accounts=12, media_per_account=2, seed=9, world_knobs=NO_BAD_TOKENS)
    fb = facebook_accounts(sim, 3)
    directory = sim.simulator.accounts
    first = directory.user_token(directory.add_user([a.ig_user_id for a in fb[:2]]))
    second = directory.user_token(directory.add_user([a.ig_user_id for a in fb[1:]]))
    both = [("facebook", "access_token", first), ("facebook", "access_token", second)]
    assert (await run_pass(write_config(tmp_path, sim, db_dsn, both), pool)).accounts_total == 3
    only_second = write_config(tmp_path, sim, db_dsn, both[1:])
    assert (await run_pass(only_second, pool)).accounts_total == 2
    assert await statuses(pool) == {fb[0].ig_user_id: "unlinked", fb[1].ig_user_id: "ok",
                                    fb[2].ig_user_id: "ok"}


# -- the daemon ---------------------------------------------------------------------------------------------


async def test_daemon_discovers_at_start_on_sighup_and_on_its_interval(
        tmp_path: Path, start_simulator: fixtures_sim.StartSimulator, db_dsn: str,
        pool: asyncpg.Pool) -> None:
    sim = await start_simulator(accounts=12, media_per_account=2, seed=9, world_knobs=NO_BAD_TOKENS)
    directory = sim.simulator.accounts
    reached = facebook_accounts(sim, 3)
    user = directory.add_user([a.ig_user_id for a in reached])
    token = directory.user_token(user)
    sections = {"collect": {"discovery_interval_s": 3600.0, "max_concurrent_accounts": 2},
                "schedule": {"tick_s": 0.05}}
    path = write_config(tmp_path, sim, db_dsn, [("facebook", "access_token", token)], sections=sections)
    service = daemon.Daemon(path, config.load(path), notifier=sdnotify.Notifier({}))
    task = asyncio.create_task(service.serve())
    ids = {a.ig_user_id for a in reached}
    try:
        await until(lambda: set(service.accounts) == ids, 30)  # at start
        await until(lambda: _all_ok(pool, ids), 30)
        directory.set_linked(directory.page_of(reached[0].ig_user_id).page_id, False)
        service.request_reload()  # what SIGHUP does
        await until(lambda: set(service.accounts) == ids - {reached[0].ig_user_id}, 30)
        await until(lambda: _status_is(pool, reached[0].ig_user_id, "unlinked"), 30)
        # The interval: a config reloaded with a short one picks up the relinked Page by itself.
        directory.set_linked(directory.page_of(reached[0].ig_user_id).page_id, True)
        sections["collect"]["discovery_interval_s"] = 0.2
        write_config(tmp_path, sim, db_dsn, [("facebook", "access_token", token)], sections=sections)
        service.request_reload()
        await until(lambda: set(service.accounts) == ids, 30)
        await until(lambda: _status_is(pool, reached[0].ig_user_id, "ok"), 30)
        exposition = service.metrics.exposition().decode()
        assert 'ig_collector_discovered_accounts{token="#1"} 3.0' in exposition
        assert token not in exposition
    finally:
        service.request_stop()
        assert await asyncio.wait_for(task, 30) == daemon.EXIT_OK


async def _all_ok(pool: asyncpg.Pool, ids: set[str]) -> bool:
    found = await statuses(pool)
    return all(found.get(i) == "ok" for i in ids)


async def _status_is(pool: asyncpg.Pool, ig_user_id: str, status: str) -> bool:
    return (await statuses(pool)).get(ig_user_id) == status
