"""Tokens in PostgreSQL: a token file moved in on first start, and a refresh made once between instances
(the account's row locked while one instance refreshes it), against a real PostgreSQL and a real HTTP
refresh endpoint."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from collector import metrics, tokens
from collector.storage import token_table
from tests import test_tokens
from tests.test_tokens import NOW, RefreshServer, S, account, caller


async def test_token_file_is_moved_in_and_renamed(pool: asyncpg.Pool, tmp_path: Path) -> None:
    configured = account(1, "IGQ-configured")
    old = tokens.TokenStore(tmp_path)
    old.refreshed(configured, NOW, {"access_token": "IGQ-from-file", "expires_in": 5_184_000})
    old.save()

    store = tokens.TokenStore(tmp_path)
    table = token_table.TokenTable(pool, store)
    assert await table.move_file_in() == 1
    assert not (tmp_path / "tokens.json").exists()
    assert (tmp_path / f"tokens.json{token_table.IMPORTED_SUFFIX}").exists()
    assert await table.move_file_in() == 0  # done once

    await table.load()
    assert store.effective(configured).access_token.reveal() == "IGQ-from-file"
    # A second host's older file does not replace the newer stored refresh.
    other_dir = tmp_path / "other"
    older = tokens.TokenStore(other_dir)
    older.refreshed(configured, NOW.replace(day=1), {"access_token": "IGQ-older", "expires_in": 5_184_000})
    older.save()
    await token_table.TokenTable(pool, tokens.TokenStore(other_dir)).move_file_in()
    fresh = tokens.TokenStore(tmp_path)
    await token_table.TokenTable(pool, fresh).load()
    assert fresh.effective(configured).access_token.reveal() == "IGQ-from-file"


async def test_two_instances_refresh_a_token_once(
        pool: asyncpg.Pool, tmp_path: Path,
        refresh_server: tuple[RefreshServer, str]) -> None:
    server, url = refresh_server
    accounts = [account(n, f"IGQ-configured-{n}") for n in range(1, 4)]
    stores = [tokens.TokenStore(tmp_path / name) for name in ("a", "b")]
    tables = [token_table.TokenTable(pool, store) for store in stores]

    async def instance(store: tokens.TokenStore, table: token_table.TokenTable) -> None:
        await table.load()
        await tokens.refresh_round(store, accounts, NOW, schedule=S, call=caller(url),
                                   counters=metrics.Metrics(), guard=table.guard)

    await asyncio.gather(*(instance(s, t) for s, t in zip(stores, tables, strict=True)))
    assert len(server.calls) == len(accounts)  # each token refreshed by one instance only

    # A later round of either instance uses the stored token and refreshes nothing.
    for store, table in zip(stores, tables, strict=True):
        await instance(store, table)
        for a in accounts:
            assert store.effective(a).access_token.reveal().startswith("IGQ-refreshed-")
    assert len(server.calls) == len(accounts)
    async with pool.acquire() as conn:
        stored = await conn.fetchval("SELECT count(*) FROM collector_token WHERE access_token IS NOT NULL")
    assert stored == len(accounts)


refresh_server = test_tokens.refresh_server  # the fixture, shared
