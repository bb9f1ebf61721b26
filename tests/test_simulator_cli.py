"""`python -m collector.simulator` as a real subprocess: announces its port, writes the accounts CSV,
serves, and exits 0 on SIGTERM; its budget flags reach the simulator's options."""

from __future__ import annotations

import argparse
import asyncio
import csv
import signal
import sys
from pathlib import Path

import aiohttp

from collector.simulator import cli, limits


async def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    port_file, accounts_csv = tmp_path / "port", tmp_path / "accounts.csv"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "collector.simulator", "--port", "0", "--port-file", str(port_file),
        "--write-accounts", str(accounts_csv), "--accounts", "3", "--media", "5", "--seed", "9",
        "--account-calls", "100", "--invalid-token-fraction", "0",
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        port = int(port_file.read_text())
        assert line == f"listening on http://127.0.0.1:{port}"
        with accounts_csv.open() as f:
            rows = list(csv.DictReader(f))
        assert [r["login"] for r in rows] == ["instagram", "facebook", "instagram"]
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/v24.0/{rows[1]['ig_user_id']}/media",
                params={"access_token": rows[1]["access_token"], "limit": "2"}) as resp:
            body = await resp.json()
        assert resp.status == 200 and len(body["data"]) == 2 and "next" in body["paging"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0


def test_budget_flags_reach_the_options() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    flags = ["--accounts", "2", "--user-calls", "40", "--user-window-s", "600", "--user-block-s", "30",
             "--account-calls", "7"]
    _, options = cli.build(parser.parse_args(flags))
    assert options.user_budget == limits.Budget(calls=40, window_s=600.0, block_s=30.0)
    assert options.account_budget == limits.Budget(calls=7, window_s=3600.0, block_s=60.0)
    _, default = cli.build(parser.parse_args([]))
    assert default.user_budget == limits.Budget()  # off unless asked for
