"""Simulator fixtures (the fake Graph API over real HTTP on 127.0.0.1, in the session event loop).

    async def test_x(start_simulator):
        sim = await start_simulator(accounts=4, media_per_account=10, seed=3,
                                    world_knobs={"invalid_token_fraction": 0.0},
                                    account_budget=limits.Budget(calls=5, window_s=60, block_s=30))
        sim.base_url      # "http://127.0.0.1:PORT" (both hosts)
        sim.world         # World: the expected values
        sim.stats         # Stats: calls by kind/status/code, throttled, while_blocked, faults
        sim.simulator     # api.Simulator (reset(), limits, options)

    async def test_y(simulator):  # the default one: seed 1, 10 accounts x 30 media, no budgets/faults

    write_config(tmp_path, sim, dsn, accounts_csv=True, sections={"retry": {...}}) -> Path  # config.toml

`start_simulator(**kwargs)`: `accounts`, `media_per_account`, `seed`, `now`, `clock`, `world_knobs`
(World knobs), and any `api.Options` field (`latency_ms`, `account_budget`, `app_budget`, `user_budget`,
`throttle_status`, `faults`, `refresh_min_age_s`, `default_version`). Every simulator started in a test is
closed after it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector.simulator import api, server, stats
from collector.simulator import world as world_mod


@dataclass
class RunningSimulator:
    base_url: str
    port: int
    world: world_mod.World
    simulator: api.Simulator
    runner: web.AppRunner

    @property
    def stats(self) -> stats.Stats:
        return self.simulator.stats

    def accounts(self) -> list[world_mod.SimAccount]:
        return list(self.world.accounts())

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(*, accounts: int = 10, media_per_account: int = 30, seed: int = 1,
                now: datetime | None = None, clock: Callable[[], float] | None = None,
                world_knobs: dict[str, Any] | None = None, **options: Any) -> RunningSimulator:
    world = world_mod.World(seed, accounts, media_per_account, now=now, clock=clock, **(world_knobs or {}))
    app = server.make_app(world, api.Options(**options))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return RunningSimulator(f"http://127.0.0.1:{port}", port, world, app[server.SIMULATOR], runner)


StartSimulator = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[StartSimulator]:
    started: list[RunningSimulator] = []

    async def factory(**kwargs: Any) -> RunningSimulator:
        running = await start(**kwargs)
        started.append(running)
        return running

    yield factory
    for running in started:
        await running.close()


@pytest.fixture
async def simulator(start_simulator: StartSimulator) -> RunningSimulator:
    return await start_simulator()


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(directory: Path, sim: RunningSimulator, dsn: str, *,
                 accounts: Iterable[world_mod.SimAccount] | None = None, accounts_csv: bool = False,
                 api_version: str = "v24.0", sections: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write `directory/config.toml` for a collector talking to `sim` and storing into `dsn`.

    `accounts` defaults to all of the world's accounts; with `accounts_csv` they go to
    `directory/accounts.csv` (header ig_user_id,login,access_token) instead of [[accounts]] tables.
    `sections` adds or overrides keys per section (dotted names for sub-tables), e.g.
    `{"collect": {"account_backfill_days": 3}, "retry": {"base_delay_s": 0.01}}`.
    """
    chosen = list(sim.world.accounts() if accounts is None else accounts)
    tables: dict[str, dict[str, Any]] = {
        "database": {"url": dsn},
        "graph": {"api_version": api_version, "instagram_base_url": sim.base_url,
                  "facebook_base_url": sim.base_url, "request_timeout_s": 30},
        "collect": {"account_backfill_days": 30, "media_max_age_days": 90},
    }
    for name, values in (sections or {}).items():
        tables.setdefault(name, {}).update(values)
    lines = [f"state_dir = {_toml_value(str(directory / 'state'))}"]
    if accounts_csv:
        rows = ["ig_user_id,login,access_token"]
        rows += [f"{a.ig_user_id},{a.login},{a.access_token}" for a in chosen]
        (directory / "accounts.csv").write_text("\n".join(rows) + "\n")
        lines.append('accounts_file = "accounts.csv"')
    for name, values in tables.items():
        lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
    if not accounts_csv:
        for a in chosen:
            lines += ["", "[[accounts]]", f"ig_user_id = {_toml_value(a.ig_user_id)}",
                      f"login = {_toml_value(a.login)}", f"access_token = {_toml_value(a.access_token)}"]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def boundary_stories(world: world_mod.World, accounts: Iterable[world_mod.SimAccount],
                     since_s: float) -> set[str]:
    """Stories live at only one end of the span from `since_s` to now: one that expired (or was posted)
    while a pass ran may or may not have been collected, so tests leave these out of exact comparisons."""
    chosen = list(accounts)
    at_start = {s.media_id for a in chosen for s in world.stories_of(a.ig_user_id, at=since_s)}
    at_end = {s.media_id for a in chosen for s in world.stories_of(a.ig_user_id)}
    return at_start ^ at_end

